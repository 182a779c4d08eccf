"""Fixtures for driving the real algorithm through ``processing.run``."""

from __future__ import annotations

import pytest

from tests.support import synthetic


@pytest.fixture(scope="session")
def cloudmask_provider(qgis_processing):
    """The plugin's provider, registered once: a function-scoped one would be garbage collected."""
    from qgis_cloudmask.plugin import CloudMaskPlugin

    plugin = CloudMaskPlugin()
    plugin.initProcessing()
    yield plugin.provider
    plugin.unload()


@pytest.fixture
def run_alg(cloudmask_provider, pixel_model):
    """``run_alg(params, feedback=None)``: results of ``processing.run("cloudmask:...")``.

    MODEL defaults to the test model (probability = sigmoid(40 * (blue - 0.2))).
    """
    import processing
    from qgis.core import QgsProcessingFeedback

    def run(params, feedback=None):
        params = {"MODEL": str(pixel_model), **params}
        return processing.run(
            "cloudmask:detectclouds", params, feedback=feedback or QgsProcessingFeedback()
        )

    return run


@pytest.fixture
def scene():
    """A 300 x 350 Sentinel-2-like DN stack (B02, B03, B04, B08) with clouds."""
    return synthetic.sample_scene(300, 350, seed=3)
