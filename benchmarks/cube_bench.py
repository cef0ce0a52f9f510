"""Patch extraction throughput: the Zarr training cube build versus the seed's PNG-per-patch loop.

    python benchmarks/cube_bench.py                        # 4096 x 4096 scene, 64 px patches, 1 and 2 workers
    python benchmarks/cube_bench.py --size 2048 --samples-per-label 100 --workers 1,2,4
    python benchmarks/cube_bench.py --full-size            # 15564 x 15218, random 100 and 200 per label, grid
    python benchmarks/cube_bench.py --storage --size 2048  # storage layouts: patches per chunk x compressor

Both methods work on the same synthetic scene and chart, with the same patch size and sampler:

- **seed** (ysbecca/extremeearth-polar, ``sub_image_sample_random.py`` / ``sub_image_sample.py``): read the
  whole scene into memory, then per position label the patch centre by ``polygon.contains(Point)`` over the
  chart's polygons in a Python loop, cut the patch and write it as a PNG (PIL here; the seed uses cv2),
  and save the ``[idx, x, y, label]`` rows to ``meta.npy``. Random mode draws positions until every
  class has its quota; grid mode visits every ``K`` px. (Patches are cut at the labelled position; the
  seed's own code transposes them, which costs the same.)
- **polarxr**: :func:`polarxr.cube.build_cube` into a fresh cube on a ``distributed`` LocalCluster of
  N single-threaded worker processes: rasterizing the chart, choosing the positions and cutting and
  writing the patches, chunk by chunk, in one graph. Cluster start-up is not timed. After each build,
  50 batches of 28 random patches (image + label) are read one by one from the cube, as the DataLoader does.

``--workdir DIR`` keeps the synthetic scene there and reuses it on the next run (a full-size scene takes
about 2 minutes to make).

Prints patches per second per method, the ratio to the seed, the scaling from 1 to N workers, the batch
read time and the load average at the start of each row.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


def seed_sampler(scene_path: Path, chart_path: Path, out_dir: Path, size: int, mode: str, quota: int,
                 max_tries: int, rng_seed: int = 0) -> int:
    """The seed's sampling loop; returns the number of patches written."""
    import rasterio
    from PIL import Image
    from shapely.geometry import Point

    from polarxr.labels import read_chart

    out_dir.mkdir(parents=True, exist_ok=True)
    chart = read_chart(chart_path)
    polygons = list(zip(chart.geometry, chart["poly_type"]))

    def get_label(x: float, y: float) -> str | None:
        point = Point(x, y)
        for polygon, letter in polygons:
            if polygon.contains(point):
                return letter
        return None

    with rasterio.open(scene_path) as src:
        pixels = np.moveaxis(src.read(), 0, -1)  # the whole scene in memory, (rows, cols, bands)
        transform, height, width = src.transform, src.height, src.width
    meta = []

    def keep(row: int, col: int, letter: str) -> None:
        patch = pixels[row:row + size, col:col + size]
        Image.fromarray(patch).save(out_dir / f"{len(meta)}.png")
        meta.append([len(meta), col, row, letter])

    if mode == "random":
        rng = np.random.default_rng(rng_seed)
        counts = {"L": 0, "W": 0, "I": 0}
        tries = 0
        while min(counts.values()) < quota and tries < max_tries:
            tries += 1
            col, row = int(rng.integers(0, width)), int(rng.integers(0, height))
            letter = get_label(*(transform * (col + size // 2, row + size // 2)))
            if letter and counts[letter] < quota and row + size <= height and col + size <= width:
                keep(row, col, letter)
                counts[letter] += 1
    else:
        for col in range(0, width - size + 1, size):
            for row in range(0, height - size + 1, size):
                letter = get_label(*(transform * (col + size // 2, row + size // 2)))
                if letter:
                    keep(row, col, letter)
    np.save(out_dir / "meta.npy", np.array(meta))
    return len(meta)


def cube_build(scene_path: Path, chart_path: Path, cube: Path, size: int, mode: str, quota: int, chunk: int) -> int:
    """polarxr's cube build on the active client; returns the number of patches written."""
    from polarxr.cube import build_cube
    from polarxr.samplers import SamplerConfig

    # the seed has no nodata rule: allow any nodata so that both draw from the same positions
    config = SamplerConfig(mode=mode, patch_size=size, samples_per_label=max(quota, 1), max_nodata=1.0)
    [result] = build_cube([(scene_path, chart_path)], cube, config, chunks=chunk)
    return result.patches


def storage_sweep(scene_path: Path, workdir: Path, size: int, n_patches: int, console: Console) -> None:
    """Cube storage layouts: patches per inner chunk x compressor; write rate, size, random batch reads.

    Patches are real windows of the synthetic scene (image, 3 bands uint8) and its label-like first band;
    each layout writes the same ``n_patches`` into a sharded Zarr v3 array (256 patches per shard) and then
    reads 50 batches of 28 random patches one patch at a time, as the training DataLoader does.
    """
    import os

    import rasterio
    import zarr
    from zarr.codecs import BloscCodec

    with rasterio.open(scene_path) as src:
        pixels = src.read()
    bands, height, width = pixels.shape
    rng = np.random.default_rng(0)
    rows = rng.integers(0, height - size, n_patches)
    cols = rng.integers(0, width - size, n_patches)
    patches = np.stack([pixels[:, r:r + size, c:c + size] for r, c in zip(rows, cols)])
    table = Table(title=f"cube storage: {n_patches} patches of {bands} x {size} x {size} uint8, shards of 256 "
                        f"patches, loadavg {os.getloadavg()[0]:.1f}")
    for column in ("patches / chunk", "compressor", "write patches / s", "MiB", "vs raw", "batch of 28 ms"):
        table.add_column(column, justify="right")
    raw = patches.nbytes
    for per_chunk in (1, 8, 16, 32, 64):
        for name, codec in (("zstd-5 bitshuffle", BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")),
                            ("zstd-1 bitshuffle", BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")),
                            ("zstd-3 bitshuffle", BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")),
                            ("lz4 bitshuffle", BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"))):
            if per_chunk == 1 and name.startswith("zstd-") and not name.startswith("zstd-5"):
                continue
            store = workdir / f"layout-{per_chunk}-{name.split()[0]}.zarr"
            array = zarr.create_array(store, shape=patches.shape, dtype="uint8", chunks=(per_chunk, bands, size, size),
                                      shards=(256, bands, size, size), compressors=codec, overwrite=True)
            started = time.perf_counter()
            for lo in range(0, n_patches, 256):
                array[lo:lo + 256] = patches[lo:lo + 256]
            write_s = time.perf_counter() - started
            mib = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
            reader = zarr.open_array(store, mode="r")
            started = time.perf_counter()
            for _ in range(50):
                for k in rng.integers(0, n_patches, 28):
                    reader[int(k)]
            batch_ms = (time.perf_counter() - started) / 50 * 1000
            table.add_row(str(per_chunk), name, f"{n_patches / write_s:,.0f}", f"{mib:.1f}",
                          f"{mib * 2**20 / raw:.2f}", f"{batch_ms:.1f}")
    console.print(table)


def _scene(folder: Path, seed: int, size: tuple[int, int], make_scene):
    """The synthetic scene in ``folder``: reused when a previous run (same ``--workdir``) left it there."""
    from types import SimpleNamespace

    import rasterio

    scenes, charts = sorted(folder.glob("*.tif")), sorted(folder.glob("seaice_s1_*.shp"))
    if len(scenes) == 1 and len(charts) == 1:
        with rasterio.open(scenes[0]) as src:
            if (src.height, src.width) == size:
                return SimpleNamespace(scene=scenes[0], chart=charts[0])
    return make_scene(folder, seed=seed, size=size)


def batch_read_ms(cube: Path, batches: int = 50, batch: int = 28) -> float:
    """Milliseconds to read a batch of ``batch`` random patches one by one (as the training DataLoader)."""
    import zarr

    image, label = zarr.open_array(cube / "image", mode="r"), zarr.open_array(cube / "label", mode="r")
    n = int(zarr.open_group(cube, mode="r").attrs["n_patches"])
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(batches):
        for k in rng.integers(0, n, batch):
            image[int(k)]
            label[int(k)]
    return (time.perf_counter() - started) / batches * 1000


def timed(func, *args) -> tuple[int, float]:
    started = time.perf_counter()
    n = func(*args)
    return n, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs="+", default=[4096], metavar="ROWS [COLS]",
                        help="rows (and columns) of the synthetic scene")
    parser.add_argument("--full-size", action="store_true",
                        help="a 15564 x 15218 scene at the seed's defaults: random 100 and 200 per label, grid "
                             "stride 64, chunk 2048")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--samples-per-label", default="200", help="random mode quotas per class, e.g. 100,200")
    parser.add_argument("--max-tries", type=int, default=200_000, help="the seed's random-mode timeout")
    parser.add_argument("--chunk", type=int, default=1024, help="chunk edge (px) of the cube build")
    parser.add_argument("--workers", default="1,2", help="worker counts of the LocalCluster runs")
    parser.add_argument("--modes", default="random,grid")
    parser.add_argument("--scene-seed", type=int, default=5, help="seed of the synthetic scene")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--storage", action="store_true", help="only the storage layout sweep")
    parser.add_argument("--storage-patches", type=int, default=4096)
    args = parser.parse_args()
    if args.full_size:
        args.size, args.samples_per_label, args.chunk, args.modes = [15564, 15218], "100,200", 2048, "random,grid"

    import os

    from polarxr.cluster import get_client
    from polarxr.synthetic import make_scene

    console = Console()
    rows_cols = (args.size[0], args.size[-1])
    shape = f"{rows_cols[0]} x {rows_cols[1]}"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="polarxr-cube-bench-"))
    started = time.perf_counter()
    made = _scene(workdir / "scene", args.scene_seed, rows_cols, make_scene)
    console.print(f"synthetic {shape} scene ready in {time.perf_counter() - started:.1f} s ({made.scene})")
    if args.storage:
        storage_sweep(made.scene, workdir, args.patch_size, args.storage_patches, console)
        return
    runs = [(mode, int(q)) for mode in args.modes.split(",")
            for q in (args.samples_per_label.split(",") if mode == "random" else ["0"])]
    workers = [int(w) for w in args.workers.split(",")]
    rows: dict[tuple, list] = {run: [] for run in runs}
    for mode, quota in runs:
        load = os.getloadavg()[0]
        n, seconds = timed(seed_sampler, made.scene, made.chart, workdir / f"seed-{mode}-{quota}", args.patch_size,
                           mode, quota, args.max_tries)
        shutil.rmtree(workdir / f"seed-{mode}-{quota}", ignore_errors=True)
        rows[mode, quota].append(("seed: PNG per patch, point-in-polygon", "1 process", n, seconds, None, load))
    for n_workers in workers:
        with get_client(n_workers=n_workers, threads_per_worker=1):
            for mode, quota in runs:
                cube = workdir / f"cube-{mode}-{quota}-{n_workers}.zarr"
                load = os.getloadavg()[0]
                n, seconds = timed(cube_build, made.scene, made.chart, cube, args.patch_size, mode, quota, args.chunk)
                rows[mode, quota].append(("polarxr: Zarr cube, one graph", f"{n_workers} worker(s)", n, seconds,
                                          batch_read_ms(cube), load))
                shutil.rmtree(cube, ignore_errors=True)
    for mode, quota in runs:
        table = Table(title=f"{mode} sampler, {args.patch_size} px patches, {shape} scene"
                            + (f", quota {quota} per class" if mode == "random" else f", stride {args.patch_size}")
                            + f", chunk {args.chunk}")
        for column in ("method", "compute", "patches", "seconds", "patches / s", "vs seed", "vs 1 worker",
                       "batch of 28 ms", "loadavg"):
            table.add_column(column, justify="left" if column in ("method", "compute") else "right")
        seed_rate = rows[mode, quota][0][2] / rows[mode, quota][0][3]
        one_worker = next((r[2] / r[3] for r in rows[mode, quota][1:] if r[1].startswith("1 ")), None)
        for method, compute, n, seconds, batch_ms, load in rows[mode, quota]:
            rate = n / seconds
            scaling = f"{rate / one_worker:.2f}x" if one_worker and method.startswith("polarxr") else ""
            table.add_row(method, compute, str(n), f"{seconds:.2f}", f"{rate:,.0f}", f"{rate / seed_rate:.1f}x", scaling,
                          "" if batch_ms is None else f"{batch_ms:.1f}", f"{load:.1f}")
        console.print(table)
    console.print(f"loadavg (1, 5, 15 min): {', '.join(f'{v:.1f}' for v in os.getloadavg())} (a shared machine)")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
