"""Where the training patches of a scene are cut: the seed's two samplers, drawn from rasterized labels.

A patch is a ``patch_size`` x ``patch_size`` window of the scene grid given by its top-left pixel
``(row, col)``. Its class (``patch_label``) is the label of its centre pixel ``(row + P//2, col + P//2)``,
as the seed's point-in-polygon test of the patch centre. A position is **eligible** when the window lies
inside the scene, its centre pixel is labelled (L=0, W=1, I=2), at most ``max_nodata`` of its pixels are
scene nodata and at least ``min_labelled`` of them carry a label.

- ``grid``: every eligible position on a lattice of ``stride`` px (default: the patch size, i.e. the
  seed's consecutive patches; a smaller stride gives overlapping patches).
- ``random``: up to ``samples_per_label`` patches per class, drawn uniformly without replacement from
  the eligible positions of that class. Each position gets a pseudo-random key from a hash of
  ``(seed, scene name, row, col)`` and the smallest keys win, so the draw is reproducible and does not
  depend on chunking or the number of workers. ``max_tries`` reproduces the seed's timeout: the seed
  draws top-left pixels uniformly over the whole scene until every quota is met or ``max_tries`` draws
  were made; that sequence of draws is simulated from the per-class counts of eligible positions (a draw
  hits class k with probability N_k / (H * W)) to decide how many patches of each class the seed would
  have obtained, then those are taken from the rasterized labels.

Eligibility is computed per chunk (:func:`block_candidates`) on the chunk extended by ``patch_size - 1``
px below and to the right (so windows crossing chunk borders are judged on their full content) with box
sums of the nodata and labelled masks (summed-area tables; skipped when every window passes). The build
(:mod:`polarxr.cubegraph`) runs it in the task that cuts the chunk's patches; random mode keeps per chunk
only the ``samples_per_label`` smallest keys of each class, and merges them in a tree.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np

from polarxr.classes import N_CLASSES
from polarxr.errors import CubeError

MODES = ("random", "grid")
#: Code of scene-nodata pixels in the per-chunk eligibility input (labels use 0-2 and 255).
NODATA_CODE = np.uint8(254)
#: Draws simulated at once when emulating the seed's ``max_tries`` loop.
_TRY_BATCH = 1_000_000


class SamplingWarning(UserWarning):
    """A scene gave fewer patches of a class than asked (class absent from the chart, or max_tries hit)."""


@dataclass(frozen=True)
class SamplerConfig:
    """How patches are chosen. Sizes in pixels; fractions of the patch area in [0, 1]."""

    mode: str = "random"
    patch_size: int = 64
    samples_per_label: int = 100
    max_tries: int | None = None
    stride: int | None = None
    max_nodata: float = 0.1
    min_labelled: float = 0.0
    seed: int = 0

    def validate(self, where: object = None) -> None:
        """Raise :class:`CubeError` (naming ``where``) for an unknown mode or out-of-range parameter."""
        if self.mode not in MODES:
            raise CubeError(where, f"unknown sampler mode {self.mode!r}: use one of {', '.join(MODES)}")
        problems = []
        if self.patch_size < 1:
            problems.append(f"patch size must be at least 1 px, got {self.patch_size}")
        if self.samples_per_label < 1:
            problems.append(f"samples per label must be at least 1, got {self.samples_per_label}")
        if self.max_tries is not None and self.max_tries < 1:
            problems.append(f"max tries must be at least 1, got {self.max_tries}")
        if self.stride is not None and self.stride < 1:
            problems.append(f"stride must be at least 1 px, got {self.stride}")
        for name in ("max_nodata", "min_labelled"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name.replace('_', ' ')} must be a fraction in [0, 1], got {value}")
        if problems:
            raise CubeError(where, "; ".join(problems))

    @property
    def grid_stride(self) -> int:
        return self.stride or self.patch_size

    @property
    def max_nodata_px(self) -> int:
        """Most nodata pixels a patch may hold."""
        return math.floor(self.max_nodata * self.patch_size**2 + 1e-9)

    @property
    def min_labelled_px(self) -> int:
        """Fewest labelled pixels a patch must hold."""
        return math.ceil(self.min_labelled * self.patch_size**2 - 1e-9)

    def params(self) -> dict:
        """JSON-ready parameters (what the cube records); only those that apply to the mode."""
        out = asdict(self)
        if self.mode == "grid":
            out.pop("samples_per_label")
            out.pop("max_tries")
            out["stride"] = self.grid_stride
        else:
            out.pop("stride")
        return out


def scene_salt(seed: int, scene_name: str) -> int:
    """A 64-bit salt from the seed and the scene name: the same scene draws the same patches anywhere."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{scene_name}".encode(), digest_size=8).digest(), "little")


def position_keys(rows: np.ndarray, cols: np.ndarray, width: int, salt: int) -> np.ndarray:
    """Pseudo-random uint64 keys of pixel positions (splitmix64 of the linear index plus ``salt``)."""
    z = rows.astype(np.uint64) * np.uint64(width) + cols.astype(np.uint64)
    z += np.uint64(salt)
    # in place: the same values as the plain expressions, without a temporary per operation
    for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        z ^= z >> np.uint64(shift)
        z *= np.uint64(factor)
    z ^= z >> np.uint64(31)
    return z


def check_patch_fits(config: SamplerConfig, shape: tuple[int, int], chunks: tuple[tuple[int, ...], ...],
                     where: object) -> None:
    """:class:`CubeError` when the patch is larger than the scene or than a (non-final) chunk."""
    height, width = shape
    size = config.patch_size
    if size > height or size > width:
        raise CubeError(where, f"patch size {size} px is larger than the scene ({height} x {width} px)")
    for axis, sizes in zip("yx", chunks):
        regular = sizes[:-1] if len(sizes) > 1 else sizes
        if min(regular) < size:
            raise CubeError(where, f"patch size {size} px is larger than the scene's {axis} chunks "
                                   f"({min(regular)} px): use chunks (--chunk) of at least {size} px")


def core_chunks(sizes: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """Chunks whose every block can lend ``depth`` pixels to its neighbour: a short last one is merged."""
    sizes = list(sizes)
    if len(sizes) > 1 and sizes[-1] < depth:
        sizes[-2] += sizes.pop()
    return tuple(sizes)


def _integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table with a leading zero row and column (int32: a chunk holds far fewer than 2**31 px)."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=table[1:, 1:])
    return table


def _window_sums(table: np.ndarray, rows: slice, cols: slice, size: int) -> np.ndarray:
    """Sums over the ``size`` x ``size`` windows whose top-left corners are ``rows`` x ``cols`` (slices,
    so that the four corners are strided views of the table, not gathers)."""
    def shifted(s: slice, by: int) -> slice:
        return slice(s.start + by, s.stop + by, s.step)

    return (table[shifted(rows, size), shifted(cols, size)] - table[rows, shifted(cols, size)]
            - table[shifted(rows, size), cols] + table[rows, cols])


def block_candidates(
    code: np.ndarray,
    origin: tuple[int, int],
    core: tuple[int, int],
    scene_shape: tuple[int, int],
    config: SamplerConfig,
    salt: int,
) -> dict[str, np.ndarray]:
    """Candidates of one chunk (a dict of small arrays).

    ``code`` is the chunk whose top-left pixel is ``origin`` (global row, col) and whose size is ``core``,
    extended by up to ``patch_size - 1`` px below and to the right (within the scene; uint8: class 0-2,
    255 unlabelled, 254 nodata). Returns ``counts`` (eligible positions per class, int64 (3,)) and the
    candidates ``row``, ``col`` (global int32, row-major), ``label`` (uint8), ``key`` (uint64; random
    mode: per class only the ``samples_per_label`` smallest keys, as no more can ever be selected).
    """
    y0, x0 = int(origin[0]), int(origin[1])
    size = config.patch_size
    # positions whose window fits inside the scene
    n_rows = max(0, min(core[0], scene_shape[0] - size - y0 + 1))
    n_cols = max(0, min(core[1], scene_shape[1] - size - x0 + 1))
    # lattice of candidate top-left corners (local px): every position, or the global grid
    stride = config.grid_stride if config.mode == "grid" else 1
    rows = slice((-y0) % stride, max(n_rows, (-y0) % stride), stride)
    cols = slice((-x0) % stride, max(n_cols, (-x0) % stride), stride)
    empty = {"counts": np.zeros(N_CLASSES, np.int64), "row": np.empty(0, np.int32),
             "col": np.empty(0, np.int32), "label": np.empty(0, np.uint8), "key": np.empty(0, np.uint64)}
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return empty
    centre = code[size // 2:, size // 2:][rows, cols]
    eligible = centre < N_CLASSES
    if config.max_nodata_px < size * size:  # otherwise every window passes: no sums needed
        eligible &= _window_sums(_integral(code == NODATA_CODE), rows, cols, size) <= config.max_nodata_px
    if config.min_labelled_px > 0:
        eligible &= _window_sums(_integral(code < N_CLASSES), rows, cols, size) >= config.min_labelled_px
    if config.mode == "random":
        return _random_candidates(np.where(eligible, centre, np.uint8(255)), rows.start + y0, cols.start + x0,
                                  scene_shape[1], salt, config.samples_per_label)
    r_idx, c_idx = np.nonzero(eligible)
    labels = centre[r_idx, c_idx]
    g_rows = (r_idx * stride + rows.start + y0).astype(np.int32)
    g_cols = (c_idx * stride + cols.start + x0).astype(np.int32)
    counts = np.bincount(labels, minlength=N_CLASSES)[:N_CLASSES].astype(np.int64)
    return dict(empty, counts=counts, row=g_rows, col=g_cols, label=labels)


def _random_candidates(labels: np.ndarray, row0: int, col0: int, width: int, salt: int, quota: int) -> dict:
    """Random mode's candidates of a chunk: per class the ``quota`` smallest keys among the eligible
    positions, ``labels`` (class, 255 = not eligible) on the chunk's every position from ``(row0, col0)``.

    Keys are computed for the whole lattice at once; since they are uniform (splitmix64 is a bijection,
    so no two positions share one), a class with many positions is first cut to those below 3x the
    expected quantile of its ``quota``-th key (all of them again in the rare case that leaves too few),
    so the exact selection sorts only a few candidates."""
    n_cols = labels.shape[1]
    counts = np.bincount(labels.reshape(-1), minlength=256)[:N_CLASSES].astype(np.int64)
    keys = position_keys(np.arange(row0, row0 + labels.shape[0])[:, None],
                         np.arange(col0, col0 + n_cols)[None, :], width, salt).reshape(-1)
    flat = labels.reshape(-1)
    keep = []
    for k in range(N_CLASSES):
        n = int(counts[k])
        if n == 0:
            continue
        if n <= quota:
            keep.append(np.flatnonzero(flat == k))
            continue
        fraction = 3.0 * quota / n + 1e-6
        members = None
        if fraction < 1.0:
            members = np.flatnonzero((flat == k) & (keys < np.uint64(int(fraction * 2.0**64))))
        if members is None or len(members) < quota:
            members = np.flatnonzero(flat == k)
        keep.append(members[np.argpartition(keys[members], quota - 1)[:quota]])
    keep = np.sort(np.concatenate(keep)) if keep else np.empty(0, np.int64)
    rows, cols = np.divmod(keep, n_cols)
    return {"counts": counts, "row": (rows + row0).astype(np.int32), "col": (cols + col0).astype(np.int32),
            "label": flat[keep], "key": keys[keep]}


def smallest_keys(labels: np.ndarray, keys: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  quota: np.ndarray | int) -> np.ndarray:
    """Indices of the ``quota`` (per class) smallest ``(key, row, col)`` candidates of each class, sorted."""
    quota = np.broadcast_to(np.asarray(quota), (N_CLASSES,))
    chosen = []
    for k in range(N_CLASSES):
        members = np.flatnonzero(labels == k)
        order = np.lexsort((cols[members], rows[members], keys[members]))
        chosen.append(members[order[: int(quota[k])]])
    return np.sort(np.concatenate(chosen))


def simulate_tries(eligible: np.ndarray, quota: int, n_positions: int, max_tries: int, salt: int
                   ) -> tuple[np.ndarray, int]:
    """The seed's loop: ``(accepted per class, draws made)`` for uniform draws over ``n_positions``.

    A draw hits class k with probability ``eligible[k] / n_positions``; the loop stops when every class
    has ``quota`` hits or after ``max_tries`` draws. Accepted counts are capped by the eligible counts.
    """
    rng = np.random.default_rng(salt)
    probs = np.append(eligible / n_positions, max(0.0, 1.0 - eligible.sum() / n_positions))
    probs /= probs.sum()
    hits = np.zeros(len(eligible), np.int64)
    done = 0
    while done < max_tries:
        draws = rng.choice(len(probs), size=min(_TRY_BATCH, max_tries - done), p=probs)
        cumulative = hits[:, None] + np.cumsum(draws[None, :] == np.arange(len(eligible))[:, None], axis=1)
        met = (cumulative >= quota).all(axis=0)
        if met.any():
            stop = int(np.argmax(met))
            return np.minimum(np.minimum(cumulative[:, stop], quota), eligible), done + stop + 1
        hits = cumulative[:, -1]
        done += len(draws)
    return np.minimum(np.minimum(hits, quota), eligible), done
