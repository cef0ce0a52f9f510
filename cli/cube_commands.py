"""Commands that build the Zarr training cube: ``sample`` (scenes + charts) and ``import-patches`` (seed PNGs)."""

from __future__ import annotations

import warnings
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from polarxr.cli.app import app
from polarxr.cli.options import (BandsOption, ClassMapOption, ClusterKind, ClusterOption, SchedulerOption,
                                 TlsDirOption, WorkersOption, band_names, client_from_options)

console = Console()
SPLIT_PANEL = "Split by scene"


class SamplerMode(StrEnum):
    """The seed's two samplers."""

    random = "random"
    grid = "grid"


SplitFractionsOption = Annotated[str, typer.Option(
    "--split-fractions", metavar="TRAIN,VAL,TEST", rich_help_panel=SPLIT_PANEL,
    help="Target shares of scenes per split; scenes are assigned in time order to the split furthest "
         "below its share (a scene's patches are never split).")]
SplitOption = Annotated[list[str] | None, typer.Option(
    "--split", metavar="SCENE=SPLIT", rich_help_panel=SPLIT_PANEL,
    help="Put a scene (its name or any part of it, e.g. 20180316) in train, val or test. Repeatable.")]


def _split_config(fractions: str, assignments: list[str] | None):
    from polarxr.cube import SplitConfig

    try:
        values = tuple(float(v) for v in fractions.split(","))
    except ValueError:
        raise typer.BadParameter(f"{fractions!r} is not three numbers such as 0.8,0.2,0",
                                 param_hint="--split-fractions") from None
    pairs = []
    for item in assignments or []:
        pattern, sep, split = item.rpartition("=")
        if not sep or not pattern:
            raise typer.BadParameter(f"{item!r} is not SCENE=SPLIT", param_hint="--split")
        pairs.append((pattern, split.strip().lower()))
    return SplitConfig(fractions=values, assign=tuple(pairs))


def _short_name(name: str) -> str:
    """``S1A 2018-01-16 07:54:30`` for a product name, else the name itself."""
    from polarxr.scenes import parse_product_name

    try:
        product = parse_product_name(name)
    except ValueError:
        return name
    return f"{product.mission} {product.start:%Y-%m-%d %H:%M:%S}"


def _summary(results, cube: Path) -> None:
    """Table of patches per class and scene, then the cube's totals."""
    from polarxr.classes import CLASS_NAMES
    from polarxr.cube import open_cube

    table = Table(title=f"training cube {cube}")
    for column in ("scene", "status", "split", "patches", *CLASS_NAMES.values(), "short of quota"):
        table.add_column(column, justify="right" if column not in ("scene", "status", "split", "short of quota") else "left")
    totals = dict.fromkeys(["patches", *map(str, CLASS_NAMES)], 0)
    for r in results:
        short = ", ".join(f"{CLASS_NAMES[int(k)]} {v}" for k, v in r.shortfall.items())
        colour = {"added": "green", "replaced": "yellow", "skipped": "dim"}[r.status]
        table.add_row(_short_name(r.name), f"[{colour}]{r.status}[/]", r.split, str(r.patches),
                      *(str(r.patch_counts.get(str(k), 0)) for k in CLASS_NAMES), short)
        totals["patches"] += r.patches
        for k in CLASS_NAMES:
            totals[str(k)] += r.patch_counts.get(str(k), 0)
    table.add_section()
    table.add_row("[bold]these scenes[/]", "", "", str(totals["patches"]), *(str(totals[str(k)]) for k in CLASS_NAMES), "")
    console.print(table)
    attrs = open_cube(cube).attrs
    by_split = {s: sorted(n for n, v in attrs["splits"].items() if v == s) for s in ("train", "val", "test")}
    console.print(f"cube holds {attrs['n_patches']} patches of {attrs['patch_size']} px from "
                  f"{len(attrs['scenes'])} scenes (train {len(by_split['train'])}, val {len(by_split['val'])}, "
                  f"test {len(by_split['test'])}); bands {', '.join(attrs['band_names'])}; norm mean "
                  f"{', '.join(f'{m:.4g}' for m in attrs['norm']['mean'])}, std "
                  f"{', '.join(f'{s:.4g}' for s in attrs['norm']['std'])} (over {attrs['norm']['over']} patches)",
                  highlight=False)


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        console.print(f"[yellow]warning:[/] {escape(str(w.message))}", highlight=False)


@app.command()
def sample(
    scenes_dir: Annotated[str, typer.Argument(help="Folder of scene GeoTIFFs (Sentinel-1 product names); "
                                                   "a local path or an s3:// prefix, as CHARTS_DIR.")],
    charts_dir: Annotated[str | None, typer.Argument(
        help="Folder of ice charts seaice_s1_<start>.shp (default: SCENES_DIR).")] = None,
    cube: Annotated[Path, typer.Option("--cube", "-o", help="Zarr training cube to create or append to.")] = Path("cube.zarr"),
    patch_size: Annotated[int, typer.Option("--patch-size", min=1, help="Patch edge in pixels.")] = 64,
    mode: Annotated[SamplerMode, typer.Option("--mode", help="random: per-class quota; grid: every labelled "
                                              "position on a stride.")] = SamplerMode.random,
    samples_per_label: Annotated[int, typer.Option("--samples-per-label", min=1,
                                                   help="random: patches per class and scene.")] = 100,
    max_tries: Annotated[int | None, typer.Option("--max-tries", min=1, help="random: the seed's timeout, "
                                                  "uniform draws per scene (default: no limit).")] = None,
    stride: Annotated[int | None, typer.Option("--stride", min=1, help="grid: step in pixels (default: "
                                               "the patch size; smaller overlaps).")] = None,
    max_nodata: Annotated[float, typer.Option("--max-nodata", min=0.0, max=1.0,
                                              help="Largest nodata fraction of a patch.")] = 0.1,
    min_labelled: Annotated[float, typer.Option("--min-labelled", min=0.0, max=1.0,
                                                help="Smallest labelled fraction of a patch.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random sampler.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace scenes already in the cube "
                                            "(default: skip them).")] = False,
    chunk: Annotated[int | None, typer.Option("--chunk", min=1, help="Chunk edge in pixels (default: "
                                              "multiples of the file's tiles near 2048).")] = None,
    split_fractions: SplitFractionsOption = "0.8,0.2,0",
    split: SplitOption = None,
    class_map: ClassMapOption = None,
    bands: BandsOption = None,
    cluster: ClusterOption = ClusterKind.local,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    tls_dir: TlsDirOption = None,
) -> None:
    """Cut labelled patches from scenes and their ice charts into a Zarr training cube (appendable).

    Patches are chosen from the rasterized charts (centre-pixel class, as the seed) and cut chunk by
    chunk on a Dask cluster. Scenes already in the cube are skipped; an interrupted run is finished by
    running it again.
    """
    from polarxr.cube import plan_cube
    from polarxr.progress import make_progress
    from polarxr.samplers import SamplerConfig
    from polarxr.scenes import scene_catalog

    sampler = SamplerConfig(mode=mode.value, patch_size=patch_size, samples_per_label=samples_per_label,
                            max_tries=max_tries, stride=stride, max_nodata=max_nodata, min_labelled=min_labelled,
                            seed=seed)
    split_config = _split_config(split_fractions, split)
    catalog = scene_catalog(scenes_dir, charts_dir)
    if catalog.empty:
        from polarxr.errors import SceneError

        raise SceneError(scenes_dir, "holds no scene GeoTIFFs (*.tif)")
    plan = plan_cube(catalog, cube, sampler, split_config, overwrite=overwrite, chunks=chunk, class_map=class_map,
                     bands=band_names(bands))
    with client_from_options(cluster, scheduler, workers, tls_dir), make_progress() as progress, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category=UserWarning)
        task = progress.add_task("scenes", total=len(catalog))

        def on_progress(name: str, stage: str) -> None:
            progress.update(task, description=f"{stage} {_short_name(name)}")
            if stage in ("done", "skipped"):
                progress.advance(task)

        results = plan.run(on_progress, on_wait=lambda message: progress.console.print(message))
        progress.update(task, description="scenes")
    _print_warnings(caught)
    _summary(results, cube)


@app.command("import-patches")
def import_patches(
    seed_dir: Annotated[Path, typer.Argument(
        help="Folder of a seed patch set: meta.csv or meta.npy, and <idx>.png there or in images/.")],
    cube: Annotated[Path, typer.Option("--cube", "-o", help="Zarr training cube to create or append to.")] = Path("cube.zarr"),
    split_index: Annotated[str | None, typer.Option(
        "--split-index", metavar="F | F,F | SPLIT=LO:HI,...", rich_help_panel=SPLIT_PANEL,
        help="Split by row (the set has no scenes): 0.8 puts the first 80 % of the rows in train and the "
             "rest in val; 0.7,0.2 train, val and the rest test; or ranges train=0:6000,val=6000:. Each "
             "range becomes one cube scene NAME[lo:hi].")] = None,
    max_nodata: Annotated[float, typer.Option(
        "--max-nodata", min=0.0, max=1.0, help="Flag patches with a larger nodata fraction (pixels 0 in any band): "
        "kept in the cube, left out of training.")] = 0.5,
    meta: Annotated[Path | None, typer.Option(
        "--meta", help="The seed's meta file (default: SEED_DIR/meta.csv or meta.npy; format detected).")] = None,
    scene: Annotated[str | None, typer.Option("--scene", help="Scene name of these patches (default: the folder name).")] = None,
    band_names: Annotated[str | None, typer.Option("--band-names", metavar="A,B,C",
                                                   help="Band names (default: red,green,blue).")] = None,
    bgr: Annotated[bool, typer.Option("--bgr/--rgb", help="PNGs written by cv2 (BGR): reverse the channels "
                                      "back into the scene's band order.")] = True,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Read a meta.npy of Python objects "
                                               "(the seed's grid layout); only for files you trust.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the scene(s) if already in the cube.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="PNG decoding threads (default: CPUs).")] = None,
    split_fractions: SplitFractionsOption = "0.8,0.2,0",
    split: SplitOption = None,
) -> None:
    """Import a patch set made by the seed (PNG patches + meta rows idx x y label) into a cube.

    Dense labels are unknown there (stored as 255); the patch label is the seed's (noisy: its label
    position is the patch's transpose, recorded in the cube attrs with the PNGs' BGR order).
    """
    from polarxr.seedcompat import import_seed_patches

    names = tuple(b.strip() for b in band_names.split(",")) if band_names else None
    results = import_seed_patches(seed_dir, cube, meta=meta, scene=scene, band_names=names, bgr=bgr,
                                  allow_pickle=allow_pickle, split=_split_config(split_fractions, split),
                                  split_index=split_index, max_nodata=max_nodata, overwrite=overwrite,
                                  threads=threads)
    _summary(results, cube)
    _flag_summary(cube, [r.name for r in results], max_nodata)


def _flag_summary(cube: Path, names: list[str], max_nodata: float) -> None:
    from polarxr.cube import open_cube_group

    root, _ = open_cube_group(cube)
    records = [r for r in root.attrs.get("scene_records", []) if r["name"] in names]
    flagged = sum(len(r.get("flagged", [])) for r in records)
    total = sum(r["count"] for r in records)
    console.print(f"flagged {flagged} of {total} patches as more than {max_nodata:.0%} nodata: kept in the cube, "
                  "left out of training and of the counts above", highlight=False)
