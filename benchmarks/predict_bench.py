"""Inference throughput of blockwise seamless segmentation of a whole scene on a Dask cluster.

    python benchmarks/predict_bench.py                       # full-size 15564 x 15218 scene, 1 and 2 CPU workers
    python benchmarks/predict_bench.py --size 4096 --workers 1 2
    python benchmarks/predict_bench.py --cluster cuda        # LocalCUDACluster, one worker per GPU

For each worker count it prints megapixels per second of the seamless run, of a run without halo (the
overlap overhead), the efficiency against an ideal single-process whole-tile run measured in this process
(``Mpx/s / (workers x ideal Mpx/s)``), the CPU seconds of the client beside those of the workers, and the
peak resident memory of each worker. Both runs are timed warm (a small scene is segmented first in both modes);
outputs (class COG and probability Zarr, written by the workers) of two different worker counts are compared. Throughput does not
depend on the weights, so the model is the demo's U-Net (width 16, depth 3, pool 4) with seeded random weights
unless ``--checkpoint`` is given.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from common import (FULL_SIZE, random_checkpoint, reset_worker_peaks, worker_cpu_seconds, worker_environ,
                    worker_peak_mib)


def client_cpu_seconds() -> float:
    """CPU seconds of this (the client's) process so far; local workers are other processes."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ideal_mpx_s(checkpoint: Path, scene_path: Path, tile: int, device: str, repeats: int = 3) -> float:
    """Whole-tile throughput of one process with no dask, no I/O, no halo: the ceiling per worker."""
    import rasterio

    from polarxr.predict import normalise, segment_array
    from polarxr.checkpoints import load_checkpoint

    model, meta = load_checkpoint(checkpoint, device=device)
    with rasterio.open(scene_path) as src:
        y0, x0 = max(0, src.height // 2 - tile // 2), max(0, src.width // 2 - tile // 2)
        block = src.read(window=((y0, min(src.height, y0 + tile)), (x0, min(src.width, x0 + tile))))
        nodata = src.nodata
    image, _ = normalise(block, meta, nodata)
    segment_array(model, image, model.pad_multiple, device)  # warm-up (allocator, cuDNN autotune)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        segment_array(model, image, model.pad_multiple, device)
    if device == "cuda":
        torch.cuda.synchronize()
    return repeats * image.shape[-2] * image.shape[-1] / (time.perf_counter() - started) / 1e6  # a small scene clips the tile


_IDEAL_CHILD = """
import sys, torch
from pathlib import Path
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(int(sys.argv[6]))
from predict_bench import ideal_mpx_s
print("@@", ideal_mpx_s(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]))
"""


def ideal_like_workers(checkpoint: Path, scene_path: Path, tile: int, device: str, threads: int) -> float:
    """:func:`ideal_mpx_s` in a fresh process with the local workers' environment (their malloc settings,
    :data:`polarxr.cluster.WORKER_MALLOC`, and ``threads`` torch threads): like with like."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _IDEAL_CHILD, str(Path(__file__).parent), str(checkpoint),
                           str(scene_path), str(tile), device, str(threads)], env=worker_environ(), capture_output=True,
                          text=True, check=True)
    return float(done.stdout.rsplit("@@", 1)[1])


def run(scene: Path, checkpoint: Path, out: Path, client, chunk: int, tile: int, batch: int, seamless: bool
        ) -> tuple[float, float, float]:
    """Wall seconds, client CPU seconds and workers' CPU seconds of one ``predict_scene`` (COG + Zarr)."""
    from polarxr.predict import predict_scene

    cpu_client, cpu_workers = client_cpu_seconds(), worker_cpu_seconds(client)
    started = time.perf_counter()
    predict_scene(scene, checkpoint, out, probabilities=out.with_suffix(".zarr"), client=client, chunk=chunk,
                  tile=tile, batch_size=batch, seamless=seamless)
    return (time.perf_counter() - started, client_cpu_seconds() - cpu_client,
            worker_cpu_seconds(client) - cpu_workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=FULL_SIZE, metavar=("ROWS", "COLS"))
    parser.add_argument("--scene", type=Path, help="an existing scene instead of a synthetic one")
    parser.add_argument("--seed", type=int, default=3, help="seed of the synthetic scene")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cluster", choices=["local", "cuda"], default="local")
    parser.add_argument("--chunk", type=int, default=None, help="default: polarxr's per device (2048 CPU, 6144 GPU)")
    parser.add_argument("--ideal-tile", type=int, default=2048,
                        help="edge of the in-memory tile of the ideal run (the issue's reference: 2048)")
    parser.add_argument("--tile", type=int, default=None,
                        help="default: polarxr's per device (512 CPU, 2048 GPU; x the U-Net's pool)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: polarxr's per device (1 CPU, 4 GPU)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (GPU workers overlap I/O)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-halo runs")
    args = parser.parse_args()

    from polarxr.cluster import get_client

    console = Console()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="polarxr-predict-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    scene = args.scene
    if scene is None:
        from polarxr.synthetic import make_scene

        started = time.perf_counter()
        scene = make_scene(workdir / "scene", seed=args.seed, size=tuple(args.size)).scene
        console.print(f"synthetic {args.size[0]} x {args.size[1]} scene made in {time.perf_counter() - started:.0f} s")
    from polarxr.scenes import open_scene

    opened = open_scene(scene)
    megapixels = opened.sizes["y"] * opened.sizes["x"] / 1e6
    checkpoint = args.checkpoint or random_checkpoint(workdir / "unet.pt", [str(b) for b in opened.band.values])
    device = "cuda" if args.cluster == "cuda" else "cpu"
    if device == "cpu":
        # like with like: the ideal runs with one worker's threads; n workers are compared with n x it
        torch.set_num_threads(args.threads)
    from polarxr.predict import DEFAULT_CHUNKS

    chunk = args.chunk or DEFAULT_CHUNKS[device]
    # the ceiling per worker: the faster of this process (default malloc) and a process set up as the workers
    ideal_here = ideal_mpx_s(checkpoint, scene, args.ideal_tile, device)
    ideal_workers_env = ideal_like_workers(checkpoint, scene, args.ideal_tile, device, args.threads)
    ideal = max(ideal_here, ideal_workers_env)
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    device_name += f", {args.threads} thread(s) per worker, tile {args.tile or 'default'}"

    table = Table(title=f"Blockwise inference of a {opened.sizes['y']} x {opened.sizes['x']} scene "
                        f"({megapixels:.0f} Mpx), chunk {chunk}, {device_name}")
    for column in ("workers", "seamless Mpx/s", "no-halo Mpx/s", "overlap overhead", "efficiency vs ideal",
                   "client CPU s", "workers CPU s", "client / workers", "peak RSS per worker"):
        table.add_column(column, justify="right")
    # warm-up scene of 2 x 2 blocks (of at most 1024 px: quick), so that every worker loads the model and
    # GDAL and runs both modes before anything is timed
    from polarxr.synthetic import make_scene

    warm_chunk = min(chunk, 1024)
    warm = make_scene(workdir / "warm", seed=99, size=(2 * warm_chunk, 2 * warm_chunk)).scene
    for n in args.workers:
        with get_client(cluster=args.cluster, n_workers=n, threads_per_worker=args.threads) as client:
            modes = [True] if args.no_baseline else [True, False]
            for seamless in modes:  # both runs are timed warm
                run(warm, checkpoint, workdir / f"warm_{n}_{seamless}.tif", client, warm_chunk, args.tile,
                    args.batch_size, seamless)
            reset_worker_peaks(client)
            seconds, cpu_client, cpu_workers = run(scene, checkpoint, workdir / f"pred_{n}.tif", client, chunk,
                                                   args.tile, args.batch_size, seamless=True)
            peaks = worker_peak_mib(client)
            baseline = None if args.no_baseline else run(scene, checkpoint, workdir / f"nohalo_{n}.tif", client,
                                                         chunk, args.tile, args.batch_size, seamless=False)[0]
        rate = megapixels / seconds
        table.add_row(
            str(n), f"{rate:.2f}",
            "-" if baseline is None else f"{megapixels / baseline:.2f}",
            "-" if baseline is None else f"{(seconds / baseline - 1) * 100:+.0f}%",
            f"{rate / (n * ideal) * 100:.0f}%",
            f"{cpu_client:.1f}", f"{cpu_workers:.1f}", f"{cpu_client / max(cpu_workers, 1e-9) * 100:.1f}%",
            ", ".join(f"{p:,.0f} MiB" for p in peaks),
        )
    import os

    console.print(table)
    console.print(f"loadavg (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} "
                  f"(a shared machine: compare ratios within this run)")
    console.print(f"ideal single-process whole-tile run ({args.ideal_tile} x {args.ideal_tile}, in memory, no halo, "
                  f"{args.threads} thread(s)): {ideal:.2f} Mpx/s on {device} (the faster of {ideal_here:.2f} in this "
                  f"process and {ideal_workers_env:.2f} in one with the workers' malloc settings)")
    counts = sorted(set(args.workers))
    if len(counts) < 2:
        console.print("identical across worker counts: not checked (give two different --workers counts)")
        return
    import rasterio
    import zarr

    with rasterio.open(workdir / f"pred_{counts[0]}.tif") as a, rasterio.open(workdir / f"pred_{counts[-1]}.tif") as b:
        same = all(np.array_equal(a.read(1, window=w), b.read(1, window=w)) for _, w in a.block_windows(1))
    pa = zarr.open_array(workdir / f"pred_{counts[0]}.zarr" / "probability", mode="r")
    pb = zarr.open_array(workdir / f"pred_{counts[-1]}.zarr" / "probability", mode="r")
    step = pa.chunks[1]
    same_p = all(np.array_equal(pa[:, y:y + step], pb[:, y:y + step]) for y in range(0, pa.shape[1], step))
    console.print(f"{counts[0]} vs {counts[-1]} workers: class maps identical: {same}; probabilities identical: {same_p}")


if __name__ == "__main__":
    main()
