"""QGIS layer styles (.qml) for the outputs, written as plain XML so every caller (the
algorithm, the command line, batch runs) leaves styled files behind without importing QGIS.

QGIS applies ``<name>.qml`` whenever ``<name>.tif`` is loaded. A GeoTIFF colour table cannot
store transparency, so without the style the clear class would be drawn opaque black.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from qgis_cloudmask.core import classes

QGIS_VERSION = "3.22.0"
#: Reflectance shown black and white in the masked image's true colour (a usual S2 stretch).
TRUE_COLOUR_REFLECTANCE = (0.0, 0.3)


def style_path(raster_path: str) -> str:
    """Where QGIS looks for the default style of ``raster_path``."""
    return os.path.splitext(raster_path)[0] + ".qml"


def _document(renderer: ET.Element, resampling: bool = True) -> str:
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology")
    pipe = ET.SubElement(root, "pipe")
    if resampling:  # categories and probabilities are never smoothed between pixels
        ET.SubElement(
            ET.SubElement(pipe, "provider"),
            "resampling",
            enabled="false",
            zoomedInResamplingMethod="nearestNeighbour",
            zoomedOutResamplingMethod="nearestNeighbour",
            maxOversampling="2",
        )
    pipe.append(renderer)
    ET.SubElement(root, "blendMode").text = "0"
    return _serialise(root)


def _serialise(root: ET.Element) -> str:
    """A .qml document as QGIS writes it (doctype, indented)."""
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(
        root, encoding="unicode"
    )


def _renderer(kind: str, **attrs: str) -> ET.Element:
    return ET.Element(
        "rasterrenderer",
        type=kind,
        band="1",
        opacity="1",
        alphaBand="-1",
        nodataColor="",
        **attrs,
    )


def mask_style(with_buffer: bool) -> str:
    """Paletted: clear and nodata transparent, cloud (and cloud buffer) coloured, named."""
    renderer = _renderer("paletted")
    palette = ET.SubElement(renderer, "colorPalette")
    for c in classes.mask_classes(with_buffer):
        ET.SubElement(
            palette,
            "paletteEntry",
            value=str(c.value),
            color=c.hex_colour,
            alpha=str(c.rgba[3]),
            label=c.label,
        )
    return _document(renderer)


def probability_style() -> str:
    """Pseudocolour 0-1, transparent at low probability, continuous legend 0 ... 1."""
    low, high = classes.PROBABILITY_RAMP[0][0], classes.PROBABILITY_RAMP[-1][0]
    renderer = _renderer(
        "singlebandpseudocolor", classificationMin=repr(low), classificationMax=repr(high)
    )
    shader = ET.SubElement(
        ET.SubElement(renderer, "rastershader"),
        "colorrampshader",
        colorRampType="INTERPOLATED",
        classificationMode="2",  # equal interval
        clip="0",
        minimumValue=repr(low),
        maximumValue=repr(high),
        labelPrecision="2",
    )
    for value, rgba in classes.PROBABILITY_RAMP:
        ET.SubElement(
            shader,
            "item",
            value=repr(value),
            color=classes.hex_colour(rgba),
            alpha=str(rgba[3]),
            label=f"{value:g}",
        )
    ET.SubElement(
        shader,
        "rampLegendSettings",
        useContinuousLegend="1",
        minimumLabel="",
        maximumLabel="",
        prefix="",
        suffix="",
        direction="0",
        orientation="2",
    )
    return _document(renderer)


def image_style(rgb: tuple[int, int, int], ranges: list[tuple[float, float]]) -> str:
    """True colour from the given 1-based bands, each stretched over its (min, max)."""
    red, green, blue = (str(b) for b in rgb)
    renderer = _renderer("multibandcolor", redBand=red, greenBand=green, blueBand=blue)
    for colour, (low, high) in zip(("red", "green", "blue"), ranges):
        enhancement = ET.SubElement(renderer, f"{colour}ContrastEnhancement")
        ET.SubElement(enhancement, "minValue").text = f"{low:g}"
        ET.SubElement(enhancement, "maxValue").text = f"{high:g}"
        ET.SubElement(enhancement, "algorithm").text = "StretchToMinimumMaximum"
    return _document(renderer, resampling=False)


#: Fill opacity (0-255) of the polygons: the image stays visible under them.
POLYGON_FILL_ALPHA = {classes.CLOUD: 90, classes.CLOUD_BUFFER: 50}


def polygon_style(with_buffer: bool) -> str:
    """Categorized on ``class``: translucent fills with opaque outlines in the mask's colours."""
    shown = [c for c in classes.mask_classes(with_buffer) if c.value in POLYGON_FILL_ALPHA]
    root = ET.Element("qgis", version=QGIS_VERSION, styleCategories="Symbology")
    renderer = ET.SubElement(
        root, "renderer-v2", type="categorizedSymbol", attr="class", symbollevels="0"
    )
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, c in enumerate(shown):
        ET.SubElement(
            categories, "category", render="true", value=str(c.value), symbol=str(i), label=c.label
        )
        symbol = ET.SubElement(symbols, "symbol", name=str(i), type="fill", alpha="1")
        layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1"})
        rgb = ",".join(str(v) for v in c.rgba[:3])
        for key, value in (
            ("color", f"{rgb},{POLYGON_FILL_ALPHA[c.value]}"),
            ("outline_color", f"{rgb},255"),
            ("outline_style", "solid"),
            ("outline_width", "0.4"),
            ("outline_width_unit", "MM"),
            ("style", "solid"),
        ):
            ET.SubElement(layer, "prop", k=key, v=value)
    ET.SubElement(root, "layerGeometryType").text = "2"
    return _serialise(root)


def write_style(text: str, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
