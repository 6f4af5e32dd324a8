"""Measured latency, service time and bandwidth of a store's endpoint, probed once and cached per process.

The read planner (:mod:`objbutler.ranges`) is pure: it takes a cost model of
numbers. This module is where the numbers come from for a remote store,
instead of a guess from its host name:

``latency``
    The fastest of a few sequential ``HEAD`` requests (of the object about to
    be read, else of a probe key that need not exist: a 404 is a round trip too).
``service_time``
    From the wall time of ``width`` concurrent ``HEAD`` requests (``width`` the
    store's concurrency budget), taken as ``latency + (width - 1) * service_time``:
    the endpoint's time per request when it is kept busy. A server sharing this machine's CPUs answers four at
    once four times slower (service time = latency: one lane is all it can use);
    a cloud endpoint answers them in about the time of one (service time =
    latency / width: every lane helps).
``bandwidth``
    Bytes per second of one stream, from one ranged read of up to 1 MiB of a
    real object (the first one read); None until an object of at least 64 KiB
    has been read in a time visibly longer than the latency (the planner then
    assumes 100 MB/s).

A profile is cached per endpoint (scheme and endpoint URL) for
:data:`PROFILE_TTL` seconds in this process, and measured again when a store
with a larger budget than the probe's width asks (a narrow probe cannot show
that more lanes help). The probe costs ``3 + width`` small requests and, once,
one read of up to 1 MiB.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from typing import Any

from objbutler.errors import ObjButlerError
from objbutler.stores._concurrency import budget_of
from objbutler.stores._probe import PROBE_PREFIX
from objbutler.stores._remote import RemoteStore

__all__ = ["PROFILE_TTL", "EndpointProfile", "clear_endpoint_profiles", "endpoint_profile", "measure_endpoint"]

PROFILE_TTL = 600.0
"""Seconds a measured profile is trusted before it is measured again."""

_SEQUENTIAL = 3
_BANDWIDTH_BYTES = 1 << 20
_MIN_BANDWIDTH_BYTES = 64 << 10
_VISIBLE = 0.25
"""A transfer shorter than this fraction of the latency is not measured (round trips vary by more)."""
_PROBE_KEY = f"{PROBE_PREFIX}latency"


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointProfile:
    """What a probe measured of one endpoint.

    Parameters
    ----------
    latency : float
        Seconds of one small request, alone.
    service_time : float
        Seconds per request with ``width`` in flight.
    width : int
        Requests in flight during the concurrent probe.
    bandwidth : float or None
        Bytes per second of one stream; None if not measured yet.
    measured_at : float
        ``time.monotonic()`` of the probe.
    """

    latency: float
    service_time: float
    width: int
    bandwidth: float | None
    measured_at: float


_lock = threading.Lock()
_profiles: dict[str, EndpointProfile] = {}
probes_run = 0
"""Probes run in this process (a counter for tests and benchmarks)."""


def _remote_of(store: object) -> RemoteStore | None:
    seen = 0
    while store is not None and seen < 16:
        if isinstance(store, RemoteStore):
            return store
        store = getattr(store, "inner", None)
        seen += 1
    return None


def endpoint_id(store: RemoteStore) -> str:
    """The endpoint a store talks to, as a cache key: its scheme and endpoint (or auth) URL."""
    scheme = store.uri.split("://", 1)[0]
    explicit = getattr(store, "endpoint_url", None) or getattr(store, "auth_url", None)
    if explicit:
        return f"{scheme} {explicit}"
    if scheme == "swift":
        return f"swift {os.environ.get('ST_AUTH') or os.environ.get('OS_AUTH_URL') or ''}"
    return f"{scheme} {getattr(store, 'region', '') or ''}"  # the provider's default endpoint of a region


def _timed(function: Any) -> float:
    start = time.perf_counter()
    with contextlib.suppress(ObjButlerError):  # a 404 (or 403) answer is a round trip too
        function()
    return time.perf_counter() - start


def measure_endpoint(store: RemoteStore, sample_key: str | None = None, width: int | None = None) -> EndpointProfile:
    """Probe a remote store's endpoint (see the module docstring).

    Parameters
    ----------
    store : RemoteStore
        The store; needs only read permission (a missing probe key is fine).
    sample_key : str, optional
        An object to time: its ``HEAD`` for latency, a read of up to 1 MiB for bandwidth.
    width : int, optional
        Requests in flight for the service time; the store's budget by default.

    Returns
    -------
    EndpointProfile
        The measurements.
    """
    global probes_run
    budget = budget_of(store)
    width = max(1, min(width or budget.limit, budget.limit))
    key = sample_key or _PROBE_KEY
    latency = min(_timed(lambda: store.head(key)) for _ in range(_SEQUENTIAL))
    start = time.perf_counter()
    budget.map(lambda _: _timed(lambda: store.head(key)), range(width), width)
    wall = time.perf_counter() - start
    # n requests at once take about latency + (n - 1) * service_time: the first pays the round trip,
    # the others queue behind the endpoint's own work (a server on our CPUs: service_time = latency).
    service_time = (wall - latency) / (width - 1) if width > 1 else latency
    bandwidth = _measure_bandwidth(store, sample_key, latency) if sample_key else None
    probes_run += 1
    return EndpointProfile(max(latency, 1e-6), max(service_time, 1e-6), width, bandwidth, time.monotonic())


def _measure_bandwidth(store: RemoteStore, key: str, latency: float) -> float | None:
    """Bytes/s of one read of up to 1 MiB; None when too small, or when its transfer hides in the latency's noise."""
    start = time.perf_counter()
    try:
        (data,) = store.get_ranges(key, [(0, _BANDWIDTH_BYTES)])
    except ObjButlerError:
        return None
    transfer = time.perf_counter() - start - latency
    if len(data) < _MIN_BANDWIDTH_BYTES or transfer < _VISIBLE * latency:
        return None  # e.g. 1 MiB at 100 MB/s behind 50 ms: 10 ms of transfer is not measurable
    return len(data) / transfer


def endpoint_profile(store: object, sample_key: str | None = None) -> EndpointProfile | None:
    """The cached profile of a store's endpoint, probing it when there is none or it is stale.

    Parameters
    ----------
    store : object
        A store (or a wrapper around one). Stores without an endpoint (local,
        memory, anything that is no :class:`RemoteStore`) have no profile.
    sample_key : str, optional
        An object of the store to measure bandwidth on, if not measured yet.

    Returns
    -------
    EndpointProfile or None
        None for a store without an endpoint.
    """
    remote = _remote_of(store)
    if remote is None:
        return None
    ident = endpoint_id(remote)
    with _lock:  # one probe at a time: concurrent first readers wait for it rather than all probing
        known = _profiles.get(ident)
        fresh = known is not None and time.monotonic() - known.measured_at < PROFILE_TTL
        wide = known is not None and known.width >= budget_of(remote).limit
        if known is not None and fresh and wide:
            if known.bandwidth is None and sample_key is not None:
                measured = _measure_bandwidth(remote, sample_key, known.latency)
                if measured is not None:
                    known = dataclasses.replace(known, bandwidth=measured)
                    _profiles[ident] = known
            return known
        profile = measure_endpoint(remote, sample_key)
        if profile.bandwidth is None and known is not None and fresh:
            profile = dataclasses.replace(profile, bandwidth=known.bandwidth)
        _profiles[ident] = profile
        return profile


def clear_endpoint_profiles() -> None:
    """Forget every cached profile (the next read probes again)."""
    with _lock:
        _profiles.clear()
