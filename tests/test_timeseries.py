"""Time series of class areas and boundary lengths from class COGs (no model involved).

Class maps here are rasterized from the synthetic charts (``rasterize_chart`` + ``write_cog``) or written
from the synthetic truth, so the tests check the area and boundary arithmetic, the chunking, the region
clipping and the files, against truths computed independently with numpy on these small maps.
"""

from __future__ import annotations

import math
import shutil

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from matplotlib.image import imread
from pyproj import CRS, Proj, Transformer
from rasterio import features
from shapely.geometry import box
from typer.testing import CliRunner

from polarxr.cli.main import app
from polarxr.errors import PolarxrError, SceneError
from polarxr.io import write_cog
from polarxr.labels import rasterize_chart
from polarxr.region import RegionError
from polarxr.scenes import open_scene
from polarxr.synthetic import make_sequence
from polarxr.timeseries import STAT_COLUMNS, build_timeseries, class_areas, plot_timeseries

SIZE = (256, 288)
N_SCENES = 4
PIXEL_KM2 = 0.04 * 0.04
#: Charts are generalised (simplified by 60-120 m, small floes and islands dropped), so areas of maps
#: rasterized from them may differ from the raster truth by this fraction of the valid area.
CHART_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """A synthetic sequence over one footprint with class COGs in a `polarxr process`-like output folder."""
    root = tmp_path_factory.mktemp("sequence")
    scenes = make_sequence(root / "scenes", n_scenes=N_SCENES, size=SIZE, seed=11)
    out = root / "out"
    for s in scenes:
        grid = open_scene(s.scene)
        name = s.scene.name.removesuffix(".tif")
        # chunks=None: one block per small scene (the chart rasterizer's own chunking is tested elsewhere)
        write_cog(rasterize_chart(s.chart, grid), out / name / f"{name}_class.tif", nodata=255)
        truth = xr.DataArray(da.from_array(s.truth, chunks=128), dims=("y", "x"), coords={"y": grid.y, "x": grid.x})
        truth = truth.rio.write_crs(grid.rio.crs).rio.write_transform(grid.rio.transform())
        write_cog(truth, root / "truth" / f"{name}_class.tif", nodata=255)
    return root, scenes


def _numpy_stats(classes: np.ndarray) -> list[float]:
    """Map-plane areas (km²) and 4-neighbour boundary lengths (km) of a whole small map, with plain numpy."""
    def pairs(p: int, q: int) -> int:
        h = ((classes[:, :-1] == p) & (classes[:, 1:] == q)) | ((classes[:, :-1] == q) & (classes[:, 1:] == p))
        v = ((classes[:-1] == p) & (classes[1:] == q)) | ((classes[:-1] == q) & (classes[1:] == p))
        return int(h.sum() + v.sum())

    areas = [np.count_nonzero(classes == c) * PIXEL_KM2 for c in (0, 1, 2)]
    nodata = np.count_nonzero(~np.isin(classes, (0, 1, 2, 254))) * PIXEL_KM2
    return [*areas, nodata, pairs(0, 1) * 0.04, pairs(2, 1) * 0.04]


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_areas_from_truth_maps_equal_synthetic_truth(sequence):
    root, scenes = sequence
    frame = build_timeseries(sorted((root / "truth").glob("*_class.tif")), ellipsoidal=False)
    assert list(frame.index) == [pd.Timestamp(s.start, tz="UTC") for s in scenes]
    for (_, row), s in zip(frame.iterrows(), scenes):
        for name in ("land", "sea", "ice"):
            assert row[f"{name}_km2"] == pytest.approx(s.areas_km2[name], rel=1e-9)
        assert row["valid_km2"] == pytest.approx(s.valid_km2, rel=1e-9)
        assert row["ice_fraction"] == pytest.approx(s.ice_fraction, rel=1e-9)


def test_chart_maps_follow_the_ice_extent_truth(sequence):
    root, scenes = sequence
    frame = build_timeseries(root / "out", ellipsoidal=False)
    assert len(frame) == N_SCENES
    truth_ice = np.array([s.areas_km2["ice"] for s in scenes])
    assert np.ptp(truth_ice) > 0.1 * scenes[0].valid_km2, "the sequence should advance and retreat the ice"
    for (_, row), s in zip(frame.iterrows(), scenes):
        for name in ("land", "sea", "ice"):
            assert abs(row[f"{name}_km2"] - s.areas_km2[name]) <= CHART_TOLERANCE * s.valid_km2, (name, s.start)
    # the series rises and falls with the truth
    assert list(np.argsort(frame["ice_km2"].to_numpy())) == list(np.argsort(truth_ice))


@pytest.mark.parametrize("chunk", [None, 100, 64, 37])
def test_blockwise_stats_equal_numpy_for_any_chunking(sequence, chunk):
    root, _ = sequence
    path = sorted((root / "out").glob("*/*_class.tif"))[1]
    expected = _numpy_stats(_read(path))
    stats = class_areas(path, ellipsoidal=False, chunk=chunk)
    assert list(stats) == list(STAT_COLUMNS)
    assert [stats[c] for c in STAT_COLUMNS] == pytest.approx(expected, rel=1e-12, abs=1e-9)
    assert stats["land_sea_km"] > 0 and stats["ice_sea_km"] > 0  # the comparison is not vacuous


def test_ellipsoidal_areas_remove_the_projection_scale(sequence):
    root, _ = sequence
    path = sorted((root / "out").glob("*/*_class.tif"))[0]
    plane = class_areas(path, ellipsoidal=False)
    ground = class_areas(path, ellipsoidal=True, chunk=64)
    assert class_areas(path, ellipsoidal=True) == pytest.approx(ground, rel=1e-9)  # chunking does not matter
    with rasterio.open(path) as src:
        crs = CRS.from_user_input(src.crs)
        x, y = src.xy(src.height // 2, src.width // 2)
    lon, lat = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True).transform(x, y)
    scale = Proj(crs).get_factors(lon, lat).areal_scale  # map area / true area at the centre
    assert abs(scale - 1) > 1e-3, "the test grid should be distorted enough to see the correction"
    for column in ("land_km2", "sea_km2", "ice_km2"):
        assert ground[column] == pytest.approx(plane[column] / scale, rel=2e-3)
    for column in ("land_sea_km", "ice_sea_km"):
        assert ground[column] == pytest.approx(plane[column] / math.sqrt(scale), rel=2e-3)


def test_region_clips_areas_and_boundaries(sequence, tmp_path):
    root, _ = sequence
    path = sorted((root / "out").glob("*/*_class.tif"))[2]
    with rasterio.open(path) as src:
        classes, transform, crs = src.read(1), src.transform, src.crs
        left, bottom, right, top = src.bounds
    part = box(left + 0.2 * (right - left), bottom + 0.1 * (top - bottom), left + 0.7 * (right - left), top - 1000)
    region = gpd.GeoDataFrame({"name": ["fjord"]}, geometry=[part], crs=crs).to_crs("EPSG:4326")
    region_path = tmp_path / "fjord.geojson"
    region.to_file(region_path)
    # independent truth: the region burnt with rasterio (pixel centres), pixels outside set to a spare code
    inside = features.rasterize([region.to_crs(crs).geometry.iloc[0]], out_shape=classes.shape, transform=transform,
                                fill=0, default_value=1).astype(bool)
    expected = _numpy_stats(np.where(inside, classes, 254))
    stats = class_areas(path, region=region_path, ellipsoidal=False, chunk=64)
    assert [stats[c] for c in STAT_COLUMNS] == pytest.approx(expected, rel=1e-12, abs=1e-9)
    whole = class_areas(path, ellipsoidal=False)
    assert sum(stats[c] for c in STAT_COLUMNS[:4]) < 0.5 * sum(whole[c] for c in STAT_COLUMNS[:4])

    far = tmp_path / "svalbard.geojson"
    gpd.GeoDataFrame(geometry=[box(15, 77, 20, 79)], crs="EPSG:4326").to_file(far)
    with pytest.raises(RegionError, match="outside the region of interest"):
        class_areas(path, region=far)
    frame = build_timeseries(root / "out", region=far)
    assert frame[list(STAT_COLUMNS)].isna().all().all()
    assert frame["note"].str.contains("outside the region").all()


def test_timeseries_files_and_plot(sequence, tmp_path):
    root, scenes = sequence
    csv, parquet, png = tmp_path / "ts.csv", tmp_path / "ts.parquet", tmp_path / "ts.png"
    frame = build_timeseries(root / "out", csv=csv, parquet=parquet)
    from_csv = pd.read_csv(csv, index_col="time", parse_dates=["time"])
    from_parquet = pd.read_parquet(parquet)
    assert list(from_parquet.index) == list(frame.index)
    for column in STAT_COLUMNS:
        np.testing.assert_allclose(from_csv[column], frame[column], rtol=1e-9)
        np.testing.assert_allclose(from_parquet[column], frame[column], rtol=0)
    assert list(from_csv["scene"]) == [s.scene.name.removesuffix(".tif") for s in scenes]
    plot_timeseries(frame, png)
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    assert not list(tmp_path.glob(".*tmp-*")), "temporaries left behind"


def test_timeseries_command(sequence, tmp_path):
    root, _ = sequence
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    region = tmp_path / "coast.geojson"
    with rasterio.open(next(out.glob("*/*_class.tif"))) as src:
        gpd.GeoDataFrame(geometry=[box(*src.bounds)], crs=src.crs).to_crs("EPSG:4326").to_file(region)
    result = CliRunner().invoke(app, ["timeseries", str(out), "--region", str(region)])
    assert result.exit_code == 0, result.output
    for suffix in ("csv", "parquet", "png"):
        assert (out / f"timeseries_coast.{suffix}").stat().st_size > 0
    assert "ice km²" in result.output
    frame = pd.read_parquet(out / "timeseries_coast.parquet")
    assert len(frame) == N_SCENES and frame["ice_km2"].notna().all()


def test_bad_inputs_are_named(sequence, tmp_path):
    root, scenes = sequence
    with pytest.raises(SceneError, match="not a class map"):
        class_areas(scenes[0].scene)  # a 3-band scene, not a class map
    with pytest.raises(PolarxrError, match="no class maps"):
        build_timeseries(tmp_path)
    unnamed = tmp_path / "map_class.tif"
    shutil.copy(next((root / "out").glob("*/*_class.tif")), unnamed)
    with pytest.raises(SceneError, match="acquisition time"):
        build_timeseries([unnamed])
    with pytest.raises(SceneError, match="does not exist"):
        class_areas(tmp_path / "missing_class.tif")


def test_fronts_and_icebergs_of_truth_maps_follow_the_synthetic_truth(sequence, tmp_path):
    """Box method on the truth maps: within 1 px of the generator's front; iceberg counts near its count."""
    from polarxr.synthetic import write_glacier_files

    root, scenes = sequence
    boxes, _ = write_glacier_files(scenes, tmp_path)
    frame = build_timeseries(sorted((root / "truth").glob("*_class.tif")), fronts=boxes, ellipsoidal=False)
    assert "front_G1_m" in frame.columns and "icebergs_ge4px" in frame.columns
    for (_, row), s in zip(frame.iterrows(), scenes):
        assert abs(row["front_G1_m"] - s.fronts_m["G1"]) <= 40.0, s.start
        assert abs(row["icebergs_ge4px"] - s.icebergs) <= max(1, 0.1 * s.icebergs), s.start
    assert np.ptp(frame["front_G1_m"]) > 5 * 40.0
    truth_csv = tmp_path / "truth.csv"
    from polarxr.synthetic import truth_table

    truth_table(scenes).to_csv(truth_csv, index=False)
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    result = CliRunner().invoke(app, ["timeseries", str(out), "--fronts", str(boxes), "--truth", str(truth_csv)])
    assert result.exit_code == 0, result.output
    saved = pd.read_parquet(out / "timeseries.parquet")
    assert saved["front_G1_m"].notna().all() and saved["icebergs_ge4px"].notna().all()
    assert imread(out / "timeseries.png").shape[0] > 4 * 300  # four panels: areas, lengths, fronts, icebergs
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame({"id": ["far"]}, geometry=[box(0, 0, 1000, 1000)], crs=scenes[0].crs).to_file(far)
    with pytest.raises(PolarxrError, match="'far' lies outside the class map"):
        build_timeseries(out, fronts=far)
