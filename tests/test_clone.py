"""objbutler clone: copy a subset of a repository between backends, verified and resumable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mixed_repo
import pytest
from click.testing import CliRunner
from conftest import Backend
from objbutler_servers import start_localstack

from objbutler import Butler, DatasetRef
from objbutler.cli import main
from objbutler.clone import clone, select_datasets
from objbutler.errors import ConflictError, FormatError, InvalidKeyError, NotFoundError, StoreError
from objbutler.maintenance import fsck
from objbutler.stores import open_store
from objbutler.stores.s3 import S3Store
from objbutler.testing.faults import FailingWritesStore


def ids(butler: Butler) -> list[str]:
    return sorted(ref.id for ref in butler.query())


def assert_clean_copy(dst: Butler, src_ids: list[str]) -> None:
    found = [ref.id for ref in dst.query()]
    assert sorted(found) == src_ids, "duplicates or missing datasets"
    report = fsck(dst, verify_checksums=True)
    assert report.ok, report.dangling
    assert not report.orphans, report.orphans


@pytest.fixture
def small_src(tmp_path: Path) -> Butler:
    butler = Butler.create(str(tmp_path / "src"))
    mixed_repo.fill(butler, 9)
    return butler


# -- the main promise ---------------------------------------------------------------


@pytest.mark.servers
@pytest.mark.slow
def test_clone_50_from_localstack_then_serve_with_the_server_stopped(tmp_path: Path) -> None:
    clone_path = str(tmp_path / "clone")
    with start_localstack() as server:  # our own server: stopping it must not break the shared fixture
        uri, options = mixed_repo.s3_repo_uri(server.info)
        src = Butler.create(uri, **options)
        mixed_repo.fill(src, 50)
        expected = mixed_repo.snapshot(src)
        report = clone(src, clone_path, progress=False)
        assert report.ok and len(report.copied) == 50 and report.bytes_copied > 0
        endpoint = options["endpoint_url"]
    stopped = S3Store(uri.split("/")[2], endpoint_url=endpoint, access_key="test", secret_key="test")
    with pytest.raises(StoreError):
        stopped.head("objbutler.json")  # really gone
    copy = Butler(clone_path)
    assert copy.config["default_format"] == src.config["default_format"]
    assert mixed_repo.snapshot(copy) == expected
    assert_clean_copy(copy, sorted(r["id"] for r in expected["all"]))


@pytest.mark.servers
@pytest.mark.slow
def test_sigkill_mid_clone_then_resume(localstack_backend: Backend, tmp_path: Path) -> None:
    uri = localstack_backend.new_uri()
    src = Butler.create(uri, **localstack_backend.options)
    mixed_repo.fill(src, 50)
    src_ids = ids(src)
    dst_path = tmp_path / "dst"
    env = {**os.environ, "AWS_ENDPOINT_URL": localstack_backend.options["endpoint_url"],
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    argv = [sys.executable, "-m", "objbutler.cli", "clone", uri, str(dst_path), "--jobs", "1", "--batch-size", "4",
            "--no-progress"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log_dir = dst_path / "manifest" / "log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log_dir.is_dir() and len(list(log_dir.glob("**/*.json"))) >= 3:  # either log layout
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"clone finished before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = Butler(str(dst_path))
    committed = ids(partial)
    assert 0 < len(committed) < 50
    assert set(committed) <= set(src_ids)

    report = clone(uri, str(dst_path), progress=False, source_options=localstack_backend.options)
    assert report.ok
    assert sorted(r.id for r in report.skipped) == committed
    assert len(report.copied) == 50 - len(committed)
    assert_clean_copy(Butler(str(dst_path)), src_ids)
    again = clone(uri, str(dst_path), progress=False, source_options=localstack_backend.options)
    assert not again.copied and len(again.skipped) == 50


# -- directions between backends -------------------------------------------------------


@pytest.mark.servers
def test_local_to_s3_to_swift(small_src: Butler, localstack_backend: Backend, swift_backend: Backend) -> None:
    expected = mixed_repo.snapshot(small_src)
    s3_uri = localstack_backend.new_uri()
    report = clone(small_src, s3_uri, progress=False, destination_options=localstack_backend.options)
    assert report.ok and len(report.copied) == 9
    on_s3 = Butler(s3_uri, **localstack_backend.options)
    swift_uri = swift_backend.new_uri()
    report = clone(on_s3, swift_uri, progress=False, destination_options=swift_backend.options)
    assert report.ok and len(report.copied) == 9
    on_swift = Butler(swift_uri, **swift_backend.options)
    assert on_swift.config["commit_protocol"] == "timestamped"
    assert mixed_repo.snapshot(on_s3) == expected
    assert mixed_repo.snapshot(on_swift) == expected
    assert_clean_copy(on_swift, ids(small_src))


# -- selection ----------------------------------------------------------------------------


def test_subset_by_type_where_and_run(small_src: Butler, tmp_path: Path) -> None:
    mixed_repo.fill(small_src, 3, run="run2")
    report = clone(small_src, str(tmp_path / "d1"), dataset_type="calexp", where={"detector": [0, 1]}, run="run1",
                   progress=False)
    expected = small_src.query("calexp", where={"detector": [0, 1]}, run="run1")
    assert sorted(r.id for r in report.copied) == sorted(r.id for r in expected) and expected
    assert ids(Butler(str(tmp_path / "d1"))) == sorted(r.id for r in expected)


def test_with_inputs_follows_provenance_recursively(tmp_path: Path) -> None:
    src = Butler.create(str(tmp_path / "src"), default_format="zarr")
    raw = src.put(mixed_repo.image(1), "raw", {"visit": 1}, run="r")
    calexp = src.put(mixed_repo.image(2), "calexp", {"visit": 1}, run="r", inputs=[raw], derived_from=[raw])
    metric = src.put({"v": 1}, "metric", {"visit": 1}, run="r", inputs=[calexp])
    src.put({"v": 2}, "metric", {"visit": 2}, run="r")  # not asked for
    refs, missing = select_datasets(src, "metric", where={"visit": 1}, with_inputs=True)
    assert [r.id for r in refs] == [raw.id, calexp.id, metric.id] and missing == []
    assert [r.id for r in select_datasets(src, "metric", where={"visit": 1})[0]] == [metric.id]

    report = clone(src, str(tmp_path / "dst"), dataset_type="metric", where={"visit": 1}, with_inputs=True,
                   progress=False)
    dst = Butler(str(tmp_path / "dst"))
    assert dst.config["default_format"] == "zarr"
    assert sorted(r.id for r in report.copied) == sorted([raw.id, calexp.id, metric.id])
    assert dst.get(metric) == {"v": 1}
    assert dst.find("calexp", {"visit": 1}).provenance == calexp.provenance


def test_inputs_held_elsewhere_are_reported(tmp_path: Path) -> None:
    other = Butler.create(str(tmp_path / "other"))
    elsewhere = other.put({"a": 1}, "metric", {"visit": 1}, run="r")
    src = Butler.create(str(tmp_path / "src"))
    src.put({"b": 2}, "metric", {"visit": 2}, run="r", inputs=[elsewhere])
    report = clone(src, str(tmp_path / "dst"), with_inputs=True, progress=False)
    assert report.ok and len(report.copied) == 1 and report.missing_inputs == [elsewhere.id]
    assert "other repositories" in report.summary()


# -- verification, conflicts, atomicity ------------------------------------------------------


def test_corrupt_source_is_not_propagated(small_src: Butler, tmp_path: Path) -> None:
    victim = small_src.query("calexp")[0]
    zarr_victim = small_src.query("coadd")[0]
    data = bytearray(small_src.store.get(victim.key))
    data[-10] ^= 0xFF
    small_src.store.put(victim.key, bytes(data))
    chunk = next(m.key for m in small_src.store.list(zarr_victim.key + "/c/"))
    small_src.store.put(chunk, small_src.store.get(chunk)[::-1])
    report = clone(small_src, str(tmp_path / "dst"), progress=False)
    assert not report.ok
    assert sorted(ref.id for ref, _ in report.failed) == sorted([victim.id, zarr_victim.id])
    assert all("checksum" in reason for _, reason in report.failed)
    dst = Butler(str(tmp_path / "dst"))
    assert len(dst.query()) == 7
    assert not list(dst.store.list(victim.key)) and not list(dst.store.list(zarr_victim.key + "/"))


def test_data_id_held_by_another_dataset_is_a_failure_not_an_overwrite(small_src: Butler, tmp_path: Path) -> None:
    dst = Butler.create(str(tmp_path / "dst"))
    metric = small_src.query("metric")[0]
    theirs = dst.put({"theirs": True}, "metric", metric.data_id, run=metric.run)
    report = clone(small_src, dst, progress=False)
    assert [ref.id for ref, _ in report.failed] == [metric.id]
    assert len(report.copied) == 8
    assert dst.get("metric", metric.data_id, metric.run) == {"theirs": True}
    assert dst.find("metric", metric.data_id, metric.run).id == theirs.id


def test_half_copied_objects_are_overwritten(small_src: Butler, tmp_path: Path) -> None:
    dst = Butler.create(str(tmp_path / "dst"))
    fits_ref, zarr_ref = small_src.query("calexp")[0], small_src.query("coadd")[0]
    dst.store.put(fits_ref.key, b"half a file")  # what a killed run may leave
    dst.store.put(zarr_ref.key + "/c/0/0", b"torn chunk")
    dst.store.put(zarr_ref.key + "/c/99/99", b"a chunk the source does not have")
    report = clone(small_src, dst, progress=False)
    assert report.ok and len(report.copied) == 9
    assert_clean_copy(dst, ids(small_src))
    assert mixed_repo.snapshot(dst) == mixed_repo.snapshot(small_src)


def test_failed_commit_deletes_the_data_it_wrote(small_src: Butler, tmp_path: Path) -> None:
    Butler.create(str(tmp_path / "dst"))
    failing = FailingWritesStore(open_store(str(tmp_path / "dst")),
                                 lambda method, key: key.startswith("manifest/log/"))
    dst = Butler(str(tmp_path / "dst"), store=failing)
    with pytest.raises(StoreError):
        clone(small_src, dst, progress=False)
    assert list(dst.store.list("data/")) == []
    assert ids(Butler(str(tmp_path / "dst"))) == []


def test_ingest_refs_checks_the_data_is_in_place(small_src: Butler, tmp_path: Path) -> None:
    dst = Butler.create(str(tmp_path / "dst"))
    ref = small_src.query("calexp")[0]
    with pytest.raises(FormatError, match="missing"):
        dst.ingest_refs([ref])
    dst.store.put(ref.key, small_src.store.get(ref.key)[:-1])
    with pytest.raises(FormatError, match="size"):
        dst.ingest_refs([ref])
    data = bytearray(small_src.store.get(ref.key))
    data[100] ^= 1
    dst.store.put(ref.key, bytes(data))
    with pytest.raises(FormatError, match="checksum"):
        dst.ingest_refs([ref], verify_checksums=True)
    assert len(dst.ingest_refs([ref])) == 1  # sizes agree: only the checksum check tells
    commits = len(list(dst.store.list("manifest/log/")))
    assert dst.ingest_refs([ref])[0].id == ref.id  # already there: nothing committed again
    assert len(list(dst.store.list("manifest/log/"))) == commits
    impostor = DatasetRef.from_json({**ref.to_json(), "id": str(uuid.uuid4())})
    with pytest.raises(ConflictError):
        dst.ingest_refs([impostor])
    with pytest.raises(InvalidKeyError):
        dst.ingest_refs([DatasetRef.from_json({**ref.to_json(), "key": "objbutler.json"})])


def test_destination_with_no_bucket_says_so(small_src: Butler, localstack_backend: Backend) -> None:
    uri = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/repo"
    with pytest.raises(NotFoundError, match="bucket"):
        clone(small_src, uri, progress=False, destination_options=localstack_backend.options)


# -- command line ------------------------------------------------------------------------------


def test_cli_clone(small_src: Butler, tmp_path: Path) -> None:
    runner = CliRunner()
    dst = str(tmp_path / "dst")
    result = runner.invoke(main, ["clone", str(tmp_path / "src"), dst, "--type", "calexp", "--where", "detector=0",
                                  "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "1 copied" in result.output
    result = runner.invoke(main, ["clone", str(tmp_path / "src"), dst, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "8 copied" in result.output and "1 already there" in result.output
    Butler(dst).put({"x": 1}, "metric", {"visit": 9999}, run="run1")
    Butler(str(tmp_path / "src")).put({"x": 2}, "metric", {"visit": 9999}, run="run1")
    result = runner.invoke(main, ["clone", str(tmp_path / "src"), dst, "--no-progress"])
    assert result.exit_code == 1
    assert "holds another dataset" in result.output
