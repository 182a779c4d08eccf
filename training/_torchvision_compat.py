"""Import segmentation-models-pytorch on a CPU-only torch whose torchvision is a CUDA build.

torchvision 0.28.0 from PyPI ships compiled ops built for CUDA torch; on ``torch==2.13.0+cpu``
they fail to load and ``import torchvision`` raises ``RuntimeError: operator torchvision::nms
does not exist`` (smp and timm import torchvision at import time). We first try the normal
import; only if it fails do we register the two missing operator *schemas* with
``torch.library`` so the Python import succeeds. The compiled ops stay unusable, which is fine:
a U-Net never calls nms. Every training module imports smp through this module.
"""

from __future__ import annotations

import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keep a reference: the registration lives as long as this object


def _import_torchvision() -> None:
    global _LIBRARY
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    # drop the half-imported package, define the schemas, import again
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _LIBRARY = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
    for schema in _SCHEMAS.values():
        _LIBRARY.define(schema)
    import torchvision  # noqa: F401


_import_torchvision()

import segmentation_models_pytorch as smp  # noqa: E402

__all__ = ["smp"]
