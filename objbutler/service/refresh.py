"""One registry refresh at a time, shared by every request that arrived before it started.

A Butler's registry view is refreshed in place (one listing of the log tail, then the new
commits), so two threads must not refresh at once; but a lock held across that listing makes
every request wait for every other's listing, and the service's throughput becomes one request per
listing round trip. :class:`SharedRefresh` keeps the guarantee each request needs (it sees every
commit that finished before it arrived) with at most one listing in flight: a request waits for a
refresh that *started after it arrived*, starting one itself when none is running, so all the
requests that queue up during one listing share the next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["SharedRefresh"]

T = TypeVar("T")


class SharedRefresh(Generic[T]):
    """Single-flight refreshes: ``get()`` returns the result of a ``refresh()`` that began after the call.

    Parameters
    ----------
    refresh : callable
        Brings the view up to date and returns it (e.g. ``butler.registry.refresh``).
    """

    def __init__(self, refresh: Callable[[], T]) -> None:
        self._refresh = refresh
        self._cond = threading.Condition()
        self._started = 0  # refreshes begun
        self._finished = 0  # the newest refresh that succeeded
        self._running = False
        self._value: T | None = None
        self.calls = 0  # refreshes actually run (for tests and metrics)

    def get(self) -> T:
        """The view, refreshed by a call that started after this one was made."""
        with self._cond:
            wanted = self._started + 1
            while True:
                if self._finished >= wanted:
                    assert self._value is not None
                    return self._value
                if not self._running:
                    self._running = True
                    self._started += 1
                    mine = self._started
                    self.calls += 1
                    break
                self._cond.wait()
        try:
            value = self._refresh()
        except BaseException:
            with self._cond:
                self._running = False
                self._cond.notify_all()  # a waiter starts the next attempt itself
            raise
        with self._cond:
            self._value = value
            self._finished = mine
            self._running = False
            self._cond.notify_all()
        return value
