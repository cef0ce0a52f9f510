"""A tiny real Zarr v3 training cube in the documented layout, for model and training tests.

Patches show three classes with distinct mean backscatter per band and gamma speckle, split by a random
straight boundary and a round floe, some with a nodata margin (image 0, label 255), so a model can learn
them in a few steps. Scenes 0 and 1 are "train", scene 2 is "val".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from polarxr.classes import NO_LABEL

BAND_NAMES = ["HH", "HV", "HH-HV"]
#: mean DN per band of land, sea, ice
CLASS_MEANS = np.array([[90, 80, 70], [25, 15, 20], [170, 120, 150]], dtype=np.float64)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
CRS_WKT = ('PROJCS["WGS 84 / polar stereographic",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",'
           '6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
           'PROJECTION["Polar_Stereographic"],PARAMETER["latitude_of_origin",90],PARAMETER["central_meridian",0],'
           'UNIT["metre",1]]')


def _patch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One ``(band, y, x)`` uint8 image and its ``(y, x)`` uint8 label."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    first, second = rng.choice(3, size=2, replace=False)
    angle = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(-0.3, 0.3) * size
    side = (xx - size / 2) * np.cos(angle) + (yy - size / 2) * np.sin(angle) > offset
    label = np.where(side, first, second).astype(np.uint8)
    cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(2, size / 4)]
    label[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 2
    speckle = rng.gamma(8.0, 1 / 8.0, size=(3, size, size))
    image = np.clip(CLASS_MEANS[label].transpose(2, 0, 1) * speckle, 1, 255).astype(np.uint8)
    if rng.random() < 0.25:  # a nodata margin, as at a swath edge
        margin = int(rng.integers(2, size // 4))
        image[:, :, :margin] = 0
        label[:, :margin] = NO_LABEL
    return image, label


def write_tiny_cube(path: Path, patches_per_scene: int = 16, patch_size: int = 32, seed: int = 0,
                    labelled: bool = True) -> Path:
    """Write a 3-scene cube (train, train, val) of ``patches_per_scene`` patches each to ``path``."""
    rng = np.random.default_rng(seed)
    scenes = [f"S1A_EW_GRDM_1SDH_2018011{i}T075430_2018011{i}T075530_020177_0226B9_9FE3" for i in range(3)]
    splits = {scenes[0]: "train", scenes[1]: "train", scenes[2]: "val"}
    n = patches_per_scene * len(scenes)
    images = np.zeros((n, 3, patch_size, patch_size), np.uint8)
    labels = np.zeros((n, patch_size, patch_size), np.uint8)
    for i in range(n):
        images[i], labels[i] = _patch(rng, patch_size)
    if not labelled:
        labels[:] = NO_LABEL
    scene_index = np.repeat(np.arange(len(scenes)), patches_per_scene).astype(np.int32)
    split = np.array([SPLIT_CODES[splits[scenes[s]]] for s in scene_index], np.uint8)
    centre = patch_size // 2
    rows = rng.integers(0, 10_000, n).astype(np.int32)
    cols = rng.integers(0, 10_000, n).astype(np.int32)

    train = split == SPLIT_CODES["train"]
    valid = (images[train] != 0).any(axis=1)  # (patch, y, x)
    pixels = images[train].transpose(1, 0, 2, 3)[:, valid].astype(np.float64)
    train_labels = labels[train]
    counts = {str(c): int((train_labels == c).sum()) for c in range(3)}

    root = zarr.open_group(path, mode="w", zarr_format=3)
    root.create_array("image", data=images, chunks=(8, 3, patch_size, patch_size),
                      dimension_names=("patch", "band", "y", "x"))
    root.create_array("label", data=labels, chunks=(8, patch_size, patch_size), dimension_names=("patch", "y", "x"))
    for name, data in {
        "patch_label": labels[:, centre, centre], "scene": scene_index, "row": rows, "col": cols,
        "x": 500_000.0 + 40.0 * (cols + centre), "y": -1_800_000.0 - 40.0 * (rows + centre), "split": split,
    }.items():
        root.create_array(name, data=np.asarray(data), chunks=(n,), dimension_names=("patch",))
    root.attrs.update({
        "crs": CRS_WKT, "patch_size": patch_size, "band_names": BAND_NAMES, "dtype": "uint8", "nodata": 0,
        "n_patches": n, "sampler": "random",
        "sampler_params": {"patches_per_scene": patches_per_scene, "seed": seed},
        "class_counts": counts, "scenes": scenes, "splits": splits, "split_codes": SPLIT_CODES,
        "norm": {"mean": pixels.mean(axis=1).tolist(), "std": pixels.std(axis=1).tolist()},
        "version": "test",
    })
    return path


@pytest.fixture
def tiny_cube(tmp_path: Path) -> Path:
    """A freshly written tiny training cube (see :func:`write_tiny_cube`)."""
    return write_tiny_cube(tmp_path / "tiny_cube.zarr")
