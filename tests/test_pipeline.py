"""Unattended processing: the run ledger, idempotent inbox runs, crash recovery, failures, STAC Items, watch.

Real synthetic scenes (GeoTIFF + shapefile charts), a real untrained U-Net checkpoint (the model's quality is
not what is tested here), a real LocalCluster of worker processes, and a real `polarxr process`
subprocess killed with SIGKILL mid-run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
from pyproj import CRS
from model_files import untrained_unet

from polarxr.cluster import get_client
from polarxr.ledger import SCHEMA_VERSION, Ledger, LedgerError, Owner
from polarxr.pipeline import SceneOutputs, find_scenes, parse_duration, process_inbox, watch
from polarxr.scenes import parse_product_name
from polarxr.synthetic import make_sequence

ROOT = Path(__file__).resolve().parents[1]
SIZE = (192, 192)
CHUNK = 128  # 4 blocks per scene, each with the U-Net's halo
N_SCENES = 5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic scenes with charts, and an untrained U-Net checkpoint in polarxr's checkpoint format."""
    root = tmp_path_factory.mktemp("pipeline-data")
    scenes = make_sequence(root / "scenes", n_scenes=N_SCENES, size=SIZE, seed=21)
    return scenes, untrained_unet(root / "untrained.pt", ["HH", "HV", "HH-HV"],
                                  {"mean": [128.0] * 3, "std": [50.0] * 3})


@pytest.fixture(scope="module")
def client():
    with get_client(n_workers=2, threads_per_worker=1, memory_limit="2GiB") as c:
        yield c


def _inbox(folder: Path, scenes) -> Path:
    """Copy scenes and their charts (all shapefile parts) into an inbox folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in scenes:
        shutil.copy2(s.scene, folder)
        for part in s.chart.parent.glob(s.chart.stem + ".*"):
            shutil.copy2(part, folder)
    return folder


def _sid(scene) -> str:
    return scene.scene.name.removesuffix(".tif")


def _mtimes(out: Path, sid: str) -> dict[str, int]:
    o = SceneOutputs.for_scene(out, sid)
    return {"class": o.class_map.stat().st_mtime_ns, "zarr": (o.probabilities / "zarr.json").stat().st_mtime_ns,
            "png": o.quicklook.stat().st_mtime_ns, "item": o.stac_item.stat().st_mtime_ns}


def _classes(out: Path, sid: str) -> np.ndarray:
    with rasterio.open(SceneOutputs.for_scene(out, sid).class_map) as src:
        return src.read(1)


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------------------------- ledger
def test_ledger_from_a_newer_version_is_refused(tmp_path, data):
    _, checkpoint = data
    out = tmp_path / "out"
    Ledger(out / "ledger.sqlite").close()
    with sqlite3.connect(out / "ledger.sqlite") as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(LedgerError, match=rf"newer polarxr \(ledger schema version {SCHEMA_VERSION + 1}"):
        Ledger(out / "ledger.sqlite")
    with pytest.raises(LedgerError, match="newer polarxr"):
        process_inbox(tmp_path, out, checkpoint)
    # the command prints one red line naming the file, no traceback, exit code 2
    run = subprocess.run([sys.executable, "-m", "polarxr.cli.main", "process", str(tmp_path), "--out", str(out),
                          "--checkpoint", str(checkpoint)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, COLUMNS="200"))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "ledger.sqlite" in run.stderr and "newer polarxr" in run.stderr and "Traceback" not in run.stderr

    not_a_ledger = tmp_path / "notes.sqlite"
    not_a_ledger.write_text("these are not the tables you are looking for\n" * 100)
    with pytest.raises(LedgerError, match="not a polarxr run ledger"):
        Ledger(not_a_ledger)


_CLAIM_AND_EXIT = textwrap.dedent("""
    import os, sys
    from polarxr.ledger import Ledger, Owner
    ledger = Ledger(sys.argv[1])
    ledger.register(sys.argv[2], "/inbox/" + sys.argv[2] + ".tif", 1, 1.0)
    assert ledger.claim(sys.argv[2], Owner.this_process("crashed-run"), "abc", "0")
    print("claimed", flush=True)
    if sys.argv[3] == "die":
        os._exit(9)  # a crash: no cleanup of any kind
    sys.stdin.read()  # stay alive (a live run) until the test closes stdin
""")


def test_running_rows_of_dead_processes_are_reset_and_live_ones_kept(tmp_path):
    path = tmp_path / "ledger.sqlite"
    Ledger(path).close()
    dead = subprocess.run([sys.executable, "-c", _CLAIM_AND_EXIT, str(path), "S1A_dead", "die"], timeout=60)
    assert dead.returncode == 9
    live = subprocess.Popen([sys.executable, "-c", _CLAIM_AND_EXIT, str(path), "S1A_live", "live"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline().strip() == "claimed"
        with Ledger(path) as ledger:
            assert ledger.counts()["running"] == 2
            messages = ledger.recover_stale()
            assert len(messages) == 1 and "S1A_dead" in messages[0]
            assert ledger.get("S1A_dead").status == "pending" and ledger.get("S1A_live").status == "running"
            assert not ledger.claim("S1A_live", Owner.this_process("another-run"), "abc", "0")
    finally:
        live.stdin.close()
        live.wait(timeout=60)
    with Ledger(path) as ledger:
        assert [m.split(":")[0] for m in ledger.recover_stale()] == ["S1A_live"]
        assert ledger.counts() == {"pending": 2, "running": 0, "done": 0, "failed": 0}
        assert ledger.get("S1A_live").attempts == 1


def test_rows_of_another_host_are_reset_after_the_lease(tmp_path):
    now = [1000.0]  # the ledger's clock, stepped by the test: no sleeps, no timing margins
    with Ledger(tmp_path / "ledger.sqlite", lease_s=900, clock=lambda: now[0]) as ledger:
        ledger.register("S1B_remote", "/inbox/S1B_remote.tif", 1, 1.0)
        remote = Owner(host="worker-node-7.example.org", pid=4242, pid_started=0.0, run_id="remote-run")
        assert ledger.claim("S1B_remote", remote, "abc", "0")
        assert ledger.recover_stale() == []  # fresh heartbeat
        now[0] += 600
        ledger.heartbeat("remote-run")
        now[0] += 600
        assert ledger.recover_stale() == []  # 1200 s since the claim, but kept alive by its heartbeat
        now[0] += 300.5
        assert "no heartbeat" in ledger.recover_stale()[0]
        assert ledger.get("S1B_remote").status == "pending"


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("90", 90),
                                           ("0.5s", 0.5), ("2d", 172800)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "-5m", "0s", "m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# --------------------------------------------------------------------------------------------- runs
def test_runs_process_each_scene_once_and_a_new_scene_alone(tmp_path, data, client):
    scenes, checkpoint = data
    inbox, out = _inbox(tmp_path / "inbox", scenes[:3]), tmp_path / "out"
    first = process_inbox(inbox, out, checkpoint, client=client, chunk=CHUNK, max_concurrent=3)
    assert sorted(o.scene for o in first.with_status("done")) == sorted(_sid(s) for s in scenes[:3]), first.outcomes
    with Ledger(out / "ledger.sqlite") as ledger:
        rows = ledger.records()
        assert [(r.status, r.attempts) for r in rows] == [("done", 1)] * 3
        # several scenes were in flight at once: each started before any finished
        assert max(r.started for r in rows) < min(r.finished for r in rows)
        for r in rows:
            assert r.model_hash and len(r.model_hash) == 16 and r.checksum and r.seconds > 0
            assert r.metrics is not None and "mean_iou" in r.metrics  # charts beside the scenes
    mtimes = {_sid(s): _mtimes(out, _sid(s)) for s in scenes[:3]}

    # outputs on the scene's grid, nodata where the scene has none
    for s in scenes[:3]:
        o = SceneOutputs.for_scene(out, _sid(s))
        with rasterio.open(s.scene) as scene, rasterio.open(o.class_map) as classes:
            assert (classes.crs, classes.transform, classes.shape) == (scene.crs, scene.transform, scene.shape)
            values = classes.read(1)
            assert set(np.unique(values)) <= {0, 1, 2, 255}
            np.testing.assert_array_equal(values == 255, (scene.read() == 0).all(axis=0))
        item = pystac.Item.from_file(o.stac_item)
        assert item.id == _sid(s)
        assert item.datetime == parse_product_name(s.scene).start.replace(tzinfo=item.datetime.tzinfo)
        assert item.datetime.utcoffset().total_seconds() == 0
        assert set(item.assets) == {"class_map", "probabilities", "quicklook", "lines", "icebergs"}
        for layer in ("coastline", "ice_edge", "fronts"):  # the observations, in the scene's CRS
            lines = gpd.read_file(o.lines, layer=layer)
            assert CRS.from_user_input(lines.crs) == CRS.from_user_input(s.crs) and lines.is_valid.all()
        assert gpd.read_file(o.icebergs, layer="icebergs").crs is not None
        assert item.properties["polarxr:icebergs"] >= 0 and "polarxr:coastline_km" in item.properties
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href()).resolve() == (o.folder / Path(asset.href).name).resolve()
            assert Path(asset.get_absolute_href()).exists()
        assert item.assets["class_map"].media_type == pystac.MediaType.COG
        assert [c["value"] for c in item.assets["class_map"].extra_fields["classification:classes"]] == [0, 1, 2, 255]
        assert CRS.from_wkt(item.properties["proj:wkt2"]) == CRS.from_user_input(s.crs)
        lon0, lat0, lon1, lat1 = item.bbox
        assert -80 < lon0 < lon1 < 10 and 55 < lat0 < lat1 < 90  # East Greenland, in WGS84

    second = process_inbox(inbox, out, checkpoint, client=client, chunk=CHUNK)
    assert second.processed == [] and {o.status for o in second.outcomes} == {"up-to-date"}
    assert {_sid(s): _mtimes(out, _sid(s)) for s in scenes[:3]} == mtimes

    _inbox(inbox, scenes[3:4])
    third = process_inbox(inbox, out, checkpoint, client=client, chunk=CHUNK)
    assert [o.scene for o in third.processed] == [_sid(scenes[3])]
    assert {_sid(s): _mtimes(out, _sid(s)) for s in scenes[:3]} == mtimes
    with Ledger(out / "ledger.sqlite") as ledger:
        assert ledger.counts() == {"pending": 0, "running": 0, "done": 4, "failed": 0}
        assert {r.attempts for r in ledger.records()} == {1}


def test_failed_scenes_are_recorded_and_do_not_stop_the_others(tmp_path, data, client):
    scenes, checkpoint = data
    inbox, out = _inbox(tmp_path / "inbox", scenes[:2]), tmp_path / "out"
    corrupt = inbox / scenes[2].scene.name
    corrupt.write_bytes(b"II*\x00" + os.urandom(5000))  # a TIFF signature and garbage
    unnamed = inbox / "greenland_mosaic.tif"
    shutil.copy2(scenes[3].scene, unnamed)
    report = process_inbox(inbox, out, checkpoint, client=client, chunk=CHUNK)
    status = {o.scene: o for o in report.outcomes}
    assert {status[_sid(s)].status for s in scenes[:2]} == {"done"}
    assert status[_sid(scenes[2])].status == "failed"
    assert corrupt.name in status[_sid(scenes[2])].error and "not a readable GeoTIFF" in status[_sid(scenes[2])].error
    assert status["greenland_mosaic"].status == "failed"
    assert "not a Sentinel-1 product name" in status["greenland_mosaic"].error
    with Ledger(out / "ledger.sqlite") as ledger:
        assert ledger.get(_sid(scenes[2])).error == status[_sid(scenes[2])].error
        assert ledger.counts() == {"pending": 0, "running": 0, "done": 2, "failed": 2}

    again = process_inbox(inbox, out, checkpoint, client=client, chunk=CHUNK)
    assert again.processed == [] and len(again.with_status("failed-before")) == 2
    retried = process_inbox(inbox, out, checkpoint, client=client, chunk=CHUNK, retry_failed=True)
    assert sorted(o.scene for o in retried.failed) == sorted([_sid(scenes[2]), "greenland_mosaic"])
    assert {o.attempts for o in retried.failed} == {2}
    assert len(retried.with_status("up-to-date")) == 2

    shutil.copy2(scenes[2].scene, corrupt)  # the product is delivered again, intact
    fixed = process_inbox(inbox, out, checkpoint, client=client, chunk=CHUNK)
    assert [(o.scene, o.status) for o in fixed.processed] == [(_sid(scenes[2]), "done")]
    assert any("changed since it was processed" in m for m in fixed.messages)


def test_scenes_outside_the_region_fail_with_a_clear_message(tmp_path, data, client):
    scenes, checkpoint = data
    inbox = _inbox(tmp_path / "inbox", scenes[:1])
    region = tmp_path / "svalbard.geojson"
    region.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": '
                      '{"type": "Polygon", "coordinates": [[[15, 77], [20, 77], [20, 79], [15, 79], [15, 77]]]}}]}')
    report = process_inbox(inbox, tmp_path / "out", checkpoint, client=client, chunk=CHUNK, region=region)
    [outcome] = report.outcomes
    assert outcome.status == "failed" and "outside the region of interest" in outcome.error
    assert scenes[0].scene.name in outcome.error and "svalbard.geojson" in outcome.error


def test_broken_outputs_are_redone_and_stac_inboxes_read(tmp_path, data, client):
    scenes, checkpoint = data
    folder = _inbox(tmp_path / "archive", scenes[:3])
    items = [pystac.Item(id=f"item-{i}", geometry=None, bbox=None, datetime=s.start, properties={},
                         assets={"data": pystac.Asset(f"./archive/{s.scene.name}", media_type=pystac.MediaType.GEOTIFF)})
             for i, s in enumerate(scenes[:3])]
    collection = tmp_path / "items.json"
    pystac.ItemCollection(items).save_object(dest_href=str(collection))
    found = find_scenes(collection)
    assert [f.path for f in found] == [folder / s.scene.name for s in scenes[:3]]
    assert all(f.chart is not None for f in found)

    out = tmp_path / "out"
    assert len(process_inbox(collection, out, checkpoint, client=client, chunk=CHUNK).with_status("done")) == 3
    truncated, missing, intact = (SceneOutputs.for_scene(out, _sid(s)) for s in scenes[:3])
    before = _mtimes(out, _sid(scenes[2]))
    reference = _classes(out, _sid(scenes[0]))
    data_bytes = truncated.class_map.read_bytes()
    truncated.class_map.write_bytes(data_bytes[: len(data_bytes) // 2])
    missing.quicklook.unlink()
    # what a run killed while writing leaves: a temporary beside the outputs (io.atomic_path's naming)
    leftover = truncated.folder / f".{truncated.class_map.name}.tmp-0123abcd.tiled.tif"
    leftover.write_bytes(b"half a GeoTIFF")

    report = process_inbox(collection, out, checkpoint, client=client, chunk=CHUNK)
    assert sorted(o.scene for o in report.processed) == sorted([_sid(scenes[0]), _sid(scenes[1])])
    assert any("changed size" in m and truncated.class_map.name in m for m in report.messages)
    assert any("is missing" in m and missing.quicklook.name in m for m in report.messages)
    np.testing.assert_array_equal(_classes(out, _sid(scenes[0])), reference)
    assert missing.quicklook.exists()
    assert _mtimes(out, _sid(scenes[2])) == before
    assert not leftover.exists() and _leftovers(out) == []


def test_watch_processes_new_scenes_each_cycle(tmp_path, data, client):
    scenes, checkpoint = data
    inbox, out = _inbox(tmp_path / "inbox", scenes[:1]), tmp_path / "out"

    def deliver(report):
        if len(seen) == 0:
            _inbox(inbox, scenes[1:2])  # a new acquisition arrives between two polls
        seen.append(report)

    seen: list = []
    reports = watch(inbox, out, checkpoint, interval_s="0.2s", max_cycles=3, client=client, on_report=deliver,
                    chunk=CHUNK)
    assert reports == seen and len(reports) == 3
    assert [[o.scene for o in r.processed] for r in reports] == [[_sid(scenes[0])], [_sid(scenes[1])], []]


# --------------------------------------------------------------------------------------------- crash
def _ledger_counts(path: Path) -> dict[str, int]:
    """Status counts read through a read-only connection (does not interfere with the running writer)."""
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return dict(db.execute("SELECT status, COUNT(*) FROM scenes GROUP BY status").fetchall())
    except sqlite3.OperationalError:  # the run is still creating the tables
        return {}


def test_a_killed_run_resumes_to_the_same_outputs(tmp_path, data, client):
    scenes, checkpoint = data
    inbox = _inbox(tmp_path / "inbox", scenes[:4])
    reference = tmp_path / "reference"
    process_inbox(inbox, reference, checkpoint, client=client, chunk=CHUNK)

    out = tmp_path / "out"
    log = open(tmp_path / "process.log", "wb")
    run = subprocess.Popen([sys.executable, "-m", "polarxr.cli.main", "process", str(inbox), "--out", str(out),
                            "--checkpoint", str(checkpoint), "--chunk", str(CHUNK), "--workers", "1",
                            "--max-concurrent", "1"], stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True, cwd=tmp_path)
    log.close()
    try:
        deadline = time.monotonic() + 240
        while _ledger_counts(out / "ledger.sqlite").get("done", 0) < 1:
            assert run.poll() is None, (tmp_path / "process.log").read_text()
            assert time.monotonic() < deadline, "the first scene did not finish in time"
            time.sleep(0.05)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the run, its cluster and workers: a crash, no cleanup
        run.wait(timeout=60)
    at_kill = _ledger_counts(out / "ledger.sqlite")
    assert at_kill.get("done", 0) < 4, f"the run finished before it could be killed: {at_kill}"
    with Ledger(out / "ledger.sqlite") as ledger:
        first_done = {r.scene: r.finished for r in ledger.records("done")}

    resumed = process_inbox(inbox, out, checkpoint, client=client, chunk=CHUNK)
    assert not set(first_done) & {o.scene for o in resumed.processed}, "a finished scene was processed twice"
    assert sorted(set(first_done) | {o.scene for o in resumed.with_status("done")}) == sorted(_sid(s) for s in scenes[:4])
    if at_kill.get("running"):
        assert any("left 'running'" in m for m in resumed.messages)
    with Ledger(out / "ledger.sqlite") as ledger:
        assert ledger.counts() == {"pending": 0, "running": 0, "done": 4, "failed": 0}
        assert {r.scene: r.finished for r in ledger.records("done") if r.scene in first_done} == first_done
    for s in scenes[:4]:
        np.testing.assert_array_equal(_classes(out, _sid(s)), _classes(reference, _sid(s)))
    assert _leftovers(out) == []


# --------------------------------------------------------------------------------------------- deploy
def _unit_values(path: Path, key: str) -> list[str]:
    """Values of ``key=`` lines of a systemd unit file (keys may repeat)."""
    return [line.split("=", 1)[1] for line in path.read_text().splitlines() if line.startswith(f"{key}=")]


def test_documented_systemd_and_cron_commands_run(tmp_path, data, client):
    scenes, checkpoint = data
    inbox, out = _inbox(tmp_path / "inbox", scenes[:1]), tmp_path / "out"
    process_inbox(inbox, out, checkpoint, client=client, chunk=CHUNK)
    polarxr = str(Path(sys.executable).parent / "polarxr")
    env = dict(os.environ, COLUMNS="200", POLARXR_INBOX=str(inbox), POLARXR_OUT=str(out),
               POLARXR_CHECKPOINT=str(checkpoint), INBOX=str(inbox), OUT=str(out), CHECKPOINT=str(checkpoint),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")

    service = ROOT / "deploy" / "systemd" / "polarxr-process.service"
    assert _unit_values(service, "Type") == ["oneshot"]
    assert _unit_values(ROOT / "deploy" / "systemd" / "polarxr-process.timer", "Unit") == [service.name]
    commands = _unit_values(service, "ExecStart") + [v.lstrip("-") for v in _unit_values(service, "ExecStopPost")]
    assert [c.split()[1] for c in commands] == ["process", "timeseries"]
    for command in commands:
        argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word) for word in command.split()]
        argv[0] = polarxr  # the unit's /opt/polarxr/.venv/bin/polarxr
        run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
        assert argv[1] != "process" or "up-to-date" in run.stdout  # nothing processed twice
    assert (out / "timeseries.png").stat().st_size > 0

    [cron] = [line for line in (ROOT / "deploy" / "cron" / "polarxr.cron").read_text().splitlines()
              if line and not line.startswith("#") and "=" not in line.split()[0]]
    fields = cron.split(None, 6)
    assert fields[:5] == ["*/10", "*", "*", "*", "*"] and fields[5] == "polarxr"  # /etc/cron.d: user field
    command = fields[6].split(">>", 1)[0].replace("/tmp/polarxr-process.lock", str(tmp_path / "lock"))
    run = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "up-to-date" in run.stdout
