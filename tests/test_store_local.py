"""Local directory and in-memory stores through the shared conformance suite."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest

from objbutler.errors import NotSupportedError, StoreError
from objbutler.stores import open_store
from objbutler.stores.local import LocalStore
from objbutler.stores.memory import MemoryStore
from objbutler.testing.conformance import StoreConformanceTests


class TestLocalStore(StoreConformanceTests):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "root")


class TestMemoryStore(StoreConformanceTests):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore(uuid.uuid4().hex)


def test_open_store_schemes(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store(tmp_path.as_uri()), LocalStore)
    assert open_store(tmp_path.as_uri()).uri == tmp_path.as_uri()
    named = open_store("memory://shared-name")
    assert isinstance(named, MemoryStore)
    named.put("k", b"v")
    assert open_store("memory://shared-name").get("k") == b"v"
    with pytest.raises(NotSupportedError, match="unsupported"):
        open_store("ftp://host/x")


def test_local_get_ranges_leaves_no_open_descriptors(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("obj", os.urandom(10_000))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        store.get_ranges("obj", [(0, 10), (500, 900)])
        store.head("obj")
    assert len(os.listdir("/proc/self/fd")) == before


def test_local_temp_files_invisible_and_cleaned(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b", b"1")
    store.put_if_absent("a/c", b"2")
    with pytest.raises(FileExistsError):
        store.put_if_absent("a/c", b"3")
    assert sorted(os.listdir(tmp_path / "a")) == ["b", "c"]


def test_local_key_below_an_object_is_a_store_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a", b"1")
    with pytest.raises(StoreError):
        store.put("a/b", b"2")
    assert store.get("a") == b"1"


def test_put_survives_deletes_emptying_its_directory(tmp_path: Path) -> None:
    """A delete of a directory's last object removes the directory; a put racing it must still land."""
    store = LocalStore(tmp_path)
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn() -> None:
        name = f"d/e/other-{threading.get_ident()}"
        while not stop.is_set():
            try:
                store.put(name, b"x")
                store.delete(name)
            except BaseException as exc:
                errors.append(exc)
                return

    workers = [threading.Thread(target=churn) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        for n in range(5000):
            try:
                store.put(f"d/e/k{n}", b"payload")
                store.delete(f"d/e/k{n}")
            except BaseException as exc:
                errors.append(exc)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert errors == []
