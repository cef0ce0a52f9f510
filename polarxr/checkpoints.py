"""Checkpoints: what a trained model carries to inference, written atomically and read back validated.

A checkpoint is a plain dict readable with ``torch.load(weights_only=True)``: model config and weights,
band names, normalisation, label codes, patch size and (for resuming) the optimizer state and history.

A checkpoint's **version** is the first 16 hex digits of its file's SHA-256. A run fixes it once, on the
client; its tasks carry it, and :class:`ModelCache` loads a model only from bytes of that version, so a
``best.pt`` replaced during a run can never give one map blocks of two models.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from polarxr import __version__
from polarxr.classes import CLASS_CODES, CLASS_NAMES, NO_LABEL
from polarxr.errors import ModelError
from polarxr.io import atomic_path
from polarxr.models import MODELS, build_model

CHECKPOINT_FORMAT = "polarxr-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
#: keys of a checkpoint dict that only training needs; :func:`load_checkpoint`'s meta leaves them out.
_TRAINING_STATE = ("state_dict", "optimizer")


def _plain(value):
    """Numpy scalars/arrays -> Python types, so the checkpoint loads with ``weights_only=True``."""
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, int) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write a checkpoint dict atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def make_checkpoint(net: nn.Module, *, band_names: list[str], norm: dict, patch_size: int, epoch: int = 0,
                    optimizer: torch.optim.Optimizer | None = None, **extra) -> dict:
    """The checkpoint dict of ``net``: everything inference needs, plus training state when given.

    ``norm`` is ``{"mean": [...], "std": [...]}`` per band in the scene's units; ``extra`` adds plain
    values (seed, history, ...). Loads with ``torch.load(weights_only=True)``.
    """
    state = {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
        "polarxr_version": __version__, "torch_version": str(torch.__version__),
        "model_config": net.config, "band_names": list(band_names), "norm": norm,
        "label_codes": dict(CLASS_CODES), "class_names": dict(CLASS_NAMES), "no_label": NO_LABEL,
        "patch_size": patch_size, "halo": getattr(net, "halo", None),
        "pad_multiple": getattr(net, "pad_multiple", None), "epoch": epoch, **extra,
    }
    state = _plain(state)
    state["state_dict"] = net.state_dict()
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu", model: str | None = None,
                    data: bytes | None = None) -> dict:
    """The raw checkpoint dict (weights and optimizer state included), validated.

    ``data``: the file's bytes, already read (they are parsed instead of the file). Raises
    :class:`ModelError` when the file is missing, unreadable, not a polarxr checkpoint, or (with
    ``model``) holds another model than ``model``.
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise ModelError(path, "checkpoint does not exist")
    try:
        source = io.BytesIO(data) if data is not None else path
        state = torch.load(source, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise ModelError(path, f"not a readable torch checkpoint ({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(path, "is not a polarxr checkpoint (no polarxr model config in it)")
    name = state.get("model_config", {}).get("name")
    if name not in MODELS:
        raise ModelError(path, f"holds an unknown model {name!r}")
    if model is not None and name != model:
        raise ModelError(path, f"holds a {name!r} model, not the {model!r} asked for")
    return state


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", model: str | None = None,
                    data: bytes | None = None) -> tuple[nn.Module, dict]:
    """``(model in eval mode on device, meta)`` from a checkpoint; see :func:`read_checkpoint` for errors.

    ``meta`` is the checkpoint without weights and optimizer state: ``model_config``, ``band_names``,
    ``norm`` ({"mean", "std"} per band, in the scene's units), ``label_codes``, ``class_names``,
    ``patch_size``, ``halo``/``pad_multiple`` (px, U-Net), ``epoch``, ``seed``, ``history``, versions.
    """
    state = read_checkpoint(path, device, model, data)
    net = build_model(state["model_config"])
    try:
        net.load_state_dict(state["state_dict"])
    except (RuntimeError, KeyError) as err:
        raise ModelError(path, f"weights do not fit the model config {state['model_config']} ({err})") from None
    net.to(device).eval()
    meta = {k: v for k, v in state.items() if k not in _TRAINING_STATE}
    return net, meta


# ------------------------------------------------------------------------------------------ versions
#: Hex digits of the SHA-256 that make a checkpoint's version.
VERSION_DIGITS = 16


def checkpoint_version(path: str | Path) -> str:
    """The model version of a checkpoint file: the first 16 hex digits of its SHA-256."""
    from polarxr.io import file_sha256, local_copy

    try:
        path = local_copy(path)  # a checkpoint on object storage: this machine's copy of it
    except FileNotFoundError:
        raise ModelError(path, "checkpoint does not exist") from None
    if not path.is_file():
        raise ModelError(path, "checkpoint does not exist")
    return file_sha256(path)[:VERSION_DIGITS]


class CheckpointChanged(ModelError):
    """The checkpoint file no longer holds the model version the run fixed (it was replaced meanwhile)."""


class ModelCache:
    """Models loaded from checkpoints, by ``(path, version, device)``: each loaded once, the least recently
    used evicted beyond ``max_models``.

    :meth:`get` reads the file once, checks its bytes are of the version asked for and loads the model
    from those same bytes, so what is cached is exactly that version. Loading holds a lock per key: eight
    threads of a GPU worker asking at once load the model once. A new version of a path evicts the old.
    """

    def __init__(self, max_models: int = 2):
        self.max_models = max_models
        self.loads = 0
        self._models: OrderedDict[tuple[str, str, str], tuple[nn.Module, dict]] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str, str], threading.Lock] = {}

    def __len__(self) -> int:
        return len(self._models)

    def get(self, path: str | Path, version: str, device: str = "cpu") -> tuple[nn.Module, dict]:
        """``(model in eval mode on device, meta)`` of ``path`` at ``version``.

        Raises :class:`CheckpointChanged` when the file now holds another version, :class:`ModelError`
        when it cannot be used.
        """
        key = (str(Path(path).resolve()), version, str(device))
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            loaded = self._load(Path(path), version, device)
            with self._lock:
                for old in [k for k in self._models if k[0] == key[0] and k[1] != version]:
                    self._evict(old)
                self._models[key] = loaded
                while len(self._models) > self.max_models:
                    self._evict(next(iter(self._models)))
                self._key_locks.pop(key, None)
            return loaded

    def _load(self, path: Path, version: str, device: str) -> tuple[nn.Module, dict]:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ModelError(path, f"checkpoint cannot be read ({err.strerror or err})") from None
        found = hashlib.sha256(data).hexdigest()[:VERSION_DIGITS]
        if found != version:
            raise CheckpointChanged(path, f"changed during the run: the run uses model version {version}, the "
                                          f"file now holds {found}; run again to use the new model")
        self.loads += 1
        model, meta = load_checkpoint(path, device=device, data=data)
        meta["model_version"] = version
        return model, meta

    def _evict(self, key: tuple[str, str, str]) -> None:
        model, _ = self._models.pop(key)
        del model
        if key[2].startswith("cuda") and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def clear(self) -> None:
        """Drop every model."""
        with self._lock:
            for key in list(self._models):
                self._evict(key)
