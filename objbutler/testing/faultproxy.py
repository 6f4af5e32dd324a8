"""A fault-injecting HTTP reverse proxy for S3 and Swift endpoints on 127.0.0.1.

:class:`FaultProxy` runs in a thread of the test process, listens on a free
port of 127.0.0.1 and forwards every request to one upstream server (LocalStack,
moto, a Swift proxy server), so the real client library, the real error
translation and the real retry loop of a store run end to end. What it does to
a request is decided by :class:`Rule` objects: each rule matches HTTP methods,
a regular expression on the path and optionally one on the query string, fires
on some of the matching requests (the n-th, the first ``times``, or with a
seeded probability) and injects one fault kind:

``reset``
    Read the request, then close the client connection with a TCP RST
    (``SO_LINGER`` 0) without forwarding it.
``error``
    Read the request and answer a 5xx (503 unless ``status`` says otherwise)
    without forwarding it.
``lost_answer``
    Forward the request, let the upstream apply it, then reset the client
    connection (or, with ``lost_as="error"``, answer a 5xx) instead of
    relaying the answer.
``late_apply``
    Read the whole request, reset the client connection, and forward the
    request to the upstream only ``delay`` seconds later, from a background
    thread (a write that lands after the client gave up on it).
``truncate``
    Relay the headers (with the full ``Content-Length``) and only the first
    ``fraction`` of the response body, then close the connection.
``flip``
    XOR one byte of the response body (at ``offset``, else at a seeded random
    position) with ``mask``.
``stall``
    Relay the headers and the first half of the body, stop for ``stall``
    seconds, then relay the rest (an empty answer is delayed as a whole). A
    client whose read timeout is shorter gives up; the proxy then drops the
    rest.
``ignore_range``
    Strip the ``Range`` header, so the upstream answers ``200`` with the whole
    object (only requests that carry a ``Range`` header match).

Swift's v1 auth answer names the storage URL (``X-Storage-Url``) with the
upstream's address; the proxy rewrites the upstream's ``host:port`` in every
response header to its own, so a client that authenticated through the proxy
keeps going through it.

Every request is booked in a thread-safe log (:meth:`FaultProxy.entries`):
what was forwarded, with which status, and which fault was injected. Faults
whose effect needs a response body (``truncate``, ``flip``) on an answer that
has none are booked as ``noop`` and not counted as injected.
:meth:`FaultProxy.stats` adds the log up: requests and bytes by method, status
and :func:`request_kind` (``get``, ``range-get``, ``list``, ``put``,
``put-if-absent``, ...), and requests in flight now and at the peak.

Without rules the proxy is a plain relay, and two options make it a slow
network instead of a loopback one (a cloud profile): ``latency`` holds every
request that many seconds before it goes upstream (each connection has its own
thread, so the waits overlap, as round trips do), and ``bandwidth`` caps each
client connection at that many bytes per second, in both directions, by pacing
the writes of request and response bodies (:class:`Pacer`).

Examples
--------
>>> with FaultProxy("http://127.0.0.1:4566") as proxy:  # doctest: +SKIP
...     store = S3Store("bucket", endpoint_url=proxy.url, ...)
...     proxy.add(Rule("lost_answer", methods="PUT", path=r"/manifest/log/"))
...     ...
...     proxy.counts()  # {"lost_answer": 3}
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import http.server
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, Self, get_args

__all__ = ["FAULT_KINDS", "FaultKind", "FaultProxy", "LogEntry", "Pacer", "Rule", "access_key_of", "kinds_summary",
           "request_kind"]

FaultKind = Literal["reset", "error", "lost_answer", "late_apply", "truncate", "flip", "stall", "ignore_range"]
"""The faults a :class:`Rule` can inject."""

FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
"""Every fault kind, in documentation order."""

_BODY_FAULTS = frozenset({"truncate", "flip"})
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
)
_PIECE = 1 << 20
_PACED_PIECE = 1 << 16
_SCHEDULE_LIMIT = 10_000
_LOG_LIMIT = 200_000
_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "COPY")


@dataclasses.dataclass(eq=False)
class Rule:
    """What to inject into which requests.

    Parameters
    ----------
    kind : FaultKind
        The fault (see the module docstring).
    methods : str or sequence of str, optional
        HTTP methods that match (``"PUT"``, ``("GET", "HEAD")``); None for any.
    path : str
        Regular expression searched (``re.search``) in the percent-decoded
        request path, e.g. ``r"/manifest/log/"``.
    query : str, optional
        Regular expression searched in the percent-decoded query string, e.g.
        ``r"prefix=[^&]*manifest/checkpoints/"`` for a listing; None matches
        any query, ``""`` too (use ``r"^$"`` for "no query").
    nth : int, optional
        Fire on the n-th matching request only (1-based). Shorthand for
        ``after=nth - 1, times=1``.
    after : int
        Let this many matching requests through before firing.
    times : int, optional
        Fire at most this many times (None: no limit).
    probability : float
        Fire on each eligible match with this probability (1.0: always).
    seed : int
        Seed of the rule's own random generator (probability and flip offsets).
    status : int
        Status of an ``error`` answer, and of a ``lost_answer`` with ``lost_as="error"``.
    lost_as : {"reset", "error"}
        How a ``lost_answer`` hides the upstream's answer.
    delay : float
        Seconds a ``late_apply`` waits before forwarding.
    stall : float
        Seconds a ``stall`` stops the response.
    fraction : float
        Part of the body a ``truncate`` relays (at least one byte fewer than the whole).
    offset : int, optional
        Byte a ``flip`` changes (negative: from the end); None: a seeded random one.
    mask : int
        What the flipped byte is XORed with (1: a single bit; 0xFF: the whole byte).
    name : str, optional
        A label for the log (default: the kind).

    Attributes
    ----------
    matched : int
        Requests that matched so far.
    fired : int
        Faults it decided to inject so far.
    hits : list of (str, str)
        Method and path of every request it fired on.
    """

    kind: FaultKind
    methods: str | Sequence[str] | None = None
    path: str = ""
    query: str | None = None
    nth: int | None = None
    after: int = 0
    times: int | None = None
    probability: float = 1.0
    seed: int = 0
    status: int = 503
    lost_as: Literal["reset", "error"] = "reset"
    delay: float = 3.0
    stall: float = 0.5
    fraction: float = 0.5
    offset: int | None = None
    mask: int = 0x01
    name: str | None = None
    matched: int = dataclasses.field(default=0, init=False)
    fired: int = dataclasses.field(default=0, init=False)
    hits: list[tuple[str, str]] = dataclasses.field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {FAULT_KINDS}")
        if self.nth is not None:
            if self.nth < 1:
                raise ValueError(f"nth is 1-based, got {self.nth}")
            self.after, self.times = self.nth - 1, 1
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1), got {self.fraction}")
        if self.kind == "error" and not 500 <= self.status <= 599 and self.status != 429:
            raise ValueError(f"an error answer must be 5xx or 429, got {self.status}")
        if not 1 <= self.mask <= 0xFF:
            raise ValueError(f"mask must be in [1, 255], got {self.mask}")
        if isinstance(self.methods, str):
            self.methods = (self.methods,)
        self._methods = frozenset(m.upper() for m in self.methods) if self.methods is not None else None
        self._path = re.compile(self.path)
        self._query = re.compile(self.query) if self.query is not None else None
        self._rng = random.Random(self.seed)
        self.name = self.name or self.kind

    def matches(self, method: str, path: str, query: str, has_range: bool) -> bool:
        """Whether a request is one this rule is about (decoded path and query).

        Parameters
        ----------
        method : str
            The HTTP method.
        path, query : str
            The percent-decoded path and query string.
        has_range : bool
            Whether the request carries a ``Range`` header (``ignore_range`` needs one).

        Returns
        -------
        bool
        """
        if self._methods is not None and method.upper() not in self._methods:
            return False
        if self.kind == "ignore_range" and not has_range:
            return False
        if not self._path.search(path):
            return False
        return self._query is None or bool(self._query.search(query))

    def decide(self) -> bool:
        """Count one match and say whether to fire on it (call under the proxy's lock)."""
        self.matched += 1
        if self.matched <= self.after:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.probability < 1.0 and self._rng.random() >= self.probability:
            return False
        self.fired += 1
        return True

    def flip_offset(self, length: int) -> int:
        """The byte a ``flip`` changes in a body of ``length`` bytes (>= 1)."""
        if self.offset is not None:
            return self.offset % length
        return self._rng.randrange(length)


@dataclasses.dataclass
class LogEntry:
    """One request as the proxy handled it.

    Parameters
    ----------
    time : float
        ``time.monotonic()`` when the request was read.
    method, path, query : str
        The request line (path and query percent-decoded).
    fault : str or None
        The kind injected, ``"noop"`` when a body fault found no body, None when clean.
    rule : str or None
        Name of the rule that fired.
    forwarded : bool
        Whether the request reached the upstream (for ``late_apply``: once it did).
    status : int or None
        The upstream's status (None if not forwarded, or not yet).
    client_status : int or None
        What the client was answered (None: nothing, the connection was reset).
    request_bytes, response_bytes : int
        Bytes of the request body and of the response body relayed to the client.
    error : str or None
        What went wrong while handling it (upstream unreachable, client gone).
    kind : str
        What the request is (:func:`request_kind`).
    seconds : float
        From reading the request to booking it (latency and pacing included).
    access_key : str or None
        The access key ID an S3 request was signed with (``Credential=AKID/...`` of a SigV4
        ``Authorization`` header or ``X-Amz-Credential`` query, ``AWS AKID:...`` of SigV2); None
        for an unsigned request. Lets a test see whose credentials reached an endpoint.
    """

    time: float
    method: str
    path: str
    query: str
    fault: str | None = None
    rule: str | None = None
    forwarded: bool = False
    status: int | None = None
    client_status: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    error: str | None = None
    kind: str = ""
    seconds: float = 0.0
    access_key: str | None = None


def request_kind(method: str, query: str, headers: Any) -> str:
    """What an S3 or Swift request is, for counting: one of a few fixed names.

    Parameters
    ----------
    method : str
        The HTTP method.
    query : str
        The percent-decoded query string.
    headers : mapping
        The request headers (``Range``, ``If-None-Match``, ``If-Match`` are looked at).

    Returns
    -------
    str
        ``list`` (a GET with ``list-type=``, ``prefix=`` or ``format=json``: S3 and
        Swift listings), ``range-get``, ``get``, ``head``, ``put-if-absent``
        (``If-None-Match``), ``put-if-match`` (``If-Match``), ``put``, ``delete``,
        ``post``, or the method in lower case.
    """
    method = method.upper()
    if method == "GET":
        fields = {part.split("=", 1)[0] for part in query.split("&") if part}
        if fields & {"list-type", "prefix", "format", "delimiter", "marker"}:
            return "list"
        return "range-get" if headers.get("Range") else "get"
    if method == "PUT":
        if headers.get("If-None-Match"):
            return "put-if-absent"
        if headers.get("If-Match"):
            return "put-if-match"
    return method.lower()


class Pacer:
    """Paces the writes of one connection to at most ``rate`` bytes per second.

    Each piece is released when the bytes before it and the piece itself
    would have crossed a link of that rate since the first of them: a
    virtual clock that advances by ``nbytes / rate`` per piece and never
    runs behind the real one (an idle link saves no credit). ``N`` bytes
    therefore take at least ``N / rate`` seconds.

    Parameters
    ----------
    rate : float
        Bytes per second (> 0).
    clock : callable
        Seconds, monotonic (default :func:`time.monotonic`).
    sleep : callable
        Waits that many seconds (default :func:`time.sleep`).

    Attributes
    ----------
    schedule : list of (float, int)
        ``(release time, bytes)`` of each piece (the first 10,000).
    """

    def __init__(self, rate: float, clock: Any = time.monotonic, sleep: Any = time.sleep) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 bytes/s, got {rate}")
        self.rate = float(rate)
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self.schedule: list[tuple[float, int]] = []

    def release_time(self, nbytes: int) -> float:
        """Book ``nbytes`` on the link and return when they have crossed it."""
        start = max(self._clock(), self._next)
        self._next = start + nbytes / self.rate
        if len(self.schedule) < _SCHEDULE_LIMIT:
            self.schedule.append((self._next, nbytes))
        return self._next

    def wait(self, nbytes: int) -> None:
        """Block until ``nbytes`` more may be written."""
        delay = self.release_time(nbytes) - self._clock()
        if delay > 0:
            self._sleep(delay)

    def pieces(self, data: bytes, size: int = _PACED_PIECE) -> Iterator[bytes]:
        """``data`` in pieces of ``size`` bytes, each released on schedule."""
        view = memoryview(data)
        for start in range(0, len(view), size):
            piece = view[start:start + size]
            self.wait(len(piece))
            yield bytes(piece)


class _Upstream(http.client.HTTPConnection):
    """An upstream connection with Nagle's algorithm off."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    proxy: FaultProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Book unexpected handler failures instead of printing tracebacks on stderr."""
        import sys

        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):  # a client that went away is no proxy error
            self.proxy._book_proxy_error(f"{type(exc).__name__}: {exc}")


class _ClientGoneError(Exception):
    """The client connection is closed (reset by us or gone on its side)."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self._upstream: _Upstream | None = None
        bandwidth = self.server.proxy.bandwidth
        self._pacer = Pacer(bandwidth) if bandwidth else None

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: requests are booked in the proxy's log."""

    def do_GET(self) -> None:
        try:
            self._handle()
        except _ClientGoneError:
            self.close_connection = True
        except (ConnectionError, TimeoutError, BrokenPipeError):
            self.close_connection = True

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_COPY = do_GET  # noqa: N815

    # -- the request ----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        split = urllib.parse.urlsplit(self.path)
        path, query = urllib.parse.unquote(split.path), urllib.parse.unquote(split.query)
        entry = LogEntry(time.monotonic(), self.command, path, query, request_bytes=len(body),
                         kind=request_kind(self.command, query, self.headers),
                         access_key=access_key_of(self.headers.get("Authorization"), query))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        proxy._begin()
        rule = proxy._pick_rule(self.command, path, query, "Range" in self.headers)
        try:
            if proxy.latency:
                time.sleep(proxy.latency)
            self._dispatch(rule, entry, body, headers)
        finally:
            entry.seconds = time.monotonic() - entry.time
            proxy._book(entry)

    def _dispatch(self, rule: Rule | None, entry: LogEntry, body: bytes, headers: dict[str, str]) -> None:
        proxy = self.server.proxy
        if rule is not None:
            entry.fault, entry.rule = rule.kind, rule.name
        kind = rule.kind if rule is not None else None
        if kind == "reset":
            self._reset()
            return
        if kind == "error":
            assert rule is not None
            self._answer_error(rule.status, entry)
            return
        if kind == "late_apply":
            assert rule is not None
            self._reset()
            proxy._apply_later(self.command, self.path, body, headers, rule.delay, entry)
            return
        if kind == "ignore_range":
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        response = self._send_upstream(body, headers, entry)
        if response is None:
            self._answer_error(502, entry)
            return
        entry.forwarded, entry.status = True, response.status
        if kind == "lost_answer":
            assert rule is not None
            response.read()
            response.close()
            if rule.lost_as == "error":
                self._answer_error(rule.status, entry)
            else:
                self._reset()
            return
        self._relay(response, rule, entry)

    # -- the upstream -----------------------------------------------------------------------

    def _send_upstream(self, body: bytes, headers: dict[str, str], entry: LogEntry) -> http.client.HTTPResponse | None:
        host, port = self.server.proxy.upstream
        while True:
            reused = self._upstream is not None
            if self._upstream is None:
                self._upstream = _Upstream(host, port, timeout=120)
            try:
                paced = self._pacer.pieces(body) if self._pacer is not None and body else body
                self._upstream.request(self.command, self.path, body=paced, headers=headers)
                return self._upstream.getresponse()
            except (http.client.HTTPException, OSError) as exc:
                self._upstream.close()
                self._upstream = None
                stale = isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError)
                if reused and stale:
                    continue  # a kept-alive connection the server had closed: the request never got there
                entry.error = f"upstream: {type(exc).__name__}: {exc}"
                return None

    # -- answering ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            if self._pacer is None:
                self.wfile.write(data)
                return
            for piece in self._pacer.pieces(data):
                self.wfile.write(piece)
                self.wfile.flush()
        except OSError as exc:
            raise _ClientGoneError() from exc

    def _reset(self) -> None:
        """Close the client connection with a TCP RST."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            sock.close()

    def _close(self) -> None:
        """Close the client connection gracefully (FIN), after what was sent."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _answer_error(self, status: int, entry: LogEntry) -> None:
        reason = http.client.responses.get(status, "Error")
        payload = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
            + ("ServiceUnavailable" if status == 503 else "InternalError")
            + f"</Code><Message>{reason} (injected by FaultProxy)</Message></Error>"
        ).encode()
        self.send_response_only(status, reason)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self._write(payload)
        entry.client_status = status

    def _relay(self, response: http.client.HTTPResponse, rule: Rule | None, entry: LogEntry) -> None:
        proxy = self.server.proxy
        status = response.status
        no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        kind = rule.kind if rule is not None else None
        buffered = kind in _BODY_FAULTS or kind == "stall"
        data = b""
        if buffered and not no_body:
            data = response.read()
            response.close()
        if kind in _BODY_FAULTS and not data:
            entry.fault = "noop"  # nothing to truncate or flip: booked, not counted
            kind = None
        self.send_response_only(status, response.reason)
        length = response.getheader("Content-Length")
        for name, value in response.getheaders():
            lower = name.lower()
            if lower in _HOP_BY_HOP or (buffered and lower == "content-length"):
                continue
            self.send_header(name, proxy._rewrite(value))
        chunked = False
        if buffered:
            if not no_body:
                self.send_header("Content-Length", str(len(data)))
            elif length is not None:
                self.send_header("Content-Length", length)
        elif not no_body and length is None:
            chunked = True
            self.send_header("Transfer-Encoding", "chunked")
        if kind == "stall" and (no_body or not data):
            assert rule is not None
            time.sleep(rule.stall)
        try:
            self.end_headers()
        except OSError as exc:
            raise _ClientGoneError() from exc
        entry.client_status = status
        if no_body:
            response.close()
            return
        if not buffered:
            entry.response_bytes = self._stream(response, chunked)
            response.close()
            return
        assert rule is not None
        if kind == "flip":
            at = rule.flip_offset(len(data))
            data = data[:at] + bytes([data[at] ^ rule.mask]) + data[at + 1 :]
        if kind == "truncate":
            cut = min(int(len(data) * rule.fraction), len(data) - 1)
            self._write(data[:cut])
            entry.response_bytes = cut
            self._close()
            return
        if kind == "stall" and data:
            half = len(data) // 2
            self._write(data[:half])
            with contextlib.suppress(OSError):
                self.wfile.flush()
            time.sleep(rule.stall)
            self._write(data[half:])
        else:
            self._write(data)
        entry.response_bytes = len(data)

    def _stream(self, response: http.client.HTTPResponse, chunked: bool) -> int:
        sent = 0
        while True:
            piece = response.read(_PIECE)
            if not piece:
                break
            sent += len(piece)
            self._write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
        if chunked:
            self._write(b"0\r\n\r\n")
        return sent


class FaultProxy:
    """A fault-injecting reverse proxy in a thread of this process, in front of one upstream.

    Parameters
    ----------
    upstream : str
        ``http://127.0.0.1:PORT`` of the server to forward to (loopback only).
    rules : iterable of Rule, optional
        Rules to start with (more with :meth:`add` or :meth:`rule`).
    latency : float
        Seconds every request waits before it is forwarded (or faulted): a
        network round trip in front of a loopback server (0: none).
    bandwidth : float, optional
        Bytes per second each client connection may move in each direction
        (request and response bodies are paced; None: no cap).

    Attributes
    ----------
    upstream : tuple of (str, int)
        Host and port forwarded to.
    latency : float
        As given.
    bandwidth : float or None
        As given.

    Notes
    -----
    Rules are checked in the order they were added; the first that matches
    and decides to fire handles the request, and later rules do not see it.
    A request goes to the upstream on a connection kept for its client
    connection (``late_apply`` uses a new one).

    Examples
    --------
    >>> with FaultProxy(server.endpoint) as proxy:  # doctest: +SKIP
    ...     butler = Butler(uri, endpoint_url=proxy.url, ...)
    ...     with proxy.rule("error", methods="GET", path="/manifest/log/", times=2):
    ...         butler.query("calexp")
    ...     proxy.counts()
    {'error': 2}
    """

    def __init__(self, upstream: str, rules: Iterable[Rule] = (), *, latency: float = 0.0,
                 bandwidth: float | None = None) -> None:
        if latency < 0:
            raise ValueError(f"latency must be >= 0 seconds, got {latency}")
        if bandwidth is not None and not bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s or None, got {bandwidth}")
        self.latency = float(latency)
        self.bandwidth = None if bandwidth is None else float(bandwidth)
        parsed = urllib.parse.urlsplit(upstream)
        host = parsed.hostname or ""
        if parsed.scheme != "http" or not (host == "localhost" or host.startswith("127.")):
            raise ValueError(f"the fault proxy only forwards to http:// loopback servers, not {upstream!r}")
        self.upstream: tuple[str, int] = (host, parsed.port or 80)
        self._upstream_netloc = parsed.netloc
        self._lock = threading.Lock()
        self._rules: list[Rule] = list(rules)
        self._log: list[LogEntry] = []
        self._counts: collections.Counter[str] = collections.Counter()
        self._forwarded = 0
        self._requests = 0
        self._in_flight = 0
        self._peak_in_flight = 0
        self._totals: collections.Counter[str] = collections.Counter()
        self._by: dict[str, collections.Counter[str]] = {"method": collections.Counter(),
                                                        "status": collections.Counter(),
                                                        "kind": collections.Counter()}
        self._proxy_errors: list[str] = []
        self._late: list[threading.Thread] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen on a free port of 127.0.0.1 and serve from a daemon thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                         name=f"FaultProxy:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain: float = 10.0) -> None:
        """Stop serving; wait up to ``drain`` seconds for pending ``late_apply`` forwards first."""
        self.settle(drain)
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the proxy listens on."""
        if self._server is None:
            raise RuntimeError("the fault proxy is not running: call start()")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the proxy: point clients here."""
        return f"http://127.0.0.1:{self.port}"

    def rewrite_url(self, url: str) -> str:
        """An upstream URL (e.g. Swift's ``ST_AUTH``) with the proxy's address instead."""
        return self._rewrite(url)

    # -- rules ----------------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Add a rule (checked after those already there) and return it."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        """Remove a rule (no error if it is not there)."""
        with self._lock, contextlib.suppress(ValueError):
            self._rules.remove(rule)

    def clear_rules(self) -> None:
        """Remove every rule: from now on the proxy only forwards."""
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[Rule]:
        """The rules in force, in order (a copy)."""
        with self._lock:
            return list(self._rules)

    @contextlib.contextmanager
    def rule(self, kind: FaultKind, **options: Any) -> Iterator[Rule]:
        """Apply ``Rule(kind, **options)`` for the duration of a ``with`` block."""
        added = self.add(Rule(kind, **options))
        try:
            yield added
        finally:
            self.remove(added)

    def _pick_rule(self, method: str, path: str, query: str, has_range: bool) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, query, has_range) and rule.decide():
                    rule.hits.append((method, path))
                    return rule
        return None

    # -- the log ----------------------------------------------------------------------------

    def _begin(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def _book(self, entry: LogEntry) -> None:
        with self._lock:
            self._in_flight -= 1
            self._requests += 1
            if entry.forwarded:
                self._forwarded += 1
            if entry.fault is not None and entry.fault != "noop":
                self._counts[entry.fault] += 1
            self._totals["request_bytes"] += entry.request_bytes
            self._totals["response_bytes"] += entry.response_bytes
            self._by["method"][entry.method] += 1
            self._by["status"]["reset" if entry.client_status is None else str(entry.client_status)] += 1
            self._by["kind"][entry.kind] += 1
            if len(self._log) < _LOG_LIMIT:
                self._log.append(entry)

    def _book_late(self, entry: LogEntry, status: int | None, error: str | None) -> None:
        with self._lock:
            entry.forwarded = status is not None
            entry.status, entry.error = status, error
            if status is not None:
                self._forwarded += 1

    def _book_proxy_error(self, text: str) -> None:
        with self._lock:
            self._proxy_errors.append(text)

    def counts(self) -> dict[str, int]:
        """Faults injected so far (since the last :meth:`reset_log`), per kind."""
        with self._lock:
            return dict(self._counts)

    def stats(self) -> dict[str, Any]:
        """Totals since the last :meth:`reset_log` (call :meth:`settle` first for exact numbers).

        Returns
        -------
        dict
            ``requests``, ``forwarded``, ``request_bytes``, ``response_bytes``
            (bodies relayed to the client), ``by_method``, ``by_status`` (what the
            client was answered; ``"reset"`` for no answer), ``by_kind``
            (:func:`request_kind`), ``in_flight`` (requests being handled now) and
            ``peak_in_flight`` (the most at once).
        """
        with self._lock:
            return {
                "requests": self._requests,
                "forwarded": self._forwarded,
                "request_bytes": self._totals["request_bytes"],
                "response_bytes": self._totals["response_bytes"],
                "by_method": dict(self._by["method"]),
                "by_status": dict(self._by["status"]),
                "by_kind": dict(self._by["kind"]),
                "in_flight": self._in_flight,
                "peak_in_flight": self._peak_in_flight,
            }

    def entries(self) -> list[LogEntry]:
        """The per-request log (a copy of the list; entries of pending late applies still change)."""
        with self._lock:
            return list(self._log)

    @property
    def forwarded(self) -> int:
        """Requests that reached the upstream."""
        with self._lock:
            return self._forwarded

    @property
    def requests(self) -> int:
        """Requests the proxy received."""
        with self._lock:
            return self._requests

    @property
    def proxy_errors(self) -> list[str]:
        """Unexpected failures of the proxy itself (should stay empty)."""
        with self._lock:
            return list(self._proxy_errors)

    def reset_log(self) -> None:
        """Forget the log and zero every counter (rules keep their own counts)."""
        with self._lock:
            self._log.clear()
            self._counts.clear()
            self._forwarded = self._requests = 0
            self._peak_in_flight = self._in_flight
            self._totals.clear()
            for counter in self._by.values():
                counter.clear()
            self._proxy_errors.clear()

    # -- late applies -----------------------------------------------------------------------

    def _apply_later(self, method: str, target: str, body: bytes, headers: dict[str, str], delay: float,
                     entry: LogEntry) -> None:
        def run() -> None:
            time.sleep(delay)
            connection = _Upstream(*self.upstream, timeout=120)
            try:
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                self._book_late(entry, response.status, None)
            except (http.client.HTTPException, OSError) as exc:
                self._book_late(entry, None, f"late apply: {type(exc).__name__}: {exc}")
            finally:
                connection.close()

        thread = threading.Thread(target=run, name="FaultProxy-late-apply", daemon=True)
        with self._lock:
            self._late = [t for t in self._late if t.is_alive()]
            self._late.append(thread)
        thread.start()

    @property
    def pending(self) -> int:
        """``late_apply`` forwards still waiting or in flight."""
        with self._lock:
            return sum(t.is_alive() for t in self._late)

    def settle(self, timeout: float = 30.0) -> bool:
        """Wait until every request is booked and every pending ``late_apply`` forward reached the upstream.

        A client can read the last byte of an answer before the proxy has
        booked the request, so call this before reading counts or the log.

        Parameters
        ----------
        timeout : float
            Seconds to wait at most.

        Returns
        -------
        bool
            True when nothing is pending any more.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                alive = [t for t in self._late if t.is_alive()]
                self._late = alive
                busy = self._in_flight > 0
            if not alive and not busy:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if alive:
                alive[0].join(timeout=min(left, 0.05) if busy else left)
            else:
                time.sleep(min(left, 0.001))

    # -- helpers ----------------------------------------------------------------------------

    def _rewrite(self, value: str) -> str:
        if self._server is None:
            return value
        own = f"127.0.0.1:{self.port}"
        value = value.replace(f"//{self._upstream_netloc}", f"//{own}")
        host, port = self.upstream
        if host != "127.0.0.1" or self._upstream_netloc != f"{host}:{port}":
            value = value.replace(f"//{host}:{port}", f"//{own}")
        return value


_SIGV4_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def access_key_of(authorization: str | None, query: str = "") -> str | None:
    """The access key ID of an S3 request: from a SigV4 or SigV2 ``Authorization`` header, or a presigned query.

    Examples
    --------
    >>> access_key_of("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/s3/aws4_request, "
    ...               "SignedHeaders=host, Signature=0")
    'AKIDEXAMPLE'
    >>> access_key_of(None, "X-Amz-Credential=AKID2/20250101/us-east-1/s3/aws4_request&X-Amz-Signature=0")
    'AKID2'
    """
    for text in (authorization or "", query):
        found = _SIGV4_CREDENTIAL.search(text.replace("X-Amz-Credential=", "Credential="))
        if found:
            return found.group(1)
    if authorization and authorization.startswith("AWS ") and ":" in authorization:
        return authorization[4:].split(":", 1)[0]
    return None


def kinds_summary(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    """Add up several :meth:`FaultProxy.counts` results (every kind present, zeros included)."""
    total: collections.Counter[str] = collections.Counter({kind: 0 for kind in FAULT_KINDS})
    for one in counts:
        total.update(one)
    return dict(total)

