"""What a cache may assume about keys: given by the code that owns the key layout, not by the cache."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["CachePolicy"]


@dataclasses.dataclass(frozen=True)
class CachePolicy:
    """Which keys a :class:`~objbutler.stores.cache.CachingStore` may serve from disk, and how to name them.

    The default policy assumes nothing: every read goes to the server (the
    last copy is kept for offline use) and no listing is special. A
    repository's layout is described by the registry
    (:func:`objbutler.registry.cache_policy.repository_cache_policy`).

    Parameters
    ----------
    immutable_prefixes : tuple of str
        Keys under these prefixes never change once written: online reads are
        served from the cache when it has them.
    registry_prefix : str or None
        Keys under it make up a registry rebuilt offline from the cache: they
        are evicted last, the cache keeps the immutable ones this process
        writes, remembers their server timestamps from listings, and refuses
        an offline listing under it until one full ``log_prefix`` listing came
        from the server.
    log_prefix : str or None
        A complete online listing covering this prefix marks the registry as
        seen (offline listings under ``registry_prefix`` are then allowed).
    identity_key : str or None
        An object written once when the namespace is created. When an online
        read finds it changed, everything cached for the namespace is dropped
        (it was deleted and recreated, so "immutable" keys name other bytes).
    describe : callable
        ``key -> str`` naming what a key holds, for OfflineError messages.
    """

    immutable_prefixes: tuple[str, ...] = ()
    registry_prefix: str | None = None
    log_prefix: str | None = None
    identity_key: str | None = None
    describe: Callable[[str], str] = repr

    def immutable(self, key: str) -> bool:
        """Whether ``key`` never changes once written."""
        return key.startswith(self.immutable_prefixes)

    def registry(self, key: str) -> bool:
        """Whether ``key`` is part of the registry (see ``registry_prefix``)."""
        return self.registry_prefix is not None and key.startswith(self.registry_prefix)

    def evict_last(self, key: str) -> bool:
        """Whether eviction should spare ``key`` until other objects cannot make room.

        Registry objects and top-level objects (a repository's config): a gap
        in a cached log would hide later commits offline.
        """
        return self.registry(key) or "/" not in key

    def completes_registry(self, prefix: str) -> bool:
        """Whether a complete listing of ``prefix`` covers the whole log."""
        log = self.log_prefix
        return log is not None and (log.startswith(prefix) or prefix.startswith(log))
