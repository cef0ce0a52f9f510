"""Real imagery: models scored on the seed's published real patches (polar-patch), against the seed's recipe.

    python benchmarks/real_patches.py --data ../shared/data/polar-patch-train
    python benchmarks/real_patches.py --data DIR --rows seed,real --workdir /tmp/rp   # some rows only

The patches (``DIR/meta.csv``, ``DIR/images/<idx>.png``: the first 8,037 of the seed's published set, its own
training part) are imported as published with ``polarxr import-patches`` and split **by row**:

- ``train`` rows 0-5143 (64 %): what every model learns from;
- ``val`` rows 5144-6429 (16 %): the only split any choice was made on (epochs, learning rate, model
  size, the best epoch: ``best.pt``); with ``--final`` they train the final real and fine-tune models;
- ``test`` rows 6430-8036 (the last 20 %): scored at the end (see benchmarks/results/real_patches.md
  for how often they were looked at).
  The rows come scene by scene from the seed's sampler, so the test rows are mostly other scenes.

Rows of the table (every figure is on **real imagery**; "synthetic" names only what a model trained on):

- **seed**: the seed's own recipe re-run here: its AlexNet-style patch classifier
  (:class:`polarxr.models.PatchCNN`), SGD lr 0.01 momentum 0.9 weight decay 5e-4, inputs / 255, batch 28,
  3 epochs, plain cross entropy, every train row (mostly-nodata ones too, as the seed did).
- **polarxr, real**: ``polarxr train`` (``--model``, default the patch classifier; ``--model unet`` trains
  the U-Net with centre-window supervision) on the real train rows: per-band normalisation, flips/rot90,
  AdamW + cosine, mostly-nodata patches left out of training, plain cross entropy (``--class-weights none``:
  the table scores accuracy); ``--width``, ``--label-smoothing``, ``--batchnorm``, ``--members`` (an
  ensemble of seeds), ``--tta`` (``evaluate-patches --tta``) are the recipe's options, and ``--final``
  trains this row and the fine-tune row on train + val (``polarxr train --train-splits train+val``) once
  the settings were chosen on val (``--split val`` scores val, nothing then trains on it).
- **polarxr, synthetic only**: the same model trained on ``polarxr synth --rendering calibrated`` scenes
  (patches sampled from their charts), no real label seen; ``--synth-jitter`` (``polarxr train
  --intensity-jitter``: radiometric domain randomisation), ``--synth-batchnorm``, ``--adapt-bn``
  (``polarxr adapt-bn`` on the real train images, no label read).
- **polarxr, synthetic + fine-tune**: that model fine-tuned on the real rows (``polarxr train --init``).

Scores (``polarxr evaluate-patches --split test --json``; a segmenter's patch class is the class of its
central 8 x 8 px): accuracy over all test patches, over the test patches with imagery (not flagged as
mostly nodata: a patch without pixels can only be guessed), and over the **clean-label** test patches
(``|x - y| < 400`` px: the seed took the label at the transposed position, which for these lies within
~570 px = 23 km of the patch centre, so their labels are mostly right); per-class F1 over all test patches.
Load averages are printed: other jobs share this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
POLARXR = str(Path(sys.executable).with_name("polarxr"))
SPLIT = "train=0:5144,val=5144:6430,test=6430:"
BANDS = "HH,HV,HH-HV"
CLEAN = 400  # px: |x - y| below this, the transposed label point is near the patch


def _run(args: list[str], log: Path) -> str:
    """Run a polarxr command, its output to ``log``; stop the benchmark when it fails."""
    print("$", " ".join(shlex.quote(a) for a in args), flush=True)
    tic = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}), see {log}:\n{proc.stderr[-2000:]}")
    print(f"  {time.perf_counter() - tic:.0f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    return proc.stdout


def import_real(data: Path, work: Path) -> Path:
    cube = work / "real.zarr"
    if not cube.exists():
        _run([POLARXR, "import-patches", str(data), "--cube", str(cube), "--split-index", SPLIT,
              "--band-names", BANDS], work / "import.log")
    return cube


def train_seed(cube: Path, work: Path, epochs: int = 3, seed: int = 0) -> Path:
    """The seed's recipe, in plain torch as the seed wrote it; saved as a polarxr checkpoint (norm 0 / 255
    is the seed's ``/ 255``)."""
    import torch
    import zarr

    from polarxr.models import build_model
    from polarxr.train import make_checkpoint, save_checkpoint

    path = work / "seed" / "last.pt"
    if path.exists():
        return path
    root = zarr.open_group(cube, mode="r")
    train = np.flatnonzero(root["split"][:] == 0)
    images = torch.from_numpy(root["image"][int(train[0]):int(train[-1]) + 1].astype(np.float32) / 255)
    labels = torch.from_numpy(root["patch_label"][int(train[0]):int(train[-1]) + 1].astype(np.int64))
    torch.manual_seed(seed)
    net = build_model({"name": "patchcnn", "in_channels": 3, "n_classes": 3, "patch_size": 64})
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    tic = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed + epoch))
        total = 0.0
        for lo in range(0, len(order), 28):
            idx = order[lo:lo + 28]
            loss = loss_fn(net(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"  seed epoch {epoch + 1}: loss {total / len(order):.4f} ({time.perf_counter() - tic:.0f} s, "
              f"load {os.getloadavg()[0]:.1f})", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = make_checkpoint(net.eval(), band_names=BANDS.split(","), norm={"mean": [0.0] * 3, "std": [255.0] * 3},
                            patch_size=64, epoch=epochs,
                            training={"recipe": "seed: SGD 0.01 m0.9 wd5e-4, /255, batch 28", "epochs": epochs})
    return save_checkpoint(path, state)


def train_polarxr(cube: Path, run: Path, epochs: int, lr: float, threads: int, model: str, weighting: str,
                  init: Path | None = None, recipe: tuple[str, ...] = (), seed: int = 0) -> Path:
    """``polarxr train`` into ``run`` (skipped when it already holds ``epochs`` epochs); its ``best.pt``
    (best validation mean IoU) or, trained on train+val or without validation, ``last.pt``."""
    best = run / "best.pt"
    if not (run / "last.pt").exists() or json.loads((run / "log.json").read_text())[-1]["epoch"] < epochs:
        args = [POLARXR, "train", "--cube", str(cube), "--out", str(run), "--epochs", str(epochs), "--lr", str(lr),
                "--threads", str(threads), "--device", "cpu", "--class-weights", weighting, "--seed", str(seed),
                *recipe]
        args += ["--init", str(init)] if init else ["--model", model]
        _run(args, run.with_suffix(".log"))
    return best if best.exists() and "train+val" not in recipe else run / "last.pt"


def train_members(cube: Path, run: Path, members: int, **kwargs) -> list[Path]:
    """An ensemble: ``members`` runs that differ only by their seed (``run/seed{k}``)."""
    if members == 1:
        return [train_polarxr(cube, run, **kwargs)]
    return [train_polarxr(cube, run / f"seed{k}", seed=k, **kwargs) for k in range(members)]


def adapt(checkpoints: list[Path], cube: Path, work: Path, threads: int) -> list[Path]:
    """``polarxr adapt-bn`` of each checkpoint on the real cube's train images (no label read)."""
    out = []
    for k, ckpt in enumerate(checkpoints):
        target = work / f"adapted{k}.pt"
        if not target.exists():
            _run([POLARXR, "adapt-bn", str(ckpt), "--cube", str(cube), "--out", str(target), "--split", "train",
                  "--threads", str(threads)], work / f"adapt{k}.log")
        out.append(target)
    return out


def synthetic_cube(work: Path, scenes: int, size: int, seed: int) -> Path:
    folder, cube = work / "synth", work / "synth.zarr"
    if not cube.exists():
        if not folder.exists():
            _run([POLARXR, "synth", str(folder), "--scenes", str(scenes), "--size", str(size), str(size), "--seed",
                  str(seed), "--rendering", "calibrated"], work / "synth.log")
        _run([POLARXR, "sample", str(folder), "--cube", str(cube), "--samples-per-label", "120", "--max-nodata",
              "0.5", "--workers", "1"], work / "sample.log")
    return cube


def score(cube: Path, checkpoint: Path | list[Path], work: Path, name: str, split: str = "test",
          tta: bool = False) -> dict:
    checkpoints = checkpoint if isinstance(checkpoint, list) else [checkpoint]
    args = [POLARXR, "evaluate-patches", str(cube), "--split", split, "--json", *(["--tta"] if tta else [])]
    for ckpt in checkpoints:
        args += ["--checkpoint", str(ckpt)]
    out = _run(args, work / f"eval-{name}-{split}.log")
    scores = json.loads(out)
    from polarxr.evaluate import confusion_matrix, metrics_from_confusion
    from polarxr.patch_evaluation import predict_cube_patches

    import zarr

    pred = predict_cube_patches(cube, checkpoints, split, tta=tta)
    root = zarr.open_group(cube, mode="r")
    rows, cols = root["row"][:][pred["index"]], root["col"][:][pred["index"]]
    clean = np.abs(rows - cols) < CLEAN
    cm = confusion_matrix(pred["pred"][clean], pred["truth"][clean])
    scores["clean"] = {"accuracy": metrics_from_confusion(cm)["overall_accuracy"], "n_patches": int(clean.sum())}
    return scores


def table(results: dict[str, dict], split: str = "test") -> str:
    lines = [f"| model | trained on | accuracy (all {split}) | accuracy (with imagery) | accuracy (clean labels) | "
             "F1 land | F1 sea | F1 ice |", "|---|---|---|---|---|---|---|---|"]
    what = {"seed": "real", "polarxr, real": "real", "polarxr, synthetic only": "synthetic (no real label)",
            "polarxr, synthetic + fine-tune": "synthetic, then real"}
    for name, s in results.items():
        f1 = [s["per_class"][c]["f1"] for c in ("land", "sea", "ice")]
        lines.append(f"| {name} | {what[name]} | {s['accuracy']:.3f} | {s['unflagged']['accuracy']:.3f} | "
                     f"{s['clean']['accuracy']:.3f} | " + " | ".join(f"{v:.3f}" for v in f1) + " |")
    first = next(iter(results.values()))
    lines.append(f"\n{first['n_patches']} {split} patches ({first['n_flagged']} mostly nodata), "
                 f"{first['clean']['n_patches']} with clean labels; all scored on real imagery.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the real patches (meta.csv, images/)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench-out" / "real_patches")
    parser.add_argument("--rows", default="seed,real,synthetic,finetune")
    parser.add_argument("--split", default="test", choices=("val", "test"),
                        help="rows scored: val while choosing settings (then nothing trains on val), test once")
    parser.add_argument("--model", default="patchcnn", help="polarxr's model for the polarxr rows")
    parser.add_argument("--class-weights", default="none", help="polarxr train --class-weights")
    parser.add_argument("--width", type=int, default=None, help="polarxr, real: polarxr train --width")
    parser.add_argument("--batchnorm", action="store_true", help="polarxr, real: polarxr train --batchnorm")
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="polarxr, real and fine-tune: polarxr train --label-smoothing")
    parser.add_argument("--synth-width", type=int, default=None, help="synthetic: polarxr train --width")
    parser.add_argument("--synth-batchnorm", action="store_true", help="synthetic: polarxr train --batchnorm")
    parser.add_argument("--synth-jitter", type=float, default=0.0,
                        help="synthetic: polarxr train --intensity-jitter (domain randomisation)")
    parser.add_argument("--members", type=int, default=1, help="ensemble size (seeds 0..N-1) of the polarxr rows")
    parser.add_argument("--tta", action="store_true", help="evaluate-patches --tta for the polarxr rows")
    parser.add_argument("--final", action="store_true",
                        help="the real and fine-tune rows train on train+val (polarxr train --train-splits "
                             "train+val): only with --split test, once settings were chosen on val")
    parser.add_argument("--adapt-bn", action="store_true",
                        help="synthetic row: polarxr adapt-bn on the real train images (no label)")
    parser.add_argument("--epochs", type=int, default=6, help="polarxr, real")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--synth-epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--synth-scenes", type=int, default=10)
    parser.add_argument("--synth-size", type=int, default=1024)
    parser.add_argument("--synth-seed", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "results" / "real_patches.md")
    args = parser.parse_args()
    if args.final and args.split == "val":
        parser.error("--final trains on the val rows: score --split test")
    import torch

    torch.set_num_threads(args.threads)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    rows = args.rows.split(",")
    print(f"load average {os.getloadavg()}", flush=True)
    cube = import_real(args.data, work)
    final = ("--train-splits", "train+val") if args.final else ()
    real_recipe = (*(["--width", str(args.width)] if args.width else []), *(["--batchnorm"] if args.batchnorm else []),
                   "--label-smoothing", str(args.label_smoothing), *final)
    synth_recipe = (*(["--width", str(args.synth_width)] if args.synth_width else []),
                    *(["--batchnorm"] if args.synth_batchnorm else []), "--intensity-jitter", str(args.synth_jitter))
    tune_recipe = ("--label-smoothing", str(args.label_smoothing), *final)
    tag = "-final" if args.final else ""
    common = {"threads": args.threads, "model": args.model, "weighting": args.class_weights}
    results: dict[str, dict] = {}
    if "seed" in rows:
        results["seed"] = score(cube, train_seed(cube, work), work, "seed", args.split)
    if "real" in rows:
        real = train_members(cube, work / f"real{tag}", args.members, epochs=args.epochs, lr=args.lr,
                             recipe=real_recipe, **common)
        results["polarxr, real"] = score(cube, real, work, "real" + tag, args.split, args.tta)
    if "synthetic" in rows or "finetune" in rows:
        synth = train_members(synthetic_cube(work, args.synth_scenes, args.synth_size, args.synth_seed),
                              work / "synthetic", args.members, epochs=args.synth_epochs, lr=args.lr, recipe=synth_recipe,
                              **common)
        if "synthetic" in rows:
            scored = adapt(synth, cube, work / "synthetic", args.threads) if args.adapt_bn else synth
            results["polarxr, synthetic only"] = score(cube, scored, work, "synthetic", args.split, args.tta)
        if "finetune" in rows:
            tuned = [train_polarxr(cube, work / f"finetune{tag}" / f"seed{k}", args.finetune_epochs, args.finetune_lr,
                                   init=ckpt, recipe=tune_recipe, seed=k, **common) for k, ckpt in enumerate(synth)]
            results["polarxr, synthetic + fine-tune"] = score(cube, tuned, work, "finetune" + tag, args.split, args.tta)
    text = table(results, args.split)
    print(text)
    load = os.getloadavg()
    command = "python benchmarks/real_patches.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = (f"# Real patches (polar-patch): seed recipe vs polarxr\n\n`{command}`\n\n{text}\n\n"
              f"Load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (2 shared cores).\n")
    (work / f"results-{args.split}{tag}.json").write_text(json.dumps(results, indent=1, default=float))
    if set(rows) == {"seed", "real", "synthetic", "finetune"} and args.split == "test":
        args.report.write_text(report)
        print(f"written {args.report}")


if __name__ == "__main__":
    main()
