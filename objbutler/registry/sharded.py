"""The writing half of the ``claimed`` commit protocol: registrations, claims, and a slot in a log shard.

A commit goes through three steps, each a conditional create
(:func:`objbutler.registry.slots.decide_create`):

1. **Register** every dataset type and data ID key the commit uses that this
   process has not seen registered yet (``manifest/types/``,
   ``manifest/dimensions/``); a disagreement is a ConflictError before anything
   else is written.
2. **Claim** every dataset's ``(type, run, data ID)`` (``manifest/claims/``),
   concurrently (a single put registers and claims while its data uploads:
   :meth:`objbutler.butler.Butler.upload_and_claim`). A claim another commit holds refuses that dataset
   (ConflictError naming the refused ids) after the claims of this call are
   released. This is where uniqueness is settled: no log has to be read.
3. **Place** the commit in a log shard: the slot after the last one this
   writer knows in its (sticky, randomly chosen) shard. A slot another writer
   took is simply skipped -- the claims already made the commit unique --, and
   after :data:`HOP_AFTER` foreign slots in a row the writer moves to another
   random shard (one listing to learn its tail). Once the slot holds the commit,
   the put has succeeded (the commit point).

See docs/registry.md for the layout and docs/design.md for the measurements.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence

from objbutler.errors import CommitOutcomeUnknownError, ConflictError, ObjButlerError, StoreError
from objbutler.registry.claims import (
    Claim,
    claim_age,
    claim_key,
    decode_claim,
    decode_dimension,
    decode_type,
    dimension_key,
    encode_claim,
    encode_dimension,
    encode_type,
    type_key,
)
from objbutler.registry.commits import decode_commit, utc_now
from objbutler.registry.log import ShardedLog
from objbutler.registry.records import DatasetRef, DatasetType
from objbutler.registry.slots import decide_create
from objbutler.stores import Store, run_concurrently

__all__ = ["HOP_AFTER", "MAX_PLACE_SECONDS", "ShardedWriter"]

log = logging.getLogger(__name__)

HOP_AFTER = 1
"""Foreign slots in a row after which a writer moves to another shard."""
MAX_PLACE_SECONDS = 600.0
"""Last resort: a commit that found no free slot for this long (while always skipping ahead) gives up."""
CLAIM_WORKERS = 16
MAX_RELEASED_REMEMBERED = 100_000
"""Claim keys a writer remembers having released (a claim it released is never taken over again)."""


class ShardedWriter:
    """One process's writer state for a ``claimed`` repository.

    Parameters
    ----------
    store : Store
        The repository's store.
    log : ShardedLog
        Its sharded log.
    max_place_seconds : float
        Last-resort bound on placing one commit (far beyond any normal contention).
    """

    def __init__(self, store: Store, log: ShardedLog, max_place_seconds: float = MAX_PLACE_SECONDS) -> None:
        self.store = store
        self.log = log
        self.max_place_seconds = max_place_seconds
        self.shard = random.randrange(log.shards)
        self.known = [0] * log.shards  # highest slot known taken, per shard
        self.released: dict[str, None] = {}  # claim keys this process deleted (in order; bounded), see claim()
        self.types: dict[str, DatasetType] = {}  # registrations seen (created or read) by this process
        self.dimensions: dict[str, str] = {}

    # -- 1. registrations ---------------------------------------------------------

    def register(self, types: Sequence[DatasetType], dimensions: dict[str, str],
                 known_types: dict[str, DatasetType], known_dimensions: dict[str, str]) -> None:
        """Make sure every type and data ID key is registered as given (ConflictError if not).

        ``known_types``/``known_dimensions`` are what the reader's view already
        holds: a commit that uses them exists, so they were registered first.
        Types go first: a type that disagrees is refused before any data ID
        key is registered. A registration whose write stays undecided is a StoreError: nothing is
        committed by it (a late copy only registers what this put would have).
        """
        try:
            self._register(types, dimensions, known_types, known_dimensions)
        except CommitOutcomeUnknownError as exc:
            raise StoreError(f"a registration of this put could not be decided ({exc}); nothing was committed") \
                from exc

    def _register(self, types: Sequence[DatasetType], dimensions: dict[str, str],
                  known_types: dict[str, DatasetType], known_dimensions: dict[str, str]) -> None:
        for dataset_type in types:
            registered = self.types.get(dataset_type.name) or known_types.get(dataset_type.name)
            if registered is None:
                key = type_key(dataset_type.name)
                other = decide_create(self.store, key, encode_type(dataset_type), _same_type(key, dataset_type))
                registered = dataset_type if other is None else decode_type(other, key)
            self.types[dataset_type.name] = registered
            registered.check_compatible(dataset_type)
        for name, kind in dimensions.items():
            held = self.dimensions.get(name) or known_dimensions.get(name)
            if held is None:
                key = dimension_key(name)
                other = decide_create(self.store, key, encode_dimension(kind), _same_dimension(key, kind))
                held = kind if other is None else decode_dimension(other, key)
            self.dimensions[name] = held
            if held != kind:
                raise ConflictError(
                    f"data ID key {name!r} holds {held} values in this repository; this put gives a {kind}"
                )

    # -- 2. claims ------------------------------------------------------------------

    def claim(self, refs: Sequence[DatasetRef], commit_id: str = "") -> list[str]:
        """Claim every dataset of ``refs``; the claim keys (all ours) on success.

        ``commit_id`` names the commit they go into, or is empty when the
        claims are made before the commit is formed (a put claims while its
        data uploads, see :meth:`objbutler.registry.registry.Registry.claim_ahead`).
        A claim is ours when it names our dataset id.

        Raises
        ------
        ConflictError
            Some datasets are claimed by another commit (``conflicts`` names
            them); this call's claims were released.
        StoreError
            A claim could not be made; this call's claims were released (one
            whose write is undecided may remain: vacuum removes it).
        """
        now = utc_now()
        items = [(ref, claim_key(ref.unique_key), encode_claim(Claim(commit_id, ref.id, now))) for ref in refs]

        def one(item: tuple[DatasetRef, str, bytes]) -> Claim | ObjButlerError | None:
            ref, key, body = item
            try:
                other = decide_create(self.store, key, body, lambda raw: self._is_ours(key, decode_claim(raw, key),
                                                                                        ref, commit_id))
                return None if other is None else decode_claim(other, key)
            except ObjButlerError as exc:
                return exc

        results = run_concurrently(one, items, CLAIM_WORKERS)
        ours = [key for (_, key, _), result in zip(items, results, strict=True) if result is None]
        taken = [(ref, result) for (ref, _, _), result in zip(items, results, strict=True)
                 if isinstance(result, Claim)]
        failed = [result for result in results if isinstance(result, ObjButlerError)]
        if not taken and not failed:
            return ours
        self.release(ours)
        if taken:
            raise self._refusal(taken)
        first = failed[0]
        if isinstance(first, CommitOutcomeUnknownError):  # only a claim is undecided: nothing is committed
            raise StoreError(f"a claim of this put could not be decided ({first}); nothing was committed, and a "
                             "claim left behind is removed by objbutler vacuum") from first
        raise first

    def _is_ours(self, key: str, claim: Claim, ref: DatasetRef, commit_id: str) -> bool:
        """A claim naming our dataset is ours: a create of ours that landed late, or an unfinished claim an
        earlier run made (a clone or ingest run again keeps its dataset ids) -- unless this process released
        it. Then the claim is an earlier attempt's (a group commit retried after a refusal) and its delete
        may still land: taking it over would leave the committed dataset without a claim."""
        if claim.dataset_id != ref.id:
            return False
        return claim.commit_id == commit_id or key not in self.released

    def _refusal(self, taken: list[tuple[DatasetRef, Claim]]) -> ConflictError:
        ref, claim = taken[0]
        age = claim_age(claim)
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        if claim.dataset_id == ref.id:
            return ConflictError(
                f"{ref.dataset_type} {ref.data_id} in run {ref.run!r} still holds the claim an earlier attempt of "
                f"this same put made (commit {claim.commit_id or '-'}); its release may not have landed yet, so "
                f"the claim cannot be used again. Nothing was committed: put it again later{more}",
                conflicts=[r.id for r, _ in taken],
            )
        return ConflictError(
            f"{ref.dataset_type} {ref.data_id} in run {ref.run!r} is already claimed by dataset {claim.dataset_id} "
            f"({f'commit {claim.commit_id}, ' if claim.commit_id else ''}claimed "
            f"{'?' if age is None else f'{age:.0f}'} s ago){more}. If that "
            "dataset is not in the registry, its put is still committing or crashed; `objbutler vacuum` clears "
            "unfinished claims older than its grace period",
            conflicts=[r.id for r, _ in taken],
        )

    def release(self, keys: Sequence[str]) -> None:
        """Delete claims of this call (best effort: a claim left behind is vacuum's); remember their keys."""
        for key in keys:
            self.released[key] = None
        while len(self.released) > MAX_RELEASED_REMEMBERED:
            self.released.pop(next(iter(self.released)))
        def delete(key: str) -> None:
            try:
                self.store.delete(key)
            except ObjButlerError as exc:
                log.warning("could not release the claim %s (%s); objbutler vacuum removes it", key, exc)
        run_concurrently(delete, list(keys), CLAIM_WORKERS)

    # -- 3. placing the commit ------------------------------------------------------

    def learn(self, vector: Sequence[int]) -> None:
        """Raise the slots known taken to ``vector`` (a reader's view, or a compaction marker's position)."""
        self.known = [max(a, b) for a, b in zip(self.known, vector, strict=True)]

    def place(self, body: bytes, commit_id: str, view: Sequence[int],
              before_attempt: Callable[[], None] | None = None) -> tuple[int, int]:
        """Write the commit to a free slot; ``(shard, sequence)`` of the slot that holds it.

        ``view`` is the reader's per-shard vector (slots known to exist).
        Every slot tried is decided before moving on, so no write of this call
        can land later anywhere. ``before_attempt`` runs before each slot is
        tried (the registry uses it to keep up with compaction, see
        :meth:`objbutler.registry.registry.Registry.keep_up_with_compaction`).

        Raises
        ------
        StoreError
            The store refused the write (nothing landed).
        CommitOutcomeUnknownError
            A slot stayed undecided: the commit may have landed.
        ConflictError
            Last resort: no slot was won within ``max_place_seconds``.
        """
        self.learn(view)
        deadline = time.monotonic() + self.max_place_seconds
        foreign = 0
        skipped = 0
        while True:
            if before_attempt is not None:
                before_attempt()
            shard = self.shard
            sequence = self.known[shard] + 1
            key = self.log.key(shard, sequence)
            other = decide_create(self.store, key, body, _same_commit(key, commit_id), read_foreign=False)
            self.known[shard] = max(self.known[shard], sequence)
            if other is None:
                return shard, sequence
            foreign += 1
            skipped += 1
            if foreign >= HOP_AFTER and self.log.shards > 1:  # another writer is active here: move
                self.shard = random.choice([k for k in range(self.log.shards) if k != shard])
                self.known[self.shard] = self.log.shard_tail(self.shard, self.known[self.shard])
                foreign = 0
            if time.monotonic() > deadline:
                raise ConflictError(f"found no free log slot in {self.max_place_seconds:.0f} s ({skipped} taken by "
                                    "other writers); nothing was committed")


def _same_dimension(key: str, kind: str) -> Callable[[bytes], bool]:
    return lambda raw: decode_dimension(raw, key) == kind


def _same_type(key: str, dataset_type: DatasetType) -> Callable[[bytes], bool]:
    return lambda raw: decode_type(raw, key) == dataset_type


def _same_commit(key: str, commit_id: str) -> Callable[[bytes], bool]:
    return lambda raw: decode_commit(raw, key).commit_id == commit_id
