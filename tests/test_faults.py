"""Bad inputs and faults across every CLI command (issue 13).

Bad inputs: each command is run as a user runs it (``polarxr.cli.main.main`` with its arguments, in this
process for speed) on real broken files; it must exit 2 with one line naming the file and the problem,
and write nothing. Faults: real ``polarxr`` and ``dask`` processes killed with SIGKILL in the middle of
``sample``, ``predict`` and ``process``; the re-run's outputs equal an undisturbed run's, and nothing
half-written is visible meanwhile. Concurrency: two ``sample`` runs on one cube, two ``process`` runs
on one ledger. Disk full: a small tmpfs (root only).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import shapely
import zarr
from cube_files import write_tiny_cube
from model_files import untrained_unet
from PIL import Image
from scene_files import POLAR_STEREO, PRODUCT, chart_polygons, write_chart, write_scene

from polarxr.io import TEMPORARY_NAME

CHART = "seaice_s1_20180116t075430.shp"
BANDS = ["HH", "HV", "HH-HV"]


def tiny_checkpoint(path: Path, bands=BANDS) -> Path:
    return untrained_unet(path, bands, {"mean": [128.0] * len(bands), "std": [60.0] * len(bands)}, patch_size=32)


def _truncated(source: Path, path: Path) -> Path:
    """``source`` as a COG cut short after its header and directory: it opens, its pixels cannot be read."""
    rasterio.shutil.copy(source, path, driver="COG", BLOCKSIZE=64, COMPRESS="DEFLATE")
    with rasterio.open(path) as src:
        first = min(int(src.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=1)) for i in range(2) for j in range(2))
    with open(path, "r+b") as f:
        f.truncate(first)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good and broken inputs, side by side (paths by name)."""
    root = tmp_path_factory.mktemp("faults")
    w = {"root": root}
    good = root / "good"
    good.mkdir()
    w["scene"] = write_scene(good / PRODUCT, shape=(128, 128), tile=64)
    w["chart"] = write_chart(good / CHART)
    w["checkpoint"] = tiny_checkpoint(root / "tiny.pt")
    w["float_scene"] = write_scene(root / "float" / PRODUCT.replace("8bit", "db"), shape=(128, 128), dtype="float32") \
        if (root / "float").mkdir() is None else None
    w["cube"] = write_tiny_cube(root / "tiny_cube.zarr")
    w["missing"] = root / "no_such_scene.tif"
    (root / "empty.tif").write_bytes(b"")
    w["empty"] = root / "empty.tif"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "picture.tif", format="PNG")
    w["png"] = root / "picture.tif"
    w["truncated"] = _truncated(w["scene"], root / "truncated.tif")
    w["no_crs"] = write_scene(root / "no_crs.tif", shape=(64, 64), crs=None)
    w["all_nodata"] = write_scene(root / "all_nodata.tif", shape=(64, 64), fill=0)
    inf = write_scene(root / "all_inf.tif", shape=(64, 64), dtype="float32")
    with rasterio.open(inf, "r+") as dst:
        dst.write(np.full((2, 64, 64), -np.inf, np.float32))
    w["all_inf"] = inf
    far = chart_polygons()
    far["geometry"] = far.geometry.translate(5e6, 0)
    w["far_chart"] = write_chart(root / "far_chart.shp", far)
    codes = chart_polygons()
    codes["poly_type"] = ["L", "X", "I", "Q"]
    w["code_chart"] = write_chart(root / "code_chart.shp", codes)
    mars = gpd.GeoDataFrame({"poly_type": ["W"]}, geometry=[shapely.box(0, 0, 1, 1)], crs="IAU_2015:49900")
    mars.to_file(root / "mars.shp")
    w["mars_chart"] = root / "mars.shp"
    empty_geoms = gpd.GeoDataFrame({"poly_type": ["W", "I"]}, geometry=[shapely.Polygon(), shapely.Polygon()],
                                   crs=POLAR_STEREO)
    empty_geoms.to_file(root / "empty_geoms.shp")
    w["empty_geometry_chart"] = root / "empty_geoms.shp"
    w["garbage_checkpoint"] = root / "garbage.pt"
    w["garbage_checkpoint"].write_bytes(b"not a checkpoint")
    w["a_file"] = root / "a_file.txt"
    w["a_file"].write_text("x")
    (root / "no_scenes").mkdir()
    w["no_scenes"] = root / "no_scenes"
    return w


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``polarxr ARGV`` through the console script's entry point, in this process."""
    from polarxr.cli.main import main

    old = sys.argv
    sys.argv = ["polarxr", *map(str, argv)]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


# (id, command line with {names} of world paths and {out} (a fresh path), the file the message names,
#  words of the problem)
BAD_INPUTS = [
    ("info-missing", "info {missing}", "missing", "does not exist"),
    ("info-empty-file", "info {empty}", "empty", "not a readable GeoTIFF"),
    ("info-png-named-tif", "info {png}", "png", "has no CRS"),
    ("info-no-crs", "info {no_crs}", "no_crs", "has no CRS"),
    ("rasterize-truncated", "rasterize {truncated} {chart} -o {out}/labels.tif --scheduler {scheduler}",
     "truncated", "corrupt"),
    ("rasterize-no-overlap", "rasterize {scene} {far_chart} -o {out}/labels.tif", "far_chart", "does not overlap"),
    ("rasterize-unknown-codes", "rasterize {scene} {code_chart} -o {out}/labels.tif", "code_chart", "X"),
    ("rasterize-crs-not-transformable", "rasterize {scene} {mars_chart} -o {out}/labels.tif", "mars_chart",
     "cannot transform CRS"),
    ("rasterize-empty-geometries", "rasterize {scene} {empty_geometry_chart} -o {out}/labels.tif",
     "empty_geometry_chart", "polygon"),
    ("rasterize-all-nodata", "rasterize {all_nodata} {chart} -o {out}/labels.tif", "all_nodata", "every pixel is nodata"),
    ("rasterize-all-minus-inf", "rasterize {all_inf} {chart} -o {out}/labels.tif", "all_inf", "every pixel is nodata"),
    ("sample-no-scenes", "sample {no_scenes} --cube {out}/cube.zarr --scheduler {scheduler}", "no_scenes", "no scene"),
    ("sample-cube-is-a-file", "sample {scene.parent} --cube {a_file} --scheduler {scheduler}", "a_file", "not a"),
    ("import-patches-missing", "import-patches {missing} --cube {out}/cube.zarr", "missing", "not a folder"),
    ("train-missing-cube", "train --cube {missing} --out {out}/run", "missing", "does not exist"),
    ("train-cube-is-a-file", "train --cube {a_file} --out {out}/run", "a_file", "not a Zarr"),
    ("predict-missing-scene", "predict {missing} -c {checkpoint} -o {out}/c.tif --scheduler {scheduler}", "missing",
     "does not exist"),
    ("predict-garbage-checkpoint", "predict {scene} -c {garbage_checkpoint} -o {out}/c.tif --scheduler {scheduler}",
     "garbage_checkpoint", "not a readable torch checkpoint"),
    ("predict-wrong-bands", "predict {float_scene} -c {checkpoint} -o {out}/c.tif --scheduler {scheduler}",
     "checkpoint", "trained on bands"),
    ("predict-all-nodata", "predict {all_nodata} -c {checkpoint} -o {out}/c.tif --scheduler {scheduler}",
     "all_nodata", "every pixel is nodata"),
    ("evaluate-missing-map", "evaluate {missing} {chart}", "missing", "does not exist"),
    ("process-missing-inbox", "process {missing} --out {out} --checkpoint {checkpoint}", "missing", "does not exist"),
    ("process-garbage-checkpoint", "process {scene.parent} --out {out} --checkpoint {missing}", "missing",
     "does not exist"),
    ("timeseries-no-class-maps", "timeseries {no_scenes}", "no_scenes", "no class maps"),
    ("demo-too-few-scenes", "demo --scenes 3 --workdir {out}", None, "at least 4 scenes"),
    ("cluster-info-unreachable", "cluster-info --scheduler tcp://127.0.0.1:9", "tcp://127.0.0.1:9", "cannot connect"),
    ("tls-certs-into-a-file", "tls-certs {a_file}", "a_file", ""),
]


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A real ``dask scheduler`` with one ``dask worker`` process: commands connect instead of starting one."""
    from cluster_fixtures import start_dask_cluster

    cluster = start_dask_cluster(tmp_path_factory.mktemp("faults-dask"), n_workers=1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.parametrize("case, template, names, problem", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, template, names, problem, world, scheduler,
                                                            tmp_path, capsys):
    out = tmp_path / "out"
    values = {k: v for k, v in world.items()}
    argv = template.format(out=out, scheduler=scheduler.address, **values).split()
    before = sorted(p for p in world["root"].rglob("*"))
    code, stdout, stderr = run_cli(argv, capsys)
    # the dashboard's address is the one other line a command prints on stderr, before it fails
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("Dask dashboard:")]
    assert code == 2, (stdout, stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr and "np.float64" not in stderr and "PROJCS" not in stderr
    named = world[names].name if names in world else names
    assert named is None or named in lines[0], lines[0]
    assert problem in lines[0], lines[0]
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))
    assert sorted(p for p in world["root"].rglob("*")) == before  # nothing written beside the inputs


# ---------------------------------------------------------------------------------------------- faults
def polarxr(*args, **kwargs) -> subprocess.Popen:
    """``polarxr ARGS`` as its own OS process (a session of its own, so SIGKILL reaches only it)."""
    return subprocess.Popen([sys.executable, "-m", "polarxr.cli.main", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(condition, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMPORARY_NAME.match(p.name)] if folder.exists() else []


@pytest.fixture(scope="module")
def inbox(tmp_path_factory):
    """Two 640 x 640 px scenes with charts (big enough that a run takes a few seconds on one worker)."""
    from polarxr.synthetic import make_dataset

    folder = tmp_path_factory.mktemp("inbox")
    made = make_dataset(folder, n_scenes=2, size=(640, 640), seed=5)
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    return folder, [m.scene for m in made], checkpoint


def cube_content(cube: Path) -> dict:
    root = zarr.open_group(cube, mode="r")
    n = root.attrs["n_patches"]
    arrays = {name: root[name][:n] for name in ("image", "label", "patch_label", "scene", "row", "col", "split")}
    records = [{k: v for k, v in r.items() if k not in ("source", "chart")} for r in root.attrs["scene_records"]]
    return {"arrays": arrays, "records": records}


def outputs_of(command: str, out: Path, scenes: list[Path]) -> dict:
    """What a user compares between two runs: pixels of class maps and probabilities, cube contents."""
    if command == "sample":
        return cube_content(out / "cube.zarr")
    found = {}
    for scene in scenes:
        stem = scene.stem
        folder = out / stem if command == "process" else out
        with rasterio.open(folder / f"{stem}_class.tif") as src:
            found[f"{stem} classes"] = src.read()
        found[f"{stem} probabilities"] = zarr.open_group(folder / f"{stem}_probability.zarr", mode="r")["probability"][:]
    return found


def command_line(command: str, inbox, out: Path, address: str) -> list:
    folder, scenes, checkpoint = inbox
    cluster = ["--scheduler", address]
    if command == "sample":
        return ["sample", folder, "--cube", out / "cube.zarr", "--patch-size", 32, "--samples-per-label", 20,
                "--chunk", 128, *cluster]
    if command == "predict":
        return ["predict", folder, "-c", checkpoint, "-o", out, "--chunk", 128, "--tile", 128, "--no-quicklook",
                *cluster]
    return ["process", folder, "--out", out, "--checkpoint", checkpoint, "--chunk", 128, *cluster]


def assert_equal_outputs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        elif isinstance(a[key], dict):
            assert_equal_outputs(a[key], b[key])
        else:
            assert a[key] == b[key], key


def started_writing(command: str, out: Path) -> bool:
    if command == "sample":
        return (out / "cube.zarr" / "image").exists()
    return bool(temporaries(out))


def final_outputs_complete_or_absent(command: str, out: Path, scenes: list[Path]) -> None:
    """Between the kill and the re-run: every output under its final name is complete."""
    if command == "sample":
        if (out / "cube.zarr").exists():
            content = cube_content(out / "cube.zarr")  # opens, and holds only committed scenes
            assert len(content["arrays"]["image"]) == sum(r["count"] for r in content["records"])
        return
    for scene in scenes:
        folder = out / scene.stem if command == "process" else out
        class_map = folder / f"{scene.stem}_class.tif"
        if class_map.exists():
            with rasterio.open(class_map) as src:
                src.read()


@pytest.fixture(scope="module")
def references(inbox, scheduler, tmp_path_factory):
    """Outputs of undisturbed runs, per command."""
    refs = {}
    for command in ("sample", "predict", "process"):
        out = tmp_path_factory.mktemp(f"ref-{command}")
        code, stdout, stderr = finish(polarxr(*command_line(command, inbox, out, scheduler.address)))
        assert code == 0, stderr
        refs[command] = outputs_of(command, out, inbox[1])
    return refs


@pytest.mark.parametrize("command", ["sample", "predict", "process"])
def test_client_killed_mid_run_then_rerun_gives_identical_outputs(command, inbox, scheduler, references, tmp_path):
    out = tmp_path / "out"
    line = command_line(command, inbox, out, scheduler.address)
    run = polarxr(*line)
    wait_for(lambda: started_writing(command, out) or run.poll() is not None, what=f"{command} to start writing")
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    final_outputs_complete_or_absent(command, out, inbox[1])
    code, stdout, stderr = finish(polarxr(*line))
    assert code == 0, stderr
    assert_equal_outputs(outputs_of(command, out, inbox[1]), references[command])
    if command == "process":
        from polarxr.ledger import Ledger

        with Ledger(out / "ledger.sqlite") as ledger:
            assert ledger.counts()["done"] == 2 and ledger.counts()["running"] == 0
    if command == "process":  # it removes what a killed run left under temporary names
        assert temporaries(out) == []


@pytest.mark.parametrize("command", ["sample", "predict"])
def test_scheduler_killed_mid_run_is_one_line_and_rerun_gives_identical_outputs(command, inbox, references,
                                                                                 tmp_path):
    from cluster_fixtures import start_dask_cluster

    out = tmp_path / "out"
    (tmp_path / "dask").mkdir()
    cluster = start_dask_cluster(tmp_path / "dask", n_workers=1)
    try:
        run = polarxr(*command_line(command, inbox, out, cluster.address),
                      env=dict(os.environ, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="3s"))
        wait_for(lambda: started_writing(command, out) or run.poll() is not None, what=f"{command} to start")
        os.killpg(cluster.procs[0].pid, signal.SIGKILL)  # the `dask scheduler` process
        code, stdout, stderr = finish(run, timeout=180)
    finally:
        cluster.stop()
    final_outputs_complete_or_absent(command, out, inbox[1])
    if code != 0:  # unless it had already finished: it ends with one error line of ours (dask's client logs
        # its failed reconnection above it, traceback included: that is distributed's logger, not ours)
        lines = [line for line in stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0] and "run the command again" in errors[0], stderr
    (tmp_path / "dask2").mkdir()
    cluster = start_dask_cluster(tmp_path / "dask2", n_workers=1)
    try:
        code, stdout, stderr = finish(polarxr(*command_line(command, inbox, out, cluster.address)))
    finally:
        cluster.stop()
    assert code == 0, stderr
    assert_equal_outputs(outputs_of(command, out, inbox[1]), references[command])


@pytest.mark.parametrize("command", ["sample", "predict"])
def test_worker_killed_mid_write_gives_identical_outputs(command, inbox, references, tmp_path):
    """Workers write their own chunks (cube shards, COG tiles, Zarr chunks): a worker SIGKILLed while the
    outputs are being written has its tasks rerun elsewhere, and the outputs equal an undisturbed run's."""
    import psutil

    from cluster_fixtures import start_dask_cluster

    out = tmp_path / "out"
    (tmp_path / "dask").mkdir()
    cluster = start_dask_cluster(tmp_path / "dask", n_workers=2)
    try:
        run = polarxr(*command_line(command, inbox, out, cluster.address))
        wait_for(lambda: started_writing(command, out) or run.poll() is not None, what=f"{command} to start")
        nanny = psutil.Process(cluster.procs[1].pid)
        for child in nanny.children(recursive=True):  # the worker process under the first nanny
            child.send_signal(signal.SIGKILL)
        code, stdout, stderr = finish(run)
    finally:
        cluster.stop()
    assert code == 0, stderr
    assert_equal_outputs(outputs_of(command, out, inbox[1]), references[command])


# ------------------------------------------------------------------------------------------ concurrency
def test_two_sample_runs_on_one_cube_lose_nothing(inbox, scheduler, references, tmp_path):
    out = tmp_path / "out"
    line = command_line("sample", inbox, out, scheduler.address)
    first, second = polarxr(*line), polarxr(*line)
    results = [finish(first), finish(second)]
    assert [r[0] for r in results] == [0, 0], results
    assert any("another polarxr run is writing to this cube" in r[1] for r in results)
    assert_equal_outputs(outputs_of("sample", out, inbox[1]), references["sample"])  # each scene once


def test_two_process_runs_on_one_ledger_share_the_work(inbox, scheduler, references, tmp_path):
    from polarxr.ledger import Ledger

    out = tmp_path / "out"
    line = command_line("process", inbox, out, scheduler.address)
    first, second = polarxr(*line), polarxr(*line)
    results = [finish(first), finish(second)]
    assert [r[0] for r in results] == [0, 0], results
    with Ledger(out / "ledger.sqlite") as ledger:
        rows = ledger.records()
    assert [r.status for r in rows] == ["done", "done"] and [r.attempts for r in rows] == [1, 1]
    said = results[0][1] + results[1][1]
    assert "busy" in said or "up-to-date" in said or "handled by another run" in said
    assert_equal_outputs(outputs_of("process", out, inbox[1]), references["process"])


# ------------------------------------------------------------------------------------------- disk full
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_disk_full_is_one_line_and_leaves_nothing_half_written(inbox, scheduler, tmp_path):
    folder, scenes, checkpoint = inbox
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        code, stdout, stderr = finish(polarxr("predict", scenes[0], "-c", checkpoint, "-o", disk / "c_class.tif",
                                              "--probabilities", disk / "p.zarr", "--chunk", 128,
                                              "--scheduler", scheduler.address))
        left = sorted(p.name for p in disk.iterdir())
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("Dask dashboard:")]
    assert code in (1, 2) and len(lines) == 1 and "No space left on device" in lines[0], stderr
    assert "Traceback" not in stderr
    assert left == []  # neither a final output nor a temporary
