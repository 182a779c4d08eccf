"""The ONNX model contract between ``training/`` and the plugin, in one place.

Training writes these names and keys (``training/export.py`` imports them from here); the
plugin validates them in :mod:`qgis_cloudmask.core.model`. ``models/MODEL_CARD.md`` documents
the same list.
"""

from __future__ import annotations

INPUT_NAME = "input"
MASK_OUTPUT = "mask"
PROBABILITY_OUTPUT = "probability"
N_CHANNELS = 4

#: Every key the plugin requires in the ONNX ``metadata_props`` (values are JSON).
REQUIRED_METADATA_KEYS: tuple[str, ...] = (
    "model_name",  # str
    "model_version",  # str, semantic version, bumped with every shipped retrain
    "bands",  # list of Sentinel-2 band names in input channel order
    "input_kind",  # "reflectance": what the input values are
    "tile_size",  # int, spatial size of the square input in pixels
    "recommended_overlap",  # int, pixels of tile overlap the plugin uses by default
    "threshold",  # float, default probability threshold
    "resolution_m",  # float, pixel size in metres the model was trained for
    "classes",  # {"0": "clear", "1": "cloud"}
    "training",  # provenance: {"data": ..., "git_sha": ..., "date": ...}
    "metrics",  # validation figures at export time
)

#: Optional metadata: reference reflectance quantiles of the training data per band (JSON
#: ``{"levels": [...], "bands": {"B04": [...], ...}, "source": "..."}``), needed only for
#: histogram matching (see :mod:`qgis_cloudmask.core.histogram`).
REFERENCE_QUANTILES_KEY = "reference_quantiles"
OPTIONAL_METADATA_KEYS: tuple[str, ...] = (REFERENCE_QUANTILES_KEY,)

#: Sentinel-2 band name -> the role a user picks a raster band for.
BAND_ROLES: dict[str, str] = {"B04": "red", "B03": "green", "B02": "blue", "B08": "nir"}

#: The channel order every shipped model uses (red, green, blue, nir).
DEFAULT_BANDS: tuple[str, ...] = ("B04", "B03", "B02", "B08")

SUPPORTED_INPUT_KINDS = ("reflectance",)
