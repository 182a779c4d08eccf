"""Export a checkpoint to the ONNX model the plugin ships, exactly per the model contract.

    python -m training.export --config training/configs/default.yaml [--checkpoint runs/x/best.pt]

Graph: input ``input`` float32 ``N x 4 x T x T`` reflectance (red, green, blue, nir),
normalisation inside; outputs ``mask`` uint8 (``probability >= threshold``) and
``probability`` float32, both ``N x T x T``. Metadata: every key of
:data:`contract.REQUIRED_METADATA_KEYS`, JSON-encoded. Then checks: ``onnx.checker``,
onnxruntime vs torch parity on two batch sizes, size < ``max_mb``, and loading through the
plugin's own :class:`qgis_cloudmask.core.model.CloudModel` (the contract check).
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch

from qgis_cloudmask.core import contract
from qgis_cloudmask.core.model import CloudModel
from training import config as config_mod
from training import reference
from training.config import Config
from training.model import ExportWrapper
from training.train import load_checkpoint, parse_overrides

PARITY_ATOL = 1e-4


def metadata(cfg: Config, ckpt: dict, threshold: float) -> dict[str, str]:
    """The contract's metadata, JSON-encoded values, from config and checkpoint."""
    row = ckpt.get("row", {})
    run_cfg = ckpt["config"]
    m = run_cfg["model"]
    values = {
        "model_name": m["name"],
        "model_version": cfg.export.model_version,
        "bands": list(contract.DEFAULT_BANDS),
        "input_kind": "reflectance",
        "tile_size": int(cfg.export.tile_size),
        "recommended_overlap": int(cfg.export.recommended_overlap),
        "threshold": float(threshold),
        "resolution_m": float(cfg.export.resolution_m),
        "classes": {"0": "clear", "1": "cloud"},
        "training": {
            "data": (
                "teacher pseudo-labels (ukis-csmask 4-band L1C/L2A ONNX, soft P(cloud)) on real "
                "unlabelled Sentinel-2 scenes + procedural synthetic clouds with exact labels; "
                + (
                    "model selection on human-labelled On Cloud N chips"
                    if run_cfg["train"].get("select_on", "dev") == "dev"
                    else "model selection on the validation split (teacher/synthetic labels)"
                )
                if "teacher" in run_cfg["data"]["sources"]
                else f"sources: {run_cfg['data']['sources']}"
            ),
            "sources": run_cfg["data"]["sources"],
            "encoder": m["encoder"],
            "decoder_channels": m["decoder_channels"],
            "downsample": m["downsample"],
            "loss": run_cfg["loss"]["name"],
            "epoch": ckpt.get("epoch"),
            "seed": run_cfg["train"]["seed"],
            "git_sha": config_mod.git_sha(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "metrics": {
            k: round(float(v), 4) for k, v in row.items() if k.startswith(("val_", "dev_"))
        },
    }
    missing = set(contract.REQUIRED_METADATA_KEYS) - set(values)
    if missing:  # one list of keys lives in contract.py; fail loudly if it grows
        raise RuntimeError(f"export does not write required metadata key(s) {sorted(missing)}")
    return {k: json.dumps(v) for k, v in values.items()}


def export_onnx(
    model: torch.nn.Module, path: Path, tile: int, threshold: float, opset: int, meta: dict
) -> None:
    wrapper = ExportWrapper(model.eval(), threshold).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            torch.zeros(1, contract.N_CHANNELS, tile, tile),
            str(path),
            input_names=[contract.INPUT_NAME],
            output_names=[contract.MASK_OUTPUT, contract.PROBABILITY_OUTPUT],
            dynamic_axes={
                contract.INPUT_NAME: {0: "batch"},
                contract.MASK_OUTPUT: {0: "batch"},
                contract.PROBABILITY_OUTPUT: {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "qgis_cloudmask cloud model; contract: docs of qgis_cloudmask.core.contract"
    onnx.save(proto, str(path))


def check_parity(
    model: torch.nn.Module, path: Path, tile: int, threshold: float, batch_sizes=(1, 3), seed=0
) -> float:
    """Max |onnxruntime - torch| probability over random reflectance batches of two sizes;
    also checks that ``mask == (probability >= threshold)``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n in batch_sizes:
        x = (rng.random((n, contract.N_CHANNELS, tile, tile)) * 0.8).astype(np.float32)
        mask, prob = session.run(
            [contract.MASK_OUTPUT, contract.PROBABILITY_OUTPUT], {contract.INPUT_NAME: x}
        )
        with torch.no_grad():
            ref = torch.sigmoid(model(torch.from_numpy(x))[:, 0]).numpy()
        if prob.shape != (n, tile, tile) or mask.shape != (n, tile, tile) or mask.dtype != np.uint8:
            raise AssertionError(f"bad output shapes/dtypes {prob.shape} {mask.shape} {mask.dtype}")
        worst = max(worst, float(np.abs(prob - ref).max()))
        if not np.array_equal(mask, (prob >= threshold).astype(np.uint8)):
            raise AssertionError("mask output is not probability >= threshold")
    if worst > PARITY_ATOL:
        raise AssertionError(f"onnxruntime vs torch probability differ by {worst:.2e}")
    return worst


def _add_dev_metrics(path: Path, dev_dir: Path) -> None:
    """Add pooled metrics of the exported model on the labelled dev chips, at the shipped
    threshold and through the plugin's tiled inference, to the ``metrics`` metadata."""
    from training import evaluate
    from training.datasets import labelled_scenes

    scenes = labelled_scenes(dev_dir) if dev_dir.is_dir() else []
    if not scenes:
        return
    results, seconds = evaluate.run_methods(CloudModel(path), scenes, teacher=False)
    pooled = evaluate.summarise(results, seconds)["pooled"]
    proto = onnx.load(str(path))
    entry = next(p for p in proto.metadata_props if p.key == "metrics")
    values = json.loads(entry.value)
    for group, by_method in pooled.items():
        if group != "all":
            scores = {k: round(v, 4) for k, v in by_method["ours"].items()}
            values[f"dev_{group}_at_shipped_threshold"] = scores
    entry.value = json.dumps(values)
    onnx.save(proto, str(path))


def export(
    cfg: Config,
    checkpoint: Path | None = None,
    out: Path | None = None,
    data_root: Path | None = None,
    *,
    load: Callable[[Path], tuple[torch.nn.Module, dict]] = load_checkpoint,
    training_extra: dict | None = None,
) -> dict:
    """Export, check and return a summary (path, size, parity, metadata).

    ``load`` rebuilds the network from the checkpoint (an experiment whose architecture is not
    the config's passes its own); ``training_extra`` adds keys to the ``training`` metadata.
    """
    if checkpoint is None:
        if cfg.export.checkpoint not in ("best", "last"):
            raise ValueError(
                f"export.checkpoint must be 'best' or 'last', not {cfg.export.checkpoint!r}"
            )
        checkpoint = cfg.checkpoint
    out = out or config_mod.resolve(cfg.export.out)
    model, ckpt = load(checkpoint)
    threshold = cfg.export.threshold
    if threshold is None:
        threshold = ckpt["config"]["train"]["threshold"]
    threshold = float(threshold)
    tile = cfg.export.tile_size
    meta = metadata(cfg, ckpt, threshold)
    if training_extra:
        meta["training"] = json.dumps({**json.loads(meta["training"]), **training_extra})
    export_onnx(model, out, tile, threshold, cfg.export.opset, meta)
    onnx.checker.check_model(str(out), full_check=True)
    parity = check_parity(model, out, tile, threshold)
    size_mb = out.stat().st_size / 1e6
    if size_mb >= cfg.export.max_mb:
        raise AssertionError(f"{out} is {size_mb:.1f} MB, limit {cfg.export.max_mb} MB")
    if data_root is not None:
        # histogram matching's reference: the training data this config trains on
        reference.stamp(out, reference.training_reference(cfg, Path(data_root)))
        _add_dev_metrics(out, Path(data_root) / ckpt["config"]["data"]["dev_dir"])
    info = CloudModel(out).info  # the plugin's own contract validation
    return {
        "path": str(out),
        "checkpoint": str(checkpoint),
        "size_mb": round(size_mb, 2),
        "parity_max_abs": parity,
        "model_name": info.name,
        "model_version": info.version,
        "threshold": info.threshold,
        "metrics": info.metrics,
        "reference_quantiles": info.reference is not None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a checkpoint to models/cloudmask.onnx.")
    parser.add_argument("--config", type=Path, default=Path("training/configs/default.yaml"))
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="default: <run>/<export.checkpoint>.pt"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: export.out of the config")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="also write the training data's reference quantiles and dev-chip metrics",
    )
    parser.add_argument("--set", nargs="*", default=[], help="overrides: section.key=value")
    args = parser.parse_args(argv)
    cfg = config_mod.load(args.config, parse_overrides(args.set))
    summary = export(cfg, args.checkpoint, args.out, args.data_root)
    print(json.dumps(summary, indent=2))
    print("onnx.checker: ok | parity: ok | size: ok | plugin contract (CloudModel): ok")


if __name__ == "__main__":
    main()
