"""Deleting many objects at once: one request per 1,000 keys where the store can, else concurrent deletes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from objbutler.stores._base import Store
from objbutler.stores._concurrency import run_concurrently

__all__ = ["DeleteMany", "delete_keys"]

DELETE_WORKERS = 16


@runtime_checkable
class DeleteMany(Protocol):
    """A store that deletes many keys in few requests (S3's ``DeleteObjects``)."""

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete ``keys``; a missing key is not an error."""
        ...


def delete_keys(store: Store, keys: Sequence[str]) -> None:
    """Delete ``keys`` from ``store`` (a missing key is not an error).

    Parameters
    ----------
    store : Store
        Where. A store with ``delete_many`` (a :class:`DeleteMany`) gets one
        call; any other store, wrappers included, one ``delete`` per key,
        concurrently within its concurrency budget.
    keys : sequence of str
        What.

    Raises
    ------
    StoreError
        If a key could not be deleted (others may have been).
    """
    if not keys:
        return
    if isinstance(store, DeleteMany):
        store.delete_many(keys)
        return
    run_concurrently(store.delete, list(keys), DELETE_WORKERS)
