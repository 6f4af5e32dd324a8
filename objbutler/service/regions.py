"""A stencil on an image: the pixel box that bounds it, clipped to the image and held to the limits.

The box of a stencil is the smallest box of whole pixels that holds every pixel centre-cell the
stencil's boundary passes through: project dense boundary points with the image's WCS (SIP
included), take their extent, and round to the pixels that contain the extremes (pixel ``i``
spans ``i - 0.5 <= x < i + 0.5``). The stamp then equals astropy's
``Cutout2D(data, ((x0 + x1) / 2, (y0 + y1) / 2), (y1 - y0, x1 - x0), mode="trim")``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from objbutler.cutouts import Box
from objbutler.service.params import Limits, Stencil, _NoOverlapError, _SodaError, check_extent

if TYPE_CHECKING:
    from astropy.wcs import WCS

__all__ = ["stencil_box", "stencil_boxes"]


def stencil_box(stencil: Stencil, wcs: WCS, shape: tuple[int, int] | None = None) -> Box:
    """The pixel box (half-open, 0-based) that bounds ``stencil`` on an image with this WCS.

    Where part of the stencil has no pixel position in this WCS (behind a TAN projection: a stencil
    far larger than the image) and the image's ``shape`` is known, the stencil is reduced to the image
    (SODA 1.0 3.3): the box bounds the boundary points that fall on the image and the image's edge
    pixels that lie in the stencil.

    Raises
    ------
    _NoOverlapError
        The stencil holds no pixel of the image.
    _SodaError
        Part of the stencil has no pixel position and the image's shape is unknown.
    """
    ra, dec = stencil.boundary()
    xs, ys = _pixels(wcs, ra, dec)
    finite = np.isfinite(xs) & np.isfinite(ys)
    if not np.all(finite):
        if shape is None:
            raise _SodaError(f"{stencil.text()} cannot be projected onto this image (too large or too far from it)")
        ny, nx = shape
        on_image = finite & (xs >= -0.5) & (xs < nx - 0.5) & (ys >= -0.5) & (ys < ny - 0.5)
        edge_x, edge_y = _edge_pixels(shape)
        with np.errstate(all="ignore"):
            edge_ra, edge_dec = wcs.pixel_to_world_values(edge_x, edge_y)
        held = np.isfinite(edge_ra) & np.isfinite(edge_dec)
        held[held] = stencil.contains(np.asarray(edge_ra)[held], np.asarray(edge_dec)[held])
        xs = np.concatenate([xs[on_image], edge_x[held]])
        ys = np.concatenate([ys[on_image], edge_y[held]])
        if xs.size == 0:
            raise _NoOverlapError(f"{stencil.text()} does not overlap the image")
    x0, x1 = math.floor(float(xs.min()) + 0.5), math.floor(float(xs.max()) + 0.5) + 1
    y0, y1 = math.floor(float(ys.min()) + 0.5), math.floor(float(ys.max()) + 0.5) + 1
    return Box(x0, y0, x1, y1)


def _pixels(wcs: WCS, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(all="ignore"):
        xs, ys = wcs.world_to_pixel_values(ra, dec)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _edge_pixels(shape: tuple[int, int], per_edge: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres along the image's four edges, corners included."""
    ny, nx = shape
    along_x = np.unique(np.linspace(0, nx - 1, min(nx, per_edge)).round())
    along_y = np.unique(np.linspace(0, ny - 1, min(ny, per_edge)).round())
    xs = np.concatenate([along_x, along_x, np.zeros_like(along_y), np.full_like(along_y, nx - 1)])
    ys = np.concatenate([np.zeros_like(along_x), np.full_like(along_x, ny - 1), along_y, along_y])
    return xs.astype(float), ys.astype(float)


def _clipped_pixels(box: Box, shape: tuple[int, int] | None) -> int:
    if shape is None:
        return box.width * box.height
    overlap = box.intersection(Box(0, 0, shape[1], shape[0]))
    return 0 if overlap.is_empty else overlap.width * overlap.height


def stencil_boxes(stencils: Sequence[Stencil], wcs: WCS, shape: tuple[int, int] | None, limits: Limits) -> list[Box]:
    """The box of every stencil, checked: each overlaps the image, all together within ``max_pixels``.

    Parameters
    ----------
    stencils : sequence of Stencil
        In request order.
    wcs : astropy.wcs.WCS
        The image's celestial WCS.
    shape : (ny, nx) or None
        The image's shape (None when unknown: then the unclipped boxes count).
    limits : Limits
        The service's limits.
    """
    if shape is None:  # nothing else bounds the answer
        for stencil in stencils:
            check_extent(stencil, limits)
    boxes = [stencil_box(stencil, wcs, shape) for stencil in stencils]
    total = 0
    for stencil, box in zip(stencils, boxes, strict=True):
        pixels = _clipped_pixels(box, shape)
        if shape is not None and pixels == 0:
            raise _NoOverlapError(f"{stencil.text()} does not overlap the image")
        total += pixels
    if total > limits.max_pixels:
        raise _SodaError(f"the stamps would hold {total} pixels; this service answers at most {limits.max_pixels}")
    return boxes
