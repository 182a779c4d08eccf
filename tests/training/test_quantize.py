"""The int8 variant (``training.quantize``) of a tiny exported U-Net, on generated data (never
../shared): what it keeps of the contract, how close it stays to float32, where it is calibrated,
and the report section it writes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from qgis_cloudmask.core import contract, inference
from qgis_cloudmask.core.model import CloudModel
from training import config, datasets, export, quantize, train

pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def float_model(tiny_cfg, data_root):
    """The tiny U-Net, seeded but untrained, exported like a trained one (reference quantiles
    and dev metrics included): a real graph of Conv, ReLU, Add, Concat and Resize."""
    import torch

    def load(_):
        torch.manual_seed(0)
        net = train.build_model(tiny_cfg).eval()
        return net, {"config": tiny_cfg.to_dict(), "epoch": 0, "row": {"val_iou": 0.5}}

    return export.export(tiny_cfg, checkpoint="untrained", data_root=data_root, load=load)["path"]


@pytest.fixture(scope="module")
def calibration(tiny_cfg, data_root):
    return quantize.calibration_tiles(tiny_cfg, data_root, 8, seed=1)


@pytest.fixture(scope="module")
def int8_model(float_model, calibration, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "tiny-int8.onnx"
    return quantize.quantize(float_model, out, calibration, "all", "minmax")


def split_names(cfg, side: str) -> set[str]:
    text = (config.resolve(cfg.data.split_dir) / f"{side}.txt").read_text()
    return {ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")}


def test_calibration_tiles_come_only_from_training_scenes(tiny_cfg, data_root, calibration):
    windows = quantize.calibration_windows(tiny_cfg, data_root, 8, seed=1)
    drawn = {scene.name for scene, _ in windows}
    assert drawn <= split_names(tiny_cfg, "train")
    assert not drawn & split_names(tiny_cfg, "val")
    dev = {s.name for s in datasets.labelled_scenes(data_root / tiny_cfg.data.dev_dir)}
    assert not drawn & dev
    assert calibration.shape == (8, 4, 224, 224) and calibration.dtype == np.float32
    assert np.array_equal(calibration, quantize.read_tiles(windows, 224))


def test_calibration_draw_is_seeded(tiny_cfg, data_root, calibration):
    again = quantize.calibration_tiles(tiny_cfg, data_root, 8, seed=1)
    other = quantize.calibration_tiles(tiny_cfg, data_root, 8, seed=2)
    assert np.array_equal(again, calibration) and not np.array_equal(other, calibration)


def test_int8_model_keeps_every_metadata_key_and_passes_the_plugin_checks(float_model, int8_model):
    source = {p.key: p.value for p in onnx.load(float_model).metadata_props}
    props = {p.key: p.value for p in onnx.load(int8_model["path"]).metadata_props}
    assert list(props) == list(source)
    renamed = {"model_name", "model_version", "training"}
    assert {k: v for k, v in props.items() if k not in renamed} == {
        k: v for k, v in source.items() if k not in renamed
    }
    ref, info = CloudModel(float_model).info, CloudModel(int8_model["path"]).info
    assert info.name == ref.name + "-int8" and info.version == ref.version + "+int8"
    assert info.reference is not None and info.reference == ref.reference
    assert (info.threshold, info.tile_size, info.bands) == (ref.threshold, 224, ref.bands)
    training = json.loads(props["training"])
    assert {k: v for k, v in training.items() if k != "quantization"} == json.loads(
        source["training"]
    )
    assert training["quantization"]["calibration"] == "minmax"
    assert training["quantization"]["calibration_tiles"] == 8


def test_int8_graph_is_quantized_but_its_head_stays_float(int8_model):
    graph = onnx.load(int8_model["path"]).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    producer = {o: n for n in graph.node for o in n.output}
    assert producer[contract.PROBABILITY_OUTPUT].op_type == "Sigmoid"
    assert int8_model["float32_nodes"] >= 3  # last Conv, ..., Sigmoid, threshold


def test_calibration_in_chunks_gives_the_same_minmax_model(
    float_model, calibration, tmp_path, monkeypatch
):
    whole = quantize.quantize(float_model, tmp_path / "whole.onnx", calibration, batch=2)
    monkeypatch.setattr(quantize, "CALIBRATION_CHUNK_TILES", 2)  # 4 chunks of one batch
    chunked = quantize.quantize(float_model, tmp_path / "chunked.onnx", calibration, batch=2)
    a, b = (onnx.load(m["path"]).graph for m in (whole, chunked))
    assert [t.SerializeToString() for t in a.initializer] == [
        t.SerializeToString() for t in b.initializer
    ]


def test_int8_probability_stays_close_to_float_on_calibration_like_data(
    float_model, int8_model, tiny_cfg, data_root
):
    tiles = quantize.calibration_tiles(tiny_cfg, data_root, 4, seed=5)
    a = quantize.agreement(CloudModel(float_model), CloudModel(int8_model["path"]), tiles)
    assert a["pixels"] > 0
    assert a["mean_abs_dp"] < 0.02 and a["max_abs_dp"] < 0.15


def test_int8_model_runs_through_the_plugin_core(int8_model, calibration):
    model = CloudModel(int8_model["path"])
    refl = np.concatenate([calibration[0], calibration[1]], axis=2)[:, :, :300]
    prob, mask, stats = inference.classify_array(
        model.predict, refl, 224, model.info.recommended_overlap, model.info.threshold
    )
    assert prob.shape == mask.shape == (224, 300) and set(np.unique(mask)) <= {0, 1, 255}
    assert 0.0 <= float(prob[mask != 255].min()) and float(prob.max()) <= 1.0


def test_choice_is_the_fastest_of_the_most_faithful():
    comparison = {
        "agreement": {
            "conv/minmax": {"mask_disagreement_percent": 0.50},
            "all/minmax": {"mask_disagreement_percent": 0.55},
            "all/entropy": {"mask_disagreement_percent": 3.0},
        },
        "speed": {
            "conv/minmax": {"mp_per_s": 1.0},
            "all/minmax": {"mp_per_s": 1.5},
            "all/entropy": {"mp_per_s": 2.0},
        },
    }
    assert quantize.choose(comparison, slack=0.1) == "all/minmax"
    assert quantize.choose(comparison, slack=0.01) == "conv/minmax"


def test_report_section_goes_between_its_markers_and_keeps_the_page(tmp_path):
    page = tmp_path / "speed.md"
    page.write_text("# Speed on one machine\n\n## Bench\n\nhand-written\n")
    quantize.write_section(page, "first tables\n")
    text = page.read_text()
    assert text.startswith("# Speed on one machine\n\n## Bench\n\nhand-written\n")
    assert f"{quantize.BEGIN}\nfirst tables\n{quantize.END}" in text
    page.write_text(text + "\n## Later section\n\nmore text\n")
    quantize.write_section(page, "second tables")
    text = page.read_text()
    assert "first tables" not in text and text.count(quantize.BEGIN) == 1
    assert "hand-written" in text and text.endswith("## Later section\n\nmore text\n")


def test_report_creates_the_page_with_its_title(tmp_path):
    page = tmp_path / "docs" / "speed.md"
    quantize.write_section(page, "tables")
    assert (
        page.read_text() == f"# Speed on one machine\n\n{quantize.BEGIN}\ntables\n{quantize.END}\n"
    )


def test_run_writes_the_chosen_model_the_report_and_the_page(
    float_model, tiny_cfg, data_root, tmp_path
):
    out = tmp_path / "quantize" / "cloudmask-int8.onnx"
    report = quantize.run(
        tiny_cfg,
        data_root,
        float_model,
        out,
        n_tiles=4,
        methods=["minmax"],
        rounds=1,
        seconds=0.01,
        log=lambda text: None,
    )
    assert set(report["candidates"]) == {"conv/minmax", "all/minmax"}
    assert report["chosen"] in report["candidates"] and out.is_file()
    assert set(report["calibration"]["scenes"]) <= split_names(tiny_cfg, "train")
    assert set(report["validation"]["scenes"]) <= split_names(tiny_cfg, "val")
    assert set(report["scores"]) == {"float32", "int8"}
    assert set(report["scores"]["int8"]["pooled"]) >= {"all"}
    saved = json.loads((out.parent / "report.json").read_text())
    assert saved["chosen"] == report["chosen"]
    page = tmp_path / "speed.md"
    text = quantize.main(["report", "--out", str(out), "--page", str(page)])
    assert "| **int8** |" in text and "| float32 |" in text and "pays off" in text
    assert quantize.BEGIN in page.read_text()
