"""Whether a dataset's data is what the registry recorded: sizes, etags and streamed checksums.

Shared by ``Butler.ingest_refs``, ``fsck``, ``clone`` and ``ingest``, which is why it knows nothing
of them: it takes a store and a ref (or anything with a ``store`` and a ``data_location``), so that
the Butler can use it without importing the maintenance module that imports the Butler.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Protocol

from objbutler.errors import FormatError, NotFoundError, ObjButlerError
from objbutler.formats.zarr_write import zarr_checksum, zarr_checksum_of_digests
from objbutler.registry.records import DatasetRef
from objbutler.stores import ObjectMeta, Store

__all__ = [
    "DataHolder",
    "content_checksum",
    "dataset_problem",
    "direct_problem",
    "etag_digest",
    "listed_problem",
    "object_digests",
    "relative_listing",
    "stream_checksum",
    "stream_sha256",
]

PIECE = 8 << 20
"""Bytes per range read while streaming an object through the checksum."""
WINDOW = 4
"""Pieces read at once (concurrently) while streaming."""
BATCH_BYTES = 64 << 20
"""Small Zarr objects are fetched with one ``get_many`` up to this many bytes."""


class DataHolder(Protocol):
    """What the checks need of a repository (a :class:`~objbutler.butler.Butler` is one)."""

    @property
    def store(self) -> Store:
        """The repository's store."""
        ...

    def data_location(self, ref: DatasetRef) -> tuple[Store, str]:
        """The store and key of a dataset's data (another bucket's, for data registered in place)."""
        ...


def _join(prefix: str, key: str) -> str:
    return f"{prefix.rstrip('/')}/{key}" if prefix else key


def relative_listing(metas: Iterable[ObjectMeta], prefix: str) -> dict[str, ObjectMeta]:
    base = len(_join(prefix, ""))
    return {meta.key[base:]: meta for meta in metas}


def stream_sha256(store: Store, key: str, size: int, name: str) -> str:
    """Hex SHA-256 of an object read once, front to back, a few pieces (range reads) at a time."""
    digest = hashlib.sha256()
    start = 0
    while start < size:
        ranges = [(at, min(at + PIECE, size)) for at in range(start, min(size, start + PIECE * WINDOW), PIECE)]
        for (first, stop), part in zip(ranges, store.get_ranges(key, ranges), strict=True):
            if len(part) != stop - first:
                raise FormatError(f"{name} ended at byte {first + len(part):,}, not {size:,}: it was replaced "
                                  "while being read; ingest it again")
            digest.update(part)
        start = ranges[-1][1]
    return digest.hexdigest()


def object_digests(store: Store, listed: Mapping[str, ObjectMeta], name: str) -> dict[str, str]:
    """Hex SHA-256 of every object of an array, each read once (small ones many at a time)."""
    digests: dict[str, str] = {}
    batch: list[tuple[str, ObjectMeta]] = []

    def flush() -> None:
        for (key, meta), data in zip(batch, store.get_many([meta.key for _, meta in batch]), strict=True):
            if len(data) != meta.size:
                raise FormatError(f"{name}: {key} has {len(data):,} bytes, it was listed with {meta.size:,}: "
                                  "it changed while being read; ingest it again")
            digests[key] = hashlib.sha256(data).hexdigest()
        batch.clear()

    total = 0
    for key, meta in sorted(listed.items()):
        if meta.size > PIECE:
            digests[key] = stream_sha256(store, meta.key, meta.size, f"{name}: {key}")
            continue
        batch.append((key, meta))
        total += meta.size
        if total >= BATCH_BYTES or len(batch) >= 256:
            flush()
            total = 0
    if batch:
        flush()
    return digests


def etag_digest(etags: Mapping[str, str | None]) -> str | None:
    """One etag for a Zarr array: a digest of its objects' etags (None if the store gave any object none).

    Parameters
    ----------
    etags : mapping of str to str or None
        Relative key -> etag, for every object under the array's prefix (``zarr.json`` included).

    Returns
    -------
    str or None
        ``"etags:" + hex SHA-256`` over the lines ``f"{key}\\0{etag}\\n"``, keys sorted.
    """
    if not etags or any(etag is None for etag in etags.values()):
        return None
    digest = hashlib.sha256()
    for key in sorted(etags):
        digest.update(f"{key}\0{etags[key]}\n".encode())
    return f"etags:{digest.hexdigest()}"


def stream_checksum(store: Store, key: str, fmt: str, name: str = "") -> str:
    """``sha256:<hex>`` of a dataset's stored bytes, as the registry records it, reading each object once.

    Parameters
    ----------
    store : Store
        Where the data is.
    key : str
        The object's key (a Zarr array: its prefix).
    fmt : str
        ``"zarr"`` or a single-object format.
    name : str, optional
        How messages name it.

    Returns
    -------
    str
        The checksum (Zarr: :func:`~objbutler.formats.zarr_array.zarr_checksum` over relative keys).
    """
    name = name or key
    if fmt != "zarr":
        return f"sha256:{stream_sha256(store, key, store.head(key).size, name)}"
    listed = relative_listing(store.list(_join(key, "")), key)
    if not listed:
        raise NotFoundError(f"no Zarr objects under {name}")
    return f"sha256:{zarr_checksum_of_digests(object_digests(store, listed, name))}"


def content_checksum(ref: DatasetRef, objects: Mapping[str, bytes]) -> str:
    """The checksum of a dataset's stored bytes, computed as the registry records it.

    Parameters
    ----------
    ref : DatasetRef
        The dataset (its format and key).
    objects : mapping of str to bytes
        Store key -> bytes of every object it consists of (one, except for Zarr).

    Returns
    -------
    str
        ``sha256:<hex>`` (Zarr: :func:`~objbutler.formats.zarr_array.zarr_checksum` over relative keys).
    """
    if ref.format == "zarr":
        base = len(ref.key.rstrip("/")) + 1
        return f"sha256:{zarr_checksum({key[base:]: data for key, data in objects.items()})}"
    return f"sha256:{hashlib.sha256(objects[ref.key]).hexdigest()}"


def listed_problem(butler: DataHolder, ref: DatasetRef, objects: list[ObjectMeta] | None, verify: bool) -> str | None:
    """Why a dataset held in the repository is missing or corrupt, given the objects listed under its key."""
    if not objects:
        return "data object is missing"
    if ref.format == "zarr" and not any(m.key.endswith("/zarr.json") for m in objects):
        return "zarr.json is missing"
    size = sum(m.size for m in objects)
    if size != ref.size:
        return f"size is {size} bytes, the registry recorded {ref.size}"
    if verify:
        keys = [m.key for m in objects]
        digest = content_checksum(ref, dict(zip(keys, butler.store.get_many(keys), strict=True)))
        if digest != ref.checksum:
            return f"checksum is {digest}, the registry recorded {ref.checksum}"
    return None


def dataset_problem(butler: DataHolder, ref: DatasetRef, verify_checksums: bool = False) -> str | None:
    """Why one registry entry's data is missing or corrupt, or None when it is in place.

    Parameters
    ----------
    butler : DataHolder
        The repository (a Butler).
    ref : DatasetRef
        The entry.
    verify_checksums : bool
        Also read the data and compare checksums (sizes are always compared).

    Returns
    -------
    str or None
        The problem, as fsck reports it.
    """
    if ref.is_direct:
        return direct_problem(butler, ref, verify_checksums)
    if ref.format == "zarr":
        objects = list(butler.store.list(ref.key.rstrip("/") + "/"))
    else:
        try:
            objects = [butler.store.head(ref.key)]
        except NotFoundError:
            objects = []
    return listed_problem(butler, ref, objects, verify_checksums)


def direct_problem(butler: DataHolder, ref: DatasetRef, verify: bool) -> str | None:
    """Why data registered in place no longer is what was registered (deleted or replaced), or None.

    Its size and etag (one HEAD, or one listing of a Zarr array) are compared with the record. An
    etag that changed with the size unchanged means the object was rewritten: with ``verify`` the
    checksum decides whether its bytes changed; without, it is reported.
    """
    try:
        store, key = butler.data_location(ref)
        if ref.format == "zarr":
            base = len(key) + 1
            listed = {meta.key[base:]: meta for meta in store.list(key + "/")}
            if not listed:
                raise NotFoundError(key)
            if "zarr.json" not in listed:
                return "registered in place, and its zarr.json was deleted outside objbutler"
            size, etag = sum(meta.size for meta in listed.values()), etag_digest(
                {name: meta.etag for name, meta in listed.items()})
        else:
            meta = store.head(key)
            size, etag = meta.size, meta.etag
    except NotFoundError:
        return "registered in place, and deleted outside objbutler (nothing is there now)"
    except ObjButlerError as exc:
        return f"registered in place, and could not be checked: {type(exc).__name__}: {exc}"
    if size != ref.size:
        return f"registered in place, and replaced outside objbutler: its size is {size} bytes, the registry " \
               f"recorded {ref.size}"
    recorded = (ref.direct or {}).get("etag")
    if verify:
        try:
            digest = stream_checksum(store, key, ref.format, ref.key)
        except ObjButlerError as exc:
            return f"registered in place, and could not be read: {type(exc).__name__}: {exc}"
        if digest != ref.checksum:
            return f"registered in place, and replaced outside objbutler: its checksum is {digest}, the registry " \
                   f"recorded {ref.checksum}"
        return None
    if recorded is not None and etag != recorded:
        return f"registered in place, and replaced outside objbutler: its etag is {etag}, the registry recorded " \
               f"{recorded} (--verify-checksums tells whether its bytes changed)"
    return None

