"""The run ledger: one SQLite row per scene recording what unattended processing did with it.

A row holds the scene id (its product name), the input's path, size, mtime and checksum, the status
(``pending`` -> ``running`` -> ``done`` | ``failed``), the number of attempts, the last error, start and
finish times (UTC, ISO 8601), durations, the model version (checkpoint hash and polarxr version) and the
output paths (class COG, probabilities, quicklook, STAC item) with their sizes.

Crash safety: a ``running`` row names its owner (host, pid and the pid's start time, run id) and carries a
heartbeat. When a run starts it resets to ``pending`` every ``running`` row whose owner is gone: a dead or
reused pid on this host, or, for another host, a heartbeat older than the lease. So a killed run never
leaves rows stuck in ``running``, and a live run on the same ledger is never disturbed. Claiming a scene
is one atomic ``UPDATE``, so two runs never process the same scene at once.

The database uses WAL journaling (readers such as ``sqlite3 ledger.sqlite`` or a dashboard do not block the
writer). It must live on a local filesystem: SQLite locking is unreliable over NFS.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import psutil

from polarxr.errors import PolarxrError

#: Version of the table layout below; a ledger with a higher version was written by a newer polarxr.
SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed")
#: Seconds after which a ``running`` row of another host without a heartbeat counts as abandoned.
DEFAULT_LEASE_S = 900.0
#: Seconds SQLite waits for another process's write lock before giving up.
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS scenes (
    scene TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER,
    mtime REAL,
    checksum TEXT,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    message TEXT,
    run_id TEXT,
    host TEXT,
    pid INTEGER,
    pid_started REAL,
    heartbeat REAL,
    discovered TEXT,
    started TEXT,
    finished TEXT,
    seconds REAL,
    predict_seconds REAL,
    model_hash TEXT,
    polarxr_version TEXT,
    class_map TEXT,
    probabilities TEXT,
    quicklook TEXT,
    stac_item TEXT,
    output_sizes TEXT,
    metrics TEXT
);
CREATE INDEX IF NOT EXISTS scenes_status ON scenes (status);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    host TEXT,
    pid INTEGER,
    started TEXT,
    finished TEXT,
    done INTEGER,
    failed INTEGER,
    model_hash TEXT,
    polarxr_version TEXT
);
"""


class LedgerError(PolarxrError):
    """A ledger file that cannot be used (not a ledger, from a newer polarxr, locked)."""


@dataclass(frozen=True)
class SceneRecord:
    """One row of the ledger. Times are ISO 8601 UTC strings; ``seconds`` is wall time of the last attempt."""

    scene: str
    path: str
    size: int | None
    mtime: float | None
    checksum: str | None
    status: str
    attempts: int
    error: str | None
    message: str | None
    run_id: str | None
    host: str | None
    pid: int | None
    pid_started: float | None
    heartbeat: float | None
    discovered: str | None
    started: str | None
    finished: str | None
    seconds: float | None
    predict_seconds: float | None
    model_hash: str | None
    polarxr_version: str | None
    class_map: str | None
    probabilities: str | None
    quicklook: str | None
    stac_item: str | None
    output_sizes: str | None
    metrics: str | None

    def outputs(self) -> dict[str, Path]:
        """The recorded output paths by kind (``class_map``, ``probabilities``, ``quicklook``, ``stac_item``)."""
        kinds = ("class_map", "probabilities", "quicklook", "stac_item")
        from polarxr.io import as_path

        return {k: as_path(getattr(self, k)) for k in kinds if getattr(self, k)}

    def sizes(self) -> dict[str, int]:
        """Byte size of each output when it was recorded (a Zarr store: the sum of its files)."""
        return json.loads(self.output_sizes) if self.output_sizes else {}


_COLUMNS = [f.name for f in fields(SceneRecord)]


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds (``2026-01-16T07:54:30.123+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Owner:
    """Who holds a ``running`` row: host name, pid, the pid's start time (guards against pid reuse), run id."""

    host: str
    pid: int
    pid_started: float
    run_id: str

    @classmethod
    def this_process(cls, run_id: str) -> Owner:
        """The owner identity of the calling process for run ``run_id``."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, psutil.Process(pid).create_time(), run_id)


def _process_alive(pid: int, pid_started: float | None) -> bool:
    """Whether ``pid`` on this host is the same, still running (not zombie) process that started at ``pid_started``."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return pid_started is None or abs(proc.create_time() - pid_started) < 1.0
    except psutil.AccessDenied:  # another user's process that we may not inspect: it exists
        return True
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False


class Ledger:
    """The SQLite run ledger at ``path`` (created with the current schema when missing).

    Raises :class:`LedgerError` when the file is not a polarxr ledger or was written by a newer polarxr.
    One instance per thread (SQLite connections are not shared between threads).
    """

    def __init__(self, path: str | Path, lease_s: float = DEFAULT_LEASE_S, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.lease_s = lease_s
        #: seconds since the epoch, for heartbeats and leases (a test steps its own)
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as err:
            raise LedgerError(self.path, f"cannot open the run ledger: {err}") from None
        self._db.row_factory = sqlite3.Row
        try:
            self._init_schema()
        except sqlite3.OperationalError as err:  # locked, read-only, disk full
            self._db.close()
            raise LedgerError(self.path, f"cannot use the run ledger: {err}") from None
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise LedgerError(self.path, f"is not a polarxr run ledger (SQLite says: {err}); "
                                         "move it away or choose another output folder") from None
        except BaseException:
            self._db.close()
            raise

    # ------------------------------------------------------------------------------------------ setup
    def _init_schema(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "schema_version" not in tables:
            raise LedgerError(self.path, f"is an SQLite database but not a polarxr run ledger (tables: "
                                         f"{', '.join(sorted(tables))}); choose another ledger path")
        if "schema_version" in tables:
            self._check_version()
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._write():
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            if self._db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
                self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        self._check_version()

    def _check_version(self) -> None:
        found = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        if found is not None and found > SCHEMA_VERSION:
            from polarxr import __version__

            raise LedgerError(
                self.path,
                f"was written by a newer polarxr (ledger schema version {found}; polarxr {__version__} reads "
                f"up to version {SCHEMA_VERSION}). Upgrade polarxr, or use another output folder / --ledger",
            )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock up front (no upgrade deadlocks between runs)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise LedgerError(self.path, f"could not lock the run ledger within {BUSY_TIMEOUT_S:g} s ({err}); "
                                         "is another process writing to it?") from None
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """The schema version stored in the file."""
        return int(self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0])

    # ------------------------------------------------------------------------------------------ reading
    def get(self, scene: str) -> SceneRecord | None:
        """The row of ``scene``, or None."""
        row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM scenes WHERE scene = ?", (scene,)).fetchone()
        return SceneRecord(*row) if row else None

    def records(self, status: str | None = None) -> list[SceneRecord]:
        """All rows (or those with ``status``), ordered by scene id (= acquisition order for S1 names)."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM scenes"
        rows = (self._db.execute(query + " WHERE status = ? ORDER BY scene", (status,)) if status
                else self._db.execute(query + " ORDER BY scene"))
        return [SceneRecord(*r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of rows per status (every status present, zero when none)."""
        out = dict.fromkeys(STATUSES, 0)
        for status, n in self._db.execute("SELECT status, COUNT(*) FROM scenes GROUP BY status"):
            out[status] = n
        return out

    # ------------------------------------------------------------------------------------------ writing
    def register(self, scene: str, path: str | Path, size: int, mtime: float) -> str | None:
        """Add ``scene`` as ``pending`` if new; note a moved file; reset a changed input to ``pending``.

        Returns a message when an existing, not running row was reset because the input's size or mtime
        changed (a re-delivered product), else None. A ``running`` row is left alone: its size and mtime
        stay those of the input being processed, so a product re-delivered meanwhile is seen as changed
        (and processed again) once that run has finished.
        """
        path = str(path)
        with self._write() as db:
            row = self.get(scene)
            if row is None:
                db.execute("INSERT INTO scenes (scene, path, size, mtime, status, discovered) VALUES (?, ?, ?, ?, 'pending', ?)",
                           (scene, path, size, mtime, now_iso()))
                return None
            if row.status == "running":
                return None
            changed = row.size != size or row.mtime is None or abs(row.mtime - mtime) > 1e-6
            if changed and row.status in ("done", "failed"):
                message = (f"{scene}: input {path} changed since it was processed (size {row.size} -> {size} B, "
                           f"mtime {row.mtime} -> {mtime}); processing it again")
                db.execute("UPDATE scenes SET path = ?, size = ?, mtime = ?, checksum = NULL, status = 'pending', "
                           "attempts = 0, error = NULL, message = ? WHERE scene = ?", (path, size, mtime, message, scene))
                return message
            if row.path != path or changed:
                db.execute("UPDATE scenes SET path = ?, size = ?, mtime = ? WHERE scene = ?", (path, size, mtime, scene))
        return None

    def recover_stale(self, active_run: str | None = None) -> list[str]:
        """Reset to ``pending`` the ``running`` rows whose owner is gone; return a message per reset row.

        Gone: on this host, a pid that is not running, is a zombie, or was reused by a newer process, or this
        very process under another run id than ``active_run`` (an interrupted earlier cycle); on another
        host, a heartbeat older than the lease.
        """
        host, pid, now = socket.gethostname(), os.getpid(), self.clock()
        messages = []
        with self._write() as db:
            for row in self.records("running"):
                if row.host == host:
                    if row.pid == pid:
                        stale = row.run_id != active_run
                    else:
                        stale = row.pid is None or not _process_alive(row.pid, row.pid_started)
                    why = f"its run (pid {row.pid}) ended without finishing it"
                else:
                    stale = row.heartbeat is None or now - row.heartbeat > self.lease_s
                    why = (f"its run on host {row.host} (pid {row.pid}) sent no heartbeat for more than "
                           f"{self.lease_s:g} s")
                if stale:
                    message = f"{row.scene}: was left 'running' ({why}); reset to pending"
                    db.execute("UPDATE scenes SET status = 'pending', run_id = NULL, pid = NULL, host = NULL, "
                               "pid_started = NULL, heartbeat = NULL, message = ? WHERE scene = ? AND status = 'running'",
                               (message, row.scene))
                    messages.append(message)
        return messages

    def claim(self, scene: str, owner: Owner, model_hash: str, polarxr_version: str, retry_failed: bool = False) -> bool:
        """Atomically mark ``scene`` ``running`` for ``owner`` if it is ``pending`` (or ``failed`` with
        ``retry_failed``); count the attempt. Returns False when it is done, running elsewhere or failed."""
        statuses = ("pending", "failed") if retry_failed else ("pending",)
        marks = ", ".join("?" * len(statuses))
        with self._write() as db:
            cursor = db.execute(
                "UPDATE scenes SET status = 'running', attempts = attempts + 1, error = NULL, run_id = ?, host = ?, "
                "pid = ?, pid_started = ?, heartbeat = ?, started = ?, finished = NULL, seconds = NULL, "
                f"model_hash = ?, polarxr_version = ? WHERE scene = ? AND status IN ({marks})",
                (owner.run_id, owner.host, owner.pid, owner.pid_started, self.clock(), now_iso(), model_hash,
                 polarxr_version, scene, *statuses),
            )
            return cursor.rowcount == 1

    def heartbeat(self, run_id: str) -> int:
        """Refresh the heartbeat of the rows ``run_id`` is running; returns how many."""
        with self._write() as db:
            return db.execute("UPDATE scenes SET heartbeat = ? WHERE run_id = ? AND status = 'running'",
                              (self.clock(), run_id)).rowcount

    def mark_done(
        self,
        scene: str,
        run_id: str,
        outputs: dict[str, str | Path | None],
        output_sizes: dict[str, int],
        seconds: float,
        predict_seconds: float | None = None,
        checksum: str | None = None,
        metrics: dict | None = None,
        message: str | None = None,
    ) -> bool:
        """Record a finished scene with its outputs (keys ``class_map``, ``probabilities``, ``quicklook``,
        ``stac_item``), their byte sizes, wall ``seconds`` and the input's ``checksum`` (sha256).

        Returns False (and changes nothing) when ``run_id`` no longer holds the scene's ``running`` row
        (another run reset it after this run's lease ran out)."""
        paths = {k: (str(outputs[k]) if outputs.get(k) else None) for k in ("class_map", "probabilities", "quicklook", "stac_item")}
        with self._write() as db:
            return db.execute(
                "UPDATE scenes SET status = 'done', error = NULL, message = ?, finished = ?, seconds = ?, "
                "predict_seconds = ?, checksum = COALESCE(?, checksum), class_map = ?, probabilities = ?, "
                "quicklook = ?, stac_item = ?, output_sizes = ?, metrics = ?, pid = NULL, pid_started = NULL, "
                "heartbeat = NULL WHERE scene = ? AND run_id = ? AND status = 'running'",
                (message, now_iso(), seconds, predict_seconds, checksum, paths["class_map"], paths["probabilities"],
                 paths["quicklook"], paths["stac_item"], json.dumps(output_sizes),
                 json.dumps(metrics, default=float) if metrics is not None else None, scene, run_id),
            ).rowcount == 1

    def mark_failed(self, scene: str, run_id: str, error: str, seconds: float | None = None,
                    retry: bool = False) -> bool:
        """Record that the current attempt of ``scene`` failed with ``error`` (kept for the user to read):
        ``failed``, or with ``retry`` back to ``pending`` to be tried again (see :meth:`retry_at`).

        Returns False (and changes nothing) when ``run_id`` no longer holds the scene's ``running`` row."""
        status = "pending" if retry else "failed"
        with self._write() as db:
            return db.execute(
                "UPDATE scenes SET status = ?, error = ?, finished = ?, seconds = ?, pid = NULL, "
                "pid_started = NULL, heartbeat = NULL, run_id = CASE WHEN ? THEN NULL ELSE run_id END "
                "WHERE scene = ? AND run_id = ? AND status = 'running'",
                (status, error, now_iso(), seconds, retry, scene, run_id),
            ).rowcount == 1

    @staticmethod
    def retry_at(record: SceneRecord, backoff_s: float) -> float | None:
        """When (epoch seconds) a ``pending`` row that failed transiently may be tried again: ``backoff_s``
        doubled per attempt after its last failure; None for a row that has not failed."""
        if record.status != "pending" or not record.error or not record.finished or record.attempts < 1:
            return None
        return datetime.fromisoformat(record.finished).timestamp() + backoff_s * 2 ** (record.attempts - 1)

    def reset(self, scene: str, message: str) -> None:
        """Set a ``done`` or ``failed`` row back to ``pending`` (e.g. its outputs are gone), noting why."""
        with self._write() as db:
            db.execute("UPDATE scenes SET status = 'pending', message = ? WHERE scene = ? AND status IN ('done', 'failed')",
                       (message, scene))

    def release(self, run_id: str, message: str) -> int:
        """Set the rows ``run_id`` still holds back to ``pending`` (an interrupted run); returns how many."""
        with self._write() as db:
            return db.execute(
                "UPDATE scenes SET status = 'pending', message = ?, pid = NULL, pid_started = NULL, heartbeat = NULL, "
                "run_id = NULL WHERE run_id = ? AND status = 'running'", (message, run_id)).rowcount

    def start_run(self, owner: Owner, model_hash: str, polarxr_version: str) -> None:
        """Record the start of a run (its id, host, pid, model) in the ``runs`` table."""
        with self._write() as db:
            db.execute("INSERT INTO runs (run_id, host, pid, started, model_hash, polarxr_version) VALUES (?, ?, ?, ?, ?, ?)",
                       (owner.run_id, owner.host, owner.pid, now_iso(), model_hash, polarxr_version))

    def finish_run(self, run_id: str, done: int, failed: int) -> None:
        """Record the end of a run with its counts of scenes done and failed."""
        with self._write() as db:
            db.execute("UPDATE runs SET finished = ?, done = ?, failed = ? WHERE run_id = ?",
                       (now_iso(), done, failed, run_id))
