"""Tiny config end to end on generated data: train -> export -> contract -> parity -> plugin
core -> evaluate, plus the torchvision workaround and the teacher pseudo-labeller."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from qgis_cloudmask.core import contract, histogram, inference
from qgis_cloudmask.core.model import CloudModel
from training import config, evaluate, export, pseudolabel, reference, train

pytestmark = pytest.mark.training

TINY = config.REPO_ROOT / "training/configs/tiny.yaml"


@pytest.fixture(scope="module")
def trained(tiny_cfg, data_root):
    return train.run(tiny_cfg, data_root, progress=False)


@pytest.fixture(scope="module")
def exported(tiny_cfg, trained, data_root):
    return export.export(tiny_cfg, data_root=data_root)


def test_default_and_tiny_configs_share_one_schema():
    default = config.load(config.REPO_ROOT / "training/configs/default.yaml")
    tiny = config.load(TINY)
    assert default.to_dict().keys() == tiny.to_dict().keys()
    with pytest.raises(ValueError, match="unknown"):
        config.from_dict({"train": {"epochz": 3}})


def test_run_folder_has_config_seed_sha_logs_and_checkpoints(trained):
    saved = config.yaml.safe_load((trained / "config.yaml").read_text())
    assert saved["seed"] == 0 and "git_sha" in saved and saved["model"]["encoder"] == "resnet18"
    rows = json.loads((trained / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_iou", "dev_iou"} <= set(rows[0])
    assert (trained / "metrics.csv").read_text().startswith("epoch,")
    assert (trained / "best.pt").is_file() and (trained / "last.pt").is_file()


def test_training_resumes_from_last_checkpoint(tiny_cfg, data_root, trained, capsys):
    longer = config.from_dict(
        {**tiny_cfg.to_dict(), "train": {**tiny_cfg.to_dict()["train"], "epochs": 3}}
    )
    train.run(longer, data_root, progress=False)
    assert "resumed" in capsys.readouterr().out
    rows = json.loads((trained / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_export_passes_checker_parity_and_size(exported):
    assert exported["parity_max_abs"] < export.PARITY_ATOL
    assert exported["size_mb"] < 250


def test_export_writes_the_training_datas_reference_quantiles(exported, tiny_cfg, data_root):
    """Histogram matching's reference: quantiles of the training split, read back by the
    plugin, equal to a fresh computation, and usable by the pipeline's option."""
    info = CloudModel(exported["path"]).info
    assert exported["reference_quantiles"] and info.reference is not None
    again = reference.training_reference(tiny_cfg, data_root)
    assert np.allclose(info.reference.values, again.values, atol=1e-6)
    assert info.reference.levels == histogram.LEVELS
    for values in info.reference.values:  # quantiles of reflectance: rising, plausible
        assert all(b >= a for a, b in zip(values, values[1:]))
        assert 0.0 <= values[0] and values[-1] <= 1.5
    train_names = {
        line.strip()
        for line in (config.resolve(tiny_cfg.data.split_dir) / "train.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert f"{len(train_names)} training scenes" in info.reference.source


def test_reference_stamp_keeps_the_weights(exported, tiny_cfg, data_root, tmp_path):
    import shutil

    copy = tmp_path / "copy.onnx"
    shutil.copy(exported["path"], copy)
    before = onnx.load(str(copy)).graph.SerializeToString()
    reference.main(
        ["--config", str(TINY), "--data-root", str(data_root), "--model", str(copy)]
        + ["--version", "9.9.9", "--set", f"data.teacher_dir={data_root / 'teacher'}"]
        + [f"data.split_dir={config.resolve(tiny_cfg.data.split_dir)}"]
    )
    assert onnx.load(str(copy)).graph.SerializeToString() == before
    assert CloudModel(copy).info.version == "9.9.9"


def test_exported_graph_and_metadata_follow_the_contract(exported):
    proto = onnx.load(exported["path"])
    assert [i.name for i in proto.graph.input] == [contract.INPUT_NAME]
    assert {o.name for o in proto.graph.output} == {
        contract.MASK_OUTPUT,
        contract.PROBABILITY_OUTPUT,
    }
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert set(contract.REQUIRED_METADATA_KEYS) <= set(meta)
    assert meta["bands"] == list(contract.DEFAULT_BANDS)
    assert meta["classes"] == {"0": "clear", "1": "cloud"}
    assert meta["tile_size"] == 224 and "git_sha" in meta["training"]


def test_plugin_core_loads_and_runs_the_exported_model(exported):
    model = CloudModel(exported["path"])
    refl = np.random.default_rng(0).random((4, 300, 260)).astype(np.float32) * 0.5
    prob, mask, stats = inference.classify_array(
        model.predict,
        refl,
        model.info.tile_size,
        model.info.recommended_overlap,
        model.info.threshold,
    )
    assert prob.shape == (300, 260) and set(np.unique(mask)) <= {0, 1}
    assert stats.valid_pixels == 300 * 260


def test_evaluate_prints_ours_teacher_and_brightness(
    exported, tiny_cfg, data_root, tmp_path, capsys
):
    out = tmp_path / "eval.json"
    evaluate.main(
        [
            "--data-root",
            str(data_root),
            "--model",
            exported["path"],
            "--split-dir",
            str(config.resolve(tiny_cfg.data.split_dir)),
            "--repeats",
            "1",
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert "POOLED" in text and "teacher" in text and "speed-up" in text
    summary = json.loads(out.read_text())
    assert set(summary["scenes"]) == {"chip_a", "chip_b"}
    assert set(summary["pooled"]["all"]) == {"ours", "teacher", "brightness"}
    # the exported model carries its reference: every option but the ensemble applies
    assert list(summary["variants"]) == ["none", "tta=flips", "tta=d8", "histogram_matching"]
    assert summary["skipped_variants"] == ["ensemble", "ensemble+flips"]
    assert summary["variants"]["none"]["pooled"]["all"] == summary["pooled"]["all"]["ours"]


def test_pseudolabel_writes_soft_teacher_probabilities(data_root, tmp_path):
    pseudolabel.main(["--data-root", str(data_root), "--out", str(tmp_path)])
    prob = np.load(tmp_path / "scene_a.npy")
    assert prob.dtype == np.float16 and prob.shape == (96, 100)
    assert 0.0 <= float(np.nanmin(prob)) and float(np.nanmax(prob)) <= 1.0
    assert json.loads((tmp_path / "scene_a.json").read_text())["teacher"] == "model_4b_l1c.onnx"


def test_smp_imports_through_the_torchvision_workaround():
    from training._torchvision_compat import smp

    assert hasattr(smp, "Unet")


def test_report_writes_markdown_and_figures(tiny_cfg, exported, data_root, tmp_path):
    from training import report

    out = tmp_path / "docs" / "training-report.md"
    report.write_report(
        tiny_cfg, data_root, config.Path(exported["path"]), out, out.parent / "figures"
    )
    text = out.read_text()
    for figure in ("loss_curves.png", "precision_recall.png", "validation_grid.png"):
        assert (out.parent / "figures" / figure).stat().st_size > 0
        assert f"figures/{figure}" in text
    assert "teacher" in text and "brightness" in text and "Metric definitions" in text


def test_selection_on_the_validation_split_ignores_the_dev_chips():
    row = {"val_iou": 0.5, "dev_iou": 0.9}
    assert train.selection_key(row) == "dev_iou"  # how the shipped model was chosen
    assert train.selection_key(row, "val") == "val_iou"  # the research experiments
    assert train.selection_key({"val_iou": 0.5}, "dev") == "val_iou"
    with pytest.raises(ValueError, match="select_on"):
        train.selection_key(row, "test")


def test_training_time_ignores_an_epoch_spent_suspended():
    from training import experiment

    # a session suspended mid-epoch: the wall sum counts the hour, median x epochs does not;
    # rows without seconds (the DARTS search's epoch-0 alphas) are not epochs
    history = [{"epoch": 0}, {"seconds": 40.0}, {"seconds": 3326.1}, {"seconds": 42.0}]
    history.append({"seconds": 41.0})
    assert experiment.training_seconds(history) == pytest.approx((3449.1, 4 * 41.5))
    assert experiment.training_seconds([]) == (0.0, 0.0)


def test_experiment_evidence_writes_the_three_figures_and_the_final_check(
    tiny_cfg, trained, exported, data_root, tmp_path
):
    from training import experiment

    ev = experiment.evidence(
        tiny_cfg, trained, data_root, config.Path(exported["path"]), tmp_path / "fig", "tiny"
    )
    for kind in ("loss", "validation", "precision_recall"):
        assert config.Path(ev.figures[kind]).stat().st_size > 0
    assert set(ev.pooled["sentinel2"]) >= {"iou", "f1", "precision", "recall"}
    assert ev.mp_per_s > 0 and "val_iou" in ev.best_val
    row = experiment.table_row("tiny", ev, size_mb=exported["size_mb"])
    table = experiment.results_table([row])
    assert table.splitlines()[0].startswith("| model | val IoU (selection) | S2 dev IoU")
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nhand-written\n")
    experiment.write_section(page, "results", table)
    experiment.write_section(page, "results", table)  # replaced, not appended twice
    text = page.read_text()
    assert text.count("BEGIN results") == 1 and "hand-written" in text
