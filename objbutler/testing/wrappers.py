"""Wrapper stores for tests and benchmarks.

:class:`CountingStore` passes every call through to another store and counts
what it costs: calls per method, requests (what an object store would bill:
one per range of ``get_ranges``, one per key of ``get_many``) and bytes moved::

    counting = CountingStore(store)
    read_fits_cutouts(counting, key, boxes)
    assert counting.requests <= 3 and counting.bytes_read < 2_000_000
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator, Sequence

from objbutler.stores import ByteRange, ObjectMeta, RangeLike, Store, StoreWrapper, if_inner_has, normalize_ranges

__all__ = ["CountingStore"]


class CountingStore(StoreWrapper):
    """A store that forwards to ``inner`` and counts calls, requests and bytes.

    A pickled copy starts with zero counts.

    Parameters
    ----------
    inner : Store
        The store that does the work.

    Attributes
    ----------
    calls : collections.Counter
        Calls per method name.
    requests_by_method : collections.Counter
        Requests per method name (ranges for ``get_ranges``, keys for ``get_many``).
    bytes_read, bytes_written : int
        Payload bytes returned by reads and sent by writes.
    range_calls : list of (str, list of ByteRange)
        Every ``get_ranges`` call's key and ranges, in order.
    """

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero every counter."""
        with self._lock:
            self.calls: collections.Counter[str] = collections.Counter()
            self.requests_by_method: collections.Counter[str] = collections.Counter()
            self.bytes_read = 0
            self.bytes_written = 0
            self.range_calls: list[tuple[str, list[ByteRange]]] = []

    @property
    def requests(self) -> int:
        """Total requests over every method."""
        return sum(self.requests_by_method.values())

    def _count(self, method: str, requests: int = 1, read: int = 0, written: int = 0) -> None:
        with self._lock:
            self.calls[method] += 1
            self.requests_by_method[method] += requests
            self.bytes_read += read
            self.bytes_written += written

    def get(self, key: str) -> bytes:
        """Forward ``get``; one request."""
        data = super().get(key)
        self._count("get", read=len(data))
        return data

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Forward ``get_ranges``; one request per range."""
        wanted = normalize_ranges(ranges)
        out = super().get_ranges(key, wanted)
        self._count("get_ranges", len(wanted), read=sum(len(part) for part in out))
        with self._lock:
            self.range_calls.append((key, wanted))
        return out

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Forward ``get_many``; one request per key."""
        out = super().get_many(keys)
        self._count("get_many", len(keys), read=sum(len(part) for part in out))
        return out

    def head(self, key: str) -> ObjectMeta:
        """Forward ``head``; one request."""
        meta = super().head(key)
        self._count("head")
        return meta

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Forward ``put``; one request."""
        self._count("put", written=len(data))
        return super().put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Forward ``put_if_absent``; one request."""
        self._count("put_if_absent", written=len(data))
        return super().put_if_absent(key, data)

    @if_inner_has
    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Forward ``put_if_match`` (only where ``inner`` has it); one request."""
        self._count("put_if_match", written=len(data))
        return self._cas_inner().put_if_match(key, data, etag)

    def delete(self, key: str) -> None:
        """Forward ``delete``; one request."""
        self._count("delete")
        super().delete(key)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """Forward ``list``; counted as one request per call (pages are the backend's business)."""
        self._count("list")
        return super().list(prefix, start_after)
