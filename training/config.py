"""Training configuration: one dataclass schema, loaded from YAML, saved resolved into each run.

``training/configs/default.yaml`` trains the shipped model; ``training/configs/tiny.yaml`` has
the same schema, shrunk so the tests run end to end in seconds on generated data.
"""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DataConfig:
    #: training sources: "teacher" (s2_unlabelled + teacher pseudo-labels), "catalogue"
    #: (Cloud Mask Catalogue npy layout), "labelled" (GeoTIFF image + label pairs)
    sources: list[str] = field(default_factory=lambda: ["teacher"])
    teacher_dir: str = "cache/teacher"  # pseudo-labels (relative to the repo root)
    catalogue_dir: str = "catalogue"  # relative to --data-root
    labelled_dir: str = "labelled"  # training pairs <name>_image.tif / <name>_label.tif
    dev_dir: str = "dev_labelled"  # validation chips (never trained on)
    dev_select: list[str] = field(default_factory=lambda: ["oncloudn_2", "oncloudn_4"])
    #: scenes whose source.json says "clouds_visible": "no" get an all-clear target instead of
    #: the teacher's (a scene-level human annotation; removes teacher false positives on snow,
    #: deserts and bright cities)
    clear_scenes_zero: bool = True
    split_dir: str = "training/splits"
    val_fraction: float = 0.15
    crop: int = 224
    synthetic_fraction: float = 0.5  # share of crops that get synthetic clouds composited
    synthetic_shadow: float = 0.5  # probability a synthetic cloud field casts a shadow
    thin_fraction: float = 0.5  # probability a synthetic cloud field is thin/semi-transparent
    brightness: float = 0.10  # multiplicative jitter (+/-)
    contrast: float = 0.10  # contrast jitter around the crop mean (+/-)
    max_reflectance: float = 1.5
    num_workers: int = 1
    val_crops_per_scene: int = 4


@dataclass
class ModelConfig:
    name: str = "cloudmask-unet-mobilenetv2"
    encoder: str = "mobilenet_v2"
    depth: int = 5
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 32, 16, 16])
    downsample: int = 2
    mean: list[float] = field(default_factory=lambda: [0.20, 0.19, 0.19, 0.30])
    std: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.18, 0.18])


@dataclass
class LossConfig:
    #: bce | weighted_bce | dice | bce_dice | focal | soft_target
    name: str = "soft_target"
    pos_weight: float = 2.0  # weighted_bce
    focal_gamma: float = 2.0
    focal_alpha: float = 0.5
    dice_weight: float = 0.5  # bce_dice: bce + dice_weight * dice


@dataclass
class TrainConfig:
    run_name: str = "default"
    runs_dir: str = "runs"
    seed: int = 42
    threads: int = 2
    batch_size: int = 16
    steps_per_epoch: int = 150
    epochs: int = 40
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 10  # epochs without a better validation IoU before stopping
    threshold: float = 0.5
    #: what picks best.pt and drives early stopping: "dev" (the human-labelled dev chips when
    #: there are any, else the validation split: how the shipped model was trained) or "val"
    #: (the validation split of the training data only: the research experiments, so the two
    #: dev chips stay an untouched final check)
    select_on: str = "dev"


@dataclass
class ExportConfig:
    out: str = "models/cloudmask.onnx"
    #: which checkpoint of the run to export: "best" (best.pt) or "last" (last.pt)
    checkpoint: str = "best"
    model_version: str = "1.0.0"
    tile_size: int = 224
    recommended_overlap: int = 32
    resolution_m: float = 10.0
    #: default probability threshold written into the model; null = train.threshold
    threshold: float | None = None
    opset: int = 17
    max_mb: float = 250.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    @property
    def run_dir(self) -> Path:
        return resolve(self.train.runs_dir) / self.train.run_name

    @property
    def checkpoint(self) -> Path:
        """The run's checkpoint that is exported (``export.checkpoint``: ``best`` or ``last``)."""
        return self.run_dir / f"{self.export.checkpoint}.pt"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve(path: str | Path) -> Path:
    """A path from the config: absolute as given, relative to the repository root otherwise."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def _build(cls, values: dict[str, Any] | None):
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s): {sorted(unknown)}")
    return cls(**values)


def from_dict(d: dict[str, Any]) -> Config:
    unknown = set(d) - {"data", "model", "loss", "train", "export"}
    if unknown:
        raise ValueError(f"unknown config section(s): {sorted(unknown)}")
    return Config(
        data=_build(DataConfig, d.get("data")),
        model=_build(ModelConfig, d.get("model")),
        loss=_build(LossConfig, d.get("loss")),
        train=_build(TrainConfig, d.get("train")),
        export=_build(ExportConfig, d.get("export")),
    )


def read(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A YAML config as a dict; ``overrides`` map dotted keys to values at any depth
    (``"train.epochs"``, or an experiment's own section such as ``"hpo.trial.train.epochs"``)."""
    d = yaml.safe_load(Path(path).read_text()) or {}
    for dotted, value in (overrides or {}).items():
        *parents, key = dotted.split(".")
        node = d
        for name in parents:
            node = node.setdefault(name, {})
        node[key] = value
    return d


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config; ``overrides`` maps ``"section.key"`` to a value."""
    return from_dict(read(path, overrides))


def save(cfg: Config, path: Path, **extra: Any) -> None:
    """Write the resolved config (plus ``extra`` such as seed and git sha) as YAML."""
    d = cfg.to_dict()
    d.update(extra)
    path.write_text(yaml.safe_dump(d, sort_keys=False))


def git_sha() -> str:
    """``git rev-parse HEAD`` of the repository, or ``"unknown"`` (no git / no commit yet)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
