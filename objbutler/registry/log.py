"""The commit log in the bucket, in two flavours chosen by what the store guarantees.

**Sequenced** (stores with an atomic create: S3, local, memory). Commit *n* is
the object ``manifest/log/<n as 20 digits>.json``, created with
``put_if_absent``. Exactly one writer can create each number, so the log is a
strict total order with no gaps, and a writer that loses a race learns it at
once (``AlreadyExistsError``), re-reads the tail and tries the next number.

**Timestamped** (stores without one: Swift). Nothing is ever overwritten: a
commit goes to a fresh key ``manifest/log/<writer hour>/<uuid>.json`` and its
place in the order is ``(server timestamp, key)`` as the listing reports it,
which every reader sees alike. The hour bucket (writer clock, UTC) only
narrows listings; ordering never depends on writer clocks.

A position is a string that sorts in log order: the 20-digit sequence number,
or ``"<timestamp>|<key>"``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Protocol

from objbutler.stores import ObjectMeta, Store

__all__ = ["LOG_PREFIX", "CommitLog", "LogEntry", "SequencedLog", "TimestampedLog"]

LOG_PREFIX = "manifest/log/"


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class LogEntry:
    """A commit's place in the log.

    Parameters
    ----------
    position : str
        Where it sits in the log order.
    key : str
        Its object key.
    """

    position: str
    key: str


class CommitLog(Protocol):
    """What the registry needs of a log."""

    @property
    def ordered_by_creation(self) -> bool:
        """True when the key a commit is written to fixes its position (sequenced)."""
        ...

    def list_after(self, position: str | None) -> list[LogEntry]:
        """Every commit after ``position`` (all when None), in log order."""
        ...

    def append_key(self, after: str | None) -> str:
        """The key a commit following position ``after`` is written to.

        Sequenced: the next slot, created with ``put_if_absent``; timestamped:
        a fresh key (``after`` is ignored), written with a plain ``put``.
        """
        ...


class SequencedLog:
    """A gap-free numbered log that relies on an atomic ``put_if_absent``.

    Parameters
    ----------
    store : Store
        A store whose ``capabilities.atomic_create`` is true.
    """

    ordered_by_creation = True

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def key(sequence: int) -> str:
        """Object key of commit number ``sequence``."""
        return f"{LOG_PREFIX}{sequence:020d}.json"

    def list_after(self, position: str | None) -> list[LogEntry]:
        """List the commits after ``position``, stopping at any gap."""
        start_after = self.key(int(position)) if position is not None else None
        metas = []
        expected = int(position) + 1 if position is not None else 1
        for meta in self.store.list(LOG_PREFIX, start_after=start_after):
            name = meta.key[len(LOG_PREFIX):]
            if not (name.endswith(".json") and name[:-5].isdigit() and len(name) == 25):
                continue
            if int(name[:-5]) != expected:
                break  # a gap: nothing after it is part of the log yet
            metas.append(meta)
            expected += 1
        return [LogEntry(meta.key[len(LOG_PREFIX):-5], meta.key) for meta in metas]

    def append_key(self, after: str | None) -> str:
        """The slot after position ``after``: commit ``after + 1`` (1 for an empty log)."""
        return self.key(int(after) + 1 if after is not None else 1)


def timestamp_position(meta: ObjectMeta) -> str:
    """``"<server time, µs>|<key>"`` for a timestamped commit."""
    if meta.last_modified is None:
        raise ValueError(f"store gave no timestamp for {meta.key}")
    stamp = meta.last_modified.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{stamp}|{meta.key}"


class TimestampedLog:
    """A log of never-overwritten commits ordered by server timestamp (for Swift).

    Parameters
    ----------
    store : Store
        Any store with server timestamps.
    skew_hours : int
        How far (hours) a writer's clock may lag the server's without its
        commits being missed by listings that start from a checkpoint.
    """

    ordered_by_creation = False

    def __init__(self, store: Store, skew_hours: int = 2) -> None:
        self.store = store
        self.skew_hours = skew_hours

    def list_after(self, position: str | None) -> list[LogEntry]:
        """List the log (from a little before ``position``) in (timestamp, key) order, after ``position``."""
        start_after = None
        if position is not None:
            stamp = dt.datetime.strptime(position.split("|", 1)[0], "%Y-%m-%dT%H:%M:%S.%fZ")
            earliest = stamp - dt.timedelta(hours=self.skew_hours)
            start_after = f"{LOG_PREFIX}{earliest.strftime('%Y%m%dT%H')}"
        entries: list[tuple[str, ObjectMeta]] = []
        for meta in self.store.list(LOG_PREFIX, start_after=start_after):
            if not meta.key.endswith(".json"):
                continue
            pos = timestamp_position(meta)
            if position is None or pos > position:
                entries.append((pos, meta))
        return sorted(LogEntry(pos, meta.key) for pos, meta in entries)

    def append_key(self, after: str | None) -> str:
        """A fresh key under the writer's hour (never reused); the position is known once listed."""
        hour = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H")
        return f"{LOG_PREFIX}{hour}/{uuid.uuid4().hex}.json"
