"""Where a cached object lives on disk: ``<cache_dir>/objects-v1/<namespace>/o/<key>``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path

from objbutler.stores._base import Store, validate_key

__all__ = ["LAYOUT", "TMP_PREFIX", "CacheLayout", "namespace_of"]

LAYOUT = "objects-v1"
TMP_PREFIX = ".objbutler-tmp-"  # LocalStore's temporary files
OBJECTS = "o"
REGISTRY_SEEN = "registry-seen"  # marker: a full log listing once came from the server


def namespace_of(inner: Store) -> tuple[str, dict[str, str]]:
    """Name a store's namespace in the cache: a hash of its URI and endpoint.

    Parameters
    ----------
    inner : Store
        The cached store (``endpoint_url``/``auth_url`` are used where it has them).

    Returns
    -------
    tuple
        ``(24 hex digits, the identity hashed)``.
    """
    identity = {"uri": inner.uri}
    for attribute in ("endpoint_url", "auth_url"):
        value = getattr(inner, attribute, None)
        if isinstance(value, str) and value:
            identity[attribute] = value
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    return digest, identity


class CacheLayout:
    """The paths of one store's namespace in a cache directory.

    Parameters
    ----------
    cache_dir : Path
        The cache directory (shared by every namespace and process).
    inner : Store
        The cached store.
    """

    def __init__(self, cache_dir: Path, inner: Store) -> None:
        self.top = cache_dir / LAYOUT
        namespace, self.identity = namespace_of(inner)
        self.root = self.top / namespace
        self.objects = self.root / OBJECTS
        self.registry_seen = self.root / REGISTRY_SEEN

    def path(self, key: str) -> Path:
        """The file holding ``key``'s cached copy."""
        return self.objects / validate_key(key)

    def key_of(self, path: Path) -> str | None:
        """The key a file under :attr:`top` caches, or None for bookkeeping files (store.json, locks)."""
        relative = path.relative_to(self.top).parts
        if len(relative) < 3 or relative[1] != OBJECTS:
            return None
        return "/".join(relative[2:])

    def temp_name(self, tag: str) -> Path:
        """A temporary file name in this namespace (skipped by listings and measurements)."""
        return self.root / f"{TMP_PREFIX}{tag}-{os.getpid()}-{threading.get_ident()}"

    def describe_namespace(self) -> None:
        """Write ``store.json`` naming the cached store (once; best effort)."""
        marker = self.root / "store.json"
        if not marker.exists():
            with contextlib.suppress(OSError):
                temp = self.temp_name("store")
                temp.write_text(json.dumps(self.identity, indent=2))
                os.replace(temp, marker)
