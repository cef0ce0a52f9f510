"""What a block's halo costs the model, in one process: the U-Net on a 2048 px block with and without its halo.

    python benchmarks/halo_kernel.py [--block 2048] [--refine 0 8] [--repeat 5]

For the demo's U-Net (width 16, depth 3, pool 4, random weights; ``--refine`` channels of full-resolution
refinement), one torch thread, times (min of ``--repeat``, after a warm-up) the model part of predict's block
kernel, ``UNet.crop_strips`` over strips of 512 rows (``polarxr.predict.ENCODE_STRIP``), on:

- the block alone (``--no-seamless``: no halo);
- the block with its halo on every side, decoders cut to the block (``UNet.coarse_logits_over``, what predict runs);
- the block with its halo, decoders over the whole window (``UNet.coarse_logits``: how predict ran before).

The process runs with the workers' malloc settings (``polarxr.cluster.WORKER_MALLOC``, re-executing itself
to set them; ``--default-malloc``: glibc's defaults). The ratios to the block alone are the overlap overhead of the model itself; end to end
(``benchmarks/predict_cli.py --no-halo``) reading, writing and scheduling dilute it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from rich.console import Console
from rich.table import Table

from common import worker_environ
from polarxr.models import build_model
from polarxr.models.unet import row_strips
from polarxr.predict import ENCODE_STRIP


def _whole_decoders(net, x: torch.Tensor, rows: slice, cols: slice) -> None:
    """The previous kernel: the U-Net's decoders over the whole window, then the crop upsampled and refined."""
    coarse = net.coarse_logits(x)
    for strip in row_strips(rows, ENCODE_STRIP):
        net.crop_logits(coarse, x, strip, cols)


def _cut_decoders(net, x: torch.Tensor, rows: slice, cols: slice) -> None:
    for _ in net.crop_strips(x, rows, cols, ENCODE_STRIP):
        pass


def _best(run, repeat: int) -> float:
    run()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--refine", type=int, nargs="+", default=[0, 8])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--default-malloc", action="store_true", help="glibc's malloc defaults, not the workers'")
    args = parser.parse_args()
    wanted = worker_environ()
    if not args.default_malloc and any(os.environ.get(k) != v for k, v in wanted.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], wanted)  # glibc reads them at start
    torch.set_num_threads(1)
    table = Table(title=f"model part of a {args.block} px block's kernel, 1 thread, s (min of {args.repeat})")
    for column in ("refine", "halo px", "no halo", "halo, decoders cut", "ratio", "halo, whole decoders", "ratio"):
        table.add_column(column, justify="right")
    for refine in args.refine:
        torch.manual_seed(0)
        net = build_model({"name": "unet", "in_channels": 3, "n_classes": 3, "width": 16, "depth": 3, "pool": 4,
                           "refine": refine}).eval()
        halo, block = net.halo, args.block
        bare = torch.randn(1, 3, block, block, generator=torch.Generator().manual_seed(1))
        window = torch.randn(1, 3, block + 2 * halo, block + 2 * halo, generator=torch.Generator().manual_seed(1))
        core = slice(halo, halo + block)
        with torch.inference_mode():
            t_bare = _best(lambda: _cut_decoders(net, bare, slice(0, block), slice(0, block)), args.repeat)
            t_cut = _best(lambda: _cut_decoders(net, window, core, core), args.repeat)
            t_whole = _best(lambda: _whole_decoders(net, window, core, core), args.repeat)
        table.add_row(str(refine), str(halo), f"{t_bare:.3f}", f"{t_cut:.3f}", f"{t_cut / t_bare:.2f}x",
                      f"{t_whole:.3f}", f"{t_whole / t_bare:.2f}x")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
