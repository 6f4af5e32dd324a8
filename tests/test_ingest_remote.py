"""Issue 14: data already in a bucket can be registered (``objbutler ingest``, :func:`ingest_objects`).

FITS files written by plain astropy (one image, a multi-extension file read with ``hdu=``, a
tile-compressed one) and Zarr arrays written by plain zarr-python (sharded and not) are put into a
bucket next to the repository's, on LocalStack and on Swift, then ingested by copy and in place
(``direct``). What comes back (``get``, ``get_cutouts``, ``get_cutouts_many``, ``get_wcs``) is
compared with astropy's reading of the same bytes and with ``Cutout2D``. Then: ``fsck`` on replaced
and deleted direct objects, ``vacuum`` and ``clone`` around them, the atomicity of a copy whose
commit fails, one clear error per bad source, old checkpoints and records, and that source stores
never get another endpoint's credentials.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS
from click.testing import CliRunner
from conftest import Backend

from objbutler import Box, Butler
from objbutler.cli import main
from objbutler.clone import clone
from objbutler.errors import (
    CommitOutcomeUnknownError,
    ConflictError,
    FormatError,
    NotFoundError,
    NotSupportedError,
    StoreError,
)
from objbutler.ingest import _glob_regex, expand_sources, ingest_files, ingest_objects
from objbutler.maintenance import fsck, vacuum
from objbutler.registry.checkpoint import (
    Checkpoint,
    conform,
    decode_checkpoint,
    encode_checkpoint,
    refs_to_table,
    rows_to_refs,
    schema_for,
)
from objbutler.registry.commits import decode_commit, encode_commit, new_commit
from objbutler.registry.records import DatasetRef, DatasetType
from objbutler.stores import Store
from objbutler.stores.local import LocalStore
from objbutler.stores.locations import open_source_store, parse_location
from objbutler.stores.s3 import S3Store
from objbutler.stores.swift import SwiftStore
from objbutler.testing.faults import Fault, FaultPlan, FaultyStore

SHAPE = (90, 120)


# -- what is ingested: files written by astropy and zarr-python alone ---------------------------------------


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [60.5, 45.5]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return wcs


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 10.0, SHAPE).astype(np.float32)


def _bytes(hdul: fits.HDUList) -> bytes:
    buffer = io.BytesIO()
    hdul.writeto(buffer)
    return buffer.getvalue()


@dataclasses.dataclass
class Expected:
    """What astropy (or zarr) reads back from a source: its pixels and WCS."""

    data: np.ndarray
    wcs: WCS | None


def _fits_sources() -> dict[str, tuple[bytes, dict[str | int | None, Expected]]]:
    """name -> (file bytes, {hdu selector: what astropy reads there})."""
    header = _wcs().to_header()
    simple = fits.PrimaryHDU(_image(1), header=header.copy())
    simple.header["EXPNUM"] = 1
    primary = fits.PrimaryHDU()
    primary.header["EXPNUM"] = 2  # the data ID card lives in the primary header of a multi-extension file
    mef = fits.HDUList([primary, fits.ImageHDU(_image(2), header=header.copy(), name="SCI"),
                        fits.ImageHDU(_image(3) ** 2, name="VAR")])
    integers = (_image(4) * 10).astype(np.int16)
    compressed = fits.HDUList([fits.PrimaryHDU(header=fits.Header([("EXPNUM", 3)])),
                               fits.CompImageHDU(integers, header=header.copy(), compression_type="RICE_1")])
    out: dict[str, tuple[bytes, dict[str | int | None, Expected]]] = {}
    for name, hdul, picks in (("simple.fits", fits.HDUList([simple]), [None]), ("mef.fits", mef, [None, "VAR"]),
                              ("comp.fits", compressed, [None])):
        raw = _bytes(hdul)
        with fits.open(io.BytesIO(raw)) as back:
            expected = {}
            for pick in picks:
                hdu = back[1 if pick is None and name != "simple.fits" else 0 if pick is None else pick]
                wcs = WCS(hdu.header) if "CTYPE1" in hdu.header else None
                expected[pick] = Expected(np.array(hdu.data), wcs)
        out[name] = (raw, expected)
    return out


def _zarr_sources(workdir: Path) -> dict[str, tuple[dict[str, bytes], Expected]]:
    """name -> (relative key -> bytes of every object zarr-python wrote, the array)."""
    out = {}
    for name, chunks, shards, visit in (("plain.zarr", (32, 32), None, 4), ("sharded.zarr", (16, 16), (48, 64), 5)):
        data = _image(10 + visit)
        root = workdir / name
        array = zarr.create_array(zarr.storage.LocalStore(root), shape=data.shape, dtype=data.dtype, chunks=chunks,
                                  shards=shards, attributes={"EXPNUM": visit, "observer": "zarr-python"})
        array[:] = data
        objects = {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}
        out[name] = (objects, Expected(data, None))
    return out


@dataclasses.dataclass
class Sources:
    """Sources written into a bucket next to the repository's, on the same endpoint."""

    backend: Backend
    scheme: str
    bucket: str
    store: Store
    prefix: str
    fits: dict[str, tuple[bytes, dict[str | int | None, Expected]]]
    zarr: dict[str, tuple[dict[str, bytes], Expected]]

    def uri(self, name: str = "") -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}/{name}".rstrip("/")

    def new_repository(self) -> Butler:
        return Butler.create(self.backend.new_uri(), **self.backend.options)


def _source_bucket(backend: Backend) -> tuple[str, str, Store]:
    scheme = backend.base.split("://")[0]
    bucket = f"raw-{uuid.uuid4().hex[:8]}"
    if scheme == "s3":
        list(S3Store(bucket, create_bucket=True, **backend.options).list())
        return scheme, bucket, S3Store(bucket, **backend.options)
    list(SwiftStore(bucket, create_container=True, **backend.options).list())
    return scheme, bucket, SwiftStore(bucket, **backend.options)


def _write_sources(store: Store, prefix: str, workdir: Path) -> tuple[Any, Any]:
    fits_files, arrays = _fits_sources(), _zarr_sources(workdir)
    for name, (raw, _) in fits_files.items():
        store.put(f"{prefix}/{name}", raw)
    store.put(f"{prefix}/notes.txt", b"these are not FITS bytes\n")
    for name, (objects, _) in arrays.items():
        for key, data in objects.items():
            store.put(f"{prefix}/arrays/{name}/{key}", data)
    return fits_files, arrays


def _make_sources(backend: Backend, workdir: Path) -> Sources:
    scheme, bucket, store = _source_bucket(backend)
    fits_files, arrays = _write_sources(store, "raw", workdir)
    return Sources(backend, scheme, bucket, store, "raw", fits_files, arrays)


@pytest.fixture(scope="module", params=["localstack", "swift"])
def sources(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Sources:
    """Read-only sources (tests that change objects make their own)."""
    backend: Backend = request.getfixturevalue(f"{request.param}_backend")
    return _make_sources(backend, tmp_path_factory.mktemp(request.param))


def _fresh_sources(backend: Backend, tmp_path: Path) -> Sources:
    return _make_sources(backend, tmp_path)


# -- comparisons --------------------------------------------------------------------------------------


def _assert_cutouts(butler: Butler, ref: DatasetRef, expected: Expected) -> None:
    """Pixel boxes (inside and overhanging, trim and partial) and, with a WCS, sky positions, as Cutout2D cuts."""
    data = expected.data
    for (x, y, nx, ny), mode in (((30, 40, 21, 15), "trim"), ((3, 5, 16, 16), "trim"), ((118, 88, 10, 12), "partial"),
                                 ((60, 45, 120, 90), "trim")):
        x0, y0 = int(np.ceil(x - nx / 2)), int(np.ceil(y - ny / 2))
        (stamp,) = butler.get_cutouts(ref, [Box(x0, y0, x0 + nx, y0 + ny)], mode=mode)
        source = data.astype(np.float64) if mode == "partial" and data.dtype.kind != "f" else data  # NaN fill
        reference = Cutout2D(source, (x, y), (ny, nx), mode=mode, fill_value=np.nan)
        np.testing.assert_array_equal(stamp.data, reference.data)
    if expected.wcs is None:
        return
    positions = expected.wcs.pixel_to_world([20.0, 70.3, 100.0], [30.0, 44.6, 80.0])
    stamps = butler.get_cutouts(ref, positions, size=11, mode="partial")
    for stamp, position in zip(stamps, positions, strict=True):
        source = data if data.dtype.kind == "f" else data.astype(np.float64)
        reference = Cutout2D(source, position, (11, 11), wcs=expected.wcs, mode="partial", fill_value=np.nan)
        np.testing.assert_array_equal(stamp.data, reference.data)
        np.testing.assert_allclose(stamp.wcs.wcs.crpix, reference.wcs.wcs.crpix)


def _read_back(butler: Butler, ref: DatasetRef, expected: Expected) -> None:
    got = butler.get(ref)
    np.testing.assert_array_equal(got.data, expected.data)
    _assert_cutouts(butler, ref, expected)
    if expected.wcs is not None:
        wcs = butler.get_wcs(ref)
        np.testing.assert_allclose(wcs.wcs.crval, expected.wcs.wcs.crval)


# -- ingest from LocalStack and Swift, by copy and in place ----------------------------------------------------


@pytest.mark.servers
@pytest.mark.parametrize("transfer", ["copy", "direct"])
def test_ingest_from_a_bucket_reads_back_as_astropy_does(sources: Sources, transfer: str) -> None:
    butler = sources.new_repository()
    refs, failures = ingest_objects(butler, "raw", [sources.uri("s*.fits"), sources.uri("comp.fits")], run="night1",
                                    header_keys={"visit": "EXPNUM"}, data_id={"detector": 22}, transfer=transfer)
    assert failures == []
    mef_default, failures = ingest_objects(butler, "raw", sources.uri("mef.fits"), run="night1",
                                           header_keys={"visit": "EXPNUM"}, data_id={"detector": 22},
                                           transfer=transfer)
    assert failures == []
    mef_var, failures = ingest_objects(butler, "raw_var", sources.uri("mef.fits"), run="night1", hdu="VAR",
                                       header_keys={"visit": "EXPNUM"}, data_id={"detector": 22}, transfer=transfer)
    assert failures == []
    arrays, failures = ingest_objects(butler, "zraw", sources.uri("arrays/*.zarr"), run="night1",
                                      header_keys={"visit": "EXPNUM", "observer": "observer"}, transfer=transfer)
    assert failures == []
    by_visit = {ref.data_id["visit"]: ref for ref in refs + mef_default}
    assert sorted(by_visit) == [1, 2, 3]
    assert sorted(ref.data_id["visit"] for ref in arrays) == [4, 5]
    assert all(ref.data_id["observer"] == "zarr-python" for ref in arrays)

    everything = [*by_visit.values(), *mef_var, *arrays]
    if transfer == "direct":
        for ref in everything:
            assert ref.is_direct and ref.key.startswith(f"{sources.scheme}://{sources.bucket}/raw/")
            assert ref.direct is not None and ref.direct["etag"]
        assert list(butler.store.list("data/")) == []  # nothing was copied
    else:
        assert all(not ref.is_direct and ref.key.startswith("data/night1/") for ref in everything)

    # A fresh Butler reads the records from the log, then from a checkpoint.
    for reader in (Butler(butler.uri, **sources.backend.options), butler):
        expected = {1: sources.fits["simple.fits"][1][None], 2: sources.fits["mef.fits"][1][None],
                    3: sources.fits["comp.fits"][1][None]}
        for visit in by_visit:
            _read_back(reader, reader.find("raw", {"visit": visit, "detector": 22}, "night1"), expected[visit])
        (var,) = mef_var
        assert var.layout is not None and var.layout["hdu"] == 2
        _read_back(reader, var, sources.fits["mef.fits"][1]["VAR"])
        np.testing.assert_array_equal(reader.get(var, hdu="SCI").data, expected[2].data)  # the rest of the file
        for ref in arrays:
            name = "plain.zarr" if ref.data_id["visit"] == 4 else "sharded.zarr"
            _read_back(reader, ref, sources.zarr[name][1])
        butler.registry.write_checkpoint()
    many = butler.get_cutouts_many({ref: [Box(0, 0, 8, 9)] for ref in everything})
    assert set(many) == set(everything)
    for (stamp,) in many.values():
        assert stamp.data.shape == (9, 8)

    report = fsck(butler, verify_checksums=True)
    assert report.ok and report.dangling == [] and report.orphans == [] and report.checked == len(everything)


@pytest.mark.servers
def test_ingest_command_from_s3(localstack_backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line, configured as users configure it (the AWS variables), in place and by copy."""
    options = localstack_backend.options
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", options["region"])
    src = _fresh_sources(localstack_backend, tmp_path)
    repo = localstack_backend.new_uri()
    runner = CliRunner()
    assert runner.invoke(main, ["create", repo]).exit_code == 0
    result = runner.invoke(main, ["ingest", repo, "raw", src.uri("*.fits"), "--header-key", "visit=EXPNUM",
                                  "--data-id", "detector=1", "--run", "direct", "--transfer", "direct", "--hdu", "1",
                                  "--no-progress"])
    # simple.fits has no HDU 1: one clear error for it, the two others go in
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert result.exit_code == 1 and len(errors) == 1 and "simple.fits" in errors[0], result.output
    assert "ingested 2 dataset(s) (direct), 1 failure(s)" in result.output
    result = runner.invoke(main, ["ingest", repo, "raw", src.uri("simple.fits"), src.uri("arrays/plain.zarr"),
                                  "--header-key", "visit=EXPNUM", "--data-id", "detector=1", "--run", "copy"])
    assert result.exit_code == 0, result.output
    assert result.output.count("data/copy/raw/") == 2
    result = runner.invoke(main, ["query", repo, "raw", "--json"])
    rows = [json.loads(line) for line in result.output.splitlines()]
    direct = [row for row in rows if "direct" in row]
    assert len(rows) == 4 and len(direct) == 2 and all(row["key"].startswith("s3://") for row in direct)
    result = runner.invoke(main, ["get", repo, "raw", "--data-id", "visit=3", "--data-id", "detector=1", "--run",
                                  "direct", "--out", str(tmp_path / "back.fits")])
    assert result.exit_code == 0, result.output
    with fits.open(tmp_path / "back.fits") as back:
        np.testing.assert_array_equal(back[0].data, src.fits["comp.fits"][1][None].data)
    result = runner.invoke(main, ["fsck", repo, "--verify-checksums"])
    assert result.exit_code == 0 and "0 dangling, 0 orphan(s)" in result.output, result.output


# -- fsck, vacuum, clone and deletion around data registered in place ----------------------------------------------


@pytest.mark.servers
@pytest.mark.parametrize("kind", ["localstack", "swift"])
def test_fsck_reports_direct_objects_replaced_or_deleted(kind: str, request: pytest.FixtureRequest,
                                                         tmp_path: Path) -> None:
    backend: Backend = request.getfixturevalue(f"{kind}_backend")
    src = _fresh_sources(backend, tmp_path)
    butler = src.new_repository()
    refs, failures = ingest_objects(butler, "raw", [src.uri("*"), src.uri("arrays/*")], run="r",
                                    header_keys={"visit": "EXPNUM"}, transfer="direct")
    assert failures[0][0] == src.uri("notes.txt") and len(failures) == 1  # the one non-FITS object
    assert len(refs) == 5
    clean = fsck(butler)
    assert clean.ok and clean.dangling == [] and clean.orphans == []

    by_visit = {ref.data_id["visit"]: ref for ref in refs}
    # Replaced behind objbutler's back: same key, same size, other bytes.
    simple_raw = src.fits["simple.fits"][0]
    changed = bytearray(simple_raw)
    changed[-100] ^= 0xFF
    src.store.put("raw/simple.fits", bytes(changed))
    src.store.delete("raw/comp.fits")  # deleted
    chunk = next(key for key in src.zarr["plain.zarr"][0] if key != "zarr.json")
    src.store.put(f"raw/arrays/plain.zarr/{chunk}", b"garbage")  # one chunk of an array replaced

    report = fsck(butler)
    reasons = {ref.data_id["visit"]: reason for ref, reason in report.dangling}
    assert sorted(reasons) == [1, 3, 4] and not report.ok
    assert "replaced outside objbutler" in reasons[1] and "etag" in reasons[1]
    assert "deleted outside objbutler" in reasons[3]
    assert "replaced outside objbutler" in reasons[4]
    verified = {ref.data_id["visit"]: reason for ref, reason in fsck(butler, verify_checksums=True).dangling}
    assert sorted(verified) == [1, 3, 4] and "checksum" in verified[1]

    with pytest.raises(FormatError, match="checksum"):
        butler.get(by_visit[1])
    with pytest.raises(NotFoundError, match="deleted outside objbutler"):
        butler.get(by_visit[3])
    with pytest.raises(NotFoundError, match="deleted outside objbutler"):
        butler.get_cutouts(by_visit[3], [Box(0, 0, 4, 4)])
    np.testing.assert_array_equal(butler.get(by_visit[5]).data, src.zarr["sharded.zarr"][1].data)

    # The same bytes written again (a new etag, same content): --verify-checksums clears it.
    src.store.put("raw/simple.fits", simple_raw)
    assert 1 not in {ref.data_id["visit"] for ref, _ in fsck(butler, verify_checksums=True).dangling}

    # vacuum never touches data registered in place.
    assert vacuum(butler, dt.timedelta(0)) == []
    assert src.store.head("raw/mef.fits").size == len(src.fits["mef.fits"][0])


@pytest.mark.servers
def test_fsck_command_names_the_replaced_direct_object(localstack_backend: Backend, tmp_path: Path) -> None:
    src = _fresh_sources(localstack_backend, tmp_path)
    butler = src.new_repository()
    ingest_objects(butler, "raw", src.uri("simple.fits"), run="r", data_id={"visit": 1}, transfer="direct")
    src.store.put("raw/simple.fits", _bytes(fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4)))])))
    from objbutler.maintenance import fsck as run_fsck

    report = run_fsck(butler)
    ((dangling, reason),) = report.dangling
    assert dangling.key == src.uri("simple.fits") and "size is" in reason


@pytest.mark.servers
def test_clone_copies_direct_datasets_into_the_destination(localstack_backend: Backend, tmp_path: Path) -> None:
    src = _fresh_sources(localstack_backend, tmp_path)
    butler = src.new_repository()
    refs, failures = ingest_objects(butler, "raw", [src.uri("mef.fits"), src.uri("arrays/sharded.zarr")], run="r",
                                    header_keys={"visit": "EXPNUM"}, transfer="direct")
    assert failures == [] and all(ref.is_direct for ref in refs)
    report = clone(butler, str(tmp_path / "copy"), progress=False)
    assert report.ok and len(report.copied) == 2
    copy = Butler(str(tmp_path / "copy"))
    cloned = {ref.id: ref for ref in copy.query()}
    assert set(cloned) == {ref.id for ref in refs}
    for ref in refs:
        mine = cloned[ref.id]
        assert not mine.is_direct and mine.key.startswith("data/r/raw/") and mine.checksum == ref.checksum
    # Self-contained: the originals can go.
    for meta in list(src.store.list("raw/")):
        src.store.delete(meta.key)
    for ref in refs:
        expected = src.fits["mef.fits"][1][None] if ref.format == "fits" else src.zarr["sharded.zarr"][1]
        np.testing.assert_array_equal(copy.get(cloned[ref.id]).data, expected.data)
    assert fsck(copy, verify_checksums=True).ok
    again = clone(butler, str(tmp_path / "copy"), progress=False)  # a rerun: nothing to copy
    assert len(again.skipped) == 2 and again.copied == []


@pytest.mark.servers
def test_deleting_the_repository_keeps_direct_objects(localstack_backend: Backend, tmp_path: Path) -> None:
    src = _fresh_sources(localstack_backend, tmp_path)
    butler = src.new_repository()
    refs, _ = ingest_objects(butler, "raw", src.uri("arrays/*.zarr"), run="r", header_keys={"visit": "EXPNUM"},
                             transfer="direct")
    assert len(refs) == 2
    before = sorted((meta.key, meta.etag) for meta in src.store.list("raw/"))
    repository = butler.store
    for meta in list(repository.list()):
        repository.delete(meta.key)
    assert list(repository.list()) == []
    assert sorted((meta.key, meta.etag) for meta in src.store.list("raw/")) == before


# -- atomicity of a copy whose commit fails ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", pytest.param("localstack", marks=pytest.mark.servers)])
def test_copy_ingest_deletes_the_copy_when_the_commit_fails(kind: str, request: pytest.FixtureRequest,
                                                            tmp_path: Path) -> None:
    backend: Backend = request.getfixturevalue(f"{kind}_backend")
    uri = backend.new_uri()
    Butler.create(uri, **backend.options)
    inner = Butler(uri, **backend.options).store
    plan = FaultPlan([Fault("refuse", "put_if_absent", r"^manifest/log/", occurrences=None)])
    butler = Butler(uri, store=FaultyStore(inner, plan))
    paths = []
    for visit in (1, 2, 3):
        path = tmp_path / f"raw{visit}.fits"
        fits.PrimaryHDU(_image(visit), header=fits.Header([("EXPNUM", visit)])).writeto(path)
        paths.append(path)
    refs, failures = ingest_objects(butler, "raw", paths, run="r", header_keys={"visit": "EXPNUM"})
    assert refs == [] and len(failures) == 3
    assert all(isinstance(error, StoreError) and not isinstance(error, CommitOutcomeUnknownError)
               for _, error in failures)
    assert list(inner.list("data/")) == []  # every copy was deleted again
    assert Butler(uri, **backend.options).query() == []
    plan.clear()
    refs, failures = ingest_objects(butler, "raw", paths, run="r", header_keys={"visit": "EXPNUM"})
    assert failures == [] and len(refs) == 3 and len(list(inner.list("data/"))) == 3


def test_copy_ingest_keeps_the_copy_when_the_commit_outcome_is_unknown(local_backend: Backend, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import objbutler.registry.registry as registry_module

    monkeypatch.setattr(registry_module.time, "sleep", lambda seconds: None)
    uri = local_backend.new_uri()
    Butler.create(uri)
    inner = Butler(uri).store
    plan = FaultPlan([Fault("before", "put_if_absent|get", r"^manifest/log/\d{3}/", occurrences=None)])  # commits
    butler = Butler(uri, store=FaultyStore(inner, plan))
    path = tmp_path / "raw.fits"
    fits.PrimaryHDU(_image(1)).writeto(path)
    refs, ((source, error),) = ingest_objects(butler, "raw", path, run="r", data_id={"visit": 1})
    assert refs == [] and source == str(path) and isinstance(error, CommitOutcomeUnknownError)
    kept = [meta.key for meta in inner.list("data/")]
    assert len(kept) == 1  # the commit may still land: the data stays, fsck reports it as an orphan
    assert [orphan.key for orphan in fsck(Butler(uri)).orphans] == kept


# -- one clear error per bad source ---------------------------------------------------------------------------


@pytest.mark.servers
def test_bad_sources_each_give_one_clear_error(sources: Sources) -> None:
    butler = sources.new_repository()
    missing_bucket = f"{sources.scheme}://no-such-bucket-{uuid.uuid4().hex[:8]}/raw/*.fits"
    refs, failures = ingest_objects(
        butler, "raw",
        [missing_bucket, f"{sources.scheme}://no-such-bucket-{uuid.uuid4().hex[:6]}/x.fits", sources.uri("*.fitz"),
         sources.uri("notes.txt"), sources.uri("nope.fits"), sources.uri(), sources.uri("simple.fits")],
        run="r", data_id={"visit": 1}, transfer="direct")
    assert [ref.key for ref in refs] == [sources.uri("simple.fits")]  # the good one went in
    errors = dict(failures)
    assert len(errors) == 6
    assert isinstance(errors[missing_bucket], NotFoundError) and "does not exist" in str(errors[missing_bucket])
    assert "matched nothing" in str(errors[sources.uri("*.fitz")])
    assert isinstance(errors[sources.uri("notes.txt")], FormatError)
    assert "not a FITS file" in str(errors[sources.uri("notes.txt")])
    assert "no object or Zarr array" in str(errors[sources.uri("nope.fits")])
    assert "give a glob" in str(errors[sources.uri()])
    # The same data ID again: a conflict for that source alone.
    again, ((_, conflict),) = ingest_objects(butler, "raw", sources.uri("mef.fits"), run="r", data_id={"visit": 1},
                                             transfer="direct")
    assert again == [] and isinstance(conflict, ConflictError)


@pytest.mark.servers
def test_direct_needs_the_repositorys_endpoint(localstack_backend: Backend, swift_backend: Backend,
                                                moto_backend: Backend, tmp_path: Path) -> None:
    s3 = _fresh_sources(localstack_backend, tmp_path / "s3")
    swift = _fresh_sources(swift_backend, tmp_path / "swift")
    local = tmp_path / "local.fits"
    local.write_bytes(s3.fits["simple.fits"][0])
    s3_repo, swift_repo = s3.new_repository(), swift.new_repository()
    for butler, source in ((s3_repo, swift.uri("simple.fits")), (swift_repo, s3.uri("simple.fits")),
                           (s3_repo, str(local))):
        with pytest.raises(NotSupportedError, match="repository's endpoint"):
            ingest_objects(butler, "raw", [s3.uri("mef.fits"), source], run="r", data_id={"visit": 1},
                           transfer="direct")
        assert butler.query() == []  # refused before anything was read
    # Another endpoint of the same scheme (moto), named with its own options: refused in place...
    moto_bucket = f"raw-{uuid.uuid4().hex[:8]}"
    moto = S3Store(moto_bucket, create_bucket=True, **moto_backend.options)
    moto.put("x/simple.fits", s3.fits["simple.fits"][0])
    moto_options = dict(moto_backend.options)
    with pytest.raises(NotSupportedError, match=r"repository's endpoint.*source options open it on S3 at"):
        ingest_objects(s3_repo, "raw", f"s3://{moto_bucket}/x/simple.fits", run="r", data_id={"visit": 1},
                       transfer="direct", source_options=moto_options)
    # ... and copied with those options (and only those: the repository's keys stay home).
    (ref,), failures = ingest_objects(s3_repo, "raw", f"s3://{moto_bucket}/x/simple.fits", run="r",
                                      data_id={"visit": 1}, source_options=moto_options)
    assert failures == [] and not ref.is_direct
    np.testing.assert_array_equal(s3_repo.get(ref).data, s3.fits["simple.fits"][1][None].data)
    # Copy from Swift into an S3 repository: the Swift store is configured from the Swift options given.
    (ref,), failures = ingest_objects(s3_repo, "raw", swift.uri("arrays/plain.zarr"), run="r", data_id={"visit": 2},
                                      source_options=swift_backend.options)
    assert failures == []
    np.testing.assert_array_equal(s3_repo.get(ref).data, swift.zarr["plain.zarr"][1].data)


@pytest.mark.servers
def test_cli_errors_are_one_line(localstack_backend: Backend, swift_backend: Backend, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    options = localstack_backend.options
    for name, value in (("AWS_ENDPOINT_URL", options["endpoint_url"]), ("AWS_ACCESS_KEY_ID", options["access_key"]),
                        ("AWS_SECRET_ACCESS_KEY", options["secret_key"]), ("AWS_DEFAULT_REGION", options["region"]),
                        ("ST_AUTH", swift_backend.options["auth_url"]), ("ST_USER", swift_backend.options["user"]),
                        ("ST_KEY", swift_backend.options["key"])):
        monkeypatch.setenv(name, value)
    src = _fresh_sources(localstack_backend, tmp_path)
    repo = localstack_backend.new_uri()
    Butler.create(repo)
    cases = {
        "missing bucket": [f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/raw/*.fits"],
        "glob matches nothing": [src.uri("*.nothing")],
        "not FITS": [src.uri("notes.txt")],
        "direct from swift": [f"swift://{uuid.uuid4().hex[:8]}/x.fits", "--transfer", "direct"],
        "direct from a local file": [str(tmp_path), "--transfer", "direct"],
    }
    for case, args in cases.items():
        result = CliRunner().invoke(main, ["ingest", repo, "raw", *args, "--data-id", "visit=1", "--run", "r"])
        errors = [line for line in result.output.splitlines() if line.lower().startswith("error")]
        assert result.exit_code == 1 and len(errors) == 1, (case, result.output)
        assert "Traceback" not in result.output
    assert Butler(repo).query() == []


def test_direct_objects_inside_the_repository_are_refused(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    path = tmp_path / "repo" / "raw" / "x.fits"
    path.parent.mkdir()
    fits.PrimaryHDU(_image(1)).writeto(path)
    refs, ((_, error),) = ingest_objects(butler, "raw", path, run="r", data_id={"visit": 1}, transfer="direct")
    assert refs == [] and isinstance(error, NotSupportedError) and "inside the repository" in str(error)
    (ref,), _ = ingest_objects(butler, "raw", path, run="r", data_id={"visit": 1})  # a copy is fine
    assert ref.key.startswith("data/")


# -- local sources, groups, duplicates, progress --------------------------------------------------------------


def test_local_direct_and_copy_with_a_zarr_group(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "night.zarr"), mode="w",
                            attributes={"night": "2026-11-29"})
    images = {}
    for detector in (1, 2):
        data = _image(detector)
        array = group.create_array(f"det{detector}", shape=data.shape, dtype=data.dtype, chunks=(40, 40),
                                   attributes={"DETECTOR": detector})
        array[:] = data
        images[detector] = data
    for transfer in ("direct", "copy"):
        refs, failures = ingest_objects(butler, "zraw", tmp_path / "night.zarr", run=transfer, transfer=transfer,
                                        header_keys={"detector": "DETECTOR", "night": "night"})
        assert failures == [] and sorted(ref.data_id["detector"] for ref in refs) == [1, 2]
        for ref in refs:
            assert ref.data_id["night"] == "2026-11-29"
            np.testing.assert_array_equal(butler.get(ref).data, images[ref.data_id["detector"]])
            assert ref.is_direct == (transfer == "direct")
    assert fsck(butler, verify_checksums=True).ok


def test_one_bad_file_does_not_stop_the_others(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    for name, visit in (("a.fits", 1), ("b.fits", 1), ("c.fits", 2)):
        fits.PrimaryHDU(_image(visit), header=fits.Header([("EXPNUM", visit)])).writeto(tmp_path / name)
    fits.PrimaryHDU(_image(3)).writeto(tmp_path / "d.fits")  # no EXPNUM
    (tmp_path / "e.fits").write_bytes(b"\x1f\x8b" + b"\0" * 100)  # gzip
    refs, failures = ingest_objects(butler, "raw", str(tmp_path / "*.fits"), run="r",
                                    header_keys={"visit": "EXPNUM"}, batch_size=10, jobs=2)
    assert sorted(ref.data_id["visit"] for ref in refs) == [1, 2]
    errors = {Path(source).name: str(error) for source, error in failures}
    assert set(errors) == {"b.fits", "d.fits", "e.fits"}
    assert "also the data ID of" in errors["b.fits"] and "EXPNUM" in errors["d.fits"] and "gzip" in errors["e.fits"]
    assert len(list(butler.store.list("data/"))) == 2  # the duplicate's copy was deleted again
    assert fsck(butler).orphans == []


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    fits.PrimaryHDU(_image(1)).writeto(tmp_path / "a.fits")
    ingest_objects(butler, "raw", tmp_path / "a.fits", run="quiet", data_id={"visit": 1})
    assert capsys.readouterr().err == ""  # stderr is not a terminal here
    ingest_objects(butler, "raw", tmp_path / "a.fits", run="loud", data_id={"visit": 1}, progress=True)
    err = capsys.readouterr().err
    assert "ingest (copy)" in err and "1/1" in err


def test_ingest_files_still_reencodes(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    path = tmp_path / "a.fits"
    fits.PrimaryHDU(_image(1), header=fits.Header([("EXPNUM", 7)])).writeto(path)
    refs, failures = ingest_files(butler, "raw", [path], {}, {"visit": "EXPNUM"}, "r", "zarr")
    assert failures == [] and refs[0].format == "zarr" and refs[0].data_id == {"visit": 7}


def test_format_option_refuses_other_formats(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    fits.PrimaryHDU(_image(1)).writeto(tmp_path / "a.fits")
    refs, ((_, error),) = ingest_objects(butler, "raw", tmp_path / "a.fits", run="r", data_id={"visit": 1},
                                         format="zarr")
    assert refs == [] and "objbutler put converts" in str(error)


# -- globs, locations and credentials (no server) ------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "key", "matches"), [
    ("raw/*.fits", "raw/a.fits", True),
    ("raw/*.fits", "raw/sub/a.fits", False),
    ("raw/**/*.fits", "raw/a.fits", True),
    ("raw/**/*.fits", "raw/x/y/a.fits", True),
    ("raw/a?.fits", "raw/ab.fits", True),
    ("raw/a?.fits", "raw/a/.fits", False),
    ("raw/[ab].fits", "raw/b.fits", True),
    ("raw/[!ab].fits", "raw/b.fits", False),
    ("raw/v+1.fits", "raw/v+1.fits", True),
])
def test_glob_semantics(pattern: str, key: str, matches: bool) -> None:
    assert bool(_glob_regex(pattern).fullmatch(key)) is matches


def test_locations_parse() -> None:
    assert parse_location("s3://b/raw/x.fits").uri == "s3://b/raw/x.fits"
    assert parse_location("swift://c").key == ""
    assert parse_location("/data/x.fits").uri == "file:///data/x.fits"
    assert str(parse_location("file:///data/x.fits")) == "/data/x.fits"
    with pytest.raises(NotSupportedError):
        parse_location("nosuchscheme://b/x")
    if importlib.util.find_spec("fsspec") is not None:  # any scheme fsspec knows is a source to copy from
        assert parse_location("gs://b/x").uri == "gs://b/x"


def test_source_stores_never_get_another_endpoints_credentials() -> None:
    repository = S3Store("repo-bucket", "repo", endpoint_url="http://127.0.0.1:1", access_key="REPO-KEY",
                         secret_key="REPO-SECRET", create_bucket=True)
    same = open_source_store(parse_location("s3://raw-bucket/x.fits"), repository, None)
    assert isinstance(same, S3Store) and same.bucket == "raw-bucket" and same.prefix == ""
    assert same._options()["endpoint_url"] == "http://127.0.0.1:1" and same._options()["access_key"] == "REPO-KEY"
    assert same._options()["create_bucket"] is False  # a source bucket is never created
    other = open_source_store(parse_location("s3://raw-bucket/x.fits"), repository,
                              {"endpoint_url": "http://elsewhere:9000"})
    assert isinstance(other, S3Store)
    assert other._options()["access_key"] is None and other._options()["secret_key"] is None
    swift = open_source_store(parse_location("swift://raw/x.fits"), repository, None)
    assert isinstance(swift, SwiftStore) and swift._options()["key"] is None and swift._options()["auth_url"] is None
    assert "REPO" not in repr(swift._options())
    local = open_source_store(parse_location("/tmp/x.fits"), repository, None)
    assert isinstance(local, LocalStore)


def test_expand_sources_reports_each_pattern(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    (tmp_path / "raw").mkdir()
    fits.PrimaryHDU(_image(1)).writeto(tmp_path / "raw" / "a.fits")
    found, failures = expand_sources(butler, [str(tmp_path / "raw" / "*.fits"), str(tmp_path / "raw"),
                                              str(tmp_path / "raw" / "a.fits")])
    assert [item.name for item in found] == [str(tmp_path / "raw" / "a.fits")]  # once
    ((source, error),) = failures
    assert source == str(tmp_path / "raw") and "directory without zarr.json" in str(error)


# -- old repositories and records ---------------------------------------------------------------------------


def _old_ref(key: str = "data/r/raw/visit=1-0123abcd.fits") -> dict[str, Any]:
    return {"id": "0123abcd-0000-0000-0000-000000000000", "dataset_type": "raw", "data_id": {"visit": 1},
            "run": "r", "format": "fits", "key": key, "size": 10, "checksum": "sha256:00", "created": "x",
            "provenance": None}


def test_old_records_and_checkpoints_still_read() -> None:
    ref = DatasetRef.from_json(_old_ref())
    assert ref.direct is None and not ref.is_direct
    assert "direct" not in ref.to_json()  # what an ordinary dataset's record looks like has not changed
    direct = dataclasses.replace(ref, id="1" * 8, key="s3://raw/x.fits", direct={"etag": "abc"})
    commit = new_commit([DatasetType("raw", ("visit",), "image")], {"visit": "int"}, [ref, direct])
    back = decode_commit(encode_commit(commit), "c")
    assert [r.direct for r in back.datasets] == [None, {"etag": "abc"}]
    with pytest.raises(FormatError):
        decode_commit(encode_commit(new_commit([], {}, [])).replace(b'"datasets":[]', b'"datasets":['
                      + json.dumps({**_old_ref(), "direct": "nope"}).encode() + b"]"), "c")

    # A checkpoint written before "layout" and "direct" existed: the base columns of the time only.
    old_fields = [f for f in schema_for({"visit": "int"}) if f.name not in ("layout", "direct")]
    row = {**_old_ref(), "data_id": '{"visit":1}', "provenance": None, "dim.visit": 1}
    old_table = pa.Table.from_pylist([row], schema=pa.schema(old_fields))
    meta = {"version": 1, "position": "00000000000000000001",
            "dataset_types": [{"name": "raw", "dimensions": ["visit"], "kind": "image"}],
            "dimensions": {"visit": "int"}, "rows": 1}
    sink = io.BytesIO()
    pq.write_table(old_table.replace_schema_metadata({"objbutler": json.dumps(meta)}), sink)
    decoded = decode_checkpoint(sink.getvalue(), "old.parquet")
    assert decoded.table.schema == schema_for({"visit": "int"})
    (read,) = rows_to_refs(decoded.table, "repo")
    assert read.direct is None and read.layout is None and read.key == _old_ref()["key"]
    assert conform(old_table, {"visit": "int"}).column("direct").null_count == 1

    # And a checkpoint holding a direct dataset round-trips.
    table = refs_to_table([ref, direct], {"visit": "int"})
    again = decode_checkpoint(encode_checkpoint(Checkpoint("00000000000000000002", table, {}, {"visit": "int"})),
                              "new.parquet")
    assert [r.direct for r in rows_to_refs(again.table, "repo")] == [None, {"etag": "abc"}]


def test_an_old_repository_opens_and_takes_direct_datasets(tmp_path: Path) -> None:
    """A repository whose checkpoint predates the direct column keeps working, and then records direct datasets."""
    # old repositories are sequenced (claimed became the default later)
    butler = Butler.create(str(tmp_path / "repo"), checkpoint_interval=1, commit_protocol="sequenced")
    ref = butler.put(_image(1), "raw", {"visit": 1}, run="r")
    (checkpoint_key,) = [m.key for m in butler.store.list("manifest/checkpoints/")]
    decoded = decode_checkpoint(butler.store.get(checkpoint_key), checkpoint_key)
    table = decoded.table.drop_columns(["direct", "layout"])
    meta = {"version": 1, "position": decoded.position, "dataset_types": [t.to_json() for t in
                                                                           decoded.dataset_types.values()],
            "dimensions": decoded.dimensions, "rows": table.num_rows}
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({"objbutler": json.dumps(meta)}), sink)
    butler.store.put(checkpoint_key, sink.getvalue())
    old = Butler(str(tmp_path / "repo"))
    assert old.query("raw") == [ref]
    np.testing.assert_array_equal(old.get(ref).data, _image(1))
    fits.PrimaryHDU(_image(2)).writeto(tmp_path / "two.fits")
    (direct,), failures = ingest_objects(old, "raw", tmp_path / "two.fits", run="r", data_id={"visit": 2},
                                         transfer="direct")
    assert failures == []
    reopened = Butler(str(tmp_path / "repo"))
    assert {r.id: r.is_direct for r in reopened.query("raw")} == {ref.id: False, direct.id: True}
    np.testing.assert_array_equal(reopened.get("raw", {"visit": 2}, "r").data, _image(2))


def _commit_by_hand(butler: Butler, ref: DatasetRef) -> None:
    butler.registry.commit([DatasetType(ref.dataset_type, tuple(ref.data_id), "image")], {"visit": "int"}, [ref])


def test_vacuum_never_deletes_direct_data_even_inside_data(tmp_path: Path) -> None:
    """A hand-made direct record under the repository's data/ (ingest refuses that) is still not an orphan."""
    import hashlib

    butler = Butler.create(str(tmp_path / "repo"))
    path = tmp_path / "repo" / "data" / "handmade" / "x.fits"
    path.parent.mkdir(parents=True)
    fits.PrimaryHDU(_image(1)).writeto(path)
    raw = path.read_bytes()
    ref = DatasetRef(str(uuid.uuid4()), "raw", {"visit": 1}, "r", "fits", path.as_uri(), len(raw),
                     f"sha256:{hashlib.sha256(raw).hexdigest()}", "now", direct={"etag": None})
    _commit_by_hand(butler, ref)
    report = fsck(butler, verify_checksums=True)
    assert report.ok and report.orphans == []
    assert vacuum(butler, dt.timedelta(0)) == [] and path.exists()
    np.testing.assert_array_equal(butler.get(ref).data, _image(1))


def test_a_direct_record_on_another_scheme_is_refused(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    ref = DatasetRef(str(uuid.uuid4()), "raw", {"visit": 1}, "r", "fits", "s3://bucket/x.fits", 10, "sha256:00",
                     "now", direct={"etag": None})
    _commit_by_hand(butler, ref)
    with pytest.raises(NotSupportedError, match="repository's endpoint"):
        butler.get(ref)
    ((_, reason),) = fsck(butler).dangling
    assert "could not be checked" in reason
    bad = dataclasses.replace(ref, id=str(uuid.uuid4()), key="relative/x.fits", data_id={"visit": 2})
    _commit_by_hand(butler, bad)
    with pytest.raises(FormatError, match="not a usable location"):
        butler.get(bad)
