"""The Store protocol, its small value types, and key validation.

A store is a flat key -> bytes namespace under a root prefix. It is *not* a
filesystem: there are no directories, no partial writes, no renames. What a
backend can promise about concurrent writers differs (see
:class:`StoreCapabilities`); code above the store asks instead of assuming.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from objbutler.errors import InvalidKeyError

__all__ = [
    "ByteRange",
    "CompareAndSwap",
    "ConditionalWrite",
    "List",
    "ObjectMeta",
    "RangeLike",
    "ReadRanges",
    "Store",
    "StoreCapabilities",
    "normalize_ranges",
    "validate_key",
    "Write",
]

MAX_KEY_BYTES = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ByteRange:
    """A half-open byte range ``[start, stop)`` of one object.

    Parameters
    ----------
    start : int
        First byte offset (0-based, inclusive).
    stop : int
        One past the last byte offset (exclusive); ``stop >= start``.
    """

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not isinstance(self.start, int) or not isinstance(self.stop, int):
            raise TypeError(f"byte range bounds must be integers, got {self.start!r}, {self.stop!r}")
        if self.start < 0 or self.stop < self.start:
            raise ValueError(f"invalid byte range [{self.start}, {self.stop})")

    @property
    def length(self) -> int:
        """Number of bytes the range spans."""
        return self.stop - self.start


RangeLike = ByteRange | tuple[int, int]


def normalize_ranges(ranges: Sequence[RangeLike]) -> list[ByteRange]:
    """Turn ``(start, stop)`` pairs or :class:`ByteRange` objects into ByteRanges.

    Parameters
    ----------
    ranges : sequence of ByteRange or (int, int)
        Half-open byte ranges.

    Returns
    -------
    list of ByteRange
        The same ranges, validated, in the same order.
    """
    out = []
    for item in ranges:
        if isinstance(item, ByteRange):
            out.append(item)
        else:
            start, stop = item
            out.append(ByteRange(int(start), int(stop)))
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What a store knows about one object without reading it.

    Parameters
    ----------
    key : str
        The key relative to the store's root.
    size : int
        Size in bytes.
    etag : str or None
        An opaque version tag that changes whenever the object is replaced.
    last_modified : datetime or None
        Server-side modification time (UTC) where the backend reports one.
    """

    key: str
    size: int
    etag: str | None = None
    last_modified: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StoreCapabilities:
    """What a backend guarantees, declared by the backend and checked by the conformance suite.

    Parameters
    ----------
    atomic_create : bool
        ``put_if_absent`` is atomic under concurrent writers: exactly one of N
        racing creates of one key succeeds.
    compare_and_swap : bool
        The store is a :class:`CompareAndSwap`: ``put_if_match`` exists and is
        atomic (a stale etag is refused). Where false the method is absent.
    conditional_create_header : bool
        ``put_if_absent`` exists at all (possibly without atomicity, as on Swift,
        where it only protects against writers that come one at a time).
    server_timestamps : bool
        ``ObjectMeta.last_modified`` comes from the server's clock (one clock for
        every writer), so readers can order objects by it.
    """

    atomic_create: bool
    compare_and_swap: bool
    conditional_create_header: bool
    server_timestamps: bool


@runtime_checkable
class ReadRanges(Protocol):
    """Whole-object and byte-range reads: what the cutout planners and format readers need.

    Missing keys raise :class:`objbutler.errors.NotFoundError`.
    """

    def get(self, key: str) -> bytes:
        """Return the whole object."""
        ...

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Return the bytes of each half-open range, in request order, read concurrently.

        Ranges are clipped to the object's size: a range that starts at or past
        the end gives ``b""``. Never reads the whole object to serve a range.
        """
        ...

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Return several whole objects, in request order, read concurrently."""
        ...

    def head(self, key: str) -> ObjectMeta:
        """Return the metadata of one object."""
        ...


@runtime_checkable
class List(Protocol):
    """Sorted listings under a prefix."""

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """Yield the objects whose key starts with ``prefix``, sorted by key.

        ``start_after`` skips every key ``<=`` it (S3's StartAfter, Swift's marker).
        """
        ...


@runtime_checkable
class Write(Protocol):
    """Unconditional writes and deletes."""

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Write (or replace) an object; readers see the old or the new bytes, never a mix."""
        ...

    def delete(self, key: str) -> None:
        """Delete an object; deleting a missing key is not an error."""
        ...


@runtime_checkable
class ConditionalWrite(Protocol):
    """Create-only writes (``If-None-Match: *``).

    Atomic under concurrent writers only where ``capabilities.atomic_create``
    is true (Swift checks the header one writer at a time).
    """

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Create an object only if the key is free; else raise AlreadyExistsError."""
        ...


@runtime_checkable
class CompareAndSwap(ConditionalWrite, Protocol):
    """Create-only writes plus replace-if-unchanged (``If-Match: etag``).

    Only backends that enforce ``If-Match`` on a write have ``put_if_match``
    (``capabilities.compare_and_swap``); Swift, which ignores it, does not.
    A gateway that answers 501 to ``If-Match`` (S3 behind Swift's s3api) makes
    ``S3Store.put_if_match`` raise NotSupportedError at run time.
    """

    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Replace an object only if its etag is still ``etag``; else raise PreconditionFailedError."""
        ...


@runtime_checkable
class Store(ReadRanges, List, Write, ConditionalWrite, Protocol):
    """A small, synchronous key -> bytes store with concurrent range reads.

    The composition of the narrow protocols every backend offers
    (:class:`ReadRanges`, :class:`List`, :class:`Write`,
    :class:`ConditionalWrite`) plus its URI and declared capabilities.
    Compare-and-swap is not part of it: check ``isinstance(store,
    CompareAndSwap)`` (equivalently ``capabilities.compare_and_swap``).

    Every method is safe to call from several threads. A store keeps no open
    file handles between calls; network clients may be pooled per store object.
    Missing keys raise :class:`objbutler.errors.NotFoundError`.
    """

    @property
    def uri(self) -> str:
        """The URI that :func:`objbutler.stores.open_store` reopens this store from."""
        ...

    @property
    def capabilities(self) -> StoreCapabilities:
        """What this backend guarantees to concurrent writers."""
        ...


_CONTROL = re.compile("[\x00-\x1f\x7f]")
"""Control characters: not in a key (one regex search, not a Python test per character)."""


def validate_key(key: str) -> str:
    """Check that a key is safe to place under a store's root and return it.

    A key is a ``/``-separated relative path: not empty, no leading ``/``, no
    empty, ``.`` or ``..`` segments, no backslashes or control characters, at
    most 1024 bytes in UTF-8.

    Parameters
    ----------
    key : str
        The key to check.

    Returns
    -------
    str
        The key, unchanged.

    Raises
    ------
    InvalidKeyError
        If the key could escape the store's root or is not portable.
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"object key must be a str, got {type(key).__name__}")
    if not key:
        raise InvalidKeyError("object key is empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"object key is longer than {MAX_KEY_BYTES} bytes: {key[:60]!r}...")
    if key.startswith("/"):
        raise InvalidKeyError(f"object key must be relative, got {key!r}")
    if "\\" in key:
        raise InvalidKeyError(f"object key must not contain a backslash: {key!r}")
    if _CONTROL.search(key):
        raise InvalidKeyError(f"object key contains a control character: {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKeyError(f"object key has an empty, '.' or '..' segment: {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Check a listing prefix: empty, or a key prefix that may end with ``/``.

    Parameters
    ----------
    prefix : str
        The prefix to check.

    Returns
    -------
    str
        The prefix, unchanged.
    """
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/") if prefix.endswith("/") else prefix)
    return prefix


def clip_range(byte_range: ByteRange, size: int) -> ByteRange:
    """Clip a range to an object of ``size`` bytes (a range past the end becomes empty).

    Parameters
    ----------
    byte_range : ByteRange
        The requested range.
    size : int
        The object's size.

    Returns
    -------
    ByteRange
        The part of the range that lies inside the object.
    """
    start = min(byte_range.start, size)
    return ByteRange(start, max(start, min(byte_range.stop, size)))
