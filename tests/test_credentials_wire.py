"""Credentials never cross repositories on the wire.

Two repositories on two S3 endpoints with different access keys: one moto server behind two
recording proxies (:class:`~objbutler.testing.faultproxy.FaultProxy`, no rules), endpoint A for
repository A (key ``AKIDHOMEA``), endpoint B for repository B (key ``AKIDOTHERB``). Each proxy books
the access key every request was signed with (``Credential=AKID/...``). Whatever crosses from A to
B (a provenance walk, a multi-repository put, a clone), no request for B's bucket may carry A's key,
and the proxy in front of B must have seen B's requests (so the check is not vacuous).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import s3_options
from objbutler_servers import ServerInfo

from objbutler import Butler
from objbutler.cli import main
from objbutler.clone import clone
from objbutler.multi import put_many_repos
from objbutler.stores.s3 import S3Store
from objbutler.testing.faultproxy import FaultProxy, LogEntry

pytestmark = pytest.mark.servers

KEY_A, KEY_B = "AKIDHOMEA", "AKIDOTHERB"


@dataclasses.dataclass
class Endpoints:
    proxy_a: FaultProxy
    proxy_b: FaultProxy
    bucket_a: str
    bucket_b: str
    options_a: dict[str, Any]
    options_b: dict[str, Any]

    def uri_a(self) -> str:
        return f"s3://{self.bucket_a}/{uuid.uuid4().hex[:8]}"

    def uri_b(self) -> str:
        return f"s3://{self.bucket_b}/{uuid.uuid4().hex[:8]}"

    def reset(self) -> None:
        # A client can have its answer before the proxy books the request: settle first, or the setup's
        # last request (signed with the setup's key) lands in the log after the reset.
        for proxy in (self.proxy_a, self.proxy_b):
            assert proxy.settle(timeout=30.0)
            proxy.reset_log()

    def entries(self) -> list[LogEntry]:
        for proxy in (self.proxy_a, self.proxy_b):
            assert proxy.settle(timeout=30.0)
        return self.proxy_a.entries() + self.proxy_b.entries()

    def keys_for_bucket(self, bucket: str) -> set[str | None]:
        """The access keys of every request (on either endpoint) that touched ``bucket``."""
        return {e.access_key for e in self.entries() if e.path.strip("/").split("/")[0] == bucket}

    def check_no_crossing(self) -> None:
        """B's bucket saw only B's key, A's only A's; and both endpoints were used."""
        assert self.keys_for_bucket(self.bucket_b) == {KEY_B}, self.keys_for_bucket(self.bucket_b)
        assert self.keys_for_bucket(self.bucket_a) <= {KEY_A}, self.keys_for_bucket(self.bucket_a)
        assert {e.access_key for e in self.proxy_b.entries()} == {KEY_B}
        assert KEY_A not in {e.access_key for e in self.proxy_b.entries()}


@pytest.fixture
def endpoints(moto_server: ServerInfo) -> Iterator[Endpoints]:
    admin = s3_options(moto_server)
    bucket_a, bucket_b = f"home-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    for bucket in (bucket_a, bucket_b):
        list(S3Store(bucket, create_bucket=True, **admin).list())
    with FaultProxy(admin["endpoint_url"]) as proxy_a, FaultProxy(admin["endpoint_url"]) as proxy_b:
        region = admin["region"]
        yield Endpoints(
            proxy_a, proxy_b, bucket_a, bucket_b,
            {"endpoint_url": proxy_a.url, "access_key": KEY_A, "secret_key": "secret-a", "region": region},
            {"endpoint_url": proxy_b.url, "access_key": KEY_B, "secret_key": "secret-b", "region": region},
        )


def _image(value: float) -> np.ndarray:
    return np.full((8, 8), value, dtype="float32")


def _two_repositories(ep: Endpoints) -> tuple[Butler, Butler, Any, Any]:
    a = Butler.create(ep.uri_a(), **ep.options_a)
    b = Butler.create(ep.uri_b(), **ep.options_b)
    bias = b.put(_image(0.0), "bias", {"detector": 1}, run="calib")
    calexp = a.put(_image(1.0), "calexp", {"visit": 1}, run="proc", inputs=[bias], derived_from=[bias])
    return a, b, bias, calexp


def _environment_of(monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", options["region"])


def test_a_provenance_walk_opens_the_other_repository_with_its_own_keys(
        endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    """A home Butler with explicit keys; the environment configures B. Nothing of A's reaches B."""
    a, _, bias, calexp = _two_repositories(endpoints)
    _environment_of(monkeypatch, endpoints.options_b)
    home = Butler(a.uri, **endpoints.options_a)
    endpoints.reset()
    graph = home.provenance(calexp)
    assert graph.nodes[bias.id].resolved  # B was read ...
    endpoints.check_no_crossing()  # ... never with A's key (the old bug sent A's endpoint and key) ...
    assert endpoints.proxy_b.requests > 0  # ... through B's endpoint


def test_a_provenance_walk_through_a_resolver(endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, bias, calexp = _two_repositories(endpoints)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    endpoints.reset()
    graph = Butler(a.uri, **endpoints.options_a).provenance(
        calexp, resolver=lambda uri: Butler(uri, **endpoints.options_b))
    assert graph.nodes[bias.id].resolved and endpoints.proxy_b.requests > 0
    endpoints.check_no_crossing()
    endpoints.reset()
    graph = Butler(a.uri, **endpoints.options_a).provenance(calexp, repositories=[Butler(b.uri, **endpoints.options_b)])
    assert graph.nodes[bias.id].resolved and endpoints.proxy_b.requests > 0
    endpoints.check_no_crossing()


def test_the_cli_walk_signs_everything_with_the_environments_key(endpoints: Endpoints,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI has one source of credentials, the environment: every repository it opens, the one named on
    the command line and the ones the walk reaches, is signed with the environment's key, never another."""
    a, _, _, _ = _two_repositories(endpoints)
    _environment_of(monkeypatch, endpoints.options_b)  # the user's environment: B's endpoint and key
    endpoints.reset()
    result = CliRunner().invoke(main, ["provenance", a.uri, "calexp", "--data-id", "visit=1", "--run", "proc"])
    assert result.exit_code == 0, result.output
    assert "bias" in result.output and "unresolved" not in result.output
    assert {e.access_key for e in endpoints.entries()} == {KEY_B}
    assert endpoints.proxy_a.requests == 0 and endpoints.proxy_b.requests > 0


def test_a_multi_repository_put_signs_each_repository_with_its_own_key(endpoints: Endpoints) -> None:
    a = Butler.create(endpoints.uri_a(), **endpoints.options_a)
    b = Butler.create(endpoints.uri_b(), **endpoints.options_b, default_format="zarr")
    endpoints.reset()
    results = put_many_repos([(a, None), (b, "zarr")], _image(2.0), "calexp", {"visit": 1}, run="r")
    assert all(result.ok for result in results)
    assert endpoints.proxy_a.requests > 0 and endpoints.proxy_b.requests > 0
    endpoints.check_no_crossing()


def test_a_clone_reads_with_the_sources_key_and_writes_with_the_destinations(endpoints: Endpoints) -> None:
    a, _, _, _ = _two_repositories(endpoints)
    destination = endpoints.uri_b()
    endpoints.reset()
    report = clone(a.uri, destination, source_options=endpoints.options_a,
                   destination_options=endpoints.options_b, progress=False)
    assert report.ok and report.copied
    endpoints.check_no_crossing()
    assert endpoints.keys_for_bucket(endpoints.bucket_a) == {KEY_A}
