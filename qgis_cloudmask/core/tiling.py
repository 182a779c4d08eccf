"""Where tiles are cut and how overlapping tiles are blended (pure NumPy).

Tiles are square (``tile`` pixels, from the model), never resized. Consecutive tiles overlap by
``overlap`` pixels; the last tile of a row or column is moved back so it ends exactly on the
raster edge (so it may overlap its neighbour by more). Rasters smaller than a tile are padded by
reflection to one tile.
"""

from __future__ import annotations

import numpy as np


def check_overlap(tile: int, overlap: int) -> None:
    """Raise ``ValueError`` unless ``0 <= overlap < tile``."""
    if tile < 1:
        raise ValueError(f"tile size must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(
            f"overlap must be at least 0 and smaller than the tile size ({tile} px), got {overlap}"
        )


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets (pixels) of the tiles along one axis of ``length`` pixels.

    Stride is ``tile - overlap``; the last start is ``length - tile`` so the last tile ends on
    the edge. An axis no longer than one tile gets a single tile at 0 (padded later).
    """
    check_overlap(tile, overlap)
    if length < 1:
        raise ValueError(f"axis length must be positive, got {length}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    starts.append(length - tile)
    return starts


def ramp(tile: int, overlap: int) -> np.ndarray:
    """1-D blending weight: a cosine ramp over ``overlap`` pixels at both ends, 1 inside.

    Weights are strictly positive (the ramp is sampled at pixel centres), so every pixel keeps a
    non-zero total weight, also at the raster edges where only one tile covers it.
    """
    check_overlap(tile, overlap)
    w = np.ones(tile, dtype=np.float32)
    if overlap:
        n = min(overlap, tile // 2)
        up = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / overlap)
        w[:n] = up
        w[tile - n :] = up[::-1]
    return w


def tile_weights(tile: int, overlap: int) -> np.ndarray:
    """2-D blending weights of one tile (``tile x tile`` float32, all > 0)."""
    r = ramp(tile, overlap)
    return np.outer(r, r)


def pad_to(block: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad the last two axes of ``block`` up to ``height x width`` (never crops)."""
    ph = height - block.shape[-2]
    pw = width - block.shape[-1]
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad {block.shape[-2:]} down to {(height, width)}")
    if ph == 0 and pw == 0:
        return block
    pad = [(0, 0)] * (block.ndim - 2) + [(0, ph), (0, pw)]
    # numpy's 'reflect' needs at least 2 pixels on an axis; 'edge' is the 1-pixel equivalent
    mode = "reflect" if min(block.shape[-2:]) > 1 else "edge"
    return np.pad(block, pad, mode=mode)
