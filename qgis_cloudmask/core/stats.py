"""Cloud statistics, counted from the final mask (never from tiles, so overlaps count once)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CLEAR = 0
CLOUD = 1
NODATA = 255


@dataclass
class CloudStats:
    """Pixel counts of a cloud mask; percentages are of valid (non-nodata) pixels."""

    cloud_pixels: int = 0
    clear_pixels: int = 0
    nodata_pixels: int = 0

    def add(self, mask: np.ndarray) -> None:
        """Count one block of a {0, 1, 255} mask."""
        counts = np.bincount(mask.ravel(), minlength=256)
        self.clear_pixels += int(counts[CLEAR])
        self.cloud_pixels += int(counts[CLOUD])
        self.nodata_pixels += int(counts[NODATA])
        other = mask.size - int(counts[CLEAR] + counts[CLOUD] + counts[NODATA])
        if other:
            raise ValueError(f"mask holds {other} pixels that are not 0, 1 or 255")

    @property
    def valid_pixels(self) -> int:
        return self.cloud_pixels + self.clear_pixels

    @property
    def total_pixels(self) -> int:
        return self.valid_pixels + self.nodata_pixels

    @property
    def cloud_percent(self) -> float:
        """Cloud cover in percent of valid pixels (0 when there is none)."""
        return 100.0 * self.cloud_pixels / self.valid_pixels if self.valid_pixels else 0.0

    def cloud_area(self, pixel_area: float) -> float:
        """Cloud area in the map units squared of ``pixel_area`` (area of one pixel)."""
        return self.cloud_pixels * abs(pixel_area)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["valid_pixels"] = self.valid_pixels
        d["total_pixels"] = self.total_pixels
        d["cloud_percent"] = self.cloud_percent
        return d
