"""``cloudmask:detectclouds``: parameters -> :class:`pipeline.MaskRequest` -> pipeline -> QGIS.

All decisions (bands, radiometry, defaults) are the pipeline's; this class only translates
parameters, reports the pipeline's messages to QGIS feedback and returns its numbers.
"""

from __future__ import annotations

import math
import numbers
import os
import re

from osgeo import gdal
from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)
from qgis.PyQt.QtCore import QCoreApplication, QVariant

from qgis_cloudmask import pipeline, sources, styles
from qgis_cloudmask.core import bands as band_choice
from qgis_cloudmask.core import model as model_info
from qgis_cloudmask.core import radiometry, tta

#: GDAL's sieve counts pixels in 32-bit integers (a larger MIN_CLOUD_SIZE overflows it).
MAX_MIN_CLOUD_SIZE = 2**31 - 1


class _FeedbackReporter(pipeline.Reporter):
    """The pipeline's messages, progress and cancel through QGIS feedback."""

    def __init__(self, feedback) -> None:
        self.feedback = feedback

    def info(self, text: str) -> None:
        self.feedback.pushInfo(text)

    def warning(self, text: str) -> None:
        self.feedback.pushWarning(text)

    def progress(self, fraction: float) -> None:
        self.feedback.setProgress(100.0 * fraction)

    def canceled(self) -> bool:
        return self.feedback.isCanceled()


#: BUNDLED_MODEL's option labels by name (pipeline.MaskRequest.bundled); the options are in
#: the order of pipeline.BUNDLED_MODELS.
BUNDLED_LABELS = {
    "standard": "Standard (float32)",
    "fast": "Fast (int8, about 1.7x faster on a CPU)",
}


class DetectCloudsAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    RED_BAND = band_choice.PARAMETER["red"]
    GREEN_BAND = band_choice.PARAMETER["green"]
    BLUE_BAND = band_choice.PARAMETER["blue"]
    NIR_BAND = band_choice.PARAMETER["nir"]
    RADIOMETRY = "RADIOMETRY"
    MODEL = "MODEL"
    BUNDLED_MODEL = "BUNDLED_MODEL"
    WEIGHTS = "WEIGHTS"
    TTA = "TTA"
    HISTOGRAM_MATCHING = "HISTOGRAM_MATCHING"
    FORCE_CPU = "FORCE_CPU"
    OVERLAP = "OVERLAP"
    THRESHOLD = "THRESHOLD"
    BATCH_SIZE = "BATCH_SIZE"
    OUTPUT = "OUTPUT"
    OUTPUT_PROBABILITY = "OUTPUT_PROBABILITY"
    MIN_CLOUD_SIZE = "MIN_CLOUD_SIZE"
    BUFFER = "BUFFER"
    OUTPUT_STATS = "OUTPUT_STATS"
    OUTPUT_VECTOR = "OUTPUT_VECTOR"
    OUTPUT_MASKED = "OUTPUT_MASKED"
    CLOUD_PERCENT = "CLOUD_PERCENT"
    CLOUD_PIXELS = "CLOUD_PIXELS"
    BUFFER_PERCENT = "BUFFER_PERCENT"
    BUFFER_PIXELS = "BUFFER_PIXELS"
    REMOVED_PIXELS = "REMOVED_PIXELS"
    THRESHOLD_USED = "THRESHOLD_USED"
    OVERLAP_USED = "OVERLAP_USED"
    BANDS_USED = "BANDS_USED"
    RADIOMETRY_USED = "RADIOMETRY_USED"
    TTA_USED = "TTA_USED"
    EXECUTION_PROVIDER = "EXECUTION_PROVIDER"
    CLEAR_PIXELS = "CLEAR_PIXELS"
    NODATA_PIXELS = "NODATA_PIXELS"
    CLOUD_AREA = "CLOUD_AREA"
    AREA_UNIT = "AREA_UNIT"
    MODEL_NAME = "MODEL_NAME"

    BAND_LABELS = {
        "red": "Red (B04)",
        "green": "Green (B03)",
        "blue": "Blue (B02)",
        "nir": "Near-infrared (B08)",
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
            "Masks clouds in Sentinel-2 imagery with a deep-learning model (ONNX), run in "
            "overlapping tiles that are blended smoothly.\n\n"
            "Input: a raster layer or file (GeoTIFF, JP2, VRT...), or a Sentinel-2 product as "
            "downloaded: the .SAFE folder, its .zip, the MTD_MSIL1C.xml / MTD_MSIL2A.xml, or "
            "the 10 m subdataset layer (Level-1C and Level-2A). Products are read at 10 m.\n\n"
            "Bands (automatic unless set): from the product, else from band descriptions "
            "(B04, B4, red, ...), else B02, B03, B04, B08 for a 4-band raster without "
            "descriptions. A raster with more bands and no descriptions needs them set.\n\n"
            "Radiometry (automatic unless set): from the product metadata (processing baseline "
            "04.00 and later store DN + 1000), band scale/offset, a baseline or date in the "
            "metadata or file names, else from the data; every decision and its reason is in "
            "the log and the statistics JSON, and doubt is a warning.\n\n"
            "Post-processing (off unless set): cloud patches smaller than MIN_CLOUD_SIZE pixels "
            "(8-connected) become clear; clear pixels within BUFFER metres of a cloud become "
            "'cloud buffer' (value 2, counted apart).\n\n"
            "Outputs: the mask, a uint8 GeoTIFF on the input's grid (0 = clear, 1 = cloud, "
            "2 = cloud buffer, 255 = nodata), styled (a .qml beside it: clear transparent, cloud "
            "magenta); optionally the cloud probability (0-1), cloud polygons (GeoPackage, with "
            "class and area in m2), the input with clouds and buffer set to nodata, and a "
            "statistics JSON. Cloud percent is of valid pixels, counted on the final mask; "
            "cloud area is in the layer's map units squared (see AREA_UNIT). The settings "
            "actually used are outputs too (THRESHOLD_USED, BANDS_USED...).\n\n"
            "Advanced: BUNDLED_MODEL 'Fast' runs the bundled model quantized to int8 "
            "(about 1.7 times faster on a CPU, the same IoU on the dev chips, 0.1 points more "
            "false positives on clear scenes: docs/speed.md). Test-time augmentation (TTA) "
            "averages the model over flips (4 passes) "
            "or all 8 flips and quarter turns; histogram matching maps the scene's reflectance "
            "quantiles onto the model's training data first; several ONNX models (MODEL) form "
            "an ensemble whose probabilities are averaged (WEIGHTS: one per model), with the "
            "mean of their thresholds unless THRESHOLD is set. All are off by default: see "
            "docs/inference-options.md for what each costs and changes. The model runs on a "
            "GPU when onnxruntime has one (onnxruntime-gpu, DirectML, CoreML), unless FORCE_CPU "
            "is set; EXECUTION_PROVIDER says which ran."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        defaults = pipeline.bundled_model_info()
        self.addParameter(
            QgsProcessingParameterRasterLayer(
                self.INPUT, self.tr("Sentinel-2 raster or product (.SAFE, .zip, MTD_*.xml)")
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.THRESHOLD,
                self.tr("Cloud probability threshold"),
                QgsProcessingParameterNumber.Double,
                defaultValue=defaults.threshold if defaults else None,
                optional=defaults is None,
                minValue=0.0,
                maxValue=1.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MIN_CLOUD_SIZE,
                self.tr("Remove cloud patches smaller than (pixels; 0 keeps all)"),
                QgsProcessingParameterNumber.Integer,
                defaultValue=0,
                minValue=0,
                maxValue=MAX_MIN_CLOUD_SIZE,
            )
        )
        self.addParameter(  # metres whatever the CRS (a distance parameter would use its unit)
            QgsProcessingParameterNumber(
                self.BUFFER,
                self.tr("Cloud buffer (metres; 0 for none)"),
                QgsProcessingParameterNumber.Double,
                defaultValue=0.0,
                minValue=0.0,
            )
        )
        for key, decimals in ((self.THRESHOLD, 2), (self.BUFFER, 1)):  # not QGIS's 6
            self.parameterDefinition(key).setMetadata({"widget_wrapper": {"decimals": decimals}})
        for role, label in self.BAND_LABELS.items():
            # no default: an unset band is chosen automatically by the pipeline
            self.addParameter(
                QgsProcessingParameterBand(
                    band_choice.PARAMETER[role],
                    self.tr(f"{label} band (automatic if not set)"),
                    None,
                    self.INPUT,
                    optional=True,
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
        advanced = [
            QgsProcessingParameterNumber(
                self.OVERLAP,
                self.tr("Tile overlap (pixels)"),
                QgsProcessingParameterNumber.Integer,
                defaultValue=defaults.recommended_overlap if defaults else None,
                optional=defaults is None,
                minValue=0,
            ),
            QgsProcessingParameterNumber(
                self.BATCH_SIZE,
                self.tr("Tiles per batch"),
                QgsProcessingParameterNumber.Integer,
                defaultValue=pipeline.DEFAULT_BATCH_SIZE,
                minValue=1,
                maxValue=pipeline.MAX_BATCH_SIZE,
            ),
            QgsProcessingParameterEnum(
                self.TTA,
                self.tr("Test-time augmentation"),
                options=[self.tr(label) for label in tta.LABELS.values()],
                defaultValue=int(tta.TTA.NONE),
            ),
            QgsProcessingParameterBoolean(
                self.HISTOGRAM_MATCHING,
                self.tr("Histogram matching to the model's training data"),
                defaultValue=False,
            ),
            QgsProcessingParameterEnum(
                self.BUNDLED_MODEL,
                self.tr("Bundled model (when no ONNX model is given)"),
                options=[self.tr(BUNDLED_LABELS[name]) for name in pipeline.BUNDLED_MODELS],
                defaultValue=0,
            ),
            QgsProcessingParameterMultipleLayers(
                self.MODEL,
                self.tr("ONNX model(s) (empty: the bundled model; several: an ensemble)"),
                QgsProcessing.TypeFile,
                optional=True,
            ),
            QgsProcessingParameterString(
                self.WEIGHTS,
                self.tr("Ensemble weights, one per model (e.g. 2, 1; empty: equal)"),
                optional=True,
            ),
            QgsProcessingParameterBoolean(
                self.FORCE_CPU,
                self.tr("Run on the CPU even when onnxruntime has a GPU"),
                defaultValue=False,
            ),
        ]
        for p in advanced:
            p.setFlags(p.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
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
            QgsProcessingParameterVectorDestination(
                self.OUTPUT_VECTOR,
                self.tr("Cloud polygons"),
                QgsProcessing.TypeVectorPolygon,
                optional=True,
                createByDefault=False,
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.OUTPUT_MASKED,
                self.tr("Masked image (clouds set to nodata)"),
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
            (QgsProcessingOutputNumber, self.BUFFER_PERCENT, "Cloud buffer (% of valid pixels)"),
            (QgsProcessingOutputNumber, self.BUFFER_PIXELS, "Cloud buffer pixels"),
            (QgsProcessingOutputNumber, self.CLEAR_PIXELS, "Clear pixels"),
            (QgsProcessingOutputNumber, self.NODATA_PIXELS, "Nodata pixels"),
            (QgsProcessingOutputNumber, self.REMOVED_PIXELS, "Cloud pixels removed as small"),
            (QgsProcessingOutputNumber, self.CLOUD_AREA, "Cloud area (map units squared)"),
            (QgsProcessingOutputString, self.AREA_UNIT, "Unit of the cloud area"),
            (QgsProcessingOutputString, self.MODEL_NAME, "Model name and version"),
            (QgsProcessingOutputNumber, self.THRESHOLD_USED, "Threshold used"),
            (QgsProcessingOutputNumber, self.OVERLAP_USED, "Tile overlap used (pixels)"),
            (QgsProcessingOutputString, self.BANDS_USED, "Bands used"),
            (QgsProcessingOutputString, self.RADIOMETRY_USED, "Radiometry used"),
            (QgsProcessingOutputString, self.TTA_USED, "Test-time augmentation used"),
            (QgsProcessingOutputString, self.EXECUTION_PROVIDER, "onnxruntime execution provider"),
        )
        for cls, key, label in outputs:
            self.addOutput(cls(key, self.tr(label)))

    # -- parameters ------------------------------------------------------------------------
    #
    # QGIS's own check says only "Incorrect parameter value for X", reads 99999999999 as 0 (an
    # int overflow), a band of 2.5 as "not set" and "Could not load source layer" for a file
    # that exists but is damaged. Every value a user types is therefore read here, once, by
    # _value: checkParameterValues reports its message before the run, _request uses the same
    # values (a model or a script may skip the check).

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """Every parameter checked with a message that names it, the value seen and what is
        allowed; INPUT may also be a Sentinel-2 product (folder, zip, XML, subdataset) or a
        GDAL path, which QGIS 3.22 cannot load as a layer by itself."""
        problem = self._input_problem(parameters.get(self.INPUT), context)
        if problem:
            return False, problem
        for definition in self.parameterDefinitions():
            name = definition.name()
            if name == self.INPUT:
                continue
            if name in self._READ_HERE:
                try:
                    self._value(parameters, name, context)
                except QgsProcessingException as exc:
                    return False, str(exc)
            elif not definition.checkValueIsAcceptable(parameters.get(name), context):
                return False, self.tr(f"Incorrect parameter value for {name}")
        return True, ""

    def _input_problem(self, value, context) -> str | None:
        """Why INPUT cannot be used, or ``None``. A file is opened with GDAL and a few pixels
        read, so a damaged one is named as such before the run instead of "not found"."""
        definition = self.parameterDefinition(self.INPUT)
        if not isinstance(value, str) or not value.strip():
            # a layer object, a data-defined value, or nothing: QGIS knows best
            if definition.checkValueIsAcceptable(value, context):
                return None
            return self.tr(
                "No input raster was given (INPUT): choose a Sentinel-2 raster layer or file, or "
                "a product (.SAFE folder, .zip, MTD_MSIL1C.xml / MTD_MSIL2A.xml)."
            )
        path = value.strip()
        if sources.is_product_reference(path):
            return None  # the pipeline opens products and explains what is wrong with one
        if os.path.isfile(path):
            return self._unreadable(path)
        if os.path.isdir(path):
            return self.tr(
                f"The input '{path}' is a folder, but not a Sentinel-2 product: a .SAFE folder "
                "holds MTD_MSIL1C.xml or MTD_MSIL2A.xml. Choose the raster file inside it, or "
                "the product's .SAFE folder or .zip."
            )
        if definition.checkValueIsAcceptable(path, context):
            return None  # a layer of the project (id or name) or a source QGIS loads
        if path.startswith("/vsi"):
            return self._unreadable(path)
        return self.tr(
            f"The input '{path}' does not exist: it is neither a file, a Sentinel-2 product nor "
            "a layer of the project. Check the path (and that the drive is mounted)."
        )

    def _unreadable(self, path: str) -> str | None:
        """Why GDAL cannot read the raster file ``path`` (open, then a few pixels), or None."""
        prefix = f"The input '{path}' exists, but GDAL cannot read it as a raster"
        if not path.startswith("/vsi") and os.path.getsize(path) == 0:
            return self.tr(
                f"{prefix}: the file is empty (0 bytes), e.g. a download or copy that did not "
                "finish: download or copy it again."
            )
        try:
            ds = gdal.Open(path, gdal.GA_ReadOnly)
        except RuntimeError as exc:
            return self.tr(
                f"{prefix} ({_first_line(exc)}). It is damaged or truncated, or not a raster "
                "at all (a text, JSON or vector file...): choose the raster file (GeoTIFF, JP2, "
                "VRT...) or the Sentinel-2 product, or download or copy it again."
            )
        if ds is None or ds.RasterCount == 0:
            return None  # no bands, e.g. a container of subdatasets: the pipeline lists them
        w, h = ds.RasterXSize, ds.RasterYSize
        try:
            for x, y in ((0, 0), (w // 2, h // 2), (w - 1, h - 1)):
                ds.ReadRaster(x, y, 1, 1)
        except RuntimeError as exc:
            return self.tr(
                f"{prefix}: its pixels cannot be read ({_first_line(exc)}). The file is "
                "truncated or damaged (an interrupted download or copy?): download or copy it "
                "again."
            )
        return None

    def _input_path(self, parameters, context) -> str:
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is not None:
            if not layer.isValid():
                raise QgsProcessingException("The input raster could not be loaded.")
            if layer.providerType() != "gdal":
                raise QgsProcessingException(
                    f"The input must be a file-based raster (GDAL); got a "
                    f"'{layer.providerType()}' layer. Export it to GeoTIFF first."
                )
            return layer.source()
        value = parameters.get(self.INPUT)
        if isinstance(value, str) and value.strip():
            return value.strip()
        raise QgsProcessingException("The input raster could not be loaded.")

    #: Parameters whose values _value reads itself -> what kind of value (see _allowed).
    _READ_HERE = {
        THRESHOLD: "probability",
        BUFFER: "metres",
        MIN_CLOUD_SIZE: "pixels",
        BATCH_SIZE: "tiles",
        OVERLAP: "overlap",
        RADIOMETRY: "radiometry",
        TTA: "tta",
        BUNDLED_MODEL: "bundled",
        WEIGHTS: "weights",
        **{key: "band" for key in band_choice.PARAMETER.values()},
    }

    def _allowed(self, key: str, parameters, context) -> str:
        """What ``key`` accepts, in words (ranges from the parameter definitions)."""
        kind = self._READ_HERE[key]
        definition = self.parameterDefinition(key)
        if kind == "band":
            return "a band number of the input raster: 1 for its first band (empty: automatic)"
        if kind == "tta":
            modes = "; ".join(f"{int(mode)} = {label}" for mode, label in tta.LABELS.items())
            return f"one of {modes} (or the name {', '.join(tta.OPTION_NAMES.values())})"
        if kind == "weights":
            return "numbers greater than 0 separated by commas, one per model of MODEL (e.g. 2, 1)"
        if kind == "bundled":
            names = list(pipeline.BUNDLED_MODELS)
            models = "; ".join(f"{i} = {BUNDLED_LABELS[name]}" for i, name in enumerate(names))
            return f"one of {models} (or the name {', '.join(names)})"
        if kind == "radiometry":
            modes = "; ".join(
                f"{int(mode)} = {radiometry.LABELS[mode]}" for mode in radiometry.Radiometry
            )
            names = ", ".join(radiometry.OPTION_NAMES.values())
            return f"one of {modes} (or the name {names})"
        if kind == "overlap":
            tile = self._tile_size(parameters, context)
            if tile is None:
                return "a whole number of pixels from 0 to half the model's tile size"
            limit = pipeline.max_overlap(tile)  # the limit pipeline.resolve applies, in its words
            return f"a whole number of pixels, 0 to {limit} px for this model's {tile}-px tiles"
        low, high = definition.minimum(), definition.maximum()
        span = f"from {_shown(low)} to {_shown(high)}" if high < 1e300 else f"{_shown(low)} or more"
        return {
            "probability": f"a probability {span}",
            "metres": f"a distance in metres, {span} (0: no buffer)",
            "pixels": f"a whole number of pixels, {span} (0 keeps every cloud patch)",
            "tiles": f"a whole number of tiles {span}",
        }[kind]

    def _tile_size(self, parameters, context) -> int | None:
        """The tile size of the model that will run (MODEL, else the bundled one), if known."""
        models = self._models(parameters, context)
        if models:
            try:
                return model_info.read_info(models[0]).tile_size
            except model_info.ModelError:
                return None  # the run explains what is wrong with the model
        info = pipeline.bundled_model_info()
        return info.tile_size if info else None

    def _refuse(self, key: str, value, parameters, context, hint: str = "") -> None:
        shown = f"'{value}'" if isinstance(value, str) else repr(value)
        label = self.parameterDefinition(key).description()
        raise QgsProcessingException(
            self.tr(
                f"{key} ({label}) must be {self._allowed(key, parameters, context)}, got "
                f"{shown}.{hint}"
            )
        )

    def _value(self, parameters, key, context):
        """The value of a parameter of :attr:`_READ_HERE`, ``None`` when unset; anything else
        raises with a message naming the parameter, the value seen and what is allowed."""
        value = parameters.get(key)
        if isinstance(value, QVariant) and value.isNull():
            value = None
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        kind = self._READ_HERE[key]
        if kind == "weights":
            return self._weights(key, value, parameters, context)
        if not isinstance(value, (str, numbers.Real)):
            # a data-defined value (QgsProperty...) or the like: QGIS evaluates it
            if not self.parameterDefinition(key).checkValueIsAcceptable(value, context):
                self._refuse(key, value, parameters, context)
            if kind == "radiometry":
                return radiometry.Radiometry(self.parameterAsEnum(parameters, key, context))
            if kind == "tta":
                return tta.TTA(self.parameterAsEnum(parameters, key, context))
            if kind == "bundled":
                return list(pipeline.BUNDLED_MODELS)[self.parameterAsEnum(parameters, key, context)]
            whole = kind not in ("probability", "metres")
            getter = self.parameterAsInt if whole else self.parameterAsDouble
            return getter(parameters, key, context)
        if kind == "radiometry":
            return self._radiometry(key, value, parameters, context)
        if kind == "tta":
            try:
                return tta.parse(value if isinstance(value, str) else _number(value))
            except (ValueError, TypeError):
                self._refuse(key, value, parameters, context)
        if kind == "bundled":
            names = list(pipeline.BUNDLED_MODELS)
            if isinstance(value, str) and value.strip().lower() in names:
                return value.strip().lower()
            number = _number(value)
            if number is None or number not in range(len(names)):
                self._refuse(key, value, parameters, context)
            return names[int(number)]
        number = _number(value)
        if number is None:
            hint = ""
            if isinstance(value, str) and _DECIMAL_COMMA.fullmatch(value.strip()):
                point = value.strip().replace(",", ".")
                hint = f" Write decimals with a point: {point}, not {value.strip()}."
            self._refuse(key, value, parameters, context, hint)
        if kind in ("probability", "metres"):
            definition = self.parameterDefinition(key)
            if not definition.minimum() <= number <= definition.maximum():
                self._refuse(key, value, parameters, context)
            return float(number)
        if number != int(number):
            self._refuse(key, value, parameters, context)
        number = int(number)  # a Python int: 99999999999 stays itself (QGIS reads 0)
        if kind == "band":
            return number  # the pipeline checks it against the input's bands
        definition = self.parameterDefinition(key)
        if number < definition.minimum() or number > definition.maximum():
            self._refuse(key, value, parameters, context)
        return number

    def _weights(self, key, value, parameters, context) -> list[float] | None:
        """WEIGHTS: numbers > 0 separated by commas (or semicolons), or a list of them."""
        items = value if isinstance(value, (list, tuple)) else re.split(r"[,;\s]+", str(value))
        items = [i for i in items if not (isinstance(i, str) and not i.strip())]
        weights = [_number(i) for i in items]
        if not weights or any(w is None or w <= 0 for w in weights):
            self._refuse(key, value, parameters, context)
        models = self._models(parameters, context)
        if len(weights) != max(1, len(models)):
            count = f"{len(models)} model(s)" if models else "the bundled model alone"
            self._refuse(
                key,
                value,
                parameters,
                context,
                f" {len(weights)} weight(s) were given for {count}.",
            )
        return [float(w) for w in weights]

    def _models(self, parameters, context) -> list[str]:
        """The ONNX files of MODEL (a list, or one path or several joined by ';')."""
        value = parameters.get(self.MODEL)
        if value is None or (isinstance(value, QVariant) and value.isNull()):
            return []
        items = value if isinstance(value, (list, tuple)) else str(value).split(";")
        return [str(i).strip() for i in items if str(i).strip()]

    def _radiometry(self, key, value, parameters, context) -> radiometry.Radiometry:
        by_name = {name: mode for mode, name in radiometry.OPTION_NAMES.items()}
        if isinstance(value, str) and value.strip().lower() in by_name:
            return by_name[value.strip().lower()]
        number = None if isinstance(value, bool) else _number(value)
        if number is None or number not in {int(m) for m in radiometry.Radiometry}:
            self._refuse(key, value, parameters, context)
        return radiometry.Radiometry(int(number))

    def _model_default(self, parameters, key, context):
        """An optional number whose shown default is the bundled model's: left at that
        default it is ``None``, so the model that actually runs decides (its own default)."""
        value = self._value(parameters, key, context)
        default = self.parameterDefinition(key).defaultValue()
        if value is not None and default is not None and value == type(value)(default):
            return None
        return value

    def _request(self, parameters, context) -> pipeline.MaskRequest:
        def output(key):
            return self.parameterAsOutputLayer(parameters, key, context) or None

        return pipeline.MaskRequest(
            input=self._input_path(parameters, context),
            output=output(self.OUTPUT),
            probability=output(self.OUTPUT_PROBABILITY),
            vector=output(self.OUTPUT_VECTOR),
            masked=output(self.OUTPUT_MASKED),
            stats=self.parameterAsFileOutput(parameters, self.OUTPUT_STATS, context) or None,
            bands={
                role: self._value(parameters, key, context)
                for role, key in band_choice.PARAMETER.items()
            },
            radiometry=self._value(parameters, self.RADIOMETRY, context)
            or radiometry.Radiometry.AUTOMATIC,
            model=self._models(parameters, context) or None,
            bundled=self._value(parameters, self.BUNDLED_MODEL, context) or "standard",
            weights=self._value(parameters, self.WEIGHTS, context),
            tta=self._value(parameters, self.TTA, context) or tta.TTA.NONE,
            histogram_matching=self.parameterAsBoolean(
                parameters, self.HISTOGRAM_MATCHING, context
            ),
            device="cpu"
            if self.parameterAsBoolean(parameters, self.FORCE_CPU, context)
            else "auto",
            overlap=self._model_default(parameters, self.OVERLAP, context),
            threshold=self._model_default(parameters, self.THRESHOLD, context),
            batch_size=self._value(parameters, self.BATCH_SIZE, context),
            min_cloud_size=self._value(parameters, self.MIN_CLOUD_SIZE, context),
            buffer=self._value(parameters, self.BUFFER, context),
        )

    # -- the work --------------------------------------------------------------------------

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        request = self._request(parameters, context)
        try:
            result = pipeline.run(request, _FeedbackReporter(feedback))
        except pipeline.PipelineError as exc:
            raise QgsProcessingException(str(exc)) from exc
        self._style_loaded_layers(request, context)
        stats, settings = result.stats, result.settings
        return {
            self.OUTPUT: request.output,
            self.OUTPUT_PROBABILITY: request.probability,
            self.OUTPUT_VECTOR: request.vector,
            self.OUTPUT_MASKED: request.masked,
            self.OUTPUT_STATS: request.stats,
            self.CLOUD_PERCENT: stats.cloud_percent,
            self.CLOUD_PIXELS: stats.cloud_pixels,
            self.BUFFER_PERCENT: stats.buffer_percent,
            self.BUFFER_PIXELS: stats.buffer_pixels,
            self.CLEAR_PIXELS: stats.clear_pixels,
            self.NODATA_PIXELS: stats.nodata_pixels,
            self.REMOVED_PIXELS: result.summary["removed_cloud_pixels"],
            self.CLOUD_AREA: result.cloud_area,
            self.AREA_UNIT: result.area_unit,
            self.MODEL_NAME: result.model_name,
            self.THRESHOLD_USED: settings["threshold"]["value"],
            self.OVERLAP_USED: settings["overlap"]["value"],
            self.BANDS_USED: ", ".join(f"{k}={v}" for k, v in settings["bands"]["value"].items()),
            self.RADIOMETRY_USED: settings["radiometry"]["value"],
            self.TTA_USED: settings["tta"]["value"],
            self.EXECUTION_PROVIDER: settings["execution_provider"]["value"],
        }

    def _style_loaded_layers(self, request: pipeline.MaskRequest, context) -> None:
        """Outputs the desktop loads get the style written beside them (Processing loads layers
        without their default style)."""
        for path in (request.output, request.probability, request.masked, request.vector):
            if path and context.willLoadLayerOnCompletion(path):
                # polygons: the default style stored inside the GeoPackage
                qml = styles.style_path(path) if path != request.vector else None
                processor = DefaultStyle(qml)
                _POST_PROCESSORS.append(processor)
                context.layerToLoadOnCompletionDetails(path).setPostProcessor(processor)


#: "0,5": a decimal comma, which Python (and QGIS) cannot read as a number
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")


def _number(value) -> int | float | None:
    """A finite number from what a user typed or a script passed, else ``None``. Integers
    stay Python ints (no overflow); NaN and infinity are no numbers here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, numbers.Integral):  # also NumPy integers
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value):
        return float(value)
    return None


def _shown(number: float) -> str:
    """A range limit as a person writes it: 2147483647, not 2.14748e+09."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


#: Post-processors must outlive processAlgorithm (QGIS holds no Python reference to them).
_POST_PROCESSORS: list = []


class DefaultStyle(QgsProcessingLayerPostProcessorInterface):
    """Applies the style written with an output (a .qml file, or for ``qml=None`` the default
    style stored in the layer's data source) to the layer the desktop loads after the run."""

    def __init__(self, qml: str | None) -> None:
        super().__init__()
        self.qml = qml

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        if layer is None:
            return
        if self.qml is None:
            message, ok = layer.loadDefaultStyle()
        elif os.path.isfile(self.qml):
            message, ok = layer.loadNamedStyle(self.qml)
        else:
            return
        if not ok and feedback is not None:
            feedback.pushWarning(f"Could not apply the style of {layer.name()}: {message}")
        layer.triggerRepaint()
