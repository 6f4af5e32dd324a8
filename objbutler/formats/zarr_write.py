"""Writing Zarr v3 images: encoded with zarr's own API in memory, put chunks first and ``zarr.json`` last.

Also the content checksum of an encoded array (:func:`zarr_checksum`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec
from zarr.core.buffer import Buffer

from objbutler.errors import FormatError
from objbutler.formats._image import Image
from objbutler.formats.zarr_header import _LAYOUT_VERSION, IMAGE_MEMBER, ZARR_JSON, _image_attributes, _join
from objbutler.stores import DEFAULT_MAX_CONCURRENCY, Store, budget_of, run_concurrently

__all__ = ["DEFAULT_COMPRESSOR", "encode_zarr", "write_zarr", "write_zarr_objects", "zarr_checksum",
           "zarr_checksum_of_digests"]


DEFAULT_COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
"""Blosc-zstd with byte shuffle: a good default for float images."""


def _fit_shape(requested: Sequence[int], shape: tuple[int, ...], clip: bool) -> tuple[int, ...]:
    """Give a 2-D chunk (or shard) shape to an N-D array: 1 along leading axes, clipped if asked."""
    sides = (1,) * max(0, len(shape) - len(requested)) + tuple(int(side) for side in requested)[-len(shape) :]
    if any(side < 1 for side in sides):
        raise ValueError(f"chunk and shard sides must be positive, got {tuple(requested)}")
    return tuple(min(side, max(n, 1)) for side, n in zip(sides, shape, strict=True)) if clip else sides


def encode_zarr(
    image: Image,
    chunks: Sequence[int] = (256, 256),
    compressor: BytesBytesCodec | None = DEFAULT_COMPRESSOR,
    shards: Sequence[int] | None = None,
) -> dict[str, bytes]:
    """Encode an image as the objects of a Zarr v3 array, with zarr's own writer.

    Parameters
    ----------
    image : Image
        Pixels, header and WCS.
    chunks : sequence of int, default (256, 256)
        Chunk shape (rows, columns); leading axes of an N-D image get 1.
        Clipped to the image unless ``shards`` is given.
    compressor : zarr BytesBytesCodec or None, default blosc-zstd with byte shuffle
        E.g. ``zarr.codecs.ZstdCodec(level=3)``; None stores raw bytes.
    shards : sequence of int, optional
        Shard shape (a multiple of ``chunks``) to use the sharding codec.

    Returns
    -------
    dict of str to bytes
        Relative key (``zarr.json``, ``c/0/0``, ...) -> object bytes. An image
        with a mask or an uncertainty is a Zarr group instead: the image array
        under ``image/``, the mask (bool) under ``mask/`` and the uncertainty
        under ``uncertainty/``, the group's ``zarr.json`` naming them.

    Raises
    ------
    FormatError
        For an image with further HDUs (an HDUList of several images): FITS holds them.
    """
    if image.extensions:
        names = [str(e.header.get("EXTNAME", f"#{i + 1}")) for i, e in enumerate(image.extensions)]
        raise FormatError(f"a Zarr dataset holds one image; this HDUList has further image HDUs {names}: "
                          "put it as FITS, or put each HDU as a dataset of its own")
    array = _array_objects(image.data, _image_attributes(image), chunks, compressor, shards)
    if image.mask is None and image.uncertainty is None:
        return array
    objects = {f"{IMAGE_MEMBER}/{key}": data for key, data in array.items()}
    members = {"image": IMAGE_MEMBER}
    extras: list[tuple[str, np.ndarray | None, dict[str, Any]]] = [
        ("mask", image.mask, {}), ("uncertainty", image.uncertainty, {"class": image.uncertainty_class})]
    for name, pixels, attrs in extras:
        if pixels is not None:
            marker = {"layout_version": _LAYOUT_VERSION, "all_chunks_written": True, **attrs}
            member = _array_objects(pixels, {"objbutler": marker}, chunks, compressor, shards)
            objects.update((f"{name}/{key}", data) for key, data in member.items())
            members[name] = name
    group: dict[str, Buffer] = {}
    zarr.create_group(zarr.storage.MemoryStore(group), zarr_format=3,
                      attributes={"objbutler": {"layout_version": _LAYOUT_VERSION, "members": members}})
    objects[ZARR_JSON] = group[ZARR_JSON].to_bytes()
    return objects


def _array_objects(
    pixels: np.ndarray, attributes: dict[str, Any], chunks: Sequence[int], compressor: BytesBytesCodec | None,
    shards: Sequence[int] | None,
) -> dict[str, bytes]:
    data = np.asarray(pixels)
    data = data.astype(data.dtype.newbyteorder("="), copy=False)
    store_dict: dict[str, Buffer] = {}
    zarr.create_array(
        zarr.storage.MemoryStore(store_dict),
        data=data,
        chunks=_fit_shape(chunks, data.shape, clip=shards is None),
        shards=None if shards is None else _fit_shape(shards, data.shape, clip=False),
        compressors=compressor,
        attributes=attributes,
        config={"write_empty_chunks": True},
    )
    return {key: buffer.to_bytes() for key, buffer in store_dict.items()}


def zarr_checksum(objects: Mapping[str, bytes]) -> str:
    """A content checksum of an encoded array.

    Parameters
    ----------
    objects : mapping of str to bytes
        Relative key -> bytes, as :func:`encode_zarr` returns.

    Returns
    -------
    str
        Hex SHA-256 over the lines ``f"{key}\\0{sha256(bytes).hexdigest()}\\n"``
        (UTF-8), keys sorted.
    """
    return zarr_checksum_of_digests({key: hashlib.sha256(data).hexdigest() for key, data in objects.items()})


def zarr_checksum_of_digests(digests: Mapping[str, str]) -> str:
    """:func:`zarr_checksum` from each object's hex SHA-256 (objects hashed one at a time, as they stream by).

    Parameters
    ----------
    digests : mapping of str to str
        Relative key -> hex SHA-256 of that object's bytes.

    Returns
    -------
    str
        The same hex digest :func:`zarr_checksum` gives for those objects.
    """
    digest = hashlib.sha256()
    for key in sorted(digests):
        digest.update(f"{key}\0{digests[key]}\n".encode())
    return digest.hexdigest()


def write_zarr_objects(
    store: Store, prefix: str, objects: Mapping[str, bytes], max_workers: int = DEFAULT_MAX_CONCURRENCY
) -> list[str]:
    """Put encoded objects under ``prefix``: chunks concurrently, ``zarr.json`` last.

    On failure every key is deleted (best effort) before the error propagates.

    Parameters
    ----------
    store : Store
        Where to write.
    prefix : str
        The array's prefix, e.g. ``data/run/calexp/x-uuid.zarr``.
    objects : mapping of str to bytes
        Relative key -> bytes (must hold ``zarr.json``).
    max_workers : int
        Upper bound on concurrent puts of this call, within the store's concurrency budget.

    Returns
    -------
    list of str
        The store keys written, ``zarr.json``'s last.
    """
    if ZARR_JSON not in objects:
        raise FormatError("a Zarr array needs a zarr.json object")
    chunk_keys = [key for key in objects if key != ZARR_JSON]
    written = [_join(prefix, key) for key in [*chunk_keys, ZARR_JSON]]
    try:
        run_concurrently(lambda key: store.put(_join(prefix, key), objects[key]), chunk_keys, max_workers,
                         budget_of(store))
        store.put(written[-1], objects[ZARR_JSON])
    except Exception:
        for key in written:
            with contextlib.suppress(Exception):
                store.delete(key)
        raise
    return written


def write_zarr(store: Store, prefix: str, image: Image, **options: Any) -> list[str]:
    """Encode an image (:func:`encode_zarr` ``options``) and write it (:func:`write_zarr_objects`).

    Returns
    -------
    list of str
        The store keys written, ``zarr.json``'s last.
    """
    return write_zarr_objects(store, prefix, encode_zarr(image, **options))
