"""QGIS Processing glue (kept thin: the work happens in ``qgis_cloudmask.core``)."""
