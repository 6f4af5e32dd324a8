"""Run ``objbutler serve`` as a child process on a free loopback port (for tests and benchmarks).

::

    with ServiceProcess("s3://bucket/repo", env=server_env) as service:
        requests.get(f"{service.url}/health")

The child binds port 0 and the port is read from uvicorn's start line, so two services never race
for a port. Its log (the access log included) goes to a file, ``service.log_path``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import requests

__all__ = ["ServiceProcess"]

_STARTED = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


class ServiceProcess:
    """``objbutler serve URI --host 127.0.0.1 --port 0`` in a child process.

    Parameters
    ----------
    uri : str
        The repository to serve.
    env : mapping, optional
        Extra environment (store endpoints and keys).
    token : str, optional
        Require this bearer token (written to a file passed as ``--token-file``).
    timeout : float
        Seconds to wait for the service to answer ``/health``.
    """

    def __init__(self, uri: str, env: Mapping[str, str] | None = None, token: str | None = None,
                 timeout: float = 60.0) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="objbutler-serve-")
        self.log_path = Path(self._dir.name) / "service.log"
        command = [sys.executable, "-m", "objbutler.cli", "serve", uri, "--host", "127.0.0.1", "--port", "0"]
        if token is not None:
            token_file = Path(self._dir.name) / "token"
            token_file.write_text(token + "\n")
            command += ["--token-file", str(token_file)]
        environment = {**os.environ, **(env or {})}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=environment)
        try:
            self.url = self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"objbutler serve exited with {self.process.returncode}:\n{self.log()}")
            found = _STARTED.search(self.log())
            if found:
                url = f"http://127.0.0.1:{found.group(1)}"
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    return url
            time.sleep(0.1)
        raise TimeoutError(f"objbutler serve did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """The service's log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        """True while the child process runs."""
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the service (SIGTERM, then SIGKILL after 10 s) and remove its files."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self._dir.cleanup()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
