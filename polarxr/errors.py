"""Errors raised for bad input. Each names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class PolarxrError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self):
        # rebuilt from (path, problem), so an error raised in a task on a worker reaches the client whole
        return type(self), (self.path, self.problem)


class SceneError(PolarxrError):
    """A scene GeoTIFF that cannot be used (corrupt, no CRS, empty, wrong bands)."""


class ChartError(PolarxrError):
    """An ice chart that cannot be used (missing ``poly_type``, unknown codes, no overlap, bad CRS)."""


class CubeError(PolarxrError):
    """A training cube that cannot be built, appended to or read."""


class ModelError(PolarxrError):
    """A checkpoint that cannot be used for the data at hand."""


class ClusterError(PolarxrError):
    """A Dask cluster that cannot be started or reached."""


class OutputBusyError(PolarxrError):
    """An output that another run is writing at this moment."""


class ProductError(PolarxrError):
    """A Sentinel-1 product (``.SAFE`` folder or ``.zip``) that cannot be ingested."""
