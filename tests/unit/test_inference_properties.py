"""Property-based tests of the streamed inference (pure core, hypothesis).

With a per-pixel "model", the blend of overlapping tiles must equal that function at every valid
pixel, whatever the raster size (1 px, smaller than a tile, many tiles, wider than a column
block), overlap, batch size, column-block width, nodata pattern and reflectance values; cutting
the raster into column blocks must not change a single bit; every pixel is written exactly once
and the statistics add up. Tiles are small (4 to 32 px) and column blocks narrow so that many
blocks, borders and strips are crossed quickly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qgis_cloudmask.core import inference, radiometry
from qgis_cloudmask.core.stats import CLEAR, CLOUD, NODATA
from tests.support.synthetic import sigmoid_probability

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Reflectance values at the edges of what a model can be given (after the clip to [0, 2]) and
#: of float32 (what classify_array accepts as is).
EXTREMES = np.array([0.0, 1e-30, 1e-7, 0.2, 1.0, 2.0, 1e30, 3.4e38], dtype=np.float32)
K, CENTRE, CHANNEL = 40.0, 0.2, 2
THRESHOLD = 0.5


def blend_tolerance(tile: int, overlap: int) -> float:
    """The blend sums weighted tiles in float32: about one rounding (6e-8) per tile over a pixel;
    (tile / stride)^2 tiles cover a pixel (256 at the drawn extreme of stride 1)."""
    per_pixel = math.ceil(tile / (tile - overlap)) ** 2
    return max(2e-6, 1.2e-7 * per_pixel)


def pixel_model(tiles: np.ndarray) -> np.ndarray:
    """``N x C x t x t`` -> ``N x t x t``: a sigmoid of one channel, pixel by pixel."""
    with np.errstate(over="ignore"):
        return sigmoid_probability(tiles[:, CHANNEL], K, CENTRE)


def expected_probability(refl: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return sigmoid_probability(refl[CHANNEL], K, CENTRE)


@st.composite
def tilings(draw, max_side: int = 90):
    """Tile, overlap, raster size, batch size, column-block width and alignment."""
    tile = draw(st.sampled_from([4, 8, 16, 32]))
    overlap = draw(st.integers(0, tile - 1))
    height = draw(st.one_of(st.integers(1, tile + 1), st.integers(1, max_side)))
    width = draw(st.one_of(st.integers(1, tile + 1), st.integers(1, max_side)))
    batch = draw(st.integers(1, 9))
    block_width = draw(st.integers(1, 70))
    align = draw(st.sampled_from([1, 8, 16, 256]))
    return tile, overlap, height, width, batch, block_width, align


@st.composite
def valid_masks(draw, height: int, width: int) -> np.ndarray:
    """Nodata patterns: none, random, whole rows, whole columns, all but one pixel, all."""
    kind = draw(st.sampled_from(["none", "random", "rows", "cols", "one", "all"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    valid = np.ones((height, width), bool)
    if kind == "random":
        valid = rng.random((height, width)) >= draw(st.floats(0.0, 1.0))
    elif kind == "rows":
        valid[rng.random(height) < 0.5] = False
    elif kind == "cols":
        valid[:, rng.random(width) < 0.5] = False
    elif kind == "one":
        valid[:] = False
        valid[draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))] = True
    elif kind == "all":
        valid[:] = False
    return valid


def reflectance(seed: int, height: int, width: int, extreme_share: float) -> np.ndarray:
    """``4 x H x W`` float32 around the sigmoid's centre, with a share of extreme values."""
    rng = np.random.default_rng(seed)
    refl = rng.uniform(0.0, 0.5, (4, height, width)).astype(np.float32)
    pick = rng.random(refl.shape) < extreme_share
    refl[pick] = rng.choice(EXTREMES, int(pick.sum()))
    return refl


class Recorder:
    """An in-memory reader and writer that remember every window."""

    def __init__(self, refl: np.ndarray, valid: np.ndarray) -> None:
        self.refl, self.valid = np.where(valid, refl, 0).astype(np.float32), valid
        _, h, w = refl.shape
        self.prob = np.full((h, w), np.nan, np.float32)
        self.mask = np.zeros((h, w), np.uint8)
        self.writes = np.zeros((h, w), np.int32)
        self.reads: list[tuple[int, int, int, int]] = []

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        self.reads.append((y0, y1, x0, x1))
        return self.refl[:, y0:y1, x0:x1].copy(), self.valid[y0:y1, x0:x1].copy()

    def write(self, y0: int, x0: int, prob: np.ndarray, mask: np.ndarray) -> None:
        assert prob.shape == mask.shape and prob.dtype == np.float32 and mask.dtype == np.uint8
        h, w = prob.shape
        self.prob[y0 : y0 + h, x0 : x0 + w] = prob
        self.mask[y0 : y0 + h, x0 : x0 + w] = mask
        self.writes[y0 : y0 + h, x0 : x0 + w] += 1


def run(refl, valid, tile, overlap, batch, block_width, align, progress=None):
    """classify_raster with the module's block width and alignment patched, as a caller sees it."""
    _, h, w = refl.shape
    rec = Recorder(refl, valid)
    tiles_seen = []

    def predict(tiles: np.ndarray) -> np.ndarray:
        assert tiles.dtype == np.float32 and tiles.shape[1:] == (4, tile, tile)
        assert 1 <= len(tiles) <= batch
        tiles_seen.append(len(tiles))
        return pixel_model(tiles)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inference, "BLOCK_WIDTH", block_width)
        mp.setattr(inference, "BLOCK_ALIGN", align)
        plan = inference.TilingPlan(h, w, tile, overlap)
        blocks = inference.column_blocks(plan)
        stats = inference.classify_raster(
            predict, plan, THRESHOLD, batch, rec.read, rec.write, progress=progress
        )
    return rec, stats, blocks, sum(tiles_seen)


@SETTINGS
@given(case=tilings(), data=st.data())
def test_streamed_blend_equals_the_pixel_function_everywhere(case, data):
    tile, overlap, h, w, batch, block_width, align = case
    valid = data.draw(valid_masks(h, w))
    refl = reflectance(
        data.draw(st.integers(0, 2**32 - 1)), h, w, data.draw(st.sampled_from([0.0, 0.05, 0.5]))
    )
    seen = []
    rec, stats, blocks, predicted = run(
        refl, valid, tile, overlap, batch, block_width, align, seen.append
    )
    prob, mask = rec.prob, rec.mask

    # every pixel written exactly once, nothing read outside the raster, windows bounded
    assert (rec.writes == 1).all()
    for y0, y1, x0, x1 in rec.reads:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert y1 - y0 <= tile and x1 - x0 <= block_width + 2 * tile

    # the blend is the per-pixel function at valid pixels, and a probability everywhere
    expected = expected_probability(rec.refl)
    np.testing.assert_allclose(
        prob[valid], expected[valid], rtol=0, atol=blend_tolerance(tile, overlap)
    )
    assert np.isfinite(prob).all()
    assert ((prob[valid] >= 0) & (prob[valid] <= 1)).all()
    assert (prob[~valid] == inference.PROBABILITY_NODATA).all()
    assert (mask[~valid] == NODATA).all()
    np.testing.assert_array_equal(mask[valid], np.where(prob[valid] >= THRESHOLD, CLOUD, CLEAR))

    # statistics add up and are those of the written mask
    assert stats.cloud_pixels + stats.clear_pixels + stats.nodata_pixels == h * w
    assert stats.cloud_pixels == int((mask == CLOUD).sum())
    assert stats.clear_pixels == int((mask == CLEAR).sum())
    assert stats.nodata_pixels == int((~valid).sum())

    # progress rises monotonically from above 0 to exactly 1
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0.0 < seen[0] and seen[-1] <= 1.0

    # tiles with a valid pixel are predicted once per column block they touch, no more
    assert predicted <= sum(len(b.col_starts) for b in blocks) * len(
        inference.TilingPlan(h, w, tile, overlap).row_starts
    )
    if not valid.any():
        assert predicted == 0


@SETTINGS
@given(case=tilings(), data=st.data())
def test_column_blocks_do_not_change_a_single_bit(case, data):
    """Blocks include every tile touching their columns, so cutting them anywhere gives the
    whole-raster blend exactly (same contributions, added in the same order)."""
    tile, overlap, h, w, batch, block_width, align = case
    valid = data.draw(valid_masks(h, w))
    refl = reflectance(data.draw(st.integers(0, 2**32 - 1)), h, w, 0.05)
    narrow, _, _, _ = run(refl, valid, tile, overlap, batch, block_width, align)
    whole, _, blocks, _ = run(refl, valid, tile, overlap, batch, max(w, 1) * 4, align)
    assert len(blocks) == 1
    np.testing.assert_array_equal(narrow.prob.view(np.uint32), whole.prob.view(np.uint32))
    np.testing.assert_array_equal(narrow.mask, whole.mask)


@SETTINGS
@given(case=tilings(max_side=400))
def test_column_blocks_partition_the_columns_and_hold_every_touching_tile(case):
    tile, overlap, _, width, _, block_width, align = case
    plan = inference.TilingPlan(1, width, tile, overlap)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inference, "BLOCK_ALIGN", align)
        blocks = inference.column_blocks(plan, block_width)
    assert blocks[0].x0 == 0 and blocks[-1].x1 == width
    for a, b in zip(blocks, blocks[1:]):
        assert a.x1 == b.x0
        if block_width >= align:
            assert b.x0 % align == 0  # borders on the output's GeoTIFF tiles
    for b in blocks:
        assert 0 < b.x1 - b.x0 <= block_width
        touching = tuple(x for x in plan.col_starts if x < b.x1 and x + tile > b.x0)
        assert b.col_starts == touching
        assert b.read_x0 == touching[0] and b.read_x1 == min(touching[-1] + tile, width)
        assert b.read_x0 <= b.x0 and b.x1 <= b.read_x1


@SETTINGS
@given(
    case=tilings(),
    data=st.data(),
    dtype=st.sampled_from(["uint16", "float32"]),
    declared=st.sampled_from([None, 0.0, 65535.0]),
)
def test_raw_values_through_the_reflectance_reader(case, data, dtype, declared):
    """The plugin's path: stored values (DN or float, with NaN, inf, 3e38, negatives, declared
    nodata) -> reflectance_reader -> blend: nodata is flagged and the rest is the function of
    the clipped reflectance."""
    tile, overlap, h, w, batch, block_width, align = case
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if dtype == "uint16":
        raw = rng.integers(0, 5000, (4, h, w)).astype(np.uint16)
        specials = np.array([0, 1, 65535], np.uint16)
        conversion = radiometry.Conversion.uniform(1e-4, 0.0)
    else:
        raw = rng.uniform(-0.1, 0.6, (4, h, w)).astype(np.float32)
        specials = np.array([np.nan, np.inf, -np.inf, 3e38, -1.0, 0.0, 65535.0], np.float32)
        conversion = radiometry.Conversion.uniform(1.0, 0.0)
    pick = rng.random(raw.shape) < data.draw(st.sampled_from([0.0, 0.02, 0.3]))
    raw[pick] = rng.choice(specials, int(pick.sum()))
    if data.draw(st.booleans()):
        raw[:, rng.random(h) < 0.3] = 0  # rows of fill value
    nodata = [declared] * 4
    reads = []

    def read_raw(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        reads.append((y0, y1, x0, x1))
        return raw[:, y0:y1, x0:x1].copy()

    valid = radiometry.valid_pixels(raw, nodata)
    refl = radiometry.to_reflectance(raw, conversion)
    read_window = inference.reflectance_reader(read_raw, nodata, conversion)
    rec = Recorder(refl, valid)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inference, "BLOCK_ALIGN", align)
        stats = inference.classify_raster(
            pixel_model,
            inference.TilingPlan(h, w, tile, overlap),
            THRESHOLD,
            batch,
            read_window,
            rec.write,
            block_width=block_width,
        )
    assert (rec.writes == 1).all()
    assert all(x1 - x0 <= block_width + 2 * tile for _, _, x0, x1 in reads)
    expected = expected_probability(np.where(valid, refl, 0))
    np.testing.assert_allclose(
        rec.prob[valid], expected[valid], rtol=0, atol=blend_tolerance(tile, overlap)
    )
    assert np.isfinite(rec.prob).all()
    assert (rec.mask[~valid] == NODATA).all()
    assert (rec.prob[~valid] == inference.PROBABILITY_NODATA).all()
    assert stats.nodata_pixels == int((~valid).sum())
    assert stats.valid_pixels == int(valid.sum())
