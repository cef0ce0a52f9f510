"""The Sentinel-1 product reader that :func:`polarxr.scenes.open_scene` finds through its entry point.

Registered in pyproject.toml under ``polarxr.product_readers`` (as xarray backends are), so that ``.SAFE``
folders and ``.zip`` products open like any scene: calibrated, denoised and geocoded lazily.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from polarxr.ingest.geocode import geocode
from polarxr.ingest.safe import is_product, open_product


class Sentinel1ProductReader:
    """Sentinel-1 GRD products as delivered: a ``.SAFE`` folder or its ``.zip``."""

    def guess_can_open(self, path: Path) -> bool:
        return is_product(path)

    def open_scene(self, path: Path, chunk: int) -> xr.DataArray:
        """float32 linear sigma0 on the ExtremeEarth grid, bands named after the polarisations, NaN = no data."""
        product = open_product(path)
        scene = geocode(product, chunk=chunk)
        scene.name = "backscatter"
        scene.attrs = {"source": str(path), "units": "linear", "band_names": product.bands, **product.product.attrs()}
        return scene

    def measurement(self, path: Path) -> str:
        product = open_product(path)
        return product.polarisations[product.bands[0]].measurement
