"""Observations: boundary lines, icebergs, distance errors and front positions, against independent references.

Class maps here are the synthetic truth of small scenes written as COGs, or hand-made maps; references are
computed with plain numpy / scipy / skimage on the whole array, never with the code under test.
"""

from __future__ import annotations

import subprocess
import sys

import dask.array as da
import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import xarray as xr
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import LineString, box

from polarxr.errors import PolarxrError, SceneError
from polarxr.observations.boundaries import (ObservationError, extract_boundaries, read_lines, write_lines)
from polarxr.observations.distance import boundary_errors, mean_distance_error
from polarxr.observations.fronts import front_positions, ice_edge_positions
from polarxr.observations.icebergs import find_icebergs
from polarxr.synthetic import CRS, make_scene

SIZE = (256, 288)
PIXEL = 40.0


def _write_map(path, classes: np.ndarray, transform, crs=CRS, tile: int = 64) -> None:
    profile = dict(driver="GTiff", height=classes.shape[0], width=classes.shape[1], count=1, dtype="uint8",
                   nodata=255, transform=transform, tiled=True, blockxsize=tile, blockysize=tile)
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(classes, 1)


@pytest.fixture(scope="module")
def scene_map(tmp_path_factory):
    """A synthetic scene's class truth as a class COG (coast, fjords, pack ice, floes, nodata margins)."""
    root = tmp_path_factory.mktemp("observations")
    scene = make_scene(root / "scene", seed=2, size=SIZE, ice_extent=0.4)
    path = root / "S1A_EW_GRDM_1SDH_20180116T075430_20180116T075530_020177_0226B9_9FE3_class.tif"
    _write_map(path, scene.truth, scene.transform)
    return path, scene


def _reference_lines(field: np.ndarray, transform) -> list[LineString]:
    """Whole-array marching squares with skimage, NaN masked, in map coordinates of pixel centres."""
    from skimage.measure import find_contours

    valid = np.isfinite(field)
    lines = []
    for piece in find_contours(np.where(valid, field, 0), 0.5, mask=valid):
        xs, ys = transform * (piece[:, 1] + 0.5, piece[:, 0] + 0.5)
        lines.append(LineString(np.column_stack([xs, ys])))
    return lines


def _reference_fields(classes: np.ndarray) -> dict[str, np.ndarray]:
    valid = np.isin(classes, (0, 1, 2))
    ocean = np.isin(classes, (1, 2))
    return {"coastline": np.where(valid, (classes == 0).astype(float), np.nan),
            "ice_edge": np.where(ocean, (classes == 2).astype(float), np.nan)}


def _same_lines(got: gpd.GeoDataFrame, expected: list[LineString]) -> None:
    assert len(got) == len(expected)
    assert got["length_m"].sum() == pytest.approx(sum(line.length for line in expected), rel=1e-12)
    assert sorted(np.round(got["length_m"], 6)) == sorted(np.round([line.length for line in expected], 6))
    a, b = shapely.multilinestrings(list(got.geometry)), shapely.multilinestrings(expected)
    assert shapely.hausdorff_distance(a, b) < 1e-6


@pytest.mark.parametrize("chunk", [None, 64, 100, 37])
def test_chunked_lines_equal_whole_map_extraction(scene_map, chunk):
    path, scene = scene_map
    lines = extract_boundaries(path, chunk=chunk, min_pixels=1)
    for name, field in _reference_fields(scene.truth).items():
        expected = _reference_lines(field, scene.transform)
        assert len(expected) > 3, "the map should have several lines of each kind"
        _same_lines(getattr(lines, name), expected)


def _write_probabilities(path, probs: np.ndarray, cf: bool) -> None:
    """A probability store as ``polarxr predict`` writes it: uint8 p x 255 (attr ``scale``) or CF-encoded."""
    data = xr.DataArray(probs.astype(np.float32), dims=("class", "y", "x"), name="probability")
    if cf:
        encoded = data.to_dataset()
        encoded["probability"].encoding.update(dtype="uint8", scale_factor=1 / 255, _FillValue=255)
        encoded.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    else:
        raw = xr.DataArray(np.rint(probs * 255).astype(np.uint8), dims=("class", "y", "x"), name="probability")
        raw.attrs.update(scale=1 / 255)
        raw.to_dataset().to_zarr(path, mode="w", zarr_format=3, consolidated=False)


@pytest.fixture(scope="module")
def probability_store(scene_map, tmp_path_factory):
    """Smooth probabilities around the truth (blurred one-hot), stored as uint8 p x 255."""
    _, scene = scene_map
    one_hot = np.stack([(scene.truth == c).astype(np.float32) for c in (0, 1, 2)])
    smooth = np.stack([ndimage.gaussian_filter(p, 1.5) for p in one_hot]) + 1e-3
    smooth /= smooth.sum(axis=0)
    root = tmp_path_factory.mktemp("probabilities")
    _write_probabilities(root / "raw.zarr", smooth, cf=False)
    _write_probabilities(root / "cf.zarr", np.rint(smooth * 255) / 255, cf=True)
    return root, np.rint(smooth * 255).astype(np.uint8) / np.float32(255)


@pytest.mark.parametrize("chunk", [None, 64, 37])
def test_subpixel_lines_from_probabilities_equal_whole_map(scene_map, probability_store, chunk):
    path, scene = scene_map
    root, probs = probability_store
    lines = extract_boundaries(path, probabilities=root / "raw.zarr", chunk=chunk, min_pixels=1)
    valid = np.isin(scene.truth, (0, 1, 2))
    coast = np.where(valid, probs[0], np.nan)
    ocean = probs[1] + probs[2]
    edge = np.where(valid & (scene.truth != 0) & (ocean > 0), probs[2] / np.where(ocean > 0, ocean, 1), np.nan)
    _same_lines(lines.coastline, _reference_lines(coast, scene.transform))
    _same_lines(lines.ice_edge, _reference_lines(edge.astype(np.float32), scene.transform))
    # sub-pixel: vertices are not all on the half-pixel lattice of class-map contours
    xy = shapely.get_coordinates(lines.coastline.geometry.values)
    offsets = np.abs(((xy[:, 0] - scene.transform.c) / PIXEL * 2) % 1)
    assert np.mean(np.minimum(offsets, 1 - offsets) > 1e-3) > 0.5
    # and they stay near the class-map coastline
    hard = extract_boundaries(path, min_pixels=1)
    assert mean_distance_error(lines.coastline.geometry, hard.coastline.geometry)["mde_m"] < PIXEL


def test_cf_encoded_probabilities_give_the_same_lines(scene_map, probability_store):
    path, _ = scene_map
    root, _ = probability_store
    raw = extract_boundaries(path, probabilities=root / "raw.zarr")
    cf = extract_boundaries(path, probabilities=root / "cf.zarr")
    assert cf.coastline["length_m"].sum() == pytest.approx(raw.coastline["length_m"].sum(), rel=1e-5)
    assert cf.ice_edge["length_m"].sum() == pytest.approx(raw.ice_edge["length_m"].sum(), rel=1e-5)


def test_lines_are_valid_in_the_scene_crs_and_fronts_inside_glaciers(scene_map, tmp_path):
    path, scene = scene_map
    with rasterio.open(path) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs
    # a glacier region across the middle of the map, given in WGS84: it must be reprojected
    region = box(left, bottom + 0.3 * (top - bottom), right, bottom + 0.6 * (top - bottom))
    glaciers = gpd.GeoDataFrame({"id": ["G1"]}, geometry=[region], crs=crs).to_crs("EPSG:4326")
    glaciers.to_file(tmp_path / "glaciers.geojson")
    lines = extract_boundaries(path, glaciers=tmp_path / "glaciers.geojson")
    out = tmp_path / "lines.gpkg"
    write_lines(lines.layers(), out, tmp_path / "lines.parquet")
    extent = box(left, bottom, right, top)
    for layer in ("coastline", "ice_edge", "fronts"):
        back = read_lines(out, layer)
        assert back.crs == crs, layer
        assert len(back) > 0 and back.is_valid.all() and (back.geom_type == "LineString").all(), layer
        assert back.within(extent.buffer(1e-6)).all(), layer
    fronts = read_lines(out, "fronts")
    assert set(fronts["glacier"]) == {"G1"}
    local = gpd.read_file(tmp_path / "glaciers.geojson").to_crs(crs).geometry.iloc[0]
    assert fronts.within(local.buffer(1e-3)).all()
    clipped = shapely.intersection(shapely.multilinestrings(list(lines.coastline.geometry)), local).length
    assert fronts["length_m"].sum() == pytest.approx(clipped, rel=1e-9)
    every = gpd.read_parquet(tmp_path / "lines.parquet")
    assert set(every["layer"]) == {"coastline", "ice_edge", "fronts"} and every.crs == crs


def _reference_icebergs(classes: np.ndarray, max_px: int) -> list[tuple[int, float, float]]:
    """Ice objects (4-connected) none of whose pixels touches land / nodata / the map edge (8-neighbours)."""
    labels, n = ndimage.label(classes == 2)
    other = np.pad(~np.isin(classes, (1, 2)), 1, constant_values=True)
    near_other = ndimage.binary_dilation(other, structure=np.ones((3, 3), bool))[1:-1, 1:-1]
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[sl] == k
        if near_other[sl][mask].any() or mask.sum() > max_px:
            continue
        rows, cols = np.nonzero(mask)
        out.append((int(mask.sum()), rows.mean() + sl[0].start + 0.5, cols.mean() + sl[1].start + 0.5))
    return sorted(out)


@pytest.mark.parametrize("chunk", [None, 64, 37])
def test_icebergs_equal_whole_map_labelling(scene_map, chunk):
    path, scene = scene_map
    classes = scene.truth.copy()
    rng = np.random.default_rng(1)
    sea = np.argwhere(classes == 1)
    for r, c in sea[rng.choice(len(sea), 60, replace=False)]:  # 1-9 px bergs, some across chunk borders
        classes[r:r + rng.integers(1, 4), c:c + rng.integers(1, 4)] = 2
    berg_path = path.with_name("bergs_class.tif")
    _write_map(berg_path, classes, scene.transform)
    expected = _reference_icebergs(classes, max_px=625)
    bergs = find_icebergs(berg_path, chunk=chunk)
    assert len(expected) > 30
    assert len(bergs) == len(expected)
    inverse = ~scene.transform
    cols, rows = inverse * (bergs["x"].to_numpy(), bergs["y"].to_numpy())
    got = sorted(zip(bergs["n_pixels"].tolist(), rows, cols))
    for (n_got, r_got, c_got), (n_exp, r_exp, c_exp) in zip(got, expected):
        assert (n_got, r_got, c_got) == pytest.approx((n_exp, r_exp, c_exp), abs=1e-6)
    assert bergs.crs == rasterio.open(berg_path).crs
    np.testing.assert_allclose(bergs["area_km2"], bergs["n_pixels"] * 0.0016)
    small = find_icebergs(berg_path, chunk=chunk, max_area_km2=4 * 0.0016)
    assert len(small) == sum(1 for n, _, _ in expected if n <= 4)


def test_mean_distance_error_by_hand():
    a = [LineString([(0, 0), (100, 0)])]
    b = [LineString([(0, 10), (100, 10)])]
    assert mean_distance_error(a, b, spacing_m=20)["mde_m"] == pytest.approx(10)
    # a longer prediction: A's points at x = 0, 20, .., 100; B's at x = 0, 16.7, 33.3, 50 (segmentize by 20 m)
    short = [LineString([(0, 10), (50, 10)])]
    a_to_b = [10, 10, 10, np.hypot(10, 10), np.hypot(30, 10), np.hypot(50, 10)]
    b_to_a = [10, 10, 10, 10]
    scores = mean_distance_error(a, short, spacing_m=20)
    assert scores["mde_m"] == pytest.approx(np.mean(a_to_b + b_to_a))
    assert scores["pred_to_ref_m"] == pytest.approx(np.mean(a_to_b))
    assert scores["ref_to_pred_m"] == pytest.approx(10)
    assert scores["p95_m"] == pytest.approx(np.percentile(a_to_b + b_to_a, 95))
    # nearest point on the other line, not its nearest vertex: a point above the middle of a long segment
    assert mean_distance_error([LineString([(50, 3), (50.0001, 3)])], [LineString([(0, 0), (100, 0)])],
                               spacing_m=1000)["pred_to_ref_m"] == pytest.approx(3)
    assert np.isnan(mean_distance_error([], b)["mde_m"])


def test_boundary_errors_of_a_shifted_map(scene_map):
    _, scene = scene_map
    truth = xr.DataArray(da.from_array(scene.truth, chunks=64), dims=("y", "x")).rio.write_crs(CRS)
    truth = truth.rio.write_transform(scene.transform)
    scores = boundary_errors(truth, truth, min_pixels=1)
    assert scores["coastline_mde_m"] == 0 and scores["ice_edge_mde_m"] == 0
    shifted = np.full_like(scene.truth, 255)
    shifted[:, 1:] = scene.truth[:, :-1]  # every line moves one pixel (40 m) east
    pred = truth.copy(data=da.from_array(shifted, chunks=100))
    scores = boundary_errors(pred, truth, min_pixels=1)
    assert 0 < scores["coastline_mde_m"] <= PIXEL and scores["coastline_p95_m"] <= PIXEL + 1e-6
    assert 0 < scores["ice_edge_mde_m"] <= PIXEL


def _front_map(front_row: int, shape=(120, 80)) -> np.ndarray:
    """A fjord running north-south: land (glacier) north of ``front_row``, sea south; land walls each side."""
    classes = np.ones(shape, np.uint8)
    classes[:front_row] = 0
    classes[:, :20] = 0
    classes[:, 60:] = 0
    return classes


def test_box_method_recovers_a_known_front_change(tmp_path):
    transform = from_origin(100_000, -2_000_000, PIXEL, PIXEL)
    boxes, positions = tmp_path / "boxes.geojson", {}
    x0, y_top = 100_000, -2_000_000
    # a box inside the fjord (cols 25-55, rows 10-110), its upstream edge at row 10
    rect = box(x0 + 25 * PIXEL, y_top - 110 * PIXEL, x0 + 55 * PIXEL, y_top - 10 * PIXEL)
    tilted = shapely.affinity.rotate(box(x0 + 30 * PIXEL, y_top - 100 * PIXEL, x0 + 50 * PIXEL, y_top - 20 * PIXEL), 0)
    gpd.GeoDataFrame({"id": ["axis", "inner"]}, geometry=[rect, tilted], crs=CRS).to_file(boxes)
    for front_row in (40, 47, 63):
        path = tmp_path / f"front{front_row}_class.tif"
        _write_map(path, _front_map(front_row), transform)
        positions[front_row] = front_positions(path, boxes)
    # upstream edge at row 10 -> the front (between rows front_row - 1 and front_row) is (front_row - 10) px away
    for front_row, found in positions.items():
        assert found["axis"] == pytest.approx((front_row - 10) * PIXEL)
        assert found["inner"] == pytest.approx((front_row - 20) * PIXEL)
    assert positions[63]["axis"] - positions[40]["axis"] == pytest.approx(23 * PIXEL)


def test_ice_edge_along_a_transect(tmp_path):
    classes = np.ones((60, 100), np.uint8)
    classes[:, :10] = 0
    classes[:, 10:47] = 2
    transform = from_origin(0, 0, PIXEL, PIXEL)
    path = tmp_path / "ice_class.tif"
    _write_map(path, classes, transform, tile=16)
    transect = LineString([(10 * PIXEL, -30 * PIXEL), (90 * PIXEL, -30 * PIXEL)])  # from the coast seaward
    found = ice_edge_positions(path, gpd.GeoDataFrame({"id": ["T1"]}, geometry=[transect], crs=CRS))
    assert found["T1"] == pytest.approx(37 * PIXEL, abs=PIXEL / 2)


def test_bad_inputs_give_clear_errors(scene_map, tmp_path):
    path, scene = scene_map
    no_crs = tmp_path / "no_crs.tif"
    _write_map(no_crs, scene.truth, scene.transform, crs=None)
    with pytest.raises(SceneError, match="no CRS"):
        extract_boundaries(no_crs)
    with pytest.raises(SceneError, match="does not exist"):
        find_icebergs(tmp_path / "missing.tif")
    (tmp_path / "broken.geojson").write_text("{not json")
    with pytest.raises(ObservationError, match="not a readable vector file"):
        extract_boundaries(path, glaciers=tmp_path / "broken.geojson")
    far = gpd.GeoDataFrame({"id": ["far"]}, geometry=[box(0, 0, 1000, 1000)], crs=CRS)
    far.to_file(tmp_path / "far.geojson")
    with pytest.raises(ObservationError, match="'far' lies outside the class map"):
        front_positions(path, tmp_path / "far.geojson")
    with pytest.raises(ObservationError, match="does not exist"):
        extract_boundaries(path, probabilities=tmp_path / "missing.zarr")
    small = xr.DataArray(np.zeros((3, 10, 10), np.uint8), dims=("class", "y", "x"), name="probability")
    small.to_dataset().to_zarr(tmp_path / "small.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(ObservationError, match="do not match the class map"):
        extract_boundaries(path, probabilities=tmp_path / "small.zarr")


def test_boundaries_and_icebergs_commands(scene_map, tmp_path):
    path, _ = scene_map
    out = tmp_path / "lines.gpkg"
    run = subprocess.run([sys.executable, "-m", "polarxr.cli.main", "boundaries", str(path), "--out", str(out),
                          "--workers", "1"], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "coastline" in run.stdout and "ice_edge" in run.stdout
    assert len(read_lines(out, "coastline")) > 0 and out.with_suffix(".parquet").exists()
    bergs = tmp_path / "bergs.gpkg"
    run = subprocess.run([sys.executable, "-m", "polarxr.cli.main", "icebergs", str(path), "--out", str(bergs),
                          "--workers", "1", "--max-area", "0.5"], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert len(gpd.read_file(bergs, layer="icebergs")) == len(find_icebergs(path, max_area_km2=0.5))
    bad = subprocess.run([sys.executable, "-m", "polarxr.cli.main", "boundaries", str(tmp_path / "nope.tif"),
                          "--out", str(out), "--workers", "1"], capture_output=True, text=True, timeout=180)
    assert bad.returncode == 2 and "nope.tif" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_polarxr_error_is_the_base(tmp_path):
    assert issubclass(ObservationError, PolarxrError)


def test_lines_quicklook_draws_the_lines(scene_map, tmp_path):
    from matplotlib.image import imread

    from polarxr.observations.icebergs import write_icebergs
    from polarxr.quicklook import lines_quicklook

    path, scene = scene_map
    lines = extract_boundaries(path)
    write_lines(lines.layers(), tmp_path / "lines.gpkg")
    write_icebergs(find_icebergs(path), tmp_path / "bergs.gpkg")
    png = lines_quicklook(scene.scene, tmp_path / "lines.gpkg", tmp_path / "lines.png",
                          icebergs_gpkg=tmp_path / "bergs.gpkg", max_side=400)
    image = imread(png)
    assert max(image.shape[:2]) == 400
    # the coastline colour (orange) appears in the picture
    orange = (image[..., 0] > 0.9) & (image[..., 1] > 0.4) & (image[..., 1] < 0.6) & (image[..., 2] < 0.2)
    assert orange.sum() > 50
