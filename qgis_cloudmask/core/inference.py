"""Streaming tiled inference: windows of a raster in, blended probability and mask windows out.

Memory is bounded by a constant, whatever the raster's width and height. The raster is cut into
column blocks (at most :data:`BLOCK_WIDTH` output columns each); every block is visited top to
bottom one strip of tiles (``tile`` rows) at a time, reading only the columns of the tiles that
touch the block. A block includes *every* tile that intersects its columns, so each pixel gets
exactly the tile contributions, in the same order, as in a blend of the whole raster: the result
does not depend on where the blocks are cut. Tiles crossing a block border are predicted once per
block (a few percent more tiles, see :func:`column_blocks`).

Within a strip, tiles are run in batches; their probabilities are accumulated with smooth
weights (:func:`tiling.tile_weights`, zero on nodata pixels) and a row of the block is
thresholded once, when no later tile can touch it any more.

Reading (and converting) the next strip and writing the finished rows run in one thread each
beside the model (``io_thread``): GDAL, onnxruntime and NumPy's large operations release the
GIL, so on a machine whose cores the model does not keep busy all the time the I/O is hidden
behind inference. The results are identical either way (same reads, same order of writes).
"""

from __future__ import annotations

import bisect
import math
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from qgis_cloudmask.core import radiometry, tiling
from qgis_cloudmask.core.stats import CLEAR, CLOUD, NODATA, CloudStats

#: Value of nodata pixels in the probability output.
PROBABILITY_NODATA = -1.0

#: Most output columns (px) processed at once. The blend holds about 16 kB per column of the
#: block's window (4 channels, 224 px tiles: float32 reflectance of two strips, the one being
#: blended and the one being read, float32 accumulators, plus the rows being read and
#: converted), about 105 MB here, whatever the raster's size; each block border costs one or
#: two tile columns predicted twice (3 % more tiles on a wide raster with 224 px tiles,
#: overlap 32). Read at call time, so tests can shrink it.
BLOCK_WIDTH = 6144
#: Block borders fall on multiples of this (px) when blocks are at least that wide: the GeoTIFF
#: outputs are written in 256 px tiles, and a compressed tile written by two blocks would be
#: written twice (and stored twice in the file).
BLOCK_ALIGN = 256
#: Read ahead and write behind in threads (see the module's docstring); read at call time, so
#: ``make bench`` can compare both in one run.
IO_THREAD = True

#: ``read_window(y0, y1, x0, x1) -> (reflectance C x h x w float32, valid h x w bool)``
ReadWindow = Callable[[int, int, int, int], tuple[np.ndarray, np.ndarray]]
#: ``read_raw(y0, y1, x0, x1) -> stored values C x h x w`` (any numeric dtype, model's order)
ReadRaw = Callable[[int, int, int, int], np.ndarray]
#: ``write_window(y0, x0, probability h x w float32, mask h x w uint8)``
WriteWindow = Callable[[int, int, np.ndarray, np.ndarray], None]
Predict = Callable[[np.ndarray], np.ndarray]


class Cancelled(Exception):  # noqa: N818 (a request, not an error)
    """Raised between batches (or skipped strips) when the caller asked to stop."""


@dataclass(frozen=True)
class TilingPlan:
    """Where tiles go on a ``height x width`` raster."""

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def row_starts(self) -> list[int]:
        return tiling.tile_starts(self.height, self.tile, self.overlap)

    @property
    def col_starts(self) -> list[int]:
        return tiling.tile_starts(self.width, self.tile, self.overlap)

    @property
    def n_tiles(self) -> int:
        return len(self.row_starts) * len(self.col_starts)


@dataclass(frozen=True)
class ColumnBlock:
    """Output columns ``[x0, x1)`` of a raster and the tiles whose columns touch them.

    ``col_starts`` are tile starts of the whole raster's plan; ``read_x0:read_x1`` is the span of
    those tiles (clipped to the raster), the columns to read.
    """

    x0: int
    x1: int
    col_starts: tuple[int, ...]
    read_x0: int
    read_x1: int


def column_blocks(plan: TilingPlan, block_width: int | None = None) -> list[ColumnBlock]:
    """Cut the raster's columns into blocks of at most ``block_width`` px (default
    :data:`BLOCK_WIDTH`), of about equal width, borders on multiples of :data:`BLOCK_ALIGN`.

    Each block lists every tile of the plan that intersects its columns, so its pixels get the
    same contributions as in a whole-raster blend; the tiles predicted in all blocks together
    exceed ``plan.n_tiles`` by those crossing a border.
    """
    block_width = BLOCK_WIDTH if block_width is None else int(block_width)
    if block_width < 1:
        raise ValueError(f"block width must be at least 1 px, got {block_width}")
    width, t = plan.width, plan.tile
    xs = plan.col_starts
    align = BLOCK_ALIGN if block_width >= BLOCK_ALIGN else 1
    n = math.ceil(width / (block_width - block_width % align))
    size = math.ceil(width / n / align) * align  # <= block_width, n * size >= width
    blocks = []
    for x0 in range(0, width, size):
        x1 = min(x0 + size, width)
        starts = tuple(xs[bisect.bisect_right(xs, x0 - t) : bisect.bisect_left(xs, x1)])
        blocks.append(ColumnBlock(x0, x1, starts, starts[0], min(starts[-1] + t, width)))
    return blocks


def reflectance_reader(
    read_raw: ReadRaw,
    nodata: Sequence[float | None],
    conversion: radiometry.Conversion,
) -> ReadWindow:
    """Wrap a raw-value reader: flag nodata, convert to reflectance, fill nodata with 0."""

    def read_window(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        raw = read_raw(y0, y1, x0, x1)
        valid = radiometry.valid_pixels(raw, list(nodata))
        refl = radiometry.to_reflectance(raw, conversion)
        del raw
        if not valid.all():  # the usual scene is valid throughout: no pass over its pixels
            refl[:, ~valid] = 0.0
        return refl, valid

    return read_window


_END = object()


class _Strips:
    """Every strip of every column block, in the order :func:`classify_raster` blends them:
    ``(reflectance C x h x w, valid h x w)`` views of one of two buffers.

    A strip is filled while the one before it is still in use (in a thread with ``thread``);
    the rows it shares with that one are copied from its buffer and only the others are read,
    so no row is read twice and nothing strip-sized is allocated per strip or per block. A
    view stays valid until the strip after the next is asked for. :meth:`close` stops the
    thread (it finishes the read it is in).
    """

    def __init__(
        self,
        read_window: ReadWindow,
        blocks: list[ColumnBlock],
        ys: list[int],
        tile: int,
        height: int,
        width: int,
        thread: bool,
    ) -> None:
        self._read, self._blocks, self._ys = read_window, blocks, ys
        self._tile, self._height = tile, height
        self._refl: np.ndarray | None = None  # 2 x C x tile x width, once C is known
        self._valid = np.empty((2, tile, width), bool)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._it = self._threaded() if thread else self._fill(lambda: True)

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return next(self._it)

    def _fill(self, acquire: Callable[[], bool]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        t, k = self._tile, 0
        for block in self._blocks:
            x0, x1 = block.read_x0, block.read_x1
            w = x1 - x0
            prev: tuple[int, int] | None = None  # rows of the previous strip of this block
            for y in self._ys:
                y1 = min(y + t, self._height)
                if not acquire():
                    return
                cur, old = k % 2, (k + 1) % 2
                if prev is not None and prev[0] <= y < prev[1] <= y1:
                    kept, first = prev[1] - y, prev[1]
                    rows = slice(y - prev[0], prev[1] - prev[0])
                    self._refl[cur, :, :kept, :w] = self._refl[old, :, rows, :w]
                    self._valid[cur, :kept, :w] = self._valid[old, rows, :w]
                else:
                    kept, first = 0, y
                if y1 > first:
                    refl, valid = self._read(first, y1, x0, x1)
                    if self._refl is None:
                        self._refl = np.empty((2, len(refl), t, self._valid.shape[2]), np.float32)
                    self._refl[cur, :, kept : kept + y1 - first, :w] = refl
                    self._valid[cur, kept : kept + y1 - first, :w] = valid
                    del refl, valid
                prev, k = (y, y1), k + 1
                yield self._refl[cur, :, : y1 - y, :w], self._valid[cur, : y1 - y, :w]

    def _threaded(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        ready: queue.Queue = queue.Queue()
        free = threading.Semaphore(2)  # buffers not in use by the caller

        def acquire() -> bool:
            while not free.acquire(timeout=0.05):
                if self._stop.is_set():
                    return False
            return not self._stop.is_set()

        def produce() -> None:
            try:
                for item in self._fill(acquire):
                    ready.put(item)
                ready.put(_END)
            except BaseException as exc:  # handed to the caller's thread
                ready.put(exc)

        self._worker = threading.Thread(target=produce, name="cloudmask-read", daemon=True)
        self._worker.start()
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            free.release()  # asked for the next strip: done with this one

    def close(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None


class _Writer:
    """Calls ``write_window`` in order; with ``thread`` in a thread, at most ``depth`` writes
    pending (each holds its rows). :meth:`finish` waits for all and raises the first error."""

    def __init__(self, write_window: WriteWindow, thread: bool, depth: int = 2) -> None:
        self._write, self._depth = write_window, depth
        self._pool = ThreadPoolExecutor(1, "cloudmask-write") if thread else None
        self._pending: deque[Future] = deque()

    def __call__(self, y0: int, x0: int, probability: np.ndarray, mask: np.ndarray) -> None:
        if self._pool is None:
            self._write(y0, x0, probability, mask)
            return
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, y0, x0, probability, mask))

    def finish(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self.close()

    def close(self) -> None:
        """Wait for the writes under way (their errors are dropped: use :meth:`finish`)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending.clear()


def _check_cancel(is_canceled: Callable[[], bool] | None) -> None:
    if is_canceled is not None and is_canceled():
        raise Cancelled()


def classify_raster(
    predict: Predict,
    plan: TilingPlan,
    threshold: float,
    batch_size: int,
    read_window: ReadWindow,
    write_window: WriteWindow,
    progress: Callable[[float], None] | None = None,
    is_canceled: Callable[[], bool] | None = None,
    block_width: int | None = None,
    io_thread: bool | None = None,
) -> CloudStats:
    """Run ``predict`` over the whole raster and stream the results to ``write_window``.

    ``predict`` maps ``N x C x tile x tile`` reflectance to ``N x tile x tile`` probability.
    Column blocks (:func:`column_blocks`, at most ``block_width`` px) are done left to right,
    each top to bottom; every pixel is written exactly once. Tiles without a valid pixel are
    skipped. ``progress`` gets a fraction rising from 0 to 1 (tiles done, predicted or
    skipped); ``is_canceled`` is asked before every batch and for every strip of a block, also
    when all its tiles are skipped (-> :class:`Cancelled`). With ``io_thread`` (default
    :data:`IO_THREAD`),
    ``read_window`` is called in one thread and ``write_window`` in another (each in order,
    one call at a time); every write has returned when this returns or raises. Returns the
    statistics of the written mask.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    t, height = plan.tile, plan.height
    ys = plan.row_starts
    blocks = column_blocks(plan, block_width)
    weights = tiling.tile_weights(t, plan.overlap).astype(np.float32)
    stats = CloudStats()
    done, total = 0, len(ys) * sum(len(b.col_starts) for b in blocks)

    # allocated once for the widest block (a second set while the first is still referenced
    # would double the peak); float32: each tile over a pixel adds about one rounding (6e-8),
    # 4 tiles at the usual overlap (< tile / 2), 256 at the extreme of stride 1
    widest = max(max(b.read_x1 - b.read_x0 for b in blocks), t)
    acc_p_all = np.zeros((t, widest), dtype=np.float32)
    acc_w_all = np.zeros((t, widest), dtype=np.float32)
    term = np.empty((t, t), dtype=np.float32)  # one tile's weighted probability
    batch_buf: np.ndarray | None = None  # the tiles of a batch, reused (no page faults)
    io_thread = IO_THREAD if io_thread is None else io_thread
    strips = _Strips(read_window, blocks, ys, t, height, widest, io_thread)
    writer = _Writer(write_window, io_thread)
    try:
        for block in blocks:
            # window coordinates: column 0 is the raster's column block.read_x0
            padded_w = max(block.read_x1 - block.read_x0, t)  # < t only for a raster narrower
            out0, out1 = block.x0 - block.read_x0, block.x1 - block.read_x0
            xs = [x - block.read_x0 for x in block.col_starts]
            acc_p, acc_w = acc_p_all[:, :padded_w], acc_w_all[:, :padded_w]
            acc_p[:] = 0.0
            acc_w[:] = 0.0

            for i, y in enumerate(ys):
                refl, valid = next(strips)
                refl_p = tiling.pad_to(refl, t, padded_w)
                valid_p = tiling.pad_to(valid, t, padded_w)
                todo = [x for x in xs if valid_p[:, x : x + t].any()]
                if not todo:  # a strip of nodata is quick, but the caller may still want to stop
                    _check_cancel(is_canceled)
                done += len(xs) - len(todo)
                for b in range(0, len(todo), batch_size):
                    _check_cancel(is_canceled)
                    batch_x = todo[b : b + batch_size]
                    if batch_buf is None:
                        batch_buf = np.empty((batch_size, *refl_p.shape[:2], t), np.float32)
                    tiles = batch_buf[: len(batch_x)]
                    np.stack([refl_p[:, :, x : x + t] for x in batch_x], out=tiles)
                    prob = predict(tiles)
                    for x, p in zip(batch_x, prob):
                        v = valid_p[:, x : x + t]
                        w = weights if v.all() else weights * v
                        np.multiply(w, p, out=term)
                        acc_p[:, x : x + t] += term
                        acc_w[:, x : x + t] += w
                    done += len(batch_x)
                    if progress is not None:
                        progress(done / total)
                if not todo and progress is not None:
                    progress(done / total)

                n = (ys[i + 1] if i + 1 < len(ys) else height) - y
                ok = valid[:n, out0:out1]
                prob_rows = np.full(ok.shape, PROBABILITY_NODATA, dtype=np.float32)
                np.divide(acc_p[:n, out0:out1], acc_w[:n, out0:out1], out=prob_rows, where=ok)
                mask_rows = np.where(prob_rows >= threshold, np.uint8(CLOUD), np.uint8(CLEAR))
                mask_rows[~ok] = NODATA
                writer(y, block.x0, prob_rows, mask_rows)
                stats.add(mask_rows)

                # move the rows later strips still add to up to row 0 (in place, no new array)
                acc_p[: t - n] = acc_p[n:]
                acc_w[: t - n] = acc_w[n:]
                acc_p[t - n :] = 0.0
                acc_w[t - n :] = 0.0
        writer.finish()
    finally:
        strips.close()
        writer.close()
    if progress is not None:
        progress(1.0)
    return stats


def classify_array(
    predict: Predict,
    reflectance: np.ndarray,
    tile: int,
    overlap: int,
    threshold: float,
    batch_size: int = 8,
    valid: np.ndarray | None = None,
    block_width: int | None = None,
) -> tuple[np.ndarray, np.ndarray, CloudStats]:
    """In-memory convenience over :func:`classify_raster` (same code path as the plugin).

    ``reflectance`` is ``C x H x W`` in the model's channel order. Returns
    ``(probability H x W float32, mask H x W uint8 {0, 1, 255}, stats)``.
    """
    _, height, width = reflectance.shape
    if valid is None:
        valid = np.isfinite(reflectance).all(axis=0) & ~(reflectance == 0).all(axis=0)
    refl = np.where(valid, reflectance, 0).astype(np.float32)
    prob = np.empty((height, width), dtype=np.float32)
    mask = np.empty((height, width), dtype=np.uint8)

    def read(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        return refl[:, y0:y1, x0:x1], valid[y0:y1, x0:x1]

    def write(y0: int, x0: int, p: np.ndarray, m: np.ndarray) -> None:
        prob[y0 : y0 + p.shape[0], x0 : x0 + p.shape[1]] = p
        mask[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] = m

    stats = classify_raster(
        predict,
        TilingPlan(height, width, tile, overlap),
        threshold,
        batch_size,
        read,
        write,
        block_width=block_width,
    )
    return prob, mask, stats
