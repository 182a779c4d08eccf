"""The evaluation of the inference options (``training.evaluate``) and the shift-sensitivity
measurement (``training.shift_sensitivity``), on generated data with per-pixel ONNX models whose
outputs are known exactly (never ../shared)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qgis_cloudmask.core import histogram
from tests.support.synthetic import sample_scene, write_pixel_model
from tests.training.generate import write_geotiff, write_labelled_pair
from training import evaluate, metrics, shift_sensitivity

pytestmark = pytest.mark.training

GROUND_DN = np.array([800, 1000, 1200, 2500], np.uint16).reshape(4, 1, 1)  # B02, B03, B04, B08


def clear_scene(folder, height, width, bright_pixels=0, clouds="no"):
    """A clear scene: flat ground, plus ``bright_pixels`` in the first row(s) as bright as cloud
    in blue (what a blue-threshold model calls cloud: a known false positive count)."""
    dn = np.broadcast_to(GROUND_DN, (4, height, width)).copy()
    dn[0].reshape(-1)[:bright_pixels] = 6000
    write_geotiff(folder / "image.tif", dn)
    meta = {"level": "L1C", "processing_baseline": "pre-04.00", "clouds_visible": clouds}
    (folder / "source.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    """Two labelled chips (one Sentinel-2, one Landsat), clear scenes on every side of a split,
    a cloudy held-out scene, and two per-pixel models (the second one for the ensemble)."""
    root = tmp_path_factory.mktemp("evaldata")
    rng = np.random.default_rng(3)
    write_labelled_pair(root / "dev_labelled", "oncloudn_t", 90, 100, rng)
    write_labelled_pair(root / "dev_labelled", "ukis_landsat5", 70, 80, rng)
    unlabelled = root / "s2_unlabelled"
    clear_scene(unlabelled / "clear_val", 60, 50, bright_pixels=30)  # 1 %
    clear_scene(unlabelled / "clear_new", 40, 50, bright_pixels=100)  # 5 %, in no split file
    clear_scene(unlabelled / "clear_train", 40, 40)  # trained on: left out
    clear_scene(unlabelled / "cloudy_val", 40, 40, clouds="yes")  # not clear: left out
    splits = root / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("# split\nclear_train\n")
    (splits / "val.txt").write_text("clear_val\ncloudy_val\n")
    ramp = [round(0.02 + 0.6 * level, 6) for level in histogram.LEVELS]
    reference = {
        "levels": list(histogram.LEVELS),
        "bands": {b: ramp for b in ("B04", "B03", "B02", "B08")},
        "source": "test ramp",
    }
    main = write_pixel_model(root / "blue_a.onnx", meta={"reference_quantiles": reference})
    other = write_pixel_model(root / "blue_b.onnx", centre=0.3, threshold=0.3)
    return root, main, other


@pytest.fixture(scope="module")
def evaluated(eval_root, tmp_path_factory):
    root, main, other = eval_root
    out = tmp_path_factory.mktemp("evalout")
    page = out / "page.md"
    page.write_text("# Inference options\n\nHand-written text.\n")
    summary = evaluate.main(
        ["--data-root", str(root), "--model", main, "--ensemble-model", other]
        + ["--split-dir", str(root / "splits"), "--repeats", "2", "-q"]
        + ["--json", str(out / "eval.json"), "--markdown", str(page)]
    )
    return summary, json.loads((out / "eval.json").read_text()), page


def test_every_variant_is_scored_on_both_chip_groups(evaluated):
    _, saved, _ = evaluated
    assert list(saved["variants"]) == [v.name for v in evaluate.VARIANTS]
    for entry in saved["variants"].values():
        for group in ("sentinel2", "landsat", "all"):
            assert set(entry["pooled"][group]) == set(metrics.METRIC_NAMES)
            assert "balanced_accuracy" in entry["pooled"][group]
        assert set(entry["scenes"]) == {"oncloudn_t", "ukis_landsat5"}


def test_ours_is_the_pipeline_with_the_files_bands(evaluated):
    """Blue (band 1 of the files) separates the generated clouds exactly: a wrong band mapping
    or a misread output would not score 1."""
    _, saved, _ = evaluated
    assert saved["pooled"]["all"]["ours"] == saved["variants"]["none"]["pooled"]["all"]
    assert saved["pooled"]["all"]["ours"]["iou"] == 1.0
    assert set(saved["pooled"]["all"]) == {"ours", "teacher", "brightness"}


def test_each_variant_uses_the_pipelines_default_threshold(evaluated):
    _, saved, _ = evaluated
    settings = {name: v["settings"] for name, v in saved["variants"].items()}
    assert settings["none"]["threshold"] == 0.5
    assert settings["tta=d8"]["tta"] == "d8" and settings["tta=d8"]["threshold"] == 0.5
    assert settings["histogram_matching"]["histogram_matching"] is True
    assert settings["ensemble"]["threshold"] == pytest.approx(0.4)  # mean of 0.5 and 0.3
    assert [m["weight"] for m in settings["ensemble+flips"]["models"]] == [0.5, 0.5]
    assert settings["ensemble+flips"]["tta"] == "flips"


def test_false_positives_on_held_out_clear_scenes_only(evaluated):
    _, saved, _ = evaluated
    clear = saved["variants"]["none"]["clear_scenes"]
    assert {n: s["split"] for n, s in clear["scenes"].items()} == {
        "clear_new": "neither",
        "clear_val": "val",
    }
    assert clear["scenes"]["clear_val"]["percent"] == pytest.approx(1.0)
    assert clear["scenes"]["clear_new"]["percent"] == pytest.approx(5.0)
    assert clear["pooled_percent"] == pytest.approx(100 * 130 / 5000)
    assert set(saved["clear_scenes_teacher"]["scenes"]) == {"clear_new", "clear_val"}


def test_cost_is_measured_relative_to_none_in_the_same_run(evaluated):
    _, saved, _ = evaluated
    cost = {name: v["cost"] for name, v in saved["variants"].items()}
    assert cost["none"]["time_ratio_to_none"] == 1.0
    assert [cost[n]["model_passes_per_tile"] for n in cost] == [1, 4, 8, 1, 2, 8]
    pixels = 90 * 100 + 70 * 80 + 60 * 50 + 40 * 50
    for c in cost.values():
        assert c["inputs"] == 4 and c["megapixels"] == pytest.approx(2 * pixels / 1e6)
        assert c["mp_per_s"] > 0 and c["time_ratio_to_none"] > 0
    assert saved["speedup"] > 0 and saved["run"]["repeats"] == 2


def test_markdown_tables_go_between_markers_and_keep_the_page(evaluated):
    _, _, page = evaluated
    text = page.read_text()
    assert text.startswith("# Inference options\n\nHand-written text.\n")
    begin, end = evaluate.markers(evaluate.MARKDOWN_KEY)
    block = text.split(begin)[1].split(end)[0]
    for title in ("Sentinel-2 dev chips", "Landsat chips", "False positives", "Cost"):
        assert title in block
    assert "| ensemble+flips |" in block and "pending" not in block
    evaluate.write_markdown(page, "new tables\n", evaluate.MARKDOWN_KEY)
    again = page.read_text()
    assert again.count(begin) == 1 and "new tables" in again and "Cost" not in again
    assert again.startswith("# Inference options\n\nHand-written text.\n")


def test_ensemble_rows_are_pending_without_a_second_model(eval_root, tmp_path):
    root, main, _ = eval_root
    summary = evaluate.main(
        ["--data-root", str(root), "--model", main, "--variants", "none", "tta=flips"]
        + ["--split-dir", str(root / "splits"), "--repeats", "1", "--no-teacher", "-q"]
    )
    assert list(summary["variants"]) == ["none", "tta=flips"]
    text = evaluate.markdown_tables(summary)
    assert "| ensemble | pending" in text and "| ensemble+flips | pending" in text
    with pytest.raises(SystemExit, match="--ensemble-model"):
        evaluate.main(["--data-root", str(root), "--model", main, "--variants", "ensemble"])


def test_clear_scenes_need_the_training_split(eval_root, tmp_path):
    root, main, _ = eval_root
    with pytest.raises(SystemExit, match="train.txt"):
        evaluate.main(["--data-root", str(root), "--model", main, "--split-dir", str(tmp_path)])


# -- shift sensitivity ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """A generated scene with smooth clouds, measured with a per-pixel model (exactly
    shift-equivariant: the centre lies between DN steps, so no pixel sits on the threshold)."""
    root = tmp_path_factory.mktemp("shiftdata")
    folder = root / "s2_unlabelled" / "clouds"
    folder.mkdir(parents=True)
    write_geotiff(folder / "image.tif", sample_scene(250, 230, seed=4))
    (folder / "source.json").write_text(json.dumps({"level": "L1C", "clouds_visible": "yes"}))
    model = write_pixel_model(root / "pixel.onnx", k=25.0, centre=0.20005)
    out = tmp_path_factory.mktemp("shiftout")
    summary = shift_sensitivity.main(
        ["--data-root", str(root), "--model", model, "--scenes", "clouds", "-q"]
        + ["--shifts", "1", "2", "37", "--modes", "none", "flips"]
        + ["--json", str(out / "shift.json"), "--markdown", str(out / "page.md")]
        + ["--figures", str(out / "figures")]
    )
    return summary, out


def test_a_per_pixel_model_is_shift_equivariant(shifted):
    summary, _ = shifted
    assert {r["shift"] for r in summary["rows"]} == {1, 2, 37}
    for row in summary["rows"]:
        size = (250 - row["shift"]) * (230 - row["shift"])
        assert row["pixels"] == size
        assert row["mask_differs"] == 0 and row["max_abs"] < 1e-5
    for mode in ("none", "flips"):
        for parity in ("odd", "even", "all"):
            pooled = summary["pooled"][mode][parity]
            assert pooled["disagreement_percent"] == 0.0 and pooled["mean_abs"] < 1e-6


def test_alignment_off_by_one_pixel_would_show(shifted):
    """The comparison is sensitive: the same outputs misaligned by one pixel differ."""
    a = sample_scene(120, 110, seed=5)[0].astype(np.float32) / 10000
    prob = 1 / (1 + np.exp(-25 * (a - 0.20005)))
    mask = (prob >= 0.5).astype(np.uint8)
    s = 7
    moved, moved_mask = prob[s:-1, s:-1], mask[s:-1, s:-1]
    right = shift_sensitivity.compare(prob, mask, moved, moved_mask, s, s)
    wrong = shift_sensitivity.compare(prob, mask, moved, moved_mask, s, s + 1)
    assert right["mean_abs"] == 0.0 and right["mask_differs"] == 0
    assert wrong["mean_abs"] > 1e-3 and wrong["mask_differs"] > 0


def test_shift_outputs_tables_and_figures(shifted):
    summary, out = shifted
    saved = json.loads((out / "shift.json").read_text())
    assert saved["pooled"]["flips"]["odd"]["pairs"] == 2
    assert set(saved["per_shift"]["none"]) == {"1", "2", "37"}
    assert saved["tta_vs_none"][0]["mask_differs"] == 0  # TTA cannot change a per-pixel model
    text = (out / "page.md").read_text()
    assert "Shift sensitivity" in text and "| flips | odd |" in text
    for name in ("shift_sensitivity.png", "tta_example.png"):
        assert (out / "figures" / name).stat().st_size > 0
    assert summary["tta_example"]["changed_pixels"] == 0
