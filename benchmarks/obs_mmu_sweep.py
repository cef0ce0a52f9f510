"""Minimum-mapping-unit sweep on the saved predictions of ``observations_bench.py --checkpoint ... --workdir W``:
coastline / ice-edge MDE (m) against the true class maps, lines drawn after cleaning at 1-256 px.

    python benchmarks/obs_mmu_sweep.py W
"""
import sys
from pathlib import Path
import dask
from polarxr.observations.distance import boundary_errors
from polarxr.scenes import open_class_map
dask.config.set(scheduler="synchronous")
work = Path(sys.argv[1])
units = [1, 4, 16, 64, 256]
print("| scene | " + " | ".join(f"{u} px" for u in units) + " |")
print("| --- |" + " ---: |" * len(units))
for pred in sorted((work / "pred").glob("*_class.tif")):
    truth = work / "truth" / pred.name
    cells = []
    for u in units:
        e = boundary_errors(open_class_map(pred), open_class_map(truth), min_pixels=u)
        cells.append(f"{e['coastline_mde_m']:,.0f} / {e['ice_edge_mde_m']:,.0f}")
    print(f"| {pred.name[17:25]} | " + " | ".join(cells) + " |", flush=True)
