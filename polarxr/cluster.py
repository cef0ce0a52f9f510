"""One way to get a ``distributed.Client`` for every command: local, dask-cuda, or an existing scheduler.

- ``cluster="local"``: a :class:`distributed.LocalCluster` of worker *processes* on this machine, one
  single-threaded worker per usable core by default (torch releases the GIL, but one thread per worker
  keeps a model's intra-op threads from oversubscribing the cores).
- ``cluster="cuda"``: a ``dask_cuda.LocalCUDACluster``, one worker per visible GPU (optional extra
  ``polarxr[gpu]``).
- ``scheduler="tcp://host:8786"`` (or ``tls://``): connect to any running Dask scheduler (a plain
  ``dask scheduler``, the Helm chart, dask-kubernetes, dask-jobqueue on SLURM). Every worker must see the
  same data paths as the client (shared filesystem or ``s3://`` through fsspec).

Local clusters listen on 127.0.0.1 only. TLS: pass ``security`` or ``tls_dir`` (see :mod:`polarxr.tls`).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from distributed import Client, LocalCluster
from distributed.security import Security

from polarxr.errors import ClusterError
from polarxr.tls import tls_files

log = logging.getLogger(__name__)

CLUSTER_KINDS = ("local", "cuda")
GPU_EXTRA_HINT = "pip install 'polarxr[gpu]'"
# Seconds to wait for an existing scheduler: ample for a TCP + TLS handshake across a WAN, short
# enough that a typo in the address is reported before the user gives up.
DEFAULT_CONNECT_TIMEOUT = 5.0
LOCAL_DASHBOARD = "127.0.0.1:8787"
#: glibc malloc settings of local workers, set before they spawn. Dask's default (``MALLOC_TRIM_THRESHOLD_``
#: 65536) also switches off glibc's adaptive mmap threshold, so every tensor and block above 128 KiB is a
#: fresh ``mmap`` whose pages fault in and are zeroed on each use, and freed heap goes straight back to the
#: OS: on a CPU worker running a U-Net this was 40-60 % of its time in the kernel (sys). Allocations up to
#: 1 GiB from the heap, and up to 1 GiB of freed heap kept, make a 2048 px tile's forward pass 1.6x faster
#: (``benchmarks/predict_profile.py``). Peak memory is unchanged (the same live arrays); a worker keeps up
#: to 1 GiB freed between tasks. One arena (``MALLOC_ARENA_MAX`` 1): a task runs in the worker's executor
#: thread, whose own glibc arena is built of 64 MiB heaps, so every larger array (a block, an activation)
#: was an ``mmap`` again whatever the threshold; in the main arena the threshold holds. Full-size scene, 1
#: worker: 139.6 -> 118.0 s and peak 1.63 -> 1.38 GiB (``benchmarks/results/writing_cpu.md``). Workers run
#: one thread by default, so the single arena's lock is not contended. A variable set in the environment of
#: the process starting the cluster wins (distributed's nanny takes ``os.environ``'s value of a
#: ``pre-spawn-environ`` key over the configured one).
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": 2**30, "MALLOC_TRIM_THRESHOLD_": 2**30, "MALLOC_ARENA_MAX": 1}


def security_from_dir(tls_dir: str | Path) -> Security:
    """A :class:`Security` requiring TLS, from ``ca.pem``, ``cert.pem`` and ``key.pem`` in ``tls_dir``.

    The one certificate serves as client, scheduler and worker certificate, so the same object works
    for a client, a :class:`LocalCluster` and ``dask scheduler``/``dask worker`` started in Python.
    """
    files = tls_files(tls_dir)
    ca, cert, key = str(files.ca), str(files.cert), str(files.key)
    return Security(
        require_encryption=True,
        tls_ca_file=ca,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
    )


def worker_device() -> str:
    """``"cuda"`` when the calling process (e.g. a Dask worker) has a usable GPU in torch, else ``"cpu"``.

    On a ``LocalCUDACluster`` each worker sees only its own GPU (``CUDA_VISIBLE_DEVICES``), so
    ``"cuda"`` is that worker's GPU.
    """
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_n_workers() -> int:
    """Cores this process may use (CPU affinity / container limits where the OS reports them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def get_client(
    cluster: str = "local",
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | float | int | None = "auto",
    security: Security | None = None,
    tls_dir: str | Path | None = None,
    processes: bool = True,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    on_dashboard: Callable[[str], None] | None = None,
) -> Iterator[Client]:
    """Yield a connected :class:`distributed.Client`; a cluster started here is shut down on exit.

    ``cluster`` is ``"local"`` or ``"cuda"``; with ``scheduler`` (an address such as
    ``tcp://10.0.0.5:8786`` or ``tls://...``) the existing cluster is used as it is and left running.
    ``n_workers`` defaults to the usable cores (local) or the visible GPUs (cuda), ``threads_per_worker``
    to 1; ``memory_limit`` is per worker ("auto" splits the machine's memory).
    ``security`` or ``tls_dir`` (``ca.pem``/``cert.pem``/``key.pem``) turns on TLS. ``timeout`` is the
    seconds allowed to reach an existing scheduler. ``on_dashboard`` receives the dashboard URL (default:
    logged at INFO). Raises :class:`ClusterError` for an unknown kind, an unreachable scheduler, or
    ``cuda`` without dask-cuda or a GPU.
    """
    if security is None and tls_dir is not None:
        security = security_from_dir(tls_dir)
    if cluster not in CLUSTER_KINDS:
        raise ClusterError(None, f"unknown cluster kind {cluster!r}: use one of {', '.join(CLUSTER_KINDS)} "
                                 "or connect to a running scheduler with --scheduler ADDRESS")
    for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
        if value is not None and value < 1:
            raise ClusterError(None, f"{name} must be at least 1, got {value}")

    with ExitStack() as stack:
        if scheduler is not None:
            if cluster == "cuda" or n_workers is not None:
                raise ClusterError(scheduler, "--cluster cuda and --workers size a cluster started on this "
                                              "machine; with --scheduler the existing cluster's workers are used")
            client = _connect(scheduler, security, timeout)
        else:
            local = _start_local(cluster, n_workers, threads_per_worker, memory_limit, security, processes)
            stack.enter_context(local)
            client = Client(local, security=security)
        stack.enter_context(client)
        _cap_gdal_cache(client)
        _announce(client, on_dashboard)
        yield client


def _cap_gdal_cache(client: Client) -> None:
    """Register :class:`~polarxr.gdalcache.GdalCachePlugin` on every worker, present and joining."""
    from polarxr.gdalcache import GdalCachePlugin

    try:
        client.register_plugin(GdalCachePlugin())
    except (OSError, TimeoutError) as err:  # a scheduler going away: the run itself will say so
        log.warning("could not cap GDAL's cache on the workers: %s", err)


def _connect(address: str, security: Security | None, timeout: float) -> Client:
    """Client of the running scheduler at ``address``, or a ClusterError naming it."""
    if security is None:
        # Dask's own configuration (distributed.comm.tls.*, e.g. DASK_DISTRIBUTED__COMM__TLS__CA_FILE)
        security = Security()
    if "://" not in address and security.require_encryption:
        address = "tls://" + address
    if address.startswith("tls://") and not security.tls_ca_file:
        raise ClusterError(address, "the scheduler address is tls:// but no TLS configuration was given: "
                                    "pass --tls-dir DIR holding ca.pem, cert.pem and key.pem")
    try:
        client = Client(address, security=security, timeout=timeout)
    except (OSError, RuntimeError, TimeoutError, ValueError, TypeError) as err:
        raise ClusterError(address, f"cannot connect to the Dask scheduler: {err}. Check that it is running, "
                                    "the host and port, and the TLS settings (--tls-dir)") from None
    n_workers = len(client.nthreads())
    if n_workers == 0:
        log.warning("scheduler %s has no workers yet: tasks wait until workers join", address)
    else:
        log.info("connected to %s with %d workers", address, n_workers)
    return client


def _start_local(
    cluster: str,
    n_workers: int | None,
    threads_per_worker: int | None,
    memory_limit: str | float | int | None,
    security: Security | None,
    processes: bool,
) -> LocalCluster:
    """A LocalCluster (``"local"``) or LocalCUDACluster (``"cuda"``) bound to 127.0.0.1."""
    options = dict(
        threads_per_worker=threads_per_worker or 1,
        memory_limit=memory_limit,
        security=security,
        dashboard_address=LOCAL_DASHBOARD,
    )
    import dask

    # the workers' malloc settings (WORKER_MALLOC) must be in their environment when they spawn
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC}
    # A busy 8787 is normal when a second command runs; distributed then picks a free port, and
    # the link we print shows it, so its warning is noise for our users.
    with warnings.catch_warnings(), dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
        if cluster == "cuda":
            return _start_cuda(n_workers, options)
        try:
            return LocalCluster(
                n_workers=n_workers or default_n_workers(), processes=processes, host="127.0.0.1", **options
            )
        except (OSError, RuntimeError, TimeoutError) as err:
            raise ClusterError(None, f"could not start a local Dask cluster: {err}") from None


def _start_cuda(n_workers: int | None, options: dict) -> LocalCluster:
    """A dask-cuda LocalCUDACluster, one worker per GPU, or a ClusterError saying what is missing."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise ClusterError(None, f"--cluster cuda needs dask-cuda, which is not installed: {GPU_EXTRA_HINT}") from None
    n_gpus, why = visible_gpu_count()
    if n_gpus == 0:
        raise ClusterError(None, f"--cluster cuda: no GPU is visible ({why}); use --cluster local")
    if n_workers is not None and n_workers > n_gpus:
        raise ClusterError(None, f"--cluster cuda runs one worker per GPU: asked for {n_workers} workers, "
                                 f"{n_gpus} GPU(s) visible")
    try:
        import torch

        if not torch.cuda.is_available():
            log.warning("torch %s here has no CUDA support: the workers will run models on the CPU",
                        torch.__version__)
    except ImportError:  # torch is a dependency; only a broken install lands here
        pass
    try:
        return LocalCUDACluster(n_workers=n_workers or n_gpus, ip="127.0.0.1", **options)
    except Exception as err:  # dask-cuda surfaces NVML/CUDA failures as many exception types
        raise ClusterError(None, f"could not start a LocalCUDACluster: {err}") from None


def visible_gpu_count() -> tuple[int, str]:
    """Number of GPUs this process may use, and a short reason when it is zero.

    Honours ``CUDA_VISIBLE_DEVICES`` as dask-cuda does, else asks the NVIDIA driver through NVML.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = [d for d in visible.split(",") if d.strip() and d.strip() != "-1"]
        return len(devices), f"CUDA_VISIBLE_DEVICES={visible!r}"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception as err:  # no driver, no library: NVML raises its own error classes
        return 0, f"the NVIDIA driver could not be queried: {err}"
    return count, "" if count else "the NVIDIA driver reports no GPU"


def _announce(client: Client, on_dashboard: Callable[[str], None] | None) -> None:
    """Pass the dashboard URL to ``on_dashboard`` (or log it); nothing when the scheduler has none."""
    try:
        link = client.dashboard_link
    except (KeyError, AttributeError, OSError):  # scheduler started with --no-dashboard
        link = None
    if not link:
        return
    if on_dashboard is None:
        log.info("Dask dashboard: %s", link)
    else:
        on_dashboard(link)
