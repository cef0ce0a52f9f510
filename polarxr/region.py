"""Regions of interest: a polygon file (GeoJSON, shapefile, GeoPackage) to clip statistics and processing to.

A region file without a CRS is taken as WGS84 longitude/latitude, as GeoJSON prescribes. Its polygons
are merged into one area; invalid polygons are repaired. Masks are rasterized chunk-aligned with the
same per-block machinery as the ice charts (:func:`polarxr.labels.rasterize_chart`): a pixel is inside
when its centre is.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
import xarray as xr
from pyproj import CRS, Transformer

from polarxr.classes import NO_LABEL, WATER
from polarxr.errors import PolarxrError
from polarxr.labels import rasterize_chart
from polarxr.vectors import polygonal, read_vector_file, to_crs

WGS84 = "EPSG:4326"


class RegionError(PolarxrError):
    """A region of interest that cannot be used (unreadable, no polygons, or not overlapping the data)."""


def read_region(path: str | Path, crs: CRS | str | None = None) -> gpd.GeoDataFrame:
    """Read a region of interest as a one-row GeoDataFrame (its polygons merged), optionally in ``crs``.

    Raises :class:`RegionError` for a missing or unreadable file, a file without polygons, or a CRS that
    cannot be transformed to ``crs``.
    """
    path = Path(path)
    frame = read_vector_file(path, RegionError)
    geoms = frame.geometry[frame.geometry.notna() & ~frame.geometry.is_empty]
    polygons = [g for g in polygonal(geoms.values) if not g.is_empty]
    if not polygons:
        raise RegionError(path, "holds no polygons; a region of interest must be a polygon (e.g. a GeoJSON Polygon)")
    region = gpd.GeoDataFrame({"name": [path.stem]}, geometry=[shapely.union_all(polygons)],
                              crs=frame.crs if frame.crs is not None else WGS84)
    region.attrs["source"] = str(path)
    return region if crs is None else reproject_region(region, crs)


def reproject_region(region: gpd.GeoDataFrame, crs: CRS | str) -> gpd.GeoDataFrame:
    """``region`` in ``crs``; :class:`RegionError` naming the region file when no transformation exists."""
    return to_crs(region, crs, RegionError)


def bounds_footprint(bounds: tuple[float, float, float, float], crs: CRS | str, points_per_side: int = 21) -> shapely.Polygon:
    """The rectangle ``bounds`` (left, bottom, right, top) in ``crs`` as a WGS84 lon/lat polygon.

    Each side is densified to ``points_per_side`` points so that the curved outline of a polar
    stereographic rectangle is followed. Not valid for rectangles containing a pole or crossing the
    antimeridian (the Greenland scenes do neither).
    """
    left, bottom, right, top = bounds
    ring = shapely.segmentize(shapely.box(left, bottom, right, top),
                              max_segment_length=max(right - left, top - bottom) / (points_per_side - 1))
    xy = shapely.get_coordinates(ring)
    transformer = Transformer.from_crs(CRS.from_user_input(crs), WGS84, always_xy=True)
    lon, lat = transformer.transform(xy[:, 0], xy[:, 1])
    return shapely.Polygon(np.column_stack([lon, lat]))


def lonlat_footprint(geometry: shapely.Geometry, crs: CRS | str, points_per_side: int = 21) -> shapely.Geometry:
    """A (Multi)Polygon in ``crs`` as WGS84 lon/lat, its edges densified (about ``points_per_side`` points
    per side of its bounding box) so that curved outlines of the polar stereographic grid are followed."""
    left, bottom, right, top = geometry.bounds
    dense = shapely.segmentize(geometry, max_segment_length=max(right - left, top - bottom, 1e-9) / (points_per_side - 1))
    transformer = Transformer.from_crs(CRS.from_user_input(crs), WGS84, always_xy=True)
    return shapely.transform(dense, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


def check_intersects(region: gpd.GeoDataFrame, footprint: tuple[float, float, float, float] | shapely.Geometry,
                     crs: CRS | str, what: str | Path) -> None:
    """Raise :class:`RegionError` naming ``what`` when ``footprint`` (a geometry, or the rectangle of bounds
    left, bottom, right, top) in ``crs`` misses ``region``."""
    shape = shapely.box(*footprint) if isinstance(footprint, tuple) else footprint
    if shape is None or not reproject_region(region, crs).geometry.iloc[0].intersects(shape):
        lon_lat = np.round(region.to_crs(WGS84).total_bounds, 2)
        raise RegionError(what, f"lies outside the region of interest {region.attrs.get('source', '')} "
                                f"(region lon/lat bounds {tuple(lon_lat.tolist())})")


def region_mask(region: gpd.GeoDataFrame | str | Path, grid: xr.DataArray) -> xr.DataArray:
    """Lazy bool ``DataArray(y, x)`` on ``grid``'s pixels and chunks: True where a pixel centre is inside.

    ``grid`` is any ``(y, x)`` or ``(band, y, x)`` raster with a CRS (rioxarray). Raises
    :class:`RegionError` when the region does not overlap the grid.
    """
    if not isinstance(region, gpd.GeoDataFrame):
        region = read_region(region)
    source = region.attrs.get("source")
    local = reproject_region(region, grid.rio.crs)
    check_intersects(local, grid.rio.bounds(), grid.rio.crs, grid.attrs.get("source", "the raster"))
    # The chart rasterizer burns a class code per polygon; any code other than NO_LABEL marks "inside".
    shapes = local.assign(class_code=np.uint8(WATER))
    shapes.attrs["source"] = source
    grid_yx = grid.isel(band=0, drop=True) if "band" in grid.dims else grid
    inside = rasterize_chart(shapes, grid_yx) != NO_LABEL
    inside.name = "inside_region"
    inside.attrs = {"region": str(source)}
    return inside
