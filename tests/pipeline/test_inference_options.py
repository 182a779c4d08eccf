"""TTA, ensembles and histogram matching through ``pipeline.run`` on real GeoTIFFs with real
onnxruntime sessions; expected outputs computed independently with NumPy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal

from qgis_cloudmask import pipeline
from qgis_cloudmask.core import contract, histogram, inference, radiometry, tta
from qgis_cloudmask.core.model import CloudModel
from tests.support import synthetic

gdal.UseExceptions()

#: the test rasters store B02, B03, B04, B08: their order in the model's channels
TO_MODEL = [2, 1, 0, 3]
S2_DN = radiometry.Radiometry.S2_DN


@pytest.fixture
def scene():
    return synthetic.sample_scene(240, 260, seed=11)


@pytest.fixture
def src(tmp_path, scene):
    return synthetic.write_geotiff(tmp_path / "s2.tif", scene)


def reflectance(scene) -> np.ndarray:
    """Model-order reflectance of a DN stack (DN / 10000)."""
    return (scene.astype(np.float64) / 10000)[TO_MODEL]


def run(src, tmp_path, name="out", **fields):
    result = pipeline.run(
        pipeline.MaskRequest(
            input=src,
            output=str(tmp_path / f"{name}.tif"),
            probability=str(tmp_path / f"{name}_p.tif"),
            stats=str(tmp_path / f"{name}.json"),
            radiometry=S2_DN,
            **fields,
        )
    )
    mask = gdal.Open(str(tmp_path / f"{name}.tif")).ReadAsArray()
    prob = gdal.Open(str(tmp_path / f"{name}_p.tif")).ReadAsArray()
    return result, mask, prob


# -- ensembles ------------------------------------------------------------------------------


@pytest.fixture
def two_models(tmp_path):
    blue = synthetic.write_pixel_model(tmp_path / "blue.onnx", k=40, centre=0.2, threshold=0.5)
    red = synthetic.write_red_model(tmp_path / "red.onnx", model_version="0.0.2")
    return blue, red


def test_ensemble_averages_probabilities_with_weights_and_mean_threshold(
    src, scene, tmp_path, two_models
):
    result, mask, prob = run(src, tmp_path, model=list(two_models), weights=[3, 1])
    refl = reflectance(scene)
    expected = 0.75 * synthetic.sigmoid_probability(refl[2], 40, 0.2) + 0.25 * (
        synthetic.sigmoid_probability(refl[0], 25, 0.15)
    )
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    threshold = 0.75 * 0.5 + 0.25 * 0.3
    decided = np.abs(expected - threshold) > 1e-5
    np.testing.assert_array_equal(mask[decided], (expected >= threshold)[decided])
    settings = result.settings
    assert settings["threshold"]["value"] == pytest.approx(threshold)
    assert "weighted mean of the 2 models' thresholds (0.5, 0.3)" in settings["threshold"]["reason"]
    summary = json.loads((tmp_path / "out.json").read_text())
    assert [(m["name"], m["version"], m["weight"]) for m in summary["models"]] == [
        ("test-blue-sigmoid", "0.0.1", 0.75),
        ("test-red-sigmoid", "0.0.2", 0.25),
    ]
    assert summary["model"]["name"] == "ensemble of 2 models"
    assert "test-red-sigmoid 0.0.2" in result.model_name


def test_ensemble_with_equal_weights_says_mean_and_an_explicit_threshold_wins(
    src, tmp_path, two_models
):
    result, *_ = run(src, tmp_path, model=list(two_models))
    assert result.settings["threshold"]["value"] == pytest.approx(0.4)
    assert result.settings["threshold"]["reason"].startswith("mean of the 2 models")
    assert [m["weight"] for m in result.summary["models"]] == [0.5, 0.5]
    explicit, *_ = run(src, tmp_path, name="x", model=list(two_models), threshold=0.6)
    assert explicit.settings["threshold"] == {"value": 0.6, "reason": "set by THRESHOLD"}


def test_a_single_model_summary_lists_it_too(src, tmp_path, two_models):
    result, *_ = run(src, tmp_path, model=two_models[0])
    assert [m["name"] for m in result.summary["models"]] == ["test-blue-sigmoid"]
    assert result.summary["model"]["name"] == "test-blue-sigmoid"
    assert result.settings["threshold"]["reason"] == "the model's default"


@pytest.mark.parametrize(
    ("meta", "tile", "words"),
    [
        ({"bands": ["B02", "B03", "B04", "B08"]}, 224, "input bands (channel order)"),
        ({}, 256, "tile size: 'blue.onnx' takes 224 px, 'other.onnx' takes 256 px"),
    ],
)
def test_models_that_disagree_on_their_input_are_refused(
    src, tmp_path, two_models, meta, tile, words
):
    other = synthetic.write_pixel_model(tmp_path / "other.onnx", tile=tile, meta=meta)
    with pytest.raises(pipeline.PipelineError, match="disagree") as info:
        run(src, tmp_path, model=[two_models[0], other])
    assert words in str(info.value)
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize(
    ("weights", "error", "words"),
    [
        ([1.0], pipeline.ParameterError, "1 model weight(s) were given for 2 model(s)"),
        ([1.0, 0.0], pipeline.PipelineError, "greater than 0"),
        ([1.0, float("nan")], pipeline.PipelineError, "greater than 0"),
    ],
)
def test_bad_weights_are_refused(src, tmp_path, two_models, weights, error, words):
    with pytest.raises(error) as info:
        run(src, tmp_path, model=list(two_models), weights=weights)
    assert words in str(info.value)


def test_the_same_model_twice_is_refused(src, tmp_path, two_models):
    with pytest.raises(pipeline.PipelineError, match="given twice"):
        run(src, tmp_path, model=[two_models[0], two_models[0]])


# -- test-time augmentation -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["flips", "d8"])
def test_tta_leaves_a_per_pixel_model_unchanged(src, tmp_path, two_models, mode):
    _, mask0, prob0 = run(src, tmp_path, name="none", model=two_models[0])
    result, mask, prob = run(src, tmp_path, model=two_models[0], tta=mode)
    np.testing.assert_allclose(prob, prob0, atol=1e-6)
    assert result.summary["tta"] == mode and result.settings["tta"]["value"] == mode


def test_tta_with_the_bundled_model_equals_the_core_on_the_same_reflectance(src, scene, tmp_path):
    """The pipeline's TTA is the core's with_tta around the model, per batch, before the
    blend: computed here again with classify_array on the same reflectance."""
    path = pipeline.bundled_model_path()
    if path is None:
        pytest.skip("this build bundles no model")
    result, mask, prob = run(src, tmp_path, tta=tta.TTA.FLIPS)
    model = CloudModel(path)
    refl = np.clip(reflectance(scene), 0, radiometry.MAX_REFLECTANCE).astype(np.float32)
    info = model.info
    expected, exp_mask, _ = inference.classify_array(
        tta.with_tta(model.predict, tta.TTA.FLIPS),
        refl,
        info.tile_size,
        info.recommended_overlap,
        info.threshold,
        batch_size=pipeline.DEFAULT_BATCH_SIZE,
    )
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    _, _, plain = run(src, tmp_path, name="plain")
    assert np.abs(plain - prob).max() > 1e-4  # the real model is not flip-invariant
    assert "Flips" in result.settings["tta"]["reason"]


def test_unknown_tta_is_a_parameter_error(src, tmp_path):
    with pytest.raises(pipeline.ParameterError, match="TTA: unknown test-time augmentation"):
        run(src, tmp_path, tta="rot90")


# -- histogram matching ---------------------------------------------------------------------


def reference_for(values: np.ndarray) -> histogram.Reference:
    q = histogram.scene_quantiles(values)
    return histogram.Reference(histogram.LEVELS, tuple(tuple(map(float, r)) for r in q), "t")


def test_histogram_matching_maps_the_scene_onto_the_reference(src, scene, tmp_path):
    """The written probability is the model applied to the matched reflectance: scene
    quantiles of every valid pixel (a small raster is sampled whole) mapped onto the model's
    reference, computed here independently."""
    rng = np.random.default_rng(5)
    ref = reference_for(rng.gamma(3.0, 0.05, (4, 50000)))
    model = synthetic.write_pixel_model(
        tmp_path / "ref.onnx",
        meta={contract.REFERENCE_QUANTILES_KEY: ref.to_metadata(contract.DEFAULT_BANDS)},
    )
    result, mask, prob = run(src, tmp_path, model=model, histogram_matching=True)
    refl = reflectance(scene)
    scene_q = np.quantile(refl.reshape(4, -1), histogram.LEVELS, axis=1).T
    blue = contract.DEFAULT_BANDS.index("B02")
    s, r = scene_q[blue], np.asarray(ref.values[blue])
    x = refl[blue]
    matched = np.interp(x, s, r)
    matched = np.where(x > s[-1], r[-1] + x - s[-1], np.where(x < s[0], r[0] + x - s[0], matched))
    expected = synthetic.sigmoid_probability(np.clip(matched, 0, 2), 40, 0.2)
    np.testing.assert_allclose(prob, expected, atol=2e-5)
    _, _, plain = run(src, tmp_path, name="plain", model=model)
    assert np.abs(plain - prob).max() > 0.05  # it did change something
    setting = result.settings["histogram_matching"]
    assert setting["value"] is True and f"{240 * 260} sampled pixels" in setting["reason"]
    assert result.summary["histogram_matching"] is True


def test_histogram_matching_without_a_reference_is_a_clear_error(src, tmp_path, two_models):
    with pytest.raises(pipeline.ParameterError) as info:
        run(src, tmp_path, model=two_models[0], histogram_matching=True)
    text = str(info.value)
    assert "HISTOGRAM_MATCHING" in text and "'blue.onnx'" in text and "reference_quantiles" in text
    assert not (tmp_path / "out.tif").exists()


def test_the_bundled_model_carries_its_training_reference():
    path = pipeline.bundled_model_path()
    if path is None:
        pytest.skip("this build bundles no model")
    info = CloudModel(path).info
    assert info.reference is not None and info.reference.levels == histogram.LEVELS
    assert "training scenes" in info.reference.source


def test_histogram_matching_each_member_of_an_ensemble_to_its_own_reference(src, scene, tmp_path):
    rng = np.random.default_rng(6)
    refs = [reference_for(rng.gamma(a, 0.05, (4, 20000))) for a in (2.0, 4.0)]
    models = [
        synthetic.write_pixel_model(
            tmp_path / f"m{i}.onnx",
            meta={contract.REFERENCE_QUANTILES_KEY: ref.to_metadata(contract.DEFAULT_BANDS)},
        )
        for i, ref in enumerate(refs)
    ]
    _, _, prob = run(src, tmp_path, model=models, histogram_matching=True)
    _, _, p0 = run(src, tmp_path, name="a", model=models[0], histogram_matching=True)
    _, _, p1 = run(src, tmp_path, name="b", model=models[1], histogram_matching=True)
    np.testing.assert_allclose(prob, (p0 + p1) / 2, atol=1e-5)
    assert np.abs(p0 - p1).max() > 0.05


# -- the fast bundled model (int8) -----------------------------------------------------------


def test_the_fast_bundled_model_is_the_int8_network_and_agrees_with_the_standard_one(src, tmp_path):
    """BUNDLED_MODEL 'fast' runs models/cloudmask-int8.onnx: the standard network quantized,
    so on the same scene its probabilities stay close (make quantize measured a mean |dp| of
    0.005 and 0.5 % of pixels across the threshold on the validation crops)."""
    fast_path = pipeline.bundled_model_path("fast")
    if fast_path is None or pipeline.bundled_model_path() is None:
        pytest.skip("this build bundles no model")
    fast, fast_mask, fast_prob = run(src, tmp_path, name="fast", bundled="fast")
    std, std_mask, std_prob = run(src, tmp_path, name="std")
    assert fast.settings["model"]["reason"] == fast_path
    assert fast.settings["model"]["value"].endswith("+int8")
    assert fast.settings["model"]["value"].startswith(std.settings["model"]["value"].split()[0])
    assert fast.settings["threshold"]["value"] == std.settings["threshold"]["value"]
    valid = std_mask != 255
    assert np.array_equal(fast_mask == 255, ~valid)
    assert np.abs(fast_prob - std_prob)[valid].mean() < 0.03
    assert (fast_mask != std_mask)[valid].mean() < 0.05
    assert not np.array_equal(fast_prob, std_prob)  # another network did run


def test_the_fast_bundled_model_with_model_files_or_an_unknown_name_is_refused(
    src, tmp_path, two_models
):
    with pytest.raises(pipeline.ParameterError, match="choose one of them"):
        run(src, tmp_path, model=two_models[0], bundled="fast")
    with pytest.raises(pipeline.ParameterError, match="Unknown bundled model 'turbo'"):
        run(src, tmp_path, bundled="turbo")
    assert not (tmp_path / "out.tif").exists()


def test_a_build_without_the_fast_model_says_which_file_is_missing(src, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "BUNDLED_MODEL_DIRS", (str(tmp_path / "nowhere"),))
    with pytest.raises(pipeline.PipelineError, match=r"models/cloudmask-int8\.onnx"):
        run(src, tmp_path, bundled="fast")
