"""What ``polarxr process --stac-api`` has seen: one SQLite row per discovered item, beside the run ledger.

A row is keyed by the API's URL, the collection and the item id, and holds the item's acquisition time,
its scene asset's original href, the local path the pipeline reads it from, when it was first seen and
the item's JSON (with the scene asset pointing at that local path). A separate file from the ledger
(``discovery.sqlite``): the ledger records processing, this records discovery, and either can be
deleted on its own (delete this one and every item is "new" once more; the ledger still keeps done
scenes from being processed twice). Like the ledger it must live on a local filesystem.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pystac

from polarxr.errors import PolarxrError
from polarxr.ledger import BUSY_TIMEOUT_S, now_iso

_SCHEMA = """
CREATE TABLE IF NOT EXISTS discovery_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen_items (
    api TEXT NOT NULL,
    collection TEXT NOT NULL,
    item_id TEXT NOT NULL,
    acquired TEXT,
    href TEXT NOT NULL,
    local_path TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    item TEXT NOT NULL,
    PRIMARY KEY (api, collection, item_id)
);
CREATE TABLE IF NOT EXISTS polls (
    api TEXT NOT NULL,
    collection TEXT NOT NULL,
    polled TEXT NOT NULL,
    pages INTEGER,
    found INTEGER,
    new INTEGER
)
"""
SCHEMA_VERSION = 1


class DiscoveryStateError(PolarxrError):
    """A discovery state file that cannot be used (not one, from a newer polarxr, locked)."""


def api_key(url: str) -> str:
    """The URL an API is remembered under (trailing slashes dropped: ``http://h/stac/`` = ``http://h/stac``)."""
    return url.strip().rstrip("/")


class DiscoveryState:
    """The discovery state at ``path`` (created when missing). One instance per thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as err:
            raise DiscoveryStateError(self.path, f"cannot open the discovery state ({err})") from None
        try:
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "discovery_version" not in tables:
                raise DiscoveryStateError(self.path, "is an SQLite database but not polarxr's discovery state "
                                                     f"(tables: {', '.join(sorted(tables))})")
            self._db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            if self._db.execute("SELECT COUNT(*) FROM discovery_version").fetchone()[0] == 0:
                self._db.execute("INSERT INTO discovery_version (version) VALUES (?)", (SCHEMA_VERSION,))
            self._db.execute("COMMIT")
            found = self._db.execute("SELECT MAX(version) FROM discovery_version").fetchone()[0]
        except DiscoveryStateError:
            self._db.close()
            raise
        except sqlite3.Error as err:
            self._db.close()
            raise DiscoveryStateError(self.path, f"cannot use the discovery state ({err}); move it away to start "
                                                 "afresh") from None
        if found > SCHEMA_VERSION:
            self._db.close()
            raise DiscoveryStateError(self.path, f"was written by a newer polarxr (version {found}); upgrade polarxr")

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> DiscoveryState:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def seen_ids(self, url: str, collection: str) -> set[str]:
        """Ids of the items of ``collection`` at ``url`` seen before."""
        rows = self._db.execute("SELECT item_id FROM seen_items WHERE api = ? AND collection = ?",
                                (api_key(url), collection))
        return {r[0] for r in rows}

    def add(self, url: str, collection: str, item: pystac.Item, href: str, local_path: str | Path) -> None:
        """Remember ``item`` (its JSON as given: the scene asset should already point at ``local_path``)."""
        acquired = item.datetime.isoformat() if item.datetime else None
        document = json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False))
        self._db.execute("INSERT OR IGNORE INTO seen_items VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (api_key(url), collection, item.id, acquired, href, str(local_path), now_iso(), document))

    def items(self, url: str, collection: str) -> list[pystac.Item]:
        """Every remembered item of ``collection`` at ``url``, in acquisition order."""
        rows = self._db.execute("SELECT item FROM seen_items WHERE api = ? AND collection = ? "
                                "ORDER BY acquired, item_id", (api_key(url), collection))
        return [pystac.Item.from_dict(json.loads(r[0]), preserve_dict=False) for r in rows]

    def record_poll(self, url: str, collection: str, pages: int, found: int, new: int) -> None:
        """Note one poll: pages fetched, matching items found, new among them."""
        self._db.execute("INSERT INTO polls VALUES (?, ?, ?, ?, ?, ?)",
                         (api_key(url), collection, now_iso(), pages, found, new))
