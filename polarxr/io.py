"""Writing rasters and stores from the workers, atomically, on local disk or object storage (``s3://``).

One raster writer serves the whole project (labels, class maps, ingest): :func:`cog_graph` returns a dask
graph in which the workers compress the tiles of a Cloud-Optimized GeoTIFF once, write them as parts and
one task assembles the file (odc-geo's ``save_cog_with_dask``); :func:`zarr_graph` likewise writes each
chunk of a Zarr store from the task that computed it. The client only builds graphs and commits.

The guarantee (see README, "Writing outputs"): nothing is visible under a final name until it is complete.

- **POSIX**: everything is written under a temporary sibling name (``.<name>.tmp-XXXXXXXX``) and renamed onto
  the final name when complete (:func:`atomic_path`); a killed run leaves only such names, which the next
  run of ``polarxr process`` removes.
- **Object storage**: the same temporary sibling key prefix is written first; committing copies it server-side
  onto the final keys with the metadata documents (every ``zarr.json``) last, the store's root ``zarr.json``
  the very last, then deletes the temporaries. A file (a COG) appears in one atomic copy; a Zarr store opens
  only once its root metadata is there, so a run killed while committing leaves a store that does not open
  (and is rewritten by the next run), never one that opens with missing chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import xarray as xr

#: Tile edge (px) of the COGs polarxr writes, and of their overviews.
COG_BLOCKSIZE = 512
#: DEFLATE level of COG tiles (GDAL's default).
COG_LEVEL = 6

#: Names of the temporaries :func:`atomic_path` creates (``.<name>.tmp-XXXXXXXX``, ``.<name>.old-XXXXXXXX``
#: and what is staged beside them); a run killed mid-write leaves only such names behind.
TEMPORARY_NAME = re.compile(r"^\..+\.(tmp|old)-[0-9a-f]{8}")

Target = str | Path

#: fsspec options of every remote filesystem polarxr opens: listings change under us (other runs, commits),
#: and a filesystem made earlier in the process may carry an endpoint or keys from another environment.
FSSPEC_OPTIONS = {"use_listings_cache": False, "skip_instance_cache": True}


# ------------------------------------------------------------------------------------------ locations
def is_url(path: Target) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://bucket/key``) rather than a local path."""
    return "://" in str(path)


def as_target(path: Target) -> Target:
    """A local :class:`Path` or a URL string, as given (``Path("s3://b/k")`` would lose a slash)."""
    return str(path) if is_url(path) else Path(path)


def as_path(path: Target):
    """A pathlib-like path: :class:`Path` locally, a universal_pathlib ``UPath`` for URLs (``s3://``).

    Pass ``str(path)`` to GDAL, rasterio, pyogrio and torch: they read URLs themselves (``/vsis3/``).
    """
    if is_url(path):
        from upath import UPath

        return UPath(str(path), **FSSPEC_OPTIONS)
    return Path(path)


def open_binary(path: Target, mode: str = "rb"):
    """A binary file object of a local path or a URL (fsspec)."""
    import fsspec

    return fsspec.open(str(path), mode, **(FSSPEC_OPTIONS if is_url(path) else {})).open()


def size_of(path: Target) -> int:
    """Bytes of a file, or of all files of a folder (a Zarr store); -1 when missing. Local or URL."""
    if is_url(path):
        fs = filesystem(path)
        fs.invalidate_cache()
        if not fs.exists(str(path)):
            return -1
        return int(fs.du(str(path), total=True)) if fs.isdir(str(path)) else int(fs.size(str(path)))
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else -1


def local_copy(path: Target) -> Path:
    """``path`` itself when local; for a URL, a copy in this machine's temporary folder, fetched once per
    version of the object (keyed by URL and ETag/modification time) and shared by the processes here."""
    if not is_url(path):
        return Path(path)
    import hashlib
    import tempfile

    fs = filesystem(path)
    fs.invalidate_cache()
    info = fs.info(str(path))
    version = str(info.get("ETag") or info.get("LastModified") or info.get("mtime") or info.get("size"))
    key = hashlib.sha256(f"{path}|{version}".encode()).hexdigest()[:16]
    local = Path(tempfile.gettempdir()) / "polarxr-cache" / key / name_of(path)
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(local)
        fs.get(str(path), str(tmp))
        os.replace(tmp, local)
    return local


def name_of(path: Target) -> str:
    """The last part of a path or URL."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def sibling(path: Target, name: str) -> Target:
    """``name`` in the folder (or key prefix) of ``path``."""
    if is_url(path):
        return str(path).rstrip("/").rsplit("/", 1)[0] + "/" + name
    return Path(path).with_name(name)


def filesystem(path: Target):
    """The fsspec filesystem of a URL (s3fs for ``s3://``; endpoint and keys from the ``AWS_*`` environment)."""
    import fsspec

    return fsspec.core.url_to_fs(str(path), **FSSPEC_OPTIONS)[0]


def exists(path: Target) -> bool:
    """Whether a file or folder (local) or an object or prefix (URL) exists."""
    if not is_url(path):
        return Path(path).exists()
    fs = filesystem(path)
    fs.invalidate_cache()
    return fs.exists(str(path))


def remove(path: Target) -> None:
    """Delete a file or folder, local or remote, if it is there."""
    if not is_url(path):
        path = Path(path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return
    fs = filesystem(path)
    with contextlib.suppress(FileNotFoundError):
        root = str(path).rstrip("/") + "/zarr.json"
        if fs.exists(root):  # a store stops opening before its chunks go
            fs.rm(root)
        fs.rm(str(path), recursive=True)
    fs.invalidate_cache()


def _temporary(path: Target, kind: str = "tmp") -> Target:
    return sibling(path, f".{name_of(path)}.{kind}-{uuid.uuid4().hex[:8]}")


def _parts_of(tmp: Target) -> Target:
    # where odc-geo's file sink stages a COG's parts (a TEMPORARY_NAME too)
    return sibling(tmp, f".{name_of(tmp)}.parts")


def _commit_remote(tmp: str, path: str) -> None:
    """Copy ``tmp`` onto ``path`` server-side, metadata documents last (root last), then delete ``tmp``."""
    fs = filesystem(path)
    fs.invalidate_cache()
    if fs.isfile(tmp):
        fs.copy(tmp, path)
        fs.rm(tmp)
        return
    remove(path)
    prefix = tmp.rstrip("/")
    keys = [k for k in fs.find(prefix)]
    scheme = str(path).split("://", 1)[0] + "://"

    def order(key: str) -> tuple[int, int]:
        is_metadata = key.endswith("zarr.json")
        return (int(is_metadata), -key.count("/") if is_metadata else 0)

    for key in sorted(keys, key=order):
        relative = key[len(prefix.split("://", 1)[-1]):].lstrip("/")
        fs.copy(scheme + key if "://" not in key else key, path.rstrip("/") + "/" + relative)
    fs.rm(prefix, recursive=True)
    fs.invalidate_cache()


def write_bytes_atomic(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to the local file ``path`` through a temporary file in the same folder (created with
    ``mode``, else the default permissions of ``mkstemp``: 0600), renamed onto ``path``: a reader sees the
    old file or the whole new one, never a part."""
    import tempfile

    path = Path(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: Target) -> Iterator[Target]:
    """Yield a temporary sibling of ``path``; on success move it onto ``path``, on failure remove it.

    Works for files and folders (Zarr stores), local paths (a rename; an existing folder at ``path`` is
    replaced whole) and ``s3://`` URLs (a server-side copy, metadata last; see the module docstring).
    """
    path = as_target(path)
    if not is_url(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        yield tmp
        if is_url(path):
            _commit_remote(tmp, path)
        elif path.is_dir() and tmp.is_dir():
            old = _temporary(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        for leftover in (tmp, _parts_of(tmp)):
            if exists(leftover):
                remove(leftover)


@contextlib.contextmanager
def scratch_path(path: Target, what: str) -> Iterator[Target]:
    """Yield a temporary sibling of ``path`` for intermediate data (``what`` names it); removed on exit,
    whatever happens. Its name is a :data:`TEMPORARY_NAME`, so a killed run's leftovers are recognised."""
    tmp = _temporary(sibling(path, f"{name_of(path)}.{what}"))
    try:
        yield tmp
    finally:
        if exists(tmp):
            remove(tmp)


@contextlib.contextmanager
def output_lock(paths) -> Iterator[None]:
    """Hold every local output of ``paths`` for this run; another run writing any of them is refused.

    Raises :class:`polarxr.errors.OutputBusyError` naming the output. The locks are advisory file locks
    (``flock``) in this machine's temporary folder, keyed by the absolute path, released when the run ends
    or dies: they serialize runs on one machine. Object-storage outputs are not locked (S3 has no locks:
    two runs there both write complete outputs and the last commit wins).
    """
    import hashlib
    import tempfile

    from filelock import FileLock, Timeout

    from polarxr.errors import OutputBusyError

    folder = Path(tempfile.gettempdir()) / "polarxr-locks"
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        for path in paths:
            if path is None or is_url(path):
                continue
            absolute = str(Path(path).absolute())
            lock = FileLock(folder / f"{hashlib.sha256(absolute.encode()).hexdigest()[:24]}.lock", timeout=0,
                            thread_local=False)
            try:
                held.enter_context(lock)
            except Timeout:
                raise OutputBusyError(absolute, "is being written by another polarxr run; wait for it to finish "
                                                "or write elsewhere") from None
        yield


# ------------------------------------------------------------------------------------------ COG
def _gdal_items(tags: dict[str, str]) -> list[str]:
    from xml.sax.saxutils import escape

    return [f'<Item name="{escape(str(k))}">{escape(str(v))}</Item>' for k, v in tags.items()]


def _exact_header(tiles, *, height: int, width: int, **patch_kw) -> bytes:
    """odc-geo's COG header, with every level's size set back to the raster's own (see :func:`cog_graph`).

    Also refuses a COG with a tile that failed to compress (odc-geo leaves such a tile empty, which
    would read as nodata: silently wrong output).
    """
    import tifffile
    from odc.geo.cog._tifffile import _patch_hdr

    failed = [idx for size, idx in tiles if size == 0]
    if failed:
        raise RuntimeError(f"{len(failed)} COG tile(s) failed to compress, e.g. {failed[0]}")
    header = BytesIO(_patch_hdr(tiles, **patch_kw))
    with tifffile.TiffFile(header, mode="r+", name=":mem:") as tif:
        for level, page in enumerate(tif.pages):
            page.tags[256].overwrite(math.ceil(width / 2**level))
            page.tags[257].overwrite(math.ceil(height / 2**level))
    return header.getvalue()


def cog_graph(data: xr.DataArray, path: Target, nodata: float | int | None = None,
              description: str | None = None, tags: dict[str, str] | None = None, categorical: bool = False):
    """A dask ``Delayed`` that writes a (lazy) ``DataArray(y, x)`` with a CRS as a COG at ``path``.

    Workers compress each 512 px tile once (DEFLATE, libdeflate through imagecodecs; horizontal predictor for
    integers unless ``categorical``: class codes are not a signal, and their differences compress worse,
    ``benchmarks/results/writing_cpu.md``), write the tiles as parts
    (local: ``.<name>.parts/`` beside ``path``; ``s3://``: a multipart upload, invisible until complete) and
    one task joins them behind the header; overviews (nearest neighbour, halving down to one tile) are
    computed by the workers too. Nothing passes through the client. ``path`` is written as given: wrap it
    in :func:`atomic_path` (as :func:`write_cog` does) for an atomic result.

    Built on odc-geo's ``save_cog_with_dask`` (the field's dask COG writer, local and S3 alike). It pads
    the raster at the bottom and right to a multiple of 2**levels so that every overview halves exactly;
    the header is set back to the raster's true size here (the tile counts are the same because the tile
    edge is a multiple of that padding), so the COG lies exactly on the input grid. ``tags`` become GDAL
    metadata items, ``description`` the band description.
    """
    import odc.geo.xr  # noqa: F401  (registers the .odc accessor)
    from odc.geo.cog import save_cog_with_dask
    from odc.geo.cog._mpu import mpu_write
    from odc.geo.cog._mpu_fs import MPUFileSink

    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    data = data.drop_vars([c for c in data.coords if c not in ("y", "x", "spatial_ref")])
    if data.ndim == 3:  # (band, y, x): the band names become the band descriptions
        names = [str(b) for b in (data.attrs.get("band_names") or range(1, data.shape[0] + 1))]
        data = data.assign_coords({data.dims[0]: np.array(names, dtype=str)})
    if nodata is not None:
        data = data.rio.write_nodata(nodata, encoded=False)
    data = data.copy()
    data.attrs = {**({"long_name": description or data.name or "band 1"} if data.ndim == 2 else {}),
                  **({"nodata": nodata} if nodata is not None else {})}
    height, width = data.shape[-2:]
    # horizontal differencing for integer signals; floats go without (not measured with the float predictor)
    predictor = 2 if np.issubdtype(data.dtype, np.integer) and not categorical else 1
    parts = save_cog_with_dask(data, "", compression="DEFLATE", level=COG_LEVEL, predictor=predictor,
                               blocksize=[COG_BLOCKSIZE, COG_BLOCKSIZE], overview_resampling="nearest",
                               stats=False, bigtiff=True)
    from odc.geo.cog._tifffile import _band_names, _gdal_sample_descriptions

    user_kw = {"meta": parts["meta"], "hdr0": parts["hdr0"], "stats": None, "height": height, "width": width,
               "gdal_metadata_extra": _gdal_sample_descriptions(_band_names(data)) + _gdal_items(tags or {})}
    tiles = parts["tiles"][::-1]  # smallest overview first, full resolution last: the COG order
    if is_url(path):
        import dask.bag
        from odc.geo.cog._s3 import S3MultiPartUpload, s3_parse_url

        if len(tiles) > 4:  # odc-geo's own grouping of small overview levels into one sub-stream
            tiles = [dask.bag.concat(tiles[:4]), *tiles[4:]]
        bucket, key = s3_parse_url(str(path))
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        upload = S3MultiPartUpload(bucket, key, endpoint_url=endpoint)
        # started here, so the tasks carry the upload id: odc-geo would otherwise start it from the first
        # task under a distributed.Lock, whose call no longer fits distributed >= 2025
        upload.initiate(ContentType="image/tiff; application=geotiff; profile=cloud-optimized")
        return upload.upload(tiles, mk_header=_exact_header, user_kw=user_kw)
    return mpu_write(tiles, MPUFileSink(os.fspath(path)), mk_header=_exact_header, user_kw=user_kw)


def write_cog(data: xr.DataArray, path: Target, nodata: float | int | None = None,
              description: str | None = None, categorical: bool = False, **tags: str) -> Target:
    """Write a (lazy) ``DataArray(y, x)`` with a CRS to a Cloud-Optimized GeoTIFF at ``path`` (local or ``s3://``).

    Computed on the active dask scheduler (workers write their tiles; see :func:`cog_graph`); memory stays
    bounded by the chunks. ``tags`` are written as GDAL metadata; ``categorical`` for class maps and labels
    (no predictor). Atomic (:func:`atomic_path`). Returns ``path``.
    """
    import dask

    with atomic_path(path) as tmp:
        dask.compute(cog_graph(data, tmp, nodata=nodata, description=description, tags=tags,
                               categorical=categorical))
    return as_target(path)


# ------------------------------------------------------------------------------------------ Zarr
def storage_options(path: Target) -> dict | None:
    """fsspec options for xarray/zarr of a URL (None locally): listings are not cached, as stores change."""
    return dict(FSSPEC_OPTIONS) if is_url(path) else None


def zarr_graph(dataset: xr.Dataset, path: Target):
    """A dask ``Delayed`` writing every chunk of ``dataset`` into a Zarr v3 store at ``path`` from its task.

    Metadata and coordinates are written now, by the client; the dask chunks of the data variables must
    each cover whole Zarr chunks (their ``encoding["chunks"]``), so no two tasks write the same chunk.
    """
    return dataset.to_zarr(str(path) if is_url(path) else path, mode="w", zarr_format=3, consolidated=False,
                           compute=False, storage_options=storage_options(path))


def write_zarr(obj: xr.Dataset | xr.DataArray, path: Target) -> Target:
    """Write a (lazy) Dataset or DataArray to a Zarr v3 store at ``path``, atomically, chunks from the workers.

    Integer nodata codes (such as 255 = no label) are kept as values and recorded in the ``nodata``
    attribute rather than as a fill value, so that xarray does not turn them into NaN on opening.
    """
    import dask

    dataset = obj.to_dataset() if isinstance(obj, xr.DataArray) else obj.copy()
    for name, var in dataset.data_vars.items():
        if np.issubdtype(var.dtype, np.integer) and "_FillValue" in var.attrs:
            var.attrs["nodata"] = var.attrs.pop("_FillValue")
            var.encoding["_FillValue"] = None
    with atomic_path(path) as tmp:
        dask.compute(zarr_graph(dataset, tmp))
    return as_target(path)


def cog_problems(path: Target) -> list[str]:
    """What keeps the GeoTIFF at ``path`` from being cloud-optimized (empty list: it is one).

    A COG here: tiled, every IFD (the full image and its overviews, each half the previous) before any
    tile data, overview tiles before the full-resolution ones, so a reader needs the first bytes for the
    layout and then one range request per tile.
    """
    import fsspec
    import tifffile

    problems = []
    with fsspec.open(str(path), "rb") as fh, tifffile.TiffFile(fh) as tif:
        pages = list(tif.pages)
        ifd_end = max(page.offset for page in pages)
        first_data = {i: min((o for o in page.dataoffsets if o), default=0) for i, page in enumerate(pages)}
        if not all(page.is_tiled for page in pages):
            problems.append("not tiled")
        if min(first_data.values()) < ifd_end:
            problems.append("tile data before the last IFD")
        for i in range(1, len(pages)):
            if pages[i].imagewidth != math.ceil(pages[i - 1].imagewidth / 2):
                problems.append(f"overview {i} is not half of level {i - 1}")
            if first_data[i] > first_data[i - 1]:
                problems.append(f"overview {i} tiles after those of level {i - 1}")
        largest = max(pages[0].imagewidth, pages[0].imagelength)
        if largest > COG_BLOCKSIZE * 2 and len(pages) < 2:
            problems.append("no overviews")
    return problems


def file_sha256(path: Target, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file (local or a URL), read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open_binary(path) as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
