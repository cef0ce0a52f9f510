"""Time series of sea, ice and land from class maps: areas (km²) and boundary lengths (km) per acquisition.

Everything is computed block by block with dask from the class COGs opened lazily (never a whole map in
memory):

- **Areas** of land (0), sea (1), ice (2) and nodata (255 or any other value) in km². By default they are
  areas on the WGS84 ellipsoid: each pixel's map-plane area (|det(transform)|) is divided by the
  projection's areal scale factor at the pixel (pyproj ``get_factors``, evaluated on 32 x 32 px cells
  aligned to the whole grid, so results do not depend on the chunking). In the ExtremeEarth polar
  stereographic grid the map plane overstates areas at 60-80°N by up to ~8 %, so this matters for
  science; ``ellipsoidal=False`` gives map-plane areas (pixel count x pixel area).
- **Boundary lengths** of land/sea and ice/sea in km: the number of 4-neighbour pixel pairs whose classes
  are that pair, times the length of the shared pixel edge (divided by the projection's linear scale
  k = sqrt(areal scale), exact for conformal projections such as stereographic). The pairs are found
  with ``map_overlap`` (halo 1 px); each pair is counted by the block holding its left or upper pixel,
  so pairs across block edges count exactly once. This is a pixel-staircase length, an upper bound of
  a smooth coastline's length (diagonal edges count ~4/pi too long); compare like with like.
- A **region of interest** (polygon file, any CRS) restricts both: pixels whose centres fall outside
  it are ignored, and so are boundary pairs with a pixel outside.
- **Observations** (:mod:`polarxr.observations`), in the same dask graph: iceberg counts (``icebergs``,
  and ``icebergs_ge4px`` of at least 4 px; objects touching the region's edge are not counted), front
  positions by the box method (``front_<id>_m`` per glacier box, m from its upstream edge) and ice-edge
  positions along transects (``ice_edge_<id>_m``, m of ice from the transect's start).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
from affine import Affine
from pyproj import CRS, Proj, Transformer

from polarxr.classes import CLASS_NAMES, ICE, LAND, WATER
from polarxr.errors import PolarxrError, SceneError
from polarxr.graphs import compute_together
from polarxr.io import atomic_path
from polarxr.outputs import CLASS_MAP_SUFFIX
from polarxr.scenes import open_class_map

log = logging.getLogger(__name__)

#: Columns of :func:`class_areas` / :func:`build_timeseries`: areas in km², then boundary lengths in km.
AREA_COLUMNS = ("land_km2", "sea_km2", "ice_km2", "nodata_km2")
LENGTH_COLUMNS = ("land_sea_km", "ice_sea_km")
STAT_COLUMNS = AREA_COLUMNS + LENGTH_COLUMNS
#: Edge (px) of the cells on which the projection's scale factor is evaluated.
SCALE_CELL = 32
# A code no class map uses: marks pixels outside the region of interest inside the computation.
_OUTSIDE = 254
# Bits of the per-pixel transition flags: (pair, direction) -> bit.
_LAND_SEA_RIGHT, _LAND_SEA_DOWN, _ICE_SEA_RIGHT, _ICE_SEA_DOWN = 1, 2, 4, 8


# --------------------------------------------------------------------------------------------- blocks
def _is_pair(a: np.ndarray, b: np.ndarray, p: int, q: int) -> np.ndarray:
    return ((a == p) & (b == q)) | ((a == q) & (b == p))


def _transition_flags(block: np.ndarray) -> np.ndarray:
    """uint8 flags per pixel of a halo-extended block: bits set where the pixel and its right / lower
    neighbour are land|sea (bits 1, 2) or ice|sea (bits 4, 8)."""
    out = np.zeros(block.shape, dtype=np.uint8)
    left, right = block[:, :-1], block[:, 1:]
    up, down = block[:-1, :], block[1:, :]
    out[:, :-1] |= np.where(_is_pair(left, right, LAND, WATER), _LAND_SEA_RIGHT, 0).astype(np.uint8)
    out[:, :-1] |= np.where(_is_pair(left, right, ICE, WATER), _ICE_SEA_RIGHT, 0).astype(np.uint8)
    out[:-1, :] |= np.where(_is_pair(up, down, LAND, WATER), _LAND_SEA_DOWN, 0).astype(np.uint8)
    out[:-1, :] |= np.where(_is_pair(up, down, ICE, WATER), _ICE_SEA_DOWN, 0).astype(np.uint8)
    return out


def _inverse_areal_scale(transform: Affine, crs_wkt: str, rows: tuple[int, int], cols: tuple[int, int],
                         cell: int) -> np.ndarray:
    """Per pixel of the window ``rows`` x ``cols``: true (ellipsoid) area / map-plane area, float64.

    Evaluated at the centres of ``cell`` x ``cell`` px cells aligned to the whole grid (so independent of
    the block layout) and held constant within a cell; the factor changes by < 1e-4 across a 32 px cell.
    """
    (y0, y1), (x0, x1) = rows, cols
    cy = np.arange(y0 // cell, (y1 - 1) // cell + 1)
    cx = np.arange(x0 // cell, (x1 - 1) // cell + 1)
    col_c, row_c = np.meshgrid((cx + 0.5) * cell, (cy + 0.5) * cell)
    xs, ys = transform * (col_c.ravel(), row_c.ravel())
    crs = CRS.from_wkt(crs_wkt)
    lon, lat = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True).transform(xs, ys)
    scale = np.asarray(Proj(crs).get_factors(lon, lat).areal_scale, dtype=np.float64).reshape(col_c.shape)
    per_pixel = np.repeat(np.repeat(1.0 / scale, cell, axis=0), cell, axis=1)
    oy, ox = y0 - cy[0] * cell, x0 - cx[0] * cell
    return per_pixel[oy:oy + (y1 - y0), ox:ox + (x1 - x0)]


def _block_stats(classes: np.ndarray, flags: np.ndarray, transform: Affine, crs_wkt: str | None,
                 cell: int, block_info: dict | None = None) -> np.ndarray:
    """float64 ``(1, 1, 6)``: land, sea, ice, nodata areas (km²), land/sea and ice/sea lengths (km) of a block.

    ``crs_wkt`` None: map-plane areas and lengths; else corrected by the projection's scale factor.
    """
    (y0, y1), (x0, x1) = block_info[0]["array-location"]
    pixel_km2 = abs(transform.a * transform.e - transform.b * transform.d) / 1e6
    edge_x_km = math.hypot(transform.a, transform.d) / 1e3  # edge shared with the lower neighbour
    edge_y_km = math.hypot(transform.b, transform.e) / 1e3  # edge shared with the right neighbour
    codes = classes.ravel()
    out = np.zeros((1, 1, len(STAT_COLUMNS)), dtype=np.float64)
    if crs_wkt is None:
        area = np.bincount(codes, minlength=256).astype(np.float64) * pixel_km2
        right = lambda bit: np.count_nonzero(flags & bit) * edge_y_km  # noqa: E731
        down = lambda bit: np.count_nonzero(flags & bit) * edge_x_km  # noqa: E731
    else:
        inverse = _inverse_areal_scale(transform, crs_wkt, (y0, y1), (x0, x1), cell)
        area = np.bincount(codes, weights=inverse.ravel(), minlength=256) * pixel_km2
        linear = np.sqrt(inverse)  # conformal projections: linear scale = sqrt(areal scale)
        right = lambda bit: float(linear[(flags & bit) > 0].sum()) * edge_y_km  # noqa: E731
        down = lambda bit: float(linear[(flags & bit) > 0].sum()) * edge_x_km  # noqa: E731
    out[0, 0, 0], out[0, 0, 1], out[0, 0, 2] = area[LAND], area[WATER], area[ICE]
    out[0, 0, 3] = area.sum() - area[[LAND, WATER, ICE, _OUTSIDE]].sum()
    out[0, 0, 4] = right(_LAND_SEA_RIGHT) + down(_LAND_SEA_DOWN)
    out[0, 0, 5] = right(_ICE_SEA_RIGHT) + down(_ICE_SEA_DOWN)
    return out


# --------------------------------------------------------------------------------------------- per map
def lazy_class_stats(class_map: str | Path, region=None, ellipsoidal: bool = True,
                     chunk: int | None = None) -> da.Array:
    """Lazy float64 ``(6,)`` array of :data:`STAT_COLUMNS` for one class map (see :func:`class_areas`)."""
    classes = open_class_map(class_map, chunk)
    if region is not None:
        from polarxr.region import region_mask

        classes = classes.where(region_mask(region, classes), _OUTSIDE).astype(np.uint8)
    data = classes.data
    flags = da.map_overlap(_transition_flags, data, depth=1, boundary=_OUTSIDE, trim=True,
                           dtype=np.uint8, meta=np.empty((0, 0), np.uint8))
    crs = classes.rio.crs
    per_block = da.map_blocks(
        _block_stats,
        data,
        flags,
        transform=classes.rio.transform(),
        crs_wkt=crs.to_wkt() if ellipsoidal else None,
        cell=SCALE_CELL,
        new_axis=2,
        chunks=((1,) * data.numblocks[0], (1,) * data.numblocks[1], (len(STAT_COLUMNS),)),
        dtype=np.float64,
        meta=np.empty((0, 0, 0), np.float64),
    )
    return per_block.sum(axis=(0, 1))


def class_areas(class_map: str | Path, region=None, ellipsoidal: bool = True, chunk: int | None = None) -> dict[str, float]:
    """Areas (km²) of land, sea, ice and nodata and boundary lengths (km) of land/sea and ice/sea in a class map.

    ``class_map``: GeoTIFF, uint8 L=0 W=1 I=2 255 nodata, projected CRS. ``region``: a polygon file or
    GeoDataFrame (any CRS) to count only pixels whose centres are inside it. ``ellipsoidal``: areas on the
    WGS84 ellipsoid (default) or in the map plane. Computed blockwise on the active dask scheduler.
    Returns ``{"land_km2", "sea_km2", "ice_km2", "nodata_km2", "land_sea_km", "ice_sea_km"}``.
    """
    values = lazy_class_stats(class_map, region, ellipsoidal, chunk).compute()
    return dict(zip(STAT_COLUMNS, map(float, values)))


# --------------------------------------------------------------------------------------------- series
def acquisition_time(class_map: str | Path) -> datetime:
    """Acquisition start (UTC) of a class map, from the product name in its file or folder name."""
    from polarxr.scenes import parse_product_name

    path = Path(class_map)
    for name in (path.name, path.parent.name):
        try:
            return parse_product_name(name).start.replace(tzinfo=UTC)
        except ValueError:
            continue
    raise SceneError(path, "cannot tell the acquisition time: neither the file nor its folder is named "
                           "after a Sentinel-1 product (S1A_EW_GRDM_1SDH_20180116T075430_...)")


def find_class_maps(out_dir: str | Path) -> list[Path]:
    """The class maps of a ``polarxr process`` / ``predict`` output folder (``*_class.tif``, one level deep or flat)."""

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise PolarxrError(out_dir, "is not a folder of processing outputs")
    found = sorted(set(out_dir.glob(f"*/*{CLASS_MAP_SUFFIX}")) | set(out_dir.glob(f"*{CLASS_MAP_SUFFIX}")))
    if not found:
        raise PolarxrError(out_dir, f"holds no class maps (*{CLASS_MAP_SUFFIX}); run `polarxr process` first")
    return found


#: Iceberg columns of :func:`build_timeseries` (counts per acquisition).
ICEBERG_COLUMNS = ("icebergs", "icebergs_ge4px")


def _observations(path: Path, region, chunk: int | None, boxes, transects, icebergs: bool) -> dict:
    """Lazy observations of one class map: ``{column: delayed}`` plus ``"_objects"`` (iceberg block tables)."""
    from polarxr.observations.fronts import (lazy_front_positions, lazy_ice_edge_positions, read_boxes,
                                             read_transects)
    from polarxr.observations.icebergs import lazy_objects

    classes = open_class_map(path, chunk)
    out: dict = {}
    if boxes is not None:
        local = read_boxes(boxes, classes.rio.crs)
        out.update({f"front_{k}_m": v for k, v in lazy_front_positions(classes, local).items()})
    if transects is not None:
        local = read_transects(transects, classes.rio.crs)
        out.update({f"ice_edge_{k}_m": v for k, v in lazy_ice_edge_positions(classes, local).items()})
    if icebergs:
        if region is not None:
            from polarxr.region import region_mask

            classes = classes.where(region_mask(region, classes), _OUTSIDE).astype(np.uint8)
        out["_objects"] = (lazy_objects(classes.data), classes.rio.transform())
    return out


def _vectors(source):
    """A boxes / transects file read once (any CRS; reprojected per map), or a GeoDataFrame as it is."""
    if source is None or hasattr(source, "geometry"):
        return source
    from polarxr.observations.boundaries import ObservationError
    from polarxr.vectors import read_vector_file

    frame = read_vector_file(source, ObservationError)
    frame.attrs["source"] = str(source)
    return frame


def build_timeseries(
    source: str | Path | Iterable[str | Path],
    region=None,
    csv: str | Path | None = None,
    parquet: str | Path | None = None,
    ellipsoidal: bool = True,
    chunk: int | None = None,
    fronts=None,
    transects=None,
    icebergs: bool = True,
) -> pd.DataFrame:
    """Per acquisition, the areas and boundary lengths of :func:`class_areas`, and observations, as a DataFrame.

    ``source``: an output folder of ``polarxr process`` (its ``*/<scene>_class.tif``) or class map paths.
    Indexed by ``time`` (acquisition start, UTC), sorted; columns ``scene``, the :data:`STAT_COLUMNS`,
    ``valid_km2`` (land + sea + ice), ``ice_fraction`` (ice / (ice + sea)), with ``icebergs`` the
    :data:`ICEBERG_COLUMNS`, with ``fronts`` (glacier boxes, polygon file or GeoDataFrame, any CRS)
    ``front_<id>_m``, with ``transects`` (lines) ``ice_edge_<id>_m``; then ``class_map`` and ``note``.
    All maps are reduced in one dask graph. A map that cannot be used (unreadable, outside the region,
    a box outside it) gets NaN values and its reason in ``note``; the others go on; a box file that no
    map can use raises its error. Written to ``csv`` / ``parquet`` (atomically) when given.
    """
    from polarxr.observations.icebergs import objects_to_icebergs

    paths = find_class_maps(source) if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if region is not None and not hasattr(region, "geometry"):
        from polarxr.region import read_region

        region = read_region(region)
    boxes, lines = _vectors(fronts), _vectors(transects)
    rows, lazy, errors = [], [], []
    for path in paths:
        row = {"time": acquisition_time(path), "scene": _scene_name(path), "class_map": str(path), "note": ""}
        try:
            stats = lazy_class_stats(path, region, ellipsoidal, chunk)
            observed = _observations(path, region, chunk, boxes, lines, icebergs)
            lazy.append((row, stats, observed))
        except PolarxrError as err:
            log.warning("%s", err)
            errors.append(err)
            row.update(dict.fromkeys(STAT_COLUMNS, np.nan), note=str(err))
        rows.append(row)
    if not lazy and errors and (boxes is not None or lines is not None):
        raise errors[0]
    flat, layout = [], []
    for _, stats, observed in lazy:
        names = [k for k in observed if k != "_objects"]
        blocks = observed["_objects"][0] if "_objects" in observed else np.empty((0, 0), dtype=object)
        layout.append((len(flat), names, blocks.shape))
        flat += [stats, *(observed[k] for k in names), *blocks.ravel()]
    values = compute_together(*flat)
    for (row, _, observed), (start, names, shape) in zip(lazy, layout):
        row.update(zip(STAT_COLUMNS, map(float, values[start])))
        row.update({k: float(values[start + 1 + n]) for n, k in enumerate(names)})
        if "_objects" in observed:
            first = start + 1 + len(names)
            blocks = np.empty(shape, dtype=object)
            blocks.ravel()[:] = values[first:first + blocks.size]
            bergs = objects_to_icebergs(blocks, observed["_objects"][1])
            row.update(icebergs=len(bergs), icebergs_ge4px=int((bergs["n_pixels"] >= 4).sum()))
    extra = sorted({k for row in rows for k in row if k.startswith(("front_", "ice_edge_"))})
    columns = [*ICEBERG_COLUMNS] if icebergs else []
    frame = pd.DataFrame(rows, columns=["time", "scene", *STAT_COLUMNS, *columns, *extra, "class_map", "note"])
    frame["valid_km2"] = frame[["land_km2", "sea_km2", "ice_km2"]].sum(axis=1, min_count=3)
    water_ice = frame["ice_km2"] + frame["sea_km2"]
    frame["ice_fraction"] = (frame["ice_km2"] / water_ice).where(water_ice > 0)
    frame = frame[["time", "scene", *AREA_COLUMNS, "valid_km2", "ice_fraction", *LENGTH_COLUMNS, *columns, *extra,
                   "class_map", "note"]]
    frame = frame.set_index(pd.DatetimeIndex(frame.pop("time"), name="time")).sort_index(kind="stable")
    if csv is not None:
        write_csv(frame, csv)
    if parquet is not None:
        write_parquet(frame, parquet)
    return frame


def _scene_name(class_map: Path) -> str:

    return class_map.name.removesuffix(CLASS_MAP_SUFFIX).removesuffix(".tif")


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the time series as CSV (ISO 8601 UTC times), atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, date_format="%Y-%m-%dT%H:%M:%SZ")
    return Path(path)


def write_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the time series as Parquet (pyarrow; the time index kept, UTC), atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, engine="pyarrow")
    return Path(path)


# --------------------------------------------------------------------------------------------- plot
#: Line colours of the plot (the quicklook's ice colour is near-white, unreadable on a white background).
PLOT_COLOURS = {"land_km2": "#8b7355", "sea_km2": "#143c8c", "ice_km2": "#3fa7d6",
                "land_sea_km": "#8b7355", "ice_sea_km": "#3fa7d6"}


def read_truth(path: str | Path) -> pd.DataFrame:
    """A ``truth.csv`` of ``polarxr synth`` indexed by acquisition time (UTC), for :func:`plot_timeseries`."""
    path = Path(path)
    if not path.is_file():
        raise PolarxrError(path, "truth table does not exist")
    try:
        table = pd.read_csv(path)
        times = pd.DatetimeIndex(pd.to_datetime(table.pop("start")), name="time")
    except (ValueError, KeyError, pd.errors.ParserError) as err:
        raise PolarxrError(path, f"not a truth table of `polarxr synth` with a 'start' column ({err})") from None
    return table.set_index(times.tz_localize("UTC") if times.tz is None else times)


def plot_timeseries(frame: pd.DataFrame, png: str | Path, title: str | None = None,
                    truth: pd.DataFrame | None = None) -> Path:
    """Plot areas (km²) of sea, ice and land and the land/sea and ice/sea boundary lengths (km) over time.

    Panels sharing the time axis (UTC), one marker per acquisition: areas; boundary lengths; with front
    (``front_*_m``) or ice-edge (``ice_edge_*_m``) columns, their positions (km); with ``icebergs``, the
    iceberg counts. ``truth`` (e.g. :func:`read_truth`): columns of the same names are drawn as dashed
    lines (``icebergs`` against ``icebergs_ge4px``, the truth counting objects of >= 4 px). Written to
    ``png`` atomically with matplotlib's Agg renderer (no display needed). Returns ``png``.
    """
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    if frame.empty:
        raise PolarxrError(png, "nothing to plot: the time series is empty")

    def naive(index):
        return index.tz_convert(None) if index.tz is not None else index

    times = naive(frame.index)
    truth_times = naive(truth.index) if truth is not None else None
    positions = [c for c in frame.columns if c.startswith(("front_", "ice_edge_")) and c.endswith("_m")]
    bergs = "icebergs_ge4px" in frame.columns and frame["icebergs_ge4px"].notna().any()
    n_panels = 2 + bool(positions) + bool(bergs)
    fig = Figure(figsize=(10, 3.5 * n_panels), layout="constrained")
    axes = list(fig.subplots(n_panels, 1, sharex=True, squeeze=False)[:, 0])
    ax_area, ax_len = axes[0], axes[1]

    def dashed(ax, column, colour, label):
        if truth is not None and column in truth.columns:
            ax.plot(truth_times, truth[column], linestyle="--", color=colour, alpha=0.8, label=f"{label} (truth)")

    for column in ("sea_km2", "ice_km2", "land_km2"):
        name = CLASS_NAMES[{"land_km2": LAND, "sea_km2": WATER, "ice_km2": ICE}[column]]
        ax_area.plot(times, frame[column], marker="o", color=PLOT_COLOURS[column], label=name)
        dashed(ax_area, column, PLOT_COLOURS[column], name)
    ax_area.set_ylabel("area (km²)")
    for column, label in (("land_sea_km", "land / sea boundary"), ("ice_sea_km", "ice / sea boundary")):
        ax_len.plot(times, frame[column], marker="s", color=PLOT_COLOURS[column], label=label)
    ax_len.set_ylabel("boundary length (km)")
    panel = 2
    if positions:
        ax_pos = axes[panel]
        panel += 1
        colours = iter(["#b5412b", "#2b7bb5", "#5a9e3a", "#8e44ad", "#d68910", "#17a589", "#34495e"])
        for column in positions:
            colour = next(colours, "#555555")
            label = column.removesuffix("_m").replace("front_", "front ").replace("ice_edge_", "ice edge ")
            ax_pos.plot(times, frame[column] / 1e3, marker="D", color=colour, label=label)
            if truth is not None and column in truth.columns:
                ax_pos.plot(truth_times, truth[column] / 1e3, linestyle="--", color=colour, label=f"{label} (truth)")
        ax_pos.set_ylabel("position (km; fronts from the box's upstream edge)")
    if bergs:
        ax_berg = axes[panel]
        ax_berg.plot(times, frame["icebergs_ge4px"], marker="^", color="#3fa7d6", label="icebergs >= 4 px")
        if truth is not None and "icebergs" in truth.columns:
            ax_berg.plot(truth_times, truth["icebergs"], linestyle="--", color="#3fa7d6", label="icebergs >= 4 px (truth)")
        ax_berg.set_ylabel("icebergs (count)")
    for ax in axes:
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    locator = AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes[-1].set_xlabel("acquisition time (UTC)")
    fig.suptitle(title or f"Sea, ice and land: {len(frame)} acquisitions")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(png)


__all__ = ["AREA_COLUMNS", "ICEBERG_COLUMNS", "LENGTH_COLUMNS", "STAT_COLUMNS", "acquisition_time",
           "build_timeseries", "class_areas", "find_class_maps", "lazy_class_stats", "open_class_map",
           "plot_timeseries", "read_truth", "write_csv", "write_parquet"]
