"""The headless pipeline on plain rasters: usable without QGIS, one place for every default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from osgeo import gdal

from qgis_cloudmask import pipeline
from qgis_cloudmask.core import sentinel2
from tests.support import synthetic

gdal.UseExceptions()


def described_stack(path, scene, names):
    """A GeoTIFF whose band descriptions are ``names`` (what SNAP / gdal_translate write)."""
    synthetic.write_geotiff(path, scene)
    ds = gdal.Open(str(path), gdal.GA_Update)
    for i, name in enumerate(names):
        ds.GetRasterBand(i + 1).SetDescription(name)
    ds = None
    return str(path)


def test_pipeline_runs_without_qgis_imported(tmp_path, pixel_model):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", synthetic.sample_scene(120, 130, seed=2))
    code = f"""
import sys, json
from qgis_cloudmask import pipeline
req = pipeline.MaskRequest({src!r}, {str(tmp_path / "m.tif")!r}, model={str(pixel_model)!r})
res = pipeline.run(req)
bad = sorted(m for m in sys.modules if m.split('.')[0] == 'qgis')
print(json.dumps({{"bad": bad, "cloud": res.stats.cloud_pixels}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd()
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bad"] == [] and out["cloud"] > 0


def test_13_band_stack_described_b01_to_b12_picks_its_bands(tmp_path, pixel_model):
    scene = synthetic.sample_scene(150, 170, seed=4)
    full = np.full((13, 150, 170), 1234, np.uint16)
    names = list(sentinel2.BAND_IDS)
    for band, i in (("B02", 0), ("B03", 1), ("B04", 2), ("B08", 3)):
        full[names.index(band)] = scene[i]
    src = described_stack(tmp_path / "s2_13.tif", full, names)
    res = pipeline.run(pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=str(pixel_model)))
    assert res.settings["bands"]["value"] == {"B04": 4, "B03": 3, "B02": 2, "B08": 8}
    mask = gdal.Open(str(tmp_path / "m.tif")).ReadAsArray()
    exp = synthetic.sigmoid_probability(scene[0] / 10000, 40, 0.2)
    decided = np.abs(exp - 0.5) > 1e-5
    np.testing.assert_array_equal(mask[decided], (exp >= 0.5)[decided])


def test_more_than_4_undescribed_bands_need_an_explicit_choice(tmp_path, pixel_model):
    src = synthetic.write_geotiff(tmp_path / "s2_6.tif", np.full((6, 40, 40), 900, np.uint16))
    with pytest.raises(pipeline.ParameterError, match="has 6 bands and none is described"):
        pipeline.run(pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=str(pixel_model)))
    assert sorted(os.listdir(tmp_path)) == ["s2_6.tif"]


def test_result_and_statistics_json_carry_every_setting_with_its_reason(tmp_path, pixel_model):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", synthetic.sample_scene(100, 110, seed=8))
    req = pipeline.MaskRequest(
        src,
        str(tmp_path / "m.tif"),
        stats=str(tmp_path / "s.json"),
        model=str(pixel_model),
        threshold=0.6,
    )
    res = pipeline.run(req)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["settings"] == res.settings
    for key in ("input", "bands", "radiometry", "model", "overlap", "threshold", "batch_size"):
        assert res.settings[key]["reason"], key
    assert res.settings["threshold"] == {"value": 0.6, "reason": "set by THRESHOLD"}
    assert res.settings["overlap"]["reason"] == "recommended by the model"
    assert "default order" in res.settings["bands"]["reason"]
    assert saved["radiometry"]["source"] == "data" and saved["radiometry"]["confident"] is True
    assert saved["warnings"] == []


def test_reporter_gets_progress_log_and_can_cancel(tmp_path, pixel_model):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", synthetic.sample_scene(500, 500, seed=1))

    class Recorder(pipeline.Reporter):
        def __init__(self):
            self.lines, self.fractions = [], []

        def info(self, text):
            self.lines.append(text)

        def progress(self, fraction):
            self.fractions.append(fraction)

        def canceled(self):
            return len(self.fractions) >= 2

    rec = Recorder()
    with pytest.raises(pipeline.Cancelled, match="no output was written"):
        pipeline.run(
            pipeline.MaskRequest(
                src, str(tmp_path / "m.tif"), model=str(pixel_model), batch_size=1
            ),
            rec,
        )
    assert any(line.startswith("Radiometry:") for line in rec.lines)
    assert sorted(os.listdir(tmp_path)) == ["s2.tif"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"threshold": float("nan")}, "between 0 and 1"),
        ({"threshold": 1.5}, "between 0 and 1"),
        ({"overlap": 224}, "smaller than the tile size"),
        ({"batch_size": 0}, "between 1 and 256"),
        ({"bands": {"red": 9}}, "red band is set to 9"),
    ],
)
def test_bad_parameters_are_parameter_errors(tmp_path, pixel_model, kw, match):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", synthetic.sample_scene(50, 50, seed=1))
    with pytest.raises(pipeline.ParameterError, match=match):
        pipeline.run(
            pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=str(pixel_model), **kw)
        )
