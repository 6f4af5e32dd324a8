"""One dataset, several repositories, a format each.

:func:`put_many_repos` writes the same object to every repository it is given,
each in its own format, concurrently. Each put is atomic on its own (data
object first, then the registry commit; a failed commit deletes the data
object), so every repository ends up either with the committed dataset or
with nothing. The call is *not* a transaction across repositories: one
repository failing does not undo the others (object stores offer no
cross-bucket transaction, and the registry keeps no deletions). The result
says, per repository, what happened; put the failed ones again with
:func:`retry_failed` once the cause is fixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from objbutler.errors import FormatError
from objbutler.registry.records import DatasetRef
from objbutler.stores import default_budget, run_concurrently

if TYPE_CHECKING:
    from objbutler.butler import Butler

__all__ = ["RepoPutResult", "put_many_repos", "retry_failed", "split_target"]

Target = tuple["Butler", str | None]


@dataclasses.dataclass(frozen=True, slots=True)
class RepoPutResult:
    """What one repository's put did.

    Parameters
    ----------
    butler : Butler
        The repository.
    format : str or None
        The format asked for (None: the repository's default).
    ref : DatasetRef or None
        The committed dataset, on success.
    error : Exception or None
        Why it failed (the repository holds nothing of it then, unless the
        error is a ``CommitOutcomeUnknownError``: see ``objbutler fsck``).
    """

    butler: Butler
    format: str | None
    ref: DatasetRef | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """Whether the dataset was committed in this repository."""
        return self.ref is not None

    @property
    def uri(self) -> str:
        """The repository's URI."""
        return self.butler.uri

    def __str__(self) -> str:
        if self.ref is not None:
            return f"ok     {self.uri} [{self.ref.format}] {self.ref.id}"
        return f"FAILED {self.uri} [{self.format or 'default'}] {type(self.error).__name__}: {self.error}"


def split_target(text: str) -> tuple[str, str | None]:
    """``"s3://bucket/repo:zarr"`` -> ``("s3://bucket/repo", "zarr")``; no known format suffix -> ``(text, None)``."""
    from objbutler.formats.dispatch import FORMATS

    uri, sep, fmt = text.rpartition(":")
    if sep and uri and fmt in FORMATS:
        return uri, fmt
    return text, None


def _prepared(obj: Any) -> Any:
    """Load a lazily read image once, before threads share it (astropy HDUs read on first access)."""
    from objbutler.formats.dispatch import kind_of

    if kind_of(obj) != "image":
        return obj
    from objbutler.formats import as_image, to_nddata

    try:
        return to_nddata(as_image(obj))
    except FormatError:
        return obj  # each put reports it as a FormatError


def put_many_repos(
    targets: Sequence[tuple[Butler, str | None]],
    obj: Any,
    dataset_type: str,
    data_id: Mapping[str, Any],
    run: str,
    *,
    max_workers: int = 4,
    **put_kwargs: Any,
) -> list[RepoPutResult]:
    """Put one dataset into several repositories, each in its own format.

    Parameters
    ----------
    targets : sequence of (Butler, format)
        Where to put it and in which format (None: the repository's default).
    obj : Any
        What ``Butler.put`` accepts.
    dataset_type, data_id, run
        As for ``Butler.put``; the same in every repository.
    max_workers : int
        Puts running at once.
    **put_kwargs
        Passed to every ``Butler.put`` (``inputs``, ``derived_from``,
        ``activity``, ``format_options``).

    Returns
    -------
    list of RepoPutResult
        In the order of ``targets``; never raises for a failed put.

    Examples
    --------
    >>> results = put_many_repos([(butler_a, "zarr"), (butler_b, "fits")], image,
    ...                          "calexp", {"visit": 1}, run="run1")  # doctest: +SKIP
    >>> [r.ok for r in results]  # doctest: +SKIP
    [True, True]
    """
    if "format" in put_kwargs:
        raise TypeError("give each repository's format in targets, not format=")
    obj = _prepared(obj)

    def one(target: tuple[Butler, str | None]) -> RepoPutResult:
        butler, fmt = target
        try:
            ref = butler.put(obj, dataset_type, data_id, run, format=fmt, **put_kwargs)
        except Exception as exc:
            return RepoPutResult(butler, fmt, error=exc)
        return RepoPutResult(butler, fmt, ref=ref)

    targets = list(targets)
    if not targets:
        return []
    # A fan-out across stores: the process's shared budget; each put then draws on its own store's.
    return run_concurrently(one, targets, max(1, max_workers), default_budget())


def retry_failed(results: Sequence[RepoPutResult], obj: Any, dataset_type: str, data_id: Mapping[str, Any],
                 run: str, **kwargs: Any) -> list[RepoPutResult]:
    """Put again into the repositories whose put failed; successes are kept as they were.

    Returns
    -------
    list of RepoPutResult
        One per entry of ``results``, in the same order.
    """
    failed = [(r.butler, r.format) for r in results if not r.ok]
    retried = iter(put_many_repos(failed, obj, dataset_type, data_id, run, **kwargs))
    return [r if r.ok else next(retried) for r in results]
