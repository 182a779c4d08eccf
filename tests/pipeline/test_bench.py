"""``make bench`` itself runs: its every section on small sizes, through the real pipeline in
child processes (the figures are not checked here: speed is measured by ``make bench``, never
asserted in a test)."""

import subprocess
import sys

from tests.support.bench import REPO, tiles_per_pixel


def test_tiles_per_pixel_is_the_overlaps_cost():
    # a 224 px tile every 192 px: 50 x 50 tiles cover 9632 px square
    side = 192 * 49 + 224
    assert abs(tiles_per_pixel(side, side, 224, 32) - (50 * 224 / side) ** 2) < 1e-12
    assert tiles_per_pixel(224, 224, 224, 0) == 1.0


def test_the_bench_runs_every_section_on_small_rasters(tmp_path):
    page = tmp_path / "speed.md"
    page.write_text("# Speed\n\nwritten by hand\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.bench",
            "--sizes",
            "256x300",
            "--threads-size",
            "300x256",
            "--repeats",
            "1",
            "--options-size",
            "256x256",
            "--compression-size",
            "256",
            "--batch-scenes",
            "2x256",
            "--big",
            "256x288",
            "--full",
            "256x288",
            "--int8",
            str(tmp_path / "absent.onnx"),
            "--workdir",
            str(tmp_path),
            "--markdown",
            str(page),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for text in (
        "256x300 mask",
        "256x300 + probability",
        "256x300 + post",
        "threads no spin b8 *",
        "serial spin b8",
        "tta flips",
        "ensemble of 2",
        "DEFLATE ZLEVEL=1",
        "ORT_ENABLE_ALL",
        "no int8 model",
        "goal pipeline >= 0.9 of the ideal",
        "bare model: median",
        "batch runner: 2 scenes",
        "fast model (int8)",
        "256x288 fast (int8)",
        "256x288 uncompressed",
        "256x288 uncompr. fast",
        "goal full tile under 15 s: ",
        "goal full tile under 15 s, fast model, uncompressed input",
        "goal full tile peak RSS under 500 MB",
    ):
        assert text in out, f"{text!r} missing from:\n{out}"
    text = page.read_text()  # the printed tables, between the markers, the rest kept
    assert text.startswith("# Speed\n\nwritten by hand\n") and "old" not in text
    assert "goal pipeline >= 0.9 of the ideal" in text and text.count("<!-- bench:end -->") == 1
