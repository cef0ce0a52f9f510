"""Synthetic scenes and charts: real file formats, determinism, class statistics, swath effects, sequences."""

from __future__ import annotations

import sys
from datetime import datetime

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from pyproj import CRS as ProjCRS
from scipy.ndimage import uniform_filter
from typer.testing import CliRunner

from polarxr.classes import ICE, LAND, NO_LABEL, WATER
from polarxr.errors import PolarxrError
from polarxr.labels import EGG_CODE_COLUMNS, labels_for_scene, read_chart
from polarxr.scenes import chart_name_for, open_scene, parse_product_name, scene_catalog
from polarxr.synthetic import (CRS, DN_SCALING, make_dataset, make_scene, make_sequence, seasonal_ice_extent,
                               window_count)

SIZE = (600, 700)  # larger than one 512 px tile, smaller than one 1024 px window


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """The same seed written as the 8-bit and the float product."""
    out = tmp_path_factory.mktemp("synthetic")
    eight = make_scene(out / "8bit", seed=1, size=SIZE, ice_extent=0.5)
    flt = make_scene(out / "float", seed=1, size=SIZE, ice_extent=0.5, product="float")
    return eight, flt


def _best_threshold_accuracy(values: np.ndarray, is_ice: np.ndarray) -> float:
    """Accuracy of the best single threshold (either direction) separating ice from sea."""
    thresholds = np.quantile(values, np.linspace(0.005, 0.995, 199))
    return max(max(((values > t) == is_ice).mean(), ((values <= t) == is_ice).mean()) for t in thresholds)


def test_eight_bit_scene_is_a_real_product_file(scenes):
    scene, _ = scenes
    product = parse_product_name(scene.scene)
    assert (product.mode, product.product_type, product.polarisation) == ("EW", "GRDM", "HH+HV")
    assert product.mission in {"S1A", "S1B"} and product.start == scene.start
    assert product.processing == ("Orb", "Cal", "Spk", "TC", "rgb", "8bit")
    assert scene.chart.name == chart_name_for(scene.start) and scene.chart.parent == scene.scene.parent
    with rasterio.open(scene.scene) as src:
        assert ProjCRS.from_user_input(src.crs) == ProjCRS.from_user_input(CRS)
        assert (src.count, src.dtypes, src.nodata) == (3, ("uint8",) * 3, 0)
        assert src.descriptions == ("HH", "HV", "HH-HV")
        assert src.res == (40.0, 40.0) and (src.height, src.width) == SIZE
        assert src.block_shapes == [(512, 512)] * 3 and src.compression.name == "deflate"
        assert src.overviews(1) == [2]
        assert float(src.tags(1)["DB_MIN"]) == DN_SCALING["HH"][0]
        data = src.read()
    opened = open_scene(scene.scene)
    assert list(opened.band.values) == ["HH", "HV", "HH-HV"] and opened.attrs["units"] == "dn"
    truth = scene.truth
    inside = truth != NO_LABEL
    # valid data is never 0; the nodata margins (slanted swath edges) are exactly the 0 pixels
    assert (data[:, inside] >= 1).all() and (data[:, ~inside] == 0).all()
    assert 0.05 < (~inside).mean() < 0.5
    assert not inside[0, 0] and not inside[-1, -1] and not inside[0, -1] and not inside[-1, 0]
    assert inside[SIZE[0] // 2, SIZE[1] // 2]


def test_float_product_and_documented_dn_scaling(scenes):
    eight, flt = scenes
    assert flt.scene.name.endswith("_Orb_Cal_Spk_TC.tif")
    with rasterio.open(flt.scene) as src:
        assert (src.count, src.dtypes) == (2, ("float32", "float32")) and np.isnan(src.nodata)
        assert src.descriptions == ("HH", "HV") and src.tags()["SIGMA0_UNITS"] == "linear"
        sigma0 = src.read()
    assert open_scene(flt.scene).attrs["units"] == "linear"
    inside = flt.truth != NO_LABEL
    assert (sigma0[:, inside] > 0).all() and np.isnan(sigma0[:, ~inside]).all()
    # same seed: the 8-bit product is the documented rendering of the same sigma0
    with rasterio.open(eight.scene) as src:
        dn = src.read()
    hh_db, hv_db = 10 * np.log10(sigma0[:, inside])
    for band, (lo, hi) in enumerate(DN_SCALING.values()):
        db = (hh_db, hv_db, hh_db - hv_db)[band]
        expected = np.clip(np.rint(1 + 254 * (db - lo) / (hi - lo)), 1, 255)
        diff = np.abs(dn[band][inside].astype(int) - expected)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_chart_is_a_generalised_shapefile_of_the_truth(scenes):
    scene, _ = scenes
    chart = gpd.read_file(scene.chart)
    assert scene.chart.with_suffix(".prj").exists()
    assert ProjCRS.from_user_input(chart.crs) == ProjCRS.from_user_input(CRS)
    assert set(chart["poly_type"]) == {"L", "W", "I"}
    assert {*EGG_CODE_COLUMNS, "area", "perimeter"} <= set(chart.columns)
    ice, other = chart[chart.poly_type == "I"], chart[chart.poly_type != "I"]
    assert (ice["CT"] != "99").all() and (other[list(EGG_CODE_COLUMNS)] == "99").all().all()
    np.testing.assert_allclose(chart["area"], chart.geometry.area, rtol=1e-6)
    assert chart.geometry.is_valid.all()
    assert len(read_chart(scene.chart)) == len(chart)
    # the chart's labels match the truth closely but not exactly (simplified, small features dropped)
    _, labels = labels_for_scene(scene.scene, scene.chart)
    labels, truth = labels.values, scene.truth
    inside = truth != NO_LABEL
    assert (labels[~inside] == NO_LABEL).all()
    agreement = (labels[inside] == truth[inside]).mean()
    assert 0.95 < agreement < 1.0


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path, scenes):
    scene, _ = scenes
    again = make_scene(tmp_path / "again", seed=1, size=SIZE, ice_extent=0.5)
    other = make_scene(tmp_path / "other", seed=2, size=SIZE, ice_extent=0.5)
    assert again.scene.name == scene.scene.name and again.areas_km2 == scene.areas_km2
    with rasterio.open(scene.scene) as a, rasterio.open(again.scene) as b, rasterio.open(other.scene) as c:
        first = a.read()
        assert first.tobytes() == b.read().tobytes()
        assert a.transform == b.transform
        assert first.shape != c.read().shape or (first != c.read()).mean() > 0.5
        assert a.transform != c.transform
    assert gpd.read_file(scene.chart).geometry.equals(gpd.read_file(again.chart).geometry)
    assert other.scene.name != scene.scene.name


def test_classes_overlap_per_pixel_but_context_separates_them(scenes):
    _, flt = scenes
    truth = flt.truth
    inside = truth != NO_LABEL
    fractions = {c: (truth[inside] == c).mean() for c in (LAND, WATER, ICE)}
    assert all(f > 0.05 for f in fractions.values()), fractions
    with rasterio.open(flt.scene) as src:
        db = 10 * np.log10(src.read())
    hh, hv = db
    means = {c: hh[truth == c].mean() for c in (LAND, WATER, ICE)}
    assert means[LAND] > means[ICE] + 2 > means[WATER] + 4  # class means differ ...
    water_or_ice = (truth == WATER) | (truth == ICE)
    is_ice = truth[water_or_ice] == ICE
    per_pixel = _best_threshold_accuracy(hh[water_or_ice], is_ice)
    assert per_pixel < 0.8  # ... but the distributions overlap: one threshold is far from perfect
    # context (a 9 x 9 mean of each band) separates them clearly better
    context = max(_best_threshold_accuracy(uniform_filter(np.where(inside, band, np.nanmean(band)), 9)[water_or_ice],
                                           is_ice) for band in (hh, hv))
    assert context > per_pixel + 0.05


def test_incidence_gradient_across_the_swath(tmp_path):
    scene = make_scene(tmp_path, seed=0, size=(512, 512), ice_extent=0.0, product="float")
    truth = scene.truth
    with rasterio.open(scene.scene) as src:
        hh = 10 * np.log10(src.read(1))
    columns = np.broadcast_to(np.arange(512), truth.shape)
    sea = truth == WATER
    profile = [hh[sea & (columns >= lo) & (columns < lo + 128)].mean() for lo in range(0, 512, 128)]
    steps = np.diff(profile)
    assert (np.all(steps > 0) or np.all(steps < 0)) and abs(profile[-1] - profile[0]) > 3, profile


def test_generation_is_windowed_and_seamless(tmp_path):
    size = (1200, 1300)  # 2 x 2 windows of at most 1024 px
    calls = []
    scene = make_scene(tmp_path, seed=4, size=size, ice_extent=0.3, progress=lambda: calls.append(1))
    assert len(calls) == window_count(size) == 4
    with rasterio.open(scene.scene) as src:
        hh = src.read(1).astype(float)
        assert src.overviews(1) == [2, 4]
    truth = scene.truth
    assert ((hh == 0) == (truth == NO_LABEL)).all()  # the swath continues across the window edges
    np.testing.assert_array_equal(scene.truth_window(Window(1000, 1010, 60, 50)), truth[1010:1060, 1000:1060])
    # no seam at the window edges: averaged along the edge (speckle averages out), the step between pixel
    # 1023 and 1024 is like the steps between its neighbours
    for image in (hh, hh.T):
        band = image[:, 1016:1032]
        inside = (band > 0).all(axis=1)
        assert inside.sum() > 300
        steps = np.abs(np.diff(band[inside].mean(axis=0)))
        assert steps[7] < 1.5 * np.delete(steps, 7).max(), steps


def test_sequence_follows_the_seasonal_ice_extent(tmp_path):
    sequence = make_sequence(tmp_path, n_scenes=6, size=(256, 256), seed=3, glaciers=False)
    starts = [s.start for s in sequence]
    assert all((b - a).days % 12 == 0 and b > a for a, b in zip(starts, starts[1:]))
    assert len({parse_product_name(s.scene).mission for s in sequence}) == 1
    assert len({parse_product_name(s.scene).relative_orbit for s in sequence}) == 1
    assert len({s.transform for s in sequence}) == 1
    land = [s.areas_km2["land"] for s in sequence]
    assert max(land) == min(land) > 0  # one footprint, one coast
    extents = np.array([s.ice_extent for s in sequence])
    np.testing.assert_allclose(extents, [seasonal_ice_extent(t) for t in starts])
    ice = np.array([s.areas_km2["ice"] for s in sequence])
    assert np.corrcoef(extents, ice)[0, 1] > 0.9
    assert ice[extents.argmax()] > 2 * ice[extents.argmin()]
    for scene in sequence:
        total = sum(scene.areas_km2.values())
        assert total == pytest.approx(scene.valid_km2)
        assert total == pytest.approx((scene.truth != NO_LABEL).sum() * 0.0016)
        with rasterio.open(scene.scene) as src:
            assert float(src.tags()["TRUE_AREA_KM2_ICE"]) == pytest.approx(scene.areas_km2["ice"], abs=1e-3)


def test_dataset_one_scene_per_month_paired_with_charts(tmp_path):
    dataset = make_dataset(tmp_path, n_scenes=3, size=(128, 160), seed=7)
    assert [s.start.month for s in dataset] == [1, 2, 3]
    assert len({s.transform for s in dataset}) == 3  # different places on the coast
    catalog = scene_catalog(tmp_path)
    assert len(catalog) == 3 and catalog["chart"].notna().all()
    assert [p.name for p in catalog["chart"]] == [s.chart.name for s in dataset]


def test_bad_arguments_name_the_folder_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    for kwargs, problem in ((dict(product="16bit"), "unknown product"), (dict(size=(10, 10)), "too small"),
                            (dict(ice_extent=1.5), "outside")):
        with pytest.raises(PolarxrError, match=problem) as err:
            make_scene(out, seed=0, **kwargs)
        assert str(out) in str(err.value)
    assert not out.exists()


def test_synth_command(tmp_path):
    from polarxr.cli.main import app

    out = tmp_path / "seq"
    result = CliRunner().invoke(app, ["synth", str(out), "--scenes", "2", "--size", "96", "128", "--seed", "5",
                                      "--sequence", "--product", "float", "--quicklook"])
    assert result.exit_code == 0, result.output
    tifs = sorted(out.glob("*_Orb_Cal_Spk_TC.tif"))
    assert len(tifs) == 2 and len(list(out.glob("seaice_s1_*.shp"))) == 2 and len(list(out.glob("*.png"))) == 2
    truth = (out / "truth.csv").read_text().splitlines()
    assert truth[0].startswith("scene,chart,start") and len(truth) == 3
    assert "icebergs" in truth[0] and "front_G1_m" in truth[0]
    boxes = gpd.read_file(out / "glacier_boxes.geojson")
    assert list(boxes["id"]) == ["G1"] and (boxes["width_m"] > 0).all()
    assert (out / "glaciers.geojson").exists()
    with rasterio.open(tifs[0]) as src:
        assert (src.height, src.width) == (96, 128)



def test_synth_command_bad_size_is_one_line(tmp_path, monkeypatch, capsys):
    from polarxr.cli.main import main

    monkeypatch.setattr(sys, "argv", ["polarxr", "synth", str(tmp_path / "bad"), "--size", "8", "8"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.replace("\n", "")  # rich folds long lines
    assert exit_.value.code == 2 and "too small" in err and str(tmp_path / "bad") in err and "Traceback" not in err
    assert not list((tmp_path).glob("bad/*"))


def test_seasonal_curve_is_documented():
    assert seasonal_ice_extent(datetime(2018, 3, 16)) == pytest.approx(0.68, abs=0.01)
    assert seasonal_ice_extent(datetime(2018, 9, 15)) == pytest.approx(0.04, abs=0.01)


def test_sequence_glaciers_advance_and_retreat_and_calve(tmp_path):
    """Glaciers: the true front follows its curve, the tongue is land in truth and chart, bergs are ice."""
    from polarxr.synthetic import Glacier, glacier_frames

    sequence = make_sequence(tmp_path, n_scenes=4, size=(256, 288), seed=11)
    glacier: Glacier = sequence[0]._geometry.glaciers[0]
    boxes, regions = glacier_frames(sequence[0])
    box = boxes.geometry.iloc[0]
    assert regions.geometry.iloc[0].intersects(box) and regions.geometry.iloc[0].area > box.area
    length = glacier.u_down - glacier.u_up
    first = sequence[0].start
    for scene in sequence:
        expected = glacier.front_fraction(scene.start, first) * length
        assert scene.fronts_m["G1"] == pytest.approx(expected, abs=0.7 * 40)  # the front's raggedness averages out
    fronts = [s.fronts_m["G1"] for s in sequence]
    assert np.ptp(fronts) > 5 * 40, "the front should move by several pixels through the year"
    # land in the truth raster grows with the front; the rest of the coast is fixed
    land = np.array([s.areas_km2["land"] for s in sequence])
    tongue = np.array(fronts) * glacier.width / 1e6  # the tongue fills the whole channel, 1 px beyond the box
    assert np.ptp(land - tongue) < 0.1 * np.ptp(land)
    summer = [s for s in sequence if s.start.month in (6, 7, 8, 9)]
    assert summer and all(s.calved_icebergs > 0 and s.icebergs >= s.calved_icebergs for s in summer)


def test_detail_chart_rasterizes_to_the_truth_and_datasets_can_have_glaciers(tmp_path):
    from polarxr.synthetic import write_detail_chart

    plain = make_dataset(tmp_path / "plain", n_scenes=1, size=(384, 384), seed=3)
    scene = make_dataset(tmp_path / "glaciers", n_scenes=1, size=(384, 384), seed=3, glaciers=True)[0]
    assert not plain[0].fronts_m and scene.fronts_m and scene.icebergs > 0 and scene.calved_icebergs > 0
    detail = write_detail_chart(scene, tmp_path / "detail")
    assert detail.name == scene.chart.name and detail.parent != scene.chart.parent
    chart = gpd.read_file(detail)
    assert set(chart["poly_type"]) == {"L", "W", "I"} and chart.geometry.is_valid.all()
    truth = scene.truth
    inside = truth != NO_LABEL
    _, labels = labels_for_scene(scene.scene, detail)
    assert (labels.values[inside] == truth[inside]).all()
    # the generalised chart leaves out what the detailed one keeps: calved bergs, small floes and islands
    _, general = labels_for_scene(scene.scene, scene.chart)
    assert (general.values[inside] != truth[inside]).sum() > 100
