"""Stored values -> reflectance, and which pixels count as nodata."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qgis_cloudmask.core import radiometry
from qgis_cloudmask.core.radiometry import (
    MAX_REFLECTANCE,
    Conversion,
    Radiometry,
    to_reflectance,
    valid_pixels,
)

DN = np.array([[[0, 1000, 2500, 10000, 65535]]], dtype=np.uint16)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # clipped to [0, 2]: 65535 is Sentinel-2's saturated value
        (Radiometry.S2_DN, [0.0, 0.1, 0.25, 1.0, 2.0]),
        (Radiometry.S2_DN_OFFSET, [0.0, 0.0, 0.15, 0.9, 2.0]),
        (Radiometry.REFLECTANCE, [0.0, 2.0, 2.0, 2.0, 2.0]),
    ],
)
def test_dn_conversions(mode, expected):
    out = to_reflectance(DN, Conversion.for_mode(mode, 1))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), expected, rtol=1e-6, atol=1e-7)


def test_automatic_has_no_fixed_conversion_it_is_decided():
    with pytest.raises(ValueError, match="decided"):
        Conversion.for_mode(Radiometry.AUTOMATIC)


def test_per_channel_scale_and_offset():
    values = np.full((2, 1, 1), 2000, np.uint16)
    out = to_reflectance(values, Conversion((1e-4, 2e-4), (-1000.0, 0.0)))
    np.testing.assert_allclose(out.ravel(), [0.1, 0.4], rtol=1e-6)


def test_conversion_does_not_modify_its_input():
    values = DN.copy()
    to_reflectance(values, Conversion.for_mode(Radiometry.S2_DN_OFFSET, 1))
    np.testing.assert_array_equal(values, DN)


def test_all_zero_pixels_are_nodata_but_a_single_zero_band_is_not():
    v = np.array([[[0, 0, 5]], [[0, 3, 5]]], dtype=np.uint16)  # 2 bands, 1 x 3 pixels
    np.testing.assert_array_equal(valid_pixels(v, [None, None])[0], [False, True, True])


def test_declared_nodata_in_any_band_makes_the_pixel_nodata():
    v = np.array([[[7, 1, 2]], [[3, 9999, 4]]], dtype=np.uint16)
    np.testing.assert_array_equal(valid_pixels(v, [None, 9999])[0], [True, False, True])


def test_nan_and_inf_are_nodata():
    v = np.array([[[0.1, np.nan, 0.2, np.inf]], [[0.1, 0.1, -np.inf, 0.3]]], dtype=np.float32)
    np.testing.assert_array_equal(valid_pixels(v, [None, None])[0], [True, False, False, False])


def test_nan_declared_as_nodata_is_handled():
    v = np.array([[[np.nan, 0.2]]], dtype=np.float32)
    np.testing.assert_array_equal(valid_pixels(v, [float("nan")])[0], [False, True])


def test_negative_reflectance_is_clipped_to_zero_and_nan_kept():
    values = np.array([[[-0.02, 0.1, np.nan]]], dtype=np.float32)
    out = to_reflectance(values, Conversion.for_mode(Radiometry.REFLECTANCE, 1))
    assert out[0, 0, 0] == 0.0 and out[0, 0, 1] == np.float32(0.1) and np.isnan(out[0, 0, 2])


@pytest.mark.parametrize("value", [3e38, np.finfo(np.float32).max, 1e300, np.inf])
def test_overflowing_values_are_clipped_not_passed_on(value):
    dtype = np.float64 if value == 1e300 else np.float32
    values = np.array([[[0.1, value]]], dtype=dtype)
    out = to_reflectance(values, Conversion.for_mode(Radiometry.REFLECTANCE, 1))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert out[0, 0, 1] == radiometry.MAX_REFLECTANCE


@settings(max_examples=80, deadline=None)
@given(
    values=hnp.arrays(
        st.sampled_from([np.float32, np.float64, np.uint16, np.int16]),
        st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)),
    ),
    scale=st.floats(1e-5, 2.0),
    offset=st.floats(-2000, 2000),
)
def test_reflectance_is_numpy_clip_of_the_scaled_values_to_the_bit(values, scale, offset):
    """to_reflectance clips with maximum/minimum (faster than np.clip in NumPy 1.24): the
    same bits for every input, NaN, infinities and signed zeros included."""
    conversion = Conversion.uniform(scale, offset, values.shape[0])
    expected = np.clip(radiometry._scaled(values, conversion), 0.0, MAX_REFLECTANCE)
    got = to_reflectance(values, conversion)
    assert got.dtype == np.float32 and got.tobytes() == expected.astype(np.float32).tobytes()
