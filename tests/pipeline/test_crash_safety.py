"""A run killed with SIGKILL mid-write: the finished outputs are untouched, and the temporary
files it leaves are removed by the next run on the same outputs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from qgis_cloudmask import pipeline, raster_io
from tests.support import synthetic

REPO = Path(__file__).resolve().parents[2]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def partials(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if raster_io.PARTIAL in n)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_write_then_rerun_leaves_no_partial_and_no_half_output(tmp_path):
    model = pipeline.bundled_model_path()
    if model is None:  # a slow enough model makes the kill land mid-run
        pytest.skip("needs the bundled model (models/cloudmask.onnx)")
    src = synthetic.write_geotiff(tmp_path / "s2.tif", synthetic.sample_scene(2400, 2400, 5))
    out = tmp_path / "out"
    out.mkdir()
    old = synthetic.write_geotiff(out / "m.tif", np.zeros((1, 10, 10), np.uint8))
    before = digest(Path(old))
    args = [sys.executable, "-m", "qgis_cloudmask", "mask", src, str(out / "m.tif"), "-q"]
    args += ["--probability", str(out / "p.tif"), "--threads", "1", "--model", model]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not partials(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.3)  # writing has begun
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = partials(out)
    assert left and all(f"-{proc.pid}-" in n for n in left)  # named after the dead process
    assert digest(out / "m.tif") == before  # the finished file of an earlier run is untouched
    assert not (out / "p.tif").exists()

    rerun = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert partials(out) == []
    ds = gdal.Open(str(out / "m.tif"))
    assert (ds.RasterXSize, ds.RasterYSize) == (2400, 2400)
    assert set(np.unique(ds.ReadAsArray())) <= {0, 1}


def test_partials_of_a_live_run_or_another_target_are_kept(tmp_path):
    target = tmp_path / "mask.tif"
    live = Path(raster_io.temporary_path(str(target)))  # this process: alive
    other = Path(raster_io.temporary_path(str(tmp_path / "other.tif"))).with_name(
        live.name.replace(f"-{os.getpid()}-", "-999999999-").replace(".mask.", ".other.")
    )
    dead = live.with_name(live.name.replace(f"-{os.getpid()}-", "-999999999-"))
    for p in (live, other, dead):
        p.write_bytes(b"partial")
    assert raster_io.remove_stale_partials(str(target)) == [dead.name]
    assert live.exists() and other.exists() and not dead.exists()


def test_partials_of_another_host_are_kept(tmp_path):
    """A shared folder: another machine's process id means nothing here."""
    name = f".mask{raster_io.PARTIAL}otherhost-999999999-abcd1234.tif"
    (tmp_path / name).write_bytes(b"partial")
    assert raster_io.remove_stale_partials(str(tmp_path / "mask.tif")) == []


def _file_size_limit(limit_bytes: int):
    """In the child: writes beyond ``limit_bytes`` fail with EFBIG, as on a full disk."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize(
    "extra",
    [[], ["--min-cloud-size", "5", "--buffer", "30", "--masked", "MASKED", "--vector", "VECTOR"]],
    ids=["mask", "post-processing"],
)
def test_a_full_disk_is_one_clear_error_without_traceback_or_leftovers(
    tmp_path, pixel_model, extra
):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", synthetic.sample_scene(1200, 1200, 5))
    out = tmp_path / "out"
    out.mkdir()
    extra = [
        str(out / "masked.tif") if a == "MASKED" else str(out / "v.gpkg") if a == "VECTOR" else a
        for a in extra
    ]
    args = [sys.executable, "-m", "qgis_cloudmask", "mask", src, str(out / "m.tif"), "-q"]
    args += ["--probability", str(out / "p.tif"), "--model", str(pixel_model), *extra]
    limit = 300_000 if not extra else 2_000_000  # the mask fits, the other outputs do not
    proc = subprocess.run(
        args,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_file_size_limit(limit),
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: Writing the outputs failed:"), proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert f"Check the free disk space and write permission in '{out}'" in proc.stderr
    assert os.listdir(out) == []
