"""Retry policy: transient failures are retried with bounded, jittered backoff; others never."""

from __future__ import annotations

import random

import pytest

from objbutler.errors import NotFoundError, StoreError, TransientStoreError
from objbutler.stores._retry import RetryPolicy, call_with_retries


def test_transient_failures_are_retried_until_success() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientStoreError("503 SlowDown")
        return "ok"

    assert call_with_retries(flaky, RetryPolicy(attempts=5), sleep=sleeps.append) == "ok"
    assert len(calls) == 3
    assert len(sleeps) == 2


def test_gives_up_after_attempts() -> None:
    calls: list[int] = []

    def always() -> None:
        calls.append(1)
        raise TransientStoreError("503")

    with pytest.raises(TransientStoreError):
        call_with_retries(always, RetryPolicy(attempts=4), sleep=lambda s: None)
    assert len(calls) == 4


@pytest.mark.parametrize("error", [NotFoundError("404"), StoreError("403")])
def test_final_errors_are_not_retried(error: Exception) -> None:
    calls: list[int] = []

    def fails() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        call_with_retries(fails, RetryPolicy(attempts=5), sleep=lambda s: None)
    assert len(calls) == 1


def test_delay_is_bounded_full_jitter() -> None:
    policy = RetryPolicy(attempts=10, base_delay=0.1, max_delay=1.0)
    rng = random.Random(1)
    for attempt in range(1, 10):
        bound = min(1.0, 0.1 * 2 ** (attempt - 1))
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > bound / 2
