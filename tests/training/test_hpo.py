"""Hyper-parameter search (training/hpo.py) on the tiny config and generated data: the study in
SQLite resumes and grows, pruning stops a trailing trial, an interrupted trial is retried with
its parameters, the winner and the default recipe are retrained and exported, the report writes
its page and figures."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from qgis_cloudmask.core.model import CloudModel
from training import config, hpo, train

pytestmark = pytest.mark.training

HPO = config.REPO_ROOT / "training/configs/hpo.yaml"
TINY = config.REPO_ROOT / "training/configs/hpo_tiny.yaml"


def tiny(data_root, tmp, **extra):
    overrides = {
        "data.teacher_dir": str(data_root / "teacher"),
        "data.split_dir": str(tmp / "splits"),
        "train.runs_dir": str(tmp / "runs" / "hpo"),
        "hpo.page": str(tmp / "docs" / "hyperparameter-optimization.md"),
        "hpo.figures_dir": str(tmp / "docs" / "figures"),
    }
    overrides.update(extra)
    return hpo.load(TINY, overrides)


@pytest.fixture(scope="module")
def setup(data_root, tmp_path_factory):
    return tiny(data_root, tmp_path_factory.mktemp("hpo"))


@pytest.fixture(scope="module")
def study(setup, data_root):
    cfg, hcfg = setup
    return hpo.search(cfg, hcfg, data_root, progress=False)


def test_hpo_configs_share_the_training_schema():
    default = config.load(config.REPO_ROOT / "training/configs/default.yaml").to_dict()
    for path in (HPO, TINY):
        cfg, hcfg = hpo.load(path)
        assert cfg.to_dict().keys() == default.keys()
        assert cfg.train.select_on == "val"
        assert set(hcfg.space.loss) == {"soft_target", "bce_dice", "focal"}
    with pytest.raises(ValueError, match="unknown hpo"):
        hpo.load(TINY, {"hpo.n_trails": 3})
    with pytest.raises(ValueError, match="unknown"):
        hpo.load(TINY, {"hpo.trial.train.epochz": 3})


def test_every_encoder_of_the_search_space_builds_without_downloads():
    import torch

    from training.model import build_unet

    cfg, hcfg = hpo.load(HPO)
    assert len(hcfg.space.encoder) >= 2
    for encoder in hcfg.space.encoder:
        channels = hpo.scaled_channels(cfg.model.decoder_channels, max(hcfg.space.decoder_width))
        net = build_unet(encoder, cfg.model.depth, channels).eval()
        with torch.no_grad():
            assert net(torch.zeros(1, 4, 64, 64)).shape == (1, 1, 64, 64)


def test_a_trials_parameters_become_a_short_run_selected_on_validation(setup):
    cfg, hcfg = setup
    params = {
        "lr": 0.004,
        "weight_decay": 1e-3,
        "loss": "focal",
        "synthetic_fraction": 0.2,
        "decoder_width": 0.5,
        "encoder": "mobilenet_v2",
    }
    assert hpo.suggest(optuna.trial.FixedTrial(params), hcfg.space) == params
    recipe = hpo.recipe_from_params(cfg, params)
    tcfg = hpo.with_recipe(cfg, recipe, hcfg.trial, "trial_7", "x")
    assert tcfg.model.decoder_channels == [8, 4, 4]  # half of [16, 8, 8]
    assert (tcfg.model.encoder, tcfg.loss.name) == ("mobilenet_v2", "focal")
    assert (tcfg.train.lr, tcfg.train.weight_decay) == (0.004, 1e-3)
    assert tcfg.data.synthetic_fraction == 0.2 and tcfg.data.dev_select == []
    assert tcfg.train.select_on == "val" and tcfg.run_dir == hpo.hpo_dir(cfg) / "trial_7"


def test_a_trial_reporting_a_bad_value_is_pruned(setup):
    cfg, hcfg = setup
    study = optuna.create_study(direction="maximize", pruner=hpo.make_pruner(hcfg, 2))
    for value in (0.7, 0.8):
        study.add_trial(
            optuna.trial.create_trial(value=value, intermediate_values={1: value, 2: value})
        )
    good, bad = study.ask(), study.ask()
    hpo.epoch_reporter(good)({"epoch": 1, "val_iou": 0.9})
    with pytest.raises(optuna.TrialPruned):
        hpo.epoch_reporter(bad)({"epoch": 1, "val_iou": 0.05})


def test_search_stores_trials_in_sqlite_with_their_runs(setup, study):
    cfg, hcfg = setup
    assert (hpo.hpo_dir(cfg) / "study.db").is_file()
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == hcfg.n_trials
    for t in trials:
        run_dir = hpo.hpo_dir(cfg) / f"trial_{t.number}"
        rows = json.loads((run_dir / "metrics.json").read_text())
        assert t.intermediate_values == {r["epoch"]: r["val_iou"] for r in rows}
        assert t.value == max(r["val_iou"] for r in rows)
        assert not any("dev_iou" in r for r in rows)  # dev chips untouched by the search
        assert not list(run_dir.glob("*.pt"))  # checkpoints of finished trials are dropped
        saved = config.yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["train"]["select_on"] == "val"
        assert saved["model"]["encoder"] == t.params["encoder"]


def test_a_second_search_adds_trials_to_the_same_study(setup, study, data_root, capsys):
    cfg, hcfg = setup
    before = {t.number: t.datetime_start for t in study.trials}
    grown = hpo.search(cfg, hcfg, data_root, n_trials=len(before) + 1, progress=False)
    after = {t.number: t.datetime_start for t in grown.trials}
    assert len(after) == len(before) + 1
    assert all(after[n] == start for n, start in before.items())  # nothing restarted
    hpo.search(cfg, hcfg, data_root, n_trials=len(after), progress=False)
    assert "nothing to do" in capsys.readouterr().out
    assert len(hpo.open_study(cfg, hcfg).trials) == len(after)


def fake_run(calls, val_iou):
    """A stand-in for train.run: writes a metrics log and reports its epochs."""

    def run(cfg, data_root, fresh=False, progress=True, *, on_epoch=None, **_):
        calls.append((cfg, fresh))
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        rows = [{"epoch": e, "val_iou": val_iou, "seconds": 1.0} for e in (1, 2)]
        for i in range(len(rows)):
            (cfg.run_dir / "metrics.json").write_text(json.dumps(rows[: i + 1]))
            (cfg.run_dir / "last.pt").write_bytes(b"")
            on_epoch(rows[i])
        return cfg.run_dir

    return run


def test_search_records_a_trial_the_pruner_stops_as_pruned(data_root, tmp_path, monkeypatch):
    cfg, hcfg = tiny(data_root, tmp_path)
    study = hpo.open_study(cfg, hcfg)
    for value in (0.7, 0.8):  # two finished trials: the median pruner may act
        study.add_trial(
            optuna.trial.create_trial(value=value, intermediate_values={1: value, 2: value})
        )
    stale = hpo.hpo_dir(cfg) / "trial_2"  # a folder of an earlier, deleted study
    stale.mkdir(parents=True)
    (stale / "stale.txt").write_text("not this study's")
    calls = []
    monkeypatch.setattr(train, "run", fake_run(calls, 0.01))
    study = hpo.search(cfg, hcfg, data_root, n_trials=3, progress=False)
    pruned = study.trials[-1]
    assert pruned.number == 2 and calls[0][1]  # fresh: nothing of the stale folder resumed
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values == {1: 0.01}
    assert not (stale / "last.pt").exists() and not (stale / "stale.txt").exists()


def test_an_interrupted_trial_is_retried_with_its_parameters(data_root, tmp_path, monkeypatch):
    cfg, hcfg = tiny(data_root, tmp_path)
    study = hpo.open_study(cfg, hcfg)
    cut = study.ask()  # a search killed mid-trial leaves it RUNNING in the database
    params = hpo.suggest(cut, hcfg.space)
    old = hpo.hpo_dir(cfg) / f"trial_{cut.number}"
    old.mkdir(parents=True)
    (old / "partial.txt").write_text("epochs done before the cut")
    calls = []
    monkeypatch.setattr(train, "run", fake_run(calls, 0.5))
    study = hpo.search(cfg, hcfg, data_root, n_trials=1, progress=False)
    assert study.trials[cut.number].state == TrialState.FAIL
    retry = study.trials[-1]
    assert retry.state == TrialState.COMPLETE and retry.params == params
    assert retry.user_attrs["retry_of"] == cut.number
    run_cfg, fresh = calls[0]
    assert (run_cfg.run_dir / "partial.txt").is_file() and not old.exists() and not fresh
    assert run_cfg.train.lr == params["lr"]


@pytest.fixture(scope="module")
def retrained(setup, study, data_root):
    cfg, hcfg = setup
    return hpo.retrain(cfg, hcfg, data_root, progress=False)


def test_retrain_exports_the_winner_and_the_default_recipe_with_one_budget(
    setup, study, retrained, data_root
):
    cfg, hcfg = setup
    assert retrained["best"]["trial"] == study.best_trial.number
    assert retrained["best"]["recipe"] == hpo.recipe_from_params(cfg, study.best_trial.params)
    tiny_recipe = hpo.recipe_from_config(config.load(config.REPO_ROOT / hcfg.default_recipe))
    assert retrained["default"]["recipe"] == tiny_recipe
    budgets = set()
    for arm in hpo.ARMS:
        entry = retrained[arm]
        model = CloudModel(entry["export"]["path"])
        assert entry["export"]["path"].endswith(f"{arm}.onnx") and model.info.threshold == 0.5
        rows = json.loads((config.Path(entry["run_dir"]) / "metrics.json").read_text())
        assert [r["epoch"] for r in rows] == [1, 2]
        t = entry["config"]["train"]
        assert t["select_on"] == "val"
        budgets.add((t["epochs"], t["steps_per_epoch"], t["batch_size"], t["seed"]))
    assert budgets == {(2, 3, 2, 0)}
    onnx = config.Path(retrained["best"]["export"]["path"])
    mtime = onnx.stat().st_mtime
    hpo.retrain(cfg, hcfg, data_root, progress=False)  # done: resumes, exports nothing
    assert onnx.stat().st_mtime == mtime


def test_report_writes_history_importances_trials_and_best_vs_default(setup, retrained, data_root):
    cfg, hcfg = setup
    page = hpo.report(cfg, hcfg, data_root)
    text = page.read_text()
    for key in ("hpo-setup", "hpo-search", "hpo-results"):
        assert f"BEGIN {key}" in text
    figures = page.parent / "figures"
    names = ["history", "intermediate", "importances"]
    names += [f"{arm}_{kind}" for arm in hpo.ARMS for kind in ("loss", "pr", "validation")]
    for name in names:
        assert (figures / f"hpo_{name}.png").stat().st_size > 0
        assert f"figures/hpo_{name}.png" in text
    assert "PedAnovaImportanceEvaluator" in text
    assert "| TPE best (trial" in text and "| default recipe |" in text
    assert "| trial | state | val IoU |" in text
    assert "Retrain time as median epoch x epochs" in text and "median epoch x epochs of" in text
    hpo.report(cfg, hcfg, data_root)  # sections replaced, not appended
    assert page.read_text().count("BEGIN hpo-results") == 1
