"""``python -m qgis_cloudmask``: the headless pipeline on the command line (no QGIS needed).

Subcommands (more can be added beside ``mask``)::

    python -m qgis_cloudmask mask INPUT OUTPUT [options]

Exit codes: 0 ok, 1 the run failed (the message is the one the Processing algorithm gives),
2 bad usage (unknown option, a value of the wrong type, parameters the input contradicts),
130 interrupted with Ctrl-C (no output written).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from qgis_cloudmask.core import bands as band_choice
from qgis_cloudmask.core import radiometry, tta
from qgis_cloudmask.core.model import BUNDLED_MODELS, DEVICES

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
RADIOMETRY_BY_NAME = {name: mode for mode, name in radiometry.OPTION_NAMES.items()}


def _radiometry(text: str) -> radiometry.Radiometry:
    key = text.strip().lower()
    if key.isdigit() and int(key) in {int(m) for m in radiometry.Radiometry}:
        return radiometry.Radiometry(int(key))
    if key in RADIOMETRY_BY_NAME:
        return RADIOMETRY_BY_NAME[key]
    raise argparse.ArgumentTypeError(
        f"invalid choice {text!r} (choose from {', '.join(RADIOMETRY_BY_NAME)}, or 0-3)"
    )


def _tta(text: str) -> tta.TTA:
    try:
        return tta.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, got {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def _metres(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a distance in metres: {text!r}") from None
    if not value >= 0.0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more metres, got {text!r}")
    return value


def _integer(minimum: int, what: str):
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    return parse


_band = _integer(1, "a band number (bands are numbered from 1)")
_non_negative = _integer(0, "an integer")
_positive = _integer(1, "an integer")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options ``mask`` and ``batch`` share (bands, radiometry, model, inference)."""
    for role in band_choice.ROLES:
        p.add_argument(
            band_choice.OPTION[role],
            type=_band,
            metavar="N",
            dest=f"{role}_band",
            help=f"band holding {band_choice.ROLE_LABEL[role]} "
            f"({band_choice.ROLE_BAND[role]}); default: automatic",
        )
    p.add_argument(
        "--radiometry",
        type=_radiometry,
        default=radiometry.Radiometry.AUTOMATIC,
        metavar="MODE",
        help="how values become reflectance: "
        + "; ".join(
            f"{name} ({int(mode)}) = {radiometry.LABELS[mode]}"
            for mode, name in radiometry.OPTION_NAMES.items()
        )
        + ". Default: auto",
    )
    p.add_argument(
        "--model",
        metavar="ONNX",
        action="append",
        help="ONNX model (default: the bundled model); repeat it for an ensemble, whose "
        "probabilities are averaged",
    )
    p.add_argument(
        "--bundled-model",
        choices=tuple(BUNDLED_MODELS),
        default="standard",
        help="the bundled model that runs without --model: standard (default, float32) or "
        "fast (the same network in int8: about 1.7x faster on a CPU, the same IoU on the dev "
        "chips, 0.1 points more false positives on clear scenes; docs/speed.md)",
    )
    p.add_argument(
        "--weight",
        type=_weight,
        metavar="W",
        action="append",
        help="weight of each --model in the ensemble, in the same order (default: equal)",
    )
    p.add_argument(
        "--tta",
        type=_tta,
        default=tta.TTA.NONE,
        metavar="MODE",
        help="test-time augmentation: "
        + "; ".join(f"{name} = {tta.LABELS[mode]}" for mode, name in tta.OPTION_NAMES.items())
        + ". Default: none",
    )
    p.add_argument(
        "--histogram-matching",
        action="store_true",
        help="map the scene's reflectance quantiles onto the model's training data first "
        "(needs a model with reference quantiles; off by default)",
    )
    p.add_argument(
        "--overlap", type=_non_negative, metavar="PX", help="tile overlap (default: the model's)"
    )
    p.add_argument(
        "--threshold",
        type=_probability,
        metavar="P",
        help="cloud probability threshold 0-1 (default: the model's)",
    )
    p.add_argument(
        "--batch-size", type=_positive, metavar="N", help="tiles per onnxruntime call (8)"
    )
    p.add_argument("--threads", type=_positive, metavar="N", help="onnxruntime threads")
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto (default): a GPU when this onnxruntime has one (onnxruntime-gpu: CUDA; "
        "DirectML; CoreML), else CPU; cpu: CPU only. The log and the JSON name the provider",
    )
    p.add_argument(
        "--min-cloud-size",
        type=_non_negative,
        metavar="PX",
        help="remove cloud patches smaller than PX pixels, 8-connected (default 0: keep all)",
    )
    p.add_argument(
        "--buffer",
        type=_metres,
        metavar="M",
        help="mark clear pixels within M metres of a cloud as cloud buffer, value 2 (default 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qgis_cloudmask",
        description="Cloud masks of Sentinel-2 imagery with a deep-learning model (ONNX).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    mask = sub.add_parser(
        "mask",
        help="mask clouds in one raster or Sentinel-2 product",
        description=(
            "Mask clouds in one raster or Sentinel-2 product, exactly as the QGIS algorithm "
            "cloudmask:detectclouds does. INPUT: a raster GDAL reads, or a Sentinel-2 product "
            "(.SAFE folder, .zip, MTD_MSIL1C.xml / MTD_MSIL2A.xml, or a SENTINEL2_... "
            "subdataset). OUTPUT: the mask GeoTIFF (1 = cloud, 0 = clear, 255 = nodata)."
        ),
        epilog=(
            "Bands and radiometry are automatic unless set; every automatic decision and its "
            "reason is printed (and in --stats / --json). Exit codes: 0 ok, 1 failed, 2 bad "
            "usage, 130 interrupted."
        ),
    )
    mask.add_argument("input", metavar="INPUT", help="raster or Sentinel-2 product")
    mask.add_argument("output", metavar="OUTPUT", help="cloud mask GeoTIFF to write (.tif)")
    _add_run_options(mask)
    mask.add_argument("--probability", metavar="PATH", help="also write the cloud probability")
    mask.add_argument(
        "--vector", metavar="PATH", help="also write cloud polygons (GeoPackage, .gpkg)"
    )
    mask.add_argument(
        "--masked",
        metavar="PATH",
        help="also write the input's bands with cloud and buffer set to nodata (.tif)",
    )
    mask.add_argument("--stats", metavar="PATH", help="also write the statistics JSON")
    mask.add_argument(
        "--json", action="store_true", help="print the statistics and settings as JSON"
    )
    mask.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no log lines")

    batch = sub.add_parser(
        "batch",
        help="mask many rasters or products on a Dask cluster (one task per scene)",
        description=(
            "Mask many rasters or Sentinel-2 products, each exactly as 'mask' does, one Dask "
            "task per scene: on a LocalCluster of this machine (--workers) or an existing "
            "dask.distributed cluster (--scheduler; every worker must see the inputs and DIR "
            "at the same paths). Writes DIR/<name>_mask.tif and DIR/<name>_stats.json per "
            "scene (<name>: the file name without extension, or the product name) and "
            "DIR/summary.csv + DIR/summary.parquet with one row per scene."
        ),
        epilog=(
            "A failing scene is reported in the summary and does not stop the others. Scenes "
            "whose outputs are complete are skipped (rerun after a crash); --overwrite redoes "
            "them. Exit codes: 0 every scene ok or skipped, 1 some scene failed, 2 bad usage, "
            "130 interrupted (no partial output is left)."
        ),
    )
    batch.add_argument(
        "inputs",
        metavar="INPUT",
        nargs="+",
        help="rasters or products: paths, glob patterns ('data/*.zip') or @list.txt",
    )
    batch.add_argument("--out", required=True, metavar="DIR", help="folder for the outputs")
    _add_run_options(batch)
    for key, suffix in (
        ("probability", "_probability.tif"),
        ("vector", "_clouds.gpkg"),
        ("masked", "_masked.tif"),
    ):
        batch.add_argument(f"--{key}", action="store_true", help=f"also write DIR/<name>{suffix}")
    batch.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="worker processes of the LocalCluster (default: one per two cores)",
    )
    batch.add_argument(
        "--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786"
    )
    batch.add_argument(
        "--overwrite", action="store_true", help="mask scenes whose outputs are complete again"
    )
    batch.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar and no log lines"
    )
    return parser


class _ConsoleReporter:
    """A :class:`pipeline.Reporter` for the console: log lines and warnings on stderr, a tqdm
    progress bar when tqdm is installed."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._bar = None

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def info(self, text: str) -> None:
        if not self.quiet:
            self._write(text)

    def warning(self, text: str) -> None:
        self._write(f"WARNING: {text}")

    def progress(self, fraction: float) -> None:
        if self.quiet:
            return
        if self._bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(
                total=100,
                desc="masking",
                file=sys.stderr,
                leave=False,
                disable=None,  # no bar when stderr is not a terminal
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
            )
        self._bar.n = round(100 * fraction, 1)
        self._bar.refresh()

    def canceled(self) -> bool:
        return False

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _run_options(args: argparse.Namespace) -> dict:
    """The :class:`pipeline.MaskRequest` fields ``mask`` and ``batch`` share."""
    return dict(
        bands={role: getattr(args, f"{role}_band") for role in band_choice.ROLES},
        radiometry=args.radiometry,
        model=args.model,
        bundled=args.bundled_model,
        weights=args.weight,
        tta=args.tta,
        histogram_matching=args.histogram_matching,
        overlap=args.overlap,
        threshold=args.threshold,
        batch_size=args.batch_size,
        threads=args.threads,
        device=args.device,
        min_cloud_size=args.min_cloud_size,
        buffer=args.buffer,
    )


def _mask(args: argparse.Namespace) -> int:
    from qgis_cloudmask import pipeline

    request = pipeline.MaskRequest(
        input=args.input,
        output=args.output,
        probability=args.probability,
        stats=args.stats,
        vector=args.vector,
        masked=args.masked,
        **_run_options(args),
    )
    reporter = _ConsoleReporter(args.quiet)
    try:
        result = pipeline.run(request, reporter)
    except pipeline.ParameterError as exc:
        reporter.close()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except pipeline.PipelineError as exc:
        reporter.close()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        reporter.close()
        print("interrupted: no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    reporter.close()
    if args.json:
        print(json.dumps(result.summary, indent=2))
    else:
        s = result.stats
        print(f"cloud cover   {s.cloud_percent:.2f} % of valid pixels")
        print(f"cloud pixels  {s.cloud_pixels}")
        print(f"clear pixels  {s.clear_pixels}")
        print(f"nodata pixels {s.nodata_pixels}")
        if result.settings["buffer"]["value"]:
            print(f"cloud buffer  {s.buffer_percent:.2f} % ({s.buffer_pixels} pixels)")
        print(f"cloud area    {result.cloud_area:g} {result.area_unit}")
        print(f"model         {result.model_name}")
        print(f"mask          {args.output}")
        for key in ("probability", "vector", "masked", "stats"):
            if getattr(args, key):
                print(f"{key:<13} {getattr(args, key)}")
    return EXIT_OK


def _batch(args: argparse.Namespace) -> int:
    from qgis_cloudmask import batch

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr)

    extras = [k for k in batch.EXTRA_OUTPUTS if getattr(args, k)]
    try:
        scenes = batch.plan(args.inputs)
        rows = batch.run_batch(
            scenes,
            args.out,
            _run_options(args),
            extras,
            workers=args.workers,
            scheduler=args.scheduler,
            overwrite=args.overwrite,
            say=say,
            progress=not args.quiet,
        )
        csv_path, parquet_path = batch.write_summary(rows, args.out)
    except batch.BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: no partial output was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed:
        print(f"failed: {r['name']}: {r['error']}", file=sys.stderr)
    done = sum(r["status"] == "ok" for r in rows)
    skipped = sum(r["status"].startswith("skipped") for r in rows)
    print(
        f"{done} masked, {skipped} skipped (complete), {len(failed)} failed; summary: "
        f"{csv_path}, {parquet_path}"
    )
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help exits 0, bad usage exits 2
        return int(exc.code or 0)
    if args.command == "mask":
        return _mask(args)
    if args.command == "batch":
        return _batch(args)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return EXIT_USAGE
