"""Deciding the radiometry: metadata first, then the data, with the doubt said out loud."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qgis_cloudmask.core import sentinel2
from qgis_cloudmask.core.radiometry import (
    Conversion,
    DataSample,
    Facts,
    Radiometry,
    decide,
)

DN = Conversion.for_mode(Radiometry.S2_DN)
OFFSET = Conversion.for_mode(Radiometry.S2_DN_OFFSET)
REFL = Conversion.for_mode(Radiometry.REFLECTANCE)


def sample(dark: float, bright: float = 3000.0, n: int = 2000, seed: int = 0) -> DataSample:
    """4 channels whose darkest 1 % sit near ``dark`` and whose bulk is around ``bright``."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(dark, bright, size=(4, n))
    values[:, : n // 20] = dark  # 5 % of pixels at the dark floor
    return DataSample(values)


VEGETATION_OLD = sample(250)  # dark water / vegetation, no offset
VEGETATION_NEW = sample(1250)  # the same scene with the +1000 offset
DESERT_OLD = sample(1300)  # a bright scene without offset: looks like the offset
FLOAT_REFL = DataSample(np.random.default_rng(1).uniform(0.02, 0.4, size=(4, 500)))
FLOAT_PERCENT = DataSample(np.random.default_rng(2).uniform(5, 40, size=(4, 500)))


@pytest.mark.parametrize(
    ("facts", "conversion", "source", "confident"),
    [
        # Sentinel-2 product metadata: offsets from the XML, baseline, quantification
        (
            Facts(
                False,
                product_offsets={b: -1000.0 for b in sentinel2.BAND_IDS},
                baseline=(5, 9),
                quantification=10000,
                sample=DESERT_OLD,
            ),
            OFFSET,
            "product metadata",
            True,
        ),
        (
            Facts(
                False,
                product_offsets={},
                baseline=(2, 14),
                quantification=10000,
                sample=VEGETATION_NEW,
            ),
            DN,
            "product metadata",
            True,
        ),
        # baseline >= 04.00 but no offset element: the documented -1000 (with a warning)
        (Facts(False, product_offsets={}, baseline=(4, 0)), OFFSET, "product metadata", True),
        # band scale/offset declared (GDAL): reflectance = value * 0.0001 - 0.1
        (
            Facts(False, declared=((1e-4, -0.1),) * 4, sample=VEGETATION_OLD),
            OFFSET,
            "band scale/offset",
            True,
        ),
        # processing baseline copied into a GeoTIFF's metadata, or in a file name
        (
            Facts(False, baseline=(5, 10), baseline_source="raster metadata"),
            OFFSET,
            "metadata",
            True,
        ),
        (Facts(False, baseline=(3, 1), baseline_source="file name"), DN, "metadata", True),
        # an acquisition date from 25 January 2022 on: offset; before: says nothing
        (Facts(False, date="20230101", sample=DESERT_OLD), OFFSET, "metadata", True),
        (Facts(False, date="20210101", sample=VEGETATION_OLD), DN, "data", True),
        # the data: dark pixels below 900 DN cannot carry the offset
        (Facts(False, sample=VEGETATION_OLD), DN, "data", True),
        # dark pixels >= 900 DN: offset or a bright scene -> offset assumed, not confident
        (Facts(False, sample=VEGETATION_NEW), OFFSET, "data", False),
        (Facts(False, sample=DESERT_OLD), OFFSET, "data", False),
        # floats: reflectance, or DN held in floats
        (Facts(True, sample=FLOAT_REFL), REFL, "data", True),
        (Facts(True, sample=VEGETATION_OLD), DN, "data", True),
        (Facts(True, sample=FLOAT_PERCENT), REFL, "data", False),
        # nothing to go on
        (Facts(False), DN, "data type", False),
        (Facts(True), REFL, "data type", False),
    ],
)
def test_automatic_decision(facts, conversion, source, confident):
    d = decide(Radiometry.AUTOMATIC, facts)
    assert d.conversion.matches(conversion), d.conversion.formula()
    assert (d.source, d.confident) == (source, confident)
    assert d.reason


def test_undecidable_data_warn_and_name_the_parameter():
    d = decide(Radiometry.AUTOMATIC, Facts(False, sample=DESERT_OLD))
    assert len(d.warnings) == 1
    w = d.warnings[0]
    assert "could not be decided from the data" in w
    assert "RADIOMETRY=1" in w and "--radiometry dn" in w and "RADIOMETRY=2" in w


def test_decided_data_do_not_warn():
    assert decide(Radiometry.AUTOMATIC, Facts(False, sample=VEGETATION_OLD)).warnings == ()


def test_baseline_4_without_offset_elements_warns():
    d = decide(Radiometry.AUTOMATIC, Facts(False, product_offsets={}, baseline=(4, 0)))
    assert any("lists no RADIO_ADD_OFFSET" in w for w in d.warnings)


def test_per_band_offsets_of_the_product_are_used_per_channel():
    offsets = {"B04": -1000.0, "B03": -1000.0, "B02": -900.0, "B08": -1000.0}
    d = decide(Radiometry.AUTOMATIC, Facts(False, product_offsets=offsets, baseline=(5, 0)))
    assert d.conversion.offset == (-1000.0, -1000.0, -900.0, -1000.0)


@pytest.mark.parametrize(
    ("requested", "facts", "warned"),
    [
        # explicit "no offset" on a baseline 05.09 product: contradicted by the metadata
        (Radiometry.S2_DN, Facts(False, product_offsets={"B04": -1000.0}, baseline=(5, 9)), True),
        # explicit offset on data whose dark pixels sit at 250 DN: contradicted by the data
        (Radiometry.S2_DN_OFFSET, Facts(False, sample=VEGETATION_OLD), True),
        # explicit reflectance on DN
        (Radiometry.REFLECTANCE, Facts(False, sample=VEGETATION_OLD), True),
        # explicit DN on float reflectance
        (Radiometry.S2_DN, Facts(True, sample=FLOAT_REFL), True),
        # the data cannot decide: an explicit choice either way is not contradicted
        (Radiometry.S2_DN, Facts(False, sample=DESERT_OLD), False),
        (Radiometry.S2_DN_OFFSET, Facts(False, sample=DESERT_OLD), False),
        # agreeing evidence
        (Radiometry.S2_DN_OFFSET, Facts(False, baseline=(4, 0)), False),
        (Radiometry.S2_DN, Facts(False, sample=VEGETATION_OLD), False),
    ],
)
def test_explicit_choice_is_used_and_contradictions_are_warned_about(requested, facts, warned):
    d = decide(requested, facts)
    assert d.conversion.matches(Conversion.for_mode(requested))
    assert d.source == "explicit"
    assert bool(d.warnings) == warned, d.warnings
    if warned:
        assert "RADIOMETRY=0" in d.warnings[0]


def test_metadata_contradicted_by_the_data_is_followed_with_a_warning():
    facts = Facts(False, baseline=(5, 0), baseline_source="raster metadata", sample=VEGETATION_OLD)
    d = decide(Radiometry.AUTOMATIC, facts)
    assert d.conversion.matches(OFFSET)
    assert any("data disagree" in w for w in d.warnings)


def test_formula_is_readable():
    assert OFFSET.formula() == "(DN - 1000) / 10000"
    assert DN.formula() == "DN / 10000"
    assert REFL.formula() == "value"


def test_product_offsets_are_read_from_the_metadata_xml():
    xml = """<n1:Level-2A_User_Product xmlns:n1="x"><n1:General_Info>
      <BOA_ADD_OFFSET_VALUES_LIST>
        <BOA_ADD_OFFSET band_id="1">-1000</BOA_ADD_OFFSET>
        <BOA_ADD_OFFSET band_id="8">-900</BOA_ADD_OFFSET>
      </BOA_ADD_OFFSET_VALUES_LIST></n1:General_Info></n1:Level-2A_User_Product>"""
    assert sentinel2.product_offsets(xml) == {"B02": -1000.0, "B8A": -900.0}
    assert sentinel2.product_offsets("<not xml") == {}


@pytest.mark.parametrize(
    ("text", "facts"),
    [
        (
            "S2B_MSIL2A_20230823T095559_N0509_R122_T34UCF_20230823T124759.SAFE",
            {"level": "L2A", "date": "20230823", "baseline": "05.09"},
        ),
        ("T33UUU_20240612T100031_B04_10m.jp2", {"date": "20240612"}),
        ("my_scene.tif", {}),
    ],
)
def test_product_and_granule_names_tell_baseline_and_date(text, facts):
    got = sentinel2.product_name_facts(text)
    got.pop("name", None)
    assert got == facts


@pytest.mark.parametrize(
    ("text", "baseline", "offset"),
    [
        ("05.09", (5, 9), True),
        ("04.00", (4, 0), True),
        ("03.01", (3, 1), False),
        ("N0214", (2, 14), False),
    ],
)
def test_baselines(text, baseline, offset):
    assert sentinel2.parse_baseline(text) == baseline
    assert sentinel2.baseline_has_offset(baseline) is offset


# ----------------------------------------------------------------------------- integer samples


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3000),
    high=st.sampled_from([1, 3, 255, 1200, 65535]),
    dtype=st.sampled_from([np.uint8, np.uint16]),
    seed=st.integers(0, 2**32 - 1),
)
def test_statistics_of_an_integer_sample_read_off_its_histogram_equal_numpy(n, high, dtype, seed):
    """uint8/uint16 samples are summarised by a histogram; dark percentiles and the median must
    still be NumPy's to the last bit (they decide the radiometry), the converted median and
    the share at or below 0 those of converting every pixel."""
    high = min(high, np.iinfo(dtype).max)
    values = np.random.default_rng(seed).integers(0, high, size=(4, n), endpoint=True)
    values = values.astype(dtype)
    fast, slow = DataSample(values), DataSample(values.astype(np.float64))
    assert fast._counts is not None and slow._counts is None
    assert fast.dark == slow.dark == tuple(float(np.percentile(v, 1.0)) for v in values)
    assert fast.median == slow.median == float(np.median(values))
    per_channel = Conversion((1e-4, 2e-4, 1e-4, 5e-5), (-1000.0, 0.0, -3.0, 7.0))
    for conversion in (OFFSET, DN, REFL, per_channel):
        median, zero = fast.converted(conversion)
        slow_median, slow_zero = slow.converted(conversion)
        assert median == pytest.approx(slow_median, rel=1e-6, abs=1e-9)
        assert zero == slow_zero


def test_an_integer_sample_keeps_its_type_and_a_float_one_becomes_float64():
    valid = np.array([[True, False], [True, True]])
    ints = DataSample.from_pixels(np.arange(8, dtype=np.uint16).reshape(2, 2, 2), valid)
    floats = DataSample.from_pixels(np.arange(8, dtype=np.float32).reshape(2, 2, 2), valid)
    assert ints.values.dtype == np.uint16 and floats.values.dtype == np.float64
    assert ints.values.tolist() == [[0, 2, 3], [4, 6, 7]] == floats.values.tolist()
