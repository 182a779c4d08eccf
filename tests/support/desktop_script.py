"""Runs INSIDE the QGIS desktop (``qgis --code desktop_script.py``), started by
``tests/support/screenshots.py``: loads a scene, runs ``cloudmask:detectclouds`` the way a user
gets its outputs (``processing.runAndLoadResults``, so the plugin's layer post-processors style
them), grabs screenshots of the canvas, the main window and the algorithm dialog, writes a JSON
report of what the desktop shows, and quits QGIS.

QGIS executes this file with ``exec`` in its console namespace (no ``__file__``, no arguments):
the settings come from the JSON file named by ``$CLOUDMASK_DESKTOP_CONFIG``. Every step runs on
the GUI thread; waiting (rendering, the dialog's background run) spins nested event loops. Any
error is written to the report and QGIS exits with a non-zero code, so the runner never waits on
a Python error dialog.
"""

from __future__ import annotations

import json
import os
import time
import traceback

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsContrastEnhancement,
    QgsMultiBandColorRenderer,
    QgsProject,
    QgsRasterLayer,
)
from qgis.gui import QgsCollapsibleGroupBoxBasic
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QEventLoop, Qt, QTimer
from qgis.PyQt.QtGui import QImage
from qgis.PyQt.QtWidgets import QDockWidget, QGroupBox, QLabel, QTextEdit
from qgis.utils import iface

CONFIG: dict = {}
REPORT: dict = {"ok": False, "steps": [], "messages": [], "screenshots": {}}
_KEEP: list = []  # Python objects (dialog, slots) that must outlive the step that made them


def _log_message(message, tag, level) -> None:
    if level >= Qgis.Warning:
        REPORT["messages"].append({"tag": tag, "level": int(level), "text": message})


def step(name: str) -> None:
    REPORT["steps"].append({"step": name, "t": round(time.monotonic() - START, 2)})


def pump(ms: int) -> None:
    """Let Qt process events (paint, layout, queued signals) for ``ms`` milliseconds."""
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec_()


def wait_for(predicate, timeout_ms: int, poll_ms: int = 100) -> bool:
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        if predicate():
            return True
        pump(poll_ms)
    return predicate()


def render(canvas) -> None:
    """Redraw the canvas and return when the map is fully drawn (not a preview)."""
    done = []
    slot = lambda: done.append(True)  # noqa: E731
    canvas.mapCanvasRefreshed.connect(slot)
    canvas.refreshAllLayers()
    wait_for(lambda: bool(done), 30000)
    canvas.mapCanvasRefreshed.disconnect(slot)
    canvas.waitWhileRendering()
    pump(300)


def top_level_windows() -> list[str]:
    return [
        f"{type(w).__name__}: {w.windowTitle()}"
        for w in QgsApplication.topLevelWidgets()
        if w.isVisible() and w.isWindow()
    ]


def save(image: QImage, key: str, name: str) -> str:
    """Lossless PNG (the runner gives large ones a palette afterwards)."""
    path = os.path.join(CONFIG["out"], name)
    if not image.save(path, "PNG"):
        raise RuntimeError(f"could not write {path}")
    REPORT["screenshots"][key] = {"file": name, "width": image.width(), "height": image.height()}
    return path


def save_canvas(canvas, key: str, name: str, shows: list[str]) -> None:
    render(canvas)
    save(canvas.grab().toImage(), key, name)
    extent = canvas.mapSettings().visibleExtent()
    size = canvas.mapSettings().outputSize()
    REPORT["screenshots"][key].update(
        shows=shows,
        extent=[extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()],
        map_units_per_pixel=canvas.mapSettings().mapUnitsPerPixel(),
        # where the map starts in the grabbed widget (inside the canvas frame)
        map_offset=[canvas.viewport().x(), canvas.viewport().y()],
        map_size=[size.width(), size.height()],
    )


def show_only(layers: dict, names: list[str]) -> None:
    root = QgsProject.instance().layerTreeRoot()
    for key, layer in layers.items():
        root.findLayer(layer.id()).setItemVisibilityChecked(key in names)


def load_scene():
    layer = QgsRasterLayer(CONFIG["scene"], CONFIG["scene_name"], "gdal")
    if not layer.isValid():
        raise RuntimeError(f"QGIS could not load {CONFIG['scene']}")
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), *CONFIG["rgb_bands"])
    low, high = CONFIG["stretch"]
    for band, setter in zip(
        CONFIG["rgb_bands"],
        (
            renderer.setRedContrastEnhancement,
            renderer.setGreenContrastEnhancement,
            renderer.setBlueContrastEnhancement,
        ),
    ):
        ce = QgsContrastEnhancement(layer.dataProvider().dataType(band))
        ce.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
        ce.setMinimumValue(low)
        ce.setMaximumValue(high)
        setter(ce)
    layer.setRenderer(renderer)
    QgsProject.instance().addMapLayer(layer)
    return layer


def run_algorithm(scene) -> dict:
    import processing

    params = dict(CONFIG["params"], INPUT=scene)
    before = set(QgsProject.instance().mapLayers())
    results = processing.runAndLoadResults(CONFIG["algorithm"], params)
    loaded = [
        QgsProject.instance().mapLayer(i)
        for i in QgsProject.instance().mapLayers()
        if i not in before
    ]
    REPORT["results"] = {
        k: v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
        for k, v in (results or {}).items()
    }
    # the layer each output became, found by its file
    by_output = {}
    for key in ("OUTPUT", "OUTPUT_PROBABILITY", "OUTPUT_VECTOR", "OUTPUT_MASKED"):
        path = os.path.realpath(CONFIG["params"][key])
        for layer in loaded:
            if os.path.realpath(layer.source().split("|")[0]) == path:
                by_output[key] = layer
    REPORT["loaded_in_order"] = [layer.name() for layer in loaded]
    missing = {"OUTPUT", "OUTPUT_PROBABILITY", "OUTPUT_VECTOR", "OUTPUT_MASKED"} - set(by_output)
    if missing:
        raise RuntimeError(f"outputs not loaded by the desktop: {sorted(missing)}")
    return by_output


def order_layers(ordered) -> None:
    """Layer tree top to bottom as given."""
    root = QgsProject.instance().layerTreeRoot()
    for layer in reversed(ordered):
        node = root.findLayer(layer.id())
        clone = node.clone()
        root.insertChildNode(0, clone)
        root.removeChildNode(node)


def legend_texts(layer) -> list[str]:
    view = iface.layerTreeView()
    model = view.layerTreeModel()
    node = QgsProject.instance().layerTreeRoot().findLayer(layer.id())
    return [n.data(Qt.DisplayRole) for n in model.layerLegendNodes(node)]


def describe(layer) -> dict:
    node = QgsProject.instance().layerTreeRoot().findLayer(layer.id())
    info = {
        "name": layer.name(),
        "id": layer.id(),
        "source": os.path.basename(layer.source().split("|")[0]),
        "layer_type": "raster" if isinstance(layer, QgsRasterLayer) else "vector",
        "visible": node.itemVisibilityChecked(),
        "legend": legend_texts(layer),
    }
    renderer = layer.renderer()
    info["renderer"] = renderer.type() if renderer is not None else None
    if isinstance(layer, QgsRasterLayer):
        info["opacity"] = renderer.opacity()
        info["resampling_zoomed_in"] = (
            type(layer.resampleFilter().zoomedInResampler()).__name__
            if layer.resampleFilter().zoomedInResampler()
            else "nearest"
        )
        if renderer.type() == "paletted":
            info["classes"] = [
                {
                    "value": c.value,
                    "color": c.color.name(),
                    "alpha": c.color.alpha(),
                    "label": c.label,
                }
                for c in renderer.classes()
            ]
        elif renderer.type() == "singlebandpseudocolor":
            shader_fn = renderer.shader().rasterShaderFunction()
            info["classification"] = [renderer.classificationMin(), renderer.classificationMax()]
            info["ramp"] = [
                {
                    "value": item.value,
                    "color": item.color.name(),
                    "alpha": item.color.alpha(),
                    "label": item.label,
                }
                for item in shader_fn.colorRampItemList()
            ]
        elif renderer.type() == "multibandcolor":
            info["bands"] = [renderer.redBand(), renderer.greenBand(), renderer.blueBand()]
    else:
        symbol = renderer.symbol() if hasattr(renderer, "symbol") else None
        if symbol is not None:
            info["symbol_color"] = symbol.color().name()
            info["symbol_alpha"] = symbol.color().alpha()
        info["feature_count"] = layer.featureCount()
    return info


def arrange_main_window() -> None:
    window = iface.mainWindow()
    width, height = CONFIG["window_size"]
    window.setGeometry(0, 0, width, height)
    for dock in window.findChildren(QDockWidget):
        if dock.objectName() == "Browser" or dock.windowTitle() == "Browser":
            dock.hide()
    layers_dock = next(
        (d for d in window.findChildren(QDockWidget) if d.objectName() == "Layers"), None
    )
    if layers_dock is not None:
        layers_dock.show()
        window.resizeDocks([layers_dock], [CONFIG["layers_panel_width"]], Qt.Horizontal)
    pump(500)


def dialog_widgets(dialog) -> dict:
    """Labels of the parameter form and which sit in a (collapsible) group such as Advanced."""
    groups = []
    for box in dialog.findChildren(QGroupBox):
        kind = box.metaObject().className()
        if kind.startswith("QgsCollapsibleGroupBox"):
            # sip hands it out as a plain QGroupBox
            box = sip.cast(box, QgsCollapsibleGroupBoxBasic)
            box.setCollapsed(False)
        groups.append(
            {
                "title": box.title(),
                "type": kind,
                "collapsed": box.isCollapsed() if hasattr(box, "isCollapsed") else None,
                "labels": [lab.text() for lab in box.findChildren(QLabel) if lab.text()],
            }
        )
    labels = [lab.text() for lab in dialog.findChildren(QLabel) if lab.isVisible() and lab.text()]
    return {"title": dialog.windowTitle(), "labels": labels, "groups": groups}


def grab_dialog(scene) -> None:
    import processing

    params = dict(CONFIG["dialog_params"], INPUT=scene)
    dialog = processing.createAlgorithmDialog(CONFIG["algorithm"], params)
    _KEEP.append(dialog)
    dialog.resize(*CONFIG["dialog_size"])
    dialog.move(0, 0)
    dialog.show()
    pump(800)
    info = dialog_widgets(dialog)  # expands the Advanced group
    pump(800)
    REPORT["dialog"] = info
    save(dialog.grab().toImage(), "dialog", "algorithm_dialog.png")
    # the whole parameter form (taller than the dialog): the scroll area's content widget
    from qgis.PyQt.QtWidgets import QScrollArea

    areas = [a for a in dialog.findChildren(QScrollArea) if a.widget() is not None]
    if areas:
        form = max(areas, key=lambda a: a.widget().height()).widget()
        save(form.grab().toImage(), "dialog_parameters", "algorithm_dialog_parameters.png")
    if CONFIG.get("dialog_run", True):
        finished = []
        dialog.algorithmFinished.connect(lambda ok, res: finished.append(ok))
        dialog.runAlgorithm()
        if not wait_for(lambda: bool(finished), CONFIG["dialog_run_timeout_s"] * 1000):
            raise RuntimeError("the dialog's run did not finish in time")
        pump(1000)
        logs = [t.toPlainText() for t in dialog.findChildren(QTextEdit) if t.toPlainText()]
        REPORT["dialog_run"] = {"ok": finished[0], "log": max(logs, key=len) if logs else ""}
        save(dialog.grab().toImage(), "dialog_log", "algorithm_dialog_log.png")
    dialog.close()
    pump(300)


def main() -> None:
    canvas = iface.mapCanvas()
    step("start")
    REPORT["qgis_version"] = Qgis.QGIS_VERSION
    REPORT["windows_at_start"] = top_level_windows()
    arrange_main_window()
    scene = load_scene()
    canvas.setExtent(scene.extent())
    step("scene loaded")
    out = run_algorithm(scene)
    step("algorithm run and outputs loaded")
    layers = {
        "mask": out["OUTPUT"],
        "polygons": out["OUTPUT_VECTOR"],
        "probability": out["OUTPUT_PROBABILITY"],
        "masked": out["OUTPUT_MASKED"],
        "scene": scene,
    }
    order_layers(list(layers.values()))
    iface.setActiveLayer(layers["mask"])
    pump(300)
    canvas.setExtent(scene.extent())  # after the layer tree settled, or it is undone
    canvas.zoomByFactor(1.02)

    show_only(layers, ["scene"])
    save_canvas(canvas, "scene", "canvas_scene.png", ["scene"])
    show_only(layers, ["mask", "scene"])
    save_canvas(canvas, "mask_overlay", "canvas_mask_overlay.png", ["mask", "scene"])
    show_only(layers, ["probability", "scene"])
    save_canvas(canvas, "probability", "canvas_probability.png", ["probability", "scene"])
    show_only(layers, ["masked"])
    save_canvas(canvas, "masked", "canvas_masked_image.png", ["masked"])
    step("canvas screenshots")

    show_only(layers, ["mask", "scene"])
    iface.layerTreeView().expandAll()
    render(canvas)
    pump(500)
    save(iface.mainWindow().grab().toImage(), "main_window", "main_window.png")
    REPORT["layers"] = {key: describe(layer) for key, layer in layers.items()}
    REPORT["layer_tree_order"] = [
        n.name() for n in QgsProject.instance().layerTreeRoot().findLayers()
    ]
    REPORT["windows_before_dialog"] = top_level_windows()
    step("main window")

    grab_dialog(scene)
    step("dialog")
    REPORT["ok"] = True


def write_report() -> None:
    with open(CONFIG["report"], "w", encoding="utf-8") as f:
        json.dump(REPORT, f, indent=1, default=str)


def finish(code: int) -> None:
    """Close the project first (as File > Exit does): QGIS 3.22 can abort (SIGABRT) when it
    still holds layers while its main window is destroyed. Never raises: an exception here
    would open QGIS's Python error dialog and QGIS would wait on it."""
    try:
        _KEEP.clear()
        QgsProject.instance().setDirty(False)
        iface.newProject(False)
        pump(300)
    except Exception:  # noqa: BLE001
        traceback.print_exc()
    QgsApplication.exit(code)


def run() -> None:
    code = 0
    try:
        main()
    except Exception:  # noqa: BLE001 - everything goes into the report
        REPORT["error"] = traceback.format_exc()
        code = 1
    step("done")
    write_report()
    QTimer.singleShot(200, lambda: finish(code))


START = time.monotonic()
try:  # a failure here would otherwise leave QGIS open until the runner kills it
    with open(os.environ["CLOUDMASK_DESKTOP_CONFIG"], encoding="utf-8") as _f:
        CONFIG.update(json.load(_f))
    QgsApplication.messageLog().messageReceived.connect(_log_message)
    QTimer.singleShot(int(CONFIG.get("start_delay_ms", 1500)), run)
except Exception:  # noqa: BLE001
    traceback.print_exc()
    QTimer.singleShot(0, lambda: QgsApplication.exit(3))
