"""Hyper-parameter search with Optuna's TPE sampler and pruning, then the winner retrained beside
the default recipe with the same budget, then the report.

    python -m training.hpo search  --config training/configs/hpo.yaml --data-root ../shared/data
    python -m training.hpo retrain --config training/configs/hpo.yaml --data-root ../shared/data
    python -m training.hpo report  --config training/configs/hpo.yaml --data-root ../shared/data

The config is a training config (the schema of ``training/config.py``: the base of every trial
and retrain) plus an ``hpo:`` section (:class:`HpoConfig`). Everything lives under
``train.runs_dir`` (``runs/hpo``): ``study.db`` (the Optuna study, SQLite), ``trial_<n>/`` (one
short training run per trial), ``retrain_best/`` and ``retrain_default/`` (the two long runs),
``best.onnx`` / ``default.onnx`` and ``retrain.json``.

*Search*: many short runs (small crops, few epochs), each a :func:`training.train.run` with the
trial's hyper-parameters; the objective is the best IoU on the validation split of the training
data (``train.select_on: val``; the human-labelled dev chips are not even evaluated during the
search); each epoch's validation IoU is reported to the pruner, which stops trials that trail
the median of earlier trials. Rerunning ``search`` resumes: finished trials are kept, a trial cut
off mid-way is marked failed and retried with the same hyper-parameters from its ``last.pt``,
and trials are added until the study holds ``n_trials`` finished ones (``--add K``: K more).
The sampler is re-seeded per trial with ``seed + trial count``, so a resumed search suggests what
an uninterrupted one would have.

*Retrain*: the best trial's hyper-parameters and the default recipe's (``default_recipe``,
``training/configs/default.yaml``), both with the ``retrain`` budget, selected on the validation
split, exported to ONNX (:func:`training.export.export`); finished parts are skipped.

*Report*: optimisation history, intermediate values, parameter importances (PED-ANOVA: fANOVA
would need scikit-learn, which is not installed), the trials table, and best vs default through
:func:`training.experiment.evidence`, written between markers into
``docs/hyperparameter-optimization.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training import config as config_mod
from training.config import Config

#: The hyper-parameters a recipe fixes: what the search varies and the default recipe sets.
RECIPE_KEYS = ("encoder", "decoder_channels", "loss", "lr", "weight_decay", "synthetic_fraction")


@dataclass
class SearchSpace:
    """Ranges ``[low, high]`` (log scale for ``lr`` and ``weight_decay``) and choices."""

    lr: list[float] = field(default_factory=lambda: [3e-4, 1e-2])
    weight_decay: list[float] = field(default_factory=lambda: [1e-6, 1e-2])
    loss: list[str] = field(default_factory=lambda: ["soft_target", "bce_dice", "focal"])
    synthetic_fraction: list[float] = field(default_factory=lambda: [0.0, 0.9])
    #: multipliers on the base config's ``model.decoder_channels``
    decoder_width: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    encoder: list[str] = field(
        default_factory=lambda: ["mobilenet_v2", "resnet18", "efficientnet-b0"]
    )


@dataclass
class HpoConfig:
    """The ``hpo:`` section of an HPO config."""

    study_name: str = "cloudmask-tpe"
    seed: int = 42  # the sampler's; training runs use train.seed
    n_trials: int = 40  # finished (complete or pruned) trials the study should hold
    sampler_startup_trials: int = 10  # random trials before TPE models the history
    pruner: str = "median"  # median | hyperband | none
    pruner_startup_trials: int = 5  # median: trials that complete before anything is pruned
    pruner_warmup_epochs: int = 2  # epochs every trial runs before it may be pruned
    keep_checkpoints: bool = False  # delete a finished trial's *.pt (its logs stay)
    #: config whose recipe (RECIPE_KEYS) is the "default" arm of the retrain; null: this one's
    default_recipe: str | None = "training/configs/default.yaml"
    #: overrides of the training sections, ``{section: {key: value}}``
    trial: dict = field(default_factory=dict)  # for every search trial
    retrain: dict = field(default_factory=dict)  # for both retrains (the same budget)
    space: SearchSpace = field(default_factory=SearchSpace)
    page: str = "docs/hyperparameter-optimization.md"
    figures_dir: str = "docs/figures"
    stem: str = "hpo"  # figure file prefix


# ----------------------------------------------------------------------------- config


def _merge(d: dict, overrides: dict) -> dict:
    """``d`` with ``{section: {key: value}}`` overrides applied (a copy)."""
    out = copy.deepcopy(d)
    for section, values in (overrides or {}).items():
        if section not in out:
            raise ValueError(f"unknown config section in hpo overrides: {section!r}")
        out[section].update(copy.deepcopy(values))
    return out


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Config, HpoConfig]:
    """The training base config and the ``hpo`` section; ``overrides`` map dotted keys
    (``train.runs_dir``, ``hpo.n_trials``, ``hpo.trial.train.epochs``) to values."""
    d = config_mod.read(path, overrides)
    h = dict(d.pop("hpo", None) or {})
    space = dict(h.pop("space", None) or {})
    unknown = sorted(set(h) - set(HpoConfig.__dataclass_fields__))
    unknown += sorted(f"space.{k}" for k in set(space) - set(SearchSpace.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown hpo key(s): {unknown}")
    hcfg = HpoConfig(**h, space=SearchSpace(**space))
    if hcfg.pruner not in ("median", "hyperband", "none"):
        raise ValueError(f"hpo.pruner must be median, hyperband or none, not {hcfg.pruner!r}")
    cfg = config_mod.from_dict(d)
    for section in ("trial", "retrain"):  # fail early on a typo, not after hours
        config_mod.from_dict(_merge(cfg.to_dict(), getattr(hcfg, section)))
    return cfg, hcfg


def hpo_dir(cfg: Config) -> Path:
    return config_mod.resolve(cfg.train.runs_dir)


def storage_url(cfg: Config) -> str:
    return f"sqlite:///{hpo_dir(cfg) / 'study.db'}"


# ----------------------------------------------------------------------------- recipes


def suggest(trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's hyper-parameters, drawn from ``space`` (names as in the study)."""
    return {
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
        "loss": trial.suggest_categorical("loss", list(space.loss)),
        "synthetic_fraction": trial.suggest_float("synthetic_fraction", *space.synthetic_fraction),
        "decoder_width": trial.suggest_categorical("decoder_width", list(space.decoder_width)),
        "encoder": trial.suggest_categorical("encoder", list(space.encoder)),
    }


def scaled_channels(channels: list[int], width: float) -> list[int]:
    """Decoder channels times ``width``, rounded, at least 4 each."""
    return [max(4, int(round(c * float(width)))) for c in channels]


def recipe_from_params(cfg: Config, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as a recipe (RECIPE_KEYS) on top of the base config ``cfg``."""
    loss = asdict(cfg.loss)
    loss["name"] = params.get("loss", cfg.loss.name)
    return {
        "encoder": params.get("encoder", cfg.model.encoder),
        "decoder_channels": scaled_channels(
            cfg.model.decoder_channels, params.get("decoder_width", 1.0)
        ),
        "loss": loss,
        "lr": float(params.get("lr", cfg.train.lr)),
        "weight_decay": float(params.get("weight_decay", cfg.train.weight_decay)),
        "synthetic_fraction": float(params.get("synthetic_fraction", cfg.data.synthetic_fraction)),
    }


def recipe_from_config(cfg: Config) -> dict[str, Any]:
    """The recipe (RECIPE_KEYS) a training config uses."""
    return {
        "encoder": cfg.model.encoder,
        "decoder_channels": list(cfg.model.decoder_channels),
        "loss": asdict(cfg.loss),
        "lr": float(cfg.train.lr),
        "weight_decay": float(cfg.train.weight_decay),
        "synthetic_fraction": float(cfg.data.synthetic_fraction),
    }


def default_recipe(cfg: Config, hcfg: HpoConfig) -> dict[str, Any]:
    path = hcfg.default_recipe
    return recipe_from_config(config_mod.load(config_mod.resolve(path)) if path else cfg)


def with_recipe(
    cfg: Config, recipe: dict[str, Any], overrides: dict, run_name: str, model_name: str
) -> Config:
    """The base config with ``overrides`` (a budget) and ``recipe`` applied, run ``run_name``."""
    d = _merge(cfg.to_dict(), overrides)
    d["model"].update(encoder=recipe["encoder"], decoder_channels=list(recipe["decoder_channels"]))
    d["model"]["name"] = model_name
    d["loss"] = dict(recipe["loss"])
    d["train"].update(lr=recipe["lr"], weight_decay=recipe["weight_decay"], run_name=run_name)
    d["train"]["select_on"] = "val"  # never select on the dev chips here
    d["data"]["synthetic_fraction"] = recipe["synthetic_fraction"]
    return config_mod.from_dict(d)


# ----------------------------------------------------------------------------- search


def make_sampler(hcfg: HpoConfig, seed: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=hcfg.sampler_startup_trials)


def make_pruner(hcfg: HpoConfig, epochs: int):
    """Median pruning on the epoch's validation IoU (or Hyperband over epochs, or none)."""
    import optuna

    if hcfg.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=hcfg.pruner_startup_trials,
            n_warmup_steps=hcfg.pruner_warmup_epochs + 1,  # steps are epochs, counted from 1
        )
    if hcfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, hcfg.pruner_warmup_epochs), max_resource=max(1, epochs)
        )
    return optuna.pruners.NopPruner()


def open_study(cfg: Config, hcfg: HpoConfig):
    """The study in ``<runs_dir>/study.db``, created on first use, loaded afterwards."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    hpo_dir(cfg).mkdir(parents=True, exist_ok=True)
    trial_cfg = config_mod.from_dict(_merge(cfg.to_dict(), hcfg.trial))
    return optuna.create_study(
        storage=storage_url(cfg),
        study_name=hcfg.study_name,
        direction="maximize",
        load_if_exists=True,
        sampler=make_sampler(hcfg, hcfg.seed),
        pruner=make_pruner(hcfg, trial_cfg.train.epochs),
    )


def epoch_reporter(trial) -> Callable[[dict], None]:
    """``train.run``'s ``on_epoch`` hook: report the epoch's validation IoU, prune if told."""
    import optuna

    def on_epoch(row: dict) -> None:
        epoch = int(row["epoch"])
        trial.report(float(row["val_iou"]), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: val IoU {row['val_iou']:.4f}")

    return on_epoch


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _drop_checkpoints(run_dir: Path) -> None:
    for name in ("last.pt", "best.pt"):
        (run_dir / name).unlink(missing_ok=True)


def run_trial(trial, cfg: Config, hcfg: HpoConfig, data_root: Path, progress: bool) -> float:
    """One short training run with the trial's hyper-parameters; best validation IoU."""
    from training import train

    params = suggest(trial, hcfg.space)
    tcfg = with_recipe(
        cfg,
        recipe_from_params(cfg, params),
        hcfg.trial,
        f"trial_{trial.number}",
        f"{cfg.model.name}-trial{trial.number}",
    )
    run_dir = tcfg.run_dir
    retry_of = trial.user_attrs.get("retry_of")
    old = hpo_dir(cfg) / f"trial_{retry_of}"
    resumed = retry_of is not None and old.is_dir() and not run_dir.exists()
    if resumed:
        old.rename(run_dir)  # continue the interrupted run from its last.pt
    elif run_dir.exists():  # not this study's (a deleted study.db): start clean
        print(f"removing {run_dir}: left over from an earlier study", flush=True)
        shutil.rmtree(run_dir)
    trial.set_user_attr("run_dir", str(run_dir))
    reporter = epoch_reporter(trial)
    try:
        if resumed and (run_dir / "last.pt").is_file():  # the pruner sees the epochs done
            for row in _history(run_dir):
                reporter(row)
        train.run(tcfg, data_root, fresh=not resumed, progress=progress, on_epoch=reporter)
    finally:
        history = _history(run_dir)
        trial.set_user_attr("epochs", len(history))
        trial.set_user_attr("train_seconds", round(sum(r.get("seconds", 0) for r in history), 1))
    if not hcfg.keep_checkpoints:
        _drop_checkpoints(run_dir)
    return max(float(r["val_iou"]) for r in history)


def _retry_later(study, number: int, params: dict) -> None:
    """Mark an interrupted trial failed and queue its hyper-parameters to run again."""
    from optuna.trial import TrialState

    study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    study.enqueue_trial(params, user_attrs={"retry_of": number})
    print(f"trial {number} was interrupted: queued again with the same parameters", flush=True)


def finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def search(
    cfg: Config,
    hcfg: HpoConfig,
    data_root: Path,
    n_trials: int | None = None,
    progress: bool = True,
):
    """Run trials until the study holds ``n_trials`` (default ``hcfg.n_trials``) finished ones;
    returns the study. Safe to rerun: it resumes."""
    import optuna
    from optuna.trial import TrialState

    study = open_study(cfg, hcfg)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        _retry_later(study, t.number, t.params)  # one search process at a time: stale
    target = hcfg.n_trials if n_trials is None else n_trials
    done = finished(study)
    if done >= target:
        print(
            f"study {hcfg.study_name!r}: {done} finished trial(s), target {target}: nothing to do"
        )
    while done < target:
        study.sampler = make_sampler(hcfg, hcfg.seed + len(study.trials))
        trial = study.ask()
        print(f"trial {trial.number} ({done + 1}/{target}) starts", flush=True)
        t0 = time.perf_counter()
        try:
            value = run_trial(trial, cfg, hcfg, Path(data_root), progress)
        except optuna.TrialPruned as exc:
            _drop_if_allowed(cfg, hcfg, trial.number)
            study.tell(trial, state=TrialState.PRUNED)
            print(f"trial {trial.number}: {exc}", flush=True)
        except KeyboardInterrupt:
            _retry_later(study, trial.number, trial.params)
            raise
        except Exception:
            study.tell(trial, state=TrialState.FAIL)
            raise
        else:
            study.tell(trial, value)
            best = study.best_trial
            print(
                f"trial {trial.number}: val IoU {value:.4f} in {time.perf_counter() - t0:.0f} s; "
                f"best so far trial {best.number} ({best.value:.4f})",
                flush=True,
            )
        done = finished(study)
    return study


def _drop_if_allowed(cfg: Config, hcfg: HpoConfig, number: int) -> None:
    if not hcfg.keep_checkpoints:
        _drop_checkpoints(hpo_dir(cfg) / f"trial_{number}")


# ----------------------------------------------------------------------------- retrain

#: The two retrained recipes, in table order: the search's winner and the shipped recipe.
ARMS = ("best", "default")


def arm_configs(cfg: Config, hcfg: HpoConfig, study) -> dict[str, tuple[dict, Config]]:
    """Recipe and full config of each arm: the best complete trial's hyper-parameters and the
    default recipe, both with the ``retrain`` budget, exported to ``<runs_dir>/<arm>.onnx``."""
    recipes = {
        "best": recipe_from_params(cfg, study.best_trial.params),
        "default": default_recipe(cfg, hcfg),
    }
    out = {}
    for arm, recipe in recipes.items():
        name = f"cloudmask-unet-hpo-{arm}-{recipe['encoder']}"
        acfg = with_recipe(cfg, recipe, hcfg.retrain, f"retrain_{arm}", name)
        acfg.export.out = str(hpo_dir(cfg) / f"{arm}.onnx")
        out[arm] = (recipe, acfg)
    return out


def _complete_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def retrain(cfg: Config, hcfg: HpoConfig, data_root: Path, progress: bool = True) -> dict:
    """Train both arms with the same budget (resuming), export them; returns ``retrain.json``."""
    from training import export, train

    study = open_study(cfg, hcfg)
    if not _complete_trials(study):
        raise SystemExit(f"study {hcfg.study_name!r} has no complete trial: run `search` first")
    summary_path = hpo_dir(cfg) / "retrain.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for arm, (recipe, acfg) in arm_configs(cfg, hcfg, study).items():
        run_dir = acfg.run_dir
        recipe_file = run_dir / "recipe.json"
        fresh = recipe_file.is_file() and json.loads(recipe_file.read_text()) != recipe
        if fresh:
            print(f"{arm}: the recipe changed since {run_dir} was trained: starting over")
            summary.pop(arm, None)
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe_file.write_text(json.dumps(recipe, indent=2))
        print(f"retrain {arm}: {recipe}", flush=True)
        train.run(acfg, Path(data_root), fresh=fresh, progress=progress)
        out, ckpt = Path(acfg.export.out), run_dir / "best.pt"
        entry = summary.get(arm)
        if entry and out.is_file() and out.stat().st_mtime >= ckpt.stat().st_mtime:
            print(f"{arm}: {out} is up to date", flush=True)
            continue
        exported = export.export(acfg, checkpoint=ckpt, out=out, data_root=Path(data_root))
        summary[arm] = {
            "trial": study.best_trial.number if arm == "best" else None,
            "recipe": recipe,
            "config": acfg.to_dict(),
            "run_dir": str(run_dir),
            "export": exported,
        }
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
        print(f"{arm}: exported {out} ({exported['size_mb']} MB)", flush=True)
    return summary


# ----------------------------------------------------------------------------- report


def param_importances(study) -> tuple[dict[str, float], str]:
    """Importances of the searched parameters for the validation IoU of complete trials, with
    PED-ANOVA (``optuna.importance.PedAnovaImportanceEvaluator``; fANOVA, Optuna's other choice,
    needs scikit-learn, which this environment does not have)."""
    import optuna

    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    if len(_complete_trials(study)) < 2:
        return {}, type(evaluator).__name__
    return optuna.importance.get_param_importances(study, evaluator=evaluator), type(
        evaluator
    ).__name__


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shown_value(t) -> float | None:
    """A trial's value as plotted: the objective, or a pruned trial's last reported IoU."""
    if t.value is not None:
        return float(t.value)
    if t.intermediate_values:
        return float(t.intermediate_values[max(t.intermediate_values)])
    return None


def plot_history(study, path: Path) -> None:
    """Objective per trial (pruned trials at their last reported value), best so far."""
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    for state, style in (
        (TrialState.COMPLETE, dict(marker="o", color="tab:blue", label="complete")),
        (TrialState.PRUNED, dict(marker="x", color="0.55", label="pruned (last reported)")),
    ):
        pts = [(t.number, _shown_value(t)) for t in done if t.state == state]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            ax.scatter(*zip(*pts), **style)
    best, xs, ys = -1.0, [], []
    for t in sorted(done, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE:
            best = max(best, float(t.value))
        if best >= 0:
            xs.append(t.number)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation IoU of the trial")
    ax.set_title("Optimisation history (TPE)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_intermediate(study, path: Path) -> None:
    """Validation IoU per epoch of every trial: what the pruner saw."""
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    best = study.best_trial.number if _complete_trials(study) else None
    for t in study.trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        if t.number == best:
            ax.plot(steps, values, color="tab:red", lw=2.5, label=f"best (trial {best})", zorder=3)
        elif t.state == TrialState.PRUNED:
            ax.plot(steps, values, color="0.6", lw=0.8, marker="x", ms=4)
        else:
            ax.plot(steps, values, color="tab:blue", lw=1, alpha=0.7)
    ax.plot([], [], color="tab:blue", label="complete")
    if any(t.state == TrialState.PRUNED for t in study.trials):
        ax.plot([], [], color="0.6", marker="x", label="pruned")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation IoU")
    ax.set_title("Intermediate values reported to the pruner")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_importances(importances: dict[str, float], evaluator: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance for validation IoU ({evaluator}, normalised)")
    ax.set_title("Hyper-parameter importances (complete trials)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.3f}"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "–" if value is None else str(value)


def _minutes(t) -> float | None:
    """A trial's training minutes as median epoch x epochs (from its ``metrics.json``: see
    :data:`training.experiment.WALL_CLOCK_NOTE`), else its wall time."""
    from training import experiment

    history = _history(Path(t.user_attrs["run_dir"])) if "run_dir" in t.user_attrs else []
    if history:
        return experiment.training_seconds(history)[1] / 60
    return _wall_minutes(t)


def _wall_minutes(t) -> float | None:
    if t.datetime_start and t.datetime_complete:
        return (t.datetime_complete - t.datetime_start).total_seconds() / 60
    return None


def trials_table(study) -> str:
    keys = ("lr", "weight_decay", "loss", "synthetic_fraction", "decoder_width", "encoder")
    lines = [
        "| trial | state | val IoU | epochs | minutes (median epoch x epochs) | "
        + " | ".join(keys)
        + " |",
        "|---:|---|---:|---:|---:|" + "---|" * len(keys),
    ]
    best = study.best_trial.number if _complete_trials(study) else None
    for t in study.trials:
        value = _shown_value(t)
        cells = [
            f"**{t.number}**" if t.number == best else str(t.number),
            t.state.name.lower(),
            "–" if value is None else f"{value:.4f}",
            str(t.user_attrs.get("epochs", len(t.intermediate_values))),
            "–" if _minutes(t) is None else f"{_minutes(t):.1f}",
        ] + [_fmt(t.params.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _budget(overrides: dict, cfg: Config) -> str:
    c = config_mod.from_dict(_merge(cfg.to_dict(), overrides))
    return (
        f"{c.train.epochs} epochs x {c.train.steps_per_epoch} steps x batch "
        f"{c.train.batch_size} of {c.data.crop} x {c.data.crop} px crops "
        f"({c.train.epochs * c.train.steps_per_epoch * c.train.batch_size} crops), one-cycle "
        f"schedule, patience {c.train.patience}, {c.data.val_crops_per_scene} validation crops "
        f"per validation scene, seed {c.train.seed}, torch threads {c.train.threads}"
    )


def setup_text(cfg: Config, hcfg: HpoConfig, study) -> str:
    from training import evaluate, experiment

    trials = study.trials
    minutes = sum(m for m in (_wall_minutes(t) for t in trials) if m is not None)
    typical = sum(m for m in (_minutes(t) for t in trials) if m is not None)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    space = hcfg.space
    pruner = {
        "median": f"MedianPruner on the epoch's validation IoU (no pruning before "
        f"{hcfg.pruner_startup_trials} trials have completed, nor before epoch "
        f"{hcfg.pruner_warmup_epochs + 1})",
        "hyperband": f"HyperbandPruner (min resource {max(1, hcfg.pruner_warmup_epochs)} epochs)",
        "none": "no pruning",
    }[hcfg.pruner]
    return "\n".join(
        [
            f"- Study `{hcfg.study_name}` in `{Path(cfg.train.runs_dir) / 'study.db'}` "
            f"(SQLite): {len(trials)} trial(s), "
            + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            + f"; target {hcfg.n_trials} finished.",
            f"- Sampler: TPE, seed {hcfg.seed} (+ trial count, re-seeded per trial), "
            f"{hcfg.sampler_startup_trials} random start-up trials. Pruner: {pruner}.",
            f"- Search space: learning rate {space.lr[0]:g}–{space.lr[1]:g} (log), weight decay "
            f"{space.weight_decay[0]:g}–{space.weight_decay[1]:g} (log), loss "
            f"{', '.join(space.loss)}, synthetic-cloud fraction "
            f"{space.synthetic_fraction[0]:g}–{space.synthetic_fraction[1]:g}, decoder width "
            f"{', '.join(f'{w:g}' for w in space.decoder_width)} x "
            f"{_fmt(cfg.model.decoder_channels)}, encoder {', '.join(space.encoder)} "
            f"(random initialisation, depth {cfg.model.depth}, input downsampled "
            f"{cfg.model.downsample}x inside the model).",
            f"- Trial budget: {_budget(hcfg.trial, cfg)}.",
            f"- Retrain budget (both arms): {_budget(hcfg.retrain, cfg)}.",
            f"- Hardware: {evaluate.machine()}; search wall time so far {minutes:.0f} min "
            f"({minutes / 60:.1f} h; {typical / 60:.1f} h as median epoch x epochs of every "
            f"trial: {experiment.WALL_CLOCK_NOTE}).",
        ]
    )


def search_text(study, page: Path, figures: dict[str, Path], importances, evaluator) -> str:
    from training.experiment import relative

    parts = [f"![optimisation history]({relative(figures['history'], page)})", ""]
    parts += [f"![intermediate values]({relative(figures['intermediate'], page)})", ""]
    n_complete = len(_complete_trials(study))
    if importances:
        parts += [f"![parameter importances]({relative(figures['importances'], page)})", ""]
        parts.append(
            f"Importances by {evaluator} over the {n_complete} complete trials (pruned trials "
            "have no final value and are left out): "
            + ", ".join(f"{k} {v:.2f}" for k, v in importances.items())
            + "."
            + (" Fewer than 10 complete trials: read them as noise." if n_complete < 10 else "")
        )
    else:
        parts.append(
            f"Parameter importances need at least 2 complete trials ({n_complete} so far)."
        )
    if n_complete:
        best = study.best_trial
        parts += [
            "",
            f"Best trial: **{best.number}**, validation IoU {best.value:.4f}, "
            + ", ".join(f"{k} = {_fmt(v)}" for k, v in best.params.items())
            + ".",
        ]
    parts += ["", trials_table(study)]
    return "\n".join(parts)


def results_text(cfg, hcfg, summary, data_root: Path, page: Path, figures_dir: Path) -> str:
    from training import experiment

    if not all(arm in summary for arm in ARMS):
        return "Not retrained yet: run `python -m training.hpo retrain` (then `report`)."
    rows, evidence, seconds = [], {}, {}
    labels = {
        "best": f"TPE best (trial {summary['best']['trial']})",
        "default": "default recipe",
    }
    for arm in ARMS:
        entry = summary[arm]
        acfg = config_mod.from_dict(entry["config"])
        ev = experiment.evidence(
            acfg,
            Path(entry["run_dir"]),
            data_root,
            Path(entry["export"]["path"]),
            figures_dir,
            f"{hcfg.stem}_{arm}",
        )
        evidence[arm] = ev
        history = _history(Path(entry["run_dir"]))
        seconds[arm] = experiment.training_seconds(history)
        rows.append(
            experiment.table_row(
                labels[arm],
                ev,
                size_mb=entry["export"]["size_mb"],
                epoch=ev.best_val.get("epoch"),
            )
        )
    (hpo_dir(cfg) / "evidence.json").write_text(
        json.dumps({a: e.to_dict() for a, e in evidence.items()}, indent=2, default=str)
    )
    columns = {"name": "model", "epoch": "selected epoch"}
    columns.update({k: v for k, v in experiment.COLUMNS.items() if k != "name"})
    recipe_rows = ["| | " + " | ".join(labels[a] for a in ARMS) + " |", "|---|---|---|"]
    for key in RECIPE_KEYS:
        values = [summary[a]["recipe"][key] for a in ARMS]
        if key == "loss":
            values = [v["name"] for v in values]
        recipe_rows.append(f"| {key} | " + " | ".join(_fmt(v) for v in values) + " |")
    b, d = (rows[0], rows[1])
    gain = (b["val_iou"] or 0) - (d["val_iou"] or 0)
    parts = [
        "\n".join(recipe_rows),
        "",
        experiment.results_table(rows, columns),
        "",
        f"Validation IoU (the selection metric, the validation split of the training data) "
        f"{'gains' if gain >= 0 else 'loses'} {abs(gain):.3f} with the searched recipe. "
        "The Sentinel-2 dev chips, the Landsat chips and the clear-scene false positives were "
        "not used by the search or the retrain; they are the final check (`make evaluate`'s "
        "code path, threshold "
        f"{acfg.train.threshold if acfg.export.threshold is None else acfg.export.threshold}). "
        "Retrain time as median epoch x epochs (in brackets the wall clock; "
        f"{experiment.WALL_CLOCK_NOTE}): best {seconds['best'][1] / 60:.0f} min "
        f"({seconds['best'][0] / 60:.0f}), default {seconds['default'][1] / 60:.0f} min "
        f"({seconds['default'][0] / 60:.0f}).",
    ]
    for arm in ARMS:
        figs = evidence[arm].figures
        parts += [
            "",
            f"**{labels[arm]}**: training and validation loss and IoU per epoch; precision and "
            "recall over thresholds on the labelled chips; ten segmented validation images.",
            "",
            f"![{arm} loss]({experiment.relative(figs['loss'], page)})",
            f"![{arm} precision/recall]({experiment.relative(figs['precision_recall'], page)})",
            f"![{arm} validation images]({experiment.relative(figs['validation'], page)})",
        ]
    return "\n".join(parts)


def report(cfg: Config, hcfg: HpoConfig, data_root: Path) -> Path:
    """Figures and the generated sections of the page; returns the page."""
    from training import experiment

    study = open_study(cfg, hcfg)
    if not study.trials:
        raise SystemExit(f"study {hcfg.study_name!r} is empty: run `search` first")
    page = config_mod.resolve(hcfg.page)
    figures_dir = config_mod.resolve(hcfg.figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        k: figures_dir / f"{hcfg.stem}_{k}.png" for k in ("history", "intermediate", "importances")
    }
    plot_history(study, figures["history"])
    plot_intermediate(study, figures["intermediate"])
    importances, evaluator = param_importances(study)
    if importances:
        plot_importances(importances, evaluator, figures["importances"])
    experiment.write_section(page, "hpo-setup", setup_text(cfg, hcfg, study))
    experiment.write_section(
        page, "hpo-search", search_text(study, page, figures, importances, evaluator)
    )
    summary_path = hpo_dir(cfg) / "retrain.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    experiment.write_section(
        page, "hpo-results", results_text(cfg, hcfg, summary, Path(data_root), page, figures_dir)
    )
    print(f"wrote {page}")
    return page


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    from training.train import parse_overrides

    parser = argparse.ArgumentParser(description="Hyper-parameter search (Optuna TPE).")
    parser.add_argument("command", choices=("search", "retrain", "report"))
    parser.add_argument("--config", type=Path, default=Path("training/configs/hpo.yaml"))
    parser.add_argument("--data-root", type=Path, default=config_mod.REPO_ROOT / "../shared/data")
    parser.add_argument("--set", nargs="*", default=[], help="overrides: section.key=value")
    parser.add_argument("--trials", type=int, help="search: finished trials to reach")
    parser.add_argument("--add", type=int, help="search: this many trials beyond those done")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg, hcfg = load(args.config, parse_overrides(args.set))
    progress = not args.no_progress
    if args.command == "search":
        n_trials = args.trials
        if args.add is not None:
            n_trials = finished(open_study(cfg, hcfg)) + args.add
        study = search(cfg, hcfg, args.data_root, n_trials, progress)
        if _complete_trials(study):
            print(f"best trial {study.best_trial.number}: {study.best_trial.value:.4f}")
    elif args.command == "retrain":
        retrain(cfg, hcfg, args.data_root, progress)
    else:
        report(cfg, hcfg, args.data_root)


if __name__ == "__main__":
    main()
