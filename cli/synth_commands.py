"""``polarxr synth``: synthetic Sentinel-1 EW scenes and ice charts in the real file formats."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from polarxr.cli.app import app

console = Console()


class Product(StrEnum):
    """Scene products the generator writes."""

    eight_bit = "8bit"
    float = "float"


class Rendering(StrEnum):
    """How synthetic backscatter becomes the product (polarxr.synthetic.RENDERINGS)."""

    linear = "linear"
    calibrated = "calibrated"


@app.command()
def synth(
    outdir: Annotated[Path, typer.Argument(help="Folder for the scene GeoTIFFs and chart shapefiles (created).")],
    scenes: Annotated[int, typer.Option("--scenes", "-n", min=1, help="Number of scenes.")] = 3,
    size: Annotated[tuple[int, int], typer.Option(
        "--size", metavar="H W", help="Rows and columns of 40 m pixels (full ExtremeEarth size: 15564 15218).")
    ] = (1024, 1024),
    seed: Annotated[int, typer.Option("--seed", help="Seed: the same seed writes the same files.")] = 0,
    product: Annotated[Product, typer.Option(
        "--product", help="'8bit': ExtremeEarth 3-band uint8 rendering (nodata 0); 'float': sigma0 HH, HV linear.")
    ] = Product.eight_bit,
    sequence: Annotated[bool, typer.Option(
        "--sequence", help="A repeat-pass time sequence over one coast, the ice edge following the seasons, "
        "instead of scenes at different places, one per month.")] = False,
    quicklook: Annotated[bool, typer.Option(
        "--quicklook", help="Also write a PNG of each scene with its chart.")] = False,
    rendering: Annotated[Rendering, typer.Option(
        "--rendering", help="linear: the original dB-linear 8-bit rendering; calibrated: DN curves fitted to the "
        "real ExtremeEarth patches plus domain randomisation (gain, looks, incidence slope).")] = Rendering.linear,
) -> None:
    """Write synthetic S1 EW scenes (polar stereographic, 40 m) with matching ice charts, and truth.csv.

    truth.csv lists each scene's true land, sea and ice areas (km^2) within the valid swath. With
    --sequence, glaciers in fjords advance and retreat and calve icebergs: truth.csv adds their true front
    positions (front_<id>_m, box method) and iceberg counts, and glacier_boxes.geojson / glaciers.geojson
    hold the boxes and fjord regions (for `polarxr timeseries --fronts` and `polarxr boundaries --glaciers`).
    """
    from polarxr.io import atomic_path
    from polarxr.progress import make_progress
    from polarxr.synthetic import make_dataset, make_sequence, truth_table, window_count, write_glacier_files

    maker = make_sequence if sequence else make_dataset
    with make_progress() as progress:
        task = progress.add_task(f"generating {scenes} scene(s) of {size[0]} x {size[1]} px",
                                 total=scenes * window_count(size))
        made = maker(outdir, scenes, size=size, seed=seed, product=product.value,
                     progress=lambda: progress.advance(task), rendering=str(rendering))
    table = truth_table(made)
    with atomic_path(outdir / "truth.csv") as tmp:
        table.to_csv(tmp, index=False)
    glacier_files = write_glacier_files(made, outdir) if sequence else None
    view = Table(title=f"{len(made)} synthetic scene(s) in {outdir}")
    for column in ("scene", "start", "ice extent", "land km²", "sea km²", "ice km²"):
        view.add_column(column, justify="left" if column == "scene" else "right")
    for scene, row in zip(made, table.itertuples()):
        view.add_row(scene.scene.name, f"{scene.start:%Y-%m-%d %H:%M}", f"{row.ice_extent:.2f}",
                     f"{row.land_km2:,.1f}", f"{row.sea_km2:,.1f}", f"{row.ice_km2:,.1f}")
    console.print(view)
    if quicklook:
        from polarxr.quicklook import scene_quicklook

        for scene in made:
            scene_quicklook(scene.scene, scene.scene.with_suffix(".png"), chart=scene.chart)
    console.print(f"charts: seaice_s1_<time>.shp beside each scene; truth: [bold]{outdir / 'truth.csv'}[/]")
    if glacier_files:
        console.print(f"glacier boxes: [bold]{glacier_files[0]}[/]; glacier regions: [bold]{glacier_files[1]}[/]")
