"""Importing patch sets made by the seed (ysbecca/extremeearth-polar, ysbecca/polar-patch) into a training cube.

The seed writes one PNG per patch, ``<idx>.png`` (``cv2.imwrite``), and one row per patch in a meta file.
:func:`find_seed_layout` finds both by itself in a folder ``DIR``: the meta is ``DIR/meta.csv`` or
``DIR/meta.npy`` (both present: pass ``meta``), the PNGs are in ``DIR`` or ``DIR/images/``. The meta's format
is detected from its bytes (the ``.npy`` magic number), not from its name:

- text (``meta.csv`` as published in polar-patch): one row ``idx x y label`` per line, separated by
  spaces, tabs or commas, an optional header line (``idx x y label``);
- ``.npy`` of ``sub_image_sample_random.py``: rows ``[idx, x, y, label]``, a string array;
- ``.npy`` of ``sub_image_sample.py`` (grid): rows ``[idx, (x, y), label]``, an object array that
  ``np.load`` can only read with pickle (pass ``allow_pickle=True`` for files you trust).

``label`` is the chart letter ``L``/``W``/``I`` (codes 0/1/2, the same as polarxr's) or the code itself.

How the fields map onto the cube:

- ``image``: the PNG's pixels, bands first. ``cv2.imwrite`` takes its array as BGR, so the PNG's red channel
  holds the scene's *third* band; with ``bgr=True`` (default) the channels are reversed back into the
  scene's band order on import. Band names default to ``red, green, blue`` (what
  :func:`polarxr.scenes.open_scene` calls the bands of an undescribed 3-band 8-bit product). Nodata is 0,
  as in the 8-bit product.
- ``row``/``col``: the seed cuts ``array[x:x+K, y:y+K]`` from the ``(rows, cols, bands)`` array, so its
  ``x`` is the patch's top-left **row** and its ``y`` the top-left **column**. Its point-in-polygon label is
  taken at column ``x + K/2``, row ``y + K/2``: the **transpose**, so only patches near the diagonal, or
  in large uniform areas, carry their own class. ``patch_label`` keeps the seed's label, as the seed
  trained on it. Both defects (BGR order, transposed label position) are recorded in the cube attrs
  (``sampler_params`` and each scene record's ``sampler``: ``channel_order``, ``label_position``).
- ``label`` (dense): unknown, all 255. The patch classifier trains on ``patch_label``; a segmenter trains
  with centre-window supervision (:mod:`polarxr.train`). ``x``/``y`` (map coordinates): unknown without
  the scene, NaN; the cube's CRS stays unset.
- nodata: a pixel is nodata where **any** band is 0 (the real renderings write ``(0, 1, 1)`` there, in
  scene band order; a valid 8-bit pixel is never 0); on import its bands are all set to 0, the cube's
  nodata. A patch whose nodata fraction exceeds ``max_nodata`` is **flagged**:
  its offset within its scene record goes to the record's ``flagged`` list. Flagged patches stay in the
  cube (they are scored by ``evaluate-patches``, which reports them apart) but training leaves them out
  (:class:`polarxr.datasets.PatchDataset` ``exclude_flagged``), and they count neither in ``patch_counts``
  nor in the normalisation statistics.
- ``scene``: without ``split_index``, one scene per import, named after the folder unless given, put in a
  split as for sampled scenes. A seed set records no scene id, so ``split_index`` splits it by row
  instead: each row range becomes one cube scene ``<name>[lo:hi]`` in its split (``0.8``: the first 80 % of
  the rows in train, the rest in val; ``train=0:6000,val=6000:7000,test=7000:``: explicit ranges).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from polarxr.classes import CLASS_CODES, N_CLASSES, NO_LABEL
from polarxr.cube import (SHARD, SPLIT_CODES, SPLITS, CubeLayout, CubeWriter, SceneResult, SplitConfig,
                          remove_scenes, writer_lock)
from polarxr.errors import CubeError
from polarxr.patches import merge_stats, patch_stats
from polarxr.scenes import valid_pixels

#: PIL modes the seed's PNGs can have, with their number of bands
_MODES = {"L": 1, "RGB": 3, "RGBA": 4}
_DEFAULT_BANDS = {1: ("band1",), 3: ("red", "green", "blue"), 4: ("red", "green", "blue", "alpha")}
_NPY_MAGIC = b"\x93NUMPY"
META_NAMES = ("meta.csv", "meta.npy")
#: Recorded in the cube: the seed sampler's known defects, so that nobody mistakes its labels for clean ones.
LABEL_POSITION = ("transposed: the seed cut rows x..x+K, columns y..y+K (row = x, col = y here) but took the "
                  "label at column x+K/2, row y+K/2, so labels are noisy")
CHANNEL_ORDER_BGR = "PNG channels are BGR (cv2.imwrite); reversed into the scene's band order on import"
CHANNEL_ORDER_RGB = "PNG channels taken as the scene's band order (--rgb)"


@dataclass(frozen=True)
class SeedMeta:
    """Rows of a seed meta file: patch index, seed ``x`` (= row), seed ``y`` (= column), label code."""

    idx: np.ndarray
    row: np.ndarray
    col: np.ndarray
    label: np.ndarray
    format: str = "npy"


@dataclass(frozen=True)
class SeedLayout:
    """Where a seed patch set keeps its meta file and PNGs, and the meta's detected format."""

    meta_path: Path
    png_dir: Path
    meta: SeedMeta


def _label_code(value, meta_path: Path, i: int) -> int:
    text = str(value).strip().upper()
    if text in CLASS_CODES:
        return CLASS_CODES[text]
    if text.isdigit() and int(text) < N_CLASSES:
        return int(text)
    raise CubeError(meta_path, f"row {i}: unknown label {str(value)!r}; expected L, W, I or 0, 1, 2")


def _finish(meta_path: Path, idx, xs, ys, labels, fmt: str) -> SeedMeta:
    codes = np.array([_label_code(v, meta_path, i) for i, v in enumerate(labels)], np.uint8)
    if len(np.unique(idx)) != len(idx):
        raise CubeError(meta_path, "patch indices repeat; each row must name its own <idx>.png")
    return SeedMeta(np.asarray(idx, np.int64), np.asarray(xs, np.int64), np.asarray(ys, np.int64), codes, fmt)


def _read_npy(meta_path: Path, allow_pickle: bool) -> SeedMeta:
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
            fmt = "npy-random"
        else:
            idx = np.asarray(rows[:, 0]).astype(np.int64)
            xs, ys = (np.array([int(p[k]) for p in rows[:, 1]], np.int64) for k in range(2))
            fmt = "npy-grid"
    except (TypeError, ValueError, IndexError) as err:
        raise CubeError(meta_path, f"index or position is not an integer ({err})") from None
    return _finish(meta_path, idx, xs, ys, rows[:, -1], fmt)


def _read_text(meta_path: Path) -> SeedMeta:
    try:
        text = meta_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CubeError(meta_path, "is neither a .npy file nor UTF-8 text rows 'idx x y label'") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if lines and not re.match(r"\s*[-+]?\d", lines[0][1]):  # a header line such as "idx x y label"
        lines = lines[1:]
    if not lines:
        raise CubeError(meta_path, "holds no rows 'idx x y label'")
    fields = []
    for n, line in lines:
        parts = re.split(r"[,;\s]+", line.strip())
        if len(parts) != 4:
            raise CubeError(meta_path, f"line {n}: expected 4 fields 'idx x y label' separated by spaces, got "
                                       f"{len(parts)}: {line.strip()[:60]!r}")
        fields.append(parts)
    columns = list(zip(*fields))
    try:
        idx, xs, ys = (np.array([int(float(v)) for v in columns[k]], np.int64) for k in range(3))
    except ValueError as err:
        raise CubeError(meta_path, f"index or position is not an integer ({err})") from None
    return _finish(meta_path, idx, xs, ys, columns[3], "csv")


def read_seed_meta(meta_path: str | Path, allow_pickle: bool = False) -> SeedMeta:
    """Parse a seed meta file of any layout (detected from its bytes); :class:`CubeError` naming it otherwise."""
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        raise CubeError(meta_path, "seed meta file does not exist (the seed's are meta.csv or meta.npy)")
    with open(meta_path, "rb") as fh:
        magic = fh.read(len(_NPY_MAGIC))
    return _read_npy(meta_path, allow_pickle) if magic == _NPY_MAGIC else _read_text(meta_path)


def find_seed_layout(seed_dir: str | Path, meta: str | Path | None = None, allow_pickle: bool = False) -> SeedLayout:
    """The meta file (``meta`` or the one of :data:`META_NAMES` in ``seed_dir``) and the PNG folder
    (``seed_dir`` or ``seed_dir/images``) of a seed patch set; :class:`CubeError` when either is ambiguous or
    absent."""
    seed_dir = Path(seed_dir)
    if not seed_dir.is_dir():
        raise CubeError(seed_dir, "is not a folder of seed patches (meta.csv or meta.npy, <idx>.png)")
    if meta is None:
        found = [seed_dir / name for name in META_NAMES if (seed_dir / name).is_file()]
        if not found:
            raise CubeError(seed_dir, "holds no seed meta file (meta.csv or meta.npy); pass --meta")
        if len(found) > 1:
            raise CubeError(seed_dir, "holds both meta.csv and meta.npy; pass --meta to choose one")
        meta = found[0]
    rows = read_seed_meta(meta, allow_pickle)
    candidates = [seed_dir, seed_dir / "images"]
    first = f"{rows.idx[0]}.png"
    for folder in candidates:
        if (folder / first).is_file():
            return SeedLayout(Path(meta), folder, rows)
    raise CubeError(seed_dir, f"the meta's first patch {first} is neither in the folder nor in images/")


def parse_split_index(spec: str | float, n: int, where: object = None) -> list[tuple[str, int, int]]:
    """Row ranges ``(split, lo, hi)`` (0-based, ``hi`` exclusive, in meta order) covering ``n`` rows once.

    ``spec``: a fraction ``0.8`` (first 80 % train, the rest val), fractions ``0.7,0.2`` (train, val, the
    rest test), or explicit ranges ``train=0:6000,val=6000:7000,test=7000:`` (an open end is ``n``).
    """
    text = str(spec).strip()
    ranges: list[tuple[str, int, int]] = []
    if "=" not in text:
        try:
            fractions = [float(v) for v in text.split(",")]
        except ValueError:
            raise CubeError(where, f"split index {text!r} is neither fractions such as 0.8 nor ranges such as "
                                   "train=0:6000,val=6000:") from None
        if len(fractions) > 2 or any(not 0 <= f <= 1 for f in fractions) or sum(fractions) > 1:
            raise CubeError(where, f"split index {text!r}: give 1 or 2 fractions in [0, 1] summing to at most 1")
        edges = [0, *(round(n * f) for f in np.cumsum(fractions)), n]
        names = ("train", "val") if len(fractions) == 1 else ("train", "val", "test")
        ranges = [(s, lo, hi) for s, lo, hi in zip(names, edges[:-1], edges[1:]) if hi > lo]
    else:
        for item in text.split(","):
            split, sep, span = item.partition("=")
            split = split.strip().lower()
            m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", span)
            if split not in SPLITS or not m:
                raise CubeError(where, f"split index item {item!r} is not SPLIT=LO:HI with SPLIT one of "
                                       f"{', '.join(SPLITS)}")
            lo, hi = int(m[1] or 0), int(m[2]) if m[2] else n
            if not 0 <= lo < hi <= n:
                raise CubeError(where, f"split index range {item!r} is empty or beyond the {n} rows")
            ranges.append((split, lo, hi))
        ranges.sort(key=lambda r: r[1])
        covered = 0
        for split, lo, hi in ranges:
            if lo != covered:
                what = "overlap" if lo < covered else f"leave rows {covered}:{lo} in no split"
                raise CubeError(where, f"split index ranges {what}; they must cover rows 0:{n} once")
            covered = hi
        if covered != n:
            raise CubeError(where, f"split index ranges leave rows {covered}:{n} in no split")
    return ranges


def _png_header(path: Path) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(path) as png:
            return png.size, png.mode
    except (UnidentifiedImageError, OSError) as err:
        raise CubeError(path, f"not a readable PNG ({err})") from None


def _check_pngs(png_dir: Path, idx: np.ndarray, pool: ThreadPoolExecutor) -> tuple[int, str]:
    """Patch size and PIL mode shared by every ``<idx>.png`` (headers only); :class:`CubeError` otherwise."""
    paths = [png_dir / f"{i}.png" for i in idx]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CubeError(png_dir, f"{len(missing)} patch PNG(s) listed in the meta are missing: {missing[:5]}")
    reference = None
    for path, found in zip(paths, pool.map(_png_header, paths, chunksize=64)):
        (width, height), mode = found
        if width != height:
            raise CubeError(path, f"patch is {width} x {height} px; seed patches are square")
        if mode not in _MODES:
            raise CubeError(path, f"PNG mode {mode} not supported (expected one of {', '.join(_MODES)})")
        reference = reference or found
        if found != reference:
            raise CubeError(path, f"is {found[0][0]} px {found[1]}, the first patch is {reference[0][0]} px {reference[1]}")
    return reference[0][0], reference[1]


def _decode(path: Path, bgr: bool) -> np.ndarray:
    """One PNG -> ``(band, K, K)`` uint8 in the scene's band order."""
    with Image.open(path) as png:
        pixels = np.asarray(png, dtype=np.uint8)
    pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    if bgr and pixels.shape[0] >= 3:  # BGR(A) -> the scene's band order; alpha stays last
        pixels = pixels[[2, 1, 0, *range(3, pixels.shape[0])]]
    return pixels


def _read_batch(png_dir: Path, idx: np.ndarray, bgr: bool, pool: ThreadPoolExecutor) -> np.ndarray:
    """PNGs -> ``(n, band, K, K)`` uint8, decoded in parallel (Pillow's zlib releases the GIL)."""
    return np.stack(list(pool.map(lambda i: _decode(png_dir / f"{i}.png", bgr), idx)))


def mask_nodata(image: np.ndarray) -> np.ndarray:
    """Set every band of a pixel to 0 where any band is 0, in place; the nodata fraction of each patch.

    ``image (n, band, y, x)`` uint8. The 8-bit product never writes 0 in a valid pixel, but its nodata is
    not 0 in every band: the real ExtremeEarth renderings hold ``(0, 1, 1)`` there (scene band order).
    The cube's convention is nodata 0 in every band, which normalisation and statistics rely on.
    """
    missing = ~valid_pixels(image, 0, band_axis=1)
    image[np.broadcast_to(missing[:, None], image.shape)] = 0
    return missing.mean(axis=(1, 2))


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
    split_index: str | float | None = None,
    max_nodata: float = 0.5,
    overwrite: bool = False,
    threads: int | None = None,
) -> list[SceneResult]:
    """Append a seed patch set (meta file + ``<idx>.png``, found by :func:`find_seed_layout`) to the cube.

    ``scene`` defaults to the folder's name. Without ``split_index`` the set is one cube scene, split by
    ``split``; with it, one scene per row range (:func:`parse_split_index`). Patches whose nodata fraction
    exceeds ``max_nodata`` are flagged (module docstring). Everything is checked before anything is
    written; scenes already in the cube are skipped unless ``overwrite``. ``threads`` decode PNGs
    (default: the CPU count). Returns one :class:`SceneResult` per cube scene.
    """
    seed_dir, cube_path = Path(seed_dir), Path(cube_path)
    if not 0 <= max_nodata <= 1:
        raise CubeError(cube_path, f"max_nodata must be a fraction in [0, 1], got {max_nodata}")
    split.validate(cube_path)
    layout_found = find_seed_layout(seed_dir, meta, allow_pickle)
    rows, png_dir = layout_found.meta, layout_found.png_dir
    name = scene or seed_dir.name
    n = len(rows.idx)
    if split_index is None:
        parts = [(None, name, 0, n)]
    else:
        parts = [(s, f"{name}[{lo}:{hi}]", lo, hi) for s, lo, hi in parse_split_index(split_index, n, seed_dir)]
    with writer_lock(cube_path), ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        size, mode = _check_pngs(png_dir, rows.idx, pool)
        bands = band_names or _DEFAULT_BANDS[_MODES[mode]]
        if len(bands) != _MODES[mode]:
            raise CubeError(seed_dir, f"{len(bands)} band names given for {_MODES[mode]}-band PNGs ({mode})")
        layout = CubeLayout(size, tuple(bands), "uint8", 0.0, None)
        sampler = {"mode": "seed-import", "meta": str(layout_found.meta_path), "meta_format": rows.format,
                   "png_dir": str(png_dir), "bgr": bgr, "channel_order": CHANNEL_ORDER_BGR if bgr else CHANNEL_ORDER_RGB,
                   "label_position": LABEL_POSITION, "max_nodata": max_nodata}
        existing: dict[str, dict] = {}
        if cube_path.exists():
            writer = CubeWriter.open(cube_path)
            writer.layout.check_matches(layout, seed_dir, f"seed patches of {seed_dir} ({size} px {mode})")
            existing = {r["name"]: r for r in writer.records}
            present = [p for p in parts if p[1] in existing]
            if present and not overwrite:
                return [SceneResult(p[1], "skipped", existing[p[1]]["split"], existing[p[1]]["count"],
                                    existing[p[1]]["patch_counts"], start=existing[p[1]]["start"]) for p in parts
                        if p[1] in existing]
            if present:
                writer = remove_scenes(cube_path, {p[1] for p in present})
        else:
            writer = CubeWriter.create(cube_path, layout, "seed-import", sampler)
        results = []
        for split_name, part_name, lo, hi in parts:
            records = writer.records
            chosen = split_name or split.choose(part_name, [r["split"] for r in records])
            record = _write_part(writer, rows, png_dir, bgr, size, lo, hi, len(records), chosen, max_nodata, pool)
            record.update(name=part_name, source=str(seed_dir), sampler={**sampler, "rows": [lo, hi]})
            writer.commit([*records, record])
            status = "replaced" if part_name in existing else "added"
            results.append(SceneResult(part_name, status, chosen, hi - lo, record["patch_counts"], start=record["start"]))
    return results


def _write_part(writer: CubeWriter, rows: SeedMeta, png_dir: Path, bgr: bool, size: int, lo: int, hi: int,
                scene_index: int, split_name: str, max_nodata: float, pool: ThreadPoolExecutor) -> dict:
    """Write rows ``lo:hi`` as one scene (not yet committed); its record without name and source."""
    n = hi - lo
    start = writer.reserve(n)
    stats, flagged = [], []
    # one shard-aligned write per 256 patches: per-patch writes would rewrite each shard 256 times
    first = min(n, SHARD - start % SHARD)
    edges = [0, *range(first, n, SHARD), n] if first < n else [0, n]
    for a, b in zip(edges[:-1], edges[1:]):
        image = _read_batch(png_dir, rows.idx[lo + a:lo + b], bgr, pool)
        label = np.full((b - a, size, size), NO_LABEL, np.uint8)
        bad = mask_nodata(image) > max_nodata
        flagged.extend(int(k) for k in np.flatnonzero(bad) + a)
        if (~bad).any():
            stats.append(patch_stats(image[~bad], label[~bad], 0.0))
        writer.write(start + a, {
            "image": image, "label": label, "patch_label": rows.label[lo + a:lo + b],
            "scene": np.full(b - a, scene_index, np.int32), "row": rows.row[lo + a:lo + b].astype(np.int32),
            "col": rows.col[lo + a:lo + b].astype(np.int32), "x": np.full(b - a, np.nan), "y": np.full(b - a, np.nan),
            "split": np.full(b - a, SPLIT_CODES[split_name], np.uint8),
        })
    keep = np.ones(n, bool)
    keep[flagged] = False
    labels = rows.label[lo:hi]
    counts = np.bincount(labels[keep], minlength=N_CLASSES)
    flagged_counts = np.bincount(labels[~keep], minlength=N_CLASSES)
    return {
        "chart": None, "start": start, "count": n, "split": split_name, "shape": None, "start_time": None,
        "patch_counts": {str(k): int(counts[k]) for k in range(N_CLASSES)},
        "flagged": flagged, "flagged_counts": {str(k): int(flagged_counts[k]) for k in range(N_CLASSES)},
        "sampling": None, "stats": merge_stats(stats) if stats else merge_stats([patch_stats(
            np.zeros((0, writer.root["image"].shape[1], size, size), np.uint8), np.zeros((0, size, size), np.uint8), 0.0)]),
    }
