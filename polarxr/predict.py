"""Blockwise, seamless inference of whole scenes on a ``distributed`` cluster.

The scene ``DataArray(band, y, x)`` is cut into chunks; each chunk is extended by a halo of at least the
model's receptive field (``dask.array.map_overlap``, no artificial boundary), segmented in tiles batched on
the worker's device, and cropped back to its core. Only the U-Net's encoder sees the whole halo: its decoders,
upsampling, refinement and encoding run over the core and a few pixels around it
(:meth:`polarxr.models.unet.UNet.coarse_logits_over`). Because chunk starts, tile starts and the halo are all
multiples of the model's downsampling factor, and the image edge is handled exactly as a whole-array
run handles it (zero padding at the end only), the blockwise result equals a whole-array run of the same
model for any chunking, up to float rounding.

Workers compute and write; the client plans and commits. Each block's class map is compressed into COG
tiles and its probabilities into Zarr chunks by the workers (:mod:`polarxr.io`), under temporary names that
the client renames into place when every block is done. No lock is shared between workers, so a worker
that dies mid-run just has its tasks recomputed elsewhere, giving identical output.
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
import torch
import xarray as xr

from polarxr.checkpoints import CheckpointChanged, ModelCache, checkpoint_version
from polarxr.classes import CLASS_NAMES, N_CLASSES, NO_LABEL
from polarxr.errors import ModelError, SceneError
from polarxr.graphs import submit_together
from polarxr.io import as_path, local_copy, output_lock
from polarxr.models.unet import row_strips
from polarxr.patches import normalise as normalise_patch
from polarxr.scenes import ensure_not_empty, open_scene

#: Default chunk edge (px) of blockwise inference; a multiple of every model's downsampling factor.
DEFAULT_CHUNK = 2048
#: Per worker device: default chunk edge (px). On a GPU, 6144 px blocks keep the halo of the default
#: U-Net (224 px) to (6144 + 448)^2 / 6144^2 = +15 % of the pixels.
DEFAULT_CHUNKS: dict[str, int] = {"cpu": DEFAULT_CHUNK, "cuda": 6144}
#: Per device: (edge in px of the tiles a block is segmented in, tiles per forward pass). Small tiles
#: one at a time keep a CPU worker's activations to a few hundred MB; a GPU runs a block as one window
#: (a multi-looking U-Net's tiles cover ``pool`` x more ground), and windows of a block cut in smaller
#: tiles (``--tile``) go through in batches of ``batch_size``.
DEFAULT_TILING: dict[str, tuple[int, int]] = {"cpu": (512, 1), "cuda": (2048, 4)}
#: Probabilities are stored as uint8: p * 254, rounded; 255 marks pixels without data (CF ``_FillValue``,
#: ``scale_factor`` 1/254: ``xr.open_zarr`` decodes them to 0..1 and NaN).
PROBABILITY_SCALE = 254
PROBABILITY_FILL = 255
#: Rows of a CPU tile whose full-resolution stages (upsampling, refinement, softmax, encoding) run at a time:
#: bounds their float temporaries (a 4096 px wide strip: ~80 MB).
ENCODE_STRIP = 512


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
    path = local_copy(checkpoint)  # a checkpoint on object storage is fetched once per machine
    version = version or checkpoint_version(path)
    return model_cache().get(path, version, device)


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


def _to_device(batch: np.ndarray, device: str) -> torch.Tensor:
    tensor = torch.from_numpy(batch)
    if device.startswith("cuda"):  # page-locked host memory: an asynchronous copy at full bus speed
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _device_encode(probs: torch.Tensor) -> torch.Tensor:
    """uint8 ``(n, 1 + class, y, x)`` on the device: the argmax class, then probabilities x 254, rounded.

    The same float32 operations as :func:`encode_probabilities` on the host (round half to even, first
    maximum on ties), so CPU results are identical whichever side encodes.
    """
    # torch's argmax over a non-last dimension costs more than the U-Net itself on a CPU (0.8 s per 4 Mpx
    # measured): a running maximum over the few classes gives the same first maximum, in ~1/10 the time
    best = probs[:, 0]
    classes = torch.zeros(best.shape, dtype=torch.uint8, device=probs.device)
    for c in range(1, probs.shape[1]):
        candidate = probs[:, c]
        classes = torch.where(candidate > best, torch.tensor(c, dtype=torch.uint8, device=probs.device), classes)
        best = torch.maximum(best, candidate)
    classes = classes[:, None]
    scaled = torch.round(probs * PROBABILITY_SCALE).to(torch.uint8)
    return torch.cat([classes, scaled], dim=1)


def _logits(model: torch.nn.Module, tensor: torch.Tensor, crop: tuple[slice, slice] | None) -> torch.Tensor:
    if crop is None:
        return model(tensor)
    if hasattr(model, "forward_crop"):  # full-resolution stages over the crop only (UNet.forward_crop)
        return model.forward_crop(tensor, *crop)
    return model(tensor)[..., crop[0], crop[1]]


@torch.inference_mode()
def _forward(model: torch.nn.Module, batch: np.ndarray, device: str, encode: bool = False,
             crop: tuple[slice, slice] | None = None) -> np.ndarray:
    """Softmax probabilities ``(n, class, y, x)`` float32 of a batch ``(n, band, y, x)``; with ``encode``, the
    uint8 encoding of :func:`_device_encode`, computed on the device so that only uint8 comes back.
    ``crop`` (rows, cols): only that window of the output, computed (and encoded) only there where the model
    allows (:meth:`polarxr.models.unet.UNet.forward_crop`)."""
    tensor = _to_device(batch, device)
    if device.startswith("cuda"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = _logits(model, tensor, crop)
    elif encode:
        return _encode_strips(model, tensor, crop)
    else:
        logits = _logits(model, tensor, crop)
    probs = torch.softmax(logits.float(), dim=1)
    return (_device_encode(probs) if encode else probs).cpu().numpy()


def _encode_strips(model: torch.nn.Module, tensor: torch.Tensor, crop: tuple[slice, slice] | None) -> np.ndarray:
    """The uint8 encoding of a CPU batch, strip by strip of :data:`ENCODE_STRIP` output rows.

    On a CPU worker the full-resolution float temporaries (upsampled logits, probabilities, scaled values:
    ~40 B/px) would dominate a large tile's memory; the U-Net runs once over the whole window and its
    full-resolution stages (:meth:`~polarxr.models.unet.UNet.crop_strips`) and the encoding per strip,
    which gives the same bytes with a bounded working set.
    """
    height, width = tensor.shape[-2:]
    rows, cols = crop or (slice(0, height), slice(0, width))
    if hasattr(model, "crop_strips"):
        strips = model.crop_strips(tensor, rows, cols, ENCODE_STRIP)
    else:  # a model without full-resolution stages of its own: its logits once, encoded per strip
        whole = _logits(model, tensor, crop)
        strips = ((strip, whole[:, :, strip.start - rows.start:strip.stop - rows.start])
                  for strip in row_strips(rows, ENCODE_STRIP))
    out = None
    for strip, logits in strips:
        if out is None:
            out = torch.empty((tensor.shape[0], 1 + logits.shape[1], rows.stop - rows.start, cols.stop - cols.start),
                              dtype=torch.uint8)
        encoded = _device_encode(torch.softmax(logits.float(), dim=1))
        out[:, :, strip.start - rows.start:strip.stop - rows.start] = encoded
    return out.numpy()


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


def _segment_tiles(model, image, core, halo, multiple, tile, device, batch_size, encode: bool = False) -> np.ndarray:
    """Probabilities of the ``core`` window ``((y0, y1), (x0, x1))`` of an extended block, tile by tile
    (float32 ``(class, y, x)``, or with ``encode`` uint8 ``(1 + class, y, x)`` encoded on the device).

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
            crop = (ty - wy0, ey - wy0, tx - wx0, ex - wx0)
            # windows of one shape and crop go through together; only the crop is upsampled and encoded
            jobs.setdefault((window.shape, crop), []).append((window, (ty - cy0, ey - cy0, tx - cx0, ex - cx0)))
    out = np.empty((N_CLASSES + encode, cy1 - cy0, cx1 - cx0), dtype=np.uint8 if encode else np.float32)
    for (_, (y0, y1, x0, x1)), group in jobs.items():
        for i in range(0, len(group), batch_size):
            chunk = group[i:i + batch_size]
            batch = chunk[0][0][None] if len(chunk) == 1 else np.stack([window for window, _ in chunk])
            probs = _forward(model, batch, device, encode, crop=(slice(y0, y1), slice(x0, x1)))
            for p, (_, (oy0, oy1, ox0, ox1)) in zip(probs, chunk):
                out[:, oy0:oy1, ox0:ox1] = p
    return out


def _probabilities_block(
    block: np.ndarray,
    checkpoint: str,
    version: str,
    nodata: float | None,
    halo: int,
    tile: int | None,
    batch_size: int | None,
    encode: bool = False,
    block_info: dict | None = None,
) -> np.ndarray:
    """map_overlap kernel: float32 probabilities ``(class, y, x)`` of one block's core (0 on nodata), by the
    model of ``checkpoint`` at ``version``, or with ``encode`` the stored uint8 ``(1 + class, y, x)`` (class,
    then p x 254; 255 on nodata), encoded on the worker's device."""
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
        if encode:
            return np.full((1 + N_CLASSES, core_h, core_w), PROBABILITY_FILL, dtype=np.uint8)
        return np.zeros((N_CLASSES, core_h, core_w), dtype=np.float32)
    if meta["model_config"]["name"] == "patchcnn":
        probs = _classify_patches(model, image, int(meta.get("patch_size", 64)), device, batch_size)
        if encode:
            probs = encode_probabilities(probs)
    else:
        _, multiple = _geometry(model, meta)
        # a multi-looking U-Net works on pool x pool coarser pixels: its tiles cover pool x more ground
        tile = tile or default_tile * int(getattr(model, "pool", 1))
        tile = max(multiple, tile // multiple * multiple)
        core = ((top, top + core_h), (left, left + core_w))
        probs = _segment_tiles(model, image, core, halo, multiple, tile, device, batch_size, encode)
    invalid = ~core_valid
    if invalid.any():  # masked writes: cheaper than boolean indexing, and skipped for blocks full of data
        if encode:
            np.copyto(probs[0], NO_LABEL, where=invalid)
            np.copyto(probs[1:], PROBABILITY_FILL, where=invalid[None])
        else:
            np.copyto(probs, 0.0, where=invalid[None])
    return probs


def encode_probabilities(probs: np.ndarray) -> np.ndarray:
    """uint8 ``(1 + class, y, x)`` of float32 probabilities ``(class, y, x)``: the argmax class, then p x 254
    rounded half to even (the host twin of the device encoding)."""
    classes = probs.argmax(axis=0).astype(np.uint8)
    scaled = np.rint(probs * PROBABILITY_SCALE).astype(np.uint8)
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
    encode: bool = False,
    version: str | None = None,
) -> xr.DataArray:
    """Lazy float32 class probabilities ``DataArray(class, y, x)`` of a scene, on its grid and CRS.

    Chunks are ``chunk`` px (a multiple of the model's downsampling factor, and not smaller than the halo);
    each block sees a halo of at least the model's receptive field, so the result does not depend on
    ``chunk``. ``tile``/``batch_size`` default per worker device (:data:`DEFAULT_TILING`).
    ``seamless=False`` drops the halo: faster, but blocks show seams (previews, benchmarks).
    ``encode=True``: the stored form instead, uint8 ``(1 + class, y, x)`` (class map, then p x 254; 255 on
    nodata), computed on each worker's device so that only uint8 leaves a GPU.
    ``version``: the checkpoint version every block must use (default: the file's version now).
    """
    checkpoint = as_path(checkpoint)
    version = version or checkpoint_version(local_copy(checkpoint))
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
        dtype=np.uint8 if encode else np.float32,
        meta=np.empty((0, 0, 0), np.uint8 if encode else np.float32),
        chunks=((N_CLASSES + encode,), data.chunks[1], data.chunks[2]),
        checkpoint=str(checkpoint),
        version=version,
        nodata=scene.rio.nodata,
        halo=halo,
        tile=tile,
        batch_size=batch_size,
        encode=encode,
    )
    names = ["class"] * encode + [CLASS_NAMES[c] for c in range(N_CLASSES)]
    out = xr.DataArray(
        probs,
        dims=("class", "y", "x"),
        coords={"class": np.array(names, dtype=object), "y": scene.y, "x": scene.x},
        name="encoded" if encode else "probability",
    )
    return out.rio.write_crs(scene.rio.crs).rio.write_transform(scene.rio.transform())


# --------------------------------------------------------------------------------------------- writing
def class_map(scene: xr.DataArray, classes: da.Array) -> xr.DataArray:
    """The class band ``(y, x)`` uint8 (L=0 W=1 I=2, 255 nodata) as a ``DataArray`` on the scene's grid and CRS."""
    out = xr.DataArray(classes, dims=("y", "x"), coords={"y": scene.y, "x": scene.x}, name="class")
    return out.rio.write_crs(scene.rio.crs).rio.write_transform(scene.rio.transform())


def probability_dataset(scene: xr.DataArray, encoded: da.Array, chunk: int, tags: dict) -> xr.Dataset:
    """The stored probabilities: ``probability (class, y, x)`` uint8, CF-encoded so that ``xr.open_zarr`` decodes
    them to floats 0..1 (NaN where the scene has no data) with the scene's CRS (``grid_mapping``).

    Zarr chunks are ``chunk`` px; every dask block covers whole Zarr chunks, so each task writes its own.
    """
    probs = xr.DataArray(
        encoded[1:], dims=("class", "y", "x"), name="probability",
        coords={"class": np.array([CLASS_NAMES[c] for c in range(N_CLASSES)], dtype=object), "y": scene.y, "x": scene.x},
    )
    probs = probs.rio.write_crs(scene.rio.crs).rio.write_transform(scene.rio.transform())
    probs.attrs.update(scale_factor=np.float32(1 / PROBABILITY_SCALE), add_offset=np.float32(0),
                       _FillValue=np.uint8(PROBABILITY_FILL), units="1", long_name="class probability", **tags)
    probs.encoding["chunks"] = (N_CLASSES, min(chunk, scene.sizes["y"]), min(chunk, scene.sizes["x"]))
    return probs.to_dataset()


def _store_block(block: np.ndarray, class_store: str, probability_store: str | None, options: dict | None,
                 block_info: dict | None = None) -> np.ndarray:
    """The one task that consumes a block's inference: writes its class band into the staged class store and
    its probabilities into their region of the probability Zarr; returns the block's marker ``(1, 1, 1)``.

    Each block covers whole Zarr chunks, so no two tasks write one chunk, and a retried task rewrites the same
    bytes. (One consumer per block: graphs wrapped separately by the COG and Zarr writers would each recompute
    the inference; see ``benchmarks/predict_recompute.py``.)
    """
    import zarr

    (_, _), (y0, y1), (x0, x1) = block_info[0]["array-location"]
    zarr.open_array(class_store, mode="r+", storage_options=options)[y0:y1, x0:x1] = block[0]
    if probability_store is not None:
        group = zarr.open_group(probability_store, mode="r+", storage_options=options)
        group["probability"][:, y0:y1, x0:x1] = block[1:]
    return np.zeros((1, 1, 1), np.uint8)


@dataclass
class _ScenePlan:
    """One scene's graph: its outputs (under temporary names until committed), the per-block tasks that
    run the model and write the block (stage 1), and the COG written from the staged class band (stage 2)."""

    scene: xr.DataArray
    out_tif: Path | str
    out_zarr: Path | str | None
    markers: list
    locations: list
    cog: object
    outputs: ExitStack


def _plan_scene(scene: xr.DataArray, encoded: da.Array, out_tif, out_zarr, tags: dict, chunk: int) -> _ScenePlan:
    """Build the writes of one scene: the class COG and the probability Zarr, both written by the workers."""
    import zarr

    from polarxr.io import atomic_path, cog_graph, scratch_path, storage_options, zarr_graph

    outputs = ExitStack()
    try:
        tmp_tif = outputs.enter_context(atomic_path(out_tif))
        staged = outputs.enter_context(scratch_path(out_tif, "classes.zarr"))
        options = storage_options(staged)
        height, width = encoded.shape[1:]
        zarr_chunks = (min(chunk, height), min(chunk, width))
        zarr.create_array(str(staged), shape=(height, width), chunks=zarr_chunks, dtype=np.uint8,
                          fill_value=NO_LABEL, storage_options=options, zarr_format=3)
        tmp_zarr = None
        if out_zarr is not None:
            tmp_zarr = outputs.enter_context(atomic_path(out_zarr))
            # metadata and coordinates now (the client); its graph is dropped: the block tasks below write the data
            zarr_graph(probability_dataset(scene, encoded, chunk, tags), tmp_zarr)
        staged_classes = da.from_zarr(str(staged), storage_options=options, chunks=encoded.chunks[1:])
        cog = cog_graph(class_map(scene, staged_classes), tmp_tif, nodata=NO_LABEL, tags=tags, categorical=True,
                        description="class (0 land, 1 sea, 2 ice, 255 nodata)")
    except BaseException:
        outputs.__exit__(RuntimeError, RuntimeError("prediction failed"), None)
        raise
    markers = encoded.map_blocks(_store_block, str(staged), None if tmp_zarr is None else str(tmp_zarr),
                                 options, chunks=(1, 1, 1), dtype=np.uint8,
                                 meta=np.empty((0, 0, 0), np.uint8)).to_delayed()
    y_edges = np.cumsum((0,) + encoded.chunks[1])
    x_edges = np.cumsum((0,) + encoded.chunks[2])
    flat, locations = [], []
    for (_, i, j), marker in np.ndenumerate(markers):
        flat.append(marker)
        locations.append((slice(int(y_edges[i]), int(y_edges[i + 1])), slice(int(x_edges[j]), int(x_edges[j + 1]))))
    return _ScenePlan(scene, out_tif, out_zarr, flat, locations, cog, outputs)


def predict_scenes(
    scenes: Sequence[str | Path],
    checkpoint: str | Path,
    out_dir: str | Path,
    client=None,
    chunk: int | None = None,
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
    ``<stem>_probability.zarr`` (uint8 ``(class, y, x)``, p x 254, 255 nodata; CF-decodable), ``<stem>_quicklook.png`` and, where a
    chart is given, metrics against it. ``progress(done, total)`` is called as blocks complete.
    ``model_version``: the checkpoint version to use (default: the file's version when the run starts);
    every block of every scene is made by that version, or the run fails. ``bands``: the scenes' band
    names where the files do not say (:func:`polarxr.scenes.identify_bands`).
    """
    out_dir = as_path(out_dir)
    charts = list(charts) if charts is not None else [None] * len(scenes)
    outputs = []
    for path in scenes:
        stem = as_path(path).name.split(".")[0]
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
    chunk: int | None = None,
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
    outputs = [(as_path(out_tif), as_path(probabilities) if probabilities else None)]
    options = dict(chunk=chunk, tile=tile, batch_size=batch_size, seamless=seamless, version=model_version,
                   bands=bands)
    (result,) = _run([scene_path], outputs, checkpoint, client, options, progress)
    _finish(result, chart, quicklook)
    return result


def default_chunk(client) -> int:
    """:data:`DEFAULT_CHUNKS` of the cluster's workers: the GPU size when every worker has a GPU."""
    from polarxr.cluster import worker_device

    try:
        devices = set(client.run(worker_device).values())
    except (OSError, AttributeError, ValueError):
        devices = {"cpu"}
    return DEFAULT_CHUNKS["cuda"] if devices == {"cuda"} else DEFAULT_CHUNKS["cpu"]


def _run(scenes, outputs, checkpoint, client, options: dict, progress) -> list[PredictionResult]:
    from polarxr.cluster import get_client

    checkpoint = as_path(checkpoint)
    if not checkpoint.exists():
        raise ModelError(checkpoint, "checkpoint file does not exist")
    if client is None:
        with get_client() as local_client:
            return _run(scenes, outputs, checkpoint, local_client, options, progress)
    if options["chunk"] is None:
        options = {**options, "chunk": default_chunk(client)}
    # one model version for the whole run, fixed here on the client: every block's task carries it
    options = {**options, "version": options.get("version") or checkpoint_version(checkpoint)}
    with output_lock([p for pair in outputs for p in pair]):
        return _run_locked(scenes, outputs, checkpoint, client, options, progress)


def _run_locked(scenes, outputs, checkpoint, client, options: dict, progress) -> list[PredictionResult]:
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    from polarxr import __version__

    options = dict(options)
    bands = options.pop("bands", None)
    tags = {"polarxr_version": __version__, "checkpoint": checkpoint.name, "model_version": options["version"],
            "seamless": "yes" if options["seamless"] else "no (preview: blocks without halo show seams)"}
    started = time.perf_counter()
    plans: list[_ScenePlan] = []
    try:
        for scene_path, (out_tif, out_zarr) in zip(scenes, outputs):
            scene = open_scene(scene_path, chunks={"band": -1, "y": options["chunk"], "x": options["chunk"]},
                               bands=bands)
            ensure_not_empty(scene)
            encoded = probabilities(scene, checkpoint, encode=True, **options).data
            plans.append(_plan_scene(scene, encoded, out_tif, out_zarr, tags, options["chunk"]))
        # stage 1, one graph for every scene: a task per block runs the model and writes the block
        markers = submit_together(client, [m for plan in plans for m in plan.markers], retries=2)
        where = [(plan, location) for plan in plans for location in plan.locations]
        index_of = {f.key: k for k, f in enumerate(markers)}
        for done, future in enumerate(as_completed(markers), start=1):
            plan, (ys, xs) = where[index_of[future.key]]
            try:
                future.result()
            except (CheckpointChanged, FutureCancelledError, CommClosedError):
                raise  # a replaced checkpoint or a lost scheduler: not a problem of the scene
            except Exception as err:  # a block failed on a worker even after retries: name the scene
                raise SceneError(plan.scene.attrs["source"],
                                 f"segmentation failed in rows {ys.start}-{ys.stop}, columns {xs.start}-{xs.stop}: "
                                 f"{type(err).__name__}: {err}") from err
            future.release()
            if progress:
                progress(done, len(markers))
        # stage 2: the COGs, from the staged class bands (uint8, read back once)
        for future in submit_together(client, [plan.cog for plan in plans], retries=2):
            future.result()
    except BaseException:
        for plan in plans:
            plan.outputs.__exit__(RuntimeError, RuntimeError("prediction failed"), None)
        raise
    for plan in plans:  # the client commits: a rename (or, on object storage, a copy with metadata last)
        plan.outputs.close()
    seconds = time.perf_counter() - started
    total_px = sum(p.scene.sizes["y"] * p.scene.sizes["x"] for p in plans)
    return [
        PredictionResult(
            scene=as_path(p.scene.attrs["source"]),
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

        target = as_path(quicklook) if not isinstance(quicklook, bool) else result.class_map.with_name(
            result.class_map.name.replace("_class.tif", "_quicklook.png"))
        class_quicklook(str(result.class_map), target, scene=str(result.scene))
        result.quicklook = target
    if chart:
        from polarxr.evaluate import evaluate_prediction

        result.metrics = evaluate_prediction(str(result.class_map), chart)

