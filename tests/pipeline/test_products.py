"""Sentinel-2 products through the headless pipeline: every form a user has, L1C and L2A,
before and after processing baseline 04.00. Each mask must equal the mask of the same pixels as
a plain GeoTIFF stack run with the right explicit radiometry."""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal

from qgis_cloudmask import pipeline
from qgis_cloudmask.core.radiometry import Radiometry
from tests.support import s2product, synthetic

gdal.UseExceptions()

H, W = 230, 260  # more than one tile across, even (20 m bands)
GT = (399960.0, 10.0, 0.0, 5000040.0, 0.0, -10.0)


def scene_dn() -> np.ndarray:
    """B02, B03, B04, B08 DN without offset, with a strip of fill (0) and clouds."""
    scene = synthetic.sample_scene(H, W, seed=11)
    scene[:, :, :12] = 0  # the product's nodata, as at a swath edge
    return scene


def read(path):
    ds = gdal.Open(str(path))
    return ds.GetRasterBand(1).ReadAsArray(), ds.GetGeoTransform(), ds.GetSpatialRef()


def run(tmp_path, name, inp, model, **kw):
    req = pipeline.MaskRequest(
        input=str(inp),
        output=str(tmp_path / f"{name}_mask.tif"),
        probability=str(tmp_path / f"{name}_prob.tif"),
        model=str(model),
        **kw,
    )
    return pipeline.run(req), read(req.output), read(req.probability)[0]


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    """One product per (level, baseline) and the equivalent plain stack of each."""
    folder = tmp_path_factory.mktemp("products")
    scene = scene_dn()
    made = {}
    for level in ("L1C", "L2A"):
        for baseline in ("03.01", "05.09"):
            offset = 1000 if baseline >= "04.00" else 0
            stored = np.where(scene > 0, scene + offset, 0).astype(np.uint16)
            sub = folder / f"{level}_{baseline}"
            sub.mkdir()
            product = s2product.write_product(
                sub, stored, level=level, baseline=baseline, zip_it=True, ulx=GT[0], uly=GT[3]
            )
            stack = synthetic.write_geotiff(sub / "stack.tif", stored, geotransform=GT, nodata=0)
            made[level, baseline] = (product, stack)
    return made


FORMS = {
    "safe folder": lambda p: p.safe,
    "zip": lambda p: p.zip,
    "metadata xml": lambda p: p.xml,
    "subdataset": lambda p: p.subdataset(),
    "subdataset in zip": lambda p: p.subdataset(zipped=True),
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("level", "baseline"), [("L1C", "03.01"), ("L1C", "05.09"), ("L2A", "03.01"), ("L2A", "05.09")]
)
def test_product_mask_equals_the_plain_stack_with_the_right_radiometry(
    products, pixel_model, tmp_path, form, level, baseline
):
    product, stack = products[level, baseline]
    right = Radiometry.S2_DN_OFFSET if baseline >= "04.00" else Radiometry.S2_DN
    res, (mask, gt, srs), prob = run(tmp_path, "product", FORMS[form](product), pixel_model)
    _, (ref_mask, ref_gt, ref_srs), ref_prob = run(
        tmp_path,
        "stack",
        stack,
        pixel_model,
        radiometry=right,
        bands={"red": 3, "green": 2, "blue": 1, "nir": 4},
    )
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_array_equal(prob, ref_prob)
    assert gt == ref_gt == GT and srs.IsSame(ref_srs) and srs.GetAuthorityCode(None) == "32633"
    assert (mask[:, :12] == 255).all()  # nodata 0 honoured
    assert res.summary["radiometry"]["source"] == "product metadata"
    assert res.summary["radiometry"]["confident"] is True
    assert res.settings["bands"]["value"] == {"B04": 1, "B03": 2, "B02": 3, "B08": 4}
    assert not res.warnings


def test_the_offset_matters_on_this_scene(products, pixel_model, tmp_path):
    """Guard for the test above: the wrong radiometry gives another mask."""
    product, _ = products["L2A", "05.09"]
    _, (right, *_), _ = run(tmp_path, "a", product.safe, pixel_model)
    _, (wrong, *_), _ = run(tmp_path, "b", product.safe, pixel_model, radiometry=Radiometry.S2_DN)
    assert (right != wrong).mean() > 0.01


def test_explicit_radiometry_contradicting_the_product_is_warned_about(
    products, pixel_model, tmp_path
):
    product, _ = products["L1C", "05.09"]
    res, *_ = run(tmp_path, "x", product.zip, pixel_model, radiometry=Radiometry.S2_DN)
    assert len(res.warnings) == 1 and "product metadata says otherwise" in res.warnings[0]
    assert res.summary["radiometry"]["source"] == "explicit"


def test_a_renamed_product_zip_is_still_found(products, pixel_model, tmp_path):
    product, _ = products["L2A", "05.09"]
    renamed = tmp_path / "download (1).zip"
    renamed.write_bytes(product.zip.read_bytes())
    res, *_ = run(tmp_path, "r", renamed, pixel_model)
    assert res.summary["source"].startswith("SENTINEL2_L2A:/vsizip/")


def test_the_20m_subdataset_is_refused_with_the_10m_one_named(products, pixel_model, tmp_path):
    product, _ = products["L2A", "03.01"]
    with pytest.raises(
        pipeline.PipelineError, match="Use the 10 m subdataset: 'SENTINEL2_L2A:.*:10m:EPSG_32633'"
    ):
        run(tmp_path, "x", product.subdataset("20m"), pixel_model)
    assert not list(tmp_path.iterdir())


def test_a_folder_that_is_no_product_is_refused(pixel_model, tmp_path):
    (tmp_path / "empty.SAFE").mkdir()
    with pytest.raises(pipeline.PipelineError, match="neither a raster nor a Sentinel-2 .SAFE"):
        run(tmp_path, "x", tmp_path / "empty.SAFE", pixel_model)


def test_granule_files_stacked_with_gdalbuildvrt_are_read_by_name_and_date(
    products, pixel_model, tmp_path
):
    """What users build by hand: ``gdalbuildvrt -separate`` over B08, B02, B04, B03 (any order)
    of a 2023 product: bands from the file names, the offset from the acquisition date."""
    product, stack = products["L1C", "05.09"]
    files = {f.name.split("_")[2][:3]: str(f) for f in product.safe.rglob("*_B0[2348].jp2")}
    vrt = tmp_path / "stack.vrt"
    gdal.BuildVRT(str(vrt), [files[b] for b in ("B08", "B02", "B04", "B03")], separate=True)
    res, (mask, *_), _ = run(tmp_path, "v", vrt, pixel_model)
    _, (ref, *_), _ = run(tmp_path, "s", stack, pixel_model, radiometry=Radiometry.S2_DN_OFFSET)
    assert res.settings["bands"]["value"] == {"B04": 3, "B03": 4, "B02": 2, "B08": 1}
    assert res.summary["radiometry"]["source"] == "metadata"
    assert "acquired 2023-08-23" in res.summary["radiometry"]["reason"]
    np.testing.assert_array_equal(mask, ref)


def test_a_geotiff_translated_from_a_product_keeps_its_baseline(products, pixel_model, tmp_path):
    """``gdal_translate SENTINEL2_L2A:...:10m:... out.tif`` copies PROCESSING_BASELINE and the
    band descriptions: both are used, no guess from the data."""
    product, stack = products["L2A", "05.09"]
    tif = tmp_path / "translated.tif"
    gdal.Translate(str(tif), product.subdataset())
    res, (mask, *_), _ = run(tmp_path, "t", tif, pixel_model)
    _, (ref, *_), _ = run(tmp_path, "s", stack, pixel_model, radiometry=Radiometry.S2_DN_OFFSET)
    assert res.summary["radiometry"]["source"] == "metadata"
    assert "05.09" in res.summary["radiometry"]["reason"]
    assert res.settings["bands"]["value"] == {"B04": 1, "B03": 2, "B02": 3, "B08": 4}
    np.testing.assert_array_equal(mask, ref)
