"""The offline state machine: online, offline because asked, offline for a while because the server failed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from objbutler.errors import TransientStoreError

__all__ = ["OfflineSwitch"]

log = logging.getLogger("objbutler.stores.cache")

T = TypeVar("T")


class _WentOfflineError(Exception):
    """Internal: the server became unreachable during this call; answer it from the cache."""


class OfflineSwitch:
    """Whether a cache may contact its server now.

    States: *online*; *forced offline* (``forced=True``: never contact the
    server); *offline until* a time (``auto=True`` and a server call failed
    with a TransientStoreError after the inner store's retries: offline for
    ``reconnect_after`` seconds, then online again). Without ``auto`` a
    failed call raises, so a process never answers from a cached registry
    older than commits that had finished.

    Parameters
    ----------
    forced : bool
        Never contact the server.
    auto : bool
        Switch offline for a while when the server is unreachable.
    reconnect_after : float
        Seconds an automatic switch lasts.
    """

    def __init__(self, forced: bool, auto: bool, reconnect_after: float) -> None:
        self.forced = forced
        self.auto = auto
        self.reconnect_after = reconnect_after
        self._until = 0.0
        self.cause: BaseException | None = None

    @property
    def offline(self) -> bool:
        """True when calls are answered from the cache alone."""
        return self.forced or time.monotonic() < self._until

    def why(self) -> str:
        """A clause saying why an automatic switch happened ("" when forced or online)."""
        return f" (the server failed: {self.cause})" if not self.forced and self.cause else ""

    def remote(self, call: Callable[[], T], name: str) -> T:
        """Run a server call; on an unreachable server switch offline (if allowed) and raise _WentOfflineError.

        Parameters
        ----------
        call : callable
            The server call.
        name : str
            The server's name, for the warning.

        Returns
        -------
        object
            What ``call`` returned.

        Raises
        ------
        TransientStoreError
            When the call failed so and ``auto`` is off.
        _WentOfflineError
            When the call failed so and the switch went offline.
        """
        try:
            return call()
        except TransientStoreError as exc:
            if not self.auto:
                raise
            self._until = time.monotonic() + self.reconnect_after
            self.cause = exc
            log.warning("%s is unreachable (%s): offline for %.0f s, serving cached objects only",
                        name, exc, self.reconnect_after)
            raise _WentOfflineError from exc
