"""Evaluate the ONNX cloud model as users run it, with its inference options, beside the teacher.

    python -m training.evaluate --data-root ../shared/data [--model models/cloudmask.onnx]
        [--ensemble-model OTHER.onnx ...] [--variants none tta=flips tta=d8 ...]
        [--json PATH] [--markdown PATH]

"Ours" is :func:`qgis_cloudmask.pipeline.run` on a temporary copy of each GeoTIFF (explicit
bands and radiometry; GDAL may write ``.aux.xml`` beside what it opens, and the shared data stay
untouched), its probability and mask read back from the GeoTIFFs it wrote: exactly what a user
gets. *Variants* of ours switch the pipeline's inference options on (:data:`VARIANTS`:
test-time augmentation, histogram matching, an ensemble with ``--ensemble-model``); every
variant uses the pipeline's default threshold (the model's shipped one, the mean of the
thresholds for an ensemble): nothing is tuned per option on the dev chips.

Each variant is scored on (a) the Sentinel-2 dev chips and (b) the Landsat chips of
``dev_labelled`` (metrics from pooled tp/fp/fn/tn, :mod:`training.metrics`), on (c) false
positives on held-out clear scenes (``s2_unlabelled`` scenes whose ``source.json`` says
``clouds_visible: "no"`` and that are not in the training split: % of valid pixels flagged cloud)
and on (d) cost: megapixels per second of ``pipeline.run`` end to end over all those inputs, and
the time relative to ``none`` measured in the same process, the variants interleaved input by
input (the absolute rate depends on what else the machine runs; the ratio is the honest figure).

The teacher (ukis-csmask 4-band ONNX, L2A model for L2A scenes, L1C otherwise; tiled inference
on in-memory reflectance) and a brightness threshold are the baselines on the same chips. The
speed-up over the teacher compares like with like: both models' tiled inference
(:func:`qgis_cloudmask.core.inference.classify_array`) of a loaded session on in-memory
reflectance; on 512 x 512 chips the pipeline's fixed cost per run (loading the model, reading,
writing) would otherwise dominate ours.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from osgeo import gdal

from qgis_cloudmask import pipeline
from qgis_cloudmask.core import inference, radiometry
from qgis_cloudmask.core.model import CloudModel
from qgis_cloudmask.core.stats import CloudStats
from training import metrics, rasters
from training.config import REPO_ROOT
from training.datasets import LabelledScene, labelled_scenes
from training.teacher import Teacher

gdal.UseExceptions()

#: Product level of the dev_labelled chips (others: top-of-atmosphere -> the L1C teacher).
DEV_LEVELS = {"oncloudn_2": "l2a", "oncloudn_4": "l2a"}
#: "Simple brightness threshold" baseline: cloud where mean visible reflectance >= this.
BRIGHTNESS_THRESHOLD = 0.3
METHODS = ("ours", "teacher", "brightness")
#: Pipeline band role of each Sentinel-2 band name (files store them in other orders).
BAND_ROLES = {"B04": "red", "B03": "green", "B02": "blue", "B08": "nir"}
GROUPS = ("sentinel2", "landsat")
GROUP_TITLES = {"sentinel2": "Sentinel-2 dev chips", "landsat": "Landsat chips"}
#: Where the generated Markdown goes inside a page (text outside the markers is kept).
MARKDOWN_KEY = "evaluate"


@dataclass(frozen=True)
class Variant:
    """One way of running our model through the pipeline (its inference options)."""

    name: str
    description: str
    tta: str = "none"
    histogram_matching: bool = False
    ensemble: bool = False

    def passes(self, models: int) -> int:
        """Model calls per tile."""
        per_model = {"none": 1, "flips": 4, "d8": 8}[self.tta]
        return per_model * (models if self.ensemble else 1)


VARIANTS = (
    Variant("none", "the model alone, one pass (the default)"),
    Variant("tta=flips", "test-time augmentation: identity + 3 flips", tta="flips"),
    Variant("tta=d8", "test-time augmentation: 8 flips and quarter turns", tta="d8"),
    Variant(
        "histogram_matching",
        "scene reflectance quantiles mapped onto the training reference",
        histogram_matching=True,
    ),
    Variant(
        "ensemble",
        "the model + --ensemble-model(s), equal weights, mean threshold",
        ensemble=True,
    ),
    Variant("ensemble+flips", "the ensemble with 4-flip TTA", tta="flips", ensemble=True),
)
VARIANT_BY_NAME = {v.name: v for v in VARIANTS}
NONE = VARIANTS[0]


def pipeline_bands(file_bands: Sequence[str]) -> dict[str, int]:
    """The pipeline's ``bands`` (role -> 1-based band) for a file storing ``file_bands``."""
    return {BAND_ROLES[b]: i + 1 for i, b in enumerate(file_bands) if b in BAND_ROLES}


# -- running the pipeline ---------------------------------------------------------------------


@dataclass
class Prediction:
    """What one ``pipeline.run`` wrote (read back) and how long it took."""

    stats: CloudStats
    seconds: float
    summary: dict
    prob: np.ndarray | None = None  # H x W float32, -1 = nodata
    mask: np.ndarray | None = None  # H x W uint8: 0 clear, 1 cloud, 255 nodata


def read_band(path: Path) -> np.ndarray:
    ds = gdal.Open(str(path))
    try:
        return ds.GetRasterBand(1).ReadAsArray()
    finally:
        ds = None


class PipelineRunner:
    """Runs :func:`pipeline.run` on temporary copies of input GeoTIFFs, in a scratch folder."""

    def __init__(self, model: Path, ensemble: Sequence[Path] = ()) -> None:
        self.model, self.ensemble = Path(model), [Path(p) for p in ensemble]
        self._tmp = tempfile.TemporaryDirectory(prefix="cloudmask-evaluate-")
        self.folder = Path(self._tmp.name)
        self._copies: dict[Path, Path] = {}

    def __enter__(self) -> PipelineRunner:
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    def models(self, variant: Variant) -> str | list[str]:
        if not variant.ensemble:
            return str(self.model)
        return [str(self.model)] + [str(p) for p in self.ensemble]

    def copy(self, image: Path) -> Path:
        """A private copy of ``image`` (one per input, reused by every run)."""
        key = Path(image).resolve()
        if key not in self._copies:
            target = self.folder / f"input{len(self._copies)}_{Path(image).name}"
            shutil.copyfile(image, target)
            self._copies[key] = target
        return self._copies[key]

    def run(
        self,
        image: Path,
        variant: Variant,
        bands: dict[str, int],
        mode: radiometry.Radiometry,
        read: bool = True,
        tag: str = "",
    ) -> Prediction:
        """Mask ``image`` with ``variant``; ``read``: also read the written rasters back."""
        out = self.folder / f"mask{tag}.tif"
        prob = self.folder / f"probability{tag}.tif"
        request = pipeline.MaskRequest(
            str(self.copy(image)),
            str(out),
            probability=str(prob),
            bands=dict(bands),
            radiometry=mode,
            model=self.models(variant),
            tta=variant.tta,
            histogram_matching=variant.histogram_matching,
        )
        t0 = time.perf_counter()
        result = pipeline.run(request)
        seconds = time.perf_counter() - t0
        pred = Prediction(result.stats, seconds, result.summary)
        if read:
            pred.prob, pred.mask = read_band(prob), read_band(out)
        return pred


# -- what is evaluated ------------------------------------------------------------------------


@dataclass
class SceneResult:
    """A labelled chip: the baselines' and ours' probabilities and confusion counts."""

    name: str
    label: np.ndarray  # H x W float (1 cloud, 0 clear, NaN ignore)
    reflectance: np.ndarray  # 4 x H x W, model order
    prob: dict[str, np.ndarray] = field(default_factory=dict)  # method -> H x W
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # method -> [tp, fp, fn, tn]
    #: variant -> [tp, fp, fn, tn] of ours with that variant ("none" is "ours")
    variants: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class ClearScene:
    """A held-out real scene annotated clear: every cloud pixel is a false positive."""

    name: str
    image: Path
    radiometry: radiometry.Radiometry
    level: str  # teacher model: "l1c" or "l2a"
    side: str  # "val" (validation split) or "neither" (in no split file)


@dataclass
class ClearResult:
    scene: ClearScene
    valid_pixels: int
    cloud_pixels: dict[str, int] = field(default_factory=dict)  # variant -> pixels
    teacher_valid: int = 0
    teacher_cloud: int | None = None


@dataclass
class Evaluation:
    results: list[SceneResult]
    clear: list[ClearResult]
    #: "ours" and "teacher" on the labelled chips, all repeats: tiled inference of a loaded
    #: model on in-memory reflectance (like for like; pipeline.run's cost: variant_seconds)
    seconds: dict[str, float]
    #: variant -> input name -> seconds of pipeline.run, all repeats
    variant_seconds: dict[str, dict[str, float]]
    pixels: dict[str, int]  # input name -> pixels
    repeats: int
    #: variant -> what the pipeline resolved (threshold, models, tta, histogram matching)
    settings: dict[str, dict]


def brightness_probability(reflectance: np.ndarray) -> np.ndarray:
    """Mean visible reflectance scaled so that ``BRIGHTNESS_THRESHOLD`` maps to 0.5."""
    return np.clip(reflectance[:3].mean(0) * (0.5 / BRIGHTNESS_THRESHOLD), 0.0, 1.0)


def is_sentinel2(name: str) -> bool:
    return not name.startswith("ukis_landsat")


def split_names(path: Path) -> set[str]:
    """Scene names listed in a split file (``#`` lines are comments); empty if it is missing."""
    if not Path(path).is_file():
        return set()
    lines = Path(path).read_text().splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}


def clear_scenes(unlabelled: Path, split_dir: Path) -> list[ClearScene]:
    """Scenes annotated clear (``clouds_visible: "no"``) that the model was not trained on:
    validation-split scenes and scenes in neither split file."""
    train_file = Path(split_dir) / "train.txt"
    if not train_file.is_file():
        raise FileNotFoundError(
            f"{train_file} is missing: without the training split the held-out clear scenes "
            "cannot be told apart (give --split-dir, or --no-clear-scenes)"
        )
    train, val = split_names(train_file), split_names(Path(split_dir) / "val.txt")
    out = []
    for folder in sorted(p for p in Path(unlabelled).iterdir() if p.is_dir()):
        if not (folder / "image.tif").is_file() or folder.name in train:
            continue
        info = rasters.scene_info(folder / "source.json")
        if info.clouds == "no":
            side = "val" if folder.name in val else "neither"
            out.append(
                ClearScene(folder.name, folder / "image.tif", info.radiometry, info.level, side)
            )
    return out


def evaluate(
    model: Path,
    scenes: list[LabelledScene],
    clear: Sequence[ClearScene] = (),
    variants: Sequence[Variant] = (NONE,),
    ensemble: Sequence[Path] = (),
    teacher: bool = True,
    repeats: int = 1,
    log=None,
) -> Evaluation:
    """Every variant of ours on every chip and clear scene (``repeats`` times for the timing,
    variants interleaved input by input), the teacher and the brightness baseline on the chips.
    Scores come from the first repeat (the runs are deterministic)."""
    if NONE not in variants:
        variants = [NONE, *variants]  # the reference of every ratio, and "ours"
    log = log or (lambda text: None)
    teachers: dict[str, Teacher] = {}
    seconds = {"ours": 0.0, "teacher": 0.0}
    variant_seconds: dict[str, dict[str, float]] = {v.name: {} for v in variants}
    settings: dict[str, dict] = {}
    pixels: dict[str, int] = {}
    results = {s.name: None for s in scenes}
    clear_results = {c.name: None for c in clear}

    def record(variant: Variant, name: str, pred: Prediction) -> None:
        times = variant_seconds[variant.name]
        times[name] = times.get(name, 0.0) + pred.seconds
        if variant.name not in settings:
            s = pred.summary
            settings[variant.name] = {
                "threshold": s["threshold"],
                "tta": s["tta"],
                "histogram_matching": s["histogram_matching"],
                "models": [
                    {k: m[k] for k in ("name", "version", "path", "weight", "threshold")}
                    for m in s["models"]
                ],
            }

    loaded = CloudModel(model)
    info = loaded.info
    with PipelineRunner(model, ensemble) as runner:
        for rep in range(repeats):
            first = rep == 0
            for scene in scenes:
                log(f"[{rep + 1}/{repeats}] {scene.name}")
                bands = pipeline_bands(scene.file_bands)
                if first:
                    refl, label = scene.read(0, 0, scene.height, scene.width)
                    res = results[scene.name] = SceneResult(scene.name, label, refl)
                    pixels[scene.name] = label.size
                res = results[scene.name]
                for v in variants:
                    pred = runner.run(scene.image, v, bands, scene.mode, read=first)
                    record(v, scene.name, pred)
                    if first:
                        valid = np.isfinite(res.label) & (pred.mask != 255)
                        counts = metrics.confusion(pred.mask == 1, res.label == 1, valid)
                        res.variants[v.name] = counts
                        if v is NONE:
                            res.prob["ours"], res.counts["ours"] = pred.prob, counts
                # ours vs the teacher like for like: tiled inference of a loaded model on
                # in-memory reflectance (the pipeline's own cost is in variant_seconds)
                t0 = time.perf_counter()
                inference.classify_array(
                    loaded.predict,
                    res.reflectance,
                    info.tile_size,
                    info.recommended_overlap,
                    info.threshold,
                )
                seconds["ours"] += time.perf_counter() - t0
                if teacher:
                    level = DEV_LEVELS.get(scene.name, "l1c")
                    t = teachers.setdefault(level, Teacher(level))
                    t0 = time.perf_counter()
                    p = t.probability(res.reflectance[rasters.MODEL_TO_TEACHER])
                    seconds["teacher"] += time.perf_counter() - t0
                    if first:
                        valid = np.isfinite(res.label) & ~(res.reflectance == 0).all(0)
                        res.prob["teacher"] = p
                        res.counts["teacher"] = metrics.confusion(
                            p >= 0.5, res.label == 1, valid & np.isfinite(p)
                        )
                if first:
                    valid = np.isfinite(res.label) & ~(res.reflectance == 0).all(0)
                    b = brightness_probability(res.reflectance)
                    res.prob["brightness"] = b
                    res.counts["brightness"] = metrics.confusion(b >= 0.5, res.label == 1, valid)
            for scene in clear:
                log(f"[{rep + 1}/{repeats}] {scene.name} (clear)")
                bands = pipeline_bands(rasters.FILE_BANDS)
                for v in variants:
                    pred = runner.run(scene.image, v, bands, scene.radiometry, read=False)
                    record(v, scene.name, pred)
                    if first:
                        if clear_results[scene.name] is None:
                            clear_results[scene.name] = ClearResult(scene, pred.stats.valid_pixels)
                            pixels[scene.name] = pred.stats.total_pixels
                        clear_results[scene.name].cloud_pixels[v.name] = pred.stats.cloud_pixels
                if first and teacher:  # once: a reference, not timed
                    refl, valid = rasters.read_reflectance(scene.image, scene.radiometry)
                    t = teachers.setdefault(scene.level, Teacher(scene.level))
                    p = t.probability(refl[rasters.MODEL_TO_TEACHER], valid)
                    ok = valid & np.isfinite(p)
                    cr = clear_results[scene.name]
                    cr.teacher_valid = int(ok.sum())
                    cr.teacher_cloud = int((p[ok] >= 0.5).sum())
    return Evaluation(
        [results[s.name] for s in scenes],
        [clear_results[c.name] for c in clear],
        seconds,
        variant_seconds,
        pixels,
        repeats,
        settings,
    )


def run_methods(
    model: CloudModel | Path | str,
    scenes: list[LabelledScene],
    teacher: bool = True,
    repeats: int = 1,
) -> tuple[list[SceneResult], dict[str, float]]:
    """Ours (the pipeline, default options), the teacher and the brightness baseline on the
    labelled chips; returns the results and the seconds spent per method."""
    path = model.path if isinstance(model, CloudModel) else model
    ev = evaluate(Path(path), scenes, teacher=teacher, repeats=repeats)
    return ev.results, ev.seconds


# -- summaries --------------------------------------------------------------------------------


def _groups(results: list[SceneResult]) -> dict[str, list[SceneResult]]:
    return {
        "sentinel2": [r for r in results if is_sentinel2(r.name)],
        "landsat": [r for r in results if not is_sentinel2(r.name)],
        "all": results,
    }


def summarise(results: list[SceneResult], seconds: dict[str, float], repeats: int = 1) -> dict:
    """Per-scene and pooled scores per method, and throughput (JSON-ready)."""
    out: dict = {"scenes": {}, "pooled": {}, "throughput_mp_s": {}}
    methods = [m for m in METHODS if m in results[0].counts] if results else []
    for r in results:
        out["scenes"][r.name] = {m: metrics.scores(*r.counts[m]) for m in methods}
    for g, rs in _groups(results).items():
        if rs:
            out["pooled"][g] = {m: metrics.scores(*sum(r.counts[m] for r in rs)) for m in methods}
    mp = sum(r.label.size for r in results) * repeats / 1e6
    for m, s in seconds.items():
        if s > 0:
            out["throughput_mp_s"][m] = mp / s
    if out["throughput_mp_s"].get("teacher"):
        out["speedup"] = out["throughput_mp_s"]["ours"] / out["throughput_mp_s"]["teacher"]
    out["timing"] = (
        "tiled inference of a loaded model on in-memory reflectance, ours and the teacher "
        "alike (pipeline.run end to end: variants.<name>.cost)"
    )
    return out


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def _fit(mp: list[float], seconds: list[float]) -> tuple[float, float] | None:
    """Least-squares ``seconds = fixed + per_mp * megapixels`` over the inputs (or None)."""
    if len(mp) < 3 or max(mp) - min(mp) < 1e-9:
        return None
    per_mp, fixed = np.polyfit(np.asarray(mp), np.asarray(seconds), 1)
    return float(fixed), float(per_mp)


def summarise_variants(ev: Evaluation, n_models: int) -> dict:
    """Per variant: scores per chip and pooled, clear-scene false positives, cost."""
    out: dict = {}
    none_seconds = sum(ev.variant_seconds[NONE.name].values())
    none_fit = None
    for name, times in ev.variant_seconds.items():
        v = VARIANT_BY_NAME[name]
        entry: dict = {
            "description": v.description,
            "settings": ev.settings.get(name, {}),
            "scenes": {r.name: metrics.scores(*r.variants[name]) for r in ev.results},
            "pooled": {},
        }
        for g, rs in _groups(ev.results).items():
            if rs:
                entry["pooled"][g] = metrics.scores(*sum(r.variants[name] for r in rs))
        if ev.clear:
            per_scene = {
                c.scene.name: {
                    "split": c.scene.side,
                    "valid_pixels": c.valid_pixels,
                    "cloud_pixels": c.cloud_pixels[name],
                    "percent": _percent(c.cloud_pixels[name], c.valid_pixels),
                }
                for c in ev.clear
            }
            cloud = sum(c.cloud_pixels[name] for c in ev.clear)
            valid = sum(c.valid_pixels for c in ev.clear)
            entry["clear_scenes"] = {
                "scenes": per_scene,
                "pooled_percent": _percent(cloud, valid),
                "max_percent": max(s["percent"] for s in per_scene.values()),
            }
        total = sum(times.values())
        mp = sum(ev.pixels[k] for k in times) * ev.repeats / 1e6
        names = list(times)
        fit = _fit([ev.pixels[k] / 1e6 for k in names], [times[k] / ev.repeats for k in names])
        if name == NONE.name:
            none_fit = fit
        entry["cost"] = {
            "model_passes_per_tile": v.passes(n_models),
            "inputs": len(times),
            "megapixels": mp,
            "seconds": total,
            "mp_per_s": mp / total if total else 0.0,
            "time_ratio_to_none": total / none_seconds if none_seconds else float("nan"),
            "fixed_seconds_per_run": fit[0] if fit else None,
            "seconds_per_mp": fit[1] if fit else None,
        }
        out[name] = entry
    for entry in out.values():  # marginal (large-scene) cost relative to none
        per_mp = entry["cost"]["seconds_per_mp"]
        ok = none_fit and per_mp and none_fit[1] > 0
        entry["cost"]["marginal_ratio_to_none"] = per_mp / none_fit[1] if ok else None
    return out


def summarise_teacher_clear(ev: Evaluation) -> dict | None:
    rows = [c for c in ev.clear if c.teacher_cloud is not None]
    if not rows:
        return None
    return {
        "scenes": {c.scene.name: _percent(c.teacher_cloud, c.teacher_valid) for c in rows},
        "pooled_percent": _percent(
            sum(c.teacher_cloud for c in rows), sum(c.teacher_valid for c in rows)
        ),
        "threshold": 0.5,
    }


# -- tables -----------------------------------------------------------------------------------


def format_table(summary: dict) -> str:
    cols = metrics.METRIC_NAMES
    lines = [f"{'scene':<24}{'method':<12}" + "".join(f"{c[:9]:>10}" for c in cols)]
    rows = [(n, v) for n, v in summary["scenes"].items()]
    rows += [(f"POOLED {g}", v) for g, v in summary["pooled"].items()]
    for name, by_method in rows:
        for m, s in by_method.items():
            lines.append(f"{name:<24}{m:<12}" + "".join(f"{s[c]:>10.4f}" for c in cols))
        lines.append("")
    tp = summary["throughput_mp_s"]
    lines.append(
        "throughput (megapixels/s; "
        + summary.get("timing", "tiled inference")
        + "): "
        + ", ".join(f"{k} {v:.3f}" for k, v in tp.items())
    )
    if "speedup" in summary:
        lines.append(f"speed-up ours vs teacher: {summary['speedup']:.1f}x")
    return "\n".join(lines)


SCORE_COLUMNS = (
    ("iou", "IoU"),
    ("f1", "F1"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("balanced_accuracy", "bal. acc."),
)
#: Shown for the ensemble variants when no extra model was given.
PENDING = "pending: no second model given (`--ensemble-model`)"


def _pending_variants(summary: dict) -> list[str]:
    ran = set(summary.get("variants", {}))
    return [v.name for v in VARIANTS if v.ensemble and v.name not in ran]


def markdown_tables(summary: dict) -> str:
    """The variant tables (chips, clear scenes, cost) as Markdown."""
    variants = summary.get("variants", {})
    pending = _pending_variants(summary)
    meta = summary.get("run", {})
    lines = []
    if meta:
        lines += [
            f"Generated {meta['date']} on {meta['machine']} by `{meta['command']}` "
            f"(model `{meta['model']}`, {meta['repeats']} timing repeat(s)).",
            "",
        ]
    thresholds = ", ".join(
        f"{name} {v['settings'].get('threshold', float('nan')):g}" for name, v in variants.items()
    )
    for group in GROUPS:
        if not any(group in v["pooled"] for v in variants.values()):
            continue
        chips = [n for n in summary["scenes"] if is_sentinel2(n) == (group == "sentinel2")]
        lines += [
            f"#### {GROUP_TITLES[group]} ({', '.join(chips)}), pooled",
            "",
            "| variant | " + " | ".join(t for _, t in SCORE_COLUMNS) + " |",
            "|---|" + "---:|" * len(SCORE_COLUMNS),
        ]
        for name, v in variants.items():
            s = v["pooled"][group]
            lines.append(
                f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k, _ in SCORE_COLUMNS) + " |"
            )
        lines += [f"| {name} | {PENDING} |" + " |" * (len(SCORE_COLUMNS) - 1) for name in pending]
        for method, label in (("teacher", "teacher @0.5"), ("brightness", "brightness")):
            s = summary["pooled"].get(group, {}).get(method)
            if s:
                lines.append(
                    f"| *{label}* | " + " | ".join(f"*{s[k]:.3f}*" for k, _ in SCORE_COLUMNS) + " |"
                )
        lines.append("")
    lines += [f"Thresholds (the pipeline's defaults, never tuned per option): {thresholds}.", ""]

    first = next(iter(variants.values()), {})
    if "clear_scenes" in first:
        teacher = summary.get("clear_scenes_teacher")
        names = list(variants)
        header = "| scene | split | MP | " + " | ".join(names) + " |"
        header += " teacher @0.5 |" if teacher else ""
        lines += [
            "#### False positives on held-out clear scenes (% of valid pixels flagged cloud)",
            "",
            header,
            "|---|---|---:|" + "---:|" * (len(names) + bool(teacher)),
        ]
        for scene, row in first["clear_scenes"]["scenes"].items():
            cells = [
                f"{variants[n]['clear_scenes']['scenes'][scene]['percent']:.2f}" for n in names
            ]
            if teacher:
                cells.append(f"{teacher['scenes'][scene]:.2f}")
            mp = summary["pixels"][scene] / 1e6
            lines.append(f"| {scene} | {row['split']} | {mp:.2f} | " + " | ".join(cells) + " |")
        pooled = [f"**{variants[n]['clear_scenes']['pooled_percent']:.2f}**" for n in names]
        if teacher:
            pooled.append(f"**{teacher['pooled_percent']:.2f}**")
        lines.append("| **pooled** | | | " + " | ".join(pooled) + " |")
        lines.append("")

    lines += [
        "#### Cost (`pipeline.run` end to end on all inputs above, same process, interleaved)",
        "",
        "| variant | model passes per tile | MP/s | time × none | s per MP (fit) "
        "| fixed s per run (fit) | marginal × none |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for name, v in variants.items():
        c = v["cost"]
        lines.append(
            f"| {name} | {c['model_passes_per_tile']} | {c['mp_per_s']:.2f} "
            f"| {c['time_ratio_to_none']:.2f} | {num(c['seconds_per_mp'], '.3f')} "
            f"| {num(c['fixed_seconds_per_run'], '.3f')} "
            f"| {num(c['marginal_ratio_to_none'], '.2f')} |"
        )
    lines += [f"| {name} | {PENDING} | | | | | |" for name in pending]
    tp = summary.get("throughput_mp_s", {})
    if "teacher" in tp:
        lines += [
            "",
            f"Ours vs the teacher on the labelled chips, both as tiled inference of a loaded "
            f"model on in-memory reflectance: ours {tp['ours']:.2f} MP/s, teacher "
            f"{tp['teacher']:.2f} MP/s ({tp['ours'] / tp['teacher']:.1f}x).",
        ]
    return "\n".join(lines) + "\n"


def markers(key: str) -> tuple[str, str]:
    return (
        f"<!-- BEGIN {key}: generated, edits between these lines are overwritten -->",
        f"<!-- END {key} -->",
    )


def write_markdown(path: Path, text: str, key: str) -> None:
    """Put ``text`` between ``key``'s markers in ``path``: replaced there if the markers exist,
    appended otherwise (a hand-written page around them is kept), a new file if none."""
    begin, end = markers(key)
    block = f"{begin}\n{text.rstrip()}\n{end}"
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = (old.rstrip() + "\n\n" if old.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def machine() -> str:
    """CPU model and core count, e.g. for the tables' header."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU ({name})"


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """How this run was started, absolute paths shown relative to the working folder."""
    shown = sys.argv[1:] if argv is None else argv
    args = [os.path.relpath(a) if a.startswith("/") else a for a in map(str, shown)]
    return " ".join(["python -m", module, *args])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="Evaluate the ONNX model through the pipeline, its inference options and "
        "the teacher."
    )
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / "../shared/data")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models/cloudmask.onnx")
    parser.add_argument(
        "--ensemble-model",
        type=Path,
        action="append",
        default=[],
        help="another ONNX model for the ensemble variants (repeatable)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=[v.name for v in VARIANTS],
        default=None,
        help="variants of ours to run (default: all that apply; 'none' always runs)",
    )
    parser.add_argument("--labelled-dir", default="dev_labelled")
    parser.add_argument("--unlabelled-dir", default="s2_unlabelled")
    parser.add_argument("--split-dir", type=Path, default=REPO_ROOT / "training/splits")
    parser.add_argument("--scenes", nargs="*", default=None, help="chip names (default: all)")
    parser.add_argument("--no-teacher", action="store_true")
    parser.add_argument("--no-clear-scenes", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="timing repetitions")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="write the variant tables here (between markers, the rest of the page is kept)",
    )
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    scenes = labelled_scenes(args.data_root / args.labelled_dir, args.scenes)
    if not scenes:
        raise SystemExit(
            f"no <name>_image.tif/<name>_label.tif pairs in {args.data_root / args.labelled_dir}"
        )
    model = CloudModel(args.model)
    variants = [VARIANT_BY_NAME[n] for n in args.variants] if args.variants else list(VARIANTS)
    skipped = []
    if not args.ensemble_model:
        if args.variants and any(v.ensemble for v in variants):
            raise SystemExit("the ensemble variants need --ensemble-model PATH")
        skipped += [v.name for v in variants if v.ensemble]
        variants = [v for v in variants if not v.ensemble]
    if model.info.reference is None and any(v.histogram_matching for v in variants):
        if args.variants:
            raise SystemExit(f"{args.model} has no reference quantiles: no histogram matching")
        skipped.append("histogram_matching")
        variants = [v for v in variants if not v.histogram_matching]
    clear: list[ClearScene] = []
    if not args.no_clear_scenes:
        try:
            clear = clear_scenes(args.data_root / args.unlabelled_dir, args.split_dir)
        except FileNotFoundError as exc:
            raise SystemExit(str(exc)) from None
    log = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    log(
        f"variants {', '.join(v.name for v in variants)}"
        + (f" (skipped: {', '.join(skipped)})" if skipped else "")
        + f"; {len(scenes)} labelled chip(s), {len(clear)} held-out clear scene(s), "
        f"{args.repeats} repeat(s)"
    )
    started = time.perf_counter()
    ev = evaluate(
        args.model,
        scenes,
        clear,
        variants,
        args.ensemble_model,
        not args.no_teacher,
        args.repeats,
        log,
    )
    summary = summarise(ev.results, ev.seconds, args.repeats)
    summary["model"] = {
        "path": str(args.model),
        "name": model.info.name,
        "version": model.info.version,
        "threshold": model.info.threshold,
    }
    summary["variants"] = summarise_variants(ev, 1 + len(args.ensemble_model))
    summary["skipped_variants"] = skipped
    summary["pixels"] = ev.pixels
    teacher_clear = summarise_teacher_clear(ev)
    if teacher_clear:
        summary["clear_scenes_teacher"] = teacher_clear
    command = command_line("training.evaluate", argv)
    summary["run"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": command,
        "model": f"{model.info.name} {model.info.version}",
        "repeats": args.repeats,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(
        f"model {model.info.name} {model.info.version} (threshold {model.info.threshold}) "
        f"vs teacher ukis-csmask 4-band vs brightness >= {BRIGHTNESS_THRESHOLD}"
    )
    print(format_table(summary))
    print()
    print(markdown_tables(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    if args.markdown:
        write_markdown(args.markdown, markdown_tables(summary), MARKDOWN_KEY)
    return summary


if __name__ == "__main__":
    main()
