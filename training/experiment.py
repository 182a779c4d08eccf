"""The evidence every training experiment reports, written by one piece of code.

The research experiments (hyper-parameter search, distillation, architecture search, point
labels) each end with one or more exported ONNX models and their training runs. For each they
report, as the seeds ask:

(a) ten segmented validation images (dev chips with their human label first, then crops of the
    validation split), predicted through the plugin's tiled inference;
(b) training and validation loss against epochs (and IoU: validation split, dev chips);
(c) precision and recall over thresholds on the labelled chips;

plus the final check, with exactly the code path of ``make evaluate``
(:func:`training.evaluate.evaluate` -> ``pipeline.run``): pooled scores on the Sentinel-2 dev
chips and the Landsat chips, false positives on the held-out clear scenes, megapixels per
second. Model *selection* in the experiments uses the validation split only
(``train.select_on: val``); these figures are the report beside it.

    evidence = experiment.evidence(cfg, run_dir, data_root, onnx, figures_dir, "kd_student")
    rows = [experiment.table_row("student (KD)", evidence, size_mb=...)]
    experiment.write_section(doc_path, "results", experiment.results_table(rows))
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from training import config as config_mod
from training import evaluate, report
from training.config import Config

#: Columns of :func:`results_table`, in order (key in the row -> header).
COLUMNS = {
    "name": "model",
    "val_iou": "val IoU (selection)",
    "s2_iou": "S2 dev IoU",
    "s2_f1": "S2 F1",
    "s2_precision": "S2 precision",
    "s2_recall": "S2 recall",
    "landsat_iou": "Landsat IoU",
    "clear_fp": "clear-scene FP %",
    "mp_s": "MP/s",
    "size_mb": "size MB",
}


@dataclass
class Evidence:
    """What :func:`evidence` measured and where its figures are."""

    model: str
    pooled: dict  # group ("sentinel2", "landsat") -> scores of ours
    clear_fp_percent: float | None
    mp_per_s: float
    best_val: dict  # the selected epoch's row of the run (val_iou, val_loss...)
    figures: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


#: Why the reports give median epoch x epochs beside the wall clock (one wording for all four).
WALL_CLOCK_NOTE = (
    "the wall clock also counts hours when the machine was suspended between sessions or "
    "shared with other jobs"
)


def training_seconds(history: list[dict]) -> tuple[float, float]:
    """A run's training time from its ``metrics.json`` rows: (wall sum of the epochs' seconds,
    median epoch x epochs). The second is what the run costs on a quiet machine
    (:data:`WALL_CLOCK_NOTE`: such hours inflate single epochs by up to an hour)."""
    secs = [float(r["seconds"]) for r in history if r.get("seconds") is not None]
    if not secs:
        return 0.0, 0.0
    return float(sum(secs)), float(np.median(secs)) * len(secs)


def final_check(
    model: Path, data_root: Path, split_dir: Path | None = None, repeats: int = 1
) -> evaluate.Evaluation:
    """``make evaluate``'s code path (no teacher, default inference options) on the labelled
    chips and the held-out clear scenes."""
    data_root = Path(data_root)
    scenes = evaluate.labelled_scenes(data_root / "dev_labelled")
    split_dir = Path(split_dir) if split_dir else config_mod.resolve("training/splits")
    unlabelled = data_root / "s2_unlabelled"
    clear = evaluate.clear_scenes(unlabelled, split_dir) if unlabelled.is_dir() else []
    return evaluate.evaluate(Path(model), scenes, clear, teacher=False, repeats=repeats)


def _best_row(run_dir: Path, select_on: str) -> dict:
    history = json.loads((Path(run_dir) / "metrics.json").read_text())
    if not history:
        return {}
    from training.train import selection_key

    key = selection_key(history[0], select_on)
    return max(history, key=lambda r: r.get(key, -1.0))


def evidence(
    cfg: Config,
    run_dir: Path,
    data_root: Path,
    model: Path,
    figures_dir: Path,
    stem: str,
    split_dir: Path | None = None,
) -> Evidence:
    """The three figures (``<stem>_loss.png``, ``<stem>_validation.png``, ``<stem>_pr.png`` in
    ``figures_dir``) and the final check of ``model`` trained in ``run_dir``."""
    from qgis_cloudmask.core.model import CloudModel

    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    ev = final_check(model, data_root, split_dir or config_mod.resolve(cfg.data.split_dir))
    summary = evaluate.summarise_variants(ev, 1)[evaluate.NONE.name]
    loaded = CloudModel(model)
    threshold = loaded.info.threshold
    history = json.loads((Path(run_dir) / "metrics.json").read_text())
    paths = {
        "loss": figures_dir / f"{stem}_loss.png",
        "validation": figures_dir / f"{stem}_validation.png",
        "precision_recall": figures_dir / f"{stem}_pr.png",
    }
    report.plot_curves(history, paths["loss"], cfg.train.threshold)
    results = [r for r in ev.results if evaluate.is_sentinel2(r.name)] or ev.results
    samples = report.validation_samples(cfg, Path(run_dir), Path(data_root), loaded, results)
    report.plot_grid(samples, paths["validation"])
    report.plot_pr(report.pr_curves(results), paths["precision_recall"], threshold)
    clear = summary.get("clear_scenes")
    return Evidence(
        model=str(model),
        pooled=summary["pooled"],
        clear_fp_percent=clear["pooled_percent"] if clear else None,
        mp_per_s=summary["cost"]["mp_per_s"],
        best_val={k: v for k, v in _best_row(run_dir, cfg.train.select_on).items()},
        figures={k: str(v) for k, v in paths.items()},
    )


def table_row(name: str, ev: Evidence, **extra) -> dict:
    """One row of :func:`results_table` from an :class:`Evidence` (``extra``: e.g. size_mb)."""
    s2, landsat = ev.pooled.get("sentinel2", {}), ev.pooled.get("landsat", {})
    row = {
        "name": name,
        "val_iou": ev.best_val.get("val_iou"),
        "s2_iou": s2.get("iou"),
        "s2_f1": s2.get("f1"),
        "s2_precision": s2.get("precision"),
        "s2_recall": s2.get("recall"),
        "landsat_iou": landsat.get("iou"),
        "clear_fp": ev.clear_fp_percent,
        "mp_s": ev.mp_per_s,
    }
    row.update(extra)
    return row


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def results_table(rows: list[dict], columns: dict[str, str] | None = None) -> str:
    """A Markdown table of result rows (missing values shown as –)."""
    columns = columns or {k: v for k, v in COLUMNS.items() if any(k in r for r in rows)}
    lines = [
        "| " + " | ".join(columns.values()) + " |",
        "|" + "|".join("---" if k == "name" else "---:" for k in columns) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in columns) + " |")
    return "\n".join(lines)


def write_section(path: Path, key: str, text: str) -> None:
    """Put ``text`` between the ``BEGIN key`` / ``END key`` markers of a Markdown page (the
    hand-written text around them is kept; markers are added at the end when missing)."""
    evaluate.write_markdown(Path(path), text, key)


def core_throughput(
    models: dict[str, Path],
    inputs: list[np.ndarray],
    repeats: int = 3,
    threads: int | None = None,
    progress=print,
) -> dict[str, dict]:
    """Megapixels per second of each model through the plugin's core on the same reflectance.

    Every model is loaded once (:class:`CloudModel`, onnxruntime on the CPU here), then every
    input goes through :func:`inference.classify_array` with each model's own tile, overlap and
    threshold, the models interleaved input by input (their order rotated each repeat), so that
    what else the machine runs weighs on all of them alike. ``inputs``: model-order reflectance
    ``4 x H x W``.
    """
    from qgis_cloudmask.core import inference
    from qgis_cloudmask.core.model import CloudModel

    loaded = {name: CloudModel(path, threads=threads) for name, path in models.items()}
    seconds = dict.fromkeys(loaded, 0.0)
    pixels = sum(int(r.shape[1] * r.shape[2]) for r in inputs)
    names = list(loaded)
    for model in loaded.values():  # warm-up: first-call allocations are not the model's speed
        inference.classify_array(model.predict, inputs[0], model.info.tile_size, 0, 0.5)
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for refl in inputs:
            for name in order:
                m = loaded[name]
                t0 = time.perf_counter()
                inference.classify_array(
                    m.predict, refl, m.info.tile_size, m.info.recommended_overlap, m.info.threshold
                )
                seconds[name] += time.perf_counter() - t0
        progress(
            f"core throughput, pass {rep + 1}/{repeats}: "
            + ", ".join(f"{n} {pixels * (rep + 1) / 1e6 / seconds[n]:.2f} MP/s" for n in names)
        )
    mp = pixels * repeats / 1e6
    return {
        name: {
            "mp_per_s": mp / seconds[name],
            "seconds": seconds[name],
            "megapixels": mp,
            "provider": loaded[name].execution_provider,
        }
        for name in names
    }


def bench_inputs(cfg: Config, data_root: Path) -> list[np.ndarray]:
    """Reflectance of every labelled chip of ``dev_dir`` (the chips ``make evaluate`` scores)."""
    from training.datasets import labelled_scenes

    scenes = labelled_scenes(Path(data_root) / cfg.data.dev_dir)
    return [s.read(0, 0, s.height, s.width)[0] for s in scenes]


def figures_markdown(title: str, figures: dict[str, str], page: Path) -> list[str]:
    """Markdown lines showing the three figures of :func:`evidence` under a ``### title``."""
    lines = [f"### {title}", ""]
    for kind, alt in (
        ("loss", "loss"),
        ("validation", "validation images"),
        ("precision_recall", "precision and recall"),
    ):
        lines += [f"![{alt}]({relative(figures[kind], page)})", ""]
    return lines


def relative(path: str | os.PathLike, page: Path) -> str:
    """A figure's path relative to the page that shows it."""
    return os.path.relpath(Path(path), Path(page).parent)


# -- exports and the comparison at one threshold ---------------------------------------------

#: ``exporter(cfg, checkpoint, out) -> summary``: :func:`training.export.export` or an
#: experiment's own variant of it (e.g. DARTS rebuilds its derived network with its loader).
Exporter = Callable[[Config, Path, Path], dict]


def finished(cfg: Config) -> bool:
    """Whether a run is finished (``DONE``, written by :func:`training.train.run`) and has the
    checkpoint its export takes."""
    return (cfg.run_dir / "DONE").is_file() and cfg.checkpoint.is_file()


def finished_runs(runs: dict[str, Config], first: str) -> dict[str, Config]:
    """``runs`` when all are finished; otherwise stops naming the unfinished ones and ``first``,
    the command that trains them."""
    missing = [n for n, c in runs.items() if not finished(c)]
    if missing:
        raise SystemExit(f"run(s) not finished: {', '.join(missing)} ({first} first; it resumes)")
    return runs


def cached_export(
    cfg: Config,
    exporter: Exporter,
    threshold: float | None = None,
    out: Path | None = None,
) -> dict:
    """ONNX of the run's exported checkpoint (:attr:`Config.checkpoint`) through ``exporter``
    (the contract check), its summary beside it as ``<out>.json``; skipped when both are newer
    than the checkpoint. ``threshold`` and ``out`` replace the config's ``export.threshold`` and
    ``export.out``."""
    if threshold is not None:
        cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, threshold=threshold))
    out = Path(out) if out is not None else config_mod.resolve(cfg.export.out)
    ckpt = cfg.checkpoint
    summary_path = out.with_suffix(".json")
    if out.is_file() and summary_path.is_file() and out.stat().st_mtime > ckpt.stat().st_mtime:
        return json.loads(summary_path.read_text())
    summary = exporter(cfg, ckpt, out)
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


def reference_model(setting: str | None) -> Path | None:
    """The file of an experiment's ``reference_model`` setting (the shipped model, measured
    beside ours); None when unset or missing."""
    path = config_mod.resolve(setting) if setting else None
    return path if path is not None and path.is_file() else None


def checked_row(name: str, path: Path, data_root: Path, split_dir: Path) -> dict:
    """The final check of one ONNX file (``make evaluate``'s code path, the file's own
    threshold) as a table row: size, threshold, Sentinel-2 and Landsat scores, clear-scene
    false positives (pooled and worst scene), end-to-end MP/s."""
    from qgis_cloudmask.core.model import CloudModel

    path = Path(path)
    ev = final_check(path, data_root, split_dir)
    summary = evaluate.summarise_variants(ev, 1)[evaluate.NONE.name]
    clear = summary.get("clear_scenes")
    s2, landsat = summary["pooled"].get("sentinel2", {}), summary["pooled"].get("landsat", {})
    return {
        "name": name,
        "size_mb": path.stat().st_size / 1e6,
        "threshold": CloudModel(path).info.threshold,
        "s2_iou": s2.get("iou"),
        "s2_f1": s2.get("f1"),
        "s2_precision": s2.get("precision"),
        "s2_recall": s2.get("recall"),
        "landsat_iou": landsat.get("iou"),
        "clear_fp": clear["pooled_percent"] if clear else None,
        "clear_fp_max": clear["max_percent"] if clear else None,
        "mp_s": summary["cost"]["mp_per_s"],
    }


def reference_label(path: Path) -> str:
    """How the tables name the reference model."""
    return f"shipped ({Path(path).name}, for reference)"


_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}

#: Columns of the common-threshold table (key -> header).
COMMON_COLUMNS = {
    "name": "model",
    "threshold": "threshold",
    "s2_iou": "S2 dev IoU",
    "s2_f1": "S2 F1",
    "s2_precision": "S2 precision",
    "s2_recall": "S2 recall",
    "landsat_iou": "Landsat IoU",
    "clear_fp": "clear-scene FP % (pooled)",
    "clear_fp_max": "clear-scene FP % (worst scene)",
}


@dataclass
class Comparison:
    """What :func:`compare_at` compares and where it writes (one experiment's facts)."""

    runs: dict[str, tuple[str, Config]]  # run name -> (label in the table, its config)
    #: ``export(run name, config, threshold, out) -> summary``: the experiment's ``export_run``
    export: Callable[[str, Config, float, Path], dict]
    base: Config  # the experiment's shared sections: split and runs folder
    doc: str  # the report page (the experiment's ``doc`` setting)
    reference_model: str | None  # the experiment's ``reference_model`` setting
    key: str  # the page's section
    command: str  # how the section says it was generated


def compare_at(
    c: Comparison, data_root: Path, threshold: float | None = None, progress=print
) -> dict:
    """Every run and the reference model at *one* threshold (default: the reference's).

    The reports score each model at its own threshold (0.5 for ours; the reference's was
    chosen on the dev chips), which mixes the model with the cut-off. Here each run's selected
    checkpoint is exported again with ``threshold`` (``<run_dir>/<run>@<t>.onnx``, through the
    contract check) and goes through the same final check as the reference. A comparison at a
    common cut-off, not a choice: nothing is selected on these figures. Writes the page's
    ``c.key`` section and ``<runs_dir>/common_threshold.json``.
    """
    from qgis_cloudmask.core.model import CloudModel

    data_root = Path(data_root)
    reference = reference_model(c.reference_model)  # the shipped model, at its own threshold
    split_dir = config_mod.resolve(c.base.data.split_dir)
    if threshold is None:
        if reference is None:
            raise SystemExit("give --threshold: there is no reference model to take it from")
        threshold = CloudModel(reference).info.threshold
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise SystemExit(f"--threshold must lie strictly between 0 and 1, not {threshold}")
    rows = []
    for name, (label, cfg) in c.runs.items():
        out = cfg.run_dir / f"{name}@{threshold:g}.onnx"
        progress(f"export {name} at threshold {threshold:g} -> {out}")
        c.export(name, cfg, threshold, out)
        progress(f"final check of {name} at threshold {threshold:g}")
        rows.append(checked_row(label, out, data_root, split_dir))
    ref_note = ""
    if reference is not None:
        progress(f"final check of the reference {reference}")
        rows.append(checked_row(reference_label(reference), reference, data_root, split_dir))
        own = rows[-1]["threshold"]
        ref_note = (
            " (the reference's own)"
            if own == threshold
            else f" (the reference stays at its own threshold {own:g}: not the same cut-off)"
        )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    count = _NUMBERS.get(len(c.runs), str(len(c.runs)))
    text = "\n".join(
        [
            f"Generated by `{c.command}` on {stamp}, {evaluate.machine()}: our {count} models "
            f"exported again at threshold {threshold:g}{ref_note}, through "
            "the same final check as above (pooled tp/fp/fn/tn through the plugin). A "
            "comparison at one cut-off, not a choice: nothing is selected on these figures.",
            "",
            results_table(rows, COMMON_COLUMNS),
        ]
    )
    page = config_mod.resolve(c.doc)
    json_path = config_mod.resolve(c.base.train.runs_dir) / "common_threshold.json"
    write_section(page, c.key, text)
    out = {"generated": stamp, "threshold": threshold, "rows": rows}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(out, indent=2, default=str))
    progress(f"wrote {page} and {json_path}")
    return out


def add_threshold_argument(parser) -> None:
    """The ``--threshold`` option of an experiment's ``compare`` command."""
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="compare: the common threshold (default: the reference model's)",
    )
