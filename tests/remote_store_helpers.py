"""What the S3 and Swift store tests share: a scripted HTTP server on 127.0.0.1 and common checks.

The scripted server answers what each test tells it to (503 then 200, 403,
412, ...), so the real client library, the real error translation and the
real retry loop of a store run end to end; each backend's test module
subclasses :class:`ScriptedServer` with a ``store`` factory (and, for Swift,
the auth endpoint).
"""

from __future__ import annotations

import http.server
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

import pytest

from objbutler.errors import StoreError, TransientStoreError
from objbutler.stores import ObjectMeta, RetryPolicy
from objbutler.stores._remote import RemoteStore

__all__ = [
    "FAST_RETRY",
    "Answer",
    "ScriptedServer",
    "Seen",
    "assert_lost_create_recovered",
    "assert_not_retried",
    "assert_pickles_as_arguments",
    "assert_retried_until_exhausted",
    "clear_environment",
    "closed_port",
]

StoreT = TypeVar("StoreT", bound=RemoteStore)

FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0)


@dataclass
class Answer:
    """One scripted HTTP answer."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    """One request the server received (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class ScriptedServer:
    """A threaded HTTP server on 127.0.0.1 that answers from a script (or a default).

    Every request not answered by :meth:`unscripted` is recorded in ``seen``
    and gets the first answer of ``script``, or ``default(seen)`` once the
    script is used up. ``max_in_flight`` is the most requests it served at
    once. Use it as a context manager (it shuts down on exit).
    """

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.default: Callable[[Seen], Answer] = lambda seen: Answer(200, b"")
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self, answer: Answer) -> None:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in answer.headers:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.body)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                special = outer.unscripted(seen)
                if special is not None:
                    self._answer(special)
                    return
                with outer._lock:
                    outer.seen.append(seen)
                    answer = outer.script.pop(0) if outer.script else outer.default(seen)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    time.sleep(answer.delay)
                    self._answer(answer)
                finally:
                    with outer._lock:
                        outer.in_flight -= 1

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _serve  # noqa: N815

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def unscripted(self, seen: Seen) -> Answer | None:
        """Answer a request outside the script and without recording it (authentication), or None."""
        return None

    def store(self, **options: Any) -> RemoteStore:
        """A store on this server, with :data:`FAST_RETRY` unless ``options`` say otherwise."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def closed_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on (bound, then closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def clear_environment(monkeypatch: pytest.MonkeyPatch, *prefixes: str) -> pytest.MonkeyPatch:
    """Remove every environment variable whose name starts with one of ``prefixes`` (for this test)."""
    for name in list(os.environ):
        if name.startswith(prefixes):
            monkeypatch.delenv(name)
    return monkeypatch


def assert_retried_until_exhausted(
    scripted: ScriptedServer, answer: Answer, call: Callable[[RemoteStore], object]
) -> None:
    """Check that ``call(store)`` meeting ``answer`` every time is tried ``FAST_RETRY.attempts`` times, then fails."""
    scripted.default = lambda seen: answer
    with pytest.raises(TransientStoreError):
        call(scripted.store())
    assert len(scripted.seen) == FAST_RETRY.attempts


def assert_not_retried(scripted: ScriptedServer, answer: Answer, call: Callable[[RemoteStore], object]) -> None:
    """Check that ``answer`` is a final (not transient) error of ``call(store)``, sent once."""
    scripted.default = lambda seen: answer
    with pytest.raises(StoreError) as info:
        call(scripted.store())
    assert not isinstance(info.value, TransientStoreError)
    assert len(scripted.seen) == 1


def assert_lost_create_recovered(
    scripted: ScriptedServer, key: str, data: bytes, lost: Answer, refused: Answer, head: Answer
) -> ObjectMeta:
    """Check a create whose first PUT landed although its answer was lost, and return its result.

    The first ``PUT`` gets ``lost`` (a transient error), the retry ``refused``
    (the key is taken), and the ``HEAD`` that follows ``head`` (the object,
    holding our bytes): ``put_if_absent`` must succeed.
    """
    scripted.script = [lost, refused, head]
    meta = scripted.store().put_if_absent(key, data)
    assert [s.method for s in scripted.seen] == ["PUT", "PUT", "HEAD"]
    return meta


def assert_pickles_as_arguments(store: StoreT, client_module: bytes) -> StoreT:
    """Check that ``store`` pickles as its constructor arguments, without its client; return the copy."""
    payload = pickle.dumps(store)
    assert client_module not in payload
    clone: StoreT = pickle.loads(payload)
    assert type(clone) is type(store)
    assert (clone.uri, clone.max_concurrency, clone.retry) == (store.uri, store.max_concurrency, store.retry)
    return clone
