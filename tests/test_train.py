"""Training on a tiny real Zarr cube: the loss falls, checkpoints round-trip, resume, bad inputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import zarr
from cube_files import write_tiny_cube

from polarxr.errors import CubeError, ModelError, PolarxrError
from polarxr.models import build_model
from polarxr.checkpoints import load_checkpoint, make_checkpoint, save_checkpoint
from polarxr.train import augment_batch, learning_rate, train

torch.set_num_threads(1)
UNET = {"width": 8, "depth": 2, "pool": 1}
FAST = dict(batch_size=8, lr=3e-3, device="cpu", model_options=UNET)


def _weights(path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def test_unet_training_lowers_loss_and_writes_run(tiny_cube, tmp_path):
    events = []
    result = train(tiny_cube, tmp_path / "run", epochs=4, progress=lambda e, i: events.append(e), save_interval=2,
                   **FAST)
    losses = [r["train_loss"] for r in result.history]
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert losses[-1] < 0.85 * losses[0]
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    assert result.history[-1]["val_mean_iou"] > 0.6  # held-out scene, pixel-wise
    root = zarr.open_group(tiny_cube, mode="r")
    assert result.history[-1]["val_scored"] == int((root["label"][:][root["split"][:] == 1] != 255).sum())
    assert events[0] == "start" and events.count("epoch") == 4 and "step" in events
    assert result.history[-1]["lr"] < result.history[0]["lr"] < FAST["lr"]  # cosine decay per step
    run = tmp_path / "run"
    assert {p.name for p in run.glob("*.pt")} == {"checkpoint_epoch2.pt", "checkpoint_epoch4.pt", "last.pt", "best.pt"}
    with open(run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4] and float(rows[-1]["train_loss"]) == pytest.approx(losses[-1])
    assert json.loads((run / "log.json").read_text())[-1]["val_mean_iou"] == pytest.approx(
        result.history[-1]["val_mean_iou"])
    assert (run / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.glob(".*tmp*"))  # atomic writes leave nothing behind


def test_checkpoint_is_self_contained_and_round_trips(tiny_cube, tmp_path):
    result = train(tiny_cube, tmp_path / "run", epochs=1, max_steps_per_epoch=2, **FAST)
    raw = torch.load(result.last_checkpoint, weights_only=True)  # plain dict, no pickled classes
    assert raw["model_config"] == {"name": "unet", "in_channels": 3, "n_classes": 3, **UNET}
    assert raw["band_names"] == ["HH", "HV", "HH-HV"] and len(raw["norm"]["mean"]) == 3
    assert raw["label_codes"] == {"L": 0, "W": 1, "I": 2} and raw["patch_size"] == 32
    assert raw["epoch"] == 1 and raw["seed"] == 0 and "optimizer" in raw and raw["polarxr_version"]
    model, meta = load_checkpoint(result.last_checkpoint)
    assert not model.training and "state_dict" not in meta and meta["halo"] == model.halo == 24
    # a freshly built model with the saved weights, in another process's shoes, gives identical logits
    twin = build_model(raw["model_config"])
    twin.load_state_dict(raw["state_dict"])
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x), twin.eval()(x))


def test_make_checkpoint_round_trip_identical_logits(tmp_path):
    torch.manual_seed(3)
    net = build_model({"name": "patchcnn", "in_channels": 2, "width": 4, "patch_size": 32}).eval()
    state = make_checkpoint(net, band_names=["HH", "HV"], norm={"mean": [0.1, 0.02], "std": [0.05, 0.01]},
                            patch_size=32, epoch=7)
    save_checkpoint(tmp_path / "cnn.pt", state)
    loaded, meta = load_checkpoint(tmp_path / "cnn.pt", model="patchcnn")
    x = torch.randn(4, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert meta["epoch"] == 7 and meta["norm"]["std"] == [0.05, 0.01]


class _Interrupted(Exception):
    pass


def _crash_after_epoch_1(event: str, info: dict) -> None:
    if event == "epoch" and info["epoch"] == 1:  # last.pt of epoch 1 is written before this event
        raise _Interrupted


def test_resume_continues_from_saved_epoch_as_if_uninterrupted(tiny_cube, tmp_path):
    straight = train(tiny_cube, tmp_path / "straight", epochs=2, max_steps_per_epoch=3, **FAST)
    with pytest.raises(_Interrupted):
        train(tiny_cube, tmp_path / "resumed", epochs=2, max_steps_per_epoch=3, progress=_crash_after_epoch_1, **FAST)
    interrupted = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert interrupted["epoch"] == 1
    second = train(tiny_cube, tmp_path / "resumed", epochs=2, max_steps_per_epoch=3, **FAST)
    assert second.start_epoch == 1 and [r["epoch"] for r in second.history] == [1, 2]
    assert second.history[0] == interrupted["history"][0]  # epoch 1 was not trained again
    assert second.history[1]["train_loss"] == straight.history[1]["train_loss"]
    resumed, uninterrupted = _weights(second.last_checkpoint), _weights(straight.last_checkpoint)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    # a finished run resumed with the same epoch count trains nothing
    again = train(tiny_cube, tmp_path / "resumed", epochs=2, max_steps_per_epoch=3, **FAST)
    assert again.start_epoch == 2 and len(again.history) == 2


def test_resume_with_another_recipe_is_refused(tiny_cube, tmp_path):
    """A run interrupted after epoch 1 and resumed with another loss or learning rate would be neither recipe."""
    with pytest.raises(_Interrupted):
        train(tiny_cube, tmp_path / "run", epochs=2, max_steps_per_epoch=3, progress=_crash_after_epoch_1, **FAST)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(ModelError, match=r"object_weight 10.0 \(last.pt: 1.0\)"):
        train(tiny_cube, tmp_path / "run", epochs=2, max_steps_per_epoch=3, object_weight=10.0, **FAST)
    with pytest.raises(ModelError, match=r"lr 0.001 \(last.pt: 0.003\).*seed 7 \(last.pt: 0\)"):
        train(tiny_cube, tmp_path / "run", epochs=2, max_steps_per_epoch=3, seed=7, **{**FAST, "lr": 1e-3})
    assert (tmp_path / "run" / "last.pt").read_bytes() == before  # nothing trained, nothing overwritten
    resumed = train(tiny_cube, tmp_path / "run", epochs=2, max_steps_per_epoch=3, **FAST)
    assert resumed.start_epoch == 1 and len(resumed.history) == 2


def test_learning_rate_schedules():
    assert learning_rate(1e-3, 0, 100) == pytest.approx(1e-3)
    assert learning_rate(1e-3, 50, 100) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert learning_rate(1e-3, 100, 100) == pytest.approx(1e-5)
    assert learning_rate(1e-3, 70, 100, "constant") == 1e-3


def test_same_seed_same_weights_other_seed_differs(tiny_cube, tmp_path):
    a = train(tiny_cube, tmp_path / "a", epochs=1, max_steps_per_epoch=2, seed=5, **FAST)
    b = train(tiny_cube, tmp_path / "b", epochs=1, max_steps_per_epoch=2, seed=5, **FAST)
    c = train(tiny_cube, tmp_path / "c", epochs=1, max_steps_per_epoch=2, seed=6, **FAST)
    wa, wb, wc = (_weights(r.last_checkpoint) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_patch_classifier_trains_on_patch_labels(tiny_cube, tmp_path):
    result = train(tiny_cube, tmp_path / "cnn", model="patchcnn", epochs=2, batch_size=8, lr=1e-3, device="cpu",
                   model_options={"width": 4}, save_interval=2)
    assert {p.name for p in (tmp_path / "cnn").glob("checkpoint_*.pt")} == {"checkpoint_epoch2.pt"}
    model, meta = load_checkpoint(result.last_checkpoint, model="patchcnn")
    assert meta["model_config"]["patch_size"] == 32 and not model.dense
    # validation is patch-wise: one score per val patch with a labelled centre
    root = zarr.open_group(tiny_cube, mode="r")
    val = root["split"][:] == 1
    assert result.history[-1]["val_scored"] == int((root["patch_label"][:][val] != 255).sum()) == 16


def test_augment_batch_moves_image_and_label_together():
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    label = image[:, 0].long()
    for seed in range(5):
        aug_image, aug_label = augment_batch(image, label, torch.Generator().manual_seed(seed))
        assert torch.equal(aug_image[:, 0].long(), aug_label)
        # each sample is one of the 8 symmetries of its square
        for i in range(2):
            variants = [torch.rot90(v, k, (-2, -1)) for v in (image[i], image[i].flip(-1)) for k in range(4)]
            assert any(torch.equal(aug_image[i], v) for v in variants)


def test_bad_inputs_give_clear_errors(tiny_cube, tmp_path):
    with pytest.raises(CubeError, match="does not exist"):
        train(tmp_path / "missing.zarr", tmp_path / "run", **FAST)
    unlabelled = write_tiny_cube(tmp_path / "unlabelled.zarr", labelled=False)
    with pytest.raises(CubeError, match="no labelled pixels"):
        train(unlabelled, tmp_path / "run", **FAST)
    unet = train(tiny_cube, tmp_path / "run", epochs=1, max_steps_per_epoch=1, **FAST)
    with pytest.raises(ModelError, match="holds a 'unet' model, not the 'patchcnn'"):
        load_checkpoint(unet.last_checkpoint, model="patchcnn")
    with pytest.raises(ModelError, match="holds a 'unet' model"):  # resuming a run of another model
        train(tiny_cube, tmp_path / "run", model="patchcnn", epochs=2, device="cpu")
    with pytest.raises(ModelError, match="configured as"):  # same model, other architecture
        train(tiny_cube, tmp_path / "run", epochs=2, device="cpu", model_options={"width": 4, "depth": 2})
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="not a polarxr checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="unknown model 'resnet'"):
        train(tiny_cube, tmp_path / "other", model="resnet")
    with pytest.raises(PolarxrError, match="object weight must be in"):
        train(tiny_cube, tmp_path / "other", object_weight=0.5, **FAST)
    if not torch.cuda.is_available():
        with pytest.raises(PolarxrError, match="no CUDA GPU"):
            train(tiny_cube, tmp_path / "other", device="cuda", model_options=UNET)


def test_cli_train_parity_with_seed(tiny_cube, tmp_path):
    """The seed's flags plus --model/--cube/--out; bad input is one red line and exit code 2."""
    args = [sys.executable, "-m", "polarxr.cli.main", "train", "--run-number", "0", "--epochs", "2",
            "--save-interval", "1", "--batch-size", "8", "--model", "unet", "--cube", str(tiny_cube),
            "--lr", "3e-3", "--device", "cpu", "--out", str(tmp_path / "run"), "--seed", "0",
            "--width", "4", "--depth", "2", "--max-steps-per-epoch", "2"]
    env = dict(os.environ, COLUMNS="200")
    run = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    assert "epoch 2: train loss" in run.stdout and "mean iou" in run.stdout
    assert (tmp_path / "run" / "checkpoint_epoch2.pt").exists() and (tmp_path / "run" / "last.pt").exists()
    bad = subprocess.run(args[:args.index("--cube") + 1] + [str(tmp_path / "nope.zarr")]
                         + args[args.index("--cube") + 2:], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "nope.zarr" in bad.stderr and "does not exist" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_small_ice_object_weights_mark_icebergs_and_their_ring_only():
    """Icebergs as ``polarxr icebergs`` counts them (ice objects of <= max_pixels surrounded by sea) and the
    sea ring around them get the factor; ice touching land, no label or the patch edge, and large ice, not."""
    from polarxr.classes import ICE, LAND, WATER
    from polarxr.train import small_ice_object_weights

    label = torch.full((1, 20, 24), WATER, dtype=torch.long)
    label[0, 3:5, 3:6] = ICE          # a 6 px berg in open water
    label[0, 10:12, 2:4] = ICE        # ice beside land
    label[0, 10:12, 4] = LAND
    label[0, 15:17, 15:17] = ICE      # ice beside a pixel without label
    label[0, 17, 17] = 255
    label[0, 0:2, 20:22] = ICE        # at the patch edge
    label[0, 8:16, 8:14] = ICE        # 48 px: over the bound below
    weights = small_ice_object_weights(label, 5.0, max_pixels=40)[0]
    expected = torch.ones(20, 24)
    expected[2:6, 2:7] = 5.0          # the berg and its 8-connected ring of sea
    torch.testing.assert_close(weights, expected)
    assert small_ice_object_weights(label, 5.0, max_pixels=48)[0][12, 10] == 5.0  # within the bound now


def test_pixel_weights_of_the_loss_equal_repeating_the_pixel():
    """weighted_cross_entropy with a pixel weight of k counts that pixel k times over (class weights kept)."""
    from polarxr.train import weighted_cross_entropy

    logits = torch.randn(1, 3, 1, 3, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([[[0, 1, 255]]])
    class_weight = torch.tensor([0.5, 2.0, 1.0])
    plain = weighted_cross_entropy(logits, target, class_weight)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, class_weight, pixel_weight=torch.ones(1, 1, 3)), plain)
    weighted = weighted_cross_entropy(logits, target, class_weight, pixel_weight=torch.tensor([[[3.0, 1.0, 7.0]]]))
    repeated = weighted_cross_entropy(torch.cat([logits[..., :1]] * 3 + [logits[..., 1:]], dim=-1),
                                      torch.tensor([[[0, 0, 0, 1, 255]]]), class_weight)
    torch.testing.assert_close(weighted, repeated)
    assert not torch.isclose(weighted, plain)


def test_training_with_object_weights_is_recorded_and_changes_the_model(tmp_path):
    """``object_weight`` reaches the loss: a cube whose patches hold icebergs trains to other weights than with
    the plain loss (same seed), and the checkpoint says how it was trained."""
    from polarxr.classes import ICE, WATER

    cube = write_tiny_cube(tmp_path / "bergs.zarr")
    root = zarr.open_group(cube, mode="r+")
    label = root["label"][:]
    label[:] = WATER
    label[:, 10:12, 10:13] = ICE  # a 6 px berg in every patch
    root["label"][:] = label
    plain = train(cube, tmp_path / "plain", epochs=1, max_steps_per_epoch=2, **FAST)
    weighted = train(cube, tmp_path / "weighted", epochs=1, max_steps_per_epoch=2, object_weight=20.0, **FAST)
    assert load_checkpoint(weighted.last_checkpoint)[1]["training"]["object_weight"] == 20.0
    a, b = _weights(plain.last_checkpoint), _weights(weighted.last_checkpoint)
    assert any(not torch.equal(a[k], b[k]) for k in a)
