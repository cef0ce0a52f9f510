"""Scenes: product names, lazy chunked opening, nodata, the catalog, bad input."""

from __future__ import annotations

from datetime import datetime

import dask
import numpy as np
import pytest
import rasterio
from scene_files import PRODUCT, write_chart, write_scene

from polarxr.errors import SceneError
from polarxr.scenes import (chart_name_for, ensure_not_empty, open_scene, parse_product_name,
                            scene_catalog, valid_mask)


def test_parse_real_product_names():
    p = parse_product_name(PRODUCT)
    assert (p.mission, p.mode, p.product_type, p.polarisation) == ("S1A", "EW", "GRDM", "HH+HV")
    assert p.start == datetime(2018, 1, 16, 7, 54, 30) and p.stop == datetime(2018, 1, 16, 7, 55, 30)
    assert (p.absolute_orbit, p.datatake, p.product_id) == (20177, "0226B9", "9FE3")
    assert p.processing == ("Orb", "Cal", "Spk", "TC", "rgb", "8bit")
    b = parse_product_name("/data/S1B_EW_GRDM_1SDH_20181203T081222_20181203T081322_013889_019C3D_0F4C.zip")
    assert b.mission == "S1B" and b.absolute_orbit == 13889 and b.processing == ()
    assert chart_name_for(p.start) == "seaice_s1_20180116t075430.shp"
    with pytest.raises(ValueError, match="not a Sentinel-1 product name"):
        parse_product_name("holiday_photo.tif")


def test_open_is_lazy_and_chunked(tmp_path):
    path = write_scene(tmp_path / PRODUCT, shape=(300, 260), tile=64)
    scene = open_scene(path)
    assert scene.dims == ("band", "y", "x") and scene.shape == (3, 300, 260)
    assert list(scene.band.values) == ["HH", "HV", "HH-HV"]
    assert scene.rio.crs is not None and scene.rio.resolution() == (40.0, -40.0)
    assert scene.attrs["mission"] == "S1A" and scene.attrs["units"] == "dn"
    # default chunks are whole multiples of the 64 px tiles
    assert all(c % 64 == 0 for c in scene.chunks[1][:-1]) and all(c % 64 == 0 for c in scene.chunks[2][:-1])
    small = open_scene(path, chunks=100)
    assert small.chunks[1] == (100, 100, 100) and small.chunks[2] == (100, 100, 60)
    block = small.isel(y=slice(0, 100), x=slice(0, 100))
    with rasterio.open(path) as src:
        expected = src.read(window=((0, 100), (0, 100)))
    np.testing.assert_array_equal(block.values, expected)


def test_open_reads_only_needed_blocks(tmp_path):
    """Computing one block runs only the tasks of that block (counted by a dask callback)."""
    path = write_scene(tmp_path / PRODUCT, shape=(300, 260), tile=64)
    scene = open_scene(path, chunks=64)
    calls = []

    class Count(dask.callbacks.Callback):
        def _posttask(self, key, result, dsk, state, id):
            calls.append(key)

    with Count():
        scene[:, :64, :64].compute(scheduler="sync")
    assert 0 < len(calls) <= 3, calls
    assert scene.data.npartitions == 5 * 5


def test_valid_mask_and_float_product(tmp_path):
    path = write_scene(tmp_path / "S1A_EW_GRDM_1SDH_20180116T075430_20180116T075530_020177_0226B9_9FE3_Orb_Cal_Spk_TC.tif",
                       dtype="float32", nodata_margin=10)
    scene = open_scene(path, chunks=128)
    assert scene.dtype == np.float32 and list(scene.band.values) == ["HH", "HV"]
    mask = valid_mask(scene)
    assert mask.dims == ("y", "x") and mask.chunks == scene.chunks[1:]
    values = mask.values
    assert not values[:, :10].any() and values[:, 10:].all()


def test_real_8bit_margin_0_1_1_is_nodata_everywhere(tmp_path):
    """The ExtremeEarth 8-bit renderings write (0, 1, 1) in their margins, not 0 in every band."""
    from polarxr.patches import labels_where_valid, normalise
    from polarxr.scenes import valid_pixels

    path = write_scene(tmp_path / PRODUCT, shape=(96, 80), nodata_margin=0)
    with rasterio.open(path, "r+") as dst:
        data = dst.read()
        data[:, :, :12] = np.array([0, 1, 1], np.uint8)[:, None, None]  # real-looking margin
        data[:, 40, 40] = 1  # a valid pixel at the bottom of the DN range
        dst.write(data)
    scene = open_scene(path, chunks=32)
    mask = valid_mask(scene).values
    assert not mask[:, :12].any() and mask[:, 12:].all()
    block = scene.values
    np.testing.assert_array_equal(valid_pixels(block, 0), mask)
    labels = labels_where_valid(block, np.full(mask.shape, 2, np.uint8), 0, 255)  # what sample trains on
    assert (labels[:, :12] == 255).all() and (labels[:, 12:] == 2).all()
    image, valid = normalise(block, [100.0] * 3, [50.0] * 3, 0)  # what predict and training feed the model
    assert not valid[:, :12].any() and (image[:, :, :12] == 0).all()
    # float products keep a pixel whose other band is finite (nodata only where every band is missing)
    half = np.array([[[np.nan, np.nan]], [[np.nan, 0.2]]], np.float32)
    np.testing.assert_array_equal(valid_pixels(half, np.nan), [[False, True]])


def test_catalog_pairs_scenes_with_charts(tmp_path):
    scenes, charts = tmp_path / "scenes", tmp_path / "charts"
    scenes.mkdir(), charts.mkdir()
    write_scene(scenes / PRODUCT)
    write_scene(scenes / PRODUCT.replace("20180116T075430_20180116T075530", "20180304T081000_20180304T081100"))
    write_chart(charts / "seaice_s1_20180116t075430.shp")
    catalog = scene_catalog(scenes, charts)
    assert len(catalog) == 2
    assert list(catalog["start"]) == sorted(catalog["start"])
    assert catalog.loc[0, "chart"].name == "seaice_s1_20180116t075430.shp"
    assert catalog.loc[1, "chart"] is None


@pytest.mark.parametrize("problem", ["corrupt", "missing", "no_crs", "empty"])
def test_bad_scenes_name_file_and_problem(tmp_path, problem):
    path = tmp_path / PRODUCT
    if problem == "corrupt":
        path.write_bytes(b"II*\x00" + b"\x00garbage" * 100)
        match = "not a readable GeoTIFF"
    elif problem == "missing":
        match = "does not exist"
    elif problem == "no_crs":
        write_scene(path, crs=None)
        match = "has no CRS"
    else:
        write_scene(path, fill=0)
        match = "is empty"
    with pytest.raises(SceneError, match=match) as err:
        ensure_not_empty(open_scene(path))
    assert str(path) in str(err.value)
