"""Choosing the band for red, green, blue and near-infrared: a table of real-world labels."""

from __future__ import annotations

import pytest

from qgis_cloudmask.core import sentinel2
from qgis_cloudmask.core.bands import BandError, choose_bands


@pytest.mark.parametrize(
    ("label", "band"),
    [
        ("B04", "B04"),
        ("B4", "B04"),
        ("b4", "B04"),
        ("B04 (red)", "B04"),
        ("B4, central wavelength 665 nm", "B04"),  # GDAL SENTINEL2 driver
        ("B4_10m", "B04"),
        ("T33UUU_20240612T100031_B04_10m.jp2", "B04"),  # sen2cor file in a gdalbuildvrt stack
        ("T33UUU_20240612T100031_B08.jp2", "B08"),
        ("red", "B04"),
        ("Red", "B04"),
        ("green", "B03"),
        ("Blue", "B02"),
        ("NIR", "B08"),
        ("nir", "B08"),
        ("Near-infrared", "B08"),
        ("near infrared", "B08"),
        ("B8A", "B8A"),
        ("nir08", "B8A"),  # STAC name of B8A, not B08
        ("Red Edge 1", None),
        ("rededge", None),
        ("B12", "B12"),
        ("B1", "B01"),
        ("Band 1", None),  # GDAL's generic name says nothing
        ("", None),
        ("SWIR 1", None),
    ],
)
def test_band_labels_in_the_spellings_real_files_use(label, band):
    assert sentinel2.band_from_label(label) == band


FULL_13 = [[b] for b in sentinel2.BAND_IDS]  # B01 ... B12 with B8A


@pytest.mark.parametrize(
    ("count", "labels", "explicit", "expected"),
    [
        # 4-band stack without descriptions: the plugin's default order B02, B03, B04, B08
        (4, [], {}, {"red": 3, "green": 2, "blue": 1, "nir": 4}),
        (
            4,
            [["Band 1"], ["Band 2"], ["Band 3"], ["Band 4"]],
            {},
            {"red": 3, "green": 2, "blue": 1, "nir": 4},
        ),
        # GDAL's SENTINEL2 10 m subdataset: B4, B3, B2, B8
        (
            4,
            [["B4, central wavelength 665 nm", "B4"], ["B3"], ["B2"], ["B8"]],
            {},
            {"red": 1, "green": 2, "blue": 3, "nir": 4},
        ),
        # a full 13-band stack described B01 ... B12
        (13, FULL_13, {}, {"red": 4, "green": 3, "blue": 2, "nir": 8}),
        # common names in another order
        (
            4,
            [["nir"], ["red"], ["green"], ["blue"]],
            {},
            {"red": 2, "green": 3, "blue": 4, "nir": 1},
        ),
        # explicit choices override; the rest stays automatic
        (13, FULL_13, {"nir": 9}, {"red": 4, "green": 3, "blue": 2, "nir": 9}),
        (
            6,
            [],
            {"red": 3, "green": 2, "blue": 1, "nir": 6},
            {"red": 3, "green": 2, "blue": 1, "nir": 6},
        ),
    ],
)
def test_band_choice(count, labels, explicit, expected):
    assert choose_bands(count, labels, explicit).bands == expected


def test_choice_from_descriptions_says_so():
    choice = choose_bands(13, FULL_13)
    assert "band descriptions" in choice.reason and not choice.warnings


def test_default_order_says_so():
    assert "default order" in choose_bands(4).reason


def test_explicit_choice_contradicting_the_description_is_warned_about():
    choice = choose_bands(13, FULL_13, {"red": 5})
    assert choice.bands["red"] == 5
    assert len(choice.warnings) == 1
    assert "RED_BAND=5, but band 5 is described as B05, not B04" in choice.warnings[0]


@pytest.mark.parametrize(
    ("count", "labels", "explicit", "match"),
    [
        (5, [], {}, "has 5 bands and none is described.*RED_BAND.*--red-band"),
        (13, [], {}, "has 13 bands and none is described"),
        (4, [["B02"], ["B03"], ["B04"], ["B8A"]], {}, "do not name near-infrared \\(B08\\)"),
        (
            5,
            [["B04"], ["B04"], ["B03"], ["B02"], ["B08"]],
            {},
            "Bands 1, 2 are all described as B04",
        ),
        (3, [], {}, "has 3 band\\(s\\), but the cloud model needs four"),
        (4, [], {"red": 7}, "red band is set to 7, but the input raster has bands 1 to 4"),
        (4, [], {"nir": 0}, "nir band is set to 0"),
        (4, [], {"red": 1}, "same raster band is chosen for more than one"),  # blue defaults to 1
    ],
)
def test_band_choice_errors_say_what_to_set(count, labels, explicit, match):
    with pytest.raises(BandError, match=match):
        choose_bands(count, labels, explicit)
