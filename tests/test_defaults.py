"""One place for defaults (objbutler.defaults) and one backoff (objbutler.backoff.Backoff)."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from objbutler import defaults
from objbutler.backoff import Backoff
from objbutler.config import RepositoryConfig
from objbutler.registry import registry
from objbutler.stores import RetryPolicy

PACKAGE = Path(defaults.__file__).resolve().parent

PENDING: set[str] = set()
"""Modules not yet switched to objbutler.defaults/backoff (registry.py is being rewritten on another branch; the
lead switches its three sleeps and two constants at merge, then empties this set)."""


def test_backoff_bounds_double_up_to_the_cap() -> None:
    backoff = Backoff(0.1, 1.0, jitter=False)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert Backoff(0.05, 2.0).bound(10_000) == 2.0  # no overflow on a long retry loop
    with pytest.raises(ValueError):
        backoff.bound(0)


def test_full_jitter_stays_within_the_bound_and_varies() -> None:
    backoff, rng = Backoff(0.05, 2.0), random.Random(7)
    for attempt in range(1, 12):
        sleeps = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= s <= backoff.bound(attempt) for s in sleeps)
        assert len(set(sleeps)) > 150


def test_retry_policy_sleeps_as_its_backoff() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.base_delay, policy.max_delay) == (
        defaults.STORE_RETRY_ATTEMPTS, defaults.STORE_RETRY_BACKOFF.base_delay, defaults.STORE_RETRY_BACKOFF.max_delay)
    for attempt in range(1, 8):
        assert policy.delay(attempt, random.Random(attempt)) == \
            defaults.STORE_RETRY_BACKOFF.delay(attempt, random.Random(attempt))


def test_registry_backoffs_match_the_ones_it_will_use() -> None:
    """The registry's ad-hoc sleeps (until the lead switches them) equal COMMIT_RACE_BACKOFF and CLAIM_BACKOFF."""
    for attempt in range(2, 12):  # the commit race loop sleeps from its second attempt on
        rng_a, rng_b = random.Random(attempt), random.Random(attempt)
        assert rng_a.uniform(0, min(1.0, 0.01 * 2**attempt)) == defaults.COMMIT_RACE_BACKOFF.delay(attempt, rng_b)
    for attempt in range(1, registry.CLAIM_ATTEMPTS):
        assert min(2.0, 0.05 * 2**attempt) == defaults.CLAIM_BACKOFF.delay(attempt)


def test_repository_defaults_come_from_one_place() -> None:
    config = RepositoryConfig("sequenced", "fits")
    assert config.checkpoint_interval == defaults.DEFAULT_CHECKPOINT_INTERVAL
    assert config.settle_seconds == defaults.DEFAULT_SETTLE_SECONDS
    assert config.timestamp_resolution == defaults.DEFAULT_TIMESTAMP_RESOLUTION
    assert registry.DEFAULT_CHECKPOINT_INTERVAL == defaults.DEFAULT_CHECKPOINT_INTERVAL
    assert registry.DEFAULT_SETTLE_SECONDS == defaults.DEFAULT_SETTLE_SECONDS


def _exponential_sleeps(tree: ast.AST) -> list[int]:
    """Lines that compute ``... 2 ** ...`` inside a ``sleep(...)`` call: an ad-hoc backoff."""
    found = []
    for node in ast.walk(tree):
        name = getattr(node.func, "attr", getattr(node.func, "id", "")) if isinstance(node, ast.Call) else ""
        if name == "sleep" and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(node)):
            found.append(node.lineno)
    return found


def test_no_ad_hoc_backoff_outside_backoff_py() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in PENDING:
            continue
        offenders += [f"{relative}:{line}" for line in _exponential_sleeps(ast.parse(path.read_text()))]
    assert not offenders, f"sleep with its own exponential math (use objbutler.backoff.Backoff): {offenders}"
    assert _exponential_sleeps(ast.parse("time.sleep(min(2.0, 0.05 * 2**attempt))")) == [1]  # the scan sees one
