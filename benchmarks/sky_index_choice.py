"""Why the sky index is a zone grid of objbutler's own: time it against HEALPix libraries on one workload.

``python -m benchmarks.sky_index_choice [N]`` makes N footprints (0.2-degree squares at random
positions and rotations, 4 vertices each, uniform on the sphere) and N positions (half inside a
footprint), then for each candidate:

* **index**: every footprint's cells (ours: the zone grid; hpgeom: ``query_polygon(inclusive=True)``
  at nside 512; cdshealpix: ``polygon_search`` at depth 9, one call per footprint since neither
  takes many polygons at once), sorted into (cell, footprint) pairs;
* **lookup**: each position's cell (vectorized in every library), ``searchsorted`` into the pairs,
  then the same exact point-in-polygon test on the candidates.

The libraries are optional (``pip install hpgeom cdshealpix``); a missing one is skipped. Only the
zone grid is a dependency of objbutler.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

from objbutler.sky.geometry import radec_to_xyz, tangent_frame, xyz_to_radec
from objbutler.sky.index import SkyIndex

__all__ = ["footprints", "main"]


def footprints(n: int, seed: int = 1, half: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` rotated squares of side ``2 * half`` degrees: concatenated RA, Dec (degrees) and offsets."""
    rng = np.random.default_rng(seed)
    ra_c = rng.uniform(0, 360, n)
    dec_c = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    angle = rng.uniform(0, 2 * np.pi, n)
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    dx = corners[None, :, 0] * cos - corners[None, :, 1] * sin
    dy = corners[None, :, 0] * sin + corners[None, :, 1] * cos
    centre = radec_to_xyz(ra_c, dec_c)
    e1, e2 = tangent_frame(centre)
    vertices = centre[:, None] + np.radians(dx)[..., None] * e1[:, None] + np.radians(dy)[..., None] * e2[:, None]
    ra, dec = xyz_to_radec(vertices.reshape(-1, 3))
    return ra, dec, np.arange(0, 4 * n + 1, 4)


def _positions(ra: np.ndarray, dec: np.ndarray, n: int, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pra = rng.uniform(0, 360, n)
    pdec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    pra[: n // 2] = ra[0 : 4 * (n // 2) : 4] * 0.5 + ra[2 : 4 * (n // 2) + 2 : 4] * 0.5
    pdec[: n // 2] = dec[0 : 4 * (n // 2) : 4] * 0.5 + dec[2 : 4 * (n // 2) + 2 : 4] * 0.5
    return np.stack([pra, pdec], axis=1)


def _timed(function: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def _cell_index(n: int, cover: Callable[[int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(cells, owners) sorted by cell: every HEALPix cell that footprint k's ``cover(k)`` returns."""
    cells = [np.asarray(cover(k)) for k in range(n)]
    owners = [np.full(len(c), k) for k, c in enumerate(cells)]
    c, o = np.concatenate(cells), np.concatenate(owners)
    order = np.argsort(c, kind="stable")
    return c[order], o[order]


def _pairs_lookup(index: SkyIndex, cells_sorted: np.ndarray, fps_sorted: np.ndarray, cell: np.ndarray,
                  xyz: np.ndarray) -> int:
    """Candidates from sorted (cell, footprint) pairs, then the exact test objbutler uses."""
    from objbutler.sky.geometry import gnomonic, points_in_polygons

    lo = np.searchsorted(cells_sorted, cell, "left")
    hi = np.searchsorted(cells_sorted, cell, "right")
    counts = hi - lo
    position = np.repeat(np.arange(len(cell)), counts)
    step = np.arange(len(position)) - np.repeat(np.cumsum(counts) - counts, counts)
    footprint = fps_sorted[np.repeat(lo, counts) + step]
    x, y, _ = gnomonic(xyz[position], index.centre[footprint], index.e1[footprint], index.e2[footprint])
    return int(points_in_polygons(x, y, footprint, index.vx, index.vy, index.offsets).sum())


def main(n: int = 100_000) -> list[str]:
    """Run the comparison and return the table's lines."""
    ra, dec, offsets = footprints(n)
    positions = _positions(ra, dec, n)
    xyz = radec_to_xyz(positions[:, 0], positions[:, 1])
    lines = [f"{n:,} footprints of 0.2 deg, {n:,} positions",
             f"{'method':<34} {'index s':>9} {'lookup s':>9} {'hits':>7}"]
    build, index = _timed(lambda: SkyIndex.from_polygons(ra, dec, offsets))
    assert isinstance(index, SkyIndex)
    index.contains(xyz)
    lookup, found = _timed(lambda: index.contains(xyz))
    hits = len(found[0])  # type: ignore[index]
    lines.append(f"{'objbutler zone grid (numpy)':<34} {build:9.3f} {lookup:9.3f} {hits:7d}")
    try:
        import hpgeom

        def hp_index() -> tuple[np.ndarray, np.ndarray]:
            return _cell_index(n, lambda k: hpgeom.query_polygon(512, ra[4 * k : 4 * k + 4], dec[4 * k : 4 * k + 4],
                                                                 inclusive=True))

        started = time.perf_counter()
        hp_cells, hp_owners = hp_index()
        build = time.perf_counter() - started
        lookup, hits_hp = _timed(lambda: _pairs_lookup(
            index, hp_cells, hp_owners, hpgeom.angle_to_pixel(512, positions[:, 0], positions[:, 1]), xyz))
        lines.append(f"{'hpgeom nside 512 + same exact test':<34} {build:9.3f} {lookup:9.3f} {hits_hp:7d}")
    except ImportError:
        lines.append("hpgeom: not installed (skipped)")
    try:
        from astropy import units as u
        from astropy.coordinates import Latitude, Longitude
        from cdshealpix.nested import lonlat_to_healpix, polygon_search

        def cds_index() -> tuple[np.ndarray, np.ndarray]:
            return _cell_index(n, lambda k: polygon_search(Longitude(ra[4 * k : 4 * k + 4] * u.deg),
                                                           Latitude(dec[4 * k : 4 * k + 4] * u.deg), 9, flat=True)[0])

        started = time.perf_counter()
        cds_cells, cds_owners = cds_index()
        build = time.perf_counter() - started
        lookup, hits_cds = _timed(lambda: _pairs_lookup(index, cds_cells, cds_owners, lonlat_to_healpix(
            Longitude(positions[:, 0] * u.deg), Latitude(positions[:, 1] * u.deg), 9), xyz))
        lines.append(f"{'cdshealpix depth 9 + same exact test':<34} {build:9.3f} {lookup:9.3f} {hits_cds:7d}")
    except ImportError:
        lines.append("cdshealpix: not installed (skipped)")
    return lines


if __name__ == "__main__":
    for line in main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000):
        print(line)
