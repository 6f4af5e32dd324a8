"""Fixed read strategies for FITS stamps, built on ``store.get_ranges``/``store.get`` only.

They are what objbutler's cost-model planner is judged against: the planner
should be within 1.3x of the best of them in every cell.

``exact-ranges``
    One range per stamp row (overlapping rows of neighbouring stamps joined),
    all in one concurrent ``get_ranges`` call.
``merged-<gap>``
    Rows whose gap is below a fixed number of bytes are merged, with no cap on
    block size and no splitting: one concurrent ``get_ranges`` call.
``whole-download``
    One ``GET`` of the whole object, then numpy slicing.

Uncompressed images use only objbutler's pure pieces (``plan_stamps``,
``row_ranges``, ``PixelScaling``, ``ReadPlan``/``extract``) and their own I/O.
Tile-compressed images need tile decoding, so their exact and merged
strategies run objbutler's reader with a *fixed* :class:`CostModel` (zero
latency: exact tile ranges; ``latency * bandwidth = gap`` and one lane: merge
below the gap, never split except at the 16 MiB block cap) instead of the
default cloud model.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from objbutler.cutouts import Box, plan_stamps
from objbutler.formats.fits_cutouts import read_fits_cutouts, row_ranges, stamp_rows
from objbutler.formats.fits_headers import PixelScaling
from objbutler.ranges import ByteRange, CostModel, ReadPlan

__all__ = [
    "HEADER_READ",
    "compressed_fixed",
    "fits_ranges",
    "fits_whole",
    "merge_ranges",
    "parse_primary_header",
    "two_round_trips",
]

HEADER_READ = 4 * 2880
"""Bytes of the fixed strategies' header read (objbutler's reader reads up to ~64 KiB at once)."""


def parse_primary_header(head: bytes) -> tuple[fits.Header, int]:
    """Parse a primary header from its first bytes; return it and the data's byte offset."""
    for offset in range(0, len(head) - 79, 80):
        if head[offset : offset + 8] == b"END     ":
            header = fits.Header.fromstring(head[: offset + 80].decode("ascii"))
            return header, math.ceil((offset + 80) / 2880) * 2880
    raise ValueError(f"no END card in the first {len(head)} bytes (a longer header than the benchmark image's)")


def merge_ranges(ranges: np.ndarray, gap: int) -> list[ByteRange]:
    """Sort ``(n, 2)`` ranges and merge those less than ``gap`` bytes apart (overlaps always merge)."""
    if len(ranges) == 0:
        return []
    ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
    ends = np.maximum.accumulate(ranges[:, 1])
    cut = np.flatnonzero(ranges[1:, 0] - ends[:-1] >= max(gap, 1)) + 1
    starts = ranges[np.concatenate(([0], cut)), 0]
    stops = ends[np.concatenate((cut - 1, [len(ranges) - 1]))]
    return [ByteRange(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def fits_ranges(store: Any, key: str, boxes: Sequence[Box], gap: int | None) -> list[np.ndarray]:
    """Cut stamps from an uncompressed FITS image: one header read, then exact (``gap=None``) or merged ranges.

    Parameters
    ----------
    store : objbutler Store
        Where the image is.
    key : str
        Its key.
    boxes : sequence of Box
        Stamps (clipped to the image, "trim" mode).
    gap : int or None
        None: one range per stamp row; else merge rows less than ``gap`` bytes apart.

    Returns
    -------
    list of numpy.ndarray
        The stamps, in request order.
    """
    head = store.get_ranges(key, [(0, HEADER_READ)])[0]
    header, data_start = parse_primary_header(head)
    scaling = PixelScaling.from_header(header)
    itemsize = scaling.raw_dtype.itemsize
    nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
    plans = plan_stamps(boxes, (ny, nx), "trim")
    needed = row_ranges([p.read for p in plans], nx, itemsize, data_start)
    blocks = merge_ranges(needed, 1 if gap is None else gap)
    plan = ReadPlan(blocks)
    fetched = store.get_ranges(key, blocks)
    stride = nx * itemsize
    stamps = []
    for stamp in plans:
        read = stamp.read
        if read.is_empty:
            stamps.append(np.empty((0, 0), scaling.dtype))
            continue
        first = data_start + (read.y0 * nx + read.x0) * itemsize
        stamps.append(scaling.decode(stamp_rows(plan, fetched, first, stride, read.shape, scaling.raw_dtype)))
    return stamps


def fits_whole(store: Any, key: str, boxes: Sequence[Box]) -> list[np.ndarray]:
    """Download the whole FITS object, open it with astropy, slice every stamp (compressed: decompress all)."""
    data = store.get(key)
    with fits.open(io.BytesIO(data)) as hdus:
        image = next(h for h in hdus if h.is_image and h.size).data
        ny, nx = image.shape
        return [np.array(image[p.read.slices()]) for p in plan_stamps(boxes, (ny, nx), "trim")]


def compressed_fixed(store: Any, key: str, boxes: Sequence[Box], gap: int | None) -> list[Any]:
    """Tile-compressed FITS with a fixed plan: exact tile ranges (``gap=None``) or tiles merged below ``gap``."""
    bandwidth = 1e9
    latency = 0.0 if gap is None else gap / bandwidth
    cost = CostModel(latency=latency, bandwidth=bandwidth, concurrency=1)
    return read_fits_cutouts(store, key, boxes, "trim", cost=cost)


def two_round_trips(store: Any, key: str) -> None:
    """Two dependent 100-byte range reads: the latency floor of reading one tile after its tile table."""
    first = store.get_ranges(key, [(0, 100)])[0]
    store.get_ranges(key, [(len(first), len(first) + 100)])
