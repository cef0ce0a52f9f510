"""Blockwise, seamless inference of whole scenes on a ``distributed`` cluster.

The scene ``DataArray(band, y, x)`` is cut into chunks; each chunk is extended by a halo of at least the
model's receptive field (``dask.array.map_overlap``, no artificial boundary), segmented in tiles batched on
the worker's device, and cropped back to its core. Because chunk starts, tile starts and the halo are all
multiples of the model's downsampling factor, and the image edge is handled exactly as a whole-array
run handles it (zero padding at the end only), the blockwise result equals a whole-array run of the same
model for any chunking, up to float rounding.

Workers compute; the client writes. Each finished block is written by the client into a staging
GeoTIFF (classes) and the Zarr store (probabilities), then the GeoTIFF is copied into COG layout and
both are renamed into place. No lock is shared between workers, so a worker that dies mid-run just has
its tasks recomputed elsewhere, giving identical output.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import rasterio
import torch
import xarray as xr
import zarr

from polarxr.checkpoints import CheckpointChanged, ModelCache, checkpoint_version
from polarxr.classes import CLASS_NAMES, N_CLASSES, NO_LABEL
from polarxr.errors import ModelError, SceneError
from polarxr.io import STAGING_OPTIONS, atomic_path, cog_staging
from polarxr.patches import normalise as normalise_patch
from polarxr.scenes import ensure_not_empty, open_scene, valid_pixels

#: Default chunk edge (px) of blockwise inference; a multiple of every model's downsampling factor.
DEFAULT_CHUNK = 2048
#: Per device: (edge in px of the tiles a block is segmented in, tiles per forward pass). Small tiles
#: one at a time keep a CPU worker's activations to a few hundred MB; a GPU wants large batched work.
DEFAULT_TILING: dict[str, tuple[int, int]] = {"cpu": (512, 1), "cuda": (2048, 4)}
#: Probabilities are stored as uint8: p * 255, rounded.
PROBABILITY_SCALE = 255


@dataclass
class PredictionResult:
    """What :func:`predict_scene` wrote, and how long it took."""

    scene: Path
    class_map: Path
    probabilities: Path | None = None
    quicklook: Path | None = None
    metrics: dict | None = None
    seconds: float = 0.0
    megapixels: float = 0.0
    blocks: int = 0


# --------------------------------------------------------------------------------------------- model
@functools.cache
def model_cache() -> ModelCache:
    """This process's (worker's) models: loaded once per checkpoint version and device, then reused."""
    return ModelCache()


def worker_model(checkpoint: str | Path, version: str | None = None, device: str | None = None
                 ) -> tuple[torch.nn.Module, dict]:
    """The model of ``checkpoint`` at ``version`` on this process's device, from :func:`model_cache`.

    Tasks carry the checkpoint's path and the version the client fixed, never the weights; a file that no
    longer holds that version raises :class:`~polarxr.checkpoints.CheckpointChanged`. Without
    ``version``, the file's current version.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    version = version or checkpoint_version(checkpoint)
    return model_cache().get(checkpoint, version, device)


def _geometry(model: torch.nn.Module, meta: dict) -> tuple[int, int]:
    """``(halo, multiple)`` in px: the context each block needs, and the alignment of block starts."""
    if meta["model_config"]["name"] == "patchcnn":
        patch = int(meta.get("patch_size", 64))
        return 0, patch
    return int(model.halo), int(model.pad_multiple)  # the U-Net's halo is already a multiple


def normalise(block: np.ndarray, meta: dict, nodata: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``(band, y, x)`` with the checkpoint's per-band mean/std exactly as training did.

    Returns ``(float32 image, valid mask (y, x))``; pixels without data are 0.
    """
    return normalise_patch(block, meta["norm"]["mean"], meta["norm"]["std"], nodata)


def _pad_end(image: np.ndarray, multiple: int) -> np.ndarray:
    """Zero-pad the end of y and x up to a multiple of ``multiple``, as a whole-array run does."""
    pad_y = -image.shape[-2] % multiple
    pad_x = -image.shape[-1] % multiple
    if pad_y or pad_x:
        image = np.pad(image, [(0, 0)] * (image.ndim - 2) + [(0, pad_y), (0, pad_x)])
    return image


@torch.inference_mode()
def _forward(model: torch.nn.Module, batch: np.ndarray, device: str) -> np.ndarray:
    """Softmax probabilities ``(n, class, y, x)`` of a batch ``(n, band, y, x)``."""
    tensor = torch.from_numpy(batch).to(device)
    if device.startswith("cuda"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tensor)
    else:
        logits = model(tensor)
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


def segment_array(model: torch.nn.Module, image: np.ndarray, multiple: int, device: str = "cpu") -> np.ndarray:
    """Whole-array probabilities ``(class, y, x)`` of a normalised image ``(band, y, x)`` (the reference)."""
    height, width = image.shape[-2:]
    return _forward(model, _pad_end(image, multiple)[None], device)[0, :, :height, :width]


def _classify_patches(model: torch.nn.Module, image: np.ndarray, patch: int, device: str, batch_size: int) -> np.ndarray:
    """The seed's re-piecing: one class probability vector per ``patch`` x ``patch`` tile, repeated to pixels."""
    height, width = image.shape[-2:]
    padded = _pad_end(image, patch)
    bands, ph, pw = padded.shape
    tiles = padded.reshape(bands, ph // patch, patch, pw // patch, patch).transpose(1, 3, 0, 2, 4)
    flat = tiles.reshape(-1, bands, patch, patch)
    probs = np.concatenate([_forward(model, flat[i:i + batch_size], device) for i in range(0, len(flat), batch_size)])
    grid = probs.reshape(ph // patch, pw // patch, -1).transpose(2, 0, 1)
    return np.repeat(np.repeat(grid, patch, axis=1), patch, axis=2)[:, :height, :width]


def _segment_tiles(model, image, core, halo, multiple, tile, device, batch_size) -> np.ndarray:
    """Probabilities of the ``core`` window ``((y0, y1), (x0, x1))`` of an extended block, tile by tile.

    Every tile is run on its core plus up to ``halo`` px of real context on each side (less only at the
    image edge), padded at the end to ``multiple``, and cropped back; tiles of equal shape are batched.
    """
    (cy0, cy1), (cx0, cx1) = core
    height, width = image.shape[-2:]
    jobs: dict[tuple[int, int], list] = {}
    for ty in range(cy0, cy1, tile):
        for tx in range(cx0, cx1, tile):
            ey, ex = min(ty + tile, cy1), min(tx + tile, cx1)
            wy0, wx0 = max(0, ty - halo), max(0, tx - halo)
            wy1, wx1 = min(height, ey + halo), min(width, ex + halo)
            window = _pad_end(image[:, wy0:wy1, wx0:wx1], multiple)
            crop = (slice(ty - wy0, ey - wy0), slice(tx - wx0, ex - wx0))
            jobs.setdefault(window.shape, []).append((window, crop, (ty - cy0, ey - cy0, tx - cx0, ex - cx0)))
    out = np.zeros((N_CLASSES, cy1 - cy0, cx1 - cx0), dtype=np.float32)
    for group in jobs.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            probs = _forward(model, np.stack([window for window, _, _ in chunk]), device)
            for p, (_, crop, (oy0, oy1, ox0, ox1)) in zip(probs, chunk):
                out[:, oy0:oy1, ox0:ox1] = p[:, crop[0], crop[1]]
    return out


def _probabilities_block(
    block: np.ndarray,
    checkpoint: str,
    version: str,
    nodata: float | None,
    halo: int,
    tile: int | None,
    batch_size: int | None,
    block_info: dict | None = None,
) -> np.ndarray:
    """map_overlap kernel: float32 probabilities ``(class, y, x)`` of one block's core (0 on nodata), by the
    model of ``checkpoint`` at ``version``."""
    model, meta = worker_model(checkpoint, version)
    device = next(model.parameters()).device.type
    default_tile, default_batch = DEFAULT_TILING.get(device, DEFAULT_TILING["cpu"])
    batch_size = batch_size or default_batch
    info = block_info[0]
    (y0, y1), (x0, x1) = info["array-location"][1:]
    (full_h, full_w) = info["shape"][1:]
    # the extended block starts `halo` before the core except at the image edge (boundary="none")
    top, left = min(halo, y0), min(halo, x0)
    core_h = block.shape[1] - top - min(halo, full_h - y1)
    core_w = block.shape[2] - left - min(halo, full_w - x1)
    image, valid = normalise(block, meta, nodata)
    core_valid = valid[top:top + core_h, left:left + core_w]
    if not core_valid.any():
        return np.zeros((N_CLASSES, core_h, core_w), dtype=np.float32)
    if meta["model_config"]["name"] == "patchcnn":
        probs = _classify_patches(model, image, int(meta.get("patch_size", 64)), device, batch_size)
    else:
        _, multiple = _geometry(model, meta)
        # a multi-looking U-Net works on pool x pool coarser pixels: its tiles cover pool x more ground
        tile = tile or default_tile * int(getattr(model, "pool", 1))
        tile = max(multiple, tile // multiple * multiple)
        core = ((top, top + core_h), (left, left + core_w))
        probs = _segment_tiles(model, image, core, halo, multiple, tile, device, batch_size)
    probs[:, ~core_valid] = 0.0
    return probs


def _encode_block(probs: np.ndarray, block: np.ndarray, nodata: float | None) -> np.ndarray:
    """uint8 ``(1 + class, y, x)``: row 0 the class (255 on nodata), then probabilities x 255."""
    valid = valid_pixels(block, nodata)
    classes = np.where(valid, probs.argmax(axis=0), NO_LABEL).astype(np.uint8)
    scaled = np.rint(probs * PROBABILITY_SCALE).astype(np.uint8)
    scaled[:, ~valid] = 0
    return np.concatenate([classes[None], scaled])


# --------------------------------------------------------------------------------------------- graph
def _edge_chunks(size: int, chunk: int, halo: int) -> tuple[int, ...]:
    """Chunks of ``chunk`` px along an axis; a last chunk narrower than the halo joins its neighbour.

    Every chunk then starts at a multiple of ``chunk`` and is at least as wide as the halo, as
    ``map_overlap`` needs.
    """
    chunks = [chunk] * (size // chunk)
    rest = size - sum(chunks)
    if rest and (rest >= halo or not chunks):
        chunks.append(rest)
    elif rest:
        chunks[-1] += rest
    return tuple(chunks)


def _check_compatible(scene: xr.DataArray, meta: dict, checkpoint: Path) -> None:
    """:class:`ModelError` unless the scene's bands, units, dtype, polarisations and DN scaling are those
    the checkpoint was trained on (:mod:`polarxr.radiometry`; fields a checkpoint lacks are not compared)."""
    from polarxr.radiometry import differences, radiometry

    expected = list(meta["band_names"])
    actual = [str(b) for b in scene.band.values]
    source = scene.attrs.get("source")
    if expected != actual:
        hint = ""
        if scene.attrs.get("band_source") in ("unknown", "product name") and len(expected) == len(actual):
            hint = f" (found from its {'layout' if scene.attrs['band_source'] == 'unknown' else 'product name'}; " \
                   f"if they are {','.join(expected)}, say so with --bands {','.join(expected)})"
        raise ModelError(checkpoint, f"was trained on bands {expected} but scene {source} has bands {actual}{hint}")
    problems = differences(meta.get("radiometry"), radiometry(scene))
    if problems:
        raise ModelError(checkpoint, f"does not fit scene {source}: " + "; ".join(problems))


def probabilities(
    scene: xr.DataArray,
    checkpoint: str | Path,
    chunk: int = DEFAULT_CHUNK,
    tile: int | None = None,
    batch_size: int | None = None,
    seamless: bool = True,
    version: str | None = None,
) -> xr.DataArray:
    """Lazy float32 class probabilities ``DataArray(class, y, x)`` of a scene, on its grid and CRS.

    Chunks are ``chunk`` px (a multiple of the model's downsampling factor, and not smaller than the halo);
    each block sees a halo of at least the model's receptive field, so the result does not depend on
    ``chunk``. ``tile``/``batch_size`` default per worker device (:data:`DEFAULT_TILING`).
    ``seamless=False`` drops the halo: faster, but blocks show seams (previews, benchmarks).
    ``version``: the checkpoint version every block must use (default: the file's version now).
    """
    checkpoint = Path(checkpoint)
    version = version or checkpoint_version(checkpoint)
    model, meta = worker_model(checkpoint, version, device="cpu")
    _check_compatible(scene, meta, checkpoint)
    halo, multiple = _geometry(model, meta)
    if not seamless:  # a preview (and the benchmarks' baseline): no halo, seams at block edges
        halo = 0
    if chunk % multiple:
        raise ModelError(checkpoint, f"chunk {chunk} px must be a multiple of the model's downsampling factor {multiple}")
    if chunk < max(halo, multiple):
        raise ModelError(checkpoint, f"chunk {chunk} px is smaller than the model's halo of {halo} px; use --chunk >= {max(halo, multiple)}")
    data = scene.data.rechunk({0: -1, 1: _edge_chunks(scene.sizes["y"], chunk, halo),
                               2: _edge_chunks(scene.sizes["x"], chunk, halo)})
    probs = da.map_overlap(
        _probabilities_block,
        data,
        depth={0: 0, 1: halo, 2: halo},
        boundary="none",
        trim=False,
        allow_rechunk=False,
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
        chunks=((N_CLASSES,), data.chunks[1], data.chunks[2]),
        checkpoint=str(checkpoint),
        version=version,
        nodata=scene.rio.nodata,
        halo=halo,
        tile=tile,
        batch_size=batch_size,
    )
    out = xr.DataArray(
        probs,
        dims=("class", "y", "x"),
        coords={"class": np.array([CLASS_NAMES[c] for c in range(N_CLASSES)], dtype=object), "y": scene.y, "x": scene.x},
        name="probability",
    )
    return out.rio.write_crs(scene.rio.crs).rio.write_transform(scene.rio.transform())


def encoded_blocks(scene: xr.DataArray, probs: xr.DataArray) -> da.Array:
    """uint8 ``(1 + class, y, x)`` dask array: the class map and the scaled probabilities, per block."""
    data = scene.data.rechunk({0: -1, 1: probs.chunks[1], 2: probs.chunks[2]})
    return da.map_blocks(
        _encode_block,
        probs.data,
        data,
        nodata=scene.rio.nodata,
        dtype=np.uint8,
        chunks=((1 + N_CLASSES,), probs.chunks[1], probs.chunks[2]),
        meta=np.empty((0, 0, 0), np.uint8),
    )


# --------------------------------------------------------------------------------------------- writing
class _SceneWriter:
    """Client-side writer of one scene's outputs: staging GeoTIFF windows and Zarr regions.

    Both outputs live under temporary names until :meth:`close` with ``ok=True`` renames them into place;
    ``ok=False`` removes them.
    """

    def __init__(self, scene: xr.DataArray, probs: xr.DataArray, out_tif: Path, out_zarr: Path | None, tags: dict):
        self.scene, self.out_tif, self.out_zarr = scene, out_tif, out_zarr
        self._outputs = ExitStack()
        staging = self._outputs.enter_context(cog_staging(out_tif))
        profile = dict(driver="GTiff", width=scene.sizes["x"], height=scene.sizes["y"], count=1, dtype="uint8",
                       nodata=NO_LABEL, crs=scene.rio.crs, transform=scene.rio.transform(), **STAGING_OPTIONS)
        self._tif = rasterio.open(staging, "w", **profile)
        self._tif.update_tags(**tags)
        self._tif.set_band_description(1, "class (0 land, 1 sea, 2 ice, 255 nodata)")
        self._zarr = None
        if out_zarr is not None:
            tmp = self._outputs.enter_context(atomic_path(out_zarr))
            # uniform Zarr chunks (the last dask chunk may be wider); the client is the only writer
            uniform = {"y": probs.chunks[1][0], "x": probs.chunks[2][0]}
            template = xr.zeros_like(probs, dtype=np.uint8).chunk(uniform).to_dataset(name="probability")
            template["probability"].attrs.update(scale=1 / PROBABILITY_SCALE, units="1", **tags)
            template.to_zarr(tmp, mode="w", zarr_format=3, compute=False, consolidated=False)
            self._zarr = zarr.open_array(tmp / "probability", mode="r+")

    def write(self, location: tuple[slice, slice], encoded: np.ndarray) -> None:
        ys, xs = location
        window = rasterio.windows.Window(xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start)
        self._tif.write(encoded[0], 1, window=window)
        if self._zarr is not None:
            self._zarr[:, ys, xs] = encoded[1:]

    def close(self, ok: bool) -> None:
        self._tif.close()
        if ok:
            self._outputs.close()
        else:
            failure = RuntimeError("prediction failed")
            self._outputs.__exit__(RuntimeError, failure, None)


def predict_scenes(
    scenes: Sequence[str | Path],
    checkpoint: str | Path,
    out_dir: str | Path,
    client=None,
    chunk: int = DEFAULT_CHUNK,
    probabilities_out: bool = True,
    charts: Sequence[str | Path | None] | None = None,
    quicklooks: bool = True,
    tile: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    seamless: bool = True,
    model_version: str | None = None,
    bands: Sequence[str] | None = None,
) -> list[PredictionResult]:
    """Segment many scenes as one dask graph (many scenes in flight) into ``out_dir/<scene>.*``.

    Per scene: ``<stem>_class.tif`` (COG, uint8 L=0 W=1 I=2 255 nodata, the scene's grid and CRS),
    ``<stem>_probability.zarr`` (uint8 ``(class, y, x)``, p x 255), ``<stem>_quicklook.png`` and, where a
    chart is given, metrics against it. ``progress(done, total)`` is called as blocks complete.
    ``model_version``: the checkpoint version to use (default: the file's version when the run starts);
    every block of every scene is made by that version, or the run fails. ``bands``: the scenes' band
    names where the files do not say (:func:`polarxr.scenes.identify_bands`).
    """
    out_dir = Path(out_dir)
    charts = list(charts) if charts is not None else [None] * len(scenes)
    outputs = []
    for path in scenes:
        stem = Path(path).name.split(".")[0]
        outputs.append((out_dir / f"{stem}_class.tif", out_dir / f"{stem}_probability.zarr" if probabilities_out else None))
    options = dict(chunk=chunk, tile=tile, batch_size=batch_size, seamless=seamless, version=model_version,
                   bands=bands)
    results = _run(scenes, outputs, checkpoint, client, options, progress)
    for result, chart in zip(results, charts):
        _finish(result, chart, quicklooks)
    return results


def predict_scene(
    scene_path: str | Path,
    checkpoint: str | Path,
    out_tif: str | Path,
    probabilities: str | Path | None = None,
    chart: str | Path | None = None,
    chunk: int = DEFAULT_CHUNK,
    client=None,
    quicklook: str | Path | None = None,
    tile: int | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    seamless: bool = True,
    model_version: str | None = None,
    bands: Sequence[str] | None = None,
) -> PredictionResult:
    """Segment one scene blockwise into a class COG at ``out_tif`` (and optional probability Zarr, quicklook,
    metrics); ``model_version`` and ``bands`` as for :func:`predict_scenes`."""
    outputs = [(Path(out_tif), Path(probabilities) if probabilities else None)]
    options = dict(chunk=chunk, tile=tile, batch_size=batch_size, seamless=seamless, version=model_version,
                   bands=bands)
    (result,) = _run([scene_path], outputs, checkpoint, client, options, progress)
    _finish(result, chart, quicklook)
    return result


def _run(scenes, outputs, checkpoint, client, options: dict, progress) -> list[PredictionResult]:
    options = dict(options)
    bands = options.pop("bands", None)
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    from polarxr import __version__
    from polarxr.cluster import get_client

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise ModelError(checkpoint, "checkpoint file does not exist")
    if client is None:
        with get_client() as local_client:
            return _run(scenes, outputs, checkpoint, local_client, {**options, "bands": bands}, progress)
    # one model version for the whole run, fixed here on the client: every block's task carries it
    options = {**options, "version": options.get("version") or checkpoint_version(checkpoint)}
    tags = {"polarxr_version": __version__, "checkpoint": checkpoint.name, "model_version": options["version"]}
    started = time.perf_counter()
    plans, futures, where = [], [], {}
    try:
        for index, (scene_path, (out_tif, out_zarr)) in enumerate(zip(scenes, outputs)):
            scene = open_scene(scene_path, chunks={"band": -1, "y": options["chunk"], "x": options["chunk"]},
                               bands=bands)
            ensure_not_empty(scene)
            probs = probabilities(scene, checkpoint, **options)
            encoded = encoded_blocks(scene, probs)
            plans.append(_SceneWriter(scene, probs, Path(out_tif), out_zarr, tags))
            y_edges = np.cumsum((0,) + encoded.chunks[1])
            x_edges = np.cumsum((0,) + encoded.chunks[2])
            blocks = encoded.to_delayed()
            for (_, i, j), block in np.ndenumerate(blocks):
                where_key = len(futures)
                futures.append(block)
                where[where_key] = (index, (slice(y_edges[i], y_edges[i + 1]), slice(x_edges[j], x_edges[j + 1])))
        submitted = client.compute(futures, retries=2)
        index_of = {f.key: k for k, f in enumerate(submitted)}
        for done, future in enumerate(as_completed(submitted), start=1):
            scene_index, location = where[index_of[future.key]]
            try:
                encoded_block = future.result()
            except (CheckpointChanged, FutureCancelledError, CommClosedError):
                raise  # a replaced checkpoint or a lost scheduler: not a problem of the scene
            except Exception as err:  # a block failed on a worker even after retries: name the scene
                ys, xs = location
                raise SceneError(plans[scene_index].scene.attrs["source"],
                                 f"segmentation failed in rows {ys.start}-{ys.stop}, columns {xs.start}-{xs.stop}: "
                                 f"{type(err).__name__}: {err}") from err
            plans[scene_index].write(location, encoded_block)
            future.release()
            if progress:
                progress(done, len(submitted))
    except BaseException:
        for plan in plans:
            plan.close(ok=False)
        raise
    for plan in plans:
        plan.close(ok=True)
    seconds = time.perf_counter() - started
    total_px = sum(p.scene.sizes["y"] * p.scene.sizes["x"] for p in plans)
    return [
        PredictionResult(
            scene=Path(p.scene.attrs["source"]),
            class_map=p.out_tif,
            probabilities=p.out_zarr,
            seconds=seconds * (p.scene.sizes["y"] * p.scene.sizes["x"]) / max(total_px, 1),
            megapixels=p.scene.sizes["y"] * p.scene.sizes["x"] / 1e6,
            blocks=int(np.prod(p.scene.data.numblocks[1:])),
        )
        for p in plans
    ]


def _finish(result: PredictionResult, chart: str | Path | None, quicklook: str | Path | bool | None) -> None:
    """Quicklook and metrics of a written class map (read lazily / decimated)."""
    if quicklook:
        from polarxr.quicklook import class_quicklook

        target = Path(quicklook) if not isinstance(quicklook, bool) else result.class_map.with_name(
            result.class_map.name.replace("_class.tif", "_quicklook.png"))
        class_quicklook(result.class_map, target, scene=result.scene)
        result.quicklook = target
    if chart:
        from polarxr.evaluate import evaluate_prediction

        result.metrics = evaluate_prediction(result.class_map, chart)

