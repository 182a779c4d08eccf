"""One whole cloud-masking run, headless: request -> resolved settings -> outputs -> result.

Every caller (the Processing algorithm, ``python -m qgis_cloudmask``, scripts, notebooks, batch
runners) builds a :class:`MaskRequest` and calls :func:`run`; none re-decides what this module
decided. Every default is resolved in :func:`resolve`, each automatic decision with its reason;
the run reads the input in bounded windows (column blocks, a strip of tiles at a time), infers,
and writes all outputs under temporary names that are moved into place only when everything
succeeded.

Imports GDAL (through :mod:`sources` and :mod:`raster_io`) but never QGIS. Progress, messages
and cancelling go through a :class:`Reporter`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qgis_cloudmask import postprocess, raster_io, sources, styles
from qgis_cloudmask.core import bands as band_choice
from qgis_cloudmask.core import histogram, inference, radiometry, tiling, tta
from qgis_cloudmask.core.ensemble import Ensemble
from qgis_cloudmask.core.model import (
    BUNDLED_MODELS,
    DEVICES,
    CloudModel,
    ModelError,
    ModelInfo,
    read_info,
)
from qgis_cloudmask.core.stats import CloudStats

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
#: The folders where the bundled models lie: inside the plugin (installed zip) or in the
#: repository.
BUNDLED_MODEL_DIRS = (
    os.path.join(PLUGIN_DIR, "models"),
    os.path.join(os.path.dirname(PLUGIN_DIR), "models"),
)
#: Where the standard bundled model lies (the first that exists).
BUNDLED_MODEL_CANDIDATES = tuple(
    os.path.join(d, BUNDLED_MODELS["standard"]) for d in BUNDLED_MODEL_DIRS
)
#: Tiles per onnxruntime call. Measured twice (docs/speed.md; 4096 x 4096, 2 cores, I/O
#: threads, no spinning): 8 tiles take 3.5 % and 7 % less time than 4; 16 tiles were 8 % faster
#: than 4 once and slower than 8 the other time, and need about 100 MB more (538 vs 435 MB peak),
#: which would lift a full tile past 500 MB.
DEFAULT_BATCH_SIZE = 8
MAX_BATCH_SIZE = 256


class PipelineError(Exception):
    """A run that cannot be done; the message is meant for the user and names what to change."""


class ParameterError(PipelineError):
    """A request whose parameters are wrong (bad usage: exit code 2 on the command line)."""


class Cancelled(PipelineError):  # noqa: N818 (a request, not an error)
    """The caller asked to stop; nothing was written."""


def bundled_model_path(name: str = "standard") -> str | None:
    """The bundled model ``name`` (:data:`BUNDLED_MODELS`), or ``None`` when this build bundles
    none by that name."""
    if name not in BUNDLED_MODELS:
        raise ParameterError(
            f"Unknown bundled model {name!r} (BUNDLED_MODEL, --bundled-model): use one of "
            f"{', '.join(BUNDLED_MODELS)}."
        )
    if name == "standard":
        candidates = BUNDLED_MODEL_CANDIDATES
    else:
        candidates = tuple(os.path.join(d, BUNDLED_MODELS[name]) for d in BUNDLED_MODEL_DIRS)
    return next((p for p in candidates if os.path.isfile(p)), None)


@functools.lru_cache(maxsize=4)
def _bundled_info(path: str, mtime: float) -> ModelInfo | None:
    try:
        return read_info(path)
    except ModelError:
        return None


def bundled_model_info() -> ModelInfo | None:
    """The bundled model's metadata (threshold, overlap... for the defaults a dialog shows), or
    ``None`` when there is no bundled model or onnxruntime is missing."""
    path = bundled_model_path()
    return _bundled_info(path, os.path.getmtime(path)) if path else None


@dataclass
class MaskRequest:
    """What to mask and how; ``None`` means "decide automatically" (see :func:`resolve`)."""

    input: str
    output: str
    probability: str | None = None
    stats: str | None = None
    #: role ("red", "green", "blue", "nir") -> 1-based band; missing or None: automatic
    bands: dict[str, int | None] = field(default_factory=dict)
    radiometry: radiometry.Radiometry = radiometry.Radiometry.AUTOMATIC
    #: one ONNX file, or several (an ensemble: probabilities averaged); None: the bundled model
    model: str | os.PathLike | list[str] | tuple[str, ...] | None = None
    #: which bundled model runs when ``model`` is None: "standard" or "fast" (BUNDLED_MODELS)
    bundled: str = "standard"
    #: one weight per model of an ensemble (None: equal weights)
    weights: list[float] | tuple[float, ...] | None = None
    #: test-time augmentation: a :class:`tta.TTA`, its index or name ("none", "flips", "d8")
    tta: tta.TTA | int | str = tta.TTA.NONE
    #: map the scene's reflectance quantiles onto the model's training reference first
    histogram_matching: bool = False
    overlap: int | None = None
    threshold: float | None = None
    batch_size: int | None = None
    threads: int | None = None  # onnxruntime intra-op threads (None: onnxruntime decides)
    #: "auto": a GPU (CUDA, DirectML, CoreML) when this onnxruntime has one, else CPU; "cpu"
    device: str = "auto"
    #: cloud patches smaller than this many pixels (8-connected) become clear; None or 0: off
    min_cloud_size: int | None = None
    #: clear pixels within this many metres of a cloud become "cloud buffer"; None or 0: off
    buffer: float | None = None
    vector: str | None = None  # GeoPackage of cloud (and buffer) polygons
    masked: str | None = None  # the input's bands with cloud and buffer pixels set to nodata


class Reporter:
    """Where a run reports to. The default prints nothing and is never cancelled."""

    def info(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        pass

    def progress(self, fraction: float) -> None:
        pass

    def canceled(self) -> bool:
        return False


@dataclass(frozen=True)
class Setting:
    """A resolved value and why it is what it is."""

    value: Any
    reason: str

    def to_dict(self) -> dict:
        return {"value": self.value, "reason": self.reason}


@dataclass
class Resolved:
    """Every setting of a run, decided once."""

    source: sources.Source
    model: Ensemble
    bands: band_choice.BandChoice
    radiometry: radiometry.Decision
    overlap: Setting
    threshold: Setting
    batch_size: Setting
    min_cloud_size: Setting
    buffer: Setting
    #: the buffer as a radius in pixels (0: no buffer)
    buffer_px: float
    warnings: list[str]
    tta: Setting = Setting(tta.TTA.NONE, "off")
    histogram_matching: Setting = Setting(False, "off")
    #: per model of the ensemble: its histogram matching (None: off)
    matches: list[histogram.HistogramMatch | None] = field(default_factory=list)
    device: Setting = Setting("auto", "default")

    def predictor(self) -> inference.Predict:
        """What the tiled inference calls on a batch: matching, ensemble, augmentation."""
        prepare = [m.apply if m is not None else None for m in self.matches] or None
        return tta.with_tta(self.model.predictor(prepare), self.tta.value)

    @property
    def post_processing(self) -> bool:
        """Whether the mask is changed after inference (sieve or buffer)."""
        return bool(self.min_cloud_size.value) or self.buffer_px > 0

    @property
    def model_bands(self) -> list[int]:
        """1-based raster bands in the model's channel order."""
        return self.bands.ordered(self.model.info.band_roles)

    def settings(self) -> dict[str, dict]:
        mi = self.model.info
        return {
            "input": {"value": self.source.opened, "reason": self.source.describe()},
            "bands": {
                "value": {mi.bands[i]: b for i, b in enumerate(self.model_bands)},
                "reason": self.bands.reason,
            },
            "radiometry": {
                "value": self.radiometry.conversion.formula(),
                "reason": f"{self.radiometry.source}: {self.radiometry.reason}",
                **{k: v for k, v in self.radiometry.to_dict().items() if k != "reason"},
            },
            "model": {
                "value": f"{mi.name} {mi.version}",
                "reason": self.model.path,
            },
            "tta": {
                "value": tta.OPTION_NAMES[self.tta.value],
                "reason": self.tta.reason,
            },
            "histogram_matching": self.histogram_matching.to_dict(),
            "execution_provider": {
                "value": self.model.execution_provider,
                "reason": f"device {self.device.value}: {self.device.reason}",
            },
            "overlap": self.overlap.to_dict(),
            "threshold": self.threshold.to_dict(),
            "batch_size": self.batch_size.to_dict(),
            "min_cloud_size": self.min_cloud_size.to_dict(),
            "buffer": self.buffer.to_dict(),
        }


@dataclass
class MaskResult:
    """What a run produced: statistics, outputs, resolved settings and warnings."""

    stats: CloudStats
    summary: dict  # what the statistics JSON holds; the properties below read it

    @property
    def outputs(self) -> dict[str, str | None]:
        return self.summary["outputs"]

    @property
    def warnings(self) -> list[str]:
        return self.summary["warnings"]

    @property
    def cloud_area(self) -> float:
        return self.summary["cloud_area"]

    @property
    def area_unit(self) -> str:
        return self.summary["area_unit"]

    @property
    def model_name(self) -> str:
        m = self.summary["model"]
        return f"{m['name']} {m['version']}"

    @property
    def settings(self) -> dict[str, dict]:
        return self.summary["settings"]


# -- checks ----------------------------------------------------------------------------------


def _same_file(a: str, b: str) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _check_writable(path: str, what: str) -> None:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise PipelineError(
            f"Cannot write the {what} to '{path}': the folder '{folder}' does not exist."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PipelineError(
            f"Cannot write the {what} to '{path}': no permission to write in '{folder}'."
        )
    if os.path.isdir(path):
        raise PipelineError(f"Cannot write the {what} to '{path}': it is a folder.")


RASTER_OUTPUTS = ("cloud mask", "cloud probability", "masked image")


def check_outputs(request: MaskRequest) -> None:
    """Outputs must be GeoTIFF (rasters), writable, distinct, and never the input."""
    if not request.output:
        raise ParameterError("No output path was given for the cloud mask.")
    destinations = [("cloud mask", request.output)]
    if request.probability:
        destinations.append(("cloud probability", request.probability))
    if request.masked:
        destinations.append(("masked image", request.masked))
    if request.vector:
        destinations.append(("cloud polygons", request.vector))
    if request.stats:
        destinations.append(("statistics", request.stats))
    for what, path in destinations:
        if what == "cloud polygons" and not path.lower().endswith(".gpkg"):
            raise ParameterError(
                f"The {what} are written as GeoPackage: give a path ending in .gpkg, not '{path}'."
            )
        if what in RASTER_OUTPUTS and not path.lower().endswith((".tif", ".tiff")):
            raise ParameterError(
                f"The {what} is written as GeoTIFF: give a path ending in .tif, not '{path}'."
            )
        if os.path.exists(request.input) and os.path.exists(path):
            if _same_file(request.input, path):
                raise ParameterError(
                    f"The {what} output '{path}' is the input raster; choose another file so "
                    "the input is not overwritten."
                )
        _check_writable(path, what)
    if len({os.path.abspath(p) for _, p in destinations}) != len(destinations):
        raise ParameterError("Two outputs point to the same file; give each its own.")
    rasters = [p for what, p in destinations if what in RASTER_OUTPUTS]
    if len({os.path.abspath(styles.style_path(p)) for p in rasters}) != len(rasters):
        raise ParameterError(
            "Two raster outputs differ only in .tif / .tiff, so their styles (.qml) would be "
            "the same file; give them different names."
        )


def _model_paths(
    model: str | list[str] | tuple[str, ...] | None, bundled: str = "standard"
) -> list[str]:
    """The ONNX files asked for (the bundled model ``bundled`` when none)."""
    single = isinstance(model, (str, os.PathLike))
    paths = [model] if single else list(model or [])
    paths = [os.fspath(p).strip() for p in paths if p is not None and os.fspath(p).strip()]
    path = bundled_model_path(bundled)  # also refuses an unknown name
    if paths:
        if bundled != "standard":
            raise ParameterError(
                f"Both model files (MODEL, --model) and the {bundled} bundled model "
                "(BUNDLED_MODEL, --bundled-model) were chosen: choose one of them."
            )
        return paths
    if not path:
        what = "trained cloud model is" if bundled == "standard" else f"{bundled} model is"
        raise PipelineError(
            f"No {what} bundled with this version of the plugin "
            f"(models/{BUNDLED_MODELS[bundled]}). Choose an ONNX model file in the "
            "'ONNX model' (MODEL) parameter (command line: --model)."
        )
    return [path]


def load_model(
    model: str | list[str] | tuple[str, ...] | None,
    threads: int | None = None,
    weights: list[float] | tuple[float, ...] | None = None,
    device: str = "auto",
    bundled: str = "standard",
) -> Ensemble:
    """The model (or the ensemble of models) a run uses: ``model`` is a path, a list of paths,
    or ``None`` for the bundled model named ``bundled``."""
    if device not in DEVICES:
        raise ParameterError(
            f"Unknown device {device!r} (--device): use one of {', '.join(DEVICES)}."
        )
    paths = _model_paths(model, bundled)
    if weights and len(weights) != len(paths):
        raise ParameterError(
            f"{len(weights)} model weight(s) were given for {len(paths)} model(s) (MODEL / "
            "--model): give one weight per model, or none for equal weights."
        )
    try:
        return Ensemble([CloudModel(p, threads=threads, device=device) for p in paths], weights)
    except ModelError as exc:
        raise PipelineError(str(exc)) from exc


# -- resolve ---------------------------------------------------------------------------------


def resolve(request: MaskRequest) -> Resolved:
    """Open the input and the model and decide every setting, each with its reason."""
    check_outputs(request)
    try:
        source = sources.open_source(request.input)
    except raster_io.RasterError as exc:
        raise PipelineError(str(exc)) from exc
    info = source.info
    model = load_model(
        request.model, request.threads, request.weights, request.device, request.bundled
    )
    mi = model.info
    try:
        augmentation = tta.parse(request.tta)
    except ValueError as exc:
        raise ParameterError(f"TTA: {exc}.") from None
    try:
        chosen = band_choice.choose_bands(info.band_count, source.band_labels, request.bands)
    except band_choice.BandError as exc:
        raise ParameterError(str(exc)) from exc
    _check_band_types(info, chosen.ordered(mi.band_roles))

    if request.overlap is None:
        many = len(model) > 1
        overlap = Setting(
            mi.recommended_overlap,
            "the largest recommended by the models" if many else "recommended by the model",
        )
    else:
        overlap = Setting(int(request.overlap), "set by OVERLAP")
    _check_overlap(overlap.value, mi.tile_size, mi.recommended_overlap, info)
    if request.threshold is None:
        threshold = Setting(mi.threshold, model.threshold_reason())
    else:
        value = float(request.threshold)
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise ParameterError(
                f"The threshold must be a probability between 0 and 1, got {request.threshold}."
            )
        threshold = Setting(value, "set by THRESHOLD")
    if request.batch_size is None:
        batch = Setting(DEFAULT_BATCH_SIZE, "default")
    else:
        batch = Setting(int(request.batch_size), "set by BATCH_SIZE")
        if not 1 <= batch.value <= MAX_BATCH_SIZE:
            raise ParameterError(
                f"The batch size must be between 1 and {MAX_BATCH_SIZE} tiles, got {batch.value}."
            )

    min_size, buffer, buffer_px, buffer_note = _post_settings(request, info)

    resolved_bands = chosen.ordered(mi.band_roles)
    if request.histogram_matching:
        _check_references(model)
    try:
        sample = sources.read_sample(source, resolved_bands)
        facts = sources.radiometry_facts(source, resolved_bands, mi.bands, sample)
    except raster_io.RasterError as exc:
        raise PipelineError(str(exc)) from exc
    decision = radiometry.decide(request.radiometry, facts)
    warnings = list(chosen.warnings) + list(decision.warnings) + list(model.warnings)
    augmentation_setting = Setting(
        augmentation,
        "off" if augmentation == tta.TTA.NONE else f"set by TTA: {tta.LABELS[augmentation]}",
    )
    matching, matches = Setting(False, "off"), []
    if request.histogram_matching:
        matching, matches = _histogram_matching(model, sample, decision.conversion)
    return Resolved(
        source,
        model,
        chosen,
        decision,
        overlap,
        threshold,
        batch,
        min_size,
        buffer,
        buffer_px,
        warnings,
        augmentation_setting,
        matching,
        matches,
        _device_setting(request.device, model, warnings),
    )


def _device_setting(device: str, model: Ensemble, warnings: list[str]) -> Setting:
    """Why the model runs where it runs; a warning when a GPU was offered but did not start."""
    for member in model.members:
        wanted, actual = member.requested_providers[0], member.execution_provider
        if actual != wanted:
            warnings.append(
                f"onnxruntime offers {wanted} but could not start it (drivers or libraries "
                f"missing?): the model runs on {actual}. Set FORCE_CPU (--device cpu) to "
                "silence this."
            )
    if device == "cpu":
        return Setting(device, "CPU only, as asked (FORCE_CPU / --device cpu)")
    offered = [p for p in model.members[0].requested_providers if p != "CPUExecutionProvider"]
    if offered:
        return Setting(device, f"the first that starts of {', '.join(offered)} and CPU")
    return Setting(
        device, "this onnxruntime has no GPU provider (onnxruntime-gpu, DirectML or CoreML), so CPU"
    )


def _check_references(model: Ensemble) -> None:
    """Histogram matching needs every model's training reference."""
    for member in model.members:
        if member.info.reference is None:
            raise ParameterError(
                f"Histogram matching (HISTOGRAM_MATCHING, --histogram-matching) needs the "
                f"reference quantiles of the model's training data, and the model "
                f"'{os.path.basename(member.path)}' ({member.info.name} {member.info.version}) "
                "has none in its metadata ('reference_quantiles'). Turn histogram matching "
                "off, or use a model exported with them (the bundled model from 1.0.1 on)."
            )


def _histogram_matching(
    model: Ensemble, sample: tuple, conversion: radiometry.Conversion
) -> tuple[Setting, list[histogram.HistogramMatch]]:
    """The scene's reflectance quantiles (from the decimated sample of the whole scene, read
    once for the radiometry too) matched to each model's reference."""
    values, valid = sample
    refl = radiometry.to_reflectance(values, conversion)[:, valid]
    if refl.shape[1] == 0:
        raise PipelineError(
            "Histogram matching found no valid pixel in its sample of the input (all nodata in "
            "the chosen bands)."
        )
    quantiles = histogram.scene_quantiles(refl, model.members[0].info.reference.levels)
    matches = []
    for member in model.members:
        levels = member.info.reference.levels
        q = quantiles if levels == histogram.LEVELS else histogram.scene_quantiles(refl, levels)
        matches.append(histogram.HistogramMatch.between(q, member.info.reference))
    medians = ", ".join(
        f"{b} {np.median(refl[c]):.3f}" for c, b in enumerate(model.members[0].info.bands)
    )
    reason = (
        f"set by HISTOGRAM_MATCHING: {refl.shape[1]} sampled pixels (scene medians {medians}) "
        "mapped onto the quantiles of the model's training data"
    )
    return Setting(True, reason), matches


def max_overlap(tile: int) -> int:
    """The largest tile overlap (px) a run accepts: half the tile. More costs many times the
    work for no better blend."""
    return tile // 2


def _check_overlap(overlap: int, tile: int, recommended: int, info: raster_io.RasterInfo) -> None:
    """0 to :func:`max_overlap`."""
    limit = max_overlap(tile)
    if 0 <= overlap <= limit:
        return
    text = f"The tile overlap must be 0 to {limit} px for this model's {tile}-px tiles"
    if overlap >= tile or overlap < 0:
        raise ParameterError(f"{text}, got {overlap} (the model recommends {recommended}).")

    def tiles(o: int) -> int:
        rows = tiling.tile_starts(info.height, tile, o)
        return len(rows) * len(tiling.tile_starts(info.width, tile, o))

    raise ParameterError(
        f"{text}, got {overlap}: it would run {tiles(overlap)} tiles on this raster instead of "
        f"{tiles(recommended)} with the recommended {recommended} px, for no better blend."
    )


def _check_band_types(info: raster_io.RasterInfo, bands: list[int]) -> None:
    """Every chosen band holds DN or reflectance, and all of one kind (integer or float)."""
    types = {b: info.data_types[b - 1] for b in bands}
    for band, kind in types.items():
        if kind not in raster_io.SUPPORTED_TYPES:
            raise PipelineError(
                f"Band {band} of the input raster stores {kind} values; Sentinel-2 reflectance "
                f"needs 16-bit integers (DN) or floats ({', '.join(raster_io.SUPPORTED_TYPES)}). "
                "An 8-bit raster is usually a rendered picture, not reflectance."
            )
    if len({info.is_float(b) for b in bands}) > 1:
        listed = ", ".join(f"band {b}: {kind}" for b, kind in types.items())
        raise PipelineError(
            f"The chosen bands mix integer and float values ({listed}): they cannot hold the "
            "same radiometry. Build the stack from bands of one type (e.g. gdal_translate -ot "
            "UInt16 or gdalbuildvrt from files of one type)."
        )


def _post_settings(
    request: MaskRequest, info: raster_io.RasterInfo
) -> tuple[Setting, Setting, float, str]:
    """MIN_CLOUD_SIZE (pixels) and BUFFER (metres, and as a radius in pixels)."""
    size = request.min_cloud_size
    if size is None or size == 0:
        min_size = Setting(0, "off (every cloud patch is kept)")
    elif int(size) != size or size < 0:
        raise ParameterError(
            f"The minimum cloud size is a number of pixels (0 or more), got {size}."
        )
    else:
        min_size = Setting(
            int(size), "set by MIN_CLOUD_SIZE: smaller 8-connected cloud patches become clear"
        )
    metres = request.buffer
    if metres is None or metres == 0:
        return min_size, Setting(0.0, "off (no cloud buffer)"), 0.0, ""
    if not math.isfinite(metres) or metres < 0:
        raise ParameterError(f"The cloud buffer is a distance in metres (0 or more), got {metres}.")
    try:
        radius, note = postprocess.buffer_radius_px(info, float(metres))
    except ValueError as exc:
        raise ParameterError(
            f"The cloud buffer is given in metres, but {exc}: assign the input a CRS (or set "
            "the buffer to 0)."
        ) from exc
    return min_size, Setting(float(metres), f"set by BUFFER: {note}"), radius, note


# -- run -------------------------------------------------------------------------------------


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def _log_settings(resolved: Resolved, reporter: Reporter, plan: inference.TilingPlan) -> None:
    mi, model = resolved.model.info, resolved.model
    reporter.info(f"Input: {resolved.source.describe()}.")
    for member, weight in zip(model.members, model.weights):
        share = "" if len(model) == 1 else f", weight {weight:.3g}"
        reporter.info(
            f"Model {member.info.name} {member.info.version} "
            f"({os.path.basename(member.path)}{share}) on {member.execution_provider}."
        )
    reporter.info(f"Device {resolved.device.value}: {resolved.device.reason}.")
    if resolved.tta.value != tta.TTA.NONE:
        reporter.info(f"Test-time augmentation: {tta.LABELS[resolved.tta.value]}.")
    if resolved.histogram_matching.value:
        reporter.info(
            "Histogram matching: "
            + resolved.histogram_matching.reason.removeprefix("set by HISTOGRAM_MATCHING: ")
            + "."
        )
    bands = ", ".join(f"{b}={n}" for b, n in zip(mi.bands, resolved.model_bands))
    reporter.info(f"Bands {bands} ({resolved.bands.reason}).")
    d = resolved.radiometry
    reporter.info(f"Radiometry: reflectance = {d.conversion.formula()} ({d.source}: {d.reason}).")
    reporter.info(
        f"{plan.n_tiles} tile(s) of {mi.tile_size} px, overlap {resolved.overlap.value} px "
        f"({resolved.overlap.reason}), threshold {resolved.threshold.value:g} "
        f"({resolved.threshold.reason}), batch {resolved.batch_size.value}."
    )
    for warning in resolved.warnings:
        reporter.warning(warning)


def run(request: MaskRequest, reporter: Reporter | None = None) -> MaskResult:
    """Mask one raster or product; outputs appear all together or not at all."""
    reporter = reporter or Reporter()
    started = time.perf_counter()
    with raster_io.capped_block_cache():  # resolve samples the whole raster
        resolved = resolve(request)
    source, mi = resolved.source, resolved.model.info
    info = source.info
    plan = inference.TilingPlan(info.height, info.width, mi.tile_size, resolved.overlap.value)
    _log_settings(resolved, reporter, plan)
    bands = resolved.model_bands
    read_window = inference.reflectance_reader(
        raster_io.raw_reader(source.dataset, bands),
        [info.nodata[b - 1] for b in bands],
        resolved.radiometry.conversion,
    )
    steps = _Steps(reporter, resolved, request)
    try:
        with raster_io.capped_block_cache(), raster_io.Staging() as staging:
            out = staging.track(
                raster_io.OutputRasters(
                    info, staging, request.output, request.probability, resolved.buffer_px > 0
                )
            )
            stats = inference.classify_raster(
                resolved.predictor(),
                plan,
                resolved.threshold.value,
                resolved.batch_size.value,
                read_window,
                out.write_rows,
                progress=steps.reporter_for("inference"),
                is_canceled=reporter.canceled,
            )
            if stats.valid_pixels == 0:
                raise PipelineError(
                    "The input raster holds only nodata (declared nodata, NaN/inf or 0 in "
                    "every band) in the chosen bands: there is nothing to classify."
                )
            model_cloud = stats.cloud_pixels
            stats, extra = _post_process(request, resolved, out, staging, steps, stats)
            extra["model_cloud_pixels"] = model_cloud
            _write_styles(request, resolved, staging)
            summary = _summary(request, resolved, stats, extra, time.perf_counter() - started)
            if request.stats:
                _write_json(staging.add(request.stats), summary)
            staging.commit()
    except inference.Cancelled:
        raise Cancelled("Cancelled by the user: no output was written.") from None
    except raster_io.RasterError as exc:
        raise PipelineError(_with_hint(str(exc), request)) from exc
    except ModelError as exc:
        raise PipelineError(str(exc)) from exc
    except (RuntimeError, OSError) as exc:
        if reporter.canceled():  # GDAL's algorithms stop through their progress callback
            raise Cancelled("Cancelled by the user: no output was written.") from None
        raise PipelineError(_with_hint(f"Writing the outputs failed: {exc}", request)) from exc
    reporter.progress(1.0)
    text = (
        f"Cloud cover {stats.cloud_percent:.2f} % of valid pixels ({stats.cloud_pixels} "
        f"cloud, {stats.clear_pixels} clear, {stats.nodata_pixels} nodata"
    )
    if resolved.buffer_px > 0:
        text += f", {stats.buffer_pixels} cloud buffer = {stats.buffer_percent:.2f} %"
    reporter.info(f"{text}); cloud area {summary['cloud_area']:g} {summary['area_unit']}.")
    return MaskResult(stats, summary)


def _with_hint(message: str, request: MaskRequest) -> str:
    """A failed write (disk full, quota, file size limit) says where to look."""
    if not message.startswith("Writing the outputs failed"):
        return message
    folder = os.path.dirname(os.path.abspath(request.output))
    return (
        f"{message.rstrip('.')}. Check the free disk space and write permission in '{folder}' "
        "(and of the other outputs' folders); no output was written."
    )


class _Steps:
    """Shares the progress bar between inference and the post-processing steps asked for."""

    WEIGHTS = {"inference": 10.0, "sieve": 1.0, "buffer": 1.0, "final": 1.0, "polygons": 1.0}

    def __init__(self, reporter: Reporter, resolved: Resolved, request: MaskRequest) -> None:
        self.reporter = reporter
        names = ["inference"]
        if resolved.min_cloud_size.value:
            names.append("sieve")
        if resolved.buffer_px > 0:
            names.append("buffer")
        if resolved.post_processing or request.masked:
            names.append("final")
        if request.vector:
            names.append("polygons")
        total = sum(self.WEIGHTS[n] for n in names)
        self.spans, start = {}, 0.0
        for n in names:
            end = start + self.WEIGHTS[n] / total
            self.spans[n] = (start, end)
            start = end

    def reporter_for(self, name: str):
        start, end = self.spans[name]
        return lambda fraction: self.reporter.progress(start + (end - start) * fraction)

    def gdal_callback(self, name: str):
        start, end = self.spans[name]
        return postprocess.GdalProgress(self.reporter.progress, self.reporter.canceled, start, end)


def _post_process(
    request: MaskRequest,
    resolved: Resolved,
    out: raster_io.OutputRasters,
    staging: raster_io.Staging,
    steps: _Steps,
    stats: CloudStats,
) -> tuple[CloudStats, dict]:
    """Sieve, buffer, masked image and polygons on the written mask; returns the statistics of
    the final mask and what the summary should add."""
    info, reporter = resolved.source.info, steps.reporter
    extra: dict = {"removed_cloud_pixels": 0}
    if resolved.min_cloud_size.value:
        removed = postprocess.remove_small_clouds(
            out.mask_band,
            info,
            resolved.min_cloud_size.value,
            staging.scratch(request.output, ".gpkg"),
            steps.gdal_callback("sieve"),
        )
        extra["removed_cloud_pixels"] = removed
        reporter.info(
            f"Removed {removed} cloud pixels in patches smaller than "
            f"{resolved.min_cloud_size.value} pixels."
        )
    distance = None
    try:
        if resolved.buffer_px > 0:
            reporter.info(
                f"Cloud buffer: {resolved.buffer.reason.removeprefix('set by BUFFER: ')}."
            )
            distance = postprocess.cloud_distance(
                out.mask_band,
                info,
                resolved.buffer_px,
                staging.scratch(request.output),
                steps.gdal_callback("buffer"),
            )
        if "final" in steps.spans:
            masked = None
            if request.masked:
                masked = staging.track(
                    postprocess.MaskedImage(
                        resolved.source.dataset, info, staging.add(request.masked)
                    )
                )
            stats = postprocess.final_pass(
                out.mask_band,
                info,
                distance,
                resolved.buffer_px,
                masked,
                steps.reporter_for("final"),
                reporter.canceled,
            )
            if masked is not None:
                masked.close()
    finally:
        with raster_io.gdal_quiet():  # closes the scratch file (deleted either way)
            distance = None
    mask_temp = out.mask_temp
    out.close()
    if request.vector:
        count, rule = postprocess.polygonize(
            mask_temp,
            info,
            staging.add(request.vector),
            steps.gdal_callback("polygons"),
            resolved.buffer_px > 0,
        )
        extra["polygons"] = {"features": count, "area_field": rule.field, "area_unit": rule.unit}
        reporter.info(f"{count} cloud polygon(s); areas in {rule.unit} ('{rule.field}').")
    return stats, extra


def _write_styles(request: MaskRequest, resolved: Resolved, staging: raster_io.Staging) -> None:
    """A .qml beside each raster output, so QGIS shows it styled whenever it is loaded."""
    styles.write_style(
        styles.mask_style(resolved.buffer_px > 0),
        staging.add(styles.style_path(request.output)),
    )
    if request.probability:
        styles.write_style(
            styles.probability_style(), staging.add(styles.style_path(request.probability))
        )
    if request.masked:
        styles.write_style(
            styles.image_style(*_true_colour(resolved)),
            staging.add(styles.style_path(request.masked)),
        )


def _true_colour(resolved: Resolved) -> tuple[tuple[int, int, int], list[tuple[float, float]]]:
    """Red, green, blue bands of the masked image and their stretch (reflectance 0 to 0.3 in
    stored values)."""
    roles = resolved.model.info.band_roles
    conversion = resolved.radiometry.conversion
    rgb, ranges = [], []
    for role in ("red", "green", "blue"):
        channel = roles.index(role)
        rgb.append(resolved.model_bands[channel])
        ranges.append(
            tuple(conversion.stored_value(r, channel) for r in styles.TRUE_COLOUR_REFLECTANCE)
        )
    return tuple(rgb), ranges


def _summary(
    request: MaskRequest, resolved: Resolved, stats: CloudStats, extra: dict, seconds: float
) -> dict:
    info, mi, model = resolved.source.info, resolved.model.info, resolved.model
    d = stats.to_dict()
    d.update(
        cloud_area=stats.cloud_area(info.pixel_area),
        buffer_area=stats.buffer_area(info.pixel_area),
        area_unit=info.area_unit,
        pixel_area=info.pixel_area,
        input=request.input,
        source=resolved.source.opened,
        width=info.width,
        height=info.height,
        crs=info.crs_id,
        model={
            "name": mi.name,
            "version": mi.version,
            "path": model.path,
            "execution_provider": model.execution_provider,
        },
        models=model.describe(),
        tta=tta.OPTION_NAMES[resolved.tta.value],
        histogram_matching=bool(resolved.histogram_matching.value),
        threshold=resolved.threshold.value,
        overlap=resolved.overlap.value,
        batch_size=resolved.batch_size.value,
        radiometry=resolved.radiometry.to_dict(),
        settings=resolved.settings(),
        warnings=list(resolved.warnings),
        min_cloud_size=resolved.min_cloud_size.value,
        buffer_m=resolved.buffer.value,
        buffer_px=resolved.buffer_px,
        outputs={
            "mask": request.output,
            "probability": request.probability,
            "vector": request.vector,
            "masked": request.masked,
            "stats": request.stats,
        },
        **extra,
        seconds=round(seconds, 3),
    )
    return d
