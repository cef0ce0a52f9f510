"""Commands for models: ``train`` (U-Net or the seed's patch classifier on a cube) and ``evaluate``."""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from polarxr.cli.app import app
from polarxr.cli.options import (ClassMapOption, ClusterKind, ClusterOption, SchedulerOption, TlsDirOption,
                                 WorkersOption, client_from_options)

console = Console()


class ModelName(StrEnum):
    """Models ``polarxr train`` can train."""

    unet = "unet"
    patchcnn = "patchcnn"


class DeviceName(StrEnum):
    """Torch devices for training."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Weighting(StrEnum):
    """Class weighting of the training loss."""

    inverse = "inverse"
    none = "none"


class TrainSplits(StrEnum):
    """Splits whose patches train the model."""

    train = "train"
    train_val = "train+val"


class Schedule(StrEnum):
    """Learning-rate schedules."""

    cosine = "cosine"
    constant = "constant"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


class _EpochProgress:
    """A bar per epoch with the running loss, and one line of validation scores when an epoch ends."""

    def __init__(self, bar, model: str):
        self.bar, self.model, self.task, self.steps = bar, model, None, None

    def __call__(self, event: str, info: dict) -> None:
        if event == "start":
            self.steps = info["steps"]
            self.bar.console.print(f"training [bold]{self.model}[/] on {info['device']}: epochs "
                                   f"{info['start_epoch'] + 1}..{info['epochs']}, {self.steps} steps each")
        elif event == "step":
            if info["step"] == 1:
                if self.task is not None:
                    self.bar.remove_task(self.task)
                self.task = self.bar.add_task(f"epoch {info['epoch']}", total=self.steps)
            self.bar.update(self.task, advance=1, description=f"epoch {info['epoch']} loss {info['loss']:.4f}")
        elif event == "epoch":
            self.bar.console.print(
                f"epoch {info['epoch']}: train loss {_fmt(info['train_loss'])}  val loss {_fmt(info['val_loss'])}  "
                f"val mIoU {_fmt(info['val_mean_iou'])}  val OA {_fmt(info['val_overall_accuracy'])}  "
                f"({info['seconds']:.1f} s)")


@app.command("train")
def train_command(
    cube: Annotated[Path, typer.Option("--cube", help="Zarr training cube (polarxr cube ...).")],
    model: Annotated[ModelName | None, typer.Option(
        "--model", help="unet (segmenter) or patchcnn (seed baseline); default unet, or the --init "
        "checkpoint's model.")] = None,
    run_number: Annotated[int, typer.Option(
        "--run-number", help="Run number; names the default run folder.")] = 0,
    epochs: Annotated[int, typer.Option(
        "--epochs", min=1, help="Total epochs (a resumed run stops here too).")] = 3,
    save_interval: Annotated[int, typer.Option(
        "--save-interval", min=1, help="Keep checkpoint_epoch{N}.pt every N epochs.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Patches per batch.")] = 28,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="AdamW learning rate (peak).")] = 1e-3,
    device: Annotated[DeviceName, typer.Option(
        "--device", help="auto: CUDA when available, else CPU.")] = DeviceName.auto,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run folder (default runs/run{RUN_NUMBER}).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of weights, shuffling, augmentation.")] = 0,
    width: Annotated[int | None, typer.Option(
        "--width", min=1, help="Channels of the first layer (default: the model's, 16 / 32).")] = None,
    depth: Annotated[int | None, typer.Option("--depth", min=1, help="U-Net downsamplings (default 3).")] = None,
    pool: Annotated[int | None, typer.Option(
        "--pool", min=1, help="U-Net input average-pooling (multi-look) factor: 4 widens the context 4x "
        "for 1/16 of the compute; 1 = full-resolution U-Net.")] = 4,
    schedule: Annotated[Schedule, typer.Option(
        "--schedule", help="Learning rate per step: cosine (decay to 1 %) or constant.")] = Schedule.cosine,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps-per-epoch", min=1, help="Cap batches per epoch.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume", help="Continue from RUN/last.pt when present.")] = True,
    init: Annotated[Path | None, typer.Option(
        "--init", help="Fine-tune from this checkpoint (its model and weights; the cube must have the same "
        "bands). Optimizer, schedule and normalisation start afresh from this cube.")] = None,
    centre_window: Annotated[int | None, typer.Option(
        "--centre-window", min=1, help="Segmenter on patch labels: supervise the central N x N px with the "
        "patch label, ignore the rest (default 8 when the cube has no dense labels).")] = None,
    weighting: Annotated[Weighting, typer.Option(
        "--class-weights", help="inverse: inverse-frequency class weights (rare classes count more: mean IoU); "
        "none: plain cross entropy, as the seed (overall accuracy).")] = Weighting.inverse,
    label_smoothing: Annotated[float, typer.Option(
        "--label-smoothing", min=0.0, max=0.99, help="Label smoothing eps of the cross entropy (target 1 - eps "
        "on the label, eps / 3 on every class): bounds what a wrong label costs; 0.1 for noisy labels such as "
        "the seed's patch set.")] = 0.0,
    train_splits: Annotated[TrainSplits, typer.Option(
        "--train-splits", help="train, or train+val: the final model once every setting was chosen on val "
        "(no validation then: no best.pt; last.pt is the model).")] = TrainSplits.train,
    intensity_jitter: Annotated[float, typer.Option(
        "--intensity-jitter", min=0.0, max=2.0, help="Radiometric domain randomisation: each training patch's "
        "bands get a random gain exp(s N) and offset s N (normalised units, s this value; 0 = off). 0.3 for a "
        "model trained on polarxr synth scenes and meant for the real product.")] = 0.0,
    object_weight: Annotated[float, typer.Option(
        "--object-weight", min=1.0, max=1000.0, help="Segmenter: loss weight of icebergs (ice objects of at "
        "most 625 px surrounded by sea, as polarxr icebergs counts them) and their ring of sea, relative to "
        "other pixels (1 = off). They are a thousandth of the pixels: weigh them for a model meant to count "
        "them.")] = 1.0,
    batchnorm: Annotated[bool, typer.Option(
        "--batchnorm", help="Patch classifier: batch normalisation after each convolution (its statistics "
        "can then be re-estimated on unlabelled patches of another domain: polarxr adapt-bn).")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="torch CPU threads (default: torch's). On a small or busy machine 1 can be "
        "several times faster than more, as OpenMP threads spin-wait for cores.")] = None,
) -> None:
    """Train a model on a training cube; validate on its held-out scenes each epoch; write checkpoints.

    Run folder: checkpoint_epoch{N}.pt, last.pt, best.pt, log.csv, log.json, learning_curves.png.
    """
    from polarxr.progress import make_progress
    from polarxr.train import train

    run_dir = out if out is not None else Path("runs") / f"run{run_number}"
    options = {k: v for k, v in {"width": width, "depth": depth, "pool": pool}.items() if v is not None}
    if init is not None:
        options = {k: v for k, v in {"width": width, "depth": depth}.items() if v is not None}
    if model == ModelName.patchcnn:
        options.pop("depth", None)
        options.pop("pool", None)
    if batchnorm:
        if model != ModelName.patchcnn:
            from polarxr.errors import PolarxrError

            raise PolarxrError(None, "--batchnorm is an option of --model patchcnn (the U-Net always has batch "
                                     "normalisation)")
        options["batchnorm"] = True
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with make_progress() as bar:
        result = train(cube, run_dir, model=None if model is None and init else str(model or "unet"), epochs=epochs, batch_size=batch_size, lr=lr,
                       device=str(device), seed=seed, save_interval=save_interval, run_number=run_number,
                       resume=resume, max_steps_per_epoch=max_steps, progress=_EpochProgress(bar, str(model or "model")),
                       model_options=options, schedule=str(schedule), init=init, centre_window=centre_window,
                       weighting=str(weighting), label_smoothing=label_smoothing,
                       train_splits=str(train_splits), intensity_jitter=intensity_jitter,
                       object_weight=object_weight)
    table = Table(title=f"{result.model} run {run_dir}")
    columns = ["epoch", "train_loss", "val_loss", "val_mean_iou", "val_iou_land", "val_iou_sea", "val_iou_ice",
               "val_overall_accuracy"]
    for column in columns:
        table.add_column(column.removeprefix("val_").replace("_", " ") if column != "val_loss" else "val loss",
                         justify="right")
    for record in result.history:
        table.add_row(*(_fmt(record[c]) for c in columns))
    console.print(table)
    if result.start_epoch >= epochs:
        console.print(f"[yellow]nothing to train: {result.last_checkpoint} is already at epoch {result.start_epoch}")
    console.print(f"checkpoint: [bold]{result.last_checkpoint}[/]  best: {result.best_checkpoint}  "
                  f"log: {result.log_csv}  curves: {result.curves_png}")


@app.command("evaluate")
def evaluate_command(
    prediction: Annotated[Path, typer.Argument(help="Class map GeoTIFF (uint8 L=0, W=1, I=2, 255 nodata).")],
    chart: Annotated[Path, typer.Argument(help="Ice chart shapefile (poly_type L/W/I) of the same scene.")],
    chunk: Annotated[int | None, typer.Option(
        "--chunk", min=64, help="Chunk edge in px (default: file tiles near 2048).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics to this JSON file.")] = None,
    class_map: ClassMapOption = None,
    cluster: ClusterOption = ClusterKind.local,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    tls_dir: TlsDirOption = None,
) -> None:
    """Score a class map against an ice chart: per-class IoU/F1/precision/recall, mean IoU, accuracy.

    The chart is rasterized chunk by chunk onto the map's grid; pixels with no prediction or no chart
    polygon are left out.
    """
    from polarxr.evaluate import evaluate_prediction, format_metrics_table, to_json
    from polarxr.io import atomic_path
    from polarxr.progress import dask_progress

    with client_from_options(cluster, scheduler, workers, tls_dir), dask_progress(f"evaluating {prediction.name}"):
        metrics = evaluate_prediction(prediction, chart, chunks=chunk, class_map=class_map)
    console.print(format_metrics_table(metrics, title=f"{prediction.name} vs {chart.name}"))
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(to_json(metrics))
        console.print(f"metrics written to [bold]{json_out}[/]")
