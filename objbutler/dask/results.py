"""What a campaign returns (stamps or refs, and one error record per failure), and where stamps can go."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import objbutler.errors as _errors
from objbutler.cutouts import Cutout
from objbutler.registry.records import DatasetRef

__all__ = [
    "CutoutResults", "ErrorRecord", "FilesOutput", "IngestResults", "OnError", "Output", "RepositoryOutput",
    "error_record",
]

OnError = Literal["collect", "raise"]


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One failed request (or ingest item).

    Parameters
    ----------
    index : int
        Position of the request in the caller's table.
    target : str
        The image it asked for (or, for ingest, the file or object).
    error_type : str
        Class name of the error (``NotFoundError``, ``InvalidCutoutError``, ...).
    message : str
        The error message.
    dataset_id : str or None
        The image's dataset UUID when it was resolved.
    """

    index: int
    target: str
    error_type: str
    message: str
    dataset_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (for a table or a log)."""
        return dataclasses.asdict(self)

    def to_exception(self, indices: Sequence[int] | None = None) -> Exception:
        """The error re-created on this side: its objbutler (or builtin) class where that is possible."""
        which = f"requests {list(indices)}" if indices else f"request {self.index}"
        text = f"{which} ({self.target}): {self.message}"
        cls = getattr(_errors, self.error_type, None) or getattr(builtins, self.error_type, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            with contextlib.suppress(Exception):
                return cls(text)
        return RuntimeError(f"{self.error_type}: {text}")


class _Collected:
    """What cutout and ingest results share: the error records and how to raise them."""

    errors: list[ErrorRecord]
    _noun = "requests"

    @property
    def ok(self) -> bool:
        """True when every request succeeded."""
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise an :class:`ExceptionGroup` with one error per (target, error) if any request failed."""
        if not self.errors:
            return
        grouped: dict[tuple[str, str, str], list[ErrorRecord]] = defaultdict(list)
        for record in self.errors:
            grouped[(record.target, record.error_type, record.message)].append(record)
        exceptions = [records[0].to_exception([r.index for r in records]) for records in grouped.values()]
        raise ExceptionGroup(f"{len(self.errors)} of {len(self)} {self._noun} failed", exceptions)

    def __len__(self) -> int:
        raise NotImplementedError


@dataclasses.dataclass
class CutoutResults(_Collected):
    """What :func:`cutouts` returns, in request order.

    A row that is a sky position alone (no image named) becomes one request per
    image holding it (found in the registry's sky index, in time order), so
    requests and the caller's rows differ: ``rows[i]`` is the row request ``i``
    came from. Without such rows, request ``i`` is row ``i``.

    Parameters
    ----------
    stamps : list of Cutout or None
        ``stamps[i]`` answers request ``i`` (its ``index`` is ``i``, its ``ref``
        the image); None where the request failed, or where stamps were written
        out instead.
    outputs : list
        With ``out=``: the written file (Path) or stamp dataset (DatasetRef) per
        request, None where it failed. Empty otherwise.
    errors : list of ErrorRecord
        One per failed request, sorted by request.
    rows : list of int
        The caller's row of each request.
    refs : list of DatasetRef or None
        The image of each request (None where it could not be found).
    unmatched : list of int
        Rows with a sky position alone that no image holds (they have no request).
    """

    stamps: list[Cutout | None]
    outputs: list[Any]
    errors: list[ErrorRecord]
    rows: list[int] = dataclasses.field(default_factory=list)
    refs: list[DatasetRef | None] = dataclasses.field(default_factory=list)
    unmatched: list[int] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.stamps)


@dataclasses.dataclass
class IngestResults(_Collected):
    """What :func:`ingest` returns, in item order.

    Parameters
    ----------
    refs : list of DatasetRef or None
        The committed dataset per item, None where it failed.
    errors : list of ErrorRecord
        One per failed item, sorted by item.
    """

    refs: list[DatasetRef | None]
    errors: list[ErrorRecord]
    _noun = "items"

    def __len__(self) -> int:
        return len(self.refs)


def error_record(index: int, target: str, exc: BaseException, dataset_id: str | None = None) -> ErrorRecord:
    return ErrorRecord(index, target, type(exc).__name__, str(exc), dataset_id)


# -- outputs -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class FilesOutput:
    """Write each stamp as a FITS file (WCS and ``BBOX_*`` cards) into a directory the workers can reach.

    Files are named ``{stem}-{index:05d}.fits`` after the request's position.
    """

    directory: str | os.PathLike[str]
    stem: str = "stamp"


@dataclasses.dataclass(frozen=True, slots=True)
class RepositoryOutput:
    """Put each stamp into an (existing) repository as a dataset with provenance to its image.

    Each stamp becomes ``dataset_type`` with data ID ``{"stamp": stamp_id}`` (the
    request's ``stamp_id``, else its position) in ``run``; its ``inputs`` and
    ``derived_from`` name the parent image, and its header carries ``BBOX_*`` and
    ``PARENTID``.
    """

    uri: str
    run: str
    dataset_type: str = "cutout"
    format: str | None = None
    store_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


Output = FilesOutput | RepositoryOutput


