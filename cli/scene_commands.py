"""Commands on single scenes and charts: ``info`` and ``rasterize``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from polarxr.cli.app import app
from polarxr.cli.options import (ClassMapOption, ClusterKind, ClusterOption, SchedulerOption, TlsDirOption,
                                 WorkersOption, client_from_options)

console = Console()


@app.command()
def info(scene: Path = typer.Argument(..., help="Scene GeoTIFF (8-bit RGB rendering or float sigma0).")) -> None:
    """Print a scene's product metadata, grid, CRS, bands and chunking (reads no pixels)."""
    from polarxr.scenes import open_scene

    data = open_scene(scene)
    table = Table(title=scene.name, show_header=False)
    for key in ("mission", "mode", "product_type", "polarisation", "start", "stop", "absolute_orbit",
                "relative_orbit", "datatake", "product_id", "processing"):
        if key in data.attrs:
            table.add_row(key, str(data.attrs[key]))
    res_x, res_y = data.rio.resolution()
    table.add_row("size (y, x)", f"{data.sizes['y']} x {data.sizes['x']} px")
    table.add_row("pixel", f"{abs(res_x):g} x {abs(res_y):g} m")
    table.add_row("bands", ", ".join(map(str, data.band.values)) + f" ({data.dtype}, {data.attrs['units']})")
    table.add_row("nodata", str(data.rio.nodata))
    table.add_row("crs", data.rio.crs.to_string())
    table.add_row("bounds", ", ".join(f"{v:.0f}" for v in data.rio.bounds()))
    table.add_row("chunks (y, x)", f"{data.chunks[1][0]} x {data.chunks[2][0]} ({data.data.npartitions} blocks)")
    console.print(table)


@app.command()
def rasterize(
    scene: Path = typer.Argument(..., help="Scene GeoTIFF giving the grid and CRS."),
    chart: Path = typer.Argument(..., help="Ice chart shapefile with poly_type L/W/I."),
    out: Path = typer.Option(..., "--out", "-o", help="Output labels: .tif (COG) or .zarr."),
    chunk: int = typer.Option(None, help="Chunk edge in pixels (default: multiples of the file's tiles near 2048)."),
    quicklook: Path = typer.Option(None, help="Also write a PNG of the scene with the chart overlaid."),
    class_map: ClassMapOption = None,
    cluster: ClusterOption = ClusterKind.local,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    tls_dir: TlsDirOption = None,
) -> None:
    """Rasterize an ice chart onto a scene's grid: uint8 labels L=0, W=1, I=2, 255 no label / nodata."""
    from rasterio.errors import RasterioError

    from polarxr.errors import SceneError
    from polarxr.io import write_cog, write_zarr
    from polarxr.labels import labels_for_scene
    from polarxr.progress import dask_progress
    from polarxr.scenes import ensure_not_empty

    data, labels = labels_for_scene(scene, chart, chunks=chunk, class_map=class_map)
    ensure_not_empty(data)  # a file cut short after its header fails here, before anything is written
    with client_from_options(cluster, scheduler, workers, tls_dir), dask_progress(f"rasterizing {chart.name}"):
        try:
            if out.suffix == ".zarr":
                write_zarr(labels, out)
            else:
                write_cog(labels, out, nodata=255, categorical=True)
        except RasterioError as err:  # a block past the readable part of the file
            raise SceneError(scene, f"is corrupt: its pixels cannot be read ({str(err).splitlines()[0]})") from None
    console.print(f"labels written to [bold]{out}[/] ({labels.sizes['y']} x {labels.sizes['x']} px)")
    if quicklook:
        from polarxr.quicklook import scene_quicklook

        scene_quicklook(scene, quicklook, chart=chart)
        console.print(f"quicklook written to [bold]{quicklook}[/]")

