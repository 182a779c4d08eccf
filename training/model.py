"""The network: an smp U-Net trained from scratch, and the export wrapper of the contract.

``build_unet`` returns logits ``N x 1 x H x W`` for *normalised* input. ``ExportWrapper`` puts
the normalisation (mean/std of reflectance) inside the graph and produces the two contract
outputs: ``probability`` (sigmoid, ``N x H x W`` float32) and ``mask``
(``probability >= threshold`` as uint8, the same comparison the plugin uses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as tnf
from torch import nn

from training._torchvision_compat import smp

#: Reflectance mean/std per model channel (red, green, blue, nir), typical for S2 scenes with
#: and without clouds; used for input normalisation (inside the exported graph).
DEFAULT_MEAN = (0.20, 0.19, 0.19, 0.30)
DEFAULT_STD = (0.20, 0.18, 0.18, 0.18)


def build_unet(
    encoder: str = "resnet18",
    depth: int = 5,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    in_channels: int = 4,
) -> nn.Module:
    """An smp U-Net with random weights (nothing is downloaded: ``encoder_weights=None``)."""
    return smp.Unet(
        encoder_name=encoder,
        encoder_weights=None,
        encoder_depth=depth,
        decoder_channels=list(decoder_channels),
        in_channels=in_channels,
        classes=1,
    )


class Normalised(nn.Module):
    """``net`` applied to ``(reflectance - mean) / std``; returns logits ``N x 1 x H x W``.

    With ``downsample = k > 1`` the U-Net runs on a ``k x k`` average-pooled image (10 m ->
    ``10 k`` m; clouds are smooth at that scale) and its logits are upsampled bilinearly back
    to the input size: about ``k**2`` times less compute, which is what makes the shipped model
    many times faster than the teacher on a CPU.
    """

    def __init__(
        self, net: nn.Module, mean: Sequence[float], std: Sequence[float], downsample: int = 1
    ) -> None:
        super().__init__()
        self.net = net
        self.downsample = int(downsample)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, reflectance: torch.Tensor) -> torch.Tensor:
        x = (reflectance - self.mean) / self.std
        if self.downsample > 1:
            x = tnf.avg_pool2d(x, self.downsample)
            logits = self.net(x)
            return tnf.interpolate(
                logits, scale_factor=float(self.downsample), mode="bilinear", align_corners=False
            )
        return self.net(x)


class ExportWrapper(nn.Module):
    """Reflectance in, ``(mask uint8, probability float32)`` out, both ``N x H x W``."""

    def __init__(self, model: Normalised, threshold: float) -> None:
        super().__init__()
        self.model = model
        self.threshold = float(threshold)

    def forward(self, reflectance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probability = torch.sigmoid(self.model(reflectance)[:, 0])
        mask = (probability >= self.threshold).to(torch.uint8)
        return mask, probability
