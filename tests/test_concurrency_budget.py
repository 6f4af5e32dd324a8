"""One concurrency budget per store: concurrent and nested reads never exceed it (issue 17).

Against LocalStack behind a counting proxy (``FaultProxy`` with no rules): eight
threads cutting stamps at once and a 16-image ``get_cutouts_many`` on one S3
store with ``max_concurrency=2`` (and a connection pool of 2) must never run
more than two requests at once (counted at the proxy, i.e. on the wire), never
start more than two threads of the store's own, and never make urllib3 discard a
connection ("Connection pool is full").
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from conftest import Backend, s3_options
from objbutler_servers import ServerInfo

from objbutler import Box, Butler
from objbutler.ranges import CostModel
from objbutler.testing.faultproxy import FaultProxy

BUDGET = 2
CALLERS = 8
IMAGES = 16


class _Sampler:
    """Samples, on its own thread, the proxy's requests in flight and the threads the code under test started."""

    def __init__(self, proxy: FaultProxy, ignore: set[int]) -> None:
        self._proxy = proxy
        self._ignore = ignore
        self._stop = threading.Event()
        self.peak_in_flight = 0
        self.peak_threads = 0
        self.thread_names: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="budget-sampler", daemon=True)

    def _started_by_store(self, thread: threading.Thread) -> bool:
        # Not there before, not a test caller, not the proxy's (its handlers run process_request_thread).
        return (thread.ident not in self._ignore and not thread.name.startswith(("budget-", "FaultProxy"))
                and "process_request_thread" not in thread.name)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_in_flight = max(self.peak_in_flight, self._proxy._in_flight)
            started = [t for t in threading.enumerate() if self._started_by_store(t)]
            if len(started) > self.peak_threads:
                self.peak_threads = len(started)
                self.thread_names = {t.name for t in started}
            time.sleep(0.0005)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _image(seed: int) -> fits.PrimaryHDU:
    data = np.random.default_rng(seed).normal(size=(512, 512)).astype(np.float32)
    return fits.PrimaryHDU(data)


@pytest.fixture(scope="module")
def repo(localstack_server: ServerInfo, localstack_backend: Backend) -> Iterator[tuple[str, list[Any]]]:
    uri = f"{localstack_backend.base}/budget-{uuid.uuid4().hex[:8]}"
    writer = Butler.create(uri, **localstack_backend.options)
    refs = [writer.put(_image(i), "calexp", {"visit": i}, run="r", format="fits") for i in range(IMAGES)]
    yield uri, refs


@pytest.fixture
def proxied(localstack_server: ServerInfo, repo: tuple[str, list[Any]]) -> Iterator[tuple[Butler, FaultProxy]]:
    uri, _ = repo
    with FaultProxy(localstack_server.endpoint) as proxy:
        options = {**s3_options(localstack_server), "endpoint_url": proxy.url}
        butler = Butler(uri, max_concurrency=BUDGET, max_pool_connections=BUDGET, **options)
        butler.get_cutouts(repo[1][0], [Box(0, 0, 4, 4)])  # warm up: client, registry, imports
        yield butler, proxy


def _boxes() -> list[Box]:
    return [Box(x, y, x + 24, y + 24) for y in range(0, 480, 60) for x in range(0, 480, 120)]


def _run_threads(work: list[Any]) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(function: Any) -> None:
        try:
            function()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(w,), name=f"budget-caller-{i}") for i, w in enumerate(work)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def _check(sampler: _Sampler, butler: Butler, caplog: pytest.LogCaptureFixture) -> None:
    discarded = [r.getMessage() for r in caplog.records if "Connection pool is full" in r.getMessage()]
    assert not discarded, f"urllib3 discarded {len(discarded)} connections, e.g. {discarded[0]}"
    assert sampler.peak_in_flight <= BUDGET, f"{sampler.peak_in_flight} requests in flight at once"
    assert sampler.peak_threads <= BUDGET, f"the store ran {sampler.peak_threads} threads: {sampler.thread_names}"
    budget = butler.store.budget  # type: ignore[attr-defined]
    assert budget.limit == BUDGET and budget.threads <= BUDGET and budget.peak_in_flight <= BUDGET


def test_concurrent_cutout_calls_stay_within_the_budget(proxied: tuple[Butler, FaultProxy],
                                                       repo: tuple[str, list[Any]],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    butler, proxy = proxied
    refs = repo[1]
    # Many small reads per call: a model that wants 16 lanes, so a per-call pool would start 16 threads.
    cost = CostModel(latency=1e-4, bandwidth=1e8, concurrency=16)
    results: dict[int, list[Any]] = {}

    def cut(i: int) -> None:
        results[i] = butler.get_cutouts(refs[i], _boxes(), cost=cost)

    ignore = {t.ident for t in threading.enumerate() if t.ident is not None}
    with caplog.at_level(logging.WARNING, logger="urllib3"), _Sampler(proxy, ignore) as sampler:
        errors = _run_threads([lambda i=i: cut(i) for i in range(CALLERS)])
    assert not errors, errors
    assert proxy._in_flight == 0 and proxy.forwarded > CALLERS  # really went through the proxy
    expected = _image(3).data
    np.testing.assert_array_equal(results[3][5].data, expected[_boxes()[5].slices()])
    _check(sampler, butler, caplog)


def test_cutouts_many_stays_within_the_budget(proxied: tuple[Butler, FaultProxy], repo: tuple[str, list[Any]],
                                              caplog: pytest.LogCaptureFixture) -> None:
    butler, proxy = proxied
    refs = repo[1]
    ignore = {t.ident for t in threading.enumerate() if t.ident is not None}
    with caplog.at_level(logging.WARNING, logger="urllib3"), _Sampler(proxy, ignore) as sampler:
        result = butler.get_cutouts_many({ref: _boxes() for ref in refs}, max_images_in_flight=8)
    assert len(result) == IMAGES and all(len(stamps) == len(_boxes()) for stamps in result.values())
    np.testing.assert_array_equal(result[refs[7]][2].data, _image(7).data[_boxes()[2].slices()])
    _check(sampler, butler, caplog)
