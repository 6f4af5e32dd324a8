"""Shared fixtures: real servers (see conftest_servers.py) and repository backends built on them."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

try:
    from objbutler_servers import ServerInfo
except ModuleNotFoundError as exc:  # the README's test command installs it; say so instead of a traceback
    raise pytest.UsageError("the tests run their servers through the development package in localstack/: "
                            "python3 -m pip install -e './localstack' (README.md, Quick start)") from exc

pytest_plugins = ["conftest_servers"]

SLOW_FOLDS = float(os.environ.get("OBJBUTLER_SLOW_FOLDS") or 0)
"""Seconds every background fold of this process waits before it starts (a timing stress; 0: none).

``OBJBUTLER_SLOW_FOLDS=0.05 python3 -m pytest ...`` shows the tests that depend on when a fold lands:
a test that checks what compaction did must wait for the folds (``finish_folds``) or fold inline.
Folds in child processes are not slowed.
"""


@pytest.fixture(autouse=True)
def _slow_background_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    if SLOW_FOLDS <= 0:
        return
    from objbutler.registry import Registry

    fold = Registry._fold_until_caught_up

    def late_fold(self: Registry, folder: Registry) -> None:
        time.sleep(SLOW_FOLDS)
        fold(self, folder)

    monkeypatch.setattr(Registry, "_fold_until_caught_up", late_fold)


@dataclasses.dataclass
class Backend:
    """Where to make repositories for a test: a URI base and the store options to reach it."""

    name: str
    base: str
    options: dict[str, Any]
    multiprocess: bool = True

    def new_uri(self) -> str:
        """A fresh, empty location under the base."""
        return f"{self.base}/{uuid.uuid4().hex[:12]}"


def s3_options(info: ServerInfo) -> dict[str, Any]:
    """S3Store options for a server's endpoint (explicit, so worker processes need no environment)."""
    env = info.env
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "access_key": env["AWS_ACCESS_KEY_ID"],
        "secret_key": env["AWS_SECRET_ACCESS_KEY"],
        "region": env.get("AWS_DEFAULT_REGION", "us-east-1"),
    }


def swift_options(info: ServerInfo) -> dict[str, Any]:
    """SwiftStore options for a Swift server (v1 auth)."""
    env = info.env
    return {"auth_url": env["ST_AUTH"], "user": env["ST_USER"], "key": env["ST_KEY"]}


@pytest.fixture(scope="session")
def localstack_backend(localstack_server: ServerInfo) -> Backend:
    from objbutler.stores.s3 import S3Store

    options = s3_options(localstack_server)
    bucket = f"repos-{uuid.uuid4().hex[:8]}"
    list(S3Store(bucket, create_bucket=True, **options).list())
    return Backend("localstack", f"s3://{bucket}", options)


@pytest.fixture(scope="session")
def moto_backend(moto_server: ServerInfo) -> Backend:
    from objbutler.stores.s3 import S3Store

    options = s3_options(moto_server)
    bucket = f"repos-{uuid.uuid4().hex[:8]}"
    list(S3Store(bucket, create_bucket=True, **options).list())
    return Backend("moto", f"s3://{bucket}", options, multiprocess=False)


@pytest.fixture(scope="session")
def swift_backend(swift_server: ServerInfo) -> Backend:
    from objbutler.stores.swift import SwiftStore

    options = swift_options(swift_server)
    container = f"repos-{uuid.uuid4().hex[:8]}"
    list(SwiftStore(container, create_container=True, **options).list())
    return Backend("swift", f"swift://{container}", options)


@pytest.fixture
def local_backend(tmp_path: Path) -> Backend:
    return Backend("local", str(tmp_path / "repos"), {})


@pytest.fixture(params=["local", "localstack", "swift"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each repository backend the registry must be correct on."""
    return request.getfixturevalue(f"{request.param}_backend")
