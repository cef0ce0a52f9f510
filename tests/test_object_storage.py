"""``predict``, ``sample`` and ``process`` against a real S3-compatible server (moto, on 127.0.0.1): outputs
equal those of local runs, and nothing is visible under the final keys before a run completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import s3fs
import xarray as xr
import zarr
from distributed import Client, LocalCluster
from s3_server import s3_bucket  # noqa: F401  (the fixture)
from scene_files import PRODUCT, write_chart, write_scene
from test_predict import make_random_checkpoint

from polarxr.errors import SceneError
from polarxr.predict import predict_scene

CHART = "seaice_s1_20180116t075430"
POLARXR = Path(sys.executable).with_name("polarxr")


def _keys(url: str) -> list[str]:
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return sorted(k.removeprefix(url.removeprefix("s3://")).lstrip("/") for k in fs.find(url))


@pytest.fixture(scope="module")
def inputs(s3_bucket, tmp_path_factory):  # noqa: F811
    """A scene, its chart and a checkpoint, locally and as copies under ``s3://.../in/``."""
    local = tmp_path_factory.mktemp("s3-inputs")
    scene = write_scene(local / PRODUCT, shape=(300, 260), tile=64, nodata_margin=30)
    write_chart(local / f"{CHART}.shp")
    checkpoint = make_random_checkpoint(local / "unet.pt")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for path in local.iterdir():
        fs.put(str(path), f"{s3_bucket}/in/{path.name}")
    return local, scene, checkpoint, f"{s3_bucket}/in"


@pytest.fixture(scope="module")
def client(s3_bucket):  # noqa: F811
    # started after the S3 environment is set: the workers inherit it
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as c:
        yield c


def test_predict_reads_and_writes_s3_like_local_disk(inputs, client, s3_bucket, tmp_path):  # noqa: F811
    local, scene, checkpoint, remote = inputs
    reference = predict_scene(scene, checkpoint, tmp_path / "pred.tif", probabilities=tmp_path / "prob.zarr",
                              chunk=128, client=client)
    out = f"{s3_bucket}/predict"
    result = predict_scene(f"{remote}/{PRODUCT}", f"{remote}/unet.pt", f"{out}/pred.tif",
                           probabilities=f"{out}/prob.zarr", chart=f"{remote}/{CHART}.shp", chunk=128,
                           client=client, quicklook=f"{out}/pred.png")
    assert result.metrics["overall_accuracy"] >= 0
    with rasterio.open(reference.class_map) as a, rasterio.open(f"{out}/pred.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
        assert a.profile == b.profile
    stored = zarr.open_array(f"{out}/prob.zarr/probability", mode="r", storage_options={"skip_instance_cache": True})[:]
    np.testing.assert_array_equal(stored, zarr.open_array(tmp_path / "prob.zarr" / "probability", mode="r")[:])
    decoded = xr.open_zarr(f"{out}/prob.zarr", consolidated=False, decode_coords="all",
                           storage_options={"skip_instance_cache": True})["probability"]
    assert decoded.rio.crs is not None
    keys = _keys(out)
    assert "pred.tif" in keys and "pred.png" in keys and "prob.zarr/zarr.json" in keys
    assert not [k for k in keys if k.startswith(".") or "/." in k]  # no temporaries left


def test_failed_run_leaves_nothing_under_the_final_keys(inputs, client, s3_bucket, tmp_path):  # noqa: F811
    _, scene, checkpoint, remote = inputs
    broken = tmp_path / PRODUCT
    rasterio.shutil.copy(scene, broken, driver="GTiff", TILED="YES", BLOCKXSIZE=64, BLOCKYSIZE=64, COMPRESS="DEFLATE")
    with rasterio.open(broken) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_2", "TIFF", bidx=1))
    with open(broken, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 64)
    s3fs.S3FileSystem(skip_instance_cache=True).put(str(broken), f"{s3_bucket}/broken/{PRODUCT}")
    out = f"{s3_bucket}/failed"
    with pytest.raises(SceneError, match=PRODUCT):
        predict_scene(f"{s3_bucket}/broken/{PRODUCT}", f"{remote}/unet.pt", f"{out}/pred.tif",
                      probabilities=f"{out}/prob.zarr", chunk=64, client=client)
    assert _keys(out) == []


def test_sample_from_s3_equals_local(inputs, client, tmp_path):
    from polarxr.cube import build_cube
    from polarxr.samplers import SamplerConfig
    from polarxr.scenes import scene_catalog

    local, _, _, remote = inputs
    config = SamplerConfig(mode="grid", patch_size=32, stride=32)
    with client.as_current():
        build_cube(scene_catalog(local), tmp_path / "local.zarr", config, chunks=128)
        build_cube(scene_catalog(remote), tmp_path / "s3.zarr", config, chunks=128)
    a, b = zarr.open_group(tmp_path / "local.zarr", mode="r"), zarr.open_group(tmp_path / "s3.zarr", mode="r")
    assert a.attrs["n_patches"] == b.attrs["n_patches"] > 0
    for name in ("image", "label", "patch_label", "row", "col"):
        np.testing.assert_array_equal(a[name][:], b[name][:])


def test_process_an_s3_inbox_into_s3(inputs, client, s3_bucket, tmp_path):  # noqa: F811
    from polarxr.errors import PolarxrError
    from polarxr.pipeline import process_inbox

    _, _, _, remote = inputs
    out = f"{s3_bucket}/processed"
    with pytest.raises(PolarxrError, match="--ledger"):
        process_inbox(remote, out, f"{remote}/unet.pt", client=client, chunk=128)
    ledger = tmp_path / "ledger.sqlite"
    report = process_inbox(remote, out, f"{remote}/unet.pt", client=client, chunk=128, ledger_path=ledger)
    assert [o.status for o in report.outcomes] == ["done"], report.outcomes
    scene_id = PRODUCT.removesuffix(".tif")
    keys = _keys(out)
    for suffix in ("_class.tif", "_quicklook.png", ".json", "_probability.zarr/zarr.json"):
        assert f"{scene_id}/{scene_id}{suffix}" in keys
    again = process_inbox(remote, out, f"{remote}/unet.pt", client=client, chunk=128, ledger_path=ledger)
    assert [o.status for o in again.outcomes] == ["up-to-date"]


def test_client_killed_mid_run_leaves_nothing_and_a_rerun_completes(inputs, s3_bucket, tmp_path):  # noqa: F811
    _, _, _, remote = inputs
    out = f"{s3_bucket}/killed"
    command = [str(POLARXR), "predict", f"{remote}/{PRODUCT}", "--checkpoint", f"{remote}/unet.pt",
               "--out", f"{out}/pred.tif", "--probabilities", f"{out}/prob.zarr", "--chunk", "64",
               "--tile", "64", "--no-quicklook", "--workers", "1"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not any(k.startswith(".prob.zarr.tmp-") for k in _keys(out)):  # the workers have started writing
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before writing"
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not [k for k in _keys(out) if not k.startswith(".")]  # only temporaries, no final key
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    keys = _keys(out)
    assert "pred.tif" in keys and "prob.zarr/zarr.json" in keys
