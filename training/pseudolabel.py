"""Pseudo-label real unlabelled Sentinel-2 scenes with the teacher (soft cloud probabilities).

    python -m training.pseudolabel --data-root ../shared/data --out cache/teacher

For every ``s2_unlabelled/<id>/image.tif`` this writes ``<out>/<id>.npy``: teacher P(cloud)
as float16 ``H x W`` (NaN on nodata), plus ``<out>/<id>.json`` (teacher model, level, time).
Scenes already done are skipped, so an interrupted run resumes. These are *teacher
pseudo-labels*, not ground truth.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from training import rasters
from training.teacher import Teacher


def unlabelled_scenes(data_root: Path) -> list[Path]:
    """Scene folders of ``s2_unlabelled`` (those holding an ``image.tif``), sorted."""
    root = Path(data_root) / "s2_unlabelled"
    return sorted(p for p in root.iterdir() if (p / "image.tif").is_file())


def pseudolabel_scene(scene: Path, out: Path, teachers: dict[str, Teacher]) -> dict:
    info = rasters.scene_info(scene / "source.json")
    refl, valid = rasters.read_reflectance(scene / "image.tif", info.radiometry)
    teacher = teachers.setdefault(info.level, Teacher(info.level))
    t0 = time.perf_counter()
    prob = teacher.probability(refl[rasters.MODEL_TO_TEACHER], valid)
    seconds = time.perf_counter() - t0
    np.save(out / f"{scene.name}.npy", prob.astype(np.float16))
    meta = {
        "scene": scene.name,
        "teacher": teacher.model_file.name,
        "teacher_version": teacher.version,
        "level": info.level,
        "radiometry": info.radiometry.name,
        "clouds_visible": info.clouds,
        "height": int(prob.shape[0]),
        "width": int(prob.shape[1]),
        "cloud_fraction_p50": float(np.nanmean(prob >= 0.5)) if valid.any() else 0.0,
        "seconds": round(seconds, 1),
        "megapixels_per_s": round(prob.size / 1e6 / max(seconds, 1e-9), 4),
    }
    (out / f"{scene.name}.json").write_text(json.dumps(meta, indent=2))
    return meta


def label_all(data_root: Path, out: Path, force: bool = False) -> list[dict]:
    """Pseudo-label every unlabelled scene not yet in ``out`` (all with ``force``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teachers: dict[str, Teacher] = {}
    scenes = unlabelled_scenes(data_root)
    done = []
    for i, scene in enumerate(scenes, 1):
        if (out / f"{scene.name}.json").exists() and not force:
            continue
        meta = pseudolabel_scene(scene, out, teachers)
        done.append(meta)
        print(
            f"[{i}/{len(scenes)}] {scene.name}: {meta['teacher']} "
            f"cloud {100 * meta['cloud_fraction_p50']:.1f}% in {meta['seconds']} s "
            f"({meta['megapixels_per_s']} MP/s)",
            flush=True,
        )
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("cache/teacher"))
    parser.add_argument("--force", action="store_true", help="redo scenes already labelled")
    args = parser.parse_args(argv)
    done = label_all(args.data_root, args.out, args.force)
    print(f"{len(done)} scene(s) labelled; cache: {args.out}")


if __name__ == "__main__":
    main()
