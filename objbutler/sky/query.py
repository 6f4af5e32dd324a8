"""Sky queries on a repository: which images hold these positions, and their stamps.

:func:`find_images` asks the registry state's sky index (:mod:`objbutler.sky.index`): no image is
read. :func:`cutouts_at` then groups the positions by image, turns them into pixel boxes with the
WCS rebuilt from the registry (no header read), and makes one vectorized cutout call per image
(:func:`objbutler.formats.fits_cutouts.read_fits_cutouts` with the registry's pixel layout, or the
Zarr reader), every image in one pool bounded by the store's concurrency. For a plain FITS image
objbutler wrote, one stamp costs one range request.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from objbutler.cutouts import Box, ClipMode, Cutout
from objbutler.errors import InvalidCutoutError, NotSupportedError, ObjButlerError
from objbutler.sky.footprint import sky_wcs
from objbutler.sky.geometry import radec_to_xyz
from objbutler.sky.index import state_sky_index

if TYPE_CHECKING:
    from astropy.coordinates import SkyCoord
    from astropy.wcs import WCS

    from objbutler.registry.records import DatasetRef
    from objbutler.registry.state import RegistryState
    from objbutler.stores import Store

__all__ = ["SkyCutouts", "Skipped", "as_positions", "cutouts_at", "find_images", "iter_image_cutouts", "mjd_range"]


def as_positions(positions: Any) -> tuple[SkyCoord, np.ndarray, bool]:
    """Sky positions as an ICRS SkyCoord array, their unit vectors, and whether one scalar was given."""
    from astropy.coordinates import SkyCoord

    if not isinstance(positions, SkyCoord):
        raise InvalidCutoutError(f"positions must be an astropy SkyCoord, got {type(positions).__name__}")
    scalar = positions.isscalar
    icrs = positions.icrs
    coords = icrs.reshape((1,)) if scalar else icrs.ravel()
    ra, dec = coords.ra.deg, coords.dec.deg
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise InvalidCutoutError("sky positions must be finite")
    return coords, radec_to_xyz(ra, dec), scalar


def mjd_range(time: Any) -> tuple[float, float] | None:
    """``(start, stop)`` MJD from None, a pair of MJDs, ISO strings or astropy Times (stop excluded)."""
    if time is None:
        return None
    from astropy.time import Time

    try:
        start, stop = time
    except (TypeError, ValueError):
        raise InvalidCutoutError(f"time must be a (start, stop) pair, got {time!r}") from None

    def one(value: Any) -> float:
        if value is None:
            return math.inf
        if isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool):
            return float(value)
        try:
            return float((value if isinstance(value, Time) else Time(value)).mjd)
        except (TypeError, ValueError) as exc:
            raise InvalidCutoutError(f"time bound {value!r} is not an MJD, an ISO date or an astropy Time") from exc

    low = -math.inf if start is None else one(start)
    return low, one(stop)


def find_images(state: RegistryState, positions: Any, dataset_type: str | None = None, run: str | None = None,
                where: Mapping[str, Any] | None = None, time: Any = None) -> list[list[DatasetRef]]:
    """For each position, the refs whose footprint contains it, ordered by observation time.

    Images without a known time come last, in registry order. See
    :meth:`objbutler.butler.Butler.find_images`.
    """
    _, xyz, _ = as_positions(positions)
    position, refs = state_sky_index(state).find(xyz, dataset_type, where, run, mjd_range(time))
    out: list[list[DatasetRef]] = [[] for _ in range(len(xyz))]
    for index, ref in zip(position.tolist(), refs, strict=True):
        out[index].append(ref)
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Skipped:
    """A (position, image) pair :func:`cutouts_at` found but gave no stamp for, and why."""

    position: int
    ref: DatasetRef
    reason: str


class SkyCutouts(list):
    """Per position, a list of ``(DatasetRef, Cutout)`` pairs in time order; ``.skipped`` says what was not cut.

    A position in a footprint yields no stamp when the clipping mode refuses its box (``strict`` near
    an edge, ``trim`` for a position just outside the pixel bounds within the footprint's
    ``error_px``) or, with ``on_error="skip"``, when the image could not be read.
    """

    skipped: list[Skipped]


@dataclasses.dataclass
class _ImageJob:
    ref: DatasetRef
    wcs: WCS
    positions: list[int]  # caller's position index per stamp
    boxes: np.ndarray  # (N, 4) int64 corners x0, y0, x1, y1 per stamp
    pixels: list[tuple[float, float]]
    slots: list[int] = dataclasses.field(default_factory=list)  # per stamp, its pair in the index's answer


def _stamp_size(size: Any, wcs: WCS) -> tuple[int, int]:
    from objbutler.cutouts import size_in_pixels

    return size_in_pixels(size, wcs)


_CELESTIAL: weakref.WeakKeyDictionary[Any, tuple[Any, bool]] = weakref.WeakKeyDictionary()
_CELESTIAL_LOCK = threading.Lock()


def _celestial(wcs: WCS) -> tuple[Any, bool]:
    """The celestial sub-WCS skycoord_to_pixel uses, and whether its frame is ICRS in degrees (cached per WCS)."""
    with _CELESTIAL_LOCK:
        known = _CELESTIAL.get(wcs)
    if known is None:
        from astropy.coordinates import ICRS
        from astropy.wcs import WCSSUB_LATITUDE, WCSSUB_LONGITUDE
        from astropy.wcs.utils import wcs_to_celestial_frame

        sub = wcs.sub([WCSSUB_LONGITUDE, WCSSUB_LATITUDE])
        try:
            frame = wcs_to_celestial_frame(sub)
        except ValueError:
            frame = None
        plain = isinstance(frame, ICRS) and [str(unit) for unit in sub.wcs.cunit] == ["deg", "deg"]
        known = (sub, plain)
        with _CELESTIAL_LOCK:
            _CELESTIAL[wcs] = known
    return known


def _pixel_positions(coords: SkyCoord, wcs: WCS, radec: tuple[np.ndarray, np.ndarray] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Positions in 0-based parent pixels, as Cutout2D computes them, but never swapped on a transposed WCS.

    As ``skycoord_to_pixel(mode="all")``, except where Cutout2D swaps x and y (Dec on the first axis).
    ``coords`` are ICRS (:func:`as_positions`). For an ICRS WCS in degrees this is exactly what
    ``skycoord_to_pixel`` computes (the frame transform is the identity), without its 1.5 ms of
    SkyCoord and sub-WCS work per call; other frames go through it. ``radec``: the coordinates'
    RA and Dec in degrees when the caller has them.
    """
    sub, plain = _celestial(wcs)
    if plain:
        ra, dec = radec if radec is not None else (np.atleast_1d(coords.ra.deg), np.atleast_1d(coords.dec.deg))
        x, y = sub.all_world2pix(ra, dec, 0)
    else:
        from astropy.wcs.utils import skycoord_to_pixel

        x, y = skycoord_to_pixel(coords, wcs, origin=0, mode="all")
    if wcs.wcs.lng > wcs.wcs.lat:
        # A transposed WCS (Dec on the first axis, as SDSS frames): both paths go through the celestial sub-WCS,
        # whose pixel axes follow (longitude, latitude), so they give (y, x). Cutout2D has the same flaw
        # (astropy issue #10468); get_cutouts and the sky index do not, and neither may this.
        x, y = y, x
    return np.atleast_1d(np.asarray(x, dtype=float)), np.atleast_1d(np.asarray(y, dtype=float))


_FAR = 2.0**52
"""Pixel coordinates beyond this are not a position on the image (nor exact as floats)."""


def plan_images(coords: SkyCoord, position: np.ndarray, refs: Sequence[DatasetRef], size: Any,
                mode: ClipMode) -> tuple[list[_ImageJob], list[Skipped]]:
    """Group (position, image) pairs by image and turn each into a pixel box (no I/O).

    One WCS call per image places all its positions; the boxes, their clipping and the grouping
    are numpy operations over every pair at once, so an image costs its WCS call and a stamp no
    Python object but the pixel position Cutout2D reports (see ``docs/design.md``).
    """
    ra_all, dec_all = np.atleast_1d(coords.ra.deg), np.atleast_1d(coords.dec.deg)
    codes: dict[str, int] = {}
    images: list[DatasetRef] = []
    for ref in refs:
        if codes.setdefault(ref.id, len(codes)) == len(images):
            images.append(ref)
    pairs = len(refs)
    image_of = np.fromiter((codes[ref.id] for ref in refs), dtype=np.int64, count=pairs)
    order = np.argsort(image_of, kind="stable")  # pairs by image, each image's in the index's order
    bounds = np.searchsorted(image_of[order], np.arange(len(images) + 1)).tolist()
    # per pair: pixel position, stamp size (ny, nx) and image shape (ny, nx); NaN/0 where not planned
    xs, ys = np.full(pairs, np.nan), np.full(pairs, np.nan)
    sides = np.zeros((pairs, 4), dtype=np.int64)
    planned = np.zeros(pairs, dtype=bool)
    wcs_of: list[WCS | None] = [None] * len(images)
    skipped: list[Skipped] = []
    for code, ref in enumerate(images):
        slots = order[bounds[code] : bounds[code + 1]]
        if ref.format not in ("fits", "zarr"):
            skipped += [Skipped(i, ref, f"{ref.format} is not an image format") for i in position[slots].tolist()]
            continue
        wcs = wcs_of[code] = _registry_wcs(ref)
        if wcs is None:
            reason = "the registry's WCS cards do not build a WCS"
            skipped += [Skipped(i, ref, reason) for i in position[slots].tolist()]
            continue
        indices = position[slots]
        xs[slots], ys[slots] = _pixel_positions(coords[indices] if not _celestial(wcs)[1] else coords, wcs,
                                                (ra_all[indices], dec_all[indices]))
        sides[slots] = (*_stamp_size(size, wcs), *(int(n) for n in ref.sky["shape"]))  # type: ignore[index]
        planned[slots] = True
    placed = planned & np.isfinite(xs) & np.isfinite(ys) & (np.abs(xs) < _FAR) & (np.abs(ys) < _FAR)
    # Cutout2D's rounding (x0 = ceil(x - nx / 2)), as math.ceil gives it per stamp
    x0 = np.ceil(np.where(placed, xs, 0.0) - sides[:, 1] / 2.0).astype(np.int64)
    y0 = np.ceil(np.where(placed, ys, 0.0) - sides[:, 0] / 2.0).astype(np.int64)
    boxes = np.column_stack([x0, y0, x0 + sides[:, 1], y0 + sides[:, 0]])
    keep = placed & _accepted(boxes, sides[:, 2], sides[:, 3], mode)
    for slot in np.flatnonzero(planned & ~placed).tolist():
        skipped.append(Skipped(int(position[slot]), refs[slot], "the WCS gives no pixel position"))
    for slot in np.flatnonzero(placed & ~keep).tolist():
        box, (ny, nx) = Box(*boxes[slot].tolist()), sides[slot, 2:].tolist()
        skipped.append(Skipped(int(position[slot]), refs[slot], f"{mode} mode refuses {box} on the {ny}x{nx} image"))
    kept = order[keep[order]]  # kept pairs, by image
    edges = np.searchsorted(image_of[kept], np.arange(len(images) + 1)).tolist()
    kept_positions, kept_slots = position[kept].tolist(), kept.tolist()
    kept_pixels = list(zip(xs[kept].tolist(), ys[kept].tolist(), strict=True))
    kept_boxes = boxes[kept]
    jobs = []
    for code, ref in enumerate(images):
        low, high = edges[code], edges[code + 1]
        wcs = wcs_of[code]
        if high > low and wcs is not None:
            jobs.append(_ImageJob(ref, wcs, kept_positions[low:high], kept_boxes[low:high], kept_pixels[low:high],
                                  kept_slots[low:high]))
    return jobs, skipped


def _accepted(boxes: np.ndarray, ny: np.ndarray, nx: np.ndarray, mode: ClipMode) -> np.ndarray:
    """:func:`objbutler.cutouts.accepts` of every box (none empty) on images of ``ny`` x ``nx``, vectorized."""
    x0, y0, x1, y1 = boxes.T
    if mode == "strict":
        return (x0 >= 0) & (y0 >= 0) & (x1 <= nx) & (y1 <= ny)
    if mode == "trim":  # some overlap
        return (x1 > 0) & (x0 < nx) & (y1 > 0) & (y0 < ny) & (nx > 0) & (ny > 0)
    return np.ones(len(boxes), dtype=bool)


_REF_WCS: dict[str, tuple[Any, WCS | None]] = {}
_REF_WCS_LOCK = threading.Lock()
_REF_WCS_MAX = 65_536


def _registry_wcs(ref: DatasetRef) -> WCS | None:
    """The WCS of a ref's sky record, remembered per dataset id (while the ref holds the same record).

    :func:`objbutler.sky.footprint.sky_wcs` caches by the cards' content, which costs a JSON
    encoding of the cards (~20 us) per call: an object history asks once per image per query.
    """
    if ref.sky is None:
        return None
    with _REF_WCS_LOCK:
        known = _REF_WCS.get(ref.id)
    if known is not None and known[0] is ref.sky:
        return known[1]
    wcs = sky_wcs(ref.sky)
    with _REF_WCS_LOCK:
        if len(_REF_WCS) >= _REF_WCS_MAX:
            _REF_WCS.clear()
        _REF_WCS[ref.id] = (ref.sky, wcs)
    return wcs


ImageReader = Callable[..., list[Cutout]]
"""``(ref, boxes, mode, fill_value, *, cost, parent_wcs) -> stamps``: ``Butler.read_image_cutouts``."""


def _cut(store: Store, job: _ImageJob, mode: ClipMode, fill_value: float, cost: Any,
         read: ImageReader | None = None) -> list[Cutout]:
    ref = job.ref
    if read is not None:
        stamps = read(ref, job.boxes, mode, fill_value, cost=cost, parent_wcs=job.wcs)
    elif ref.format == "fits":
        from objbutler.formats.fits_cutouts import read_fits_cutouts

        stamps = read_fits_cutouts(store, ref.key, job.boxes, mode, fill_value, cost=cost, layout=ref.layout,
                                   object_size=ref.size, parent_wcs=job.wcs)
    elif ref.format == "zarr":
        from objbutler.formats.zarr_array import read_zarr_cutouts
        from objbutler.formats.zarr_layout import layout_metadata

        stamps = read_zarr_cutouts(store, ref.key, job.boxes, mode, fill_value, size=ref.size,
                                   known=layout_metadata(ref.layout, ref.key, ref.size), parent_wcs=job.wcs)
    else:  # plan_images keeps images only
        raise NotSupportedError(f"{ref.dataset_type} is {ref.format}, not an image")
    # the readers give each stamp the part of the image it came from (its slices_original)
    for stamp, pixel, index in zip(stamps, job.pixels, job.positions, strict=True):
        stamp.index = index
        stamp.ref = ref
        stamp.input_position_original = pixel
    return stamps


def iter_image_cutouts(store: Store, jobs: Sequence[_ImageJob], mode: ClipMode, fill_value: float,
                       max_images_in_flight: int | None = None, on_error: str = "raise",
                       read: ImageReader | None = None,
                       ) -> Iterator[tuple[_ImageJob, list[Cutout] | None, str | None]]:
    """Cut every job's stamps, images concurrently in one bounded pool, yielding each image as it finishes.

    Yields ``(job, stamps, None)``, or ``(job, None, reason)`` for a failed image with ``on_error="skip"``.
    """
    from objbutler.ranges import CostModel
    from objbutler.stores import DEFAULT_MAX_CONCURRENCY, budget_of

    if not jobs:
        return
    fits_keys = [job.ref.key for job in jobs if job.ref.format == "fits" and not job.ref.is_direct]
    cost = CostModel.for_store(store, fits_keys[0] if fits_keys else None)
    budget = budget_of(store)
    lanes = max_images_in_flight or int(getattr(store, "max_concurrency", 0) or DEFAULT_MAX_CONCURRENCY)
    lanes = max(1, min(lanes, len(jobs)))
    if lanes == 1:
        for job in jobs:
            yield _outcome(job, functools.partial(_cut, store, job, mode, fill_value, cost, read), on_error)
        return
    # The store's budget, caller-runs: images on its shared workers and on this thread, a few ahead of
    # the consumer (bounded memory); each image's reads draw on the same budget, so nothing nests past it.
    for job, stamps, error in budget.imap_unordered(lambda job: _cut(store, job, mode, fill_value, cost, read),
                                                    jobs, lanes, 2 * lanes):
        yield _outcome(job, functools.partial(_settled, stamps, error), on_error)


def _settled(stamps: list[Cutout] | None, error: BaseException | None) -> list[Cutout]:
    """The stamps of a finished image, or raise what cutting it raised."""
    if error is not None:
        raise error
    assert stamps is not None
    return stamps


def _outcome(job: _ImageJob, result: Callable[[], list[Cutout]],
             on_error: str) -> tuple[_ImageJob, list[Cutout] | None, str | None]:
    try:
        return job, result(), None
    except (ObjButlerError, OSError) as exc:
        if on_error != "skip":
            raise
        return job, None, f"{type(exc).__name__}: {exc}"


def cutouts_at(store: Store, state: RegistryState, positions: Any, size: Any, dataset_type: str | None = None,
               run: str | None = None, where: Mapping[str, Any] | None = None, time: Any = None,
               mode: ClipMode = "trim", fill_value: float = np.nan, max_images_in_flight: int | None = None,
               on_error: str = "raise", read: ImageReader | None = None) -> SkyCutouts:
    """Stamps of every image holding each position; see :meth:`objbutler.butler.Butler.cutouts_at`.

    ``read`` (a Butler's ``read_image_cutouts``) reads each image wherever its data is; without it the
    images are read from ``store`` under their keys (datasets the repository holds).
    """
    if mode not in ("trim", "partial", "strict"):
        raise InvalidCutoutError(f"mode must be one of ('trim', 'partial', 'strict'), got {mode!r}")
    if on_error not in ("raise", "skip"):
        raise InvalidCutoutError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if size is None:
        raise InvalidCutoutError("cutouts at sky positions need size= (pixels or an angle)")
    coords, xyz, _ = as_positions(positions)
    position, refs = state_sky_index(state).find(xyz, dataset_type, where, run, mjd_range(time))
    jobs, skipped = plan_images(coords, position, refs, size, mode)
    found: list[Cutout | None] = [None] * len(refs)  # per (position, image) pair of the index's answer
    for job, cut, reason in iter_image_cutouts(store, jobs, mode, fill_value, max_images_in_flight, on_error, read):
        if cut is None:
            skipped += [Skipped(i, job.ref, reason or "failed") for i in job.positions]
            continue
        for slot, stamp in zip(job.slots, cut, strict=True):
            found[slot] = stamp
    out = SkyCutouts([] for _ in range(len(xyz)))
    for index, ref, cutout in zip(position.tolist(), refs, found, strict=True):
        if cutout is not None:
            out[index].append((ref, cutout))
    out.skipped = sorted(skipped, key=lambda s: (s.position, s.ref.id))
    return out
