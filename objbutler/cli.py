"""The ``objbutler`` command line: thin commands that parse arguments and call library functions.

A dataset is named as ``URI TYPE --data-id KEY=VALUE [--data-id ...] --run RUN``;
values that look like integers are integers. ``--where`` takes ``KEY=VALUE``,
``KEY=V1,V2`` (any of these) and ``KEY=A..B`` (an inclusive integer range);
a key given twice selects the union of its values.

Every command reports a failure as one ``error: ...`` line on stderr and an exit
code from :mod:`objbutler.cli_errors`, never a traceback (``OBJBUTLER_DEBUG=1``
adds it).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from objbutler.cli_errors import EXIT_CODES, error_message, report_errors
from objbutler.errors import AlreadyExistsError, FormatError, NotFoundError, ObjButlerError
from objbutler.version import __version__

MAX_WHERE_VALUES = 100_000
"""Most values one ``--where`` key may list (ranges expanded) when they are not one range."""


def _scalar(text: str) -> int | str:
    """``"903334"`` -> 903334, anything else stays a string (the rule of ``--data-id`` and ``--where``)."""
    try:
        return int(text)
    except ValueError:
        return text


def parse_data_id(pairs: Sequence[str]) -> dict[str, int | str]:
    """Turn ``["visit=903334", "band=r"]`` into ``{"visit": 903334, "band": "r"}``.

    A key given twice with different values is an error (a data ID has one value per key).
    """
    data_id: dict[str, int | str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--data-id")
        parsed = _scalar(value)
        if key in data_id and data_id[key] != parsed:
            raise click.BadParameter(f"{key!r} given twice ({data_id[key]!r} and {parsed!r}): a data ID has one "
                                     f"value per key", param_hint="--data-id")
        data_id[key] = parsed
    return data_id


def _where_error(message: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint="--where")


def _where_items(pair: str) -> tuple[str, list[int | str | range]]:
    key, sep, value = pair.partition("=")
    key = key.strip()
    if not sep:
        raise _where_error(f"expected KEY=VALUE, KEY=V1,V2 or KEY=A..B, got {pair!r}")
    if not key:
        raise _where_error(f"{pair!r} has no key before '='")
    if not value.strip():
        raise _where_error(f"{pair!r} has no value after '='")
    items: list[int | str | range] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            raise _where_error(f"{pair!r} has an empty value between commas")
        if ".." not in item:
            items.append(_scalar(item))
            continue
        low, _, high = (end.strip() for end in item.partition(".."))
        if not low or not high:
            raise _where_error(f"the range {item!r} in {pair!r} needs both ends: A..B")
        try:
            start, stop = int(low), int(high)
        except ValueError:
            raise _where_error(f"the range {item!r} in {pair!r} takes an integer at each end") from None
        if stop < start:
            raise _where_error(f"the range {item!r} in {pair!r} is empty: ranges are inclusive, A..B with A <= B")
        items.append(range(start, stop + 1))
    return key, items


def _where_condition(key: str, items: list[int | str | range]) -> Any:
    """One condition for ``Butler.query``: a value, a ``range``, or a list (membership)."""
    ranges = [item for item in items if isinstance(item, range)]
    values = list(dict.fromkeys(item for item in items if not isinstance(item, range)))
    if not ranges:
        return values[0] if len(values) == 1 else values
    texts = [value for value in values if isinstance(value, str)]
    spans = sorted([(r.start, r.stop) for r in ranges] + [(v, v + 1) for v in values if isinstance(v, int)])
    merged: list[list[int]] = []
    for start, stop in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    if len(merged) == 1 and not texts:
        return range(*merged[0])
    count = sum(stop - start for start, stop in merged)
    if count > MAX_WHERE_VALUES:
        raise _where_error(f"{key}: these ranges select {count} values; give one range A..B, or at most "
                           f"{MAX_WHERE_VALUES} values")
    return [number for start, stop in merged for number in range(start, stop)] + texts


def parse_where(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``--where`` options into the ``where`` mapping of :meth:`Butler.query <objbutler.Butler.query>`.

    ``visit=903334`` is equality, ``detector=1,2,3`` membership, ``visit=10..20`` the inclusive
    integer range ``range(10, 21)``; items mix (``visit=1,5..9``), and a key given again adds
    its values (union). Values that look like integers are integers, as in ``--data-id``.

    Parameters
    ----------
    pairs : sequence of str
        The ``--where`` option values.

    Returns
    -------
    dict
        Key -> a value, a ``range`` or a list of values.

    Raises
    ------
    click.BadParameter
        For ``KEY`` without ``=``, ``=VALUE``, ``KEY=``, an empty item (``1,,2``), a range
        with an end missing or not an integer (``a..``, ``x..y``), or an empty range (``5..2``).
    """
    collected: dict[str, list[int | str | range]] = {}
    for pair in pairs:
        key, items = _where_items(pair)
        collected.setdefault(key, []).extend(items)
    return {key: _where_condition(key, items) for key, items in collected.items()}


class StoreURI(click.ParamType):
    """A repository URI or path, checked (syntax, bucket name) before anything is opened."""

    name = "uri"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from objbutler.stores import parse_store_uri

        try:
            parse_store_uri(value)
        except ObjButlerError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


URI = StoreURI()

# -- help texts ---------------------------------------------------------------------------------------

_ENV_TEXT = {
    "s3": "S3 (s3://): AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
          "AWS_SESSION_TOKEN, AWS_PROFILE, AWS_DEFAULT_REGION (else AWS_REGION, else us-east-1), ~/.aws/config",
    "swift": "Swift (swift://): ST_AUTH, ST_USER, ST_KEY, ST_AUTH_VERSION (v1 auth); or OS_AUTH_URL, "
             "OS_USERNAME, OS_PASSWORD, OS_PROJECT_NAME, OS_AUTH_VERSION, OS_IDENTITY_API_VERSION and the other "
             "OS_* variables (OS_USER_DOMAIN_NAME, OS_PROJECT_DOMAIN_NAME, OS_REGION_NAME, OS_STORAGE_URL, "
             "OS_AUTH_TOKEN, ...)",
    "cache": "OBJBUTLER_CACHE (a local cache directory), OBJBUTLER_CACHE_SIZE (e.g. 20G), OBJBUTLER_OFFLINE "
             "(1: answer from the cache only; auto: while the server fails)",
    "image": "OBJBUTLER_MAX_IMAGE_BYTES: the largest image read or written (e.g. 8G; default: the memory)",
    "cutout": "OBJBUTLER_MAX_CUTOUT_PIXELS: the most stamp pixels one request may cut",
    "bench": "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION (--target s3://...); "
             "OBJBUTLER_BENCH_DIR, OBJBUTLER_SERVERS_DIR, OBJBUTLER_SERVERS_PYTHON (where the baselines and "
             "test servers are installed)",
    "debug": "OBJBUTLER_DEBUG=1: print the traceback of an error as well",
    "internals": "OBJBUTLER_PUBLIC_INTERNALS=1: decode tiled FITS and Zarr shards through public astropy/zarr "
                 "APIs only (slower; for checking the fallback)",
}
_STORE_ENV = ("s3", "swift", "cache")
_COMMAND_ENV: dict[str, tuple[str, ...]] = {
    "put": (*_STORE_ENV, "image"),
    "ingest": (*_STORE_ENV, "image"),
    "get": (*_STORE_ENV, "image"),
    "put-many": (*_STORE_ENV, "image"),
    "cutout": (*_STORE_ENV, "image", "cutout"),
    "demo": (*_STORE_ENV, "image", "cutout"),
    "clone": (*_STORE_ENV, "image"),
    "bench": ("bench",),
}
"""Environment variables each command reads (any other command: the store and cache ones)."""

_EXIT_SUMMARY = ("Exit codes (objbutler --help says more):",
                 "  0 done, 1 refused or failed, 2 usage, 3 not found, 4 already there, 5 store unavailable, "
                 "70 internal error, 130 interrupted")


def _block(title: str, lines: Sequence[str], hang: int = 6) -> str:
    """A paragraph that click prints as it is (``\\b``): a title, then lines wrapped to 78 columns."""
    wrapped = [textwrap.fill(line, width=78, subsequent_indent=" " * hang) for line in lines]
    return "\b\n" + "\n".join([title, *wrapped])


def command_epilog(name: str) -> str:
    """The epilog of one command's ``--help``: the environment variables it reads and the exit codes."""
    keys = (*_COMMAND_ENV.get(name, _STORE_ENV), "debug")
    return "\n\n".join([_block("Environment:", [f"  {_ENV_TEXT[key]}" for key in keys]),
                        _block(_EXIT_SUMMARY[0], _EXIT_SUMMARY[1:], hang=2)])


def _main_epilog() -> str:
    codes = [f"  {int(code):>3}  {text}" for code, text in EXIT_CODES.items()]
    env = [f"  {_ENV_TEXT[key]}" for key in (*_STORE_ENV, "image", "cutout", "internals", "debug")]
    return "\n\n".join([
        _block("Every error is one 'error: ...' line on stderr. Exit codes:", codes, hang=7),
        _block("Environment (each command's --help lists the variables it reads):", env),
    ])


class _Group(click.Group):
    """Runs every command under :func:`~objbutler.cli_errors.report_errors`; fills in each command's epilog."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None and command.epilog is None:
            command.epilog = command_epilog(cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        with report_errors(lambda: ctx.invoked_subcommand):
            return super().invoke(ctx)


data_id_option = click.option("--data-id", "data_id", multiple=True, metavar="KEY=VALUE",
                              help="Data ID item (repeatable, one per key).")
run_option = click.option("--run", default=None, help="Run (collection) name.")
where_option = click.option(
    "--where", "where", multiple=True, metavar="KEY=VALUE",
    help="Data ID condition (repeatable): KEY=VALUE, KEY=V1,V2 (any of them), KEY=A..B (integers A to B "
         "inclusive); a key given again adds its values.",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_main_epilog())
@click.version_option(__version__, prog_name="objbutler")
def main() -> None:
    """objbutler: object-store-native datasets for astronomy."""


# -- local files and repositories ---------------------------------------------------------------------


def _scheme(uri: str) -> str:
    from objbutler.stores import parse_store_uri

    return parse_store_uri(uri)[0]


def _bucket_options(uri: str, create_bucket: bool) -> dict[str, Any]:
    """``create_bucket=True`` (S3) or ``create_container=True`` (Swift) when asked; nothing for local paths."""
    if not create_bucket:
        return {}
    scheme = _scheme(uri)
    return {"s3": {"create_bucket": True}, "swift": {"create_container": True}}.get(scheme, {})


def _refuse_file_as_repository(uri: str) -> None:
    """A local repository is a directory: refuse a path that is (or lies below) an existing file."""
    from objbutler.stores import parse_store_uri

    scheme, location, _ = parse_store_uri(uri)
    if scheme != "file":
        return
    path = Path(location).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = f"{path} is a file" if existing == path else f"{existing} is a file, so {path} cannot be made"
        raise AlreadyExistsError(f"{where}: a repository is a directory")


def _check_output_file(path: Path, option: str, overwrite: bool) -> None:
    """An output file goes in an existing directory, and replaces a file only with ``--overwrite``."""
    parent = path.parent
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a directory"
        raise click.BadParameter(f"cannot write {path}: the directory {parent} {what}", param_hint=option)
    if path.is_dir():
        raise click.BadParameter(f"{path} is a directory; give a file name", param_hint=option)
    if path.exists() and not overwrite:
        raise AlreadyExistsError(f"{path} already exists; add --overwrite to replace it")


def _runs(butler: Any) -> list[str]:
    return sorted({ref.run for ref in butler.query()})


def _check_run(butler: Any, run: str | None) -> None:
    """Raise NotFoundError if ``run`` holds no dataset at all (so a typo is not an empty answer)."""
    if run is not None and not butler.query(run=run):
        runs = _runs(butler)
        shown = ", ".join(runs[:20]) + (f", ... ({len(runs)} in all)" if len(runs) > 20 else "")
        raise NotFoundError(f"no run {run!r} in {butler.uri}; runs: {shown or 'none yet'}")


def _find(butler: Any, dataset_type: str, data_id: dict[str, int | str], run: str | None) -> Any:
    """``butler.find``, but a run that does not exist at all is named as such."""
    try:
        return butler.find(dataset_type, data_id, run)
    except NotFoundError:
        _check_run(butler, run)
        raise


# -- commands -----------------------------------------------------------------------------------------


@main.command()
@click.argument("uri", type=URI)
@click.option("--format", "default_format", type=click.Choice(["fits", "zarr"]), default="fits", show_default=True,
              help="Default format of image datasets.")
@click.option("--allow-no-atomic-create", is_flag=True, help="Accept a store that ignores conditional writes.")
@click.option("--create-bucket", "--create-container", "create_bucket", is_flag=True,
              help="Create the S3 bucket (or Swift container) if it does not exist.")
@click.option("--commit-protocol", type=click.Choice(["claimed", "sequenced", "timestamped"]), default=None,
              help="Commit protocol (default: claimed with an atomic create, timestamped without). claimed "
                   "scales writes with concurrent writers (three writes per put in two round trips, a compacted "
                   "log that a reader lists once per refresh); sequenced keeps one ordered log (two writes per "
                   "put, for a single writer: writers read each other's commits).")
@click.option("--log-shards", type=click.IntRange(1, 1000), default=None,
              help="Claimed repositories: log shards (default 256; more than the writers expected at once).")
def create(uri: str, default_format: str, allow_no_atomic_create: bool, create_bucket: bool,
           commit_protocol: str | None, log_shards: int | None) -> None:
    """Create an empty repository at URI (a path, file:///path, s3://BUCKET/PREFIX or swift://CONTAINER/PREFIX).

    The bucket or container must exist, unless --create-bucket is given (or its alias for Swift,
    --create-container).
    """
    from objbutler.butler import Butler

    _refuse_file_as_repository(uri)
    butler = Butler.create(uri, default_format=default_format, allow_no_atomic_create=allow_no_atomic_create,
                           commit_protocol=commit_protocol, log_shards=log_shards,
                           **_bucket_options(uri, create_bucket))
    click.echo(f"created {uri} (commit protocol: {butler.config['commit_protocol']})")


@main.command(name="put")
@click.argument("uri")
@click.argument("dataset_type")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@data_id_option
@click.option("--header-key", "header_keys", multiple=True, metavar="KEY=CARD",
              help="Take a data ID item from a FITS header card, e.g. visit=EXPNUM.")
@run_option
@click.option("--format", "fmt", type=click.Choice(["fits", "zarr"]), default=None, help="Storage format.")
@click.option("--hdu", default=None, help="HDU to ingest (index or name); default: the first with image data.")
def put_command(uri: str, dataset_type: str, files: tuple[Path, ...], data_id: tuple[str, ...],
                header_keys: tuple[str, ...], run: str | None, fmt: str | None, hdu: str | None) -> None:
    """Put the images of FITS FILES as datasets of DATASET_TYPE (data ID from options and header cards).

    Each file's image is written into the repository as FITS or Zarr; `objbutler ingest` instead takes
    whole files (and directories, globs, S3 prefixes) as they are, copied or registered in place.
    """
    from objbutler.butler import Butler
    from objbutler.ingest import ingest_files

    if run is None:
        raise click.BadParameter("a run is required", param_hint="--run")
    butler = Butler(uri)
    refs, failures = ingest_files(butler, dataset_type, list(files), parse_data_id(data_id),
                                  dict(_split_pairs(header_keys)), run, fmt, hdu,
                                  progress=None if len(files) > 1 else False)
    for ref in refs:
        click.echo(f"{ref.id}  {ref.dataset_type}  {json.dumps(ref.data_id)}  {ref.key}")
    for path, error in failures:
        click.echo(f"error: {path}: {type(error).__name__}: {error}", err=True)
    if failures:
        sys.exit(1)


@main.command(name="ingest")
@click.argument("uri")
@click.argument("dataset_type")
@click.argument("sources", nargs=-1, required=True)
@data_id_option
@click.option("--header-key", "header_keys", multiple=True, metavar="KEY=CARD",
              help="Take a data ID item from a FITS header card (Zarr: an attribute), e.g. visit=EXPNUM.")
@run_option
@click.option("--transfer", type=click.Choice(["copy", "direct"]), default="copy", show_default=True,
              help="copy: copy the bytes into the repository; direct: register the data where it is "
                   "(same endpoint as the repository, never copied, written or deleted by objbutler).")
@click.option("--hdu", default=None, help="FITS: the HDU that is the dataset (index or name); default: the first "
                                          "with image data. The whole file is kept.")
@click.option("--format", "fmt", type=click.Choice(["fits", "zarr"]), default=None,
              help="Only sources in this format (ingest never converts; `objbutler put --format` does).")
@click.option("--source-option", "source_options", multiple=True, metavar="KEY=VALUE",
              help="Store option for sources on object stores instead of the repository's (endpoint_url=..., "
                   "profile=..., auth_url=...); repeatable.")
@click.option("--jobs", type=click.IntRange(min=1), default=4, show_default=True, help="Sources read at once.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
def ingest_command(uri: str, dataset_type: str, sources: tuple[str, ...], data_id: tuple[str, ...],
                   header_keys: tuple[str, ...], run: str | None, transfer: str, hdu: str | None, fmt: str | None,
                   source_options: tuple[str, ...], jobs: int, progress: bool | None) -> None:
    """Register existing FITS files and Zarr arrays as datasets of DATASET_TYPE, as they are.

    SOURCES are local paths or globs, s3://bucket/prefix/*.fits, swift://container/prefix/*.fits or Zarr
    array/group prefixes (globs on object stores are expanded by listing). Exit 1 if any source failed.
    """
    from objbutler.butler import Butler
    from objbutler.ingest import ingest_objects

    if run is None:
        raise click.BadParameter("a run is required", param_hint="--run")
    for source in sources:  # a local file named outright (not a glob, not a URI) must exist, as for `put`
        if "://" not in source and not glob.has_magic(source) and not os.path.exists(source):
            raise click.BadParameter(f"{source}: no such file or directory", param_hint="SOURCES")
    options = _store_options(source_options) if source_options else None
    refs, failures = ingest_objects(Butler(uri), dataset_type, list(sources), run=run,
                                    data_id=parse_data_id(data_id), header_keys=dict(_split_pairs(header_keys)),
                                    transfer=transfer, hdu=hdu, format=fmt, progress=progress,
                                    source_options=options, jobs=jobs)
    for ref in refs:
        click.echo(f"{ref.id}  {ref.dataset_type}  {json.dumps(ref.data_id)}  {ref.key}")
    for source, error in failures:
        message = error_message(error, "ingest")
        click.echo(f"error: {message if message.startswith(str(source)) else f'{source}: {message}'}", err=True)
    click.echo(f"ingested {len(refs)} dataset(s) ({transfer}), {len(failures)} failure(s)")
    if failures:
        sys.exit(1)


def _store_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["endpoint_url=http://h:9000", "max_concurrency=8", "verify=false"]`` as store options."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--source-option")
        options[key.strip()] = {"true": True, "false": False}.get(value.lower(), int(value) if value.isdigit()
                                                                   else value)
    return options


def _split_pairs(pairs: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=CARD, got {pair!r}")
        out.append((key, value))
    return out


@main.command()
@click.argument("uri", type=URI)
@click.argument("dataset_type")
@data_id_option
@run_option
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the dataset (FITS for images, JSON for metadata, ECSV for tables).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--efd", is_flag=True, help="Add EFD summary cards for the exposure to the image header.")
@click.option("--efd-run", default=None, help="Only EFD extracts in this run (default: any).")
@click.option("--efd-type", default="efd_extract", show_default=True, help="Dataset type of the EFD extracts.")
def get(uri: str, dataset_type: str, data_id: tuple[str, ...], run: str | None, out: Path, overwrite: bool,
        efd: bool, efd_run: str | None, efd_type: str) -> None:
    """Read one dataset and write it to a local file."""
    from objbutler.butler import Butler
    from objbutler.ingest import write_local

    _check_output_file(out, "--out", overwrite)
    efd_options: Any = False
    if efd:
        from objbutler.efd import EfdOptions

        efd_options = EfdOptions(dataset_type=efd_type, run=efd_run)
    butler = Butler(uri)
    ref = _find(butler, dataset_type, parse_data_id(data_id), run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = butler.get(ref, efd=efd_options)
    for warning in caught:
        click.echo(f"warning: {warning.category.__name__}: {warning.message}", err=True)
    write_local(obj, out)
    click.echo(f"wrote {out}")


@main.command()
@click.argument("uri", type=URI)
@click.argument("dataset_type")
@data_id_option
@run_option
@click.option("--depth", type=click.IntRange(min=0), default=None, help="Generations to follow (default: all).")
@click.option("--format", "fmt", type=click.Choice(["tree", "prov-json"]), default="tree", show_default=True)
@click.option("--descendants", is_flag=True, help="Datasets made from this one (in URI) instead of its inputs.")
def provenance(uri: str, dataset_type: str, data_id: tuple[str, ...], run: str | None, depth: int | None, fmt: str,
               descendants: bool) -> None:
    """Show a dataset's lineage as a tree, or export it as W3C PROV-JSON."""
    from objbutler.butler import Butler

    butler = Butler(uri)
    ref = _find(butler, dataset_type, parse_data_id(data_id), run)
    walk = butler.descendants if descendants else butler.provenance
    graph = walk(ref, depth=depth)
    click.echo(json.dumps(graph.to_prov_json(), indent=2) if fmt == "prov-json" else graph.to_tree_text())


def _put_many_target(text: str) -> tuple[str, str | None]:
    """``--to URI[:FORMAT]``, checked: a known format, a well-formed URI."""
    from objbutler.multi import split_target
    from objbutler.stores import parse_store_uri

    uri, fmt = split_target(text)
    head, sep, tail = text.rpartition(":")
    if fmt is None and sep and head and tail.isidentifier():
        raise click.BadParameter(f"{text!r}: unknown format {tail!r} (image formats: fits, zarr)", param_hint="--to")
    try:
        parse_store_uri(uri)
    except ObjButlerError as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from None
    return uri, fmt


@main.command(name="put-many")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dataset_type")
@click.option("--to", "targets", multiple=True, required=True, metavar="URI[:FORMAT]",
              help="A repository and its format, e.g. s3://b/repo:zarr (repeatable; no format: its default).")
@data_id_option
@run_option
@click.option("--hdu", default=None, help="HDU to read (index or name); default: the first with image data.")
def put_many(file: Path, dataset_type: str, targets: tuple[str, ...], data_id: tuple[str, ...], run: str | None,
             hdu: str | None) -> None:
    """Put one FITS FILE into several repositories, each in its own format (exit 1 if any failed)."""
    from astropy.io import fits

    from objbutler.butler import Butler
    from objbutler.cli_errors import error_message
    from objbutler.multi import put_many_repos

    if run is None:
        raise click.BadParameter("a run is required", param_hint="--run")
    parsed_targets = [_put_many_target(target) for target in targets]
    parsed_id = parse_data_id(data_id)
    try:
        hdul = fits.open(file, memmap=False)
    except (OSError, ValueError) as exc:
        raise FormatError(f"{file} is not a FITS file ({exc})") from None
    with hdul:
        try:
            image = hdul if hdu is None else hdul[int(hdu) if hdu.lstrip("-").isdigit() else hdu]
        except (IndexError, KeyError):
            names = ", ".join(f"{i} {h.name}" for i, h in enumerate(hdul))
            raise click.BadParameter(f"{file} has no HDU {hdu!r}; it has {names}", param_hint="--hdu") from None
        butlers = [(Butler(target_uri), target_fmt) for target_uri, target_fmt in parsed_targets]
        results = put_many_repos(butlers, image, dataset_type, parsed_id, run=run)
    reasons = []
    for result in results:
        if result.ok:
            click.echo(str(result))
        else:
            reason = error_message(result.error) if result.error is not None else "not committed"
            reasons.append(f"{result.uri}: {reason}")
            click.echo(f"FAILED {result.uri} [{result.format or 'default'}]: {reason}")
    if reasons:
        click.echo(f"error: the put failed in {len(reasons)} of {len(results)} repositories: {'; '.join(reasons)}",
                   err=True)
        sys.exit(1)


@main.command()
@click.argument("uri", type=URI)
@click.argument("dataset_type", required=False)
@where_option
@run_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def query(uri: str, dataset_type: str | None, where: tuple[str, ...], run: str | None, as_json: bool) -> None:
    """List datasets, optionally by type, data ID conditions and run.

    An unknown dataset type, data ID key or run is an error (exit 3 or 1), not an empty list.
    """
    from objbutler.butler import Butler

    conditions = parse_where(where)
    butler = Butler(uri)
    refs = butler.query(dataset_type, conditions, run)
    if not refs:
        _check_run(butler, run)
    if as_json:
        for ref in refs:
            click.echo(json.dumps(ref.to_json()))
        return
    rows = [(r.dataset_type, r.run, json.dumps(r.data_id), r.format, str(r.size), r.id) for r in refs]
    header = ("TYPE", "RUN", "DATA ID", "FORMAT", "BYTES", "ID")
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    click.echo(f"{len(refs)} dataset(s)")


@main.command()
@click.argument("uri", type=URI)
@click.option("--verify-checksums", is_flag=True, help="Read every dataset and compare checksums.")
def fsck(uri: str, verify_checksums: bool) -> None:
    """Check the registry against the data: exit 1 if any entry dangles (orphans are reported only)."""
    from objbutler.butler import Butler
    from objbutler.maintenance import fsck as run_fsck

    report = run_fsck(Butler(uri), verify_checksums=verify_checksums)
    for ref, reason in report.dangling:
        click.echo(f"DANGLING {ref.dataset_type} {json.dumps(ref.data_id)} run={ref.run} {ref.key}: {reason}")
    for orphan in report.orphans:
        click.echo(f"orphan {orphan.key} ({orphan.size} bytes, modified {orphan.last_modified})")
    for claim in report.claims:
        click.echo(f"unfinished claim {claim.key} (modified {claim.last_modified}): its put crashed or is in flight; "
                   "vacuum removes it after the grace period")
    for ref in report.shadowed:
        click.echo(f"shadowed {ref.dataset_type} {json.dumps(ref.data_id)} run={ref.run} dataset {ref.id}: "
                   "an earlier commit holds this data ID")
    click.echo(f"{report.checked} entries checked, {len(report.dangling)} dangling, {len(report.orphans)} orphan(s)"
               + (f", {len(report.claims)} unfinished claim(s)" if report.claims else ""))
    if not report.ok:
        click.echo(f"error: {len(report.dangling)} registry entr{'y' if len(report.dangling) == 1 else 'ies'} of "
                   f"{uri} point at missing or corrupt data (listed above)", err=True)
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("uri", type=URI)
@click.option("--older-than", default="1h", show_default=True, help="Grace period, e.g. 30m, 1h, 2d.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def vacuum(uri: str, older_than: str, dry_run: bool) -> None:
    """Remove orphaned data objects and unfinished claims older than the grace period (never a committed dataset)."""
    from objbutler.butler import Butler
    from objbutler.maintenance import parse_age
    from objbutler.maintenance import vacuum as run_vacuum

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    removed = run_vacuum(Butler(uri), age, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for orphan in removed:
        click.echo(f"{verb} {orphan.key} ({orphan.size} bytes)")
    click.echo(f"{verb} {len(removed)} orphan(s)")


_STAMP_SUFFIXES = {".npz": "npz", ".fits": "fits", ".fit": "fits", ".fts": "fits", "": "dir"}


def _stamp_output(text: str, overwrite: bool) -> tuple[str, Path]:
    """What ``cutout --out`` writes, from its suffix: ``dir`` (none, or a trailing /), ``fits`` or ``npz``."""
    path = Path(text)
    if path.is_dir() or text.endswith(("/", os.sep)):
        kind = "dir"
    else:
        suffix = path.suffix.lower()
        if suffix not in _STAMP_SUFFIXES:
            raise click.BadParameter(
                f"{text!r}: the suffix {path.suffix!r} is none of the outputs: a directory (no suffix, or a "
                f"trailing /) for one FITS file per stamp, NAME.fits for one multi-extension FITS file, "
                f"NAME.npz for one NumPy archive", param_hint="--out")
        kind = _STAMP_SUFFIXES[suffix]
    if kind != "dir":
        _check_output_file(path, "--out", overwrite)
        return kind, path
    if not path.parent.is_dir():
        raise click.BadParameter(f"cannot make {path}: the directory {path.parent} does not exist", param_hint="--out")
    if path.exists() and not path.is_dir():
        raise AlreadyExistsError(f"{path} is a file, not a directory for the stamps")
    return kind, path


def _check_stamp_files(directory: Path, count: int, overwrite: bool) -> None:
    from objbutler.stamps_io import stamp_file_name

    if overwrite or not directory.is_dir():
        return
    taken = [name for name in (stamp_file_name(i) for i in range(count)) if (directory / name).exists()]
    if taken:
        raise AlreadyExistsError(f"{directory} already holds {taken[0]}" + (f" and {len(taken) - 1} more stamp "
                                 f"file(s)" if len(taken) > 1 else "") + "; add --overwrite to replace them")


@main.command(name="rm-repo")
@click.argument("uri")
@click.option("--yes", is_flag=True, help="Really delete. Without it: only say what would be deleted, and exit 1.")
@click.option("--missing-ok", is_flag=True, help="No repository at URI is not an error.")
def rm_repo(uri: str, yes: bool, missing_ok: bool) -> None:
    """Delete the repository at URI: every object under it (data, registry, config last), nothing outside it.

    Safe to run again after an interruption. The bucket or container stays; a local directory goes once empty.
    """
    from objbutler.maintenance import remove_repository

    report = remove_repository(uri, dry_run=not yes, missing_ok=missing_ok)
    if yes or not report.total:
        click.echo(report.summary())
        return
    click.echo(f"error: refusing without --yes: {report.summary()}; to delete them: objbutler rm-repo {uri} --yes",
               err=True)
    sys.exit(1)


@main.command()
@click.argument("uri", type=URI)
@click.argument("dataset_type")
@data_id_option
@run_option
@click.option("--boxes", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with columns x0,y0,x1,y1 (half-open, 0-based pixels).")
@click.option("--radec", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with columns ra,dec in degrees (then --size).")
@click.option("--size", default=None, help="Stamp size for --radec: pixels, or an angle like 10arcsec.")
@click.option("--mode", type=click.Choice(["trim", "partial", "strict"]), default="trim", show_default=True,
              help="A box over the image edge: trim (the part inside), partial (full size, filled outside), "
                   "strict (an error), as astropy's Cutout2D.")
@click.option("--out", "out", type=click.Path(), default=None,
              help="What to write, by its suffix: a directory (no suffix, or ending in /) for one FITS file per "
                   "stamp, NAME.fits for one multi-extension FITS file, NAME.npz for one NumPy archive.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a contact sheet of the stamps to this PNG (ending in .png).")
@click.option("--overwrite", is_flag=True, help="Replace output files that exist.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Cut on this running Dask scheduler (tcp://host:8786) instead of in this process.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Cut on a local Dask cluster of N worker processes (127.0.0.1, no dashboard).")
def cutout(uri: str, dataset_type: str, data_id: tuple[str, ...], run: str | None, boxes: Path | None,
           radec: Path | None, size: str | None, mode: str, out: str | None, png: Path | None, overwrite: bool,
           scheduler: str | None, workers: int | None) -> None:
    """Cut postage stamps out of one image with a few coalesced range reads (optionally on Dask)."""
    import time

    from objbutler.butler import Butler
    from objbutler.stamps_io import (
        read_boxes_csv,
        read_radec_csv,
        write_contact_sheet,
        write_fits_file,
        write_fits_stamps,
        write_npz,
    )

    if (boxes is None) == (radec is None):
        raise click.UsageError("give exactly one of --boxes and --radec")
    if radec is not None and size is None:
        raise click.UsageError("--radec needs --size")
    if boxes is not None and size is not None:
        raise click.UsageError("--size goes with --radec; the boxes of --boxes carry their own size")
    if scheduler is not None and workers is not None:
        raise click.UsageError("give --scheduler or --workers, not both")
    stamp_size = _parse_size(size)
    output = _stamp_output(out, overwrite) if out is not None else None
    if png is not None:
        if png.suffix.lower() != ".png":
            raise click.BadParameter(f"{str(png)!r} does not end in .png", param_hint="--png")
        _check_output_file(png, "--png", overwrite)
    clean_id = parse_data_id(data_id)
    requests = read_boxes_csv(boxes) if boxes is not None else read_radec_csv(radec)  # type: ignore[arg-type]
    if output is not None and output[0] == "dir":
        _check_stamp_files(output[1], len(requests), overwrite)  # type: ignore[arg-type]
    butler = Butler(uri)
    ref = _find(butler, dataset_type, clean_id, run)
    start = time.perf_counter()
    if scheduler is not None or workers is not None:
        from objbutler.dask import run_cutout_job

        stamps = run_cutout_job(uri, ref, requests, scheduler=scheduler, workers=workers,
                                mode=mode, size=stamp_size)  # type: ignore[arg-type]
    else:
        stamps = butler.get_cutouts(ref, requests, mode=mode, size=stamp_size)  # type: ignore[arg-type]
    click.echo(f"{len(stamps)} stamps in {time.perf_counter() - start:.3f} s")
    if output is not None:
        kind, path = output
        if kind == "npz":
            write_npz(stamps, path)
        elif kind == "fits":
            write_fits_file(stamps, path)
        else:
            path.mkdir(exist_ok=True)
            write_fits_stamps(stamps, path)
        click.echo(f"wrote {path}")
    if png is not None:
        write_contact_sheet(stamps, png, title=f"{dataset_type} {json.dumps(ref.data_id)}")
        click.echo(f"wrote {png}")


def _parse_size(text: str | None) -> Any:
    from astropy import units as u

    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return u.Quantity(text)
    except (TypeError, ValueError):
        raise click.BadParameter(f"cannot read {text!r} as pixels or an angle", param_hint="--size") from None


@main.command(name="cutouts-at")
@click.argument("uri")
@click.argument("dataset_type")
@click.option("--radec", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Catalogue with ra,dec columns in degrees: .csv, .ecsv or .parquet.")
@click.option("--size", required=True, help="Stamp size: pixels, or an angle like 10arcsec.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="A directory (resumable: stamps-*.fits, results.csv), one .fits file, or a .zarr group "
                   "(resumable; stamps, valid, row and results/).")
@click.option("--run", default=None, help="Only images of this run.")
@click.option("--where", "where", multiple=True, metavar="KEY=VALUE", help="Data ID condition (repeatable).")
@click.option("--mode", type=click.Choice(["trim", "partial", "strict"]), default="trim", show_default=True,
              help="A box over the image edge: trim (the part inside), partial (full size, filled outside), "
                   "strict (an error), as astropy's Cutout2D.")
@click.option("--chunk", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Positions per batch (memory holds one batch's stamps).")
@click.option("--no-progress", is_flag=True, help="No progress bar (default: one when stderr is a terminal).")
@click.option("--png", "png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Light curve: a catalogue of one position; its stamps in time order with their dates.")
@click.option("--overwrite", is_flag=True,
              help="A .zarr --out: replace it, even when another command (other catalogue, size, type...) "
                   "wrote it (else refused, exit 4).")
def cutouts_at(uri: str, dataset_type: str, radec: Path, size: str, out: Path, run: str | None,
               where: tuple[str, ...], mode: str, chunk: int, no_progress: bool, png: Path | None,
               overwrite: bool) -> None:
    """Stamps of every image of TYPE at every catalogue position, with a results table."""
    import time

    from tqdm import tqdm

    from objbutler.butler import Butler
    from objbutler.sky.catalog import read_catalog, write_catalog_cutouts

    butler = Butler(uri)
    coords = read_catalog(radec)
    if png is not None and len(coords) != 1:
        raise click.BadParameter(f"--png draws one position's light curve; {radec} has {len(coords)} positions",
                                 param_hint="--png")
    conditions = parse_data_id(where) if where else None
    if out.suffix.lower() == ".zarr":  # its refusals before the progress bar: one error line
        from objbutler.sky.catalog_zarr import check_zarr_output

        check_zarr_output(dataset_type, coords, _parse_size(size), out, run=run, where=conditions,
                          mode=mode, chunk=chunk, overwrite=overwrite)  # type: ignore[arg-type]
    started = time.perf_counter()
    with tqdm(total=len(coords), unit="pos", disable=True if no_progress else None) as bar:  # None: a terminal
        summary = write_catalog_cutouts(butler, dataset_type, coords, _parse_size(size), out, run=run,
                                        where=conditions, mode=mode, chunk=chunk,  # type: ignore[arg-type]
                                        progress=bar.update, overwrite=overwrite)
    click.echo(f"{summary.stamps} stamps at {summary.positions} positions in {time.perf_counter() - started:.2f} s "
               f"({summary.without_image} positions in no image, {summary.skipped} skipped"
               + (f", {summary.chunks_resumed} chunks resumed" if summary.chunks_resumed else "") + ")")
    click.echo(f"wrote {out} (results: {summary.results})")
    if png is not None:
        from objbutler.stamps_io import write_light_curve

        history = butler.cutouts_at(coords[0], _parse_size(size), dataset_type, run, conditions,
                                    mode=mode)[0]  # type: ignore[arg-type]
        position = coords[0]
        write_light_curve(history, png, title=f"{dataset_type} at RA {position.ra.deg:.6f} Dec "
                                              f"{position.dec.deg:.6f}: {len(history)} images")
        click.echo(f"wrote {png}")


@main.command()
@click.argument("uri")
@click.option("--type", "dataset_type", default=None, help="Only datasets of this type.")
@click.option("--jobs", type=click.IntRange(min=1), default=16, show_default=True, help="Headers read at once.")
def reindex(uri: str, dataset_type: str | None, jobs: int) -> None:
    """Record sky footprints for images put before objbutler recorded them (one header read each)."""
    from objbutler.butler import Butler
    from objbutler.sky.reindex import reindex as run_reindex

    report = run_reindex(Butler(uri), dataset_type, jobs=jobs)
    click.echo(f"{report.recorded} of {report.examined} images given a footprint in {report.commits} commit(s); "
               f"{len(report.without_wcs)} without a celestial WCS, {len(report.failed)} unreadable")
    for dataset_id, problem in sorted(report.failed.items())[:20]:
        click.echo(f"  {dataset_id}: {problem}", err=True)


@main.command()
@click.option("--repo", default="./objbutler-demo", show_default=True, type=URI,
              help="Where the demo repository goes.")
@click.option("--stamps", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Number of postage stamps to cut.")
@click.option("--size", default=4096, show_default=True, type=click.IntRange(min=64),
              help="Side of the synthetic PVI in pixels.")
@click.option("--png", default=None, metavar="FILE.png",
              help="Write the contact sheet of the first stamps here [default: <repo>/contact_sheet.png for a "
                   "local repository].")
def demo(repo: str, stamps: int, size: int, png: str | None) -> None:
    """Run the end-to-end demo on an embedded local repository."""
    from objbutler.demo import run_demo

    if png is not None:
        if Path(png).suffix.lower() != ".png":
            raise click.BadParameter(f"{png!r} does not end in .png", param_hint="--png")
        _check_output_file(Path(png), "--png", overwrite=True)
    _refuse_file_as_repository(repo)
    run_demo(repo, n_stamps=stamps, image_size=size, png=png, echo=click.echo)


@main.command()
@click.argument("src", type=URI)
@click.argument("dst", type=URI)
@click.option("--type", "dataset_type", default=None, help="Only datasets of this type.")
@where_option
@run_option
@click.option("--with-inputs", is_flag=True, help="Also copy provenance inputs, recursively within SRC.")
@click.option("--create-bucket", "--create-container", "create_bucket", is_flag=True,
              help="Create DST's S3 bucket (or Swift container) if it does not exist.")
@click.option("--jobs", default=8, show_default=True, type=click.IntRange(min=1), help="Datasets copied at once.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Datasets per registry commit.")
@click.option("--no-progress", is_flag=True, help="No progress bar (default: one when stderr is a terminal).")
def clone(src: str, dst: str, dataset_type: str | None, where: tuple[str, ...], run: str | None,
          with_inputs: bool, create_bucket: bool, jobs: int, batch_size: int, no_progress: bool) -> None:
    """Copy datasets (data and registry entries) from SRC into DST, creating DST if needed.

    Checksums are verified; rerunning an interrupted clone copies only what is missing.
    A selection that matches nothing is an error (exit 3) and leaves DST alone.
    """
    from objbutler.butler import Butler
    from objbutler.clone import clone as run_clone

    conditions = parse_where(where)
    _refuse_file_as_repository(dst)
    source = Butler(src)
    if not source.query(dataset_type, conditions, run):  # unknown types and keys raise here, before DST is touched
        _check_run(source, run)
        raise NotFoundError(f"no dataset of {src} matches --type/--where/--run: nothing to copy, {dst} left alone")
    report = run_clone(source, dst, dataset_type=dataset_type, where=conditions, run=run,
                       with_inputs=with_inputs, progress=False if no_progress else None, jobs=jobs,
                       batch_size=batch_size,
                       destination_options=_bucket_options(dst, create_bucket))
    for ref, reason in report.failed:
        click.echo(f"error: {ref.dataset_type} {json.dumps(ref.data_id)} run={ref.run}: {reason}", err=True)
    click.echo(report.summary())
    if not report.ok:
        click.echo(f"error: {len(report.failed)} of {report.selected} datasets were not copied (listed above); "
                   f"rerun to retry them", err=True)
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("uri")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File holding the bearer token every endpoint but /health then requires.")
def serve(uri: str, host: str, port: int, token_file: Path | None) -> None:
    """Serve cutouts of URI over HTTP: IVOA SODA and DataLink, object histories, a gallery page."""
    try:
        from objbutler.service.app import serve as run_service
    except ImportError as exc:
        raise click.ClickException(f"objbutler serve needs the serve extra (pip install 'objbutler[serve]'): "
                                   f"{exc}") from None
    token = None
    if token_file is not None:
        token = token_file.read_text().strip()
        if not token:
            raise click.BadParameter(f"{token_file} is empty", param_hint="--token-file")
    run_service(uri, host=host, port=port, token=token)


@main.command()
@click.argument("suite", type=click.Choice(["cutouts", "registry", "verify", "sky", "service", "all"]))
@click.option("--target", default="localstack", show_default=True,
              help="localstack, moto, swift, local, an s3:// URI (AWS_* variables) or a directory.")
@click.option("--quick", is_flag=True, help="Short run (under 3 minutes; slow baselines on a few stamps, labelled ~).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the rows here.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write README.md and PNG plots into this directory.")
@click.option("--image-size", type=click.IntRange(64), default=None, help="Side of the cutouts image [default: 4096].")
@click.option("--smoke", is_flag=True, hidden=True, help="Tiny registry suite (for the unit test).")
@click.option("--profile", "profiles", default="loopback", show_default=True, metavar="NAME[,NAME...]",
              help="Network profiles, side by side: loopback (the server as it is), cloud-20ms (20 ms per "
                   "request, 100 MB/s per connection), cloud-<N>ms.")
@click.option("--writers", default=None, metavar="N[,N...]",
              help="Writer counts of the registry suite [default: 1,4,16,64; --quick: 1,4].")
@click.option("--protocols", default=None, metavar="NAME[,NAME...]",
              help="Commit protocols of the registry suite's writer rows: sequenced, claimed, default (what a "
                   "new repository gets) [default: sequenced,claimed].")
@click.option("--puts-per-writer", type=click.IntRange(1), default=None,
              help="Puts each writer makes in the registry suite [default: 10; --quick: 4].")
@click.option("--put-many", "put_many", type=click.IntRange(1), default=None,
              help="Datasets of the registry suite's put_many row [default: 10000; --quick: 200].")
@click.option("--writers-only", is_flag=True,
              help="Registry suite: only the writer and put_many rows (no manifest or daf_butler rows).")
def bench(suite: str, target: str, quick: bool, json_path: Path | None, report_dir: Path | None,
          image_size: int | None, smoke: bool, profiles: str, writers: str | None, protocols: str | None,
          puts_per_writer: int | None, put_many: int | None, writers_only: bool) -> None:
    """Benchmark objbutler against what users do today (needs the harness: a clone's benchmarks/)."""
    try:
        counts = tuple(int(part) for part in writers.split(",") if part.strip()) if writers else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--writers") from None
    if counts is not None and (not counts or min(counts) < 1):
        raise click.BadParameter("writer counts must be >= 1", param_hint="--writers")
    chosen = tuple(part.strip() for part in protocols.split(",") if part.strip()) if protocols else None
    if chosen is not None and (not chosen or not set(chosen) <= {"sequenced", "claimed", "default"}):
        raise click.BadParameter("protocols are sequenced, claimed and/or default", param_hint="--protocols")
    overrides = {name: value for name, value in (("protocols", chosen), ("puts_per_writer", puts_per_writer),
                                                 ("put_many", put_many)) if value is not None}
    if writers_only:
        overrides.update(manifest_sizes=(), daf_butler=False, install_daf_butler=False)
    run_benchmarks = bench_harness()
    extra = {"registry_overrides": overrides} if overrides else {}
    sys.exit(run_benchmarks(suite, target, quick=quick, json_path=json_path, report_dir=report_dir,
                            image_size=image_size, smoke=smoke, profiles=profiles, writers=counts, **extra))


BENCH_ENTRY_POINTS = "objbutler.bench"
"""The entry-point group where the benchmark harness (``objbutler-bench``, benchmarks/) registers its ``harness``."""

BENCH_INSTALL = "python3 -m pip install -e '.[bench]' -e ./localstack -e ./benchmarks"
"""How to install the harness from a clone of the repository."""


def bench_harness() -> Any:
    """The benchmark harness's entry point (``benchmarks.run.main``), found through its distribution's metadata.

    Returns
    -------
    callable
        ``main(suite, target, *, quick, json_path, report_dir, image_size, smoke) -> int``.

    Raises
    ------
    click.ClickException
        If no installed distribution registers a ``harness`` in :data:`BENCH_ENTRY_POINTS`: one line
        that says how to install it.
    """
    from importlib.metadata import entry_points

    found = entry_points(group=BENCH_ENTRY_POINTS, name="harness")
    if not found:
        raise click.ClickException(f"objbutler bench needs the benchmark harness, which is not installed; "
                                   f"from a clone of objbutler: {BENCH_INSTALL}")
    return next(iter(found)).load()


if __name__ == "__main__":
    main()


def run() -> None:
    """The ``objbutler`` console command: :func:`main`, then leave without tearing the interpreter down.

    The command's work, output and exit status are complete when :func:`main` returns or exits; the
    teardown after it can only go wrong: pyarrow's native threads abort the process there at random
    (apache/arrow#34314, ``terminate called without an active exception``, exit -6; measured here:
    28 of 40 ``objbutler query`` runs on a repository with a checkpoint, with pyarrow 26), which would
    turn a command that succeeded into a failure for the shell that ran it.
    """
    code: int = 0
    try:
        main()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            code = 1
        else:
            code = exc.code or 0
    finally:
        if "objbutler.registry.registry" in sys.modules:  # only a command that opened a registry has folds
            from objbutler.registry import finish_folds

            finish_folds()  # a fold in flight holds a lease: finish it (the interpreter would have waited too)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    os._exit(code)
