"""Group commit: put_many, batch and threads sharing commits (issue 17).

Commits are counted as log objects (``manifest/log/``): one per registry commit on
these uncontended runs. Faults come from :class:`~objbutler.testing.faults.FaultyStore`
around a real store; verification always opens a fresh Butler without faults.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from budget_helpers import InFlightStore
from conftest import Backend

from objbutler import Butler
from objbutler.errors import (
    BatchError,
    CommitOutcomeUnknownError,
    ConflictError,
    FormatError,
    ObjButlerError,
    StoreError,
)
from objbutler.registry.records import DatasetRef
from objbutler.stores import ObjectMeta, Store, open_store, run_concurrently
from objbutler.testing.faults import Fault, FaultPlan, FaultyStore, IgnoresConditionsStore

LOG = "manifest/log/"


def _log_objects(store: Store) -> int:
    """Commits in the log (not the compaction markers and records under ``~``)."""
    return sum(1 for meta in store.list(LOG) if meta.key.endswith(".json") and not meta.key.startswith(f"{LOG}~"))


def _data_keys(store: Store) -> list[str]:
    return [meta.key for meta in store.list("data/")]


def _only_data_of(store: Store, refs: list[DatasetRef]) -> None:
    """Every data object in the store belongs to one of ``refs`` (refused items left nothing)."""
    keys = [ref.key for ref in refs]
    stray = [key for key in _data_keys(store) if not any(key == k or key.startswith(k.rstrip("/") + "/")
                                                         for k in keys)]
    assert stray == []


def _has_data(store: Store, ref: DatasetRef) -> bool:
    return any(key == ref.key or key.startswith(ref.key.rstrip("/") + "/") for key in _data_keys(store))


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(8, 8)).astype(np.float32)


def _mixed_items(offset: int = 0) -> list[tuple[Any, str, dict[str, Any]]]:
    """Several dataset types, new data ID keys, three formats."""
    items: list[tuple[Any, str, dict[str, Any]]] = []
    for i in range(offset, offset + 4):
        items.append(({"i": i}, "metric", {"visit": i, "detector": 1}))
        items.append((_image(i), "raw", {"exposure": i, "detector": 2}))
        items.append(({"tract": i}, "skymap", {"tract": i, "patch": "a"}))
    return items


def _check_readable(uri: str, options: dict[str, Any], refs: list[DatasetRef],
                    items: list[tuple[Any, str, dict[str, Any]]]) -> None:
    fresh = Butler(uri, **options)
    for ref, (obj, dataset_type, data_id) in zip(refs, items, strict=True):
        assert fresh.find(dataset_type, data_id, run="r").id == ref.id
        got = fresh.get(ref)
        if isinstance(obj, np.ndarray):
            np.testing.assert_array_equal(np.asarray(got.data), obj)
        else:
            assert got == obj


# -- put_many at scale -----------------------------------------------------------------------------------------


def test_put_many_of_a_thousand_makes_a_handful_of_commits(localstack_backend: Backend) -> None:
    uri = localstack_backend.new_uri()
    butler = Butler.create(uri, **localstack_backend.options)
    items = [({"i": i, "name": f"d{i}"}, "metric", {"visit": i // 10, "detector": i % 10}) for i in range(1000)]
    refs = butler.put_many(items, run="r", chunk_size=300)
    assert len(refs) == 1000 and all(isinstance(ref, DatasetRef) for ref in refs)
    assert _log_objects(butler.store) == 4  # 300 + 300 + 300 + 100, not 1,000
    fresh = Butler(uri, **localstack_backend.options)
    assert {ref.id for ref in fresh.query("metric", run="r")} == {ref.id for ref in refs}
    got = run_concurrently(fresh.get, refs, 8)
    assert got == [obj for obj, _, _ in items]


def test_put_many_default_chunk_is_one_commit(local_backend: Backend) -> None:
    butler = Butler.create(local_backend.new_uri())
    refs = butler.put_many([({"i": i}, "metric", {"visit": i}) for i in range(500)], run="r")
    assert len(refs) == 500
    assert _log_objects(butler.store) == 1


# -- per-item semantics ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend_name", ["local", "localstack"])
def test_per_item_semantics_with_a_mix(backend_name: str, request: pytest.FixtureRequest) -> None:
    backend: Backend = request.getfixturevalue(f"{backend_name}_backend")
    uri = backend.new_uri()
    Butler.create(uri, **backend.options)
    taken = Butler(uri, **backend.options).put({"old": 1}, "metric", {"visit": 0, "detector": 1}, run="r")
    plan = FaultPlan([Fault("refuse", "put", r"^data/r/flaky/", occurrences=None)])
    butler = Butler(uri, store=FaultyStore(open_store(uri, **backend.options), plan))
    # a stale view: another writer takes a data ID after this Butler last looked, so the commit itself refuses it
    butler.registry.refresh()
    raced = Butler(uri, **backend.options).put(_image(99), "raw", {"exposure": 7, "detector": 2}, run="r")
    items: list[Any] = [
        ({"i": 0}, "metric", {"visit": 0, "detector": 1}),          # 0: taken already
        ({"i": 1}, "metric", {"visit": 1, "detector": 1}),          # 1: fine
        ({"i": 2}, "metric", {"visit": 2, "detector": 1}),          # 2: first of a duplicate pair: wins
        ({"i": 3}, "metric", {"visit": 2, "detector": 1}),          # 3: same data ID in the batch
        (object(), "raw", {"exposure": 4, "detector": 2}),          # 4: encoding fails
        ({"i": 5}, "flaky", {"visit": 5}),                          # 5: upload fails
        (_image(6), "raw", {"exposure": 6, "detector": 2}),         # 6: fine
        (_image(7), "raw", {"exposure": 7, "detector": 2}),         # 7: taken while we were not looking
        {"obj": {"i": 8}, "dataset_type": "skymap", "data_id": {"tract": 8}, "inputs": [taken]},  # 8: fine
        ("not", "an item"),                                         # 9: malformed
    ]
    with pytest.raises(BatchError) as caught:
        butler.put_many(items, run="r")
    results = caught.value.results
    assert len(results) == len(items)
    ok = {1, 2, 6, 8}
    assert {i for i, r in enumerate(results) if isinstance(r, DatasetRef)} == ok
    assert isinstance(results[0], ConflictError) and isinstance(results[3], ConflictError)
    assert isinstance(results[7], ConflictError) and results[7].conflicts  # named by the commit
    assert isinstance(results[4], FormatError)
    assert isinstance(results[5], StoreError)
    assert isinstance(results[9], ObjButlerError)
    assert [i for i, _ in caught.value.failures] == [0, 3, 4, 5, 7, 9]
    committed = [r for r in results if isinstance(r, DatasetRef)]
    assert [r.data_id for r in committed] == [items[i][2] for i in (1, 2, 6)] + [{"tract": 8}]
    fresh = Butler(uri, **backend.options)
    _only_data_of(fresh.store, [*committed, taken, raced])
    assert fresh.find("metric", {"visit": 2, "detector": 1}, run="r").id == results[2].id
    assert fresh.get(results[2]) == {"i": 2}
    assert fresh.find("raw", {"exposure": 7, "detector": 2}, run="r").id == raced.id
    assert _log_objects(fresh.store) == 3  # taken, raced, and ONE for the batch (after dropping item 7)
    # errors="return" gives the same list instead of raising
    again = butler.put_many([({"i": 1}, "metric", {"visit": 1, "detector": 1}),
                             ({"i": 10}, "metric", {"visit": 10, "detector": 1})], run="r", errors="return")
    assert isinstance(again[0], ConflictError) and isinstance(again[1], DatasetRef)


def test_type_disagreement_refuses_only_that_item(local_backend: Backend) -> None:
    butler = Butler.create(local_backend.new_uri())
    butler.put({"i": 0}, "metric", {"visit": 0}, run="r")
    results = butler.put_many([({"i": 1}, "metric", {"visit": 1, "detector": 3}),  # keys disagree with the registry
                               ({"i": 2}, "metric", {"visit": 2}),
                               ({"i": 3}, "other", {"visit": "three"}),            # visit is an int key
                               ({"i": 4}, "new1", {"band": 1}),                    # a new key, int ...
                               ({"i": 5}, "new2", {"band": "g"}),                  # ... and str in the same batch
                               ({"i": 6}, "fresh", {"a": 1}),                      # a new type ...
                               ({"i": 7}, "fresh", {"b": 1})],                     # ... with other keys
                              run="r", errors="return")
    assert [type(r).__name__ for r in results] == ["ConflictError", "DatasetRef", "ConflictError", "DatasetRef",
                                                   "ConflictError", "DatasetRef", "ConflictError"]
    committed = [r for r in results if isinstance(r, DatasetRef)]
    _only_data_of(butler.store, [*committed, *butler.query("metric", run="r")])
    assert Butler(butler.uri).find("new1", {"band": 1}, run="r").id == results[3].id


# -- the commit point ------------------------------------------------------------------------------------------


def _faulty(uri: str, options: dict[str, Any], faults: list[Fault], *, timestamped: bool = False,
            checkpoint_interval: int = 100) -> tuple[Butler, FaultyStore]:
    inner = open_store(uri, **options)
    if timestamped:
        inner = IgnoresConditionsStore(inner)  # type: ignore[assignment]
        Butler.create(uri, store=inner, allow_no_atomic_create=True, checkpoint_interval=checkpoint_interval)
    else:
        Butler.create(uri, checkpoint_interval=checkpoint_interval, **options)
    plan = FaultPlan()
    faulty = FaultyStore(inner, plan)
    butler = Butler(uri, store=faulty)
    butler.registry.settle_seconds = 0.05
    butler.registry.fold_in_background = False  # a fold's faults strike inside the put, after its commit
    butler.registry.refresh()  # the faults strike from the batch on, not while opening
    plan.add(*faults)
    return butler, faulty


@pytest.mark.parametrize("backend_name", ["local", "localstack"])
@pytest.mark.parametrize("faults,checkpoint_interval", [
    ([Fault("lost_answer", "put_if_absent", r"^manifest/log/", occurrences=None)], 100),
    ([Fault("refuse", "put|put_if_absent", r"^manifest/checkpoints/", occurrences=None),
      Fault("before", "list|delete", r"^manifest/checkpoints/", occurrences=None)], 1),
    ([Fault("lost_answer", "put|put_if_absent", r"^manifest/checkpoints/", occurrences=None),
      Fault("lost_answer", "list", r"^manifest/", occurrences=None)], 1),
], ids=["lost-commit-answer", "failing-checkpoint", "failing-checkpoint-and-listings"])
def test_faults_after_the_commit_point_never_undo_it(backend_name: str, faults: list[Fault],
                                                     checkpoint_interval: int,
                                                     request: pytest.FixtureRequest) -> None:
    backend: Backend = request.getfixturevalue(f"{backend_name}_backend")
    uri = backend.new_uri()
    butler, faulty = _faulty(uri, backend.options, faults, checkpoint_interval=checkpoint_interval)
    items = _mixed_items()
    refs = butler.put_many(items, run="r", chunk_size=5)  # three chunks, so checkpoints fall between them
    assert sum(faulty.counts.values()) > 0  # the faults did fire
    assert all(isinstance(ref, DatasetRef) for ref in refs)
    _check_readable(uri, backend.options, refs, items)


def test_failure_before_the_commit_point_deletes_that_chunk_only(local_backend: Backend) -> None:
    uri = local_backend.new_uri()
    butler, _ = _faulty(uri, {}, [Fault("refuse", "put_if_absent", r"^manifest/log/", occurrences=2)])
    items = _mixed_items()
    results = butler.put_many(items, run="r", chunk_size=5, errors="return")
    assert all(isinstance(r, DatasetRef) for r in results[:5] + results[10:])
    assert all(isinstance(r, StoreError) and not isinstance(r, CommitOutcomeUnknownError) for r in results[5:10])
    committed = [r for r in results if isinstance(r, DatasetRef)]
    fresh = Butler(uri)
    _only_data_of(fresh.store, committed)
    assert {r.id for t in ("metric", "raw", "skymap") for r in fresh.query(t, run="r")} == {r.id for r in committed}


def test_outcome_unknown_keeps_the_data_of_that_chunk(local_backend: Backend) -> None:
    uri = local_backend.new_uri()
    # the second commit's answer is lost and its slot cannot be read back: nobody can tell whether it landed
    butler, faulty = _faulty(uri, {}, [Fault("lost_answer", "put_if_absent", r"^manifest/log/", occurrences=2),
                                       Fault("before", "put_if_absent", r"^manifest/log/",
                                             occurrences=tuple(range(3, 20))),
                                       Fault("before", "get", r"^manifest/log/", occurrences=None)])
    items = _mixed_items()
    results = butler.put_many(items, run="r", chunk_size=6, errors="return")
    assert all(isinstance(r, DatasetRef) for r in results[:6])
    unknown = results[6:]
    assert all(isinstance(r, CommitOutcomeUnknownError) for r in unknown)
    assert sum(faulty.counts.values()) > 0
    assert len(_data_keys(Butler(uri).store)) == 12  # the unknown chunk's data is kept (JSON and FITS: one object each)
    # it did land (the lost answer applied the write): a fresh Butler sees all 12
    fresh = Butler(uri)
    assert sum(len(fresh.query(t, run="r")) for t in ("metric", "raw", "skymap")) == 12


def test_timestamped_refresh_failing_before_and_after_the_commit_write(local_backend: Backend) -> None:
    # before: the refresh that starts the commit fails -> nothing committed, data deleted
    uri = local_backend.new_uri()
    butler, _ = _faulty(uri, {}, [Fault("before", "list", r"^manifest/log/", occurrences=1)], timestamped=True)
    results = butler.put_many(_mixed_items(), run="r", errors="return")
    assert all(isinstance(r, StoreError) and not isinstance(r, CommitOutcomeUnknownError) for r in results)
    assert _data_keys(Butler(uri).store) == []
    # after: the write went out, the read-back fails -> outcome unknown, data kept, and it did land
    uri = local_backend.new_uri()
    butler, _ = _faulty(uri, {}, [Fault("before", "list", r"^manifest/log/", occurrences=(2, 3, 4, 5, 6))],
                        timestamped=True)
    items = _mixed_items()
    results = butler.put_many(items, run="r", errors="return")
    assert all(isinstance(r, CommitOutcomeUnknownError) for r in results)
    assert _data_keys(Butler(uri).store)
    fresh = Butler(uri)
    assert sum(len(fresh.query(t, run="r")) for t in ("metric", "raw", "skymap")) == len(items)


# -- batch -----------------------------------------------------------------------------------------------------


def test_batch_commits_once_on_exit_with_bounded_uploads(local_backend: Backend) -> None:
    uri = local_backend.new_uri()
    Butler.create(uri)
    store = InFlightStore(open_store(uri))
    butler = Butler(uri, store=store)  # type: ignore[arg-type]
    with butler.batch(run="r", max_concurrency=3, errors="return") as batch:
        futures = [batch.put({"i": i}, "metric", {"visit": i}) for i in range(20)]
        dup = batch.put({"i": -1}, "metric", {"visit": 3})
        assert not futures[0].done()  # committed only on exit
    assert 1 < store.most <= 3
    assert [f.result().data_id for f in futures] == [{"visit": i} for i in range(20)]
    assert isinstance(dup.exception(), ConflictError)
    assert len(batch.results) == 21
    assert _log_objects(store.inner) == 1


def test_batch_exception_inside_commits_nothing_and_deletes_everything(local_backend: Backend) -> None:
    uri = local_backend.new_uri()
    butler = Butler.create(uri)
    with pytest.raises(RuntimeError, match="boom"), butler.batch(run="r") as batch:
        for i in range(10):
            batch.put(_image(i), "raw", {"exposure": i})
        raise RuntimeError("boom")
    assert _data_keys(butler.store) == []
    assert _log_objects(butler.store) == 0
    assert all(isinstance(r, RuntimeError) for r in batch.results)


def test_batch_raises_batch_error_after_committing_the_rest(local_backend: Backend) -> None:
    butler = Butler.create(local_backend.new_uri())
    with pytest.raises(BatchError) as caught, butler.batch(run="r") as batch:
        batch.put({"i": 0}, "metric", {"visit": 0})
        batch.put(object(), "metric", {"visit": 1})
    assert isinstance(caught.value.results[0], DatasetRef)
    assert butler.find("metric", {"visit": 0}, run="r").id == caught.value.results[0].id


# -- threads sharing commits -----------------------------------------------------------------------------------


def _threaded_puts(butler: Butler, n: int = 32) -> list[DatasetRef | BaseException]:
    """``n`` threads put at once; threads 0-3 all put the same data ID."""
    barrier = threading.Barrier(n)
    out: list[DatasetRef | BaseException] = [ConflictError("not run")] * n

    def work(i: int) -> None:
        data_id = {"visit": 0} if i < 4 else {"visit": i}
        barrier.wait()
        try:
            out[i] = butler.put({"thread": i}, "metric", data_id, run="r")
        except ObjButlerError as exc:
            out[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


@pytest.mark.parametrize("backend_name", ["local", "localstack", "swift"])
def test_threads_share_commits(backend_name: str, request: pytest.FixtureRequest) -> None:
    backend: Backend = request.getfixturevalue(f"{backend_name}_backend")
    uri = backend.new_uri()
    butler = Butler.create(uri, **backend.options)
    out = _threaded_puts(butler)
    winners = [i for i in range(4) if isinstance(out[i], DatasetRef)]
    assert len(winners) == 1
    assert all(isinstance(out[i], ConflictError) for i in range(4) if i not in winners)
    assert all(isinstance(out[i], DatasetRef) for i in range(4, 32))
    commits = _log_objects(butler.store)
    assert commits < 29  # 29 datasets committed, in fewer commits
    assert butler.combiner.waits > 0 and butler.combiner.rounds < 32
    fresh = Butler(uri, **backend.options)
    refs = fresh.query("metric", run="r")
    assert len(refs) == 29
    assert fresh.get("metric", {"visit": 0}, run="r") == {"thread": winners[0]}
    _only_data_of(fresh.store, refs)  # the losers deleted their own data
    if backend_name == "swift":
        assert butler.registry.protocol == "timestamped"


def test_swift_batch_settles_once(swift_backend: Backend) -> None:
    uri = swift_backend.new_uri()
    butler = Butler.create(uri, **swift_backend.options)
    assert butler.registry.protocol == "timestamped"
    refs = butler.put_many(_mixed_items(), run="r")
    assert _log_objects(butler.store) == 1  # one commit written, so one settle wait, for 12 datasets
    _check_readable(uri, swift_backend.options, refs, _mixed_items())


def test_a_lone_put_leads_at_once(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    for i in range(5):
        butler.put({"i": i}, "metric", {"visit": i}, run="r")
    assert _log_objects(butler.store) == 5  # nobody to wait for: each put is its own commit
    assert butler.combiner.rounds == 5 and butler.combiner.waits == 0  # ... and leads at once



def test_ingest_refs_holds_the_commit_role_against_rounds(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    out: list[Any] = []
    with butler.combiner.exclusive():
        thread = threading.Thread(target=lambda: out.append(butler.put({"i": 1}, "metric", {"visit": 1}, run="r")))
        thread.start()
        thread.join(0.3)
        assert thread.is_alive() and out == []  # the put waits while the role is held
    thread.join()
    assert isinstance(out[0], DatasetRef) and butler.combiner.waits == 1
    # ingest_refs (what clone commits with) takes the same role: it waits while a round would hold it
    source = Butler.create(str(tmp_path / "source"))
    ref = source.put({"i": 2}, "metric", {"visit": 2}, run="r")
    butler.store.put(ref.key, source.store.get(ref.key))
    with butler.combiner.exclusive():
        thread = threading.Thread(target=lambda: out.append(butler.ingest_refs([ref])))
        thread.start()
        thread.join(0.3)
        assert thread.is_alive() and butler.combiner.waits == 2
    thread.join()
    assert out[1][0].id == ref.id and butler.find("metric", {"visit": 2}, run="r").id == ref.id


def test_ingest_files_commits_a_group_at_once(tmp_path: Path) -> None:
    from astropy.io import fits

    from objbutler.ingest import ingest_files

    butler = Butler.create(str(tmp_path / "repo"))
    paths = []
    for i in range(6):
        path = tmp_path / f"raw{i}.fits"
        fits.PrimaryHDU(_image(i), header=fits.Header([("EXPNUM", i)])).writeto(path)
        paths.append(path)
    (tmp_path / "broken.fits").write_bytes(b"not FITS")
    butler.put(_image(0), "raw", {"exposure": 3}, run="r")  # one file's data ID is taken
    refs, failures = ingest_files(butler, "raw", [*paths, tmp_path / "broken.fits"], {}, {"exposure": "EXPNUM"},
                                  "r")
    assert [r.data_id["exposure"] for r in refs] == [0, 1, 2, 4, 5]
    assert isinstance(failures[0][1], ConflictError)
    assert [p.name for p, _ in failures] == ["raw3.fits", "broken.fits"]
    assert _log_objects(butler.store) == 2  # the earlier put, and one for the whole group
    _only_data_of(butler.store, [*refs, butler.find("raw", {"exposure": 3}, run="r")])


class RacingStore:
    """Forwards to a real store; just before the first commit write, lets another writer commit first.

    The commit's first create under ``manifest/``: a log slot (sequenced), or the dataset type's
    registration that precedes the data ID claims (claimed: claims settle who holds a data ID, before the
    log entry is placed, and a batch's claims are created concurrently).
    """

    def __init__(self, inner: Store, rival: Any) -> None:
        self.inner = inner
        self.rival = rival

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        if key.startswith("manifest/") and self.rival is not None:
            rival, self.rival = self.rival, None
            rival()
        return self.inner.put_if_absent(key, data)


def test_remote_ingest_drops_exactly_the_data_ids_a_rival_took(tmp_path: Path) -> None:
    from astropy.io import fits

    from objbutler.ingest import ingest_objects

    uri = str(tmp_path / "repo")
    Butler.create(uri)
    for i in range(6):
        fits.PrimaryHDU(_image(i), header=fits.Header([("EXPNUM", i)])).writeto(tmp_path / f"raw{i}.fits")
    rival = Butler(uri)
    taken: list[DatasetRef] = []
    store = RacingStore(open_store(uri), lambda: taken.append(
        rival.put(_image(9), "raw", {"exposure": 2}, run="r")))
    butler = Butler(uri, store=store)  # type: ignore[arg-type]
    refs, failures = ingest_objects(butler, "raw", str(tmp_path / "raw*.fits"), run="r",
                                    header_keys={"exposure": "EXPNUM"}, batch_size=32)
    assert sorted(r.data_id["exposure"] for r in refs) == [0, 1, 3, 4, 5]
    assert [(name.rsplit("/", 1)[-1], type(e).__name__) for name, e in failures] == [("raw2.fits", "ConflictError")]
    assert _log_objects(store.inner) == 2  # the rival's, and one for the five others (not one each)
    fresh = Butler(uri)
    assert fresh.find("raw", {"exposure": 2}, run="r").id == taken[0].id
    _only_data_of(fresh.store, [*refs, taken[0]])


def test_data_id_canonicalized_once_per_ref_per_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Count data ID encodings during put_many's commit: one per ref in each of the commit's checks, not ten."""
    import objbutler.registry.records as records

    butler = Butler.create(str(tmp_path / "repo"))
    written = [butler.prepare_put(_image(i), "img", {"visit": i}, "r")[0] for i in range(30)]
    for pending in written:
        butler.registry.check([pending.dataset_type], pending.kinds, [pending.ref])
    calls = []
    original = records.canonical_data_id

    def counting(data_id: Any) -> str:
        calls.append(1)
        return original(data_id)

    monkeypatch.setattr(records, "canonical_data_id", counting)
    butler.registry.check([written[0].dataset_type], written[0].kinds, [p.ref for p in written])
    assert len(calls) == 30
    calls.clear()
    outcomes = butler.commit_pending(written)
    assert all(isinstance(o, DatasetRef) for o in outcomes)
    # _admit (its key and its check), then the commit's own check and index; claimed: and the claim's key
    per_ref = 6 if butler.config.commit_protocol == "claimed" else 5
    assert len(calls) <= per_ref * 30
