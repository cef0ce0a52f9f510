"""The Typer application that every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="polarxr",
    help=(
        "Segment Sentinel-1 EW SAR scenes of the Greenland coast into sea, ice and land.\n\n"
        "Scenes are GeoTIFFs (ExtremeEarth 8-bit RGB rendering or float sigma0 HH/HV); ice charts are "
        "shapefiles with a poly_type column (L land, W water, I ice). Label codes: L=0, W=1, I=2, 255 no label."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
