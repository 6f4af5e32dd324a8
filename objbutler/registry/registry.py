"""The registry: commit protocol, refresh, checkpoints. See docs/registry.md for the format.

Three commit protocols, chosen from what the store guarantees (never assumed):

``claimed`` (atomic create: S3, local, memory; new repositories)
    Claim each dataset's (type, run, data ID) with a conditional create, then
    write the commit to the next free slot of a log shard
    (:mod:`objbutler.registry.sharded`). Uniqueness comes from the claims, so a
    writer never reads other writers' commits and a taken slot is simply
    skipped: about three requests per put however many writers there are.

``sequenced`` (atomic create; repositories created before ``claimed``, or on request)
    Check uniqueness against the state at position *n*, then create log entry
    *n + 1* with ``put_if_absent``. Success means no commit landed in between,
    so the check held; a lost race re-reads the tail and tries again with
    backoff. Strict order; a conflicting put learns at once that it lost.

``timestamped`` (no atomic create: Swift)
    Write the commit under a fresh key, wait ``settle_seconds`` so commits
    that reached the server earlier have finished landing, re-read the log and
    check who holds the data ID first in (server timestamp, key) order. A
    loser removes its commit and raises ConflictError. Residual window: a
    commit whose upload takes longer than ``settle_seconds`` *after* it reached
    the server can be overtaken; readers listing in that window may briefly
    see the later commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from objbutler.defaults import (
    CLAIM_BACKOFF,
    COMMIT_RACE_BACKOFF,
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_COMPACTION_GRACE,
    DEFAULT_MAX_COMMIT_SECONDS,
    DEFAULT_SETTLE_SECONDS,
    DEFAULT_TIMESTAMP_RESOLUTION,
)
from objbutler.errors import (
    AlreadyExistsError,
    CommitOutcomeUnknownError,
    ConflictError,
    FormatError,
    NotFoundError,
    ObjButlerError,
    StoreError,
    TransientStoreError,
)
from objbutler.registry.checkpoint import (
    CHECKPOINT_PREFIX,
    Checkpoint,
    decode_checkpoint,
    empty_checkpoint,
    encode_checkpoint,
)
from objbutler.registry.commits import Commit, decode_commit, encode_commit, new_commit
from objbutler.registry.log import (
    COMPACTION_PREFIX,
    LOG_PREFIX,
    CommitLog,
    LiveLog,
    LogEntry,
    Marker,
    SequencedLog,
    ShardedLog,
    TimestampedLog,
    decode_compaction,
    decode_marker,
    decode_vector,
    encode_compaction,
    encode_marker,
    encode_vector,
)
from objbutler.registry.records import DatasetRef, DatasetType
from objbutler.registry.sharded import ShardedWriter
from objbutler.registry.slots import CREATE_ATTEMPTS, decide_create
from objbutler.registry.state import RegistryState, commit_problem
from objbutler.stores import Store, budget_of, delete_keys, run_concurrently

__all__ = ["PROTOCOLS", "Registry", "finish_folds"]

log = logging.getLogger(__name__)

PROTOCOLS = ("sequenced", "timestamped", "claimed")
KEEP_CHECKPOINTS = 3
CLAIM_ATTEMPTS = CREATE_ATTEMPTS
DEFAULT_LOG_SHARDS = 256
FOLD_LEASE_SECONDS = 60.0
"""A fold lease older than this (by the server's clock) no longer keeps other writers from folding."""
FOLD_LEASE_BACKLOG = 4
"""A fold lease also lapses once this many checkpoint intervals of commits wait unfolded per lease taken.

A writer killed while folding leaves its lease behind; honoured for the full
``FOLD_LEASE_SECONDS``, it stopped every fold (and so compaction) for a minute
while the writers went on (tests/test_compaction_adversary.py, a SIGKILLed
process, 2 runs in 10). Past this backlog the holder is dead or too slow for
the write rate, and one more fold is worth its reads: folds that overlap are
safe (a fold never deletes past a marker it read), the lease only saves reads.
The allowance grows with each lease taken, so a slow fold is joined by one
more, not by every writer that checks."""
REFRESH_ATTEMPTS = 3
"""Claimed: listings a refresh makes when compaction deletes commits it listed before it reads them."""
FOLD_THREADS = 2
"""Background folds run at once per process (each registry runs at most one)."""
FOLD_READ_LANES = 4
"""Commits a background fold reads at once: the rest of the store's concurrency budget stays free for puts (with
all 16 slots, a put of the folding process waited behind hundreds of commit reads)."""


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_FOLDS_IN_FLIGHT: set[Future[None]] = set()


def _forget_the_parents_folds() -> None:
    """In a forked child: the parent's folds, and the threads running them, are not here."""
    global _POOLS_LOCK, _FOLDS_IN_FLIGHT
    _POOLS_LOCK = threading.Lock()
    _FOLDS_IN_FLIGHT = set()


os.register_at_fork(after_in_child=_forget_the_parents_folds)


def _fold_pool() -> ThreadPoolExecutor:
    """This process's pool for background folds (a forked child gets its own: the parent's threads are not in it).

    Its threads are not daemons: the interpreter waits for the folds in flight before it exits, so a
    short program's fold finishes and releases its lease instead of blocking others' folds for
    ``FOLD_LEASE_SECONDS``.
    """
    with _POOLS_LOCK:
        pool = _POOLS.get(os.getpid())
        if pool is None:
            pool = _POOLS[os.getpid()] = ThreadPoolExecutor(FOLD_THREADS, thread_name_prefix="objbutler-fold")
        return pool


def finish_folds(timeout: float | None = None) -> bool:
    """Wait for this process's background folds; True when none is left running.

    Parameters
    ----------
    timeout : float, optional
        Seconds to wait at most (default: until they end).
    """
    pending = {future for future in list(_FOLDS_IN_FLIGHT) if not future.done()}
    return not wait(pending, timeout=timeout).not_done


class Registry:
    """The manifest of one repository, read from and committed to its store.

    Parameters
    ----------
    store : Store
        The repository's store.
    protocol : {"claimed", "sequenced", "timestamped"}
        Commit protocol (see module docstring).
    repository : str
        URI stamped on refs.
    checkpoint_interval : int
        Write a checkpoint every this many commits.
    max_attempts : int, optional
        Sequenced protocol: lost races tolerated per commit before giving up
        with ConflictError (default: no count, only ``max_commit_seconds``).
    max_commit_seconds : float
        Sequenced protocol: how long a commit keeps trying for a log slot
        before giving up with ConflictError. Every lost race means another
        writer committed, so the log always moves; a count of 50 gave up
        under 64 processes (45 of 640 puts failed) although nothing was wrong
        but the contention.
    settle_seconds : float
        Timestamped protocol: wait before verifying a commit.
    timestamp_resolution : float
        Timestamped protocol: the store's timestamp granularity in seconds
        (1.0 for a server that stamps whole seconds), added to the settle wait
        so that every commit stamped no later than this one is listed when it
        is verified.
    log_shards : int
        Claimed protocol: how many log shards the repository has.
    compaction_grace : float
        Claimed protocol: seconds a compaction marker must have existed before
        the commits it folded are deleted; a writer re-reads the markers at
        least every half of it (see :meth:`keep_up_with_compaction`).
    """

    def __init__(
        self,
        store: Store,
        protocol: str,
        repository: str,
        checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
        max_attempts: int | None = None,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        timestamp_resolution: float = DEFAULT_TIMESTAMP_RESOLUTION,
        log_shards: int = DEFAULT_LOG_SHARDS,
        compaction_grace: float = DEFAULT_COMPACTION_GRACE,
        max_commit_seconds: float = DEFAULT_MAX_COMMIT_SECONDS,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown commit protocol {protocol!r}")
        if checkpoint_interval < 1:
            raise ValueError(f"checkpoint_interval must be >= 1, got {checkpoint_interval}")
        self.store = store
        self.protocol = protocol
        self.repository = repository
        self.checkpoint_interval = checkpoint_interval
        self.max_attempts = max_attempts
        self.max_commit_seconds = max_commit_seconds
        self.settle_seconds = settle_seconds
        self.timestamp_resolution = timestamp_resolution
        self._checkpointed = 0  # newest sequenced checkpoint position this registry wrote or listed
        self.log: CommitLog = TimestampedLog(store) if protocol == "timestamped" else SequencedLog(store)
        self.shards: ShardedLog | None = ShardedLog(store, log_shards) if protocol == "claimed" else None
        self.writer: ShardedWriter | None = ShardedWriter(store, self.shards) if self.shards is not None else None
        self._vector: list[int] = []  # claimed: the view's per-shard position
        self.compaction_grace = compaction_grace
        self._marker_positions: dict[int, list[int]] = {}  # claimed: live markers read, total -> position
        self._deleted: list[int] = [0] * log_shards  # claimed: compaction announced deleting through this
        self._known_decision: tuple[int, list[int]] | None = None  # claimed: newest compaction record known
        self._ignored_markers: set[str] = set()  # claimed: listed marker keys that are no marker (warned once)
        self._markers_at = -math.inf  # claimed: monotonic time the markers were last listed
        self._live: LiveLog | None = None  # claimed: the last listing of the log
        self._commits_since_check = random.randrange(checkpoint_interval)  # claimed: spread writers' checks
        self._folder: Registry | None = None  # claimed: the view background folds read and write from
        self._fold: Future[None] | None = None  # claimed: the background fold in flight, if any
        self._fold_lock = threading.Lock()
        self._fold_pid = os.getpid()  # the process whose thread runs self._fold
        self._fold_again = False  # claimed: a fold fell due while one was running
        self.read_lanes: int | None = None  # commits read at once (None: the store's max_concurrency)
        self._state: RegistryState | None = None
        # Threads of one Butler share this view: a refresh (which may replace it and reset the vector) and a
        # commit's apply to it go one at a time (a fresh Butler's first puts from threads lost commits from it).
        self._view_lock = threading.RLock()
        self._view_pid = os.getpid()
        self._bodies: dict[str, Commit] = {}  # immutable commits already fetched, by key
        self._handed: dict[str, bytes] = {}  # claimed: commits this writer placed, by key, for its folder to use
        self._tail: list[tuple[LogEntry, Commit]] = []

    # -- reading ---------------------------------------------------------------

    def refresh(self) -> RegistryState:
        """Bring the view up to date with the bucket and return it (cheap when nothing changed)."""
        with self._view_guard():
            return self._refresh_view()

    def _view_guard(self) -> threading.RLock:
        """The lock of the view (a forked child's own: a thread of the parent may have held the parent's)."""
        if self._view_pid != os.getpid():
            self._view_pid, self._view_lock = os.getpid(), threading.RLock()
        return self._view_lock

    def _refresh_view(self) -> RegistryState:
        if self.shards is not None:
            return self._refresh_sharded(self.shards)
        if self._state is None:
            self._state = RegistryState(self._latest_checkpoint(), self.repository)
            self._tail = []
        if self.log.ordered_by_creation:
            self._apply(self._state, self._fetch(self.log.list_after(self._state.position)))
        else:
            # Commits can land out of order: rebuild the tail from the checkpoint every time.
            state = RegistryState(self._state.checkpoint, self.repository)
            self._tail = []
            self._apply(state, self._fetch(self.log.list_after(state.checkpoint.position)))
            self._state = state
        return self._state

    def _refresh_sharded(self, shards: ShardedLog, rebase_if_behind: bool = False,
                         listed: tuple[LiveLog, float] | None = None) -> RegistryState:
        """One listing of the whole log; read the new commits of every shard and apply them.

        A view that compaction has overtaken (it deleted commits this view has
        not read) restarts from the newest checkpoint that covers them; with
        ``rebase_if_behind``, so does a view behind the newest checkpoint (a
        checkpoint writer reads one Parquet file instead of every commit since
        its view). ``listed`` is a listing just made and when it started.

        A commit listed but gone when read was deleted by a compaction since
        the listing (the marker it listed may have turned ``compaction_grace``
        old meanwhile): the marker announcing that deletion was written before
        it, so a new listing shows it and restarts the view from a checkpoint
        that covers the commit. Nothing was applied from the failed attempt.
        """
        for _ in range(REFRESH_ATTEMPTS - 1):
            try:
                return self._refresh_sharded_once(shards, rebase_if_behind, listed)
            except NotFoundError as exc:
                log.info("a commit was compacted between listing and reading it (%s); listing again", exc)
                listed = None
        return self._refresh_sharded_once(shards, rebase_if_behind, listed)  # the last attempt raises its error

    def _refresh_sharded_once(self, shards: ShardedLog, rebase_if_behind: bool,
                              listed: tuple[LiveLog, float] | None) -> RegistryState:
        """One attempt of :meth:`_refresh_sharded` (NotFoundError: a listed commit is gone)."""
        if listed is None:
            started = time.monotonic()
            listed = shards.list_live(), started
        live, started = listed
        self._read_markers(live.markers, started)
        self._live = live
        if self._state is not None:
            self._note_unannounced_deletions(live)
        if self._state is not None and any(d > v for d, v in zip(self._deleted, self._vector, strict=True)):
            self._state = None
        if rebase_if_behind and self._state is not None and max(self._marker_positions, default=0) > sum(self._vector):
            self._state = None
        if self._state is None:
            checkpoint = self._sharded_checkpoint(shards)
            self._state = RegistryState(checkpoint, self.repository)
            self._vector = decode_vector(checkpoint.position, shards.shards)
        state = self._state
        entries = []
        for shard in sorted(live.slots):
            expected = self._vector[shard] + 1
            for sequence in live.slots[shard]:
                if sequence < expected:
                    continue  # folded into the checkpoint, deletion pending
                if sequence != expected:
                    break  # a gap: nothing after it is part of the shard yet
                entries.append(LogEntry(f"{shard:03d}/{sequence:020d}", shards.key(shard, sequence)))
                expected += 1
        if entries:
            self._apply(state, self._fetch(entries))
            for entry in entries:
                shard, sequence = (int(part) for part in entry.position.split("/"))
                self._vector[shard] = max(self._vector[shard], sequence)
            state.position = encode_vector(self._vector)
        if self.writer is not None:
            self.writer.learn(self._vector)
        return state

    def _note_unannounced_deletions(self, live: LiveLog) -> None:
        """Count as deleted a missing slot right above this view that a checkpoint holds and later slots follow.

        A slot is taken only right after one known taken, so a slot missing
        below listed ones was deleted (or never a commit: a stray past a gap).
        Compaction announces its deletions in its marker first, but an
        announcement can be lost to this view: its marker removed by a delete
        that landed late, or written by a version that did not chain its
        deletions. If a live marker's checkpoint holds the missing slot, the
        view restarts from a checkpoint holding it instead of stopping at the
        gap (which hid every later commit of the shard).
        """
        for shard, sequences in live.slots.items():
            expected = self._vector[shard] + 1
            following = [sequence for sequence in sequences if sequence >= expected]
            if not following or following[0] == expected or expected <= self._deleted[shard]:
                continue
            held = max((position[shard] for position in self._marker_positions.values()), default=0)
            if held >= expected:
                log.info("slots %d to %d of shard %d are gone though no marker this view read announced it; "
                         "restarting from a checkpoint that holds them", expected, following[0] - 1, shard)
                self._deleted[shard] = min(following[0] - 1, held)

    def _read_markers(self, markers: Sequence[Marker], listed_at: float) -> None:
        """Read the bodies of markers not read yet: what compaction deleted, and where checkpoints are."""
        assert self.shards is not None
        new = [marker for marker in markers
               if marker.total not in self._marker_positions and marker.key not in self._ignored_markers]
        for marker in new:
            try:
                position, deletes, record = decode_marker(self.store.get(marker.key), self.shards.shards,
                                                          marker.key)
                if sum(position) != marker.total:
                    raise FormatError(f"{marker.key} is not a compaction marker: its position "
                                      f"{encode_vector(position)} does not add up to {marker.total}")
                if any(d > p for d, p in zip(deletes, position, strict=True)):
                    # A fold deletes through an older marker's position, never past its own.
                    raise FormatError(f"{marker.key} is not a compaction marker: it deletes through "
                                      f"{encode_vector(deletes)}, past its position {encode_vector(position)}")
            except NotFoundError:
                continue  # an older marker removed by a compaction since the listing; newer ones say more
            except FormatError as exc:
                # Not a marker: ignored altogether (were its total taken as the newest checkpoint's, no
                # fold would ever be far enough past it and compaction would stop).
                log.warning("ignoring a compaction marker: %s", exc)
                self._ignored_markers.add(marker.key)
                continue
            if not self._has_checkpoint(marker.total):
                # A fold writes its checkpoint before its marker, so this one is a stray (a vector ahead of
                # every slot would make writers place commits past a gap that readers never cross), or its
                # checkpoint was pruned by retention: newer markers, whose positions are at least its
                # deletions, say everything it would.
                log.info("ignoring the compaction marker %s: its checkpoint is not there", marker.key)
                self._ignored_markers.add(marker.key)
                continue
            self._marker_positions[marker.total] = position
            self._deleted = [max(a, b) for a, b in zip(self._deleted, deletes, strict=True)]
            if record is not None:
                self._know_decision(record, deletes)
            if self.writer is not None:
                self.writer.learn(position)
        listed = {marker.total for marker in markers}
        self._marker_positions = {t: p for t, p in self._marker_positions.items() if t in listed}
        self._ignored_markers &= {marker.key for marker in markers}
        self._markers_at = listed_at

    def _has_checkpoint(self, total: int) -> bool:
        """True if the checkpoint a claimed log's marker of ``total`` commits announces exists (one HEAD)."""
        try:
            self.store.head(_checkpoint_key(f"{total:020d}"))
        except NotFoundError:
            return False
        return True

    def _sharded_checkpoint(self, shards: ShardedLog) -> Checkpoint:
        """The newest checkpoint that covers every commit compaction deleted (markers first, then a listing)."""
        covering = sorted((total for total, position in self._marker_positions.items()
                           if all(p >= d for p, d in zip(position, self._deleted, strict=True))), reverse=True)
        for total in covering:
            key = _checkpoint_key(f"{total:020d}")
            try:
                checkpoint = decode_checkpoint(self.store.get(key), key)
                if decode_vector(checkpoint.position, shards.shards) != self._marker_positions[total]:
                    log.warning("skipping checkpoint %s: it holds other commits than its marker announces", key)
                    continue
                return checkpoint
            except NotFoundError:
                continue  # removed by retention since: an older one, or the listing below, will do
            except (FormatError, ValueError) as exc:
                log.warning("skipping unreadable checkpoint %s (%s)", key, exc)
        return self._latest_checkpoint()

    def keep_up_with_compaction(self) -> None:
        """Claimed writers: re-read the compaction markers unless that was done within half the grace period.

        A writer only takes slots above every marker's position, and compaction
        deletes a slot only once the marker folding it is ``compaction_grace``
        old: so a slot this writer takes within half the grace after reading
        the markers was never deleted, and a commit written there is listed by
        every reader. See docs/registry.md.
        """
        if self.shards is None or time.monotonic() - self._markers_at < self.compaction_grace / 2:
            return
        started = time.monotonic()
        self._read_markers(self.shards.list_markers(), started)

    def _possibly_compacted(self, shard: int, sequence: int) -> bool:
        """True if the slot may have been deleted by compaction before this writer's commit landed in it."""
        if time.monotonic() - self._markers_at < self.compaction_grace / 2:
            return False  # the slot was taken within half the grace of reading the markers: never deleted
        self.keep_up_with_compaction()
        return sequence <= self._deleted[shard]

    @property
    def state(self) -> RegistryState:
        """The last refreshed view (refreshing once if there is none)."""
        return self._state if self._state is not None else self.refresh()

    def _fetch(self, entries: Sequence[LogEntry]) -> list[tuple[LogEntry, Commit]]:
        known = dict(self._bodies)
        for entry in entries:
            if entry.key not in known and (handed := self._handed.get(entry.key)) is not None:
                known[entry.key] = decode_commit(handed, entry.key, self.repository)
        missing = [e.key for e in entries if e.key not in known]
        for key, body in self._get_commits(missing).items():
            known[key] = decode_commit(body, key, self.repository)
        if not self.log.ordered_by_creation:
            self._bodies = known  # commits are immutable; the rebuild needs them again
        return [(entry, known[entry.key]) for entry in entries if entry.key in known]

    def _get_commits(self, keys: list[str]) -> dict[str, bytes]:
        """Fetch commit bodies; on a timestamped log, a commit removed since listing was a loser: skip it."""
        if not keys:
            return {}
        try:
            if self.read_lanes is None:
                return dict(zip(keys, self.store.get_many(keys), strict=True))
            return dict(zip(keys, run_concurrently(self.store.get, keys, self.read_lanes, budget_of(self.store)),
                            strict=True))
        except NotFoundError:
            if self.log.ordered_by_creation:
                raise
        bodies = {}
        for key in keys:
            with contextlib.suppress(NotFoundError):
                bodies[key] = self.store.get(key)
        return bodies

    def _apply(self, state: RegistryState, commits: Sequence[tuple[LogEntry, Commit]]) -> None:
        state.apply_many([(entry.position, commit) for entry, commit in commits])
        if not self.log.ordered_by_creation:
            self._tail.extend(commits)

    def _latest_checkpoint(self) -> Checkpoint:
        for key in self._checkpoint_keys():
            try:
                checkpoint = decode_checkpoint(self.store.get(key), key)
                if self.shards is not None:
                    try:
                        decode_vector(checkpoint.position, self.shards.shards)
                    except ValueError as exc:
                        raise FormatError(f"checkpoint {key}: {exc}") from None
                return checkpoint
            except NotFoundError:
                continue  # removed by retention while we listed; an older one will do
            except FormatError as exc:
                log.warning("skipping unreadable checkpoint (the log still has every commit): %s", exc)
        return empty_checkpoint()

    # -- committing ------------------------------------------------------------

    @property
    def claims_ahead(self) -> bool:
        """True if datasets are claimed one by one before their commit (the ``claimed`` protocol).

        A put then claims its data ID while its data uploads (:meth:`claim_ahead`),
        so the commit itself is one write.
        """
        return self.writer is not None

    def claim_ahead(self, types: list[DatasetType], dimensions: dict[str, str], refs: list[DatasetRef]) -> list[str]:
        """Claimed protocol: register what the refs use and claim them now; the claim keys (all ours).

        Pass the refs' ids as ``claimed`` to :meth:`commit`; if they are not
        committed, :meth:`release_claims` undoes the claims. Nothing is
        committed here: a claim without a commit is an unfinished claim
        (``objbutler fsck``).

        Raises
        ------
        ConflictError
            A type or data ID key disagrees with its registration (nothing
            written), or another commit holds a claim (this call's claims released).
        StoreError
            A claim or registration could not be made; this call's claims released.
        """
        if self.writer is None:
            return []
        self.writer.register(types, dimensions, self.state.dataset_types, self.state.dimensions)
        return self.writer.claim(refs)

    def release_claims(self, keys: Sequence[str]) -> None:
        """Delete claims this process made with :meth:`claim_ahead` and did not commit (best effort)."""
        if self.writer is not None and keys:
            self.writer.release(keys)

    def commit(self, dataset_types: list[DatasetType], dimensions: dict[str, str], refs: list[DatasetRef],
               annotations: list[dict[str, Any]] | None = None, claimed: Collection[str] = ()) -> None:
        """Commit datasets whose data objects are already fully written (and/or annotations of earlier ones).

        ``annotations`` (``{"id": ..., "sky": ...}``, see :mod:`objbutler.registry.commits`) go through
        the same commit point: they are committed once their commit object exists.
        ``claimed`` are the ids of refs :meth:`claim_ahead` already claimed
        (claimed protocol): their claims are the caller's to release if this
        raises anything but CommitOutcomeUnknownError.

        **The commit point.** The datasets are committed once their commit
        object exists on the store. This method is built around that single
        point and its outcome decides what the caller may do:

        * it returns: the commit stands. Nothing done after the commit point
          (applying it to this view, checkpoints, pruning old checkpoints) can
          raise out of here; such failures are logged and retried by a later
          commit.
        * it raises an :class:`~objbutler.errors.ObjButlerError` other than
          :class:`~objbutler.errors.CommitOutcomeUnknownError`: nothing was
          committed, and no write of this call can land later. The caller may
          delete the data.
        * it raises :class:`~objbutler.errors.CommitOutcomeUnknownError`: the
          commit may have landed or may still land. The caller must keep the
          data (``objbutler fsck`` reports it as an orphan if it never lands).
          Any unexpected exception while committing is reported this way too.

        Raises
        ------
        ConflictError
            A data ID is taken, a type disagrees, or too many races were lost.
            Nothing was committed.
        StoreError
            The store refused the commit outright; nothing was committed.
        CommitOutcomeUnknownError
            Whether the commit landed cannot be established: keep the data.
        """
        problem = commit_problem(new_commit(dataset_types, dimensions, refs, annotations))
        if problem is not None:  # every reader would ignore it: the datasets would be lost, not committed
            raise ConflictError(f"this commit would be ignored by every reader ({problem}); nothing was committed",
                                conflicts=[ref.id for ref in refs])
        placed: tuple[int, int] | None = None
        try:
            if self.protocol == "claimed":
                placed = self._commit_claimed(dataset_types, dimensions, refs, annotations, claimed)
            elif self.protocol == "sequenced":
                self._commit_sequenced(dataset_types, dimensions, refs, annotations)
            else:
                self._commit_timestamped(dataset_types, dimensions, refs, annotations)
        except ObjButlerError:
            raise  # each raise site below either proved that nothing landed or says it does not know
        except Exception as exc:
            raise CommitOutcomeUnknownError(
                f"unexpected {type(exc).__name__} while committing ({exc}); the data is kept"
            ) from exc
        self._after_commit(placed)

    def check(self, types: list[DatasetType], dimensions: dict[str, str], refs: list[DatasetRef]) -> None:
        """Raise ConflictError now if the last refreshed view already rules these datasets out.

        A cheap early check (no request) so that a put fails before uploading its data; the
        commit checks again against the state it commits on.
        """
        self._check(self.state, types, dimensions, refs)

    @staticmethod
    def _check(state: RegistryState, types: list[DatasetType], dimensions: dict[str, str],
               refs: list[DatasetRef]) -> None:
        state.check_types(types, dimensions)
        uniques = [ref.unique_key for ref in refs]  # each a JSON encoding of the data ID: once per ref
        in_checkpoint = state.checkpoint_members(uniques)
        taken = [ref for ref, unique in zip(refs, uniques, strict=True)
                 if unique in in_checkpoint or ((held := state.tail.get(unique)) is not None and held.id != ref.id)]
        if taken:
            first = taken[0]
            holder = state.find_unique(first.unique_key)
            more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
            raise ConflictError(
                f"{first.dataset_type} {first.data_id} already exists in run {first.run!r} "
                f"(dataset {holder.id if holder else '?'}){more}",
                conflicts=[ref.id for ref in taken],
            )

    def _commit_sequenced(self, types: list[DatasetType], dimensions: dict[str, str], refs: list[DatasetRef],
                          annotations: list[dict[str, Any]] | None = None) -> None:
        """Claim log slots until one holds this commit; every slot tried is decided before moving on.

        Because a slot is only ever left once it is known to hold this commit or
        another one, no attempt of this call can land later: a write the server
        applies late finds its slot taken.
        """
        state = self.state
        deadline = time.monotonic() + self.max_commit_seconds
        attempt = 0
        while attempt == 0 or (time.monotonic() < deadline
                               and (self.max_attempts is None or attempt < self.max_attempts)):
            attempt += 1
            self._check(state, types, dimensions, refs)
            commit = new_commit(types, dimensions, refs, annotations)
            body = encode_commit(commit)
            key = self.log.append_key(state.position)
            if self._claim_slot(key, body, commit.commit_id):
                position = key[len(LOG_PREFIX):-len(".json")]
                with contextlib.suppress(Exception):  # the commit stands; the next refresh reads it anyway
                    state.apply(decode_commit(body, key, self.repository), position)
                return
            if attempt > 1:
                time.sleep(COMMIT_RACE_BACKOFF.delay(attempt))
            state = self.refresh()  # nothing of this call is pending: an error here means nothing landed
        raise ConflictError(f"gave up after losing {attempt} commit races in a row in "
                            f"{self.max_commit_seconds - (deadline - time.monotonic()):.0f} s (heavy contention; "
                            "the claimed protocol has no such limit)")

    def _claim_slot(self, key: str, body: bytes, commit_id: str) -> bool:
        """Create the log object ``key`` holding ``body``; True if it is ours, False if another commit has it.

        See :func:`objbutler.registry.slots.decide_create`: every slot is decided
        before it is left, so a write of ours that the server applies late finds
        it taken.

        Raises
        ------
        CommitOutcomeUnknownError
            The slot stayed undecided after every attempt.
        StoreError
            The store refused the write and the slot is empty.
        """
        return decide_create(self.store, key, body, lambda held: decode_commit(held, key).commit_id == commit_id) \
            is None

    def _commit_claimed(self, types: list[DatasetType], dimensions: dict[str, str], refs: list[DatasetRef],
                        annotations: list[dict[str, Any]] | None = None,
                        claimed: Collection[str] = ()) -> tuple[int, int]:
        """Register, claim, place (see :mod:`objbutler.registry.sharded`); the slot that holds the commit.

        Before the slot holds the commit, a failure releases this call's claims
        and raises (nothing committed); an undecided slot keeps them and raises
        CommitOutcomeUnknownError. Once it holds it, nothing here raises.
        """
        assert self.writer is not None and self.shards is not None
        state = self.state
        self._check(state, types, dimensions, refs)
        self.writer.register(types, dimensions, state.dataset_types, state.dimensions)
        commit = new_commit(types, dimensions, refs, annotations)
        body = encode_commit(commit)
        unclaimed = [ref for ref in refs if ref.id not in claimed]
        claims = self.writer.claim(unclaimed, commit.commit_id) if unclaimed else []
        view = self._vector or [0] * self.shards.shards
        placed: tuple[int, int] | None = None
        try:
            placed = self.writer.place(body, commit.commit_id, view, self.keep_up_with_compaction)
            while self._possibly_compacted(*placed):
                # So slow that compaction may have deleted the slot before the commit landed in it: the same
                # commit goes to a fresh slot too (readers keep one copy).
                log.warning("the commit %s reached slot %s late; writing it again", commit.commit_id, placed)
                placed = self.writer.place(body, commit.commit_id, view, self.keep_up_with_compaction)
        except CommitOutcomeUnknownError:
            raise  # the commit may have landed: its claims stay
        except ObjButlerError as exc:
            if placed is not None:
                raise CommitOutcomeUnknownError(
                    f"the commit {commit.commit_id} landed late in slot {placed} and could not be written again "
                    f"({exc}); the data is kept"
                ) from exc
            self.writer.release(claims)  # every slot tried is decided and none is ours: nothing can land
            raise
        shard, sequence = placed
        # The commit point has passed: the commit stands, and nothing below may raise.
        with contextlib.suppress(Exception):
            self._hand_to_folder(self.shards.key(shard, sequence), body)
        with self._view_guard():
            # Only onto the view the vector belongs to: a refresh since may have replaced it (then the next
            # refresh reads this commit, since the vector did not move past it).
            if state is self._state and self._vector and self._vector[shard] + 1 == sequence:
                with contextlib.suppress(Exception):  # the next refresh reads it anyway
                    state.apply(decode_commit(body, self.shards.key(shard, sequence), self.repository),
                                f"{shard:03d}/{sequence:020d}")
                    self._vector[shard] = sequence
                    state.position = encode_vector(self._vector)
        return shard, sequence

    @staticmethod
    def _holds_all(state: RegistryState, refs: list[DatasetRef]) -> bool:
        return all((h := state.find_unique(r.unique_key)) is not None and h.id == r.id for r in refs)

    def _commit_timestamped(self, types: list[DatasetType], dimensions: dict[str, str], refs: list[DatasetRef],
                            annotations: list[dict[str, Any]] | None = None) -> None:
        """Write one commit under a fresh key, let earlier commits settle, and keep it only if it won.

        A write that fails is retried under a *new* key, so a copy the server
        applies late is a second, identical commit: a harmless duplicate if this
        one won, a loser if it lost. Only when it lost and no copy can still
        land is the loss reported as a ConflictError (data deletable).
        """
        self._check(self.refresh(), types, dimensions, refs)
        commit = new_commit(types, dimensions, refs, annotations)
        body = encode_commit(commit)
        keys: list[str] = []
        written: str | None = None
        last: StoreError | None = None
        for attempt in range(CLAIM_ATTEMPTS):
            if attempt:
                time.sleep(CLAIM_BACKOFF.delay(attempt))
            key = self.log.append_key(None)
            keys.append(key)
            try:
                self.store.put(key, body)
            except TransientStoreError as exc:
                last = exc  # it may have landed, or may still land: try again under a new key
                continue
            except StoreError:
                if len(keys) == 1:
                    raise  # refused outright, and no earlier attempt is pending: nothing was committed
                break
            written = key
            break
        ambiguous = len(keys) > 1
        # From here on the commit may be visible (a failed write may have landed): any failure leaves the
        # outcome unknown, and the log decides.
        time.sleep(self.settle_seconds + self.timestamp_resolution)
        try:
            state = self.refresh()
        except ObjButlerError as exc:  # a failed or garbled read proves nothing about this commit
            raise CommitOutcomeUnknownError(
                f"the commit {written or keys[-1]} may have been written but the log could not be read back to "
                f"verify it ({exc}); the data is kept"
            ) from exc
        if not refs and annotations:
            # Annotations race nobody: the commit stands once a copy exists (written, or listed already).
            if written is not None or commit.commit_id in state.annotation_commits:
                return
        elif self._holds_all(state, refs):
            return  # one of the copies landed and won: the commit stands
        if written is None:
            raise CommitOutcomeUnknownError(
                f"the commit write failed {len(keys)} times ({last}) and no copy is listed yet; a late copy may "
                "still land, the data is kept"
            ) from last
        holders = [h.id for ref in refs if (h := state.find_unique(ref.unique_key)) is not None and h.id != ref.id]
        try:
            for key in keys:
                self.store.delete(key)
        except ObjButlerError as exc:
            raise CommitOutcomeUnknownError(
                f"the commit {written} lost a race but could not be removed ({exc}); the data is kept"
            ) from exc
        with contextlib.suppress(ObjButlerError):
            self.refresh()
        if ambiguous:
            raise CommitOutcomeUnknownError(
                f"the commit lost a race to dataset(s) {holders}, but an earlier failed write of it may still "
                "land; the data is kept (objbutler fsck tells)"
            )
        lost = [ref for ref in refs if (h := state.find_unique(ref.unique_key)) is not None and h.id != ref.id]
        first = lost[0] if lost else refs[0]
        raise ConflictError(
            f"{first.dataset_type} {first.data_id} in run {first.run!r} was committed first by dataset(s) "
            f"{holders}; this put was rolled back",
            conflicts=[ref.id for ref in lost],
        )

    def _after_commit(self, placed: tuple[int, int] | None = None) -> None:
        """Housekeeping after the commit point: it may fail, it never raises (the commit stands)."""
        try:
            if placed is not None:
                if self._fold_due():
                    self._start_fold()
            elif self.protocol == "sequenced":
                self._maybe_checkpoint_sequenced()
            else:
                self._maybe_checkpoint_timestamped()
        except Exception as exc:
            log.warning("checkpoint housekeeping after a commit failed (%s: %s); the commit stands and a later "
                        "commit writes the checkpoint", type(exc).__name__, exc)

    # -- checkpoints -----------------------------------------------------------

    def _maybe_checkpoint_sequenced(self) -> None:
        """Checkpoint on every ``checkpoint_interval``-th commit, and catch up when one was missed."""
        state = self.state
        if state.position is None:
            return
        position = int(state.position)
        if position % self.checkpoint_interval == 0:
            self._write_checkpoint(state.to_checkpoint(), state.position)
            return
        self._checkpointed = max(self._checkpointed, int(state.checkpoint.position or 0))
        if position - self._checkpointed >= 2 * self.checkpoint_interval:
            # A boundary's checkpoint is missing here (its writer failed, or this view predates it):
            # one listing tells which; write one at this position only if none is recent enough.
            newest = [_checkpoint_number(key) for key in self._checkpoint_keys()[:1]]
            if newest and newest[0] is not None:
                self._checkpointed = max(self._checkpointed, newest[0])
            if position - self._checkpointed >= 2 * self.checkpoint_interval:
                self._write_checkpoint(state.to_checkpoint(), state.position)

    fold_in_background: bool = True
    """Claimed protocol: fold on a background thread, so a put returns once its commit has landed.

    A fold reads every commit since the newest checkpoint (hundreds, when many
    writers put at once); inside a put it set the put's latency and, with
    many writer processes, the run's throughput. In the background it reads
    them from a view of its own (:attr:`_folder`), one fold per registry at a
    time; the interpreter waits for folds in flight before it exits, and
    :func:`finish_folds` waits for them explicitly. ``False``: fold inside the
    put that made it due (tests that need a fold's faults to reach the put).
    """

    def _fold_due(self) -> bool:
        """Count this commit; every ``checkpoint_interval``-th (from a random phase) may fold."""
        self._commits_since_check += 1
        if self._commits_since_check < self.checkpoint_interval:
            return False
        self._commits_since_check = 0
        return True

    def _start_fold(self) -> None:
        """Fold now (inline), or hand the fold to the background unless one is still running."""
        if not self.fold_in_background:
            self._maybe_checkpoint_sharded()
            return
        if self._fold_pid != os.getpid():  # forked: the parent's fold, its lock and its view are not ours
            self._fold_pid, self._fold_lock, self._fold, self._folder = os.getpid(), threading.Lock(), None, None
        with self._fold_lock:
            if self._fold is not None and not self._fold.done():
                self._fold_again = True  # the running fold may have listed before this commit: once more after it
                return
            if self._folder is None:
                self._folder = Registry(self.store, self.protocol, self.repository, self.checkpoint_interval,
                                        self.max_attempts, log_shards=self.shards.shards if self.shards else 1,
                                        compaction_grace=self.compaction_grace,
                                        max_commit_seconds=self.max_commit_seconds)
                self._folder.fold_in_background = False
                self._folder.read_lanes = FOLD_READ_LANES
                self._folder._handed = self._handed  # the writer adds, the folder uses and forgets
            self._fold_again = False
            self._fold = _fold_pool().submit(self._fold_until_caught_up, self._folder)
            _FOLDS_IN_FLIGHT.add(self._fold)
            self._fold.add_done_callback(_FOLDS_IN_FLIGHT.discard)

    def _hand_to_folder(self, key: str, body: bytes) -> None:
        """Keep a commit this writer placed for its background folds: they need not read it back (a single
        writer's fold would otherwise GET every commit it wrote). Bounded: the oldest go first."""
        if not self.fold_in_background:
            return
        self._handed[key] = body
        while len(self._handed) > 4 * self.checkpoint_interval + 64:
            self._handed.pop(next(iter(self._handed)), None)

    def _fold_until_caught_up(self, folder: Registry) -> None:
        """Background: fold on ``folder``'s view, again while more folds fell due meanwhile."""
        while True:
            folder.checkpoint_interval = self.checkpoint_interval  # settings changed since: follow them
            folder.compaction_grace = self.compaction_grace
            folder._fold_logged()
            with self._fold_lock:
                if not self._fold_again:
                    return
                self._fold_again = False

    def _fold_logged(self) -> None:
        """A background fold: failures are logged (the commits stand, and a later fold retries)."""
        try:
            self._maybe_checkpoint_sharded()
        except Exception as exc:
            log.warning("a background fold failed (%s: %s); the commits stand and a later fold writes the "
                        "checkpoint", type(exc).__name__, exc)

    def _maybe_checkpoint_sharded(self) -> None:
        """Fold the log if its newest checkpoint is at least half an interval behind.

        One listing tells (no commit is read otherwise); then, under a fold
        lease, the view catches up (from the newest checkpoint when it is
        behind it), writes a checkpoint and compacts. With N writers the
        checks spread out and the live log stays about one interval long,
        whatever the number of shards.
        """
        assert self.shards is not None
        started = time.monotonic()
        live = self.shards.list_live()
        self._read_markers(live.markers, started)
        newest = max(self._marker_positions, default=0)
        folded = self._marker_positions.get(newest, [0] * self.shards.shards)
        pending = sum(1 for shard, sequences in live.slots.items() for n in sequences if n > folded[shard])
        if pending < max(1, self.checkpoint_interval // 2):
            return  # decided from the listing alone: no commit is read
        lease = self._take_fold_lease(live, newest, pending)
        if lease is None:
            return  # another writer is folding these commits now
        try:
            self._refresh_sharded(self.shards, rebase_if_behind=True, listed=(live, started))
            for key in list(self._handed):  # handed commits this view holds now are not needed again
                parsed = self.shards.parse(key)
                if parsed is not None and parsed[1] <= self._vector[parsed[0]]:
                    self._handed.pop(key, None)
            if sum(self._vector) - newest >= max(1, self.checkpoint_interval // 2):
                self._checkpoint_and_compact()
        finally:
            with contextlib.suppress(ObjButlerError):  # done or failed: the next writer need not wait for it
                self.store.delete(lease)

    def _take_fold_lease(self, live: LiveLog, newest: int, pending: int) -> str | None:
        """Claim the folding of the commits after checkpoint ``newest``: the lease's key (None: another's is live).

        Writers that check at about the same time would otherwise all read the
        same commits. A lease older than ``FOLD_LEASE_SECONDS``, or with more than
        ``FOLD_LEASE_BACKLOG`` intervals of ``pending`` commits per lease taken
        behind it (its holder died or is too slow), is superseded by the next
        attempt number.
        """
        assert self.shards is not None
        held = live.leases.get(newest, [])
        swamped = pending >= FOLD_LEASE_BACKLOG * self.checkpoint_interval * len(held)
        if live.newest_time is not None and not swamped:
            cutoff = live.newest_time - dt.timedelta(seconds=FOLD_LEASE_SECONDS)
            if any(t is None or t > cutoff for t in held):
                return None
        key = self.shards.lease_key(newest, len(held) + 1)
        body = f'{{"holder": "{uuid.uuid4().hex}"}}'.encode()
        try:
            # A create whose answer was lost may have landed: decide it, or nobody would hold the lease
            # while every writer waits FOLD_LEASE_SECONDS for it.
            other = decide_create(self.store, key, body, lambda held: held == body, read_foreign=False)
        except CommitOutcomeUnknownError:
            return None  # undecided: let it expire
        return key if other is None else None

    def _checkpoint_and_compact(self) -> None:
        """Write a checkpoint of the view, decide a deletion, write the marker, then delete what it announces.

        Order matters: a commit is deleted only after a marker that announces
        the deletion exists, and only if the marker deleted through is at least
        ``compaction_grace`` old (see :meth:`keep_up_with_compaction`); and a
        deletion is decided by one conditional create
        (:meth:`_decide_deletion`), so that what markers announce is one chain.
        """
        assert self.shards is not None and self._state is not None and self._live is not None
        live, state, vector = self._live, self._state, list(self._vector)
        total = sum(vector)
        if not self._write_checkpoint(state.to_checkpoint(), f"{total:020d}"):
            # Another fold reached the same total first, maybe with other commits (a total is not a
            # position): its marker, if any, is its own to write. Announcing our vector beside its
            # checkpoint would let a later compaction delete commits that checkpoint does not hold.
            return
        cutoff = None if live.newest_time is None else live.newest_time - dt.timedelta(seconds=self.compaction_grace)
        old_enough = [m for m in live.markers
                      if m.total in self._marker_positions and m.total < total
                      and (self.compaction_grace <= 0 or (cutoff is not None and m.last_modified is not None
                                                          and m.last_modified <= cutoff))
                      and all(p <= v for p, v in zip(self._marker_positions[m.total], vector, strict=True))]
        decided = self._decide_deletion(live, old_enough)
        through, deletes, record = decided if decided is not None else (None, None, None)
        marker = encode_marker(encode_vector(vector), None if deletes is None else encode_vector(deletes), record)
        if decide_create(self.store, self.shards.marker_key(total), marker, lambda held: held == marker) is not None:
            return  # a marker of that total that is not ours (a stray): it does not announce our deletion
        if through is None or deletes is None:
            return
        doomed = [self.shards.key(shard, sequence) for shard, sequences in live.slots.items()
                  for sequence in sequences if sequence <= deletes[shard]]
        doomed += [m.key for m in live.markers if m.total < through.total]
        doomed += [self.shards.lease_key(total, n + 1) for total, times in live.leases.items() if total < through.total
                   for n in range(len(times))]
        doomed += [self.shards.compaction_key(n) for n in live.compactions[:-1]]
        delete_keys(self.store, doomed)
        # Retention, last: only checkpoints below the marker deleted through (their markers are gone now, or
        # they never had one). Any newer one may belong to the newest marker a reader lists; "keep the three
        # newest" counted checkpoints of folds that failed before their marker (and of overlapping folds),
        # deleted the newest marker's checkpoint, and a reader that listed then ignored that marker, kept a
        # view compaction had overtaken and saw nothing (tests/test_compaction_adversary.py).
        delete_keys(self.store, [key for key in self._checkpoint_keys()
                                 if (named := _checkpoint_number(key)) is not None and named < through.total])

    def _know_decision(self, record: int, deletes: list[int]) -> None:
        """Remember compaction record ``record``'s vector if it is the newest known (records never change)."""
        if self._known_decision is None or record > self._known_decision[0]:
            self._known_decision = (record, list(deletes))

    def _decide_deletion(self, live: LiveLog,
                         candidates: Sequence[Marker]) -> tuple[Marker, list[int], int] | None:
        """The marker to delete through, its vector and the record deciding it; None: nothing to delete, or
        another fold decides.

        Compactions are decided one after another: the n-th creates the
        compaction record ``n`` (``put_if_absent``) naming a vector at least the
        record ``n - 1``'s and everything the markers this view read announce.
        So the vectors markers announce deleting through are one chain, and a
        reader's greatest is covered by the marker that announced it. Without
        this, two folds deleting at once through markers whose vectors are not
        ordered shard by shard deleted commits that no checkpoint holds
        (tests/test_compaction_chain.py). Deleting through the newest decided
        vector again (what a fold that died mid-deletion left) needs no new
        record; any other vector does (even one no greater than this view's
        deletions: those may come from gaps it saw, not from a decision).
        The newest record's vector is read from a marker naming it when this
        view read one (the usual case), else with one GET.
        """
        assert self.shards is not None
        newest = live.compactions[-1] if live.compactions else 0
        decided: list[int] | None = None
        if newest and self._known_decision is not None and self._known_decision[0] == newest:
            decided = self._known_decision[1]
        elif newest:
            key = self.shards.compaction_key(newest)
            try:
                decided = decode_compaction(self.store.get(key), self.shards.shards, key)
            except NotFoundError:
                return None  # a later compaction removed it since the listing: that one decides
            except FormatError as exc:
                log.warning("not compacting: %s", exc)
                return None
            self._know_decision(newest, decided)
        floor = self._deleted if decided is None else [max(a, b) for a, b in zip(self._deleted, decided, strict=True)]
        eligible = [m for m in candidates
                    if all(p >= f for p, f in zip(self._marker_positions[m.total], floor, strict=True))]
        if not eligible:
            return None
        through = eligible[-1]
        deletes = self._marker_positions[through.total]
        if deletes == decided:
            return through, deletes, newest  # the newest decision again: announcing it keeps the chain
        record = encode_compaction(encode_vector(deletes))
        try:
            if decide_create(self.store, self.shards.compaction_key(newest + 1), record,
                             lambda held: held == record) is not None:
                return None  # another fold decided the next compaction
        except ObjButlerError as exc:  # undecided (the next fold deletes through at least this) or refused
            log.info("not compacting: the compaction record was not created (%s)", exc)
            return None
        if self._record_number_was_reused(newest + 1):
            return None
        self._know_decision(newest + 1, deletes)
        return through, deletes, newest + 1

    def _record_number_was_reused(self, number: int) -> bool:
        """True if a compaction record above ``number`` exists: ``number`` was decided before, and deleted.

        Compaction deletes the records below the newest, so a fold whose
        listing is compactions old (it stalled after listing) can create the
        number after its newest again. That record, decided out of the
        chain's order, is left for the next compaction to delete: this fold
        deletes nothing. One listing per compaction decided.
        """
        assert self.shards is not None
        try:
            later = next(self.store.list(COMPACTION_PREFIX, start_after=self.shards.compaction_key(number)), None)
        except ObjButlerError as exc:
            log.info("not compacting: could not list the compaction records (%s)", exc)
            return True
        if later is not None:
            log.info("not compacting: compaction record %d was decided before (%s exists); this fold's view is "
                     "too old", number, later.key)
        return later is not None

    def _maybe_checkpoint_timestamped(self) -> None:
        if len(self._tail) < self.checkpoint_interval:
            return
        newest = self._tail[-1][0].position.split("|", 1)[0]
        cutoff_time = dt.datetime.strptime(newest, "%Y-%m-%dT%H:%M:%S.%fZ") - dt.timedelta(seconds=60)
        cutoff = cutoff_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        settled = [(e, c) for e, c in self._tail if e.position < cutoff]
        if not settled or len(settled) < self.checkpoint_interval // 2:  # nothing settled yet: nothing to fold
            return
        state = RegistryState(self.state.checkpoint, self.repository)
        state.apply_many([(entry.position, commit) for entry, commit in settled])
        self._write_checkpoint(state.to_checkpoint(), settled[-1][0].position.split("|", 1)[0])

    def write_empty_checkpoint(self) -> None:
        """Claimed protocol, at create: the checkpoint of no commits (every shard at 0) and its marker.

        A claimed repository then always has a checkpoint and a marker, so the
        stock-tools recipe of docs/registry.md (a marker's checkpoint plus the
        commits above its vector) works from the first put on. Other
        protocols: nothing.
        """
        if self.shards is None:
            return
        nothing = encode_vector([0] * self.shards.shards)
        self._write_checkpoint(dataclasses.replace(empty_checkpoint(), position=nothing), f"{0:020d}")
        # Its marker too: a claimed repository then always lists a marker, and the recipe reads them to
        # choose the checkpoint that covers what compaction deleted.
        with contextlib.suppress(AlreadyExistsError):
            self.store.put_if_absent(self.shards.marker_key(0), encode_marker(nothing, None))

    def write_checkpoint(self) -> None:
        """Write a checkpoint of everything visible now (sequenced) or settled (timestamped)."""
        state = self.refresh()
        if state.position is None:
            return
        if self.shards is not None:
            self._checkpoint_and_compact()
        elif self.log.ordered_by_creation:
            self._write_checkpoint(state.to_checkpoint(), state.position)
        else:
            interval, self.checkpoint_interval = self.checkpoint_interval, 1
            try:
                self._maybe_checkpoint_timestamped()
            finally:
                self.checkpoint_interval = interval

    def _write_checkpoint(self, checkpoint: Checkpoint, name: str) -> bool:
        """Create the checkpoint ``name`` and prune old ones; False if a checkpoint of that name existed.

        On the sequenced and timestamped logs a name is a position, so an
        existing checkpoint of that name holds the same commits. On a claimed
        log it is a total of commits, which two folds can reach with
        different commits: the caller must not announce the existing one as
        its own (see :meth:`_checkpoint_and_compact`).
        """
        key = _checkpoint_key(name)
        created = True
        try:
            self.store.put_if_absent(key, encode_checkpoint(checkpoint))
        except AlreadyExistsError:
            created = False
        if self.shards is not None:
            return created  # claimed: retention is part of compaction (see _checkpoint_and_compact)
        if self.log.ordered_by_creation and name.isdigit():
            self._checkpointed = max(self._checkpointed, int(name))
        for stale in self._checkpoint_keys()[KEEP_CHECKPOINTS:]:
            self.store.delete(stale)
        return created

    def _checkpoint_keys(self) -> list[str]:
        """Every checkpoint's key, newest first (one listing)."""
        return sorted((m.key for m in self.store.list(CHECKPOINT_PREFIX) if m.key.endswith(".parquet")),
                      reverse=True)


def _checkpoint_number(key: str) -> int | None:
    """The number a checkpoint's key names: a sequenced log's position, a claimed log's commit total.

    None for any other name (a timestamped position, a stray object): such a checkpoint is never pruned
    by number.
    """
    name = key[len(CHECKPOINT_PREFIX):-len(".parquet")]
    return int(name) if key.startswith(CHECKPOINT_PREFIX) and name.isdigit() else None


def _checkpoint_key(name: str) -> str:
    """Key of the checkpoint named by a log position (sequenced, timestamped) or a commit total (claimed)."""
    return f"{CHECKPOINT_PREFIX}{name.replace(':', '')}.parquet"
