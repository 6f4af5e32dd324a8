"""The command line's errors, as a new user meets them: one ``error:`` line, a documented exit code.

``ROWS`` is a table of user mistakes across the commands: malformed URIs, missing and invalid
buckets on LocalStack and moto (and a Swift container), bad data IDs and ``--where`` syntax,
unknown dataset types and runs, files that do not exist or are not FITS, bad sizes, boxes and
radec files, outputs into missing directories or onto existing files. Each row is run with
click's runner and asserts: the exit code of :class:`objbutler.cli_errors.ExitCode` it names,
stderr is exactly one line starting with ``error:`` (click's usage errors, exit 2, may keep
click's ``Usage: ... Error: ...`` form), no traceback, no private class name, and nothing that
was stored or written before (the repositories, the working directory's files) changed. A few
rows run again in a real subprocess. The ``--where`` parser has unit tests of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from click.testing import CliRunner, Result
from conftest import Backend
from objbutler_servers import ServerInfo

from objbutler import Butler
from objbutler.cli import main, parse_data_id, parse_where
from objbutler.cli_errors import EXIT_CODES, ExitCode, error_message, exit_code_for
from objbutler.errors import (
    BucketNotFoundError,
    InvalidBucketNameError,
    InvalidURIError,
    NotSupportedError,
    RepositoryNotFoundError,
)
from objbutler.stores import bucket_name_problem, open_store, parse_store_uri

DOCS = Path(__file__).resolve().parent.parent / "docs"
USAGE, ERROR, NOT_FOUND, CONFLICT, UNAVAILABLE = (ExitCode.USAGE, ExitCode.ERROR, ExitCode.NOT_FOUND,
                                                   ExitCode.CONFLICT, ExitCode.UNAVAILABLE)


@dataclasses.dataclass(frozen=True)
class Row:
    """One user mistake: the command line, its exit code, words its message must have, where it runs."""

    name: str
    argv: tuple[str, ...]
    code: ExitCode
    says: tuple[str, ...] = ()
    server: str | None = None  # "localstack", "moto" or "swift": their variables are set
    env: tuple[tuple[str, str], ...] = ()


def row(name: str, code: ExitCode, *argv: str, says: tuple[str, ...] | str = (), server: str | None = None,
        env: dict[str, str] | None = None) -> Row:
    return Row(name, argv, code, (says,) if isinstance(says, str) else says, server, tuple((env or {}).items()))


GET = ("get", "{repo}", "calexp", "--data-id", "visit=1", "--data-id", "detector=2", "--run", "r")
CUT = ("cutout", "{repo}", "calexp", "--data-id", "visit=1", "--data-id", "detector=2", "--run", "r")

ROWS: list[Row] = [
    # -- malformed URIs: refused before anything is opened ------------------------------------------------
    row("s3 with one slash", USAGE, "query", "s3:/bucket/repo", says="did you mean 's3://bucket/repo'"),
    row("s3 with no slash", USAGE, "query", "s3:bucket/repo", says="s3://bucket/repo"),
    row("s3 with no bucket", USAGE, "query", "s3://", says="no bucket"),
    row("s3 with three slashes", USAGE, "query", "s3:///bucket/repo", says="did you mean 's3://bucket/repo'"),
    row("swift with one slash", USAGE, "query", "swift:/container/repo", says="swift://container/repo"),
    row("file with one slash", USAGE, "fsck", "file:/data/repo", says="file:///data/repo"),
    row("file with a host", USAGE, "query", "file://data/repo", says="three slashes"),
    row("gs scheme", USAGE, "query", "gs://bucket/repo", says="unsupported"),
    row("https endpoint as URI", USAGE, "query", "https://127.0.0.1:9000/bucket/repo", says="AWS_ENDPOINT_URL"),
    row("endpoint where the bucket goes", USAGE, "query", "s3://127.0.0.1:4566/bucket", says="AWS_ENDPOINT_URL"),
    row("credentials in the URI", USAGE, "query", "s3://key:secret@bucket/repo", says="AWS_ACCESS_KEY_ID"),
    row("query string in the URI", USAGE, "query", "s3://bucket/repo?versionId=3", says="query"),
    row("unsafe prefix", USAGE, "query", "s3://bucket/a/../b", says="'..'"),
    row("clone to a malformed DST", USAGE, "clone", "{repo}", "s3:/bucket/copy", says="s3://bucket/copy"),
    row("put-many to a malformed URI", USAGE, "put-many", "{ws}/image.fits", "calexp", "--to", "s3:/b/repo",
        "--data-id", "visit=9", "--run", "r", says="s3://b/repo"),
    # -- buckets: invalid names before any request, missing ones named as buckets ------------------------
    row("bucket name too short", USAGE, "create", "s3://ab/repo", says=("bucket name 'ab'", "3-63 characters"),
        server="localstack"),
    row("bucket name with capitals", USAGE, "create", "--create-bucket", "s3://My_Bucket/repo",
        says=("bucket name", "capital"), server="localstack"),
    row("bucket name with two dots", USAGE, "create", "--create-bucket", "s3://my..bucket/repo",
        says="two adjacent dots", server="moto"),
    row("bucket name an IP address", USAGE, "create", "--create-bucket", "s3://192.168.10.20/repo",
        says="IP address", server="moto"),
    row("bucket name with a colon", USAGE, "query", "s3://bucket:name/repo", says="AWS_ENDPOINT_URL"),
    row("create in a missing bucket (LocalStack)", NOT_FOUND, "create", "s3://{missing}/repo",
        says=("bucket '{missing}' does not exist", "--create-bucket"), server="localstack"),
    row("create in a missing bucket (moto)", NOT_FOUND, "create", "s3://{missing}/repo",
        says=("bucket '{missing}' does not exist", "--create-bucket"), server="moto"),
    row("query a missing bucket (LocalStack)", NOT_FOUND, "query", "s3://{missing}/repo",
        says=("bucket '{missing}' does not exist", "objbutler create --create-bucket"), server="localstack"),
    row("get from a missing bucket (moto)", NOT_FOUND, "get", "s3://{missing}/repo", "calexp", "--data-id",
        "visit=1", "--out", "{ws}/x.fits", says="bucket '{missing}' does not exist", server="moto"),
    row("clone into a missing bucket", NOT_FOUND, "clone", "{repo}", "s3://{missing}/copy",
        says=("bucket '{missing}'", "--create-bucket"), server="localstack"),
    row("no repository in the bucket", NOT_FOUND, "query", "{s3_bucket}/nothing-here",
        says=("no objbutler repository", "objbutler create"), server="localstack"),
    row("create over a repository on S3", CONFLICT, "create", "{s3_repo}", says="already exists",
        server="localstack"),
    row("unreachable endpoint", UNAVAILABLE, "query", "{s3_repo}", says="127.0.0.1:9", server="localstack",
        env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}),
    row("no credentials", UNAVAILABLE, "query", "{s3_repo}", says="AWS_ACCESS_KEY_ID", server="localstack",
        env={"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}),
    row("create in a missing Swift container", NOT_FOUND, "create", "swift://{missing}/repo",
        says=("container '{missing}' does not exist", "--create-container"), server="swift"),
    row("query a missing Swift container", NOT_FOUND, "query", "swift://{missing}/repo",
        says="container '{missing}' does not exist", server="swift"),
    # -- repositories on disk --------------------------------------------------------------------------------
    row("create over a repository", CONFLICT, "create", "{repo}", says="already exists"),
    row("create on a file", CONFLICT, "create", "{ws}/notes.txt", says="is a file"),
    row("create below a file", CONFLICT, "create", "{ws}/notes.txt/repo", says="is a file"),
    row("query a directory with no repository", NOT_FOUND, "query", "{ws}", says="no objbutler repository"),
    row("fsck a missing repository", NOT_FOUND, "fsck", "{ws}/nothing", says="no objbutler repository"),
    row("vacuum with a bad age", USAGE, "vacuum", "{repo}", "--older-than", "soon"),
    # -- query: types, keys, runs, --where syntax --------------------------------------------------------
    row("query a mistyped dataset type", NOT_FOUND, "query", "{repo}", "calexpp",
        says=("unknown dataset type 'calexpp'", "calexp", "metric")),
    row("query an unknown data ID key", ERROR, "query", "{repo}", "calexp", "--where", "visti=1", says="visti"),
    row("query text for an int key", ERROR, "query", "{repo}", "--where", "visit=one", says="visit"),
    row("query a missing run", NOT_FOUND, "query", "{repo}", "--run", "nightly", says=("no run 'nightly'", "r")),
    row("where: empty range", USAGE, "query", "{repo}", "--where", "visit=5..2", says="empty"),
    row("where: no value", USAGE, "query", "{repo}", "--where", "visit=", says="no value"),
    row("where: no key", USAGE, "query", "{repo}", "--where", "=1", says="no key"),
    row("where: open range", USAGE, "query", "{repo}", "--where", "visit=1..", says="both ends"),
    row("where: no '='", USAGE, "query", "{repo}", "--where", "visit", says="KEY=VALUE"),
    row("where: range of text", USAGE, "query", "{repo}", "--where", "band=a..c", says="integer"),
    row("where: empty list item", USAGE, "query", "{repo}", "--where", "visit=1,,2", says="empty value"),
    # -- get ---------------------------------------------------------------------------------------------
    row("get a mistyped dataset type", NOT_FOUND, "get", "{repo}", "calexpp", "--data-id", "visit=1",
        "--out", "{ws}/x.fits", says="registered"),
    row("get with a data ID key missing", ERROR, "get", "{repo}", "calexp", "--data-id", "visit=1",
        "--out", "{ws}/x.fits", says="lacks ['detector']"),
    row("get with a bad --data-id", USAGE, "get", "{repo}", "calexp", "--data-id", "visit", "--out", "{ws}/x.fits",
        says="KEY=VALUE"),
    row("get with a key given twice", USAGE, *GET, "--data-id", "visit=2", "--out", "{ws}/x.fits",
        says="given twice"),
    row("get a data ID that is not there", NOT_FOUND, "get", "{repo}", "calexp", "--data-id", "visit=9",
        "--data-id", "detector=2", "--out", "{ws}/x.fits", says="no calexp with data ID"),
    row("get from a missing run", NOT_FOUND, "get", "{repo}", "calexp", "--data-id", "visit=1", "--data-id",
        "detector=2", "--run", "rr", "--out", "{ws}/x.fits", says="no run 'rr'"),
    row("get into a missing directory", USAGE, *GET, "--out", "{ws}/no/such/dir/x.fits", says="does not exist"),
    row("get onto an existing file", CONFLICT, *GET, "--out", "{ws}/notes.txt", says="--overwrite"),
    row("get onto a directory", USAGE, *GET, "--out", "{ws}", says="directory"),
    row("provenance of a mistyped type", NOT_FOUND, "provenance", "{repo}", "calexpp", "--data-id", "visit=1",
        says="unknown dataset type"),
    # -- cutout ------------------------------------------------------------------------------------------
    row("cutout to a .txt", USAGE, *CUT, "--boxes", "{ws}/boxes.csv", "--out", "{ws}/stamps.txt",
        says=".txt"),
    row("cutout boxes file missing", USAGE, *CUT, "--boxes", "{ws}/missing.csv"),
    row("cutout boxes not CSV", ERROR, *CUT, "--boxes", "{ws}/image.fits", says="not a CSV"),
    row("cutout boxes header only", ERROR, *CUT, "--boxes", "{ws}/empty.csv", says="no rows"),
    row("cutout boxes wrong columns", ERROR, *CUT, "--boxes", "{ws}/radec.csv", says="x0"),
    row("cutout boxes not numbers", ERROR, *CUT, "--boxes", "{ws}/words.csv", says="not a number"),
    row("cutout box outside the image", ERROR, *CUT, "--boxes", "{ws}/far.csv"),
    row("cutout radec without size", USAGE, *CUT, "--radec", "{ws}/radec.csv", says="--size"),
    row("cutout size unreadable", USAGE, *CUT, "--radec", "{ws}/radec.csv", "--size", "10zz", says="10zz"),
    row("cutout size zero", ERROR, *CUT, "--radec", "{ws}/radec.csv", "--size", "0"),
    row("cutout size with boxes", USAGE, *CUT, "--boxes", "{ws}/boxes.csv", "--size", "8", says="--size"),
    row("cutout boxes and radec", USAGE, *CUT, "--boxes", "{ws}/boxes.csv", "--radec", "{ws}/radec.csv"),
    row("cutout onto an existing .npz", CONFLICT, *CUT, "--boxes", "{ws}/boxes.csv", "--out", "{ws}/old.npz",
        says="--overwrite"),
    row("cutout into a directory holding stamps", CONFLICT, *CUT, "--boxes", "{ws}/boxes.csv",
        "--out", "{ws}/stamps", says=("stamp-00000.fits", "--overwrite")),
    row("cutout into a missing directory", USAGE, *CUT, "--boxes", "{ws}/boxes.csv", "--out",
        "{ws}/no/where/s.fits", says="does not exist"),
    row("cutout png without .png", USAGE, *CUT, "--boxes", "{ws}/boxes.csv", "--png", "{ws}/sheet.jpeg",
        says=".png"),
    row("cutout of a metric", ERROR, "cutout", "{repo}", "metric", "--data-id", "visit=1", "--run", "r",
        "--boxes", "{ws}/boxes.csv", says="image"),
    # -- cutouts-at -----------------------------------------------------------------------------------------
    row("cutouts-at onto a .zarr it did not write", CONFLICT, "cutouts-at", "{repo}", "calexp", "--radec",
        "{ws}/radec.csv", "--size", "5", "--out", "{ws}/old.zarr", says=("not a cutouts-at Zarr", "--overwrite")),
    row("cutouts-at .zarr with an angular size", ERROR, "cutouts-at", "{repo}", "calexp", "--radec",
        "{ws}/radec.csv", "--size", "5arcsec", "--out", "{ws}/new.zarr", says="in pixels"),
    # -- put-many ------------------------------------------------------------------------------------------
    row("put-many a file that is not FITS", ERROR, "put-many", "{ws}/notes.txt", "calexp", "--to", "{repo}",
        "--data-id", "visit=9", "--data-id", "detector=2", "--run", "r", says="not a FITS file"),
    row("put-many a missing HDU", USAGE, "put-many", "{ws}/image.fits", "calexp", "--to", "{repo}",
        "--data-id", "visit=9", "--data-id", "detector=2", "--run", "r", "--hdu", "7", says="no HDU"),
    row("put-many an unknown format", USAGE, "put-many", "{ws}/image.fits", "calexp", "--to", "{repo}:hdf5",
        "--data-id", "visit=9", "--data-id", "detector=2", "--run", "r", says="unknown format 'hdf5'"),
    row("put-many into a missing repository", NOT_FOUND, "put-many", "{ws}/image.fits", "calexp", "--to",
        "{ws}/nothing", "--data-id", "visit=9", "--run", "r", says="no objbutler repository"),
    row("put-many a taken data ID", ERROR, "put-many", "{ws}/image.fits", "calexp", "--to", "{repo}",
        "--data-id", "visit=1", "--data-id", "detector=2", "--run", "r", says="failed in 1 of 1"),
    # -- clone -------------------------------------------------------------------------------------------
    row("clone onto an existing file", CONFLICT, "clone", "{repo}", "{ws}/notes.txt", says="is a file"),
    row("clone a mistyped type", NOT_FOUND, "clone", "{repo}", "{ws}/copy", "--type", "calexpp",
        says="unknown dataset type"),
    row("clone a selection that matches nothing", NOT_FOUND, "clone", "{repo}", "{ws}/copy", "--where",
        "visit=77", says=("nothing to copy", "left alone")),
    row("clone a missing run", NOT_FOUND, "clone", "{repo}", "{ws}/copy", "--run", "rr", says="no run 'rr'"),
    row("clone with a bad --where", USAGE, "clone", "{repo}", "{ws}/copy", "--where", "visit=a..b"),
    row("clone with no jobs", USAGE, "clone", "{repo}", "{ws}/copy", "--jobs", "0"),
    row("clone a missing source", NOT_FOUND, "clone", "{ws}/nothing", "{ws}/copy", says="no objbutler repository"),
    # -- the command line itself ---------------------------------------------------------------------------
    row("demo with no stamps", USAGE, "demo", "--repo", "{ws}/demo", "--stamps", "0"),
    row("demo png without .png", USAGE, "demo", "--repo", "{ws}/demo", "--png", "{ws}/sheet.txt", says=".png"),
    row("an unknown command", USAGE, "qeury", "{repo}"),
    row("an unknown option", USAGE, "query", "{repo}", "--were", "visit=1"),
]

SUBPROCESS_ROWS = ["s3 with one slash", "bucket name too short", "get into a missing directory",
                   "query a mistyped dataset type", "cutout to a .txt"]


# -- fixtures ------------------------------------------------------------------------------------------------


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [16.0, 12.0]
    wcs.wcs.cdelt = [-0.0002, 0.0002]
    return wcs


def _image() -> fits.PrimaryHDU:
    return fits.PrimaryHDU(np.arange(32 * 24, dtype="float32").reshape(24, 32), header=_wcs().to_header())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("cli-errors") / "repo")
    butler = Butler.create(uri)
    butler.put(_image(), "calexp", {"visit": 1, "detector": 2}, run="r")
    butler.put({"v": 1}, "metric", {"visit": 1}, run="r")
    butler.put(_image(), "deep", {"tract": 1, "band": "r"}, run="r", format="zarr")
    return uri


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """The user's working directory: a few input files, an old output, a directory of old stamps."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("my notes\n")
    _image().writeto(ws / "image.fits")
    (ws / "boxes.csv").write_text("x0,y0,x1,y1\n0,0,4,4\n")
    (ws / "far.csv").write_text("x0,y0,x1,y1\n500,500,510,510\n")
    (ws / "empty.csv").write_text("x0,y0,x1,y1\n")
    (ws / "words.csv").write_text("x0,y0,x1,y1\none,two,three,four\n")
    sky = WCS(_image().header).pixel_to_world([10.0], [10.0])
    (ws / "radec.csv").write_text(f"ra,dec\n{sky.ra.deg[0]},{sky.dec.deg[0]}\n")
    np.savez(ws / "old.npz", a=np.zeros(3))
    (ws / "stamps").mkdir()
    (ws / "stamps" / "stamp-00000.fits").write_bytes(b"an older stamp")
    (ws / "old.zarr").mkdir()
    (ws / "old.zarr" / "notes.txt").write_text("not stamps\n")
    return ws


def _server_env(info: ServerInfo) -> dict[str, str]:
    return {key: value for key, value in info.env.items()}


@pytest.fixture
def server_env(request: pytest.FixtureRequest) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """The row's server variables, and the store options of the S3 repository on LocalStack (if any)."""
    server = request.node.callspec.params["case"].server
    if server is None:
        yield {}, {}
        return
    info: ServerInfo = request.getfixturevalue(f"{server}_server")
    env = _server_env(info)
    extra: dict[str, Any] = {}
    if server == "localstack":
        backend: Backend = request.getfixturevalue("s3_cli_repo")
        extra = {"s3_repo": backend.base, "s3_bucket": backend.base.rsplit("/", 1)[0], "options": backend.options}
    yield env, extra


@pytest.fixture(scope="module")
def s3_cli_repo(localstack_backend: Backend) -> Backend:
    """A repository with one dataset on LocalStack."""
    uri = localstack_backend.new_uri()
    butler = Butler.create(uri, **localstack_backend.options)
    butler.put({"v": 1}, "metric", {"visit": 1}, run="r")
    return Backend("localstack-repo", uri, localstack_backend.options)


def snapshot_files(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> SHA-256): what the user had on disk."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def snapshot_store(uri: str, **options: Any) -> dict[str, str]:
    store = open_store(uri, **options)
    return {m.key: hashlib.sha256(store.get(m.key)).hexdigest() for m in store.list()}


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
    except TypeError:
        return CliRunner()


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def check_stderr(code: int, stderr: str, says: tuple[str, ...]) -> str:
    """stderr is one ``error:`` line (or, for usage errors, click's own form); returns the message."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert not re.search(r"\b_[A-Za-z]\w*(Error|Exception)\b", stderr), f"a private class name: {stderr}"
    if code == ExitCode.USAGE and lines and not lines[0].startswith("error:"):
        assert lines[0].startswith("Usage:") and lines[-1].startswith("Error:"), stderr
        assert sum(line.startswith("Error:") for line in lines) == 1, stderr
        message = lines[-1]
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        message = lines[0]
    for words in says:
        assert words in message, (words, message)
    return message


# -- the table -----------------------------------------------------------------------------------------------


def test_the_table_is_large_and_covers_every_code_and_command() -> None:
    assert len(ROWS) >= 40
    assert len({r.name for r in ROWS}) == len(ROWS)
    assert len({(r.argv, r.server, r.env) for r in ROWS}) == len(ROWS), "every row is a distinct mistake"
    assert {r.code for r in ROWS} >= {USAGE, ERROR, NOT_FOUND, CONFLICT, UNAVAILABLE}
    commands = {r.argv[0] for r in ROWS}
    assert commands >= {"create", "query", "get", "provenance", "cutout", "put-many", "clone", "fsck", "vacuum",
                        "demo"}
    assert {r.server for r in ROWS} >= {"localstack", "moto"}
    assert set(SUBPROCESS_ROWS) <= {r.name for r in ROWS}


@pytest.mark.parametrize("case", ROWS, ids=[r.name for r in ROWS])
def test_cli_mistake(case: Row, repo: str, workspace: Path, server_env: tuple[dict[str, str], dict[str, Any]],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    env, extra = server_env
    monkeypatch.setenv("HOME", str(workspace.parent))  # no ~/.aws of the machine
    for name in ("OBJBUTLER_CACHE", "OBJBUTLER_OFFLINE", "OBJBUTLER_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    for key, value in {**env, **dict(case.env)}.items():
        monkeypatch.setenv(key, value)
    values = {"repo": repo, "ws": str(workspace), "missing": f"objbutler-missing-{uuid.uuid4().hex[:10]}",
              **{k: v for k, v in extra.items() if isinstance(v, str)}}
    argv = [_fill(arg, values) for arg in case.argv]
    says = tuple(_fill(words, values) for words in case.says)
    stored = {repo: snapshot_store(repo)}
    if "s3_repo" in extra:
        stored[extra["s3_repo"]] = snapshot_store(extra["s3_repo"], **extra["options"])
    files = snapshot_files(workspace)

    result: Result = _runner().invoke(main, argv)

    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == case.code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout
    check_stderr(case.code, result.stderr, says)
    assert snapshot_files(workspace) == files, "the user's files changed"
    for uri, before in stored.items():
        options = extra["options"] if uri == extra.get("s3_repo") else {}
        assert snapshot_store(uri, **options) == before, f"{uri} changed"


@pytest.mark.parametrize("name", SUBPROCESS_ROWS)
def test_cli_mistake_in_a_real_process(name: str, repo: str, workspace: Path) -> None:
    case = next(r for r in ROWS if r.name == name)
    argv = [_fill(arg, {"repo": repo, "ws": str(workspace)}) for arg in case.argv]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OBJBUTLER_", "AWS_"))}
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # were a request sent, it would fail differently
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    files = snapshot_files(workspace)
    done = subprocess.run([sys.executable, "-m", "objbutler.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == case.code, (done.returncode, done.stdout, done.stderr)
    check_stderr(case.code, done.stderr, tuple(_fill(w, {"repo": repo}) for w in case.says))
    assert snapshot_files(workspace) == files


def test_unexpected_error_is_one_line_and_exit_70(repo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.delenv("OBJBUTLER_DEBUG", raising=False)
    monkeypatch.setattr(Butler, "query", broken)
    result = _runner().invoke(main, ["query", repo])
    assert result.exit_code == ExitCode.INTERNAL
    message = check_stderr(result.exit_code, result.stderr, ("ZeroDivisionError", "OBJBUTLER_DEBUG=1"))
    assert message.startswith("error: unexpected")
    monkeypatch.setenv("OBJBUTLER_DEBUG", "1")
    result = _runner().invoke(main, ["query", repo])
    assert result.exit_code == ExitCode.INTERNAL
    assert "Traceback" in result.stderr and result.stderr.splitlines()[-1].startswith("error: unexpected")


def test_interrupt_is_one_line_and_exit_130(repo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(Butler, "query", interrupted)
    result = _runner().invoke(main, ["query", repo])
    assert result.exit_code == ExitCode.INTERRUPTED
    check_stderr(result.exit_code, result.stderr, ("interrupted",))


def test_python_warnings_are_one_line_each(repo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    original = Butler.query

    def warned(self: Butler, *args: Any, **kwargs: Any) -> Any:
        warnings.warn("something odd\nover two lines", UserWarning, stacklevel=1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Butler, "query", warned)
    result = _runner().invoke(main, ["query", repo])
    assert result.exit_code == 0
    assert result.stderr.splitlines() == ["warning: something odd over two lines"]


def test_a_bucket_error_never_shows_python_advice() -> None:
    error = BucketNotFoundError("bucket 'b' does not exist (create_bucket=True)", bucket="b", where="http://x")
    for command in ("create", "clone", "query"):
        message = error_message(error, command)
        assert "create_bucket" not in message and "--create-bucket" in message and "bucket 'b'" in message
    assert exit_code_for(error) == ExitCode.NOT_FOUND
    repo_error = RepositoryNotFoundError("no repository; Butler.create('x')", uri="x")
    assert "Butler.create" not in error_message(repo_error) and "objbutler create x" in error_message(repo_error)


# -- the help and the documentation --------------------------------------------------------------------------

_STORE_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                    "ST_AUTH", "ST_USER", "ST_KEY", "OS_AUTH_URL", "OS_", "OBJBUTLER_CACHE", "OBJBUTLER_OFFLINE")


def _help(*argv: str) -> str:
    result = _runner().invoke(main, [*argv, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())


def test_every_help_names_the_variables_it_reads() -> None:
    top = _help()
    for code in ExitCode:
        assert re.search(rf"\b{int(code)}\b", top)
    for name in main.commands:
        text = _help(name)
        assert "OBJBUTLER_DEBUG" in text and "Exit codes" in text, name
        if name == "bench":
            assert "AWS_ENDPOINT_URL" in text and "OBJBUTLER_BENCH_DIR" in text
            continue
        for variable in _STORE_VARIABLES:
            assert variable in text, (name, variable)
        if name in ("cutout", "demo"):
            assert "OBJBUTLER_MAX_CUTOUT_PIXELS" in text
        if name in ("get", "put", "ingest", "put-many", "cutout", "demo"):
            assert "OBJBUTLER_MAX_IMAGE_BYTES" in text


def test_every_variable_the_code_reads_is_in_the_help() -> None:
    """grep the package for the OBJBUTLER_* variables it reads: each is in ``objbutler --help``."""
    package = Path(__file__).resolve().parent.parent / "objbutler"
    read: set[str] = set()
    for path in package.rglob("*.py"):
        if "testing" in path.parts:
            continue
        read |= set(re.findall(r"\"(OBJBUTLER_[A-Z_]+)\"", path.read_text(encoding="utf-8")))
    assert read >= {"OBJBUTLER_CACHE", "OBJBUTLER_OFFLINE", "OBJBUTLER_DEBUG"}
    top = _help()
    assert {variable for variable in read if variable not in top} == set()


def test_the_reference_page_lists_the_exit_codes() -> None:
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    documented = {int(code): name for code, name in re.findall(r"^\| *(\d+) *\| *`(\w+)`", page, re.MULTILINE)}
    assert documented == {int(code): code.name for code in ExitCode}
    assert set(EXIT_CODES) == set(ExitCode)


# -- the --where parser --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [
    (["visit=903334"], {"visit": 903334}),
    (["band=r"], {"band": "r"}),
    (["visit=-3"], {"visit": -3}),
    (["detector=1,2,3"], {"detector": [1, 2, 3]}),
    (["band=g, r ,i"], {"band": ["g", "r", "i"]}),
    (["visit=10..20"], {"visit": range(10, 21)}),
    (["visit=7..7"], {"visit": range(7, 8)}),
    (["visit=-5..-2"], {"visit": range(-5, -1)}),
    (["visit=1", "visit=2"], {"visit": [1, 2]}),
    (["visit=1", "visit=1"], {"visit": 1}),
    (["visit=1..3", "visit=4..6"], {"visit": range(1, 7)}),
    (["visit=1..3", "visit=2..5"], {"visit": range(1, 6)}),
    (["visit=1..3", "visit=7"], {"visit": [1, 2, 3, 7]}),
    (["visit=1,5..7,3"], {"visit": [1, 3, 5, 6, 7]}),
    (["visit=1..3", "visit=4"], {"visit": range(1, 5)}),
    (["visit=1", "band=r", "visit=2..3"], {"visit": range(1, 4), "band": "r"}),
    (["visit=1,x"], {"visit": [1, "x"]}),  # the registry says the kind is wrong
    ([], {}),
])
def test_where_parser(given: list[str], expected: dict[str, Any]) -> None:
    assert parse_where(given) == expected


@pytest.mark.parametrize(("given", "says"), [
    (["visit=5..2"], "empty"),
    (["visit="], "no value"),
    (["visit= "], "no value"),
    (["=5"], "no key"),
    ([" =5"], "no key"),
    (["visit"], "KEY=VALUE"),
    (["visit=1.."], "both ends"),
    (["band=a.."], "both ends"),
    (["visit=..5"], "both ends"),
    (["visit=a..b"], "integer"),
    (["visit=1...3"], "integer"),
    (["visit=1,,2"], "empty value"),
    (["visit=1,"], "empty value"),
    (["visit=1", "visit=2..1"], "empty"),
    (["visit=0..10000000", "visit=20000000"], "give one range"),
])
def test_where_parser_refuses(given: list[str], says: str) -> None:
    with pytest.raises(click.BadParameter, match=re.escape(says)):
        parse_where(given)


def test_where_values_reach_the_query(repo: str) -> None:
    butler = Butler(repo)
    for where in (["visit=1..3"], ["visit=0", "visit=1"], ["visit=1,2"], ["detector=2", "visit=1"]):
        assert [r.dataset_type for r in butler.query("calexp", parse_where(where))] == ["calexp"], where
    result = _runner().invoke(main, ["query", repo, "--where", "visit=0", "--where", "visit=1", "--json"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2  # calexp and metric, not just visit 0


def test_data_id_parser() -> None:
    assert parse_data_id(["visit=1", "band=r", "visit=1"]) == {"visit": 1, "band": "r"}
    with pytest.raises(click.BadParameter, match="given twice"):
        parse_data_id(["visit=1", "visit=2"])


# -- URIs and bucket names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("uri", "parsed"), [
    ("repo", ("file", "repo", "")),
    ("/data/repo", ("file", "/data/repo", "")),
    ("./s3:odd/repo", ("file", "./s3:odd/repo", "")),
    ("file:///data/repo", ("file", "/data/repo", "")),
    ("file://localhost/data/repo", ("file", "/data/repo", "")),
    ("memory://name", ("memory", "name", "")),
    ("s3://bucket", ("s3", "bucket", "")),
    ("s3://bucket/some/prefix/", ("s3", "bucket", "some/prefix")),
    ("S3://bucket/p", ("s3", "bucket", "p")),
    ("s3://Legacy_Bucket/p", ("s3", "Legacy_Bucket", "p")),  # may exist (before 2018): opening is allowed
    ("swift://container/p", ("swift", "container", "p")),
])
def test_store_uris(uri: str, parsed: tuple[str, str, str]) -> None:
    assert parse_store_uri(uri) == parsed


@pytest.mark.parametrize(("uri", "error", "says"), [
    ("s3:/bucket/repo", InvalidURIError, "did you mean 's3://bucket/repo'"),
    ("s3:bucket", InvalidURIError, "did you mean 's3://bucket'"),
    ("s3:", InvalidURIError, "names nothing"),
    ("swift:container/p", InvalidURIError, "did you mean 'swift://container/p'"),
    ("memory:/x", InvalidURIError, "did you mean 'memory://x'"),
    ("file:/data/repo", InvalidURIError, "did you mean 'file:///data/repo'"),
    ("file:data/repo", InvalidURIError, "plain path ('data/repo')"),
    ("file://data/repo", InvalidURIError, "names the host 'data'"),
    ("file://", InvalidURIError, "no directory"),
    ("s3://", InvalidURIError, "no bucket"),
    ("swift:///c/p", InvalidURIError, "did you mean 'swift://c/p'"),
    ("s3://h:9000/b", InvalidURIError, "AWS_ENDPOINT_URL"),
    ("swift://h:8080/c", InvalidURIError, "ST_AUTH"),
    ("s3://b/p#frag", InvalidURIError, "fragment"),
    ("s3://b/p?", InvalidURIError, "query"),
    ("s3://ab/p", InvalidBucketNameError, "bucket name 'ab'"),
    ("s3://b[1/p", InvalidURIError, "not a valid URI"),
    ("gs://b/p", NotSupportedError, "unsupported"),
    ("", InvalidURIError, "non-empty"),
])
def test_malformed_store_uris(uri: str, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=re.escape(says)):
        parse_store_uri(uri)


@pytest.mark.parametrize(("name", "new", "problem"), [
    ("ab", False, "2 characters"),
    ("a" * 64, True, "64 characters"),
    ("a" * 256, False, "256 characters"),
    ("my_bucket", True, "underscore"),
    ("MyBucket", True, "capital"),
    ("-bucket", True, "start and end"),
    ("bucket-", True, "start and end"),
    ("my..bucket", True, "two adjacent dots"),
    ("10.0.0.1", True, "IP address"),
    ("xn--bucket", True, "reserved"),
    ("bucket-s3alias", True, "reserved"),
    ("bu cket", False, "' '"),
])
def test_s3_bucket_name_rules(name: str, new: bool, problem: str) -> None:
    found = bucket_name_problem(name, "s3", new=new)
    assert found is not None and problem in found


def test_valid_bucket_and_container_names() -> None:
    for name in ("abc", "my-bucket.v2", "a" * 63, "repos-1a2b3c4d"):
        assert bucket_name_problem(name, "s3", new=True) is None
    assert bucket_name_problem("My_Old_Bucket", "s3") is None
    assert bucket_name_problem("any name: ok", "swift") is None
    assert bucket_name_problem("a/b", "swift") is not None
    assert bucket_name_problem("x" * 257, "swift") is not None


def test_stores_check_names_before_any_request() -> None:
    from objbutler.stores.s3 import S3Store
    from objbutler.stores.swift import SwiftStore

    with pytest.raises(InvalidBucketNameError, match="'ab'"):
        S3Store("ab", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(InvalidBucketNameError, match="capital"):
        S3Store("Old_Bucket", create_bucket=True, endpoint_url="http://127.0.0.1:9")
    assert S3Store("Old_Bucket", endpoint_url="http://127.0.0.1:9").bucket == "Old_Bucket"  # may exist: opened
    with pytest.raises(InvalidBucketNameError, match="'/'"):
        SwiftStore("a/b")
    with pytest.raises(ValueError):  # InvalidBucketNameError is a ValueError, as the error it replaces
        S3Store("")
