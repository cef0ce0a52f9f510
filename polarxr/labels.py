"""Ice charts: read and validate shapefiles, and rasterize them chunk-aligned onto a scene's grid.

Label codes (:mod:`polarxr.classes`): land 0, water/sea 1, ice 2, 255 = no label (outside every polygon,
or where the scene has no data).

Overlaps: where polygons of a chart overlap, **land wins over ice, and ice over water** (the chart's land
mask is authoritative, and ice polygons are drawn on top of the open sea). Among polygons of one class
the order does not matter. The rule is applied identically in every block, so the result does not
depend on the chunking.
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import geopandas as gpd
import numpy as np
import shapely
import xarray as xr
from affine import Affine
from pyproj import CRS
from rasterio import features

from polarxr.classes import CLASS_CODES, ICE, LAND, NO_LABEL, WATER
from polarxr.errors import ChartError
from polarxr.scenes import open_scene, valid_mask
from polarxr.vectors import crs_name, polygonal, read_vector_file, to_crs

#: Drawing order: later classes overwrite earlier ones where polygons overlap.
OVERLAP_PRIORITY: tuple[int, ...] = (WATER, ICE, LAND)
#: Egg-code columns of the ExtremeEarth charts (99 = unset).
EGG_CODE_COLUMNS: tuple[str, ...] = ("CA", "SA", "FA", "CB", "SB", "FB", "CT")


def read_chart(path: str | Path, crs: CRS | str | None = None) -> gpd.GeoDataFrame:
    """Read and validate an ice chart shapefile; optionally reproject it to ``crs``.

    Returns the polygons with an added ``class_code`` column (uint8, L=0 W=1 I=2). Invalid geometries
    are repaired with ``make_valid`` (keeping their polygonal parts); empty geometries are dropped.
    Raises :class:`ChartError` for an unreadable file, a missing ``poly_type``, unknown class codes,
    a chart without polygons or without a CRS, or a CRS that cannot be transformed to ``crs``.
    """
    from polarxr.io import as_path

    path = as_path(path)
    chart = read_vector_file(path, ChartError)
    if "poly_type" not in chart.columns:
        raise ChartError(path, f"has no 'poly_type' column (columns: {', '.join(map(str, chart.columns))})")
    chart = chart[chart.geometry.notna() & ~chart.geometry.is_empty].copy()
    if chart.empty:
        raise ChartError(path, "is empty: no polygons")
    letters = chart["poly_type"].astype(str).str.strip().str.upper()
    unknown = sorted(set(letters) - set(CLASS_CODES))
    if unknown:
        raise ChartError(path, f"unknown poly_type codes {unknown}; expected L (land), W (water) or I (ice)")
    chart["class_code"] = letters.map(CLASS_CODES).astype(np.uint8)
    chart["geometry"] = _repair(chart.geometry)
    chart = chart[~chart.geometry.is_empty]
    if chart.crs is None:
        raise ChartError(path, "has no CRS (.prj missing); charts must carry their projection")
    if crs is not None:
        chart = reproject_chart(chart, crs, path)
    chart.attrs["source"] = str(path)
    return chart


def _repair(geometry: gpd.GeoSeries) -> gpd.GeoSeries:
    """``make_valid`` invalid shapes and keep only their polygonal parts."""
    invalid = ~geometry.is_valid
    if not invalid.any():
        return geometry
    repaired = geometry.copy()
    repaired[invalid] = polygonal(geometry[invalid].values)
    return repaired


def reproject_chart(chart: gpd.GeoDataFrame, crs: CRS | str, path: str | Path | None = None) -> gpd.GeoDataFrame:
    """Reproject a chart to ``crs``; :class:`ChartError` when no transformation exists."""
    return to_crs(chart, crs, ChartError, path)


def _block_shapes(
    chart: gpd.GeoDataFrame, transform: Affine, chunks: tuple[tuple[int, ...], tuple[int, ...]]
) -> np.ndarray:
    """Per block, the ``(geometry, code)`` pairs of the polygons that intersect it, clipped to it.

    Object array of shape ``(n_blocks_y, n_blocks_x)``. The spatial index picks the polygons; clipping to
    the block (plus one pixel) keeps each task small and its rasterization identical to a whole-scene one.
    """
    order = np.argsort([OVERLAP_PRIORITY.index(c) for c in chart["class_code"]], kind="stable")
    geoms = chart.geometry.values[order]
    codes = chart["class_code"].values[order]
    tree = shapely.STRtree(geoms)
    y_edges = np.concatenate([[0], np.cumsum(chunks[0])])
    x_edges = np.concatenate([[0], np.cumsum(chunks[1])])
    out = np.empty((len(chunks[0]), len(chunks[1])), dtype=object)
    pad = 1
    for i in range(len(chunks[0])):
        for j in range(len(chunks[1])):
            xs, ys = transform @ (
                np.array([x_edges[j] - pad, x_edges[j + 1] + pad]),
                np.array([y_edges[i] - pad, y_edges[i + 1] + pad]),
            )
            box = (min(xs), min(ys), max(xs), max(ys))
            hits = np.sort(tree.query(shapely.box(*box), predicate="intersects"))
            try:
                clipped = shapely.clip_by_rect(geoms[hits], *box)
            except shapely.errors.GEOSException:
                # GEOS cannot clip some degenerate rings; rasterizing them whole gives the same pixels
                clipped = geoms[hits]
            out[i, j] = [(g, int(c)) for g, c in zip(clipped, codes[hits]) if not g.is_empty]
    return out


def _rasterize_block(shapes: np.ndarray, transform: Affine, block_info: dict | None = None) -> np.ndarray:
    """Rasterize one block's shapes onto its window of the scene grid (uint8, 255 outside polygons)."""
    info = block_info[None]
    (y0, y1), (x0, x1) = info["array-location"]
    pairs = shapes[0, 0]  # blocks of the shapes array are 1 x 1
    shape = (y1 - y0, x1 - x0)
    if not pairs:
        return np.full(shape, NO_LABEL, dtype=np.uint8)
    return features.rasterize(
        pairs,
        out_shape=shape,
        transform=transform @ Affine.translation(x0, y0),
        fill=NO_LABEL,
        dtype=np.uint8,
    )


def rasterize_chart(chart: gpd.GeoDataFrame | str | Path, scene: xr.DataArray) -> xr.DataArray:
    """Rasterize an ice chart onto the exact grid of ``scene``, lazily and chunk-aligned.

    ``scene`` is a ``DataArray(band, y, x)`` or ``(y, x)`` with a CRS (rioxarray); the chart is reprojected
    to that CRS. Returns ``DataArray(y, x)`` uint8 with the scene's coordinates, CRS and y/x chunks:
    L=0, W=1, I=2, 255 where no polygon covers a pixel centre or where the scene has no data.
    Each block is rasterized from only the polygons intersecting it.
    """
    if scene.rio.crs is None:
        raise ChartError(scene.attrs.get("source"), "the scene has no CRS to rasterize the chart onto")
    if not isinstance(chart, gpd.GeoDataFrame):
        chart = read_chart(chart)
    source = chart.attrs.get("source")
    chart = reproject_chart(chart, scene.rio.crs, source)
    _ensure_overlap(chart, scene, source)
    if not isinstance(scene.data, da.Array):
        scene = scene.chunk()
    chunks_yx = scene.data.chunks[-2:]
    transform = scene.rio.transform()
    shapes = _block_shapes(chart, transform, chunks_yx)
    shapes_array = da.from_array(shapes, chunks=1, asarray=False, name=False)
    raster = da.map_blocks(
        _rasterize_block,
        shapes_array,
        transform=transform,
        chunks=chunks_yx,
        dtype=np.uint8,
        meta=np.empty((0, 0), dtype=np.uint8),
    )
    if "band" in scene.dims:
        raster = da.where(valid_mask(scene).data, raster, np.uint8(NO_LABEL))
    labels = xr.DataArray(
        raster,
        dims=("y", "x"),
        coords={"y": scene.y, "x": scene.x},
        name="label",
        attrs={
            "long_name": "ice chart class",
            "flag_values": [LAND, WATER, ICE],
            "flag_meanings": "land water ice",
            "no_label": NO_LABEL,
            "chart": str(source),
        },
    )
    labels = labels.rio.write_crs(scene.rio.crs).rio.write_transform(transform)
    return labels.rio.write_nodata(NO_LABEL, encoded=False)


def _plain_bounds(bounds) -> str:
    """``(left, bottom, right, top)`` as plain whole numbers: ``(500000, -1812000, 510400, -1800000)``."""
    return "(" + ", ".join(f"{float(v):.0f}" for v in bounds) + ")"


def _ensure_overlap(chart: gpd.GeoDataFrame, scene: xr.DataArray, source: str | None) -> None:
    left, bottom, right, top = scene.rio.bounds()
    c_left, c_bottom, c_right, c_top = chart.total_bounds
    if c_left >= right or c_right <= left or c_bottom >= top or c_top <= bottom:
        raise ChartError(
            source,
            f"does not overlap the scene {scene.attrs.get('source', '')} "
            f"(chart bounds {_plain_bounds(chart.total_bounds)}, scene bounds "
            f"{_plain_bounds((left, bottom, right, top))} m in {crs_name(scene.rio.crs)})",
        )


def labels_for_scene(
    scene_path: str | Path, chart_path: str | Path, chunks: dict[str, int] | int | None = None
) -> tuple[xr.DataArray, xr.DataArray]:
    """Open a scene lazily and rasterize its chart onto it: ``(scene(band, y, x), labels(y, x))``."""
    scene = open_scene(scene_path, chunks=chunks)
    return scene, rasterize_chart(chart_path, scene)
