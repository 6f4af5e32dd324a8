"""Interleaved timing: every method of a cell runs in the same rounds (A B C, C B A, ...).

A cell is one workload (e.g. 1,000 random stamps from the FITS image); its
:class:`Case` s are the methods. :func:`interleave` runs one warm-up of each
case, then ``reps`` measured rounds, alternating the order each round so slow
drift (another engineer's tests on the same two cores) hits every method alike.
Before each measured call the counter is reset and after it read, so every row
carries the requests and bytes that one call moved.

A case that is too slow to repeat in the time allowed is run fewer times (at
least once); a case can also run only ``measured`` of its ``n`` stamps and be
scaled up, which is then recorded in the row as ``extrapolated_from`` and
shown with a ``~`` everywhere it is printed. Nothing is ever made up: a
method that fails gets a row with ``error`` set and no time.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Case", "Counter", "NullCounter", "ProxyCounter", "Row", "StoreCounter", "interleave"]


class Counter(Protocol):
    """What a case's requests and bytes are read from."""

    def reset(self) -> None:
        """Zero the counts."""
        ...

    def read(self) -> tuple[int | None, int | None]:
        """``(requests, bytes moved)`` since the last reset (None where unknown)."""
        ...


class NullCounter:
    """No counting (a method that reads local files directly)."""

    def reset(self) -> None:
        """Nothing to zero."""

    def read(self) -> tuple[int | None, int | None]:
        """Unknown."""
        return None, None


class ProxyCounter:
    """Requests and response bytes (plus uploads) seen by the counting proxy.

    Parameters
    ----------
    proxy : benchmarks.proxy.ProxyProcess
        The proxy every client goes through.
    """

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy

    def reset(self) -> None:
        """Zero the proxy's counters."""
        self.proxy.reset()

    def read(self) -> tuple[int | None, int | None]:
        """Requests and bytes (downloaded + uploaded) since the reset."""
        stats = self.proxy.stats()
        return int(stats["requests"]), int(stats["response_bytes"]) + int(stats["request_bytes"])


class StoreCounter:
    """Requests and bytes seen by an :class:`objbutler.testing.wrappers.CountingStore`.

    Parameters
    ----------
    store : CountingStore
        The wrapper the method's store calls go through.
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    def reset(self) -> None:
        """Zero the wrapper's counters."""
        self.store.reset()

    def read(self) -> tuple[int | None, int | None]:
        """Requests and bytes (read + written) since the reset."""
        return int(self.store.requests), int(self.store.bytes_read) + int(self.store.bytes_written)


@dataclasses.dataclass
class Case:
    """One method of one cell.

    Parameters
    ----------
    method : str
        Method name as it appears in rows and plots.
    run : callable
        Does the whole job once (e.g. cuts ``measured`` stamps).
    n : int
        The workload size the row reports (stamps, puts, ...).
    measured : int, optional
        How much of ``n`` one call of ``run`` does; the time, requests and
        bytes are scaled by ``n / measured`` (an extrapolation, labelled).
    counter : Counter, optional
        Where requests and bytes are read (none: unknown).
    warm : callable, optional
        A cheap warm-up (default: ``run`` itself).
    kind : str
        ``"objbutler"``, ``"fixed"`` (a fixed read strategy) or ``"baseline"``.
    budget : float, optional
        This case's own repetition budget in seconds (default: the cell's).
    """

    method: str
    run: Callable[[], object]
    n: int
    measured: int | None = None
    counter: Counter = dataclasses.field(default_factory=NullCounter)
    warm: Callable[[], object] | None = None
    kind: str = "baseline"
    budget: float | None = None
    times: list[float] = dataclasses.field(default_factory=list)
    requests: list[int] = dataclasses.field(default_factory=list)
    nbytes: list[int] = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def scale(self) -> float:
        """Factor from what one call does to what the row reports."""
        return self.n / self.measured if self.measured else 1.0


@dataclasses.dataclass
class Row:
    """One line of the results (the ``--json`` schema, plus context fields).

    ``seconds`` is the median over the measured repetitions (``min``/``max``
    beside it); ``requests`` and ``bytes`` are medians per call;
    ``ratio_vs_objbutler`` is ``seconds / objbutler's seconds`` in the same cell
    (above 1: slower than objbutler).
    """

    suite: str
    workload: str
    method: str
    n: int
    seconds: float | None
    requests: float | None
    bytes: float | None
    ratio_vs_objbutler: float | None = None
    min: float | None = None
    max: float | None = None
    reps: int = 0
    kind: str = "baseline"
    extrapolated_from: int | None = None
    error: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A flat JSON object (``extra`` fields merged in)."""
        out = dataclasses.asdict(self)
        extra = out.pop("extra")
        return {**out, **extra}


def _median(values: list[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def _call(case: Case, function: Callable[[], object]) -> float | None:
    try:
        started = time.perf_counter()
        function()
        return time.perf_counter() - started
    except Exception as exc:
        case.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
        return None


def interleave(
    cases: list[Case],
    reps: int,
    *,
    warmup: bool = True,
    budget_seconds: float = 60.0,
    log: Callable[[str], None] = print,
) -> None:
    """Run every case ``reps`` times, interleaved, after one warm-up each.

    Parameters
    ----------
    cases : list of Case
        The methods of one cell; results are stored on each case.
    reps : int
        Measured repetitions per case.
    warmup : bool
        Run each case (or its ``warm``) once first, unmeasured.
    budget_seconds : float
        A case stops repeating once its measured calls took this long in
        total (it always gets at least one).
    log : callable
        Progress lines.
    """
    if warmup:
        for case in cases:
            _call(case, case.warm or case.run)
    for round_index in range(reps):
        order = cases if round_index % 2 == 0 else list(reversed(cases))
        for case in order:
            budget = budget_seconds if case.budget is None else case.budget
            if case.error is not None or (case.times and sum(case.times) >= budget):
                continue
            case.counter.reset()
            seconds = _call(case, case.run)
            if seconds is None:
                continue
            requests, nbytes = case.counter.read()
            case.times.append(seconds)
            if requests is not None:
                case.requests.append(requests)
            if nbytes is not None:
                case.nbytes.append(nbytes)
    for case in cases:
        if case.times:
            log(f"    {case.method:<28} {statistics.median(case.times) * case.scale:9.3f} s"
                f"{'  (~ from ' + str(case.measured) + ')' if case.measured else ''}  x{len(case.times)}")
        else:
            log(f"    {case.method:<28} failed: {case.error}")


def rows_for(suite: str, workload: str, cases: list[Case], extra: dict[str, Any] | None = None) -> list[Row]:
    """Turn a measured cell into rows, with ``ratio_vs_objbutler`` against the ``objbutler`` case."""
    rows = []
    for case in cases:
        scale = case.scale
        median_requests = _median(case.requests)
        median_bytes = _median(case.nbytes)
        rows.append(
            Row(
                suite=suite,
                workload=workload,
                method=case.method,
                n=case.n,
                seconds=statistics.median(case.times) * scale if case.times else None,
                requests=None if median_requests is None else round(median_requests * scale, 1),
                bytes=None if median_bytes is None else round(median_bytes * scale),
                min=min(case.times) * scale if case.times else None,
                max=max(case.times) * scale if case.times else None,
                reps=len(case.times),
                kind=case.kind,
                extrapolated_from=case.measured,
                error=case.error if not case.times else None,
                extra=dict(extra or {}),
            )
        )
    reference = next((r.seconds for r in rows if r.kind == "objbutler" and r.seconds), None)
    for row in rows:
        if reference and row.seconds is not None:
            row.ratio_vs_objbutler = round(row.seconds / reference, 3)
    return rows
