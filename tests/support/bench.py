"""``make bench``: throughput and peak memory of the tiled inference, measured not assumed.

Reference: the bare model on batches of tiles (no I/O, no tiling) in the same process. Each
case then runs the headless pipeline (open, decide bands and radiometry, load the model, GDAL
windowed read -> tiles -> model -> blend -> GDAL write) in a fresh child process, so its peak RSS
is its own. Figures are printed as megapixels/s, as a ratio to the reference, and peak RSS
against raster size: memory should grow neither with the raster's height nor with its width.

Two kinds of cases:

* ``--sizes``: small rasters written in one piece, each run three times (the mask only, with
  the probability too, and with every post-processing step);
* ``--threads-size``: one raster run with and without the I/O threads, onnxruntime's threads
  spinning or not between calls, and 4, 8 or 16 tiles per call, interleaved;
* ``--options``: one raster run with each inference option (TTA flips and d8, histogram
  matching, an ensemble of two models) against the plain run in the same bench: their cost as
  Mpx/s, as a ratio to the plain run, and their peak RSS;
* ``--big``: large rasters (a 200000 px wide strip, a 200000 px tall one, a whole Sentinel-2
  tile) written block by block as DEFLATE-compressed tiled GeoTIFFs, never whole in memory,
  run with the mask only. ``--big none`` skips them (they take 10 to 15 minutes);
* the compression of the outputs, and onnxruntime's graph optimisation levels (and the int8
  model of ``make quantize`` when there is one) on the bare model.

It ends with the goals of issue 11: the pipeline at 0.9 of the ideal for the overlap, a full
Sentinel-2 tile under 15 s with a peak RSS under 500 MB (on the 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from qgis_cloudmask.core.model import BUNDLED_MODELS

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "models" / BUNDLED_MODELS["standard"]

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


#: The fast bundled model (int8) and the options of a mask-only run with it.
BUNDLED_FAST = REPO / "models" / BUNDLED_MODELS["fast"]
FAST_MASK = {"probability": False, "bundled": "fast"}


def uncompressed(src: str, dst: str) -> None:
    """A tiled, uncompressed copy of ``src``."""
    from osgeo import gdal

    gdal.UseExceptions()
    gdal.Translate(dst, src, creationOptions=["TILED=YES", "BIGTIFF=YES"])


def model_path(workdir: Path) -> tuple[Path, str]:
    if BUNDLED.is_file():
        return BUNDLED, "bundled model"
    from tests.support import synthetic

    return Path(
        synthetic.write_pixel_model(workdir / "toy.onnx")
    ), "TOY per-pixel model (no trained model bundled)"


def reference_mpx_per_s(model_file: Path, batch: int, seconds: float = 3.0) -> float:
    """The bare model's Mpx/s of tile pixels, with onnxruntime's own defaults (its threads
    spinning between calls: the fastest for back-to-back calls, so the strictest reference)."""
    from qgis_cloudmask.core import model as model_mod

    kept = dict(model_mod.SESSION_CONFIG)
    model_mod.SESSION_CONFIG.clear()
    try:
        model = model_mod.CloudModel(model_file)
    finally:
        model_mod.SESSION_CONFIG.update(kept)
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
    "fast model (int8)": {"bundled": "fast"},
}


def child(raster: str, model_file: str, batch: int, post: bool, options: dict) -> None:
    """Run the headless pipeline (what the algorithm and the command line run) and print one
    JSON line. Timed: the whole run - open, decide bands and radiometry (decimated first pass),
    load the model, read, infer, blend, write; with ``post`` also sieve, buffer, polygons and
    the masked image."""
    import shutil

    from qgis_cloudmask import pipeline
    from qgis_cloudmask.core import inference
    from qgis_cloudmask.core import model as model_mod

    options = dict(options)
    inference.IO_THREAD = options.pop("io_thread", True)
    if options.pop("spin", False):  # onnxruntime's default: its threads spin between calls
        model_mod.SESSION_CONFIG.pop("session.intra_op.allow_spinning", None)
    with_probability = options.pop("probability", True)
    bundled = options.pop("bundled", None)  # a bundled model by name instead of model_file
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(raster))) as tmp:
        extra = dict(POST, vector=f"{tmp}/clouds.gpkg", masked=f"{tmp}/masked.tif") if post else {}
        if options.pop("ensemble", False):
            shutil.copy(model_file, f"{tmp}/member2.onnx")
            model_file = [model_file, f"{tmp}/member2.onnx"]
        extra.update(options)
        result = pipeline.run(
            pipeline.MaskRequest(
                raster,
                f"{tmp}/m.tif",
                probability=f"{tmp}/p.tif" if with_probability else None,
                model=None if bundled else model_file,
                bundled=bundled or "standard",
                batch_size=batch,
                **extra,
            )
        )
        out_mb = (
            sum(
                os.path.getsize(f"{tmp}/{n}")
                for n in ("m.tif", "p.tif")
                if os.path.exists(f"{tmp}/{n}")
            )
            / 2**20
        )
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


class Reference:
    """The bare model's throughput (tiles in memory, no I/O, no tiling), measured again between
    the runs of the bench: the machine's speed drifts, so every ratio uses the median."""

    def __init__(self, model_file: Path, batch: int) -> None:
        self.model_file, self.batch, self.values = model_file, batch, []

    def measure(self, seconds: float = 2.0) -> float:
        self.values.append(reference_mpx_per_s(self.model_file, self.batch, seconds))
        return self.values[-1]

    @property
    def median(self) -> float:
        return float(np.median(self.values))

    def spread(self) -> str:
        return f"{min(self.values):.2f}-{max(self.values):.2f} over {len(self.values)}"


#: (I/O threads, onnxruntime threads spinning between calls, tiles per call) the bench compares
THREAD_CASES = [
    (False, True, 8),
    (False, False, 8),
    (True, True, 4),
    (True, True, 8),
    (True, False, 4),
    (True, False, 8),
    (True, False, 16),
]


def tiles_per_pixel(height: int, width: int, tile: int, overlap: int) -> float:
    """Tile pixels the plan predicts per raster pixel: the ideal pipeline is the bare model's
    throughput divided by this (1 / 0.735 for 224 px tiles at overlap 32 on a big raster)."""
    from qgis_cloudmask.core import inference

    plan = inference.TilingPlan(height, width, tile, overlap)
    return plan.n_tiles * tile * tile / (height * width)


#: Creation options the compression table compares. DEFLATE and LZW are read by every GIS;
#: ZSTD and LERC need a GDAL built with them (QGIS >= 3.4 / GDAL >= 2.3), so are shown for
#: information.
COMPRESSIONS = {
    "DEFLATE": [],
    "DEFLATE ZLEVEL=1": ["ZLEVEL=1"],
    "DEFLATE ZLEVEL=9": ["ZLEVEL=9"],
    "DEFLATE PREDICTOR=2": ["PREDICTOR=2"],
    "DEFLATE ZLEVEL=1 PRED=2": ["ZLEVEL=1", "PREDICTOR=2"],
    "DEFLATE PREDICTOR=3": ["PREDICTOR=3"],
    "LZW": ["COMPRESS=LZW"],
    "LZW PREDICTOR=2": ["COMPRESS=LZW", "PREDICTOR=2"],
    "ZSTD": ["COMPRESS=ZSTD"],
    "none": ["COMPRESS=NONE"],
}


def compression_table(model_file: Path, work: Path, size: int = 2048, repeats: int = 3) -> None:
    """Write a real mask and probability (the model on a synthetic scene) with each option: the
    median write time (one thread, GDAL block cache flushed into the file) and the size."""
    from osgeo import gdal

    from qgis_cloudmask import raster_io
    from qgis_cloudmask.core import inference
    from qgis_cloudmask.core.model import CloudModel
    from tests.support import synthetic

    gdal.UseExceptions()
    model = CloudModel(model_file)
    refl = synthetic.sample_scene(size, size, 3).astype(np.float32) / 10000.0
    prob, mask, _ = inference.classify_array(
        model.predict, refl, model.info.tile_size, model.info.recommended_overlap, 0.5
    )
    base = raster_io.CREATION_OPTIONS
    plugin = {
        name: " ".join(raster_io.creation_options(t)[len(base) :])
        for name, t in (("mask", gdal.GDT_Byte), ("probability", gdal.GDT_Float32))
    }
    print(
        f"\ncompression of the outputs ({size}x{size}, the model's mask and probability; "
        f"median of {repeats} writes; {' '.join(base)}; the plugin writes the mask with "
        f"{plugin['mask']}, the probability with {plugin['probability']})"
    )
    print(f"{'options':>26} {'mask s':>8} {'mask MB':>8} {'prob s':>8} {'prob MB':>8}")
    for name, extra in COMPRESSIONS.items():
        opts = base + (
            extra if any(o.startswith("COMPRESS=") for o in extra) else ["COMPRESS=DEFLATE", *extra]
        )
        row = []
        for array, dtype in ((mask, gdal.GDT_Byte), (prob, gdal.GDT_Float32)):
            if dtype == gdal.GDT_Byte and "PREDICTOR=3" in extra:
                row += [float("nan"), float("nan")]
                continue
            times = []
            for _ in range(repeats):
                path = str(work / "c.tif")
                start = time.perf_counter()
                ds = gdal.GetDriverByName("GTiff").Create(path, size, size, 1, dtype, opts)
                ds.GetRasterBand(1).WriteArray(array)
                ds = None
                times.append(time.perf_counter() - start)
                mb = os.path.getsize(path) / 2**20
                gdal.GetDriverByName("GTiff").Delete(path)
            row += [float(np.median(times)), mb]
        print(f"{name:>26} {row[0]:8.3f} {row[1]:8.2f} {row[2]:8.3f} {row[3]:8.2f}", flush=True)


def optimisation_table(model_file: Path, batch: int, int8: Path | None) -> None:
    """The bare model under each onnxruntime graph optimisation level (the plugin uses the
    default, ORT_ENABLE_ALL), and the int8 model of ``make quantize`` when there is one;
    interleaved rounds, median."""
    import onnxruntime as ort

    models = {"float32": model_file}
    if int8 is not None and int8.is_file():
        models["int8"] = int8
    levels = ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"]
    tiles = np.random.default_rng(0).uniform(0, 0.6, (batch, 4, 224, 224)).astype(np.float32)
    sessions = {}
    for name, path in models.items():
        for level in levels:
            options = ort.SessionOptions()
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
            sessions[name, level] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
    values: dict = {k: [] for k in sessions}
    for _ in range(3):
        for key, session in sessions.items():
            session.run(["probability"], {"input": tiles})
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < 1.0:
                session.run(["probability"], {"input": tiles})
                n += batch
            values[key].append(n * 224 * 224 / 1e6 / (time.perf_counter() - start))
    print(f"\nonnxruntime graph optimisation (bare model, batch {batch}, median of 3 rounds)")
    for (name, level), v in values.items():
        print(f"{name:>10} {level:>20} {np.median(v):7.2f} Mpx/s")
    if "int8" not in models:
        print(f"{'':>10} (no int8 model at {int8}: run make quantize)")


def batch_scaling(model_file: Path, work: Path, scenes: int, side: int, rounds: int = 3) -> None:
    """``python -m qgis_cloudmask batch`` on ``scenes`` rasters with 1 and with 2 workers
    (LocalCluster; onnxruntime threads split between workers): wall time from the command's
    start to its end, cluster start-up included; ``rounds`` interleaved rounds (1, 2, 1, 2...),
    median, and the speed-up of each round."""
    from tests.support import synthetic

    inputs = [
        synthetic.write_geotiff(work / f"scene{i}.tif", synthetic.sample_scene(side, side, i))
        for i in range(scenes)
    ]
    mpx = scenes * side * side / 1e6
    print(
        f"\nbatch runner: {scenes} scenes of {side}x{side} ({mpx:.1f} Mpx), mask only, "
        f"LocalCluster (wall time of the whole command; {rounds} interleaved rounds, median)"
    )
    times: dict[int, list[float]] = {1: [], 2: []}
    for r in range(rounds):
        for workers in times:
            out = work / f"batch-{workers}-{r}"
            start = time.perf_counter()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "qgis_cloudmask",
                    "batch",
                    "--out",
                    str(out),
                    "--workers",
                    str(workers),
                    "--model",
                    str(model_file),
                    "--quiet",
                    *inputs,
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            times[workers].append(time.perf_counter() - start)
            if proc.returncode:
                raise SystemExit(f"batch failed:\n{proc.stdout}\n{proc.stderr}")
            shutil.rmtree(out)
    print(f"{'workers':>26} {'s':>8} {'Mpx/s':>7} {'scenes/min':>11} {'speed-up':>9}  rounds")
    first = float(np.median(times[1]))
    for workers, values in times.items():
        seconds = float(np.median(values))
        each = " ".join(f"{a / b:.2f}" for a, b in zip(times[1], values))
        print(
            f"{workers:>26} {seconds:8.2f} {mpx / seconds:7.3f} {60 * scenes / seconds:11.2f} "
            f"{first / seconds:9.2f}  {each if workers != 1 else ''}",
            flush=True,
        )
    for path in inputs:
        os.remove(path)


class _Tee:
    """stdout that also keeps what is printed (for ``--markdown``)."""

    def __init__(self, stream) -> None:
        self.stream, self.parts = stream, []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_markdown(path: Path, text: str, command: str) -> None:
    """Put the bench's output between the page's bench markers (the rest is left alone)."""
    import platform

    block = (
        f"{BEGIN}\n`{command}` on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}:\n\n"
        f"```text\n{text.rstrip()}\n```\n{END}"
    )
    page = path.read_text() if path.is_file() else "# Speed on one machine\n\n"
    if BEGIN in page and END in page:
        page = page[: page.index(BEGIN)] + block + page[page.index(END) + len(END) :]
    else:
        page = page.rstrip() + "\n\n" + block + "\n"
    path.write_text(page)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="tiles per call (default: the pipeline's)"
    )
    parser.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        help=f"comma-separated HxW small rasters, each run with the mask only, with the "
        f"probability too and with post-processing (default {DEFAULT_SIZES}; 'none' skips)",
    )
    parser.add_argument(
        "--big",
        default=DEFAULT_BIG,
        help=f"comma-separated HxW large rasters written block by block, mask only "
        f"(default {DEFAULT_BIG}; 'none' skips them: 10 to 15 minutes on 2 cores)",
    )
    parser.add_argument(
        "--full",
        default="10980x10980",
        help="the --big size that stands for a full Sentinel-2 tile: the goals are checked on "
        "it, and it also runs with the fast bundled model and stored uncompressed "
        "(default 10980x10980)",
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
    parser.add_argument(
        "--threads-size",
        default="4096x4096",
        help="HxW raster run with and without the I/O threads, spinning, batch sizes (default "
        "4096x4096; 'none' skips)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of the I/O-thread cases and the batch runner"
    )
    parser.add_argument(
        "--batch-scenes",
        default="6x2048",
        help="NxSIDE: the batch runner on N rasters SIDE px square with 1 and 2 workers "
        "(default 6x2048; 'none' skips)",
    )
    parser.add_argument(
        "--int8",
        type=Path,
        default=BUNDLED_FAST,
        help="int8 model (default: the fast bundled model), compared when it exists",
    )
    parser.add_argument(
        "--compression-size",
        type=int,
        default=2048,
        help="side of the compression table's rasters (default 2048; 0 skips the table)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        help="also write the output into this page between its bench markers "
        "(make bench: docs/speed.md)",
    )
    parser.add_argument("--child", nargs=2, metavar=("RASTER", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--post", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch is None:
        from qgis_cloudmask.pipeline import DEFAULT_BATCH_SIZE

        args.batch = DEFAULT_BATCH_SIZE
    if args.child:
        child(args.child[0], args.child[1], args.batch, args.post, json.loads(args.options))
        return 0
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    try:
        bench(args)
    finally:
        sys.stdout = tee.stream
    if args.markdown:
        command = "python -m tests.support.bench " + " ".join(sys.argv[1:])
        write_markdown(args.markdown, "".join(tee.parts), command)
    return 0


def bench(args: argparse.Namespace) -> None:
    """Every section of the bench, printed as it goes."""
    import onnxruntime

    from qgis_cloudmask.core import inference
    from qgis_cloudmask.core.model import read_info
    from tests.support import synthetic

    small, big = parse_sizes(args.sizes), parse_sizes(args.big)
    goals = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        model_file, label = model_path(work)
        info = read_info(str(model_file))
        t, overlap = info.tile_size, info.recommended_overlap
        ref = Reference(model_file, args.batch)
        ref.measure(3.0)
        print(f"model: {label} ({model_file.name}); batch {args.batch}")
        print(
            f"GDAL_CACHEMAX={os.environ.get('GDAL_CACHEMAX', 'unset')}; {os.cpu_count()} CPU(s); "
            f"onnxruntime {onnxruntime.__version__} "
            f"({', '.join(onnxruntime.get_available_providers())}); "
            f"column blocks of at most {inference.BLOCK_WIDTH} px"
        )
        print(f"reference (bare model on tiles, same process): {ref.values[0]:.3f} Mpx/s\n")
        header = (
            f"{'raster HxW':>26} {'Mpx':>7} {'s':>8} {'Mpx/s':>7} {'vs ref':>7} {'vs ideal':>8} "
            f"{'tiles x':>8} {'peak RSS MB':>12} {'out MB':>7}"
        )

        def row(name: str, h: int, w: int, r: dict, reference: float | None = None) -> float:
            reference = reference or ref.median
            mps = r["mpx"] / r["seconds"]
            ideal = reference / tiles_per_pixel(h, w, t, overlap)
            factor = tile_factor(h, w, t, overlap)
            print(
                f"{name:>26} {r['mpx']:7.2f} {r['seconds']:8.2f} {mps:7.3f} {mps / reference:7.2f} "
                f"{mps / ideal:8.2f} {factor:8.3f} {r['peak_rss_mb']:12.0f} {r['outputs_mb']:7.0f}",
                flush=True,
            )
            return mps / ideal

        print(header)
        cases = {"mask": {"probability": False}, "+ probability": {}}
        for h, w in small:
            raster = synthetic.write_geotiff(work / f"{h}x{w}.tif", synthetic.sample_scene(h, w, 1))
            for name, options in cases.items():
                row(
                    f"{h}x{w} {name}",
                    h,
                    w,
                    run_child(raster, model_file, args.batch, False, options),
                )
            r = run_child(raster, model_file, args.batch, True, {"probability": False})
            row(f"{h}x{w} + post", h, w, r)
            ref.measure()
            os.remove(raster)

        for h, w in parse_sizes(args.threads_size):
            raster = synthetic.write_geotiff(work / f"{h}x{w}.tif", synthetic.sample_scene(h, w, 1))
            print(
                f"\nI/O threads, onnxruntime spinning and batch size on {h}x{w}, mask only "
                f"({args.repeats} interleaved rounds, the bare model measured between them; "
                "median; * = the plugin's defaults)"
            )
            runs: dict = {case: [] for case in THREAD_CASES}
            refs = []
            for _ in range(args.repeats):
                for case in THREAD_CASES:
                    io_thread, spin, batch = case
                    options = {"probability": False, "io_thread": io_thread, "spin": spin}
                    runs[case].append(run_child(raster, model_file, batch, False, options))
                refs.append(ref.measure(1.5))
            reference = float(np.median(refs))
            print(header)
            for case in THREAD_CASES:
                io_thread, spin, batch = case
                seconds = float(np.median([r["seconds"] for r in runs[case]]))
                r = dict(runs[case][0], seconds=seconds)
                r["peak_rss_mb"] = max(x["peak_rss_mb"] for x in runs[case])
                default = io_thread and not spin and batch == args.batch
                name = (
                    f"{'threads' if io_thread else 'serial'} "
                    f"{'spin' if spin else 'no spin'} b{batch}{' *' if default else ''}"
                )
                ratio = row(name, h, w, r, reference)
                if default:
                    goals.append(("pipeline >= 0.9 of the ideal", ratio >= 0.9, f"{ratio:.2f}"))
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
                    f"{name:>26} {r['mpx']:7.2f} {r['seconds']:8.2f} {mps:7.3f} "
                    f"{'x' + format(mps / plain, '.2f'):>7} {'':>8} {'':>8} "
                    f"{r['peak_rss_mb']:12.0f} {r['outputs_mb']:7.0f}   "
                    f"cloud {r['cloud_percent']:.2f} %",
                    flush=True,
                )
            os.remove(raster)

        if args.compression_size:
            compression_table(model_file, work, args.compression_size)
        optimisation_table(model_file, args.batch, args.int8)
        ref.measure()
        if args.batch_scenes.lower() != "none":
            n, side = (int(v) for v in args.batch_scenes.lower().split("x"))
            batch_scaling(model_file, work, n, side, args.repeats)

        if big:
            print("\n" + header)
        fast = BUNDLED_FAST.is_file() and model_file == BUNDLED
        for h, w in big:
            start = time.perf_counter()
            raster = write_big_geotiff(work / f"big-{h}x{w}.tif", h, w)
            written = time.perf_counter() - start
            r = run_child(raster, model_file, args.batch, False, {"probability": False})
            row(f"{h}x{w}", h, w, r)
            ref.measure()
            size_mb = os.path.getsize(raster) / 2**20
            print(f"{'':>26} (input written in {written:.0f} s, {size_mb:.0f} MB)")
            full = (h, w) == parse_sizes(args.full)[0]
            if full:
                goals.append(("full tile under 15 s", r["seconds"] < 15, f"{r['seconds']:.1f} s"))
                goals.append(
                    (
                        "full tile peak RSS under 500 MB",
                        r["peak_rss_mb"] < 500,
                        f"{r['peak_rss_mb']:.0f} MB",
                    )
                )
            if full and fast:
                # the same tile with the fast bundled model, then both models on the same
                # pixels stored uncompressed (what decoding the DEFLATE input costs); the fast
                # rows' reference is the bare int8 model, measured here too
                fast_ref = Reference(BUNDLED_FAST, args.batch)
                fast_ref.measure()
                f = run_child(raster, model_file, args.batch, False, FAST_MASK)
                fast_ref.measure()
                row(f"{h}x{w} fast (int8)", h, w, f, fast_ref.median)
                plain = str(work / f"big-{h}x{w}-uncompressed.tif")
                start = time.perf_counter()
                uncompressed(raster, plain)
                os.remove(raster)
                raster = plain
                print(
                    f"{'':>26} (uncompressed copy written in {time.perf_counter() - start:.0f} s)"
                )
                u = run_child(raster, model_file, args.batch, False, {"probability": False})
                row(f"{h}x{w} uncompressed", h, w, u)
                uf = run_child(raster, model_file, args.batch, False, FAST_MASK)
                fast_ref.measure()
                row(f"{h}x{w} uncompr. fast", h, w, uf, fast_ref.median)
                ref.measure()
                print(f"{'':>26} (bare int8 model: median {fast_ref.median:.3f} Mpx/s)")
                for what, x in (("DEFLATE", f), ("uncompressed", uf)):
                    goals.append(
                        (
                            f"full tile under 15 s, fast model, {what} input",
                            x["seconds"] < 15,
                            f"{x['seconds']:.1f} s",
                        )
                    )
            os.remove(raster)
    print(f"\nbare model: median {ref.median:.3f} Mpx/s ({ref.spread()})")
    for goal, met, value in goals:
        print(f"goal {goal}: {'met' if met else 'NOT met'} ({value})")
    print(
        f"\n'+ post' rows add MIN_CLOUD_SIZE={POST['min_cloud_size']}, "
        f"BUFFER={POST['buffer']:g} m, polygons and the masked image.\n"
        "'vs ref' is the pipeline's Mpx/s over the bare model's (median of the bench); "
        "'vs ideal' over the bare model's\ndivided by the tiles per pixel of the plan (overlap), "
        "the most a tiled run can reach;\n'tiles x' is the number of tiles predicted over the "
        "tiles of the plan (tiles crossing the border of a\ncolumn block are predicted once per "
        "block); 'out MB' is the size of the mask (and probability) GeoTIFFs.\n"
        "Peak RSS should stay flat whatever the height and the width (bounded windows; the "
        "pipeline caps GDAL's\nblock cache during a run)."
    )


if __name__ == "__main__":
    sys.exit(main())
