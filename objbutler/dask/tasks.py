"""The worker side of a campaign: task bodies that open the repository themselves and cut or put."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.wcs import WCS, WCSHDO_P17, WCSHDO_all
from astropy.wcs.wcs import WCSHDO_SIP

from objbutler.butler import Butler
from objbutler.cutouts import Box, ClipMode, Cutout, boxes_from_skycoords
from objbutler.dask.results import ErrorRecord, FilesOutput, Output, RepositoryOutput, error_record
from objbutler.errors import InvalidCutoutError, NotSupportedError
from objbutler.registry.records import DatasetRef
from objbutler.stores import budget_of, run_concurrently

__all__ = [
    "IMAGES_IN_FLIGHT", "CutSpec", "ImageGroup", "IngestSpec", "Item", "Opener", "Stamp", "TaskResult", "WcsHeader",
    "cut_task", "describe", "ingest_task", "unship",
]

IMAGES_IN_FLIGHT = 4


@dataclasses.dataclass(frozen=True, slots=True)
class Opener:
    """How a worker opens the repository: its URI and store options, nothing else."""

    uri: str
    options: Mapping[str, Any]

    def open(self) -> Butler:
        return Butler(self.uri, **self.options)


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    index: int
    box: Box | None
    ra: float | None
    dec: float | None
    size: Any
    stamp_id: int | str | None


@dataclasses.dataclass(frozen=True, slots=True)
class ImageGroup:
    ref: DatasetRef
    items: tuple[Item, ...]

    @property
    def target(self) -> str:
        return f"{self.ref.dataset_type} {self.ref.data_id} in run {self.ref.run!r}"


@dataclasses.dataclass(frozen=True, slots=True)
class CutSpec:
    mode: ClipMode
    fill_value: float
    frame: str
    out: Output | None


@dataclasses.dataclass(slots=True)
class TaskResult:
    values: dict[int, Any]
    errors: list[ErrorRecord]


def cut_task(opener: Opener, spec: CutSpec, groups: Sequence[ImageGroup]) -> TaskResult:
    """One task: open the repository, cut every image group (one vectorized get each), write or return."""
    butler = opener.open()
    out = spec.out
    out_butler = Butler(out.uri, **out.store_options) if isinstance(out, RepositoryOutput) else None
    result = TaskResult({}, [])
    for values, errors in run_concurrently(
        lambda group: _cut_group(butler, out_butler, spec, group), list(groups), IMAGES_IN_FLIGHT,
        budget_of(butler.store),
    ):
        result.values.update(values)
        result.errors.extend(errors)
    return result


def _cut_group(
    butler: Butler, out_butler: Butler | None, spec: CutSpec, group: ImageGroup
) -> tuple[dict[int, Any], list[ErrorRecord]]:
    errors: list[ErrorRecord] = []
    failed: set[int] = set()
    parent: list[Any] = []

    def fail(items: Iterable[Item], exc: BaseException) -> None:
        for item in items:
            if item.index not in failed:
                failed.add(item.index)
                errors.append(error_record(item.index, group.target, exc, group.ref.id))

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
    group: ImageGroup,
    frame: str,
    parent_wcs: Callable[[], Any],
    fail: Callable[[Iterable[Item], BaseException], None],
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
    by_size: dict[str, list[Item]] = defaultdict(list)
    for item in sky:
        by_size[repr(item.size)].append(item)
    for items in by_size.values():
        to_boxes = functools.partial(_sky_boxes, wcs, frame, items[0].size)
        for item, box in _isolating(to_boxes, items, fail):
            boxes[item.index] = box
    return boxes


def _sky_boxes(wcs: Any, frame: str, size: Any, items: list[Item]) -> list[Box]:
    from astropy.coordinates import SkyCoord

    coords = SkyCoord([i.ra for i in items], [i.dec for i in items], unit="deg", frame=frame)
    return boxes_from_skycoords(coords, wcs, size)


def _isolating(
    batch: Callable[[list[Item]], Sequence[Any]],
    items: list[Item],
    fail: Callable[[Iterable[Item], BaseException], None],
) -> list[tuple[Item, Any]]:
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
    done: list[tuple[Item, Any]] = []
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
class WcsHeader:
    """A WCS as a 17-digit header (plus its array shape): rebuilt bit for bit on the other side."""

    text: str
    array_shape: tuple[int, ...] | None

    @classmethod
    def exact(cls, wcs: WCS) -> WcsHeader | None:
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
class Stamp:
    """A stamp on its way back: pixels and bbox, its WCS as the parent's header (or itself), and its overlap."""

    data: np.ndarray
    bbox: Box
    parent: WcsHeader | None
    wcs: WCS | None
    slices_original: tuple[slice, slice] | None = None


def _shippable(cut: list[tuple[Item, Cutout]], parent_wcs: Callable[[], Any]) -> dict[int, Any]:
    if not cut:
        return {}
    parent = parent_wcs()
    header = WcsHeader.exact(parent) if parent is not None else None
    return {
        item.index: Stamp(stamp.data, stamp.bbox, header, stamp.wcs if header is None else None,
                          stamp.slices_original)
        for item, stamp in cut
    }


def unship(index: int, stamp: Stamp, parents: dict[WcsHeader, WCS]) -> Cutout:
    if stamp.parent is None:
        cutout = Cutout(stamp.data, stamp.bbox, stamp.wcs, index)
    else:
        if stamp.parent not in parents:
            parents[stamp.parent] = stamp.parent.rebuild()
        cutout = Cutout.from_parent(stamp.data, stamp.bbox, parents[stamp.parent], index)
    if stamp.slices_original is not None:
        cutout.slices_original = stamp.slices_original
    return cutout


def _deliver(
    out_butler: Butler | None,
    out: Output,
    parent: DatasetRef,
    cut: list[tuple[Item, Cutout]],
    fail: Callable[[Iterable[Item], BaseException], None],
) -> dict[int, Any]:
    if isinstance(out, FilesOutput):
        from objbutler.stamps_io import write_fits_stamps

        paths = write_fits_stamps([stamp for _, stamp in cut], Path(out.directory), out.stem)
        return {item.index: path for (item, _), path in zip(cut, paths, strict=True)}
    assert out_butler is not None
    written = {}
    # one group commit for the task's stamps; a stamp refused (e.g. its ID is taken) fails alone
    outcomes = out_butler.put_many([_stamp_item(out, parent, item, stamp) for item, stamp in cut], out.run,
                                   format=out.format, errors="return")
    for (item, _), outcome in zip(cut, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            fail([item], outcome)
        else:
            written[item.index] = outcome
    return written


def _stamp_item(out: RepositoryOutput, parent: DatasetRef, item: Item, stamp: Cutout) -> dict[str, Any]:
    """A :meth:`Butler.put_many` item for one stamp: its pixels, bbox and parent as provenance."""
    from astropy.nddata import NDData

    meta = {f"BBOX_{name.upper()}": getattr(stamp.bbox, name) for name in ("x0", "y0", "x1", "y1")}
    meta["PARENTID"] = parent.id
    stamp_id = item.stamp_id if item.stamp_id is not None else item.index
    return {"obj": NDData(stamp.data, wcs=stamp.wcs, meta=meta), "dataset_type": out.dataset_type,
            "data_id": {"stamp": stamp_id}, "inputs": [parent], "derived_from": [parent]}


@dataclasses.dataclass(frozen=True, slots=True)
class IngestSpec:
    dataset_type: str
    run: str
    format: str | None
    header_keys: Mapping[str, str]
    hdu: str | None


def ingest_task(
    opener: Opener, spec: IngestSpec, batch: tuple[list[int], list[Any], list[Mapping[str, Any]]]
) -> TaskResult:
    """One task: open the repository and put each item (a FITS path or an in-memory object)."""
    from objbutler.ingest import put_files

    butler = opener.open()
    result = TaskResult({}, [])
    files = [(index, item, data_id) for index, item, data_id in zip(*batch, strict=True)
             if isinstance(item, str | os.PathLike)]
    objects = [(index, item, data_id) for index, item, data_id in zip(*batch, strict=True)
               if not isinstance(item, str | os.PathLike)]
    outcomes: list[tuple[int, Any, Any]] = []  # one group commit for the task's files, one for its objects
    if files:
        put = put_files(butler, spec.dataset_type, [(Path(item), data_id) for _, item, data_id in files],
                        spec.header_keys, spec.run, spec.format, spec.hdu)
        outcomes.extend((index, item, outcome) for (index, item, _), outcome in zip(files, put, strict=True))
    if objects:
        put = butler.put_many([(item, spec.dataset_type, data_id) for _, item, data_id in objects], spec.run,
                              format=spec.format, errors="return")
        outcomes.extend((index, item, outcome) for (index, item, _), outcome in zip(objects, put, strict=True))
    for index, item, outcome in sorted(outcomes, key=lambda entry: entry[0]):
        if isinstance(outcome, BaseException):
            result.errors.append(error_record(index, describe(item), outcome))
        else:
            result.values[index] = outcome
    return result


def describe(item: Any) -> str:
    return os.fspath(item) if isinstance(item, str | os.PathLike) else f"item of type {type(item).__name__}"


