"""Ingest of Sentinel-1 GRD products as delivered: real SAFE layout on disk (synthetic products with known
geometry and radiometry, and the real metadata in ../shared where present), real zips read in place, real
COGs, a real LocalCluster for the CLI and `process`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio.control import GroundControlPoint
from rasterio.warp import Resampling, reproject
from scipy.interpolate import RegularGridInterpolator

from polarxr.errors import ProductError
from polarxr.ingest import geocode, ingest_product, ingest_products, open_product, target_grid
from polarxr.ingest.geocode import DOCUMENTED_ERROR_PX, GeolocationInverse, lattice_nodes, _at
from polarxr.ingest.radiometry import NOISE_FLOOR, parse_noise, sigma0
from polarxr.ingest.synthetic import pattern_db, write_grd_product

ROOT = Path(__file__).resolve().parents[1]
SAFE_DATA = ROOT.parent / "shared" / "data" / "s1-safe"
SIZE = (1200, 640)  # 3 tie-point lines (0, 600, 1199) x 21 tie-point pixels


@pytest.fixture(scope="module")
def grd(tmp_path_factory):
    """A noise-free synthetic EW GRDM product over East Greenland, as .SAFE and as .zip."""
    return write_grd_product(tmp_path_factory.mktemp("grd"), size=SIZE, speckle=False, zip=True)


@pytest.fixture(scope="module")
def geocoded(grd):
    product = open_product(grd.path)
    grid = target_grid(product)
    return product, grid, geocode(product, grid, chunk=512).compute().values


def _real(name: str) -> Path:
    matches = sorted(SAFE_DATA.glob(name)) if SAFE_DATA.is_dir() else []
    if not matches:
        pytest.skip(f"real Sentinel-1 metadata {name} is absent ({SAFE_DATA}); see ../shared/data/README.md")
    return matches[0]


# ------------------------------------------------------------------------------------------ opening
def test_open_reads_the_safe_layout_lazily(grd):
    import xarray_sentinel

    product = open_product(grd.path)
    assert product.name == grd.name and product.bands == ["HH", "HV"] and product.shape == SIZE
    assert product.grid.line.shape == (3, 21) and product.ipf_version == "003.31"
    dn = product.measurement("HV", chunks=256)
    assert dn.dtype == np.uint16 and dn.chunks is not None and dn.shape == SIZE
    assert int(dn[600, 0]) == 0 and int(dn[600, 320]) > 0  # no-data border, data inside
    # the layout is the real one: xarray-sentinel itself finds every group of the product
    tree = xarray_sentinel.open_sentinel1_dataset(str(grd.path))
    assert {"EW/HH/calibration", "EW/HV/noise_range", "EW/HH/gcp"} <= set(tree.attrs["subgroups"])
    zipped = open_product(grd.zip_path)
    assert zipped.name == grd.name and zipped.polarisations["HH"].measurement.startswith("/vsizip/")
    assert not any(p.suffix == ".tiff" for p in grd.zip_path.parent.glob("*.tiff"))  # nothing unpacked


# ------------------------------------------------------------------------------------------ radiometry
def _hand_sigma0(safe: Path, pol: str, line: int, pixel: int, dn: int) -> float:
    """sigma0 from the LUT XML by the textbook formulas, independently of polarxr's code."""
    cal = ElementTree.parse(next((safe / "annotation/calibration").glob(f"calibration-*-{pol.lower()}-*.xml")))
    vectors = cal.findall(".//calibrationVector")
    lines = np.array([int(v.findtext("line")) for v in vectors], float)
    pixels = np.array(vectors[0].findtext("pixel").split(), float)
    a = np.array([v.findtext("sigmaNought").split() for v in vectors], float)
    a_value = RegularGridInterpolator((lines, pixels), a)([[line, pixel]])[0]
    noise = ElementTree.parse(next((safe / "annotation/calibration").glob(f"noise-*-{pol.lower()}-*.xml")))
    rv = noise.findall(".//noiseRangeVector")
    rl = np.array([int(v.findtext("line")) for v in rv], float)
    k = int(np.searchsorted(rl, line, side="right") - 1)
    k = min(k, len(rl) - 2)
    at = [np.interp(pixel, np.array(rv[i].findtext("pixel").split(), float),
                    np.array(rv[i].findtext("noiseRangeLut").split(), float)) for i in (k, k + 1)]
    t = (line - rl[k]) / (rl[k + 1] - rl[k])
    range_noise = at[0] * (1 - t) + at[1] * t
    azimuth = 1.0
    for block in noise.findall(".//noiseAzimuthVector"):
        if (int(block.findtext("firstAzimuthLine")) <= line <= int(block.findtext("lastAzimuthLine"))
                and int(block.findtext("firstRangeSample")) <= pixel <= int(block.findtext("lastRangeSample"))):
            azimuth = np.interp(line, np.array(block.findtext("line").split(), float),
                                np.array(block.findtext("noiseAzimuthLut").split(), float))
    return max((dn ** 2 - range_noise * azimuth) / a_value ** 2, NOISE_FLOOR)


def test_calibration_and_noise_removal_equal_a_hand_computation(grd):
    product = open_product(grd.path)
    rng = np.random.default_rng(3)
    samples = list(zip(rng.integers(0, SIZE[0], 25), rng.integers(20, SIZE[1] - 20, 25)))
    for pol in ("HH", "HV"):
        p = product.polarisations[pol]
        with rasterio.open(p.measurement) as src:
            dn = src.read(1)
        full = sigma0(dn, np.arange(SIZE[0], dtype=float), np.arange(SIZE[1], dtype=float), p.calibration, p.noise)
        for line, pixel in samples:
            assert full[line, pixel] == pytest.approx(_hand_sigma0(grd.path, pol, line, pixel, int(dn[line, pixel])),
                                                      rel=1e-5)
            # a block containing the pixel gives the same value (per-pixel, block-independent)
            r0, c0 = max(0, line - 7), max(0, pixel - 11)
            block = sigma0(dn[r0:line + 5, c0:pixel + 3], np.arange(r0, line + 5, dtype=float),
                           np.arange(c0, pixel + 3, dtype=float), p.calibration, p.noise)
            assert block[line - r0, pixel - c0] == full[line, pixel]
    # denoised sigma0 recovers the known pattern; without denoising HV is biased high (the noise floor)
    hv = product.polarisations["HV"]
    with rasterio.open(hv.measurement) as src:
        dn = src.read(1, window=((100, 140), (0, SIZE[1])))
    lines, pixels = np.arange(100, 140, dtype=float), np.arange(SIZE[1], dtype=float)
    truth = 10 ** (pattern_db(lines, pixels, SIZE)[1] / 10)
    inside = (slice(None), slice(20, SIZE[1] - 20))
    denoised = sigma0(dn, lines, pixels, hv.calibration, hv.noise)[inside]
    raw = sigma0(dn, lines, pixels, hv.calibration, None)[inside]
    assert np.median(np.abs(10 * np.log10(denoised / truth[inside]))) < 0.2
    assert np.median(10 * np.log10(raw / truth[inside])) > 1.0


def test_noise_luts_of_the_real_iw_slc_are_read():
    safe = _real("S1B_IW_SLC__1SDV_*_EFA4.SAFE")
    path = next((safe / "annotation/calibration").glob("noise-s1b-iw1-slc-vv-*.xml"))
    luts = parse_noise(path.read_bytes(), safe, path.name)
    assert len(luts.range_lines) == 10 and len(luts.azimuth_blocks) == 1
    block = luts.azimuth_blocks[0]
    assert (block.swath, block.first_line, block.last_line, block.last_sample) == ("IW1", 0, 13508, 21631)
    root = ElementTree.parse(path).getroot()
    first = root.find(".//noiseRangeVector")
    pixels = np.array(first.findtext("pixel").split(), float)
    values = np.array(first.findtext("noiseRangeLut").split(), float)
    line = float(first.findtext("line"))
    np.testing.assert_allclose(luts.range_at(np.array([line]), pixels[:50])[0], values[:50], rtol=1e-6)


# ------------------------------------------------------------------------------------------ geocoding
def test_inverse_of_the_geolocation_grid_is_accurate(grd, geocoded):
    product, grid, _ = geocoded
    inverse = GeolocationInverse(product.grid, grid.crs)
    nodes = lattice_nodes(inverse, grid)
    rng = np.random.default_rng(7)
    line, pixel = rng.uniform(0, SIZE[0] - 1, 2000), rng.uniform(0, SIZE[1] - 1, 2000)
    x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(*grd.lonlat(line, pixel))
    rows, cols = (grid.y0 - np.asarray(y)) / grid.resolution - 0.5, (np.asarray(x) - grid.x0) / grid.resolution - 0.5
    got = np.array([[v[0, 0] for v in _at(nodes, np.array([r]), np.array([c]))] for r, c in zip(rows, cols)])
    error = np.hypot(got[:, 0] - line, got[:, 1] - pixel)
    print(f"inverse error vs exact geometry: median {np.median(error):.4f} px, max {error.max():.4f} px")
    assert error.max() < DOCUMENTED_ERROR_PX, error.max()
    tie_x, tie_y = inverse.points[:, 0], inverse.points[:, 1]
    tie = inverse(tie_x, tie_y)
    assert np.abs(np.column_stack(tie) - inverse.values).max() < 1e-6


def test_inverse_on_the_real_iw_grd_geolocation_grid():
    """Real tie points over the Alps (heights 25-2818 m): exact at the tie points; mid-cell positions within
    a documented distance of bilinear interpolation of lat/lon in (line, pixel)."""
    from polarxr.ingest.safe import _Files, _geolocation

    safe = _real("S1B_IW_GRDH_1SDV_*_ECC8.SAFE")
    annotation = next((safe / "annotation").glob("s1b-iw-grd-vv-*.xml"))
    grid = _geolocation(_Files(safe), annotation.read_bytes(), annotation.name)
    crs = "EPSG:32632"
    inverse = GeolocationInverse(grid, crs)
    tie = np.column_stack(inverse(inverse.points[:, 0], inverse.points[:, 1]))
    assert np.abs(tie - inverse.values).max() < 1e-6
    mid_lon = (grid.longitude[:-1, :-1] + grid.longitude[1:, 1:] + grid.longitude[1:, :-1] + grid.longitude[:-1, 1:]) / 4
    mid_lat = (grid.latitude[:-1, :-1] + grid.latitude[1:, 1:] + grid.latitude[1:, :-1] + grid.latitude[:-1, 1:]) / 4
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(mid_lon, mid_lat)
    line, pixel = inverse(np.asarray(x), np.asarray(y))
    mid_line = (grid.line[:-1, :-1] + grid.line[1:, 1:]) / 2
    mid_pixel = (grid.pixel[:-1, :-1] + grid.pixel[1:, 1:]) / 2
    metres = np.hypot(line - mid_line, pixel - mid_pixel) * 10.0  # IW GRDH: 10 m pixels
    print(f"real IW grid, cell centres vs lat/lon averages: median {np.median(metres):.1f} m, max {metres.max():.1f} m")
    assert np.median(metres) < 30 and metres.max() < 150, (np.median(metres), metres.max())


def test_known_features_are_where_the_geolocation_grid_puts_them(grd, geocoded):
    product, grid, data = geocoded
    lon, lat = grd.lonlat(np.array([t[0] for t in grd.targets], float), np.array([t[1] for t in grd.targets], float))
    x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(lon, lat)
    bright = 10 ** (3 / 10)
    assert len(grd.targets) >= 5
    for tx, ty in zip(x, y):
        col, row = int((tx - grid.x0) / grid.resolution), int((grid.y0 - ty) / grid.resolution)
        window = data[0, row - 5:row + 6, col - 5:col + 6]
        weights = np.where(window > bright, window, 0.0)
        assert weights.sum() > 0
        rr, cc = np.mgrid[row - 5:row + 6, col - 5:col + 6]
        cx = grid.x0 + ((cc * weights).sum() / weights.sum() + 0.5) * grid.resolution
        cy = grid.y0 - ((rr * weights).sum() / weights.sum() + 0.5) * grid.resolution
        assert np.hypot(cx - tx, cy - ty) < grid.resolution / 2


def test_any_chunking_gives_identical_output(geocoded):
    product, grid, reference = geocoded
    for chunk in (128, 333, max(grid.shape)):
        other = geocode(product, grid, chunk=chunk).compute(scheduler="threads").values
        np.testing.assert_array_equal(other, reference)
    assert 0.3 < np.isfinite(reference[0]).mean() < 0.8  # the rotated swath inside its bounding grid


def test_equals_a_whole_array_rasterio_warp_within_tolerance(geocoded):
    """The documented tolerance against GDAL's thin-plate-spline warp of the same product with its tie points:
    median |difference| < 0.01 dB, 99th percentile < 0.5 dB (sharp class edges: the two geolocations differ by a few
    hundredths of a pixel), the swath's pixel count within 0.5 %."""
    product, grid, ours = geocoded
    g = product.grid
    # GDAL's pixel/line of a GCP count from the corner of the first pixel; the annotation's from its centre
    gcps = [GroundControlPoint(row=l + 0.5, col=c + 0.5, x=lo, y=la, z=h) for l, c, lo, la, h in
            zip(g.line.ravel(), g.pixel.ravel(), g.longitude.ravel(), g.latitude.ravel(), g.height.ravel())]
    for band, pol in enumerate(product.bands):
        p = product.polarisations[pol]
        with rasterio.open(p.measurement) as src:
            dn = src.read(1)
        s0 = sigma0(dn, np.arange(SIZE[0], dtype=float), np.arange(SIZE[1], dtype=float), p.calibration, p.noise)
        warped = np.full(grid.shape, np.nan, np.float32)
        reproject(s0, warped, gcps=gcps, src_crs="EPSG:4326", dst_transform=grid.transform, dst_crs=grid.crs,
                  resampling=Resampling.bilinear, src_nodata=np.nan, dst_nodata=np.nan, SRC_METHOD="GCP_TPS")
        both = np.isfinite(warped) & np.isfinite(ours[band])
        diff = np.abs(10 * np.log10(warped[both]) - 10 * np.log10(ours[band][both]))
        assert np.median(diff) < 0.01 and np.percentile(diff, 99) < 0.5, (np.median(diff), np.percentile(diff, 99))
        assert abs(np.isfinite(warped).sum() - np.isfinite(ours[band]).sum()) < 0.005 * both.sum()


def test_coarser_output_is_an_area_average(grd, geocoded):
    product, _, _ = geocoded
    coarse = geocode(product, target_grid(product, resolution=160), chunk=256).compute().values
    fine = geocode(product, target_grid(product, resolution=40), chunk=256).compute().values
    assert coarse.shape[1] == pytest.approx(fine.shape[1] / 4, abs=2)
    # a 160 m pixel averages 4 x 4 sub-samples: its mean over the swath matches the 40 m one
    assert np.nanmean(coarse[0]) == pytest.approx(np.nanmean(fine[0]), rel=0.02)


# ------------------------------------------------------------------------------------------ products, CLI
def test_cli_ingests_zip_identical_to_safe_and_downstream_commands_take_it(tmp_path, grd):
    from polarxr.scenes import open_scene

    polarxr = Path(sys.executable).with_name("polarxr")
    proc = subprocess.run([str(polarxr), "ingest", str(grd.zip_path), "--out", str(tmp_path / "zip"), "--workers", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    safe = ingest_product(grd.path, tmp_path / "safe")
    zipped = tmp_path / "zip" / f"{grd.name}.tif"
    assert safe.scene.name == zipped.name == f"{grd.name}.tif"
    with rasterio.open(zipped) as a, rasterio.open(safe.scene) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.descriptions == ("HH", "HV") and a.tags()["SIGMA0_UNITS"] == "linear"
        assert a.overviews(1)  # a COG
    scene = open_scene(zipped)
    assert list(scene.band.values) == ["HH", "HV"] and scene.attrs["product_id"] == grd.name[-4:]
    import pystac

    item = pystac.Item.from_file(str(tmp_path / "zip" / f"{grd.name}.json"))
    assert item.properties["sar:polarizations"] == ["HH", "HV"] and item.assets["data"].href == f"./{grd.name}.tif"
    # info and rasterize take the ingested scene unchanged
    info = subprocess.run([str(polarxr), "info", str(zipped)], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "HH, HV (float32, linear)" in info.stdout
    import geopandas as gpd
    import shapely

    b = scene.rio.bounds()
    chart = gpd.GeoDataFrame({"poly_type": ["W", "L"]}, geometry=[
        shapely.box(b[0], b[1], (b[0] + b[2]) / 2, b[3]), shapely.box((b[0] + b[2]) / 2, b[1], b[2], b[3])],
        crs=scene.rio.crs)
    chart.to_file(tmp_path / "chart.shp")
    labels = tmp_path / "labels.tif"
    raster = subprocess.run([str(polarxr), "rasterize", str(zipped), str(tmp_path / "chart.shp"), "--out", str(labels)],
                            capture_output=True, text=True, timeout=120)
    assert raster.returncode == 0, raster.stderr
    with rasterio.open(labels) as src:
        assert set(np.unique(src.read(1))) <= {0, 1, 255} and (src.height, src.width) == scene.shape[1:]
    # 8-bit and dB products
    eight = ingest_product(grd.path, tmp_path / "8bit", kind="8bit", item=False)
    db = ingest_product(grd.path, tmp_path / "db", db=True, item=False)
    with rasterio.open(eight.scene) as e, rasterio.open(db.scene) as d:
        assert e.descriptions == ("HH", "HV", "HH-HV") and e.dtypes[0] == "uint8" and e.nodata == 0
        assert d.tags()["SIGMA0_UNITS"] == "dB"
        np.testing.assert_allclose(d.read(1), 10 * np.log10(rasterio.open(safe.scene).read(1)), atol=1e-4)


def test_open_scene_accepts_safe_and_zip(grd, geocoded):
    from polarxr.scenes import open_scene

    _, _, reference = geocoded
    for path in (grd.path, grd.zip_path):
        scene = open_scene(path, chunks=400)
        assert scene.chunks is not None and scene.attrs["units"] == "linear" and scene.attrs["mode"] == "EW"
        np.testing.assert_array_equal(scene.values, reference)


def test_process_inbox_ingests_products_once_keyed_by_product(tmp_path, grd):
    from model_files import untrained_unet

    from polarxr.cluster import get_client
    from polarxr.pipeline import find_scenes, process_inbox

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copytree(grd.path, inbox / grd.path.name)
    shutil.copy2(grd.zip_path, inbox)  # the same product delivered twice
    assert [s.scene for s in find_scenes(inbox)] == [grd.name]
    checkpoint = untrained_unet(tmp_path / "untrained.pt", ["HH", "HV"],
                                {"mean": [0.05, 0.01], "std": [0.05, 0.01]})
    out = tmp_path / "out"
    with get_client(n_workers=1, threads_per_worker=1, memory_limit="2GiB") as client:
        first = process_inbox(inbox, out, checkpoint, client=client, chunk=512)
        assert [o.status for o in first.outcomes] == ["done"], [o.error for o in first.outcomes]
        with rasterio.open(out / grd.name / f"{grd.name}_class.tif") as src:
            classes = src.read(1)
        assert set(np.unique(classes)) <= {0, 1, 2, 255} and (classes != 255).any()
        shutil.rmtree(inbox / grd.path.name)  # only the zip is left: still the same product, done
        second = process_inbox(inbox, out, checkpoint, client=client, chunk=512)
        assert [o.status for o in second.outcomes] == ["up-to-date"]
        # predict takes the product itself too (open_scene geocodes it): the same classes
        from polarxr.predict import predict_scene

        predict_scene(grd.zip_path, checkpoint, tmp_path / "direct.tif", chunk=512, client=client)
        with rasterio.open(tmp_path / "direct.tif") as src:
            np.testing.assert_array_equal(src.read(1), classes)


# ------------------------------------------------------------------------------------------ bad input
def _copy(grd, tmp_path) -> Path:
    return Path(shutil.copytree(grd.path, tmp_path / grd.path.name))


def _drop_from_manifest(safe: Path, fragment: str) -> None:
    manifest = safe / "manifest.safe"
    text = manifest.read_text()
    start = text.rindex("<dataObject ", 0, text.index(fragment))
    end = text.index("</dataObject>", start) + len("</dataObject>")
    manifest.write_text(text[:start] + text[end:])


def _bad_truncated_zip(grd, tmp_path):
    path = tmp_path / grd.zip_path.name
    path.write_bytes(grd.zip_path.read_bytes()[: grd.zip_path.stat().st_size // 2])
    return path, "truncated or corrupt zip"


def _bad_corrupt_member(grd, tmp_path):
    path = tmp_path / grd.zip_path.name
    data = bytearray(grd.zip_path.read_bytes())
    with zipfile.ZipFile(grd.zip_path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(".xml") and "/annotation/s1" in i.filename)
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    data[offset:offset + 8] = b"XXXXXXXX"
    path.write_bytes(bytes(data))
    return path, "corrupt zip"


def _bad_missing_measurement(grd, tmp_path):
    safe = _copy(grd, tmp_path)
    next((safe / "measurement").glob("*-hv-*.tiff")).unlink()
    return safe, "manifest.safe lists measurement/"


def _bad_missing_calibration(grd, tmp_path):
    safe = _copy(grd, tmp_path)
    next((safe / "annotation/calibration").glob("calibration-*-hh-*.xml")).unlink()
    return safe, "which is missing (calibration XML of HH)"


def _bad_unlisted_noise(grd, tmp_path):
    safe = _copy(grd, tmp_path)
    noise = next((safe / "annotation/calibration").glob("noise-*-hv-*.xml"))
    _drop_from_manifest(safe, noise.name)
    noise.unlink()
    return safe, "lists no noise XML for HV"


def _bad_malformed_xml(grd, tmp_path):
    safe = _copy(grd, tmp_path)
    annotation = next((safe / "annotation").glob("*-hh-*.xml"))
    annotation.write_text(annotation.read_text()[:5000])
    return safe, "malformed XML in annotation/"


def _bad_slc(grd, tmp_path):
    return write_grd_product(tmp_path, size=(300, 200), product_type="SLC_").path, "not supported: SLC"


def _bad_single_pol(grd, tmp_path):
    return (write_grd_product(tmp_path, size=(300, 200), polarisations=("HH",)).path,
            "single-polarisation product (HH only)")


def _bad_outside(grd, tmp_path):
    return (write_grd_product(tmp_path, size=(300, 200), centre=(-70.5, 2.0)).path,
            "does not intersect the target grid")


@pytest.mark.parametrize("make", [_bad_truncated_zip, _bad_corrupt_member, _bad_missing_measurement,
                                  _bad_missing_calibration, _bad_unlisted_noise, _bad_malformed_xml, _bad_slc,
                                  _bad_single_pol, _bad_outside])
def test_bad_products_give_one_line_naming_product_and_problem(tmp_path, grd, make):
    (tmp_path / "in").mkdir()
    path, problem = make(grd, tmp_path / "in")
    out = tmp_path / "out"
    with pytest.raises(ProductError) as caught:
        ingest_products([grd.path, path], out)  # a good product first: nothing is written for it either
    message = str(caught.value)
    assert problem in message and path.name in message and "\n" not in message
    assert not out.exists() or not any(out.iterdir())


def test_cli_bad_product_exits_2_with_one_line(tmp_path, grd):
    path, problem = _bad_truncated_zip(grd, tmp_path)
    polarxr = Path(sys.executable).with_name("polarxr")
    proc = subprocess.run([str(polarxr), "ingest", str(path), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 2 and problem in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, problem", [("S1A_EW_SLC__1SDH_*_8152.SAFE", "not supported: SLC"),
                                           ("S1B_IW_GRDH_1SDV_*_ECC8.SAFE", "which is missing (calibration XML of VV)")])
def test_real_products_that_cannot_be_ingested_say_why(name, problem):
    safe = _real(name)
    with pytest.raises(ProductError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        open_product(safe)
