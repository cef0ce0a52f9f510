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
    channels), then a dropout MLP. ``width`` is the channel count of the first convolution. With
    ``batchnorm``, each convolution is followed by batch normalisation, whose statistics can be
    re-estimated on unlabelled patches of another domain (:func:`polarxr.adaptation.adapt_batchnorm`).
    """

    #: one class per patch, as opposed to a per-pixel segmenter
    dense = False

    def __init__(self, in_channels: int = 3, n_classes: int = 3, width: int = 32, patch_size: int = 64,
                 dropout: float = 0.5, batchnorm: bool = False):
        super().__init__()
        if in_channels < 1 or n_classes < 2 or width < 1 or patch_size < 8:
            raise ValueError(f"bad patch classifier size: in_channels={in_channels}, n_classes={n_classes}, "
                             f"width={width}, patch_size={patch_size}")
        self.in_channels, self.n_classes, self.width = in_channels, n_classes, width
        self.patch_size, self.dropout, self.batchnorm = patch_size, dropout, bool(batchnorm)
        w = width

        def conv(c_in: int, c_out: int, k: int) -> list[nn.Module]:
            layers = [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=not batchnorm)]
            return layers + ([nn.BatchNorm2d(c_out)] if batchnorm else []) + [nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *conv(in_channels, w, 5), nn.MaxPool2d(2),
            *conv(w, 2 * w, 5), nn.MaxPool2d(2),
            *conv(2 * w, 3 * w, 3),
            *conv(3 * w, 3 * w, 3),
            *conv(3 * w, 2 * w, 3), nn.MaxPool2d(2),
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
        config = {"name": "patchcnn", "in_channels": self.in_channels, "n_classes": self.n_classes,
                  "width": self.width, "patch_size": self.patch_size, "dropout": self.dropout}
        # only when on, so the configs (and resume checks) of earlier checkpoints stay as they were
        return config | ({"batchnorm": True} if self.batchnorm else {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)`` for normalised patches ``(N, in_channels, patch_size, patch_size)``."""
        if tuple(x.shape[-2:]) != (self.patch_size, self.patch_size):
            raise ValueError(f"patch classifier input of {tuple(x.shape[-2:])} px: expected "
                             f"{self.patch_size} x {self.patch_size} patches")
        return self.classifier(self.features(x))
