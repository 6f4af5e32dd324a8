"""``objbutler reindex``: give images put before footprints were recorded their sky record.

Each image without one costs one header read (FITS: a range read of the header blocks; Zarr: its
``zarr.json``), run concurrently. The records are committed as **annotation commits** in the
registry log (:mod:`objbutler.registry.commits`), a few hundred per commit, through
:meth:`objbutler.registry.registry.Registry.commit`: the same commit point as a put. Nothing is
rewritten, so the log stays append-only and every reader applies the same annotations in the same
order (the first record given to a dataset wins). Once an annotation commit exists it counts;
if reindex is interrupted, running it again reads only the images still without a record. A
checkpoint written afterwards folds the records into its ``sky*`` columns.

Why not a separate index object beside the log (``manifest/sky/...``)? It would need its own
commit rule (several reindexers racing), one more listing on every refresh, and a second place a
reader must look; the log already gives one order that every reader agrees on, and a warm
Butler pays nothing for it until the next commit.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from objbutler.errors import ObjButlerError
from objbutler.sky.footprint import sky_record, sky_record_from_header

if TYPE_CHECKING:
    from objbutler.butler import Butler
    from objbutler.registry.records import DatasetRef
    from objbutler.stores import Store

__all__ = ["ReindexReport", "read_sky_record", "reindex"]

BATCH = 500
"""Sky records per annotation commit."""


@dataclasses.dataclass
class ReindexReport:
    """What :func:`reindex` did."""

    examined: int = 0
    """Images without a sky record when it started."""
    recorded: int = 0
    """Images given one."""
    without_wcs: list[str] = dataclasses.field(default_factory=list)
    """Dataset ids of images whose header has no 2-D celestial WCS (nothing to record)."""
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    """Dataset id -> why its header could not be read."""
    commits: int = 0


def read_sky_record(store: Store, ref: DatasetRef) -> dict[str, Any] | None:
    """The sky record of a stored image, from its header alone (one small read)."""
    if ref.format == "fits":
        from objbutler.formats.fits_headers import HeaderReader, locate
        from objbutler.formats.fits_tiles import image_header
        from objbutler.ranges import CostModel

        info = locate(HeaderReader(store, ref.key, CostModel.for_store(store)), None)
        header = image_header(info.header) if info.kind == "compressed" else info.header
        return sky_record_from_header(header, tuple(info.image_shape), relax=True)
    if ref.format == "zarr":
        from objbutler.formats.wcs_cards import header_wcs
        from objbutler.formats.zarr_array import zarr_image_shape_and_attributes
        from objbutler.formats.zarr_header import WCS_RELAX, header_from_json

        shape, attributes = zarr_image_shape_and_attributes(store, ref.key)
        cards = attributes.get("wcs")
        if not cards:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = header_wcs(header_from_json(cards))
        described = header_from_json(attributes.get("fits_header") or [])
        return sky_record(wcs, shape, described, relax=WCS_RELAX)
    return None


def reindex(butler: Butler, dataset_type: str | None = None, *, jobs: int = 16, batch: int = BATCH,
            checkpoint: bool = True, progress: Callable[[int], None] | None = None) -> ReindexReport:
    """Record footprints for every image of the repository (or of one type) that has none.

    Parameters
    ----------
    butler : Butler
        The repository.
    dataset_type : str, optional
        Only this type.
    jobs : int
        Headers read at once.
    batch : int
        Sky records per annotation commit.
    checkpoint : bool
        Write a checkpoint at the end, so the records land in its ``sky*`` columns.
    progress : callable, optional
        Called with the number of headers read after each one.

    Returns
    -------
    ReindexReport
    """
    from objbutler.stores import budget_of, run_concurrently

    state = butler.registry.refresh()
    todo = [ref for ref in state.query(dataset_type) if ref.sky is None and ref.format in ("fits", "zarr")]
    report = ReindexReport(examined=len(todo))
    done = 0
    lock = threading.Lock()

    def read(ref: DatasetRef) -> tuple[DatasetRef, dict[str, Any] | None, str | None]:
        nonlocal done
        try:
            record = read_sky_record(butler.store, ref)
            outcome: tuple[DatasetRef, dict[str, Any] | None, str | None] = (ref, record, None)
        except (ObjButlerError, OSError, ValueError, KeyError) as exc:
            outcome = (ref, None, f"{type(exc).__name__}: {exc}")
        with lock:
            done += 1
            if progress is not None:
                progress(done)
        return outcome

    for start in range(0, len(todo), batch):
        notes = []
        for ref, record, problem in run_concurrently(read, todo[start : start + batch], jobs, budget_of(butler.store)):
            if problem is not None:
                report.failed[ref.id] = problem
            elif record is None:
                report.without_wcs.append(ref.id)
            else:
                notes.append({"id": ref.id, "sky": record})
        if notes:
            with butler.combiner.exclusive():  # never racing this process's group commits
                butler.registry.commit([], {}, [], annotations=notes)
            report.commits += 1
            report.recorded += len(notes)
    if checkpoint and report.recorded:
        try:
            butler.registry.write_checkpoint()
        except ObjButlerError as exc:  # after the commit point: the records stand; a later commit checkpoints
            warnings.warn(f"reindex: the records are committed, but the checkpoint failed ({exc})", stacklevel=2)
    return report
