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

The module is named after the engine it drives; inside it ``import dask`` (or
``distributed``) is absolute and finds the real packages.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import functools
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from astropy.wcs import WCS, WCSHDO_P17, WCSHDO_all
from astropy.wcs.wcs import WCSHDO_SIP

from objbutler import errors as _errors
from objbutler.butler import Butler
from objbutler.cutouts import Box, ClipMode, Cutout, as_box, boxes_from_skycoords
from objbutler.errors import InvalidCutoutError, InvalidKeyError, NotFoundError, NotSupportedError, ObjButlerError
from objbutler.registry.records import DatasetRef, canonical_data_id, validate_data_id
from objbutler.stores._concurrency import run_concurrently

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
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

OnError = Literal["collect", "raise"]

#: Columns of a request table with a meaning of their own; every other column is a data ID key.
REQUEST_FIELDS = (
    "dataset_type", "run", "data_id", "dataset_id", "ref",
    "box", "x0", "y0", "x1", "y1", "ra", "dec", "size", "stamp_id",
)
# A task pays a fixed ~0.2 s (opening the repository: a store client and one GET) before its first
# stamp, and a stamp costs ~1 ms: so tasks are a few hundred stamps at least, two per worker thread.
MAX_STAMPS_PER_TASK = 2000
MIN_STAMPS_PER_TASK = 256
TASKS_PER_THREAD = 2
IMAGES_IN_FLIGHT = 4


# -- requests ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CutoutRequest:
    """One stamp to cut: which image, and a pixel box or a sky position.

    Parameters
    ----------
    dataset_type, data_id, run : optional
        The image by name (``run`` may be omitted when one run holds it).
    dataset_id : str, optional
        The image by dataset UUID instead.
    box : Box, optional
        A pixel box (half-open, 0-based) ...
    ra, dec : float, optional
        ... or a sky position in degrees (in the ``frame`` given to :func:`cutouts`).
    size : int, (ny, nx) or Quantity, optional
        Stamp size for a sky position (default: the ``size`` given to :func:`cutouts`).
    stamp_id : int or str, optional
        Names the stamp when it is written out (default: the request's position).
    """

    dataset_type: str | None = None
    data_id: Mapping[str, int | str] | None = None
    run: str | None = None
    dataset_id: str | None = None
    box: Box | None = None
    ra: float | None = None
    dec: float | None = None
    size: Any = None
    stamp_id: int | str | None = None

    @property
    def image(self) -> str:
        """A readable name of the image this request asks for."""
        if self.dataset_id is not None:
            return f"dataset {self.dataset_id}"
        run = f" in run {self.run!r}" if self.run else ""
        return f"{self.dataset_type} {dict(self.data_id or {})}{run}"


def parse_requests(
    requests: Any,
    *,
    dataset_type: str | None = None,
    run: str | None = None,
    size: Any = None,
    data_id_keys: Sequence[str] | None = None,
) -> list[CutoutRequest]:
    """Turn a request table into :class:`CutoutRequest` objects, checking every row.

    Parameters
    ----------
    requests : astropy Table, sequence of mappings or of CutoutRequest, or a path
        One row per stamp. Columns with a meaning: ``dataset_type``, ``run``,
        ``data_id`` (a mapping), ``dataset_id`` or ``ref`` (a DatasetRef), a box as
        ``box`` or ``x0, y0, x1, y1``, a sky position as ``ra, dec`` (degrees),
        ``size`` and ``stamp_id``. Every other column is a data ID key (unless
        ``data_id_keys`` says which), so a table with columns ``visit, detector,
        ra, dec`` works as is. Missing or masked
        values (``None``, NaN, masked) count as absent. A path is read with
        :meth:`astropy.table.Table.read` (ECSV, FITS, Parquet, CSV ...).
    dataset_type, run : str, optional
        Defaults for rows that do not say.
    size : optional
        Default size for sky positions; a sky request with no size at all is an error.
    data_id_keys : sequence of str, optional
        The columns that make the data ID; the other columns (a catalogue's
        magnitudes, names ...) are then ignored.

    Returns
    -------
    list of CutoutRequest

    Raises
    ------
    InvalidCutoutError
        A row with neither or both of a box and a sky position, a half sky
        position, a non-integer box, or a sky position without a size.
    InvalidKeyError
        A row that does not name an image, or a bad data ID.
    """
    parsed = []
    for index, row in enumerate(_rows(requests)):
        try:
            request = row if isinstance(row, CutoutRequest) else _request_from_row(row, dataset_type, run,
                                                                                   data_id_keys)
            _check_request(request, size)
        except ObjButlerError as exc:
            raise type(exc)(f"request {index}: {exc}") from None
        parsed.append(request)
    return parsed


def _rows(requests: Any) -> Iterable[Any]:
    if isinstance(requests, str | os.PathLike):
        from astropy.table import Table

        requests = Table.read(requests)
    colnames = getattr(requests, "colnames", None)
    if colnames is not None:  # astropy Table
        return (dict(zip(colnames, row, strict=True)) for row in requests)
    if hasattr(requests, "to_dict") and hasattr(requests, "columns"):  # a data frame, without importing pandas
        return list(requests.to_dict("records"))
    return list(requests)


def _plain(value: Any) -> Any:
    """A table cell as a plain Python value, or None when it is missing."""
    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _request_from_row(
    row: Any, dataset_type: str | None, run: str | None, data_id_keys: Sequence[str] | None
) -> CutoutRequest:
    if not isinstance(row, Mapping):
        raise InvalidKeyError(f"expected a mapping or a CutoutRequest, got {type(row).__name__}")
    values = {str(key): _plain(value) for key, value in row.items()}
    ref = values.get("ref")
    dataset_id = ref.id if isinstance(ref, DatasetRef) else values.get("dataset_id")
    data_id = dict(values.get("data_id") or {})
    keys = data_id_keys if data_id_keys is not None else [k for k in values if k not in REQUEST_FIELDS]
    data_id.update({k: values[k] for k in keys if values.get(k) is not None})
    box = values.get("box")
    corners = [values.get(name) for name in ("x0", "y0", "x1", "y1")]
    if box is None and any(c is not None for c in corners):
        box = corners
    return CutoutRequest(
        dataset_type=values.get("dataset_type") or dataset_type,
        data_id=data_id or None,
        run=values.get("run") or run,
        dataset_id=str(dataset_id) if dataset_id is not None else None,
        box=as_box(box) if box is not None else None,
        ra=values.get("ra"),
        dec=values.get("dec"),
        size=values.get("size"),
        stamp_id=values.get("stamp_id"),
    )




def _check_request(request: CutoutRequest, default_size: Any) -> None:
    sky = (request.ra is not None, request.dec is not None)
    if sky[0] != sky[1]:
        raise InvalidCutoutError("a sky position needs both ra and dec")
    if (request.box is not None) == sky[0]:
        raise InvalidCutoutError("give exactly one of a box (x0, y0, x1, y1) and a sky position (ra, dec)")
    if sky[0] and request.size is None and default_size is None:
        raise InvalidCutoutError("a sky position needs a size (a size column, or size=)")
    if request.dataset_id is None:
        if request.dataset_type is None or request.data_id is None:
            raise InvalidKeyError("name the image: dataset_type and a data ID, or dataset_id / ref")
        validate_data_id(request.data_id)


# -- results -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One failed request (or ingest item).

    Parameters
    ----------
    index : int
        Position of the request in the caller's table.
    target : str
        The image it asked for (or, for ingest, the file or object).
    error_type : str
        Class name of the error (``NotFoundError``, ``InvalidCutoutError``, ...).
    message : str
        The error message.
    dataset_id : str or None
        The image's dataset UUID when it was resolved.
    """

    index: int
    target: str
    error_type: str
    message: str
    dataset_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (for a table or a log)."""
        return dataclasses.asdict(self)

    def to_exception(self, indices: Sequence[int] | None = None) -> Exception:
        """The error re-created on this side: its objbutler (or builtin) class where that is possible."""
        which = f"requests {list(indices)}" if indices else f"request {self.index}"
        text = f"{which} ({self.target}): {self.message}"
        cls = getattr(_errors, self.error_type, None) or getattr(builtins, self.error_type, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            with contextlib.suppress(Exception):
                return cls(text)
        return RuntimeError(f"{self.error_type}: {text}")


class _Collected:
    """What cutout and ingest results share: the error records and how to raise them."""

    errors: list[ErrorRecord]
    _noun = "requests"

    @property
    def ok(self) -> bool:
        """True when every request succeeded."""
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise an :class:`ExceptionGroup` with one error per (target, error) if any request failed."""
        if not self.errors:
            return
        grouped: dict[tuple[str, str, str], list[ErrorRecord]] = defaultdict(list)
        for record in self.errors:
            grouped[(record.target, record.error_type, record.message)].append(record)
        exceptions = [records[0].to_exception([r.index for r in records]) for records in grouped.values()]
        raise ExceptionGroup(f"{len(self.errors)} of {len(self)} {self._noun} failed", exceptions)

    def __len__(self) -> int:
        raise NotImplementedError


@dataclasses.dataclass
class CutoutResults(_Collected):
    """What :func:`cutouts` returns, in request order.

    Parameters
    ----------
    stamps : list of Cutout or None
        ``stamps[i]`` answers request ``i`` (its ``index`` is ``i``); None where
        the request failed, or where stamps were written out instead.
    outputs : list
        With ``out=``: the written file (Path) or stamp dataset (DatasetRef) per
        request, None where it failed. Empty otherwise.
    errors : list of ErrorRecord
        One per failed request, sorted by request.
    """

    stamps: list[Cutout | None]
    outputs: list[Any]
    errors: list[ErrorRecord]

    def __len__(self) -> int:
        return len(self.stamps)


@dataclasses.dataclass
class IngestResults(_Collected):
    """What :func:`ingest` returns, in item order.

    Parameters
    ----------
    refs : list of DatasetRef or None
        The committed dataset per item, None where it failed.
    errors : list of ErrorRecord
        One per failed item, sorted by item.
    """

    refs: list[DatasetRef | None]
    errors: list[ErrorRecord]
    _noun = "items"

    def __len__(self) -> int:
        return len(self.refs)


def _record(index: int, target: str, exc: BaseException, dataset_id: str | None = None) -> ErrorRecord:
    return ErrorRecord(index, target, type(exc).__name__, str(exc), dataset_id)


# -- outputs -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class FilesOutput:
    """Write each stamp as a FITS file (WCS and ``BBOX_*`` cards) into a directory the workers can reach.

    Files are named ``{stem}-{index:05d}.fits`` after the request's position.
    """

    directory: str | os.PathLike[str]
    stem: str = "stamp"


@dataclasses.dataclass(frozen=True, slots=True)
class RepositoryOutput:
    """Put each stamp into an (existing) repository as a dataset with provenance to its image.

    Each stamp becomes ``dataset_type`` with data ID ``{"stamp": stamp_id}`` (the
    request's ``stamp_id``, else its position) in ``run``; its ``inputs`` and
    ``derived_from`` name the parent image, and its header carries ``BBOX_*`` and
    ``PARENTID``.
    """

    uri: str
    run: str
    dataset_type: str = "cutout"
    format: str | None = None
    store_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


Output = FilesOutput | RepositoryOutput


# -- the worker side ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Opener:
    """How a worker opens the repository: its URI and store options, nothing else."""

    uri: str
    options: Mapping[str, Any]

    def open(self) -> Butler:
        return Butler(self.uri, **self.options)


@dataclasses.dataclass(frozen=True, slots=True)
class _Item:
    index: int
    box: Box | None
    ra: float | None
    dec: float | None
    size: Any
    stamp_id: int | str | None


@dataclasses.dataclass(frozen=True, slots=True)
class _ImageGroup:
    ref: DatasetRef
    items: tuple[_Item, ...]

    @property
    def target(self) -> str:
        return f"{self.ref.dataset_type} {self.ref.data_id} in run {self.ref.run!r}"


@dataclasses.dataclass(frozen=True, slots=True)
class _CutSpec:
    mode: ClipMode
    fill_value: float
    frame: str
    out: Output | None


@dataclasses.dataclass(slots=True)
class _TaskResult:
    values: dict[int, Any]
    errors: list[ErrorRecord]


def _cut_task(opener: _Opener, spec: _CutSpec, groups: Sequence[_ImageGroup]) -> _TaskResult:
    """One task: open the repository, cut every image group (one vectorized get each), write or return."""
    butler = opener.open()
    out = spec.out
    out_butler = Butler(out.uri, **out.store_options) if isinstance(out, RepositoryOutput) else None
    result = _TaskResult({}, [])
    for values, errors in run_concurrently(
        lambda group: _cut_group(butler, out_butler, spec, group), list(groups), IMAGES_IN_FLIGHT
    ):
        result.values.update(values)
        result.errors.extend(errors)
    return result


def _cut_group(
    butler: Butler, out_butler: Butler | None, spec: _CutSpec, group: _ImageGroup
) -> tuple[dict[int, Any], list[ErrorRecord]]:
    errors: list[ErrorRecord] = []
    failed: set[int] = set()
    parent: list[Any] = []

    def fail(items: Iterable[_Item], exc: BaseException) -> None:
        for item in items:
            if item.index not in failed:
                failed.add(item.index)
                errors.append(_record(item.index, group.target, exc, group.ref.id))

    def parent_wcs() -> Any:  # read at most once per image, and only when needed
        if not parent:
            parent.append(butler.get_wcs(group.ref))
        return parent[0]

    try:
        boxes = _boxes(group, spec.frame, parent_wcs, fail)
        items = [item for item in group.items if item.index in boxes]
        cut = _isolating(
            lambda part: butler.get_cutouts(
                group.ref, [boxes[i.index] for i in part], mode=spec.mode, fill_value=spec.fill_value
            ),
            items,
            fail,
        )
        for item, stamp in cut:
            stamp.index = item.index
        if spec.out is None:
            return _shippable(cut, parent_wcs), errors
        values = _deliver(out_butler, spec.out, group.ref, cut, fail)
    except Exception as exc:  # the image itself is missing or unreadable: every request of it fails
        fail(group.items, exc)
        return {}, errors
    return values, errors


def _boxes(
    group: _ImageGroup,
    frame: str,
    parent_wcs: Callable[[], Any],
    fail: Callable[[Iterable[_Item], BaseException], None],
) -> dict[int, Box]:
    """Pixel boxes per request: given ones as they are, sky positions through the image's WCS."""
    boxes = {item.index: item.box for item in group.items if item.box is not None}
    sky = [item for item in group.items if item.box is None]
    if not sky:
        return boxes
    wcs = parent_wcs()
    if wcs is None:
        fail(sky, NotSupportedError(f"{group.target} has no WCS: use pixel boxes"))
        return boxes
    by_size: dict[str, list[_Item]] = defaultdict(list)
    for item in sky:
        by_size[repr(item.size)].append(item)
    for items in by_size.values():
        to_boxes = functools.partial(_sky_boxes, wcs, frame, items[0].size)
        for item, box in _isolating(to_boxes, items, fail):
            boxes[item.index] = box
    return boxes


def _sky_boxes(wcs: Any, frame: str, size: Any, items: list[_Item]) -> list[Box]:
    from astropy.coordinates import SkyCoord

    coords = SkyCoord([i.ra for i in items], [i.dec for i in items], unit="deg", frame=frame)
    return boxes_from_skycoords(coords, wcs, size)


def _isolating(
    batch: Callable[[list[_Item]], Sequence[Any]],
    items: list[_Item],
    fail: Callable[[Iterable[_Item], BaseException], None],
) -> list[tuple[_Item, Any]]:
    """Run ``batch`` on all items at once; if one request is bad, find it and run the rest.

    Only :class:`InvalidCutoutError` (a box or position that cannot be cut) is
    pinned on single requests; any other error is the image's and propagates.
    """
    if not items:
        return []
    try:
        return list(zip(items, batch(items), strict=True))
    except InvalidCutoutError as exc:
        if len(items) == 1:
            fail(items, exc)
            return []
    done: list[tuple[_Item, Any]] = []
    for item in items:
        try:
            done.extend(zip([item], batch([item]), strict=True))
        except InvalidCutoutError as exc:
            # the message counts requests within this one-item call: drop its "request 0: "
            message = re.sub(r"^request 0: ", "", re.sub(r"^sky position 0 ", "sky position ", str(exc)))
            fail([item], InvalidCutoutError(message))
    return done


# A stamp's WCS is the parent's shifted to the stamp (cutout_wcs). Pickling an astropy WCS per stamp
# costs milliseconds and rounds its numbers (WCS pickles through a 12-digit header), so a task ships
# the parent WCS once, as a header written with 17 significant digits, and the client derives each
# stamp's WCS from it (lazily, Cutout.from_parent) exactly as get_cutouts does: bit for bit. A WCS
# that this header cannot carry exactly (lookup-table distortions) is shipped per stamp instead.
_EXACT_WCS = WCSHDO_all | WCSHDO_SIP | WCSHDO_P17


@dataclasses.dataclass(frozen=True, slots=True)
class _WcsHeader:
    """A WCS as a 17-digit header (plus its array shape): rebuilt bit for bit on the other side."""

    text: str
    array_shape: tuple[int, ...] | None

    @classmethod
    def exact(cls, wcs: WCS) -> _WcsHeader | None:
        """The header of ``wcs``, or None if rebuilding from it would not give the same WCS."""
        if any(getattr(wcs, name) is not None for name in ("cpdis1", "cpdis2", "det2im1", "det2im2")):
            return None
        shipped = cls(wcs.to_header(relax=_EXACT_WCS).tostring(), wcs.array_shape)
        return shipped if _same_wcs(shipped.rebuild(), wcs) else None

    def rebuild(self) -> WCS:
        from astropy.io import fits

        wcs = WCS(fits.Header.fromstring(self.text), relax=True)
        if self.array_shape is not None:
            wcs.array_shape = self.array_shape
        return wcs


def _same_wcs(a: WCS, b: WCS) -> bool:
    if not a.wcs.compare(b.wcs) or (a.sip is None) != (b.sip is None):
        return False
    if a.sip is None or b.sip is None:
        return True
    pairs = [(a.sip.crpix, b.sip.crpix), (a.sip.a, b.sip.a), (a.sip.b, b.sip.b), (a.sip.ap, b.sip.ap),
             (a.sip.bp, b.sip.bp)]
    return all((x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))
               for x, y in pairs)


@dataclasses.dataclass(frozen=True, slots=True)
class _Stamp:
    """A stamp on its way back: pixels and bbox, and its WCS as the parent's header (or itself)."""

    data: np.ndarray
    bbox: Box
    parent: _WcsHeader | None
    wcs: WCS | None


def _shippable(cut: list[tuple[_Item, Cutout]], parent_wcs: Callable[[], Any]) -> dict[int, Any]:
    if not cut:
        return {}
    parent = parent_wcs()
    header = _WcsHeader.exact(parent) if parent is not None else None
    return {
        item.index: _Stamp(stamp.data, stamp.bbox, header, stamp.wcs if header is None else None)
        for item, stamp in cut
    }


def _unship(index: int, stamp: _Stamp, parents: dict[_WcsHeader, WCS]) -> Cutout:
    if stamp.parent is None:
        return Cutout(stamp.data, stamp.bbox, stamp.wcs, index)
    if stamp.parent not in parents:
        parents[stamp.parent] = stamp.parent.rebuild()
    return Cutout.from_parent(stamp.data, stamp.bbox, parents[stamp.parent], index)


def _deliver(
    out_butler: Butler | None,
    out: Output,
    parent: DatasetRef,
    cut: list[tuple[_Item, Cutout]],
    fail: Callable[[Iterable[_Item], BaseException], None],
) -> dict[int, Any]:
    if isinstance(out, FilesOutput):
        from objbutler.stamps_io import write_fits_stamps

        paths = write_fits_stamps([stamp for _, stamp in cut], Path(out.directory), out.stem)
        return {item.index: path for (item, _), path in zip(cut, paths, strict=True)}
    assert out_butler is not None
    written = {}
    for item, stamp in cut:
        try:
            written[item.index] = _put_stamp(out_butler, out, parent, item, stamp)
        except Exception as exc:  # e.g. the stamp ID is taken: this stamp fails, the others go on
            fail([item], exc)
    return written


def _put_stamp(butler: Butler, out: RepositoryOutput, parent: DatasetRef, item: _Item, stamp: Cutout) -> DatasetRef:
    from astropy.nddata import NDData

    meta = {f"BBOX_{name.upper()}": getattr(stamp.bbox, name) for name in ("x0", "y0", "x1", "y1")}
    meta["PARENTID"] = parent.id
    stamp_id = item.stamp_id if item.stamp_id is not None else item.index
    return butler.put(
        NDData(stamp.data, wcs=stamp.wcs, meta=meta), out.dataset_type, {"stamp": stamp_id}, run=out.run,
        format=out.format, inputs=[parent], derived_from=[parent],
    )


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
    refs, errors = _resolve(Butler(butler_uri, **options), parsed)
    groups = _group(parsed, refs, size)
    target = stamps_per_task or _auto_task_size(len(parsed), _threads(client))
    tasks = _pack(groups, target)
    spec = _CutSpec(mode, float(fill_value), frame, sink)
    values: dict[int, Any] = {}
    parents: dict[_WcsHeader, WCS] = {}
    for task, outcome in _run(client, _cut_task, (_Opener(butler_uri, options), spec), tasks):
        if isinstance(outcome, BaseException):  # the task itself died (worker lost, repository gone)
            errors.extend(_record(i.index, g.target, outcome, g.ref.id) for g in task for i in g.items)
            continue
        for index, value in outcome.values.items():
            values[index] = _unship(index, value, parents) if isinstance(value, _Stamp) else value
        errors.extend(outcome.errors)
    ordered = [values.get(i) for i in range(len(parsed))]
    results = CutoutResults(
        stamps=ordered if sink is None else [None] * len(parsed),
        outputs=ordered if sink is not None else [],
        errors=sorted(errors, key=lambda r: r.index),
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
            exc: Exception = InvalidKeyError(f"{request.image} exists in several runs {runs}: give a run")
        else:
            exc = NotFoundError(f"no {request.image} in {butler.uri}")
        errors.append(_record(index, request.image, exc, request.dataset_id))
    return refs, errors


def _group(requests: Sequence[CutoutRequest], refs: Sequence[DatasetRef | None], size: Any) -> list[_ImageGroup]:
    """Requests per image, images in order of their first request."""
    items: dict[DatasetRef, list[_Item]] = {}
    for index, (request, ref) in enumerate(zip(requests, refs, strict=True)):
        if ref is None:
            continue
        item_size = request.size if request.size is not None else size
        item = _Item(index, request.box, request.ra, request.dec, item_size if request.box is None else None,
                     request.stamp_id)
        items.setdefault(ref, []).append(item)
    return [_ImageGroup(ref, tuple(its)) for ref, its in items.items()]


def _pack(groups: Sequence[_ImageGroup], target: int) -> list[list[_ImageGroup]]:
    """Split big image groups into near-equal parts of at most ``target``; pack small ones together."""
    parts: list[_ImageGroup] = []
    for group in groups:
        pieces = math.ceil(len(group.items) / target)
        step = math.ceil(len(group.items) / pieces)
        parts.extend(_ImageGroup(group.ref, group.items[i : i + step]) for i in range(0, len(group.items), step))
    tasks: list[list[_ImageGroup]] = []
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


# -- ingest ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _IngestSpec:
    dataset_type: str
    run: str
    format: str | None
    header_keys: Mapping[str, str]
    hdu: str | None


def _ingest_task(
    opener: _Opener, spec: _IngestSpec, batch: tuple[list[int], list[Any], list[Mapping[str, Any]]]
) -> _TaskResult:
    """One task: open the repository and put each item (a FITS path or an in-memory object)."""
    from objbutler.ingest import ingest_files

    butler = opener.open()
    result = _TaskResult({}, [])
    for index, item, data_id in zip(*batch, strict=True):
        target = _describe(item)
        try:
            if isinstance(item, str | os.PathLike):
                refs, failures = ingest_files(
                    butler, spec.dataset_type, [Path(item)], data_id, spec.header_keys, spec.run, spec.format, spec.hdu
                )
                if failures:
                    raise failures[0][1]
                result.values[index] = refs[0]
            else:
                result.values[index] = butler.put(item, spec.dataset_type, data_id, spec.run, format=spec.format)
        except Exception as exc:
            result.errors.append(_record(index, target, exc))
    return result


def _describe(item: Any) -> str:
    return os.fspath(item) if isinstance(item, str | os.PathLike) else f"item of type {type(item).__name__}"


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
    for i, future in zip(objects, client.scatter([shipped[i] for i in objects]), strict=True):
        shipped[i] = future
    batches = [
        (list(range(start, min(start + per_task, len(items)))), shipped[start : start + per_task],
         ids[start : start + per_task])
        for start in range(0, len(items), per_task)
    ]
    spec = _IngestSpec(dataset_type, run, format, dict(header_keys or {}), hdu)
    refs: list[DatasetRef | None] = [None] * len(items)
    errors: list[ErrorRecord] = []
    for (indices, _, _), outcome in _run(client, _ingest_task, (_Opener(butler_uri, options), spec), batches):
        if isinstance(outcome, BaseException):
            errors.extend(_record(i, _describe(items[i]), outcome) for i in indices)
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
            LocalCluster(n_workers=workers, processes=True, threads_per_worker=1, host="127.0.0.1",
                         dashboard_address=None) as cluster,
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
