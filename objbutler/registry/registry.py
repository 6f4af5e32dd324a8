"""The registry: commit protocol, refresh, checkpoints. See docs/registry.md for the format.

Two commit protocols, chosen from what the store guarantees (never assumed):

``sequenced`` (atomic create: S3, local, memory)
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
import datetime as dt
import logging
import random
import time
from collections.abc import Sequence

from objbutler.errors import (
    AlreadyExistsError,
    CommitOutcomeUnknownError,
    ConflictError,
    FormatError,
    NotFoundError,
    StoreError,
)
from objbutler.registry.checkpoint import (
    CHECKPOINT_PREFIX,
    Checkpoint,
    decode_checkpoint,
    empty_checkpoint,
    encode_checkpoint,
)
from objbutler.registry.commits import Commit, decode_commit, encode_commit, new_commit
from objbutler.registry.log import LOG_PREFIX, CommitLog, LogEntry, SequencedLog, TimestampedLog
from objbutler.registry.records import DatasetRef, DatasetType
from objbutler.registry.state import RegistryState
from objbutler.stores import Store

__all__ = ["PROTOCOLS", "Registry"]

log = logging.getLogger(__name__)

PROTOCOLS = ("sequenced", "timestamped")
KEEP_CHECKPOINTS = 3


class Registry:
    """The manifest of one repository, read from and committed to its store.

    Parameters
    ----------
    store : Store
        The repository's store.
    protocol : {"sequenced", "timestamped"}
        Commit protocol (see module docstring).
    repository : str
        URI stamped on refs.
    checkpoint_interval : int
        Write a checkpoint every this many commits.
    max_attempts : int
        Lost races tolerated per commit before giving up with ConflictError.
    settle_seconds : float
        Timestamped protocol: wait before verifying a commit.
    """

    def __init__(
        self,
        store: Store,
        protocol: str,
        repository: str,
        checkpoint_interval: int = 100,
        max_attempts: int = 50,
        settle_seconds: float = 0.5,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown commit protocol {protocol!r}")
        self.store = store
        self.protocol = protocol
        self.repository = repository
        self.checkpoint_interval = checkpoint_interval
        self.max_attempts = max_attempts
        self.settle_seconds = settle_seconds
        self.log: CommitLog = SequencedLog(store) if protocol == "sequenced" else TimestampedLog(store)
        self._state: RegistryState | None = None
        self._bodies: dict[str, Commit] = {}  # immutable commits already fetched, by key
        self._tail: list[tuple[LogEntry, Commit]] = []

    # -- reading ---------------------------------------------------------------

    def refresh(self) -> RegistryState:
        """Bring the view up to date with the bucket and return it (cheap when nothing changed)."""
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

    @property
    def state(self) -> RegistryState:
        """The last refreshed view (refreshing once if there is none)."""
        return self._state if self._state is not None else self.refresh()

    def _fetch(self, entries: Sequence[LogEntry]) -> list[tuple[LogEntry, Commit]]:
        known = dict(self._bodies)
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
            return dict(zip(keys, self.store.get_many(keys), strict=True))
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
        candidates = sorted((m.key for m in self.store.list(CHECKPOINT_PREFIX) if m.key.endswith(".parquet")),
                            reverse=True)
        for key in candidates:
            try:
                return decode_checkpoint(self.store.get(key), key)
            except NotFoundError:
                continue  # removed by retention while we listed; an older one will do
            except FormatError as exc:
                log.warning("skipping unreadable checkpoint (the log still has every commit): %s", exc)
        return empty_checkpoint()

    # -- committing ------------------------------------------------------------

    def commit(self, dataset_types: list[DatasetType], dimensions: dict[str, str], refs: list[DatasetRef]) -> None:
        """Commit datasets whose data objects are already fully written.

        Raises
        ------
        ConflictError
            A data ID is taken, a type disagrees, or too many races were lost.
            Nothing was committed.
        StoreError
            The commit could not be written; nothing was committed.
        CommitOutcomeUnknownError
            The commit write failed and the log could not be read back.
        """
        if self.protocol == "sequenced":
            self._commit_sequenced(dataset_types, dimensions, refs)
        else:
            for ref in refs:  # one commit per dataset: a loser can then roll back alone
                self._commit_timestamped(dataset_types, dimensions, ref)

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
        in_checkpoint = state.checkpoint_members(ref.unique_key for ref in refs)
        for ref in refs:
            unique = ref.unique_key
            if unique in in_checkpoint or (unique in state.tail and state.tail[unique].id != ref.id):
                holder = state.find_unique(unique)
                raise ConflictError(
                    f"{ref.dataset_type} {ref.data_id} already exists in run {ref.run!r} "
                    f"(dataset {holder.id if holder else '?'})"
                )

    def _landed(self, refs: list[DatasetRef]) -> bool:
        return self._holds_all(self.refresh(), refs)

    def _commit_sequenced(self, types: list[DatasetType], dimensions: dict[str, str], refs: list[DatasetRef]) -> None:
        state = self.state
        for attempt in range(1, self.max_attempts + 1):
            self._check(state, types, dimensions, refs)
            body = encode_commit(new_commit(types, dimensions, refs))
            try:
                key = self.log.append(body, after=state.position)
            except AlreadyExistsError:
                if attempt > 1:
                    time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
                state = self.refresh()
                if self._holds_all(state, refs):
                    return  # an earlier attempt landed although its answer was lost
                continue
            except StoreError as exc:
                self._raise_after_failed_write(refs, exc)
            state.apply(decode_commit(body, key, self.repository), key[len(LOG_PREFIX):-len(".json")])
            self._maybe_checkpoint_sequenced()
            return
        raise ConflictError(f"gave up after losing {self.max_attempts} commit races in a row (heavy contention)")

    @staticmethod
    def _holds_all(state: RegistryState, refs: list[DatasetRef]) -> bool:
        return all((h := state.find_unique(r.unique_key)) is not None and h.id == r.id for r in refs)

    def _raise_after_failed_write(self, refs: list[DatasetRef], exc: StoreError) -> None:
        try:
            landed = self._landed(refs)
        except StoreError:
            raise CommitOutcomeUnknownError(
                f"the commit write failed ({exc}) and the log cannot be read back; the data is kept"
            ) from exc
        if landed:
            return
        raise exc

    def _commit_timestamped(self, types: list[DatasetType], dimensions: dict[str, str], ref: DatasetRef) -> None:
        self._check(self.refresh(), types, dimensions, [ref])
        body = encode_commit(new_commit(types, dimensions, [ref]))
        try:
            key = self.log.append(body, after=None)
        except StoreError as exc:
            self._raise_after_failed_write([ref], exc)
            return
        time.sleep(self.settle_seconds)
        state = self.refresh()
        if not self._holds_all(state, [ref]):
            self.log.remove(key)
            holder = state.find_unique(ref.unique_key)
            self.refresh()
            raise ConflictError(
                f"{ref.dataset_type} {ref.data_id} in run {ref.run!r} was committed first by dataset "
                f"{holder.id if holder else '?'}; this put was rolled back"
            )
        self._maybe_checkpoint_timestamped()

    # -- checkpoints -----------------------------------------------------------

    def _maybe_checkpoint_sequenced(self) -> None:
        state = self.state
        if state.position is not None and int(state.position) % self.checkpoint_interval == 0:
            self._write_checkpoint(state.to_checkpoint(), state.position)

    def _maybe_checkpoint_timestamped(self) -> None:
        if len(self._tail) < self.checkpoint_interval:
            return
        newest = self._tail[-1][0].position.split("|", 1)[0]
        cutoff_time = dt.datetime.strptime(newest, "%Y-%m-%dT%H:%M:%S.%fZ") - dt.timedelta(seconds=60)
        cutoff = cutoff_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        settled = [(e, c) for e, c in self._tail if e.position < cutoff]
        if len(settled) < self.checkpoint_interval // 2:
            return
        state = RegistryState(self.state.checkpoint, self.repository)
        state.apply_many([(entry.position, commit) for entry, commit in settled])
        self._write_checkpoint(state.to_checkpoint(), settled[-1][0].position.split("|", 1)[0])

    def write_checkpoint(self) -> None:
        """Write a checkpoint of everything visible now (sequenced) or settled (timestamped)."""
        state = self.refresh()
        if state.position is None:
            return
        if self.log.ordered_by_creation:
            self._write_checkpoint(state.to_checkpoint(), state.position)
        else:
            interval, self.checkpoint_interval = self.checkpoint_interval, 1
            try:
                self._maybe_checkpoint_timestamped()
            finally:
                self.checkpoint_interval = interval

    def _write_checkpoint(self, checkpoint: Checkpoint, name: str) -> None:
        key = f"{CHECKPOINT_PREFIX}{name.replace(':', '')}.parquet"
        try:
            self.store.put_if_absent(key, encode_checkpoint(checkpoint))
        except AlreadyExistsError:
            return
        except StoreError as exc:  # a checkpoint is an optimization: the commit already stands
            log.warning("could not write checkpoint %s: %s", key, exc)
            return
        older = sorted((m.key for m in self.store.list(CHECKPOINT_PREFIX) if m.key.endswith(".parquet")),
                       reverse=True)[KEEP_CHECKPOINTS:]
        for stale in older:
            self.store.delete(stale)
