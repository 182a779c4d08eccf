"""``python -m qgis_cloudmask batch``: many scenes, one Dask task each, on the headless pipeline.

Every scene is one :func:`pipeline.run` in a Dask worker process (a ``LocalCluster`` on this
machine, or an existing ``dask.distributed`` cluster by address), so each scene gets exactly
what the QGIS algorithm and ``mask`` give: same outputs, written under temporary names and moved
into place only when the scene succeeded. A failing scene is a row of the summary, not the end
of the batch; a scene whose outputs are complete is skipped (resume after a crash).

Dask is imported lazily: the plugin and ``mask`` work without it.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from qgis_cloudmask import pipeline, raster_io

#: Columns of summary.csv / summary.parquet, in order.
COLUMNS = (
    "name",
    "input",
    "status",
    "error",
    "seconds",
    "cloud_percent",
    "cloud_pixels",
    "clear_pixels",
    "nodata_pixels",
    "buffer_percent",
    "buffer_pixels",
    "cloud_area",
    "area_unit",
    "threshold",
    "overlap",
    "radiometry",
    "model",
    "tta",
    "mask",
    "stats",
    "worker",
)
#: Per-scene outputs the batch can write: option name -> file name suffix.
EXTRA_OUTPUTS = {
    "probability": "_probability.tif",
    "vector": "_clouds.gpkg",
    "masked": "_masked.tif",
}
#: How often (s) the batch looks at its tasks (and at Ctrl-C).
POLL_SECONDS = 0.1
INSTALL_HINT = (
    'The batch runner needs Dask: pip install "dask[distributed]==2026.8.0" "pyarrow==21.0.0" '
    "(the versions this project tests)."
)


class BatchError(Exception):
    """Bad inputs for a batch (usage: exit code 2 on the command line)."""


@dataclass(frozen=True)
class Scene:
    input: str
    name: str


# -- inputs -----------------------------------------------------------------------------------


def expand_inputs(items: Iterable[str]) -> list[str]:
    """Paths, glob patterns and ``@list.txt`` files (one input per line, ``#`` comments, paths
    relative to the list's folder), in the order given, without repeats."""
    out: list[str] = []

    def add(path: str) -> None:
        if path not in out:
            out.append(path)

    for item in items:
        if item.startswith("@"):
            listing = item[1:]
            if not os.path.isfile(listing):
                raise BatchError(f"The input list '{listing}' does not exist.")
            base = os.path.dirname(os.path.abspath(listing))
            with open(listing, encoding="utf-8") as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
            for line in lines:
                for path in expand_inputs(
                    [line if os.path.isabs(line) else os.path.join(base, line)]
                ):
                    add(path)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise BatchError(f"The pattern '{item}' matches no file.")
            for path in matches:
                add(path)
        else:
            add(item)
    return out


def scene_name(path: str) -> str:
    """The name of a scene's outputs: the product name for a Sentinel-2 product (.SAFE folder,
    its .zip, its MTD XML or a SENTINEL2 subdataset), else the file name without extension."""
    text = path.rstrip("/\\")
    if text.upper().startswith("SENTINEL2_"):  # SENTINEL2_L2A:/x/MTD_MSIL2A.xml:10m:EPSG_32633
        parts = text.split(":")
        text = next((p for p in parts if p.lower().endswith(".xml")), parts[-1])
    base = os.path.basename(text)
    if base.upper().startswith("MTD_MSIL") and base.lower().endswith(".xml"):
        base = os.path.basename(os.path.dirname(os.path.abspath(text))) or base
    for suffix in (".zip", ".SAFE", ".safe"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in (".tif", ".tiff", ".jp2", ".vrt", ".img", ".xml") else base


def plan(inputs: Iterable[str]) -> list[Scene]:
    """One scene per input; two inputs with the same output name are refused (they would
    overwrite each other's outputs)."""
    scenes = [Scene(i, scene_name(i)) for i in expand_inputs(inputs)]
    if not scenes:
        raise BatchError("No input was given.")
    by_name: dict[str, list[str]] = {}
    for s in scenes:
        by_name.setdefault(s.name, []).append(s.input)
    clashes = {n: i for n, i in by_name.items() if len(i) > 1}
    if clashes:
        listed = "; ".join(f"'{n}': {', '.join(i)}" for n, i in clashes.items())
        raise BatchError(
            f"Inputs with the same name would write the same outputs ({listed}). Rename them or "
            "run them in separate batches."
        )
    return scenes


def outputs_for(scene: Scene, out_dir: str, extras: Iterable[str] = ()) -> dict[str, str]:
    paths = {
        "output": os.path.join(out_dir, f"{scene.name}_mask.tif"),
        "stats": os.path.join(out_dir, f"{scene.name}_stats.json"),
    }
    for key in extras:
        paths[key] = os.path.join(out_dir, f"{scene.name}{EXTRA_OUTPUTS[key]}")
    return paths


def completed_summary(paths: dict[str, str]) -> dict | None:
    """The statistics of a scene whose outputs are all there from a finished run, else None.
    (The pipeline moves all outputs into place together after the scene succeeded; the stats
    JSON names them, so a run with other outputs does not count as complete.)"""
    if not all(os.path.isfile(p) for p in paths.values()):
        return None
    try:
        with open(paths["stats"], encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    written = summary.get("outputs", {})
    keys = {"output": "mask", "stats": "stats"}
    for key, path in paths.items():
        got = written.get(keys.get(key, key))
        if not got or os.path.abspath(got) != os.path.abspath(path):
            return None
    return summary


# -- one scene (runs in a worker) ------------------------------------------------------------


def row_from_summary(scene: Scene, status: str, summary: dict, seconds: float) -> dict:
    settings = summary.get("settings", {})
    model = summary.get("model", {})
    return {
        "name": scene.name,
        "input": scene.input,
        "status": status,
        "error": "",
        "seconds": round(seconds, 3),
        "cloud_percent": summary.get("cloud_percent"),
        "cloud_pixels": summary.get("cloud_pixels"),
        "clear_pixels": summary.get("clear_pixels"),
        "nodata_pixels": summary.get("nodata_pixels"),
        "buffer_percent": summary.get("buffer_percent"),
        "buffer_pixels": summary.get("buffer_pixels"),
        "cloud_area": summary.get("cloud_area"),
        "area_unit": summary.get("area_unit"),
        "threshold": summary.get("threshold"),
        "overlap": summary.get("overlap"),
        "radiometry": settings.get("radiometry", {}).get("value"),
        "model": f"{model.get('name', '')} {model.get('version', '')}".strip(),
        "tta": summary.get("tta"),
        "mask": summary.get("outputs", {}).get("mask"),
        "stats": summary.get("outputs", {}).get("stats"),
        "worker": "",
    }


def failed_row(scene: Scene, error: str, seconds: float) -> dict:
    row = dict.fromkeys(COLUMNS, None)
    row.update(
        name=scene.name, input=scene.input, status="failed", error=error, seconds=round(seconds, 3)
    )
    return row


def run_scene(scene: Scene, paths: dict[str, str], options: dict) -> dict:
    """Mask one scene with the pipeline (called in a Dask worker); never raises for a scene
    that fails: its row says why."""
    started = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        request = pipeline.MaskRequest(
            input=scene.input,
            output=paths["output"],
            stats=paths["stats"],
            probability=paths.get("probability"),
            vector=paths.get("vector"),
            masked=paths.get("masked"),
            **options,
        )
        result = pipeline.run(request)
    except pipeline.PipelineError as exc:
        row = failed_row(scene, str(exc), time.perf_counter() - started)
    except Exception as exc:  # a bug must not end the batch either; the row says what it was
        row = failed_row(scene, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    else:
        row = row_from_summary(scene, "ok", result.summary, time.perf_counter() - started)
    row["worker"] = worker
    return row


# -- the batch ---------------------------------------------------------------------------------


def default_workers() -> int:
    """Worker processes for this machine: one per two cores (onnxruntime then uses two threads
    each), at least one."""
    return max(1, (os.cpu_count() or 1) // 2)


def _client(workers: int | None, scheduler: str | None, say: Callable[[str], None]):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise BatchError(INSTALL_HINT) from exc
    if scheduler:
        client = Client(scheduler)
        return client, None
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=40,
    )
    return Client(cluster), cluster


def run_batch(
    scenes: list[Scene],
    out_dir: str,
    options: dict,
    extras: Iterable[str] = (),
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] = lambda text: None,
    progress: bool = True,
) -> list[dict]:
    """Mask ``scenes`` into ``out_dir`` (one task each); returns one row per scene, in the
    order of ``scenes``. ``options``: :class:`pipeline.MaskRequest` fields shared by all."""
    os.makedirs(out_dir, exist_ok=True)
    extras = tuple(extras)
    rows: dict[str, dict] = {}
    todo = []
    for scene in scenes:
        paths = outputs_for(scene, out_dir, extras)
        done = None if overwrite else completed_summary(paths)
        if done is not None:
            rows[scene.name] = row_from_summary(scene, "skipped (complete)", done, 0.0)
        else:
            todo.append((scene, paths))
    say(f"{len(scenes)} scene(s): {len(todo)} to mask, {len(scenes) - len(todo)} already complete.")
    if todo:
        workers = workers or default_workers()
        options = dict(options)
        if not scheduler and options.get("threads") is None:
            # workers must not oversubscribe the cores: onnxruntime threads per worker
            options["threads"] = max(1, (os.cpu_count() or 1) // workers)
        client, cluster = _client(workers, scheduler, say)
        futures = []
        stop = _InterruptFlag()
        try:
            say(f"Dask dashboard: {client.dashboard_link}")
            futures = [
                client.submit(run_scene, scene, paths, options, key=f"mask-{i}-{scene.name}")
                for i, (scene, paths) in enumerate(todo)
            ]
            bar = _bar(len(futures), progress)
            pending = list(futures)
            with stop:
                while pending:
                    # short polls, so Ctrl-C (a flag set by the signal handler) is seen at once
                    # whatever Dask's threads are doing
                    if stop.raised:
                        raise KeyboardInterrupt
                    done = [f for f in pending if f.done()]
                    if not done:
                        time.sleep(POLL_SECONDS)
                        continue
                    finished = {id(f) for f in done}
                    pending = [f for f in pending if id(f) not in finished]
                    for future in done:
                        row = future.result()
                        rows[row["name"]] = row
                        if bar is not None:
                            bar.update(1)
                            failed = sum(r["status"] == "failed" for r in rows.values())
                            bar.set_postfix(failed=failed)
            if bar is not None:
                bar.close()
        except KeyboardInterrupt:
            client.cancel(futures, force=True)
            raise
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
            for _scene, paths in todo:  # temporary files of scenes stopped mid-write
                for path in paths.values():
                    raster_io.remove_stale_partials(path)
    return [rows[s.name] for s in scenes]


class _InterruptFlag:
    """While active (in the main thread), SIGINT only sets :attr:`raised`; the batch loop
    checks it between short waits and stops cleanly."""

    def __init__(self) -> None:
        self.raised = False
        self._previous = None

    def __enter__(self) -> _InterruptFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="scenes", file=sys.stderr, disable=None)


def write_summary(rows: list[dict], out_dir: str) -> tuple[str, str]:
    """``summary.csv`` and ``summary.parquet`` in ``out_dir`` (each written whole, then moved
    into place)."""
    csv_path = os.path.join(out_dir, "summary.csv")
    parquet_path = os.path.join(out_dir, "summary.parquet")
    tmp = csv_path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS} for r in rows)
    os.replace(tmp, csv_path)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise BatchError(INSTALL_HINT) from exc
    types = {
        "seconds": pa.float64(),
        "cloud_percent": pa.float64(),
        "buffer_percent": pa.float64(),
        "cloud_area": pa.float64(),
        "threshold": pa.float64(),
        "cloud_pixels": pa.int64(),
        "clear_pixels": pa.int64(),
        "nodata_pixels": pa.int64(),
        "buffer_pixels": pa.int64(),
        "overlap": pa.int64(),
    }
    schema = pa.schema([(c, types.get(c, pa.string())) for c in COLUMNS])
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=schema)
    tmp = parquet_path + ".tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, parquet_path)
    return csv_path, parquet_path
