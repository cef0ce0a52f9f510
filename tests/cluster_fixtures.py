"""A real Dask cluster for tests: one ``dask scheduler`` and two ``dask worker`` processes on localhost.

Started with the venv's ``dask`` CLI exactly as a user would (separate OS processes, 127.0.0.1 only), shared
by the whole test session, and always torn down. The scheduler binds port 0 (the OS picks a free one,
no race with other processes) and publishes its address in a ``--scheduler-file`` that the workers and
the tests read. Fixtures:

- ``real_scheduler``: yields the ``tcp://127.0.0.1:PORT`` address (dashboard on a free local port).
- ``real_tls_scheduler``: yields ``(address, tls_dir)``; ``address`` is ``tls://...`` and ``tls_dir``
  holds ``ca.pem``/``cert.pem``/``key.pem`` from :func:`polarxr.tls.make_certificates`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from distributed import Client

from polarxr.cluster import security_from_dir
from polarxr.tls import make_certificates

DASK = Path(sys.executable).parent / "dask"
N_WORKERS = 2
START_TIMEOUT = 60.0  # seconds; a cold start of 3 interpreters on a loaded 2-core CI box


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now: for tests that need an address where
    no scheduler is (the fixture's scheduler binds port 0 instead)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DaskProcesses:
    """The OS processes of one scheduler and its workers, with their log files."""

    address: str
    log_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")
        # A session of its own lets teardown signal the nanny and the worker process it forks.
        self.procs.append(subprocess.Popen([str(DASK), *args], stdout=log, stderr=subprocess.STDOUT,
                                           env=env, start_new_session=True))
        log.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log")))

    def stop(self) -> None:
        """SIGTERM workers then scheduler (graceful), SIGKILL whatever is left after a few seconds."""
        for proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        # The nanny's worker child shares the group; make sure none outlives the test session.
        for proc in self.procs:
            _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group this fixture created with start_new_session
    except ProcessLookupError:
        pass


def start_dask_cluster(log_dir: Path, tls_dir: Path | None = None, n_workers: int = N_WORKERS) -> DaskProcesses:
    """Start ``dask scheduler`` + ``n_workers`` ``dask worker`` processes; return once all registered."""
    protocol = "tls" if tls_dir else "tcp"
    scheduler_file = log_dir / "scheduler.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    tls_args: list[str] = []
    if tls_dir:
        tls_args = ["--tls-ca-file", str(tls_dir / "ca.pem"), "--tls-cert", str(tls_dir / "cert.pem"),
                    "--tls-key", str(tls_dir / "key.pem")]
        env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
    cluster = DaskProcesses("", log_dir)
    try:
        cluster.spawn("scheduler", ["scheduler", "--protocol", protocol, "--host", "127.0.0.1", "--port", "0",
                                    "--scheduler-file", str(scheduler_file), "--dashboard-address", "127.0.0.1:0",
                                    *tls_args], env)
        cluster.address = _read_address(cluster, scheduler_file)
        for i in range(n_workers):
            cluster.spawn(f"worker{i}", ["worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                                         "--nthreads", "1",
                                         "--no-dashboard", "--memory-limit", "2GiB", "--name", f"w{i}",
                                         "--local-directory", str(log_dir / f"w{i}"), "--death-timeout",
                                         "60", *tls_args], env)
        security = security_from_dir(tls_dir) if tls_dir else None
        _wait_for_workers(cluster, security, n_workers)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _read_address(cluster: DaskProcesses, scheduler_file: Path) -> str:
    """The address the scheduler bound, from its scheduler file (written once it listens)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if cluster.procs[0].poll() is not None:
            raise RuntimeError(f"dask scheduler exited during start-up\n{cluster.logs()}")
        try:
            return json.loads(scheduler_file.read_text())["address"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            time.sleep(0.2)
    raise RuntimeError(f"dask scheduler wrote no {scheduler_file}\n{cluster.logs()}")


def _wait_for_workers(cluster: DaskProcesses, security, n_workers: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        dead = [p.args for p in cluster.procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"dask process exited during start-up: {dead}\n{cluster.logs()}")
        try:
            with Client(cluster.address, security=security, timeout=5, set_as_default=False) as client:
                client.wait_for_workers(n_workers, timeout=max(1.0, deadline - time.monotonic()))
                return
        except (OSError, TimeoutError) as err:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster at {cluster.address} not ready: {err}\n{cluster.logs()}") from err
            time.sleep(0.5)


@pytest.fixture(scope="session")
def real_scheduler(tmp_path_factory):
    """Address (``tcp://127.0.0.1:PORT``) of a real scheduler with two real worker processes."""
    cluster = start_dask_cluster(tmp_path_factory.mktemp("dask-tcp"))
    try:
        yield cluster.address
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def real_tls_scheduler(tmp_path_factory):
    """``(address, tls_dir)`` of a real TLS-only scheduler (``tls://...``) with two real workers."""
    tls_dir = tmp_path_factory.mktemp("dask-tls-certs")
    make_certificates(tls_dir)
    cluster = start_dask_cluster(tmp_path_factory.mktemp("dask-tls"), tls_dir=tls_dir)
    try:
        yield cluster.address, tls_dir
    finally:
        cluster.stop()
