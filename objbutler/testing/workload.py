"""Multi-process put workloads for race tests and registry benchmarks.

Each worker opens its own :class:`~objbutler.Butler` from a URI and store
options (nothing is shared with the parent but those), so the workers are
real, independent writers, as batch jobs are.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["WorkerResult", "run_writers"]

WorkerResult = dict[str, Any]


def _writer(uri: str, options: dict[str, Any], run: str, visits: Sequence[int], detector: int,
            barrier: Any, results: Any, index: int, count_requests: bool = False) -> None:
    from objbutler.butler import Butler
    from objbutler.stores import open_store
    from objbutler.testing.wrappers import CountingStore

    counting = CountingStore(open_store(uri, **options)) if count_requests else None
    butler = Butler(uri, store=counting) if counting is not None else Butler(uri, **options)
    butler.registry.refresh()
    committed, conflicts, errors = [], 0, []
    barrier.wait()
    if counting is not None:
        counting.reset()  # count the puts, not the opening
    start = time.perf_counter()
    for visit in visits:
        try:
            ref = butler.put({"writer": index, "visit": visit}, "metric", {"visit": visit, "detector": detector},
                             run=run)
            committed.append(ref.id)
        except Exception as exc:
            from objbutler.errors import ConflictError

            if isinstance(exc, ConflictError):
                conflicts += 1
            else:
                errors.append(f"{type(exc).__name__}: {exc}")
    results.put({"index": index, "committed": committed, "conflicts": conflicts, "errors": errors,
                 "seconds": time.perf_counter() - start,
                 **({"requests": counting.requests, "requests_by_method": dict(counting.requests_by_method)}
                    if counting is not None else {})})


def run_writers(
    uri: str,
    options: dict[str, Any],
    run: str,
    visits_per_writer: Sequence[Sequence[int]],
    detector: int = 0,
    timeout: float = 600.0,
    count_requests: bool = False,
) -> list[WorkerResult]:
    """Start one process per visit list, release them together, and collect what each committed.

    Every writer puts small ``metric`` datasets with data ID
    ``{"visit": v, "detector": detector}``. Give writers disjoint visits to
    measure throughput and check nothing is lost; give them the same visit to
    race for one data ID.

    Parameters
    ----------
    uri : str
        Repository URI (must already exist).
    options : dict
        Store options, passed to ``Butler(uri, **options)`` in each process.
    run : str
        Run name.
    visits_per_writer : sequence of sequences of int
        One list of visits per writer process.
    detector : int
        Fixed detector value of the data IDs.
    timeout : float
        Seconds to wait for all writers.
    count_requests : bool
        Count each writer's store requests during its puts
        (:class:`~objbutler.testing.wrappers.CountingStore`).

    Returns
    -------
    list of dict
        Per writer, in writer order: ``committed`` (dataset ids), ``conflicts``
        (ConflictErrors), ``errors`` (other errors, as text), ``seconds``, and
        with ``count_requests`` ``requests`` and ``requests_by_method``.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(visits_per_writer))
    results = context.Queue()
    processes = [
        context.Process(target=_writer,
                        args=(uri, options, run, list(visits), detector, barrier, results, index, count_requests))
        for index, visits in enumerate(visits_per_writer)
    ]
    for process in processes:
        process.start()
    collected = [results.get(timeout=timeout) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    return sorted(collected, key=lambda result: result["index"])
