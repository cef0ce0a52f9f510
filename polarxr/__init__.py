"""polarxr: segment Sentinel-1 EW SAR scenes into sea, ice and land with xarray, dask and torch."""

import os
from importlib.metadata import PackageNotFoundError, version

# GDAL's block cache defaults to 5 % of the machine's memory per process and holds written blocks until
# it is full, so peak memory would grow with the scene rather than with the chunks. polarxr caps it
# (MB) unless the user chose a size; it must be set before GDAL first allocates its cache.
os.environ.setdefault("GDAL_CACHEMAX", "128")

try:
    __version__ = version("polarxr")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"

from polarxr.classes import CLASS_CODES, CLASS_NAMES, ICE, LAND, NO_LABEL, WATER
from polarxr.errors import ChartError, PolarxrError, SceneError

__all__ = [
    "__version__",
    "CLASS_CODES",
    "CLASS_NAMES",
    "LAND",
    "WATER",
    "ICE",
    "NO_LABEL",
    "PolarxrError",
    "SceneError",
    "ChartError",
]
