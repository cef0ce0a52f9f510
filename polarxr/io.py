"""Writing rasters and stores atomically: Cloud-Optimized GeoTIFFs and Zarr.

Everything is written under a temporary name beside the target and renamed into place when complete,
so an interrupted run never leaves a half-written output under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio.shutil
import xarray as xr

#: Creation options of the COGs polarxr writes (they open in QGIS, GDAL and rioxarray).
COG_OPTIONS = {"COMPRESS": "DEFLATE", "BLOCKSIZE": "512", "OVERVIEWS": "AUTO", "BIGTIFF": "IF_SAFER"}


#: Names of the temporaries :func:`atomic_path` creates (``.<name>.tmp-XXXXXXXX``, ``.<name>.old-XXXXXXXX``
#: and what is staged beside them); a run killed mid-write leaves only such names behind.
TEMPORARY_NAME = re.compile(r"^\..+\.(tmp|old)-[0-9a-f]{8}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path``, on failure remove it.

    Works for files and folders (Zarr stores): an existing folder at ``path`` is replaced whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _write_lock():
    """A lock valid for the active dask scheduler: a cluster-wide one under ``distributed``."""
    try:
        from distributed import Lock, get_client

        get_client()
        return Lock(f"polarxr-write-{uuid.uuid4().hex}")
    except (ImportError, ValueError):
        return threading.Lock()


@contextlib.contextmanager
def cog_staging(path: str | Path) -> Iterator[Path]:
    """Yield a tiled-GeoTIFF staging path; on success GDAL copies it into COG layout at ``path``.

    The staging file may be written block by block (windowed writes, dask stores); the copy into COG
    layout (DEFLATE, 512 px tiles, overviews by nearest neighbour) streams through GDAL's block cache,
    so memory stays bounded. Nothing appears under ``path`` until the COG is complete.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        staging = tmp.with_name(tmp.name + ".tiled.tif")
        try:
            yield staging
            rasterio.shutil.copy(staging, tmp, driver="COG", RESAMPLING="NEAREST", **COG_OPTIONS)
        finally:
            staging.unlink(missing_ok=True)


#: Creation options of the staging GeoTIFFs that :func:`cog_staging` converts.
STAGING_OPTIONS = {"tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "DEFLATE", "BIGTIFF": "IF_SAFER"}


def write_cog(data: xr.DataArray, path: str | Path, nodata: float | int | None = None, **tags: str) -> Path:
    """Stream a (lazy) ``DataArray(y, x)`` or ``(band, y, x)`` with a CRS to a Cloud-Optimized GeoTIFF.

    Blocks are computed on the active dask scheduler; memory stays bounded by the chunks. ``tags`` are
    written as GDAL metadata. Written under a temporary name and renamed when complete. Returns ``path``.
    """
    if nodata is not None:
        data = data.rio.write_nodata(nodata, encoded=False)
    with cog_staging(path) as staging:
        data.rio.to_raster(staging, lock=_write_lock(), tags=tags or None, **STAGING_OPTIONS)
    return Path(path)


def write_zarr(obj: xr.Dataset | xr.DataArray, path: str | Path) -> Path:
    """Write a (lazy) Dataset or DataArray to a Zarr v3 store at ``path``, atomically.

    Integer nodata codes (such as 255 = no label) are kept as values and recorded in the ``nodata``
    attribute rather than as a fill value, so that xarray does not turn them into NaN on opening.
    """
    dataset = obj.to_dataset() if isinstance(obj, xr.DataArray) else obj.copy()
    for name, var in dataset.data_vars.items():
        if np.issubdtype(var.dtype, np.integer) and "_FillValue" in var.attrs:
            var.attrs["nodata"] = var.attrs.pop("_FillValue")
            var.encoding["_FillValue"] = None
    with atomic_path(path) as tmp:
        dataset.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
    return Path(path)


def file_sha256(path: str | Path, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()
