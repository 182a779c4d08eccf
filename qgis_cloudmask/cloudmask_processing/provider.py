"""The ``cloudmask`` Processing provider."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from qgis_cloudmask.cloudmask_processing.detect_clouds import DetectCloudsAlgorithm

ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "icon.svg")


class CloudMaskProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "cloudmask"

    def name(self) -> str:
        return "Cloud mask"

    def longName(self) -> str:  # noqa: N802
        return "Cloud mask (Sentinel-2, deep learning)"

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def loadAlgorithms(self) -> None:  # noqa: N802
        self.addAlgorithm(DetectCloudsAlgorithm())

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802
        return ["tif"]
