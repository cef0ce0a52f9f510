"""Quicklook PNGs of scenes with charts and of class maps: size, content, decimated reads, atomic writes."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import xarray as xr
from PIL import Image

from polarxr.classes import CLASS_COLOURS, ICE, LAND, WATER
from polarxr.errors import SceneError
from polarxr.quicklook import class_quicklook, scene_quicklook
from polarxr.scenes import open_scene
from polarxr.synthetic import make_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("ql"), seed=5, size=(700, 500), ice_extent=0.5)


@pytest.fixture(scope="module")
def class_tif(scene, tmp_path_factory):
    """The scene's truth as a class GeoTIFF (uint8, 255 nodata) on the scene's grid."""
    path = tmp_path_factory.mktemp("classes") / "classes.tif"
    profile = dict(driver="GTiff", height=700, width=500, count=1, dtype="uint8", nodata=255, crs=scene.crs,
                   transform=scene.transform, tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scene.truth[None])
    return path


def _png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _has_colour(rgb: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool((rgb == np.array(colour, np.uint8)).all(axis=-1).any())


def test_scene_quicklook_with_chart_outlines(scene, tmp_path):
    plain = _png(scene_quicklook(scene.scene, tmp_path / "plain.png", max_side=400))
    out = scene_quicklook(scene.scene, tmp_path / "chart.png", chart=scene.chart, max_side=400)
    charted = _png(out)
    assert max(charted.shape[:2]) == 400 and charted.shape[0] > charted.shape[1]  # a tall scene stays tall
    assert max(plain.shape[:2]) == 400 and charted.std() > 20
    # outlines (and legend) in the class colours are drawn over the scene
    for code in (LAND, WATER):
        assert _has_colour(charted, CLASS_COLOURS[code]) and not _has_colour(plain, CLASS_COLOURS[code]), code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.png", "plain.png"]  # no temporary files left


def test_scene_quicklook_accepts_dataarray_and_geodataframe(scene, tmp_path):
    frame = gpd.read_file(scene.chart)
    out = scene_quicklook(open_scene(scene.scene), tmp_path / "da.png", chart=frame, max_side=256)
    assert max(_png(out).shape[:2]) == 256
    flt = make_scene(tmp_path / "float", seed=5, size=(200, 300), ice_extent=0.5, product="float")
    wide = _png(scene_quicklook(flt.scene, tmp_path / "float.png", chart=flt.chart, max_side=300))
    assert wide.shape[1] == 300 and wide.shape[0] < 300 and wide.std() > 20


def test_quicklooks_read_a_decimated_view(scene, tmp_path, monkeypatch):
    shapes = []
    original = rasterio.io.DatasetReader.read

    def recording_read(self, *args, **kwargs):
        shapes.append(kwargs.get("out_shape"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", recording_read)
    scene_quicklook(scene.scene, tmp_path / "small.png", max_side=128)
    assert shapes and all(s is not None and max(s[-2:]) <= 128 for s in shapes)


def test_class_quicklook_colours_and_side_by_side(scene, class_tif, tmp_path):
    single = _png(class_quicklook(class_tif, tmp_path / "classes.png", max_side=300))
    assert max(single.shape[:2]) == 300
    for code in (LAND, WATER, ICE):
        assert _has_colour(single, CLASS_COLOURS[code]), code
    double = _png(class_quicklook(class_tif, tmp_path / "both.png", scene=scene.scene, max_side=300))
    assert double.shape[1] == 300 and double.shape[0] < single.shape[0]  # two panels side by side
    in_memory = xr.DataArray(scene.truth, dims=("y", "x"))
    from_array = _png(class_quicklook(in_memory, tmp_path / "array.png", max_side=300))
    assert from_array.shape == single.shape and _has_colour(from_array, CLASS_COLOURS[LAND])


def test_missing_scene_is_a_clear_error(tmp_path):
    with pytest.raises(SceneError, match="does not exist"):
        scene_quicklook(tmp_path / "nope.tif", tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()
