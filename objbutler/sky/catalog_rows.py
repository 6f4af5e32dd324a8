"""The results table the ``cutouts-at`` writers share: its columns, its rows, its flags and the run's summary."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from objbutler.cutouts import ClipMode, Cutout

if TYPE_CHECKING:
    from astropy.coordinates import SkyCoord

    from objbutler.registry.records import DatasetRef

__all__ = ["COLUMNS", "CatalogSummary", "chunk_rows", "flags_of", "requested_shape", "result_row"]

COLUMNS = ("position", "ra", "dec", "dataset_id", "data_id", "run", "mjd", "band", "x0", "y0", "x1", "y1", "x", "y",
           "stamp", "flags")


@dataclasses.dataclass
class CatalogSummary:
    """What :func:`write_catalog_cutouts` wrote."""

    positions: int = 0
    stamps: int = 0
    without_image: int = 0
    skipped: int = 0
    chunks_resumed: int = 0
    results: Path | None = None


def flags_of(stamp: Cutout, requested: tuple[int, int], mode: ClipMode) -> str:
    """A stamp's ``flags``: empty when whole, ``trimmed`` (clipped at an edge) or ``padded`` (partial mode)."""
    ny, nx = (int(n) for n in stamp.ref.sky["shape"])
    box = stamp.bbox
    inside = box.x0 >= 0 and box.y0 >= 0 and box.x1 <= nx and box.y1 <= ny
    if mode == "partial":
        return "" if inside else "padded"
    return "" if stamp.data.shape == requested else "trimmed"


def requested_shape(size: Any) -> tuple[int, int]:
    """``(ny, nx)`` of a size in pixels; ``(-1, -1)`` for an angle."""
    if isinstance(size, tuple | list):
        return int(size[0]), int(size[1])
    try:
        return int(size), int(size)
    except (TypeError, ValueError):
        return (-1, -1)  # an angle: the shape differs per image, only clipping is flagged


def result_row(position: int, ra: float, dec: float, ref: DatasetRef | None, bbox: Any, x: float, y: float,
               stamp: str, flags: str) -> dict[str, Any]:
    """One row of the results table (``""`` for what a row without a stamp lacks)."""
    sky = (ref.sky or {}) if ref is not None else {}
    return {
        "position": position, "ra": ra, "dec": dec,
        "dataset_id": ref.id if ref else "", "data_id": json.dumps(ref.data_id, sort_keys=True) if ref else "",
        "run": ref.run if ref else "", "mjd": sky.get("mjd", ""), "band": sky.get("band", ""),
        "x0": bbox.x0 if bbox else "", "y0": bbox.y0 if bbox else "", "x1": bbox.x1 if bbox else "",
        "y1": bbox.y1 if bbox else "", "x": "" if math.isnan(x) else round(x, 4),
        "y": "" if math.isnan(y) else round(y, 4),
        "stamp": stamp, "flags": flags,
    }


def chunk_rows(result: Sequence[Sequence[tuple[DatasetRef, Cutout]]], skipped: Sequence[Any], rows_of: np.ndarray,
               coords: SkyCoord, requested: tuple[int, int],
               mode: ClipMode) -> Iterator[tuple[dict[str, Any], DatasetRef | None, Cutout | None]]:
    """One chunk of ``cutouts_at`` results as results-table rows, in table order.

    Per position: a row per stamp (yielded with its ref and stamp; the
    caller fills in ``stamp``), a row per image skipped there, and a
    ``no_image`` row when no image holds it.
    """
    ras, decs = np.atleast_1d(coords.ra.deg), np.atleast_1d(coords.dec.deg)
    skipped_by_position: dict[int, list[Any]] = {}
    for item in skipped:
        skipped_by_position.setdefault(item.position, []).append(item)
    for offset, pairs in enumerate(result):
        position = int(rows_of[offset])
        ra, dec = float(ras[offset]), float(decs[offset])
        for ref, stamp in pairs:
            x, y = stamp.input_position_original or (math.nan, math.nan)
            yield result_row(position, ra, dec, ref, stamp.bbox, x, y, "", flags_of(stamp, requested, mode)), ref, stamp
        for item in skipped_by_position.get(offset, []):
            yield result_row(position, ra, dec, item.ref, None, math.nan, math.nan, "",
                             f"skipped: {item.reason}"), None, None
        if not pairs and offset not in skipped_by_position:
            yield result_row(position, ra, dec, None, None, math.nan, math.nan, "", "no_image"), None, None
