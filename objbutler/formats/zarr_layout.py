"""What the registry records of a Zarr image objbutler wrote, so that a cutout reads no ``zarr.json``.

A FITS image's registry layout lets a stamp cost one range request
(:func:`objbutler.formats.fits_headers.fits_layout`); this is the same for Zarr. At put,
:func:`zarr_layout` keeps, from the objects about to be written:

``array``
    The image array's path under the dataset prefix: ``""`` for a plain array, ``"image"`` for the
    image member of a group (an image with a mask or uncertainty). Without the layout, reaching it
    costs one ``zarr.json`` read, two for a group.
``metadata``
    The array's ``zarr.json`` with the attributes cut to the ``objbutler`` marker (the header cards
    and WCS cards stay in the object; a stamp's WCS comes from the registry's sky record, or is read
    from ``zarr.json`` when first asked for). About 400 bytes.
``shards`` (sharded arrays only, at most :data:`MAX_SHARDS`)
    Size of every shard object, so an inner-chunk read needs no listing to find the shard index.

:func:`layout_metadata` checks a recorded layout before use: a malformed one, or one whose
objects could not fit the dataset's recorded size, is ignored (the reader falls back to
``zarr.json``), as FITS layouts are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from objbutler.errors import FormatError, NotSupportedError
from objbutler.formats.zarr_array import _all_chunks_written, _group_members, _parse_metadata
from objbutler.formats.zarr_header import IMAGE_MEMBER, ZARR_JSON, _join
from objbutler.formats.zarr_shards import _reads_inner_chunks

if TYPE_CHECKING:
    from zarr.core.metadata import ArrayV3Metadata

__all__ = ["MAX_SHARDS", "ZarrLayout", "layout_metadata", "zarr_layout"]

MAX_SHARDS = 1024
_VERSION = 1


class ZarrLayout:
    """A checked registry layout: the array's prefix, its parsed metadata, and shard sizes (or None)."""

    __slots__ = ("document", "metadata", "prefix", "shards")

    def __init__(self, prefix: str, document: dict[str, Any], metadata: ArrayV3Metadata,
                 shards: dict[str, int] | None) -> None:
        self.prefix = prefix
        self.document = document
        self.metadata = metadata
        self.shards = shards


def zarr_layout(objects: Mapping[str, bytes]) -> dict[str, Any] | None:
    """The registry layout of a Zarr image from the objects :func:`encode_zarr` made (None if not an image)."""
    raw = objects.get(ZARR_JSON)
    if raw is None:
        return None
    array = ""
    try:
        members = _group_members(raw, "")
    except FormatError:
        return None
    if members is not None:
        array = members.get("image", IMAGE_MEMBER)
        raw = objects.get(_join(array, ZARR_JSON))
        if raw is None:
            return None
    try:
        document, metadata = _parse_metadata(raw, array)
    except (FormatError, NotSupportedError):
        return None
    marker = (document.get("attributes") or {}).get("objbutler")
    layout: dict[str, Any] = {
        "zarr": _VERSION, "array": array,
        "metadata": {**document, "attributes": {"objbutler": marker} if marker is not None else {}},
    }
    if _reads_inner_chunks(metadata):
        base = _join(array, "")
        shards = {key[len(base):]: len(data) for key, data in objects.items()
                  if key.startswith(base) and key[len(base):] != ZARR_JSON}
        if len(shards) > MAX_SHARDS:
            return None  # a listing is cheaper than a layout this large in every checkpoint
        layout["shards"] = shards
    return layout


def layout_metadata(layout: Any, prefix: str, size: int | None) -> ZarrLayout | None:
    """The checked layout of the dataset at ``prefix``, or None when it is absent, malformed or does not fit."""
    if not isinstance(layout, dict) or layout.get("zarr") != _VERSION:
        return None
    array, document = layout.get("array"), layout.get("metadata")
    if not isinstance(array, str) or array not in ("", IMAGE_MEMBER) or not isinstance(document, dict):
        return None
    where = _join(prefix, array)
    try:
        parsed, metadata = _parse_metadata(json.dumps(document).encode(), where)
    except (FormatError, NotSupportedError, TypeError, ValueError):
        return None
    shards = layout.get("shards")
    if _reads_inner_chunks(metadata):
        if not isinstance(shards, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
                for k, v in shards.items()):
            return None
        if size is not None and sum(shards.values()) > size:
            return None
    else:
        shards = None
    if not _all_chunks_written(metadata):
        return None  # chunks may be missing: the reader lists them anyway
    return ZarrLayout(where, parsed, metadata, shards)
