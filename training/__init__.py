"""Training side of qgis_cloudmask: data, model, losses, metrics, train, export, evaluate, report.

Only this package imports torch; the plugin (``qgis_cloudmask``) never does.
"""
