"""``cloudmask:detectclouds``: parameters -> :class:`pipeline.MaskRequest` -> pipeline -> QGIS.

All decisions (bands, radiometry, defaults) are the pipeline's; this class only translates
parameters, reports the pipeline's messages to QGIS feedback and returns its numbers.
"""

from __future__ import annotations

import math
import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication

from qgis_cloudmask import pipeline, sources, styles
from qgis_cloudmask.core import bands as band_choice
from qgis_cloudmask.core import radiometry


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


class DetectCloudsAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    RED_BAND = band_choice.PARAMETER["red"]
    GREEN_BAND = band_choice.PARAMETER["green"]
    BLUE_BAND = band_choice.PARAMETER["blue"]
    NIR_BAND = band_choice.PARAMETER["nir"]
    RADIOMETRY = "RADIOMETRY"
    MODEL = "MODEL"
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
            "actually used are outputs too (THRESHOLD_USED, BANDS_USED...)."
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
            QgsProcessingParameterFile(
                self.MODEL,
                self.tr("ONNX model (empty: the bundled model)"),
                extension="onnx",
                optional=True,
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
        )
        for cls, key, label in outputs:
            self.addOutput(cls(key, self.tr(label)))

    # -- parameters ------------------------------------------------------------------------

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """Like QGIS's check, but INPUT may also be a Sentinel-2 product (folder, zip, XML,
        subdataset) or a GDAL path, which QGIS 3.22 cannot load as a layer by itself."""
        value = parameters.get(self.INPUT)
        definition = self.parameterDefinition(self.INPUT)
        if (
            not isinstance(value, str)
            or not value.strip()
            or definition.checkValueIsAcceptable(value, context)
        ):
            return super().checkParameterValues(parameters, context)
        if not self._input_openable(value.strip()):
            return False, self.tr(
                f"Could not load the input '{value}': it is neither a raster layer, a file "
                "GDAL reads, nor a Sentinel-2 product (.SAFE folder, .zip, MTD_MSIL1C.xml / "
                "MTD_MSIL2A.xml or a SENTINEL2_... subdataset)."
            )
        for other in self.parameterDefinitions():
            name = other.name()
            if name != self.INPUT and not other.checkValueIsAcceptable(
                parameters.get(name), context
            ):
                return False, self.tr(f"Incorrect parameter value for {name}")
        return True, ""

    @staticmethod
    def _input_openable(value: str) -> bool:
        if sources.is_product_reference(value):
            return True
        return bool(value.startswith("/vsi") and QgsRasterLayer(value, "input", "gdal").isValid())

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

    @staticmethod
    def _is_set(value) -> bool:
        return value is not None and not (isinstance(value, str) and not value.strip())

    def _optional(self, parameters, key, context, kind):
        """An optional number, ``None`` when unset; a value QGIS cannot read is an error."""
        value = parameters.get(key)
        if not self._is_set(value):
            return None
        getter = self.parameterAsInt if kind is int else self.parameterAsDouble
        number = getter(parameters, key, context)
        if isinstance(value, str):
            try:
                float(value.strip())
            except ValueError:
                raise QgsProcessingException(f"{key} must be a number, got '{value}'.") from None
        if kind is float and not math.isfinite(number):
            raise QgsProcessingException(f"{key} must be a finite number, got '{value}'.")
        return number

    def _model_default(self, parameters, key, context, kind):
        """An optional number whose shown default is the bundled model's: left at that
        default it is ``None``, so the model that actually runs decides (its own default)."""
        value = self._optional(parameters, key, context, kind)
        default = self.parameterDefinition(key).defaultValue()
        if value is not None and default is not None and value == kind(default):
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
                role: self._optional(parameters, key, context, int)
                for role, key in band_choice.PARAMETER.items()
            },
            radiometry=radiometry.Radiometry(
                self.parameterAsEnum(parameters, self.RADIOMETRY, context)
            ),
            model=self.parameterAsFile(parameters, self.MODEL, context) or None,
            overlap=self._model_default(parameters, self.OVERLAP, context, int),
            threshold=self._model_default(parameters, self.THRESHOLD, context, float),
            batch_size=self._optional(parameters, self.BATCH_SIZE, context, int),
            min_cloud_size=self._optional(parameters, self.MIN_CLOUD_SIZE, context, int),
            buffer=self._optional(parameters, self.BUFFER, context, float),
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
