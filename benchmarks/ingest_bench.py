"""Ingest throughput: a synthetic EW GRDM product (HH + HV) geocoded to the 40 m ExtremeEarth grid.

    python benchmarks/ingest_bench.py                          # full size: 10,000 lines x 10,400 samples (~10 min)
    python benchmarks/ingest_bench.py --size 4000 4160         # a smaller product
    flock /tmp/polarxr-heavy.lock python benchmarks/ingest_bench.py --out benchmarks/results/ingest_cpu.md

Measured in one run:

- **polarxr geocode** on 1 and 2 local workers (``--workers``; one thread each, a fresh cluster per size):
  every output block computed (calibration, thermal-noise removal, geocoding chunk by chunk) and reduced
  to a count, so nothing but the blocks is timed, as for the warp; output Mpx/s (grid pixels of both
  bands, per second of wall time) and the peak resident memory of every worker during the run;
- **polarxr ingest** on the largest worker count (every count with ``--cog-each``):
  :func:`polarxr.ingest.ingest_product` end to end (the same blocks, the COG written by the workers' blocks
  through :func:`polarxr.io.write_cog` and copied into COG layout, STAC Item);
- **whole-array warp** in this process: both measurements read whole, calibrated and denoised as whole
  arrays (the same :func:`polarxr.ingest.radiometry.sigma0`), each warped with
  ``rasterio.warp.reproject(gcps=..., SRC_METHOD="GCP_TPS", bilinear)`` onto the same grid, kept in memory
  (no file written: a cost polarxr's figure includes); its seconds, Mpx/s and this process's peak memory.

The ratio is polarxr's throughput over the warp's. The machine's load average is printed with the table
(figures on a shared machine are only comparable within one run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from common import peak_mib, reset_worker_peaks, worker_peak_mib


def _warp(product, grid) -> float:
    import rasterio
    from rasterio.control import GroundControlPoint
    from rasterio.warp import Resampling, reproject

    from polarxr.ingest.radiometry import sigma0

    tic = time.perf_counter()
    g = product.grid
    gcps = [GroundControlPoint(row=l + 0.5, col=c + 0.5, x=lo, y=la, z=h) for l, c, lo, la, h in
            zip(g.line.ravel(), g.pixel.ravel(), g.longitude.ravel(), g.latitude.ravel(), g.height.ravel())]
    lines, pixels = np.arange(product.shape[0], dtype=float), np.arange(product.shape[1], dtype=float)
    for pol in product.bands:
        p = product.polarisations[pol]
        with rasterio.open(p.measurement) as src:
            dn = src.read(1)
        s0 = sigma0(dn, lines, pixels, p.calibration, p.noise)
        del dn
        out = np.full(grid.shape, np.nan, np.float32)
        reproject(s0, out, gcps=gcps, src_crs="EPSG:4326", dst_transform=grid.transform, dst_crs=grid.crs,
                  resampling=Resampling.bilinear, src_nodata=np.nan, dst_nodata=np.nan, SRC_METHOD="GCP_TPS")
        del s0, out
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", nargs=2, type=int, default=[10000, 10400], metavar=("LINES", "SAMPLES"))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--memory-limit", default="3GiB", help="Memory limit of each worker.")
    parser.add_argument("--out", type=Path, default=None, help="Also write the table to this Markdown file.")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--cog-each", action="store_true",
                        help="Time the end-to-end ingest (COG written) on every worker count, not only the largest.")
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from polarxr.ingest import ingest_product, ingested, open_product, target_grid
    from polarxr.ingest.synthetic import write_grd_product

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="polarxr-ingest-bench-"))
    tic = time.perf_counter()
    grd = write_grd_product(workdir / "in", size=tuple(args.size), seed=1)
    print(f"synthetic product {grd.name}: {args.size[0]} x {args.size[1]} px x 2 pols "
          f"written in {time.perf_counter() - tic:.0f} s", flush=True)
    product = open_product(grd.path)
    grid = target_grid(product)
    out_px = grid.shape[0] * grid.shape[1] * len(product.bands)
    rows = []
    valid = 0
    for n in args.workers:
        with LocalCluster(n_workers=n, threads_per_worker=1, memory_limit=args.memory_limit, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            workers = f"{n} worker{'s' if n > 1 else ''}"
            reset_worker_peaks(client)
            tic = time.perf_counter()
            valid = int(ingested(product, grid, chunk=args.chunk).count().compute())
            seconds = time.perf_counter() - tic
            rows.append((f"polarxr geocode only (blocks computed and reduced), {workers}", seconds,
                         out_px / seconds / 1e6, max(worker_peak_mib(client))))
            print(rows[-1], flush=True)
            if n != max(args.workers) and not args.cog_each:
                continue
            reset_worker_peaks(client)
            tic = time.perf_counter()
            ingest_product(product, workdir / f"out{n}", chunk=args.chunk)
            seconds = time.perf_counter() - tic
            rows.append((f"polarxr ingest (COG + STAC Item written), {workers}", seconds, out_px / seconds / 1e6,
                         max(worker_peak_mib(client))))
            print(rows[-1], flush=True)
    warp_s = _warp(product, grid)
    rows.append(("whole-array rasterio warp (GCP_TPS), 1 process", warp_s, out_px / warp_s / 1e6, peak_mib()))
    load = os.getloadavg()
    lines = [f"# Ingest benchmark: {args.size[0]} x {args.size[1]} px EW GRDM, HH + HV -> 40 m grid",
             "",
             f"Output grid {grid.shape[0]} x {grid.shape[1]} px x {len(product.bands)} bands "
             f"({out_px / 1e6:.0f} Mpx, {valid / 1e6:.0f} Mpx with data), chunks {args.chunk} px, input {product.shape[0] * product.shape[1] * 2 / 1e6:.0f} Mpx.",
             f"Load average during the run (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} "
             f"on {os.cpu_count()} cores (shared machine).",
             "",
             "| run | seconds | output Mpx/s | ratio to the warp | peak memory per worker (process) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, seconds, rate, peak in rows:
        lines.append(f"| {name} | {seconds:.1f} | {rate:.2f} | {rate / rows[-1][2]:.2f} | {peak:,.0f} MiB |")
    lines += ["", "The geocode rows and the warp keep their output in memory (no file); the ingest row includes writing",
              "the COG (staging GeoTIFF + COG copy with overviews) and the STAC Item. Command: "
              "`python benchmarks/ingest_bench.py "
              f"--size {args.size[0]} {args.size[1]} --workers {' '.join(map(str, args.workers))}`."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
