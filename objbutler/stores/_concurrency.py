"""One concurrency budget per store: its worker threads and its requests in flight, sized together.

Why a budget per store, not a pool per call
-------------------------------------------
A pool per call multiplies: eight concurrent ``get_ranges`` calls with 16
workers each started 128 threads on one store (268 with the callers' nested
reads) and asked its 16-connection pool for far more sockets than it keeps,
so urllib3 logged "Connection pool is full, discarding connection" 112 times.
A :class:`ConcurrencyBudget` has ``limit`` worker threads, started on demand
and shared by every call on the store, and ``limit`` request slots: a store
takes a slot around each request (:meth:`ConcurrencyBudget.request`), so at
most ``limit`` requests are in flight whatever thread sends them, and a
connection pool of at least ``limit`` never discards a connection.

Why nothing deadlocks
---------------------
:meth:`ConcurrencyBudget.map` is *caller-runs*: it offers its items to the
shared workers and works through them on the calling thread too, claiming
items one at a time from a shared cursor. A worker that arrives after the
items are all claimed returns at once. The caller waits only for items that
some thread is already running, never for a worker to become free, so a call
made from inside a budget worker (an image fanned out by
``get_cutouts_many`` reading its blocks with ``get_ranges``) proceeds on its
own thread when every worker is busy, and uses idle workers when there are
some. :meth:`ConcurrencyBudget.feed` takes items one at a time (a
``with butler.batch()`` block's puts) the same way: a backlog is worked off
on the submitting thread, never waited for. A request slot is held only
around one request and never while waiting for anything else (it is
re-entrant on one thread), so slots cannot deadlock either.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "ConcurrencyBudget",
    "Feed",
    "budget_of",
    "default_budget",
    "run_concurrently",
]

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_CONCURRENCY = 16

_local = threading.local()
"""``_local.budget``: the budget whose worker this thread is (unset on other threads)."""


def _current_budget() -> ConcurrencyBudget | None:
    return getattr(_local, "budget", None)


class _Job(Generic[T, R]):
    """The items of one :meth:`ConcurrencyBudget.map` call, claimed one at a time by whoever comes."""

    def __init__(self, function: Callable[[T], R], items: Sequence[T]) -> None:
        self._function = function
        self._items = items
        self._results: list[Any] = [None] * len(items)
        self._cond = threading.Condition()
        self._next = 0
        self._running = 0
        self._error: BaseException | None = None

    def _claim(self) -> int | None:
        with self._cond:
            if self._error is not None or self._next >= len(self._items):
                return None
            index = self._next
            self._next += 1
            self._running += 1
            return index

    def drain(self) -> None:
        """Run unclaimed items until none is left (or one failed)."""
        while (index := self._claim()) is not None:
            try:
                result = self._function(self._items[index])
            except BaseException as exc:  # handed to the caller in wait()
                with self._cond:
                    if self._error is None:
                        self._error = exc
                    self._running -= 1
                    self._cond.notify_all()
                continue
            with self._cond:
                self._results[index] = result
                self._running -= 1
                self._cond.notify_all()

    def wait(self) -> list[R]:
        """Wait for the items other threads are running; the results, or the first error."""
        with self._cond:
            while self._running:
                self._cond.wait()
        if self._error is not None:
            raise self._error
        return self._results


class ConcurrencyBudget:
    """Worker threads and request slots of one store, shared by all its calls.

    Parameters
    ----------
    limit : int
        Most worker threads the budget starts, and most requests in flight
        (the store's ``max_concurrency``).
    name : str
        Prefix of the worker threads' names.

    Notes
    -----
    Fork-safe: a child process starts with a fresh pool and all slots free.
    """

    def __init__(self, limit: int = DEFAULT_MAX_CONCURRENCY, name: str = "objbutler") -> None:
        if not (isinstance(limit, int) and limit >= 1):
            raise ValueError(f"a concurrency budget must be an integer >= 1, got {limit!r}")
        self.limit = limit
        self.name = name
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._slots = threading.BoundedSemaphore(limit)
        self._pool: ThreadPoolExecutor | None = None
        self._held = threading.local()
        self._in_flight = 0
        self.peak_in_flight = 0
        """Most requests ever in flight at once (a counter for tests and benchmarks)."""

    def __repr__(self) -> str:
        return f"ConcurrencyBudget({self.limit}, {self.name!r})"

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():  # forked: the parent's threads and held slots are not ours
                    self._pid = os.getpid()
                    self._slots = threading.BoundedSemaphore(self.limit)
                    self._pool = None
                    self._held = threading.local()
                    self._in_flight = 0

    # -- requests ------------------------------------------------------------------------

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Hold one request slot for the block (re-entrant on one thread)."""
        self._check_pid()
        depth = getattr(self._held, "depth", 0)
        if depth:
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        slots = self._slots
        slots.acquire()
        self._held.depth = 1
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
            self._held.depth = 0
            slots.release()

    @property
    def in_flight(self) -> int:
        """Requests in flight now."""
        return self._in_flight

    # -- threads -------------------------------------------------------------------------

    def _mark_worker(self) -> None:
        _local.budget = self

    def _executor(self) -> ThreadPoolExecutor:
        self._check_pid()
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.limit, thread_name_prefix=self.name,
                                                    initializer=self._mark_worker)
                pool = self._pool
        return pool

    @property
    def threads(self) -> int:
        """Worker threads this budget has started in this process (never more than ``limit``)."""
        pool = self._pool
        return len(pool._threads) if pool is not None and self._pid == os.getpid() else 0

    def in_worker(self) -> bool:
        """True on one of this budget's worker threads."""
        return _current_budget() is self

    def map(self, function: Callable[[T], R], items: Iterable[T], max_workers: int | None = None) -> list[R]:
        """``[function(item) for item in items]`` on the calling thread and idle workers, results in order.

        Parameters
        ----------
        function : callable
            A blocking function of one item.
        items : iterable
            The inputs.
        max_workers : int, optional
            At most this many items at once for this call (the caller included);
            never more than the budget's ``limit``.

        Returns
        -------
        list
            The results in item order. The first exception raised by any call
            propagates once the items already running have finished; no new
            item starts after it.
        """
        todo = list(items)
        width = min(len(todo), self.limit, max_workers if max_workers is not None else self.limit)
        if width <= 1:
            return [function(item) for item in todo]
        job = _Job(function, todo)
        pool = self._executor()
        for _ in range(width - 1):
            try:
                pool.submit(job.drain)
            except RuntimeError:  # the pool is shutting down (interpreter exit): this thread drains it all
                break
        job.drain()
        return job.wait()

    def feed(self, function: Callable[[T], R], max_workers: int | None = None) -> Feed[T, R]:
        """A :class:`Feed`: ``function`` applied to items submitted one at a time, caller-runs like :meth:`map`.

        Parameters
        ----------
        function : callable
            A blocking function of one item.
        max_workers : int, optional
            At most this many items at once per submitting thread (that thread
            included); never more than the budget's ``limit``.

        Returns
        -------
        Feed
            Submit items with :meth:`Feed.submit`; :meth:`Feed.close` finishes them.
        """
        width = max(1, min(self.limit, max_workers if max_workers is not None else self.limit))
        return Feed(self, function, width)

    def imap_unordered(self, function: Callable[[T], R], items: Iterable[T], max_workers: int | None = None,
                       ahead: int | None = None) -> Iterator[tuple[T, R | None, BaseException | None]]:
        """Yield ``(item, result, None)`` or ``(item, None, error)`` as items finish, caller-runs like :meth:`map`.

        Parameters
        ----------
        function : callable
            A blocking function of one item.
        items : iterable
            The inputs, consumed lazily.
        max_workers : int, optional
            At most this many items at once (the consumer's thread included).
        ahead : int, optional
            At most this many items started but not yet yielded (bounded memory);
            ``2 * max_workers`` by default.

        Yields
        ------
        tuple
            Each item with its result or the exception it raised.
        """
        width = max(1, min(self.limit, max_workers if max_workers is not None else self.limit))
        window = max(width, ahead if ahead is not None else 2 * width)
        source = iter(items)
        cond = threading.Condition()
        done: collections.deque[tuple[T, R | None, BaseException | None]] = collections.deque()
        state = {"running": 0, "helpers": 0, "exhausted": False, "stopped": False}
        nothing = object()

        def claim() -> Any:
            with cond:
                if state["stopped"] or state["exhausted"] or len(done) + state["running"] >= window:
                    return nothing
                try:
                    item = next(source)
                except StopIteration:
                    state["exhausted"] = True
                    return nothing
                state["running"] += 1
                return item

        def work(item: T) -> None:
            outcome: tuple[T, R | None, BaseException | None]
            try:
                outcome = (item, function(item), None)
            except BaseException as exc:  # handed to the consumer
                outcome = (item, None, exc)
            with cond:
                done.append(outcome)
                state["running"] -= 1
                cond.notify_all()

        def helper() -> None:
            try:
                while (item := claim()) is not nothing:
                    work(item)
            finally:
                with cond:
                    state["helpers"] -= 1

        def top_up() -> None:
            with cond:
                wanted = 0 if state["stopped"] or state["exhausted"] else width - 1 - state["helpers"]
                state["helpers"] += max(0, wanted)
            for started in range(max(0, wanted)):
                try:
                    self._executor().submit(helper)
                except RuntimeError:  # the pool is shutting down (interpreter exit): the consumer works alone
                    with cond:
                        state["helpers"] -= wanted - started
                    break

        try:
            top_up()
            while True:
                with cond:
                    outcome = done.popleft() if done else None
                    finished = outcome is None and state["exhausted"] and not state["running"]
                if finished:
                    return
                if outcome is None:
                    item = claim()
                    if item is not nothing:
                        work(item)
                        continue
                    with cond:
                        while not done and state["running"]:
                            cond.wait()
                    continue
                top_up()
                yield outcome
        finally:
            with cond:
                state["stopped"] = True


class Feed(Generic[T, R]):
    """Items handed in one at a time, each run once on an idle worker of a budget or on the submitting thread.

    Made by :meth:`ConcurrencyBudget.feed`. At most ``width - 1`` helper tasks
    are offered to the budget's workers; :meth:`submit` queues an item and,
    while ``width`` items wait unstarted (every helper busy, or the budget's
    workers taken by other calls), runs queued items on the calling thread
    instead of waiting for a worker (caller-runs). So one submitting thread
    has at most ``width`` items running at once, and a feed made on a budget
    worker, or on a budget whose workers are all busy, still makes progress.
    """

    def __init__(self, budget: ConcurrencyBudget, function: Callable[[T], R], width: int) -> None:
        self._budget = budget
        self._function = function
        self._width = width
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[T, Future[R]]] = collections.deque()
        self._running = 0
        self._helpers = 0
        self._closed = False

    def submit(self, item: T) -> Future[R]:
        """Queue ``item``; the future of ``function(item)`` (its result, or the exception it raised).

        Raises
        ------
        RuntimeError
            After :meth:`close`.
        """
        future: Future[R] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("this feed is closed")
            self._queue.append((item, future))
            start = self._helpers < self._width - 1
            if start:
                self._helpers += 1
        if start:
            try:
                self._budget._executor().submit(self._helper)
            except RuntimeError:  # the pool is shutting down (interpreter exit): this thread runs everything
                with self._cond:
                    self._helpers -= 1
        while (claimed := self._claim(self._width)) is not None:  # a backlog: work it off here
            self._run(*claimed)
        return future

    def close(self, cancel: bool = False) -> None:
        """Run what is still queued on this thread (or cancel it), then wait for the items running elsewhere.

        Parameters
        ----------
        cancel : bool
            Cancel the queued items (their futures) instead of running them.
        """
        with self._cond:
            self._closed = True
            dropped = list(self._queue) if cancel else []
            if cancel:
                self._queue.clear()
        for _, future in dropped:
            future.cancel()
        while (claimed := self._claim(1)) is not None:
            self._run(*claimed)
        with self._cond:
            while self._running:
                self._cond.wait()

    def _claim(self, backlog: int) -> tuple[T, Future[R]] | None:
        """The oldest queued item if at least ``backlog`` wait (counted as running), else None."""
        with self._cond:
            if len(self._queue) < backlog:
                return None
            self._running += 1
            return self._queue.popleft()

    def _run(self, item: T, future: Future[R]) -> None:
        try:
            if future.set_running_or_notify_cancel():
                try:
                    result = self._function(item)
                except BaseException as exc:  # handed to whoever holds the future
                    future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise  # KeyboardInterrupt on the submitting thread stops it, as a wait would have
                else:
                    future.set_result(result)
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _helper(self) -> None:
        try:
            while (claimed := self._claim(1)) is not None:
                self._run(*claimed)
        finally:
            with self._cond:
                self._helpers -= 1


_default_lock = threading.Lock()
_default: ConcurrencyBudget | None = None


def default_budget() -> ConcurrencyBudget:
    """The process's budget for stores that keep none (local, memory) and for fan-outs across stores."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ConcurrencyBudget(DEFAULT_MAX_CONCURRENCY, "objbutler-shared")
        return _default


def budget_of(store: object) -> ConcurrencyBudget:
    """The budget of a store, looking through wrappers (``inner``); :func:`default_budget` if it keeps none.

    Parameters
    ----------
    store : object
        A store, or a wrapper around one.

    Returns
    -------
    ConcurrencyBudget
        The budget its calls share.
    """
    seen = 0
    while store is not None and seen < 16:
        budget = getattr(store, "budget", None)
        if isinstance(budget, ConcurrencyBudget):
            return budget
        store = getattr(store, "inner", None)
        seen += 1
    return default_budget()


def run_concurrently(function: Callable[[T], R], items: Sequence[T], max_workers: int,
                     budget: ConcurrencyBudget | None = None) -> list[R]:
    """Apply ``function`` to every item, at most ``max_workers`` at a time, results in order.

    Parameters
    ----------
    function : callable
        A blocking function of one item.
    items : sequence
        The inputs.
    max_workers : int
        Upper bound on concurrent calls for this call.
    budget : ConcurrencyBudget, optional
        Whose threads to use (a store's: :func:`budget_of`). Without one, the
        budget of the worker thread this runs on, else the process's
        :func:`default_budget`: no call starts threads of its own.

    Returns
    -------
    list
        ``[function(item) for item in items]``, computed concurrently. The first
        exception raised by any call propagates.
    """
    if len(items) <= 1 or max_workers <= 1:
        return [function(item) for item in items]
    chosen = budget or _current_budget() or default_budget()
    return chosen.map(function, items, max_workers)
