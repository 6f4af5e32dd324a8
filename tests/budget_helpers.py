"""Test helpers for concurrency: a store that records its data writes in flight, and a budget held busy."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from objbutler.stores import ConcurrencyBudget, ObjectMeta, Store

WAIT = 60.0
"""Seconds a helper waits for a thread before it fails (a guard against hanging, not a timing check)."""


class InFlightStore:
    """Forwards to a real store; records the most writes in flight at once and the threads that wrote data.

    Parameters
    ----------
    inner : Store
        The real store.
    budget : ConcurrencyBudget, optional
        A budget of its own (what :func:`~objbutler.stores.budget_of` finds), else the inner store's.
    """

    def __init__(self, inner: Store, budget: ConcurrencyBudget | None = None) -> None:
        self.inner = inner
        self.budget = budget
        self._lock = threading.Lock()
        self._now = 0
        self.most = 0
        self.threads: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes) -> ObjectMeta:
        with self._lock:
            self._now += 1
            self.most = max(self.most, self._now)
            if key.startswith("data/"):
                self.threads.add(threading.current_thread().name)
        try:
            threading.Event().wait(0.01)  # hold the slot a moment so that overlaps show
            return self.inner.put(key, data)
        finally:
            with self._lock:
                self._now -= 1


@contextlib.contextmanager
def every_worker_busy(budget: ConcurrencyBudget) -> Iterator[None]:
    """Hold every worker of ``budget`` (and two caller threads) until the block ends."""
    release = threading.Event()
    started = threading.Semaphore(0)
    workers: set[int] = set()
    lock = threading.Lock()

    def hold(_: int) -> None:
        if budget.in_worker():
            with lock:
                workers.add(threading.get_ident())
        started.release()
        release.wait(WAIT)

    callers = [threading.Thread(target=budget.map, args=(hold, range(budget.limit))) for _ in range(2)]
    for caller in callers:
        caller.start()
    try:
        for _ in range(budget.limit + 2):  # each map runs an item on its caller; the workers run the others
            assert started.acquire(timeout=WAIT)
        assert len(workers) == budget.limit == budget.threads
        yield
    finally:
        release.set()
        for caller in callers:
            caller.join(WAIT)
