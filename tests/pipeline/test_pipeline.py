"""The headless pipeline on plain rasters: usable without QGIS, one place for every default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from osgeo import gdal, osr

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
        ({"overlap": 224}, "0 to 112 px for this model's 224-px tiles, got 224"),
        ({"overlap": -1}, "0 to 112 px"),
        # 50 x 50 px fits one tile whatever the overlap; the cost shows on bigger rasters
        ({"overlap": 113}, "0 to 112 px for this model's 224-px tiles, got 113"),
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


def test_an_overlap_near_the_tile_size_is_refused_with_its_cost(tmp_path, pixel_model):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", synthetic.sample_scene(512, 512, seed=1))
    with pytest.raises(pipeline.ParameterError, match=r"run 83521 tiles .* instead of 9 with"):
        pipeline.run(
            pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=str(pixel_model), overlap=223)
        )
    assert os.listdir(tmp_path) == ["s2.tif"]


def _no_georeferencing(path, scene):
    """A GeoTIFF with neither geotransform nor CRS (as a camera or a raw export writes it)."""
    synthetic.write_geotiff(path, scene, geotransform=None, epsg=None)
    return str(path)


def test_raster_without_georeferencing_gives_outputs_without_it(tmp_path, pixel_model):
    src = _no_georeferencing(tmp_path / "raw.tif", synthetic.sample_scene(90, 100, seed=2))
    res = pipeline.run(
        pipeline.MaskRequest(
            src, str(tmp_path / "m.tif"), probability=str(tmp_path / "p.tif"), model=pixel_model
        )
    )
    for name in ("m.tif", "p.tif"):  # not (0, 1, 0, 0, 0, 1): QGIS would draw it mirrored
        assert gdal.Open(str(tmp_path / name)).GetGeoTransform(can_return_null=True) is None
    assert res.area_unit == "square pixels (the raster has no geotransform)"
    assert res.cloud_area == res.stats.cloud_pixels


def test_raster_with_geotransform_but_no_crs_counts_area_in_map_units(tmp_path, pixel_model):
    scene = synthetic.sample_scene(90, 100, seed=2)
    src = synthetic.write_geotiff(tmp_path / "nocrs.tif", scene, epsg=None)
    res = pipeline.run(pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=pixel_model))
    assert res.area_unit == "square map units (the raster has no CRS)"
    assert res.cloud_area == res.stats.cloud_pixels * 100.0  # 10 x 10 map units per pixel


def test_gcp_georeferencing_is_copied_to_the_outputs(tmp_path, pixel_model):
    src = _no_georeferencing(tmp_path / "gcp.tif", synthetic.sample_scene(60, 70, seed=2))
    ds = gdal.Open(src, gdal.GA_Update)
    gcps = [
        gdal.GCP(500000 + 10 * x, 5000000 - 10 * y, 0, x, y) for x, y in ((0, 0), (70, 0), (0, 60))
    ]
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetGCPs(gcps, srs.ExportToWkt())
    ds = None
    pipeline.run(pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=str(pixel_model)))
    out = gdal.Open(str(tmp_path / "m.tif"))
    assert out.GetGCPCount() == 3 and "32633" in out.GetGCPProjection()


def _vrt_of(tmp_path, files):
    vrt = str(tmp_path / "stack.vrt")
    gdal.BuildVRT(vrt, [str(f) for f in files], separate=True)
    return vrt


def test_vrt_mixing_integer_and_float_bands_is_refused_naming_them(tmp_path, pixel_model):
    scene = synthetic.sample_scene(50, 60, seed=2)
    files = []
    for i in range(4):
        band = scene[i : i + 1] if i < 3 else (scene[i : i + 1] / 10000).astype(np.float32)
        files.append(synthetic.write_geotiff(tmp_path / f"layer{i}.tif", band))
    with pytest.raises(pipeline.PipelineError, match=r"mix integer and float.*band 4: Float32"):
        pipeline.run(
            pipeline.MaskRequest(
                _vrt_of(tmp_path, files), str(tmp_path / "m.tif"), model=pixel_model
            )
        )
    assert not (tmp_path / "m.tif").exists()


def test_an_unsupported_band_that_is_not_chosen_does_not_matter(tmp_path, pixel_model):
    scene = synthetic.sample_scene(50, 60, seed=2)
    files = [
        synthetic.write_geotiff(tmp_path / f"layer{i}.tif", scene[i : i + 1]) for i in range(4)
    ]
    files.append(synthetic.write_geotiff(tmp_path / "qa.tif", np.ones((1, 50, 60), np.uint8)))
    vrt = _vrt_of(tmp_path, files)
    ds = gdal.Open(vrt, gdal.GA_Update)
    for i, name in enumerate(["B02", "B03", "B04", "B08", "QA"]):
        ds.GetRasterBand(i + 1).SetDescription(name)
    ds = None
    res = pipeline.run(pipeline.MaskRequest(vrt, str(tmp_path / "m.tif"), model=pixel_model))
    assert res.stats.valid_pixels == 50 * 60
    with pytest.raises(pipeline.PipelineError, match="Band 5 of the input raster stores Byte"):
        pipeline.run(
            pipeline.MaskRequest(vrt, str(tmp_path / "m2.tif"), model=pixel_model, bands={"nir": 5})
        )


def test_outputs_are_tiled_and_compressed_with_what_every_gis_reads(tmp_path, pixel_model):
    """The mask in LZW, the probability and the masked image in DEFLATE (level 1): the
    codecs ``make bench`` chose; both are baseline TIFF compressions GDAL, QGIS and ArcGIS read."""
    src = synthetic.write_geotiff(tmp_path / "s2.tif", synthetic.sample_scene(300, 280, 2))
    pipeline.run(
        pipeline.MaskRequest(
            src,
            str(tmp_path / "m.tif"),
            probability=str(tmp_path / "p.tif"),
            masked=str(tmp_path / "masked.tif"),
            model=str(pixel_model),
        )
    )
    for name, codec in (("m.tif", "LZW"), ("p.tif", "DEFLATE"), ("masked.tif", "DEFLATE")):
        ds = gdal.Open(str(tmp_path / name))
        assert ds.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == codec, name
        assert ds.GetRasterBand(1).GetBlockSize() == [256, 256], name  # tiled
        ds = None
