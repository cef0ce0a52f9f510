"""Accuracy of boundary lines in metres: the mean distance error (MDE) of the calving-front benchmark CaFFe.

For two sets of lines A (prediction) and B (reference), every line is sampled at points no more than
``spacing_m`` apart (its vertices after ``shapely.segmentize``); each point of A is given its distance to
the nearest point of B's lines (exact point-to-segment distance through an ``STRtree`` of B's segments)
and each point of B its distance to A. The MDE is the mean of all these distances (both directions
pooled, as CaFFe defines it); the 95th percentile is reported beside it. Distances are in the CRS's
units (metres of the polar stereographic map plane for the scenes).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import shapely
import xarray as xr

from polarxr.classes import NO_LABEL
from polarxr.graphs import compute_together

#: Default sampling distance of the lines (m): half a 40 m pixel.
SPACING_M = 20.0


def _points(lines, spacing: float) -> np.ndarray:
    geoms = np.asarray([g for g in lines if g is not None and not g.is_empty], dtype=object)
    if not len(geoms):
        return np.empty((0, 2))
    return shapely.get_coordinates(shapely.segmentize(geoms, spacing))


def _segments(lines) -> np.ndarray:
    parts = []
    for line in lines:
        for part in shapely.get_parts(line):
            xy = shapely.get_coordinates(part)
            if len(xy) >= 2:
                parts.append(np.stack([xy[:-1], xy[1:]], axis=1))
    if not parts:
        return np.empty(0, dtype=object)
    return shapely.linestrings(np.concatenate(parts))


def nearest_distances(points: np.ndarray, lines) -> np.ndarray:
    """Distance of each point ``(n, 2)`` to the nearest point of ``lines`` (float64 ``(n,)``; inf if none)."""
    segments = _segments(lines)
    if not len(points):
        return np.empty(0)
    if not len(segments):
        return np.full(len(points), np.inf)
    tree = shapely.STRtree(segments)
    index, distance = tree.query_nearest(shapely.points(points), return_distance=True, all_matches=False)
    out = np.full(len(points), np.inf)
    out[index[0]] = distance
    return out


def mean_distance_error(predicted, reference, spacing_m: float = SPACING_M) -> dict[str, float]:
    """MDE (CaFFe) between two collections of lines, with its 95th percentile (see the module docstring).

    Returns ``mde_m``, ``p95_m``, ``pred_to_ref_m`` and ``ref_to_pred_m`` (the two directions' means) and
    ``n_points``. All NaN when either side has no line.
    """
    a, b = _points(predicted, spacing_m), _points(reference, spacing_m)
    if not len(a) or not len(b):
        return {"mde_m": float("nan"), "p95_m": float("nan"), "pred_to_ref_m": float("nan"),
                "ref_to_pred_m": float("nan"), "n_points": int(len(a) + len(b))}
    d_ab, d_ba = nearest_distances(a, reference), nearest_distances(b, predicted)
    pooled = np.concatenate([d_ab, d_ba])
    return {"mde_m": float(pooled.mean()), "p95_m": float(np.percentile(pooled, 95)),
            "pred_to_ref_m": float(d_ab.mean()), "ref_to_pred_m": float(d_ba.mean()), "n_points": int(len(pooled))}


def boundary_errors(predicted: xr.DataArray, reference: xr.DataArray, spacing_m: float = SPACING_M) -> dict[str, float]:
    """MDE and 95th percentile (m) of the coastline and the ice edge of a class map against a reference map.

    Both are lazy ``DataArray(y, x)`` class maps on the same grid (e.g. a prediction and its rasterized
    chart). Each is masked where the other has no label, so that lines are compared over the area both
    cover; lines are extracted chunk-wise (:mod:`polarxr.observations.boundaries`) in one dask graph.
    Returns ``coastline_mde_m``, ``coastline_p95_m``, ``ice_edge_mde_m``, ``ice_edge_p95_m``.
    """
    from polarxr.observations.boundaries import lazy_boundaries, merge_pieces

    truth = reference.data.rechunk(predicted.data.chunks)
    pred = predicted.data
    both = (pred != NO_LABEL) & (truth != NO_LABEL)
    grids = [predicted.copy(data=da.where(both, pred, NO_LABEL).astype(np.uint8)),
             predicted.copy(data=da.where(both, truth, NO_LABEL).astype(np.uint8))]
    lazy = [lazy_boundaries(g) for g in grids]
    names = ("coastline", "ice_edge")
    computed = compute_together(*[lazy[k][name] for k in range(2) for name in names])
    pieces = dict(zip([(k, name) for k in range(2) for name in names], computed))
    out = {}
    for name in names:
        scores = mean_distance_error(merge_pieces(pieces[0, name]), merge_pieces(pieces[1, name]), spacing_m)
        out[f"{name}_mde_m"], out[f"{name}_p95_m"] = scores["mde_m"], scores["p95_m"]
    return out


__all__ = ["SPACING_M", "boundary_errors", "mean_distance_error", "nearest_distances"]
