"""Cluster access: local process clusters, real `dask scheduler`/`dask worker` processes, TLS, bad input."""

from __future__ import annotations

import importlib.util
import os
import ssl
import stat
import time

import dask.array as da
import numpy as np
import pytest
from cluster_fixtures import free_port
from cryptography import x509

from polarxr.cluster import default_n_workers, get_client, security_from_dir, visible_gpu_count
from polarxr.errors import ClusterError
from polarxr.tls import make_certificates


def _computation():
    """A small graph with communication between chunks (halo exchange, matmul, reduction); integer
    arithmetic so that any cluster must give exactly the same numbers, whatever its BLAS threads."""
    x = da.random.RandomState(42).randint(0, 256, size=(300, 240), chunks=(70, 50)).astype(np.int64)
    smoothed = x.map_overlap(lambda b: b + np.roll(b, 1, 0) + np.roll(b, -1, 1), depth=1,
                             boundary="reflect", dtype=np.int64)
    return (smoothed @ smoothed.T).sum(axis=1)


@pytest.fixture(scope="module")
def reference():
    """The computation on dask's single-threaded scheduler in this process."""
    return _computation().compute(scheduler="sync")


def _ran_on_workers(client) -> bool:
    """True when tasks execute in the workers' processes, not in this one."""
    worker_pids = set(client.run(os.getpid).values())
    task_pids = set(client.gather(client.map(lambda i: os.getpid(), range(8), pure=False)))
    return bool(task_pids) and task_pids <= worker_pids and os.getpid() not in worker_pids


def test_local_cluster_is_processes_sized_to_the_cores(reference):
    links = []
    with get_client(on_dashboard=links.append) as client:
        nthreads = client.nthreads()
        assert len(nthreads) == default_n_workers() and set(nthreads.values()) == {1}
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in nthreads)  # local only
        assert _ran_on_workers(client)
        np.testing.assert_array_equal(client.compute(_computation()).result(), reference)
    assert client.status == "closed"
    assert len(links) == 1 and links[0].startswith("http://127.0.0.1:")


def test_local_cluster_with_tls(tmp_path, reference):
    make_certificates(tmp_path)
    with get_client(n_workers=1, threads_per_worker=2, tls_dir=tmp_path) as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        assert list(client.nthreads().values()) == [2]
        np.testing.assert_array_equal(client.compute(_computation()).result(), reference)


def test_unreachable_scheduler_is_a_quick_clear_error():
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match="cannot connect to the Dask scheduler") as err:
        with get_client(scheduler=address):
            pass
    assert time.monotonic() - t0 < 10
    assert err.value.path == address and address in str(err.value)


def test_bad_cluster_options():
    with pytest.raises(ClusterError, match="unknown cluster kind 'gpu'"):
        with get_client(cluster="gpu"):
            pass
    with pytest.raises(ClusterError, match="n_workers must be at least 1"):
        with get_client(n_workers=0):
            pass
    for kwargs in (dict(cluster="cuda"), dict(n_workers=2)):
        with pytest.raises(ClusterError, match="with --scheduler the existing cluster's workers are used"):
            with get_client(scheduler="tcp://127.0.0.1:8786", **kwargs):
                pass


def test_tls_dir_without_certificates(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(ClusterError, match="TLS file missing") as err:
        security_from_dir(tmp_path)
    assert err.value.path == str(tmp_path / "cert.pem")


@pytest.mark.skipif(importlib.util.find_spec("dask_cuda") is not None and visible_gpu_count()[0] > 0,
                    reason="a GPU and dask-cuda are present: the cuda cluster would start")
def test_cuda_cluster_without_dask_cuda_or_gpu():
    with pytest.raises(ClusterError) as err:
        with get_client(cluster="cuda"):
            pass
    if importlib.util.find_spec("dask_cuda") is None:
        assert "pip install 'polarxr[gpu]'" in str(err.value)
    else:
        assert "no GPU is visible" in str(err.value)


def test_gpu_count_honours_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpu_count() == (0, "CUDA_VISIBLE_DEVICES=''")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    assert visible_gpu_count()[0] == 2


def test_certificates_are_a_valid_mutual_tls_set(tmp_path):
    files = make_certificates(tmp_path / "tls", hostnames=("scheduler.example", "10.0.0.5"))
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert not list(files.ca.parent.glob(".*"))  # no temporary leftovers
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["scheduler.example"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    # Python's ssl (what Dask uses) accepts the set for both ends of a connection.
    for purpose in (ssl.Purpose.SERVER_AUTH, ssl.Purpose.CLIENT_AUTH):
        ctx = ssl.create_default_context(purpose, cafile=str(files.ca))
        ctx.load_cert_chain(str(files.cert), str(files.key))
    with pytest.raises(ClusterError, match="at least one hostname"):
        make_certificates(tmp_path / "none", hostnames=())


# --- a real `dask scheduler` and two `dask worker` processes (tests/cluster_fixtures.py) -------------


def test_real_scheduler_gives_the_local_result(real_scheduler, reference):
    links = []
    with get_client(scheduler=real_scheduler, on_dashboard=links.append) as client:
        assert len(client.nthreads()) == 2
        assert _ran_on_workers(client)
        np.testing.assert_array_equal(client.compute(_computation()).result(), reference)
    assert links and links[0].startswith("http://127.0.0.1:")
    # the existing cluster is left running for its other users
    with get_client(scheduler=real_scheduler) as client:
        assert len(client.nthreads()) == 2


def test_real_tls_scheduler_gives_the_local_result(real_tls_scheduler, reference):
    address, tls_dir = real_tls_scheduler
    assert address.startswith("tls://")
    with get_client(scheduler=address, tls_dir=tls_dir) as client:
        assert len(client.nthreads()) == 2
        assert all(addr.startswith("tls://") for addr in client.nthreads())
        assert _ran_on_workers(client)
        np.testing.assert_array_equal(client.compute(_computation()).result(), reference)
    # a scheme-less address is taken as tls:// when TLS is configured
    with get_client(scheduler=address.removeprefix("tls://"), tls_dir=tls_dir) as client:
        assert client.scheduler.address == address


def test_real_tls_scheduler_refuses_clients_without_its_certificates(real_tls_scheduler, tmp_path):
    address, _ = real_tls_scheduler
    with pytest.raises(ClusterError, match="no TLS configuration was given") as err:
        with get_client(scheduler=address):
            pass
    assert err.value.path == address
    plain = address.replace("tls://", "tcp://")
    with pytest.raises(ClusterError, match="cannot connect") as err:
        with get_client(scheduler=plain, timeout=3):
            pass
    assert err.value.path == plain
    make_certificates(tmp_path / "other-ca")  # a valid set, but signed by a CA the cluster does not trust
    with pytest.raises(ClusterError, match="cannot connect.*certificate"):
        with get_client(scheduler=address, tls_dir=tmp_path / "other-ca", timeout=3):
            pass


# --- the CLI side: cluster options, `polarxr cluster-info`, `polarxr tls-certs` ----------------------


def test_cluster_info_command_lists_the_real_workers(real_scheduler):
    from typer.testing import CliRunner

    from polarxr.cli.main import app

    result = CliRunner().invoke(app, ["cluster-info", "--scheduler", real_scheduler], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Dask dashboard: http://127.0.0.1:" in result.output
    rows = [line for line in result.output.splitlines() if "tcp://127.0.0.1:" in line and "│" in line]
    assert len(rows) == 2 and all("cpu" in row for row in rows)
    assert {row.split("│")[2].strip() for row in rows} == {"w0", "w1"}


def test_cli_reports_a_cluster_error_in_one_line(monkeypatch, capsys):
    from polarxr.cli.main import main

    address = f"tls://127.0.0.1:{free_port()}"
    monkeypatch.setattr("sys.argv", ["polarxr", "cluster-info", "--scheduler", address])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines to the terminal width
    assert err.startswith(f"error: {address}: the scheduler address is tls:// but no TLS configuration")
    assert "--tls-dir" in err and "Traceback" not in err


def test_tls_certs_command(tmp_path):
    from typer.testing import CliRunner

    from polarxr.cli.main import app

    result = CliRunner().invoke(app, ["tls-certs", str(tmp_path / "tls"), "--host", "scheduler", "--days", "30"])
    assert result.exit_code == 0, result.output
    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "cert.pem").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["scheduler"]
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 31
    assert security_from_dir(tmp_path / "tls").require_encryption
