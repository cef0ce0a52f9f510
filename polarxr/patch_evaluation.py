"""Scoring a checkpoint on the patches of a training cube: one class per patch against ``patch_label``.

What a patch's predicted class is:

- patch classifier (``patchcnn``): its output class;
- segmenter (``unet``): the class of the **central window** (8 x 8 px by default): the argmax of the
  softmax probabilities averaged over that window. This is the segmenter's answer to the question the
  patch label asks (the class at the patch centre, as the seed labels its patches), smoothed over a few
  pixels so that one speckled pixel does not decide it.

Images are normalised with the checkpoint's own normalisation (as at inference), not the cube's. Patches
without a label (``patch_label`` 255) are left out. Patches flagged at import (mostly nodata) are scored
with the others and also reported apart (``unflagged``), or left out with ``exclude_flagged``.
"""

from __future__ import annotations

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


def patch_classes(logits: torch.Tensor, window: int = CENTRE_WINDOW) -> torch.Tensor:
    """Class per patch ``(N,)`` int64 from ``(N, C)`` classifier logits or ``(N, C, K, K)`` segmenter logits
    (argmax of the softmax averaged over the central ``window`` x ``window`` px)."""
    if logits.ndim == 2:
        return logits.argmax(1)
    size = logits.shape[-1]
    if not 1 <= window <= size:
        raise ValueError(f"centre window {window} px does not fit {size} px patches")
    lo = (size - window) // 2
    probs = logits[..., lo:lo + window, lo:lo + window].float().softmax(1)
    return probs.mean(dim=(-2, -1)).argmax(1)


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


@torch.no_grad()
def predict_cube_patches(cube_path: str | Path, checkpoint: str | Path, split: str = "val", *,
                         device: str = "cpu", window: int = CENTRE_WINDOW, exclude_flagged: bool = False
                         ) -> dict:
    """``index``, ``truth``, ``pred`` (uint8 codes) and ``flagged`` per scored patch of ``split``
    (train, val, test or all), and the checkpoint's ``model`` name; reads ``BATCH`` patches at a time."""
    from polarxr.train import load_checkpoint

    if split not in (*SPLITS, "all"):
        raise CubeError(cube_path, f"unknown split {split!r}; use one of {', '.join(SPLITS)} or all")
    root, n = open_cube_group(cube_path)
    net, meta = load_checkpoint(checkpoint, device)
    bands = [str(b) for b in root.attrs.get("band_names", [])]
    if list(meta["band_names"]) != bands:
        raise ModelError(checkpoint, f"was trained on bands {meta['band_names']}, the cube {cube_path} has {bands}")
    size = int(root.attrs["patch_size"])
    if not net.dense and meta["model_config"].get("patch_size") != size:
        raise ModelError(checkpoint, f"classifies {meta['model_config'].get('patch_size')} px patches, the "
                                     f"cube's are {size} px")
    indices, flagged = _selected(root, n, split, exclude_flagged)
    nodata = root.attrs.get("nodata")
    labels = root["patch_label"][:n]
    preds = np.zeros(len(indices), np.uint8)
    image = root["image"]
    for lo in range(0, len(indices), BATCH):
        idx = indices[lo:lo + BATCH]
        # one contiguous read per batch (indices are sorted), then the batch's patches
        raw = image[int(idx[0]):int(idx[-1]) + 1][idx - idx[0]]
        batch = np.stack([normalise(p, meta["norm"]["mean"], meta["norm"]["std"], nodata)[0] for p in raw])
        x = torch.from_numpy(batch).to(device)
        logits = net.forward_padded(x) if net.dense else net(x)
        preds[lo:lo + len(idx)] = patch_classes(logits, window).cpu().numpy()
    return {"index": indices, "truth": labels[indices].astype(np.uint8), "pred": preds, "flagged": flagged,
            "model": meta["model_config"]["name"]}


def _scores(truth: np.ndarray, pred: np.ndarray) -> dict:
    m = metrics_from_confusion(confusion_matrix(pred, truth, N_CLASSES))
    return {"accuracy": m["overall_accuracy"], "n_patches": m["n_pixels"], "mean_f1": m["mean_f1"],
            "per_class": {name: {k: v[k] for k in ("precision", "recall", "f1", "support")}
                          for name, v in m["per_class"].items()},
            "confusion_matrix": m["confusion_matrix"], "class_names": m["class_names"]}


def evaluate_patches(cube_path: str | Path, checkpoint: str | Path, split: str = "val", *, device: str = "cpu",
                     window: int = CENTRE_WINDOW, exclude_flagged: bool = False) -> dict:
    """Accuracy, per-class precision / recall / F1 / support, mean F1 and the confusion matrix (rows truth,
    columns prediction, code order L, W, I) of ``checkpoint`` on the cube's ``split`` patches.

    Also ``unflagged`` (the same scores without the patches flagged at import), ``n_flagged``, ``split``,
    ``model``, ``centre_window`` (segmenters; None for the patch classifier), ``cube`` and ``checkpoint``.
    """
    out = predict_cube_patches(cube_path, checkpoint, split, device=device, window=window,
                               exclude_flagged=exclude_flagged)
    if len(out["index"]) == 0:
        raise CubeError(cube_path, f"has no labelled patches in split {split!r}")
    name = out["model"]
    scores = _scores(out["truth"], out["pred"])
    keep = ~out["flagged"]
    return {**scores, "split": split, "model": name, "centre_window": window if name != "patchcnn" else None,
            "n_flagged": int(out["flagged"].sum()),
            "unflagged": _scores(out["truth"][keep], out["pred"][keep]) if keep.any() else None,
            "cube": str(cube_path), "checkpoint": str(checkpoint)}
