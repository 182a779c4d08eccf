"""qgis_cloudmask: cloud masking of Sentinel-2 imagery as a QGIS Processing algorithm."""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    """QGIS entry point; imports lazily so the pure core stays importable without QGIS."""
    from qgis_cloudmask.plugin import CloudMaskPlugin

    return CloudMaskPlugin(iface)
