"""``python -m qgis_cloudmask mask`` as users run it: a subprocess, real files, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from tests.support import s2product, synthetic

REPO = Path(__file__).resolve().parents[2]


def cli(*args, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-m", "qgis_cloudmask", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def s2(tmp_path):
    return synthetic.write_geotiff(tmp_path / "s2.tif", synthetic.sample_scene(240, 250, seed=6))


def test_help_lists_the_subcommand_and_every_option():
    rc, out, _ = cli("--help")
    assert rc == 0 and "mask" in out
    rc, out, _ = cli("mask", "--help")
    assert rc == 0
    for option in (
        "--red-band",
        "--green-band",
        "--blue-band",
        "--nir-band",
        "--radiometry",
        "--model",
        "--overlap",
        "--threshold",
        "--batch-size",
        "--probability",
        "--stats",
        "--json",
        "--min-cloud-size",
        "--buffer",
        "--vector",
        "--masked",
        "--weight",
        "--tta",
        "--histogram-matching",
        "--device",
    ):
        assert option in out, option
    words = re.sub(r"-\n\s*", "-", out)  # argparse may wrap "dn-offset" after its hyphen
    assert "dn-offset" in words and "Exit codes" in words and "d8" in words


def test_mask_writes_outputs_and_prints_the_statistics(s2, tmp_path, pixel_model):
    rc, out, err = cli(
        "mask",
        s2,
        tmp_path / "m.tif",
        "--model",
        pixel_model,
        "--probability",
        tmp_path / "p.tif",
        "--stats",
        tmp_path / "s.json",
    )
    assert rc == 0, err
    mask = gdal.Open(str(tmp_path / "m.tif")).ReadAsArray()
    assert f"cloud pixels  {int((mask == 1).sum())}" in out
    assert "cloud area" in out and "square meters" in out
    assert (tmp_path / "p.tif").is_file() and (tmp_path / "s.json").is_file()
    assert "Radiometry: reflectance = DN / 10000" in err  # the decision and its reason, logged


def test_json_output_carries_statistics_settings_and_warnings(s2, tmp_path, pixel_model):
    rc, out, err = cli("mask", s2, tmp_path / "m.tif", "--model", pixel_model, "--json", "-q")
    assert rc == 0, err
    data = json.loads(out)
    assert data["cloud_pixels"] + data["clear_pixels"] == 240 * 250
    assert data["settings"]["bands"]["value"] == {"B04": 3, "B03": 2, "B02": 1, "B08": 4}
    assert data["warnings"] == []
    assert err == ""  # --quiet
    assert data["model"]["execution_provider"] == "CPUExecutionProvider"
    rc, out, err = cli(
        "mask", s2, tmp_path / "m2.tif", "--model", pixel_model, "--device", "cpu", "--json"
    )
    assert rc == 0, err
    provider = json.loads(out)["settings"]["execution_provider"]
    assert provider == {
        "value": "CPUExecutionProvider",
        "reason": "device cpu: CPU only, as asked (FORCE_CPU / --device cpu)",
    }
    assert "Device cpu: CPU only" in err  # the log names it too


def test_options_mirror_the_algorithm_parameters(s2, tmp_path, pixel_model):
    rc, out, err = cli(
        "mask",
        s2,
        tmp_path / "m.tif",
        "--model",
        pixel_model,
        "--json",
        "-q",
        "--threshold",
        "0.9",
        "--overlap",
        "0",
        "--batch-size",
        "2",
        "--radiometry",
        "dn",
        "--red-band",
        "3",
        "--green-band",
        "2",
        "--blue-band",
        "1",
        "--nir-band",
        "4",
    )
    assert rc == 0, err
    s = json.loads(out)["settings"]
    assert s["threshold"]["value"] == 0.9 and s["overlap"]["value"] == 0
    assert s["batch_size"]["value"] == 2 and s["radiometry"]["source"] == "explicit"
    assert "red=3: set by RED_BAND" in s["bands"]["reason"]


def test_post_processing_options_write_the_same_products_as_the_algorithm(
    s2, tmp_path, pixel_model
):
    rc, out, err = cli(
        "mask",
        s2,
        tmp_path / "m.tif",
        "--model",
        pixel_model,
        "--min-cloud-size",
        "20",
        "--buffer",
        "30",
        "--vector",
        tmp_path / "clouds.gpkg",
        "--masked",
        tmp_path / "masked.tif",
        "--json",
        "-q",
    )
    assert rc == 0, err
    data = json.loads(out)
    mask = gdal.Open(str(tmp_path / "m.tif")).ReadAsArray()
    assert data["buffer_pixels"] == int((mask == 2).sum()) > 0
    assert data["settings"]["buffer"]["value"] == 30.0 and data["buffer_px"] == 3.0
    assert data["settings"]["min_cloud_size"]["value"] == 20
    assert data["polygons"]["features"] > 0
    for name in ("m.qml", "masked.tif", "masked.qml", "clouds.gpkg"):
        assert (tmp_path / name).is_file(), name


def test_a_sentinel2_product_zip_is_masked(tmp_path, pixel_model):
    scene = synthetic.sample_scene(120, 140, seed=3)
    product = s2product.write_product(tmp_path, scene + 1000, level="L2A", zip_it=True)
    rc, out, err = cli("mask", product.zip, tmp_path / "m.tif", "--model", pixel_model, "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["radiometry"]["formula"] == "(DN - 1000) / 10000"
    assert data["crs"] == "EPSG:32633"


def test_failure_exits_1_with_the_message_and_no_file(tmp_path, pixel_model):
    rc, _, err = cli("mask", tmp_path / "missing.tif", tmp_path / "m.tif", "--model", pixel_model)
    assert rc == 1
    assert "error: The input" in err and "does not exist" in err
    assert not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--threshold", "0,5"),
        ("--threshold", "nan"),
        ("--overlap", "abc"),
        ("--red-band", "abc"),
        ("--radiometry", "maybe"),
        ("--no-such-option",),
        ("--buffer", "-5"),
        ("--buffer", "nan"),
        ("--buffer", "ten"),
        ("--min-cloud-size", "-1"),
        ("--vector", "clouds.shp"),
        ("--masked", "masked.png"),
        ("--tta", "rot90"),
        ("--weight", "0"),
        ("--weight", "2", "--weight", "1"),  # two weights, one model
        ("--histogram-matching",),  # the test model has no reference quantiles
        ("--device", "gpu"),  # auto or cpu
        ("--bundled-model", "turbo"),  # standard or fast
        ("--bundled-model", "fast"),  # and --model: which one?
    ],
)
def test_bad_usage_exits_2(s2, tmp_path, pixel_model, args):
    rc, _, err = cli("mask", s2, tmp_path / "m.tif", "--model", pixel_model, *args)
    assert rc == 2, err
    assert "error" in err
    assert not (tmp_path / "m.tif").exists()


def test_parameters_the_input_contradicts_exit_2(tmp_path, pixel_model):
    six = synthetic.write_geotiff(tmp_path / "six.tif", np.full((6, 30, 30), 700, np.uint16))
    rc, _, err = cli("mask", six, tmp_path / "m.tif", "--model", pixel_model)
    assert rc == 2
    assert "has 6 bands and none is described" in err and "--red-band" in err


def test_an_ensemble_with_tta_from_the_command_line(s2, tmp_path, pixel_model):

    red = synthetic.write_red_model(tmp_path / "red.onnx")
    rc, out, err = cli(
        "mask", s2, tmp_path / "m.tif", "--model", pixel_model, "--model", red,
        "--weight", "3", "--weight", "1", "--tta", "flips", "--json",
    )  # fmt: skip
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["tta"] == "flips" and summary["threshold"] == 0.45
    assert [m["weight"] for m in summary["models"]] == [0.75, 0.25]
    assert "weighted mean of the 2 models' thresholds" in err
    assert "Test-time augmentation: Flips" in err
