"""Deterministic test data: Sentinel-2-like GeoTIFFs and tiny contract-conforming ONNX models.

The tiny models compute a documented per-pixel function, so every output of the plugin can be
predicted exactly: ``probability = sigmoid(k * (reflectance[channel] - centre))`` and
``mask = probability >= threshold``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from qgis_cloudmask.core import contract

TILE = 224
#: channel 2 of the model input is blue (B02) in the contract's order red, green, blue, nir
BLUE_CHANNEL = contract.DEFAULT_BANDS.index("B02")


def metadata(**overrides) -> dict[str, object]:
    """A complete, valid metadata dict (values as Python objects)."""
    meta: dict[str, object] = {
        "model_name": "test-blue-sigmoid",
        "model_version": "0.0.1",
        "bands": list(contract.DEFAULT_BANDS),
        "input_kind": "reflectance",
        "tile_size": TILE,
        "recommended_overlap": 32,
        "threshold": 0.5,
        "resolution_m": 10,
        "classes": {"0": "clear", "1": "cloud"},
        "training": {"data": "none: a hand-written function for tests", "git_sha": "", "date": ""},
        "metrics": {},
    }
    meta.update(overrides)
    return meta


def sigmoid_probability(reflectance_channel: np.ndarray, k: float, centre: float) -> np.ndarray:
    """The NumPy twin of :func:`write_pixel_model`'s graph."""
    return (1.0 / (1.0 + np.exp(-k * (reflectance_channel.astype(np.float64) - centre)))).astype(
        np.float32
    )


def write_pixel_model(
    path,
    k: float = 40.0,
    centre: float = 0.2,
    channel: int = BLUE_CHANNEL,
    threshold: float = 0.5,
    tile: int = TILE,
    meta: dict | None = None,
    drop_keys: tuple[str, ...] = (),
    input_name: str = contract.INPUT_NAME,
    prob_name: str = contract.PROBABILITY_OUTPUT,
    channels: int = contract.N_CHANNELS,
    sigmoid: bool = True,
    raw_meta: dict[str, str] | None = None,
) -> str:
    """Write a per-pixel ONNX cloud model; arguments let tests break the contract on purpose.

    ``sigmoid=False`` leaves the activation out: the 'probability' output is then the logit
    ``k * (reflectance[channel] - centre)``, as from a model exported without its sigmoid.
    ``raw_meta`` stores metadata values as given, not JSON-encoded (e.g. ``ten metres``).
    """
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", channels, tile, tile])
    prob = helper.make_tensor_value_info(prob_name, TensorProto.FLOAT, ["N", tile, tile])
    mask = helper.make_tensor_value_info(contract.MASK_OUTPUT, TensorProto.UINT8, ["N", tile, tile])
    inits = [
        helper.make_tensor("channel", TensorProto.INT64, [], [channel]),
        helper.make_tensor("centre", TensorProto.FLOAT, [], [centre]),
        helper.make_tensor("k", TensorProto.FLOAT, [], [k]),
        helper.make_tensor("threshold", TensorProto.FLOAT, [], [threshold]),
    ]
    nodes = [
        helper.make_node("Gather", [input_name, "channel"], ["band"], axis=1),
        helper.make_node("Sub", ["band", "centre"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "k"], ["logit"]),
        helper.make_node("Sigmoid" if sigmoid else "Identity", ["logit"], [prob_name]),
        helper.make_node("GreaterOrEqual", [prob_name, "threshold"], ["is_cloud"]),
        helper.make_node("Cast", ["is_cloud"], [contract.MASK_OUTPUT], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(nodes, "pixel_model", [x], [prob, mask], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    values = metadata(threshold=threshold, tile_size=tile, **(meta or {}))
    texts = {key: json.dumps(value) for key, value in values.items()} | (raw_meta or {})
    for key, text in texts.items():
        if key not in drop_keys:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, text
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


#: The second model of the ensemble tests: ``sigmoid(25 * (red - 0.15))``, threshold 0.3.
RED_MODEL = {"k": 25.0, "centre": 0.15, "channel": contract.DEFAULT_BANDS.index("B04")}


def write_red_model(path, **meta) -> str:
    """A per-pixel model on the red band (:data:`RED_MODEL`, threshold 0.3), named
    ``test-red-sigmoid`` unless ``meta`` says otherwise: an ensemble partner for the blue one."""
    return write_pixel_model(
        path, threshold=0.3, meta={"model_name": "test-red-sigmoid", **meta}, **RED_MODEL
    )


def write_constant_model(path, value: float, tile: int = TILE, meta: dict | None = None) -> str:
    """Write a contract-conforming ONNX model whose 'probability' is ``value`` everywhere
    (NaN, ±inf, a logit, a negative number...): a hostile model with a known output."""
    x = helper.make_tensor_value_info(
        contract.INPUT_NAME, TensorProto.FLOAT, ["N", contract.N_CHANNELS, tile, tile]
    )
    prob = helper.make_tensor_value_info(
        contract.PROBABILITY_OUTPUT, TensorProto.FLOAT, ["N", tile, tile]
    )
    mask = helper.make_tensor_value_info(contract.MASK_OUTPUT, TensorProto.UINT8, ["N", tile, tile])
    inits = [
        helper.make_tensor("channel", TensorProto.INT64, [], [0]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("value", TensorProto.FLOAT, [], [value]),
        helper.make_tensor("threshold", TensorProto.FLOAT, [], [0.5]),
    ]
    nodes = [  # band * 0 + value keeps the batch's shape (input reflectance is finite)
        helper.make_node("Gather", [contract.INPUT_NAME, "channel"], ["band"], axis=1),
        helper.make_node("Mul", ["band", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "value"], [contract.PROBABILITY_OUTPUT]),
        helper.make_node("GreaterOrEqual", [contract.PROBABILITY_OUTPUT, "threshold"], ["c"]),
        helper.make_node("Cast", ["c"], [contract.MASK_OUTPUT], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(nodes, "constant_model", [x], [prob, mask], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, item in metadata(tile_size=tile, model_name="test-constant", **(meta or {})).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(item)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def smooth_noise(height: int, width: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Band-limited noise in 0..1 (features about ``scale`` pixels across)."""
    noise = rng.standard_normal((height, width))
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    spectrum = np.fft.fft2(noise) * np.exp(-((fy**2 + fx**2) * (scale**2)))
    field = np.real(np.fft.ifft2(spectrum))
    field -= field.min()
    return field / max(field.max(), 1e-12)


def sample_scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A Sentinel-2-like uint16 DN stack ``4 x H x W`` in the order B02, B03, B04, B08.

    Vegetated land (dark visible, bright NIR) with fields, a river, and smooth bright clouds
    (flat white spectrum) of varying thickness.
    """
    rng = np.random.default_rng(seed)
    land = smooth_noise(height, width, 25.0, rng)
    fields = (smooth_noise(height, width, 8.0, rng) > 0.5).astype(np.float64)
    yy, xx = np.mgrid[0:height, 0:width]
    river = np.abs(yy - height * (0.5 + 0.2 * np.sin(xx / max(width, 1) * 6.0))) < 6
    base = {  # reflectance of land per band (B02, B03, B04, B08)
        0: 0.03 + 0.04 * land + 0.02 * fields,
        1: 0.05 + 0.05 * land + 0.03 * fields,
        2: 0.04 + 0.07 * land + 0.04 * fields,
        3: 0.25 + 0.15 * land - 0.05 * fields,
    }
    water = {0: 0.05, 1: 0.04, 2: 0.02, 3: 0.01}
    cloud_field = smooth_noise(height, width, 40.0, rng)
    opacity = np.clip((cloud_field - 0.55) / 0.2, 0.0, 1.0)
    cloud_refl = {0: 0.55, 1: 0.53, 2: 0.52, 3: 0.55}
    out = np.empty((4, height, width), dtype=np.uint16)
    for b in range(4):
        surface = np.where(river, water[b], base[b])
        refl = (1 - opacity) * surface + opacity * cloud_refl[b]
        refl += rng.normal(0.0, 0.003, size=refl.shape)
        out[b] = np.clip(np.round(refl * 10000), 1, 65535).astype(np.uint16)
    return out


def write_geotiff(
    path,
    array: np.ndarray,
    geotransform=(500000.0, 10.0, 0.0, 5000000.0, 0.0, -10.0),
    epsg: int | None = 32633,
    nodata: float | None = None,
) -> str:
    """Write a ``bands x H x W`` array as a GeoTIFF with GDAL (the real on-disk format)."""
    from osgeo import gdal, osr

    gdal.UseExceptions()
    dtype = {
        np.dtype("uint8"): gdal.GDT_Byte,
        np.dtype("uint16"): gdal.GDT_UInt16,
        np.dtype("int16"): gdal.GDT_Int16,
        np.dtype("int32"): gdal.GDT_Int32,
        np.dtype("float32"): gdal.GDT_Float32,
        np.dtype("float64"): gdal.GDT_Float64,
        np.dtype("complex64"): gdal.GDT_CFloat32,
    }[array.dtype]
    bands, height, width = array.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, dtype)
    if geotransform is not None:
        ds.SetGeoTransform(geotransform)
    if epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg)
        ds.SetProjection(srs.ExportToWkt())
    for i in range(bands):
        band = ds.GetRasterBand(i + 1)
        if nodata is not None:
            band.SetNoDataValue(nodata)
        band.WriteArray(array[i])
    ds = None
    return str(path)
