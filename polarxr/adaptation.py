"""Unsupervised domain adaptation of a trained model to new imagery: no label of the new imagery is read.

AdaBN (Li et al., 2016, "Revisiting batch normalization for practical domain adaptation"): a network's
batch-normalisation layers hold the mean and variance of their inputs over the training imagery; on imagery
whose statistics differ (a model trained on ``polarxr synth`` scenes, applied to the real product), those
are re-estimated over patches of the new imagery, every weight staying as trained. With it, the input
normalisation (per-band mean / std, in the scene's units) is replaced by the new cube's (``input_norm``
"cube"), the same idea at the input. Both use pixel values only: the cube's labels are never opened.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from polarxr.checkpoints import read_checkpoint, save_checkpoint
from polarxr.cube import SPLIT_CODES, SPLITS, open_cube_group
from polarxr.datasets import flagged_patches
from polarxr.errors import CubeError, ModelError
from polarxr.models import build_model
from polarxr.patches import normalise

#: What ``input_norm`` may be: the new cube's per-band statistics, or the checkpoint's own.
INPUT_NORMS = ("cube", "checkpoint")


def batchnorm_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-normalisation layers of ``net``, in order."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adapt_batchnorm(checkpoint: str | Path, cube_path: str | Path, out: str | Path, *, split: str = "all",
                    input_norm: str = "cube", max_patches: int | None = None, batch_size: int = 128,
                    seed: int = 0) -> dict:
    """Write ``out``: ``checkpoint`` with its batch-norm statistics re-estimated on the cube's patches.

    Patches: those of ``split`` (train, val, test or all), without the ones flagged at import (mostly
    nodata), at most ``max_patches`` drawn at random with ``seed``; their images only. Each batch-norm
    layer's running mean / variance becomes the average over all those patches (cumulative, not the
    training momentum). ``input_norm``: "cube" also takes the cube's per-band normalisation, "checkpoint"
    keeps the checkpoint's. The written checkpoint records what was done under ``adaptation``. Returns
    that record. :class:`ModelError` for a checkpoint without batch norm (with ``input_norm``
    "checkpoint": nothing would change) or of other bands; :class:`CubeError` for an unusable cube.
    """
    if input_norm not in INPUT_NORMS:
        raise ModelError(checkpoint, f"unknown input normalisation {input_norm!r}; use {' or '.join(INPUT_NORMS)}")
    if split not in (*SPLITS, "all"):
        raise CubeError(cube_path, f"unknown split {split!r}; use one of {', '.join(SPLITS)} or all")
    state = read_checkpoint(checkpoint, "cpu")
    net = build_model(state["model_config"])
    net.load_state_dict(state["state_dict"])
    layers = batchnorm_layers(net)
    if not layers and input_norm == "checkpoint":
        raise ModelError(checkpoint, "has no batch-normalisation layers to adapt (train the patch classifier "
                                     "with --batchnorm, or take the cube's input normalisation)")
    root, n = open_cube_group(cube_path)
    attrs = dict(root.attrs)
    bands = [str(b) for b in attrs.get("band_names", [])]
    if list(state["band_names"]) != bands:
        raise ModelError(checkpoint, f"was trained on bands {state['band_names']}, the cube {cube_path} has {bands}")
    size = int(attrs["patch_size"])
    if not net.dense and state["model_config"].get("patch_size") != size:
        raise ModelError(checkpoint, f"classifies {state['model_config'].get('patch_size')} px patches, the "
                                     f"cube's are {size} px")
    norm = state["norm"]
    if input_norm == "cube":
        if not attrs.get("norm", {}).get("mean"):
            raise CubeError(cube_path, "has no normalisation ('norm' attribute with per-band mean/std)")
        norm = {"mean": [float(v) for v in attrs["norm"]["mean"]], "std": [float(v) for v in attrs["norm"]["std"]]}
    chosen = np.ones(n, bool) if split == "all" else root["split"][:n] == dict(attrs.get("split_codes", SPLIT_CODES))[split]
    chosen[flagged_patches(attrs, n)] = False
    indices = np.flatnonzero(chosen)
    if max_patches is not None and len(indices) > max_patches:
        indices = np.sort(np.random.default_rng(seed).choice(indices, max_patches, replace=False))
    if len(indices) == 0:
        raise CubeError(cube_path, f"has no patches with imagery in split {split!r} to adapt on")

    # only the batch-norm layers run in training mode (they then collect statistics); dropout stays off
    net.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every patch counts the same
        layer.train()
    nodata = attrs.get("nodata")
    image = root["image"]
    # without batch norm only the input normalisation changes: no pass over the patches is needed
    for lo in range(0, len(indices) if layers else 0, batch_size):
        idx = indices[lo:lo + batch_size]
        raw = image[int(idx[0]):int(idx[-1]) + 1][idx - idx[0]]
        x = torch.from_numpy(np.stack([normalise(p, norm["mean"], norm["std"], nodata)[0] for p in raw]))
        net.forward_padded(x) if net.dense else net(x)
    net.eval()
    record = {"method": "adabn" if layers else "input normalisation", "from": str(checkpoint),
              "cube": str(cube_path), "split": split, "patches": int(len(indices)), "input_norm": input_norm,
              "batchnorm_layers": len(layers), "labels_used": False}
    new = {k: v for k, v in state.items() if k not in ("optimizer", "state_dict")}
    new.update(norm=norm, adaptation=record, state_dict=net.state_dict())
    save_checkpoint(out, new)
    return record
