"""The only GDAL glue: windowed reads of the input, all-or-nothing writes of the outputs.

Outputs are written to hidden temporary files beside their destination and moved into place by
:meth:`OutputRasters.commit`; any exception inside the ``with`` block deletes them, so a failed
or cancelled run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
from osgeo import gdal, ogr, osr

from qgis_cloudmask.core.classes import NODATA, mask_classes
from qgis_cloudmask.core.inference import PROBABILITY_NODATA

gdal.UseExceptions()

#: Stored data types a reflectance or DN raster can have.
SUPPORTED_TYPES = ("UInt16", "Int16", "UInt32", "Int32", "Float32", "Float64")

#: GeoTIFF creation options of every output, tiled, BigTIFF when it may pass 4 GB; the
#: compression by data type, chosen with ``make bench`` (its compression table, 4096 x 4096 mask
#: and probability of the bundled model, 2 cores): both codecs are baseline for every GIS.
#: The {0, 1, 2, 255} mask: LZW, 4.8x faster than DEFLATE's default level 6 at the same size
#: (0.09 s vs 0.45 s, 0.99 vs 0.97 MB; DEFLATE level 1 is faster still but 50 % bigger).
#: Everything else (the float32 probability, the masked image): DEFLATE level 1, 1.4x faster
#: than level 6 at the same size (0.71 s vs 1.03 s, 55.4 vs 55.5 MB); PREDICTOR=3 saves 16 %
#: of the size for twice the time.
CREATION_OPTIONS = ["TILED=YES", "BIGTIFF=IF_SAFER"]
COMPRESSION = {gdal.GDT_Byte: ["COMPRESS=LZW"]}
DEFAULT_COMPRESSION = ["COMPRESS=DEFLATE", "ZLEVEL=1"]


def creation_options(dtype: int) -> list[str]:
    """GeoTIFF creation options of an output of GDAL data type ``dtype``."""
    return CREATION_OPTIONS + COMPRESSION.get(dtype, DEFAULT_COMPRESSION)


class RasterError(Exception):
    """An input or output raster problem, worded for a GIS user."""


@dataclass(frozen=True)
class RasterInfo:
    path: str
    width: int
    height: int
    band_count: int
    #: GDAL type name of each band (a VRT may mix them)
    data_types: tuple[str, ...]
    nodata: tuple[float | None, ...]
    #: ``None``: the raster is not georeferenced by a geotransform (outputs get none either)
    geotransform: tuple[float, ...] | None
    projection: str
    #: ground control points (georeferencing without a geotransform), copied to outputs
    gcps: tuple = ()
    gcp_projection: str = ""

    def is_float(self, band: int) -> bool:
        """Whether 1-based ``band`` stores floating-point values."""
        return self.data_types[band - 1].startswith("Float")

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in map units squared (1 square pixel without a geotransform)."""
        gt = self.geotransform
        if gt is None:
            return 1.0
        return abs(gt[1] * gt[5] - gt[2] * gt[4])

    def with_nodata(self, value: float) -> RasterInfo:
        """The same raster with ``value`` as every band's nodata (e.g. a product's 0)."""
        return replace(self, nodata=(value,) * self.band_count)

    @property
    def spatial_ref(self) -> osr.SpatialReference | None:
        if not self.projection:
            return None
        srs = osr.SpatialReference()
        srs.ImportFromWkt(self.projection)
        return srs

    @property
    def crs_id(self) -> str:
        """``EPSG:32633`` style identifier ('' without CRS; the CRS name when it has no code)."""
        srs = self.spatial_ref
        if srs is None:
            return ""
        srs.AutoIdentifyEPSG()
        for node in (None, "PROJCS", "GEOGCS"):
            name, code = srs.GetAuthorityName(node), srs.GetAuthorityCode(node)
            if name and code:
                return f"{name}:{code}"
        return srs.GetName() or "unknown CRS"

    @property
    def centre(self) -> tuple[float, float]:
        """Map coordinates (x, y) of the raster's centre."""
        gt = self.geotransform
        col, row = self.width / 2.0, self.height / 2.0
        return gt[0] + col * gt[1] + row * gt[2], gt[3] + col * gt[4] + row * gt[5]

    def pixel_size_m(self) -> tuple[float, float, str]:
        """Pixel width and height in metres, and how they were found.

        Geographic CRS: converted at the scene's centre latitude on the WGS84 ellipsoid. Raises
        ValueError when the raster has no CRS (its units are unknown).
        """
        srs = self.spatial_ref
        gt = self.geotransform
        if srs is None or gt is None:
            raise ValueError("the raster has no coordinate reference system")
        sx, sy = math.hypot(gt[1], gt[4]), math.hypot(gt[2], gt[5])
        if srs.IsGeographic():
            lat = math.radians(self.centre[1])
            a, e2 = 6378137.0, 0.00669437999014
            w = 1.0 - e2 * math.sin(lat) ** 2
            per_deg_lon = math.radians(1.0) * a * math.cos(lat) / math.sqrt(w)
            per_deg_lat = math.radians(1.0) * a * (1.0 - e2) / w**1.5
            how = f"degrees converted at the scene's latitude {math.degrees(lat):.3f}"
            return sx * per_deg_lon, sy * per_deg_lat, how
        metres = srs.GetLinearUnits()
        return sx * metres, sy * metres, f"{srs.GetLinearUnitsName()} of {self.crs_id}"

    @property
    def area_unit(self) -> str:
        """The unit of areas computed from the geotransform, in words (as QGIS writes them)."""
        srs = self.spatial_ref
        if self.geotransform is None:
            return "square pixels (the raster has no geotransform)"
        if srs is None:
            return "square map units (the raster has no CRS)"
        if srs.IsGeographic():
            return "square degrees"
        metres = srs.GetLinearUnits()
        for factor, name in AREA_UNITS:
            if abs(metres - factor) < 1e-9 * max(factor, 1.0):
                return name
        return f"square map units ({srs.GetLinearUnitsName()})"


#: metres per linear unit -> area unit in words
AREA_UNITS = (
    (1.0, "square meters"),
    (1000.0, "square kilometers"),
    (0.3048, "square feet"),
    (1200.0 / 3937.0, "square feet"),  # US survey foot
    (0.9144, "square yards"),
)


def describe(ds: gdal.Dataset, path: str) -> RasterInfo:
    """What the pipeline needs to know of an open dataset."""
    bands = [ds.GetRasterBand(i + 1) for i in range(ds.RasterCount)]
    gt = ds.GetGeoTransform(can_return_null=True)
    return RasterInfo(
        path=path,
        width=ds.RasterXSize,
        height=ds.RasterYSize,
        band_count=ds.RasterCount,
        data_types=tuple(gdal.GetDataTypeName(b.DataType) for b in bands),
        nodata=tuple(b.GetNoDataValue() for b in bands),
        geotransform=tuple(gt) if gt is not None else None,
        projection=ds.GetProjection(),
        gcps=tuple(ds.GetGCPs() or ()),
        gcp_projection=ds.GetGCPProjection() or "",
    )


def open_dataset(path: str, what: str | None = None) -> gdal.Dataset:
    """Open ``path`` read-only; ``what`` names it in the error (default: the path)."""
    what = what or f"'{path}'"
    try:
        ds = gdal.Open(path, gdal.GA_ReadOnly)
    except RuntimeError as exc:
        raise RasterError(f"GDAL cannot open {what}: {exc}") from exc
    if ds is None:
        raise RasterError(f"GDAL cannot open {what}.")
    return ds


def open_raster(path: str) -> tuple[gdal.Dataset, RasterInfo]:
    """Open a plain raster read-only and describe it (products: :mod:`qgis_cloudmask.sources`)."""
    ds = open_dataset(path)
    return ds, describe(ds, path)


def raw_reader(ds: gdal.Dataset, bands: list[int]):
    """``read_raw(y0, y1, x0, x1)``: stored values of the 1-based ``bands`` in rows ``y0:y1`` and
    columns ``x0:x1`` (pixels), ``len(bands) x h x w`` (a window: memory bounded by its size)."""

    def read_raw(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        arr = ds.ReadAsArray(x0, y0, x1 - x0, y1 - y0, band_list=bands)
        return arr.reshape(len(bands), y1 - y0, x1 - x0)

    return read_raw


#: GDAL block cache (bytes) allowed during a run; GDAL's default (5 % of RAM) would count in the
#: run's peak memory. The blocks one strip of a column block touches, in the input and the
#: outputs, fit (about 45 MB with 6144 px blocks), so no block is read or written twice; so do
#: those of one block row of a 4-band 16-bit input up to about 60000 px wide, which the
#: decimated radiometry sample reads once per sampled row.
BLOCK_CACHE_BYTES = 128 * 1024 * 1024
_cache_lock = threading.Lock()
_cache_users = 0
_cache_saved = 0


@contextlib.contextmanager
def capped_block_cache(limit_bytes: int | None = None) -> Iterator[None]:
    """Lower GDAL's block cache to ``limit_bytes`` (default :data:`BLOCK_CACHE_BYTES`) while
    the ``with`` block runs, then restore it.

    Inside QGIS the cache is shared with the application: it is only ever lowered (a smaller
    GDAL_CACHEMAX is kept), and restored when the last of overlapping runs (threads) ends.
    """
    global _cache_users, _cache_saved
    limit_bytes = BLOCK_CACHE_BYTES if limit_bytes is None else limit_bytes
    with _cache_lock:
        if _cache_users == 0:
            _cache_saved = gdal.GetCacheMax()
            if limit_bytes < _cache_saved:
                gdal.SetCacheMax(limit_bytes)
        _cache_users += 1
    try:
        yield
    finally:
        with _cache_lock:
            _cache_users -= 1
            if _cache_users == 0:
                gdal.SetCacheMax(_cache_saved)


@contextlib.contextmanager
def gdal_quiet():
    """GDAL without exceptions or messages, for closing datasets whose writes already failed:
    otherwise their destructor raises again and Python prints "Exception ignored in
    delete_Dataset" with a traceback after the real error was reported."""
    # GDAL's Python modules stack their exception handlers: undo in reverse order (ogr first)
    modules = [m for m in (ogr, gdal) if m.GetUseExceptions()]
    for module in modules:
        module.DontUseExceptions()
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()
        for module in reversed(modules):
            module.UseExceptions()


def close_datasets(datasets: list) -> None:
    """Flush and close the datasets of ``datasets`` (the list is emptied: no reference may stay
    in a traceback). A failed flush (disk full) still closes every dataset, quietly, and raises
    one RasterError."""
    errors = []
    while datasets:
        ds = datasets.pop()
        if ds is None:
            continue
        try:
            ds.FlushCache()
        except RuntimeError as exc:
            errors.append(str(exc))
        with gdal_quiet():
            ds = None
    if errors:
        raise RasterError(f"Writing the outputs failed: {errors[0]}")


#: Marks temporary files: ``.<stem>.partial-<host>-<pid>-<random><ext>``. Host and process id
#: let a later run tell the leftovers of a killed run (removed) from a running one (kept).
PARTIAL = ".partial-"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def temporary_path(path: str) -> str:
    """A hidden sibling of ``path`` with its extension (same folder: the final move is a
    rename; same extension: drivers that look at it are happy), naming this host and process."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    tag = f"{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return os.path.join(folder, f".{stem}{PARTIAL}{tag}{ext}")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (without signalling it)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # os.kill would terminate the process there
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_partials(path: str) -> list[str]:
    """Delete the temporary files of ``path``'s earlier runs on this host whose process is gone
    (killed runs: a normal end, failure or cancel removes its own). Returns what was removed."""
    folder, name = os.path.split(os.path.abspath(path))
    stem = os.path.splitext(name)[0]
    pattern = re.compile(re.escape(f".{stem}{PARTIAL}{_host()}-") + r"(\d+)-")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for candidate in names:
        m = pattern.match(candidate)
        if m and int(m.group(1)) != os.getpid() and not process_alive(int(m.group(1))):
            try:
                os.remove(os.path.join(folder, candidate))
                removed.append(candidate)
            except OSError:
                pass
    return removed


#: Sidecars GDAL or QGIS may leave beside a file (removed with a temporary file; a stale one
#: beside a replaced output would describe the old file).
SIDECARS = (".aux.xml", "-wal", "-shm", "-journal")


class Staging:
    """Files written under temporary names beside their targets, moved into place together.

    Used as a context manager: an exception inside the block deletes every temporary file, so a
    failed or cancelled run leaves nothing behind.
    """

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str | None]] = []
        self._open: list = []

    def track(self, closable):
        """Close ``closable`` (e.g. an :class:`OutputRasters`) before moving or deleting."""
        self._open.append(closable)
        return closable

    def _close_all(self, quiet: bool = False) -> None:
        while self._open:
            closable = self._open.pop()
            if not quiet:
                closable.close()
                continue
            with gdal_quiet():  # a write already failed (disk full...): its error was reported
                try:
                    closable.close()
                except RuntimeError:
                    pass

    def add(self, target: str) -> str:
        """A temporary path for ``target``, moved there by :meth:`commit` (leftovers of killed
        runs for the same target are removed first)."""
        remove_stale_partials(target)
        temp = temporary_path(target)
        self.pairs.append((temp, target))
        return temp

    def scratch(self, beside: str, suffix: str = ".tif") -> str:
        """A temporary working file beside ``beside``, deleted at the end either way."""
        temp = os.path.splitext(temporary_path(beside))[0] + suffix
        self.pairs.append((temp, None))
        return temp

    def commit(self) -> None:
        """Move every file to its target; sidecars of an older target are removed."""
        self._close_all()
        for temp, target in self.pairs:
            if target is None:
                continue
            for sidecar in SIDECARS:
                if os.path.exists(target + sidecar):
                    os.remove(target + sidecar)
            os.replace(temp, target)
        self.discard()

    def discard(self) -> None:
        """Delete what is left of the temporary files (safe to call more than once)."""
        self._close_all(quiet=True)
        for temp, _ in self.pairs:
            for leftover in (temp, *(temp + s for s in SIDECARS)):
                if os.path.exists(leftover):
                    os.remove(leftover)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


def create_like(
    path: str, info: RasterInfo, dtype: int, bands: int = 1, description: str = ""
) -> gdal.Dataset:
    """A new GeoTIFF on the grid of ``info`` (size, geotransform, CRS)."""
    try:
        ds = gdal.GetDriverByName("GTiff").Create(
            path, info.width, info.height, bands, dtype, options=creation_options(dtype)
        )
    except RuntimeError as exc:
        raise RasterError(f"Cannot create '{path}': {exc}") from exc
    if info.geotransform is not None:
        ds.SetGeoTransform(info.geotransform)
    if info.projection:
        ds.SetProjection(info.projection)
    if info.gcps:
        ds.SetGCPs(info.gcps, info.gcp_projection)
    if description:
        ds.GetRasterBand(1).SetDescription(description)
    return ds


def set_mask_classes(band: gdal.Band, with_buffer: bool) -> None:
    """Colour table (opaque: GeoTIFF stores no alpha) and the class names as CLASS_n metadata
    (inside the TIFF; GDAL keeps category names only in a .aux.xml that GTiff does not read)."""
    table = gdal.ColorTable()
    for c in mask_classes(with_buffer):
        table.SetColorEntry(c.value, c.rgba)
    band.SetRasterColorTable(table)
    band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
    band.SetMetadata({f"CLASS_{c.value}": c.label for c in mask_classes(with_buffer)})


class OutputRasters:
    """The mask GeoTIFF and, optionally, the probability GeoTIFF, written row block by row block
    into temporary files of ``staging``."""

    def __init__(
        self,
        info: RasterInfo,
        staging: Staging,
        mask_path: str,
        probability_path: str | None = None,
        with_buffer: bool = False,
    ):
        self.info = info
        self.mask_temp = staging.add(mask_path)
        self.mask_ds = create_like(self.mask_temp, info, gdal.GDT_Byte, description="cloud mask")
        band = self.mask_ds.GetRasterBand(1)
        band.SetNoDataValue(NODATA)
        set_mask_classes(band, with_buffer)
        self.prob_ds = None
        if probability_path:
            self.prob_ds = create_like(
                staging.add(probability_path),
                info,
                gdal.GDT_Float32,
                description="cloud probability",
            )
            self.prob_ds.GetRasterBand(1).SetNoDataValue(PROBABILITY_NODATA)

    @property
    def mask_band(self) -> gdal.Band:
        return self.mask_ds.GetRasterBand(1)

    def write_rows(self, y0: int, x0: int, probability: np.ndarray, mask: np.ndarray) -> None:
        """Write a window of both outputs whose top left pixel is row ``y0``, column ``x0``."""
        self.mask_band.WriteArray(mask, x0, y0)
        if self.prob_ds is not None:
            self.prob_ds.GetRasterBand(1).WriteArray(probability, x0, y0)

    def close(self) -> None:
        datasets = [self.mask_ds, self.prob_ds]
        self.mask_ds = self.prob_ds = None
        close_datasets(datasets)
