"""Loss functions on logits ``N x 1 x H x W`` (or ``N x H x W``) and targets in [0, 1].

Targets may be soft (teacher probabilities, blended synthetic cloud edges). Pixels whose
target is NaN (nodata) are ignored by every loss. Select one by name with :func:`make_loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as tnf

from training.config import LossConfig

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EPS = 1e-6


def _prepare(logits: torch.Tensor, target: torch.Tensor):
    logits = logits.reshape(logits.shape[0], -1).float()
    target = target.reshape(target.shape[0], -1).float()
    valid = torch.isfinite(target)
    target = torch.where(valid, target, torch.zeros_like(target))
    return logits, target, valid.float()


def _mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return (values * valid).sum() / valid.sum().clamp_min(1.0)


def bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """Binary cross-entropy; ``pos_weight`` > 1 weights cloud pixels up (weighted BCE)."""
    logits, target, valid = _prepare(logits, target)
    pw = torch.tensor(float(pos_weight), dtype=logits.dtype)
    values = tnf.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none")
    return _mean(values, valid)


def dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 sum(p y) + s) / (sum(p) + sum(y) + s)``, pooled over the batch."""
    logits, target, valid = _prepare(logits, target)
    p = torch.sigmoid(logits) * valid
    y = target * valid
    return 1.0 - (2.0 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth)


def focal(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.5
) -> torch.Tensor:
    """Focal loss ``-a_t (1 - p_t)^gamma log(p_t)`` (Lin et al. 2017); alpha weights clouds.

    With ``alpha = 0.5`` and ``gamma = 0`` it is half the BCE.
    """
    logits, target, valid = _prepare(logits, target)
    ce = tnf.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    return _mean(a_t * (1 - p_t) ** gamma * ce, valid)


def soft_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distillation loss: KL(teacher || student) for Bernoulli pixels.

    Equals BCE against the soft teacher probability minus the teacher's own entropy, so it is
    0 exactly when the student reproduces the teacher, and has the same gradient as soft BCE.
    """
    logits, target, valid = _prepare(logits, target)
    ce = tnf.binary_cross_entropy_with_logits(logits, target, reduction="none")
    t = target.clamp(EPS, 1 - EPS)
    entropy = -(t * torch.log(t) + (1 - t) * torch.log(1 - t))
    return _mean(ce - entropy, valid)


LOSSES = ("bce", "weighted_bce", "dice", "bce_dice", "focal", "soft_target")


def make_loss(cfg: LossConfig) -> Loss:
    """The loss named by ``cfg.name`` (one of :data:`LOSSES`) with its parameters bound."""
    name = cfg.name
    if name == "bce":
        return lambda lo, t: bce(lo, t)
    if name == "weighted_bce":
        return lambda lo, t: bce(lo, t, cfg.pos_weight)
    if name == "dice":
        return dice
    if name == "bce_dice":
        return lambda lo, t: bce(lo, t) + cfg.dice_weight * dice(lo, t)
    if name == "focal":
        return lambda lo, t: focal(lo, t, cfg.focal_gamma, cfg.focal_alpha)
    if name == "soft_target":
        return soft_target
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
