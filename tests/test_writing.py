"""Workers write the outputs: COGs and Zarr stores equal to a reference computed here, for any chunking and
number of workers, with nothing left under a temporary name."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from affine import Affine
from distributed import Client, LocalCluster
from scene_files import POLAR_STEREO, PRODUCT, write_scene
from test_predict import make_random_checkpoint, whole_array

from polarxr.io import cog_problems, write_cog
from polarxr.predict import PROBABILITY_FILL, PROBABILITY_SCALE, predict_scene

TRANSFORM = Affine(40, 0, 500_000, 0, -40, -1_800_000)


def _raster(values: np.ndarray, chunk: int) -> xr.DataArray:
    height, width = values.shape
    data = xr.DataArray(da.from_array(values, chunks=chunk), dims=("y", "x"),
                        coords={"y": TRANSFORM.f - 40 * (np.arange(height) + 0.5),
                                "x": TRANSFORM.c + 40 * (np.arange(width) + 0.5)})
    return data.rio.write_crs(POLAR_STEREO).rio.write_transform(TRANSFORM)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_cog_equals_the_array_for_any_chunking(tmp_path, dtype):
    """1100 x 900 px (overviews at 2 and 4, ragged edges): the same pixels, grid, tags for chunks 128, 300, whole."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 3, (1100, 900)).astype(dtype)
    values[:100] = 255
    written = []
    for chunk in (128, 300, 1100):
        out = write_cog(_raster(values, chunk), tmp_path / f"c{chunk}.tif", nodata=255, description="classes",
                        polarxr_version="test")
        with rasterio.open(out) as src:
            assert src.shape == values.shape and src.transform == TRANSFORM and src.nodata == 255
            assert src.crs.to_proj4() and src.dtypes[0] == dtype and src.descriptions == ("classes",)
            assert src.tags()["polarxr_version"] == "test" and src.overviews(1) == [2, 4]
            np.testing.assert_array_equal(src.read(1), values)
            assert src.read(1, out_shape=(275, 225)).shape == (275, 225)
        assert cog_problems(out) == []
        written.append(out.read_bytes())
    assert written[0] == written[1] == written[2]  # the file does not depend on the chunking
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1100.tif", "c128.tif", "c300.tif"]


def test_class_maps_are_written_without_a_predictor_and_signals_with_one(tmp_path):
    """Class codes go without horizontal differencing (categorical), integer signals with it; GDAL decodes both
    (the tiles are libdeflate's DEFLATE streams) to the same pixels."""
    import tifffile

    rng = np.random.default_rng(2)
    classes = rng.integers(0, 3, (700, 600)).astype("uint8")
    signal = np.cumsum(rng.integers(0, 3, (700, 600)), axis=1).astype("uint16")
    written = {
        "classes": write_cog(_raster(classes, 256), tmp_path / "classes.tif", nodata=255, categorical=True),
        "signal": write_cog(_raster(signal, 256), tmp_path / "signal.tif", nodata=0),
    }
    for name, values in (("classes", classes), ("signal", signal)):
        with tifffile.TiffFile(written[name]) as tif:
            assert {int(page.compression) for page in tif.pages} == {8}  # Adobe DEFLATE, overviews included
            assert {int(page.predictor) for page in tif.pages} == ({1} if name == "classes" else {2})
        with rasterio.open(written[name]) as src:
            np.testing.assert_array_equal(src.read(1), values)
        assert cog_problems(written[name]) == []


def test_cog_writer_failure_leaves_nothing(tmp_path):
    def broken(block):
        raise ValueError("boom")

    data = _raster(np.zeros((600, 600), np.uint8), 200)
    data = data.copy(data=data.data.map_blocks(broken, dtype=np.uint8))
    with pytest.raises(ValueError, match="boom"):
        write_cog(data, tmp_path / "x.tif")
    assert list(tmp_path.iterdir()) == []


def _reference(scene_path, checkpoint) -> tuple[np.ndarray, np.ndarray]:
    """The class map and the raw stored probabilities as a whole-array run gives them."""
    probs, valid = whole_array(scene_path, checkpoint)
    classes = np.where(valid, probs.argmax(0), 255).astype(np.uint8)
    raw = np.rint(probs * PROBABILITY_SCALE).astype(np.uint8)
    raw[:, ~valid] = PROBABILITY_FILL
    return classes, raw


@pytest.fixture(scope="module")
def scene_and_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("writing")
    return write_scene(tmp / PRODUCT, shape=(300, 260), tile=64, nodata_margin=30), make_random_checkpoint(tmp / "u.pt")


@pytest.fixture(scope="module")
def two_workers():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def test_predict_outputs_equal_the_reference_for_chunkings_and_worker_counts(scene_and_model, two_workers, tmp_path):
    scene_path, checkpoint = scene_and_model
    classes, raw = _reference(scene_path, checkpoint)
    runs = {}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as one_worker:
        for workers, chunk, client in ((1, 64, one_worker), (2, 64, two_workers), (2, 160, two_workers)):
            out = tmp_path / f"w{workers}-c{chunk}"
            predict_scene(scene_path, checkpoint, out / "pred.tif", probabilities=out / "prob.zarr", chunk=chunk,
                          client=client, tile=64)
            with rasterio.open(out / "pred.tif") as src:
                np.testing.assert_array_equal(src.read(1), classes)
                assert src.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
                assert "PREDICTOR" not in src.tags(ns="IMAGE_STRUCTURE")  # class codes: no differencing
            stored = zarr.open_array(out / "prob.zarr" / "probability", mode="r")[:]
            # float rounding between chunkings (<= 2e-5) may move a value across a rounding edge, by one step
            assert np.abs(stored.astype(int) - raw).max() <= 1 and (stored != raw).mean() < 1e-3
            runs[workers, chunk] = stored
            assert sorted(p.name for p in out.iterdir()) == ["pred.tif", "prob.zarr"]
    np.testing.assert_array_equal(runs[1, 64], runs[2, 64])  # the same chunking on 1 and 2 workers: identical
    decoded = xr.open_zarr(tmp_path / "w2-c160" / "prob.zarr", consolidated=False)["probability"].values
    np.testing.assert_allclose(decoded, np.where(raw == 255, np.nan, raw / 254), atol=1 / 254 + 1e-6)
    assert np.nanmin(decoded) >= 0 and np.nanmax(decoded) <= 1


def test_labels_written_by_threads_and_cluster_are_identical(two_workers, tmp_path):
    values = np.random.default_rng(2).integers(0, 3, (700, 500)).astype(np.uint8)
    with dask.config.set(scheduler="threads"):
        a = write_cog(_raster(values, 256), tmp_path / "threads.tif", nodata=255)
    with two_workers.as_current():
        b = write_cog(_raster(values, 128), tmp_path / "cluster.tif", nodata=255)
    with rasterio.open(a) as x, rasterio.open(b) as y:
        np.testing.assert_array_equal(x.read(1), y.read(1))
        np.testing.assert_array_equal(x.read(1, out_shape=(175, 125)), y.read(1, out_shape=(175, 125)))
        assert x.profile == y.profile
    assert cog_problems(b) == []


def test_a_second_run_writing_the_same_output_is_refused(scene_and_model, two_workers, tmp_path):
    """While one run writes pred.tif, another run for the same output stops with a clear message."""
    import threading

    from polarxr.errors import OutputBusyError

    scene_path, checkpoint = scene_and_model
    first_is_writing, second_tried = threading.Event(), threading.Event()
    errors = []

    def hold(done, total):
        first_is_writing.set()
        second_tried.wait(60)

    def first():
        try:
            predict_scene(scene_path, checkpoint, tmp_path / "pred.tif", chunk=160, client=two_workers, progress=hold)
        except Exception as err:  # noqa: BLE001  (reported below)
            errors.append(err)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_is_writing.wait(120)
        with pytest.raises(OutputBusyError, match=r"pred\.tif: is being written by another polarxr run"):
            predict_scene(scene_path, checkpoint, tmp_path / "pred.tif", chunk=160, client=two_workers)
    finally:
        second_tried.set()
        thread.join(120)
    assert not errors
    with rasterio.open(tmp_path / "pred.tif") as src:  # the first run completed undisturbed
        np.testing.assert_array_equal(src.read(1), _reference(scene_path, checkpoint)[0])
    # once it is done, the output can be written again
    predict_scene(scene_path, checkpoint, tmp_path / "pred.tif", chunk=160, client=two_workers)


def test_device_encoding_equals_the_host_encoding():
    """The uint8 encoding done on the worker's device (softmax -> argmax, p x 254) equals numpy's, ties and
    rounding edges (k + 0.5) / 254 included, so CPU results do not depend on where it runs."""
    import torch

    from polarxr.predict import _device_encode, encode_probabilities

    rng = np.random.default_rng(3)
    probs = rng.dirichlet([1, 1, 1], size=(64, 256)).transpose(2, 0, 1).astype(np.float32)
    probs[:, 0, :8] = np.float32(1 / 3)  # ties: the first maximum wins
    probs[0, 1, :254] = ((np.arange(254) + 0.5) / 254).astype(np.float32)  # halfway cases
    host = encode_probabilities(probs)
    device = _device_encode(torch.from_numpy(probs)[None])[0].numpy()
    np.testing.assert_array_equal(device, host)
    assert host.dtype == np.uint8 and host[0, 0, :8].tolist() == [0] * 8


@pytest.mark.parametrize("kind", ["unet", "plain"])
def test_cpu_encoding_in_strips_equals_encoding_the_whole_tile(monkeypatch, kind):
    """A CPU worker encodes a tile's probabilities strip by strip (bounded float temporaries): the bytes
    equal softmax + encoding of the whole tile at once, strips that do not divide the height included,
    for the U-Net (its own strips) and for a model without ``crop_strips`` (its logits sliced)."""
    import torch

    from polarxr import predict
    from polarxr.models import build_model

    torch.manual_seed(0)
    if kind == "unet":
        model = build_model({"name": "unet", "in_channels": 2, "n_classes": 3, "width": 4, "depth": 2, "pool": 2}).eval()
    else:
        model = torch.nn.Conv2d(2, 3, 3, padding=1).eval()
        assert not hasattr(model, "crop_strips")
    batch = (np.random.default_rng(5).random((2, 2, 96, 64), dtype=np.float32) - 0.5) * 6
    with torch.inference_mode():
        whole = predict._device_encode(torch.softmax(model(torch.from_numpy(batch)), dim=1)).numpy()
    monkeypatch.setattr(predict, "ENCODE_STRIP", 40)
    strips = predict._forward(model, batch, "cpu", encode=True)
    assert strips.dtype == np.uint8 and strips.shape == (2, 4, 96, 64)
    np.testing.assert_array_equal(strips, whole)
    # the float path (no encoding) stays the whole-tile softmax
    np.testing.assert_array_equal(predict._forward(model, batch, "cpu"), torch.softmax(
        model(torch.from_numpy(batch)), dim=1).detach().numpy())
