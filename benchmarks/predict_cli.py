"""``polarxr predict`` end to end as a user runs it, with the client's CPU apart from the workers'.

    python benchmarks/predict_cli.py --size 15564 15218 --workers 1 2 [--no-halo] [--own-scheduler] [--repeat N]

Makes a synthetic scene (or takes ``--scene``) and a random-weight demo U-Net (or takes ``--checkpoint``: a
trained model's class map compresses as a real one does), measures the in-memory ideal (one process,
``--ideal-tile`` px whole tile, 1 thread, no dask, no I/O), then for each worker count runs the installed CLI
(``polarxr predict ... --workers N``) in a child process that reports its own CPU seconds (the client:
planning, progress, commit) and its reaped children's (the local cluster's worker processes), the largest
worker's peak RSS, and the wall time from start to exit (start-up of the cluster, reading, segmenting, COG +
Zarr written, quicklook). Efficiency is ``Mpx/s / (workers x ideal)``.

With ``--own-scheduler`` each worker count runs a second time against a cluster started as a deployment
runs one: ``dask scheduler`` and ``dask worker --nworkers N --nthreads 1`` as their own processes (with the
local cluster's malloc settings), the CLI connected by ``--scheduler``. The client's CPU is then the
CLI process alone, the scheduler's is reported beside it; with the local cluster (the default row) the
scheduler and the nannies live in the client process, so its CPU includes theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common import FULL_SIZE, random_checkpoint, worker_environ

# Run in the child: the CLI's main(), then the rusage of this process and of its reaped children.
_CHILD = """
import json, resource, sys, time
from polarxr.cli.main import main
sys.argv = ["polarxr"] + sys.argv[1:]
started = time.perf_counter()
try:
    main()
except SystemExit as stop:
    if stop.code:
        raise
wall = time.perf_counter() - started
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print("@@" + json.dumps({"wall": wall, "client": me.ru_utime + me.ru_stime, "workers": kids.ru_utime + kids.ru_stime,
                         "worker_peak_mib": kids.ru_maxrss / 1024}))
"""


def _cpu_seconds(process) -> float:
    """User + system CPU seconds of ``process`` and of its live descendants."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except Exception:  # a child that just ended
            pass
    return total


def _peak_rss_mib(process) -> float:
    """The largest peak RSS (VmHWM) among ``process``'s live descendants, MiB."""
    peaks = [0.0]
    for p in process.children(recursive=True):
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return max(peaks)


class OwnCluster:
    """``dask scheduler`` + ``dask worker --nworkers n --nthreads 1`` as their own processes on 127.0.0.1."""

    def __init__(self, n: int, workdir: Path):
        import psutil
        from distributed import Client

        env = worker_environ()
        file = workdir / f"scheduler_{n}.json"
        file.unlink(missing_ok=True)
        self.scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                           "--port", "0", "--no-dashboard", "--scheduler-file", str(file)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                          start_new_session=True)
        for _ in range(600):
            if file.exists() and file.stat().st_size:
                break
            time.sleep(0.1)
        self.address = json.loads(file.read_text())["address"]
        self.workers = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                                         "--nworkers", str(n), "--nthreads", "1", "--no-dashboard"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(n, timeout=120)
        self._scheduler, self._workers = psutil.Process(self.scheduler.pid), psutil.Process(self.workers.pid)
        self.start = (_cpu_seconds(self._scheduler), _cpu_seconds(self._workers))

    def used(self) -> tuple[float, float, float]:
        """(scheduler CPU s, workers CPU s) since start-up, and the largest worker's peak RSS (MiB)."""
        return (_cpu_seconds(self._scheduler) - self.start[0], _cpu_seconds(self._workers) - self.start[1],
                _peak_rss_mib(self._workers))

    def close(self) -> None:
        for proc in (self.workers, self.scheduler):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=FULL_SIZE, metavar=("ROWS", "COLS"))
    parser.add_argument("--scene", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ideal-tile", type=int, default=2048)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--own-scheduler", action="store_true",
                        help="also run each worker count against a dask scheduler and workers in their own processes")
    parser.add_argument("--no-halo", action="store_true",
                        help="also run each worker count with --no-seamless (blocks without halo): the overlap overhead")
    parser.add_argument("--checkpoint", type=Path,
                        help="a trained checkpoint (e.g. the demo's run/last.pt) instead of the random-weight U-Net: "
                             "its smooth class map compresses as a real one does, the random model's speckle 17-35x slower")
    parser.add_argument("--refine", type=int, default=0,
                        help="channels of the U-Net's full-resolution refinement (the demo's model: 8; 0: none, "
                             "as the tables before 3 December)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run each configuration this many times, seamless and no-halo runs interleaved; "
                             "the table shows the run of median wall time and the range")
    parser.add_argument("extra", nargs="*", help="more options for polarxr predict (after --)")
    args = parser.parse_args()

    import torch

    from predict_bench import ideal_like_workers, ideal_mpx_s
    from polarxr.scenes import open_scene

    console = Console(width=150)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="polarxr-predict-cli-"))
    workdir.mkdir(parents=True, exist_ok=True)
    scene = args.scene
    if scene is None:
        from polarxr.synthetic import make_scene

        started = time.perf_counter()
        scene = make_scene(workdir / "scene", seed=3, size=tuple(args.size)).scene
        console.print(f"synthetic {args.size[0]} x {args.size[1]} scene made in {time.perf_counter() - started:.0f} s")
    opened = open_scene(scene)
    megapixels = opened.sizes["y"] * opened.sizes["x"] / 1e6
    checkpoint = args.checkpoint or random_checkpoint(workdir / "unet.pt", [str(b) for b in opened.band.values],
                                                      refine=args.refine)
    torch.set_num_threads(1)
    # the faster of this process (default malloc) and a process set up as the workers (their malloc settings)
    ideal_here = ideal_mpx_s(checkpoint, scene, args.ideal_tile, "cpu")
    ideal_workers_env = ideal_like_workers(checkpoint, scene, args.ideal_tile, "cpu", 1)
    ideal = max(ideal_here, ideal_workers_env)
    loads, rows = [], []
    # seamless and no-halo runs of one cluster interleaved, so that a drift of the machine's speed (other
    # load, the page cache) does not fall on one side of the overlap overhead
    halos = (True, False) if args.no_halo else (True,)
    clusters = [(n, False) for n in args.workers] + ([(n, True) for n in args.workers] if args.own_scheduler else [])
    runs = [(n, own, seamless) for n, own in clusters for _ in range(args.repeat) for seamless in halos]
    for n, own, seamless in runs:
        out = workdir / f"cli_{n}{'_own' if own else ''}{'' if seamless else '_nohalo'}"
        cluster = OwnCluster(n, workdir) if own else None
        where = ["--scheduler", cluster.address] if own else ["--workers", str(n)]
        command = [sys.executable, "-c", _CHILD, "predict", str(scene), "--checkpoint", str(checkpoint),
                   "--out", str(out / "class.tif"), "--probabilities", str(out / "prob.zarr"), *where,
                   *([] if seamless else ["--no-seamless"]), *args.extra]
        try:
            done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent)
            scheduler_cpu, workers_cpu, peak = cluster.used() if own else (None, None, None)
        finally:
            if cluster is not None:
                cluster.close()
        if done.returncode:
            console.print(done.stdout[-2000:], done.stderr[-4000:])
            raise SystemExit(f"polarxr predict failed with exit {done.returncode}")
        result = json.loads(done.stdout.rsplit("@@", 1)[1])
        if own:  # the workers are not the CLI's children here
            result.update(workers=workers_cpu, worker_peak_mib=peak)
        result.update(n=n, own=own, seamless=seamless, scheduler=scheduler_cpu)
        rows.append(result)
        loads.append(os.getloadavg()[0])
    by_config: dict[tuple, list[dict]] = {}
    for r in rows:
        by_config.setdefault((r["n"], r["own"], r["seamless"]), []).append(r)
    rows, spans = [], {}
    for key, group in by_config.items():
        group.sort(key=lambda r: r["wall"])
        rows.append(group[len(group) // 2])  # the median run (the upper one of an even count)
        spans[key] = (group[0]["wall"], group[-1]["wall"])
    rows.sort(key=lambda r: (not r["seamless"], r["own"], r["n"]))
    walls = {(r["n"], r["own"], r["seamless"]): r["wall"] for r in rows}
    table = Table(title=f"polarxr predict of a {opened.sizes['y']} x {opened.sizes['x']} scene ({megapixels:.0f} Mpx) "
                        f"from the CLI, CPU workers of 1 thread")
    for column in ("cluster", "workers", "halo", "wall s", *(["wall range s"] if args.repeat > 1 else []), "Mpx/s", "efficiency vs ideal", "overlap overhead",
                   "client CPU s", "workers CPU s", "client / workers", "scheduler CPU s", "largest worker peak RSS"):
        table.add_column(column, justify="right")
    for r in rows:
        key = (r["n"], r["own"], r["seamless"])
        rate = megapixels / r["wall"]
        bare = walls.get((r["n"], r["own"], False))
        overhead = f"{(r['wall'] / bare - 1) * 100:+.0f}%" if r["seamless"] and bare else ""
        table.add_row("own processes" if r["own"] else "local (in the CLI)", str(r["n"]),
                      "seamless" if r["seamless"] else "none", f"{r['wall']:.1f}",
                      *([f"{spans[key][0]:.1f}-{spans[key][1]:.1f}"] if args.repeat > 1 else []), f"{rate:.2f}",
                      f"{rate / (r['n'] * ideal) * 100:.0f}%", overhead,
                      f"{r['client']:.1f}", f"{r['workers']:.1f}",
                      f"{r['client'] / max(r['workers'], 1e-9) * 100:.1f}%",
                      f"{r['scheduler']:.1f}" if r["own"] else "(in the client)", f"{r['worker_peak_mib']:,.0f} MiB")
    console.print(table)
    console.print(f"ideal: one process, {args.ideal_tile} x {args.ideal_tile} tile in memory, 1 thread: {ideal:.2f} Mpx/s "
                  f"(the faster of {ideal_here:.2f} here and {ideal_workers_env:.2f} with the workers' malloc settings); "
                  f"1-min loadavg after each run: {', '.join(f'{v:.1f}' for v in loads)}")


if __name__ == "__main__":
    main()
