"""Models: the U-Net segmenter (main) and the seed's patch classifier (baseline), built from a config dict."""

from __future__ import annotations

from torch import nn

from polarxr.errors import ModelError
from polarxr.models.patchcnn import PatchCNN
from polarxr.models.unet import UNet

#: model name -> class; the name is what checkpoints and ``--model`` carry.
MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "patchcnn": PatchCNN}


def build_model(config: dict) -> nn.Module:
    """Build a model from ``{"name": "unet"|"patchcnn", **constructor arguments}``.

    E.g. ``{"name": "unet", "in_channels": 3, "n_classes": 3, "width": 16, "depth": 3}``. The model's
    ``.config`` gives back the full dict. Raises :class:`ModelError` for an unknown name or bad arguments.
    """
    options = dict(config)
    name = options.pop("name", None)
    if name not in MODELS:
        raise ModelError(None, f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    try:
        return MODELS[name](**options)
    except (TypeError, ValueError) as err:
        raise ModelError(None, f"cannot build model {name!r} from {options}: {err}") from None


__all__ = ["MODELS", "PatchCNN", "UNet", "build_model"]
