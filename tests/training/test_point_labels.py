"""Point labels: the simulated points, the partial focal cross-entropy, and the tiny grid end to
end on generated data (train -> export -> final check -> report), resumable."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from training import config, point_labels
from training.losses import focal
from training.point_labels import PointObjective, partial_focal_ce, simulate_points

pytestmark = pytest.mark.training

FULL = config.REPO_ROOT / "training/configs/point_labels.yaml"
TINY = config.REPO_ROOT / "training/configs/point_labels_tiny.yaml"
NAN = float("nan")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_partial_focal_ce_is_the_hand_computed_mean_over_labelled_pixels(gamma):
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[1.0, NAN], [0.0, NAN]]])  # two labelled pixels
    alpha = 0.5
    # pixel (0, 0): cloud, p = sigmoid(0); pixel (1, 0): clear, p = sigmoid(-1)
    p_cloud, p_clear = _sigmoid(0.0), _sigmoid(-1.0)
    f_cloud = alpha * (1 - p_cloud) ** gamma * -math.log(p_cloud)
    f_clear = (1 - alpha) * p_clear**gamma * -math.log(1 - p_clear)
    expected = (f_cloud + f_clear) / 2
    assert partial_focal_ce(logits, target, gamma, alpha).item() == pytest.approx(expected)


def test_partial_focal_ce_with_gamma_zero_numbers():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[1.0, NAN], [0.0, NAN]]])
    # 0.5 * (ln 2 + ln(1 + e^-1)) / 2
    expected = 0.5 * (math.log(2.0) + math.log(1.0 + math.exp(-1.0))) / 2
    assert partial_focal_ce(logits, target, 0.0, 0.5).item() == pytest.approx(expected)


def test_unlabelled_pixels_get_zero_gradient():
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), NAN)
    target[0, 1, 2], target[1, 3, 0], target[1, 0, 0] = 1.0, 0.0, 1.0
    partial_focal_ce(logits, target, gamma=2.0).backward()
    grad = logits.grad[:, 0]
    labelled = torch.isfinite(target)
    assert torch.all(grad[~labelled] == 0)
    assert torch.all(grad[labelled] != 0)


def test_partial_focal_ce_pools_over_the_batch_like_the_house_focal():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 8, 8)
    target = torch.full((3, 8, 8), NAN)
    target[0, :2] = 1.0  # 16 labels in the first crop, 1 in the second, none in the third
    target[1, 5, 5] = 0.0
    for gamma in (0.0, 2.0):
        ours = partial_focal_ce(logits, target, gamma, 0.25)
        assert ours.item() == pytest.approx(focal(logits, target, gamma, 0.25).item())


def test_a_batch_without_labels_gives_zero_loss_and_no_nan():
    logits = torch.randn(1, 1, 3, 3, requires_grad=True)
    loss = partial_focal_ce(logits, torch.full((1, 3, 3), NAN))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


# ----------------------------------------------------------------------------- the points


def _crop(h=32, w=32, cloud_rows=8, nan_rows=4):
    """Soft target: top rows cloudy (0.8), bottom rows nodata, the rest clear (0.1)."""
    t = np.full((h, w), 0.1, np.float32)
    t[:cloud_rows] = 0.8
    t[h - nan_rows :] = np.nan
    return t


def test_points_count_is_exact_and_never_on_nodata():
    target = _crop()
    for n in (1, 5, 20, 100):
        sparse = simulate_points(target, n, np.random.default_rng(n))
        labelled = np.isfinite(sparse)
        assert labelled.sum() == n
        assert not (labelled & np.isnan(target)).any()
        assert set(np.unique(sparse[labelled])) <= {0.0, 1.0}


def test_points_are_stratified_half_cloud_half_clear_and_correct():
    target = _crop()
    sparse = simulate_points(target, 20, np.random.default_rng(0))
    labelled = np.isfinite(sparse)
    assert (sparse[labelled] == 1).sum() == 10 and (sparse[labelled] == 0).sum() == 10
    assert np.array_equal(sparse[labelled], (target[labelled] >= 0.5).astype(np.float32))
    odd = simulate_points(target, 5, np.random.default_rng(0))
    assert (odd == 1).sum() == 2 and (odd == 0).sum() == 3  # the odd point goes to clear


def test_a_short_class_gives_what_it_has_and_the_other_fills_up():
    target = np.zeros((16, 16), np.float32)
    target[0, :3] = 1.0  # 3 cloud pixels
    sparse = simulate_points(target, 20, np.random.default_rng(0))
    assert (sparse == 1).sum() == 3 and (sparse == 0).sum() == 17


def test_a_one_class_crop_gets_all_points_from_that_class():
    clear = np.zeros((16, 16), np.float32)
    sparse = simulate_points(clear, 20, np.random.default_rng(0))
    assert (sparse == 0).sum() == 20 and np.isfinite(sparse).sum() == 20


def test_more_points_than_valid_pixels_labels_every_valid_pixel():
    target = _crop(8, 8, cloud_rows=2, nan_rows=6)  # 16 valid pixels
    sparse = simulate_points(target, 100, np.random.default_rng(0))
    assert np.array_equal(np.isfinite(sparse), np.isfinite(target))


def test_dense_labels_every_valid_pixel_binarised():
    target = _crop()
    sparse = simulate_points(target, None, np.random.default_rng(0))
    valid = np.isfinite(target)
    assert np.array_equal(np.isfinite(sparse), valid)
    assert np.array_equal(sparse[valid], (target[valid] >= 0.5).astype(np.float32))


@pytest.mark.parametrize("noise", [0.1, 0.25, 0.5])
def test_label_noise_flips_that_fraction_of_the_points(noise):
    target = _crop(64, 64, cloud_rows=20)
    sparse = simulate_points(target, 100, np.random.default_rng(3), noise=noise)
    labelled = np.isfinite(sparse)
    truth = (target[labelled] >= 0.5).astype(np.float32)
    assert labelled.sum() == 100
    assert (sparse[labelled] != truth).sum() == round(noise * 100)


def test_points_are_reproducible_per_seed_and_differ_across_seeds():
    target = _crop()
    a = simulate_points(target, 20, np.random.default_rng(7))
    b = simulate_points(target, 20, np.random.default_rng(7))
    c = simulate_points(target, 20, np.random.default_rng(8))
    assert np.array_equal(a, b, equal_nan=True) and not np.array_equal(a, c, equal_nan=True)


def test_objective_draws_new_points_each_step_and_resumes_the_same_stream():
    y = torch.from_numpy(np.stack([_crop(), _crop()]))
    first = PointObjective(5, 2.0, 0.5, 0.0, seed=0)
    s0, s1 = first.sparse(y), first.sparse(y)
    assert int(torch.isfinite(s0).sum()) == 10
    assert not torch.equal(torch.isfinite(s0), torch.isfinite(s1))
    resumed = PointObjective(5, 2.0, 0.5, 0.0, seed=0, start_step=1)
    assert torch.equal(torch.isfinite(resumed.sparse(y)), torch.isfinite(s1))


# ----------------------------------------------------------------------------- configs


def test_configs_share_the_training_schema_and_have_their_own_section():
    default = config.load(config.REPO_ROOT / "training/configs/default.yaml")
    for path in (FULL, TINY):
        cfg, exp = point_labels.load(path)
        assert cfg.to_dict().keys() == default.to_dict().keys()
        assert cfg.train.select_on == "val" and cfg.data.dev_select == []
        assert exp.hypothesis and exp.seeds and len(exp.seeds) >= 2
    _, exp = point_labels.load(FULL)
    assert exp.points == [5, 20, 100, "dense"] and exp.gammas == [0.0, 2.0]
    with pytest.raises(ValueError, match="unknown point_labels"):
        point_labels.load(TINY, {"point_labels.pointz": 3})
    with pytest.raises(ValueError, match="positive int"):
        point_labels.load(TINY, {"point_labels.points": [0]})


def test_each_run_gets_its_name_seed_and_focal_gamma():
    cfg, exp = point_labels.load(FULL)
    grid = point_labels.run_dirs(cfg, exp)
    assert len(grid) == 16
    assert [p.name for _, _, p in grid[:2]] == ["p5_g0_s0", "p5_g2_s0"]
    assert grid[-1][2].name == "dense_g2_s1"
    assert grid[-1][2].parent == config.resolve("runs/point_labels")
    rcfg = point_labels.run_config(cfg, exp, point_labels.Setting(None, 2.0), 1)
    assert rcfg.train.seed == 1 and rcfg.loss.name == "focal" and rcfg.loss.focal_gamma == 2.0


def _fake_records(means: dict) -> list[dict]:
    _, exp = point_labels.load(FULL)
    out = []
    for s in point_labels.settings(exp):
        m = means[(s.points_label, s.gamma)]
        for seed, d in ((0, -0.005), (1, 0.005)):
            rec = {"setting": s, "seed": seed, "val_iou": m + d, "train_seconds": 60}
            out.append(rec | {"typical_seconds": 50.0})
    return out


def test_the_verdict_checks_each_part_of_the_hypothesis():
    _, exp = point_labels.load(FULL)
    means = {
        ("5", 0.0): 0.60, ("20", 0.0): 0.70, ("100", 0.0): 0.76, ("dense", 0.0): 0.78,
        ("5", 2.0): 0.66, ("20", 2.0): 0.70, ("100", 2.0): 0.74, ("dense", 2.0): 0.78,
    }  # fmt: skip
    agg = point_labels.aggregate(_fake_records(means), exp)
    assert agg[point_labels.Setting(5, 0.0)]["val_iou"] == pytest.approx((0.60, 0.005, 2))
    text = "\n".join(point_labels.verdict(agg, exp))
    assert "H1 (γ=0)" in text and "+0.100, +0.060, +0.020): **held**" in text
    assert "+0.040, +0.040, +0.040): **held**" in text  # equal gains: not increasing
    assert "H2 (γ=0) 100 points per crop within 0.02 IoU of dense:** dense − 100 = +0.020" in text
    assert "dense − 100 = +0.040 (seed spreads ±0.005, ±0.005): **not held**" in text
    assert "at 5 points +0.060 (spread ±0.005), at dense +0.000" in text
    assert "Incomplete" not in text


def test_the_verdict_says_when_the_grid_is_incomplete():
    _, exp = point_labels.load(FULL)
    records = [r for r in _fake_records(dict.fromkeys(
        [(p, g) for p in ("5", "20", "100", "dense") for g in (0.0, 2.0)], 0.5
    )) if r["setting"].points == 5]  # fmt: skip
    text = "\n".join(point_labels.verdict(point_labels.aggregate(records, exp), exp))
    assert "Incomplete grid" in text and "H2" not in text


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny(data_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("points")
    return point_labels.load(
        TINY,
        {
            "data.teacher_dir": str(data_root / "teacher"),
            "data.split_dir": str(tmp / "splits"),
            "train.runs_dir": str(tmp / "runs"),
            "point_labels.page": str(tmp / "docs" / "point-labels.md"),
            "point_labels.figures_dir": str(tmp / "docs" / "figures"),
        },
    )


@pytest.fixture(scope="module")
def tiny_run(tiny, data_root):
    cfg, exp = tiny
    return point_labels.run(cfg, exp, data_root, progress=False)


def test_tiny_grid_trains_both_seeds_exports_and_checks_them(tiny, tiny_run):
    cfg, exp = tiny
    runs = [p for _, _, p in point_labels.run_dirs(cfg, exp)]
    assert [p.name for p in runs] == ["p5_g2_s0", "p5_g2_s1"]
    for run_dir in runs:
        done = json.loads((run_dir / "DONE").read_text())
        assert done["points"] == "5" and done["epochs"] == 2
        # 2 epochs x 2 steps x batch 2 crops x 5 points
        assert done["labelled_pixels_this_session"] == 40
        saved = config.yaml.safe_load((run_dir / "config.yaml").read_text())
        assert saved["loss"]["name"] == "focal" and saved["seed"] == int(run_dir.name[-1])
        ev = json.loads((run_dir / "evidence.json").read_text())["evidence"]
        assert "sentinel2" in ev["pooled"] and "val_iou" in ev["best_val"]
        assert (run_dir / "model.onnx").is_file()
    assert tiny_run["records"] == 2


def test_tiny_report_writes_the_page_table_and_figures(tiny, tiny_run):
    _, exp = tiny
    page = config.resolve(exp.page).read_text()
    for key in ("points-hypothesis", "points-setup", "points-results", "points-figures"):
        assert f"BEGIN {key}" in page
    assert "| 5 | 2 | 0, 1 |" in page and " ± " in page
    figures = tiny_run["figures"]
    assert config.Path(figures["iou_vs_points"]).stat().st_size > 0
    for kind in ("loss", "validation", "precision_recall"):
        assert config.Path(figures["best"][kind]).stat().st_size > 0
        assert f"points_best_{kind}.png" in page


def test_rerun_skips_finished_runs(tiny, tiny_run, data_root, capsys):
    cfg, exp = tiny
    runs = [p for _, _, p in point_labels.run_dirs(cfg, exp)]
    before = [(p / "last.pt").stat().st_mtime_ns for p in runs]
    point_labels.run(cfg, exp, data_root, progress=False)
    out = capsys.readouterr().out
    assert out.count("trained (DONE), skipped") == 2
    assert out.count("evidence.json exists, skipped") == 2
    assert [(p / "last.pt").stat().st_mtime_ns for p in runs] == before


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny, tiny_run, data_root, capsys):
    cfg, exp = tiny
    setting = point_labels.Setting(20, 0.0)
    longer = point_labels.run_config(cfg, exp, setting, 0)
    d = longer.to_dict()
    d["train"]["epochs"] = 1
    short_cfg = config.from_dict(d)
    from training import train

    train.run(short_cfg, data_root, progress=False, objective=PointObjective(20, 0.0, 0.5, 0, 0))
    (short_cfg.run_dir / "DONE").unlink()  # as if stopped after epoch 1 of 2
    point_labels.train_one(cfg, exp, setting, 0, data_root, progress=False)
    assert "resumed" in capsys.readouterr().out
    rows = json.loads((short_cfg.run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
