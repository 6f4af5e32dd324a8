"""Cutout and ingest campaigns on a Dask cluster (``dask.distributed``).

When a job outgrows one machine (a million stamps from ten thousand images, a
night of raw frames to ingest), objbutler hands the work to Dask instead of a
scheduler of its own::

    from dask.distributed import Client
    from objbutler.dask import cutouts

    client = Client("tcp://scheduler:8786")          # or LocalCluster, dask-jobqueue, ...
    results = cutouts("s3://bucket/repo", table, size=64, store_options={...})
    results.stamps[i]                                # Cutout of request i, or None if it failed
    results.errors                                   # one ErrorRecord per failed request

How the work is cut up
    Requests are resolved to datasets once, on the client (one registry read),
    then grouped by image. A task holds one or more whole image groups and makes
    exactly one vectorized :meth:`~objbutler.Butler.get_cutouts` call per image,
    so the coalesced range reads stay coalesced. An image with very many
    requests is split into a few near-equal tasks; small groups are packed
    together so no task is trivially short. Stamps come back in request order.

What travels to the workers
    The repository URI and its store options, the resolved refs and the boxes or
    sky positions: never a Butler, a store client or a cache. Each task opens
    the Butler itself (one small GET) and lets it go when it returns, so the
    same code runs on a laptop's :class:`~distributed.LocalCluster` and on a
    multi-node cluster. Pass the store options explicitly (endpoint, keys) when
    the workers' environment does not carry them.

Failures
    A request whose image cannot be found (at resolution, on the client) or read
    (on a worker), or whose box cannot be cut, yields an :class:`ErrorRecord`
    (which request, which image, the error type and message); the others
    complete. With ``on_error="raise"`` the campaign still runs to the end, then
    raises an :class:`ExceptionGroup` of objbutler errors, one per image and
    error. A malformed request table raises at once, before anything runs.

The package is named after the engine it drives; inside it ``import dask`` (or
``distributed``) is absolute and finds the real packages. It holds the client
side (resolving, grouping, packing, submitting); :mod:`~objbutler.dask.requests`
parses request tables, :mod:`~objbutler.dask.results` holds what comes back, and
:mod:`~objbutler.dask.tasks` the task bodies that run on the workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.wcs import WCS

from objbutler.butler import Butler
from objbutler.cutouts import ClipMode, Cutout, as_box
from objbutler.dask.requests import REQUEST_FIELDS, CutoutRequest, parse_requests
from objbutler.dask.results import (
    CutoutResults,
    ErrorRecord,
    FilesOutput,
    IngestResults,
    OnError,
    Output,
    RepositoryOutput,
    error_record,
)
from objbutler.dask.tasks import (
    CutSpec,
    ImageGroup,
    IngestSpec,
    Item,
    Opener,
    Stamp,
    WcsHeader,
    cut_task,
    describe,
    ingest_task,
    unship,
)
from objbutler.errors import AmbiguousRunError, InvalidKeyError, NotFoundError
from objbutler.registry.records import DatasetRef, canonical_data_id, validate_data_id

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "REQUEST_FIELDS",
    "CutoutRequest",
    "CutoutResults",
    "ErrorRecord",
    "FilesOutput",
    "IngestResults",
    "RepositoryOutput",
    "connect",
    "cutouts",
    "ingest",
    "parse_requests",
    "run_cutout_job",
]

# A task pays a fixed ~0.2 s (opening the repository: a store client and one GET) before its first
# stamp, and a stamp costs ~1 ms: so tasks are a few hundred stamps at least, two per worker thread.
MAX_STAMPS_PER_TASK = 2000
MIN_STAMPS_PER_TASK = 256
TASKS_PER_THREAD = 2


# -- the client side ---------------------------------------------------------------------------


def cutouts(
    butler_uri: str,
    requests: Any,
    *,
    client: Client | None = None,
    store_options: Mapping[str, Any] | None = None,
    dataset_type: str | None = None,
    run: str | None = None,
    mode: ClipMode = "trim",
    fill_value: float = np.nan,
    size: Any = None,
    frame: str = "icrs",
    data_id_keys: Sequence[str] | None = None,
    out: Output | str | os.PathLike[str] | None = None,
    on_error: OnError = "collect",
    stamps_per_task: int | None = None,
) -> CutoutResults:
    """Cut stamps out of many images on a Dask cluster, one vectorized get per image per task.

    Parameters
    ----------
    butler_uri : str
        The repository (``s3://...``, ``swift://...``, a path the workers share).
    requests : astropy Table, sequence of mappings or CutoutRequest, or a path
        One row per stamp (see :func:`parse_requests`).
    client : distributed.Client, optional
        Where to run (default: the current default client).
    store_options : mapping, optional
        Store options (endpoint, credentials) for the client and every worker.
    dataset_type, run : str, optional
        Defaults for rows that do not name them.
    mode : {"trim", "partial", "strict"}
        Clipping, as :meth:`Butler.get_cutouts`.
    fill_value : float
        Pixels outside the image in ``partial`` mode.
    size : int, (ny, nx) or Quantity, optional
        Stamp size for sky positions without a size of their own.
    frame : str
        Frame of ``ra``/``dec`` (any astropy frame name).
    data_id_keys : sequence of str, optional
        The columns that make the data ID (default: every column without a meaning of its own).
    out : FilesOutput, RepositoryOutput, or a directory, optional
        Write the stamps there from the workers instead of returning them.
    on_error : {"collect", "raise"}
        Collect an :class:`ErrorRecord` per failed request, or (after every
        task has finished) raise an ExceptionGroup of them.
    stamps_per_task : int, optional
        Upper bound on stamps per task. Default: the requests spread over about
        two tasks per worker thread, between 256 and 2000 stamps each.

    Returns
    -------
    CutoutResults
        Stamps (or written outputs) in request order, and the error records.
    """
    parsed = parse_requests(requests, dataset_type=dataset_type, run=run, size=size, data_id_keys=data_id_keys)
    options = dict(store_options or {})
    sink = FilesOutput(out) if isinstance(out, str | os.PathLike) else out
    client = _client(client)
    butler = Butler(butler_uri, **options)
    parsed, rows, unmatched = _expand_sky(butler, parsed, frame)
    refs, errors = _resolve(butler, parsed)
    groups = _group(parsed, refs, size)
    target = stamps_per_task or _auto_task_size(len(parsed), _threads(client))
    tasks = _pack(groups, target)
    spec = CutSpec(mode, float(fill_value), frame, sink)
    values: dict[int, Any] = {}
    parents: dict[WcsHeader, WCS] = {}
    for task, outcome in _run(client, cut_task, (Opener(butler_uri, options), spec), tasks):
        if isinstance(outcome, BaseException):  # the task itself died (worker lost, repository gone)
            errors.extend(error_record(i.index, g.target, outcome, g.ref.id) for g in task for i in g.items)
            continue
        for index, value in outcome.values.items():
            if isinstance(value, Stamp):
                value = unship(index, value, parents)
                value.ref = refs[index]
            values[index] = value
        errors.extend(outcome.errors)
    ordered = [values.get(i) for i in range(len(parsed))]
    results = CutoutResults(
        stamps=ordered if sink is None else [None] * len(parsed),
        outputs=ordered if sink is not None else [],
        errors=sorted(errors, key=lambda r: r.index),
        rows=rows,
        refs=refs,
        unmatched=unmatched,
    )
    if on_error == "raise":
        results.raise_for_errors()
    return results


def _client(client: Client | None) -> Client:
    if client is not None:
        return client
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        raise ValueError(
            "no Dask client: pass client=, create a distributed.Client first, or use objbutler.dask.connect()"
        ) from None


def _threads(client: Client) -> int:
    return max(1, sum(client.nthreads().values()))


def _auto_task_size(total: int, threads: int) -> int:
    return max(MIN_STAMPS_PER_TASK, min(MAX_STAMPS_PER_TASK, math.ceil(total / (TASKS_PER_THREAD * threads))))


def _expand_sky(butler: Butler, requests: Sequence[CutoutRequest],
                frame: str) -> tuple[list[CutoutRequest], list[int], list[int]]:
    """Give each sky position that names no image one request per image holding it, found in the sky index.

    Returns the requests (the others unchanged, in order; a position's images in time order), the
    caller's row of each, and the rows whose position no image holds.
    """
    wanted: dict[tuple[str | None, str | None], list[int]] = defaultdict(list)
    for index, request in enumerate(requests):
        if request.finds_images:
            wanted[(request.dataset_type, request.run)].append(index)
    if not wanted:
        return list(requests), list(range(len(requests))), []
    from astropy.coordinates import SkyCoord

    holding: dict[int, list[DatasetRef]] = {}
    for (dataset_type, run), indices in wanted.items():
        coords = SkyCoord([requests[i].ra for i in indices], [requests[i].dec for i in indices], unit="deg",
                          frame=frame)
        holding.update(zip(indices, butler.find_images(coords, dataset_type, run=run), strict=True))
    expanded: list[CutoutRequest] = []
    rows: list[int] = []
    for index, request in enumerate(requests):
        found = holding.get(index)
        if found is None:
            expanded.append(request)
            rows.append(index)
            continue
        expanded += [dataclasses.replace(request, dataset_id=ref.id) for ref in found]
        rows += [index] * len(found)
    unmatched = [index for index, found in holding.items() if not found]
    return expanded, rows, sorted(unmatched)


def _resolve(butler: Butler, requests: Sequence[CutoutRequest]) -> tuple[list[DatasetRef | None], list[ErrorRecord]]:
    """Find each request's image with one registry read per (dataset type, run); misses become records."""
    by_name: dict[tuple[str, str | None], dict[str, list[DatasetRef]]] = {}
    by_id: dict[str, DatasetRef] | None = None
    refs: list[DatasetRef | None] = []
    errors: list[ErrorRecord] = []
    for index, request in enumerate(requests):
        found: list[DatasetRef]
        if request.dataset_id is not None:
            if by_id is None:
                by_id = {ref.id: ref for ref in butler.query()}
            found = [by_id[request.dataset_id]] if request.dataset_id in by_id else []
        else:
            assert request.dataset_type is not None and request.data_id is not None
            key = (request.dataset_type, request.run)
            if key not in by_name:
                by_name[key] = defaultdict(list)
                for ref in butler.query(request.dataset_type, run=request.run):
                    by_name[key][canonical_data_id(ref.data_id)].append(ref)
            found = by_name[key].get(canonical_data_id(validate_data_id(request.data_id)), [])
        if len(found) == 1:
            refs.append(found[0])
            continue
        refs.append(None)
        if found:
            runs = sorted(ref.run for ref in found)
            exc: Exception = AmbiguousRunError(f"{request.image} exists in several runs {runs}: give a run", runs)
        else:
            exc = NotFoundError(f"no {request.image} in {butler.uri}")
        errors.append(error_record(index, request.image, exc, request.dataset_id))
    return refs, errors


def _group(requests: Sequence[CutoutRequest], refs: Sequence[DatasetRef | None], size: Any) -> list[ImageGroup]:
    """Requests per image, images in order of their first request."""
    items: dict[DatasetRef, list[Item]] = {}
    for index, (request, ref) in enumerate(zip(requests, refs, strict=True)):
        if ref is None:
            continue
        item_size = request.size if request.size is not None else size
        item = Item(index, request.box, request.ra, request.dec, item_size if request.box is None else None,
                     request.stamp_id)
        items.setdefault(ref, []).append(item)
    return [ImageGroup(ref, tuple(its)) for ref, its in items.items()]


def _pack(groups: Sequence[ImageGroup], target: int) -> list[list[ImageGroup]]:
    """Split big image groups into near-equal parts of at most ``target``; pack small ones together."""
    parts: list[ImageGroup] = []
    for group in groups:
        pieces = math.ceil(len(group.items) / target)
        step = math.ceil(len(group.items) / pieces)
        parts.extend(ImageGroup(group.ref, group.items[i : i + step]) for i in range(0, len(group.items), step))
    tasks: list[list[ImageGroup]] = []
    filled = target
    for part in parts:
        if filled + len(part.items) > target:
            tasks.append([])
            filled = 0
        tasks[-1].append(part)
        filled += len(part.items)
    return tasks


def _run(
    client: Client, function: Callable[..., Any], fixed: tuple[Any, ...], tasks: Sequence[Any]
) -> Iterator[tuple[Any, Any]]:
    """Submit ``function(*fixed, task)`` per task; yield ``(task, result or exception)`` as they finish."""
    from distributed import as_completed

    futures = {client.submit(function, *fixed, task, pure=False): task for task in tasks}
    for future in as_completed(futures):
        task = futures.pop(future)
        try:
            outcome = future.result()
        except Exception as exc:
            outcome = exc
        future.release()
        yield task, outcome


def ingest(
    butler_uri: str,
    items: Sequence[Any],
    dataset_type: str,
    data_ids: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    run: str,
    *,
    client: Client | None = None,
    store_options: Mapping[str, Any] | None = None,
    format: str | None = None,
    header_keys: Mapping[str, str] | None = None,
    hdu: str | None = None,
    on_error: OnError = "collect",
    items_per_task: int | None = None,
) -> IngestResults:
    """Put many datasets in parallel on a Dask cluster; each item commits on its own.

    Parameters
    ----------
    butler_uri : str
        The repository.
    items : sequence
        FITS file paths the workers can read, or objects :meth:`Butler.put`
        takes (arrays, HDUs, NDData, dicts, tables), which are scattered to the
        workers.
    dataset_type : str
        Dataset type of every item.
    data_ids : mapping or sequence of mappings
        One data ID per item, or one for all (then ``header_keys`` must tell
        the items apart).
    run : str
        The run.
    client, store_options, on_error
        As for :func:`cutouts`.
    format : str, optional
        Storage format (the repository's default otherwise).
    header_keys : mapping, optional
        For FITS paths: data ID key -> header card to read it from.
    hdu : str, optional
        For FITS paths: which HDU (index or name).
    items_per_task : int, optional
        Default: about two tasks per worker thread.

    Returns
    -------
    IngestResults
        The committed ref per item and an :class:`ErrorRecord` per failed one.
    """
    ids = [data_ids] * len(items) if isinstance(data_ids, Mapping) else list(data_ids)
    if len(ids) != len(items):
        raise InvalidKeyError(f"{len(items)} items but {len(ids)} data IDs")
    client = _client(client)
    options = dict(store_options or {})
    Butler(butler_uri, **options)  # fail here, not on every worker, if there is no repository
    per_task = items_per_task or max(1, math.ceil(len(items) / (TASKS_PER_THREAD * _threads(client))))
    shipped = list(items)
    objects = [i for i, item in enumerate(shipped) if not isinstance(item, str | os.PathLike)]
    if objects:  # scatter([]) fails in distributed: file paths travel as they are
        for i, future in zip(objects, client.scatter([shipped[i] for i in objects]), strict=True):
            shipped[i] = future
    batches = [
        (list(range(start, min(start + per_task, len(items)))), shipped[start : start + per_task],
         ids[start : start + per_task])
        for start in range(0, len(items), per_task)
    ]
    spec = IngestSpec(dataset_type, run, format, dict(header_keys or {}), hdu)
    refs: list[DatasetRef | None] = [None] * len(items)
    errors: list[ErrorRecord] = []
    for (indices, _, _), outcome in _run(client, ingest_task, (Opener(butler_uri, options), spec), batches):
        if isinstance(outcome, BaseException):
            errors.extend(error_record(i, describe(items[i]), outcome) for i in indices)
            continue
        for index, ref in outcome.values.items():
            refs[index] = ref
        errors.extend(outcome.errors)
    results = IngestResults(refs, sorted(errors, key=lambda r: r.index))
    if on_error == "raise":
        results.raise_for_errors()
    return results


# -- clusters and the command line -------------------------------------------------------------


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None) -> Iterator[Client]:
    """A Dask client for a job: a running scheduler, a fresh local cluster, or the default client.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``).
    workers : int, optional
        Start a :class:`~distributed.LocalCluster` of this many single-threaded
        worker processes on 127.0.0.1 (no dashboard) for the job, and stop it after.

    Yields
    ------
    distributed.Client
    """
    from distributed import Client, LocalCluster

    if scheduler is not None and workers is not None:
        raise ValueError("give a scheduler address or a number of local workers, not both")
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
    elif workers is not None:
        with (
            # dashboard_address=None alone still starts the scheduler's HTTP server on :8787 (and warns when
            # another cluster holds it): no dashboard, and that server on a free loopback port
            LocalCluster(n_workers=workers, processes=True, threads_per_worker=1, host="127.0.0.1",
                         dashboard_address=None,
                         scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"}) as cluster,
            Client(cluster) as client,
        ):
            yield client
    else:
        yield _client(None)


def run_cutout_job(
    uri: str,
    ref: DatasetRef,
    boxes_or_coords: Any,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    mode: ClipMode = "trim",
    fill_value: float = np.nan,
    size: Any = None,
    store_options: Mapping[str, Any] | None = None,
) -> list[Cutout]:
    """:meth:`Butler.get_cutouts` on one image, spread over a Dask cluster (for ``objbutler cutout``).

    Same arguments and result as the serial call (stamps in request order,
    ``Cutout.index`` the request's position), plus where to run. If any stamp
    fails, raises (after the job) the first failure as its objbutler error, as
    the serial call would, saying how many failed.
    """
    from astropy.coordinates import SkyCoord

    rows: list[CutoutRequest]
    if isinstance(boxes_or_coords, SkyCoord):
        icrs = boxes_or_coords.icrs
        ras, decs = np.atleast_1d(icrs.ra.deg), np.atleast_1d(icrs.dec.deg)
        rows = [CutoutRequest(dataset_id=ref.id, ra=float(r), dec=float(d)) for r, d in zip(ras, decs, strict=True)]
    else:
        rows = [CutoutRequest(dataset_id=ref.id, box=as_box(box)) for box in boxes_or_coords]
    with connect(scheduler, workers) as client:
        results = cutouts(uri, rows, client=client, store_options=store_options, mode=mode, fill_value=fill_value,
                          size=size)
    if results.errors:
        first = results.errors[0]
        failed = ErrorRecord(first.index, first.target, first.error_type,
                             f"{len(results.errors)} of {len(results)} stamps failed; the first: {first.message}")
        raise failed.to_exception()
    return [stamp for stamp in results.stamps if stamp is not None]
