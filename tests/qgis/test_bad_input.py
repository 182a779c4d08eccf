"""Bad input: a QgsProcessingException a GIS user understands, and no file left behind."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from tests.support import synthetic


@pytest.fixture
def workdir(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture
def s2(workdir):
    return synthetic.write_geotiff(workdir / "s2.tif", synthetic.sample_scene(250, 260, seed=1))


def fails(run_alg, params, match, workdir, feedback=None):
    """Run, expect the error, and check the work folder holds nothing new."""
    before = set(os.listdir(workdir))
    with pytest.raises(QgsProcessingException, match=match):
        run_alg(params, feedback=feedback)
    left = {f for f in set(os.listdir(workdir)) - before if not f.endswith(".aux.xml")}
    assert not left, f"left behind: {left}"


def out(workdir, **extra):
    return {
        "OUTPUT": str(workdir / "mask.tif"),
        "OUTPUT_PROBABILITY": str(workdir / "p.tif"),
        "OUTPUT_STATS": str(workdir / "s.json"),
        **extra,
    }


@pytest.mark.parametrize(
    ("bands", "match"),
    [
        ({"RED_BAND": 7}, "red band is set to 7, but the input raster has bands 1 to 4"),
        ({"NIR_BAND": 0}, "nir band is set to 0"),
        ({"RED_BAND": 1, "BLUE_BAND": 1}, "same raster band is chosen for more than one"),
    ],
)
def test_band_out_of_range_or_repeated(run_alg, s2, workdir, bands, match):
    fails(run_alg, {"INPUT": s2, **bands, **out(workdir)}, match, workdir)


def test_single_band_raster(run_alg, workdir):
    src = synthetic.write_geotiff(workdir / "one.tif", synthetic.sample_scene(50, 50)[:1])
    fails(
        run_alg,
        {"INPUT": src, **out(workdir)},
        "has 1 band\\(s\\), but the cloud model needs four",
        workdir,
    )


def test_raster_of_only_nodata(run_alg, workdir):
    src = synthetic.write_geotiff(workdir / "empty.tif", np.zeros((4, 300, 300), np.uint16))
    fails(run_alg, {"INPUT": src, **out(workdir)}, "holds only nodata", workdir)


def test_raster_of_only_nan(run_alg, workdir):
    src = synthetic.write_geotiff(workdir / "nan.tif", np.full((4, 60, 60), np.nan, np.float32))
    fails(run_alg, {"INPUT": src, **out(workdir)}, "holds only nodata", workdir)


def test_8_bit_raster_is_rejected(run_alg, workdir):
    src = synthetic.write_geotiff(workdir / "rgb.tif", np.full((4, 60, 60), 90, np.uint8))
    fails(run_alg, {"INPUT": src, **out(workdir)}, "stores Byte values", workdir)


def test_complex_raster_is_rejected(run_alg, workdir):
    src = synthetic.write_geotiff(workdir / "c.tif", np.ones((4, 30, 30), np.complex64))
    fails(run_alg, {"INPUT": src, **out(workdir)}, "stores CFloat32 values", workdir)


def test_missing_model_file(run_alg, s2, workdir):
    fails(
        run_alg,
        {"INPUT": s2, "MODEL": str(workdir / "nope.onnx"), **out(workdir)},
        "does not exist",
        workdir,
    )


def test_model_that_is_not_onnx(run_alg, s2, workdir, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a model")
    fails(
        run_alg,
        {"INPUT": s2, "MODEL": str(bad), **out(workdir)},
        "not a usable ONNX model",
        workdir,
    )


def test_model_breaking_the_contract_names_the_missing_key(run_alg, s2, workdir, tmp_path):
    m = synthetic.write_pixel_model(tmp_path / "nokey.onnx", drop_keys=("tile_size",))
    fails(run_alg, {"INPUT": s2, "MODEL": m, **out(workdir)}, "'tile_size' missing", workdir)


def test_no_bundled_model_and_none_given(run_alg, s2, workdir, monkeypatch):
    from qgis_cloudmask import pipeline

    monkeypatch.setattr(pipeline, "BUNDLED_MODEL_CANDIDATES", ())
    fails(
        run_alg,
        {"INPUT": s2, "MODEL": None, **out(workdir)},
        "No trained cloud model is bundled",
        workdir,
    )


def test_onnxruntime_not_installed(run_alg, s2, workdir, monkeypatch):
    # Mock (the only way to test this): make `import onnxruntime` fail as on a bare QGIS.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    fails(
        run_alg,
        {"INPUT": s2, **out(workdir)},
        r"(?s)onnxruntime' is not installed.*pip install",  # with the command for this platform
        workdir,
    )


def test_output_folder_that_does_not_exist(run_alg, s2, workdir):
    fails(
        run_alg,
        {"INPUT": s2, "OUTPUT": str(workdir / "missing" / "mask.tif")},
        "folder .* does not exist",
        workdir,
    )


def test_output_in_a_folder_that_cannot_be_written(run_alg, s2, workdir):
    # chmod cannot stop root (CI runs as root); /proc refuses new files for everybody.
    fails(
        run_alg,
        {"INPUT": s2, "OUTPUT": "/proc/cloudmask-test-mask.tif"},
        "[Cc]annot (create|write)",
        workdir,
    )
    assert not os.path.exists("/proc/cloudmask-test-mask.tif")


def test_stats_in_a_folder_that_does_not_exist(run_alg, s2, workdir):
    fails(
        run_alg,
        {"INPUT": s2, **out(workdir, OUTPUT_STATS=str(workdir / "no" / "s.json"))},
        "statistics .* does not exist",
        workdir,
    )


def test_output_equal_to_input_is_refused_and_input_survives(run_alg, s2, workdir):
    before = open(s2, "rb").read()
    fails(run_alg, {"INPUT": s2, "OUTPUT": s2}, "is the input raster", workdir)
    assert open(s2, "rb").read() == before


def test_output_that_is_not_geotiff(run_alg, s2, workdir):
    fails(run_alg, {"INPUT": s2, "OUTPUT": str(workdir / "mask.png")}, "ending in .tif", workdir)


def test_overlap_not_smaller_than_tile(run_alg, s2, workdir):
    fails(
        run_alg,
        {"INPUT": s2, "OVERLAP": 224, **out(workdir)},
        "smaller than the tile size",
        workdir,
    )


def test_cancel_leaves_no_partial_output(run_alg, workdir):
    src = synthetic.write_geotiff(workdir / "big.tif", synthetic.sample_scene(700, 700, seed=2))
    fb = QgsProcessingFeedback()
    fb.progressChanged.connect(lambda p: fb.cancel() if p > 10 else None)
    fails(run_alg, {"INPUT": src, "BATCH_SIZE": 1, **out(workdir)}, "Cancelled", workdir, fb)


def test_existing_output_survives_a_failed_run(run_alg, s2, workdir):
    previous = workdir / "mask.tif"
    previous.write_bytes(b"an earlier result")
    with pytest.raises(QgsProcessingException):
        run_alg({"INPUT": s2, "RED_BAND": 9, "OUTPUT": str(previous)})
    assert previous.read_bytes() == b"an earlier result"


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"BUFFER": -10}, "BUFFER"),
        ({"BUFFER": "ten"}, "BUFFER"),
        ({"MIN_CLOUD_SIZE": -1}, "MIN_CLOUD_SIZE"),
        ({"MIN_CLOUD_SIZE": "abc"}, "MIN_CLOUD_SIZE"),
    ],
)
def test_post_processing_values_that_are_not_sizes_or_distances(
    run_alg, s2, workdir, params, match
):
    fails(run_alg, {"INPUT": s2, **out(workdir), **params}, match, workdir)


def test_buffer_on_a_raster_without_crs_names_the_crs(run_alg, workdir):
    src = synthetic.write_geotiff(
        workdir / "nocrs.tif", synthetic.sample_scene(60, 60, seed=2), epsg=None
    )
    fails(run_alg, {"INPUT": src, **out(workdir), "BUFFER": 30}, "no coordinate reference", workdir)


def test_polygons_must_be_a_geopackage(run_alg, s2, workdir):
    params = {"INPUT": s2, **out(workdir), "OUTPUT_VECTOR": str(workdir / "clouds.shp")}
    fails(run_alg, params, "GeoPackage", workdir)
