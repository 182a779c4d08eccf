"""Loss functions on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from training.config import LossConfig
from training.losses import LOSSES, bce, dice, focal, make_loss, soft_target

pytestmark = pytest.mark.training


def t(*values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)


def test_bce_of_zero_logit_is_log2():
    assert bce(t(0.0, 0.0), t(1.0, 0.0)).item() == pytest.approx(math.log(2))


def test_weighted_bce_weights_cloud_pixels():
    # logit 0: cloud pixel costs 3 * log 2, clear pixel log 2 -> mean 2 log 2
    assert bce(t(0.0, 0.0), t(1.0, 0.0), pos_weight=3.0).item() == pytest.approx(2 * math.log(2))


def test_dice_hand_computed():
    # p = sigmoid(0) = 0.5 on both pixels, y = (1, 0): 1 - (2*0.5 + 1) / (1 + 1 + 1) = 1/3
    assert dice(t(0.0, 0.0), t(1.0, 0.0)).item() == pytest.approx(1 / 3)


def test_dice_of_confident_correct_prediction_is_near_zero():
    assert dice(t(20.0, -20.0), t(1.0, 0.0)).item() == pytest.approx(0.0, abs=1e-6)


def test_focal_with_gamma_zero_is_half_bce():
    logits, target = t(0.3, -1.2, 2.0), t(1.0, 0.0, 0.0)
    assert focal(logits, target, gamma=0.0, alpha=0.5).item() == pytest.approx(
        0.5 * bce(logits, target).item()
    )


def test_focal_hand_computed():
    # logit 0, target 1: p_t = 0.5 -> 0.25 * (0.5)^2 * log 2
    assert focal(t(0.0), t(1.0), gamma=2.0, alpha=0.25).item() == pytest.approx(
        0.25 * 0.25 * math.log(2)
    )


def test_soft_target_is_zero_when_student_matches_teacher():
    p = torch.tensor([0.2, 0.7, 0.5])
    logits = torch.log(p / (1 - p)).reshape(1, 1, 1, -1)
    assert soft_target(logits, p.reshape(1, 1, 1, -1)).item() == pytest.approx(0.0, abs=1e-5)


def test_soft_target_hand_computed():
    # teacher 0.5, student p = sigmoid(ln 3) = 0.75: KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)
    assert soft_target(t(math.log(3.0)), t(0.5)).item() == pytest.approx(expected, rel=1e-5)


def test_nan_targets_are_ignored():
    assert bce(t(0.0, 5.0), t(1.0, float("nan"))).item() == pytest.approx(math.log(2))


@pytest.mark.parametrize("name", LOSSES)
def test_every_named_loss_is_finite_and_differentiable(name):
    logits = torch.zeros(2, 1, 4, 4, requires_grad=True)
    target = torch.rand(2, 4, 4)
    loss = make_loss(LossConfig(name=name))(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None


def test_unknown_loss_name_is_rejected():
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss(LossConfig(name="hinge"))
