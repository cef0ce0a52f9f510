"""Commands adapting a trained model to new imagery without its labels: ``adapt-bn`` (AdaBN)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from polarxr.cli.app import app

console = Console()


class AdaptSplit(StrEnum):
    """Splits whose patches ``adapt-bn`` takes its statistics from."""

    train = "train"
    val = "val"
    test = "test"
    all = "all"


class InputNorm(StrEnum):
    """Input normalisation of the adapted checkpoint."""

    cube = "cube"
    checkpoint = "checkpoint"


@app.command("adapt-bn")
def adapt_bn_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint of polarxr train (e.g. trained on synthetic scenes).")],
    cube: Annotated[Path, typer.Option("--cube", help="Zarr cube of the new imagery (its labels are not read).")],
    out: Annotated[Path, typer.Option("--out", help="Adapted checkpoint to write.")],
    split: Annotated[AdaptSplit, typer.Option("--split", help="Patches whose statistics are taken.")] = AdaptSplit.all,
    input_norm: Annotated[InputNorm, typer.Option(
        "--input-norm", help="cube: also take the cube's per-band input normalisation; checkpoint: keep the "
        "checkpoint's.")] = InputNorm.cube,
    max_patches: Annotated[int | None, typer.Option(
        "--max-patches", min=1, help="At most this many patches, drawn at random (default: all).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
) -> None:
    """Re-estimate a model's batch-norm statistics on unlabelled patches of new imagery (AdaBN).

    Every weight stays as trained; only the per-layer means and variances (and, by default, the per-band
    input normalisation) are measured again on the cube's images, patches flagged as mostly nodata left
    out. No label is read: this is unsupervised domain adaptation, e.g. of a model trained on polarxr
    synth scenes to the real product. The result is an ordinary checkpoint (predict, evaluate-patches).
    """
    from polarxr.adaptation import adapt_batchnorm

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    record = adapt_batchnorm(checkpoint, cube, out, split=str(split), input_norm=str(input_norm),
                             max_patches=max_patches)
    console.print(f"adapted {record['batchnorm_layers']} batch-norm layers on {record['patches']} patches of "
                  f"{cube} ({split}), input normalisation: {input_norm}; no label read -> [bold]{out}[/]")
