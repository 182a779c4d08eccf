"""``make bench``: throughput and peak memory of the tiled inference, measured not assumed.

Reference: the bare model on batches of tiles (no I/O, no tiling) in the same process. Each
case then runs the headless pipeline (open, decide bands and radiometry, load the model, GDAL
windowed read -> tiles -> model -> blend -> GDAL write) in a fresh child process, so its peak RSS
is its own. Figures are printed as megapixels/s, as a ratio to the reference, and peak RSS
against raster size: memory should grow neither with the raster's height nor with its width.

Two kinds of cases:

* ``--sizes``: small rasters written in one piece, each run twice (inference only, and with
  every post-processing step);
* ``--options``: one raster run with each inference option (TTA flips and d8, histogram
  matching, an ensemble of two models) against the plain run in the same bench: their cost as
  Mpx/s, as a ratio to the plain run, and their peak RSS;
* ``--big``: large rasters (a 200000 px wide strip, a 200000 px tall one, a whole Sentinel-2
  tile) written block by block as DEFLATE-compressed tiled GeoTIFFs, never whole in memory,
  run with inference only. ``--big none`` skips them (they take 10 to 15 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "models" / "cloudmask.onnx"

DEFAULT_SIZES = "1024x1024,2048x1024,4096x1024,4096x2048"
#: HxW: 200000 px wide (the case where memory used to grow), 200000 px tall, a Sentinel-2 tile
DEFAULT_BIG = "2000x200000,200000x2000,10980x10980"
#: Side (px) of the synthetic scene the big rasters repeat (mirrored, so the scene has no seams)
PATTERN = 2048


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited from
    the parent across exec, so a child measures only itself)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def model_path(workdir: Path) -> tuple[Path, str]:
    if BUNDLED.is_file():
        return BUNDLED, "bundled model"
    from tests.support import synthetic

    return Path(
        synthetic.write_pixel_model(workdir / "toy.onnx")
    ), "TOY per-pixel model (no trained model bundled)"


def reference_mpx_per_s(model_file: Path, batch: int, seconds: float = 3.0) -> float:
    from qgis_cloudmask.core.model import CloudModel

    model = CloudModel(model_file)
    t = model.info.tile_size
    tiles = np.random.default_rng(0).uniform(0, 0.6, (batch, 4, t, t)).astype(np.float32)
    model.predict(tiles)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict(tiles)
        n += batch
    return n * t * t / 1e6 / (time.perf_counter() - start)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"HxW,HxW"`` -> ``[(H, W), ...]``; ``""`` or ``"none"`` -> ``[]``."""
    if text.strip().lower() in ("", "none"):
        return []
    sizes = []
    for size in text.split(","):
        h, w = (int(v) for v in size.strip().lower().split("x"))
        sizes.append((h, w))
    return sizes


def write_big_geotiff(path: Path, height: int, width: int, seed: int = 1) -> str:
    """A ``4 x height x width`` uint16 Sentinel-2-like GeoTIFF (DEFLATE, 256 px tiles), written
    ``PATTERN`` px block by block from one :func:`synthetic.sample_scene` mirrored alternately,
    so the parent never holds more than one block (about 32 MB) and a tiny GDAL cache."""
    from osgeo import gdal, osr

    from tests.support import synthetic

    gdal.UseExceptions()
    scene = synthetic.sample_scene(PATTERN, PATTERN, seed)
    previous_cache = gdal.GetCacheMax()
    gdal.SetCacheMax(64 * 1024 * 1024)
    try:
        ds = gdal.GetDriverByName("GTiff").Create(
            str(path),
            width,
            height,
            4,
            gdal.GDT_UInt16,
            options=[
                "TILED=YES",
                "COMPRESS=DEFLATE",
                "ZLEVEL=1",
                "PREDICTOR=2",
                "BIGTIFF=YES",
                "NUM_THREADS=ALL_CPUS",
            ],
        )
        ds.SetGeoTransform((500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(32633)
        ds.SetProjection(srs.ExportToWkt())
        for i, y0 in enumerate(range(0, height, PATTERN)):
            rows = scene[:, ::-1] if i % 2 else scene
            for j, x0 in enumerate(range(0, width, PATTERN)):
                block = rows[:, :, ::-1] if j % 2 else rows
                block = block[:, : height - y0, : width - x0]
                ds.WriteRaster(
                    x0,
                    y0,
                    block.shape[2],
                    block.shape[1],
                    np.ascontiguousarray(block).tobytes(),
                    band_list=[1, 2, 3, 4],
                )
        ds.FlushCache()
        ds = None
    finally:
        gdal.SetCacheMax(previous_cache)
    return str(path)


#: The post-processing the "+ post" rows add (every step the pipeline has).
POST = {"min_cloud_size": 20, "buffer": 60.0}


#: Inference options the ``--options`` rows compare (MaskRequest fields; "ensemble" adds a
#: copy of the model under another name, so two sessions run like any two-model ensemble).
OPTIONS = {
    "plain": {},
    "tta flips": {"tta": "flips"},
    "tta d8": {"tta": "d8"},
    "histogram matching": {"histogram_matching": True},
    "ensemble of 2": {"ensemble": True},
}


def child(raster: str, model_file: str, batch: int, post: bool, options: dict) -> None:
    """Run the headless pipeline (what the algorithm and the command line run) and print one
    JSON line. Timed: the whole run - open, decide bands and radiometry (decimated first pass),
    load the model, read, infer, blend, write; with ``post`` also sieve, buffer, polygons and
    the masked image."""
    import shutil

    from qgis_cloudmask import pipeline

    rss_before = peak_rss_mb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(raster))) as tmp:
        extra = dict(POST, vector=f"{tmp}/clouds.gpkg", masked=f"{tmp}/masked.tif") if post else {}
        options = dict(options)
        if options.pop("ensemble", False):
            shutil.copy(model_file, f"{tmp}/member2.onnx")
            model_file = [model_file, f"{tmp}/member2.onnx"]
        extra.update(options)
        result = pipeline.run(
            pipeline.MaskRequest(
                raster,
                f"{tmp}/m.tif",
                probability=f"{tmp}/p.tif",
                model=model_file,
                batch_size=batch,
                **extra,
            )
        )
        out_mb = sum(os.path.getsize(f"{tmp}/{n}") for n in ("m.tif", "p.tif")) / 2**20
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": seconds,
                "mpx": result.stats.total_pixels / 1e6,
                "cloud_percent": result.stats.cloud_percent,
                "peak_rss_mb": peak_rss_mb(),
                "rss_before_mb": rss_before,
                "outputs_mb": out_mb,
            }
        )
    )


def tile_factor(height: int, width: int, tile: int, overlap: int) -> float:
    """Tiles the inference predicts over the tiles of the plan (> 1: tiles crossing the border
    of a column block are predicted once per block), counted on a fully valid raster."""
    from qgis_cloudmask.core import inference

    plan = inference.TilingPlan(height, width, tile, overlap)
    blocks = getattr(inference, "column_blocks", None)
    if blocks is None:  # an inference without column blocks predicts each tile once
        return 1.0
    return sum(len(b.col_starts) for b in blocks(plan)) * len(plan.row_starts) / plan.n_tiles


def run_child(
    raster: str, model_file: Path, batch: int, post: bool, options: dict | None = None
) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.bench",
            "--batch",
            str(batch),
            "--child",
            raster,
            str(model_file),
            *(["--post"] if post else []),
            *(["--options", json.dumps(options)] if options else []),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise SystemExit(f"child failed on {raster}:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        help=f"comma-separated HxW small rasters, each also run with post-processing "
        f"(default {DEFAULT_SIZES}; 'none' skips them)",
    )
    parser.add_argument(
        "--big",
        default=DEFAULT_BIG,
        help=f"comma-separated HxW large rasters written block by block, inference only "
        f"(default {DEFAULT_BIG}; 'none' skips them: 10 to 15 minutes on 2 cores)",
    )
    parser.add_argument(
        "--workdir",
        help="folder for the synthetic inputs and outputs (default: a temporary folder; the big "
        "cases need about 2 GB free there)",
    )
    parser.add_argument(
        "--options-size",
        default="2048x1024",
        help="HxW raster run with each inference option (default 2048x1024; 'none' skips)",
    )
    parser.add_argument("--child", nargs=2, metavar=("RASTER", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--post", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.batch, args.post, json.loads(args.options))
        return 0

    from qgis_cloudmask.core.model import read_info
    from tests.support import synthetic

    small, big = parse_sizes(args.sizes), parse_sizes(args.big)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        model_file, label = model_path(work)
        info = read_info(str(model_file))
        ref = reference_mpx_per_s(model_file, args.batch)
        print(f"model: {label} ({model_file.name}); batch {args.batch}")
        from qgis_cloudmask.core import inference

        print(
            f"GDAL_CACHEMAX={os.environ.get('GDAL_CACHEMAX', 'unset')}; {os.cpu_count()} CPU(s); "
            f"column blocks of at most {getattr(inference, 'BLOCK_WIDTH', 'unlimited')} px"
        )
        print(f"reference (bare model on tiles, same process): {ref:.3f} Mpx/s\n")
        print(
            f"{'raster HxW':>20} {'Mpx':>7} {'s':>8} {'Mpx/s':>7} {'vs ref':>7} "
            f"{'tiles x':>8} {'peak RSS MB':>12} {'out MB':>7}"
        )

        def row(name: str, h: int, w: int, r: dict) -> None:
            mps = r["mpx"] / r["seconds"]
            factor = tile_factor(h, w, info.tile_size, info.recommended_overlap)
            print(
                f"{name:>20} {r['mpx']:7.2f} {r['seconds']:8.2f} {mps:7.3f} {mps / ref:7.2f} "
                f"{factor:8.3f} {r['peak_rss_mb']:12.0f} {r['outputs_mb']:7.0f}",
                flush=True,
            )

        for h, w in small:
            raster = synthetic.write_geotiff(work / f"{h}x{w}.tif", synthetic.sample_scene(h, w, 1))
            for post in (False, True):
                r = run_child(raster, model_file, args.batch, post)
                row(f"{h}x{w}" + (" + post" if post else ""), h, w, r)
            os.remove(raster)
        for h, w in parse_sizes(args.options_size):
            raster = synthetic.write_geotiff(work / f"{h}x{w}.tif", synthetic.sample_scene(h, w, 1))
            print(f"\ninference options on {h}x{w} (ratio: Mpx/s over the plain run's, same bench)")
            plain = None
            for name, options in OPTIONS.items():
                r = run_child(raster, model_file, args.batch, False, options)
                mps = r["mpx"] / r["seconds"]
                plain = plain or mps
                print(
                    f"{name:>20} {r['mpx']:7.2f} {r['seconds']:8.2f} {mps:7.3f} "
                    f"{'x' + format(mps / plain, '.2f'):>7} {'':>8} {r['peak_rss_mb']:12.0f} "
                    f"{r['outputs_mb']:7.0f}   cloud {r['cloud_percent']:.2f} %",
                    flush=True,
                )
            os.remove(raster)
        print()
        for h, w in big:
            start = time.perf_counter()
            raster = write_big_geotiff(work / f"big-{h}x{w}.tif", h, w)
            written = time.perf_counter() - start
            r = run_child(raster, model_file, args.batch, False)
            row(f"{h}x{w}", h, w, r)
            size_mb = os.path.getsize(raster) / 2**20
            print(f"{'':>20} (input written in {written:.0f} s, {size_mb:.0f} MB)")
            os.remove(raster)
    print(
        f"\n'+ post' rows add MIN_CLOUD_SIZE={POST['min_cloud_size']}, "
        f"BUFFER={POST['buffer']:g} m, polygons and the masked image.\n"
        "'vs ref' < 1 is the cost of overlap (tiles per pixel), nodata checks, blending and I/O;\n"
        "'tiles x' is the number of tiles predicted over the tiles of the plan (tiles crossing "
        "the border of a\ncolumn block are predicted once per block); 'out MB' is the size of "
        "the mask and probability GeoTIFFs.\n"
        "Peak RSS should stay flat whatever the height and the width (bounded windows; the "
        "pipeline caps GDAL's\nblock cache during a run)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
