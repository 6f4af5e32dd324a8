"""Randomized: several claimed writers fold at once while a seeded random schedule breaks their requests.

The hand-picked fold tests (tests/test_compaction_adversary.py) break one kind of request of one writer.
Two bugs lived between them: a dead folder's lease stopped compaction for a minute, and once folds
could overlap, retention counted checkpoints of folds that failed before their marker and deleted the
newest marker's checkpoint, after which a reader missed commits compaction had deleted (that one needs
two failed folds in a row and a reader refreshing in between: 40 seeds of this file did not hit it;
test_folds_that_fail_after_their_checkpoint_never_prune_the_newest_markers_checkpoint does). Here every
writer has its own random faults (before, lost answers, late writes, refusals) on every request of its
puts and folds, folds run in the background and inline, overlap, and are forced at random; readers
that refresh every 1, 2 or 3 rounds and one that never refreshed check after every round:

* every put that returned is in every reader's view from the next refresh on;
* what the markers announce deleting through is one chain (else no checkpoint may cover it: the one
  miss of the first 1,400 seed runs, reproduced by tests/test_compaction_chain.py);
* a put that failed (not CommitOutcomeUnknownError) is never in any view;
* at the end (late writes landed, folds finished) fsck is clean after vacuum.

CI runs ``SEEDS`` seeds of ``ROUNDS`` rounds; ``OBJBUTLER_FOLD_FUZZ_SEEDS=200 python3 -m pytest -q
tests/test_fold_fuzz.py`` is the full setting (docs/reference/testing.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from registry_helpers import assert_deletions_are_one_chain, committed

from objbutler.butler import Butler
from objbutler.errors import CommitOutcomeUnknownError, ObjButlerError
from objbutler.maintenance import fsck, vacuum
from objbutler.registry import finish_folds
from objbutler.registry.checkpoint import CHECKPOINT_PREFIX
from objbutler.registry.log import LOG_PREFIX, MARKER_PREFIX, ShardedLog
from objbutler.stores.local import LocalStore
from objbutler.testing.faults import FaultPlan, FaultyStore

SEEDS = int(os.environ.get("OBJBUTLER_FOLD_FUZZ_SEEDS", "12"))
ROUNDS = 24
INTERVAL = 3
FAULT_KEYS = (
    r"^manifest/(log/~|checkpoints/)",  # a fold's own writes: markers, leases, checkpoints
    r"^manifest/(log|checkpoints)/",  # everything a fold touches, commits included
    "",  # every request
)


def _spec(n: int, i: int) -> tuple[str, dict[str, Any], str]:
    """Several dataset types, data ID keys first used late, two runs."""
    if n % 3 == 0:
        return "metric", {"visit": n, "detector": i}, "r"
    if n % 3 == 1 or n < ROUNDS // 2:
        return "kind1", {"exposure": n * 10 + i, "band": "g"}, "r"
    return "kind2", {"tract": n, "patch": i}, "r2"


def _ids(butler: Butler) -> set[str]:
    return {ref.id for ref in butler.query()}


def _explain(uri: str, reader: Butler, missing: set[str]) -> str:
    """Where the missing datasets' commits are, and what the reader believed (a rare failure names its cause)."""
    registry = reader.registry
    store = LocalStore(uri)
    where = []
    for meta in store.list(LOG_PREFIX):  # every commit, folded or not, and the markers
        with contextlib.suppress(Exception):
            body = store.get(meta.key).decode()
            where += [f"{meta.key} ({meta.last_modified})" for dataset_id in missing if dataset_id in body]
    markers = []
    for meta in store.list(MARKER_PREFIX):
        with contextlib.suppress(Exception):
            markers.append(f"{meta.key.rsplit('/', 1)[1]}={json.loads(store.get(meta.key))}")
    slots = ShardedLog(store, registry.shards.shards).list_live().slots if registry.shards is not None else {}
    checkpoints = [meta.key.rsplit("/", 1)[1] for meta in store.list(CHECKPOINT_PREFIX)]
    listed = registry._live
    last = "none" if listed is None else f"slots {listed.slots}, markers {[m.total for m in listed.markers]}"
    return (f"\n  in: {where or 'no live commit (compacted?)'}\n  reader vector {registry._vector}, deleted "
            f"{registry._deleted}, markers read {registry._marker_positions}, ignored {registry._ignored_markers}"
            f"\n  the reader's last listing: {last}"
            f"\n  now: slots {slots}\n  markers {markers}\n  checkpoints {checkpoints}")


def _run(seed: int, root: Path) -> None:
    rng = random.Random(seed)
    uri = str(root / "repo")
    shards = rng.choice([1, 2, 4])
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=INTERVAL, log_shards=shards)
    stores: list[FaultyStore] = []
    writers: list[Butler] = []
    for index in range(3):
        # One writer's faults fall on its folds' own writes, one's on all a fold touches, one's on any request.
        plan = FaultPlan(seed=seed * 10 + index, key=FAULT_KEYS[index], late_after_calls=(1, 6))
        store = FaultyStore(LocalStore(uri), plan)
        writer = Butler(uri, store=store)
        writer.registry.compaction_grace = 0.0
        writer.registry.fold_in_background = rng.random() < 0.7
        writer.registry.refresh()
        plan.rate = rng.choice([0.05, 0.15, 0.3])  # opened: from here on
        stores.append(store)
        writers.append(writer)
    lagging = {lag: Butler(uri) for lag in (1, 2, 3)}
    stale = Butler(uri)
    assert _ids(stale) == set()
    returned: set[str] = set()
    failed: list[tuple[str, dict[str, Any], str]] = []
    for n in range(ROUNDS):
        for i, writer in enumerate(writers):
            if rng.random() < (0.7 if i == 0 else 0.3):
                writer.registry._commits_since_check = INTERVAL - 1  # this put checks (and may fold)
            kind, data_id, run = _spec(n, i)
            try:
                returned.add(writer.put({"n": n, "i": i}, kind, data_id, run=run).id)
            except CommitOutcomeUnknownError:
                pass
            except ObjButlerError:
                failed.append((kind, data_id, run))
        assert_deletions_are_one_chain(LocalStore(uri), shards)  # what makes a covering checkpoint exist
        for lag, reader in lagging.items():
            if n % lag == 0:
                missing = returned - _ids(reader)
                assert not missing, (f"seed {seed} round {n}: a reader refreshing every {lag} rounds lost {missing}"
                                     + _explain(uri, reader, missing))
    assert finish_folds(timeout=120)
    for store in stores:
        store.flush_late()
    assert sum(sum(store.counts.values()) for store in stores) > 0, "no fault was injected"
    for store in stores:
        store.plan.rate = 0.0
    writers[1].registry.write_checkpoint()  # a clean fold after the late writes landed
    fresh = Butler(uri)
    for kind, data_id, run in failed:
        assert committed(fresh, kind, data_id, run) == [], f"seed {seed}: a put that failed committed"
    for reader in (fresh, stale, *lagging.values(), *writers):
        missing = returned - _ids(reader)
        assert not missing, f"seed {seed}: a put that returned is missing from a reader's view: {missing}"
    report = fsck(Butler(uri))
    assert report.ok and report.dangling == [] and report.shadowed == [], (seed, report)
    vacuum(Butler(uri), older_than=dt.timedelta(0))
    after = fsck(Butler(uri))
    assert after.ok and after.orphans == [] and after.claims == [], (seed, after)


@pytest.mark.parametrize("chunk", range(4))
def test_writers_folding_at_once_under_random_faults_lose_nothing(chunk: int) -> None:
    for seed in range(chunk, SEEDS, 4):
        with tempfile.TemporaryDirectory() as tmp:
            _run(seed, Path(tmp))
