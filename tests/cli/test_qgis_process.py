"""The algorithm as users script it: ``qgis_process --json run cloudmask:detectclouds``."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from osgeo import gdal

from tests.support import qgis_process, synthetic

pytestmark = pytest.mark.cli


def test_qgis_process_lists_and_runs_the_algorithm(tmp_path, pixel_model):
    scene = synthetic.sample_scene(260, 300, seed=5)
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    rc, data, log = qgis_process.run_json(
        "cloudmask:detectclouds",
        {
            "INPUT": src,
            "MODEL": pixel_model,
            "OVERLAP": 16,
            "OUTPUT": tmp_path / "mask.tif",
            "OUTPUT_STATS": tmp_path / "stats.json",
        },
        tmp_path / "qgis-config",
    )
    assert rc == 0, log
    res = data["results"]
    mask = gdal.Open(str(tmp_path / "mask.tif")).ReadAsArray()
    assert res["CLOUD_PIXELS"] == int((mask == 1).sum())
    assert res["CLEAR_PIXELS"] == int((mask == 0).sum())
    assert res["CLOUD_PERCENT"] == pytest.approx(100 * (mask == 1).mean())
    assert res["AREA_UNIT"] == "square meters"
    # the settings actually used, not the parameters as given (THRESHOLD was left unset)
    assert res["THRESHOLD_USED"] == 0.5 and res["OVERLAP_USED"] == 16
    assert res["BANDS_USED"] == "B04=3, B03=2, B02=1, B08=4"
    assert res["RADIOMETRY_USED"] == "DN / 10000"
    assert (tmp_path / "stats.json").is_file()
    exp = synthetic.sigmoid_probability(scene[0] / 10000, 40, 0.2)
    decided = np.abs(exp - 0.5) > 1e-5
    np.testing.assert_array_equal(mask[decided], (exp >= 0.5)[decided])
    assert any("CPUExecutionProvider" in line for line in data["log"]["info"])


def test_qgis_process_reports_bad_input_and_fails(tmp_path, pixel_model):
    src = synthetic.write_geotiff(tmp_path / "one.tif", synthetic.sample_scene(30, 30)[:1])
    rc, _, log = qgis_process.run_json(
        "cloudmask:detectclouds",
        {"INPUT": src, "MODEL": pixel_model, "OUTPUT": tmp_path / "mask.tif"},
        tmp_path / "qgis-config",
    )
    assert rc != 0
    assert "needs four" in log
    assert not (tmp_path / "mask.tif").exists()


def _scene(folder):
    return synthetic.write_geotiff(folder / "s2.tif", synthetic.sample_scene(60, 70, seed=4))


def _file(name, content):
    def write(folder):
        (folder / name).write_bytes(content)
        return str(folder / name)

    return write


def _truncated(folder):
    whole = open(_scene(folder), "rb").read()
    (folder / "s2.tif").unlink()
    (folder / "cut.tif").write_bytes(whole[: len(whole) // 2])
    return str(folder / "cut.tif")


#: (id, input writer, parameters as typed on the command line, regex the output must hold)
CLI_CASES = [
    (
        "empty-file",
        _file("s2.tif", b""),
        {},
        r"exists, but GDAL cannot read it as a raster: the file is empty",
    ),
    (
        "text-file",
        _file("s2.txt", b"B02 B03\n"),
        {},
        r"s2\.txt' exists, but GDAL cannot read it .*not a raster at all",
    ),
    ("truncated", _truncated, {}, r"cut\.tif' exists, .*its pixels cannot be read.*truncated"),
    (
        "threshold-decimal-comma",
        _scene,
        {"THRESHOLD": "0,5"},
        r"THRESHOLD .*got '0,5'\. Write decimals with a point: 0\.5",
    ),
    ("threshold-nan", _scene, {"THRESHOLD": "nan"}, r"THRESHOLD .*from 0 to 1, got 'nan'"),
    (
        "overlap-words",
        _scene,
        {"OVERLAP": "abc"},
        r"OVERLAP .*0 to 112 px for this model's 224-px tiles, got 'abc'",
    ),
    ("band-words", _scene, {"RED_BAND": "abc"}, r"RED_BAND .*must be a band number.*got 'abc'"),
    (
        "band-overflowing-int",
        _scene,
        {"NIR_BAND": "99999999999"},
        r"nir band is set to 99999999999, but the input raster has bands 1 to 4",
    ),
    (
        "radiometry-out-of-range",
        _scene,
        {"RADIOMETRY": "7"},
        r"RADIOMETRY .*0 = Automatic.*got '7'",
    ),
    ("batch-zero", _scene, {"BATCH_SIZE": "0"}, r"BATCH_SIZE .*from 1 to 256, got '0'"),
    (
        "model-returning-nan",
        _scene,
        {"MODEL": "{nan_model}"},
        r"returned NaN \(not a number\).*No output was written",
    ),
]


@pytest.mark.parametrize(
    ("writer", "params", "match"), [pytest.param(*c[1:], id=c[0]) for c in CLI_CASES]
)
def test_qgis_process_explains_bad_input_without_traceback(
    tmp_path, pixel_model, writer, params, match
):
    work = tmp_path / "work"
    work.mkdir()
    src = writer(work)
    nan_model = synthetic.write_constant_model(tmp_path / "nan.onnx", float("nan"))
    params = {k: v.format(nan_model=nan_model) for k, v in params.items()}
    before = sorted(os.listdir(work))
    rc, _, log = qgis_process.run_json(
        "cloudmask:detectclouds",
        {"INPUT": src, "MODEL": pixel_model, "OUTPUT": work / "mask.tif", **params},
        tmp_path / "qgis-config",
    )
    assert rc != 0, log
    assert re.search(match, log), log
    assert "Traceback" not in log, log
    new = set(os.listdir(work)) - set(before)
    assert new <= {f"{name}.aux.xml" for name in before}, new  # QGIS may describe the input


def test_qgis_process_runs_an_ensemble_with_tta(tmp_path, pixel_model):
    """MODEL repeated = an ensemble; TTA by index; the settings used come back as outputs."""

    red = synthetic.write_red_model(tmp_path / "red.onnx")
    scene = synthetic.sample_scene(200, 230, seed=8)
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    rc, data, log = qgis_process.run_json(
        "cloudmask:detectclouds",
        {
            "INPUT": src,
            "MODEL": [pixel_model, red],
            "WEIGHTS": "1,1",
            "TTA": 2,
            "OUTPUT": tmp_path / "mask.tif",
            "OUTPUT_PROBABILITY": tmp_path / "p.tif",
        },
        tmp_path / "qgis-config",
    )
    assert rc == 0, log
    res = data["results"]
    assert res["TTA_USED"] == "d8" and res["THRESHOLD_USED"] == pytest.approx(0.4)
    assert res["MODEL_NAME"].startswith("ensemble of 2 models")
    prob = gdal.Open(str(tmp_path / "p.tif")).ReadAsArray()
    expected = 0.5 * synthetic.sigmoid_probability(scene[0] / 10000, 40, 0.2)
    expected += 0.5 * synthetic.sigmoid_probability(scene[2] / 10000, 25, 0.15)
    np.testing.assert_allclose(prob, expected, atol=1e-5)
