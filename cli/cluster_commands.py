"""Commands for the compute side: check a cluster (`cluster-info`) and make TLS certificates (`tls-certs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from dask.utils import format_bytes
from rich.console import Console
from rich.table import Table

from polarxr.cli.app import app
from polarxr.cli.options import (ClusterKind, ClusterOption, SchedulerOption, TlsDirOption, WorkersOption,
                                 client_from_options)
from polarxr.cluster import worker_device
from polarxr.tls import make_certificates


@app.command("cluster-info")
def cluster_info(
    cluster: ClusterOption = ClusterKind.local,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    tls_dir: TlsDirOption = None,
) -> None:
    """Connect to (or start) a Dask cluster and list its workers: threads, memory limit, torch device.

    Use it to check that `--scheduler ADDRESS [--tls-dir DIR]` reaches a deployment before a long run.
    """
    console = Console()
    with client_from_options(cluster, scheduler, workers, tls_dir) as client:
        info = client.scheduler_info(n_workers=-1)
        devices = client.run(worker_device)
        table = Table(title=f"Dask workers of {info['address']}")
        for column in ("worker", "name", "threads", "memory limit", "device"):
            table.add_column(column)
        for address, worker in sorted(info["workers"].items()):
            table.add_row(address, str(worker.get("name", "")), str(worker["nthreads"]),
                          format_bytes(worker["memory_limit"]) if worker.get("memory_limit") else "none",
                          devices.get(address, "?"))
        console.print(table)


@app.command("tls-certs")
def tls_certs(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write ca.pem, cert.pem and key.pem into.")],
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="DNS name or IP of a scheduler/worker host (repeatable).",
                     show_default="localhost, 127.0.0.1"),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Validity in days.")] = 365,
) -> None:
    """Make a throw-away CA and one node certificate for a TLS-only Dask cluster (tests, small sites).

    Copy the folder to the scheduler, every worker and every client; start them with it as described
    in deploy/README.md, and run polarxr with `--scheduler tls://HOST:8786 --tls-dir OUT_DIR`.
    """
    files = make_certificates(out_dir, hostnames=host or ("localhost", "127.0.0.1"), days=days)
    console = Console()
    console.print(f"CA certificate:   {files.ca}\nnode certificate: {files.cert}\n"
                  f"node key (0600):  {files.key}", highlight=False)
