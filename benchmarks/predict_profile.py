"""Where a CPU worker's time goes in ``polarxr predict``: the same graphs, one process, one thread, profiled.

    python benchmarks/predict_profile.py --size 4096 4096
    python benchmarks/predict_profile.py --size 4096 4096 --top 40 --sort tottime

Builds ``predict``'s two stages for one scene exactly as :func:`polarxr.predict._run_locked` does (stage 1:
one task per block reads the scene, assembles the halo, runs the model, writes the block's probabilities and
staged class band; stage 2: the COG from the staged band) and computes them with dask's synchronous scheduler
in this process under cProfile, with torch on one thread (as a worker). Prints wall seconds per stage, a
breakdown of stage 1 by activity (grouped from the profile's cumulative times of the functions that do each
thing), the model kernel's own rate, and the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from common import random_checkpoint



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(4096, 4096), metavar=("ROWS", "COLS"))
    parser.add_argument("--scene", type=Path)
    parser.add_argument("--chunk", type=int, default=None)
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--no-halo", action="store_true")
    parser.add_argument("--no-probabilities", action="store_true")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint instead of the random-weight U-Net")
    parser.add_argument("--refine", type=int, default=0,
                        help="full-resolution refinement channels of the random U-Net (the demo trains 8)")
    args = parser.parse_args()

    import dask

    from polarxr.gdalcache import GDAL_CACHE_MB
    from polarxr.io import output_lock
    from polarxr.predict import DEFAULT_CHUNK, _plan_scene, probabilities
    from polarxr.scenes import ensure_not_empty, open_scene

    console = Console(width=160)
    torch.set_num_threads(1)
    from rasterio.env import set_gdal_config

    set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_MB * 2**20)  # as on a worker (GdalCachePlugin)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="polarxr-predict-profile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    scene_path = args.scene
    if scene_path is None:
        from polarxr.synthetic import make_scene

        cached = workdir / "scene"
        scene_path = make_scene(cached, seed=3, size=tuple(args.size)).scene
    opened = open_scene(scene_path)
    megapixels = opened.sizes["y"] * opened.sizes["x"] / 1e6
    checkpoint = args.checkpoint or random_checkpoint(workdir / "unet.pt", [str(b) for b in opened.band.values],
                                                      refine=args.refine)
    chunk = args.chunk or DEFAULT_CHUNK
    tags = {"polarxr_version": "profile", "checkpoint": checkpoint.name, "model_version": "x"}
    out_tif = workdir / "class.tif"
    out_zarr = None if args.no_probabilities else workdir / "prob.zarr"

    def build():
        scene = open_scene(scene_path, chunks={"band": -1, "y": chunk, "x": chunk})
        ensure_not_empty(scene)
        encoded = probabilities(scene, checkpoint, chunk=chunk, tile=args.tile, seamless=not args.no_halo,
                                encode=True).data
        return _plan_scene(scene, encoded, out_tif, out_zarr, tags, chunk)

    # warm-up on the same graph (model load, GDAL open, allocator), not profiled
    with output_lock([out_tif, out_zarr]):
        plan = build()
        dask.compute(*plan.markers[:1], scheduler="synchronous")
        plan.outputs.__exit__(RuntimeError, RuntimeError("warm-up"), None)

    profile = cProfile.Profile()
    with output_lock([out_tif, out_zarr]):
        started = time.perf_counter()
        plan = build()
        planned = time.perf_counter()
        profile.enable()
        dask.compute(*plan.markers, scheduler="synchronous")
        stage1 = time.perf_counter()
        profile.disable()
        stage1_stats = pstats.Stats(profile)
        profile2 = cProfile.Profile()
        profile2.enable()
        dask.compute(plan.cog, scheduler="synchronous")
        profile2.disable()
        stage2 = time.perf_counter()
        plan.outputs.close()
        committed = time.perf_counter()

    def cumulative(stats: pstats.Stats, file_part: str, func: str) -> float:
        total = 0.0
        for (filename, _, name), (_, _, _, ct, _) in stats.stats.items():
            if file_part in filename and name == func:
                total = max(total, ct)  # recursive entries: the outermost
        return total

    s1 = stage1 - planned
    table = Table(title=f"predict, one process, 1 thread, {opened.sizes['y']} x {opened.sizes['x']} "
                        f"({megapixels:.1f} Mpx), chunk {chunk}, {'no halo' if args.no_halo else 'seamless'}")
    table.add_column("part")
    table.add_column("s", justify="right")
    table.add_column("s / Mpx", justify="right")
    table.add_column("share", justify="right")
    forward = cumulative(stage1_stats, "polarxr/predict.py", "_forward")
    segment = cumulative(stage1_stats, "polarxr/predict.py", "_segment_tiles")
    kernel_rows = [
        ("model forward (U-Net)", cumulative(stage1_stats, "torch/nn/modules/module.py", "_wrapped_call_impl")
         or cumulative(stage1_stats, "torch/nn/modules/module.py", "_call_impl")),
        ("softmax + uint8 encoding", cumulative(stage1_stats, "polarxr/predict.py", "_device_encode")
         + cumulative(stage1_stats, "torch/functional.py", "softmax")),
    ]
    rows = [
        ("plan (client: graph, metadata)", planned - started),
        *kernel_rows,
        ("_forward total", forward),
        ("tile windows + crops (_segment_tiles - _forward)", segment - forward),
        ("normalise (scale, valid mask)", cumulative(stage1_stats, "polarxr/patches.py", "normalise")),
        ("_probabilities_block total", cumulative(stage1_stats, "polarxr/predict.py", "_probabilities_block")),
        ("read GeoTIFF (rasterio read)", cumulative(stage1_stats, "rasterio", "read")),
        ("halo assembly (concatenate3)", cumulative(stage1_stats, "dask/array/core.py", "concatenate3")),
        ("_store_block (Zarr writes)", cumulative(stage1_stats, "polarxr/predict.py", "_store_block")),
        ("stage 1 wall", s1),
        ("stage 2 wall (COG from staged band)", stage2 - stage1),
        ("commit (renames)", committed - stage2),
    ]
    for name, seconds in rows:
        table.add_row(name, f"{seconds:.2f}", f"{seconds / megapixels:.3f}", f"{seconds / s1 * 100:.0f}%")
    console.print(table)
    total = committed - planned
    console.print(f"stage 1 + 2 + commit: {total:.2f} s = {megapixels / total:.2f} Mpx/s; "
                  f"model forward alone: {megapixels / max(kernel_rows[0][1], 1e-9):.2f} Mpx/s of scene")
    console.print("[b]stage 1 top functions[/b]")
    stage1_stats.sort_stats(args.sort).print_stats(args.top)
    console.print("[b]stage 2 top functions[/b]")
    pstats.Stats(profile2).sort_stats(args.sort).print_stats(args.top // 2)


if __name__ == "__main__":
    main()
