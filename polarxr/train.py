"""Training of the U-Net segmenter and the seed's patch classifier on a Zarr training cube.

A run folder holds ``checkpoint_epoch{N}.pt`` every ``save_interval`` epochs, ``last.pt`` (each epoch, for
resuming), ``best.pt`` (best validation mean IoU), ``log.csv``/``log.json`` (one row per epoch) and
``learning_curves.png``. Checkpoints are written and read by :mod:`polarxr.checkpoints`. Runs are deterministic for a seed on CPU: each epoch's shuffling, augmentation and dropout
are seeded from ``(seed, epoch)``, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from polarxr.checkpoints import make_checkpoint, read_checkpoint, save_checkpoint
# Checkpoint I/O lives in polarxr.checkpoints; these names stay importable from here for existing scripts.
from polarxr.checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, load_checkpoint  # noqa: F401, E402
from polarxr.classes import CLASS_CODES, CLASS_NAMES, N_CLASSES, NO_LABEL
from polarxr.errors import CubeError, ModelError, PolarxrError
from polarxr.evaluate import confusion_matrix, metrics_from_confusion, to_json
from polarxr.io import atomic_path
from polarxr.models import MODELS, build_model

#: ``progress(event, info)``: events "start" (epochs, start_epoch, steps), "step" (epoch, step, loss),
#: "epoch" (the epoch's log record). Called from the training loop; keep it cheap.
ProgressCallback = Callable[[str, dict], None]


@dataclass
class RunResult:
    """What a training run left in its run folder."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    history: list[dict]
    start_epoch: int
    epochs: int
    device: str
    log_csv: Path
    log_json: Path
    curves_png: Path
    checkpoints: list[Path] = field(default_factory=list)
    model: str = "unet"

    @property
    def final(self) -> dict:
        """The last epoch's log record (empty when no epoch ran)."""
        return self.history[-1] if self.history else {}


# ----------------------------------------------------------------------------------------- utilities
def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PolarxrError(None, f"device {device!r} requested but torch sees no CUDA GPU; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise PolarxrError(None, f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def class_weights(class_counts: Mapping | list, n_classes: int = N_CLASSES) -> torch.Tensor:
    """Inverse-frequency class weights from a cube's ``class_counts``, with pixel-weighted mean 1.

    ``class_counts`` is a list in code order or a mapping keyed by code (``0``/``"0"``), letter (``"L"``)
    or name (``"land"``); other keys (``"255"``) are ignored. Absent classes get weight 0.
    """
    counts = np.zeros(n_classes, dtype=np.float64)
    if isinstance(class_counts, Mapping):
        by_name = {name: code for code, name in CLASS_NAMES.items()} | CLASS_CODES
        for key, value in class_counts.items():
            code = by_name.get(key, int(key) if str(key).lstrip("-").isdigit() else None)
            if code is not None and 0 <= code < n_classes:
                counts[code] += float(value)
    else:
        values = list(class_counts)[:n_classes]
        counts[: len(values)] = values
    total = counts.sum()
    if total <= 0:
        raise ValueError("class counts hold no labelled pixels")
    freq = counts / total
    weights = np.where(counts > 0, 1.0 / np.maximum(freq, 1e-12), 0.0)
    weights /= (weights * freq).sum()
    return torch.tensor(weights, dtype=torch.float32)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                           label_smoothing: float = 0.0, pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Class-weighted mean cross entropy over targets that are not 255; 0 (not NaN) when all are 255.

    ``label_smoothing`` (0 <= eps < 1): the target is ``1 - eps`` on the label and ``eps / C`` on every class,
    which bounds the loss a wrong label can cause (a simple defence against label noise).
    ``pixel_weight`` (the shape of ``target``): a further weight per pixel (:func:`small_ice_object_weights`);
    the mean is then over class weight x pixel weight.
    """
    valid = target != NO_LABEL
    per_class = weight[target.clamp(max=len(weight) - 1)]
    if pixel_weight is None:
        loss = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=NO_LABEL, reduction="sum",
                               label_smoothing=label_smoothing)
        return loss / per_class[valid].sum().clamp(min=1e-12)
    loss = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=NO_LABEL, reduction="none",
                           label_smoothing=label_smoothing)
    return (loss * pixel_weight).sum() / (per_class * pixel_weight)[valid].sum().clamp(min=1e-12)


def small_ice_object_weights(target: torch.Tensor, factor: float, max_pixels: int = 625) -> torch.Tensor:
    """Loss weights per pixel of dense labels ``(N, H, W)``: ``factor`` on icebergs and their ring of sea, 1 elsewhere.

    An iceberg is as :mod:`polarxr.observations.icebergs` counts them: a 4-connected object of ice of at most
    ``max_pixels`` px none of whose pixels has land, no label or the patch edge among its 8 neighbours. Such
    objects are a thousandth of the pixels, so an unweighted loss lets a model paint them over as sea; the
    ring (the sea pixels 8-adjacent to the object) is weighted too, so that the loss rewards the object's
    outline and not just more ice.
    """
    from scipy import ndimage

    from polarxr.classes import ICE, WATER
    from polarxr.observations.icebergs import ice_touching_non_sea

    labels = target.cpu().numpy()
    weights = np.ones(labels.shape, np.float32)
    square = np.ones((3, 3), bool)
    for k, label in enumerate(labels):
        ice = label == ICE
        if not ice.any():
            continue
        objects, n = ndimage.label(ice)
        sizes = np.bincount(objects.ravel(), minlength=n + 1)
        touched = ice_touching_non_sea(label)
        bad = np.zeros(n + 1, bool)
        bad[np.unique(objects[touched])] = True
        bergs = (sizes <= max_pixels) & ~bad
        bergs[0] = False
        berg = bergs[objects]
        if berg.any():
            weights[k][ndimage.binary_dilation(berg, square) & ((label == WATER) | berg)] = factor
    return torch.from_numpy(weights)


def augment_batch(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random flip/rot90 (of the 8 symmetries of a square) per sample, same for image and label.

    ``images`` ``(N, band, y, x)``, ``labels`` ``(N, y, x)``; SAR textures have no preferred orientation
    at this scale, so these are label-preserving.
    """
    choice = torch.randint(0, 8, (images.shape[0],), generator=generator)
    images, labels = images.clone(), labels.clone()
    for k in range(1, 8):
        idx = torch.nonzero(choice == k).flatten()
        if len(idx) == 0:
            continue
        img, lab = images[idx], labels[idx]
        if k >= 4:
            img, lab = img.flip(-1), lab.flip(-1)
        images[idx] = torch.rot90(img, k % 4, dims=(-2, -1))
        labels[idx] = torch.rot90(lab, k % 4, dims=(-2, -1))
    return images, labels


def jitter_intensity(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Random per-patch, per-band gain ``exp(sigma * N(0, 1))`` and offset ``sigma * N(0, 1)`` of normalised
    ``images (N, band, y, x)``; nodata pixels (0 in every band) stay 0.

    Domain randomisation of the radiometry: a model trained on synthetic scenes otherwise learns their exact
    DN levels, which the real product's unknown processing (gain, DN curve) does not reproduce.
    """
    n, bands = images.shape[:2]
    gain = torch.exp(sigma * torch.randn(n, bands, 1, 1, generator=generator))
    offset = sigma * torch.randn(n, bands, 1, 1, generator=generator)
    valid = (images != 0).any(1, keepdim=True)
    return torch.where(valid, images * gain + offset, images)


# --------------------------------------------------------------------------------------------- data
def _cube_info(cube_path: Path) -> dict:
    """Band names, normalisation, patch size and class weights of a cube; :class:`CubeError` when unusable.

    Class weights come from the dense label pixels of the train patches (``class_counts``); a cube without
    dense labels (imported patch sets) weights by its train patch labels (``patch_counts["train"]``, which
    leave out flagged patches) instead, and ``dense_labels`` is False.
    """
    from polarxr.cube import open_cube

    attrs = dict(open_cube(cube_path).attrs)
    missing = [k for k in ("band_names", "norm", "patch_size", "class_counts") if k not in attrs]
    if missing:
        raise CubeError(cube_path, f"is not a polarxr training cube (attributes {missing} missing)")
    dense = sum(int(v) for k, v in attrs["class_counts"].items() if str(k) != str(NO_LABEL)) > 0
    counts = attrs["class_counts"] if dense else attrs.get("patch_counts", {}).get("train", {})
    try:
        weights = class_weights(counts)
    except ValueError:
        raise CubeError(cube_path, "has no labelled pixels or patches in its train split (was it built from "
                                   "scenes without ice charts?)") from None
    return {
        "band_names": [str(b) for b in attrs["band_names"]],
        "radiometry": {"units": attrs.get("units"), "dtype": attrs.get("dtype"),
                       "polarisation": attrs.get("polarisation"), "scaling": attrs.get("scaling")},
        "norm": {"mean": [float(v) for v in attrs["norm"]["mean"]], "std": [float(v) for v in attrs["norm"]["std"]]},
        "patch_size": int(attrs["patch_size"]),
        "class_weights": weights,
        "dense_labels": dense,
    }


#: Split sets ``train`` accepts: the usual one, and train + val for a final model once settings are chosen.
TRAIN_SPLITS = ("train", "train+val")


def _datasets(cube_path: Path, train_splits: str = "train"):
    from torch.utils.data import ConcatDataset

    from polarxr.datasets import PatchDataset

    # augmentation is applied batch-wise in the loop, seeded per epoch, so the cube's own flag stays off;
    # patches flagged at import (mostly nodata) neither train nor score the validation
    train_set = PatchDataset(cube_path, split="train", augment=False, exclude_flagged=True)
    val_set = PatchDataset(cube_path, split="val", augment=False, exclude_flagged=True)
    if len(train_set) == 0:
        raise CubeError(cube_path, "has no patches in the 'train' split")
    if train_splits == "train+val":
        # the val patches train too: nothing is left to validate on, so no best.pt either
        return ConcatDataset([train_set, val_set]), None
    return train_set, val_set


def centre_window_target(patch_label: torch.Tensor, size: int, window: int) -> torch.Tensor:
    """Dense targets ``(N, size, size)`` from patch labels ``(N,)``: the label in the central ``window`` x
    ``window`` px, 255 (ignored) elsewhere. Centre-window supervision of a segmenter on a cube without
    dense labels: the label is only known near the patch centre, and the window stays centred under the
    flips and rotations of the augmentation."""
    target = torch.full((len(patch_label), size, size), NO_LABEL, dtype=torch.int64)
    lo = (size - window) // 2
    target[:, lo:lo + window, lo:lo + window] = patch_label.long()[:, None, None]
    return target


#: Settings of a run that a resumed run must share with ``last.pt``: the loss, the optimiser, the schedule and
#: the batch order; resuming under others would give a model that no single command trains. (``epochs`` may
#: change: a resumed run stops at the new total.)
RESUME_SETTINGS = ("batch_size", "lr", "weight_decay", "schedule", "max_steps_per_epoch", "weighting",
                   "label_smoothing", "centre_window", "intensity_jitter", "object_weight", "train_splits")


def _check_resume(last_path: Path, state: dict, info: dict, training: dict, seed: int) -> None:
    """:class:`ModelError` when the cube no longer holds what ``last.pt`` was trained on (units, dtype,
    polarisations, DN scaling, normalisation), or when the run's settings (:data:`RESUME_SETTINGS`, the seed)
    differ from those ``last.pt`` was trained with: resuming would continue on other data or another recipe."""
    from polarxr.radiometry import differences

    problems = [p.replace("trained on", "last.pt has") for p in differences(state.get("radiometry"), info["radiometry"])]
    norm = state.get("norm") or {}
    for key in ("mean", "std"):
        if key in norm and not np.allclose(norm[key], info["norm"][key], rtol=1e-6, atol=0):
            problems.append(f"normalisation {key} {info['norm'][key]}, last.pt has {norm[key]} (scenes added "
                            "or replaced since?)")
    if problems:
        raise ModelError(last_path, "cannot resume on this cube: the cube has " + "; ".join(problems)
                         + "; use another --out or --no-resume")
    # a setting that an older last.pt does not record cannot be compared
    saved = {**(state.get("training") or {}), **({"seed": state["seed"]} if "seed" in state else {})}
    current = {**training, "seed": seed}
    changed = [f"{key} {current[key]!r} (last.pt: {saved[key]!r})" for key in (*RESUME_SETTINGS, "seed")
               if key in saved and saved[key] != current[key]]
    if changed:
        raise ModelError(last_path, "cannot resume with other settings than last.pt was trained with: "
                         + "; ".join(changed) + "; run with the same settings, or use another --out or --no-resume")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


# ------------------------------------------------------------------------------------------ training
def _batch_logits_and_target(net: nn.Module, batch, device: torch.device, amp_dtype, generator=None,
                             centre_window: int | None = None, intensity_jitter: float = 0.0):
    image, label, patch_label = batch
    if net.dense and centre_window:
        label = centre_window_target(patch_label, label.shape[-1], centre_window)
    target = label if net.dense else patch_label
    if generator is not None and net.dense:
        image, target = augment_batch(image, target, generator)
    elif generator is not None:
        image, _ = augment_batch(image, label, generator)
    if generator is not None and intensity_jitter:
        image = jitter_intensity(image, intensity_jitter, generator)
    image = image.to(device, non_blocking=True)
    target = target.to(device, non_blocking=True).long()
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = net(image)
    return logits, target


@torch.no_grad()
def validate(net: nn.Module, loader: DataLoader, weight: torch.Tensor, device: torch.device, amp_dtype=None,
             centre_window: int | None = None) -> dict:
    """Validation loss and :func:`polarxr.evaluate.metrics_from_confusion` scores (pixel-wise for a
    segmenter, patch-wise for the patch classifier)."""
    net.eval()
    cm = np.zeros((N_CLASSES, N_CLASSES), dtype=np.int64)
    loss_sum, loss_n = 0.0, 0
    for batch in loader:
        logits, target = _batch_logits_and_target(net, batch, device, amp_dtype, centre_window=centre_window)
        loss_sum += float(weighted_cross_entropy(logits, target, weight)) * len(target)
        loss_n += len(target)
        cm += confusion_matrix(logits.argmax(1).cpu().numpy(), target.cpu().numpy())
    metrics = metrics_from_confusion(cm)
    metrics["loss"] = loss_sum / max(loss_n, 1)
    return metrics


def _log_record(epoch: int, train_loss: float, val: dict | None, lr: float, seconds: float, steps: int) -> dict:
    record = {"epoch": epoch, "train_loss": train_loss, "steps": steps, "lr": lr, "seconds": round(seconds, 3)}
    nan = float("nan")
    record["val_loss"] = val["loss"] if val else nan
    record["val_mean_iou"] = val["mean_iou"] if val else nan
    record["val_mean_f1"] = val["mean_f1"] if val else nan
    record["val_overall_accuracy"] = val["overall_accuracy"] if val else nan
    record["val_scored"] = val["n_pixels"] if val else 0  # labelled pixels (U-Net) or patches (classifier)
    for code, name in CLASS_NAMES.items():
        record[f"val_iou_{name}"] = val["per_class"][name]["iou"] if val else nan
    return record


def _write_logs(run_dir: Path, history: list[dict]) -> tuple[Path, Path, Path]:
    """``log.csv``, ``log.json`` and ``learning_curves.png`` of the history so far (atomic writes)."""
    csv_path, json_path, png_path = run_dir / "log.csv", run_dir / "log.json", run_dir / "learning_curves.png"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    with atomic_path(json_path) as tmp:
        tmp.write_text(to_json(history))
    with atomic_path(png_path) as tmp:
        _plot_curves(history, tmp)
    return csv_path, json_path, png_path


def _plot_curves(history: list[dict], path: Path) -> None:
    """Loss (train, val) and validation scores per epoch, side by side (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_score = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="weighted cross entropy", title="loss")
    ax_loss.legend()
    ax_score.plot(epochs, [r["val_mean_iou"] for r in history], "o-", lw=2, label="mean IoU")
    ax_score.plot(epochs, [r["val_overall_accuracy"] for r in history], "s--", label="overall accuracy")
    for name in CLASS_NAMES.values():
        ax_score.plot(epochs, [r[f"val_iou_{name}"] for r in history], ":", label=f"IoU {name}")
    ax_score.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1.02))
    ax_score.legend(fontsize="small")
    for ax in (ax_loss, ax_score):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, format="png")


SCHEDULES = ("cosine", "constant")
WEIGHTINGS = ("inverse", "none")
#: Default centre window (px) of a segmenter trained on patch labels only.
CENTRE_WINDOW = 8


def _init_state(init: str | Path, model: str | None, model_options: dict | None) -> dict:
    """The checkpoint to fine-tune from; :class:`ModelError` when it is not usable for ``model``."""
    state = read_checkpoint(init, "cpu", model)
    config = state["model_config"]
    clash = {k: v for k, v in (model_options or {}).items() if k in config and config[k] != v}
    if clash:
        raise ModelError(init, f"fine-tuning keeps the checkpoint's model {config}; options {clash} differ "
                               "(leave them out)")
    return state


def _check_init(init: str | Path, state: dict, info: dict) -> None:
    if list(state["band_names"]) != info["band_names"]:
        raise ModelError(init, f"was trained on bands {state['band_names']}, the cube has {info['band_names']}: "
                               "fine-tuning needs the same bands in the same order")
    size = state["model_config"].get("patch_size")
    if size is not None and size != info["patch_size"]:
        raise ModelError(init, f"holds a patch classifier of {size} px patches, the cube's are "
                               f"{info['patch_size']} px")


def learning_rate(base: float, step: int, total: int, schedule: str = "cosine") -> float:
    """Learning rate at global ``step`` (0-based) of ``total``: constant, or cosine decay to 1 % of ``base``.

    A pure function of the step, so a resumed run follows the same schedule without scheduler state.
    """
    if schedule == "constant":
        return base
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1))))


def _model_config(model: str, info: dict, model_options: dict | None) -> dict:
    config = {"name": model, "in_channels": len(info["band_names"]), "n_classes": N_CLASSES}
    if model == "patchcnn":
        config["patch_size"] = info["patch_size"]
    config.update(model_options or {})
    return config


def train(
    cube_path: str | Path,
    out_dir: str | Path,
    model: str | None = "unet",
    epochs: int = 3,
    batch_size: int = 28,
    lr: float = 1e-3,
    device: str = "auto",
    seed: int = 0,
    save_interval: int = 1,
    run_number: int = 0,
    resume: bool = True,
    max_steps_per_epoch: int | None = None,
    progress: ProgressCallback | None = None,
    model_options: dict | None = None,
    weight_decay: float = 1e-4,
    schedule: str = "cosine",
    init: str | Path | None = None,
    centre_window: int | None = None,
    weighting: str = "inverse",
    label_smoothing: float = 0.0,
    train_splits: str = "train",
    intensity_jitter: float = 0.0,
    object_weight: float = 1.0,
) -> RunResult:
    """Train ``model`` ("unet" or "patchcnn") on the cube's "train" split, validating on "val" each epoch.

    ``out_dir`` is the run folder. Loss: cross entropy with inverse-frequency class weights from the cube's
    ``class_counts``, ignoring label 255 (dense labels for the U-Net, the centre label for the patch
    classifier). Augmentation: random flips/rot90. Mixed precision (bf16, else fp16) only on CUDA.
    ``model_options`` are extra model arguments (``{"width": 16, "depth": 3, "pool": 4}``). AdamW with
    ``lr`` decayed per step by ``schedule`` ("cosine" over all epochs, or "constant"). With ``resume`` and
    an existing ``last.pt`` of the same model, training continues after its epoch. ``max_steps_per_epoch``
    caps the batches per epoch (quick runs).

    ``init``: fine-tune from this checkpoint: its model and config (``model`` None takes them; another
    ``model`` or conflicting ``model_options`` are an error), its weights; the cube must have the same
    bands (and, for the patch classifier, patch size). The optimizer, schedule and normalisation start
    afresh from this cube's. A run that resumes from its own ``last.pt`` ignores ``init``.

    ``centre_window``: train a segmenter on patch labels, the label in the central ``centre_window`` px
    square, 255 elsewhere (:func:`centre_window_target`); default: 8 when the cube has no dense labels
    (imported patch sets), else off (dense labels).

    ``weighting``: "inverse" (inverse-frequency class weights, for mean IoU / F1 on rare classes) or "none"
    (plain cross entropy, as the seed: for overall accuracy). ``label_smoothing``: see
    :func:`weighted_cross_entropy` (0.1 suits labels known to be noisy, such as the seed's patch set).

    ``train_splits``: "train", or "train+val" to train the final model on both once every setting was chosen
    on val (no validation then: ``best.pt`` is not written, ``last.pt`` is the model).

    ``intensity_jitter``: sigma of :func:`jitter_intensity` (0: off), radiometric domain randomisation
    for models trained on synthetic scenes and meant for real ones.

    ``object_weight``: the loss weight of icebergs and their ring of sea relative to other pixels
    (:func:`small_ice_object_weights`; 1: off), for segmenters meant to count them.
    """
    if weighting not in WEIGHTINGS:
        raise PolarxrError(None, f"unknown class weighting {weighting!r}; use {' or '.join(WEIGHTINGS)}")
    init_state = _init_state(init, model, model_options) if init is not None else None
    if model is None:
        model = init_state["model_config"]["name"] if init_state else "unet"
    if model not in MODELS:
        raise ModelError(None, f"unknown model {model!r}; known models: {', '.join(MODELS)}")
    if epochs < 1 or batch_size < 1 or save_interval < 1 or not lr > 0:
        raise PolarxrError(None, f"epochs, batch size, save interval and lr must be positive "
                                 f"(got {epochs}, {batch_size}, {save_interval}, {lr})")
    if not 0 <= label_smoothing < 1:
        raise PolarxrError(None, f"label smoothing must be in [0, 1), got {label_smoothing}")
    if not 0 <= intensity_jitter <= 2:
        raise PolarxrError(None, f"intensity jitter must be in [0, 2] (normalised units), got {intensity_jitter}")
    if not 1 <= object_weight <= 1000:
        raise PolarxrError(None, f"object weight must be in [1, 1000], got {object_weight}")
    if train_splits not in TRAIN_SPLITS:
        raise PolarxrError(None, f"unknown training splits {train_splits!r}; use {' or '.join(TRAIN_SPLITS)}")
    if schedule not in SCHEDULES:
        raise PolarxrError(None, f"unknown learning-rate schedule {schedule!r}; use {' or '.join(SCHEDULES)}")
    cube_path, run_dir = Path(cube_path), Path(out_dir)
    info = _cube_info(cube_path)
    train_set, val_set = _datasets(cube_path, train_splits)
    dev = resolve_device(device)
    amp_dtype = None
    if dev.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    config = init_state["model_config"] if init_state else _model_config(model, info, model_options)
    if init_state:
        _check_init(init, init_state, info)
    torch.manual_seed(seed)
    net = build_model(config).to(dev)
    if init_state:
        net.load_state_dict(init_state["state_dict"])
    if net.dense and centre_window is None and not info["dense_labels"]:
        centre_window = CENTRE_WINDOW
    if centre_window is not None and not 1 <= centre_window <= info["patch_size"]:
        raise PolarxrError(None, f"centre window {centre_window} px must be between 1 and the patch size "
                                 f"{info['patch_size']} px")
    if not net.dense:
        centre_window = None  # the patch classifier always trains on patch labels
    if net.dense and info["patch_size"] % net.pad_multiple:
        raise ModelError(cube_path, f"patch size {info['patch_size']} px is not a multiple of the U-Net's "
                               f"{net.pad_multiple} (2**depth); use a smaller depth or another patch size")
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    if weighting == "none":
        info["class_weights"] = torch.ones_like(info["class_weights"])
    weight = info["class_weights"].to(dev)

    meta = {"band_names": info["band_names"], "radiometry": info["radiometry"], "norm": info["norm"],
            "patch_size": info["patch_size"],
            "seed": seed, "run_number": run_number, "cube": str(cube_path),
            "class_weights": info["class_weights"].tolist(),
            "training": {"batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "epochs": epochs,
                         "schedule": schedule, "max_steps_per_epoch": max_steps_per_epoch,
                         "init": None if init is None else str(init),
                         "centre_window": centre_window, "weighting": weighting,
                         "label_smoothing": label_smoothing, "train_splits": train_splits,
                         "intensity_jitter": intensity_jitter, "object_weight": object_weight}}
    start_epoch, history = 0, []
    last_path = run_dir / "last.pt"
    if resume and last_path.exists():
        state = read_checkpoint(last_path, dev, model)
        if state["model_config"] != net.config:
            raise ModelError(last_path, f"holds a model configured as {state['model_config']}, not {net.config}; "
                                        "use another --out or --no-resume")
        if state["band_names"] != info["band_names"]:
            raise ModelError(last_path, f"was trained on bands {state['band_names']}, the cube has "
                                        f"{info['band_names']}")
        _check_resume(last_path, state, info, meta["training"], seed)
        net.load_state_dict(state["state_dict"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]), list(state.get("history", []))
    run_dir.mkdir(parents=True, exist_ok=True)

    steps = math.ceil(len(train_set) / batch_size)
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)
    if progress:
        progress("start", {"epochs": epochs, "start_epoch": start_epoch, "steps": steps, "device": str(dev)})
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False) if val_set is not None and len(val_set) else None
    best = max((r["val_mean_iou"] for r in history if not math.isnan(r["val_mean_iou"])), default=-1.0)
    checkpoints = list(run_dir.glob("checkpoint_epoch*.pt"))
    for epoch in range(start_epoch + 1, epochs + 1):
        tic = time.perf_counter()
        epoch_seed = _epoch_seed(seed, epoch)
        torch.manual_seed(epoch_seed)  # dropout of the patch classifier
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(epoch_seed))
        augment = torch.Generator().manual_seed(epoch_seed + 1)
        net.train()
        loss_sum, n_seen = 0.0, 0
        for step, batch in enumerate(loader, start=1):
            step_lr = learning_rate(lr, (epoch - 1) * steps + step - 1, epochs * steps, schedule)
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            logits, target = _batch_logits_and_target(net, batch, dev, amp_dtype, augment, centre_window,
                                                      intensity_jitter)
            pixel_weight = None
            if object_weight != 1 and net.dense:
                pixel_weight = small_ice_object_weights(target, object_weight).to(dev)
            loss = weighted_cross_entropy(logits, target, weight, label_smoothing, pixel_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.item() * len(target)
            n_seen += len(target)
            if progress:
                progress("step", {"epoch": epoch, "step": step, "loss": loss.item()})
            if step >= steps:
                break
        val = validate(net, val_loader, weight, dev, amp_dtype, centre_window) if val_loader else None
        record = _log_record(epoch, loss_sum / max(n_seen, 1), val, step_lr, time.perf_counter() - tic, step)
        history.append(record)
        state = make_checkpoint(net, optimizer=optimizer, epoch=epoch, history=history, **meta)
        if epoch % save_interval == 0:
            checkpoints.append(save_checkpoint(run_dir / f"checkpoint_epoch{epoch}.pt", state))
        score = record["val_mean_iou"]
        if not math.isnan(score) and score > best:
            best = score
            save_checkpoint(run_dir / "best.pt", state)
        save_checkpoint(last_path, state)
        _write_logs(run_dir, history)
        if progress:
            progress("epoch", record)
    csv_path, json_path, png_path = run_dir / "log.csv", run_dir / "log.json", run_dir / "learning_curves.png"
    if not csv_path.exists():
        _write_logs(run_dir, history)
    best_path = run_dir / "best.pt"
    return RunResult(run_dir=run_dir, last_checkpoint=last_path,
                     best_checkpoint=best_path if best_path.exists() else None, history=history,
                     start_epoch=start_epoch, epochs=epochs, device=str(dev), log_csv=csv_path,
                     log_json=json_path, curves_png=png_path,
                     checkpoints=sorted(set(checkpoints), key=lambda p: int(p.stem.removeprefix("checkpoint_epoch"))),
                     model=model)
