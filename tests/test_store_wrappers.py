"""Store wrappers: the conformance suite through each, one forwarding base, members only where inner has them.

The wrappers run around real stores: the testing wrappers (no faults) around
memory stores, CachingStore around a local directory (S3 and Swift: in
test_store_s3.py and test_store_swift.py). The narrow protocols are checked
against every backend by the suite itself (``test_narrow_protocols_match_capabilities``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import objbutler
from objbutler.errors import NotFoundError
from objbutler.stores import (
    CompareAndSwap,
    ConditionalWrite,
    List,
    ReadRanges,
    Store,
    StoreCapabilities,
    StoreWrapper,
    Write,
)
from objbutler.stores.cache import CachePolicy, CachingStore
from objbutler.stores.local import LocalStore
from objbutler.stores.memory import MemoryStore
from objbutler.testing.conformance import WRITE_ONCE_PREFIXES, StoreConformanceTests
from objbutler.testing.faults import FailingWritesStore, FastClockStore, FaultyStore, IgnoresConditionsStore
from objbutler.testing.wrappers import CountingStore


def never(method: str, key: str) -> bool:
    """A FailingWritesStore predicate that picks nothing (module level, so the wrapper pickles)."""
    return False


TESTING_WRAPPERS: dict[str, Callable[[Store], Store]] = {
    "counting": CountingStore,
    "faulty-no-plan": FaultyStore,
    "fast-clock": FastClockStore,
    "failing-writes-never": lambda inner: FailingWritesStore(inner, never),
}
"""The testing wrappers with no faults. IgnoresConditionsStore is left out: ignoring conditions *is* its fault."""

CACHE_POLICIES: dict[str, dict[str, Any]] = {
    "no-policy": {},
    "write-once-keys": {"policy": CachePolicy(immutable_prefixes=WRITE_ONCE_PREFIXES)},
    "write-once-keys-fill-on-range-read": {"policy": CachePolicy(immutable_prefixes=WRITE_ONCE_PREFIXES),
                                           "fill_on_range_read": True},
}


# -- the conformance suite through every wrapper -------------------------------------------------


class TestTestingWrappers(StoreConformanceTests):
    large_object_size = 16 * 1024 * 1024

    @pytest.fixture(params=sorted(TESTING_WRAPPERS))
    def store(self, request: pytest.FixtureRequest) -> Store:
        return TESTING_WRAPPERS[request.param](MemoryStore(uuid.uuid4().hex))


class TestCachingStoreLocal(StoreConformanceTests):
    @pytest.fixture(params=sorted(CACHE_POLICIES))
    def store(self, request: pytest.FixtureRequest, tmp_path: Path) -> CachingStore:
        return CachingStore(LocalStore(tmp_path / "root"), tmp_path / "cache", **CACHE_POLICIES[request.param])


def test_the_write_once_cache_serves_the_suites_keys_from_disk(tmp_path: Path) -> None:
    """The conformance runs above do exercise the cache: a write-once key is read from the server once."""
    inner = CountingStore(LocalStore(tmp_path / "root"))
    cache = CachingStore(inner, tmp_path / "cache", **CACHE_POLICIES["write-once-keys"])
    cache.put("obj/1", b"x")
    assert [cache.get("obj/1") for _ in range(3)] == [b"x"] * 3
    assert inner.calls["get"] == 1


# -- one forwarding base ---------------------------------------------------------------------------


def _package_classes() -> Iterator[type]:
    for info in pkgutil.walk_packages(objbutler.__path__, "objbutler."):
        module = importlib.import_module(info.name)
        for _name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__:
                yield value


def _wraps_a_store(cls: type) -> bool:
    """A class whose constructor's first argument is ``inner`` (the convention every store wrapper follows)."""
    try:
        parameters = list(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        return False
    return parameters[1:2] == ["inner"]


def test_every_store_wrapper_subclasses_the_forwarding_base() -> None:
    wrappers = {cls for cls in _package_classes() if _wraps_a_store(cls)}
    known = {CachingStore, CountingStore, FaultyStore, FastClockStore, FailingWritesStore, IgnoresConditionsStore}
    assert known <= wrappers  # the walk sees them all
    assert [cls.__qualname__ for cls in wrappers if not issubclass(cls, StoreWrapper)] == []


SWIFT_LIKE = StoreCapabilities(atomic_create=False, compare_and_swap=False, conditional_create_header=True,
                               server_timestamps=True)
NoCompareAndSwap: Callable[[], Store] = type("NoCompareAndSwap", (), {
    **{name: value for name, value in vars(MemoryStore).items()
       if name not in ("put_if_match", "__reduce__", "__dict__", "__weakref__")},
    "capabilities": SWIFT_LIKE,
})
"""A memory store without put_if_match, shaped like Swift (a real Swift is in test_store_swift.py)."""


ALL_WRAPPERS: dict[str, Callable[[Store], Store]] = {
    **TESTING_WRAPPERS,
    "ignores-conditions": IgnoresConditionsStore,
    "caching": lambda inner: CachingStore(inner, Path("/nonexistent-objbutler-cache")),
}


@pytest.mark.parametrize("name", sorted(ALL_WRAPPERS))
def test_a_wrapper_has_put_if_match_exactly_when_its_inner_store_does(name: str, tmp_path: Path) -> None:
    make = ALL_WRAPPERS[name]
    if name == "caching":
        make = lambda inner: CachingStore(inner, tmp_path / "cache")  # noqa: E731
    without = make(NoCompareAndSwap())
    assert isinstance(without, ReadRanges) and isinstance(without, List) and isinstance(without, Write)
    assert isinstance(without, ConditionalWrite) and isinstance(without, Store)
    assert not isinstance(without, CompareAndSwap) and not hasattr(without, "put_if_match")
    with pytest.raises(AttributeError, match="put_if_match"):
        without.put_if_match("k", b"x", "etag")  # type: ignore[attr-defined]
    nested = make(CountingStore(NoCompareAndSwap()))  # through another wrapper too
    assert not isinstance(nested, CompareAndSwap)
    with_cas = make(MemoryStore(uuid.uuid4().hex))
    assert isinstance(with_cas, CompareAndSwap)
    etag = with_cas.put("k", b"v1").etag
    assert etag is not None
    with_cas.put_if_match("k", b"v2", etag)
    assert with_cas.get("k") == b"v2"


def test_a_subclass_overrides_only_what_it_changes() -> None:
    class Uppercase(StoreWrapper):
        def get(self, key: str) -> bytes:
            return super().get(key).upper()

    inner = MemoryStore(uuid.uuid4().hex)
    store = Uppercase(inner)
    store.put("k", b"abc")
    assert store.get("k") == b"ABC" and inner.get("k") == b"abc"
    assert store.get_ranges("k", [(1, 2)]) == [b"b"]  # forwarded untouched
    assert isinstance(store, CompareAndSwap) and store.capabilities == inner.capabilities
    store.delete("k")
    with pytest.raises(NotFoundError):
        inner.get("k")


class _BulkDeletes(MemoryStore):
    """A memory store with S3's ``DeleteObjects``: counts its batches."""

    batches = 0

    def delete_many(self, keys: Any) -> None:
        type(self).batches += 1
        for key in keys:
            self.delete(key)


@pytest.mark.parametrize("name", sorted(ALL_WRAPPERS))
def test_bulk_deletes_through_a_wrapper_go_through_its_own_delete(name: str, tmp_path: Path) -> None:
    """``delete_keys`` sends one ``delete_many`` to a store that has it. A wrapper used to take it from its
    inner store, so a batch of deletes on S3 skipped the wrapper: no fault was injected, nothing was
    counted, no cache entry dropped (compaction's deletes and checkpoint retention on LocalStack)."""
    from objbutler.stores import DeleteMany, delete_keys

    make = ALL_WRAPPERS[name]
    if name == "caching":
        make = lambda inner: CachingStore(inner, tmp_path / "cache")  # noqa: E731
    inner = _BulkDeletes(uuid.uuid4().hex)
    assert isinstance(inner, DeleteMany)
    wrapper = make(inner)
    assert not isinstance(wrapper, DeleteMany)
    seen: list[str] = []
    delete = wrapper.delete

    def watched(key: str) -> None:
        seen.append(key)
        delete(key)

    wrapper.delete = watched  # type: ignore[method-assign]
    for key in ("a", "b", "c"):
        inner.put(key, b"x")
    delete_keys(wrapper, ["a", "b", "c"])
    assert sorted(seen) == ["a", "b", "c"] and _BulkDeletes.batches == 0
    assert list(inner.list()) == []
