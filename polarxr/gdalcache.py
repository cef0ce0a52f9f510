"""GDAL's block cache, capped in polarxr's workers so that their memory follows the chunks.

GDAL's cache defaults to 5 % of the machine's memory per process and holds blocks until it is full, so
a worker's peak memory would grow with the scene rather than with the chunks. The cap is set on each
worker when it joins (:class:`GdalCachePlugin`, registered by :func:`polarxr.cluster.get_client`), never
at import: the user's own process and GDAL work are left alone. A ``GDAL_CACHEMAX`` in a worker's
environment (the user's choice) wins.
"""

from __future__ import annotations

import os

from distributed.diagnostics.plugin import WorkerPlugin

#: Cap of GDAL's block cache per worker process, in MiB.
GDAL_CACHE_MB = 128


class GdalCachePlugin(WorkerPlugin):
    """Caps GDAL's block cache of each worker at ``megabytes`` MiB (GDAL reads it at run time too)."""

    name = "polarxr-gdal-cache"

    def __init__(self, megabytes: int = GDAL_CACHE_MB):
        self.megabytes = megabytes

    def setup(self, worker) -> None:
        if "GDAL_CACHEMAX" in os.environ:
            return
        from rasterio.env import set_gdal_config

        set_gdal_config("GDAL_CACHEMAX", self.megabytes * 2**20)
