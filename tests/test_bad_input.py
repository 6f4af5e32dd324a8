"""Bad input at the door: every case raises from objbutler's error tree and leaves the repository as it was.

One table of callables over a small repository (a FITS image with a WCS, a Zarr image, a metric, a
table). Each must raise the named ``ObjButlerError`` subclass, and afterwards every object of the
repository (keys and bytes) is unchanged. The CLI cases must print one ``error:`` line (or click's
usage error), exit 1 or 2, and never a traceback.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import NDData
from astropy.table import Table
from astropy.wcs import WCS
from click.testing import CliRunner

from objbutler import Box, Butler
from objbutler.cli import main
from objbutler.errors import (
    AlreadyExistsError,
    ConfigError,
    ConflictError,
    FormatError,
    InvalidCutoutError,
    InvalidKeyError,
    NotFoundError,
    NotSupportedError,
    ObjButlerError,
)
from objbutler.stores import open_store


@dataclasses.dataclass
class Repo:
    """A small repository and its datasets."""

    uri: str
    butler: Butler
    refs: dict[str, Any]


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [16.0, 12.0]
    wcs.wcs.cdelt = [-0.0002, 0.0002]
    return wcs


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    uri = str(tmp_path_factory.mktemp("bad") / "repo")
    butler = Butler.create(uri)
    image = fits.PrimaryHDU(np.arange(32 * 24, dtype="float32").reshape(24, 32), header=_wcs().to_header())
    refs = {
        "calexp": butler.put(image, "calexp", {"visit": 1, "detector": 2}, run="r"),
        "zarr": butler.put(image, "deep", {"tract": 1, "band": "r"}, run="r", format="zarr"),
        "metric": butler.put({"v": 1}, "metric", {"visit": 1}, run="r"),
        "table": butler.put(Table({"a": [1, 2]}), "cat", {"visit": 1}, run="r"),
    }
    return Repo(uri, butler, refs)


def snapshot(uri: str) -> dict[str, str]:
    store = open_store(uri)
    return {m.key: hashlib.sha256(store.get(m.key)).hexdigest() for m in store.list()}


IMAGE = np.zeros((8, 8), dtype="float32")
SKY = SkyCoord([150.0] * 2, [2.0] * 2, unit="deg")

Case = tuple[str, type[ObjButlerError], Callable[[Repo], Any]]

PUT: list[Case] = [
    ("bool pixels", FormatError, lambda r: r.butler.put(np.zeros((4, 4), bool), "x", {"visit": 1}, run="r")),
    ("float16 pixels", FormatError, lambda r: r.butler.put(IMAGE.astype("float16"), "x", {"visit": 1}, run="r")),
    ("complex NDData", FormatError, lambda r: r.butler.put(NDData(IMAGE.astype(complex)), "x", {"v": 1}, run="r")),
    ("string pixels", FormatError, lambda r: r.butler.put(np.array([["a"]]), "x", {"visit": 1}, run="r")),
    ("zero rows", FormatError, lambda r: r.butler.put(np.zeros((0, 10), "f4"), "x", {"visit": 1}, run="r")),
    ("zero columns zarr", FormatError,
     lambda r: r.butler.put(np.zeros((10, 0), "f4"), "x", {"visit": 1}, run="r", format="zarr")),
    ("0-d array", FormatError, lambda r: r.butler.put(np.float32(3.0) * np.ones(()), "x", {"visit": 1}, run="r")),
    ("unknown compression", FormatError,
     lambda r: r.butler.put(IMAGE, "x", {"visit": 1}, run="r", format_options={"compression": "FOO"})),
    ("unknown fits option", FormatError,
     lambda r: r.butler.put(IMAGE, "x", {"visit": 1}, run="r", format_options={"bogus": 1})),
    ("unknown zarr option", FormatError,
     lambda r: r.butler.put(IMAGE, "x", {"visit": 1}, run="r", format="zarr", format_options={"level": 3})),
    ("zarr chunks (0, 0)", FormatError,
     lambda r: r.butler.put(IMAGE, "x", {"visit": 1}, run="r", format="zarr", format_options={"chunks": (0, 0)})),
    ("zarr chunks negative", FormatError,
     lambda r: r.butler.put(IMAGE, "x", {"visit": 1}, run="r", format="zarr", format_options={"chunks": (-4, 4)})),
    ("unknown format", FormatError, lambda r: r.butler.put(IMAGE, "x", {"visit": 1}, run="r", format="hdf5")),
    ("dict as fits", FormatError, lambda r: r.butler.put({"a": 1}, "x", {"visit": 1}, run="r", format="fits")),
    ("NaN in metadata", FormatError, lambda r: r.butler.put({"a": float("nan")}, "x", {"visit": 1}, run="r")),
    ("a string object", FormatError, lambda r: r.butler.put("not an image", "x", {"visit": 1}, run="r")),
    ("None object", FormatError, lambda r: r.butler.put(None, "x", {"visit": 1}, run="r")),
    ("HDUList without image", FormatError,
     lambda r: r.butler.put(fits.HDUList([fits.PrimaryHDU()]), "x", {"visit": 1}, run="r")),
    ("type name with ..", InvalidKeyError, lambda r: r.butler.put(IMAGE, "../x", {"visit": 1}, run="r")),
    ("empty type name", InvalidKeyError, lambda r: r.butler.put(IMAGE, "", {"visit": 1}, run="r")),
    ("empty run", InvalidKeyError, lambda r: r.butler.put(IMAGE, "x", {"visit": 1}, run="")),
    ("run with ..", InvalidKeyError, lambda r: r.butler.put(IMAGE, "x", {"visit": 1}, run="a/../../b")),
    ("float data ID value", InvalidKeyError, lambda r: r.butler.put(IMAGE, "x", {"visit": 1.5}, run="r")),
    ("None data ID value", InvalidKeyError, lambda r: r.butler.put(IMAGE, "x", {"visit": None}, run="r")),
    ("bool data ID value", InvalidKeyError, lambda r: r.butler.put(IMAGE, "x", {"visit": True}, run="r")),
    ("data ID key with /", InvalidKeyError, lambda r: r.butler.put(IMAGE, "x", {"vi/sit": 1}, run="r")),
    ("data ID not a mapping", InvalidKeyError, lambda r: r.butler.put(IMAGE, "x", [("visit", 1)], run="r")),
    ("duplicate data ID", ConflictError, lambda r: r.butler.put({"v": 2}, "metric", {"visit": 1}, run="r")),
    ("type with other keys", ConflictError, lambda r: r.butler.put({"v": 2}, "metric", {"exposure": 1}, run="r")),
    ("type of other kind", ConflictError, lambda r: r.butler.put(IMAGE, "metric", {"visit": 2}, run="r")),
    ("str value for an int key", ConflictError, lambda r: r.butler.put({"v": 2}, "metric", {"visit": "2"}, run="r")),
]

GET: list[Case] = [
    ("get unknown type", NotFoundError, lambda r: r.butler.get("nope", {"visit": 1}, run="r")),
    ("get missing data ID key", InvalidKeyError, lambda r: r.butler.get("calexp", {"visit": 1}, run="r")),
    ("get extra data ID key", InvalidKeyError,
     lambda r: r.butler.get("calexp", {"visit": 1, "detector": 2, "band": "r"}, run="r")),
    ("get wrong value kind", InvalidKeyError, lambda r: r.butler.get("calexp", {"visit": "1", "detector": 2})),
    ("get absent data ID", NotFoundError, lambda r: r.butler.get("calexp", {"visit": 9, "detector": 2}, run="r")),
    ("get other run", NotFoundError, lambda r: r.butler.get("calexp", {"visit": 1, "detector": 2}, run="x")),
    ("get type without data ID", InvalidKeyError, lambda r: r.butler.get("calexp")),
    ("get ref of another repository", NotFoundError,
     lambda r: r.butler.get(dataclasses.replace(r.refs["metric"], id="0" * 32, repository="file:///elsewhere"))),
    ("wcs of a metric", NotSupportedError, lambda r: r.butler.get_wcs(r.refs["metric"])),
]


def _cut(boxes: Any, ref: str = "calexp", **kwargs: Any) -> Callable[[Repo], Any]:
    return lambda r: r.butler.get_cutouts(r.refs[ref], boxes, **kwargs)


CUTOUTS: list[Case] = [
    ("boxes None", InvalidCutoutError, _cut(None)),
    ("nothing to cut", InvalidCutoutError, lambda r: r.butler.get_cutouts(r.refs["calexp"])),
    ("a position without size", InvalidCutoutError, _cut([(3, 4)])),
    ("size with a single Box", InvalidCutoutError, _cut(Box(0, 0, 4, 4), size=4)),
    ("positions of three numbers", InvalidCutoutError, _cut([(1, 2, 3)], size=4)),
    ("position NaN", InvalidCutoutError, _cut([(float("nan"), 2)], size=4)),
    ("a string", InvalidCutoutError, _cut("0,0,4,4")),
    ("three numbers", InvalidCutoutError, _cut([(0, 0, 4)])),
    ("fractional corner", InvalidCutoutError, _cut([(0, 0, 4.5, 4)])),
    ("negative extent", InvalidCutoutError, _cut([(5, 5, 1, 1)])),
    ("unknown mode", InvalidCutoutError, _cut([(0, 0, 4, 4)], mode="sideways")),
    ("strict, outside", InvalidCutoutError, _cut([(-2, 0, 4, 4)], mode="strict")),
    ("trim, no overlap", InvalidCutoutError, _cut([(0, 0, 4, 4), (100, 100, 110, 110)], mode="trim")),
    ("trim, no overlap (zarr)", InvalidCutoutError, _cut([(-20, -20, -10, -10)], ref="zarr")),
    ("partial, 10^7 px sides", InvalidCutoutError, _cut([(0, 0, 10**7, 10**7)], mode="partial")),
    ("partial, 10^7 px sides (zarr)", InvalidCutoutError, _cut([(0, 0, 10**7, 10**7)], ref="zarr", mode="partial")),
    ("sky without size", InvalidCutoutError, _cut(SKY)),
    ("size NaN", InvalidCutoutError, _cut(SKY, size=float("nan"))),
    ("size 0", InvalidCutoutError, _cut(SKY, size=0)),
    ("size negative", InvalidCutoutError, _cut(SKY, size=-3)),
    ("size a word", InvalidCutoutError, _cut(SKY, size="big")),
    ("size fractional pixels", InvalidCutoutError, _cut(SKY, size=2.5)),
    ("size in seconds", InvalidCutoutError, _cut(SKY, size=3 * u.s)),
    ("size NaN arcsec", InvalidCutoutError, _cut(SKY, size=float("nan") * u.arcsec)),
    ("size with boxes", InvalidCutoutError, _cut([(0, 0, 4, 4)], size=4)),
    ("cutouts of a metric", NotSupportedError, _cut([(0, 0, 4, 4)], ref="metric")),
    ("cutouts of a table", NotSupportedError, _cut([(0, 0, 4, 4)], ref="table")),
]

QUERY: list[Case] = [
    ("query unknown type", NotFoundError, lambda r: r.butler.query("no_such_type")),
    ("query unknown key", InvalidKeyError, lambda r: r.butler.query(where={"visti": 1})),
    ("query key of another type", InvalidKeyError, lambda r: r.butler.query("metric", where={"tract": 1})),
    ("query str for int key", InvalidKeyError, lambda r: r.butler.query("metric", where={"visit": "1"})),
    ("query int for str key", InvalidKeyError, lambda r: r.butler.query("deep", where={"band": 1})),
    ("query range on str key", InvalidKeyError, lambda r: r.butler.query("deep", where={"band": range(2)})),
    ("query dict condition", InvalidKeyError, lambda r: r.butler.query(where={"visit": {"min": 1}})),
    ("query float", InvalidKeyError, lambda r: r.butler.query(where={"visit": 1.0})),
    ("query range step 2", InvalidKeyError, lambda r: r.butler.query(where={"visit": range(0, 4, 2)})),
    ("query mixed list", InvalidKeyError, lambda r: r.butler.query(where={"visit": [1, "2"]})),
]


def _ingest(change: Callable[[Any], Any]) -> Callable[[Repo], Any]:
    def run(r: Repo) -> Any:
        ref = change(r.refs["calexp"])
        return r.butler.ingest_refs([ref])
    return run


def _gzipped(r: Repo) -> Any:
    """Gzip-compressed FITS bytes under a fresh key: get could not read them, so ingest must refuse."""
    store = r.butler.store
    key = "data/r/raw/visit=5-gzipped.fits"
    body = gzip.compress(store.get(r.refs["calexp"].key))
    store.put(key, body)
    try:
        ref = dataclasses.replace(r.refs["calexp"], id="1" * 32, dataset_type="rawgz", key=key, size=len(body),
                                  checksum=f"sha256:{hashlib.sha256(body).hexdigest()}", layout=None)
        return r.butler.ingest_refs([ref])
    finally:
        store.delete(key)


INGEST: list[Case] = [
    ("ingest key outside data/", InvalidKeyError,
     _ingest(lambda ref: dataclasses.replace(ref, id="2" * 32, data_id={"visit": 7, "detector": 2}, key="x.fits"))),
    ("ingest unknown format", InvalidKeyError,
     _ingest(lambda ref: dataclasses.replace(ref, id="3" * 32, data_id={"visit": 7, "detector": 2}, format="hdf5"))),
    ("ingest wrong size", FormatError,
     _ingest(lambda ref: dataclasses.replace(ref, id="4" * 32, data_id={"visit": 7, "detector": 2}, size=1))),
    ("ingest missing object", FormatError,
     _ingest(lambda ref: dataclasses.replace(ref, id="5" * 32, data_id={"visit": 7, "detector": 2},
                                             key="data/r/calexp/missing.fits"))),
    ("ingest taken data ID", ConflictError, _ingest(lambda ref: dataclasses.replace(ref, id="6" * 32))),
    ("ingest gzip-compressed FITS", FormatError, _gzipped),
]

OPEN: list[Case] = [
    ("open a file", NotFoundError, lambda r: Butler("/etc/hostname")),
    ("open gs://", NotSupportedError, lambda r: Butler("gs://bucket/repo")),
    ("open s3:/ (one slash)", InvalidKeyError, lambda r: Butler("s3:/bucket/repo")),
    ("open an empty directory", NotFoundError, lambda r: Butler(str(Path(r.uri).parent / "empty"))),
    ("create checkpoint_interval=0", ConfigError,
     lambda r: Butler.create(str(Path(r.uri).parent / "c0"), checkpoint_interval=0)),
    ("create checkpoint_interval='abc'", ConfigError,
     lambda r: Butler.create(str(Path(r.uri).parent / "c1"), checkpoint_interval="abc")),  # type: ignore[arg-type]
    ("create default_format hdf5", ConfigError,
     lambda r: Butler.create(str(Path(r.uri).parent / "c2"), default_format="hdf5")),
    ("create over a repository", AlreadyExistsError, lambda r: Butler.create(r.uri)),
]

CASES = PUT + GET + CUTOUTS + QUERY + INGEST + OPEN


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "error", "call"), CASES, ids=[name for name, _, _ in CASES])
def test_bad_input_raises_from_the_tree_and_changes_nothing(
    repo: Repo, monkeypatch: pytest.MonkeyPatch, name: str, error: type[ObjButlerError], call: Callable[[Repo], Any]
) -> None:
    before = snapshot(repo.uri)
    with pytest.raises(error) as raised:
        call(repo)
    assert isinstance(raised.value, ObjButlerError)
    assert str(raised.value), "the message says what was wrong"
    assert snapshot(repo.uri) == before


CLI: list[tuple[str, int, list[str]]] = [
    ("get unknown type", 3, ["get", "{uri}", "nope", "--data-id", "visit=1", "--out", "{tmp}/x.fits"]),
    ("get missing key", 1, ["get", "{uri}", "calexp", "--data-id", "visit=1", "--run", "r", "--out", "{tmp}/x.fits"]),
    ("query unknown key", 1, ["query", "{uri}", "calexp", "--where", "visti=1"]),
    ("query wrong kind", 1, ["query", "{uri}", "deep", "--where", "band=1"]),
    ("query gs://", 2, ["query", "gs://bucket/repo"]),
    ("query s3:/", 2, ["query", "s3:/bucket/repo"]),
    ("create on a file", 4, ["create", "/etc/hostname"]),
    ("create existing", 4, ["create", "{uri}"]),
    ("cutout, no overlap", 1, ["cutout", "{uri}", "calexp", "--data-id", "visit=1", "--data-id", "detector=2",
                               "--run", "r", "--boxes", "{tmp}/far.csv", "--out", "{tmp}/stamps"]),
    ("ingest a missing file", 2, ["ingest", "{uri}", "raw", "{tmp}/missing.fits", "--data-id", "visit=1",
                                  "--run", "r"]),
    ("ingest without run", 2, ["ingest", "{uri}", "raw", "{tmp}/far.csv", "--data-id", "visit=1"]),
    ("bad data ID syntax", 2, ["get", "{uri}", "calexp", "--data-id", "visit", "--out", "{tmp}/x.fits"]),
]


@pytest.mark.parametrize(("name", "code", "argv"), CLI, ids=[name for name, _, _ in CLI])
def test_cli_bad_input_is_one_line_and_its_exit_code(repo: Repo, tmp_path: Path, name: str, code: int,
                                                     argv: list[str]) -> None:
    """The exit codes are objbutler.cli_errors.ExitCode's (tests/test_cli_errors.py has the full table)."""
    (tmp_path / "far.csv").write_text("x0,y0,x1,y1\n500,500,510,510\n")
    before = snapshot(repo.uri)
    args = [a.format(uri=repo.uri, tmp=tmp_path) for a in argv]
    result = CliRunner().invoke(main, args)
    output = result.output  # stdout and stderr, interleaved
    assert result.exit_code == code, (result.exit_code, output)
    assert "Traceback" not in output and not isinstance(result.exception, AssertionError)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in output.splitlines() if line.lower().startswith("error")]
    assert len(lines) == 1, output
    assert snapshot(repo.uri) == before
