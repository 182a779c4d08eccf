"""Reference reflectance quantiles of a model's training data, for histogram matching.

    python -m training.reference --data-root ../shared/data --model models/cloudmask.onnx \
        --version 1.0.1

The export writes them into the ONNX metadata (key ``reference_quantiles``, see
:mod:`qgis_cloudmask.core.histogram`); this command adds them to an already exported model
without touching its weights (and bumps its ``model_version``), which is how the shipped model
got them.

The sample mirrors what training draws: the training split's real scenes, each weighted like the
crop sampler weights them (square root of the area), pixels drawn uniformly within a scene,
nodata left out. It is the real imagery only: the synthetic clouds and the brightness/contrast
jitter added during training are not in it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx

from qgis_cloudmask.core import contract, histogram
from qgis_cloudmask.core.model import CloudModel
from training import config as config_mod
from training import datasets
from training.config import Config
from training.train import parse_overrides

#: Pixels drawn over all training scenes together.
SAMPLE_PIXELS = 2_000_000


def training_reference(
    cfg: Config,
    data_root: Path,
    pixels: int = SAMPLE_PIXELS,
    seed: int = 0,
    clear_only: bool = False,
) -> histogram.Reference:
    """Quantiles (:data:`histogram.LEVELS`) of the training split's reflectance per band;
    ``clear_only``: only pixels whose training target says clear (< 0.5), an experiment (see
    docs/inference-options.md)."""
    scenes = datasets.training_scenes(
        cfg.data, Path(data_root), config_mod.resolve(cfg.data.teacher_dir)
    )
    train, _ = datasets.load_or_make_split(
        scenes, config_mod.resolve(cfg.data.split_dir), cfg.data.val_fraction, cfg.train.seed
    )
    weights = datasets.CropSampler(train, cfg.data).weights
    rng = np.random.default_rng(seed)
    parts = []
    for scene, weight in zip(train, weights):
        refl, target = scene.read(0, 0, scene.height, scene.width)
        valid = np.isfinite(target) & ~(refl == 0).all(0)
        if clear_only:
            valid &= target < 0.5
        values = refl[:, valid]
        if values.shape[1]:
            n = max(1, int(round(pixels * weight)))
            parts.append(values[:, rng.integers(0, values.shape[1], n)])
    if not parts:
        raise ValueError("no valid pixel in the training scenes")
    sample = np.concatenate(parts, axis=1)
    quantiles = histogram.scene_quantiles(sample)
    source = (
        ("clear pixels (target < 0.5) of " if clear_only else "")
        + f"{len(train)} training scenes ({', '.join(cfg.data.sources)}), {sample.shape[1]} "
        "pixels drawn like the training crops (sqrt-area scene weights), real imagery only"
    )
    return histogram.Reference(
        histogram.LEVELS, tuple(tuple(float(v) for v in q) for q in quantiles), source
    )


def stamp(path: Path, reference: histogram.Reference, version: str | None = None) -> dict:
    """Write ``reference`` into the ONNX metadata of ``path`` (weights untouched), optionally a
    new ``model_version``; the result is checked by the plugin's own contract validation."""
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    # training reads every scene in the contract's channel order
    props[contract.REFERENCE_QUANTILES_KEY] = json.dumps(
        reference.to_metadata(contract.DEFAULT_BANDS)
    )
    if version:
        props["model_version"] = json.dumps(version)
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    info = CloudModel(path).info
    if info.reference is None:
        raise AssertionError(f"{path}: reference quantiles were not read back")
    return {"path": str(path), "model_version": info.version, "source": reference.source}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("training/configs/default.yaml"))
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model", type=Path, required=True, help="ONNX file to add them to")
    parser.add_argument("--version", default=None, help="new model_version (a patch bump)")
    parser.add_argument(
        "--clear-only", action="store_true", help="only pixels the training target calls clear"
    )
    parser.add_argument("--set", nargs="*", default=[], help="overrides: section.key=value")
    args = parser.parse_args(argv)
    cfg = config_mod.load(args.config, parse_overrides(args.set))
    reference = training_reference(cfg, args.data_root, clear_only=args.clear_only)
    print(json.dumps(stamp(args.model, reference, args.version), indent=2))
    for band, values in zip(contract.DEFAULT_BANDS, reference.values):
        print(f"{band}: p1 {values[1]:.4f}  p50 {values[50]:.4f}  p99 {values[-2]:.4f}")


if __name__ == "__main__":
    main()
