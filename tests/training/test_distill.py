"""Knowledge distillation: the loss against hand-computed cases, the configs, and the tiny
experiment end to end on generated data (teacher, one distillation step, both students, export,
core throughput, report)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from qgis_cloudmask.core.model import CloudModel
from training import config, distill, evaluate, experiment, losses, train

pytestmark = pytest.mark.training

CONFIG = config.REPO_ROOT / "training/configs/distill.yaml"
TINY = config.REPO_ROOT / "training/configs/distill_tiny.yaml"
SHIPPED = config.REPO_ROOT / "training/configs/default.yaml"


def _bce(logits, target):
    return losses.bce(logits, target)


def _loss(s, t, y, temperature=1.0, alpha=1.0, hard=_bce):
    return distill.distillation_loss(
        torch.tensor(s).view(1, 1, 1, -1),
        torch.tensor(t).view(1, 1, 1, -1),
        torch.tensor(y).view(1, 1, -1),
        hard,
        temperature,
        alpha,
    )


# -- the loss ---------------------------------------------------------------------------------


def test_soft_term_is_the_bernoulli_kl_computed_by_hand():
    # teacher p = sigmoid(ln 3) = 0.75, student q = sigmoid(0) = 0.5
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812 nats
    got = _loss([0.0], [math.log(3.0)], [1.0])
    assert float(got) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.130812, abs=1e-6)


def test_temperature_softens_both_and_scales_the_soft_term_by_t_squared():
    p = math.sqrt(3) / (1 + math.sqrt(3))  # sigmoid(ln(3) / 2)
    expected = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    got = _loss([0.0], [math.log(3.0)], [1.0], temperature=2.0)
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_at_t1_alpha1_it_equals_soft_target_against_the_teachers_probability():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 1, 8, 8, generator=g) * 2, torch.randn(2, 1, 8, 8, generator=g) * 2
    y = torch.rand(2, 8, 8, generator=g)
    got = distill.distillation_loss(s, t, y, _bce, temperature=1.0, alpha=1.0)
    assert float(got) == pytest.approx(float(losses.soft_target(s, torch.sigmoid(t))), abs=1e-5)


def test_alpha_zero_is_the_hard_loss_on_the_data_target():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    y = torch.rand(2, 8, 8, generator=g)
    got = distill.distillation_loss(s, t, y, losses.soft_target, temperature=3.0, alpha=0.0)
    assert float(got) == pytest.approx(float(losses.soft_target(s, y)), abs=1e-6)


def test_alpha_mixes_the_two_terms():
    soft = float(_loss([0.5], [-1.0], [1.0], temperature=2.0, alpha=1.0))
    hard = float(_loss([0.5], [-1.0], [1.0], temperature=2.0, alpha=0.0))
    mixed = float(_loss([0.5], [-1.0], [1.0], temperature=2.0, alpha=0.3))
    assert mixed == pytest.approx(0.3 * soft + 0.7 * hard, abs=1e-6)


def test_pixels_with_a_nan_target_are_ignored_by_both_terms():
    one = _loss([0.0], [math.log(3.0)], [1.0], alpha=0.5)
    with_nodata = _loss([0.0, 5.0], [math.log(3.0), -5.0], [1.0, float("nan")], alpha=0.5)
    assert float(with_nodata) == pytest.approx(float(one), abs=1e-6)


def test_gradient_is_zero_when_the_student_equals_the_teacher():
    t = torch.randn(2, 1, 6, 6) * 3
    s = t.clone().requires_grad_(True)
    loss = distill.distillation_loss(s, t, torch.rand(2, 6, 6), _bce, temperature=2.0, alpha=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(s.grad, torch.zeros_like(s.grad), atol=1e-7)


def test_gradient_pulls_the_student_towards_the_teacher():
    s = torch.zeros(1, 1, 1, 2, requires_grad=True)
    t = torch.tensor([-2.0, 2.0]).view(1, 1, 1, 2)
    distill.distillation_loss(s, t, torch.ones(1, 1, 2), _bce, 2.0, 1.0).backward()
    # gradient descent lowers the first logit and raises the second, towards the teacher
    assert s.grad[0, 0, 0, 0] > 0 > s.grad[0, 0, 0, 1]


def test_extreme_logits_stay_finite():
    got = _loss([-80.0, 80.0], [80.0, -80.0], [0.0, 1.0], temperature=1.0, alpha=1.0)
    assert torch.isfinite(got) and float(got) > 10


@pytest.mark.parametrize("temperature, alpha", [(0.0, 0.5), (-1.0, 0.5), (1.0, 1.5), (1.0, -0.1)])
def test_invalid_temperature_or_alpha_is_refused(temperature, alpha):
    with pytest.raises(ValueError):
        _loss([0.0], [0.0], [1.0], temperature=temperature, alpha=alpha)


def test_objective_keeps_the_teacher_frozen_in_eval_mode():
    teacher = torch.nn.Sequential(torch.nn.Conv2d(4, 1, 1), torch.nn.BatchNorm2d(1)).train()
    student = torch.nn.Conv2d(4, 1, 1)
    before = teacher[1].running_mean.clone()
    objective = distill.DistillObjective(teacher, _bce, temperature=2.0, alpha=0.5)
    loss = objective(student, torch.rand(2, 4, 8, 8) + 1.0, torch.rand(2, 8, 8))
    loss.backward()
    assert not teacher.training and torch.equal(teacher[1].running_mean, before)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


# -- configs ----------------------------------------------------------------------------------


def _params(cfg) -> int:
    return sum(p.numel() for p in train.build_model(cfg).parameters())


def test_the_experiment_config_trains_a_bigger_teacher_and_a_smaller_student_than_shipped():
    exp = distill.load(CONFIG)
    shipped = config.load(SHIPPED)
    assert _params(exp.teacher) > 3 * _params(shipped) > 3 * _params(exp.student)
    assert exp.teacher.model.downsample == 1
    for cfg in exp.configs().values():
        assert cfg.train.select_on == "val" and cfg.train.seed == shipped.train.seed
        assert cfg.data == shipped.data
    # the two students differ only by their name and run folder: same budget, seed and data
    plain, kd = exp.student.to_dict(), exp.student_kd.to_dict()
    for d in (plain, kd):
        del d["train"]["run_name"], d["model"]["name"], d["export"]["out"]
    assert plain == kd
    assert (exp.student.train.epochs * exp.student.train.steps_per_epoch) == 4500


def test_tiny_and_full_configs_share_one_schema():
    full, tiny = distill.load(CONFIG), distill.load(TINY)
    assert full.teacher.to_dict().keys() == tiny.teacher.to_dict().keys()
    assert full.settings.__dict__.keys() == tiny.settings.__dict__.keys()


def test_overrides_reach_any_depth_and_unknown_keys_are_refused():
    exp = distill.load(TINY, {"distill.alpha": 0.9, "distill.teacher.train.epochs": 4})
    assert exp.settings.alpha == 0.9 and exp.teacher.train.epochs == 4
    assert exp.student.train.epochs == 1
    with pytest.raises(ValueError, match="unknown distill"):
        distill.load(TINY, {"distill.alhpa": 0.9})


# -- the tiny experiment end to end -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(data_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    runs = tmp / "runs"
    return distill.load(
        TINY,
        {
            "data.teacher_dir": str(data_root / "teacher"),
            "data.split_dir": str(tmp / "splits"),
            "train.runs_dir": str(runs),
            "distill.doc": str(tmp / "docs" / "knowledge-distillation.md"),
            "distill.figures_dir": str(tmp / "docs" / "figures"),
            # exercise the reference row with a model the report exports itself
            "distill.reference_model": str(runs / "teacher" / "teacher.onnx"),
        },
    )


@pytest.fixture(scope="module")
def teacher_run(tiny, data_root):
    return distill.train_teacher(tiny, data_root, progress=False)


@pytest.fixture(scope="module")
def student_runs(tiny, teacher_run, data_root):
    return distill.train_students(tiny, data_root, progress=False)


@pytest.fixture(scope="module")
def report(tiny, student_runs, data_root):
    return distill.write_report(tiny, data_root, progress=lambda text: None)


def test_students_refuse_to_start_without_a_finished_teacher(tiny, data_root, tmp_path):
    elsewhere = distill.load(TINY, {"train.runs_dir": str(tmp_path / "empty")})
    with pytest.raises(SystemExit, match="teacher"):
        distill.train_students(elsewhere, data_root, progress=False)
    with pytest.raises(SystemExit, match="not finished"):
        distill.write_report(elsewhere, data_root)


def test_teacher_trains_one_epoch_and_selects_on_the_validation_split(teacher_run):
    rows = json.loads((teacher_run / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1]
    saved = config.yaml.safe_load((teacher_run / "config.yaml").read_text())
    assert saved["train"]["select_on"] == "val" and saved["model"]["downsample"] == 1
    assert (teacher_run / "best.pt").is_file() and (teacher_run / "DONE").is_file()


def test_one_distillation_step_is_finite_and_reaches_only_the_student(tiny, teacher_run):
    teacher = distill.load_teacher(tiny)
    student = train.build_model(tiny.student_kd).train()
    objective = distill.objective(tiny, teacher)
    x = torch.rand(2, 4, 64, 64) * 0.6
    y = torch.rand(2, 64, 64)
    y[0, :4] = float("nan")
    loss = objective(student, x, y)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_both_students_train_with_one_budget_and_rerunning_resumes(
    tiny, student_runs, data_root, capsys
):
    plain, kd = student_runs
    assert plain.name == "student" and kd.name == "student_kd"
    for run_dir in student_runs:
        rows = json.loads((run_dir / "metrics.json").read_text())
        assert [r["epoch"] for r in rows] == [1] and np.isfinite(rows[0]["train_loss"])
    recorded = json.loads((kd / "teacher.json").read_text())
    assert recorded["epoch"] == 1 and recorded["temperature"] == tiny.settings.temperature
    distill.train_students(tiny, data_root, progress=False)
    out = capsys.readouterr().out
    assert out.count("resumed") == 2 and "warning" not in out
    assert len(json.loads((kd / "metrics.json").read_text())) == 1


def test_report_exports_all_three_through_the_contract_check(report):
    for name in distill.RUNS:
        info = CloudModel(report["exported"][name]["path"]).info
        assert report["exported"][name]["parity_max_abs"] < 1e-4
        assert info.threshold == 0.5
    assert CloudModel(report["exported"]["student_kd"]["path"]).info.name.endswith("-kd")


def test_report_rows_carry_size_speed_and_accuracy(report):
    rows = report["rows"]
    assert set(rows) == {*distill.RUNS, distill.REFERENCE}
    for name in distill.RUNS:
        r = rows[name]
        assert r["size_mb"] > 0 and r["params_m"] > 0 and r["core_mp_s"] > 0 and r["mp_s"] > 0
        assert {"s2_iou", "s2_f1", "s2_precision", "s2_recall", "val_iou"} <= set(r)
    assert rows["teacher"]["core_speedup"] == pytest.approx(1.0)
    assert rows["student"]["size_mb"] == pytest.approx(rows["student_kd"]["size_mb"], rel=0.01)
    assert report["core_throughput"]["teacher"]["provider"] == "CPUExecutionProvider"


def test_report_page_has_the_table_the_runs_and_three_figures_per_model(tiny, report):
    page = config.resolve(tiny.settings.doc)
    text = page.read_text()
    for key in distill.DOC_KEYS:
        assert text.count(f"BEGIN {key}") == 1
    assert "| model | size MB | params (M) | core MP/s" in text
    for name in distill.RUNS:
        assert distill.LABELS[name] in text
        for kind in ("loss", "validation", "pr"):
            figure = config.resolve(tiny.settings.figures_dir) / f"kd_{name}_{kind}.png"
            assert figure.stat().st_size > 0 and f"figures/{figure.name}" in text
    assert (config.resolve(tiny.settings.figures_dir) / "kd_tradeoff.png").stat().st_size > 0
    assert json.loads((config.resolve(tiny.teacher.train.runs_dir) / "report.json").read_text())


def test_core_throughput_interleaves_models_on_the_same_reflectance(report):
    paths = {n: report["exported"][n]["path"] for n in ("teacher", "student")}
    refl = [np.random.default_rng(0).random((4, 240, 250)).astype(np.float32) * 0.5]
    speed = experiment.core_throughput(paths, refl, repeats=2, threads=1, progress=lambda t: None)
    assert set(speed) == {"teacher", "student"}
    for s in speed.values():
        assert s["mp_per_s"] > 0 and s["megapixels"] == pytest.approx(2 * 240 * 250 / 1e6)


def test_compare_scores_every_model_at_one_threshold(tiny, report, data_root):
    # the tiny reference is the teacher's own export (threshold 0.5): the default takes it
    out = distill.compare_at(tiny, data_root, progress=lambda text: None)
    assert out["threshold"] == 0.5
    assert [r["threshold"] for r in out["rows"]] == [0.5] * 4
    # another cut-off: our three are exported again with it, the reference keeps its own
    out = distill.compare_at(tiny, data_root, threshold=0.3, progress=lambda text: None)
    rows = out["rows"]
    assert [r["name"] for r in rows[:3]] == [distill.LABELS[n] for n in distill.RUNS]
    assert [r["threshold"] for r in rows] == [0.3, 0.3, 0.3, 0.5]
    for name, cfg in tiny.configs().items():
        exported = CloudModel(cfg.run_dir / f"{name}@0.3.onnx").info
        assert exported.threshold == 0.3
    held_out_clear = evaluate.clear_scenes(
        data_root / "s2_unlabelled", config.resolve(tiny.teacher.data.split_dir)
    )
    for r in rows:
        assert 0.0 <= r["s2_iou"] <= 1.0 and 0.0 <= r["s2_precision"] <= 1.0
        # clear-scene false positives exactly when a clear scene is held out of training
        assert (r["clear_fp"] is None) == (not held_out_clear)
        if held_out_clear:
            assert r["clear_fp_max"] >= r["clear_fp"] >= 0.0
    text = config.resolve(tiny.settings.doc).read_text()
    assert text.count(f"BEGIN {distill.COMMON_KEY}") == 1
    assert (
        "exported again at threshold 0.3" in text
        and "its own threshold 0.5: not the same cut-off" in text
    )
    assert json.loads(
        (config.resolve(tiny.teacher.train.runs_dir) / "common_threshold.json").read_text()
    )
    with pytest.raises(SystemExit, match="between 0 and 1"):
        distill.compare_at(tiny, data_root, threshold=1.0, progress=lambda text: None)
