"""Scoring a checkpoint on the patches of a training cube: one class per patch against ``patch_label``.

What a patch's predicted class is:

- patch classifier (``patchcnn``): its output class;
- segmenter (``unet``): the class of the **central window** (8 x 8 px by default): the argmax of the
  softmax probabilities averaged over that window. This is the segmenter's answer to the question the
  patch label asks (the class at the patch centre, as the seed labels its patches), smoothed over a few
  pixels so that one speckled pixel does not decide it.

Options (both off by default, the plain answer of one model):

- **test-time augmentation** (``tta``): the class probabilities are averaged over the 8 flips / rotations of
  the patch (the symmetries training augments with), which evens out orientation-dependent mistakes;
- **ensemble**: several checkpoints (same bands); their class probabilities are averaged.

Images are normalised with each checkpoint's own normalisation (as at inference), not the cube's. Patches
without a label (``patch_label`` 255) are left out. Patches flagged at import (mostly nodata) are scored
with the others and also reported apart (``unflagged``), or left out with ``exclude_flagged``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from polarxr.classes import N_CLASSES, NO_LABEL
from polarxr.cube import SPLIT_CODES, SPLITS, open_cube_group
from polarxr.datasets import flagged_patches
from polarxr.errors import CubeError, ModelError
from polarxr.evaluate import confusion_matrix, metrics_from_confusion
from polarxr.patches import normalise

#: Edge (px) of the central window whose mean probability gives a segmenter's patch class.
CENTRE_WINDOW = 8
#: Reads and forward passes go by this many patches.
BATCH = 256


def patch_probabilities(logits: torch.Tensor, window: int = CENTRE_WINDOW) -> torch.Tensor:
    """Class probabilities per patch ``(N, C)`` float32 from ``(N, C)`` classifier logits (softmax) or
    ``(N, C, K, K)`` segmenter logits (softmax averaged over the central ``window`` x ``window`` px)."""
    if logits.ndim == 2:
        return logits.float().softmax(1)
    size = logits.shape[-1]
    if not 1 <= window <= size:
        raise ValueError(f"centre window {window} px does not fit {size} px patches")
    lo = (size - window) // 2
    return logits[..., lo:lo + window, lo:lo + window].float().softmax(1).mean(dim=(-2, -1))


def patch_classes(logits: torch.Tensor, window: int = CENTRE_WINDOW) -> torch.Tensor:
    """Class per patch ``(N,)`` int64: the argmax of :func:`patch_probabilities`."""
    return patch_probabilities(logits, window).argmax(1)


#: The 8 symmetries of a square as (quarter turns, mirrored): what training augments with.
SYMMETRIES = tuple((turns, mirror) for mirror in (False, True) for turns in range(4))


def _symmetric(x: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    return torch.rot90(x.flip(-1) if mirror else x, turns, dims=(-2, -1))


def _probabilities(net, x: torch.Tensor, window: int, tta: bool) -> torch.Tensor:
    """``(N, C)`` class probabilities of one model, averaged over :data:`SYMMETRIES` with ``tta``. The
    central window of a segmenter maps onto itself under each symmetry, so no output needs turning back."""
    views = SYMMETRIES if tta else SYMMETRIES[:1]
    total = 0
    for turns, mirror in views:
        xs = _symmetric(x, turns, mirror).contiguous()
        total = total + patch_probabilities(net.forward_padded(xs) if net.dense else net(xs), window)
    return total / len(views)


def _selected(root, n: int, split: str, exclude_flagged: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the split's labelled patches and, aligned, whether each is flagged."""
    codes = root["split"][:n]
    chosen = np.ones(n, bool) if split == "all" else codes == SPLIT_CODES[split]
    chosen &= root["patch_label"][:n] != NO_LABEL
    flagged = np.zeros(n, bool)
    flagged[flagged_patches(dict(root.attrs), n)] = True
    if exclude_flagged:
        chosen &= ~flagged
    indices = np.flatnonzero(chosen)
    return indices, flagged[indices]


def _checkpoints(checkpoint) -> list:
    return [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint)


@torch.no_grad()
def predict_cube_patches(cube_path: str | Path, checkpoint: str | Path | Sequence[str | Path], split: str = "val",
                         *, device: str = "cpu", window: int = CENTRE_WINDOW, exclude_flagged: bool = False,
                         tta: bool = False) -> dict:
    """``index``, ``truth``, ``pred`` (uint8 codes), ``probabilities`` ``(n, C)`` and ``flagged`` per scored
    patch of ``split`` (train, val, test or all), and the ``model`` name(s); reads ``BATCH`` patches at a
    time. ``checkpoint``: one, or several (an ensemble: probabilities averaged); ``tta``: see the module."""
    from polarxr.train import load_checkpoint

    if split not in (*SPLITS, "all"):
        raise CubeError(cube_path, f"unknown split {split!r}; use one of {', '.join(SPLITS)} or all")
    paths = _checkpoints(checkpoint)
    if not paths:
        raise ModelError(None, "no checkpoint to score")
    root, n = open_cube_group(cube_path)
    bands = [str(b) for b in root.attrs.get("band_names", [])]
    size = int(root.attrs["patch_size"])
    models = []
    for path in paths:
        net, meta = load_checkpoint(path, device)
        if list(meta["band_names"]) != bands:
            raise ModelError(path, f"was trained on bands {meta['band_names']}, the cube {cube_path} has {bands}")
        if not net.dense and meta["model_config"].get("patch_size") != size:
            raise ModelError(path, f"classifies {meta['model_config'].get('patch_size')} px patches, the "
                                   f"cube's are {size} px")
        models.append((net, meta))
    indices, flagged = _selected(root, n, split, exclude_flagged)
    nodata = root.attrs.get("nodata")
    labels = root["patch_label"][:n]
    probs = np.zeros((len(indices), N_CLASSES), np.float32)
    image = root["image"]
    for lo in range(0, len(indices), BATCH):
        idx = indices[lo:lo + BATCH]
        # one contiguous read per batch (indices are sorted), then the batch's patches
        raw = image[int(idx[0]):int(idx[-1]) + 1][idx - idx[0]]
        for net, meta in models:
            batch = np.stack([normalise(p, meta["norm"]["mean"], meta["norm"]["std"], nodata)[0] for p in raw])
            p = _probabilities(net, torch.from_numpy(batch).to(device), window, tta)
            probs[lo:lo + len(idx)] += p.cpu().numpy() / len(models)
    names = [meta["model_config"]["name"] for _, meta in models]
    return {"index": indices, "truth": labels[indices].astype(np.uint8), "pred": probs.argmax(1).astype(np.uint8),
            "probabilities": probs, "flagged": flagged, "model": names[0] if len(set(names)) == 1 else "+".join(names)}


def _scores(truth: np.ndarray, pred: np.ndarray) -> dict:
    m = metrics_from_confusion(confusion_matrix(pred, truth, N_CLASSES))
    return {"accuracy": m["overall_accuracy"], "n_patches": m["n_pixels"], "mean_f1": m["mean_f1"],
            "per_class": {name: {k: v[k] for k in ("precision", "recall", "f1", "support")}
                          for name, v in m["per_class"].items()},
            "confusion_matrix": m["confusion_matrix"], "class_names": m["class_names"]}


def evaluate_patches(cube_path: str | Path, checkpoint: str | Path | Sequence[str | Path], split: str = "val", *,
                     device: str = "cpu", window: int = CENTRE_WINDOW, exclude_flagged: bool = False,
                     tta: bool = False) -> dict:
    """Accuracy, per-class precision / recall / F1 / support, mean F1 and the confusion matrix (rows truth,
    columns prediction, code order L, W, I) of ``checkpoint`` on the cube's ``split`` patches.

    Also ``unflagged`` (the same scores without the patches flagged at import), ``n_flagged``, ``split``,
    ``model``, ``centre_window`` (segmenters; None for the patch classifier), ``tta``, ``cube`` and
    ``checkpoint`` (a list for an ensemble). ``checkpoint`` and ``tta``: :func:`predict_cube_patches`.
    """
    out = predict_cube_patches(cube_path, checkpoint, split, device=device, window=window,
                               exclude_flagged=exclude_flagged, tta=tta)
    if len(out["index"]) == 0:
        raise CubeError(cube_path, f"has no labelled patches in split {split!r}")
    name = out["model"]
    scores = _scores(out["truth"], out["pred"])
    keep = ~out["flagged"]
    paths = _checkpoints(checkpoint)
    return {**scores, "split": split, "model": name, "centre_window": window if name != "patchcnn" else None,
            "tta": tta,
            "n_flagged": int(out["flagged"].sum()),
            "unflagged": _scores(out["truth"][keep], out["pred"][keep]) if keep.any() else None,
            "cube": str(cube_path), "checkpoint": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]}
