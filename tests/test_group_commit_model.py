"""Hypothesis: group commits under random store faults honour the per-item commit-point contract.

:mod:`test_commit_point_model` checks single ``Butler.put`` calls; this module checks the
group commits added later, on the same machinery (its :class:`CommitPointMachine`: several
stale Butler sessions on one repository, each behind its own seeded
:class:`~objbutler.testing.faults.FaultyStore`, dataset types with different data ID keys,
``checkpoint_interval`` 2 or 3, reopened sessions, reads, server minutes on timestamped
stores). Besides its single puts, a step may be a *group*:

``put_many`` / ``put_many_raise``
    ``Butler.put_many(items, run, errors="return" | "raise", chunk_size=1|2|3|default)``;
    chunks of 1 to 3 make one batch several commits, so checkpoints and compactions are
    crossed between them and a new dataset type arrives in a later chunk.
``batch`` / ``batch_abort``
    ``with butler.batch(run=...) as batch:``; the abort variant raises inside the block.
``threads``
    one ``Butler.put`` per item from concurrent threads of one Butler (its
    :class:`~objbutler.group_commit.CommitCombiner` shares their commits).
``two_batches``
    two concurrent ``put_many`` calls of one Butler, which may name the same data IDs.

Items may repeat a data ID (inside one batch and across concurrent ones), and the faults
drawn for a group also strike claim creates and claim releases, with late writes that wait
until the end of the step. After the group every late write is flushed and a fresh Butler
without faults is read; per item:

* a returned ref is what a fresh reader holds for its data ID, with the item's content, and
  no other item of the group returned a ref for that data ID;
* an item that got any other ObjButlerError than CommitOutcomeUnknownError is committed
  nowhere (its content is in no fresh reader);
* a CommitOutcomeUnknownError item is resolved from what the fresh reader holds;
* a ConflictError names a data ID that is held, claimed, or named twice by the group;
* nothing but ObjButlerError reaches any item (the abort variant: the block's own exception);
* every new entry of the fresh reader carries the content of an item of this group that
  returned a ref or got CommitOutcomeUnknownError.

The inherited invariant then checks that the fresh reader sees exactly the model (so a data
ID committed twice, or a returned ref that a later stale writer displaced, fails), every
dataset reads back the content of the put that made it, and fsck finds no dangling entry.
On ``claimed`` repositories a second invariant checks that every committed dataset's claim
exists and names it: claims alone make a data ID unique there, so a committed dataset without
its claim is a second winner waiting for a writer with a stale view.

Shrinking is off unless ``OBJBUTLER_MODEL_SHRINK=1`` (it takes minutes here). Scale the run like the
single-put model: ``OBJBUTLER_MODEL_EXAMPLES=<n>`` (max_examples of
each memory machine; local gets a third, LocalStack a tenth) and ``OBJBUTLER_MODEL_STEPS=<n>``::

    OBJBUTLER_MODEL_EXAMPLES=300 OBJBUTLER_MODEL_STEPS=25 \\
        python3 -m pytest tests/test_group_commit_model.py -s --timeout=0

Targeted deterministic tests follow the machines: the first two reproduce a bug the machine
found (a claim released late by one attempt of a group commit, re-used by the next attempt), the
third a race of threads of one fresh Butler (its first refresh against a put's commit) behind a
failure of the machine's reads.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from conftest import Backend
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule
from test_commit_point_model import (
    FAULT_SPECS,
    PUTS,
    RUNS,
    SESSION,
    TARGETS,
    TYPES,
    CommitPointMachine,
    Entry,
    FaultSpec,
    MinutePasses,
    Put,
    Read,
    Refresh,
    Target,
    UniqueKey,
    _local_repo,
    _memory_repo,
    _NoSleep,
    _scaled,
    _server_repo,
    _steps,
    data_id_for,
    payload,
    to_fault,
)
from test_commit_point_model import (
    _run as _run_machine,
)

from objbutler import Butler
from objbutler.errors import BatchError, CommitOutcomeUnknownError, ConflictError, NotFoundError, ObjButlerError
from objbutler.maintenance import fsck
from objbutler.multi import put_many_repos
from objbutler.registry import registry as registry_module
from objbutler.registry import slots as slots_module
from objbutler.registry.claims import claim_key, decode_claim
from objbutler.registry.records import DatasetRef
from objbutler.registry.state import unique_key
from objbutler.stores import ObjectMeta, Store, StoreWrapper
from objbutler.stores.memory import MemoryStore
from objbutler.testing.faults import Fault, FaultPlan, FaultyStore, IgnoresConditionsStore

# -- what a group is ------------------------------------------------------------------------------------------

MODES = ("put_many", "put_many_raise", "batch", "batch_abort", "threads", "two_batches")

# Extra fault targets for groups (on top of the single-put model's TARGETS): a claim's create and its release
# on their own, so that a late release or a lost create answer strike a group commit's retry.
GROUP_TARGETS: dict[str, tuple[str, str]] = {
    "claim_create": ("put_if_absent", r"^manifest/claims/"),
    "claim_release": ("delete", r"^manifest/claims/"),
    "data_put": ("put", r"^data/"),
}

GROUP_FAULT_SPECS = st.one_of(
    FAULT_SPECS,
    st.tuples(st.sampled_from(sorted(GROUP_TARGETS)), st.sampled_from(["before", "lost_answer", "late", "refuse"]),
              st.sampled_from([1, 2, 3, None]), st.sampled_from([1, 2, 4, None])),
    # a claim release that lands at the end of the step, whatever came after (a retry in between)
    st.tuples(st.just("claim_release"), st.just("late"), st.sampled_from([1, 2, None]), st.just(None)),
)


def group_fault(spec: FaultSpec) -> Fault:
    """A fault rule from a drawn spec: the single-put model's targets, or a claim create/release or data put."""
    target, kind, occurrence, after = spec
    if target not in GROUP_TARGETS:
        assert target in TARGETS
        return to_fault(spec)
    methods, key = GROUP_TARGETS[target]
    if kind == "late":
        return Fault("late", methods, key, occurrences=occurrence, after_calls=after)
    return Fault(kind, methods, key, occurrences=occurrence)


ITEM = st.tuples(st.sampled_from(sorted(TYPES)), st.integers(0, 2), st.integers(0, 1))


@dataclasses.dataclass(frozen=True)
class Group:
    """One group put: ``items`` are ``(dataset type, a, b)`` (data IDs from :func:`data_id_for`)."""

    mode: str
    session: int
    run: str
    items: tuple[tuple[str, int, int], ...]
    chunk_size: int | None
    faults: tuple[FaultSpec, ...]


GROUPS = st.builds(Group, st.sampled_from(MODES), SESSION, st.sampled_from(RUNS),
                   st.lists(ITEM, min_size=1, max_size=6).map(tuple), st.sampled_from([1, 2, 3, None]),
                   st.lists(GROUP_FAULT_SPECS, max_size=3).map(tuple))
GROUP_ACTIONS = st.one_of(GROUPS, GROUPS, GROUPS, PUTS, st.builds(Refresh, SESSION, st.booleans()),
                          st.builds(Read, SESSION, st.integers(0, 10**6), st.booleans()), st.just(MinutePasses()))


class AbortedBlockError(Exception):
    """Raised inside a ``batch_abort`` block."""


@dataclasses.dataclass
class ItemRecord:
    """What one item of a group was and what it got."""

    token: int
    dataset_type: str
    data_id: dict[str, int]
    run: str
    unique: UniqueKey
    result: Any = None  # a DatasetRef or the exception

    @property
    def outcome(self) -> str:
        result = self.result
        if isinstance(result, DatasetRef):
            return "ok"
        if isinstance(result, CommitOutcomeUnknownError):
            return "unknown"
        if isinstance(result, ConflictError):
            return "conflict"
        if isinstance(result, ObjButlerError):
            return "failed"
        if isinstance(result, AbortedBlockError):
            return "aborted"
        return "crash"


# -- the machine ---------------------------------------------------------------------------------------------


class GroupCommitMachine(CommitPointMachine):
    """The single-put machine with group puts among its steps (see the module docstring)."""

    @rule(action=GROUP_ACTIONS)
    def step(self, action: Group | Put | Refresh | Read | MinutePasses) -> None:
        if isinstance(action, Group):
            self.group(action)
        else:
            super().step(action)

    def group(self, action: Group) -> None:
        records = []
        for dataset_type, a, b in action.items:
            self.token += 1
            data_id = data_id_for(dataset_type, a, b)
            records.append(ItemRecord(self.token, dataset_type, data_id, action.run,
                                      unique_key(dataset_type, action.run, data_id)))
        store = self.stores[action.session]
        butler = self.butlers[action.session]
        store.plan.add(*(group_fault(spec) for spec in action.faults))
        first_fault = len(store.injected)
        try:
            run_group(butler, action.mode, records, action.chunk_size)
        finally:
            store.plan.clear()
        self.stats[f"group:{action.mode}"] += 1
        injected = [(f.kind, f.method, f.key, f.source) for f in store.injected[first_fault:]]
        note(f"group {action.mode} through session {action.session} (chunk {action.chunk_size}): "
             f"{[(r.token, r.unique, r.outcome) for r in records]}; faults injected: {injected}")
        self.settle_group(records, action.mode)

    def settle_group(self, records: list[ItemRecord], mode: str) -> None:
        """Check every item of a group against a fresh reader, once every late write has landed."""
        for record in records:
            self.stats[f"item:{record.outcome}"] += 1
            allowed = ("aborted",) if mode == "batch_abort" else ("ok", "unknown", "conflict", "failed")
            assert record.outcome in allowed, \
                f"item #{record.token} {record.unique} got {type(record.result).__name__}: {record.result!r}"
        self._flush()
        reader, view = self._fresh()
        before = set(self.model)
        named = collections.Counter(record.unique for record in records)
        by_token = {record.token: record for record in records}
        returned: dict[UniqueKey, ItemRecord] = {}
        for record in records:
            if record.outcome != "ok":
                continue
            ref = record.result
            assert ref.unique_key == record.unique, f"item #{record.token} returned a ref of {ref.unique_key}"
            assert record.unique not in before, f"a second put of {record.unique} succeeded (#{record.token})"
            assert record.unique not in returned, \
                f"two items of one group (#{returned[record.unique].token}, #{record.token}) returned {record.unique}"
            returned[record.unique] = record
            held = view.get(record.unique)
            assert held is not None and held.id == ref.id, \
                f"a returned item is not what a fresh reader holds: #{record.token} {record.unique}"
        for unique, held in view.items():
            if unique in before:
                continue  # the invariant checks what the model holds
            token = self._token(reader, held)
            maker = by_token.get(token)
            assert maker is not None and maker.unique == unique, \
                f"{unique} appeared with content (token {token}) no item of this group put there"
            assert maker.outcome in ("ok", "unknown"), \
                f"item #{token} {unique} got {maker.outcome} ({maker.result!r}) but is committed"
            self.model[unique] = Entry(token, held.id, maker.dataset_type, maker.data_id, maker.run)
            self.stats["item:unknown-landed" if maker.outcome == "unknown" else "item:ok-verified"] += 1
        for record in records:
            if record.outcome == "conflict":
                if "already claimed" in str(record.result):
                    self.stats["item:conflict-claim-taken"] += 1
                legit = (record.unique in before or record.unique in view or named[record.unique] > 1
                         or self._unfinished_claim(record.unique, {}) or self._unfinished_holder(record.result, view))
                assert legit, f"ConflictError on a data ID nobody holds or claims: #{record.token} " \
                              f"{record.unique}: {record.result}"

    @invariant()
    def committed_datasets_keep_their_claims(self) -> None:
        """Claimed protocol: every committed dataset's claim exists and names it.

        Claims are what make a data ID unique (a writer reads no log to decide it): a committed dataset
        whose claim is gone lets a writer with a stale view claim and commit its data ID again, and then
        the ref the first put returned is no longer what a fresh reader holds.
        """
        if self.target.expected_protocol != "claimed":
            return
        self._flush()
        for unique, entry in self.model.items():
            try:
                claim = decode_claim(self.inner.get(claim_key(unique)), claim_key(unique))
            except NotFoundError:
                raise AssertionError(f"the claim of committed {unique} (dataset {entry.ref_id}) is gone") from None
            assert entry.ref_id is None or claim.dataset_id == entry.ref_id, \
                f"the claim of committed {unique} names dataset {claim.dataset_id}, not {entry.ref_id}"

    def _unfinished_holder(self, error: BaseException, view: dict[UniqueKey, DatasetRef]) -> bool:
        """The refusal names a claim of a dataset that is not committed: an unfinished claim at the time
        (since released, e.g. by a late delete of an earlier attempt's claim)."""
        if "claim an earlier attempt of this same put made" in str(error):  # its own, released late
            self.stats["conflict:own-claim-in-release"] += 1
            return True
        match = re.search(r"claimed by dataset ([0-9a-f-]{36})", str(error))
        if match is None or match.group(1) in {ref.id for ref in view.values()}:
            return False
        self.stats["conflict:claim-since-released"] += 1
        return True


def run_group(butler: Butler, mode: str, records: list[ItemRecord], chunk_size: int | None) -> None:
    """Put ``records`` the way ``mode`` says; set each record's result (a ref or the exception it got)."""
    run = records[0].run
    items = [(payload(r.dataset_type, r.token), r.dataset_type, r.data_id) for r in records]
    mapped = [{"obj": obj, "dataset_type": t, "data_id": d, "format": TYPES[t][1]} for obj, t, d in items]

    def put_many(indices: list[int], errors: str = "return") -> None:
        try:
            results = butler.put_many([mapped[i] for i in indices], run, errors=errors,  # type: ignore[arg-type]
                                      chunk_size=chunk_size, max_concurrency=3)
        except BatchError as exc:
            results = exc.results
        except Exception as exc:  # a put_many call that raised as a whole: every item got it
            results = [exc] * len(indices)
        assert len(results) == len(indices), f"put_many returned {len(results)} results for {len(indices)} items"
        for i, result in zip(indices, results, strict=True):
            records[i].result = result

    if mode in ("put_many", "put_many_raise"):
        put_many(list(range(len(records))), "raise" if mode == "put_many_raise" else "return")
    elif mode in ("batch", "batch_abort"):
        futures = []
        try:
            with butler.batch(run, errors="return", chunk_size=chunk_size, max_concurrency=3) as batch:
                for obj, t, d in items:
                    futures.append(batch.put(obj, t, d, format=TYPES[t][1]))
                if mode == "batch_abort":
                    raise AbortedBlockError("the block failed")
            results = batch.results
        except AbortedBlockError as exc:
            results = [exc] * len(records)
        except Exception as exc:
            results = [exc] * len(records)
        for record, result, future in zip(records, results, futures + [None] * (len(records) - len(futures)),
                                          strict=True):
            record.result = result
            if future is not None and isinstance(result, DatasetRef):
                assert future.result(timeout=0) == result
    elif mode == "threads":
        barrier = threading.Barrier(len(records))

        def one(index: int) -> None:
            obj, t, d = items[index]
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=10)
            try:
                records[index].result = butler.put(obj, t, d, run=run, format=TYPES[t][1])
            except Exception as exc:
                records[index].result = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(records))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "a put thread hangs"
    elif mode == "two_batches":
        half = (len(records) + 1) // 2
        parts = [list(range(half)), list(range(half, len(records)))]
        threads = [threading.Thread(target=put_many, args=(part,)) for part in parts if part]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "a put_many thread hangs"
    else:
        raise AssertionError(f"unknown mode {mode}")


# -- parametrizations --------------------------------------------------------------------------------------


def _group_settings(examples: int, steps: int, divisor: int = 1) -> settings:
    """Shrinking a failure of this machine takes minutes (threads make some examples flaky to replay); it runs
    only with ``OBJBUTLER_MODEL_SHRINK=1``, so a failing default run stays short (its example is unshrunk)."""
    phases = list(Phase) if os.environ.get("OBJBUTLER_MODEL_SHRINK") == "1" else \
        [phase for phase in Phase if phase is not Phase.shrink]
    return settings(max_examples=_scaled(examples, divisor), stateful_step_count=_steps(steps), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True,
                    phases=phases)


def _run(target: Target, config: settings, skip_backoff: bool = False) -> collections.Counter[str]:
    """Run the group machine on the single-put model's runner (``skip_backoff``: the registry does not sleep)."""
    return _run_machine(target, config, skip_backoff, GroupCommitMachine)


@pytest.mark.parametrize("protocol", ["claimed", "sequenced", "timestamped"])
def test_group_commit_model_memory(protocol: str) -> None:
    timestamped = protocol == "timestamped"
    examples = {"claimed": 400, "sequenced": 80, "timestamped": 60}[protocol]
    stats = _run(Target(f"group-memory-{protocol}", _memory_repo, timestamped, timestamped, protocol),
                 _group_settings(examples, 12), skip_backoff=True)
    assert stats["item:ok"] > 0


@pytest.mark.parametrize("protocol", ["claimed", "sequenced"])
def test_group_commit_model_local(tmp_path: Path, protocol: str) -> None:
    stats = _run(Target(f"group-local-{protocol}", _local_repo(tmp_path), False, protocol=protocol),
                 _group_settings(40, 10, divisor=3), skip_backoff=True)
    assert stats["item:ok"] > 0


@pytest.mark.servers
def test_group_commit_model_localstack(localstack_backend: Backend) -> None:
    stats = _run(Target("group-localstack-claimed", _server_repo(localstack_backend), False),
                 _group_settings(5, 8, divisor=10))
    assert stats["item:ok"] > 0


# -- targeted tests ------------------------------------------------------------------------------------------


def _repo(name: str = "group") -> tuple[str, MemoryStore]:
    name = f"{name}-{uuid.uuid4().hex}"
    store = MemoryStore(name)
    Butler.create(f"memory://{name}", store=store)
    return f"memory://{name}", store


def _held(uri: str, store: Store, data_id: dict[str, int], run: str = "r") -> tuple[str, Any]:
    reader = Butler(uri, store=store)
    ref = reader.find("metric", data_id, run=run)
    return ref.id, reader.get(ref)


def test_late_claim_release_between_group_commit_attempts_keeps_the_winner() -> None:
    """A chunk's first attempt claims X1, finds X2 claimed by a writer its view does not know, releases X1
    (the delete times out and lands later) and commits X1 again: the claim it re-uses is the one whose
    delete is still in flight. Once that delete lands, a stale writer can claim and commit X1 too."""
    uri, inner = _repo()
    faulty = FaultyStore(inner, supersede=False)  # the delete lands whatever came after (no ordering)
    writer = Butler(uri, store=faulty)
    stale = Butler(uri, store=inner)
    writer.registry.refresh()
    stale.registry.refresh()
    stale.put({"token": 2}, "metric", {"visit": 2, "detector": 0}, run="r")  # writer's view does not know it
    faulty.plan.add(Fault("late", "delete", r"^manifest/claims/", occurrences=1))
    first, second = writer.put_many([({"token": 1}, "metric", {"visit": 1, "detector": 0}),
                                     ({"token": 3}, "metric", {"visit": 2, "detector": 0})],
                                    run="r", errors="return")
    assert isinstance(second, ConflictError), second
    faulty.flush_late()  # the release of the first attempt's claim on X1 lands
    again: DatasetRef | None = None
    with contextlib.suppress(ConflictError):  # X1 is committed or claimed: this must be refused (stale view)
        again = stale.put({"token": 99}, "metric", {"visit": 1, "detector": 0}, run="r")
    if isinstance(first, DatasetRef):
        assert again is None, "a stale writer committed X1 again: two puts of one data ID returned refs"
        assert _held(uri, inner, {"visit": 1, "detector": 0}) == (first.id, {"token": 1}), \
            "the ref put_many returned is no longer what a fresh reader holds"
    else:  # refusing X1 (its claim from the first attempt may still be deleted) keeps the contract too
        assert isinstance(first, ObjButlerError) and not isinstance(first, CommitOutcomeUnknownError), first
        assert _held(uri, inner, {"visit": 1, "detector": 0})[1] != {"token": 1}


def test_late_claim_release_after_an_unfinished_claim_keeps_the_committed_claim() -> None:
    """The same with one writer and no stale view (as the machine found it): X2's claim is left by a put that
    crashed after claiming; the chunk's first attempt claims X1, is refused X2, releases X1 late, then commits
    X1 on the claim whose delete is in flight. When it lands, committed X1 has no claim."""
    uri, inner = _repo()
    faulty = FaultyStore(inner, supersede=False)
    writer = Butler(uri, store=faulty)
    crashed = Butler(uri, store=inner)
    pending, _ = crashed.prepare_put({"token": 0}, "metric", {"visit": 2, "detector": 0}, "r")
    crashed.registry.claim_ahead([pending.dataset_type], pending.kinds, [pending.ref])  # and then it died
    faulty.plan.add(Fault("late", "delete", r"^manifest/claims/", occurrences=1))
    first, second = writer.put_many([({"token": 1}, "metric", {"visit": 1, "detector": 0}),
                                     ({"token": 3}, "metric", {"visit": 2, "detector": 0})],
                                    run="r", errors="return")
    assert isinstance(second, ConflictError), second
    faulty.flush_late()
    if isinstance(first, DatasetRef):
        key = claim_key(first.unique_key)
        try:
            claim = decode_claim(inner.get(key), key)
        except NotFoundError:
            raise AssertionError("committed X1 has no claim: the next writer with a stale view commits it again") \
                from None
        assert claim.dataset_id == first.id
    else:
        assert isinstance(first, ObjButlerError) and not isinstance(first, CommitOutcomeUnknownError), first


class _GateStore(StoreWrapper):
    """Holds thread ``refresher`` reading a checkpoint, and thread ``putter`` writing a log slot, until released."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.entered = {"refresher": threading.Event(), "putter": threading.Event()}
        self.release = {"refresher": threading.Event(), "putter": threading.Event()}

    def _gate(self, who: str) -> None:
        if threading.current_thread().name == who and not self.entered[who].is_set():
            self.entered[who].set()
            self.release[who].wait(10)

    def get(self, key: str) -> bytes:
        """Read, held for the refresher's checkpoint read."""
        if key.startswith("manifest/checkpoints/"):
            self._gate("refresher")
        return self.inner.get(key)

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Create, held for the putter's commit write."""
        if re.match(r"manifest/log/[0-9]{3}/", key):
            self._gate("putter")
        return self.inner.put_if_absent(key, data)


def test_threads_first_refresh_racing_a_put_keeps_its_commit_in_view() -> None:
    """Threads of one fresh Butler: one builds the view (its first refresh, e.g. a put's check) while another
    put commits. The refresh replaces the view after the put captured it; the put then applies its commit to
    the old view and advances the shared per-shard vector, so the Butler never reads that commit again: it
    cannot find a dataset it put (the machine saw a whole view lost: "registered: none yet")."""
    uri, inner = _repo()
    Butler(uri, store=inner).put({"token": 0}, "metric", {"visit": 0, "detector": 0}, run="r")
    gate = _GateStore(inner)
    butler = Butler(uri, store=gate)  # no view yet
    refresher = threading.Thread(target=butler.registry.refresh, name="refresher")
    refresher.start()
    assert gate.entered["refresher"].wait(10)
    result: dict[str, Any] = {}

    def put() -> None:
        result["ref"] = butler.put({"token": 1}, "metric", {"visit": 1, "detector": 0}, run="r")

    putter = threading.Thread(target=put, name="putter")
    putter.start()
    gate.entered["putter"].wait(2)  # a registry that serializes refreshes holds the put back instead: fine
    gate.release["refresher"].set()
    refresher.join(10)
    gate.release["putter"].set()
    putter.join(10)
    ref = result["ref"]
    assert Butler(uri, store=inner).find("metric", {"visit": 1, "detector": 0}, run="r").id == ref.id
    butler.registry.refresh()
    assert butler.find("metric", {"visit": 1, "detector": 0}, run="r").id == ref.id, \
        "the Butler that put it does not find it (its view skipped its own commit)"
    assert butler.get("metric", {"visit": 1, "detector": 0}, run="r") == {"token": 1}


@pytest.mark.parametrize("protocol", ["claimed", "sequenced", "timestamped"])
def test_chunk_failing_after_another_chunk_committed(protocol: str) -> None:
    """Chunk 1 commits, chunk 2's commit write is refused: chunk 1 stands, chunk 2 left nothing."""
    name = f"chunks-{uuid.uuid4().hex}"
    inner: Store = MemoryStore(name)
    if protocol == "timestamped":
        inner = IgnoresConditionsStore(inner)  # an atomic store degraded to the timestamped protocol
    uri = f"memory://{name}"
    created = Butler.create(uri, store=inner, commit_protocol=None if protocol == "timestamped" else protocol,
                            allow_no_atomic_create=protocol == "timestamped", checkpoint_interval=2)
    assert created.registry.protocol == protocol
    faulty = FaultyStore(inner)
    butler = Butler(uri, store=faulty)
    butler.registry.settle_seconds = 0.0
    method = "put" if protocol == "timestamped" else "put_if_absent"
    faulty.plan.add(Fault("refuse", method, r"^manifest/log/[0-9]", occurrences=2))
    items = [({"token": i}, "metric", {"visit": i, "detector": 0}) for i in range(4)]
    with mock.patch.object(registry_module, "time", _NoSleep()), mock.patch.object(slots_module, "time", _NoSleep()):
        results = butler.put_many(items, run="r", errors="return", chunk_size=2)
    faulty.flush_late()
    reader = Butler(uri, store=inner)
    outcomes = ["ok" if isinstance(r, DatasetRef) else type(r).__name__ for r in results]
    assert outcomes[:2] == ["ok", "ok"] and "ok" not in outcomes[2:], outcomes  # chunk 1 stands, chunk 2 refused
    for i, result in enumerate(results):
        if isinstance(result, DatasetRef):
            assert reader.get(reader.find("metric", {"visit": i, "detector": 0}, run="r")) == {"token": i}
        else:
            assert isinstance(result, ObjButlerError), outcomes
            if not isinstance(result, CommitOutcomeUnknownError):
                with pytest.raises(NotFoundError):
                    reader.find("metric", {"visit": i, "detector": 0}, run="r")
    assert not fsck(reader).dangling


def test_put_many_repos_under_faults_keeps_each_repository_atomic() -> None:
    """objbutler.multi: one put per repository, each behind its own faulty store (seeded schedules)."""
    counts: collections.Counter[str] = collections.Counter()
    with mock.patch.object(registry_module, "time", _NoSleep()), mock.patch.object(slots_module, "time", _NoSleep()):
        for seed in range(25):
            repos = [_repo(f"multi{k}") for k in range(2)]
            stores = [FaultyStore(store) for _, store in repos]
            targets = [(Butler(uri, store=faulty), fmt) for (uri, _), faulty, fmt in
                       zip(repos, stores, ["fits", "zarr"], strict=True)]
            for k, faulty in enumerate(stores):  # faults from here on (opening read the config cleanly)
                faulty.plan = FaultPlan(seed=seed * 7 + k, rate=0.15)
            results = put_many_repos(targets, payload("raw", seed), "raw", {"exposure": seed, "detector": 0}, "r")
            for (uri, store), faulty, result in zip(repos, stores, results, strict=True):
                faulty.flush_late()
                reader = Butler(uri, store=store)
                outcome = "ok" if result.ok else type(result.error).__name__
                counts[outcome] += 1
                if result.ok:
                    found = reader.find("raw", {"exposure": seed, "detector": 0}, run="r")
                    assert found.id == result.ref.id
                    assert int(reader.get(found).data.flat[0]) == seed
                else:
                    assert isinstance(result.error, ObjButlerError), repr(result.error)
                    if not isinstance(result.error, CommitOutcomeUnknownError):
                        assert list(reader.query()) == []
                assert not fsck(reader).dangling
    print(f"\nmulti: {dict(counts)}")
    assert counts["ok"] > 0

