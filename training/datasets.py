"""Dataset readers (one per real on-disk layout), scene splits and the streaming crop dataset.

Every reader exposes a *scene*: ``read(y, x, h, w) -> (reflectance 4 x h x w float32 in model
channel order (red, green, blue, nir), target h x w float32 in [0, 1], NaN = ignore)``. Pixels
are read window by window (GDAL windows, ``np.load(mmap_mode="r")``), so nothing ever loads the
whole dataset into memory.

Layouts:
- :class:`CatalogueScene`: Sentinel-2 Cloud Mask Catalogue (Francis et al., zenodo 4172871),
  ``subscenes/<id>.npy`` float32 TOA reflectance H x W x 13 (B01, B02, B03, B04, B05, B06, B07,
  B08, B8A, B09, B10, B11, B12) and ``masks/<id>.npy`` H x W x 3 one-hot (CLEAR, CLOUD,
  CLOUD_SHADOW); the binary target is the CLOUD channel (shadow counts as clear).
- :class:`LabelledScene`: GeoTIFF pairs ``<name>_image.tif`` (B02, B03, B04, B08 DN) and
  ``<name>_label.tif`` (uint8, 1 = cloud) -- the dev_labelled layout.
- :class:`TeacherScene`: unlabelled GeoTIFF ``<id>/image.tif`` (+ ``source.json``) with the
  teacher's soft P(cloud) from :mod:`training.pseudolabel` -- pseudo-labels, not ground truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from qgis_cloudmask.core import contract, radiometry
from training import rasters, synthetic
from training.config import DataConfig

#: Cloud Mask Catalogue band order of the 13-band subscenes.
CATALOGUE_BANDS = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
CATALOGUE_CLOUD = 1  # mask channels: CLEAR, CLOUD, CLOUD_SHADOW


class CatalogueScene:
    """One Cloud Mask Catalogue subscene (memory-mapped ``.npy``)."""

    def __init__(self, image: Path, mask: Path) -> None:
        self.name = Path(image).stem
        self.category = "unknown"
        self.group = self.name
        self._image_path, self._mask_path = Path(image), Path(mask)
        img = np.load(self._image_path, mmap_mode="r")
        if img.ndim != 3 or img.shape[2] != len(CATALOGUE_BANDS):
            raise ValueError(f"{image}: expected H x W x 13, got {img.shape}")
        self.height, self.width = img.shape[:2]
        self._bands = rasters.band_index(CATALOGUE_BANDS, contract.DEFAULT_BANDS)

    def read(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        img = np.load(self._image_path, mmap_mode="r")[y : y + h, x : x + w]
        mask = np.load(self._mask_path, mmap_mode="r")[y : y + h, x : x + w]
        refl = np.ascontiguousarray(np.moveaxis(img[..., self._bands], -1, 0), dtype=np.float32)
        valid = np.isfinite(refl).all(0) & ~(refl == 0).all(0)
        refl = np.clip(np.nan_to_num(refl), 0.0, None)
        target = np.asarray(mask[..., CATALOGUE_CLOUD], dtype=np.float32)
        target[~valid] = np.nan
        refl[:, ~valid] = 0.0
        return refl, target


class LabelledScene:
    """A GeoTIFF image with a GeoTIFF label (1 = cloud, 0 = not cloud, other = ignore)."""

    def __init__(
        self,
        image: Path,
        label: Path,
        mode: radiometry.Radiometry = radiometry.Radiometry.S2_DN,
        file_bands: tuple[str, ...] = rasters.FILE_BANDS,
    ) -> None:
        self.image, self.label = Path(image), Path(label)
        self.name = self.image.name.removesuffix("_image.tif")
        self.category = "labelled"
        self.group = self.name
        self.mode, self.file_bands = mode, file_bands
        _, self.height, self.width = rasters.raster_shape(self.image)

    def read(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        refl, valid = rasters.read_reflectance(self.image, self.mode, (y, x, h, w), self.file_bands)
        label = rasters.read_label(self.label, (y, x, h, w))
        target = label.astype(np.float32)
        target[(label > 1) | ~valid] = np.nan
        return refl, target


class TeacherScene:
    """Unlabelled imagery with the teacher's soft cloud probability as target.

    ``all_clear``: the scene is annotated clear (``clouds_visible: "no"``), so the target is 0
    everywhere instead of the teacher's probability.
    """

    def __init__(self, folder: Path, prob: Path, all_clear: bool = False) -> None:
        self.folder, self.prob = Path(folder), Path(prob)
        self.name = self.folder.name
        self.info = rasters.scene_info(self.folder / "source.json")
        self.category = self.info.clouds
        self.group = self.info.place or self.name
        self.all_clear = all_clear
        _, self.height, self.width = rasters.raster_shape(self.folder / "image.tif")

    def read(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        refl, valid = rasters.read_reflectance(
            self.folder / "image.tif", self.info.radiometry, (y, x, h, w)
        )
        if self.all_clear:
            target = np.zeros((h, w), dtype=np.float32)
        else:
            target = np.asarray(
                np.load(self.prob, mmap_mode="r")[y : y + h, x : x + w], dtype=np.float32
            )
        target[~valid] = np.nan
        return refl, target


Scene = CatalogueScene | LabelledScene | TeacherScene


def catalogue_scenes(root: Path) -> list[CatalogueScene]:
    """All subscenes of a Cloud Mask Catalogue folder that have a mask."""
    root = Path(root)
    out = []
    for image in sorted((root / "subscenes").glob("*.npy")):
        mask = root / "masks" / image.name
        if mask.is_file():
            out.append(CatalogueScene(image, mask))
    return out


def labelled_scenes(root: Path, names: list[str] | None = None) -> list[LabelledScene]:
    """``<name>_image.tif`` + ``<name>_label.tif`` pairs in ``root`` (optionally only ``names``)."""
    out = []
    for image in sorted(Path(root).glob("*_image.tif")):
        label = image.with_name(image.name.replace("_image.tif", "_label.tif"))
        name = image.name.removesuffix("_image.tif")
        if label.is_file() and (names is None or name in names):
            out.append(LabelledScene(image, label))
    return out


def teacher_scenes(
    unlabelled_root: Path, teacher_dir: Path, clear_scenes_zero: bool = True
) -> list[TeacherScene]:
    """Unlabelled scenes that have a cached teacher probability in ``teacher_dir``."""
    out = []
    for folder in sorted(p for p in Path(unlabelled_root).iterdir() if p.is_dir()):
        prob = Path(teacher_dir) / f"{folder.name}.npy"
        if (folder / "image.tif").is_file() and prob.is_file():
            clear = clear_scenes_zero and rasters.scene_info(folder / "source.json").clouds == "no"
            out.append(TeacherScene(folder, prob, all_clear=clear))
    return out


# ----------------------------------------------------------------------------- splits


def split_scenes(
    names: list[str],
    categories: list[str],
    val_fraction: float,
    seed: int,
    groups: list[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Split scene *names* (never tiles) into train/val, stratified by category, seeded.

    Scenes of one ``group`` (same place: neighbouring chips, other dates) always land on the
    same side, so nothing of a validation site is seen in training. A group is stratified by
    the category of its first scene; every category with at least two groups gives at least
    one group to validation.
    """
    groups = list(names) if groups is None else list(groups)
    rng = np.random.default_rng(seed)
    members: dict[str, list[str]] = {}
    group_cat: dict[str, str] = {}
    for n, c, g in sorted(zip(names, categories, groups)):
        members.setdefault(g, []).append(n)
        group_cat.setdefault(g, c)
    train, val = [], []
    for cat in sorted(set(group_cat.values())):
        keys = sorted(g for g, c in group_cat.items() if c == cat)
        rng.shuffle(keys)
        n_val = int(round(len(keys) * val_fraction))
        if len(keys) >= 2:
            n_val = max(1, n_val)
        for i, g in enumerate(keys):
            (val if i < n_val else train).extend(members[g])
    return sorted(train), sorted(val)


def load_or_make_split(
    scenes: list[Scene], split_dir: Path, val_fraction: float, seed: int
) -> tuple[list[Scene], list[Scene]]:
    """Use ``split_dir/{train,val}.txt`` if present, else create and save them.

    The files are the record: with existing files, a scene listed in neither (data added since
    the split was made) is left out of both sides and reported, so a rerun trains on exactly
    the recorded scenes and new scenes stay held out (delete the files to split anew).
    """
    split_dir = Path(split_dir)
    train_file, val_file = split_dir / "train.txt", split_dir / "val.txt"
    if train_file.is_file() and val_file.is_file():
        train_names, val_names = set(_read_names(train_file)), set(_read_names(val_file))
        unlisted = sorted(s.name for s in scenes if s.name not in train_names | val_names)
        if unlisted:
            print(
                f"split {split_dir}: {len(unlisted)} scene(s) not in the split files, left out "
                f"(held out): {', '.join(unlisted)}"
            )
    else:
        _, val_list = split_scenes(
            [s.name for s in scenes],
            [s.category for s in scenes],
            val_fraction,
            seed,
            [s.group for s in scenes],
        )
        val_names = set(val_list)
        train_names = {s.name for s in scenes} - val_names
        split_dir.mkdir(parents=True, exist_ok=True)
        header = f"# scene-level split, seed {seed}, val_fraction {val_fraction}\n"
        train_file.write_text(
            header + "".join(f"{s.name}\n" for s in scenes if s.name not in val_names)
        )
        val_file.write_text(header + "".join(f"{n}\n" for n in sorted(val_names)))
    train = [s for s in scenes if s.name in train_names]
    val = [s for s in scenes if s.name in val_names]
    return train, val


def _read_names(path: Path) -> list[str]:
    lines = Path(path).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def training_scenes(cfg: DataConfig, data_root: Path, teacher_dir: Path) -> list[Scene]:
    """All training-candidate scenes of the configured sources (dev chips never included)."""
    scenes: list[Scene] = []
    for source in cfg.sources:
        if source == "teacher":
            scenes += teacher_scenes(
                Path(data_root) / "s2_unlabelled", teacher_dir, cfg.clear_scenes_zero
            )
        elif source == "catalogue":
            scenes += catalogue_scenes(Path(data_root) / cfg.catalogue_dir)
        elif source == "labelled":
            scenes += labelled_scenes(Path(data_root) / cfg.labelled_dir)
        else:
            raise ValueError(f"unknown data source {source!r}")
    if not scenes:
        raise FileNotFoundError(
            f"no training scenes for sources {cfg.sources} under {data_root} "
            f"(teacher labels in {teacher_dir}: run `python -m training.pseudolabel` first)"
        )
    return scenes


# ----------------------------------------------------------------------------- crops


def augment(
    refl: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
    brightness: float,
    contrast: float,
    max_reflectance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, 90-degree rotations and brightness/contrast jitter, clipped to
    ``[0, max_reflectance]`` (nodata pixels, all bands 0, stay 0)."""
    k = int(rng.integers(4))
    refl, target = np.rot90(refl, k, axes=(1, 2)), np.rot90(target, k)
    if rng.random() < 0.5:
        refl, target = refl[:, :, ::-1], target[:, ::-1]
    nodata = (refl == 0).all(0)
    gain = rng.uniform(1 - brightness, 1 + brightness)
    c = rng.uniform(1 - contrast, 1 + contrast)
    mean = refl.reshape(refl.shape[0], -1).mean(1).reshape(-1, 1, 1)
    refl = np.clip(((refl - mean) * c + mean) * gain, 0.0, max_reflectance)
    refl[:, nodata] = 0.0
    return np.ascontiguousarray(refl, np.float32), np.ascontiguousarray(target, np.float32)


def random_window(scene: Scene, crop: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    y = int(rng.integers(0, max(scene.height - crop, 0) + 1))
    x = int(rng.integers(0, max(scene.width - crop, 0) + 1))
    return y, x, min(crop, scene.height), min(crop, scene.width)


def pad_crop(refl: np.ndarray, target: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad a crop from a scene smaller than ``crop`` (nodata reflectance, ignored target)."""
    _, h, w = refl.shape
    if h == crop and w == crop:
        return refl, target
    r = np.zeros((refl.shape[0], crop, crop), np.float32)
    t = np.full((crop, crop), np.nan, np.float32)
    r[:, :h, :w], t[:h, :w] = refl, target
    return r, t


@dataclass
class CropSampler:
    """Draws one (augmented, maybe synthetic-cloud) crop from a list of scenes."""

    scenes: list[Scene]
    cfg: DataConfig
    augment: bool = True

    def __post_init__(self) -> None:
        area = np.array([s.height * s.width for s in self.scenes], dtype=np.float64)
        self.weights = np.sqrt(area) / np.sqrt(area).sum()  # big scenes count, not dominate

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scene = self.scenes[int(rng.choice(len(self.scenes), p=self.weights))]
        crop = self.cfg.crop
        refl, target = scene.read(*random_window(scene, crop, rng))
        refl, target = pad_crop(refl, target, crop)
        if rng.random() < self.cfg.synthetic_fraction:
            nodata = (refl == 0).all(0)
            refl, synth = synthetic.composite_clouds(
                refl,
                rng,
                self.cfg.thin_fraction,
                self.cfg.synthetic_shadow,
                self.cfg.max_reflectance,
            )
            refl[:, nodata] = 0.0
            target = np.where(np.isnan(target), np.nan, np.fmax(target, synth)).astype(np.float32)
        if self.augment:
            refl, target = augment(
                refl, target, rng, self.cfg.brightness, self.cfg.contrast, self.cfg.max_reflectance
            )
        return refl, target


class CropStream(IterableDataset):
    """Endless stream of random ``crop x crop`` training samples, seeded per epoch and worker
    (and per rank in data-parallel training, so that no two ranks draw the same crops).

    ``rank=None`` (one process) seeds with ``[seed, epoch, worker]``, the stream of every
    single-process run so far; a rank ``r`` of several seeds with ``[seed, epoch, r, worker]``.
    """

    def __init__(
        self,
        scenes: list[Scene],
        cfg: DataConfig,
        seed: int,
        epoch: int = 0,
        rank: int | None = None,
    ) -> None:
        super().__init__()
        self.sampler = CropSampler(scenes, cfg)
        self.seed, self.epoch, self.rank = seed, epoch, rank

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        key = [self.seed, self.epoch, worker]
        if self.rank is not None:
            key.insert(2, self.rank)
        rng = np.random.default_rng(key)
        while True:
            refl, target = self.sampler.sample(rng)
            yield torch.from_numpy(refl), torch.from_numpy(target)


def fixed_crops(
    scenes: list[Scene], cfg: DataConfig, seed: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Deterministic validation crops: ``val_crops_per_scene`` per scene, half with synthetic
    clouds; no augmentation. Returns ``(scene name, reflectance, target)`` triples."""
    out = []
    for i, scene in enumerate(scenes):
        rng = np.random.default_rng([seed, 7919, i])
        for j in range(cfg.val_crops_per_scene):
            refl, target = pad_crop(*scene.read(*random_window(scene, cfg.crop, rng)), cfg.crop)
            if j % 2 == 1:
                nodata = (refl == 0).all(0)
                refl, synth = synthetic.composite_clouds(
                    refl, rng, cfg.thin_fraction, cfg.synthetic_shadow, cfg.max_reflectance
                )
                refl[:, nodata] = 0.0
                target = np.where(np.isnan(target), np.nan, np.fmax(target, synth))
            out.append((scene.name, refl, target.astype(np.float32)))
    return out


def scene_summary(scenes: list[Scene]) -> list[dict]:
    """Name, category, size and label kind of each scene (for the run folder and report)."""
    return [
        {
            "name": s.name,
            "category": s.category,
            "group": s.group,
            "height": s.height,
            "width": s.width,
            "kind": type(s).__name__,
            "all_clear": bool(getattr(s, "all_clear", False)),
        }
        for s in scenes
    ]


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2))
