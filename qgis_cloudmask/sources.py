"""Open what users download: plain rasters and Sentinel-2 products (GDAL only, no QGIS).

Accepted inputs:

- anything GDAL opens as a raster (GeoTIFF, JP2, VRT, ``/vsizip/...``);
- a Sentinel-2 product: the ``.SAFE`` folder, its ``.zip`` (whatever the zip is called), the
  product metadata ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``, or a GDAL subdataset string such as
  ``SENTINEL2_L2A:/path/MTD_MSIL2A.xml:10m:EPSG_32633`` (what QGIS puts in a layer's source).
  Products are read through GDAL's SENTINEL2 driver, 10 m subdataset (B4, B3, B2, B8), on its
  10 m grid and CRS, with the product's nodata value (0) honoured.

Besides the dataset, a :class:`Source` carries what the raster says about itself: texts that may
name each band (descriptions, metadata, source file names) and the radiometric facts
(:class:`radiometry.Facts`) that the pipeline decides on.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from osgeo import gdal

from qgis_cloudmask.core import radiometry, sentinel2
from qgis_cloudmask.raster_io import RasterError, RasterInfo, describe, open_dataset

gdal.UseExceptions()

PRODUCT_XML_NAMES = ("MTD_MSIL1C.xml", "MTD_MSIL2A.xml")
_SUBDATASET = re.compile(r"^SENTINEL2_L(1C|2A):(.+):(10m|20m|60m|TCI):(EPSG_\d+)$", re.I)
#: Most pixels read to decide the radiometry from the data (a decimated first pass).
SAMPLE_PIXELS = 1_000_000


@dataclass
class Source:
    """An opened input: the GDAL dataset and what it says about its bands and radiometry."""

    given: str  # what the user gave
    opened: str  # what GDAL opened (a subdataset string for products)
    dataset: gdal.Dataset
    info: RasterInfo
    kind: str  # "raster" or e.g. "Sentinel-2 L2A product"
    band_labels: list[list[str]] = field(default_factory=list)
    product: dict[str, str] = field(default_factory=dict)  # level, baseline, name ...
    metadata: dict[str, str] = field(default_factory=dict)  # the dataset's default domain

    def describe(self) -> str:
        if self.kind == "raster":
            return f"raster '{self.given}'"
        bits = ", ".join(f"{k} {v}" for k, v in self.product.items() if k != "name")
        return f"{self.kind} '{self.product.get('name', self.given)}' ({bits}), 10 m bands"


def is_product_reference(path: str) -> bool:
    """Whether ``path`` names a Sentinel-2 product form this module resolves itself."""
    return bool(_SUBDATASET.match(path.strip())) or _product_xml(path) is not None


def _xml_in_zip(path: str) -> str | None:
    """The ``/vsizip/`` path of the product metadata inside a product zip, if any."""
    root = f"/vsizip/{os.path.abspath(path)}"
    try:
        entries = gdal.ReadDirRecursive(root) or []
    except RuntimeError:
        return None
    found = sorted(e for e in entries if Path(e).name in PRODUCT_XML_NAMES and e.count("/") <= 1)
    return f"{root}/{found[0]}" if found else None


def _product_xml(path: str) -> str | None:
    """The product metadata XML for a .SAFE folder, a product zip or the XML itself."""
    p = Path(path)
    if p.is_dir():
        for name in PRODUCT_XML_NAMES:
            if (p / name).is_file():
                return str(p / name)
        return None
    if p.name in PRODUCT_XML_NAMES:
        return str(p)
    if p.suffix.lower() == ".zip" and p.is_file():
        return _xml_in_zip(path)
    return None


def _ten_metre_subdataset(xml: str, given: str) -> str:
    ds = open_dataset(xml, f"the Sentinel-2 product metadata '{xml}'")
    subs = ds.GetMetadata("SUBDATASETS") or {}
    names = [v for k, v in sorted(subs.items()) if k.endswith("_NAME")]
    ten = [n for n in names if ":10m:" in n]
    if not ten:
        raise RasterError(
            f"The Sentinel-2 product '{given}' has no 10 m subdataset (B02, B03, B04, B08) "
            f"that GDAL can read; it lists: {', '.join(names) or 'nothing'}."
        )
    if len(ten) > 1:
        raise RasterError(
            f"The Sentinel-2 product '{given}' covers several UTM zones; give one of its 10 m "
            f"subdatasets as the input: {'; '.join(ten)}."
        )
    return ten[0]


def _check_subdataset(name: str) -> None:
    m = _SUBDATASET.match(name.strip())
    if m and m.group(3).lower() != "10m":
        ten = f"SENTINEL2_L{m.group(1)}:{m.group(2)}:10m:{m.group(4)}"
        raise RasterError(
            f"The input '{name}' is the {m.group(3)} subdataset of a Sentinel-2 product; the "
            f"cloud model needs B02, B03, B04 and B08 at 10 m. Use the 10 m subdataset: '{ten}'."
        )


def open_source(path: str) -> Source:
    """Open a plain raster or a Sentinel-2 product (see the module docstring)."""
    given = str(path).strip()
    if not given:
        raise RasterError("No input raster was given.")
    kind = "raster"
    opened = given
    if _SUBDATASET.match(given):
        _check_subdataset(given)
        kind = "product"
    else:
        xml = _product_xml(given)
        if xml is not None:
            opened = _ten_metre_subdataset(xml, given)
            kind = "product"
        elif os.path.isdir(given):
            raise RasterError(
                f"The input '{given}' is a folder, but neither a raster nor a Sentinel-2 .SAFE "
                f"product (no {' or '.join(PRODUCT_XML_NAMES)} inside)."
            )
        elif not given.startswith("/vsi") and not os.path.exists(given):
            raise RasterError(f"The input '{given}' does not exist.")
    ds = open_dataset(opened, f"'{opened}'")
    if ds.RasterCount == 0:
        subs = [v for k, v in sorted((ds.GetMetadata("SUBDATASETS") or {}).items()) if "NAME" in k]
        if subs:
            raise RasterError(
                f"'{given}' is a container of {len(subs)} subdatasets, not a raster; give one of "
                f"them as the input: {'; '.join(subs[:6])}{' ...' if len(subs) > 6 else ''}."
            )
        raise RasterError(f"'{given}' holds no raster band.")
    info = describe(ds, opened)
    meta = ds.GetMetadata() or {}
    product: dict[str, str] = {}
    if kind == "product":
        level = "L1C" if opened.upper().startswith("SENTINEL2_L1C") else "L2A"
        kind = f"Sentinel-2 {level} product"
        product = {"level": level}
        if meta.get("PROCESSING_BASELINE"):
            product["baseline"] = meta["PROCESSING_BASELINE"]
        uri = meta.get("PRODUCT_URI", "")
        product["name"] = uri[:-5] if uri.upper().endswith(".SAFE") else (uri or given)
    # a product's fill value, also kept by gdal_translate in the GeoTIFF's metadata
    special = meta.get("SPECIAL_VALUE_NODATA")
    if special is not None and all(v is None for v in info.nodata):
        try:
            info = info.with_nodata(float(special))
        except ValueError:
            pass
    vrt_files = _vrt_source_files(ds)
    labels = [
        _band_labels(ds.GetRasterBand(i + 1)) + vrt_files.get(i + 1, [])
        for i in range(ds.RasterCount)
    ]
    return Source(given, opened, ds, info, kind, labels, product, meta)


def _band_labels(band: gdal.Band) -> list[str]:
    """Texts that may name a band: its description and common metadata items."""
    texts = [band.GetDescription() or ""]
    meta = band.GetMetadata() or {}
    for key in ("BANDNAME", "band_name", "NAME", "DESCRIPTION"):
        if meta.get(key):
            texts.append(meta[key])
    return [t for t in texts if t]


def _vrt_source_files(ds: gdal.Dataset) -> dict[int, list[str]]:
    """Band -> file names of its sources, for a VRT file (``gdalbuildvrt -separate`` stacks
    of ``..._B04_10m.jp2`` files). Read from the VRT's XML: the ``vrt_sources`` metadata domain
    crashes GDAL 3.6 on some virtual datasets (the SENTINEL2 driver's)."""
    if ds.GetDriver().ShortName != "VRT":
        return {}
    xml = (ds.GetMetadata("xml:VRT") or [""])[0]
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    files: dict[int, list[str]] = {}
    for band in root.iter("VRTRasterBand"):
        try:
            n = int(band.get("band", "0"))
        except ValueError:
            continue
        for src in band.iter("SourceFilename"):
            if src.text:
                files.setdefault(n, []).append(os.path.basename(src.text.strip()))
    return files


#: Columns (px) per decimated read of the radiometry sample.
SAMPLE_CHUNK = 4096


def read_sample(source: Source, bands: list[int], max_pixels: int = SAMPLE_PIXELS):
    """A decimated read of ``bands`` (nearest neighbour, at most ``max_pixels``):
    ``(values bands x h x w, valid h x w)`` for deciding the radiometry from the data.

    Any raster but a GeoTIFF without overviews (JPEG 2000 resolution levels, a product's VRT, a
    pyramid): GDAL's own decimated read, which uses the overviews. A GeoTIFF without: GDAL would
    decode every block once per band (4 bands: 11 s instead of 3 s on a DEFLATE-tiled
    10980 x 10980 scene), so the sampled rows are read at full resolution and the sampled
    columns picked here: the same pixels as GDAL's nearest neighbour
    (``floor((i + 0.5) * size / n)``), every block decoded once.
    """
    ds, info = source.dataset, source.info
    step = max(1.0, float(np.sqrt(info.width * info.height / max_pixels)))
    w = max(1, int(info.width / step))
    h = max(1, int(info.height / step))
    # in column chunks of whole blocks: one decimated read across a very wide raster decodes
    # each block of a block row again for every sampled row once the row outgrows the cache
    first = ds.GetRasterBand(bands[0])
    block_w = first.GetBlockSize()[0]
    chunk = max(block_w, SAMPLE_CHUNK // block_w * block_w)
    # GeoTIFF only: row-by-row reads of a product's VRT of JPEG 2000 files crashed qgis_process
    # (SIGSEGV), and those have resolution levels for GDAL's decimated read anyway
    driver = ds.GetDriver().ShortName if ds.GetDriver() is not None else ""
    decimate = driver != "GTiff" or first.GetOverviewCount() > 0
    ys = ((np.arange(h) + 0.5) * info.height / h).astype(np.int64)
    xs = ((np.arange(w) + 0.5) * info.width / w).astype(np.int64)
    parts = []
    try:
        for x0 in range(0, info.width, chunk):
            x1 = min(x0 + chunk, info.width)
            if decimate:
                j0, j1 = round(x0 * w / info.width), round(x1 * w / info.width)
                if j1 <= j0:
                    continue
                part = ds.ReadAsArray(
                    x0,
                    0,
                    x1 - x0,
                    info.height,
                    buf_xsize=j1 - j0,
                    buf_ysize=h,
                    band_list=bands,
                    resample_alg=gdal.GRIORA_NearestNeighbour,
                )
                parts.append(np.asarray(part).reshape(len(bands), h, j1 - j0))
                continue
            cols = xs[(xs >= x0) & (xs < x1)] - x0
            if not len(cols):
                continue
            part = None
            for i, y in enumerate(ys):
                row = ds.ReadAsArray(x0, int(y), x1 - x0, 1, band_list=bands)
                row = np.asarray(row).reshape(len(bands), x1 - x0)[:, cols]
                if part is None:
                    part = np.empty((len(bands), h, len(cols)), row.dtype)
                part[:, i] = row
            parts.append(part)
    except RuntimeError as exc:
        raise RasterError(
            f"Reading '{source.given}' failed: {exc}. The file may be truncated or damaged: "
            "download or export it again."
        ) from exc
    arr = np.concatenate(parts, axis=2)
    valid = radiometry.valid_pixels(arr, [info.nodata[b - 1] for b in bands])
    return arr, valid


def radiometry_facts(
    source: Source, bands: list[int], channel_names, sample=None
) -> radiometry.Facts:
    """Everything ``source`` says about its radiometry, for the ``bands`` fed to the model
    (in the model's channel order, named ``channel_names``). ``sample``: what
    :func:`read_sample` returned for these bands (read here when not given)."""
    ds, meta = source.dataset, source.metadata
    values, valid = read_sample(source, bands) if sample is None else sample
    sample = radiometry.DataSample.from_pixels(values, valid)
    declared = []
    for b in bands:
        band = ds.GetRasterBand(b)
        scale, offset = band.GetScale(), band.GetOffset()
        scale = 1.0 if scale is None else float(scale)
        offset = 0.0 if offset is None else float(offset)
        declared.append(None if (scale, offset) == (1.0, 0.0) else (scale, offset))
    names = tuple(channel_names)
    quant = meta.get("QUANTIFICATION_VALUE") or meta.get("BOA_QUANTIFICATION_VALUE")
    try:
        quantification = float(quant) if quant else None
    except ValueError:
        quantification = None
    baseline = sentinel2.parse_baseline(meta.get("PROCESSING_BASELINE"))
    baseline_source = "raster metadata PROCESSING_BASELINE" if baseline else ""
    product_offsets = None
    if source.kind != "raster":
        xml = (ds.GetMetadata("xml:SENTINEL2") or [""])[0]
        product_offsets = sentinel2.product_offsets(xml)
        baseline_source = "product metadata"
    date = None
    date_source = ""
    if baseline is None or product_offsets is None:
        for text in _name_texts(source):
            facts = sentinel2.product_name_facts(text)
            if baseline is None and facts.get("baseline"):
                baseline = sentinel2.parse_baseline(facts["baseline"])
                baseline_source = f"file name '{facts['name']}'"
            if date is None and facts.get("date"):
                date, date_source = facts["date"], f"file name '{facts['name']}'"
    return radiometry.Facts(
        is_float=all(source.info.is_float(b) for b in bands),
        channel_names=names,
        declared=tuple(declared),
        product_offsets=product_offsets,
        quantification=quantification,
        baseline=baseline,
        baseline_source=baseline_source,
        date=date,
        date_source=date_source,
        sample=sample,
    )


def _name_texts(source: Source) -> list[str]:
    """File names and metadata values that may carry a product name or an acquisition date."""
    meta = source.metadata
    texts = [os.path.basename(source.given), source.given]
    texts += [meta.get(k, "") for k in ("PRODUCT_URI", "PRODUCT_ID", "product_id", "DATATAKE")]
    for labels in source.band_labels:
        texts += labels
    return [t for t in texts if t]
