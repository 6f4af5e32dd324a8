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

**Sharded** (the ``claimed`` protocol, stores with an atomic create). Shard
*k* is a sequenced log of its own: ``manifest/log/<k as 3 digits>/<n as 20
digits>.json``. Uniqueness does not come from the log (claims settle it, see
:mod:`objbutler.registry.claims`), so shards need no order among each other:
a reader's position is a vector of per-shard sequence numbers.

A sharded log is **compacted**: after a checkpoint folds every commit up to a
vector, its writer records a *marker* ``manifest/log/~/<total>.json`` (sorted
after every shard) naming that vector and the older vector it is about to
delete through, and only then deletes those commits. Deleting is decided by
creating the next numbered *compaction record*
``manifest/log/~compaction/<n>.json`` with ``put_if_absent``, and each deletes
through at least what the one before did: what markers announce is one chain,
so the marker announcing the most also covers it all (two folds deleting at
once through vectors not ordered shard by shard would leave deleted commits
that no checkpoint holds). The live log therefore
stays about one checkpoint interval long, and a reader's refresh is **one
listing** of ``manifest/log/`` whatever the number of shards (see
:meth:`ShardedLog.list_live` and docs/registry.md for why nothing is missed).

A position is a string that sorts in log order: the 20-digit sequence number,
``"<timestamp>|<key>"``, or (sharded) ``"shards:<n0>,<n1>,..."``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import uuid
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from objbutler.errors import FormatError
from objbutler.stores import ObjectMeta, Store

__all__ = ["COMPACTION_PREFIX", "LEASE_PREFIX", "LOG_PREFIX", "MARKER_PREFIX", "CommitLog", "LiveLog", "LogEntry",
           "Marker", "MarkerBody", "SequencedLog", "ShardedLog", "TimestampedLog", "decode_compaction", "decode_marker",
           "decode_vector", "encode_compaction", "encode_marker", "encode_vector"]

LOG_PREFIX = "manifest/log/"
VECTOR_PREFIX = "shards:"
_VECTOR = re.compile(r"shards:\d{1,20}(,\d{1,20}){0,4095}")
MAX_SHARDS = 1000
MARKER_PREFIX = f"{LOG_PREFIX}~/"
"""Compaction markers of a sharded log (``~`` sorts after the shards' digits: a listing reaches them last)."""
COMPACTION_PREFIX = f"{LOG_PREFIX}~compaction/"
"""Compaction records: ``<n>.json``, the vector the n-th compaction deletes through (created one after another)."""
LEASE_PREFIX = f"{LOG_PREFIX}~lease/"
"""Who is folding the commits after a checkpoint: ``<total>-<attempt>.json`` (one folder at a time)."""


def encode_vector(vector: Sequence[int]) -> str:
    """The position string of a per-shard vector of sequence numbers (``"shards:3,0,7"``)."""
    return VECTOR_PREFIX + ",".join(str(n) for n in vector)


def decode_vector(position: str | None, shards: int) -> list[int]:
    """The per-shard vector of a position (all zeros for None).

    Raises
    ------
    ValueError
        If ``position`` is not a vector of ``shards`` entries.
    """
    if position is None:
        return [0] * shards
    if not _VECTOR.fullmatch(position):
        raise ValueError(f"not a sharded log position: {position!r}")
    vector = [int(n) for n in position[len(VECTOR_PREFIX):].split(",")]
    if len(vector) != shards:
        raise ValueError(f"the position {position!r} has {len(vector)} shards, the repository {shards}")
    return vector


def is_vector(position: str) -> bool:
    """True for a sharded log position."""
    return bool(_VECTOR.fullmatch(position))


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


class ShardedLog:
    """``shards`` gap-free numbered logs, each relying on an atomic ``put_if_absent``.

    Parameters
    ----------
    store : Store
        A store whose ``capabilities.atomic_create`` is true.
    shards : int
        How many shards (fixed when the repository is created).
    """

    def __init__(self, store: Store, shards: int) -> None:
        if not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"log_shards must be 1 to {MAX_SHARDS}, got {shards}")
        self.store = store
        self.shards = shards

    @staticmethod
    def prefix(shard: int) -> str:
        """The key prefix of one shard."""
        return f"{LOG_PREFIX}{shard:03d}/"

    @classmethod
    def key(cls, shard: int, sequence: int) -> str:
        """Object key of commit ``sequence`` (1-based) of ``shard``."""
        return f"{cls.prefix(shard)}{sequence:020d}.json"

    @classmethod
    def parse(cls, key: str) -> tuple[int, int] | None:
        """``(shard, sequence)`` of a sharded commit key, or None for any other key."""
        rest = key[len(LOG_PREFIX):] if key.startswith(LOG_PREFIX) else ""
        if len(rest) != 29 or rest[3] != "/" or not rest.endswith(".json"):
            return None
        shard, sequence = rest[:3], rest[4:-5]
        if not (shard.isdigit() and sequence.isdigit()):
            return None
        return int(shard), int(sequence)

    def shard_tail(self, shard: int, after: int) -> int:
        """The last slot of the run of taken slots right after slot ``after`` of ``shard`` (one listing).

        ``after`` is a slot the writer knows taken, at or above every marker
        position it has read; compaction deletes only slots at or below the
        position of a marker a writer has read (see
        :meth:`objbutler.registry.registry.Registry.keep_up_with_compaction`),
        and a slot is only taken right after one known taken. So the slots
        above ``after`` are one run, and anything past a gap is a stray that
        readers never reach (they stop at the gap): a commit placed after it
        would never be listed.
        """
        tail = after
        for meta in self.store.list(self.prefix(shard), start_after=self.key(shard, after) if after else None):
            parsed = self.parse(meta.key)
            if parsed is None or parsed[0] != shard or parsed[1] <= tail:
                continue
            if parsed[1] != tail + 1:
                break  # a gap: what follows is no commit of this shard (yet)
            tail = parsed[1]
        return tail

    @staticmethod
    def marker_key(total: int) -> str:
        """Key of the compaction marker of the checkpoint covering ``total`` commits."""
        return f"{MARKER_PREFIX}{total:020d}.json"

    def list_live(self) -> LiveLog:
        """Every live commit slot of every shard and every marker: **one** (paginated) listing."""
        slots: dict[int, list[int]] = {}
        markers: list[Marker] = []
        leases: dict[int, list[dt.datetime | None]] = {}
        compactions: list[int] = []
        newest: dt.datetime | None = None
        for meta in self.store.list(LOG_PREFIX):
            parsed = self.parse(meta.key)
            if parsed is not None:
                if parsed[0] >= self.shards:
                    continue
                slots.setdefault(parsed[0], []).append(parsed[1])
            elif (total := _numbered(meta.key, MARKER_PREFIX)) is not None:
                markers.append(Marker(total, meta.key, meta.last_modified))
            elif meta.key.startswith(LEASE_PREFIX) and meta.key[len(LEASE_PREFIX):][:20].isdigit():
                leases.setdefault(int(meta.key[len(LEASE_PREFIX):][:20]), []).append(meta.last_modified)
            elif (number := _numbered(meta.key, COMPACTION_PREFIX)) is not None:
                compactions.append(number)
            else:
                continue  # a stray: its time (a copy may carry a skewed clock's) must not age the markers
            if meta.last_modified is not None and (newest is None or meta.last_modified > newest):
                newest = meta.last_modified
        for sequences in slots.values():
            sequences.sort()
        markers.sort(key=lambda marker: marker.total)
        return LiveLog(slots, markers, newest, leases, sorted(compactions))

    @staticmethod
    def lease_key(total: int, attempt: int) -> str:
        """Key of the ``attempt``-th lease on folding the commits after the checkpoint covering ``total``."""
        return f"{LEASE_PREFIX}{total:020d}-{attempt}.json"

    @staticmethod
    def compaction_key(number: int) -> str:
        """Key of the ``number``-th compaction record (1-based)."""
        return f"{COMPACTION_PREFIX}{number:020d}.json"

    def list_markers(self) -> list[Marker]:
        """The compaction markers only, oldest first (one listing)."""
        markers = [Marker(total, meta.key, meta.last_modified) for meta in self.store.list(MARKER_PREFIX)
                   if (total := _numbered(meta.key, MARKER_PREFIX)) is not None]
        return sorted(markers, key=lambda marker: marker.total)



@dataclasses.dataclass(frozen=True, slots=True)
class Marker:
    """A compaction marker as a listing shows it.

    Parameters
    ----------
    total : int
        Commits its checkpoint covers (the checkpoint is ``manifest/checkpoints/<total>.parquet``).
    key : str
        The marker's object key.
    last_modified : datetime or None
        Its server-side modification time.
    """

    total: int
    key: str
    last_modified: dt.datetime | None


@dataclasses.dataclass
class LiveLog:
    """What one listing of a sharded log shows.

    Parameters
    ----------
    slots : dict
        Shard -> the sequence numbers listed, ascending.
    markers : list of Marker
        Compaction markers, oldest first.
    newest_time : datetime or None
        The newest modification time of a commit, marker or lease listed (the server's clock, no later
        than now; stray keys do not count).
    leases : dict
        Checkpoint total -> the modification times of its fold leases.
    compactions : list of int
        The numbers of the compaction records listed, ascending.
    """

    slots: dict[int, list[int]]
    markers: list[Marker]
    newest_time: dt.datetime | None
    leases: dict[int, list[dt.datetime | None]] = dataclasses.field(default_factory=dict)
    compactions: list[int] = dataclasses.field(default_factory=list)


class MarkerBody(NamedTuple):
    """What a compaction marker announces.

    Attributes
    ----------
    position : list of int
        The vector its checkpoint holds the commits through.
    deletes : list of int
        The vector its fold deleted through (all zeros when none).
    record : int or None
        The compaction record that decided ``deletes`` (None when the fold deleted nothing, or the
        marker predates records). A reader that read this marker knows that record's vector
        without a GET.
    """

    position: list[int]
    deletes: list[int]
    record: int | None


def encode_marker(position: str, deletes: str | None, record: int | None = None) -> bytes:
    """The body of a compaction marker: the checkpoint's vector, the vector deleted through (or None) and
    the compaction record that decided it (or None)."""
    document: dict[str, object] = {"v": 1, "position": position, "deletes": deletes}
    if record is not None:
        document["record"] = record
    return json.dumps(document, sort_keys=True).encode()


def decode_marker(data: bytes, shards: int, where: str) -> MarkerBody:
    """The vectors of a marker body and the record that decided its deletion.

    Raises
    ------
    FormatError
        If the body is not a marker of a log with ``shards`` shards.
    """
    try:
        document = json.loads(data)
        position = decode_vector(document["position"], shards)
        deletes = decode_vector(document.get("deletes"), shards)
        record = document.get("record")
        if record is not None and (type(record) is not int or record < 1):
            raise ValueError(f"record {record!r} is not a compaction record's number")
    except (ValueError, TypeError, KeyError) as exc:
        raise FormatError(f"{where} is not a compaction marker: {exc}") from None
    return MarkerBody(position, deletes, record)


def encode_compaction(deletes: str) -> bytes:
    """The body of a compaction record: the vector that compaction deletes through."""
    return json.dumps({"v": 1, "deletes": deletes}, sort_keys=True).encode()


def decode_compaction(data: bytes, shards: int, where: str) -> list[int]:
    """The vector a compaction record deletes through.

    Raises
    ------
    FormatError
        If the body is not a compaction record of a log with ``shards`` shards.
    """
    try:
        return decode_vector(json.loads(data)["deletes"], shards)
    except (ValueError, TypeError, KeyError) as exc:
        raise FormatError(f"{where} is not a compaction record: {exc}") from None


def _numbered(key: str, prefix: str) -> int | None:
    """The number a ``<prefix><20 digits>.json`` key names (a marker's total, a compaction record's number)."""
    stem = key[len(prefix):-len(".json")] if key.startswith(prefix) and key.endswith(".json") else ""
    return int(stem) if stem.isdigit() and len(stem) == 20 else None
