"""Ice charts: validation, chunk-aligned rasterization equal to a whole-scene rasterize, bad input."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from rasterio import features
from scene_files import PRODUCT, chart_polygons, write_chart, write_scene
from shapely.geometry import box

from polarxr.classes import ICE, LAND, NO_LABEL, WATER
from polarxr.errors import ChartError
from polarxr.labels import OVERLAP_PRIORITY, labels_for_scene, rasterize_chart, read_chart
from polarxr.scenes import open_scene


def whole_scene_reference(chart: gpd.GeoDataFrame, scene) -> np.ndarray:
    """Reference labels: one rasterio.features.rasterize over the whole grid, in priority order."""
    chart = chart.to_crs(scene.rio.crs)
    order = sorted(range(len(chart)), key=lambda i: OVERLAP_PRIORITY.index(chart["class_code"].iloc[i]))
    shapes = [(chart.geometry.iloc[i], int(chart["class_code"].iloc[i])) for i in order]
    out = features.rasterize(shapes, out_shape=scene.shape[1:], transform=scene.rio.transform(),
                             fill=NO_LABEL, dtype=np.uint8)
    valid = (scene.values != 0).any(axis=0)
    return np.where(valid, out, NO_LABEL)


@pytest.fixture
def files(tmp_path):
    return write_scene(tmp_path / PRODUCT, shape=(300, 260)), write_chart(tmp_path / "seaice_s1_20180116t075430.shp")


@pytest.mark.parametrize("chunks", [64, 100, 37, {"band": -1, "y": 300, "x": 260}, {"band": -1, "y": 128, "x": 260}])
def test_chunked_equals_whole_scene(files, chunks):
    scene_path, chart_path = files
    scene, labels = labels_for_scene(scene_path, chart_path, chunks=chunks)
    assert labels.dtype == np.uint8 and labels.dims == ("y", "x")
    assert labels.chunks == scene.chunks[1:]
    assert labels.rio.crs == scene.rio.crs and labels.rio.transform() == scene.rio.transform()
    expected = whole_scene_reference(read_chart(chart_path), scene)
    np.testing.assert_array_equal(labels.values, expected)
    assert set(np.unique(expected)) == {LAND, WATER, ICE, NO_LABEL}


def test_overlap_rule_land_over_ice_over_water(files):
    scene_path, chart_path = files
    scene, labels = labels_for_scene(scene_path, chart_path, chunks=64)
    chart = read_chart(chart_path)
    land, water, ice = (chart.geometry[chart["class_code"] == c].union_all() for c in (LAND, WATER, ICE))
    values = labels.values
    xs, ys = np.meshgrid(scene.x.values, scene.y.values)
    import shapely

    points = shapely.points(xs, ys)
    valid = values != NO_LABEL
    in_land, in_ice, in_water = (shapely.contains_xy(g, xs, ys) for g in (land, ice, water))
    assert (values[valid & in_land] == LAND).all()
    assert (values[valid & in_ice & ~in_land] == ICE).all()
    assert (values[valid & in_water & ~in_ice & ~in_land] == WATER).all()
    assert (valid & in_ice & in_land).any() and (valid & in_ice & in_water & ~in_land).any()
    del points


def test_invalid_polygon_is_repaired(files):
    _, chart_path = files
    chart = read_chart(chart_path)
    assert chart.geometry.is_valid.all()
    assert chart["class_code"].dtype == np.uint8 and list(chart["class_code"]) == [LAND, WATER, ICE, ICE]


def test_reprojection_from_geographic_chart(tmp_path, files):
    scene_path, chart_path = files
    geographic = tmp_path / "chart_4326.shp"
    read_chart(chart_path).to_crs("EPSG:4326").drop(columns="class_code").to_file(geographic)
    scene, labels = labels_for_scene(scene_path, geographic, chunks=50)
    expected = whole_scene_reference(read_chart(geographic, crs=scene.rio.crs), scene)
    np.testing.assert_array_equal(labels.values, expected)
    direct = rasterize_chart(chart_path, scene).values
    # densified edges differ by at most a thin line of pixels from the native-CRS chart
    assert (direct != labels.values).mean() < 0.02


def test_labels_written_as_cog_and_zarr(tmp_path, files):
    import rioxarray
    import xarray as xr

    from polarxr.io import write_cog, write_zarr

    scene_path, chart_path = files
    scene, labels = labels_for_scene(scene_path, chart_path, chunks=64)
    cog = write_cog(labels, tmp_path / "labels.tif", nodata=NO_LABEL)
    back = rioxarray.open_rasterio(cog).squeeze("band", drop=True)
    np.testing.assert_array_equal(back.values, labels.values)
    assert back.rio.crs == scene.rio.crs and back.rio.transform() == scene.rio.transform()
    assert back.rio.nodata == NO_LABEL
    from polarxr.io import cog_problems

    assert cog_problems(cog) == []
    store = write_zarr(labels, tmp_path / "labels.zarr")
    np.testing.assert_array_equal(xr.open_zarr(store, consolidated=False)["label"].values, labels.values)
    assert not list(tmp_path.glob(".*"))


def _chart(tmp_path, **changes) -> gpd.GeoDataFrame:
    frame = chart_polygons()
    for column, value in changes.items():
        frame[column] = value
    return frame


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda f, p: f.drop(columns="poly_type").to_file(p), "has no 'poly_type' column"),
        (lambda f, p: f.assign(poly_type=["L", "W", "X", "I"]).to_file(p), r"unknown poly_type codes \['X'\]"),
        (lambda f, p: f.iloc[:0].to_file(p), "is empty"),
        (lambda f, p: f.set_crs(None, allow_override=True).to_file(p), "has no CRS"),
        (lambda f, p: p.write_bytes(b"not a shapefile"), "not a readable vector file"),
        (lambda f, p: f.set_geometry([box(0, 0, 10, 10)] * 4).to_file(p), "does not overlap the scene"),
    ],
    ids=["no_poly_type", "unknown_code", "empty", "no_crs", "corrupt", "no_overlap"],
)
def test_bad_charts_name_file_and_problem(tmp_path, files, make, match):
    scene_path, _ = files
    bad = tmp_path / "bad.shp"
    make(chart_polygons(), bad)
    with pytest.raises(ChartError, match=match) as err:
        rasterize_chart(bad, open_scene(scene_path))
    assert "bad.shp" in str(err.value)


def test_untransformable_crs(tmp_path, files):
    scene_path, _ = files
    bad = tmp_path / "moon.shp"
    moon = "+proj=longlat +a=1737400 +b=1737400 +no_defs"  # a lunar datum: no transformation to WGS84 exists
    chart_polygons().to_crs("EPSG:4326").set_crs(moon, allow_override=True).to_file(bad)
    with pytest.raises(ChartError, match="cannot transform CRS") as err:
        rasterize_chart(bad, open_scene(scene_path))
    assert "moon.shp" in str(err.value)
