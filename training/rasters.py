"""GeoTIFF and scene-metadata reading for training (GDAL; the only raster glue on this side).

Images on disk store Sentinel-2 digital numbers (DN = reflectance x 10000, plus 1000 from
processing baseline 04.00 on) with bands in file order; everything returned here is float32
reflectance in the *model* channel order (:data:`contract.DEFAULT_BANDS`: red, green, blue, nir).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal

from qgis_cloudmask.core import contract, radiometry

gdal.UseExceptions()

#: Band order of the ``s2_unlabelled`` and ``dev_labelled`` GeoTIFFs.
FILE_BANDS = ("B02", "B03", "B04", "B08")


def band_index(source: tuple[str, ...], target: tuple[str, ...]) -> list[int]:
    """Indices that reorder ``source`` bands into ``target`` order."""
    return [source.index(b) for b in target]


#: file order (B02, B03, B04, B08) -> model order (B04, B03, B02, B08)
TO_MODEL = band_index(FILE_BANDS, contract.DEFAULT_BANDS)
#: model order -> teacher order (blue, green, red, nir) = B02, B03, B04, B08
MODEL_TO_TEACHER = band_index(contract.DEFAULT_BANDS, FILE_BANDS)


@dataclass(frozen=True)
class SceneInfo:
    """What ``source.json`` says about a scene that matters for reading it."""

    level: str  # "l1c" or "l2a" (unknown -> "l1c")
    radiometry: radiometry.Radiometry  # S2_DN or S2_DN_OFFSET
    clouds: str  # "yes", "thin", "no" or "unknown"
    place: str = ""  # where the scene is (groups chips and dates of one site in a split)


def scene_info(source_json: Path) -> SceneInfo:
    """Level, baseline offset, visible clouds and place from ``source.json`` (missing: defaults)."""
    meta = json.loads(Path(source_json).read_text()) if Path(source_json).exists() else {}
    level = "l2a" if str(meta.get("level", "")).strip().upper().startswith("L2A") else "l1c"
    baseline = str(meta.get("processing_baseline", ""))
    offset = ">= 04.00" in baseline or "+1000 offset present" in baseline
    mode = radiometry.Radiometry.S2_DN_OFFSET if offset else radiometry.Radiometry.S2_DN
    return SceneInfo(
        level, mode, str(meta.get("clouds_visible", "unknown")), str(meta.get("place", ""))
    )


def raster_shape(path: Path) -> tuple[int, int, int]:
    """``(bands, height, width)`` of a raster."""
    ds = gdal.Open(str(path))
    return ds.RasterCount, ds.RasterYSize, ds.RasterXSize


def read_raw(path: Path, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Stored values ``bands x h x w`` (window = ``(y, x, h, w)`` in pixels, None = all)."""
    ds = gdal.Open(str(path))
    if window is None:
        arr = ds.ReadAsArray()
    else:
        y, x, h, w = window
        arr = ds.ReadAsArray(xoff=int(x), yoff=int(y), xsize=int(w), ysize=int(h))
    return arr[None] if arr.ndim == 2 else arr


def nodata_values(path: Path) -> list[float | None]:
    ds = gdal.Open(str(path))
    return [ds.GetRasterBand(i + 1).GetNoDataValue() for i in range(ds.RasterCount)]


def read_reflectance(
    path: Path,
    mode: radiometry.Radiometry = radiometry.Radiometry.S2_DN,
    window: tuple[int, int, int, int] | None = None,
    file_bands: tuple[str, ...] = FILE_BANDS,
) -> tuple[np.ndarray, np.ndarray]:
    """``(reflectance 4 x h x w float32 in model order, valid h x w bool)``; nodata -> 0."""
    raw = read_raw(path, window)
    if raw.shape[0] < len(file_bands):
        raise ValueError(f"{path}: expected at least {len(file_bands)} bands, got {raw.shape[0]}")
    raw = raw[: len(file_bands)]
    valid = radiometry.valid_pixels(raw, nodata_values(path)[: len(file_bands)])
    refl = radiometry.to_reflectance(raw, radiometry.Conversion.for_mode(mode, len(file_bands)))
    refl = refl[band_index(file_bands, contract.DEFAULT_BANDS)]
    refl[:, ~valid] = 0.0
    return np.ascontiguousarray(refl), valid


def read_label(path: Path, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A label raster as ``h x w`` uint8 (1 = cloud, 0 = not cloud)."""
    return read_raw(path, window)[0]
