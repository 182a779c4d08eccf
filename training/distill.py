"""Knowledge distillation: a larger U-Net of our own distilled into a student smaller and faster
than the shipped model, for computers without an accelerator.

    python -m training.distill teacher --data-root ../shared/data   (the teacher, ~2.3 h)
    python -m training.distill student --data-root ../shared/data   (students without/with KD)
    python -m training.distill report --data-root ../shared/data    (export, measure, the page)

(``--config`` defaults to ``training/configs/distill.yaml``; ``make distill`` runs all three.)

Three runs of :func:`training.train.run`, all under ``<train.runs_dir>/`` (``runs/distill``):

- ``teacher``: a bigger U-Net (the ``distill.teacher`` overrides: a ResNet-34 encoder at full
  resolution) trained on the data targets with the config's loss;
- ``student``: the small network (``distill.student``) trained exactly like that, without
  distillation: the baseline;
- ``student_kd``: the same network, budget and seed, trained with :func:`distillation_loss`
  through the ``objective`` hook: Hinton-style soft targets of the frozen teacher at temperature
  ``T`` (``alpha``-weighted) plus the hard loss against the data target.

Model selection (``best.pt``) uses the validation split only (``train.select_on: val``). Every
command resumes: an interrupted run continues from its ``last.pt``, a finished one is skipped.
``report`` exports the three selected checkpoints to ONNX through :func:`training.export.export`
(the plugin's contract check), measures their file size and their CPU throughput through the
plugin's core (:class:`qgis_cloudmask.core.model.CloudModel` +
:func:`qgis_cloudmask.core.inference.classify_array`, same reflectance, same process, models
interleaved), runs :func:`training.experiment.evidence` (three figures, dev chips, Landsat,
clear-scene false positives, end-to-end MP/s) and writes the generated sections of
``docs/knowledge-distillation.md`` and ``<runs_dir>/report.json``.

The config is the training schema of :mod:`training.config` (the sections shared by the three
runs) plus a ``distill`` section (:class:`DistillSettings`) whose ``teacher`` and ``student``
entries override those sections per run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tnf

from training import config as config_mod
from training.config import Config
from training.losses import Loss, make_loss

#: Names of the three runs (folders under ``train.runs_dir``) and of their figures' stems.
TEACHER, STUDENT, STUDENT_KD = "teacher", "student", "student_kd"
RUNS = (TEACHER, STUDENT, STUDENT_KD)
LABELS = {
    TEACHER: "teacher",
    STUDENT: "student, no distillation",
    STUDENT_KD: "student, distilled",
}
REFERENCE = "shipped"
DOC_KEYS = ("kd-results", "kd-runs", "kd-figures")
#: the section of ``compare`` (all models at one threshold), written apart from the report
COMMON_KEY = "kd-common"


@dataclass
class DistillSettings:
    """The ``distill`` section of the config."""

    #: overrides of the training sections (``{section: {key: value}}``) for the teacher run
    teacher: dict = field(default_factory=dict)
    #: overrides for both student runs (with and without distillation)
    student: dict = field(default_factory=dict)
    #: softmax (here: sigmoid) temperature of the soft targets
    temperature: float = 2.0
    #: weight of the soft-target term; ``1 - alpha`` weights the hard loss on the data target
    alpha: float = 0.5
    #: report page and its figures (``<figure_prefix>_<run>_{loss,validation,pr}.png``)
    doc: str = "docs/knowledge-distillation.md"
    figures_dir: str = "docs/figures"
    figure_prefix: str = "kd"
    #: a model to measure beside the three (size, core MP/s, final check); null = none
    reference_model: str | None = "models/cloudmask.onnx"
    #: interleaved passes of the core throughput measurement
    bench_repeats: int = 3
    #: onnxruntime intra-op threads for the measurement; null = onnxruntime's default (all cores)
    bench_threads: int | None = None


@dataclass
class Experiment:
    """The three resolved training configs and the distillation settings."""

    teacher: Config
    student: Config
    student_kd: Config
    settings: DistillSettings

    def configs(self) -> dict[str, Config]:
        return {TEACHER: self.teacher, STUDENT: self.student, STUDENT_KD: self.student_kd}


# -- the loss ---------------------------------------------------------------------------------


def bernoulli_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(s)))`` in nats, from logits
    (through ``logsigmoid``: finite for any logit)."""
    p = torch.sigmoid(teacher_logits)
    log_p, log_q = tnf.logsigmoid(teacher_logits), tnf.logsigmoid(student_logits)
    log_p1, log_q1 = tnf.logsigmoid(-teacher_logits), tnf.logsigmoid(-student_logits)
    return p * (log_p - log_q) + (1 - p) * (log_p1 - log_q1)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    hard_loss: Loss,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha * T**2 * KL(sigmoid(t / T) || sigmoid(s / T)) + (1 - alpha) * hard(s, target)``.

    The soft term is Hinton et al.'s (2015) for one Bernoulli per pixel, averaged over the pixels
    whose data ``target`` is finite (NaN = nodata, ignored like every loss of
    :mod:`training.losses`); ``T**2`` keeps its gradient on the scale of the hard term when ``T``
    changes. Logits ``N x 1 x H x W`` (or ``N x H x W``), target ``N x H x W`` in 0..1.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, not {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, not {alpha}")
    n = student_logits.shape[0]
    s = student_logits.reshape(n, -1).float() / temperature
    t = teacher_logits.reshape(n, -1).float().detach() / temperature
    valid = torch.isfinite(target.reshape(n, -1)).float()
    soft = (bernoulli_kl(t, s) * valid).sum() / valid.sum().clamp_min(1.0)
    total = alpha * temperature**2 * soft
    if alpha < 1.0:
        total = total + (1.0 - alpha) * hard_loss(student_logits, target)
    return total


class DistillObjective:
    """``objective(student, x, y)`` for :func:`training.train.run`: the frozen teacher's logits
    on the same batch (eval mode, no gradient) and :func:`distillation_loss`."""

    def __init__(
        self, teacher: torch.nn.Module, hard_loss: Loss, temperature: float, alpha: float
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.hard_loss = hard_loss
        self.temperature, self.alpha = float(temperature), float(alpha)

    def __call__(self, student: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return distillation_loss(
            student(x), teacher_logits, y, self.hard_loss, self.temperature, self.alpha
        )


# -- config -----------------------------------------------------------------------------------


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for section, values in (overrides or {}).items():
        if not isinstance(values, dict):
            raise ValueError(f"distill override {section!r} must be a mapping of keys to values")
        out.setdefault(section, {}).update(copy.deepcopy(values))
    return out


def _settings(values: dict | None) -> DistillSettings:
    values = dict(values or {})
    unknown = set(values) - {f.name for f in dataclasses.fields(DistillSettings)}
    if unknown:
        raise ValueError(f"unknown distill key(s): {sorted(unknown)}")
    return DistillSettings(**values)


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """The experiment of a YAML config. ``overrides`` map dotted keys to values at any depth
    (``train.epochs``, ``distill.alpha``, ``distill.teacher.train.epochs``)."""
    d = config_mod.read(path, overrides)
    settings = _settings(d.pop("distill", None))
    teacher = _merge(d, settings.teacher)
    student = _merge(d, settings.student)
    teacher["train"]["run_name"] = TEACHER
    student["train"]["run_name"] = STUDENT
    kd = _merge(student, {"train": {"run_name": STUDENT_KD}})
    kd["model"]["name"] = f"{student['model']['name']}-kd"
    runs_dir = d["train"]["runs_dir"]
    for name, run in ((TEACHER, teacher), (STUDENT, student), (STUDENT_KD, kd)):
        run.setdefault("export", {})["out"] = f"{runs_dir}/{name}/{name}.onnx"
    return Experiment(
        config_mod.from_dict(teacher),
        config_mod.from_dict(student),
        config_mod.from_dict(kd),
        settings,
    )


# -- the runs ---------------------------------------------------------------------------------


def _teacher_checkpoint(exp: Experiment) -> tuple[torch.nn.Module, dict]:
    from training.experiment import finished
    from training.train import load_checkpoint

    if not finished(exp.teacher):
        raise SystemExit(
            f"the teacher run {exp.teacher.run_dir} is not finished: run "
            "`python -m training.distill teacher` first (it resumes where it stopped)"
        )
    model, ckpt = load_checkpoint(exp.teacher.checkpoint)
    return model.eval().requires_grad_(False), ckpt


def load_teacher(exp: Experiment) -> torch.nn.Module:
    """The trained teacher (its selected checkpoint), frozen, in eval mode."""
    return _teacher_checkpoint(exp)[0]


def _record_teacher(exp: Experiment, ckpt: dict) -> None:
    """Which teacher checkpoint the distilled student learns from, in its run folder; a resumed
    run whose teacher changed since (the teacher trained further) says so."""
    record = {
        "checkpoint": str(exp.teacher.checkpoint),
        "epoch": ckpt.get("epoch"),
        "val_iou": ckpt.get("row", {}).get("val_iou"),
        "temperature": exp.settings.temperature,
        "alpha": exp.settings.alpha,
    }
    path = exp.student_kd.run_dir / "teacher.json"
    if path.is_file() and json.loads(path.read_text()) != record:
        print(
            f"warning: {path} records another teacher or loss than this resumed run now uses "
            f"({json.loads(path.read_text())} -> {record}); for a clean comparison use another "
            "train.runs_dir",
            flush=True,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))


def objective(exp: Experiment, teacher: torch.nn.Module) -> DistillObjective:
    s = exp.settings
    return DistillObjective(teacher, make_loss(exp.student_kd.loss), s.temperature, s.alpha)


def train_teacher(exp: Experiment, data_root: Path, progress: bool = True) -> Path:
    from training import train

    return train.run(exp.teacher, data_root, progress=progress)


def train_students(exp: Experiment, data_root: Path, progress: bool = True) -> list[Path]:
    """The student without, then with distillation (same network, budget, seed, data)."""
    from training import train

    teacher, ckpt = _teacher_checkpoint(exp)  # refuse early, before the plain student
    plain = train.run(exp.student, data_root, progress=progress)
    _record_teacher(exp, ckpt)
    kd = train.run(exp.student_kd, data_root, progress=progress, objective=objective(exp, teacher))
    return [plain, kd]


# -- the report -------------------------------------------------------------------------------


def export_run(
    cfg: Config, data_root: Path, threshold: float | None = None, out: Path | None = None
) -> dict:
    """ONNX of the run's selected checkpoint through the contract check
    (:func:`training.experiment.cached_export`: skipped when newer than the checkpoint;
    ``threshold`` and ``out`` replace the config's)."""
    from training import experiment, export

    def exporter(cfg: Config, ckpt: Path, out: Path) -> dict:
        return export.export(cfg, ckpt, out, data_root)

    return experiment.cached_export(cfg, exporter, threshold, out)


def _finished_configs(exp: Experiment) -> dict[str, Config]:
    """The three run configs; stops with what to run first when a run is not finished."""
    from training import experiment

    return experiment.finished_runs(exp.configs(), "python -m training.distill teacher / student")


def parameters(cfg: Config) -> int:
    from training.train import load_checkpoint

    model, _ = load_checkpoint(cfg.checkpoint)
    return sum(p.numel() for p in model.parameters())


def describe(cfg: Config) -> str:
    """The network in words, e.g. for the report's tables."""
    m = cfg.model
    res = "full resolution" if m.downsample == 1 else f"1/{m.downsample} resolution inside"
    return f"{m.encoder}, depth {m.depth}, decoder {m.decoder_channels}, {res}"


def _training_time(run_dir: Path) -> dict:
    from training import experiment

    history = json.loads((run_dir / "metrics.json").read_text())
    wall, typical = experiment.training_seconds(history)
    return {"epochs": len(history), "training_hours": typical / 3600, "wall_hours": wall / 3600}


def _plot_tradeoff(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = "osD^v<>"
    for i, r in enumerate(rows):
        if r.get("core_mp_s") is None or r.get("s2_iou") is None:
            continue
        # a legend, not annotations: models of equal speed and accuracy would hide each other
        ax.scatter(
            r["core_mp_s"],
            r["s2_iou"],
            s=30 + 6 * r["size_mb"],
            alpha=0.6,
            marker=markers[i % len(markers)],
            label=f"{r['name']}: {r['size_mb']:.1f} MB, threshold {r.get('threshold', '?')}",
        )
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel("CPU megapixels/s through the plugin core (log scale)")
    ax.set_ylabel("cloud IoU, Sentinel-2 dev chips (pooled)")
    ax.set_title("size (marker area), speed and accuracy, each at its own threshold", fontsize=10)
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=7, loc="best")
    # equal markers in the legend (matplotlib < 3.7 calls them legendHandles)
    for handle in getattr(legend, "legend_handles", None) or legend.legendHandles:
        handle.set_sizes([30])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: Columns of the results table (key -> header).
COLUMNS = {
    "name": "model",
    "size_mb": "size MB",
    "params_m": "params (M)",
    "core_mp_s": "core MP/s",
    "core_speedup": "speed vs teacher",
    "mp_s": "end-to-end MP/s",
    "threshold": "threshold",
    "val_iou": "val IoU (selection)",
    "s2_iou": "S2 dev IoU",
    "s2_f1": "S2 F1",
    "s2_precision": "S2 precision",
    "s2_recall": "S2 recall",
    "landsat_iou": "Landsat IoU",
    "clear_fp": "clear-scene FP %",
}


def _signed(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:+.{digits}f}"


def _summary_text(rows: dict[str, dict]) -> str:
    """The generated reading of the table (differences, ratios); the judgement is hand-written."""
    t, s, k = rows[TEACHER], rows[STUDENT], rows[STUDENT_KD]

    def diff(a: dict, b: dict, key: str) -> float | None:
        x, y = a.get(key), b.get(key)
        return None if x is None or y is None else x - y

    lines = [
        f"- Size: distilled student {k['size_mb']:.1f} MB ({k['params_m']:.2f} M parameters), "
        f"teacher {t['size_mb']:.1f} MB ({t['params_m']:.2f} M): teacher / student = "
        f"{t['size_mb'] / k['size_mb']:.1f}.",
        f"- Speed through the plugin core (same process, interleaved): distilled student "
        f"{k['core_mp_s']:.2f} MP/s, teacher {t['core_mp_s']:.2f} MP/s: "
        f"{k['core_speedup']:.1f}x the teacher's speed.",
        f"- Distillation vs none (same network, budget, seed, data): S2 dev IoU "
        f"{_signed(diff(k, s, 's2_iou'))}, F1 {_signed(diff(k, s, 's2_f1'))}, Landsat IoU "
        f"{_signed(diff(k, s, 'landsat_iou'))}, validation IoU "
        f"{_signed(diff(k, s, 'val_iou'))}, clear-scene false positives "
        f"{_signed(diff(k, s, 'clear_fp'), 2)} percentage points.",
        f"- What the small model costs (distilled student minus teacher): S2 dev IoU "
        f"{_signed(diff(k, t, 's2_iou'))}, Landsat IoU {_signed(diff(k, t, 'landsat_iou'))}, "
        f"validation IoU {_signed(diff(k, t, 'val_iou'))}.",
    ]
    ref = rows.get(REFERENCE)
    if ref and ref.get("core_mp_s"):
        lines.append(
            f"- Against the reference model (at its own threshold {ref['threshold']}): size "
            f"reference / student = {ref['size_mb'] / k['size_mb']:.1f}, student speed / "
            f"reference speed = {k['core_mp_s'] / ref['core_mp_s']:.2f}, S2 dev IoU "
            f"{_signed(diff(k, ref, 's2_iou'))} (thresholds differ: compare the PR figures)."
        )
    return "\n".join(lines)


def write_report(exp: Experiment, data_root: Path, progress=print) -> dict:
    """Export, measure and write the generated sections of the report page; returns the
    results (also written to ``<runs_dir>/report.json``)."""
    from training import experiment

    data_root = Path(data_root)
    s = exp.settings
    configs = _finished_configs(exp)
    page = config_mod.resolve(s.doc)
    figures = config_mod.resolve(s.figures_dir)
    figures.mkdir(parents=True, exist_ok=True)
    exported = {}
    for name, cfg in configs.items():
        progress(f"export {name} -> {cfg.export.out}")
        exported[name] = export_run(cfg, data_root)
    onnx = {n: Path(e["path"]) for n, e in exported.items()}
    bench_models = dict(onnx)
    reference = experiment.reference_model(s.reference_model)
    if reference is not None:
        bench_models[REFERENCE] = reference
    progress("core throughput (CloudModel + classify_array, interleaved)")
    inputs = experiment.bench_inputs(exp.teacher, data_root)
    speed = experiment.core_throughput(
        bench_models, inputs, s.bench_repeats, s.bench_threads, progress
    )
    rows: dict[str, dict] = {}
    evidence: dict[str, dict] = {}
    for name, cfg in configs.items():
        progress(f"evidence {name} (figures, dev chips, Landsat, clear scenes, end to end)")
        ev = experiment.evidence(
            cfg, cfg.run_dir, data_root, onnx[name], figures, f"{s.figure_prefix}_{name}"
        )
        evidence[name] = ev.to_dict()
        rows[name] = experiment.table_row(
            LABELS[name],
            ev,
            size_mb=onnx[name].stat().st_size / 1e6,
            params_m=parameters(cfg) / 1e6,
            threshold=exported[name]["threshold"],
            core_mp_s=speed[name]["mp_per_s"],
            **_training_time(cfg.run_dir),
        )
    if REFERENCE in speed:
        progress(f"final check of the reference {reference}")
        split_dir = config_mod.resolve(exp.teacher.data.split_dir)
        label = experiment.reference_label(reference)
        rows[REFERENCE] = experiment.checked_row(label, reference, data_root, split_dir)
        rows[REFERENCE]["core_mp_s"] = speed[REFERENCE]["mp_per_s"]
    teacher_speed = speed[TEACHER]["mp_per_s"]
    for row in rows.values():
        row["core_speedup"] = row["core_mp_s"] / teacher_speed
    order = [*RUNS, REFERENCE]
    table_rows = [rows[n] for n in order if n in rows]
    tradeoff = figures / f"{s.figure_prefix}_tradeoff.png"
    _plot_tradeoff(table_rows, tradeoff)

    from training.evaluate import machine

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = "\n".join(
        [
            f"Generated by `python -m training.distill report` on {stamp}, {machine()}, "
            f"onnxruntime provider {speed[TEACHER]['provider']}. Sizes are the ONNX files; "
            f"'core MP/s' is tiled inference of a loaded model on the same in-memory reflectance "
            f"(all {len(inputs)} labelled chips, "
            f"{s.bench_repeats} interleaved passes); 'end-to-end MP/s' is `pipeline.run` over the "
            "chips and the held-out clear scenes (reading and writing files included). Scores at "
            "each model's own threshold through the plugin, pooled tp/fp/fn/tn.",
            "",
            experiment.results_table(table_rows, COLUMNS),
            "",
            _summary_text(rows),
            "",
            f"![size, speed and accuracy]({experiment.relative(tradeoff, page)})",
        ]
    )
    runs_lines = [
        "| run | network | epochs run | best epoch (val IoU) | training h (median epoch x "
        "epochs) | wall h |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, cfg in configs.items():
        best = evidence[name]["best_val"]
        runs_lines.append(
            f"| `{name}` | {describe(cfg)} | {rows[name]['epochs']} | {best.get('epoch', '–')} | "
            f"{rows[name]['training_hours']:.2f} | {rows[name]['wall_hours']:.2f} |"
        )
    figure_lines = []
    for name in RUNS:
        f = evidence[name]["figures"]
        title = f"{LABELS[name]} ({describe(configs[name])})"
        figure_lines += experiment.figures_markdown(title, f, page)
    experiment.write_section(page, "kd-results", results)
    experiment.write_section(page, "kd-runs", "\n".join(runs_lines))
    experiment.write_section(page, "kd-figures", "\n".join(figure_lines))
    out = {
        "generated": stamp,
        "settings": dataclasses.asdict(s),
        "rows": rows,
        "core_throughput": speed,
        "exported": exported,
        "evidence": evidence,
    }
    report_json = config_mod.resolve(exp.teacher.train.runs_dir) / "report.json"
    report_json.write_text(json.dumps(out, indent=2, default=str))
    progress(f"wrote {page} and {report_json}")
    return out


def compare_at(
    exp: Experiment, data_root: Path, threshold: float | None = None, progress=print
) -> dict:
    """All three runs and the reference model at one threshold (default: the reference's):
    :func:`training.experiment.compare_at`, written to the page's ``kd-common`` section and
    ``<runs_dir>/common_threshold.json``."""
    from training import experiment

    comparison = experiment.Comparison(
        runs={n: (LABELS[n], c) for n, c in _finished_configs(exp).items()},
        export=lambda name, cfg, threshold, out: export_run(cfg, data_root, threshold, out),
        base=exp.teacher,
        doc=exp.settings.doc,
        reference_model=exp.settings.reference_model,
        key=COMMON_KEY,
        command="python -m training.distill compare",
    )
    return experiment.compare_at(comparison, data_root, threshold, progress)


def main(argv: list[str] | None = None) -> None:
    from training import experiment
    from training.train import parse_overrides

    parser = argparse.ArgumentParser(description="Knowledge distillation experiment.")
    parser.add_argument("command", choices=("teacher", "student", "report", "compare"))
    parser.add_argument(
        "--config", type=Path, default=config_mod.REPO_ROOT / "training/configs/distill.yaml"
    )
    parser.add_argument("--data-root", type=Path, default=config_mod.REPO_ROOT / "../shared/data")
    parser.add_argument(
        "--set", nargs="*", default=[], help="overrides: a.b.c=value (e.g. distill.alpha=0.7)"
    )
    experiment.add_threshold_argument(parser)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    exp = load(args.config, parse_overrides(args.set))
    progress = not args.no_progress
    if args.command == "teacher":
        print(f"teacher run: {train_teacher(exp, args.data_root, progress)}")
    elif args.command == "student":
        for run_dir in train_students(exp, args.data_root, progress):
            print(f"student run: {run_dir}")
    elif args.command == "report":
        write_report(exp, args.data_root, lambda text: print(text, flush=True))
    else:
        compare_at(exp, args.data_root, args.threshold, lambda text: print(text, flush=True))


if __name__ == "__main__":
    main()
