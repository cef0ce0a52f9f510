"""Importing patch sets made by the seed (ysbecca/extremeearth-polar) into a training cube.

The seed writes one PNG per patch, ``<idx>.png`` (``cv2.imwrite``), and a ``meta.npy`` with one row per
patch. Two row layouts exist:

- ``sub_image_sample_random.py``: ``[idx, x, y, label]``, saved as a string array (all fields strings);
- ``sub_image_sample.py`` (grid): ``[idx, (x, y), label]``, an object array that ``np.load`` can only
  read with pickle (pass ``allow_pickle=True`` for files you trust).

``label`` is the chart letter ``L``/``W``/``I`` (codes 0/1/2, the same as polarxr's) or the code itself.

How the fields map onto the cube:

- ``image``: the PNG's pixels, bands first. ``cv2.imwrite`` takes its array as BGR, so the PNG's red channel
  holds the scene's *third* band; with ``bgr=True`` (default) the channels are reversed back into the
  scene's band order. Band names default to ``red, green, blue`` (what :func:`polarxr.scenes.open_scene`
  calls the bands of an undescribed 3-band 8-bit product). Nodata is 0, as in the 8-bit product.
- ``row``/``col``: the seed cuts ``array[x:x+K, y:y+K]`` from the ``(rows, cols, bands)`` array, so its
  ``x`` is the patch's top-left **row** and its ``y`` the top-left **column**. (Its point-in-polygon label is
  taken at column ``x + K/2``, row ``y + K/2``: the transpose. ``patch_label`` keeps the seed's label, as
  the seed trained on it; only patches near the diagonal agree.)
- ``patch_label``: the meta label. ``label`` (dense): unknown, all 255; such patches serve the patch
  classifier, not the segmenter. ``x``/``y`` (map coordinates): unknown without the scene, NaN; the cube's
  CRS stays unset.
- ``scene``: one scene per import, named after the folder unless given; split by scene as for sampled
  scenes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from polarxr.classes import CLASS_CODES, N_CLASSES, NO_LABEL
from polarxr.cube import (SHARD, SPLIT_CODES, CubeLayout, CubeWriter, SceneResult, SplitConfig, remove_scenes,
                          writer_lock)
from polarxr.errors import CubeError
from polarxr.patches import merge_stats, patch_stats

#: PIL modes the seed's PNGs can have, with their number of bands
_MODES = {"L": 1, "RGB": 3, "RGBA": 4}
_DEFAULT_BANDS = {1: ("band1",), 3: ("red", "green", "blue"), 4: ("red", "green", "blue", "alpha")}


@dataclass(frozen=True)
class SeedMeta:
    """Rows of a seed ``meta.npy``: patch index, seed ``x`` (= row), seed ``y`` (= column), label code."""

    idx: np.ndarray
    row: np.ndarray
    col: np.ndarray
    label: np.ndarray


def _label_code(value, meta_path: Path, i: int) -> int:
    text = str(value).strip().upper()
    if text in CLASS_CODES:
        return CLASS_CODES[text]
    if text.isdigit() and int(text) < N_CLASSES:
        return int(text)
    raise CubeError(meta_path, f"row {i}: unknown label {str(value)!r}; expected L, W, I or 0, 1, 2")


def read_seed_meta(meta_path: str | Path, allow_pickle: bool = False) -> SeedMeta:
    """Parse a seed ``meta.npy`` (either layout); :class:`CubeError` naming the file for anything else."""
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        raise CubeError(meta_path, "seed meta file does not exist (the seed saves it as meta.npy)")
    try:
        rows = np.load(meta_path, allow_pickle=allow_pickle)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise CubeError(meta_path, "holds Python objects (the seed's grid layout [idx, (x, y), label]); "
                                       "reading it runs pickle: pass allow_pickle (--allow-pickle) if you "
                                       "trust the file") from None
        raise CubeError(meta_path, f"not a readable .npy file ({err})") from None
    except (OSError, EOFError) as err:
        raise CubeError(meta_path, f"not a readable .npy file ({err})") from None
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] not in (3, 4):
        raise CubeError(meta_path, f"expected rows [idx, x, y, label] or [idx, (x, y), label], got an array "
                                   f"of shape {rows.shape}")
    try:
        if rows.shape[1] == 4:
            idx, xs, ys = (np.asarray(rows[:, k]).astype(np.float64).astype(np.int64) for k in range(3))
        else:
            idx = np.asarray(rows[:, 0]).astype(np.int64)
            xs, ys = (np.array([int(p[k]) for p in rows[:, 1]], np.int64) for k in range(2))
    except (TypeError, ValueError, IndexError) as err:
        raise CubeError(meta_path, f"index or position is not an integer ({err})") from None
    labels = np.array([_label_code(v, meta_path, i) for i, v in enumerate(rows[:, -1])], np.uint8)
    if len(np.unique(idx)) != len(idx):
        raise CubeError(meta_path, "patch indices repeat; each row must name its own <idx>.png")
    return SeedMeta(idx, xs, ys, labels)


def _check_pngs(seed_dir: Path, idx: np.ndarray) -> tuple[int, str]:
    """Patch size and PIL mode shared by every ``<idx>.png`` (headers only); :class:`CubeError` otherwise."""
    missing = [f"{i}.png" for i in idx if not (seed_dir / f"{i}.png").is_file()]
    if missing:
        raise CubeError(seed_dir, f"{len(missing)} patch PNG(s) listed in the meta are missing: {missing[:5]}")
    reference = None
    for i in idx:
        path = seed_dir / f"{i}.png"
        try:
            with Image.open(path) as png:
                found = (png.size, png.mode)
        except (UnidentifiedImageError, OSError) as err:
            raise CubeError(path, f"not a readable PNG ({err})") from None
        (width, height), mode = found
        if width != height:
            raise CubeError(path, f"patch is {width} x {height} px; seed patches are square")
        if mode not in _MODES:
            raise CubeError(path, f"PNG mode {mode} not supported (expected one of {', '.join(_MODES)})")
        reference = reference or found
        if found != reference:
            raise CubeError(path, f"is {found[0][0]} px {found[1]}, the first patch is {reference[0][0]} px {reference[1]}")
    return reference[0][0], reference[1]


def _read_batch(seed_dir: Path, idx: np.ndarray, bgr: bool) -> np.ndarray:
    """PNGs -> ``(n, band, K, K)`` uint8 in the scene's band order."""
    arrays = []
    for i in idx:
        with Image.open(seed_dir / f"{i}.png") as png:
            pixels = np.asarray(png, dtype=np.uint8)
        pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
        if bgr and pixels.shape[0] >= 3:  # BGR(A) -> the scene's band order; alpha stays last
            pixels = pixels[[2, 1, 0, *range(3, pixels.shape[0])]]
        arrays.append(pixels)
    return np.stack(arrays)


def import_seed_patches(
    seed_dir: str | Path,
    cube_path: str | Path,
    *,
    meta: str | Path | None = None,
    scene: str | None = None,
    band_names: tuple[str, ...] | None = None,
    bgr: bool = True,
    allow_pickle: bool = False,
    split: SplitConfig = SplitConfig(),
    overwrite: bool = False,
) -> SceneResult:
    """Append a seed patch folder (``<idx>.png`` + ``meta.npy``) to the cube at ``cube_path`` as one scene.

    ``meta`` defaults to ``seed_dir/meta.npy``; ``scene`` to the folder's name. See the module docstring
    for how the seed's fields map onto the cube. Everything is checked before anything is written; a
    scene already in the cube is skipped unless ``overwrite``.
    """
    seed_dir, cube_path = Path(seed_dir), Path(cube_path)
    if not seed_dir.is_dir():
        raise CubeError(seed_dir, "is not a folder of seed patches (<idx>.png)")
    split.validate(cube_path)
    meta_path = Path(meta) if meta is not None else seed_dir / "meta.npy"
    rows = read_seed_meta(meta_path, allow_pickle)
    size, mode = _check_pngs(seed_dir, rows.idx)
    bands = band_names or _DEFAULT_BANDS[_MODES[mode]]
    if len(bands) != _MODES[mode]:
        raise CubeError(seed_dir, f"{len(bands)} band names given for {_MODES[mode]}-band PNGs ({mode})")
    layout = CubeLayout(size, tuple(bands), "uint8", 0.0, None)
    name = scene or seed_dir.name
    with writer_lock(cube_path):
        if cube_path.exists():
            writer = CubeWriter.open(cube_path)
            writer.layout.check_matches(layout, seed_dir, f"seed patches of {seed_dir} ({size} px {mode})")
            existing = {r["name"]: r for r in writer.records}
            if name in existing and not overwrite:
                record = existing[name]
                return SceneResult(name, "skipped", record["split"], record["count"], record["patch_counts"],
                                   start=record["start"])
            if name in existing:
                writer = remove_scenes(cube_path, {name})
        else:
            existing = {}
            writer = CubeWriter.create(cube_path, layout, "seed-import", {"bgr": bgr})
        records = writer.records
        split_name = split.choose(name, [r["split"] for r in records])
        n = len(rows.idx)
        start = writer.reserve(n)
        parts = []
        for lo in range(0, n, SHARD):
            hi = min(n, lo + SHARD)
            image = _read_batch(seed_dir, rows.idx[lo:hi], bgr)
            label = np.full((hi - lo, size, size), NO_LABEL, np.uint8)
            parts.append(patch_stats(image, label, 0.0))
            writer.write(start + lo, {
                "image": image, "label": label, "patch_label": rows.label[lo:hi],
                "scene": np.full(hi - lo, len(records), np.int32), "row": rows.row[lo:hi].astype(np.int32),
                "col": rows.col[lo:hi].astype(np.int32), "x": np.full(hi - lo, np.nan), "y": np.full(hi - lo, np.nan),
                "split": np.full(hi - lo, SPLIT_CODES[split_name], np.uint8),
            })
        counts = np.bincount(rows.label, minlength=N_CLASSES)
        record = {
            "name": name, "source": str(seed_dir), "chart": None, "start": start, "count": n, "split": split_name,
            "shape": None, "start_time": None, "patch_counts": {str(k): int(counts[k]) for k in range(N_CLASSES)},
            "sampler": {"mode": "seed-import", "meta": str(meta_path), "bgr": bgr}, "sampling": None,
            "stats": merge_stats(parts),
        }
        writer.commit([*records, record])
        status = "replaced" if name in existing else "added"
        return SceneResult(name, status, split_name, n, record["patch_counts"], start=start)
