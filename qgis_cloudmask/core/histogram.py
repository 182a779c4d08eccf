"""Histogram matching: map a scene's reflectance distribution onto the training data's.

Per band, the scene's reflectance quantiles (from a decimated sample of the whole scene, see
:func:`scene_quantiles`) are mapped piecewise-linearly onto reference quantiles of the model's
training data, which the export writes into the ONNX metadata (key
:data:`contract.REFERENCE_QUANTILES_KEY`). Beyond the outermost quantiles the mapping is a shift
(slope 1), so a cloud brighter than 99.5 % of the scene stays that much brighter than the
reference's 99.5 % point instead of being clipped onto it.

This is a per-scene global transform: it steadies a scene's "picture style" (haze, a different
processing level, another sensor), but a mostly cloudy scene has the quantiles of clouds, and
matching those onto mostly clear training data darkens the clouds. Measured in
``docs/inference-options.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from qgis_cloudmask.core import radiometry

#: Quantile levels written by the export and used for the scene: 0.5 %, 1 % ... 99 %, 99.5 %.
LEVELS: tuple[float, ...] = (0.005, *(round(i / 100, 2) for i in range(1, 100)), 0.995)
#: Spacing forced between equal neighbouring scene quantiles (reflectance), so the mapping is a
#: function (a band with many identical values, e.g. saturated or quantised).
MIN_STEP = 1e-6


@dataclass(frozen=True)
class Reference:
    """Reference quantiles of the training data: ``values[c][i]`` is the ``levels[i]``
    quantile of channel ``c`` (reflectance), channels in the model's band order."""

    levels: tuple[float, ...]
    values: tuple[tuple[float, ...], ...]
    source: str = ""

    def to_metadata(self, bands: tuple[str, ...]) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "bands": {b: [round(v, 6) for v in vals] for b, vals in zip(bands, self.values)},
            "source": self.source,
        }

    @classmethod
    def from_metadata(cls, value: Any, bands: tuple[str, ...]) -> Reference:
        """Parse the metadata value; ``ValueError`` says what is wrong, in words."""
        if not isinstance(value, dict) or "levels" not in value or "bands" not in value:
            raise ValueError(
                'it must be a JSON object {"levels": [...], "bands": {"B04": [...], ...}}'
            )
        levels = value["levels"]
        if (
            not isinstance(levels, list)
            or len(levels) < 2
            or not all(_is_number(v) and 0.0 <= v <= 1.0 for v in levels)
            or any(b <= a for a, b in zip(levels, levels[1:]))
        ):
            raise ValueError("'levels' must be at least 2 increasing numbers from 0 to 1")
        per_band = value["bands"]
        if not isinstance(per_band, dict) or set(per_band) != set(bands):
            raise ValueError(f"'bands' must hold one list for each of the bands {list(bands)}")
        values = []
        for band in bands:
            vals = per_band[band]
            if (
                not isinstance(vals, list)
                or len(vals) != len(levels)
                or not all(_is_number(v) for v in vals)
                or any(b < a for a, b in zip(vals, vals[1:]))
            ):
                raise ValueError(
                    f"'bands'.{band} must be {len(levels)} non-decreasing reflectance values "
                    "(one per level)"
                )
            values.append(tuple(float(v) for v in vals))
        source = value.get("source", "")
        return cls(tuple(float(v) for v in levels), tuple(values), str(source))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def scene_quantiles(values: np.ndarray, levels: tuple[float, ...] = LEVELS) -> np.ndarray:
    """Quantiles ``C x L`` of reflectance ``values`` (``C x n``, valid pixels only)."""
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError("no valid pixel to compute the scene's quantiles from")
    return np.quantile(values.astype(np.float64), levels, axis=1).T


#: Step (reflectance) of the lookup table the mapping is applied through: Sentinel-2 DN are
#: quantised to 1e-4 reflectance, so DN inputs fall on the table's points (exact); other floats
#: are interpolated linearly between them (off by < 1e-4 near the quantile knots).
LUT_STEP = 1e-4


@dataclass(frozen=True)
class HistogramMatch:
    """The per-band mapping from the scene's quantiles onto the reference's."""

    scene: np.ndarray  # C x L, strictly increasing per channel
    reference: np.ndarray  # C x L

    @classmethod
    def between(cls, scene: np.ndarray, reference: Reference) -> HistogramMatch:
        ref = np.asarray(reference.values, dtype=np.float64)
        scene = np.asarray(scene, dtype=np.float64)
        if scene.shape != ref.shape:
            raise ValueError(
                f"scene quantiles {scene.shape} do not match the reference {ref.shape}"
            )
        # equal neighbours (a constant band, quantised values) get a tiny step between them
        steps = np.arange(scene.shape[1]) * MIN_STEP
        strict = np.maximum.accumulate(scene - steps, axis=1) + steps
        return cls(strict, ref)

    def map_values(self, channel: int, x: np.ndarray) -> np.ndarray:
        """The mapping of one channel, evaluated exactly (float64): piecewise linear between
        the quantiles, a shift beyond them, clipped to 0..MAX_REFLECTANCE."""
        s, r = self.scene[channel], self.reference[channel]
        x = np.asarray(x, dtype=np.float64)
        y = np.interp(x, s, r)
        low, high = x < s[0], x > s[-1]
        y[low] = r[0] + (x[low] - s[0])
        y[high] = r[-1] + (x[high] - s[-1])
        return np.clip(y, 0.0, radiometry.MAX_REFLECTANCE)

    @functools.cached_property
    def _tables(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per channel: the mapping at 0, LUT_STEP, ... MAX_REFLECTANCE, and its increments."""
        n = int(round(radiometry.MAX_REFLECTANCE / LUT_STEP)) + 1
        grid = np.arange(n) * LUT_STEP
        tables = []
        for c in range(self.scene.shape[0]):
            y = self.map_values(c, grid)
            tables.append((y[:-1].astype(np.float32), np.diff(y).astype(np.float32)))
        return tables

    def apply(self, tiles: np.ndarray) -> np.ndarray:
        """Reflectance tiles ``N x C x H x W`` (within 0..MAX_REFLECTANCE, as every model input
        is; values outside are clipped) mapped band by band into a new float32 array, through
        the lookup table (12x faster than evaluating the mapping)."""
        out = np.empty(tiles.shape, dtype=np.float32)
        scale = np.float32(1.0 / LUT_STEP)
        for c, (base, step) in enumerate(self._tables):
            pos = np.clip(tiles[:, c], 0.0, radiometry.MAX_REFLECTANCE).astype(np.float32)
            pos *= scale
            index = pos.astype(np.intp)
            np.clip(index, 0, len(base) - 1, out=index)
            pos -= index  # the fraction between two table points
            channel = out[:, c]
            np.take(step, index, out=channel)
            channel *= pos
            channel += np.take(base, index)
        return out
