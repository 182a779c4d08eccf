"""Binary segmentation metrics from pooled confusion counts (one definition for train and eval).

Counts are pooled over all pixels of all images first, then turned into scores (as smp does),
never averaged per batch or per tile. "Positive" is cloud.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("iou", "f1", "precision", "recall", "accuracy", "balanced_accuracy")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def scores(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    """IoU, F1, precision, recall, accuracy and balanced accuracy from pooled counts.

    ``iou = tp / (tp + fp + fn)``; ``f1 = 2 tp / (2 tp + fp + fn)``;
    ``precision = tp / (tp + fp)``; ``recall = tp / (tp + fn)``;
    ``accuracy = (tp + tn) / all``; ``balanced_accuracy = (recall + tn / (tn + fp)) / 2``.
    A ratio with a zero denominator is 0, except IoU/F1/precision/recall with no positive
    anywhere (nothing to find, nothing falsely found), which are 1.
    """
    tp, fp, fn, tn = (float(v) for v in (tp, fp, fn, tn))
    nothing = tp + fp + fn == 0
    specificity = _ratio(tn, tn + fp) if tn + fp else 1.0
    recall = 1.0 if nothing else _ratio(tp, tp + fn) if tp + fn else 1.0
    return {
        "iou": 1.0 if nothing else _ratio(tp, tp + fp + fn),
        "f1": 1.0 if nothing else _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": 1.0 if nothing else _ratio(tp, tp + fp) if tp + fp else 0.0,
        "recall": recall,
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "balanced_accuracy": 0.5 * (recall + specificity),
    }


def confusion(pred: np.ndarray, label: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``[tp, fp, fn, tn]`` (int64) of binary ``pred`` vs ``label`` over ``valid`` pixels."""
    pred = np.asarray(pred).astype(bool)
    label = np.asarray(label).astype(bool)
    if valid is None:
        valid = np.ones(pred.shape, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    tp = np.count_nonzero(pred & label & valid)
    fp = np.count_nonzero(pred & ~label & valid)
    fn = np.count_nonzero(~pred & label & valid)
    tn = np.count_nonzero(~pred & ~label & valid)
    return np.array([tp, fp, fn, tn], dtype=np.int64)


def threshold_curve(
    prob: np.ndarray, label: np.ndarray, thresholds: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """Confusion counts ``len(thresholds) x 4`` of ``prob >= t`` for each threshold ``t``."""
    if valid is None:
        valid = np.isfinite(prob)
    p = np.asarray(prob)[valid]
    y = np.asarray(label).astype(bool)[valid]
    return np.stack([confusion(p >= t, y) for t in thresholds])
