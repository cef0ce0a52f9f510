"""Observations from class maps: ``boundaries`` (coastline, ice edge, calving fronts as lines) and ``icebergs``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from polarxr.cli.app import app
from polarxr.cli.options import (ClusterKind, ClusterOption, SchedulerOption, TlsDirOption, WorkersOption,
                                 client_from_options)

console = Console()

ChunkOption = Annotated[int | None, typer.Option("--chunk", min=64, help="Block edge in px (default: file tiles near 2048).")]


@app.command()
def boundaries(
    class_map: Annotated[Path, typer.Argument(help="Class map GeoTIFF (uint8 L=0, W=1, I=2, 255 nodata; projected CRS).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="GeoPackage of lines: layers coastline, ice_edge, fronts.")],
    probabilities: Annotated[Path | None, typer.Option(
        "--probabilities", help="Probability Zarr of the same scene (polarxr predict): sub-pixel lines.")] = None,
    glaciers: Annotated[Path | None, typer.Option(
        "--glaciers", help="Glacier polygons (GeoJSON or any polygon file, any CRS): calving fronts inside them.")] = None,
    parquet: Annotated[bool, typer.Option(help="Also write every line to OUT with suffix .parquet (GeoParquet).")] = True,
    quicklook: Annotated[Path | None, typer.Option(
        "--quicklook", help="PNG of the lines drawn over --scene (or over the class map).")] = None,
    scene: Annotated[Path | None, typer.Option("--scene", help="Scene GeoTIFF to draw the quicklook over.")] = None,
    min_pixels: Annotated[int, typer.Option(
        "--min-pixels", min=1, help="Minimum mapping unit: fragments (objects or holes) of fewer pixels take the "
                                    "class around them before the lines are drawn; 1 keeps the map as it is.")] = 4,
    chunk: ChunkOption = None,
    cluster: ClusterOption = ClusterKind.local,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    tls_dir: TlsDirOption = None,
) -> None:
    """Coastline (land | sea + ice), ice edge (ice | sea) and calving fronts as lines, chunk by chunk.

    Lines are the 0.5 contours of the class map (or of the probabilities) at pixel centres, joined across
    chunk borders, in the class map's CRS (metres).
    """
    from polarxr.observations.boundaries import extract_boundaries, open_probabilities, read_glaciers, write_lines
    from polarxr.progress import dask_progress
    from polarxr.scenes import open_class_map

    classes = open_class_map(class_map, chunk)  # bad inputs fail before a cluster starts
    glacier_frame = read_glaciers(glaciers, classes.rio.crs) if glaciers else None
    if probabilities is not None:
        open_probabilities(probabilities, classes)
    with client_from_options(cluster, scheduler, workers, tls_dir), dask_progress(f"lines of {class_map.name}"):
        lines = extract_boundaries(classes, probabilities=probabilities, glaciers=glacier_frame, min_pixels=min_pixels)
    parquet_path = out.with_suffix(".parquet") if parquet else None
    write_lines(lines.layers(), out, parquet_path)
    table = Table(title=f"Lines of {class_map.name}" + (" (from probabilities)" if probabilities else ""))
    for column in ("layer", "lines", "closed", "length km", "vertices"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for name, frame in lines.layers().items():
        table.add_row(name, f"{len(frame):,}", f"{int(frame['closed'].sum()):,}" if len(frame) else "0",
                      f"{frame['length_m'].sum() / 1e3:,.1f}", f"{int(frame['n_vertices'].sum()):,}")
    console.print(table)
    console.print(f"GeoPackage: [bold]{escape(str(out))}[/]" + (f", GeoParquet: [bold]{escape(str(parquet_path))}[/]"
                                                              if parquet_path else ""))
    if quicklook is not None:
        from polarxr.quicklook import lines_quicklook

        lines_quicklook(scene or class_map, out, quicklook)
        console.print(f"quicklook: [bold]{escape(str(quicklook))}[/]")


@app.command()
def icebergs(
    class_map: Annotated[Path, typer.Argument(help="Class map GeoTIFF (uint8 L=0, W=1, I=2, 255 nodata; projected CRS).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="GeoPackage of iceberg centroids (layer icebergs).")],
    max_area: Annotated[float, typer.Option("--max-area", min=0.0, help="Largest iceberg (km²).")] = 1.0,
    min_pixels: Annotated[int, typer.Option("--min-pixels", min=1, help="Smallest iceberg (px).")] = 1,
    chunk: ChunkOption = None,
    cluster: ClusterOption = ClusterKind.local,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    tls_dir: TlsDirOption = None,
) -> None:
    """Icebergs: connected ice objects surrounded by sea, at most --max-area, labelled across chunk borders.

    Writes their centroids (with n_pixels, area_km2) and prints the count and the area distribution.
    """
    from polarxr.observations.icebergs import find_icebergs, write_icebergs
    from polarxr.progress import dask_progress
    from polarxr.scenes import open_class_map

    classes = open_class_map(class_map, chunk)  # bad inputs fail before a cluster starts
    with client_from_options(cluster, scheduler, workers, tls_dir), dask_progress(f"icebergs of {class_map.name}"):
        bergs = find_icebergs(classes, max_area_km2=max_area, min_pixels=min_pixels)
    write_icebergs(bergs, out)
    table = Table(title=f"{len(bergs):,} icebergs in {class_map.name} (<= {max_area:g} km², >= {min_pixels} px)")
    for column in ("px", "count", "km²"):
        table.add_column(column, justify="right")
    edges = [1, 4, 16, 64, 256, 1024, np.inf]
    for lo, hi in zip(edges[:-1], edges[1:]):
        part = bergs[(bergs["n_pixels"] >= lo) & (bergs["n_pixels"] < hi)]
        if len(part):
            table.add_row(f"{lo}-{hi - 1:g}" if np.isfinite(hi) else f">= {lo}", f"{len(part):,}",
                          f"{part['area_km2'].sum():,.3f}")
    console.print(table)
    console.print(f"GeoPackage: [bold]{escape(str(out))}[/]")
