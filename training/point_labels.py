"""Training from point labels with a partial focal cross-entropy: how many points does a crop need?

    python -m training.point_labels run --config training/configs/point_labels.yaml \
        --data-root ../shared/data
    python -m training.point_labels report --config training/configs/point_labels.yaml

Annotators can click a few points per image far faster than they can paint a dense mask. This
experiment simulates such point labels from our dense (soft) targets and trains with a loss that
sees only the labelled pixels:

    pCE = sum(focal(pred, GT) * M) / sum(M),   M = 1 on labelled pixels, 0 elsewhere

(:func:`partial_focal_ce`, pooled over the whole batch; unlabelled pixels contribute nothing,
not even to the gradient). Every training step draws new points from the step's dense crop
targets (:func:`simulate_points`, seeded per step), so over a run the network sees many points
per scene but only ``n`` per crop at a time. Validation stays dense: the config's loss (focal
with the setting's gamma) and the IoU on the validation split, which also selects ``best.pt``
(``train.select_on: val``). The two human-labelled dev chips, the Landsat chips and the held-out
clear scenes are the final check beside it (:func:`training.experiment.evidence`).

The grid (``point_labels`` section of the config, parsed by :class:`PointLabelsConfig`): points
per crop x focal gamma x seeds; each cell is one short training run in
``runs/point_labels/<setting>_s<seed>`` and is skipped when its ``DONE`` (training) and
``evidence.json`` (export + final check) exist, so rerunning the command resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tnf

from training import config as config_mod
from training.config import Config

#: Settings of the ``points`` factor that mean "every valid pixel labelled" (full focal CE).
DENSE = "dense"
#: Second entry of the per-step seed sequence, so point draws never reuse another stream.
POINT_STREAM = 104729
#: Binarisation threshold of the soft dense targets (teacher P(cloud), synthetic opacity).
CLOUD_AT = 0.5


# ----------------------------------------------------------------------------- config


@dataclass
class PointLabelsConfig:
    """The experiment's own keys (the ``point_labels`` section of its YAML)."""

    hypothesis: str = ""
    #: points per crop: integers and/or "dense" (every valid pixel, i.e. full focal CE)
    points: list[Any] = field(default_factory=lambda: [5, 20, 100, DENSE])
    gammas: list[float] = field(default_factory=lambda: [0.0, 2.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    alpha: float = 0.5  # focal alpha (weight of cloud points); 0.5 = unweighted
    noise: float = 0.0  # fraction of the drawn labels flipped (label noise)
    #: export + final check (dev chips, Landsat, clear scenes) of every run after training
    evidence: bool = True
    page: str = "docs/point-labels.md"
    figures_dir: str = "docs/figures"
    figure_prefix: str = "points"


def load(
    path: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[Config, PointLabelsConfig]:
    """The training config (same schema as default.yaml) and the experiment's section.

    ``overrides`` maps ``"section.key"`` to a value, ``point_labels.*`` included."""
    d = config_mod.read(path, overrides)
    own = dict(d.pop("point_labels", None) or {})
    names = set(PointLabelsConfig.__dataclass_fields__)
    unknown = set(own) - names
    if unknown:
        raise ValueError(f"unknown point_labels key(s): {sorted(unknown)}")
    exp = PointLabelsConfig(**own)
    for p in exp.points:
        if p != DENSE and not (isinstance(p, int) and p > 0):
            raise ValueError(f"point_labels.points: {p!r} is neither a positive int nor 'dense'")
    if not 0.0 <= exp.noise <= 1.0:
        raise ValueError(f"point_labels.noise must be in [0, 1], not {exp.noise}")
    return config_mod.from_dict(d), exp


@dataclass(frozen=True)
class Setting:
    """One cell of the grid (without the seed)."""

    points: int | None  # None = dense
    gamma: float

    @property
    def name(self) -> str:
        return f"{'dense' if self.points is None else f'p{self.points}'}_g{self.gamma:g}"

    @property
    def points_label(self) -> str:
        return DENSE if self.points is None else str(self.points)


def settings(exp: PointLabelsConfig) -> list[Setting]:
    """The grid's cells, points-major (5 points with every gamma, then 20, ...)."""
    return [
        Setting(None if p == DENSE else int(p), float(g)) for p in exp.points for g in exp.gammas
    ]


def run_config(cfg: Config, exp: PointLabelsConfig, setting: Setting, seed: int) -> Config:
    """The training config of one run: the base config with the run's name, seed and loss (the
    validation loss is the dense focal loss with the setting's gamma)."""
    d = cfg.to_dict()
    d["train"] = {**d["train"], "run_name": f"{setting.name}_s{seed}", "seed": int(seed)}
    d["loss"] = {
        **d["loss"],
        "name": "focal",
        "focal_gamma": setting.gamma,
        "focal_alpha": exp.alpha,
    }
    return config_mod.from_dict(d)


# ----------------------------------------------------------------------------- points


def simulate_points(
    target: np.ndarray, n_points: int | None, rng: np.random.Generator, noise: float = 0.0
) -> np.ndarray:
    """Point labels drawn from a dense (soft) target crop, as an annotator would click them.

    ``target``: ``H x W`` in [0, 1], NaN = nodata. It is binarised at 0.5 (cloud / clear) and
    ``n_points`` distinct valid pixels are drawn without replacement, **stratified half and
    half**: ``n // 2`` cloud and the rest clear when the crop has both classes (a class with
    fewer pixels than its share gives all it has, the other class fills up); a crop with one
    class gets all its points from that class. Never on NaN; ``min(n_points, valid pixels)``
    points in all. ``n_points=None`` labels every valid pixel (dense). ``noise``: this fraction
    of the drawn points (rounded) gets the wrong class (flipped 0 <-> 1).

    Returns ``H x W`` float32: 0 or 1 at the points, NaN elsewhere, so every NaN-aware loss
    and metric of the training code treats unlabelled pixels as ignored.
    """
    target = np.asarray(target, dtype=np.float32)
    valid = np.isfinite(target)
    cloud = valid & (np.nan_to_num(target) >= CLOUD_AT)
    flat_cloud = np.flatnonzero(cloud)
    flat_clear = np.flatnonzero(valid & ~cloud)
    if n_points is None:
        chosen = np.concatenate([flat_cloud, flat_clear])
    else:
        if n_points < 0:
            raise ValueError(f"n_points must be >= 0, not {n_points}")
        n = min(int(n_points), flat_cloud.size + flat_clear.size)
        n_cloud = min(n // 2, flat_cloud.size)
        n_clear = min(n - n_cloud, flat_clear.size)
        n_cloud = n - n_clear  # a short clear class hands its share back to cloud
        chosen = np.concatenate(
            [
                rng.choice(flat_cloud, n_cloud, replace=False),
                rng.choice(flat_clear, n_clear, replace=False),
            ]
        ).astype(np.int64)
    sparse = np.full(target.size, np.nan, np.float32)
    labels = cloud.reshape(-1)[chosen].astype(np.float32)
    n_flip = int(round(noise * chosen.size))
    if n_flip:
        flip = rng.choice(chosen.size, n_flip, replace=False)
        labels[flip] = 1.0 - labels[flip]
    sparse[chosen] = labels
    return sparse.reshape(target.shape)


# ----------------------------------------------------------------------------- loss


def partial_focal_ce(
    logits: torch.Tensor, sparse_target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.5
) -> torch.Tensor:
    """``sum(focal * M) / sum(M)`` over the whole batch, ``M`` = labelled (finite target).

    ``focal = -a_t (1 - p_t)^gamma log(p_t)`` per pixel (Lin et al. 2017; ``a_t = alpha`` on
    cloud, ``1 - alpha`` on clear), the same as :func:`training.losses.focal`. Logits
    ``N x 1 x H x W`` or ``N x H x W``; targets the same shape without the channel, NaN =
    unlabelled. Unlabelled pixels get exactly zero gradient; a batch without any label gives 0.
    """
    logits = logits.reshape(logits.shape[0], -1).float()
    target = sparse_target.reshape(sparse_target.shape[0], -1).float()
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} vs target {tuple(target.shape)}")
    labelled = torch.isfinite(target)
    m = labelled.float()
    y = torch.where(labelled, target, torch.zeros_like(target))
    ce = tnf.binary_cross_entropy_with_logits(logits, y, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * y + (1 - p) * (1 - y)
    a_t = alpha * y + (1 - alpha) * (1 - y)
    focal = a_t * (1 - p_t) ** gamma * ce
    return (focal * m).sum() / m.sum().clamp_min(1.0)


class PointObjective:
    """``train.run``'s objective: new points from the batch's dense targets at every step
    (seeded by the run's seed and the global step, so a resumed run draws what it would have),
    then :func:`partial_focal_ce` of the network's logits on them."""

    def __init__(
        self,
        n_points: int | None,
        gamma: float,
        alpha: float,
        noise: float,
        seed: int,
        start_step: int = 0,
    ) -> None:
        self.n_points, self.gamma, self.alpha, self.noise = n_points, gamma, alpha, noise
        self.seed, self.step = int(seed), int(start_step)
        self.labelled = 0  # labelled pixels seen so far in this process (for the log)

    def sparse(self, y: torch.Tensor) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, POINT_STREAM, self.step])
        self.step += 1
        targets = y.detach().cpu().numpy().reshape(y.shape[0], *y.shape[-2:])
        sparse = np.stack([simulate_points(t, self.n_points, rng, self.noise) for t in targets])
        self.labelled += int(np.isfinite(sparse).sum())
        return torch.from_numpy(sparse)

    def __call__(self, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return partial_focal_ce(net(x), self.sparse(y), self.gamma, self.alpha)


def _done_epochs(run_dir: Path) -> int:
    last = run_dir / "last.pt"
    if not last.is_file():
        return 0
    return int(torch.load(last, map_location="cpu", weights_only=False)["state"]["epoch"])


# ----------------------------------------------------------------------------- the grid


def run_dirs(cfg: Config, exp: PointLabelsConfig) -> list[tuple[Setting, int, Path]]:
    """Every (setting, seed, run folder), seed-major: a cut-short grid has whole seeds."""
    out = []
    for seed in exp.seeds:
        for s in settings(exp):
            out.append((s, int(seed), run_config(cfg, exp, s, seed).run_dir))
    return out


def train_one(
    cfg: Config,
    exp: PointLabelsConfig,
    setting: Setting,
    seed: int,
    data_root: Path,
    progress: bool = True,
) -> Path:
    """Train one run (resumes from ``last.pt``; skipped when ``DONE`` exists)."""
    from training import train

    rcfg = run_config(cfg, exp, setting, seed)
    run_dir = rcfg.run_dir
    if (run_dir / "DONE").is_file():
        print(f"{run_dir.name}: trained (DONE), skipped", flush=True)
        return run_dir
    start = _done_epochs(run_dir) * rcfg.train.steps_per_epoch
    objective = PointObjective(setting.points, setting.gamma, exp.alpha, exp.noise, seed, start)
    t0 = time.perf_counter()
    print(f"{run_dir.name}: training ({setting.points_label} points per crop, "
          f"gamma {setting.gamma:g}, seed {seed})", flush=True)  # fmt: skip
    train.run(rcfg, data_root, progress=progress, objective=objective)
    info = json.loads((run_dir / "DONE").read_text())
    info.update(
        points=setting.points_label,
        gamma=setting.gamma,
        seed=seed,
        labelled_pixels_this_session=objective.labelled,
        session_seconds=round(time.perf_counter() - t0, 1),
    )
    (run_dir / "DONE").write_text(json.dumps(info, indent=2))
    return run_dir


def evidence_one(
    cfg: Config, exp: PointLabelsConfig, setting: Setting, seed: int, data_root: Path
) -> dict:
    """Export ``best.pt`` (selected on the validation split) to ``model.onnx`` and run the final
    check + the three figures (into the run folder); cached in ``evidence.json``."""
    from training import experiment, export

    rcfg = run_config(cfg, exp, setting, seed)
    run_dir = rcfg.run_dir
    cached = run_dir / "evidence.json"
    if cached.is_file():
        print(f"{run_dir.name}: evidence.json exists, skipped", flush=True)
        return json.loads(cached.read_text())
    t0 = time.perf_counter()
    onnx = run_dir / "model.onnx"
    summary = export.export(rcfg, run_dir / "best.pt", onnx)
    ev = experiment.evidence(rcfg, run_dir, data_root, onnx, run_dir / "figures", run_dir.name)
    out = {
        "evidence": ev.to_dict(),
        "size_mb": summary["size_mb"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    cached.write_text(json.dumps(out, indent=2))
    print(f"{run_dir.name}: evidence in {out['seconds']} s", flush=True)
    return out


def run(
    cfg: Config,
    exp: PointLabelsConfig,
    data_root: Path,
    progress: bool = True,
    write: bool = True,
) -> dict:
    """The whole grid (resumable), then the report page and figures."""
    grid = run_dirs(cfg, exp)
    for i, (setting, seed, _) in enumerate(grid):
        print(f"[{i + 1}/{len(grid)}]", end=" ", flush=True)
        train_one(cfg, exp, setting, seed, Path(data_root), progress)
        if exp.evidence:
            evidence_one(cfg, exp, setting, seed, Path(data_root))
    return report(cfg, exp, write=write)


# ----------------------------------------------------------------------------- results


def _best_row(run_dir: Path) -> dict:
    history = json.loads((run_dir / "metrics.json").read_text())
    return max(history, key=lambda r: r.get("val_iou", -1.0)) if history else {}


def collect(cfg: Config, exp: PointLabelsConfig) -> list[dict]:
    """One record per finished run: setting, seed, the selected epoch's validation row, the
    final check (when evidence exists) and the training time."""
    from training import experiment

    out = []
    for setting, seed, run_dir in run_dirs(cfg, exp):
        if not (run_dir / "DONE").is_file():
            continue
        history = json.loads((run_dir / "metrics.json").read_text())
        best = _best_row(run_dir)
        rec = {
            "setting": setting,
            "seed": seed,
            "run": run_dir.name,
            "run_dir": run_dir,
            "val_iou": best.get("val_iou"),
            "val_f1": best.get("val_f1"),
            "best_epoch": best.get("epoch"),
            "epochs": len(history),
        }
        rec["train_seconds"], rec["typical_seconds"] = experiment.training_seconds(history)
        ev_file = run_dir / "evidence.json"
        if ev_file.is_file():
            cached = json.loads(ev_file.read_text())
            ev = cached["evidence"]
            s2, landsat = ev["pooled"].get("sentinel2", {}), ev["pooled"].get("landsat", {})
            rec.update(
                s2_iou=s2.get("iou"),
                s2_f1=s2.get("f1"),
                s2_precision=s2.get("precision"),
                s2_recall=s2.get("recall"),
                landsat_iou=landsat.get("iou"),
                clear_fp=ev.get("clear_fp_percent"),
                mp_s=ev.get("mp_per_s"),
                figures=ev.get("figures", {}),
                evidence_seconds=cached.get("seconds", 0.0),
            )
        out.append(rec)
    return out


def _stats(values: list) -> tuple[float, float, int] | None:
    """Mean, half-range (the spread of the seeds: mean +/- this covers all of them), count."""
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return None
    return float(np.mean(vals)), (max(vals) - min(vals)) / 2, len(vals)


def _pm(stat: tuple[float, float, int] | None, digits: int = 3) -> str:
    if stat is None:
        return "–"
    return f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


#: Aggregated columns: record key -> (header, digits).
AGG_COLUMNS = {
    "val_iou": ("val IoU (selection)", 3),
    "s2_iou": ("S2 dev IoU", 3),
    "s2_f1": ("S2 F1", 3),
    "landsat_iou": ("Landsat IoU", 3),
    "clear_fp": ("clear-scene FP %", 2),
}


def aggregate(records: list[dict], exp: PointLabelsConfig) -> dict[Setting, dict]:
    """Per setting: mean/half-range/count of every :data:`AGG_COLUMNS` metric."""
    out = {}
    for s in settings(exp):
        recs = [r for r in records if r["setting"] == s]
        out[s] = {k: _stats([r.get(k) for r in recs]) for k in AGG_COLUMNS}
        out[s]["seeds"] = sorted(r["seed"] for r in recs)
        out[s]["minutes"] = _stats([r["typical_seconds"] / 60 for r in recs])
    return out


def aggregate_table(agg: dict[Setting, dict], exp: PointLabelsConfig) -> str:
    head = ["points per crop", "focal γ", "seeds"] + [h for h, _ in AGG_COLUMNS.values()]
    head.append("minutes per run (median epoch × epochs)")
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|" + "---:|" * (len(head) - 3)]
    for s, a in agg.items():
        seeds = ", ".join(map(str, a["seeds"])) or "pending"
        cells = [s.points_label, f"{s.gamma:g}", seeds]
        cells += [_pm(a[k], d) for k, (_, d) in AGG_COLUMNS.items()]
        cells.append(_pm(a["minutes"], 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_iou_vs_points(
    agg: dict[Setting, dict], records: list[dict], exp: PointLabelsConfig, path: Path
) -> None:
    """IoU against points per crop (categorical axis, dense last), one line per gamma, error
    bars = the seeds' half-range, every seed as a dot; validation split and S2 dev chips."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(p) for p in exp.points]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    gammas = sorted({s.gamma for s in agg})
    for ax, key, title in (
        (axes[0], "val_iou", "validation split (selection metric)"),
        (axes[1], "s2_iou", "Sentinel-2 dev chips (human labels, final check)"),
    ):
        for j, g in enumerate(gammas):
            dx = (j - (len(gammas) - 1) / 2) * 0.08
            xs, ms, es = [], [], []
            for i, p in enumerate(labels):
                s = next(s for s in agg if s.points_label == p and s.gamma == g)
                st = agg[s][key]
                if st is not None:
                    xs.append(i + dx)
                    ms.append(st[0])
                    es.append(st[1])
                dots = [r[key] for r in records if r["setting"] == s and r.get(key) is not None]
                ax.plot([i + dx] * len(dots), dots, ".", color=f"C{j}", alpha=0.5, ms=5)
            if xs:
                ax.errorbar(xs, ms, yerr=es, fmt="o-", capsize=4, color=f"C{j}", label=f"γ={g:g}")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("labelled points per crop")
        ax.set_ylabel("cloud IoU")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle("mean of the seeds ± half their range (dots: single seeds)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(agg: dict[Setting, dict], exp: PointLabelsConfig) -> list[str]:
    """Each part of the stated hypothesis checked on the mean validation IoU (the selection
    metric), with the seed spread beside it so a difference smaller than it is called so."""

    def val(points: str, gamma: float):
        s = next((s for s in agg if s.points_label == points and s.gamma == gamma), None)
        return agg[s]["val_iou"] if s is not None else None

    lines = []
    gammas = sorted({s.gamma for s in agg})
    labels = [str(p) for p in exp.points]
    if not any(val(p, g) is not None for p in labels for g in gammas):
        return ["*No finished run yet.*"]
    complete = all(val(p, g) is not None for p in labels for g in gammas)
    if not complete:
        lines.append("*Incomplete grid: the checks below use the settings finished so far.*")
    for g in gammas:
        stats = [(p, val(p, g)) for p in labels if val(p, g) is not None]
        if len(stats) < 2:
            continue
        means = [round(st[0], 6) for _, st in stats]
        rising = all(b > a for a, b in zip(means, means[1:]))
        gains = [round(b - a, 6) for a, b in zip(means, means[1:])]
        diminishing = all(b <= a for a, b in zip(gains, gains[1:]))
        chain = " → ".join(f"{p}: {st[0]:.3f}" for p, st in stats)
        held = "held" if rising and diminishing else "partly held" if rising else "not held"
        lines.append(
            f"- **H1 (γ={g:g}) IoU rises with points per crop, with diminishing returns:** "
            f"{chain}; rising at every step: {'yes' if rising else 'no'}, each gain no "
            f"larger than the one before: {'yes' if diminishing else 'no'} (gains "
            + ", ".join(f"{x:+.3f}" for x in gains)
            + f"): **{held}**."
        )
    if "100" in labels and DENSE in labels:
        for g in gammas:
            a, b = val("100", g), val(DENSE, g)
            if a is None or b is None:
                continue
            gap = round(b[0] - a[0], 6)
            lines.append(
                f"- **H2 (γ={g:g}) 100 points per crop within 0.02 IoU of dense:** dense − 100 = "
                f"{gap:+.3f} (seed spreads ±{b[1]:.3f}, ±{a[1]:.3f}): "
                f"**{'held' if gap <= 0.02 else 'not held'}**."
            )
    fewest = labels[0]
    if len(gammas) >= 2 and DENSE in labels and fewest != DENSE:
        lo, hi = gammas[0], gammas[-1]
        parts = {}
        for p in (fewest, DENSE):
            a, b = val(p, lo), val(p, hi)
            if a is not None and b is not None:
                parts[p] = (b[0] - a[0], max(a[1], b[1]))
        if len(parts) == 2:
            few, dense = parts[fewest], parts[DENSE]
            held = few[0] > dense[0]
            lines.append(
                f"- **H3 focal γ={hi:g} helps most at few points:** γ={hi:g} − γ={lo:g} at "
                f"{fewest} points {few[0]:+.3f} (spread ±{few[1]:.3f}), at dense "
                f"{dense[0]:+.3f} (spread ±{dense[1]:.3f}): "
                f"**{'held' if held else 'not held'}**"
                + (
                    " (but the effect at few points is within the seed spread)."
                    if held and abs(few[0]) <= few[1]
                    else "."
                )
            )
    lines.append(
        "\nTwo seeds per setting: a difference smaller than the seeds' spread is not evidence "
        "either way."
    )
    return lines


def _pick(records: list[dict], dense: bool) -> dict | None:
    """The best seed (validation IoU) of the best setting (mean validation IoU) among the
    point-label settings (``dense=False``) or the dense ones; only runs with evidence."""
    recs = [r for r in records if (r["setting"].points is None) == dense and r.get("figures")]
    if not recs:
        return None
    by_setting: dict[Setting, list[dict]] = {}
    for r in recs:
        by_setting.setdefault(r["setting"], []).append(r)
    best = max(by_setting.values(), key=lambda rs: np.mean([r["val_iou"] for r in rs]))
    return max(best, key=lambda r: r["val_iou"])


def setup_text(cfg: Config, exp: PointLabelsConfig, records: list[dict]) -> str:
    from training import experiment

    t, d, m = cfg.train, cfg.data, cfg.model
    minutes = sum(r["train_seconds"] for r in records) / 60
    typical = sum(r["typical_seconds"] for r in records) / 60
    checks = sum(r.get("evidence_seconds", 0.0) for r in records) / 60
    n_runs = len(settings(exp)) * len(exp.seeds)
    return "\n".join(
        [
            f"- Grid: points per crop {', '.join(map(str, exp.points))} × focal γ "
            f"{', '.join(f'{g:g}' for g in exp.gammas)} × seeds "
            f"{', '.join(map(str, exp.seeds))} = {n_runs} runs; focal α {exp.alpha:g}; "
            f"label noise {exp.noise:g}.",
            f"- Each run: U-Net `{m.encoder}` (depth {m.depth}, decoder {m.decoder_channels}, "
            f"downsample {m.downsample}) from scratch, crops {d.crop} × {d.crop} px, batch "
            f"{t.batch_size}, {t.steps_per_epoch} steps × {t.epochs} epochs "
            f"({t.steps_per_epoch * t.epochs * t.batch_size} crops), AdamW lr {t.lr:g} "
            f"one-cycle, weight decay {t.weight_decay:g}, patience {t.patience}, "
            f"{t.threads} threads; `best.pt` by validation IoU at threshold {t.threshold:g} "
            f"(`select_on: {t.select_on}`), exported at that threshold.",
            f"- Validation: {d.val_crops_per_scene} fixed crops per validation scene (half "
            "with synthetic clouds), dense soft targets; dev chips not evaluated during "
            f"training (`dev_select: {d.dev_select}`).",
            f"- Finished runs: {len(records)} of {n_runs}; training wall time so far "
            f"{minutes:.0f} min ({typical:.0f} min as median epoch × epochs: "
            f"{experiment.WALL_CLOCK_NOTE}), export + final checks {checks:.0f} min "
            f"({evaluate_machine()}).",
        ]
    )


def evaluate_machine() -> str:
    from training.evaluate import machine

    return machine()


def report(cfg: Config, exp: PointLabelsConfig, write: bool = True) -> dict:
    """Aggregate the finished runs into the page's generated sections and figures."""
    from training import experiment

    records = collect(cfg, exp)
    agg = aggregate(records, exp)
    page = config_mod.resolve(exp.page)
    figures = config_mod.resolve(exp.figures_dir)
    prefix = exp.figure_prefix
    result = {"records": len(records), "page": str(page), "figures": {}}
    if not write:
        return result
    figures.mkdir(parents=True, exist_ok=True)
    curve = figures / f"{prefix}_iou_vs_points.png"
    if records:
        plot_iou_vs_points(agg, records, exp, curve)
        result["figures"]["iou_vs_points"] = str(curve)

    experiment.write_section(page, "points-hypothesis", f"> **Hypothesis.** {exp.hypothesis}")
    experiment.write_section(page, "points-setup", setup_text(cfg, exp, records))
    per_run = [
        {
            "name": r["run"],
            **{k: r.get(k) for k in experiment.COLUMNS if k not in ("name", "size_mb")},
        }
        for r in records
    ]
    results = [
        "Mean ± half-range over the seeds (with two seeds: the two runs are mean − x and "
        "mean + x). Validation IoU: the selected epoch (`best.pt`) on the validation split, "
        "threshold 0.5. The other columns are the final check of every run's exported "
        "`best.pt` through `make evaluate`'s code path (`experiment.evidence`): pooled IoU on "
        "the two Sentinel-2 dev chips and on the two Landsat chips, cloud-flagged % of the "
        "held-out clear scenes.",
        "",
        aggregate_table(agg, exp),
        "",
        f"![IoU vs points per crop]({experiment.relative(curve, page)})"
        if records
        else "*No finished run yet: the figure appears with the first one.*",
        "",
        "<details><summary>every run</summary>",
        "",
        experiment.results_table(per_run) if per_run else "no finished run yet",
        "",
        "</details>",
    ]
    experiment.write_section(page, "points-results", "\n".join(results))

    shown = []
    for title, key, rec in (
        ("best point-label model", "best", _pick(records, dense=False)),
        ("dense (full focal CE)", "dense", _pick(records, dense=True)),
    ):
        if rec is None:
            continue
        paths = {}
        for kind, src in rec["figures"].items():
            dst = figures / f"{prefix}_{key}_{kind}.png"
            if Path(src).is_file():
                shutil.copyfile(src, dst)
                paths[kind] = dst
        result["figures"][key] = {k: str(v) for k, v in paths.items()}
        shown.append(
            f"**{title}: `{rec['run']}`** ({rec['setting'].points_label} points per crop, "
            f"γ {rec['setting'].gamma:g}, seed {rec['seed']}; the best seed of the best "
            f"setting by validation IoU, {rec['val_iou']:.3f})\n"
        )
        for kind, caption in (
            ("validation", "segmented images (dev chips first, then validation crops)"),
            ("loss", "training and validation loss, validation IoU vs epochs"),
            ("precision_recall", "precision / recall over thresholds (labelled chips)"),
        ):
            if kind in paths:
                shown.append(f"![{caption}]({experiment.relative(paths[kind], page)})\n")
    experiment.write_section(
        page, "points-figures", "\n".join(shown) if shown else "no exported run yet"
    )
    experiment.write_section(page, "points-verdict", "\n".join(verdict(agg, exp)))
    return result


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> dict:
    from training.train import parse_overrides

    parser = argparse.ArgumentParser(description="Point labels with a partial focal CE.")
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--config", type=Path, default=Path("training/configs/point_labels.yaml"))
    parser.add_argument("--data-root", type=Path, default=config_mod.REPO_ROOT / "../shared/data")
    parser.add_argument("--set", nargs="*", default=[], help="overrides: section.key=value")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg, exp = load(args.config, parse_overrides(args.set))
    if args.command == "run":
        out = run(cfg, exp, args.data_root, progress=not args.no_progress)
    else:
        out = report(cfg, exp)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
