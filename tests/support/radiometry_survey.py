"""``make survey``: what the automatic radiometry decides on real scenes, against their records.

For every scene of ``s2_unlabelled`` (4-band GeoTIFF stacks B02, B03, B04, B08, no metadata a
product would carry, so the decision comes from the data) this runs the headless pipeline three
times with the bundled model - automatic, RADIOMETRY=1 (DN / 10000) and RADIOMETRY=2
((DN - 1000) / 10000) - on a copy in a temporary folder, and compares the automatic decision
with what ``source.json`` records about the processing baseline. Writes
``docs/radiometry-survey.md`` and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from qgis_cloudmask import pipeline
from qgis_cloudmask.core.radiometry import Radiometry

REPO = Path(__file__).resolve().parents[2]


def recorded_offset(source_json: dict) -> str:
    """'offset', 'none' or 'unknown' from what source.json says of the processing baseline."""
    text = str(source_json.get("processing_baseline", ""))
    if ">= 04.00" in text or "+1000 offset present" in text:
        return "offset"
    low = text.lower()
    if any(k in low for k in ("pre-04.00", "< 04.00", "before 04.00", "no offset", "n/a (")):
        return "none"  # n/a: browser exports, harmonised to DN = reflectance x 10000
    return "unknown"


#: formula of the conversion -> what it means for the offset
DECIDED = {"DN / 10000": "none", "(DN - 1000) / 10000": "offset"}


def survey(data: Path, work: Path) -> list[dict]:
    rows = []
    for folder in sorted(p for p in data.iterdir() if (p / "image.tif").is_file()):
        image = work / f"{folder.name}.tif"
        shutil.copy(folder / "image.tif", image)
        meta = json.loads((folder / "source.json").read_text())
        row = {"scene": folder.name, "recorded": recorded_offset(meta)}
        for key, mode in (
            ("auto", Radiometry.AUTOMATIC),
            ("dn", Radiometry.S2_DN),
            ("offset", Radiometry.S2_DN_OFFSET),
        ):
            res = pipeline.run(
                pipeline.MaskRequest(str(image), str(work / "mask.tif"), radiometry=mode)
            )
            row[key] = res.stats.cloud_percent
            if mode == Radiometry.AUTOMATIC:
                r = res.summary["radiometry"]
                row["decided"] = DECIDED.get(r["formula"], "other")
                row["confident"] = r["confident"]
                row["reason"] = r["reason"]
        rows.append(row)
        print(
            f"{row['scene'][:40]:40s} recorded {row['recorded']:7s} decided {row['decided']:6s}"
            f" {'sure' if row['confident'] else 'DOUBT'}  cloud % auto {row['auto']:6.2f}"
            f"  dn {row['dn']:6.2f}  dn-offset {row['offset']:6.2f}",
            flush=True,
        )
    return rows


def summarise(rows: list[dict]) -> dict[str, int]:
    known = [r for r in rows if r["recorded"] != "unknown"]
    return {
        "scenes": len(rows),
        "with a recorded baseline": len(known),
        "decided with confidence, right": sum(
            r["confident"] and r["decided"] == r["recorded"] for r in known
        ),
        "decided with confidence, wrong": sum(
            r["confident"] and r["decided"] != r["recorded"] for r in known
        ),
        "in doubt (warning), assumption right": sum(
            not r["confident"] and r["decided"] == r["recorded"] for r in known
        ),
        "in doubt (warning), assumption wrong": sum(
            not r["confident"] and r["decided"] != r["recorded"] for r in known
        ),
        "no record; decided with confidence": sum(
            r["confident"] for r in rows if r["recorded"] == "unknown"
        ),
        "no record; in doubt": sum(not r["confident"] for r in rows if r["recorded"] == "unknown"),
    }


def write_report(rows: list[dict], summary: dict[str, int], path: Path) -> None:
    lines = [
        "# Automatic radiometry on real scenes",
        "",
        "Written by `make survey` (`tests/support/radiometry_survey.py`); do not edit by hand.",
        "",
        "Every scene of `s2_unlabelled` is a 4-band GeoTIFF stack (B02, B03, B04, B08) without "
        "the metadata a product carries, so the automatic radiometry decides **from the data** "
        "(`qgis_cloudmask/core/radiometry.py`, `data_verdict`): the darkest 1 % of valid pixels "
        "of some band below 900 DN means no offset, with certainty; otherwise the data cannot "
        "tell the +1000 offset of baseline 04.00 from a bright scene without it, so the offset is "
        "assumed with a warning naming `RADIOMETRY`. Products, GeoTIFFs translated from "
        "products, and stacks of granule files are decided from their metadata, baseline or "
        "acquisition date instead (tested in `tests/pipeline/test_products.py`).",
        "",
        "'Recorded' is what each scene's `source.json` says about its processing baseline. "
        "Cloud cover is with the bundled model, in % of valid pixels, for the automatic "
        "decision and for each explicit choice.",
        "",
        "## Summary",
        "",
        "| | scenes |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += [
        "",
        "## Per scene",
        "",
        "| scene | recorded | decided | sure | cloud % auto | DN / 10000 | (DN - 1000) / 10000 |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scene']} | {r['recorded']} | {r['decided']} | "
            f"{'yes' if r['confident'] else '**no**'} | {r['auto']:.2f} | {r['dn']:.2f} | "
            f"{r['offset']:.2f} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "radiometry-survey.md")
    args = parser.parse_args()
    data = args.data_root / "s2_unlabelled"
    if not data.is_dir():
        print(f"no scenes in {data}: give --data-root", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        rows = survey(data, Path(tmp))
    summary = summarise(rows)
    write_report(rows, summary, args.out)
    print()
    for k, v in summary.items():
        print(f"{k:40s} {v}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
