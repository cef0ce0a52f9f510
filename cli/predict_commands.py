"""Commands of inference: ``predict`` and ``demo``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from polarxr.cli.app import app
from polarxr.cli.options import (BandsOption, ClusterKind, ClusterOption, SchedulerOption, TlsDirOption,
                                 WorkersOption, band_names, client_from_options)

console = Console()


@app.command()
def predict(
    scene: str = typer.Argument(..., help="Scene GeoTIFF, or a folder of scenes segmented as one dask graph "
                                          "(local paths or s3:// URLs, here and below)."),
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help="Checkpoint written by `polarxr train`."),
    out: str = typer.Option(..., "--out", "-o", help="Class map COG for one scene; an output folder for a folder."),
    probabilities: str = typer.Option(None, help="Probability Zarr (one scene); folders always get <scene>_probability.zarr."),
    chart: str = typer.Option(None, help="Ice chart of the scene (or a folder of seaice_s1_*.shp): print metrics."),
    chunk: int = typer.Option(None, help="Block edge in px (multiple of the model's downsampling factor, >= its halo) "
                                         "[default: 2048 on CPU workers, 6144 on GPU workers]."),
    tile: int = typer.Option(None, help="Tile edge in px that blocks are segmented in [default: 512 on CPU, 2048 on GPU]."),
    batch_size: int = typer.Option(None, help="Tiles per forward pass [default: 1 on CPU, 4 on GPU]."),
    quicklook: bool = typer.Option(True, help="Write a PNG quicklook beside each class map."),
    seamless: bool = typer.Option(True, "--seamless/--no-seamless",
                                  help="Give each block a halo of the model's receptive field, so that the maps do "
                                       "not depend on the chunking. --no-seamless drops it: a faster preview whose "
                                       "blocks show seams at their edges."),
    bands: BandsOption = None,
    cluster: ClusterOption = ClusterKind.local,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    tls_dir: TlsDirOption = None,
) -> None:
    """Segment scenes into sea, ice and land, blockwise with overlap, on a Dask cluster.

    Writes a class map (uint8 COG: 0 land, 1 sea, 2 ice, 255 nodata) on the scene's grid and CRS, class
    probabilities (uint8 Zarr, p x 254, 255 nodata; xr.open_zarr decodes 0..1) and a quicklook; with --chart, metrics against the ice chart.
    """
    from polarxr.io import as_path
    from polarxr.predict import predict_scene, predict_scenes
    from polarxr.progress import make_progress
    from polarxr.scenes import scene_catalog

    scene, out = as_path(scene), as_path(out)
    chart = as_path(chart) if chart else None
    names = band_names(bands)
    with client_from_options(cluster, scheduler, workers, tls_dir) as client, make_progress() as bar:
        task = bar.add_task("segmenting blocks", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if scene.is_dir():
            catalog = scene_catalog(scene, chart if chart and chart.is_dir() else None)
            charts = list(catalog["chart"]) if chart else None
            results = predict_scenes(list(catalog["path"]), checkpoint, out, client, chunk=chunk, charts=charts,
                                     quicklooks=quicklook, tile=tile, batch_size=batch_size, progress=advance,
                                     seamless=seamless, bands=names)
        else:
            results = [predict_scene(scene, checkpoint, out, probabilities=probabilities, chart=chart, chunk=chunk,
                                     client=client, quicklook=out.with_suffix(".png") if quicklook else None,
                                     tile=tile, batch_size=batch_size, progress=advance, seamless=seamless,
                                     bands=names)]
    table = Table(title="Segmented scenes")
    for column in ("scene", "Mpx", "seconds", "class map", "mean IoU"):
        table.add_column(column)
    for r in results:
        iou = f"{r.metrics['mean_iou']:.3f}" if r.metrics else "-"
        table.add_row(r.scene.name, f"{r.megapixels:.1f}", f"{r.seconds:.1f}", str(r.class_map), iou)
    console.print(table)
    if len(results) == 1 and results[0].metrics:
        from polarxr.evaluate import format_metrics_table

        console.print(format_metrics_table(results[0].metrics, title=f"{results[0].scene.name} against {chart.name}"))


@app.command()
def demo(
    workdir: Path = typer.Option(Path("demo-run"), help="Folder for every output of the demo."),
    scenes: int = typer.Option(10, help="Synthetic scenes (at least 4): 2 are held out, one validates, the rest "
                               "train the model."),
    size: int = typer.Option(1024, help="Edge of each synthetic scene in px (40 m)."),
    epochs: int = typer.Option(4, help="Training epochs of the U-Net."),
    cluster: ClusterOption = ClusterKind.local,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    tls_dir: TlsDirOption = None,
) -> None:
    """Run the main job end to end on the embedded synthetic default.

    Synthesizes Sentinel-1 EW scenes and ice charts, rasterizes a chart, builds a Zarr training cube,
    trains a small U-Net, segments two held-out scenes blockwise on the cluster, evaluates them against
    their charts, and writes WORKDIR/report.md with metrics and quicklooks.
    """
    from polarxr.demo import DemoConfig, run_demo
    from polarxr.evaluate import format_metrics_table

    if scenes < 4:
        from polarxr.errors import PolarxrError

        raise PolarxrError(None, f"--scenes {scenes}: the demo needs at least 4 scenes (2 held out, 1 to validate on, "
                                 "at least 1 to train on)")
    config = DemoConfig(train_scenes=scenes - 2, test_scenes=2, size=(size, size), epochs=epochs)
    with client_from_options(cluster, scheduler, workers, tls_dir) as client:
        report = run_demo(workdir, client, config, say=console.print)
    console.print(format_metrics_table(report.metrics, title="Held-out scenes: U-Net against the charts"))
    console.print(f"report: [bold]{report.report}[/]")
