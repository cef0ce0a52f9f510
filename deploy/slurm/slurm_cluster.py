#!/usr/bin/env python
"""A Dask cluster on SLURM (dask-jobqueue) for polarxr, and optionally a polarxr command run against it.

The scheduler runs in this process (on the login node, or inside the driver job of polarxr.sbatch);
workers are SLURM jobs that dask-jobqueue submits, each running ``dask worker`` from the same Python
environment, which must live on a filesystem every node mounts (as must the data).

  pip install 'polarxr[slurm]'
  # a cluster for interactive use: prints the address, keeps running until Ctrl-C or the walltime
  python deploy/slurm/slurm_cluster.py --jobs 4 --cores 16 --memory 64GB --partition compute
  # or run one command and tear everything down afterwards
  python deploy/slurm/slurm_cluster.py --jobs 4 --cores 16 --memory 64GB -- \\
      polarxr predict /shared/polarxr/scenes/S1A_EW_....tif --checkpoint /shared/polarxr/unet.pt \\
      --out /shared/polarxr/predictions/S1A_EW_....tif
  # GPU nodes: one job per GPU, one worker process per job
  python deploy/slurm/slurm_cluster.py --jobs 2 --cores 8 --memory 64GB --gpus-per-job 1 --partition gpu
  # see the worker job script without submitting anything
  python deploy/slurm/slurm_cluster.py --jobs 4 --dry-run

The command gets POLARXR_SCHEDULER (and POLARXR_TLS_DIR) in its environment, so polarxr commands
need no --scheduler option.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=2, help="worker jobs to submit (default 2)")
    p.add_argument("--cores", type=int, default=16, help="CPU cores per job (default 16)")
    p.add_argument("--memory", default="64GB", help="memory per job, e.g. 64GB (default 64GB)")
    p.add_argument("--processes", type=int, default=None,
                   help="worker processes per job (default: one per core; 1 with --gpus-per-job)")
    p.add_argument("--gpus-per-job", type=int, default=0, choices=(0, 1),
                   help="1: request one GPU per job (--gres=gpu:1); its single worker uses it")
    p.add_argument("--walltime", default="02:00:00", help="per worker job (default 02:00:00)")
    p.add_argument("--partition", default=None, help="SLURM partition (queue)")
    p.add_argument("--account", default=None, help="SLURM account to charge")
    p.add_argument("--interface", default=None,
                   help="network interface the scheduler and workers talk over, e.g. ib0 (default: hostname)")
    p.add_argument("--venv", default=os.environ.get("VIRTUAL_ENV"),
                   help="Python environment to activate in worker jobs (default: the current one)")
    p.add_argument("--local-directory", default="$TMPDIR", help="node-local scratch for spilling")
    p.add_argument("--log-directory", default="dask-logs", help="worker job logs (default ./dask-logs)")
    p.add_argument("--tls-dir", default=None, help="ca.pem/cert.pem/key.pem on the shared filesystem: TLS on")
    p.add_argument("--min-workers", type=int, default=1, help="workers to wait for before running the command")
    p.add_argument("--dry-run", action="store_true", help="print the worker job script and exit")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then a command to run against the cluster")
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    return args


def make_cluster(args: argparse.Namespace):
    """The SLURMCluster for ``args``; its scheduler starts here, no job is submitted yet."""
    from dask_jobqueue import SLURMCluster

    gpu = args.gpus_per_job > 0
    # One worker per GPU job: a second worker process in the job would share (and fight over) its GPU.
    processes = 1 if gpu else (args.processes or args.cores)
    security = None
    if args.tls_dir:
        from polarxr.cluster import security_from_dir

        security = security_from_dir(args.tls_dir)
    return SLURMCluster(
        queue=args.partition,
        account=args.account,
        cores=args.cores,
        processes=processes,
        memory=args.memory,
        walltime=args.walltime,
        job_name="polarxr-dask",
        interface=args.interface,
        local_directory=args.local_directory,
        log_directory=args.log_directory,
        job_script_prologue=[f"source {args.venv}/bin/activate"] if args.venv else [],
        job_extra_directives=["--gres=gpu:1"] if gpu else [],
        worker_extra_args=["--no-dashboard"],
        protocol="tls://" if security else None,
        security=security,
        # The dashboard stays on the scheduler's loopback: reach it with `ssh -L 8787:localhost:8787`.
        scheduler_options={"dashboard_address": "127.0.0.1:8787"},
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = make_cluster(args)
    with cluster:
        if args.dry_run:
            print(cluster.job_script())
            return 0
        cluster.scale(jobs=args.jobs)
        print(f"scheduler: {cluster.scheduler_address}\ndashboard: {cluster.dashboard_link}", flush=True)
        env = dict(os.environ, POLARXR_SCHEDULER=cluster.scheduler_address)
        if args.tls_dir:
            env["POLARXR_TLS_DIR"] = args.tls_dir
        from distributed import Client

        with Client(cluster) as client:
            print(f"waiting for {args.min_workers} worker(s) to start (queued jobs: squeue --me)", flush=True)
            client.wait_for_workers(args.min_workers)
            if args.command:
                return subprocess.call(args.command, env=env)
            print("cluster ready; Ctrl-C (or the end of this job) shuts it down", flush=True)
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
