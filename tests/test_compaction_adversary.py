"""Adversarial tests of the ``claimed`` protocol's compaction: crashes mid-fold, racing readers, hostile keys.

The guarantee under attack (docs/registry.md, "Checkpoints and compaction"): a put that returned is
never lost from any reader's view (fresh, warm, stale); exactly one winner per (type, run, data ID);
fsck after vacuum is clean; readers never crash on what they list.

* **Crash at every step of a fold.** :class:`CrashStore` kills a writer (a ``BaseException``, which no
  ``except Exception`` in objbutler swallows, after which every request of that writer fails too: the
  process is dead) at the k-th request of one kind *after its commit point*, i.e. inside the fold its put
  triggers: the lease, the fold's reads, the checkpoint, retention, the marker, the deletes (first, middle),
  the lease release; before the request or after the server applied it. Other writers then continue
  across many more checkpoint boundaries (compaction_grace 0, small interval, several dataset types, a
  data ID key first used after the crash); fresh, warm and stale readers and fsck must agree.
* **A reader racing a deletion.** A reader lists, a fold deletes what it listed, the reader GETs it.
* **Hostile keys under manifest/log/.** Garbled markers, stray keys, a huge sequence number, a marker
  ahead of every slot.
* **Several processes.** Real processes (spawn) with overlapping data IDs, one SIGKILLed mid-run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from registry_helpers import committed

from objbutler.butler import Butler
from objbutler.errors import CommitOutcomeUnknownError, ObjButlerError
from objbutler.maintenance import fsck, vacuum
from objbutler.registry import finish_folds
from objbutler.registry.checkpoint import CHECKPOINT_PREFIX
from objbutler.registry.log import LEASE_PREFIX, LOG_PREFIX, MARKER_PREFIX, ShardedLog, encode_marker, encode_vector
from objbutler.stores import ObjectMeta, RangeLike, Store, StoreWrapper, open_store
from objbutler.stores.local import LocalStore
from objbutler.testing.faults import Fault, FaultPlan, FaultyStore
from objbutler.testing.wrappers import CountingStore

INTERVAL = 4
SHARDS = 4
SLOT = r"^manifest/log/\d{3}/\d{20}\.json$"
LEASE = "^" + re.escape(LEASE_PREFIX)
MARKER = "^" + re.escape(MARKER_PREFIX)
CHECKPOINT = "^" + re.escape(CHECKPOINT_PREFIX)


class SimulatedCrash(BaseException):
    """The process died here (a BaseException: ``except Exception`` cannot swallow it)."""


class CrashStore(StoreWrapper):
    """Forward to ``inner`` until the ``occurrence``-th matching request after :meth:`arm`, then die.

    A request matches when its method is in ``methods`` and one of its keys (a listing's prefix)
    matches ``key_pattern``. ``after``: the server applies the fatal request before the process dies.
    Once dead, every request raises :class:`SimulatedCrash` (a dead process sends nothing more).
    """

    def __init__(self, inner: Store, methods: str = "", key_pattern: str = "$^", occurrence: int = 1,
                 after: bool = False) -> None:
        super().__init__(inner)
        self.methods = frozenset(methods.split("|"))
        self.pattern = re.compile(key_pattern)
        self.occurrence = occurrence
        self.after = after
        self.armed = False
        self.dead = False
        self.seen = 0
        self._lock = threading.Lock()

    def arm(self) -> None:
        """Start counting matching requests."""
        self.armed = True

    def _call(self, method: str, keys: Sequence[str], operation: Callable[[], Any]) -> Any:
        with self._lock:
            if self.dead:
                raise SimulatedCrash(f"{method} {keys[:1]} after the crash")
            fatal = False
            if self.armed and method in self.methods and any(self.pattern.search(k) for k in keys):
                self.seen += 1
                fatal = self.seen == self.occurrence
                if fatal:
                    self.dead = True
        if fatal:
            if self.after:
                operation()
            raise SimulatedCrash(f"died at {method} {list(keys)[:1]} ({'after' if self.after else 'before'})")
        return operation()

    def get(self, key: str) -> bytes:
        """Forward, or die."""
        return self._call("get", [key], lambda: self.inner.get(key))  # type: ignore[no-any-return]

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Forward, or die."""
        return self._call("get_ranges", [key], lambda: self.inner.get_ranges(key, ranges))  # type: ignore[no-any-return]

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Forward, or die."""
        return self._call("get_many", list(keys), lambda: self.inner.get_many(keys))  # type: ignore[no-any-return]

    def head(self, key: str) -> ObjectMeta:
        """Forward, or die."""
        return self._call("head", [key], lambda: self.inner.head(key))  # type: ignore[no-any-return]

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Forward, or die."""
        return self._call("put", [key], lambda: self.inner.put(key, data))  # type: ignore[no-any-return]

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Forward, or die."""
        return self._call("put_if_absent", [key], lambda: self.inner.put_if_absent(key, data))  # type: ignore[no-any-return]

    def delete(self, key: str) -> None:
        """Forward, or die."""
        self._call("delete", [key], lambda: self.inner.delete(key))

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """Forward (the whole listing at once), or die."""
        metas = self._call("list", [prefix], lambda: [*self.inner.list(prefix, start_after)])
        return iter(metas)  # type: ignore[no-any-return]


class HookStore(StoreWrapper):
    """Run ``hook`` once, just before the first ``get_many`` of log commits (what a refresh does after listing)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.hook: Callable[[], object] | None = None

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Run the pending hook if these are commits, then forward."""
        if self.hook is not None and any(re.search(SLOT, key) for key in keys):
            hook, self.hook = self.hook, None
            hook()
        return self.inner.get_many(keys)


# -- helpers -----------------------------------------------------------------------------------------------


def _writer(uri: str, store: Store | None = None) -> Butler:
    butler = Butler(uri, store=store)
    butler.registry.compaction_grace = 0.0
    return butler


def _no_check(butler: Butler) -> Butler:
    butler.registry._commits_since_check = -10**9  # this writer never folds
    return butler


def _spec(n: int, i: int) -> tuple[str, dict[str, Any], str]:
    """Dataset type, data ID and run of put ``(n, i)``: types and data ID keys change with ``n``."""
    if n % 3 == 0:
        return "metric", {"visit": n, "detector": i}, "r"
    if n % 3 == 1:
        return "kind1", {"exposure": n * 10 + i, "band": "g"}, "r"
    return "kind2", {"tract": n, "patch": i}, "r2"


def _put(butler: Butler, n: int, i: int) -> str:
    """Put ``(n, i)`` (see :func:`_spec`); the new ref's id."""
    kind, data_id, run = _spec(n, i)
    return butler.put({"n": n, "i": i}, kind, data_id, run=run).id


def _ids(butler: Butler) -> set[str]:
    return {ref.id for ref in butler.query()}


def _assert_clean(uri: str) -> None:
    report = fsck(Butler(uri))
    assert report.ok and report.dangling == [] and report.shadowed == [], report
    vacuum(Butler(uri), older_than=dt.timedelta(0))
    after = fsck(Butler(uri))
    assert after.ok and after.orphans == [] and after.claims == [], after


def _keys(uri: str, prefix: str) -> list[str]:
    return [meta.key for meta in LocalStore(uri).list(prefix)]


# -- 1. a writer dies at every step of a fold --------------------------------------------------------------


@pytest.fixture(scope="module")
def folded_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A repository several folds old with unfolded commits pending, and the ids of its datasets."""
    root = tmp_path_factory.mktemp("template") / "repo"
    uri = str(root)
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=INTERVAL, log_shards=SHARDS)
    writers = [_writer(uri) for _ in range(3)]
    ids = [_put(w, n, i) for n in range(12) for i, w in enumerate(writers)]
    quiet = _no_check(_writer(uri))
    ids += [_put(quiet, 100 + n, 7) for n in range(INTERVAL)]  # pending: the next check folds
    assert finish_folds(timeout=60)
    assert len(_keys(uri, MARKER_PREFIX)) >= 2 and len(_keys(uri, CHECKPOINT_PREFIX)) >= 2
    return root, ids


CRASH_POINTS = [
    # (methods, key pattern, occurrence, after)
    ("list", "^" + re.escape(LOG_PREFIX) + "$", 1, False),  # the fold's one listing
    ("put_if_absent", LEASE, 1, False),
    ("put_if_absent", LEASE, 1, True),  # holding the lease
    ("get|get_many", SLOT, 1, False),  # reading the commits to fold
    ("get", MARKER, 1, False),  # reading the marker it has not read
    ("get", CHECKPOINT, 1, False),  # starting again from the newest checkpoint
    ("put_if_absent", CHECKPOINT, 1, False),
    ("put_if_absent", CHECKPOINT, 1, True),  # a checkpoint without a marker
    ("list", CHECKPOINT, 1, False),  # retention
    ("delete", CHECKPOINT, 1, False),
    ("delete", CHECKPOINT, 1, True),
    ("put_if_absent", MARKER, 1, False),
    ("put_if_absent", MARKER, 1, True),  # a marker, nothing deleted yet
    ("delete", SLOT, 1, False),
    ("delete", SLOT, 1, True),
    ("delete", SLOT, 3, True),  # in the middle of the deletes
    ("delete", MARKER, 1, False),
    ("delete", MARKER, 1, True),
    ("delete", LEASE, 1, True),  # the dead folder's old lease
    ("delete", LEASE, 2, False),  # releasing its own lease: never released
    ("delete", LEASE, 2, True),
]


@pytest.mark.parametrize(("methods", "pattern", "occurrence", "after"), CRASH_POINTS,
                         ids=[f"{m}-{p.strip('^$').replace(chr(92), '')}-{o}-{'after' if a else 'before'}"
                              for m, p, o, a in CRASH_POINTS])
def test_a_writer_killed_at_any_step_of_a_fold_loses_nothing(
        folded_template: tuple[Path, list[str]], tmp_path: Path, methods: str, pattern: str, occurrence: int,
        after: bool) -> None:
    root = tmp_path / "repo"
    shutil.copytree(folded_template[0], root)
    uri = str(root)
    ids = list(folded_template[1])
    stale = Butler(uri)
    assert _ids(stale) == set(ids)
    warm = Butler(uri)
    assert _ids(warm) == set(ids)
    crash = CrashStore(LocalStore(uri), methods, pattern, occurrence, after)
    victim = _writer(uri, crash)
    victim.registry.refresh()
    victim.registry._commits_since_check = INTERVAL - 1  # its next put checks, and there is a fold to do
    victim.registry.fold_in_background = False  # on its own (stale) view, inside the put: the crash reaches it
    place = victim.registry.writer.place
    quiet = _no_check(_writer(uri))

    def place_then_arm(*args: Any, **kwargs: Any) -> tuple[int, int]:
        placed = place(*args, **kwargs)
        # Meanwhile, behind the victim's back: commits, a fold (a marker it has not read, past its view,
        # folding commits its own fold will delete), more commits, and a long-dead folder's lease.
        ids.extend(_put(quiet, 300 + n, 8) for n in range(INTERVAL))
        _no_check(_writer(uri)).registry.write_checkpoint()
        ids.extend(_put(quiet, 400 + n, 8) for n in range(INTERVAL))
        (root / ShardedLog.lease_key(0, 1)).parent.mkdir(parents=True, exist_ok=True)
        (root / ShardedLog.lease_key(0, 1)).write_text("{}")
        crash.arm()  # past the commit point: count the fold's requests only
        return placed

    victim.registry.writer.place = place_then_arm  # type: ignore[method-assign]
    with pytest.raises(SimulatedCrash):
        victim.put({"victim": True}, "metric", {"visit": 999, "detector": 9}, run="r")
    assert crash.dead, "the crash point was never reached: the fold did not do what this test expects"
    assert set(ids) <= _ids(warm)  # a reader that has not read the fold's deletion, right after the crash
    # The dead writer's lease is fresh (FOLD_LEASE_SECONDS to go): compaction must resume anyway.

    writers = [_writer(uri) for _ in range(3)]
    for n in range(12):
        ids += [_put(w, 200 + n, i) for i, w in enumerate(writers)]
        if n == 3:
            ids.append(writers[0].put({"new": n}, "kind3", {"field": "f1", "seq": n}, run="r3").id)  # a new key
        if n % 4 == 1:
            assert set(ids) <= _ids(warm)
    fresh = Butler(uri)
    victims = fresh.query("metric", where={"visit": 999})
    assert len(victims) == 1, "the killed writer's commit (placed before the crash) is gone"
    expected = set(ids) | {victims[0].id}
    for reader in (fresh, warm, stale, *writers):
        assert _ids(reader) == expected
    assert finish_folds(timeout=60)
    assert len(_keys(uri, MARKER_PREFIX)) >= 1
    live = [k for k in _keys(uri, LOG_PREFIX) if ShardedLog.parse(k) is not None]
    assert len(live) < len(expected) // 2, "compaction stopped after the crash"
    _assert_clean(uri)


# -- 2. a reader whose listed commits are deleted before it reads them ------------------------------------


@pytest.mark.parametrize("grace", [0.0, 30.0])
def test_a_reader_whose_listed_commits_are_compacted_before_it_reads_them(tmp_path: Path, grace: float) -> None:
    """Reader lists (commits 4-8 and a marker folding 1-6 that announces no deletion yet); a fold then
    deletes through that marker; the reader's GET of commit 4 finds nothing. It must not crash: the
    deletion's marker exists by then, so it can start again from a checkpoint.

    With the default grace (30 s) the window is the same: the marker the reader listed may turn a
    full grace old while the reader is fetching (here: aged by ``os.utime`` while it fetches).
    """
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=1000, log_shards=1)
    writer = _no_check(_writer(uri))
    writer.registry.compaction_grace = grace
    ids = [_put(writer, 3 * n, 0) for n in range(3)]
    hooked = HookStore(LocalStore(uri))
    reader = Butler(uri, store=hooked)
    assert _ids(reader) == set(ids)
    ids += [_put(writer, 3 * n, 0) for n in range(3, 6)]
    writer.registry.write_checkpoint()  # marker 6: folds 1-6, deletes nothing
    ids += [_put(writer, 3 * n, 0) for n in range(6, 8)]

    def fold_now() -> None:
        old = dt.datetime.now(dt.UTC).timestamp() - 2 * grace - 1
        os.utime(tmp_path / "repo" / ShardedLog.marker_key(6), (old, old))  # a grace has passed meanwhile
        writer.registry.write_checkpoint()  # marker 8 announces deleting 1-6, and deletes them
        assert not (tmp_path / "repo" / ShardedLog.key(0, 4)).exists()

    hooked.hook = fold_now
    assert _ids(reader) == set(ids)
    assert hooked.hook is None


# -- 3. hostile keys under manifest/log/ ------------------------------------------------------------------


def _hostile_repo(tmp_path: Path, shards: int = 2) -> tuple[str, list[Butler], list[str]]:
    """A claimed repository with three compacting writers and 18 datasets, at rest: no fold in flight
    (a background fold landing later would write a newer marker than the one a test damages)."""
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=INTERVAL, log_shards=shards)
    writers = [_writer(uri) for _ in range(3)]
    ids = [_put(w, n, i) for n in range(6) for i, w in enumerate(writers)]
    assert finish_folds(timeout=60)
    return uri, writers, ids


def _carry_on(writers: list[Butler], ids: list[str], rounds: int = 16, start: int = 50) -> None:
    for n in range(start, start + rounds):
        ids.extend(_put(w, n, i) for i, w in enumerate(writers))
    assert finish_folds(timeout=60)  # the folds those puts started (on background threads) have landed


def test_stray_keys_and_a_garbled_marker_are_ignored_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri, writers, ids = _hostile_repo(tmp_path)
    store = LocalStore(uri)
    stale = Butler(uri)
    assert _ids(stale) == set(ids)
    for key in ["manifest/log/~/junk.json", "manifest/log/junk", "manifest/log/000/notanumber.json",
                "manifest/log/999/00000000000000000001.json", "manifest/log/~lease/xyz",
                "manifest/log/~lease/00000000000000000001-x.json", "manifest/log/~/00000000000000000001.json.bak",
                "manifest/log/005/00000000000000000001.json", "manifest/log/00/00000000000000000001.json"]:
        store.put(key, b"{}")
    store.put(ShardedLog.marker_key(3), b"\xff not json")  # garbled, with a small total
    store.put(ShardedLog.marker_key(5), b'{"v": 1, "position": "shards:1,2,3", "deletes": null}')  # wrong shards
    store.put(ShardedLog.marker_key(6), b'["position"]')
    _carry_on(writers, ids)
    assert "is not a compaction marker" in caplog.text
    for reader in (Butler(uri), stale, *writers):
        assert _ids(reader) == set(ids)
    live = [m.key for m in store.list(LOG_PREFIX) if ShardedLog.parse(m.key) is not None]
    assert len(live) < len(ids) // 2, "compaction stopped"
    _assert_clean(uri)


@pytest.mark.parametrize("sequence", [1000, 99999999999999999999])
def test_a_stray_slot_far_ahead_in_a_shard_does_not_swallow_later_puts(tmp_path: Path, sequence: int) -> None:
    """A stray object far beyond a shard's tail (a test copy, a restore gone wrong, a hostile key):
    readers stop at the gap before it, so a writer that hops to that shard must not place its commit
    after it (the put would return and no reader would ever list it; vacuum would delete its data)."""
    uri, writers, ids = _hostile_repo(tmp_path)
    for shard in range(2):
        LocalStore(uri).put(ShardedLog.key(shard, sequence), b"not a commit")
    for w in writers[:2]:
        w.registry.writer.shard = 0  # two writers in one shard: the one behind hops, and lists the other's tail
    _carry_on(writers, ids)
    for reader in (Butler(uri), *writers):
        assert _ids(reader) == set(ids)
    report = fsck(Butler(uri))
    assert report.ok and report.orphans == [], "data of puts that returned is unreferenced (vacuum deletes it)"


def test_a_marker_ahead_of_every_slot_does_not_swallow_later_puts(tmp_path: Path) -> None:
    """A stray marker whose vector is ahead of every slot (and has no checkpoint) must not move writers past a
    gap that readers never cross: a marker counts only once its checkpoint exists (a fold writes it first)."""
    uri, writers, ids = _hostile_repo(tmp_path)
    LocalStore(uri).put(ShardedLog.marker_key(1000), encode_marker(encode_vector([500, 500]), None))
    _carry_on(writers, ids)
    for reader in (Butler(uri), *writers):
        assert _ids(reader) == set(ids)


@pytest.mark.parametrize("body", [b"\xff not json", b'{"v": 1, "position": "shards:1,1", "deletes": null}'],
                         ids=["garbled", "total-disagrees-with-position"])
def test_a_bad_marker_with_a_huge_total_does_not_stop_compaction(tmp_path: Path, body: bytes) -> None:
    """A marker that cannot be what its name says is ignored: not taken as the newest checkpoint (no
    fold would ever be far enough past it, and the live log would grow without bound)."""
    uri, writers, ids = _hostile_repo(tmp_path)
    LocalStore(uri).put(ShardedLog.marker_key(10**6), body)
    _carry_on(writers, ids, rounds=20)
    for reader in (Butler(uri), *writers):
        assert _ids(reader) == set(ids)
    live = [m.key for m in LocalStore(uri).list(LOG_PREFIX) if ShardedLog.parse(m.key) is not None]
    assert len(live) < len(ids) // 2, f"compaction stopped: {len(live)} live commits of {len(ids)}"


def test_a_checkpoint_whose_position_disagrees_with_its_marker_is_skipped(tmp_path: Path) -> None:
    """The newest marker's checkpoint holds an older fold (its position is behind the commits the
    markers say were deleted): a reader must not start from it, or the deleted commits between the two
    are silently missing. (The same mismatch arises when two folds name different vectors by one total.)"""
    uri, writers, ids = _hostile_repo(tmp_path, shards=SHARDS)
    _carry_on(writers, ids, rounds=8)
    assert finish_folds(timeout=60)
    stale = Butler(uri)
    assert _ids(stale) == set(ids)
    markers = _keys(uri, MARKER_PREFIX)
    checkpoints = _keys(uri, CHECKPOINT_PREFIX)  # those of the live markers (retention keeps no older one)
    assert len(markers) >= 2 and len(checkpoints) >= 2 and checkpoints[0] < checkpoints[-1]
    newest = markers[-1][len(MARKER_PREFIX):-len(".json")]
    store = LocalStore(uri)
    store.put(f"{CHECKPOINT_PREFIX}{newest}.parquet", store.get(checkpoints[0]))  # the oldest fold, renamed
    for reader in (Butler(uri), stale):
        assert _ids(reader) == set(ids)


# -- 4. real processes, overlapping data IDs, one SIGKILLed --------------------------------------------------


def _process_writer(uri: str, options: dict[str, Any], index: int, items: list[tuple[str, dict[str, int], str]],
                    grace: float, out_path: str, barrier: Any) -> None:
    """Put ``items`` in order; one JSON line per outcome, flushed before the next put (a spawn target)."""
    import json

    from objbutler.errors import CommitOutcomeUnknownError, ConflictError, ObjButlerError

    butler = Butler(uri, **options)
    butler.registry.compaction_grace = grace
    butler.registry.refresh()
    barrier.wait()
    with open(out_path, "a") as out:
        for n, (kind, data_id, run) in enumerate(items):
            record: dict[str, Any] = {"kind": kind, "data_id": data_id, "run": run}
            try:
                record["ok"] = butler.put({"writer": index, "n": n}, kind, data_id, run=run).id
            except ConflictError:
                record["conflict"] = True
            except CommitOutcomeUnknownError as exc:
                record["unknown"] = str(exc)
            except ObjButlerError as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            out.write(json.dumps(record) + "\n")
            out.flush()


def _items(index: int, count: int) -> list[tuple[str, dict[str, int], str]]:
    """Writers ``i`` and ``i + 3`` race for the same metric data IDs; the other kinds are their own."""
    import random

    items: list[tuple[str, dict[str, int], str]] = []
    for n in range(count):
        if n % 2 == 0:
            items.append(("metric", {"visit": n, "detector": index % 3}, "r"))
        elif n % 4 == 1:
            items.append(("kind1", {"exposure": index * 1000 + n, "band": 1}, "r"))
        else:
            items.append(("kind2", {"tract": n, "patch": index}, "r2"))
    random.Random(index).shuffle(items)
    return items


def _outcomes(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.mark.parametrize(("where", "grace"), [("local", 0.0), ("local", 0.3), ("localstack", 0.0)])
def test_processes_racing_across_many_checkpoints_lose_nothing_and_one_wins_each_data_id(
        tmp_path: Path, request: pytest.FixtureRequest, where: str, grace: float) -> None:
    """Six writer processes (pairs racing for the same data IDs) and a seventh that is SIGKILLed after
    some puts, with a short grace (none, 0.3 s) so that compaction deletes while they run. A warm reader
    polls throughout: it never fails, and never loses what it saw. Every put that returned is in every
    reader's view at the end, each data ID has one winner, every ConflictError names a held data ID."""
    import multiprocessing
    import signal
    import time

    if where == "local":
        uri, options = str(tmp_path / "repo"), {}
    else:
        backend = request.getfixturevalue("localstack_backend")
        uri, options = backend.new_uri(), dict(backend.options)
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=INTERVAL, log_shards=SHARDS, **options)
    store = open_store(uri, **options)
    puts = 30 if where == "local" else 20  # per writer
    context = multiprocessing.get_context("spawn")
    writers, victim_index = 6, 6
    barrier = context.Barrier(writers + 2)
    outs = [tmp_path / f"out{index}.jsonl" for index in range(writers + 1)]
    processes = [context.Process(target=_process_writer,
                                 args=(uri, options, index, _items(index, 1000 if index == victim_index else puts),
                                       grace, str(outs[index]), barrier))
                 for index in range(writers + 1)]
    stale, warm = Butler(uri, **options), Butler(uri, **options)
    assert _ids(stale) == set() == _ids(warm)
    for process in processes:
        process.start()
    barrier.wait(timeout=120)
    seen: set[str] = set()
    killed = False
    polls = 0
    while any(p.is_alive() for p in processes[:writers]):
        now = _ids(warm)
        assert seen <= now, f"a warm reader lost {len(seen - now)} datasets it had seen"
        seen, polls = now, polls + 1
        if not killed and outs[victim_index].exists() and len(_outcomes(outs[victim_index])) >= 10:
            os.kill(processes[victim_index].pid, signal.SIGKILL)  # type: ignore[arg-type]
            killed = True
        time.sleep(0.05)
    if not killed:
        os.kill(processes[victim_index].pid, signal.SIGKILL)  # type: ignore[arg-type]
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes[:writers]] == [0] * writers
    outcomes = [record for path in outs for record in _outcomes(path)]
    assert not [r for r in outcomes if "error" in r], [r["error"] for r in outcomes if "error" in r][:3]
    returned = [r for r in outcomes if "ok" in r]
    fresh = Butler(uri, **options)
    final = {(ref.dataset_type, ref.run, tuple(sorted(ref.data_id.items()))): ref.id for ref in fresh.query()}
    by_key: dict[tuple[str, str, tuple[tuple[str, int], ...]], list[str]] = {}
    for r in returned:
        by_key.setdefault((r["kind"], r["run"], tuple(sorted(r["data_id"].items()))), []).append(r["ok"])
    assert all(len(ids) == 1 for ids in by_key.values()), "two puts of one data ID both returned"
    assert {key: ids[0] for key, ids in by_key.items()}.items() <= final.items(), "a put that returned is lost"
    for r in outcomes:
        if "conflict" in r:
            assert (r["kind"], r["run"], tuple(sorted(r["data_id"].items()))) in final
    assert len([r for r in outcomes if "conflict" in r]) > 0, "the writers never raced"
    for reader in (fresh, warm, stale):
        assert _ids(reader) == set(final.values())
    assert polls > 3 and [m.key for m in store.list(MARKER_PREFIX)]
    if grace == 0:
        live = [m.key for m in store.list(LOG_PREFIX) if ShardedLog.parse(m.key) is not None]
        assert len(live) < len(final) // 2, "compaction did not delete while the writers ran"
    report = fsck(Butler(uri, **options))
    assert report.ok and report.dangling == [] and report.shadowed == [], report
    vacuum(Butler(uri, **options), older_than=dt.timedelta(0))
    after = fsck(Butler(uri, **options))
    assert after.ok and after.orphans == [] and after.claims == [], after


# -- 5. faults on the fold's own requests ------------------------------------------------------------------

LOG_LISTING = "^" + re.escape(LOG_PREFIX) + "$"
FOLD_FAULTS = {
    "marker-lost-answer": [Fault("lost_answer", "put_if_absent", MARKER, occurrences=None)],
    "marker-late": [Fault("late", "put_if_absent", MARKER, occurrences=None, after_calls=30)],
    "checkpoint-late": [Fault("late", "put_if_absent", CHECKPOINT, occurrences=None, after_calls=3)],
    "checkpoint-lost-answer": [Fault("lost_answer", "put_if_absent", CHECKPOINT, occurrences=(1, 3, 5))],
    "slot-deletes-late": [Fault("late", "delete", SLOT, occurrences=None, after_calls=2)],
    "deletes-refused": [Fault("refuse", "delete", f"{SLOT}|{MARKER}", occurrences=None)],
    "second-delete-5xx": [Fault("before", "delete", SLOT, occurrences=(2, 7, 12))],
    "listing-breaks-half-way": [Fault("lost_answer", "list", LOG_LISTING, occurrences=(2, 3, 5, 8))],
    "fold-read-fails": [Fault("before", "get|get_many", SLOT, occurrences=(1, 3))],
    "lease-release-late": [Fault("late", "delete", LEASE, occurrences=None, after_calls=1)],
    "lease-lost-answer": [Fault("lost_answer", "put_if_absent", LEASE, occurrences=(2,))],
    "marker-reads-fail": [Fault("before", "get", MARKER, occurrences=(1, 2, 4))],
}


@pytest.mark.parametrize("name", sorted(FOLD_FAULTS))
def test_faults_on_the_folds_requests_lose_nothing(tmp_path: Path, name: str) -> None:
    """One of three compacting writers gets faults on its fold's requests (lost answers, late writes,
    refusals, 5xx, a listing that fails half-way); no put may be lost, none may report a wrong outcome,
    and a reader racing those folds never fails."""
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=INTERVAL, log_shards=2)
    faulty_store = FaultyStore(LocalStore(uri), FaultPlan(FOLD_FAULTS[name]))
    faulty = _writer(uri, faulty_store)
    writers = [faulty, _writer(uri), _writer(uri)]
    stale = Butler(uri)
    lagging = {lag: Butler(uri) for lag in (1, 2, 3)}  # readers that refresh every 1, 2, 3 rounds
    assert _ids(stale) == set()
    returned: list[str] = []
    failed: list[tuple[str, dict[str, Any], str]] = []
    for n in range(20):
        faulty.registry._commits_since_check = INTERVAL - 1  # the faulty writer checks at every put
        for i, writer in enumerate(writers):
            try:
                returned.append(_put(writer, n, i))
            except CommitOutcomeUnknownError:
                pass
            except ObjButlerError:
                failed.append(_spec(n, i))  # nothing committed: no reader may ever see it
        for lag, reader in lagging.items():
            if n % lag == 0:
                assert set(returned) <= _ids(reader), f"a reader refreshing every {lag} rounds lost datasets"
    assert finish_folds(timeout=60)
    faulty_store.flush_late()
    assert faulty_store.counts, "no fault was injected: the scenario does not reach the fold"
    faulty_store.plan.clear()  # the faulty writer reads below as a reader: faults not yet spent would hit it
    fresh = Butler(uri)
    for kind, data_id, run in failed:
        assert committed(fresh, kind, data_id, run) == [], "a put that failed committed something"
    for reader in (fresh, stale, *lagging.values(), *writers):
        assert set(returned) <= _ids(reader)
    _assert_clean(uri)


def test_a_fold_lease_whose_create_lost_its_answer_does_not_stall_compaction(tmp_path: Path) -> None:
    """The lease create landed but its answer was lost: the writer gives up the fold, and nobody holds
    the lease for FOLD_LEASE_SECONDS (60 s), while every writer waits for it and the live log grows."""
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=INTERVAL, log_shards=2)
    faulty_store = FaultyStore(LocalStore(uri), FaultPlan([Fault("lost_answer", "put_if_absent", LEASE)]))
    faulty = _writer(uri, faulty_store)
    writers = [faulty, _writer(uri), _writer(uri)]
    ids: list[str] = []
    n = 0
    while not faulty_store.counts:
        faulty.registry._commits_since_check = INTERVAL - 1  # it checks at every put until the fault hits
        ids.append(_put(faulty, n, 0))
        assert finish_folds(timeout=60)
        n += 1
        assert n < 50, "the faulty writer never tried to fold"
    markers = _keys(uri, MARKER_PREFIX)
    _carry_on(writers, ids, rounds=12, start=100)
    assert _ids(Butler(uri)) == set(ids)
    assert _keys(uri, MARKER_PREFIX)[-1:] != markers[-1:], "no fold since the lost lease answer (a 60 s stall)"


def test_folds_that_fail_after_their_checkpoint_never_prune_the_newest_markers_checkpoint(tmp_path: Path) -> None:
    """Folds that wrote their checkpoint and then failed (or that overlap) leave checkpoints without a
    marker. Retention that kept "the three newest" counted them and deleted the checkpoint of the newest
    marker; a reader then ignored that marker (a marker without a checkpoint is a stray), never learnt
    that compaction had deleted commits it had not read, and kept a view with nothing past them."""
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=1000, log_shards=1)
    writer = _no_check(_writer(uri))
    ids = [_put(writer, n, 0) for n in range(4)]
    reader = Butler(uri)
    assert _ids(reader) == set(ids)  # it has read commits 1-4
    ids += [_put(writer, n, 0) for n in range(4, 8)]
    writer.registry.write_checkpoint()  # marker 8
    ids += [_put(writer, n, 0) for n in range(8, 12)]
    writer.registry.write_checkpoint()  # marker 12: deletes commits 1-8
    failing = _no_check(_writer(uri, FaultyStore(LocalStore(uri), FaultPlan([
        Fault("refuse", "put_if_absent", MARKER, occurrences=None)]))))
    for n in range(12, 15):
        ids.append(_put(writer, n, 0))
        with pytest.raises(ObjButlerError):
            failing.registry.write_checkpoint()  # checkpoints 13, 14, 15 and no marker
    assert ShardedLog.marker_key(12) in _keys(uri, MARKER_PREFIX)
    assert f"{CHECKPOINT_PREFIX}{12:020d}.parquet" in _keys(uri, CHECKPOINT_PREFIX), "the newest marker's checkpoint"
    assert _ids(reader) == set(ids)
    assert _ids(Butler(uri)) == set(ids)


def test_a_stray_object_with_a_future_time_does_not_void_the_grace(tmp_path: Path) -> None:
    """Compaction measures a marker's age against the newest time the log listing shows. A stray object
    under manifest/log/ stamped an hour ahead (a copy that kept a skewed clock's times) made every marker
    look a grace old at once: a writer that had read the markers moments earlier placed its commit in a
    slot already deleted, the put returned, and no reader ever saw it."""
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=INTERVAL, log_shards=1)
    busy = Butler(uri)  # the default grace (30 s)
    ids = [busy.put({"n": n}, "metric", {"visit": n}, run="r").id for n in range(3)]
    stale = Butler(uri)
    ids.append(stale.put({"n": 3}, "metric", {"visit": 3}, run="r").id)  # it read the markers just now
    LocalStore(uri).put(f"{LOG_PREFIX}stray.txt", b"x")
    future = dt.datetime.now(dt.UTC).timestamp() + 3600
    os.utime(tmp_path / "repo" / LOG_PREFIX / "stray.txt", (future, future))
    ids += [busy.put({"n": n}, "metric", {"visit": n}, run="r").id for n in range(4, 40)]
    ids.append(stale.put({"n": 99}, "metric", {"visit": 99}, run="r").id)  # within half the grace of its reading
    for reader in (Butler(uri), busy):
        assert _ids(reader) == set(ids)


def test_a_marker_announcing_deletions_past_its_own_position_is_ignored(tmp_path: Path) -> None:
    """A marker only ever announces deleting through an older marker's position, never past its own.
    One that does (its deletes field corrupted) made every writer that read it think each slot it took
    may have been compacted: it wrote each commit again, slot after slot, up to the announced position
    (300 requests a put here; for a huge number, a put that never ends); and every reader start again
    from a checkpoint at every refresh."""
    uri, _, ids = _hostile_repo(tmp_path)
    store = LocalStore(uri)
    newest = _keys(uri, MARKER_PREFIX)[-1]
    position = json.loads(store.get(newest))["position"]
    store.put(newest, encode_marker(position, encode_vector([300, 300])))  # its deletes field, corrupted
    counting = CountingStore(LocalStore(uri))
    writers = [_writer(uri, counting), _writer(uri), _writer(uri)]  # writers that read it
    _carry_on(writers, ids, rounds=6)
    assert counting.requests_by_method["put_if_absent"] < 6 * 8, "commits written again and again"
    for reader in (Butler(uri), *writers):
        assert _ids(reader) == set(ids)


@pytest.mark.parametrize("record", ["7", True, 0, -3, 2.5, [1]])
def test_a_marker_naming_no_compaction_record_is_ignored_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, record: object) -> None:
    """A marker names the compaction record that decided its deletion, so that readers know the newest
    record's vector without a GET. A record field that names no record (its checkpoint there) makes
    the marker no marker: ignored with a warning, never a crash, nothing lost, compaction goes on."""
    uri, writers, ids = _hostile_repo(tmp_path)
    store = LocalStore(uri)
    newest = _keys(uri, MARKER_PREFIX)[-1]
    document = json.loads(store.get(newest))
    store.put(newest, json.dumps({**document, "record": record}).encode())
    _carry_on(writers, ids, rounds=20)
    assert "is not a compaction marker" in caplog.text
    for reader in (Butler(uri), *writers):
        assert _ids(reader) == set(ids)
    live = [m.key for m in store.list(LOG_PREFIX) if ShardedLog.parse(m.key) is not None]
    assert len(live) < len(ids) // 2, f"compaction stopped: {len(live)} live commits of {len(ids)}"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_unreadable_checkpoint_is_skipped_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    uri, writers, ids = _hostile_repo(tmp_path)
    store = LocalStore(uri)
    newest = _keys(uri, MARKER_PREFIX)[-1][len(MARKER_PREFIX):-len(".json")]
    key = f"{CHECKPOINT_PREFIX}{newest}.parquet"
    store.put(key, b"PAR1 not parquet PAR1" if damage == "garbage" else store.get(key)[:200])
    assert _ids(Butler(uri)) == set(ids)
    assert "checkpoint" in caplog.text
    _carry_on(writers, ids, rounds=6)
    for reader in (Butler(uri), *writers):
        assert _ids(reader) == set(ids)
