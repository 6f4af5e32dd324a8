"""Shard indexes of sharded Zarr arrays: their size, the shard-length check, one range read per index.

The index size comes from :func:`objbutler.formats._internals.shard_index_size` (zarr has no public
accessor). An array whose only codec is ``sharding_indexed`` is read by inner chunk
(:func:`_reads_inner_chunks`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from zarr.codecs import ShardingCodec, ShardingCodecIndexLocation
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
from zarr.core.metadata.v3 import ArrayV3Metadata

from objbutler.errors import FormatError
from objbutler.formats._internals import shard_index_size
from objbutler.formats._limits import MAX_CHUNKS, check_count
from objbutler.formats.zarr_decode import _decoded, _decoder, _regular
from objbutler.formats.zarr_header import ZARR_JSON, _join
from objbutler.formats.zarr_plan import _grid_chunk_shape
from objbutler.stores import Store, budget_of, run_concurrently

__all__: list[str] = []


_DEFAULT_KEYS = DefaultChunkKeyEncoding(separator="/")


_NO_CHUNK = 2**64 - 1  # shard index entry of an inner chunk that was never written


def _reads_inner_chunks(metadata: ArrayV3Metadata) -> bool:
    return len(metadata.codecs) == 1 and isinstance(metadata.codecs[0], ShardingCodec)


def _check_shards(metadata: ArrayV3Metadata, prefix: str, objects: Mapping[str, bytes], keys: Sequence[str]) -> None:
    """Every shard (``objects[key]`` for each grid key read) must be as long as the index of its inner chunks."""
    codec = next((codec for codec in metadata.codecs if isinstance(codec, ShardingCodec)), None)
    if codec is None:
        return
    per_shard = tuple(s // c for s, c in zip(_grid_chunk_shape(metadata), codec.chunk_shape, strict=True))
    where = _join(prefix, ZARR_JSON)
    check_count(math.prod(per_shard), MAX_CHUNKS, f"a shard of {where}")
    index_size = shard_index_size(codec, per_shard)
    for data in (objects[key] for key in keys if key in objects):
        if len(data) < index_size:
            raise FormatError(f"a shard of {where} has {len(data):,} bytes, less than the {index_size:,} "
                              f"of the index its {per_shard} inner chunks need")


def _read_shard_indexes(
    store: Store, prefix: str, codec: ShardingCodec, per_shard: tuple[int, ...], sizes: Mapping[str, int]
) -> list[np.ndarray]:
    """Read each shard's index with one range request (concurrently); ``(*per_shard, 2)`` offsets and lengths."""
    index_size = shard_index_size(codec, per_shard)
    for key, size in sizes.items():
        if size < index_size:
            raise FormatError(f"shard {_join(prefix, key)} has {size:,} bytes, less than the {index_size:,} of the "
                              f"index its {per_shard} inner chunks need")
    at_end = codec.index_location == ShardingCodecIndexLocation.end
    index_document = {
        "zarr_format": 3, "node_type": "array", "shape": [*per_shard, 2], "data_type": "uint64",
        "chunk_grid": _regular([*per_shard, 2]), "chunk_key_encoding": _DEFAULT_KEYS.to_dict(),
        "fill_value": _NO_CHUNK, "codecs": [c.to_dict() for c in codec.index_codecs],
    }  # fmt: skip
    index_key = _DEFAULT_KEYS.encode_chunk_key((0,) * (len(per_shard) + 1))

    def read_index(key: str) -> np.ndarray:
        start = sizes[key] - index_size if at_end else 0
        (raw,) = store.get_ranges(_join(prefix, key), [(start, start + index_size)])
        decoder = _decoder(index_document, {index_key: raw})
        return _decoded(lambda: decoder[...], f"the shard index of {_join(prefix, key)!r}")

    budget = budget_of(store)
    return run_concurrently(read_index, list(sizes), budget.limit, budget)
