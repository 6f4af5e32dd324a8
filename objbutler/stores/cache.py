"""A read-through cache of a remote repository on local disk, and offline mode.

:class:`CachingStore` wraps any store. What it keeps, and when it answers from disk:

=============================  ============================  =================================
keys                           online                        offline
=============================  ============================  =================================
``data/...`` (immutable)       from the cache when present,  from the cache, else OfflineError
``manifest/log/...``,          else from the server (then
``manifest/checkpoints/...``   kept)
everything else (config, ...)  always from the server; the   the last copy seen, else
                               last copy seen is kept        OfflineError
listings                       always from the server        from the cache directory
writes                         to the server                 OfflineError
=============================  ============================  =================================

Log entries and checkpoints are immutable once written (created with
``put_if_absent`` under a fresh name), and data objects are written once under
a fresh key, so a cached copy never goes stale; the log *listing* and the
repository config can change, so online they always come from the server.
Offline, the registry is rebuilt from the cached config, checkpoints and log
entries exactly as it is online, and the FITS and Zarr cutout planners read
their byte ranges from the cached files through the same ``get_ranges``.

Layout and sharing
    ``<cache_dir>/objects-v1/<namespace>/o/<key>``, one file per object, where
    the namespace is a hash of the store's URI (and endpoint). Files are
    written to a temporary name and renamed into place, so several processes
    (and threads) can fill and read one cache at once: a reader sees a whole
    file or none. A file's modification time is the server's
    ``last_modified`` (offline listings report it, which the timestamped
    Swift log orders by); its access time, set on every hit, drives the LRU.
    "Immutable" holds for one repository's lifetime: when an online read
    finds the repository's ``objbutler.json`` changed (deleted and created
    again under the same URI), everything cached for it is dropped.

Size bound
    ``max_bytes`` bounds the whole cache (every namespace). A process that
    fills the cache past the bound (by its own count, re-measured at most a
    minute apart) takes a non-blocking lock and evicts least recently used
    files down to 90 %: data objects first, registry objects only when data
    alone cannot make room (a gap in a cached log would hide later commits
    offline). Eviction tolerates files that another process removed or is
    reading (an open file stays readable after unlink).

Going offline
    ``offline=True`` never contacts the server (nothing is attempted, so an
    unreachable network cannot hang a call). Online, a read that fails after
    the inner store's retries (connection refused, timeouts, 5xx) raises its
    :class:`~objbutler.errors.TransientStoreError`: a cached registry may be
    missing commits that finished after it was cached, and answering from it
    would break "a fresh process sees every commit that finished before it
    started". Only with ``auto_offline=True`` (a Butler's ``offline="auto"``,
    ``OBJBUTLER_OFFLINE=auto``) does such a failure switch the store to
    offline mode for ``reconnect_after`` seconds, with a warning, and the read
    is answered from the cache, possibly stale.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from objbutler.errors import ObjButlerError, OfflineError, TransientStoreError
from objbutler.stores._base import (
    ObjectMeta,
    RangeLike,
    Store,
    StoreCapabilities,
    validate_key,
    validate_prefix,
)
from objbutler.stores.local import LocalStore

__all__ = [
    "DEFAULT_CACHE_DIR",
    "AUTO",
    "DEFAULT_MAX_BYTES",
    "IMMUTABLE_PREFIXES",
    "CachingStore",
    "cache_settings",
    "parse_size",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CACHE_DIR = "~/.cache/objbutler"
DEFAULT_MAX_BYTES = 20 * 2**30
IMMUTABLE_PREFIXES = ("data/", "manifest/log/", "manifest/checkpoints/")
AUTO: Literal["auto"] = "auto"  # offline="auto": go offline while the server is unreachable
REGISTRY_PREFIX = "manifest/"
LOG_PREFIX = "manifest/log/"
REGISTRY_SEEN = "registry-seen"  # marker: a full log listing once came from the server
LAYOUT = "objects-v1"
LOW_WATER = 0.9
REMEASURE_SECONDS = 60.0
STALE_TEMP_SECONDS = 3600.0
_TMP_PREFIX = ".objbutler-tmp-"  # LocalStore's temporary files
_DATASET_SUFFIXES = (".fits", ".zarr", ".json", ".parquet", ".ecsv")


class _WentOfflineError(Exception):
    """Internal: the server became unreachable during this call; answer it from the cache."""


def parse_size(text: str) -> int:
    """Parse ``"500M"``, ``"20G"``, ``"1T"`` or a plain number of bytes.

    Raises
    ------
    ValueError
        For anything else.
    """
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a size: use e.g. 500M, 20G or a number of bytes") from None


def cache_settings(
    cache: str | os.PathLike[str] | bool | None, offline: bool | Literal["auto"] | None, environ: Any = None
) -> tuple[Path | None, bool | Literal["auto"], int]:
    """Resolve a Butler's ``cache=`` and ``offline=`` against the environment.

    Parameters
    ----------
    cache : path, bool or None
        A cache directory; ``True`` for the default (``~/.cache/objbutler``);
        ``False`` for none even if ``OBJBUTLER_CACHE`` is set; None to read
        ``OBJBUTLER_CACHE``.
    offline : bool, "auto" or None
        ``True``: never contact the server. ``"auto"``: contact it, and
        answer from the cache while it is unreachable (see
        :class:`CachingStore`'s ``auto_offline``). ``False``: contact it, and
        raise when it fails. None reads ``OBJBUTLER_OFFLINE``
        (``1``/``true``/``yes``/``on``, or ``auto``; anything else is False).
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    tuple
        ``(cache directory or None, offline, max bytes)``; the bound comes
        from ``OBJBUTLER_CACHE_SIZE`` (e.g. ``20G``) or the default.

    Raises
    ------
    ValueError
        For ``offline`` (or ``"auto"``) with the cache switched off, or an
        ``offline`` that is none of the above.
    """
    env = os.environ if environ is None else environ
    if offline is None:
        word = env.get("OBJBUTLER_OFFLINE", "").strip().lower()
        offline = AUTO if word == AUTO else word in ("1", "true", "yes", "on")
    if offline not in (True, False, AUTO):
        raise ValueError(f"offline must be True, False or {AUTO!r}, got {offline!r}")
    if cache is None:
        cache = env.get("OBJBUTLER_CACHE") or None
    if cache is True or (cache is None and offline):
        cache = DEFAULT_CACHE_DIR
    if cache is False or cache is None:
        if offline:
            raise ValueError(f"offline={offline!r} needs a cache: pass cache=<directory> (or leave cache unset)")
        return None, False, DEFAULT_MAX_BYTES
    size = env.get("OBJBUTLER_CACHE_SIZE")
    return Path(cache).expanduser(), offline, parse_size(size) if size else DEFAULT_MAX_BYTES


def _namespace(inner: Store) -> tuple[str, dict[str, str]]:
    identity = {"uri": inner.uri}
    for attribute in ("endpoint_url", "auth_url"):
        value = getattr(inner, attribute, None)
        if isinstance(value, str) and value:
            identity[attribute] = value
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    return digest, identity


def describe_key(key: str) -> str:
    """Name the dataset an object key belongs to: ``calexp detector=22,visit=1 in run 'run1' (key)``."""
    parts = key.split("/")
    if parts[0] == "data":
        for index, part in enumerate(parts):
            if index >= 3 and part.endswith(_DATASET_SUFFIXES):
                stem = part.rsplit(".", 1)[0].rsplit("-", 1)[0]
                run = "/".join(parts[1 : index - 1])
                return f"dataset {parts[index - 1]} {stem} in run {run!r} ({key})"
    return repr(key)


class CachingStore:
    """A store that keeps immutable objects of ``inner`` on local disk and can work offline.

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
    immutable_prefixes : tuple of str
        Keys under these prefixes never change once written.
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
    identity_key : str or None
        An object written once when the repository is created (its config).
        If an online read finds it changed, the repository was deleted and
        recreated under the same URI, and every object cached for it is
        dropped (its "immutable" keys, such as log entry 1, now name other bytes).
    """

    def __init__(
        self,
        inner: Store,
        cache_dir: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        offline: bool = False,
        *,
        immutable_prefixes: Sequence[str] = IMMUTABLE_PREFIXES,
        fill_on_range_read: bool = False,
        auto_offline: bool = False,
        reconnect_after: float = 60.0,
        identity_key: str | None = "objbutler.json",
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._init_args: dict[str, Any] = {
            "max_bytes": max_bytes, "offline": offline, "immutable_prefixes": tuple(immutable_prefixes),
            "fill_on_range_read": fill_on_range_read, "auto_offline": auto_offline,
            "reconnect_after": reconnect_after, "identity_key": identity_key,
        }
        self.identity_key = identity_key
        self.inner = inner
        self.cache_dir = Path(cache_dir).expanduser().absolute()
        self.max_bytes = max_bytes
        self.immutable_prefixes = tuple(immutable_prefixes)
        self.fill_on_range_read = fill_on_range_read
        self.auto_offline = auto_offline
        self.reconnect_after = reconnect_after
        self._forced_offline = offline
        self._offline_until = 0.0
        self._offline_cause: BaseException | None = None
        self._top = self.cache_dir / LAYOUT
        namespace, identity = _namespace(inner)
        self.root = self._top / namespace
        self._local = LocalStore(self.root / "o", durable=False)
        self._describe_namespace(identity)
        self._lock = threading.Lock()
        self._timestamps: dict[str, dt.datetime] = {}  # server last_modified of listed registry keys
        self._usage: int | None = None
        self._measured_at = 0.0

    def __reduce__(self) -> tuple[Any, ...]:
        return (functools.partial(CachingStore, **self._init_args), (self.inner, self.cache_dir))

    def __repr__(self) -> str:
        mode = ", offline=True" if self.offline else ""
        return f"CachingStore({self.inner!r}, {str(self.cache_dir)!r}{mode})"

    def _describe_namespace(self, identity: dict[str, str]) -> None:
        marker = self.root / "store.json"
        if not marker.exists():
            with contextlib.suppress(OSError):
                temp = self.root / f"{_TMP_PREFIX}{os.getpid()}-{threading.get_ident()}"
                temp.write_text(json.dumps(identity, indent=2))
                os.replace(temp, marker)

    # -- identity and mode ---------------------------------------------------------

    @property
    def uri(self) -> str:
        """The wrapped store's URI (a cached repository keeps its name)."""
        return self.inner.uri

    @property
    def capabilities(self) -> StoreCapabilities:
        """The wrapped store's capabilities."""
        return self.inner.capabilities

    @property
    def offline(self) -> bool:
        """True when calls are answered from the cache alone (asked for, or the server is unreachable)."""
        return self._forced_offline or time.monotonic() < self._offline_until

    def _immutable(self, key: str) -> bool:
        return key.startswith(self.immutable_prefixes)

    def _remote(self, call: Callable[[], T]) -> T:
        """Run a server call; on an unreachable server switch offline (if allowed) and raise _WentOfflineError."""
        try:
            return call()
        except TransientStoreError as exc:
            if not self.auto_offline:
                raise
            self._offline_until = time.monotonic() + self.reconnect_after
            self._offline_cause = exc
            log.warning("%s is unreachable (%s): offline for %.0f s, serving cached objects only",
                        self.inner.uri, exc, self.reconnect_after)
            raise _WentOfflineError from exc

    def _not_cached(self, key: str) -> OfflineError:
        why = f" (the server failed: {self._offline_cause})" if not self._forced_offline and self._offline_cause else ""
        return OfflineError(f"offline: {describe_key(key)} of {self.uri} is not in the cache {self.cache_dir}{why}")

    def _refuse_write(self, key: str) -> OfflineError:
        return OfflineError(f"offline: cannot write {key!r} to {self.uri} (writes need the server)")

    # -- the local tier ------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self._local.root / validate_key(key)

    def _cached_get(self, key: str) -> bytes | None:
        try:
            data = self._local.get(key)
        except ObjButlerError:  # missing, or evicted between the listing and the read
            return None
        self._touch(key)
        return data

    def _touch(self, key: str) -> None:
        """Record a use: access time = now, modification time (the server's) kept."""
        path = self._path(key)
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
                    os.utime(self._path(key), ns=(time.time_ns(), int(stamp.timestamp() * 1e9)))
                break
            except (OSError, ObjButlerError) as exc:
                log.debug("could not cache %s: %s", key, exc)
        else:
            return
        self._account(len(data))

    def _check_identity(self, data: bytes) -> None:
        """Forget every cached object if the repository was recreated since it was cached."""
        assert self.identity_key is not None
        cached = self._cached_get(self.identity_key)
        if cached is None or cached == data:
            return
        log.warning("%s was recreated since it was cached: dropping its cached objects", self.uri)
        doomed = self.root / f"{_TMP_PREFIX}dropped-{uuid.uuid4().hex}"
        with contextlib.suppress(OSError):
            os.replace(self._local.root, doomed)  # atomic: readers see the old files or none
        (self.root / REGISTRY_SEEN).unlink(missing_ok=True)
        shutil.rmtree(doomed, ignore_errors=True)
        self._local.root.mkdir(parents=True, exist_ok=True)

    def _discard(self, key: str) -> None:
        with contextlib.suppress(OSError, ObjButlerError):
            self._local.delete(key)

    def is_cached(self, key: str) -> bool:
        """Whether ``key`` has a cached copy (for an immutable key: one that reads are served from)."""
        return self._path(key).is_file()

    # -- reads ---------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """Return the whole object (from the cache when allowed, else from the server, then kept)."""
        validate_key(key)
        if self.offline or self._immutable(key):
            data = self._cached_get(key)
            if data is not None:
                return data
            if self.offline:
                raise self._not_cached(key)
        try:
            data = self._remote(lambda: self.inner.get(key))
        except _WentOfflineError:
            return self.get(key)
        if key == self.identity_key:
            self._check_identity(data)
        self._fill(key, data)
        return data

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Return byte ranges: from the cached file when there is one, else from the server."""
        validate_key(key)
        if self.offline or self._immutable(key):
            try:
                out = self._local.get_ranges(key, ranges)
            except ObjButlerError:
                if self.offline:
                    raise self._not_cached(key) from None
            else:
                self._touch(key)
                return out
        if self.fill_on_range_read and self._immutable(key):
            self.get(key)
            return self.get_ranges(key, ranges)
        try:
            return self._remote(lambda: self.inner.get_ranges(key, ranges))
        except _WentOfflineError:
            return self.get_ranges(key, ranges)

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Return several whole objects: cached ones from disk, the rest with one server call."""
        found: dict[str, bytes] = {}
        for key in keys:
            validate_key(key)
            if (self.offline or self._immutable(key)) and key not in found:
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
        if self.offline or self._immutable(key):
            with contextlib.suppress(ObjButlerError):
                meta = self._local.head(key)
                return ObjectMeta(key, meta.size, None, meta.last_modified)
            if self.offline:
                raise self._not_cached(key)
        try:
            return self._remote(lambda: self.inner.head(key))
        except _WentOfflineError:
            return self.head(key)

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
                    if LOG_PREFIX.startswith(prefix) or prefix.startswith(LOG_PREFIX):
                        self._mark_registry_seen()
                    return
                if meta.key.startswith(REGISTRY_PREFIX) and self._immutable(meta.key):
                    self._note_timestamp(meta)
                last = meta.key
                yield meta
        except _WentOfflineError:
            yield from self._local_listing(prefix, last)

    def _mark_registry_seen(self) -> None:
        marker = self.root / REGISTRY_SEEN
        if not marker.exists():
            with contextlib.suppress(OSError):
                marker.touch()

    def _local_listing(self, prefix: str, start_after: str | None) -> Iterator[ObjectMeta]:
        if prefix.startswith(REGISTRY_PREFIX) and not (self.root / REGISTRY_SEEN).exists():
            raise OfflineError(f"offline: the registry of {self.uri} was never read online through the cache "
                               f"{self.cache_dir}; open the repository once online with this cache first")
        for meta in self._local.list(prefix, start_after):
            yield ObjectMeta(meta.key, meta.size, None, meta.last_modified)

    def _note_timestamp(self, meta: ObjectMeta) -> None:
        """Remember a registry object's server time (and fix a cached copy's) for offline listings."""
        if meta.last_modified is None:
            return
        self._timestamps[meta.key] = meta.last_modified
        path = self._path(meta.key)
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
        if data is not None and key.startswith(REGISTRY_PREFIX) and self._immutable(key):
            self._fill(key, data, meta.last_modified)  # our own commits: needed for a gap-free offline log
        return meta

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Write to the server (OfflineError offline); drops any cached copy."""
        return self._write(key, lambda: self.inner.put(key, data), data)

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Create on the server (OfflineError offline)."""
        return self._write(key, lambda: self.inner.put_if_absent(key, data), data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Swap on the server (OfflineError offline)."""
        return self._write(key, lambda: self.inner.put_if_match(key, data, etag), data)

    def delete(self, key: str) -> None:
        """Delete on the server (OfflineError offline) and from the cache."""
        validate_key(key)
        if self.offline:
            raise self._refuse_write(key)
        self.inner.delete(key)
        self._discard(key)

    # -- size bound ----------------------------------------------------------------

    def _account(self, added: int) -> None:
        with self._lock:
            stale = time.monotonic() - self._measured_at > REMEASURE_SECONDS
            if self._usage is None or stale:
                self._usage = self._measure()
                self._measured_at = time.monotonic()
            else:
                self._usage += added
            over = self._usage > self.max_bytes
        if over:
            self.evict()

    def _files(self) -> Iterator[tuple[Path, os.stat_result]]:
        for current, _dirs, names in os.walk(self._top):
            for name in names:
                path = Path(current) / name
                with contextlib.suppress(OSError):
                    yield path, path.lstat()

    def _measure(self) -> int:
        return sum(stat.st_size for path, stat in self._files() if not path.name.startswith(_TMP_PREFIX))

    def usage(self) -> int:
        """Bytes the whole cache holds now (a walk of the directory)."""
        return self._measure()

    def evict(self, target: int | None = None) -> int:
        """Remove least recently used files until the cache holds at most ``target`` bytes.

        Parameters
        ----------
        target : int, optional
            Default: 90 % of ``max_bytes``.

        Returns
        -------
        int
            Bytes removed (0 when another process is evicting right now).
        """
        goal = int(self.max_bytes * LOW_WATER) if target is None else target
        self._top.mkdir(parents=True, exist_ok=True)
        with open(self._top / ".evict.lock", "a+b") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            removed, total = self._evict_locked(goal)
        with self._lock:
            self._usage, self._measured_at = total, time.monotonic()
        return removed

    def _evict_locked(self, goal: int) -> tuple[int, int]:
        now = time.time()
        candidates: list[tuple[bool, int, int, Path]] = []
        total = 0
        for path, stat in self._files():
            if path.name.startswith(_TMP_PREFIX):
                if now - stat.st_mtime > STALE_TEMP_SECONDS:  # left by a killed writer
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            total += stat.st_size
            relative = path.relative_to(self._top).parts
            if len(relative) < 3 or relative[1] != "o":
                continue  # store.json, the lock file
            is_registry = relative[2] == REGISTRY_PREFIX.rstrip("/") or len(relative) == 3
            candidates.append((is_registry, stat.st_atime_ns, stat.st_size, path))
        removed = 0
        for _registry, _atime, size, path in sorted(candidates):
            if total <= goal:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass  # another process got there first
            except OSError:
                continue
            total -= size
            removed += size
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        return removed, total

