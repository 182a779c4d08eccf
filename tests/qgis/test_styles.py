"""What a QGIS user sees: every output loaded in a fresh layer (its .qml applies), the layers the
desktop loads after a run (the post-processor applies the style), and the dialog's parameters."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis.core import (
    QgsProcessingParameterDefinition,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)

from qgis_cloudmask import pipeline
from qgis_cloudmask.core import classes
from tests.support import synthetic

MASK_WITHOUT_BUFFER = [
    (0, "#000000", 0, "clear"),
    (1, "#ff00c8", 255, "cloud"),
    (255, "#000000", 0, "nodata"),
]
MASK_WITH_BUFFER = [
    (0, "#000000", 0, "clear"),
    (1, "#ff00c8", 255, "cloud"),
    (2, "#ffa0eb", 255, "cloud buffer"),
    (255, "#000000", 0, "nodata"),
]


def palette(layer):
    renderer = layer.renderer()
    assert renderer.type() == "paletted"
    return [(c.value, c.color.name(), c.color.alpha(), c.label) for c in renderer.classes()]


def ramp(layer):
    renderer = layer.renderer()
    assert renderer.type() == "singlebandpseudocolor"
    shader = renderer.shader().rasterShaderFunction()
    items = shader.colorRampItemList()
    return shader, [(i.value, i.color.alpha(), i.label) for i in items]


@pytest.fixture
def outputs(run_alg, scene, tmp_path):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    params = {
        "INPUT": src,
        "OUTPUT": str(tmp_path / "mask.tif"),
        "OUTPUT_PROBABILITY": str(tmp_path / "prob.tif"),
        "OUTPUT_VECTOR": str(tmp_path / "clouds.gpkg"),
        "OUTPUT_MASKED": str(tmp_path / "masked.tif"),
        "MIN_CLOUD_SIZE": 30,
        "BUFFER": 25,
    }
    return run_alg(params), scene


def test_mask_loads_paletted_with_transparent_clear_and_named_classes(outputs):
    res, _ = outputs
    layer = QgsRasterLayer(res["OUTPUT"], "mask")
    assert layer.isValid()
    assert palette(layer) == MASK_WITH_BUFFER
    legend = [text for text, _ in layer.renderer().legendSymbologyItems()]
    assert legend == ["clear", "cloud", "cloud buffer", "nodata"]


def test_mask_without_buffer_has_no_buffer_class(run_alg, scene, tmp_path):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    res = run_alg({"INPUT": src, "OUTPUT": str(tmp_path / "m.tif")})
    assert palette(QgsRasterLayer(res["OUTPUT"], "m")) == MASK_WITHOUT_BUFFER


def test_mask_colours_come_from_the_one_class_table():
    expected = [(c.value, c.hex_colour, c.rgba[3], c.label) for c in classes.mask_classes(True)]
    assert expected == MASK_WITH_BUFFER


def test_probability_loads_as_a_ramp_transparent_at_low_probability(outputs):
    res, _ = outputs
    layer = QgsRasterLayer(res["OUTPUT_PROBABILITY"], "p")
    shader, items = ramp(layer)
    assert (shader.minimumValue(), shader.maximumValue()) == (0.0, 1.0)
    assert items[0] == (0.0, 0, "0") and items[-1] == (1.0, 255, "1")
    assert [alpha for _, alpha, _ in items] == sorted(alpha for _, alpha, _ in items)
    assert layer.renderer().legendSymbologyItems()  # a legend from 0 to 1


def test_masked_image_loads_in_true_colour_stretched_over_reflectance(outputs):
    res, _ = outputs
    layer = QgsRasterLayer(res["OUTPUT_MASKED"], "masked")
    r = layer.renderer()
    assert r.type() == "multibandcolor"
    assert (r.redBand(), r.greenBand(), r.blueBand()) == (3, 2, 1)  # B04, B03, B02
    ce = r.redContrastEnhancement()
    assert (ce.minimumValue(), ce.maximumValue()) == (0.0, 3000.0)


def test_polygons_and_masked_image_agree_with_the_mask(outputs):
    res, scene = outputs
    mask = gdal.Open(res["OUTPUT"]).ReadAsArray()
    assert res["BUFFER_PIXELS"] == int((mask == 2).sum()) > 0
    assert res["CLOUD_PIXELS"] == int((mask == 1).sum())
    assert res["REMOVED_PIXELS"] >= 0
    vector = QgsVectorLayer(res["OUTPUT_VECTOR"], "clouds", "ogr")
    assert vector.isValid() and vector.featureCount() > 0
    renderer = vector.renderer()  # the default style stored in the GeoPackage
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "class"
    shown = [(c.value(), c.label(), c.symbol().color().name()) for c in renderer.categories()]
    assert shown == [("1", "cloud", "#ff00c8"), ("2", "cloud buffer", "#ffa0eb")]
    areas = {1: 0.0, 2: 0.0}
    for f in vector.getFeatures():
        areas[f["class"]] += f["area_m2"]
    assert areas[1] == pytest.approx(res["CLOUD_PIXELS"] * 100)
    assert areas[2] == pytest.approx(res["BUFFER_PIXELS"] * 100)
    masked = gdal.Open(res["OUTPUT_MASKED"]).ReadAsArray()
    hidden = mask > 0
    assert (masked[:, hidden] == 0).all()
    np.testing.assert_array_equal(masked[:, ~hidden], scene[:, ~hidden])


def test_desktop_loads_the_outputs_styled(cloudmask_provider, pixel_model, scene, tmp_path):
    """processing.runAndLoadResults, as the dialog does: the loaded layers carry the styles."""
    import processing

    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    project = QgsProject.instance()
    project.clear()
    processing.runAndLoadResults(
        "cloudmask:detectclouds",
        {
            "INPUT": src,
            "MODEL": str(pixel_model),
            "OUTPUT": str(tmp_path / "mask.tif"),
            "OUTPUT_PROBABILITY": str(tmp_path / "prob.tif"),
            "OUTPUT_VECTOR": str(tmp_path / "clouds.gpkg"),
            "BUFFER": 20,
        },
    )
    layers = {layer.source().split("|")[0]: layer for layer in project.mapLayers().values()}
    assert palette(layers[str(tmp_path / "mask.tif")]) == MASK_WITH_BUFFER
    ramp(layers[str(tmp_path / "prob.tif")])
    assert layers[str(tmp_path / "clouds.gpkg")].renderer().type() == "categorizedSymbol"
    project.clear()


def test_everyday_parameters_first_technical_ones_advanced(cloudmask_provider):
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().algorithmById("cloudmask:detectclouds")
    params = [p for p in alg.parameterDefinitions() if not p.isDestination()]
    names = [p.name() for p in params]
    advanced = {
        p.name() for p in params if p.flags() & QgsProcessingParameterDefinition.FlagAdvanced
    }
    assert advanced == {
        "OVERLAP",
        "BATCH_SIZE",
        "TTA",
        "HISTOGRAM_MATCHING",
        "BUNDLED_MODEL",
        "MODEL",
        "WEIGHTS",
        "FORCE_CPU",
    }
    assert names[:4] == ["INPUT", "THRESHOLD", "MIN_CLOUD_SIZE", "BUFFER"]
    for p in alg.parameterDefinitions():  # QGIS adds "[optional]" itself
        assert "optional" not in p.description().lower(), p.description()


def test_threshold_and_overlap_show_the_bundled_models_defaults(cloudmask_provider):
    from qgis.core import QgsApplication

    info = pipeline.bundled_model_info()
    if info is None:
        pytest.skip("this build bundles no model (models/cloudmask.onnx)")
    alg = QgsApplication.processingRegistry().algorithmById("cloudmask:detectclouds")
    assert alg.parameterDefinition("THRESHOLD").defaultValue() == info.threshold
    assert alg.parameterDefinition("OVERLAP").defaultValue() == info.recommended_overlap
    assert alg.parameterDefinition("BUFFER").defaultValue() == 0
    assert alg.parameterDefinition("MIN_CLOUD_SIZE").defaultValue() == 0


def test_a_threshold_left_at_the_shown_default_lets_the_chosen_model_decide(
    run_alg, scene, tmp_path
):
    """The dialog shows the bundled model's 0.25; a model of one's own keeps its 0.5."""
    info = pipeline.bundled_model_info()
    if info is None:
        pytest.skip("this build bundles no model (models/cloudmask.onnx)")
    src = synthetic.write_geotiff(tmp_path / "s2.tif", scene)
    res = run_alg(
        {
            "INPUT": src,
            "OUTPUT": str(tmp_path / "m.tif"),
            "THRESHOLD": info.threshold,
            "OVERLAP": info.recommended_overlap,
        }
    )
    assert res["THRESHOLD_USED"] == 0.5  # the test model's own default
    res = run_alg({"INPUT": src, "OUTPUT": str(tmp_path / "m2.tif"), "THRESHOLD": 0.7})
    assert res["THRESHOLD_USED"] == 0.7


def test_polygon_layer_is_empty_not_an_error_without_clouds(run_alg, tmp_path):
    clear = np.full((4, 80, 90), 400, np.uint16)
    clear[3] = 2500
    src = synthetic.write_geotiff(tmp_path / "clear.tif", clear)
    res = run_alg(
        {"INPUT": src, "OUTPUT": str(tmp_path / "m.tif"), "OUTPUT_VECTOR": str(tmp_path / "v.gpkg")}
    )
    assert res["CLOUD_PIXELS"] == 0
    ds = ogr.Open(res["OUTPUT_VECTOR"])
    assert ds.GetLayer(0).GetFeatureCount() == 0


def test_without_onnxruntime_the_algorithm_still_loads_with_model_defaults_unset(
    cloudmask_provider, monkeypatch
):
    # Mock (the only way here): make `import onnxruntime` fail as on a bare QGIS.
    from qgis_cloudmask.cloudmask_processing.detect_clouds import DetectCloudsAlgorithm

    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    pipeline._bundled_info.cache_clear()
    try:
        alg = DetectCloudsAlgorithm()
        alg.initAlgorithm()
        threshold = alg.parameterDefinition("THRESHOLD")
        assert threshold.defaultValue() is None
        assert threshold.flags() & QgsProcessingParameterDefinition.FlagOptional
    finally:
        pipeline._bundled_info.cache_clear()
