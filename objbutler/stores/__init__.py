"""Object stores: one small protocol, one module per backend.

``open_store(uri)`` picks the backend from the URI scheme:

==========================  ==========================================
``/path`` or ``file:///p``  :class:`~objbutler.stores.local.LocalStore`
``memory://name``           :class:`~objbutler.stores.memory.MemoryStore`
``s3://bucket/prefix``      :class:`~objbutler.stores.s3.S3Store`
``swift://container/pfx``   :class:`~objbutler.stores.swift.SwiftStore`
==========================  ==========================================
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from objbutler.errors import InvalidKeyError, NotSupportedError
from objbutler.stores._base import (
    ByteRange,
    ObjectMeta,
    RangeLike,
    Store,
    StoreCapabilities,
    normalize_ranges,
    validate_key,
)
from objbutler.stores._probe import ConditionalWriteProbe, probe_conditional_writes, probe_timestamp_resolution
from objbutler.stores._retry import RetryPolicy

__all__ = [
    "ByteRange",
    "ConditionalWriteProbe",
    "ObjectMeta",
    "RangeLike",
    "RetryPolicy",
    "Store",
    "StoreCapabilities",
    "normalize_ranges",
    "open_store",
    "probe_conditional_writes",
    "probe_timestamp_resolution",
    "split_bucket_uri",
    "validate_key",
]


_ONE_SLASH = re.compile(r"^(s3|swift|file|memory|gs|az|https?):/(?!/)", re.IGNORECASE)
"""A known scheme followed by one slash (``s3:/bucket``): a typo, not a relative path."""


def split_bucket_uri(uri: str) -> tuple[str, str]:
    """Split ``scheme://bucket/some/prefix`` into ``("bucket", "some/prefix")``.

    Parameters
    ----------
    uri : str
        An ``s3://`` or ``swift://`` URI.

    Returns
    -------
    tuple of str
        The bucket (or container) and the prefix without surrounding slashes.
    """
    parsed = urllib.parse.urlsplit(uri)
    if not parsed.netloc:
        raise InvalidKeyError(f"{uri!r} names no bucket or container")
    prefix = parsed.path.strip("/")
    if prefix:
        validate_key(prefix)
    return parsed.netloc, prefix


def open_store(uri: str, **options: Any) -> Store:
    """Open the store a URI names.

    Parameters
    ----------
    uri : str
        ``file:///abs/path``, a plain path, ``memory://name``,
        ``s3://bucket/prefix`` or ``swift://container/prefix``.
    **options
        Passed to the backend's constructor (endpoint, credentials,
        concurrency, retry policy, ...).

    Returns
    -------
    Store
        A store rooted at the URI.
    """
    if not isinstance(uri, str) or not uri:
        raise InvalidKeyError(f"a store URI must be a non-empty string, got {uri!r}")
    scheme = urllib.parse.urlsplit(uri).scheme if "://" in uri else ""
    if not scheme and _ONE_SLASH.match(uri):
        fixed = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/+", r"\1://", uri)
        raise InvalidKeyError(f"{uri!r} looks like a URI with a slash missing: did you mean {fixed!r}?")
    if scheme in ("", "file"):
        from objbutler.stores.local import LocalStore

        path = urllib.parse.unquote(urllib.parse.urlsplit(uri).path) if scheme == "file" else uri
        return LocalStore(path, **options)
    if scheme == "memory":
        from objbutler.stores.memory import MemoryStore

        return MemoryStore(uri[len("memory://") :].strip("/") or None, **options)
    if scheme == "s3":
        from objbutler.stores.s3 import S3Store

        bucket, prefix = split_bucket_uri(uri)
        return S3Store(bucket, prefix, **options)
    if scheme == "swift":
        from objbutler.stores.swift import SwiftStore

        container, prefix = split_bucket_uri(uri)
        return SwiftStore(container, prefix, **options)
    raise NotSupportedError(
        f"unsupported store URI scheme {scheme!r} in {uri!r} (use a path, file://, memory://, s3://, swift://)"
    )
