"""Per-scene observation products of ``polarxr process``: the lines GeoPackage and the icebergs GeoPackage."""

from __future__ import annotations

from pathlib import Path

from polarxr.observations.boundaries import extract_boundaries, write_lines
from polarxr.observations.icebergs import MAX_AREA_KM2, find_icebergs, iceberg_summary, write_icebergs

#: File name suffixes of the products beside a scene's class map.
LINES_SUFFIX = "_lines.gpkg"
ICEBERGS_SUFFIX = "_icebergs.gpkg"


def write_observations(class_map: str | Path, lines_gpkg: str | Path, icebergs_gpkg: str | Path,
                       probabilities: str | Path | None = None, glaciers=None,
                       max_area_km2: float = MAX_AREA_KM2) -> dict[str, float]:
    """Write a class map's boundary lines (layers ``coastline``, ``ice_edge``, ``fronts``; sub-pixel from
    ``probabilities`` when given) and icebergs, each GeoPackage atomically; computed on the active dask
    scheduler. Returns a summary for the STAC Item: line lengths (km) and iceberg counts."""
    lines = extract_boundaries(class_map, probabilities=probabilities, glaciers=glaciers)
    write_lines(lines.layers(), lines_gpkg)
    bergs = find_icebergs(class_map, max_area_km2=max_area_km2)
    write_icebergs(bergs, icebergs_gpkg)
    summary = {f"{name}_km": float(frame["length_m"].sum() / 1e3) for name, frame in lines.layers().items()}
    summary.update(iceberg_summary(bergs))
    return summary


__all__ = ["ICEBERGS_SUFFIX", "LINES_SUFFIX", "write_observations"]
