"""How stored pixel values become reflectance (the unit every model expects), and deciding it.

Sentinel-2 L1C/L2A products store ``reflectance * 10000`` as uint16; from processing baseline
04.00 (25 January 2022) on, they add +1000 to every digital number (DN), so
``reflectance = (DN - 1000) / 10000``. A :class:`Conversion` holds ``reflectance =
(value + offset) * scale`` per channel; :func:`decide` picks it from the evidence a raster or
product offers (:class:`Facts`), in this order, and says why:

1. an explicit choice (``RADIOMETRY`` 1-3), checked against the evidence below (a
   contradiction is a warning, never silent);
2. the product metadata (``QUANTIFICATION_VALUE``, ``RADIO_ADD_OFFSET``/``BOA_ADD_OFFSET``);
3. a scale/offset declared on the raster's bands (GDAL);
4. a processing baseline in the raster's metadata, or a product name or acquisition date in its
   file names (every product since 25 January 2022 has the offset);
5. the data: the darkest valid pixels of a baseline >= 04.00 product sit at or above ~1000 DN,
   older ones reach far below (see :func:`data_verdict` for the rule and its margin of doubt).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property

import numpy as np

from qgis_cloudmask.core import contract, sentinel2


class Radiometry(IntEnum):
    """Values of the RADIOMETRY parameter (the integers are the enum indices in QGIS)."""

    AUTOMATIC = 0
    S2_DN = 1
    S2_DN_OFFSET = 2
    REFLECTANCE = 3


LABELS: dict[Radiometry, str] = {
    Radiometry.AUTOMATIC: (
        "Automatic (product metadata, band scale/offset, baseline or date, else the data)"
    ),
    Radiometry.S2_DN: "Sentinel-2 DN, processing baseline before 04.00 (DN / 10000)",
    Radiometry.S2_DN_OFFSET: (
        "Sentinel-2 DN, processing baseline 04.00 or later ((DN - 1000) / 10000)"
    ),
    Radiometry.REFLECTANCE: "Reflectance 0-1 (no scaling)",
}
#: The command line's names of the modes (``--radiometry NAME``).
OPTION_NAMES: dict[Radiometry, str] = {
    Radiometry.AUTOMATIC: "auto",
    Radiometry.S2_DN: "dn",
    Radiometry.S2_DN_OFFSET: "dn-offset",
    Radiometry.REFLECTANCE: "reflectance",
}

S2_SCALE = 1.0 / sentinel2.QUANTIFICATION
#: Reflectance fed to a model is clipped to [0, MAX_REFLECTANCE]: above it lie only saturated
#: pixels (Sentinel-2 writes 65535 DN) and garbage (3e38 in a float raster), and an unbounded
#: value overflows the network's convolutions into NaN for the whole tile and its neighbours.
MAX_REFLECTANCE = 2.0
S2_OFFSET_DN = sentinel2.BASELINE_04_OFFSET

#: Percentile of the valid pixels of each band that stands for "the darkest pixels".
DARK_PERCENTILE = 1.0
#: Darkest pixels below this many DN cannot carry the +1000 offset (they would be reflectance
#: below -0.01 under it): the data have no offset. At or above, the data cannot tell.
NO_OFFSET_BELOW_DN = 900.0
#: A float raster whose median value is at most this holds reflectance ...
FLOAT_REFLECTANCE_MAX_MEDIAN = 2.0
#: ... and one whose median is at least this holds DN.
FLOAT_DN_MIN_MEDIAN = 50.0


def _set_radiometry(mode: Radiometry) -> str:
    return f"RADIOMETRY={int(mode)} (command line: --radiometry {OPTION_NAMES[mode]})"


@dataclass(frozen=True)
class Conversion:
    """``reflectance = (value + offset) * scale``, one ``(scale, offset)`` per channel."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @classmethod
    def uniform(cls, scale: float, offset: float, channels: int = contract.N_CHANNELS):
        return cls((float(scale),) * channels, (float(offset),) * channels)

    @classmethod
    def for_mode(cls, mode: Radiometry, channels: int = contract.N_CHANNELS) -> Conversion:
        """The conversion of an explicit mode (AUTOMATIC has none: it is decided)."""
        mode = Radiometry(mode)
        if mode == Radiometry.REFLECTANCE:
            return cls.uniform(1.0, 0.0, channels)
        if mode == Radiometry.S2_DN:
            return cls.uniform(S2_SCALE, 0.0, channels)
        if mode == Radiometry.S2_DN_OFFSET:
            return cls.uniform(S2_SCALE, S2_OFFSET_DN, channels)
        raise ValueError("the automatic radiometry is decided by decide(), not fixed")

    def matches(self, other: Conversion) -> bool:
        return bool(
            np.allclose(self.scale, other.scale, rtol=1e-6, atol=0)
            and np.allclose(self.offset, other.offset, rtol=0, atol=1e-6)
        )

    @property
    def mode(self) -> Radiometry | None:
        """The explicit mode this conversion equals, if any."""
        for mode in (Radiometry.S2_DN, Radiometry.S2_DN_OFFSET, Radiometry.REFLECTANCE):
            if self.matches(Conversion.for_mode(mode, len(self.scale))):
                return mode
        return None

    def stored_value(self, reflectance: float, channel: int) -> float:
        """The stored value of ``reflectance`` in ``channel`` (the inverse of the conversion)."""
        return reflectance / self.scale[channel] - self.offset[channel]

    def formula(self) -> str:
        """Human-readable, e.g. ``(DN - 1000) / 10000``."""
        parts = []
        for scale, offset in sorted(set(zip(self.scale, self.offset))):
            value = "value" if scale == 1.0 else "DN"
            if offset:
                value = f"({value} {'-' if offset < 0 else '+'} {abs(offset):g})"
            if scale != 1.0:
                inv = 1.0 / scale
                value += f" / {inv:g}" if abs(inv - round(inv)) < 1e-6 else f" x {scale:g}"
            parts.append(value)
        return " | ".join(parts)

    def to_dict(self) -> dict:
        return {"scale": list(self.scale), "offset": list(self.offset), "formula": self.formula()}


def _scaled(values: np.ndarray, conversion: Conversion) -> np.ndarray:
    """``(values + offset) * scale`` per channel as float32, not clipped (overflow: inf)."""
    shape = (len(conversion.scale),) + (1,) * (values.ndim - 1)
    offset = np.asarray(conversion.offset, np.float32).reshape(shape)
    scale = np.asarray(conversion.scale, np.float32).reshape(shape)
    with np.errstate(over="ignore", invalid="ignore"):
        out = values.astype(np.float32, copy=True)
        if np.any(offset):
            out += offset
        if np.any(scale != 1.0):
            out *= scale
    return out


def to_reflectance(values: np.ndarray, conversion: Conversion) -> np.ndarray:
    """Convert stored values ``C x ...`` (any numeric dtype) to float32 reflectance, clipped
    to ``[0, MAX_REFLECTANCE]``.

    Negative values (dark water after the baseline 04.00 offset, noise) are not physical and
    were never seen in training; training reads its imagery through this same function.
    Overflowing values (a 3e38 float, inf) are clipped like saturated ones.
    """
    out = _scaled(values, conversion)
    # np.clip's result, to the bit (NaN stays NaN: nodata; -0.0 becomes 0.0), in 55 % of its
    # time: NumPy 1.24's clip does not use the vectorised loops of maximum and minimum
    np.maximum(out, np.float32(0.0), out=out)
    np.minimum(out, np.float32(MAX_REFLECTANCE), out=out)
    return out


def valid_pixels(values: np.ndarray, nodata: list[float | None]) -> np.ndarray:
    """Pixels that can be classified: ``values`` is ``bands x H x W`` as stored.

    A pixel is invalid when any band is NaN/inf or equals that band's declared nodata, or when
    all bands are 0 (the usual Sentinel-2 fill value).
    """
    if values.ndim != 3 or len(nodata) != values.shape[0]:
        raise ValueError("values must be bands x H x W with one nodata entry per band")
    valid = ~np.all(values == 0, axis=0)
    if np.issubdtype(values.dtype, np.floating):
        valid &= np.all(np.isfinite(values), axis=0)
    for band, nd in zip(values, nodata):
        if nd is None:
            continue
        if np.isnan(nd):
            continue  # already excluded by the finiteness test
        valid &= band != nd
    return valid


#: Unsigned integer types whose samples are summarised by a histogram of every value: the
#: median and percentiles are then read off cumulative counts (exact, and about 10 times
#: faster than sorting the million values of a sample).
_HISTOGRAM_TYPES = (np.uint8, np.uint16)


def _lerp(a: float, b: float, t: float) -> float:
    """NumPy's linear interpolation of percentiles (``numpy.lib.function_base._lerp``), so
    that order statistics read off a histogram equal ``np.percentile`` to the last bit."""
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


@dataclass(frozen=True)
class DataSample:
    """Stored values of valid pixels, ``channels x N`` (a subsample of the raster).

    8- and 16-bit unsigned values (every Sentinel-2 product) are kept as stored and summarised
    by a histogram; anything else is float64. The statistics are those of NumPy
    (``np.percentile``, ``np.median``) either way.
    """

    values: np.ndarray

    @classmethod
    def from_pixels(cls, values: np.ndarray, valid: np.ndarray) -> DataSample:
        """From ``C x H x W`` stored values and their ``H x W`` validity."""
        picked = np.asarray(values)[:, valid]
        if picked.dtype.type in _HISTOGRAM_TYPES:
            return cls(picked)
        return cls(picked.astype(np.float64))

    @property
    def n_valid(self) -> int:
        return int(self.values.shape[1])

    @cached_property
    def _counts(self) -> np.ndarray | None:
        """Per channel, how many pixels hold each value (``C x 2**bits``), or ``None``."""
        if self.values.dtype.type not in _HISTOGRAM_TYPES:
            return None
        size = np.iinfo(self.values.dtype).max + 1
        return np.stack([np.bincount(v, minlength=size) for v in self.values])

    @staticmethod
    def _order(values: np.ndarray, counts: np.ndarray, ranks: list[int]) -> list[float]:
        """The values of 0-based ``ranks`` in the sorted sample given as ``counts`` of
        ``values`` (``values`` ascending)."""
        cum = np.cumsum(counts)
        return [float(values[np.searchsorted(cum, k, side="right")]) for k in ranks]

    def _percentile(self, values: np.ndarray, counts: np.ndarray, q: float) -> float:
        n = int(counts.sum())
        virtual = (n - 1) * (q / 100.0)  # NumPy's "linear" method
        lo = int(np.floor(virtual))
        a, b = self._order(values, counts, [lo, min(lo + 1, n - 1)])
        return _lerp(a, b, virtual - lo)

    @cached_property
    def dark(self) -> tuple[float, ...]:
        """Per channel, the :data:`DARK_PERCENTILE` percentile of the stored values."""
        if self._counts is None:
            return tuple(float(np.percentile(v, DARK_PERCENTILE)) for v in self.values)
        levels = np.arange(self._counts.shape[1])
        return tuple(self._percentile(levels, c, DARK_PERCENTILE) for c in self._counts)

    @cached_property
    def median(self) -> float:
        """The median of the stored values of every channel together."""
        if self._counts is None:
            return float(np.median(self.values))
        return self._weighted_median(np.arange(self._counts.shape[1]), self._counts.sum(axis=0))

    def _weighted_median(self, values: np.ndarray, counts: np.ndarray) -> float:
        n = int(counts.sum())
        a, b = self._order(values, counts, [(n - 1) // 2, n // 2])
        return (a + b) / 2.0

    def converted(self, conversion: Conversion) -> tuple[float, float]:
        """``(median, fraction at or below 0)`` of the sample converted with ``conversion``,
        not clipped (digital numbers read as reflectance stay in the 1000s)."""
        if self._counts is None:
            refl = _scaled(self.values, conversion)
            return float(np.median(refl)), float(np.mean(refl <= 0.0))
        # every channel's levels converted, with their counts: the same values as converting
        # each pixel (float32, as _scaled does), without touching the million pixels
        levels = np.arange(self._counts.shape[1])
        refl = _scaled(np.broadcast_to(levels, self._counts.shape), conversion).ravel()
        counts = self._counts.ravel()
        order = np.argsort(refl, kind="stable")
        median = self._weighted_median(refl[order].astype(np.float64), counts[order])
        return median, float(counts[refl <= 0.0].sum() / counts.sum())


@dataclass(frozen=True)
class Facts:
    """Everything a raster or product says about its radiometry (gathered by the GDAL glue)."""

    is_float: bool
    channel_names: tuple[str, ...] = contract.DEFAULT_BANDS
    #: per channel, the (scale, offset) declared on the band, ``None`` where none is
    declared: tuple[tuple[float, float] | None, ...] = ()
    #: offsets from a product's metadata XML by band name; ``None``: no product XML was read
    product_offsets: Mapping[str, float] | None = None
    quantification: float | None = None
    baseline: tuple[int, int] | None = None
    #: where the baseline was read (e.g. "product metadata", "file name 'S2B_MSIL2A_...'")
    baseline_source: str = ""
    date: str | None = None  # acquisition date YYYYMMDD
    date_source: str = ""
    sample: DataSample | None = None


@dataclass(frozen=True)
class Evidence:
    """A conversion some evidence points to, and why."""

    conversion: Conversion
    source: str
    reason: str
    confident: bool = True
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """The conversion used, where it came from, why, and what contradicts it."""

    conversion: Conversion
    source: str  # "explicit", "product metadata", "band scale/offset", "metadata", "data", ...
    reason: str
    confident: bool
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def mode(self) -> Radiometry | None:
        return self.conversion.mode

    def to_dict(self) -> dict:
        mode = self.mode
        return {
            "mode": LABELS[mode] if mode is not None else "custom",
            "source": self.source,
            "reason": self.reason,
            "confident": self.confident,
            **self.conversion.to_dict(),
        }


def metadata_evidence(facts: Facts) -> Evidence | None:
    """What the metadata (product, band scale/offset, baseline, date) says, if anything."""
    n = len(facts.channel_names)
    q = facts.quantification or sentinel2.QUANTIFICATION
    if facts.product_offsets is not None:
        warnings: tuple[str, ...] = ()
        offsets = dict(facts.product_offsets)
        has_offset = facts.baseline is not None and sentinel2.baseline_has_offset(facts.baseline)
        if has_offset and not offsets:
            warnings = (
                f"The product has processing baseline {sentinel2.format_baseline(facts.baseline)}"
                " but its metadata lists no RADIO_ADD_OFFSET/BOA_ADD_OFFSET; the documented "
                f"offset {S2_OFFSET_DN:g} was used.",
            )
        default = S2_OFFSET_DN if has_offset else 0.0
        conv = Conversion(
            (1.0 / q,) * n, tuple(offsets.get(name, default) for name in facts.channel_names)
        )
        baseline = (
            f"processing baseline {sentinel2.format_baseline(facts.baseline)}, "
            if facts.baseline
            else ""
        )
        offset_text = (
            f"offset {', '.join(sorted({f'{o:g}' for o in conv.offset}))}"
            if any(conv.offset)
            else "no offset"
        )
        return Evidence(
            conv,
            "product metadata",
            f"{baseline}quantification {q:g}, {offset_text}",
            warnings=warnings,
        )
    if any(d is not None for d in facts.declared):
        pairs = [d or (1.0, 0.0) for d in facts.declared]
        conv = Conversion(
            tuple(s for s, _ in pairs), tuple((o / s if s else 0.0) for s, o in pairs)
        )
        shown = ", ".join(sorted({f"scale {s:g}, offset {o:g}" for s, o in pairs}))
        return Evidence(conv, "band scale/offset", f"scale/offset declared on the bands ({shown})")
    if facts.is_float and facts.sample is not None and facts.sample.n_valid:
        if facts.sample.median < FLOAT_DN_MIN_MEDIAN:
            return None  # float reflectance: a baseline or a date says nothing about it
    if facts.baseline is not None:
        has_offset = sentinel2.baseline_has_offset(facts.baseline)
        conv = Conversion.uniform(1.0 / q, S2_OFFSET_DN if has_offset else 0.0, n)
        return Evidence(
            conv,
            "metadata",
            f"processing baseline {sentinel2.format_baseline(facts.baseline)} "
            f"({facts.baseline_source}): {'offset' if has_offset else 'no offset'}",
        )
    if facts.date and facts.date >= sentinel2.OFFSET_SINCE_DATE:
        day = f"{facts.date[:4]}-{facts.date[4:6]}-{facts.date[6:]}"
        return Evidence(
            Conversion.uniform(1.0 / q, S2_OFFSET_DN, n),
            "metadata",
            f"acquired {day} ({facts.date_source}): every product since 25 January 2022 has "
            "processing baseline 04.00 or later, with the offset",
        )
    return None


def data_verdict(facts: Facts) -> Evidence | None:
    """What the pixel values say (``None`` without valid sample pixels).

    Float data with a median up to 2 are reflectance. DN data (integer, or float with a median
    of 50 or more) have no offset when the darkest 1 % of some band lies below 900 DN: under
    the offset that would be reflectance below -0.01, which products do not hold. Darkest
    pixels at or above 900 DN are what the offset gives, but also what a bright scene (desert,
    snow, a fully cloudy scene) gives without it: the data cannot decide, so the offset
    (every product since 25 January 2022, and the reprocessed archive) is assumed, with a
    warning naming the parameter to set.
    """
    sample = facts.sample
    n = len(facts.channel_names)
    if sample is None or not sample.n_valid:
        return None
    median = sample.median
    if facts.is_float and median <= FLOAT_REFLECTANCE_MAX_MEDIAN:
        return Evidence(
            Conversion.uniform(1.0, 0.0, n),
            "data",
            f"float values with median {median:.3g}: reflectance",
        )
    if facts.is_float and median < FLOAT_DN_MIN_MEDIAN:
        why = (
            f"float values with median {median:.3g} are neither reflectance (0-1) nor "
            "Sentinel-2 DN (0-10000)"
        )
        return Evidence(
            Conversion.uniform(1.0, 0.0, n),
            "data",
            why,
            confident=False,
            warnings=(
                f"Radiometry could not be decided: {why}; they were used as reflectance. "
                f"Rescale the raster to reflectance 0-1 or DN, or set "
                f"{_set_radiometry(Radiometry.REFLECTANCE)} to confirm.",
            ),
        )
    dark = sample.dark
    c = int(np.argmin(dark))
    name, d = facts.channel_names[c], dark[c]
    kind = "float values holding DN" if facts.is_float else "DN"
    if d < NO_OFFSET_BELOW_DN:
        return Evidence(
            Conversion.uniform(S2_SCALE, 0.0, n),
            "data",
            f"{kind}; the darkest {DARK_PERCENTILE:g} % of valid pixels of {name} lie at "
            f"{d:.0f} DN, below {NO_OFFSET_BELOW_DN:g}: under the +1000 offset of processing "
            "baseline 04.00 that would be negative reflectance, so there is no offset",
        )
    why = (
        f"{kind}; the darkest {DARK_PERCENTILE:g} % of valid pixels of every band lie at or "
        f"above {NO_OFFSET_BELOW_DN:g} DN (lowest: {name} at {d:.0f} DN), as with the +1000 "
        "offset of processing baseline 04.00, but also as in a bright scene (desert, snow, "
        "full cloud) without it"
    )
    return Evidence(
        Conversion.uniform(S2_SCALE, S2_OFFSET_DN, n),
        "data",
        why,
        confident=False,
        warnings=(
            f"Radiometry could not be decided from the data: {why}. The offset was assumed "
            "((DN - 1000) / 10000, as in every product since 25 January 2022 and in the "
            "reprocessed archive). If the raster comes from an older product, set "
            f"{_set_radiometry(Radiometry.S2_DN)}; to confirm the offset, set "
            f"{_set_radiometry(Radiometry.S2_DN_OFFSET)}.",
        ),
    )


def _plausibility(conv: Conversion, sample: DataSample | None) -> str | None:
    """A warning when the converted sample does not look like reflectance, else ``None``."""
    if sample is None or not sample.n_valid:
        return None
    median, zero = sample.converted(conv)
    if median > FLOAT_REFLECTANCE_MAX_MEDIAN:
        return (
            f"The median input value after scaling is {median:.1f}, far above the reflectance "
            "range 0-1.5: the raster probably holds digital numbers. Choose a Sentinel-2 DN "
            f"option: {_set_radiometry(Radiometry.S2_DN)} or "
            f"{_set_radiometry(Radiometry.S2_DN_OFFSET)}."
        )
    if zero > 0.25:
        return (
            f"{100 * zero:.0f} % of the input values are 0 or below after scaling: the baseline "
            "04.00 offset is probably applied to data that have none "
            f"({_set_radiometry(Radiometry.S2_DN)})."
        )
    return None


def decide(requested: Radiometry, facts: Facts) -> Decision:
    """The conversion to use for ``requested`` (AUTOMATIC or an explicit mode), and why."""
    requested = Radiometry(requested)
    n = len(facts.channel_names)
    meta = metadata_evidence(facts)
    data = data_verdict(facts)
    warnings: list[str] = list(meta.warnings) if meta else []

    if requested != Radiometry.AUTOMATIC:
        conv = Conversion.for_mode(requested, n)
        against = meta if meta is not None else (data if data and data.confident else None)
        if against is not None and not conv.matches(against.conversion):
            warnings.append(
                f"RADIOMETRY is set to '{LABELS[requested]}', but the {against.source} says "
                f"otherwise ({against.reason}: reflectance = {against.conversion.formula()}). "
                f"The explicit choice was used; set {_set_radiometry(Radiometry.AUTOMATIC)} "
                "to follow the evidence."
            )
        decision = Decision(conv, "explicit", f"set by RADIOMETRY: {LABELS[requested]}", True)
    elif meta is not None:
        if data is not None and data.confident and not data.conversion.matches(meta.conversion):
            warnings.append(
                f"The {meta.source} says reflectance = {meta.conversion.formula()} "
                f"({meta.reason}), but the data disagree ({data.reason}). The metadata was "
                "followed; check the input, or set RADIOMETRY explicitly."
            )
        decision = Decision(meta.conversion, meta.source, meta.reason, True)
    elif data is not None:
        warnings.extend(data.warnings)
        decision = Decision(data.conversion, data.source, data.reason, data.confident)
    else:
        conv = (
            Conversion.uniform(1.0, 0.0, n)
            if facts.is_float
            else Conversion.for_mode(Radiometry.S2_DN, n)
        )
        decision = Decision(
            conv,
            "data type",
            "no metadata and no valid pixels to look at: "
            + ("float = reflectance" if facts.is_float else "integer = DN / 10000"),
            False,
        )
    if not warnings:
        implausible = _plausibility(decision.conversion, facts.sample)
        if implausible:
            warnings.append(implausible)
    return Decision(
        decision.conversion, decision.source, decision.reason, decision.confident, tuple(warnings)
    )
