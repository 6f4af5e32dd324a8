"""Object stores: narrow protocols, one forwarding base for wrappers, one module per backend.

``open_store(uri)`` picks the backend from the URI scheme:

==========================  ==========================================
``/path`` or ``file:///p``  :class:`~objbutler.stores.local.LocalStore`
``memory://name``           :class:`~objbutler.stores.memory.MemoryStore`
``s3://bucket/prefix``      :class:`~objbutler.stores.s3.S3Store`
``swift://container/pfx``   :class:`~objbutler.stores.swift.SwiftStore`
==========================  ==========================================
"""

from __future__ import annotations

from typing import Any

from objbutler.errors import InvalidURIError
from objbutler.stores._base import (
    ByteRange,
    CompareAndSwap,
    ConditionalWrite,
    List,
    ObjectMeta,
    RangeLike,
    ReadRanges,
    Store,
    StoreCapabilities,
    Write,
    normalize_ranges,
    validate_key,
)
from objbutler.stores._concurrency import (
    DEFAULT_MAX_CONCURRENCY,
    ConcurrencyBudget,
    Feed,
    budget_of,
    default_budget,
    run_concurrently,
)
from objbutler.stores._endpoint import (
    EndpointProfile,
    clear_endpoint_profiles,
    endpoint_profile,
    measure_endpoint,
)
from objbutler.stores._names import bucket_name_problem, parse_store_uri, validate_bucket_name
from objbutler.stores._probe import ConditionalWriteProbe, probe_conditional_writes, probe_timestamp_resolution
from objbutler.stores._retry import RetryPolicy
from objbutler.stores.bulk import DeleteMany, delete_keys
from objbutler.stores.wrapper import StoreWrapper, if_inner_has

__all__ = [
    "DeleteMany",
    "delete_keys",
    "DEFAULT_MAX_CONCURRENCY",
    "ByteRange",
    "CompareAndSwap",
    "ConcurrencyBudget",
    "ConditionalWrite",
    "ConditionalWriteProbe",
    "EndpointProfile",
    "Feed",
    "List",
    "ObjectMeta",
    "RangeLike",
    "ReadRanges",
    "RetryPolicy",
    "Store",
    "StoreCapabilities",
    "StoreWrapper",
    "Write",
    "bucket_name_problem",
    "clear_endpoint_profiles",
    "budget_of",
    "default_budget",
    "endpoint_profile",
    "measure_endpoint",
    "normalize_ranges",
    "open_store",
    "parse_store_uri",
    "probe_conditional_writes",
    "probe_timestamp_resolution",
    "run_concurrently",
    "split_bucket_uri",
    "validate_bucket_name",
    "if_inner_has",
    "validate_key",
]


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
    scheme, bucket, prefix = parse_store_uri(uri)
    if scheme not in ("s3", "swift"):
        raise InvalidURIError(f"{uri!r} is not an s3:// or swift:// URI")
    return bucket, prefix


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

    Raises
    ------
    InvalidURIError
        For a malformed URI (see :func:`parse_store_uri`), before any request.
    InvalidBucketNameError
        For a bucket or container name no server could have (stricter with
        ``create_bucket=True`` / ``create_container=True``).
    NotSupportedError
        For a scheme other than the ones above.
    """
    scheme, location, prefix = parse_store_uri(uri)
    if scheme == "file":
        from objbutler.stores.local import LocalStore

        return LocalStore(location, **options)
    if scheme == "memory":
        from objbutler.stores.memory import MemoryStore

        return MemoryStore(location or None, **options)
    if scheme == "s3":
        from objbutler.stores.s3 import S3Store

        return S3Store(location, prefix, **options)
    from objbutler.stores.swift import SwiftStore

    return SwiftStore(location, prefix, **options)
