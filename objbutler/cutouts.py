"""Boxes, sky positions and clipping modes: the pure geometry of postage stamps.

A :class:`Box` is half-open and 0-based in parent pixels: ``x0 <= x < x1``
(columns), ``y0 <= y < y1`` (rows), i.e. ``data[y0:y1, x0:x1]``. Clipping
modes follow :class:`astropy.nddata.Cutout2D`:

``"trim"``
    clip the box to the image; the stamp is the overlap.
``"partial"``
    keep the box's shape; pixels outside the image get ``fill_value``.
``"strict"``
    raise :class:`~objbutler.errors.InvalidCutoutError` unless the box lies
    wholly inside the image.

A box with *no* overlap raises in ``trim`` mode, as Cutout2D's
``NoOverlapError`` does (an empty stamp is not an answer). One deliberate
difference from astropy: in ``partial`` mode it gives a stamp made only of
``fill_value`` (so one stray target of a catalogue batch does not sink the
other thousand: use ``partial`` for batches that may stray off the image).

Requests are bounded before anything is allocated: the stamps of one request
may hold at most :data:`MAX_STAMP_PIXELS` pixels in all (environment variable
``OBJBUTLER_MAX_CUTOUT_PIXELS`` to change it).

Nothing here does I/O: format readers turn :class:`StampPlan` s into reads.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from objbutler.errors import InvalidCutoutError

if TYPE_CHECKING:
    from astropy.coordinates import SkyCoord
    from astropy.units import Quantity
    from astropy.wcs import WCS

__all__ = [
    "Box",
    "ClipMode",
    "Cutout",
    "ParentWCS",
    "MAX_STAMP_PIXELS",
    "accepts",
    "as_box",
    "as_boxes",
    "boxes_at",
    "is_angular",
    "pixel_positions",
    "size_in_pixels",
    "sky_to_pixels",
    "check_stamp_pixels",
    "max_stamp_pixels",
    "StampPlan",
    "boxes_from_skycoords",
    "cutout_wcs",
    "plan_stamp",
    "plan_stamps",
    "plan_stamp_arrays",
]

ClipMode = Literal["trim", "partial", "strict"]
_MODES = ("trim", "partial", "strict")
MAX_STAMP_PIXELS = 1 << 30
"""Default bound on the pixels of all stamps of one request (4 GiB of float32)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Box:
    """A half-open pixel box ``data[y0:y1, x0:x1]`` in parent-image pixels (0-based).

    Parameters
    ----------
    x0, y0 : int
        First column and row (inclusive); may be negative or past the image.
    x1, y1 : int
        One past the last column and row (exclusive); ``x1 >= x0``, ``y1 >= y0``.
    """

    x0: int
    y0: int
    x1: int
    y1: int

    def __post_init__(self) -> None:
        if not (type(self.x0) is int and type(self.y0) is int and type(self.x1) is int and type(self.y1) is int):
            for name in ("x0", "y0", "x1", "y1"):  # the slow path: numpy integers, or bad input
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, int | np.integer):
                    raise InvalidCutoutError(f"Box.{name} must be an integer, got {value!r}")
                object.__setattr__(self, name, int(value))
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise InvalidCutoutError(f"{self} has negative extent (need x1 >= x0 and y1 >= y0)")

    @property
    def width(self) -> int:
        """Number of columns."""
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        """Number of rows."""
        return self.y1 - self.y0

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``, numpy order."""
        return (self.height, self.width)

    @property
    def is_empty(self) -> bool:
        """True for a box with no pixels."""
        return self.width == 0 or self.height == 0

    def intersection(self, other: Box) -> Box:
        """The overlap of two boxes (an empty box anchored at a clipped corner if none)."""
        x0, y0 = max(self.x0, other.x0), max(self.y0, other.y0)
        return Box(x0, y0, max(x0, min(self.x1, other.x1)), max(y0, min(self.y1, other.y1)))

    def slices(self) -> tuple[slice, slice]:
        """``(slice(y0, y1), slice(x0, x1))`` for indexing a numpy array."""
        return (slice(self.y0, self.y1), slice(self.x0, self.x1))


@dataclasses.dataclass(frozen=True, slots=True)
class StampPlan:
    """How one requested box maps onto the image: what to read and where it goes.

    Parameters
    ----------
    index : int
        Position of the request in the caller's list.
    bbox : Box
        The stamp's extent in parent pixels (the requested box for ``partial``,
        the clipped box for ``trim``/``strict``).
    read : Box
        The part of the image to read (inside the image; may be empty).
    """

    index: int
    bbox: Box
    read: Box

    @property
    def destination(self) -> tuple[slice, slice]:
        """Where the read pixels go inside the stamp array."""
        read, bbox = self.read, self.bbox
        return (slice(read.y0 - bbox.y0, read.y1 - bbox.y0), slice(read.x0 - bbox.x0, read.x1 - bbox.x0))


def plan_stamp(index: int, box: Box, image_shape: tuple[int, int], mode: ClipMode) -> StampPlan:
    """Clip one box against an image as ``mode`` says.

    Parameters
    ----------
    index : int
        Request position, carried through.
    box : Box
        The requested box.
    image_shape : tuple of int
        ``(ny, nx)`` of the parent image.
    mode : {"trim", "partial", "strict"}
        Clipping mode (see module docstring).

    Returns
    -------
    StampPlan
        The stamp's extent and the part to read.

    Raises
    ------
    InvalidCutoutError
        For an unknown mode, or in strict mode for a box not wholly inside.
    """
    if mode not in _MODES:
        raise InvalidCutoutError(f"mode must be one of {_MODES}, got {mode!r}")
    return _plan_stamp(index, box, Box(0, 0, int(image_shape[1]), int(image_shape[0])), mode)


def _plan_stamp(index: int, box: Box, image: Box, mode: ClipMode) -> StampPlan:
    read = box.intersection(image)
    if mode == "strict" and read != box:
        raise InvalidCutoutError(f"request {index}: {box} is not wholly inside the {image.height}x{image.width} image")
    if mode == "partial":
        return StampPlan(index, box, read)
    if read.is_empty and not box.is_empty:
        raise InvalidCutoutError(
            f"request {index}: {box} does not overlap the {image.height}x{image.width} image (trim mode needs an "
            "overlap, as astropy's Cutout2D; mode='partial' gives a stamp of fill_value instead)"
        )
    return StampPlan(index, read, read)


def accepts(box: Box, image_shape: tuple[int, ...], mode: ClipMode) -> bool:
    """Whether ``mode`` can cut ``box`` from an image of ``image_shape`` (what :func:`plan_stamps` refuses).

    ``strict`` needs the box wholly inside, ``trim`` some overlap (or an empty
    box), ``partial`` takes anything. Use it to drop stray targets of a batch
    before asking.
    """
    overlap = box.intersection(Box(0, 0, int(image_shape[1]), int(image_shape[0])))
    if mode == "strict":
        return overlap == box
    return mode == "partial" or not overlap.is_empty or box.is_empty


def plan_stamps(boxes: Sequence[Box] | np.ndarray, image_shape: tuple[int, int], mode: ClipMode) -> list[StampPlan]:
    """Plan every box of a request (see :func:`plan_stamp`).

    ``boxes`` may also be an ``(N, 4)`` integer array of corners ``(x0, y0, x1, y1)``. The clipping
    is computed for all boxes at once (:func:`plan_stamp_arrays`); the plans and the errors are those
    of :func:`plan_stamp` applied box by box.

    Raises
    ------
    InvalidCutoutError
        For an unknown mode, a box that clipping rules out, stamps that would hold more than
        :func:`max_stamp_pixels` pixels in all, or corners beyond 64-bit integers.
    """
    bboxes, reads = plan_stamp_arrays(boxes, image_shape, mode)
    plans = []
    for index, row in enumerate(np.concatenate([bboxes, reads], axis=1).tolist()):
        bbox = Box(row[0], row[1], row[2], row[3])
        whole = row[0] == row[4] and row[1] == row[5] and row[2] == row[6] and row[3] == row[7]
        plans.append(StampPlan(index, bbox, bbox if whole else Box(row[4], row[5], row[6], row[7])))
    return plans


def plan_stamp_arrays(boxes: Sequence[Box] | np.ndarray, image_shape: tuple[int, int],
                      mode: ClipMode) -> tuple[np.ndarray, np.ndarray]:
    """:func:`plan_stamps` as two ``(N, 4)`` int64 arrays of corners: each stamp's ``bbox`` and ``read``.

    What a reader that cuts thousands of stamps uses: no Python object per stamp (the checks, the
    clipping and the pixel bound are numpy operations over all boxes).

    Parameters
    ----------
    boxes : sequence of Box or (x0, y0, x1, y1), or an (N, 4) integer array of corners
        The requested boxes.
    image_shape : tuple of int
        ``(ny, nx)`` of the parent image.
    mode : {"trim", "partial", "strict"}
        Clipping mode.

    Returns
    -------
    bbox, read : numpy.ndarray
        Per box, ``x0, y0, x1, y1`` of the stamp's extent and of the part of the image to read.

    Raises
    ------
    InvalidCutoutError
        As :func:`plan_stamps`.
    """
    if mode not in _MODES:
        raise InvalidCutoutError(f"mode must be one of {_MODES}, got {mode!r}")
    given, corners = _box_corners(boxes)
    ny, nx = int(image_shape[0]), int(image_shape[1])
    x0, y0, x1, y1 = corners.T
    rx0, ry0 = np.maximum(x0, 0), np.maximum(y0, 0)  # Box.intersection, vectorized
    rx1, ry1 = np.maximum(rx0, np.minimum(x1, nx)), np.maximum(ry0, np.minimum(y1, ny))
    reads = np.column_stack([rx0, ry0, rx1, ry1])
    if mode == "strict":
        refused = np.any(reads != corners, axis=1)
    elif mode == "trim":
        refused = ((rx1 == rx0) | (ry1 == ry0)) & (x1 > x0) & (y1 > y0)
    else:
        refused = None
    if refused is not None and refused.any():
        first = int(np.argmax(refused))
        box = given[first] if given is not None else Box(*corners[first].tolist())
        _plan_stamp(first, box, Box(0, 0, nx, ny), mode)  # raises its error
    bboxes = corners if mode == "partial" else reads
    _check_areas((bboxes[:, 2] - bboxes[:, 0]).astype(np.float64) * (bboxes[:, 3] - bboxes[:, 1]))
    return bboxes, reads


def _box_corners(boxes: Sequence[Box] | np.ndarray) -> tuple[list[Box] | None, np.ndarray]:
    """The boxes (when given as boxes) and their ``(N, 4)`` int64 corners."""
    if isinstance(boxes, np.ndarray):
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.dtype.kind not in "iu":
            raise InvalidCutoutError(f"box corners must be an (N, 4) integer array, got {boxes.dtype} {boxes.shape}")
        if boxes.dtype.kind == "u" and boxes.size and int(boxes.max()) > np.iinfo(np.int64).max:
            raise InvalidCutoutError("box corners must fit in 64-bit integers")
        corners = boxes.astype(np.int64, copy=False)
        bad = np.flatnonzero((corners[:, 2] < corners[:, 0]) | (corners[:, 3] < corners[:, 1]))
        if bad.size:
            Box(*corners[int(bad[0])].tolist())  # raises its error
        return None, corners
    given = [as_box(box) for box in boxes]
    try:
        corners = np.array([(b.x0, b.y0, b.x1, b.y1) for b in given], dtype=np.int64).reshape(-1, 4)
    except OverflowError:
        raise InvalidCutoutError("box corners must fit in 64-bit integers") from None
    return given, corners


def _check_areas(areas: np.ndarray) -> None:
    """:func:`check_stamp_pixels` for stamp areas computed with numpy (float64: exact below 2**53)."""
    limit = max_stamp_pixels()
    over = np.flatnonzero(np.cumsum(areas) > limit)
    if over.size:
        raise InvalidCutoutError(
            f"the stamps of this request hold more than {limit:,} pixels (reached at request {int(over[0])}); "
            "ask for fewer or smaller stamps, or raise OBJBUTLER_MAX_CUTOUT_PIXELS"
        )


def max_stamp_pixels() -> int:
    """The bound on one request's stamp pixels: ``OBJBUTLER_MAX_CUTOUT_PIXELS`` or :data:`MAX_STAMP_PIXELS`."""
    raw = os.environ.get("OBJBUTLER_MAX_CUTOUT_PIXELS")
    if raw is None:
        return MAX_STAMP_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise InvalidCutoutError(f"OBJBUTLER_MAX_CUTOUT_PIXELS must be an integer, got {raw!r}") from None
    return value


def check_stamp_pixels(stamps: Iterable[Box]) -> None:
    """Raise InvalidCutoutError if these stamps hold more than :func:`max_stamp_pixels` pixels in all.

    Called before any stamp is allocated, so that a request for a few huge
    boxes (``partial`` mode keeps their shape) fails at once instead of
    attempting a many-gigabyte allocation.
    """
    limit = max_stamp_pixels()
    total = 0
    for count, stamp in enumerate(stamps, start=1):
        total += stamp.width * stamp.height
        if total > limit:
            raise InvalidCutoutError(
                f"the stamps of this request hold more than {limit:,} pixels (reached at request {count - 1}); "
                "ask for fewer or smaller stamps, or raise OBJBUTLER_MAX_CUTOUT_PIXELS"
            )


def as_boxes(value: Any) -> list[Box]:
    """Boxes from one Box (or four corners ``(x0, y0, x1, y1)``) or a sequence of them.

    A single box gives a list of one, so the answer of a cutout call is always a list.

    Raises
    ------
    InvalidCutoutError
        For None, a string, a mapping or anything that is not a box or a sequence of boxes; names
        what it got.
    """
    if isinstance(value, Box):
        return [value]
    if value is None or isinstance(value, str | bytes | dict) or not isinstance(value, Iterable):
        raise InvalidCutoutError(f"boxes must be a Box or a sequence of Box or (x0, y0, x1, y1), or positions "
                                 f"with size=; got {value!r}")
    items = list(value)
    if len(items) == 4 and all(isinstance(v, int | float | np.integer | np.floating) for v in items):
        return [as_box(items)]  # one box's corners
    return [as_box(item) for item in items]


def as_box(value: Any) -> Box:
    """A Box from a Box or four whole-pixel corners ``(x0, y0, x1, y1)`` (ints or whole floats).

    Raises
    ------
    InvalidCutoutError
        For anything else, naming the value.
    """
    if isinstance(value, Box):
        return value
    try:
        corners = [float(v) for v in value]
    except (TypeError, ValueError):
        raise InvalidCutoutError(f"a box needs four numbers x0, y0, x1, y1, got {value!r}") from None
    if len(corners) == 2:
        raise InvalidCutoutError(f"{value!r} is one (x, y) position, not a box: pass size= to cut around positions")
    if len(corners) != 4 or not all(c.is_integer() for c in corners):
        raise InvalidCutoutError(f"a box needs four whole-pixel corners x0, y0, x1, y1, got {value!r}")
    return Box(*(int(c) for c in corners))


def boxes_from_skycoords(
    skycoords: SkyCoord,
    wcs: WCS,
    size: int | tuple[int, int] | Quantity,
) -> list[Box]:
    """Turn sky positions into pixel boxes centred on them, exactly as Cutout2D rounds.

    Parameters
    ----------
    skycoords : astropy.coordinates.SkyCoord
        One position or an array of them.
    wcs : astropy.wcs.WCS
        The parent image's celestial WCS.
    size : int, (ny, nx), or Quantity
        Stamp size in pixels, or an angle (converted with the WCS pixel scale).

    Returns
    -------
    list of Box
        One box per position, ``x0 = ceil(x - nx/2)``, ``x1 = x0 + nx`` (likewise y).
    """
    return boxes_at(sky_to_pixels(skycoords, wcs), size_in_pixels(size, wcs))


def sky_to_pixels(skycoords: SkyCoord, wcs: WCS) -> np.ndarray:
    """``(N, 2)`` float array of the ``(x, y)`` parent pixels (0-based) of sky positions, distortions included.

    Raises
    ------
    InvalidCutoutError
        For a position the WCS cannot place (off a projection's edge).
    """
    xs, ys = wcs.world_to_pixel(skycoords)
    xy = np.column_stack([np.atleast_1d(xs), np.atleast_1d(ys)]).astype(float)
    bad = np.flatnonzero(~np.isfinite(xy).all(axis=1))
    if bad.size:
        raise InvalidCutoutError(f"sky position {int(bad[0])} has no pixel position in this WCS")
    return xy


def pixel_positions(value: Any) -> np.ndarray:
    """``(N, 2)`` float array of ``(x, y)`` pixel centres from one ``(x, y)`` or many (a list, an ``(N, 2)`` array).

    Integer positions are pixel centres, 0-based, as in Cutout2D.

    Raises
    ------
    InvalidCutoutError
        For boxes (they carry their own size: no ``size=`` with them), or anything that is not
        finite ``(x, y)`` pairs.
    """
    if isinstance(value, Box) or (isinstance(value, Sequence) and not isinstance(value, str | bytes)
                                  and any(isinstance(item, Box) for item in value)):
        raise InvalidCutoutError("boxes carry their own size: size= goes with (x, y) or sky positions")
    if value is None or isinstance(value, str | bytes | dict):
        raise InvalidCutoutError(f"positions must be (x, y) pixel centres or a SkyCoord, got {value!r}")
    try:
        xy = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InvalidCutoutError(f"positions must be (x, y) pixel centres or a SkyCoord, got {value!r}") from None
    if xy.ndim == 1 and xy.shape == (2,):
        xy = xy[np.newaxis, :]
    if xy.ndim != 2 or xy.shape[1] != 2:
        hint = " (boxes carry their own size: size= goes with positions)" if xy.shape[-1:] == (4,) else ""
        raise InvalidCutoutError(f"pixel positions must be (x, y) or an (N, 2) array of them, got shape "
                                 f"{xy.shape}{hint}")
    bad = np.flatnonzero(~np.isfinite(xy).all(axis=1))
    if bad.size:
        raise InvalidCutoutError(f"pixel position {int(bad[0])} is not finite: {tuple(xy[bad[0]])}")
    return xy


def boxes_at(xy: np.ndarray, shape: tuple[int, int]) -> list[Box]:
    """Boxes of ``shape = (ny, nx)`` centred on ``(x, y)`` pixel positions, rounded as Cutout2D rounds.

    ``x0 = ceil(x - nx / 2)``, ``x1 = x0 + nx`` (likewise y): astropy's
    :func:`~astropy.nddata.utils.overlap_slices` with its default ``np.ceil``.
    """
    ny, nx = shape
    x0s = np.ceil(xy[:, 0] - nx / 2.0).astype(np.int64)
    y0s = np.ceil(xy[:, 1] - ny / 2.0).astype(np.int64)
    return [Box(int(x0), int(y0), int(x0) + nx, int(y0) + ny) for x0, y0 in zip(x0s, y0s, strict=True)]


def is_angular(size: Any) -> bool:
    """Whether a stamp size is an angle (it then needs the image's WCS to become pixels)."""
    from astropy import units as u

    return isinstance(size, u.Quantity) and size.unit.physical_type == "angle"


def size_in_pixels(size: int | tuple[int, int] | Quantity, wcs: WCS | None = None) -> tuple[int, int]:
    """``(ny, nx)`` of a stamp size given in pixels (an int, ``(ny, nx)``, a pixel Quantity) or as an angle.

    An angle becomes rows with the y axis's pixel scale and columns with the x axis's. Cutout2D swaps
    the two (astropy issue #11362), so on non-square pixels (TPV or SIP plates: about 1 %) its stamp
    of the same angular size can be a row or a column different from objbutler's.

    Raises
    ------
    InvalidCutoutError
        For a size that is not one or two positive sides, or an angle without a WCS.
    """
    from astropy import units as u
    from astropy.wcs.utils import proj_plane_pixel_scales

    if isinstance(size, u.Quantity):
        sides: u.Quantity = u.Quantity(np.atleast_1d(size))
        if sides.size == 1:
            sides = u.Quantity([sides[0], sides[0]])
        if sides.size != 2 or not np.all(np.isfinite(sides.value)) or np.any(sides.value <= 0):
            raise InvalidCutoutError(f"stamp size must be one or two positive, finite values, got {size!r}")
        if sides.unit.physical_type == "angle":
            if wcs is None:
                raise InvalidCutoutError(f"an angular stamp size ({size}) needs the image's WCS; this image has none")
            scales = u.Quantity(proj_plane_pixel_scales(wcs), wcs.wcs.cunit[0])
            # size is (ny, nx); pixel scales are (x, y)
            pixels = [
                int(np.round((sides[0] / scales[1]).decompose())),
                int(np.round((sides[1] / scales[0]).decompose())),
            ]
        elif sides.unit == u.pixel:
            pixels = [int(np.round(side.value)) for side in sides]
        else:
            raise InvalidCutoutError(f"size must be in pixels or an angle, got unit {sides.unit}")
        if pixels[0] <= 0 or pixels[1] <= 0:
            raise InvalidCutoutError(f"stamp size {size!r} is less than one pixel of this image")
        return pixels[0], pixels[1]
    try:
        values = [float(v) for v in size] if isinstance(size, tuple | list) else [float(size), float(size)]
    except (TypeError, ValueError):
        raise InvalidCutoutError(f"size must be pixels (an int or (ny, nx)) or an angle, got {size!r}") from None
    if len(values) != 2 or not all(math.isfinite(v) and v.is_integer() and v > 0 for v in values):
        raise InvalidCutoutError(f"stamp size must be one or two positive whole numbers of pixels, got {size!r}")
    return int(values[0]), int(values[1])


def cutout_wcs(wcs: WCS | None, bbox: Box) -> WCS | None:
    """The WCS of a stamp whose pixel (0, 0) is parent pixel ``(bbox.x0, bbox.y0)``.

    Mirrors :class:`astropy.nddata.Cutout2D`: shift CRPIX (and SIP's CRPIX).

    Parameters
    ----------
    wcs : astropy.wcs.WCS or None
        The parent WCS.
    bbox : Box
        The stamp's extent in parent pixels.

    Returns
    -------
    astropy.wcs.WCS or None
        A new WCS (the parent is not modified), or None without a parent WCS.
    """
    if wcs is None:
        return None
    from astropy.wcs import Sip

    shift = np.array([bbox.x0, bbox.y0], dtype=float)
    stamp_wcs = deepcopy(wcs)
    stamp_wcs.wcs.crpix -= shift
    stamp_wcs.array_shape = bbox.shape
    if wcs.sip is not None:
        stamp_wcs.sip = Sip(wcs.sip.a, wcs.sip.b, wcs.sip.ap, wcs.sip.bp, wcs.sip.crpix - shift)
    return stamp_wcs


class ParentWCS:
    """A parent image's WCS that is built (from its header) only when a stamp's WCS is first read.

    Building an astropy WCS from a header costs several milliseconds: as much as cutting a
    single stamp. A caller that only wants pixels should not pay for it.

    Parameters
    ----------
    build : callable
        Returns the WCS (or None); called at most once.
    """

    __slots__ = ("_build", "_lock", "_value")

    def __init__(self, build: Callable[[], WCS | None]) -> None:
        self._build: Callable[[], WCS | None] | None = build
        self._value: WCS | None = None
        self._lock = threading.Lock()

    def get(self) -> WCS | None:
        """The WCS, built on the first call."""
        with self._lock:
            if self._build is not None:
                self._value, self._build = self._build(), None
            return self._value

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the built WCS (a lock and a closure over a header reader do not pickle)."""
        return (_built_parent_wcs, (self.get(),))


def _built_parent_wcs(value: WCS | None) -> ParentWCS:
    """A :class:`ParentWCS` already built (what one unpickles as)."""
    parent = ParentWCS(lambda: value)
    parent.get()
    return parent


class Cutout:
    """One postage stamp, with astropy :class:`~astropy.nddata.Cutout2D`'s pixel bookkeeping.

    Parameters
    ----------
    data : numpy.ndarray
        The pixels, ``shape == bbox.shape``.
    bbox : Box
        Where the stamp lies in parent pixels: ``data[0, 0]`` is parent pixel ``(bbox.x0, bbox.y0)``
        (in ``partial`` mode possibly outside the image, a ``fill_value`` pixel).
    wcs : astropy.wcs.WCS or None
        The stamp's own WCS (parent WCS shifted to the stamp's origin).
    index : int
        Position of the request this answers.

    Attributes
    ----------
    ref : DatasetRef or None
        The image it was cut from, when the cutout came from a sky query
        (:meth:`objbutler.butler.Butler.cutouts_at`).
    input_position_original : tuple of float or None
        ``(x, y)``: the requested position in parent pixels (0-based), as Cutout2D's
        ``input_position_original``: the given pixel position, or a sky position's pixels
        through the WCS; None for a cutout asked for as a pixel box.

    Notes
    -----
    The Cutout2D attributes (``slices_original``, ``slices_cutout``, ``bbox_original``,
    ``bbox_cutout``, ``origin_original``, ``origin_cutout``, ``center_original``,
    ``center_cutout``, ``position_original``, ``position_cutout``, ``input_position_cutout``)
    equal Cutout2D's for the same image, position, size and mode (``tests/test_cutout_api.py``
    compares them). One deliberate difference: ``to_original_position`` and
    ``to_cutout_position`` map through the stamp's true origin, ``(bbox.x0, bbox.y0)``. Cutout2D
    maps through ``origin_original``, the first pixel inside the image, which in ``partial`` mode
    with padding on the low side disagrees with its own ``data``, ``input_position_cutout`` and
    ``wcs``; everywhere else the two are equal.
    """

    __slots__ = ("_parent_wcs", "_read", "_slices_original", "_wcs", "bbox", "data", "index",
                 "input_position_original", "ref")

    def __init__(self, data: np.ndarray, bbox: Box, wcs: WCS | None = None, index: int = 0) -> None:
        self.data = data
        self.bbox = bbox
        self.index = index
        self._wcs = wcs
        self._parent_wcs: WCS | ParentWCS | None = None
        self.ref: Any = None
        self.input_position_original: tuple[float, float] | None = None
        self._slices_original: tuple[slice, slice] | None = None
        self._read: Box | None = None  # the image part the pixels came from: slices_original, made when asked

    @property
    def shape(self) -> tuple[int, ...]:
        """The stamp's array shape (Cutout2D's ``shape``)."""
        return tuple(self.data.shape)

    @property
    def position_original(self) -> tuple[int, int] | None:
        """``(x, y)`` pixel index of the requested position, rounded half up (Cutout2D's ``position_original``)."""
        return None if self.input_position_original is None else _round_half_up(self.input_position_original)

    @property
    def input_position_cutout(self) -> tuple[float, float] | None:
        """``(x, y)``: the requested position in the stamp's pixels (Cutout2D's ``input_position_cutout``)."""
        if self.input_position_original is None:
            return None
        x, y = self.input_position_original
        return (x - self.bbox.x0, y - self.bbox.y0)

    @property
    def position_cutout(self) -> tuple[int, int] | None:
        """``(x, y)`` pixel index of the requested position in the stamp, rounded half up (Cutout2D's)."""
        position = self.input_position_cutout
        return None if position is None else _round_half_up(position)

    @property
    def slices_original(self) -> tuple[slice, slice]:
        """Slices of the parent array the stamp's pixels came from (its overlap with the image), as Cutout2D's.

        Exact for every stamp objbutler cuts; for a ``partial`` stamp made by hand (``Cutout(...)``), the
        box clipped at 0 (the far edge of the image is unknown here).
        """
        if self._slices_original is not None:
            return self._slices_original
        if self._read is not None:
            self._slices_original = self._read.slices()
            return self._slices_original
        box = self.bbox
        return (slice(max(box.y0, 0), max(box.y1, 0)), slice(max(box.x0, 0), max(box.x1, 0)))

    @slices_original.setter
    def slices_original(self, value: tuple[slice, slice]) -> None:
        self._slices_original = value

    @property
    def slices_cutout(self) -> tuple[slice, slice]:
        """Slices of the stamp that hold image pixels (the rest is ``fill_value``), as Cutout2D's."""
        rows, cols = self.slices_original
        y0, x0 = self.bbox.y0, self.bbox.x0
        return (slice(rows.start - y0, rows.stop - y0), slice(cols.start - x0, cols.stop - x0))

    @property
    def bbox_original(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((ymin, ymax), (xmin, xmax))``, inclusive, of the image pixels in parent pixels (Cutout2D's).

        Unlike :attr:`bbox` (half-open, the whole stamp), this covers the pixels that came from the image.
        """
        return _inclusive(self.slices_original)

    @property
    def bbox_cutout(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((ymin, ymax), (xmin, xmax))``, inclusive, of the image pixels in stamp pixels (Cutout2D's)."""
        return _inclusive(self.slices_cutout)

    @property
    def origin_original(self) -> tuple[int, int]:
        """``(x, y)`` in parent pixels of the first image pixel of the stamp (Cutout2D's ``origin_original``)."""
        rows, cols = self.slices_original
        return (cols.start, rows.start)

    @property
    def origin_cutout(self) -> tuple[int, int]:
        """``(x, y)`` in stamp pixels of the first image pixel of the stamp (Cutout2D's ``origin_cutout``)."""
        rows, cols = self.slices_cutout
        return (cols.start, rows.start)

    @property
    def center_original(self) -> tuple[float, float]:
        """``(x, y)`` centre of the stamp's image pixels in parent pixels (Cutout2D's ``center_original``)."""
        return _centre(self.slices_original)

    @property
    def center_cutout(self) -> tuple[float, float]:
        """``(x, y)`` centre of the stamp's image pixels in stamp pixels (Cutout2D's ``center_cutout``)."""
        return _centre(self.slices_cutout)

    def to_original_position(self, cutout_position: Sequence[float]) -> tuple[float, float]:
        """The parent ``(x, y)`` of a stamp ``(x, y)`` position (see the class notes for ``partial`` mode)."""
        return (cutout_position[0] + self.bbox.x0, cutout_position[1] + self.bbox.y0)

    def to_cutout_position(self, original_position: Sequence[float]) -> tuple[float, float]:
        """The stamp ``(x, y)`` of a parent ``(x, y)`` position (see the class notes for ``partial`` mode)."""
        return (original_position[0] - self.bbox.x0, original_position[1] - self.bbox.y0)

    @classmethod
    def from_parent(cls, data: np.ndarray, bbox: Box, parent_wcs: WCS | ParentWCS | None, index: int,
                    read: Box | None = None) -> Cutout:
        """A stamp whose WCS is derived from the parent's only when first asked for.

        Copying a WCS costs ~0.1 ms; a thousand stamps whose WCS nobody reads should not pay it.
        ``parent_wcs`` may be a :class:`ParentWCS`, so that not even the parent is built until then.
        ``read`` is the part of the image the pixels came from (the plan's ``read``): it makes
        :attr:`slices_original` exact.
        """
        stamp = cls(data, bbox, None, index)
        stamp._parent_wcs = parent_wcs
        stamp._read = read  # slices_original made from it when first asked for
        return stamp

    @property
    def wcs(self) -> WCS | None:
        """The stamp's own WCS (None when the parent has none)."""
        if self._wcs is None and self._parent_wcs is not None:
            parent = self._parent_wcs.get() if isinstance(self._parent_wcs, ParentWCS) else self._parent_wcs
            self._wcs = cutout_wcs(parent, self.bbox)
            self._parent_wcs = None
        return self._wcs

    @wcs.setter
    def wcs(self, value: WCS | None) -> None:
        self._wcs, self._parent_wcs = value, None

    def __repr__(self) -> str:
        return f"Cutout(index={self.index}, bbox={self.bbox}, shape={self.data.shape}, dtype={self.data.dtype})"


def _round_half_up(position: Sequence[float]) -> tuple[int, int]:
    """Round to the nearest pixel, halves up (Cutout2D's ``_round``, not numpy's half to even)."""
    return (math.floor(position[0] + 0.5), math.floor(position[1] + 0.5))


def _inclusive(slices: tuple[slice, slice]) -> tuple[tuple[int, int], tuple[int, int]]:
    rows, cols = slices
    return ((rows.start, rows.stop - 1), (cols.start, cols.stop - 1))


def _centre(slices: tuple[slice, slice]) -> tuple[float, float]:
    rows, cols = slices
    return (0.5 * (cols.start + cols.stop - 1), 0.5 * (rows.start + rows.stop - 1))


def new_stamp(plan: StampPlan, dtype: np.dtype[Any], fill_value: float) -> np.ndarray:
    """Allocate a stamp array for a plan, pre-filled where the image does not reach.

    Parameters
    ----------
    plan : StampPlan
        The stamp's plan.
    dtype : numpy.dtype
        Pixel type of the decoded image.
    fill_value : float
        Value for pixels outside the image (``partial`` mode). An integer image
        whose type cannot hold it is promoted: to float64 for NaN, infinities
        or fractions, else to the smallest integer type that holds both.

    Returns
    -------
    numpy.ndarray
        An array of ``plan.bbox.shape``.
    """
    if plan.read == plan.bbox:
        return np.empty(plan.bbox.shape, dtype=dtype)
    return np.full(plan.bbox.shape, fill_value, dtype=stamp_dtype(dtype, fill_value))


def stamp_dtype(dtype: np.dtype[Any], fill_value: float) -> np.dtype[Any]:
    """The dtype of a padded stamp: the image's, unless it cannot hold ``fill_value``."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iub":
        return dtype
    value = float(fill_value)
    if not value.is_integer():
        return np.dtype(np.float64)
    info = np.iinfo(dtype) if dtype.kind != "b" else np.iinfo(np.uint8)
    if info.min <= value <= info.max and dtype.kind != "b":
        return dtype
    low, high = min(value, info.min), max(value, info.max)
    for candidate in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64):
        bounds = np.iinfo(candidate)
        if bounds.min <= low and high <= bounds.max:
            return np.dtype(candidate)
    return np.dtype(np.float64)
