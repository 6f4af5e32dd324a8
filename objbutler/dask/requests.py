"""Cutout request tables: one row per stamp, checked before anything runs (see :mod:`objbutler.dask`)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from objbutler.cutouts import Box, as_box
from objbutler.errors import InvalidCutoutError, InvalidKeyError, ObjButlerError
from objbutler.registry.records import DatasetRef, validate_data_id

__all__ = ["REQUEST_FIELDS", "CutoutRequest", "parse_requests"]

#: Columns of a request table with a meaning of their own; every other column is a data ID key.
REQUEST_FIELDS = (
    "dataset_type", "run", "data_id", "dataset_id", "ref",
    "box", "x0", "y0", "x1", "y1", "ra", "dec", "size", "stamp_id",
)


@dataclasses.dataclass(frozen=True, slots=True)
class CutoutRequest:
    """One stamp to cut: which image, and a pixel box or a sky position.

    Parameters
    ----------
    dataset_type, data_id, run : optional
        The image by name (``run`` may be omitted when one run holds it).
    dataset_id : str, optional
        The image by dataset UUID instead.
    box : Box, optional
        A pixel box (half-open, 0-based) ...
    ra, dec : float, optional
        ... or a sky position in degrees (in the ``frame`` given to :func:`cutouts`).
    size : int, (ny, nx) or Quantity, optional
        Stamp size for a sky position (default: the ``size`` given to :func:`cutouts`).
    stamp_id : int or str, optional
        Names the stamp when it is written out (default: the request's position).
    """

    dataset_type: str | None = None
    data_id: Mapping[str, int | str] | None = None
    run: str | None = None
    dataset_id: str | None = None
    box: Box | None = None
    ra: float | None = None
    dec: float | None = None
    size: Any = None
    stamp_id: int | str | None = None

    @property
    def finds_images(self) -> bool:
        """True for a sky position that names no image: every image holding it answers (the sky index)."""
        return self.dataset_id is None and self.data_id is None and self.ra is not None

    @property
    def image(self) -> str:
        """A readable name of the image this request asks for."""
        if self.dataset_id is not None:
            return f"dataset {self.dataset_id}"
        if self.data_id is None:
            return f"every {self.dataset_type or 'image'} holding ({self.ra}, {self.dec})"
        run = f" in run {self.run!r}" if self.run else ""
        return f"{self.dataset_type} {dict(self.data_id or {})}{run}"


def parse_requests(
    requests: Any,
    *,
    dataset_type: str | None = None,
    run: str | None = None,
    size: Any = None,
    data_id_keys: Sequence[str] | None = None,
) -> list[CutoutRequest]:
    """Turn a request table into :class:`CutoutRequest` objects, checking every row.

    Parameters
    ----------
    requests : astropy Table, sequence of mappings or of CutoutRequest, or a path
        One row per stamp. Columns with a meaning: ``dataset_type``, ``run``,
        ``data_id`` (a mapping), ``dataset_id`` or ``ref`` (a DatasetRef), a box as
        ``box`` or ``x0, y0, x1, y1``, a sky position as ``ra, dec`` (degrees),
        ``size`` and ``stamp_id``. Every other column is a data ID key (unless
        ``data_id_keys`` says which), so a table with columns ``visit, detector,
        ra, dec`` works as is. Missing or masked
        values (``None``, NaN, masked) count as absent. A path is read with
        :meth:`astropy.table.Table.read` (ECSV, FITS, CSV ...), or Parquet (read with pyarrow).
        A row with a sky position and no image (no data ID, no dataset ID) asks
        for every image holding the position (:func:`objbutler.dask.cutouts`
        finds them in the registry's sky index); for a catalogue with further
        columns, pass ``data_id_keys=()``.
    dataset_type, run : str, optional
        Defaults for rows that do not say.
    size : optional
        Default size for sky positions; a sky request with no size at all is an error.
    data_id_keys : sequence of str, optional
        The columns that make the data ID; the other columns (a catalogue's
        magnitudes, names ...) are then ignored.

    Returns
    -------
    list of CutoutRequest

    Raises
    ------
    InvalidCutoutError
        A row with neither or both of a box and a sky position, a half sky
        position, a non-integer box, or a sky position without a size.
    InvalidKeyError
        A row that does not name an image, or a bad data ID.
    """
    parsed = []
    for index, row in enumerate(_rows(requests)):
        try:
            request = row if isinstance(row, CutoutRequest) else _request_from_row(row, dataset_type, run,
                                                                                   data_id_keys)
            _check_request(request, size)
        except ObjButlerError as exc:
            raise type(exc)(f"request {index}: {exc}") from None
        parsed.append(request)
    return parsed


def _rows(requests: Any) -> Iterable[Any]:
    if isinstance(requests, str | os.PathLike):
        from objbutler.formats.dispatch import read_table_file

        requests = read_table_file(requests)
    colnames = getattr(requests, "colnames", None)
    if colnames is not None:  # astropy Table
        return (dict(zip(colnames, row, strict=True)) for row in requests)
    if hasattr(requests, "to_dict") and hasattr(requests, "columns"):  # a data frame, without importing pandas
        return list(requests.to_dict("records"))
    return list(requests)


def _plain(value: Any) -> Any:
    """A table cell as a plain Python value, or None when it is missing."""
    if value is None or value is np.ma.masked:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _request_from_row(
    row: Any, dataset_type: str | None, run: str | None, data_id_keys: Sequence[str] | None
) -> CutoutRequest:
    if not isinstance(row, Mapping):
        raise InvalidKeyError(f"expected a mapping or a CutoutRequest, got {type(row).__name__}")
    values = {str(key): _plain(value) for key, value in row.items()}
    ref = values.get("ref")
    dataset_id = ref.id if isinstance(ref, DatasetRef) else values.get("dataset_id")
    data_id = dict(values.get("data_id") or {})
    keys = data_id_keys if data_id_keys is not None else [k for k in values if k not in REQUEST_FIELDS]
    data_id.update({k: values[k] for k in keys if values.get(k) is not None})
    box = values.get("box")
    corners = [values.get(name) for name in ("x0", "y0", "x1", "y1")]
    if box is None and any(c is not None for c in corners):
        box = corners
    return CutoutRequest(
        dataset_type=values.get("dataset_type") or dataset_type,
        data_id=data_id or None,
        run=values.get("run") or run,
        dataset_id=str(dataset_id) if dataset_id is not None else None,
        box=as_box(box) if box is not None else None,
        ra=values.get("ra"),
        dec=values.get("dec"),
        size=values.get("size"),
        stamp_id=values.get("stamp_id"),
    )




def _check_request(request: CutoutRequest, default_size: Any) -> None:
    sky = (request.ra is not None, request.dec is not None)
    if sky[0] != sky[1]:
        raise InvalidCutoutError("a sky position needs both ra and dec")
    if (request.box is not None) == sky[0]:
        raise InvalidCutoutError("give exactly one of a box (x0, y0, x1, y1) and a sky position (ra, dec)")
    if sky[0] and request.size is None and default_size is None:
        raise InvalidCutoutError("a sky position needs a size (a size column, or size=)")
    if request.dataset_id is None and not request.finds_images:
        if request.dataset_type is None or request.data_id is None:
            raise InvalidKeyError("name the image: dataset_type and a data ID, or dataset_id / ref (or give a sky "
                                  "position alone: the images holding it are found in the sky index)")
        validate_data_id(request.data_id)


