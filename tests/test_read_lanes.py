"""Read lanes that follow the store: a pure model of measured numbers, and a probe cached per endpoint (issue 17)."""

from __future__ import annotations

import collections
import time
import uuid

import numpy as np
import pytest
from astropy.io import fits
from conftest import Backend, s3_options
from objbutler_servers import ServerInfo

from objbutler import Box, Butler
from objbutler.ranges import DEFAULT_BANDWIDTH, CostModel, lanes_for, plan_reads
from objbutler.stores import _endpoint as endpoint_module
from objbutler.stores import clear_endpoint_profiles, endpoint_profile
from objbutler.stores.s3 import S3Store
from objbutler.testing.faultproxy import FaultProxy

# -- the pure model ------------------------------------------------------------------------


def test_higher_latency_means_more_lanes_up_to_the_budget() -> None:
    lanes = [lanes_for(latency, service_time=0.001, budget=64) for latency in (0.001, 0.005, 0.02, 0.05, 0.2)]
    assert lanes == sorted(lanes) and lanes[0] == 1 and lanes[-1] == 64
    assert lanes_for(0.05, 0.001, budget=64) == 50
    assert lanes_for(0.05, 0.001, budget=16) == 16  # the store's budget caps it
    assert lanes_for(0.05, 0.001, budget=200) == 50  # no fixed cap of 16 any more


def test_a_server_that_shares_our_cpus_gets_one_lane() -> None:
    # Four at once take four times as long: the service time is the latency.
    assert lanes_for(0.003, 0.003, budget=16) == 1
    assert lanes_for(0.003, 0.0015, budget=16) == 2


def test_bandwidth_bound_means_fewer_larger_reads() -> None:
    latency_bound = CostModel.measured(0.05, 0.001, budget=64, bandwidth=50e6)
    bandwidth_bound = CostModel.measured(0.05, 0.001, budget=64, bandwidth=50e6, link_bandwidth=100e6)
    assert latency_bound.concurrency == 50 and bandwidth_bound.concurrency == 2
    needs = [(i * 300_000, i * 300_000 + 200_000) for i in range(400)]  # 120 MB span, 80 MB needed
    many, few = plan_reads(needs, latency_bound), plan_reads(needs, bandwidth_bound)
    assert len(few.blocks) < len(many.blocks)
    assert max(b.length for b in few.blocks) > max(b.length for b in many.blocks)
    assert few.nbytes >= sum(b - a for a, b in needs) and many.nbytes >= sum(b - a for a, b in needs)


def test_lanes_for_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        lanes_for(0.01, 0.0, budget=4)
    with pytest.raises(ValueError):
        lanes_for(0.01, 0.001, budget=0)


def test_a_local_store_is_not_probed(tmp_path: object) -> None:
    from objbutler.stores.local import LocalStore

    store = LocalStore(str(tmp_path))
    assert endpoint_profile(store) is None
    assert CostModel.for_store(store) == CostModel.local()


# -- the probe, on a real server ---------------------------------------------------------------


@pytest.fixture
def proxy(localstack_server: ServerInfo) -> object:
    clear_endpoint_profiles()
    with FaultProxy(localstack_server.endpoint) as running:
        yield running
    clear_endpoint_profiles()


def _store(info: ServerInfo, proxy: FaultProxy, bucket: str, prefix: str, budget: int) -> S3Store:
    return S3Store(bucket, prefix, max_concurrency=budget, **{**s3_options(info), "endpoint_url": proxy.url})


def _reads(proxy: FaultProxy, since: int) -> dict[str, int]:
    """HEADs and GETs the proxy saw after its first ``since`` requests (a PUT may be booked late)."""
    deadline = time.monotonic() + 10
    while proxy._in_flight and time.monotonic() < deadline:  # a request is booked once its answer is sent
        time.sleep(0.01)
    return dict(collections.Counter(e.method for e in proxy.entries()[since:] if e.method in ("HEAD", "GET")))


def test_the_probe_is_cached_per_endpoint(localstack_server: ServerInfo, localstack_backend: Backend,
                                          proxy: FaultProxy) -> None:
    bucket = localstack_backend.base.removeprefix("s3://")
    first = _store(localstack_server, proxy, bucket, f"lanes-{uuid.uuid4().hex[:8]}", 4)
    first.put("big", bytes(1 << 20))
    sent = len(proxy.entries())
    profile = endpoint_profile(first, "big")
    assert profile is not None and profile.width == 4  # bandwidth: None if the read hid in the latency's noise
    assert _reads(proxy, sent) == {"HEAD": 3 + 4, "GET": 1}  # sequential HEADs, concurrent HEADs, one range

    # Another store (another prefix) on the same endpoint: the cached numbers, no request.
    second = _store(localstack_server, proxy, bucket, "elsewhere", 4)
    sent = len(proxy.entries())
    assert endpoint_profile(second) == profile
    model = CostModel.for_store(second)
    assert _reads(proxy, sent) == {}
    assert model.latency == profile.latency and model.bandwidth == (profile.bandwidth or DEFAULT_BANDWIDTH)
    assert 1 <= model.concurrency <= 4

    # A wider budget on the endpoint: a narrow probe cannot show more lanes help, so it probes again.
    wide = _store(localstack_server, proxy, bucket, "elsewhere", 8)
    sent = len(proxy.entries())
    again = endpoint_profile(wide)
    assert again is not None and again.width == 8 and _reads(proxy, sent) == {"HEAD": 3 + 8}
    assert again.bandwidth == profile.bandwidth  # kept from the first probe
    assert CostModel.for_store(wide).concurrency <= 8

    # Another endpoint (the server itself, not the proxy) has its own profile.
    direct = S3Store(bucket, "elsewhere", max_concurrency=4, **s3_options(localstack_server))
    runs = endpoint_module.probes_run
    assert endpoint_profile(direct) is not None and endpoint_module.probes_run == runs + 1


def test_an_explicit_cost_is_not_replaced_by_a_probe(localstack_server: ServerInfo, localstack_backend: Backend,
                                                     proxy: FaultProxy) -> None:
    uri = f"{localstack_backend.base}/lanes-{uuid.uuid4().hex[:8]}"
    data = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    ref = Butler.create(uri, **localstack_backend.options).put(fits.PrimaryHDU(data), "calexp", {"visit": 1},
                                                               run="r", format="fits")
    butler = Butler(uri, **{**s3_options(localstack_server), "endpoint_url": proxy.url})
    runs = endpoint_module.probes_run
    [stamp] = butler.get_cutouts(ref, [Box(3, 4, 10, 12)], cost=CostModel.cloud())
    np.testing.assert_array_equal(stamp.data, data[4:12, 3:10])
    assert endpoint_module.probes_run == runs
    butler.get_cutouts(ref, [Box(3, 4, 10, 12)])  # no cost: the store is measured, once
    butler.get_cutouts(ref, [Box(3, 4, 10, 12)])
    assert endpoint_module.probes_run == runs + 1
