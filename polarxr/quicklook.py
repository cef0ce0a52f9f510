"""PNG quicklooks of scenes, charts and class maps, like the previews shipped with the real dataset.

Only a decimated view is ever read (``rasterio`` reads with ``out_shape``, which GDAL serves from the
file's overviews where it has them), so a full-size 15564 x 15218 scene costs a few MB. Figures are drawn
with matplotlib's Agg canvas (no display, no pyplot state) and written atomically (temporary name, then
rename). The PNG's longer side is exactly ``max_side`` pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from rasterio.enums import Resampling

from polarxr.classes import CLASS_CODES, CLASS_COLOURS, CLASS_NAMES, NO_LABEL
from polarxr.errors import SceneError
from polarxr.io import as_path, atomic_path, open_binary
from polarxr.scenes import parse_product_name, valid_pixels

_DPI = 100
_GAP = 0.01  # gap between two panels, as a fraction of the figure width


@dataclass(frozen=True)
class _View:
    """A decimated raster: ``data (band, y, x)``, map ``extent`` (left, right, bottom, top) and metadata."""

    data: np.ndarray
    extent: tuple[float, float, float, float]
    crs: object
    nodata: float | None
    units: str
    name: str


def _file_of(source: xr.DataArray) -> Path | None:
    """The GeoTIFF behind a DataArray when it still matches the file's grid (so it can be read decimated)."""
    path = source.attrs.get("source")
    if not path or not as_path(path).is_file():
        return None
    with rasterio.open(str(path)) as src:
        same = (src.height, src.width) == (source.sizes["y"], source.sizes["x"])
        bands = source.sizes.get("band", 1)
        return as_path(path) if same and bands == src.count else None


def _read_file(path: Path, max_side: int, resampling: Resampling) -> _View:
    if not path.exists():
        raise SceneError(path, "file does not exist")
    try:
        src = rasterio.open(str(path))
    except rasterio.errors.RasterioError as err:
        raise SceneError(path, f"not a readable GeoTIFF ({err})") from None
    with src:
        factor = max(1, math.ceil(max(src.height, src.width) / max_side))
        shape = (src.count, math.ceil(src.height / factor), math.ceil(src.width / factor))
        data = src.read(out_shape=shape, resampling=resampling)
        left, bottom, right, top = src.bounds
        units = src.tags().get("SIGMA0_UNITS", "dn" if src.dtypes[0] == "uint8" else "linear")
        nodata = src.nodata if src.nodata is not None else (0 if src.dtypes[0] == "uint8" else None)
        return _View(data, (left, right, bottom, top), src.crs, nodata, units.lower(), path.name)


def _read_array(source: xr.DataArray, max_side: int) -> _View:
    """Strided (nearest) decimation of a lazy DataArray; only the strided pixels are kept in memory."""
    step = max(1, math.ceil(max(source.sizes["y"], source.sizes["x"]) / max_side))
    small = source.isel(y=slice(None, None, step), x=slice(None, None, step))
    data = np.asarray(small.transpose(..., "y", "x").values)
    data = data[None] if data.ndim == 2 else data
    try:
        left, bottom, right, top = source.rio.bounds()
        crs, nodata = source.rio.crs, source.rio.nodata
    except Exception:  # no georeferencing: draw in pixel coordinates
        left, bottom, right, top = 0, source.sizes["y"], source.sizes["x"], 0
        crs, nodata = None, None
    name = Path(source.attrs.get("source", source.name or "array")).name
    return _View(data, (left, right, bottom, top), crs, nodata, str(source.attrs.get("units", "")).lower(), name)


def _view(source: str | Path | xr.DataArray, max_side: int, resampling: Resampling) -> _View:
    if isinstance(source, xr.DataArray):
        path = _file_of(source)
        return _read_file(path, max_side, resampling) if path else _read_array(source, max_side)
    return _read_file(as_path(source), max_side, resampling)


def _valid(view: _View) -> np.ndarray:
    return valid_pixels(view.data, view.nodata)


def _stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear 2-98 % stretch of the valid pixels to [0, 1]."""
    if not valid.any():
        return np.zeros(band.shape, np.float32)
    lo, hi = np.nanpercentile(band[valid], [2, 98])
    return np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _scene_rgba(view: _View) -> np.ndarray:
    """RGBA float image of a scene view: the 8-bit rendering's three bands as RGB, else HH in dB as grey."""
    valid = _valid(view)
    data = view.data.astype(np.float32)
    if view.data.dtype == np.uint8 and data.shape[0] >= 3:
        channels = [_stretch(b, valid) for b in data[:3]]
    else:
        first = data[0]
        if view.units not in ("db", "decibel", "dn"):
            with np.errstate(divide="ignore", invalid="ignore"):
                first = 10 * np.log10(first)
        grey = _stretch(np.where(np.isfinite(first), first, np.nan), valid & np.isfinite(first))
        channels = [grey] * 3
    return np.dstack([*channels, valid.astype(np.float32)])


def _class_rgba(view: _View) -> np.ndarray:
    """RGBA uint8 image of class codes in :data:`CLASS_COLOURS`; 255 and unknown codes transparent."""
    lut = np.zeros((256, 4), np.uint8)
    for code, colour in CLASS_COLOURS.items():
        if code != NO_LABEL:
            lut[code] = (*colour, 255)
    codes = view.data[0]
    if np.issubdtype(codes.dtype, np.floating):
        codes = np.where(np.isfinite(codes), codes, NO_LABEL)
    return lut[np.clip(codes, 0, 255).astype(np.uint8)]


def _title(name: str) -> str:
    """Mission, mode and acquisition time from a product name; the name itself otherwise."""
    try:
        product = parse_product_name(name)
    except ValueError:
        return name
    return (f"{product.mission} {product.mode} {product.product_type} {product.polarisation}  "
            f"{product.start:%Y-%m-%d %H:%M:%S} UTC")


def _figure(shape: tuple[int, int], panels: int, max_side: int, title: list[str]) -> tuple[Figure, list]:
    """A figure whose longer side is ``max_side`` px: title lines over ``panels`` image panels."""
    h, w = shape
    line_px = max(12, round(0.03 * max_side))
    strip = line_px * len(title) + line_px // 2
    total_w = panels * w * (1 + _GAP)
    by_width, by_height = max_side / total_w, (max_side - strip) / h
    if by_width <= by_height:  # wide: the width is the longer side
        width_px, height_px = max_side, max(strip + 1, round(by_width * h + strip))
    else:
        width_px, height_px = max(1, round(by_height * total_w)), max_side
    figure = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
    image_h = (height_px - strip) / height_px
    panel_w = 1 / panels
    axes = [figure.add_axes((i * panel_w + _GAP / 2 * panel_w, 0, panel_w * (1 - _GAP), image_h))
            for i in range(panels)]
    for ax in axes:
        ax.set_axis_off()
    # font: the line height, shrunk until the longest line fits the width (a glyph is ~0.6 em wide)
    size_pt = 0.6 * line_px * 72 / _DPI
    fits = width_px / (0.6 * size_pt * _DPI / 72)
    size_pt *= min(1.0, fits / max(len(line) for line in title))
    figure.text(0.5, 1 - 0.25 * line_px / height_px, "\n".join(title), ha="center", va="top",
                fontsize=max(size_pt, 3), linespacing=1.25)
    return figure, axes


def _legend(ax, handles: list, max_side: int) -> None:
    ax.legend(handles=handles, loc="lower right", fontsize=max(5, round(max_side / 110)), framealpha=0.8)


def _class_patches() -> list[Patch]:
    return [Patch(facecolor=np.divide(CLASS_COLOURS[c], 255), edgecolor="black", linewidth=0.4, label=CLASS_NAMES[c])
            for c in sorted(CLASS_NAMES)]


def _chart_frame(chart: str | Path | gpd.GeoDataFrame, crs) -> gpd.GeoDataFrame:
    """A chart with ``class_code``, in ``crs``: read and validated when given as a path."""
    from polarxr.labels import read_chart, reproject_chart

    if not isinstance(chart, gpd.GeoDataFrame):
        return read_chart(chart, crs=crs)
    if "class_code" not in chart.columns:
        chart = chart.assign(class_code=chart["poly_type"].astype(str).str.strip().str.upper().map(CLASS_CODES))
    return reproject_chart(chart, crs) if crs is not None and chart.crs is not None else chart


def _draw_chart(ax, chart: gpd.GeoDataFrame, extent: tuple[float, float, float, float], max_side: int) -> list:
    """Chart polygon outlines coloured by class; returns legend handles."""
    left, right, bottom, top = extent
    chart = chart.cx[left:right, bottom:top]
    width = max(0.6, max_side / 1200)
    handles = []
    for code in sorted(CLASS_NAMES):
        part = chart[chart["class_code"] == code]
        colour = np.divide(CLASS_COLOURS[code], 255)
        if len(part):
            part.boundary.plot(ax=ax, color=colour, linewidth=width)
        handles.append(Line2D([], [], color=colour, linewidth=2, label=f"{CLASS_NAMES[code]} (chart)"))
    return handles


def _show(ax, image: np.ndarray, extent: tuple[float, float, float, float]) -> None:
    ax.imshow(image, extent=extent, interpolation="nearest", aspect="auto")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])


def _save(figure: Figure, out_png: str | Path) -> Path:
    out_png = as_path(out_png)
    with atomic_path(out_png) as tmp, open_binary(tmp, "wb") as fh:
        figure.savefig(fh, format="png", dpi=_DPI, facecolor="white")
    return out_png


def scene_quicklook(scene: str | Path | xr.DataArray, out_png: str | Path,
                    chart: str | Path | gpd.GeoDataFrame | None = None, max_side: int = 1024) -> Path:
    """PNG preview of a scene, optionally with its ice chart's polygon outlines coloured by class.

    ``scene`` is a GeoTIFF path or a DataArray ``(band, y, x)`` (read decimated, never whole). The
    8-bit product is shown as RGB of its three bands, float sigma0 as HH in dB (2-98 % stretch each);
    nodata is white. ``chart`` (a shapefile path or GeoDataFrame with ``poly_type``) is drawn in the
    scene's CRS. The PNG's longer side is ``max_side`` px; written atomically. Returns ``out_png``.
    """
    view = _view(scene, max_side, Resampling.average)
    frame = None if chart is None else _chart_frame(chart, view.crs)
    title = [_title(view.name)]
    if frame is not None:
        title.append(f"chart {Path(frame.attrs.get('source', '')).name or '(GeoDataFrame)'}")
    figure, (ax,) = _figure(view.data.shape[1:], 1, max_side, title)
    _show(ax, _scene_rgba(view), view.extent)
    if frame is not None:
        _legend(ax, _draw_chart(ax, frame, view.extent, max_side), max_side)
    return _save(figure, out_png)


def class_quicklook(class_map: str | Path | xr.DataArray, out_png: str | Path,
                    scene: str | Path | xr.DataArray | None = None, max_side: int = 1024) -> Path:
    """PNG of a class map (L=0, W=1, I=2 in :data:`CLASS_COLOURS`, 255 white) with a legend.

    ``class_map`` is a GeoTIFF path or DataArray ``(y, x)``, read decimated by nearest neighbour. With
    ``scene``, the scene is shown on the left and the classes on the right, on the same extent. The PNG's
    longer side is ``max_side`` px; written atomically. Returns ``out_png``.
    """
    classes = _view(class_map, max_side, Resampling.nearest)
    scene_view = None if scene is None else _view(scene, max_side, Resampling.average)
    title = [_title(scene_view.name if scene_view else classes.name), f"classes: {classes.name}"]
    figure, axes = _figure(classes.data.shape[1:], 1 if scene is None else 2, max_side, title)
    if scene_view is not None:
        _show(axes[0], _scene_rgba(scene_view), scene_view.extent)
    _show(axes[-1], _class_rgba(classes), classes.extent)
    _legend(axes[-1], _class_patches(), max_side)
    return _save(figure, out_png)


#: Colours of the observation lines drawn by :func:`lines_quicklook`.
LINE_COLOURS = {"coastline": "#ff7f0e", "ice_edge": "#00e5ff", "fronts": "#ff1744", "icebergs": "#ffee58"}


def lines_quicklook(scene: str | Path | xr.DataArray, lines_gpkg: str | Path, out_png: str | Path,
                    icebergs_gpkg: str | Path | None = None, max_side: int = 1024,
                    window: tuple[float, float, float, float] | None = None) -> Path:
    """PNG of a scene with its observation lines drawn over it: coastline, ice edge, calving fronts (and icebergs).

    ``lines_gpkg`` holds the layers of :func:`polarxr.observations.boundaries.write_lines` (in the scene's
    CRS); ``icebergs_gpkg`` the layer ``icebergs``. ``window`` (left, bottom, right, top in map units)
    zooms onto part of the scene. The PNG's longer side is ``max_side`` px; written atomically.
    """
    view = _view(scene, max_side, Resampling.average)
    extent = view.extent
    if window is not None:
        left, bottom, right, top = window
        extent = (left, right, bottom, top)
    h, w = view.data.shape[1:]
    span_x, span_y = extent[1] - extent[0], extent[3] - extent[2]
    shape = (h, w) if window is None else (max(1, round(max_side * span_y / max(span_x, span_y))),
                                           max(1, round(max_side * span_x / max(span_x, span_y))))
    figure, (ax,) = _figure(shape, 1, max_side, [_title(view.name), f"lines: {Path(lines_gpkg).name}"])
    _show(ax, _scene_rgba(view), view.extent)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    handles = []
    width = max(0.8, max_side / 900)
    for layer, label in (("coastline", "coastline"), ("ice_edge", "ice edge"), ("fronts", "calving fronts")):
        try:
            frame = gpd.read_file(lines_gpkg, layer=layer)
        except Exception:  # a missing layer: nothing to draw
            continue
        if len(frame):
            frame.plot(ax=ax, color=LINE_COLOURS[layer], linewidth=width * (2 if layer == "fronts" else 1))
        handles.append(Line2D([], [], color=LINE_COLOURS[layer], linewidth=2, label=f"{label} ({len(frame)})"))
    if icebergs_gpkg is not None:
        bergs = gpd.read_file(icebergs_gpkg, layer="icebergs")
        if len(bergs):
            bergs.plot(ax=ax, color=LINE_COLOURS["icebergs"], markersize=max(2, max_side / 250), marker="o")
        handles.append(Line2D([], [], color=LINE_COLOURS["icebergs"], marker="o", linestyle="none",
                              label=f"icebergs ({len(bergs)})"))
    ax.set_axis_off()
    _legend(ax, handles, max_side)
    return _save(figure, out_png)
