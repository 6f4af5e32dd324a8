"""``objbutler cutouts-at``: stamps of every image at every catalogue position, streamed to disk.

The catalogue is cut in chunks of positions (``chunk``); each chunk is one
:meth:`~objbutler.butler.Butler.cutouts_at` call (every image it touches read once, concurrently),
written out, and dropped, so memory holds one chunk's stamps at a time. Chunks follow the
positions' order along a Z-order curve (:func:`objbutler.sky.geometry.spatial_order`), not the
catalogue's rows: each chunk is a compact patch of sky, so an image is read by one or two chunks
rather than by every chunk of a catalogue in random order. The results table is in row order.

Output
    ``--out DIR``: per chunk ``stamps-NNNNN.fits`` (one image extension per stamp, ``EXTNAME``
    ``P<position>_<dataset id 8>``, with its WCS and ``BBOX_*`` cards) and ``results-NNNNN.csv``;
    ``progress.json`` lists the finished chunks, and at the end ``results.csv`` joins them.
    **Resumable**: a chunk counts once its files are renamed into place and ``progress.json`` says
    so (written atomically after them); running the same command again skips finished chunks.

    ``--out FILE.fits``: one multi-extension FITS file, stamps appended chunk by chunk, and a
    ``RESULTS`` table extension at the end. Not resumable (a crash leaves a file without its table).

    ``--out NAME.zarr``: one Zarr v3 group (``stamps``, ``valid``, ``row`` and a ``results`` group of
    1-D columns), resumable, refusing another command's output without ``overwrite``: see
    :mod:`objbutler.sky.catalog_zarr`.

Results columns: ``position`` (row of the catalogue), ``ra``, ``dec``, ``dataset_id``, ``data_id``
(JSON), ``run``, ``mjd``, ``band``, ``x0 y0 x1 y1`` (the stamp's box in parent pixels),
``x y`` (the position in parent pixels), ``stamp`` (``file[EXTNAME]``) and ``flags``: empty for a
whole stamp, ``trimmed`` (clipped at an edge), ``padded`` (``partial`` mode, filled past an edge),
``no_image`` (no footprint holds the position) or ``skipped: <why>``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from objbutler.cutouts import ClipMode, Cutout
from objbutler.errors import InvalidCutoutError
from objbutler.sky.catalog_rows import COLUMNS, CatalogSummary, chunk_rows, requested_shape
from objbutler.sky.geometry import radec_to_xyz, spatial_order
from objbutler.sky.stamp_fits import StampEncoder, primary_header

if TYPE_CHECKING:
    from astropy.coordinates import SkyCoord

    from objbutler.butler import Butler
    from objbutler.registry.records import DatasetRef

__all__ = ["COLUMNS", "CatalogSummary", "read_catalog", "write_catalog_cutouts"]

PROGRESS = "progress.json"


def read_catalog(path: Path) -> SkyCoord:
    """Positions from a catalogue with ``ra`` and ``dec`` columns in degrees (ICRS): CSV, ECSV or Parquet."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    if path.suffix.lower() == ".csv":
        from objbutler.stamps_io import read_radec_csv

        coords = read_radec_csv(path)
        assert isinstance(coords, SkyCoord)
        return coords
    from objbutler.formats.dispatch import read_table_file

    table = read_table_file(path)
    names = {name.lower(): name for name in table.colnames}
    if "ra" not in names or "dec" not in names:
        raise InvalidCutoutError(f"{path}: needs columns ra and dec (degrees); has {table.colnames}")
    # a missing value (a Parquet null reads as a masked entry) is NaN, never the masked entry's fill value
    ra = np.ma.filled(np.ma.asarray(table[names["ra"]]).astype(float), np.nan)
    dec = np.ma.filled(np.ma.asarray(table[names["dec"]]).astype(float), np.nan)
    return SkyCoord(ra * u.deg, dec * u.deg)


def _chunk_rows(result: Sequence[Sequence[tuple[DatasetRef, Cutout]]], skipped: Sequence[Any], rows_of: np.ndarray,
                coords: SkyCoord, stamp_file: str, requested: tuple[int, int], mode: ClipMode,
                encoder: StampEncoder) -> tuple[list[dict[str, Any]], list[bytes]]:
    rows, hdus = [], []
    for row, ref, stamp in chunk_rows(result, skipped, rows_of, coords, requested, mode):
        if ref is not None and stamp is not None:
            name = f"P{row['position']}_{ref.id[:8]}"
            hdus.append(encoder.encode(stamp, name))
            row["stamp"] = f"{stamp_file}[{name}]"
        rows.append(row)
    return rows, hdus


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    temporary = path.with_suffix(path.suffix + ".part")
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_suffix(".part")
    temporary.write_text(json.dumps(document, indent=1))
    os.replace(temporary, path)


def write_catalog_cutouts(
    butler: Butler, dataset_type: str, coords: SkyCoord, size: Any, out: Path, *, run: str | None = None,
    where: dict[str, Any] | None = None, time: Any = None, mode: ClipMode = "trim", chunk: int = 1000,
    progress: Callable[[int], None] | None = None, overwrite: bool = False,
) -> CatalogSummary:
    """Cut the stamps of every catalogue position from every image holding it, writing as it goes.

    See the module docstring for the output; ``progress`` is called with the positions done per chunk.
    ``overwrite`` lets a ``.zarr`` output replace what is not this command's own partial output (the
    other outputs ignore it).
    """
    from astropy.io import fits

    if out.suffix.lower() == ".zarr":
        from objbutler.sky.catalog_zarr import write_zarr_cutouts

        return write_zarr_cutouts(butler, dataset_type, coords, size, out, run=run, where=where, time=time,
                                  mode=mode, chunk=chunk, progress=progress, overwrite=overwrite)

    if chunk < 1:
        raise InvalidCutoutError(f"chunk must be >= 1, got {chunk}")
    coords = coords.reshape((1,)) if coords.isscalar else coords.ravel()
    total = len(coords)
    requested = requested_shape(size)
    summary = CatalogSummary(positions=total)
    single = out.suffix.lower() in (".fits", ".fit", ".fts")
    order = spatial_order(radec_to_xyz(coords.icrs.ra.deg, coords.icrs.dec.deg))
    identity = {"order": "zorder-1", "type": dataset_type, "positions": total, "chunk": chunk, "size": str(size),
                "mode": mode, "run": run, "where": where and {k: str(v) for k, v in where.items()}, "time": str(time)}
    done: set[int] = set()
    encoder = StampEncoder()
    if single:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(primary_header())
    else:
        out.mkdir(parents=True, exist_ok=True)
        if (out / PROGRESS).exists():
            state = json.loads((out / PROGRESS).read_text())
            if state.get("identity") == identity:
                done = {int(c) for c in state.get("done", [])}
                summary.chunks_resumed = len(done)
    all_rows: list[dict[str, Any]] = []
    chunks = math.ceil(total / chunk)
    for number in range(chunks):
        first, last = number * chunk, min(total, (number + 1) * chunk)
        rows_of = order[first:last]
        if number in done:
            if progress is not None:
                progress(last - first)
            continue
        part = coords[rows_of]
        result = butler.cutouts_at(part, size, dataset_type, run, where, time, mode=mode, on_error="skip")
        stamp_file = out.name if single else f"stamps-{number:05d}.fits"
        rows, hdus = _chunk_rows(result, result.skipped, rows_of, part, stamp_file, requested, mode,  # type: ignore[attr-defined]
                                 encoder)
        summary.stamps += len(hdus)
        summary.skipped += len(result.skipped)  # type: ignore[attr-defined]
        summary.without_image += sum(1 for row in rows if row["flags"] == "no_image")
        if single:
            with open(out, "ab") as handle:
                handle.writelines(hdus)
            all_rows += rows
        else:
            stamps_path = out / stamp_file
            temporary = stamps_path.with_suffix(".part")
            with open(temporary, "wb") as handle:
                handle.write(primary_header())
                handle.writelines(hdus)
            os.replace(temporary, stamps_path)
            _write_csv(out / f"results-{number:05d}.csv", rows)
            done.add(number)
            _write_json(out / PROGRESS, {"identity": identity, "done": sorted(done), "chunks": chunks})
        if progress is not None:
            progress(last - first)
    if single:
        from astropy.table import Table

        all_rows.sort(key=lambda row: int(row["position"]))  # chunks went in sky order; the table is by row
        table = Table(rows=[[row[c] for c in COLUMNS] for row in all_rows], names=COLUMNS,
                      dtype=[object] * len(COLUMNS)) if all_rows else Table(names=COLUMNS)
        for name in COLUMNS:
            table[name] = [str(v) for v in table[name]] if len(table) else table[name]
        hdu = fits.table_to_hdu(table) if len(table) else fits.BinTableHDU(name="RESULTS")
        hdu.name = "RESULTS"
        buffer = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
        with open(out, "ab") as handle:  # appended as bytes: astropy's append mode would parse every stamp first
            handle.write(buffer.getvalue()[len(primary_header()):])
        summary.results = out
    else:
        results = out / "results.csv"
        with open(results.with_suffix(".csv.part"), "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            joined: list[dict[str, Any]] = []
            for number in range(chunks):
                with open(out / f"results-{number:05d}.csv", newline="") as part_handle:
                    joined += csv.DictReader(part_handle)
            joined.sort(key=lambda row: int(row["position"]))  # chunks went in sky order; the table is by row
            writer.writerows(joined)
        os.replace(results.with_suffix(".csv.part"), results)
        summary.results = results
    return summary
