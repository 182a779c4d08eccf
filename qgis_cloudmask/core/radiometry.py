"""How stored pixel values become reflectance (the unit every model expects).

Sentinel-2 L1C/L2A products store ``reflectance * 10000`` as uint16; from processing baseline
04.00 (25 January 2022) on, they add +1000 to every digital number (DN), so
``reflectance = (DN - 1000) / 10000``.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Radiometry(IntEnum):
    """Values of the RADIOMETRY parameter (the integers are the enum indices in QGIS)."""

    AUTOMATIC = 0
    S2_DN = 1
    S2_DN_OFFSET = 2
    REFLECTANCE = 3


LABELS: dict[Radiometry, str] = {
    Radiometry.AUTOMATIC: "Automatic (float = reflectance, integer = DN / 10000)",
    Radiometry.S2_DN: "Sentinel-2 DN, processing baseline before 04.00 (DN / 10000)",
    Radiometry.S2_DN_OFFSET: (
        "Sentinel-2 DN, processing baseline 04.00 or later ((DN - 1000) / 10000)"
    ),
    Radiometry.REFLECTANCE: "Reflectance 0-1 (no scaling)",
}

S2_SCALE = 1.0 / 10000.0
S2_OFFSET_DN = -1000.0


def scale_and_offset(mode: Radiometry, is_float: bool) -> tuple[float, float]:
    """``(scale, offset)`` with ``reflectance = (value + offset) * scale``."""
    mode = Radiometry(mode)
    if mode == Radiometry.AUTOMATIC:
        mode = Radiometry.REFLECTANCE if is_float else Radiometry.S2_DN
    if mode == Radiometry.REFLECTANCE:
        return 1.0, 0.0
    if mode == Radiometry.S2_DN:
        return S2_SCALE, 0.0
    return S2_SCALE, S2_OFFSET_DN


def to_reflectance(values: np.ndarray, mode: Radiometry, is_float: bool) -> np.ndarray:
    """Convert stored values (any numeric dtype) to float32 reflectance, clipped at 0.

    Negative values (dark water after the baseline 04.00 offset, noise) are not physical and
    were never seen in training; training reads its imagery through this same function.
    """
    scale, offset = scale_and_offset(mode, is_float)
    out = values.astype(np.float32, copy=True)
    if offset:
        out += np.float32(offset)
    if scale != 1.0:
        out *= np.float32(scale)
    np.maximum(out, 0.0, out=out)  # NaN stays NaN (nodata)
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


def implausibility(reflectance: np.ndarray, valid: np.ndarray) -> str | None:
    """A warning text when valid values do not look like reflectance, else ``None``.

    Typical causes: a float raster holding DN, or the wrong baseline offset.
    """
    if not valid.any():
        return None
    median = float(np.median(reflectance[:, valid]))
    if median > 2.0:
        return (
            f"The median input value after scaling is {median:.1f}, far above the reflectance "
            "range 0-1.5: the raster probably holds digital numbers. Choose a Sentinel-2 DN "
            "option for the radiometry parameter."
        )
    zero = float(np.mean(reflectance[:, valid] <= 0.0))
    if zero > 0.25:
        return (
            f"{100 * zero:.0f} % of the input values are 0 or below after scaling: the baseline "
            "04.00 offset is probably applied to a product that has none."
        )
    return None
