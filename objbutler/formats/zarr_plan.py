"""Planning a Zarr read (pure): which chunks the stamps' read boxes touch, each once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.chunk_key_encodings import ChunkKeyEncoding
from zarr.core.metadata.v3 import ArrayV3Metadata

from objbutler.cutouts import Box, StampPlan

__all__ = ["plan_chunks"]


Chunk = tuple[int, int]


def _grid_chunk_shape(metadata: ArrayV3Metadata) -> tuple[int, ...]:
    """The shape of the objects the chunk grid names (shards, for a sharded array)."""
    assert isinstance(metadata.chunk_grid, RegularChunkGrid)  # checked by _load_metadata
    return metadata.chunk_grid.chunk_shape


def _chunk_span(read: Box, shape: tuple[int, ...], chunk_shape: tuple[int, ...]) -> tuple[range, range]:
    """The chunk rows and columns a box inside the image touches."""
    if read.is_empty:
        return range(0), range(0)
    if read.x0 < 0 or read.y0 < 0 or read.y1 > shape[0] or read.x1 > shape[1]:
        raise ValueError(f"{read} is not inside the {shape[0]}x{shape[1]} image")
    rows, cols = chunk_shape
    return range(read.y0 // rows, (read.y1 - 1) // rows + 1), range(read.x0 // cols, (read.x1 - 1) // cols + 1)


def plan_chunks(
    plans: Sequence[StampPlan],
    shape: tuple[int, ...],
    chunk_shape: tuple[int, ...],
    key_encoding: ChunkKeyEncoding,
) -> dict[Chunk, str]:
    """The chunks the stamps' read boxes touch, each once.

    Parameters
    ----------
    plans : sequence of StampPlan
        Clipped stamps (:func:`objbutler.cutouts.plan_stamps`).
    shape : tuple of int
        ``(ny, nx)`` of the image.
    chunk_shape : tuple of int
        ``(rows, columns)`` of a chunk.
    key_encoding : zarr ChunkKeyEncoding
        How chunk coordinates become keys (``c/0/0``, ``0.0``, ...).

    Returns
    -------
    dict of (int, int) to str
        Chunk coordinates -> relative key, sorted by coordinates.
    """
    needed: set[Chunk] = set()
    for plan in plans:
        rows, cols = _chunk_span(plan.read, shape, chunk_shape)
        needed.update(itertools.product(rows, cols))
    return {coords: key_encoding.encode_chunk_key(coords) for coords in sorted(needed)}
