"""Train the cloud U-Net (CPU), resumable, with early stopping on validation IoU.

    python -m training.train --config training/configs/default.yaml --data-root ../shared/data

Everything of a run lives in ``runs/<run_name>/``: ``config.yaml`` (resolved config, seed, git
sha), ``data.json`` (scenes and split), ``metrics.csv`` / ``metrics.json`` (one row per epoch),
``last.pt`` (resume point, written after every epoch) and ``best.pt`` (best validation IoU).
Running the same command again resumes from ``last.pt``; ``--fresh`` starts over. With the
``teacher`` source, scenes missing from the pseudo-label cache are labelled first
(:mod:`training.pseudolabel`; cached scenes are skipped).

Data-parallel on several processes (:mod:`training.distributed`; gloo on the CPU, NCCL with
``--device cuda``)::

    torchrun --standalone --nproc_per_node 2 -m training.train --config ...

Each rank draws its own crops and computes ``train.batch_size // world size`` of the global
batch; DDP averages the gradients, so one config optimises the same way (same global batch,
steps, learning-rate schedule) at any world size (BatchNorm statistics aside: each rank's are
over its own share). Rank 0 alone writes the run folder, prints and validates; the others wait.
Checkpoints hold the plain network's weights, so a run resumes at any world size.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from qgis_cloudmask.core import inference
from training import config as config_mod
from training import datasets, distributed, metrics, pseudolabel
from training.config import Config
from training.losses import make_loss
from training.model import Normalised, build_unet

#: ``seconds``: the epoch's training + validation; ``wall_seconds``: since the run started
#: (summed over resumed sessions, each counted from its own start), for time-to-solution.
LOG_FIELDS = ("epoch", "lr", "train_loss", "val_loss", "seconds", "wall_seconds")


def build_model(cfg: Config) -> Normalised:
    m = cfg.model
    net = build_unet(m.encoder, m.depth, m.decoder_channels)
    return Normalised(net, m.mean, m.std, m.downsample)


def load_checkpoint(path: Path) -> tuple[Normalised, dict]:
    """Model (eval mode) and the raw checkpoint dict of a ``best.pt``/``last.pt``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = config_mod.from_dict(ckpt["config"])
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def _device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def torch_predict(model: torch.nn.Module):
    """``N x 4 x T x T`` reflectance (numpy) -> ``N x T x T`` P(cloud), for the tiling core."""
    device = _device(model)

    def predict(tiles: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(tiles).to(device)
            return torch.sigmoid(model(x)[:, 0]).cpu().numpy()

    return predict


def validate(
    model: torch.nn.Module,
    val_crops: list,
    dev_scenes: list,
    loss_fn,
    threshold: float,
    tile: int,
    overlap: int,
) -> dict[str, float]:
    """Loss and metrics on held-out crops (teacher/synthetic labels) and on dev chips (human
    labels, run through the plugin's tiled inference core)."""
    model.eval()
    device = _device(model)
    out: dict[str, float] = {}
    counts = np.zeros(4, np.int64)
    losses = []
    with torch.no_grad():
        for b in range(0, len(val_crops), 8):
            batch = val_crops[b : b + 8]
            x = torch.from_numpy(np.stack([c[1] for c in batch])).to(device)
            y = torch.from_numpy(np.stack([c[2] for c in batch])).to(device)
            logits = model(x)
            losses.append(float(loss_fn(logits, y)) * len(batch))
            p = torch.sigmoid(logits[:, 0]).cpu().numpy()
            t = y.cpu().numpy()
            ok = np.isfinite(t)
            counts += metrics.confusion(p >= threshold, np.nan_to_num(t) >= 0.5, ok)
    if val_crops:
        out["val_loss"] = sum(losses) / len(val_crops)
        out.update({f"val_{k}": v for k, v in metrics.scores(*counts).items()})
    dev_counts = np.zeros(4, np.int64)
    for scene in dev_scenes:
        refl, target = scene.read(0, 0, scene.height, scene.width)
        _, mask, _ = inference.classify_array(
            torch_predict(model), refl, tile, overlap, threshold, batch_size=8
        )
        ok = (mask != 255) & np.isfinite(target)
        dev_counts += metrics.confusion(mask == 1, np.nan_to_num(target) == 1, ok)
    if dev_scenes:
        out.update({f"dev_{k}": v for k, v in metrics.scores(*dev_counts).items()})
    return out


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def scene_split(cfg: Config, data_root: Path) -> tuple[list, list]:
    """Train and validation scenes of the recorded split (with the ``teacher`` source, scenes
    missing from the pseudo-label cache are labelled first)."""
    teacher_dir = config_mod.resolve(cfg.data.teacher_dir)
    if "teacher" in cfg.data.sources and (Path(data_root) / "s2_unlabelled").is_dir():
        pseudolabel.label_all(Path(data_root), teacher_dir)  # only scenes not cached yet
    scenes = datasets.training_scenes(cfg.data, Path(data_root), teacher_dir)
    return datasets.load_or_make_split(
        scenes, config_mod.resolve(cfg.data.split_dir), cfg.data.val_fraction, cfg.train.seed
    )


@contextmanager
def _threads(n: int):
    """Run a block with ``n`` intra-op threads (untouched when already ``n``)."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_log(run_dir: Path, history: list[dict]) -> None:
    fields = list(LOG_FIELDS) + sorted({k for row in history for k in row} - set(LOG_FIELDS))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    (run_dir / "metrics.json").write_text(json.dumps(history, indent=2))


def selection_key(row: dict, select_on: str = "dev") -> str:
    """Model selection metric: with ``select_on="dev"`` the human-labelled dev IoU when
    available, else the held-out validation IoU; with ``"val"`` always the validation IoU."""
    if select_on not in ("dev", "val"):
        raise ValueError(f"train.select_on must be 'dev' or 'val', not {select_on!r}")
    return "dev_iou" if select_on == "dev" and "dev_iou" in row else "val_iou"


#: ``objective(model, x, y) -> loss``: one training step's loss (default: the config's loss
#: of ``model(x)`` against ``y``). Experiments swap it (distillation, point labels).
Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def rank_batch_size(batch_size: int, world: distributed.World) -> int:
    """Crops per step of one rank: the global ``train.batch_size`` shared out evenly, so that a
    config optimises the same way at any world size."""
    if batch_size % world.size:
        raise ValueError(
            f"train.batch_size {batch_size} is not divisible by the world size {world.size}: "
            "the global batch is shared out evenly among the ranks (choose a multiple)"
        )
    return batch_size // world.size


def _worker_context(world: distributed.World, num_workers: int) -> str | None:
    """How DataLoader workers start: forked (the default) alone; from a fork server with several
    ranks, whose process holds gloo's threads and OpenMP pools resized for validation: a worker
    forked from it hung at its start once (epoch 10 of the 2-process time-to-solution run, the
    other rank then timed out), a fork server's workers start from a clean process."""
    return "forkserver" if world.distributed and num_workers > 0 else None


def _wall_offset(history: list[dict]) -> float:
    """Wall seconds of the sessions before a resume (their epochs' seconds for older runs)."""
    if not history:
        return 0.0
    last = history[-1]
    return float(last.get("wall_seconds", sum(r.get("seconds", 0.0) for r in history)))


def run(
    cfg: Config,
    data_root: Path,
    fresh: bool = False,
    progress: bool = True,
    *,
    build: Callable[[Config], torch.nn.Module] | None = None,
    objective: Objective | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    device: str = "cpu",
) -> Path:
    """Train (or resume) the run described by ``cfg``; returns its run folder.

    Hooks for the experiments (all optional): ``build`` makes the network from the config
    (default :func:`build_model`), ``objective`` computes a step's loss, ``on_epoch`` gets each
    epoch's row after it is saved (an Optuna callback may raise ``TrialPruned`` there).
    ``device``: ``"cpu"`` or ``"cuda"``.

    Started by torchrun with several processes, this is one rank of a data-parallel run: the
    ``objective`` gets the network wrapped in ``DistributedDataParallel`` (gradients averaged
    over the ranks), and ``on_epoch`` runs on every rank with rank 0's row.
    """
    t_start = time.perf_counter()  # the wall clock of time-to-solution (process group incl.)
    world = distributed.init(device)
    try:
        return _train(
            world, t_start, cfg, Path(data_root), fresh, progress, build, objective, on_epoch
        )
    finally:
        distributed.teardown(world)


def _train(
    world: distributed.World,
    t_start: float,
    cfg: Config,
    data_root: Path,
    fresh: bool,
    progress: bool,
    build: Callable[[Config], torch.nn.Module] | None,
    objective: Objective | None,
    on_epoch: Callable[[dict], None] | None,
) -> Path:
    batch_size = rank_batch_size(cfg.train.batch_size, world)
    threads = distributed.threads_per_rank(cfg.train.threads, world)
    torch.set_num_threads(threads)
    _seed_everything(cfg.train.seed)
    run_dir = cfg.run_dir
    split = val_crops = dev_scenes = None
    if world.is_main:  # the others wait for the split (pseudo-labels, split files made here)
        run_dir.mkdir(parents=True, exist_ok=True)
        config_mod.save(
            cfg,
            run_dir / "config.yaml",
            seed=cfg.train.seed,
            git_sha=config_mod.git_sha(),
            data_root=str(data_root.resolve()),
            torch=str(torch.__version__),
            started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            world_size=world.size,
            device=world.device.type,
        )
        split = scene_split(cfg, data_root)
        dev_root = data_root / cfg.data.dev_dir
        dev_scenes = (
            datasets.labelled_scenes(dev_root, cfg.data.dev_select) if dev_root.is_dir() else []
        )
        datasets.write_json(
            run_dir / "data.json",
            {
                "train": datasets.scene_summary(split[0]),
                "val": datasets.scene_summary(split[1]),
                "dev": datasets.scene_summary(dev_scenes),
            },
        )
        val_crops = datasets.fixed_crops(split[1], cfg.data, cfg.train.seed)
    train_scenes, _ = distributed.broadcast(split, world)

    model = (build or build_model)(cfg).to(world.device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    total_steps = cfg.train.epochs * cfg.train.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.train.lr, total_steps=total_steps, pct_start=0.1
    )
    loss_fn = make_loss(cfg.loss)
    if objective is None:

        def objective(net, x, y):
            return loss_fn(net(x), y)

    state = {"epoch": 0, "best": -1.0, "bad_epochs": 0, "history": []}
    last = run_dir / "last.pt"
    if last.is_file() and not fresh:  # every rank reads it before rank 0 can write it again
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        if ckpt["scheduler"].get("total_steps") == total_steps:
            scheduler.load_state_dict(ckpt["scheduler"])
        else:  # epochs changed since the checkpoint: follow the new schedule from here
            scheduler.last_epoch = state["epoch"] * cfg.train.steps_per_epoch - 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scheduler.step()
        if world.is_main:
            print(f"resumed {run_dir} after epoch {state['epoch']}", flush=True)
    wall_offset = _wall_offset(state["history"])

    net: torch.nn.Module = model
    if world.distributed:  # static graph: unused parameters (encoder stages beyond depth) are fine
        ids = [world.device.index] if world.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids, static_graph=True)
    # on the CPU the waiting ranks leave their cores to rank 0's validation
    validation_threads = cfg.train.threads if world.device.type == "cpu" else threads

    tile, overlap = cfg.export.tile_size, cfg.export.recommended_overlap
    while state["epoch"] < cfg.train.epochs and state["bad_epochs"] < cfg.train.patience:
        epoch = state["epoch"]
        t0 = time.perf_counter()
        stream = datasets.CropStream(
            train_scenes,
            cfg.data,
            cfg.train.seed,
            epoch,
            rank=world.rank if world.distributed else None,
        )
        loader = DataLoader(
            stream,
            batch_size=batch_size,
            num_workers=cfg.data.num_workers,
            persistent_workers=False,
            multiprocessing_context=_worker_context(world, cfg.data.num_workers),
        )
        net.train()
        running = 0.0
        bar = tqdm(
            total=cfg.train.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            disable=not (progress and world.is_main),
            mininterval=5,
        )
        for step, (x, y) in enumerate(loader):
            if step >= cfg.train.steps_per_epoch:
                break
            x, y = x.to(world.device), y.to(world.device)
            optimizer.zero_grad(set_to_none=True)
            loss = objective(net, x, y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{running / (step + 1):.4f}")
        bar.close()
        del loader
        train_loss = distributed.all_reduce_mean(running / cfg.train.steps_per_epoch, world)
        if world.is_main:
            row = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0], "train_loss": train_loss}
            with _threads(validation_threads):
                row.update(
                    validate(
                        model, val_crops, dev_scenes, loss_fn, cfg.train.threshold, tile, overlap
                    )
                )
            row["seconds"] = round(time.perf_counter() - t0, 1)
            row["wall_seconds"] = round(wall_offset + time.perf_counter() - t_start, 1)
            state["history"].append(row)
            state["epoch"] = epoch + 1
            score = row[selection_key(row, cfg.train.select_on)]
            ckpt = {
                "config": cfg.to_dict(),
                "model": model.state_dict(),
                "epoch": epoch + 1,
                "row": row,
            }
            if score > state["best"]:
                state["best"], state["bad_epochs"] = score, 0
                _save_atomic(ckpt, run_dir / "best.pt")
            else:
                state["bad_epochs"] += 1
            ckpt.update(
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), state=state
            )
            _save_atomic(ckpt, last)
            _write_log(run_dir, state["history"])
            shown = {k: round(v, 4) for k, v in row.items() if k.endswith(("loss", "iou"))}
            print(
                f"epoch {epoch + 1}: {shown} best {state['best']:.4f} ({row['seconds']} s)",
                flush=True,
            )
        state = distributed.broadcast(state, world)  # best and early stopping alike everywhere
        if on_epoch is not None:
            on_epoch(state["history"][-1])
    if world.is_main:
        (run_dir / "DONE").write_text(
            json.dumps({"epochs": state["epoch"], "best": state["best"]}, indent=2)
        )
    distributed.barrier(world)
    return run_dir


def parse_overrides(items: list[str]) -> dict:
    """``section.key=value`` pairs (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the cloud U-Net.")
    parser.add_argument("--config", type=Path, default=Path("training/configs/default.yaml"))
    parser.add_argument("--data-root", type=Path, default=config_mod.REPO_ROOT / "../shared/data")
    parser.add_argument("--set", nargs="*", default=[], help="overrides: section.key=value")
    parser.add_argument("--fresh", action="store_true", help="ignore last.pt and start over")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cuda: one GPU per rank"
    )
    args = parser.parse_args(argv)
    cfg = config_mod.load(args.config, parse_overrides(args.set))
    run_dir = run(
        cfg, args.data_root, fresh=args.fresh, progress=not args.no_progress, device=args.device
    )
    if distributed.env_world()[0] == 0:
        print(f"run folder: {run_dir}")


if __name__ == "__main__":
    main()
