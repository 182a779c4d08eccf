"""Run ``qgis_process`` with this checkout's plugin enabled, without touching the user's profile.

Used by the CLI tests and ``make demo``. Facts it works around (Debian 12, QGIS 3.22):
``/usr/bin/qgis_process`` is a broken wrapper (``qgis_process.bin`` is the real program);
qgis_process loads only *enabled* plugins, found on ``QGIS_PLUGINPATH``; and it runs QGIS's
embedded Python, which must be pointed at the venv's site-packages to find onnxruntime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "qgis_cloudmask"


def executable() -> str:
    for name in ("qgis_process.bin", "qgis_process"):
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if found:
            return found
    raise FileNotFoundError("qgis_process not found: run `make setup` (installs QGIS)")


def environment(config_dir: Path, plugin_path: Path = REPO) -> dict[str, str]:
    """Environment for a headless qgis_process that loads the plugin found in ``plugin_path``
    (default: this checkout)."""
    ini = config_dir / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(f"[PythonPlugins]\n{PLUGIN}=true\n")
    env = dict(os.environ)
    site = sysconfig.get_paths()["purelib"]
    env.update(
        QT_QPA_PLATFORM="offscreen",
        QGIS_PLUGINPATH=str(plugin_path),
        QGIS_CUSTOM_CONFIG_PATH=str(config_dir),
        PYTHONPATH=os.pathsep.join(p for p in (site, env.get("PYTHONPATH")) if p),
    )
    return env


def run_json(
    algorithm: str,
    params: dict[str, object],
    config_dir: Path,
    plugin_path: Path = REPO,
    timeout: float = 600,
):
    """``qgis_process --json run ALG -- KEY=VALUE ...`` -> (returncode, JSON or None, log)."""
    args = [executable(), "--json", "run", algorithm, "--"]
    for key, value in params.items():  # a list: the parameter repeated (multiple values)
        values = value if isinstance(value, (list, tuple)) else [value]
        args += [f"{key}={v}" for v in values]
    proc = subprocess.run(
        args,
        env=environment(config_dir, plugin_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=config_dir,
    )
    try:
        start = proc.stdout.index("{")
        data = json.loads(proc.stdout[start:])
    except ValueError:
        data = None
    return proc.returncode, data, proc.stdout + proc.stderr
