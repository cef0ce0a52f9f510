"""A PyTorch ``Dataset`` over the patches of a training cube (lazy Zarr reads, safe with DataLoader workers)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from polarxr.cube import SPLIT_CODES, open_cube_group
from polarxr.errors import CubeError
from polarxr.patches import normalise


def flagged_patches(attrs: dict, n: int) -> np.ndarray:
    """Indices (into the cube's first ``n`` patches) flagged at import: each record's ``flagged`` offsets."""
    found = [r["start"] + np.asarray(r.get("flagged", []), np.int64) for r in attrs.get("scene_records", [])]
    flagged = np.concatenate(found) if found else np.zeros(0, np.int64)
    return flagged[flagged < n]


class PatchDataset(Dataset):
    """Patches of one split: ``(image float32 (band, y, x), label int64 (y, x), patch_label int64 ())``.

    Images are normalised per band with the cube's ``norm`` (mean/std of the valid train pixels, in the
    scene's units); nodata pixels (every band equal to the cube's nodata value, or not finite) and
    non-finite values become 0, the normalised mean. ``split`` "all" takes every patch; ``exclude_flagged``
    leaves out the patches flagged at import (mostly nodata, :mod:`polarxr.seedcompat`). Labels keep 255 for
    "no label". With ``augment``, each item gets one of
    the 8 flips/rotations of the square, the same for image and label, drawn from torch's RNG (seeded per
    DataLoader worker by torch).

    Only the split's indices, centre labels and the normalisation are read up front; the image and label
    arrays are opened on first access in each process, so the dataset pickles to DataLoader workers
    (``num_workers > 0``, fork or spawn) without carrying an open store.
    """

    def __init__(self, cube_path: str | Path, split: str = "train", augment: bool = False,
                 exclude_flagged: bool = False):
        self.path = Path(cube_path)
        root, n = open_cube_group(self.path)
        attrs = dict(root.attrs)
        mapping = dict(attrs.get("split_codes", SPLIT_CODES))
        if split not in mapping and split != "all":
            raise CubeError(self.path, f"unknown split {split!r}; the cube has {sorted(mapping)}")
        self.split, self.augment = split, augment
        chosen = root["split"][:n] == mapping[split] if split != "all" else np.ones(n, bool)
        if exclude_flagged:
            chosen[flagged_patches(attrs, n)] = False
        self.indices = np.flatnonzero(chosen)
        self.patch_labels = root["patch_label"][:n][self.indices].astype(np.int64)
        norm = attrs.get("norm")
        if not norm or not norm.get("mean"):
            raise CubeError(self.path, "has no normalisation ('norm' attribute with per-band mean/std)")
        self.mean = np.asarray(norm["mean"], np.float32)[:, None, None]
        self.std = np.asarray(norm["std"], np.float32)[:, None, None]
        dtype = root["image"].dtype
        self.nodata = attrs.get("nodata", 0 if np.issubdtype(dtype, np.integer) else None)
        self._arrays: tuple[zarr.Array, zarr.Array] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def _open(self) -> tuple[zarr.Array, zarr.Array]:
        if self._arrays is None or self._pid != os.getpid():
            root = zarr.open_group(self.path, mode="r")
            self._arrays, self._pid = (root["image"], root["label"]), os.getpid()
        return self._arrays

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """``(band, y, x)`` raw values -> float32 normalised, nodata pixels and non-finite values set to 0."""
        return normalise(raw, self.mean, self.std, self.nodata)[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_array, label_array = self._open()
        k = int(self.indices[i])
        image = torch.from_numpy(self.normalise(image_array[k]))
        label = torch.from_numpy(label_array[k].astype(np.int64))
        if self.augment:
            turns, flip = int(torch.randint(0, 4, ())), bool(torch.randint(0, 2, ()))
            if flip:
                image, label = image.flip(-1), label.flip(-1)
            image = torch.rot90(image, turns, (-2, -1)).contiguous()
            label = torch.rot90(label, turns, (-2, -1)).contiguous()
        return image, label, torch.tensor(self.patch_labels[i], dtype=torch.int64)
