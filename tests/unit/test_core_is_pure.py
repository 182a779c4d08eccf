"""The core must import neither qgis nor osgeo (reusable and testable anywhere)."""

import subprocess
import sys
from pathlib import Path

#: every module of the core, found on disk (a new one is checked without being listed)
CORE = sorted(
    p.stem
    for p in (Path(__file__).resolve().parents[2] / "qgis_cloudmask" / "core").glob("*.py")
    if p.stem != "__init__"
)


def test_core_modules_import_neither_qgis_nor_osgeo():
    code = (
        "import sys\n"
        + "".join(f"import qgis_cloudmask.core.{m}\n" for m in CORE)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('qgis', 'osgeo', 'torch'))\n"
        + "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {"tta", "histogram", "ensemble", "inference"} <= set(CORE)
