"""Minimal but structurally real Sentinel-2 products (SAFE), written by the tests themselves.

GDAL's SENTINEL2 driver reads them as it reads a product from the Copernicus hub: the product
metadata (``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``, compact naming of processing baseline 02.06
on), one granule with its ``MTD_TL.xml`` (tile geocoding) and JPEG 2000 band files (lossless,
written with GDAL's JP2OpenJPEG driver). Only what the driver and the plugin read is filled in:
processing level and baseline, quantification value, the baseline-04.00 offsets, special
values, the granule's image files and its geocoding. Bands: B02, B03, B04, B08 at 10 m and,
so the product has more than one subdataset as real ones do, B05 and B8A at 20 m.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Band name -> (band_id in the product metadata, resolution in metres).
BANDS = {
    "B01": (0, 60),
    "B02": (1, 10),
    "B03": (2, 10),
    "B04": (3, 10),
    "B05": (4, 20),
    "B06": (5, 20),
    "B07": (6, 20),
    "B08": (7, 10),
    "B8A": (8, 20),
    "B09": (9, 60),
    "B10": (10, 60),
    "B11": (11, 20),
    "B12": (12, 20),
}
PHYSICAL = {name: name.replace("B0", "B") for name in BANDS}  # B02 -> B2, B8A stays


@dataclass(frozen=True)
class Product:
    """Paths of a written product."""

    safe: Path  # the .SAFE folder
    xml: Path  # its MTD_MSIL1C.xml / MTD_MSIL2A.xml
    zip: Path | None  # the product zip, when asked for
    level: str
    epsg: int

    def subdataset(self, resolution: str = "10m", zipped: bool = False) -> str:
        """The GDAL subdataset string QGIS puts in a layer's source."""
        level = "L1C" if self.level == "L1C" else "L2A"
        if zipped:
            path = f"/vsizip/{self.zip}/{self.safe.name}/{self.xml.name}"
        else:
            path = str(self.xml)
        return f"SENTINEL2_{level}:{path}:{resolution}:EPSG_{self.epsg}"


def product_name(level: str, baseline: str, date: str, tile: str) -> str:
    kind = "MSIL1C" if level == "L1C" else "MSIL2A"
    n = "N" + baseline.replace(".", "")
    return f"S2B_{kind}_{date}_{n}_R122_{tile}_{date}.SAFE"


def _offsets_xml(level: str, baseline: str) -> str:
    if float(baseline) < 4.0:
        return ""
    tag = "RADIO_ADD_OFFSET" if level == "L1C" else "BOA_ADD_OFFSET"
    items = "\n".join(f'        <{tag} band_id="{i}">-1000</{tag}>' for i in range(len(BANDS)))
    if level == "L1C":
        return f"<Radiometric_Offset_List>\n{items}\n      </Radiometric_Offset_List>"
    return f"<BOA_ADD_OFFSET_VALUES_LIST>\n{items}\n      </BOA_ADD_OFFSET_VALUES_LIST>"


def _quantification_xml(level: str, quantification: int) -> str:
    if level == "L1C":
        return f'<QUANTIFICATION_VALUE unit="none">{quantification}</QUANTIFICATION_VALUE>'
    return (
        "<QUANTIFICATION_VALUES_LIST>\n"
        f'        <BOA_QUANTIFICATION_VALUE unit="none">{quantification}'
        "</BOA_QUANTIFICATION_VALUE>\n"
        '        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>\n'
        '        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>\n'
        "      </QUANTIFICATION_VALUES_LIST>"
    )


def _spectral_xml() -> str:
    rows = []
    for name, (band_id, res) in BANDS.items():
        rows.append(
            f'        <Spectral_Information bandId="{band_id}" physicalBand="{PHYSICAL[name]}">'
            f"<RESOLUTION>{res}</RESOLUTION></Spectral_Information>"
        )
    return (
        "<Spectral_Information_List>\n" + "\n".join(rows) + "\n      </Spectral_Information_List>"
    )


def _product_xml(level, baseline, uri, image_files, quantification) -> str:
    root = "Level-1C_User_Product" if level == "L1C" else "Level-2A_User_Product"
    xsd = "User_Product_Level-1C.xsd" if level == "L1C" else "User_Product_Level-2A.xsd"
    files = "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{root} xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/{xsd}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>2023-08-23T09:55:59.024Z</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>2023-08-23T09:55:59.024Z</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{uri}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-{level[1:]}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI{level[1:]}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>2023-08-23T12:02:34.000000Z</GENERATION_TIME>
      <Query_Options completeSingleTile="true">
        <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
      </Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="DS" granuleIdentifier="TL" imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      {_quantification_xml(level, quantification)}
      {_offsets_xml(level, baseline)}
      {_spectral_xml()}
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:{root}>
"""


def _tile_xml(level, epsg, size10, ulx, uly) -> str:
    root = "Level-1C_Tile_ID" if level == "L1C" else "Level-2A_Tile_ID"
    sizes = "".join(
        f'<Size resolution="{r}"><NROWS>{size10[0] * 10 // r}</NROWS>'
        f"<NCOLS>{size10[1] * 10 // r}</NCOLS></Size>"
        for r in (10, 20, 60)
    )
    geopos = "".join(
        f'<Geoposition resolution="{r}"><ULX>{ulx}</ULX><ULY>{uly}</ULY>'
        f"<XDIM>{r}</XDIM><YDIM>-{r}</YDIM></Geoposition>"
        for r in (10, 20, 60)
    )
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{root} xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_{root}_Metadata.xsd">
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone {epsg % 100}N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{epsg}</HORIZONTAL_CS_CODE>
      {sizes}
      {geopos}
    </Tile_Geocoding>
  </n1:Geometric_Info>
</n1:{root}>
"""


def _write_jp2(path: Path, array: np.ndarray, epsg: int, geotransform) -> None:
    """A lossless JPEG 2000 band file (the format of real granules)."""
    from osgeo import gdal, osr

    gdal.UseExceptions()
    mem = gdal.GetDriverByName("MEM").Create("", array.shape[1], array.shape[0], 1, gdal.GDT_UInt16)
    mem.SetGeoTransform(geotransform)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    mem.SetProjection(srs.ExportToWkt())
    mem.GetRasterBand(1).WriteArray(array)
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(
        str(path), mem, options=["REVERSIBLE=YES", "QUALITY=100", "YCBCR420=NO"]
    )


def write_product(
    folder: Path,
    stack: np.ndarray,
    level: str = "L1C",
    baseline: str = "05.09",
    epsg: int = 32633,
    ulx: float = 399960.0,
    uly: float = 5000040.0,
    tile: str = "T33UUU",
    date: str = "20230823T095559",
    quantification: int = 10000,
    zip_it: bool = False,
) -> Product:
    """Write a product whose 10 m bands hold ``stack`` (``4 x H x W`` uint16 DN as stored, in
    the order B02, B03, B04, B08 - add the +1000 yourself for baseline >= 04.00).

    ``H`` and ``W`` must be multiples of 2 (the 20 m bands are 2x2 means of B08).
    """
    if level not in ("L1C", "L2A"):
        raise ValueError(f"level must be L1C or L2A, got {level!r}")
    stack = np.asarray(stack)
    _, h, w = stack.shape
    if h % 2 or w % 2:
        raise ValueError("height and width must be even (20 m bands are 2 x 2 means)")
    folder = Path(folder)
    safe = folder / product_name(level, baseline, date, tile)
    if safe.exists():
        shutil.rmtree(safe)
    granule_name = f"{level}_{tile}_A033753_{date}"
    img_rel = Path("GRANULE") / granule_name / "IMG_DATA"
    data = dict(zip(("B02", "B03", "B04", "B08"), stack))
    coarse = stack[3].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).astype(np.uint16)
    data["B05"] = data["B8A"] = coarse
    image_files = []
    for name in ("B02", "B03", "B04", "B05", "B08", "B8A"):
        res = BANDS[name][1]
        if level == "L1C":
            rel = img_rel / f"{tile}_{date}_{name}"
        else:
            rel = img_rel / f"R{res}m" / f"{tile}_{date}_{name}_{res}m"
        (safe / rel).parent.mkdir(parents=True, exist_ok=True)
        _write_jp2(safe / f"{rel}.jp2", data[name], epsg, (ulx, res, 0, uly, 0, -res))
        image_files.append(rel.as_posix())
    kind = "MSIL1C" if level == "L1C" else "MSIL2A"
    xml = safe / f"MTD_{kind}.xml"
    xml.write_text(_product_xml(level, baseline, safe.name, image_files, quantification))
    (safe / "GRANULE" / granule_name / "MTD_TL.xml").write_text(
        _tile_xml(level, epsg, (h, w), ulx, uly)
    )
    zip_path = None
    if zip_it:
        zip_path = folder / (safe.name[: -len(".SAFE")] + ".zip")
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
            for f in sorted(safe.rglob("*")):
                zf.write(f, f.relative_to(folder).as_posix())
    return Product(safe=safe, xml=xml, zip=zip_path, level=level, epsg=epsg)
