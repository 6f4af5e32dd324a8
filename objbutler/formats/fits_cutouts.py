"""Many stamps out of one FITS image in a store, with a few range reads: never the whole object.

1. find the image: from the registry's layout when objbutler wrote it (no
   read at all), else by reading its header (:mod:`objbutler.formats.fits_headers`);
2. plain image HDU: turn each stamp into one byte range per row
   (``data start + (y * NAXIS1 + x0) * bytes per pixel``), let
   :func:`objbutler.ranges.plan_reads` merge them, fetch every block with one
   ``store.get_ranges`` call and decode exactly as astropy's ``.data`` and
   ``.section`` do (:class:`~objbutler.formats.fits_headers.PixelScaling`),
   straight from a strided view of the fetched block into the stamp (one
   copy per stamp);
3. tile-compressed HDU (a BINTABLE with ``ZIMAGE = T``): parse the tile table
   (usually inside the first read), fetch the heap bytes of only the tiles
   the stamps touch (one ``get_ranges`` call) and decode each tile once, on
   one thread per CPU, with astropy's own codecs
   (:mod:`objbutler.formats.fits_tiles`); one stamp costs two requests.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from astropy.wcs import WCS

from objbutler.cutouts import (
    Box,
    ClipMode,
    Cutout,
    ParentWCS,
    StampPlan,
    new_stamp,
    plan_stamp_arrays,
    plan_stamps,
    stamp_dtype,
)
from objbutler.errors import FormatError
from objbutler.formats._image import _wcs_from
from objbutler.formats.fits_headers import (
    HduInfo,
    HduSelector,
    HeaderReader,
    PixelScaling,
    check_declared_sizes,
    layout_info,
    locate,
)
from objbutler.formats.fits_tiles import TileTable, image_header
from objbutler.ranges import DEFAULT_MAX_BLOCK, ByteRange, CostModel, ReadPlan, extract, plan_reads
from objbutler.stores import ReadRanges, run_concurrently

__all__ = ["read_fits_cutouts", "read_fits_wcs", "row_ranges", "stamp_rows"]


# --------------------------------------------------------------------- stamp planning (pure)


def row_ranges(reads: Sequence[Box] | np.ndarray, nx: int, itemsize: int, data_start: int) -> np.ndarray:
    """The byte ranges of every row of every box of an uncompressed 2-D image.

    Parameters
    ----------
    reads : sequence of Box, or an (N, 4) integer array of their corners
        Boxes inside the image (empty boxes contribute nothing).
    nx : int
        NAXIS1, pixels per image row.
    itemsize : int
        Bytes per pixel (``abs(BITPIX) // 8``).
    data_start : int
        Byte offset of the image data.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` int64 array of half-open ``(start, stop)`` offsets, box by box, row by row.
    """
    if isinstance(reads, np.ndarray):
        corners = reads.astype(np.int64, copy=False).reshape(-1, 4)
        corners = corners[(corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])]
    else:
        corners = np.array([(b.x0, b.y0, b.x1, b.y1) for b in reads if not b.is_empty], dtype=np.int64).reshape(-1, 4)
    heights = corners[:, 3] - corners[:, 1]
    row_in_box = np.arange(int(heights.sum()), dtype=np.int64) - np.repeat(np.cumsum(heights) - heights, heights)
    rows = np.repeat(corners[:, 1], heights) + row_in_box
    starts = data_start + (rows * nx + np.repeat(corners[:, 0], heights)) * itemsize
    return np.stack([starts, starts + np.repeat((corners[:, 2] - corners[:, 0]) * itemsize, heights)], axis=1)


def stamp_rows(
    plan: ReadPlan, fetched: Sequence[bytes | memoryview], first: int, stride: int, shape: tuple[int, int],
    dtype: np.dtype[Any],
) -> np.ndarray:
    """The raw pixels of one stamp, out of the blocks a plan fetched.

    Parameters
    ----------
    plan : ReadPlan
        The plan the blocks were fetched by.
    fetched : sequence of bytes or memoryview
        One buffer per block of ``plan``.
    first : int
        Object offset of the stamp's first pixel.
    stride : int
        Bytes from one image row to the next.
    shape : tuple of int
        ``(rows, pixels per row)`` of the stamp.
    dtype : numpy.dtype
        The stored (big-endian) pixel type.

    Returns
    -------
    numpy.ndarray
        A zero-copy strided view when one block holds every row (the usual
        case); otherwise a copy, a run of rows per block, through
        :func:`objbutler.ranges.extract` for a row that crosses two blocks.
    """
    nrows, width = shape
    row_bytes = width * dtype.itemsize
    out: np.ndarray | None = None
    row = 0
    while row < nrows:
        offset = first + row * stride
        index = plan.block_index(offset)
        room = plan.blocks[index].stop - offset - row_bytes if index >= 0 else -1
        inside = min(nrows - row, room // stride + 1) if room >= 0 else 0
        if inside == nrows:
            start = offset - plan.blocks[index].start
            return np.ndarray(shape, dtype, buffer=fetched[index], offset=start, strides=(stride, dtype.itemsize))
        if out is None:
            out = np.empty(shape, dtype=dtype)
        if inside:
            start = offset - plan.blocks[index].start
            strides = (stride, dtype.itemsize)
            out[row : row + inside] = np.ndarray((inside, width), dtype, fetched[index], start, strides)
            row += inside
        else:  # a row that crosses two blocks
            out[row] = np.frombuffer(extract(plan, fetched, (offset, offset + row_bytes)), dtype)
            row += 1
    assert out is not None
    return out


# --------------------------------------------------------------------- cutouts


def read_fits_cutouts(
    store: ReadRanges,
    key: str,
    boxes: Sequence[Box] | np.ndarray,
    mode: ClipMode = "trim",
    fill_value: float = np.nan,
    *,
    hdu: HduSelector = None,
    cost: CostModel | None = None,
    layout: Any = None,
    object_size: int | None = None,
    parent_wcs: WCS | None = None,
) -> list[Cutout]:
    """Cut many stamps out of one FITS image in a store with a few range reads.

    Parameters
    ----------
    store : ReadRanges
        Where the object is: anything with range reads (a store, a wrapper, a read-only source).
    key : str
        The FITS object's key.
    boxes : sequence of Box, or an (N, 4) integer array
        Half-open pixel boxes ``data[y0:y1, x0:x1]``, in any order (an array: their corners
        ``x0, y0, x1, y1``, see :func:`objbutler.cutouts.plan_stamps`).
    mode : {"trim", "partial", "strict"}
        Clipping mode (see :mod:`objbutler.cutouts`).
    fill_value : float, default NaN
        Value of pixels outside the image in ``partial`` mode.
    hdu : int, str or None
        HDU index or EXTNAME; by default the primary HDU if it holds data,
        else the first image extension (plain or tile-compressed).
    cost : CostModel, optional
        Store cost model for the range planner; by default chosen from the
        store (:meth:`CostModel.for_store`).
    layout : dict, optional
        The registry's :func:`fits_layout` (or :func:`hdu_layout`) of the object: the header is then
        not read unless a stamp's WCS is asked for (ignored with an ``hdu`` other than the
        layout's, or if it does not fit ``object_size``).
    object_size : int, optional
        The object's size in bytes, to check ``layout`` and the header against
        (the data an HDU declares must fit in it). Without it, the size is
        known when the first read reached the end of the object; otherwise
        data past the end shows up as a short read (no read returns more than
        the object holds, so nothing larger is allocated).
    parent_wcs : astropy.wcs.WCS, optional
        The image's WCS when the caller already read it (sky positions).

    Returns
    -------
    list of Cutout
        In request order, each with its own WCS.

    Raises
    ------
    FormatError
        Not FITS, a truncated header or data, a non-image HDU, not 2-D, data
        declared larger than the object, tiles that do not match the tile
        table or a tile too large to decode.
    InvalidCutoutError
        In strict mode, for a box not wholly inside the image.
    """
    cost = cost or CostModel.for_store(store, key)
    reader = HeaderReader(store, key, cost)
    recorded = layout.get("hdu") if isinstance(layout, dict) else None
    facts = _layout_facts(layout, object_size) if layout is not None and hdu in (None, recorded) else None
    hinted = facts.info if facts is not None else None
    info = hinted or locate(reader, hdu)
    if hinted is None:  # the layout was checked against object_size; a header is checked here
        size = object_size if object_size is not None else _size_if_known(reader)
        check_declared_sizes(info, size, key, "tiles")
        facts = _Facts(info, info.image_shape, info.kind, None)
    assert facts is not None
    if len(facts.shape) != 2:
        raise FormatError(f"HDU {info.index} of {key!r} is {len(facts.shape)}-D; cutouts need a 2-D image")
    shape = (facts.shape[0], facts.shape[1])
    plans = plan_stamps(boxes, shape, mode) if facts.kind == "compressed" else None
    bboxes, reads = plan_stamp_arrays(boxes, shape, mode) if plans is None else (None, None)
    if parent_wcs is not None:
        wcs = ParentWCS(lambda: parent_wcs)
    elif hinted is not None:
        wcs = ParentWCS(lambda: read_fits_wcs(store, key, hdu=hinted.index))
    else:
        wcs = ParentWCS(lambda: _wcs_from(image_header(info.header) if info.kind == "compressed" else info.header))
    if plans is not None:
        return _compressed_cutouts(reader, info, plans, fill_value, cost, wcs)
    assert bboxes is not None and reads is not None
    return _image_cutouts(reader, info, bboxes, reads, fill_value, cost, wcs, facts.scaling, shape[1])


class _Facts(NamedTuple):
    """What cutting an HDU needs of its header: read once per registry layout, not per call."""

    info: HduInfo
    shape: tuple[int, ...]
    kind: str
    scaling: PixelScaling | None  # of a plain image HDU


def _facts_from(layout: Any, object_size: int | None) -> _Facts | None:
    info = layout_info(layout, object_size)
    if info is None:
        return None
    kind = info.kind
    return _Facts(info, info.image_shape, kind, PixelScaling.from_header(info.header) if kind == "image" else None)


@functools.lru_cache(maxsize=4096)
def _facts_of(frozen: tuple[tuple[str, str, Any], ...], object_size: int | None) -> _Facts | None:
    return _facts_from({key: value for key, _, value in frozen}, object_size)


def _layout_facts(layout: Any, object_size: int | None) -> _Facts | None:
    """:func:`layout_info` of a registry layout with its shape, kind and scaling, cached by the layout's content.

    Building the astropy Header of a layout and reading its cards back costs ~0.2 ms, as much as
    planning and reading one stamp: an object history over a thousand images pays it once per layout.
    The cached HduInfo's header is shared: nothing here modifies it.
    """
    if not isinstance(layout, dict):
        return _facts_from(layout, object_size)
    try:
        # the value's type is part of the key: a layout with BZERO 32768 is not one with 32768.0
        frozen = tuple(sorted((k, type(v).__name__, tuple(v) if isinstance(v, list) else v) for k, v in layout.items()))
        hash(frozen)
    except TypeError:  # a value that is not hashable (not a layout objbutler wrote)
        return _facts_from(layout, object_size)
    return _facts_of(frozen, object_size)


def read_fits_wcs(store: ReadRanges, key: str, *, hdu: HduSelector = None) -> WCS | None:
    """The WCS of a FITS image in a store, from its header alone (a few small range reads).

    Parameters
    ----------
    store : ReadRanges
        Where the object is: anything with range reads (a store, a wrapper, a read-only source).
    key : str
        The FITS object's key.
    hdu : int, str or None
        HDU index or EXTNAME, chosen as in :func:`read_fits_cutouts`.

    Returns
    -------
    astropy.wcs.WCS or None
        The image's WCS, or None if its header has none.
    """
    info = locate(HeaderReader(store, key, CostModel.for_store(store, key)), hdu)
    return _wcs_from(image_header(info.header) if info.kind == "compressed" else info.header)


def _image_cutouts(
    reader: HeaderReader, info: HduInfo, bboxes: np.ndarray, reads: np.ndarray, fill_value: float, cost: CostModel,
    wcs: ParentWCS, scaling: PixelScaling | None, nx: int,
) -> list[Cutout]:
    """Stamps of a plain image HDU from their planned corners (:func:`plan_stamp_arrays`).

    The byte offsets of every stamp, and which fetched block holds all its rows, are numpy
    operations over all stamps; per stamp, one strided view of its block and one copy remain.
    """
    scaling = scaling or PixelScaling.from_header(info.header)
    raw_dtype = scaling.raw_dtype
    itemsize, stride = raw_dtype.itemsize, nx * raw_dtype.itemsize
    heights, widths = reads[:, 3] - reads[:, 1], reads[:, 2] - reads[:, 0]
    firsts = info.data_start + (reads[:, 1] * nx + reads[:, 0]) * itemsize
    ends = firsts + (heights - 1) * stride + widths * itemsize  # one past the last row's last byte
    pixels = (heights > 0) & (widths > 0)
    low, high = (int(firsts[pixels].min()), int(ends[pixels].max())) if pixels.any() else (0, 0)
    if 0 < high - low <= min(cost.break_even_bytes, DEFAULT_MAX_BLOCK):
        # What plan_reads makes of the stamps' rows when they span at most one break-even size (an
        # object history's one stamp per image): one block from the first stamp byte to the last.
        plan = ReadPlan([ByteRange(low, high)])
        holder, offsets = np.zeros_like(firsts), firsts - low
    else:
        plan = plan_reads(row_ranges(reads, nx, itemsize, info.data_start), cost)
        # per stamp, the block holding its first byte, and its offset there when the block holds every row
        block_starts = np.array([block.start for block in plan.blocks] or [0], dtype=np.int64)
        block_stops = np.array([block.stop for block in plan.blocks] or [0], dtype=np.int64)
        holder = np.searchsorted(block_starts, firsts, side="right") - 1
        known = np.maximum(holder, 0)
        inside = (holder >= 0) & (ends <= block_stops[known])
        offsets = np.where(inside, firsts - block_starts[known], -1)
    fetched = reader.fetch(plan)
    dtype, plain = scaling.dtype, scaling.is_plain
    padded_dtype = stamp_dtype(dtype, fill_value)
    table = np.column_stack([bboxes, reads, holder, offsets, firsts]).tolist()
    stamps = []
    for index, (bx0, by0, bx1, by1, rx0, ry0, rx1, ry1, block, offset, first) in enumerate(table):
        bbox = Box(bx0, by0, bx1, by1)
        whole = bx0 == rx0 and by0 == ry0 and bx1 == rx1 and by1 == ry1
        read = bbox if whole else Box(rx0, ry0, rx1, ry1)
        shape = (by1 - by0, bx1 - bx0)
        if rx1 > rx0 and ry1 > ry0:
            rows = (ry1 - ry0, rx1 - rx0)
            if offset >= 0:  # the usual stamp: every row in one fetched block, a strided view of it
                raw = np.ndarray(rows, raw_dtype, buffer=fetched[block], offset=offset, strides=(stride, itemsize))
            else:
                raw = stamp_rows(plan, fetched, first, stride, rows, raw_dtype)
            if plain and whole:
                data = raw.astype(dtype)  # one byte-swapping copy, straight out of the block
            else:
                data = np.empty(shape, dtype) if whole else np.full(shape, fill_value, padded_dtype)
                data[ry0 - by0 : ry1 - by0, rx0 - bx0 : rx1 - bx0] = raw if plain else scaling.decode(raw)
        else:
            data = np.empty(shape, dtype) if whole else np.full(shape, fill_value, padded_dtype)
        stamps.append(Cutout.from_parent(data, bbox, wcs, index, read=read))
    return stamps


# --------------------------------------------------------------------- tile-compressed images


def _compressed_cutouts(
    reader: HeaderReader, info: HduInfo, plans: list[StampPlan], fill_value: float, cost: CostModel, wcs: ParentWCS
) -> list[Cutout]:
    """Stamps from a tile-compressed image: fetch the tiles they touch (one call), decode each once.

    Tiles are decoded on up to one thread per CPU (astropy's codecs release the
    GIL); each tile is pasted into its stamps as soon as it is decoded and then
    dropped, so at most one decoded tile per thread is alive beside the stamps.
    """
    table = _tile_table(reader, info)
    users: dict[int, list[StampPlan]] = {}
    for stamp_plan in plans:
        for tile in table.grid.rows(stamp_plan.read):
            users.setdefault(tile, []).append(stamp_plan)
    tiles = sorted(users)
    plan = plan_reads(table.heap_ranges(tiles), cost)
    fetched = reader.fetch(plan)
    scaling = PixelScaling.from_header(info.header, "ZBITPIX")
    dtype = scaling.dtype
    stamps = {p.index: new_stamp(p, dtype, fill_value) for p in plans}

    def read_heap(start: int, stop: int) -> memoryview | bytes:
        return extract(plan, fetched, (start, stop))

    with table.decoding(tiles, read_heap) as decode:

        def decode_and_paste(tile: int) -> None:
            pixels = decode(tile)
            if not scaling.is_plain:
                pixels = scaling.decode(pixels)
            frame = table.grid.box(tile)
            for stamp_plan in users[tile]:
                part = stamp_plan.read.intersection(frame)
                stamps[stamp_plan.index][_within(part, stamp_plan.bbox)] = pixels[_within(part, frame)]

        if tiles:
            decode_and_paste(tiles[0])  # on its own first: the dequantizer builds a global table on its first call
        run_concurrently(decode_and_paste, tiles[1:], _decode_threads() if table.parallel else 1)
    return [Cutout.from_parent(stamps[p.index], p.bbox, wcs, p.index, read=p.read) for p in plans]


def _tile_table(reader: HeaderReader, info: HduInfo) -> TileTable:
    """The tile table of a compressed HDU (usually already in the first header read)."""
    size = info.header["NAXIS1"] * info.header["NAXIS2"]
    table = reader.read(info.data_start, info.data_start + size)
    if len(table) != size:
        raise FormatError(f"{reader.key!r} is truncated inside the tile table of HDU {info.index}")
    return TileTable.parse(info.header, table, info.data_start)


def _size_if_known(reader: HeaderReader) -> int | None:
    """The object's size, when a read already reached its end."""
    return reader.start + len(reader.buffer) if reader.at_end else None


def _decode_threads() -> int:
    """CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def _within(box: Box, frame: Box) -> tuple[slice, slice]:
    """Slices of ``box`` in an array whose pixel (0, 0) is ``frame``'s corner."""
    return (slice(box.y0 - frame.y0, box.y1 - frame.y0), slice(box.x0 - frame.x0, box.x1 - frame.x0))
