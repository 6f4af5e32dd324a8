"""A listener where a stopped server was: it accepts and drops every connection, and counts them.

Tests of "the client stopped knocking" count connections instead of timing them.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit


class RefusingEndpoint:
    """Listen on ``endpoint``'s host and port; close each connection at once.

    Parameters
    ----------
    endpoint : str
        ``http://127.0.0.1:PORT`` of a server that has stopped.
    """

    def __init__(self, endpoint: str) -> None:
        parts = urlsplit(endpoint)
        if parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"expected http://127.0.0.1:PORT, got {endpoint!r}")
        self._address = (parts.hostname, parts.port)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections = 0

    @property
    def connections(self) -> int:
        """Connections accepted (and dropped) so far."""
        with self._lock:
            return self._connections

    def __enter__(self) -> RefusingEndpoint:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self._address)
        listener.listen(64)
        self._socket = listener
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._socket is not None
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed by __exit__
                return
            with self._lock:
                self._connections += 1
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            connection.close()  # linger 0: a reset, as from a crashed server

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
