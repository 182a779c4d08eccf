"""The values of the cloud mask and how every output shows them: one table, read by the GeoTIFF
colour table and category names, the QGIS styles (.qml), the polygons and the statistics."""

from __future__ import annotations

from dataclasses import dataclass

CLEAR = 0
CLOUD = 1
#: Clear pixels within BUFFER metres of a cloud; its own value so users can count it or not.
CLOUD_BUFFER = 2
NODATA = 255


@dataclass(frozen=True)
class MaskClass:
    value: int
    label: str
    #: red, green, blue, alpha (0 transparent .. 255 opaque)
    rgba: tuple[int, int, int, int]

    @property
    def hex_colour(self) -> str:
        return hex_colour(self.rgba)


def hex_colour(rgba: tuple[int, ...]) -> str:
    """``#rrggbb`` (alpha is stored apart in QGIS styles)."""
    return "#{:02x}{:02x}{:02x}".format(*rgba[:3])


#: Every value the mask can hold, in legend order. Clear and nodata are transparent so the mask
#: overlays the image; cloud is a colour no natural scene has, the buffer a lighter tint of it.
MASK_CLASSES = (
    MaskClass(CLEAR, "clear", (0, 0, 0, 0)),
    MaskClass(CLOUD, "cloud", (255, 0, 200, 255)),
    MaskClass(CLOUD_BUFFER, "cloud buffer", (255, 160, 235, 255)),
    MaskClass(NODATA, "nodata", (0, 0, 0, 0)),
)
#: The classes a mask holds when no buffer was asked for.
MASK_CLASSES_WITHOUT_BUFFER = tuple(c for c in MASK_CLASSES if c.value != CLOUD_BUFFER)
LABELS = {c.value: c.label for c in MASK_CLASSES}

#: Probability ramp (value, rgba): transparent where clouds are unlikely, opaque red where sure.
PROBABILITY_RAMP = (
    (0.0, (255, 255, 178, 0)),
    (0.25, (254, 204, 92, 0)),
    (0.5, (253, 141, 60, 160)),
    (0.75, (240, 59, 32, 220)),
    (1.0, (189, 0, 38, 255)),
)


def mask_classes(with_buffer: bool) -> tuple[MaskClass, ...]:
    return MASK_CLASSES if with_buffer else MASK_CLASSES_WITHOUT_BUFFER
