"""Histogram matching (pure core): the mapping, its tails, ties, and the metadata form."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qgis_cloudmask.core import contract, histogram, radiometry
from qgis_cloudmask.core.histogram import HistogramMatch, Reference
from qgis_cloudmask.core.model import ModelError, parse_metadata
from tests.support import synthetic

BANDS = contract.DEFAULT_BANDS


def _reference(values: np.ndarray) -> Reference:
    q = histogram.scene_quantiles(values)
    return Reference(histogram.LEVELS, tuple(tuple(map(float, r)) for r in q), "test")


def test_matching_a_scene_to_its_own_quantiles_changes_nothing_inside_the_range():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 0.05, (4, 20000))
    match = HistogramMatch.between(histogram.scene_quantiles(values), _reference(values))
    tiles = values[:, :1600].reshape(4, 1, 40, 40).transpose(1, 0, 2, 3)
    assert np.allclose(match.apply(tiles), tiles, atol=1e-5)


def test_matched_quantiles_land_on_the_reference():
    """A darker, lower-contrast scene mapped onto a reference: its matched quantiles are the
    reference's (the point of the option)."""
    rng = np.random.default_rng(1)
    ref_values = rng.gamma(2.0, 0.06, (4, 40000))
    scene = 0.5 * rng.gamma(2.0, 0.06, (4, 40000)) + 0.02
    ref = _reference(ref_values)
    match = HistogramMatch.between(histogram.scene_quantiles(scene), ref)
    matched = match.apply(scene.reshape(4, 1, 200, 200).transpose(1, 0, 2, 3))
    got = histogram.scene_quantiles(matched.transpose(1, 0, 2, 3).reshape(4, -1))
    inner = slice(2, -2)  # away from the extreme levels, where sampling is noisy
    assert np.allclose(got[:, inner], np.asarray(ref.values)[:, inner], atol=2e-3)


def test_beyond_the_outermost_quantiles_the_mapping_is_a_shift():
    scene = np.tile(np.linspace(0.1, 0.3, len(histogram.LEVELS)), (4, 1))
    ref_rows = np.tile(np.linspace(0.2, 0.6, len(histogram.LEVELS)), (4, 1))
    ref = Reference(histogram.LEVELS, tuple(tuple(r) for r in ref_rows))
    match = HistogramMatch.between(scene, ref)
    x = np.array([0.0, 0.1, 0.2, 0.3, 0.9], np.float32)
    tiles = np.broadcast_to(x, (1, 4, 1, 5)).copy()
    out = match.apply(tiles)[0, 0, 0]
    # 0.9 is 0.6 above the scene's top quantile: 0.6 above the reference's; 0.0 below clips
    assert out[4] == pytest.approx(0.6 + 0.6, abs=1e-6)
    assert out[0] == pytest.approx(max(0.0, 0.2 - 0.1), abs=1e-6)
    assert out[1] == pytest.approx(0.2, abs=1e-6) and out[3] == pytest.approx(0.6, abs=1e-6)
    assert out[2] == pytest.approx(0.4, abs=1e-5)
    assert out.max() <= radiometry.MAX_REFLECTANCE


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), ties=st.integers(0, 90))
def test_the_mapping_is_monotone_and_finite_even_with_ties(seed, ties):
    """A quantised or partly constant band gives equal quantiles; the mapping stays a
    non-decreasing function with finite values."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.gamma(2.0, 0.05, (4, 5000)), 3)
    values[:, : ties * 50] = 0.1  # many identical values
    match = HistogramMatch.between(
        histogram.scene_quantiles(values), _reference(rng.gamma(2.0, 0.07, (4, 5000)))
    )
    x = np.linspace(-0.1, 1.6, 500, dtype=np.float32)
    out = match.apply(np.broadcast_to(x, (1, 4, 1, 500)).copy())[0, :, 0]
    assert np.isfinite(out).all()
    assert (np.diff(out, axis=1) >= -1e-6).all()


def test_metadata_round_trip_in_the_models_band_order():
    rng = np.random.default_rng(2)
    ref = _reference(rng.random((4, 1000)))
    meta = ref.to_metadata(BANDS)
    order = ("B02", "B03", "B04", "B08")  # a model with another channel order
    back = Reference.from_metadata(json.loads(json.dumps(meta)), order)
    assert back.values[0] == pytest.approx(ref.values[BANDS.index("B02")], abs=1e-6)
    assert back.levels == histogram.LEVELS and back.source == "test"


def _props(reference_value) -> dict[str, str]:
    props = {k: json.dumps(v) for k, v in synthetic.metadata().items()}
    props[contract.REFERENCE_QUANTILES_KEY] = (
        reference_value if isinstance(reference_value, str) else json.dumps(reference_value)
    )
    return props


def test_a_model_without_the_key_has_no_reference_and_is_valid():
    props = {k: json.dumps(v) for k, v in synthetic.metadata().items()}
    assert parse_metadata(props).reference is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "JSON object"),
        ({"levels": [0.5, 0.1], "bands": {}}, "levels"),
        ({"levels": [0.1, 0.9], "bands": {"B04": [0, 1]}}, "one list for each"),
        (
            {"levels": [0.1, 0.9], "bands": {b: [0.2, 0.1] for b in BANDS}},
            "non-decreasing",
        ),
        ({"levels": [0.1, 0.9], "bands": {b: [0.1, "x"] for b in BANDS}}, "non-decreasing"),
    ],
)
def test_a_broken_reference_is_refused_naming_the_key(value, words):
    with pytest.raises(ModelError, match="reference_quantiles") as info:
        parse_metadata(_props(value), "The model 'x.onnx'")
    assert words in str(info.value) and "x.onnx" in str(info.value)


def test_the_lookup_table_is_exact_on_dn_and_close_between():
    """apply() goes through a table with points every 1e-4 reflectance: Sentinel-2 DN fall on
    them (exact); other floats are within 1e-4 of the exact mapping."""
    rng = np.random.default_rng(3)
    match = HistogramMatch.between(
        histogram.scene_quantiles(rng.gamma(2.0, 0.06, (4, 30000))),
        _reference(rng.gamma(3.0, 0.05, (4, 30000))),
    )
    dn = rng.integers(0, 20001, (2, 4, 32, 32)).astype(np.float32) / np.float32(10000)
    floats = np.clip(rng.gamma(2.0, 0.08, (2, 4, 32, 32)), 0, 2).astype(np.float32)
    for tiles, tolerance in ((dn, 1e-6), (floats, 1e-4)):
        exact = np.stack([match.map_values(c, tiles[:, c]) for c in range(4)], axis=1)
        assert np.abs(match.apply(tiles) - exact).max() <= tolerance
