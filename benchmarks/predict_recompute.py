"""How many times `polarxr predict` runs the model over each pixel.

Counts the pixels that pass through the model (``polarxr.predict._forward``, windows with their halo) while
one scene is predicted as ``predict`` does it: stage 1, a task per block that runs the model and writes the
block (class band staged, probabilities into the Zarr); stage 2, the COG from the staged class band. The
figure should be the scene's pixels times the halo's share only (once over); more means recomputation, as
when the COG, the Zarr and the markers each consumed the inference (18.69 Mpx for 6.23 at the defaults).

    python benchmarks/predict_recompute.py [--size 2048 2048] [--chunk 1024]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import random_checkpoint
from distributed import Client, LocalCluster
from rich.console import Console
from rich.table import Table

from polarxr import predict
from polarxr.scenes import open_scene
from polarxr.synthetic import make_scene


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(2048, 2048), help="synthetic scene size, px")
    parser.add_argument("--chunk", type=int, default=1024, help="block edge, px")
    args = parser.parse_args(argv)
    pixels: list[int] = []
    forward = predict._forward

    def counted(model, windows, *rest, **kwargs):
        pixels.append(windows.shape[0] * windows.shape[-2] * windows.shape[-1])
        return forward(model, windows, *rest, **kwargs)

    predict._forward = counted  # the kernel looks _forward up at call time; threads share this process
    table = Table(title=f"model pixels per output, {args.size[0]} x {args.size[1]} scene, chunk {args.chunk}")
    for column in ("outputs computed", "Mpx through the model", "x the scene"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        work = Path(tmp)
        scene_path = make_scene(work / "scene", seed=3, size=tuple(args.size)).scene
        checkpoint = random_checkpoint(work / "model.pt", ["HH", "HV", "HH-HV"])
        scene = open_scene(scene_path, chunks={"band": -1, "y": args.chunk, "x": args.chunk})
        encoded = predict.probabilities(scene, checkpoint, chunk=args.chunk, encode=True).data
        plan = predict._plan_scene(scene, encoded, work / "c.tif", work / "p.zarr", {}, args.chunk)
        for name, objects in (("stage 1: blocks (model, Zarr, staged classes)", plan.markers),
                              ("stage 2: COG from the staged classes", [plan.cog])):
            pixels.clear()
            client.gather(client.compute(objects))
            mpx = sum(pixels) / 1e6
            table.add_row(name, f"{mpx:.2f}", f"{mpx / (args.size[0] * args.size[1] / 1e6):.2f}")
        plan.outputs.__exit__(RuntimeError, RuntimeError("measurement only: discard"), None)
    predict._forward = forward
    Console().print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
