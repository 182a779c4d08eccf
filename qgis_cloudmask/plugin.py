"""Plugin life cycle: register the Processing provider (also under qgis_process, which only
calls ``initProcessing``) and remove it on unload."""

from __future__ import annotations

from qgis.core import QgsApplication

from qgis_cloudmask.cloudmask_processing.provider import CloudMaskProvider


class CloudMaskPlugin:
    def __init__(self, iface=None) -> None:
        self.iface = iface
        self.provider: CloudMaskProvider | None = None

    def initProcessing(self) -> None:  # noqa: N802
        if self.provider is None:
            self.provider = CloudMaskProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
