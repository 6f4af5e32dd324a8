"""The benchmark's counting proxy: a FaultProxy with no fault rules, in a process of its own.

Every benchmark client talks to the server through it, so objbutler, astropy +
fsspec, zarr, astrocut and a plain download are all counted the same way,
outside the clients: requests by method, by status and by kind (``get``,
``range-get``, ``list``, ``put``, ``put-if-absent``, ...), bytes of response
bodies (what was moved to the client), bytes of request bodies (uploads),
requests in flight (now and the peak since the last reset) and one log entry
per request.

The relay is :class:`objbutler.testing.faultproxy.FaultProxy` (one relay
implementation for tests and benchmarks); this module only runs it in a child
process, so forwarding never competes with the measured client for the GIL, and
answers three control paths on a second port of its own (never counted,
never delayed)::

    GET  /stats   FaultProxy.stats(): requests, response_bytes, request_bytes, by_method,
                  by_status, by_kind, in_flight, peak_in_flight
    POST /reset   zero the counters and the log
    GET  /log     the per-request log since the last reset (JSON lines)

A cloud profile (:mod:`benchmarks.profiles`) is the same proxy with
``--latency-ms N`` (every forwarded request waits N ms first: a round trip;
requests wait concurrently, so the delay costs latency, not throughput) and
``--bandwidth B`` (each client connection moves at most B bytes per second in
each direction, by pacing the writes of request and response bodies).

Run it as ``python -m benchmarks.proxy --upstream URL`` (it prints the proxy
port and the control port on its first line), or from Python with
:class:`ProxyProcess`.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from objbutler.testing.faultproxy import FaultProxy

__all__ = ["ProxyProcess", "serve"]

_ROOT = Path(__file__).resolve().parent.parent


class _Control(http.server.BaseHTTPRequestHandler):
    """``/stats``, ``/reset`` and ``/log`` of the proxy in this process."""

    protocol_version = "HTTP/1.1"
    proxy: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:
        """Silent."""

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        action = self.path.strip("/").split("?", 1)[0]
        if action in ("stats", "log"):
            self.proxy.settle(5.0)  # a client may have read its answer before the proxy booked it
        if action == "stats":
            payload = json.dumps(self.proxy.stats()).encode()
        elif action == "reset":
            self.proxy.reset_log()
            payload = b"{}"
        elif action == "log":
            payload = "".join(json.dumps(dataclasses.asdict(e)) + "\n" for e in self.proxy.entries()).encode()
        else:
            self.send_error(404, f"unknown control path {self.path}")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_GET  # noqa: N815


def serve(upstream: str, latency_ms: float = 0.0, bandwidth: float | None = None) -> None:
    """Run the proxy and its control port in this process until it is killed.

    The first line printed is ``PROXY_PORT CONTROL_PORT``.

    Parameters
    ----------
    upstream : str
        ``http://127.0.0.1:PORT`` of the server to forward to.
    latency_ms : float
        Milliseconds every forwarded request waits before going upstream.
    bandwidth : float, optional
        Bytes per second per client connection and direction (None: no cap).
    """
    proxy = FaultProxy(upstream, latency=latency_ms / 1000.0, bandwidth=bandwidth).start()
    handler = type("Control", (_Control,), {"proxy": proxy})
    control = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    control.daemon_threads = True
    print(f"{proxy.port} {control.server_address[1]}", flush=True)
    try:
        control.serve_forever(poll_interval=0.5)
    finally:
        proxy.stop(drain=0)


class ProxyProcess:
    """The counting proxy in a child process, in front of ``upstream``.

    Parameters
    ----------
    upstream : str
        ``http://127.0.0.1:PORT`` of the server (loopback only).
    latency_ms : float
        Milliseconds added to every forwarded request (0: none).
    bandwidth : float, optional
        Bytes per second per client connection and direction (None: no cap).

    Attributes
    ----------
    endpoint : str
        ``http://127.0.0.1:PORT`` of the proxy: point every client here.
    """

    def __init__(self, upstream: str, latency_ms: float = 0.0, bandwidth: float | None = None) -> None:
        host = urllib.parse.urlsplit(upstream).hostname or ""
        if not (host == "localhost" or host.startswith("127.")):
            raise ValueError(f"the counting proxy only forwards to loopback servers, not {upstream!r}")
        self.upstream = upstream
        self.latency_ms = latency_ms
        self.bandwidth = bandwidth
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        command = [sys.executable, "-m", "benchmarks.proxy", "--upstream", upstream, "--latency-ms", str(latency_ms)]
        if bandwidth is not None:
            command += ["--bandwidth", str(bandwidth)]
        self._popen = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
        assert self._popen.stdout is not None
        ports = self._popen.stdout.readline().split()
        if len(ports) != 2 or not all(p.isdigit() for p in ports):
            self.stop()
            raise RuntimeError(f"the counting proxy did not start (said {b' '.join(ports)!r})")
        self.endpoint = f"http://127.0.0.1:{int(ports[0])}"
        self._control = f"http://127.0.0.1:{int(ports[1])}"
        self._wait_ready(int(ports[0]))

    @staticmethod
    def _wait_ready(port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _call(self, action: str, method: str = "GET") -> bytes:
        request = urllib.request.Request(f"{self._control}/{action}", method=method, data=None)
        with urllib.request.urlopen(request, timeout=60) as response:
            return bytes(response.read())

    @property
    def pid(self) -> int:
        """The proxy process's id (for CPU accounting)."""
        return int(self._popen.pid)

    def reset(self) -> None:
        """Zero the counters and the log (the in-flight peak restarts from the requests in flight now)."""
        self._call("reset", "POST")

    def stats(self) -> dict[str, Any]:
        """The counters since the last reset (see :meth:`FaultProxy.stats`)."""
        return dict(json.loads(self._call("stats")))

    def log(self) -> list[dict[str, Any]]:
        """Every request since the last reset (:class:`~objbutler.testing.faultproxy.LogEntry` fields)."""
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
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of the server")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every forwarded request")
    parser.add_argument("--bandwidth", type=float, default=None,
                        help="bytes per second per client connection and direction (default: no cap)")
    args = parser.parse_args()
    serve(args.upstream, args.latency_ms, args.bandwidth)


if __name__ == "__main__":
    _main()
