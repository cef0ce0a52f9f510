"""Geocoding a GRD product onto a map grid, chunk by chunk, chunk-invariant by construction.

Per output chunk: the centres of its pixels are mapped to the product's (line, pixel) through the inverse
of the geolocation grid; only the input window those cover is read from the measurement; the window is
calibrated (:mod:`polarxr.ingest.radiometry`) and resampled bilinearly (the four neighbours of each
position, clamped at the image's edges; a neighbour without data makes the pixel NaN); when the output pixel is coarser than the input (IW 10 m to 40 m), ``f x f`` sub-pixel positions
(``f = round(output / input spacing)``) are each resampled bilinearly and averaged (an area average).
Outside the swath (and where the product holds DN 0) the output is NaN.

The inverse of the geolocation grid
------------------------------------
The tie points (line, pixel) -> (lon, lat) are projected into the target CRS; the forward model is the
bilinear interpolation of those map coordinates over the regular (line, pixel) tie-point grid (as SNAP
interpolates tie-point grids), padded by one ring of tie points extrapolated linearly along its rows and
columns so that the swath's edges lie inside it. It is inverted per point by Newton's method (8 steps),
started from piecewise-linear interpolation over the Delaunay triangulation of the tie points
(``scipy.interpolate.LinearNDInterpolator``); exact at every tie point. Far outside, an affine
least-squares fit of the tie points extends it (such pixels fall outside the image and become NaN). To keep the per-pixel cost low, the inverse is evaluated on the client on a global lattice of
output pixel centres every :data:`LATTICE` px, and each pixel interpolates bilinearly between its four
lattice nodes. The nodes are global (never per chunk) and each pixel's value depends only on its own
index, so any chunking gives bit-identical output.

Accuracy (measured on the synthetic EW GRDM product of :mod:`polarxr.ingest.synthetic`, whose exact
geometry is known: geodesic along- and across-track, 40 m spacing, tie points every 600 lines x 32
pixels; tests/test_ingest.py): (line, pixel) within 0.033 px median, 0.044 px max (1.8 m) of the exact
geometry, bound :data:`DOCUMENTED_ERROR_PX`; exact (< 1e-6 px) at the tie points. On the real IW GRDH grid
(Alps), a tie-point cell's centre lies 4 m (median, 5 m max) from the average of its corners' lat/lon.
Heights are those of the tie points (no DEM): over terrain, positions between tie points differ
from a terrain-corrected product (SNAP's ``Terrain-Correction``) by the terrain's parallax; with real IW
tie points over the Alps, a thin-plate spline through the same points differs from piecewise-linear by
~70 m median (README of the shared data).
"""

from __future__ import annotations

from dataclasses import dataclass

import warnings

import dask
import dask.array as da
import numpy as np
import rasterio
import xarray as xr
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.windows import Window
from scipy.interpolate import LinearNDInterpolator
from scipy.spatial import Delaunay

from polarxr.errors import ProductError
from polarxr.ingest.radiometry import sigma0
from polarxr.ingest.safe import GeolocationGrid, GrdProduct

#: The ExtremeEarth grid: polar stereographic north (as the ExtremeEarth scenes), 40 m, aligned to 40 m.
DEFAULT_CRS = "+proj=stere +lat_0=90 +lon_0=0 +datum=WGS84 +units=m +no_defs"
DEFAULT_RESOLUTION = 40.0
#: Extent (m, in :data:`DEFAULT_CRS`) of the default grid: the Arctic north of about 54 N.
DEFAULT_EXTENT = (-4_000_000.0, -4_000_000.0, 4_000_000.0, 4_000_000.0)
#: Output chunk edge in px (a multiple of the COG's 512 px tiles).
DEFAULT_CHUNK = 2048
#: Spacing in output px of the lattice on which the inverse of the geolocation grid is evaluated.
LATTICE = 16
#: Bound on the inverse's error against the exact geometry of the synthetic EW product (px of the input).
DOCUMENTED_ERROR_PX = 0.05


@dataclass(frozen=True)
class TargetGrid:
    """A map grid: CRS, pixel size (m), upper-left corner ``(x0, y0)`` (multiples of the pixel), ``(rows, cols)``."""

    crs: str
    resolution: float
    x0: float
    y0: float
    shape: tuple[int, int]

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.x0, 0.0, -self.resolution, self.y0)

    def x(self, cols: np.ndarray) -> np.ndarray:
        """Map x (m) of the centres of columns ``cols`` (may be fractional)."""
        return self.x0 + (np.asarray(cols, float) + 0.5) * self.resolution

    def y(self, rows: np.ndarray) -> np.ndarray:
        """Map y (m) of the centres of rows ``rows`` (may be fractional)."""
        return self.y0 - (np.asarray(rows, float) + 0.5) * self.resolution


def _projected_grid(product: GrdProduct, crs: str) -> tuple[np.ndarray, np.ndarray]:
    transformer = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x, y = transformer.transform(product.grid.longitude.ravel(), product.grid.latitude.ravel())
    return np.asarray(x, float), np.asarray(y, float)


def target_grid(product: GrdProduct, crs: str | None = None, resolution: float | None = None) -> TargetGrid:
    """The grid covering the product's tie points in ``crs`` (default the ExtremeEarth grid), snapped outward
    to multiples of ``resolution`` (m). Raises :class:`ProductError` when the product misses the grid."""
    crs_text = crs or DEFAULT_CRS
    resolution = float(resolution or DEFAULT_RESOLUTION)
    try:
        target = CRS.from_user_input(crs_text)
    except Exception as err:  # pyproj raises CRSError, a bare Exception subclass
        raise ProductError(product.path, f"target CRS {crs_text!r} is not a CRS ({err})") from None
    if not target.is_projected:
        raise ProductError(product.path, f"target CRS {crs_text!r} is not projected; a grid in metres is needed")
    x, y = _projected_grid(product, target.to_wkt())
    lon, lat = product.grid.longitude, product.grid.latitude
    footprint = f"lat {lat.min():.2f} .. {lat.max():.2f}, lon {lon.min():.2f} .. {lon.max():.2f}"
    extent = DEFAULT_EXTENT if crs is None else None
    if extent is None and target.area_of_use is not None:
        w, s, e, n = target.area_of_use.bounds
        if lat.max() < s or lat.min() > n or (w < e and (lon.max() < w or lon.min() > e)):
            extent = (np.inf, np.inf, -np.inf, -np.inf)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        extent = (np.inf, np.inf, -np.inf, -np.inf)
    if extent is not None:
        if x.max() <= extent[0] or x.min() >= extent[2] or y.max() <= extent[1] or y.min() >= extent[3]:
            where = "the ExtremeEarth grid (the Arctic north of ~54 N)" if crs is None else f"the grid of {crs_text}"
            raise ProductError(product.path, f"does not intersect the target grid: its footprint ({footprint}) is "
                                             f"outside {where}")
        x, y = np.clip(x, extent[0], extent[2]), np.clip(y, extent[1], extent[3])
    x0 = np.floor(x.min() / resolution) * resolution
    x1 = np.ceil(x.max() / resolution) * resolution
    y0 = np.ceil(y.max() / resolution) * resolution
    y1 = np.floor(y.min() / resolution) * resolution
    return TargetGrid(crs_text, resolution, float(x0), float(y0),
                      (int(round((y0 - y1) / resolution)), int(round((x1 - x0) / resolution))))


class GeolocationInverse:
    """Map coordinates of the target CRS to the product's (line, pixel), from the tie points.

    The forward model is bilinear interpolation of the projected tie points over the regular (line,
    pixel) tie-point grid (as SNAP interpolates tie-point grids), padded by one extrapolated ring; it is
    inverted per point by Newton's method from a start on the Delaunay triangulation of the tie points
    (piecewise linear, exact at them); an affine least-squares fit of the tie points serves far outside.
    """

    def __init__(self, grid: GeolocationGrid, crs: str):
        transformer = Transformer.from_crs("EPSG:4326", CRS.from_user_input(crs).to_wkt(), always_xy=True)
        x, y = (np.asarray(v, float) for v in transformer.transform(grid.longitude, grid.latitude))
        # one ring of tie points extrapolated linearly along the grid's rows and columns, so that pixels at
        # the swath's edges (and the lattice nodes just outside) fall inside the model
        self.x, self.y, lines, pixels = (_pad(v) for v in (x, y, grid.line, grid.pixel))
        self.lines, self.pixels = lines[:, 0], pixels[0, :]
        self.regular = bool(np.allclose(lines, self.lines[:, None]) and np.allclose(pixels, self.pixels[None, :])
                            and np.all(np.diff(self.lines) > 0) and np.all(np.diff(self.pixels) > 0))
        self.points = np.column_stack([self.x.ravel(), self.y.ravel()])
        self.values = np.column_stack([lines.ravel(), pixels.ravel()])
        self.triangulation = Delaunay(self.points)
        self.interpolator = LinearNDInterpolator(self.triangulation, self.values)
        design = np.column_stack([np.ones(len(self.points)), self.points])
        self.affine, *_ = np.linalg.lstsq(design, self.values, rcond=None)

    def forward(self, line: np.ndarray, pixel: np.ndarray) -> tuple[np.ndarray, ...]:
        """Bilinear (x, y) at (line, pixel) and the Jacobian ``(dx/dl, dx/dp, dy/dl, dy/dp)``."""
        i = np.clip(np.searchsorted(self.lines, line, side="right") - 1, 0, len(self.lines) - 2)
        j = np.clip(np.searchsorted(self.pixels, pixel, side="right") - 1, 0, len(self.pixels) - 2)
        dl, dp = self.lines[i + 1] - self.lines[i], self.pixels[j + 1] - self.pixels[j]
        t, u = (line - self.lines[i]) / dl, (pixel - self.pixels[j]) / dp
        out = []
        for v in (self.x, self.y):
            a, b, c, d = v[i, j], v[i, j + 1], v[i + 1, j], v[i + 1, j + 1]
            value = (a * (1 - u) + b * u) * (1 - t) + (c * (1 - u) + d * u) * t
            out += [value, ((c - a) * (1 - u) + (d - b) * u) / dl, ((b - a) * (1 - t) + (d - c) * t) / dp]
        return out[0], out[3], out[1], out[2], out[4], out[5]

    def __call__(self, x: np.ndarray, y: np.ndarray, iterations: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """(line, pixel) as float arrays of the shape of ``x`` and ``y`` (metres of the target CRS)."""
        x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
        query = np.column_stack([x.ravel(), y.ravel()])
        out = self.interpolator(query)
        inside = np.isfinite(out).all(axis=1)
        if (~inside).any():
            out[~inside] = np.column_stack([np.ones((~inside).sum()), query[~inside]]) @ self.affine
        if self.regular and inside.any():
            line, pixel = out[inside, 0], out[inside, 1]
            qx, qy = query[inside, 0], query[inside, 1]
            for _ in range(iterations):
                fx, fy, xl, xp, yl, yp = self.forward(line, pixel)
                det = xl * yp - xp * yl
                rx, ry = qx - fx, qy - fy
                line = np.clip(line + (yp * rx - xp * ry) / det, self.lines[0], self.lines[-1])
                pixel = np.clip(pixel + (xl * ry - yl * rx) / det, self.pixels[0], self.pixels[-1])
            out[inside, 0], out[inside, 1] = line, pixel
        return out[:, 0].reshape(x.shape), out[:, 1].reshape(x.shape)


def _pad(values: np.ndarray) -> np.ndarray:
    """A regular grid with one ring added on each side by linear extrapolation."""
    values = np.asarray(values, float)
    values = np.vstack([2 * values[:1] - values[1:2], values, 2 * values[-1:] - values[-2:-1]])
    return np.hstack([2 * values[:, :1] - values[:, 1:2], values, 2 * values[:, -1:] - values[:, -2:-1]])


def lattice_nodes(inverse: GeolocationInverse, grid: TargetGrid) -> np.ndarray:
    """(line, pixel) at the lattice nodes of ``grid``: ``(2, rows // LATTICE + 2, cols // LATTICE + 2)`` float64.

    Node ``(i, j)`` sits at the centre of output pixel ``(i * LATTICE, j * LATTICE)``.
    """
    rows = np.arange(grid.shape[0] // LATTICE + 2) * LATTICE
    cols = np.arange(grid.shape[1] // LATTICE + 2) * LATTICE
    line, pixel = inverse(grid.x(cols)[None, :], grid.y(rows)[:, None])
    return np.stack([line, pixel])


def _at(nodes: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear interpolation of the lattice at (fractional) output positions ``rows x cols``.

    Separable: along each lattice row first (a value per lattice row and column, the same in any block),
    then between lattice rows, so every pixel's value depends only on its own position.
    """
    i = np.floor(rows / LATTICE).astype(int)
    j = np.floor(cols / LATTICE).astype(int)
    ty = ((rows - i * LATTICE) / LATTICE)[:, None]
    tx = (cols - j * LATTICE) / LATTICE
    k = np.arange(i.min(), i.max() + 2)
    out = []
    for v in nodes:
        along = v[k][:, j] * (1 - tx) + v[k][:, j + 1] * tx  # (lattice rows, cols)
        out.append(along[i - k[0]] * (1 - ty) + along[i + 1 - k[0]] * ty)
    return out[0], out[1]


def _bilinear(values: np.ndarray, index: tuple[np.ndarray, ...]) -> np.ndarray:
    """``values`` at precomputed bilinear positions (see :func:`_stencil`); NaN where a neighbour is NaN."""
    flat, t, u = index
    v, w = values.ravel(), values.shape[1]
    return ((v.take(flat) * (1 - u) + v.take(flat + 1) * u) * (1 - t)
            + (v.take(flat + w) * (1 - u) + v.take(flat + w + 1) * u) * t)


def _stencil(line: np.ndarray, pixel: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Upper-left neighbour (flat index) and weights of bilinear interpolation in a window of ``shape``,
    clamped at its edges."""
    i = np.clip(np.floor(line).astype(np.int64), 0, shape[0] - 2)
    j = np.clip(np.floor(pixel).astype(np.int64), 0, shape[1] - 2)
    return (i * shape[1] + j, np.clip(line - i, 0.0, 1.0).astype(np.float32),
            np.clip(pixel - j, 0.0, 1.0).astype(np.float32))


def supersampling(product: GrdProduct, grid: TargetGrid) -> int:
    """Sub-pixel positions per output pixel edge: 1 (bilinear) unless the output is coarser than the input."""
    return max(1, int(round(grid.resolution / max(min(product.pixel_spacing), 1e-6))))


def geocode_block(rows: np.ndarray, cols: np.ndarray, *, nodes: np.ndarray, measurements: tuple[str, ...],
                  calibrations: tuple, noises: tuple | None, shape: tuple[int, int], factor: int) -> np.ndarray:
    """sigma0 (linear) of the output pixels ``rows x cols`` (1-D global indices): ``(band, rows, cols)`` float32.

    Pure in its arguments: reads the input window the block needs from the ``measurements`` (GDAL paths).
    """
    rows, cols = np.asarray(rows).ravel(), np.asarray(cols).ravel()
    offsets = (np.arange(factor) + 0.5) / factor - 0.5
    sub_rows = (rows[:, None] + offsets[None, :]).ravel()
    sub_cols = (cols[:, None] + offsets[None, :]).ravel()
    line, pixel = _at(nodes, sub_rows, sub_cols)
    n_lines, n_pixels = shape
    valid = (line >= -0.5) & (line <= n_lines - 0.5) & (pixel >= -0.5) & (pixel <= n_pixels - 0.5)
    out = np.full((len(measurements), len(rows), len(cols)), np.nan, np.float32)
    if not valid.any():
        return out
    r0 = int(max(0, np.floor(line[valid].min()) - 1))
    r1 = int(min(n_lines, np.ceil(line[valid].max()) + 2))
    c0 = int(max(0, np.floor(pixel[valid].min()) - 1))
    c1 = int(min(n_pixels, np.ceil(pixel[valid].max()) + 2))
    window = Window(c0, r0, c1 - c0, r1 - r0)
    win_lines, win_pixels = np.arange(r0, r1, dtype=float), np.arange(c0, c1, dtype=float)
    index = _stencil(np.where(valid, line - r0, 0.0), np.where(valid, pixel - c0, 0.0), (max(r1 - r0, 2),
                                                                                      max(c1 - c0, 2)))
    for band, (path, calibration) in enumerate(zip(measurements, calibrations)):
        with rasterio.open(path) as src:
            dn = src.read(1, window=window, boundless=(r1 - r0 < 2 or c1 - c0 < 2), fill_value=0)
        s0 = sigma0(dn, win_lines, win_pixels, calibration, noises[band] if noises else None)
        if s0.shape[0] < 2 or s0.shape[1] < 2:  # a one-line or one-column window: repeat it
            s0 = np.pad(s0, ((0, 2 - min(2, s0.shape[0])), (0, 2 - min(2, s0.shape[1]))), mode="edge")
        values = np.where(valid, _bilinear(s0, index), np.float32(np.nan))
        if factor > 1:
            values = values.reshape(len(rows), factor, len(cols), factor)
            with np.errstate(invalid="ignore"):
                count = np.isfinite(values).sum(axis=(1, 3))
                mean = np.nansum(values, axis=(1, 3)) / np.maximum(count, 1)
            # half or more of the footprint in the swath: an average of what is there; else no data
            values = np.where(count * 2 >= factor * factor, mean, np.nan)
        out[band] = values
    return out


def geocode(product: GrdProduct, grid: TargetGrid | None = None, denoise: bool = True,
            chunk: int = DEFAULT_CHUNK) -> xr.DataArray:
    """The product's sigma0 (linear) on ``grid`` as a lazy ``DataArray(band, y, x)`` float32, NaN = no data.

    ``band``: the product's polarisations (``HH``, ``HV``); ``y``/``x``: pixel centres (m) of ``grid.crs``
    (written with the transform by rioxarray); chunks ``(bands, chunk, chunk)``. ``denoise=False`` skips
    thermal-noise removal. Nothing is read until a block is computed; each block reads its own window.
    """
    grid = grid or target_grid(product)
    nodes = lattice_nodes(GeolocationInverse(product.grid, grid.crs), grid)
    pols = product.bands
    # the lattice goes into the graph once (a delayed key every block depends on), not once per task
    shared = dask.delayed(nodes, pure=True)
    with warnings.catch_warnings():  # one output block per (row chunk, column chunk), as intended
        warnings.simplefilter("ignore", da.PerformanceWarning)
        data = _blocks(grid, chunk, shared, product, pols, denoise)
    out = xr.DataArray(data, dims=("band", "y", "x"),
                       coords={"band": pols, "y": grid.y(np.arange(grid.shape[0])),
                               "x": grid.x(np.arange(grid.shape[1]))},
                       name="sigma0")
    out = out.rio.write_crs(CRS.from_user_input(grid.crs).to_wkt()).rio.write_transform(grid.transform)
    out = out.rio.write_nodata(np.nan, encoded=False)
    out.attrs.update(units="linear", band_names=pols, product=product.name)
    return out


def _blocks(grid: TargetGrid, chunk: int, shared, product: GrdProduct, pols: list[str], denoise: bool) -> da.Array:
    return da.blockwise(
        _block, "byx", da.arange(grid.shape[0], chunks=chunk), "y", da.arange(grid.shape[1], chunks=chunk), "x",
        shared, None, new_axes={"b": len(pols)}, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32),
        concatenate=True,
        measurements=tuple(product.polarisations[p].measurement for p in pols),
        calibrations=tuple(product.polarisations[p].calibration for p in pols),
        noises=tuple(product.polarisations[p].noise for p in pols) if denoise else None,
        shape=product.shape, factor=supersampling(product, grid),
    )


def _block(rows: np.ndarray, cols: np.ndarray, nodes: np.ndarray, **kwargs) -> np.ndarray:
    return geocode_block(rows, cols, nodes=nodes, **kwargs)
