"""Discovery through a STAC API: a real ``rustac serve`` STAC API on 127.0.0.1 serving Sentinel-1 GRD items
written here (sar extension fields, footprints over East Greenland and elsewhere), searched with
pystac-client through ``polarxr discover`` and ``polarxr process --stac-api``.

Paging (page size below the number of items), the bbox / region / since / mode filters, a second poll
that finds only the items added to the server since the first, file:// and local assets, an fsspec
download, an unreachable API (a closed port) and an end-to-end ``process --stac-api`` on synthetic scenes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fsspec
import pystac
import pytest
import rasterio
import shapely
import shapely.geometry
from model_files import untrained_unet
from stac_api_server import free_port

from polarxr.discovery import DiscoveryError, SearchFilter, search_items
from polarxr.discovery.assets import resolve_scene
from polarxr.discovery.poll import DOWNLOADS_NAME, INBOX_NAME, STATE_NAME, poll
from polarxr.ledger import Ledger
from polarxr.region import bounds_footprint
from polarxr.synthetic import make_sequence

POLARXR = str(Path(sys.executable).parent / "polarxr")
SAR = "https://stac-extensions.github.io/sar/v1.2.0/schema.json"
EAST_GREENLAND = shapely.box(-26.0, 68.0, -18.0, 72.0)  # Scoresby Sund and south
SVALBARD = shapely.box(10.0, 76.5, 20.0, 80.0)
T0 = datetime(2018, 1, 10, 7, 54, 30, tzinfo=UTC)


def s1_item(start: datetime, href: str, footprint: shapely.Geometry = EAST_GREENLAND, mode: str = "EW",
            product: str = "GRDM", orbit: int = 20177) -> pystac.Item:
    """A Sentinel-1 item as a catalogue lists it: the product name as id, sar fields, footprint, scene asset."""
    stop = start + timedelta(minutes=1)
    kind = "GRD" if product.startswith("GRD") else product
    item_id = f"S1A_{mode}_{product}_1SDH_{start:%Y%m%dT%H%M%S}_{stop:%Y%m%dT%H%M%S}_{orbit:06d}_0226B9_9FE3"
    item = pystac.Item(
        id=item_id, geometry=shapely.geometry.mapping(footprint), bbox=list(footprint.bounds), datetime=start,
        properties={"start_datetime": start.isoformat(), "end_datetime": stop.isoformat(),
                    "platform": "sentinel-1a", "constellation": "sentinel-1", "instruments": ["c-sar"],
                    "sar:instrument_mode": mode, "sar:product_type": kind, "sar:polarizations": ["HH", "HV"],
                    "sar:frequency_band": "C", "sar:center_frequency": 5.405},
        stac_extensions=[SAR])
    item.add_asset("data", pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"]))
    return item


def _catalogue(folder: Path) -> list[pystac.Item]:
    """Eight items: six EW GRD over East Greenland (daily), one IW, one SLC, one over Svalbard."""
    items = [s1_item(T0 + timedelta(days=d), str(folder / f"ew{d}.tif")) for d in range(6)]
    items.append(s1_item(T0 + timedelta(days=2, hours=1), str(folder / "iw.tif"), mode="IW", product="GRDH"))
    items.append(s1_item(T0 + timedelta(days=3, hours=1), str(folder / "slc.tif"), product="SLC_"))
    items.append(s1_item(T0 + timedelta(days=4, hours=1), str(folder / "sv.tif"), footprint=SVALBARD))
    return items


def _ids(items) -> list[str]:
    return [i.id for i in items]


def test_search_follows_paging_and_filters(tmp_path, stac_api):
    items = _catalogue(tmp_path)
    stac_api.serve(items)
    ew_greenland = _ids(items[:6])

    everything = search_items(stac_api.url, SearchFilter(), page_size=2)
    assert everything.returned == 9 and everything.pages >= 5  # 9 items, 2 per page: every page followed
    assert _ids(everything.items) == sorted(_ids(items[:7]) + [items[8].id], key=lambda i: i.split("_")[4])
    assert [(i, why) for i, why in everything.rejected] == [(items[7].id, "product type SLC_, not GRD")]

    ew = search_items(stac_api.url, SearchFilter.from_options(mode="ew"), page_size=3)
    assert _ids(ew.items) == sorted(ew_greenland + [items[8].id], key=lambda i: i.split("_")[4])
    assert ("instrument mode IW, not EW" in {why for _, why in ew.rejected})

    greenland = search_items(stac_api.url, SearchFilter.from_options(bbox=(-30, 65, -15, 75), mode="EW"), page_size=2)
    assert _ids(greenland.items) == ew_greenland  # Svalbard left out by the server's bbox search
    since = search_items(stac_api.url, SearchFilter.from_options(bbox=(-30, 65, -15, 75), mode="EW",
                                                                 since="2018-01-13T00:00:00Z"), page_size=2)
    assert _ids(since.items) == ew_greenland[3:]

    region = tmp_path / "scoresby.geojson"
    region.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(shapely.box(15, 77, 16, 78))}]}))
    svalbard = search_items(stac_api.url, SearchFilter.from_options(region=region), page_size=2)
    assert _ids(svalbard.items) == [items[8].id]

    # the CLI: the same search written as an ItemCollection that `polarxr process` reads as an inbox
    out = tmp_path / "found.json"
    run = subprocess.run([POLARXR, "discover", "--stac-api", stac_api.url, "--collection", "sentinel-1-grd",
                          "--bbox", "-30", "65", "-15", "75", "--since", "2018-01-13", "--mode", "EW",
                          "--page-size", "2", "--out", str(out)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, COLUMNS="200"))
    assert run.returncode == 0, run.stdout + run.stderr
    written = pystac.ItemCollection.from_file(str(out))
    assert _ids(written) == ew_greenland[3:]
    assert [i.assets["data"].href for i in written] == [str(tmp_path / f"ew{d}.tif") for d in (3, 4, 5)]
    assert "3 item(s) of sentinel-1-grd in 2 page(s)" in run.stdout
    assert "left out 1 item(s): product type SLC_, not GRD" in run.stdout


def test_bad_options_are_usage_errors(tmp_path, stac_api):
    from typer.testing import CliRunner

    from polarxr.cli.main import app

    region = tmp_path / "r.geojson"
    region.write_text(json.dumps(shapely.geometry.mapping(EAST_GREENLAND)))
    for args, hint in ((["--since", "last tuesday"], "--since"), (["--mode", "XX"], "--mode"),
                       (["--bbox", "10", "80", "20", "70"], "--bbox"),
                       (["--bbox", "-30", "65", "-15", "75", "--region", str(region)], "--region / --bbox")):
        run = CliRunner().invoke(app, ["discover", "--stac-api", "http://127.0.0.1:9", *args],
                                 env={"COLUMNS": "200"})
        assert run.exit_code == 2 and hint in run.output, run.output
    run = CliRunner().invoke(app, ["process", str(tmp_path), "--out", str(tmp_path / "out"), "--checkpoint",
                                   __file__, "--mode", "EW"], env={"COLUMNS": "200"})
    assert run.exit_code == 2 and "--mode filters a STAC API search: it needs --stac-api" in run.output, run.output
    stac_api.serve([])
    with pytest.raises(DiscoveryError, match="has no collection 'sentinel-2-l2a'.*it has: sentinel-1-grd"):
        search_items(stac_api.url, SearchFilter(collection="sentinel-2-l2a"))
    with pytest.raises(DiscoveryError, match=r"/no/such/api: is not a STAC API landing page \(it answered HTTP 404"):
        search_items(stac_api.url + "/no/such/api", SearchFilter())


def test_second_poll_finds_only_new_items(tmp_path, stac_api):
    scenes = tmp_path / "scenes with spaces"
    scenes.mkdir()
    for d in range(5):
        (scenes / f"ew{d}.tif").write_bytes(b"scene")
    first = [s1_item(T0 + timedelta(days=d), str(scenes / f"ew{d}.tif")) for d in range(2)]
    first.append(s1_item(T0 + timedelta(days=2), (scenes / "ew2.tif").as_uri()))  # file://, %20-escaped
    stac_api.serve(first)
    state, search = tmp_path / "state", SearchFilter.from_options(bbox=(-30, 65, -15, 75), mode="EW")

    one = poll(stac_api.url, search, state, page_size=2)
    assert _ids(one.new) == _ids(first) and one.known == 0

    added = [s1_item(T0 + timedelta(days=d), (scenes / f"ew{d}.tif").as_uri()) for d in (3, 4)]
    # the catalogue received two acquisitions, one of them earlier than the last one seen
    added[0] = s1_item(T0 + timedelta(days=1, hours=5), (scenes / "ew3.tif").as_uri())
    stac_api.serve(first + added)
    two = poll(stac_api.url + "/", search, state, page_size=2)  # the same API, spelled with a slash
    assert _ids(two.new) == _ids(added) and two.known == 3
    assert "2 new, 3 seen before" in two.summary()

    three = poll(stac_api.url, search, state, page_size=2)
    assert three.new == [] and three.known == 5

    inbox = pystac.ItemCollection.from_file(str(state / INBOX_NAME))
    hrefs = {i.id: i.assets["data"].href for i in inbox}
    assert len(hrefs) == 5 and all(Path(h).is_file() for h in hrefs.values())
    assert hrefs[first[2].id] == str(scenes / "ew2.tif")  # the file:// URI as the local path
    assert (state / STATE_NAME).is_file()


def test_remote_assets_are_copied_once_under_the_product_name(tmp_path):
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/scene.tif", b"x" * 1000)
    name = "S1A_EW_GRDM_1SDH_20180110T075430_20180110T075530_020177_0226B9_9FE3.tif"
    copy = resolve_scene("memory://bucket/scene.tif", tmp_path / DOWNLOADS_NAME, name)
    assert copy == tmp_path / DOWNLOADS_NAME / name and copy.read_bytes() == b"x" * 1000
    mtime = copy.stat().st_mtime_ns
    assert resolve_scene("memory://bucket/scene.tif", tmp_path / DOWNLOADS_NAME, name).stat().st_mtime_ns == mtime
    assert sorted(p.name for p in copy.parent.iterdir()) == [name]  # no temporary left
    with pytest.raises(DiscoveryError, match="memory://bucket/missing.tif: cannot copy the scene asset: no such"):
        resolve_scene("memory://bucket/missing.tif", tmp_path / DOWNLOADS_NAME)


@pytest.fixture
def s3_server(monkeypatch):
    """A real S3 API server (moto's) on 127.0.0.1; boto / s3fs pointed at it through the environment."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    pytest.importorskip("s3fs", reason="s3fs is in the test extra")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {"AWS_ACCESS_KEY_ID": "polarxr", "AWS_SECRET_ACCESS_KEY": "polarxr-secret",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(key, value)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_s3_assets_are_fetched_once_from_a_real_s3_server(tmp_path, stac_api, s3_server):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("acquisitions")
    items = [s1_item(T0 + timedelta(days=d), f"s3://acquisitions/2018/{d}/measurement.tif") for d in range(2)]
    for d in range(2):
        fs.pipe(f"acquisitions/2018/{d}/measurement.tif", bytes([d]) * (1000 + d))
    items.append(s1_item(T0 + timedelta(days=2), "s3://acquisitions/2018/2/measurement.tif"))  # not uploaded yet
    stac_api.serve(items)
    state = tmp_path / "state"

    first = poll(stac_api.url, SearchFilter(), state)
    assert _ids(first.new) == _ids(items[:2])
    assert first.unresolved == [(items[2].id, "s3://acquisitions/2018/2/measurement.tif: cannot copy the scene "
                                              "asset: no such file or object")]
    copies = [Path(i.assets["data"].href) for i in first.new]
    # named after the product (the pipeline reads the acquisition from the name), beside the state
    assert copies == [state / DOWNLOADS_NAME / f"{i.id}.tif" for i in items[:2]]
    assert [c.read_bytes() for c in copies] == [b"\x00" * 1000, b"\x01" * 1001]

    fs.pipe("acquisitions/2018/2/measurement.tif", b"\x02" * 1002)  # the upload completes
    second = poll(stac_api.url, SearchFilter(), state)
    assert _ids(second.new) == [items[2].id] and second.known == 2 and second.unresolved == []
    assert (state / DOWNLOADS_NAME / f"{items[2].id}.tif").read_bytes() == b"\x02" * 1002
    inbox = pystac.ItemCollection.from_file(str(state / INBOX_NAME))
    assert sorted(Path(i.assets["data"].href).name for i in inbox) == sorted(f"{i.id}.tif" for i in items)


def test_unreachable_api_fails_within_seconds_naming_it(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tic = time.monotonic()
    with pytest.raises(DiscoveryError) as err:
        search_items(url, SearchFilter(), timeout_s=5)
    assert time.monotonic() - tic < 5
    assert str(err.value) == f"{url}: STAC API unreachable (connection refused); check the URL and that the server is running"

    for command in (["discover", "--stac-api", url, "--out", str(tmp_path / "items.json")],
                    ["process", "--stac-api", url, "--out", str(tmp_path / "out"), "--checkpoint", __file__]):
        tic = time.monotonic()
        run = subprocess.run([POLARXR, *command], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, COLUMNS="300"))
        seconds = time.monotonic() - tic
        assert run.returncode == 2 and seconds < 15, (seconds, run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and url in lines[0] and "unreachable" in lines[0], run.stderr
    assert not (tmp_path / "items.json").exists()


def test_an_api_that_does_not_answer_fails_within_seconds(tmp_path):
    with socket.socket() as hung:  # accepts connections (the kernel does) but never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        tic = time.monotonic()
        with pytest.raises(DiscoveryError, match=f"^{url}: STAC API unreachable \\(no answer within 1 s\\)"):
            search_items(url, SearchFilter(), timeout_s=1)
        assert time.monotonic() - tic < 6  # one retry of the read


def _checkpoint(path: Path) -> Path:
    """An untrained tiny U-Net in polarxr's checkpoint format (the model's quality is not tested here)."""
    return untrained_unet(path, ["HH", "HV", "HH-HV"], {"mean": [128.0] * 3, "std": [50.0] * 3})


def _scene_item(scene, href: str) -> pystac.Item:
    with rasterio.open(scene.scene) as src:
        footprint = bounds_footprint(src.bounds, src.crs)
    item = s1_item(scene.start.replace(tzinfo=UTC), href, footprint=footprint)
    item.id = scene.scene.name.split("_Orb")[0]
    return item


@pytest.mark.slow
def test_process_stac_api_processes_new_acquisitions_end_to_end(tmp_path, stac_api, real_scheduler):
    scenes = make_sequence(tmp_path / "archive", n_scenes=3, size=(160, 160), seed=5)
    checkpoint = _checkpoint(tmp_path / "untrained.pt")
    items = [_scene_item(scenes[0], str(scenes[0].scene)), _scene_item(scenes[1], scenes[1].scene.as_uri())]
    stac_api.serve(items)
    out = tmp_path / "out"
    region = tmp_path / "region.geojson"
    east_coast = shapely.box(-35.0, 65.0, -15.0, 76.0)  # where make_sequence puts its coasts
    assert all(shapely.geometry.shape(i.geometry).within(east_coast) for i in items)
    region.write_text(json.dumps(shapely.geometry.mapping(east_coast)))
    command = [POLARXR, "process", "--stac-api", stac_api.url, "--region", str(region), "--mode", "EW",
               "--since", "2018-01-01", "--page-size", "1", "--out", str(out), "--checkpoint", str(checkpoint),
               "--chunk", "128", "--scheduler", real_scheduler]
    env = dict(os.environ, COLUMNS="250")

    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 new, 0 seen before" in run.stdout
    stems = [s.scene.stem for s in scenes]
    with Ledger(out / "ledger.sqlite") as ledger:
        assert {r.scene: r.status for r in ledger.records()} == {stems[0]: "done", stems[1]: "done"}
    with rasterio.open(out / stems[1] / f"{stems[1]}_class.tif") as src:
        assert src.shape == (160, 160) and set(src.read(1).ravel()) <= {0, 1, 2, 255}

    stac_api.serve(items + [_scene_item(scenes[2], scenes[2].scene.as_uri())])  # a new acquisition arrives
    before = (out / stems[0] / f"{stems[0]}_class.tif").stat().st_mtime_ns
    # polled again at each --watch cycle: the first finds the new acquisition, the second nothing
    run = subprocess.run(command + ["--watch", "--interval", "1s", "--max-cycles", "2"], capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.index("1 new, 2 seen before") < run.stdout.index("0 new, 3 seen before")
    with Ledger(out / "ledger.sqlite") as ledger:
        records = {r.scene: r for r in ledger.records()}
    assert {s: r.status for s, r in records.items()} == dict.fromkeys(stems, "done")
    assert records[stems[2]].attempts == 1 and records[stems[0]].attempts == 1
    assert (out / stems[0] / f"{stems[0]}_class.tif").stat().st_mtime_ns == before  # not processed twice
    assert (out / stems[2] / f"{stems[2]}.json").is_file()
