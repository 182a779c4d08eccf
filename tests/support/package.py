"""Build the installable plugin zip (``make package``): plugin code, metadata.txt, licence and
the bundled model, laid out as QGIS's "Install from ZIP" expects (one top-level folder)."""

from __future__ import annotations

import argparse
import configparser
import re
import zipfile
from pathlib import Path

from qgis_cloudmask.core.model import BUNDLED_MODELS

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "qgis_cloudmask"
#: every bundled model, and its card and changelog
MODEL_FILES = (*BUNDLED_MODELS.values(), "MODEL_CARD.md", "CHANGELOG.md")


def plugin_version() -> str:
    meta = configparser.ConfigParser()
    meta.read(REPO / "metadata.txt", encoding="utf-8")
    return meta["general"]["version"]


def plugin_readme() -> str:
    """The repository README for the plugin folder: links into the repository made absolute
    (docs/ is not shipped; models/ is, at the same relative place)."""
    meta = configparser.ConfigParser()
    meta.read(REPO / "metadata.txt", encoding="utf-8")
    base = meta["general"]["repository"].rstrip("/") + "/blob/main/"
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.sub(r"\]\((?!https?://|#|models/)([^)]+)\)", lambda m: f"]({base}{m.group(1)})", text)


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{PLUGIN}-{plugin_version()}.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((REPO / PLUGIN).rglob("*")):
            rel = path.relative_to(REPO)
            if "__pycache__" in rel.parts or path.is_dir() or path.name == "metadata.txt":
                continue
            zf.write(path, rel.as_posix())
        zf.write(REPO / "metadata.txt", f"{PLUGIN}/metadata.txt")  # the real file, not the link
        zf.write(REPO / "LICENSE", f"{PLUGIN}/LICENSE")
        zf.writestr(f"{PLUGIN}/README.md", plugin_readme())
        for name in MODEL_FILES:
            if (REPO / "models" / name).is_file():
                zf.write(REPO / "models" / name, f"{PLUGIN}/models/{name}")
    return zip_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    zip_path = build(parser.parse_args().out)
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
    has_model = f"{PLUGIN}/models/cloudmask.onnx" in names
    print(
        f"wrote {zip_path} ({zip_path.stat().st_size / 1e6:.1f} MB, {len(names)} files; "
        f"bundled model: {'yes' if has_model else 'NO - no trained model in models/ yet'})"
    )


if __name__ == "__main__":
    main()
