"""``cloudmask:detectclouds`` — cloud mask + statistics of a Sentinel-2 raster."""

from __future__ import annotations

import json
import os
import time

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsUnitTypes,
)
from qgis.PyQt.QtCore import QCoreApplication

from qgis_cloudmask import raster_io
from qgis_cloudmask.core import inference, radiometry, tiling
from qgis_cloudmask.core.model import CloudModel, ModelError

PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Where the bundled model lies: inside the plugin (installed zip) or in the repository.
BUNDLED_MODEL_CANDIDATES = (
    os.path.join(PLUGIN_DIR, "models", "cloudmask.onnx"),
    os.path.join(os.path.dirname(PLUGIN_DIR), "models", "cloudmask.onnx"),
)


def bundled_model_path() -> str | None:
    """The model shipped with the plugin, or ``None`` when this build bundles none."""
    return next((p for p in BUNDLED_MODEL_CANDIDATES if os.path.isfile(p)), None)


def _same_file(a: str, b: str) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _check_writable(path: str, what: str) -> None:
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise QgsProcessingException(
            f"Cannot write the {what} to '{path}': the folder '{folder}' does not exist."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise QgsProcessingException(
            f"Cannot write the {what} to '{path}': no permission to write in '{folder}'."
        )
    if os.path.isdir(path):
        raise QgsProcessingException(f"Cannot write the {what} to '{path}': it is a folder.")


class DetectCloudsAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    RED_BAND = "RED_BAND"
    GREEN_BAND = "GREEN_BAND"
    BLUE_BAND = "BLUE_BAND"
    NIR_BAND = "NIR_BAND"
    RADIOMETRY = "RADIOMETRY"
    MODEL = "MODEL"
    OVERLAP = "OVERLAP"
    THRESHOLD = "THRESHOLD"
    BATCH_SIZE = "BATCH_SIZE"
    OUTPUT = "OUTPUT"
    OUTPUT_PROBABILITY = "OUTPUT_PROBABILITY"
    OUTPUT_STATS = "OUTPUT_STATS"
    CLOUD_PERCENT = "CLOUD_PERCENT"
    CLOUD_PIXELS = "CLOUD_PIXELS"
    CLEAR_PIXELS = "CLEAR_PIXELS"
    NODATA_PIXELS = "NODATA_PIXELS"
    CLOUD_AREA = "CLOUD_AREA"
    AREA_UNIT = "AREA_UNIT"
    MODEL_NAME = "MODEL_NAME"

    #: role -> (parameter key, default band of a B02, B03, B04, B08 stack)
    BAND_PARAMETERS = {
        "red": (RED_BAND, 3),
        "green": (GREEN_BAND, 2),
        "blue": (BLUE_BAND, 1),
        "nir": (NIR_BAND, 4),
    }

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("DetectCloudsAlgorithm", text)

    def createInstance(self):  # noqa: N802
        return DetectCloudsAlgorithm()

    def name(self) -> str:
        return "detectclouds"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Detect clouds (Sentinel-2)")

    def group(self) -> str:
        return self.tr("Cloud masking")

    def groupId(self) -> str:  # noqa: N802
        return "cloudmasking"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Masks clouds in a Sentinel-2 raster with a deep-learning model (ONNX), run in "
            "overlapping tiles that are blended smoothly. Pick the raster bands holding red "
            "(B04), green (B03), blue (B02) and near-infrared (B08); the defaults fit a "
            "B02, B03, B04, B08 stack (for a full 13-band stack use 4, 3, 2, 8).\n\n"
            "Radiometry: integer rasters are read as Sentinel-2 digital numbers (DN / 10000); "
            "for products of processing baseline 04.00 or later (from 25 January 2022) choose "
            "the option that removes the +1000 offset. Float rasters are taken as reflectance.\n\n"
            "Output: uint8 GeoTIFF, 1 = cloud, 0 = clear, 255 = nodata, on the input's grid. "
            "Pixels that are the declared nodata, NaN/inf, or 0 in every band are nodata and "
            "are left out of the statistics. Cloud percent is of valid pixels; cloud area is in "
            "the layer's map units squared (see AREA_UNIT)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(
            QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Sentinel-2 raster"))
        )
        for role, (key, default) in self.BAND_PARAMETERS.items():
            label = {
                "nir": "Near-infrared (B08)",
                "red": "Red (B04)",
                "green": "Green (B03)",
                "blue": "Blue (B02)",
            }[role]
            # optional so a missing value falls back to the default: QGIS 3.22's band
            # parameter ignores its default when validating a call without the key
            self.addParameter(
                QgsProcessingParameterBand(
                    key, self.tr(f"{label} band"), default, self.INPUT, optional=True
                )
            )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.RADIOMETRY,
                self.tr("Radiometry (how pixel values become reflectance)"),
                options=[self.tr(label) for label in radiometry.LABELS.values()],
                defaultValue=int(radiometry.Radiometry.AUTOMATIC),
            )
        )
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                self.tr("ONNX model [optional, default: the bundled model]"),
                extension="onnx",
                optional=True,
            )
        )
        overlap = QgsProcessingParameterNumber(
            self.OVERLAP,
            self.tr("Tile overlap in pixels [optional, default: from the model]"),
            QgsProcessingParameterNumber.Integer,
            optional=True,
            minValue=0,
        )
        threshold = QgsProcessingParameterNumber(
            self.THRESHOLD,
            self.tr("Cloud probability threshold [optional, default: from the model]"),
            QgsProcessingParameterNumber.Double,
            optional=True,
            minValue=0.0,
            maxValue=1.0,
        )
        batch = QgsProcessingParameterNumber(
            self.BATCH_SIZE,
            self.tr("Tiles per batch"),
            QgsProcessingParameterNumber.Integer,
            defaultValue=4,
            minValue=1,
            maxValue=256,
        )
        for p in (overlap, threshold, batch):
            self.addParameter(p)
        self.addParameter(
            QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Cloud mask"))
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT_PROBABILITY,
                self.tr("Cloud probability (0-1)"),
                optional=True,
                createByDefault=False,
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination(
                self.OUTPUT_STATS,
                self.tr("Statistics (JSON)"),
                fileFilter="JSON files (*.json)",
                optional=True,
                createByDefault=False,
            )
        )
        outputs = (
            (QgsProcessingOutputNumber, self.CLOUD_PERCENT, "Cloud cover (% of valid pixels)"),
            (QgsProcessingOutputNumber, self.CLOUD_PIXELS, "Cloud pixels"),
            (QgsProcessingOutputNumber, self.CLEAR_PIXELS, "Clear pixels"),
            (QgsProcessingOutputNumber, self.NODATA_PIXELS, "Nodata pixels"),
            (QgsProcessingOutputNumber, self.CLOUD_AREA, "Cloud area (map units squared)"),
            (QgsProcessingOutputString, self.AREA_UNIT, "Unit of the cloud area"),
            (QgsProcessingOutputString, self.MODEL_NAME, "Model name and version"),
        )
        for cls, key, label in outputs:
            self.addOutput(cls(key, self.tr(label)))

    # -- helpers ---------------------------------------------------------------------------

    def _optional_number(self, parameters, key, context, as_int: bool):
        value = parameters.get(key)
        if value is None or value == "":
            return None
        getter = self.parameterAsInt if as_int else self.parameterAsDouble
        return getter(parameters, key, context)

    def _bands(self, parameters, context, band_count: int, roles) -> list[int]:
        chosen = {
            role: self.parameterAsInt(parameters, self.BAND_PARAMETERS[role][0], context)
            for role in self.BAND_PARAMETERS
        }
        if band_count < len(chosen):
            raise QgsProcessingException(
                f"The input raster has {band_count} band(s), but the cloud model needs four: "
                "red (B04), green (B03), blue (B02) and near-infrared (B08). Use a multi-band "
                "Sentinel-2 stack (e.g. build one with 'Build virtual raster', separate bands)."
            )
        for role, band in chosen.items():
            if not 1 <= band <= band_count:
                raise QgsProcessingException(
                    f"The {role} band is set to {band}, but the input raster has bands 1 to "
                    f"{band_count}."
                )
        if len(set(chosen.values())) != len(chosen):
            raise QgsProcessingException(
                "The same raster band is chosen for more than one of red, green, blue and "
                f"near-infrared ({', '.join(f'{r}={b}' for r, b in chosen.items())}); each "
                "needs its own band."
            )
        return [chosen[role] for role in roles]

    def _load_model(self, parameters, context) -> CloudModel:
        path = self.parameterAsFile(parameters, self.MODEL, context) or bundled_model_path()
        if not path:
            raise QgsProcessingException(
                "No trained cloud model is bundled with this version of the plugin. Choose an "
                "ONNX model file in the 'ONNX model' (MODEL) parameter."
            )
        try:
            return CloudModel(path)
        except ModelError as exc:
            raise QgsProcessingException(str(exc)) from exc

    @staticmethod
    def _area_unit(layer) -> str:
        crs = layer.crs()
        if not crs.isValid():
            return "square pixels (the raster has no CRS)"
        area = QgsUnitTypes.distanceToAreaUnit(crs.mapUnits())
        return QgsUnitTypes.toString(area)

    # -- the work --------------------------------------------------------------------------

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        started = time.perf_counter()
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException("The input raster could not be loaded.")
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                f"The input must be a file-based raster (GDAL); got a '{layer.providerType()}' "
                "layer. Export it to GeoTIFF first."
            )
        source = layer.source()
        mask_path = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        prob_path = self.parameterAsOutputLayer(parameters, self.OUTPUT_PROBABILITY, context)
        stats_path = self.parameterAsFileOutput(parameters, self.OUTPUT_STATS, context)
        destinations = [("cloud mask", mask_path)]
        if prob_path:
            destinations.append(("cloud probability", prob_path))
        if stats_path:
            destinations.append(("statistics", stats_path))
        for what, path in destinations:
            if what != "statistics" and not path.lower().endswith((".tif", ".tiff")):
                raise QgsProcessingException(
                    f"The {what} is written as GeoTIFF: give a path ending in .tif, not '{path}'."
                )
            if os.path.exists(source) and os.path.exists(path) and _same_file(source, path):
                raise QgsProcessingException(
                    f"The {what} output '{path}' is the input raster; choose another file so the "
                    "input is not overwritten."
                )
            _check_writable(path, what)
        if len({os.path.abspath(p) for _, p in destinations}) != len(destinations):
            raise QgsProcessingException("Two outputs point to the same file; give each its own.")

        try:
            ds, info = raster_io.open_raster(source)
        except raster_io.RasterError as exc:
            raise QgsProcessingException(str(exc)) from exc
        if info.data_type not in raster_io.SUPPORTED_TYPES:
            raise QgsProcessingException(
                f"The input raster stores {info.data_type} values; Sentinel-2 reflectance needs "
                f"16-bit integers (DN) or floats ({', '.join(raster_io.SUPPORTED_TYPES)}). An "
                "8-bit raster is usually a rendered picture, not reflectance."
            )

        model = self._load_model(parameters, context)
        mi = model.info
        bands = self._bands(parameters, context, info.band_count, mi.band_roles)
        overlap = self._optional_number(parameters, self.OVERLAP, context, as_int=True)
        overlap = mi.recommended_overlap if overlap is None else overlap
        try:
            tiling.check_overlap(mi.tile_size, overlap)
        except ValueError as exc:
            raise QgsProcessingException(f"Tile overlap: {exc}.") from exc
        threshold = self._optional_number(parameters, self.THRESHOLD, context, as_int=False)
        threshold = mi.threshold if threshold is None else threshold
        batch_size = self.parameterAsInt(parameters, self.BATCH_SIZE, context)
        mode = radiometry.Radiometry(self.parameterAsEnum(parameters, self.RADIOMETRY, context))
        scale, offset = radiometry.scale_and_offset(mode, info.is_float)

        plan = inference.TilingPlan(info.height, info.width, mi.tile_size, overlap)
        feedback.pushInfo(
            f"Model {mi.name} {mi.version} ({os.path.basename(model.path)}) on "
            f"{model.execution_provider}; bands {dict(zip(mi.bands, bands))}; reflectance = "
            f"(value + {offset:g}) x {scale:g}; {plan.n_tiles} tile(s) of {mi.tile_size} px, "
            f"overlap {overlap} px, threshold {threshold:g}, batch {batch_size}."
        )
        read_reflectance = inference.reflectance_reader(
            raster_io.raw_reader(ds, bands),
            [info.nodata[b - 1] for b in bands],
            mode,
            info.is_float,
        )

        def read_rows(y0: int, y1: int):
            """The reader, checking the first strip's values look like reflectance."""
            refl, valid = read_reflectance(y0, y1)
            if y0 == 0:
                warning = radiometry.implausibility(refl, valid)
                if warning:
                    feedback.pushWarning(warning)
            return refl, valid

        try:
            with raster_io.OutputRasters(info, mask_path, prob_path or None) as out:
                stats = inference.classify_raster(
                    model.predict,
                    plan,
                    threshold,
                    batch_size,
                    read_rows,
                    out.write_rows,
                    progress=lambda f: feedback.setProgress(100.0 * f),
                    is_canceled=feedback.isCanceled,
                )
                if stats.valid_pixels == 0:
                    raise QgsProcessingException(
                        "The input raster holds only nodata (declared nodata, NaN/inf or 0 in "
                        "every band) in the chosen bands: there is nothing to classify."
                    )
                result_stats = self._stats_dict(
                    stats,
                    info,
                    layer,
                    mi,
                    model,
                    overlap,
                    threshold,
                    mode,
                    time.perf_counter() - started,
                )
                stats_temp = self._write_json_temp(stats_path, result_stats) if stats_path else None
                try:
                    out.commit()
                    if stats_temp:
                        os.replace(stats_temp, stats_path)
                finally:
                    if stats_temp and os.path.exists(stats_temp):
                        os.remove(stats_temp)
        except inference.Cancelled:
            raise QgsProcessingException("Cancelled by the user: no output was written.") from None
        except raster_io.RasterError as exc:
            raise QgsProcessingException(str(exc)) from exc
        except ModelError as exc:
            raise QgsProcessingException(str(exc)) from exc
        except (RuntimeError, OSError) as exc:
            raise QgsProcessingException(f"Writing the outputs failed: {exc}") from exc

        feedback.pushInfo(
            f"Cloud cover {stats.cloud_percent:.2f} % of valid pixels ({stats.cloud_pixels} "
            f"cloud, {stats.clear_pixels} clear, {stats.nodata_pixels} nodata); cloud area "
            f"{result_stats['cloud_area']:g} {result_stats['area_unit']}."
        )
        return {
            self.OUTPUT: mask_path,
            self.OUTPUT_PROBABILITY: prob_path or None,
            self.OUTPUT_STATS: stats_path or None,
            self.CLOUD_PERCENT: stats.cloud_percent,
            self.CLOUD_PIXELS: stats.cloud_pixels,
            self.CLEAR_PIXELS: stats.clear_pixels,
            self.NODATA_PIXELS: stats.nodata_pixels,
            self.CLOUD_AREA: result_stats["cloud_area"],
            self.AREA_UNIT: result_stats["area_unit"],
            self.MODEL_NAME: f"{mi.name} {mi.version}",
        }

    def _stats_dict(self, stats, info, layer, mi, model, overlap, threshold, mode, seconds):
        d = stats.to_dict()
        d.update(
            cloud_area=stats.cloud_area(info.pixel_area),
            area_unit=self._area_unit(layer),
            pixel_area=info.pixel_area,
            input=info.path,
            width=info.width,
            height=info.height,
            crs=layer.crs().authid(),
            model={
                "name": mi.name,
                "version": mi.version,
                "path": model.path,
                "execution_provider": model.execution_provider,
            },
            threshold=threshold,
            overlap=overlap,
            radiometry=radiometry.LABELS[mode],
            seconds=round(seconds, 3),
        )
        return d

    @staticmethod
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
