"""Shared fixtures. Keep torch out of here: it costs seconds and plugin tests never need it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support import synthetic

QGIS_PLUGINS = "/usr/share/qgis/python/plugins"  # where Debian puts QGIS's `processing`
if QGIS_PLUGINS not in sys.path:
    sys.path.append(QGIS_PLUGINS)


@pytest.fixture(scope="session")
def pixel_model(tmp_path_factory) -> Path:
    """A contract-conforming ONNX model: probability = sigmoid(40 * (blue - 0.2))."""
    return Path(synthetic.write_pixel_model(tmp_path_factory.mktemp("models") / "pixel.onnx"))
