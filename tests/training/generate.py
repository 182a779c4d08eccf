"""Write small synthetic files in the real on-disk layouts (GeoTIFF via GDAL, npy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from osgeo import gdal, osr

BLOB_DN = 6000  # bright "cloud" DN in every band


def blobs(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with a few bright rectangles (the generated 'clouds')."""
    mask = np.zeros((height, width), bool)
    for _ in range(3):
        y, x = rng.integers(0, height - 20), rng.integers(0, width - 20)
        mask[y : y + int(rng.integers(10, 30)), x : x + int(rng.integers(10, 30))] = True
    return mask


def write_geotiff(path: Path, array: np.ndarray, dtype=gdal.GDT_UInt16, nodata=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bands, h, w = array.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, bands, dtype)
    ds.SetGeoTransform([500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0])
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    for i in range(bands):
        band = ds.GetRasterBand(i + 1)
        band.WriteArray(array[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
    ds.FlushCache()
    ds = None


def image_dn(cloud: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """B02, B03, B04, B08 DN: distinct ground levels per band, bright where ``cloud``."""
    h, w = cloud.shape
    ground = np.array([800, 1000, 1200, 2500]).reshape(4, 1, 1)
    dn = ground + rng.integers(0, 200, size=(4, h, w))
    dn[:, cloud] = BLOB_DN
    return dn.astype(np.uint16)


def write_unlabelled_scene(
    folder: Path, height: int, width: int, clouds: str, rng: np.random.Generator
) -> np.ndarray:
    """``<folder>/image.tif`` + ``source.json``; returns the generated cloud mask (float)."""
    cloud = blobs(height, width, rng) if clouds != "no" else np.zeros((height, width), bool)
    write_geotiff(folder / "image.tif", image_dn(cloud, rng))
    meta = {
        "level": "L1C",
        "processing_baseline": "pre-04.00",
        "clouds_visible": clouds,
        "place": folder.name,
    }
    (folder / "source.json").write_text(json.dumps(meta))
    return cloud.astype(np.float32)


def write_labelled_pair(
    folder: Path, name: str, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """``<name>_image.tif`` (DN) + ``<name>_label.tif`` (uint8 1 = cloud); returns the label."""
    cloud = blobs(height, width, rng)
    write_geotiff(folder / f"{name}_image.tif", image_dn(cloud, rng))
    write_geotiff(folder / f"{name}_label.tif", cloud[None].astype(np.uint8), gdal.GDT_Byte)
    return cloud.astype(np.uint8)


def write_catalogue(folder: Path, ids: list[str], size: int, rng: np.random.Generator) -> None:
    """Cloud Mask Catalogue layout: subscenes/<id>.npy (H x W x 13 float32 reflectance) and
    masks/<id>.npy (H x W x 3 bool one-hot CLEAR, CLOUD, CLOUD_SHADOW)."""
    (folder / "subscenes").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for i in ids:
        img = (np.arange(13, dtype=np.float32) / 100.0 + 0.01) * np.ones(
            (size, size, 1), np.float32
        )
        mask = np.zeros((size, size, 3), bool)
        mask[..., 0] = True
        mask[: size // 2, :, :] = [False, True, False]  # top half cloud
        mask[size // 2 :, : size // 4, :] = [False, False, True]  # a shadow strip
        img[: size // 2] += 0.5
        np.save(folder / "subscenes" / f"{i}.npy", img)
        np.save(folder / "masks" / f"{i}.npy", mask)
