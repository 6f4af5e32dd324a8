"""Measure a store's request latency, bandwidth and effective concurrency: the inputs of the read cost model.

The planner's presets (:class:`objbutler.ranges.CostModel`) are guesses until
measured; this measures them on the benchmark's target, through the same
proxy, and the report prints the result next to the preset the planner used.

* latency: the median time of a 100-byte range read;
* bandwidth: one 4 MiB range read, minus the latency;
* concurrency: ``k`` 100-byte ranges in one ``get_ranges`` call (which runs
  them on ``k`` threads) take ``t_k``; ``k * latency / t_k`` requests were in
  effect served at once (1.0 when the server answers one at a time).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from objbutler.ranges import CostModel

__all__ = ["measure_cost_model"]

_SIZE = 4 * 1024 * 1024
_PARALLEL = 4


def _median_seconds(call: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_cost_model(store: Any, key: str, reps: int = 9) -> CostModel:
    """Measure ``store`` with a scratch object at ``key`` (deleted afterwards).

    Parameters
    ----------
    store : Store
        The store, as the planner sees it.
    key : str
        Where to put the 4 MiB scratch object.
    reps : int
        Repetitions per measurement (medians are kept).

    Returns
    -------
    CostModel
        Measured latency and bandwidth; concurrency rounded to a whole number of lanes (at least 1).
    """
    store.put(key, np.random.default_rng(0).bytes(_SIZE))
    try:
        latency = _median_seconds(lambda: store.get_ranges(key, [(0, 100)]), reps)
        whole = _median_seconds(lambda: store.get_ranges(key, [(0, _SIZE)]), reps)
        spread = [(k * _SIZE // _PARALLEL, k * _SIZE // _PARALLEL + 100) for k in range(_PARALLEL)]
        parallel = _median_seconds(lambda: store.get_ranges(key, spread), reps)
    finally:
        store.delete(key)
    bandwidth = _SIZE / max(whole - latency, 1e-6)
    lanes = max(1, round(_PARALLEL * latency / parallel))
    return CostModel(latency=latency, bandwidth=bandwidth, concurrency=lanes)
