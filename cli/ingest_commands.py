"""``polarxr ingest``: Sentinel-1 GRD products as delivered (.SAFE folders, .zip) to geocoded scene COGs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from polarxr.cli.app import app
from polarxr.cli.options import (ClusterKind, ClusterOption, SchedulerOption, TlsDirOption, WorkersOption,
                                 client_from_options)
from polarxr.cli.synth_commands import Product as ProductKind  # the same two products: 8bit, float

console = Console()


@app.command()
def ingest(
    products: Annotated[list[Path], typer.Argument(metavar="PRODUCT...",
                                                   help="Sentinel-1 GRD products: .SAFE folders or .zip files.")],
    out: Annotated[Path, typer.Option("--out", metavar="OUT_DIR", help="Output folder: <product name>.tif and .json.")],
    crs: Annotated[str | None, typer.Option("--crs", help="Target CRS (PROJ string, EPSG:code, WKT); default the "
                                                          "ExtremeEarth polar stereographic grid.")] = None,
    resolution: Annotated[float | None, typer.Option("--resolution", metavar="METRES", min=1.0,
                                                     help="Pixel size of the target grid (default 40 m).")] = None,
    product: Annotated[ProductKind, typer.Option("--product", help="float: sigma0 per polarisation; 8bit: the "
                                                                   "ExtremeEarth-style 3-band rendering.")] = ProductKind.float,
    db: Annotated[bool, typer.Option("--db", help="sigma0 in dB instead of linear (float products).")] = False,
    no_denoise: Annotated[bool, typer.Option("--no-denoise", help="Keep the thermal noise (no noise LUT subtraction).")] = False,
    cluster: ClusterOption = ClusterKind.local,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    tls_dir: TlsDirOption = None,
) -> None:
    """Calibrate, remove thermal noise and geocode GRD products chunk by chunk on the cluster.

    Writes OUT_DIR/<product name>.tif (COG; float bands named after the polarisations, e.g. HH, HV) and a
    STAC Item OUT_DIR/<product name>.json. Every product is checked before anything is written.
    """
    from polarxr.ingest import ingest_product, open_product, target_grid
    from polarxr.progress import dask_progress

    checked = [open_product(p) for p in products]  # bad input is reported before a cluster starts
    for item in checked:
        target_grid(item, crs, resolution)
    with client_from_options(cluster, scheduler, workers, tls_dir):
        for item in checked:
            with dask_progress(f"ingesting {item.name}"):
                result = ingest_product(item, out, crs=crs, resolution=resolution, kind=str(product), db=db,
                                        denoise=not no_denoise)
            console.print(f"[bold]{escape(str(result.scene))}[/] ({result.shape[0]} x {result.shape[1]} px, "
                          f"bands {', '.join(result.bands)}); STAC Item {escape(result.item.name)}", highlight=False)
