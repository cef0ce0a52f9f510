"""polarxr: segment Sentinel-1 EW SAR scenes into sea, ice and land with xarray, dask and torch."""

from importlib.metadata import PackageNotFoundError, version

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
