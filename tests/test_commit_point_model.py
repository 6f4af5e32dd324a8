"""Hypothesis: puts under random store faults honour the commit-point contract.

Several Butlers (stale views) share ONE repository; each talks to it through its own
:class:`~objbutler.testing.faults.FaultyStore`, which breaks calls from a seeded random
schedule and where each put asks: failures before the request, lost answers, late writes
(applied a few calls later) and outright refusals, on the commit write (half of the
per-put faults), log and checkpoint listings and reads, checkpoint writes and deletes,
data writes and cleanups. Dataset types bring different data ID keys (``metric``
{visit, detector} JSON, ``raw`` {exposure, detector} FITS, ``calexp`` {visit} Zarr) and
``checkpoint_interval`` is 2 or 3, so checkpoints that must widen their schema are written
often; sessions are reopened at random, so writers start from those checkpoints.
Timestamped repositories run on a :class:`~objbutler.testing.faults.FastClockStore`, so a
step can let a minute of server time pass and timestamped checkpoints get written too.

The serial model: a put that returned is in the model with its content; a put that
raised ConflictError hit a data ID the model holds; a put that raised any other
ObjButlerError is in no fresh reader, even after every late write has landed; a put
that raised CommitOutcomeUnknownError is resolved from what a fresh reader sees once
late writes have landed. No put may raise anything but an ObjButlerError. After every
step (late writes flushed) a fresh Butler without faults sees exactly the model, every
dataset reads back with the content of the put that made it, and fsck finds no dangling
entry. Each run prints its counts (outcomes of puts, faults per kind, fates of late writes).

Scale the run with ``OBJBUTLER_MODEL_EXAMPLES=<n>`` (max_examples of the memory and
local machines; the LocalStack and Swift machines run a tenth of it, at least their
default of 8) and ``OBJBUTLER_MODEL_STEPS=<n>`` (steps per example), e.g. for a long run::

    OBJBUTLER_MODEL_EXAMPLES=1000 OBJBUTLER_MODEL_STEPS=40 \\
        python3 -m pytest tests/test_commit_point_model.py -s --timeout=0

(``--timeout=0`` lifts the per-test limit of pyproject.toml, which a long run exceeds.)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from conftest import Backend
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from objbutler import Butler
from objbutler.errors import CommitOutcomeUnknownError, ConflictError, NotFoundError, ObjButlerError
from objbutler.maintenance import fsck
from objbutler.registry import registry as registry_module
from objbutler.registry import slots as slots_module
from objbutler.registry.claims import claim_key
from objbutler.registry.records import DatasetRef
from objbutler.registry.state import unique_key
from objbutler.stores import Store, open_store
from objbutler.stores.local import LocalStore
from objbutler.stores.memory import MemoryStore
from objbutler.testing.faults import FastClockStore, Fault, FaultPlan, FaultyStore, IgnoresConditionsStore

SESSIONS = 3
_CONFIG_TEMPLATES: dict[str, bytes] = {}  # target name -> the objbutler.json Butler.create wrote
CONFIG_KEY = "objbutler.json"
RUNS = ("r1", "r2")
UniqueKey = tuple[str, str, str]

# type -> (data ID keys, format)
TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "metric": (("visit", "detector"), "json"),
    "raw": (("exposure", "detector"), "fits"),
    "calexp": (("visit",), "zarr"),
}

# Where the per-put faults strike: (methods, key regex). "late" on a read target becomes "before".
TARGETS: dict[str, tuple[str, str]] = {
    "commit": ("put|put_if_absent", r"^manifest/log/"),
    "log_list": ("list", r"^manifest/log/"),
    "log_read": ("get|get_many", r"^manifest/log/"),
    "log_delete": ("delete", r"^manifest/log/"),  # claimed: compaction deleting folded commits
    "claim": ("put_if_absent|get|delete", r"^manifest/claims/"),
    "registration": ("put_if_absent|get", r"^manifest/(types|dimensions)/"),
    "checkpoint_write": ("put|put_if_absent", r"^manifest/checkpoints/"),
    "checkpoint_list": ("list", r"^manifest/checkpoints/"),
    "checkpoint_delete": ("delete", r"^manifest/checkpoints/"),
    "checkpoint_read": ("get", r"^manifest/checkpoints/"),
    "data_write": ("put", r"^data/"),
    "data_cleanup": ("delete|list", r"^data/"),
}
WRITE_TARGETS = {"commit", "claim", "registration", "checkpoint_write", "checkpoint_delete", "data_write",
                 "data_cleanup", "log_delete"}


def _scaled(default: int, divisor: int = 1) -> int:
    wanted = os.environ.get("OBJBUTLER_MODEL_EXAMPLES")
    return max(default, int(wanted) // divisor) if wanted else default


def _steps(default: int) -> int:
    wanted = os.environ.get("OBJBUTLER_MODEL_STEPS")
    return int(wanted) if wanted else default


def _settings(examples: int, steps: int, divisor: int = 1) -> settings:
    return settings(max_examples=_scaled(examples, divisor), stateful_step_count=_steps(steps), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)


# -- what a test run is made of ------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """Where each example makes its repository.

    ``new_repo()`` returns a fresh URI and the store every Butler shares (faults are layered on top).
    ``timestamped``: the repository uses the timestamped protocol (a FastClockStore lets minutes pass);
    ``ignore_conditions``: degrade an atomic store to it with IgnoresConditionsStore;
    ``protocol``: on an atomic store, ``"claimed"`` (the default for new repositories) or ``"sequenced"``.
    """

    name: str
    new_repo: Callable[[], tuple[str, Store]]
    timestamped: bool
    ignore_conditions: bool = False
    protocol: str = "claimed"

    @property
    def expected_protocol(self) -> str:
        return "timestamped" if self.timestamped else self.protocol


FaultSpec = tuple[str, str, int | None, int | None]  # target, kind, occurrence (None: every), late after_calls

FAULT_SPECS = st.tuples(
    st.one_of(st.just("commit"), st.sampled_from(sorted(TARGETS))),  # the commit write gets half the faults
    st.sampled_from(["before", "lost_answer", "late", "refuse"]),
    st.sampled_from([1, 1, 2, None]),
    st.sampled_from([1, 2, 3, None]),
)


def to_fault(spec: FaultSpec) -> Fault:
    """A per-put fault rule from a drawn spec (``late`` on a read target becomes ``before``)."""
    target, kind, occurrence, after = spec
    methods, key = TARGETS[target]
    if kind == "late" and target not in WRITE_TARGETS:
        kind = "before"
    if kind == "late":
        methods = "|".join(m for m in methods.split("|") if m != "list") or "delete"
        return Fault("late", methods, key, occurrences=occurrence, after_calls=after)
    return Fault(kind, methods, key, occurrences=occurrence)


def data_id_for(dataset_type: str, a: int, b: int) -> dict[str, int]:
    keys = TYPES[dataset_type][0]
    return dict(zip(keys, (a, b), strict=False))


def payload(dataset_type: str, token: int) -> Any:
    """A dataset whose content names the put that made it (``token``)."""
    if dataset_type == "metric":
        return {"token": token}
    return np.full((4, 6), token, dtype=np.int32)


def token_of(obj: Any) -> int:
    """The token a stored dataset carries (see :func:`payload`)."""
    if isinstance(obj, dict):
        return int(obj["token"])
    data = np.asarray(obj.data)
    assert (data == data.flat[0]).all(), "an image came back with mixed content"
    return int(data.flat[0])


@dataclasses.dataclass
class Entry:
    token: int
    ref_id: str | None
    dataset_type: str
    data_id: dict[str, int]
    run: str


@dataclasses.dataclass(frozen=True)
class Put:
    session: int
    dataset_type: str
    a: int
    b: int
    run: str
    faults: tuple[FaultSpec, ...]


@dataclasses.dataclass(frozen=True)
class Refresh:
    session: int
    reopen: bool


@dataclasses.dataclass(frozen=True)
class Read:
    session: int
    pick: int
    cutout: bool


@dataclasses.dataclass(frozen=True)
class MinutePasses:
    """Timestamped targets only (a no-op elsewhere)."""


SESSION = st.integers(0, SESSIONS - 1)
PUTS = st.builds(Put, SESSION, st.sampled_from(sorted(TYPES)), st.integers(0, 2), st.integers(0, 1),
                 st.sampled_from(RUNS), st.lists(FAULT_SPECS, max_size=3).map(tuple))
ACTIONS = st.one_of(PUTS, PUTS, PUTS, st.builds(Refresh, SESSION, st.booleans()),
                    st.builds(Read, SESSION, st.integers(0, 10**6), st.booleans()), st.just(MinutePasses()))


# -- the machine ---------------------------------------------------------------------------------------------


class CommitPointMachine(RuleBasedStateMachine):
    """Several faulty Butlers on one repository against a serial model (see the module docstring)."""

    def __init__(self, target: Target, stats: collections.Counter[str] | None = None) -> None:
        super().__init__()
        self.target = target
        self.stats = stats if stats is not None else collections.Counter()
        self.model: dict[UniqueKey, Entry] = {}
        self.verified: dict[str, int] = {}  # ref id -> token already read back
        self.token = 0
        self.stores: list[FaultyStore] = []
        self.butlers: list[Butler] = []
        self.clock: FastClockStore | None = None
        self.advanced = 0

    # -- setup and teardown ------------------------------------------------------

    @initialize(seed=st.integers(0, 2**32 - 1), rate=st.sampled_from([0.0, 0.02, 0.05, 0.1]),
                interval=st.sampled_from([2, 3]), supersede=st.booleans())
    def setup(self, seed: int, rate: float, interval: int, supersede: bool) -> None:
        self.uri, inner = self.target.new_repo()
        if self.target.ignore_conditions:
            inner = IgnoresConditionsStore(inner)
        if self.target.timestamped:
            self.clock = FastClockStore(inner)
            inner = self.clock
        self.inner = inner
        self._create(interval)
        for session in range(SESSIONS):
            store = FaultyStore(inner, supersede=supersede)
            self.stores.append(store)
            self.butlers.append(self._open(store))
            store.plan = FaultPlan(seed=seed + session, rate=rate)

    def _create(self, interval: int) -> None:
        """Butler.create once per target; later examples copy its objbutler.json (create probes the store,
        ~0.4 s on a timestamped store, which would dominate a run of small examples)."""
        template = _CONFIG_TEMPLATES.get(self.target.name)
        if template is None:
            butler = Butler.create(self.uri, store=self.inner, checkpoint_interval=interval,
                                   allow_no_atomic_create=self.target.ignore_conditions,
                                   commit_protocol=None if self.target.timestamped else self.target.protocol,
                                   # claimed: two shards, so that writers share them and compaction deletes
                                   # slots a stale writer may still believe free
                                   log_shards=2 if self.target.expected_protocol == "claimed" else None)
            assert butler.registry.protocol == self.target.expected_protocol
            _CONFIG_TEMPLATES[self.target.name] = self.inner.get(CONFIG_KEY)
            return
        config = json.loads(template)
        config["checkpoint_interval"] = interval
        self.inner.put_if_absent(CONFIG_KEY, json.dumps(config, indent=2).encode())

    def _open(self, store: Store) -> Butler:
        butler = Butler(self.uri, store=store)
        butler.registry.settle_seconds = 0.0
        butler.registry.compaction_grace = 0.0  # claimed: compaction deletes folded commits at once, under faults
        return butler

    def teardown(self) -> None:
        self.stats["examples"] += 1
        self._flush()
        for store in self.stores:
            self.stats.update({f"fault:{kind}": n for kind, n in store.counts.items()})
            self.stats.update({f"late:{what}": n for what, n in store.late_outcomes.items()})

    def _flush(self) -> None:
        for store in self.stores:
            store.flush_late()

    def _fresh(self) -> tuple[Butler, dict[UniqueKey, DatasetRef]]:
        reader = Butler(self.uri, store=self.inner)
        view: dict[UniqueKey, DatasetRef] = {}
        for ref in reader.query():
            assert ref.unique_key not in view, f"a fresh reader lists {ref.unique_key} twice"
            view[ref.unique_key] = ref
        return reader, view

    def _token(self, reader: Butler, ref: DatasetRef) -> int:
        if ref.id not in self.verified:
            self.verified[ref.id] = token_of(reader.get(ref))
        return self.verified[ref.id]

    # -- the one rule -------------------------------------------------------------
    # One rule that draws an action, so that Hypothesis' swarm testing (which disables whole rules
    # in some examples) never leaves an example without puts; puts are half of the actions.

    @rule(action=ACTIONS)
    def step(self, action: Put | Refresh | Read | MinutePasses) -> None:
        if isinstance(action, Put):
            self.put(action)
        elif isinstance(action, Refresh):
            self.refresh(action)
        elif isinstance(action, Read):
            self.read(action)
        else:
            self.minute_passes()

    def put(self, action: Put) -> None:
        self.token += 1
        token = self.token
        dataset_type, session, run = action.dataset_type, action.session, action.run
        data_id = data_id_for(dataset_type, action.a, action.b)
        unique = unique_key(dataset_type, run, data_id)
        store = self.stores[session]
        store.plan.add(*(to_fault(spec) for spec in action.faults))
        first_fault = len(store.injected)
        ref = None
        try:
            ref = self.butlers[session].put(payload(dataset_type, token), dataset_type, data_id, run=run,
                                            format=TYPES[dataset_type][1])
            outcome = "ok"
        except CommitOutcomeUnknownError:
            outcome = "unknown"
        except ConflictError:
            outcome = "conflict"
        except ObjButlerError:
            outcome = "failed"
        except Exception as exc:
            raise AssertionError(f"put raised {type(exc).__name__}, not an ObjButlerError: {exc}") from exc
        finally:
            store.plan.clear()
        self.stats[f"put:{outcome}"] += 1
        injected = [(f.kind, f.method, f.key, f.source) for f in store.injected[first_fault:]]
        note(f"put #{token} {unique} through session {session}: {outcome}; faults injected: {injected}")
        self._flush()
        reader, view = self._fresh()
        held = view.get(unique)
        if outcome == "ok":
            assert (ref.dataset_type, ref.run) == (dataset_type, run), ref
            assert unique not in self.model, f"a second put of {unique} succeeded"
            assert held is not None and held.id == ref.id, f"a put that returned is not visible: {unique}"
            self.model[unique] = Entry(token, ref.id, dataset_type, data_id, run)
        elif outcome == "conflict":
            assert unique in self.model or self._unfinished_claim(unique, view), \
                f"ConflictError on a data ID the model has free: {unique}"
        elif outcome == "unknown" and unique not in self.model and held is not None:
            assert self._token(reader, held) == token, f"{unique} appeared with content no put returned"
            self.model[unique] = Entry(token, held.id, dataset_type, data_id, run)

    def _unfinished_claim(self, unique: UniqueKey, view: dict[UniqueKey, DatasetRef]) -> bool:
        """Claimed protocol: a claim left by an earlier put that failed or whose outcome was unknown (and which
        did not land) refuses the data ID until vacuum clears it; the refusal says so."""
        if self.target.expected_protocol != "claimed" or unique in view:
            return False
        try:
            self.inner.get(claim_key(unique))
        except NotFoundError:
            return False
        self.stats["conflict:unfinished-claim"] += 1
        return True

    def refresh(self, action: Refresh) -> None:
        """Refresh a session's view, or reopen it (a new process, starting from the newest checkpoint)."""
        try:
            if action.reopen:
                self.butlers[action.session] = self._open(self.stores[action.session])
            else:
                self.butlers[action.session].registry.refresh()
        except ObjButlerError:
            self.stats["refresh:failed"] += 1

    def read(self, action: Read) -> None:
        """Reads through a faulty store fail with an ObjButlerError or return the put's content."""
        if not self.model:
            return
        entry = list(self.model.values())[action.pick % len(self.model)]
        butler = self.butlers[action.session]
        try:
            if action.cutout and entry.dataset_type != "metric":
                stamps = butler.get_cutouts(entry.dataset_type, entry.data_id, entry.run, [(1, 1, 3, 4)])
                assert [token_of(stamp) for stamp in stamps] == [entry.token]
            else:
                assert token_of(butler.get(entry.dataset_type, entry.data_id, run=entry.run)) == entry.token
        except NotFoundError as exc:
            raise AssertionError(f"a committed dataset is not found through a Butler: {exc}") from exc
        except ObjButlerError:
            self.stats["read:failed"] += 1

    def minute_passes(self) -> None:
        """A minute passes on the server: earlier timestamped commits become settled (checkpointable)."""
        if self.clock is not None and self.advanced < 90:  # stay well inside the log's two-hour skew window
            self.clock.advance(61)
            self.advanced += 1

    # -- invariants --------------------------------------------------------------

    @invariant()
    def fresh_reader_sees_the_model(self) -> None:
        self.stats["checks"] += 1
        self._flush()
        reader, view = self._fresh()
        missing = sorted(set(self.model) - set(view))
        extra = sorted(set(view) - set(self.model))
        assert not missing and not extra, f"fresh reader differs from the model: missing {missing}, extra {extra}"
        for unique, ref in view.items():
            entry = self.model[unique]
            assert entry.ref_id is None or ref.id == entry.ref_id, f"{unique} is held by another dataset"
            assert self._token(reader, ref) == entry.token, f"{unique} reads back other content"
        report = fsck(reader)
        assert not report.dangling, f"dangling entries: {report.dangling}"


# -- parametrizations --------------------------------------------------------------------------------------


class _NoSleep:
    """The ``time`` module without ``sleep``: the registry's retry backoffs, for in-process targets."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        """Return at once."""


def _run(target: Target, config: settings, skip_backoff: bool = False,
         machine: type[CommitPointMachine] | None = None) -> collections.Counter[str]:
    """Run the machine (``machine``: a subclass, e.g. the group-commit model's); ``skip_backoff``: the
    registry does not sleep between retries.

    In the model nothing runs concurrently and late writes land after a number of calls, not of seconds,
    so a backoff only costs time (a put whose every commit write fails sleeps ~3 s). Server targets keep
    it: their clocks and listings are real.
    """
    stats: collections.Counter[str] = collections.Counter()
    with contextlib.ExitStack() as patches:
        if skip_backoff:
            patches.enter_context(mock.patch.object(registry_module, "time", _NoSleep()))
            patches.enter_context(mock.patch.object(slots_module, "time", _NoSleep()))
        run_state_machine_as_test(lambda: (machine or CommitPointMachine)(target, stats), settings=config)
    print(f"\n{target.name}: {dict(sorted(stats.items()))}")
    return stats


def _memory_repo() -> tuple[str, Store]:
    name = f"commit-point-{uuid.uuid4().hex}"
    return f"memory://{name}", MemoryStore(name)


def _local_repo(base: Path) -> Callable[[], tuple[str, Store]]:
    def new_repo() -> tuple[str, Store]:
        path = base / uuid.uuid4().hex[:12]
        return str(path), LocalStore(path)

    return new_repo


def _server_repo(backend: Backend) -> Callable[[], tuple[str, Store]]:
    def new_repo() -> tuple[str, Store]:
        uri = backend.new_uri()
        return uri, open_store(uri, **backend.options)

    return new_repo


@pytest.mark.parametrize("protocol", ["claimed", "sequenced", "timestamped"])
def test_commit_point_model_memory(protocol: str) -> None:
    timestamped = protocol == "timestamped"
    stats = _run(Target(f"memory-{protocol}", _memory_repo, timestamped, timestamped, protocol), _settings(100, 25),
                 skip_backoff=True)
    assert stats["put:ok"] > 0


@pytest.mark.parametrize("protocol", ["claimed", "sequenced", "timestamped"])
def test_commit_point_model_local(tmp_path: Path, protocol: str) -> None:
    timestamped = protocol == "timestamped"
    stats = _run(Target(f"local-{protocol}", _local_repo(tmp_path), timestamped, timestamped, protocol),
                 _settings(40, 20), skip_backoff=True)
    assert stats["put:ok"] > 0


@pytest.mark.servers
@pytest.mark.parametrize("protocol", ["claimed", "sequenced"])
def test_commit_point_model_localstack(localstack_backend: Backend, protocol: str) -> None:
    stats = _run(Target(f"localstack-{protocol}", _server_repo(localstack_backend), False, protocol=protocol),
                 _settings(8, 15, divisor=10))
    assert stats["put:ok"] > 0


@pytest.mark.servers
def test_commit_point_model_swift(swift_backend: Backend) -> None:
    stats = _run(Target("swift", _server_repo(swift_backend), True), _settings(8, 15, divisor=10))
    assert stats["put:ok"] > 0


# -- several processes ----------------------------------------------------------------------------------------

PROCESSES = 3
PUTS_PER_PROCESS = 18


def _jobs(index: int) -> list[tuple[str, dict[str, int], str]]:
    """Each process: its own metrics, and raws and calexps that race the other processes'."""
    jobs = []
    for i in range(PUTS_PER_PROCESS):
        if i % 3 == 0:
            jobs.append(("metric", {"visit": 100 + i, "detector": index}, "r1"))
        elif i % 3 == 1:
            jobs.append(("raw", {"exposure": i % 4, "detector": 0}, "r1"))
        else:
            jobs.append(("calexp", {"visit": i % 5}, "r1"))
    return jobs


def _process_writer(root: str, index: int, seed: int, barrier: Any, results: Any) -> None:
    """One writer process: puts through its own FaultyStore, reports every outcome by token (or why it died)."""
    try:
        results.put(_write(root, index, seed, barrier))
    except BaseException as exc:
        results.put({"index": index, "died": f"{type(exc).__name__}: {exc}"})
        raise


def _open_through_faults(root: str, store: FaultyStore, attempts: int = 20) -> Butler:
    """Open the repository through a faulty store: opening reads objbutler.json through the faults too."""
    for _ in range(attempts - 1):
        try:
            return Butler(root, store=store)
        except ObjButlerError:
            continue
    return Butler(root, store=store)  # the last attempt's error is the test's


def _write(root: str, index: int, seed: int, barrier: Any) -> dict[str, Any]:
    outcomes: list[dict[str, Any]] = []
    store = FaultyStore(LocalStore(root), FaultPlan(seed=seed, rate=0.04, late_after_calls=(1, 3)))
    barrier.wait()
    butler = _open_through_faults(root, store)
    for i, (dataset_type, data_id, run) in enumerate(_jobs(index)):
        token = (index + 1) * 1000 + i
        record: dict[str, Any] = {"type": dataset_type, "data_id": data_id, "run": run, "token": token}
        try:
            ref = butler.put(payload(dataset_type, token), dataset_type, data_id, run=run,
                             format=TYPES[dataset_type][1])
            record.update(outcome="ok", id=ref.id)
        except CommitOutcomeUnknownError:
            record["outcome"] = "unknown"
        except ConflictError:
            record["outcome"] = "conflict"
        except ObjButlerError as exc:
            record.update(outcome="failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            record.update(outcome="crash", error=f"{type(exc).__name__}: {exc}")
        outcomes.append(record)
    store.flush_late()
    return {"index": index, "outcomes": outcomes, "faults": dict(store.counts), "late": dict(store.late_outcomes)}


@pytest.mark.parametrize("protocol", ["claimed", "sequenced"])
def test_processes_with_faults_keep_the_commit_point(tmp_path: Path, protocol: str) -> None:
    root = str(tmp_path / "repo")
    Butler.create(root, checkpoint_interval=2, commit_protocol=protocol)
    seed_butler = Butler(root)
    for visit in range(5):  # a checkpoint of {visit, detector} exists before raw brings "exposure"
        seed_butler.put({"token": visit}, "metric", {"visit": visit, "detector": 9}, run="r1")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [context.Process(target=_process_writer, args=(root, index, 1000 + index, barrier, results))
                 for index in range(PROCESSES)]
    for process in processes:
        process.start()
    collected = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert [result["died"] for result in collected if "died" in result] == []
    records = [record for result in collected for record in result["outcomes"]]
    outcomes = collections.Counter(record["outcome"] for record in records)
    faults = sum((collections.Counter(result["faults"]) for result in collected), collections.Counter())
    late = sum((collections.Counter(result["late"]) for result in collected), collections.Counter())
    print(f"\nprocesses: outcomes {dict(outcomes)}, faults {dict(faults)}, late writes {dict(late)}")
    assert [r for r in records if r["outcome"] == "crash"] == []
    reader = Butler(root)
    view = {ref.unique_key: ref for ref in reader.query()}
    by_token = {}
    for unique, ref in view.items():
        by_token[token_of(reader.get(ref))] = unique
    expected = {unique_key("metric", "r1", {"visit": v, "detector": 9}) for v in range(5)}
    for record in records:
        unique = unique_key(record["type"], record["run"], record["data_id"])
        if record["outcome"] == "ok":
            assert unique in view and view[unique].id == record["id"], f"returned put not visible: {record}"
            expected.add(unique)
        elif record["outcome"] == "unknown":
            if by_token.get(record["token"]) == unique:
                expected.add(unique)
        else:
            assert record["token"] not in by_token, f"a failed put is visible: {record}"
    assert set(view) == expected
    report = fsck(reader)
    assert not report.dangling, report.dangling
    assert outcomes["ok"] > 0
