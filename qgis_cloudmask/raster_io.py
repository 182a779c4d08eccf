"""The only GDAL glue: windowed reads of the input, all-or-nothing writes of the outputs.

Outputs are written to hidden temporary files beside their destination and moved into place by
:meth:`OutputRasters.commit`; any exception inside the ``with`` block deletes them, so a failed
or cancelled run leaves nothing behind.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, replace

import numpy as np
from osgeo import gdal, osr

from qgis_cloudmask.core.inference import PROBABILITY_NODATA
from qgis_cloudmask.core.stats import CLOUD, NODATA

gdal.UseExceptions()

#: Stored data types a reflectance or DN raster can have.
SUPPORTED_TYPES = ("UInt16", "Int16", "UInt32", "Int32", "Float32", "Float64")

#: Colours of the mask values (R, G, B, alpha): clear is transparent so the mask overlays.
MASK_COLOURS = {0: (0, 0, 0, 0), CLOUD: (0, 200, 255, 255), NODATA: (128, 128, 128, 0)}

CREATION_OPTIONS = ["COMPRESS=DEFLATE", "TILED=YES", "BIGTIFF=IF_SAFER"]


class RasterError(Exception):
    """An input or output raster problem, worded for a GIS user."""


@dataclass(frozen=True)
class RasterInfo:
    path: str
    width: int
    height: int
    band_count: int
    data_type: str
    nodata: tuple[float | None, ...]
    geotransform: tuple[float, ...]
    projection: str

    @property
    def is_float(self) -> bool:
        return self.data_type.startswith("Float")

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in map units squared (from the geotransform)."""
        gt = self.geotransform
        return abs(gt[1] * gt[5] - gt[2] * gt[4])

    def with_nodata(self, value: float) -> RasterInfo:
        """The same raster with ``value`` as every band's nodata (e.g. a product's 0)."""
        return replace(self, nodata=(value,) * self.band_count)

    @property
    def spatial_ref(self) -> osr.SpatialReference | None:
        if not self.projection:
            return None
        srs = osr.SpatialReference()
        srs.ImportFromWkt(self.projection)
        return srs

    @property
    def crs_id(self) -> str:
        """``EPSG:32633`` style identifier ('' without CRS; the CRS name when it has no code)."""
        srs = self.spatial_ref
        if srs is None:
            return ""
        srs.AutoIdentifyEPSG()
        for node in (None, "PROJCS", "GEOGCS"):
            name, code = srs.GetAuthorityName(node), srs.GetAuthorityCode(node)
            if name and code:
                return f"{name}:{code}"
        return srs.GetName() or "unknown CRS"

    @property
    def area_unit(self) -> str:
        """The unit of areas computed from the geotransform, in words (as QGIS writes them)."""
        srs = self.spatial_ref
        if srs is None:
            return "square pixels (the raster has no CRS)"
        if srs.IsGeographic():
            return "square degrees"
        metres = srs.GetLinearUnits()
        for factor, name in AREA_UNITS:
            if abs(metres - factor) < 1e-9 * max(factor, 1.0):
                return name
        return f"square map units ({srs.GetLinearUnitsName()})"


#: metres per linear unit -> area unit in words
AREA_UNITS = (
    (1.0, "square meters"),
    (1000.0, "square kilometers"),
    (0.3048, "square feet"),
    (1200.0 / 3937.0, "square feet"),  # US survey foot
    (0.9144, "square yards"),
)


def describe(ds: gdal.Dataset, path: str) -> RasterInfo:
    """What the pipeline needs to know of an open dataset."""
    bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
    return RasterInfo(
        path=path,
        width=ds.RasterXSize,
        height=ds.RasterYSize,
        band_count=ds.RasterCount,
        data_type=gdal.GetDataTypeName(bands[0].DataType) if bands else "none",
        nodata=tuple(b.GetNoDataValue() for b in bands),
        geotransform=tuple(ds.GetGeoTransform()),
        projection=ds.GetProjection(),
    )


def open_dataset(path: str, what: str | None = None) -> gdal.Dataset:
    """Open ``path`` read-only; ``what`` names it in the error (default: the path)."""
    what = what or f"'{path}'"
    try:
        ds = gdal.Open(path, gdal.GA_ReadOnly)
    except RuntimeError as exc:
        raise RasterError(f"GDAL cannot open {what}: {exc}") from exc
    if ds is None:
        raise RasterError(f"GDAL cannot open {what}.")
    return ds


def open_raster(path: str) -> tuple[gdal.Dataset, RasterInfo]:
    """Open a plain raster read-only and describe it (products: :mod:`qgis_cloudmask.sources`)."""
    ds = open_dataset(path)
    return ds, describe(ds, path)


def raw_reader(ds: gdal.Dataset, bands: list[int]):
    """``read_raw(y0, y1)``: stored values of the 1-based ``bands``, ``len(bands) x h x W``."""
    width = ds.RasterXSize

    def read_raw(y0: int, y1: int) -> np.ndarray:
        arr = ds.ReadAsArray(0, y0, width, y1 - y0, band_list=bands)
        return arr.reshape(len(bands), y1 - y0, width)

    return read_raw


def temporary_path(path: str) -> str:
    """A hidden sibling of ``path`` (same folder, so the final move is a rename)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.partial-{uuid.uuid4().hex[:8]}")


class OutputRasters:
    """The mask GeoTIFF and, optionally, the probability GeoTIFF, written row block by row block."""

    def __init__(self, info: RasterInfo, mask_path: str, probability_path: str | None = None):
        self.info = info
        self.targets = [mask_path] + ([probability_path] if probability_path else [])
        self.temps = [temporary_path(p) + ".tif" for p in self.targets]
        self._mask_ds = self._create(self.temps[0], gdal.GDT_Byte, NODATA, "cloud mask")
        self._set_palette(self._mask_ds.GetRasterBand(1))
        self._prob_ds = (
            self._create(self.temps[1], gdal.GDT_Float32, PROBABILITY_NODATA, "cloud probability")
            if probability_path
            else None
        )

    def _create(self, path: str, dtype: int, nodata: float, description: str) -> gdal.Dataset:
        driver = gdal.GetDriverByName("GTiff")
        try:
            ds = driver.Create(
                path, self.info.width, self.info.height, 1, dtype, options=CREATION_OPTIONS
            )
        except RuntimeError as exc:
            self.discard()
            raise RasterError(f"Cannot create '{path}': {exc}") from exc
        ds.SetGeoTransform(self.info.geotransform)
        if self.info.projection:
            ds.SetProjection(self.info.projection)
        band = ds.GetRasterBand(1)
        band.SetNoDataValue(nodata)
        band.SetDescription(description)
        return ds

    @staticmethod
    def _set_palette(band: gdal.Band) -> None:
        table = gdal.ColorTable()
        for value, rgba in MASK_COLOURS.items():
            table.SetColorEntry(value, rgba)
        band.SetRasterColorTable(table)
        band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
        band.SetMetadata({"CLASS_0": "clear", "CLASS_1": "cloud", "CLASS_255": "nodata"})

    def write_rows(self, y0: int, probability: np.ndarray, mask: np.ndarray) -> None:
        self._mask_ds.GetRasterBand(1).WriteArray(mask, 0, y0)
        if self._prob_ds is not None:
            self._prob_ds.GetRasterBand(1).WriteArray(probability, 0, y0)

    def _close(self) -> None:
        for ds in (self._mask_ds, self._prob_ds):
            if ds is not None:
                ds.FlushCache()
        self._mask_ds = self._prob_ds = None

    def commit(self) -> None:
        """Close the files and move them to their destinations."""
        self._close()
        for temp, target in zip(self.temps, self.targets):
            os.replace(temp, target)

    def discard(self) -> None:
        """Close and delete the temporary files (safe to call more than once)."""
        self._mask_ds = self._prob_ds = None
        for temp in getattr(self, "temps", []):
            for leftover in (temp, temp + ".aux.xml"):
                if os.path.exists(leftover):
                    os.remove(leftover)

    def __enter__(self) -> OutputRasters:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
