"""Registry correctness under concurrency, injected faults, crashes and corruption.

The concurrency tests run real writer processes against a local directory,
LocalStack S3 and a real Swift node (see conftest.py).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import Backend

from objbutler import Butler
from objbutler.errors import (
    CommitOutcomeUnknownError,
    ConflictError,
    FormatError,
    NotSupportedError,
    StoreError,
    TransientStoreError,
)
from objbutler.maintenance import fsck, vacuum
from objbutler.registry import finish_folds
from objbutler.stores import open_store
from objbutler.testing.faults import FailingWritesStore, IgnoresConditionsStore
from objbutler.testing.workload import run_writers

WRITERS = 8


def _data_objects(butler: Butler) -> list[str]:
    return sorted(m.key for m in butler.store.list("data/"))


def test_many_writers_lose_nothing(backend: Backend) -> None:
    uri = backend.new_uri()
    Butler.create(uri, **backend.options)
    per_writer = 50
    visits = [range(w * per_writer, (w + 1) * per_writer) for w in range(WRITERS)]
    results = run_writers(uri, backend.options, "run1", visits)
    assert [r["errors"] for r in results] == [[]] * WRITERS
    assert sum(r["conflicts"] for r in results) == 0
    committed = {ref_id for r in results for ref_id in r["committed"]}
    assert len(committed) == WRITERS * per_writer
    reader = Butler(uri, **backend.options)
    refs = reader.query("metric", run="run1")
    assert {r.id for r in refs} == committed
    assert sorted(r.data_id["visit"] for r in refs) == list(range(WRITERS * per_writer))
    for ref in random.Random(0).sample(refs, 20):
        assert reader.get(ref)["visit"] == ref.data_id["visit"]
    report = fsck(reader)
    assert report.ok and report.orphans == []


def test_racing_writers_have_one_winner(backend: Backend) -> None:
    uri = backend.new_uri()
    Butler.create(uri, **backend.options)
    rounds = 3
    results = run_writers(uri, backend.options, "race", [range(rounds)] * WRITERS)
    assert [r["errors"] for r in results] == [[]] * WRITERS
    winners = [ref_id for r in results for ref_id in r["committed"]]
    assert len(winners) == rounds, f"{len(winners)} winners for {rounds} data IDs"
    assert sum(r["conflicts"] for r in results) == rounds * (WRITERS - 1)
    # every reader agrees on the same single winner per data ID, and no loser's data stays
    views = [{(r.data_id["visit"]): r.id for r in Butler(uri, **backend.options).query("metric")} for _ in range(3)]
    assert views[0] == views[1] == views[2]
    assert sorted(views[0].values()) == sorted(winners)
    butler = Butler(uri, **backend.options)
    assert _data_objects(butler) == sorted(r.key for r in butler.query())
    assert fsck(butler).ok


# -- fault injection ----------------------------------------------------------


def _log_writes(method: str, key: str) -> bool:
    return key.startswith("manifest/log/")


@pytest.mark.parametrize("protocol_store", ["local", "swift-like"])
def test_failed_commit_deletes_data_and_leaves_registry_unchanged(tmp_path: Path, protocol_store: str) -> None:
    uri = str(tmp_path / "repo")
    Butler.create(uri).put({"v": 0}, "metric", {"visit": 0}, run="r")
    if protocol_store == "swift-like":  # degrade to the timestamped protocol
        uri = str(tmp_path / "repo2")
        Butler.create(uri, store=IgnoresConditionsStore(open_store(uri)), allow_no_atomic_create=True).put(
            {"v": 0}, "metric", {"visit": 0}, run="r")
    before_log = sorted(m.key for m in open_store(uri).list("manifest/"))
    failing = FailingWritesStore(open_store(uri), _log_writes)
    butler = Butler(uri, store=failing)
    with pytest.raises(StoreError, match="injected"):
        butler.put({"v": 1}, "metric", {"visit": 1}, run="r")
    assert failing.failures, "the commit write was attempted"
    fresh = Butler(uri)
    assert [r.data_id for r in fresh.query()] == [{"visit": 0}]
    assert sorted(m.key for m in fresh.store.list("manifest/")) == before_log
    assert len(_data_objects(fresh)) == 1
    assert fsck(fresh).orphans == []


def test_commit_whose_outcome_is_unknown_keeps_the_data(tmp_path: Path) -> None:
    uri = str(tmp_path / "repo")
    Butler.create(uri)
    # a 5xx on every attempt: the write may or may not have been applied
    store = FailingWritesStore(open_store(uri), _log_writes,
                               error=lambda key: TransientStoreError(f"injected 503 writing {key}"))
    butler = Butler(uri, store=store)
    butler.registry.refresh()
    original_list = store.inner.list

    def broken_list(prefix: str = "", start_after: str | None = None):  # type: ignore[no-untyped-def]
        if prefix.startswith("manifest/"):
            raise StoreError("listing unavailable")
        return original_list(prefix, start_after)

    store.list = broken_list  # type: ignore[method-assign]
    with pytest.raises(CommitOutcomeUnknownError):
        butler.put({"v": 1}, "metric", {"visit": 1}, run="r")
    fresh = Butler(uri)
    report = fsck(fresh)
    assert report.ok and len(report.orphans) == 1  # kept, reported, removable by vacuum
    assert len(report.claims) == (1 if fresh.config.commit_protocol == "claimed" else 0)  # its claim is kept too
    assert len(vacuum(fresh, dt.timedelta(0))) == 1 + len(report.claims)
    assert fsck(Butler(uri)).claims == []


def test_store_that_ignores_conditions_is_refused(tmp_path: Path) -> None:
    uri = str(tmp_path / "repo")
    lying = IgnoresConditionsStore(open_store(uri))
    with pytest.raises(NotSupportedError, match="ignores If-None-Match"):
        Butler.create(uri, store=lying)
    butler = Butler.create(uri, store=lying, allow_no_atomic_create=True)
    assert butler.config["commit_protocol"] == "timestamped"


def test_a_sequenced_writer_that_keeps_losing_keeps_trying_until_its_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every lost race means someone else committed: losing 80 in a row is contention, not failure (a
    count of 50 failed 45 of 640 puts at 64 processes). Only ``max_commit_seconds`` ends the trying."""
    from objbutler.backoff import Backoff
    from objbutler.registry import registry as registry_module
    from objbutler.stores import StoreWrapper
    from objbutler.stores.local import LocalStore

    monkeypatch.setattr(registry_module, "COMMIT_RACE_BACKOFF", Backoff(base_delay=0.0, max_delay=0.0))
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol="sequenced", checkpoint_interval=1000)
    rival = Butler(uri)
    visits = iter(range(1000, 2000))

    class AlwaysBeaten(StoreWrapper):
        """Before each of the victim's slot creates, the rival commits into that very slot."""

        losses = 80

        def put_if_absent(self, key: str, data: bytes) -> object:
            if key.startswith("manifest/log/") and self.losses > 0:
                self.losses -= 1
                rival.put({"v": self.losses}, "metric", {"visit": next(visits)}, run="r")
            return self.inner.put_if_absent(key, data)

    victim = Butler(uri, store=AlwaysBeaten(LocalStore(uri)))
    ref = victim.put({"v": -1}, "metric", {"visit": -1}, run="r")
    assert len(Butler(uri).query()) == 81 and ref.id in {r.id for r in Butler(uri).query()}
    late = Butler(uri, store=AlwaysBeaten(LocalStore(uri)))
    late.registry.max_commit_seconds = 0.0  # one attempt, then the deadline has passed
    with pytest.raises(ConflictError, match="gave up after losing 1 commit race"):
        late.put({"v": -2}, "metric", {"visit": -2}, run="r")


@pytest.mark.parametrize("protocol", ["sequenced", "claimed"])
def test_lost_races_retry_then_give_up(tmp_path: Path, protocol: str) -> None:
    """Sequenced: a writer that keeps losing gives up (ConflictError). Claimed: a taken slot is skipped without
    reading, so the attempt limit never applies and the put succeeds."""
    uri = str(tmp_path / "repo")
    Butler.create(uri, commit_protocol=protocol, checkpoint_interval=1000)
    butler = Butler(uri)
    butler.registry.refresh()
    Butler(uri).put({"v": 0}, "metric", {"visit": 0}, run="r")  # butler's view is now stale
    ref = butler.put({"v": 1}, "metric", {"visit": 1}, run="r")  # loses seq 1, re-reads, takes seq 2
    assert {r.id for r in Butler(uri).query()} >= {ref.id}
    other = Butler(uri)
    other.registry.refresh()
    Butler(uri).put({"v": 2}, "metric", {"visit": 2}, run="r")
    other.registry.max_attempts = 1
    if protocol == "sequenced":
        with pytest.raises(ConflictError, match="gave up"):
            other.put({"v": 3}, "metric", {"visit": 3}, run="r")
        assert len(_data_objects(Butler(uri))) == 3
        return
    if other.registry.writer is not None:
        for racer in (Butler(uri), Butler(uri)):  # two more commits in other's shard, unseen by other
            racer.registry.refresh()
            racer.registry.writer.shard = other.registry.writer.shard  # type: ignore[union-attr]
            racer.put({"v": 9}, "metric", {"visit": 100 + len(_data_objects(Butler(uri)))}, run="r")
    ref = other.put({"v": 3}, "metric", {"visit": 3}, run="r")
    assert ref.id in {r.id for r in Butler(uri).query()}
    assert len(_data_objects(Butler(uri))) == 6


# -- crashes ------------------------------------------------------------------

_PUT_FOREVER = textwrap.dedent(
    """
    import sys
    from objbutler import Butler
    butler = Butler(sys.argv[1])
    start = int(sys.argv[2])
    print("ready", flush=True)
    for visit in range(start, start + 100000):
        butler.put({"v": visit, "pad": "x" * 20000}, "metric", {"visit": visit}, run="r")
    """
)


def test_sigkill_during_puts_leaves_no_dangling_entry(tmp_path: Path) -> None:
    uri = str(tmp_path / "repo")
    Butler.create(uri, checkpoint_interval=7)
    rng = random.Random(42)
    for attempt in range(20):
        child = subprocess.Popen([sys.executable, "-c", _PUT_FOREVER, uri, str(attempt * 100000)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        report = fsck(Butler(uri))
        assert report.ok, report.dangling
    butler = Butler(uri)
    report = fsck(butler)
    removed = vacuum(butler, dt.timedelta(0))
    assert {o.key for o in removed} == {o.key for o in report.orphans + report.claims}
    after = fsck(Butler(uri))
    assert after.ok and after.orphans == [] and after.claims == []
    assert after.checked == len(butler.query()) > 0


# -- corruption ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["sequenced", "claimed"])
def test_corrupt_log_entry_is_a_format_error_and_nothing_is_rewritten(tmp_path: Path, protocol: str) -> None:
    uri = str(tmp_path / "repo")
    butler = Butler.create(uri, commit_protocol=protocol)
    butler.put({"v": 1}, "metric", {"visit": 1}, run="r")
    store = open_store(uri)
    first = next(m.key for m in store.list("manifest/log/"))  # legacy: log/<n>.json; claimed: log/<shard>/<n>.json
    second = first.replace("00000000000000000001", "00000000000000000002")
    for bad in (b'{"format": "objbutler-commit", "version": 1, "commi', b"\x00\xff garbage", b"[]"):
        store.put(second, bad)
        with pytest.raises(FormatError, match="00000000000000000002"):
            Butler(uri).query()
        with pytest.raises(FormatError):
            Butler(uri).put({"v": 2}, "metric", {"visit": 2}, run="r")
        assert store.get(second) == bad
        assert store.get(first)  # nothing lost


def test_corrupt_checkpoint_falls_back_to_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri = str(tmp_path / "repo")
    butler = Butler.create(uri, checkpoint_interval=5)
    for visit in range(12):
        butler.put({"v": visit}, "metric", {"visit": visit}, run="r")
    store = open_store(uri)
    newest = sorted(m.key for m in store.list("manifest/checkpoints/"))[-1]
    data = store.get(newest)
    store.put(newest, data[: len(data) // 2])
    refs = Butler(uri).query("metric")
    assert sorted(r.data_id["visit"] for r in refs) == list(range(12))
    assert "skipping unreadable checkpoint" in caplog.text
    assert store.get(newest) == data[: len(data) // 2]


@pytest.mark.parametrize("protocol", ["sequenced", "claimed"])
def test_checkpoint_retention_keeps_the_newest(tmp_path: Path, protocol: str) -> None:
    uri = str(tmp_path / "repo")
    butler = Butler.create(uri, checkpoint_interval=3, commit_protocol=protocol)
    butler.registry.compaction_grace = 0.0
    butler.registry.fold_in_background = False  # how many folds land must not depend on thread timing
    for visit in range(20):
        butler.put({"v": visit}, "metric", {"visit": visit}, run="r")
    assert finish_folds(timeout=60)
    keys = [m.key.rsplit("/", 1)[1] for m in butler.store.list("manifest/checkpoints/")]
    if protocol == "sequenced":
        assert keys == [f"{n:020d}.parquet" for n in (12, 15, 18)]
    else:  # a claimed writer checks every third commit of its own (from a random phase). A fold
        # deletes the checkpoints below the marker it deleted through: those of the live markers remain.
        totals = [int(key.split(".")[0]) for key in keys]
        markers = [int(m.key.rsplit("/", 1)[1].split(".")[0]) for m in butler.store.list("manifest/log/~/")]
        assert totals == markers and len(totals) == 2 and totals[1] >= 18, (totals, markers)
    assert Counter(r.data_id["visit"] for r in Butler(uri).query()) == Counter(range(20))


def test_image_layouts_survive_checkpoints_and_older_checkpoints_still_read(tmp_path: Path) -> None:
    import io

    import numpy as np
    import pyarrow.parquet as pq

    uri = str(tmp_path / "repo")
    butler = Butler.create(uri, checkpoint_interval=2)
    image = np.arange(12, dtype=np.uint16).reshape(3, 4)
    refs = [butler.put(image, "raw", {"visit": visit}, run="r", format="fits") for visit in range(3)]
    assert refs[0].layout == {"hdu": 0, "data_start": 2880, "shape": [3, 4], "bitpix": 16, "bscale": 1, "bzero": 32768}
    assert finish_folds(timeout=60)
    store = open_store(uri)
    newest = sorted(m.key for m in store.list("manifest/checkpoints/"))[-1]
    table = pq.read_table(io.BytesIO(store.get(newest)))
    assert table.column("layout").null_count == 0  # plain JSON in the Parquet file
    assert {r.id: r.layout for r in Butler(uri).query("raw")} == {r.id: r.layout for r in refs}
    sink = io.BytesIO()
    pq.write_table(table.drop(["layout"]), sink)  # a checkpoint from before layouts were recorded
    store.put(newest, sink.getvalue())
    back = Butler(uri).query("raw")
    assert len(back) == 3 and sum(r.layout is None for r in back) >= 2  # those in the checkpoint lost their hint
    for ref in back:
        np.testing.assert_array_equal(Butler(uri).get_cutouts(ref, [(1, 0, 4, 2)])[0].data, image[0:2, 1:4])


def test_swift_s3api_gateway_is_refused_then_degrades(swift_server: object) -> None:
    """Swift's s3api checks If-None-Match only one writer at a time and answers 501 to If-Match."""
    import uuid

    from objbutler.stores.s3 import S3Store

    env = swift_server.s3_env  # type: ignore[attr-defined]
    options = {"endpoint_url": env["AWS_ENDPOINT_URL"], "access_key": env["AWS_ACCESS_KEY_ID"],
               "secret_key": env["AWS_SECRET_ACCESS_KEY"], "region": env.get("AWS_DEFAULT_REGION", "us-east-1")}
    bucket = f"gw-{uuid.uuid4().hex[:8]}"
    list(S3Store(bucket, create_bucket=True, **options).list())
    with pytest.raises(NotSupportedError, match="If-Match"):
        Butler.create(f"s3://{bucket}/repo", **options)
    butler = Butler.create(f"s3://{bucket}/repo", allow_no_atomic_create=True, **options)
    assert butler.config["commit_protocol"] == "timestamped"
    butler.put({"v": 1}, "metric", {"visit": 1}, run="r")
    assert Butler(f"s3://{bucket}/repo", **options).get("metric", {"visit": 1}) == {"v": 1}


def test_timestamped_checkpoint_with_nothing_settled_yet_is_a_no_op(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No commit older than a minute: write_checkpoint writes nothing (it raised IndexError, and every put with
    checkpoint_interval=1 logged it as a failed housekeeping step)."""
    uri = str(tmp_path / "repo")
    store = IgnoresConditionsStore(open_store(uri))
    butler = Butler.create(uri, store=store, allow_no_atomic_create=True, checkpoint_interval=1)
    butler.registry.settle_seconds = 0.0
    with caplog.at_level("WARNING"):
        butler.put({"v": 1}, "metric", {"visit": 1}, run="r")
    assert "housekeeping" not in caplog.text
    butler.registry.write_checkpoint()
    assert list(store.list("manifest/checkpoints/")) == []
