"""Inference throughput of blockwise seamless segmentation of a whole scene on a Dask cluster.

    python benchmarks/predict_bench.py                       # full-size 15564 x 15218 scene, 1 and 2 CPU workers
    python benchmarks/predict_bench.py --size 4096 --workers 1 2
    python benchmarks/predict_bench.py --cluster cuda        # LocalCUDACluster, one worker per GPU

For each worker count it prints megapixels per second of the seamless run, of a run without halo (the
overlap overhead), the efficiency against an ideal single-process whole-tile run measured in this process
(``Mpx/s / (workers x ideal Mpx/s)``), and the peak resident memory of each worker. Throughput does not
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

from common import FULL_SIZE, random_checkpoint, worker_peak_mib


def ideal_mpx_s(checkpoint: Path, scene_path: Path, tile: int, device: str, repeats: int = 3) -> float:
    """Whole-tile throughput of one process with no dask, no I/O, no halo: the ceiling per worker."""
    import rasterio

    from polarxr.predict import normalise, segment_array
    from polarxr.checkpoints import load_checkpoint

    model, meta = load_checkpoint(checkpoint, device=device)
    with rasterio.open(scene_path) as src:
        block = src.read(window=((src.height // 2 - tile // 2, src.height // 2 + tile // 2),
                                 (src.width // 2 - tile // 2, src.width // 2 + tile // 2)))
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
    return repeats * tile * tile / (time.perf_counter() - started) / 1e6


def run(scene: Path, checkpoint: Path, out: Path, client, chunk: int, tile: int, batch: int, seamless: bool) -> float:
    from polarxr.predict import predict_scene

    started = time.perf_counter()
    predict_scene(scene, checkpoint, out, client=client, chunk=chunk, tile=tile, batch_size=batch,
                  seamless=seamless)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=FULL_SIZE, metavar=("ROWS", "COLS"))
    parser.add_argument("--scene", type=Path, help="an existing scene instead of a synthetic one")
    parser.add_argument("--seed", type=int, default=3, help="seed of the synthetic scene")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cluster", choices=["local", "cuda"], default="local")
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=None, help="default: polarxr's per device (512 CPU, 2048 GPU)")
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
        torch.set_num_threads(1)  # a single-threaded worker is the unit the cluster is made of
    ideal = ideal_mpx_s(checkpoint, scene, args.chunk, device)
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    device_name += f", {args.threads} thread(s) per worker, tile {args.tile or 'default'}"

    table = Table(title=f"Blockwise inference of a {opened.sizes['y']} x {opened.sizes['x']} scene "
                        f"({megapixels:.0f} Mpx), chunk {args.chunk}, {device_name}")
    for column in ("workers", "seamless Mpx/s", "no-halo Mpx/s", "overlap overhead", "efficiency vs ideal",
                   "peak RSS per worker"):
        table.add_column(column, justify="right")
    for n in args.workers:
        with get_client(cluster=args.cluster, n_workers=n, threads_per_worker=args.threads) as client:
            seconds = run(scene, checkpoint, workdir / f"pred_{n}.tif", client, args.chunk, args.tile,
                          args.batch_size, seamless=True)
            peaks = worker_peak_mib(client)
            baseline = None if args.no_baseline else run(scene, checkpoint, workdir / f"nohalo_{n}.tif", client,
                                                         args.chunk, args.tile, args.batch_size, seamless=False)
        rate = megapixels / seconds
        table.add_row(
            str(n), f"{rate:.2f}",
            "-" if baseline is None else f"{megapixels / baseline:.2f}",
            "-" if baseline is None else f"{(seconds / baseline - 1) * 100:+.0f}%",
            f"{rate / (n * ideal) * 100:.0f}%",
            ", ".join(f"{p:,.0f} MiB" for p in peaks),
        )
    console.print(table)
    console.print(f"ideal single-process whole-tile run ({args.chunk} x {args.chunk}, in memory, no halo): "
                  f"{ideal:.2f} Mpx/s on {device}")
    first = workdir / f"pred_{args.workers[0]}.tif"
    import rasterio

    with rasterio.open(first) as a, rasterio.open(workdir / f"pred_{args.workers[-1]}.tif") as b:
        same = all(np.array_equal(a.read(1, window=w), b.read(1, window=w)) for _, w in a.block_windows(1))
    console.print(f"class maps of {args.workers[0]} and {args.workers[-1]} workers identical: {same}")


if __name__ == "__main__":
    main()
