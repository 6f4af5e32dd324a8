"""The store conformance suite every backend must pass.

A backend's test module subclasses :class:`StoreConformanceTests` and
provides a ``store`` fixture that yields a fresh, empty store::

    class TestMyStore(StoreConformanceTests):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path)

What a backend claims in :class:`~objbutler.stores.StoreCapabilities` is
tested, not trusted: a backend that claims an atomic create must show exactly
one winner among 16 racing writers; one that does not must still refuse a
second create made after the first finished, where it offers the header.
"""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from objbutler.errors import (
    AlreadyExistsError,
    InvalidKeyError,
    NotFoundError,
    NotSupportedError,
    PreconditionFailedError,
)
from objbutler.stores import (
    CompareAndSwap,
    ConditionalWrite,
    List,
    ReadRanges,
    Store,
    Write,
    probe_conditional_writes,
)
from objbutler.stores.cache import CachePolicy, CachingStore

__all__ = ["WRITE_ONCE_PREFIXES", "StoreConformanceTests", "race", "write_once_cache"]

RACERS = 16

#: Key prefixes the suite writes at most once per store and never replaces, so a
#: :class:`~objbutler.stores.cache.CachingStore` under test may call them immutable
#: (``CachePolicy(immutable_prefixes=WRITE_ONCE_PREFIXES)``) and serve them from disk.
WRITE_ONCE_PREFIXES = ("obj/", "large/", "many/", "r", "big", "page/", "unicode/", "p")


def write_once_cache(inner: Store, cache_dir: os.PathLike[str]) -> CachingStore:
    """A CachingStore around ``inner`` for the suite: its write-once keys are served from disk.

    Parameters
    ----------
    inner : Store
        The store to cache.
    cache_dir : path
        A fresh cache directory.

    Returns
    -------
    CachingStore
        The store to run the suite on.
    """
    return CachingStore(inner, cache_dir, policy=CachePolicy(immutable_prefixes=WRITE_ONCE_PREFIXES))


def race(function: Callable[[int], Any], racers: int = RACERS) -> list[Any]:
    """Run ``function(i)`` for ``racers`` threads released at the same instant.

    Parameters
    ----------
    function : callable
        Called with the racer's number; its return value or raised exception is collected.
    racers : int
        Number of threads.

    Returns
    -------
    list
        One result or exception per racer, in racer order.
    """
    barrier = threading.Barrier(racers)

    def run(index: int) -> Any:
        barrier.wait()
        try:
            return function(index)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(racers) as pool:
        return list(pool.map(run, range(racers)))


class StoreConformanceTests:
    """Behaviour every :class:`~objbutler.stores.Store` shares. Subclass and provide ``store``."""

    #: Size of the large round-trip object; backends may lower it for slow servers.
    large_object_size = 64 * 1024 * 1024
    #: Number of keys for the pagination test (S3 pages are 1,000 keys).
    many_keys = 2_100

    # -- whole objects -------------------------------------------------------

    @pytest.mark.parametrize("size", [0, 1, 1000])
    def test_round_trip_small(self, store: Store, size: int) -> None:
        data = os.urandom(size)
        meta = store.put(f"obj/{size}", data)
        assert meta.size == size
        assert store.get(f"obj/{size}") == data
        assert store.head(f"obj/{size}").size == size

    def test_round_trip_large(self, store: Store) -> None:
        data = os.urandom(self.large_object_size)
        store.put("large/object", data)
        assert store.head("large/object").size == len(data)
        assert store.get("large/object") == data

    def test_put_replaces_and_changes_etag(self, store: Store) -> None:
        first = store.put("k", b"one")
        second = store.put("k", b"two!")
        assert store.get("k") == b"two!"
        assert first.etag != second.etag
        assert store.head("k").etag == second.etag

    def test_missing_key_raises_not_found(self, store: Store) -> None:
        for call in (lambda: store.get("nope"), lambda: store.head("nope"), lambda: store.get_ranges("nope", [(0, 1)])):
            with pytest.raises(NotFoundError) as info:
                call()
            assert isinstance(info.value, FileNotFoundError)

    def test_get_many_in_order(self, store: Store) -> None:
        keys = [f"many/{i:03d}" for i in range(20)]
        for i, key in enumerate(keys):
            store.put(key, str(i).encode())
        order = keys[::-1]
        assert store.get_many(order) == [str(keys.index(k)).encode() for k in order]
        with pytest.raises(NotFoundError):
            store.get_many([keys[0], "many/missing"])

    # -- ranges --------------------------------------------------------------

    def test_ranges(self, store: Store) -> None:
        data = bytes(range(256)) * 40
        store.put("r", data)
        size = len(data)
        ranges = [(0, 1), (size - 1, size), (size - 10, size + 100), (size, size + 5), (size + 50, size + 60),
                  (100, 100), (5, 500), (4, 600), (5, 500), (1000, 9000)]
        assert store.get_ranges("r", ranges) == [data[a:b] for a, b in ranges]

    def test_ranges_accept_byte_range_type(self, store: Store) -> None:
        from objbutler.stores import ByteRange

        store.put("r", b"0123456789")
        assert store.get_ranges("r", [ByteRange(2, 5), (7, 9)]) == [b"234", b"78"]
        assert store.get_ranges("r", []) == []

    def test_invalid_ranges_rejected(self, store: Store) -> None:
        store.put("r", b"0123456789")
        for bad in [(5, 2), (-1, 3)]:
            with pytest.raises(ValueError):
                store.get_ranges("r", [bad])

    def test_many_concurrent_ranges(self, store: Store) -> None:
        data = os.urandom(1 << 20)
        store.put("big", data)
        ranges = [(i * 997, i * 997 + 4096) for i in range(200)]
        assert store.get_ranges("big", ranges) == [data[a:b] for a, b in ranges]

    # -- listing -------------------------------------------------------------

    def test_list_prefix_sorted(self, store: Store) -> None:
        for key in ["a/b/2", "a/b/1", "a/bc", "a/c/x", "b/1"]:
            store.put(key, key.encode())
        assert [m.key for m in store.list("a/b/")] == ["a/b/1", "a/b/2"]
        assert [m.key for m in store.list("a/b")] == ["a/b/1", "a/b/2", "a/bc"]
        assert [m.key for m in store.list()] == ["a/b/1", "a/b/2", "a/bc", "a/c/x", "b/1"]
        assert [m.key for m in store.list("a/", start_after="a/b/2")] == ["a/bc", "a/c/x"]
        assert list(store.list("zzz/")) == []
        sizes = {m.key: m.size for m in store.list("a/")}
        assert sizes["a/bc"] == 4

    def test_list_paginates(self, store: Store) -> None:
        keys = [f"page/{i:05d}" for i in range(self.many_keys)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: store.put(k, b"x"), keys))
        assert [m.key for m in store.list("page/")] == keys
        assert [m.key for m in store.list("page/", start_after=keys[1500])] == keys[1501:]

    # -- deletes -------------------------------------------------------------

    def test_delete(self, store: Store) -> None:
        store.put("d/1", b"1")
        store.put("d/2", b"2")
        store.delete("d/1")
        with pytest.raises(NotFoundError):
            store.get("d/1")
        assert [m.key for m in store.list("d/")] == ["d/2"]
        store.delete("d/1")  # idempotent
        store.delete("never/existed")

    # -- conditional writes --------------------------------------------------

    def test_put_if_absent(self, store: Store) -> None:
        if not store.capabilities.conditional_create_header:
            with pytest.raises(NotSupportedError):
                store.put_if_absent("c", b"x")
            return
        store.put_if_absent("c", b"first")
        with pytest.raises(AlreadyExistsError) as info:
            store.put_if_absent("c", b"second")
        assert isinstance(info.value, FileExistsError)
        assert store.get("c") == b"first"

    def test_put_if_absent_race_has_one_winner(self, store: Store) -> None:
        if not store.capabilities.atomic_create:
            pytest.skip("backend declares no atomic create (see its own tests for what it does)")
        results = race(lambda i: store.put_if_absent("race/key", f"writer-{i}".encode()))
        winners = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
        losers = [r for r in results if isinstance(r, Exception)]
        assert len(winners) == 1, f"{len(winners)} winners: {winners}"
        assert all(isinstance(r, AlreadyExistsError) for r in losers), losers
        assert store.get("race/key") == f"writer-{winners[0]}".encode()

    def test_narrow_protocols_match_capabilities(self, store: Store) -> None:
        for protocol in (Store, ReadRanges, List, Write, ConditionalWrite):
            assert isinstance(store, protocol), f"{store!r} is not a {protocol.__name__}"
        offers_cas = isinstance(store, CompareAndSwap)
        assert offers_cas is store.capabilities.compare_and_swap, (
            f"{store!r}: has put_if_match = {offers_cas}, declares compare_and_swap = "
            f"{store.capabilities.compare_and_swap}")
        assert hasattr(store, "put_if_match") is offers_cas

    def test_put_if_match(self, store: Store) -> None:
        if not isinstance(store, CompareAndSwap):
            assert not store.capabilities.compare_and_swap
            with pytest.raises(AttributeError):
                store.put_if_match("m", b"v2", "etag")  # type: ignore[attr-defined]
            return
        first = store.put("m", b"v1")
        assert first.etag is not None
        second = store.put_if_match("m", b"v2", first.etag)
        with pytest.raises(PreconditionFailedError):
            store.put_if_match("m", b"v3", first.etag)
        assert store.get("m") == b"v2"
        assert second.etag is not None
        store.put_if_match("m", b"v4", second.etag)
        assert store.get("m") == b"v4"
        with pytest.raises(NotFoundError):
            store.put_if_match("m-missing", b"x", first.etag)

    def test_put_if_match_race_has_one_winner(self, store: Store) -> None:
        if not isinstance(store, CompareAndSwap):
            pytest.skip("backend offers no compare-and-swap")
        etag = store.put("cas", b"base").etag
        assert etag is not None
        results = race(lambda i: store.put_if_match("cas", f"writer-{i}".encode(), etag))
        winners = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
        assert len(winners) == 1, f"{len(winners)} winners: {winners}"
        assert all(isinstance(r, PreconditionFailedError) for r in results if isinstance(r, Exception))
        assert store.get("cas") == f"writer-{winners[0]}".encode()

    def test_probe_matches_capabilities(self, store: Store) -> None:
        probe = probe_conditional_writes(store)
        caps = store.capabilities
        if caps.conditional_create_header:
            assert probe.create_enforced
        assert probe.match_enforced is (True if caps.compare_and_swap else None)
        assert list(store.list()) == []

    # -- keys and identity ---------------------------------------------------

    @pytest.mark.parametrize(
        "key", ["", "/abs", "../up", "a/../../b", "a//b", "a/./b", "a\\b", "tab\there", "x" * 2000]
    )
    def test_invalid_keys_rejected(self, store: Store, key: str) -> None:
        with pytest.raises(InvalidKeyError):
            store.put(key, b"x")
        with pytest.raises(InvalidKeyError):
            store.get(key)
        with pytest.raises(InvalidKeyError):
            store.delete(key)

    def test_unicode_keys(self, store: Store) -> None:
        store.put("unicode/détecteur ø 22", b"ok")
        assert store.get("unicode/détecteur ø 22") == b"ok"
        assert [m.key for m in store.list("unicode/")] == ["unicode/détecteur ø 22"]

    def test_pickles(self, store: Store) -> None:
        store.put("p", b"pickled")
        clone = pickle.loads(pickle.dumps(store))
        assert clone.uri == store.uri
        assert clone.get("p") == b"pickled"
