"""The main job end to end on the embedded synthetic default (what ``polarxr demo`` runs).

synthesize scenes + charts -> rasterize a chart -> Zarr training cube -> train a small U-Net ->
segment held-out scenes blockwise on the cluster -> evaluate against their charts -> report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from distributed import Client

from polarxr.classes import CLASS_NAMES
from polarxr.cube import SplitConfig, build_cube
from polarxr.evaluate import metrics_from_confusion
from polarxr.io import atomic_path, write_cog
from polarxr.labels import labels_for_scene
from polarxr.predict import predict_scenes
from polarxr.samplers import SamplerConfig
from polarxr.synthetic import make_dataset, write_detail_chart
from polarxr.train import train


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo: small enough for a 2-core laptop in a few minutes."""

    train_scenes: int = 8
    test_scenes: int = 2
    size: tuple[int, int] = (1024, 1024)
    seed: int = 0
    patch_size: int = 256
    samples_per_label: int = 60
    epochs: int = 4
    batch_size: int = 8
    lr: float = 2e-3
    width: int = 16
    depth: int = 3
    #: input multi-look factor of the U-Net: 4 x 4 pixels averaged widen its view to ~17 km, which the
    #: wind-roughened sea needs to be told from ice, for 1/16 of the compute
    pool: int = 4
    #: channels of the U-Net's full-resolution refinement (0: none): the multi-looked U-Net alone draws
    #: nothing smaller than ~2 of its 160 m pixels, so 2 x 2 px icebergs and narrow glacier fjords vanish
    refine: int = 8
    #: training scenes with tidewater glaciers and their calved icebergs (what the observations measure)
    glaciers: bool = True
    #: train on the ungeneralised charts of the synthetic truth (:func:`polarxr.synthetic.write_detail_chart`):
    #: the generalised charts drop floes, small islands and icebergs, which teaches a model to paint them over
    #: as sea; the held-out scenes are still evaluated against the generalised charts
    detail_charts: bool = True
    chunk: int = 512
    #: torch threads while training on CPU: OpenMP spin-waits make 2 threads on a busy 2-core machine
    #: several times slower than 1 (measured 2.6 s vs 0.4 s a step), and the demo shares the machine
    #: with its dask workers
    torch_threads: int = 1


@dataclass
class DemoReport:
    """Where the demo wrote its outputs, and what it measured."""

    workdir: Path
    report: Path
    metrics: dict
    per_scene: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def run_demo(workdir: str | Path, client: Client, config: DemoConfig = DemoConfig(),
             say: Callable[[str], None] = print) -> DemoReport:
    """Run every stage into ``workdir`` on ``client``; returns the report (also written as ``report.md``).

    Re-running reuses what is complete (scenes, cube scenes, checkpoints) and redoes the rest.
    """
    workdir = Path(workdir)
    if config.train_scenes < 2 or config.test_scenes < 1:
        from polarxr.errors import PolarxrError

        raise PolarxrError(None, f"the demo needs at least 2 training scenes (one of them validates) and 1 held-out "
                                 f"scene, got {config.train_scenes} and {config.test_scenes}")
    seconds: dict[str, float] = {}

    def stage(name: str):
        seconds[name] = time.perf_counter()
        say(f"[bold]{name}[/]")

    def done(name: str):
        seconds[name] = time.perf_counter() - seconds[name]

    stage("synthesize")
    scenes = make_dataset(workdir / "scenes", n_scenes=config.train_scenes + config.test_scenes,
                          size=config.size, seed=config.seed, glaciers=config.glaciers)
    training, held_out = scenes[: config.train_scenes], scenes[config.train_scenes:]
    charts = [write_detail_chart(s, workdir / "scenes" / "detail") if config.detail_charts else s.chart
              for s in training]
    done("synthesize")

    stage("labels")
    first = training[0]
    _, labels = labels_for_scene(first.scene, charts[0], chunks=config.chunk)
    labels_path = write_cog(labels, workdir / "labels" / f"{first.scene.stem}_labels.tif", nodata=255,
                            categorical=True)
    from polarxr.quicklook import scene_quicklook

    scene_quicklook(first.scene, workdir / "labels" / f"{first.scene.stem}_chart.png", chart=charts[0])
    done("labels")

    stage("cube")
    sampler = SamplerConfig(mode="random", patch_size=config.patch_size,
                            samples_per_label=config.samples_per_label, max_nodata=0.5, seed=config.seed)
    cube = workdir / "cube.zarr"
    split = SplitConfig(fractions=(config.train_scenes - 1, 1, 0), assign=((training[-1].scene.stem, "val"),))
    build_cube([(s.scene, chart) for s, chart in zip(training, charts)], cube, sampler, split, chunks=config.chunk)
    done("cube")

    stage("train")
    def epoch_line(event: str, info: dict) -> None:
        if event == "epoch":
            say(f"  epoch {info['epoch']}/{config.epochs}: train loss {info['train_loss']:.3f}, validation mean IoU "
                f"{info['val_mean_iou']:.3f} ({info['seconds']:.0f} s)")

    threads = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        run = train(cube, workdir / "run", model="unet", epochs=config.epochs, batch_size=config.batch_size,
                    lr=config.lr, device="auto", seed=config.seed, progress=epoch_line,
                    model_options={"width": config.width, "depth": config.depth, "pool": config.pool,
                                   "refine": config.refine})
    finally:
        torch.set_num_threads(threads)
    checkpoint = run.last_checkpoint
    done("train")

    stage("predict")
    results = predict_scenes([s.scene for s in held_out], checkpoint, workdir / "predictions", client,
                             chunk=config.chunk, charts=[s.chart for s in held_out])
    done("predict")

    stage("evaluate")
    per_scene = {r.scene.stem: r.metrics for r in results}
    metrics = metrics_from_confusion(sum(np.asarray(m["confusion_matrix"]) for m in per_scene.values()))
    done("evaluate")

    report = _write_report(workdir, config, metrics, results, labels_path, seconds)
    return DemoReport(workdir, report, metrics, per_scene, seconds)


def _write_report(workdir: Path, config: DemoConfig, metrics: dict, results, labels_path: Path,
                  seconds: dict) -> Path:
    lines = [
        "# polarxr demo report",
        "",
        f"Synthetic Sentinel-1 EW scenes of {config.size[0]} x {config.size[1]} px (40 m): "
        f"{config.train_scenes} for training (one of them for validation), {config.test_scenes} held out.",
        "",
        "All figures here are on **synthetic** imagery: they show that the code works, not how well the model "
        "does on real scenes (see the README's figures on the seed's real patches, `benchmarks/real_patches.py`).",
        "",
        "## Held-out scenes: U-Net against the charts",
        "",
        "| class | IoU | F1 | precision | recall |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in CLASS_NAMES.values():
        score = metrics["per_class"][name]
        lines.append(f"| {name} | {score['iou']:.3f} | {score['f1']:.3f} | {score['precision']:.3f} | "
                     f"{score['recall']:.3f} |")
    lines += ["", f"Mean IoU **{metrics['mean_iou']:.3f}**, overall accuracy **{metrics['overall_accuracy']:.3f}**.", ""]
    lines += ["## Outputs", "", f"- labels of a training scene: `{labels_path.relative_to(workdir)}`"]
    for result in results:
        lines.append(f"- `{result.class_map.relative_to(workdir)}` (mean IoU {result.metrics['mean_iou']:.3f}), "
                     f"quicklook `{result.quicklook.relative_to(workdir)}`")
    lines += ["", "## Time per stage", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {name} | {value:.1f} |" for name, value in seconds.items()]
    lines += ["", "![quicklook](" + str(results[0].quicklook.relative_to(workdir)) + ")", ""]
    target = workdir / "report.md"
    with atomic_path(target) as tmp:
        tmp.write_text("\n".join(lines))
    return target


__all__ = ["DemoConfig", "DemoReport", "run_demo"]
