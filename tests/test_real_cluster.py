"""`polarxr predict` and `polarxr sample` run as a user runs them, against a real `dask scheduler` with two
`dask worker` processes (plain TCP and TLS): the outputs equal those of the default local cluster."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from test_predict import make_random_checkpoint

from polarxr.cluster import get_client
from polarxr.cube import open_cube
from polarxr.synthetic import make_dataset

POLARXR = Path(sys.executable).parent / "polarxr"  # the console script, as installed
# A wide terminal, so that rich prints every message on one line whatever the CI runner's terminal is.
ENV = dict(os.environ, COLUMNS="1000")
CUBE_ARRAYS = ("image", "label", "row", "col", "patch_label")


def start(*args: str | Path) -> subprocess.Popen:
    """``polarxr ARGS`` started in the background."""
    return subprocess.Popen([str(POLARXR), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def finish(proc: subprocess.Popen, check: bool = True) -> subprocess.CompletedProcess:
    """Wait for a command; with ``check``, fail the test with its output unless it succeeded."""
    stdout, stderr = proc.communicate(timeout=180)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert not check or result.returncode == 0, f"{shlex.join(proc.args)}\n{stdout}\n{stderr}"
    return result


def ok(*args: str | Path) -> subprocess.CompletedProcess:
    return finish(start(*args))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two 256 x 256 synthetic scenes with their charts, and a random-weight U-Net checkpoint."""
    tmp = tmp_path_factory.mktemp("real-cluster-inputs")
    scenes = make_dataset(tmp / "scenes", n_scenes=2, size=(256, 256), seed=0)
    return {"scene": scenes[0].scene, "scenes": tmp / "scenes", "checkpoint": make_random_checkpoint(tmp / "unet.pt")}


def predict_args(inputs, out: Path) -> list:
    return ["predict", inputs["scene"], "--checkpoint", inputs["checkpoint"], "--out", out / "class.tif",
            "--probabilities", out / "probability.zarr", "--chunk", "128", "--no-quicklook"]


def sample_args(inputs, out: Path) -> list:
    return ["sample", inputs["scenes"], inputs["scenes"], "--cube", out / "cube.zarr", "--patch-size", "32",
            "--samples-per-label", "10", "--chunk", "128"]


@pytest.fixture(scope="module")
def local(inputs, tmp_path_factory):
    """The outputs of both commands on the default cluster (a LocalCluster started by the command)."""
    out = tmp_path_factory.mktemp("local")
    # side by side: each mostly waits for its own cluster to start, and the CI box has 2 cores
    for proc in [start(*predict_args(inputs, out)), start(*sample_args(inputs, out))]:
        finish(proc)
    return out


@pytest.fixture(params=["tcp", "tls"])
def remote(request):
    """``(cluster options of the CLI, security options of get_client)`` of a real running cluster."""
    if request.param == "tcp":
        address = request.getfixturevalue("real_scheduler")
        return ["--scheduler", address], {"scheduler": address}
    address, tls_dir = request.getfixturevalue("real_tls_scheduler")
    return ["--scheduler", address, "--tls-dir", tls_dir], {"scheduler": address, "tls_dir": tls_dir}


def run_on(remote, *args) -> subprocess.CompletedProcess:
    """Run a command against the remote cluster; check that it used that scheduler and its workers."""
    options, connect = remote
    with get_client(**connect) as client:
        dashboard = client.dashboard_link
        before = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)
        result = ok(*args, *options)
        after = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)
    assert f"Dask dashboard: {dashboard}" in result.stderr  # the link a user follows is that cluster's
    assert after > before, "no task ran on the remote cluster"
    return result


def test_predict_on_a_real_cluster_equals_the_local_cluster(inputs, local, remote, tmp_path):
    run_on(remote, *predict_args(inputs, tmp_path))
    with rasterio.open(local / "class.tif") as expected, rasterio.open(tmp_path / "class.tif") as actual:
        assert (actual.crs, actual.transform, actual.shape) == (expected.crs, expected.transform, expected.shape)
        reference = expected.read(1)
        np.testing.assert_array_equal(actual.read(1), reference)
    assert np.isin(reference, [0, 1, 2]).mean() > 0.5  # mostly valid pixels, not an all-nodata map
    reference = zarr.open_array(local / "probability.zarr" / "probability", mode="r")[:]
    assert reference.shape == (3, 256, 256) and reference.std() > 1  # probabilities vary over the scene
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "probability.zarr" / "probability", mode="r")[:], reference)


def test_sample_on_a_real_cluster_equals_the_local_cluster(inputs, local, remote, tmp_path):
    run_on(remote, *sample_args(inputs, tmp_path))
    expected, actual = open_cube(local / "cube.zarr"), open_cube(tmp_path / "cube.zarr")
    assert expected.sizes["patch"] == 60 and set(expected.patch_label.values) == {0, 1, 2}
    for name in CUBE_ARRAYS:
        np.testing.assert_array_equal(actual[name].values, expected[name].values, err_msg=name)
    assert actual.attrs["scenes"] == expected.attrs["scenes"] and actual.attrs["norm"] == expected.attrs["norm"]


def test_unreachable_scheduler_is_one_line_and_exit_code_2(inputs, tmp_path):
    address = "tcp://127.0.0.1:1"  # nothing listens on port 1
    result = finish(start(*predict_args(inputs, tmp_path), "--scheduler", address), check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {address}: cannot connect to the Dask scheduler"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(tmp_path.iterdir())  # nothing written
