"""SwiftStore: the conformance suite on a real single-node Swift, plus Swift-specific behaviour.

Error translation, retries and connection handling are tested against a tiny
scripted HTTP server on 127.0.0.1 (:class:`remote_store_helpers.ScriptedServer`)
that speaks v1 auth and then answers what each test tells it to, so the real
swiftclient, the real translation and the real retry loop run end to end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import remote_store_helpers as remote
from objbutler_servers import ServerInfo
from remote_store_helpers import FAST_RETRY, Answer, ScriptedServer, Seen

from objbutler.errors import (
    AlreadyExistsError,
    NotFoundError,
    StoreError,
    TransientStoreError,
)
from objbutler.stores import CompareAndSwap, ConditionalWrite, RetryPolicy, Store, open_store
from objbutler.stores.cache import CachingStore
from objbutler.stores.swift import SwiftStore, _timestamp
from objbutler.testing.conformance import StoreConformanceTests, race, write_once_cache
from objbutler.testing.faults import FastClockStore, FaultyStore
from objbutler.testing.wrappers import CountingStore


def _store_for(server: ServerInfo, container: str, prefix: str, **options: object) -> SwiftStore:
    env = server.env
    return SwiftStore(
        container,
        prefix,
        auth_url=env["ST_AUTH"],
        user=env["ST_USER"],
        key=env["ST_KEY"],
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def swift_container(swift_server: ServerInfo) -> str:
    container = f"objbutler-test-{uuid.uuid4().hex[:12]}"
    list(_store_for(swift_server, container, "", create_container=True).list())
    return container


@pytest.fixture
def swift_store(swift_server: ServerInfo, swift_container: str) -> SwiftStore:
    return _store_for(swift_server, swift_container, f"s/{uuid.uuid4().hex}")


# -- the shared conformance suite ----------------------------------------------------------


@pytest.mark.servers
class TestSwiftStore(StoreConformanceTests):
    many_keys = 2_500

    @pytest.fixture
    def store(self, swift_server: ServerInfo, swift_container: str) -> SwiftStore:
        return _store_for(swift_server, swift_container, f"t/{uuid.uuid4().hex}")


@pytest.mark.servers
class TestCachingStoreSwift(StoreConformanceTests):
    """CachingStore around Swift: the wrapper, like Swift, has no put_if_match."""

    @pytest.fixture
    def store(self, swift_server: ServerInfo, swift_container: str, tmp_path: Path) -> CachingStore:
        return write_once_cache(_store_for(swift_server, swift_container, f"c/{uuid.uuid4().hex}"),
                                tmp_path / "cache")


# -- what Swift does and does not promise ----------------------------------------------------


def test_capabilities_declare_no_atomicity() -> None:
    caps = SwiftStore.capabilities
    assert (caps.atomic_create, caps.compare_and_swap, caps.conditional_create_header, caps.server_timestamps) == (
        False,
        False,
        True,
        True,
    )


@pytest.mark.servers
def test_concurrent_creates_lose_cleanly(swift_store: SwiftStore) -> None:
    # Not atomic: several racers may win, but every loser gets AlreadyExistsError,
    # and the object ends up holding one winner's bytes.
    results = race(lambda i: swift_store.put_if_absent("race", f"writer-{i}".encode()))
    winners = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    assert winners
    assert all(isinstance(r, AlreadyExistsError) for r in results if isinstance(r, Exception))
    assert swift_store.get("race") in {f"writer-{i}".encode() for i in winners}


@pytest.mark.servers
def test_timestamps_are_exact_and_ordered(swift_store: SwiftStore) -> None:
    keys = [f"log/{i:03d}" for i in range(5)]
    for key in keys:
        swift_store.put_if_absent(key, key.encode())
    heads = [swift_store.head(key) for key in keys]
    listed = {m.key: m for m in swift_store.list("log/")}
    stamps = [h.last_modified for h in heads]
    assert all(s is not None and s.tzinfo is not None for s in stamps)
    assert stamps == sorted(stamps)  # type: ignore[type-var]
    assert len(set(stamps)) == len(stamps)
    assert [listed[k].last_modified for k in keys] == stamps  # listing and HEAD agree to the microsecond
    now = dt.datetime.now(dt.UTC)
    assert all(abs((now - s).total_seconds()) < 300 for s in stamps if s is not None)


def test_x_timestamp_parsing_is_exact() -> None:
    assert _timestamp("1795667952.15510") == dt.datetime(2026, 11, 26, 4, 39, 12, 155100, tzinfo=dt.UTC)
    assert _timestamp("1795667952.00001") - _timestamp("1795667952.00000") == dt.timedelta(microseconds=10)
    assert _timestamp("1795667952.15510_0000000000000001") == _timestamp("1795667952.15510")
    assert _timestamp("1795667952") == dt.datetime(2026, 11, 26, 4, 39, 12, tzinfo=dt.UTC)


@pytest.mark.servers
def test_swift_ignores_if_match_so_the_store_has_no_put_if_match(swift_store: SwiftStore) -> None:
    swift_store.put("m", b"v1")
    assert not isinstance(swift_store, CompareAndSwap)
    assert isinstance(swift_store, ConditionalWrite)  # put_if_absent: checked, one writer at a time
    with pytest.raises(AttributeError):
        swift_store.put_if_match("m", b"v2", "etag")  # type: ignore[attr-defined]
    assert swift_store.get("m") == b"v1"


@pytest.mark.servers
def test_pickle_round_trip_without_connections(swift_store: SwiftStore) -> None:
    swift_store.put("p", b"payload")
    assert swift_store._idle
    clone = remote.assert_pickles_as_arguments(swift_store, b"swiftclient")
    assert clone._idle == [] and clone._token is None
    assert clone.get("p") == b"payload"


@pytest.mark.servers
def test_missing_container(swift_server: ServerInfo) -> None:
    store = _store_for(swift_server, "objbutler-no-such-container", "p")
    with pytest.raises(NotFoundError, match="container 'objbutler-no-such-container' does not exist"):
        list(store.list())
    with pytest.raises(NotFoundError):
        store.get("k")
    store.delete("k")  # nothing there: not an error


@pytest.mark.servers
def test_bad_credentials_are_not_retried(swift_server: ServerInfo) -> None:
    store = SwiftStore("c", auth_url=swift_server.env["ST_AUTH"], user="test:tester", key="wrong", retry=FAST_RETRY)
    with pytest.raises(StoreError, match="authentication") as info:
        store.get("k")
    assert not isinstance(info.value, TransientStoreError)


@pytest.fixture
def swift_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with no Swift or OpenStack variables but what each test sets."""
    return remote.clear_environment(monkeypatch, "ST_", "OS_")


@pytest.mark.servers
def test_configuration_from_st_variables(swift_env: pytest.MonkeyPatch, swift_server: ServerInfo) -> None:
    for name, value in swift_server.env.items():
        swift_env.setenv(name, value)
    container = f"objbutler-env-{uuid.uuid4().hex[:8]}"
    store = open_store(f"swift://{container}/repo", create_container=True)
    assert isinstance(store, SwiftStore)
    assert store.uri == f"swift://{container}/repo"
    store.put("k", b"from env")
    assert store.get("k") == b"from env"


@pytest.mark.servers
def test_explicit_options_win_over_environment(
    swift_env: pytest.MonkeyPatch, swift_server: ServerInfo, swift_container: str
) -> None:
    swift_env.setenv("ST_AUTH", "http://127.0.0.1:9/auth/v1.0")
    swift_env.setenv("ST_USER", "nobody:none")
    swift_env.setenv("ST_KEY", "wrong")
    store = _store_for(swift_server, swift_container, f"e/{uuid.uuid4().hex}", retry=FAST_RETRY)
    store.put("k", b"explicit")
    assert store.get("k") == b"explicit"


def test_os_variables_mean_keystone_v3(swift_env: pytest.MonkeyPatch) -> None:
    swift_env.setenv("OS_AUTH_URL", "http://127.0.0.1:5000/v3")
    swift_env.setenv("OS_USERNAME", "astro")
    swift_env.setenv("OS_PASSWORD", "secret")
    swift_env.setenv("OS_PROJECT_NAME", "survey")
    swift_env.setenv("OS_USER_DOMAIN_NAME", "Default")
    swift_env.setenv("OS_PROJECT_DOMAIN_NAME", "Default")
    swift_env.setenv("OS_REGION_NAME", "RegionOne")
    settings = SwiftStore("c")._settings()
    assert (settings["authurl"], settings["user"], settings["key"], settings["auth_version"]) == (
        "http://127.0.0.1:5000/v3",
        "astro",
        "secret",
        "3",
    )
    assert settings["os_options"] == {
        "project_name": "survey",
        "user_domain_name": "Default",
        "project_domain_name": "Default",
        "region_name": "RegionOne",
    }
    assert settings["retries"] == 0
    # ST_* variables, when all three are set, mean v1 auth (as in swiftclient's CLI).
    swift_env.setenv("ST_AUTH", "http://127.0.0.1:8080/auth/v1.0")
    swift_env.setenv("ST_USER", "a:b")
    swift_env.setenv("ST_KEY", "k")
    settings = SwiftStore("c")._settings()
    assert (settings["authurl"], settings["user"], settings["auth_version"]) == (
        "http://127.0.0.1:8080/auth/v1.0",
        "a:b",
        "1.0",
    )
    # Explicit options win over both.
    settings = SwiftStore(
        "c", auth_url="http://127.0.0.1:1/v3", user="u", key="p", auth_version="3", os_options={"project_name": "p2"}
    )._settings()
    assert (
        settings["authurl"],
        settings["user"],
        settings["key"],
        settings["auth_version"],
        settings["os_options"],
    ) == ("http://127.0.0.1:1/v3", "u", "p", "3", {"project_name": "p2"})


def test_no_credentials_is_a_clear_error(swift_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(StoreError, match="ST_AUTH"):
        SwiftStore("c").get("k")


# -- a scripted Swift endpoint ---------------------------------------------------------------


class ScriptedSwift(ScriptedServer):
    """The scripted server as a Swift proxy with v1 auth (``auths`` counts the authentications)."""

    def __init__(self) -> None:
        self.auths = 0
        super().__init__()

    def unscripted(self, seen: Seen) -> Answer | None:
        if seen.path != "/auth/v1.0":
            return None
        with self._lock:
            self.auths += 1
        time.sleep(0.01)
        return Answer(200, headers={"X-Storage-Url": f"{self.endpoint}/v1/AUTH_test", "X-Auth-Token": "AUTH_tk1"})

    def store(self, **options: Any) -> SwiftStore:
        opts: dict[str, Any] = {"retry": FAST_RETRY, **options}
        return SwiftStore("cont", "pre", auth_url=f"{self.endpoint}/auth/v1.0", user="t:t", key="k", **opts)


@pytest.fixture
def scripted() -> Iterator[ScriptedSwift]:
    with ScriptedSwift() as server:
        yield server


def test_503_then_200_is_retried(scripted: ScriptedSwift) -> None:
    scripted.script = [Answer(503), Answer(200, b"hello")]
    assert scripted.store().get("k") == b"hello"
    assert [(s.method, s.path) for s in scripted.seen] == [("GET", "/v1/AUTH_test/cont/pre/k")] * 2
    assert scripted.seen[0].headers["x-auth-token"] == "AUTH_tk1"


@pytest.mark.parametrize("status", [500, 503, 507, 408, 422])
def test_transient_answers_exhaust_the_retry_policy(scripted: ScriptedSwift, status: int) -> None:
    remote.assert_retried_until_exhausted(scripted, Answer(status), lambda store: store.put("k", b"x"))


@pytest.mark.parametrize("status", [400, 403, 405])
def test_4xx_is_final_and_not_retried(scripted: ScriptedSwift, status: int) -> None:
    remote.assert_not_retried(scripted, Answer(status), lambda store: store.get("k"))


def test_expired_token_reauthenticates_once(scripted: ScriptedSwift) -> None:
    scripted.script = [Answer(401), Answer(200, b"ok")]
    assert scripted.store().get("k") == b"ok"
    assert scripted.auths == 2
    assert len(scripted.seen) == 2


def test_unreachable_endpoint_is_transient() -> None:
    port = remote.closed_port()
    store = SwiftStore(
        "c",
        auth_url=f"http://127.0.0.1:{port}/auth/v1.0",
        user="a:b",
        key="k",
        retry=RetryPolicy(attempts=2, base_delay=0.0),
    )
    with pytest.raises(TransientStoreError):
        store.get("k")


def test_create_sends_if_none_match_and_412_means_exists(scripted: ScriptedSwift) -> None:
    digest = hashlib.md5(b"data").hexdigest()
    scripted.script = [Answer(201, headers={"Etag": digest}), Answer(412)]
    store = scripted.store()
    assert store.put_if_absent("k", b"data").etag == digest
    with pytest.raises(AlreadyExistsError):
        store.put_if_absent("k", b"data")
    assert [s.headers.get("if-none-match") for s in scripted.seen] == ["*", "*"]
    assert [s.headers.get("etag") for s in scripted.seen] == [digest, digest]  # the server verifies the body
    assert len(scripted.seen) == 2


def test_lost_answer_to_a_create_that_landed(scripted: ScriptedSwift) -> None:
    data = b"commit 12"
    digest = hashlib.md5(data).hexdigest()
    head = Answer(200, headers={"Etag": digest, "Content-Length": str(len(data)), "X-Timestamp": "1795667952.15510"})
    meta = remote.assert_lost_create_recovered(scripted, "log/12", data, Answer(503), Answer(412), head)
    assert (meta.etag, meta.size) == (digest, len(data))
    assert meta.last_modified == _timestamp("1795667952.15510")


def test_no_put_if_match_and_nothing_sent(scripted: ScriptedSwift, tmp_path: Path) -> None:
    store = scripted.store()
    assert not hasattr(store, "put_if_match")
    wrappers = [CountingStore(store), FaultyStore(store), FastClockStore(store), CachingStore(store, tmp_path / "c"),
                FaultyStore(CachingStore(CountingStore(store), tmp_path / "c"))]
    for wrapper in wrappers:
        assert isinstance(wrapper, Store) and isinstance(wrapper, ConditionalWrite), wrapper
        assert not isinstance(wrapper, CompareAndSwap) and not hasattr(wrapper, "put_if_match"), wrapper
    assert scripted.seen == [] and scripted.auths == 0


def test_ranges_and_416(scripted: ScriptedSwift) -> None:
    def answer(seen: Seen) -> Answer:
        if seen.headers["range"] == "bytes=100-109":
            return Answer(416)
        return Answer(206, b"234", {"Content-Range": "bytes 2-4/10"})

    scripted.default = answer
    assert scripted.store().get_ranges("k", [(2, 5), (100, 110), (3, 3)]) == [b"234", b"", b""]
    assert sorted(s.headers["range"] for s in scripted.seen) == ["bytes=100-109", "bytes=2-4"]


def test_head_reads_x_timestamp(scripted: ScriptedSwift) -> None:
    scripted.script = [Answer(200, headers={"Content-Length": "10", "Etag": "abc", "X-Timestamp": "1795667952.00010"})]
    meta = scripted.store().head("k")
    assert (meta.size, meta.etag) == (10, "abc")
    assert meta.last_modified == dt.datetime(2026, 11, 26, 4, 39, 12, 100, tzinfo=dt.UTC)


def test_listing_pages_with_marker(scripted: ScriptedSwift) -> None:
    import json
    import urllib.parse

    names = [f"pre/k{i:04d}" for i in range(25)]

    def answer(seen: Seen) -> Answer:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(seen.path).query)
        marker = query.get("marker", [""])[0]
        page = [n for n in names if n > marker][:10]  # a server whose page size is 10
        items = [{"name": n, "bytes": 1, "hash": "h", "last_modified": "2026-11-26T04:39:12.155100"} for n in page]
        return Answer(200, json.dumps(items).encode(), {"Content-Type": "application/json"})

    scripted.default = answer
    listed = list(scripted.store().list("k", start_after="k0003"))
    assert [m.key for m in listed] == [n[4:] for n in names[4:]]
    assert listed[0].last_modified == dt.datetime(2026, 11, 26, 4, 39, 12, 155100, tzinfo=dt.UTC)
    assert len(scripted.seen) == 3 + 1  # 21 keys in pages of 10, then an empty page


def test_connections_are_pooled_per_store_and_authenticate_once(scripted: ScriptedSwift) -> None:
    scripted.default = lambda seen: Answer(200, b"v", delay=0.01)
    store = scripted.store(max_concurrency=4)
    keys = [f"k{i}" for i in range(40)]
    assert store.get_many(keys) == [b"v"] * 40
    assert 2 <= scripted.max_in_flight <= 4
    assert scripted.auths == 1  # one token for the whole store, shared by its connections
    assert 1 <= len(store._idle) <= 4
    pooled = {id(c) for c in store._idle}
    store.get_many(keys)
    assert scripted.auths == 1
    assert {id(c) for c in store._idle} == pooled  # reused across calls
    other = scripted.store()
    other.get("k")
    assert scripted.auths == 2  # nothing shared between store objects
