"""Cloud statistics, counted from the final mask (never from tiles, so overlaps count once)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from qgis_cloudmask.core.classes import CLEAR, CLOUD, CLOUD_BUFFER, NODATA

__all__ = ["CLEAR", "CLOUD", "CLOUD_BUFFER", "NODATA", "CloudStats"]


@dataclass
class CloudStats:
    """Pixel counts of a cloud mask; percentages are of valid (non-nodata) pixels."""

    cloud_pixels: int = 0
    clear_pixels: int = 0
    nodata_pixels: int = 0
    buffer_pixels: int = 0

    def add(self, mask: np.ndarray) -> None:
        """Count one block of a {0, 1, 2, 255} mask."""
        counts = np.bincount(mask.ravel(), minlength=256)
        self.clear_pixels += int(counts[CLEAR])
        self.cloud_pixels += int(counts[CLOUD])
        self.buffer_pixels += int(counts[CLOUD_BUFFER])
        self.nodata_pixels += int(counts[NODATA])
        known = counts[CLEAR] + counts[CLOUD] + counts[CLOUD_BUFFER] + counts[NODATA]
        other = mask.size - int(known)
        if other:
            raise ValueError(f"mask holds {other} pixels that are not 0, 1, 2 or 255")

    @property
    def valid_pixels(self) -> int:
        return self.cloud_pixels + self.buffer_pixels + self.clear_pixels

    @property
    def total_pixels(self) -> int:
        return self.valid_pixels + self.nodata_pixels

    def _percent(self, pixels: int) -> float:
        return 100.0 * pixels / self.valid_pixels if self.valid_pixels else 0.0

    @property
    def cloud_percent(self) -> float:
        """Cloud cover in percent of valid pixels (0 when there is none); buffer not included."""
        return self._percent(self.cloud_pixels)

    @property
    def buffer_percent(self) -> float:
        """Cloud-buffer cover in percent of valid pixels."""
        return self._percent(self.buffer_pixels)

    def cloud_area(self, pixel_area: float) -> float:
        """Cloud area in the map units squared of ``pixel_area`` (area of one pixel)."""
        return self.cloud_pixels * abs(pixel_area)

    def buffer_area(self, pixel_area: float) -> float:
        return self.buffer_pixels * abs(pixel_area)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["valid_pixels"] = self.valid_pixels
        d["total_pixels"] = self.total_pixels
        d["cloud_percent"] = self.cloud_percent
        d["buffer_percent"] = self.buffer_percent
        return d
