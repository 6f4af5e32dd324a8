"""Zarr v3 images: written with zarr's own API, read and cut out with one batched fetch.

This module reads (fetch, decode, cutouts) and is where every Zarr name is imported from; each other
job has its module: :mod:`~objbutler.formats.zarr_header` (the attribute schema: header and WCS cards
as JSON), :mod:`~objbutler.formats.zarr_write` (encode, write, checksums),
:mod:`~objbutler.formats.zarr_plan` (which chunks a read touches),
:mod:`~objbutler.formats.zarr_shards` (shard indexes) and :mod:`~objbutler.formats.zarr_decode`
(decoding fetched bytes through zarr).

Writing
    :func:`encode_zarr` builds the array with :func:`zarr.create_array` in an
    in-memory zarr store and returns its objects (``zarr.json``, ``c/0/0``, ...).
    :func:`write_zarr_objects` puts them under a prefix, chunks first (a bounded
    thread pool) and ``zarr.json`` last, so a torn write never looks like an array.
    Pixels are stored little-endian (zarr's ``bytes`` codec) and read back in
    native byte order; every chunk is written, even one made only of the fill
    value.

Reading
    Planning is pure (:func:`plan_chunks`); I/O is one ``store.get`` of
    ``zarr.json`` plus one ``store.get_many`` of the chunks every box touches
    (each chunk once). Decoding always goes through zarr: the fetched bytes are
    put in a :class:`zarr.storage.MemoryStore` next to the metadata and read
    back with :func:`zarr.open_array`, so every codec zarr knows works and
    missing chunks read as the array's fill value. Each touched chunk is decoded
    once (one zarr read per row of touched chunks) and copied into every stamp
    it feeds. Arrays written by zarr itself work too (``default`` or ``v2`` chunk keys, any codecs, sharding).

    Arrays not written by objbutler may omit chunks (zarr skips chunks equal to
    the fill value), so for them the prefix is listed first and only existing
    chunks are fetched. A sharded array whose only codec is ``sharding_indexed``
    is read by inner chunk: the prefix is listed (shard sizes), each touched
    shard's index is read with one range request, then only the touched inner
    chunks with one ``store.get_ranges`` call per shard. Other sharded layouts
    (array-to-array codecs before the sharding codec, or compression of whole
    shards) are read by whole shards.

Attribute schema (in ``zarr.json`` ``attributes``, all strict JSON)
    ``"objbutler"``: ``{"layout_version": 1, "all_chunks_written": true}``
        Marks arrays objbutler wrote; readers then skip the listing.
    ``"fits_header"``: ``[[keyword, value, comment], ...]``
        The image's descriptive cards (:attr:`Image.header`) in order,
        COMMENT/HISTORY/blank cards included, without the cards the ``wcs``
        cards replace (:func:`objbutler.formats.wcs_cards.superseded_keys`);
        HIERARCH keywords without the ``HIERARCH`` prefix, as astropy names
        them. Record-valued cards too are named as astropy names them
        (``DQ1.NAXES`` for ``DQ1 = 'NAXES: 2'``): a keyword of that form with a
        number for its value is read back as a record-valued card, as
        astropy's ``Card`` does, not as a HIERARCH card; a HIERARCH card
        named like one is stored with its prefix (``HIERARCH A.B``).
    ``"wcs"``: ``[[keyword, value, comment], ...]`` or ``null``
        The cards of ``wcs.to_header(relax=True)`` with 17 significant digits
        (an exact round trip of the numbers; SIP and TPD kept, lookup-table
        distortions are refused at put, see :mod:`objbutler.formats.wcs_cards`).

    Values are JSON strings, integers, booleans, finite floats or ``null``
    (an undefined FITS value); anything else is a one-key tagged object:
    ``{"float": "nan" | "inf" | "-inf"}``, ``{"complex": [re, im]}``
    (parts encoded the same way) or ``{"bytes": "<base64>"}``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from astropy.wcs import WCS
from zarr.codecs import ShardingCodec
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.metadata.v3 import ArrayV3Metadata

from objbutler.cutouts import Box, ClipMode, Cutout, ParentWCS, StampPlan, new_stamp, plan_stamps
from objbutler.errors import FormatError, InvalidCutoutError, NotSupportedError
from objbutler.formats._image import Image
from objbutler.formats._limits import MAX_CHUNKS, check_bytes, check_count, nbytes
from objbutler.formats.zarr_decode import _decoded, _decoder, _regular
from objbutler.formats.zarr_header import (
    _WCS_RELAX as _WCS_RELAX,  # re-exported: callers imported these from here before the split
)
from objbutler.formats.zarr_header import (
    IMAGE_MEMBER,
    ZARR_JSON,
    _join,
    _stored_wcs,
    header_from_json,
    header_to_json,
)
from objbutler.formats.zarr_header import (
    _value_from_json as _value_from_json,
)
from objbutler.formats.zarr_header import (
    _value_to_json as _value_to_json,
)
from objbutler.formats.zarr_plan import Chunk, _chunk_span, _grid_chunk_shape, plan_chunks
from objbutler.formats.zarr_shards import (
    _DEFAULT_KEYS,
    _NO_CHUNK,
    _check_shards,
    _read_shard_indexes,
    _reads_inner_chunks,
)
from objbutler.formats.zarr_write import (
    DEFAULT_COMPRESSOR,
    encode_zarr,
    write_zarr,
    write_zarr_objects,
    zarr_checksum,
    zarr_checksum_of_digests,
)
from objbutler.stores import Store, budget_of, run_concurrently

if TYPE_CHECKING:
    from objbutler.formats.zarr_layout import ZarrLayout

__all__ = [
    "DEFAULT_COMPRESSOR",
    "IMAGE_MEMBER",
    "ZARR_JSON",
    "ZarrObjects",
    "decode_zarr",
    "encode_zarr",
    "fetch_zarr",
    "header_from_json",
    "zarr_image_shape_and_attributes",
    "header_to_json",
    "plan_chunks",
    "read_zarr",
    "read_zarr_cutouts",
    "read_zarr_wcs",
    "write_zarr",
    "write_zarr_objects",
    "zarr_checksum",
    "zarr_checksum_of_digests",
    "zarr_image_attributes",
]





# -- header and WCS as JSON -----------------------------------------------------
















# -- writing --------------------------------------------------------------------


















# -- planning (pure) ------------------------------------------------------------






# -- reading --------------------------------------------------------------------


def _load_metadata(store: Store, prefix: str) -> tuple[dict[str, Any], ArrayV3Metadata]:
    return _parse_metadata(store.get(_join(prefix, ZARR_JSON)), prefix)


_MEMBER_NAMES = ("image", "mask", "uncertainty")


def _group_members(raw: bytes, prefix: str) -> dict[str, str] | None:
    """The members of an objbutler group (an image with a mask or uncertainty), or None for an array."""
    try:
        document = json.loads(raw)
    except ValueError:
        return None  # _parse_metadata says what is wrong
    if not isinstance(document, dict) or document.get("node_type") != "group":
        return None
    marker = (document.get("attributes") or {}).get("objbutler")
    members = marker.get("members") if isinstance(marker, dict) else None
    if not isinstance(members, dict) or "image" not in members or not all(
            name in _MEMBER_NAMES and isinstance(key, str) and re.fullmatch(r"[a-z]+", key)
            for name, key in members.items()):
        raise FormatError(f"{_join(prefix, ZARR_JSON)} is not Zarr v3 array metadata (a group, not an image group "
                          "objbutler wrote)")
    return dict(members)


def _load_image(store: Store, prefix: str) -> tuple[str, dict[str, Any], ArrayV3Metadata]:
    """The image array's prefix and metadata (the ``image`` member of an objbutler group)."""
    raw = store.get(_join(prefix, ZARR_JSON))
    members = _group_members(raw, prefix)
    if members is not None:
        prefix = _join(prefix, members["image"])
        raw = store.get(_join(prefix, ZARR_JSON))
    return (prefix, *_parse_metadata(raw, prefix))


def zarr_image_shape_and_attributes(store: Store, prefix: str) -> tuple[tuple[int, ...], dict[str, Any]]:
    """The shape and attributes of the image a prefix holds (an array, or an objbutler image group's ``image``)."""
    metadata = _load_image(store, prefix)[2]
    return tuple(metadata.shape), dict(metadata.attributes)


def zarr_image_attributes(store: Any, prefix: str) -> dict[str, Any]:
    """The attributes of the image a prefix holds (an array, or an objbutler image group's ``image``).

    Reads ``zarr.json`` (and the image member's) with ``store.get`` and checks that objbutler can
    read the array (:func:`_parse_metadata`): what an ingest does before registering an array
    written by someone else.

    Raises
    ------
    FormatError
        Not Zarr v3 array metadata (or a group objbutler did not write), or chunks it cannot read.
    NotSupportedError
        An irregular chunk grid or storage transformers.
    """
    return dict(_load_image(store, prefix)[2].attributes)


def _parse_metadata(raw: bytes, prefix: str) -> tuple[dict[str, Any], ArrayV3Metadata]:
    """Parse ``zarr.json`` and check that its chunks are sane (positive, each one decodable in memory)."""
    where = _join(prefix, ZARR_JSON)
    try:
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("zarr_format") != 3 or document.get("node_type") != "array":
            raise ValueError("not a Zarr v3 array")
        metadata = ArrayV3Metadata.from_dict(document)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FormatError(f"{where} is not Zarr v3 array metadata: {exc}") from exc
    if not isinstance(metadata.chunk_grid, RegularChunkGrid):
        raise NotSupportedError(f"only regular chunk grids are supported, got {metadata.chunk_grid}")
    if metadata.storage_transformers:
        raise NotSupportedError("Zarr storage transformers are not supported")
    itemsize = _itemsize(metadata)
    chunk_shape = metadata.chunk_grid.chunk_shape
    if len(chunk_shape) != len(metadata.shape) or min(chunk_shape, default=1) < 1:
        raise FormatError(f"{where}: chunk shape {chunk_shape} does not fit array shape {metadata.shape}")
    check_bytes(nbytes(chunk_shape, itemsize), f"{where}: one chunk of {chunk_shape}")
    sharding = next((codec for codec in metadata.codecs if isinstance(codec, ShardingCodec)), None)
    if sharding is not None:
        inner = sharding.chunk_shape
        if len(inner) != len(chunk_shape) or min(inner, default=1) < 1 or any(
                outer % side for outer, side in zip(chunk_shape, inner, strict=True)):
            raise FormatError(f"{where}: inner chunk shape {inner} does not divide the shard shape {chunk_shape}")
    return document, metadata


def _itemsize(metadata: ArrayV3Metadata) -> int:
    """Bytes per element of the decoded array (at least 1)."""
    try:
        return max(1, int(metadata.dtype.to_native_dtype().itemsize))
    except (AttributeError, TypeError, ValueError):
        return 8


def _check_chunk_count(metadata: ArrayV3Metadata, prefix: str, size: int | None, bound: int) -> None:
    """The grid's chunk count must be at most ``bound`` and, if every chunk was written, at most ``size``."""
    chunk_shape = _grid_chunk_shape(metadata)
    count = math.prod(-(-n // side) for n, side in zip(metadata.shape, chunk_shape, strict=True))
    if size is not None and _all_chunks_written(metadata):
        bound = min(bound, size)  # every chunk object holds at least one byte
    check_count(count, bound, f"{_join(prefix, ZARR_JSON)} (shape {metadata.shape}, chunks {chunk_shape})")


def _check_whole_read(metadata: ArrayV3Metadata, prefix: str, size: int | None) -> None:
    """Before a whole read: the chunk count and the array's bytes must be sane."""
    _check_chunk_count(metadata, prefix, size, MAX_CHUNKS)
    check_bytes(nbytes(metadata.shape, _itemsize(metadata)),
                f"{_join(prefix, ZARR_JSON)}: the array of shape {metadata.shape}")




def _all_chunks_written(metadata: ArrayV3Metadata) -> bool:
    marker = metadata.attributes.get("objbutler")
    return isinstance(marker, dict) and marker.get("all_chunks_written") is True


def _existing(store: Store, prefix: str) -> dict[str, int]:
    """Relative key -> size of every object under the array's prefix (one listing)."""
    base = _join(prefix, "")
    return {meta.key[len(base) :]: meta.size for meta in store.list(base)}


def _fetch(store: Store, prefix: str, keys: Iterable[str], listed: bool) -> dict[str, bytes]:
    """One ``get_many`` of the wanted chunks; with ``listed``, only those that exist."""
    wanted = list(keys)
    if listed:
        present = _existing(store, prefix)
        wanted = [key for key in wanted if key in present]
    return dict(zip(wanted, store.get_many([_join(prefix, key) for key in wanted]), strict=True))






@dataclasses.dataclass(frozen=True, slots=True)
class ZarrObjects:
    """The objects of one Zarr array read whole (:func:`fetch_zarr`), before decoding.

    Parameters
    ----------
    document : dict
        ``zarr.json`` parsed.
    metadata : ArrayV3Metadata
        The same, as zarr's metadata.
    objects : dict of str to bytes
        Relative key -> bytes of every object read, ``zarr.json`` included
        (what :func:`zarr_checksum` is computed over).
    """

    document: dict[str, Any]
    metadata: ArrayV3Metadata
    objects: dict[str, bytes]
    members: dict[str, ZarrObjects] = dataclasses.field(default_factory=dict)
    """For an objbutler group: each member array (``image``, ``mask``, ``uncertainty``) read whole;
    ``document``/``metadata`` are then the image's and ``objects`` hold every object of the group."""

    @property
    def size(self) -> int:
        """Bytes read, over every object."""
        return sum(len(data) for data in self.objects.values())


def fetch_zarr(store: Store, prefix: str, *, size: int | None = None, every_object: bool = False) -> ZarrObjects:
    """Fetch ``zarr.json`` and every chunk of an array, after checking that the metadata is sane.

    Parameters
    ----------
    store : Store
        Where the array lives.
    prefix : str
        The array's prefix.
    size : int, optional
        The dataset's recorded size in bytes: an array whose every chunk was
        written cannot have more chunks than that.
    every_object : bool
        Also fetch objects under the prefix that are not chunks of the grid
        (to checksum exactly what is stored). An array objbutler wrote is read
        without a listing either way: its objects are ``zarr.json`` and every
        chunk.

    Returns
    -------
    ZarrObjects

    Raises
    ------
    FormatError
        For metadata that is not Zarr v3, a chunk shape that is not positive,
        more chunks than :data:`~objbutler.formats._limits.MAX_CHUNKS` (or than
        ``size``), or an array, a chunk or a shard index too large for
        :func:`~objbutler.formats._limits.memory_limit` or its object.
    """
    raw = store.get(_join(prefix, ZARR_JSON))
    members = _group_members(raw, prefix)
    if members is not None:
        return _fetch_group(store, prefix, raw, members, size, every_object)
    document, metadata = _parse_metadata(raw, prefix)
    _check_whole_read(metadata, prefix, size)
    grid = [range(-(-n // side)) for n, side in zip(metadata.shape, _grid_chunk_shape(metadata), strict=True)]
    keys = [metadata.encode_chunk_key(coords) for coords in itertools.product(*grid)]
    if _all_chunks_written(metadata):
        wanted = keys
    else:
        present = _existing(store, prefix)
        chunks = set(keys)
        wanted = [key for key in present if key != ZARR_JSON and (every_object or key in chunks)]
    objects = dict(zip(wanted, store.get_many([_join(prefix, key) for key in wanted]), strict=True))
    _check_shards(metadata, prefix, objects, keys)
    return ZarrObjects(document, metadata, {ZARR_JSON: raw, **objects})


def _fetch_group(store: Store, prefix: str, raw: bytes, members: Mapping[str, str], size: int | None,
                 every_object: bool) -> ZarrObjects:
    """Every member array of an objbutler group; ``objects`` keyed relative to the group (for its checksum)."""
    fetched: dict[str, ZarrObjects] = {}
    objects = {ZARR_JSON: raw}
    for name, key in members.items():
        member_prefix = _join(prefix, key)
        member_raw = store.get(_join(member_prefix, ZARR_JSON))
        if _group_members(member_raw, member_prefix) is not None:
            raise FormatError(f"{_join(member_prefix, ZARR_JSON)} is a group inside an image group")
        fetched[name] = fetch_zarr(store, member_prefix, size=size, every_object=every_object)
        objects.update((f"{key}/{k}", data) for k, data in fetched[name].objects.items())
    image = fetched["image"]
    return ZarrObjects(image.document, image.metadata, objects, fetched)






def decode_zarr(fetched: ZarrObjects, prefix: str = "") -> Image:
    """Decode what :func:`fetch_zarr` read: pixels, header and WCS.

    Raises
    ------
    FormatError
        If a chunk does not decode (corrupt bytes).
    """
    image_objects = fetched.members.get("image", fetched)
    metadata = image_objects.metadata
    image = Image(_decode_array(image_objects, prefix), header_from_json(metadata.attributes.get("fits_header") or []),
                  _stored_wcs(metadata))
    nddata = metadata.attributes.get("nddata")
    if isinstance(nddata, dict):
        image.nddata_class = str(nddata.get("class") or "NDData")
        image.unit = None if nddata.get("unit") is None else str(nddata["unit"])
    if "mask" in fetched.members:
        image.mask = _decode_array(fetched.members["mask"], prefix).astype(bool)
    if "uncertainty" in fetched.members:
        member = fetched.members["uncertainty"]
        image.uncertainty = _decode_array(member, prefix)
        image.uncertainty_class = str(member.metadata.attributes.get("objbutler", {}).get("class"))
    return image


def _decode_array(fetched: ZarrObjects, prefix: str) -> np.ndarray:
    decoder = _decoder(fetched.document, fetched.objects)
    return _decoded(lambda: decoder[...], f"the Zarr array {prefix!r}")


def read_zarr(store: Store, prefix: str, *, size: int | None = None) -> Image:
    """Read a whole Zarr v3 array: pixels, header and WCS.

    Parameters
    ----------
    store : Store
        Where the array lives.
    prefix : str
        The array's prefix (the key of ``zarr.json`` without ``/zarr.json``).
    size : int, optional
        The dataset's recorded size, to bound the chunk count (see :func:`fetch_zarr`).

    Returns
    -------
    Image
        Pixels in native byte order, the descriptive header, and the WCS
        (None when the array carries none, e.g. one not written by objbutler).

    Raises
    ------
    FormatError
        As :func:`fetch_zarr`: the metadata is checked before anything is allocated.
    """
    return decode_zarr(fetch_zarr(store, prefix, size=size), prefix)


def read_zarr_wcs(store: Store, prefix: str) -> WCS | None:
    """The WCS of a Zarr image, from ``zarr.json`` alone (one small read).

    Parameters
    ----------
    store : Store
        Where the array lives.
    prefix : str
        The array's prefix.

    Returns
    -------
    astropy.wcs.WCS or None
        The stored WCS, or None if the array has none.
    """
    return _stored_wcs(_load_image(store, prefix)[2])




def _fetch_chunks(
    store: Store, prefix: str, document: dict[str, Any], metadata: ArrayV3Metadata, plans: Sequence[StampPlan],
    shard_sizes: Mapping[str, int] | None = None,
) -> tuple[zarr.Array, tuple[int, ...], list[Chunk]]:
    """Fetch the (outer) chunks the stamps touch; a decoder, the chunk shape and the chunks."""
    chunk_shape = _grid_chunk_shape(metadata)
    needed = plan_chunks(plans, metadata.shape, chunk_shape, metadata.chunk_key_encoding)
    objects = _fetch(store, prefix, needed.values(), listed=not _all_chunks_written(metadata))
    return _decoder(document, objects), chunk_shape, list(needed)




def _fetch_inner_chunks(
    store: Store, prefix: str, document: dict[str, Any], metadata: ArrayV3Metadata, plans: Sequence[StampPlan],
    shard_sizes: Mapping[str, int] | None = None,
) -> tuple[zarr.Array, tuple[int, ...], list[Chunk]]:
    """Fetch only the inner chunks of a sharded array the stamps touch: shard indexes, then byte ranges.

    ``shard_sizes``: every shard's size as the registry recorded it (no listing), else the prefix is listed.
    """
    codec = metadata.codecs[0]
    assert isinstance(codec, ShardingCodec)  # checked by _reads_inner_chunks
    inner_shape = codec.chunk_shape
    per_shard = tuple(s // c for s, c in zip(_grid_chunk_shape(metadata), inner_shape, strict=True))
    needed = plan_chunks(plans, metadata.shape, inner_shape, _DEFAULT_KEYS)
    by_shard: dict[str, list[Chunk]] = defaultdict(list)
    for coords in needed:
        shard = tuple(c // p for c, p in zip(coords, per_shard, strict=True))
        by_shard[metadata.encode_chunk_key(shard)].append(coords)
    existing = (dict(shard_sizes) if shard_sizes is not None else _existing(store, prefix)) if by_shard else {}
    sizes = {key: existing[key] for key in by_shard if key in existing}  # a missing shard is all fill

    def read_inner(item: tuple[str, np.ndarray]) -> dict[str, bytes]:
        key, index = item
        spans = {}
        for coords in by_shard[key]:
            offset, length = (int(v) for v in index[tuple(c % p for c, p in zip(coords, per_shard, strict=True))])
            if offset != _NO_CHUNK:  # else the inner chunk is all fill
                spans[needed[coords]] = (offset, offset + length)
        return dict(zip(spans, store.get_ranges(_join(prefix, key), list(spans.values())), strict=True))

    indexes = _read_shard_indexes(store, prefix, codec, per_shard, sizes)
    objects: dict[str, bytes] = {}
    budget = budget_of(store)
    for found in run_concurrently(read_inner, list(zip(sizes, indexes, strict=True)), budget.limit, budget):
        objects.update(found)
    inner_document = {
        **document,
        "chunk_grid": _regular(inner_shape),
        "chunk_key_encoding": _DEFAULT_KEYS.to_dict(),
        "codecs": [c.to_dict() for c in codec.codecs],
        "attributes": {},
    }
    return _decoder(inner_document, objects), inner_shape, list(needed)


def _relative(box: Box, origin: Box) -> tuple[slice, slice]:
    """Slices of ``box`` inside an array whose pixel (0, 0) is ``origin``'s corner."""
    return Box(box.x0 - origin.x0, box.y0 - origin.y0, box.x1 - origin.x0, box.y1 - origin.y0).slices()


def _assemble(
    decoder: zarr.Array,
    chunk_shape: tuple[int, ...],
    chunks: Iterable[Chunk],
    plans: Sequence[StampPlan],
    stamps: list[np.ndarray],
) -> None:
    """Decode each chunk once (a row of touched chunks per zarr call) and copy it into every stamp it feeds."""
    ny, nx = decoder.shape
    rows, cols = chunk_shape
    columns_by_row: dict[int, list[int]] = defaultdict(list)
    for row, col in chunks:
        columns_by_row[row].append(col)
    stamps_by_row: dict[int, list[int]] = defaultdict(list)
    for position, plan in enumerate(plans):
        for row in _chunk_span(plan.read, (ny, nx), chunk_shape)[0]:
            stamps_by_row[row].append(position)
    for row, touched in columns_by_row.items():
        band = Box(min(touched) * cols, row * rows, min((max(touched) + 1) * cols, nx), min((row + 1) * rows, ny))
        pixels = _decoded(functools.partial(decoder.__getitem__, band.slices()), f"chunk row {row} of the Zarr array")
        for position in stamps_by_row[row]:
            plan = plans[position]
            overlap = plan.read.intersection(band)
            if not overlap.is_empty:
                stamps[position][_relative(overlap, plan.bbox)] = pixels[_relative(overlap, band)]


def read_zarr_cutouts(
    store: Store,
    prefix: str,
    boxes: Sequence[Box] | np.ndarray,
    mode: ClipMode = "trim",
    fill_value: float = np.nan,
    *,
    size: int | None = None,
    known: ZarrLayout | None = None,
    parent_wcs: WCS | None = None,
) -> list[Cutout]:
    """Cut many stamps out of a 2-D Zarr v3 array, fetching and decoding each chunk once.

    Parameters
    ----------
    store : Store
        Where the array lives.
    prefix : str
        The array's prefix.
    boxes : sequence of Box or (x0, y0, x1, y1), or an (N, 4) integer array of corners
        Half-open pixel boxes in parent pixels.
    mode : {"trim", "partial", "strict"}
        Clipping mode (:mod:`objbutler.cutouts`).
    fill_value : float, default NaN
        Value of pixels outside the image in ``partial`` mode.
    size : int, optional
        The dataset's recorded size in bytes: an array whose every chunk was
        written cannot have more chunks than that.
    known : ZarrLayout, optional
        The registry's layout of the dataset, checked by
        :func:`objbutler.formats.zarr_layout.layout_metadata`: no ``zarr.json``
        is read (one chunk read per stamp for an unsharded array, no listing
        for a sharded one).
    parent_wcs : astropy.wcs.WCS, optional
        The image's WCS when the caller has it (e.g. from the registry's sky record).

    Returns
    -------
    list of Cutout
        In request order, each with its own WCS (None without a stored WCS).

    Raises
    ------
    InvalidCutoutError
        For a box not wholly inside in strict mode, or an array that is not 2-D.
    FormatError
        For metadata that is not Zarr v3, chunk sides that are not positive, a
        chunk too large to decode in memory, more chunks than ``size`` bytes
        can hold, or a shard shorter than its index.
    """
    if known is not None:
        stored_at, shard_sizes = prefix, known.shards
        prefix, document, metadata = known.prefix, known.document, known.metadata
    else:
        stored_at, shard_sizes = None, None
        prefix, document, metadata = _load_image(store, prefix)
    if size is not None and _all_chunks_written(metadata):
        _check_chunk_count(metadata, prefix, size, size)
    if len(metadata.shape) != 2:
        raise InvalidCutoutError(f"cutouts need a 2-D image, this array has shape {metadata.shape}")
    plans = plan_stamps(boxes, metadata.shape, mode)
    fetch = _fetch_inner_chunks if _reads_inner_chunks(metadata) else _fetch_chunks
    decoder, chunk_shape, chunks = fetch(store, prefix, document, metadata, plans, shard_sizes)
    stamps = [new_stamp(plan, decoder.dtype, fill_value) for plan in plans]
    _assemble(decoder, chunk_shape, chunks, plans, stamps)
    wcs: WCS | ParentWCS | None
    if parent_wcs is not None:
        wcs = parent_wcs
    elif stored_at is not None:  # the layout holds no WCS cards: zarr.json is read if a stamp's WCS is asked for
        wcs = ParentWCS(functools.partial(read_zarr_wcs, store, stored_at))
    else:
        wcs = ParentWCS(functools.partial(_stored_wcs, metadata))
    return [
        Cutout.from_parent(stamp, plan.bbox, wcs, plan.index, read=plan.read)
        for plan, stamp in zip(plans, stamps, strict=True)
    ]
