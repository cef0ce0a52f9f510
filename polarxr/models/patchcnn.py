"""The seed's baseline: an AlexNet-style classifier of a 64x64 patch into land / sea / ice.

As in ysbecca/extremeearth-polar, a patch gets the class of its centre pixel; a scene map is re-pieced
from one prediction per patch, so its resolution is the patch size. Kept as the reference to beat.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchCNN(nn.Module):
    """``(N, in_channels, patch_size, patch_size)`` float -> ``(N, n_classes)`` logits of the centre class.

    Five convolutions with ReLU and three max-pools (AlexNet's layout scaled to 64 px patches and a few
    channels), then a dropout MLP. ``width`` is the channel count of the first convolution.
    """

    #: one class per patch, as opposed to a per-pixel segmenter
    dense = False

    def __init__(self, in_channels: int = 3, n_classes: int = 3, width: int = 32, patch_size: int = 64,
                 dropout: float = 0.5):
        super().__init__()
        if in_channels < 1 or n_classes < 2 or width < 1 or patch_size < 8:
            raise ValueError(f"bad patch classifier size: in_channels={in_channels}, n_classes={n_classes}, "
                             f"width={width}, patch_size={patch_size}")
        self.in_channels, self.n_classes, self.width = in_channels, n_classes, width
        self.patch_size, self.dropout = patch_size, dropout
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 3 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(3 * w, 3 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(3 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(2 * w * 16, 8 * w), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(8 * w, 8 * w), nn.ReLU(inplace=True),
            nn.Linear(8 * w, n_classes),
        )

    @property
    def config(self) -> dict:
        """The :func:`polarxr.models.build_model` config that rebuilds this architecture."""
        return {"name": "patchcnn", "in_channels": self.in_channels, "n_classes": self.n_classes,
                "width": self.width, "patch_size": self.patch_size, "dropout": self.dropout}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)`` for normalised patches ``(N, in_channels, patch_size, patch_size)``."""
        if tuple(x.shape[-2:]) != (self.patch_size, self.patch_size):
            raise ValueError(f"patch classifier input of {tuple(x.shape[-2:])} px: expected "
                             f"{self.patch_size} x {self.patch_size} patches")
        return self.classifier(self.features(x))
