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
from objbutler.service.params import Limits, Stencil, _SodaError

if TYPE_CHECKING:
    from astropy.wcs import WCS

__all__ = ["stencil_box", "stencil_boxes"]


def stencil_box(stencil: Stencil, wcs: WCS) -> Box:
    """The pixel box (half-open, 0-based) that bounds ``stencil`` on an image with this WCS.

    Raises
    ------
    _SodaError
        When part of the stencil has no pixel position in this WCS (e.g. behind a TAN projection).
    """
    ra, dec = stencil.boundary()
    with np.errstate(all="ignore"):
        xs, ys = wcs.world_to_pixel_values(ra, dec)
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise _SodaError(f"{stencil.text()} cannot be projected onto this image (too far from it)")
    x0, x1 = math.floor(float(xs.min()) + 0.5), math.floor(float(xs.max()) + 0.5) + 1
    y0, y1 = math.floor(float(ys.min()) + 0.5), math.floor(float(ys.max()) + 0.5) + 1
    return Box(x0, y0, x1, y1)


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
    boxes = [stencil_box(stencil, wcs) for stencil in stencils]
    total = 0
    for stencil, box in zip(stencils, boxes, strict=True):
        pixels = _clipped_pixels(box, shape)
        if shape is not None and pixels == 0:
            raise _SodaError(f"{stencil.text()} does not overlap the image")
        total += pixels
    if total > limits.max_pixels:
        raise _SodaError(f"the stamps would hold {total} pixels; this service answers at most {limits.max_pixels}")
    return boxes
