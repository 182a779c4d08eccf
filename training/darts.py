"""Differentiable architecture search (DARTS, first order) of the U-Net's decoder blocks.

    python -m training.darts search  --data-root ../shared/data   (the supernet and its alphas)
    python -m training.darts retrain --data-root ../shared/data   (derived net and baseline)
    python -m training.darts report  --data-root ../shared/data   (export, evidence, the page)
    python -m training.darts compare --data-root ../shared/data   (all at one threshold)

(``--config`` defaults to ``training/configs/darts.yaml``; ``make darts`` runs all four.)

The search space (Liu, Simonyan and Yang, 2019, "DARTS"): the shipped network's encoder
(MobileNetV2 from segmentation-models-pytorch, random weights) and a decoder of *cells*, one per
decoder block. A cell takes the upsampled deeper features concatenated with the encoder's skip
features, reduces them to the block's width (ReLU, 1 x 1 conv, batch norm: state 0) and builds
``nodes`` intermediate states: node ``i`` is the sum over its edges ``j -> i`` (``j < i``) of an
operation applied to state ``j``; the cell's output is the concatenation of the nodes, reduced
again by a 1 x 1 conv. In the search every edge is a :class:`MixedOp`, the softmax(alpha)-weighted
sum of all candidate operations (:data:`PRIMITIVES`: zero, identity, separable 3 x 3 and 5 x 5,
dilated 3 x 3 with dilation 2); each cell has its own alphas (the blocks work at different scales).

First-order bilevel optimisation, :func:`search_step`: an architecture step (Adam on the alphas
only, gradient of the loss on a batch of the *validation split's* scenes), then a weight step
(AdamW on the network weights only, gradient of the loss on a training batch). Derivation,
:func:`derive`: per edge the op of largest alpha *other than zero*. Retraining: the derived
network from scratch with :func:`training.train.run` (``build`` hook) and the baseline (the
default U-Net recipe), at the same budget, seed, crop and data stream; selection on the
validation split (``train.select_on: val``).

Everything lives under ``<train.runs_dir>`` (``runs/darts``): ``search/`` (``last.pt`` resume
point, ``metrics.json`` with the alphas of every epoch, ``genotype.json``), ``derived/`` (a
training run, plus ``genotype.json``, the side file from which :func:`load_derived` rebuilds the
network) and ``baseline/``. Every command resumes; finished parts are skipped.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tnf
from torch import nn

from training import config as config_mod
from training.config import Config
from training.model import Normalised

#: Candidate operations of every edge (the zero op lets DARTS weigh an edge down; it is never
#: chosen by :func:`derive`).
ZERO = "none"
PRIMITIVES = ("none", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3")
SEARCH, DERIVED, BASELINE = "search", "derived", "baseline"
LABELS = {DERIVED: "DARTS-derived decoder", BASELINE: "baseline (default U-Net recipe)"}
REFERENCE = "shipped"
GENOTYPE_FILE = "genotype.json"
#: the section of ``compare`` (both models and the reference at one threshold)
COMMON_KEY = "darts-common"


@dataclass
class DartsSettings:
    """The ``darts`` section of the config (the search; the retraining uses ``train``)."""

    primitives: list[str] = field(default_factory=lambda: list(PRIMITIVES))
    nodes: int = 2  # intermediate nodes per cell: nodes * (nodes + 1) / 2 edges
    #: kernel of the conv that reduces a block's input to its width (state 0): 3 = the
    #: baseline block's first conv, so only what follows it (a cell instead of a second
    #: 3 x 3 conv) differs from the baseline; 1 = DARTS's preprocessing
    pre_kernel: int = 3
    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 8
    lr: float = 0.002  # weights: AdamW (train.weight_decay), cosine to 0 over the search
    arch_lr: float = 3e-4  # alphas: Adam as in DARTS (and NNI's DARTS strategy)
    arch_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    arch_weight_decay: float = 1e-3
    #: epochs of weight steps only before the alphas start to move (0 = DARTS as published)
    warmup_epochs: int = 0
    init_scale: float = 1e-3  # alphas start at init_scale * N(0, 1): nearly uniform
    doc: str = "docs/neural-arch-search.md"
    figures_dir: str = "docs/figures"
    figure_prefix: str = "darts"
    #: a model measured beside the two (core MP/s, final check at its own threshold, and the
    #: cut-off of ``compare``); null = none
    reference_model: str | None = "models/cloudmask.onnx"


@dataclass
class Experiment:
    """The resolved training configs of the three runs and the search settings."""

    search: Config
    derived: Config
    baseline: Config
    settings: DartsSettings


# -- the search space -------------------------------------------------------------------------


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, affine: bool) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise ``kernel`` conv with ``dilation``, pointwise conv, batch norm."""

    def __init__(self, c: int, kernel: int, dilation: int, affine: bool) -> None:
        pad = dilation * (kernel - 1) // 2
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c, c, kernel, padding=pad, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two depthwise-separable ``kernel`` convs (DARTS's ``sep_conv``)."""

    def __init__(self, c: int, kernel: int, affine: bool) -> None:
        super().__init__(DilConv(c, kernel, 1, affine), DilConv(c, kernel, 1, affine))


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(name: str, channels: int, affine: bool) -> nn.Module:
    """One candidate operation (keeps channels and spatial size)."""
    ops = {
        "none": lambda: Zero(),
        "skip_connect": lambda: nn.Identity(),
        "sep_conv_3x3": lambda: SepConv(channels, 3, affine),
        "sep_conv_5x5": lambda: SepConv(channels, 5, affine),
        "dil_conv_3x3": lambda: DilConv(channels, 3, 2, affine),
    }
    if name not in ops:
        raise ValueError(f"unknown operation {name!r}; known: {sorted(ops)}")
    return ops[name]()


class MixedOp(nn.Module):
    """An edge of the supernet: ``sum_k weights[k] * op_k(x)`` (the zero op adds nothing)."""

    def __init__(self, channels: int, primitives: Sequence[str], affine: bool) -> None:
        super().__init__()
        self.names = list(primitives)
        self.ops = nn.ModuleList(make_op(n, channels, affine) for n in self.names)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = 0.0
        for name, w, op in zip(self.names, weights, self.ops):
            if name != ZERO:
                out = out + w * op(x)
        return out


def edges(nodes: int) -> list[tuple[int, int]]:
    """The cell's edges ``(from state, to node)`` in the order of the alphas."""
    return [(j, i) for i in range(1, nodes + 1) for j in range(i)]


class Cell(nn.Module):
    """One decoder block: ``c_in`` -> ``channels`` at the same size; ``ops`` (one per edge)
    makes a derived cell, ``ops=None`` a searchable one of :class:`MixedOp` edges."""

    def __init__(
        self,
        c_in: int,
        channels: int,
        nodes: int,
        primitives: Sequence[str],
        ops: Sequence[str] | None = None,
        pre_kernel: int = 3,
    ) -> None:
        super().__init__()
        affine = ops is not None  # as in DARTS: no affine batch norm inside the supernet
        self.nodes = nodes
        self.pre = ReLUConvBN(c_in, channels, pre_kernel, affine)
        n_edges = len(edges(nodes))
        if ops is None:
            self.edges = nn.ModuleList(
                MixedOp(channels, primitives, affine) for _ in range(n_edges)
            )
        else:
            if len(ops) != n_edges:
                raise ValueError(f"a cell of {nodes} nodes has {n_edges} edges, got {len(ops)}")
            self.edges = nn.ModuleList(make_op(op, channels, affine) for op in ops)
        self.post = ReLUConvBN(nodes * channels, channels, 1, affine)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        states = [self.pre(x)]
        k = 0
        for i in range(1, self.nodes + 1):
            node = 0.0
            for j in range(i):
                edge = self.edges[k]
                node = node + (edge(states[j]) if weights is None else edge(states[j], weights[k]))
                k += 1
            states.append(node)
        return self.post(torch.cat(states[1:], dim=1))


class DartsUnet(nn.Module):
    """U-Net: an smp encoder (random weights) and a decoder of :class:`Cell` blocks; logits
    ``N x 1 x H x W`` for normalised input. ``genotype=None``: the supernet, with its alphas
    (``cells x edges x primitives``); else the derived network of that genotype."""

    def __init__(
        self,
        encoder: str,
        depth: int,
        decoder_channels: Sequence[int],
        nodes: int,
        primitives: Sequence[str],
        genotype: dict | None = None,
        in_channels: int = 4,
        init_scale: float = 1e-3,
        pre_kernel: int = 3,
    ) -> None:
        from training._torchvision_compat import smp

        super().__init__()
        if len(decoder_channels) != depth:
            raise ValueError(f"depth {depth} needs {depth} decoder channels: {decoder_channels}")
        self.encoder = smp.encoders.get_encoder(
            encoder, in_channels=in_channels, depth=depth, weights=None
        )
        enc = list(self.encoder.out_channels)[1:][::-1]  # deepest first, input level dropped
        c_ins = [enc[0]] + list(decoder_channels[:-1])
        skips = enc[1:] + [0]  # the last block, at the input's size, has no skip
        cells = genotype["cells"] if genotype is not None else [None] * depth
        if len(cells) != depth:
            raise ValueError(f"genotype has {len(cells)} cells, the decoder {depth} blocks")
        self.cells = nn.ModuleList(
            Cell(c + s, ch, nodes, primitives, ops, pre_kernel)
            for c, s, ch, ops in zip(c_ins, skips, decoder_channels, cells)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(decoder_channels[-1], 1, 3, padding=1))
        alphas = None
        if genotype is None:
            shape = (depth, len(edges(nodes)), len(primitives))
            alphas = nn.Parameter(init_scale * torch.randn(shape))
        self.register_parameter("alphas", alphas)

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "alphas"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        sizes = [f.shape[2:] for f in features][::-1]
        features = features[1:][::-1]
        h, skips = features[0], features[1:]
        weights = None if self.alphas is None else torch.softmax(self.alphas, dim=-1)
        for i, cell in enumerate(self.cells):
            h = tnf.interpolate(h, size=sizes[i + 1], mode="nearest")
            if i < len(skips):
                h = torch.cat([h, skips[i]], dim=1)
            h = cell(h, None if weights is None else weights[i])
        return self.head(h)


def _net(cfg: Config, s: DartsSettings, genotype: dict | None) -> Normalised:
    m = cfg.model
    net = DartsUnet(
        m.encoder,
        m.depth,
        m.decoder_channels,
        s.nodes,
        s.primitives,
        genotype,
        init_scale=s.init_scale,
        pre_kernel=s.pre_kernel,
    )
    return Normalised(net, m.mean, m.std, m.downsample)


def build_supernet(cfg: Config, s: DartsSettings) -> Normalised:
    """The searchable network inside the export path's normalisation wrapper."""
    return _net(cfg, s, None)


def build_derived(cfg: Config, genotype: dict) -> Normalised:
    """The discrete network of a genotype (as written by :func:`genotype_of`), same wrapper."""
    s = DartsSettings(
        primitives=list(genotype["primitives"]),
        nodes=int(genotype["nodes"]),
        pre_kernel=int(genotype["pre_kernel"]),
    )
    return _net(cfg, s, genotype)


# -- derivation -------------------------------------------------------------------------------


def derive(alphas: torch.Tensor | np.ndarray, primitives: Sequence[str]) -> list[list[str]]:
    """Per cell and edge the operation of largest alpha, the zero op excluded."""
    a = np.asarray(torch.as_tensor(alphas).detach().cpu(), dtype=np.float64).copy()
    if ZERO in primitives:
        a[..., list(primitives).index(ZERO)] = -np.inf
    return [[primitives[k] for k in cell.argmax(-1)] for cell in a]


def softmax(alphas: torch.Tensor) -> list:
    """The alphas' softmax per edge as nested lists (cells x edges x primitives)."""
    return torch.softmax(alphas.detach().float(), dim=-1).cpu().numpy().round(5).tolist()


def genotype_of(model: Normalised, s: DartsSettings) -> dict:
    """The derived architecture of a supernet, JSON-ready: ops per cell and edge, their weights."""
    alphas = model.net.alphas
    weights = softmax(alphas)
    cells = derive(alphas, s.primitives)
    return {
        "primitives": list(s.primitives),
        "nodes": s.nodes,
        "pre_kernel": s.pre_kernel,
        "edges": [f"{j}->{i}" for j, i in edges(s.nodes)],
        "cells": cells,
        "weights": [
            [w[s.primitives.index(op)] for op, w in zip(ops, cell_w)]
            for ops, cell_w in zip(cells, weights)
        ],
        "softmax": weights,
    }


def load_derived(checkpoint: Path, genotype: dict | None = None) -> tuple[Normalised, dict]:
    """Model (eval mode) and checkpoint dict of a derived run's ``best.pt``/``last.pt``; the
    architecture from ``genotype`` or the run's side file ``genotype.json``."""
    checkpoint = Path(checkpoint)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if genotype is None:
        genotype = json.loads((checkpoint.parent / GENOTYPE_FILE).read_text())
    model = build_derived(config_mod.from_dict(ckpt["config"]), genotype)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


# -- config -----------------------------------------------------------------------------------


def _settings(values: dict | None) -> DartsSettings:
    values = dict(values or {})
    unknown = set(values) - {f.name for f in dataclasses.fields(DartsSettings)}
    if unknown:
        raise ValueError(f"unknown darts key(s): {sorted(unknown)}")
    s = DartsSettings(**values)
    bad = set(s.primitives) - set(PRIMITIVES)
    if bad or len(set(s.primitives) - {ZERO}) < 1:
        raise ValueError(f"darts.primitives must be non-zero ops of {PRIMITIVES}: {s.primitives}")
    return s


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """The experiment of a YAML config: the training schema (shared by the three runs) plus a
    ``darts`` section. ``overrides`` map dotted keys to values (``darts.epochs``)."""
    d = config_mod.read(path, overrides)
    settings = _settings(d.pop("darts", None))
    runs_dir = d["train"]["runs_dir"]
    configs = {}
    for name in (SEARCH, DERIVED, BASELINE):
        run = copy.deepcopy(d)
        run["train"]["run_name"] = name
        run.setdefault("export", {})["out"] = f"{runs_dir}/{name}/{name}.onnx"
        if name == DERIVED:
            run["model"]["name"] = f"{d['model']['name']}-darts"
        configs[name] = config_mod.from_dict(run)
    return Experiment(configs[SEARCH], configs[DERIVED], configs[BASELINE], settings)


# -- the search -------------------------------------------------------------------------------


def search_step(
    model: Normalised,
    weight_opt: torch.optim.Optimizer,
    arch_opt: torch.optim.Optimizer | None,
    loss_fn,
    train_batch: tuple[torch.Tensor, torch.Tensor],
    val_batch: tuple[torch.Tensor, torch.Tensor],
) -> tuple[float, float | None]:
    """One first-order DARTS step: alphas on the validation batch, then weights on the
    training batch (``arch_opt=None``: weights only, the warm-up). Returns both losses."""
    model.train()
    alphas = model.net.alphas
    weights = model.net.weight_parameters()
    arch_loss = None
    if arch_opt is not None:
        arch_opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(val_batch[0]), val_batch[1])
        loss.backward(inputs=[alphas])  # no weight gradient from the validation data
        arch_opt.step()
        arch_loss = loss.item()
    weight_opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(train_batch[0]), train_batch[1])
    loss.backward(inputs=weights)  # no alpha gradient from the training data
    weight_opt.step()
    return loss.item(), arch_loss


def _batches(scenes: list, cfg: Config, batch_size: int, seed: int, epoch: int):
    """Endless batches of random crops of ``scenes`` (seeded by seed and epoch)."""
    from torch.utils.data import DataLoader

    from training import datasets

    stream = datasets.CropStream(scenes, cfg.data, seed, epoch)
    loader = DataLoader(stream, batch_size=batch_size, num_workers=cfg.data.num_workers)
    return iter(loader)


def _write_search_log(run_dir: Path, history: list[dict]) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(history, indent=1))
    scalars = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in history]
    fields = list(dict.fromkeys(k for r in scalars for k in r))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(scalars)


def search(exp: Experiment, data_root: Path, fresh: bool = False, progress: bool = True) -> Path:
    """Run (or resume) the search; writes ``genotype.json`` into the search folder."""
    from tqdm import tqdm

    from training import datasets, train
    from training.losses import make_loss

    cfg, s = exp.search, exp.settings
    torch.set_num_threads(cfg.train.threads)
    train._seed_everything(cfg.train.seed)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    data_root = Path(data_root)
    config_mod.save(
        cfg,
        run_dir / "config.yaml",
        darts=dataclasses.asdict(s),
        seed=cfg.train.seed,
        git_sha=config_mod.git_sha(),
        data_root=str(data_root.resolve()),
        torch=str(torch.__version__),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    train_scenes, val_scenes = train.scene_split(cfg, data_root)
    datasets.write_json(
        run_dir / "data.json",
        {
            "train": datasets.scene_summary(train_scenes),
            "val": datasets.scene_summary(val_scenes),
            "dev": [],  # the dev chips are not looked at during the search
        },
    )
    val_crops = datasets.fixed_crops(val_scenes, cfg.data, cfg.train.seed)
    model = build_supernet(cfg, s)
    weight_opt = torch.optim.AdamW(
        model.net.weight_parameters(), lr=s.lr, weight_decay=cfg.train.weight_decay
    )
    arch_opt = torch.optim.Adam(
        [model.net.alphas],
        lr=s.arch_lr,
        betas=tuple(s.arch_betas),
        weight_decay=s.arch_weight_decay,
    )
    total = s.epochs * s.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(weight_opt, T_max=max(total, 1))
    loss_fn = make_loss(cfg.loss)
    state = {"epoch": 0, "history": []}
    last = run_dir / "last.pt"
    if last.is_file() and not fresh:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        weight_opt.load_state_dict(ckpt["weight_opt"])
        arch_opt.load_state_dict(ckpt["arch_opt"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scheduler.T_max = max(total, 1)  # the search may have been lengthened since
        state = ckpt["state"]
        print(f"resumed {run_dir} after epoch {state['epoch']}", flush=True)
    if state["epoch"] == 0:
        state["history"] = [{"epoch": 0, "alphas": softmax(model.net.alphas)}]

    tile, overlap = cfg.export.tile_size, cfg.export.recommended_overlap
    while state["epoch"] < s.epochs:
        epoch = state["epoch"]
        t0 = time.perf_counter()
        # weight steps: the training scenes; alpha steps: the validation scenes (another seed)
        train_batches = _batches(train_scenes, cfg, s.batch_size, cfg.train.seed, epoch)
        val_batches = _batches(val_scenes, cfg, s.batch_size, cfg.train.seed + 1, epoch)
        search_alphas = epoch >= s.warmup_epochs
        sums = {"train_loss": 0.0, "arch_loss": 0.0}
        bar = tqdm(
            total=s.steps_per_epoch,
            desc=f"search {epoch + 1}/{s.epochs}",
            disable=not progress,
            mininterval=5,
        )
        for _ in range(s.steps_per_epoch):
            loss, arch_loss = search_step(
                model,
                weight_opt,
                arch_opt if search_alphas else None,
                loss_fn,
                next(train_batches),
                next(val_batches),
            )
            scheduler.step()
            sums["train_loss"] += loss
            sums["arch_loss"] += arch_loss or 0.0
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
        bar.close()
        del train_batches, val_batches
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": scheduler.get_last_lr()[0],
            "train_loss": sums["train_loss"] / s.steps_per_epoch,
        }
        if search_alphas:
            row["arch_loss"] = sums["arch_loss"] / s.steps_per_epoch
        row.update(
            train.validate(model, val_crops, [], loss_fn, cfg.train.threshold, tile, overlap)
        )
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["alphas"] = softmax(model.net.alphas)
        row["derived"] = derive(model.net.alphas, s.primitives)
        state["history"].append(row)
        state["epoch"] = epoch + 1
        train._save_atomic(
            {
                "config": cfg.to_dict(),
                "darts": dataclasses.asdict(s),
                "model": model.state_dict(),
                "weight_opt": weight_opt.state_dict(),
                "arch_opt": arch_opt.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
            },
            last,
        )
        _write_search_log(run_dir, state["history"])
        shown = {k: round(v, 4) for k, v in row.items() if k.endswith(("loss", "iou"))}
        print(f"search epoch {epoch + 1}: {shown} ({row['seconds']} s)", flush=True)
        for c, ops in enumerate(row["derived"]):
            print(f"  cell {c}: {', '.join(ops)}", flush=True)
    genotype = genotype_of(model, s)
    (run_dir / GENOTYPE_FILE).write_text(json.dumps(genotype, indent=1))
    (run_dir / "DONE").write_text(json.dumps({"epochs": state["epoch"]}, indent=2))
    return run_dir


def searched_genotype(exp: Experiment) -> dict:
    path = exp.search.run_dir / GENOTYPE_FILE
    if not (exp.search.run_dir / "DONE").is_file() or not path.is_file():
        raise SystemExit(
            f"the search {exp.search.run_dir} is not finished: run "
            "`python -m training.darts search` first (it resumes where it stopped)"
        )
    return json.loads(path.read_text())


# -- the retraining ---------------------------------------------------------------------------


def retrain(exp: Experiment, data_root: Path, progress: bool = True) -> list[Path]:
    """The derived network from scratch, then the baseline; same budget, seed and data."""
    from training import train

    genotype = searched_genotype(exp)
    side = exp.derived.run_dir / GENOTYPE_FILE
    if side.is_file() and json.loads(side.read_text())["cells"] != genotype["cells"]:
        raise SystemExit(
            f"{side} holds another architecture than the search found; the derived run cannot "
            "resume: delete its folder (or use another train.runs_dir) and run again"
        )
    side.parent.mkdir(parents=True, exist_ok=True)
    side.write_text(json.dumps(genotype, indent=1))
    derived = train.run(
        exp.derived, data_root, progress=progress, build=lambda c: build_derived(c, genotype)
    )
    baseline = train.run(exp.baseline, data_root, progress=progress)
    return [derived, baseline]


# -- export -----------------------------------------------------------------------------------


def export_derived(cfg: Config, ckpt_path: Path, out: Path, data_root: Path | None = None) -> dict:
    """:func:`training.export.export` for the derived network, rebuilt from the run's
    ``genotype.json`` (written into the ``training`` metadata too): the same contract metadata,
    checks, reference quantiles and dev metrics as every exported model."""
    from training import export

    genotype = json.loads((Path(ckpt_path).parent / GENOTYPE_FILE).read_text())
    extra = {
        "architecture": {
            "search": "DARTS (first order) over the decoder blocks",
            "genotype": {
                k: genotype[k] for k in ("primitives", "nodes", "pre_kernel", "edges", "cells")
            },
        },
        "selection": f"validation split ({cfg.train.select_on})",
    }
    return export.export(
        cfg, Path(ckpt_path), Path(out), data_root, load=load_derived, training_extra=extra
    )


def export_run(
    name: str,
    cfg: Config,
    data_root: Path,
    threshold: float | None = None,
    out: Path | None = None,
) -> dict:
    """ONNX of a run's selected checkpoint (:func:`training.experiment.cached_export`: skipped
    when newer than the checkpoint; ``threshold`` and ``out`` replace the config's)."""
    from training import experiment, export

    def exporter(cfg: Config, ckpt: Path, out: Path) -> dict:
        if name == DERIVED:
            return export_derived(cfg, ckpt, out, data_root)
        return export.export(cfg, ckpt, out, data_root)

    return experiment.cached_export(cfg, exporter, threshold, out)


def _finished_runs(exp: Experiment) -> dict[str, Config]:
    """The two retrained runs; stops with what to run first when one is not finished."""
    from training import experiment

    runs = {DERIVED: exp.derived, BASELINE: exp.baseline}
    return experiment.finished_runs(runs, "python -m training.darts retrain")


def parameters(name: str, cfg: Config) -> int:
    from training.train import load_checkpoint

    model = load_derived(cfg.checkpoint)[0] if name == DERIVED else None
    if model is None:
        model = load_checkpoint(cfg.checkpoint)[0]
    return sum(p.numel() for p in model.parameters())


# -- the report -------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_alphas(history: list[dict], genotype: dict, path: Path) -> None:
    """softmax(alpha) of every edge (one panel per cell and edge) against the search epoch."""
    plt = _plt()
    rows = [r for r in history if "alphas" in r]
    epochs = [r["epoch"] for r in rows]
    a = np.array([r["alphas"] for r in rows])  # epochs x cells x edges x primitives
    n_cells, n_edges = a.shape[1], a.shape[2]
    fig, axes = plt.subplots(
        n_cells, n_edges, figsize=(3.2 * n_edges, 2.3 * n_cells), sharex=True, sharey=True
    )
    axes = np.array(axes).reshape(n_cells, n_edges)
    for c in range(n_cells):
        for e in range(n_edges):
            ax = axes[c, e]
            for k, name in enumerate(genotype["primitives"]):
                ax.plot(epochs, a[:, c, e, k], label=name, lw=1.5 if name != ZERO else 1.0)
            ax.set_title(
                f"cell {c}, edge {genotype['edges'][e]}: {genotype['cells'][c][e]}", fontsize=8
            )
            ax.grid(alpha=0.3)
            if e == 0:
                ax.set_ylabel("softmax(alpha)")
            if c == n_cells - 1:
                ax.set_xlabel("search epoch")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("DARTS: architecture weights per edge (cell 0 = deepest decoder block)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_search(history: list[dict], path: Path) -> None:
    """The supernet's losses (weights on training batches, alphas on validation batches, the
    fixed validation crops) and its validation IoU against the search epoch."""
    plt = _plt()
    rows = [r for r in history if r["epoch"] > 0]
    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (
        ("train_loss", "weight steps (training scenes)"),
        ("arch_loss", "alpha steps (validation scenes)"),
        ("val_loss", "fixed validation crops"),
    ):
        a.plot(epochs, [r.get(key, np.nan) for r in rows], label=label)
    a.set_xlabel("search epoch")
    a.set_ylabel("loss")
    a.legend()
    a.grid(alpha=0.3)
    b.plot(epochs, [r.get("val_iou", np.nan) for r in rows], label="supernet, validation crops")
    b.set_xlabel("search epoch")
    b.set_ylabel("cloud IoU at threshold 0.5")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def genotype_table(genotype: dict) -> str:
    lines = [
        "| cell (decoder block) | " + " | ".join(f"edge {e}" for e in genotype["edges"]) + " |",
        "|---|" + "---|" * len(genotype["edges"]),
    ]
    last = len(genotype["cells"]) - 1
    for c, (ops, weights) in enumerate(zip(genotype["cells"], genotype["weights"])):
        where = {0: " (deepest)", last: " (input resolution)"}.get(c, "")
        cells = [f"`{op}` ({w:.2f})" for op, w in zip(ops, weights)]
        lines.append(f"| {c}{where} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Columns of the results table (key -> header).
COLUMNS = {
    "name": "model",
    "params_m": "params (M)",
    "size_mb": "size MB",
    "mp_s": "end-to-end MP/s",
    "core_mp_s": "core MP/s",
    "threshold": "threshold",
    "val_iou": "val IoU (selection)",
    "s2_iou": "S2 dev IoU",
    "s2_f1": "S2 F1",
    "s2_precision": "S2 precision",
    "s2_recall": "S2 recall",
    "landsat_iou": "Landsat IoU",
    "clear_fp": "clear-scene FP %",
    "training_hours": "training h (median epoch x epochs)",
}


def _hours(run_dir: Path) -> float:
    from training import experiment

    history = json.loads((Path(run_dir) / "metrics.json").read_text())
    return experiment.training_seconds(history)[1] / 3600


def _reference_lines(rows: dict[str, dict]) -> list[str]:
    ref = rows.get(REFERENCE)
    if not ref:
        return []
    d = rows[DERIVED]

    def diff(key: str) -> str:
        x, y = d.get(key), ref.get(key)
        return "–" if x is None or y is None else f"{x - y:+.3f}"

    return [
        f"- Derived minus the reference (the reference at its own threshold {ref['threshold']}"
        f", so the cut-offs differ): S2 dev IoU {diff('s2_iou')}, Landsat IoU "
        f"{diff('landsat_iou')}, core speed {d['core_mp_s'] / ref['core_mp_s']:.2f}x."
    ]


def write_report(exp: Experiment, data_root: Path, progress=print) -> dict:
    """Export both models, measure them, write the generated sections of the page and
    ``<runs_dir>/report.json``."""
    from training import experiment
    from training.evaluate import machine

    data_root = Path(data_root)
    s = exp.settings
    genotype = searched_genotype(exp)
    runs = _finished_runs(exp)
    page = config_mod.resolve(s.doc)
    figures = config_mod.resolve(s.figures_dir)
    figures.mkdir(parents=True, exist_ok=True)
    history = json.loads((exp.search.run_dir / "metrics.json").read_text())
    alphas_png = figures / f"{s.figure_prefix}_alphas.png"
    search_png = figures / f"{s.figure_prefix}_search.png"
    plot_alphas(history, genotype, alphas_png)
    plot_search(history, search_png)
    exported = {}
    for name, cfg in runs.items():
        progress(f"export {name} -> {cfg.export.out}")
        exported[name] = export_run(name, cfg, data_root)
    onnx = {n: Path(e["path"]) for n, e in exported.items()}
    bench_models = dict(onnx)
    reference = experiment.reference_model(s.reference_model)
    if reference is not None:
        bench_models[REFERENCE] = reference
    progress("core throughput (CloudModel + classify_array, interleaved)")
    speed = experiment.core_throughput(
        bench_models, experiment.bench_inputs(exp.baseline, data_root), 3, None, progress
    )
    rows, evidence = {}, {}
    for name, cfg in runs.items():
        progress(f"evidence {name} (figures, dev chips, Landsat, clear scenes, end to end)")
        ev = experiment.evidence(
            cfg, cfg.run_dir, data_root, onnx[name], figures, f"{s.figure_prefix}_{name}"
        )
        evidence[name] = ev.to_dict()
        rows[name] = experiment.table_row(
            LABELS[name],
            ev,
            params_m=parameters(name, cfg) / 1e6,
            size_mb=onnx[name].stat().st_size / 1e6,
            core_mp_s=speed[name]["mp_per_s"],
            threshold=exported[name]["threshold"],
            training_hours=_hours(cfg.run_dir),
        )
    if reference is not None:
        progress(f"final check of the reference {reference}")
        split_dir = config_mod.resolve(exp.baseline.data.split_dir)
        label = experiment.reference_label(reference)
        rows[REFERENCE] = experiment.checked_row(label, reference, data_root, split_dir)
        rows[REFERENCE]["core_mp_s"] = speed[REFERENCE]["mp_per_s"]
    search_wall, search_typical = (s / 3600 for s in experiment.training_seconds(history))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    d, b = rows[DERIVED], rows[BASELINE]

    def diff(key: str, digits: int = 3) -> str:
        x, y = d.get(key), b.get(key)
        return "–" if x is None or y is None else f"{x - y:+.{digits}f}"

    results = "\n".join(
        [
            f"Generated by `python -m training.darts report` on {stamp}, {machine()}. Both "
            f"models: {exp.baseline.train.epochs} epochs x {exp.baseline.train.steps_per_epoch} "
            f"steps x {exp.baseline.train.batch_size} crops of {exp.baseline.data.crop} px, seed "
            f"{exp.baseline.train.seed}, checkpoint `{exp.baseline.export.checkpoint}` by "
            f"validation-split IoU, threshold {exported[BASELINE]['threshold']}. Search: "
            f"{len(history) - 1} epochs, {search_typical:.2f} h as median epoch x epochs "
            f"({search_wall:.2f} h wall: {experiment.WALL_CLOCK_NOTE}). Training h likewise. "
            "'core MP/s': tiled inference "
            "of the loaded model on the labelled chips in memory, the models interleaved; "
            "'end-to-end MP/s': `pipeline.run` with files (make evaluate's code path). Each "
            "model at its own threshold (the section below puts all at one).",
            "",
            experiment.results_table(
                [rows[n] for n in (DERIVED, BASELINE, REFERENCE) if n in rows], COLUMNS
            ),
            "",
            f"- Derived minus baseline: val IoU {diff('val_iou')}, S2 dev IoU {diff('s2_iou')}, "
            f"Landsat IoU {diff('landsat_iou')}, clear-scene FP {diff('clear_fp', 2)} "
            f"percentage points, parameters {d['params_m'] / b['params_m']:.2f}x, core speed "
            f"{d['core_mp_s'] / b['core_mp_s']:.2f}x.",
            *_reference_lines(rows),
        ]
    )
    search_text = "\n".join(
        [
            f"![architecture weights per edge]({experiment.relative(alphas_png, page)})",
            "",
            f"![search losses and validation IoU]({experiment.relative(search_png, page)})",
            "",
            "The derived genotype (per edge the op of largest softmax(alpha), zero excluded; "
            "in brackets its softmax weight at the end of the search; edge `j->i` feeds node "
            "`i` from state `j`, state 0 being the block's reduced input):",
            "",
            genotype_table(genotype),
        ]
    )
    figure_lines = []
    for name in runs:
        f = evidence[name]["figures"]
        figure_lines += experiment.figures_markdown(LABELS[name], f, page)
    experiment.write_section(page, "darts-search", search_text)
    experiment.write_section(page, "darts-results", results)
    experiment.write_section(page, "darts-figures", "\n".join(figure_lines))
    out = {
        "generated": stamp,
        "settings": dataclasses.asdict(s),
        "genotype": genotype,
        "search_hours": search_typical,
        "search_wall_hours": search_wall,
        "rows": rows,
        "core_throughput": speed,
        "exported": exported,
        "evidence": evidence,
    }
    report_json = config_mod.resolve(exp.baseline.train.runs_dir) / "report.json"
    report_json.write_text(json.dumps(out, indent=2, default=str))
    progress(f"wrote {page} and {report_json}")
    return out


def compare_at(
    exp: Experiment, data_root: Path, threshold: float | None = None, progress=print
) -> dict:
    """Both retrained models and the reference at one threshold (default: the reference's):
    :func:`training.experiment.compare_at`, written to the page's ``darts-common`` section and
    ``<runs_dir>/common_threshold.json``."""
    from training import experiment

    comparison = experiment.Comparison(
        runs={n: (LABELS[n], c) for n, c in _finished_runs(exp).items()},
        export=lambda name, cfg, threshold, out: export_run(name, cfg, data_root, threshold, out),
        base=exp.baseline,
        doc=exp.settings.doc,
        reference_model=exp.settings.reference_model,
        key=COMMON_KEY,
        command="python -m training.darts compare",
    )
    return experiment.compare_at(comparison, data_root, threshold, progress)


def main(argv: list[str] | None = None) -> None:
    from training import experiment
    from training.train import parse_overrides

    parser = argparse.ArgumentParser(description="DARTS over the U-Net decoder.")
    parser.add_argument("command", choices=("search", "retrain", "report", "compare"))
    parser.add_argument(
        "--config", type=Path, default=config_mod.REPO_ROOT / "training/configs/darts.yaml"
    )
    parser.add_argument("--data-root", type=Path, default=config_mod.REPO_ROOT / "../shared/data")
    parser.add_argument(
        "--set", nargs="*", default=[], help="overrides: a.b=value (e.g. darts.epochs=5)"
    )
    parser.add_argument("--fresh", action="store_true", help="search: ignore last.pt")
    experiment.add_threshold_argument(parser)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    exp = load(args.config, parse_overrides(args.set))
    progress = not args.no_progress
    if args.command == "search":
        print(f"search run: {search(exp, args.data_root, args.fresh, progress)}")
    elif args.command == "retrain":
        for run_dir in retrain(exp, args.data_root, progress):
            print(f"run: {run_dir}")
    elif args.command == "report":
        write_report(exp, args.data_root, lambda text: print(text, flush=True))
    else:
        compare_at(exp, args.data_root, args.threshold, lambda text: print(text, flush=True))


if __name__ == "__main__":
    main()
