"""Spherical geometry on unit vectors, vectorized with numpy: no I/O, no astropy.

Everything works on unit vectors, so the RA wrap at 0/360 degrees and the
poles need no special case: a polygon straddling RA 0 or enclosing a pole is
just a set of vectors.

A footprint polygon's edges are great-circle arcs between consecutive
vertices. Membership is decided in the **gnomonic** (tangent-plane)
projection at the polygon's centre, which maps every great circle to a
straight line: the polygon becomes a plane polygon with straight edges, *the
same* set of points, and the classic crossing-number test is exact there for
every point of the centre's hemisphere (points on the other side are outside,
as every footprint is far smaller than a hemisphere). So the test is exact for
any simple polygon, convex or not (a SIP footprint can be slightly concave).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "bounding_cap",
    "gnomonic",
    "points_in_polygons",
    "radec_to_xyz",
    "spatial_order",
    "tangent_frame",
    "xyz_to_radec",
]

MAX_CAP_DEGREES = 60.0
"""Footprints wider than this (radius of the bounding cap) are not indexed: no single image of that size
is a polygon of its pixel bounds in any useful sense (an all-sky projection), and gnomonic tests need
less than a hemisphere."""


def radec_to_xyz(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Unit vectors ``(..., 3)`` of RA/Dec in degrees."""
    ra_rad = np.radians(np.asarray(ra, dtype=np.float64))
    dec_rad = np.radians(np.asarray(dec, dtype=np.float64))
    cos_dec = np.cos(dec_rad)
    return np.stack([cos_dec * np.cos(ra_rad), cos_dec * np.sin(ra_rad), np.sin(dec_rad)], axis=-1)


def xyz_to_radec(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RA in [0, 360) and Dec in [-90, 90] degrees of (not necessarily unit) vectors ``(..., 3)``."""
    xyz = np.asarray(xyz, dtype=np.float64)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    ra = np.degrees(np.arctan2(y, x)) % 360.0
    dec = np.degrees(np.arctan2(z, np.hypot(x, y)))
    return ra, dec


def bounding_cap(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """A cap holding every vertex of one polygon: ``(unit centre, cos(radius))``.

    The centre is the normalized mean of the vertices; the radius the largest
    vertex distance. A cap narrower than a hemisphere is spherically convex,
    so it also holds the great-circle edges between the vertices.
    """
    centre = vertices.mean(axis=0)
    norm = np.linalg.norm(centre)
    if norm < 1e-12:
        raise ValueError("the polygon's vertices surround the sphere: no bounding cap")
    centre = centre / norm
    cos_radius = float(np.clip(vertices @ centre, -1.0, 1.0).min())
    return centre, cos_radius


def tangent_frame(centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors spanning the tangent plane at ``centre`` (``(..., 3)`` arrays); any pole is fine."""
    centre = np.asarray(centre, dtype=np.float64)
    # Cross with the axis least aligned with the centre, so the basis never degenerates (poles included).
    axis = np.zeros_like(centre)
    least = np.argmin(np.abs(centre), axis=-1)
    np.put_along_axis(axis, least[..., None], 1.0, axis=-1)
    e1 = np.cross(axis, centre)
    e1 /= np.linalg.norm(e1, axis=-1, keepdims=True)
    e2 = np.cross(centre, e1)
    return e1, e2


def gnomonic(points: np.ndarray, centre: np.ndarray, e1: np.ndarray, e2: np.ndarray) -> tuple[np.ndarray, ...]:
    """Tangent-plane coordinates ``(x, y, w)`` of points; ``w = p . centre`` (points with ``w <= 0`` are behind)."""
    w = np.einsum("...i,...i->...", points, centre)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.einsum("...i,...i->...", points, e1) / w
        y = np.einsum("...i,...i->...", points, e2) / w
    return x, y, w


def points_in_polygons(
    px: np.ndarray, py: np.ndarray, polygon: np.ndarray, vx: np.ndarray, vy: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """Crossing-number test of many (point, polygon) pairs in each polygon's own tangent plane.

    Parameters
    ----------
    px, py : numpy.ndarray
        Tangent-plane coordinates of each pair's point, in its polygon's frame (``(P,)``).
    polygon : numpy.ndarray
        Each pair's polygon index (``(P,)`` ints).
    vx, vy : numpy.ndarray
        Every polygon's vertices in its own tangent plane, concatenated (CSR values).
    offsets : numpy.ndarray
        ``(n_polygons + 1,)``: polygon ``k`` has vertices ``offsets[k]:offsets[k + 1]``.

    Returns
    -------
    numpy.ndarray
        Boolean ``(P,)``: inside (an odd number of edge crossings of a ray towards +x).
    """
    pairs = len(polygon)
    if pairs == 0:
        return np.zeros(0, dtype=bool)
    counts = (offsets[1:] - offsets[:-1])[polygon]
    pair_of_edge = np.repeat(np.arange(pairs), counts)
    first = np.repeat(offsets[:-1][polygon], counts)
    step = np.arange(len(pair_of_edge)) - np.repeat(np.cumsum(counts) - counts, counts)
    a = first + step
    b = first + (step + 1) % np.repeat(counts, counts)
    x, y = px[pair_of_edge], py[pair_of_edge]
    ya, yb = vy[a], vy[b]
    straddles = (ya > y) != (yb > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = vx[a] + (y - ya) * (vx[b] - vx[a]) / (yb - ya)
    crossing = straddles & (x < at)
    return (np.bincount(pair_of_edge, weights=crossing, minlength=pairs).astype(np.int64) % 2) == 1


def _spread_bits(values: np.ndarray) -> np.ndarray:
    """Each of 21 bits of ``values`` moved to every third bit (the Morton interleave of one coordinate)."""
    x = values.astype(np.uint64) & np.uint64(0x1FFFFF)
    for shift, mask in ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
                        (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249)):
        x = (x | (x << np.uint64(shift))) & np.uint64(mask)
    return x


def spatial_order(xyz: np.ndarray) -> np.ndarray:
    """Indices that sort unit vectors along a Z-order (Morton) curve through the unit cube.

    Consecutive runs of the result are compact patches of sky (at any RA, at the poles), so a
    catalogue cut into consecutive chunks of this order touches few images per chunk. The order
    depends only on the positions (stable for ties): the same catalogue always gives the same chunks.
    """
    points = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    cells = np.clip(np.floor((points + 1.0) / 2.0 * 2**21), 0, 2**21 - 1).astype(np.uint64)
    code = (_spread_bits(cells[:, 0]) << np.uint64(2)) | (_spread_bits(cells[:, 1]) << np.uint64(1)) | _spread_bits(
        cells[:, 2])
    return np.argsort(code, kind="stable")
