"""Unattended processing and time series: ``process`` (an inbox of scenes, once or ``--watch``) and ``timeseries``."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from polarxr.cli.app import app
from polarxr.cli.discovery_commands import (DISCOVERY_PANEL, BboxOption, CollectionOption, ModeOption,
                                            PageSizeOption, SinceOption, TimeoutOption, print_items, print_rejected,
                                            search_filter)
from polarxr.cli.options import (ClusterKind, ClusterOption, SchedulerOption, TlsDirOption, WorkersOption,
                                 client_from_options)
from polarxr.discovery.stac_api import DEFAULT_COLLECTION, DEFAULT_PAGE_SIZE, DEFAULT_TIMEOUT_S

console = Console()

_STATUS_STYLE = {"done": "green", "failed": "bold red", "up-to-date": "dim", "failed-before": "red",
                 "busy": "yellow", "retry": "yellow", "waiting": "yellow"}


def _terminate(signum, frame) -> None:
    """SIGTERM (systemd stop, kill) unwinds like Ctrl-C, so the run hands its scenes back to the ledger."""
    raise SystemExit(128 + signum)


def _outcome_line(outcome) -> str:
    style = _STATUS_STYLE.get(outcome.status, "")
    seconds = f" in {outcome.seconds:.1f} s" if outcome.seconds else ""
    detail = f": {escape(outcome.error)}" if outcome.error else ""
    return f"[{style}]{outcome.status}[/] {escape(outcome.scene)}{seconds}{detail}"


def _report_table(report) -> Table:
    table = Table(title=f"run {report.run_id}: {len(report.with_status('done'))} done, {len(report.failed)} failed, "
                        f"{len(report.with_status('up-to-date'))} up to date ({report.seconds:.1f} s)")
    table.add_column("scene", overflow="fold")
    table.add_column("status")
    table.add_column("attempts", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("outputs / error", overflow="fold")
    for o in report.outcomes:
        folder = o.outputs["class_map"].parent if "class_map" in o.outputs else None
        detail = escape(o.error) if o.error else (escape(str(folder)) if folder else escape(o.message or ""))
        table.add_row(escape(o.scene), f"[{_STATUS_STYLE.get(o.status, '')}]{o.status}[/]", str(o.attempts),
                      f"{o.seconds:.1f}" if o.seconds else "-", detail)
    return table


def _print_report(report, quiet_when_idle: bool = False) -> None:
    for message in report.messages:
        console.print(f"[yellow]note:[/] {escape(message)}", highlight=False)
    if quiet_when_idle and not report.processed and not report.messages:
        console.print(f"[dim]{report.started}: nothing new ({len(report.outcomes)} scene(s) known)[/]")
        return
    console.print(_report_table(report))
    if earlier := report.with_status("failed-before"):
        console.print(f"{len(earlier)} scene(s) failed in earlier runs and were not tried again: use --retry-failed")
    console.print(f"ledger: {escape(str(report.ledger))}")


@app.command()
def process(
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder (or s3:// prefix): <scene>/ per scene and "
                                                         "ledger.sqlite.")],
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="Model checkpoint (polarxr train); path or s3:// URL.")],
    inbox: Annotated[str | None, typer.Argument(
        help="Folder of scene GeoTIFFs or Sentinel-1 GRD products (.SAFE folders, .zip; ingested first; charts "
             "beside them are used for metrics), or a STAC ItemCollection / Catalog JSON listing scenes; a local "
             "path or an s3:// prefix. Not with --stac-api.")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Try scenes that failed before again.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Keep polling the inbox every --interval.")] = False,
    interval: Annotated[str, typer.Option("--interval", help="Polling interval with --watch: 30s, 10m, 1h, 1h30m.")] = "10m",
    max_cycles: Annotated[int | None, typer.Option("--max-cycles", min=1, help="Stop --watch after N cycles.")] = None,
    chunk: Annotated[int, typer.Option("--chunk", min=16, help="Block edge of the inference (px).")] = 2048,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", min=1,
                                                       help="Scenes in flight at once (default: one per worker, >= 2).")] = None,
    region: Annotated[Path | None, typer.Option("--region", help="Region of interest (GeoJSON): scenes missing it fail; "
                                                "with --stac-api also the search area.")] = None,
    ledger: Annotated[Path | None, typer.Option("--ledger", help="Ledger file (default OUT/ledger.sqlite; local disk: "
                                                "required when OUT is on object storage).")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Audit every done scene's outputs in full (every file of "
                                         "every store, every class map opened) and redo those that fail; by "
                                         "default only their existence and sizes are checked.")] = False,
    cluster: ClusterOption = ClusterKind.local,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    tls_dir: TlsDirOption = None,
    stac_api: Annotated[str | None, typer.Option(
        "--stac-api", metavar="URL", help="Poll this STAC API instead of an INBOX: each run (each --watch cycle) "
        "searches it and processes the items not seen before (state in discovery.sqlite beside the ledger).",
        rich_help_panel=DISCOVERY_PANEL)] = None,
    collection: CollectionOption = DEFAULT_COLLECTION,
    bbox: BboxOption = None,
    since: SinceOption = None,
    mode: ModeOption = None,
    page_size: PageSizeOption = DEFAULT_PAGE_SIZE,
    timeout: TimeoutOption = DEFAULT_TIMEOUT_S,
) -> None:
    """Segment every scene of INBOX not yet done, recording each in a run ledger; idempotent and crash-safe.

    With --stac-api URL instead of INBOX, the scenes are Sentinel-1 GRD items found in a STAC API over
    --region / --bbox, since --since, in --mode; their scene assets are local paths, file:// or s3://
    (fetched into OUT/downloads/) URLs.

    Outputs per scene in OUT/<scene>/: class COG, probability Zarr, quicklook PNG and a STAC Item JSON.
    A cluster is started only when some scene needs processing. Exit code 1 when a scene failed in this
    run (its error is in the table and the ledger), 0 otherwise.
    """
    from polarxr.pipeline import parse_duration, process_inbox
    from polarxr.pipeline import watch as watch_inbox

    try:
        interval_s = parse_duration(interval)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--interval") from None
    if (inbox is None) == (stac_api is None):
        raise typer.BadParameter("give an INBOX folder / STAC JSON file, or --stac-api URL (not both)",
                                 param_hint="INBOX / --stac-api")
    if stac_api is not None:
        inbox = _stac_inbox(stac_api, search_filter(collection, region, bbox, since, mode),
                            Path(ledger).parent if ledger else Path(out), page_size, timeout)
    else:
        for name, value in (("--bbox", bbox), ("--since", since), ("--mode", mode)):
            if value is not None:
                raise typer.BadParameter(f"{name} filters a STAC API search: it needs --stac-api", param_hint=name)
    signal.signal(signal.SIGTERM, _terminate)

    def client():
        return client_from_options(cluster, scheduler, workers, tls_dir, console=console)

    options = dict(retry_failed=retry_failed, chunk=chunk, max_concurrent=max_concurrent, region=region,
                   ledger_path=ledger, verify=verify, on_scene=lambda o: console.print(_outcome_line(o), highlight=False))
    if watch:
        console.print(f"watching [bold]{escape(stac_api or str(inbox))}[/] every {interval_s:g} s (Ctrl-C to stop)")
        watch_inbox(inbox, out, checkpoint, interval_s, max_cycles=max_cycles, client=client,
                    on_report=lambda r: _print_report(r, quiet_when_idle=True),
                    on_error=lambda e: console.print(f"[bold red]cycle failed:[/] {escape(str(e))}"), **options)
        return
    report = process_inbox(inbox() if callable(inbox) else inbox, out, checkpoint, client=client, **options)
    _print_report(report)
    if report.failed:
        sys.exit(1)


def _stac_inbox(url: str, search, state_dir: Path, page_size: int, timeout_s: float):
    """A callable polling ``url`` (printing what is new) and returning the inbox of the items seen."""
    from polarxr.discovery.poll import poll

    def inbox() -> Path:
        result = poll(url, search, state_dir, page_size=page_size, timeout_s=timeout_s)
        console.print(escape(result.summary()), highlight=False)
        if result.new:
            print_items(result.new, f"{len(result.new)} new item(s)")
        print_rejected(result.search.rejected)
        for item_id, why in result.unresolved:
            console.print(f"[yellow]note:[/] {escape(item_id)}: {escape(why)}; tried again at the next poll",
                          highlight=False)
        return result.inbox

    return inbox


@app.command()
def timeseries(
    out_dir: Annotated[Path, typer.Argument(help="Output folder of `polarxr process` (its */<scene>_class.tif).")],
    region: Annotated[Path | None, typer.Option("--region", help="Region of interest (GeoJSON or any polygon file).")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="CSV path (default OUT_DIR/timeseries[_REGION].csv).")] = None,
    parquet: Annotated[Path | None, typer.Option("--parquet", help="Parquet path (default alongside the CSV).")] = None,
    png: Annotated[Path | None, typer.Option("--png", help="Plot path (default alongside the CSV).")] = None,
    map_plane: Annotated[bool, typer.Option("--map-plane", help="Areas in the map plane instead of on the WGS84 ellipsoid.")] = False,
    chunk: Annotated[int | None, typer.Option("--chunk", min=64, help="Block edge in px (default ~2048).")] = None,
    fronts: Annotated[Path | None, typer.Option(
        "--fronts", help="Glacier boxes (GeoJSON polygons with id): front positions by the box method.")] = None,
    transects: Annotated[Path | None, typer.Option(
        "--transects", help="Transects (GeoJSON lines from the coast seaward, with id): ice-edge positions.")] = None,
    truth: Annotated[Path | None, typer.Option(
        "--truth", help="truth.csv of `polarxr synth`: drawn as dashed lines in the plot.")] = None,
) -> None:
    """Areas (km²) of sea, ice and land, boundary lengths (km), iceberg counts, and front and ice-edge
    positions (m, with --fronts / --transects) per acquisition.

    Written as CSV and Parquet and plotted as a PNG time series; computed blockwise from the class COGs.
    """
    from polarxr.progress import dask_progress
    from polarxr.timeseries import build_timeseries, plot_timeseries, read_truth

    stem = f"timeseries_{region.stem}" if region else "timeseries"
    csv = csv or out_dir / f"{stem}.csv"
    parquet = parquet or csv.with_suffix(".parquet")
    png = png or csv.with_suffix(".png")
    truth_table = read_truth(truth) if truth else None
    with dask_progress("class areas and boundaries"):
        frame = build_timeseries(out_dir, region=region, csv=csv, parquet=parquet, ellipsoidal=not map_plane,
                                 chunk=chunk, fronts=fronts, transects=transects)
    title = f"Sea, ice and land{f' in {region.stem}' if region else ''}: {len(frame)} acquisitions"
    plot_timeseries(frame, png, title=title, truth=truth_table)
    positions = [c for c in frame.columns if c.startswith(("front_", "ice_edge_"))]
    table = Table(title=title)
    for column in ("time (UTC)", "land km²", "sea km²", "ice km²", "ice fraction", "land/sea km", "ice/sea km", "note"):
        table.add_column(column, justify="left" if column in ("time (UTC)", "note") else "right", overflow="fold")
    observed = Table(title="Observations: icebergs (count), fronts and ice edges (m)")
    for column in ("time (UTC)", "icebergs", ">= 4 px", *(c.removesuffix("_m") for c in positions)):
        observed.add_column(column, justify="left" if column == "time (UTC)" else "right", overflow="fold")

    def number(value, digits: int = 1) -> str:
        return "-" if value is None or value != value else f"{value:.{digits}f}"

    for time, row in frame.iterrows():
        table.add_row(f"{time:%Y-%m-%d %H:%M}", *(number(row[c]) for c in ("land_km2", "sea_km2", "ice_km2")),
                      number(row["ice_fraction"], 3), number(row["land_sea_km"]), number(row["ice_sea_km"]),
                      escape(row["note"]))
        observed.add_row(f"{time:%Y-%m-%d %H:%M}", number(row.get("icebergs"), 0), number(row.get("icebergs_ge4px"), 0),
                         *(number(row[c], 0) for c in positions))
    console.print(table)
    console.print(observed)
    for label, path in (("CSV", csv), ("Parquet", parquet), ("plot", png)):
        console.print(f"{label}: [bold]{escape(str(path))}[/]")
