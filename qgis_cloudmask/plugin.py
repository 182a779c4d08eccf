"""Plugin life cycle: register the Processing provider (also under qgis_process, which only
calls ``initProcessing``) and remove it on unload; in desktop QGIS, offer to install
onnxruntime when it is missing."""

from __future__ import annotations

from qgis.core import QgsApplication

from qgis_cloudmask.cloudmask_processing.provider import CloudMaskProvider


class CloudMaskPlugin:
    def __init__(self, iface=None) -> None:
        self.iface = iface
        self.provider: CloudMaskProvider | None = None
        self.installer = None

    def initProcessing(self) -> None:  # noqa: N802
        if self.provider is None:
            self.provider = CloudMaskProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        self.initProcessing()
        if self.iface is not None:
            from qgis_cloudmask.installer import OnnxruntimeInstaller

            self.installer = OnnxruntimeInstaller(self.iface)
            self.installer.check()

    def unload(self) -> None:
        if self.installer is not None:
            self.installer.remove_message()
            self.installer = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
