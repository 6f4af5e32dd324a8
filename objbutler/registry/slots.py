"""Deciding a conditional create: after ``put_if_absent``, is the object ours or another writer's?

A create that failed in a way that may still let it land (a timeout, a lost
answer) is retried and read back until the object is known to hold our bytes
or someone else's, so that no write of ours can land later on an object we
walked away from. The registry uses it for log slots, claims and registrations.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from objbutler.defaults import CLAIM_BACKOFF
from objbutler.errors import (
    AlreadyExistsError,
    CommitOutcomeUnknownError,
    FormatError,
    NotFoundError,
    StoreError,
    TransientStoreError,
)
from objbutler.stores import Store

__all__ = ["CREATE_ATTEMPTS", "decide_create"]

CREATE_ATTEMPTS = 6
"""Rounds (each with the store's own retries) spent deciding one create before giving up as unknown."""


def decide_create(store: Store, key: str, body: bytes, is_ours: Callable[[bytes], bool],
                  attempts: int = CREATE_ATTEMPTS, read_foreign: bool = True) -> bytes | None:
    """Create ``key`` holding ``body``; None if the object is ours, else the bytes another writer put there.

    With ``read_foreign=False``, an object found existing while no attempt of
    ours is pending is another writer's without reading it: ``b""`` is returned
    (a log slot: the commit that holds it does not matter to this writer).

    ``is_ours(held)`` tells whether bytes read back are this writer's (raising
    FormatError when they are garbled: a garbled read decides nothing and is
    read again). A create the server refused outright (not a transient
    failure) on an empty key re-raises: nothing was written.

    Raises
    ------
    CommitOutcomeUnknownError
        The object stayed undecided after every attempt.
    StoreError
        The store refused the write and the key is empty.
    """
    last: StoreError | None = None
    pending = False  # an attempt failed in a way that may still let it land
    for attempt in range(attempts):
        if attempt:
            time.sleep(CLAIM_BACKOFF.delay(attempt))
        try:
            store.put_if_absent(key, body)
            return None
        except AlreadyExistsError:
            if not read_foreign and not pending:
                return b""  # no attempt of ours can be in it: another writer's, no need to look
        except TransientStoreError as exc:
            last, pending = exc, True  # it may have landed, or may still land
        except StoreError as exc:
            last = exc  # refused outright
        try:
            held = store.get(key)
        except NotFoundError:
            if last is not None and not pending:
                raise last from None  # refused, and no attempt of ours can land: nothing was written
            continue  # empty for now: create it again, so that a late write finds the key taken
        except FormatError as exc:
            last = StoreError(f"{key} read back garbled ({exc})")
            continue
        except StoreError as exc:
            last = exc
            continue
        try:
            return None if held == body or is_ours(held) else held
        except FormatError as exc:
            last = StoreError(f"{key} read back garbled ({exc})")
    raise CommitOutcomeUnknownError(
        f"the write of {key} failed ({last}) and it could not be read back; the data is kept"
    ) from last
