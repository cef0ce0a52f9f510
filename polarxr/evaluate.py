"""Segmentation metrics: a chunk-wise confusion matrix and the scores derived from it.

Rows of a confusion matrix are the true class (the ice chart), columns the predicted class, in label-code
order (land 0, sea 1, ice 2). Pixels labelled 255 (no label / nodata) on either side are left out.
"""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
from rich.table import Table

from polarxr.classes import CLASS_NAMES, N_CLASSES, NO_LABEL
from polarxr.errors import SceneError


def _block_confusion(pred: np.ndarray, truth: np.ndarray, n_classes: int, ignore: int) -> np.ndarray:
    """Confusion counts ``(n_classes, n_classes)`` int64 of one block; pixels outside ``0..n-1`` left out."""
    pred = np.asarray(pred).ravel().astype(np.int64)
    truth = np.asarray(truth).ravel().astype(np.int64)
    valid = (truth >= 0) & (truth < n_classes) & (pred >= 0) & (pred < n_classes)
    if ignore is not None:
        valid &= (truth != ignore) & (pred != ignore)
    counts = np.bincount(truth[valid] * n_classes + pred[valid], minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def _block_confusion_nd(pred: np.ndarray, truth: np.ndarray, n_classes: int, ignore: int) -> np.ndarray:
    """:func:`_block_confusion` shaped ``(1,) * ndim + (n, n)`` so dask can place it on the block grid."""
    return _block_confusion(pred, truth, n_classes, ignore).reshape((1,) * pred.ndim + (n_classes, n_classes))


def confusion_matrix(pred, truth, n_classes: int = N_CLASSES, ignore: int = NO_LABEL):
    """Confusion matrix ``(n_classes, n_classes)`` int64 of predicted vs true class maps of equal shape.

    ``pred`` and ``truth`` are numpy or dask arrays (or DataArrays holding them) of any dims, e.g.
    ``(y, x)`` class maps. Pixels where either is ``ignore`` (255) or outside ``0..n_classes-1`` are left
    out. With a dask input the matrix is a lazy dask array: one small matrix per block (chunks of ``truth``
    are aligned to ``pred``), summed, so no whole scene is ever in memory. Numpy in, numpy out.
    """
    pred = getattr(pred, "data", pred)
    truth = getattr(truth, "data", truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if not isinstance(pred, da.Array) and not isinstance(truth, da.Array):
        return _block_confusion(pred, truth, n_classes, ignore)
    pred = da.asarray(pred)
    truth = da.asarray(truth).rechunk(pred.chunks)
    ndim = pred.ndim
    per_block = da.map_blocks(
        _block_confusion_nd,
        pred,
        truth,
        n_classes=n_classes,
        ignore=ignore,
        new_axis=[ndim, ndim + 1],
        chunks=tuple((1,) * len(c) for c in pred.chunks) + ((n_classes,), (n_classes,)),
        dtype=np.int64,
        meta=np.empty((0,) * (ndim + 2), dtype=np.int64),
    )
    return per_block.sum(axis=tuple(range(ndim)))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` with NaN where ``den`` is 0 (the score is undefined, not zero)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def metrics_from_confusion(cm, class_names: list[str] | None = None) -> dict:
    """Scores of a confusion matrix (rows truth, columns prediction).

    Returns ``class_names``, ``per_class`` ({name: iou, f1, precision, recall, support (true px)}),
    ``mean_iou`` and ``mean_f1`` (over classes present in truth or prediction), ``overall_accuracy``,
    ``n_pixels`` and ``confusion_matrix`` as a nested list. Undefined scores are NaN.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = cm.shape[0]
    names = list(class_names) if class_names is not None else [CLASS_NAMES.get(i, str(i)) for i in range(n)]
    tp = np.diag(cm)
    true_px = cm.sum(axis=1)
    pred_px = cm.sum(axis=0)
    iou = _ratio(tp, true_px + pred_px - tp)
    precision = _ratio(tp, pred_px)
    recall = _ratio(tp, true_px)
    f1 = _ratio(2 * tp, true_px + pred_px)
    total = int(cm.sum())
    present = (true_px + pred_px) > 0
    return {
        "class_names": names,
        "per_class": {
            name: {"iou": float(iou[i]), "f1": float(f1[i]), "precision": float(precision[i]),
                   "recall": float(recall[i]), "support": int(true_px[i])}
            for i, name in enumerate(names)
        },
        "mean_iou": float(iou[present].mean()) if present.any() else float("nan"),
        "mean_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "overall_accuracy": float(tp.sum() / total) if total else float("nan"),
        "n_pixels": total,
        "confusion_matrix": cm.tolist(),
    }


#: Boundary scores of :func:`evaluate_prediction` (metres): CaFFe's mean distance error and its 95th percentile.
BOUNDARY_KEYS = ("coastline_mde_m", "coastline_p95_m", "ice_edge_mde_m", "ice_edge_p95_m")


def evaluate_prediction(pred_tif: str | Path, chart_shp: str | Path, chunks: int | dict | None = None,
                        boundaries: bool = True, class_map: str | dict | None = None) -> dict:
    """Metrics of a class-map GeoTIFF (uint8 L=0, W=1, I=2, 255 nodata) against an ice chart shapefile.

    The class map is opened lazily (chunks as :func:`polarxr.scenes.open_scene`); the chart is rasterized
    block by block onto its exact grid and CRS. Pixels with no prediction (255) or no chart polygon are left
    out. ``class_map`` as :func:`polarxr.labels.read_chart`. Returns :func:`metrics_from_confusion`'s dict
    plus ``prediction`` and ``chart`` paths and, with ``boundaries``, the :data:`BOUNDARY_KEYS`: mean
    distance error and 95th percentile (m) of the coastline and the ice edge against the rasterized chart's
    (:func:`polarxr.observations.distance.boundary_errors`; NaN where either side has no such line).
    """
    from polarxr.labels import rasterize_chart
    from polarxr.scenes import open_scene

    classes = open_scene(pred_tif, chunks=chunks)
    if classes.sizes["band"] != 1 or not np.issubdtype(classes.dtype, np.integer):
        raise SceneError(pred_tif, f"is not a class map: expected 1 integer band, found {classes.sizes['band']} "
                                   f"band(s) of {classes.dtype}")
    classes = classes.isel(band=0, drop=True)
    truth = rasterize_chart(chart_shp, classes, class_map)
    metrics = metrics_from_confusion(np.asarray(confusion_matrix(classes.data, truth.data).compute()))
    if boundaries:
        from polarxr.observations.distance import boundary_errors

        metrics.update(boundary_errors(classes.astype(np.uint8), truth))
    metrics.update(prediction=str(pred_tif), chart=str(chart_shp))
    return metrics


def _json_safe(value):
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def to_json(metrics: dict | list) -> str:
    """Strict JSON text of metrics or log records: undefined scores (NaN) become ``null``."""
    return json.dumps(_json_safe(metrics), indent=1)


def _score(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.3f}"


def _metres(value: float) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.0f} m"


def format_metrics_table(metrics: dict, title: str | None = None) -> Table:
    """A rich table of per-class IoU/F1/precision/recall/support, the means, and the confusion counts."""
    names = metrics["class_names"]
    caption = f"overall accuracy {_score(metrics['overall_accuracy'])} over {metrics['n_pixels']:,} labelled px"
    if "coastline_mde_m" in metrics:
        caption += "; " + "; ".join(
            f"{label} mean distance error {_metres(metrics[f'{key}_mde_m'])} (95 % {_metres(metrics[f'{key}_p95_m'])})"
            for key, label in (("coastline", "coastline"), ("ice_edge", "ice edge")))
    table = Table(title=title, caption=caption)
    table.add_column("class")
    for column in ("IoU", "F1", "precision", "recall", "support (px)"):
        table.add_column(column, justify="right")
    for name in names:
        table.add_column(f"-> {name}", justify="right", style="dim")
    for name, row in zip(names, metrics["confusion_matrix"]):
        scores = metrics["per_class"][name]
        table.add_row(name, *(_score(scores[k]) for k in ("iou", "f1", "precision", "recall")),
                      f"{scores['support']:,}", *(f"{v:,}" for v in row))
    table.add_section()
    table.add_row("[bold]mean", f"[bold]{_score(metrics['mean_iou'])}", f"[bold]{_score(metrics['mean_f1'])}",
                  "", "", "", *([""] * len(names)))
    return table
