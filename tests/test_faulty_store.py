"""FaultyStore and FastClockStore: each fault kind does what it says, on every Store method."""

from __future__ import annotations

import threading

import pytest

from objbutler.errors import AlreadyExistsError, StoreError, TransientStoreError
from objbutler.stores.memory import MemoryStore
from objbutler.testing.faults import FastClockStore, Fault, FaultPlan, FaultyStore


def faulty(*faults: Fault, supersede: bool = True) -> tuple[FaultyStore, MemoryStore]:
    inner = MemoryStore()
    return FaultyStore(inner, FaultPlan(faults), supersede=supersede), inner


def test_before_does_nothing_and_lost_answer_does_the_call() -> None:
    store, inner = faulty(Fault("before", "put", "^a/"), Fault("lost_answer", "put", "^b/"))
    with pytest.raises(TransientStoreError, match="before reaching"):
        store.put("a/1", b"x")
    with pytest.raises(TransientStoreError, match="answer was lost"):
        store.put("b/1", b"x")
    assert [m.key for m in inner.list()] == ["b/1"]
    store.put("a/2", b"x")  # occurrence 1 only
    assert store.counts == {"before": 1, "lost_answer": 1}
    assert store.counts_by_method == {("before", "put"): 1, ("lost_answer", "put"): 1}
    assert [(f.kind, f.key, f.source) for f in store.injected] == [("before", "a/1", "rule 0"),
                                                                    ("lost_answer", "b/1", "rule 1")]


def test_refuse_is_a_final_error_and_does_nothing() -> None:
    store, inner = faulty(Fault("refuse", "put|list", occurrences=None))
    with pytest.raises(StoreError, match="refused") as info:
        store.put("k", b"x")
    assert not isinstance(info.value, TransientStoreError)
    assert list(inner.list()) == []
    with pytest.raises(StoreError, match="refused"):
        list(store.list())
    assert store.counts == {"refuse": 2}


def test_lost_answer_hides_a_refusal() -> None:
    store, inner = faulty(Fault("lost_answer", "put_if_absent", occurrences=None))
    inner.put("k", b"old")
    with pytest.raises(TransientStoreError):
        store.put_if_absent("k", b"new")
    assert inner.get("k") == b"old"


@pytest.mark.parametrize("method", ["get", "get_ranges", "get_many", "head", "delete", "put_if_match"])
def test_every_method_can_fail(method: str) -> None:
    store, inner = faulty(Fault("before", method, "k"))
    meta = inner.put("k", b"abc")
    inner.put("j", b"")
    calls = {
        "get": lambda: store.get("k"),
        "get_ranges": lambda: store.get_ranges("k", [(0, 1)]),
        "get_many": lambda: store.get_many(["j", "k"]),  # a rule matches if any key does
        "head": lambda: store.head("k"),
        "delete": lambda: store.delete("k"),
        "put_if_match": lambda: store.put_if_match("k", b"new", meta.etag or ""),
    }
    with pytest.raises(TransientStoreError):
        calls[method]()
    assert inner.get("k") == b"abc"
    calls[method]()  # the second call goes through


def test_occurrences_count_the_matching_calls() -> None:
    store, _ = faulty(Fault("before", "get", "^x", occurrences=(2, 3)))
    for key in ("x", "y", "x", "x", "x"):
        store.put(key, b"1")
    results = []
    for key in ("x", "y", "x", "x", "x"):
        try:
            store.get(key)
            results.append("ok")
        except TransientStoreError:
            results.append("fail")
    assert results == ["ok", "ok", "fail", "fail", "ok"]


def test_broken_listings_raise_on_iteration() -> None:
    store, _ = faulty(Fault("before", "list", "^p/"), Fault("lost_answer", "list", "^p/", occurrences=2))
    for i in range(4):
        store.put(f"p/{i}", b"")
    listing = store.list("p/")  # the fault is decided now, raised on iteration
    with pytest.raises(TransientStoreError):
        next(listing)
    seen = []
    with pytest.raises(TransientStoreError, match="2 of 4"):
        for meta in store.list("p/"):
            seen.append(meta.key)
    assert seen == ["p/0", "p/1"]
    assert [m.key for m in store.list("p/")] == [f"p/{i}" for i in range(4)]


def test_late_after_calls_is_deterministic() -> None:
    store, _ = faulty(Fault("late", "put_if_absent", after_calls=2))
    with pytest.raises(TransientStoreError, match="applies it later"):
        store.put_if_absent("k", b"v")
    assert store.pending_late == 1
    with pytest.raises(FileNotFoundError):
        store.get("k")  # call +1: not yet
    assert store.get("k") == b"v"  # call +2: applied just before it
    assert store.late_outcomes == {"applied": 1}


def test_late_with_a_delay_lands_from_a_timer_and_flush_waits() -> None:
    store, inner = faulty(Fault("late", "put", delay=0.2))
    with pytest.raises(TransientStoreError):
        store.put("k", b"v")
    assert list(inner.list()) == []
    assert store.flush_late(wait=True, timeout=5) == 1
    assert inner.get("k") == b"v"
    store2, inner2 = faulty(Fault("late", "put", delay=30))
    before = set(threading.enumerate())
    with pytest.raises(TransientStoreError):
        store2.put("k", b"v")
    [timer] = [t for t in set(threading.enumerate()) - before if isinstance(t, threading.Timer)]
    assert not timer.finished.is_set()  # the late put waits for its 30 s timer ...
    assert store2.flush_late() == 1  # ... until flushed: applied now, and the timer cancelled (no waiting for it)
    assert inner2.get("k") == b"v" and timer.finished.is_set()


def test_late_conditional_create_is_checked_when_it_lands() -> None:
    store, inner = faulty(Fault("late", "put_if_absent"), supersede=False)
    with pytest.raises(TransientStoreError):
        store.put_if_absent("k", b"late")
    store.put_if_absent("k", b"retry")  # supersede=False: the late one still lands, and is refused
    store.flush_late()
    assert inner.get("k") == b"retry"
    assert store.late_outcomes == {"failed": 1}
    assert "AlreadyExistsError" in store.late_errors[0]


def test_a_later_write_supersedes_a_late_one() -> None:
    store, inner = faulty(Fault("late", "put"))
    with pytest.raises(TransientStoreError):
        store.put("k", b"late")
    store.delete("k")
    assert store.flush_late() == 0
    assert list(inner.list()) == []
    assert store.late_outcomes == {"superseded": 1}


def test_late_only_delays_writes() -> None:
    with pytest.raises(ValueError, match="write or delete"):
        Fault("late", "get")
    store, _ = faulty(Fault("late", "*", occurrences=None))
    store.inner.put("k", b"v")
    assert store.get("k") == b"v"  # a late rule never matches a read
    with pytest.raises(ValueError):
        Fault("before", delay=1.0)
    with pytest.raises(ValueError):
        Fault("explode")
    with pytest.raises(ValueError):
        Fault("before", "frobnicate")


def test_random_schedule_is_reproducible() -> None:
    def run(seed: int) -> list[tuple[str, str]]:
        store = FaultyStore(MemoryStore(), FaultPlan(seed=seed, rate=0.3))
        for i in range(100):
            try:
                store.put(f"k{i}", b"x")
                store.get(f"k{i}")
            except (StoreError, FileNotFoundError):
                pass
        store.flush_late()
        return [(f.kind, f.key) for f in store.injected]

    assert run(7) == run(7) and run(7) != run(8)
    kinds = {kind for kind, _ in run(7)}
    assert kinds == {"before", "lost_answer", "late", "refuse"}


def test_plan_rules_can_be_added_and_cleared() -> None:
    store, _ = faulty()
    store.put("k", b"v")
    store.plan.add(Fault("before", "get", occurrences=None))
    with pytest.raises(TransientStoreError):
        store.get("k")
    store.plan.clear()
    assert store.get("k") == b"v"


def test_fast_clock_shifts_timestamps_of_later_writes() -> None:
    clock = FastClockStore(MemoryStore())
    before = clock.put("a", b"")
    clock.advance(3600)
    after = clock.put("b", b"")
    assert before.last_modified is not None and after.last_modified is not None
    assert (after.last_modified - before.last_modified).total_seconds() >= 3600
    listed = {m.key: m.last_modified for m in clock.list()}
    assert listed == {"a": before.last_modified, "b": after.last_modified}
    assert clock.head("b").last_modified == after.last_modified
    with pytest.raises(AlreadyExistsError):
        clock.put_if_absent("b", b"")
