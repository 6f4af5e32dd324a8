"""A read whose answer stalls or trickles ends in bounded time (issue 12), against real servers.

Between the store and the server (LocalStack, Swift) sits :class:`SlowProxy`, a
small reverse proxy on 127.0.0.1 written for these tests: it relays every
request, and for GETs of chosen object keys sends the headers and the first
KiB of the body, then either nothing more (``stall``) or one byte every 0.2 s
(``trickle``: the client's per-read timeout never fires, so without an overall
deadline such a read would last for hours). Each read runs in a thread that
the test waits for with a generous bound, so a read that never ends fails the
test instead of hanging it.
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import pytest
from conftest import s3_options, swift_options
from objbutler_servers import ServerInfo

from objbutler import Box, Butler
from objbutler.errors import TransientStoreError
from objbutler.stores._retry import RetryPolicy
from objbutler.stores.s3 import S3Store
from objbutler.stores.swift import SwiftStore

pytestmark = pytest.mark.servers

HEAD_BYTES = 1024
TRICKLE_SECONDS = 0.2
DEADLINE = 3.0
PER_READ_TIMEOUT = 2.0
PATIENCE = 20.0  # how long a test waits for a read that should end after about DEADLINE seconds
MANY_RETRIES = RetryPolicy(attempts=100, base_delay=0.01, max_delay=0.05)


class SlowProxy:
    """A reverse proxy on 127.0.0.1 that makes the GETs of chosen object keys stall or trickle.

    Parameters
    ----------
    upstream : str
        ``http://127.0.0.1:port`` of the real server.
    """

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        assert parsed.hostname == "127.0.0.1", "loopback only"
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.mode: Literal["relay", "stall", "trickle"] = "relay"
        self.pattern = "/data/"
        self.slowed = 0
        self.trickled: list[int] = []  # per trickled answer: body bytes sent one by one before the client left
        self.stopping = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy.relay(self)

            def do_PUT(self) -> None:
                proxy.relay(self)

            def do_POST(self) -> None:
                proxy.relay(self)

            def do_HEAD(self) -> None:
                proxy.relay(self)

            def do_DELETE(self) -> None:
                proxy.relay(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """Where clients connect."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        """Release every held answer and stop serving."""
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def relay(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        """Forward one request upstream and send the answer back (slowly, if it is chosen)."""
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "expect")}
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        own, theirs = self.url.removeprefix("http://"), f"{self.upstream[0]}:{self.upstream[1]}"
        handler.send_response_only(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() in ("connection", "transfer-encoding", "keep-alive", "date", "server") or (
                    name.lower() == "content-length" and handler.command != "HEAD"):
                continue
            handler.send_header(name, value.replace(theirs, own))  # Swift's auth names its storage URL
        if handler.command != "HEAD":
            handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        path = urllib.parse.urlsplit(handler.path).path
        slow = self.mode != "relay" and handler.command == "GET" and self.pattern in path and answer.status < 300
        if handler.command == "HEAD":
            return
        if not slow or len(data) <= HEAD_BYTES:
            handler.wfile.write(data)
            return
        self.slowed += 1
        try:
            handler.wfile.write(data[:HEAD_BYTES])
            if self.mode == "stall":
                self.stopping.wait()
                return
            sent = 0
            try:
                for offset in range(HEAD_BYTES, len(data)):
                    if self.stopping.wait(TRICKLE_SECONDS):
                        return
                    handler.wfile.write(data[offset : offset + 1])
                    handler.wfile.flush()
                    sent += 1
            finally:
                self.trickled.append(sent)
        except OSError:
            return  # the client gave up: what the test wants


@pytest.fixture
def s3_proxy(localstack_server: ServerInfo) -> Iterator[SlowProxy]:
    proxy = SlowProxy(localstack_server.env["AWS_ENDPOINT_URL"])
    yield proxy
    proxy.stop()


@pytest.fixture
def swift_proxy(swift_server: ServerInfo) -> Iterator[SlowProxy]:
    auth = urllib.parse.urlsplit(swift_server.env["ST_AUTH"])
    proxy = SlowProxy(f"http://{auth.netloc}")
    yield proxy
    proxy.stop()


def s3_store_options(server: ServerInfo, proxy: SlowProxy, **extra: Any) -> dict[str, Any]:
    return {**s3_options(server), "endpoint_url": proxy.url, "read_timeout": PER_READ_TIMEOUT,
            "read_deadline": DEADLINE, **extra}


def swift_store_options(server: ServerInfo, proxy: SlowProxy, **extra: Any) -> dict[str, Any]:
    auth = urllib.parse.urlsplit(server.env["ST_AUTH"])
    return {**swift_options(server), "auth_url": f"{proxy.url}{auth.path}", "timeout": PER_READ_TIMEOUT,
            "read_deadline": DEADLINE, **extra}


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """Run ``call`` in a thread; its exception (None if it returned) and how long it took.

    Fails the test if it is still running after PATIENCE seconds (without an
    overall deadline, a trickled read would last for hours).
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(PATIENCE)
    elapsed = time.monotonic() - started
    assert outcome, f"the read was still running after {elapsed:.0f} s: no overall deadline"
    return outcome[0], elapsed


# A trickled answer sends a byte every TRICKLE_SECONDS; a client that gives up at its deadline has held on
# for at most DEADLINE + PER_READ_TIMEOUT seconds, so it has seen at most this many (plus the few a closed
# socket still accepts). A loaded machine sends fewer, never more: a count, not a clock, bounds the read.
MAX_TRICKLED_BYTES = int((DEADLINE + PER_READ_TIMEOUT) / TRICKLE_SECONDS) + 10


def ends_by_the_deadline(call: Callable[[], object], proxy: SlowProxy, max_attempts: int = 8) -> str:
    """Assert ``call`` raised TransientStoreError, ended by its deadline: counted by the proxy, not timed.

    Every trickled answer it got stopped within :data:`MAX_TRICKLED_BYTES` bytes, and it sent at most
    ``max_attempts`` requests the proxy slowed (a stall is retried only until the deadline).
    """
    slowed, trickled = proxy.slowed, len(proxy.trickled)
    error, _ = timed(call)
    assert isinstance(error, TransientStoreError), f"expected TransientStoreError, got {error!r}"
    assert 1 <= proxy.slowed - slowed <= max_attempts, f"{proxy.slowed - slowed} slowed requests"
    proxy.stopping.wait(TRICKLE_SECONDS * 3)  # let the proxy notice the client is gone and book the answer
    counts = proxy.trickled[trickled:]
    assert all(count <= MAX_TRICKLED_BYTES for count in counts), f"bytes trickled per answer: {counts}"
    return str(error)


# -- S3 (LocalStack) -----------------------------------------------------------------


def test_s3_trickling_get_hits_the_deadline(localstack_server: ServerInfo, s3_proxy: SlowProxy) -> None:
    options = s3_store_options(localstack_server, s3_proxy, create_bucket=True)
    store = S3Store(f"deadline-{uuid.uuid4().hex[:8]}", "p", **options)
    payload = np.random.default_rng(1).bytes(256 * 1024)
    store.put("data/x.bin", payload)
    assert store.get("data/x.bin") == payload  # relayed at full speed
    s3_proxy.mode = "trickle"
    message = ends_by_the_deadline(lambda: store.get("data/x.bin"), s3_proxy)
    assert "read deadline" in message and "data/x.bin" in message
    ends_by_the_deadline(lambda: store.get_ranges("data/x.bin", [(0, 10), (2000, 200_000)]), s3_proxy)
    ends_by_the_deadline(lambda: store.get_many(["data/x.bin", "data/x.bin"]), s3_proxy)
    assert s3_proxy.slowed >= 3
    s3_proxy.mode = "relay"
    assert store.get("data/x.bin") == payload  # the store is usable again


def test_s3_stalled_get_is_not_retried_past_the_deadline(localstack_server: ServerInfo,
                                                         s3_proxy: SlowProxy) -> None:
    """Every attempt stalls and times out after 2 s; 100 attempts would take minutes, the deadline stops them."""
    options = s3_store_options(localstack_server, s3_proxy, create_bucket=True, retry=MANY_RETRIES)
    store = S3Store(f"deadline-{uuid.uuid4().hex[:8]}", "p", **options)
    store.put("data/x.bin", b"x" * 100_000)
    s3_proxy.mode = "stall"
    ends_by_the_deadline(lambda: store.get("data/x.bin"), s3_proxy)
    assert 1 <= s3_proxy.slowed <= 3  # an attempt every ~2 s (the per-read timeout) until the deadline


def test_butler_get_and_cutouts_end_by_the_deadline(localstack_server: ServerInfo, s3_proxy: SlowProxy) -> None:
    bucket = f"deadline-{uuid.uuid4().hex[:8]}"
    options = s3_store_options(localstack_server, s3_proxy)
    list(S3Store(bucket, create_bucket=True, **options).list())
    uri = f"s3://{bucket}/repo"
    butler = Butler.create(uri, **options)
    image = np.arange(256 * 256, dtype="float32").reshape(256, 256)
    refs = [butler.put(image, "calexp", {"visit": 1}, run="r", format="fits"),
            butler.put(image, "calexp", {"visit": 2}, run="r", format="zarr",
                       format_options={"chunks": (128, 128), "compressor": None})]
    for ref in refs:
        assert np.array_equal(butler.get(ref).data, image)
    s3_proxy.mode = "trickle"
    for ref in refs:
        ends_by_the_deadline(lambda ref=ref: butler.get(ref), s3_proxy)
        ends_by_the_deadline(lambda ref=ref: butler.get_cutouts(ref, [Box(0, 0, 200, 200)]), s3_proxy)


# -- Swift -------------------------------------------------------------------------------


def test_swift_trickling_get_hits_the_deadline(swift_server: ServerInfo, swift_proxy: SlowProxy) -> None:
    options = swift_store_options(swift_server, swift_proxy, create_container=True)
    store = SwiftStore(f"deadline-{uuid.uuid4().hex[:8]}", "p", **options)
    payload = np.random.default_rng(2).bytes(256 * 1024)
    store.put("data/x.bin", payload)
    assert store.get("data/x.bin") == payload
    swift_proxy.mode = "trickle"
    message = ends_by_the_deadline(lambda: store.get("data/x.bin"), swift_proxy)
    assert "read deadline" in message
    ends_by_the_deadline(lambda: store.get_ranges("data/x.bin", [(0, 10), (2000, 200_000)]), swift_proxy)
    swift_proxy.mode = "stall"
    store.retry = MANY_RETRIES
    ends_by_the_deadline(lambda: store.get("data/x.bin"), swift_proxy, max_attempts=3)  # not 100 retries
    swift_proxy.mode = "relay"
    assert store.get("data/x.bin") == payload


def test_the_deadline_is_an_option_that_pickles() -> None:
    import pickle

    store = S3Store("bucket", "p", endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b",
                    read_deadline=7.5)
    assert pickle.loads(pickle.dumps(store)).read_deadline == 7.5
    assert S3Store("bucket", endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b",
                   read_deadline=None).read_deadline is None
    with pytest.raises(ValueError, match="read_deadline"):
        SwiftStore("container", read_deadline=0)
