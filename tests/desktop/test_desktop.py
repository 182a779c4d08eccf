"""The real QGIS desktop (``/usr/bin/qgis`` under Xvfb) runs the algorithm as a user does and the
screenshots show what a person would see: the mask over the image with clear transparent, the
styles and legends of every output, the algorithm dialog and its log.

One QGIS start (~15 s) serves every check; see ``tests/support/screenshots.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from osgeo import gdal
from qgis.PyQt.QtGui import QImage

from tests.support import screenshots

pytestmark = pytest.mark.desktop

MAGENTA = (255, 0, 200)  # cloud
PINK = (255, 160, 235)  # cloud buffer


@pytest.fixture(scope="module")
def desktop(tmp_path_factory):
    reason = screenshots.missing()
    if reason:
        pytest.skip(f"cannot start the QGIS desktop: {reason}")
    base = tmp_path_factory.mktemp("desktop")
    run = screenshots.run(base / "screenshots", base / "work", timeout=150)
    assert run.ok, "\n".join([*run.problems, run.log[-4000:]])
    return run


def pixels(path) -> np.ndarray:
    """``H x W x 3`` uint8 RGB of a PNG, read with Qt."""
    image = QImage(str(path))
    assert not image.isNull(), f"{path} is not an image"
    image = image.convertToFormat(QImage.Format_RGB32)
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    bgra = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    return bgra[:, : image.width(), 2::-1].copy()


def pure(mask: np.ndarray) -> np.ndarray:
    """Mask values where the whole 3 x 3 neighbourhood has the same value, else -1 (edges
    between classes are left out of the colour checks)."""
    padded = np.pad(mask.astype(np.int16), 1, mode="edge")
    same = np.ones(mask.shape, bool)
    h, w = mask.shape
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= padded[dy : dy + h, dx : dx + w] == mask
    return np.where(same, mask, -1)


def read(path) -> tuple[np.ndarray, tuple]:
    ds = gdal.Open(str(path))
    return ds.ReadAsArray(), ds.GetGeoTransform()


def under_canvas(shot: dict, classes: np.ndarray, geotransform) -> np.ndarray:
    """For each pixel of the map part of a canvas screenshot, the class of the raster pixel
    under it where its 3 x 3 neighbourhood is of one class, else -1; -2 outside the raster."""
    x0, dx, _, y0, _, dy = geotransform
    values = pure(classes)
    xmin, _, _, ymax = shot["extent"]
    step = shot["map_units_per_pixel"]
    width, height = shot["map_size"]
    col = np.floor((xmin + (np.arange(width) + 0.5) * step - x0) / dx).astype(int)
    row = np.floor((ymax - (np.arange(height) + 0.5) * step - y0) / dy).astype(int)
    rows, cols = values.shape
    inside = ((row >= 0) & (row < rows))[:, None] & ((col >= 0) & (col < cols))[None, :]
    out = values[np.clip(row, 0, rows - 1)[:, None], np.clip(col, 0, cols - 1)[None, :]]
    return np.where(inside, out, -2)


def mask_under_canvas(desktop, shot: dict) -> np.ndarray:
    return under_canvas(shot, *read(desktop.outputs["OUTPUT"]))


def map_part(rgb: np.ndarray, shot: dict) -> np.ndarray:
    (ox, oy), (w, h) = shot["map_offset"], shot["map_size"]
    return rgb[oy : oy + h, ox : ox + w].astype(int)


def close_to(rgb: np.ndarray, colour, tolerance=30) -> np.ndarray:
    return np.all(np.abs(rgb - np.array(colour)) <= tolerance, axis=-1)


def test_every_screenshot_is_a_real_picture(desktop):
    minimum = {"main_window": (1200, 800), "dialog": (700, 700), "dialog_parameters": (400, 600)}
    for key, path in desktop.pngs.items():
        rgb = pixels(path)
        h, w, _ = rgb.shape
        min_w, min_h = minimum.get(key, (800, 600))  # canvas shots
        assert w >= min_w and h >= min_h, f"{path.name} is only {w} x {h}"
        assert path.stat().st_size < screenshots.MAX_PNG_BYTES, path.name
        assert rgb.std() > 20, f"{path.name} is (nearly) uniform"
        packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8)
        assert len(np.unique(packed | rgb[..., 2])) > 30, f"{path.name} has few colours"
    assert set(desktop.pngs) == set(screenshots.PNGS)


def test_mask_overlay_shows_clouds_magenta_and_the_image_where_clear(desktop):
    shots = desktop.report["screenshots"]
    shot = shots["mask_overlay"]
    assert shot["extent"] == shots["scene"]["extent"]
    overlay = map_part(pixels(desktop.pngs["mask_overlay"]), shot)
    scene = map_part(pixels(desktop.pngs["scene"]), shots["scene"])
    mask = mask_under_canvas(desktop, shot)
    cloud, clear, buffer = mask == 1, mask == 0, mask == 2
    assert cloud.sum() > 10000 and clear.sum() > 10000 and buffer.sum() > 100

    assert close_to(overlay[cloud], MAGENTA).mean() > 0.95
    assert close_to(overlay[buffer], PINK).mean() > 0.9
    # clear is transparent: the image shows through unchanged, not black, not tinted
    seen, image = overlay[clear], scene[clear]
    assert np.abs(seen - image).max(axis=-1).mean() < 6
    assert (np.abs(seen - image).max(axis=-1) <= 24).mean() > 0.97
    assert seen.mean() > 40 and (seen.max(axis=-1) > 15).mean() > 0.99
    assert close_to(seen, MAGENTA, 60).mean() < 0.01
    # outside the raster (not on its edge) the canvas is white
    outside = pure((mask == -2).astype(np.uint8)) == 1
    assert close_to(overlay[outside], (255, 255, 255), 5).mean() > 0.99


def test_probability_is_red_over_clouds_and_transparent_where_clear(desktop):
    shots = desktop.report["screenshots"]
    shot = shots["probability"]
    seen = map_part(pixels(desktop.pngs["probability"]), shot)
    scene = map_part(pixels(desktop.pngs["scene"]), shots["scene"])
    prob, geotransform = read(desktop.outputs["OUTPUT_PROBABILITY"])
    under = under_canvas(shot, np.digitize(prob, [0.2, 0.95]), geotransform)
    sure, unlikely = under == 2, under == 0
    assert sure.sum() > 10000 and unlikely.sum() > 10000
    red = seen[sure]
    assert ((red[:, 0] > 150) & (red[:, 1] < 60) & (red[:, 2] < 80)).mean() > 0.95
    assert np.abs(seen[unlikely] - scene[unlikely]).max(axis=-1).mean() < 6


def test_masked_image_has_holes_where_clouds_are(desktop):
    shots = desktop.report["screenshots"]
    shot = shots["masked"]
    seen = map_part(pixels(desktop.pngs["masked"]), shot)
    scene = map_part(pixels(desktop.pngs["scene"]), shots["scene"])
    mask = mask_under_canvas(desktop, shot)
    assert close_to(seen[mask == 1], (255, 255, 255), 5).mean() > 0.95  # nodata: canvas shows
    assert close_to(seen[mask == 2], (255, 255, 255), 5).mean() > 0.9
    clear = mask == 0  # same true colour stretch as the scene (0..0.3 reflectance = 0..3000 DN)
    assert np.abs(seen[clear] - scene[clear]).max(axis=-1).mean() < 12


def test_report_shows_the_styles_and_legends_the_desktop_applied(desktop):
    report = desktop.report
    assert report["windows_at_start"] == ["QMainWindow: Untitled Project — QGIS"]
    layers = report["layers"]
    assert report["layer_tree_order"] == [layers[k]["name"] for k in layers]

    mask = layers["mask"]
    assert mask["renderer"] == "paletted"
    classes = {c["label"]: c for c in mask["classes"]}
    assert list(classes) == ["clear", "cloud", "cloud buffer", "nodata"]
    assert [c["value"] for c in mask["classes"]] == [0, 1, 2, 255]
    assert classes["clear"]["alpha"] == 0 and classes["nodata"]["alpha"] == 0
    assert classes["cloud"]["alpha"] == 255 and classes["cloud"]["color"] == "#ff00c8"
    assert classes["cloud buffer"]["alpha"] == 255
    assert {"clear", "cloud", "cloud buffer", "nodata"} <= set(mask["legend"])

    prob = layers["probability"]
    assert prob["renderer"] == "singlebandpseudocolor"
    assert prob["classification"] == [0.0, 1.0]
    ramp = prob["ramp"]
    assert ramp[0]["value"] == 0.0 and ramp[-1]["value"] == 1.0
    assert ramp[0]["alpha"] == 0 and ramp[-1]["alpha"] == 255
    assert [r["alpha"] for r in ramp] == sorted(r["alpha"] for r in ramp)

    assert layers["scene"]["renderer"] == "multibandcolor"
    assert layers["scene"]["bands"] == [3, 2, 1]
    assert layers["masked"]["layer_type"] == "raster"
    assert layers["polygons"]["layer_type"] == "vector"
    assert layers["polygons"]["feature_count"] > 0
    assert report["results"]["CLOUD_PERCENT"] > 1


def test_dialog_shows_the_parameters_and_runs(desktop):
    dialog = desktop.report["dialog"]
    assert dialog["title"] == "Detect Clouds (Sentinel-2)"
    labels = dialog["labels"]
    assert any(label.startswith("Cloud buffer") for label in labels)
    assert not [label for label in labels if label.count("[optional]") > 1]
    (advanced,) = [g for g in dialog["groups"] if g["title"] == "Advanced Parameters"]
    assert advanced["collapsed"] is False
    assert any(label.startswith("ONNX model") for label in advanced["labels"])
    run = desktop.report["dialog_run"]
    assert run["ok"] is True
    assert "Execution completed" in run["log"]
