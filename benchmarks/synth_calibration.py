"""Calibrating ``polarxr synth``'s 8-bit rendering to the real patches, and how far apart they are.

    python benchmarks/synth_calibration.py --cube REAL.zarr            # measure, fit, print DN_CURVES + tables
    python benchmarks/synth_calibration.py --cube REAL.zarr --measure-only

``REAL.zarr`` is the real polar-patch set imported by ``polarxr import-patches --band-names HH,HV,HH-HV``;
only its **train** rows are read (no validation or test row shapes the generator).

1. Real statistics: per band, the DN quantiles of every pixel with data of the train patches that are not
   mostly nodata (no labels needed), the class proportions of their patch labels, and per class and band
   the DN histogram of the **clean-label** patches (``|x - y| < 400`` px: the seed took each label at the
   transposed position, which for these lies near the patch) with imagery in every pixel. Also texture:
   the lag-1 autocorrelation of HH and the standard deviation of HH over 4 x 4 px block means (speckle
   averages out there, texture stays).
2. Fit: synthetic float scenes (sigma0, with the calibrated rendering's domain randomisation) are sampled
   into a cube with dense chart labels; their pixels in dB (HH, HV, HH - HV), classes mixed in the real
   proportions, give per band the dB quantiles matched to the real DN quantiles at the same levels: the
   knots of a monotone curve dB -> DN (``DN_CURVES`` in ``polarxr/synthetic.py``) for the first two bands.
   The real third band is, to 93 % of its variance, a function of the first two: its mean over 16 x 16 bins
   of (band 1, band 2) DN is ``THIRD_BAND_TABLE``.
3. Distance: per class and band, the Wasserstein-1 distance (DN) between the real clean-label histogram and
   the synthetic class histogram, for 8-bit scenes of the linear rendering (before) and the calibrated one
   (after).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

POLARXR = str(Path(sys.executable).with_name("polarxr"))
BANDS = ("HH", "HV", "HH-HV")
NAMES = ("land", "sea", "ice")
LEVELS = np.concatenate([[0.002, 0.01], np.linspace(0.03, 0.97, 33), [0.99, 0.998]])
CLEAN = 400


def _train_patches(cube: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train patches with imagery: images (n, band, y, x), labels, clean-label mask."""
    root = zarr.open_group(cube, mode="r")
    split = root["split"][:]
    flagged = np.zeros(len(split), bool)
    for r in root.attrs["scene_records"]:
        flagged[r["start"] + np.asarray(r.get("flagged", []), np.int64)] = True
    keep = np.flatnonzero((split == 0) & ~flagged)
    image = root["image"][int(keep[0]):int(keep[-1]) + 1][keep - keep[0]]
    rows, cols = root["row"][:][keep], root["col"][:][keep]
    return image, root["patch_label"][:][keep], np.abs(rows - cols) < CLEAN


def real_statistics(cube: Path) -> dict:
    image, labels, clean = _train_patches(cube)
    valid = (image != 0).all(axis=1)
    pooled = [image[:, b][valid] for b in range(3)]
    full = valid.all(axis=(1, 2))
    per_class = {c: image[clean & full & (labels == c)] for c in range(3)}
    return {"quantiles": [np.quantile(v, LEVELS) for v in pooled],
            "proportions": np.bincount(labels, minlength=3) / len(labels),
            "per_class": per_class, "n_clean": {c: len(v) for c, v in per_class.items()}}


def _synthetic_cube(work: Path, product: str, rendering: str, scenes: int, seed: int) -> Path:
    folder, cube = work / f"{product}-{rendering}", work / f"{product}-{rendering}.zarr"
    if not cube.exists():
        subprocess.run([POLARXR, "synth", str(folder), "--scenes", str(scenes), "--size", "1024", "1024", "--seed",
                        str(seed), "--product", product, "--rendering", rendering], check=True, capture_output=True)
        subprocess.run([POLARXR, "sample", str(folder), "--cube", str(cube), "--samples-per-label", "60",
                        "--max-nodata", "0.01", "--workers", "1"], check=True, capture_output=True)
    return cube


def _class_pixels(cube: Path, limit: int = 400_000) -> dict[int, np.ndarray]:
    """Per class, ``(band, n)`` values of the pixels whose dense label is that class."""
    root = zarr.open_group(cube, mode="r")
    image, label = root["image"][:], root["label"][:]
    rng = np.random.default_rng(0)
    out = {}
    for c in range(3):
        values = np.moveaxis(image, 1, 0)[:, label == c]
        if values.shape[1] > limit:
            values = values[:, rng.choice(values.shape[1], limit, replace=False)]
        out[c] = values
    return out


def fit_third_band(cube: Path, bins: int = 16) -> np.ndarray:
    """``(bins, bins)`` mean DN of the third band over bins of (first band DN, second band DN), train pixels
    with data; empty bins from the nearest filled one along each row then column."""
    image, _, _ = _train_patches(cube)
    valid = (image != 0).all(axis=1)
    b1, b2, b3 = (image[:, k][valid].astype(np.int64) for k in range(3))
    width = 256 // bins
    idx = (b1 // width) * bins + b2 // width
    total = np.bincount(idx, b3, bins * bins)
    count = np.bincount(idx, None, bins * bins)
    table = np.where(count >= 20, total / np.maximum(count, 1), np.nan).reshape(bins, bins)
    for axis in (1, 0):
        for line in np.moveaxis(table, axis, 0):
            ok = np.flatnonzero(np.isfinite(line))
            if len(ok):
                line[:] = np.interp(np.arange(bins), ok, line[ok])
    fit = table[(b1 // width), (b2 // width)]
    print(f"third band from the first two: R^2 {1 - ((b3 - fit) ** 2).mean() / b3.var():.3f} (bin means)")
    return np.rint(table).astype(int)


def fit_curves(real: dict, work: Path, scenes: int, seed: int) -> dict[str, tuple[list[float], list[float]]]:
    pixels = _class_pixels(_synthetic_cube(work, "float", "calibrated", scenes, seed))
    rng = np.random.default_rng(1)
    total = 600_000
    mixed = []
    for c in range(3):
        values = pixels[c]
        n = int(real["proportions"][c] * total)
        mixed.append(values[:, rng.choice(values.shape[1], n, replace=values.shape[1] < n)])
    linear = np.concatenate(mixed, axis=1).astype(np.float64)
    with np.errstate(divide="ignore"):
        hh, hv = 10 * np.log10(linear[0]), 10 * np.log10(linear[1])
    curves = {}
    for band, db, target in zip(BANDS, (hh, hv, hh - hv), real["quantiles"]):
        db = db[np.isfinite(db)]
        knots_db = np.quantile(db, LEVELS)
        knots_dn = np.maximum.accumulate(target.astype(np.float64))
        # strictly increasing dB knots for np.interp; a flat DN stretch (saturation) stays flat
        keep = np.concatenate([[True], np.diff(knots_db) > 1e-3])
        curves[band] = ([round(float(v), 2) for v in knots_db[keep]], [round(float(v), 1) for v in knots_dn[keep]])
    return curves


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """W1 distance (DN) between two samples of uint8 values: the area between their CDFs."""
    ca = np.cumsum(np.bincount(a.ravel(), minlength=256)) / a.size
    cb = np.cumsum(np.bincount(b.ravel(), minlength=256)) / b.size
    return float(np.abs(ca - cb).sum())


def distance_table(real: dict, work: Path, scenes: int, seed: int) -> str:
    before = _class_pixels(_synthetic_cube(work, "8bit", "linear", scenes, seed))
    after = _class_pixels(_synthetic_cube(work, "8bit", "calibrated", scenes, seed))
    lines = ["| class | band | real clean-label patches | real mean DN | W1 before (linear) | W1 after (calibrated) |",
             "|---|---|---|---|---|---|"]
    totals = [0.0, 0.0]
    for c in range(3):
        real_c = real["per_class"][c]
        for b, band in enumerate(BANDS):
            r = real_c[:, b]
            w0, w1 = wasserstein(r, before[c][b]), wasserstein(r, after[c][b])
            totals[0] += w0 / 9
            totals[1] += w1 / 9
            lines.append(f"| {NAMES[c]} | {band} | {real['n_clean'][c]} | {r.mean():.1f} | {w0:.1f} | {w1:.1f} |")
    lines.append(f"| **mean** | | | | **{totals[0]:.1f}** | **{totals[1]:.1f}** |")
    return "\n".join(lines)


def texture(image: np.ndarray) -> tuple[float, float, float]:
    """Within-patch HH texture of ``(n, band, y, x)``: lag-1 and lag-2 autocorrelation along rows, and the
    std (DN) of 4 x 4 px block means about the patch mean (speckle averages out there, texture stays)."""
    hh = image[:, 0].astype(np.float64)
    hh = hh - hh.mean(axis=(1, 2), keepdims=True)
    var = (hh ** 2).mean()
    lag1 = (hh[:, :, :-1] * hh[:, :, 1:]).mean() / var
    lag2 = (hh[:, :, :-2] * hh[:, :, 2:]).mean() / var
    blocks = hh.reshape(len(hh), hh.shape[1] // 4, 4, hh.shape[2] // 4, 4).mean(axis=(2, 4))
    return float(lag1), float(lag2), float(blocks.std())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cube", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("bench-out") / "synth_calibration")
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--fit", action="store_true", help="fit and print DN_CURVES (else: distances only)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()}")
    real = real_statistics(args.cube)
    print("real class proportions (train, with imagery):", np.round(real["proportions"], 3).tolist())
    print("clean-label patches per class:", real["n_clean"])
    for c in range(3):
        if len(real["per_class"][c]):
            print(f"real texture {NAMES[c]}: lag-1, lag-2 autocorrelation, 4x4 block std = "
                  f"{np.round(texture(real['per_class'][c]), 3).tolist()}")
    if args.fit:
        curves = fit_curves(real, args.workdir, args.scenes, args.seed)
        print("DN_CURVES = {")
        for band, (db, dn) in curves.items():
            print(f'    "{band}": ({tuple(db)},\n           {tuple(dn)}),')
        print("}")
        table = fit_third_band(args.cube)
        print("THIRD_BAND_TABLE = (")
        for row in table:
            print("    (" + ", ".join(str(v) for v in row) + "),")
        print(")")
        return
    print(distance_table(real, args.workdir, args.scenes, args.seed + 1000))
    for rendering in ("linear", "calibrated"):
        root = zarr.open_group(_synthetic_cube(args.workdir, "8bit", rendering, args.scenes, args.seed + 1000), mode="r")
        image, labels = root["image"][:], root["patch_label"][:]
        print(rendering, "texture per class:", {NAMES[c]: np.round(texture(image[labels == c]), 3).tolist()
                                               for c in range(3)})


if __name__ == "__main__":
    main()
