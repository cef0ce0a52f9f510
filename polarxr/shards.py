"""Whole shards of a sharded Zarr v3 array written in one go, as zarr itself would write them.

The training cube's ``image`` and ``label`` arrays are sharded (:mod:`polarxr.cube`): one file per 256
patches, holding Blosc-compressed inner chunks of 8 patches and an index. zarr-python's write path spends
about 10x the compression time per shard in its asynchronous per-chunk machinery (measured: 1,024 patches
of 3 x 64 x 64 uint8, 275 ms through ``array[...] = ...`` against 29 ms for the same Blosc calls), which
made writing the cube's dominant cost. :class:`ShardWriter` encodes a whole shard with the array's own
codec settings and writes the file once, under a temporary name renamed into place (as zarr's local store
does), so a reader never sees half a shard.

The bytes are those zarr writes (tested byte for byte): inner chunks in order (Morton order is linear
for shards that split only the first axis), each C-ordered bytes (little-endian) through Blosc with the
array's typesize, cname, clevel, shuffle and blocksize; an inner chunk that holds only the fill value is
left out, as zarr does with ``write_empty_chunks=False``; the index of ``(offset, length)`` uint64 pairs
(2**64 - 1 for a missing chunk) with its CRC32C at the end. Anything else (another codec chain, an
object store) raises ``ValueError``: use zarr's own write there.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

_MISSING = np.uint64(2**64 - 1)


class ShardWriter:
    """Writes whole shards along the first axis of the local sharded Zarr v3 array at ``path``."""

    def __init__(self, path: str | Path):
        import zarr
        from numcodecs import Blosc
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec

        self.path = Path(path)
        array = zarr.open_array(self.path, mode="r")
        codecs = array.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            raise ValueError(f"{self.path}: not a sharded array")
        sharding = codecs[0]
        inner = sharding.codecs
        if (len(inner) != 2 or not isinstance(inner[0], BytesCodec) or not isinstance(inner[1], BloscCodec)
                or sharding.index_location.value != "end" or len(sharding.index_codecs) != 2
                or not isinstance(sharding.index_codecs[1], Crc32cCodec)):
            raise ValueError(f"{self.path}: codecs {codecs} are not bytes + blosc with an end index")
        self.shard = array.shards
        self.chunk = sharding.chunk_shape
        if self.shard[1:] != array.shape[1:] or self.chunk[1:] != array.shape[1:] or self.shard[0] % self.chunk[0]:
            raise ValueError(f"{self.path}: shards must split only the first axis into whole chunks")
        self.dtype = np.dtype(array.dtype).newbyteorder("<") if np.dtype(array.dtype).itemsize > 1 else np.dtype(array.dtype)
        self.fill = array.fill_value
        blosc = inner[1]
        self.codec = Blosc(cname=blosc.cname.value, clevel=blosc.clevel,
                           shuffle={"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
                                    "bitshuffle": Blosc.BITSHUFFLE}[blosc.shuffle.value],
                           blocksize=blosc.blocksize, typesize=blosc.typesize)
        self.key = array.metadata.encode_chunk_key

    def _is_fill(self, chunk: np.ndarray) -> bool:
        """Only the fill value (NaN counts as equal to a NaN fill, as in zarr); the first value decides most."""
        if np.asarray(self.fill).dtype.kind in "fc" and np.isnan(self.fill):
            return bool(np.isnan(chunk.flat[0]) and np.isnan(chunk).all())
        return bool(chunk.flat[0] == self.fill and (chunk == self.fill).all())

    def encode(self, data: np.ndarray) -> bytes | None:
        """The shard file holding ``data`` (at most one shard of the first axis, from its start; a shorter
        one is padded with the fill value, as the array's last shard); None when it holds only the fill."""
        import google_crc32c

        per, n_chunks = self.chunk[0], self.shard[0] // self.chunk[0]
        if len(data) > self.shard[0] or data.shape[1:] != tuple(self.shard[1:]):
            raise ValueError(f"{self.path}: {data.shape} does not fit one shard {self.shard}")
        index = np.full((n_chunks, *([1] * (data.ndim - 1)), 2), _MISSING, dtype="<u8")
        parts, offset = [], 0
        for c in range(-(-len(data) // per)):
            chunk = data[c * per:(c + 1) * per]
            if self._is_fill(chunk):
                continue
            if len(chunk) < per:
                padded = np.full((per, *chunk.shape[1:]), self.fill, dtype=chunk.dtype)
                padded[:len(chunk)] = chunk
                chunk = padded
            raw = np.ascontiguousarray(chunk, dtype=self.dtype).view(np.uint8).reshape(-1)
            encoded = self.codec.encode(raw)
            index.reshape(n_chunks, 2)[c] = (offset, len(encoded))
            parts.append(encoded)
            offset += len(encoded)
        if not parts:
            return None
        index_bytes = index.tobytes()
        parts.append(index_bytes)
        parts.append(np.array([google_crc32c.value(index_bytes)], dtype="<u4").tobytes())
        return b"".join(parts)

    def write(self, shard: int, data: np.ndarray) -> None:
        """Write shard number ``shard`` (first-axis index ``shard * shard_size``) holding ``data``."""
        target = self.path / self.key((shard, *([0] * (data.ndim - 1))))
        encoded = self.encode(data)
        if encoded is None:
            target.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(handle, "wb") as f:
                f.write(encoded)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
