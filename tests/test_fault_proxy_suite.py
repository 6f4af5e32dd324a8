"""Fault suite: every store call of put, get, get_cutouts, query and clone, through a fault-injecting proxy.

Each backend (LocalStack S3, a Swift node, moto) gets one
:class:`~objbutler.testing.faultproxy.FaultProxy` in front of it for the
module; Butlers under test reach the server only through it, with a short
retry policy (3 attempts, no backoff), so that a fault that fires on every
attempt exhausts the retries at once. Verification always goes straight to
the server, never through the proxy.

The contract checked after every fault run (the commit point):

* a put that returned a ref is committed (a fresh Butler finds it by id) and
  ``get`` returns exactly the data that was put;
* a put that raised an ``ObjButlerError`` other than
  ``CommitOutcomeUnknownError`` left no committed entry;
* a put that raised ``CommitOutcomeUnknownError`` may or may not have
  committed, but an entry it made has its data;
* a put never raises anything but an ``ObjButlerError``;
* ``fsck`` reports no dangling entry.

Reads (get, cutouts, query, clone's source reads) must either return exactly
what is stored or raise an ``ObjButlerError``. Reads that return wrong data
without an error are reported as ``SILENT-CORRUPTION`` problems: HTTP gives
no integrity check of its own, so those need checksum verification on the
client (of data on get and cutouts, of log entries and checkpoints on
registry reads); the assertion is the same, the label says why it fails.

Test groups: ``test_put_faults`` (each store call of put, every kind),
``test_known_bug_*`` (the three commit-point bugs, one dataset type so that
nothing else interferes), ``test_lost_commit_answer_then_unreadable_log``
(the unknown outcome), ``test_corrupted_read_of_the_own_commit``,
``test_random_faults_on_every_call``,
``test_writer_that_misread_the_log_keeps_the_registry_intact`` (a corrupted
log read must not reach a checkpoint), ``test_read_faults`` (get, cutouts,
query), ``test_clone_faults``, and the proxy's own tests.

At the end of the module the faults injected are summed per backend and kind,
printed as a table and written to ``$TMPDIR/objbutler-fault-proxy-summary.json``;
the last test asserts that every kind was injected at least 50 times when the
whole module ran.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import http.client
import json
import re
import tempfile
import threading
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS
from conftest import s3_options, swift_options
from objbutler_servers import ServerInfo

from objbutler import Box, Butler
from objbutler.clone import clone
from objbutler.errors import CommitOutcomeUnknownError, ObjButlerError
from objbutler.maintenance import fsck
from objbutler.ranges import CostModel
from objbutler.registry.records import DatasetRef
from objbutler.stores import RetryPolicy, open_store
from objbutler.stores.s3 import S3Store
from objbutler.stores.swift import SwiftStore
from objbutler.testing.faultproxy import FAULT_KINDS, FaultProxy, Rule, kinds_summary

pytestmark = [pytest.mark.servers, pytest.mark.timeout(900)]

FAST = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)
"""The retry policy of every Butler under test: a fault on every attempt exhausts it at once."""
TIMEOUT = 2.0
"""Client read timeout through the proxy (a long stall exceeds it)."""
SHORT_STALL = 0.1
LONG_STALL = 2.5
LATE = 1.0
"""Seconds a ``late_apply`` holds a request back (the dedicated late-commit test uses 3 s)."""
SIDE = 64
RUN = "faults"
MIN_PER_KIND = 50
SUMMARY = Path(tempfile.gettempdir()) / "objbutler-fault-proxy-summary.json"

WRITE_KINDS = ("reset", "error", "lost_answer", "late_apply", "stall")
READ_KINDS = ("reset", "error", "lost_answer", "late_apply", "truncate", "flip", "stall")
RANGE_KINDS = (*READ_KINDS, "ignore_range")
# A byte flipped in transit inside a range read of plain FITS pixels cannot be detected: the registry's
# checksum covers the whole object, and a range read fetches a few hundred bytes of it. Integrity in transit
# comes from TLS (https endpoints); at rest, from `fsck --verify-checksums` (docs/design.md, "What a read
# verifies"). Compressed tiles and whole-object reads are checked; plain-pixel range reads are not flipped here.
PLAIN_RANGE_KINDS = tuple(kind for kind in RANGE_KINDS if kind != "flip")

_LEDGER: list[dict[str, Any]] = []
"""One record per test that used a target: its faults per kind and its outcomes."""


# -- backends behind proxies ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """A backend reached through a fault proxy (``via``) or directly (``direct``)."""

    name: str
    proxy: FaultProxy
    base: str
    via: dict[str, Any]
    direct: dict[str, Any]

    @property
    def sequenced(self) -> bool:
        return self.name != "swift"

    def new_uri(self) -> str:
        return f"{self.base}/{uuid.uuid4().hex[:12]}"

    def new_repo(self, checkpoint_interval: int = 3, commit_protocol: str | None = None) -> str:
        """A fresh repository (made directly); on Swift with a 0.1 s settle time to keep the suite short."""
        uri = self.new_uri()
        Butler.create(uri, checkpoint_interval=checkpoint_interval, commit_protocol=commit_protocol, **self.direct)
        if not self.sequenced:
            store = open_store(uri, **self.direct)
            document = json.loads(store.get("objbutler.json"))
            document["settle_seconds"] = 0.1  # a single local node: its listings are current at once
            store.put("objbutler.json", json.dumps(document, indent=2).encode())
        return uri

    def butler(self, uri: str) -> Butler:
        """A Butler whose every request goes through the proxy."""
        return Butler(uri, **self.via)

    def reader(self, uri: str) -> Butler:
        """A fresh Butler straight to the server (for verification)."""
        return Butler(uri, **self.direct)


def _s3_target(name: str, info: ServerInfo, proxy: FaultProxy) -> Target:
    direct = s3_options(info)
    bucket = f"faults-{uuid.uuid4().hex[:8]}"
    list(S3Store(bucket, create_bucket=True, **direct).list())
    via = {**direct, "endpoint_url": proxy.url, "retry": FAST, "read_timeout": TIMEOUT, "connect_timeout": TIMEOUT}
    return Target(name, proxy, f"s3://{bucket}", via, direct)


@pytest.fixture(scope="module")
def localstack_target(localstack_server: ServerInfo) -> Iterator[Target]:
    with FaultProxy(localstack_server.endpoint) as proxy:
        yield _s3_target("localstack", localstack_server, proxy)


@pytest.fixture(scope="module")
def moto_target(moto_server: ServerInfo) -> Iterator[Target]:
    with FaultProxy(moto_server.endpoint) as proxy:
        yield _s3_target("moto", moto_server, proxy)


@pytest.fixture(scope="module")
def swift_target(swift_server: ServerInfo) -> Iterator[Target]:
    with FaultProxy(swift_server.endpoint) as proxy:
        direct = swift_options(swift_server)
        container = f"faults-{uuid.uuid4().hex[:8]}"
        list(SwiftStore(container, create_container=True, **direct).list())
        via = {**direct, "auth_url": proxy.rewrite_url(direct["auth_url"]), "retry": FAST, "timeout": TIMEOUT}
        yield Target("swift", proxy, f"swift://{container}", via, direct)


@pytest.fixture
def target(request: pytest.FixtureRequest, backend: str) -> Iterator[Target]:
    """The backend's target for one test; books the faults the test injected, clears rules after it."""
    chosen: Target = request.getfixturevalue(f"{backend}_target")
    chosen.proxy.clear_rules()
    before = chosen.proxy.counts()
    record: dict[str, Any] = {"test": request.node.name, "backend": backend, "faults": {}, "outcomes": {}}
    request.node.fault_record = record
    yield chosen
    chosen.proxy.clear_rules()
    chosen.proxy.settle(30)  # late applies and requests still being booked
    after = chosen.proxy.counts()
    record["faults"] = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) > before.get(k, 0)}
    _LEDGER.append(record)


def _note(request: pytest.FixtureRequest, outcome: str) -> None:
    record = getattr(request.node, "fault_record", None)
    if record is not None:
        record["outcomes"][outcome] = record["outcomes"].get(outcome, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def fault_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """At the end of the module: the table of faults injected per backend and kind (terminal and JSON)."""
    started = time.monotonic()
    yield
    per_backend: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for record in _LEDGER:
        per_backend[record["backend"]].update(record["faults"])
    total = kinds_summary(per_backend.values())
    backends = sorted(per_backend)
    summary = {
        "seconds": round(time.monotonic() - started, 1),
        "tests": len(_LEDGER),
        "total": total,
        "per_backend": {b: {k: per_backend[b].get(k, 0) for k in FAULT_KINDS} for b in backends},
        "tests_detail": _LEDGER,
    }
    SUMMARY.write_text(json.dumps(summary, indent=2, default=str))
    lines = [f"fault proxy suite: faults injected per kind ({summary['tests']} fault runs, "
             f"{summary['seconds']} s; {SUMMARY})",
             f"{'kind':<14}" + "".join(f"{b:>12}" for b in backends) + f"{'total':>10}"]
    for kind in FAULT_KINDS:
        lines.append(f"{kind:<14}" + "".join(f"{per_backend[b].get(kind, 0):>12}" for b in backends)
                     + f"{total[kind]:>10}")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)
        else:
            print("\n".join(lines))


# -- datasets ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Attempt:
    """One put: what it wrote and how it ended."""

    index: int
    dataset_type: str
    data_id: dict[str, int]
    obj: Any
    format: str | None
    options: dict[str, Any] | None
    fingerprint: str
    label: str = ""
    ref: DatasetRef | None = None
    error: Exception | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.dataset_type, json.dumps(self.data_id, sort_keys=True)

    def outcome(self) -> str:
        if self.ref is not None:
            return "returned"
        assert self.error is not None
        return type(self.error).__name__

    def __str__(self) -> str:
        return f"put #{self.index} [{self.label}] {self.dataset_type} {self.data_id}"


def _calexp(rng: np.random.Generator, visit: int) -> tuple[fits.PrimaryHDU, np.ndarray, list[float]]:
    data = rng.normal(100.0, 10.0, (SIDE, SIDE)).astype(np.float32)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0 + (visit % 1000) * 1e-3, 2.0]
    wcs.wcs.crpix = [SIDE / 2 + 0.5, SIDE / 2 + 0.5]
    wcs.wcs.cdelt = [-5e-5, 5e-5]
    return fits.PrimaryHDU(data, header=wcs.to_header()), data, list(wcs.wcs.crval)


def fingerprint(dataset_type: str, obj: Any) -> str:
    """What identifies a dataset's content: pixels (and WCS) of an image, the JSON of a metric."""
    if dataset_type == "metric":
        return json.dumps(obj, sort_keys=True)
    data = np.asarray(obj.data if hasattr(obj, "data") and not isinstance(obj, np.ndarray) else obj)
    dtype = "<f4" if dataset_type == "calexp" else "<u2"
    text = f"{data.shape}:{hashlib.sha256(np.ascontiguousarray(data, dtype=dtype).tobytes()).hexdigest()}"
    wcs = getattr(obj, "wcs", None)
    if dataset_type == "calexp":
        text += f":{[round(float(v), 9) for v in wcs.wcs.crval] if wcs is not None else None}"
    return text


class Workload:
    """Makes unique datasets of three types with different data ID keys, rotating between them.

    ``calexp``: a FITS image with a WCS, data ID {visit, detector}; ``raw``: a
    Zarr array in four chunks (five objects), {exposure, detector}; ``metric``:
    a JSON dict, {visit}.
    """

    def __init__(self, seed: int, types: tuple[str, ...] = ("calexp", "raw", "metric")) -> None:
        self.seed = seed
        self.types = types
        self.count = 0

    def next(self, label: str = "") -> Attempt:
        attempt = self._make()
        attempt.label = label
        return attempt

    def _make(self) -> Attempt:
        i = self.count
        self.count += 1
        rng = np.random.default_rng([self.seed, i])
        base = (self.seed % 1000) * 100 + i
        kind = self.types[i % len(self.types)]
        if kind == "calexp":
            visit = 100_000 + base
            hdu, data, crval = _calexp(rng, visit)
            expected = f"{data.shape}:{hashlib.sha256(data.astype('<f4').tobytes()).hexdigest()}"
            expected += f":{[round(float(v), 9) for v in crval]}"
            return Attempt(i, "calexp", {"visit": visit, "detector": i % 9}, hdu, "fits", None, expected)
        if kind == "raw":
            pixels = rng.integers(0, 60_000, (SIDE, SIDE), dtype=np.uint16)
            return Attempt(i, "raw", {"exposure": 500_000 + base, "detector": i % 9}, pixels, "zarr",
                           {"chunks": (32, 32)}, fingerprint("raw", pixels))
        metric = {"visit": 100_000 + base, "token": f"{self.seed}-{i}", "value": round(float(rng.normal()), 6)}
        return Attempt(i, "metric", {"visit": 100_000 + base}, metric, None, None, fingerprint("metric", metric))


def do_put(butler: Butler, attempt: Attempt) -> Attempt:
    try:
        attempt.ref = butler.put(attempt.obj, attempt.dataset_type, attempt.data_id, run=RUN,
                                 format=attempt.format, format_options=attempt.options)
    except Exception as exc:  # every outcome is judged by the contract below
        attempt.error = exc
    return attempt


# -- the contract -----------------------------------------------------------------------------------------------


def contract_problems(target: Target, uri: str, attempts: list[Attempt]) -> list[str]:
    """Everything that breaks the commit-point contract, checked straight on the server."""
    target.proxy.settle(30)  # late applies land first: a commit that lands late must be judged too
    problems = []
    for a in attempts:
        if a.error is not None and not isinstance(a.error, ObjButlerError):
            problems.append(f"{a} raised a non-objbutler {type(a.error).__name__}: {a.error!r}")
    reader = target.reader(uri)
    refs = reader.query()
    by_id = {ref.id: ref for ref in refs}
    by_key = {a.key: a for a in attempts}
    for a in attempts:
        if a.ref is not None and a.ref.id not in by_id:
            problems.append(f"{a} returned ref {a.ref.id} but a fresh Butler does not find it")
    for ref in refs:
        a = by_key.get((ref.dataset_type, json.dumps(dict(ref.data_id), sort_keys=True)))
        if a is None:
            problems.append(f"entry {ref.id} {ref.dataset_type} {ref.data_id} was made by no put of this test")
            continue
        if a.ref is not None and a.ref.id != ref.id:
            problems.append(f"{a} returned ref {a.ref.id} but the registry holds {ref.id} for its data ID")
        elif a.ref is None and not isinstance(a.error, CommitOutcomeUnknownError):
            problems.append(f"{a} raised {type(a.error).__name__} ({a.error}) but its entry {ref.id} is committed")
        try:
            got = reader.get(ref)
        except ObjButlerError as exc:
            problems.append(f"entry {ref.id} of {a} ({a.outcome()}) cannot be read: {type(exc).__name__}: {exc}")
            continue
        if fingerprint(ref.dataset_type, got) != a.fingerprint:
            problems.append(f"entry {ref.id} of {a} ({a.outcome()}) reads back other data than was put")
    report = fsck(reader)
    for ref, why in report.dangling:
        owner = by_key.get((ref.dataset_type, json.dumps(dict(ref.data_id), sort_keys=True)))
        problems.append(f"fsck: dangling entry {ref.id} {ref.dataset_type} {ref.data_id}: {why} "
                        f"({owner}: {owner.outcome() if owner else '?'})")
    return problems


def assert_contract(request: pytest.FixtureRequest, target: Target, uri: str, attempts: list[Attempt]) -> None:
    for a in attempts:
        _note(request, a.outcome())
    problems = contract_problems(target, uri, attempts)
    assert not problems, f"{len(problems)} contract violation(s) on {target.name}:\n  " + "\n  ".join(problems)


# -- rules per store call -----------------------------------------------------------------------------------------

LISTING = ""  # a listing's path is the bucket or container alone: matched by its query
STEPS: dict[str, dict[str, Any]] = {
    # the store calls of a put, as the proxy sees them
    "data_put": {"methods": "PUT", "path": r"/data/"},
    "commit_put": {"methods": "PUT", "path": r"/manifest/log/.+\.json$"},
    "checkpoint_put": {"methods": "PUT", "path": r"/manifest/checkpoints/"},
    "checkpoint_list": {"methods": "GET", "path": LISTING, "query": r"prefix=[^&]*manifest/checkpoints/"},
    "checkpoint_delete": {"methods": "DELETE", "path": r"/manifest/checkpoints/"},
    "log_list": {"methods": "GET", "path": LISTING, "query": r"prefix=[^&]*manifest/log/"},
    "log_get": {"methods": "GET", "path": r"/manifest/log/.+\.json$"},
}
SEQUENCED_ONLY = {"checkpoint_put", "checkpoint_list", "checkpoint_delete"}  # Swift checkpoints need a minute
ONE_CALL = {"commit_put", "log_list", "log_get"}
"""Steps of the commit itself: the exhausting fault fails every attempt of one store call (not every call after)."""


def step_kinds(step: str) -> tuple[str, ...]:
    return WRITE_KINDS if STEPS[step]["methods"] in ("PUT", "DELETE") else READ_KINDS


def _rule(kind: str, where: dict[str, Any], **options: Any) -> Rule:
    defaults: dict[str, Any] = {"delay": LATE, "stall": SHORT_STALL}
    return Rule(kind, **{**defaults, **where, **options})  # type: ignore[arg-type]


def _exhausting(kind: str, step: str, where: dict[str, Any]) -> Rule:
    """The rule that makes one put's store call fail on every attempt."""
    if kind == "stall":
        # An answer held back past the client's read timeout: the request was applied, the client retries.
        return _rule(kind, where, nth=1, stall=LONG_STALL if step == "commit_put" else SHORT_STALL)
    if step in ONE_CALL:
        return _rule(kind, where, times=FAST.attempts)
    return _rule(kind, where)  # every attempt of every call, for the whole put


PUT_CASES = [
    pytest.param(backend, step, id=f"{backend}-{step}")
    for backend in ("localstack", "swift")
    for step in STEPS
    if not (backend == "swift" and step in SEQUENCED_ONLY)
] + [pytest.param("moto", "commit_put", id="moto-commit_put")]


@pytest.mark.parametrize(("backend", "step"), PUT_CASES)
def test_put_faults(request: pytest.FixtureRequest, target: Target, step: str) -> None:
    """Every fault kind on one store call of put: first on half of the requests, then on every attempt.

    Two writers alternate for the puts with faults on half of the requests,
    so each of those starts from a stale view: on S3 the commit create loses
    the race once and the writer re-reads the log tail (the log LIST and GETs
    happen inside the put). The put with a fault on every attempt is made by
    the writer whose view is current, so that its commit create goes to a free
    slot (except for the log steps, which need the stale path). For the
    commit's own calls "every attempt" means every attempt of one store call
    (the store's retries are exhausted once); elsewhere, every request of the
    put. Checkpoint steps (S3 only: a Swift checkpoint waits for commits a
    minute old) use a checkpoint on every commit, so that housekeeping
    (checkpoint PUT, LIST, DELETE of the fourth-newest) runs in every put.
    """
    checkpoints = step in SEQUENCED_ONLY
    uri = target.new_repo(1 if checkpoints else 3)
    writers = [target.butler(uri), target.butler(uri)]
    work = Workload(seed=zlib.crc32(f"{target.name}/{step}".encode()) % 997)
    attempts: list[Attempt] = []

    def put(label: str, stale: bool = True) -> None:
        # A stale writer loses the commit race once and re-reads the log inside its put; a current one does not.
        turn = len(attempts) % 2 if stale else (len(attempts) - 1) % 2
        attempts.append(do_put(writers[turn], work.next(label)))

    for _ in range(4 if checkpoints else 1):
        put("before")
    where = STEPS[step]
    for number, kind in enumerate(step_kinds(step)):
        half = target.proxy.add(_rule(kind, where, probability=0.5, seed=number))
        for _ in range(2 if target.sequenced else 1):  # Swift puts wait out a settle time: fewer of them
            put(f"{kind} on half")
        target.proxy.remove(half)
        target.proxy.add(_exhausting(kind, step, where))
        put(f"{kind} on every attempt", stale=step in ("log_list", "log_get"))
        target.proxy.clear_rules()
        if kind == "late_apply":
            target.proxy.settle()  # what was held back lands before the next put could take its slot
    put("after")  # and the writers go on
    assert_contract(request, target, uri, attempts)


@pytest.mark.parametrize("backend", ["localstack", "swift", "moto"])
def test_known_bug_1_lost_commit_answer(request: pytest.FixtureRequest, target: Target) -> None:
    """The server applies the commit PUT; the client sees a reset on every attempt of it (known bug 1)."""
    uri = target.new_repo(3)
    writer = target.butler(uri)
    work = Workload(seed=17, types=("metric",))
    attempts = [do_put(writer, work.next("before"))]
    with target.proxy.rule("lost_answer", methods="PUT", path=STEPS["commit_put"]["path"], times=FAST.attempts):
        attempts.append(do_put(writer, work.next("commit answer lost on every attempt")))
    attempts.append(do_put(writer, work.next("after")))
    assert_contract(request, target, uri, attempts)


@pytest.mark.parametrize("backend", ["localstack", "moto"])
@pytest.mark.parametrize("call", ["checkpoint_list", "checkpoint_delete"])
def test_known_bug_2_checkpoint_housekeeping(request: pytest.FixtureRequest, target: Target, call: str) -> None:
    """503 on the checkpoint LIST or on the DELETE of an old checkpoint, after the commit (known bug 2)."""
    uri = target.new_repo(1)
    writer = target.butler(uri)
    work = Workload(seed=19, types=("metric",))
    attempts = [do_put(writer, work.next("before")) for _ in range(4)]  # four checkpoints: the next put prunes
    with target.proxy.rule("error", **STEPS[call]):
        attempts.append(do_put(writer, work.next(f"503 on every {call}")))
    attempts.append(do_put(writer, work.next("after")))
    assert_contract(request, target, uri, attempts)


@pytest.mark.parametrize("backend", ["localstack", "swift", "moto"])
def test_known_bug_5_commit_lands_late(request: pytest.FixtureRequest, target: Target) -> None:
    """A commit PUT whose connection drops after the server got the whole body, applied 3 s later (known bug 5)."""
    uri = target.new_repo(3)
    writer = target.butler(uri)
    work = Workload(seed=7, types=("metric",))
    attempts = [do_put(writer, work.next("before"))]
    with target.proxy.rule("late_apply", methods="PUT", path=STEPS["commit_put"]["path"], delay=3.0,
                           times=FAST.attempts):
        attempts.append(do_put(writer, work.next("commit reset on every attempt, applied 3 s later")))
    target.proxy.settle()
    attempts.append(do_put(writer, work.next("after")))
    assert_contract(request, target, uri, attempts)


@pytest.mark.parametrize("backend", ["localstack", "swift"])
def test_lost_commit_answer_then_unreadable_log(request: pytest.FixtureRequest, target: Target) -> None:
    """The commit lands but every answer about it is lost for good, and the log cannot be read back either."""
    uri = target.new_repo(3)
    writer = target.butler(uri)
    work = Workload(seed=11)
    attempts = [do_put(writer, work.next("before"))]
    target.proxy.add(_rule("lost_answer", STEPS["commit_put"]))
    target.proxy.add(_rule("error", STEPS["log_list"]))
    target.proxy.add(_rule("error", STEPS["log_get"]))
    attempts.append(do_put(writer, work.next("commit answer lost, log unreadable, for good")))
    target.proxy.clear_rules()
    attempts.append(do_put(writer, work.next("after")))
    assert_contract(request, target, uri, attempts)


@pytest.mark.parametrize("backend", ["localstack", "swift", "moto"])
def test_corrupted_read_of_the_own_commit(request: pytest.FixtureRequest, target: Target) -> None:
    """The put's own commit landed, but reading it back comes back corrupted (not JSON any more).

    Swift: the verification after the settle time reads the new commit. S3:
    the commit's answer is lost on every attempt of the first round, so the
    writer reads the slot back to learn whose it is. Either way the commit
    stands on the server, so the put must not delete the data.
    """
    uri = target.new_repo(3)
    writer = target.butler(uri)
    work = Workload(seed=23, types=("metric",))
    attempts = [do_put(writer, work.next("before"))]  # the writer is warm: earlier commits are not read again
    if target.sequenced:
        target.proxy.add(_rule("lost_answer", STEPS["commit_put"], times=FAST.attempts))
    target.proxy.add(_rule("flip", STEPS["log_get"], offset=0))  # '{' -> 'z'
    attempts.append(do_put(writer, work.next("own commit read back corrupted")))
    target.proxy.clear_rules()
    attempts.append(do_put(writer, work.next("after")))
    assert_contract(request, target, uri, attempts)


@pytest.mark.parametrize("backend", ["localstack", "swift"])
def test_random_faults_on_every_call(request: pytest.FixtureRequest, target: Target) -> None:
    """Every fault kind at once, each on 10 % of all requests of a run of puts by two writers."""
    uri = target.new_repo(3)
    writers = [target.butler(uri), target.butler(uri)]
    for seed, kind in enumerate(FAULT_KINDS):
        target.proxy.add(_rule(kind, {"path": r"^(?!/auth/)"}, probability=0.1, seed=seed))
    work = Workload(seed=3)
    attempts = [do_put(writers[i % 2], work.next("random faults")) for i in range(9)]
    target.proxy.clear_rules()
    attempts.append(do_put(writers[0], work.next("after")))
    assert_contract(request, target, uri, attempts)


@pytest.mark.parametrize("backend", ["localstack", "moto"])
@pytest.mark.parametrize("corrupted", ["data_id", "dimension_name", "key"])
@pytest.mark.parametrize("protocol", ["sequenced", "claimed"])
def test_writer_that_misread_the_log_keeps_the_registry_intact(request: pytest.FixtureRequest, target: Target,
                                                               corrupted: str, protocol: str) -> None:
    """A writer whose read of another writer's commit came back corrupted (one bit flipped in transit).

    The corrupted commit still parses. Whatever the writer makes of it, the
    checkpoint it then writes must not change the registry: every put that
    returned stays findable under its own data ID for fresh readers.
    """
    uri = target.new_repo(3, commit_protocol=protocol)
    direct = target.reader(uri)
    writer = target.butler(uri)
    work = Workload(seed=13)
    attempts = [do_put(direct, work.next("direct"))]
    writer.query()  # warm at commit 1
    attempts.append(do_put(direct, work.next("direct, then misread by the writer")))  # commit 2 (a raw)
    # legacy: manifest/log/<2>.json; claimed: manifest/log/<shard>/<2>.json (the direct writer's shard)
    second = next(m.key for m in direct.store.list("manifest/log/") if m.key.endswith("00000000000000000002.json"))
    body = direct.store.get(second).decode()
    anchor = {"data_id": '"data_id":{"', "dimension_name": '"dimensions":{"', "key": '"key":"'}[corrupted]
    at = body.index(anchor) + len(anchor)
    if corrupted == "data_id":
        at = body.index(":", at) + 1  # the first digit of the first data ID value
    elif corrupted == "key":
        at = body.index(".zarr", at) - 1  # the last hex digit of the key's dataset id
    with target.proxy.rule("flip", methods="GET", path=re.escape(second[len("manifest"):]) + "$", offset=at,
                           mask=0x01):
        if protocol == "claimed":
            with contextlib.suppress(ObjButlerError):  # a claimed writer reads others only when it refreshes
                writer.query()
        attempts.append(do_put(writer, work.next("writer, misreads commit 2")))  # commit 3: writes a checkpoint
    for _ in range(3):
        attempts.append(do_put(writer, work.next("writer")))
    assert_contract(request, target, uri, attempts)


# -- reads ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Populated:
    """A repository filled directly (no faults), and what each of its datasets holds."""

    uri: str
    refs: list[DatasetRef]
    fingerprints: dict[str, str]
    arrays: dict[str, np.ndarray]

    def of(self, dataset_type: str) -> list[DatasetRef]:
        return [r for r in self.refs if r.dataset_type == dataset_type]


def _populate(target: Target) -> Populated:
    uri = target.new_repo(3)
    writer = Butler(uri, **target.direct)
    work = Workload(seed=1)
    refs, fingerprints, arrays = [], {}, {}
    for _ in range(12):
        attempt = do_put(writer, work.next())
        assert attempt.ref is not None, attempt.error
        refs.append(attempt.ref)
        fingerprints[attempt.ref.id] = attempt.fingerprint
        if attempt.dataset_type != "metric":
            arrays[attempt.ref.id] = np.asarray(
                attempt.obj.data if isinstance(attempt.obj, fits.PrimaryHDU) else attempt.obj)
    return Populated(uri, refs, fingerprints, arrays)


@pytest.fixture(scope="module")
def populated() -> dict[str, Populated]:
    """Per backend, one populated repository (filled on first use)."""
    return {}


def _populated(cache: dict[str, Populated], target: Target) -> Populated:
    if target.name not in cache:
        cache[target.name] = _populate(target)
    return cache[target.name]


class Reads:
    """One kind of read, repeated: :meth:`read` returns None when the answer is exact, else what is wrong."""

    def __init__(self, target: Target, pop: Populated) -> None:
        self.target = target
        self.pop = pop
        self.turn = 0

    def read(self) -> str | None:
        raise NotImplementedError

    def after_faults(self) -> str | None:
        """Once the faults stop: is the answer exact again (nothing a fault left behind sticks)?"""
        return self.read()

    def _next(self, refs: list[DatasetRef]) -> DatasetRef:
        self.turn += 1
        return refs[self.turn % len(refs)]


class GetReads(Reads):
    dataset_type = ""

    def __init__(self, target: Target, pop: Populated) -> None:
        super().__init__(target, pop)
        self.butler = target.butler(pop.uri)

    def read(self) -> str | None:
        ref = self._next(self.pop.of(self.dataset_type))
        if fingerprint(ref.dataset_type, self.butler.get(ref)) != self.pop.fingerprints[ref.id]:
            return f"get({ref.dataset_type} {ref.data_id}) returned other data than was put"
        return None


class GetFits(GetReads):
    dataset_type = "calexp"


class GetZarr(GetReads):
    dataset_type = "raw"


class GetJson(GetReads):
    dataset_type = "metric"


BOXES = [Box(0, 0, 16, 16), Box(10, 20, 40, 50), Box(48, 48, 64, 64), Box(30, 2, 34, 60)]
MANY_RANGES = CostModel(latency=0.001, bandwidth=1e6, concurrency=8)  # requests cheap: several ranges per call


class CutoutReads(Reads):
    """Pixel boxes (FITS: planned as many small range reads), or sky positions (FITS: the header is read too)."""

    dataset_type = "calexp"
    sky = False

    def __init__(self, target: Target, pop: Populated) -> None:
        super().__init__(target, pop)
        self.butler = target.butler(pop.uri)
        clean = target.reader(pop.uri)
        self.requests: dict[str, Any] = {}
        self.expected: dict[str, list[tuple[Box, np.ndarray]]] = {}
        for ref in pop.of(self.dataset_type):
            wanted: Any = BOXES
            if self.sky:
                wcs = clean.get_wcs(ref)
                wanted = SkyCoord.from_pixel(np.array([8.0, 40.0, 60.0]), np.array([8.0, 30.0, 50.0]), wcs)
            self.requests[ref.id] = wanted
            stamps = clean.get_cutouts(ref, wanted, size=8 if self.sky else None)
            parent = pop.arrays[ref.id]
            self.expected[ref.id] = [(s.bbox, parent[s.bbox.y0:s.bbox.y1, s.bbox.x0:s.bbox.x1]) for s in stamps]

    def read(self) -> str | None:
        ref = self._next(self.pop.of(self.dataset_type))
        stamps = self.butler.get_cutouts(ref, self.requests[ref.id], size=8 if self.sky else None,
                                         cost=MANY_RANGES if ref.format == "fits" else None)
        for stamp, (box, want) in zip(stamps, self.expected[ref.id], strict=True):
            if stamp.bbox != box or stamp.data.shape != want.shape or not np.array_equal(stamp.data, want):
                return f"get_cutouts({ref.dataset_type} {ref.data_id}) returned another stamp than was stored"
        return None


class CutoutsFits(CutoutReads):
    pass


class CutoutsSky(CutoutReads):
    sky = True


class CutoutsZarr(CutoutReads):
    dataset_type = "raw"


def _ref_view(ref: DatasetRef) -> tuple[Any, ...]:
    return (ref.id, ref.dataset_type, json.dumps(dict(ref.data_id), sort_keys=True), ref.run, ref.format, ref.key,
            ref.size, ref.checksum)


class QueryReads(Reads):
    """query() on a repository of its own; for a warm Butler, a direct writer adds a commit before each read."""

    warm = False

    def __init__(self, target: Target, pop: Populated) -> None:
        super().__init__(target, pop)
        self.uri = target.new_repo(3)
        self.writer = target.reader(self.uri)
        self.truth = target.reader(self.uri)  # straight to the server: the view to compare with
        self.work = Workload(seed=5)
        for _ in range(5):
            assert do_put(self.writer, self.work.next()).ref is not None
        self.warm_reader = target.butler(self.uri) if self.warm else None
        if self.warm_reader is not None:
            self.warm_reader.query()

    def _compare(self, butler: Butler) -> str | None:
        expected = sorted(_ref_view(r) for r in self.truth.query())
        found = sorted(_ref_view(r) for r in butler.query())
        if found != expected:
            return (f"query() answered {len(found)} refs, {len(set(found) - set(expected))} of them not as "
                    f"committed ({len(expected)} committed)")
        return None

    def read(self) -> str | None:
        if self.warm_reader is None:
            return self._compare(self.target.butler(self.uri))
        assert do_put(self.writer, self.work.next()).ref is not None  # a new commit (now and then a checkpoint)
        return self._compare(self.warm_reader)

    def after_faults(self) -> str | None:
        problem = self._compare(self.warm_reader or self.target.butler(self.uri))
        return f"the warm Butler kept a wrong view: {problem}" if problem and self.warm_reader else problem


class QueryCold(QueryReads):
    pass


class QueryWarm(QueryReads):
    warm = True


DATA_GETS = {"methods": "GET", "path": r"/data/"}
REGISTRY_GETS = [{"methods": "GET", "path": r"/manifest/|/objbutler\.json$"},
                 {"methods": "GET", "path": LISTING, "query": r"prefix=[^&]*manifest/"}]
READ_OPS: dict[str, tuple[type[Reads], list[dict[str, Any]], tuple[str, ...]]] = {
    "get_fits": (GetFits, [DATA_GETS], READ_KINDS),
    "get_zarr": (GetZarr, [DATA_GETS], READ_KINDS),
    "get_json": (GetJson, [DATA_GETS], READ_KINDS),
    "cutouts_fits": (CutoutsFits, [DATA_GETS], PLAIN_RANGE_KINDS),
    "cutouts_sky": (CutoutsSky, [DATA_GETS], PLAIN_RANGE_KINDS),
    "cutouts_zarr": (CutoutsZarr, [DATA_GETS], READ_KINDS),
    "query_cold": (QueryCold, REGISTRY_GETS, READ_KINDS),
    "query_warm": (QueryWarm, REGISTRY_GETS, READ_KINDS),
}
READ_CASES = [pytest.param(backend, op, id=f"{backend}-{op}") for backend in ("localstack", "swift") for op in READ_OPS]


@pytest.mark.parametrize(("backend", "op"), READ_CASES)
def test_read_faults(request: pytest.FixtureRequest, target: Target, populated: dict[str, Populated], op: str) -> None:
    """A read under faults returns exactly what is stored or raises an ObjButlerError; never anything else.

    Per fault kind: two reads with faults on half of the requests, one with
    faults on every request, then one without faults (nothing a fault did may
    stick). Problems labelled SILENT-CORRUPTION are reads that returned wrong
    data without an error: on data reads (flip, truncate) they need checksum
    verification on get/cutouts; on registry reads, an integrity check of
    commits and checkpoints.
    """
    cls, wheres, kinds = READ_OPS[op]
    reads = cls(target, _populated(populated, target))
    problems: list[str] = []
    outcomes: collections.Counter[str] = collections.Counter()

    def attempt(label: str) -> None:
        try:
            wrong = reads.read()
        except ObjButlerError as exc:
            outcomes[type(exc).__name__] += 1
            return
        except Exception as exc:
            problems.append(f"{label}: raised a non-objbutler {type(exc).__name__}: {exc!r}")
            return
        if wrong is None:
            outcomes["exact"] += 1
        else:
            outcomes["wrong"] += 1
            problems.append(f"SILENT-CORRUPTION {label}: {wrong}")

    for number, kind in enumerate(kinds):
        half = [target.proxy.add(_rule(kind, where, probability=0.5, seed=number)) for where in wheres]
        for i in range(2):
            attempt(f"[{kind} on half] read {i}")
        for rule in half:
            target.proxy.remove(rule)
        for where in wheres:
            target.proxy.add(_rule(kind, where))
        attempt(f"[{kind} on every request] read")
        target.proxy.clear_rules()
        try:
            wrong = reads.after_faults()
        except ObjButlerError as exc:
            wrong = f"raised {type(exc).__name__}: {exc}"
        if wrong is not None:
            problems.append(f"[after {kind}, no faults]: {wrong}")
    for outcome, n in outcomes.items():
        for _ in range(n):
            _note(request, outcome)
    assert not problems, f"{len(problems)} problem(s) on {target.name}:\n  " + "\n  ".join(problems)


# -- clone ------------------------------------------------------------------------------------------------------

CLONE_SIDES: dict[str, tuple[str, tuple[str, ...]]] = {
    "source_read": ("src", ("flip", "truncate", "reset")),
    "dest_write": ("dst", ("lost_answer", "late_apply")),
    "dest_commit": ("dst", ("lost_answer", "late_apply", "error")),
}
CLONE_CASES = [
    pytest.param(backend, side, kind, id=f"{backend}-{side}-{kind}")
    for backend in ("localstack", "swift")
    for side, (_, kinds) in CLONE_SIDES.items()
    for kind in kinds
]


@pytest.mark.parametrize(("backend", "side", "kind"), CLONE_CASES)
def test_clone_faults(request: pytest.FixtureRequest, target: Target, populated: dict[str, Populated], side: str,
                      kind: str) -> None:
    """objbutler.clone under faults: what it commits is exact and readable, and a clean rerun completes it."""
    pop = _populated(populated, target)
    dst_uri = target.new_repo(3)
    src_prefix = urllib.parse.urlsplit(pop.uri).path.strip("/")
    dst_prefix = urllib.parse.urlsplit(dst_uri).path.strip("/")
    if side == "source_read":
        where = {"methods": "GET", "path": rf"/{src_prefix}/data/"}
    elif side == "dest_write":
        where = {"methods": "PUT", "path": rf"/{dst_prefix}/data/"}
    else:
        where = {"methods": "PUT", "path": rf"/{dst_prefix}/manifest/log/"}
    source = target.butler(pop.uri)
    destination = target.butler(dst_uri)
    if side == "dest_commit":  # every attempt of the first commit: the store's retries are exhausted once
        target.proxy.add(_rule(kind, where, times=FAST.attempts))
    else:
        target.proxy.add(_rule(kind, where, probability=0.5, seed=1))
    problems: list[str] = []
    report = None
    try:
        report = clone(source, destination, progress=False, jobs=4, batch_size=4)
        _note(request, "returned" if report.ok else f"returned, {len(report.failed)} failed")
    except ObjButlerError as exc:
        _note(request, type(exc).__name__)
    except Exception as exc:
        problems.append(f"clone raised a non-objbutler {type(exc).__name__}: {exc!r}")
    target.proxy.clear_rules()
    target.proxy.settle(30)
    reader = target.reader(dst_uri)
    held = {ref.id: ref for ref in reader.query()}
    if report is not None:
        missing = [ref.id for ref in report.copied + report.skipped if ref.id not in held]
        if missing:
            problems.append(f"clone reported {len(missing)} dataset(s) copied that the destination does not hold")
    for ref_id, ref in held.items():
        if ref_id not in pop.fingerprints:
            problems.append(f"destination holds {ref_id}, which the source does not")
            continue
        try:
            got = reader.get(ref)
        except ObjButlerError as exc:
            problems.append(f"destination entry {ref.dataset_type} {ref.data_id} cannot be read: {exc}")
            continue
        if fingerprint(ref.dataset_type, got) != pop.fingerprints[ref_id]:
            problems.append(f"destination entry {ref.dataset_type} {ref.data_id} holds other data than the source")
    problems += [f"fsck: dangling {ref.dataset_type} {ref.data_id}: {why}" for ref, why in fsck(reader).dangling]
    rerun = clone(target.reader(pop.uri), reader, progress=False)
    if not rerun.ok or sorted(r.id for r in reader.query()) != sorted(pop.fingerprints):
        problems.append(f"a clean rerun did not complete the clone: {rerun.summary()} {rerun.failed}")
    assert not problems, f"{len(problems)} problem(s) on {target.name}:\n  " + "\n  ".join(problems)


# -- the proxy itself -------------------------------------------------------------------------------------------


def _raw(proxy: FaultProxy, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("backend", ["localstack"])
def test_proxy_injects_each_kind_as_documented(target: Target) -> None:
    """The proxy's faults, seen by a plain HTTP client against a real S3 server (unsigned requests)."""
    proxy = target.proxy
    bucket = target.base[len("s3://"):]
    payload = bytes(range(256)) * 8
    key = f"/{bucket}/proxy-check/{uuid.uuid4().hex}"
    assert _raw(proxy, "PUT", key, payload)[0] == 200
    with proxy.rule("reset", methods="GET", path=key), pytest.raises((ConnectionError, http.client.HTTPException)):
        _raw(proxy, "GET", key)
    with proxy.rule("error", methods="GET", path=key, status=500):
        assert _raw(proxy, "GET", key)[0] == 500
    with proxy.rule("flip", methods="GET", path=key, offset=10, mask=0xFF):
        body = _raw(proxy, "GET", key)[2]
        assert len(body) == len(payload) and body[10] == payload[10] ^ 0xFF and body[11:] == payload[11:]
    with proxy.rule("truncate", methods="GET", path=key), pytest.raises(http.client.IncompleteRead):
        _raw(proxy, "GET", key)
    with proxy.rule("ignore_range", methods="GET", path=key):
        status, _, body = _raw(proxy, "GET", key, headers={"Range": "bytes=0-9"})
        assert status == 200 and body == payload
    assert _raw(proxy, "GET", key, headers={"Range": "bytes=0-9"})[0] == 206
    with proxy.rule("stall", methods="GET", path=key, stall=0.3):
        assert _raw(proxy, "GET", key)[2] == payload  # the whole body, after the stall
    assert proxy.settle(10)  # the client can have the last byte before the proxy booked the request
    stalled = proxy.entries()[-1]
    assert (stalled.fault, stalled.method, stalled.response_bytes) == ("stall", "GET", len(payload))
    lost_key = key + "-lost"
    with proxy.rule("lost_answer", methods="PUT", path=lost_key), pytest.raises((ConnectionError,
                                                                                 http.client.HTTPException)):
        _raw(proxy, "PUT", lost_key, b"applied")
    assert _raw(proxy, "GET", lost_key)[2] == b"applied"
    late_key = key + "-late"
    with proxy.rule("late_apply", methods="PUT", path=late_key, delay=0.5), pytest.raises(
            (ConnectionError, http.client.HTTPException)):
        _raw(proxy, "PUT", late_key, b"late")
    assert _raw(proxy, "GET", late_key)[0] == 404
    assert proxy.settle(10)
    assert _raw(proxy, "GET", late_key)[2] == b"late"
    with proxy.rule("error", methods="GET", path=key, nth=2) as rule:
        statuses = [_raw(proxy, "GET", key)[0] for _ in range(3)]
    assert statuses == [200, 503, 200] and (rule.matched, rule.fired) == (3, 1)
    assert not proxy.proxy_errors


@pytest.mark.parametrize("backend", ["swift"])
def test_proxy_keeps_swift_clients_behind_it(target: Target) -> None:
    """Swift's auth answer names the upstream: the proxy rewrites it, so storage requests keep coming through."""
    store = SwiftStore(target.base[len("swift://"):], **target.via)
    assert target.proxy.settle(10)
    before = target.proxy.requests
    store.put("proxy-check", b"x")
    assert store.get("proxy-check") == b"x"
    connection = store._checkout()
    try:
        assert connection.url.startswith(target.proxy.url + "/v1/")
    finally:
        store._checkin(connection, True)
    assert target.proxy.settle(10)  # the GET is booked a moment after its answer reached the client
    assert target.proxy.requests - before >= 3  # auth, PUT, GET all went through the proxy


@pytest.mark.parametrize("backend", ["localstack"])
def test_proxy_log_is_thread_safe(target: Target) -> None:
    """Concurrent clients: every request is booked once, and a probability rule fires about as often as asked."""
    bucket = target.base[len("s3://"):]
    key = f"/{bucket}/proxy-check/{uuid.uuid4().hex}"
    assert _raw(target.proxy, "PUT", key, b"y" * 100)[0] == 200
    assert target.proxy.settle(10)  # the PUT is booked once the proxy is done with it, a moment after the answer
    before = target.proxy.requests
    statuses: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(25):
            status = _raw(target.proxy, "GET", key)[0]
            with lock:
                statuses.append(status)

    with target.proxy.rule("error", methods="GET", path=key, probability=0.3, seed=42) as rule:
        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert target.proxy.settle(10)
    assert target.proxy.requests - before == 200 == len(statuses)
    assert rule.matched == 200 and statuses.count(503) == rule.fired
    assert 30 <= rule.fired <= 90


# -- the tally --------------------------------------------------------------------------------------------------


def test_every_kind_was_injected_often_enough(request: pytest.FixtureRequest) -> None:
    """At least 50 faults of every kind over the module (checked only when the whole module ran)."""
    module = request.node.module
    runs = [item for item in request.session.items
            if getattr(item, "module", None) is module and "target" in getattr(item, "fixturenames", ())]
    if len(_LEDGER) < len(runs):
        pytest.skip(f"only {len(_LEDGER)} of {len(runs)} fault runs ran")
    total = kinds_summary(record["faults"] for record in _LEDGER)
    short = {kind: n for kind, n in total.items() if n < MIN_PER_KIND}
    assert not short, f"fault kinds injected fewer than {MIN_PER_KIND} times: {short} (all: {total})"

