"""Concurrent compactions of a claimed log must delete along one chain, or a reader loses commits.

A reader that compaction has overtaken restarts from a checkpoint that covers everything deleted: the
greatest vector that markers announce deleting through. Two folds that compact at about the same time
can each delete through a different older marker. When those two markers' vectors are not ordered shard
by shard (each fold's listing met the shards at a different moment), the union of what they deleted is
covered by no checkpoint, the reader restarts from one that lacks commits, and puts that returned vanish
from its view (once in the fold fuzz's first 1,400 seed runs: seed 189, 2026-11-30).

:class:`StaleListing` replays the listings of slow, concurrent folds: some key ranges are answered as
they were at an earlier moment (a listing that reached those shards earlier, or a store whose listings
lag). A seeded fuzz (``STALE_SEEDS`` seeds; ``OBJBUTLER_STALE_LISTING_SEEDS=300`` is the full setting)
lets folds list every shard and the markers as at any of the last few steps. The rule under test
(docs/registry.md, "Checkpoints and compaction"): a deletion is decided by creating the next numbered
compaction record, and each deletes through at least what the one before did, so what markers announce
is one chain and the marker announcing the most covers it all.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_helpers import assert_deletions_are_one_chain

from objbutler.butler import Butler
from objbutler.errors import ObjButlerError
from objbutler.maintenance import fsck
from objbutler.registry.log import LOG_PREFIX, ShardedLog
from objbutler.stores import ObjectMeta, Store, StoreWrapper, open_store
from objbutler.stores.local import LocalStore

STALE_SEEDS = int(os.environ.get("OBJBUTLER_STALE_LISTING_SEEDS", "24"))
STALE_STEPS = 60
WINDOW = 12


class StaleListing(StoreWrapper):
    """Answer listings of the frozen key ranges as they were when frozen; everything else is live."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.frozen: dict[str, list[ObjectMeta]] = {}

    def freeze(self, prefix: str, entries: list[ObjectMeta]) -> None:
        """From now on, list ``prefix`` as ``entries`` (an earlier listing of it)."""
        self.frozen[prefix] = entries

    def thaw(self) -> None:
        """List everything live again."""
        self.frozen.clear()

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """The live listing outside the frozen ranges, the frozen entries inside them."""
        live = [meta for meta in self.inner.list(prefix, start_after)
                if not any(meta.key.startswith(frozen) for frozen in self.frozen)]
        old = [meta for frozen, entries in self.frozen.items() for meta in entries
               if meta.key.startswith(prefix) and (start_after is None or meta.key > start_after)]
        return iter(sorted(live + old, key=lambda meta: meta.key))


class StalledAfterListing(StaleListing):
    """A fold that stalled right after its listing of the log: that listing is the frozen one, later ones
    are live."""

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """The frozen ranges in a listing of the whole log; then everything live from that one on."""
        answer = super().list(prefix, start_after)
        if prefix == LOG_PREFIX:
            self.thaw()
        return answer


def _stock_tools_count(uri: str) -> int:
    """What the DuckDB recipe of docs/registry.md counts in the claimed repository ``uri``."""
    duckdb = pytest.importorskip("duckdb")
    page = (Path(__file__).parents[1] / "docs" / "registry.md").read_text()
    recipe = next(block for block in re.findall(r"```sql\n(.*?)```", page, re.DOTALL) if "[0-9][0-9][0-9]" in block)
    return sum(count for _, count in duckdb.sql(recipe.replace("claimed-example", uri)).fetchall())


@pytest.mark.parametrize("backend", ["local", "localstack"])
def test_concurrent_compactions_through_unordered_markers_lose_nothing(tmp_path: Path, backend: str,
                                                                       request: pytest.FixtureRequest) -> None:
    if backend == "local":
        uri, options = str(tmp_path / "repo"), {}
    else:
        server = request.getfixturevalue("localstack_backend")
        uri, options = server.new_uri(), server.options
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=1000, log_shards=2, **options)
    plain = open_store(uri, **options)
    writer = Butler(uri, **options)
    returned: set[str] = set()

    def put(shard: int, n: int) -> None:
        assert writer.registry.writer is not None
        writer.registry.writer.shard = shard
        returned.add(writer.put({"n": n}, "metric", {"visit": n, "detector": shard}, run="r").id)

    def folder(store: Store) -> Butler:
        butler = Butler(uri, store=store)
        butler.registry.compaction_grace = 0.0
        butler.registry.refresh()
        return butler

    def listing(prefix: str) -> list[ObjectMeta]:
        return list(plain.list(prefix))

    shard0, shard1, tilde = ShardedLog.prefix(0), ShardedLog.prefix(1), f"{LOG_PREFIX}~"
    stale_n, stale_h = StaleListing(open_store(uri, **options)), StaleListing(open_store(uri, **options))
    n_fold, h_fold = folder(stale_n), folder(stale_h)  # two slow folds whose views started at nothing
    put(0, 1)
    put(0, 2)
    shard0_at_2 = listing(shard0)
    put(0, 3)
    put(0, 4)
    shard0_at_4 = listing(shard0)
    put(0, 5)
    put(1, 1)
    put(1, 2)
    shard1_at_2 = listing(shard1)
    folder(plain).registry.write_checkpoint()  # marker M: (5, 2)
    markers_at_m = listing(tilde)
    stale_g = StaleListing(open_store(uri, **options))
    g_fold = folder(stale_g)  # a third fold's view, from M's checkpoint
    put(1, 3)
    put(1, 4)
    put(0, 6)
    put(0, 7)
    # N met shard 0 early and no marker yet: (2, 4), no deletion (nothing older to delete through).
    stale_n.freeze(shard0, shard0_at_2)
    stale_n.freeze(tilde, [])
    n_fold.registry.write_checkpoint()
    # H met shard 0 before its slot 5: (4, 4); it can delete through N's (2, 4), not through M's (5, 2).
    stale_h.freeze(shard0, shard0_at_4)
    h_fold.registry.write_checkpoint()
    # G met shard 1 and the markers before N and H wrote anything: (7, 2); it can delete through M.
    stale_g.freeze(shard1, shard1_at_2)
    stale_g.freeze(tilde, markers_at_m)
    g_fold.registry.write_checkpoint()

    assert_deletions_are_one_chain(plain, 2)
    fresh = Butler(uri, **options)
    assert {ref.id for ref in fresh.query()} == returned, "a fresh reader lost commits compaction deleted"
    assert {ref.id for ref in writer.query()} == returned
    if backend == "local":  # the recipe reads files; on S3, DuckDB would need its httpfs extension
        assert _stock_tools_count(uri) == len(returned)  # the newest checkpoint, G's, lacks what H deleted
    folder(plain).registry.write_checkpoint()  # a later fold in a calm moment keeps the chain
    assert_deletions_are_one_chain(plain, 2)
    assert {ref.id for ref in Butler(uri, **options).query()} == returned
    if backend == "local":
        assert _stock_tools_count(uri) == len(returned)


def test_a_reader_restarts_at_a_gap_a_checkpoint_holds_though_no_marker_announced_it(tmp_path: Path) -> None:
    """A deletion whose announcement a reader never reads (its marker removed by a delete that landed late,
    or a writer of an older version) must not hide the rest of the shard from it: a slot is taken only
    right after one known taken, so a missing slot that a checkpoint holds was deleted."""
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=1000, log_shards=1)
    writer, reader = Butler(uri), Butler(uri)
    put = [writer.put({"n": n}, "metric", {"visit": n}, run="r").id for n in range(2)]
    assert {ref.id for ref in reader.query()} == set(put)  # the reader's view: slots 1 and 2
    put += [writer.put({"n": n}, "metric", {"visit": n}, run="r").id for n in range(2, 5)]
    writer.registry.write_checkpoint()  # holds slots 1 to 5 and deletes nothing (within the grace)
    put.append(writer.put({"n": 5}, "metric", {"visit": 5}, run="r").id)
    LocalStore(uri).delete(ShardedLog.key(0, 3))  # deleted, and no marker says so
    assert {ref.id for ref in reader.query()} == set(put)
    assert {ref.id for ref in Butler(uri).query()} == set(put)


def test_a_fold_whose_view_is_compactions_old_never_decides_under_a_reused_record_number(tmp_path: Path) -> None:
    """A compaction record's number is decided once. Compaction deletes the records below the newest, so
    a fold that listed the log, then stalled while later folds created and deleted the next records, finds
    the number after its newest free again: creating it would decide a deletion out of the chain's order.
    Such a fold must delete nothing (its marker announces no deletion)."""
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=1000, log_shards=2)
    plain, writer = LocalStore(uri), Butler(uri)
    writer.registry.writer.shard = 1  # type: ignore[union-attr]

    def fold(store: Store) -> Butler:
        butler = Butler(uri, store=store)
        butler.registry.compaction_grace = 0.0
        butler.registry.write_checkpoint()
        return butler

    ids = []
    for n in range(2):  # two folds: compaction records 1 and 2
        ids.append(writer.put({"n": n}, "metric", {"visit": n}, run="r").id)
        fold(plain)
    ids.append(writer.put({"n": 2}, "metric", {"visit": 2}, run="r").id)
    stale = StalledAfterListing(LocalStore(uri))
    slow = Butler(uri, store=stale)
    slow.registry.compaction_grace = 0.0
    slow.registry.refresh()  # its view: slot 3 of shard 1; the newest record it knows of: 2
    stale.freeze(LOG_PREFIX, list(plain.list(LOG_PREFIX)))  # the listing it makes next, then it stalls
    for n in range(3, 7):  # meanwhile, folds decide records 3 to 6 and delete all but the newest two
        ids.append(writer.put({"n": n}, "metric", {"visit": n}, run="r").id)
        fold(plain)
    assert [m.key for m in plain.list(f"{LOG_PREFIX}~compaction/")] == [ShardedLog.compaction_key(n) for n in (5, 6)]
    slow.registry.write_checkpoint()  # it folds 3 commits and lists record 2 as the newest: 3 is free again
    assert json.loads(plain.get(ShardedLog.marker_key(3)))["deletes"] is None, \
        "a fold decided a deletion under a reused record number"
    assert_deletions_are_one_chain(plain, 2)
    assert {ref.id for ref in Butler(uri).query()} == set(ids)


@pytest.mark.parametrize("chunk", range(2))
def test_folds_whose_listings_lag_at_random_lose_nothing(tmp_path: Path, chunk: int) -> None:
    """Folds (no grace) list each shard and the markers as they were at a random earlier step; a writer
    puts into random shards; lagging readers refresh now and then. After every step, what markers
    announce is one chain, and every reader that refreshed holds every put that returned before."""
    for seed in range(chunk, STALE_SEEDS, 2):
        _stale_listing_run(seed, tmp_path / f"seed{seed}")


def _stale_listing_run(seed: int, root: Path) -> None:
    rng = random.Random(seed)
    uri = str(root / "repo")
    shards = rng.choice([2, 3, 4])
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=10**6, log_shards=shards)
    plain = LocalStore(uri)
    prefixes = [ShardedLog.prefix(shard) for shard in range(shards)] + [f"{LOG_PREFIX}~"]
    history: list[dict[str, list[ObjectMeta]]] = []
    writer = Butler(uri)
    stale = [StaleListing(LocalStore(uri)) for _ in range(3)]
    folders = []
    for store in stale:
        folder = Butler(uri, store=store)
        folder.registry.compaction_grace = 0.0
        folder.registry.fold_in_background = False
        folders.append(folder)
    readers = [Butler(uri) for _ in range(2)]
    returned: set[str] = set()
    for step in range(STALE_STEPS):
        history.append({prefix: list(plain.list(prefix)) for prefix in prefixes})
        action = rng.random()
        if action < 0.55:
            assert writer.registry.writer is not None
            writer.registry.writer.shard = rng.randrange(shards)
            returned.add(writer.put({"step": step}, f"kind{step % 2}", {"visit": step}, run="r").id)
        elif action < 0.9:
            index = rng.randrange(len(folders))
            stale[index].thaw()
            for prefix in prefixes:  # each part of the listing as at some step since the fold's previous one
                if rng.random() < 0.6:
                    stale[index].freeze(prefix, rng.choice(history[-WINDOW:])[prefix])
            with contextlib.suppress(ObjButlerError):  # a listed commit is gone when read: this fold gives up
                folders[index].registry.write_checkpoint()
        else:
            reader = rng.choice(readers)
            before = set(returned)
            missing = before - {ref.id for ref in reader.query()}
            assert not missing, f"seed {seed} step {step}: a lagging reader lost {len(missing)} puts"
        assert_deletions_are_one_chain(plain, shards)
        missing = returned - {ref.id for ref in Butler(uri).query()}
        assert not missing, f"seed {seed} step {step}: a fresh reader lost {len(missing)} puts"
    for store in stale:
        store.thaw()  # the folders' listings are live again: they must catch up like any reader
    calm = Butler(uri)
    calm.registry.compaction_grace = 0.0
    calm.registry.write_checkpoint()
    for reader in (Butler(uri), *readers, writer, *folders):
        assert {ref.id for ref in reader.query()} == returned, f"seed {seed}: a reader lost puts at the end"
    assert fsck(Butler(uri)).ok
