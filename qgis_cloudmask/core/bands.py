"""Which raster band holds red, green, blue and near-infrared (pure Python).

Order of evidence, per role: an explicit choice; else the band whose description or metadata
names the Sentinel-2 band (:func:`sentinel2.band_from_label`); else, only for a 4-band raster
that describes none of its bands, the plugin's default order B02, B03, B04, B08. Anything else
is a clear error asking for the bands, never a silent guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from qgis_cloudmask.core import contract, sentinel2

ROLES: tuple[str, ...] = ("red", "green", "blue", "nir")
#: role -> the Sentinel-2 band that fills it
ROLE_BAND: dict[str, str] = {role: band for band, role in contract.BAND_ROLES.items()}
#: role -> 1-based band of a 4-band stack without descriptions (B02, B03, B04, B08)
DEFAULT_4_BAND = {"red": 3, "green": 2, "blue": 1, "nir": 4}
#: role -> algorithm parameter and command-line option that set it
PARAMETER = {"red": "RED_BAND", "green": "GREEN_BAND", "blue": "BLUE_BAND", "nir": "NIR_BAND"}
OPTION = {role: "--" + key.lower().replace("_", "-") for role, key in PARAMETER.items()}
ROLE_LABEL = {"red": "red", "green": "green", "blue": "blue", "nir": "near-infrared"}


class BandError(ValueError):
    """The bands cannot be chosen; the message says what to set."""


@dataclass(frozen=True)
class BandChoice:
    """1-based band per role, the reason for each, and warnings for contradictions."""

    bands: dict[str, int]
    reasons: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def ordered(self, roles: Sequence[str]) -> list[int]:
        """Bands in the order of ``roles`` (the model's channel order)."""
        return [self.bands[r] for r in roles]

    @property
    def reason(self) -> str:
        """One line: why these bands (grouped when several roles share a reason)."""
        groups: dict[str, list[str]] = {}
        for role in ROLES:
            groups.setdefault(self.reasons[role], []).append(f"{role}={self.bands[role]}")
        return "; ".join(f"{', '.join(v)}: {k}" for k, v in groups.items())


def _ask_for_bands(what: str) -> str:
    params = ", ".join(PARAMETER[r] for r in ROLES)
    options = ", ".join(OPTION[r] for r in ROLES)
    return f"{what} Set the bands explicitly: parameters {params} (command line: {options})."


def describe_labels(labels: Sequence[Sequence[str]]) -> list[str | None]:
    """The Sentinel-2 band each raster band is described as (``None``: says nothing)."""
    out: list[str | None] = []
    for texts in labels:
        named = [b for b in (sentinel2.band_from_label(t) for t in texts if t) if b]
        out.append(named[0] if named else None)
    return out


def choose_bands(
    band_count: int,
    labels: Sequence[Sequence[str]] = (),
    explicit: Mapping[str, int | None] | None = None,
) -> BandChoice:
    """Choose the band for each role of :data:`ROLES`.

    ``labels[i]`` are the texts that may name band ``i + 1`` (description, metadata values,
    source file name); ``explicit`` maps roles to 1-based bands the user set (``None``: auto).
    """
    explicit = {r: v for r, v in (explicit or {}).items() if v is not None}
    if band_count < len(ROLES):
        raise BandError(
            f"The input raster has {band_count} band(s), but the cloud model needs four: "
            "red (B04), green (B03), blue (B02) and near-infrared (B08). Use a multi-band "
            "Sentinel-2 stack or product (e.g. build one with 'Build virtual raster', separate "
            "bands)."
        )
    for role, band in explicit.items():
        if role not in ROLES:
            raise ValueError(f"unknown band role {role!r}")
        if not 1 <= int(band) <= band_count:
            raise BandError(
                f"The {role} band is set to {band}, but the input raster has bands 1 to "
                f"{band_count}."
            )

    described = describe_labels(list(labels) + [()] * (band_count - len(labels)))[:band_count]
    where: dict[str, list[int]] = {}
    for i, name in enumerate(described):
        if name:
            where.setdefault(name, []).append(i + 1)

    bands: dict[str, int] = {}
    reasons: dict[str, str] = {}
    warnings: list[str] = []
    missing: list[str] = []
    for role in ROLES:
        wanted = ROLE_BAND[role]
        if role in explicit:
            band = int(explicit[role])
            bands[role], reasons[role] = band, f"set by {PARAMETER[role]}"
            actual = described[band - 1]
            if actual and actual != wanted:
                warnings.append(
                    f"{PARAMETER[role]}={band}, but band {band} is described as {actual}, not "
                    f"{wanted} ({ROLE_LABEL[role]}); check the band choice."
                )
            continue
        found = where.get(wanted, [])
        if len(found) == 1:
            bands[role] = found[0]
            reasons[role] = "from the band descriptions"
        elif len(found) > 1:
            raise BandError(
                _ask_for_bands(
                    f"Bands {', '.join(map(str, found))} are all described as {wanted} "
                    f"({ROLE_LABEL[role]}): cannot tell which one to use."
                )
            )
        else:
            missing.append(role)

    if missing:
        if band_count == len(ROLES) and not any(described):
            for role in missing:
                bands[role] = DEFAULT_4_BAND[role]
                reasons[role] = (
                    "default order of a 4-band raster without band descriptions "
                    "(B02, B03, B04, B08)"
                )
        else:
            names = ", ".join(f"{ROLE_LABEL[r]} ({ROLE_BAND[r]})" for r in missing)
            if any(described):
                seen = ", ".join(f"band {i + 1} = {b}" for i, b in enumerate(described) if b)
                what = f"The input raster's band descriptions ({seen}) do not name {names}."
            else:
                what = (
                    f"The input raster has {band_count} bands and none is described, so it is "
                    f"not known which holds {names}."
                )
            raise BandError(_ask_for_bands(what))

    chosen = [bands[r] for r in ROLES]
    if len(set(chosen)) != len(chosen):
        raise BandError(
            "The same raster band is chosen for more than one of red, green, blue and "
            f"near-infrared ({', '.join(f'{r}={bands[r]}' for r in ROLES)}); each needs its "
            "own band."
        )
    return BandChoice(bands=bands, reasons=reasons, warnings=warnings)
