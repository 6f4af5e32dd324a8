"""Every tunable default of objbutler, in one place (the numbers a repository, a store or a commit loop starts from).

A repository records its own values in ``objbutler.json`` when it is created
(:mod:`objbutler.config`); these are what ``Butler.create`` writes when not told otherwise,
and what the registry, the stores' retries and the docs refer to. Change a default here
only: :mod:`objbutler.config`, :mod:`objbutler.butler`, :mod:`objbutler.registry` and
:mod:`objbutler.stores` import it.

This module imports only :mod:`objbutler.backoff`, so any layer may use it.
"""

from __future__ import annotations

from objbutler.backoff import Backoff

__all__ = [
    "CLAIM_BACKOFF",
    "COMMIT_RACE_BACKOFF",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "DEFAULT_COMPACTION_GRACE",
    "DEFAULT_MAX_COMMIT_SECONDS",
    "DEFAULT_SETTLE_SECONDS",
    "DEFAULT_TIMESTAMP_RESOLUTION",
    "STORE_RETRY_ATTEMPTS",
    "STORE_RETRY_BACKOFF",
]

DEFAULT_CHECKPOINT_INTERVAL = 100
"""Commits between registry checkpoints (a new reader replays at most about this many commits)."""

DEFAULT_COMPACTION_GRACE = 30.0
"""Claimed protocol: how old a compaction marker must be before the log entries it folded are deleted
(writers re-read the markers every half of it; a write slower than that is written again)."""

DEFAULT_SETTLE_SECONDS = 0.5
"""How long a timestamped commit waits for earlier commits to become visible before it checks who won."""

DEFAULT_MAX_COMMIT_SECONDS = 300.0
"""Sequenced protocol: how long a commit keeps racing for a log slot before it gives up (ConflictError)."""

DEFAULT_TIMESTAMP_RESOLUTION = 0.0
"""Extra settle time for a store whose modification times are coarse (measured at create; 1.0 for whole seconds)."""

STORE_RETRY_ATTEMPTS = 5
"""Attempts of a store request that fails transiently (5xx, throttling, resets, timeouts), the first included."""

STORE_RETRY_BACKOFF = Backoff(base_delay=0.05, max_delay=2.0)
"""Sleeps between those attempts (full jitter)."""

COMMIT_RACE_BACKOFF = Backoff(base_delay=0.02, max_delay=1.0)
"""Sleeps between a sequenced commit's lost races for a log slot (full jitter: racing writers spread out)."""

CLAIM_BACKOFF = Backoff(base_delay=0.1, max_delay=2.0, jitter=False)
"""Sleeps between attempts to create (or read back) one commit object whose write failed."""
