"""Find out by test whether a store enforces its conditional writes.

Some S3-compatible gateways accept ``If-None-Match: *`` and ``If-Match`` and
then ignore them (answering 200). A registry that trusted such a store would
silently lose commits, so the butler probes a scratch key before trusting it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

from objbutler.errors import AlreadyExistsError, NotSupportedError, PreconditionFailedError
from objbutler.stores._base import CompareAndSwap, Store

__all__ = ["PROBE_PREFIX", "ConditionalWriteProbe", "probe_conditional_writes", "probe_timestamp_resolution"]

PROBE_PREFIX = ".objbutler-probe/"


@dataclasses.dataclass(frozen=True, slots=True)
class ConditionalWriteProbe:
    """What a probe of one store found.

    Parameters
    ----------
    create_enforced : bool
        A second ``put_if_absent`` of the same key was refused.
    match_enforced : bool or None
        ``put_if_match`` with a stale etag was refused; None where the store
        does not offer ``put_if_match`` at all (not a CompareAndSwap, or a
        gateway that refuses ``If-Match``).
    """

    create_enforced: bool
    match_enforced: bool | None

    @property
    def trustworthy(self) -> bool:
        """True when every conditional write the store offers is enforced."""
        return self.create_enforced and self.match_enforced is not False


def probe_conditional_writes(store: Store) -> ConditionalWriteProbe:
    """Probe a store's conditional writes on a scratch key, then delete it.

    A probe tests one writer at a time: it shows whether the server *checks*
    the condition, not whether the check is atomic under concurrency (Swift
    checks, but not atomically; that is declared in its capabilities).

    Parameters
    ----------
    store : Store
        The store to probe; needs permission to write and delete.

    Returns
    -------
    ConditionalWriteProbe
        Which conditions the server enforced.
    """
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        store.put_if_absent(key, b"first")
        try:
            store.put_if_absent(key, b"second")
            create_enforced = False
        except AlreadyExistsError:
            create_enforced = True
        match_enforced: bool | None = None
        if isinstance(store, CompareAndSwap):
            try:
                current = store.head(key)
                stale = "0" * 32 if current.etag != "0" * 32 else "1" * 32
                store.put_if_match(key, b"third", stale)
                match_enforced = False
            except PreconditionFailedError:
                match_enforced = True
            except NotSupportedError:  # an S3 gateway that answers 501 to If-Match
                match_enforced = None
    finally:
        store.delete(key)
    return ConditionalWriteProbe(create_enforced, match_enforced)


def probe_timestamp_resolution(store: Store, samples: int = 3) -> float:
    """Measure the granularity of the server's modification times, in seconds.

    Writes ``samples`` scratch objects a little apart, lists them and looks at
    the fractions of their timestamps: all whole seconds means 1.0, all whole
    milliseconds 0.001, anything finer 0.0. A commit protocol that orders by
    server time must wait out this granularity: two commits stamped within one
    second are otherwise indistinguishable by time alone.

    Parameters
    ----------
    store : Store
        The store; needs permission to write, list and delete.
    samples : int
        Objects written (each fraction that is whole by chance halves the odds).

    Returns
    -------
    float
        1.0, 0.001 or 0.0.
    """
    prefix = f"{PROBE_PREFIX}{uuid.uuid4().hex}/"
    keys = [f"{prefix}{i}" for i in range(samples)]
    try:
        for key in keys:
            store.put(key, b"t")
            time.sleep(0.137)  # not a divisor of a second: distinct fractions on a fine clock
        stamps = [m.last_modified for m in store.list(prefix) if m.last_modified is not None]
    finally:
        for key in keys:
            store.delete(key)
    if not stamps:
        return 1.0  # no timestamps to judge by: assume the coarsest
    micros = [stamp.microsecond for stamp in stamps]
    if all(m == 0 for m in micros):
        return 1.0
    if all(m % 1000 == 0 for m in micros):
        return 0.001
    return 0.0
