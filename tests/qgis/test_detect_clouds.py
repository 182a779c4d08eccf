"""``cloudmask:detectclouds`` through ``processing.run`` on real GeoTIFFs written by GDAL."""

from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from tests.support import synthetic

gdal.UseExceptions()


def expected_probability(dn_blue, offset=0.0):
    return synthetic.sigmoid_probability((dn_blue.astype(np.float64) + offset) / 10000, 40, 0.2)


def read(path):
    ds = gdal.Open(str(path))
    return ds, ds.GetRasterBand(1).ReadAsArray()


def run_and_read(run_alg, src, tmp_path, **params):
    """Run on ``src`` writing mask and probability; return (results, mask, probability)."""
    res = run_alg(
        {
            "INPUT": src,
            "OUTPUT": str(tmp_path / "mask.tif"),
            "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"),
            **params,
        }
    )
    return res, read(res["OUTPUT"])[1], read(res["OUTPUT_PROBABILITY"])[1]


def assert_matches(mask, prob, dn_blue, valid=None):
    exp = expected_probability(dn_blue)
    valid = np.ones(exp.shape, bool) if valid is None else valid
    decided = valid & (np.abs(exp - 0.5) > 1e-5)
    np.testing.assert_array_equal(mask[decided], (exp >= 0.5)[decided].astype(np.uint8))
    assert (mask[~valid] == 255).all()
    if prob is not None:
        np.testing.assert_allclose(prob[valid], exp[valid], atol=1e-5)
        assert (prob[~valid] == -1).all()


def test_mask_is_georeferenced_like_the_input_and_styled(run_alg, scene, tmp_path):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene, epsg=32633)
    res = run_alg({"INPUT": src, "OUTPUT": str(tmp_path / "mask.tif")})
    ds_in = gdal.Open(src)
    ds, mask = read(res["OUTPUT"])
    assert (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == (350, 300, 1)
    assert ds.GetGeoTransform() == ds_in.GetGeoTransform()
    assert ds.GetSpatialRef().IsSame(ds_in.GetSpatialRef())
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    assert band.GetRasterColorTable().GetColorEntry(1)[3] == 255  # clouds visible when loaded
    assert set(np.unique(mask)) <= {0, 1}
    assert_matches(mask, None, scene[0])


def test_outputs_probability_stats_json_and_numbers_agree_with_a_recount(run_alg, scene, tmp_path):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    res = run_alg(
        {
            "INPUT": src,
            "OUTPUT": str(tmp_path / "mask.tif"),
            "OUTPUT_PROBABILITY": str(tmp_path / "prob.tif"),
            "OUTPUT_STATS": str(tmp_path / "stats.json"),
        }
    )
    _, mask = read(res["OUTPUT"])
    _, prob = read(res["OUTPUT_PROBABILITY"])
    assert_matches(mask, prob, scene[0])
    cloud, clear = int((mask == 1).sum()), int((mask == 0).sum())
    assert res["CLOUD_PIXELS"] == cloud and res["CLEAR_PIXELS"] == clear
    assert res["NODATA_PIXELS"] == 0
    assert res["CLOUD_PERCENT"] == pytest.approx(100 * cloud / mask.size)
    assert res["CLOUD_AREA"] == pytest.approx(cloud * 100.0)  # 10 m pixels
    assert res["AREA_UNIT"] == "square meters"
    assert res["MODEL_NAME"] == "test-blue-sigmoid 0.0.1"
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["cloud_pixels"] == cloud and stats["cloud_area"] == res["CLOUD_AREA"]
    assert stats["overlap"] == 32 and stats["threshold"] == 0.5
    assert 0 < res["CLOUD_PERCENT"] < 100  # the sample scene really has clouds and clear land


def test_area_of_a_geographic_raster_is_in_square_degrees(run_alg, scene, tmp_path):
    src = synthetic.write_geotiff(
        tmp_path / "ll.tif", scene, geotransform=(10.0, 1e-4, 0, 45.0, 0, -1e-4), epsg=4326
    )
    res = run_alg({"INPUT": src, "OUTPUT": str(tmp_path / "mask.tif")})
    assert res["AREA_UNIT"] == "square degrees"
    assert res["CLOUD_AREA"] == pytest.approx(res["CLOUD_PIXELS"] * 1e-8)


def test_band_parameters_pick_bands_from_a_13_band_stack(run_alg, scene, tmp_path):
    full = np.zeros((13, *scene.shape[1:]), np.uint16) + 1234
    for band_1based, src_index in ((2, 0), (3, 1), (4, 2), (8, 3)):  # B02, B03, B04, B08
        full[band_1based - 1] = scene[src_index]
    src = synthetic.write_geotiff(tmp_path / "s2_13.tif", full)
    res = run_alg(
        {
            "INPUT": src,
            "RED_BAND": 4,
            "GREEN_BAND": 3,
            "BLUE_BAND": 2,
            "NIR_BAND": 8,
            "OUTPUT": str(tmp_path / "mask.tif"),
        }
    )
    _, mask = read(res["OUTPUT"])
    assert_matches(mask, None, scene[0])


def test_baseline_04_offset_is_removed(run_alg, scene, tmp_path):
    src = synthetic.write_geotiff(tmp_path / "pb04.tif", (scene + 1000).astype(np.uint16))
    _, mask, prob = run_and_read(run_alg, src, tmp_path, RADIOMETRY=2)
    assert_matches(mask, prob, scene[0])


def test_float_reflectance_passes_through_unscaled(run_alg, scene, tmp_path):
    src = synthetic.write_geotiff(tmp_path / "refl.tif", (scene / 10000).astype(np.float32))
    _, mask, prob = run_and_read(run_alg, src, tmp_path)
    assert_matches(mask, prob, scene[0])


@pytest.mark.parametrize(("h", "w"), [(1, 1), (40, 17), (224, 224), (230, 100)])
def test_rasters_smaller_than_a_tile_are_padded_not_resized(run_alg, tmp_path, h, w):
    scene = synthetic.sample_scene(h, w, seed=h + w)
    src = synthetic.write_geotiff(tmp_path / "small.tif", scene)
    _, mask, prob = run_and_read(run_alg, src, tmp_path)
    assert mask.shape == (h, w)
    assert_matches(mask, prob, scene[0])


def test_nodata_zero_and_nan_pixels_are_255_and_left_out_of_statistics(run_alg, tmp_path):
    scene = (synthetic.sample_scene(260, 240, seed=9) / 10000).astype(np.float32)
    valid = np.ones(scene.shape[1:], bool)
    scene[:, :20, :] = -9999  # declared nodata
    scene[:, 100:110, 50:70] = 0  # all bands 0: S2 fill
    scene[1, 200:205, 10:15] = np.nan  # one band NaN
    scene[3, 150, 150] = np.inf
    valid[:20], valid[100:110, 50:70], valid[200:205, 10:15], valid[150, 150] = (False,) * 4
    src = synthetic.write_geotiff(tmp_path / "nd.tif", scene, nodata=-9999)
    res, mask, prob = run_and_read(run_alg, src, tmp_path)
    dn_blue = np.where(valid, scene[0] * 10000, 0)
    assert_matches(mask, prob, dn_blue, valid)
    assert res["NODATA_PIXELS"] == int((~valid).sum())
    assert res["CLOUD_PERCENT"] == pytest.approx(100 * (mask == 1).sum() / valid.sum())


def test_threshold_and_overlap_parameters_override_the_model(run_alg, scene, tmp_path):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    res = run_alg(
        {
            "INPUT": src,
            "THRESHOLD": 0.9,
            "OVERLAP": 0,
            "BATCH_SIZE": 1,
            "OUTPUT": str(tmp_path / "mask.tif"),
            "OUTPUT_STATS": str(tmp_path / "s.json"),
        }
    )
    _, mask = read(res["OUTPUT"])
    exp = expected_probability(scene[0])
    decided = np.abs(exp - 0.9) > 1e-5
    np.testing.assert_array_equal(mask[decided], (exp >= 0.9)[decided])
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["threshold"] == 0.9 and stats["overlap"] == 0


def test_progress_is_reported(run_alg, scene, tmp_path):
    seen = []
    fb = QgsProcessingFeedback()
    fb.progressChanged.connect(seen.append)
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    run_alg({"INPUT": src, "BATCH_SIZE": 1, "OUTPUT": str(tmp_path / "m.tif")}, feedback=fb)
    assert seen and seen[-1] == 100 and len(seen) >= 4


def test_bundled_model_is_used_when_model_is_not_given(
    run_alg, scene, tmp_path, monkeypatch, pixel_model
):
    from qgis_cloudmask import pipeline

    monkeypatch.setattr(pipeline, "BUNDLED_MODEL_CANDIDATES", (str(pixel_model),))
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    res = run_alg({"INPUT": src, "MODEL": None, "OUTPUT": str(tmp_path / "m.tif")})
    assert res["MODEL_NAME"] == "test-blue-sigmoid 0.0.1"


class WarningRecorder(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.warnings = []
        self.infos = []

    def pushWarning(self, text):  # noqa: N802
        self.warnings.append(text)

    def pushInfo(self, text):  # noqa: N802
        self.infos.append(text)


def test_float_raster_holding_dn_is_read_as_dn_automatically(run_alg, scene, tmp_path):
    fb = WarningRecorder()
    src = synthetic.write_geotiff(tmp_path / "dn.tif", scene.astype(np.float32))
    _, mask, prob = run_and_read(run_alg, src, tmp_path)
    assert_matches(mask, prob, scene[0])
    run_alg({"INPUT": src, "OUTPUT": str(tmp_path / "m2.tif")}, feedback=fb)
    assert not fb.warnings
    assert any("float values holding DN" in line for line in fb.infos)


def test_explicit_reflectance_on_dn_data_is_warned_about(run_alg, scene, tmp_path):
    fb = WarningRecorder()
    src = synthetic.write_geotiff(tmp_path / "dn.tif", scene.astype(np.float32))
    run_alg({"INPUT": src, "RADIOMETRY": 3, "OUTPUT": str(tmp_path / "m.tif")}, feedback=fb)
    assert len(fb.warnings) == 1
    assert "RADIOMETRY is set to 'Reflectance" in fb.warnings[0]
    assert "RADIOMETRY=0" in fb.warnings[0]


def test_undecidable_radiometry_is_a_warning_naming_the_parameter(run_alg, scene, tmp_path):
    """A plain stack with the +1000 offset and no metadata: the data cannot tell it from a
    bright scene; the offset is assumed and the user is told which parameter to set."""
    fb = WarningRecorder()
    src = synthetic.write_geotiff(tmp_path / "pb04.tif", (scene + 1000).astype(np.uint16))
    res = run_alg(
        {"INPUT": src, "OUTPUT": str(tmp_path / "m.tif"), "OUTPUT_STATS": str(tmp_path / "s.json")},
        feedback=fb,
    )
    assert len(fb.warnings) == 1 and "RADIOMETRY=1" in fb.warnings[0]
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["radiometry"]["confident"] is False
    assert stats["warnings"] == fb.warnings
    _, mask = read(res["OUTPUT"])
    assert_matches(mask, None, scene[0])  # the offset was assumed, rightly here


# -- inference options: ensembles, TTA, histogram matching ----------------------------------


@pytest.fixture
def red_model(tmp_path):

    return synthetic.write_red_model(tmp_path / "red.onnx")


def test_several_models_form_a_weighted_ensemble(run_alg, scene, tmp_path, pixel_model, red_model):
    res, mask, prob = run_and_read(
        run_alg,
        synthetic.write_geotiff(tmp_path / "s2.tif", scene),
        tmp_path,
        MODEL=[str(pixel_model), red_model],
        WEIGHTS="3, 1",
        TTA=1,
    )
    refl_blue, refl_red = scene[0] / 10000, scene[2] / 10000
    expected = 0.75 * synthetic.sigmoid_probability(refl_blue, 40, 0.2)
    expected += 0.25 * synthetic.sigmoid_probability(refl_red, 25, 0.15)
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    assert res["THRESHOLD_USED"] == pytest.approx(0.45)
    assert res["TTA_USED"] == "flips"
    assert res["MODEL_NAME"].startswith("ensemble of 2 models")


def test_tta_given_by_name_and_histogram_matching_off_by_default(run_alg, scene, tmp_path):
    res, mask, prob = run_and_read(
        run_alg, synthetic.write_geotiff(tmp_path / "s2.tif", scene), tmp_path, TTA="d8"
    )
    assert res["TTA_USED"] == "d8"
    assert_matches(mask, prob, scene[0])  # a per-pixel model: TTA changes nothing


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"WEIGHTS": "3"}, "WEIGHTS (Ensemble weights"),
        ({"WEIGHTS": "3, 0"}, "numbers greater than 0"),
        ({"WEIGHTS": "3, x"}, "numbers greater than 0"),
        ({"TTA": 5}, "TTA (Test-time augmentation) must be one of 0 = None"),
        ({"TTA": "rotations"}, "or the name none, flips, d8"),
        ({"HISTOGRAM_MATCHING": True}, "HISTOGRAM_MATCHING"),
    ],
)
def test_bad_option_values_name_the_parameter(
    run_alg, scene, tmp_path, pixel_model, red_model, params, words
):
    from qgis.core import QgsProcessingException

    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    with pytest.raises(QgsProcessingException) as info:
        run_alg(
            {
                "INPUT": src,
                "OUTPUT": str(tmp_path / "mask.tif"),
                "MODEL": [str(pixel_model), red_model],
                **params,
            }
        )
    assert words in str(info.value)
    assert not (tmp_path / "mask.tif").exists()


@pytest.mark.parametrize("force_cpu", [False, True])
def test_the_execution_provider_is_named_and_cpu_can_be_forced(run_alg, scene, tmp_path, force_cpu):
    stats = tmp_path / "stats.json"
    res, mask, prob = run_and_read(
        run_alg,
        synthetic.write_geotiff(tmp_path / "s2.tif", scene),
        tmp_path,
        FORCE_CPU=force_cpu,
        OUTPUT_STATS=str(stats),
    )
    # this machine's onnxruntime has no GPU provider: CPU either way, with the reason
    assert res["EXECUTION_PROVIDER"] == "CPUExecutionProvider"
    setting = json.loads(stats.read_text())["settings"]["execution_provider"]
    assert setting["value"] == "CPUExecutionProvider"
    expected = "device cpu: CPU only" if force_cpu else "device auto: this onnxruntime has no GPU"
    assert setting["reason"].startswith(expected)
    assert_matches(mask, prob, scene[0])


@pytest.mark.parametrize("value", [1, "fast"])
def test_the_fast_bundled_model_runs_when_chosen(run_alg, scene, tmp_path, value):
    from qgis_cloudmask import pipeline

    if pipeline.bundled_model_path("fast") is None:
        pytest.skip("this build bundles no fast model")
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    res = run_alg(
        {"INPUT": src, "MODEL": None, "BUNDLED_MODEL": value, "OUTPUT": str(tmp_path / "m.tif")}
    )
    assert res["MODEL_NAME"].endswith("+int8")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (2, "BUNDLED_MODEL"),
        ("turbo", "BUNDLED_MODEL"),
        ("fast", "choose one of them"),  # with MODEL files
    ],
)
def test_a_bad_bundled_model_choice_is_refused(run_alg, scene, tmp_path, pixel_model, value, words):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    with pytest.raises(QgsProcessingException) as info:
        run_alg(
            {
                "INPUT": src,
                "BUNDLED_MODEL": value,
                "MODEL": [str(pixel_model)],
                "OUTPUT": str(tmp_path / "m.tif"),
            }
        )
    assert words in str(info.value)
    assert not (tmp_path / "m.tif").exists()
