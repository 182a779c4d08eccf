"""Test-time augmentation: predict a batch of tiles under flips and rotations, undo each
transform on the prediction and average the probabilities.

Applied per batch inside the tiled inference (:func:`with_tta` wraps the model's ``predict``),
before the overlap blend. Every transform maps the square tile onto itself, so each pixel's
averaged probability comes from the same pixel seen in several orientations; the batch the model
sees keeps its size (one model call per transform), so memory does not grow with the mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


class TTA(IntEnum):
    """Values of the TTA parameter (the integers are the enum indices in QGIS)."""

    NONE = 0
    FLIPS = 1
    D8 = 2


LABELS: dict[TTA, str] = {
    TTA.NONE: "None (one pass)",
    TTA.FLIPS: "Flips: identity, horizontal, vertical, both (4 passes)",
    TTA.D8: "All 8 flips and quarter turns (8 passes)",
}
#: The command line's names of the modes (``--tta NAME``).
OPTION_NAMES: dict[TTA, str] = {TTA.NONE: "none", TTA.FLIPS: "flips", TTA.D8: "d8"}


@dataclass(frozen=True)
class Transform:
    """A symmetry of the square: mirror left-right (``flip``), then ``turns`` quarter turns
    counter-clockwise. Acts on the last two axes of an array."""

    turns: int
    flip: bool

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.flip:
            x = x[..., ::-1]
        return np.rot90(x, self.turns, axes=(-2, -1))

    def invert(self, y: np.ndarray) -> np.ndarray:
        y = np.rot90(y, -self.turns, axes=(-2, -1))
        return y[..., ::-1] if self.flip else y

    @property
    def name(self) -> str:
        if (self.turns, self.flip) in _FLIP_NAMES:
            return _FLIP_NAMES[self.turns, self.flip]
        return f"{'mirror + ' if self.flip else ''}{90 * self.turns} degrees"


IDENTITY = Transform(0, False)
# a vertical flip is a horizontal one turned by 180 degrees; both flips are a half turn
_FLIP_NAMES = {
    (0, False): "identity",
    (0, True): "horizontal flip",
    (2, True): "vertical flip",
    (2, False): "both flips",
}


def transforms(mode: TTA | int) -> tuple[Transform, ...]:
    """The transforms a mode averages over, identity first."""
    mode = TTA(mode)
    if mode == TTA.NONE:
        return (IDENTITY,)
    if mode == TTA.FLIPS:
        return tuple(Transform(t, f) for t, f in _FLIP_NAMES)
    return tuple(Transform(t, f) for f in (False, True) for t in range(4))


def parse(value: TTA | int | str) -> TTA:
    """A mode from its enum value, its index or its command-line name (else ``ValueError``)."""
    if isinstance(value, str):
        by_name = {name: mode for mode, name in OPTION_NAMES.items()}
        key = value.strip().lower()
        if key in by_name:
            return by_name[key]
        try:
            value = int(key)
        except ValueError:
            raise ValueError(
                f"unknown test-time augmentation {value!r}: use one of "
                f"{', '.join(OPTION_NAMES.values())}"
            ) from None
    if isinstance(value, bool) or int(value) != value or int(value) not in set(map(int, TTA)):
        raise ValueError(
            f"unknown test-time augmentation {value!r}: use "
            + ", ".join(f"{int(m)} ({n})" for m, n in OPTION_NAMES.items())
        )
    return TTA(int(value))


def with_tta(predict: Predict, mode: TTA | int) -> Predict:
    """``predict`` (``N x C x T x T`` -> ``N x T x T``) averaged over the mode's transforms.

    The identity alone returns ``predict`` itself (no copy, no extra work).
    """
    chosen = transforms(mode)
    if chosen == (IDENTITY,):
        return predict

    def predict_tta(tiles: np.ndarray) -> np.ndarray:
        if tiles.shape[-1] != tiles.shape[-2]:
            raise ValueError(f"test-time augmentation needs square tiles, got {tiles.shape}")
        total = None
        for t in chosen:
            prob = t.invert(predict(np.ascontiguousarray(t.apply(tiles))))
            if total is None:
                total = np.array(prob, dtype=np.float64)
            else:
                total += prob
        return (total / len(chosen)).astype(np.float32)

    return predict_tta
