"""One whole cloud-masking run, headless: request -> resolved settings -> outputs -> result.

Every caller (the Processing algorithm, ``python -m qgis_cloudmask``, scripts, notebooks, batch
runners) builds a :class:`MaskRequest` and calls :func:`run`; none re-decides what this module
decided. Every default is resolved in :func:`resolve`, each automatic decision with its reason;
the run reads the input one strip of tiles at a time, infers, and writes all outputs under
temporary names that are moved into place only when everything succeeded.

Imports GDAL (through :mod:`sources` and :mod:`raster_io`) but never QGIS. Progress, messages
and cancelling go through a :class:`Reporter`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from qgis_cloudmask import raster_io, sources
from qgis_cloudmask.core import bands as band_choice
from qgis_cloudmask.core import inference, radiometry, tiling
from qgis_cloudmask.core.model import CloudModel, ModelError
from qgis_cloudmask.core.stats import CloudStats

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
#: Where the bundled model lies: inside the plugin (installed zip) or in the repository.
BUNDLED_MODEL_CANDIDATES = (
    os.path.join(PLUGIN_DIR, "models", "cloudmask.onnx"),
    os.path.join(os.path.dirname(PLUGIN_DIR), "models", "cloudmask.onnx"),
)
DEFAULT_BATCH_SIZE = 4
MAX_BATCH_SIZE = 256


class PipelineError(Exception):
    """A run that cannot be done; the message is meant for the user and names what to change."""


class ParameterError(PipelineError):
    """A request whose parameters are wrong (bad usage: exit code 2 on the command line)."""


class Cancelled(PipelineError):  # noqa: N818 (a request, not an error)
    """The caller asked to stop; nothing was written."""


def bundled_model_path() -> str | None:
    """The model shipped with the plugin, or ``None`` when this build bundles none."""
    return next((p for p in BUNDLED_MODEL_CANDIDATES if os.path.isfile(p)), None)


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
    model: str | None = None
    overlap: int | None = None
    threshold: float | None = None
    batch_size: int | None = None
    threads: int | None = None  # onnxruntime intra-op threads (None: onnxruntime decides)


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
    model: CloudModel
    bands: band_choice.BandChoice
    radiometry: radiometry.Decision
    overlap: Setting
    threshold: Setting
    batch_size: Setting
    warnings: list[str]

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
            "overlap": self.overlap.to_dict(),
            "threshold": self.threshold.to_dict(),
            "batch_size": self.batch_size.to_dict(),
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


def check_outputs(request: MaskRequest) -> None:
    """Outputs must be GeoTIFF (rasters), writable, distinct, and never the input."""
    if not request.output:
        raise ParameterError("No output path was given for the cloud mask.")
    destinations = [("cloud mask", request.output)]
    if request.probability:
        destinations.append(("cloud probability", request.probability))
    if request.stats:
        destinations.append(("statistics", request.stats))
    for what, path in destinations:
        if what != "statistics" and not path.lower().endswith((".tif", ".tiff")):
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


def load_model(path: str | None, threads: int | None = None) -> CloudModel:
    path = path or bundled_model_path()
    if not path:
        raise PipelineError(
            "No trained cloud model is bundled with this version of the plugin. Choose an "
            "ONNX model file in the 'ONNX model' (MODEL) parameter (command line: --model)."
        )
    try:
        return CloudModel(path, threads=threads)
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
    if info.data_type not in raster_io.SUPPORTED_TYPES:
        raise PipelineError(
            f"The input raster stores {info.data_type} values; Sentinel-2 reflectance needs "
            f"16-bit integers (DN) or floats ({', '.join(raster_io.SUPPORTED_TYPES)}). An "
            "8-bit raster is usually a rendered picture, not reflectance."
        )
    model = load_model(request.model, request.threads)
    mi = model.info
    try:
        chosen = band_choice.choose_bands(info.band_count, source.band_labels, request.bands)
    except band_choice.BandError as exc:
        raise ParameterError(str(exc)) from exc

    if request.overlap is None:
        overlap = Setting(mi.recommended_overlap, "recommended by the model")
    else:
        overlap = Setting(int(request.overlap), "set by OVERLAP")
    try:
        tiling.check_overlap(mi.tile_size, overlap.value)
    except ValueError as exc:
        raise ParameterError(f"Tile overlap: {exc}.") from exc
    if request.threshold is None:
        threshold = Setting(mi.threshold, "the model's default")
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

    resolved_bands = chosen.ordered(mi.band_roles)
    try:
        facts = sources.radiometry_facts(source, resolved_bands, mi.bands)
    except raster_io.RasterError as exc:
        raise PipelineError(str(exc)) from exc
    decision = radiometry.decide(request.radiometry, facts)
    warnings = list(chosen.warnings) + list(decision.warnings)
    return Resolved(source, model, chosen, decision, overlap, threshold, batch, warnings)


# -- run -------------------------------------------------------------------------------------


def _write_json_temp(path: str, data: dict) -> str:
    """Write ``data`` beside ``path`` under a temporary name; the caller moves it."""
    temp = raster_io.temporary_path(path)
    try:
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    return temp


def _log_settings(resolved: Resolved, reporter: Reporter, plan: inference.TilingPlan) -> None:
    mi, model = resolved.model.info, resolved.model
    reporter.info(f"Input: {resolved.source.describe()}.")
    reporter.info(
        f"Model {mi.name} {mi.version} ({os.path.basename(model.path)}) on "
        f"{model.execution_provider}."
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
    resolved = resolve(request)
    source, model, mi = resolved.source, resolved.model, resolved.model.info
    info = source.info
    plan = inference.TilingPlan(info.height, info.width, mi.tile_size, resolved.overlap.value)
    _log_settings(resolved, reporter, plan)
    bands = resolved.model_bands
    read_rows = inference.reflectance_reader(
        raster_io.raw_reader(source.dataset, bands),
        [info.nodata[b - 1] for b in bands],
        resolved.radiometry.conversion,
    )
    try:
        with raster_io.OutputRasters(info, request.output, request.probability) as out:
            stats = inference.classify_raster(
                model.predict,
                plan,
                resolved.threshold.value,
                resolved.batch_size.value,
                read_rows,
                out.write_rows,
                progress=reporter.progress,
                is_canceled=reporter.canceled,
            )
            if stats.valid_pixels == 0:
                raise PipelineError(
                    "The input raster holds only nodata (declared nodata, NaN/inf or 0 in "
                    "every band) in the chosen bands: there is nothing to classify."
                )
            summary = _summary(request, resolved, stats, time.perf_counter() - started)
            stats_temp = _write_json_temp(request.stats, summary) if request.stats else None
            try:
                out.commit()
                if stats_temp:
                    os.replace(stats_temp, request.stats)
            finally:
                if stats_temp and os.path.exists(stats_temp):
                    os.remove(stats_temp)
    except inference.Cancelled:
        raise Cancelled("Cancelled by the user: no output was written.") from None
    except raster_io.RasterError as exc:
        raise PipelineError(str(exc)) from exc
    except ModelError as exc:
        raise PipelineError(str(exc)) from exc
    except (RuntimeError, OSError) as exc:
        raise PipelineError(f"Writing the outputs failed: {exc}") from exc
    reporter.info(
        f"Cloud cover {stats.cloud_percent:.2f} % of valid pixels ({stats.cloud_pixels} "
        f"cloud, {stats.clear_pixels} clear, {stats.nodata_pixels} nodata); cloud area "
        f"{summary['cloud_area']:g} {summary['area_unit']}."
    )
    return MaskResult(stats, summary)


def _summary(request: MaskRequest, resolved: Resolved, stats: CloudStats, seconds: float) -> dict:
    info, mi, model = resolved.source.info, resolved.model.info, resolved.model
    d = stats.to_dict()
    d.update(
        cloud_area=stats.cloud_area(info.pixel_area),
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
        threshold=resolved.threshold.value,
        overlap=resolved.overlap.value,
        batch_size=resolved.batch_size.value,
        radiometry=resolved.radiometry.to_dict(),
        settings=resolved.settings(),
        warnings=list(resolved.warnings),
        outputs={
            "mask": request.output,
            "probability": request.probability,
            "stats": request.stats,
        },
        seconds=round(seconds, 3),
    )
    return d
