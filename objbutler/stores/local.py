"""A local directory as a store: the embedded default (``file:///path`` or a plain path).

Writes go to a temporary file in the target's directory that is fsynced and
then renamed into place, so readers see the old or the new object, never a
torn one. ``put_if_absent`` publishes with ``os.link``, which fails atomically
if the name exists; ``put_if_match`` holds an ``flock`` on the current file
while it checks the etag and renames, so racing swaps serialize.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from objbutler.errors import AlreadyExistsError, NotFoundError, PreconditionFailedError, StoreError
from objbutler.stores._base import (
    ObjectMeta,
    RangeLike,
    StoreCapabilities,
    clip_range,
    normalize_ranges,
    validate_key,
    validate_prefix,
)

__all__ = ["TMP_PREFIX", "LocalStore"]

_MKDIR_ATTEMPTS = 16  # a directory removed under a put by concurrent deletes is made again
TMP_PREFIX = ".objbutler-tmp-"
"""Name prefix of a file being written (renamed into place when complete; vacuum removes stale ones)."""


def _etag(stat: os.stat_result) -> str:
    return f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}"


def _meta(key: str, stat: os.stat_result) -> ObjectMeta:
    modified = dt.datetime.fromtimestamp(stat.st_mtime_ns / 1e9, tz=dt.UTC)
    return ObjectMeta(key, stat.st_size, _etag(stat), modified)


class LocalStore:
    """A directory on a local (POSIX) filesystem.

    Parameters
    ----------
    root : str or Path
        The directory that holds the objects; created if missing.
    durable : bool, default True
        fsync each written file before publishing it.
    """

    capabilities = StoreCapabilities(
        atomic_create=True, compare_and_swap=True, conditional_create_header=True, server_timestamps=True
    )

    def __init__(self, root: str | os.PathLike[str], durable: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.durable = durable
        if self.root.exists() and not self.root.is_dir():
            raise NotFoundError(f"{self.root} is a file, not a directory: no store or repository can be rooted there")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use {self.root} as a store: {exc.strerror or exc}") from None

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def __reduce__(self) -> tuple[type[LocalStore], tuple[Path, bool]]:
        return (LocalStore, (self.root, self.durable))

    @property
    def uri(self) -> str:
        """The ``file://`` URI of the root directory."""
        return self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _missing(self, key: str) -> NotFoundError:
        return NotFoundError(f"no object {key!r} in {self.uri}")

    def get(self, key: str) -> bytes:
        """Return the whole object."""
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._missing(key) from None

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Return each half-open range with ``os.pread`` on one descriptor opened for this call."""
        wanted = normalize_ranges(ranges)
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._missing(key) from None
        try:
            size = os.fstat(fd).st_size
            out = []
            for byte_range in wanted:
                clipped = clip_range(byte_range, size)
                out.append(os.pread(fd, clipped.length, clipped.start) if clipped.length else b"")
            return out
        finally:
            os.close(fd)

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Return several whole objects in order."""
        return [self.get(key) for key in keys]

    def head(self, key: str) -> ObjectMeta:
        """Return an object's metadata from ``stat``."""
        path = self._path(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        if not path.is_file():
            raise self._missing(key)
        return _meta(key, stat)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        """Write ``data`` to a new temporary file beside ``path`` (its directory made as needed).

        A concurrent ``delete`` of the directory's last object removes the directory it leaves
        empty, possibly between our ``mkdir`` and ``open``; once the temporary file exists the
        directory is no longer empty, so making it again and retrying closes that window.
        """
        temp = path.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        for attempt in range(_MKDIR_ATTEMPTS):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = open(temp, "wb")  # noqa: SIM115 (closed below; the retry needs the open alone)
            except (FileExistsError, NotADirectoryError) as exc:
                blocker = next((p for p in (path.parent, *path.parent.parents) if p.is_file()), None)
                if blocker is not None:
                    raise StoreError(f"cannot create a key below the object {blocker}") from exc
                if attempt == _MKDIR_ATTEMPTS - 1:
                    raise StoreError(f"the directory {path.parent} keeps vanishing under concurrent deletes") from exc
                continue  # the directory was there, then removed by a concurrent delete: make it again
            except FileNotFoundError:  # a parent was removed between making it and using it
                if attempt == _MKDIR_ATTEMPTS - 1:
                    raise
                continue
            with handle:
                handle.write(data)
                if self.durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            return temp
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Write or replace an object atomically (temp file + rename)."""
        path = self._path(key)
        temp = self._write_temp(path, data)
        try:
            os.replace(temp, path)
        except IsADirectoryError:
            temp.unlink()
            raise StoreError(f"key {key!r} names a prefix that holds other objects") from None
        return _meta(key, path.stat())

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Create an object only if the name is free: ``os.link`` fails atomically if it exists."""
        path = self._path(key)
        temp = self._write_temp(path, data)
        try:
            os.link(temp, path)
        except FileExistsError:
            raise AlreadyExistsError(f"object {key!r} already exists in {self.uri}") from None
        finally:
            temp.unlink()
        return _meta(key, path.stat())

    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Replace an object only if its etag is still ``etag``, under an exclusive flock."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(key) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = _etag(path.stat())
            except FileNotFoundError:
                raise self._missing(key) from None
            if current != etag:
                raise PreconditionFailedError(f"object {key!r} changed (etag {current} != {etag})")
            temp = self._write_temp(path, data)
            os.replace(temp, path)
            return _meta(key, path.stat())
        finally:
            os.close(fd)

    def delete(self, key: str) -> None:
        """Delete an object if present, and the directories it leaves empty."""
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return
        parent = path.parent
        while parent != self.root:
            with contextlib.suppress(OSError):
                parent.rmdir()
            if parent.exists():
                break
            parent = parent.parent

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """Yield objects under ``prefix`` in key order, walking the deepest directory the prefix names."""
        validate_prefix(prefix)
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / directory if directory else self.root
        found: list[tuple[str, Path]] = []
        for current, dirnames, filenames in os.walk(base):
            dirnames.sort()
            relative = os.path.relpath(current, self.root)
            stem = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            for name in filenames:
                key = stem + name
                if name.startswith(TMP_PREFIX) or not key.startswith(prefix):
                    continue
                if start_after is not None and key <= start_after:
                    continue
                found.append((key, Path(current) / name))
        found.sort()
        for key, path in found:
            try:
                yield _meta(key, path.stat())
            except FileNotFoundError as exc:
                if exc.errno == errno.ENOENT:
                    continue  # deleted while listing
                raise
