"""Test-time augmentation (pure core): the transforms, their inverses, and the averaging."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qgis_cloudmask.core import tta
from qgis_cloudmask.core.tta import TTA


def _tiles(n=2, c=4, t=6, seed=0):
    return np.random.default_rng(seed).random((n, c, t, t)).astype(np.float32)


def test_the_modes_use_1_4_and_8_distinct_transforms_identity_first():
    x = _tiles(1, 1, 5)[0, 0]
    for mode, count in ((TTA.NONE, 1), (TTA.FLIPS, 4), (TTA.D8, 8)):
        chosen = tta.transforms(mode)
        assert len(chosen) == count and chosen[0] == tta.IDENTITY
        images = {t.apply(x).tobytes() for t in chosen}
        assert len(images) == count  # no transform repeated


def test_flips_are_the_four_named_flips():
    x = _tiles(1, 1, 5)[0, 0]
    got = {t.name: t.apply(x) for t in tta.transforms(TTA.FLIPS)}
    assert np.array_equal(got["identity"], x)
    assert np.array_equal(got["horizontal flip"], x[:, ::-1])
    assert np.array_equal(got["vertical flip"], x[::-1, :])
    assert np.array_equal(got["both flips"], x[::-1, ::-1])


def test_d8_holds_every_rotation_and_mirror():
    x = _tiles(1, 1, 5)[0, 0]
    expected = {np.rot90(m, k).tobytes() for m in (x, x.T) for k in range(4)}
    assert {t.apply(x).tobytes() for t in tta.transforms(TTA.D8)} == expected


@settings(max_examples=30, deadline=None)
@given(turns=st.integers(0, 3), flip=st.booleans(), seed=st.integers(0, 10**6))
def test_invert_undoes_apply(turns, flip, seed):
    t = tta.Transform(turns, flip)
    x = _tiles(2, 3, 7, seed)
    assert np.array_equal(t.invert(t.apply(x)), x)
    assert np.array_equal(t.apply(t.invert(x)), x)


def test_none_returns_the_model_itself():
    def predict(x):
        return x[:, 0]

    assert tta.with_tta(predict, TTA.NONE) is predict


@pytest.mark.parametrize("mode", [TTA.FLIPS, TTA.D8])
def test_a_per_pixel_model_is_unchanged_by_tta(mode):
    """A per-pixel model commutes with every transform: TTA must give its output back (an
    inversion that went wrong would move pixels)."""

    def predict(x):
        return 1.0 / (1.0 + np.exp(-(x[:, 2] * 3 - x[:, 0])))

    tiles = _tiles(3, 4, 8)
    assert np.allclose(tta.with_tta(predict, mode)(tiles), predict(tiles), atol=1e-6)


@pytest.mark.parametrize("mode", [TTA.FLIPS, TTA.D8])
def test_a_position_dependent_model_is_averaged_over_the_transforms(mode):
    """predict adds a ramp that depends on the position in the tile; TTA must give the mean
    over transforms of (transform back of (predict of transformed tile))."""
    t = 6
    ramp = np.arange(t * t, dtype=np.float32).reshape(t, t) / (t * t)

    def predict(x):
        return x[:, 0] * 0.5 + ramp * 0.5

    tiles = _tiles(2, 4, t)
    got = tta.with_tta(predict, mode)(tiles)
    chosen = tta.transforms(mode)
    expected = tiles[:, 0] * 0.5 + np.mean([tr.invert(ramp) for tr in chosen], axis=0) * 0.5
    assert np.allclose(got, expected, atol=1e-6)
    if mode == TTA.D8:  # the averaged ramp is symmetric under the whole group
        avg = np.mean([tr.invert(ramp) for tr in chosen], axis=0)
        for tr in chosen:
            assert np.allclose(tr.apply(avg), avg)


def test_every_call_keeps_the_batch_size():
    """One model call per transform, each with the caller's batch: memory does not grow."""
    seen = []

    def predict(x):
        seen.append(x.shape)
        assert x.flags.c_contiguous
        return x[:, 0]

    tta.with_tta(predict, TTA.D8)(_tiles(3, 4, 8))
    assert seen == [(3, 4, 8, 8)] * 8


def test_parse_accepts_names_indices_and_refuses_the_rest():
    assert tta.parse("flips") == TTA.FLIPS and tta.parse(" D8 ") == TTA.D8
    assert tta.parse(0) == TTA.NONE and tta.parse("2") == TTA.D8 and tta.parse(TTA.D8) == TTA.D8
    for bad in ("rotations", 3, -1, 1.5, True, ""):
        with pytest.raises(ValueError, match="augmentation"):
            tta.parse(bad)


def test_non_square_tiles_are_refused():
    with pytest.raises(ValueError, match="square"):
        tta.with_tta(lambda x: x[:, 0], TTA.FLIPS)(np.zeros((1, 4, 6, 8), np.float32))
