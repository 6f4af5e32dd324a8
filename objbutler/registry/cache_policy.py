"""What a local cache may assume about a repository's keys (the registry owns the layout, not the cache)."""

from __future__ import annotations

from objbutler.registry.checkpoint import CHECKPOINT_PREFIX
from objbutler.registry.log import LOG_PREFIX
from objbutler.stores.cache import CachePolicy

__all__ = ["DATA_PREFIX", "REGISTRY_PREFIX", "describe_key", "repository_cache_policy"]

DATA_PREFIX = "data/"
REGISTRY_PREFIX = "manifest/"
_DATASET_SUFFIXES = (".fits", ".zarr", ".json", ".parquet", ".ecsv")


def describe_key(key: str) -> str:
    """Name the dataset an object key belongs to: ``dataset calexp detector=22,visit=1 in run 'run1' (key)``.

    Parameters
    ----------
    key : str
        An object key of a repository.

    Returns
    -------
    str
        The dataset's name for a data key, else the key in quotes.
    """
    parts = key.split("/")
    if parts[0] == DATA_PREFIX.rstrip("/"):
        for index, part in enumerate(parts):
            if index >= 3 and part.endswith(_DATASET_SUFFIXES):
                stem = part.rsplit(".", 1)[0].rsplit("-", 1)[0]
                run = "/".join(parts[1 : index - 1])
                return f"dataset {parts[index - 1]} {stem} in run {run!r} ({key})"
    return repr(key)


def repository_cache_policy(config_key: str) -> CachePolicy:
    """The cache policy of an objbutler repository.

    Data objects are written once under a fresh key, and log entries and
    checkpoints are created with ``put_if_absent`` under fresh names, so a
    cached copy never goes stale; the log *listing* and the config can change.
    The config identifies the repository: a changed config means it was
    deleted and recreated under the same URI.

    Parameters
    ----------
    config_key : str
        The repository config's key (``objbutler.config.CONFIG_KEY``).

    Returns
    -------
    CachePolicy
        The policy a Butler gives its :class:`~objbutler.stores.cache.CachingStore`.
    """
    return CachePolicy(
        immutable_prefixes=(DATA_PREFIX, LOG_PREFIX, CHECKPOINT_PREFIX),
        registry_prefix=REGISTRY_PREFIX,
        log_prefix=LOG_PREFIX,
        identity_key=config_key,
        describe=describe_key,
    )
