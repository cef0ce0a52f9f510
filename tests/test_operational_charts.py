"""Operational SIGRID-3 charts: POLY_TYPE in any case, codes S and N, GeoPackage / GeoJSON in any CRS, the real
CIS chart rasterized over NW Greenland, and bad charts failing clearly."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rioxarray  # noqa: F401
import shapely
import xarray as xr
from pyproj import Transformer

from polarxr.classes import ICE, LAND, NO_LABEL, WATER
from polarxr.errors import ChartError
from polarxr.labels import parse_class_map, rasterize_chart, read_chart

CIS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ice-charts" / "cis_SGRDREA_20201102T.gpkg"
LCC = "+proj=lcc +lat_1=49 +lat_2=77 +lat_0=40 +lon_0=-100 +datum=WGS84 +units=m"
TO_3413 = Transformer.from_crs(4326, 3413, always_xy=True)


def _grid(lon: float, lat: float, n: int = 100, px: float = 4000.0) -> xr.DataArray:
    """An ``n`` x ``n`` grid of ``px`` m pixels in EPSG:3413 centred on (lon, lat)."""
    cx, cy = TO_3413.transform(lon, lat)
    x = cx + (np.arange(n) - n / 2 + 0.5) * px
    y = cy - (np.arange(n) - n / 2 + 0.5) * px
    return xr.DataArray(np.zeros((n, n), np.uint8), dims=("y", "x"), coords={"y": y, "x": x}).rio.write_crs("EPSG:3413")


def _at(labels: np.ndarray, grid: xr.DataArray, lon: float, lat: float) -> int:
    xx, yy = TO_3413.transform(lon, lat)
    j = int(np.abs(grid.x.values - xx).argmin())
    i = int(np.abs(grid.y.values - yy).argmin())
    return int(labels[i, j])


def _sigrid(tmp_path: Path, name: str, codes: list[str], column: str = "POLY_TYPE", crs: str | None = LCC) -> Path:
    """Squares side by side in LCC metres (a GeoPackage, GeoJSON or shapefile by ``name``'s suffix)."""
    boxes = [shapely.box(i * 1e5, 0, (i + 1) * 1e5, 1e5) for i in range(len(codes))]
    path = tmp_path / name
    gpd.GeoDataFrame({column: codes, "CT": ["92"] * len(codes)}, geometry=boxes, crs=crs).to_file(path)
    return path


def test_sigrid_columns_codes_formats_and_class_map(tmp_path):
    gpkg = _sigrid(tmp_path, "chart.gpkg", ["I", "L", "S", "W", "N"])
    chart = read_chart(gpkg)
    assert chart["class_code"].tolist() == [ICE, LAND, LAND, WATER]  # S -> land, N dropped (no data)
    geojson = _sigrid(tmp_path, "chart.geojson", ["i", "S", "N"], column="Poly_Type", crs="EPSG:4326")
    assert read_chart(geojson, class_map="S=I,N=W")["class_code"].tolist() == [ICE, ICE, WATER]
    assert read_chart(gpkg, crs="EPSG:3413", class_map={"S": "nodata"}).crs.to_epsg() == 3413
    assert parse_class_map("S=L, n=NoData") == {"S": LAND, "N": None}
    with pytest.raises(ChartError, match="class map item S=Q"):
        read_chart(gpkg, class_map="S=Q")
    unknown = _sigrid(tmp_path, "odd.shp", ["I", "X"])
    with pytest.raises(ChartError, match=r"odd.shp: unknown poly_type codes \['X'\].*--class-map"):
        read_chart(unknown)
    assert read_chart(unknown, class_map="X=W")["class_code"].tolist() == [ICE, WATER]
    nocrs = _sigrid(tmp_path, "nocrs.shp", ["I"], crs=None)
    with pytest.raises(ChartError, match="nocrs.shp: has no CRS"):
        read_chart(nocrs)
    nocol = _sigrid(tmp_path, "nocol.gpkg", ["I"], column="TYPE")
    with pytest.raises(ChartError, match="has no 'poly_type' column"):
        read_chart(nocol)
    only_n = _sigrid(tmp_path, "n.gpkg", ["N"])
    with pytest.raises(ChartError, match="only polygons without data"):
        read_chart(only_n)


@pytest.mark.skipif(not CIS.is_file(), reason=f"the real CIS chart is not at {CIS} (../shared absent)")
def test_real_cis_chart_rasterizes_over_nw_greenland():
    chart = read_chart(CIS)
    assert len(chart) == 432 and chart["class_code"].value_counts().to_dict() == {ICE: 296, LAND: 135, WATER: 1}
    grid = _grid(-70.0, 77.5)  # 400 km x 400 km around Qaanaaq, Smith Sound and the North Water
    labels = rasterize_chart(CIS, grid).compute().values
    counts = {int(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))}
    assert counts.get(LAND, 0) > 2000 and counts.get(ICE, 0) > 2000
    assert _at(labels, grid, -69.2, 77.5) == LAND  # Qaanaaq
    assert _at(labels, grid, -72.0, 76.5) == ICE  # northern Baffin Bay in November
    shelves = rasterize_chart(read_chart(CIS, class_map="S=nodata"), grid).compute().values
    changed = shelves != labels
    assert changed.any() and (labels[changed] == LAND).all() and (shelves[changed] == NO_LABEL).all()
    with pytest.raises(ChartError, match="does not overlap"):
        rasterize_chart(CIS, _grid(10.0, 60.0))  # Norway: outside the chart
