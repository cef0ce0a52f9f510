"""Metrics: the confusion matrix by hand, numpy == dask for any chunking, a class map against a chart."""

from __future__ import annotations

import json
import subprocess
import sys

import dask
import dask.array as da
import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from scene_files import ORIGIN, PIXEL, POLAR_STEREO
from shapely.geometry import box

from polarxr.errors import ChartError, SceneError
from polarxr.evaluate import confusion_matrix, evaluate_prediction, format_metrics_table, metrics_from_confusion

TRUTH = np.array([[0, 0, 1, 1, 255],
                  [0, 0, 1, 1, 2],
                  [2, 2, 1, 1, 2]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1, 0],
                 [0, 0, 1, 2, 2],
                 [2, 1, 1, 255, 2]], dtype=np.uint8)
# counted by hand, rows truth, columns prediction; the 255 pixels (one each side) are left out
EXPECTED = np.array([[3, 1, 0],
                     [0, 4, 1],
                     [0, 1, 3]])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PRED, TRUTH)
    assert isinstance(cm, np.ndarray) and cm.dtype == np.int64
    np.testing.assert_array_equal(cm, EXPECTED)


@pytest.mark.parametrize("pred_chunks,truth_chunks", [((1, 1), (3, 5)), ((2, 3), (2, 3)), ((3, 2), (1, 4))])
def test_confusion_matrix_dask_any_chunking(pred_chunks, truth_chunks):
    pred = da.from_array(PRED, chunks=pred_chunks)
    truth = da.from_array(TRUTH, chunks=truth_chunks)
    cm = confusion_matrix(pred, truth)
    assert isinstance(cm, da.Array)  # lazy: one small matrix per block, summed
    np.testing.assert_array_equal(cm.compute(), EXPECTED)


def test_confusion_matrix_dask_larger_random_equals_numpy():
    rng = np.random.default_rng(0)
    truth = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(257, 311))
    pred = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(257, 311))
    expected = confusion_matrix(pred, truth)
    assert expected.sum() == ((truth != 255) & (pred != 255)).sum()
    for chunks in [(64, 64), (100, 311), (257, 37)]:
        got = confusion_matrix(da.from_array(pred, chunks=chunks), da.from_array(truth, chunks=(50, 50)))
        np.testing.assert_array_equal(got.compute(), expected)


def test_confusion_matrix_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(PRED, TRUTH[:2])


def test_metrics_from_hand_confusion():
    m = metrics_from_confusion(EXPECTED)
    assert m["class_names"] == ["land", "sea", "ice"]
    land, sea, ice = (m["per_class"][k] for k in ("land", "sea", "ice"))
    assert land["iou"] == pytest.approx(3 / 4) and sea["iou"] == pytest.approx(4 / 7) and ice["iou"] == pytest.approx(3 / 5)
    assert land["precision"] == pytest.approx(1.0) and land["recall"] == pytest.approx(3 / 4)
    assert land["f1"] == pytest.approx(6 / 7) and sea["f1"] == pytest.approx(8 / 11)
    assert sea["support"] == 5 and m["n_pixels"] == 13
    assert m["mean_iou"] == pytest.approx((3 / 4 + 4 / 7 + 3 / 5) / 3)
    assert m["overall_accuracy"] == pytest.approx(10 / 13)
    assert m["confusion_matrix"] == EXPECTED.tolist()


def test_metrics_absent_class_is_undefined_not_zero():
    m = metrics_from_confusion(np.array([[5, 1, 0], [0, 4, 0], [0, 0, 0]]))
    assert np.isnan(m["per_class"]["ice"]["iou"])
    assert m["mean_iou"] == pytest.approx((5 / 6 + 4 / 5) / 2)  # ice left out of the mean


# ------------------------------------------------------------------ a class-map GeoTIFF against a chart
HEIGHT, WIDTH = 40, 60


def _truth_by_hand() -> np.ndarray:
    """Classes of the chart of :func:`_write_chart`: land cols 0-19, sea 20-44, ice rows 10-29 of cols
    30-44 (on top of sea), cols 45-54 ice, cols 55-59 no polygon."""
    truth = np.full((HEIGHT, WIDTH), 255, np.uint8)
    truth[:, :20] = 0
    truth[:, 20:45] = 1
    truth[10:30, 30:45] = 2
    truth[:, 45:55] = 2
    return truth


def _write_chart(path) -> None:
    x0, y0 = ORIGIN

    def cells(c0, c1, r0, r1):  # pixel-edge-aligned rectangle of columns c0..c1-1, rows r0..r1-1
        return box(x0 + c0 * PIXEL, y0 - r1 * PIXEL, x0 + c1 * PIXEL, y0 - r0 * PIXEL)

    frame = gpd.GeoDataFrame(
        {"poly_type": ["L", "W", "I", "I"]},
        geometry=[cells(0, 20, 0, HEIGHT), cells(20, 45, 0, HEIGHT), cells(30, 45, 10, 30), cells(45, 55, 0, HEIGHT)],
        crs=POLAR_STEREO,
    )
    frame.to_file(path, driver="ESRI Shapefile")


def _write_classes(path, classes: np.ndarray, count: int = 1) -> None:
    profile = dict(driver="GTiff", height=HEIGHT, width=WIDTH, count=count, dtype="uint8", nodata=255,
                   crs=POLAR_STEREO, transform=from_origin(*ORIGIN, PIXEL, PIXEL), tiled=True,
                   blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.broadcast_to(classes, (count, HEIGHT, WIDTH)))


@pytest.fixture
def prediction_and_chart(tmp_path):
    truth = _truth_by_hand()
    pred = truth.copy()
    pred[pred == 255] = 1  # the model predicts sea where the chart says nothing
    pred[5:15, 15:25] = 2  # a wrong ice patch across the coast
    pred[30:, :10] = 255  # nodata in the scene
    _write_classes(tmp_path / "pred.tif", pred)
    _write_chart(tmp_path / "seaice_s1_20180116t075430.shp")
    return tmp_path / "pred.tif", tmp_path / "seaice_s1_20180116t075430.shp", pred, truth


@pytest.mark.parametrize("chunks", [None, 16, 32])
def test_evaluate_prediction_against_chart(prediction_and_chart, chunks):
    pred_tif, chart, pred, truth = prediction_and_chart
    with dask.config.set(scheduler="synchronous"):
        metrics = evaluate_prediction(pred_tif, chart, chunks=chunks)
    expected = confusion_matrix(pred, truth)
    assert metrics["confusion_matrix"] == expected.tolist()
    assert metrics["n_pixels"] == ((pred != 255) & (truth != 255)).sum()
    assert metrics["per_class"]["ice"]["precision"] < 1.0 and metrics["per_class"]["land"]["precision"] == 1.0
    assert metrics["prediction"] == str(pred_tif) and metrics["chart"] == str(chart)


def test_format_metrics_table_shows_scores(prediction_and_chart):
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(format_metrics_table(metrics_from_confusion(EXPECTED), title="held-out"))
    text = console.export_text()
    assert "held-out" in text and "land" in text and "ice" in text
    assert "0.750" in text and "0.571" in text and f"{(3 / 4 + 4 / 7 + 3 / 5) / 3:.3f}" in text
    assert f"{10 / 13:.3f}" in text


def test_evaluate_bad_inputs(prediction_and_chart, tmp_path):
    pred_tif, chart, pred, _ = prediction_and_chart
    with pytest.raises(SceneError, match="does not exist"):
        evaluate_prediction(tmp_path / "missing.tif", chart)
    _write_classes(tmp_path / "three_bands.tif", pred, count=3)
    with pytest.raises(SceneError, match="not a class map"):
        evaluate_prediction(tmp_path / "three_bands.tif", chart)
    far = gpd.GeoDataFrame({"poly_type": ["W"]}, geometry=[box(0, 0, 1000, 1000)], crs=POLAR_STEREO)
    far.to_file(tmp_path / "far.shp", driver="ESRI Shapefile")
    with pytest.raises(ChartError, match="does not overlap"):
        evaluate_prediction(pred_tif, tmp_path / "far.shp")


def test_cli_evaluate(prediction_and_chart, tmp_path):
    """``polarxr evaluate PRED.tif CHART.shp --json`` prints the table and writes strict JSON."""
    pred_tif, chart, pred, truth = prediction_and_chart
    out = tmp_path / "metrics.json"
    run = subprocess.run([sys.executable, "-m", "polarxr.cli.main", "evaluate", str(pred_tif), str(chart),
                          "--json", str(out), "--workers", "1"], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "mean" in run.stdout and "land" in run.stdout
    saved = json.loads(out.read_text())
    assert saved["confusion_matrix"] == confusion_matrix(pred, truth).tolist()
    missing = subprocess.run([sys.executable, "-m", "polarxr.cli.main", "evaluate", str(tmp_path / "nope.tif"),
                              str(chart), "--workers", "1"], capture_output=True, text=True, timeout=180)
    assert missing.returncode == 2 and "nope.tif" in missing.stderr and "Traceback" not in missing.stderr


def test_evaluate_reports_boundary_distance_errors(prediction_and_chart):
    """The hand-made prediction's coastline is the chart's except a 10 x 10 px ice patch across it."""
    pred_tif, chart, pred, truth = prediction_and_chart
    metrics = evaluate_prediction(pred_tif, chart)
    assert 0 < metrics["coastline_mde_m"] < 10 * PIXEL and metrics["coastline_p95_m"] >= metrics["coastline_mde_m"]
    assert metrics["ice_edge_mde_m"] > 0
    perfect = pred_tif.with_name("perfect.tif")
    _write_classes(perfect, np.where(truth == 255, 1, truth).astype(np.uint8))
    exact = evaluate_prediction(perfect, chart)
    assert exact["coastline_mde_m"] == 0 and exact["ice_edge_mde_m"] == 0
    assert "coastline_mde_m" not in evaluate_prediction(pred_tif, chart, boundaries=False)
