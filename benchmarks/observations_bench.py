"""Observations benchmark: chunk-wise boundary extraction throughput, and the accuracy goals.

Throughput (``python benchmarks/observations_bench.py``): a full-size 15564 x 15218 synthetic class map
(the generator's truth of a full scene, written as a COG) is turned into coastline and ice-edge lines by
:func:`polarxr.observations.boundaries.extract_boundaries` on a ``distributed`` LocalCluster of 1 and 2
single-threaded workers (chunk 2048), and by a whole-array extraction in one process (the map read into
memory, ``skimage.measure.find_contours`` on each field: what the chunked code must equal). Reported:
Mpx/s, Mpx/s per worker, the ratio to the whole-array run, peak RSS per worker (memory bounded by chunks)
and whether the lines are the same (count and total length). Icebergs are timed on the same cluster.

Goals (``--checkpoint CKPT``, a demo-sized model such as ``demo-run/run/best.pt``): a synthetic
``--sequence`` (held out: another footprint than the demo's training scenes) is segmented with
:func:`polarxr.predict.predict_scene`; for each scene the coastline and ice-edge mean distance errors
against the chart and against the true class map (the prediction cleaned as the library draws its lines,
the references as they are), the box-method front positions against the truth,
and the iceberg counts (>= 4 px) against the truth.

Every table carries ``os.getloadavg()``: on a shared machine the throughput depends on what else runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from common import FULL_SIZE, peak_mib, reset_worker_peaks, worker_peak_mib
from rasterio.windows import Window
from rich.console import Console
from rich.table import Table

console = Console()


def load() -> str:
    return "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"


def class_map_of(scene, path: Path) -> Path:
    """Write a synthetic scene's truth as a tiled class GeoTIFF, window by window (bounded memory)."""
    from polarxr.io import atomic_path

    h, w = scene.shape
    profile = dict(driver="GTiff", height=h, width=w, count=1, dtype="uint8", nodata=255, crs=scene.crs,
                   transform=scene.transform, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   BIGTIFF="IF_SAFER")
    with atomic_path(path) as staging, rasterio.open(staging, "w", **profile) as dst:
        for row in range(0, h, 1024):
            for col in range(0, w, 1024):
                window = Window(col, row, min(1024, w - col), min(1024, h - row))
                dst.write(scene.truth_window(window), 1, window=window)
    return path


def whole_array(path: Path) -> tuple[float, dict[str, tuple[int, float]], float]:
    """Seconds, {layer: (lines, total length m)} and peak RSS (MiB) of a whole-array extraction here."""
    from skimage.measure import find_contours

    started = time.perf_counter()
    with rasterio.open(path) as src:
        classes, transform = src.read(1), src.transform
    fields = {"coastline": (np.isin(classes, (0, 1, 2)), classes == 0),
              "ice_edge": (np.isin(classes, (1, 2)), classes == 2)}
    out = {}
    for name, (valid, value) in fields.items():
        pieces = find_contours(value.astype(np.float64), 0.5, mask=valid)
        length = 0.0
        for p in pieces:
            xy = np.column_stack(transform * (p[:, 1] + 0.5, p[:, 0] + 0.5))
            length += float(np.hypot(*np.diff(xy, axis=0).T).sum())
        out[name] = (len(pieces), length)
        del pieces
    return time.perf_counter() - started, out, peak_mib()


def throughput(args, workdir: Path) -> list[str]:
    from polarxr.cluster import get_client
    from polarxr.observations.boundaries import extract_boundaries
    from polarxr.observations.cleaning import MIN_PIXELS, clean_array
    from polarxr.observations.icebergs import find_icebergs
    from polarxr.scenes import open_class_map
    from polarxr.synthetic import make_scene

    path = workdir / "S1A_EW_GRDM_1SDH_20180116T075430_20180116T075530_020177_0226B9_9FE3_class.tif"
    if not path.exists():
        started = time.perf_counter()
        scene = make_scene(workdir / "scene", seed=args.seed, size=tuple(args.size), ice_extent=0.45)
        class_map_of(scene, path)
        console.print(f"synthetic {args.size[0]} x {args.size[1]} class map made in {time.perf_counter() - started:.0f} s")
    with rasterio.open(path) as src:
        megapixels = src.height * src.width / 1e6
    rows, reference = [], None
    if not args.no_whole:
        # in a child process, so its peak memory is its own
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1) as pool:
            seconds, reference, peak = pool.submit(whole_array, path).result()
        rows.append(("whole array, 1 process (skimage)", "1", seconds, megapixels / seconds, 1.0, f"{peak:,.0f} MiB",
                     reference))
    for n in args.workers:
        with get_client(n_workers=n, threads_per_worker=1, memory_limit="6GiB") as client:
            client.run(lambda: __import__("skimage.measure") and __import__("scipy.ndimage"))  # warm the imports
            reset_worker_peaks(client)
            started = time.perf_counter()
            # the extraction itself, as the whole-array reference draws it: no cleaning
            lines = extract_boundaries(path, chunk=args.chunk, min_pixels=1)
            seconds = time.perf_counter() - started
            peaks = worker_peak_mib(client)
            started = time.perf_counter()
            bergs = find_icebergs(path, chunk=args.chunk)
            berg_seconds = time.perf_counter() - started
            started = time.perf_counter()
            changed = int((clean_array(open_class_map(path, args.chunk).data, MIN_PIXELS)
                           != open_class_map(path, args.chunk).data).sum().compute())
            clean_seconds = time.perf_counter() - started
        found = {name: (len(f), float(f["length_m"].sum())) for name, f in lines.layers().items() if name != "fronts"}
        rate = megapixels / seconds
        ratio = rate / rows[0][3] if rows else float("nan")
        rows.append((f"chunked {args.chunk} px, LocalCluster", str(n), seconds, rate, ratio,
                     ", ".join(f"{p:,.0f}" for p in peaks) + " MiB", found))
        console.print(f"{n} worker(s): icebergs {len(bergs):,} in {berg_seconds:.1f} s "
                      f"({megapixels / berg_seconds:.1f} Mpx/s); cleaning ({MIN_PIXELS} px) {clean_seconds:.1f} s "
                      f"({megapixels / clean_seconds:.1f} Mpx/s, {changed:,} px relabelled)")
    table = Table(title=f"Boundary extraction (coastline + ice edge) of a {args.size[0]} x {args.size[1]} class map "
                        f"({megapixels:.0f} Mpx); {load()}")
    for column in ("method", "workers", "seconds", "Mpx/s", "Mpx/s per worker", "vs whole array", "peak RSS",
                   "coastline lines / km", "ice-edge lines / km"):
        table.add_column(column, justify="left" if column == "method" else "right")
    md = ["| method | workers | seconds | Mpx/s | Mpx/s per worker | vs whole array | peak RSS | coastline lines / km | "
          "ice-edge lines / km |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method, n, seconds, rate, ratio, peak, found in rows:
        cells = [method, n, f"{seconds:.1f}", f"{rate:.1f}", f"{rate / int(n):.1f}", f"{ratio:.2f}x", peak,
                 f"{found['coastline'][0]:,} / {found['coastline'][1] / 1e3:,.1f}",
                 f"{found['ice_edge'][0]:,} / {found['ice_edge'][1] / 1e3:,.1f}"]
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)
    if reference:
        same = all(rows[k][6][name][0] == reference[name][0] and
                   abs(rows[k][6][name][1] - reference[name][1]) <= 1e-9 * reference[name][1]
                   for k in range(1, len(rows)) for name in reference)
        note = f"chunked lines equal the whole-array lines (count, total length to 1e-9): {same}"
        console.print(note)
        md.append("")
        md.append(note)
    md.append("")
    md.append(load())
    return md


def goals(args, workdir: Path) -> list[str]:
    import pandas as pd

    from polarxr.cluster import get_client
    from polarxr.evaluate import evaluate_prediction
    from polarxr.observations.distance import boundary_errors
    from polarxr.observations.fronts import front_positions
    from polarxr.observations.icebergs import find_icebergs
    from polarxr.predict import predict_scene
    from polarxr.synthetic import make_sequence, write_glacier_files
    from polarxr.scenes import open_class_map

    folder = workdir / "sequence"
    scenes = make_sequence(folder, n_scenes=args.scenes, size=(args.goal_size, args.goal_size), seed=args.goal_seed)
    boxes, _ = write_glacier_files(scenes, folder)
    records = []
    with get_client(n_workers=min(2, os.cpu_count() or 1), threads_per_worker=1) as client:
        for s in scenes:
            name = s.scene.name.removesuffix(".tif")
            pred = workdir / "pred" / f"{name}_class.tif"
            truth = workdir / "truth" / f"{name}_class.tif"
            predict_scene(s.scene, args.checkpoint, pred, chunk=args.goal_size, client=client)
            class_map_of(s, truth)
            chart = evaluate_prediction(pred, s.chart)
            versus_truth = boundary_errors(open_class_map(pred), open_class_map(truth))
            fronts = front_positions(pred, boxes)
            truth_fronts = front_positions(truth, boxes)
            bergs = find_icebergs(pred)
            records.append({
                "scene": s.start.strftime("%Y-%m-%d"), "mean_iou": chart["mean_iou"],
                "coast_mde_chart": chart["coastline_mde_m"], "edge_mde_chart": chart["ice_edge_mde_m"],
                "coast_mde_truth": versus_truth["coastline_mde_m"], "edge_mde_truth": versus_truth["ice_edge_mde_m"],
                **{f"front_{k}_err_px": (fronts[k] - s.fronts_m[k]) / 40 for k in s.fronts_m},
                **{f"front_{k}_truthmap_err_px": (truth_fronts[k] - s.fronts_m[k]) / 40 for k in s.fronts_m},
                "bergs": int((bergs["n_pixels"] >= 4).sum()), "bergs_truth": s.icebergs,
            })
    frame = pd.DataFrame(records)
    console.print(frame.to_string(float_format=lambda v: f"{v:.2f}"))
    fronts = frame[[c for c in frame.columns if c.endswith("_err_px") and "truthmap" not in c]].abs()
    truthmap = frame[[c for c in frame.columns if c.endswith("truthmap_err_px")]].abs()
    berg_error = (frame["bergs"] - frame["bergs_truth"]).abs().sum() / max(1, frame["bergs_truth"].sum())
    summary = [
        ("coastline MDE vs chart", "<= 80 m", f"{frame['coast_mde_chart'].mean():.0f} m"),
        ("coastline MDE vs true class map", "<= 80 m", f"{frame['coast_mde_truth'].mean():.0f} m"),
        ("ice-edge MDE vs chart", "<= 160 m", f"{frame['edge_mde_chart'].mean():.0f} m"),
        ("ice-edge MDE vs true class map", "<= 160 m", f"{frame['edge_mde_truth'].mean():.0f} m"),
        ("box-method front, segmented maps (mean / max abs error)", "<= 1 px",
         f"{np.nanmean(fronts.to_numpy()):.2f} / {np.nanmax(fronts.to_numpy()):.2f} px"),
        ("box-method front, true class maps (mean / max abs error)", "<= 1 px",
         f"{np.nanmean(truthmap.to_numpy()):.2f} / {np.nanmax(truthmap.to_numpy()):.2f} px"),
        ("icebergs >= 4 px, segmented vs truth (sum abs error / sum truth)", "<= 10 %", f"{berg_error * 100:.0f} %"),
    ]
    table = Table(title=f"Goals on {len(scenes)} held-out synthetic sequence scenes of {args.goal_size} px "
                        f"(model {args.checkpoint}); {load()}")
    for column in ("quantity", "goal", "measured"):
        table.add_column(column)
    md = ["| quantity | goal | measured |", "| --- | --- | ---: |"]
    for row in summary:
        table.add_row(*row)
        md.append("| " + " | ".join(row) + " |")
    console.print(table)
    md += ["", "Per scene:", "", "| " + " | ".join(frame.columns) + " |", "|" + " ---: |" * len(frame.columns)]
    md += ["| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |"
           for row in frame.itertuples(index=False)]
    md += ["", load()]
    return md


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=FULL_SIZE, metavar=("ROWS", "COLS"))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--no-whole", action="store_true", help="skip the whole-array run (~6 GiB at full size)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--checkpoint", type=Path, help="a trained demo-sized model: measure the goals")
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--goal-size", type=int, default=1024)
    parser.add_argument("--goal-seed", type=int, default=11)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--report", type=Path, help="write the tables as Markdown here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="polarxr-observations-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    md = ["# Observations benchmark", ""]
    if not args.skip_throughput:
        md += ["## Boundary extraction throughput", "", *throughput(args, workdir), ""]
    if args.checkpoint:
        md += ["## Goals", "", *goals(args, workdir), ""]
    if args.report:
        args.report.write_text("\n".join(md) + "\n")
        console.print(f"report: {args.report}")


if __name__ == "__main__":
    main()
