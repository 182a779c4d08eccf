"""Facts about Sentinel-2 products and their names, in one place (pure Python).

Band naming differs between tools: the product metadata and GDAL's SENTINEL2 driver say ``B4``,
sen2cor files ``B04_10m``, Copernicus Browser and SNAP ``B04``/``B4``; common names (``red``,
``nir``) come from STAC and hand-made stacks. :func:`band_from_label` maps all of them to the
canonical two-digit name (``B04``). From processing baseline 04.00 (25 January 2022) on,
products store ``DN = reflectance * QUANTIFICATION_VALUE - RADIO_ADD_OFFSET`` with an offset
of -1000 (``BOA_ADD_OFFSET`` in Level-2A).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

#: Canonical band names in the order of the product metadata's ``band_id`` (0..12).
BAND_IDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)

#: The first processing baseline whose products carry the -1000 DN offset.
OFFSET_BASELINE = (4, 0)
#: Products generated from this day on all have baseline >= 04.00.
OFFSET_SINCE_DATE = "20220125"
#: The offset those products add to every DN, and the usual quantification value.
BASELINE_04_OFFSET = -1000.0
QUANTIFICATION = 10000.0

_BAND_TOKEN = re.compile(r"(?<![a-z0-9])b0?(8a|1[0-2]|[1-9])(?![a-z0-9])", re.IGNORECASE)
_COMMON_NAMES = (
    (re.compile(r"(?<![a-z])red[\s_-]?edge", re.I), None),  # red edge is not red
    (re.compile(r"(?<![a-z])nir[\s_-]?0?[89]\b|narrow[\s_-]?nir", re.I), "B8A"),  # STAC nir08
    (re.compile(r"(?<![a-z])(nir|near[\s_-]?infra-?red)(?![a-z])", re.I), "B08"),
    (re.compile(r"(?<![a-z])red(?![a-z])", re.I), "B04"),
    (re.compile(r"(?<![a-z])green(?![a-z])", re.I), "B03"),
    (re.compile(r"(?<![a-z])blue(?![a-z])", re.I), "B02"),
)
_PRODUCT_NAME = re.compile(
    r"S2[ABCD]_MSIL(1C|2A)_(\d{8})T\d{6}_N(\d{2})(\d{2})_R\d{3}_T\d{2}[A-Z]{3}", re.I
)
_GRANULE_FILE = re.compile(
    r"(?<![A-Z0-9])T\d{2}[A-Z]{3}_(\d{8})T\d{6}_B(?:0?[1-9]|1[0-2]|8A)", re.I
)


def canonical_band(name: str) -> str | None:
    """``"B4"``, ``"b04"`` -> ``"B04"``; ``"B8A"`` stays; anything else -> ``None``."""
    m = re.fullmatch(r"b0?(8a|1[0-2]|[1-9])", name.strip(), re.IGNORECASE)
    if not m:
        return None
    n = m.group(1).upper()
    return "B8A" if n == "8A" else f"B{int(n):02d}"


def band_from_label(label: str) -> str | None:
    """The Sentinel-2 band a band description, metadata value or file name names, if any.

    A band token (``B04``, ``B4``, ``B4_10m``, ``..._B04_10m.jp2``) wins over a common name
    (``red``, ``Red``, ``NIR``, ``near-infrared``); ``"B04 (red)"`` is B04. Generic GDAL names
    (``"Band 1"``) name nothing.
    """
    if not label:
        return None
    tokens = _BAND_TOKEN.findall(label)
    if tokens:
        # the last token: in a file name the band comes after the tile and date
        return canonical_band("B" + tokens[-1])
    for pattern, band in _COMMON_NAMES:
        if pattern.search(label):
            return band
    return None


def parse_baseline(text: str | None) -> tuple[int, int] | None:
    """``"05.09"`` -> ``(5, 9)``; ``"N0509"`` -> ``(5, 9)``; unparseable -> ``None``."""
    if not text:
        return None
    m = re.fullmatch(r"\s*N?(\d{1,2})\.?(\d{2})\s*", str(text))
    return (int(m.group(1)), int(m.group(2))) if m else None


def baseline_has_offset(baseline: tuple[int, int]) -> bool:
    """Whether products of this processing baseline store DN + 1000."""
    return baseline >= OFFSET_BASELINE


def format_baseline(baseline: tuple[int, int]) -> str:
    return f"{baseline[0]:02d}.{baseline[1]:02d}"


def product_name_facts(text: str) -> dict[str, str]:
    """What a product or granule file name inside ``text`` tells: ``level``, ``date``
    (YYYYMMDD), ``baseline`` ("05.09") and the ``name`` it was read from (empty if none)."""
    m = _PRODUCT_NAME.search(text or "")
    if m:
        return {
            "level": "L" + m.group(1).upper(),
            "date": m.group(2),
            "baseline": f"{m.group(3)}.{m.group(4)}",
            "name": m.group(0),
        }
    m = _GRANULE_FILE.search(text or "")
    if m:
        return {"date": m.group(1), "name": m.group(0)}
    return {}


def product_offsets(xml_text: str) -> dict[str, float]:
    """Per-band additive offsets (``RADIO_ADD_OFFSET`` / ``BOA_ADD_OFFSET``) of a product's
    metadata XML, by canonical band name; empty when the product has none (baseline < 04.00)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return {}
    offsets: dict[str, float] = {}
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET"):
            try:
                band_id = int(el.get("band_id", el.get("bandId", "")))
                offsets[BAND_IDS[band_id]] = float((el.text or "").strip())
            except (ValueError, IndexError):
                continue
    return offsets
