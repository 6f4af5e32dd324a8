"""Compaction of a claimed repository's sharded log: short live log, one-listing refresh, nothing lost.

A checkpoint writer records a marker, then deletes what an old enough marker folded. These tests
cross many checkpoint boundaries with several writers (in one process, so that a writer can be held
stale on purpose) and check that every committed dataset stays visible to fresh, warm and stale
readers, that a stale writer never reuses a deleted slot, and what a refresh costs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Backend

from objbutler.butler import Butler
from objbutler.maintenance import fsck
from objbutler.registry import finish_folds
from objbutler.registry.checkpoint import CHECKPOINT_PREFIX, decode_checkpoint
from objbutler.registry.log import LOG_PREFIX, MARKER_PREFIX, ShardedLog, decode_marker, decode_vector
from objbutler.stores import DeleteMany, ObjectMeta, open_store
from objbutler.stores.local import LocalStore
from objbutler.stores.wrapper import StoreWrapper
from objbutler.testing.wrappers import CountingStore

INTERVAL = 6


def _create(tmp_path: Path, shards: int = 8) -> str:
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=INTERVAL, log_shards=shards)
    return uri


def _writer(uri: str, grace: float = 0.0) -> Butler:
    butler = Butler(uri)
    butler.registry.compaction_grace = grace
    return butler


def _live_entries(uri: str) -> list[str]:
    return [m.key for m in LocalStore(uri).list(LOG_PREFIX)
            if ShardedLog.parse(m.key) is not None]


def test_many_checkpoints_keep_the_log_short_and_lose_nothing(tmp_path: Path) -> None:
    uri = _create(tmp_path)
    writers = [_writer(uri) for _ in range(4)]
    warm = Butler(uri)
    assert warm.query() == []
    put = []
    for n in range(120):
        for i, butler in enumerate(writers):  # data types and keys change across checkpoint boundaries
            if n % 3 == 0:
                put.append(butler.put({"n": n}, "metric", {"visit": n, "detector": i}, run="r").id)
            else:
                put.append(butler.put({"n": n}, f"kind{n % 2}", {"exposure": n * 10 + i, "band": "g"}, run="r").id)
        if n % 17 == 0:
            assert {r.id for r in warm.query()} == set(put)  # a warm reader keeps up across compactions
    assert finish_folds(timeout=60)
    markers = [m.key for m in LocalStore(uri).list(MARKER_PREFIX)]
    assert markers, "no checkpoint was ever written"
    assert len(_live_entries(uri)) < 10 * INTERVAL, "compaction did not delete folded commits"
    for reader in (Butler(uri), warm, writers[0]):
        assert {r.id for r in reader.query()} == set(put)
    report = fsck(Butler(uri))
    assert report.ok and report.claims == [] and report.orphans == []


def test_a_stale_writer_never_reuses_a_deleted_slot(tmp_path: Path) -> None:
    uri = _create(tmp_path, shards=1)  # one shard: the stale writer's next slot is certainly deleted
    stale = _writer(uri)
    first = stale.put({"v": 0}, "metric", {"visit": 0}, run="r")
    busy = _writer(uri)
    busy.registry.fold_in_background = False  # its folds delete the stale writer's next slots before it puts
    refs = [first] + [busy.put({"v": n}, "metric", {"visit": n}, run="r") for n in range(1, 60)]
    assert len(_live_entries(uri)) < 60  # slots the stale writer still believes free were deleted
    late = stale.put({"v": "late"}, "metric", {"visit": 1000}, run="r")
    refs.append(late)
    for reader in (Butler(uri), busy):
        assert {r.id for r in reader.query()} == {r.id for r in refs}
    assert fsck(Butler(uri)).ok


def test_a_reader_overtaken_by_compaction_starts_again_from_a_checkpoint(tmp_path: Path) -> None:
    uri = _create(tmp_path)
    reader = Butler(uri)
    writer = _writer(uri)
    refs = [writer.put({"v": 0}, "metric", {"visit": 0}, run="r")]
    assert [r.id for r in reader.query()] == [refs[0].id]
    refs += [writer.put({"v": n}, "metric", {"visit": n}, run="r") for n in range(1, 80)]
    assert {r.id for r in reader.query()} == {r.id for r in refs}


@pytest.mark.parametrize("shards", [1, 64, 256])
def test_a_warm_refresh_is_one_listing_whatever_the_number_of_shards(tmp_path: Path, shards: int) -> None:
    uri = _create(tmp_path, shards=shards)
    writer = _writer(uri)
    for n in range(20):
        writer.put({"v": n}, "metric", {"visit": n}, run="r")
    assert finish_folds(timeout=60)  # a background fold's checkpoint lands before the counting starts
    counting = CountingStore(LocalStore(uri))
    reader = Butler(uri, store=counting)
    assert len(reader.query()) == 20
    counting.reset()
    assert len(reader.query()) == 20
    assert counting.requests_by_method == {"list": 1}  # nothing new: one listing, no GET
    for n in range(20, 23):
        writer.put({"v": n}, "metric", {"visit": n}, run="r")
    assert finish_folds(timeout=60)
    counting.reset()
    assert len(reader.query()) == 23
    assert counting.requests_by_method["list"] == 1
    assert counting.requests - 1 <= 3 + 2  # the three new commits (and at most a marker and a checkpoint)


def test_folding_reads_each_commit_about_once(tmp_path: Path) -> None:
    """Whoever checkpoints reads the commits since the newest checkpoint, not since its own view."""
    uri = _create(tmp_path)
    counting = [CountingStore(LocalStore(uri)) for _ in range(4)]
    writers = [Butler(uri, store=c) for c in counting]
    for butler in writers:
        butler.registry.compaction_grace = 0.0
        butler.registry.fold_in_background = False  # background folds overlap when one is slower than a put
    puts = 0
    for n in range(60):
        for i, butler in enumerate(writers):
            butler.put({"n": n}, "metric", {"visit": n, "detector": i}, run="r")
            puts += 1
    reads = sum(c.requests_by_method["get"] + c.requests_by_method["get_many"] for c in counting)
    # Each commit is read about once by whoever folds it, plus each writer reads the markers written
    # since its last check (writers / interval per commit: 4 / 6 here, 0.16 at 16 writers and 100).
    assert reads <= (1 + len(writers) / INTERVAL + 0.35) * puts, f"{reads} GETs for {puts} puts"


def test_compaction_on_localstack_deletes_in_batches(localstack_backend: Backend) -> None:
    """The S3 store deletes folded commits with DeleteObjects; readers and fsck see every dataset."""
    uri = localstack_backend.new_uri()
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=INTERVAL, log_shards=8,
                  **localstack_backend.options)
    writers = []
    for _ in range(3):
        butler = Butler(uri, **localstack_backend.options)
        butler.registry.compaction_grace = 0.0
        writers.append(butler)
    put = [w.put({"n": n}, "metric", {"visit": n, "detector": i}, run="r").id
           for n in range(25) for i, w in enumerate(writers)]
    store = open_store(uri, **localstack_backend.options)
    assert isinstance(store, DeleteMany)
    live = [m.key for m in store.list(LOG_PREFIX) if ShardedLog.parse(m.key) is not None]
    assert len(live) < len(put) // 2  # folds happened along the way (when depends on the writers' random phases)
    # A fold now, one more commit, a fold again: the second deletes everything the first folded.
    writers[0].registry.write_checkpoint()
    put.append(writers[0].put({"n": -1}, "metric", {"visit": -1, "detector": 0}, run="r").id)
    writers[0].registry.write_checkpoint()
    live = [m.key for m in store.list(LOG_PREFIX) if ShardedLog.parse(m.key) is not None]
    assert len(live) <= 1, live  # at most the last commit (folded by the second fold, deleted by the next)
    assert {r.id for r in Butler(uri, **localstack_backend.options).query()} == set(put)
    assert fsck(Butler(uri, **localstack_backend.options)).ok


def _fold_markers(uri: str) -> list[str]:
    """The markers folds wrote (not the empty checkpoint's, written at create)."""
    return [m.key for m in LocalStore(uri).list(MARKER_PREFIX) if m.key != ShardedLog.marker_key(0)]


def test_one_writer_folds_at_a_time_and_a_dead_writers_lease_expires(tmp_path: Path) -> None:
    import os
    import time

    uri = _create(tmp_path)
    writer = _writer(uri)
    writer.registry._commits_since_check = -10**9  # no check while the log fills
    for n in range(10):
        writer.put({"v": n}, "metric", {"visit": n}, run="r")
    lease = tmp_path / "repo" / ShardedLog.lease_key(0, 1)
    lease.parent.mkdir(parents=True)
    lease.write_text("{}")  # another writer is folding
    writer.registry._commits_since_check = INTERVAL - 1
    writer.put({"v": 10}, "metric", {"visit": 10}, run="r")
    assert finish_folds(timeout=60)
    assert _fold_markers(uri) == []
    old = time.time() - 600
    os.utime(lease, (old, old))  # ... and died ten minutes ago
    writer.registry._commits_since_check = INTERVAL - 1
    writer.put({"v": 11}, "metric", {"visit": 11}, run="r")
    assert finish_folds(timeout=60)
    assert _fold_markers(uri) == [ShardedLog.marker_key(12)]
    assert lease.exists() and not (tmp_path / "repo" / ShardedLog.lease_key(0, 2)).exists()  # released when done
    assert len(Butler(uri).query()) == 12


def test_a_fresh_lease_lapses_once_four_intervals_of_commits_wait_behind_it(tmp_path: Path) -> None:
    """A writer killed while folding leaves a fresh lease: the others fold again after FOLD_LEASE_BACKLOG
    intervals of commits, not after FOLD_LEASE_SECONDS (a minute of no compaction at all)."""
    from objbutler.registry.registry import FOLD_LEASE_BACKLOG

    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=INTERVAL, log_shards=8)
    writer = _writer(uri)
    writer.registry.fold_in_background = False
    lease = tmp_path / "repo" / ShardedLog.lease_key(0, 1)
    lease.parent.mkdir(parents=True)
    lease.write_text("{}")  # a folder of the empty checkpoint's commits was killed a moment ago
    backlog = FOLD_LEASE_BACKLOG * INTERVAL
    for n in range(backlog - 1):
        writer.put({"v": n}, "metric", {"visit": n}, run="r")
    assert _fold_markers(uri) == [], "a fresh lease with less backlog than that holds"
    writer.registry._commits_since_check = INTERVAL - 1
    writer.put({"v": -1}, "metric", {"visit": -1}, run="r")
    assert _fold_markers(uri) == [ShardedLog.marker_key(backlog)]
    assert lease.exists() and not (tmp_path / "repo" / ShardedLog.lease_key(0, 2)).exists()  # released when done
    assert len(Butler(uri).query()) == backlog


def test_a_commit_that_lands_in_a_slot_compaction_already_deleted_is_written_again(tmp_path: Path) -> None:
    """The slow-write rule: a slot write that ended long after the markers were read is checked, and
    if compaction may have deleted the slot before the write landed, the commit goes to a fresh slot."""
    import dataclasses
    import math

    from objbutler.registry.checkpoint import CHECKPOINT_PREFIX, encode_checkpoint
    from objbutler.registry.log import encode_marker, encode_vector

    uri = _create(tmp_path, shards=1)
    store = LocalStore(uri)
    other = Butler(uri)
    earlier = [other.put({"v": n}, "metric", {"visit": n}, run="r") for n in range(3)]
    before = other.registry.refresh().to_checkpoint()  # what a compaction that missed the slow commit folded
    slow = _writer(uri, grace=30.0)
    slow.registry.refresh()
    place = slow.registry.writer.place

    def place_then_lose_the_slot(*args: object, **kwargs: object) -> tuple[int, int]:
        slow.registry.writer.place = place  # type: ignore[method-assign]  # once
        shard, sequence = place(*args, **kwargs)  # type: ignore[arg-type]
        # Meanwhile (the write was slow): a checkpoint covering this slot without this commit, its marker
        # announcing the deletion, and the deletion, all before the write landed: the slot is gone.
        vector = [sequence]
        total = sum(vector)
        store.put(f"{CHECKPOINT_PREFIX}{total:020d}.parquet",
                  encode_checkpoint(dataclasses.replace(before, position=encode_vector(vector))))
        store.put(ShardedLog.marker_key(total), encode_marker(encode_vector(vector), encode_vector(vector)))
        store.delete(ShardedLog.key(shard, sequence))
        slow.registry._markers_at = -math.inf  # the markers were read long before the write ended
        return shard, sequence

    slow.registry.writer.place = place_then_lose_the_slot  # type: ignore[method-assign]
    late = slow.put({"v": "late"}, "metric", {"visit": 99}, run="r")
    for reader in (Butler(uri), other):
        assert {r.id for r in reader.query()} == {r.id for r in [*earlier, late]}
    assert fsck(Butler(uri)).ok


class _LaggingStore(StoreWrapper):
    """A listing that misses some keys (a gateway whose listing lags its writes); a hook before marker writes."""

    def __init__(self, inner: LocalStore, hidden: set[str], before_marker: Callable[[], object] | None = None) -> None:
        super().__init__(inner)
        self.hidden = hidden
        self.before_marker = before_marker

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        return (meta for meta in super().list(prefix, start_after) if meta.key not in self.hidden)

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        if key.startswith(MARKER_PREFIX) and self.before_marker is not None:
            hook, self.before_marker = self.before_marker, None
            hook()
        return super().put_if_absent(key, data)


def test_two_folds_reaching_the_same_total_with_other_commits_announce_only_their_own(tmp_path: Path) -> None:
    """A total of commits is not a position: the fold that lost the checkpoint's name writes no marker.

    Fold A sees slots 0/1, 0/2 and fold B sees 0/1, 1/1 (each listing misses one key): both reach total 2.
    A writes checkpoint 2; B, running between A's checkpoint and A's marker, finds checkpoint 2 taken. Had
    B announced its vector in marker 2, a later compaction would delete 1/1 although checkpoint 2 lacks it.
    """
    uri = _create(tmp_path, shards=2)
    writer = _writer(uri)
    assert writer.registry.writer is not None
    refs = []
    writer.registry.checkpoint_interval = 1000  # no fold of its own among these three
    for shard, visit in ((0, 1), (0, 2), (1, 3)):
        writer.registry.writer.shard = shard
        refs.append(writer.put({"v": visit}, "metric", {"visit": visit}, run="r"))
    assert sorted(_live_entries(uri)) == [ShardedLog.key(0, 1), ShardedLog.key(0, 2), ShardedLog.key(1, 1)]
    fold_b = Butler(uri, store=_LaggingStore(LocalStore(uri), {ShardedLog.key(0, 2)}))
    fold_a = Butler(uri, store=_LaggingStore(LocalStore(uri), {ShardedLog.key(1, 1)},
                                             before_marker=fold_b.registry.write_checkpoint))
    assert len(fold_b.query()) == 2  # B's view: 0/1 and 1/1, from before A's checkpoint exists
    fold_a.registry.write_checkpoint()
    store = LocalStore(uri)
    for marker in ShardedLog(store, 2).list_markers():
        position = decode_marker(store.get(marker.key), 2, marker.key).position
        key = f"{CHECKPOINT_PREFIX}{marker.total:020d}.parquet"
        held = decode_checkpoint(store.get(key), key).position
        assert held is not None and decode_vector(held, 2) == position, f"marker {marker.total} is not its checkpoint's"
    writer.registry.checkpoint_interval = INTERVAL
    writer.registry.fold_in_background = False  # A and B never list 1/1 and 0/2: later folds must land
    for n in range(4, 40):  # later folds delete through the markers; every reader keeps every dataset
        refs.append(writer.put({"v": n}, "metric", {"visit": n}, run="r"))
    for reader in (Butler(uri), fold_a, fold_b, writer):
        assert {r.id for r in reader.query()} == {r.id for r in refs}
    assert fsck(Butler(uri)).ok
