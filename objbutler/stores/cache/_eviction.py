"""Keep a cache directory under a size bound: least recently used files go first."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from objbutler.stores.cache._layout import TMP_PREFIX, CacheLayout

__all__ = ["LOW_WATER", "LruEviction"]

LOW_WATER = 0.9
REMEASURE_SECONDS = 60.0
STALE_TEMP_SECONDS = 3600.0


class LruEviction:
    """Account for what a process adds to a cache and evict down to 90 % of the bound when it is passed.

    The bound covers the whole cache directory (every namespace). Usage is
    the process's own count, re-measured at most a minute apart; eviction
    takes a non-blocking lock (another process evicting means this one need
    not), removes files in order of access time, sparing the files
    ``evict_last`` picks until the others cannot make room, and tolerates
    files another process removed or is reading.

    Parameters
    ----------
    layout : CacheLayout
        The cache's paths.
    max_bytes : int
        The bound.
    evict_last : callable
        ``key -> bool``: keys to spare until nothing else is left.
    """

    def __init__(self, layout: CacheLayout, max_bytes: int, evict_last: Callable[[str], bool]) -> None:
        self.layout = layout
        self.max_bytes = max_bytes
        self.evict_last = evict_last
        self._lock = threading.Lock()
        self._usage: int | None = None
        self._measured_at = 0.0

    def account(self, added: int) -> None:
        """Note ``added`` new bytes; evict when the cache is past its bound."""
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
        for current, _dirs, names in os.walk(self.layout.top):
            for name in names:
                path = Path(current) / name
                with contextlib.suppress(OSError):
                    yield path, path.lstat()

    def _measure(self) -> int:
        return sum(stat.st_size for path, stat in self._files() if not path.name.startswith(TMP_PREFIX))

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
        top = self.layout.top
        top.mkdir(parents=True, exist_ok=True)
        with open(top / ".evict.lock", "a+b") as lock:
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
            if path.name.startswith(TMP_PREFIX):
                if now - stat.st_mtime > STALE_TEMP_SECONDS:  # left by a killed writer
                    with contextlib.suppress(OSError):
                        path.unlink()
                continue
            total += stat.st_size
            key = self.layout.key_of(path)
            if key is None:
                continue  # store.json, the lock file
            candidates.append((self.evict_last(key), stat.st_atime_ns, stat.st_size, path))
        removed = 0
        for _last, _atime, size, path in sorted(candidates):
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
