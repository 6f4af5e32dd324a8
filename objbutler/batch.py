"""Many puts, one commit: :func:`put_many` and the :class:`Batch` context of :meth:`Butler.batch`.

Both encode and upload the datasets concurrently (at most ``max_concurrency``
at a time), then hand the written datasets to the Butler's commit combiner,
which commits them in chunks of
:data:`~objbutler.group_commit.DEFAULT_CHUNK_SIZE` (one registry commit per
chunk; on a timestamped repository, such as Swift, one settle per chunk).

Per item:

* refused before its commit (bad input, a format that cannot hold it, a data
  ID already taken, a second item with the same data ID in the batch, a
  failed upload, a conflict the commit reports for it): the item gets the
  exception, its data is deleted (or never written), the others go on;
* its chunk's commit was refused as a whole (a dataset type that disagrees,
  a store refusal before the commit point): every item of the chunk gets the
  exception and its data is deleted;
* :class:`~objbutler.errors.CommitOutcomeUnknownError`: every item of that
  chunk gets it and keeps its data (``objbutler fsck`` tells);
* once its chunk's commit object exists, the item has succeeded, whatever
  happens after (a failing checkpoint or refresh never undoes it).

With ``errors="raise"`` (the default) a :class:`~objbutler.errors.BatchError`
is raised after the rest committed, its ``.results`` holding each item's
ref or exception, in order; ``errors="return"`` returns that list instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from objbutler.errors import BatchError, ConflictError, InvalidKeyError
from objbutler.group_commit import Outcome, PendingPut
from objbutler.provenance import current_activity
from objbutler.registry.records import DatasetRef, validate_data_id, validate_dataset_type_name, validate_run
from objbutler.registry.state import unique_key
from objbutler.stores import DEFAULT_MAX_CONCURRENCY, Feed, budget_of, run_concurrently

if TYPE_CHECKING:
    from objbutler.butler import Butler
    from objbutler.provenance import Activity

__all__ = ["Batch", "BatchItem", "put_many"]

ErrorMode = Literal["raise", "return"]


class BatchItem:
    """One put of a batch: what it names, and (after the commit) its outcome.

    Attributes
    ----------
    obj, dataset_type, data_id, inputs, derived_from, format, format_options
        As given to the put.
    """

    def __init__(self, obj: Any, dataset_type: str, data_id: Mapping[str, Any], *,
                 inputs: Sequence[DatasetRef] | None = None, derived_from: Sequence[DatasetRef] | None = None,
                 format: str | None = None, format_options: Mapping[str, Any] | None = None) -> None:
        self.obj = obj
        self.dataset_type = dataset_type
        self.data_id = data_id
        self.inputs = inputs
        self.derived_from = derived_from
        self.format = format
        self.format_options = format_options
        self.future: Future[DatasetRef] = Future()

    @classmethod
    def of(cls, item: Any, format: str | None, format_options: Mapping[str, Any] | None) -> BatchItem:
        """An item of :func:`put_many`: a ``(obj, dataset_type, data_id)`` tuple or a mapping with those keys.

        Raises
        ------
        InvalidKeyError
            The item has neither shape.
        """
        if isinstance(item, Mapping):
            unknown = set(item) - {"obj", "dataset_type", "data_id", "inputs", "derived_from", "format",
                                   "format_options"}
            if unknown or not {"obj", "dataset_type", "data_id"} <= set(item):
                raise InvalidKeyError(f"a put_many item needs keys obj, dataset_type, data_id (optional: inputs, "
                                      f"derived_from, format, format_options); got {sorted(item)}")
            return cls(item["obj"], item["dataset_type"], item["data_id"], inputs=item.get("inputs"),
                       derived_from=item.get("derived_from"), format=item.get("format", format),
                       format_options=item.get("format_options", format_options))
        if isinstance(item, tuple) and len(item) == 3:
            return cls(item[0], item[1], item[2], format=format, format_options=format_options)
        raise InvalidKeyError(f"a put_many item is an (obj, dataset_type, data_id) tuple or a mapping, "
                              f"not {type(item).__name__}")

    def unique_key(self, run: str) -> tuple[str, str, str]:
        """``(type, run, canonical data ID)``; raises InvalidKeyError for a bad name or data ID."""
        return unique_key(validate_dataset_type_name(self.dataset_type), run, validate_data_id(self.data_id))


def _concurrency(butler: Butler, max_concurrency: int | None) -> int:
    if max_concurrency is not None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        return max_concurrency
    return int(getattr(butler.store, "max_concurrency", DEFAULT_MAX_CONCURRENCY))


def _write(butler: Butler, item: BatchItem, run: str, activity: Activity | None) -> PendingPut | BaseException:
    """Encode, check and upload one item; the written dataset, or the exception (nothing left behind)."""
    try:
        pending, encoded = butler.prepare_put(item.obj, item.dataset_type, item.data_id, run, format=item.format,
                                              inputs=item.inputs, derived_from=item.derived_from,
                                              format_options=item.format_options, activity=activity)
        butler.registry.check([pending.dataset_type], pending.kinds, [pending.ref])
        butler.upload(pending, encoded)
        return pending
    except Exception as exc:
        return exc


def _commit(butler: Butler, written: Sequence[PendingPut | BaseException],
            activity: Activity | None, chunk_size: int | None) -> list[Outcome]:
    """Commit the written items (one request to the combiner); every item's outcome, in order."""
    pending = [w for w in written if isinstance(w, PendingPut)]
    committed = iter(butler.commit_pending(pending, chunk_size) if pending else [])
    outcomes = [w if isinstance(w, BaseException) else next(committed) for w in written]
    if activity is not None:
        activity.outputs.extend(o.id for o in outcomes if isinstance(o, DatasetRef))
    return outcomes


def _finish(outcomes: list[Outcome], errors: ErrorMode) -> list[Any]:
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed and errors == "raise":
        raise BatchError(f"{len(failed)} of {len(outcomes)} datasets failed, the rest committed; first: "
                         f"{type(failed[0]).__name__}: {failed[0]}", outcomes)
    return list(outcomes)


def _duplicates(items: Sequence[BatchItem], run: str) -> dict[int, BaseException]:
    """Items that cannot be put at all: a bad name or data ID, or a data ID an earlier item of the batch has."""
    refused: dict[int, BaseException] = {}
    first: dict[tuple[str, str, str], int] = {}
    for index, item in enumerate(items):
        try:
            key = item.unique_key(run)
        except Exception as exc:
            refused[index] = exc
            continue
        if key in first:
            refused[index] = ConflictError(f"{key[0]} {dict(item.data_id)} in run {run!r} is put twice in this "
                                           f"batch (item {first[key]} came first); not stored")
        else:
            first[key] = index
    return refused


def put_many(butler: Butler, items: Sequence[Any], run: str, *, format: str | None = None,
             format_options: Mapping[str, Any] | None = None, errors: ErrorMode = "raise",
             max_concurrency: int | None = None, chunk_size: int | None = None) -> list[Any]:
    """:meth:`Butler.put_many <objbutler.butler.Butler.put_many>`: see the module docstring for the semantics."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
    run = validate_run(run)
    workers = _concurrency(butler, max_concurrency)
    activity = current_activity(butler)
    parsed: list[BatchItem | BaseException] = []
    for item in items:
        try:
            parsed.append(BatchItem.of(item, format, format_options))
        except InvalidKeyError as exc:
            parsed.append(exc)
    good = [(i, p) for i, p in enumerate(parsed) if isinstance(p, BatchItem)]
    refused = {good[j][0]: exc for j, exc in _duplicates([p for _, p in good], run).items()}
    todo = [(i, p) for i, p in good if i not in refused]
    written_todo = run_concurrently(lambda entry: _write(butler, entry[1], run, activity), todo, workers,
                                    budget_of(butler.store))
    written: list[PendingPut | BaseException] = []
    done = dict(zip((index for index, _ in todo), written_todo, strict=True))
    for index, item in enumerate(parsed):
        written.append(item if isinstance(item, BaseException) else refused.get(index) or done[index])
    return _finish(_commit(butler, written, activity, chunk_size), errors)


class Batch:
    """``with butler.batch(run=...) as batch:``: puts that upload at once and commit together on exit.

    :meth:`put` starts encoding and uploading in the background, on the
    store's concurrency budget (:meth:`~objbutler.stores.ConcurrencyBudget.feed`:
    at most ``max_concurrency`` at a time; while that many puts wait for a
    worker, a put runs one itself instead of waiting), and returns a
    :class:`~concurrent.futures.Future` of the ref, resolved when the block
    exits. On a normal exit everything written is committed as by
    :func:`put_many` (same per-item semantics), :attr:`results` set, and, with
    ``errors="raise"``, a :class:`~objbutler.errors.BatchError` raised if any
    item failed. If the block raises, nothing is committed, puts not yet
    started are dropped, every uploaded object is deleted and the exception
    propagates (each future gets it).

    Parameters
    ----------
    butler : Butler
        Where to put.
    run : str
        The run of every dataset.
    format, format_options : optional
        Defaults for every put (a put may override them).
    errors : {"raise", "return"}
        As :func:`put_many`.
    max_concurrency : int, optional
        Most uploads at once (default: the store's ``max_concurrency``, else 16;
        never more than the store's concurrency budget).
    chunk_size : int, optional
        Most datasets per registry commit (default
        :data:`~objbutler.group_commit.DEFAULT_CHUNK_SIZE`).
    """

    def __init__(self, butler: Butler, run: str, *, format: str | None = None,
                 format_options: Mapping[str, Any] | None = None, errors: ErrorMode = "raise",
                 max_concurrency: int | None = None, chunk_size: int | None = None) -> None:
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        self.butler = butler
        self.run = validate_run(run)
        self.format = format
        self.format_options = format_options
        self.errors: ErrorMode = errors
        self._workers = _concurrency(butler, max_concurrency)
        self.chunk_size = chunk_size
        self._feed: Feed[BatchItem, PendingPut | BaseException] | None = None
        self._items: list[BatchItem] = []
        self._writes: list[Future[PendingPut | BaseException] | BaseException] = []
        self._first: dict[tuple[str, str, str], int] = {}
        self._activity: Activity | None = None
        self._results: list[Any] | None = None

    @property
    def results(self) -> list[Any]:
        """Per put, in order: its ``DatasetRef`` or the exception it got (after the block exited).

        Raises
        ------
        RuntimeError
            Before the block has exited (nothing is committed yet).
        """
        if self._results is None:
            raise RuntimeError("batch.results is known once the with-block has exited")
        return self._results

    def __enter__(self) -> Batch:
        self._activity = current_activity(self.butler)
        activity = self._activity
        self._feed = budget_of(self.butler.store).feed(lambda item: _write(self.butler, item, self.run, activity),
                                                       self._workers)
        return self

    def put(self, obj: Any, dataset_type: str, data_id: Mapping[str, Any], *,
            inputs: Sequence[DatasetRef] | None = None, derived_from: Sequence[DatasetRef] | None = None,
            format: str | None = None, format_options: Mapping[str, Any] | None = None) -> Future[DatasetRef]:
        """Start storing one dataset; the future's ref (or exception) is set when the block exits.

        Raises
        ------
        RuntimeError
            Outside the with-block.
        """
        if self._feed is None or self._results is not None:
            raise RuntimeError("batch.put is only valid inside its with-block")
        item = BatchItem(obj, dataset_type, data_id, inputs=inputs, derived_from=derived_from,
                         format=format if format is not None else self.format,
                         format_options=format_options if format_options is not None else self.format_options)
        index = len(self._items)
        self._items.append(item)
        refused = _duplicates([item], self.run).get(0)
        if refused is None:
            key = item.unique_key(self.run)
            if key in self._first:
                refused = ConflictError(f"{key[0]} {dict(item.data_id)} in run {self.run!r} is put twice in this "
                                        f"batch (put {self._first[key]} came first); not stored")
            else:
                self._first[key] = index
        if refused is not None:
            self._writes.append(refused)
            return item.future
        self._writes.append(self._feed.submit(item))
        return item.future

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        feed, self._feed = self._feed, None
        if feed is not None:
            feed.close(cancel=exc is not None)
        if exc is not None:
            for w in self._writes:
                if isinstance(w, Future) and not w.cancelled() and w.exception() is None:
                    uploaded = w.result()
                    if isinstance(uploaded, PendingPut):
                        uploaded.discard()
            for item in self._items:
                item.future.set_exception(exc)
            self._results = [exc] * len(self._items)
            return
        written = [w if isinstance(w, BaseException) else w.result() for w in self._writes]
        outcomes = _commit(self.butler, written, self._activity, self.chunk_size)
        self._results = list(outcomes)
        for item, outcome in zip(self._items, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        _finish(outcomes, self.errors)
