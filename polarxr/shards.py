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

from pathlib import Path

import numpy as np

from polarxr.io import write_bytes_atomic

_MISSING = np.uint64(2**64 - 1)


class ShardWriter:
    """Writes whole shards along the first axis of the local sharded Zarr v3 array at ``path``."""

    def __init__(self, path: str | Path):
        import json

        from numcodecs import Blosc

        self.path = Path(path)
        # the array's own zarr.json, parsed here: opening it through zarr costs ~10 ms of its event loop
        meta = json.loads((self.path / "zarr.json").read_text())
        problem = f"{self.path}: not a sharded array of bytes + blosc chunks with an end index"
        try:
            (sharding,) = meta["codecs"]
            config = sharding["configuration"]
            inner, index_codecs = config["codecs"], config["index_codecs"]
            ok = (sharding["name"] == "sharding_indexed" and meta["chunk_grid"]["name"] == "regular"
                  and meta["chunk_key_encoding"]["name"] == "default" and [c["name"] for c in inner] == ["bytes", "blosc"]
                  and [c["name"] for c in index_codecs] == ["bytes", "crc32c"]
                  and index_codecs[0].get("configuration", {}).get("endian", "little") == "little"
                  and inner[0].get("configuration", {}).get("endian", "little") == "little"
                  and config.get("index_location", "end") == "end" and not meta.get("storage_transformers"))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(problem)
        shape = tuple(meta["shape"])
        self.shard = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.chunk = tuple(config["chunk_shape"])
        if self.shard[1:] != shape[1:] or self.chunk[1:] != shape[1:] or self.shard[0] % self.chunk[0]:
            raise ValueError(f"{self.path}: shards must split only the first axis into whole chunks")
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        fill = meta["fill_value"]
        self.fill = self.dtype.type({"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}.get(fill, fill))
        blosc = inner[1]["configuration"]
        self.codec = Blosc(cname=blosc["cname"], clevel=blosc["clevel"],
                           shuffle={"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
                                    "bitshuffle": Blosc.BITSHUFFLE}[blosc["shuffle"]],
                           blocksize=blosc.get("blocksize", 0), typesize=blosc["typesize"])
        self.separator = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")

    def key(self, coords: tuple[int, ...]) -> str:
        return self.separator.join(["c", *map(str, coords)])

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
        write_bytes_atomic(target, encoded)
