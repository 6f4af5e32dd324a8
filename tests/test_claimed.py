"""The ``claimed`` commit protocol: claims per data ID, a sharded log, crashes at every step, old repositories.

Races and crashes run real writers (threads, processes, SIGKILL) against a local directory and LocalStack.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
from conftest import Backend

from objbutler import Butler
from objbutler.errors import ConflictError, StoreError
from objbutler.maintenance import fsck, vacuum
from objbutler.registry.claims import CLAIMS_PREFIX, claim_key
from objbutler.registry.state import unique_key
from objbutler.stores import open_store
from objbutler.stores.wrapper import StoreWrapper
from objbutler.testing.workload import run_writers

REQUESTS_PER_PUT = 3.0
"""Data object, claim, log entry."""
SLACK = 0.35
"""Measured extra: a slot another writer took (one failed create, one listing to move shard) and type
registration once per process; see docs/design.md."""


@pytest.fixture(params=["local", "localstack"])
def atomic_backend(request: pytest.FixtureRequest) -> Backend:
    """The stores with an atomic create, where new repositories use the claimed protocol."""
    backend: Backend = request.getfixturevalue(f"{request.param}_backend")
    return backend


def _data_objects(butler: Butler) -> list[str]:
    return sorted(m.key for m in butler.store.list("data/"))


def _claims(butler: Butler) -> list[str]:
    return sorted(m.key for m in butler.store.list(CLAIMS_PREFIX))


def test_new_repository_on_an_atomic_store_is_claimed(atomic_backend: Backend) -> None:
    uri = atomic_backend.new_uri()
    assert Butler.create(uri + "-seq", commit_protocol="sequenced", **atomic_backend.options).config.log_shards == 0
    butler = Butler.create(uri, **atomic_backend.options)
    assert butler.config.commit_protocol == "claimed" and butler.config.log_shards >= 1
    ref = butler.put({"v": 1}, "metric", {"visit": 1}, run="r")
    keys = sorted(m.key for m in butler.store.list("manifest/"))
    assert keys.count(claim_key(ref.unique_key)) == 1
    assert next(k for k in keys if k.startswith("manifest/log/")).count("/") == 3  # manifest/log/<shard>/<n>.json
    assert "manifest/types/metric.json" in keys and "manifest/dimensions/visit.json" in keys
    assert Butler(uri, **atomic_backend.options).get("metric", {"visit": 1}, run="r") == {"v": 1}


def test_64_threads_racing_for_one_data_id_have_one_winner(atomic_backend: Backend) -> None:
    uri = atomic_backend.new_uri()
    Butler.create(uri, commit_protocol="claimed", **atomic_backend.options)
    threads = 64
    butlers = [Butler(uri, **atomic_backend.options) for _ in range(threads)]
    barrier = threading.Barrier(threads)
    outcomes: list[Any] = [None] * threads

    def racer(index: int) -> None:
        barrier.wait()
        try:
            outcomes[index] = butlers[index].put({"writer": index}, "metric", {"visit": 7}, run="r")
        except Exception as exc:
            outcomes[index] = exc

    workers = [threading.Thread(target=racer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    losers = [o for o in outcomes if isinstance(o, Exception)]
    assert len(winners) == 1, f"{len(winners)} winners"
    assert all(isinstance(o, ConflictError) for o in losers), {type(o).__name__ for o in losers}
    assert all(o.conflicts for o in losers)  # each names its refused dataset
    reader = Butler(uri, **atomic_backend.options)
    assert [r.id for r in reader.query("metric")] == [winners[0].id]
    assert reader.get(winners[0]) == {"writer": outcomes.index(winners[0])}
    assert _data_objects(reader) == [winners[0].key]  # every loser's data was deleted
    assert _claims(reader) == [claim_key(winners[0].unique_key)]
    report = fsck(reader)
    assert report.ok and report.orphans == [] and report.claims == [] and report.shadowed == []


def test_processes_racing_for_the_same_data_ids_have_one_winner_each(atomic_backend: Backend) -> None:
    uri = atomic_backend.new_uri()
    Butler.create(uri, commit_protocol="claimed", **atomic_backend.options)
    writers, rounds = 12, 3
    results = run_writers(uri, atomic_backend.options, "race", [range(rounds)] * writers)
    assert [r["errors"] for r in results] == [[]] * writers
    winners = [ref_id for r in results for ref_id in r["committed"]]
    assert len(winners) == rounds
    assert sum(r["conflicts"] for r in results) == rounds * (writers - 1)
    reader = Butler(uri, **atomic_backend.options)
    assert sorted(r.id for r in reader.query("metric")) == sorted(winners)
    assert _data_objects(reader) == sorted(r.key for r in reader.query())
    report = fsck(reader)
    assert report.ok and report.claims == [] and report.orphans == []


def test_16_processes_with_distinct_data_ids_take_three_requests_per_put(atomic_backend: Backend) -> None:
    """Each put writes its data, its claim and its log entry; it never reads another writer's commit."""
    uri = atomic_backend.new_uri()
    # No checkpoint in this run: folding commits into one is counted by test_compaction_* below.
    Butler.create(uri, commit_protocol="claimed", checkpoint_interval=100_000, **atomic_backend.options)
    Butler(uri, **atomic_backend.options).put({"seed": 1}, "metric", {"visit": -1, "detector": 0}, run="r")
    writers, per_writer = 16, 12
    visits = [range(w * per_writer, (w + 1) * per_writer) for w in range(writers)]
    results = run_writers(uri, atomic_backend.options, "r", visits, count_requests=True)
    assert [r["errors"] for r in results] == [[]] * writers
    assert sum(r["conflicts"] for r in results) == 0
    committed = {ref_id for r in results for ref_id in r["committed"]}
    assert len(committed) == writers * per_writer
    reader = Butler(uri, **atomic_backend.options)
    assert {r.id for r in reader.query("metric", run="r")} >= committed
    by_method = sum((collections.Counter(r["requests_by_method"]) for r in results), collections.Counter())
    per_put = sum(r["requests"] for r in results) / len(committed)
    print(f"\n{atomic_backend.name}: {per_put:.2f} requests per put, {dict(by_method)}")
    assert per_put <= REQUESTS_PER_PUT + SLACK, dict(by_method)
    assert by_method["get"] + by_method["get_many"] <= len(committed) * 0.1  # no reading of other commits


# -- crashes at every step ---------------------------------------------------------------------------------------

_CRASHING_PUT = textwrap.dedent(
    """
    import json, os, signal, sys
    from objbutler import Butler
    from objbutler.stores import open_store

    uri, options, prefix, method = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]

    class CrashAfter:
        '''SIGKILL this process right after the first successful write of ``method`` under ``prefix``.'''

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def _then_crash(self, name, key, *args):
            result = getattr(self.inner, name)(key, *args)
            if name == method and key.startswith(prefix):
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        def put(self, key, data):
            return self._then_crash("put", key, data)

        def put_if_absent(self, key, data):
            return self._then_crash("put_if_absent", key, data)

    butler = Butler(uri, store=CrashAfter(open_store(uri, **options)))
    butler.put({"v": "crashed"}, sys.argv[5], {"visit": 1}, run="r")
    print("not crashed", flush=True)
    """
)

STEPS = {
    "after_data": ("data/", "put"),
    "after_type_registration": ("manifest/types/", "put_if_absent"),
    "after_claim": (CLAIMS_PREFIX, "put_if_absent"),
    "after_log_entry": ("manifest/log/", "put_if_absent"),
}


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_put_killed_at_every_step_leaves_a_sound_registry(atomic_backend: Backend, step: str) -> None:
    import json

    uri = atomic_backend.new_uri()
    butler = Butler.create(uri, commit_protocol="claimed", **atomic_backend.options)
    butler.put({"v": 0}, "metric", {"visit": 0}, run="r")
    dataset_type = "fresh" if step == "after_type_registration" else "metric"
    prefix, method = STEPS[step]
    child = subprocess.run([sys.executable, "-c", _CRASHING_PUT, uri, json.dumps(atomic_backend.options), prefix,
                            method, dataset_type], capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, (child.stdout, child.stderr)
    reader = Butler(uri, **atomic_backend.options)
    report = fsck(reader)
    assert report.ok, report.dangling
    for ref in reader.query():
        assert reader.get(ref)["v"] in (0, "crashed")  # every committed dataset reads back
    visible = [r for r in reader.query() if r.dataset_type == dataset_type and r.data_id == {"visit": 1}]
    unique = unique_key(dataset_type, "r", {"visit": 1})
    if step == "after_log_entry":
        # The commit point had passed: the put succeeded, its data must never be deleted.
        assert len(visible) == 1 and reader.get(visible[0]) == {"v": "crashed"}
        assert report.orphans == [] and report.claims == []
        with pytest.raises(ConflictError, match="already exists"):
            reader.put({"v": 2}, dataset_type, {"visit": 1}, run="r")
        assert vacuum(reader, dt.timedelta(0)) == []
        assert reader.get(visible[0]) == {"v": "crashed"}
        return
    assert visible == []
    # The data uploads while the data ID is claimed (registration first, then the claim): at a crash
    # before the log entry, what the step did has landed and the other may have.
    assert len(report.orphans) == 1 if step == "after_data" else len(report.orphans) <= 1
    if step == "after_claim":
        assert [c.key for c in report.claims] == [claim_key(unique)]
    elif step == "after_type_registration":
        assert report.claims == []
    if report.claims:
        assert [c.key for c in report.claims] == [claim_key(unique)]
        with pytest.raises(ConflictError, match="objbutler vacuum") as refused:
            reader.put({"v": 2}, dataset_type, {"visit": 1}, run="r")
        assert refused.value.conflicts
        # the refused put deleted its own data (if it wrote any), not the crashed one's
        assert len(_data_objects(reader)) == 1 + len(report.orphans)
    removed = vacuum(reader, dt.timedelta(0))
    assert {o.key for o in removed} == {o.key for o in report.orphans + report.claims}
    ref = Butler(uri, **atomic_backend.options).put({"v": 3}, dataset_type, {"visit": 1}, run="r")
    after = fsck(Butler(uri, **atomic_backend.options))
    assert after.ok and after.orphans == [] and after.claims == []
    assert Butler(uri, **atomic_backend.options).get(ref) == {"v": 3}


def test_vacuum_spares_young_claims(tmp_path: Any) -> None:
    uri = str(tmp_path / "repo")
    butler = Butler.create(uri, commit_protocol="claimed")
    butler.put({"v": 0}, "metric", {"visit": 0}, run="r")
    store = open_store(uri)
    store.put_if_absent(claim_key(unique_key("metric", "r", {"visit": 5})), b'{"format":"objbutler-claim",'
                        b'"version":1,"commit_id":"c0ffee","dataset_id":"d1","time":"2026-01-01T00:00:00.000000Z"}')
    assert len(fsck(Butler(uri)).claims) == 1
    assert vacuum(Butler(uri), dt.timedelta(hours=1)) == []  # in flight, as far as vacuum can tell
    with pytest.raises(ConflictError, match="commit c0ffee"):
        Butler(uri).put({"v": 5}, "metric", {"visit": 5}, run="r")
    assert [o.key for o in vacuum(Butler(uri), dt.timedelta(0))] == [claim_key(unique_key("metric", "r", {"visit": 5}))]
    Butler(uri).put({"v": 5}, "metric", {"visit": 5}, run="r")


def test_a_type_registered_differently_is_refused_before_anything_is_written(tmp_path: Any) -> None:
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed")
    first, second = Butler(uri), Butler(uri)
    first.registry.refresh()
    second.registry.refresh()
    first.put({"v": 0}, "metric", {"visit": 0}, run="r")
    before = sorted(m.key for m in open_store(uri).list(""))
    with pytest.raises(ConflictError, match="registered with data ID keys"):
        second.put({"v": 1}, "metric", {"exposure": 1}, run="r")  # its view does not know metric yet
    assert sorted(m.key for m in open_store(uri).list("")) == before


# -- old repositories ------------------------------------------------------------------------------------------------


def test_a_sequenced_repository_keeps_working(atomic_backend: Backend) -> None:
    uri = atomic_backend.new_uri()
    Butler.create(uri, commit_protocol="sequenced", checkpoint_interval=3, **atomic_backend.options)
    writer = Butler(uri, **atomic_backend.options)
    assert writer.config.commit_protocol == "sequenced" and writer.registry.shards is None
    refs = [writer.put({"v": v}, "metric", {"visit": v, "detector": 0}, run="r") for v in range(7)]
    keys = sorted(m.key for m in writer.store.list("manifest/"))
    assert [k for k in keys if k.startswith("manifest/log/")] == [
        f"manifest/log/{n:020d}.json" for n in range(1, 8)]  # the legacy layout, untouched
    assert not any(k.startswith(("manifest/claims/", "manifest/types/")) for k in keys)
    reader = Butler(uri, **atomic_backend.options)
    assert [r.id for r in reader.query("metric")] == [r.id for r in refs]
    with pytest.raises(ConflictError, match="already exists"):
        reader.put({"v": 1}, "metric", {"visit": 1, "detector": 0}, run="r")
    results = run_writers(uri, atomic_backend.options, "r", [range(100, 104), range(104, 108)])
    assert [r["errors"] for r in results] == [[], []] and [r["conflicts"] for r in results] == [0, 0]
    assert len(Butler(uri, **atomic_backend.options).query("metric")) == 15
    report = fsck(Butler(uri, **atomic_backend.options))
    assert report.ok and report.orphans == [] and report.claims == []
    assert vacuum(Butler(uri, **atomic_backend.options), dt.timedelta(0)) == []


def test_commit_protocol_can_be_chosen_and_is_checked(tmp_path: Any) -> None:
    from objbutler.errors import ConfigError

    with pytest.raises(ConfigError, match="commit_protocol"):
        Butler.create(str(tmp_path / "bad"), commit_protocol="fastest")
    assert not os.path.exists(tmp_path / "bad" / "objbutler.json")
    assert Butler.create(str(tmp_path / "seq"), commit_protocol="sequenced").config.log_shards == 0
    assert Butler.create(str(tmp_path / "few"), log_shards=8).config.log_shards == 8  # claimed by default
    for bad in ({"log_shards": 8, "commit_protocol": "sequenced"}, {"log_shards": 8, "commit_protocol": "timestamped"},
                {"log_shards": 0, "commit_protocol": "claimed"}, {"log_shards": 1001, "commit_protocol": "claimed"}):
        with pytest.raises(ConfigError):
            Butler.create(str(tmp_path / "bad"), **bad)  # type: ignore[arg-type]
        assert not (tmp_path / "bad").exists()


def test_cli_create_chooses_the_commit_protocol(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from objbutler.cli import main

    for protocol in ("claimed", "sequenced"):
        repo = str(tmp_path / protocol)
        result = CliRunner().invoke(main, ["create", repo, "--commit-protocol", protocol], catch_exceptions=False)
        assert result.exit_code == 0 and f"commit protocol: {protocol}" in result.output
        assert Butler(repo).config.commit_protocol == protocol
    result = CliRunner().invoke(main, ["create", str(tmp_path / "default")], catch_exceptions=False)
    assert "commit protocol: claimed" in result.output  # the default on a store with an atomic create
    result = CliRunner().invoke(main, ["create", str(tmp_path / "few"), "--log-shards", "8"], catch_exceptions=False)
    assert result.exit_code == 0 and Butler(str(tmp_path / "few")).config.log_shards == 8


# -- a put claims while its data uploads -------------------------------------------------------------


class _Overlap(StoreWrapper):
    """Holds each data write until a claim write has started (at most ``wait`` s); records whether one did."""

    def __init__(self, inner: Any, wait: float = 5.0, refuse_data: bool = False) -> None:
        super().__init__(inner)
        self.wait = wait
        self.refuse_data = refuse_data
        self.claim_started = threading.Event()
        self.overlapped: list[bool] = []

    def put(self, key: str, data: bytes) -> Any:
        if key.startswith("data/"):
            self.overlapped.append(self.claim_started.wait(self.wait))
            if self.refuse_data:
                raise StoreError(f"refused: {key}")
        return super().put(key, data)

    def put_if_absent(self, key: str, data: bytes) -> Any:
        if key.startswith(CLAIMS_PREFIX):
            self.claim_started.set()
        elif key.startswith("manifest/log/"):
            self.claim_started.clear()  # this put's claim is spent: the next data write waits for its own
        return super().put_if_absent(key, data)


def test_a_put_claims_its_data_id_while_its_data_uploads(atomic_backend: Backend) -> None:
    """The claim does not wait for the data write (one round trip saved per put); the log entry waits for both."""
    uri = atomic_backend.new_uri()
    Butler.create(uri, commit_protocol="claimed", **atomic_backend.options)
    store = _Overlap(open_store(uri, **atomic_backend.options))
    butler = Butler(uri, store=store)
    refs = [butler.put({"v": n}, "metric", {"visit": n}, run="r") for n in range(3)]
    assert store.overlapped == [True] * 3  # each data write was in flight when its claim started
    reader = Butler(uri, **atomic_backend.options)
    assert [reader.get(ref) for ref in refs] == [{"v": 0}, {"v": 1}, {"v": 2}]
    assert _claims(reader) == sorted(claim_key(ref.unique_key) for ref in refs)
    report = fsck(reader)
    assert report.ok and report.orphans == [] and report.claims == []


def test_a_failed_upload_releases_the_claim_and_a_refused_claim_deletes_the_data(atomic_backend: Backend) -> None:
    uri = atomic_backend.new_uri()
    Butler.create(uri, commit_protocol="claimed", **atomic_backend.options)
    refusing = Butler(uri, store=_Overlap(open_store(uri, **atomic_backend.options), refuse_data=True))
    with pytest.raises(StoreError, match="refused"):
        refusing.put({"v": 1}, "metric", {"visit": 1}, run="r")
    reader = Butler(uri, **atomic_backend.options)
    assert _claims(reader) == [] and _data_objects(reader) == []  # the claim was released: nothing left
    held = reader.put({"v": 2}, "metric", {"visit": 1}, run="r")  # the data ID is free
    stale = Butler(uri, **atomic_backend.options)
    stale.registry.check = lambda *args: None  # type: ignore[method-assign]  # a view too old to know
    with pytest.raises(ConflictError) as refused:
        stale.put({"v": 3}, "metric", {"visit": 1}, run="r")
    assert refused.value.conflicts
    assert _claims(reader) == [claim_key(held.unique_key)]  # the holder's claim stays
    assert _data_objects(reader) == [held.key]  # the refused put's data is gone
    assert Butler(uri, **atomic_backend.options).get("metric", {"visit": 1}, run="r") == {"v": 2}


def test_threads_sharing_a_butler_claim_ahead_and_share_commits(tmp_path: Any) -> None:
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="claimed")
    butler = Butler(uri)
    refs: list[Any] = []

    def work(thread: int) -> None:
        refs.extend(butler.put({"t": thread, "n": n}, "metric", {"visit": n, "detector": thread}, run="r")
                    for n in range(10))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader = Butler(uri)
    assert {r.id for r in reader.query()} == {r.id for r in refs} and len(refs) == 80
    assert _claims(reader) == sorted(claim_key(r.unique_key) for r in refs)  # one claim each, none left over
    assert fsck(reader).ok
