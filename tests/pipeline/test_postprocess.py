"""Post-processing: small-patch removal, cloud buffer, polygons and the masked image, checked
against whole-array references (SciPy) on rasters the tests draw."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from osgeo import gdal, ogr
from scipy import ndimage

from qgis_cloudmask import pipeline, postprocess, styles
from qgis_cloudmask.core.classes import CLEAR, CLOUD, CLOUD_BUFFER, NODATA
from tests.support import synthetic

gdal.UseExceptions()
ogr.UseExceptions()

PIXEL = 10.0  # metres, synthetic.write_geotiff's default geotransform
BRIGHT, DARK = 5000, 500  # blue DN far from the test model's 0.2 boundary: 1.0 / 0.0025


@pytest.fixture(scope="module")
def small_tile_model(tmp_path_factory):
    """The per-pixel test model on 32-px tiles, so small rasters get many strips of tiles."""
    path = tmp_path_factory.mktemp("m") / "tile32.onnx"
    return synthetic.write_pixel_model(path, tile=32, meta={"recommended_overlap": 8})


def stack_from_clouds(clouds: np.ndarray, nodata: np.ndarray | None = None) -> np.ndarray:
    """A B02, B03, B04, B08 DN stack that the test model reads as ``clouds`` exactly."""
    h, w = clouds.shape
    out = np.empty((4, h, w), np.uint16)
    out[:] = np.where(clouds, BRIGHT, DARK)[None]
    out[3] = 2500
    if nodata is not None:
        out[:, nodata] = 0
    return out


def buffer_reference(clouds: np.ndarray, radius_px: float, valid: np.ndarray) -> np.ndarray:
    """The whole-array answer: Euclidean distance between pixel centres (SciPy)."""
    mask = np.where(clouds, CLOUD, CLEAR).astype(np.uint8)
    if clouds.any() and radius_px > 0:
        near = ndimage.distance_transform_edt(~clouds) <= radius_px
        mask[near & ~clouds] = CLOUD_BUFFER
    mask[~valid] = NODATA
    return mask


def run(tmp, model, scene, **options):
    src = synthetic.write_geotiff(os.path.join(tmp, "in.tif"), scene)
    request = pipeline.MaskRequest(src, os.path.join(tmp, "mask.tif"), model=model, **options)
    return pipeline.run(request), gdal.Open(request.output).ReadAsArray()


clouds_strategy = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 140),
    width=st.integers(1, 140),
    overlap=st.integers(0, 16),  # up to half the 32-px tile
    radius_m=st.sampled_from([5.0, 10.0, 14.2, 25.0, 37.5, 80.0, 200.0]),
    block_rows=st.integers(1, 70),
    seed=clouds_strategy,
    density=st.floats(0.0, 0.08),
)
def test_buffer_streamed_equals_whole_array_reference(
    small_tile_model, height, width, overlap, radius_m, block_rows, seed, density
):
    rng = np.random.default_rng(seed)
    clouds = rng.random((height, width)) < density
    clouds = ndimage.binary_dilation(clouds, iterations=int(rng.integers(0, 3)))
    clouds[0, : width // 3] |= bool(rng.integers(0, 2))  # clouds on the raster's edges
    clouds[:, -1] |= rng.random(height) < 0.2
    valid = np.ones_like(clouds)
    valid[rng.random((height, width)) < 0.02] = False
    valid[height // 2, width // 2] = True  # an all-nodata raster is an error of its own
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(postprocess, "BLOCK_ROWS", block_rows)
        result, mask = run(
            tmp,
            small_tile_model,
            stack_from_clouds(clouds & valid, ~valid),
            overlap=overlap,
            buffer=radius_m,
        )
    expected = buffer_reference(clouds & valid, radius_m / PIXEL, valid)
    np.testing.assert_array_equal(mask, expected)
    s = result.stats
    assert s.buffer_pixels == int((expected == CLOUD_BUFFER).sum())
    assert s.cloud_pixels == int((expected == CLOUD).sum())
    assert s.nodata_pixels == int((~valid).sum())


def patches() -> np.ndarray:
    """Designed cloud patches on an 60 x 80 raster (sizes in pixels, 8-connected)."""
    c = np.zeros((60, 80), bool)
    c[2:4, 2:4] = True  # 4
    c[10:13, 2:4] = True  # 6
    c[20, 20] = c[21, 21] = c[22, 22] = c[23, 23] = c[24, 24] = True  # 5, diagonal only
    c[0:3, 78:80] = True  # 6, on the corner
    c[30:50, 30:60] = True  # 600 with a 3 x 3 clear hole
    c[39:42, 44:47] = False
    return c


@pytest.mark.parametrize(
    "min_size, kept",
    [
        (5, {"4": False, "6": True, "diagonal": True, "corner": True}),
        (6, {"4": False, "6": True, "diagonal": False, "corner": True}),
        (7, {"4": False, "6": False, "diagonal": False, "corner": False}),
    ],
)
def test_small_cloud_patches_are_removed_8_connected_holes_stay_clear(
    tmp_path, small_tile_model, min_size, kept
):
    clouds = patches()
    result, mask = run(
        str(tmp_path), small_tile_model, stack_from_clouds(clouds), min_cloud_size=min_size
    )
    where = {"4": (2, 2), "6": (10, 2), "diagonal": (22, 22), "corner": (0, 79)}
    for name, (y, x) in where.items():
        assert (mask[y, x] == CLOUD) == kept[name], name
    assert (mask[30:50, 30:60][clouds[30:50, 30:60]] == CLOUD).all()  # the big cloud stays
    assert (mask[39:42, 44:47] == CLEAR).all()  # its hole (9 px) is not filled
    removed = int(clouds.sum() - (mask == CLOUD).sum())
    assert result.summary["removed_cloud_pixels"] == removed
    assert result.summary["model_cloud_pixels"] == int(clouds.sum())
    assert result.stats.cloud_pixels == int((mask == CLOUD).sum())


@settings(max_examples=25, deadline=None)
@given(
    seed=clouds_strategy,
    min_size=st.integers(2, 400),
    density=st.floats(0.05, 0.7),
    block_rows=st.integers(1, 40),
)
def test_sieve_removes_exactly_the_small_8_connected_patches(
    small_tile_model, seed, min_size, density, block_rows
):
    """Any pattern, nested patches and sizes beyond every patch included: exactly the
    8-connected components of fewer than ``min_size`` pixels disappear; nodata stays."""
    rng = np.random.default_rng(seed)
    clouds = rng.random((70, 80)) < density
    valid = rng.random((70, 80)) > 0.03
    valid[35, 40] = True
    clouds &= valid
    labels, _ = ndimage.label(clouds, structure=np.ones((3, 3)))
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(postprocess, "BLOCK_ROWS", block_rows)
        result, mask = run(
            tmp, small_tile_model, stack_from_clouds(clouds, ~valid), min_cloud_size=min_size
        )
    np.testing.assert_array_equal(mask == CLOUD, keep[labels])
    assert (mask[~valid] == NODATA).all()
    assert result.summary["removed_cloud_pixels"] == int(clouds.sum() - keep[labels].sum())


def test_a_small_cloud_in_a_small_gap_of_a_big_cloud_is_removed(tmp_path, small_tile_model):
    clouds = np.zeros((40, 40), bool)
    clouds[5:35, 5:35] = True
    clouds[15:20, 15:20] = False  # a 25-px gap ...
    clouds[17, 17] = True  # ... holding a 1-px cloud
    _, mask = run(str(tmp_path), small_tile_model, stack_from_clouds(clouds), min_cloud_size=30)
    assert mask[17, 17] == CLEAR and (mask[15:20, 15:20] == CLEAR).all()
    assert mask[5, 5] == CLOUD


def test_a_size_beyond_every_patch_removes_every_cloud(tmp_path, small_tile_model):
    clouds = np.zeros((30, 30), bool)
    clouds[:, :20] = True  # 600 cloud pixels, 300 clear
    result, mask = run(
        str(tmp_path), small_tile_model, stack_from_clouds(clouds), min_cloud_size=10_000
    )
    assert (mask == CLEAR).all() and result.summary["removed_cloud_pixels"] == 600


def test_sieve_runs_before_the_buffer(tmp_path, small_tile_model):
    clouds = np.zeros((40, 40), bool)
    clouds[5, 5] = True  # removed: no buffer around it
    clouds[20:30, 20:30] = True
    _, mask = run(
        str(tmp_path), small_tile_model, stack_from_clouds(clouds), min_cloud_size=4, buffer=20
    )
    assert (mask[0:10, 0:10] == CLEAR).all()
    np.testing.assert_array_equal(
        mask, buffer_reference(clouds & (np.arange(40)[:, None] > 10), 2.0, np.ones_like(clouds))
    )


def polygons(path):
    ds = ogr.Open(path)
    layer = ds.GetLayer(postprocess.VECTOR_LAYER)
    rows = [
        (
            f.GetField("class"),
            f.GetField("label"),
            f.GetField(layer.GetLayerDefn().GetFieldDefn(2).GetName()),
            f.GetGeometryRef().GetArea(),
        )
        for f in layer
    ]
    return layer.GetLayerDefn().GetFieldDefn(2).GetName(), rows


def test_polygons_hold_class_label_and_area_in_square_metres(tmp_path, small_tile_model):
    clouds = patches()
    vector = str(tmp_path / "clouds.gpkg")
    result, mask = run(
        str(tmp_path), small_tile_model, stack_from_clouds(clouds), buffer=10, vector=vector
    )
    field, rows = polygons(vector)
    assert field == "area_m2"
    for value, label in ((CLOUD, "cloud"), (CLOUD_BUFFER, "cloud buffer")):
        mine = [r for r in rows if r[0] == value]
        assert mine and all(r[1] == label for r in mine)
        assert sum(r[2] for r in mine) == pytest.approx((mask == value).sum() * PIXEL**2)
    assert len([r for r in rows if r[0] == CLOUD]) == 5  # the 8-connected patches
    assert result.summary["polygons"] == {
        "features": len(rows),
        "area_field": "area_m2",
        "area_unit": "square meters",
    }


def test_polygons_without_cloud_are_an_empty_layer(tmp_path, small_tile_model):
    vector = str(tmp_path / "none.gpkg")
    result, mask = run(
        str(tmp_path), small_tile_model, stack_from_clouds(np.zeros((50, 50), bool)), vector=vector
    )
    assert (mask == CLEAR).all()
    ds = ogr.Open(vector)
    assert ds.GetLayer(postprocess.VECTOR_LAYER).GetFeatureCount() == 0
    assert result.summary["polygons"]["features"] == 0


def test_polygon_areas_in_a_geographic_crs_are_square_metres(tmp_path, small_tile_model):
    clouds = np.zeros((60, 60), bool)
    clouds[10:30, 10:40] = True  # 600 pixels
    src = synthetic.write_geotiff(
        tmp_path / "geo.tif",
        stack_from_clouds(clouds),
        geotransform=(10.0, 0.0001, 0.0, 60.0, 0.0, -0.0001),
        epsg=4326,
    )
    vector = str(tmp_path / "geo.gpkg")
    pipeline.run(
        pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=small_tile_model, vector=vector)
    )
    field, rows = polygons(vector)
    # one pixel at 60 deg N: 0.0001 deg of longitude ~ 5.58 m, of latitude ~ 11.13 m
    assert field == "area_m2"
    assert rows[0][2] == pytest.approx(600 * 5.58 * 11.13, rel=0.01)


def test_buffer_in_a_geographic_crs_is_converted_at_the_scene_latitude(tmp_path, small_tile_model):
    clouds = np.zeros((60, 60), bool)
    clouds[30, 30] = True
    src = synthetic.write_geotiff(
        tmp_path / "geo.tif",
        stack_from_clouds(clouds),
        geotransform=(10.0, 0.0001, 0.0, 60.003, 0.0, -0.0001),
        epsg=4326,
    )
    rec = []

    class Log(pipeline.Reporter):
        def info(self, text):
            rec.append(text)

    result = pipeline.run(
        pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=small_tile_model, buffer=39.4),
        Log(),
    )
    size = np.sqrt(5.58 * 11.13)  # mean pixel size in metres at 60 deg N
    assert result.summary["buffer_px"] == pytest.approx(39.4 / size, rel=0.01)
    assert any("latitude 60.0" in line and "mean size" in line for line in rec), rec


def test_buffer_needs_a_crs(tmp_path, small_tile_model):
    src = synthetic.write_geotiff(tmp_path / "nocrs.tif", stack_from_clouds(patches()), epsg=None)
    with pytest.raises(pipeline.ParameterError, match="metres.*no coordinate reference system"):
        pipeline.run(
            pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=small_tile_model, buffer=30)
        )
    assert os.listdir(tmp_path) == ["nocrs.tif"]


def test_masked_image_keeps_every_band_and_type_and_hides_cloud_and_buffer(
    tmp_path, small_tile_model
):
    clouds = patches()
    stack = stack_from_clouds(clouds)
    five = np.concatenate([stack, np.full((1, *clouds.shape), 777, np.uint16)])
    src = str(tmp_path / "five.tif")
    synthetic.write_geotiff(src, five)
    ds = gdal.Open(src, gdal.GA_Update)
    for i, name in enumerate(["B02", "B03", "B04", "B08", "B11"]):
        ds.GetRasterBand(i + 1).SetDescription(name)
    ds = None
    masked = str(tmp_path / "masked.tif")
    pipeline.run(
        pipeline.MaskRequest(
            src, str(tmp_path / "m.tif"), model=small_tile_model, buffer=10, masked=masked
        )
    )
    out = gdal.Open(masked)
    mask = gdal.Open(str(tmp_path / "m.tif")).ReadAsArray()
    assert out.RasterCount == 5 and out.GetRasterBand(1).DataType == gdal.GDT_UInt16
    assert [out.GetRasterBand(i + 1).GetDescription() for i in range(5)] == [
        "B02",
        "B03",
        "B04",
        "B08",
        "B11",
    ]
    assert all(out.GetRasterBand(i + 1).GetNoDataValue() == 0 for i in range(5))
    data = out.ReadAsArray()
    hidden = (mask == CLOUD) | (mask == CLOUD_BUFFER)
    assert (data[:, hidden] == 0).all()
    np.testing.assert_array_equal(data[:, ~hidden], five[:, ~hidden])
    assert out.GetGeoTransform() == gdal.Open(src).GetGeoTransform()


def test_masked_float_raster_uses_nan_without_declared_nodata(tmp_path, small_tile_model):
    clouds = patches()
    refl = (stack_from_clouds(clouds) / 10000).astype(np.float32)
    src = synthetic.write_geotiff(tmp_path / "refl.tif", refl)
    masked = str(tmp_path / "masked.tif")
    pipeline.run(
        pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=small_tile_model, masked=masked)
    )
    ds = gdal.Open(masked)
    band = ds.GetRasterBand(1)
    assert np.isnan(band.GetNoDataValue())
    assert np.isnan(band.ReadAsArray()[clouds]).all()


def test_every_raster_output_gets_its_style_and_stale_sidecars_go(tmp_path, small_tile_model):
    out = tmp_path / "mask.tif"
    (tmp_path / "mask.tif.aux.xml").write_text("<PAMDataset>stale</PAMDataset>")
    result, _ = run(
        str(tmp_path),
        small_tile_model,
        stack_from_clouds(patches()),
        probability=str(tmp_path / "p.tif"),
        masked=str(tmp_path / "masked.tif"),
        stats=str(tmp_path / "s.json"),
    )
    for name in ("mask.qml", "p.qml", "masked.qml"):
        assert (tmp_path / name).read_text().startswith("<!DOCTYPE qgis")
    assert not (tmp_path / "mask.tif.aux.xml").exists()  # it described the old file
    ds = gdal.Open(str(out))
    classes = ds.GetRasterBand(1).GetMetadata()
    assert classes == {"CLASS_0": "clear", "CLASS_1": "cloud", "CLASS_255": "nodata"}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["settings"]["buffer"]["value"] == 0.0
    assert summary["outputs"]["masked"] == str(tmp_path / "masked.tif")


def test_outputs_whose_styles_collide_are_refused(tmp_path, small_tile_model):
    src = synthetic.write_geotiff(tmp_path / "in.tif", stack_from_clouds(patches()))
    with pytest.raises(pipeline.ParameterError, match=r"\.tif / \.tiff"):
        pipeline.run(
            pipeline.MaskRequest(
                src,
                str(tmp_path / "a.tif"),
                probability=str(tmp_path / "a.tiff"),
                model=small_tile_model,
            )
        )
    with pytest.raises(pipeline.ParameterError, match="GeoPackage"):
        pipeline.run(
            pipeline.MaskRequest(
                src, str(tmp_path / "a.tif"), vector=str(tmp_path / "v.shp"), model=small_tile_model
            )
        )
    assert sorted(os.listdir(tmp_path)) == ["in.tif"]


@pytest.mark.parametrize("step", ["sieve", "buffer", "polygons"])
def test_cancel_during_post_processing_leaves_nothing(tmp_path, small_tile_model, step):
    src = synthetic.write_geotiff(tmp_path / "in.tif", stack_from_clouds(patches()))

    class CancelLate(pipeline.Reporter):
        """Cancels once inference is done (its share of the progress bar is over)."""

        def __init__(self):
            self.last = 0.0

        def progress(self, fraction):
            self.last = fraction

        def canceled(self):
            return self.last > 0.8

    request = pipeline.MaskRequest(
        src,
        str(tmp_path / "m.tif"),
        model=small_tile_model,
        probability=str(tmp_path / "p.tif"),
        min_cloud_size=3 if step == "sieve" else None,
        buffer=20 if step == "buffer" else None,
        vector=str(tmp_path / "v.gpkg") if step == "polygons" else None,
    )
    with pytest.raises(pipeline.Cancelled):
        pipeline.run(request, CancelLate())
    assert sorted(os.listdir(tmp_path)) == ["in.tif"]


def test_style_path_is_beside_the_raster():
    assert styles.style_path("/a/b/mask.tif") == "/a/b/mask.qml"


def test_polygon_areas_without_crs_are_in_map_units_and_say_so(tmp_path, small_tile_model):
    src = synthetic.write_geotiff(tmp_path / "nocrs.tif", stack_from_clouds(patches()), epsg=None)
    vector = str(tmp_path / "v.gpkg")
    result = pipeline.run(
        pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=small_tile_model, vector=vector)
    )
    field, rows = polygons(vector)
    assert field == "area"
    assert result.summary["polygons"]["area_unit"].startswith("square map units")
    assert sum(r[2] for r in rows) == pytest.approx(result.stats.cloud_pixels * PIXEL**2)


def test_masked_image_of_a_product_keeps_its_dn_and_band_names(tmp_path, small_tile_model):
    from tests.support import s2product

    clouds = patches()
    stack = stack_from_clouds(clouds)  # B02, B03, B04, B08
    product = s2product.write_product(tmp_path, stack + 1000, level="L2A", zip_it=True)
    masked = str(tmp_path / "masked.tif")
    pipeline.run(
        pipeline.MaskRequest(
            str(product.zip), str(tmp_path / "m.tif"), model=small_tile_model, masked=masked
        )
    )
    out = gdal.Open(masked)
    names = [out.GetRasterBand(i + 1).GetDescription().split(",")[0] for i in range(4)]
    assert names == ["B4", "B3", "B2", "B8"]  # the product's 10 m order
    data = out.ReadAsArray()
    np.testing.assert_array_equal(data[2][~clouds], stack[0][~clouds] + 1000)  # DN as stored
    assert (data[:, clouds] == 0).all()
    assert all(out.GetRasterBand(i + 1).GetNoDataValue() == 0 for i in range(4))
    # masked again, it is read like the product: the offset is still known
    again = pipeline.run(
        pipeline.MaskRequest(masked, str(tmp_path / "m2.tif"), model=small_tile_model)
    )
    assert again.settings["radiometry"]["value"] == "(DN - 1000) / 10000"
    assert again.stats.cloud_pixels == 0
