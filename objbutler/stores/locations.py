"""Absolute locations of objects, and the stores that reach them without lending credentials around.

A *location* is an absolute URI of one object or key prefix, in any bucket:

=================================  ============================================
``s3://bucket/some/key.fits``      an object in an S3 bucket
``swift://container/some/key``     an object in a Swift container
``file:///abs/path/x.fits``        a local file (a plain path means the same)
``memory://name/key``              an object of an in-process memory store
``https://host/path/x.fits``       anything fsspec reads (``gs://``, ``az://``, ...):
                                   an ingest source to copy, never data in place
=================================  ============================================

A repository reaches data registered in place elsewhere (``transfer="direct"``,
see :mod:`objbutler.ingest`) through :func:`sibling_store`: a store on the
*repository's* endpoint, with the repository's own options and credentials, in
another bucket or container. Sources of an ingest on another scheme or
endpoint are opened with :func:`open_source_store`, which never passes one
endpoint's options (keys, tokens) to another.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from objbutler.errors import InvalidKeyError, NotSupportedError
from objbutler.stores._base import Store
from objbutler.stores.fsspec_source import FsspecSourceStore, fsspec_knows

__all__ = [
    "Location",
    "base_store",
    "endpoint_of",
    "open_source_store",
    "parse_location",
    "scheme_of",
    "sibling_store",
]

SCHEMES = ("s3", "swift", "file", "memory")


@dataclasses.dataclass(frozen=True, slots=True)
class Location:
    """An absolute location: a scheme, a bucket (container, memory store name; "" for files) and a key.

    Parameters
    ----------
    scheme : {"s3", "swift", "file", "memory"}
        The kind of store.
    container : str
        The bucket or container (the memory store's name; ``""`` for local files).
    key : str
        The key inside it (for a local file: the absolute path without its leading ``/``);
        may be ``""`` (the whole bucket) or hold glob characters while it is a pattern.
    """

    scheme: str
    container: str
    key: str

    @property
    def uri(self) -> str:
        """The absolute URI (``file:///...`` for local files)."""
        if self.scheme == "file":
            return Path("/" + self.key).as_uri() if self.key else "file:///"
        return f"{self.scheme}://{self.container}/{self.key}" if self.key else f"{self.scheme}://{self.container}"

    def __str__(self) -> str:
        return "/" + self.key if self.scheme == "file" else self.uri

    def child(self, key: str) -> Location:
        """The same bucket, another key."""
        return dataclasses.replace(self, key=key)


def parse_location(text: str | os.PathLike[str]) -> Location:
    """Read an absolute URI, or a local path (made absolute), as a :class:`Location`.

    Raises
    ------
    InvalidKeyError
        For an empty string, a bucket URI with no bucket, or a scheme with one slash (``s3:/b``).
    NotSupportedError
        For a scheme objbutler has no store for.
    """
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
    if not isinstance(text, str) or not text:
        raise InvalidKeyError(f"a location must be a non-empty path or URI, got {text!r}")
    from objbutler.stores._names import _TYPO, _typo

    typo = _TYPO.match(text)
    if typo:
        raise _typo(text, typo.group(1), typo.group(2))
    if "://" not in text:
        return Location("file", "", os.path.abspath(os.path.expanduser(text)).lstrip("/"))
    parsed = urllib.parse.urlsplit(text)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        path = urllib.parse.unquote(parsed.path)
        return Location("file", "", os.path.abspath(path).lstrip("/"))
    if scheme not in SCHEMES and not fsspec_knows(scheme):
        raise NotSupportedError(f"unsupported scheme {scheme!r} in {text!r} (use a path, file://, s3://, swift://, "
                                "or a URL fsspec reads, with fsspec installed)")
    if not parsed.netloc:
        raise InvalidKeyError(f"{text!r} names no bucket or container")
    return Location(scheme, parsed.netloc, text.split("://", 1)[1][len(parsed.netloc):].strip("/"))


def base_store(store: Store) -> Any:
    """The store under any wrappers (cache, fault injection, counting): follows ``.inner``."""
    seen = 0
    while getattr(store, "inner", None) is not None and seen < 16:
        store = store.inner  # type: ignore[attr-defined]
        seen += 1
    return store


def scheme_of(store: Store) -> str:
    """``"s3"``, ``"swift"``, ``"file"`` or ``"memory"``: the scheme of a store's URI."""
    return urllib.parse.urlsplit(store.uri).scheme.lower()


def endpoint_of(store: Store) -> str:
    """Which server (and account) a store talks to, in words: two stores with equal answers share an endpoint.

    S3: the explicit ``endpoint_url``, else ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, else AWS.
    Swift: the auth URL (explicit, else ``ST_AUTH``/``OS_AUTH_URL``) or the pre-authenticated storage URL.
    """
    inner = base_store(store)
    scheme = scheme_of(inner)
    if scheme == "s3":
        endpoint = (getattr(inner, "endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint")
        return f"S3 at {str(endpoint).rstrip('/')}"
    if scheme == "swift":
        storage = (getattr(inner, "os_options", None) or {}).get("object_storage_url") or \
            os.environ.get("OS_STORAGE_URL")
        auth = (getattr(inner, "auth_url", None) or os.environ.get("ST_AUTH") or os.environ.get("OS_AUTH_URL")
                or "no auth URL")
        return f"Swift at {str(storage or auth).rstrip('/')}"
    if scheme == "file":
        return "the local filesystem"
    return "the process's memory stores"


def sibling_store(repository_store: Store, location: Location) -> Store:
    """A store for ``location``'s bucket on the repository's endpoint, with the repository's own options.

    Parameters
    ----------
    repository_store : Store
        The repository's store (wrappers are looked through).
    location : Location
        Where the data is; its scheme must be the repository's.

    Returns
    -------
    Store
        Rooted at the bucket (a local file: at ``/``), so that ``location.key`` is its key.

    Raises
    ------
    NotSupportedError
        If the location is on another scheme than the repository.
    """
    inner = base_store(repository_store)
    scheme = scheme_of(inner)
    if location.scheme != scheme:
        raise NotSupportedError(f"{location} is on {location.scheme}://, the repository on {scheme}://: "
                                "data registered in place must be on the repository's endpoint")
    if scheme == "file":
        from objbutler.stores.local import LocalStore

        return LocalStore("/")
    if scheme == "memory":
        from objbutler.stores.memory import MemoryStore

        return MemoryStore(location.container)
    sibling = getattr(inner, "sibling", None)
    if sibling is None:
        raise NotSupportedError(f"{inner!r} cannot open another bucket on its endpoint")
    store: Store = sibling(location.container)
    return store


def open_source_store(location: Location, repository_store: Store, options: Mapping[str, Any] | None) -> Store:
    """A store to read an ingest source from, rooted at its bucket (a local file: at ``/``).

    * A local file needs no options.
    * ``options`` given: a new store with those options alone (and the environment), whatever the scheme:
      the repository's credentials never go to an endpoint the caller chose.
    * No options, the repository's scheme: the repository's endpoint and options (:func:`sibling_store`).
    * No options, another scheme: a new store configured from the environment alone.
    """
    if location.scheme == "file":
        from objbutler.stores.local import LocalStore

        return LocalStore("/")
    if location.scheme not in SCHEMES:  # read through fsspec, with the options given and nothing else
        return FsspecSourceStore(location.scheme, location.container, options)
    if options is None and location.scheme == scheme_of(base_store(repository_store)):
        return sibling_store(repository_store, location)
    from objbutler.stores import open_store

    try:
        return open_store(location.child("").uri, **dict(options or {}))
    except TypeError as exc:
        raise InvalidKeyError(f"cannot open {location.child('').uri} with the source options given: {exc}") from None
