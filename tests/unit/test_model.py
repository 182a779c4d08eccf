"""The ONNX wrapper: contract validation with precise messages, and real onnxruntime runs."""

import json
import sys

import numpy as np
import onnx
import pytest

from qgis_cloudmask import pipeline
from qgis_cloudmask.core import contract
from qgis_cloudmask.core.model import (
    METADATA_FORMS,
    CloudModel,
    ModelError,
    checked_probability,
    parse_metadata,
    read_info,
)
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


# -- every metadata key: type and range, with the key, the value seen and the form expected ---


def props(**overrides) -> dict[str, str]:
    """Metadata as onnxruntime hands it over (JSON text), with ``overrides`` as raw text."""
    return {k: json.dumps(v) for k, v in synthetic.metadata().items()} | overrides


def dumped(value) -> str:
    return json.dumps(value)


BAD_METADATA = [
    # (key, raw JSON text, what the message must say after "metadata '<key>' ")
    ("model_name", dumped(""), r"must be a non-empty string.*got ''"),
    ("model_name", dumped(42), r"must be a non-empty string.*got 42"),
    ("model_name", dumped(None), r"must be a non-empty string.*got None"),
    ("model_version", dumped(1.0), r"must be a non-empty string.*got 1\.0"),
    ("model_version", dumped(["1", "0"]), r"must be a non-empty string.*got \['1', '0'\]"),
    ("bands", dumped("B04,B03,B02,B08"), r"must be a list of the band names.*got 'B04,B03"),
    ("bands", dumped(["B04", "B03", "B02"]), r"must be a list of the band names"),
    (
        "bands",
        dumped(["B04", "B03", "B02", "B11"]),
        r"must be a list.*got \['B04', 'B03', 'B02', 'B11'\]",
    ),
    ("bands", dumped(["B04", "B04", "B02", "B08"]), r"must be a list of the band names"),
    ("bands", dumped([4, 3, 2, 8]), r"must be a list of the band names.*got \[4, 3, 2, 8\]"),
    ("input_kind", dumped("dn"), r"must be \"reflectance\".*got 'dn'"),
    ("input_kind", dumped(["reflectance"]), r"must be \"reflectance\".*got \['reflectance'\]"),
    ("tile_size", dumped("224"), r"must be an integer number of pixels >= 16.*got '224'"),
    ("tile_size", dumped(224.5), r"must be an integer number of pixels >= 16.*got 224\.5"),
    ("tile_size", dumped(8), r"must be an integer number of pixels >= 16.*got 8"),
    ("tile_size", dumped(True), r"must be an integer number of pixels >= 16.*got True"),
    ("recommended_overlap", dumped(-1), r"must be an integer number of pixels >= 0.*got -1"),
    ("recommended_overlap", dumped("32"), r"must be an integer number of pixels >= 0.*got '32'"),
    ("recommended_overlap", dumped(224), r"does not fit its 224-px tiles.*224"),
    ("threshold", dumped(1.5), r"must be a probability strictly between 0 and 1.*got 1\.5"),
    ("threshold", dumped(0), r"must be a probability strictly between 0 and 1.*got 0"),
    ("threshold", dumped("0.5"), r"must be a probability strictly between 0 and 1.*got '0\.5'"),
    ("threshold", "NaN", r"must be a probability strictly between 0 and 1.*got nan"),
    ("threshold", dumped(False), r"must be a probability strictly between 0 and 1.*got False"),
    ("resolution_m", dumped("ten metres"), r"must be a number of metres > 0.*got 'ten metres'"),
    ("resolution_m", "ten metres", r"must be a number of metres > 0.*'ten metres'.*not valid JSON"),
    ("resolution_m", dumped(0), r"must be a number of metres > 0.*got 0"),
    ("resolution_m", dumped(-10), r"must be a number of metres > 0.*got -10"),
    ("resolution_m", "Infinity", r"must be a number of metres > 0.*got inf"),
    ("resolution_m", dumped([10, 10]), r"must be a number of metres > 0.*got \[10, 10\]"),
    ("classes", dumped(["clear", "cloud"]), r"must be a JSON object.*got \['clear', 'cloud'\]"),
    ("classes", dumped({}), r"must be a JSON object.*got \{\}"),
    ("classes", dumped({"0": "clear", "1": 1}), r"must be a JSON object.*got \{'0': 'clear'"),
    ("classes", dumped("clear, cloud"), r"must be a JSON object.*got 'clear, cloud'"),
    ("training", dumped("trained on S2"), r"must be a JSON object.*got 'trained on S2'"),
    ("training", dumped(None), r"must be a JSON object.*got None"),
    ("metrics", dumped([0.9, 0.8]), r"must be a JSON object.*got \[0\.9, 0\.8\]"),
    ("metrics", "{val_iou: 0.9}", r"must be a JSON object.*not valid JSON"),
]


@pytest.mark.parametrize(("key", "raw", "message"), BAD_METADATA)
def test_every_metadata_value_is_checked_and_explained(key, raw, message):
    with pytest.raises(ModelError, match=f"^The model 'm.onnx': metadata '{key}' {message}"):
        parse_metadata(props(**{key: raw}), "The model 'm.onnx'")


def test_every_contract_key_has_a_checked_form_with_bad_cases():
    assert set(METADATA_FORMS) == set(contract.REQUIRED_METADATA_KEYS)
    assert {key for key, _, _ in BAD_METADATA} == set(contract.REQUIRED_METADATA_KEYS)


def test_valid_metadata_is_typed():
    info = parse_metadata(props(resolution_m="10", threshold="0.25", metrics="{}"))
    assert info.resolution_m == 10.0 and isinstance(info.resolution_m, float)
    assert info.threshold == 0.25 and info.metrics == {}
    assert info.classes == {"0": "clear", "1": "cloud"}


def test_the_bundled_model_follows_every_form():
    path = pipeline.bundled_model_path()
    if path is None:
        pytest.skip("this checkout bundles no model")
    info = read_info(path)
    assert info.tile_size >= 16 and 0 < info.threshold < 1 and info.resolution_m > 0


def test_bad_metadata_in_a_real_model_file_is_explained(tmp_path):
    path = synthetic.write_pixel_model(
        tmp_path / "words.onnx", raw_meta={"resolution_m": dumped("ten metres")}
    )
    with pytest.raises(ModelError, match="'words.onnx'.*'resolution_m'.*'ten metres'"):
        CloudModel(path)


# -- hostile outputs: NaN, infinity, logits --------------------------------------------------


TILES = np.random.default_rng(1).uniform(0, 0.5, size=(2, 4, 224, 224)).astype(np.float32)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), r"returned NaN \(not a number\) for 100352 of 100352 pixels"),
        (float("inf"), r"returned infinite values for 100352 of 100352 pixels"),
        (7.3, r"returned values up to 7\.3 .*logits.*export the model with a sigmoid"),
        (-0.5, r"returned values down to -0\.5 .*logits.*export the model with a sigmoid"),
        (1.001, r"returned values up to 1\.001 .*logits"),
        (1.00001, r"returned values up to 1\.00001 .*logits"),
    ],
)
def test_hostile_model_output_is_refused_naming_the_file(tmp_path, value, message):
    path = synthetic.write_constant_model(tmp_path / "hostile.onnx", value)
    model = CloudModel(path)
    with pytest.raises(ModelError, match=message) as err:
        model.predict(TILES)
    assert str(path) in str(err.value) and "No output was written" in str(err.value)


def test_logit_model_is_refused_with_its_range(tmp_path):
    # the test model without its sigmoid: logit = 40 * (blue - 0.2), blue up to 0.5
    path = synthetic.write_pixel_model(tmp_path / "logits.onnx", sigmoid=False)
    with pytest.raises(
        ModelError, match=r"from -8 to 12 .*logits \(or scores\), not probabilities"
    ):
        CloudModel(path).predict(TILES)


@pytest.mark.parametrize(("value", "clipped"), [(1.0 + 5e-7, 1.0), (-5e-7, 0.0), (1.0, 1.0)])
def test_rounding_just_outside_0_1_is_clipped(tmp_path, value, clipped):
    path = synthetic.write_constant_model(tmp_path / "edge.onnx", value)
    prob = CloudModel(path).predict(TILES)
    assert prob.dtype == np.float32 and (prob == np.float32(clipped)).all()


def test_checked_probability_names_nan_and_infinity_together():
    prob = np.array([[np.nan, np.inf, 0.5, -np.inf]], np.float32)
    with pytest.raises(ModelError, match=r"^The model 'x' .*NaN .* for 1 and infinite .* 2 of 4"):
        checked_probability(prob, "The model 'x'")
