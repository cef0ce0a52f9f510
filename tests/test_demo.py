"""The main job end to end (what `make demo` runs), at a tiny size."""

from __future__ import annotations

import numpy as np
from distributed import Client, LocalCluster

from polarxr.demo import DemoConfig, run_demo


def test_demo_runs_every_stage_and_reports_held_out_metrics(tmp_path):
    config = DemoConfig(train_scenes=3, test_scenes=1, size=(384, 384), patch_size=128, samples_per_label=16,
                        epochs=3, batch_size=4, width=8, depth=3, pool=4, chunk=256)
    lines = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        report = run_demo(tmp_path, client, config, say=lines.append)
    assert [line for line in lines if not line.startswith("  ")] == [
        f"[bold]{stage}[/]" for stage in ("synthesize", "labels", "cube", "train", "predict", "evaluate")]
    assert any("epoch 3/3" in line for line in lines)
    text = report.report.read_text()
    assert "Mean IoU" in text and "| sea |" in text and "| ice |" in text
    # better than painting every pixel with the most common class (IoU = its share; the others score 0)
    cm = np.asarray(report.metrics["confusion_matrix"])
    present = (cm.sum(0) + cm.sum(1) > 0).sum()
    constant = cm.sum(1).max() / cm.sum() / present
    print(f"held-out mean IoU {report.metrics['mean_iou']:.3f}, best constant map {constant:.3f}")
    assert report.metrics["n_pixels"] > 0 and report.metrics["mean_iou"] > constant + 0.05
    predictions = sorted((tmp_path / "predictions").glob("*_class.tif"))
    assert len(predictions) == 1 and (tmp_path / "run" / "last.pt").exists()
    assert len(list((tmp_path / "predictions").glob("*_quicklook.png"))) == 1
    assert len(list((tmp_path / "labels").glob("*_labels.tif"))) == 1
