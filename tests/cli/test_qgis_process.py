"""The algorithm as users script it: ``qgis_process --json run cloudmask:detectclouds``."""

from __future__ import annotations

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
