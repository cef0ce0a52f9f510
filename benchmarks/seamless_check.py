"""Seamlessness on this machine's device: blockwise probabilities versus one whole-array run.

    python benchmarks/seamless_check.py --size 2000 1800 --chunks 256 480 1024 2048 [--pool 1 --chunks 64 200 512]

Prints, per chunking, the largest absolute difference of the class probabilities and the share of pixels
whose class differs from the whole-array run (CUDA runs in bf16 autocast; CPU in float32).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(2000, 1800))
    parser.add_argument("--chunks", type=int, nargs="+", default=[256, 480, 1024, 2048],
                        help="block edges in px: multiples of pool x 2**depth, at least the halo")
    parser.add_argument("--pool", type=int, default=4, help="the U-Net's multi-look factor")
    args = parser.parse_args()

    from common import random_checkpoint

    from polarxr.predict import normalise, probabilities, segment_array
    from polarxr.scenes import open_scene
    from polarxr.synthetic import make_scene
    from polarxr.checkpoints import load_checkpoint

    workdir = Path(tempfile.mkdtemp(prefix="polarxr-seamless-"))
    scene_path = make_scene(workdir, seed=5, size=tuple(args.size)).scene
    scene = open_scene(scene_path)
    checkpoint = random_checkpoint(workdir / "unet.pt", [str(b) for b in scene.band.values], pool=args.pool)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, meta = load_checkpoint(checkpoint, device=device)
    image, valid = normalise(scene.values, meta, scene.rio.nodata)
    expected = segment_array(model, image, model.pad_multiple, device)
    table = Table(title=f"Blockwise vs whole-array, {args.size[0]} x {args.size[1]} px on {device}, halo {model.halo} px")
    for column in ("chunk", "blocks", "max |dp|", "pixels with another class"):
        table.add_column(column, justify="right")
    for chunk in args.chunks:
        probs = probabilities(scene, checkpoint, chunk=chunk)
        actual = probs.compute(scheduler="threads").values
        diff = np.abs(actual[:, valid] - expected[:, valid]).max()
        other = (actual[:, valid].argmax(0) != expected[:, valid].argmax(0)).mean()
        table.add_row(str(chunk), str(int(np.prod(probs.data.numblocks[1:]))), f"{diff:.2e}", f"{other:.2e}")
    Console().print(table)


if __name__ == "__main__":
    main()
