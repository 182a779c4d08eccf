"""`make package` builds a zip that QGIS can install: installed from it, the algorithm runs."""

from __future__ import annotations

import configparser
import zipfile

import pytest

from tests.support import package, qgis_process, synthetic

pytestmark = pytest.mark.cli

REQUIRED_METADATA = (
    "name",
    "qgisMinimumVersion",
    "description",
    "about",
    "version",
    "author",
    "repository",
    "tracker",
    "hasProcessingProvider",
    "category",
    "tags",
    "experimental",
    "changelog",
)


def test_zip_holds_plugin_metadata_and_licence_under_one_folder(tmp_path):
    zip_path = package.build(tmp_path)
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        meta = configparser.ConfigParser()
        meta.read_string(zf.read("qgis_cloudmask/metadata.txt").decode())
    assert {n.split("/")[0] for n in names} == {"qgis_cloudmask"}
    for required in (
        "__init__.py",
        "plugin.py",
        "metadata.txt",
        "LICENSE",
        "raster_io.py",
        "core/inference.py",
        "cloudmask_processing/detect_clouds.py",
        "README.md",
    ):
        assert f"qgis_cloudmask/{required}" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    general = meta["general"]
    for key in REQUIRED_METADATA:
        assert general.get(key), key
    assert general["qgisMinimumVersion"] == "3.22" and general["hasProcessingProvider"] == "yes"
    if (package.REPO / "models" / "cloudmask.onnx").is_file():
        assert "qgis_cloudmask/models/cloudmask.onnx" in names
        assert "qgis_cloudmask/models/cloudmask-int8.onnx" in names
    assert "README.md" in general["about"]
    with zipfile.ZipFile(zip_path) as zf:
        readme = zf.read("qgis_cloudmask/README.md").decode()
    assert "cloudmask:detectclouds" in readme
    assert "](docs/" not in readme  # docs/ is not shipped: its links point to the repository


def test_make_help_names_the_zip_make_package_writes(tmp_path):
    import subprocess

    help_text = subprocess.run(
        ["make", "-s", "help"], cwd=package.REPO, capture_output=True, text=True, check=True
    ).stdout
    written = package.build(tmp_path).name
    assert f"dist/{written}" in help_text


def test_plugin_installed_from_the_zip_runs_under_qgis_process(tmp_path, pixel_model):
    plugins = tmp_path / "plugins"
    with zipfile.ZipFile(package.build(tmp_path / "dist")) as zf:
        zf.extractall(plugins)
    src = synthetic.write_geotiff(tmp_path / "s2.tif", synthetic.sample_scene(100, 120, seed=8))
    rc, data, log = qgis_process.run_json(
        "cloudmask:detectclouds",
        {"INPUT": src, "MODEL": pixel_model, "OUTPUT": tmp_path / "mask.tif"},
        tmp_path / "config",
        plugin_path=plugins,
    )
    assert rc == 0, log
    assert data["results"]["CLOUD_PIXELS"] + data["results"]["CLEAR_PIXELS"] == 100 * 120


def test_demo_runs_end_to_end_and_writes_its_files(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.demo",
            "--out",
            str(tmp_path),
            "--size",
            "300",
            "280",
        ],
        cwd=package.REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CLOUD_PERCENT" in proc.stdout
    assert "(DN - 1000) / 10000" in proc.stdout  # the product's offset, decided from its metadata
    assert len(list(tmp_path.glob("S2B_MSIL2A_*.zip"))) == 1
    for name in (
        "cloud_mask.tif",
        "cloud_probability.tif",
        "cloud_stats.json",
        "quicklook.png",
        "cloud_mask.qml",
        "cloud_polygons.gpkg",
        "masked.tif",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
