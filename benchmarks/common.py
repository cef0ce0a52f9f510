"""Pieces shared by the benchmark scripts (each is run as ``python benchmarks/NAME.py``, so this module is
on ``sys.path`` as ``common``)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import cloudpickle

#: Rows and columns of an ExtremeEarth scene (40 m, about 620 km x 610 km of grid).
FULL_SIZE = (15564, 15218)

# Workers cannot import this script-side module: ship its functions (client.run, client.map) by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def worker_environ() -> dict[str, str]:
    """This process's environment with the local workers' malloc settings (:data:`polarxr.cluster.WORKER_MALLOC`),
    for a child process that should allocate as the workers do (glibc reads them at start)."""
    import os

    from polarxr.cluster import WORKER_MALLOC

    return {**os.environ, **{k: str(v) for k, v in WORKER_MALLOC.items()}}


def random_checkpoint(path: Path, bands: list[str], width: int = 16, depth: int = 3, pool: int = 4,
                      refine: int = 0) -> Path:
    """The demo's U-Net (``width``, ``depth``, multi-look ``pool``, ``refine`` channels of full-resolution
    refinement: the demo trains 8) with seeded random weights, saved as a polarxr checkpoint.

    Throughput does not depend on the weights, so benchmarks need no training.
    """
    import torch

    from polarxr.models import build_model
    from polarxr.checkpoints import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    config = {"name": "unet", "in_channels": len(bands), "n_classes": 3, "width": width, "depth": depth, "pool": pool}
    if refine:
        config["refine"] = refine
    net = build_model(config)
    norm = {"mean": [128.0] * len(bands), "std": [60.0] * len(bands)}
    return save_checkpoint(path, make_checkpoint(net.eval(), band_names=bands, norm=norm, patch_size=128))


def peak_mib() -> float:
    """Peak resident memory (MiB) of this process.

    Linux's VmHWM, which starts afresh at ``exec``; ``ru_maxrss`` would carry over the parent's peak into a
    forked child (a benchmark's child process, a Dask worker), overstating small processes.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker_peak_mib(client) -> list[float]:
    """Peak resident memory (MiB) of every worker process since it started or since :func:`reset_worker_peaks`."""
    return sorted(client.run(peak_mib).values())


def _reset_peak() -> bool:
    # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM, and so ru_maxrss) to its current RSS
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def reset_worker_peaks(client) -> bool:
    """Start a new peak-memory window on every worker; False where the OS does not allow it (peaks then
    count from the worker's start)."""
    return all(client.run(_reset_peak).values())


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_cpu_seconds(client) -> float:
    """CPU seconds (user + system) used so far by all worker processes together; differences of two calls
    give the CPU a run used, which with the wall time shows whether workers were busy, idle or starved."""
    return sum(client.run(_cpu_seconds).values())
