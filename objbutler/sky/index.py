"""The sky index: which footprints contain which positions, without touching an image.

**Structure.** A zone grid: the sphere is cut into declination zones of height ``h`` degrees, each
zone into ``floor(360 cos(dec) / h)`` right-ascension cells (one cell around a pole), so a cell is
about ``h`` wide everywhere. A footprint is entered in every cell its bounding cap touches (the
cap's declination range, and its right-ascension half-width ``asin(sin r / cos dec)``, wrapping at
0/360; every cell of a zone when the cap holds a pole). The (cell, footprint) pairs are kept sorted
by cell. ``h`` follows the footprints: the median cap radius, so an image touches about nine cells.
A footprint whose cap would touch more than :data:`WIDE_CELLS` cells (an all-sky coadd among CCDs)
is kept in a short list that every position is tested against directly.

**Lookup**, all vectorized over positions: cell of each position, ``searchsorted`` into the pairs,
candidates, then the bounding-cap test and the exact point-in-polygon test
(:func:`objbutler.sky.geometry.points_in_polygons`). The grid is conservative (a cap margin of
1e-7 degrees absorbs rounding), so the answer is exactly the polygon test's.

Why a grid of our own and not a HEALPix or HTM library: see ``docs/design.md`` ("Sky index"). In
short, on this machine it indexes 100,000 footprints in about 0.1 s (a per-footprint
``query_polygon`` call of hpgeom or cdshealpix costs seconds for the same), looks positions up at
the same speed as the libraries' vectorized pixel lookups, and adds no dependency.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from objbutler.sky.geometry import MAX_CAP_DEGREES, gnomonic, points_in_polygons, radec_to_xyz, tangent_frame

if TYPE_CHECKING:
    import pyarrow as pa

    from objbutler.registry.records import DatasetRef
    from objbutler.registry.state import RegistryState

__all__ = ["WIDE_CELLS", "SkyIndex", "StateSkyIndex", "state_sky_index"]

WIDE_CELLS = 4096
"""A footprint whose cap would touch more cells than this is tested against every position instead."""
_CAP_MARGIN_DEG = 1e-7
_COS_MARGIN = 1e-12


@dataclasses.dataclass
class SkyIndex:
    """Footprint polygons and the zone grid over them (see the module docstring).

    Build it with :meth:`from_polygons`. Footprint ``k`` has vertices ``offsets[k]:offsets[k + 1]``.
    """

    centre: np.ndarray  # (n, 3) unit vectors
    cos_radius: np.ndarray  # (n,)
    e1: np.ndarray  # (n, 3)
    e2: np.ndarray  # (n, 3)
    vx: np.ndarray  # (V,) tangent-plane vertices of every footprint
    vy: np.ndarray
    offsets: np.ndarray  # (n + 1,)
    zone_height: float
    zone_cells: np.ndarray  # (zones,) RA cells per zone
    zone_offset: np.ndarray  # (zones,) id of each zone's first cell
    cell_sorted: np.ndarray  # (pairs,) cell ids, sorted
    footprint_sorted: np.ndarray  # (pairs,) footprint of each pair
    wide: np.ndarray  # footprints tested against every position

    def __len__(self) -> int:
        return len(self.cos_radius)

    @classmethod
    def from_polygons(cls, ra: np.ndarray, dec: np.ndarray, offsets: np.ndarray,
                      zone_height: float | None = None) -> SkyIndex:
        """Index polygons given as concatenated vertices (degrees) and CSR offsets.

        Parameters
        ----------
        ra, dec : numpy.ndarray
            Every polygon's vertices, concatenated (degrees).
        offsets : numpy.ndarray
            ``(n + 1,)``: polygon ``k`` is ``offsets[k]:offsets[k + 1]`` (at least 3 vertices each).
        zone_height : float, optional
            Zone height in degrees (default: the median cap radius, within 1/120 and 10 degrees).
        """
        offsets = np.asarray(offsets, dtype=np.int64)
        n = len(offsets) - 1
        xyz = radec_to_xyz(ra, dec).reshape(-1, 3)
        counts = np.diff(offsets)
        if n and counts.min() < 3:
            raise ValueError("every footprint needs at least 3 vertices")
        owner = np.repeat(np.arange(n), counts)
        if n:
            sums = np.add.reduceat(xyz, offsets[:-1], axis=0)
            centre = sums / np.linalg.norm(sums, axis=1, keepdims=True)
            cos_radius = np.minimum.reduceat(np.einsum("ij,ij->i", xyz, centre[owner]), offsets[:-1])
            cos_radius = np.clip(cos_radius, -1.0, 1.0) - _COS_MARGIN
        else:
            centre = np.zeros((0, 3))
            cos_radius = np.zeros(0)
        e1, e2 = tangent_frame(centre) if n else (np.zeros((0, 3)), np.zeros((0, 3)))
        vx, vy, _ = gnomonic(xyz, centre[owner], e1[owner], e2[owner]) if n else (np.zeros(0), np.zeros(0), None)
        radius = np.degrees(np.arccos(np.clip(cos_radius, -1.0, 1.0)))
        if zone_height is None:
            zone_height = float(np.clip(np.median(radius), 1 / 120, 10.0)) if n else 1.0
        grid = _Grid(zone_height)
        cells, fps, wide = grid.cover(centre, radius)
        order = np.argsort(cells, kind="stable")
        return cls(centre, cos_radius, e1, e2, vx, vy, offsets, zone_height, grid.cells, grid.first,
                   cells[order], fps[order], wide)

    def candidates(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(position, footprint)`` pairs whose grid cells or wide list meet: a superset of the answer."""
        grid = _Grid(self.zone_height)
        cell = grid.cell_of(xyz)
        lo = np.searchsorted(self.cell_sorted, cell, "left")
        hi = np.searchsorted(self.cell_sorted, cell, "right")
        counts = hi - lo
        position = np.repeat(np.arange(len(xyz)), counts)
        step = np.arange(len(position)) - np.repeat(np.cumsum(counts) - counts, counts)
        footprint = self.footprint_sorted[np.repeat(lo, counts) + step]
        if len(self.wide):
            position = np.concatenate([position, np.repeat(np.arange(len(xyz)), len(self.wide))])
            footprint = np.concatenate([footprint, np.tile(self.wide, len(xyz))])
        return position, footprint

    def contains(self, xyz: np.ndarray, selected: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every ``(position, footprint)`` pair with the position inside the footprint.

        Parameters
        ----------
        xyz : numpy.ndarray
            ``(N, 3)`` unit vectors of the positions.
        selected : numpy.ndarray, optional
            Boolean per footprint: only these are considered.

        Returns
        -------
        tuple of numpy.ndarray
            Position indices and footprint indices, pair by pair (grouped by position).
        """
        xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
        if len(self) == 0 or len(xyz) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        position, footprint = self.candidates(xyz)
        if selected is not None:
            keep = selected[footprint]
            position, footprint = position[keep], footprint[keep]
        p = xyz[position]
        inside_cap = np.einsum("ij,ij->i", p, self.centre[footprint]) >= self.cos_radius[footprint]
        position, footprint, p = position[inside_cap], footprint[inside_cap], p[inside_cap]
        x, y, _ = gnomonic(p, self.centre[footprint], self.e1[footprint], self.e2[footprint])
        inside = points_in_polygons(x, y, footprint, self.vx, self.vy, self.offsets)
        return position[inside], footprint[inside]


class _Grid:
    """The zone grid of one zone height (pure arithmetic; see the module docstring)."""

    def __init__(self, height: float) -> None:
        self.height = height
        self.zones = max(1, math.ceil(180.0 / height))
        lower = -90.0 + height * np.arange(self.zones)
        upper = np.minimum(lower + height, 90.0)
        poleward = np.maximum(np.abs(lower), np.abs(upper))
        self.cells = np.maximum(1, np.floor(360.0 * np.cos(np.radians(poleward)) / height)).astype(np.int64)
        self.cells[(lower <= -90.0 + 1e-12) | (upper >= 90.0 - 1e-12)] = 1
        self.first = np.concatenate([[0], np.cumsum(self.cells)[:-1]]).astype(np.int64)

    def _zone(self, dec: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((dec + 90.0) / self.height).astype(np.int64), 0, self.zones - 1)

    def cell_of(self, xyz: np.ndarray) -> np.ndarray:
        """The cell id of each position."""
        ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360.0
        dec = np.degrees(np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0)))
        zone = self._zone(dec)
        cells = self.cells[zone]
        column = np.minimum((ra / 360.0 * cells).astype(np.int64), cells - 1)
        return self.first[zone] + column

    def cover(self, centre: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cells touched by each cap: ``(cell ids, footprint of each, wide footprints)``."""
        n = len(radius)
        if n == 0:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        radius = radius + _CAP_MARGIN_DEG
        ra_c = np.degrees(np.arctan2(centre[:, 1], centre[:, 0])) % 360.0
        dec_c = np.degrees(np.arcsin(np.clip(centre[:, 2], -1.0, 1.0)))
        z0 = self._zone(np.maximum(dec_c - radius, -90.0))
        z1 = self._zone(np.minimum(dec_c + radius, 90.0))
        polar = np.abs(dec_c) + radius >= 90.0
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.sin(np.radians(radius)) / np.cos(np.radians(dec_c))
            half = np.where(polar | (ratio >= 1.0), 180.0, np.degrees(np.arcsin(np.clip(ratio, 0.0, 1.0))))
        zones_each = z1 - z0 + 1
        # Route footprints that would touch too many cells to the wide list (estimate: zones x cells in one).
        widest = self.cells[np.where(np.abs(dec_c) < 90, self._zone(np.zeros(n)), 0)]
        estimate = zones_each * np.minimum(widest, np.ceil(2 * half / 360.0 * widest) + 2)
        wide = np.flatnonzero((estimate > WIDE_CELLS) | (radius > MAX_CAP_DEGREES))
        narrow = np.flatnonzero((estimate <= WIDE_CELLS) & (radius <= MAX_CAP_DEGREES))
        footprint = np.repeat(narrow, zones_each[narrow])
        step = np.arange(len(footprint)) - np.repeat(np.cumsum(zones_each[narrow]) - zones_each[narrow],
                                                     zones_each[narrow])
        zone = z0[footprint] + step
        cells = self.cells[zone]
        full = half[footprint] >= 180.0
        lo = np.floor((ra_c[footprint] - half[footprint]) / 360.0 * cells).astype(np.int64)
        hi = np.floor((ra_c[footprint] + half[footprint]) / 360.0 * cells).astype(np.int64)
        count = np.where(full | (hi - lo + 1 >= cells), cells, hi - lo + 1)
        lo = np.where(count == cells, 0, lo)
        owner = np.repeat(footprint, count)
        zone_of = np.repeat(zone, count)
        k = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
        column = (np.repeat(lo, count) + k) % self.cells[zone_of]
        return self.first[zone_of] + column, owner, wide


# --------------------------------------------------------------------- a registry state's index


@dataclasses.dataclass
class _Part:
    """Footprints of one source (a checkpoint, or a state's tail) and what they stand for."""

    index: SkyIndex
    mjd: np.ndarray  # NaN where unknown
    rows: np.ndarray  # checkpoint part: the table row of each footprint
    refs: list[DatasetRef] | None = None  # tail part: the ref of each footprint
    made: dict[int, DatasetRef] = dataclasses.field(default_factory=dict)  # checkpoint refs built so far


def _polygons(skies: Sequence[dict[str, Any] | None]) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """The usable polygons among sky records: their positions in ``skies``, vertices and offsets."""
    kept, ras, decs, counts = [], [], [], []
    for position, sky in enumerate(skies):
        try:
            ra = np.asarray(sky["ra"], dtype=np.float64)  # type: ignore[index]
            dec = np.asarray(sky["dec"], dtype=np.float64)  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            continue
        if ra.ndim != 1 or ra.shape != dec.shape or len(ra) < 3 or not np.all(np.isfinite(ra) & np.isfinite(dec)):
            continue
        kept.append(position)
        ras.append(ra)
        decs.append(dec)
        counts.append(len(ra))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    flat_ra = np.concatenate(ras) if ras else np.zeros(0)
    flat_dec = np.concatenate(decs) if decs else np.zeros(0)
    return kept, flat_ra, flat_dec, offsets


def _checkpoint_part(table: pa.Table, zone_height: float | None = None) -> _Part:
    """Index the footprints of a checkpoint's ``sky_ra``/``sky_dec`` columns (vectorized, no refs built)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ra_column = table["sky_ra"].combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.float64()))
    dec_column = table["sky_dec"].combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.float64()))
    lengths = pc.fill_null(pc.list_value_length(ra_column), 0).to_numpy(zero_copy_only=False)
    dec_lengths = pc.fill_null(pc.list_value_length(dec_column), 0).to_numpy(zero_copy_only=False)
    usable = (lengths >= 3) & (lengths == dec_lengths)
    rows = np.flatnonzero(usable)
    ra_values = pc.list_flatten(ra_column.filter(pa.array(usable))).to_numpy(zero_copy_only=False)
    dec_values = pc.list_flatten(dec_column.filter(pa.array(usable))).to_numpy(zero_copy_only=False)
    finite = np.isfinite(ra_values) & np.isfinite(dec_values)
    offsets = np.concatenate([[0], np.cumsum(lengths[rows])]).astype(np.int64)
    if not finite.all():  # drop polygons with a non-finite vertex (a record crafted by hand)
        bad = np.zeros(len(rows), dtype=bool)
        bad[np.searchsorted(offsets, np.flatnonzero(~finite), "right") - 1] = True
        keep_vertex = np.repeat(~bad, lengths[rows])
        ra_values, dec_values, rows = ra_values[keep_vertex], dec_values[keep_vertex], rows[~bad]
        offsets = np.concatenate([[0], np.cumsum(lengths[rows])]).astype(np.int64)
    mjd = table["sky_mjd"].to_numpy() if table.num_rows else np.zeros(0)
    mjd = np.asarray(mjd, dtype=np.float64)[rows] if len(rows) else np.zeros(0)
    return _Part(SkyIndex.from_polygons(ra_values, dec_values, offsets, zone_height), mjd, rows)


def _tail_part(refs: Sequence[DatasetRef], zone_height: float | None) -> _Part:
    kept, ra, dec, offsets = _polygons([ref.sky for ref in refs])
    chosen = [refs[i] for i in kept]
    mjd = np.array([_mjd(ref.sky) for ref in chosen], dtype=np.float64)
    return _Part(SkyIndex.from_polygons(ra, dec, offsets, zone_height), mjd, np.zeros(0, np.int64), chosen)


def _mjd(sky: dict[str, Any] | None) -> float:
    value = (sky or {}).get("mjd")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


class StateSkyIndex:
    """The sky index of one registry state: its checkpoint's part (shared) and its tail's part.

    Use :func:`state_sky_index`, which builds each part once and reuses it while the log has not
    moved.
    """

    def __init__(self, state: RegistryState, base: _Part) -> None:
        self.state = state
        self.base = base
        table = state.checkpoint.table
        overlay: list[DatasetRef] = []
        if state.sky_overlay and table.num_rows:
            import pyarrow as pa
            import pyarrow.compute as pc

            ids = pa.array(list(state.sky_overlay), pa.string())
            annotated = pc.fill_null(pc.and_(pc.is_in(table["id"], value_set=ids), pc.is_null(table["sky_ra"])),
                                     False)
            if pc.any(annotated).as_py():
                overlay = state._checkpoint_refs(table.filter(annotated))
        self.overlay_ids = {ref.id for ref in overlay}
        self.tail = _tail_part(list(state.tail.values()) + overlay, base.index.zone_height if len(base.index)
                               else None)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.base.index) + len(self.tail.index)

    def find(self, xyz: np.ndarray, dataset_type: str | None = None, where: Any = None, run: str | None = None,
             time: tuple[float, float] | None = None) -> tuple[np.ndarray, list[DatasetRef]]:
        """For each position, the footprints containing it, ordered by time.

        Returns
        -------
        tuple
            ``(position of each pair, ref of each pair)``, pairs sorted by position, then MJD (unknown
            last), then registry order.
        """
        rows_selected, tail_refs = self.state.select(dataset_type, where, run)
        tail_ids = {ref.id for ref in tail_refs}
        if self.overlay_ids:  # annotated checkpoint rows are in the tail part: selected as their rows are
            table = self.state.checkpoint.table
            picked = set(table.filter(pa_mask(rows_selected))["id"].to_pylist())
            tail_ids |= self.overlay_ids & picked
        base_mask = rows_selected[self.base.rows] if len(self.base.rows) else np.zeros(0, dtype=bool)
        tail_mask = np.array([ref.id in tail_ids for ref in (self.tail.refs or [])], dtype=bool)
        if time is not None:
            start, stop = time
            base_mask &= (self.base.mjd >= start) & (self.base.mjd < stop)
            tail_mask &= (self.tail.mjd >= start) & (self.tail.mjd < stop)
        base_pos, base_fp = self.base.index.contains(xyz, base_mask) if base_mask.any() else (np.zeros(0, int),) * 2
        tail_pos, tail_fp = self.tail.index.contains(xyz, tail_mask) if tail_mask.any() else (np.zeros(0, int),) * 2
        position = np.concatenate([base_pos, tail_pos]).astype(np.int64)
        mjd = np.concatenate([self.base.mjd[base_fp], self.tail.mjd[tail_fp]])
        registry_order = np.concatenate([self.base.rows[base_fp], len(self.base.rows) + 10**12 + tail_fp])
        order = np.lexsort((registry_order, np.where(np.isnan(mjd), np.inf, mjd), position))
        refs = self._base_refs(base_fp) + [self.tail.refs[i] for i in tail_fp]  # type: ignore[index]
        return position[order], [refs[i] for i in order]

    def _base_refs(self, footprints: np.ndarray) -> list[DatasetRef]:
        """The refs of checkpoint footprints, built once per footprint (the expensive part of a cold query)."""
        part = self.base
        with self._lock:
            missing = sorted({int(f) for f in np.unique(footprints)} - part.made.keys())
            if missing:
                table = self.state.checkpoint.table.take(part.rows[missing])
                for footprint, ref in zip(missing, self.state._checkpoint_refs(table), strict=True):
                    part.made[footprint] = ref
            made = part.made
        return [made[int(f)] for f in footprints]


def pa_mask(mask: np.ndarray) -> Any:
    """A numpy boolean mask as an Arrow array (for ``Table.filter``)."""
    import pyarrow as pa

    return pa.array(mask, pa.bool_())


_BASES: dict[int, tuple[Any, _Part]] = {}  # id(checkpoint table) -> (the table, its part), a few at a time
_STATES: weakref.WeakKeyDictionary[RegistryState, tuple[Any, StateSkyIndex]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()
_KEEP_BASES = 4


def state_sky_index(state: RegistryState) -> StateSkyIndex:
    """The sky index of a registry state, built once and reused while the log has not moved.

    The checkpoint's part is cached per checkpoint (shared by every state built on it, which on a
    timestamped log is every refresh); the tail's part per (state, log position, commits applied).
    """
    table = state.checkpoint.table
    key = (state.position, state.tail_commits, len(state.sky_overlay), id(table))
    with _CACHE_LOCK:
        cached = _STATES.get(state)
        if cached is not None and cached[0] == key:
            return cached[1]
        entry = _BASES.get(id(table))
        base = entry[1] if entry is not None and entry[0] is table else None
    if base is None:
        base = _checkpoint_part(table)
        with _CACHE_LOCK:
            _BASES[id(table)] = (table, base)
            while len(_BASES) > _KEEP_BASES:
                _BASES.pop(next(iter(_BASES)))
    index = StateSkyIndex(state, base)
    with _CACHE_LOCK:
        _STATES[state] = (key, index)
    return index
