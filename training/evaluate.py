"""Evaluate an ONNX cloud model on human-labelled GeoTIFFs, side by side with the teacher.

    python -m training.evaluate --data-root ../shared/data [--model models/cloudmask.onnx]

The model runs through the plugin's own code path: :class:`qgis_cloudmask.core.model.CloudModel`
and :func:`qgis_cloudmask.core.inference.classify_array` (tiling, blending, threshold from the
model's metadata). The teacher (ukis-csmask 4-band ONNX, L2A model for L2A chips, L1C model
otherwise) and a simple brightness threshold run on the same reflectance. Metrics come from
pooled tp/fp/fn/tn (:mod:`training.metrics`), per scene and pooled. Throughput (megapixels per
second of the whole tiled inference) of ours and the teacher is measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qgis_cloudmask.core import inference
from qgis_cloudmask.core.model import CloudModel
from training import metrics, rasters
from training.config import REPO_ROOT
from training.datasets import LabelledScene, labelled_scenes
from training.teacher import Teacher

#: Product level of the dev_labelled chips (others: top-of-atmosphere -> the L1C teacher).
DEV_LEVELS = {"oncloudn_2": "l2a", "oncloudn_4": "l2a"}
#: "Simple brightness threshold" baseline: cloud where mean visible reflectance >= this.
BRIGHTNESS_THRESHOLD = 0.3
METHODS = ("ours", "teacher", "brightness")


@dataclass
class SceneResult:
    name: str
    label: np.ndarray  # H x W float (1 cloud, 0 clear, NaN ignore)
    reflectance: np.ndarray  # 4 x H x W, model order
    prob: dict[str, np.ndarray] = field(default_factory=dict)  # method -> H x W
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # method -> [tp, fp, fn, tn]


def brightness_probability(reflectance: np.ndarray) -> np.ndarray:
    """Mean visible reflectance scaled so that ``BRIGHTNESS_THRESHOLD`` maps to 0.5."""
    return np.clip(reflectance[:3].mean(0) * (0.5 / BRIGHTNESS_THRESHOLD), 0.0, 1.0)


def is_sentinel2(name: str) -> bool:
    return not name.startswith("ukis_landsat")


def run_methods(
    model: CloudModel, scenes: list[LabelledScene], teacher: bool = True, repeats: int = 1
) -> tuple[list[SceneResult], dict[str, float]]:
    """Predict every scene with every method; return results and seconds spent per method."""
    info = model.info
    teachers: dict[str, Teacher] = {}
    seconds = {"ours": 0.0, "teacher": 0.0}
    results = []
    for scene in scenes:
        refl, label = scene.read(0, 0, scene.height, scene.width)
        res = SceneResult(scene.name, label, refl)
        valid = np.isfinite(label) & ~(refl == 0).all(0)
        for _ in range(repeats):
            t0 = time.perf_counter()
            prob, mask, _ = inference.classify_array(
                model.predict, refl, info.tile_size, info.recommended_overlap, info.threshold
            )
            seconds["ours"] += time.perf_counter() - t0
        res.prob["ours"] = prob
        res.counts["ours"] = metrics.confusion(mask == 1, label == 1, valid & (mask != 255))
        if teacher:
            level = DEV_LEVELS.get(scene.name, "l1c")
            t = teachers.setdefault(level, Teacher(level))
            for _ in range(repeats):
                t0 = time.perf_counter()
                p = t.probability(refl[rasters.MODEL_TO_TEACHER])
                seconds["teacher"] += time.perf_counter() - t0
            res.prob["teacher"] = p
            res.counts["teacher"] = metrics.confusion(p >= 0.5, label == 1, valid & np.isfinite(p))
        b = brightness_probability(refl)
        res.prob["brightness"] = b
        res.counts["brightness"] = metrics.confusion(b >= 0.5, label == 1, valid)
        results.append(res)
    return results, seconds


def summarise(results: list[SceneResult], seconds: dict[str, float], repeats: int = 1) -> dict:
    """Per-scene and pooled scores per method, and throughput (JSON-ready)."""
    out: dict = {"scenes": {}, "pooled": {}, "throughput_mp_s": {}}
    methods = [m for m in METHODS if m in results[0].counts] if results else []
    for r in results:
        out["scenes"][r.name] = {m: metrics.scores(*r.counts[m]) for m in methods}
    groups = {
        "sentinel2": [r for r in results if is_sentinel2(r.name)],
        "landsat": [r for r in results if not is_sentinel2(r.name)],
        "all": results,
    }
    for g, rs in groups.items():
        if rs:
            out["pooled"][g] = {m: metrics.scores(*sum(r.counts[m] for r in rs)) for m in methods}
    mp = sum(r.label.size for r in results) * repeats / 1e6
    for m, s in seconds.items():
        if s > 0:
            out["throughput_mp_s"][m] = mp / s
    if out["throughput_mp_s"].get("teacher"):
        out["speedup"] = out["throughput_mp_s"]["ours"] / out["throughput_mp_s"]["teacher"]
    return out


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
        "throughput (tiled inference, megapixels/s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in tp.items())
    )
    if "speedup" in summary:
        lines.append(f"speed-up ours vs teacher: {summary['speedup']:.1f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate the ONNX model vs the teacher.")
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / "../shared/data")
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models/cloudmask.onnx")
    parser.add_argument("--labelled-dir", default="dev_labelled")
    parser.add_argument("--scenes", nargs="*", default=None, help="scene names (default: all)")
    parser.add_argument("--no-teacher", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="timing repetitions")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    scenes = labelled_scenes(args.data_root / args.labelled_dir, args.scenes)
    if not scenes:
        raise SystemExit(
            f"no <name>_image.tif/<name>_label.tif pairs in {args.data_root / args.labelled_dir}"
        )
    model = CloudModel(args.model)
    results, seconds = run_methods(model, scenes, not args.no_teacher, args.repeats)
    summary = summarise(results, seconds, args.repeats)
    summary["model"] = {
        "path": str(args.model),
        "name": model.info.name,
        "version": model.info.version,
        "threshold": model.info.threshold,
    }
    print(
        f"model {model.info.name} {model.info.version} (threshold {model.info.threshold}) "
        f"vs teacher ukis-csmask 4-band vs brightness >= {BRIGHTNESS_THRESHOLD}"
    )
    print(format_table(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
