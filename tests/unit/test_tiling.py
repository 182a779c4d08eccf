"""Where tiles are cut: the edges of the tiling plan."""

import numpy as np
import pytest

from qgis_cloudmask.core import tiling


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "expected"),
    [
        (1, 224, 32, [0]),  # smaller than a tile: one padded tile
        (100, 224, 0, [0]),
        (224, 224, 32, [0]),  # exactly one tile
        (225, 224, 32, [0, 1]),  # one pixel more: last tile aligned to the edge
        (448, 224, 0, [0, 224]),  # overlap 0: edge to edge
        (500, 224, 32, [0, 192, 276]),
        (416, 224, 32, [0, 192]),  # stride fits exactly
        (1000, 224, 112, [0, 112, 224, 336, 448, 560, 672, 776]),
    ],
)
def test_tile_starts_cover_the_axis_and_end_on_the_edge(length, tile, overlap, expected):
    starts = tiling.tile_starts(length, tile, overlap)
    assert starts == expected
    assert starts[-1] + tile >= length
    covered = np.zeros(max(length, tile), bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered[:length].all()


@pytest.mark.parametrize("overlap", [224, 300, -1])
def test_overlap_not_smaller_than_tile_is_rejected(overlap):
    with pytest.raises(ValueError, match="overlap"):
        tiling.tile_starts(1000, 224, overlap)


def test_zero_length_axis_is_rejected():
    with pytest.raises(ValueError, match="positive"):
        tiling.tile_starts(0, 224, 32)


@pytest.mark.parametrize("overlap", [0, 1, 31, 32, 112, 200, 223])
def test_blend_weights_are_positive_and_symmetric(overlap):
    w = tiling.tile_weights(224, overlap)
    assert w.shape == (224, 224)
    assert (w > 0).all() and w.max() <= 1.0
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])


def test_blend_weights_ramp_up_over_the_overlap():
    r = tiling.ramp(224, 32)
    assert np.all(np.diff(r[:32]) > 0)
    assert np.all(r[32:192] == 1.0)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 5), (3, 200), (224, 100), (50, 224)])
def test_pad_to_reflects_small_blocks_up_to_a_tile_and_keeps_the_original(h, w):
    block = np.arange(2 * h * w, dtype=np.float32).reshape(2, h, w)
    padded = tiling.pad_to(block, 224, 224)
    assert padded.shape == (2, 224, 224)
    np.testing.assert_array_equal(padded[:, :h, :w], block)


def test_pad_to_never_crops():
    with pytest.raises(ValueError):
        tiling.pad_to(np.zeros((1, 300, 10)), 224, 224)
