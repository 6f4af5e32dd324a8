"""A counting HTTP proxy on 127.0.0.1: every benchmark client talks to the server through it.

Counting happens outside the clients, so objbutler, astropy + fsspec, zarr,
astrocut and a plain download are all measured the same way: requests, bytes
of response bodies (what was moved to the client), bytes of request bodies
(uploads) and one log line per request.

The proxy forwards to one upstream server (``--upstream http://127.0.0.1:PORT``),
keeps one upstream connection per client connection (keep-alive both ways),
streams response bodies through in 1 MiB pieces, and answers three control
paths that are not counted::

    GET  /__proxy__/stats   {"requests", "response_bytes", "request_bytes", "by_method", "by_status"}
    POST /__proxy__/reset   zero the counters and the log
    GET  /__proxy__/log     the per-request log since the last reset (JSON lines)

It is standard library only and runs as its own process
(``python benchmarks/proxy.py --upstream URL``; it prints its port on the first
line of stdout), so forwarding never competes with the measured client for the
GIL. :class:`ProxyProcess` starts and stops it from Python.

``--latency-ms N`` (``ProxyProcess(upstream, latency_ms=N)``) holds every
forwarded request N milliseconds before sending it upstream: a cloud round trip
in front of a loopback server. Requests wait concurrently (each connection has
its own thread), so the delay costs latency, not throughput. Control paths are
never delayed.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["CONTROL_PREFIX", "ProxyProcess", "serve"]

CONTROL_PREFIX = "/__proxy__/"
_PIECE = 1 << 20
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
)
_LOG_LIMIT = 200_000


class _Counters:
    """Thread-safe totals and the per-request log."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.in_flight = 0
            self.requests = 0
            self.response_bytes = 0
            self.request_bytes = 0
            self.by_method: collections.Counter[str] = collections.Counter()
            self.by_status: collections.Counter[str] = collections.Counter()
            self.log: list[dict[str, Any]] = []

    def start(self) -> None:
        with self.lock:
            self.in_flight += 1

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until no forwarded request is still being answered or booked.

        A client can read the last byte of a response before the proxy has
        booked it, so a stats call right after the client's call returns would
        miss it: stats and log wait here first.
        """
        deadline = time.monotonic() + timeout
        while self.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.0005)

    def abort(self) -> None:
        with self.lock:
            self.in_flight = max(0, self.in_flight - 1)

    def add(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.in_flight = max(0, self.in_flight - 1)
            self.requests += 1
            self.response_bytes += entry["response_bytes"]
            self.request_bytes += entry["request_bytes"]
            self.by_method[entry["method"]] += 1
            self.by_status[str(entry["status"])] += 1
            if len(self.log) < _LOG_LIMIT:
                self.log.append(entry)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "response_bytes": self.response_bytes,
                "request_bytes": self.request_bytes,
                "by_method": dict(self.by_method),
                "by_status": dict(self.by_status),
            }


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], upstream: str, latency_ms: float = 0.0) -> None:
        super().__init__(address, _Handler)
        if latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
        self.latency = latency_ms / 1000.0
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.counters = _Counters()


class _NoDelayConnection(http.client.HTTPConnection):
    """An upstream connection with Nagle's algorithm off (no 40 ms delayed-ACK stalls)."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self._upstream: _NoDelayConnection | None = None

    def finish(self) -> None:
        super().finish()
        if self._upstream is not None:
            self._upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the request log is kept in memory, not printed."""

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET  # noqa: N815

    # -- forwarding ---------------------------------------------------------------------

    def _handle(self) -> None:
        if self.path.startswith(CONTROL_PREFIX):
            self._control()
            return
        self.server.counters.start()
        try:
            self._forward()
        except BaseException:
            self.server.counters.abort()
            raise

    def _forward(self) -> None:
        started = time.perf_counter()
        body = self._read_body()
        if self.server.latency:
            time.sleep(self.server.latency)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        response = self._send_upstream(body, headers)
        status = response.status
        self.send_response_only(status, response.reason)
        length = response.getheader("Content-Length")
        no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        chunked = not no_body and length is None
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0 if no_body else self._relay(response, chunked)
        response.close()
        self.server.counters.add(
            {
                "t": round(started, 6),
                "method": self.command,
                "path": self.path[:200],
                "range": self.headers.get("Range"),
                "status": status,
                "response_bytes": sent,
                "request_bytes": len(body),
                "seconds": round(time.perf_counter() - started, 6),
            }
        )

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

    def _send_upstream(self, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = _NoDelayConnection(*self.server.upstream, timeout=300)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                return self._upstream.getresponse()
            except (http.client.RemoteDisconnected, ConnectionError, BrokenPipeError):
                # A kept-alive upstream connection the server closed: reconnect once.
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _relay(self, response: http.client.HTTPResponse, chunked: bool) -> int:
        sent = 0
        while True:
            piece = response.read(_PIECE)
            if not piece:
                break
            sent += len(piece)
            if chunked:
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            else:
                self.wfile.write(piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        return sent

    # -- control ------------------------------------------------------------------------

    def _control(self) -> None:
        self._read_body()
        action = self.path[len(CONTROL_PREFIX) :].split("?", 1)[0]
        counters = self.server.counters
        if action in ("stats", "log"):
            counters.settle()
        if action == "stats":
            payload = json.dumps(counters.snapshot()).encode()
        elif action == "reset":
            counters.reset()
            payload = b"{}"
        elif action == "log":
            with counters.lock:
                payload = "".join(json.dumps(entry) + "\n" for entry in counters.log).encode()
        else:
            self.send_error(404, f"unknown control path {self.path}")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def serve(upstream: str, port: int = 0, latency_ms: float = 0.0) -> None:
    """Run the proxy in this process until it is killed; print the port first.

    Parameters
    ----------
    upstream : str
        ``http://127.0.0.1:PORT`` of the server to forward to.
    port : int
        Port to listen on (0: a free one).
    latency_ms : float
        Milliseconds every forwarded request waits before going upstream.
    """
    server = _Server(("127.0.0.1", port), upstream, latency_ms)
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.5)


class ProxyProcess:
    """The counting proxy in a child process, in front of ``upstream``.

    Parameters
    ----------
    upstream : str
        ``http://127.0.0.1:PORT`` of the server.
    latency_ms : float
        Milliseconds added to every forwarded request (0: none).

    Attributes
    ----------
    endpoint : str
        ``http://127.0.0.1:PORT`` of the proxy: point every client here.
    """

    def __init__(self, upstream: str, latency_ms: float = 0.0) -> None:
        host = urllib.parse.urlsplit(upstream).hostname or ""
        if not (host == "localhost" or host.startswith("127.")):
            raise ValueError(f"the counting proxy only forwards to loopback servers, not {upstream!r}")
        self.upstream = upstream
        self.latency_ms = latency_ms
        self._popen = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--upstream", upstream, "--latency-ms", str(latency_ms)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        assert self._popen.stdout is not None
        line = self._popen.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"the counting proxy did not start (said {line!r})")
        self.endpoint = f"http://127.0.0.1:{int(line)}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", int(self.endpoint.rsplit(":", 1)[1])), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _call(self, action: str, method: str = "GET") -> bytes:
        request = urllib.request.Request(f"{self.endpoint}{CONTROL_PREFIX}{action}", method=method, data=None)
        with urllib.request.urlopen(request, timeout=60) as response:
            return bytes(response.read())

    @property
    def pid(self) -> int:
        """The proxy process's id (for CPU accounting)."""
        return int(self._popen.pid)

    def reset(self) -> None:
        """Zero the counters and the log."""
        self._call("reset", "POST")

    def stats(self) -> dict[str, Any]:
        """The counters since the last reset: ``requests``, ``response_bytes``, ``request_bytes``, ``by_method``, ..."""
        return dict(json.loads(self._call("stats")))

    def log(self) -> list[dict[str, Any]]:
        """Every request since the last reset (method, path, range, status, bytes, seconds)."""
        return [json.loads(line) for line in self._call("log").splitlines() if line.strip()]

    def stop(self) -> None:
        """End the child process (the one this object started, by its pid)."""
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        if self._popen.stdout is not None:
            self._popen.stdout.close()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of the server")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every forwarded request")
    args = parser.parse_args()
    serve(args.upstream, args.port, args.latency_ms)


if __name__ == "__main__":
    _main()
