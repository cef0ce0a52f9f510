"""Blockwise inference: seamless for any chunking, COG on the input grid, worker death, bad input."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import rioxarray
import torch
from distributed import Client, LocalCluster
from scene_files import PRODUCT, write_chart, write_scene

from polarxr.io import cog_problems

from polarxr.errors import ModelError, SceneError
from polarxr.models import build_model
from polarxr.predict import normalise, predict_scene, probabilities, segment_array
from polarxr.scenes import open_scene
from polarxr.checkpoints import load_checkpoint, make_checkpoint, save_checkpoint

BANDS = ["HH", "HV", "HH-HV"]
NORM = {"mean": [128.0] * 3, "std": [60.0] * 3}


def make_random_checkpoint(path, name="unet", bands=BANDS, seed=0, pool=1):
    """An untrained but non-trivial model (random weights) saved as a polarxr checkpoint."""
    torch.manual_seed(seed)
    config = {"name": name, "in_channels": len(bands), "n_classes": 3}
    if name == "unet":
        config.update(width=4, depth=3, pool=pool)
    net = build_model(config).eval()
    return save_checkpoint(path, make_checkpoint(net, band_names=bands, norm=NORM, patch_size=64))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    scene = write_scene(tmp / PRODUCT, shape=(300, 260), tile=64, nodata_margin=30)
    chart = write_chart(tmp / "seaice_s1_20180116t075430.shp")
    return scene, chart, make_random_checkpoint(tmp / "unet.pt"), make_random_checkpoint(tmp / "cnn.pt", "patchcnn")


def whole_array(scene_path, checkpoint):
    model, meta = load_checkpoint(checkpoint)
    scene = open_scene(scene_path)
    image, valid = normalise(scene.values, meta, scene.rio.nodata)
    return segment_array(model, image, model.pad_multiple), valid


@pytest.mark.parametrize("chunk", [64, 96, 200, 512])
def test_blockwise_equals_whole_array(files, chunk):
    """Chunks just over the halo (64 > 56), ragged edges (300 = 3 x 96 + 12), one block, several blocks."""
    scene_path, _, checkpoint, _ = files
    expected, valid = whole_array(scene_path, checkpoint)
    probs = probabilities(open_scene(scene_path), checkpoint, chunk=chunk, tile=64)
    assert probs.dims == ("class", "y", "x") and probs.shape == (3, 300, 260)
    actual = probs.compute(scheduler="threads").values
    np.testing.assert_allclose(actual[:, valid], expected[:, valid], atol=2e-5)
    np.testing.assert_array_equal(actual[:, valid].argmax(0), expected[:, valid].argmax(0))
    assert not actual[:, ~valid].any()  # nodata-only blocks are skipped, nodata pixels have no probability


@pytest.mark.parametrize("chunk", [256, 320, 608])
def test_blockwise_equals_whole_array_for_a_multilooking_unet(tmp_path, chunk):
    """The demo's pool-4 U-Net (halo 224 px): 2 x 2 blocks with ragged edges, and one block."""
    scene_path = write_scene(tmp_path / PRODUCT, shape=(600, 520), tile=64, nodata_margin=30)
    checkpoint = make_random_checkpoint(tmp_path / "pool4.pt", pool=4)
    expected, valid = whole_array(scene_path, checkpoint)
    probs = probabilities(open_scene(scene_path), checkpoint, chunk=chunk)
    actual = probs.compute(scheduler="threads").values
    np.testing.assert_allclose(actual[:, valid], expected[:, valid], atol=2e-5)
    np.testing.assert_array_equal(actual[:, valid].argmax(0), expected[:, valid].argmax(0))


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def test_predict_scene_writes_cog_on_input_grid(files, client, tmp_path):
    scene_path, chart, checkpoint, _ = files
    result = predict_scene(scene_path, checkpoint, tmp_path / "pred.tif", probabilities=tmp_path / "prob.zarr",
                           chart=chart, chunk=128, client=client, quicklook=tmp_path / "pred.png")
    scene = open_scene(scene_path)
    cog = rioxarray.open_rasterio(result.class_map)
    assert cog.rio.crs == scene.rio.crs and cog.rio.transform() == scene.rio.transform()
    assert cog.shape == (1, 300, 260) and cog.dtype == np.uint8 and cog.rio.nodata == 255
    assert cog_problems(result.class_map) == []
    expected, valid = whole_array(scene_path, checkpoint)
    classes = cog.values[0]
    np.testing.assert_array_equal(classes[valid], expected[:, valid].argmax(0))
    assert (classes[~valid] == 255).all()
    import xarray as xr

    stored = xr.open_zarr(result.probabilities, consolidated=False, decode_coords="all")["probability"]
    assert stored.dims == ("class", "y", "x") and list(stored["class"].values) == ["land", "sea", "ice"]
    assert stored.rio.crs == scene.rio.crs and np.issubdtype(stored.dtype, np.floating)  # CF-decoded: 0..1, NaN on nodata
    np.testing.assert_allclose(stored.values[:, valid], expected[:, valid], atol=0.5 / 254 + 1e-6)
    assert np.isnan(stored.values[:, ~valid]).all()
    assert result.quicklook.stat().st_size > 1000
    assert set(result.metrics) >= {"mean_iou", "overall_accuracy"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_no_seamless_is_a_tagged_preview_with_seams(files, client, tmp_path):
    """``--no-seamless`` drops the halo: the map differs from the seamless one only near block edges, and
    both files say which they are."""
    import xarray as xr
    from typer.testing import CliRunner

    from polarxr.cli.main import app

    scene_path, _, checkpoint, _ = files
    maps, probs = {}, {}
    for flag in ("--seamless", "--no-seamless"):
        out = tmp_path / f"{flag.strip('-')}.tif"
        zarr_out = out.with_suffix(".zarr")
        run = CliRunner().invoke(app, ["predict", str(scene_path), "-c", str(checkpoint), "-o", str(out),
                                       "--probabilities", str(zarr_out), "--chunk", "192",
                                       "--tile", "192", "--no-quicklook", flag,
                                       "--scheduler", client.scheduler.address], terminal_width=200)
        assert run.exit_code == 0, run.output
        with rasterio.open(out) as src:
            maps[flag], tags = src.read(1), src.tags()
        assert tags["seamless"].startswith("yes" if flag == "--seamless" else "no")
        stored = xr.open_zarr(zarr_out, consolidated=False)["probability"]
        assert stored.attrs["seamless"] == tags["seamless"]
        probs[flag] = stored.values
    expected, valid = whole_array(scene_path, checkpoint)
    np.testing.assert_array_equal(maps["--seamless"][valid], expected[:, valid].argmax(0))
    differs = (probs["--seamless"] != probs["--no-seamless"]).any(axis=0) & valid
    assert differs.any()  # a random U-Net's blocks do see their missing context
    rows, cols = np.nonzero(differs)
    halo = load_checkpoint(checkpoint)[0].halo
    # blocks of 192 px: the only block edges inside the scene are row 192 and column 192
    to_seam = np.minimum(np.abs(rows - 191.5), np.abs(cols - 191.5))
    assert to_seam.max() < halo and (to_seam < 8).any()  # the seams: within a halo of the inner block edges


def test_patch_classifier_is_repieced_at_patch_resolution(files, client, tmp_path):
    scene_path, _, _, checkpoint = files
    out = predict_scene(scene_path, checkpoint, tmp_path / "cnn.tif", chunk=128, client=client).class_map
    classes = rioxarray.open_rasterio(out).values[0]
    tiles = classes[:256, 64:256].reshape(4, 64, 3, 64).transpose(0, 2, 1, 3).reshape(12, -1)
    assert all(len(np.unique(t)) == 1 for t in tiles)


def test_worker_killed_mid_run_gives_identical_output(files, tmp_path):
    scene_path, _, checkpoint, _ = files
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        reference = predict_scene(scene_path, checkpoint, tmp_path / "ref.tif", probabilities=tmp_path / "ref.zarr",
                                  chunk=64, client=client).class_map
        pids = list(client.run(os.getpid).values())
        killed = threading.Event()

        def kill_one(done, total):
            if done == 3 and not killed.is_set():
                killed.set()
                os.kill(pids[0], signal.SIGKILL)

        out = predict_scene(scene_path, checkpoint, tmp_path / "killed.tif", probabilities=tmp_path / "killed.zarr",
                            chunk=64, client=client, progress=kill_one).class_map
        assert killed.is_set()
    np.testing.assert_array_equal(rioxarray.open_rasterio(out).values, rioxarray.open_rasterio(reference).values)
    import zarr

    np.testing.assert_array_equal(zarr.open_array(tmp_path / "killed.zarr" / "probability", mode="r")[:],
                                  zarr.open_array(tmp_path / "ref.zarr" / "probability", mode="r")[:])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the workers' parts are gone too


def test_unreadable_blocks_name_the_scene_and_leave_nothing(client, tmp_path):
    """A scene with a corrupt full-resolution tile fails with the file and the block named and leaves no
    output. The file has overviews, so the pre-flight check (a decimated read, served from them) passes
    and the failure happens where it is meant to be tested: in a block on a worker, mid-run."""
    checkpoint = make_random_checkpoint(tmp_path / "unet.pt")
    source = write_scene(tmp_path / "source.tif", shape=(1100, 1100), tile=64, nodata_margin=30)
    with rasterio.open(source, "r+") as dst:
        dst.build_overviews([2, 4, 8], rasterio.enums.Resampling.nearest)
    broken = tmp_path / PRODUCT
    rasterio.shutil.copy(source, broken, driver="GTiff", TILED="YES", BLOCKXSIZE=64, BLOCKYSIZE=64,
                         COMPRESS="DEFLATE", COPY_SRC_OVERVIEWS="YES")
    with rasterio.open(broken) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_12_12", "TIFF", bidx=1))
    with open(broken, "r+b") as f:  # garble one full-resolution tile: the header opens, that tile cannot
        f.seek(offset)
        f.write(b"\xff" * 64)
    from polarxr.scenes import ensure_not_empty, open_scene as open_

    ensure_not_empty(open_(broken))  # the pre-flight check does not see it
    out = tmp_path / "out"
    with pytest.raises(SceneError, match=r"segmentation failed in rows \d+-\d+, columns \d+-\d+: .*Read failed") as err:
        predict_scene(broken, checkpoint, out / "pred.tif", probabilities=out / "prob.zarr", chunk=512, tile=256,
                      client=client)
    assert str(broken) in str(err.value)
    assert not out.exists() or not any(out.iterdir())


def test_bad_inputs(files, tmp_path):
    scene_path, _, checkpoint, _ = files
    other_bands = make_random_checkpoint(tmp_path / "hh_hv.pt", bands=["HH", "HV"])
    with pytest.raises(ModelError, match=r"trained on bands \['HH', 'HV'\]"):
        probabilities(open_scene(scene_path), other_bands)
    with pytest.raises(ModelError, match="smaller than the model's halo"):
        probabilities(open_scene(scene_path), checkpoint, chunk=32)
    with pytest.raises(ModelError, match="multiple of the model's downsampling factor"):
        probabilities(open_scene(scene_path), checkpoint, chunk=100)
    no_crs = write_scene(tmp_path / "no_crs.tif", crs=None)
    with pytest.raises(SceneError, match="has no CRS"):
        predict_scene(no_crs, checkpoint, tmp_path / "x.tif", client=object())
    with pytest.raises(ModelError, match="does not exist"):
        predict_scene(scene_path, tmp_path / "missing.pt", tmp_path / "x.tif", client=object())
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_normalise_equals_the_training_normalisation(dtype):
    """The normalisation (in place for common dtypes; predict and training share it) gives the values of the
    plain float32 formula bit for bit (nodata, NaN, a zero std)."""
    from polarxr.scenes import valid_pixels

    def formula(raw, mean, std, nodata):
        valid = valid_pixels(raw, nodata)
        image = (raw.astype(np.float32) - np.asarray(mean, np.float32).reshape(-1, 1, 1)) \
            / np.asarray(std, np.float32).reshape(-1, 1, 1)
        image[:, ~valid] = 0.0
        image[~np.isfinite(image)] = 0.0
        return image, valid

    rng = np.random.default_rng(5)
    block = rng.integers(0, 256, (3, 70, 90)).astype(dtype)
    block[:, :5] = 0
    block[1, 20:30] = 0
    if block.dtype.kind == "f":
        block[0, 40, 40], block[2, 41, 41] = np.nan, np.inf
    for norm in (NORM, {"mean": [10.5, 200.0, 3.0], "std": [0.0, 7.1, 1e-30]}, {"mean": [100.0], "std": [30.0]}):
        for nodata in (0, None, float("nan")):
            with np.errstate(all="ignore"):
                image, valid = normalise(block, {"norm": norm}, nodata)
                expected, expected_valid = formula(block, norm["mean"], norm["std"], nodata)
            np.testing.assert_array_equal(valid, expected_valid)
            assert image.dtype == np.float32 and np.array_equal(image.view(np.uint32), expected.view(np.uint32))
