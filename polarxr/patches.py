"""Patches of a scene and its labels: positions, cutting windows out of a block, and their statistics.

The cube's build (:mod:`polarxr.cubegraph`) cuts the patches of each chunk in the task that finds its
eligible positions, from the chunk extended by ``patch_size - 1`` px below and to the right (slices of
the scene's chunk tasks), so a patch that crosses a chunk border is cut from real neighbouring pixels and
every chunk is read once. Memory per task: one chunk plus its margin, and its patches.
"""

from __future__ import annotations


import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from polarxr.classes import N_CLASSES, NO_LABEL
from polarxr.scenes import valid_pixels

#: Pixel-count keys of a group's labels: the classes, then "no label".
LABEL_CODES: tuple[int, ...] = (*range(N_CLASSES), NO_LABEL)


#: Dtypes normalised in place by :func:`normalise` (one float32 array, no temporaries); others by the formula.
_IN_PLACE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32))


def normalise(raw: np.ndarray, mean, std, nodata: float | None) -> tuple[np.ndarray, np.ndarray]:
    """``(band, y, x)`` raw values -> ``(float32 (raw - mean) / std, valid (y, x))``, per band.

    Pixels without data (:func:`polarxr.scenes.valid_pixels`) and any non-finite value (NaN, ±inf) become 0,
    the mean of the training data, for training and inference alike.
    """
    valid = valid_pixels(raw, nodata)
    mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, np.float32).reshape(-1, 1, 1)
    if raw.dtype not in _IN_PLACE_DTYPES:
        image = (raw.astype(np.float32) - mean) / std
        image[:, ~valid] = 0.0
        image[~np.isfinite(image)] = 0.0
        return image, valid
    # the same float32 operations in place: identical values in about a third of the time on a 2048 px block
    image = np.empty(raw.shape, np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        np.subtract(raw, mean, out=image, dtype=np.float32)
        np.divide(image, std, out=image)
        if raw.dtype.kind == "f":
            may_overflow = True
        else:  # (v - mean) / std is monotonic in v: finite at the dtype's extremes means finite everywhere
            info = np.iinfo(raw.dtype)
            ends = (np.array([info.min, info.max], np.float32) - mean.reshape(-1, 1)) / std.reshape(-1, 1)
            may_overflow = not np.isfinite(ends).all()
    invalid = ~valid
    if invalid.any():
        np.copyto(image, 0.0, where=invalid[None])
    if may_overflow:
        image[~np.isfinite(image)] = 0.0
    return image, valid


def labels_where_valid(scene: np.ndarray, raster: np.ndarray, nodata: float | None, fill: int) -> np.ndarray:
    """Chart raster ``(y, x)`` with ``fill`` where the scene block ``(band, y, x)`` has no data (uint8)."""
    return np.where(valid_pixels(scene, nodata), raster, np.uint8(fill)).astype(np.uint8)


def cut_windows(block: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Windows ``(n, ..., size, size)`` of a ``(..., h, w)`` block at top-left ``rows``/``cols`` (local px)."""
    windows = sliding_window_view(block, (size, size), axis=(-2, -1))  # a view, no copy
    return np.ascontiguousarray(np.moveaxis(windows[..., rows, cols, :, :], -3, 0))


def patch_stats(image: np.ndarray, label: np.ndarray, nodata: float | None, valid: np.ndarray | None = None) -> dict:
    """Per-band count, mean and M2 (sum of squared deviations) over valid pixels, and label pixel counts.

    A pixel is valid by :func:`polarxr.scenes.valid_pixels` (8-bit: no band ``nodata``; float: a band finite);
    non-finite values (NaN, ±inf) of a valid pixel are left out of their band. ``image (n, band, y, x)``, ``label (n, y, x)``;
    ``valid (n, y, x)``: that rule's mask when the caller has it already.
    """
    valid_pixel = valid_pixels(image, nodata, band_axis=1) if valid is None else valid
    if image.dtype == np.uint8:
        return _patch_stats_uint8(image, label, valid_pixel)
    values = image.astype(np.float64)
    counts, means, m2s = [], [], []
    for band in range(values.shape[1]):
        v = values[:, band][valid_pixel & np.isfinite(values[:, band])]
        counts.append(int(v.size))
        mean = float(v.mean()) if v.size else 0.0
        means.append(mean)
        m2s.append(float(((v - mean) ** 2).sum()) if v.size else 0.0)
    pixels = {str(code): int((label == code).sum()) for code in LABEL_CODES}
    return {"count": counts, "mean": means, "m2": m2s, "pixels": pixels}


def _patch_stats_uint8(image: np.ndarray, label: np.ndarray, valid_pixel: np.ndarray) -> dict:
    """:func:`patch_stats` of 8-bit patches, bit for bit, without a float64 copy of the patches.

    The sum of 8-bit values is an exact integer in float64 whatever the order, so the mean equals the
    float path's; each squared deviation is looked up per value (the float path's element, exactly) and
    summed over the same sequence by the same pairwise summation, so M2 is identical too (tested)."""
    counts, means, m2s = [], [], []
    levels = np.arange(256, dtype=np.float64)
    for band in range(image.shape[1]):
        v = image[:, band][valid_pixel]
        counts.append(int(v.size))
        mean = float(v.mean(dtype=np.float64)) if v.size else 0.0
        means.append(mean)
        m2s.append(float(((levels - mean) ** 2)[v].sum()) if v.size else 0.0)
    histogram = np.bincount(label.reshape(-1), minlength=256)
    return {"count": counts, "mean": means, "m2": m2s,
            "pixels": {str(code): int(histogram[code]) for code in LABEL_CODES}}


def merge_stats(parts: list[dict]) -> dict:
    """Combine :func:`patch_stats` results (Chan et al.'s parallel variance), in the order given."""
    if not parts:
        return {"count": [], "mean": [], "m2": [], "pixels": {str(c): 0 for c in LABEL_CODES}}
    count = np.zeros(len(parts[0]["count"]), np.float64)
    mean = np.zeros_like(count)
    m2 = np.zeros_like(count)
    pixels = dict.fromkeys(parts[0]["pixels"], 0)
    for part in parts:
        n_b, mean_b, m2_b = (np.asarray(part[k], np.float64) for k in ("count", "mean", "m2"))
        total = count + n_b
        delta = mean_b - mean
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(total > 0, mean + delta * n_b / np.maximum(total, 1), mean)
            m2 = m2 + m2_b + np.where(total > 0, delta**2 * count * n_b / np.maximum(total, 1), 0.0)
        count = total
        for key, value in part["pixels"].items():
            pixels[key] = pixels.get(key, 0) + int(value)
    return {"count": [int(c) for c in count], "mean": mean.tolist(), "m2": m2.tolist(), "pixels": pixels}
