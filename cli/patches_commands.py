"""Commands on the patches of a training cube: ``evaluate-patches`` (a checkpoint's score per patch)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from polarxr.cli.app import app

console = Console()


class PatchSplit(StrEnum):
    """Splits ``evaluate-patches`` scores."""

    train = "train"
    val = "val"
    test = "test"
    all = "all"


def _score(value) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


@app.command("evaluate-patches")
def evaluate_patches_command(
    cube: Annotated[Path, typer.Argument(help="Zarr training cube (polarxr sample / import-patches).")],
    checkpoint: Annotated[list[Path], typer.Option(
        "--checkpoint", help="Checkpoint of polarxr train; repeat it for an ensemble (class probabilities "
        "averaged over the checkpoints).")],
    split: Annotated[PatchSplit, typer.Option("--split", help="Patches to score.")] = PatchSplit.val,
    json_out: Annotated[bool, typer.Option("--json", help="Print the scores as JSON only.")] = False,
    window: Annotated[int, typer.Option("--window", min=1, help="Segmenters: edge (px) of the central window "
                                        "whose mean probability is the patch class.")] = 8,
    exclude_flagged: Annotated[bool, typer.Option(
        "--exclude-flagged", help="Leave out patches flagged at import (default: score them, report apart).")] = False,
    tta: Annotated[bool, typer.Option(
        "--tta", help="Test-time augmentation: average the class probabilities over the 8 flips / rotations "
        "of each patch (8x the compute).")] = False,
    device: Annotated[str, typer.Option("--device", help="torch device.")] = "cpu",
) -> None:
    """Score a checkpoint on a cube's patches: accuracy, per-class precision/recall/F1, confusion matrix.

    A patch's truth is its patch label; a segmenter's answer is the class of the central 8 x 8 px window
    (argmax of the mean softmax there), a patch classifier's its output. With --tta and several
    --checkpoint, the class probabilities are averaged over the flips / rotations and the checkpoints.
    """
    from polarxr.evaluate import to_json
    from polarxr.patch_evaluation import evaluate_patches

    scores = evaluate_patches(cube, checkpoint[0] if len(checkpoint) == 1 else checkpoint, str(split),
                              device=device, window=window, exclude_flagged=exclude_flagged, tta=tta)
    if json_out:
        typer.echo(to_json(scores))
        return
    names = scores["class_names"]
    names_ck = ", ".join(str(c) for c in checkpoint)
    table = Table(title=f"{names_ck}{' (TTA)' if tta else ''} on {cube} ({split}: {scores['n_patches']} patches, "
                        f"{scores['n_flagged']} flagged)",
                  caption=f"accuracy {_score(scores['accuracy'])}, mean F1 {_score(scores['mean_f1'])}; "
                          f"without flagged patches "
                          f"{_score(scores['unflagged']['accuracy'] if scores['unflagged'] else None)}")
    for column in ("class", "precision", "recall", "F1", "support", *(f"-> {n}" for n in names)):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in zip(names, scores["confusion_matrix"]):
        s = scores["per_class"][name]
        table.add_row(name, _score(s["precision"]), _score(s["recall"]), _score(s["f1"]), str(s["support"]),
                      *(str(v) for v in row))
    console.print(table)
