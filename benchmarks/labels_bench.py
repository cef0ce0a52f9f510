"""Labelling throughput and memory: chunk-aligned rasterization versus the seed's point-in-polygon loop.

    python benchmarks/labels_bench.py                 # 4096 x 4096 synthetic scene + full-size memory run
    python benchmarks/labels_bench.py --size 2048 --no-full

Prints a table of pixels per second for both methods and their ratio (same scene, same chart, same
process), and the peak resident memory of labelling a full-size 15564 x 15218 scene written to a COG
(measured in a fresh child process), against the size of the scene and of one chunk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from common import FULL_SIZE, peak_mib


def seed_labels(chart, transform, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The seed's labelling: for each position, ``polygon.contains(Point(x, y))`` over the chart's polygons."""
    from shapely.geometry import Point

    from polarxr.classes import NO_LABEL

    polygons = list(zip(chart.geometry, chart["class_code"]))
    out = np.full(len(rows), NO_LABEL, dtype=np.uint8)
    for k, (row, col) in enumerate(zip(rows, cols)):
        x, y = transform * (col + 0.5, row + 0.5)
        point = Point(x, y)
        for polygon, code in polygons:
            if polygon.contains(point):
                out[k] = code
                break
    return out


def throughput(scene_path: Path, chart_path: Path, seed_positions: int) -> dict:
    """Pixels per second of both methods on one scene (chunked run through the dask threaded scheduler)."""
    import dask

    from polarxr.labels import labels_for_scene, read_chart

    scene, labels = labels_for_scene(scene_path, chart_path)
    started = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        values = labels.values
    chunked_s = time.perf_counter() - started
    chart = read_chart(chart_path, crs=scene.rio.crs)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, scene.sizes["y"], seed_positions)
    cols = rng.integers(0, scene.sizes["x"], seed_positions)
    started = time.perf_counter()
    seed = seed_labels(chart, scene.rio.transform(), rows, cols)
    seed_s = time.perf_counter() - started
    labelled = values[rows, cols] != 255
    agreement = float((seed[labelled] == values[rows, cols][labelled]).mean())
    return {
        "pixels": int(values.size),
        "chunked_px_s": values.size / chunked_s,
        "seed_px_s": seed_positions / seed_s,
        "agreement": agreement,
        "polygons": len(chart),
    }


def child_full_size(scene_path: str, chart_path: str, out: str, chunk: int) -> None:
    """Run in a fresh process: label a full-size scene into a COG; print peak RSS as JSON."""
    import dask

    from polarxr.io import write_cog
    from polarxr.labels import labels_for_scene

    started = time.perf_counter()
    scene, labels = labels_for_scene(scene_path, chart_path, chunks=chunk)
    baseline_mib = peak_mib()  # libraries, graph, chart
    with dask.config.set(scheduler="threads", num_workers=2):
        write_cog(labels, out, nodata=255, categorical=True)
    seconds = time.perf_counter() - started
    peak = peak_mib()
    scene_mib = scene.size * scene.dtype.itemsize / 2**20
    chunk_mib = scene.sizes["band"] * chunk * chunk * scene.dtype.itemsize / 2**20
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "baseline_mib": baseline_mib, "scene_mib": scene_mib, "chunk_mib": chunk_mib,
                      "pixels": int(labels.size)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="edge (px) of the throughput scene")
    parser.add_argument("--seed-positions", type=int, default=20000, help="positions labelled by the seed's loop")
    parser.add_argument("--no-full", action="store_true", help="skip the full-size memory run")
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", nargs=3, metavar=("SCENE", "CHART", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_full_size(*args.child, chunk=args.chunk)
        return

    from polarxr.synthetic import make_scene

    console = Console()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="polarxr-labels-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    made = make_scene(workdir / "small", seed=1, size=(args.size, args.size))
    result = throughput(made.scene, made.chart, args.seed_positions)
    table = Table(title=f"Labelling a {args.size} x {args.size} synthetic scene ({result['polygons']} chart polygons)")
    for column in ("method", "pixels / s", "ratio"):
        table.add_column(column, justify="right")
    table.add_row("seed: polygon.contains(Point) loop", f"{result['seed_px_s']:,.0f}", "1.0")
    table.add_row("polarxr: chunk-aligned rasterize", f"{result['chunked_px_s']:,.0f}",
                  f"{result['chunked_px_s'] / result['seed_px_s']:,.0f}x")
    console.print(table)
    console.print(f"agreement of the two methods on the sampled labelled positions: {result['agreement']:.4f}")

    runs = [("throughput scene", made)]
    if not args.no_full:
        started = time.perf_counter()
        runs.append(("full-size scene", make_scene(workdir / "full", seed=2, size=FULL_SIZE)))
        console.print(f"full-size synthetic scene generated in {time.perf_counter() - started:.0f} s")
    table = Table(title="Peak memory of labelling a scene into a COG (fresh process, 2 threads, GDAL cache 128 MB)")
    for column in ("scene", "scene in memory", "one chunk", "RSS before compute", "peak RSS", "time", "Mpx / s"):
        table.add_column(column, justify="right")
    for name, scene in runs:
        child = subprocess.run(
            [sys.executable, __file__, "--chunk", str(args.chunk), "--child", str(scene.scene), str(scene.chart),
             str(workdir / f"{scene.scene.stem}_labels.tif")],
            check=True, capture_output=True, text=True,
        )
        stats = json.loads(child.stdout.strip().splitlines()[-1])
        table.add_row(f"{name} {scene.shape[0]} x {scene.shape[1]}", f"{stats['scene_mib']:,.0f} MiB",
                      f"{stats['chunk_mib']:,.0f} MiB ({args.chunk} px)", f"{stats['baseline_mib']:,.0f} MiB",
                      f"{stats['peak_mib']:,.0f} MiB", f"{stats['seconds']:.1f} s",
                      f"{stats['pixels'] / stats['seconds'] / 1e6:.1f}")
    console.print(table)

if __name__ == "__main__":
    main()
