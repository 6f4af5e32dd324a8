"""The read-through cache (CachingStore) and offline mode."""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
import time
from pathlib import Path
from typing import Any

import mixed_repo
import numpy as np
import pytest
from conftest import Backend
from objbutler_servers import start_localstack
from refusing_endpoint import RefusingEndpoint

from objbutler import Box, Butler
from objbutler.config import CONFIG_KEY
from objbutler.errors import OfflineError, TransientStoreError
from objbutler.registry.cache_policy import describe_key, repository_cache_policy
from objbutler.stores import RetryPolicy, open_store
from objbutler.stores.cache import CachePolicy, CachingStore, cache_settings, parse_size
from objbutler.stores.memory import MemoryStore
from objbutler.testing.faults import STORE_METHODS
from objbutler.testing.wrappers import CountingStore


class Unreachable:
    """A store that fails the test if anything but its name is asked for (it has every method, to call)."""

    uri = "s3://unreachable/repo"

    def __getattr__(self, name: str) -> Any:
        if name in STORE_METHODS:
            def call(*args: Any, **kwargs: Any) -> Any:
                raise AssertionError(f"offline mode called the server: {name}")

            return call
        raise AssertionError(f"offline mode asked the server for {name}")


POLICY = repository_cache_policy(CONFIG_KEY)


def cache_files(cache: Path) -> list[Path]:
    return [p for p in (cache / "objects-v1").rglob("*") if p.is_file() and p.parent.name != "objects-v1"]


# -- the store: what is served from where ---------------------------------------------------


def test_immutable_objects_come_from_the_cache_mutable_ones_from_the_server(tmp_path: Path) -> None:
    inner = CountingStore(MemoryStore())
    inner.put("data/r/t/x-1.fits", b"pixels")
    inner.put("objbutler.json", b"{}")
    cache = CachingStore(inner, tmp_path / "cache", policy=POLICY)
    for _ in range(3):
        assert cache.get("data/r/t/x-1.fits") == b"pixels"
        assert cache.get("objbutler.json") == b"{}"
    assert inner.calls["get"] == 4  # the data object once, the config every time
    assert cache.get_ranges("data/r/t/x-1.fits", [(1, 3), (4, 100), (50, 60)]) == [b"ix", b"ls", b""]
    assert inner.calls["get_ranges"] == 0
    assert cache.head("data/r/t/x-1.fits").size == 6 and inner.calls["head"] == 0
    assert cache.get_many(["data/r/t/x-1.fits", "objbutler.json"]) == [b"pixels", b"{}"]
    assert inner.requests_by_method["get_many"] == 1  # only the config


def test_the_policy_not_the_cache_decides_what_is_immutable(tmp_path: Path) -> None:
    """The cache knows no repository layout: without a policy nothing is served from disk online."""
    inner = CountingStore(MemoryStore())
    inner.put("data/r/t/x-1.fits", b"pixels")
    inner.put("blobs/b", b"blob")
    plain = CachingStore(inner, tmp_path / "cache")
    assert [plain.get("data/r/t/x-1.fits") for _ in range(2)] == [b"pixels", b"pixels"]
    assert inner.calls["get"] == 2  # no policy: every online read asks the server
    assert plain.is_cached("data/r/t/x-1.fits")  # ... and keeps the last copy for offline use
    blobs = CachingStore(inner, tmp_path / "cache2", policy=CachePolicy(immutable_prefixes=("blobs/",)))
    inner.reset()
    assert [blobs.get("blobs/b") for _ in range(3)] == [b"blob"] * 3
    assert [blobs.get("data/r/t/x-1.fits") for _ in range(2)] == [b"pixels"] * 2
    assert inner.calls["get"] == 3  # blobs/b once (then from disk), the data key every time


def test_range_reads_pass_through_until_the_object_is_cached(tmp_path: Path) -> None:
    inner = CountingStore(MemoryStore())
    inner.put("data/a.fits", bytes(range(200)))
    cache = CachingStore(inner, tmp_path / "cache", policy=POLICY)
    assert cache.get_ranges("data/a.fits", [(10, 12)]) == [bytes([10, 11])]
    assert inner.calls["get_ranges"] == 1 and not cache.is_cached("data/a.fits")
    filling = CachingStore(inner, tmp_path / "cache", fill_on_range_read=True, policy=POLICY)
    assert filling.get_ranges("data/a.fits", [(10, 12)]) == [bytes([10, 11])]
    assert cache.is_cached("data/a.fits") and inner.calls["get"] == 1
    assert cache.get_ranges("data/a.fits", [(0, 1)]) == [b"\x00"] and inner.calls["get_ranges"] == 1


def test_writes_go_to_the_server_and_drop_stale_copies(tmp_path: Path) -> None:
    inner = MemoryStore()
    cache = CachingStore(inner, tmp_path / "cache", policy=POLICY)
    cache.put("data/a", b"one")
    assert cache.get("data/a") == b"one"
    cache.put("data/a", b"two")  # e.g. a clone rerun replacing a half-copied object
    assert cache.get("data/a") == b"two"
    cache.delete("data/a")
    assert not cache.is_cached("data/a") and list(inner.list()) == []
    cache.put_if_absent("manifest/log/00000000000000000001.json", b"{}")
    assert cache.is_cached("manifest/log/00000000000000000001.json")  # own commits: a gap-free offline log


def test_offline_never_contacts_the_server(tmp_path: Path) -> None:
    online = CachingStore(MemoryStore(), tmp_path / "cache", policy=POLICY)
    online.inner.put("data/r/calexp/visit=1-abcd1234.fits", b"cached")
    online.inner.put("data/r/calexp/visit=2-abcd5678.fits", b"not cached")
    online.inner.put("manifest/log/00000000000000000001.json", b"{}")
    assert [m.key for m in online.list("manifest/log/")] == ["manifest/log/00000000000000000001.json"]
    online.get("data/r/calexp/visit=1-abcd1234.fits")
    online.get("manifest/log/00000000000000000001.json")
    store = CachingStore(online.inner, tmp_path / "cache", offline=True, policy=POLICY)
    store.inner = Unreachable()  # type: ignore[assignment]
    assert store.offline
    assert store.get("data/r/calexp/visit=1-abcd1234.fits") == b"cached"
    assert store.get_ranges("data/r/calexp/visit=1-abcd1234.fits", [(0, 3)]) == [b"cac"]
    assert [m.key for m in store.list("manifest/")] == ["manifest/log/00000000000000000001.json"]
    assert [m.key for m in store.list("data/", start_after="data/r/calexp/visit=1-abcd1234.fits")] == []
    with pytest.raises(OfflineError, match=r"calexp visit=2 in run 'r'"):
        store.get("data/r/calexp/visit=2-abcd5678.fits")
    with pytest.raises(OfflineError):
        store.get_ranges("data/r/calexp/visit=2-abcd5678.fits", [(0, 1)])
    with pytest.raises(OfflineError):
        store.get_many(["data/r/calexp/visit=1-abcd1234.fits", "data/r/calexp/visit=2-abcd5678.fits"])
    with pytest.raises(OfflineError):
        store.head("objbutler.json")
    for write in (lambda: store.put("data/x", b""), lambda: store.put_if_absent("data/x", b""),
                  lambda: store.put_if_match("data/x", b"", "etag"), lambda: store.delete("data/x")):
        with pytest.raises(OfflineError, match="write"):
            write()


def test_lru_eviction_keeps_the_cache_bounded(tmp_path: Path) -> None:
    inner = MemoryStore()
    for i in range(20):
        inner.put(f"data/{i:02d}", bytes([i]) * 1000)
    inner.put("manifest/log/00000000000000000001.json", b"x" * 1000)
    cache = CachingStore(inner, tmp_path / "cache", max_bytes=10_500, policy=POLICY)
    cache.get("manifest/log/00000000000000000001.json")
    for i in range(20):
        cache.get(f"data/{i:02d}")
        if i >= 3:
            cache.get("data/02")  # keep one old object in use
        time.sleep(0.002)
    assert cache.usage() <= 10_500
    kept = {i for i in range(20) if cache.is_cached(f"data/{i:02d}")}
    assert {2, 18, 19} <= kept and 0 not in kept and 1 not in kept
    assert cache.is_cached("manifest/log/00000000000000000001.json")  # registry objects go last
    cache.evict(target=0)
    assert cache.usage() < 1000  # only store.json is left


def test_describe_key_names_the_dataset() -> None:
    assert describe_key("data/u/me/run1/calexp/detector=22,visit=9-0a1b2c3d.zarr/c/0/1") == (
        "dataset calexp detector=22,visit=9 in run 'u/me/run1' (data/u/me/run1/calexp/detector=22,visit=9-0a1b2c3d"
        ".zarr/c/0/1)")
    assert describe_key("objbutler.json") == "'objbutler.json'"


def test_settings_from_arguments_and_environment(tmp_path: Path) -> None:
    assert cache_settings(None, None, {}) == (None, False, cache_settings(None, None, {})[2])
    assert cache_settings(str(tmp_path), None, {})[:2] == (tmp_path, False)  # a cache alone never goes offline
    assert cache_settings(str(tmp_path), None, {"OBJBUTLER_OFFLINE": "auto"})[:2] == (tmp_path, "auto")
    assert cache_settings(str(tmp_path), "auto", {})[:2] == (tmp_path, "auto")
    with pytest.raises(ValueError, match="auto"):
        cache_settings(False, "auto", {})
    with pytest.raises(ValueError, match="offline must be"):
        cache_settings(str(tmp_path), "sometimes", {})  # type: ignore[arg-type]
    assert cache_settings(None, None, {"OBJBUTLER_CACHE": str(tmp_path)})[:2] == (tmp_path, False)
    assert cache_settings(None, None, {"OBJBUTLER_OFFLINE": "1"})[:2] == (Path("~/.cache/objbutler").expanduser(),
                                                                        True)
    assert cache_settings(False, None, {"OBJBUTLER_CACHE": str(tmp_path)})[0] is None
    assert cache_settings(str(tmp_path), None, {"OBJBUTLER_CACHE_SIZE": "2G"})[2] == 2 * 2**30
    with pytest.raises(ValueError):
        cache_settings(False, True, {})
    assert parse_size("500M") == 500 * 2**20 and parse_size("1GiB") == 2**30 and parse_size("1234") == 1234


def test_a_repository_recreated_at_the_same_uri_is_not_served_stale(tmp_path: Path) -> None:
    import shutil

    old = Butler.create(str(tmp_path / "repo"))
    old_ref = old.put({"generation": 1}, "metric", {"visit": 1}, run="r")
    cached = Butler(str(tmp_path / "repo"), cache=tmp_path / "cache")
    assert cached.get(old_ref) == {"generation": 1}
    shutil.rmtree(tmp_path / "repo")
    new = Butler.create(str(tmp_path / "repo"))  # same URI, same log entry names, other bytes
    new_ref = new.put({"generation": 2}, "metric", {"visit": 1}, run="r")
    again = Butler(str(tmp_path / "repo"), cache=tmp_path / "cache")
    assert [r.id for r in again.query()] == [new_ref.id]
    assert again.get("metric", {"visit": 1}, run="r") == {"generation": 2}
    offline = Butler(str(tmp_path / "repo"), cache=tmp_path / "cache", offline=True)
    assert [r.id for r in offline.query()] == [new_ref.id]


# -- the Butler with a cache ---------------------------------------------------------------------


def test_butler_cached_cutouts_are_served_from_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = Butler.create(str(tmp_path / "repo"))
    refs = mixed_repo.fill(source, 3)
    counting = CountingStore(open_store(str(tmp_path / "repo")))
    butler = Butler(str(tmp_path / "repo"), store=counting, cache=tmp_path / "cache")
    fits_ref, zarr_ref = refs[0], refs[1]
    for ref in (fits_ref, zarr_ref):
        whole = butler.get(ref).data
        counting.reset()
        stamps = butler.get_cutouts(ref, mixed_repo.BOXES, mode="partial", fill_value=0.0)
        assert counting.requests_by_method.keys() <= {"list"}  # only the registry refresh asks the server
        assert np.array_equal(stamps[1].data, whole[30:62, 40:72])
    monkeypatch.setenv("OBJBUTLER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OBJBUTLER_OFFLINE", "1")
    offline = Butler(str(tmp_path / "repo"))
    assert isinstance(offline.store, CachingStore) and offline.store.offline
    assert np.array_equal(offline.get_cutouts(zarr_ref, [Box(0, 0, 5, 5)])[0].data,
                          source.get_cutouts(zarr_ref, [Box(0, 0, 5, 5)])[0].data)
    clone = pickle.loads(pickle.dumps(offline))
    assert isinstance(clone.store, CachingStore) and clone.store.offline


class FailingReads:
    """Answer reads as a server answering 503 does (TransientStoreError after the retries), when ``failing``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failing = False
        self.failed: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in ("get", "get_ranges", "get_many", "head", "list"):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.failing:
                self.failed.append(name)
                raise TransientStoreError(f"S3 read of {args[0] if args else ''!r} failed: 503 ServiceUnavailable")
            return attribute(*args, **kwargs)

        return call


def test_a_5xx_on_the_registry_read_raises_by_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cached registry may lack commits that finished: by default a failing server is an error, not a stale answer."""
    source = Butler.create(str(tmp_path / "repo"))
    first = source.put({"n": 1}, "metric", {"visit": 1}, run="r")
    server = FailingReads(open_store(str(tmp_path / "repo")))
    butler = Butler(str(tmp_path / "repo"), store=server, cache=tmp_path / "cache")  # type: ignore[arg-type]
    assert [r.id for r in butler.query()] == [first.id]  # the registry is now in the cache
    assert butler.get(first) == {"n": 1}  # and so is the dataset
    second = source.put({"n": 2}, "metric", {"visit": 2}, run="r")  # a commit the cache has not seen
    server.failing = True
    for read in (butler.query, lambda: butler.get("metric", {"visit": 2}, run="r"),
                 lambda: Butler(str(tmp_path / "repo"), store=server, cache=tmp_path / "cache")):
        with pytest.raises(TransientStoreError, match="503"):
            read()  # type: ignore[operator]
    assert butler.get(first) == {"n": 1}  # a cached data object needs no server (it is immutable)
    assert not butler.store.offline  # type: ignore[attr-defined]
    assert "manifest" not in caplog.text
    # Opted in: the same failure answers from the cache, without the commit it has not seen, and says so.
    auto = Butler(str(tmp_path / "repo"), store=server, cache=tmp_path / "cache", offline="auto")  # type: ignore[arg-type]
    assert auto.store.offline  # type: ignore[attr-defined]
    assert [r.id for r in auto.query()] == [first.id] != [first.id, second.id]
    assert auto.get(first) == {"n": 1}
    assert "serving cached objects only" in caplog.text
    server.failing = False
    assert [r.id for r in butler.query()] == [first.id, second.id]


def test_offline_with_no_cached_repository_says_so(tmp_path: Path) -> None:
    Butler.create(str(tmp_path / "repo"))
    with pytest.raises(OfflineError, match=r"objbutler\.json"):
        Butler(str(tmp_path / "repo"), cache=tmp_path / "cache", offline=True)


@pytest.mark.servers
@pytest.mark.slow
def test_offline_with_the_server_stopped(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with start_localstack() as server:  # our own server, so stopping it leaves the shared one alone
        uri, options = mixed_repo.s3_repo_uri(server.info)
        source = Butler.create(uri, **options)
        refs = mixed_repo.fill(source, 9)
        cached, uncached = refs[:6], refs[6:]
        butler = Butler(uri, cache=cache, **options)
        expected_query = sorted(r.id for r in butler.query())
        expected = {}
        for ref in cached:
            got = butler.get(ref)
            if ref.format == "json":
                expected[ref.id] = (got, None)
            else:
                stamps = butler.get_cutouts(ref, mixed_repo.BOXES, mode="partial", fill_value=-1.0)
                expected[ref.id] = (got.data, [s.data for s in stamps])
    # The server is gone. Explicit offline mode: nothing is attempted.
    offline = Butler(uri, cache=cache, offline=True, **options)
    assert sorted(r.id for r in offline.query()) == expected_query
    assert [r.id for r in offline.query("calexp", where={"detector": 0})] == [
        r.id for r in refs if r.dataset_type == "calexp" and r.data_id["detector"] == 0]
    for ref in cached:
        got = offline.get(ref)
        if ref.format == "json":
            assert got == expected[ref.id][0]
            continue
        assert np.array_equal(got.data, expected[ref.id][0])
        stamps = offline.get_cutouts(ref, mixed_repo.BOXES, mode="partial", fill_value=-1.0)
        assert all(np.array_equal(a.data, b) for a, b in zip(stamps, expected[ref.id][1], strict=True))
    for ref in uncached:
        with pytest.raises(OfflineError, match=f"{ref.dataset_type} .* in run 'run1'"):
            offline.get(ref)
    with pytest.raises(OfflineError, match="write"):
        offline.put({"new": 1}, "metric", {"visit": 1}, run="run1")
    # Not told to be offline: the failure is an error, not a silent switch to the cache.
    with pytest.raises(TransientStoreError):
        Butler(uri, cache=cache, **options)
    # offline="auto": the first failed call switches to the cache; later calls do not knock again.
    # Something listens where the server was and drops every connection, counting them.
    with RefusingEndpoint(options["endpoint_url"]) as dead:
        auto = Butler(uri, cache=cache, offline="auto", **options)
        assert dead.connections >= 1  # it did try the server first
        tried = dead.connections
        assert tried <= RetryPolicy().attempts * 4  # one call's retries (botocore's own included), no more
        assert sorted(r.id for r in auto.query()) == expected_query
        assert auto.store.offline  # type: ignore[attr-defined]
        first = auto.get(cached[0])
        assert (first == expected[cached[0].id][0]) if cached[0].format == "json" else \
            np.array_equal(first.data, expected[cached[0].id][0])
        with pytest.raises(OfflineError, match="server failed"):
            auto.get(uncached[0])
        assert dead.connections == tried


@pytest.mark.servers
def test_timestamped_log_offline_keeps_the_server_order(swift_backend: Backend, tmp_path: Path) -> None:
    uri = swift_backend.new_uri()
    source = Butler.create(uri, **swift_backend.options)
    put = [source.put({"n": n}, "metric", {"visit": n}, run="r").id for n in range(5)]
    online = Butler(uri, cache=tmp_path / "cache", **swift_backend.options)
    assert [r.id for r in online.query()] == put  # log order = server time order, whatever the keys
    assert online.get("metric", {"visit": 3}, run="r") == {"n": 3}
    offline = Butler(uri, cache=tmp_path / "cache", offline=True, **swift_backend.options)
    assert [r.id for r in offline.query()] == put
    assert offline.get("metric", {"visit": 3}, run="r") == {"n": 3}


# -- several processes share one cache -------------------------------------------------------------


def _reader(inner_root: str, cache_dir: str, keys: list[str], seed: int, rounds: int) -> list[str]:
    store = CachingStore(open_store(inner_root), cache_dir, max_bytes=300_000, policy=POLICY)
    rng = np.random.default_rng(seed)
    bad = []
    for _ in range(rounds):
        for key in rng.permutation(keys):
            data = store.get(str(key))
            if hashlib.sha256(data).hexdigest() != Path(inner_root, str(key)).name.split("-")[1]:
                bad.append(str(key))
            part = store.get_ranges(str(key), [(0, 16)])[0]
            if part != data[:16]:
                bad.append(f"range {key}")
    return bad


def test_two_processes_fill_one_cache_without_corruption(tmp_path: Path) -> None:
    inner = open_store(str(tmp_path / "remote"))
    rng = np.random.default_rng(0)
    keys = []
    for i in range(60):
        data = rng.bytes(int(rng.integers(1, 20_000)))
        key = f"data/r/t/{i:03d}-{hashlib.sha256(data).hexdigest()}"
        inner.put(key, data)
        keys.append(key)
    cache_dir = str(tmp_path / "cache")
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = pool.starmap(_reader, [(str(tmp_path / "remote"), cache_dir, keys, seed, 4) for seed in (1, 2)])
    assert results == [[], []]
    files = cache_files(Path(cache_dir))
    assert files, "nothing was cached"
    for path in files:
        if path.name in ("store.json", ".evict.lock"):
            continue
        assert not path.name.startswith(".objbutler-tmp-"), f"temporary file left behind: {path}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name.split("-")[1], f"corrupt {path}"
    again = CachingStore(inner, cache_dir, max_bytes=300_000, policy=POLICY)
    assert again.usage() <= 2 * 300_000  # each process re-measures
