"""Exponential backoff, in one place: every retry loop in objbutler sleeps for :meth:`Backoff.delay`.

The delay before retry number ``attempt`` (1-based) is bounded by
``min(max_delay, base_delay * 2**(attempt - 1))``; with ``jitter`` (the default, "full jitter") the
sleep is uniform in ``[0, bound]``, which spreads out writers that failed together, else it is the
bound itself. :class:`objbutler.stores.RetryPolicy` (transient store failures) and the registry's
commit loops use it, with the parameters in :mod:`objbutler.defaults`.

This module imports nothing from objbutler, so any layer may use it.
"""

from __future__ import annotations

import dataclasses
import random

__all__ = ["Backoff"]


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Delays that double from ``base_delay`` up to ``max_delay``.

    Parameters
    ----------
    base_delay : float
        Bound of the delay before the first retry, in seconds; doubles each retry.
    max_delay : float
        Upper bound of any one delay, in seconds.
    jitter : bool, default True
        Sleep a uniform random time up to the bound (full jitter) rather than the bound itself.
    """

    base_delay: float
    max_delay: float
    jitter: bool = True

    def __post_init__(self) -> None:
        if not (self.base_delay >= 0 and self.max_delay >= 0):
            raise ValueError(f"backoff delays must be >= 0, got {self.base_delay!r} and {self.max_delay!r}")

    def bound(self, attempt: int) -> float:
        """The longest sleep before retry number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError(f"retry numbers start at 1, got {attempt}")
        return min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 1023))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The sleep before retry number ``attempt`` (1-based).

        Parameters
        ----------
        attempt : int
            1 for the first retry, 2 for the second, and so on.
        rng : random.Random, optional
            Source of the jitter (for tests).

        Returns
        -------
        float
            Seconds: uniform in ``[0, bound(attempt)]`` with jitter, else ``bound(attempt)``.
        """
        bound = self.bound(attempt)
        return (rng or random).uniform(0.0, bound) if self.jitter else bound
