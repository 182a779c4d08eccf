"""Sentinel-2 products as INPUT of ``cloudmask:detectclouds``: processing.run, a loaded layer,
and qgis_process - the forms QGIS 3.22 cannot load as a layer by itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException, QgsRasterLayer

from tests.support import qgis_process, s2product, synthetic

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def product(tmp_path_factory):
    folder = tmp_path_factory.mktemp("product")
    scene = synthetic.sample_scene(200, 240, seed=21)
    p = s2product.write_product(folder, scene + 1000, level="L1C", baseline="05.09", zip_it=True)
    return p, scene


def expected_mask(scene):
    """Probability of the test model on ``scene`` (B02 first, DN without offset) and where
    the mask is decided (away from the threshold)."""
    exp = synthetic.sigmoid_probability(scene[0] / 10000, 40, 0.2)
    return exp, np.abs(exp - 0.5) > 1e-5


@pytest.mark.parametrize(
    "form",
    ["folder", "zip", "xml", "subdataset"],
)
def test_product_paths_are_accepted_as_input(run_alg, product, tmp_path, form):
    p, scene = product
    value = {
        "folder": str(p.safe),
        "zip": str(p.zip),
        "xml": str(p.xml),
        "subdataset": p.subdataset(),
    }[form]
    res = run_alg({"INPUT": value, "OUTPUT": str(tmp_path / "m.tif")})
    mask = gdal.Open(res["OUTPUT"]).ReadAsArray()
    exp, decided = expected_mask(scene)
    np.testing.assert_array_equal(mask[decided], (exp >= 0.5)[decided])
    assert res["AREA_UNIT"] == "square meters"
    assert res["CLOUD_PIXELS"] == int((mask == 1).sum())


def test_a_loaded_subdataset_layer_is_accepted(run_alg, product, tmp_path):
    p, scene = product
    layer = QgsRasterLayer(p.subdataset(), "S2 10m", "gdal")
    assert layer.isValid()
    res = run_alg({"INPUT": layer, "OUTPUT": str(tmp_path / "m.tif")})
    mask = gdal.Open(res["OUTPUT"]).ReadAsArray()
    exp, decided = expected_mask(scene)
    np.testing.assert_array_equal(mask[decided], (exp >= 0.5)[decided])


def test_an_input_that_is_nothing_readable_is_refused_before_running(run_alg, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a raster")
    with pytest.raises(QgsProcessingException, match="Could not load|cannot open|not recognized"):
        run_alg({"INPUT": str(junk), "OUTPUT": str(tmp_path / "m.tif")})
    assert not (tmp_path / "m.tif").exists()


def test_command_line_and_algorithm_give_the_same_error_text(run_alg, tmp_path, pixel_model):
    six = synthetic.write_geotiff(tmp_path / "six.tif", np.full((6, 30, 30), 700, np.uint16))
    with pytest.raises(QgsProcessingException) as alg_error:
        run_alg({"INPUT": six, "OUTPUT": str(tmp_path / "m.tif")})
    proc = subprocess.run(
        [sys.executable, "-m", "qgis_cloudmask", "mask", six, str(tmp_path / "m.tif")]
        + ["--model", str(pixel_model)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert f"error: {alg_error.value}" in proc.stderr


def test_bands_are_chosen_from_descriptions_without_band_parameters(run_alg, tmp_path):
    scene = synthetic.sample_scene(120, 130, seed=5)
    src = synthetic.write_geotiff(tmp_path / "rev.tif", scene[[3, 2, 1, 0]])  # B08 B04 B03 B02
    ds = gdal.Open(src, gdal.GA_Update)
    for i, name in enumerate(("B08 (nir)", "B04 (red)", "B03 (green)", "B02 (blue)")):
        ds.GetRasterBand(i + 1).SetDescription(name)
    ds = None
    res = run_alg({"INPUT": src, "OUTPUT": str(tmp_path / "m.tif")})
    mask = gdal.Open(res["OUTPUT"]).ReadAsArray()
    exp, decided = expected_mask(scene)
    np.testing.assert_array_equal(mask[decided], (exp >= 0.5)[decided])


@pytest.mark.cli
@pytest.mark.parametrize("form", ["zip", "folder"])
def test_qgis_process_masks_a_product(product, tmp_path, pixel_model, form):
    p, scene = product
    rc, data, log = qgis_process.run_json(
        "cloudmask:detectclouds",
        {
            "INPUT": p.zip if form == "zip" else p.safe,
            "MODEL": pixel_model,
            "OUTPUT": tmp_path / "m.tif",
            "OUTPUT_STATS": tmp_path / "s.json",
        },
        tmp_path / "qgis-config",
    )
    assert rc == 0, log
    mask = gdal.Open(str(tmp_path / "m.tif")).ReadAsArray()
    exp, decided = expected_mask(scene)
    np.testing.assert_array_equal(mask[decided], (exp >= 0.5)[decided])
    assert any("product metadata" in line for line in data["log"]["info"])


def test_a_raster_inside_a_zip_is_read_through_vsizip(run_alg, tmp_path):
    import zipfile

    scene = synthetic.sample_scene(90, 100, seed=2)
    tif = synthetic.write_geotiff(tmp_path / "scene.tif", scene)
    with zipfile.ZipFile(tmp_path / "scenes.zip", "w") as zf:
        zf.write(tif, "scene.tif")
    res = run_alg(
        {"INPUT": f"/vsizip/{tmp_path}/scenes.zip/scene.tif", "OUTPUT": str(tmp_path / "m.tif")}
    )
    mask = gdal.Open(res["OUTPUT"]).ReadAsArray()
    exp, decided = expected_mask(scene)
    np.testing.assert_array_equal(mask[decided], (exp >= 0.5)[decided])
