"""Cleaning a class map before observations: a minimum mapping unit, the same for any chunking.

A segmented map carries small fragments that no chart would draw: specks of land in the pack, slivers of
sea inside ice, single mislabelled pixels. Each one is a short closed line in the coastline or ice-edge
layer, and as the mean distance error averages over every point of both lines, a handful of fragments
kilometres from the true boundary outweighs the whole well-placed line. Cartographers apply a minimum
mapping unit; here every 4-connected component of one class (land, sea or ice) of fewer than
``min_pixels`` pixels takes the class it shares the longest border with (objects and holes alike: a
speck of land in ice becomes ice, a pinhole of sea in land becomes land). Borders with nodata do not
count; a component that touches only nodata keeps its class. Every decision is taken on the input map
(one pass, as ``skimage.morphology.remove_small_objects`` / ``remove_small_holes`` do per class).

Chunk-seamless in two passes over the blocks: each block is labelled per class with
``scipy.ndimage.label`` and returns per component its class, pixel count and border length with each
other class (its neighbours across the block border read from a 1 px halo), and its border rows and
columns of labels; the client joins components of the same class that face each other across block
borders (``scipy.sparse.csgraph.connected_components``), sums their counts, and decides the new class of
each whole component; the second pass relabels each block from its small lookup table. Only per-component
tables travel to the client.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr

from polarxr.classes import ICE, LAND, WATER
from polarxr.graphs import compute_together
from polarxr.observations.components import join_across_borders

#: Default minimum mapping unit (px) of :func:`clean_classes`: 4 px (0.0064 km² at 40 m) is the smallest
#: iceberg the observations count, so cleaning never removes an object that would be counted, while the
#: one- to three-pixel specks that segmenters leave along every edge go.
MIN_PIXELS = 4
_CLASSES = (LAND, WATER, ICE)
_OUTSIDE = 255  # halo beyond the map: nodata, no border


def _labels(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class 4-connected labels of ``block`` (one numbering over all classes, 0 = nodata) and the class
    of each label (index ``label - 1``)."""
    from scipy import ndimage

    labels = np.zeros(block.shape, np.int64)
    kinds = []
    for code in _CLASSES:
        local, count = ndimage.label(block == code)
        if count:
            labels[local > 0] = local[local > 0] + len(kinds)
            kinds += [code] * count
    return labels, np.asarray(kinds, np.uint8)


def _block_components(extended: np.ndarray) -> dict[str, np.ndarray]:
    """Component table of one block given with a 1 px halo on every side (``map_overlap``'s layout).

    Returns ``kind`` (class per label), ``n`` (pixels), ``contact`` ((labels, 3) borders with land, sea,
    ice: pixel edges from a pixel of the component to a pixel of that class) and the label rows/columns
    ``top``, ``bottom``, ``left``, ``right`` of the block's own edges.
    """
    inner = extended[1:-1, 1:-1]
    labels, kinds = _labels(inner)
    count = len(kinds)
    flat = labels.ravel()
    slot = np.full(256, -1, np.int64)  # class code -> column of the contact table
    slot[list(_CLASSES)] = np.arange(len(_CLASSES))
    contact = np.zeros((count + 1) * len(_CLASSES), np.int64)
    h, w = inner.shape
    mine = inner.ravel()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        other = extended[1 + dy:1 + dy + h, 1 + dx:1 + dx + w].ravel()
        column = slot[other]
        edge = (column >= 0) & (other != mine) & (flat > 0)
        contact += np.bincount(flat[edge] * len(_CLASSES) + column[edge], minlength=contact.size)
    contact = contact.reshape(count + 1, len(_CLASSES))
    return {"kind": kinds, "n": np.bincount(flat, minlength=count + 1)[1:].astype(np.int64), "contact": contact[1:],
            "top": labels[0].copy(), "bottom": labels[-1].copy(), "left": labels[:, 0].copy(),
            "right": labels[:, -1].copy()}


def _decide(blocks: np.ndarray, min_pixels: int) -> list[np.ndarray]:
    """New class per local label of every block (row-major order), from the joined whole components."""
    flat = list(blocks.ravel())
    sizes = np.array([len(b["n"]) for b in flat])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(sizes.sum())
    kind = np.concatenate([b["kind"] for b in flat]) if total else np.empty(0, np.uint8)
    root = join_across_borders(blocks, lambda a, b: kind[a] == kind[b])
    n = np.bincount(root, weights=np.concatenate([b["n"] for b in flat]) if total else None, minlength=total)
    contact = np.zeros((total, len(_CLASSES)))
    if total:
        np.add.at(contact, root, np.concatenate([b["contact"] for b in flat]))
    codes = np.asarray(_CLASSES, np.uint8)
    new = kind.copy()
    small = (n[root] < min_pixels) & (contact[root].sum(axis=1) > 0)
    new[small] = codes[np.argmax(contact[root][small], axis=1)]
    return [new[offsets[k]:offsets[k + 1]] for k in range(len(flat))]


def _relabel(block: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    labels, _ = _labels(block)
    out = block.copy()
    inside = labels > 0
    out[inside] = lookup[labels[inside] - 1]
    return out


def clean_array(classes: da.Array, min_pixels: int = MIN_PIXELS) -> da.Array:
    """Class map ``(y, x)`` uint8 with every component under ``min_pixels`` px merged into its neighbours.

    Same chunks and dtype; nodata stays nodata. The component tables are computed now (on the active dask
    scheduler; per block only a table per component travels), the relabelling stays lazy.
    ``min_pixels`` <= 1 returns ``classes`` unchanged.
    """
    if min_pixels <= 1:
        return classes
    extended = da.overlap.overlap(classes, depth=1, boundary=_OUTSIDE)
    blocks_in = extended.to_delayed()
    table = dask.delayed(_block_components, pure=True)
    lazy = [table(blocks_in[i, j]) for i in range(blocks_in.shape[0]) for j in range(blocks_in.shape[1])]
    computed = np.empty(blocks_in.shape, dtype=object)
    computed.ravel()[:] = compute_together(*lazy)
    lookups = _decide(computed, min_pixels)
    class_blocks = classes.to_delayed()
    relabel = dask.delayed(_relabel, pure=True)
    n_j = blocks_in.shape[1]
    rows = [[da.from_delayed(relabel(class_blocks[i, j], lookups[i * n_j + j]), shape=(ci, cj), dtype=np.uint8,
                             meta=np.empty((0, 0), np.uint8))
             for j, cj in enumerate(classes.chunks[1])] for i, ci in enumerate(classes.chunks[0])]
    return da.block(rows)


def clean_classes(classes: xr.DataArray, min_pixels: int = MIN_PIXELS) -> xr.DataArray:
    """:func:`clean_array` of a class map ``DataArray(y, x)`` (rioxarray grid kept)."""
    if min_pixels <= 1:
        return classes
    return classes.copy(data=clean_array(classes.data, min_pixels))


__all__ = ["MIN_PIXELS", "clean_array", "clean_classes"]
