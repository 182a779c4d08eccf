"""Metrics from pooled counts (the one function training and evaluation share)."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import confusion, scores, threshold_curve

pytestmark = pytest.mark.training


def test_scores_from_counts():
    s = scores(tp=6, fp=2, fn=2, tn=10)
    assert s["iou"] == pytest.approx(6 / 10)
    assert s["f1"] == pytest.approx(12 / 16)
    assert s["precision"] == pytest.approx(0.75)
    assert s["recall"] == pytest.approx(0.75)
    assert s["accuracy"] == pytest.approx(16 / 20)
    assert s["balanced_accuracy"] == pytest.approx(0.5 * (0.75 + 10 / 12))


def test_no_cloud_anywhere_is_perfect_not_zero():
    s = scores(0, 0, 0, 50)
    assert s["iou"] == 1.0 and s["f1"] == 1.0 and s["accuracy"] == 1.0


def test_confusion_counts_only_valid_pixels():
    pred = np.array([[1, 1, 0, 0]])
    label = np.array([[1, 0, 1, 0]])
    valid = np.array([[True, True, True, False]])
    assert confusion(pred, label, valid).tolist() == [1, 1, 1, 0]


def test_pooling_is_not_averaging():
    a = confusion(np.ones(10), np.ones(10))  # iou 1
    b = confusion(np.array([1, 0]), np.array([0, 1]))  # iou 0
    assert scores(*(a + b))["iou"] == pytest.approx(10 / 12)


def test_threshold_curve_counts_each_threshold():
    prob = np.array([0.1, 0.4, 0.6, 0.9])
    label = np.array([0, 0, 1, 1])
    curve = threshold_curve(prob, label, np.array([0.0, 0.5, 1.0]))
    assert curve.tolist() == [[2, 2, 0, 0], [2, 0, 0, 2], [0, 0, 2, 2]]
