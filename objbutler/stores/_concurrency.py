"""Bounded concurrent execution of blocking store calls, shared by the backends."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["DEFAULT_MAX_CONCURRENCY", "run_concurrently"]

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_CONCURRENCY = 16


def run_concurrently(function: Callable[[T], R], items: Sequence[T], max_workers: int) -> list[R]:
    """Apply ``function`` to every item on at most ``max_workers`` threads, results in order.

    The pool lives only for this call, so nothing stays open between calls.
    One item runs inline without a pool.

    Parameters
    ----------
    function : callable
        A blocking function of one item.
    items : sequence
        The inputs.
    max_workers : int
        Upper bound on concurrent calls.

    Returns
    -------
    list
        ``[function(item) for item in items]``, computed concurrently. The first
        exception raised by any call propagates.
    """
    if len(items) <= 1 or max_workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        return list(pool.map(function, items))
