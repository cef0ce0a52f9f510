"""Shared pytest fixtures."""

# Real dask scheduler + worker processes on localhost: fixtures real_scheduler, real_tls_scheduler.
from cluster_fixtures import real_scheduler, real_tls_scheduler  # noqa: F401
# A tiny Zarr v3 training cube in the documented layout: fixture tiny_cube.
from cube_files import tiny_cube  # noqa: F401
# A real STAC API server (rustac serve) on localhost, serving items a test gives it: fixture stac_api.
from stac_api_server import stac_api  # noqa: F401
