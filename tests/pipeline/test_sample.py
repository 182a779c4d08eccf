"""The radiometry decision's sample: the same pixels as GDAL's nearest-neighbour decimated read,
whichever way it is read (full-resolution rows without overviews, GDAL's decimation with)."""

import numpy as np
import pytest
from osgeo import gdal

from qgis_cloudmask import sources
from tests.support import synthetic

gdal.UseExceptions()


def _gdal_decimated(path, bands, w, h):
    ds = gdal.Open(str(path))
    return ds.ReadAsArray(
        0,
        0,
        ds.RasterXSize,
        ds.RasterYSize,
        buf_xsize=w,
        buf_ysize=h,
        band_list=bands,
        resample_alg=gdal.GRIORA_NearestNeighbour,
    )


@pytest.mark.parametrize(
    ("height", "width", "options", "max_pixels", "chunk"),
    [
        (700, 900, ["TILED=YES", "COMPRESS=DEFLATE"], 10_000, 4096),  # tiled, one chunk
        (700, 900, ["TILED=YES", "BLOCKXSIZE=128", "BLOCKYSIZE=128"], 5_000, 256),  # chunks
        (523, 611, [], 7_777, 4096),  # striped, sizes that do not divide
        (40, 3000, ["TILED=YES"], 1_000, 512),  # wide and flat: many chunks, few rows
        (50, 60, [], 1_000_000, 4096),  # smaller than the sample: every pixel
    ],
)
def test_sample_is_gdals_nearest_neighbour_decimation(
    tmp_path, monkeypatch, height, width, options, max_pixels, chunk
):
    scene = synthetic.sample_scene(height, width, 5)
    path = tmp_path / "s.tif"
    gdal.Translate(
        str(path), synthetic.write_geotiff(tmp_path / "plain.tif", scene), creationOptions=options
    )
    monkeypatch.setattr(sources, "SAMPLE_CHUNK", chunk)
    source = sources.open_source(str(path))
    assert source.dataset.GetRasterBand(1).GetOverviewCount() == 0  # the full-resolution path
    values, valid = sources.read_sample(source, [3, 2, 1, 4], max_pixels)
    h, w = values.shape[1:]
    assert h * w <= max(max_pixels, 1) or (h, w) == (height, width)
    np.testing.assert_array_equal(values, _gdal_decimated(path, [3, 2, 1, 4], w, h))
    assert valid.shape == (h, w)


def test_with_overviews_gdal_decimates(tmp_path):
    path = synthetic.write_geotiff(tmp_path / "s.tif", synthetic.sample_scene(600, 500, 6))
    ds = gdal.Open(path, gdal.GA_Update)
    ds.BuildOverviews("NEAREST", [2, 4])
    ds = None
    source = sources.open_source(path)
    values, _ = sources.read_sample(source, [1, 2, 3, 4], 20_000)
    h, w = values.shape[1:]
    np.testing.assert_array_equal(values, _gdal_decimated(path, [1, 2, 3, 4], w, h))
