"""Statistics counted from the final mask."""

import numpy as np
import pytest

from qgis_cloudmask.core.stats import CloudStats


def test_counts_and_percent_of_valid_pixels():
    s = CloudStats()
    s.add(np.array([[1, 1, 0, 255]], dtype=np.uint8))
    s.add(np.array([[0, 255]], dtype=np.uint8))
    assert (s.cloud_pixels, s.clear_pixels, s.nodata_pixels) == (2, 2, 2)
    assert s.cloud_percent == pytest.approx(50.0)
    assert s.cloud_area(-100.0) == pytest.approx(200.0)  # north-up rasters have negative dy
    assert s.to_dict()["total_pixels"] == 6


def test_percent_is_zero_without_valid_pixels():
    s = CloudStats()
    s.add(np.full((2, 2), 255, np.uint8))
    assert s.cloud_percent == 0.0 and s.valid_pixels == 0


def test_values_other_than_0_1_255_are_rejected():
    with pytest.raises(ValueError, match="not 0, 1, 2 or 255"):
        CloudStats().add(np.array([[3]], dtype=np.uint8))
