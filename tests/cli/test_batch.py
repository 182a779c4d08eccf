"""``python -m qgis_cloudmask batch``: a real Dask LocalCluster with two worker processes on
generated rasters and Sentinel-2 products, compared with single-process pipeline runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from qgis_cloudmask import batch, pipeline
from tests.cli import test_command_line as command_line
from tests.support import s2product, synthetic

pytestmark = pytest.mark.cli
REPO = Path(__file__).resolve().parents[2]


def cli(*args, timeout=300):
    """``python -m qgis_cloudmask batch ARGS`` -> (exit code, stdout, stderr)."""
    return command_line.cli("batch", *args, timeout=timeout)


@pytest.fixture
def scenes(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    return [
        synthetic.write_geotiff(folder / f"s{i}.tif", synthetic.sample_scene(230, 250 + 20 * i, i))
        for i in range(3)
    ]


def test_two_workers_write_what_single_process_runs_write(tmp_path, scenes, pixel_model):
    out = tmp_path / "out"
    rows = batch.run_batch(
        batch.plan(scenes),
        str(out),
        {"model": str(pixel_model)},
        ["probability"],
        workers=2,
        progress=False,
    )
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert len({r["worker"] for r in rows}) >= 1  # ran in worker processes, not here
    assert all(str(os.getpid()) not in r["worker"] for r in rows)
    for path, row in zip(scenes, rows):
        name = Path(path).stem
        single = tmp_path / "single" / name
        single.mkdir(parents=True)
        result = pipeline.run(
            pipeline.MaskRequest(
                path,
                str(single / "m.tif"),
                probability=str(single / "p.tif"),
                model=str(pixel_model),
            )
        )
        assert (out / f"{name}_mask.tif").read_bytes() == (single / "m.tif").read_bytes()
        assert (out / f"{name}_probability.tif").read_bytes() == (single / "p.tif").read_bytes()
        assert row["cloud_pixels"] == result.stats.cloud_pixels
        assert row["cloud_percent"] == pytest.approx(result.stats.cloud_percent)
        assert (out / f"{name}_mask.qml").is_file()


def test_a_failing_scene_is_a_row_and_the_others_finish(tmp_path, scenes, pixel_model):
    broken = tmp_path / "in" / "broken.tif"
    broken.write_text("not a raster")
    out = tmp_path / "out"
    rc, stdout, err = cli(
        "--out", out, "--workers", "2", "--model", pixel_model, "-q", tmp_path / "in" / "*.tif"
    )
    assert rc == 1, err
    assert "3 masked, 0 skipped (complete), 1 failed" in stdout
    assert "failed: broken: GDAL cannot open" in err
    table = pq.read_table(out / "summary.parquet").to_pylist()
    by_name = {r["name"]: r for r in table}
    assert set(by_name) == {"broken", "s0", "s1", "s2"}
    assert by_name["broken"]["status"] == "failed" and "cannot open" in by_name["broken"]["error"]
    assert by_name["s1"]["status"] == "ok" and by_name["s1"]["cloud_pixels"] > 0
    assert not (out / "broken_mask.tif").exists()
    csv_text = (out / "summary.csv").read_text()
    assert csv_text.splitlines()[0].split(",") == list(batch.COLUMNS)
    assert len(csv_text.splitlines()) == 5


def test_a_rerun_skips_complete_scenes_and_redoes_the_rest(tmp_path, scenes, pixel_model):
    out = tmp_path / "out"
    options = {"model": str(pixel_model)}
    batch.run_batch(batch.plan(scenes), str(out), options, workers=2, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "s1_stats.json").unlink()  # as if the run had crashed before finishing s1
    rows = batch.run_batch(batch.plan(scenes), str(out), options, workers=2, progress=False)
    assert [r["status"] for r in rows] == ["skipped (complete)", "ok", "skipped (complete)"]
    assert (out / "s0_mask.tif").stat().st_mtime_ns == stamps["s0_mask.tif"]
    assert rows[0]["cloud_pixels"] > 0  # read back from the scene's statistics
    # asking for another output makes a scene incomplete; --overwrite redoes everything
    rows = batch.run_batch(
        batch.plan(scenes[:1]), str(out), options, ["probability"], workers=1, progress=False
    )
    assert rows[0]["status"] == "ok" and (out / "s0_probability.tif").is_file()
    rows = batch.run_batch(
        batch.plan(scenes), str(out), options, workers=2, overwrite=True, progress=False
    )
    assert [r["status"] for r in rows] == ["ok"] * 3


def test_products_lists_and_names(tmp_path, pixel_model):
    scene = synthetic.sample_scene(120, 140, seed=3)
    product = s2product.write_product(tmp_path / "p", scene + 1000, level="L2A", zip_it=True)
    synthetic.write_geotiff(tmp_path / "plain.tif", synthetic.sample_scene(100, 110, 4))
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two inputs\n{product.zip}\nplain.tif\n")
    out = tmp_path / "out"
    rc, stdout, err = cli("--out", out, "--workers", "1", "--model", pixel_model, f"@{listing}")
    assert rc == 0, err
    name = batch.scene_name(str(product.zip))
    assert name.startswith("S2") and "MSIL2A" in name and not name.endswith((".zip", ".SAFE"))
    assert (out / f"{name}_mask.tif").is_file() and (out / "plain_mask.tif").is_file()
    rows = {r["name"]: r for r in pq.read_table(out / "summary.parquet").to_pylist()}
    assert rows[name]["radiometry"] == "(DN - 1000) / 10000"  # the product's offset


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/d/S2B_MSIL2A_20240101_N0510_T32U.SAFE", "S2B_MSIL2A_20240101_N0510_T32U"),
        ("/d/S2B_MSIL1C_X.SAFE.zip", "S2B_MSIL1C_X"),
        ("/d/S2B_MSIL1C_X.zip", "S2B_MSIL1C_X"),
        ("/d/S2B_MSIL2A_Y.SAFE/MTD_MSIL2A.xml", "S2B_MSIL2A_Y"),
        ("SENTINEL2_L2A:/d/S2B_MSIL2A_Y.SAFE/MTD_MSIL2A.xml:10m:EPSG_32632", "S2B_MSIL2A_Y"),
        ("/d/scene.tif", "scene"),
        ("/d/stack.vrt", "stack"),
    ],
)  # fmt: skip
def test_scene_names(path, name):
    assert batch.scene_name(path) == name


def test_inputs_that_would_overwrite_each_other_are_refused(tmp_path, pixel_model):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        synthetic.write_geotiff(tmp_path / folder / "x.tif", synthetic.sample_scene(20, 20))
    out = tmp_path / "out"
    rc, _, err = cli(
        "--out", out, "--model", pixel_model, tmp_path / "a/x.tif", tmp_path / "b/x.tif"
    )
    assert rc == 2 and "same name" in err and "'x'" in err
    rc, _, err = cli("--out", out, "--model", pixel_model, tmp_path / "none*.tif")
    assert rc == 2 and "matches no file" in err


def test_ctrl_c_stops_the_batch_and_leaves_no_partial_output(tmp_path):
    """SIGINT while workers write: exit 130, no temporary file left, and every scene either
    complete (mask and statistics) or absent."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(12):
        synthetic.write_geotiff(folder / f"big{i}.tif", synthetic.sample_scene(1200, 1200, i))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qgis_cloudmask", "batch", "--out", str(out), "--workers", "2"]
        + ["--probability", str(folder / "*.tif")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob("*.partial-*")):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    assert "masked" not in stdout, "the batch finished before the interrupt arrived"
    assert proc.returncode == 130, err
    assert "interrupted" in err
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if ".partial-" in n], left
    for mask in out.glob("*_mask.tif"):
        assert (out / mask.name.replace("_mask.tif", "_stats.json")).is_file()
    assert not (out / "summary.csv").exists()
