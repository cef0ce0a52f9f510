"""Strong and weak scaling of polarxr's distributed stages: rasterize, cube build and inference.

    python benchmarks/scaling.py                                          # 4096 x 4096 scenes, 1 and 2 local workers (~5 min)
    python benchmarks/scaling.py --size 15564 15218 --workers 1 2 4 8     # full-size ExtremeEarth scenes
    python benchmarks/scaling.py --cluster cuda --workers 1 2 4           # LocalCUDACluster, one worker per GPU
    python benchmarks/scaling.py --scheduler tls://10.0.0.5:8786 --tls-dir tls --workdir /shared/bench

- **strong scaling**: one scene on 1 -> N workers (the same work; ideal: N x the 1-worker throughput);
- **weak scaling**: N x ``--scenes-per-worker`` scenes on N workers (work grows with the cluster; ideal: N x).

Each stage runs exactly as the product runs it under a ``distributed`` client:

- *rasterize*: each scene's ice chart rasterized chunk by chunk onto the scene grid and streamed to a COG
  (:func:`polarxr.labels.labels_for_scene` + :func:`polarxr.io.write_cog`), all scenes in flight; Mpx/s.
- *cube build*: :func:`polarxr.cube.build_cube` into a fresh cube (random sampler, ``--samples-per-label``
  patches per class of ``--patch-size`` px), scenes appended one after another as the cube requires; patches/s.
- *inference*: :func:`polarxr.predict.predict_scenes` (seamless, with halo; class COG only), all scenes one
  graph; Mpx/s. The model is the demo's U-Net with random weights unless ``--checkpoint``.

Per measurement (the fastest of ``--repeat`` runs, default 3): seconds, throughput, throughput per worker, speedup and efficiency against the smallest cluster
(``throughput / (N / N0 x throughput at N0)``, 100 % = ideal); *workers busy*, the workers' CPU time over
``N x`` wall time (below 100 %: workers idle for lack of parallel tasks or waiting on the client, or
sharing their cores with other processes); *per CPU second*, the work per second of worker CPU (the rate of
one worker that has a core to itself, robust to a loaded host); and the peak resident memory per worker
during that run (Linux; the peak is reset before every run). Scene synthesis (on the cluster), cluster
start-up and loading the model on every worker are not timed. A cluster started here is resized with
``cluster.scale``; with ``--scheduler`` the cluster is measured as it is (its worker count, one row per
stage and mode), and ``--workdir`` must then be on a filesystem every worker sees at the same path.

Writes ``OUT/scaling_<tag>.md`` (the printed tables) and ``OUT/scaling_<tag>.png`` (throughput against workers).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from common import FULL_SIZE, random_checkpoint, reset_worker_peaks, worker_cpu_seconds, worker_peak_mib

DEFAULT_SIZE = (4096, 4096)


@dataclass(frozen=True)
class Scene:
    path: Path
    chart: Path


@dataclass(frozen=True)
class Settings:
    """What every run shares: block edge (px), sampler, model and inference tiling."""

    chunk: int
    patch_size: int
    samples_per_label: int
    checkpoint: Path
    tile: int | None  # None: polarxr's default for the worker's device
    batch_size: int | None


@dataclass(frozen=True)
class Stage:
    name: str
    unit: str  # of the work a run returns: "Mpx" or "patches"
    run: Callable[[list[Scene], Path, Settings, object], float]


@dataclass
class Run:
    stage: str
    mode: str
    workers: int
    scenes: int
    work: float
    seconds: float
    cpu_seconds: float  # of all workers together
    peaks_mib: list[float]

    @property
    def throughput(self) -> float:
        return self.work / self.seconds

    @property
    def busy(self) -> float:
        """Fraction of the workers' wall time spent computing (1 = every worker busy all the time)."""
        return self.cpu_seconds / (self.workers * self.seconds)


# ------------------------------------------------------------------------------------------- stages
def rasterize(scenes: list[Scene], out: Path, settings: Settings, client) -> float:
    """Chart -> label COG for every scene, scenes in flight together; returns the Mpx labelled."""
    from polarxr.classes import NO_LABEL
    from polarxr.io import write_cog
    from polarxr.labels import labels_for_scene

    def one(scene: Scene) -> float:
        _, labels = labels_for_scene(scene.path, scene.chart, chunks=settings.chunk)
        write_cog(labels, out / f"{scene.path.stem}_labels.tif", nodata=NO_LABEL, categorical=True)
        return labels.size / 1e6

    with ThreadPoolExecutor(max_workers=len(scenes)) as pool:
        return sum(pool.map(one, scenes))


def cube_build(scenes: list[Scene], out: Path, settings: Settings, client) -> float:
    """A fresh training cube of the scenes; returns the patches written."""
    from polarxr.cube import build_cube
    from polarxr.samplers import SamplerConfig, SamplingWarning

    sampler = SamplerConfig(patch_size=settings.patch_size, samples_per_label=settings.samples_per_label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)  # a class short of its quota is still a valid run
        results = build_cube([(s.path, s.chart) for s in scenes], out / "cube.zarr", sampler, chunks=settings.chunk)
    return float(sum(r.patches for r in results))


def inference(scenes: list[Scene], out: Path, settings: Settings, client) -> float:
    """Seamless blockwise segmentation of the scenes (one graph) into class COGs; returns the Mpx segmented."""
    from polarxr.predict import predict_scenes

    results = predict_scenes([s.path for s in scenes], settings.checkpoint, out, client, chunk=settings.chunk,
                             probabilities_out=False, quicklooks=False, tile=settings.tile,
                             batch_size=settings.batch_size)
    return sum(r.megapixels for r in results)


STAGES = (Stage("rasterize", "Mpx", rasterize), Stage("cube build", "patches", cube_build),
          Stage("inference", "Mpx", inference))


# ------------------------------------------------------------------------------------------ cluster
def _synthesize(index: int, outdir: str, size: tuple[int, int], seed: int) -> tuple[str, str]:
    """Task: synthetic scene ``index`` (its own footprint, month and name) and chart; their paths."""
    from polarxr.synthetic import default_start, make_scene

    start = default_start(seed + index, month=index % 12 + 1, year=2018 + index // 12)
    made = make_scene(outdir, seed=seed + index, size=size, start=start)
    return str(made.scene), str(made.chart)


def synthesize(client, outdir: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Scene]:
    """``n`` distinct synthetic scenes written by the cluster's workers (not timed)."""
    futures = client.map(_synthesize, range(n), outdir=str(outdir), size=tuple(size), seed=seed, pure=False)
    return [Scene(Path(s), Path(c)) for s, c in client.gather(futures)]


def _prepare_worker(checkpoint: str) -> None:
    """Task-side imports and the model in the worker's cache, so runs time work rather than start-up."""
    import polarxr.cube  # noqa: F401
    import polarxr.io  # noqa: F401
    import polarxr.labels  # noqa: F401
    from polarxr.predict import worker_model

    worker_model(checkpoint)


def resize(client, n: int, timeout: float = 300) -> None:
    """Scale the cluster started here to exactly ``n`` workers and wait for it."""
    client.cluster.scale(n)
    deadline = time.monotonic() + timeout
    while len(client.nthreads()) != n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster did not reach {n} workers in {timeout:.0f} s (has {len(client.nthreads())})")
        time.sleep(0.2)


def measure(client, stage: Stage, mode: str, scenes: list[Scene], workdir: Path, settings: Settings,
            repeat: int) -> Run:
    """Best of ``repeat`` runs of ``stage`` on ``scenes`` with the workers the cluster has now."""
    n = len(client.nthreads())
    best = None
    for attempt in range(repeat):
        out = workdir / "runs" / f"{stage.name.replace(' ', '-')}-{n}w-{len(scenes)}s-{attempt}"
        out.mkdir(parents=True)
        reset_worker_peaks(client)
        cpu = worker_cpu_seconds(client)
        started = time.perf_counter()
        work = stage.run(scenes, out, settings, client)
        seconds = time.perf_counter() - started
        cpu = worker_cpu_seconds(client) - cpu
        run = Run(stage.name, mode, n, len(scenes), work, seconds, cpu, worker_peak_mib(client))
        shutil.rmtree(out)  # outputs are not kept: full-size runs would fill the disk
        best = run if best is None or run.seconds < best.seconds else best
    return best


def warm_up(client, tiny: list[Scene], workdir: Path, settings: Settings) -> None:
    """Every stage once on a tiny scene, untimed, and the model loaded on every worker: the timed runs then
    measure work, not first-use costs (imports, GDAL drivers, model loading) on the client or a new worker."""
    client.run(_prepare_worker, str(settings.checkpoint))
    for stage in STAGES:
        out = Path(tempfile.mkdtemp(prefix="warm-up-", dir=workdir))
        stage.run(tiny, out, settings, client)
        shutil.rmtree(out)


def run_counts(client, counts: list[int], scenes: list[Scene], tiny: list[Scene], per_worker: int, workdir: Path,
               settings: Settings, repeat: int, say: Callable[[str], None], scale: bool) -> list[Run]:
    """Strong and weak runs of every stage at each worker count (ascending)."""
    runs = []
    for n in counts:
        if scale:
            resize(client, n)
        warm_up(client, tiny, workdir, settings)
        for stage in STAGES:
            strong = measure(client, stage, "strong", scenes[:1], workdir, settings, repeat)
            say(f"{stage.name:>10}, {n} worker(s), strong: {strong.seconds:6.1f} s")
            if n * per_worker == 1:
                weak = replace(strong, mode="weak")  # the same run: one scene on one worker
            else:
                weak = measure(client, stage, "weak", scenes[:n * per_worker], workdir, settings, repeat)
                say(f"{stage.name:>10}, {n} worker(s), weak ({n * per_worker} scenes): {weak.seconds:6.1f} s")
            runs += [strong, weak]
    return runs


# ------------------------------------------------------------------------------------------- report
def table(runs: list[Run], mode: str, title: str) -> Table:
    out = Table(title=title)
    for column in ("stage", "workers", "scenes", "work", "seconds", "throughput", "per worker", "speedup",
                   "efficiency", "workers busy", "per CPU second", "peak RSS max", "peak RSS mean"):
        out.add_column(column, justify="left" if column == "stage" else "right", no_wrap=True)
    for k, stage in enumerate(STAGES):
        rows = sorted((r for r in runs if r.stage == stage.name and r.mode == mode), key=lambda r: r.workers)
        if not rows:
            continue
        if k:
            out.add_section()
        base = rows[0]
        unit = f"{stage.unit}/s"
        for r in rows:
            expected = base.throughput * r.workers / base.workers  # ideal: proportional to the workers
            single = len(rows) == 1
            out.add_row(stage.name, str(r.workers), str(r.scenes), f"{r.work:,.0f} {stage.unit}", f"{r.seconds:.1f}",
                        f"{r.throughput:,.2f} {unit}", f"{r.throughput / r.workers:,.2f}",
                        "-" if single else f"{r.throughput / base.throughput:.2f}x",
                        "-" if single else f"{r.throughput / expected:.0%}",
                        f"{r.busy:.0%}", f"{r.work / r.cpu_seconds:,.2f}",
                        f"{max(r.peaks_mib):,.0f} MiB", f"{np.mean(r.peaks_mib):,.0f} MiB")
    return out


def plot(runs: list[Run], path: Path, title: str) -> None:
    """Throughput against workers, one panel per stage: strong, weak and the ideal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STAGES), figsize=(11, 3.4), layout="constrained")
    for ax, stage in zip(axes, STAGES):
        for mode, style in (("strong", "o-"), ("weak", "s-")):
            rows = sorted((r for r in runs if r.stage == stage.name and r.mode == mode), key=lambda r: r.workers)
            if not rows:
                continue
            workers = [r.workers for r in rows]
            ax.plot(workers, [r.throughput for r in rows], style, label=f"{mode} scaling")
            if mode == "strong":
                ax.plot(workers, [rows[0].throughput * w / rows[0].workers for w in workers], "k:", label="ideal")
            ax.set_xticks(workers)
        ax.set_title(stage.name)
        ax.set_xlabel("workers")
        ax.set_ylabel(f"{stage.unit}/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def describe_model(checkpoint: Path, random: bool) -> str:
    from polarxr.checkpoints import load_checkpoint

    _, meta = load_checkpoint(checkpoint)
    config = dict(meta["model_config"])
    name = config.pop("name")
    options = ", ".join(f"{k}={v}" for k, v in config.items())
    return f"{'random-weight ' if random else ''}{name} ({options})"


def describe(client, cluster: str) -> str:
    """One line on the hardware and software the numbers come from."""
    import dask
    import torch

    from polarxr import __version__

    def on_worker() -> tuple[str, int]:
        import torch as t

        return (t.cuda.get_device_name(0) if t.cuda.is_available() else "cpu"), t.get_num_threads()

    devices, threads = zip(*client.run(on_worker).values())
    nthreads = sorted(set(client.nthreads().values()))
    return (f"{cluster}; worker devices {sorted(set(devices))}; {nthreads} dask thread(s) and {sorted(set(threads))} "
            f"torch thread(s) per worker; client host: {cpu_model()}, {len(os.sched_getaffinity(0))} usable cores; "
            f"polarxr {__version__}, dask {dask.__version__}, torch {torch.__version__}")


# --------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts of a cluster started here")
    parser.add_argument("--cluster", choices=["local", "cuda"], default="local")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="measure this running cluster as it is")
    parser.add_argument("--tls-dir", type=Path, help="with --scheduler: ca.pem, cert.pem, key.pem")
    parser.add_argument("--size", type=int, nargs=2, default=DEFAULT_SIZE, metavar=("ROWS", "COLS"),
                        help=f"scene size in px (full size: {FULL_SIZE[0]} {FULL_SIZE[1]})")
    parser.add_argument("--scenes-per-worker", type=int, default=1, help="weak scaling: scenes per worker")
    parser.add_argument("--chunk", type=int, default=2048, help="block edge in px of every stage")
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--samples-per-label", type=int, default=1000, help="cube build: patches per class and scene")
    parser.add_argument("--checkpoint", type=Path, help="model to run (default: the demo U-Net, random weights)")
    parser.add_argument("--tile", type=int, help="inference tile edge in px (default: polarxr's per device)")
    parser.add_argument("--batch-size", type=int, help="inference tiles per forward pass (default: polarxr's per device)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest is kept")
    parser.add_argument("--workdir", type=Path, help="scenes and outputs (default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder of the table and plot")
    parser.add_argument("--tag", help="file name tag: scaling_<tag>.md/.png (default: cpu, cuda or cluster)")
    args = parser.parse_args()
    if min(args.workers) < 1 or args.scenes_per_worker < 1 or args.repeat < 1:
        parser.error("--workers, --scenes-per-worker and --repeat must be at least 1")

    from polarxr.cluster import get_client
    from polarxr.predict import DEFAULT_TILING

    console = Console(record=True, width=max(190, shutil.get_terminal_size().columns))
    tag = args.tag or ("cluster" if args.scheduler else {"local": "cpu", "cuda": "cuda"}[args.cluster])
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="polarxr-scaling-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        if args.scheduler:
            connect = dict(scheduler=args.scheduler, tls_dir=args.tls_dir)
            where = f"existing cluster {args.scheduler}"
        else:
            connect = dict(cluster=args.cluster, n_workers=max(args.workers))
            where = f"{'LocalCUDACluster' if args.cluster == 'cuda' else 'LocalCluster'} started here, scaled to each count"
        with get_client(**connect) as client:
            counts = [len(client.nthreads())] if args.scheduler else sorted(set(args.workers))
            if not counts[0]:
                raise SystemExit(f"{args.scheduler} has no workers")
            t0 = time.perf_counter()
            scenes = synthesize(client, workdir / "scenes", max(counts) * args.scenes_per_worker, tuple(args.size))
            console.print(f"{len(scenes)} synthetic {args.size[0]} x {args.size[1]} scenes written in "
                          f"{time.perf_counter() - t0:.0f} s", highlight=False)
            from polarxr.scenes import open_scene

            bands = [str(b) for b in open_scene(scenes[0].path).band.values]
            checkpoint = args.checkpoint or random_checkpoint(workdir / "unet.pt", bands)
            settings = Settings(args.chunk, args.patch_size, args.samples_per_label, checkpoint, args.tile, args.batch_size)
            model = describe_model(checkpoint, args.checkpoint is None)
            environment = describe(client, where)
            tiny = synthesize(client, workdir / "warm-up", 1, (512, 512), seed=1000)
            runs = run_counts(client, counts, scenes, tiny, args.scenes_per_worker, workdir, settings, args.repeat,
                              say=lambda line: console.print(f"[dim]{line}[/]", highlight=False),
                              scale=not args.scheduler)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)

    size = f"{args.size[0]} x {args.size[1]} px scene"
    console.print(table(runs, "strong", f"Strong scaling: one {size}, chunk {args.chunk} px"))
    console.print(table(runs, "weak", f"Weak scaling: {args.scenes_per_worker} {size}(s) per worker, chunk {args.chunk} px"))
    console.print(f"cube build: random sampler, {args.samples_per_label} patches of {args.patch_size} px per class "
                  f"and scene; inference: {model}, tile {args.tile or 'default'}, batch {args.batch_size or 'default'} "
                  f"(defaults per device: {DEFAULT_TILING}), seamless (halo)", highlight=False)
    console.print(environment, highlight=False)
    console.print(f"load average of the client host before / after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f}; "
                  f"total {time.perf_counter() - started:.0f} s; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                  highlight=False)

    png = args.out / f"scaling_{tag}.png"
    plot(runs, png, f"polarxr scaling ({tag}): {size}s, chunk {args.chunk} px")
    command = "python benchmarks/scaling.py " + shlex.join(sys.argv[1:])
    (args.out / f"scaling_{tag}.md").write_text(
        f"# Scaling benchmark ({tag})\n\n`{command.strip()}`\n\n![throughput against workers]({png.name})\n\n"
        f"```text\n{console.export_text().rstrip()}\n```\n")
    console.print(f"wrote {args.out / f'scaling_{tag}.md'} and {png}", highlight=False)


if __name__ == "__main__":
    main()
