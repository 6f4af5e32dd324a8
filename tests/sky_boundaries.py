"""Dense boundary points of SODA stencils, computed with astropy alone: the reference the service's boxes meet."""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord


def circle_points(ra: float, dec: float, radius: float) -> SkyCoord:
    """Points on a circle (degrees), every 0.1 degree of position angle."""
    angles = np.linspace(0, 360, 3600, endpoint=False) * u.deg
    return SkyCoord(ra * u.deg, dec * u.deg).directional_offset_by(angles, radius * u.deg)


def polygon_points(vertices: list[tuple[float, float]] | list[float]) -> SkyCoord:
    """Points along a polygon's great-circle edges; vertices as (ra, dec) pairs or a flat DALI list."""
    if vertices and not isinstance(vertices[0], tuple):
        flat = [float(v) for v in vertices]  # type: ignore[arg-type]
        vertices = list(zip(flat[::2], flat[1::2], strict=True))
    pairs: list[tuple[float, float]] = vertices  # type: ignore[assignment]
    points = []
    for (ra1, dec1), (ra2, dec2) in zip(pairs, pairs[1:] + pairs[:1], strict=True):
        a, b = SkyCoord(ra1 * u.deg, dec1 * u.deg), SkyCoord(ra2 * u.deg, dec2 * u.deg)
        steps = np.linspace(0, 1, 500, endpoint=False) * a.separation(b)
        points.append(a.directional_offset_by(a.position_angle(b), steps))
    return SkyCoord(np.concatenate([p.ra.deg for p in points]) * u.deg,
                    np.concatenate([p.dec.deg for p in points]) * u.deg)


def range_points(ra1: float, ra2: float, dec1: float, dec2: float) -> SkyCoord:
    """Points along the four edges of an RA/Dec box."""
    ras, decs = np.linspace(ra1, ra2, 1000), np.linspace(dec1, dec2, 1000)
    ra = np.concatenate([ras, ras, np.full(1000, ra1), np.full(1000, ra2)])
    dec = np.concatenate([np.full(1000, dec1), np.full(1000, dec2), decs, decs])
    return SkyCoord(ra * u.deg, dec * u.deg)
