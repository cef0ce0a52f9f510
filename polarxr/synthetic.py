"""Synthetic Sentinel-1 EW scenes and ice charts of the East Greenland coast, in the real file formats.

Every command of polarxr runs offline on these; the same code reads the real ExtremeEarth files.

Files
-----
* Scene GeoTIFF named like a real product, e.g.
  ``S1A_EW_GRDM_1SDH_20180116T075430_20180116T075530_020177_0226B9_9FE3_Orb_Cal_Spk_TC_rgb_8bit.tif``
  (orbit, datatake and product id follow from the time and the seed), in polar stereographic
  (:data:`CRS`, EPSG:3413-like) at 40 m, tiled 512 x 512, DEFLATE, internal overviews.

  - ``product="8bit"``: 3 bands uint8, nodata 0, descriptions ``HH``, ``HV``, ``HH-HV``: the dB value of each
    band (``HH-HV`` = HH dB minus HV dB) scaled linearly to 1..255 by
    ``DN = clip(round(1 + 254 * (dB - lo) / (hi - lo)), 1, 255)`` with (lo, hi) from :data:`DN_SCALING`
    (also written as band tags ``DB_MIN`` / ``DB_MAX``). Valid pixels are never 0.
  - ``product="float"``: 2 bands float32 sigma0 in linear units, ``HH`` and ``HV``, tag ``SIGMA0_UNITS=linear``,
    nodata NaN, name ending ``_Orb_Cal_Spk_TC.tif``.

* Ice chart ``seaice_s1_<yyyymmddthhmmss>.shp`` in the same CRS: polygons with ``poly_type`` L/W/I, the
  SIGRID-3 egg-code columns ``CA SA FA CB SB FB CT`` (2-character strings, ``"99"`` = unset; plausible
  codes on ice, ``"99"`` elsewhere), ``area`` (m^2) and ``perimeter`` (m).

Truth and geometry
------------------
The class truth is vector geometry, so chart and raster agree. In a local frame (``u`` seaward, ``v``
along the real coast line at the scene's place on East Greenland):

* land: the region inland of a fractal coastline ``u = c + fBm(v)`` (Hurst 0.75, wavelengths from half the
  scene down to 160 m), cut by meandering, tapering fjords with side branches, plus fractal islands
  offshore;
* ice: the pack between the coast and a ragged ice edge ``u = c + ice_extent * (side / 2 - c) + fBm(v)``
  (ice_extent in [0, 1]: 0 open water, 1 the mean edge at the seaward side of the grid), fast ice in the
  fjords when ice_extent >= 0.35 (:data:`FAST_ICE_EXTENT`), and loose angular floes in a marginal band
  seaward of the edge;
* sea: everything else. Icebergs (1-4 px blobs near the coast and fjord mouths) are drawn in the image
  but belong to the sea/ice truth and are absent from the chart, as in real charts.

The truth (:attr:`SyntheticScene.truth`) rasterizes this geometry at pixel centres (land over ice over
sea), 255 outside the valid swath. The chart is generalised: polygons simplified (60 m on land, 120 m on
ice), small islands and floes dropped, so labels from the chart differ slightly from the truth.

Statistical model of the backscatter
------------------------------------
For every pixel, a mean sigma0 in dB per polarisation is built from its truth class, smooth fields
(hashed value noise / fBm on global pixel coordinates, so every window agrees with its neighbours) and the
swath geometry; then

    I = (10^(mean_dB / 10) + NESZ) * G / L,   G ~ Gamma(shape=L, scale=1),  L in [3.5, 5] looks per scene,

independently per pixel and band (gamma speckle of an L-look intensity; one look-dB speckle has a standard
deviation of about 2.4 dB at 4 looks). Mean dB per class at 33 deg incidence (``theta`` from 18.9 deg at near
range to 47 deg at far range across the swath; slope ``b`` in dB/deg):

============  =======================================  ==================================  ==========
class         HH mean (dB)                             HV mean (dB)                        b HH / HV
============  =======================================  ==================================  ==========
sea           -28 + 17 log10(U/2) + streaks (+-0.8)    -33 + 8 log10(U/2) + streaks (+-0.3) -0.24/-0.08
ice           -15.5 (first-year) .. -11 (old ice)      -24 .. -19                          -0.12/-0.05
              + floe texture (+-3) + fine (+-1.5)      + 0.8 x the textures
  leads/new   -> -23 (dark like calm water)            -> -31.5
land          -8 + topography (+-5) + large (+-2)      -15 + 0.8 x the same                -0.06/-0.04
iceberg       -3                                       -11                                 -0.05/0
============  =======================================  ==================================  ==========

* Wind speed ``U`` (m/s): a scene mean (3-9) times a smooth field (+-25 %, 15-36 km), plus wind-roughened
  patches (+6 m/s, ~14 km) where sea reaches -16 to -12 dB in HH, as bright as ice; wind streaks are
  sinusoids across the wind direction (1-3 km apart).
* Ice: the old-ice fraction varies on a 25 km scale; floe texture on 1.6 km and 400 m scales, fine texture
  on 100 m; leads are the zero set of a ridged fBm; calm new-ice patches (nilas) on a 10 km scale are as
  dark as water.
* Land: the brightness follows the terrain slope towards the radar (``tanh`` of the range derivative of an
  fBm height), as foreslopes look bright and backslopes dark.
* Melt (summer, peak in July): wet snow lowers land by up to 6 dB and ice by 3 dB.
* Noise floor (NESZ, added in linear units to both channels): five EW sub-swaths with a parabolic profile
  (+3.5 dB at their edges), base levels -24.5 .. -28.5 dB, and azimuth scalloping (+-0.8 dB) — visible as
  bands in HV over sea, where the signal is below the floor.
* Nodata margins: the swath is a rectangle rotated 6-20 deg within the grid (as an EW GRD reprojected to
  polar stereographic), nodata outside it.

So class distributions overlap on purpose: wind-roughened sea is bright like ice, leads and new ice are dark
like water, summer land is dark, the incidence gradient spans several dB, and speckle is strong; a per-pixel
threshold is clearly worse than a model that uses texture and context.

Generation is block by block (1024 x 1024 windows): each window's speckle comes from a
``numpy.random.SeedSequence`` keyed by the seed and the window position, the smooth fields are evaluated
from coordinates, and the truth is rasterized per window from the geometry, so a full-size 15564 x 15218
scene needs bounded memory. Files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio import features
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely import affinity

from polarxr.classes import ICE, LAND, NO_LABEL, WATER
from polarxr.errors import PolarxrError
from polarxr.io import atomic_path
from polarxr.scenes import chart_name_for

#: CRS of scenes and charts (polar stereographic north, true scale at 70 N, as EPSG:3413).
CRS = "+proj=stere +lat_0=90 +lat_ts=70 +lon_0=-45 +datum=WGS84 +units=m +no_defs"
#: Pixel size in metres.
PIXEL = 40.0
#: Size (rows, columns) of a full ExtremeEarth scene.
FULL_SIZE = (15564, 15218)
#: Edge of the generation windows in pixels (a multiple of the 512 px tiles).
WINDOW = 1024
TILE = 512
#: dB range (lo, hi) mapped to DN 1..255 per band of the 8-bit product.
DN_SCALING: dict[str, tuple[float, float]] = {"HH": (-30.0, 0.0), "HV": (-38.0, -8.0), "HH-HV": (-2.0, 18.0)}
#: EW incidence angle (deg) at near and far range, and the reference of the class means.
INCIDENCE = (18.9, 47.0)
INCIDENCE_REF = 33.0
#: Sub-swath edges (fraction of the swath in range) and their noise-floor base level (dB).
SUBSWATH_EDGES = (0.0, 0.22, 0.42, 0.61, 0.81, 1.0)
SUBSWATH_NESZ_DB = (-24.5, -27.5, -27.0, -28.0, -28.5)
#: Ice extent at and above which the fjords hold fast ice.
FAST_ICE_EXTENT = 0.35
PRODUCTS = ("8bit", "float")
#: ``linear``: the 8-bit product by :data:`DN_SCALING`, fixed acquisition physics (the original rendering,
#: kept as the default so that existing figures reproduce). ``calibrated``: the 8-bit product by
#: :data:`DN_CURVES`, fitted to the real ExtremeEarth patches, and domain randomisation by
#: :data:`RANDOMISATION` (both products) where the real product's processing is unknown.
RENDERINGS = ("linear", "calibrated")
#: Calibrated 8-bit rendering: per band, knots ``(dB, DN)`` of a monotone piecewise-linear curve, fitted by
#: ``benchmarks/synth_calibration.py`` so that the synthetic pixels (classes mixed in the real patches'
#: proportions) have the real patches' DN quantiles (polar-patch, train rows, pixels with data).
DN_CURVES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "HH": (
        (-23.83, -23.08, -21.61, -20.71, -20.15, -19.62, -19.04, -18.51, -18.0, -17.5, -17.03, -16.57,
         -16.16, -15.83, -15.55, -15.3, -15.07, -14.86, -14.64, -14.42, -14.19, -13.96, -13.72, -13.47,
         -13.23, -12.99, -12.75, -12.5, -12.21, -11.86, -11.4, -10.8, -9.95, -8.65, -7.13, -5.56, -3.92),
        (5, 6, 9, 14, 18, 21, 24, 28, 32, 36, 41, 45, 49, 52, 56, 59, 63, 66, 69, 72, 75, 79, 82, 86, 90,
         95, 100, 107, 115, 125, 139, 161, 193, 237, 255, 255, 255),
    ),
    "HV": (
        (-27.52, -27.0, -26.4, -25.93, -25.6, -25.31, -25.03, -24.76, -24.49, -24.2, -23.92, -23.63, -23.37,
         -23.12, -22.89, -22.69, -22.5, -22.33, -22.17, -22.01, -21.85, -21.68, -21.49, -21.28, -21.05,
         -20.77, -20.45, -20.1, -19.71, -19.25, -18.75, -17.91, -16.58, -15.38, -14.11, -12.86, -11.59),
        (4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 22, 24, 26, 27, 29, 31, 33, 36, 38, 42, 45,
         49, 54, 59, 66, 74, 86, 108, 188, 255, 255, 255),
    ),
    "HH-HV": (
        (2.36, 3.11, 3.94, 4.61, 5.01, 5.31, 5.53, 5.72, 5.87, 6.01, 6.13, 6.24, 6.35, 6.45, 6.55, 6.65,
         6.74, 6.84, 6.93, 7.03, 7.13, 7.23, 7.33, 7.44, 7.56, 7.69, 7.82, 7.96, 8.12, 8.31, 8.51, 8.75,
         9.02, 9.35, 9.84, 10.71, 11.62),
        (1, 2, 3, 5, 7, 10, 12, 15, 17, 20, 23, 26, 29, 32, 35, 38, 40, 43, 46, 49, 52, 55, 58, 62, 66, 71,
         77, 85, 97, 114, 136, 168, 224, 255, 255, 255, 255),
    ),
}
#: Calibrated third band: in the real 8-bit products the third band is, to 93 % of its variance, a function of
#: the first two (rising with HV, falling with HH: a cross-polarisation ratio, saturated). Its mean DN over
#: 16 x 16 bins of (HH DN, HV DN) of the real patches (rows HH, columns HV, bins of 16 DN), interpolated
#: bilinearly between bin centres.
THIRD_BAND_TABLE: tuple[tuple[int, ...], ...] = (
    (81, 214, 247, 255, 255, 255, 254, 254, 254, 254, 254, 254, 253, 253, 254, 254),
    (42, 89, 155, 209, 231, 248, 254, 254, 254, 254, 254, 254, 254, 254, 254, 254),
    (23, 49, 81, 117, 150, 182, 210, 239, 251, 254, 254, 254, 254, 254, 254, 254),
    (16, 36, 58, 83, 109, 134, 158, 180, 204, 228, 244, 252, 254, 254, 254, 254),
    (12, 29, 47, 65, 83, 104, 124, 143, 162, 179, 199, 219, 235, 247, 252, 254),
    (10, 23, 40, 54, 69, 84, 100, 117, 133, 149, 164, 180, 195, 211, 227, 253),
    (8, 19, 34, 47, 59, 72, 84, 98, 112, 126, 139, 151, 165, 178, 193, 247),
    (7, 16, 29, 41, 52, 63, 74, 85, 97, 108, 120, 131, 143, 154, 167, 240),
    (6, 14, 26, 36, 46, 56, 66, 75, 85, 95, 106, 116, 126, 136, 148, 234),
    (5, 13, 23, 32, 41, 50, 59, 68, 77, 86, 94, 104, 113, 122, 133, 230),
    (5, 11, 20, 29, 37, 45, 54, 62, 69, 77, 86, 94, 102, 110, 120, 229),
    (4, 10, 19, 26, 34, 42, 49, 56, 64, 71, 78, 86, 93, 101, 110, 228),
    (4, 10, 17, 24, 31, 38, 45, 52, 58, 65, 72, 79, 86, 92, 102, 228),
    (4, 9, 16, 23, 29, 35, 42, 48, 54, 60, 67, 73, 79, 86, 94, 229),
    (4, 8, 15, 21, 27, 33, 39, 45, 50, 56, 62, 67, 73, 79, 87, 227),
    (2, 5, 9, 16, 18, 26, 31, 36, 41, 45, 50, 55, 59, 64, 69, 214),
)
#: Domain randomisation of the calibrated rendering, uniform per acquisition: a gain of the whole product
#: (dB: calibration and DN scaling unknown), the equivalent number of looks, a factor on every class's
#: incidence-angle slope, and the width (px, Gaussian sigma) of a speckle filter on the intensities: the
#: real products are speckle filtered ("Spk" in their names): neighbouring pixels of the real patches
#: correlate at 0.95 (lag 1) and 0.86 (lag 2) within a patch, the linear rendering's at 0.14-0.5.
RANDOMISATION: dict[str, tuple[float, float]] = {"gain_db": (-1.5, 1.5), "looks": (2.5, 6.0), "slope_scale": (0.5, 1.5),
                                                 "filter_px": (1.5, 3.0)}

# Points along the East Greenland coast (lat, lon), south to north; scenes are placed along this line.
_COAST_LATLON = ((65.6, -37.6), (67.0, -33.0), (68.5, -29.0), (69.5, -24.5), (70.5, -22.0), (72.5, -22.0),
                 (74.5, -19.5), (76.8, -18.7))
# Reference acquisitions per mission: (start, absolute orbit, datatake) of real products.
_MISSION_REF = {"S1A": (datetime(2018, 1, 16, 7, 54, 30), 20177, 0x0226B9),
                "S1B": (datetime(2018, 12, 3, 8, 12, 22), 13889, 0x019C3D)}
_ORBIT_SECONDS = 12 * 86400 / 175  # 175 orbits per 12-day repeat cycle
_EGG_COLUMNS = ("CA", "SA", "FA", "CB", "SB", "FB", "CT")
_UNSET = dict.fromkeys(_EGG_COLUMNS, "99")
_EGG_CODES = {  # SIGRID-3 codes: concentrations in tenths, stages of development, forms of ice
    "pack": dict(CT="91", CA="30", SA="95", FA="06", CB="60", SB="93", FB="05"),
    "fast": dict(CT="92", CA="99", SA="93", FA="08", CB="99", SB="99", FB="99"),
    "floe": dict(CT="40", CA="40", SA="87", FA="04", CB="99", SB="99", FB="99"),
}


@dataclass(frozen=True)
class SyntheticScene:
    """A synthetic scene written to disk, with its chart and the truth it was drawn from.

    ``areas_km2`` holds the true areas of land, sea and ice (keys ``"land"``, ``"sea"``, ``"ice"``) within
    the valid swath, counted on the raster truth (40 m pixels, 0.0016 km^2 each). ``ice_fraction`` is
    ice / (ice + sea) there. ``ice_extent`` is the parameter that placed the ice edge.
    """

    scene: Path
    chart: Path
    start: datetime
    seed: int
    product: str
    shape: tuple[int, int]
    transform: Affine
    ice_extent: float
    areas_km2: dict[str, float]
    valid_km2: float
    ice_fraction: float
    crs: str = CRS
    #: Sequences with glaciers: true front position (m from each box's upstream edge) per glacier id.
    fronts_m: dict[str, float] = field(default_factory=dict)
    #: Isolated ice objects of >= 4 px and <= 1 km² surrounded by sea (what ``polarxr icebergs`` counts),
    #: and how many of them are icebergs calved by the glaciers; None where not tracked.
    icebergs: int | None = None
    calved_icebergs: int | None = None
    _geometry: _Truth | None = field(default=None, repr=False, compare=False)

    @property
    def truth(self) -> np.ndarray:
        """Class truth ``(y, x)`` uint8 (L=0, W=1, I=2, 255 outside the swath) on the scene grid.

        Allocates the whole grid (H x W bytes); use :meth:`truth_window` for parts of large scenes.
        """
        return self.truth_window(Window(0, 0, self.shape[1], self.shape[0]))

    def truth_window(self, window: Window) -> np.ndarray:
        """Class truth of one ``rasterio`` window of the scene grid, uint8 ``(rows, cols)``."""
        return self._geometry.classes(window)


# --------------------------------------------------------------------------------------------------
# Smooth random fields: hashed value noise on global coordinates (seamless across windows)
# --------------------------------------------------------------------------------------------------

_MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def _hash_uniform(key: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Uniform values in [-1, 1) for integer lattice points (broadcast ``iy``, ``ix``), float32.

    A splitmix64 finaliser over (key, iy, ix): the same lattice point gives the same value in every window.
    """
    with np.errstate(over="ignore"):
        h = (np.asarray(iy, np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
            np.asarray(ix, np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)) ^ np.uint64(key & _MASK64)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return ((h >> np.uint64(11)).astype(np.float64) * (2.0 ** -52) - 1.0).astype(np.float32)


def _lattice_weights(coords: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index below each coordinate and the smoothstep weight towards the next one."""
    g = coords / scale
    i = np.floor(g).astype(np.int64)
    f = (g - i).astype(np.float32)
    return i, f * f * (3 - 2 * f)


def _value_noise(key: int, rows: np.ndarray, cols: np.ndarray, scale: float) -> np.ndarray:
    """Value noise in [-1, 1] with feature size ``scale`` px at pixel coordinates ``rows`` x ``cols``.

    ``rows`` (h,) and ``cols`` (w,) are global pixel coordinates; returns float32 ``(h, w)``. Separable
    interpolation: the lattice is interpolated along x first (small), then along y.
    """
    iy, sy = _lattice_weights(rows, scale)
    ix, sx = _lattice_weights(cols, scale)
    y0, x0 = iy.min(), ix.min()
    lattice = _hash_uniform(key, np.arange(y0, iy.max() + 2)[:, None], np.arange(x0, ix.max() + 2)[None, :])
    jx = ix - x0
    along_x = lattice[:, jx] * (1 - sx) + lattice[:, jx + 1] * sx
    jy = iy - y0
    top = along_x[jy]
    return top + (along_x[jy + 1] - top) * sy[:, None]


def _fbm(key: int, rows: np.ndarray, cols: np.ndarray, scales: tuple[float, ...],
         weights: tuple[float, ...]) -> np.ndarray:
    """Sum of value-noise octaves (float32 ``(h, w)``), normalised so the weights sum to 1."""
    total = np.zeros((len(rows), len(cols)), np.float32)
    for octave, (scale, weight) in enumerate(zip(scales, weights)):
        total += np.float32(weight / sum(weights)) * _value_noise(key + octave * 0x51ED27, rows, cols, scale)
    return total


def _fbm_1d(key: int, t: np.ndarray, longest: float, shortest: float, amplitude: float, hurst: float) -> np.ndarray:
    """Fractal 1-D profile at positions ``t`` (m): octaves of wavelength ``longest`` halving to ``shortest``,
    amplitude ``amplitude * (wavelength / longest) ** hurst``. Float64 in metres."""
    out = np.zeros(len(t))
    wavelength, octave = longest, 0
    while wavelength >= shortest:
        noise = _value_noise(key + octave * 0x2545F491, np.zeros(1), t, wavelength)[0]
        out += amplitude * (wavelength / longest) ** hurst * noise
        wavelength, octave = wavelength / 2, octave + 1
    return out


def _ramp(x: np.ndarray) -> np.ndarray:
    """Smoothstep of ``x`` clipped to [0, 1]."""
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


# --------------------------------------------------------------------------------------------------
# Footprint: grid, place on the coast, swath
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Swath:
    """The valid swath: a rectangle rotated in the pixel grid; ``r`` range in [0, 1], ``a`` azimuth in px."""

    centre: tuple[float, float]          # (col, row)
    range_dir: tuple[float, float]       # unit vector (col, row) from near to far range
    azimuth_dir: tuple[float, float]
    range_px: float
    azimuth_px: float

    def coords(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(r, a)`` float32 ``(h, w)``: range fraction (0 near, 1 far) and azimuth in px from the centre."""
        dc = (cols - self.centre[0])[None, :]
        dr = (rows - self.centre[1])[:, None]
        r = (dc * self.range_dir[0] + dr * self.range_dir[1]) / self.range_px + 0.5
        a = dc * self.azimuth_dir[0] + dr * self.azimuth_dir[1]
        return r.astype(np.float32), a.astype(np.float32)

    def valid(self, r: np.ndarray, a: np.ndarray) -> np.ndarray:
        return (r >= 0) & (r <= 1) & (np.abs(a) <= self.azimuth_px / 2)


@dataclass(frozen=True)
class _Footprint:
    """Grid and local coast frame: map = origin + u * seaward + v * alongshore (metres)."""

    shape: tuple[int, int]
    transform: Affine
    origin: tuple[float, float]
    seaward: tuple[float, float]
    alongshore: tuple[float, float]
    swath: _Swath
    coast_offset: float

    @property
    def side_m(self) -> float:
        return min(self.shape) * PIXEL

    @property
    def reach_m(self) -> float:
        """Half the grid diagonal in metres: every pixel lies within this distance of the origin."""
        return 0.5 * math.hypot(*self.shape) * PIXEL

    def to_map(self, geometry):
        """Shapely geometry from local (u, v) to map coordinates."""
        (sx, sy), (ax, ay) = self.seaward, self.alongshore
        return affinity.affine_transform(geometry, [sx, ax, sy, ay, *self.origin])

    def bounds(self) -> tuple[float, float, float, float]:
        h, w = self.shape
        left, top = self.transform.c, self.transform.f
        return left, top - h * PIXEL, left + w * PIXEL, top


def _coast_point(fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Map position and unit northward direction of the East Greenland coast at ``fraction`` of its length."""
    lat, lon = np.array(_COAST_LATLON).T
    points = np.column_stack(Transformer.from_crs("EPSG:4326", CRS, always_xy=True).transform(lon, lat))
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cumulative = np.concatenate([[0], np.cumsum(steps)])
    target = fraction * cumulative[-1]
    k = min(int(np.searchsorted(cumulative, target, side="right")) - 1, len(steps) - 1)
    t = (target - cumulative[k]) / steps[k]
    return points[k] + t * (points[k + 1] - points[k]), (points[k + 1] - points[k]) / steps[k]


def _footprint(shape: tuple[int, int], rng: np.random.Generator) -> _Footprint:
    """Place a grid of ``shape`` px on the coast, land on the left (west), with a rotated swath inside."""
    h, w = shape
    point, north = _coast_point(rng.uniform(0.08, 0.92))
    seaward = np.array([north[1], -north[0]])  # right of the northward coast direction: the sea
    side = min(shape) * PIXEL
    coast_offset = side * rng.uniform(0.15, 0.25)  # the coast lies this far landward of the centre
    centre = point + seaward * coast_offset
    left = round((centre[0] - w * PIXEL / 2) / PIXEL) * PIXEL  # grids snap to whole pixels, as SNAP's TC does
    top = round((centre[1] + h * PIXEL / 2) / PIXEL) * PIXEL
    transform = Affine(PIXEL, 0, left, 0, -PIXEL, top)
    # The swath rectangle (range x azimuth) rotated by phi touches all four sides of the grid, less a margin.
    margin = max(2.0, 0.004 * max(shape))
    inner_w, inner_h = w - 2 * margin, h - 2 * margin
    phi = math.radians(rng.uniform(6, 20)) * min(1.0, 1.25 * min(inner_w, inner_h) / max(inner_w, inner_h))
    cos, sin = math.cos(phi), math.sin(phi)
    range_px = (inner_w * cos - inner_h * sin) / (cos * cos - sin * sin)
    azimuth_px = (inner_h * cos - inner_w * sin) / (cos * cos - sin * sin)
    sign = rng.choice([-1.0, 1.0])  # the rotation sense and the side of near range vary with the orbit
    range_dir = np.array([cos, sign * sin]) * rng.choice([-1.0, 1.0])
    swath = _Swath((w / 2, h / 2), tuple(range_dir), (-range_dir[1], range_dir[0]), range_px, azimuth_px)
    return _Footprint(shape, transform, (float(centre[0]), float(centre[1])), tuple(seaward),
                      tuple(north), swath, coast_offset)


# --------------------------------------------------------------------------------------------------
# Geometry: coast, fjords, islands, pack ice, floes, icebergs (local u/v frame, metres)
# --------------------------------------------------------------------------------------------------

def _inland_of(u: np.ndarray, v: np.ndarray, far: float) -> shapely.Polygon:
    """Polygon of the region ``u' < u(v)`` (towards land), closed at ``u' = -far``."""
    ring = np.concatenate([np.column_stack([u, v]), [[-far, v[-1]], [-far, v[0]]]])
    return shapely.Polygon(ring)


def _polygonal(geometry) -> shapely.Geometry:
    """``make_valid`` keeping only the polygonal parts."""
    parts = [g for g in shapely.get_parts(shapely.make_valid(geometry)) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _blob(centre: tuple[float, float], radius: float, rng: np.random.Generator, roughness: float) -> shapely.Polygon:
    """Island-like polygon: a radius with random Fourier harmonics of decreasing amplitude."""
    n = int(np.clip(2 * math.pi * radius / (1.5 * PIXEL), 12, 160))
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    harmonics = np.arange(2, 12)
    amp = roughness * rng.normal(size=harmonics.size) / harmonics ** 1.1
    phase = rng.uniform(0, 2 * math.pi, harmonics.size)
    r = radius * np.clip(1 + (amp[:, None] * np.cos(harmonics[:, None] * theta + phase[:, None])).sum(0), 0.3, None)
    return shapely.Polygon(np.column_stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)]))


def _angular(centre: tuple[float, float], radius: float, rng: np.random.Generator, corners: int) -> shapely.Polygon:
    """Floe- or berg-like angular polygon with ``corners`` vertices."""
    theta = np.sort(rng.uniform(0, 2 * math.pi, corners))
    r = radius * rng.uniform(0.6, 1.0, corners)
    return shapely.Polygon(np.column_stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)]))


@dataclass(frozen=True)
class _Coast:
    """The fixed part of a footprint: coastline profile, land, fjord water and fjord axes (local frame)."""

    v: np.ndarray
    u: np.ndarray
    land: shapely.Geometry
    fjords: shapely.Geometry
    fjord_axes: list[np.ndarray]


def _fjord(rng: np.random.Generator, start: np.ndarray, heading: float, length: float, width: float,
           step: float) -> tuple[shapely.Geometry, np.ndarray]:
    """A meandering fjord from ``start`` along ``heading`` (rad), tapering from ``width``; (polygon, axis)."""
    n = max(4, int(length / step))
    wander = np.cumsum(rng.normal(0, 0.12, n))
    headings = heading + wander - np.linspace(0, 1, n) * wander[-1] * 0.5
    axis = start + np.cumsum(step * np.column_stack([np.cos(headings), np.sin(headings)]), axis=0)
    axis = np.vstack([start, axis])
    headings = np.concatenate([headings[:1], headings])
    banks = np.convolve(rng.normal(size=n + 1), np.ones(3) / 3, "same")  # smoothly varying width
    half = 0.5 * width * np.linspace(1.0, 0.3, n + 1) * (1 + 0.2 * banks)
    normal = np.column_stack([-np.sin(headings), np.cos(headings)])
    ring = np.vstack([axis + normal * half[:, None], (axis - normal * half[:, None])[::-1]])
    return _polygonal(shapely.Polygon(ring)), axis


def _coast(fp: _Footprint, rng: np.random.Generator) -> _Coast:
    """Fractal coastline with fjords and islands over the footprint (local frame, metres)."""
    side, reach = fp.side_m, fp.reach_m
    v = np.arange(-1.2 * reach, 1.2 * reach + 2 * PIXEL, 2 * PIXEL)
    u = -fp.coast_offset + _fbm_1d(int(rng.integers(2**62)), v, 0.5 * side, 4 * PIXEL, 0.08 * side, 0.75)
    land = _inland_of(u, v, 1.5 * reach)

    def coast_at(where: float) -> float:
        return float(np.interp(where, v, u))

    fjords, axes = [], []
    width_scale = float(np.clip(0.012 * side / PIXEL, 6, 100)) * PIXEL
    for _ in range(int(np.clip(round(side / 50_000 * rng.uniform(1, 2)), 1, 20))):
        where = rng.uniform(-0.45, 0.45) * side
        width = width_scale * rng.uniform(0.6, 1.6)
        start = np.array([coast_at(where) + 1.5 * width, where])
        length = side * rng.uniform(0.08, 0.35)
        step = max(width / 2, 2 * PIXEL)
        poly, axis = _fjord(rng, start, math.pi + rng.normal(0, 0.3), length, width, step)
        fjords.append(poly)
        axes.append(axis)
        for _ in range(rng.integers(0, 3)):
            at = int(len(axis) * rng.uniform(0.3, 0.7))
            turn = rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
            branch, branch_axis = _fjord(rng, axis[at], math.pi + turn, length * rng.uniform(0.2, 0.5),
                                         width * 0.6, step)
            fjords.append(branch)
            axes.append(branch_axis)
    fjord_water = shapely.union_all(fjords) if fjords else shapely.Polygon()
    islands = []
    for _ in range(int(np.clip(rng.poisson(side / 2_500 + 1), 1, 300))):
        where = rng.uniform(-0.5, 0.5) * side
        radius = min(3 * PIXEL * (1 + rng.pareto(1.6)), 0.04 * side)
        offshore = rng.exponential(0.04 * side) + radius
        islands.append(_blob((coast_at(where) + offshore, where), radius, rng, 0.6))
    land = _polygonal(shapely.difference(shapely.union_all([land, *islands]), fjord_water))
    return _Coast(v, u, land, fjord_water, axes)


@dataclass(frozen=True)
class _Ice:
    """Ice geometry of one acquisition (local frame): pack, fast ice, floes, icebergs."""

    pack: shapely.Geometry
    fast: shapely.Geometry
    floes: list[shapely.Polygon]
    bergs: list[shapely.Polygon]


def _ice(fp: _Footprint, coast: _Coast, extent: float, rng: np.random.Generator) -> _Ice:
    """Pack ice up to a ragged edge set by ``extent`` in [0, 1], fast ice in fjords, floes and icebergs."""
    side, reach = fp.side_m, fp.reach_m
    amplitude = 0.1 * side
    # extent 1 puts the mean edge at the seaward side of the grid; the fBm adds tongues and bays
    ragged = _fbm_1d(int(rng.integers(2**62)), coast.v, 0.4 * side, 8 * PIXEL, amplitude, 0.6)
    edge = -fp.coast_offset + extent * (fp.coast_offset + 0.5 * side) + ragged
    pack, floes = shapely.Polygon(), []
    if extent > 0:
        pack = _polygonal(shapely.difference(_inland_of(edge, coast.v, 1.5 * reach),
                                             _inland_of(coast.u - 2 * PIXEL, coast.v, 1.5 * reach)))
        band = float(np.clip(0.08 * side, 40 * PIXEL, 30_000))
        r_min = 3 * PIXEL
        mean_area = math.pi * (2.5 * r_min) ** 2
        count = int(min(4000, 0.12 * band * 1.2 * side / mean_area))
        where = rng.uniform(-0.6, 0.6, count) * side
        offshore = np.interp(where, coast.v, edge) + np.minimum(rng.exponential(band / 2.5, count), band)
        inside = np.abs(offshore) < reach
        for u0, v0 in zip(offshore[inside], where[inside]):
            radius = min(r_min * (1 + rng.pareto(2.2)), 40 * PIXEL)
            floes.append(_angular((u0, v0), radius, rng, int(rng.integers(6, 11))))
    fast = coast.fjords if extent >= FAST_ICE_EXTENT else shapely.Polygon()
    bergs = []
    count = int(np.clip(rng.poisson(side / 500 + 2), 2, 4000))
    for _ in range(count):
        if coast.fjord_axes and rng.random() < 0.6:  # calved from glaciers: in the fjords and off their mouths
            axis = coast.fjord_axes[rng.integers(len(coast.fjord_axes))]
            u0, v0 = axis[int(rng.integers(len(axis)) * rng.uniform(0, 0.7))] + rng.normal(0, 3 * PIXEL, 2)
        else:
            v0 = rng.uniform(-0.5, 0.5) * side
            u0 = np.interp(v0, coast.v, coast.u) + rng.exponential(0.03 * side + 10 * PIXEL)
        bergs.append(_angular((u0, v0), PIXEL * rng.uniform(1.0, 4.0), rng, 7))
    return _Ice(pack, fast, floes, bergs)


# --------------------------------------------------------------------------------------------------
# Glaciers of a sequence: straight fjords whose calving fronts advance and retreat; calved icebergs
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Glacier:
    """A tidewater glacier in a straight fjord (local frame, metres): the fjord channel, its box, its front curve.

    The fjord runs landward (``-u``) from the coast at alongshore position ``v``; the glacier tongue (land)
    fills it from the head to the front. The box spans the fjord less one pixel on each side, from
    ``u_up`` (upstream, on the glacier) to ``u_down`` (in the fjord): the front position is the tongue's area
    inside the box divided by its width, the box method's quantity. The front lies at the fraction
    :meth:`front_fraction` of the box's length.
    """

    id: str
    v: float
    width: float
    u_head: float
    u_mouth: float
    u_up: float
    u_down: float
    amplitude: float
    peak_day: float
    retreat_per_year: float
    rough_key: int

    def channel(self) -> shapely.Polygon:
        return shapely.box(self.u_head, self.v - self.width / 2, self.u_mouth, self.v + self.width / 2)

    def box(self) -> shapely.Polygon:
        return shapely.box(self.u_up, self.v - self.width / 2 + PIXEL, self.u_down, self.v + self.width / 2 - PIXEL)

    @property
    def box_width(self) -> float:
        return self.width - 2 * PIXEL

    def front_fraction(self, when: datetime, first: datetime) -> float:
        """Mean front position as a fraction of the box length: a seasonal cycle (most advanced at
        ``peak_day``) of ``amplitude`` around 0.5, minus a steady retreat of ``retreat_per_year``."""
        day = when.timetuple().tm_yday
        years = (when - first).total_seconds() / (365.25 * 86400)
        return (0.5 + self.amplitude * math.cos(2 * math.pi * (day - self.peak_day) / 365.25)
                - self.retreat_per_year * years)

    def tongue(self, when: datetime, first: datetime) -> shapely.Polygon:
        """The glacier (land) from the fjord head to a front with a little raggedness (+-0.7 px)."""
        front = self.u_up + self.front_fraction(when, first) * (self.u_down - self.u_up)
        v = np.linspace(self.v - self.width / 2 - PIXEL, self.v + self.width / 2 + PIXEL, 48)
        key = self.rough_key + when.toordinal()
        u = front + _fbm_1d(key, v, self.width, PIXEL, 0.7 * PIXEL, 0.5)
        ring = np.concatenate([np.column_stack([u, v]), [[self.u_head - 2 * PIXEL, v[-1]], [self.u_head - 2 * PIXEL, v[0]]]])
        return _polygonal(shapely.Polygon(ring))


def _inside_swath(fp: _Footprint, geometry, margin_px: float) -> bool:
    """Whether every vertex of a local-frame geometry lies in the valid swath, ``margin_px`` from its edge."""
    xy = shapely.get_coordinates(fp.to_map(geometry))
    cols = (xy[:, 0] - fp.transform.c) / PIXEL
    rows = (fp.transform.f - xy[:, 1]) / PIXEL
    sw = fp.swath
    dc, dr = cols - sw.centre[0], rows - sw.centre[1]
    r = (dc * sw.range_dir[0] + dr * sw.range_dir[1]) / sw.range_px + 0.5
    a = dc * sw.azimuth_dir[0] + dr * sw.azimuth_dir[1]
    edge = margin_px / sw.range_px
    return bool(((r >= edge) & (r <= 1 - edge) & (np.abs(a) <= sw.azimuth_px / 2 - margin_px)).all())


def _glaciers(fp: _Footprint, coast: _Coast, rng: np.random.Generator) -> list[Glacier]:
    """1-4 glaciers in straight fjords cut into the coast, placed inside the swath and apart from each other."""
    side = fp.side_m
    width = float(np.clip(0.04 * side, 6 * PIXEL, 40 * PIXEL))
    length = float(np.clip(0.2 * side, 20 * PIXEL, 600 * PIXEL))
    wanted = int(np.clip(round(min(fp.shape) / 400), 1, 4))
    glaciers: list[Glacier] = []
    for _ in range(60):
        if len(glaciers) == wanted:
            break
        v = float(rng.uniform(-0.4, 0.4) * side)
        if any(abs(v - g.v) < 3 * width for g in glaciers):
            continue
        span = (coast.v >= v - width) & (coast.v <= v + width)
        coast_min, coast_max = float(coast.u[span].min()), float(coast.u[span].max())
        u_head = coast_min - length
        glacier = Glacier(
            id=f"G{len(glaciers) + 1}", v=v, width=width, u_head=u_head, u_mouth=coast_max + 3 * PIXEL,
            u_up=u_head + 0.08 * length, u_down=coast_min - 0.05 * length,
            amplitude=float(rng.uniform(0.15, 0.3)), peak_day=float(rng.uniform(100, 160)),
            retreat_per_year=float(rng.uniform(0.0, 0.1)), rough_key=int(rng.integers(2**62)))
        if _inside_swath(fp, glacier.box(), 3):
            glaciers.append(glacier)
    return glaciers


def _with_glacier_fjords(coast: _Coast, glaciers: list[Glacier]) -> _Coast:
    """The coast with the glaciers' fjord channels cut out of the land (and counted as fjords, for fast ice)."""
    if not glaciers:
        return coast
    channels = shapely.union_all([g.channel() for g in glaciers])
    land = _polygonal(shapely.difference(coast.land, channels))
    axes = [np.array([[g.u_mouth, g.v], [g.u_head, g.v]]) for g in glaciers]
    return _Coast(coast.v, coast.u, land, shapely.union(coast.fjords, channels), coast.fjord_axes + axes)


def _calved(fp: _Footprint, glaciers: list[Glacier], obstacles, when: datetime, rng: np.random.Generator
            ) -> list[shapely.Polygon]:
    """Icebergs calved by the glaciers, drifting off the fjord mouths: as ice in the truth, at least 3 px apart
    from any other ice or land; more in summer (``1 + 0.6 sin``, peak in late July)."""
    if not glaciers:
        return []
    day = when.timetuple().tm_yday
    wanted = int(round(len(glaciers) * (4 + fp.side_m / 4000) * (1 + 0.6 * math.cos(2 * math.pi * (day - 205) / 365.25))))
    placed: list[shapely.Polygon] = []
    fixed = np.asarray([g for g in shapely.get_parts(np.asarray(obstacles, dtype=object)) if not g.is_empty], dtype=object)
    tree = shapely.STRtree(fixed)
    for _ in range(wanted * 20):
        if len(placed) >= wanted:
            break
        glacier = glaciers[int(rng.integers(len(glaciers)))]
        u0 = glacier.u_mouth + rng.exponential(0.06 * fp.side_m) + 4 * PIXEL
        v0 = glacier.v + rng.normal(0, 0.08 * fp.side_m)
        berg = _angular((u0, v0), PIXEL * rng.uniform(1.6, 4.0), rng, int(rng.integers(6, 10)))
        if not berg.is_valid or berg.area < 5 * PIXEL * PIXEL or not _inside_swath(fp, berg, 3):
            continue
        near = 3 * PIXEL
        if any(shapely.dwithin(berg, g, near) for g in placed) or len(tree.query(berg, "dwithin", near)):
            continue
        placed.append(berg)
    return placed


def _isolated_ice_objects(truth: _Truth, ice: _Ice, calved: list[shapely.Polygon], max_km2: float = 1.0) -> int:
    """Isolated ice objects of 4 px to ``max_km2`` in the raster truth: what a perfect class map gives
    ``polarxr icebergs`` to count (>= 4 px).

    Each candidate (a floe, calved berg or small piece of pack or fast ice, in map coordinates) is checked on a small window of the truth
    around it: its 4-connected ice component must not reach the window's edge and no pixel of it may have
    land or nodata among its 8 neighbours. Components are counted once (by their first pixel).
    """
    from scipy import ndimage

    fp = truth.footprint
    pieces = [*shapely.get_parts(ice.pack), *shapely.get_parts(ice.fast), *ice.floes, *calved]
    candidates = [fp.to_map(g) for g in pieces if not g.is_empty and g.area <= max_km2 * 1e6]
    seen: set[tuple[int, int]] = set()
    h, w = fp.shape
    for geometry in candidates:
        left, bottom, right, top = geometry.bounds
        c0 = max(0, int((left - fp.transform.c) // PIXEL) - 4)
        r0 = max(0, int((fp.transform.f - top) // PIXEL) - 4)
        c1 = min(w, int((right - fp.transform.c) // PIXEL) + 5)
        r1 = min(h, int((fp.transform.f - bottom) // PIXEL) + 5)
        if c1 - c0 < 3 or r1 - r0 < 3:
            continue
        classes = truth.classes(Window(c0, r0, c1 - c0, r1 - r0))
        labels, _ = ndimage.label(classes == ICE)
        inside = features.geometry_mask([geometry], classes.shape, window_transform(Window(c0, r0, c1 - c0, r1 - r0),
                                                                                    fp.transform), invert=True)
        for k in np.unique(labels[inside & (labels > 0)]):
            component = labels == k
            rows, cols = np.nonzero(component)
            key = (int(rows[0]) + r0, int(cols[0]) + c0)
            if key in seen:
                continue
            seen.add(key)
            at_edge = rows.min() == 0 or cols.min() == 0 or rows.max() == classes.shape[0] - 1 or \
                cols.max() == classes.shape[1] - 1
            other = ndimage.binary_dilation((classes != WATER) & (classes != ICE), np.ones((3, 3), bool))
            if at_edge or (component & other).any() or not 4 <= component.sum() <= max_km2 * 1e6 / PIXEL ** 2:
                seen.add(key + (0,))  # checked, not an iceberg
    return sum(1 for key in seen if len(key) == 2 and key + (0,) not in seen)


def glacier_frames(scene: SyntheticScene) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """``(boxes, regions)`` of a sequence scene's glaciers in the scene CRS: the box-method boxes (``id``,
    ``width_m``, ``flow_azimuth_deg`` from upstream to downstream) and the glacier regions (``id``; the fjord
    channel from head to mouth less 1.5 px along its walls, so that only the front crosses it)."""
    glaciers = scene._geometry.glaciers if scene._geometry is not None else []
    fp = scene._geometry.footprint if scene._geometry is not None else None
    rows_box, rows_region, boxes, regions = [], [], [], []
    for g in glaciers:
        flow = np.array(fp.seaward)
        rows_box.append({"id": g.id, "width_m": g.box_width,
                         "flow_azimuth_deg": float(np.degrees(np.arctan2(flow[0], flow[1])) % 360)})
        boxes.append(fp.to_map(g.box()))
        rows_region.append({"id": g.id})
        # the glacier's own area (the channel less its rock walls): the coastline inside it is the front only
        regions.append(fp.to_map(shapely.box(g.u_head, g.v - g.width / 2 + 1.5 * PIXEL,
                                             g.u_mouth, g.v + g.width / 2 - 1.5 * PIXEL)))
    return (gpd.GeoDataFrame(rows_box, columns=["id", "width_m", "flow_azimuth_deg"], geometry=boxes, crs=CRS),
            gpd.GeoDataFrame(rows_region, columns=["id"], geometry=regions, crs=CRS))


# --------------------------------------------------------------------------------------------------
# Truth rasterization per window
# --------------------------------------------------------------------------------------------------

class _Layer:
    """Polygons of one class in map coordinates, with a spatial index for per-window rasterization."""

    def __init__(self, geometries, code: int):
        parts = shapely.get_parts(np.asarray([g for g in geometries if not g.is_empty], dtype=object))
        self.geoms = parts[~shapely.is_empty(parts)] if len(parts) else parts
        self.tree = shapely.STRtree(self.geoms)
        self.code = code

    def shapes(self, box: tuple[float, float, float, float]) -> list[tuple[shapely.Geometry, int]]:
        hits = self.tree.query(shapely.box(*box), predicate="intersects")
        clipped = shapely.clip_by_rect(self.geoms[np.sort(hits)], *box)
        return [(g, self.code) for g in clipped if not g.is_empty]


@dataclass(frozen=True)
class _Truth:
    """Truth geometry of a scene (map coordinates) and its swath: rasterizes class maps per window."""

    footprint: _Footprint
    ice: _Layer
    land: _Layer
    bergs: _Layer
    glaciers: list[Glacier] = field(default_factory=list)

    def _rasterize(self, layers: list[_Layer], window: Window, fill: int) -> np.ndarray:
        transform = window_transform(window, self.footprint.transform)
        shape = (int(window.height), int(window.width))
        left, top = transform.c, transform.f
        pad = PIXEL  # clip a pixel beyond the window so the rasterization equals a whole-scene one
        box = (left - pad, top - shape[0] * PIXEL - pad, left + shape[1] * PIXEL + pad, top + pad)
        shapes = [pair for layer in layers for pair in layer.shapes(box)]
        if not shapes:
            return np.full(shape, fill, np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return features.rasterize(shapes, out_shape=shape, transform=transform, fill=fill, dtype=np.uint8)

    def classes(self, window: Window, swath: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Truth classes of ``window`` (land over ice over sea), 255 outside the swath."""
        truth = self._rasterize([self.ice, self.land], window, WATER)
        if swath is None:
            rows, cols = _pixel_centres(window)
            swath = self.footprint.swath.coords(rows, cols)
        truth[~self.footprint.swath.valid(*swath)] = NO_LABEL
        return truth

    def bergs_in(self, window: Window) -> np.ndarray:
        return self._rasterize([self.bergs], window, 0).astype(bool)


def _pixel_centres(window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Global pixel-centre coordinates (rows, cols) of a window, float64."""
    return (window.row_off + np.arange(int(window.height)) + 0.5,
            window.col_off + np.arange(int(window.width)) + 0.5)


# --------------------------------------------------------------------------------------------------
# Backscatter per window
# --------------------------------------------------------------------------------------------------

_FIELD_NAMES = ("wind", "gust", "myi", "floe", "fine", "lead", "new", "land_large", "topo")


@dataclass(frozen=True)
class _Acquisition:
    """Per-acquisition parameters of the backscatter model (see the module docstring)."""

    seed: int
    looks: float
    wind_mean: float
    wind_dir: float
    melt: float
    keys: dict[str, int]
    scallop_period: np.ndarray
    scallop_phase: np.ndarray
    rendering: str = "linear"
    gain_db: float = 0.0
    slope_scale: float = 1.0
    filter_px: float = 0.0


def _randomised(acq: _Acquisition, rendering: str) -> _Acquisition:
    """``acq`` with the domain randomisation of ``rendering`` (its own random stream, so that the linear
    rendering's draws stay as they were)."""
    if rendering == "linear":
        return acq
    rng = np.random.default_rng(np.random.SeedSequence([acq.seed, 7]))
    draw = {k: float(rng.uniform(*RANDOMISATION[k])) for k in ("gain_db", "looks", "slope_scale", "filter_px")}
    return replace(acq, rendering=rendering, **draw)


def _acquisition(seed: int, topo_key: int, start: datetime) -> _Acquisition:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    keys = dict(zip(_FIELD_NAMES, (int(k) for k in np.random.SeedSequence([seed, 5]).generate_state(
        len(_FIELD_NAMES), np.uint64))))
    keys["topo"] = topo_key  # the terrain belongs to the footprint: the same in every pass over it
    keys["land_large"] = topo_key ^ 0x5DEECE66D
    day = start.timetuple().tm_yday
    melt = float(np.clip(math.cos(2 * math.pi * (day - 200) / 365.25), 0, 1) ** 2)
    return _Acquisition(
        seed=seed, looks=float(rng.uniform(3.5, 5.0)), wind_mean=float(rng.uniform(3, 9)),
        wind_dir=float(rng.uniform(0, math.pi)), melt=melt, keys=keys,
        scallop_period=rng.uniform(180, 260, 5), scallop_phase=rng.uniform(0, 2 * math.pi, 5),
    )


def _sea(acq: _Acquisition, rows, cols, dtheta) -> tuple[np.ndarray, np.ndarray]:
    """Sea mean dB (HH, HV) over the window: wind field, roughened patches, streaks."""
    k = acq.keys
    wind = acq.wind_mean * (1 + 0.25 * _fbm(k["wind"], rows, cols, (900.0, 370.0), (1.0, 0.5)))
    wind += 6 * _ramp((_fbm(k["gust"], rows, cols, (350.0, 150.0, 65.0), (1.0, 0.5, 0.25)) - 0.2) / 0.2)
    # streaks: sinusoids across the wind, evaluated separably (sin(a + b) from 1-D terms)
    across = acq.wind_dir + math.pi / 2
    streaks = np.zeros_like(wind)
    for wavelength, jitter in ((45.0, 0.0), (28.0, 0.15), (70.0, -0.1)):
        kx = 2 * math.pi / wavelength * math.cos(across + jitter)
        ky = 2 * math.pi / wavelength * math.sin(across + jitter)
        phase = (k["wind"] % 1000) / 159.0 + wavelength
        sx, cx = np.sin(kx * cols + phase).astype(np.float32), np.cos(kx * cols + phase).astype(np.float32)
        sy, cy = np.sin(ky * rows).astype(np.float32), np.cos(ky * rows).astype(np.float32)
        streaks += (cy[:, None] * sx[None, :] + sy[:, None] * cx[None, :]) / 3
    speed = np.log10(np.maximum(wind, 1.0) / 2)
    hh = -28 + 17 * speed + 0.8 * streaks - 0.24 * dtheta
    hv = -33 + 8 * speed + 0.3 * streaks - 0.08 * dtheta
    return hh, hv


def _ice_backscatter(acq: _Acquisition, rows, cols, dtheta) -> tuple[np.ndarray, np.ndarray]:
    """Ice mean dB: first-year/old-ice mix, floe and fine texture, dark leads and new-ice patches, melt."""
    k = acq.keys
    old = _ramp((_fbm(k["myi"], rows, cols, (600.0, 260.0), (1.0, 0.5)) + 0.15) / 0.6)
    floe = _fbm(k["floe"], rows, cols, (40.0, 10.0), (1.0, 0.5))
    fine = _value_noise(k["fine"], rows, cols, 2.5)
    ridge = np.abs(_fbm(k["lead"], rows, cols, (150.0, 67.0, 29.0), (1.0, 0.5, 0.25)))
    new_ice = _fbm(k["new"], rows, cols, (250.0, 110.0, 47.0), (1.0, 0.5, 0.25))
    dark = np.maximum(_ramp((0.04 - ridge) / 0.025), _ramp((new_ice - 0.3) / 0.1))
    hh = -15.5 + 4.5 * old + 3.0 * floe + 1.5 * fine - 0.12 * dtheta - 3 * acq.melt
    hv = -24.0 + 5.0 * old + 2.4 * floe + 1.2 * fine - 0.05 * dtheta - 3 * acq.melt
    hh += (-23 - 0.2 * dtheta - hh) * dark
    hv += (-31.5 - hv) * dark
    return hh, hv


def _land(acq: _Acquisition, swath: _Swath, rows, cols, dtheta) -> tuple[np.ndarray, np.ndarray]:
    """Land mean dB: slope of an fBm terrain towards the radar (foreslopes bright), large-scale cover, melt."""
    k = acq.keys
    # one pixel more each way for the forward differences, so neighbouring windows agree
    height = _fbm(k["topo"], np.append(rows, rows[-1] + 1), np.append(cols, cols[-1] + 1),
                  (200.0, 50.0, 12.0, 4.0), (1.0, 0.6, 0.3, 0.1))
    d_col = height[:-1, 1:] - height[:-1, :-1]
    d_row = height[1:, :-1] - height[:-1, :-1]
    slope = d_col * swath.range_dir[0] + d_row * swath.range_dir[1]
    relief = np.tanh(slope / np.float32(0.02)) * 5 + 2 * _fbm(k["land_large"], rows, cols, (500.0, 210.0), (1.0, 0.5))
    hh = -8 + relief - 0.06 * dtheta - 6 * acq.melt
    hv = -15 + 0.8 * relief - 0.04 * dtheta - 5 * acq.melt
    return hh, hv


def _noise_floor(acq: _Acquisition, r: np.ndarray, a: np.ndarray) -> np.ndarray:
    """NESZ in linear units: per sub-swath parabolic profile (edges +3.5 dB) and azimuth scalloping."""
    edges = np.asarray(SUBSWATH_EDGES, np.float32)
    k = np.clip(np.searchsorted(edges[1:-1], r), 0, 4)
    centre = ((edges[:-1] + edges[1:]) / 2)[k]
    half = ((edges[1:] - edges[:-1]) / 2)[k]
    x = (r - centre) / half
    scallop = np.sin(2 * np.pi * a / acq.scallop_period.astype(np.float32)[k] + acq.scallop_phase.astype(np.float32)[k])
    nesz_db = np.asarray(SUBSWATH_NESZ_DB, np.float32)[k] + 3.5 * x * x + 0.8 * scallop
    return np.power(np.float32(10), nesz_db / 10)


def _render(truth_geometry: _Truth, acq: _Acquisition, window: Window, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hh, hv, truth)`` of one window: sigma0 linear float32 (NaN outside the swath) and truth uint8."""
    rows, cols = _pixel_centres(window)
    swath = truth_geometry.footprint.swath
    r, a = swath.coords(rows, cols)
    truth = truth_geometry.classes(window, (r, a))
    shape = truth.shape
    # speckle first, so each window draws the same numbers whatever its content
    speckle_hh = rng.standard_gamma(acq.looks, shape, dtype=np.float32) / np.float32(acq.looks)
    speckle_hv = rng.standard_gamma(acq.looks, shape, dtype=np.float32) / np.float32(acq.looks)
    hh = np.full(shape, np.nan, np.float32)
    hv = np.full(shape, np.nan, np.float32)
    valid = truth != NO_LABEL
    if not valid.any():
        return hh, hv, truth
    theta = INCIDENCE[0] + (INCIDENCE[1] - INCIDENCE[0]) * r
    dtheta = (theta - np.float32(INCIDENCE_REF)) * np.float32(acq.slope_scale)
    models = {WATER: lambda: _sea(acq, rows, cols, dtheta),
              ICE: lambda: _ice_backscatter(acq, rows, cols, dtheta),
              LAND: lambda: _land(acq, swath, rows, cols, dtheta)}
    for code, model in models.items():
        mask = truth == code
        if mask.any():
            hh_db, hv_db = model()
            hh[mask], hv[mask] = hh_db[mask], hv_db[mask]
    bergs = truth_geometry.bergs_in(window) & valid & (truth != LAND)
    hh[bergs] = -3 - 0.05 * dtheta[bergs]
    hv[bergs] = -11
    nesz = _noise_floor(acq, r, a)
    hh = (np.power(np.float32(10), hh / 10) + nesz) * speckle_hh
    hv = (np.power(np.float32(10), hv / 10) + nesz) * speckle_hv
    if acq.gain_db:
        gain = np.float32(10 ** (acq.gain_db / 10))
        hh, hv = hh * gain, hv * gain
    if acq.filter_px:
        hh, hv = _speckle_filter(hh, acq.filter_px), _speckle_filter(hv, acq.filter_px)
    return hh, hv, truth


def _speckle_filter(intensity: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a window's intensities over its valid pixels (NaN stays NaN). Within the
    window only: at window edges the filter sees the edge pixels repeated, a faint seam every 1024 px."""
    from scipy.ndimage import gaussian_filter

    valid = np.isfinite(intensity)
    num = gaussian_filter(np.where(valid, intensity, 0).astype(np.float32), sigma, mode="nearest")
    den = gaussian_filter(valid.astype(np.float32), sigma, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, num / den, np.nan).astype(np.float32)


def _third_band(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Calibrated third band DN from the first two (uint8, 0 = no data): :data:`THIRD_BAND_TABLE`."""
    from scipy.ndimage import map_coordinates

    table = np.asarray(THIRD_BAND_TABLE, np.float32)
    width = 256 / table.shape[0]
    coords = np.stack([first.astype(np.float32) / width - 0.5, second.astype(np.float32) / width - 0.5])
    dn = np.clip(np.rint(map_coordinates(table, coords.reshape(2, -1), order=1, mode="nearest")), 1, 255)
    return np.where((first == 0) | (second == 0), 0, dn.reshape(first.shape)).astype(np.uint8)


def _to_dn(db: np.ndarray, band: str, rendering: str = "linear") -> np.ndarray:
    """dB to DN 1..255 by :data:`DN_SCALING` (linear) or :data:`DN_CURVES` (calibrated); NaN (no data) to 0."""
    if rendering == "calibrated":
        knots_db, knots_dn = DN_CURVES[band]
        dn = np.clip(np.rint(np.interp(db, knots_db, knots_dn)), 1, 255)
    else:
        lo, hi = DN_SCALING[band]
        dn = np.clip(np.rint(1 + 254 * (db - lo) / (hi - lo)), 1, 255)
    return np.where(np.isnan(db), 0, dn).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Names, times, writing
# --------------------------------------------------------------------------------------------------

def seasonal_ice_extent(when: datetime) -> float:
    """The documented seasonal ice-extent curve: ``0.36 + 0.32 cos(2 pi (day - 75) / 365.25)``.

    Maximum 0.68 in mid-March, minimum 0.04 in mid-September (East Greenland's sea-ice cycle: the pack
    reaches a few hundred km off the coast in spring and shrinks to a coastal fringe in late summer).
    """
    day = when.timetuple().tm_yday
    return 0.36 + 0.32 * math.cos(2 * math.pi * (day - 75) / 365.25)


def default_start(seed: int, month: int | None = None, year: int = 2018) -> datetime:
    """A morning acquisition time in ``year`` (month from the seed unless given), deterministic for ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 8]))
    month = int(seed % 12 + 1) if month is None else month
    return datetime(year, month, int(rng.integers(5, 26)), 7, 0, 0) + timedelta(seconds=int(rng.integers(0, 5400)))


def _mission(seed: int) -> str:
    """Sentinel-1A or -1B, drawn from ``seed`` (both flew in 2018)."""
    return "S1A" if np.random.default_rng(np.random.SeedSequence([seed, 10])).random() < 0.6 else "S1B"


def product_name(start: datetime, seed: int, product: str = "8bit", mission: str | None = None) -> str:
    """A Sentinel-1 EW GRDM product file name for ``start``: orbit and datatake follow the real missions' clocks.

    ``mission`` (``S1A`` or ``S1B``) defaults to one drawn from ``seed``; product id and datatake offset
    come from ``seed``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 9]))
    mission = mission or _mission(seed)
    ref_time, ref_orbit, ref_datatake = _MISSION_REF[mission]
    orbits = round((start - ref_time).total_seconds() / _ORBIT_SECONDS)
    orbit = ref_orbit + orbits
    datatake = (ref_datatake + round(1.4 * orbits) + int(rng.integers(0, 3))) % 0x1000000
    stop = start + timedelta(seconds=60)
    suffix = "Orb_Cal_Spk_TC_rgb_8bit" if product == "8bit" else "Orb_Cal_Spk_TC"
    return (f"{mission}_EW_GRDM_1SDH_{start:%Y%m%dT%H%M%S}_{stop:%Y%m%dT%H%M%S}_{orbit:06d}_{datatake:06X}_"
            f"{int(rng.integers(0, 0x10000)):04X}_{suffix}.tif")


def _windows(shape: tuple[int, int]) -> list[tuple[tuple[int, int], Window]]:
    h, w = shape
    return [((i, j), Window(j * WINDOW, i * WINDOW, min(WINDOW, w - j * WINDOW), min(WINDOW, h - i * WINDOW)))
            for i in range(math.ceil(h / WINDOW)) for j in range(math.ceil(w / WINDOW))]


def window_count(size: tuple[int, int]) -> int:
    """Number of generation windows of a scene of ``size`` (rows, cols): the units of ``progress``."""
    return len(_windows(size))


def _write_raster(path: Path, truth: _Truth, acq: _Acquisition, product: str, tags: dict[str, str],
                  progress: Callable[[], None] | None) -> np.ndarray:
    """Write the scene window by window; return the truth pixel counts per class code (land, sea, ice)."""
    h, w = truth.footprint.shape
    bands = ("HH", "HV", "HH-HV") if product == "8bit" else ("HH", "HV")
    profile = dict(driver="GTiff", height=h, width=w, count=len(bands), crs=CRS, transform=truth.footprint.transform,
                   dtype="uint8" if product == "8bit" else "float32", nodata=0 if product == "8bit" else np.nan,
                   tiled=True, blockxsize=TILE, blockysize=TILE, compress="deflate", BIGTIFF="IF_SAFER")
    counts = np.zeros(256, np.int64)
    with atomic_path(path) as tmp, rasterio.Env(GDAL_CACHEMAX=256 * 2**20), rasterio.open(tmp, "w", **profile) as dst:
        dst.descriptions = bands
        for (i, j), window in _windows((h, w)):
            rng = np.random.default_rng(np.random.SeedSequence(acq.seed, spawn_key=(6, i, j)))
            hh, hv, classes = _render(truth, acq, window, rng)
            counts += np.bincount(classes.ravel(), minlength=256)
            if product == "8bit":
                with np.errstate(divide="ignore", invalid="ignore"):
                    hh_db, hv_db = 10 * np.log10(hh), 10 * np.log10(hv)
                if acq.rendering == "calibrated":
                    first, second = _to_dn(hh_db, "HH", "calibrated"), _to_dn(hv_db, "HV", "calibrated")
                    data = np.stack([first, second, _third_band(first, second)])
                else:
                    data = np.stack([_to_dn(hh_db, "HH"), _to_dn(hv_db, "HV"), _to_dn(hh_db - hv_db, "HH-HV")])
            else:
                data = np.stack([hh, hv])
            dst.write(data, window=window)
            if progress is not None:
                progress()
        factors = [f for f in (2, 4, 8, 16, 32, 64) if max(h, w) / f >= 256]
        if factors:
            dst.build_overviews(factors, Resampling.average)
            dst.update_tags(ns="rio_overview", resampling="average")
        if product == "8bit" and acq.rendering == "calibrated":
            for index, band in enumerate(bands, start=1):
                dst.update_tags(index, DN_CURVE_DB=",".join(map(str, DN_CURVES[band][0])),
                                DN_CURVE_DN=",".join(map(str, DN_CURVES[band][1])))
            tags["DN_SCALING"] = ("bands 1, 2: DN = clip(round(interp(dB, DN_CURVE_DB, DN_CURVE_DN)), 1, 255); band 3: "
                                  "polarxr.synthetic.THIRD_BAND_TABLE of bands 1 and 2; 0 = no data")
        elif product == "8bit":
            for index, band in enumerate(bands, start=1):
                dst.update_tags(index, DB_MIN=str(DN_SCALING[band][0]), DB_MAX=str(DN_SCALING[band][1]))
            tags["DN_SCALING"] = "DN = clip(round(1 + 254 * (dB - DB_MIN) / (DB_MAX - DB_MIN)), 1, 255); 0 = no data"
        else:
            tags["SIGMA0_UNITS"] = "linear"
        areas = counts[[LAND, WATER, ICE]] * PIXEL * PIXEL / 1e6
        tags.update(TRUE_AREA_KM2_LAND=f"{areas[0]:.4f}", TRUE_AREA_KM2_SEA=f"{areas[1]:.4f}",
                    TRUE_AREA_KM2_ICE=f"{areas[2]:.4f}")
        dst.update_tags(**tags)
    return counts[[LAND, WATER, ICE]]


def _valid_union(geometries) -> shapely.Geometry:
    """Union of polygons, repairing any that GEOS finds invalid first (noise-made rings can self-touch)."""
    return shapely.union_all(shapely.make_valid(np.asarray(geometries, dtype=object)))


def _chart_frame(fp: _Footprint, coast: _Coast, ice: _Ice) -> gpd.GeoDataFrame:
    """The generalised chart: simplified polygons, small islands and floes dropped, no icebergs."""
    land_tolerance, ice_tolerance = 1.5 * PIXEL, 3 * PIXEL
    box = shapely.box(*np.add(fp.bounds(), (-PIXEL, -PIXEL, PIXEL, PIXEL)))

    def generalise(geometry, tolerance: float, min_px: float) -> shapely.Geometry:
        parts = shapely.get_parts(_polygonal(shapely.intersection(fp.to_map(geometry), box)
                                             .simplify(tolerance, preserve_topology=True)))
        parts = [p for p in parts if p.area >= min_px * PIXEL * PIXEL]
        return _valid_union(parts) if parts else shapely.Polygon()

    land = generalise(coast.land, land_tolerance, 30)
    pack = _polygonal(shapely.difference(generalise(ice.pack, ice_tolerance, 150), land))
    fast = _polygonal(shapely.difference(generalise(ice.fast, ice_tolerance, 150), shapely.union(land, pack)))
    big = [f for f in ice.floes if f.area >= 150 * PIXEL * PIXEL]
    floes = _polygonal(shapely.difference(generalise(_valid_union(big), ice_tolerance, 150) if big else
                                          shapely.Polygon(), shapely.union_all([land, pack, fast])))
    water = _polygonal(shapely.difference(box, shapely.union_all([land, pack, fast, floes])))
    rows, geoms = [], []
    for geometry, letter, codes in ((land, "L", _UNSET), (water, "W", _UNSET), (pack, "I", _EGG_CODES["pack"]),
                                    (fast, "I", _EGG_CODES["fast"]), (floes, "I", _EGG_CODES["floe"])):
        for part in shapely.get_parts(geometry):
            if part.geom_type == "Polygon" and not part.is_empty:
                rows.append({"poly_type": letter, **codes, "area": part.area, "perimeter": part.length})
                geoms.append(part)
    columns = ["poly_type", *_EGG_COLUMNS, "area", "perimeter"]
    return gpd.GeoDataFrame(rows, columns=columns, geometry=geoms, crs=CRS)


def _write_chart(frame: gpd.GeoDataFrame, path: Path) -> None:
    """Write a shapefile atomically: its parts go into a temporary folder, then move in, ``.shp`` last."""
    staging = Path(tempfile.mkdtemp(prefix=f".{path.stem}.tmp-", dir=path.parent))
    try:
        frame.to_file(staging / path.name, driver="ESRI Shapefile", engine="pyogrio")
        parts = sorted(staging.iterdir(), key=lambda p: p.suffix.lower() == ".shp")
        for part in parts:
            os.replace(part, path.with_suffix(part.suffix))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

def _check(outdir: Path, size: tuple[int, int], product: str, ice_extent: float | None,
           rendering: str = "linear") -> tuple[int, int]:
    if rendering not in RENDERINGS:
        raise PolarxrError(outdir, f"unknown rendering {rendering!r}; expected one of {', '.join(RENDERINGS)}")
    if product not in PRODUCTS:
        raise PolarxrError(outdir, f"unknown product {product!r}; expected one of {', '.join(PRODUCTS)}")
    if len(size) != 2 or min(size) < 64:
        raise PolarxrError(outdir, f"scene size {tuple(size)} too small: at least 64 x 64 pixels (rows, cols)")
    if ice_extent is not None and not 0 <= ice_extent <= 1:
        raise PolarxrError(outdir, f"ice_extent {ice_extent} outside [0, 1]")
    return int(size[0]), int(size[1])


def _derive(seed: int, index: int) -> int:
    """A scene seed derived from a dataset seed and an index (independent streams, stable)."""
    return int(np.random.SeedSequence([seed, index, 0x5E9]).generate_state(1, np.uint32)[0])


def _make(outdir: Path, footprint_seed: int, seed: int, size: tuple[int, int], start: datetime, product: str,
          ice_extent: float, progress: Callable[[], None] | None, rendering: str = "linear",
          glaciers_since: datetime | None = None) -> SyntheticScene:
    outdir.mkdir(parents=True, exist_ok=True)
    fp_rng = np.random.default_rng(np.random.SeedSequence([footprint_seed, 1]))
    fp = _footprint(size, fp_rng)
    coast = _coast(fp, fp_rng)
    glaciers: list[Glacier] = []
    if glaciers_since is not None:  # glaciers belong to the footprint: the same in every pass
        glaciers = _glaciers(fp, coast, np.random.default_rng(np.random.SeedSequence([footprint_seed, 11])))
        coast = _with_glacier_fjords(coast, glaciers)
        tongues = [g.tongue(start, glaciers_since) for g in glaciers]
        coast = _Coast(coast.v, coast.u, shapely.union_all([coast.land, *tongues]), coast.fjords, coast.fjord_axes)
    ice = _ice(fp, coast, ice_extent, np.random.default_rng(np.random.SeedSequence([seed, 2])))
    calved, objects = [], None
    if glaciers_since is not None:
        obstacles = [ice.pack, ice.fast, coast.land, *ice.floes]
        calved = _calved(fp, glaciers, obstacles, start, np.random.default_rng(np.random.SeedSequence([seed, 12])))
    truth = _Truth(fp,
                   ice=_Layer([fp.to_map(g) for g in (ice.pack, ice.fast, *ice.floes, *calved)], ICE),
                   land=_Layer([fp.to_map(coast.land)], LAND),
                   bergs=_Layer([fp.to_map(g) for g in ice.bergs], 1), glaciers=glaciers)
    if glaciers_since is not None:
        objects = _isolated_ice_objects(truth, ice, calved)
    topo_key = int(np.random.SeedSequence([footprint_seed, 4]).generate_state(1, np.uint64)[0])
    acq = _randomised(_acquisition(seed, topo_key, start), rendering)
    # one footprint is one relative orbit of one mission: a repeat-pass sequence keeps its mission
    scene_path = outdir / product_name(start, seed, product, _mission(footprint_seed))
    chart_path = outdir / chart_name_for(start)
    tags = {"POLARXR_SYNTHETIC": "1", "SEED": str(seed), "FOOTPRINT_SEED": str(footprint_seed),
            "ICE_EXTENT": f"{ice_extent:.4f}", "LOOKS": f"{acq.looks:.3f}", "RENDERING": acq.rendering}
    if rendering != "linear":
        tags.update(GAIN_DB=f"{acq.gain_db:.3f}", SLOPE_SCALE=f"{acq.slope_scale:.3f}",
                    SPECKLE_FILTER_PX=f"{acq.filter_px:.3f}")
    counts = _write_raster(scene_path, truth, acq, product, tags, progress)
    _write_chart(_chart_frame(fp, coast, ice), chart_path)
    km2 = PIXEL * PIXEL / 1e6
    areas = {"land": counts[0] * km2, "sea": counts[1] * km2, "ice": counts[2] * km2}
    # the box method on the truth geometry: tongue (and any land) inside the box / box width
    fronts = {g.id: float(shapely.intersection(coast.land, g.box()).area / g.box_width) for g in glaciers}
    return SyntheticScene(
        scene=scene_path, chart=chart_path, start=start, seed=seed, product=product, shape=size,
        transform=fp.transform, ice_extent=float(ice_extent), areas_km2=areas, valid_km2=float(counts.sum() * km2),
        ice_fraction=float(counts[2] / max(counts[1] + counts[2], 1)), fronts_m=fronts, icebergs=objects,
        calved_icebergs=len(calved) if glaciers_since is not None else None, _geometry=truth,
    )


def make_scene(outdir: str | Path, *, seed: int, size: tuple[int, int] = (1024, 1024), start: datetime | None = None,
               product: str = "8bit", ice_extent: float | None = None,
               progress: Callable[[], None] | None = None, rendering: str = "linear") -> SyntheticScene:
    """Write one synthetic scene GeoTIFF and its chart shapefile into ``outdir``.

    ``size`` is (rows, cols) of 40 m pixels in polar stereographic (:data:`CRS`); ``start`` defaults to
    :func:`default_start` of the seed; ``ice_extent`` (0 open water .. 1 ice everywhere) defaults to
    :func:`seasonal_ice_extent` of ``start``. ``progress`` is called once per 1024 px window written.
    Deterministic for (seed, size, start, product, ice_extent, rendering); ``rendering`` of :data:`RENDERINGS`.
    """
    outdir = Path(outdir)
    size = _check(outdir, size, product, ice_extent, rendering)
    start = default_start(seed) if start is None else start
    extent = seasonal_ice_extent(start) if ice_extent is None else ice_extent
    return _make(outdir, seed, seed, size, start, product, extent, progress, rendering)


def make_dataset(outdir: str | Path, n_scenes: int = 3, size: tuple[int, int] = (1024, 1024), seed: int = 0,
                 product: str = "8bit", progress: Callable[[], None] | None = None,
                 rendering: str = "linear", glaciers: bool = False) -> list[SyntheticScene]:
    """``n_scenes`` scenes at different places on the coast, one per month of 2018 (then 2019, ...), like the
    ExtremeEarth set; ice extents follow :func:`seasonal_ice_extent`. Sorted by time.

    ``glaciers``: each place also has the tidewater glaciers of :func:`make_sequence` (fronts half way
    along their boxes, give or take the season) and their calved icebergs, so a model trained on these
    scenes has seen glacier tongues, narrow glacier fjords and small bergs.
    """
    outdir = Path(outdir)
    size = _check(outdir, size, product, None, rendering)
    scenes = []
    for index in range(n_scenes):
        scene_seed = _derive(seed, index)
        start = default_start(scene_seed, month=index % 12 + 1, year=2018 + index // 12)
        scenes.append(_make(outdir, scene_seed, scene_seed, size, start, product, seasonal_ice_extent(start), progress,
                            rendering, start if glaciers else None))
    return scenes


def write_detail_chart(scene: SyntheticScene, outdir: str | Path) -> Path:
    """Write the scene's truth geometry as an ungeneralised chart ``outdir/seaice_s1_<start>.shp``.

    Unlike the generalised chart (:attr:`SyntheticScene.chart`: simplified outlines, no floes under
    150 px, no small islands, no calved icebergs), every polygon of the truth is kept, so labels
    rasterized from it equal :attr:`SyntheticScene.truth` on the valid swath: the fine annotation that
    observations of small objects (icebergs, floes, narrow fjords, glacier fronts) need to be learnt
    from. Same columns as the generalised chart; returns the ``.shp`` path.
    """
    truth = scene._geometry
    fp = truth.footprint
    box = shapely.box(*np.add(fp.bounds(), (-PIXEL, -PIXEL, PIXEL, PIXEL)))
    land = _polygonal(shapely.intersection(_valid_union(truth.land.geoms), box)) if len(truth.land.geoms) \
        else shapely.Polygon()
    ice = _polygonal(shapely.difference(shapely.intersection(_valid_union(truth.ice.geoms), box), land)) \
        if len(truth.ice.geoms) else shapely.Polygon()
    water = _polygonal(shapely.difference(box, shapely.union(land, ice)))
    rows, geoms = [], []
    for geometry, letter, codes in ((land, "L", _UNSET), (water, "W", _UNSET), (ice, "I", _EGG_CODES["pack"])):
        for part in shapely.get_parts(geometry):
            if part.geom_type == "Polygon" and not part.is_empty:
                rows.append({"poly_type": letter, **codes, "area": part.area, "perimeter": part.length})
                geoms.append(part)
    frame = gpd.GeoDataFrame(rows, columns=["poly_type", *_EGG_COLUMNS, "area", "perimeter"], geometry=geoms, crs=CRS)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / chart_name_for(scene.start)
    _write_chart(frame, path)
    return path


def sequence_times(n_scenes: int, first: datetime = datetime(2018, 1, 16, 7, 54, 30)) -> list[datetime]:
    """Acquisition times of a repeat-pass sequence: whole 12-day cycles apart, spanning about a year."""
    cycles = max(1, round(365 / (12 * max(n_scenes, 1))))
    return [first + timedelta(days=12 * cycles * i) for i in range(n_scenes)]


def make_sequence(outdir: str | Path, n_scenes: int = 12, size: tuple[int, int] = (1024, 1024), seed: int = 0,
                  product: str = "8bit", first: datetime = datetime(2018, 1, 16, 7, 54, 30),
                  progress: Callable[[], None] | None = None, rendering: str = "linear", glaciers: bool = True
                  ) -> list[SyntheticScene]:
    """A time sequence over one fixed footprint and coast (same grid, land, fjords, islands, terrain).

    Acquisitions are :func:`sequence_times` apart; the ice edge follows :func:`seasonal_ice_extent` (pack
    advancing to March, retreating to September), with fresh edge raggedness, floes, icebergs, wind and
    speckle each time. Each returned scene carries its true ``areas_km2`` of land, sea and ice.

    With ``glaciers`` (default), 1-4 tidewater glaciers in straight fjords (:class:`Glacier`) advance and
    retreat by a known curve, and calve icebergs (ice in the truth) off their mouths, more in summer; each
    scene carries its true ``fronts_m`` (box method on the truth geometry) and ``icebergs`` (isolated ice
    objects of >= 4 px). :func:`write_glacier_files` writes the boxes and fjord regions as GeoJSON.
    """
    outdir = Path(outdir)
    size = _check(outdir, size, product, None, rendering)
    times = sequence_times(n_scenes, first)
    since = times[0] if glaciers else None
    return [
        _make(outdir, seed, _derive(seed, index), size, when, product, seasonal_ice_extent(when), progress, rendering,
              since)
        for index, when in enumerate(times)
    ]


def write_glacier_files(scenes: list[SyntheticScene], outdir: str | Path) -> tuple[Path, Path] | None:
    """Write ``glacier_boxes.geojson`` (box-method boxes) and ``glaciers.geojson`` (fjord regions, for
    ``polarxr boundaries --glaciers``) of a sequence into ``outdir``, in the scene CRS; None without glaciers."""
    if not scenes or scenes[0]._geometry is None or not scenes[0]._geometry.glaciers:
        return None
    boxes, regions = glacier_frames(scenes[0])
    paths = Path(outdir) / "glacier_boxes.geojson", Path(outdir) / "glaciers.geojson"
    for frame, path in zip((boxes, regions), paths):
        with atomic_path(path) as tmp:
            frame.to_file(tmp, driver="GeoJSON", engine="pyogrio")
    return paths


def truth_table(scenes: list[SyntheticScene]) -> pd.DataFrame:
    """The truth of generated scenes: one row per scene with its true areas (km^2) and parameters.

    Sequences with glaciers add ``icebergs`` (isolated ice objects >= 4 px), ``calved_icebergs`` and one
    ``front_<id>_m`` column per glacier (true front position, m from the box's upstream edge).
    """
    rows = []
    for s in scenes:
        row = {"scene": s.scene.name, "chart": s.chart.name, "start": s.start, "seed": s.seed,
               "ice_extent": s.ice_extent, "land_km2": s.areas_km2["land"], "sea_km2": s.areas_km2["sea"],
               "ice_km2": s.areas_km2["ice"], "valid_km2": s.valid_km2, "ice_fraction": s.ice_fraction}
        if s.icebergs is not None:
            row.update(icebergs=s.icebergs, calved_icebergs=s.calved_icebergs)
        row.update({f"front_{k}_m": v for k, v in s.fronts_m.items()})
        rows.append(row)
    return pd.DataFrame(rows)
