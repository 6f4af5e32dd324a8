"""Pure sky geometry: unit vectors, point-in-polygon, the zone grid; RA wrap and poles included (property-based)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from objbutler.sky.geometry import (
    bounding_cap,
    gnomonic,
    points_in_polygons,
    radec_to_xyz,
    tangent_frame,
    xyz_to_radec,
)
from objbutler.sky.index import SkyIndex

ra_values = st.floats(0.0, 359.999999, allow_nan=False)
dec_values = st.floats(-90.0, 90.0, allow_nan=False)


def _polygon(ra: float, dec: float, tangent_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A polygon whose vertices are ``tangent_xy`` (radians) in the tangent plane at (ra, dec)."""
    centre = radec_to_xyz(np.array([ra]), np.array([dec]))[0]
    e1, e2 = tangent_frame(centre)
    vertices = centre + tangent_xy[:, :1] * e1 + tangent_xy[:, 1:] * e2
    return xyz_to_radec(vertices)


def _point(ra: float, dec: float, x: float, y: float) -> np.ndarray:
    centre = radec_to_xyz(np.array([ra]), np.array([dec]))[0]
    e1, e2 = tangent_frame(centre)
    p = centre + x * e1 + y * e2
    return p / np.linalg.norm(p)


def _inside(index: SkyIndex, points: np.ndarray) -> np.ndarray:
    position, _ = index.contains(points)
    out = np.zeros(len(points), dtype=bool)
    out[position] = True
    return out


@given(ra_values, dec_values)
def test_unit_vectors_round_trip(ra: float, dec: float) -> None:
    xyz = radec_to_xyz(np.array([ra]), np.array([dec]))
    assert np.allclose(np.linalg.norm(xyz, axis=1), 1.0)
    back_ra, back_dec = xyz_to_radec(xyz)
    assert abs(back_dec[0] - dec) < 1e-9
    if abs(dec) < 89.9999:
        assert min(abs(back_ra[0] - ra), 360 - abs(back_ra[0] - ra)) < 1e-8


@given(ra_values, dec_values)
def test_tangent_frame_is_orthonormal_everywhere(ra: float, dec: float) -> None:
    centre = radec_to_xyz(np.array([ra]), np.array([dec]))
    e1, e2 = tangent_frame(centre)
    for a, b in ((e1, e2), (e1, centre), (e2, centre)):
        assert abs(float(np.sum(a * b))) < 1e-12
    assert np.allclose(np.linalg.norm(e1, axis=1), 1) and np.allclose(np.linalg.norm(e2, axis=1), 1)


@settings(max_examples=200, deadline=None)
@given(ra_values, dec_values, st.floats(1e-4, 0.3), st.floats(0, 2 * np.pi), st.floats(-1.5, 1.5),
       st.floats(-1.5, 1.5))
def test_rotated_square_anywhere(ra: float, dec: float, half: float, angle: float, u: float, v: float) -> None:
    """A square (half-side ``half`` radians in its tangent plane) at any place, poles and RA 0 included."""
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * half
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    poly_ra, poly_dec = _polygon(ra, dec, corners @ rotation.T)
    index = SkyIndex.from_polygons(poly_ra, poly_dec, np.array([0, 4]))
    x, y = (np.array([u, v]) * half) @ rotation.T
    point = _point(ra, dec, x, y)
    expected = max(abs(u), abs(v)) < 1
    if abs(max(abs(u), abs(v)) - 1) > 1e-6:  # not on the edge
        assert bool(_inside(index, point[None])[0]) == expected


def test_polygon_across_ra_zero_and_around_a_pole() -> None:
    # a 1-degree square straddling RA 0
    ra = np.array([359.5, 0.5, 0.5, 359.5])
    dec = np.array([-0.5, -0.5, 0.5, 0.5])
    index = SkyIndex.from_polygons(ra, dec, np.array([0, 4]))
    points = radec_to_xyz(np.array([0.0, 359.9, 0.2, 180.0, 1.0]), np.array([0.0, 0.1, -0.3, 0.0, 0.0]))
    assert _inside(index, points).tolist() == [True, True, True, False, False]
    # a square around the north pole (vertices at Dec 89, every 90 degrees of RA): its edges are great circles,
    # which bulge towards the pole to Dec 89.29 midway (RA 45)
    ra = np.array([0.0, 90.0, 180.0, 270.0])
    dec = np.full(4, 89.0)
    index = SkyIndex.from_polygons(ra, dec, np.array([0, 4]))
    points = radec_to_xyz(np.array([0.0, 123.0, 45.0, 45.0, 10.0]), np.array([90.0, 89.5, 89.35, 89.25, -89.5]))
    assert _inside(index, points).tolist() == [True, True, True, False, False]


def test_concave_polygon() -> None:
    """An L shape: the notch is outside (a SIP footprint can be slightly concave)."""
    shape = np.array([[0, 0], [2, 0], [2, 1], [1, 1], [1, 2], [0, 2]], dtype=float) * 1e-3
    ra, dec = _polygon(30.0, 40.0, shape)
    index = SkyIndex.from_polygons(ra, dec, np.array([0, 6]))
    inside = [_point(30.0, 40.0, x, y) for x, y in ((0.5e-3, 0.5e-3), (1.5e-3, 0.5e-3), (0.5e-3, 1.5e-3))]
    outside = [_point(30.0, 40.0, x, y) for x, y in ((1.5e-3, 1.5e-3), (-0.1e-3, 0.5e-3))]
    assert _inside(index, np.array(inside + outside)).tolist() == [True, True, True, False, False]


def test_bounding_cap_holds_every_vertex() -> None:
    rng = np.random.default_rng(0)
    vertices = radec_to_xyz(rng.uniform(10, 11, 7), rng.uniform(-5, -4, 7))
    centre, cos_radius = bounding_cap(vertices)
    assert np.all(vertices @ centre >= cos_radius - 1e-15)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(0, 10_000), st.sampled_from([None, 0.05, 0.5, 3.0]))
def test_index_equals_brute_force(n: int, seed: int, zone_height: float | None) -> None:
    """The grid only narrows the candidates: its answer is the polygon test's over every footprint."""
    rng = np.random.default_rng(seed)
    centres_ra = rng.uniform(0, 360, n)
    centres_dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    centres_ra[: n // 3] = rng.uniform(-1, 1, n // 3) % 360  # crowd RA 0
    centres_dec[n // 3 : n // 2] = rng.uniform(85, 90, n // 2 - n // 3) * rng.choice([-1, 1])  # and a pole
    sizes = rng.uniform(0.001, 0.05, n)
    sizes[0] = 0.6  # one wide footprint among small ones
    ras, decs = [], []
    for k in range(n):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 5))
        shape = np.stack([np.cos(angles), np.sin(angles)], axis=1) * sizes[k]
        r, d = _polygon(centres_ra[k], centres_dec[k], shape)
        ras.append(r)
        decs.append(d)
    offsets = np.arange(0, 5 * n + 1, 5)
    index = SkyIndex.from_polygons(np.concatenate(ras), np.concatenate(decs), offsets, zone_height)
    m = 300
    pick = rng.integers(0, n, m)
    points = np.array([_point(centres_ra[k], centres_dec[k], *(rng.uniform(-1.2, 1.2, 2) * sizes[k])) for k in pick])
    position, footprint = index.contains(points)
    got = set(zip(position.tolist(), footprint.tolist(), strict=True))
    # brute force: every (point, footprint) pair through the tangent-plane test, no grid, no caps
    pairs_p = np.repeat(np.arange(m), n)
    pairs_f = np.tile(np.arange(n), m)
    x, y, w = gnomonic(points[pairs_p], index.centre[pairs_f], index.e1[pairs_f], index.e2[pairs_f])
    inside = points_in_polygons(x, y, pairs_f, index.vx, index.vy, index.offsets) & (w > 0)
    expected = set(zip(pairs_p[inside].tolist(), pairs_f[inside].tolist(), strict=True))
    assert got == expected
