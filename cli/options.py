"""Reusable Typer options for choosing where a command computes, and the client they lead to.

A command module uses them like this::

    from polarxr.cli.options import (ClusterKind, ClusterOption, SchedulerOption, TlsDirOption,
                                     WorkersOption, client_from_options)

    @app.command()
    def predict(scene: Path, cluster: ClusterOption = ClusterKind.local, scheduler: SchedulerOption = None,
                workers: WorkersOption = None, tls_dir: TlsDirOption = None) -> None:
        with client_from_options(cluster, scheduler, workers, tls_dir) as client:
            ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from distributed import Client
from rich.console import Console

from polarxr.cluster import get_client

CLUSTER_PANEL = "Cluster"

#: ``--class-map`` of the commands that read ice charts (polarxr.labels.read_chart).
ClassMapOption = Annotated[str | None, typer.Option(
    "--class-map", metavar="CODE=L|W|I|nodata,...",
    help="Map chart poly_type codes to classes, e.g. S=L,N=nodata (the default: SIGRID-3 S ice shelf -> "
         "land, N no data -> no label; L, W, I as themselves).")]


class ClusterKind(StrEnum):
    """Kinds of cluster a command can start on this machine."""

    local = "local"
    cuda = "cuda"


ClusterOption = Annotated[
    ClusterKind,
    typer.Option(
        "--cluster",
        help="Cluster started on this machine: 'local' (one worker process per core) or 'cuda' "
        "(dask-cuda, one worker per GPU; pip install 'polarxr\\[gpu]'). Ignored with --scheduler.",
        rich_help_panel=CLUSTER_PANEL,
    ),
]
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        metavar="ADDRESS",
        envvar="POLARXR_SCHEDULER",
        help="Address of a running Dask scheduler (tcp://host:8786 or tls://host:8786) to use instead of "
        "starting one. Its workers must see the same data paths (shared filesystem or s3://).",
        rich_help_panel=CLUSTER_PANEL,
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        metavar="N",
        help="Workers of the cluster started here (default: one per core, or one per GPU).",
        rich_help_panel=CLUSTER_PANEL,
    ),
]
TlsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--tls-dir",
        envvar="POLARXR_TLS_DIR",
        exists=True,
        file_okay=False,
        dir_okay=True,
        metavar="DIR",
        help="Folder with ca.pem, cert.pem and key.pem: connect with TLS (see `polarxr tls-certs`).",
        rich_help_panel=CLUSTER_PANEL,
    ),
]


@contextmanager
def client_from_options(
    cluster: ClusterKind | str = ClusterKind.local,
    scheduler: str | None = None,
    workers: int | None = None,
    tls_dir: Path | None = None,
    console: Console | None = None,
) -> Iterator[Client]:
    """A client from the cluster options; prints the dashboard link (to stderr unless ``console``)."""
    console = console or Console(stderr=True)

    def show(link: str) -> None:
        console.print(f"Dask dashboard: [link={link}]{link}[/link]", highlight=False)

    with get_client(cluster=str(cluster), scheduler=scheduler, n_workers=workers, tls_dir=tls_dir,
                    on_dashboard=show) as client:
        yield client


BandsOption = Annotated[
    str | None,
    typer.Option(
        "--bands",
        metavar="A,B,...",
        help="Band names of the scenes, in file order (e.g. HH,HV,HH-HV), where the files have no band "
        "descriptions and their names no polarisation. Default: from the descriptions or the product name.",
    ),
]


def band_names(value: str | None) -> list[str] | None:
    """The ``--bands`` value as a list of names (None when not given)."""
    if value is None:
        return None
    names = [b.strip() for b in value.split(",")]
    if not all(names):
        raise typer.BadParameter(f"{value!r}: give comma-separated band names such as HH,HV,HH-HV",
                                 param_hint="--bands")
    return names
