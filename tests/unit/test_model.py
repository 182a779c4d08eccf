"""The ONNX wrapper: contract validation with precise messages, and real onnxruntime runs."""

import sys

import numpy as np
import onnx
import pytest

from qgis_cloudmask.core import contract
from qgis_cloudmask.core.model import CloudModel, ModelError
from tests.support import synthetic


def test_valid_model_loads_and_predicts_its_documented_function(pixel_model):
    model = CloudModel(pixel_model)
    assert model.info.tile_size == 224 and model.info.threshold == 0.5
    assert model.info.band_roles == ("red", "green", "blue", "nir")
    assert model.execution_provider.endswith("ExecutionProvider")
    rng = np.random.default_rng(0)
    tiles = rng.uniform(0, 0.5, size=(3, 4, 224, 224)).astype(np.float32)
    prob = model.predict(tiles)
    assert prob.shape == (3, 224, 224) and prob.dtype == np.float32
    np.testing.assert_allclose(prob, synthetic.sigmoid_probability(tiles[:, 2], 40, 0.2), atol=1e-6)


@pytest.mark.parametrize("key", contract.REQUIRED_METADATA_KEYS)
def test_missing_metadata_key_is_named(tmp_path, key):
    path = synthetic.write_pixel_model(tmp_path / "m.onnx", drop_keys=(key,))
    with pytest.raises(ModelError, match=f"'{key}' missing"):
        CloudModel(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"meta": {"bands": ["B02", "B03", "B04"]}}, "'bands'"),
        ({"meta": {"bands": ["B04", "B03", "B02", "B11"]}}, "'bands'"),
        ({"meta": {"input_kind": "dn"}}, "input_kind"),
        ({"meta": {"recommended_overlap": 224}}, "recommended_overlap"),
        ({"threshold": 1.5}, "threshold"),
        ({"input_name": "x"}, "input named 'input'"),
        ({"prob_name": "prob"}, "no output named 'probability'"),
        ({"channels": 3, "channel": 1}, r"\[N, 4, 224, 224\]"),
    ],
)
def test_contract_violations_are_explained(tmp_path, kwargs, message):
    path = synthetic.write_pixel_model(tmp_path / "m.onnx", **kwargs)
    with pytest.raises(ModelError, match=message):
        CloudModel(path)


def test_graph_tile_size_must_match_the_metadata(tmp_path):
    path = synthetic.write_pixel_model(tmp_path / "m.onnx", tile=256)
    model = onnx.load(path)
    for prop in model.metadata_props:
        if prop.key == "tile_size":
            prop.value = "224"
    onnx.save(model, path)
    with pytest.raises(ModelError, match=r"shape \[N, 4, 224, 224\]"):
        CloudModel(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        CloudModel(tmp_path / "nope.onnx")


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", b"\x08\x07" * 100])
def test_file_that_is_not_onnx(tmp_path, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match="not a usable ONNX model"):
        CloudModel(path)


def test_truncated_model_file(tmp_path, pixel_model):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(pixel_model.read_bytes()[:200])
    with pytest.raises(ModelError, match="not a usable ONNX model"):
        CloudModel(path)


def test_missing_onnxruntime_says_how_to_install(monkeypatch, pixel_model):
    # The one mock: uninstalling onnxruntime inside the test run is impossible, so the import
    # is made to fail the way it does on a machine without the package.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelError, match="onnxruntime' is not installed.*pip install"):
        CloudModel(pixel_model)


def test_predict_rejects_wrong_tile_shape(pixel_model):
    with pytest.raises(ValueError, match="N x 4 x 224 x 224"):
        CloudModel(pixel_model).predict(np.zeros((1, 4, 100, 100), np.float32))
