"""    python benchmarks/obs_tta.py CKPT W     # W: the --workdir of observations_bench.py (its truth/ maps)

Test-time flips/rot90 (8 symmetries, probabilities averaged) on the bench's held-out scenes, whole-array
(1 Mpx scenes: an experiment, not the pipeline); scored as the bench scores: coast / edge MDE vs truth,
front error (px), bergs >= 4 px."""
import sys
from pathlib import Path
import dask, numpy as np, rasterio, torch
from polarxr.checkpoints import load_checkpoint
from polarxr.predict import normalise, segment_array
from polarxr.observations.distance import boundary_errors
from polarxr.observations.fronts import front_positions
from polarxr.observations.icebergs import find_icebergs
from polarxr.scenes import open_class_map
from polarxr.synthetic import make_sequence, write_glacier_files
dask.config.set(scheduler="synchronous"); torch.set_num_threads(1)
ck, work = sys.argv[1], Path(sys.argv[2])
net, meta = load_checkpoint(ck)
scenes = make_sequence(work / "sequence", n_scenes=4, size=(1024, 1024), seed=11)
boxes, _ = write_glacier_files(scenes, work / "sequence")
out = work / "tta"; out.mkdir(exist_ok=True)
rows = []
for s in scenes:
    name = s.scene.name.removesuffix(".tif")
    with rasterio.open(s.scene) as src:
        block, nodata, profile = src.read(), src.nodata, src.profile
    image, valid = normalise(block, meta, nodata)
    res = {}
    for mode in ("plain", "tta"):
        if mode == "plain":
            p = segment_array(net, image, net.pad_multiple)
        else:
            acc = 0
            for k in range(4):
                for flip in (False, True):
                    im = np.rot90(image, k, axes=(1, 2))
                    im = im[:, :, ::-1] if flip else im
                    q = segment_array(net, np.ascontiguousarray(im), net.pad_multiple)
                    q = q[:, :, ::-1] if flip else q
                    acc = acc + np.rot90(q, -k, axes=(1, 2))
            p = acc / 8
        cls = p.argmax(0).astype(np.uint8); cls[~valid] = 255
        path = out / f"{name}_{mode}.tif"
        prof = dict(driver="GTiff", height=cls.shape[0], width=cls.shape[1], count=1, dtype="uint8", nodata=255,
                    crs=profile["crs"], transform=profile["transform"], tiled=True, blockxsize=512, blockysize=512)
        with rasterio.open(path, "w", **prof) as dst:
            dst.write(cls, 1)
        e = boundary_errors(open_class_map(path), open_class_map(work / "truth" / f"{name}_class.tif"))
        f = front_positions(path, boxes)
        ferr = np.mean([abs(f[k] - s.fronts_m[k]) / 40 for k in s.fronts_m])
        bergs = int((find_icebergs(path)["n_pixels"] >= 4).sum())
        res[mode] = (e["coastline_mde_m"], e["ice_edge_mde_m"], ferr, bergs)
    rows.append((name[17:25], res, s.icebergs))
    print(rows[-1], flush=True)
for mode in ("plain", "tta"):
    c = np.mean([r[1][mode][0] for r in rows]); e = np.mean([r[1][mode][1] for r in rows])
    f = np.mean([r[1][mode][2] for r in rows]); b = sum(abs(r[1][mode][3] - r[2]) for r in rows) / sum(r[2] for r in rows)
    print(f"| {mode} | {c:,.0f} m | {e:,.0f} m | {f:.2f} px | {100*b:.0f} % |")
