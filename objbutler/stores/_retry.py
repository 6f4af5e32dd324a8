"""Retries of transient store failures, with exponential backoff and full jitter (:class:`objbutler.backoff.Backoff`).

Backends translate their native errors into the objbutler tree first; this
module then retries :class:`~objbutler.errors.TransientStoreError` (5xx,
throttling, connection resets, timeouts) and nothing else: a 4xx answer is
final and is never retried.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from typing import TypeVar

from objbutler.backoff import Backoff
from objbutler.defaults import STORE_RETRY_ATTEMPTS, STORE_RETRY_BACKOFF
from objbutler.errors import TransientStoreError

__all__ = ["RetryPolicy", "call_with_retries"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry transient store failures.

    Parameters
    ----------
    attempts : int
        Total attempts, the first included (1 disables retries).
    base_delay : float
        Delay bound in seconds before the second attempt; doubles each time.
    max_delay : float
        Upper bound of any one delay, in seconds.
    """

    attempts: int = STORE_RETRY_ATTEMPTS
    base_delay: float = STORE_RETRY_BACKOFF.base_delay
    max_delay: float = STORE_RETRY_BACKOFF.max_delay

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Return the sleep before retry number ``attempt`` (1-based), with full jitter.

        Parameters
        ----------
        attempt : int
            1 for the first retry, 2 for the second, and so on.
        rng : random.Random, optional
            Source of randomness (for tests).

        Returns
        -------
        float
            Seconds to sleep, uniform in ``[0, min(max_delay, base_delay * 2**(attempt-1))]``.
        """
        return Backoff(self.base_delay, self.max_delay).delay(attempt, rng)


def call_with_retries(
    operation: Callable[[], T],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    *,
    deadline: float | None = None,
) -> T:
    """Run ``operation``, retrying it on TransientStoreError as ``policy`` says.

    Parameters
    ----------
    operation : callable
        A zero-argument callable that raises objbutler errors (already translated).
    policy : RetryPolicy
        Attempts and delays.
    sleep : callable, optional
        Injected for tests.
    deadline : float, optional
        A :func:`time.monotonic` time: no retry starts after it (the last
        failure is raised instead), and no sleep runs past it.

    Returns
    -------
    object
        Whatever ``operation`` returns.

    Raises
    ------
    TransientStoreError
        The last transient failure, once the attempts (or the time) are used up.
    """
    attempt = 1
    while True:
        try:
            return operation()
        except TransientStoreError:
            if attempt >= policy.attempts:
                raise
            pause = policy.delay(attempt)
            if deadline is not None and time.monotonic() + pause >= deadline:
                raise
            sleep(pause)
            attempt += 1
