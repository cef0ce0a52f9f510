"""The training cube's build as one dask graph for all scenes: each scene read and rasterized once.

Tasks (every scene's pixels are read by the scene's own chunk tasks, once per graph):

- **block** (one per chunk of a scene, :func:`block_task`): the chunk of the scene and of its rasterized
  chart, extended by ``patch_size - 1`` px below and to the right (slices of the chunk tasks, so a chunk is
  read and rasterized once and lent to its neighbours), gives the chunk's eligible positions
  (:func:`polarxr.samplers.block_candidates`) and cuts their patches right away: grid mode keeps them all
  (with their statistics), random mode its candidates (at most ``samples_per_label`` per class).
- random mode: a **tree** of merges keeps, per class, the ``samples_per_label`` smallest keys of the
  candidates below it (with their patches), so at most a few merges' candidates are held at once; its root
  (:func:`choose_random`) makes the scene's draw.
- **producers** (the grid blocks, or the random draw of a scene), in cube order: an offset chain (tiny
  tasks adding the counts) gives each its first index; **write** (:func:`write_interior`) writes the
  whole shards inside its range; the **seam** chain (:func:`seam`) writes the shards shared between
  neighbouring producers (and scenes), one shard per step.
- **commit** chain (:func:`commit_scene`), one per scene in order: writes the scene's per-patch vectors and
  commits it (the group's ``zarr.json``, atomically), once its last seam is on disk.

So no two tasks write the same file at once, nothing is read twice, workers never wait for a scene to
finish before the next one starts, and the commit protocol of :mod:`polarxr.cube` holds: a scene is
visible only once committed, in order.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np

from polarxr.classes import CLASS_NAMES, N_CLASSES, NO_LABEL
from polarxr.errors import CubeError
from polarxr.patches import cut_windows, labels_where_valid, merge_stats, patch_stats
from polarxr.samplers import (NODATA_CODE, SamplerConfig, SamplingWarning, block_candidates, core_chunks,
                              scene_salt, simulate_tries, smallest_keys)
from polarxr.shards import ShardWriter

#: candidates merged per task of the random mode's tree
MERGE_FAN_IN = 8


# ------------------------------------------------------------------------------------------- tasks
def block_task(window_parts: list[np.ndarray], chart_parts: list[np.ndarray], places: list[tuple],
               shape: tuple[int, ...], *, block: int, origin: tuple[int, int], core: tuple[int, int],
               scene_shape: tuple[int, int], config: SamplerConfig, salt: int, nodata: float | None) -> dict:
    """One chunk: its candidates and their patches (``image``, ``labels``), grid mode with ``stats``.

    The window (the chunk and its margin) is assembled from ``window_parts`` / ``chart_parts``: the
    chunk itself and the margins sliced off its neighbours where they were read (:func:`_window_parts`)."""
    window = assemble(window_parts, places, shape)
    raster = assemble(chart_parts, places, shape[-2:])
    code = labels_where_valid(window, raster, nodata, NODATA_CODE)
    del raster
    found = block_candidates(code, origin, core, scene_shape, config, salt)
    size = config.patch_size
    rows, cols = found["row"] - origin[0], found["col"] - origin[1]
    found["image"] = cut_windows(window, rows, cols, size)
    labels = cut_windows(code, rows, cols, size)
    valid = labels != NODATA_CODE  # the code is 254 exactly where the scene has no data
    labels[~valid] = NO_LABEL
    found["labels"] = labels
    found["block"] = np.full(len(rows), block, np.int32)
    if config.mode == "grid":
        found["stats"] = [patch_stats(found["image"], labels, nodata, valid=valid)] if len(rows) else []
    return found


_FIELDS = ("row", "col", "label", "key", "block", "image", "labels")


def merge_candidates(parts: list[dict], quota: int) -> dict:
    """Candidates of several chunks: per class the ``quota`` smallest keys, in (block, row, col) order."""
    small = ("row", "col", "label", "key", "block")
    merged = {name: np.concatenate([p[name] for p in parts]) for name in small}
    counts = np.sum([p["counts"] for p in parts], axis=0)
    keep = smallest_keys(merged["label"], merged["key"], merged["row"], merged["col"], quota)
    order = keep[np.lexsort((merged["col"][keep], merged["row"][keep], merged["block"][keep]))]
    out = {name: merged[name][order] for name in small}
    out.update(_gather_patches(parts, order))
    out["counts"] = counts
    return out


def _gather_patches(parts: list[dict], order: np.ndarray) -> dict:
    """``image`` and ``labels`` of the concatenated parts at ``order``, copying only those patches."""
    ends = np.cumsum([len(p["row"]) for p in parts])
    which = np.searchsorted(ends, order, side="right")
    local = order - np.concatenate([[0], ends[:-1]])[which]
    out = {}
    for name in ("image", "labels"):
        template = parts[0][name]
        values = np.empty((len(order), *template.shape[1:]), dtype=template.dtype)
        for p in np.unique(which):
            at = which == p
            values[at] = parts[p][name][local[at]]
        out[name] = values
    return out


def _draw_summary(eligible: np.ndarray, requested: dict | None, accepted: np.ndarray, tries: int | None,
                  shortfall: dict) -> dict:
    def codes(d):
        return None if d is None else {str(k): int(v) for k, v in d.items()}

    return {"eligible": codes(dict(enumerate(eligible))), "requested": codes(requested),
            "accepted": codes(dict(enumerate(accepted))), "tries": tries, "shortfall": codes(shortfall)}


def _no_patch(config: SamplerConfig, where: str, chart: str | None) -> CubeError:
    return CubeError(where, f"no {config.patch_size} px patch fits the sampler's rules (centre pixel "
                            f"labelled by the chart {chart}, at most {config.max_nodata:g} nodata, at least "
                            f"{config.min_labelled:g} labelled): check the chart covers the scene's data")


def _block_stats(produced: dict, nodata: float | None) -> list[dict]:
    """Statistics per chunk group of patches, in order (the grouping the cube's records always used)."""
    blocks, starts = np.unique(produced["block"], return_index=True)
    bounds = np.append(np.sort(starts), len(produced["block"]))
    return [patch_stats(produced["image"][lo:hi], produced["labels"][lo:hi], nodata)
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def choose_random(merged: dict, *, config: SamplerConfig, scene_shape: tuple[int, int], salt: int,
                  where: str, chart: str | None, nodata: float | None) -> dict:
    """The random draw of one scene from its merged candidates: the producer of its patches."""
    eligible = merged["counts"]
    quota = config.samples_per_label
    requested = {k: quota for k in range(N_CLASSES)}
    tries = None
    if config.max_tries is None:
        accepted = np.minimum(eligible, quota)
    else:
        accepted, tries = simulate_tries(eligible, quota, scene_shape[0] * scene_shape[1], config.max_tries, salt)
    keep = smallest_keys(merged["label"], merged["key"], merged["row"], merged["col"], accepted)
    order = keep[np.lexsort((merged["col"][keep], merged["row"][keep], merged["block"][keep]))]
    produced = {name: merged[name][order] for name in _FIELDS}
    if not len(order):
        raise _no_patch(config, where, chart)
    shortfall = {k: requested[k] - int(accepted[k]) for k in requested if accepted[k] < requested[k]}
    produced["stats"] = _block_stats(produced, nodata)
    produced["summary"] = _scene_summary(produced, eligible, requested, accepted, tries, shortfall, config)
    return produced


def _scene_summary(parts: dict, eligible, requested, accepted, tries, shortfall, config: SamplerConfig) -> dict:
    reasons = {}
    for k, missing in shortfall.items():
        reasons[k] = ("the chart labels no eligible position of this class" if eligible[k] == 0 else
                      f"only {eligible[k]} eligible positions" if eligible[k] < requested[k] else
                      f"max_tries={config.max_tries} reached after {tries} draws")
    return {"row": parts["row"], "col": parts["col"], "label": parts["label"], "stats": parts["stats"],
            "sampling": _draw_summary(eligible, requested, accepted, tries, shortfall), "reasons": reasons}


def producer_meta(produced: dict) -> dict:
    """The small part of a producer (everything but its patches)."""
    return {name: value for name, value in produced.items() if name not in ("image", "labels", "key")}


def grid_summary(metas: list[dict], *, config: SamplerConfig, where: str, chart: str | None) -> dict:
    """The record of a grid scene from its chunks' small parts (in cube order)."""
    eligible = np.sum([m["counts"] for m in metas], axis=0)
    parts = {name: np.concatenate([m[name] for m in metas]) for name in ("row", "col", "label")}
    if not len(parts["row"]):
        raise _no_patch(config, where, chart)
    parts["stats"] = [s for m in metas for s in m["stats"]]
    return _scene_summary(parts, eligible, None, eligible, None, {}, config)


def count(meta: dict) -> int:
    return int(len(meta["row"]))


def write_interior(produced: dict, offset: int, cube: str, shard: int) -> tuple[tuple, tuple]:
    """Write the whole shards inside ``[offset, offset + n)``; the pieces at both ends for the seam chain."""
    image, labels = produced["image"], produced["labels"]
    end = offset + len(image)
    first, last = -(-offset // shard) * shard, (end // shard) * shard
    if first > last:  # inside one shard
        return (offset, image, labels), (end, image[:0], labels[:0])
    if first < last:
        writers = ShardWriter(Path(cube) / "image"), ShardWriter(Path(cube) / "label")
        for s in range(first // shard, last // shard):
            lo, hi = s * shard - offset, (s + 1) * shard - offset
            writers[0].write(s, image[lo:hi])
            writers[1].write(s, labels[lo:hi])
    head = (offset, image[:first - offset], labels[:first - offset])
    tail = (last, image[last - offset:], labels[last - offset:])
    return head, tail


def seam(pending: tuple, pieces: tuple, flush: bool, cube: str, shard: int) -> tuple:
    """The shard shared with the previous producers: ``pending`` is ``(start, image, labels)`` of the
    shard being filled (``start`` a shard boundary); adds the producer's head, writes the shard when full,
    continues with its tail. ``flush``: the end of a scene, whose last shard is written now (a later
    producer rewrites it whole when it adds patches to it)."""
    start, image, labels = pending
    (head_at, head_image, head_labels), (tail_at, tail_image, tail_labels) = pieces
    writers = None
    if len(head_image):
        if head_at != start + len(image):
            raise RuntimeError(f"cube seam out of order: piece at {head_at}, shard filled to {start + len(image)}")
        image, labels = np.concatenate([image, head_image]), np.concatenate([labels, head_labels])
        if len(image) == shard:
            writers = ShardWriter(Path(cube) / "image"), ShardWriter(Path(cube) / "label")
            writers[0].write(start // shard, image)
            writers[1].write(start // shard, labels)
            start, image, labels = start + shard, image[:0], labels[:0]
    if tail_at != start + len(image):  # crossed shards: the tail starts the next one
        if len(image):
            raise RuntimeError(f"cube seam: shard at {start} left incomplete before {tail_at}")
        start = tail_at
    if len(tail_image):
        image, labels = np.concatenate([image, tail_image]), np.concatenate([labels, tail_labels])
    if flush and len(image):
        writers = writers or (ShardWriter(Path(cube) / "image"), ShardWriter(Path(cube) / "label"))
        writers[0].write(start // shard, image)
        writers[1].write(start // shard, labels)
    return start, image, labels


@dataclass(frozen=True)
class SceneInfo:
    """What the commit of one scene records beside its draw."""

    name: str
    source: str
    chart: str
    shape: tuple[int, int]
    start_time: str | None
    split: str
    split_code: int
    transform: tuple[float, ...]
    config: SamplerConfig


def commit_scene(records: list[dict], _seam_done, summary: dict, *, info: SceneInfo, cube: str,
                 summarise: Callable[[list[dict]], dict]) -> list[dict]:
    """Write the scene's per-patch vectors, then commit it (idempotent: a rerun after a lost worker finds
    it committed already), with the group attributes ``summarise(records)`` (the cube's own,
    :func:`polarxr.cube.summary_attrs`). Returns the records with this scene's."""
    import zarr
    from affine import Affine

    from polarxr import __version__

    size = info.config.patch_size
    start = int(sum(r["count"] for r in records))
    rows, cols, labels = summary["row"], summary["col"], summary["label"]
    n = len(rows)
    counts = np.bincount(labels, minlength=N_CLASSES)
    record = {
        "name": info.name, "source": info.source, "chart": info.chart, "start": start, "count": n,
        "split": info.split, "shape": [int(s) for s in info.shape], "start_time": info.start_time,
        "patch_counts": {str(k): int(counts[k]) for k in range(N_CLASSES)},
        "sampler": {"mode": info.config.mode, **info.config.params()}, "sampling": summary["sampling"],
        "stats": merge_stats(list(summary["stats"])),
    }
    records = [*records, record]
    root = zarr.open_group(cube, mode="r+")
    stored = int(root.attrs.get("n_patches", 0))
    if stored == start + n and [r["name"] for r in root.attrs.get("scene_records", [])] == [r["name"] for r in records]:
        return records  # committed by an earlier try of this task
    if stored != start:
        raise CubeError(cube, f"was changed by another writer meanwhile ({stored} committed patches, "
                              f"{start} expected); nothing more was committed, run again")
    xs, ys = Affine(*info.transform[:6]) * (cols + size / 2, rows + size / 2)
    values = {"patch_label": labels, "scene": np.full(n, len(records) - 1, np.int32), "row": rows, "col": cols,
              "x": np.asarray(xs, np.float64), "y": np.asarray(ys, np.float64),
              "split": np.full(n, info.split_code, np.uint8)}
    for name, value in values.items():
        root[name][start:start + n] = value
    root.update_attributes({**summarise(records), "version": __version__})
    return records


# ------------------------------------------------------------------------------------------- graph
@dataclass
class SceneGraph:
    """One scene's part of the graph: its producers (in cube order), their small parts, its summary."""

    info: SceneInfo
    producers: list
    metas: list
    summary: object
    upper_bound: int


def assemble(parts: list[np.ndarray], places: list[tuple], shape: tuple[int, ...]) -> np.ndarray:
    """One window from pieces of chunks: ``places`` are ``(window rows, window cols, chunk rows, chunk
    cols)`` slices per part."""
    out = np.empty(shape, dtype=parts[0].dtype)
    for part, (wy, wx, cy, cx) in zip(parts, places):
        out[..., wy, wx] = part[..., cy, cx]
    return out


def _margin(chunk: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    return np.ascontiguousarray(chunk[..., rows, cols])


def _window_parts(array, core: tuple[tuple[int, ...], tuple[int, ...]], depth: int) -> dict:
    """Per chunk of ``core`` (row-major): ``(parts, places, shape)`` of its window extended by ``depth`` px
    below and to the right. Parts are the array's own chunk tasks (the whole chunk) or slices of them
    taken where the chunk lives (a neighbour's margin), so each chunk is computed (read, rasterized)
    once and only margins travel between workers; dask would otherwise fuse each slice into a read of
    its own."""
    if array.ndim == 3 and len(array.chunks[0]) > 1:
        array = array.rechunk({0: -1})
    chunks = array.to_delayed()
    chunks = chunks.reshape(chunks.shape[-2:])
    lead = array.shape[:-2]
    height, width = array.shape[-2:]
    edges = [np.concatenate([[0], np.cumsum(c)]) for c in array.chunks[-2:]]
    y_edges = np.concatenate([[0], np.cumsum(core[0])])
    x_edges = np.concatenate([[0], np.cumsum(core[1])])
    out = {}
    for i in range(len(core[0])):
        for j in range(len(core[1])):
            y0, y1 = int(y_edges[i]), min(height, int(y_edges[i + 1]) + depth)
            x0, x1 = int(x_edges[j]), min(width, int(x_edges[j + 1]) + depth)
            parts, places = [], []
            for ci in range(len(edges[0]) - 1):
                cy0, cy1 = int(edges[0][ci]), int(edges[0][ci + 1])
                if cy1 <= y0 or cy0 >= y1:
                    continue
                for cj in range(len(edges[1]) - 1):
                    cx0, cx1 = int(edges[1][cj]), int(edges[1][cj + 1])
                    if cx1 <= x0 or cx0 >= x1:
                        continue
                    ly0, ly1, lx0, lx1 = max(y0, cy0), min(y1, cy1), max(x0, cx0), min(x1, cx1)
                    rows, cols = slice(ly0 - cy0, ly1 - cy0), slice(lx0 - cx0, lx1 - cx0)
                    whole = (ly0, ly1, lx0, lx1) == (cy0, cy1, cx0, cx1)
                    parts.append(chunks[ci, cj] if whole else dask.delayed(_margin, pure=True)(chunks[ci, cj], rows, cols))
                    places.append((slice(ly0 - y0, ly1 - y0), slice(lx0 - x0, lx1 - x0),
                                   slice(None) if whole else slice(0, ly1 - ly0),
                                   slice(None) if whole else slice(0, lx1 - lx0)))
            out[i, j] = parts, places, (*lead, y1 - y0, x1 - x0)
    return out


def scene_graph(scene, raster, config: SamplerConfig, info: SceneInfo) -> SceneGraph:
    """The block tasks of one scene, and (random mode) its draw."""
    where = str(scene.attrs.get("source", info.name))
    chart = raster.attrs.get("chart")
    size = config.patch_size
    depth = size - 1
    core = tuple(core_chunks(c, depth) for c in scene.data.chunks[1:])
    salt = scene_salt(config.seed, info.name)
    nodata = scene.rio.nodata
    shape = tuple(int(s) for s in raster.shape)
    windows = _window_parts(scene.data, core, depth)
    labels = _window_parts(raster.data, core, depth)
    y_edges = np.concatenate([[0], np.cumsum(core[0])])
    x_edges = np.concatenate([[0], np.cumsum(core[1])])
    blocks = []
    for b, (i, j) in enumerate(windows):
        (scene_parts, places, window_shape), (chart_parts, _, _) = windows[i, j], labels[i, j]
        blocks.append(dask.delayed(block_task, pure=True)(
            scene_parts, chart_parts, places, window_shape, block=b, origin=(int(y_edges[i]), int(x_edges[j])),
            core=(int(core[0][i]), int(core[1][j])), scene_shape=shape, config=config, salt=salt, nodata=nodata,
            dask_key_name=f"cube-block-{info.name}-{b}-{dask.base.tokenize(config, where)}"))
    token = dask.base.tokenize(config, where, "draw")
    if config.mode == "grid":
        metas = [dask.delayed(producer_meta, pure=True)(b) for b in blocks]
        summary = dask.delayed(grid_summary, pure=True)(metas, config=config, where=where, chart=chart,
                                                         dask_key_name=f"cube-summary-{info.name}-{token}")
        stride = config.grid_stride
        bound = ((shape[0] - size) // stride + 1) * ((shape[1] - size) // stride + 1)
        return SceneGraph(info, blocks, metas, summary, bound)
    level, depth_level = blocks, 0
    while len(level) > 1:
        level = [dask.delayed(merge_candidates, pure=True)(
            level[k:k + MERGE_FAN_IN], config.samples_per_label,
            dask_key_name=f"cube-merge-{info.name}-{depth_level}-{k}-{token}")
            for k in range(0, len(level), MERGE_FAN_IN)]
        depth_level += 1
    if depth_level == 0:
        level = [dask.delayed(merge_candidates, pure=True)(level, config.samples_per_label)]
    root = dask.delayed(choose_random, pure=True)(
        level[0], config=config, scene_shape=shape, salt=salt, where=where, chart=chart, nodata=nodata,
        dask_key_name=f"cube-draw-{info.name}-{token}")
    meta = dask.delayed(producer_meta, pure=True)(root)
    summary = dask.delayed(operator.getitem, pure=True)(meta, "summary")
    bound = min(N_CLASSES * config.samples_per_label, (shape[0] - size + 1) * (shape[1] - size + 1))
    return SceneGraph(info, [root], [meta], summary, bound)


def build_graph(scenes: list[SceneGraph], cube: str, committed: int, pending: tuple, records: list[dict],
                shard: int, summarise: Callable[[list[dict]], dict]) -> list:
    """The write, seam and commit chains over every scene's producers: one delayed commit per scene;
    ``summarise(records)`` gives the group attributes each commit writes."""
    offset = committed
    state = pending
    commits = []
    token = dask.base.tokenize(cube, committed, [s.info for s in scenes])
    for k, scene in enumerate(scenes):
        last = len(scene.producers) - 1
        for p, (produced, meta) in enumerate(zip(scene.producers, scene.metas)):
            pieces = dask.delayed(write_interior, pure=True)(
                produced, offset, cube, shard, dask_key_name=f"cube-write-{scene.info.name}-{p}-{token}")
            state = dask.delayed(seam, pure=True)(
                state, pieces, p == last, cube, shard, dask_key_name=f"cube-seam-{scene.info.name}-{p}-{token}")
            offset = dask.delayed(operator.add, pure=True)(offset, dask.delayed(count, pure=True)(meta))
        previous = commits[-1] if commits else records
        commits.append(dask.delayed(commit_scene, pure=True)(
            previous, state, scene.summary, info=scene.info, cube=cube, summarise=summarise,
            dask_key_name=f"cube-commit-{k}-{scene.info.name}-{token}"))
    return commits


def warn_shortfalls(summary: dict, where: str, requested: int) -> None:
    """The :class:`SamplingWarning` of each class short of its quota (on the client, after the build)."""
    accepted = summary["sampling"]["accepted"]
    for k, reason in summary["reasons"].items():
        warnings.warn(f"{where}: {accepted[str(k)]} of {requested} {CLASS_NAMES[int(k)]} patches ({reason})",
                      SamplingWarning, stacklevel=3)
