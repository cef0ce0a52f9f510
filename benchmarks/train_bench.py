"""Held-out accuracy of the U-Net segmenter against the seed's patch classifier, trained with the same budget.

    python benchmarks/train_bench.py                  # 20 training scenes (+1 validation), 12 held out, 1024 px
    python benchmarks/train_bench.py --train-scenes 12 --test-scenes 4 --epochs 4 --workdir /tmp/tb

Both models learn from the same synthetic training scenes and validation scene (``make_dataset`` with
``--seed``) and are scored on scenes held out from training, generated with another seed
(``--test-seed``, default ``--seed + 1000``): other places on the coast, other ice, other speckle. The
default 12 held-out scenes are one per month of a year, like the ExtremeEarth set; fewer cover only the
first months (winter), and single scenes vary a lot (a large calm new-ice patch, as dark as water inside
the pack, costs one January scene 0.2 of mean IoU), so few scenes give a noisy, season-biased figure.

- **U-Net** (main model): a cube of 256 px patches with dense labels (random sampler, 60 patches per
  class per scene), width 16, depth 4, input multi-look ``pool`` 4, batch 8.
- **patch classifier** (the seed's baseline): a cube of 64 px patches from the same scenes labelled by
  their centre pixel (random sampler, 160 patches per class per scene), batch 28 as in the seed;
  at inference the scene is cut into 64 px tiles and each tile gets one class (the seed's re-piecing).

Same budget means: the same training and validation scenes, the same number of epochs, the same optimiser
(AdamW, class-weighted cross entropy, flips/rot90 augmentation) and learning-rate schedule (cosine), the
final epoch's weights (no checkpoint picked on the held-out scenes), and training compute of the same
order: the patch counts are chosen so that one epoch of either model costs about the same CPU time
(the table shows the measured seconds and their ratio).

Both are evaluated by the real blockwise inference (:func:`polarxr.predict.predict_scenes` on a
``distributed`` LocalCluster) and :func:`polarxr.evaluate.evaluate_prediction` against the held-out
charts, per pixel; the aggregate sums the confusion matrices of all held-out scenes. Everything goes into
``--workdir`` (keyed by the settings), so a re-run reuses scenes, cubes and finished training runs and
only repeats inference and evaluation. The tables and the command are also written as markdown to
``--report`` (default ``benchmarks/results/train_<device>.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from polarxr.classes import CLASS_NAMES
from polarxr.evaluate import BOUNDARY_KEYS, evaluate_prediction, metrics_from_confusion
from polarxr.io import atomic_path

#: The acceptance bar of the issue: held-out mean IoU of the U-Net, and by how much it must beat the baseline's
#: held-out mean IoU to count as clearly better.
TARGET_MEAN_IOU = 0.90
CLEAR_MARGIN = 0.05


@dataclass(frozen=True)
class ModelSpec:
    """One contender: its model, training cube and training settings."""

    key: str
    title: str
    model: str
    patch_size: int
    samples_per_label: int
    batch_size: int
    lr: float
    options: dict

    def tag(self, epochs: int, seed: int) -> str:
        opts = "".join(f"_{k}{v}" for k, v in sorted(self.options.items()))
        return (f"{self.model}{opts}_p{self.patch_size}x{self.samples_per_label}_b{self.batch_size}"
                f"_lr{self.lr:g}_e{epochs}_s{seed}")


# ------------------------------------------------------------------------------------------------ data
def synthetic_scenes(folder: Path, n_scenes: int, size: tuple[int, int], seed: int,
                     console: Console) -> list[tuple[Path, Path]]:
    """``(scene.tif, chart.shp)`` of ``make_dataset(n_scenes, size, seed)`` in ``folder``, reused when complete.

    A ``scenes.json`` written last marks a complete set; anything else in the folder is regenerated.
    """
    manifest = folder / "scenes.json"
    if manifest.exists():
        pairs = [(folder / s, folder / c) for s, c in json.loads(manifest.read_text())["pairs"]]
        if all(s.exists() and c.exists() for s, c in pairs):
            console.print(f"reusing {len(pairs)} scenes in {folder}")
            return pairs
    from polarxr.synthetic import make_dataset

    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    made = make_dataset(folder, n_scenes=n_scenes, size=size, seed=seed)
    pairs = [(s.scene, s.chart) for s in made]
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps({"n_scenes": n_scenes, "size": list(size), "seed": seed,
                                   "pairs": [(s.name, c.name) for s, c in pairs]}, indent=1))
    console.print(f"{n_scenes} synthetic {size[0]} x {size[1]} scenes (seed {seed}) written in "
                  f"{time.perf_counter() - started:.0f} s to {folder}")
    return pairs


def build_training_cube(cube: Path, pairs: list[tuple[Path, Path]], spec: ModelSpec, seed: int, chunk: int,
                        console: Console) -> Path:
    """The cube of ``spec``'s patches: every scene but the last for training, the last for validation.

    Appends only the scenes not yet in it (a complete cube is reused as it is).
    """
    from polarxr.cube import SplitConfig, build_cube
    from polarxr.samplers import SamplerConfig

    started = time.perf_counter()
    sampler = SamplerConfig(mode="random", patch_size=spec.patch_size, samples_per_label=spec.samples_per_label,
                            max_nodata=0.5, seed=seed)
    split = SplitConfig(fractions=(len(pairs) - 1, 1, 0), assign=((pairs[-1][0].stem, "val"),))
    results = build_cube(pairs, cube, sampler, split, chunks=chunk)
    added = [r for r in results if r.status != "skipped"]
    counts = {s: sum(r.patches for r in results if r.split == s) for s in ("train", "val")}
    console.print(f"{spec.title} cube {cube.name}: {counts['train']:,} train + {counts['val']:,} val patches of "
                  f"{spec.patch_size} px ({len(added)} scene(s) added in {time.perf_counter() - started:.0f} s)")
    return cube


def train_model(cube: Path, run_dir: Path, spec: ModelSpec, epochs: int, seed: int, device: str,
                console: Console):
    """Train (or resume, or reuse a finished run) and return :class:`polarxr.train.RunResult`."""
    from polarxr.train import train

    def progress(event: str, info: dict) -> None:
        if event == "start" and info["start_epoch"] >= info["epochs"]:
            console.print(f"[bold]{spec.title}[/]: reusing the finished run in {run_dir}")
        elif event == "start":
            console.print(f"[bold]{spec.title}[/]: {info['steps']} steps per epoch on {info['device']}, "
                          f"epochs {info['start_epoch'] + 1}..{info['epochs']}")
        elif event == "epoch":
            console.print(f"  epoch {info['epoch']}: train loss {info['train_loss']:.3f}, val mean IoU "
                          f"{info['val_mean_iou']:.3f}, {info['seconds']:.0f} s")

    return train(cube, run_dir, model=spec.model, epochs=epochs, batch_size=spec.batch_size, lr=spec.lr,
                 device=device, seed=seed, model_options=spec.options, progress=progress, schedule="cosine")


# ------------------------------------------------------------------------------------------- evaluation
def predict_and_score(checkpoint: Path, test_pairs: list[tuple[Path, Path]], out_dir: Path, client, chunk: int
                      ) -> tuple[dict, dict[str, dict], float]:
    """Blockwise inference of the held-out scenes, then per-pixel metrics against their charts.

    Returns the aggregate metrics (summed confusion matrices), per-scene metrics and the inference
    seconds (all scenes as one graph, class COGs written, no probabilities or quicklooks; the model is
    loaded on every worker beforehand).
    """
    from polarxr.predict import predict_scenes

    shutil.rmtree(out_dir, ignore_errors=True)
    client.run(_load_model, str(checkpoint))  # steady-state throughput: not the workers' first torch import
    started = time.perf_counter()
    results = predict_scenes([s for s, _ in test_pairs], checkpoint, out_dir, client, chunk=chunk,
                             probabilities_out=False, quicklooks=False)
    seconds = time.perf_counter() - started
    per_scene = {r.scene.stem: evaluate_prediction(r.class_map, chart) for r, (_, chart) in zip(results, test_pairs)}
    total = sum(np.asarray(m["confusion_matrix"], dtype=np.int64) for m in per_scene.values())
    metrics = metrics_from_confusion(total)
    for key in BOUNDARY_KEYS:  # boundary errors in metres: the mean over the held-out scenes
        values = [m[key] for m in per_scene.values() if m.get(key) == m.get(key)]
        metrics[key] = float(np.mean(values)) if values else float("nan")
    return metrics, per_scene, seconds


# ---------------------------------------------------------------------------------------------- tables
def summary_rows(specs: list[ModelSpec], scores: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table: one row per model, then the U-Net against the patch classifier."""
    names = list(CLASS_NAMES.values())
    header = ["model", *(f"IoU {n}" for n in names), "mean IoU", "overall accuracy", "coastline MDE m",
              "ice-edge MDE m", "training s", "inference Mpx/s"]

    def metres(m: dict, key: str) -> float:
        return m.get(key, float("nan"))

    rows = []
    for spec in specs:
        s = scores[spec.key]
        m = s["metrics"]
        rows.append([spec.title, *(f"{m['per_class'][n]['iou']:.3f}" for n in names), f"{m['mean_iou']:.3f}",
                     f"{m['overall_accuracy']:.3f}", f"{metres(m, 'coastline_mde_m'):.0f}",
                     f"{metres(m, 'ice_edge_mde_m'):.0f}", f"{s['train_s']:.0f}", f"{s['mpx_s']:.2f}"])
    a, b = scores[specs[0].key], scores[specs[1].key]
    ma, mb = a["metrics"], b["metrics"]
    rows.append([f"{specs[0].title} vs {specs[1].title}",
                 *(f"{ma['per_class'][n]['iou'] - mb['per_class'][n]['iou']:+.3f}" for n in names),
                 f"{ma['mean_iou'] - mb['mean_iou']:+.3f}", f"{ma['overall_accuracy'] - mb['overall_accuracy']:+.3f}",
                 f"{metres(ma, 'coastline_mde_m') - metres(mb, 'coastline_mde_m'):+.0f}",
                 f"{metres(ma, 'ice_edge_mde_m') - metres(mb, 'ice_edge_mde_m'):+.0f}",
                 f"{a['train_s'] / b['train_s']:.2f}x", f"{a['mpx_s'] / b['mpx_s']:.2f}x"])
    return header, rows


def per_scene_rows(specs: list[ModelSpec], scores: dict[str, dict], test_pairs) -> tuple[list[str], list[list[str]]]:
    header = ["held-out scene", "labelled px", *(f"{s.title} mean IoU" for s in specs)]
    rows = []
    for scene, _ in test_pairs:
        first = scores[specs[0].key]["per_scene"][scene.stem]
        rows.append([scene.stem[:48], f"{first['n_pixels']:,}",
                     *(f"{scores[s.key]['per_scene'][scene.stem]['mean_iou']:.3f}" for s in specs)])
    return header, rows


def rich_table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for k, name in enumerate(header):
        table.add_column(name, justify="left" if k == 0 else "right")
    for k, row in enumerate(rows):
        if k == len(rows) - 1 and " vs " in row[0]:
            table.add_section()
        table.add_row(*row)
    return table


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


# ------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-scenes", type=int, default=20, help="training scenes (one more is made for validation)")
    parser.add_argument("--test-scenes", type=int, default=12,
                        help="held-out scenes (made with --test-seed; 12 = one per month of a year)")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 1024), metavar=("ROWS", "COLS"))
    parser.add_argument("--epochs", type=int, default=6, help="epochs of both models")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training scenes, samplers and training")
    parser.add_argument("--test-seed", type=int, default=None, help="seed of the held-out scenes (default: --seed + 1000)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of both models (cosine decay)")
    parser.add_argument("--unet-samples", type=int, default=60, help="256 px U-Net patches per class per scene")
    parser.add_argument("--patch-samples", type=int, default=160, help="64 px classifier patches per class per scene")
    parser.add_argument("--depth", type=int, default=4, help="U-Net depth")
    parser.add_argument("--width", type=int, default=16, help="U-Net width (channels of the first level)")
    parser.add_argument("--pool", type=int, default=4, help="U-Net input multi-look factor")
    parser.add_argument("--chunk", type=int, default=1024, help="inference chunk (px): >= the U-Net's halo, "
                                                                  "a multiple of pool * 2**depth")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers (1 thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process "
                                                                "(1 is fastest on a busy 2-core machine)")
    parser.add_argument("--device", default="auto", help="training device: auto, cpu or cuda")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "polarxr-train-bench")
    parser.add_argument("--report", type=Path, default=None,
                        help="markdown report (default benchmarks/results/train_<device>.md)")
    args = parser.parse_args()
    test_seed = args.seed + 1000 if args.test_seed is None else args.test_seed
    if test_seed == args.seed:
        parser.error("--test-seed must differ from --seed: the held-out scenes must not be training scenes")

    from polarxr.cluster import get_client
    from polarxr.datasets import PatchDataset
    from polarxr.train import resolve_device

    console = Console(width=None if sys.stdout.isatty() else 200)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device).type
    size = tuple(args.size)
    specs = [
        ModelSpec("unet", "U-Net", "unet", 256, args.unet_samples, 8, args.lr,
                  {"width": args.width, "depth": args.depth, "pool": args.pool}),
        ModelSpec("patchcnn", "patch classifier", "patchcnn", 64, args.patch_samples, 28, args.lr, {}),
    ]
    work = args.workdir
    data_tag = f"{size[0]}x{size[1]}"
    train_pairs = synthetic_scenes(work / f"train_n{args.train_scenes + 1}_{data_tag}_seed{args.seed}",
                                   args.train_scenes + 1, size, args.seed, console)
    test_pairs = synthetic_scenes(work / f"test_n{args.test_scenes}_{data_tag}_seed{test_seed}",
                                  args.test_scenes, size, test_seed, console)
    overlap = {s.stem for s, _ in train_pairs} & {s.stem for s, _ in test_pairs}
    if overlap:
        raise SystemExit(f"held-out scenes are also training scenes: {sorted(overlap)}; choose another --test-seed")
    stage_s = {"scenes": time.perf_counter() - started}

    scores: dict[str, dict] = {}
    with get_client(n_workers=args.workers, threads_per_worker=1) as client:
        for spec in specs:
            tic = time.perf_counter()
            tag = f"n{args.train_scenes}_{data_tag}_seed{args.seed}"
            cube_name = f"cube_{spec.key}_p{spec.patch_size}x{spec.samples_per_label}_{tag}.zarr"
            cube = build_training_cube(work / cube_name, train_pairs, spec, args.seed, args.chunk, console)
            stage_s[f"{spec.key} cube"] = time.perf_counter() - tic
            tic = time.perf_counter()
            run = train_model(cube, work / "runs" / f"{spec.tag(args.epochs, args.seed)}_{tag}", spec, args.epochs,
                              args.seed, args.device, console)
            stage_s[f"{spec.key} training (this run)"] = time.perf_counter() - tic
            final = run.final
            tic = time.perf_counter()
            metrics, per_scene, infer_s = predict_and_score(run.last_checkpoint, test_pairs,
                                                            work / "predictions" / spec.key, client, args.chunk)
            stage_s[f"{spec.key} inference + evaluation"] = time.perf_counter() - tic
            n_train = len(PatchDataset(cube, "train"))
            scores[spec.key] = {
                "metrics": metrics, "per_scene": per_scene,
                "mpx_s": sum(_megapixels(s) for s, _ in test_pairs) / infer_s,
                # every epoch's time as logged by train(), incl. its validation pass: the same on a re-run
                "train_s": sum(r["seconds"] for r in run.history), "patches": n_train, "steps": final["steps"],
                "val_mean_iou": final["val_mean_iou"],
            }
            console.print(f"{spec.title}: held-out mean IoU {metrics['mean_iou']:.3f} "
                          f"(inference {infer_s:.1f} s for {len(test_pairs)} scenes)")

    header, rows = summary_rows(specs, scores)
    scene_header, scene_rows = per_scene_rows(specs, scores, test_pairs)
    n_px = scores["unet"]["metrics"]["n_pixels"]
    title = (f"Held-out scenes ({args.test_scenes} x {size[0]} x {size[1]} px, seed {test_seed}, {n_px:,} labelled "
             f"px), models trained on {args.train_scenes} scenes (seed {args.seed}) for {args.epochs} epochs on {device}")
    budget_head = (
        f"Same budget: both models were trained on the same {args.train_scenes} training scenes (+ the same 1 "
        f"validation scene) for the same {args.epochs} epochs, with AdamW at peak lr {args.lr:g} and a cosine "
        f"schedule, class-weighted cross entropy and flip/rot90 augmentation, {args.threads} torch thread(s) on "
        f"{device}; each model is scored with its final epoch's weights.")
    budget_items = [
        f"- {s.title}: {scores[s.key]['patches']:,} training patches of {s.patch_size} px "
        f"({s.samples_per_label} per class per scene), batch {s.batch_size}, {scores[s.key]['steps']} steps per "
        f"epoch ({scores[s.key]['steps'] * args.epochs:,} steps), "
        f"{json.dumps(s.options) if s.options else 'the seed AlexNet-style layout'}; "
        f"training {scores[s.key]['train_s']:.0f} s; last-epoch validation mean IoU "
        f"{scores[s.key]['val_mean_iou']:.3f}"
        for s in specs]
    budget_notes = [
        "Patch counts are chosen so that an epoch of either model costs about the same CPU time; "
        "'training s' is the sum of the logged epoch times (each including its validation pass).",
        f"Inference: predict_scenes on a LocalCluster of {args.workers} single-threaded workers, chunk "
        f"{args.chunk} px, all held-out scenes as one graph, class COGs written (Mpx/s over all held-out pixels, "
        "wall time incl. reading, graph and writing; the model is loaded on the workers beforehand). The patch "
        "classifier gives one class per 64 px tile (the seed's re-piecing); the U-Net runs seamlessly with its halo.",
    ]
    unet, patch = scores["unet"]["metrics"], scores["patchcnn"]["metrics"]
    passed = unet["mean_iou"] >= TARGET_MEAN_IOU and unet["mean_iou"] >= patch["mean_iou"] + CLEAR_MARGIN
    verdict = (f"U-Net held-out mean IoU {unet['mean_iou']:.3f} (target >= {TARGET_MEAN_IOU:.2f}) vs patch classifier "
               f"{patch['mean_iou']:.3f} (U-Net must lead by >= {CLEAR_MARGIN:.2f}): {'PASS' if passed else 'FAIL'}")
    total_s = time.perf_counter() - started

    console.print(rich_table(title, header, rows))
    console.print(rich_table("Per held-out scene", scene_header, scene_rows))
    for line in (budget_head, *budget_items, *budget_notes):
        console.print(line, highlight=False)
    console.print(f"[bold {'green' if passed else 'red'}]{verdict}[/]")
    console.print("stage seconds (this run): " + ", ".join(f"{k} {v:.0f}" for k, v in stage_s.items())
                  + f"; total {total_s:.0f} s")

    command = "python benchmarks/train_bench.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    report = args.report or Path(__file__).parent / "results" / f"train_{device}.md"
    lines = [
        f"# Training benchmark: U-Net vs the seed's patch classifier on held-out scenes ({device})", "",
        f"`{command}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; total run time "
        f"{total_s / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in stage_s.items()) + ").", "",
        f"## {title}", "", *markdown_table(header, rows), "",
        "The last row is U-Net minus patch classifier for the scores, U-Net / patch classifier for time and "
        "throughput.", "",
        "## Per held-out scene", "", *markdown_table(scene_header, scene_rows), "",
        "## Budget", "", budget_head, "", *budget_items, "",
        *(part for note in budget_notes for part in (note, "")), f"**{verdict}**", "",
    ]
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines))
    console.print(f"report: {report}")


def _load_model(checkpoint: str) -> None:
    from polarxr.predict import worker_model

    worker_model(checkpoint)


def _megapixels(scene: Path) -> float:
    import rasterio

    with rasterio.open(scene) as src:
        return src.width * src.height / 1e6


if __name__ == "__main__":
    main()
