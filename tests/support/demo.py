"""``make demo``: the main job end to end, as a user runs it.

Writes a deterministic Sentinel-2 Level-2A product as users download it (a ``.zip`` holding the
``.SAFE`` folder, processing baseline 05.09, so DN carry the +1000 offset), runs
``cloudmask:detectclouds`` on the zip through ``qgis_process`` with the bundled model - bands and
radiometry decided automatically from the product - prints the statistics and the decisions,
with small-patch removal and a 50 m cloud buffer, and writes the styled mask, the probability,
the cloud polygons, the masked image, the statistics JSON and a quicklook PNG (RGB | mask
overlay) to the output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from qgis_cloudmask.core import classes
from tests.support import qgis_process, s2product, synthetic

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "models" / "cloudmask.onnx"


def quicklook(scene: np.ndarray, mask: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb = np.stack([scene[2], scene[1], scene[0]], axis=-1).astype(np.float32) / 10000
    rgb = np.clip(rgb / np.percentile(rgb, 98), 0, 1)
    overlay = rgb.copy()
    for c in classes.MASK_CLASSES:  # the colours QGIS shows (the .qml), blended by their alpha
        if c.rgba[3]:
            colour = np.array(c.rgba[:3]) / 255
            overlay[mask == c.value] = 0.15 * overlay[mask == c.value] + 0.85 * colour
    overlay[mask == 255] = 0.3
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    label = "cloud mask (magenta: cloud, pink: cloud buffer)"
    for ax, img, name in zip(axes, (rgb, overlay), ("RGB (B04, B03, B02)", label)):
        ax.imshow(img)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "demo_output")
    parser.add_argument("--size", type=int, nargs=2, default=(768, 1024), metavar=("H", "W"))
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    h, w = args.size
    scene = synthetic.sample_scene(h, w, seed=42)
    product = s2product.write_product(
        out, scene + 1000, level="L2A", baseline="05.09", date="20240612T100031", zip_it=True
    )
    src = product.zip
    if BUNDLED.is_file():
        model, note = BUNDLED, f"bundled model {BUNDLED.relative_to(REPO)}"
    else:
        model = Path(synthetic.write_pixel_model(out / "toy_blue_threshold.onnx"))
        note = "TOY per-pixel model (blue > 0.2), NOT a trained cloud detector"
        print(
            "NOTE: no trained model is bundled yet (models/cloudmask.onnx is missing).\n"
            "      The demo runs the real pipeline with a toy per-pixel model instead\n"
            "      (cloud = blue reflectance above 0.2); its mask is not a real cloud mask.\n"
        )
    print(f"input : {src.name} (Sentinel-2 L2A product zip, {h} x {w} px at 10 m, EPSG:32633)")
    print(f"model : {note}")
    params = {
        "INPUT": src,
        "MODEL": model,
        "OUTPUT": out / "cloud_mask.tif",
        "OUTPUT_PROBABILITY": out / "cloud_probability.tif",
        "OUTPUT_STATS": out / "cloud_stats.json",
        "OUTPUT_VECTOR": out / "cloud_polygons.gpkg",
        "OUTPUT_MASKED": out / "masked.tif",
        "MIN_CLOUD_SIZE": 20,
        "BUFFER": 50,
    }
    print(
        "run   : qgis_process --json run cloudmask:detectclouds -- "
        + " ".join(f"{k}={v}" for k, v in params.items())
    )
    rc, data, log = qgis_process.run_json("cloudmask:detectclouds", params, out / "qgis-config")
    if rc != 0 or data is None:
        print(log, file=sys.stderr)
        print("demo FAILED", file=sys.stderr)
        return 1
    res = data["results"]
    stats = json.loads((out / "cloud_stats.json").read_text())
    print("\nresults:")
    for key in (
        "CLOUD_PERCENT",
        "CLOUD_PIXELS",
        "BUFFER_PERCENT",
        "BUFFER_PIXELS",
        "CLEAR_PIXELS",
        "NODATA_PIXELS",
        "REMOVED_PIXELS",
        "CLOUD_AREA",
        "AREA_UNIT",
        "MODEL_NAME",
        "THRESHOLD_USED",
        "BANDS_USED",
        "RADIOMETRY_USED",
    ):
        print(f"  {key:<15} {res[key]}")
    print(f"  polygons        {stats['polygons']['features']} in cloud_polygons.gpkg")
    print(f"  run time       {stats['seconds']} s on {stats['model']['execution_provider']}")
    print("\ndecided automatically:")
    for key in ("input", "bands", "radiometry"):
        setting = stats["settings"][key]
        print(f"  {key:<10} {setting['value']}\n  {'':<10} ({setting['reason']})")
    for warning in stats["warnings"]:
        print(f"  WARNING: {warning}")

    from osgeo import gdal

    mask = gdal.Open(str(out / "cloud_mask.tif")).ReadAsArray()
    quicklook(scene, mask, out / "quicklook.png", f"{note}: {res['CLOUD_PERCENT']:.1f} % cloud")
    print(
        f"\nwrote {out}/: {src.name} ({product.safe.name}/) cloud_mask.tif (+ .qml) "
        "cloud_probability.tif (+ .qml) cloud_polygons.gpkg masked.tif (+ .qml) "
        "cloud_stats.json quicklook.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
