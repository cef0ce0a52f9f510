"""Discovery of new acquisitions: ``discover`` searches a STAC API; its options serve ``process --stac-api`` too."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from polarxr.cli.app import app
from polarxr.discovery.stac_api import DEFAULT_COLLECTION, DEFAULT_PAGE_SIZE, DEFAULT_TIMEOUT_S

console = Console()
DISCOVERY_PANEL = "STAC API discovery"
#: Rows of found items printed; the ItemCollection holds them all.
_MAX_ROWS = 50

CollectionOption = Annotated[str, typer.Option(
    "--collection", metavar="ID", help="STAC collection of Sentinel-1 GRD items.", rich_help_panel=DISCOVERY_PANEL)]
BboxOption = Annotated[tuple[float, float, float, float] | None, typer.Option(
    "--bbox", metavar="W S E N", help="Search area: west south east north in degrees (WGS84).",
    rich_help_panel=DISCOVERY_PANEL)]
SinceOption = Annotated[str | None, typer.Option(
    "--since", metavar="ISO", help="Only acquisitions at or after this UTC time (2018-01-16 or 2018-01-16T07:54:30Z).",
    rich_help_panel=DISCOVERY_PANEL)]
ModeOption = Annotated[str | None, typer.Option(
    "--mode", metavar="MODE", help="Instrument mode: EW, IW, SM or WV (sar:instrument_mode or the product name).",
    rich_help_panel=DISCOVERY_PANEL)]
PageSizeOption = Annotated[int, typer.Option(
    "--page-size", min=1, help="Items per page asked of the API (all pages are followed).",
    rich_help_panel=DISCOVERY_PANEL)]
TimeoutOption = Annotated[float, typer.Option(
    "--timeout", min=0.1, help="Seconds to wait for the API per request.", rich_help_panel=DISCOVERY_PANEL)]


def search_filter(collection: str, region: Path | None, bbox, since: str | None, mode: str | None):
    """A :class:`~polarxr.discovery.SearchFilter` from the options; malformed values are usage errors."""
    from polarxr.discovery import SearchFilter

    try:
        return SearchFilter.from_options(collection, region=region, bbox=bbox, since=since, mode=mode)
    except ValueError as err:
        hint = ("--since" if "ISO" in str(err) else "--mode" if "mode" in str(err)
                else "--region / --bbox" if "either" in str(err) else "--bbox")
        raise typer.BadParameter(str(err), param_hint=hint) from None


def print_items(items, title: str) -> None:
    """A table of STAC items: id, acquisition time, mode, scene asset."""
    from polarxr.discovery.assets import scene_href
    from polarxr.discovery.stac_api import DiscoveryError, item_start

    table = Table(title=title)
    for column in ("item", "acquired (UTC)", "mode", "scene asset"):
        table.add_column(column, overflow="fold")
    for item in items[:_MAX_ROWS]:
        start = item_start(item)
        try:
            href = scene_href(item)
        except DiscoveryError:
            href = "(none)"
        table.add_row(escape(item.id), f"{start:%Y-%m-%d %H:%M:%S}" if start else "-",
                      escape(str(item.properties.get("sar:instrument_mode", "-"))), escape(href))
    if len(items) > _MAX_ROWS:
        table.caption = f"... and {len(items) - _MAX_ROWS} more"
    console.print(table)


def print_rejected(rejected) -> None:
    """Why items the API returned were left out, by reason."""
    for why, n in Counter(why for _, why in rejected).most_common(5):
        console.print(f"[dim]left out {n} item(s): {escape(why)}[/]", highlight=False)


@app.command()
def discover(
    stac_api: Annotated[str, typer.Option("--stac-api", metavar="URL", help="STAC API landing page URL.")],
    collection: CollectionOption = DEFAULT_COLLECTION,
    region: Annotated[Path | None, typer.Option(
        "--region", metavar="REGION.geojson", help="Search area: polygons of a GeoJSON (or any vector) file.",
        rich_help_panel=DISCOVERY_PANEL)] = None,
    bbox: BboxOption = None,
    since: SinceOption = None,
    mode: ModeOption = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="ItemCollection JSON to write.")] = Path("items.json"),
    page_size: PageSizeOption = DEFAULT_PAGE_SIZE,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
) -> None:
    """Search a STAC API for Sentinel-1 GRD items over an area, following every page; write an ItemCollection.

    The ItemCollection is an inbox for `polarxr process ITEMS.json`. To process only what is new at each
    poll, use `polarxr process --stac-api URL` with the same options instead.
    """
    from polarxr.discovery import search_items, write_item_collection

    result = search_items(stac_api, search_filter(collection, region, bbox, since, mode), page_size=page_size,
                          timeout_s=timeout)
    write_item_collection(result.items, out)
    print_items(result.items, f"{len(result.items)} item(s) of {collection} in {result.pages} page(s)")
    print_rejected(result.rejected)
    console.print(f"ItemCollection: [bold]{escape(str(out))}[/]")
