"""Cleaning of class maps before observations (minimum mapping unit): by hand, and chunked == whole array.

The reference is a whole-array implementation here (scipy labels per class, border lengths counted with
numpy shifts), never the code under test.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from polarxr.observations.boundaries import extract_boundaries
from polarxr.observations.cleaning import clean_array
from polarxr.synthetic import make_scene

L, W, I, N = 0, 1, 2, 255


def _reference(classes: np.ndarray, min_pixels: int) -> np.ndarray:
    out = classes.copy()
    padded = np.pad(classes, 1, constant_values=N)
    for code in (L, W, I):
        labels, count = ndimage.label(classes == code)
        for k in range(1, count + 1):
            component = labels == k
            if component.sum() >= min_pixels:
                continue
            border = np.zeros(3, int)
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                other = padded[1 + dy:1 + dy + classes.shape[0], 1 + dx:1 + dx + classes.shape[1]][component]
                border += [int((other == c).sum()) if c != code else 0 for c in (L, W, I)]
            if border.sum():
                out[component] = int(np.argmax(border))
    return out


def test_small_objects_and_holes_take_the_class_around_them():
    m = np.full((12, 14), I, np.uint8)
    m[:, 9:] = L
    m[2, 2] = L                      # a speck of land in the ice -> ice
    m[5:7, 3] = W                    # a 2 px sliver of sea in the ice -> ice
    m[4, 11] = W                     # a pinhole of sea in the land -> land
    m[8:10, 2:4] = W                 # a 4 px pool of sea stays at min 4
    m[0, 0] = N                      # nodata is never changed
    m[11, 13] = W                    # in the corner of the land, beside nodata below? (map edge: no border)
    out = clean_array(da.from_array(m, chunks=5), 4).compute()
    assert out[2, 2] == I and (out[5:7, 3] == I).all() and out[4, 11] == L and out[11, 13] == L
    assert (out[8:10, 2:4] == W).all() and out[0, 0] == N
    assert (out == _reference(m, 4)).all()
    # an object cut by a chunk border is judged whole: 6 px across the border at column 5 stay at min 5
    m2 = np.full((10, 10), W, np.uint8)
    m2[3:5, 3:6] = I
    for chunks in (5, (3, 7), 10):
        assert (clean_array(da.from_array(m2, chunks=chunks), 5).compute() == m2).all()
        assert (clean_array(da.from_array(m2, chunks=chunks), 7).compute() == W).all()
    same = da.from_array(m, chunks=5)
    assert clean_array(same, 1) is same


@pytest.fixture(scope="module")
def noisy_map(tmp_path_factory):
    """A synthetic truth with salt-and-pepper fragments of all sizes (1-9 px) and nodata margins."""
    scene = make_scene(tmp_path_factory.mktemp("clean"), seed=4, size=(160, 176), ice_extent=0.5)
    truth = scene.truth.copy()
    rng = np.random.default_rng(0)
    valid = truth != N
    for _ in range(300):
        r, c = rng.integers(0, truth.shape[0] - 3), rng.integers(0, truth.shape[1] - 3)
        h, w = rng.integers(1, 4, 2)
        patch = truth[r:r + h, c:c + w]
        patch[valid[r:r + h, c:c + w]] = rng.integers(0, 3)
    return truth, scene


@pytest.mark.parametrize("chunks", [(160, 176), 64, 37, (50, 29)])
def test_chunked_cleaning_equals_the_whole_array_reference(noisy_map, chunks):
    truth, _ = noisy_map
    expected = _reference(truth, 6)
    assert (expected != truth).sum() > 100, "the noise should give many fragments to clean"
    got = clean_array(da.from_array(truth, chunks=chunks), 6).compute()
    assert got.dtype == np.uint8 and (got == expected).all()


def test_cleaned_lines_are_the_same_for_any_chunking(noisy_map, tmp_path):
    from test_observations import _write_map

    truth, scene = noisy_map
    path = tmp_path / "noisy_class.tif"
    _write_map(path, truth, scene.transform, tile=32)
    raw = extract_boundaries(path, min_pixels=1)
    whole = extract_boundaries(path, chunk=1024)
    assert len(whole.coastline) + len(whole.ice_edge) < len(raw.coastline) + len(raw.ice_edge) - 50
    for chunk in (32, 48):
        lines = extract_boundaries(path, chunk=chunk)
        for name in ("coastline", "ice_edge"):
            a, b = getattr(lines, name), getattr(whole, name)
            assert len(a) == len(b)
            assert a["length_m"].sum() == pytest.approx(b["length_m"].sum(), rel=1e-12)
