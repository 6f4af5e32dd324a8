"""Fault-injecting wrapper stores: make chosen calls fail, lose their answers or land late.

:class:`FailingWritesStore` fails the writes a predicate picks (e.g. every
write of a registry log entry, after the data object went through), to show
that a put whose commit fails leaves nothing behind.
:class:`IgnoresConditionsStore` behaves like an S3 gateway that accepts
``If-None-Match``/``If-Match`` and ignores them while claiming an atomic create.
:class:`FastClockStore` makes server time pass quickly for timestamped logs.
:class:`FaultyStore` wraps any store (memory, local, S3, Swift) and breaks the
calls a deterministic :class:`FaultPlan` picks, in one of four ways:

``before``
    Raise :class:`~objbutler.errors.TransientStoreError` without doing the call
    (a request that never reached the server). A listing raises on iteration.
``lost_answer``
    Do the call, then raise TransientStoreError (the server applied a write, or
    answered a read, and the client never heard). A listing yields the first
    half of its entries and then raises (a later page failed).
``late``
    Writes and deletes only: raise TransientStoreError now and apply the call
    later (the server got the request and applies it after the client gave
    up): after ``delay`` seconds from a timer thread, or just before the
    ``after_calls``-th later call through the wrapper (deterministic, for
    property tests), or at :meth:`FaultyStore.flush_late`.
``refuse``
    Raise a plain (not transient) :class:`~objbutler.errors.StoreError` without
    doing the call: the server refused the request outright (a 4xx such as an
    expired credential), so nothing of it was applied.

A plan is a list of :class:`Fault` rules (method names, a regular expression
on the key, which occurrences) and optionally a seeded random schedule::

    plan = FaultPlan([Fault("lost_answer", "put_if_absent", r"^manifest/log/", occurrences=None)])
    store = FaultyStore(open_store(uri), plan)
    butler = Butler(uri, store=store)
    ...
    store.flush_late()              # every late write has now landed (or failed)
    store.counts                    # Counter({"lost_answer": 6})
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import functools
import random
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from objbutler.errors import StoreError, TransientStoreError
from objbutler.stores import ObjectMeta, RangeLike, Store, StoreWrapper, if_inner_has

__all__ = [
    "FAULT_KINDS",
    "STORE_METHODS",
    "FailingWritesStore",
    "Fault",
    "FaultDecision",
    "FaultPlan",
    "FaultyStore",
    "FastClockStore",
    "IgnoresConditionsStore",
    "InjectedFault",
]

WRITE_METHODS = ("put", "put_if_absent", "put_if_match")


def _injected_failure(key: str) -> Exception:
    return StoreError(f"injected failure writing {key}")


class FailingWritesStore(StoreWrapper):
    """Raise ``error`` instead of performing the writes ``should_fail(method, key)`` selects.

    Parameters
    ----------
    inner : Store
        The real store.
    should_fail : callable
        ``(method name, key) -> bool``; method is put, put_if_absent or put_if_match.
    error : callable
        Makes the exception to raise (default: a StoreError naming the key).
    """

    def __init__(self, inner: Store, should_fail: Callable[[str, str], bool],
                 error: Callable[[str], Exception] = _injected_failure) -> None:
        super().__init__(inner)
        self.should_fail = should_fail
        self.error = error
        self.failures: list[tuple[str, str]] = []

    def __reduce__(self) -> tuple[Any, ...]:
        return (self._wrapper_class, (self.inner, self.should_fail, self.error))

    def _write(self, method: str, key: str, *args: Any) -> ObjectMeta:
        if self.should_fail(method, key):
            self.failures.append((method, key))
            raise self.error(key)
        result: ObjectMeta = getattr(self.inner, method)(key, *args)
        return result

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Write, unless selected to fail."""
        return self._write("put", key, data)

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Create, unless selected to fail."""
        return self._write("put_if_absent", key, data)

    @if_inner_has
    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Swap, unless selected to fail (only where ``inner`` can)."""
        return self._write("put_if_match", key, data, etag)


class IgnoresConditionsStore(StoreWrapper):
    """A store that claims conditional writes but silently ignores them (as some gateways do)."""

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Overwrite whatever is there, answering success."""
        return self.inner.put(key, data)

    @if_inner_has
    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Overwrite whatever is there, answering success (only where ``inner`` offers the method)."""
        return self.inner.put(key, data)


# -- FaultyStore: a deterministic, seedable fault plan over any store --------------------------------------

FAULT_KINDS = ("before", "lost_answer", "late", "refuse")
"""What a :class:`FaultyStore` can do to a call (see the module docstring)."""
STORE_METHODS = ("get", "get_ranges", "get_many", "head", "put", "put_if_absent", "put_if_match", "delete", "list")
"""Every Store method a :class:`FaultyStore` can break."""
MUTATING_METHODS = ("put", "put_if_absent", "put_if_match", "delete")

T = TypeVar("T")


def _method_set(methods: str | Iterable[str]) -> frozenset[str]:
    """``"*"``, ``"put|delete"`` or an iterable of names -> a validated set of method names."""
    if isinstance(methods, str):
        names: tuple[str, ...] = STORE_METHODS if methods == "*" else tuple(methods.split("|"))
    else:
        names = tuple(methods)
    unknown = sorted(set(names) - set(STORE_METHODS))
    if unknown or not names:
        raise ValueError(f"unknown store method(s) {unknown} (known: {', '.join(STORE_METHODS)})")
    return frozenset(names)


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """One rule of a :class:`FaultPlan`: which calls to break, and how.

    Parameters
    ----------
    kind : {"before", "lost_answer", "late", "refuse"}
        What to do to a selected call (see the module docstring).
    methods : str or tuple of str
        Store method names the rule matches: ``"*"`` (every method), one
        name, ``"|"``-separated names, or a tuple. A ``late`` rule only ever
        matches writes and deletes.
    key : str
        Regular expression searched (``re.search``) in the call's key; for
        ``list`` the prefix, for ``get_many`` any of the keys. ``""`` matches
        every key.
    occurrences : int, tuple of int, or None
        Which of the calls this rule matches fire, counted from 1 over the
        calls it matched (whether or not they fired); None: every one.
    delay : float, optional
        ``late`` only: apply the call from a timer thread this many seconds later.
    after_calls : int, optional
        ``late`` only: apply the call just before the ``after_calls``-th later
        call through the same :class:`FaultyStore` (deterministic). With neither
        ``delay`` nor ``after_calls``, the call waits for :meth:`FaultyStore.flush_late`.

    Raises
    ------
    ValueError
        For an unknown kind or method, a bad regular expression, occurrence or delay.
    """

    kind: str
    methods: str | tuple[str, ...] = "*"
    key: str = ""
    occurrences: int | tuple[int, ...] | None = 1
    delay: float | None = None
    after_calls: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (known: {', '.join(FAULT_KINDS)})")
        methods = _method_set(self.methods)
        re.compile(self.key)
        wanted = () if self.occurrences is None else (
            (self.occurrences,) if isinstance(self.occurrences, int) else tuple(self.occurrences))
        if any(not isinstance(n, int) or n < 1 for n in wanted):
            raise ValueError(f"occurrences count from 1, got {self.occurrences!r}")
        if self.kind == "late":
            if not methods & set(MUTATING_METHODS):
                raise ValueError("a late fault needs a write or delete method to delay")
            if self.delay is not None and self.delay < 0:
                raise ValueError(f"delay must be >= 0, got {self.delay}")
            if self.after_calls is not None and self.after_calls < 1:
                raise ValueError(f"after_calls must be >= 1, got {self.after_calls}")
        elif self.delay is not None or self.after_calls is not None:
            raise ValueError("delay and after_calls apply to late faults only")


@dataclasses.dataclass(frozen=True, slots=True)
class InjectedFault:
    """A fault a :class:`FaultyStore` injected.

    Parameters
    ----------
    kind : str
        One of :data:`FAULT_KINDS`.
    method : str
        The store method.
    key : str
        The key (``list``: the prefix; ``get_many``: the first key).
    call : int
        The call's number on its FaultyStore (1 for the first call).
    source : str
        ``"rule <n>"`` (index in the plan's rules) or ``"random"``.
    """

    kind: str
    method: str
    key: str
    call: int
    source: str


@dataclasses.dataclass(frozen=True, slots=True)
class FaultDecision:
    """What a :class:`FaultPlan` decided for one call.

    Parameters
    ----------
    kind : str
        One of :data:`FAULT_KINDS`.
    source : str
        ``"rule <n>"`` or ``"random"``.
    delay, after_calls : float or int, optional
        When a ``late`` call is applied (see :class:`Fault`).
    """

    kind: str
    source: str
    delay: float | None = None
    after_calls: int | None = None


@dataclasses.dataclass(slots=True)
class _Rule:
    fault: Fault
    methods: frozenset[str]
    pattern: re.Pattern[str]
    occurrences: frozenset[int] | None
    seen: int = 0


class FaultPlan:
    """Which store calls a :class:`FaultyStore` breaks: explicit rules, then a seeded random schedule.

    Decisions depend only on the sequence of calls the plan is asked about (and
    the seed), so a single-threaded caller gets the same faults on every run.

    Parameters
    ----------
    faults : iterable of Fault
        Explicit rules, tried in order; the first that fires decides the call.
        Every rule that matches a call counts it, fired or not.
    seed : int, optional
        Seed of the random schedule.
    rate : float
        Probability that a call no rule fired on gets a random fault (0: none).
    kinds : sequence of str
        Kinds the random schedule picks from (uniformly; ``late`` only for
        writes and deletes).
    methods : str or iterable of str
        Methods the random schedule applies to (as :attr:`Fault.methods`).
    key : str
        Regular expression a key must contain for the random schedule to apply.
    late_after_calls : (int, int)
        Random ``late`` faults are applied before a later call, this many
        calls on (uniform, inclusive) ...
    late_delay : (float, float), optional
        ... or, when given, from a timer this many seconds later (uniform).

    Examples
    --------
    Lose the answer of every commit write, and fail the second checkpoint listing:

    >>> plan = FaultPlan([Fault("lost_answer", "put_if_absent", r"^manifest/log/", occurrences=None),
    ...                   Fault("before", "list", r"^manifest/checkpoints/", occurrences=2)])
    """

    def __init__(
        self,
        faults: Iterable[Fault] = (),
        *,
        seed: int | None = None,
        rate: float = 0.0,
        kinds: Sequence[str] = FAULT_KINDS,
        methods: str | Iterable[str] = "*",
        key: str = "",
        late_after_calls: tuple[int, int] = (1, 4),
        late_delay: tuple[float, float] | None = None,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        unknown = sorted(set(kinds) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}")
        if late_after_calls[0] < 1 or late_after_calls[1] < late_after_calls[0]:
            raise ValueError(f"late_after_calls must be (low >= 1, high >= low), got {late_after_calls}")
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self.seed = seed
        self.rate = rate
        self.kinds = tuple(kinds)
        self._random_methods = _method_set(methods)
        self._random_key = re.compile(key)
        self.late_after_calls = late_after_calls
        self.late_delay = late_delay
        self._rng = random.Random(seed)
        self.add(*faults)

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FaultPlan({self.faults!r}, seed={self.seed!r}, rate={self.rate!r})"

    @property
    def faults(self) -> list[Fault]:
        """The explicit rules, in order."""
        with self._lock:
            return [rule.fault for rule in self._rules]

    def add(self, *faults: Fault) -> None:
        """Append rules (their occurrence counts start at zero)."""
        rules = []
        for fault in faults:
            occurrences = None if fault.occurrences is None else frozenset(
                (fault.occurrences,) if isinstance(fault.occurrences, int) else fault.occurrences)
            rules.append(_Rule(fault, _method_set(fault.methods), re.compile(fault.key), occurrences))
        with self._lock:
            self._rules.extend(rules)

    def clear(self) -> None:
        """Drop every explicit rule (the random schedule stays)."""
        with self._lock:
            self._rules.clear()

    def decide(self, method: str, keys: Sequence[str]) -> FaultDecision | None:
        """The fault for one call of ``method`` on ``keys``, or None to let it through.

        Parameters
        ----------
        method : str
            A store method name.
        keys : sequence of str
            The call's keys (``list``: the prefix).

        Returns
        -------
        FaultDecision or None
            Kind, where it came from, and the late parameters.
        """
        mutating = method in MUTATING_METHODS
        with self._lock:
            chosen: FaultDecision | None = None
            for index, rule in enumerate(self._rules):
                if method not in rule.methods or (rule.fault.kind == "late" and not mutating):
                    continue
                if not any(rule.pattern.search(key) for key in keys):
                    continue
                rule.seen += 1
                if chosen is None and (rule.occurrences is None or rule.seen in rule.occurrences):
                    chosen = FaultDecision(rule.fault.kind, f"rule {index}", rule.fault.delay, rule.fault.after_calls)
            if self.rate > 0 and method in self._random_methods and any(self._random_key.search(k) for k in keys):
                draw = self._rng.random()
                kinds = [kind for kind in self.kinds if mutating or kind != "late"]
                if draw < self.rate and kinds:
                    kind = self._rng.choice(kinds)
                    delay = after = None
                    if kind == "late":
                        if self.late_delay is not None:
                            delay = self._rng.uniform(*self.late_delay)
                        else:
                            after = self._rng.randint(*self.late_after_calls)
                    if chosen is None:
                        chosen = FaultDecision(kind, "random", delay, after)
            return chosen


@dataclasses.dataclass(eq=False, slots=True)
class _LateCall:
    method: str
    key: str
    operation: Callable[[], Any]
    due_call: int | None = None
    timer: threading.Timer | None = None
    taken: bool = False
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)


class FaultyStore(StoreWrapper):
    """A store that forwards to ``inner`` and breaks the calls ``plan`` picks.

    Parameters
    ----------
    inner : Store
        The real store (any backend, or another wrapper).
    plan : FaultPlan, optional
        Which calls to break (default: none, until rules are added to ``plan``).
    supersede : bool
        A later write or delete of a key through this wrapper cancels a late
        call on that key still pending, as stores that order requests by
        arrival do (S3, Swift). False: the late call lands whatever came after.

    Attributes
    ----------
    counts : collections.Counter
        Injected faults per kind.
    counts_by_method : collections.Counter
        Injected faults per ``(kind, method)``.
    late_outcomes : collections.Counter
        What became of late calls: ``applied``, ``failed`` (the store refused
        it when it finally ran, e.g. the key was taken meanwhile), ``superseded``.
    late_errors : list of str
        Why late calls failed.
    injected : list of InjectedFault
        Every injected fault, in order.
    calls : collections.Counter
        Calls per method.
    """

    def __init__(self, inner: Store, plan: FaultPlan | None = None, *, supersede: bool = True) -> None:
        super().__init__(inner)
        self.plan = plan if plan is not None else FaultPlan()
        self.supersede = supersede
        self._lock = threading.Lock()
        self._call_count = 0
        self._pending: list[_LateCall] = []
        self._started: list[_LateCall] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.counts_by_method: collections.Counter[tuple[str, str]] = collections.Counter()
        self.late_outcomes: collections.Counter[str] = collections.Counter()
        self.late_errors: list[str] = []
        self.injected: list[InjectedFault] = []
        self.calls: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r}, {self.plan!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # a copy of the plan (its state so far), no late calls, zero counts
        return (functools.partial(FaultyStore, supersede=self.supersede), (self.inner, self.plan))

    def __enter__(self) -> FaultyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- late calls --------------------------------------------------------------

    @property
    def pending_late(self) -> int:
        """Late calls not applied yet."""
        with self._lock:
            return len(self._pending)

    def flush_late(self, wait: bool = False, timeout: float | None = None) -> int:
        """Make every pending late call land (or fail) now; return how many were pending.

        Parameters
        ----------
        wait : bool
            False: apply them at once, in the order they were made (timers are
            cancelled). True: let timed ones fire at their own time (waiting up
            to ``timeout`` seconds for each), then apply the rest at once.
        timeout : float, optional
            With ``wait``, the longest wait for one timer.

        Returns
        -------
        int
            Late calls that were pending.
        """
        with self._lock:
            pending = list(self._pending)
        if wait:
            for late in pending:
                if late.timer is not None:
                    late.timer.join(timeout)
        for late in pending:
            self._apply_late(late)
        with self._lock:
            started = list(self._started)
        for late in started:  # applied by a timer thread or just now: wait until each has finished
            late.finished.wait(timeout)
        with self._lock:
            self._started = [late for late in self._started if not late.finished.is_set()]
        return len(pending)

    def close(self) -> None:
        """Apply every pending late call (see :meth:`flush_late`)."""
        self.flush_late()

    def _schedule(self, method: str, key: str, operation: Callable[[], Any], decision: FaultDecision) -> None:
        late = _LateCall(method, key, operation)
        with self._lock:
            if decision.after_calls is not None:
                late.due_call = self._call_count + decision.after_calls
            self._pending.append(late)
        if decision.delay is not None:
            timer = threading.Timer(decision.delay, self._apply_late, args=(late,))
            timer.daemon = True
            late.timer = timer
            timer.start()

    def _apply_late(self, late: _LateCall) -> None:
        with self._lock:
            if late.taken:
                return
            late.taken = True
            self._pending.remove(late)
            self._started.append(late)
        if late.timer is not None and late.timer is not threading.current_thread():
            late.timer.cancel()
        try:
            late.operation()
        except Exception as exc:
            with self._lock:
                self.late_outcomes["failed"] += 1
                self.late_errors.append(f"late {late.method} of {late.key}: {type(exc).__name__}: {exc}")
        else:
            with self._lock:
                self.late_outcomes["applied"] += 1
        finally:
            late.finished.set()

    def _supersede(self, key: str) -> None:
        with self._lock:
            doomed = [late for late in self._pending if late.key == key]
            for late in doomed:
                late.taken = True
                self._pending.remove(late)
                late.finished.set()
                self.late_outcomes["superseded"] += 1
        for late in doomed:
            if late.timer is not None:
                late.timer.cancel()

    # -- the fault machinery -----------------------------------------------------

    def _begin(self, method: str, keys: Sequence[str]) -> tuple[FaultDecision | None, int]:
        """Count the call, apply late calls that fall due, and ask the plan."""
        with self._lock:
            self._call_count += 1
            call = self._call_count
            self.calls[method] += 1
            due = [late for late in self._pending if late.due_call is not None and late.due_call <= call]
        for late in due:
            self._apply_late(late)
        decision = self.plan.decide(method, keys)
        if decision is not None:
            with self._lock:
                self.counts[decision.kind] += 1
                self.counts_by_method[(decision.kind, method)] += 1
                self.injected.append(InjectedFault(decision.kind, method, keys[0] if keys else "", call,
                                                   decision.source))
        return decision, call

    def _run(self, method: str, keys: Sequence[str], operation: Callable[[], T], write_key: str | None = None) -> T:
        decision, call = self._begin(method, keys)
        what = f"{method} of {keys[0] if len(keys) == 1 else f'{len(keys)} keys'} (call {call})"
        if write_key is not None and self.supersede and (decision is None or decision.kind not in ("before", "refuse")):
            self._supersede(write_key)
        if decision is None:
            return operation()
        if decision.kind == "before":
            raise TransientStoreError(f"injected fault: {what} failed before reaching the store")
        if decision.kind == "refuse":
            raise StoreError(f"injected fault: the store refused {what} (nothing was applied)")
        if decision.kind == "lost_answer":
            with contextlib.suppress(Exception):  # the answer (even a refusal) never reaches the client
                operation()
            raise TransientStoreError(f"injected fault: {what} reached the store but its answer was lost")
        assert write_key is not None  # the plan only delays writes and deletes
        self._schedule(method, write_key, operation, decision)
        raise TransientStoreError(f"injected fault: {what} timed out on the client; the store applies it later")

    # -- the Store protocol ------------------------------------------------------

    def get(self, key: str) -> bytes:
        """Forward ``get`` unless the plan breaks it."""
        return self._run("get", [key], lambda: self.inner.get(key))

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Forward ``get_ranges`` unless the plan breaks it."""
        return self._run("get_ranges", [key], lambda: self.inner.get_ranges(key, ranges))

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Forward ``get_many`` unless the plan breaks it (a rule matches if any key matches)."""
        return self._run("get_many", list(keys), lambda: self.inner.get_many(keys))

    def head(self, key: str) -> ObjectMeta:
        """Forward ``head`` unless the plan breaks it."""
        return self._run("head", [key], lambda: self.inner.head(key))

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Forward ``put`` unless the plan breaks it (or delays it)."""
        return self._run("put", [key], lambda: self.inner.put(key, data), write_key=key)

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Forward ``put_if_absent`` unless the plan breaks it (or delays it; the condition is checked late)."""
        return self._run("put_if_absent", [key], lambda: self.inner.put_if_absent(key, data), write_key=key)

    @if_inner_has
    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Forward ``put_if_match`` (only where ``inner`` has it) unless the plan breaks it (or delays it)."""
        inner = self._cas_inner()
        return self._run("put_if_match", [key], lambda: inner.put_if_match(key, data, etag), write_key=key)

    def delete(self, key: str) -> None:
        """Forward ``delete`` unless the plan breaks it (or delays it)."""
        self._run("delete", [key], lambda: self.inner.delete(key), write_key=key)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """Forward ``list``; a broken listing raises on iteration (``lost_answer``: after half its entries)."""
        decision, call = self._begin("list", [prefix])
        if decision is None:
            return self.inner.list(prefix, start_after)
        return self._broken_listing(decision.kind, prefix, start_after, call)

    def _broken_listing(self, kind: str, prefix: str, start_after: str | None, call: int) -> Iterator[ObjectMeta]:
        if kind == "lost_answer":
            metas = list(self.inner.list(prefix, start_after))
            yield from metas[: len(metas) // 2]
            raise TransientStoreError(f"injected fault: listing {prefix!r} (call {call}) broke after "
                                      f"{len(metas) // 2} of {len(metas)} entries")
        if kind == "refuse":
            raise StoreError(f"injected fault: the store refused listing {prefix!r} (call {call})")
        raise TransientStoreError(f"injected fault: listing {prefix!r} (call {call}) failed before reaching the store")


class FastClockStore(StoreWrapper):
    """Report server timestamps as if the server's clock ran fast: :meth:`advance` moves it on at once.

    Objects written after ``advance(s)`` carry modification times ``s``
    seconds later than the real clock (in ``head`` and ``list``), so tests of
    a timestamped log can make minutes pass between commits without waiting
    (e.g. to reach the settled commits a timestamped checkpoint covers).

    Parameters
    ----------
    inner : Store
        The real store (its own timestamps are shifted by the offset in force
        when each object was last written).
    """

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self._lock = threading.Lock()
        self.offset = dt.timedelta(0)
        self._offsets: dict[str, dt.timedelta] = {}

    def __repr__(self) -> str:
        return f"FastClockStore({self.inner!r}, offset={self.offset})"

    def advance(self, seconds: float) -> None:
        """Move the clock of later writes ``seconds`` on."""
        with self._lock:
            self.offset += dt.timedelta(seconds=seconds)

    def _shift(self, meta: ObjectMeta) -> ObjectMeta:
        with self._lock:
            offset = self._offsets.get(meta.key)
        if not offset or meta.last_modified is None:
            return meta
        return dataclasses.replace(meta, last_modified=meta.last_modified + offset)

    def _written(self, key: str, write: Callable[[], ObjectMeta]) -> ObjectMeta:
        with self._lock:
            offset = self.offset
        meta = write()
        with self._lock:
            self._offsets[key] = offset
        return self._shift(meta)

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Write, stamped with the fast clock."""
        return self._written(key, lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Create, stamped with the fast clock."""
        return self._written(key, lambda: self.inner.put_if_absent(key, data))

    @if_inner_has
    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Swap (only where ``inner`` can), stamped with the fast clock."""
        inner = self._cas_inner()
        return self._written(key, lambda: inner.put_if_match(key, data, etag))

    def head(self, key: str) -> ObjectMeta:
        """Metadata, with the fast clock's time."""
        return self._shift(self.inner.head(key))

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """List, with the fast clock's times."""
        for meta in self.inner.list(prefix, start_after):
            yield self._shift(meta)
