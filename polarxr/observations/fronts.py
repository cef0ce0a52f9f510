"""Front positions by the box method and ice-edge positions along transects.

**Box method** (glaciology's standard for calving-front change): a box is a rectangle along a glacier's
flow line, its upstream end on the glacier and its downstream end in the fjord beyond the front's
range. The front position is the land area inside the box divided by the box's width: the mean distance
(m) from the box's upstream edge to the front, insensitive to the front's shape. Its change between
acquisitions is the front's advance (+) or retreat (-). The width is the box's short side (the flow runs
along the long side) unless the box has a ``width_m`` property. Land is counted from the class map as
pixels whose centres lie inside the box, times the pixel area.

**Transects** (ice edge): a line from the coast out to sea; the ice-edge position is the length of the
transect that lies on ice (samples every half pixel from its first vertex, nearest pixel), the distance
from the coast to the ice edge where the pack is unbroken.

A box or transect with nodata under it gives NaN for that map. Both read only the windows of the class
map under the boxes and transects (in one dask graph), never the whole map.
"""

from __future__ import annotations

import math
from pathlib import Path

import dask
import geopandas as gpd
import numpy as np
import shapely
import xarray as xr
from rasterio import features

from polarxr.classes import ICE, LAND, WATER
from polarxr.graphs import compute_together
from polarxr.observations.boundaries import ObservationError


def _ids(frame: gpd.GeoDataFrame) -> list[str]:
    for column in ("id", "glacier_id", "glacier", "name"):
        if column in frame.columns:
            return frame[column].astype(str).tolist()
    return [str(i) for i in range(len(frame))]


def _prepare(frame: gpd.GeoDataFrame, crs, kinds: tuple[str, ...], what: str, source=None) -> gpd.GeoDataFrame:
    """``frame`` checked for geometry kinds, given ``obs_id``, in ``crs`` (no CRS: WGS84 lon/lat, as GeoJSON)."""
    from polarxr.vectors import to_crs

    source = source or frame.attrs.get("source")
    if frame.crs is None:
        frame = frame.set_crs("EPSG:4326")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    wrong = frame[~frame.geom_type.isin(kinds)]
    if frame.empty or len(wrong):
        raise ObservationError(source, f"{what} must be {' or '.join(kinds)} features; found "
                                       f"{', '.join(sorted(set(wrong.geom_type))) or 'none'}")
    out = gpd.GeoDataFrame(frame.drop(columns="geometry"), geometry=frame.geometry.values, crs=frame.crs)
    if "obs_id" not in out.columns:
        out.insert(0, "obs_id", _ids(frame))
    out.attrs["source"] = None if source is None else str(source)
    return to_crs(out, crs, ObservationError, source).reset_index(drop=True)


def _read(path: str | Path, crs, kinds: tuple[str, ...], what: str) -> gpd.GeoDataFrame:
    from polarxr.vectors import read_vector_file

    return _prepare(read_vector_file(path, ObservationError), crs, kinds, what, path)


def _with_widths(boxes: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    widths = []
    for index, geometry in enumerate(boxes.geometry):
        given = boxes["width_m"].iloc[index] if "width_m" in boxes.columns else None
        if given is not None and given == given and float(given) > 0:
            widths.append(float(given))
            continue
        ring = shapely.get_coordinates(geometry.minimum_rotated_rectangle)
        sides = np.hypot(*np.diff(ring[:3], axis=0).T)
        widths.append(float(sides.min()))
    return boxes.assign(width_m=widths)


def read_boxes(path: str | Path | gpd.GeoDataFrame, crs) -> gpd.GeoDataFrame:
    """Glacier boxes (polygons; a file or GeoDataFrame) in ``crs`` with ``obs_id`` (from ``id``/``glacier_id``/
    ``name``) and ``width_m`` (given, else the short side of the box's minimum rotated rectangle)."""
    if isinstance(path, gpd.GeoDataFrame):
        return _with_widths(_prepare(path, crs, ("Polygon",), "glacier boxes"))
    return _with_widths(_read(path, crs, ("Polygon",), "glacier boxes"))


def read_transects(path: str | Path | gpd.GeoDataFrame, crs) -> gpd.GeoDataFrame:
    """Transects (lines from the coast seaward; a file or GeoDataFrame) in ``crs``, with ``obs_id``."""
    if isinstance(path, gpd.GeoDataFrame):
        return _prepare(path, crs, ("LineString",), "transects")
    return _read(path, crs, ("LineString",), "transects")


def _check_inside(frame: gpd.GeoDataFrame, grid: xr.DataArray, what: str) -> None:
    left, bottom, right, top = grid.rio.bounds()
    extent = shapely.box(left, bottom, right, top)
    for obs_id, geometry in zip(frame["obs_id"], frame.geometry):
        if not geometry.within(extent):
            where = "outside" if not geometry.intersects(extent) else "partly outside"
            raise ObservationError(frame.attrs.get("source"), f"{what} {obs_id!r} lies {where} the class map "
                                   f"{grid.attrs.get('source', '')} (map bounds {tuple(round(v) for v in (left, bottom, right, top))})")


def _window(grid: xr.DataArray, bounds) -> tuple[slice, slice]:
    inverse = ~grid.rio.transform()
    cols, rows = inverse * (np.array([bounds[0], bounds[2], bounds[0], bounds[2]]),
                            np.array([bounds[1], bounds[1], bounds[3], bounds[3]]))
    r0, r1 = max(0, math.floor(rows.min()) - 1), min(grid.sizes["y"], math.ceil(rows.max()) + 1)
    c0, c1 = max(0, math.floor(cols.min()) - 1), min(grid.sizes["x"], math.ceil(cols.max()) + 1)
    return slice(r0, r1), slice(c0, c1)


def _box_land(classes: np.ndarray, geometry, transform, pixel_m2: float, width_m: float) -> float:
    inside = features.geometry_mask([geometry], classes.shape, transform, invert=True)
    under = classes[inside]
    if not under.size or not np.isin(under, (LAND, WATER, ICE)).all():
        return float("nan")
    return float(np.count_nonzero(under == LAND)) * pixel_m2 / width_m


def lazy_front_positions(grid: xr.DataArray, boxes: gpd.GeoDataFrame) -> dict[str, object]:
    """Per box id a ``dask.delayed`` front position (m from the upstream edge) on a class map ``DataArray(y, x)``."""
    _check_inside(boxes, grid, "glacier box")
    transform = grid.rio.transform()
    pixel_m2 = abs(transform.a * transform.e - transform.b * transform.d)
    out = {}
    for obs_id, geometry, width in zip(boxes["obs_id"], boxes.geometry, boxes["width_m"]):
        rows, cols = _window(grid, geometry.bounds)
        part = grid.data[rows, cols]
        local = transform * transform.translation(cols.start, rows.start)
        out[obs_id] = dask.delayed(_box_land, pure=True)(part, geometry, local, pixel_m2, float(width))
    return out


def _along(classes: np.ndarray, rows: np.ndarray, cols: np.ndarray, step: float) -> float:
    values = classes[rows, cols]
    if not np.isin(values, (LAND, WATER, ICE)).all():
        return float("nan")
    return float(np.count_nonzero(values == ICE)) * step


def lazy_ice_edge_positions(grid: xr.DataArray, transects: gpd.GeoDataFrame) -> dict[str, object]:
    """Per transect id a ``dask.delayed`` ice-edge position (m of ice along the transect) on a class map."""
    _check_inside(transects, grid, "transect")
    transform = grid.rio.transform()
    inverse = ~transform
    step = 0.5 * math.hypot(transform.a, transform.d)
    out = {}
    for obs_id, line in zip(transects["obs_id"], transects.geometry):
        n = max(1, int(line.length // step))
        points = shapely.line_interpolate_point(line, (np.arange(n) + 0.5) * step)
        xy = shapely.get_coordinates(points)
        cols, rows = inverse * (xy[:, 0], xy[:, 1])
        rows = np.clip(np.floor(rows).astype(int), 0, grid.sizes["y"] - 1)
        cols = np.clip(np.floor(cols).astype(int), 0, grid.sizes["x"] - 1)
        r0, c0 = rows.min(), cols.min()
        part = grid.data[r0:rows.max() + 1, c0:cols.max() + 1]
        out[obs_id] = dask.delayed(_along, pure=True)(part, rows - r0, cols - c0, line.length / n)
    return out


def _positions(class_map, features, read, lazy_positions, chunk: int | None) -> dict[str, float]:
    """Compute ``lazy_positions`` of ``features`` (read in the class map's CRS by ``read``) on a class map."""
    from polarxr.scenes import open_class_map

    grid = class_map if isinstance(class_map, xr.DataArray) else open_class_map(class_map, chunk)
    lazy = lazy_positions(grid, read(features, grid.rio.crs))
    return dict(zip(lazy, map(float, compute_together(*lazy.values()))))


def front_positions(class_map: str | Path | xr.DataArray, boxes: str | Path | gpd.GeoDataFrame,
                    chunk: int | None = None) -> dict[str, float]:
    """Front position (m from each box's upstream edge) per box id, by the box method (module docstring)."""
    return _positions(class_map, boxes, read_boxes, lazy_front_positions, chunk)


def ice_edge_positions(class_map: str | Path | xr.DataArray, transects: str | Path | gpd.GeoDataFrame,
                       chunk: int | None = None) -> dict[str, float]:
    """Ice-edge position (m of ice from each transect's start) per transect id (module docstring)."""
    return _positions(class_map, transects, read_transects, lazy_ice_edge_positions, chunk)


__all__ = ["front_positions", "ice_edge_positions", "lazy_front_positions", "lazy_ice_edge_positions",
           "read_boxes", "read_transects"]
