"""An in-process store for tests and demos: ``memory://name``.

Stores with the same name in one process share their contents (as fsspec's
memory filesystem does), so ``Butler("memory://demo")`` twice sees one
repository. Contents vanish with the process.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator, Sequence

from objbutler.errors import AlreadyExistsError, NotFoundError, PreconditionFailedError
from objbutler.stores._base import (
    ObjectMeta,
    RangeLike,
    StoreCapabilities,
    clip_range,
    normalize_ranges,
    validate_key,
    validate_prefix,
)

__all__ = ["MemoryStore"]


class _Bucket:
    """The shared contents of one named memory store."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, tuple[bytes, ObjectMeta]] = {}


_BUCKETS: dict[str, _Bucket] = {}
_BUCKETS_LOCK = threading.Lock()


def _bucket(name: str) -> _Bucket:
    with _BUCKETS_LOCK:
        return _BUCKETS.setdefault(name, _Bucket())


class MemoryStore:
    """A thread-safe in-memory store; atomic create and compare-and-swap under one lock.

    Parameters
    ----------
    name : str
        The shared namespace (``memory://name``); a fresh random name if omitted.
    """

    capabilities = StoreCapabilities(
        atomic_create=True, compare_and_swap=True, conditional_create_header=True, server_timestamps=True
    )

    def __init__(self, name: str | None = None) -> None:
        self.name = name or uuid.uuid4().hex
        self._bucket = _bucket(self.name)

    def __reduce__(self) -> tuple[type[MemoryStore], tuple[str]]:
        return (MemoryStore, (self.name,))

    def __repr__(self) -> str:
        return f"MemoryStore({self.name!r})"

    @property
    def uri(self) -> str:
        """The ``memory://name`` URI of this store."""
        return f"memory://{self.name}"

    def _entry(self, key: str) -> tuple[bytes, ObjectMeta]:
        try:
            return self._bucket.objects[validate_key(key)]
        except KeyError:
            raise NotFoundError(f"no object {key!r} in {self.uri}") from None

    def _store(self, key: str, data: bytes) -> ObjectMeta:
        meta = ObjectMeta(key, len(data), uuid.uuid4().hex, dt.datetime.now(dt.UTC))
        self._bucket.objects[key] = (bytes(data), meta)
        return meta

    def get(self, key: str) -> bytes:
        """Return the whole object."""
        with self._bucket.lock:
            return self._entry(key)[0]

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Return each half-open range of one object, clipped to its size."""
        wanted = normalize_ranges(ranges)
        with self._bucket.lock:
            data = self._entry(key)[0]
        clipped = (clip_range(r, len(data)) for r in wanted)
        return [data[r.start : r.stop] for r in clipped]

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Return several whole objects in order."""
        return [self.get(key) for key in keys]

    def head(self, key: str) -> ObjectMeta:
        """Return an object's metadata."""
        with self._bucket.lock:
            return self._entry(key)[1]

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Write or replace an object."""
        validate_key(key)
        with self._bucket.lock:
            return self._store(key, data)

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Create an object only if the key is free (atomic)."""
        validate_key(key)
        with self._bucket.lock:
            if key in self._bucket.objects:
                raise AlreadyExistsError(f"object {key!r} already exists in {self.uri}")
            return self._store(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Replace an object only if its etag is still ``etag`` (atomic)."""
        with self._bucket.lock:
            current = self._entry(key)[1]
            if current.etag != etag:
                raise PreconditionFailedError(f"object {key!r} changed (etag {current.etag} != {etag})")
            return self._store(key, data)

    def delete(self, key: str) -> None:
        """Delete an object if present."""
        validate_key(key)
        with self._bucket.lock:
            self._bucket.objects.pop(key, None)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """Yield objects under ``prefix`` in key order (a snapshot taken at the call)."""
        validate_prefix(prefix)
        with self._bucket.lock:
            metas = [meta for key, (_, meta) in self._bucket.objects.items() if key.startswith(prefix)]
        metas.sort(key=lambda meta: meta.key)
        for meta in metas:
            if start_after is None or meta.key > start_after:
                yield meta
