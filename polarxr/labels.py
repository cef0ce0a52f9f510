"""Ice charts: read and validate them (shapefile, GeoPackage, GeoJSON; the ExtremeEarth charts' ``poly_type``
and operational SIGRID-3 charts' ``POLY_TYPE`` with codes I / L / W / S / N, in any CRS), and rasterize them
chunk-aligned onto a scene's grid.

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


#: SIGRID-3 ``POLY_TYPE`` letters -> label code (None: no data, the polygon is dropped). ``S`` (ice shelf:
#: floating glacier ice, attached to the land and charted with it) counts as land by default, since polarxr's
#: ice class is sea ice; ``N`` (no data: not charted) gives no label. Override with ``class_map``.
CHART_CODES: dict[str, int | None] = {**CLASS_CODES, "S": LAND, "N": None}
#: Targets a ``class_map`` may name: a class letter, or no data.
_TARGETS: dict[str, int | None] = {**CLASS_CODES, "NODATA": None, "NONE": None, "255": None}


def parse_class_map(text: str | dict | None, where: object = None) -> dict[str, int | None]:
    """``"S=L,N=nodata"`` (or a dict of letters) -> ``{letter: code or None}`` overriding :data:`CHART_CODES`."""
    if not text:
        return {}
    items = text.items() if isinstance(text, dict) else (item.partition("=")[::2] for item in str(text).split(","))
    out = {}
    for letter, target in items:
        letter, key = str(letter).strip().upper(), str(target).strip().upper()
        if not letter or key not in _TARGETS:
            raise ChartError(where, f"class map item {letter}={target} is not CODE=L, W, I or nodata")
        out[letter] = _TARGETS[key]
    return out


def _poly_type_column(chart: gpd.GeoDataFrame, path: Path) -> str:
    """The chart's ``poly_type`` column, in any spelling (SIGRID-3 writes ``POLY_TYPE``)."""
    found = [c for c in chart.columns if str(c).lower() == "poly_type"]
    if not found:
        raise ChartError(path, f"has no 'poly_type' column (any case; columns: {', '.join(map(str, chart.columns))})")
    if len(found) > 1:
        raise ChartError(path, f"has several poly_type columns {found}")
    return found[0]


def read_chart(path: str | Path, crs: CRS | str | None = None,
               class_map: str | dict | None = None) -> gpd.GeoDataFrame:
    """Read and validate an ice chart (shapefile, GeoPackage or GeoJSON, any CRS); optionally reproject it.

    The class column is ``poly_type`` in any case (``POLY_TYPE`` in SIGRID-3). Letters map by
    :data:`CHART_CODES` (L, W, I; S ice shelf -> land; N no data -> dropped), overridden by ``class_map``
    (``"S=I,N=nodata"`` or a dict). Returns the polygons with an added ``class_code`` column (uint8, L=0
    W=1 I=2). Invalid geometries are repaired with ``make_valid`` (keeping their polygonal parts); empty
    geometries are dropped. Raises :class:`ChartError` for an unreadable file, a missing ``poly_type``,
    unknown class codes, a chart without polygons or without a CRS, or a CRS that cannot be transformed to
    ``crs``.
    """
    from polarxr.io import as_path

    path = as_path(path)
    codes = {**CHART_CODES, **parse_class_map(class_map, path)}
    chart = read_vector_file(path, ChartError)
    column = _poly_type_column(chart, path)
    chart = chart[chart.geometry.notna() & ~chart.geometry.is_empty].copy()
    if chart.empty:
        raise ChartError(path, "is empty: no polygons")
    letters = chart[column].astype(str).str.strip().str.upper()
    unknown = sorted(set(letters) - set(codes))
    if unknown:
        known = ", ".join(f"{k}={'nodata' if v is None else 'LWI'[v]}" for k, v in codes.items())
        raise ChartError(path, f"unknown poly_type codes {unknown}; known: {known} (map others with "
                               "--class-map CODE=L|W|I|nodata)")
    if chart.crs is None:
        raise ChartError(path, "has no CRS (.prj missing); charts must carry their projection")
    mapped = letters.map(codes)
    chart = chart[mapped.notna()].copy()
    if chart.empty:
        raise ChartError(path, "holds only polygons without data (poly_type mapped to nodata)")
    chart["class_code"] = mapped[mapped.notna()].astype(np.uint8)
    chart["geometry"] = _repair(chart.geometry)
    chart = chart[~chart.geometry.is_empty]
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


def rasterize_chart(chart: gpd.GeoDataFrame | str | Path, scene: xr.DataArray,
                    class_map: str | dict | None = None) -> xr.DataArray:
    """Rasterize an ice chart onto the exact grid of ``scene``, lazily and chunk-aligned.

    ``scene`` is a ``DataArray(band, y, x)`` or ``(y, x)`` with a CRS (rioxarray); the chart is reprojected
    to that CRS. Returns ``DataArray(y, x)`` uint8 with the scene's coordinates, CRS and y/x chunks:
    L=0, W=1, I=2, 255 where no polygon covers a pixel centre or where the scene has no data.
    Each block is rasterized from only the polygons intersecting it. ``class_map`` as :func:`read_chart`
    (for a chart given as a path).
    """
    if scene.rio.crs is None:
        raise ChartError(scene.attrs.get("source"), "the scene has no CRS to rasterize the chart onto")
    if not isinstance(chart, gpd.GeoDataFrame):
        chart = read_chart(chart, class_map=class_map)
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
    scene_path: str | Path, chart_path: str | Path, chunks: dict[str, int] | int | None = None,
    class_map: str | dict | None = None,
) -> tuple[xr.DataArray, xr.DataArray]:
    """Open a scene lazily and rasterize its chart onto it: ``(scene(band, y, x), labels(y, x))``."""
    scene = open_scene(scene_path, chunks=chunks)
    return scene, rasterize_chart(chart_path, scene, class_map)
