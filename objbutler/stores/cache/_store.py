"""CachingStore: a read-through cache of any store on local disk, with an offline mode."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from objbutler.errors import ObjButlerError, OfflineError
from objbutler.stores._base import ObjectMeta, RangeLike, Store, validate_key, validate_prefix
from objbutler.stores.cache._eviction import LruEviction
from objbutler.stores.cache._layout import TMP_PREFIX, CacheLayout
from objbutler.stores.cache._offline import OfflineSwitch, _WentOfflineError
from objbutler.stores.cache._policy import CachePolicy
from objbutler.stores.cache._settings import DEFAULT_MAX_BYTES
from objbutler.stores.local import LocalStore
from objbutler.stores.wrapper import StoreWrapper, if_inner_has

__all__ = ["CachingStore"]

log = logging.getLogger("objbutler.stores.cache")


class CachingStore(StoreWrapper):
    """A store that keeps objects of ``inner`` on local disk and can work offline.

    Parameters
    ----------
    inner : Store
        The remote store (any backend).
    cache_dir : str or Path
        The cache directory (shared by every repository and process); only
        its ``objects-v1/`` subdirectory is used.
    max_bytes : int
        Bound on the cache's total size (LRU eviction).
    offline : bool
        Never contact ``inner``: serve from the cache or raise OfflineError.
    policy : CachePolicy
        Which keys are immutable (served from disk online), which make up a
        registry, which key identifies the namespace, how to name a key. The
        default assumes nothing: every online read goes to the server. A
        Butler passes its repository's policy
        (:func:`objbutler.registry.cache_policy.repository_cache_policy`).
    fill_on_range_read : bool
        Online, a range read of an uncached immutable object fetches the whole
        object once into the cache (default: the ranges pass through).
    auto_offline : bool, default False
        Switch to offline mode when the server is unreachable (a read failed
        with a TransientStoreError after the inner store's retries), and
        answer from the cache, possibly stale, for ``reconnect_after``
        seconds. Off by default: such a read raises, so that a process never
        answers from a cached registry older than commits that had finished.
    reconnect_after : float
        Seconds an automatic switch lasts before the server is tried again.
    """

    def __init__(
        self,
        inner: Store,
        cache_dir: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        offline: bool = False,
        *,
        policy: CachePolicy | None = None,
        fill_on_range_read: bool = False,
        auto_offline: bool = False,
        reconnect_after: float = 60.0,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        super().__init__(inner)
        self.policy = policy if policy is not None else CachePolicy()
        self._init_args: dict[str, Any] = {
            "max_bytes": max_bytes, "offline": offline, "policy": self.policy,
            "fill_on_range_read": fill_on_range_read, "auto_offline": auto_offline,
            "reconnect_after": reconnect_after,
        }
        self.cache_dir = Path(cache_dir).expanduser().absolute()
        self.max_bytes = max_bytes
        self.fill_on_range_read = fill_on_range_read
        self._switch = OfflineSwitch(offline, auto_offline, reconnect_after)
        self._layout = CacheLayout(self.cache_dir, inner)
        self.root = self._layout.root
        self._local = LocalStore(self._layout.objects, durable=False)
        self._layout.describe_namespace()
        self._lru = LruEviction(self._layout, max_bytes, self.policy.evict_last)
        self._timestamps: dict[str, dt.datetime] = {}  # server last_modified of listed registry keys

    def __reduce__(self) -> tuple[Any, ...]:
        return (functools.partial(CachingStore, **self._init_args), (self.inner, self.cache_dir))

    def __repr__(self) -> str:
        mode = ", offline=True" if self.offline else ""
        return f"CachingStore({self.inner!r}, {str(self.cache_dir)!r}{mode})"

    # -- mode ------------------------------------------------------------------------

    @property
    def offline(self) -> bool:
        """True when calls are answered from the cache alone (asked for, or the server is unreachable)."""
        return self._switch.offline

    def _remote(self, call: Callable[[], Any]) -> Any:
        return self._switch.remote(call, self.inner.uri)

    def _not_cached(self, key: str) -> OfflineError:
        return OfflineError(f"offline: {self.policy.describe(key)} of {self.uri} is not in the cache "
                            f"{self.cache_dir}{self._switch.why()}")

    def _refuse_write(self, key: str) -> OfflineError:
        return OfflineError(f"offline: cannot write {key!r} to {self.uri} (writes need the server)")

    def _from_disk_first(self, key: str) -> bool:
        return self.offline or self.policy.immutable(key)

    # -- the local tier ------------------------------------------------------------

    def _cached_get(self, key: str) -> bytes | None:
        try:
            data = self._local.get(key)
        except ObjButlerError:  # missing, or evicted between the listing and the read
            return None
        self._touch(key)
        return data

    def _touch(self, key: str) -> None:
        """Record a use: access time = now, modification time (the server's) kept."""
        path = self._layout.path(key)
        with contextlib.suppress(OSError):
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))

    def _fill(self, key: str, data: bytes, last_modified: dt.datetime | None = None) -> None:
        """Keep an object (best effort: a full disk or a racing eviction only costs the copy)."""
        if len(data) > self.max_bytes:
            return
        stamp = last_modified or self._timestamps.get(key)
        for _ in range(2):  # a racing eviction may remove the new directory once
            try:
                self._local.put(key, data)
                if stamp is not None:
                    os.utime(self._layout.path(key),
                             ns=(time.time_ns(), int(stamp.timestamp() * 1e9)))
                break
            except (OSError, ObjButlerError) as exc:
                log.debug("could not cache %s: %s", key, exc)
        else:
            return
        self._lru.account(len(data))

    def _check_identity(self, data: bytes) -> None:
        """Forget every cached object if the namespace was recreated since it was cached."""
        identity_key = self.policy.identity_key
        assert identity_key is not None
        cached = self._cached_get(identity_key)
        if cached is None or cached == data:
            return
        log.warning("%s was recreated since it was cached: dropping its cached objects", self.uri)
        doomed = self.root / f"{TMP_PREFIX}dropped-{uuid.uuid4().hex}"
        with contextlib.suppress(OSError):
            os.replace(self._layout.objects, doomed)  # atomic: readers see the old files or none
        self._layout.registry_seen.unlink(missing_ok=True)
        shutil.rmtree(doomed, ignore_errors=True)
        self._layout.objects.mkdir(parents=True, exist_ok=True)

    def _discard(self, key: str) -> None:
        with contextlib.suppress(OSError, ObjButlerError):
            self._local.delete(key)

    def is_cached(self, key: str) -> bool:
        """Whether ``key`` has a cached copy (for an immutable key: one that reads are served from)."""
        return self._layout.path(key).is_file()

    # -- reads ---------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """Return the whole object (from the cache when allowed, else from the server, then kept)."""
        validate_key(key)
        if self._from_disk_first(key):
            data = self._cached_get(key)
            if data is not None:
                return data
            if self.offline:
                raise self._not_cached(key)
        try:
            data = self._remote(lambda: self.inner.get(key))
        except _WentOfflineError:
            return self.get(key)
        if key == self.policy.identity_key:
            self._check_identity(data)
        self._fill(key, data)
        return data

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Return byte ranges: from the cached file when there is one, else from the server."""
        validate_key(key)
        if self._from_disk_first(key):
            try:
                out = self._local.get_ranges(key, ranges)
            except ObjButlerError:
                if self.offline:
                    raise self._not_cached(key) from None
            else:
                self._touch(key)
                return out
        if self.fill_on_range_read and self.policy.immutable(key):
            self.get(key)
            return self.get_ranges(key, ranges)
        try:
            result: list[bytes] = self._remote(lambda: self.inner.get_ranges(key, ranges))
        except _WentOfflineError:
            return self.get_ranges(key, ranges)
        return result

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Return several whole objects: cached ones from disk, the rest with one server call."""
        found: dict[str, bytes] = {}
        for key in keys:
            validate_key(key)
            if self._from_disk_first(key) and key not in found:
                data = self._cached_get(key)
                if data is not None:
                    found[key] = data
        missing = list(dict.fromkeys(key for key in keys if key not in found))
        if missing and self.offline:
            raise self._not_cached(missing[0])
        if missing:
            try:
                fetched = self._remote(lambda: self.inner.get_many(missing))
            except _WentOfflineError:
                return self.get_many(keys)
            for key, data in zip(missing, fetched, strict=True):
                self._fill(key, data)
                found[key] = data
        return [found[key] for key in keys]

    def head(self, key: str) -> ObjectMeta:
        """Metadata of one object (immutable and cached: from the cached file)."""
        validate_key(key)
        if self._from_disk_first(key):
            with contextlib.suppress(ObjButlerError):
                meta = self._local.head(key)
                return ObjectMeta(key, meta.size, None, meta.last_modified)
            if self.offline:
                raise self._not_cached(key)
        try:
            result: ObjectMeta = self._remote(lambda: self.inner.head(key))
        except _WentOfflineError:
            return self.head(key)
        return result

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """List from the server (online) or from the cache directory (offline)."""
        validate_prefix(prefix)
        if self.offline:
            yield from self._local_listing(prefix, start_after)
            return
        last = start_after
        try:
            iterator = iter(self._remote(lambda: self.inner.list(prefix, start_after)))
            while True:
                try:
                    meta = self._remote(lambda: next(iterator))
                except StopIteration:
                    if self.policy.completes_registry(prefix):
                        self._mark_registry_seen()
                    return
                if self.policy.registry(meta.key) and self.policy.immutable(meta.key):
                    self._note_timestamp(meta)
                last = meta.key
                yield meta
        except _WentOfflineError:
            yield from self._local_listing(prefix, last)

    def _mark_registry_seen(self) -> None:
        marker = self._layout.registry_seen
        if not marker.exists():
            with contextlib.suppress(OSError):
                marker.touch()

    def _local_listing(self, prefix: str, start_after: str | None) -> Iterator[ObjectMeta]:
        registry = self.policy.registry_prefix
        if registry is not None and prefix.startswith(registry) and not self._layout.registry_seen.exists():
            raise OfflineError(f"offline: the registry of {self.uri} was never read online through the cache "
                               f"{self.cache_dir}; open the repository once online with this cache first")
        for meta in self._local.list(prefix, start_after):
            yield ObjectMeta(meta.key, meta.size, None, meta.last_modified)

    def _note_timestamp(self, meta: ObjectMeta) -> None:
        """Remember a registry object's server time (and fix a cached copy's) for offline listings."""
        if meta.last_modified is None:
            return
        self._timestamps[meta.key] = meta.last_modified
        path = self._layout.path(meta.key)
        wanted = int(meta.last_modified.timestamp() * 1e9)
        with contextlib.suppress(OSError):
            stat = path.stat()
            if abs(stat.st_mtime_ns - wanted) > 1000:
                os.utime(path, ns=(stat.st_atime_ns, wanted))

    # -- writes --------------------------------------------------------------------

    def _write(self, key: str, call: Callable[[], ObjectMeta], data: bytes | None) -> ObjectMeta:
        validate_key(key)
        if self.offline:
            raise self._refuse_write(key)
        meta = call()
        self._discard(key)
        if data is not None and self.policy.registry(key) and self.policy.immutable(key):
            self._fill(key, data, meta.last_modified)  # our own commits: needed for a gap-free offline log
        return meta

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Write to the server (OfflineError offline); drops any cached copy."""
        return self._write(key, lambda: self.inner.put(key, data), data)

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Create on the server (OfflineError offline)."""
        return self._write(key, lambda: self.inner.put_if_absent(key, data), data)

    @if_inner_has
    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Swap on the server (OfflineError offline); only where ``inner`` has compare-and-swap."""
        inner = self._cas_inner()
        return self._write(key, lambda: inner.put_if_match(key, data, etag), data)

    def delete(self, key: str) -> None:
        """Delete on the server (OfflineError offline) and from the cache."""
        validate_key(key)
        if self.offline:
            raise self._refuse_write(key)
        self.inner.delete(key)
        self._discard(key)

    # -- size bound ----------------------------------------------------------------

    def usage(self) -> int:
        """Bytes the whole cache holds now (:meth:`LruEviction.usage`)."""
        return self._lru.usage()

    def evict(self, target: int | None = None) -> int:
        """Evict least recently used files down to ``target`` bytes, default 90 % (:meth:`LruEviction.evict`)."""
        return self._lru.evict(target)
