"""The training cube: patches equal the scene and its labels, both samplers' rules, append/skip/replace,
kill-and-resume, split by scene, the torch Dataset with workers, the seed's PNG layout, bad input, CLI.

Sampler and layout checks run on dask's threaded scheduler; appending, kill-and-resume, the split and the
CLI run on a real local ``distributed`` cluster of worker processes, which write the patches into the
store themselves (the killed build runs on threads in a child process, so that one SIGKILL stops it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from scene_files import ORIGIN, PIXEL, PRODUCT, chart_polygons, write_chart, write_scene
from shapely.geometry import box

from polarxr.classes import ICE, LAND, N_CLASSES, NO_LABEL, WATER
from polarxr.cube import CubeWriter, SplitConfig, build_cube, open_cube, open_cube_group
from polarxr.datasets import PatchDataset
from polarxr.errors import ChartError, CubeError
from polarxr.labels import labels_for_scene
from polarxr.samplers import SamplerConfig, SamplingWarning, simulate_tries
from polarxr.scenes import chart_name_for, parse_product_name
from polarxr.synthetic import make_dataset

PATCH = 16
ARRAYS = ("image", "label", "patch_label", "scene", "row", "col", "x", "y", "split")
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Three synthetic 256 x 256 scenes with their charts (sorted by time)."""
    folder = tmp_path_factory.mktemp("synthetic")
    scenes = make_dataset(folder, n_scenes=3, size=(256, 256), seed=1)
    return [(s.scene, s.chart) for s in scenes]


@pytest.fixture
def small_scene(tmp_path):
    """The 300 x 260 test scene (random DN, 20 px nodata strip) with its 4-polygon chart."""
    return write_scene(tmp_path / PRODUCT), write_chart(tmp_path / "seaice_s1_20180116t075430.shp")


def eligible_reference(scene_values: np.ndarray, labels: np.ndarray, config: SamplerConfig) -> dict:
    """Every top-left position whose whole-scene window passes the sampler's rules -> its centre class."""
    from numpy.lib.stride_tricks import sliding_window_view

    size = config.patch_size
    nodata = ~(scene_values != 0).any(axis=0)
    nodata_px = sliding_window_view(nodata, (size, size)).sum(axis=(-2, -1))
    labelled_px = sliding_window_view(labels != NO_LABEL, (size, size)).sum(axis=(-2, -1))
    centre = labels[size // 2:, size // 2:][: nodata_px.shape[0], : nodata_px.shape[1]]
    ok = ((centre != NO_LABEL) & (nodata_px <= config.max_nodata * size * size)
          & (labelled_px >= config.min_labelled * size * size))
    return {(int(r), int(c)): int(centre[r, c]) for r, c in zip(*np.nonzero(ok))}


def committed_arrays(path: Path) -> dict[str, np.ndarray]:
    root, n = open_cube_group(path)
    return {name: root[name][:n] for name in ARRAYS}


def assert_patches_match_scene(cube: Path, scene_path: Path, chart_path: Path, size: int) -> None:
    """Every patch equals the scene pixels and the rasterized labels at its recorded row/col."""
    scene, labels = labels_for_scene(scene_path, chart_path)
    pixels, classes = scene.values, labels.values
    ds = open_cube(cube)
    name = scene_path.stem
    mine = np.flatnonzero(ds.scene.values == name)
    assert len(mine) > 0
    images, label_patches = ds.image.values[mine], ds.label.values[mine]
    transform = scene.rio.transform()
    for k, index in enumerate(mine):
        r, c = int(ds.row[index]), int(ds.col[index])
        np.testing.assert_array_equal(images[k], pixels[:, r:r + size, c:c + size])
        np.testing.assert_array_equal(label_patches[k], classes[r:r + size, c:c + size])
        assert ds.patch_label.values[index] == classes[r + size // 2, c + size // 2]
        x, y = transform * (c + size / 2, r + size / 2)
        assert ds.x_centre.values[index] == pytest.approx(x) and ds.y_centre.values[index] == pytest.approx(y)


# ----------------------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("chunks", [37, 1000])
def test_grid_patches_equal_scene_and_are_every_eligible_lattice_position(small_scene, tmp_path, chunks):
    scene_path, chart_path = small_scene
    config = SamplerConfig(mode="grid", patch_size=PATCH, stride=12, max_nodata=0.5, min_labelled=0.5)
    cube = tmp_path / "grid.zarr"
    [result] = build_cube([small_scene], cube, config, chunks=chunks)
    assert result.status == "added" and result.patches > 50
    assert_patches_match_scene(cube, scene_path, chart_path, PATCH)

    scene, labels = labels_for_scene(scene_path, chart_path)
    reference = eligible_reference(scene.values, labels.values, config)
    expected = {pos: k for pos, k in reference.items() if pos[0] % 12 == 0 and pos[1] % 12 == 0}
    ds = open_cube(cube)
    got = {(int(r), int(c)): int(k) for r, c, k in zip(ds.row.values, ds.col.values, ds.patch_label.values)}
    assert got == expected
    # patches straddling the 20 px nodata strip are kept up to the threshold (8 of 16 columns)
    assert ds.col.values.min() == 12
    assert ds.attrs["sampler"] == "grid" and ds.attrs["sampler_params"]["stride"] == 12


def test_random_sampler_is_chunk_independent_and_draws_from_eligible_positions(small_scene, tmp_path):
    scene_path, chart_path = small_scene
    config = SamplerConfig(mode="random", patch_size=PATCH, samples_per_label=25, seed=7)
    positions = []
    for chunks in (37, 1000):
        cube = tmp_path / f"random{chunks}.zarr"
        build_cube([small_scene], cube, config, chunks=chunks)
        ds = open_cube(cube)
        positions.append(sorted(zip(ds.row.values.tolist(), ds.col.values.tolist(), ds.patch_label.values.tolist())))
    assert positions[0] == positions[1]
    assert_patches_match_scene(tmp_path / "random37.zarr", scene_path, chart_path, PATCH)

    scene, labels = labels_for_scene(scene_path, chart_path)
    reference = eligible_reference(scene.values, labels.values, config)
    assert all(reference.get((r, c)) == k for r, c, k in positions[0])
    counts = np.bincount([k for *_, k in positions[0]], minlength=N_CLASSES)
    available = np.bincount(list(reference.values()), minlength=N_CLASSES)
    np.testing.assert_array_equal(counts, np.minimum(available, 25))
    record = open_cube(tmp_path / "random37.zarr").attrs["scene_records"][0]
    assert record["sampling"]["eligible"] == {str(k): int(v) for k, v in enumerate(available)}
    # another seed draws other patches
    build_cube([small_scene], tmp_path / "seed8.zarr", SamplerConfig(patch_size=PATCH, samples_per_label=25, seed=8),
               chunks=1000)
    other = open_cube(tmp_path / "seed8.zarr")
    assert sorted(zip(other.row.values.tolist(), other.col.values.tolist(), other.patch_label.values.tolist())) != positions[0]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_random_sampler_stops_at_max_tries_and_reports_missing_classes(small_scene, tmp_path):
    scene_path, _ = small_scene
    no_ice = tmp_path / "no_ice.shp"
    frame = chart_polygons()
    write_chart(no_ice, frame[frame["poly_type"] != "I"])
    # ample tries: quotas met for land and sea; ice is absent from the chart
    with pytest.warns(SamplingWarning, match="0 of 10 ice patches .*labels no eligible position"):
        [result] = build_cube([(scene_path, no_ice)], tmp_path / "a.zarr",
                              SamplerConfig(patch_size=PATCH, samples_per_label=10, max_tries=100_000), chunks=64)
    assert result.patch_counts == {"0": 10, "1": 10, "2": 0} and result.shortfall == {"2": 10}
    record = open_cube(tmp_path / "a.zarr").attrs["scene_records"][0]["sampling"]
    assert record["tries"] == 100_000  # the seed's loop never meets the ice quota, so it runs to the timeout
    # few tries: the seed's timeout cuts the draw short
    with pytest.warns(SamplingWarning) as caught:
        [result] = build_cube([(scene_path, no_ice)], tmp_path / "b.zarr",
                              SamplerConfig(patch_size=PATCH, samples_per_label=10, max_tries=20), chunks=64)
    assert any("max_tries=20 reached after 20 draws" in str(w.message) for w in caught)
    assert 0 < result.patches <= 20
    assert open_cube(tmp_path / "b.zarr").attrs["scene_records"][0]["sampling"]["tries"] == 20


def test_simulated_tries_stop_when_every_quota_is_met():
    eligible = np.array([500, 300, 200])
    accepted, tries = simulate_tries(eligible, quota=5, n_positions=2000, max_tries=10_000, salt=3)
    np.testing.assert_array_equal(accepted, [5, 5, 5])
    assert 15 <= tries < 10_000
    accepted, tries = simulate_tries(eligible, quota=5, n_positions=2000, max_tries=12, salt=3)
    assert tries == 12 and accepted.sum() <= 12 and (accepted <= 5).all()
    rare, tries = simulate_tries(np.array([1, 0, 2000]), quota=3, n_positions=4000, max_tries=50_000, salt=1)
    assert tries == 50_000 and rare.tolist() == [1, 0, 3]


# ---------------------------------------------------------------------------------------- bad input
def _float_scene(tmp_path: Path) -> tuple[Path, Path]:
    name = PRODUCT.replace("20180116T075430_20180116T075530", "20180117T075430_20180117T075530")
    scene = write_scene(tmp_path / name.replace("_rgb_8bit", ""), dtype="float32")
    return scene, write_chart(tmp_path / chart_name_for(parse_product_name(name).start))


@pytest.mark.parametrize("case, match", [
    ("patch_larger_than_scene", "patch size 400 px is larger than the scene"),
    ("patch_larger_than_chunk", "patch size 16 px is larger than the scene's y chunks"),
    ("unknown_mode", "unknown sampler mode 'spiral'"),
    ("no_chart", "has no ice chart"),
    ("chart_not_overlapping", "does not overlap the scene"),
    ("bad_fraction", "max nodata must be a fraction"),
    ("chart_only_over_nodata", "no 16 px patch fits the sampler's rules"),
])
def test_bad_input_names_the_problem_and_writes_nothing(small_scene, tmp_path, case, match):
    scene_path, chart_path = small_scene
    config, chunks, pairs = SamplerConfig(patch_size=PATCH), 64, [(scene_path, chart_path)]
    if case == "patch_larger_than_scene":
        config = SamplerConfig(patch_size=400)
    elif case == "patch_larger_than_chunk":
        chunks = 8
    elif case == "unknown_mode":
        config = SamplerConfig(mode="spiral")
    elif case == "no_chart":
        pairs = [(scene_path, None)]
    elif case == "chart_not_overlapping":
        far = tmp_path / "far.shp"
        frame = chart_polygons()
        write_chart(far, frame.set_geometry(frame.translate(xoff=1e6)))
        pairs = [(scene_path, far)]
    elif case == "bad_fraction":
        config = SamplerConfig(patch_size=PATCH, max_nodata=1.5)
    elif case == "chart_only_over_nodata":  # an ice polygon within the 20 px nodata strip
        strip = tmp_path / "strip.shp"
        x0, y0 = ORIGIN
        write_chart(strip, chart_polygons().iloc[[2]].set_geometry([box(x0, y0 - 200 * PIXEL, x0 + 15 * PIXEL, y0)]))
        pairs = [(scene_path, strip)]
    cube = tmp_path / "bad.zarr"
    error = ChartError if case == "chart_not_overlapping" else CubeError
    with pytest.raises(error, match=match):
        build_cube(pairs, cube, config, chunks=chunks)
    assert not cube.exists()


def test_append_of_other_patch_size_or_bands_is_refused_and_changes_nothing(small_scene, tmp_path):
    cube = tmp_path / "cube.zarr"
    build_cube([small_scene], cube, SamplerConfig(patch_size=PATCH, samples_per_label=5), chunks=64)
    before = json.dumps(dict(zarr.open_group(cube).attrs), sort_keys=True)
    with pytest.raises(CubeError, match="holds patches of 16 px, not 32 px") as err:
        build_cube([small_scene], cube, SamplerConfig(patch_size=32))
    assert "cube.zarr" in str(err.value)
    float_scene = _float_scene(tmp_path)
    with pytest.raises(CubeError, match=r"cannot go into this cube: bands \['HH', 'HV'\], the cube's are "
                                        r"\['HH', 'HV', 'HH-HV'\]; data type float32") as err:
        build_cube([small_scene, float_scene], cube, SamplerConfig(patch_size=PATCH), chunks=64)
    assert float_scene[0].name in str(err.value)
    assert json.dumps(dict(zarr.open_group(cube).attrs), sort_keys=True) == before
    assert zarr.open_group(cube)["image"].shape[0] == open_cube(cube).sizes["patch"]
    other = tmp_path / "other.zarr"
    zarr.open_group(other, mode="w").attrs["title"] = "not a cube"
    with pytest.raises(CubeError, match="is not a polarxr training cube"):
        build_cube([small_scene], other, SamplerConfig(patch_size=PATCH))


def test_float_scenes_keep_their_dtype_and_nan_nodata(tmp_path):
    scene, chart = _float_scene(tmp_path)
    cube = tmp_path / "float.zarr"
    build_cube([(scene, chart)], cube, SamplerConfig(patch_size=PATCH, samples_per_label=5, max_nodata=0.5), chunks=64)
    ds = open_cube(cube)
    assert ds.image.dtype == np.float32 and ds.attrs["nodata"] is None and ds.attrs["band_names"] == ["HH", "HV"]
    assert_patches_match_scene(cube, scene, chart, PATCH)
    assert np.isfinite(ds.attrs["norm"]["mean"]).all()


def test_cube_chunking_and_compression(small_scene, tmp_path):
    cube = tmp_path / "c.zarr"
    build_cube([small_scene], cube, SamplerConfig(patch_size=PATCH, samples_per_label=100), chunks=64)
    root = zarr.open_group(cube)
    image = root["image"]
    from polarxr.cube import CHUNK_PATCHES

    assert image.shards == (256, 3, PATCH, PATCH) and image.chunks == (CHUNK_PATCHES, 3, PATCH, PATCH)
    assert image.metadata.dimension_names == ("patch", "band", "y", "x")
    assert "lz4" in str(image.compressors) and "bitshuffle" in str(image.compressors) and CHUNK_PATCHES == 8


def test_writer_truncates_uncommitted_patches(small_scene, tmp_path):
    cube = tmp_path / "c.zarr"
    build_cube([small_scene], cube, SamplerConfig(patch_size=PATCH, samples_per_label=5), chunks=64)
    writer = CubeWriter.open(cube)
    n = writer.committed
    writer.reserve(300)  # as an interrupted run leaves it
    assert zarr.open_group(cube)["label"].shape[0] == n + 300
    assert open_cube(cube).sizes["patch"] == n
    CubeWriter.open(cube)
    assert all(zarr.open_group(cube)[name].shape[0] == n for name in ARRAYS)


# ------------------------------------------------------------------------------------ seed's layout
def _seed_folder(folder: Path, n: int = 5, size: int = 12, layout: str = "random") -> tuple[np.ndarray, list]:
    """PNG patches as the seed writes them (cv2: the array's channels land reversed in the PNG) + meta.npy."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    patches = rng.integers(1, 256, size=(n, 3, size, size), dtype=np.uint8)  # (patch, band, y, x)
    rows = []
    for i in range(n):
        idx = 7520 + i
        Image.fromarray(np.moveaxis(patches[i], 0, -1)[..., ::-1].copy()).save(folder / f"{idx}.png")
        x, y, letter = 40 * i, 3 * i + 1, "LWI"[i % 3]
        rows.append([idx, (x, y), letter] if layout == "grid" else [idx, x, y, letter])
    if layout == "grid":
        meta = np.empty((n, 3), dtype=object)
        meta[:] = rows
    else:
        meta = np.array(rows)  # the seed's np.array of mixed rows: all strings
    np.save(folder / "meta.npy", meta, allow_pickle=layout == "grid")
    return patches, rows


def test_import_seed_patches(tmp_path):
    from polarxr.seedcompat import import_seed_patches

    folder = tmp_path / "polar-patch"
    patches, rows = _seed_folder(folder)
    cube = tmp_path / "seed.zarr"
    [result] = import_seed_patches(folder, cube)
    assert result.status == "added" and result.patches == 5 and result.patch_counts == {"0": 2, "1": 2, "2": 1}
    ds = open_cube(cube)
    np.testing.assert_array_equal(ds.image.values, patches)  # bands back in the scene's order
    assert (ds.label.values == NO_LABEL).all()
    np.testing.assert_array_equal(ds.patch_label.values, [LAND, WATER, ICE, LAND, WATER])
    np.testing.assert_array_equal(ds.row.values, [r[1] for r in rows])  # the seed's x indexes rows
    np.testing.assert_array_equal(ds.col.values, [r[2] for r in rows])
    assert set(ds.scene.values) == {"polar-patch"} and ds.attrs["band_names"] == ["red", "green", "blue"]
    assert np.isnan(ds.x_centre.values).all() and ds.attrs["crs"] is None
    assert import_seed_patches(folder, cube)[0].status == "skipped"
    assert open_cube(cube).sizes["patch"] == 5

    grid = tmp_path / "grid-set"
    _seed_folder(grid, layout="grid")
    with pytest.raises(CubeError, match="holds Python objects.*allow_pickle") as err:
        import_seed_patches(grid, cube)
    assert "meta.npy" in str(err.value)
    assert import_seed_patches(grid, cube, allow_pickle=True)[0].patches == 5
    assert open_cube(cube).attrs["scenes"] == ["polar-patch", "grid-set"]


def test_import_seed_patches_bad_input(tmp_path):
    from polarxr.seedcompat import import_seed_patches

    folder = tmp_path / "set"
    _seed_folder(folder)
    (folder / "7522.png").unlink()
    with pytest.raises(CubeError, match=r"1 patch PNG\(s\) listed in the meta are missing: \['7522.png'\]"):
        import_seed_patches(folder, tmp_path / "c.zarr")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "7522.png")
    with pytest.raises(CubeError, match="7522.png: is 20 px RGB, the first patch is 12 px RGB"):
        import_seed_patches(folder, tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()
    np.save(folder / "meta.npy", np.array([["7520", "0", "0", "X"]]))
    with pytest.raises(CubeError, match="row 0: unknown label 'X'"):
        import_seed_patches(folder, tmp_path / "c.zarr")


# ------------------------------------------------------------------------------------------ dataset
def test_dataset_normalises_and_works_with_two_loader_workers(synthetic, tmp_path):
    import torch
    from torch.utils.data import DataLoader

    cube = tmp_path / "ds.zarr"
    build_cube(synthetic, cube, SamplerConfig(patch_size=PATCH, samples_per_label=10, max_nodata=0.5), chunks=128)
    ds = open_cube(cube)
    train = np.flatnonzero(ds.split.values == "train")
    dataset = PatchDataset(cube, split="train")
    assert len(dataset) == len(train)
    norm = ds.attrs["norm"]
    raw = ds.image.values[train].astype(np.float32)
    expected = (raw - np.array(norm["mean"], np.float32)[:, None, None]) / np.array(norm["std"], np.float32)[:, None, None]
    expected[np.broadcast_to((raw == 0).all(axis=1, keepdims=True), raw.shape)] = 0.0
    assert (raw == 0).all(axis=1).any()  # some patches hold nodata pixels

    sequential = [torch.stack(t) for t in zip(*(dataset[i] for i in range(len(dataset))))]
    loader = DataLoader(dataset, batch_size=7, num_workers=2, shuffle=False)
    batches = list(loader)
    images = torch.cat([b[0] for b in batches])
    assert images.dtype == torch.float32 and images.shape == (len(train), 3, PATCH, PATCH)
    np.testing.assert_allclose(images.numpy(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(images, sequential[0])
    labels = torch.cat([b[1] for b in batches])
    assert labels.dtype == torch.int64
    np.testing.assert_array_equal(labels.numpy(), ds.label.values[train])
    np.testing.assert_array_equal(torch.cat([b[2] for b in batches]).numpy(), ds.patch_label.values[train])

    augmented = PatchDataset(cube, split="train", augment=True)
    torch.manual_seed(0)
    image, label, patch_label = augmented[0]
    symmetries = []
    for flip in (False, True):
        im, lab = sequential[0][0], sequential[1][0]
        if flip:
            im, lab = im.flip(-1), lab.flip(-1)
        symmetries += [(torch.rot90(im, k, (-2, -1)), torch.rot90(lab, k, (-2, -1))) for k in range(4)]
    assert any(torch.equal(image, i) and torch.equal(label, lab) for i, lab in symmetries)
    assert int(patch_label) == int(ds.patch_label.values[train[0]])
    with pytest.raises(CubeError, match="unknown split 'holdout'"):
        PatchDataset(cube, split="holdout")


# ------------------------------------------------------------------------------ shards and statistics
@pytest.mark.parametrize("dtype, fill", [("uint8", 0), ("float32", float("nan"))])
def test_shard_writer_writes_the_bytes_zarr_writes(tmp_path, dtype, fill):
    """The cube's own shard writer gives the same files as zarr's write (so any zarr reader reads them),
    an all-fill inner chunk left out and a short last shard padded with the fill value, as zarr does."""
    from zarr.codecs import BloscCodec

    from polarxr.shards import ShardWriter

    rng = np.random.default_rng(0)
    data = rng.gamma(2, 30, size=(600, 3, 16, 16)).clip(1, 255).astype(dtype)
    data[8:16] = fill
    kw = dict(shape=data.shape, dtype=dtype, fill_value=fill, chunks=(8, 3, 16, 16), shards=(256, 3, 16, 16),
              compressors=BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"))
    zarr.create_array(tmp_path / "zarr", **kw)[:] = data
    zarr.create_array(tmp_path / "ours", **kw)
    writer = ShardWriter(tmp_path / "ours")
    for shard in range(3):
        writer.write(shard, data[shard * 256:(shard + 1) * 256])
    for shard in range(3):
        assert (tmp_path / "ours" / "c" / str(shard) / "0/0/0").read_bytes() == \
            (tmp_path / "zarr" / "c" / str(shard) / "0/0/0").read_bytes()
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "ours")[:], data)
    assert not list((tmp_path / "ours" / "c").rglob(".*"))  # no temporaries left


def test_8bit_patch_statistics_equal_the_float_computation():
    from polarxr.patches import LABEL_CODES, patch_stats
    from polarxr.scenes import valid_pixels

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(300, 3, 16, 16), dtype=np.uint8)
    image[:, :, :5] = 0
    label = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(300, 16, 16))
    values, valid = image.astype(np.float64), valid_pixels(image, 0, band_axis=1)
    expected = {"count": [], "mean": [], "m2": [],
                "pixels": {str(c): int((label == c).sum()) for c in LABEL_CODES}}
    for band in range(3):
        v = values[:, band][valid]
        expected["count"].append(v.size)
        expected["mean"].append(float(v.mean()))
        expected["m2"].append(float(((v - v.mean()) ** 2).sum()))
    assert patch_stats(image, label, 0) == expected  # bit for bit


# ------------------------------------------- on a real distributed cluster (kept last: it stays the default)
@pytest.fixture(scope="module")
def client():
    """A real local cluster: two single-threaded worker processes."""
    from polarxr.cluster import get_client

    with get_client(n_workers=2, threads_per_worker=1, memory_limit="1GiB") as client:
        yield client


# ------------------------------------------------------------------------------------------- append
def test_append_skips_existing_scenes_and_overwrite_replaces_them(client, synthetic, tmp_path):
    cube = tmp_path / "cube.zarr"
    config = SamplerConfig(patch_size=PATCH, samples_per_label=8)
    first = build_cube(synthetic[:2], cube, config, chunks=128)
    before = committed_arrays(cube)
    results = build_cube(synthetic, cube, config, chunks=128)
    assert [r.status for r in results] == ["skipped", "skipped", "added"]
    after = committed_arrays(cube)
    n_before = sum(r.patches for r in first)
    for name in ARRAYS:  # the existing patches are untouched
        np.testing.assert_array_equal(after[name][:n_before], before[name])
    attrs = open_cube(cube).attrs
    names = [p.stem for p, _ in synthetic]
    assert attrs["scenes"] == names and attrs["n_patches"] == len(after["image"])
    for scene_path, chart_path in synthetic:
        assert_patches_match_scene(cube, scene_path, chart_path, PATCH)

    results = build_cube(synthetic[:1], cube, config, chunks=128, overwrite=True)
    assert results[0].status == "replaced"
    attrs = open_cube(cube).attrs
    assert sorted(attrs["scenes"]) == sorted(names) and len(set(attrs["scenes"])) == 3  # never duplicated
    assert attrs["scenes"][-1] == names[0] and attrs["n_patches"] == len(after["image"])
    assert_patches_match_scene(cube, *synthetic[0], PATCH)
    assert_patches_match_scene(cube, *synthetic[1], PATCH)
    assert [p.name for p in tmp_path.glob(".cube.zarr*")] == [".cube.zarr.lock"]  # no temporaries, the writer lock


KILLER = textwrap.dedent("""
    import os, signal, sys
    import dask
    from dask.callbacks import Callback
    from polarxr.cube import build_cube
    from polarxr.samplers import SamplerConfig

    pairs = [tuple(p.split(",")) for p in sys.argv[2:]]
    committed = []

    class KillMidWrite(Callback):
        # all scenes are one graph: SIGKILL this process once the first scene is committed and a shard of
        # a later scene was written, or at the latest when the second commit is about to run
        def _posttask(self, key, result, dsk, state, worker_id):
            name = str(key[0] if isinstance(key, tuple) else key)
            if name.startswith("cube-commit-0-"):
                committed.append(name)
            elif committed and name.startswith(("cube-write-", "cube-seam-")):
                os.kill(os.getpid(), signal.SIGKILL)

        def _pretask(self, key, dsk, state):
            if str(key).startswith("cube-commit-1-"):
                os.kill(os.getpid(), signal.SIGKILL)

    with dask.config.set(scheduler="threads", num_workers=1), KillMidWrite():
        build_cube(pairs, sys.argv[1], SamplerConfig(patch_size=16, samples_per_label=100), chunks=128)
""")


def test_killed_build_keeps_complete_scenes_and_resumes_to_the_same_cube(client, synthetic, tmp_path):
    cube, reference = tmp_path / "killed.zarr", tmp_path / "reference.zarr"
    args = [f"{s},{c}" for s, c in synthetic]
    proc = subprocess.run([sys.executable, "-c", KILLER, str(cube), *args], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    root, n = open_cube_group(cube)
    first = synthetic[0][0].stem
    assert root.attrs["scenes"] == [first] and n == root.attrs["scene_records"][0]["count"]
    assert root["image"].shape[0] > n  # patches of the second scene were written but not committed
    ds = open_cube(cube)
    assert ds.sizes["patch"] == n and set(ds.scene.values) == {first}

    config = SamplerConfig(patch_size=16, samples_per_label=100)
    resumed = build_cube(synthetic, cube, config, chunks=128)
    assert [r.status for r in resumed] == ["skipped", "added", "added"]
    build_cube(synthetic, reference, config, chunks=128)
    got, want = committed_arrays(cube), committed_arrays(reference)
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert json.dumps(dict(zarr.open_group(cube).attrs), sort_keys=True) == \
        json.dumps(dict(zarr.open_group(reference).attrs), sort_keys=True)
    assert all(zarr.open_group(cube)[name].shape[0] == len(want["image"]) for name in ARRAYS)


# -------------------------------------------------------------------------------------------- split
def test_split_is_by_scene_and_norm_is_over_train_patches(client, synthetic, tmp_path):
    cube = tmp_path / "split.zarr"
    config = SamplerConfig(patch_size=PATCH, samples_per_label=6)
    explicit = parse_product_name(synthetic[0][0]).start.strftime("%Y%m%d")
    build_cube(synthetic, cube, config, SplitConfig(fractions=(0.5, 0.5, 0.0), assign=((explicit, "test"),)),
               chunks=128)
    ds = open_cube(cube)
    splits = ds.attrs["splits"]
    assert splits[synthetic[0][0].stem] == "test"
    assert sorted(splits.values()) == ["test", "train", "val"]
    per_scene = {}
    for scene, split in zip(ds.scene.values, ds.split.values):
        per_scene.setdefault(scene, set()).add(split)
    assert all(len(s) == 1 for s in per_scene.values())  # a scene is never on two sides
    assert {name: s.pop() for name, s in per_scene.items()} == splits
    sides = [set(ds.scene.values[ds.split.values == s]) for s in ("train", "val", "test")]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])

    train = ds.split.values == "train"
    images = ds.image.values[train].astype(np.float64)
    valid = (images != 0).any(axis=1)
    mean = [images[:, b][valid].mean() for b in range(images.shape[1])]
    std = [images[:, b][valid].std() for b in range(images.shape[1])]
    np.testing.assert_allclose(ds.attrs["norm"]["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(ds.attrs["norm"]["std"], std, rtol=1e-9)
    labels = ds.label.values[train]
    assert ds.attrs["class_counts"] == {str(k): int((labels == k).sum()) for k in range(N_CLASSES)}
    # fractions alone, appended one scene at a time: earlier scenes keep their split
    cube2 = tmp_path / "fractions.zarr"
    for k in range(3):
        build_cube(synthetic[: k + 1], cube2, config, SplitConfig(fractions=(0.34, 0.33, 0.33)), chunks=128)
    assert list(open_cube(cube2).attrs["splits"].values()) == ["train", "val", "test"]


def test_scene_already_in_cube_keeps_its_split_unless_overwritten(client, synthetic, tmp_path):
    cube = tmp_path / "cube.zarr"
    config = SamplerConfig(patch_size=PATCH, samples_per_label=4)
    build_cube(synthetic[:1], cube, config, chunks=128)
    with pytest.raises(CubeError, match="already in the cube as 'train', not 'val'"):
        build_cube(synthetic[:1], cube, config, SplitConfig(assign=((synthetic[0][0].stem, "val"),)), chunks=128)
    build_cube(synthetic[:1], cube, config, SplitConfig(assign=((synthetic[0][0].stem, "val"),)), chunks=128,
               overwrite=True)
    assert set(open_cube(cube).split.values) == {"val"}


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_sample_prints_summary_and_bad_input_is_one_line(client, synthetic, tmp_path):
    polarxr = Path(sys.executable).parent / "polarxr"
    folder = synthetic[0][0].parent
    cube = tmp_path / "cli.zarr"
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run([str(polarxr), "sample", str(folder), str(folder), "--cube", str(cube), "--patch-size",
                           "16", "--samples-per-label", "5", "--chunk", "128", "--scheduler", client.scheduler.address],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for scene_path, _ in synthetic:
        start = parse_product_name(scene_path).start
        assert f"{start:%Y-%m-%d %H:%M:%S}" in proc.stdout
    assert "cube holds 45 patches of 16 px from 3 scenes" in proc.stdout
    assert open_cube(cube).attrs["n_patches"] == 45

    empty = tmp_path / "charts"
    empty.mkdir()
    proc = subprocess.run([str(polarxr), "sample", str(folder), str(empty), "--cube", str(tmp_path / "x.zarr")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "has no ice chart" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.zarr").exists()
