"""A real STAC API server on 127.0.0.1 for the tests: ``rustac serve`` (PyPI ``rustac``, in-memory backend).

:class:`StacApiServer` writes a collection and an ItemCollection to a folder and starts the server on
them; :meth:`StacApiServer.serve` restarts it on the same port with other items (the in-memory backend
has no transactions endpoint: a catalogue that received new acquisitions is a server restarted with
them), so the URL that discovery remembers stays the same.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pystac
import pytest

COLLECTION = "sentinel-1-grd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rustac_executable() -> str:
    beside = Path(sys.executable).parent / "rustac"
    found = str(beside) if beside.exists() else shutil.which("rustac")
    if found is None:
        pytest.skip("no STAC API server: the `rustac` command is missing (pip install -e '.[test]' installs it)")
    return found


def collection_document(collection: str = COLLECTION) -> dict:
    return {"type": "Collection", "stac_version": "1.1.0", "id": collection,
            "description": "Sentinel-1 GRD products (test catalogue)", "license": "proprietary",
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
            "links": []}


class StacApiServer:
    """``rustac serve`` on a free 127.0.0.1 port, serving the items last given to :meth:`serve`."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._exe = rustac_executable()

    def serve(self, items: list[pystac.Item], collection: str = COLLECTION, timeout_s: float = 20.0) -> None:
        """(Re)start the server with ``items`` in ``collection``; return when its landing page answers."""
        self.stop()
        (self.folder / "collection.json").write_text(json.dumps(collection_document(collection)))
        features = [dict(i.to_dict(include_self_link=False, transform_hrefs=False), collection=collection)
                    for i in items]
        (self.folder / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        log = open(self.folder / "server.log", "ab")
        self._proc = subprocess.Popen([self._exe, "serve", "--addr", f"127.0.0.1:{self.port}",
                                       str(self.folder / "collection.json"), str(self.folder / "items.json")],
                                      stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"rustac serve exited ({self._proc.returncode}): "
                                   f"{(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/collections/{collection}/items?limit=1", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rustac serve did not answer on {self.url} within {timeout_s:g} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


@pytest.fixture
def stac_api(tmp_path):
    """A :class:`StacApiServer` (not yet serving: call ``serve(items)``), stopped after the test."""
    server = StacApiServer(tmp_path / "stac-api")
    try:
        yield server
    finally:
        server.stop()
