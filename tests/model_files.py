"""Checkpoints for tests: untrained tiny U-Nets in polarxr's checkpoint format (their quality is not tested)."""

from __future__ import annotations

from pathlib import Path

import torch

from polarxr.checkpoints import make_checkpoint, save_checkpoint
from polarxr.models import build_model


def untrained_unet(path: Path, band_names: list[str], norm: dict, patch_size: int = 64, seed: int = 0,
                   **metadata) -> Path:
    """A random-weight U-Net (width 4, depth 2) for scenes of ``band_names``, saved at ``path``; ``metadata``
    (e.g. ``radiometry``) goes to :func:`polarxr.checkpoints.make_checkpoint`."""
    torch.manual_seed(seed)
    net = build_model({"name": "unet", "in_channels": len(band_names), "n_classes": 3, "width": 4, "depth": 2}).eval()
    return save_checkpoint(path, make_checkpoint(net, band_names=band_names, norm=norm, patch_size=patch_size,
                                                 **metadata))
