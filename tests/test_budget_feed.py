"""``ConcurrencyBudget.feed`` and the ``Batch`` uploads that use it: caller-runs, within the store's budget.

A feed takes items one at a time. It may offer them to the budget's idle workers, but it never
waits for a worker: when the workers are all taken (by other calls, or because the feed runs on
one of them), the submitting thread runs the backlog itself. Checked by occupying every worker
of a small budget and counting which threads ran the items.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from budget_helpers import WAIT, InFlightStore, every_worker_busy
from conftest import Backend

from objbutler import Butler
from objbutler.registry.records import DatasetRef
from objbutler.stores import ConcurrencyBudget, open_store


def _counting(most: dict[str, int], lock: threading.Lock, ran_on: set[str]) -> Any:
    def run(item: int) -> int:
        with lock:
            most["now"] += 1
            most["peak"] = max(most["peak"], most["now"])
            ran_on.add(threading.current_thread().name)
        try:
            threading.Event().wait(0.005)  # hold the item a moment so that overlaps show
            return item * item
        finally:
            with lock:
                most["now"] -= 1
    return run


def test_feed_runs_at_most_max_workers_at_once_on_the_budget_and_the_caller() -> None:
    budget = ConcurrencyBudget(4, "feed-test")
    most, lock, ran_on = {"now": 0, "peak": 0}, threading.Lock(), set[str]()
    feed = budget.feed(_counting(most, lock, ran_on), max_workers=3)
    futures = [feed.submit(i) for i in range(30)]
    feed.close()
    assert [f.result() for f in futures] == [i * i for i in range(30)]
    assert 1 < most["peak"] <= 3
    assert ran_on <= {threading.current_thread().name} | {t.name for t in threading.enumerate()
                                                           if t.name.startswith("feed-test")}


def test_feed_on_a_busy_budget_runs_everything_on_the_submitting_thread() -> None:
    budget = ConcurrencyBudget(2, "feed-busy")
    most, lock, ran_on = {"now": 0, "peak": 0}, threading.Lock(), set[str]()
    with every_worker_busy(budget):
        feed = budget.feed(_counting(most, lock, ran_on))
        futures = [feed.submit(i) for i in range(5)]
        assert sum(f.done() for f in futures) == 4  # a backlog of width (2) is worked off at submit, not kept
        feed.close()
        assert [f.result() for f in futures] == [i * i for i in range(5)]
    assert ran_on == {threading.current_thread().name}


def test_feed_close_with_cancel_drops_the_queued_items() -> None:
    budget = ConcurrencyBudget(3, "feed-cancel")
    most, lock, ran_on = {"now": 0, "peak": 0}, threading.Lock(), set[str]()
    with every_worker_busy(budget):
        feed = budget.feed(_counting(most, lock, ran_on))
        futures = [feed.submit(i) for i in range(2)]  # fewer than 3 waiting: queued, not run here
        feed.close(cancel=True)
    assert all(f.cancelled() for f in futures)
    assert ran_on == set()


def _recording_butler(local_backend: Backend, budget: ConcurrencyBudget) -> tuple[Butler, InFlightStore]:
    uri = local_backend.new_uri()
    Butler.create(uri)
    store = InFlightStore(open_store(uri), budget)
    return Butler(uri, store=store), store  # type: ignore[arg-type]


def test_batch_uploads_run_on_the_stores_budget_not_a_pool_of_their_own(local_backend: Backend) -> None:
    budget = ConcurrencyBudget(3, "batch-budget")
    butler, store = _recording_butler(local_backend, budget)
    with butler.batch(run="r", errors="return") as batch:
        futures = [batch.put({"i": i}, "metric", {"visit": i}) for i in range(20)]
    assert all(isinstance(f.result(), DatasetRef) for f in futures)
    caller = threading.current_thread().name
    assert store.threads and all(name == caller or name.startswith("batch-budget") for name in store.threads)
    assert 1 < store.most <= 3


def test_batch_on_a_busy_budget_uploads_on_the_callers_thread(local_backend: Backend) -> None:
    budget = ConcurrencyBudget(2, "batch-busy")
    butler, store = _recording_butler(local_backend, budget)
    outcome: dict[str, Any] = {}

    def run_batch() -> None:
        with butler.batch(run="r", errors="return") as batch:
            for i in range(6):
                batch.put({"i": i}, "metric", {"visit": i})
        outcome["results"] = batch.results

    with every_worker_busy(budget):
        thread = threading.Thread(target=run_batch, name="batch-caller")
        thread.start()
        thread.join(WAIT)
        assert not thread.is_alive(), "the batch waited for a budget worker"
    assert all(isinstance(r, DatasetRef) for r in outcome["results"])
    assert store.threads == {"batch-caller"}


def test_feed_lets_keyboard_interrupt_stop_the_submitting_thread() -> None:
    def interrupted(item: int) -> int:
        raise KeyboardInterrupt

    feed = ConcurrencyBudget(2, "feed-interrupt").feed(interrupted, max_workers=1)  # width 1: runs at submit
    with pytest.raises(KeyboardInterrupt):
        feed.submit(0)
    feed.close()
