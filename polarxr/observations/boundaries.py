"""Boundary lines: coastline, ice edge and calving fronts, extracted block by block and joined.

Each boundary is the 0.5 contour of a field on the pixel-centre grid (marching squares,
``skimage.measure.find_contours``):

- from a class map (uint8 L=0 W=1 I=2, 255 nodata): the coastline is the contour of "land" (1 on land,
  0 on sea and ice), the ice edge that of "ice" (1 on ice, 0 on sea, land left out), so lines run half way
  between the pixel centres of the two sides (diagonal across a pixel corner, not a staircase);
- from probabilities (``--probabilities``, sub-pixel): the coastline is where p(land) = p(sea) + p(ice),
  i.e. p(land) = 0.5; the ice edge where p(ice) = p(sea), i.e. p(ice) / (p(ice) + p(sea)) = 0.5, left out
  where the class map says land.

Squares with a nodata corner draw no line. Every block is extended by one pixel to the right and below
(``dask.array.overlap`` with an asymmetric depth), so each square of the grid belongs to exactly one
block; the pieces of a line cut at block borders end on exactly the same interpolated points, and the
client joins them with ``shapely.line_merge``: the result equals a whole-map extraction for any chunking.
Lines are in the class map's CRS, in map coordinates of pixel centres (metres).

Calving fronts are the coastline's parts inside glacier polygons (a polygon file, any CRS, reprojected).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import xarray as xr
from affine import Affine

from polarxr.classes import ICE, LAND, WATER
from polarxr.errors import PolarxrError
from polarxr.graphs import compute_together
from polarxr.io import as_target, atomic_path, exists, filesystem, is_url, storage_options

#: GeoPackage layers, in order.
LAYERS = ("coastline", "ice_edge", "fronts")
#: The contour level of every field.
LEVEL = 0.5


class ObservationError(PolarxrError):
    """An input of the observations (class map, probabilities, glacier or box file) that cannot be used."""


# --------------------------------------------------------------------------------------------- blocks
def _block_contours(field: np.ndarray, row0: int, col0: int, transform: Affine, level: float) -> list[np.ndarray]:
    """Contour pieces ``[(n, 2) float64 (x, y)]`` in map coordinates of one block extended by 1 px right/below.

    ``field`` float32 ``(y, x)``, NaN where no line may pass; ``row0``/``col0`` its origin in the whole grid.
    """
    from skimage.measure import find_contours

    valid = np.isfinite(field)
    if not valid.any() or min(field.shape) < 2:
        return []
    values = np.where(valid, field, 0).astype(np.float64)
    lo, hi = values[valid].min(), values[valid].max()
    if not lo < level < hi:
        return []
    out = []
    for piece in find_contours(values, level, mask=None if valid.all() else valid):
        rows = piece[:, 0] + row0 + 0.5
        cols = piece[:, 1] + col0 + 0.5
        x = transform.a * cols + transform.b * rows + transform.c
        y = transform.d * cols + transform.e * rows + transform.f
        out.append(np.column_stack([x, y]))
    return out


def lazy_contours(field: da.Array, transform: Affine, level: float = LEVEL) -> list:
    """One ``dask.delayed`` per block of ``field (y, x)``: its contour pieces (see :func:`_block_contours`)."""
    extended = da.overlap.overlap(field, depth={0: (0, 1), 1: (0, 1)}, boundary="none")
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in field.chunks]
    blocks = extended.to_delayed()
    contour = dask.delayed(_block_contours, pure=True)
    return [contour(blocks[i, j], int(starts[0][i]), int(starts[1][j]), transform, level)
            for i in range(blocks.shape[0]) for j in range(blocks.shape[1])]


def merge_pieces(pieces) -> list[shapely.LineString]:
    """Join contour pieces (``(n, 2)`` arrays, from all blocks) into whole lines with ``shapely.line_merge``."""
    lines = [shapely.linestrings(p) for block in pieces for p in block if len(p) >= 2]
    if not lines:
        return []
    merged = shapely.line_merge(shapely.multilinestrings(lines))
    return [g for g in shapely.get_parts(merged) if not g.is_empty]


# --------------------------------------------------------------------------------------------- fields
def class_fields(classes: da.Array) -> dict[str, da.Array]:
    """Lazy float32 fields ``{"coastline", "ice_edge"}`` of a class map (dask ``(y, x)`` uint8), NaN off-line."""
    valid = (classes == LAND) | (classes == WATER) | (classes == ICE)
    coast = da.where(valid, (classes == LAND).astype(np.float32), np.float32(np.nan))
    ocean = (classes == WATER) | (classes == ICE)
    edge = da.where(ocean, (classes == ICE).astype(np.float32), np.float32(np.nan))
    return {"coastline": coast.astype(np.float32), "ice_edge": edge.astype(np.float32)}


def probability_fields(probs: da.Array, classes: da.Array) -> dict[str, da.Array]:
    """Lazy float32 fields from probabilities ``(class, y, x)`` in [0, 1] (class order land, sea, ice)."""
    valid = (classes == LAND) | (classes == WATER) | (classes == ICE)
    land, sea, ice = probs[LAND], probs[WATER], probs[ICE]
    coast = da.where(valid, land, np.float32(np.nan))
    ocean_p = ice + sea
    with np.errstate(invalid="ignore", divide="ignore"):
        share = ice / da.where(ocean_p > 0, ocean_p, np.float32(1))
    edge = da.where(valid & (classes != LAND) & (ocean_p > 0), share, np.float32(np.nan))
    return {"coastline": coast.astype(np.float32), "ice_edge": edge.astype(np.float32)}


def open_probabilities(path: str | Path, like: xr.DataArray) -> da.Array:
    """Class probabilities of a ``polarxr predict`` Zarr store as lazy float32 ``(class, y, x)`` in [0, 1].

    Chunked like ``like`` (the class map). CF ``scale_factor`` is decoded by xarray; a store of raw uint8
    p x 255 (attribute ``scale``, or none) is scaled here. Raises :class:`ObservationError` for a store that
    is missing, not readable, or not on the class map's grid.
    """
    path = as_target(path)
    if not exists(path):
        raise ObservationError(path, "probability store does not exist")
    try:
        store = xr.open_zarr(str(path), consolidated=False, storage_options=storage_options(path))
        probs = store["probability"]
    except Exception as err:  # zarr and xarray raise several types for what is not a store
        raise ObservationError(path, f"not a readable probability Zarr store with a 'probability' array ({err})") from None
    if probs.ndim != 3 or probs.shape[1:] != like.shape or probs.shape[0] < 3:
        raise ObservationError(path, f"probabilities of shape {probs.shape} do not match the class map "
                                     f"{like.shape} (expected (3, {like.shape[0]}, {like.shape[1]}))")
    data = probs.data
    if np.issubdtype(probs.dtype, np.integer):
        scale = float(probs.attrs.get("scale", probs.attrs.get("scale_factor", 1 / 255)))
        steps = round(1 / scale)
        # k / 255 exactly rather than k x float32(1 / 255), which is off by an ulp
        data = (data.astype(np.float32) / np.float32(steps) if abs(steps * scale - 1) < 1e-9
                else data.astype(np.float32) * np.float32(scale))
    return data.astype(np.float32).rechunk((-1, *like.data.chunks))


# --------------------------------------------------------------------------------------------- glaciers
def read_glaciers(path: str | Path, crs) -> gpd.GeoDataFrame:
    """Glacier polygons (``id`` column) in ``crs`` from a polygon file; no CRS means WGS84 lon/lat (GeoJSON).

    The id is taken from a column ``id``, ``glacier_id`` or ``name``, else the row number.
    Raises :class:`ObservationError` for a missing or unreadable file, one without polygons, or a CRS
    that cannot be transformed.
    """
    from polarxr.vectors import polygonal, read_vector_file, to_crs

    path = Path(path)
    frame = read_vector_file(path, ObservationError)
    if frame.crs is None:
        frame = frame.set_crs("EPSG:4326")
    keep = frame.geometry.notna() & ~frame.geometry.is_empty
    frame = frame[keep]
    geoms = polygonal(frame.geometry.values)
    ids = next((frame[c].astype(str).tolist() for c in ("id", "glacier_id", "name") if c in frame.columns),
               [str(i) for i in range(len(frame))])
    out = gpd.GeoDataFrame({"glacier": ids}, geometry=geoms, crs=frame.crs)
    out = out[~out.geometry.is_empty]
    if out.empty:
        raise ObservationError(path, "holds no polygons; glacier regions must be polygons")
    out.attrs["source"] = str(path)
    return to_crs(out, crs, ObservationError, path).reset_index(drop=True)


# --------------------------------------------------------------------------------------------- whole
@dataclass(frozen=True)
class Boundaries:
    """Lines of one class map: one GeoDataFrame per layer of :data:`LAYERS`, in the map's CRS."""

    coastline: gpd.GeoDataFrame
    ice_edge: gpd.GeoDataFrame
    fronts: gpd.GeoDataFrame

    def layers(self) -> dict[str, gpd.GeoDataFrame]:
        return {name: getattr(self, name) for name in LAYERS}


def _frame(lines: list, crs, extra: dict | None = None) -> gpd.GeoDataFrame:
    geoms = np.asarray(lines, dtype=object) if lines else np.empty(0, dtype=object)
    columns = {"length_m": shapely.length(geoms) if len(geoms) else np.empty(0),
               "closed": shapely.is_closed(geoms) if len(geoms) else np.empty(0, bool),
               "n_vertices": shapely.get_num_coordinates(geoms) if len(geoms) else np.empty(0, int)}
    frame = gpd.GeoDataFrame({**(extra or {}), **columns}, geometry=gpd.GeoSeries(list(geoms), crs=crs), crs=crs)
    return frame


def front_lines(coastline: list[shapely.LineString], glaciers: gpd.GeoDataFrame) -> tuple[list, list[str]]:
    """The coastline's parts inside each glacier polygon: ``(lines, glacier ids)``."""
    lines, ids = [], []
    if not coastline:
        return lines, ids
    tree = shapely.STRtree(coastline)
    for glacier, polygon in zip(glaciers["glacier"], glaciers.geometry):
        hits = tree.query(polygon, predicate="intersects")
        if not len(hits):
            continue
        inside = shapely.line_merge(shapely.intersection(shapely.multilinestrings([coastline[i] for i in hits]), polygon))
        for part in shapely.get_parts(inside):
            if part.geom_type == "LineString" and part.length > 0:
                lines.append(part)
                ids.append(glacier)
    return lines, ids


def lazy_boundaries(classes: xr.DataArray, probabilities: da.Array | None = None) -> dict[str, list]:
    """Per line layer, the per-block delayed contour pieces of a class map ``DataArray(y, x)`` (rioxarray grid)."""
    fields = class_fields(classes.data) if probabilities is None else probability_fields(probabilities, classes.data)
    transform = classes.rio.transform()
    return {name: lazy_contours(field, transform) for name, field in fields.items()}


def extract_boundaries(
    class_map: str | Path | xr.DataArray,
    probabilities: str | Path | None = None,
    glaciers: str | Path | gpd.GeoDataFrame | None = None,
    chunk: int | None = None,
) -> Boundaries:
    """Coastline, ice edge and calving fronts of a class map, as lines in its CRS (map metres).

    ``class_map``: a class GeoTIFF (uint8 L=0 W=1 I=2, 255 nodata; projected CRS) or a lazy
    ``DataArray(y, x)`` with a rioxarray grid. ``probabilities``: the Zarr store of the same scene (sub-pixel
    lines). ``glaciers``: glacier polygons (file, any CRS, or GeoDataFrame) for the ``fronts`` layer.
    Blocks are contoured on the active dask scheduler (``chunk`` px, default the file's ~2048 px); only
    the line pieces travel to the client, which joins them. Columns: ``length_m``, ``closed``,
    ``n_vertices`` (fronts: ``glacier`` too).
    """
    from polarxr.scenes import open_class_map

    classes = class_map if isinstance(class_map, xr.DataArray) else open_class_map(class_map, chunk)
    crs = classes.rio.crs
    probs = None if probabilities is None else open_probabilities(probabilities, classes)
    glacier_frame = None
    if glaciers is not None:
        glacier_frame = glaciers if isinstance(glaciers, gpd.GeoDataFrame) else read_glaciers(glaciers, crs)
    lazy = lazy_boundaries(classes, probs)
    names = list(lazy)
    computed = compute_together(*[lazy[name] for name in names])
    lines = {name: merge_pieces(pieces) for name, pieces in zip(names, computed)}
    fronts, ids = front_lines(lines["coastline"], glacier_frame) if glacier_frame is not None else ([], [])
    return Boundaries(coastline=_frame(lines["coastline"], crs), ice_edge=_frame(lines["ice_edge"], crs),
                      fronts=_frame(fronts, crs, {"glacier": ids}))


def write_lines(layers: dict[str, gpd.GeoDataFrame], out_gpkg: str | Path, parquet: str | Path | None = None) -> Path:
    """Write line layers to a GeoPackage (one layer each, empty ones too) and optionally one GeoParquet.

    The GeoParquet holds all lines with a ``layer`` column. Both are written under a temporary name and
    renamed when complete. Returns ``out_gpkg``.
    """
    out_gpkg = as_target(out_gpkg)
    with atomic_path(out_gpkg) as tmp:
        write_gpkg(layers, tmp)
    if parquet is not None:
        frames = [f.assign(layer=name) for name, f in layers.items() if len(f)]
        crs = next(iter(layers.values())).crs
        every = (gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs) if frames
                 else gpd.GeoDataFrame({"layer": []}, geometry=gpd.GeoSeries([], crs=crs), crs=crs))
        with atomic_path(parquet) as tmp:
            every.to_parquet(tmp)
    return out_gpkg


def write_gpkg(layers: dict[str, gpd.GeoDataFrame], path: str | Path) -> Path:
    """Write layers into a GeoPackage at ``path`` (any name: staged as ``*.gpkg`` beside it, then renamed;
    a URL: written in a local temporary folder, then uploaded, as SQLite cannot write to object storage)."""
    if is_url(path):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="polarxr-gpkg-") as folder:
            local = write_gpkg(layers, Path(folder) / "layers.gpkg")
            filesystem(path).put_file(str(local), str(path))
        return path
    path = Path(path)
    staging = path.with_name(path.name + ".gpkg")  # GDAL wants the .gpkg extension
    try:
        for name, frame in layers.items():
            frame.to_file(staging, layer=name, driver="GPKG", engine="pyogrio", geometry_type=_geometry_type(frame))
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def _geometry_type(frame: gpd.GeoDataFrame) -> str:
    kinds = set(frame.geom_type.dropna())
    if not kinds:
        return "LineString" if "length_m" in frame.columns else "Point"
    return kinds.pop() if len(kinds) == 1 else "Unknown"


def read_lines(path: str | Path, layer: str) -> gpd.GeoDataFrame:
    """One layer of a lines GeoPackage written by :func:`write_lines`."""
    path = Path(path)
    if not path.exists():
        raise ObservationError(path, "file does not exist")
    try:
        return gpd.read_file(path, layer=layer)
    except Exception as err:  # pyogrio raises several types
        raise ObservationError(path, f"has no readable layer {layer!r} ({err})") from None


__all__ = ["Boundaries", "LAYERS", "ObservationError", "class_fields", "extract_boundaries", "front_lines",
           "lazy_boundaries", "lazy_contours", "merge_pieces", "open_probabilities", "probability_fields",
           "read_glaciers", "read_lines", "write_gpkg", "write_lines"]
