"""Stored values -> reflectance, and which pixels count as nodata."""

import numpy as np
import pytest

from qgis_cloudmask.core.radiometry import (
    Radiometry,
    implausibility,
    to_reflectance,
    valid_pixels,
)

DN = np.array([[[0, 1000, 2500, 10000, 65535]]], dtype=np.uint16)


@pytest.mark.parametrize(
    ("mode", "is_float", "expected"),
    [
        (Radiometry.AUTOMATIC, False, [0.0, 0.1, 0.25, 1.0, 6.5535]),
        (Radiometry.S2_DN, False, [0.0, 0.1, 0.25, 1.0, 6.5535]),
        (Radiometry.S2_DN_OFFSET, False, [0.0, 0.0, 0.15, 0.9, 6.4535]),  # clipped at 0
        (Radiometry.REFLECTANCE, False, [0.0, 1000.0, 2500.0, 10000.0, 65535.0]),
    ],
)
def test_dn_conversions(mode, is_float, expected):
    out = to_reflectance(DN, mode, is_float)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), expected, rtol=1e-6, atol=1e-7)


def test_automatic_passes_float_reflectance_through_unscaled():
    values = np.array([[[0.05, 0.3, 1.2]]], dtype=np.float32)
    np.testing.assert_array_equal(to_reflectance(values, Radiometry.AUTOMATIC, True), values)


def test_conversion_does_not_modify_its_input():
    values = DN.copy()
    to_reflectance(values, Radiometry.S2_DN_OFFSET, False)
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


def test_dn_read_as_reflectance_raises_a_plausibility_warning():
    refl = np.full((4, 3, 3), 1500.0, dtype=np.float32)
    assert "digital numbers" in implausibility(refl, np.ones((3, 3), bool))
    assert implausibility(refl / 10000, np.ones((3, 3), bool)) is None
    dark = to_reflectance(np.full((4, 3, 3), 600, np.uint16), Radiometry.S2_DN_OFFSET, False)
    assert "offset" in implausibility(dark, np.ones((3, 3), bool))


def test_negative_reflectance_is_clipped_to_zero_and_nan_kept():
    values = np.array([[[-0.02, 0.1, np.nan]]], dtype=np.float32)
    out = to_reflectance(values, Radiometry.REFLECTANCE, True)
    assert out[0, 0, 0] == 0.0 and out[0, 0, 1] == np.float32(0.1) and np.isnan(out[0, 0, 2])
