"""``make screenshots``: the real QGIS desktop, started under Xvfb, runs the algorithm the way a
user does and leaves PNG screenshots and a JSON report of what it showed.

    python -m tests.support.screenshots --out docs/screenshots

Builds a throw-away QGIS profile with this checkout's plugin enabled (the same profile and
environment as ``qgis_process``: see :mod:`tests.support.qgis_process`), a generated
Sentinel-2-like scene, and the settings for ``tests/support/desktop_script.py``, which QGIS runs
at startup (``qgis --code``). QGIS is killed after ``--timeout`` seconds whatever happens.

Screenshots (in ``--out``):

- ``canvas_scene.png``: the scene alone, true colour (B04, B03, B02 stretched 0..3000 DN)
- ``canvas_mask_overlay.png``: the cloud mask over the scene
- ``canvas_probability.png``: the cloud probability over the scene
- ``canvas_masked_image.png``: the masked image alone
- ``main_window.png``: the main window, Layers panel with every legend
- ``algorithm_dialog.png``, ``algorithm_dialog_parameters.png``: the algorithm dialog and its
  whole parameter form (Advanced group expanded)
- ``algorithm_dialog_log.png``: the dialog's log after running from it
- ``desktop_report.json``: per layer its renderer, classes/ramp and legend texts, the results
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import qgis_process, synthetic

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("desktop_script.py")
BUNDLED = REPO / "models" / "cloudmask.onnx"
QGIS = "/usr/bin/qgis"
SCREEN = (1600, 1000)
ALGORITHM = "cloudmask:detectclouds"
REPORT = "desktop_report.json"
#: every PNG stays under this size; larger ones get a 256-colour palette (see shrink_png)
MAX_PNG_BYTES = 400_000
SHRINK_ABOVE = 250_000
#: screenshot key (in the report) -> file name
PNGS = {
    "scene": "canvas_scene.png",
    "mask_overlay": "canvas_mask_overlay.png",
    "probability": "canvas_probability.png",
    "masked": "canvas_masked_image.png",
    "main_window": "main_window.png",
    "dialog": "algorithm_dialog.png",
    "dialog_parameters": "algorithm_dialog_parameters.png",
    "dialog_log": "algorithm_dialog_log.png",
}
#: settings beyond the enabled plugin: no version check, English labels whatever the machine
PROFILE_SETTINGS = """
[qgis]
checkVersion=false

[locale]
overrideFlag=true
userLocale=en_US
"""


def missing() -> str | None:
    """Why the desktop cannot be started here, or None."""
    if shutil.which("xvfb-run") is None:
        return "xvfb-run is not installed (apt package xvfb; `make setup` installs it)"
    if not Path(QGIS).is_file():
        return f"{QGIS} (QGIS desktop) is not installed (`make setup` installs it)"
    return None


def environment(profile: Path, config: Path) -> dict[str, str]:
    """``qgis_process``'s environment (plugin enabled, venv on PYTHONPATH) for the desktop."""
    env = qgis_process.environment(profile)
    ini = profile / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.write_text(ini.read_text() + PROFILE_SETTINGS)
    env["QT_QPA_PLATFORM"] = "xcb"  # a real X display (Xvfb), not the offscreen platform
    env["CLOUDMASK_DESKTOP_CONFIG"] = str(config)
    env.pop("DISPLAY", None)  # xvfb-run sets its own
    return env


def shrink_png(path: Path) -> None:
    """Re-save a screenshot with a 256-colour palette when it is large (a textured raster on
    the canvas compresses badly): about 4x smaller, colours off by a few levels at most.
    Pillow comes with python3-matplotlib (in the Makefile's APT_PACKAGES)."""
    if path.stat().st_size <= SHRINK_ABOVE:
        return
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    palette = rgb.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    palette.save(path, optimize=True)


@dataclass
class Run:
    returncode: int | None
    seconds: float
    report: dict | None
    pngs: dict[str, Path]
    log: str
    #: the files the scripted run wrote (OUTPUT, OUTPUT_PROBABILITY, ...) and the scene
    outputs: dict[str, Path]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def write_inputs(work: Path, size: tuple[int, int], model: str) -> tuple[dict, dict, str]:
    """Scene, model and the algorithm's parameters (for the scripted run and the dialog)."""
    h, w = size
    scene = synthetic.write_geotiff(work / "scene.tif", synthetic.sample_scene(h, w, seed=7))

    def outputs(folder: Path) -> dict[str, str]:
        folder.mkdir(parents=True, exist_ok=True)
        return {
            "OUTPUT": str(folder / "cloud_mask.tif"),
            "OUTPUT_PROBABILITY": str(folder / "cloud_probability.tif"),
            "OUTPUT_VECTOR": str(folder / "cloud_polygons.gpkg"),
            "OUTPUT_MASKED": str(folder / "masked_image.tif"),
        }

    params: dict[str, object] = {"BUFFER": 30, "MIN_CLOUD_SIZE": 20}
    if model == "pixel" or not BUNDLED.is_file():
        params["MODEL"] = synthetic.write_pixel_model(work / "test_pixel_model.onnx")
        note = (
            "TEST pixel model (probability = sigmoid(40 * (blue - 0.2))), "
            "not the trained cloud detector"
        )
    else:
        note = "bundled model models/cloudmask.onnx (default, MODEL left empty)"
    return (
        {"scene": scene, **params, **outputs(work / "run")},
        {**params, **outputs(work / "dialog_run")},
        note,
    )


def captions(note: str, size: tuple[int, int]) -> dict[str, str]:
    scene = (
        f"synthetic Sentinel-2-like scene ({size[0]} x {size[1]} px, 10 m), "
        "true colour B04/B03/B02 stretched 0..3000 DN"
    )
    run = f"cloudmask:detectclouds, BUFFER=30 m, MIN_CLOUD_SIZE=20 px, {note}"
    return {
        "scene": f"QGIS map canvas: the {scene}.",
        "mask_overlay": f"Cloud mask over the scene ({run}): cloud magenta, cloud buffer light "
        "pink, clear transparent.",
        "probability": f"Cloud probability (0..1) over the scene ({run}): transparent where "
        "clouds are unlikely, yellow to dark red where likely.",
        "masked": f"Masked image alone ({run}): clouds and their buffer set to nodata.",
        "main_window": "QGIS main window after processing.runAndLoadResults: the Layers panel "
        "shows each output with its legend.",
        "dialog": "The algorithm dialog as the Processing Toolbox opens it, with the Advanced "
        "Parameters group expanded.",
        "dialog_parameters": "The dialog's whole parameter form.",
        "dialog_log": f"The dialog's log after running the algorithm from it ({note}).",
    }


def _portable(value):
    """Results without this machine's temporary paths."""
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.basename(value)
    return value


def run(
    out: Path,
    work: Path,
    size: tuple[int, int] = (600, 800),
    model: str = "bundled",
    timeout: float = 180,
    dialog_run: bool = True,
) -> Run:
    """Start QGIS under Xvfb, wait for it (at most ``timeout`` s) and check what came back."""
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    out, work = out.resolve(), work.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    for name in [*PNGS.values(), REPORT]:
        (out / name).unlink(missing_ok=True)
    params, dialog_params, note = write_inputs(work, size, model)
    scene = params.pop("scene")
    config = {
        "algorithm": ALGORITHM,
        "scene": scene,
        "scene_name": "Sentinel-2 scene (synthetic, true colour)",
        "rgb_bands": [3, 2, 1],
        "stretch": [0, 3000],
        "params": params,
        "dialog_params": dialog_params,
        "dialog_run": dialog_run,
        "dialog_run_timeout_s": max(30, int(timeout) - 60),
        "out": str(out),
        "report": str(work / REPORT),
        "window_size": [1440, 900],
        "layers_panel_width": 380,
        "dialog_size": [900, 940],
    }
    config_path = work / "desktop_config.json"
    config_path.write_text(json.dumps(config, indent=1))
    env = environment(work / "qgis-profile", config_path)
    screen = f"-screen 0 {SCREEN[0]}x{SCREEN[1]}x24"
    cmd = ["xvfb-run", "-a", "-s", screen, QGIS, "--nologo", "--noversioncheck"]
    cmd += ["--code", str(SCRIPT)]
    log_path = work / "qgis.log"
    start = time.monotonic()
    with open(log_path, "wb") as log:
        # own session: on timeout the whole group (xvfb-run, Xvfb, QGIS) is killed by its id
        proc = subprocess.Popen(
            cmd, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    seconds = time.monotonic() - start
    text = log_path.read_text(errors="replace")
    problems = []
    if rc is None:
        problems.append(f"QGIS did not exit within {timeout:.0f} s and was killed")
    elif rc != 0:
        problems.append(f"QGIS exited with code {rc}")
    report = None
    report_path = work / REPORT
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        report["results"] = {k: _portable(v) for k, v in report.get("results", {}).items()}
        report["captions"] = captions(note, size)
        report["model"] = note
        report["seconds"] = round(seconds, 1)
        (out / REPORT).write_text(json.dumps(report, indent=1) + "\n")
        if not report.get("ok"):
            problems.append("the script in QGIS failed:\n" + report.get("error", "(no error)"))
    else:
        problems.append(f"QGIS wrote no report ({report_path})")
    pngs = {key: out / name for key, name in PNGS.items()}
    expected = dict(pngs) if dialog_run else {k: p for k, p in pngs.items() if k != "dialog_log"}
    for path in expected.values():
        if not path.is_file() or path.stat().st_size == 0:
            problems.append(f"missing screenshot {path.name}")
            continue
        shrink_png(path)
        if path.stat().st_size > MAX_PNG_BYTES:
            problems.append(f"{path.name} is {path.stat().st_size} bytes (> {MAX_PNG_BYTES})")
    outputs = {key: Path(value) for key, value in params.items() if key.startswith("OUTPUT")}
    outputs["INPUT"] = Path(scene)
    pngs = {k: p for k, p in pngs.items() if p.is_file()}
    return Run(rc, seconds, report, pngs, text, outputs, problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--work", type=Path, help="keep the scene, outputs and profile here")
    parser.add_argument("--size", type=int, nargs=2, default=(600, 800), metavar=("H", "W"))
    parser.add_argument("--model", choices=("bundled", "pixel"), default="bundled")
    parser.add_argument("--timeout", type=float, default=180, help="kill QGIS after (s)")
    args = parser.parse_args()
    reason = missing()
    if reason:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 2
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="cloudmask-desktop-")
    work = args.work or Path(tmp.name)
    result = run(args.out, work, tuple(args.size), args.model, args.timeout)
    if not result.ok:
        print(result.log[-6000:], file=sys.stderr)
        print("\n".join(["screenshots FAILED:", *result.problems]), file=sys.stderr)
        if tmp is not None:  # keep what there is to look at
            kept = Path(tempfile.mkdtemp(prefix="cloudmask-desktop-failed-"))
            shutil.copytree(work, kept, dirs_exist_ok=True)
            print(f"work folder kept: {kept}", file=sys.stderr)
        return 1
    out = args.out.resolve()
    print(f"QGIS desktop ran for {result.seconds:.1f} s; wrote to {out}/:")
    for key, path in result.pngs.items():
        size = path.stat().st_size / 1024
        print(f"  {path.name:<34} {size:4.0f} KB  {result.report['captions'][key]}")
    print(f"  {REPORT:<34} layers, renderers, legends and results the desktop showed")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
