"""Small real GeoTIFF scenes and shapefile charts for tests (written with rasterio and geopandas)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.transform import from_origin
from shapely.geometry import Polygon, box

POLAR_STEREO = "+proj=stere +lat_0=90 +lat_ts=70 +lon_0=-45 +datum=WGS84 +units=m +no_defs"
PRODUCT = "S1A_EW_GRDM_1SDH_20180116T075430_20180116T075530_020177_0226B9_9FE3_Orb_Cal_Spk_TC_rgb_8bit.tif"
ORIGIN = (500_000.0, -1_800_000.0)
PIXEL = 40.0


def write_scene(
    path: Path,
    shape: tuple[int, int] = (300, 260),
    crs: str | None = POLAR_STEREO,
    tile: int = 64,
    nodata_margin: int = 20,
    fill: int | None = None,
    dtype: str = "uint8",
) -> Path:
    """A 3-band 8-bit scene (or 2-band float) with a nodata strip on the left, tiled ``tile`` px."""
    height, width = shape
    rng = np.random.default_rng(0)
    bands = 3 if dtype == "uint8" else 2
    if dtype == "uint8":
        data = rng.integers(1, 256, size=(bands, height, width), dtype=np.uint8)
        nodata = 0
    else:
        data = rng.gamma(4, 0.05, size=(bands, height, width)).astype(np.float32)
        nodata = np.nan
    if fill is not None:
        data[:] = fill
    data[:, :, :nodata_margin] = nodata
    profile = dict(driver="GTiff", height=height, width=width, count=bands, dtype=dtype, nodata=nodata,
                   transform=from_origin(*ORIGIN, PIXEL, PIXEL), tiled=True, blockxsize=tile, blockysize=tile)
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = ("HH", "HV", "HH-HV")[:bands]
    return path


def chart_polygons() -> gpd.GeoDataFrame:
    """A chart over :func:`write_scene`'s grid: land, water, an ice floe overlapping both, a bowtie."""
    x0, y0 = ORIGIN
    w, h = 260 * PIXEL, 300 * PIXEL
    land = Polygon([(x0 - 100, y0 + 100), (x0 + 0.37 * w, y0 + 100), (x0 + 0.2 * w, y0 - 0.55 * h),
                    (x0 + 0.43 * w, y0 - 1.1 * h), (x0 - 100, y0 - 1.1 * h)])
    water = box(x0 + 0.25 * w, y0 - 1.1 * h, x0 + 0.9 * w, y0 + 100)
    ice = Polygon([(x0 + 0.31 * w, y0 - 0.13 * h), (x0 + 0.7 * w, y0 - 0.21 * h), (x0 + 0.61 * w, y0 - 0.77 * h),
                   (x0 + 0.33 * w, y0 - 0.6 * h)])
    bowtie = Polygon([(x0 + 0.72 * w, y0 - 0.8 * h), (x0 + 0.85 * w, y0 - 0.95 * h),
                      (x0 + 0.85 * w, y0 - 0.8 * h), (x0 + 0.72 * w, y0 - 0.95 * h)])
    frame = gpd.GeoDataFrame(
        {"poly_type": ["L", "W", "I", "I"], "CT": ["99", "99", "92", "40"]},
        geometry=[land, water, ice, bowtie], crs=POLAR_STEREO,
    )
    return frame


def write_chart(path: Path, frame: gpd.GeoDataFrame | None = None) -> Path:
    """Write a chart shapefile (ESRI Shapefile with .prj)."""
    (chart_polygons() if frame is None else frame).to_file(path, driver="ESRI Shapefile")
    return path
