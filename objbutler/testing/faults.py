"""Fault-injecting wrapper stores: make chosen writes fail, or make conditional writes lie.

:class:`FailingWritesStore` fails the writes a predicate picks (e.g. every
write of a registry log entry, after the data object went through), to show
that a put whose commit fails leaves nothing behind.
:class:`IgnoresConditionsStore` behaves like an S3 gateway that accepts
``If-None-Match``/``If-Match`` and ignores them while claiming an atomic create.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from objbutler.errors import StoreError
from objbutler.stores._base import ObjectMeta, Store

__all__ = ["FailingWritesStore", "IgnoresConditionsStore"]

WRITE_METHODS = ("put", "put_if_absent", "put_if_match")


class _Forwarding:
    """Forward every attribute this wrapper does not define to ``inner``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class FailingWritesStore(_Forwarding):
    """Raise ``error`` instead of performing the writes ``should_fail(method, key)`` selects.

    Parameters
    ----------
    inner : Store
        The real store.
    should_fail : callable
        ``(method name, key) -> bool``; method is put, put_if_absent or put_if_match.
    error : callable
        Makes the exception to raise (default: a StoreError naming the key).
    """

    def __init__(self, inner: Store, should_fail: Callable[[str, str], bool],
                 error: Callable[[str], Exception] = lambda key: StoreError(f"injected failure writing {key}")) -> None:
        super().__init__(inner)
        self.should_fail = should_fail
        self.error = error
        self.failures: list[tuple[str, str]] = []

    def _write(self, method: str, key: str, *args: Any) -> ObjectMeta:
        if self.should_fail(method, key):
            self.failures.append((method, key))
            raise self.error(key)
        result: ObjectMeta = getattr(self.inner, method)(key, *args)
        return result

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Write, unless selected to fail."""
        return self._write("put", key, data)

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Create, unless selected to fail."""
        return self._write("put_if_absent", key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Swap, unless selected to fail."""
        return self._write("put_if_match", key, data, etag)


class IgnoresConditionsStore(_Forwarding):
    """A store that claims conditional writes but silently ignores them (as some gateways do)."""

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Overwrite whatever is there, answering success."""
        return self.inner.put(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Overwrite whatever is there, answering success."""
        return self.inner.put(key, data)
