"""Copy a subset of one repository into another: ``objbutler clone SRC DST``.

Any direction between backends (S3 or Swift to a laptop's disk, local to S3 to
publish, S3 to Swift to migrate). What is copied is a dataset's data objects
*and* its registry entry, with the same dataset id, data key, checksum,
creation time and provenance, so the copy answers queries, gets and cutouts
exactly as the source does.

How one dataset is copied
    1. read its objects from the source (one ``get``; a Zarr array: one
       listing and one ``get_many``) and check the size and SHA-256 checksum
       the registry recorded (Zarr: :func:`~objbutler.formats.zarr_array.zarr_checksum`
       over relative keys), so corruption is never propagated;
    2. write them under the *same key* in the destination (Zarr: chunks
       first, ``zarr.json`` last), replacing whatever a killed earlier run
       left there;
    3. commit the refs of a batch through the destination's registry with
       :meth:`Butler.ingest_refs <objbutler.butler.Butler.ingest_refs>`,
       which checks that the data is in place; if the commit fails, the data
       this call wrote is deleted again (a put stays atomic).

Data registered in place
    A dataset the source registered where it was (``ingest --transfer direct``)
    is copied like any other: its bytes are read from where they are (and
    checked), written into the destination's ``data/`` under the key a put
    would give it, and committed as an ordinary dataset with the same id. So
    a clone is self-contained: it never depends on a bucket outside it, and
    deleting the original objects later does not break it.

Resuming
    A dataset whose id the destination already holds is skipped, so rerunning
    an interrupted clone (even one killed with SIGKILL) copies only what is
    missing: nothing twice, nothing lost. Data objects of a batch that was
    not committed when the run died are orphans until the rerun overwrites
    and commits them (``objbutler fsck`` reports orphans, never as errors).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm import tqdm

from objbutler.butler import EXTENSIONS, Butler
from objbutler.errors import (
    AlreadyExistsError,
    CommitOutcomeUnknownError,
    FormatError,
    NotFoundError,
    ObjButlerError,
)
from objbutler.formats.dispatch import delete_dataset
from objbutler.formats.zarr_write import write_zarr_objects
from objbutler.integrity import content_checksum
from objbutler.registry.records import DatasetRef, data_id_slug
from objbutler.stores import budget_of, run_concurrently

__all__ = ["CloneReport", "clone", "cloned_ref", "open_or_create", "select_datasets"]


@dataclasses.dataclass(slots=True)
class CloneReport:
    """What a clone did.

    Parameters
    ----------
    source, destination : str
        The repositories' URIs.
    selected : int
        Datasets selected (with their inputs, when asked).
    copied : list of DatasetRef
        Copied and committed by this run.
    skipped : list of DatasetRef
        Already in the destination with the same id (an earlier run's work).
    failed : list of (DatasetRef, str)
        Not copied, with the reason (corrupt or missing in the source, or the
        destination holds another dataset with the same data ID and run).
    missing_inputs : list of str
        Ids of provenance inputs that the source does not hold (kept in
        another repository): recorded in the refs, not copied.
    bytes_copied : int
        Bytes written to the destination.
    """

    source: str
    destination: str
    selected: int = 0
    copied: list[DatasetRef] = dataclasses.field(default_factory=list)
    skipped: list[DatasetRef] = dataclasses.field(default_factory=list)
    failed: list[tuple[DatasetRef, str]] = dataclasses.field(default_factory=list)
    missing_inputs: list[str] = dataclasses.field(default_factory=list)
    bytes_copied: int = 0

    @property
    def ok(self) -> bool:
        """True when every selected dataset is now in the destination."""
        return not self.failed

    def summary(self) -> str:
        """One line for people."""
        text = (f"cloned {self.source} -> {self.destination}: {len(self.copied)} copied "
                f"({self.bytes_copied / 2**20:.1f} MiB), {len(self.skipped)} already there, "
                f"{len(self.failed)} failed, of {self.selected} selected")
        if self.missing_inputs:
            text += f"; {len(self.missing_inputs)} provenance input(s) live in other repositories"
        return text


def _input_ids(ref: DatasetRef) -> list[str]:
    record = ref.provenance or {}
    links = [*record.get("inputs", []), *record.get("derived_from", [])]
    return list(dict.fromkeys(str(link["id"]) for link in links if isinstance(link, Mapping) and "id" in link))


def select_datasets(
    source: Butler,
    dataset_type: str | None = None,
    where: Mapping[str, Any] | None = None,
    run: str | None = None,
    with_inputs: bool = False,
) -> tuple[list[DatasetRef], list[str]]:
    """The datasets a clone copies: a query, plus provenance inputs (recursively) on request.

    Parameters
    ----------
    source : Butler
        The repository to copy from.
    dataset_type, where, run
        As for :meth:`Butler.query <objbutler.butler.Butler.query>`.
    with_inputs : bool
        Add the inputs each dataset's provenance names, and theirs, as far as
        the source holds them.

    Returns
    -------
    tuple
        The refs, every input before the datasets made from it, and the ids
        of inputs the source does not hold.
    """
    refs = source.query(dataset_type, where, run)
    if not with_inputs:
        return refs, []
    by_id = {ref.id: ref for ref in source.registry.state.all_refs()}
    ordered: list[DatasetRef] = []
    seen: set[str] = set()
    missing: dict[str, None] = {}
    stack: list[tuple[DatasetRef, bool]] = [(ref, False) for ref in reversed(refs)]
    while stack:  # depth first, post-order: inputs come out before what was made from them
        ref, expanded = stack.pop()
        if expanded:
            ordered.append(ref)
            continue
        if ref.id in seen:
            continue
        seen.add(ref.id)
        stack.append((ref, True))
        for input_id in reversed(_input_ids(ref)):
            found = by_id.get(input_id)
            if found is None:
                missing[input_id] = None
            elif found.id not in seen:
                stack.append((found, False))
    return ordered, list(missing)


def open_or_create(uri: str, default_format: str = "fits", **store_options: Any) -> Butler:
    """Open the repository at ``uri``, creating it (with ``default_format``) if there is none.

    Parameters
    ----------
    uri : str
        Where the repository is (or goes).
    default_format : {"fits", "zarr"}
        Its default image format, if created.
    **store_options
        Passed to :func:`objbutler.stores.open_store`.

    Returns
    -------
    Butler
    """
    try:
        return Butler(uri, **store_options)
    except NotFoundError:
        pass
    try:
        return Butler.create(uri, default_format=default_format, **store_options)
    except AlreadyExistsError:  # created meanwhile by someone else
        return Butler(uri, **store_options)


def _read_verified(source: Butler, ref: DatasetRef) -> dict[str, bytes]:
    """Every object of a dataset from the source, checked against the recorded size and checksum.

    Keys are relative to the dataset: ``""`` for a single object, the key under the prefix for Zarr.
    """
    store, key = source.data_location(ref)  # the repository's, or where a direct dataset is
    if ref.format == "zarr":
        keys = [meta.key for meta in store.list(key.rstrip("/") + "/")]
        if not keys:
            raise NotFoundError(f"no Zarr objects under {ref.key} in {source.uri}")
        objects = dict(zip(keys, store.get_many(keys), strict=True))
    else:
        objects = {key: store.get(key)}
    size = sum(len(data) for data in objects.values())
    if size != ref.size:
        raise FormatError(f"{ref.key} in {source.uri} has {size} bytes, the registry recorded {ref.size}")
    digest = content_checksum(dataclasses.replace(ref, key=key), objects)
    if digest != ref.checksum:
        raise FormatError(f"{ref.key} in {source.uri} has checksum {digest}, the registry recorded {ref.checksum}")
    if ref.format != "zarr":
        return {"": objects[key]}
    prefix = key.rstrip("/") + "/"
    return {name[len(prefix):]: data for name, data in objects.items()}


def cloned_ref(ref: DatasetRef) -> DatasetRef:
    """The ref a clone commits: the same, except that data registered in place gets a key in ``data/``.

    The key is the one a put would give it (so a rerun writes the same key), the ``direct`` field
    is dropped: the copy is the destination's own.
    """
    if not ref.is_direct:
        return ref
    key = f"data/{ref.run}/{ref.dataset_type}/{data_id_slug(ref.data_id)}-{ref.id[:8]}{EXTENSIONS[ref.format]}"
    return dataclasses.replace(ref, key=key, direct=None)


def _write(destination: Butler, ref: DatasetRef, objects: dict[str, bytes]) -> None:
    """Write a dataset's objects under its key, replacing a half-copied earlier attempt."""
    if ref.format != "zarr":
        destination.store.put(ref.key, objects[""])
        return
    prefix = ref.key.rstrip("/") + "/"
    for meta in list(destination.store.list(prefix)):
        if meta.key[len(prefix):] not in objects:
            destination.store.delete(meta.key)
    write_zarr_objects(destination.store, ref.key, objects)


def clone(
    source: Butler | str,
    destination: Butler | str,
    *,
    dataset_type: str | None = None,
    where: Mapping[str, Any] | None = None,
    run: str | None = None,
    with_inputs: bool = False,
    progress: bool | None = None,
    jobs: int = 8,
    batch_size: int = 32,
    source_options: Mapping[str, Any] | None = None,
    destination_options: Mapping[str, Any] | None = None,
) -> CloneReport:
    """Copy datasets (data and registry entries) from one repository into another; resumable.

    Parameters
    ----------
    source : Butler or str
        The repository to copy from.
    destination : Butler or str
        The repository to copy into; a URI with no repository yet is created
        with the source's default format.
    dataset_type, where, run
        Which datasets, as for :meth:`Butler.query <objbutler.butler.Butler.query>`
        (all of them by default).
    with_inputs : bool
        Also copy the provenance inputs of each dataset, recursively, as far
        as the source holds them.
    progress : bool or None
        A progress bar (tqdm) on stderr: always, never, or (None, the default) when stderr is a
        terminal (a log file gets no bar lines).
    jobs : int
        Datasets copied at once.
    batch_size : int
        Datasets per registry commit (what an interruption can leave uncommitted).
    source_options, destination_options : mapping, optional
        Store options for URIs (endpoint, credentials, ``cache=``, ...).

    Returns
    -------
    CloneReport
        What was copied, skipped and why anything failed.

    Raises
    ------
    ConflictError
        The destination's registry refused a batch (a concurrent writer took a
        data ID); the batch's data was deleted again.
    """
    src = source if isinstance(source, Butler) else Butler(source, **dict(source_options or {}))
    dst = (destination if isinstance(destination, Butler)
           else open_or_create(destination, src.config["default_format"], **dict(destination_options or {})))
    refs, missing = select_datasets(src, dataset_type, where, run, with_inputs)
    report = CloneReport(src.uri, dst.uri, selected=len(refs), missing_inputs=missing)
    state = dst.registry.refresh()
    todo = []
    for ref in refs:
        holder = state.find_unique(ref.unique_key)
        if holder is None:
            todo.append(ref)
        elif holder.id == ref.id:
            report.skipped.append(ref)
        else:
            report.failed.append((ref, f"{dst.uri} holds another dataset ({holder.id}) with this data ID and run"))
    lock = threading.Lock()
    with tqdm(total=len(refs), initial=len(refs) - len(todo), unit="dataset", desc="clone",
              disable=None if progress is None else not progress, dynamic_ncols=True) as bar:

        def copy(ref: DatasetRef) -> tuple[DatasetRef, str | None]:
            error = None
            try:
                _write(dst, cloned_ref(ref), _read_verified(src, ref))
            except ObjButlerError as exc:
                error = f"{type(exc).__name__}: {exc}"
            with lock:
                report.bytes_copied += ref.size if error is None else 0
                bar.update(1)
            return ref, error

        for start in range(0, len(todo), batch_size):
            results = run_concurrently(copy, todo[start : start + batch_size], jobs, budget_of(dst.store))
            report.failed += [(ref, error) for ref, error in results if error is not None]
            _commit(dst, [cloned_ref(ref) for ref, error in results if error is None], report)
    return report


def _commit(destination: Butler, written: Sequence[DatasetRef], report: CloneReport) -> None:
    """Commit a batch whose data is in place; on failure delete that data (it was written by this run)."""
    if not written:
        return
    try:
        destination.ingest_refs(written)
    except CommitOutcomeUnknownError:
        raise  # the commit may have landed: keep the data, a rerun or fsck tells
    except ObjButlerError:  # Registry.commit's promise: nothing of this batch was or will be committed
        for ref in written:
            with contextlib.suppress(Exception):
                delete_dataset(destination.store, ref.key, ref.format)
        raise
    report.copied += written
