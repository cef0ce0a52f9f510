"""The Zarr v3 training cube: building it scene by scene from scenes and charts, and reading it back.

Layout (one Zarr v3 group; ``P`` = patch size, ``n`` = patches)::

    image       (patch, band, y, x)  scene dtype (uint8 DN or float32 sigma0), nodata as in the scene
    label       (patch, y, x)        uint8 dense chart labels: L=0, W=1, I=2, 255 = no label / nodata
    patch_label (patch,)             uint8 class of the centre pixel (row + P//2, col + P//2)
    scene       (patch,)             int32 index into attrs["scenes"]
    row, col    (patch,)             int32 top-left pixel of the patch in its scene
    x, y        (patch,)             float64 map coordinates of the patch centre, in attrs["crs"] (metres)
    split       (patch,)             uint8 code of attrs["split_codes"] (train 0, val 1, test 2)

Group attributes: ``crs`` (WKT), ``patch_size``, ``band_names``, ``dtype``, ``nodata``, ``units``,
``polarisation`` and ``scaling`` (what the values mean, :mod:`polarxr.radiometry`), ``sampler`` and
``sampler_params`` (of the build that created the cube; each scene record keeps its own), ``scenes``
(names), ``splits`` (scene -> split), ``split_codes``, ``class_counts`` (dense label pixels per class code
in the train patches, for class weighting), ``patch_counts`` (split -> class code -> patches, by
``patch_label``), ``norm`` (per-band ``mean``/``std`` over valid pixels of the train patches),
``n_patches`` (committed patches), ``scene_records`` (per scene: source, chart, first patch, count, split,
sampler, draw summary, statistics), ``version`` and ``format``.

Storage: ``image`` and ``label`` are **sharded**: one shard file holds 256 patches in inner chunks of 8
patches ``(8, band, P, P)``. A DataLoader reading random patches decompresses just the chunks holding them
(the shard index gives their byte ranges), while the store holds one file per 256 patches and array instead
of one per patch; plain chunks of 256 patches would decompress 256 patches for each one read (about 6x
slower random reads measured on 64 px 8-bit patches). Compression: Blosc LZ4 with bit-shuffle (speckled
backscatter compresses best bit-plane-wise: 0.68 of the raw size on synthetic 8-bit scenes; labels are
long runs). Measured (``benchmarks/cube_bench.py --storage``, ``benchmarks/results/writing_cpu.md``): 8
patches per chunk with LZ4 write 6.9x faster than one patch per chunk with zstd-5 and read random batches
of 28 patches as fast; zstd-1/3 save 1-2 % of space for a 1.5x slower write. The per-patch vectors are
chunks of 65536.

Building: all scenes of a run are one dask graph (:mod:`polarxr.cubegraph`) on the active scheduler (a
``distributed`` client when one is set up: workers write their patches into the store themselves, so every
worker must see the cube's path). Each chunk of a scene is read and its chart rasterized once; the task of
each chunk finds its eligible positions (:mod:`polarxr.samplers`) and cuts their patches from the chunk and
its neighbours' margins. Grid chunks are written as soon as the counts before them are known (an offset
chain); random mode merges its candidates in a tree and draws per scene. Each task writes only the whole
shards inside its range (:class:`polarxr.shards.ShardWriter`, the bytes zarr writes); a chain of seam
tasks writes the shards shared between neighbouring chunks and scenes, one after another, so no two tasks
ever write the same file at once. Scenes do not wait for each other: small scenes keep workers busy.

Appending and interruptions: a run's scenes are appended in order. Their patches are written first
(arrays grown beyond the committed count), and each scene is **committed** by a task of the graph, in
order and only once its last shard is written, by one atomic rewrite of the group's ``zarr.json``
(``n_patches`` and ``scene_records``) after its per-patch vectors. Readers use only the first
``n_patches`` patches; a writer first truncates anything beyond them (the remains of an interrupted run).
So a build killed at any moment leaves a cube that opens with only complete scenes, and re-running it
appends the rest, giving the same cube as an uninterrupted build. A scene already in the cube (by name)
is skipped, or with ``overwrite=True`` removed and appended again.

One writer at a time: a writer holds the cube's lock (:func:`writer_lock`, a ``filelock`` beside the
cube named ``.<cube>.lock``) for its whole lifetime; a second writer waits for it, with a message, then
re-reads what was committed meanwhile (so scenes the first one added are skipped, not added twice), and
every commit re-reads the committed count first. The lock is an OS file lock, released when its process
dies, so a killed writer never leaves the cube locked.

Split: by scene, never by patch, so that neighbouring patches of one scene are never on both sides.
Explicit assignments (scene name or part of it -> split) win; other scenes are assigned in the order
they are added to the split whose share of scenes is furthest below its target fraction (ties: train,
val, test), which never moves a scene that is already in the cube.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from pyproj import CRS
from zarr.codecs import BloscCodec

from polarxr.classes import N_CLASSES, NO_LABEL
from polarxr.errors import CubeError
from polarxr.graphs import active_client, compute_together, submit_together
from polarxr.patches import merge_stats
from polarxr.samplers import SamplerConfig, check_patch_fits

FORMAT = "polarxr-training-cube/1"
#: patches per shard file of ``image`` and ``label``
SHARD = 256
#: patches per inner (compressed) chunk of a shard: what one random read decompresses
CHUNK_PATCHES = 8
#: elements per chunk of the per-patch vectors
VECTOR_CHUNK = 65536
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: split name -> code stored in the ``split`` array
SPLIT_CODES: dict[str, int] = {name: code for code, name in enumerate(SPLITS)}
#: per-patch vectors: name -> (dtype, fill value)
VECTORS: dict[str, tuple[str, float | int]] = {
    "patch_label": ("uint8", NO_LABEL), "scene": ("int32", -1), "row": ("int32", -1), "col": ("int32", -1),
    "x": ("float64", math.nan), "y": ("float64", math.nan), "split": ("uint8", 255),
}
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class CubeLayout:
    """What every patch of a cube shares: size (px), bands, dtype, nodata value, CRS (WKT or None), and
    what the values mean (:mod:`polarxr.radiometry`: units, polarisation, DN scaling; None = unknown)."""

    patch_size: int
    band_names: tuple[str, ...]
    dtype: str
    nodata: float | None
    crs: str | None
    units: str | None = None
    polarisation: str | None = None
    scaling: dict | None = None

    @classmethod
    def of_scene(cls, scene: xr.DataArray, patch_size: int) -> CubeLayout:
        from polarxr.radiometry import radiometry

        nodata = scene.rio.nodata
        values = radiometry(scene)
        return cls(patch_size, tuple(str(b) for b in scene.band.values), str(scene.dtype),
                   None if nodata is None or np.isnan(nodata) else float(nodata),
                   scene.rio.crs.to_wkt() if scene.rio.crs is not None else None,
                   values["units"], values["polarisation"], values["scaling"])

    @classmethod
    def of_attrs(cls, attrs: dict) -> CubeLayout:
        return cls(int(attrs["patch_size"]), tuple(attrs["band_names"]), str(attrs["dtype"]),
                   attrs.get("nodata"), attrs.get("crs"), attrs.get("units"), attrs.get("polarisation"),
                   attrs.get("scaling"))

    def attrs(self) -> dict:
        return {"patch_size": self.patch_size, "band_names": list(self.band_names), "dtype": self.dtype,
                "nodata": self.nodata, "crs": self.crs, "units": self.units, "polarisation": self.polarisation,
                "scaling": self.scaling}

    def radiometry(self) -> dict:
        """The :func:`polarxr.radiometry.radiometry` record of the cube's patches."""
        return {"units": self.units, "dtype": self.dtype, "polarisation": self.polarisation, "scaling": self.scaling}

    def check_matches(self, other: CubeLayout, where: object, what: str) -> None:
        """:class:`CubeError` naming ``where`` when ``other`` (of ``what``) cannot share a cube with this."""
        problems = []
        if other.patch_size != self.patch_size:
            problems.append(f"patch size {other.patch_size} px, the cube's is {self.patch_size} px")
        if other.band_names != self.band_names:
            problems.append(f"bands {list(other.band_names)}, the cube's are {list(self.band_names)}")
        if other.dtype != self.dtype:
            problems.append(f"data type {other.dtype}, the cube's is {self.dtype}")
        from polarxr.radiometry import FIELDS, differences

        problems += [p.replace("trained on", "the cube's is") for p in differences(
            {k: v for k, v in self.radiometry().items() if k != "dtype"},
            {k: v for k, v in other.radiometry().items() if k in FIELDS})]
        if self.crs and other.crs and not CRS.from_wkt(self.crs).equals(CRS.from_wkt(other.crs)):
            problems.append(f"CRS {CRS.from_wkt(other.crs).name!r}, the cube's is {CRS.from_wkt(self.crs).name!r}")
        if problems:
            raise CubeError(where, f"{what} cannot go into this cube: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- split
@dataclass(frozen=True)
class SplitConfig:
    """Scene-level split: target ``fractions`` of scenes (train, val, test) and explicit assignments.

    ``assign`` pairs a scene name, or any part of it (such as ``"20180316"``), with a split name.
    """

    fractions: tuple[float, float, float] = (0.8, 0.2, 0.0)
    assign: tuple[tuple[str, str], ...] = ()

    def validate(self, where: object = None) -> None:
        if len(self.fractions) != len(SPLITS) or any(f < 0 for f in self.fractions) or sum(self.fractions) <= 0:
            raise CubeError(where, f"split fractions must be 3 non-negative numbers (train, val, test) with a "
                                   f"positive sum, got {list(self.fractions)}")
        for pattern, split in self.assign:
            if split not in SPLITS:
                raise CubeError(where, f"unknown split {split!r} for {pattern!r}: use one of {', '.join(SPLITS)}")

    def explicit(self, name: str) -> str | None:
        """The split assigned to scene ``name`` explicitly, if any."""
        chosen = {split for pattern, split in self.assign if pattern in name}
        if len(chosen) > 1:
            raise CubeError(None, f"scene {name} is assigned to several splits: {sorted(chosen)}")
        return chosen.pop() if chosen else None

    def choose(self, name: str, existing: Sequence[str]) -> str:
        """Split of a new scene, given the splits of the scenes already in the cube."""
        explicit = self.explicit(name)
        if explicit:
            return explicit
        total = np.asarray(self.fractions, np.float64) / sum(self.fractions)
        n = len(existing) + 1
        deficit = [total[k] * n - sum(s == split for s in existing) for k, split in enumerate(SPLITS)]
        return SPLITS[int(np.argmax(deficit))]


# --------------------------------------------------------------------------------------------- writer
@contextlib.contextmanager
def writer_lock(cube_path: str | Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the writer lock of the cube at ``cube_path`` (waiting for another writer to finish first).

    ``on_wait(message)`` is called once when another run holds it (default: a logged warning). Raises
    :class:`CubeError` when the lock file cannot be created (a read-only folder).
    """
    from filelock import FileLock, Timeout

    path = Path(cube_path)
    lock = FileLock(path.with_name(f".{path.name}.lock"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            (on_wait or log.warning)(f"{path}: another polarxr run is writing to this cube; waiting for it to finish")
            lock.acquire()
    except OSError as err:
        raise CubeError(path, f"cannot lock the cube for writing ({err.strerror or err})") from None
    try:
        yield
    finally:
        lock.release()


def open_cube_group(path: str | Path) -> tuple[zarr.Group, int]:
    """The cube's Zarr group (read-only) and its number of committed patches; :class:`CubeError` if unusable."""
    path = Path(path)
    if not path.exists():
        raise CubeError(path, "training cube does not exist")
    try:
        root = zarr.open_group(path, mode="r")
    except (zarr.errors.GroupNotFoundError, FileNotFoundError, ValueError) as err:
        raise CubeError(path, f"is not a Zarr group ({err})") from None
    missing = [name for name in ("image", "label", "patch_label", "split") if name not in root]
    if missing:
        raise CubeError(path, f"is not a polarxr training cube (arrays {missing} missing)")
    # cubes written by other tools have no commit record: all their patches count
    return root, int(root.attrs.get("n_patches", root["image"].shape[0]))


class CubeWriter:
    """Appends scenes to a cube with the commit protocol described in the module docstring."""

    def __init__(self, path: Path, root: zarr.Group):
        self.path = path
        self.root = root
        self.layout = CubeLayout.of_attrs(dict(root.attrs))

    @classmethod
    def create(cls, path: str | Path, layout: CubeLayout, sampler: str, sampler_params: dict) -> CubeWriter:
        """A new, empty cube at ``path`` (which must not exist yet).

        Made under a temporary name and renamed into place complete, so a run killed while creating it
        leaves no cube without its attributes (which a re-run could not open)."""
        from polarxr.io import atomic_path

        path = Path(path)
        if path.exists():
            raise CubeError(path, "exists already; a new cube needs a free path")
        with atomic_path(path) as tmp:
            cls._initialise(zarr.open_group(tmp, mode="w-", zarr_format=3), layout, sampler, sampler_params)
        return cls(path, zarr.open_group(path, mode="r+"))

    @staticmethod
    def _initialise(root: zarr.Group, layout: CubeLayout, sampler: str, sampler_params: dict) -> None:
        size, bands = layout.patch_size, len(layout.band_names)
        fill = layout.nodata if layout.nodata is not None else (math.nan if "float" in layout.dtype else 0)
        root.create_array("image", shape=(0, bands, size, size), dtype=layout.dtype, fill_value=fill,
                          chunks=(CHUNK_PATCHES, bands, size, size), shards=(SHARD, bands, size, size),
                          compressors=COMPRESSOR, dimension_names=("patch", "band", "y", "x"))
        root.create_array("label", shape=(0, size, size), dtype="uint8", fill_value=NO_LABEL,
                          chunks=(CHUNK_PATCHES, size, size), shards=(SHARD, size, size), compressors=COMPRESSOR,
                          dimension_names=("patch", "y", "x"))
        for name, (dtype, vector_fill) in VECTORS.items():
            root.create_array(name, shape=(0,), dtype=dtype, fill_value=vector_fill, chunks=(VECTOR_CHUNK,),
                              compressors=COMPRESSOR, dimension_names=("patch",))
        from polarxr import __version__

        root.update_attributes({
            "format": FORMAT, **layout.attrs(), "sampler": sampler, "sampler_params": sampler_params,
            "split_codes": SPLIT_CODES, "version": __version__, **summary_attrs([]),
        })

    @classmethod
    def open(cls, path: str | Path) -> CubeWriter:
        """An existing polarxr cube, with anything beyond its committed patches truncated."""
        path = Path(path)
        try:
            root = zarr.open_group(path, mode="r+")
        except (zarr.errors.GroupNotFoundError, FileNotFoundError, ValueError) as err:
            raise CubeError(path, f"exists but is not a Zarr group ({err})") from None
        if root.attrs.get("format") != FORMAT:
            raise CubeError(path, "exists but is not a polarxr training cube (no 'format' attribute "
                                  f"{FORMAT!r}); choose another path or remove it")
        writer = cls(path, root)
        writer.truncate()
        return writer

    @property
    def records(self) -> list[dict]:
        return list(self.root.attrs.get("scene_records", []))

    @property
    def committed(self) -> int:
        return int(self.root.attrs.get("n_patches", 0))

    def _arrays(self) -> list[zarr.Array]:
        return [self.root[name] for name in ("image", "label", *VECTORS)]

    def truncate(self) -> None:
        """Drop patches written after the last commit (an interrupted scene)."""
        for array in self._arrays():
            if array.shape[0] != self.committed:
                array.resize((self.committed, *array.shape[1:]))

    def reserve(self, n: int) -> int:
        """Grow every array by ``n`` patches beyond the committed ones; the first new index."""
        start = self.committed
        for array in self._arrays():
            array.resize((start + n, *array.shape[1:]))
        return start

    def pending(self) -> tuple[int, np.ndarray, np.ndarray]:
        """``(start, image, label)``: the committed patches of the last, partly filled shard (the first
        shard a new scene's patches complete), read back so that it can be written whole again."""
        start = self.committed // SHARD * SHARD
        return start, self.root["image"][start:self.committed], self.root["label"][start:self.committed]

    def write(self, start: int, values: dict[str, np.ndarray]) -> None:
        """Write in-memory arrays (any of image, label and the per-patch vectors) at ``start``."""
        for name, value in values.items():
            self.root[name][start:start + len(value)] = value

    def commit(self, records: list[dict]) -> None:
        """Make ``records`` the cube's scenes: one atomic rewrite of the group metadata.

        Re-reads the committed count from the store first: :class:`CubeError` if another writer committed
        since this one opened the cube (which the writer lock prevents among polarxr runs).
        """
        from polarxr import __version__

        stored = int(zarr.open_group(self.path, mode="r").attrs.get("n_patches", 0))
        if stored != self.committed:
            raise CubeError(self.path, f"was changed by another writer meanwhile ({stored} committed patches, "
                                       f"{self.committed} when this run opened it); nothing was committed, run again")

        self.root.update_attributes({**summary_attrs(records), "version": __version__})


def summary_attrs(records: list[dict]) -> dict:
    """Group attributes derived from the scene records (counts, split, normalisation)."""
    train = [r for r in records if r["split"] == "train"]
    basis = train or records
    stats = merge_stats([r["stats"] for r in basis])
    std = [math.sqrt(m2 / c) if c and m2 > 0 else 1.0 for m2, c in zip(stats["m2"], stats["count"])]
    patch_counts = {split: {str(k): sum(r["patch_counts"][str(k)] for r in records if r["split"] == split)
                            for k in range(N_CLASSES)} for split in SPLITS}
    return {
        "n_patches": int(sum(r["count"] for r in records)),
        "scenes": [r["name"] for r in records],
        "splits": {r["name"]: r["split"] for r in records},
        "class_counts": {str(k): int(stats["pixels"].get(str(k), 0)) for k in range(N_CLASSES)},
        "patch_counts": patch_counts,
        "norm": {"mean": stats["mean"], "std": std, "count": stats["count"],
                 "over": "train" if train else "all"},
        "scene_records": records,
    }


# -------------------------------------------------------------------------------------------- building
@dataclass
class SceneResult:
    """What happened to one scene: ``status`` is added, replaced or skipped."""

    name: str
    status: str
    split: str
    patches: int
    patch_counts: dict[str, int] = field(default_factory=dict)
    shortfall: dict[str, int] = field(default_factory=dict)
    start: int | None = None


ProgressCallback = Callable[[str, str], None]


def _scene_pairs(scenes: pd.DataFrame | Iterable[tuple[str | Path, str | Path | None]]) -> list[tuple[Path, Path | None]]:
    if isinstance(scenes, pd.DataFrame):
        scenes = zip(scenes["path"], scenes["chart"])
    from polarxr.io import as_path

    pairs = [(as_path(s), None if c is None or (isinstance(c, float) and math.isnan(c)) else as_path(c))
             for s, c in scenes]
    if not pairs:
        raise CubeError(None, "no scenes given")
    names = [p.stem for p, _ in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CubeError(None, f"scenes given twice: {duplicates}")
    without = [str(p) for p, c in pairs if c is None]
    if without:
        raise CubeError(without[0], f"has no ice chart (expected seaice_s1_<start>.shp beside it or in the "
                                    f"charts folder); {len(without)} scene(s) without a chart: {without}")
    return pairs


@dataclass
class _Prepared:
    path: Path
    scene: xr.DataArray
    raster: xr.DataArray


def _prepare(pairs: list[tuple[Path, Path]], sampler: SamplerConfig, chunks, reference: CubeLayout | None,
             cube_path: Path, class_map: str | dict | None = None, bands: Sequence[str] | None = None
             ) -> tuple[list[_Prepared], CubeLayout]:
    """Open every scene (headers only) and set up the rasterization of its chart (read, reprojected, checked
    to overlap the scene; no pixels yet), checking they all fit one cube; writes nothing."""
    from polarxr.labels import rasterize_chart
    from polarxr.scenes import open_scene

    prepared = []
    for scene_path, chart_path in pairs:
        scene = open_scene(scene_path, chunks=chunks, bands=bands)
        layout = CubeLayout.of_scene(scene, sampler.patch_size)
        if reference is None:
            reference = layout
        else:
            reference.check_matches(layout, scene_path, f"scene {scene_path.name} of cube {cube_path}")
        check_patch_fits(sampler, scene.shape[1:], scene.chunks[1:], scene_path)
        # rasterized onto one band's grid: the scene's nodata is applied with the patches (one read)
        prepared.append(_Prepared(scene_path, scene, rasterize_chart(chart_path, scene.isel(band=0), class_map)))
    return prepared, reference


@dataclass
class CubeBuild:
    """A checked plan of scenes to add to a cube (from :func:`plan_cube`); :meth:`run` carries it out."""

    cube_path: Path
    sampler: SamplerConfig
    split: SplitConfig
    pairs: list[tuple[Path, Path]]
    committed: dict[str, dict]
    prepared: list[_Prepared]
    layout: CubeLayout
    overwrite: bool = False

    def run(self, on_progress: ProgressCallback | None = None,
            on_wait: Callable[[str], None] | None = None) -> list[SceneResult]:
        """Create or open the cube and add the planned scenes, committing each; computes on the active
        dask scheduler. ``on_progress(scene_name, stage)``: stages sampling, writing, done, skipped.
        Holds the cube's :func:`writer_lock` throughout (``on_wait`` as there)."""
        with writer_lock(self.cube_path, on_wait):
            self._refresh()
            created = not self.cube_path.exists()
            if created:
                writer = CubeWriter.create(self.cube_path, self.layout, self.sampler.mode, self.sampler.params())
            else:
                writer = CubeWriter.open(self.cube_path)
            try:
                return self._add(writer, on_progress)
            except BaseException:
                if created and not CubeWriter.open(self.cube_path).records:
                    shutil.rmtree(self.cube_path, ignore_errors=True)  # leave no empty cube behind
                raise

    def _refresh(self) -> None:
        """Re-read the committed scenes (another writer may have added some since planning) and drop them
        from the plan unless overwriting."""
        _, records = _existing(self.cube_path)
        self.committed = {r["name"]: r for r in records}
        if not self.overwrite:
            self.prepared = [p for p in self.prepared if p.path.stem not in self.committed]

    def _add(self, writer: CubeWriter, on_progress: ProgressCallback | None) -> list[SceneResult]:
        replaced = {p.path.stem for p in self.prepared} & set(self.committed)
        if replaced:
            writer = remove_scenes(self.cube_path, replaced)
        results = {}
        for path, _ in self.pairs:
            record = self.committed.get(path.stem)
            if record is not None and path.stem not in replaced:
                results[path.stem] = SceneResult(path.stem, "skipped", record["split"], record["count"],
                                                 record["patch_counts"], start=record["start"])
                if on_progress:
                    on_progress(path.stem, "skipped")
        if self.prepared:
            for result in self._build(writer, on_progress):
                if result.name in replaced:
                    result.status = "replaced"
                results[result.name] = result
        return [results[path.stem] for path, _ in self.pairs]

    def _build(self, writer: CubeWriter, on_progress: ProgressCallback | None) -> list[SceneResult]:
        """All planned scenes in one graph (:mod:`polarxr.cubegraph`), committed in order."""
        from polarxr.cubegraph import SceneInfo, build_graph, scene_graph, warn_shortfalls

        records = writer.records
        splits = [r["split"] for r in records]
        graphs = []
        for item in self.prepared:
            scene = item.scene
            name = Path(scene.attrs["source"]).stem
            writer.layout.check_matches(CubeLayout.of_scene(scene, self.sampler.patch_size), scene.attrs["source"],
                                        f"scene of cube {writer.path}")
            split_name = self.split.choose(name, splits)
            splits.append(split_name)
            info = SceneInfo(name, str(scene.attrs["source"]), str(item.raster.attrs.get("chart")),
                             tuple(int(s) for s in scene.shape[1:]), scene.attrs.get("start"), split_name,
                             SPLIT_CODES[split_name], tuple(scene.rio.transform()), self.sampler)
            graphs.append(scene_graph(scene, item.raster, self.sampler, info))
        committed = writer.committed
        pending = writer.pending()
        writer.reserve(sum(g.upper_bound for g in graphs))  # shrunk to the committed patches at the end
        commits = build_graph(graphs, str(self.cube_path), committed, pending, records, SHARD, summary_attrs)
        summaries = [g.summary for g in graphs]
        names = [g.info.name for g in graphs]
        if on_progress:  # every scene is sampled and written in the same graph
            on_progress(names[0], "sampling")
            on_progress(names[0], "writing")
        client = active_client()
        # rasterio's rasterize enters warnings.catch_warnings() in the scheduler's threads, which is not
        # thread-safe and can leave its "ignore" filters installed: the caller's filters are put back below
        filters = list(warnings.filters)
        if client is not None:
            futures = submit_together(client, [*commits, *summaries])
            try:
                for k, future in enumerate(futures[:len(commits)]):
                    future.result()
                    if on_progress:
                        on_progress(names[k], "done")
                        if k + 1 < len(names):
                            on_progress(names[k + 1], "writing")
                done = [future.result() for future in futures]
            finally:
                client.cancel(futures)
        else:
            done = compute_together(*commits, *summaries)
            if on_progress:
                for name in names:
                    on_progress(name, "done")
        warnings.filters = filters
        warnings._filters_mutated()
        CubeWriter.open(self.cube_path)  # the arrays back to the committed patches
        final, summaries = done[len(commits) - 1], done[len(commits):]
        by_name = {r["name"]: r for r in final}
        results = []
        for graph, summary in zip(graphs, summaries):
            warn_shortfalls(summary, graph.info.source, self.sampler.samples_per_label)
            record = by_name[graph.info.name]
            results.append(SceneResult(record["name"], "added", record["split"], record["count"],
                                       record["patch_counts"], record["sampling"]["shortfall"] or {},
                                       record["start"]))
        return results


def _existing(cube_path: Path) -> tuple[CubeLayout | None, list[dict]]:
    """Layout and committed scene records of the polarxr cube at ``cube_path`` (None, [] when absent)."""
    if not cube_path.exists():
        return None, []
    root, _ = open_cube_group(cube_path)
    if root.attrs.get("format") != FORMAT:
        raise CubeError(cube_path, f"exists but is not a polarxr training cube (no 'format' attribute "
                                   f"{FORMAT!r}); choose another path or remove it")
    return CubeLayout.of_attrs(dict(root.attrs)), list(root.attrs.get("scene_records", []))


def plan_cube(
    scenes: pd.DataFrame | Iterable[tuple[str | Path, str | Path | None]],
    cube_path: str | Path,
    sampler: SamplerConfig = SamplerConfig(),
    split: SplitConfig = SplitConfig(),
    *,
    overwrite: bool = False,
    chunks: dict[str, int] | int | None = None,
    class_map: str | dict | None = None,
    bands: Sequence[str] | None = None,
) -> CubeBuild:
    """Check scenes, charts, parameters and the existing cube for :func:`build_cube`; reads no pixels, writes
    nothing. ``class_map`` maps chart codes as :func:`polarxr.labels.read_chart`; ``bands``: the scenes' band
    names where the files do not say (``--bands``)."""
    cube_path = Path(cube_path)
    sampler.validate(cube_path)
    split.validate(cube_path)
    pairs = _scene_pairs(scenes)
    layout, records = _existing(cube_path)
    if layout and layout.patch_size != sampler.patch_size:
        raise CubeError(cube_path, f"holds patches of {layout.patch_size} px, not {sampler.patch_size} px: "
                                   "use its patch size or another cube")
    committed = {r["name"]: r for r in records}
    todo = [(s, c) for s, c in pairs if overwrite or s.stem not in committed]
    _check_assignments(split, [s.stem for s, _ in pairs] + list(committed), committed, overwrite, cube_path)
    prepared, layout = _prepare(todo, sampler, chunks, layout, cube_path, class_map, bands)
    return CubeBuild(cube_path, sampler, split, pairs, committed, prepared, layout, overwrite)


def build_cube(
    scenes: pd.DataFrame | Iterable[tuple[str | Path, str | Path | None]],
    cube_path: str | Path,
    sampler: SamplerConfig = SamplerConfig(),
    split: SplitConfig = SplitConfig(),
    *,
    overwrite: bool = False,
    chunks: dict[str, int] | int | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[SceneResult]:
    """Sample patches from scenes and their charts into the training cube at ``cube_path``, scene by scene.

    ``scenes`` is a :func:`polarxr.scenes.scene_catalog` frame or ``(scene.tif, chart.shp)`` pairs; scenes
    are added in the order given. Creates the cube or appends to it: scenes already in it are skipped
    (``overwrite``: replaced). Every scene and chart is checked before anything is written; the cube's
    patch size, bands, dtype and CRS must match. ``chunks`` as for :func:`polarxr.scenes.open_scene`.
    Computes on the active dask scheduler. ``on_progress(scene_name, stage)`` is called with stages
    ``sampling``, ``writing``, ``done`` and ``skipped``. Returns one :class:`SceneResult` per scene.
    """
    plan = plan_cube(scenes, cube_path, sampler, split, overwrite=overwrite, chunks=chunks)
    return plan.run(on_progress)


def _check_assignments(split: SplitConfig, names: list[str], committed: dict, overwrite: bool, where: Path) -> None:
    """Every explicit assignment must name a scene, and may not contradict a committed scene's split."""
    for pattern, _ in split.assign:
        if not any(pattern in name for name in names):
            raise CubeError(where, f"split assignment {pattern!r} matches none of the scenes")
    if overwrite:
        return
    for name, record in committed.items():
        wanted = split.explicit(name)
        if wanted and wanted != record["split"]:
            raise CubeError(where, f"scene {name} is already in the cube as {record['split']!r}, not "
                                   f"{wanted!r}: pass overwrite (--overwrite) to re-split it")


def remove_scenes(cube_path: str | Path, names: Iterable[str]) -> CubeWriter:
    """Rewrite the cube without the scenes ``names`` (atomically: a copy replaces it when complete)."""
    from polarxr.io import atomic_path

    cube_path = Path(cube_path)
    names = set(names)
    old = CubeWriter.open(cube_path)
    attrs = dict(old.root.attrs)
    with atomic_path(cube_path) as tmp:
        new = CubeWriter.create(tmp, old.layout, attrs["sampler"], attrs["sampler_params"])
        kept = []
        for record in old.records:
            if record["name"] in names:
                continue
            start = new.reserve(record["count"])
            for lo in range(0, record["count"], SHARD):
                hi = min(record["count"], lo + SHARD)
                source = slice(record["start"] + lo, record["start"] + hi)
                values = {name: old.root[name][source] for name in ("image", "label", *VECTORS)}
                values["scene"] = np.full(hi - lo, len(kept), np.int32)
                new.write(start + lo, values)
            kept.append({**record, "start": start})
            new.commit(kept)
    return CubeWriter.open(cube_path)


# -------------------------------------------------------------------------------------------- reading
def open_cube(path: str | Path) -> xr.Dataset:
    """The committed patches of a cube as a lazy ``xarray.Dataset`` (dask arrays read from Zarr).

    Data variables ``image (patch, band, y, x)`` (scene dtype) and ``label (patch, y, x)`` (uint8);
    coordinates ``band`` (names), and per patch ``patch_label``, ``scene`` (name), ``split`` (name),
    ``row``, ``col`` and the centre's map coordinates ``x_centre``/``y_centre`` (stored as the ``x``/``y``
    arrays; renamed because ``x``/``y`` are the patch's pixel dimensions here). ``attrs`` are the group's.
    """
    root, n = open_cube_group(path)
    attrs = dict(root.attrs)

    def lazy(name: str) -> da.Array:
        array = root[name]
        return da.from_zarr(array, chunks=array.shards or array.chunks)[:n]

    vectors = {name: root[name][:n] for name in VECTORS if name in root}
    scenes = np.asarray(attrs.get("scenes", []), dtype=object)
    codes = {code: split for split, code in attrs.get("split_codes", SPLIT_CODES).items()}
    coords = {
        "band": [str(b) for b in attrs.get("band_names", range(root["image"].shape[1]))],
        "patch_label": ("patch", vectors["patch_label"]),
        "split": ("patch", np.array([codes.get(int(c), "?") for c in vectors["split"]], dtype=object)),
    }
    if "scene" in vectors and len(scenes):
        coords["scene"] = ("patch", scenes[vectors["scene"]].astype(str))
    for name, target in (("row", "row"), ("col", "col"), ("x", "x_centre"), ("y", "y_centre")):
        if name in vectors:
            coords[target] = ("patch", vectors[name])
    return xr.Dataset(
        {"image": (("patch", "band", "y", "x"), lazy("image")), "label": (("patch", "y", "x"), lazy("label"))},
        coords=coords, attrs=attrs,
    )


__all__ = [
    "CubeError", "CubeLayout", "CubeWriter", "SamplerConfig", "SceneResult",
    "SplitConfig", "build_cube", "plan_cube", "CubeBuild", "open_cube", "open_cube_group", "remove_scenes",
]
