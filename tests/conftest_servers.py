"""Session-scoped fixtures that run real object-store servers on 127.0.0.1.

A pytest plugin: load it from ``tests/conftest.py`` with
``pytest_plugins = ["conftest_servers"]``. Each fixture installs its server if
missing (slow only the first time), starts it once per session, yields its
:class:`~objbutler_servers.ServerInfo` and stops it at the end. With
``OBJBUTLER_SKIP_SERVERS=1`` in the environment they skip instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from objbutler_servers import RunningServer, ServerInfo, start_localstack, start_moto, start_swift


def _serve(start: Callable[[], RunningServer]) -> Iterator[ServerInfo]:
    if os.environ.get("OBJBUTLER_SKIP_SERVERS") == "1":
        pytest.skip("OBJBUTLER_SKIP_SERVERS=1")
    with start() as server:
        yield server.info


@pytest.fixture(scope="session")
def localstack_server() -> Iterator[ServerInfo]:
    """LocalStack S3; ``info.env`` has ``AWS_ENDPOINT_URL`` and test keys."""
    yield from _serve(start_localstack)


@pytest.fixture(scope="session")
def swift_server() -> Iterator[ServerInfo]:
    """Single-node Swift; ``info.env`` has ``ST_AUTH``/``ST_USER``/``ST_KEY``, ``info.s3_env`` its s3api."""
    yield from _serve(start_swift)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[ServerInfo]:
    """moto's S3 server in a thread of the test process; ``info.env`` as for LocalStack."""
    yield from _serve(start_moto)
