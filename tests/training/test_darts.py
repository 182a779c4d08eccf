"""DARTS: the search step (weights on training data, alphas on validation data only), the
derivation, the derived network rebuilt from its genotype, and the tiny experiment end to end
on generated data (search, resume, retrain both models, ONNX export through the contract check,
report)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from qgis_cloudmask.core.model import CloudModel
from training import config, darts, datasets, train
from training.losses import make_loss

pytestmark = pytest.mark.training

CONFIG = config.REPO_ROOT / "training/configs/darts.yaml"
TINY = config.REPO_ROOT / "training/configs/darts_tiny.yaml"
SHIPPED = config.REPO_ROOT / "training/configs/default.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    """Steps of a tiny network: a second intra-op thread only waits on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(data_root, tmp, **extra):
    return darts.load(
        TINY,
        {
            "data.teacher_dir": str(data_root / "teacher"),
            "data.split_dir": str(tmp / "splits"),
            "train.runs_dir": str(tmp / "runs"),
            "darts.doc": str(tmp / "docs" / "neural-arch-search.md"),
            "darts.figures_dir": str(tmp / "docs" / "figures"),
            # exercise the reference row with a model the report exports itself
            "darts.reference_model": str(tmp / "runs" / "baseline" / "baseline.onnx"),
            **extra,
        },
    )


@pytest.fixture(scope="module")
def tiny(data_root, tmp_path_factory):
    return _tiny(data_root, tmp_path_factory.mktemp("darts"))


def _batch(seed: int, n: int = 2, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 4, size, size, generator=g) * 0.6, torch.rand(n, size, size, generator=g)


def _optimizers(model, s):
    w = torch.optim.AdamW(model.net.weight_parameters(), lr=s.lr)
    a = torch.optim.Adam([model.net.alphas], lr=s.arch_lr, betas=tuple(s.arch_betas))
    return w, a


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.net.weight_parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


# -- configs ----------------------------------------------------------------------------------


def test_configs_share_the_training_schema_and_the_baseline_is_the_default_recipe():
    exp = darts.load(CONFIG)
    tiny = darts.load(TINY)
    shipped = config.load(SHIPPED)
    for cfg in (exp.search, exp.derived, exp.baseline, tiny.derived):
        assert cfg.to_dict().keys() == shipped.to_dict().keys()
    assert [c.run_dir.name for c in (exp.search, exp.derived, exp.baseline)] == [
        "search",
        "derived",
        "baseline",
    ]
    # equal budget: the two retrainings differ only in the network's name (and the build hook)
    d, b = exp.derived.to_dict(), exp.baseline.to_dict()
    assert d["train"] | {"run_name": ""} == b["train"] | {"run_name": ""}
    assert d["data"] == b["data"] and d["loss"] == b["loss"]
    assert b["model"] == shipped.to_dict()["model"]
    for key in ("batch_size", "steps_per_epoch", "epochs", "lr", "seed"):
        assert getattr(exp.baseline.train, key) == getattr(shipped.train, key)
    assert exp.baseline.train.select_on == "val"
    with pytest.raises(ValueError, match="unknown darts"):
        darts.load(TINY, {"darts.epochz": 3})
    with pytest.raises(ValueError, match="primitives"):
        darts.load(TINY, {"darts.primitives": ["none", "conv_7x7"]})


# -- the search step --------------------------------------------------------------------------


def test_a_search_step_moves_both_the_weights_and_the_alphas(tiny):
    torch.manual_seed(0)
    model = darts.build_supernet(tiny.search, tiny.settings)
    w0, a0 = _weights(model), model.net.alphas.detach().clone()
    w_opt, a_opt = _optimizers(model, tiny.settings)
    loss_fn = make_loss(tiny.search.loss)
    loss, arch_loss = darts.search_step(model, w_opt, a_opt, loss_fn, _batch(1), _batch(2))
    assert np.isfinite(loss) and np.isfinite(arch_loss)
    assert not torch.equal(model.net.alphas, a0)
    assert not _same(_weights(model), w0)


def test_the_alpha_step_uses_the_validation_batch_only_and_the_weight_step_the_training_batch(
    tiny,
):
    torch.manual_seed(0)
    base = darts.build_supernet(tiny.search, tiny.settings)
    loss_fn = make_loss(tiny.search.loss)
    train_a, train_b, val_a, val_b = _batch(1), _batch(2), _batch(3), _batch(4)

    def step(train, val):
        model = copy.deepcopy(base)
        darts.search_step(model, *_optimizers(model, tiny.settings), loss_fn, train, val)
        return model

    m1, m2, m3 = step(train_a, val_a), step(train_b, val_a), step(train_a, val_b)
    # another training batch: the very same alphas; another validation batch: other alphas
    assert torch.equal(m1.net.alphas, m2.net.alphas)
    assert not torch.equal(m1.net.alphas, m3.net.alphas)
    # the weight step is a plain step on the training batch at the updated alphas: no gradient
    # of the validation batch reaches the weights
    plain = copy.deepcopy(base)
    with torch.no_grad():
        plain.net.alphas.copy_(m1.net.alphas)
    w_opt, _ = _optimizers(plain, tiny.settings)
    plain.train()
    w_opt.zero_grad()
    loss_fn(plain(train_a[0]), train_a[1]).backward()
    w_opt.step()
    assert _same(_weights(plain), _weights(m1))


def test_the_warm_up_step_leaves_the_alphas_alone(tiny):
    model = darts.build_supernet(tiny.search, tiny.settings)
    a0 = model.net.alphas.detach().clone()
    w_opt, _ = _optimizers(model, tiny.settings)
    _, arch_loss = darts.search_step(
        model, w_opt, None, make_loss(tiny.search.loss), _batch(1), _batch(2)
    )
    assert arch_loss is None and torch.equal(model.net.alphas, a0)


def test_the_search_loop_feeds_the_alpha_steps_from_the_validation_scenes_only(
    data_root, tmp_path, monkeypatch
):
    """Crops of validation scenes are tagged 1, of training scenes 0: every alpha step sees
    only 1s, every weight step only 0s."""
    exp = _tiny(data_root, tmp_path, **{"darts.epochs": 1, "darts.steps_per_epoch": 3})
    train_scenes, val_scenes = train.scene_split(exp.search, data_root)
    val_names = {s.name for s in val_scenes}
    assert val_names and not val_names & {s.name for s in train_scenes}
    streams = []

    class Tagged(datasets.CropStream):
        def __iter__(self):
            names = {s.name for s in self.sampler.scenes}
            streams.append(names)
            tag = 1.0 if names <= val_names else 0.0
            for refl, target in super().__iter__():
                yield torch.full_like(refl, tag), target

    seen = []
    real_step = darts.search_step

    def spy(model, w_opt, a_opt, loss_fn, train_batch, val_batch):
        seen.append((set(train_batch[0].unique().tolist()), set(val_batch[0].unique().tolist())))
        return real_step(model, w_opt, a_opt, loss_fn, train_batch, val_batch)

    monkeypatch.setattr(datasets, "CropStream", Tagged)
    monkeypatch.setattr(darts, "search_step", spy)
    darts.search(exp, data_root, progress=False)
    assert seen == [({0.0}, {1.0})] * 3
    assert val_names in streams and {s.name for s in train_scenes} in streams


# -- derivation and the derived network -------------------------------------------------------


def test_derivation_takes_the_largest_alpha_per_edge_but_never_the_zero_op():
    primitives = darts.PRIMITIVES  # none, skip_connect, sep_conv_3x3, sep_conv_5x5, dil_conv_3x3
    alphas = torch.tensor(
        [
            [[5.0, 0.1, 0.2, 0.3, 0.0], [0.0, 2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]],
            [[0.0, 0.0, 0.0, 3.0, 0.0], [9.0, 0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.7, 0.0, 0.0]],
        ]
    )
    assert darts.derive(alphas, primitives) == [
        ["sep_conv_5x5", "skip_connect", "dil_conv_3x3"],
        ["sep_conv_5x5", "dil_conv_3x3", "sep_conv_3x3"],
    ]


def test_the_genotype_records_ops_weights_and_the_softmax_of_every_edge(tiny):
    model = darts.build_supernet(tiny.search, tiny.settings)
    with torch.no_grad():
        model.net.alphas.zero_()
        model.net.alphas[1, 2, darts.PRIMITIVES.index("dil_conv_3x3")] = 2.0
        model.net.alphas[0, 0, darts.PRIMITIVES.index(darts.ZERO)] = 4.0
    g = darts.genotype_of(model, tiny.settings)
    assert g["edges"] == ["0->1", "0->2", "1->2"] and len(g["cells"]) == tiny.search.model.depth
    assert g["cells"][1][2] == "dil_conv_3x3"
    assert darts.ZERO not in {op for cell in g["cells"] for op in cell}
    e = np.exp(2.0)
    assert g["weights"][1][2] == pytest.approx(e / (e + 4), abs=1e-4)
    assert np.allclose(np.sum(g["softmax"], axis=-1), 1.0, atol=1e-4)


def test_the_derived_network_is_rebuilt_from_its_genotype_json(tiny):
    model = darts.build_supernet(tiny.search, tiny.settings)
    genotype = json.loads(json.dumps(darts.genotype_of(model, tiny.settings)))
    genotype["cells"][0] = ["sep_conv_3x3", "skip_connect", "dil_conv_3x3"]
    derived = darts.build_derived(tiny.derived, genotype)
    assert derived.net.alphas is None
    assert not any(isinstance(m, darts.MixedOp) for m in derived.modules())
    cell = derived.net.cells[0]
    assert isinstance(cell.edges[0], darts.SepConv)
    assert isinstance(cell.edges[1], torch.nn.Identity)
    assert isinstance(cell.edges[2], darts.DilConv) and cell.edges[2][1].dilation == (2, 2)
    x = torch.rand(3, 4, 64, 64)
    assert derived.eval()(x).shape == (3, 1, 64, 64)
    assert darts.build_supernet(tiny.search, tiny.settings).eval()(x).shape == (3, 1, 64, 64)
    # rebuilt twice from the same JSON: the same state-dict layout (checkpoints load)
    again = darts.build_derived(tiny.derived, genotype)
    again.load_state_dict(derived.state_dict())


# -- the tiny experiment end to end ------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tiny, data_root):
    return darts.search(tiny, data_root, progress=False)


@pytest.fixture(scope="module")
def retrained(tiny, data_root, searched):
    return darts.retrain(tiny, data_root, progress=False)


def test_search_logs_the_alphas_per_epoch_and_writes_the_genotype(searched, tiny):
    history = json.loads((searched / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1, 2]
    shape = (tiny.search.model.depth, 3, len(tiny.settings.primitives))
    assert all(np.array(r["alphas"]).shape == shape for r in history)
    assert not np.allclose(history[0]["alphas"], history[-1]["alphas"])
    assert {"train_loss", "arch_loss", "val_loss", "val_iou", "derived"} <= set(history[-1])
    genotype = json.loads((searched / darts.GENOTYPE_FILE).read_text())
    assert genotype["cells"] == history[-1]["derived"]
    assert (searched / "last.pt").is_file() and (searched / "DONE").is_file()
    assert (searched / "metrics.csv").read_text().startswith("epoch,")


def test_search_resumes_from_its_last_checkpoint(searched, tiny, data_root, capsys):
    longer = copy.deepcopy(tiny)
    longer.settings.epochs = 3
    darts.search(longer, data_root, progress=False)
    assert "resumed" in capsys.readouterr().out
    history = json.loads((searched / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]


def test_retrain_trains_the_derived_network_and_the_baseline_at_equal_budget(retrained, tiny):
    derived, baseline = retrained
    assert (
        json.loads((derived / darts.GENOTYPE_FILE).read_text())["cells"]
        == (darts.searched_genotype(tiny)["cells"])
    )
    for run in (derived, baseline):
        rows = json.loads((run / "metrics.json").read_text())
        assert len(rows) == tiny.baseline.train.epochs and (run / "best.pt").is_file()
    model, ckpt = darts.load_derived(derived / "best.pt")
    assert model.net.alphas is None and ckpt["config"]["model"]["name"].endswith("-darts")


def test_the_derived_model_exports_through_the_contract_check(retrained, tiny, data_root):
    summary = darts.export_run(darts.DERIVED, tiny.derived, data_root)
    assert summary["parity_max_abs"] < 1e-4 and summary["size_mb"] < 250
    info = CloudModel(summary["path"]).info  # the plugin's own contract validation
    assert info.name.endswith("-darts") and info.reference is not None
    import onnx

    meta = {p.key: json.loads(p.value) for p in onnx.load(summary["path"]).metadata_props}
    assert (
        meta["training"]["architecture"]["genotype"]["cells"]
        == (darts.searched_genotype(tiny)["cells"])
    )


def test_report_writes_the_table_the_genotype_and_the_figures(retrained, tiny, data_root):
    out = darts.write_report(tiny, data_root, progress=lambda _: None)
    page = config.resolve(tiny.settings.doc)
    text = page.read_text()
    for key in ("darts-search", "darts-results", "darts-figures"):
        assert f"BEGIN {key}" in text
    assert "| model | params (M) | size MB" in text and "DARTS-derived" in text
    figures = config.resolve(tiny.settings.figures_dir)
    for name in ("alphas", "search", "derived_loss", "derived_validation", "derived_pr"):
        assert (figures / f"darts_{name}.png").stat().st_size > 0
    assert (figures / "darts_baseline_pr.png").is_file()
    assert set(out["rows"]) == {darts.DERIVED, darts.BASELINE, darts.REFERENCE}
    assert out["rows"][darts.DERIVED]["params_m"] > 0
    reference = out["rows"][darts.REFERENCE]
    assert reference["name"] == "shipped (baseline.onnx, for reference)"
    assert reference["threshold"] == 0.5 and reference["core_mp_s"] > 0
    assert "Derived minus the reference (the reference at its own threshold 0.5" in text


def test_compare_scores_both_models_and_the_reference_at_one_threshold(retrained, tiny, data_root):
    out = darts.compare_at(tiny, data_root, threshold=0.3, progress=lambda _: None)
    rows = out["rows"]
    assert [r["name"] for r in rows] == [
        darts.LABELS[darts.DERIVED],
        darts.LABELS[darts.BASELINE],
        "shipped (baseline.onnx, for reference)",
    ]
    assert [r["threshold"] for r in rows] == [0.3, 0.3, 0.5]
    # the derived network went through its own loader: its genotype is in the metadata
    derived = CloudModel(tiny.derived.run_dir / "derived@0.3.onnx").info
    assert derived.threshold == 0.3 and derived.name.endswith("-darts")
    for r in rows:
        assert 0.0 <= r["s2_iou"] <= 1.0 and 0.0 <= r["s2_precision"] <= 1.0
    text = config.resolve(tiny.settings.doc).read_text()
    assert text.count(f"BEGIN {darts.COMMON_KEY}") == 1
    assert "`python -m training.darts compare`" in text
    assert "our two models exported again at threshold 0.3" in text
    saved = json.loads(
        (config.resolve(tiny.baseline.train.runs_dir) / "common_threshold.json").read_text()
    )
    assert saved["threshold"] == 0.3 and len(saved["rows"]) == 3
    # the default cut-off is the reference's own (0.5 here)
    assert darts.compare_at(tiny, data_root, progress=lambda _: None)["threshold"] == 0.5
