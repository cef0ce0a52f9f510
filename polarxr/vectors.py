"""Vector files shared by ice charts and regions of interest: reading, repairing, reprojecting.

Each function takes the error class to raise, so that a chart's problem is a ``ChartError`` and a
region's a ``RegionError``, both naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from pyproj import CRS
from pyproj.exceptions import CRSError, ProjError

from polarxr.errors import PolarxrError

POLYGONAL = frozenset({"Polygon", "MultiPolygon"})


def read_vector_file(path: str | Path, error: type[PolarxrError]) -> gpd.GeoDataFrame:
    """Read a shapefile, GeoJSON or GeoPackage; ``error`` for a missing or unreadable file."""
    from polarxr.io import as_path

    path = as_path(path)
    if not path.exists():
        raise error(path, "file does not exist")
    try:
        return gpd.read_file(str(path))
    except Exception as err:  # pyogrio raises several types for corrupt files
        raise error(path, f"not a readable vector file ({err})") from None


def polygonal(geometries) -> list[shapely.Geometry]:
    """``make_valid`` each geometry and keep only its polygonal parts, one (possibly empty) shape each."""
    fixed = shapely.make_valid(np.asarray(geometries, dtype=object))
    return [shapely.union_all([p for p in shapely.get_parts(f) if p.geom_type in POLYGONAL]) for f in fixed]


def to_crs(frame: gpd.GeoDataFrame, crs: CRS | str, error: type[PolarxrError],
           source: str | Path | None = None) -> gpd.GeoDataFrame:
    """``frame`` in ``crs``; ``error`` naming ``source`` when no transformation exists or it yields infinities."""
    source = source or frame.attrs.get("source")
    try:
        target = CRS.from_user_input(crs)
        if CRS.from_user_input(frame.crs) == target:
            return frame
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = frame.to_crs(target)
    except (CRSError, ProjError, ValueError) as err:
        raise error(source, f"cannot transform CRS {crs_name(frame.crs)} to {crs_name(crs)}: {err}") from None
    if not np.isfinite(out.total_bounds).all():
        raise error(source, f"cannot transform CRS {crs_name(frame.crs)} to {crs_name(crs)}: coordinates become infinite")
    out.attrs["source"] = None if source is None else str(source)
    return out


def crs_name(crs) -> str:
    """A short name of a CRS for messages: ``EPSG:3413``, else its name or its projection method."""
    crs = CRS.from_user_input(crs)
    epsg = crs.to_epsg()
    if epsg:
        return f"EPSG:{epsg}"
    if crs.name and crs.name.lower() != "unknown":
        return crs.name
    operation = crs.coordinate_operation
    return operation.method_name if operation is not None else crs.type_name
