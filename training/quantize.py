"""A static int8 variant of the shipped model, calibrated on real training scenes, and what it
gives (speed) and costs (agreement with float32, IoU) on one machine.

    python -m training.quantize run --data-root ../shared/data [--model models/cloudmask.onnx]
        [--out runs/quantize/cloudmask-int8.onnx]
    python -m training.quantize report [--page docs/speed.md]

*Calibration*: ``--tiles`` crops of the model's tile size drawn from the real scenes of the
training split (:func:`training.train.scene_split`; scenes weighted like the training sampler
weights them, no synthetic clouds, no jitter). The validation scenes and the dev chips are never
drawn from.

*Quantization*: onnxruntime's ``quant_pre_process`` (shape inference, basic graph
optimisation), then ``quantize_static`` in QDQ format: weights int8 per output channel
(symmetric), activations uint8 (asymmetric, ranges from the calibration). The head (the last
Conv and everything after it: upsampling of the logit, sigmoid, threshold) stays float32, so the
``probability`` output is not rounded onto 256 levels around the threshold. Candidates: the
operator sets of :data:`OP_SETS` times the calibration methods of :data:`CALIBRATION_METHODS`.

*Choice*: on the validation split's fixed crops (:func:`training.datasets.fixed_crops`, half
with synthetic clouds: not the crops calibrated on): the candidates whose mask disagreement with
the float32 model (at the model's threshold) is within :data:`AGREEMENT_SLACK` percentage points
of the best, and of those the fastest (bare model, interleaved rounds).

*Scores*: the chosen model and the float32 one through :func:`training.evaluate.evaluate`, the
code path of ``make evaluate`` (``pipeline.run`` on the dev chips, the Landsat chips and the
held-out clear scenes, default options), and both through the plugin's tiled core on the dev
chips (:func:`training.experiment.core_throughput`).

``run`` writes ``runs/quantize/cloudmask-int8.onnx`` (the chosen candidate; the candidates stay
in ``runs/quantize/candidates/``) and ``runs/quantize/report.json``; ``report`` writes the tables
into ``docs/speed.md`` between ``<!-- quantize:begin -->`` and ``<!-- quantize:end -->`` (the
rest of the page is kept). The shipped model and every default of the plugin stay as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from qgis_cloudmask.core import contract, inference
from qgis_cloudmask.core.model import BUNDLED_MODELS, CloudModel
from training import config as config_mod
from training import datasets, evaluate, experiment
from training.config import REPO_ROOT, Config

DEFAULT_CONFIG = REPO_ROOT / "training/configs/default.yaml"
DEFAULT_MODEL = REPO_ROOT / "models/cloudmask.onnx"
DEFAULT_OUT = REPO_ROOT / "runs/quantize/cloudmask-int8.onnx"
DEFAULT_PAGE = REPO_ROOT / "docs/speed.md"
PAGE_TITLE = "# Speed on one machine"
BEGIN, END = "<!-- quantize:begin -->", "<!-- quantize:end -->"

#: What the int8 model's name and version get: the contract only asks for non-empty strings;
#: ``+int8`` is semantic-version build metadata (same release, another build of its weights).
NAME_SUFFIX = "-int8"
VERSION_SUFFIX = "+int8"
#: Operator types to quantize (None: onnxruntime's default list, every type it can quantize).
OP_SETS: dict[str, tuple[str, ...] | None] = {"conv": ("Conv",), "all": None}
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: Tiles whose activations the calibrator holds at once (it merges ranges or histograms after
#: each chunk of this many tiles).
CALIBRATION_CHUNK_TILES = 16
#: Candidates this close (percentage points of mask disagreement) to the most faithful one count
#: as equally faithful; the fastest of them is chosen.
AGREEMENT_SLACK = 0.1
#: What "pays off" means in the report: at least this speed-up of the bare model, and no more
#: than these losses on the dev chips (IoU, each chip group) and clear scenes (false positives).
PAYS_OFF_SPEEDUP = 1.2
PAYS_OFF_IOU_LOSS = 0.005
PAYS_OFF_FP_GAIN = 0.5


# -- data --------------------------------------------------------------------------------------


def calibration_windows(
    cfg: Config, data_root: Path, n: int, seed: int = 0
) -> list[tuple[datasets.Scene, tuple[int, int, int, int]]]:
    """``n`` windows ``(scene, (y, x, h, w))`` of the model's tile size on the training split's
    scenes (never a validation scene; the dev chips are in no split), scenes weighted by the
    square root of their area as the training sampler weights them."""
    train, _ = _split(cfg, data_root)
    if not train:
        raise ValueError(f"no training scenes under {data_root}")
    tile = cfg.export.tile_size
    weights = datasets.CropSampler(train, cfg.data).weights
    rng = np.random.default_rng([seed, 8191])
    out = []
    for _ in range(n):
        scene = train[int(rng.choice(len(train), p=weights))]
        out.append((scene, datasets.random_window(scene, tile, rng)))
    return out


def calibration_tiles(cfg: Config, data_root: Path, n: int, seed: int = 0) -> np.ndarray:
    """Reflectance tiles ``n x 4 x T x T`` float32 (T = the model's tile size) of the real
    training scenes (:func:`calibration_windows`; padded with nodata where a scene is smaller)."""
    return read_tiles(calibration_windows(cfg, data_root, n, seed), cfg.export.tile_size)


def read_tiles(
    windows: Sequence[tuple[datasets.Scene, tuple[int, int, int, int]]], tile: int
) -> np.ndarray:
    """The reflectance of ``windows`` as ``N x 4 x tile x tile`` float32 (nodata-padded)."""
    tiles = [datasets.pad_crop(*scene.read(*window), tile)[0] for scene, window in windows]
    return np.stack(tiles).astype(np.float32)


def validation_tiles(cfg: Config, data_root: Path) -> tuple[np.ndarray, list[str]]:
    """The validation split's fixed crops at the model's tile size (those training validates
    on, half with synthetic clouds) and the scene of each."""
    _, val = _split(cfg, data_root)
    data = dataclasses.replace(cfg.data, crop=cfg.export.tile_size)
    crops = datasets.fixed_crops(val, data, cfg.train.seed)
    if not crops:
        raise ValueError(f"no validation scenes under {data_root}")
    return np.stack([c[1] for c in crops]).astype(np.float32), [c[0] for c in crops]


def _split(cfg: Config, data_root: Path) -> tuple[list, list]:
    from training.train import scene_split  # torch: only when data are read

    return scene_split(cfg, Path(data_root))


# -- quantization ------------------------------------------------------------------------------


class TileReader:
    """An onnxruntime ``CalibrationDataReader`` over reflectance tiles, ``batch`` at a time;
    ``set_range`` (in batches) lets the calibrator collect a chunk of them at a time."""

    def __init__(self, tiles: np.ndarray, batch: int = 8) -> None:
        self.tiles, self.batch = np.ascontiguousarray(tiles, np.float32), batch
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self.tiles) // self.batch)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self.set_range(0, len(self))

    def set_range(self, start_index: int, end_index: int) -> None:
        self._batches = iter(
            {contract.INPUT_NAME: self.tiles[i * self.batch : (i + 1) * self.batch]}
            for i in range(start_index, min(end_index, len(self)))
        )


def head_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the last Conv and of every node downstream of it (the logit's upsampling, the
    sigmoid, the threshold): kept float32. ``graph.node`` is topologically sorted."""
    last = max((i for i, n in enumerate(graph.node) if n.op_type == "Conv"), default=None)
    if last is None:
        return []
    names, reached = [graph.node[last].name], set(graph.node[last].output)
    for node in graph.node[last + 1 :]:
        if reached & set(node.input):
            names.append(node.name)
            reached |= set(node.output)
    return names


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def int8_metadata(source: dict[str, str], quantization: dict) -> dict[str, str]:
    """The source model's metadata (every key, values as they are) with ``-int8`` added to the
    name, ``+int8`` to the version and ``quantization`` (how it was made) in ``training``."""
    props = dict(source)
    props["model_name"] = json.dumps(json.loads(props["model_name"]) + NAME_SUFFIX)
    props["model_version"] = json.dumps(json.loads(props["model_version"]) + VERSION_SUFFIX)
    provenance = json.loads(props["training"])
    props["training"] = json.dumps({**provenance, "quantization": quantization})
    return props


def quantize(
    src: Path,
    dst: Path,
    tiles: np.ndarray,
    ops: str = "all",
    method: str = "minmax",
    batch: int = 8,
    provenance: dict | None = None,
) -> dict:
    """Write a static int8 (QDQ) model of ``src`` calibrated on ``tiles`` (``N x 4 x T x T``
    reflectance) to ``dst``, with every metadata key of ``src``; returns what was done.

    ``ops``: a key of :data:`OP_SETS`; ``method``: one of :data:`CALIBRATION_METHODS`. The
    result is opened with the plugin's :class:`CloudModel` (its contract checks) before it is
    returned.
    """
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if ops not in OP_SETS:
        raise ValueError(f"ops must be one of {sorted(OP_SETS)}, not {ops!r}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, not {method!r}")
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    src, dst = Path(src), Path(dst)
    source = onnx.load(str(src))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cloudmask-quantize-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre))
        prepared = onnx.load(str(pre))
        for i, node in enumerate(prepared.graph.node):  # nodes_to_exclude needs names
            node.name = node.name or f"{node.op_type}_{i}"
        onnx.save(prepared, str(pre))
        head = head_nodes(prepared.graph)
        reader = TileReader(tiles, batch)
        chunk = max(1, CALIBRATION_CHUNK_TILES // batch)  # batches per chunk
        quantize_static(
            str(pre),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(OP_SETS[ops]) if OP_SETS[ops] else None,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            nodes_to_exclude=head,
            calibrate_method=calibrate,
            # ranges (histograms) collected and merged chunk by chunk: the calibrator keeps
            # every activation of a chunk in memory (about 60 MB per tile for the shipped model)
            extra_options={"CalibStridedMinMax": math.gcd(len(reader), chunk)},
        )
        proto = onnx.load(str(out))
    seconds = time.perf_counter() - t0
    quantization = {
        "format": "QDQ (onnxruntime static quantization)",
        "weights": "int8, per output channel, symmetric",
        "activations": "uint8, asymmetric, static ranges",
        "op_types": list(OP_SETS[ops]) if OP_SETS[ops] else "onnxruntime default (all it can)",
        "float32_nodes": head,
        "calibration": method,
        "calibration_tiles": int(len(tiles)),
        **(provenance or {}),
        "source": {
            "name": json.loads(_props(source)["model_name"]),
            "version": json.loads(_props(source)["model_version"]),
            "sha256": _sha256(src),
        },
        "metrics_note": "the 'metrics' key holds the float32 source's validation figures",
        "onnxruntime": ort_version,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    del proto.metadata_props[:]
    for key, value in int8_metadata(_props(source), quantization).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = source.doc_string
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(dst))
    info = CloudModel(dst, threads=1, device="cpu").info  # the plugin's own contract checks
    return {
        "path": str(dst),
        "ops": ops,
        "method": method,
        "model_name": info.name,
        "model_version": info.version,
        "size_mb": round(dst.stat().st_size / 1e6, 2),
        "float32_nodes": len(head),
        "seconds": round(seconds, 1),
    }


def _props(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


# -- agreement and speed -------------------------------------------------------------------------


def agreement(
    reference: CloudModel, other: CloudModel, tiles: np.ndarray, batch: int = 4
) -> dict[str, float]:
    """How far ``other``'s probability strays from ``reference``'s on ``tiles`` (valid pixels:
    not nodata in every band), and how many pixels change side of ``reference``'s threshold."""
    threshold = reference.info.threshold
    diffs, flips, clouds, pixels = [], 0, [0, 0], 0
    for i in range(0, len(tiles), batch):
        x = tiles[i : i + batch]
        p, q = reference.predict(x), other.predict(x)
        valid = ~(x == 0).all(1)
        d = np.abs(p - q)[valid]
        diffs.append(d)
        a, b = p[valid] >= threshold, q[valid] >= threshold
        flips += int((a != b).sum())
        clouds[0] += int(a.sum())
        clouds[1] += int(b.sum())
        pixels += int(valid.sum())
    d = np.concatenate(diffs) if diffs else np.zeros(0, np.float32)
    percent = 100.0 / pixels if pixels else 0.0
    return {
        "tiles": int(len(tiles)),
        "pixels": pixels,
        "threshold": threshold,
        "max_abs_dp": float(d.max()) if d.size else 0.0,
        "mean_abs_dp": float(d.mean()) if d.size else 0.0,
        "p99_abs_dp": float(np.percentile(d, 99)) if d.size else 0.0,
        "mask_disagreement_percent": flips * percent,
        "cloud_percent_reference": clouds[0] * percent,
        "cloud_percent_other": clouds[1] * percent,
    }


def bare_speed(
    models: dict[str, CloudModel],
    tiles: np.ndarray,
    batch: int = 4,
    rounds: int = 7,
    seconds: float = 2.0,
) -> dict[str, dict]:
    """Megapixels per second of each loaded model's bare session on one batch of ``tiles``:
    ``rounds`` rounds of about ``seconds`` each, the models interleaved (order rotated each
    round) so that what else the machine runs weighs on all alike; the median round counts."""
    x = np.ascontiguousarray(tiles[:batch], np.float32)
    mpx = x.shape[0] * x.shape[2] * x.shape[3] / 1e6
    feed = {contract.INPUT_NAME: x}
    names = list(models)
    for m in models.values():  # first-call allocations are not the model's speed
        m.session.run([contract.PROBABILITY_OUTPUT], feed)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            session, n, start = models[name].session, 0, time.perf_counter()
            while True:
                session.run([contract.PROBABILITY_OUTPUT], feed)
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    break
            rates[name].append(n * mpx / elapsed)
    return {
        n: {"mp_per_s": statistics.median(v), "rounds": [round(x, 3) for x in v]}
        for n, v in rates.items()
    }


def compare(
    reference: Path,
    candidates: dict[str, Path],
    tiles: np.ndarray,
    batch: int = 4,
    threads: int = 2,
    rounds: int = 7,
    seconds: float = 2.0,
) -> dict:
    """Each candidate against the float32 ``reference`` on ``tiles`` (:func:`agreement`) and
    the bare speed of all, interleaved (:func:`bare_speed`; ``threads`` onnxruntime threads,
    CPU)."""
    loaded = {"float32": CloudModel(reference, threads=threads, device="cpu")}
    loaded |= {n: CloudModel(p, threads=threads, device="cpu") for n, p in candidates.items()}
    agree = {n: agreement(loaded["float32"], loaded[n], tiles, batch) for n in candidates}
    speed = bare_speed(loaded, tiles, batch, rounds, seconds)
    base = speed["float32"]["mp_per_s"]
    for entry in speed.values():
        entry["ratio_to_float32"] = entry["mp_per_s"] / base if base else float("nan")
    return {
        "agreement": agree,
        "speed": speed,
        "batch": batch,
        "threads": threads,
        "rounds": rounds,
        "seconds_per_round": seconds,
    }


def choose(comparison: dict, slack: float = AGREEMENT_SLACK) -> str:
    """The fastest candidate among those whose mask disagreement is within ``slack``
    percentage points of the lowest."""
    agree, speed = comparison["agreement"], comparison["speed"]
    best = min(a["mask_disagreement_percent"] for a in agree.values())
    close = [n for n, a in agree.items() if a["mask_disagreement_percent"] <= best + slack]
    return max(close, key=lambda n: speed[n]["mp_per_s"])


# -- scores through make evaluate's code path ----------------------------------------------------


def scores(models: dict[str, Path], cfg: Config, data_root: Path, log=print) -> dict[str, dict]:
    """Each model alone (the ``none`` variant) through :func:`training.evaluate.evaluate`, as
    ``make evaluate`` scores it: pooled dev-chip scores per group, clear-scene false positives,
    ``pipeline.run``'s cost."""
    data_root = Path(data_root)
    scenes = datasets.labelled_scenes(data_root / cfg.data.dev_dir)
    unlabelled = data_root / "s2_unlabelled"
    clear = (
        evaluate.clear_scenes(unlabelled, config_mod.resolve(cfg.data.split_dir))
        if unlabelled.is_dir()
        else []
    )
    out = {}
    for name, path in models.items():
        log(f"scores of {name}: {len(scenes)} chip(s), {len(clear)} clear scene(s)")
        ev = evaluate.evaluate(Path(path), scenes, clear, [evaluate.NONE], teacher=False)
        entry = evaluate.summarise_variants(ev, 1)[evaluate.NONE.name]
        out[name] = {
            "path": str(path),
            "pooled": entry["pooled"],
            "scenes": entry["scenes"],
            "clear_scenes": entry.get("clear_scenes"),
            "cost": entry["cost"],
        }
    return out


# -- run ----------------------------------------------------------------------------------------


def run(
    cfg: Config,
    data_root: Path,
    model: Path = DEFAULT_MODEL,
    out: Path = DEFAULT_OUT,
    n_tiles: int = 64,
    seed: int = 0,
    ops: Sequence[str] = tuple(OP_SETS),
    methods: Sequence[str] = CALIBRATION_METHODS,
    batch: int = 4,
    threads: int = 2,
    rounds: int = 7,
    seconds: float = 2.0,
    with_scores: bool = True,
    report_json: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Calibrate, quantize every candidate, compare on the validation split, keep the chosen
    one at ``out``, score float32 and int8 alike; writes the report (JSON) to ``report_json``
    (default: ``report.json`` beside ``out``) and returns it."""
    data_root, out = Path(data_root), Path(out)
    report_json = Path(report_json) if report_json else out.parent / "report.json"
    started, load_before = time.perf_counter(), _load_average()
    windows = calibration_windows(cfg, data_root, n_tiles, seed)
    tiles = read_tiles(windows, cfg.export.tile_size)
    calibration_scenes = sorted({scene.name for scene, _ in windows})
    val, val_names = validation_tiles(cfg, data_root)
    log(
        f"calibration: {len(tiles)} tiles of {len(calibration_scenes)} training scene(s); "
        f"validation: {len(val)} crops of {len(set(val_names))} scene(s)"
    )
    provenance = {
        "calibration_scenes": len(calibration_scenes),
        "calibration_data": "real imagery of the training split (no synthetic clouds)",
        "calibration_seed": seed,
    }
    folder = out.parent / "candidates"
    made: dict[str, dict] = {}
    for o in ops:
        for m in methods:
            name = f"{o}/{m}"
            made[name] = quantize(
                model, folder / f"{o}-{m}.onnx", tiles, o, m, provenance=provenance
            )
            log(f"quantized {name} in {made[name]['seconds']} s ({made[name]['size_mb']} MB)")
    comparison = compare(
        model,
        {n: Path(q["path"]) for n, q in made.items()},
        val,
        batch,
        threads,
        rounds,
        seconds,
    )
    chosen = choose(comparison)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(made[chosen]["path"], out)
    final = CloudModel(out, threads=threads, device="cpu")
    info = final.info
    _, mask, _ = inference.classify_array(
        final.predict, val[0], info.tile_size, info.recommended_overlap, info.threshold
    )
    if mask.shape != val[0].shape[1:]:
        raise AssertionError(f"{out}: classify_array returned a mask of shape {mask.shape}")
    log(f"chosen {chosen}: {info.name} {info.version} at {out}")
    float_info = CloudModel(model, threads=1, device="cpu").info
    report: dict = {
        "float32": {
            "path": str(model),
            "name": float_info.name,
            "version": float_info.version,
            "size_mb": round(Path(model).stat().st_size / 1e6, 2),
        },
        "int8": {**made[chosen], "path": str(out), "candidate": chosen},
        "candidates": made,
        "calibration": {
            "tiles": len(tiles),
            "tile_size": cfg.export.tile_size,
            "scenes": calibration_scenes,
            "seed": seed,
        },
        "validation": {"crops": len(val), "scenes": sorted(set(val_names))},
        "comparison": comparison,
        "chosen": chosen,
        "rule": (
            f"mask disagreement within {AGREEMENT_SLACK} percentage points of the lowest, "
            "then the fastest bare model"
        ),
    }
    if with_scores:
        inputs = experiment.bench_inputs(cfg, data_root)
        report["core_throughput"] = experiment.core_throughput(
            {"float32": Path(model), "int8": out}, inputs, threads=threads, progress=log
        )
        report["scores"] = scores({"float32": Path(model), "int8": out}, cfg, data_root, log)
    report["run"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": evaluate.machine(),
        "seconds": round(time.perf_counter() - started, 1),
        # what else ran: the speed ratios are interleaved, the absolute rates are not
        "load_average_1min": [load_before, _load_average()],
    }
    report_json.parent.mkdir(parents=True, exist_ok=True)
    report_json.write_text(json.dumps(report, indent=2))
    return report


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# -- report -------------------------------------------------------------------------------------


def _f(value: float | None, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def _load_text(load: list | None) -> str:
    if not load or None in load:
        return ""
    return (
        f", load average {load[0]:g} at the start and {load[1]:g} at the end (other jobs "
        "share the cores: compare the interleaved ratios, not absolute rates across pages)"
    )


#: Where the plugin bundles the int8 model (its "fast" bundled model).
SHIPPED = REPO_ROOT / "models" / BUNDLED_MODELS["fast"]


def _shipped(int8: dict) -> str:
    """Whether the report's int8 model is the one the plugin bundles, in words."""
    made = Path(int8["path"])
    if SHIPPED.is_file() and made.is_file() and _sha256(made) == _sha256(SHIPPED):
        return f"shipped as the fast bundled model `models/{SHIPPED.name}`"
    return "not shipped"


def markdown(report: dict) -> str:
    """The report's tables as a Markdown section."""
    f32, q8, comp = report["float32"], report["int8"], report["comparison"]
    cal, val = report["calibration"], report["validation"]
    run = report.get("run", {})
    lines = [
        "## int8 model (static quantization, calibrated on real scenes): `make quantize`",
        "",
        f"Generated {run.get('date', '?')} on {run.get('machine', '?')} by "
        "`python -m training.quantize run` (report: `python -m training.quantize report`)"
        + _load_text(run.get("load_average_1min"))
        + ". "
        f"float32: `{f32['name']} {f32['version']}` ({f32['size_mb']} MB); int8: "
        f"`{q8['model_name']} {q8['model_version']}` ({q8['size_mb']} MB, "
        f"`runs/quantize/cloudmask-int8.onnx`, {_shipped(q8)}).",
        "",
        f"Calibration: {cal['tiles']} tiles of {cal['tile_size']} px from "
        f"{len(cal['scenes'])} scenes of the training split (real imagery, no synthetic clouds; "
        "never a validation scene or a dev chip). onnxruntime `quant_pre_process`, then "
        "`quantize_static` in QDQ format: weights int8 per output channel, activations uint8; "
        "the head (last Conv, upsampling, sigmoid, threshold) stays float32.",
        "",
        f"#### Candidates on the validation split ({val['crops']} fixed crops of "
        f"{len(val['scenes'])} validation scene(s), half with synthetic clouds), against float32",
        "",
        f"Bare model: batch {comp['batch']}, {comp['threads']} onnxruntime threads, median of "
        f"{comp['rounds']} interleaved rounds of {comp['seconds_per_round']:g} s. Mask "
        f"disagreement: % of valid pixels on the other side of the threshold "
        f"({next(iter(comp['agreement'].values()))['threshold']:g}).",
        "",
        "| model | op types | calibration | max \\|Δp\\| | mean \\|Δp\\| | p99 \\|Δp\\| "
        "| mask disagreement % | MP/s | × float32 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    s = comp["speed"]["float32"]
    lines.append(
        f"| float32 | - | - | 0 | 0 | 0 | 0 | {s['mp_per_s']:.2f} | {s['ratio_to_float32']:.2f} |"
    )
    for name, a in comp["agreement"].items():
        s = comp["speed"][name]
        ops, method = name.split("/")
        mark = "**" if name == report["chosen"] else ""
        lines.append(
            f"| {mark}int8{mark} | {ops} | {method} | {a['max_abs_dp']:.3f} "
            f"| {a['mean_abs_dp']:.4f} | {a['p99_abs_dp']:.3f} "
            f"| {a['mask_disagreement_percent']:.2f} | {s['mp_per_s']:.2f} "
            f"| {s['ratio_to_float32']:.2f} |"
        )
    lines += [
        "",
        f"Chosen (**bold**): `{report['chosen']}`; rule: {report['rule']}. Candidates of one "
        "op-type set share their graph and differ only in their scales, so speed differences "
        "among them are the noise of the shared machine (see the rounds in the report JSON).",
        "",
    ]

    sc = report.get("scores")
    if sc:
        groups = [g for g in ("sentinel2", "landsat") if g in sc["float32"]["pooled"]]
        cols = (("iou", "IoU"), ("f1", "F1"), ("precision", "prec."), ("recall", "recall"))
        header = "| model |"
        for g in groups:
            header += "".join(f" {evaluate.GROUP_TITLES[g].split()[0]} {t} |" for _, t in cols)
        header += " clear FP % pooled | clear FP % max | pipeline MP/s |"
        lines += [
            "#### Scores: the code path of `make evaluate` (`pipeline.run`, default options, "
            "the model's threshold)",
            "",
            header,
            "|---|" + "---:|" * (len(groups) * len(cols) + 3),
        ]
        for name, entry in sc.items():
            cells = [f"{entry['pooled'][g][k]:.3f}" for g in groups for k, _ in cols]
            clear = entry.get("clear_scenes") or {}
            cells += [
                _f(clear.get("pooled_percent"), ".2f"),
                _f(clear.get("max_percent"), ".2f"),
                f"{entry['cost']['mp_per_s']:.2f}",
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "`pipeline.run` MP/s: one pass over the chips and clear scenes per model, not "
            "interleaved (reading, writing and loading the model included).",
            "",
        ]
    core = report.get("core_throughput")
    if core:
        lines += [
            "Plugin core (`classify_array` of a loaded model on the dev chips' in-memory "
            f"reflectance, {comp['threads']} threads, interleaved): "
            + ", ".join(f"{n} {v['mp_per_s']:.2f} MP/s" for n, v in core.items())
            + f" (int8 × {core['int8']['mp_per_s'] / core['float32']['mp_per_s']:.2f}).",
            "",
        ]
    lines += [verdict(report), ""]
    return "\n".join(lines)


def verdict(report: dict) -> str:
    """One sentence: does the int8 model pay off (:data:`PAYS_OFF_SPEEDUP` and the losses)?"""
    chosen = report["chosen"]
    ratio = report["comparison"]["speed"][chosen]["ratio_to_float32"]
    parts = [f"bare model × {ratio:.2f}"]
    ok = ratio >= PAYS_OFF_SPEEDUP
    sc = report.get("scores")
    if sc:
        for g in ("sentinel2", "landsat"):
            if g in sc["float32"]["pooled"]:
                d = sc["int8"]["pooled"][g]["iou"] - sc["float32"]["pooled"][g]["iou"]
                parts.append(f"{evaluate.GROUP_TITLES[g]} IoU {d:+.3f}")
                ok &= d >= -PAYS_OFF_IOU_LOSS
        fp = [sc[n].get("clear_scenes") for n in ("float32", "int8")]
        if all(fp):
            d = fp[1]["pooled_percent"] - fp[0]["pooled_percent"]
            parts.append(f"clear-scene false positives {d:+.2f} points")
            ok &= d <= PAYS_OFF_FP_GAIN
    rule = (
        f"pays off = at least × {PAYS_OFF_SPEEDUP:g} and at most {PAYS_OFF_IOU_LOSS:g} IoU "
        f"lost per chip group and {PAYS_OFF_FP_GAIN:g} points more false positives"
    )
    word = "pays off" if ok else "does not pay off"
    if not sc:
        word += " on speed alone (no scores in this report)" if ok else ""
    return f"**int8 vs float32: {', '.join(parts)}: it {word}** ({rule})."


def write_section(page: Path, text: str) -> None:
    """Put ``text`` between :data:`BEGIN` and :data:`END` in ``page`` (replaced there; appended
    when the markers are missing; a new page with :data:`PAGE_TITLE` when there is none)."""
    page = Path(page)
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    old = page.read_text() if page.is_file() else f"{PAGE_TITLE}\n"
    if BEGIN in old and END in old.split(BEGIN, 1)[1]:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(new)


def report(report_json: Path, page: Path = DEFAULT_PAGE) -> str:
    """Write ``report_json``'s tables into ``page``; returns the section."""
    text = markdown(json.loads(Path(report_json).read_text()))
    write_section(page, text)
    return text


def main(argv: list[str] | None = None) -> dict | str:
    from training.train import parse_overrides

    parser = argparse.ArgumentParser(
        description="A static int8 model calibrated on real training scenes, vs float32."
    )
    parser.add_argument("command", choices=("run", "report"))
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--set", nargs="*", default=[], help="overrides: section.key=value")
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / "../shared/data")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="float32 model")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the int8 model")
    parser.add_argument("--tiles", type=int, default=64, help="calibration tiles")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    parser.add_argument("--ops", nargs="+", choices=list(OP_SETS), default=list(OP_SETS))
    parser.add_argument(
        "--methods", nargs="+", choices=CALIBRATION_METHODS, default=list(CALIBRATION_METHODS)
    )
    parser.add_argument("--batch", type=int, default=4, help="tiles per bare-model run")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved speed rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per speed round")
    parser.add_argument(
        "--no-scores", action="store_true", help="skip the make-evaluate scores and core speed"
    )
    parser.add_argument("--report", type=Path, default=None, help="default: beside --out")
    parser.add_argument("--page", type=Path, default=DEFAULT_PAGE)
    args = parser.parse_args(argv)
    report_json = args.report or args.out.parent / "report.json"
    if args.command == "report":
        text = report(report_json, args.page)
        print(text)
        return text
    cfg = config_mod.load(args.config, parse_overrides(args.set))
    out = run(
        cfg,
        args.data_root,
        args.model,
        args.out,
        args.tiles,
        args.seed,
        args.ops,
        args.methods,
        args.batch,
        args.threads,
        args.rounds,
        args.seconds,
        not args.no_scores,
        report_json,
    )
    print(verdict(out))
    return out


if __name__ == "__main__":
    main()
