"""The catalogue of bad input (issue 8, "no silent wrong answer"): one row per case.

Every case writes its own input (GeoTIFFs, VRTs, damaged files, hostile models) into the work
folder, runs ``cloudmask:detectclouds`` through ``processing.run`` and expects either

- an error (``match``, a regex on the ``QgsProcessingException``) that names the parameter or
  file and says what to do, with no traceback and nothing new left in the work folder; or
- a result (``check``) with exact numbers: the test models compute a known per-pixel function
  (probability = sigmoid(40 * (blue reflectance - 0.2))), so every mask pixel is predicted.

``tests/qgis/test_bad_input.py`` runs the table. Cases of items other engineers fix at the same
time carry ``pending``: they are expected to fail (xfail, not strict) until those fixes land.
"""

from __future__ import annotations

import math
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal

from tests.support import s2product, synthetic

gdal.UseExceptions()

H, W = 250, 260  # smaller than two tiles each way, larger than one: tiles overlap and blend
K, CENTRE = 40.0, 0.2  # the test model (tests/conftest.py pixel_model)


def scene() -> np.ndarray:
    """The catalogue's DN stack (B02, B03, B04, B08): blue DN 2000 (probability exactly 0.5,
    on the threshold) and 3000 (the same under the +1000 offset) are nudged by one, so float
    rounding decides no pixel and every expected count is exact."""
    s = synthetic.sample_scene(H, W, seed=1)
    for edge in (2000, 3000):
        s[0][s[0] == edge] = edge + 1
    return s


SCENE = scene()


# -- what a case expects ----------------------------------------------------------------------


def expected_mask(blue_reflectance: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    prob = synthetic.sigmoid_probability(blue_reflectance, K, CENTRE)
    return (prob >= threshold).astype(np.uint8)


def matches_model(
    blue_reflectance: np.ndarray | None = None,
    threshold: float = 0.5,
    valid: np.ndarray | None = None,
    cloud_at: tuple[int, int] | None = None,
    **numbers,
) -> Callable[[dict, Path], None]:
    """The mask is the per-pixel model's on every valid pixel (255 elsewhere) and the numbers
    are its exact counts; ``cloud_at`` must be cloud; ``numbers`` are further results."""
    blue = SCENE[0] / 10000.0 if blue_reflectance is None else blue_reflectance

    def check(results: dict, workdir: Path) -> None:
        expected = expected_mask(blue, threshold)
        ok = np.ones(expected.shape, bool) if valid is None else valid
        expected[~ok] = 255
        if cloud_at is not None:
            assert expected[cloud_at] == 1, "the case's premise: that pixel is cloud"
        mask = gdal.Open(results["OUTPUT"]).ReadAsArray()
        np.testing.assert_array_equal(mask, expected)
        assert results["CLOUD_PIXELS"] == int((expected == 1).sum())
        assert results["CLEAR_PIXELS"] == int((expected == 0).sum())
        assert results["NODATA_PIXELS"] == int((expected == 255).sum())
        cloud = int((expected == 1).sum())
        assert math.isclose(results["CLOUD_PERCENT"], 100.0 * cloud / int(ok.sum()))
        for key, value in numbers.items():
            assert results[key] == value, f"{key}: {results[key]!r} != {value!r}"

    return check


def all_of(*checks: Callable[[dict, Path], None]) -> Callable[[dict, Path], None]:
    def check(results: dict, workdir: Path) -> None:
        for c in checks:
            c(results, workdir)

    return check


@dataclass(frozen=True)
class Case:
    """One bad input and what must come of it."""

    id: str
    #: (work folder, model folder) -> parameters; writes the inputs. MODEL defaults to the test
    #: model; OUTPUT, OUTPUT_PROBABILITY, OUTPUT_STATS default into the work folder.
    make: Callable[[Path, Path], dict]
    #: regex the error must match (an error case), or None (a result case: see ``check``)
    match: str | None = None
    check: Callable[[dict, Path], None] | None = None
    #: further checks after an error, beyond "the work folder holds nothing new or changed"
    after: Callable[[Path], None] | None = None
    #: "before": cancelled before the run starts; a number: at that progress (percent)
    cancel: str | float | None = None
    #: (monkeypatch) -> None, for what cannot be written as a file (no onnxruntime...)
    patch: Callable | None = None
    #: the item of the issue another engineer fixes at the same time (xfail until then)
    pending: str | None = None


# -- inputs -----------------------------------------------------------------------------------


def tif(name: str = "s2.tif", array: np.ndarray | None = None, **kw) -> Callable[[Path], str]:
    """A writer of the catalogue scene (or ``array``) as a GeoTIFF in the work folder."""
    return lambda w: synthetic.write_geotiff(w / name, SCENE if array is None else array, **kw)


def with_input(writer: Callable[[Path], str], **params) -> Callable[[Path, Path], dict]:
    return lambda w, m: {"INPUT": writer(w), **params}


def s2(**params) -> Callable[[Path, Path], dict]:
    """The catalogue scene as a 4-band UInt16 GeoTIFF (UTM 33N), with ``params``."""
    return with_input(tif(), **params)


def file_with(name: str, content: bytes) -> Callable[[Path], str]:
    def write(w: Path) -> str:
        (w / name).write_bytes(content)
        return str(w / name)

    return write


def truncated(keep: float | int) -> Callable[[Path], str]:
    """The scene GeoTIFF cut after ``keep`` bytes (an int) or that share of its size."""

    def write(w: Path) -> str:
        whole = Path(synthetic.write_geotiff(w / "whole.tif", SCENE)).read_bytes()
        os.remove(w / "whole.tif")
        n = keep if isinstance(keep, int) else int(len(whole) * keep)
        (w / "cut.tif").write_bytes(whole[:n])
        return str(w / "cut.tif")

    return write


def corrupt(w: Path) -> str:
    """A TIFF header followed by noise: a damaged file, not a truncated one."""
    noise = np.random.default_rng(8).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    (w / "noise.tif").write_bytes(b"II*\x00" + noise)
    return str(w / "noise.tif")


def zip_of_text(w: Path) -> str:
    with zipfile.ZipFile(w / "notes.zip", "w") as z:
        z.writestr("readme.txt", "not a Sentinel-2 product")
    return str(w / "notes.zip")


def folder(w: Path, name: str = "rasters") -> str:
    (w / name).mkdir()
    return str(w / name)


def float_with_3e38(w: Path) -> str:
    refl = (SCENE / 10000.0).astype(np.float32)
    refl[:, 100, 120] = 3e38
    return synthetic.write_geotiff(w / "float.tif", refl)


def float_blue_with_3e38() -> np.ndarray:
    blue = (SCENE[0] / 10000.0).astype(np.float32)
    blue[100, 120] = 2.0  # clipped to reflectance 2.0: cloud
    return blue.astype(np.float64)


def vrt_of(types: list[type]) -> Callable[[Path], str]:
    """A VRT stacking one single-band GeoTIFF per band, band ``i`` stored as ``types[i]``
    (Float32 bands hold reflectance, integer bands DN)."""

    def write(w: Path) -> str:
        files = []
        for i, dtype in enumerate(types):
            band = SCENE[i : i + 1]
            band = (band / 10000.0).astype(dtype) if dtype == np.float32 else band.astype(dtype)
            files.append(synthetic.write_geotiff(w / f"layer{i}.tif", band))
        vrt = str(w / "stack.vrt")
        gdal.BuildVRT(vrt, files, separate=True)
        return vrt

    return write


def sparse(w: Path) -> str:
    """900 x 900 px of nodata (0) with the scene's corner in its last rows: tiles to skip."""
    stack = np.zeros((4, 900, 900), np.uint16)
    stack[:, 850:, 850:] = SCENE[:, :50, :50]
    return synthetic.write_geotiff(w / "sparse.tif", stack)


def twenty_metre_subdataset(w: Path) -> str:
    product = s2product.write_product(w / "products", SCENE[:, :100, :100], level="L1C")
    return product.subdataset("20m")


def five_bands(w: Path) -> str:
    stack = np.concatenate([SCENE, SCENE[:1]])
    return synthetic.write_geotiff(w / "five.tif", stack)


def stale_aux(w: Path) -> str:
    """An earlier mask with a stale .aux.xml beside it (nodata 0: it would hide clear pixels)."""
    synthetic.write_geotiff(w / "mask.tif", np.zeros((1, 5, 5), np.uint8))
    (w / "mask.tif.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><NoDataValue>0</NoDataValue>'
        "</PAMRasterBand></PAMDataset>"
    )
    return synthetic.write_geotiff(w / "s2.tif", SCENE)


def nothing_in_proc(w: Path) -> None:
    assert not os.path.exists("/proc/cloudmask-test-mask.tif")


def no_stale_aux(results: dict, workdir: Path) -> None:
    assert not (workdir / "mask.tif.aux.xml").exists()
    ds = gdal.Open(results["OUTPUT"])  # kept: a band outliving its dataset crashes GDAL
    assert ds.GetRasterBand(1).GetNoDataValue() == 255


def no_geotransform(results: dict, workdir: Path) -> None:
    for key in ("OUTPUT", "OUTPUT_PROBABILITY"):
        ds = gdal.Open(results[key])
        assert ds.GetGeoTransform(can_return_null=True) is None, key  # not (0, 1, 0, 0, 0, 1)
    cloud = results["CLOUD_PIXELS"]
    assert results["CLOUD_AREA"] == cloud and "pixel" in results["AREA_UNIT"]


def map_units(results: dict, workdir: Path) -> None:
    assert "map units" in results["AREA_UNIT"] and "pixel" not in results["AREA_UNIT"]
    assert results["CLOUD_AREA"] == results["CLOUD_PIXELS"] * 100.0  # 10 x 10 units a pixel


# -- models -----------------------------------------------------------------------------------


def model(writer: Callable[[Path], str], **params) -> Callable[[Path, Path], dict]:
    """The scene with MODEL written by ``writer(model folder)``."""
    return lambda w, m: {"INPUT": tif()(w), "MODEL": writer(m), **params}


def constant(value: float) -> Callable[[Path], str]:
    return lambda m: synthetic.write_constant_model(m / "hostile.onnx", value)


def pixel(**kw) -> Callable[[Path], str]:
    return lambda m: synthetic.write_pixel_model(m / "odd.onnx", **kw)


def raw_file(name: str, content: bytes) -> Callable[[Path], str]:
    def write(m: Path) -> str:
        (m / name).write_bytes(content)
        return str(m / name)

    return write


def no_bundled_model(monkeypatch) -> None:
    from qgis_cloudmask import pipeline

    monkeypatch.setattr(pipeline, "BUNDLED_MODEL_CANDIDATES", ())


def no_onnxruntime(monkeypatch) -> None:
    # the one way to test it: make `import onnxruntime` fail as on a bare QGIS
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


HALF_TILE = "0 to 112 px for this model's 224-px tiles"
READ_AGAIN = r"download or copy it again"
NOT_RASTER = r"exists, but GDAL cannot read it as a raster"


CASES: list[Case] = [
    # -- files that exist but are no raster GDAL can read (not "not found") -----------------
    Case(
        "input-empty-file",
        with_input(file_with("s2.tif", b"")),
        rf"'.*s2\.tif' {NOT_RASTER}: the file is empty \(0 bytes\).*{READ_AGAIN}",
    ),
    Case(
        "input-text-file",
        with_input(file_with("bands.txt", b"B02 B03 B04 B08\n")),
        rf"bands\.txt' {NOT_RASTER} .*not a raster at all.*choose the raster file",
    ),
    Case(
        "input-json-file",
        with_input(file_with("scene.json", b'{"type": "FeatureCollection", "features": []}')),
        rf"scene\.json' {NOT_RASTER} .*not a raster at all.*choose the raster file",
    ),
    Case(
        "input-truncated-in-its-header",
        with_input(truncated(200)),
        rf"cut\.tif' {NOT_RASTER}.*(truncated|damaged).*{READ_AGAIN}",
    ),
    Case(
        "input-truncated-in-its-pixels",
        with_input(truncated(0.5)),
        rf"cut\.tif' {NOT_RASTER}: its pixels cannot be read.*truncated.*{READ_AGAIN}",
    ),
    Case(
        "input-truncated-in-the-last-block",
        with_input(truncated(0.97)),
        rf"cut\.tif' {NOT_RASTER}: its pixels cannot be read.*truncated.*{READ_AGAIN}",
    ),
    Case(
        "input-damaged-bytes",
        with_input(corrupt),
        rf"noise\.tif' {NOT_RASTER} .*damaged.*{READ_AGAIN}",
    ),
    Case(
        "input-zip-that-is-no-product",
        with_input(zip_of_text),
        rf"notes\.zip' {NOT_RASTER} .*Sentinel-2 product",
    ),
    Case(
        "input-missing-file",
        lambda w, m: {"INPUT": str(w / "no-such-scene.tif")},
        r"'.*no-such-scene\.tif' does not exist.*Check the path",
    ),
    Case(
        "input-folder-that-is-no-product",
        with_input(folder),
        r"'.*rasters' is a folder, but not a Sentinel-2 product.*MTD_MSIL2A\.xml",
    ),
    Case(
        "input-20m-subdataset-of-a-product",
        with_input(twenty_metre_subdataset),
        r"20m subdataset of a Sentinel-2 product.*Use the 10 m subdataset",
    ),
    # -- rasters the model cannot read as Sentinel-2 reflectance ----------------------------
    Case(
        "input-single-band",
        with_input(tif("one.tif", SCENE[:1])),
        r"has 1 band\(s\), but the cloud model needs four",
    ),
    Case(
        "input-five-bands-without-descriptions",
        with_input(five_bands),
        r"has 5 bands and none is described.*RED_BAND, GREEN_BAND, BLUE_BAND, NIR_BAND",
    ),
    Case(
        "input-8-bit",
        with_input(tif("rgb.tif", np.full((4, 60, 60), 90, np.uint8))),
        r"stores Byte values.*16-bit integers \(DN\) or floats",
    ),
    Case(
        "input-complex",
        with_input(tif("c.tif", np.ones((4, 30, 30), np.complex64))),
        "stores CFloat32 values",
    ),
    Case(
        "input-only-zeros",
        with_input(tif("zeros.tif", np.zeros((4, 300, 300), np.uint16))),
        "holds only nodata",
    ),
    Case(
        "input-only-nan",
        with_input(tif("nan.tif", np.full((4, 60, 60), np.nan, np.float32))),
        "holds only nodata",
    ),
    Case(
        "input-only-declared-nodata",
        with_input(tif("nd.tif", np.full((4, 60, 60), 500, np.uint16), nodata=500)),
        "holds only nodata",
    ),
    Case(
        "input-float-with-a-3e38-pixel",
        with_input(float_with_3e38),
        check=matches_model(float_blue_with_3e38(), cloud_at=(100, 120)),
    ),
    Case(
        "input-vrt-mixing-integer-and-float-bands",
        with_input(vrt_of([np.uint16, np.uint16, np.uint16, np.float32])),
        r"mix integer and float.*band 4: Float32",
    ),
    Case(
        "input-vrt-with-an-8-bit-band",
        with_input(vrt_of([np.uint16, np.uint16, np.uint16, np.uint8])),
        r"Band 4 of the input raster stores Byte",
    ),
    Case(
        "input-vrt-mixing-uint16-and-int16",
        with_input(vrt_of([np.uint16, np.int16, np.uint16, np.int16])),
        check=matches_model(),
    ),
    Case(
        "input-without-crs-and-geotransform",
        with_input(tif("raw.tif", geotransform=None, epsg=None)),
        check=all_of(matches_model(), no_geotransform),
    ),
    Case(
        "input-with-geotransform-but-no-crs",
        with_input(tif("nocrs.tif", epsg=None)),
        check=all_of(matches_model(), map_units),
    ),
    Case(
        "rerun-removes-a-stale-aux-xml",
        with_input(stale_aux),
        check=all_of(matches_model(AREA_UNIT="square meters"), no_stale_aux),
    ),
    # -- band parameters ----------------------------------------------------------------------
    Case("band-beyond-the-raster", s2(RED_BAND=7), r"red band is set to 7, .*bands 1 to 4"),
    Case("band-zero", s2(NIR_BAND=0), r"nir band is set to 0, .*bands 1 to 4"),
    Case(
        "band-overflowing-int",
        s2(NIR_BAND=99999999999),
        r"nir band is set to 99999999999, but the input raster has bands 1 to 4",
    ),
    Case(
        "band-overflowing-int-as-text",
        s2(NIR_BAND="99999999999"),
        r"nir band is set to 99999999999, but the input raster has bands 1 to 4",
    ),
    Case("band-negative", s2(RED_BAND=-3), r"red band is set to -3, .*bands 1 to 4"),
    Case(
        "band-not-a-number",
        s2(RED_BAND="abc"),
        r"RED_BAND \(.*\) must be a band number of the input raster.*got 'abc'",
    ),
    Case(
        "band-with-a-fraction",
        s2(GREEN_BAND=2.5),
        r"GREEN_BAND \(.*\) must be a band number of the input raster.*got 2\.5",
    ),
    Case(
        "band-chosen-twice",
        s2(RED_BAND=1, BLUE_BAND=1),
        "same raster band is chosen for more than one",
    ),
    Case(
        "bands-given-as-text",
        s2(RED_BAND="3", GREEN_BAND="2", BLUE_BAND=" 1 ", NIR_BAND=4.0),
        check=matches_model(BANDS_USED="B04=3, B03=2, B02=1, B08=4"),
    ),
    # -- THRESHOLD ----------------------------------------------------------------------------
    Case("threshold-above-1", s2(THRESHOLD=2), r"THRESHOLD \(.*\) .*from 0 to 1, got 2\."),
    Case("threshold-negative", s2(THRESHOLD=-0.1), r"THRESHOLD .*from 0 to 1, got -0\.1\."),
    Case("threshold-nan-text", s2(THRESHOLD="nan"), r"THRESHOLD .*from 0 to 1, got 'nan'"),
    Case("threshold-nan", s2(THRESHOLD=float("nan")), r"THRESHOLD .*from 0 to 1, got nan"),
    Case("threshold-inf", s2(THRESHOLD="inf"), r"THRESHOLD .*from 0 to 1, got 'inf'"),
    Case(
        "threshold-decimal-comma",
        s2(THRESHOLD="0,5"),
        r"THRESHOLD .*got '0,5'\. Write decimals with a point: 0\.5, not 0,5",
    ),
    Case("threshold-words", s2(THRESHOLD="half"), r"THRESHOLD .*from 0 to 1, got 'half'"),
    Case(
        "threshold-as-text",
        s2(THRESHOLD=" 0.3 "),
        check=matches_model(threshold=0.3, THRESHOLD_USED=0.3),
    ),
    # -- BATCH_SIZE, OVERLAP, RADIOMETRY --------------------------------------------------
    Case(
        "batch-zero", s2(BATCH_SIZE=0), r"BATCH_SIZE \(.*\) .*whole number of tiles from 1 to 256"
    ),
    Case("batch-too-big", s2(BATCH_SIZE=1000), r"BATCH_SIZE .*from 1 to 256, got 1000"),
    Case("batch-words", s2(BATCH_SIZE="four"), r"BATCH_SIZE .*from 1 to 256, got 'four'"),
    Case("batch-fraction", s2(BATCH_SIZE=2.5), r"BATCH_SIZE .*whole number .*got 2\.5"),
    Case("overlap-negative", s2(OVERLAP=-1), rf"OVERLAP \(.*\) .*{HALF_TILE}, got -1"),
    Case("overlap-words", s2(OVERLAP="abc"), rf"OVERLAP .*whole number of pixels, {HALF_TILE}"),
    Case("overlap-fraction", s2(OVERLAP=2.5), rf"OVERLAP .*{HALF_TILE}, got 2\.5"),
    Case("overlap-a-whole-tile", s2(OVERLAP=224), rf"overlap must be {HALF_TILE}, got 224"),
    Case("overlap-above-half-a-tile", s2(OVERLAP=150), rf"overlap must be {HALF_TILE}, got 150"),
    Case(
        "overlap-as-text",
        s2(OVERLAP="16"),
        check=matches_model(OVERLAP_USED=16),
    ),
    Case(
        "radiometry-out-of-range",
        s2(RADIOMETRY=7),
        r"RADIOMETRY \(.*\) must be one of 0 = Automatic.*3 = Reflectance.*got 7\.",
    ),
    Case("radiometry-negative", s2(RADIOMETRY=-1), r"RADIOMETRY .*0 = Automatic.*got -1\."),
    Case("radiometry-words", s2(RADIOMETRY="abc"), r"RADIOMETRY .*dn-offset.*got 'abc'"),
    Case(
        "radiometry-by-name",
        s2(RADIOMETRY="dn-offset"),
        check=matches_model((SCENE[0] - 1000.0) / 10000.0, RADIOMETRY_USED="(DN - 1000) / 10000"),
    ),
    # -- post-processing ------------------------------------------------------------------
    Case("buffer-negative", s2(BUFFER=-10), r"BUFFER \(.*\) must be a distance in metres"),
    Case("buffer-words", s2(BUFFER="ten"), r"BUFFER .*metres, 0 or more.*got 'ten'"),
    Case("buffer-nan", s2(BUFFER="nan"), r"BUFFER .*metres, 0 or more.*got 'nan'"),
    Case(
        "buffer-without-crs",
        with_input(tif("nocrs.tif", epsg=None), BUFFER=30),
        r"no coordinate reference.*set the buffer to 0",
    ),
    Case("min-cloud-size-negative", s2(MIN_CLOUD_SIZE=-1), r"MIN_CLOUD_SIZE \(.*\) .*got -1"),
    Case("min-cloud-size-words", s2(MIN_CLOUD_SIZE="abc"), r"MIN_CLOUD_SIZE .*got 'abc'"),
    Case(
        "min-cloud-size-overflowing-int",
        s2(MIN_CLOUD_SIZE=99999999999),
        r"MIN_CLOUD_SIZE .*from 0 to 2147483647 .*got 99999999999",
    ),
    Case(
        "min-cloud-size-larger-than-every-patch",
        s2(MIN_CLOUD_SIZE=H * W),
        # every patch is smaller than the raster: all become clear (threshold 2: no cloud)
        check=matches_model(threshold=2.0, REMOVED_PIXELS=int(expected_mask(SCENE[0] / 1e4).sum())),
    ),
    # -- hostile and broken models ----------------------------------------------------------
    Case(
        "model-returning-nan",
        model(constant(float("nan"))),
        r"'.*hostile\.onnx' returned NaN \(not a number\).*No output was written",
    ),
    Case(
        "model-returning-infinity",
        model(constant(float("inf"))),
        r"'.*hostile\.onnx' returned infinite values.*No output was written",
    ),
    Case(
        "model-returning-logits",
        model(pixel(sigmoid=False)),
        r"'.*odd\.onnx' returned values from -\d.* to \d.*logits.*export the model with a sigmoid",
    ),
    Case(
        "model-returning-a-negative-constant",
        model(constant(-0.5)),
        r"'.*hostile\.onnx' returned values down to -0\.5 .*logits.*No output was written",
    ),
    Case(
        "model-rounding-just-above-1",
        model(constant(1.0 + 5e-7)),
        check=matches_model(threshold=0.0, MODEL_NAME="test-constant 0.0.1"),
    ),
    Case(
        "model-resolution-in-words",
        model(pixel(meta={"resolution_m": "ten metres"})),
        r"odd\.onnx': metadata 'resolution_m' must be a number of metres > 0.*got 'ten metres'",
    ),
    Case(
        "model-classes-as-a-list",
        model(pixel(meta={"classes": ["clear", "cloud"]})),
        r"metadata 'classes' must be a JSON object.*got \['clear', 'cloud'\]",
    ),
    Case(
        "model-tile-size-as-text",
        model(pixel(raw_meta={"tile_size": '"224"'})),
        r"metadata 'tile_size' must be an integer number of pixels >= 16.*got '224'",
    ),
    Case(
        "model-metadata-not-json",
        model(pixel(raw_meta={"threshold": "0,5"})),
        r"metadata 'threshold' must be a probability.*got '0,5', which is not valid JSON",
    ),
    Case(
        "model-missing-a-metadata-key",
        model(pixel(drop_keys=("tile_size",))),
        r"does not follow the qgis_cloudmask model contract.*'tile_size' missing",
    ),
    Case(
        "model-wrong-input-name",
        model(pixel(input_name="x")),
        r"must have exactly one input named 'input'",
    ),
    Case(
        "model-that-is-not-onnx",
        model(raw_file("bad.onnx", b"this is not a model")),
        r"'.*bad\.onnx' is not a usable ONNX model",
    ),
    Case(
        "model-empty-file",
        model(raw_file("empty.onnx", b"")),
        r"'.*empty\.onnx' is not a usable ONNX model",
    ),
    Case(
        "model-missing-file",
        lambda w, m: {"INPUT": tif()(w), "MODEL": str(m / "nope.onnx")},
        r"The model file '.*nope\.onnx' does not exist",
    ),
    Case(
        "model-none-bundled-and-none-given",
        s2(MODEL=None),
        r"No trained cloud model is bundled.*MODEL",
        patch=no_bundled_model,
    ),
    Case(
        "onnxruntime-not-installed",
        s2(),
        r"(?s)onnxruntime' is not installed.*pip install",
        patch=no_onnxruntime,
    ),
    # -- outputs --------------------------------------------------------------------------
    Case(
        "output-folder-missing",
        lambda w, m: {"INPUT": tif()(w), "OUTPUT": str(w / "missing" / "mask.tif")},
        r"Cannot write the cloud mask to .*: the folder .* does not exist",
    ),
    Case(
        "output-folder-unwritable",
        # chmod cannot stop root (CI runs as root); /proc refuses new files for everybody
        lambda w, m: {"INPUT": tif()(w), "OUTPUT": "/proc/cloudmask-test-mask.tif"},
        r"[Cc]annot (create|write)",
        after=nothing_in_proc,
    ),
    Case(
        "stats-folder-missing",
        lambda w, m: {"INPUT": tif()(w), "OUTPUT_STATS": str(w / "no" / "s.json")},
        r"statistics .* does not exist",
    ),
    Case(
        "output-is-the-input",
        lambda w, m: {"INPUT": tif()(w), "OUTPUT": str(w / "s2.tif")},
        r"is the input raster; choose another file",
    ),
    Case(
        "output-is-a-folder",
        lambda w, m: {"INPUT": tif()(w), "OUTPUT": folder(w, "mask.tif")},
        r"Cannot write the cloud mask to '.*mask\.tif': it is a folder",
    ),
    Case(
        "output-not-geotiff",
        lambda w, m: {"INPUT": tif()(w), "OUTPUT": str(w / "mask.png")},
        r"cloud mask is written as GeoTIFF: give a path ending in \.tif",
    ),
    Case(
        "probability-not-geotiff",
        lambda w, m: {"INPUT": tif()(w), "OUTPUT_PROBABILITY": str(w / "p.img")},
        r"cloud probability is written as GeoTIFF",
    ),
    Case(
        "masked-not-geotiff",
        lambda w, m: {"INPUT": tif()(w), "OUTPUT_MASKED": str(w / "masked.jp2")},
        r"masked image is written as GeoTIFF",
    ),
    Case(
        "polygons-not-geopackage",
        lambda w, m: {"INPUT": tif()(w), "OUTPUT_VECTOR": str(w / "clouds.shp")},
        r"cloud polygons are written as GeoPackage: give a path ending in \.gpkg",
    ),
    Case(
        "two-outputs-one-file",
        lambda w, m: {"INPUT": tif()(w), "OUTPUT_PROBABILITY": str(w / "mask.tif")},
        r"Two outputs point to the same file",
    ),
    Case(
        "earlier-output-survives-a-failed-run",
        lambda w, m: {
            "INPUT": tif()(w),
            "RED_BAND": 9,
            "OUTPUT": file_with("mask.tif", b"an earlier result")(w),
        },
        r"red band is set to 9",
    ),
    # -- cancelling -----------------------------------------------------------------------
    Case(
        "cancel-during-inference",
        with_input(tif("big.tif", synthetic.sample_scene(700, 700, seed=2)), BATCH_SIZE=1),
        r"Cancelled by the user: no output was written",
        cancel=10.0,
    ),
    Case(
        "cancel-during-post-processing",
        lambda w, m: {
            "INPUT": tif()(w),
            "MIN_CLOUD_SIZE": 20,
            "BUFFER": 30,
            "OUTPUT_VECTOR": str(w / "clouds.gpkg"),
        },
        r"Cancelled by the user: no output was written",
        cancel=80.0,
    ),
    Case(
        "cancel-on-a-sparse-raster",
        with_input(sparse, BATCH_SIZE=1),
        r"Cancelled by the user: no output was written",
        cancel=1.0,
    ),
    Case(
        "cancel-before-the-run-starts",
        with_input(sparse),
        r"Cancelled by the user: no output was written",
        cancel="before",
    ),
]
