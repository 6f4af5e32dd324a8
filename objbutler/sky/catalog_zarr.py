"""``objbutler cutouts-at --out stamps.zarr``: catalogue stamps as one Zarr v3 group that stock zarr reads.

Layout (see ``docs/sky.md``; the why is in ``docs/design.md``)
    ``stamps`` (``stamp, y, x``): every stamp in a frame of the requested ``(ny, nx)``, in write
    order (chunks of positions along the sky curve, then time order within a position). A stamp
    cut short at an image edge (``trim``) sits where the whole box would have put it and the rest
    of the frame is the fill value (NaN for floats, 0 for integers): ``valid`` (``stamp, bound``,
    ``[y0, y1, x0, x1]``) says which part holds pixels, so ``stamps[i, y0:y1, x0:x1]`` is exactly the
    stamp :meth:`~objbutler.butler.Butler.cutouts_at` returns. ``row`` (``stamp``): the stamp's row
    of the results table.

    ``results/<column>`` (``row``): the results table of :data:`objbutler.sky.catalog.COLUMNS`,
    one 1-D array per column, in catalogue row order; ``stamp`` is the index into ``stamps`` (-1:
    none), ``x0 y0 x1 y1`` are 0 and ``x y mjd`` NaN for a row without a stamp.

    The group's ``objbutler`` attribute holds what made it (``identity``), the progress, and the
    pixel type rule. Its metadata is consolidated at the end (zarr-python's extension, which xarray
    opens in one read; other readers use each array's own ``zarr.json``).

Pixel type: the images' own when every image the catalogue touches records one type in its registry
layout (a FITS image objbutler wrote without scaling, or a Zarr image); float64 otherwise (types
differ, a scaled or unrecorded type, or an integer type in ``partial`` mode, whose pads are NaN).

Resuming: each chunk of positions writes its stamps, then its results rows (a JSON file under
``.parts/``), then marks itself done in the group's attributes (``zarr.json``, replaced whole by
zarr's local store). A rerun with the same identity truncates the arrays to the last chunk done and
carries on; the results arrays are written at the end, after which ``.parts/`` is removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from objbutler.cutouts import ClipMode, Cutout, boxes_at, is_angular
from objbutler.errors import AlreadyExistsError, InvalidCutoutError
from objbutler.sky.catalog_rows import COLUMNS, CatalogSummary, chunk_rows, requested_shape
from objbutler.sky.geometry import radec_to_xyz, spatial_order

if TYPE_CHECKING:
    from astropy.coordinates import SkyCoord

    from objbutler.butler import Butler
    from objbutler.registry.records import DatasetRef

__all__ = ["ATTRIBUTE", "check_zarr_output", "write_zarr_cutouts"]

ATTRIBUTE = "objbutler"
KIND = "catalog-cutouts"
PARTS = ".parts"
STAMP_CHUNK_BYTES = 1 << 20  # stamps per Zarr chunk: about 1 MiB of pixels (docs/design.md measures it)
RESULT_CHUNK = 100_000  # rows per chunk of a results column
_BITPIX = {8: np.uint8, 16: np.int16, 32: np.int32, 64: np.int64, -32: np.float32, -64: np.float64}
_INTEGER_COLUMNS = ("position", "x0", "y0", "x1", "y1", "stamp")
_FLOAT_COLUMNS = ("ra", "dec", "mjd", "x", "y")


def _identity(dataset_type: str, coords: SkyCoord, size: Any, mode: str, chunk: int, run: str | None,
              where: dict[str, Any] | None, time: Any) -> dict[str, Any]:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(coords.icrs.ra.deg, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(coords.icrs.dec.deg, dtype="<f8").tobytes())
    return {"order": "zorder-1", "type": dataset_type, "positions": len(coords),
            "catalog": "sha256:" + digest.hexdigest(), "chunk": chunk, "size": str(size), "mode": mode,
            "run": run, "where": where and {k: str(v) for k, v in where.items()}, "time": str(time)}


def _layout_dtype(ref: DatasetRef) -> np.dtype[Any] | None:
    """The pixel type an image's registry layout records, or None when it records none or a scaled one."""
    layout = ref.layout
    if not isinstance(layout, dict):
        return None
    if "bitpix" in layout:
        if any(key in layout for key in ("bscale", "bzero", "blank")):
            return None
        found = _BITPIX.get(layout["bitpix"])
        return np.dtype(found) if found is not None else None
    metadata = layout.get("metadata")
    name = metadata.get("data_type") if isinstance(metadata, dict) else None
    if not isinstance(name, str):
        return None
    try:
        dtype = np.dtype(name)
    except TypeError:
        return None
    return dtype if dtype.kind in "iuf" else None


def stamp_array_dtype(refs: Sequence[DatasetRef], mode: ClipMode) -> np.dtype[Any]:
    """The ``stamps`` array's pixel type: the images' one recorded type, else float64 (see the module notes)."""
    found = {_layout_dtype(ref) for ref in refs}
    if len(found) != 1 or None in found:
        return np.dtype(np.float64)
    dtype = found.pop()
    assert dtype is not None
    if mode == "partial" and dtype.kind != "f":
        return np.dtype(np.float64)  # its pads are NaN
    return dtype


def _fill(dtype: np.dtype[Any]) -> float | int:
    return math.nan if dtype.kind == "f" else 0


def _state(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The progress of this command's output at ``out``, None if there is none; refuses anything else there."""
    import zarr

    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    try:
        state = zarr.open_group(out, mode="r", zarr_format=3).attrs.get(ATTRIBUTE)
    except Exception:  # anything that is not our group
        state = None
    if not isinstance(state, dict) or state.get("kind") != KIND:
        raise AlreadyExistsError(f"{out} already exists and is not a cutouts-at Zarr output; "
                                 "add --overwrite to replace it")
    if state.get("identity") != identity:
        old = state.get("identity") or {}
        differ = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        raise AlreadyExistsError(f"{out} was written by another cutouts-at command (it differs in "
                                 f"{', '.join(differ)}); add --overwrite to replace it, or write elsewhere")
    return state


def _checked(dataset_type: str, coords: SkyCoord, size: Any, mode: str, chunk: int, run: str | None,
             where: dict[str, Any] | None, time: Any) -> tuple[SkyCoord, tuple[int, int], dict[str, Any]]:
    """The catalogue as a 1-D SkyCoord, the frame ``(ny, nx)`` and the identity; refuses what cannot be written."""
    if chunk < 1:
        raise InvalidCutoutError(f"chunk must be >= 1, got {chunk}")
    if size is None or is_angular(size):
        raise InvalidCutoutError(f"a .zarr output needs a stamp size in pixels (one frame shape), got {size}")
    requested = requested_shape(size)
    if min(requested) < 1:
        raise InvalidCutoutError(f"stamp size must be positive, got {size}")
    coords = coords.reshape((1,)) if coords.isscalar else coords.ravel()
    return coords, requested, _identity(dataset_type, coords, size, mode, chunk, run, where, time)


def check_zarr_output(dataset_type: str, coords: SkyCoord, size: Any, out: Path, *, run: str | None = None,
                      where: dict[str, Any] | None = None, time: Any = None, mode: ClipMode = "trim",
                      chunk: int = 1000, overwrite: bool = False) -> None:
    """Refuse now what :func:`write_zarr_cutouts` would refuse with these arguments, touching nothing.

    For a caller that shows progress: its errors then come before any progress bar.

    Raises
    ------
    AlreadyExistsError
        If ``out`` holds something else than this command's output, without ``overwrite``.
    InvalidCutoutError
        For an angular size or ``chunk < 1``.
    """
    _, _, identity = _checked(dataset_type, coords, size, mode, chunk, run, where, time)
    if not overwrite:
        _state(out, identity)


def _open_existing(out: Path, identity: dict[str, Any], overwrite: bool) -> Any:
    """The group to resume, None to start afresh; refuses another run's output unless ``overwrite``."""
    import zarr

    if overwrite and out.exists():
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
        return None
    if _state(out, identity) is None:
        return None
    return zarr.open_group(out, mode="r+", zarr_format=3)


def _create(out: Path, identity: dict[str, Any], shape: tuple[int, int], dtype: np.dtype[Any]) -> Any:
    import zarr

    group = zarr.open_group(out, mode="w", zarr_format=3)
    per_chunk = max(1, STAMP_CHUNK_BYTES // (shape[0] * shape[1] * dtype.itemsize))
    group.create_array("stamps", shape=(0, *shape), chunks=(per_chunk, *shape), dtype=dtype,
                       fill_value=_fill(dtype), dimension_names=("stamp", "y", "x"))
    group.create_array("valid", shape=(0, 4), chunks=(per_chunk * 64, 4), dtype=np.int32, fill_value=0,
                       dimension_names=("stamp", "bound"), attributes={"bounds": ["y0", "y1", "x0", "x1"]})
    group.update_attributes({ATTRIBUTE: {
        "kind": KIND, "version": 1, "identity": identity, "dtype": str(dtype),
        "dtype_rule": "the images' one recorded pixel type, else float64",
        "fill_value": "NaN" if dtype.kind == "f" else 0, "columns": list(COLUMNS),
        "chunks_done": 0, "stamps_after": [], "complete": False,
    }})
    return group


def _frame(stamp: Cutout, requested: tuple[int, int], mode: ClipMode) -> tuple[int, int, int, int]:
    """``[y0, y1, x0, x1]``: where the stamp's image pixels are in its ``requested`` frame."""
    ny, nx = stamp.data.shape
    if mode == "partial":  # the stamp is the frame; its pads are not image pixels
        rows, cols = stamp.slices_cutout
        return rows.start, rows.stop, cols.start, cols.stop
    if stamp.input_position_original is None:
        top, left = 0, 0
    else:  # trim: the whole box, as partial mode would cut it, is the frame
        x, y = stamp.input_position_original
        whole = boxes_at(np.array([[x, y]]), requested)[0]
        top, left = stamp.bbox.y0 - whole.y0, stamp.bbox.x0 - whole.x0
    if top < 0 or left < 0 or top + ny > requested[0] or left + nx > requested[1]:
        raise InvalidCutoutError(f"a {ny}x{nx} stamp at {stamp.bbox} does not fit its {requested} frame")
    return top, top + ny, left, left + nx


def _chunk(result: Sequence[Sequence[tuple[DatasetRef, Cutout]]], skipped: Sequence[Any], rows_of: np.ndarray,
           coords: SkyCoord, requested: tuple[int, int], mode: ClipMode, dtype: np.dtype[Any],
           first_stamp: int) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """One chunk's results rows (``stamp``: the global index), its stamps in their frames, and ``valid``."""
    rows: list[dict[str, Any]] = []
    stamps: list[tuple[Cutout, tuple[int, int, int, int]]] = []
    for row, ref, stamp in chunk_rows(result, skipped, rows_of, coords, requested, mode):
        if ref is not None and stamp is not None:
            if not np.can_cast(stamp.data.dtype, dtype, "safe"):
                raise InvalidCutoutError(f"image {ref.id} gave {stamp.data.dtype} pixels, which the {dtype} stamps "
                                         "array cannot hold; its registry layout records another type")
            row["stamp"] = first_stamp + len(stamps)
            stamps.append((stamp, _frame(stamp, requested, mode)))
        rows.append(row)
    block = np.full((len(stamps), *requested), _fill(dtype), dtype=dtype)
    valid = np.zeros((len(stamps), 4), dtype=np.int32)
    for k, (stamp, bounds) in enumerate(stamps):
        if mode == "partial":
            block[k] = stamp.data
        else:
            block[k, bounds[0]:bounds[1], bounds[2]:bounds[3]] = stamp.data
        valid[k] = bounds
    return rows, block, valid


def _write_json(path: Path, document: Any) -> None:
    temporary = path.with_name(path.name + ".part")
    temporary.write_text(json.dumps(document))
    os.replace(temporary, path)


def _column(rows: Sequence[dict[str, Any]], name: str) -> np.ndarray:
    values = [row[name] for row in rows]
    if name in _INTEGER_COLUMNS:
        return np.array([0 if v == "" else int(v) for v in values], dtype=np.int64)
    if name in _FLOAT_COLUMNS:
        return np.array([math.nan if v == "" else float(v) for v in values], dtype=np.float64)
    return np.array([str(v) for v in values], dtype=object)


def _finish(group: Any, out: Path, chunks: int) -> list[dict[str, Any]]:
    """Join the chunks' rows in catalogue order and write the results arrays and ``row``."""
    rows: list[dict[str, Any]] = []
    for number in range(chunks):
        rows += json.loads((out / PARTS / f"results-{number:05d}.json").read_text())
    rows.sort(key=lambda row: int(row["position"]))  # stable: a position's rows stay in time order
    for row in rows:
        if row["stamp"] == "":
            row["stamp"] = -1
    results = group.require_group("results")
    for name in COLUMNS:
        values = _column(rows, name)
        dtype = str if values.dtype == object else values.dtype
        array = results.create_array(name, shape=values.shape, chunks=(max(1, min(len(values), RESULT_CHUNK)),),
                                     dtype=dtype, dimension_names=("row",), overwrite=True)
        if len(values):
            array[:] = values
    stamp_of = _column(rows, "stamp")
    row_of = np.zeros(int(group["stamps"].shape[0]), dtype=np.int64)
    has = stamp_of >= 0
    row_of[stamp_of[has]] = np.flatnonzero(has)
    array = group.create_array("row", shape=row_of.shape, chunks=(max(1, min(len(row_of), RESULT_CHUNK)),),
                               dtype=np.int64, dimension_names=("stamp",), overwrite=True)
    if len(row_of):
        array[:] = row_of
    return rows


def write_zarr_cutouts(
    butler: Butler, dataset_type: str, coords: SkyCoord, size: Any, out: Path, *, run: str | None = None,
    where: dict[str, Any] | None = None, time: Any = None, mode: ClipMode = "trim", chunk: int = 1000,
    progress: Callable[[int], None] | None = None, overwrite: bool = False,
) -> CatalogSummary:
    """Cut every catalogue position's stamps into one Zarr v3 group at ``out`` (see the module docstring).

    Parameters
    ----------
    butler : Butler
        The repository.
    dataset_type : str
        Images of this type.
    coords : astropy.coordinates.SkyCoord
        The catalogue.
    size : int or (ny, nx)
        Stamp size in pixels (an angle is refused: the frame must be one shape).
    out : pathlib.Path
        The group's directory (``.zarr``).
    run, where, time, mode
        As for :meth:`~objbutler.butler.Butler.cutouts_at`.
    chunk : int
        Positions per batch: memory holds one batch's stamps.
    progress : callable, optional
        Called with the positions done after each batch (finished batches of a resumed run too).
    overwrite : bool
        Replace ``out`` when it holds something else than this command's (partial) output.

    Returns
    -------
    CatalogSummary
        Totals over the whole group (a resumed run's earlier chunks included).

    Raises
    ------
    AlreadyExistsError
        If ``out`` exists and was not written by this same command, without ``overwrite``.
    InvalidCutoutError
        For an angular size or ``chunk < 1``.
    """
    coords, requested, identity = _checked(dataset_type, coords, size, mode, chunk, run, where, time)
    total = len(coords)
    chunks = math.ceil(total / chunk)
    order = spatial_order(radec_to_xyz(coords.icrs.ra.deg, coords.icrs.dec.deg))
    group = _open_existing(out, identity, overwrite)
    if group is None:
        refs: dict[str, DatasetRef] = {}
        for number in range(chunks):  # registry only: which images the catalogue touches, for the pixel type
            for found in butler.find_images(coords[order[number * chunk:(number + 1) * chunk]], dataset_type, run,
                                            where, time):
                refs.update((ref.id, ref) for ref in found)
        out.parent.mkdir(parents=True, exist_ok=True)
        group = _create(out, identity, requested, stamp_array_dtype(list(refs.values()), mode))
    state = dict(group.attrs[ATTRIBUTE])
    summary = CatalogSummary(positions=total, results=out)
    if state.get("complete"):
        summary.chunks_resumed = chunks
        for name in ("stamps", "without_image", "skipped"):
            setattr(summary, name, int(state["totals"][name]))
        _tidy(out)  # a crash after the mark may have left these undone
        if progress is not None:
            progress(total)
        return summary
    stamps, valid = group["stamps"], group["valid"]
    done, after = int(state["chunks_done"]), [int(n) for n in state["stamps_after"]]
    written = after[-1] if after else 0
    stamps.resize((written, *requested))  # drop what a crashed chunk wrote past the last one done
    valid.resize((written, 4))
    (out / PARTS).mkdir(exist_ok=True)
    summary.chunks_resumed = done
    if done and progress is not None:
        progress(min(total, done * chunk))
    for number in range(done, chunks):
        first, last = number * chunk, min(total, (number + 1) * chunk)
        rows_of = order[first:last]
        part = coords[rows_of]
        result = butler.cutouts_at(part, size, dataset_type, run, where, time, mode=mode, on_error="skip")
        rows, block, boxes = _chunk(result, result.skipped, rows_of, part, requested, mode,  # type: ignore[attr-defined]
                                    np.dtype(stamps.dtype), written)
        if len(block):
            stamps.resize((written + len(block), *requested))
            valid.resize((written + len(block), 4))
            stamps[written:] = block
            valid[written:] = boxes
            written += len(block)
        _write_json(out / PARTS / f"results-{number:05d}.json", rows)
        after.append(written)
        state.update(chunks_done=number + 1, stamps_after=after)
        group.update_attributes({ATTRIBUTE: state})  # the chunk counts from here
        if progress is not None:
            progress(last - first)
    rows = _finish(group, out, chunks)
    summary.stamps = written
    summary.without_image = sum(1 for row in rows if row["flags"] == "no_image")
    summary.skipped = sum(1 for row in rows if str(row["flags"]).startswith("skipped"))
    state.update(complete=True, totals={"stamps": summary.stamps, "without_image": summary.without_image,
                                        "skipped": summary.skipped, "rows": len(rows)})
    group.update_attributes({ATTRIBUTE: state})
    _tidy(out)
    return summary


def _tidy(out: Path) -> None:
    """After the completion mark: drop the chunks' rows and consolidate the metadata (again, if a rerun)."""
    import zarr

    shutil.rmtree(out / PARTS, ignore_errors=True)
    with warnings.catch_warnings():  # zarr-python's own extension; xarray warns when it is missing
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(str(out), zarr_format=3)  # written last: a resumed run never finds it stale
