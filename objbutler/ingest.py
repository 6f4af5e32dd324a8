"""Ingest: register existing FITS files and Zarr arrays (local, in S3 or in Swift) as datasets.

:func:`ingest_objects` (``objbutler ingest``) takes sources as they are:

* a local path or glob (``raw/*.fits``), a ``file://`` URI;
* ``s3://bucket/prefix/*.fits`` or ``swift://container/prefix/*.fits``: a glob on an object store
  is expanded by listing the prefix before its first wildcard (``*`` and ``?`` stay within one
  ``/``-separated segment, ``**`` crosses them);
* a Zarr v3 array, an image group objbutler wrote, or a plain group (then every array in it): a
  prefix holding ``zarr.json``, named directly or matched by a glob (``s3://b/arrays/*.zarr``).

Each file is one dataset; its data ID comes from fixed items and from header cards (Zarr: from
attributes, or the ``fits_header`` cards objbutler writes, or the enclosing groups' attributes).

Transfers
    ``copy`` (default): the bytes are copied as they are (never re-encoded) into the repository's
    ``data/`` layout and committed; atomic like :meth:`Butler.put <objbutler.butler.Butler.put>`:
    if the commit fails the copy is deleted, unless the outcome is unknown
    (:class:`~objbutler.errors.CommitOutcomeUnknownError`), when it is kept for ``fsck`` to tell.

    ``direct``: the object is registered where it is, nothing is copied (daf_butler's "direct").
    The record's ``key`` is the object's absolute URI and its ``direct`` field the etag the store
    gave (see docs/registry.md); size and SHA-256 checksum come from reading the object once, as a
    stream. The object must be on the repository's endpoint (same scheme, any bucket there) and
    outside the repository; it is read later with the repository's own options and credentials.
    objbutler never writes or deletes it: ``vacuum`` leaves it alone, and ``fsck`` reports it if it
    is replaced or deleted behind objbutler's back.

Stores for sources on the repository's scheme are the repository's endpoint with its options
(another bucket is fine); ``source_options`` replaces them (another endpoint, other keys), and
sources on another scheme use ``source_options`` or the environment alone: the repository's
credentials never go to another endpoint.

:func:`ingest_files` is the older path of ``objbutler put``: it *re-encodes* local FITS files
through :meth:`Butler.put <objbutler.butler.Butler.put>` (so it can convert them to Zarr).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from objbutler.butler import EXTENSIONS, Butler
from objbutler.errors import (
    CommitOutcomeUnknownError,
    ConflictError,
    FormatError,
    InvalidKeyError,
    NotFoundError,
    NotSupportedError,
    ObjButlerError,
)
from objbutler.formats.dispatch import delete_dataset
from objbutler.formats.fits_headers import (
    HduInfo,
    HduSelector,
    HeaderReader,
    check_declared_sizes,
    hdu_layout,
    locate,
)
from objbutler.formats.zarr_header import ZARR_JSON
from objbutler.formats.zarr_write import write_zarr_objects, zarr_checksum, zarr_checksum_of_digests
from objbutler.integrity import etag_digest, object_digests, relative_listing, stream_sha256
from objbutler.provenance import current_activity, provenance_record
from objbutler.ranges import CostModel
from objbutler.registry.commits import utc_now
from objbutler.registry.records import (
    DatasetRef,
    DatasetType,
    data_id_slug,
    dimension_kinds,
    validate_data_id,
    validate_dataset_type_name,
    validate_run,
)
from objbutler.stores import Store, budget_of, run_concurrently
from objbutler.stores.locations import (
    Location,
    base_store,
    endpoint_of,
    open_source_store,
    parse_location,
    scheme_of,
)

__all__ = [
    "TRANSFERS",
    "SourceObject",
    "expand_sources",
    "ingest_files",
    "ingest_objects",
    "put_files",
    "write_local",
]

TRANSFERS = ("copy", "direct")
_MAGIC = re.compile(r"[*?\[]")


def _select_hdu(hdul: fits.HDUList, hdu: str | None) -> Any:
    if hdu is None:
        return hdul
    try:
        return hdul[int(hdu)]
    except ValueError:
        return hdul[hdu]


def _data_id_for(header: fits.Header, fixed: Mapping[str, int | str], header_keys: Mapping[str, str],
                 path: Path) -> dict[str, int | str]:
    data_id = dict(fixed)
    for key, card in header_keys.items():
        if card not in header:
            raise InvalidKeyError(f"{path}: header has no card {card!r} for data ID key {key!r}")
        value = header[card]
        data_id[key] = int(value) if isinstance(value, int | float) and float(value).is_integer() else value
    return data_id


def ingest_files(
    butler: Butler,
    dataset_type: str,
    paths: Sequence[Path],
    data_id: Mapping[str, int | str],
    header_keys: Mapping[str, str],
    run: str,
    fmt: str | None = None,
    hdu: str | None = None,
    progress: bool | None = False,
) -> tuple[list[DatasetRef], list[tuple[Path, Exception]]]:
    """Put each FITS file as one dataset; a failure of one file does not stop the others.

    Files are committed in groups of :data:`FILES_PER_COMMIT` (one registry
    commit per group, see :func:`put_files`): an interrupted ingest has
    committed whole groups; rerun it and the files already in are reported
    as failures (their data ID is taken) while the rest go in.

    Parameters
    ----------
    butler : Butler
        The repository.
    dataset_type : str
        Dataset type of every file.
    paths : sequence of Path
        FITS files.
    data_id : mapping
        Data ID items common to all files.
    header_keys : mapping
        Data ID key -> header card to read it from (per file).
    run : str
        Run name.
    fmt : str, optional
        Storage format (repository default otherwise).
    hdu : str, optional
        HDU index or name (default: the first with image data).
    progress : bool or None
        A progress bar (tqdm) on stderr: always, never, or (None) when stderr is a terminal.

    Returns
    -------
    refs, failures
        Committed refs and ``(path, error)`` for files that failed.
    """
    from tqdm import tqdm

    refs: list[DatasetRef] = []
    failures: list[tuple[Path, Exception]] = []
    with tqdm(total=len(paths), disable=None if progress is None else not progress, unit="file",
              desc="ingest") as bar:
        for start in range(0, len(paths), FILES_PER_COMMIT):
            group = paths[start:start + FILES_PER_COMMIT]
            outcomes = put_files(butler, dataset_type, [(path, data_id) for path in group], header_keys, run,
                                 fmt, hdu)
            for path, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, DatasetRef):
                    refs.append(outcome)
                else:
                    failures.append((path, outcome))
            bar.update(len(group))
    return refs, failures


FILES_PER_COMMIT = 256
"""Files :func:`ingest_files` opens and commits together (one registry commit; bounded open files)."""


def put_files(
    butler: Butler,
    dataset_type: str,
    entries: Sequence[tuple[Path, Mapping[str, int | str]]],
    header_keys: Mapping[str, str],
    run: str,
    fmt: str | None = None,
    hdu: str | None = None,
) -> list[DatasetRef | Exception]:
    """Put FITS files with one group commit (:meth:`Butler.put_many`); per file its ref or its error.

    Parameters
    ----------
    butler, dataset_type
        As :func:`ingest_files`.
    entries : sequence of (Path, mapping)
        Each file and the data ID items it has besides those read from its header.
    header_keys, run, fmt, hdu
        As :func:`ingest_files`.

    Returns
    -------
    list
        Per file, in order: its committed ``DatasetRef`` or the exception that
        stopped it (a file that cannot be read, a data ID taken, ...); the
        other files are committed all the same.
    """
    outcomes: list[DatasetRef | Exception | None] = [None] * len(entries)
    items: list[tuple[Any, str, dict[str, int | str]]] = []
    positions: list[int] = []
    with contextlib.ExitStack() as files:
        for index, (path, data_id) in enumerate(entries):
            try:
                hdul = files.enter_context(fits.open(path, memmap=False))
                selected = _select_hdu(hdul, hdu)
                header = selected.header if not isinstance(selected, fits.HDUList) else hdul[0].header
                items.append((selected, dataset_type, _data_id_for(header, data_id, header_keys, path)))
                positions.append(index)
            except (ObjButlerError, OSError, KeyError, IndexError, TypeError) as exc:
                outcomes[index] = exc
        if items:
            for index, outcome in zip(positions, butler.put_many(items, run, format=fmt, errors="return"),
                                      strict=True):
                outcomes[index] = outcome
    return [outcome if outcome is not None else RuntimeError("not put") for outcome in outcomes]


def write_local(obj: Any, path: Path) -> None:
    """Write a dataset as ``get`` returned it: images as FITS, dicts as JSON, tables as ECSV or Parquet."""
    from astropy.nddata import NDData
    from astropy.table import Table

    if isinstance(obj, NDData):
        header = fits.Header(obj.meta) if not isinstance(obj.meta, fits.Header) else obj.meta
        fits.PrimaryHDU(obj.data, header=header).writeto(path, overwrite=True)
    elif isinstance(obj, dict):
        path.write_text(json.dumps(obj, indent=2))
    elif isinstance(obj, Table):
        obj.write(path, format="parquet" if path.suffix == ".parquet" else "ascii.ecsv", overwrite=True)
    else:
        raise FormatError(f"cannot write a {type(obj).__name__} to a local file")


# -- sources --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SourceObject:
    """One FITS object or Zarr array that an ingest source expanded to.

    Parameters
    ----------
    location : Location
        Where it is (a Zarr array: its prefix).
    store : Store
        A store rooted at its bucket (a local file: at ``/``), so that ``location.key`` is its key.
    zarr : bool
        A Zarr array (or an image group objbutler wrote), not a single object.
    attributes : tuple of dict
        For an array found inside a Zarr group that was named: the attributes of the groups around
        it, innermost first (data ID items may come from them).
    """

    location: Location
    store: Store
    zarr: bool = False
    attributes: tuple[dict[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """How messages name it: its URI, or its path for a local file."""
        return str(self.location)


def expand_sources(
    butler: Butler,
    sources: Iterable[str | os.PathLike[str]],
    *,
    source_options: Mapping[str, Any] | None = None,
) -> tuple[list[SourceObject], list[tuple[str, Exception]]]:
    """Turn paths, URIs and globs into the FITS objects and Zarr arrays they name (listing object stores).

    Parameters
    ----------
    butler : Butler
        The repository (its store decides how sources on its scheme are opened).
    sources : iterable of str or PathLike
        Local paths or globs, ``file://``, ``s3://`` or ``swift://`` URIs or globs, Zarr prefixes.
    source_options : mapping, optional
        Store options for sources on object stores, instead of the repository's (see
        :func:`~objbutler.stores.locations.open_source_store`).

    Returns
    -------
    sources, failures
        Each object or array once, in the order found; ``(source, error)`` for a source that
        matched nothing or could not be listed (a missing bucket, say).
    """
    stores: dict[tuple[str, str], Store] = {}
    found: dict[Location, SourceObject] = {}
    failures: list[tuple[str, Exception]] = []
    for source in sources:
        text = os.fspath(source)
        try:
            location = parse_location(text)
            key = (location.scheme, location.container)
            if key not in stores:
                stores[key] = open_source_store(location, butler.store, source_options)
            for item in _expand(location, stores[key]):
                found.setdefault(item.location, item)
        except (ObjButlerError, OSError) as exc:
            failures.append((text, exc))
    return list(found.values()), failures


def _expand(location: Location, store: Store) -> list[SourceObject]:
    if not _MAGIC.search(location.key):
        return _expand_one(location, store)
    if location.scheme == "file" and os.path.lexists("/" + location.key.lstrip("/")):
        return _expand_one(location, store)  # a file named outright (``r[1].fits``), not a pattern
    if location.scheme == "file":
        return _expand_local_glob(location, store)
    return _expand_glob(location, store)


def _expand_one(location: Location, store: Store) -> list[SourceObject]:
    """A source without wildcards: an object, or a prefix holding zarr.json; else say why not."""
    key = location.key
    if key and not key.endswith("/"):
        try:
            store.head(key)
            return [SourceObject(location, store)]
        except NotFoundError:
            pass
    base = key.rstrip("/")
    try:
        return _zarr_sources(location.child(base), store)
    except NotFoundError:
        pass
    if location.scheme == "file":
        if os.path.isdir("/" + base):
            raise NotFoundError(f"{location} is a directory without {ZARR_JSON}: give the files, or a glob such as "
                                f"{os.path.join(str(location), '*.fits')}")
        raise NotFoundError(f"no such file: {location}")
    first = next(iter(store.list(base + "/" if base else "")), None)  # a missing bucket raises, naming it
    if first is not None:
        raise NotFoundError(f"{location} is a prefix of objects without {ZARR_JSON}: give a glob such as "
                            f"{location.child(base + '/*.fits')}")
    raise NotFoundError(f"no object or Zarr array at {location}")


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regular expression: ``*`` and ``?`` within one ``/``-segment, ``**`` across, ``[...]`` classes."""
    out, index = [], 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
            continue
        if pattern.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        end = pattern.find("]", index + 2) if char == "[" else -1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif end > 0:
            body = pattern[index + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            index = end + 1
            continue
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out), re.DOTALL)


def _under_node(key: str, nodes: set[str]) -> bool:
    """True when ``key`` lies inside one of the Zarr prefixes ``nodes``."""
    parts = key.split("/")
    return any("/".join(parts[:i]) in nodes for i in range(1, len(parts)))


def _expand_glob(location: Location, store: Store) -> list[SourceObject]:
    """A glob on an object store: one listing of the prefix before its first wildcard."""
    match = _MAGIC.search(location.key)
    assert match is not None
    static = location.key[: match.start()]
    pattern = _glob_regex(location.key)
    metas = list(store.list(static))  # a missing bucket or container raises here, naming it
    suffix = "/" + ZARR_JSON
    nodes = {meta.key[: -len(suffix)] for meta in metas if meta.key.endswith(suffix)}
    out: list[SourceObject] = []
    for meta in metas:
        if pattern.fullmatch(meta.key) and not _under_node(meta.key, nodes) and not meta.key.endswith(suffix):
            out.append(SourceObject(location.child(meta.key), store))
    for node in sorted(nodes):
        if pattern.fullmatch(node):
            out.extend(_zarr_sources(location.child(node), store))
    if not out:
        raise NotFoundError(f"{location} matched nothing ({len(metas)} object(s) listed under "
                            f"{str(location.child(static))!r})")
    return out


def _expand_local_glob(location: Location, store: Store) -> list[SourceObject]:
    out: list[SourceObject] = []
    for path in sorted(glob.glob("/" + location.key, recursive=True)):
        key = os.path.abspath(path).lstrip("/")
        if os.path.isfile(os.path.join(path, ZARR_JSON)):
            out.extend(_zarr_sources(location.child(key), store))
        elif os.path.isfile(path) and os.path.basename(path) != ZARR_JSON and not _in_local_zarr(path):
            out.append(SourceObject(location.child(key), store))
    if not out:
        raise NotFoundError(f"{location} matched no file or Zarr array")
    return out


def _in_local_zarr(path: str) -> bool:
    parent = os.path.dirname(os.path.abspath(path))
    while parent not in ("/", ""):
        if os.path.isfile(os.path.join(parent, ZARR_JSON)):
            return True
        parent = os.path.dirname(parent)
    return False


def _zarr_node(raw: bytes, where: str) -> tuple[str, dict[str, Any]]:
    """``("array" | "image" | "group", attributes)`` of a ``zarr.json``: an array, an objbutler image group, a group."""
    try:
        document = json.loads(raw)
    except ValueError:
        raise FormatError(f"{where}/{ZARR_JSON} is not JSON") from None
    if not isinstance(document, dict) or document.get("zarr_format") != 3:
        raise FormatError(f"{where}/{ZARR_JSON} is not Zarr v3 metadata (objbutler reads Zarr format 3)")
    attributes = document.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise FormatError(f"{where}/{ZARR_JSON} has attributes that are not a JSON object")
    node_type = document.get("node_type")
    if node_type == "array":
        return "array", attributes
    if node_type == "group":
        marker = attributes.get("objbutler")
        return ("image" if isinstance(marker, dict) and "members" in marker else "group"), attributes
    raise FormatError(f"{where}/{ZARR_JSON} has node_type {node_type!r}, not an array or a group")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


def _zarr_sources(location: Location, store: Store) -> list[SourceObject]:
    """The array (or image group) at a prefix, or every array in the plain group there (NotFoundError: none)."""
    kind, attributes = _zarr_node(store.get(_join(location.key, ZARR_JSON)), str(location))
    if kind != "group":
        return [SourceObject(location, store, zarr=True)]
    suffix = "/" + ZARR_JSON
    nodes = sorted(meta.key[: -len(suffix)] for meta in store.list(_join(location.key, ""))
                   if meta.key.endswith(suffix) and meta.key[: -len(suffix)] != location.key)
    kinds = {location.key: (kind, attributes)}
    for node, raw in zip(nodes, store.get_many([_join(node, ZARR_JSON) for node in nodes]), strict=True):
        kinds[node] = _zarr_node(raw, str(location.child(node)))
    out: list[SourceObject] = []
    taken: list[str] = []
    for node in nodes:
        if kinds[node][0] == "group" or any(node.startswith(t + "/") for t in taken):
            continue
        parts = node.split("/")
        around = ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
        chain = tuple(kinds[p][1] for p in around if p in kinds and kinds[p][0] == "group")
        if not location.key:
            chain += (attributes,)
        out.append(SourceObject(location.child(node), store, zarr=True, attributes=chain))
        taken.append(node)
    if not out:
        raise FormatError(f"the Zarr group {location} holds no array")
    return out


# -- one object ----------------------------------------------------------------------------------------


class _Bytes:
    """The one store method :class:`HeaderReader` needs, over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_ranges(self, key: str, ranges: Sequence[Any]) -> list[bytes | memoryview]:
        view = memoryview(self.data)
        return [view[start:stop] for start, stop in ((int(r[0]), int(r[1])) if isinstance(r, tuple)
                                                     else (r.start, r.stop) for r in ranges)]


class _Objects:
    """``get`` over the objects of a Zarr array in memory (relative keys), for reading its metadata."""

    def __init__(self, objects: Mapping[str, bytes]) -> None:
        self.objects = objects

    def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise NotFoundError(f"no {key} in the array") from None


@dataclasses.dataclass(slots=True)
class _Prepared:
    """A source whose ref is ready to commit (its copy, if any, written)."""

    source: SourceObject
    ref: DatasetRef
    written: bool


@dataclasses.dataclass(slots=True)
class _Job:
    """What every source of one ingest shares."""

    butler: Butler
    dataset_type: str
    run: str
    fixed: dict[str, Any]
    header_keys: dict[str, str]
    hdu: HduSelector
    transfer: str
    provenance: dict[str, Any] | None
    format: str | None = None

    def data_id(self, lookup: Any, name: str, what: str) -> dict[str, int | str]:
        """Fixed items plus one per header key, found with ``lookup(card) -> (found, value)``."""
        data_id: dict[str, Any] = dict(self.fixed)
        for key, card in self.header_keys.items():
            found, value = lookup(card)
            if not found:
                raise InvalidKeyError(f"{name}: no {what} {card!r} for data ID key {key!r}")
            data_id[key] = _id_value(value, key, card, name)
        return validate_data_id(data_id)

    def check(self, data_id: dict[str, int | str], fmt: str) -> None:
        """ConflictError now when the registry already holds the data ID (or the type disagrees)."""
        stub = DatasetRef("", self.dataset_type, data_id, self.run, fmt, "", 0, "", "")
        self.butler.registry.check([DatasetType(self.dataset_type, tuple(data_id), "image")],
                                   dimension_kinds(data_id), [stub])

    def ref(self, data_id: dict[str, int | str], fmt: str, key: str | None, size: int, checksum: str,
            layout: dict[str, Any] | None = None, direct: dict[str, Any] | None = None,
            ref_id: str | None = None, sky: dict[str, Any] | None = None) -> DatasetRef:
        ref_id = ref_id or str(uuid.uuid4())
        if key is None:
            key = f"data/{self.run}/{self.dataset_type}/{data_id_slug(data_id)}-{ref_id[:8]}{EXTENSIONS[fmt]}"
        return DatasetRef(id=ref_id, dataset_type=self.dataset_type, data_id=data_id, run=self.run, format=fmt,
                          key=key, size=size, checksum=checksum, created=utc_now(), provenance=self.provenance,
                          repository=self.butler.uri, layout=layout, direct=direct, sky=sky)


def _id_value(value: Any, key: str, card: str, name: str) -> int | str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return value
    raise InvalidKeyError(f"{name}: {card} = {value!r} cannot be the data ID value of {key!r} (an int or a string)")


def _inspect_fits(source: Any, key: str, name: str, hdu: HduSelector, size: int | None) -> tuple[HduInfo, Any]:
    """The chosen image HDU of a FITS object, and a card lookup over its header (then the primary's)."""
    reader = HeaderReader(source, key, CostModel.for_store(source))
    try:
        primary = reader.header_at(0, 0)
    except FormatError:
        start = bytes(reader.read(0, 16))
        if start[:2] == b"\x1f\x8b":
            raise FormatError(f"{name} is gzip-compressed, not plain FITS (decompress it first)") from None
        raise FormatError(f"{name} is not a FITS file (it starts with {start!r}, not b'SIMPLE  =')") from None
    info = locate(reader, hdu)
    if not info.has_data:
        raise FormatError(f"HDU {info.index} of {name} holds no image data")
    check_declared_sizes(info, size, name, "tiles")
    if info.kind == "compressed":
        from objbutler.formats.fits_tiles import image_header

        header = image_header(info.header)
    else:
        header = info.header
    headers = [header] + ([primary.header] if primary is not None and info.index else [])

    def lookup(card: str) -> tuple[bool, Any]:
        for candidate in headers:
            if card in candidate:
                return True, candidate[card]
        return False, None

    return info, lookup


def _zarr_lookup(source: SourceObject, own: Mapping[str, Any], image: Mapping[str, Any]) -> Any:
    """Find a data ID item in the array's attributes, its ``fits_header`` cards, then the enclosing groups'."""
    chain = [image, own, *source.attributes]

    def lookup(card: str) -> tuple[bool, Any]:
        for attributes in chain:
            if card in attributes:
                return True, attributes[card]
            cards = attributes.get("fits_header")
            if isinstance(cards, list):
                for entry in cards:
                    if isinstance(entry, list) and entry and entry[0] == card:
                        return True, entry[1] if len(entry) > 1 else None
        return False, None

    return lookup


def _zarr_attributes(getter: Any, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The node's own attributes and the image array's, after checking that objbutler can read it."""
    from objbutler.formats.zarr_array import zarr_image_attributes

    own = _zarr_node(getter.get(ZARR_JSON), name)[1]
    return own, zarr_image_attributes(getter, "")


class _Prefixed:
    """``get`` relative to a prefix of a store."""

    def __init__(self, store: Store, prefix: str) -> None:
        self.store, self.prefix = store, prefix

    def get(self, key: str) -> bytes:
        return self.store.get(_join(self.prefix, key))


def _prepare(job: _Job, source: SourceObject) -> _Prepared:
    """Inspect one source, check its data ID, and (copy) write its bytes into the repository."""
    actual = "zarr" if source.zarr else "fits"
    if job.format is not None and job.format != actual:
        raise FormatError(f"{source.name} is {'a Zarr array' if source.zarr else 'a single object (FITS)'}, "
                          f"not {job.format}: ingest keeps data as it is (objbutler put converts local FITS files)")
    if job.transfer == "direct":
        _check_outside(job.butler, source)
    return _prepare_zarr(job, source) if source.zarr else _prepare_fits(job, source)


def _prepare_fits(job: _Job, source: SourceObject) -> _Prepared:
    store, key, name = source.store, source.location.key, source.name
    meta = store.head(key)
    info, lookup = _inspect_fits(store, key, name, job.hdu, meta.size)
    data_id = job.data_id(lookup, name, "header card")
    job.check(data_id, "fits")  # before reading it all
    if job.transfer == "direct":
        checksum = stream_sha256(store, key, meta.size, name)
        after = store.head(key)
        if (after.size, after.etag) != (meta.size, meta.etag):
            raise FormatError(f"{name} was replaced while being read; ingest it again")
        ref = job.ref(data_id, "fits", source.location.uri, meta.size, f"sha256:{checksum}",
                      layout={"hdu": info.index}, direct={"etag": meta.etag}, sky=_fits_sky(info))
        return _Prepared(source, ref, written=False)
    data = store.get(key)
    info, lookup = _inspect_fits(_Bytes(data), key, name, job.hdu, len(data))  # what is copied decides
    copied_id = job.data_id(lookup, name, "header card")
    if copied_id != data_id:
        job.check(copied_id, "fits")
    ref = job.ref(copied_id, "fits", None, len(data), f"sha256:{hashlib.sha256(data).hexdigest()}",
                  layout=hdu_layout(info) or {"hdu": info.index}, sky=_fits_sky(info))
    try:
        job.butler.store.put(ref.key, data)
    except BaseException:
        with contextlib.suppress(Exception):
            job.butler.store.delete(ref.key)
        raise
    return _Prepared(source, ref, written=True)


def _fits_sky(info: HduInfo) -> dict[str, Any] | None:
    """The sky record (footprint, WCS, time, band) of the HDU being ingested, from its header."""
    from objbutler.formats.fits_tiles import image_header
    from objbutler.sky.footprint import sky_record_from_header

    header = image_header(info.header) if info.kind == "compressed" else info.header
    return sky_record_from_header(header, tuple(info.image_shape), relax=True) if info.has_data else None


def _zarr_sky(source: SourceObject, ref: DatasetRef) -> dict[str, Any] | None:
    """The sky record of a Zarr array being ingested, from its attributes (one small read)."""
    from objbutler.sky.reindex import read_sky_record

    try:
        return read_sky_record(source.store, dataclasses.replace(ref, key=source.location.key))
    except ObjButlerError:
        return None


def _prepare_zarr(job: _Job, source: SourceObject) -> _Prepared:
    store, prefix, name = source.store, source.location.key, source.name
    if job.hdu not in (None, 0, "PRIMARY"):
        raise NotSupportedError(f"hdu={job.hdu!r} picks an HDU of a FITS file; {name} is a Zarr array")
    listed = relative_listing(store.list(_join(prefix, "")), prefix)
    if ZARR_JSON not in listed:
        raise NotFoundError(f"{name} has no {ZARR_JSON}")
    own, image = _zarr_attributes(_Prefixed(store, prefix), name)
    data_id = job.data_id(_zarr_lookup(source, own, image), name, "attribute")
    job.check(data_id, "zarr")
    if job.transfer == "direct":
        digests = object_digests(store, listed, name)
        again = relative_listing(store.list(_join(prefix, "")), prefix)
        if {k: (m.size, m.etag) for k, m in again.items()} != {k: (m.size, m.etag) for k, m in listed.items()}:
            raise FormatError(f"{name} changed while being read; ingest it again")
        etag = etag_digest({key: meta.etag for key, meta in listed.items()})
        ref = job.ref(data_id, "zarr", source.location.uri, sum(m.size for m in listed.values()),
                      f"sha256:{zarr_checksum_of_digests(digests)}", direct={"etag": etag})
        return _Prepared(source, dataclasses.replace(ref, sky=_zarr_sky(source, ref)), written=False)
    keys = sorted(listed)
    objects = dict(zip(keys, store.get_many([listed[key].key for key in keys]), strict=True))
    own, image = _zarr_attributes(_Objects(objects), name)  # what is copied decides
    copied_id = job.data_id(_zarr_lookup(source, own, image), name, "attribute")
    if copied_id != data_id:
        job.check(copied_id, "zarr")
    ref = job.ref(copied_id, "zarr", None, sum(len(data) for data in objects.values()),
                  f"sha256:{zarr_checksum(objects)}")
    ref = dataclasses.replace(ref, sky=_zarr_sky(source, ref))
    write_zarr_objects(job.butler.store, ref.key, objects)  # deletes what it wrote if it fails
    return _Prepared(source, ref, written=True)


# -- direct: where the data may be -----------------------------------------------------------------------


def _check_direct_sources(butler: Butler, sources: Sequence[str | os.PathLike[str]],
                          source_options: Mapping[str, Any] | None) -> None:
    """Refuse, before anything is read, a direct ingest from another scheme or endpoint than the repository's."""
    repository = base_store(butler.store)
    scheme = scheme_of(repository)
    here = endpoint_of(repository)
    for source in sources:
        text = os.fspath(source)
        location = parse_location(text)
        problem = None
        if location.scheme != scheme:
            problem = f"it is on {location.scheme}://"
        elif source_options is not None and location.scheme != "file":
            there = endpoint_of(open_source_store(location, butler.store, source_options))
            if there != here:
                problem = f"the source options open it on {there}"
        if problem:
            raise NotSupportedError(
                f"transfer='direct' registers data where it is, so it must be on the repository's endpoint "
                f"({scheme}://, {here}); {text}: {problem}. Ingest it with transfer='copy' instead")


def _check_outside(butler: Butler, source: SourceObject) -> None:
    """Refuse to register in place an object inside the repository: deleting the repository would delete it."""
    root = parse_location(butler.store.uri)
    location = source.location
    if (location.scheme, location.container) != (root.scheme, root.container):
        return
    key = location.key
    if root.key:
        inside = key == root.key or key.startswith(root.key + "/")
    else:
        inside = key == "objbutler.json" or key.startswith(("data/", "manifest/"))
    if inside:
        raise NotSupportedError(f"{source.name} is inside the repository {butler.uri}, which owns and may delete "
                                "what it holds: ingest it with transfer='copy', or keep it outside the repository")


# -- the ingest --------------------------------------------------------------------------------------


def _hdu_selector(hdu: int | str | None) -> HduSelector:
    if hdu is None or (isinstance(hdu, int) and not isinstance(hdu, bool)):
        return hdu
    if isinstance(hdu, str) and hdu.strip():
        text = hdu.strip()
        return int(text) if text.isdigit() else text
    raise InvalidKeyError(f"hdu must be an HDU index or EXTNAME, got {hdu!r}")


def ingest_objects(
    butler: Butler,
    dataset_type: str,
    sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    run: str,
    data_id: Mapping[str, int | str] | None = None,
    header_keys: Mapping[str, str] | None = None,
    transfer: str = "copy",
    hdu: int | str | None = None,
    format: str | None = None,
    progress: bool | None = None,
    source_options: Mapping[str, Any] | None = None,
    jobs: int = 4,
    batch_size: int = 32,
) -> tuple[list[DatasetRef], list[tuple[str, Exception]]]:
    """Register existing FITS files and Zarr arrays (local, S3, Swift) as datasets, as they are.

    See the module docstring for sources and transfers. Sources are processed ``jobs`` at a time
    and committed ``batch_size`` at a time; a source that fails (not FITS, no such header card,
    its data ID taken, ...) is reported and does not stop the others.

    Parameters
    ----------
    butler : Butler
        The repository.
    dataset_type : str
        Dataset type of every source.
    sources : str, PathLike, or iterable of them
        Paths, globs, ``file://``/``s3://``/``swift://`` URIs or globs, Zarr prefixes.
    run : str
        Run name.
    data_id : mapping, optional
        Data ID items common to every source.
    header_keys : mapping, optional
        Data ID key -> FITS header card to read it from (the chosen HDU's header, then the
        primary's); for Zarr: the attribute (or ``fits_header`` card, or enclosing group's attribute).
    transfer : {"copy", "direct"}
        Copy the bytes into the repository, or register the data where it is.
    hdu : int or str, optional
        FITS: the HDU that is the dataset (index or EXTNAME); by default the first image with data.
        The whole file is kept; ``get`` and ``get_cutouts`` read this HDU unless told otherwise.
    format : {"fits", "zarr"}, optional
        Only sources in this format; any other fails (ingest never converts).
    progress : bool, optional
        Show a progress bar (tqdm) on stderr; default: when stderr is a terminal.
    source_options : mapping, optional
        Store options for sources on object stores, instead of the repository's.
    jobs : int
        Sources processed at once.
    batch_size : int
        Sources per registry commit.

    Returns
    -------
    refs, failures
        The committed refs, in source order, and ``(source, error)`` for every source that failed.

    Raises
    ------
    NotSupportedError
        ``transfer="direct"`` with a source on another scheme or endpoint than the repository
        (raised before anything is read), or an unknown transfer.
    InvalidKeyError
        A bad dataset type name, run, data ID or ``hdu``.
    """
    from tqdm import tqdm

    if transfer not in TRANSFERS:
        raise NotSupportedError(f"unknown transfer {transfer!r}; use one of {', '.join(TRANSFERS)}")
    if jobs < 1 or batch_size < 1:
        raise ValueError("jobs and batch_size must be >= 1")
    dataset_type = validate_dataset_type_name(dataset_type)
    run = validate_run(run)
    fixed = validate_data_id(dict(data_id or {}))
    keys = dict(header_keys or {})
    validate_data_id(dict.fromkeys(keys, 0))
    listed = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
    if transfer == "direct":
        _check_direct_sources(butler, listed, source_options)
    activity = current_activity(butler)
    if format not in (None, "fits", "zarr"):
        raise NotSupportedError(f"ingest takes FITS files and Zarr arrays, not {format!r}")
    job = _Job(butler, dataset_type, run, fixed, keys, _hdu_selector(hdu), transfer,
               provenance_record(None, None, activity), format)
    candidates, failures = expand_sources(butler, listed, source_options=source_options)
    butler.registry.refresh()
    refs: list[DatasetRef] = []
    lock = threading.Lock()
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(candidates), unit="file", desc=f"ingest ({transfer})", disable=not show,
              file=sys.stderr, dynamic_ncols=True) as bar:

        def work(source: SourceObject) -> _Prepared | Exception:
            try:
                result: _Prepared | Exception = _prepare(job, source)
            except (ObjButlerError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                result = exc
            with lock:
                bar.update(1)
            return result

        for start in range(0, len(candidates), batch_size):
            batch = candidates[start : start + batch_size]
            ready = []
            for source, result in zip(batch, run_concurrently(work, batch, jobs, budget_of(butler.store)), strict=True):
                if isinstance(result, Exception):
                    failures.append((source.name, result))
                else:
                    ready.append(result)
            _commit(job, ready, refs, failures)
    if activity is not None:
        activity.outputs.extend(ref.id for ref in refs)
    return refs, failures


def _discard(butler: Butler, item: _Prepared) -> None:
    """Delete the copy of a source that was not committed (best effort: a leftover is an orphan for vacuum)."""
    if item.written:
        with contextlib.suppress(ObjButlerError, OSError):
            delete_dataset(butler.store, item.ref.key, item.ref.format)


def _commit(job: _Job, ready: list[_Prepared], refs: list[DatasetRef], failures: list[tuple[str, Exception]]) -> None:
    """Commit a batch; a data ID taken (or given twice) fails its source alone."""
    chosen: list[_Prepared] = []
    seen: dict[tuple[str, str, str], _Prepared] = {}
    kinds: dict[str, tuple[str, _Prepared]] = {}  # data ID key -> its kind here, and the first source giving it
    for item in ready:
        ref = item.ref
        try:
            other = seen.get(ref.unique_key)
            if other is not None:
                raise ConflictError(f"{ref.dataset_type} {ref.data_id} in run {ref.run!r} is also the data ID of "
                                    f"{other.source.name} in this ingest")
            for name, kind in dimension_kinds(ref.data_id).items():
                held = kinds.get(name)
                if held is not None and held[0] != kind:
                    raise ConflictError(f"data ID key {name!r} is {held[0]} for {held[1].source.name} in this "
                                        f"ingest and {kind} here ({ref.data_id[name]!r})")
            job.check(ref.data_id, ref.format)
        except ObjButlerError as exc:
            _discard(job.butler, item)
            failures.append((item.source.name, exc))
            continue
        seen[ref.unique_key] = item
        for name, kind in dimension_kinds(ref.data_id).items():
            kinds.setdefault(name, (kind, item))
        chosen.append(item)
    _commit_items(job, chosen, refs, failures)


def _commit_items(job: _Job, items: list[_Prepared], refs: list[DatasetRef],
                  failures: list[tuple[str, Exception]]) -> None:
    if not items:
        return
    kinds: dict[str, str] = {}
    for item in items:
        kinds.update(dimension_kinds(item.ref.data_id))
    types = [DatasetType(job.dataset_type, tuple(items[0].ref.data_id), "image")]
    try:
        with job.butler.combiner.exclusive():  # all or nothing; never racing this process's group commits
            job.butler.registry.commit(types, kinds, [item.ref for item in items])
    except CommitOutcomeUnknownError as exc:
        failures.extend((item.source.name, exc) for item in items)  # the commit may land: keep the data, fsck tells
        return
    except ConflictError as exc:
        named = set(exc.conflicts)
        taken = [item for item in items if item.ref.id in named]
        if taken and len(taken) < len(items):  # a concurrent writer took these data IDs: commit the others
            for item in taken:
                _discard(job.butler, item)
                failures.append((item.source.name, exc))
            _commit_items(job, [item for item in items if item.ref.id not in named], refs, failures)
            return
        if len(items) > 1:  # the refusal names no dataset of ours: find the culprits one by one
            for item in items:
                _commit_items(job, [item], refs, failures)
            return
        _discard(job.butler, items[0])
        failures.append((items[0].source.name, exc))
        return
    except ObjButlerError as exc:  # Registry.commit's promise: nothing of this batch was or will be committed
        for item in items:
            _discard(job.butler, item)
            failures.append((item.source.name, exc))
        return
    refs.extend(item.ref for item in items)
