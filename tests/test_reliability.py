"""Defects a review found (issue 13), each with a test that failed before its fix.

Non-finite pixels are nodata; one model version per run; one writer per cube.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import rasterio
from model_files import untrained_unet
from scene_files import PRODUCT, write_scene

from polarxr.checkpoints import CheckpointChanged, ModelCache, checkpoint_version
from polarxr.errors import ModelError, SceneError
from polarxr.patches import normalise, patch_stats
from polarxr.scenes import open_scene, valid_mask, valid_pixels

FLOAT_BANDS = ["HH", "HV"]


def float_checkpoint(path, seed=0):
    """A random-weight U-Net for 2-band float sigma0 scenes."""
    return untrained_unet(path, FLOAT_BANDS, {"mean": [0.2, 0.2], "std": [0.1, 0.1]}, patch_size=32, seed=seed)


def float_scene(path, value_at=None, value=None):
    """The 2-band float32 test scene (NaN nodata strip), with one pixel set to ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_scene(path, shape=(96, 96), dtype="float32", tile=32, nodata_margin=8)
    if value_at is not None:
        with rasterio.open(path, "r+") as dst:
            data = dst.read()
            data[:, value_at[0], value_at[1]] = value
            dst.write(data)
    return path


# ------------------------------------------------------------------------------------ 1 non-finite
def test_infinite_values_are_nodata():
    block = np.array([[[1.0, -np.inf, np.nan, np.inf]], [[2.0, -np.inf, np.nan, 3.0]]], np.float32)
    np.testing.assert_array_equal(valid_pixels(block, None), [[True, False, False, True]])
    image, valid = normalise(block, [1.0, 1.0], [1.0, 1.0], None)
    assert np.isfinite(image).all()
    assert image[0, 0, 3] == 0.0 and image[1, 0, 3] == 2.0  # the finite band of a valid pixel is kept
    stats = patch_stats(block[None], np.zeros((1, 1, 4), np.uint8), None)
    assert np.isfinite(stats["mean"]).all() and stats["count"] == [1, 2]


def test_minus_inf_pixel_is_nodata_in_the_mask_and_the_class_map(tmp_path):
    from polarxr.predict import probabilities

    checkpoint = float_checkpoint(tmp_path / "float.pt")
    inf_scene = open_scene(float_scene(tmp_path / "inf" / PRODUCT.replace("8bit", "db"), (50, 50), -np.inf))
    nan_scene = open_scene(float_scene(tmp_path / "nan" / PRODUCT.replace("8bit", "db"), (50, 50), np.nan))
    assert not bool(valid_mask(inf_scene)[50, 50])
    with_inf = probabilities(inf_scene, checkpoint, chunk=48).compute(scheduler="threads").values
    with_nan = probabilities(nan_scene, checkpoint, chunk=48).compute(scheduler="threads").values
    # one -inf pixel is a hole, exactly as a NaN one: it does not turn its whole window into NaN (land)
    assert np.isfinite(with_inf).all()
    np.testing.assert_allclose(with_inf, with_nan, atol=1e-6)


# ---------------------------------------------------------------------------------- 3 model version
def test_model_cache_loads_once_verifies_and_evicts(tmp_path):
    first = float_checkpoint(tmp_path / "a.pt", seed=0)
    second = float_checkpoint(tmp_path / "b.pt", seed=1)
    cache = ModelCache(max_models=1)
    version = checkpoint_version(first)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(first, version))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.loads == 1 and len({id(m) for m, _ in results}) == 1  # 8 threads, one load
    assert results[0][1]["model_version"] == version
    with pytest.raises(CheckpointChanged, match=f"file now holds {version}"):
        cache.get(first, checkpoint_version(second))
    cache.get(second, checkpoint_version(second))
    assert len(cache) == 1 and cache.loads == 2  # the least recently used model was evicted


def test_a_checkpoint_replaced_during_a_run_is_refused(tmp_path):
    from polarxr.predict import model_cache, probabilities

    checkpoint = float_checkpoint(tmp_path / "best.pt", seed=0)
    scene = open_scene(float_scene(tmp_path / PRODUCT.replace("8bit", "db")))
    planned = probabilities(scene, checkpoint, chunk=48)  # the run's version is fixed here
    float_checkpoint(tmp_path / "new.pt", seed=1).replace(checkpoint)  # retrained meanwhile
    model_cache().clear()  # as on a worker that had not loaded it yet
    with pytest.raises(CheckpointChanged, match="changed during the run"):
        planned.compute(scheduler="threads")


def test_class_map_records_the_model_version(tmp_path):
    from polarxr.predict import predict_scene

    checkpoint = float_checkpoint(tmp_path / "best.pt")
    scene = float_scene(tmp_path / PRODUCT.replace("8bit", "db"))
    result = predict_scene(scene, checkpoint, tmp_path / "out_class.tif", chunk=48, quicklook=False,
                           client=_threads_client())
    with rasterio.open(result.class_map) as src:
        assert src.tags()["model_version"] == checkpoint_version(checkpoint)


def _threads_client():
    from distributed import Client

    return Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None)


# ------------------------------------------------------------------------------------ 4 cube writer
@pytest.fixture(scope="module")
def two_scenes(tmp_path_factory):
    from polarxr.synthetic import make_dataset

    scenes = make_dataset(tmp_path_factory.mktemp("two"), n_scenes=2, size=(128, 128), seed=3)
    return [(s.scene, s.chart) for s in scenes]


def test_two_writers_on_one_cube_lose_nothing(two_scenes, tmp_path):
    """Writer A is held in the middle of writing its scene; writer B starts meanwhile. Before the lock,
    B truncated A's uncommitted patches and A's commit dropped B's scene; now B waits, then appends."""
    from polarxr.cube import open_cube, plan_cube
    from polarxr.samplers import SamplerConfig

    cube = tmp_path / "cube.zarr"
    config = SamplerConfig(patch_size=16, samples_per_label=6)
    a_writing, b_done = threading.Event(), threading.Event()
    waited, errors = [], []

    def hold_a(name, stage):
        if stage == "writing":
            a_writing.set()
            b_done.wait(timeout=3)  # without a lock B finishes meanwhile

    def run(plan, **kw):
        try:
            plan.run(**kw)
        except Exception as err:  # noqa: BLE001  (reported by the assertion below)
            errors.append(err)

    plan_a = plan_cube(two_scenes[:1], cube, config, chunks=64)
    plan_b = plan_cube(two_scenes, cube, config, chunks=64)  # planned before A committed anything
    a = threading.Thread(target=run, args=(plan_a,), kwargs={"on_progress": hold_a})
    a.start()
    assert a_writing.wait(timeout=60)
    b = threading.Thread(target=lambda: (run(plan_b, on_wait=waited.append), b_done.set()))
    b.start()
    a.join(timeout=120)
    b.join(timeout=120)
    assert errors == []
    assert waited and "another polarxr run is writing to this cube" in waited[0]
    attrs = open_cube(cube).attrs
    assert sorted(attrs["scenes"]) == sorted(p.stem for p, _ in two_scenes)  # both, each once
    records = attrs["scene_records"]
    assert attrs["n_patches"] == sum(r["count"] for r in records)
    assert [r["start"] for r in records] == [0, records[0]["count"]]


# ---------------------------------------------------------------------------- 2 compatibility
def _strip_descriptions(path):
    with rasterio.open(path, "r+") as dst:
        for i in range(1, dst.count + 1):
            dst.set_band_description(i, "")
    return path


def test_bands_of_an_undescribed_8bit_product_come_from_its_name(tmp_path):
    """The reverse trap: a synthetic scene without descriptions opened as red, green, blue before."""
    from polarxr.synthetic import make_dataset

    [made] = make_dataset(tmp_path, n_scenes=1, size=(64, 64), seed=2)
    scene = open_scene(_strip_descriptions(made.scene))
    assert list(scene.band.values) == ["HH", "HV", "HH-HV"] and scene.attrs["band_source"] == "product name"
    assert scene.attrs["polarisation"] == "HH+HV" and scene.attrs["scaling"]["HV"].keys() == {"DB_MIN", "DB_MAX"}


def test_a_vv_vh_product_is_not_taken_for_hh_hv(tmp_path):
    from polarxr.predict import probabilities

    checkpoint = float_checkpoint(tmp_path / "hh_hv.pt")
    path = float_scene(tmp_path / "S1B_EW_GRDM_1SDV_20210401T052623_20210401T052723_026245_0321C5_ECC8.tif")
    scene = open_scene(_strip_descriptions(path))
    assert list(scene.band.values) == ["VV", "VH"]
    with pytest.raises(ModelError, match=r"trained on bands \['HH', 'HV'\] .* has bands \['VV', 'VH'\]"):
        probabilities(scene, checkpoint, chunk=48)


def test_units_and_scaling_must_match_the_checkpoint(tmp_path):
    from polarxr.predict import probabilities

    trained = {"units": "linear", "dtype": "float32", "polarisation": "HH+HV", "scaling": None}
    checkpoint = untrained_unet(tmp_path / "linear.pt", FLOAT_BANDS, {"mean": [0.2, 0.2], "std": [0.1, 0.1]},
                                patch_size=32, radiometry=trained)
    path = float_scene(tmp_path / PRODUCT.replace("8bit", "db"))
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(SIGMA0_UNITS="dB")
    with pytest.raises(ModelError, match="units dB, trained on linear"):
        probabilities(open_scene(path), checkpoint, chunk=48)


def test_bands_option_names_the_bands_of_an_anonymous_file(tmp_path):
    path = _strip_descriptions(float_scene(tmp_path / "export.tif"))
    assert list(open_scene(path).band.values) == ["band1", "band2"]  # no guess
    assert list(open_scene(path, bands=["HH", "HV"]).band.values) == ["HH", "HV"]
    with pytest.raises(SceneError, match="has 2 band.*3 band name"):
        open_scene(path, bands=["HH", "HV", "HH-HV"])


def test_cube_records_radiometry_and_resume_checks_the_normalisation(two_scenes, tmp_path):
    import zarr

    from polarxr.cube import build_cube, open_cube
    from polarxr.samplers import SamplerConfig
    from polarxr.train import train

    cube = tmp_path / "cube.zarr"
    build_cube(two_scenes, cube, SamplerConfig(patch_size=16, samples_per_label=4), chunks=64)
    attrs = open_cube(cube).attrs
    assert attrs["units"] == "dn" and attrs["polarisation"] == "HH+HV" and set(attrs["scaling"]) == {"HH", "HV", "HH-HV"}
    fast = dict(model_options={"width": 4, "depth": 2, "pool": 1}, batch_size=8, device="cpu")
    run = train(cube, tmp_path / "run", epochs=1, max_steps_per_epoch=1, **fast)
    from polarxr.checkpoints import load_checkpoint

    assert load_checkpoint(run.last_checkpoint)[1]["radiometry"]["units"] == "dn"
    root = zarr.open_group(cube, mode="r+")
    norm = dict(root.attrs["norm"])
    root.attrs["norm"] = {**norm, "mean": [m + 5 for m in norm["mean"]]}  # as if scenes had been added
    with pytest.raises(ModelError, match="cannot resume on this cube: .*normalisation mean"):
        train(cube, tmp_path / "run", epochs=2, max_steps_per_epoch=1, **fast)


# ------------------------------------------------------------------------------------------ 5 ledger
def test_register_leaves_a_running_row_alone(tmp_path):
    from polarxr.ledger import Ledger, Owner

    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.register("S1A_x", "/inbox/S1A_x.tif", 100, 1.0)
        assert ledger.claim("S1A_x", Owner.this_process("run-a"), "m", "0")
        # re-delivered while run-a processes it: the row keeps the input being processed
        assert ledger.register("S1A_x", "/inbox/S1A_x.tif", 200, 2.0) is None
        row = ledger.get("S1A_x")
        assert (row.status, row.size, row.mtime) == ("running", 100, 1.0)
        assert ledger.mark_done("S1A_x", "run-a", {}, {}, 1.0)
        # the next poll sees the change and processes it again
        assert "changed since it was processed" in ledger.register("S1A_x", "/inbox/S1A_x.tif", 200, 2.0)


def test_mark_done_and_failed_report_a_row_they_no_longer_hold(tmp_path):
    from polarxr.ledger import Ledger, Owner

    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.register("S1A_x", "/inbox/S1A_x.tif", 100, 1.0)
        assert ledger.claim("S1A_x", Owner.this_process("run-b"), "m", "0")
        assert not ledger.mark_done("S1A_x", "run-a", {}, {}, 1.0)
        assert not ledger.mark_failed("S1A_x", "run-a", "boom")
        assert ledger.get("S1A_x").status == "running"


def test_transient_failures_get_an_attempt_budget_with_backoff(tmp_path):
    from concurrent.futures import Future

    from polarxr.ledger import Ledger, Owner
    from polarxr.pipeline import InboxScene, ProcessReport, RetryPolicy, _plan, _settle

    scene = tmp_path / "S1A_x.tif"
    scene.write_bytes(b"x")
    entry = InboxScene("S1A_x", scene)
    policy = RetryPolicy(max_attempts=2, backoff_s=60)
    report = ProcessReport("r", tmp_path, tmp_path, tmp_path / "l", "")
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        outcomes = []
        for attempt in (1, 2):
            assert _plan(ledger, [entry], tmp_path, False, report, retry=policy, now=4e9) == [entry]
            assert ledger.claim("S1A_x", Owner.this_process(f"run{attempt}"), "m", "0")
            lost_worker = Future()
            lost_worker.set_exception(OSError("Timed out trying to connect to tcp://10.0.0.7:8786"))
            outcomes.append(_settle(ledger, f"run{attempt}", entry, lost_worker, 1.0, tmp_path, policy))
            if attempt == 1:  # within the backoff it waits, after it it is due
                finished = ledger.get("S1A_x").finished
                from datetime import datetime

                t0 = datetime.fromisoformat(finished).timestamp()
                assert _plan(ledger, [entry], tmp_path, False, report, retry=policy, now=t0 + 59) == []
                assert report.outcomes[-1].status == "waiting"
        assert [o.status for o in outcomes] == ["retry", "failed"]
        assert ledger.get("S1A_x").status == "failed" and "Timed out" in ledger.get("S1A_x").error
        # a problem with the scene itself fails at once
        ledger.register("S1A_y", "/inbox/S1A_y.tif", 1, 1.0)
        assert ledger.claim("S1A_y", Owner.this_process("run3"), "m", "0")
        bad = Future()
        bad.set_exception(SceneError(scene, "has no CRS"))
        assert _settle(ledger, "run3", InboxScene("S1A_y", scene), bad, 1.0, tmp_path, policy).status == "failed"


def test_polls_check_sizes_and_verify_audits_the_stores(tmp_path):
    from polarxr.ledger import Ledger, Owner
    from polarxr.pipeline import check_outputs, output_size

    class_map = write_scene(tmp_path / "x_class.tif", shape=(32, 32), tile=16)
    store = tmp_path / "x_probability.zarr"
    (store / "c").mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    (store / "c" / "0").write_bytes(b"0" * 100)
    outputs = {"class_map": class_map, "probabilities": store}
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.register("S1A_x", "/inbox/S1A_x.tif", 1, 1.0)
        assert ledger.claim("S1A_x", Owner.this_process("run"), "m", "0")
        assert ledger.mark_done("S1A_x", "run", outputs, {k: output_size(p) for k, p in outputs.items()}, 1.0)
        (store / "c" / "0").write_bytes(b"0" * 10)  # a store chunk truncated by another tool
        record = ledger.get("S1A_x")
    assert check_outputs(record, full=False) is None  # a poll does not walk the store
    assert "has changed size" in check_outputs(record, full=True)  # process --verify finds it
    class_map.write_bytes(class_map.read_bytes()[:500])
    assert "has changed size" in check_outputs(record, full=False)  # a file's size is one stat


# ------------------------------------------------------------------------ 7 valid-data footprints
def test_region_checks_and_stac_footprints_use_the_swath_not_the_rectangle(tmp_path):
    import geopandas as gpd
    import shapely
    from scene_files import ORIGIN, PIXEL, POLAR_STEREO

    from polarxr.errors import PolarxrError
    from polarxr.region import check_intersects, read_region
    from polarxr.scenes import valid_footprint

    path = write_scene(tmp_path / PRODUCT, shape=(128, 128), tile=64, nodata_margin=0)
    with rasterio.open(path, "r+") as dst:  # an oblique swath edge: the upper-right triangle holds no data
        data = dst.read()
        rows, cols = np.mgrid[0:128, 0:128]
        data[:, cols > rows + 10] = 0
        dst.write(data)
    x0, y0 = ORIGIN
    corner = shapely.box(x0 + 100 * PIXEL, y0 - 20 * PIXEL, x0 + 126 * PIXEL, y0 - 2 * PIXEL)  # in the nodata corner
    gpd.GeoDataFrame(geometry=[corner], crs=POLAR_STEREO).to_file(tmp_path / "corner.geojson")
    region = read_region(tmp_path / "corner.geojson")
    scene = open_scene(path)
    check_intersects(region, scene.rio.bounds(), scene.rio.crs, path)  # the rectangle does intersect
    with pytest.raises(PolarxrError, match="outside the region of interest"):
        check_intersects(region, valid_footprint(path), scene.rio.crs, path)
    footprint = valid_footprint(path)
    assert 0.55 < footprint.area / shapely.box(*scene.rio.bounds()).area < 0.65  # 58 % of the rectangle holds data
