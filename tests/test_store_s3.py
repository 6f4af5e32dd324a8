"""S3Store: the conformance suite on moto and LocalStack, plus S3-specific behaviour.

Error translation and retries are tested against a tiny scripted HTTP server
on 127.0.0.1 (:class:`remote_store_helpers.ScriptedServer`) that answers what
each test tells it to (503 then 200, 403, 409, ...), so the real botocore
client, the real translation and the real retry loop run end to end. Range
reads are checked through a byte-counting TCP proxy in front of moto.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import remote_store_helpers as remote
from objbutler_servers import ServerInfo
from remote_store_helpers import FAST_RETRY, Answer, ScriptedServer

from objbutler.errors import (
    AlreadyExistsError,
    NotFoundError,
    PreconditionFailedError,
    StoreError,
    TransientStoreError,
)
from objbutler.stores import RetryPolicy, open_store
from objbutler.stores.cache import CachingStore
from objbutler.stores.s3 import S3Store
from objbutler.testing.conformance import StoreConformanceTests, write_once_cache


def _store_for(server: ServerInfo, bucket: str, prefix: str, **options: object) -> S3Store:
    env = server.env
    return S3Store(
        bucket,
        prefix,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        region=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        **options,  # type: ignore[arg-type]
    )


def _new_bucket(server: ServerInfo) -> str:
    bucket = f"objbutler-test-{uuid.uuid4().hex[:12]}"
    list(_store_for(server, bucket, "", create_bucket=True).list())  # the first request creates it
    return bucket


# -- the shared conformance suite ----------------------------------------------------------


@pytest.fixture(scope="module")
def moto_bucket(moto_server: ServerInfo) -> str:
    return _new_bucket(moto_server)


class TestS3StoreMoto(StoreConformanceTests):
    many_keys = 2_500

    @pytest.fixture
    def store(self, moto_server: ServerInfo, moto_bucket: str) -> S3Store:
        return _store_for(moto_server, moto_bucket, f"t/{uuid.uuid4().hex}")


@pytest.fixture(scope="module")
def localstack_bucket(localstack_server: ServerInfo) -> str:
    return _new_bucket(localstack_server)


@pytest.mark.servers
class TestS3StoreLocalStack(StoreConformanceTests):
    many_keys = 2_500

    @pytest.fixture
    def store(self, localstack_server: ServerInfo, localstack_bucket: str) -> S3Store:
        return _store_for(localstack_server, localstack_bucket, f"t/{uuid.uuid4().hex}")


@pytest.mark.servers
class TestCachingStoreS3LocalStack(StoreConformanceTests):
    """CachingStore around S3 on LocalStack, the suite's write-once keys served from disk."""

    @pytest.fixture
    def store(self, localstack_server: ServerInfo, localstack_bucket: str, tmp_path: Path) -> CachingStore:
        inner = _store_for(localstack_server, localstack_bucket, f"c/{uuid.uuid4().hex}")
        return write_once_cache(inner, tmp_path / "cache")


# -- a scripted S3 endpoint -----------------------------------------------------------------


def s3_error(status: int, code: str, message: str = "scripted") -> Answer:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    return Answer(status, body, {"Content-Type": "application/xml"})


class ScriptedS3(ScriptedServer):
    """The scripted server as an S3 endpoint, bucket ``bkt``."""

    def store(self, **options: Any) -> S3Store:
        opts: dict[str, Any] = {"retry": FAST_RETRY, **options}
        return S3Store(
            "bkt", "pre", endpoint_url=self.endpoint, access_key="a", secret_key="b", region="us-east-1", **opts
        )


@pytest.fixture
def scripted() -> Iterator[ScriptedS3]:
    with ScriptedS3() as server:
        yield server


# -- error translation and retries ----------------------------------------------------------


def test_503_then_200_is_retried(scripted: ScriptedS3) -> None:
    scripted.script = [s3_error(503, "SlowDown"), Answer(200, b"hello")]
    assert scripted.store().get("k") == b"hello"
    assert [s.method for s in scripted.seen] == ["GET", "GET"]
    assert scripted.seen[0].path == "/bkt/pre/k"


@pytest.mark.parametrize(
    "answer",
    [
        s3_error(500, "InternalError"),
        s3_error(503, "ServiceUnavailable"),
        s3_error(400, "RequestTimeout"),
        s3_error(400, "ThrottlingException"),
    ],
)
def test_transient_answers_exhaust_the_retry_policy(scripted: ScriptedS3, answer: Answer) -> None:
    remote.assert_retried_until_exhausted(scripted, answer, lambda store: store.get("k"))


@pytest.mark.parametrize(
    "answer",
    [s3_error(403, "AccessDenied"), s3_error(400, "InvalidArgument"), s3_error(403, "SignatureDoesNotMatch")],
)
def test_4xx_is_final_and_not_retried(scripted: ScriptedS3, answer: Answer) -> None:
    remote.assert_not_retried(scripted, answer, lambda store: store.get("k"))


def test_unreachable_endpoint_is_transient() -> None:
    port = remote.closed_port()
    store = S3Store(
        "bkt",
        endpoint_url=f"http://127.0.0.1:{port}",
        access_key="a",
        secret_key="b",
        retry=RetryPolicy(attempts=2, base_delay=0.0),
        connect_timeout=1,
    )
    with pytest.raises(TransientStoreError, match=f"127.0.0.1:{port}"):
        store.get("k")


def test_missing_key_and_bucket(scripted: ScriptedS3) -> None:
    store = scripted.store()
    scripted.script = [s3_error(404, "NoSuchKey"), Answer(404), s3_error(404, "NoSuchBucket")]
    with pytest.raises(NotFoundError, match="no object 'k'"):
        store.get("k")
    with pytest.raises(NotFoundError):
        store.head("k")  # a HEAD answer has no body: the status alone says it
    with pytest.raises(NotFoundError, match="bucket 'bkt' does not exist"):
        store.get("k")
    assert len(scripted.seen) == 3


def test_conditional_create_sends_if_none_match(scripted: ScriptedS3) -> None:
    store = scripted.store()
    scripted.script = [Answer(200, headers={"ETag": '"abc"'}), s3_error(412, "PreconditionFailed")]
    assert store.put_if_absent("k", b"data").etag == "abc"
    with pytest.raises(AlreadyExistsError):
        store.put_if_absent("k", b"data")
    assert [s.headers.get("if-none-match") for s in scripted.seen] == ["*", "*"]
    assert len(scripted.seen) == 2


def test_conditional_match_sends_quoted_if_match(scripted: ScriptedS3) -> None:
    store = scripted.store()
    scripted.script = [s3_error(412, "PreconditionFailed"), s3_error(404, "NoSuchKey")]
    with pytest.raises(PreconditionFailedError):
        store.put_if_match("k", b"data", "abc")
    with pytest.raises(NotFoundError):
        store.put_if_match("k", b"data", '"abc"')
    assert [s.headers.get("if-match") for s in scripted.seen] == ['"abc"', '"abc"']


def test_409_conditional_conflict_is_a_lost_race(scripted: ScriptedS3) -> None:
    store = scripted.store()
    scripted.default = lambda seen: s3_error(409, "ConditionalRequestConflict")
    with pytest.raises(AlreadyExistsError):
        store.put_if_absent("k", b"x")
    with pytest.raises(PreconditionFailedError):
        store.put_if_match("k", b"x", "abc")
    assert len(scripted.seen) == 2  # not retried


def test_lost_answer_to_a_create_that_landed(scripted: ScriptedS3) -> None:
    # The first PUT is applied but its answer is lost (503); the retry finds the key taken.
    # The object then holds our bytes (etag == MD5), so the create succeeded.
    data = b"log entry 7"
    md5 = hashlib.md5(data).hexdigest()
    head = Answer(200, headers={"ETag": f'"{md5}"', "Content-Length": str(len(data))})
    meta = remote.assert_lost_create_recovered(
        scripted, "log/7", data, s3_error(503, "SlowDown"), s3_error(412, "PreconditionFailed"), head
    )
    assert meta.etag == md5


def test_lost_answer_and_someone_else_won(scripted: ScriptedS3) -> None:
    scripted.script = [
        s3_error(503, "SlowDown"),
        s3_error(412, "PreconditionFailed"),
        Answer(200, headers={"ETag": '"0123456789abcdef0123456789abcdef"'}),
    ]
    with pytest.raises(AlreadyExistsError):
        scripted.store().put_if_absent("log/7", b"mine")


def test_416_gives_empty_bytes_and_ranges_are_inclusive(scripted: ScriptedS3) -> None:
    store = scripted.store()
    scripted.script = [s3_error(416, "InvalidRange")]
    assert store.get_ranges("k", [(10, 20), (5, 5)]) == [b"", b""]
    assert [s.headers["range"] for s in scripted.seen] == ["bytes=10-19"]  # no request for the empty range


def test_server_ignoring_range_is_sliced(scripted: ScriptedS3) -> None:
    scripted.default = lambda seen: Answer(200, b"0123456789")
    assert scripted.store().get_ranges("k", [(2, 5)]) == [b"234"]


def test_get_ranges_concurrency_is_bounded(scripted: ScriptedS3) -> None:
    scripted.default = lambda seen: Answer(206, b"x" * 10, {"Content-Range": "bytes 0-9/1000"}, delay=0.02)
    store = scripted.store(max_concurrency=4)
    out = store.get_ranges("k", [(i * 10, i * 10 + 10) for i in range(40)])
    assert out == [b"x" * 10] * 40
    assert len(scripted.seen) == 40
    assert 2 <= scripted.max_in_flight <= 4


def test_client_is_lazy_and_per_store(scripted: ScriptedS3) -> None:
    first, second = scripted.store(), scripted.store()
    assert scripted.seen == []
    assert first._client_obj is None
    scripted.default = lambda seen: Answer(200, b"v")
    first.get("k")
    second.get("k")
    assert first._client() is first._client()
    assert first._client() is not second._client()


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(TypeError, match="unknown S3Store option"):
        S3Store("bkt", no_such_option=1)
    with pytest.raises(ValueError, match="both"):
        S3Store("bkt", access_key="only-one")


# -- against moto ---------------------------------------------------------------------------


@pytest.fixture
def moto_store(moto_server: ServerInfo, moto_bucket: str) -> S3Store:
    return _store_for(moto_server, moto_bucket, f"s/{uuid.uuid4().hex}")


def test_missing_bucket_is_not_found_with_a_clear_message(moto_server: ServerInfo) -> None:
    store = _store_for(moto_server, "objbutler-no-such-bucket", "p")
    for call in (
        lambda: store.get("k"),
        lambda: store.put("k", b"x"),
        lambda: list(store.list()),
        lambda: store.delete("k"),
    ):
        with pytest.raises(NotFoundError, match="bucket 'objbutler-no-such-bucket' does not exist"):
            call()


def test_create_bucket_option(moto_server: ServerInfo) -> None:
    bucket = f"objbutler-new-{uuid.uuid4().hex[:8]}"
    store = _store_for(moto_server, bucket, "p", create_bucket=True)
    store.put("k", b"v")
    again = _store_for(moto_server, bucket, "p", create_bucket=True)  # exists already: fine
    assert again.get("k") == b"v"


def test_pickle_round_trip_without_client(moto_store: S3Store) -> None:
    moto_store.put("p", b"payload")
    assert moto_store._client_obj is not None
    clone = remote.assert_pickles_as_arguments(moto_store, b"botocore")
    assert clone._client_obj is None
    assert clone.endpoint_url == moto_store.endpoint_url
    assert clone.get("p") == b"payload"
    assert clone._client() is not moto_store._client()


def test_open_store_uri(moto_server: ServerInfo, moto_bucket: str) -> None:
    env = moto_server.env
    store = open_store(
        f"s3://{moto_bucket}/some/prefix",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.uri) == (moto_bucket, "some/prefix", f"s3://{moto_bucket}/some/prefix")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> pytest.MonkeyPatch:
    """An environment with no AWS configuration but what each test sets."""
    remote.clear_environment(monkeypatch, "AWS_")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.path.join(tmp_path, "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.path.join(tmp_path, "no-credentials"))
    return monkeypatch


def test_configuration_from_environment(aws_env: pytest.MonkeyPatch, moto_server: ServerInfo) -> None:
    for name, value in moto_server.env.items():
        aws_env.setenv(name, value)
    aws_env.delenv("AWS_DEFAULT_REGION")
    aws_env.setenv("AWS_REGION", "eu-west-1")
    bucket = f"objbutler-env-{uuid.uuid4().hex[:8]}"
    store = open_store(f"s3://{bucket}/repo", create_bucket=True)
    assert isinstance(store, S3Store)
    store.put("k", b"from env")
    assert store.get("k") == b"from env"
    assert store._client().meta.region_name == "eu-west-1"  # AWS_REGION as the fallback
    assert store.endpoint == moto_server.endpoint
    aws_env.setenv("AWS_DEFAULT_REGION", "ap-south-1")  # botocore's own variable wins over AWS_REGION
    assert S3Store(bucket, "repo")._client().meta.region_name == "ap-south-1"


def test_explicit_options_win_over_environment(
    aws_env: pytest.MonkeyPatch, moto_server: ServerInfo, moto_bucket: str
) -> None:
    aws_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: would fail
    aws_env.setenv("AWS_ACCESS_KEY_ID", "wrong")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    aws_env.setenv("AWS_DEFAULT_REGION", "us-west-2")
    store = _store_for(moto_server, moto_bucket, f"e/{uuid.uuid4().hex}", retry=FAST_RETRY)
    store.put("k", b"explicit")
    assert store.get("k") == b"explicit"
    assert store._client().meta.region_name == "us-east-1"


def test_no_credentials_is_a_clear_store_error(aws_env: pytest.MonkeyPatch, scripted: ScriptedS3) -> None:
    aws_env.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = S3Store("bkt", endpoint_url=scripted.endpoint, retry=FAST_RETRY)
    with pytest.raises(StoreError, match="AWS_ACCESS_KEY_ID"):
        store.get("k")
    assert scripted.seen == []


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that counts the bytes the upstream server sends back."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.downstream_bytes = 0
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, count: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if count:
                    with self._lock:
                        self.downstream_bytes += len(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def test_ranges_never_download_the_whole_object(moto_server: ServerInfo, moto_bucket: str) -> None:
    port = int(moto_server.endpoint.rsplit(":", 1)[1])
    proxy = CountingProxy(port)
    try:
        env = moto_server.env
        store = S3Store(
            moto_bucket,
            f"r/{uuid.uuid4().hex}",
            endpoint_url=proxy.endpoint,
            access_key=env["AWS_ACCESS_KEY_ID"],
            secret_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        data = os.urandom(8 << 20)
        store.put("image", data)
        before = proxy.downstream_bytes
        ranges = [(0, 2880), (4_000_000, 4_004_096), (8_388_000, 9_000_000)]
        assert store.get_ranges("image", ranges) == [data[a:b] for a, b in ranges]
        moved = proxy.downstream_bytes - before
        payload = sum(len(data[a:b]) for a, b in ranges)
        assert payload <= moved < payload + 16_384, moved  # the bytes asked for plus headers
    finally:
        proxy.close()


def test_listing_stays_inside_the_root(moto_server: ServerInfo, moto_bucket: str) -> None:
    base = uuid.uuid4().hex
    inner = _store_for(moto_server, moto_bucket, f"{base}/repo")
    sibling = _store_for(moto_server, moto_bucket, f"{base}/repo2")
    outer = _store_for(moto_server, moto_bucket, base)
    inner.put("a", b"1")
    sibling.put("a", b"2")
    outer.put("repo/b", b"3")
    assert [m.key for m in inner.list()] == ["a", "b"]
    assert [m.key for m in outer.list()] == ["repo/a", "repo/b", "repo2/a"]
    metas = {m.key: m for m in inner.list()}
    assert metas["a"].etag == inner.head("a").etag
    assert metas["a"].last_modified is not None and metas["a"].last_modified.tzinfo is not None


# -- Expect: 100-continue only for large bodies -------------------------------------------------


def test_small_puts_send_no_expect_continue(moto_server: ServerInfo, moto_bucket: str) -> None:
    """Count PUTs sent with ``Expect: 100-continue``: none for small bodies, every one at 1 MiB and more."""
    from objbutler.stores.s3 import EXPECT_CONTINUE_MIN_BYTES

    store = _store_for(moto_server, moto_bucket, f"e/{uuid.uuid4().hex}")
    sent: list[tuple[int, bool]] = []

    def record(request: Any, **_: Any) -> None:
        body = request.body
        sent.append((len(body) if isinstance(body, bytes) else -1, "Expect" in request.headers))

    store._client().meta.events.register("before-send.s3.PutObject", record)
    store.put("small", b"x" * 5760)
    store.put_if_absent("small-create", b"y" * 100)
    store.put("large", b"z" * EXPECT_CONTINUE_MIN_BYTES)
    assert [expect for _, expect in sent] == [False, False, True]
    assert store.get("small") == b"x" * 5760 and store.get("large") == b"z" * EXPECT_CONTINUE_MIN_BYTES
