"""Seed patch sets (polar-patch) as published: import of each layout, row splits, nodata flags, training
the patch classifier and a centre-window segmenter on the imported cube, fine-tuning, evaluate-patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from polarxr.cube import open_cube
from polarxr.errors import CubeError, ModelError
from polarxr.seedcompat import import_seed_patches, parse_split_index, read_seed_meta

torch.set_num_threads(1)
REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "polar-patch-train"
LETTERS = "LWI"
#: class -> mean DN of the three scene bands, so that a classifier has something to learn
CLASS_DN = {0: (150, 120, 110), 1: (40, 15, 90), 2: (100, 50, 50)}


def _write_set(folder: Path, n: int = 24, size: int = 16, layout: str = "csv", nodata_every: int = 6,
               images_dir: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A seed set as published: PNGs written in BGR order, nodata (0, 1, 1) in scene band order on the
    left 3/4 of every ``nodata_every``-th patch; ``meta.csv`` (space-separated) or ``meta.npy``."""
    png_dir = folder / "images" if images_dir else folder
    png_dir.mkdir(parents=True)
    rng = np.random.default_rng(1)
    labels = np.array([i % 3 for i in range(n)], np.uint8)
    patches = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        mean = np.asarray(CLASS_DN[int(labels[i])], np.float64)[:, None, None]
        patches[i] = np.clip(rng.normal(mean, 12, (3, size, size)), 2, 255).astype(np.uint8)
        if nodata_every and i % nodata_every == nodata_every - 1:
            patches[i, :, :, : 3 * size // 4] = np.array([0, 1, 1], np.uint8)[:, None, None]
        Image.fromarray(np.moveaxis(patches[i], 0, -1)[..., ::-1].copy()).save(png_dir / f"{100 + i}.png")
    rows = [[100 + i, 30 * i, 7 * i, LETTERS[labels[i]]] for i in range(n)]
    if layout == "csv":
        (folder / "meta.csv").write_text("".join(f"{a} {b} {c} {d}\n" for a, b, c, d in rows))
    else:
        np.save(folder / "meta.npy", np.array(rows))
    return patches, labels


def test_import_csv_layout_split_index_and_nodata_flags(tmp_path):
    patches, labels = _write_set(tmp_path / "polar-patch")
    cube = tmp_path / "p.zarr"
    results = import_seed_patches(tmp_path / "polar-patch", cube, split_index="0.75", max_nodata=0.5)
    assert [(r.name, r.split, r.patches) for r in results] == [
        ("polar-patch[0:18]", "train", 18), ("polar-patch[18:24]", "val", 6)]
    ds = open_cube(cube)
    assert list(ds.split.values) == ["train"] * 18 + ["val"] * 6
    image = ds.image.values
    for i in range(24):
        missing = (patches[i] == 0).any(axis=0)
        np.testing.assert_array_equal(image[i][:, ~missing], patches[i][:, ~missing])  # BGR reversed
        assert (image[i][:, missing] == 0).all()  # (0, 1, 1) -> 0 in every band: the cube's nodata
    np.testing.assert_array_equal(ds.patch_label.values, labels)
    np.testing.assert_array_equal(ds.row.values, 30 * np.arange(24))
    records = ds.attrs["scene_records"]
    assert records[0]["flagged"] == [5, 11, 17] and records[1]["flagged"] == [5]  # offsets in each record
    assert records[0]["patch_counts"] == {"0": 6, "1": 6, "2": 3}  # flagged patches (all class 2) left out
    assert records[0]["flagged_counts"] == {"0": 0, "1": 0, "2": 3}
    sampler = ds.attrs["sampler_params"]
    assert sampler["meta_format"] == "csv" and sampler["png_dir"].endswith("images")
    assert "transposed" in sampler["label_position"] and "BGR" in sampler["channel_order"]
    assert records[0]["sampler"]["rows"] == [0, 18]
    # re-import: skipped; --overwrite replaces
    assert [r.status for r in import_seed_patches(tmp_path / "polar-patch", cube, split_index="0.75")] == ["skipped"] * 2
    again = import_seed_patches(tmp_path / "polar-patch", cube, split_index="0.75", overwrite=True)
    assert [r.status for r in again] == ["replaced"] * 2 and open_cube(cube).sizes["patch"] == 24


def test_import_npy_layout_pngs_beside_meta_and_format_detection(tmp_path):
    patches, labels = _write_set(tmp_path / "set", layout="npy", images_dir=False, nodata_every=0)
    [result] = import_seed_patches(tmp_path / "set", tmp_path / "c.zarr")
    assert result.patches == 24 and result.split == "train"
    np.testing.assert_array_equal(open_cube(tmp_path / "c.zarr").image.values, patches)
    # the format comes from the bytes, not the name: a .npy called rows.csv reads as .npy
    (tmp_path / "set" / "meta.npy").rename(tmp_path / "rows.csv")
    assert read_seed_meta(tmp_path / "rows.csv").format == "npy-random"
    with pytest.raises(CubeError, match="holds no seed meta file"):
        import_seed_patches(tmp_path / "set", tmp_path / "d.zarr")
    both = tmp_path / "both"
    _write_set(both)
    np.save(both / "meta.npy", np.array([["100", "0", "0", "L"]]))
    with pytest.raises(CubeError, match="both meta.csv and meta.npy"):
        import_seed_patches(both, tmp_path / "d.zarr")
    bad = tmp_path / "bad.csv"
    bad.write_text("100 0 0 L\n101 5 W\n")
    with pytest.raises(CubeError, match="line 2: expected 4 fields"):
        read_seed_meta(bad)
    bad.write_text("idx x y label\n100 0 0 Q\n")
    with pytest.raises(CubeError, match="row 0: unknown label 'Q'"):
        read_seed_meta(bad)


def test_parse_split_index():
    assert parse_split_index("0.8", 10) == [("train", 0, 8), ("val", 8, 10)]
    assert parse_split_index("0.6,0.2", 10) == [("train", 0, 6), ("val", 6, 8), ("test", 8, 10)]
    assert parse_split_index("val=7:,train=0:7", 10) == [("train", 0, 7), ("val", 7, 10)]
    for spec, message in (("train=0:5,val=6:", "rows 5:6 in no split"), ("train=0:6,val=5:", "overlap"),
                          ("train=0:8", "rows 8:10 in no split"), ("1.5", "fractions in"), ("dev=0:", "SPLIT=LO:HI"),
                          ("half", "neither fractions")):
        with pytest.raises(CubeError, match=message):
            parse_split_index(spec, 10)


def _cli(*args: str) -> str:
    from polarxr.cli.main import app

    result = CliRunner().invoke(app, list(args), terminal_width=200, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_train_patch_classifier_on_imported_cube_fine_tune_and_evaluate(tmp_path):
    from polarxr.train import train

    _write_set(tmp_path / "set", n=60)
    cube = tmp_path / "c.zarr"
    out = _cli("import-patches", str(tmp_path / "set"), "--cube", str(cube), "--split-index", "0.8",
               "--max-nodata", "0.5")
    assert "flagged 10 of 60" in out
    run = train(cube, tmp_path / "run", model="patchcnn", epochs=10, batch_size=8, lr=3e-3, device="cpu",
                model_options={"width": 8, "dropout": 0.0})
    state = torch.load(run.last_checkpoint, weights_only=True)
    # weights from patch labels (dense ones are absent): train patches without the flagged ones
    counts = np.array([16, 16, 8], np.float64)  # 48 train rows, 8 flagged (all ice)
    freq = counts / counts.sum()
    expected = 1 / freq / (1 / freq * freq).sum()
    np.testing.assert_allclose(state["class_weights"], expected, rtol=1e-5)
    scores = json.loads(_cli("evaluate-patches", str(cube), "--checkpoint", str(run.last_checkpoint), "--json"))
    assert scores["n_patches"] == 12 and scores["n_flagged"] == 2 and scores["split"] == "val"
    assert scores["unflagged"]["accuracy"] >= 0.9  # the classes differ plainly in brightness
    assert set(scores["per_class"]) == {"land", "sea", "ice"}

    # fine-tuning: starts from the checkpoint's weights, same model
    tuned = train(cube, tmp_path / "tuned", model=None, epochs=1, batch_size=8, lr=1e-4, device="cpu",
                  init=run.last_checkpoint, max_steps_per_epoch=1, weighting="none")
    assert tuned.model == "patchcnn" and tuned.history[0]["val_overall_accuracy"] >= 0.8
    state = torch.load(tuned.last_checkpoint, weights_only=True)
    assert state["training"]["init"] == str(run.last_checkpoint)
    assert state["class_weights"] == [1.0, 1.0, 1.0] and state["training"]["weighting"] == "none"
    other = tmp_path / "other.zarr"
    import_seed_patches(tmp_path / "set", other, split_index="0.8", band_names=("HH", "HV", "ratio"))
    with pytest.raises(ModelError, match=r"trained on bands \['red', 'green', 'blue'\].*same bands"):
        train(other, tmp_path / "x", model=None, epochs=1, init=run.last_checkpoint, device="cpu")
    with pytest.raises(ModelError, match="holds a 'patchcnn' model, not the 'unet'"):
        train(cube, tmp_path / "x", model="unet", epochs=1, init=run.last_checkpoint, device="cpu")


def test_segmenter_trains_with_centre_window_supervision(tmp_path):
    from polarxr.train import centre_window_target, train

    target = centre_window_target(torch.tensor([2, 0]), 16, 4)
    assert (target[0, 6:10, 6:10] == 2).all() and (target[1, 6:10, 6:10] == 0).all()
    assert int((target != 255).sum()) == 2 * 16
    _write_set(tmp_path / "set", n=30)
    cube = tmp_path / "c.zarr"
    import_seed_patches(tmp_path / "set", cube, split_index="0.8")
    run = train(cube, tmp_path / "run", model="unet", epochs=2, batch_size=8, lr=3e-3, device="cpu",
                model_options={"width": 8, "depth": 2, "pool": 1})
    state = torch.load(run.last_checkpoint, weights_only=True)
    assert state["training"]["centre_window"] == 8
    assert run.history[-1]["val_scored"] == 5 * 64  # 6 val patches, 1 flagged; 8 x 8 px each
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]


def test_evaluate_patches_against_hand_computed_confusion(tmp_path):
    from polarxr.models import build_model
    from polarxr.patch_evaluation import evaluate_patches, patch_classes
    from polarxr.train import make_checkpoint, save_checkpoint

    # the centre-window rule: the window's mean probability decides, not the pixels around it
    logits = torch.zeros(1, 3, 16, 16)
    logits[0, 0] = 5.0
    logits[0, 2, 4:12, 4:12] = 10.0
    assert patch_classes(logits, 8).tolist() == [2] and patch_classes(logits, 16).tolist() == [0]
    assert patch_classes(torch.tensor([[0.0, 3.0, 1.0]])).tolist() == [1]

    _write_set(tmp_path / "set", n=24)
    cube = tmp_path / "c.zarr"
    import_seed_patches(tmp_path / "set", cube, split_index="0.5")
    # a patch classifier that always answers "sea": its output layer is zero but for the bias
    net = build_model({"name": "patchcnn", "in_channels": 3, "n_classes": 3, "width": 4, "patch_size": 16})
    with torch.no_grad():
        net.classifier[-1].weight.zero_()
        net.classifier[-1].bias.copy_(torch.tensor([0.0, 4.0, 1.0]))
    ckpt = save_checkpoint(tmp_path / "sea.pt", make_checkpoint(net, band_names=["red", "green", "blue"],
                                                                  norm={"mean": [0.0] * 3, "std": [1.0] * 3},
                                                                  patch_size=16))
    scores = evaluate_patches(cube, ckpt, "val")
    # val rows 12..23: labels 0,1,2 repeating -> 4 each; flagged rows 17 and 23 (both ice)
    assert scores["confusion_matrix"] == [[0, 4, 0], [0, 4, 0], [0, 4, 0]]
    assert scores["accuracy"] == pytest.approx(4 / 12) and scores["n_flagged"] == 2
    assert scores["per_class"]["sea"] == {"precision": pytest.approx(1 / 3), "recall": 1.0,
                                          "f1": pytest.approx(0.5), "support": 4}
    assert scores["per_class"]["land"]["recall"] == 0.0 and np.isnan(scores["per_class"]["land"]["precision"])
    assert scores["unflagged"]["confusion_matrix"] == [[0, 4, 0], [0, 4, 0], [0, 2, 0]]
    assert evaluate_patches(cube, ckpt, "all")["confusion_matrix"] == [[0, 8, 0], [0, 8, 0], [0, 8, 0]]
    assert evaluate_patches(cube, ckpt, "val", exclude_flagged=True)["n_patches"] == 10
    with pytest.raises(CubeError, match="no labelled patches in split 'test'"):
        evaluate_patches(cube, ckpt, "test")


@pytest.mark.skipif(not REAL.is_dir(), reason=f"the real polar-patch set is not at {REAL} (../shared absent)")
def test_real_polar_patch_folder_imports_as_published(tmp_path):
    from polarxr.seedcompat import find_seed_layout

    layout = find_seed_layout(REAL)
    assert layout.meta.format == "csv" and layout.png_dir == REAL / "images" and len(layout.meta.idx) == 8037
    assert np.bincount(layout.meta.label).tolist() == [1010, 3297, 3730]
    # a sample of the real rows, imported the same way (the whole set: benchmarks/real_patches.py)
    sample = tmp_path / "sample"
    (sample / "images").mkdir(parents=True)
    lines = (REAL / "meta.csv").read_text().splitlines()[:300]
    (sample / "meta.csv").write_text("\n".join(lines) + "\n")
    for line in lines:
        (sample / "images" / f"{line.split()[0]}.png").symlink_to(REAL / "images" / f"{line.split()[0]}.png")
    results = import_seed_patches(sample, tmp_path / "real.zarr", split_index="0.8")
    assert [r.patches for r in results] == [240, 60]
    ds = open_cube(tmp_path / "real.zarr")
    flagged = sum(len(r["flagged"]) for r in ds.attrs["scene_records"])
    assert 0.1 < flagged / 300 < 0.35  # about 21 % of the published patches are mostly nodata
    image = ds.image.values
    valid = (image != 0).all(axis=1)
    assert ((image == 0).all(axis=1) | valid).all()  # nodata is 0 in every band after import


def _constant_classifier(path: Path, bias: list[float], size: int = 16, batchnorm: bool = False, seed: int = 0,
                         zero: bool = True) -> Path:
    """A tiny patch classifier checkpoint; with ``zero`` its answer is ``bias`` whatever the patch."""
    from polarxr.models import build_model
    from polarxr.train import make_checkpoint, save_checkpoint

    torch.manual_seed(seed)
    config = {"name": "patchcnn", "in_channels": 3, "n_classes": 3, "width": 4, "patch_size": size}
    net = build_model(config | ({"batchnorm": True} if batchnorm else {}))
    with torch.no_grad():
        if zero:
            net.classifier[-1].weight.zero_()
        net.classifier[-1].bias.copy_(torch.tensor(bias))
    return save_checkpoint(path, make_checkpoint(net.eval(), band_names=["red", "green", "blue"],
                                                 norm={"mean": [0.0] * 3, "std": [1.0] * 3}, patch_size=size))


def test_evaluate_patches_ensemble_and_test_time_augmentation(tmp_path):
    from polarxr.patch_evaluation import SYMMETRIES, evaluate_patches, predict_cube_patches
    from polarxr.train import load_checkpoint

    _write_set(tmp_path / "set", n=24)
    cube = tmp_path / "c.zarr"
    import_seed_patches(tmp_path / "set", cube, split_index="0.5")
    sea = _constant_classifier(tmp_path / "sea.pt", [0.0, 4.0, 1.0])  # softmax sea 0.94, ice 0.05
    ice = _constant_classifier(tmp_path / "ice.pt", [0.0, 0.0, 5.0])  # ice 0.99: the average says ice
    both = json.loads(_cli("evaluate-patches", str(cube), "--checkpoint", str(sea), "--checkpoint", str(ice), "--json"))
    assert both["confusion_matrix"] == [[0, 0, 4], [0, 0, 4], [0, 0, 4]]
    assert both["checkpoint"] == [str(sea), str(ice)]
    p = torch.tensor([[0.0, 4.0, 1.0], [0.0, 0.0, 5.0]]).softmax(1).mean(0).numpy()
    out = predict_cube_patches(cube, [sea, ice], "val")
    np.testing.assert_allclose(out["probabilities"], np.broadcast_to(p, (12, 3)), rtol=1e-5)

    # TTA: the mean of the class probabilities of the 8 flips / rotations, computed here by hand
    rand = _constant_classifier(tmp_path / "rand.pt", [0.0, 0.0, 0.0], zero=False, seed=3)
    tta = predict_cube_patches(cube, rand, "val", tta=True)
    net, _ = load_checkpoint(rand)
    x = torch.from_numpy(open_cube(cube).image.values[tta["index"]].astype(np.float32))
    x[(x == 0).all(1, keepdim=True).expand_as(x)] = 0.0
    views = [torch.rot90(x.flip(-1) if m else x, k, (-2, -1)) for k, m in SYMMETRIES]
    with torch.no_grad():
        expected = torch.stack([net(v).softmax(1) for v in views]).mean(0).numpy()
    np.testing.assert_allclose(tta["probabilities"], expected, rtol=1e-4, atol=1e-6)
    plain = predict_cube_patches(cube, rand, "val")["probabilities"]
    assert not np.allclose(plain, expected, atol=1e-4)  # the views differ, so TTA changes the answer
    assert evaluate_patches(cube, rand, "val", tta=True)["tta"] is True


def test_train_label_smoothing_and_final_model_on_train_plus_val(tmp_path):
    _write_set(tmp_path / "set", n=40)
    cube = tmp_path / "c.zarr"
    import_seed_patches(tmp_path / "set", cube, split_index="0.5")  # 20 train (3 flagged), 20 val (3 flagged)
    out = _cli("train", "--cube", str(cube), "--out", str(tmp_path / "run"), "--model", "patchcnn", "--width", "4",
               "--epochs", "1", "--batch-size", "2", "--label-smoothing", "0.1", "--train-splits", "train+val",
               "--batchnorm", "--intensity-jitter", "0.3", "--device", "cpu")
    assert "checkpoint:" in out
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["training"]["label_smoothing"] == 0.1 and state["training"]["train_splits"] == "train+val"
    assert state["model_config"]["batchnorm"] is True and state["training"]["intensity_jitter"] == 0.3
    assert state["history"][0]["steps"] == 17  # (17 + 17) patches with imagery / batch 2
    assert not (tmp_path / "run" / "best.pt").exists()  # nothing left to validate on
    from polarxr.train import weighted_cross_entropy

    logits, target, ones = torch.tensor([[9.0, 0.0, 0.0]]), torch.tensor([1]), torch.ones(3)
    # smoothing bounds the cost of a confidently contradicted (possibly wrong) label... and charges certainty
    assert weighted_cross_entropy(logits, target, ones, 0.1) < weighted_cross_entropy(logits, target, ones)
    assert weighted_cross_entropy(torch.tensor([[0.0, 9.0, 0.0]]), target, ones, 0.1) > 0.1


def test_intensity_jitter_is_an_affine_map_per_patch_and_band_that_keeps_nodata():
    from polarxr.train import jitter_intensity

    images = torch.randn(4, 3, 8, 8)
    images[1, :, :, :3] = 0.0  # nodata margin
    out = jitter_intensity(images, 0.3, torch.Generator().manual_seed(0))
    assert (out[1, :, :, :3] == 0).all()
    for k in range(4):
        for b in range(3):
            x, y = images[k, b, :, 4:].flatten(), out[k, b, :, 4:].flatten()
            gain = (y[1:] - y[0]) / (x[1:] - x[0])
            assert torch.allclose(gain, gain[0].expand_as(gain), rtol=1e-3), (k, b)
    gains = torch.stack([(out[k, b, 0, 5] - out[k, b, 0, 4]) / (images[k, b, 0, 5] - images[k, b, 0, 4])
                         for k in range(4) for b in range(3)])
    assert gains.std() > 0.05  # each patch and band draws its own
    assert torch.equal(jitter_intensity(images, 0.3, torch.Generator().manual_seed(0)), out)  # seeded


def test_adapt_bn_re_estimates_statistics_on_unlabelled_patches(tmp_path):
    from polarxr.adaptation import adapt_batchnorm, batchnorm_layers
    from polarxr.train import load_checkpoint

    _write_set(tmp_path / "set", n=24)
    cube = tmp_path / "c.zarr"
    import_seed_patches(tmp_path / "set", cube, split_index="0.5")
    source = _constant_classifier(tmp_path / "src.pt", [0.0, 0.0, 0.0], batchnorm=True, zero=False)
    adapted = tmp_path / "adapted.pt"
    out = _cli("adapt-bn", str(source), "--cube", str(cube), "--out", str(adapted), "--split", "train")
    assert "no label read" in out
    net, meta = load_checkpoint(adapted)
    attrs = open_cube(cube).attrs
    assert meta["norm"]["mean"] == pytest.approx(attrs["norm"]["mean"])
    assert meta["adaptation"]["patches"] == 10 and meta["adaptation"]["labels_used"] is False  # 12 rows, 2 flagged
    # the first batch norm now holds the mean / variance of the first convolution over those 10 patches
    ds = open_cube(cube)
    keep = np.setdiff1d(np.arange(12), [5, 11])
    raw = ds.image.values[keep].astype(np.float32)
    mean, std = (np.asarray(attrs["norm"][k], np.float32)[:, None, None] for k in ("mean", "std"))
    x = torch.from_numpy(np.where((raw == 0).all(1, keepdims=True), 0.0, (raw - mean) / std).astype(np.float32))
    with torch.no_grad():
        conv = net.features[0](x)
    bn = batchnorm_layers(net)[0]
    np.testing.assert_allclose(bn.running_mean.numpy(), conv.mean((0, 2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), conv.var((0, 2, 3)).numpy(), rtol=1e-3)
    plain = _constant_classifier(tmp_path / "plain.pt", [0.0, 0.0, 0.0])
    with pytest.raises(ModelError, match="no batch-normalisation layers"):
        adapt_batchnorm(plain, cube, tmp_path / "x.pt", input_norm="checkpoint")
    other = tmp_path / "other.zarr"
    import_seed_patches(tmp_path / "set", other, split_index="0.5", band_names=("HH", "HV", "ratio"))
    with pytest.raises(ModelError, match="trained on bands"):
        adapt_batchnorm(source, other, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
