"""Group commit: many datasets whose data is written go into one registry commit, with per-item outcomes.

Above the registry (it talks to it only through ``Registry.check``,
``Registry.commit`` and ``Registry.state``), this module turns a list of
:class:`PendingPut` (a dataset whose data objects are already written) into
as few commits as possible, and tells each item what became of it:

* :func:`commit_group` splits the items into chunks of at most
  ``chunk_size`` (:data:`DEFAULT_CHUNK_SIZE`) and makes one
  ``Registry.commit`` per chunk. An item refused up front (a data ID held
  in the last view, a second item with the same data ID, a dataset type or
  data ID key kind that disagrees with an earlier item) gets a
  ``ConflictError`` and its data is deleted; the rest commit. When
  ``Registry.commit`` raises a ``ConflictError`` naming datasets
  (``.conflicts``), exactly those are dropped (data deleted) and the rest
  committed again; one naming none (a dataset type disagrees, or too many
  races lost) refuses the whole chunk. Any other error before the commit
  point refuses the chunk and deletes its data;
  ``CommitOutcomeUnknownError`` goes to every item of the chunk and their
  data is kept. Once a chunk's commit object exists its items have
  succeeded, whatever happens after (``Registry.commit`` returns).
* :class:`CommitCombiner` lets threads of one process share commits: each
  caller submits its items; the first caller with nobody committing becomes
  the leader and commits everything queued (up to one chunk) in one round,
  while later arrivals queue for the next round, led by the first of them.
  A lone caller never waits for company.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from objbutler.errors import CommitOutcomeUnknownError, ConflictError, ObjButlerError
from objbutler.registry.records import DatasetRef, DatasetType
from objbutler.registry.registry import Registry

__all__ = ["DEFAULT_CHUNK_SIZE", "CommitCombiner", "Outcome", "PendingPut", "commit_group"]

DEFAULT_CHUNK_SIZE: Final = 2000
"""Datasets per registry commit: a commit object of about 1 MB (a ref is ~0.5 kB of JSON)."""

Outcome = DatasetRef | BaseException
"""What became of one item: its committed ref, or the exception it got."""


@dataclasses.dataclass(frozen=True, slots=True)
class PendingPut:
    """A dataset whose data objects are written and which awaits its commit.

    Parameters
    ----------
    ref : DatasetRef
        The complete ref to commit.
    dataset_type : DatasetType
        Its type (registered by the commit on first use).
    kinds : dict of str to str
        Kind (``int``/``str``) of each data ID key.
    discard : callable
        Deletes the data objects, and releases the claim if ``claimed``
        (best effort); called when the item is refused.
    claimed : bool
        Its data ID is already claimed (:meth:`Registry.claim_ahead`): the
        commit does not claim it again.
    """

    ref: DatasetRef
    dataset_type: DatasetType
    kinds: dict[str, str]
    discard: Callable[[], None]
    claimed: bool = False


def commit_group(registry: Registry, puts: Sequence[PendingPut],
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[Outcome]:
    """Commit ``puts`` in chunks of at most ``chunk_size``, one registry commit per chunk.

    Parameters
    ----------
    registry : Registry
        The registry to commit to. Callers serialize calls on one registry.
    puts : sequence of PendingPut
        The items, data already written.
    chunk_size : int
        Items per commit.

    Returns
    -------
    list
        Per item, in order: the committed ``DatasetRef`` or the exception it
        got (see the module docstring). Refused items' data is deleted,
        except after ``CommitOutcomeUnknownError``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    outcomes: list[Outcome] = []
    for start in range(0, len(puts), chunk_size):
        outcomes.extend(_commit_chunk(registry, puts[start:start + chunk_size]))
    return outcomes


def _commit_chunk(registry: Registry, puts: Sequence[PendingPut]) -> list[Outcome]:
    outcomes: list[Outcome | None] = [None] * len(puts)
    live = _admit(registry, puts, outcomes)
    while live:
        types: dict[str, DatasetType] = {}
        kinds: dict[str, str] = {}
        for index in live:
            types.setdefault(puts[index].dataset_type.name, puts[index].dataset_type)
            kinds.update(puts[index].kinds)
        try:
            registry.commit(list(types.values()), kinds, [puts[index].ref for index in live],
                            claimed={puts[index].ref.id for index in live if puts[index].claimed})
        except CommitOutcomeUnknownError as exc:
            for index in live:
                outcomes[index] = exc  # it may have landed or may still land: keep the data
            break
        except ConflictError as exc:
            named = set(exc.conflicts)
            dropped = [index for index in live if puts[index].ref.id in named]
            if not dropped:  # not about particular datasets (a type disagrees, races lost): the chunk is refused
                _refuse(puts, live, exc, outcomes)
                break
            for index in dropped:
                _refuse(puts, [index], _conflict_of(exc, puts[index].ref), outcomes)
            live = [index for index in live if index not in set(dropped)]
            continue
        except ObjButlerError as exc:  # nothing was committed, and nothing of this call can land later
            _refuse(puts, live, exc, outcomes)
            break
        for index in live:
            outcomes[index] = puts[index].ref
        break
    return [outcome if outcome is not None else ConflictError("not committed") for outcome in outcomes]


def _admit(registry: Registry, puts: Sequence[PendingPut], outcomes: list[Outcome | None]) -> list[int]:
    """Refuse (and discard) the items that cannot go into one commit with those before them; the rest's indices."""
    live: list[int] = []
    seen: dict[tuple[str, str, str], str] = {}
    types: dict[str, DatasetType] = {}
    kinds: dict[str, str] = {}
    for index, put in enumerate(puts):
        ref = put.ref
        unique = ref.unique_key
        try:
            if unique in seen:
                raise ConflictError(f"{ref.dataset_type} {ref.data_id} in run {ref.run!r} is put twice in this "
                                    f"batch; dataset {seen[unique]} came first", conflicts=[ref.id])
            registry.check([put.dataset_type], put.kinds, [ref])
            if ref.dataset_type in types:
                types[ref.dataset_type].check_compatible(put.dataset_type)
            for name, kind in put.kinds.items():
                if kinds.get(name, kind) != kind:
                    raise ConflictError(f"data ID key {name!r} is {kinds[name]} in an earlier item of this batch "
                                        f"and {kind} in {ref.dataset_type} {ref.data_id}", conflicts=[ref.id])
        except ObjButlerError as exc:
            _refuse(puts, [index], exc, outcomes)
            continue
        seen[unique] = ref.id
        types.setdefault(ref.dataset_type, put.dataset_type)
        kinds.update(put.kinds)
        live.append(index)
    return live


def _refuse(puts: Sequence[PendingPut], indices: Sequence[int], exc: BaseException,
            outcomes: list[Outcome | None]) -> None:
    for index in indices:
        outcomes[index] = exc
        with contextlib.suppress(Exception):
            puts[index].discard()


def _conflict_of(exc: ConflictError, ref: DatasetRef) -> ConflictError:
    """A ConflictError of one refused dataset (its own instance, so threads can raise it independently)."""
    error = ConflictError(f"{ref.dataset_type} {ref.data_id} in run {ref.run!r} is taken: {exc}", conflicts=[ref.id])
    error.__cause__ = exc
    return error


@dataclasses.dataclass(eq=False)
class _Request:
    puts: Sequence[PendingPut]
    chunk_size: int
    exclusive: bool = False  # a caller committing directly (all or nothing), not a round's items
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outcomes: list[Outcome] | None = None  # None when woken up to lead the next round


class CommitCombiner:
    """Share registry commits between threads of one process (leader/follower group commit).

    Parameters
    ----------
    registry : Registry
        The registry all commits go to; every commit through it from this
        process should come through the combiner, which serializes them.
    chunk_size : int
        Most items one round commits (a request larger than that is still
        committed whole, in chunks).

    Attributes
    ----------
    rounds : int
        Rounds led so far (each makes one registry commit per chunk).
    waits : int
        Times a submitter waited for another thread's round (a lone caller never does).
    """

    def __init__(self, registry: Registry, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.registry = registry
        self.chunk_size = chunk_size
        self.rounds = 0
        self.waits = 0
        self._lock = threading.Lock()
        self._queue: list[_Request] = []
        self._busy = False  # a leader is committing a round

    def submit(self, puts: Sequence[PendingPut], chunk_size: int | None = None) -> list[Outcome]:
        """Commit ``puts`` (alone or with other threads' items); per item the ref or the exception.

        Blocks until the round holding these items has finished. ``chunk_size``
        (default: the combiner's) caps the datasets per commit of a round
        holding these items.
        """
        size = self.chunk_size if chunk_size is None else chunk_size
        if size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {size}")
        request = _Request(list(puts), size)
        if not self._enqueue(request):
            request.done.wait()
            if request.outcomes is not None:
                return request.outcomes
            # woken up to lead: this request is at the head of the queue
        while request.outcomes is None:
            self._lead()
        return request.outcomes

    def _enqueue(self, request: _Request) -> bool:
        """Queue ``request``; True if this thread leads now (nobody was committing), False if it must wait."""
        with self._lock:
            self._queue.append(request)
            lead = not self._busy
            self._busy = True
            if not lead:
                self.waits += 1
        return lead

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the commit role for a commit made directly on the registry (no round runs meanwhile).

        For an all-or-nothing commit (``Butler.ingest_refs``) that must not be
        split per item yet must not race this combiner's rounds on the
        registry's view. Waits its turn in the queue like a round.
        """
        request = _Request([], 1, exclusive=True)
        if not self._enqueue(request):
            request.done.wait()  # woken at the head of the queue: its turn
        with self._lock:
            self._queue.remove(request)
        try:
            yield
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """Wake the head of the queue to take the commit role, or leave it free."""
        with self._lock:
            if self._queue:
                self._queue[0].done.set()  # outcomes None: the head of the queue leads the next round
            else:
                self._busy = False

    def _lead(self) -> None:
        """Commit one round: queued requests, at least one, up to ``chunk_size`` items in all."""
        with self._lock:
            taken: list[_Request] = []
            count = 0
            while self._queue and not self._queue[0].exclusive and (
                    not taken or count + len(self._queue[0].puts) <= self.chunk_size):
                count += len(self._queue[0].puts)
                taken.append(self._queue.pop(0))
        results: list[Any] = []
        try:
            self.rounds += 1
            results = commit_group(self.registry, [put for request in taken for put in request.puts],
                                   min(request.chunk_size for request in taken))
        except BaseException as exc:  # not an ObjButlerError (those are per item): tell every waiter
            results = [exc] * count
            raise
        finally:
            start = 0
            for request in taken:
                request.outcomes = results[start:start + len(request.puts)]
                start += len(request.puts)
            self._hand_over()
            for request in taken:
                request.done.set()
