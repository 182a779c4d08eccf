"""The pure core of qgis_cloudmask: NumPy + onnxruntime only, never ``qgis`` or ``osgeo``.

Data flows one way: windows of reflectance -> tiles -> model -> blended probabilities ->
mask + statistics. The QGIS glue (``cloudmask_processing``) and GDAL glue (``raster_io``)
sit around it.
"""
