"""Ingest products: geocoded sigma0 COGs (float or the ExtremeEarth 8-bit rendering) and a STAC Item each.

``OUT_DIR/<product name>.tif``:

* ``float``: float32 sigma0 per polarisation, bands named after them (``HH``, ``HV``), linear or dB
  (tag ``SIGMA0_UNITS``), nodata NaN;
* ``8bit``: 3 bands uint8 ``HH``, ``HV``, ``HH-HV`` (co-pol, cross-pol, their dB difference), each
  ``DN = clip(round(1 + 254 (dB - lo) / (hi - lo)), 1, 255)`` with (lo, hi) of
  :data:`polarxr.synthetic.DN_SCALING` (the ExtremeEarth-style rendering the seed's models read), nodata 0.

The name is the product's (``S1A_EW_GRDM_1SDH_..._9FE3``), so ``polarxr info``, ``rasterize``,
``sample`` and ``predict`` read it as any scene. ``OUT_DIR/<product name>.json`` is a STAC Item
(projection and SAR extensions) with the COG as its ``data`` asset.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import numpy as np
import pystac
import rasterio
import shapely
import xarray as xr
from pyproj import CRS
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.sar import FrequencyBand, Polarization, SarExtension
from pystac.extensions.sat import SatExtension

from polarxr.errors import ProductError
from polarxr.ingest.geocode import DEFAULT_CHUNK, TargetGrid, geocode, target_grid
from polarxr.ingest.safe import GrdProduct, open_product
from polarxr.io import write_cog
from polarxr.region import bounds_footprint
from polarxr.stac import write_item

PRODUCTS = ("float", "8bit")


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest_product` wrote."""

    product: str
    scene: Path
    item: Path
    shape: tuple[int, int]
    bands: tuple[str, ...]


def to_db(data: xr.DataArray) -> xr.DataArray:
    """10 log10 of linear sigma0 (NaN stays NaN)."""
    out = 10 * np.log10(data)
    out.attrs = {**data.attrs, "units": "dB"}
    return out


def render_8bit(sigma0: xr.DataArray) -> xr.DataArray:
    """The ExtremeEarth-style 8-bit rendering ``(band=[co, cross, co-cross], y, x)`` uint8 of linear sigma0."""
    from polarxr.synthetic import DN_SCALING

    co, cross = (str(b) for b in sigma0.band.values[:2])
    db = 10 * np.log10(sigma0)
    co_db, cross_db = db.sel(band=co, drop=True), db.sel(band=cross, drop=True)
    layers = [co_db, cross_db, co_db - cross_db]
    scales = [DN_SCALING["HH"], DN_SCALING["HV"], DN_SCALING["HH-HV"]]
    out = []
    for layer, (lo, hi) in zip(layers, scales):
        dn = np.clip(np.rint(1 + 254 * (layer - lo) / (hi - lo)), 1, 255)
        out.append(dn.where(np.isfinite(layer), 0).astype(np.uint8))
    names = [co, cross, f"{co}-{cross}"]
    rendered = xr.concat(out, dim="band").assign_coords(band=names).transpose("band", "y", "x")
    rendered = rendered.rio.write_crs(sigma0.rio.crs).rio.write_transform(sigma0.rio.transform())
    rendered.attrs = {"units": "dn", "band_names": names}
    return rendered


def ingested(product: GrdProduct, grid: TargetGrid | None = None, kind: str = "float", db: bool = False,
             denoise: bool = True, chunk: int = DEFAULT_CHUNK) -> xr.DataArray:
    """The lazy output array of one product: geocoded sigma0 (linear or dB) or its 8-bit rendering."""
    if kind not in PRODUCTS:
        raise ValueError(f"product must be one of {PRODUCTS}, not {kind!r}")
    data = geocode(product, grid, denoise=denoise, chunk=chunk)
    if kind == "8bit":
        return render_8bit(data)
    return to_db(data) if db else data


def ingest_product(product: GrdProduct | str | Path, out_dir: str | Path, crs: str | None = None,
                   resolution: float | None = None, kind: str = "float", db: bool = False, denoise: bool = True,
                   chunk: int = DEFAULT_CHUNK, scene_path: str | Path | None = None,
                   item: bool = True) -> IngestResult:
    """Geocode one product and write ``OUT_DIR/<name>.tif`` (COG, blocks computed on the active dask
    scheduler) and ``OUT_DIR/<name>.json`` (STAC Item). ``scene_path`` overrides the COG's path."""
    product = product if isinstance(product, GrdProduct) else open_product(product)
    grid = target_grid(product, crs, resolution)
    data = ingested(product, grid, kind, db, denoise, chunk)
    out_dir = Path(out_dir)
    scene = Path(scene_path) if scene_path else out_dir / f"{product.name}.tif"
    bands = tuple(str(b) for b in data.band.values)
    data.attrs["long_name"] = bands  # rioxarray writes it as the band descriptions
    tags = {"PRODUCT": product.name, "POLARISATIONS": ",".join(product.bands),
            "INGEST": f"polarxr ingest: {'thermal noise removed, ' if denoise else ''}sigma0 geocoded to {grid.crs} "
                      f"at {grid.resolution:g} m",
            "IPF_VERSION": product.ipf_version}
    if kind == "float":
        tags["SIGMA0_UNITS"] = "dB" if db else "linear"
    else:
        tags["DN_SCALING"] = "DN = clip(round(1 + 254 * (dB - DB_MIN) / (DB_MAX - DB_MIN)), 1, 255); 0 = no data"
    try:
        write_cog(data, scene, nodata=0 if kind == "8bit" else np.nan, **tags)
    except rasterio.errors.RasterioError as err:
        raise ProductError(product.path, f"its measurement cannot be read ({err})") from None
    item_path = out_dir / f"{product.name}.json"
    if item:
        write_item(product_item(product, scene, kind, db, denoise), item_path)
    return IngestResult(product.name, scene, item_path, tuple(data.shape[1:]), bands)


def ingest_products(paths: list[str | Path], out_dir: str | Path, **options) -> list[IngestResult]:
    """Check every product first (nothing is written when one is bad), then ingest each in turn."""
    products = [open_product(p) for p in paths]
    for product in products:  # a product outside the grid is refused before anything is written
        target_grid(product, options.get("crs"), options.get("resolution"))
    return [ingest_product(p, out_dir, **options) for p in products]


def product_item(product: GrdProduct, scene: Path, kind: str, db: bool, denoise: bool) -> pystac.Item:
    """A STAC Item for an ingested product: footprint, times, SAR and projection fields, the COG as ``data``."""
    with rasterio.open(scene) as src:
        bounds, crs, transform, shape = tuple(src.bounds), src.crs, src.transform, (src.height, src.width)
    footprint = shapely.set_precision(bounds_footprint(bounds, crs), 1e-7)
    name = product.product
    item = pystac.Item(
        id=product.name, geometry=shapely.geometry.mapping(footprint), bbox=list(footprint.bounds),
        datetime=name.start.replace(tzinfo=UTC),
        properties={"start_datetime": name.start.replace(tzinfo=UTC).isoformat(),
                    "end_datetime": name.stop.replace(tzinfo=UTC).isoformat(),
                    "platform": f"sentinel-{name.mission[1:].lower()}", "constellation": "sentinel-1",
                    "instruments": ["c-sar"],
                    "polarxr:processing": {"product": kind, "units": "dn" if kind == "8bit" else ("dB" if db else "linear"),
                                           "thermal_noise_removed": denoise, "ipf_version": product.ipf_version}})
    sar = SarExtension.ext(item, add_if_missing=True)
    sar.apply(instrument_mode=name.mode, frequency_band=FrequencyBand.C,
              polarizations=[Polarization(p) for p in product.bands], product_type=name.product_type)
    sat = SatExtension.ext(item, add_if_missing=True)
    sat.absolute_orbit, sat.relative_orbit = name.absolute_orbit, name.relative_orbit
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    proj.code = f"EPSG:{epsg}" if epsg else None
    proj.wkt2 = CRS.from_user_input(crs).to_wkt()
    proj.shape = list(shape)
    proj.transform = list(transform)[:6]
    item.add_asset("data", pystac.Asset(f"./{scene.name}", title=f"sigma0 {'8-bit rendering' if kind == '8bit' else kind}",
                                        media_type=pystac.MediaType.COG, roles=["data"]))
    item.add_link(pystac.Link(rel="derived_from", target=Path(product.path).resolve().as_uri(),
                              title="Sentinel-1 product"))
    return item

