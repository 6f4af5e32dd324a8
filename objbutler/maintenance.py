"""fsck and vacuum: find dangling entries and orphaned data objects, remove the orphans.

A *dangling* entry is a committed dataset whose data is missing or does not
match the size (or, when asked, the checksum) that was recorded: that must
never happen, and fsck fails on it. An *orphan* is a data object that no
entry references: a put that crashed between writing its data and
committing, or a put still in flight. Orphans are harmless; ``vacuum``
removes those older than a grace period (so in-flight puts are left alone).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections import defaultdict
from collections.abc import Mapping

from objbutler.butler import Butler
from objbutler.errors import NotFoundError
from objbutler.formats.zarr_array import zarr_checksum
from objbutler.registry.records import DatasetRef
from objbutler.stores import ObjectMeta

__all__ = ["FsckReport", "Orphan", "content_checksum", "dataset_problem", "fsck", "parse_age", "vacuum"]

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
    """

    checked: int
    dangling: list[tuple[DatasetRef, str]]
    orphans: list[Orphan]

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


def _problem(butler: Butler, ref: DatasetRef, objects: list[ObjectMeta] | None, verify: bool) -> str | None:
    if not objects:
        return "data object is missing"
    if ref.format == "zarr" and not any(m.key.endswith("/zarr.json") for m in objects):
        return "zarr.json is missing"
    size = sum(m.size for m in objects)
    if size != ref.size:
        return f"size is {size} bytes, the registry recorded {ref.size}"
    if verify:
        keys = [m.key for m in objects]
        digest = content_checksum(ref, dict(zip(keys, butler.store.get_many(keys), strict=True)))
        if digest != ref.checksum:
            return f"checksum is {digest}, the registry recorded {ref.checksum}"
    return None


def content_checksum(ref: DatasetRef, objects: Mapping[str, bytes]) -> str:
    """The checksum of a dataset's stored bytes, computed as the registry records it.

    Parameters
    ----------
    ref : DatasetRef
        The dataset (its format and key).
    objects : mapping of str to bytes
        Store key -> bytes of every object it consists of (one, except for Zarr).

    Returns
    -------
    str
        ``sha256:<hex>`` (Zarr: :func:`~objbutler.formats.zarr_array.zarr_checksum` over relative keys).
    """
    if ref.format == "zarr":
        base = len(ref.key.rstrip("/")) + 1
        return f"sha256:{zarr_checksum({key[base:]: data for key, data in objects.items()})}"
    return f"sha256:{hashlib.sha256(objects[ref.key]).hexdigest()}"


def dataset_problem(butler: Butler, ref: DatasetRef, verify_checksums: bool = False) -> str | None:
    """Why one registry entry's data is missing or corrupt, or None when it is in place.

    Parameters
    ----------
    butler : Butler
        The repository.
    ref : DatasetRef
        The entry.
    verify_checksums : bool
        Also read the data and compare checksums (sizes are always compared).

    Returns
    -------
    str or None
        The problem, as fsck reports it.
    """
    if ref.format == "zarr":
        objects = list(butler.store.list(ref.key.rstrip("/") + "/"))
    else:
        try:
            objects = [butler.store.head(ref.key)]
        except NotFoundError:
            objects = []
    return _problem(butler, ref, objects, verify_checksums)


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
    refs = butler.registry.refresh().all_refs()
    dangling = []
    for ref in refs:
        problem = _problem(butler, ref, groups.get(ref.key), verify_checksums)
        if problem:
            dangling.append((ref, problem))
    referenced = {ref.key for ref in refs}
    orphans = [
        Orphan(key, tuple(m.key for m in metas), sum(m.size for m in metas),
               max((m.last_modified for m in metas if m.last_modified), default=None))
        for key, metas in sorted(groups.items())
        if key not in referenced
    ]
    return FsckReport(len(refs), dangling, orphans)


def vacuum(butler: Butler, older_than: dt.timedelta, dry_run: bool = False) -> list[Orphan]:
    """Delete orphaned data objects last modified more than ``older_than`` ago.

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
        What was (or would be) removed.
    """
    now = dt.datetime.now(dt.UTC)
    doomed = [
        orphan for orphan in fsck(butler).orphans
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
