"""Train a demo-sized U-Net on more synthetic scenes / epochs than ``polarxr demo``, resumably, in slices.

    python benchmarks/demo_model.py --workdir /tmp/dm20 --train-scenes 20 --epochs 6 --stop-after 2

The scenes, charts, cube and training are the demo's own (:mod:`polarxr.demo`: ``make_dataset`` with
glaciers, ungeneralised detail charts, random sampler of ``--patch-size`` px patches, the last training
scene validates, U-Net width / depth / pool / refine as given, AdamW + cosine over ``--epochs``); only the
numbers differ. ``--stop-after K`` ends the run after K new epochs (``last.pt`` written): a re-run with the
same arguments resumes after the last finished epoch on the same cosine schedule, so a long training fits
into short slices of a shared machine. The model for the observation goals is ``WORKDIR/run/last.pt``
(``benchmarks/observations_bench.py --checkpoint``); ``--run NAME`` trains another model on the same cube.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


class _Stop(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--train-scenes", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes, the sampler and (by default) training")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="seed of the weights' initialisation and the batch order only (default: --seed): "
                             "several trainings on one cube, to separate a setting from training's randomness")
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--samples-per-label", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--stop-after", type=int, default=0, help="stop after this many new epochs (0: run all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--refine", type=int, default=8)
    parser.add_argument("--object-weight", type=float, default=1.0,
                        help="loss weight of icebergs and their ring of sea (polarxr train --object-weight; 1: off)")
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--run", default="run", help="run folder inside --workdir (several models on one cube)")
    args = parser.parse_args()

    from polarxr.cube import SplitConfig, build_cube
    from polarxr.samplers import SamplerConfig
    from polarxr.synthetic import make_dataset, write_detail_chart
    from polarxr.train import train

    work = args.workdir
    started = time.perf_counter()
    scenes = make_dataset(work / "scenes", n_scenes=args.train_scenes, size=(args.size, args.size), seed=args.seed,
                          glaciers=True)
    charts = [write_detail_chart(s, work / "scenes" / "detail") for s in scenes]
    print(f"{len(scenes)} scenes + detail charts: {time.perf_counter() - started:.0f} s", flush=True)
    cube = work / "cube.zarr"
    if not (cube / ".done").exists():
        tic = time.perf_counter()
        sampler = SamplerConfig(mode="random", patch_size=args.patch_size, samples_per_label=args.samples_per_label,
                                max_nodata=0.5, seed=args.seed)
        split = SplitConfig(fractions=(len(scenes) - 1, 1, 0), assign=((scenes[-1].scene.stem, "val"),))
        build_cube([(s.scene, c) for s, c in zip(scenes, charts)], cube, sampler, split, chunks=args.chunk)
        (cube / ".done").write_text("ok")
        print(f"cube: {time.perf_counter() - tic:.0f} s", flush=True)

    new = []

    def progress(event: str, info: dict) -> None:
        if event == "epoch":
            print(f"  epoch {info['epoch']}/{args.epochs}: train loss {info['train_loss']:.3f}, validation mean IoU "
                  f"{info['val_mean_iou']:.3f} ({info['seconds']:.0f} s)", flush=True)
            new.append(info["epoch"])
            if args.stop_after and len(new) >= args.stop_after and info["epoch"] < args.epochs:
                raise _Stop

    torch.set_num_threads(1)
    try:
        train(cube, work / args.run, model="unet", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
              device="auto", seed=args.seed if args.train_seed is None else args.train_seed, progress=progress,
              object_weight=args.object_weight,
              model_options={"width": args.width, "depth": args.depth, "pool": args.pool, "refine": args.refine})
        print(f"training complete: {work / args.run / 'last.pt'}")
    except _Stop:
        print(f"stopped after epoch {new[-1]} of {args.epochs}; re-run to resume")


if __name__ == "__main__":
    main()
