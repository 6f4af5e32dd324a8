"""fsck and vacuum: find dangling entries and orphaned data objects, remove the orphans; remove a repository.

A *dangling* entry is a committed dataset whose data is missing or does not
match the size (or, when asked, the checksum) that was recorded: that must
never happen, and fsck fails on it. An *orphan* is a data object that no
entry references: a put that crashed between writing its data and
committing, or a put still in flight. Orphans are harmless; ``vacuum``
removes those older than a grace period (so in-flight puts are left alone).

``remove_repository`` deletes a whole repository: every object under its
prefix, the config last (see its docstring for why), nothing outside it.

In a ``claimed`` repository fsck also lists *unfinished claims*: claims
(``manifest/claims/``) whose dataset is not in the registry, left by a put that
crashed or failed between claiming and committing, or still in flight; they
keep that data ID refused. ``vacuum`` removes those older than the grace
period, as it does orphans. fsck also reports *shadowed* datasets: a data ID
committed twice (only a pathological late write can do that), of which every
reader keeps the first applied.

Data registered in place (``ingest --transfer direct``) is not the
repository's: fsck checks that it is still there with the recorded size and
etag (and, when asked, checksum), and reports it as dangling when it was
deleted or replaced behind objbutler's back; ``vacuum`` never deletes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import urllib.parse
from collections import defaultdict
from pathlib import Path
from typing import Any

from objbutler.butler import Butler
from objbutler.config import CONFIG_KEY, parse_config
from objbutler.errors import NotFoundError, ObjButlerError, StoreError
from objbutler.integrity import content_checksum, dataset_problem, direct_problem, listed_problem
from objbutler.registry.checkpoint import CHECKPOINT_PREFIX
from objbutler.registry.claims import CLAIMS_PREFIX, claim_key
from objbutler.registry.log import LOG_PREFIX
from objbutler.registry.records import DatasetRef
from objbutler.registry.registry import finish_folds
from objbutler.stores import ObjectMeta, Store, budget_of, open_store, run_concurrently
from objbutler.stores.cache import CachingStore
from objbutler.stores.local import TMP_PREFIX, LocalStore

__all__ = ["FsckReport", "Orphan", "RemovalReport", "content_checksum", "dataset_problem", "fsck", "parse_age",
           "remove_repository", "vacuum"]

DATA_PREFIX = "data/"


@dataclasses.dataclass(frozen=True, slots=True)
class Orphan:
    """A data object (or Zarr array) that no registry entry references.

    Parameters
    ----------
    key : str
        The object key, or the Zarr prefix.
    objects : tuple of str
        Every object key it consists of.
    size : int
        Total bytes.
    last_modified : datetime or None
        Newest modification time among its objects.
    """

    key: str
    objects: tuple[str, ...]
    size: int
    last_modified: dt.datetime | None


@dataclasses.dataclass(slots=True)
class FsckReport:
    """What fsck found.

    Parameters
    ----------
    checked : int
        Registry entries checked.
    dangling : list of (DatasetRef, str)
        Entries whose data is missing or corrupt, with the reason.
    orphans : list of Orphan
        Unreferenced data.
    claims : list of Orphan
        Unfinished claims: claims whose dataset is not in the registry (``key``
        is the claim object).
    shadowed : list of DatasetRef
        Datasets of a data ID that an earlier commit already holds (readers ignore them).
    """

    checked: int
    dangling: list[tuple[DatasetRef, str]]
    orphans: list[Orphan]
    claims: list[Orphan] = dataclasses.field(default_factory=list)
    shadowed: list[DatasetRef] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no entry dangles (orphans do not count)."""
        return not self.dangling


def _dataset_key(object_key: str) -> str:
    """Map an object key to the dataset key it belongs to (the ``.zarr`` prefix for Zarr chunks)."""
    parts = object_key.split("/")
    for index, part in enumerate(parts[:-1]):
        if part.endswith(".zarr"):
            return "/".join(parts[: index + 1])
    return object_key


def _group_objects(butler: Butler) -> dict[str, list[ObjectMeta]]:
    groups: dict[str, list[ObjectMeta]] = defaultdict(list)
    for meta in butler.store.list(DATA_PREFIX):
        groups[_dataset_key(meta.key)].append(meta)
    return groups


def _inside_repository(butler: Butler, ref: DatasetRef) -> str | None:
    """The repository-relative key of data registered in place that lies inside the repository (never
    written by ingest, which refuses it; a hand-made record could), so that vacuum never takes it for an orphan."""
    from objbutler.butler import direct_location
    from objbutler.stores.locations import parse_location

    try:
        location, root = direct_location(ref), parse_location(butler.store.uri)
    except ObjButlerError:
        return None
    if (location.scheme, location.container) != (root.scheme, root.container):
        return None
    if not root.key:
        return location.key
    return location.key[len(root.key) + 1:] if location.key.startswith(root.key + "/") else None


def fsck(butler: Butler, verify_checksums: bool = False) -> FsckReport:
    """Check every registry entry against the data objects, and list orphans.

    Parameters
    ----------
    butler : Butler
        The repository.
    verify_checksums : bool
        Also read every dataset and compare checksums (slow: reads everything).

    Returns
    -------
    FsckReport
        Dangling entries and orphans.
    """
    groups = _group_objects(butler)  # list data before reading the registry: a put in between is no orphan
    claims = list(butler.store.list(CLAIMS_PREFIX))  # likewise claims
    state = butler.registry.refresh()
    refs = state.all_refs()
    dangling = []
    for ref in refs:
        if ref.is_direct:
            problem = direct_problem(butler, ref, verify_checksums)
        else:
            problem = listed_problem(butler, ref, groups.get(ref.key), verify_checksums)
        if problem:
            dangling.append((ref, problem))
    referenced = {ref.key for ref in refs if not ref.is_direct}
    in_place = [key for ref in refs if ref.is_direct and (key := _inside_repository(butler, ref)) is not None]
    orphans = [
        Orphan(key, tuple(m.key for m in metas), sum(m.size for m in metas),
               max((m.last_modified for m in metas if m.last_modified), default=None))
        for key, metas in sorted(groups.items())
        if key not in referenced and not any(key == kept or key.startswith(kept + "/") for kept in in_place)
    ]
    unfinished = []
    if claims:
        held = {claim_key(ref.unique_key) for ref in refs}
        unfinished = [Orphan(meta.key, (meta.key,), meta.size, meta.last_modified)
                      for meta in claims if meta.key.endswith(".json") and meta.key not in held]
    return FsckReport(len(refs), dangling, orphans, unfinished, list(state.shadowed))


def vacuum(butler: Butler, older_than: dt.timedelta, dry_run: bool = False) -> list[Orphan]:
    """Delete orphaned data objects and unfinished claims last modified more than ``older_than`` ago.

    Parameters
    ----------
    butler : Butler
        The repository.
    older_than : datetime.timedelta
        Grace period that protects puts still in flight.
    dry_run : bool
        Only report what would be deleted.

    Returns
    -------
    list of Orphan
        What was (or would be) removed: orphaned data, then unfinished claims
        (keys under ``manifest/claims/``).
    """
    now = dt.datetime.now(dt.UTC)
    report = fsck(butler)
    doomed = [
        orphan for orphan in report.orphans + report.claims
        if orphan.last_modified is not None and now - orphan.last_modified > older_than
    ]
    if not dry_run:
        for orphan in doomed:
            for key in orphan.objects:
                butler.store.delete(key)
    return doomed


def parse_age(text: str) -> dt.timedelta:
    """Parse ``30s``, ``15m``, ``1h``, ``2d`` (or a plain number of seconds).

    Raises
    ------
    ValueError
        For anything else.
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return dt.timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return dt.timedelta(seconds=float(text))
    except ValueError:
        raise ValueError(f"cannot read {text!r} as an age: use e.g. 30s, 15m, 1h, 2d") from None


#: What a repository holds, in the order ``remove_repository`` deletes it (the config is last).
REMOVAL_ORDER = ("data", "other", "log", "checkpoints", "manifest", "config")
_NOUNS = {"data": "data object", "other": "other object", "log": "log entry", "checkpoints": "checkpoint",
          "manifest": "other registry object", "config": "config"}
_ROUNDS = 5


def _category(key: str) -> str:
    if key == CONFIG_KEY:
        return "config"
    if key.startswith(DATA_PREFIX):
        return "data"
    if key.startswith(LOG_PREFIX):
        return "log"
    if key.startswith(CHECKPOINT_PREFIX):
        return "checkpoints"
    if key.startswith("manifest/"):
        return "manifest"
    return "other"  # provenance/activities/, probe scratch objects, anything else under the prefix


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


@dataclasses.dataclass(slots=True)
class RemovalReport:
    """What :func:`remove_repository` deleted, or would delete.

    Parameters
    ----------
    uri : str
        The repository.
    datasets : int or None
        Registry entries it held (None when its registry could not be read, e.g. half removed).
    objects : dict of str to int
        Objects by kind (``data``, ``other``, ``log``, ``checkpoints``, ``manifest``, ``config``).
    size : int
        Their total bytes.
    removed : bool
        False for a dry run, or when there was no repository (``missing_ok``).
    """

    uri: str
    datasets: int | None
    objects: dict[str, int]
    size: int
    removed: bool

    @property
    def total(self) -> int:
        """Objects in all."""
        return sum(self.objects.values())

    def summary(self) -> str:
        """One line: what was (or would be) deleted, with counts."""
        if not self.total:
            return f"no objbutler repository at {self.uri}: nothing to remove"
        verb = "deleted" if self.removed else "would delete"
        datasets = "an unreadable registry" if self.datasets is None else _plural(self.datasets, "dataset")
        parts = [_plural(self.objects[kind], _NOUNS[kind]) for kind in REMOVAL_ORDER[:-1] if self.objects.get(kind)]
        config = CONFIG_KEY if self.objects.get("config") else "no config"
        listed = ", ".join([*parts, config])
        return (f"{verb} {self.uri}: {datasets}; {self.total} objects ({listed}), {_human(self.size)}; "
                f"nothing outside it")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _local_root(uri: str) -> Path | None:
    """The directory a local URI names, or None for another scheme."""
    scheme = urllib.parse.urlsplit(uri).scheme if "://" in uri else ""
    if scheme == "file":
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path)).expanduser().absolute()
    if scheme == "":
        return Path(uri).expanduser().absolute()
    return None


def _tidy_local(root: Path) -> None:
    """Remove what a local repository leaves once its objects are gone: temporary files, empty folders, the root."""
    for current, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            if name.startswith(TMP_PREFIX):  # a write that was interrupted, or is still in flight
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(current, name))
        with contextlib.suppress(OSError):  # not empty: something that is not ours, left as it is
            os.rmdir(current)


def remove_repository(
    repository: Butler | str,
    *,
    dry_run: bool = False,
    missing_ok: bool = False,
    jobs: int = 16,
    store: Store | None = None,
    **store_options: Any,
) -> RemovalReport:
    """Delete a whole repository: every object under its prefix, and nothing outside it.

    The data objects go first, then anything else (provenance activity records),
    the commit log, the checkpoints, and the config (``objbutler.json``) last.
    Config last, so that a removal that is interrupted (a crash, a network
    failure, Ctrl-C) leaves a repository that is still recognisable as one:
    running the removal again finishes it, and ``Butler.create`` at the same URI
    keeps refusing until it has, so a new repository is never created on top of
    the old one's log entries (which it would read as its own commits). Before
    deleting the config the prefix is listed again, and anything a writer added
    meanwhile is deleted too; stop every writer first. The bucket or container
    itself is left in place; a local directory is removed once it is empty.

    Parameters
    ----------
    repository : Butler or str
        The repository, or its URI.
    dry_run : bool
        Only count what would be deleted.
    missing_ok : bool
        No repository at the URI is not an error: return an empty report.
    jobs : int
        Deletes in flight at once.
    store : Store, optional
        Use this store object instead of opening the URI.
    **store_options
        Passed to :func:`objbutler.stores.open_store` (endpoint, credentials, ...).

    Returns
    -------
    RemovalReport
        What was (or would be) deleted, with counts.

    Raises
    ------
    NotFoundError
        If there is no ``objbutler.json`` at the URI (nothing is touched), unless ``missing_ok``.
    ConfigError
        If there is one but it is not an objbutler repository config (nothing is touched).
    StoreError
        If objects keep appearing while it runs (a writer is still busy); the config is then kept.
    """
    if isinstance(repository, Butler):
        uri = repository.uri
        if store is None:
            store = repository.store
            while isinstance(store, CachingStore):  # delete on the server, not in a local cache
                store = store.inner
    else:
        uri = repository
    empty = RemovalReport(uri, 0, {}, 0, removed=False)
    finish_folds()  # this process's folds in flight would write a checkpoint or marker after the listing
    if store is None:
        local = _local_root(uri)
        if local is not None and not local.is_dir():
            if missing_ok:
                return empty  # opening a LocalStore would create the directory: refuse without touching anything
            raise NotFoundError(f"{uri} is not an objbutler repository (no such directory): nothing removed")
        store = open_store(uri, **store_options)
    local = store.root if isinstance(store, LocalStore) else None
    try:
        raw = store.get(CONFIG_KEY)
    except NotFoundError:
        if missing_ok:
            return empty
        raise NotFoundError(f"{uri} is not an objbutler repository (no {CONFIG_KEY}): nothing removed") from None
    parse_config(raw, uri)  # a file of that name that is not ours: refuse

    try:
        datasets: int | None = len(Butler(uri, store=store).registry.refresh().all_refs())
    except ObjButlerError:
        datasets = None  # half removed already, or corrupt: the objects are still counted
    metas = list(store.list(""))
    counts: dict[str, int] = defaultdict(int)
    for meta in metas:
        counts[_category(meta.key)] += 1
    report = RemovalReport(uri, datasets, dict(counts), sum(m.size for m in metas), removed=False)
    if dry_run:
        return report

    def delete(keys: list[str]) -> None:
        # A key already gone is not an error: re-running is safe.
        run_concurrently(store.delete, keys, max(1, jobs), budget_of(store))

    for _ in range(_ROUNDS):
        by_kind: dict[str, list[str]] = defaultdict(list)
        for meta in metas:
            by_kind[_category(meta.key)].append(meta.key)
        for kind in REMOVAL_ORDER[:-1]:
            delete(by_kind[kind])
        metas = [meta for meta in store.list("") if meta.key != CONFIG_KEY]
        if not metas:
            break
        for meta in metas:  # written by someone while we deleted: count them too
            report.objects[_category(meta.key)] = report.objects.get(_category(meta.key), 0) + 1
            report.size += meta.size
    else:
        raise StoreError(f"objects keep appearing under {uri} while it is removed (a writer is still busy?): "
                         f"{len(metas)} left; stop the writers and run the removal again (its config is kept)")
    store.delete(CONFIG_KEY)
    if local is not None:
        _tidy_local(local)
    report.removed = True
    return report
