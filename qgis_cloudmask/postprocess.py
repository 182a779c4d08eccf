"""Post-processing of the written mask with GDAL's own algorithms: small-patch removal (sieve),
cloud buffer (proximity), polygons (polygonize) and the masked image.

Every step works on files, block of rows by block of rows, so memory stays bounded for a whole
Sentinel-2 tile; the statistics are counted in the last pass, on the final mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, ogr, osr

from qgis_cloudmask import raster_io, styles
from qgis_cloudmask.core.classes import CLEAR, CLOUD, CLOUD_BUFFER, LABELS, NODATA
from qgis_cloudmask.core.inference import Cancelled
from qgis_cloudmask.core.stats import CloudStats

gdal.UseExceptions()
ogr.UseExceptions()

#: Rows per block of the passes over the mask.
BLOCK_ROWS = 512
#: Polygon layer name in the GeoPackage.
VECTOR_LAYER = "clouds"

Progress = Callable[[float], None]


class GdalProgress:
    """A GDAL progress callback that reports ``[start, end]`` of the whole and can cancel."""

    def __init__(self, progress: Progress | None, canceled, start: float, end: float) -> None:
        self.progress, self.canceled, self.start, self.end = progress, canceled, start, end

    def __call__(self, fraction, message=None, data=None) -> int:
        if self.canceled is not None and self.canceled():
            return 0  # GDAL stops and raises
        if self.progress is not None:
            self.progress(self.start + (self.end - self.start) * float(fraction))
        return 1


def _blocks(height: int):
    for y0 in range(0, height, BLOCK_ROWS):
        yield y0, min(height, y0 + BLOCK_ROWS)


def remove_small_clouds(
    mask: gdal.Band,
    info: raster_io.RasterInfo,
    min_size: int,
    scratch: str,
    progress: GdalProgress,
) -> int:
    """Set every cloud patch of fewer than ``min_size`` pixels (8-connected) to clear; clear
    and nodata pixels never change. Returns the number of cloud pixels removed.

    Exact by construction: GDAL polygonizes the patches (8-connected, into a scratch
    GeoPackage, so memory does not grow with their number), each polygon's area in pixels is
    its size, and the small ones are rasterized back as clear. GDAL's sieve is not used: it
    merges a small patch into its largest neighbour, which keeps a small cloud inside a small
    clear gap of a larger cloud, and every cloud when no clear area reaches the size.
    """
    pixel_area = info.pixel_area
    store = ogr.GetDriverByName("GPKG").CreateDataSource(scratch)
    try:
        layer = store.CreateLayer("patches", srs=info.spatial_ref, geom_type=ogr.wkbPolygon)
        layer.CreateField(ogr.FieldDefn("value", ogr.OFTInteger))
        layer.CreateField(ogr.FieldDefn("small", ogr.OFTInteger))
        # the band is its own mask: clear (0) makes no polygon; cloud and nodata do
        gdal.Polygonize(mask, mask, layer, 0, ["8CONNECTED=8"], callback=progress)
        removed = 0
        layer.SetAttributeFilter(f"value = {CLOUD}")
        layer.StartTransaction()
        for feature in layer:
            pixels = round(feature.GetGeometryRef().GetArea() / pixel_area)
            if pixels < min_size:
                feature.SetField("small", 1)
                layer.SetFeature(feature)
                removed += pixels
        layer.CommitTransaction()
        if removed:
            layer.SetAttributeFilter(f"value = {CLOUD} AND small = 1")
            gdal.RasterizeLayer(mask.GetDataset(), [1], layer, burn_values=[CLEAR])
    finally:
        with raster_io.gdal_quiet():  # a scratch file: deleted either way
            feature = layer = store = None
    return removed


def cloud_distance(
    mask: gdal.Band,
    info: raster_io.RasterInfo,
    radius_px: float,
    scratch: str,
    progress: GdalProgress,
) -> gdal.Dataset:
    """Distance in pixels from every pixel to the nearest cloud pixel, up to ``radius_px``
    (farther: -1); GDAL's proximity, measured between pixel centres."""
    ds = raster_io.create_like(scratch, info, gdal.GDT_Float32)
    options = [
        f"VALUES={CLOUD}",
        "DISTUNITS=PIXEL",
        f"MAXDIST={radius_px!r}",
        "NODATA=-1",
        "USE_INPUT_NODATA=NO",
    ]
    gdal.ComputeProximity(mask, ds.GetRasterBand(1), options, callback=progress)
    return ds


class MaskedImage:
    """The input's bands with cloud and cloud-buffer pixels set to nodata (same data type).

    Nodata is the band's declared nodata, else 0 for integers (the Sentinel-2 fill value) and
    NaN for floats. Band descriptions, metadata and scale/offset are copied, so the masked image
    can be masked or read again like the input.
    """

    def __init__(self, source: gdal.Dataset, info: raster_io.RasterInfo, path: str) -> None:
        self.source, self.info = source, info
        dtype = source.GetRasterBand(1).DataType
        for i in range(1, info.band_count):  # one type for all bands: wide enough for each
            dtype = gdal.DataTypeUnion(dtype, source.GetRasterBand(i + 1).DataType)
        self.ds = raster_io.create_like(path, info, dtype, info.band_count)
        self.ds.SetMetadata(source.GetMetadata() or {})
        self.nodata = []
        for i in range(info.band_count):
            src, dst = source.GetRasterBand(i + 1), self.ds.GetRasterBand(i + 1)
            value = info.nodata[i]
            if value is None:
                value = float("nan") if gdal.GetDataTypeName(dtype).startswith("Float") else 0.0
            dst.SetNoDataValue(value)
            dst.SetDescription(src.GetDescription())
            dst.SetMetadata(src.GetMetadata() or {})
            dst.SetColorInterpretation(src.GetColorInterpretation())
            if src.GetScale() not in (None, 1.0) or src.GetOffset() not in (None, 0.0):
                dst.SetScale(src.GetScale() or 1.0)
                dst.SetOffset(src.GetOffset() or 0.0)
            self.nodata.append(value)

    def write(self, y0: int, final: np.ndarray) -> None:
        h = final.shape[0]
        rows = self.source.ReadAsArray(0, y0, self.info.width, h)
        rows = rows.reshape(self.info.band_count, h, self.info.width)
        hide = (final == CLOUD) | (final == CLOUD_BUFFER)
        if hide.any():
            rows = rows.copy()
            for i, value in enumerate(self.nodata):
                rows[i][hide] = value
        for i in range(self.info.band_count):
            self.ds.GetRasterBand(i + 1).WriteArray(rows[i], 0, y0)

    def close(self) -> None:
        datasets = [self.ds]
        self.ds = None
        raster_io.close_datasets(datasets)


def final_pass(
    mask: gdal.Band,
    info: raster_io.RasterInfo,
    distance: gdal.Dataset | None,
    radius_px: float,
    masked: MaskedImage | None,
    progress: Progress | None,
    canceled,
) -> CloudStats:
    """Mark the buffer (clear pixels within ``radius_px`` of a cloud), write the masked image and
    count the final mask."""
    stats = CloudStats()
    dist = distance.GetRasterBand(1) if distance is not None else None
    for y0, y1 in _blocks(info.height):
        if canceled is not None and canceled():
            raise Cancelled()
        rows = mask.ReadAsArray(0, y0, info.width, y1 - y0)
        if dist is not None:
            d = dist.ReadAsArray(0, y0, info.width, y1 - y0)
            near = (rows == CLEAR) & (d >= 0) & (d <= radius_px)
            if near.any():
                rows[near] = CLOUD_BUFFER
                mask.WriteArray(rows, 0, y0)
        stats.add(rows)
        if masked is not None:
            masked.write(y0, rows)
        if progress is not None:
            progress(y1 / info.height)
    return stats


# -- polygons --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AreaRule:
    """How a polygon's area becomes the ``area_m2`` field (or ``area`` in map units)."""

    field: str
    unit: str
    factor: float = 1.0
    transform: osr.CoordinateTransformation | None = None

    def area(self, geometry: ogr.Geometry) -> float:
        if self.transform is not None:
            geometry = geometry.Clone()
            geometry.Transform(self.transform)
        return geometry.GetArea() * self.factor


def area_rule(info: raster_io.RasterInfo) -> AreaRule:
    """Square metres where the CRS allows (projected: by its unit; geographic: in a Lambert
    azimuthal equal-area projection centred on the scene), else square map units."""
    srs = info.spatial_ref
    if srs is None or info.geotransform is None:
        return AreaRule("area", info.area_unit)
    if srs.IsGeographic():
        lon, lat = info.centre
        laea = osr.SpatialReference()
        laea.ImportFromProj4(f"+proj=laea +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m")
        for s in (srs, laea):
            s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        return AreaRule(
            "area_m2",
            "square meters (equal-area projection centred on the scene)",
            transform=osr.CoordinateTransformation(srs, laea),
        )
    metres = srs.GetLinearUnits()
    return AreaRule("area_m2", "square meters", factor=metres * metres)


def _lut_vrt(mask_path: str, info: raster_io.RasterInfo) -> gdal.Dataset:
    """A virtual band that is 1 on cloud and buffer pixels, 0 elsewhere (polygonize's mask)."""
    xml = f"""<VRTDataset rasterXSize="{info.width}" rasterYSize="{info.height}">
  <VRTRasterBand dataType="Byte" band="1">
    <ComplexSource>
      <SourceFilename relativeToVRT="0">{mask_path}</SourceFilename>
      <SourceBand>1</SourceBand>
      <LUT>{CLEAR}:0,{CLOUD}:1,{CLOUD_BUFFER}:1,{CLOUD_BUFFER + 1}:0,{NODATA}:0</LUT>
    </ComplexSource>
  </VRTRasterBand>
</VRTDataset>"""
    return gdal.Open(xml)


def _store_default_style(ds: ogr.DataSource, qml: str) -> None:
    """Store ``qml`` as the layer's default style in the GeoPackage's ``layer_styles`` table,
    where QGIS looks when it loads the layer (the schema QGIS itself creates)."""
    styles_layer = ds.CreateLayer("layer_styles", geom_type=ogr.wkbNone)
    for name, kind in (
        ("f_table_catalog", ogr.OFTString),
        ("f_table_schema", ogr.OFTString),
        ("f_table_name", ogr.OFTString),
        ("f_geometry_column", ogr.OFTString),
        ("styleName", ogr.OFTString),
        ("styleQML", ogr.OFTString),
        ("styleSLD", ogr.OFTString),
        ("useAsDefault", ogr.OFTInteger),
        ("description", ogr.OFTString),
        ("owner", ogr.OFTString),
        ("ui", ogr.OFTString),
        ("update_time", ogr.OFTDateTime),
    ):
        field = ogr.FieldDefn(name, kind)
        if name == "useAsDefault":
            field.SetSubType(ogr.OFSTBoolean)
        styles_layer.CreateField(field)
    feature = ogr.Feature(styles_layer.GetLayerDefn())
    for name, value in (
        ("f_table_catalog", ""),
        ("f_table_schema", ""),
        ("f_table_name", VECTOR_LAYER),
        ("f_geometry_column", "geom"),
        ("styleName", VECTOR_LAYER),
        ("styleQML", qml),
        ("styleSLD", ""),
        ("useAsDefault", 1),
        ("description", "cloud and cloud-buffer polygons (qgis_cloudmask)"),
        ("owner", ""),
        ("ui", ""),
    ):
        feature.SetField(name, value)
    styles_layer.CreateFeature(feature)


def polygonize(
    mask_path: str,
    info: raster_io.RasterInfo,
    target: str,
    progress: GdalProgress,
    with_buffer: bool = False,
) -> tuple[int, AreaRule]:
    """Cloud (and cloud-buffer) polygons, 8-connected, with class, label and area, into a new
    GeoPackage at ``target``; an empty layer when there is no cloud. Returns the feature count
    and how areas were measured."""
    rule = area_rule(info)
    mask_ds = gdal.Open(mask_path)
    selector = _lut_vrt(mask_path, info)
    out = ogr.GetDriverByName("GPKG").CreateDataSource(target)
    try:
        layer = out.CreateLayer(VECTOR_LAYER, srs=info.spatial_ref, geom_type=ogr.wkbPolygon)
        layer.CreateField(ogr.FieldDefn("class", ogr.OFTInteger))
        layer.CreateField(ogr.FieldDefn("label", ogr.OFTString))
        layer.CreateField(ogr.FieldDefn(rule.field, ogr.OFTReal))
        gdal.Polygonize(
            mask_ds.GetRasterBand(1),
            selector.GetRasterBand(1),
            layer,
            0,
            ["8CONNECTED=8"],
            callback=progress,
        )
        layer.StartTransaction()
        count = 0
        for feature in layer:
            feature.SetField("label", LABELS[feature.GetField("class")])
            feature.SetField(rule.field, rule.area(feature.GetGeometryRef()))
            layer.SetFeature(feature)
            count += 1
        layer.CommitTransaction()
        layer.SetMetadataItem("AREA_UNIT", rule.unit)
        _store_default_style(out, styles.polygon_style(with_buffer))
    finally:  # closed before the file is moved or deleted; a failed write was reported
        with raster_io.gdal_quiet():
            feature = layer = out = selector = mask_ds = None
    return count, rule


def buffer_radius_px(info: raster_io.RasterInfo, metres: float) -> tuple[float, str]:
    """``metres`` as a radius in pixels, and how it was converted (for the log).

    Raises ValueError when the raster has no CRS (metres cannot be known).
    """
    sx, sy, how = info.pixel_size_m()
    size = math.sqrt(sx * sy)
    note = f"{metres:g} m = {metres / size:.2f} pixels of {size:.4g} m ({how})"
    if abs(sx - sy) > 0.01 * max(sx, sy):
        note += (
            f"; the pixels are {sx:.4g} m x {sy:.4g} m, so the buffer uses their mean size "
            "(reproject to a projected CRS with square pixels for an exact buffer)"
        )
    return metres / size, note
