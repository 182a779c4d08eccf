"""The mosaic property: with a model whose output depends only on each pixel's own values,
the blended mosaic equals that function everywhere, for any overlap, batch size and raster
size (no seams, no off-by-one, no edge artefacts)."""

import threading
import time

import numpy as np
import pytest

from qgis_cloudmask.core import inference
from qgis_cloudmask.core.stats import NODATA


def pixel_function(tiles: np.ndarray) -> np.ndarray:
    """A per-pixel 'model' that uses every channel, so a shifted or flipped tile would show."""
    return 1.0 / (1.0 + np.exp(-(3 * tiles[:, 0] - 2 * tiles[:, 1] + tiles[:, 2] * tiles[:, 3])))


def reference(refl: np.ndarray) -> np.ndarray:
    return pixel_function(refl[None])[0].astype(np.float32)


def random_scene(h, w, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.01, 1.2, size=(4, h, w)).astype(np.float32)


@pytest.mark.parametrize(
    ("h", "w"),
    [(1, 1), (7, 300), (224, 224), (225, 223), (500, 470), (448, 672), (1000, 230)],
)
@pytest.mark.parametrize(("overlap", "batch"), [(0, 1), (32, 3), (111, 8), (200, 5)])
def test_mosaic_equals_the_pixel_function(h, w, overlap, batch):
    refl = random_scene(h, w, seed=h * 7 + w)
    calls = []

    def predict(tiles):
        calls.append(len(tiles))
        assert tiles.shape[1:] == (4, 224, 224)  # never resized
        return pixel_function(tiles)

    prob, mask, stats = inference.classify_array(predict, refl, 224, overlap, 0.5, batch)
    expected = reference(refl)
    np.testing.assert_allclose(prob, expected, atol=2e-6)
    decided = np.abs(expected - 0.5) > 1e-5
    np.testing.assert_array_equal(mask[decided], (expected >= 0.5)[decided])
    assert max(calls) <= batch
    plan = inference.TilingPlan(h, w, 224, overlap)
    assert sum(calls) == plan.n_tiles
    assert stats.cloud_pixels == int((mask == 1).sum()) and stats.nodata_pixels == 0


def test_nodata_pixels_are_255_and_do_not_influence_their_neighbours():
    refl = random_scene(300, 260, seed=1)
    valid = np.ones((300, 260), bool)
    valid[50:120, 30:90] = False
    valid[:, -3:] = False
    seen_values = []

    def predict(tiles):
        seen_values.append(tiles.copy())
        return pixel_function(tiles)

    prob, mask, stats = inference.classify_array(predict, refl, 224, 32, 0.5, 4, valid=valid)
    assert (mask[~valid] == NODATA).all()
    assert (prob[~valid] == inference.PROBABILITY_NODATA).all()
    np.testing.assert_allclose(prob[valid], reference(refl)[valid], atol=2e-6)
    assert stats.nodata_pixels == int((~valid).sum())
    assert stats.valid_pixels == int(valid.sum())


def test_tiles_without_valid_pixels_are_not_run():
    refl = random_scene(224, 224 * 3, seed=2)
    valid = np.zeros(refl.shape[1:], bool)
    valid[:, 500:] = True  # only the last tile holds valid pixels
    calls = []

    def predict(tiles):
        calls.append(len(tiles))
        return pixel_function(tiles)

    inference.classify_array(predict, refl, 224, 0, 0.5, 8, valid=valid)
    assert sum(calls) == 1


def test_rows_are_written_once_top_to_bottom_and_read_in_strips():
    h, w = 700, 300
    refl = random_scene(h, w, seed=3)
    valid = np.ones((h, w), bool)
    reads, writes = [], []

    def read_window(y0, y1, x0, x1):
        reads.append((y0, y1, x0, x1))
        return refl[:, y0:y1, x0:x1], valid[y0:y1, x0:x1]

    def write_window(y0, x0, p, m):
        writes.append((y0, x0, p.shape))

    plan = inference.TilingPlan(h, w, 224, 32)
    inference.classify_raster(pixel_function, plan, 0.5, 4, read_window, write_window)
    assert [y for y, _, _ in writes] == sorted(y for y, _, _ in writes)
    assert all(x0 == 0 and shape[1] == w for _, x0, shape in writes)  # narrower than a block
    assert sum(shape[0] for _, _, shape in writes) == h and writes[0][0] == 0
    assert max(y1 - y0 for y0, y1, _, _ in reads) <= 224  # never the whole raster at once
    assert sum(y1 - y0 for y0, y1, _, _ in reads) == h  # overlapping rows are not read twice


def test_wide_rasters_are_read_and_written_in_column_blocks_of_bounded_width():
    h, w = 300, 1500
    refl = random_scene(h, w, seed=7)
    valid = np.ones((h, w), bool)
    reads, written = [], np.zeros((h, w), int)

    def read_window(y0, y1, x0, x1):
        reads.append((y0, y1, x0, x1))
        return refl[:, y0:y1, x0:x1], valid[y0:y1, x0:x1]

    def write_window(y0, x0, p, m):
        written[y0 : y0 + p.shape[0], x0 : x0 + p.shape[1]] += 1

    plan = inference.TilingPlan(h, w, 224, 32)
    calls = []

    def predict(tiles):
        calls.append(len(tiles))
        return pixel_function(tiles)

    inference.classify_raster(predict, plan, 0.5, 4, read_window, write_window, block_width=512)
    assert (written == 1).all()
    assert max(x1 - x0 for _, _, x0, x1 in reads) <= 512 + 2 * 224  # the block and its tiles
    blocks = inference.column_blocks(plan, 512)
    assert len(blocks) == 3 and all(b.x0 % 256 == 0 for b in blocks)  # borders on 256 px
    # tiles crossing a block border are predicted in both blocks: a few more than the plan
    extra = sum(calls) - plan.n_tiles
    assert sum(calls) == len(plan.row_starts) * sum(len(b.col_starts) for b in blocks)
    assert 0 < extra <= 2 * 2 * len(plan.row_starts)


def test_cancel_stops_between_batches():
    refl = random_scene(500, 500, seed=4)
    calls = []

    def predict(tiles):
        calls.append(1)
        return pixel_function(tiles)

    plan = inference.TilingPlan(500, 500, 224, 32)
    with pytest.raises(inference.Cancelled):
        inference.classify_raster(
            predict,
            plan,
            0.5,
            1,
            lambda a, b, c, d: (refl[:, a:b, c:d], np.ones((b - a, d - c), bool)),
            lambda *a: None,
            is_canceled=lambda: len(calls) >= 2,
        )
    assert len(calls) == 2


@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_cancel_is_honoured_on_a_sparse_raster(corner):
    """All nodata but a corner: almost every tile is skipped, yet cancel still stops the run."""
    h, w = 1000, 1000
    refl = random_scene(h, w, seed=8)
    valid = np.zeros((h, w), bool)
    if corner == "top-left":
        valid[:20, :20] = True
    else:
        valid[-20:, -20:] = True
    asked, written = [], []

    def is_canceled():
        asked.append(1)
        return len(asked) > 1  # True from the second question on

    plan = inference.TilingPlan(h, w, 224, 32)
    with pytest.raises(inference.Cancelled):
        inference.classify_raster(
            pixel_function,
            plan,
            0.5,
            4,
            lambda a, b, c, d: (refl[:, a:b, c:d], valid[a:b, c:d]),
            lambda y0, x0, p, m: written.append(y0),
            is_canceled=is_canceled,
        )
    assert len(asked) == 2 and len(written) == 1  # stopped after the first strip


def test_progress_is_reported_while_skipping_nodata():
    h, w = 1000, 300
    refl = random_scene(h, w, seed=9)
    valid = np.zeros((h, w), bool)
    valid[-5:, :5] = True  # one tile at the very end holds data
    seen = []
    inference.classify_raster(
        pixel_function,
        inference.TilingPlan(h, w, 224, 32),
        0.5,
        4,
        lambda a, b, c, d: (refl[:, a:b, c:d], valid[a:b, c:d]),
        lambda *a: None,
        progress=seen.append,
    )
    assert len(seen) >= len(inference.TilingPlan(h, w, 224, 32).row_starts)
    assert seen == sorted(seen) and 0 < seen[0] < 0.5 and seen[-1] == 1.0


def test_progress_rises_to_one():
    refl = random_scene(450, 450, seed=5)
    seen = []
    plan = inference.TilingPlan(450, 450, 224, 32)
    inference.classify_raster(
        pixel_function,
        plan,
        0.5,
        2,
        lambda a, b, c, d: (refl[:, a:b, c:d], np.ones((b - a, d - c), bool)),
        lambda *a: None,
        progress=seen.append,
    )
    assert seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 1


def test_batch_size_below_one_is_rejected():
    with pytest.raises(ValueError, match="batch"):
        inference.classify_array(pixel_function, random_scene(10, 10, 0), 224, 0, 0.5, 0)


def test_largest_overlap_still_blends_exactly():
    refl = random_scene(226, 229, seed=6)  # overlap 223 = stride 1: up to 12 tiles per pixel
    prob, _, _ = inference.classify_array(pixel_function, refl, 224, 223, 0.5, 16)
    np.testing.assert_allclose(prob, reference(refl), atol=2e-6)


def _io_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("cloudmask-")]


def _run_recorded(refl, valid, io_thread, block_width=512):
    """classify_raster over in-memory arrays, recording every read and write and its thread."""
    h, w = valid.shape
    reads, writes, threads = [], [], set()
    prob = np.zeros((h, w), np.float32)
    mask = np.zeros((h, w), np.uint8)

    def read_window(y0, y1, x0, x1):
        reads.append((y0, y1, x0, x1))
        threads.add(("read", threading.current_thread().name))
        return refl[:, y0:y1, x0:x1].copy(), valid[y0:y1, x0:x1].copy()

    def write_window(y0, x0, p, m):
        writes.append((y0, x0, p.shape))
        threads.add(("write", threading.current_thread().name))
        prob[y0 : y0 + p.shape[0], x0 : x0 + p.shape[1]] = p
        mask[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] = m

    plan = inference.TilingPlan(h, w, 224, 32)
    stats = inference.classify_raster(
        pixel_function,
        plan,
        0.5,
        4,
        read_window,
        write_window,
        block_width=block_width,
        io_thread=io_thread,
    )
    return prob, mask, stats, reads, writes, threads


def test_the_io_threads_change_nothing_but_the_thread():
    """Reading ahead and writing behind in threads: the same reads and writes in the same order,
    byte-identical results, and each side really in its own thread (none left running)."""
    h, w = 900, 1500
    refl = random_scene(h, w, seed=11)
    valid = np.ones((h, w), bool)
    valid[300:700, 200:900] = False  # whole tiles skipped, and partly valid ones
    serial = _run_recorded(refl, valid, io_thread=False)
    threaded = _run_recorded(refl, valid, io_thread=True)
    np.testing.assert_array_equal(threaded[0], serial[0])
    np.testing.assert_array_equal(threaded[1], serial[1])
    assert threaded[2] == serial[2]
    assert threaded[3] == serial[3] and threaded[4] == serial[4]
    assert serial[5] == {("read", "MainThread"), ("write", "MainThread")}
    assert {side for side, _ in threaded[5]} == {"read", "write"}
    assert all(name.startswith("cloudmask-") for _, name in threaded[5])
    assert _io_threads() == []


@pytest.mark.parametrize("io_thread", [False, True])
def test_a_failing_read_or_write_is_raised_in_the_caller(io_thread):
    refl = random_scene(700, 700, seed=12)
    plan = inference.TilingPlan(700, 700, 224, 32)

    def read_window(y0, y1, x0, x1):
        if y0 >= 400:
            raise OSError("read failed: disk gone")
        return refl[:, y0:y1, x0:x1], np.ones((y1 - y0, x1 - x0), bool)

    with pytest.raises(OSError, match="disk gone"):
        inference.classify_raster(
            pixel_function, plan, 0.5, 4, read_window, lambda *a: None, io_thread=io_thread
        )
    assert _io_threads() == []

    written = []

    def write_window(y0, x0, p, m):
        if y0 > 0:
            raise OSError("write failed: disk full")
        written.append(y0)

    ok = lambda a, b, c, d: (refl[:, a:b, c:d], np.ones((b - a, d - c), bool))  # noqa: E731
    with pytest.raises(OSError, match="disk full"):
        inference.classify_raster(
            pixel_function, plan, 0.5, 4, ok, write_window, io_thread=io_thread
        )
    assert written == [0] and _io_threads() == []


def test_cancel_with_io_threads_leaves_no_thread_and_no_write_behind():
    refl = random_scene(1200, 700, seed=13)
    writes, calls = [], []

    def predict(tiles):
        calls.append(1)
        return pixel_function(tiles)

    with pytest.raises(inference.Cancelled):
        inference.classify_raster(
            predict,
            inference.TilingPlan(1200, 700, 224, 32),
            0.5,
            2,
            lambda a, b, c, d: (refl[:, a:b, c:d], np.ones((b - a, d - c), bool)),
            lambda y0, x0, p, m: writes.append(y0),
            is_canceled=lambda: len(calls) >= 5,
            io_thread=True,
        )
    n_written = len(writes)
    time.sleep(0.2)
    # 4 tiles a strip, 2 a batch: cancelled within strip 3; strips 1 and 2 were written
    assert _io_threads() == [] and len(writes) == n_written == 2
