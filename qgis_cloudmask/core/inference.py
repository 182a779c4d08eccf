"""Streaming tiled inference: rows of a raster in, blended probability and mask rows out.

The raster is visited one strip of tiles (``tile`` rows) at a time, so memory grows with the
raster's width, never with its height. Within a strip, tiles are run in batches; their
probabilities are accumulated with smooth weights (:func:`tiling.tile_weights`, zero on nodata
pixels) and a row is thresholded once, when no later tile can touch it any more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from qgis_cloudmask.core import radiometry, tiling
from qgis_cloudmask.core.stats import CLOUD, NODATA, CloudStats

#: Value of nodata pixels in the probability output.
PROBABILITY_NODATA = -1.0

#: ``read_rows(y0, y1) -> (reflectance C x h x W float32, valid h x W bool)``
ReadRows = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
#: ``read_raw(y0, y1) -> stored values C x h x W`` (any numeric dtype, channel order of the model)
ReadRaw = Callable[[int, int], np.ndarray]
#: ``write_rows(y0, probability h x W float32, mask h x W uint8)``
WriteRows = Callable[[int, np.ndarray, np.ndarray], None]
Predict = Callable[[np.ndarray], np.ndarray]


class Cancelled(Exception):  # noqa: N818 (a request, not an error)
    """Raised between batches when the caller asked to stop."""


@dataclass(frozen=True)
class TilingPlan:
    """Where tiles go on a ``height x width`` raster."""

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def row_starts(self) -> list[int]:
        return tiling.tile_starts(self.height, self.tile, self.overlap)

    @property
    def col_starts(self) -> list[int]:
        return tiling.tile_starts(self.width, self.tile, self.overlap)

    @property
    def n_tiles(self) -> int:
        return len(self.row_starts) * len(self.col_starts)


def reflectance_reader(
    read_raw: ReadRaw,
    nodata: Sequence[float | None],
    conversion: radiometry.Conversion,
) -> ReadRows:
    """Wrap a raw-value reader: flag nodata, convert to reflectance, fill nodata with 0."""

    def read_rows(y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        raw = read_raw(y0, y1)
        valid = radiometry.valid_pixels(raw, list(nodata))
        refl = radiometry.to_reflectance(raw, conversion)
        refl[:, ~valid] = 0.0
        return refl, valid

    return read_rows


class _RowCache:
    """Re-reads only the rows a new strip does not share with the previous one."""

    def __init__(self, read_rows: ReadRows) -> None:
        self._read = read_rows
        self._y0 = self._y1 = 0
        self._refl: np.ndarray | None = None
        self._valid: np.ndarray | None = None

    def rows(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        if self._refl is not None and self._y0 <= y0 < self._y1 and y1 >= self._y1:
            keep = slice(y0 - self._y0, None)
            parts = [(self._refl[:, keep], self._valid[keep])]
            if y1 > self._y1:
                parts.append(self._read(self._y1, y1))
            refl = np.concatenate([p[0] for p in parts], axis=1)
            valid = np.concatenate([p[1] for p in parts], axis=0)
        else:
            refl, valid = self._read(y0, y1)
        self._y0, self._y1, self._refl, self._valid = y0, y1, refl, valid
        return refl, valid


def classify_raster(
    predict: Predict,
    plan: TilingPlan,
    threshold: float,
    batch_size: int,
    read_rows: ReadRows,
    write_rows: WriteRows,
    progress: Callable[[float], None] | None = None,
    is_canceled: Callable[[], bool] | None = None,
) -> CloudStats:
    """Run ``predict`` over the whole raster and stream the results to ``write_rows``.

    ``predict`` maps ``N x C x tile x tile`` reflectance to ``N x tile x tile`` probability.
    Rows are written top to bottom, each exactly once. Tiles without a valid pixel are skipped.
    Returns the statistics of the written mask.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    t, height, width = plan.tile, plan.height, plan.width
    ys, xs = plan.row_starts, plan.col_starts
    padded_w = max(width, t)
    weights = tiling.tile_weights(t, plan.overlap)
    acc_p = np.zeros((t, padded_w), dtype=np.float64)  # float64: many tiles may overlap
    acc_w = np.zeros((t, padded_w), dtype=np.float64)
    cache = _RowCache(read_rows)
    stats = CloudStats()
    done, total = 0, plan.n_tiles

    for i, y in enumerate(ys):
        refl, valid = cache.rows(y, min(y + t, height))
        refl_p = tiling.pad_to(refl, t, padded_w)
        valid_p = tiling.pad_to(valid, t, padded_w)
        todo = [x for x in xs if valid_p[:, x : x + t].any()]
        done += len(xs) - len(todo)
        for b in range(0, len(todo), batch_size):
            if is_canceled is not None and is_canceled():
                raise Cancelled()
            batch_x = todo[b : b + batch_size]
            prob = predict(np.stack([refl_p[:, :, x : x + t] for x in batch_x]))
            for x, p in zip(batch_x, prob):
                w = weights * valid_p[:, x : x + t]
                acc_p[:, x : x + t] += w * p
                acc_w[:, x : x + t] += w
            done += len(batch_x)
            if progress is not None:
                progress(done / total)

        n = (ys[i + 1] if i + 1 < len(ys) else height) - y
        ok = valid[:n]
        prob_rows = np.full((n, width), PROBABILITY_NODATA, dtype=np.float32)
        np.divide(acc_p[:n, :width], acc_w[:n, :width], out=prob_rows, where=ok)
        mask_rows = np.full((n, width), NODATA, dtype=np.uint8)
        mask_rows[ok] = np.where(prob_rows[ok] >= threshold, CLOUD, 0)
        write_rows(y, prob_rows, mask_rows)
        stats.add(mask_rows)

        acc_p = np.roll(acc_p, -n, axis=0)
        acc_w = np.roll(acc_w, -n, axis=0)
        acc_p[t - n :] = 0.0
        acc_w[t - n :] = 0.0
    if progress is not None:
        progress(1.0)
    return stats


def classify_array(
    predict: Predict,
    reflectance: np.ndarray,
    tile: int,
    overlap: int,
    threshold: float,
    batch_size: int = 8,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, CloudStats]:
    """In-memory convenience over :func:`classify_raster` (same code path as the plugin).

    ``reflectance`` is ``C x H x W`` in the model's channel order. Returns
    ``(probability H x W float32, mask H x W uint8 {0, 1, 255}, stats)``.
    """
    _, height, width = reflectance.shape
    if valid is None:
        valid = np.isfinite(reflectance).all(axis=0) & ~(reflectance == 0).all(axis=0)
    refl = np.where(valid, reflectance, 0).astype(np.float32)
    prob = np.empty((height, width), dtype=np.float32)
    mask = np.empty((height, width), dtype=np.uint8)

    def write(y0: int, p: np.ndarray, m: np.ndarray) -> None:
        prob[y0 : y0 + len(p)] = p
        mask[y0 : y0 + len(m)] = m

    stats = classify_raster(
        predict,
        TilingPlan(height, width, tile, overlap),
        threshold,
        batch_size,
        lambda y0, y1: (refl[:, y0:y1], valid[y0:y1]),
        write,
    )
    return prob, mask, stats
