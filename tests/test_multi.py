"""put_many_repos: one dataset into several repositories and formats; a failure stays where it happened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from conftest import Backend

from objbutler import Activity, Butler, RepoPutResult, put_many_repos
from objbutler.cli import main
from objbutler.errors import ConflictError, StoreError
from objbutler.multi import retry_failed, split_target
from objbutler.stores import open_store
from objbutler.testing.faults import FailingWritesStore

DATA_ID = {"visit": 903334, "detector": 22}


def make_hdu() -> fits.PrimaryHDU:
    data = np.arange(40 * 30, dtype="float32").reshape(40, 30)
    hdu = fits.PrimaryHDU(data)
    hdu.header["EXPTIME"] = (30.0, "seconds")
    return hdu


def data_keys(butler: Butler) -> list[str]:
    return sorted(meta.key for meta in butler.store.list("data/"))


def assert_clean(butler: Butler) -> None:
    """Nothing of the dataset: no data object, no registry entry."""
    assert data_keys(butler) == []
    assert [r for r in butler.query() if r.dataset_type == "calexp"] == []


def fails_log_writes(backend: Backend) -> Butler:
    """A repository whose registry commits fail (after the data object went through)."""
    uri = backend.new_uri()
    Butler.create(uri, **backend.options)
    store = FailingWritesStore(open_store(uri, **backend.options), lambda method, key: key.startswith("manifest/log/"))
    return Butler(uri, store=store)


def test_same_dataset_in_two_formats(local_backend: Backend) -> None:
    a = Butler.create(local_backend.new_uri())
    b = Butler.create(local_backend.new_uri())
    hdu = make_hdu()
    results = put_many_repos([(a, "zarr"), (b, "fits")], hdu, "calexp", DATA_ID, run="run1")
    assert [r.ok for r in results] == [True, True] and [r.uri for r in results] == [a.uri, b.uri]
    assert [r.ref.format for r in results if r.ref] == ["zarr", "fits"]
    for butler in (a, b):
        back = butler.get("calexp", DATA_ID, "run1")
        np.testing.assert_array_equal(back.data, hdu.data)
        assert back.meta["EXPTIME"] == 30.0
    assert "ok" in str(results[0]) and a.uri in str(results[0])


def test_default_format_and_shared_provenance(local_backend: Backend) -> None:
    a = Butler.create(local_backend.new_uri(), default_format="zarr")
    b = Butler.create(local_backend.new_uri())
    raw = a.put(make_hdu(), "raw", DATA_ID, run="raw")
    act = Activity("isr").finish()
    results = put_many_repos([(a, None), (b, None)], make_hdu(), "calexp", DATA_ID, run="run1",
                             inputs=[raw], derived_from=[raw], activity=act)
    assert [r.ref.format for r in results if r.ref] == ["zarr", "fits"]
    for result in results:
        assert result.ref is not None and result.ref.provenance is not None
        assert result.ref.provenance["inputs"][0] == {"id": raw.id, "repository": a.uri, "dataset_type": "raw",
                                                      "data_id": raw.data_id, "run": "raw"}
        assert result.ref.provenance["activity"]["id"] == act.id
    # the copy in B lists its input in A: B's lineage crosses repositories
    graph = b.provenance(results[1].ref)  # type: ignore[arg-type]
    assert graph.nodes[raw.id].resolved and graph.nodes[raw.id].repository == a.uri
    assert sorted(act.outputs) == sorted(r.ref.id for r in results if r.ref)


def test_conflict_in_one_repository_leaves_the_other_intact(local_backend: Backend) -> None:
    a = Butler.create(local_backend.new_uri())
    b = Butler.create(local_backend.new_uri())
    taken = b.put(np.zeros((4, 4), "float32"), "calexp", DATA_ID, run="run1")
    before = data_keys(b)
    results = put_many_repos([(a, "fits"), (b, "zarr")], make_hdu(), "calexp", DATA_ID, run="run1")
    assert results[0].ok and not results[1].ok
    assert isinstance(results[1].error, ConflictError) and "FAILED" in str(results[1])
    np.testing.assert_array_equal(a.get("calexp", DATA_ID, "run1").data, make_hdu().data)
    assert data_keys(b) == before and b.query("calexp") == [taken]  # nothing new in B


@pytest.mark.parametrize("backend_name", ["local", pytest.param("localstack", marks=pytest.mark.servers)])
def test_failed_commit_in_one_repository(request: pytest.FixtureRequest, backend_name: str) -> None:
    backend: Backend = request.getfixturevalue(f"{backend_name}_backend")
    good = Butler.create(backend.new_uri(), **backend.options)
    bad = fails_log_writes(backend)
    results = put_many_repos([(good, "zarr"), (bad, "fits"), (Butler(good.uri, **backend.options), "fits")],
                             make_hdu(), "calexp", DATA_ID, run="run1")
    assert not results[1].ok
    assert isinstance(results[1].error, StoreError) and "injected" in str(results[1].error)
    assert bad.store.failures  # type: ignore[attr-defined]  # the data object was written, the commit failed
    assert_clean(bad)
    reopened = Butler(bad.uri, **backend.options)  # a fresh view of the failed repository: still clean
    assert_clean(reopened)
    # the first and third target are one repository: exactly one of the two racing puts wins
    winner, loser = (results[0], results[2]) if results[0].ok else (results[2], results[0])
    assert winner.ok and isinstance(loser.error, ConflictError)
    (ref,) = good.query("calexp")
    assert ref == winner.ref
    np.testing.assert_array_equal(good.get(ref).data, make_hdu().data)
    assert len({k.split("/")[3].split("-")[-1].split(".")[0] for k in data_keys(good)}) == 1  # the loser's is gone


@pytest.mark.servers
def test_local_and_localstack_together(local_backend: Backend, localstack_backend: Backend) -> None:
    local = Butler.create(local_backend.new_uri())
    remote = Butler.create(localstack_backend.new_uri(), **localstack_backend.options)
    results = put_many_repos([(local, "fits"), (remote, "zarr")], make_hdu(), "calexp", DATA_ID, run="run1")
    assert all(r.ok for r in results)
    np.testing.assert_array_equal(remote.get("calexp", DATA_ID, "run1").data, make_hdu().data)


def test_failed_data_write_leaves_nothing(local_backend: Backend) -> None:
    good = Butler.create(local_backend.new_uri())
    uri = local_backend.new_uri()
    Butler.create(uri)
    bad = Butler(uri, store=FailingWritesStore(open_store(uri), lambda method, key: key.startswith("data/")))
    results = put_many_repos([(good, "fits"), (bad, "zarr")], make_hdu(), "calexp", DATA_ID, run="run1")
    assert results[0].ok and not results[1].ok
    assert_clean(bad)


def test_retry_failed_keeps_successes(local_backend: Backend) -> None:
    good = Butler.create(local_backend.new_uri())
    uri = local_backend.new_uri()
    Butler.create(uri)
    failing = {"on": True}
    store = FailingWritesStore(open_store(uri), lambda method, key: failing["on"] and key.startswith("manifest/log/"))
    flaky = Butler(uri, store=store)
    first = put_many_repos([(good, "fits"), (flaky, "fits")], make_hdu(), "calexp", DATA_ID, run="run1")
    assert [r.ok for r in first] == [True, False]
    failing["on"] = False
    second = retry_failed(first, make_hdu(), "calexp", DATA_ID, run="run1")
    assert [r.ok for r in second] == [True, True] and second[0] is first[0]
    assert len(flaky.query("calexp")) == 1 and len(good.query("calexp")) == 1


def test_bad_object_fails_everywhere_without_raising(local_backend: Backend) -> None:
    a = Butler.create(local_backend.new_uri())
    results = put_many_repos([(a, "fits")], "not an image", "calexp", DATA_ID, run="run1")
    assert not results[0].ok and isinstance(results[0], RepoPutResult)
    assert put_many_repos([], make_hdu(), "calexp", DATA_ID, run="run1") == []
    with pytest.raises(TypeError, match="targets"):
        put_many_repos([(a, "fits")], make_hdu(), "calexp", DATA_ID, run="run1", format="zarr")


def test_split_target() -> None:
    assert split_target("s3://bucket/repo:zarr") == ("s3://bucket/repo", "zarr")
    assert split_target("s3://bucket/repo") == ("s3://bucket/repo", None)
    assert split_target("/data/repo:fits") == ("/data/repo", "fits")
    assert split_target("/data/re:po") == ("/data/re:po", None)


def test_cli_put_many(local_backend: Backend, tmp_path: Path) -> None:
    a = Butler.create(local_backend.new_uri())
    b = Butler.create(local_backend.new_uri())
    path = tmp_path / "image.fits"
    make_hdu().writeto(path)
    runner = CliRunner()
    args = ["put-many", str(path), "calexp", "--to", f"{a.uri}:zarr", "--to", f"{b.uri}:fits",
            "--data-id", "visit=903334", "--data-id", "detector=22", "--run", "run1"]
    ok = runner.invoke(main, args)
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("ok ") == 2
    assert a.find("calexp", DATA_ID).format == "zarr" and b.find("calexp", DATA_ID).format == "fits"
    c = Butler.create(local_backend.new_uri())
    again = runner.invoke(main, [*args[:5], "--to", c.uri, *args[7:]])  # a is taken now, c is new
    assert again.exit_code == 1
    assert "FAILED" in again.output and "error: the put failed in 1 of 2 repositories" in again.output
    assert c.find("calexp", DATA_ID).format == "fits"
    no_run = runner.invoke(main, args[:-2])
    assert no_run.exit_code != 0 and "run" in no_run.output
