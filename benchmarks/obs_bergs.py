"""Which true icebergs (>= 4 px) a segmented map finds, by size, on the saved maps of
``observations_bench.py --checkpoint ... --workdir W``:

    python benchmarks/obs_bergs.py W

A true berg counts as detected when the prediction has any ice on its component (found from its centroid).
"""
import sys
from pathlib import Path
import numpy as np, rasterio, dask
from scipy import ndimage
from polarxr.observations.icebergs import find_icebergs
dask.config.set(scheduler="synchronous")
work = Path(sys.argv[1])
bins = [4, 8, 16, 32, 64, 10**9]
print("| scene | truth bergs by size (4-7 / 8-15 / 16-31 / 32-63 / >=64 px) | detected (any predicted ice on the berg) | predicted bergs >= 4 px | of them on a true berg |")
print("| --- | --- | --- | ---: | ---: |")
for pred in sorted((work / "pred").glob("*_class.tif")):
    truth = work / "truth" / pred.name
    t = find_icebergs(truth); p = find_icebergs(pred)
    t = t[t["n_pixels"] >= 4]; p = p[p["n_pixels"] >= 4]
    with rasterio.open(truth) as a, rasterio.open(pred) as b:
        T, P = a.read(1), b.read(1)
    hist = np.histogram(t["n_pixels"], bins)[0]
    lab, n = ndimage.label(T == 2)
    det = []
    for geom in t.geometry.centroid:
        r, c = rasterio.transform.rowcol(rasterio.open(truth).transform, geom.x, geom.y)
        l = lab[r, c] if 0 <= r < T.shape[0] and 0 <= c < T.shape[1] else 0
        det.append(bool(l) and bool((P[lab == l] == 2).any()))
    dh = np.histogram(t["n_pixels"][np.array(det, bool)], bins)[0]
    on = 0
    for geom in p.geometry.centroid:
        r, c = rasterio.transform.rowcol(rasterio.open(pred).transform, geom.x, geom.y)
        win = T[max(r-2,0):r+3, max(c-2,0):c+3]
        on += int((win == 2).any())
    print(f"| {pred.name[17:25]} | {' / '.join(map(str, hist))} | {' / '.join(map(str, dh))} | {len(p)} | {on} |", flush=True)
