"""Regions of interest: a polygon file (GeoJSON, shapefile, GeoPackage) to clip statistics and processing to.

A region file without a CRS is taken as WGS84 longitude/latitude, as GeoJSON prescribes. Its polygons
are merged into one area; invalid polygons are repaired. Masks are rasterized chunk-aligned with the
same per-block machinery as the ice charts (:func:`polarxr.labels.rasterize_chart`): a pixel is inside
when its centre is.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
import xarray as xr
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError

from polarxr.classes import NO_LABEL, WATER
from polarxr.errors import PolarxrError
from polarxr.labels import rasterize_chart

WGS84 = "EPSG:4326"


class RegionError(PolarxrError):
    """A region of interest that cannot be used (unreadable, no polygons, or not overlapping the data)."""


def read_region(path: str | Path, crs: CRS | str | None = None) -> gpd.GeoDataFrame:
    """Read a region of interest as a one-row GeoDataFrame (its polygons merged), optionally in ``crs``.

    Raises :class:`RegionError` for a missing or unreadable file, a file without polygons, or a CRS that
    cannot be transformed to ``crs``.
    """
    path = Path(path)
    if not path.exists():
        raise RegionError(path, "region file does not exist")
    try:
        frame = gpd.read_file(path)
    except Exception as err:  # pyogrio raises several types for corrupt files
        raise RegionError(path, f"not a readable vector file ({err})") from None
    geoms = frame.geometry[frame.geometry.notna() & ~frame.geometry.is_empty]
    parts = shapely.get_parts(shapely.make_valid(geoms.values)) if len(geoms) else np.array([])
    polygons = [g for g in parts if g.geom_type in {"Polygon", "MultiPolygon"}]
    if not polygons:
        raise RegionError(path, "holds no polygons; a region of interest must be a polygon (e.g. a GeoJSON Polygon)")
    region = gpd.GeoDataFrame({"name": [path.stem]}, geometry=[shapely.union_all(polygons)],
                              crs=frame.crs if frame.crs is not None else WGS84)
    region.attrs["source"] = str(path)
    return region if crs is None else reproject_region(region, crs)


def reproject_region(region: gpd.GeoDataFrame, crs: CRS | str) -> gpd.GeoDataFrame:
    """``region`` in ``crs``; :class:`RegionError` naming the region file when no transformation exists."""
    source = region.attrs.get("source")
    try:
        target = CRS.from_user_input(crs)
        if CRS.from_user_input(region.crs) == target:
            return region
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = region.to_crs(target)
    except (CRSError, ProjError, ValueError) as err:
        raise RegionError(source, f"cannot transform the region from {region.crs} to {crs}: {err}") from None
    if not np.isfinite(out.total_bounds).all():
        raise RegionError(source, f"cannot transform the region to {crs}: coordinates become infinite")
    out.attrs["source"] = source
    return out


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


def check_intersects(region: gpd.GeoDataFrame, bounds: tuple[float, float, float, float], crs: CRS | str,
                     what: str | Path) -> None:
    """Raise :class:`RegionError` naming ``what`` when the rectangle ``bounds`` in ``crs`` misses ``region``."""
    if not reproject_region(region, crs).geometry.iloc[0].intersects(shapely.box(*bounds)):
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
