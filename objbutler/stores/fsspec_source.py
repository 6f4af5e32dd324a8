"""Read-only access to ingest sources on any filesystem fsspec knows (``https://``, ``gs://``, ``az://``, ...).

objbutler's own stores cover the schemes a repository lives on (local, memory, S3, Swift). Data that
users want to *copy into* a repository may sit anywhere else; fsspec, when it is installed (it comes
with the ``baselines`` extra, and with most scientific Python stacks), reaches it. This store answers
the reading half of the :class:`~objbutler.stores.Store` protocol over an fsspec filesystem rooted at
one bucket or host; every write is refused, so such a source can be copied but never registered in
place or written to.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from objbutler.errors import NotFoundError, NotSupportedError, StoreError
from objbutler.stores._base import ObjectMeta, RangeLike, StoreCapabilities, normalize_ranges

__all__ = ["FsspecSourceStore", "fsspec_knows"]


def fsspec_knows(scheme: str) -> bool:
    """Whether fsspec is installed and has a filesystem for ``scheme`` (its package may still be missing)."""
    try:
        registry = importlib.import_module("fsspec.registry")
    except ImportError:
        return False
    return scheme in registry.known_implementations or scheme in registry.registry


class FsspecSourceStore:
    """The reading half of a Store over an fsspec filesystem, rooted at ``scheme://root``.

    Parameters
    ----------
    scheme : str
        An fsspec protocol (``https``, ``gs``, ...).
    root : str
        The bucket or host the keys are under.
    options : mapping, optional
        Storage options for the filesystem (credentials, endpoint); none from any other store.

    Raises
    ------
    NotSupportedError
        If fsspec, or the package behind ``scheme``, is not installed.
    """

    def __init__(self, scheme: str, root: str, options: Mapping[str, Any] | None = None) -> None:
        try:
            fsspec = importlib.import_module("fsspec")
            self._fs = fsspec.filesystem(scheme, **dict(options or {}))
        except ImportError as exc:
            raise NotSupportedError(f"reading {scheme}:// sources needs fsspec and its {scheme} filesystem "
                                    f"({exc}); pip install fsspec (and e.g. aiohttp, gcsfs, adlfs)") from None
        except (TypeError, ValueError) as exc:
            raise NotSupportedError(f"cannot open {scheme}:// with the options given: {exc}") from None
        self._scheme, self._root = scheme, root.strip("/")

    def _path(self, key: str) -> str:
        return f"{self._scheme}://{self._root}/{key}" if self._root else f"{self._scheme}://{key}"

    def _key(self, path: str) -> str:
        path = str(path)
        for prefix in (self._path(""), f"{self._root}/"):
            if path.startswith(prefix):
                return path[len(prefix):]
        return path

    def _read(self, action: str, key: str, call: Any) -> Any:
        try:
            return call()
        except FileNotFoundError:
            raise NotFoundError(f"no object {self._path(key)}") from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{action} {self._path(key)} failed: {exc}") from exc

    @property
    def uri(self) -> str:
        """``scheme://root``."""
        return self._path("").rstrip("/")

    @property
    def capabilities(self) -> StoreCapabilities:
        """No conditional writes: this store does not write."""
        return StoreCapabilities(atomic_create=False, compare_and_swap=False, conditional_create_header=False,
                                 server_timestamps=False)

    def get(self, key: str) -> bytes:
        """The whole object."""
        return bytes(self._read("reading", key, lambda: self._fs.cat_file(self._path(key))))

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Half-open byte ranges of one object, in request order (clipped to its end)."""
        wanted = normalize_ranges(ranges)
        size = self.head(key).size
        return [self._range(key, r.start, min(r.stop, size)) for r in wanted]

    def _range(self, key: str, start: int, stop: int) -> bytes:
        if start >= stop:
            return b""
        return bytes(self._read("reading", key, lambda: self._fs.cat_file(self._path(key), start=start, end=stop)))

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Whole objects, in order."""
        return [self.get(key) for key in keys]

    def head(self, key: str) -> ObjectMeta:
        """Size and, where the filesystem gives one, etag."""
        info = self._read("inspecting", key, lambda: self._fs.info(self._path(key)))
        if info.get("type") == "directory":
            raise NotFoundError(f"{self._path(key)} is a directory, not an object")
        size = info.get("size")
        if size is None:
            raise StoreError(f"{self._path(key)}: the server does not say how large it is")
        etag = info.get("ETag") or info.get("etag")
        return ObjectMeta(key=key, size=int(size), etag=str(etag).strip('"') if etag else None, last_modified=None)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """Every object under ``prefix``, in key order (as far as the filesystem can list)."""
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        found = self._read("listing", prefix, lambda: self._fs.find(self._path(base), detail=True))
        for path, info in sorted(found.items()):
            key = self._key(path)
            if not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            if info.get("type") == "directory":
                continue
            if info.get("size") is None:  # HTTP listings are links without sizes: ask for each
                yield self.head(key)
            else:
                yield ObjectMeta(key=key, size=int(info["size"]), etag=None, last_modified=None)

    def _refuse(self, *_: Any) -> Any:
        raise NotSupportedError(f"{self.uri} is read only here: sources on fsspec filesystems are copied, "
                                "never written")

    put = put_if_absent = delete = _refuse
