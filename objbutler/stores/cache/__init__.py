"""A read-through cache of a store on local disk, and offline mode.

:class:`CachingStore` wraps any store. What it keeps, and when it answers
from disk, depends on a :class:`CachePolicy` given by whoever owns the key
layout (a Butler passes its repository's,
:func:`objbutler.registry.cache_policy.repository_cache_policy`):

=============================  ============================  =================================
keys                           online                        offline
=============================  ============================  =================================
immutable (the policy's        from the cache when present,  from the cache, else OfflineError
``immutable_prefixes``)        else from the server (then
                               kept)
everything else                always from the server; the   the last copy seen, else
                               last copy seen is kept        OfflineError
listings                       always from the server        from the cache directory
writes                         to the server                 OfflineError
=============================  ============================  =================================

One job per module:

``_settings``
    a Butler's ``cache=``/``offline=`` and the environment (``OBJBUTLER_CACHE``,
    ``OBJBUTLER_OFFLINE``, ``OBJBUTLER_CACHE_SIZE``).
``_policy``
    :class:`CachePolicy`: what may be assumed about keys.
``_layout``
    key naming on disk: ``<cache_dir>/objects-v1/<namespace>/o/<key>``, one
    file per object, the namespace a hash of the store's URI (and endpoint).
    Files are written to a temporary name and renamed into place, so several
    processes (and threads) can fill and read one cache at once. A file's
    modification time is the server's ``last_modified`` (offline listings
    report it); its access time, set on every hit, drives the LRU.
``_eviction``
    the size bound: ``max_bytes`` bounds the whole cache (every namespace);
    past it, least recently used files go down to 90 %, registry objects only
    when nothing else can make room (a gap in a cached log would hide later
    commits offline).
``_offline``
    the offline state machine: ``offline=True`` never contacts the server.
    Online, a read that fails after the inner store's retries raises its
    :class:`~objbutler.errors.TransientStoreError` (a cached registry may miss
    commits that finished after it was cached); only with
    ``auto_offline=True`` (a Butler's ``offline="auto"``) does such a failure
    switch the store offline for ``reconnect_after`` seconds, with a warning.
``_store``
    :class:`CachingStore`, which puts them together.
"""

from __future__ import annotations

from objbutler.stores.cache._policy import CachePolicy
from objbutler.stores.cache._settings import AUTO, DEFAULT_CACHE_DIR, DEFAULT_MAX_BYTES, cache_settings, parse_size
from objbutler.stores.cache._store import CachingStore

__all__ = [
    "AUTO",
    "DEFAULT_CACHE_DIR",
    "DEFAULT_MAX_BYTES",
    "CachePolicy",
    "CachingStore",
    "cache_settings",
    "parse_size",
]
