"""The ``service`` suite: ``objbutler serve`` under load, single stamps and object histories.

A repository of PVIs (:mod:`objbutler.testing.skyfield`, every one holding the field centre) is
served by ``objbutler serve`` in a child process; ``clients`` threads, each with its own HTTP
session, send ``requests`` requests each, as fast as answers come back:

``stamp``
    SODA sync, ``ID`` = a random PVI, ``CIRCLE`` = 5 arcsec around a random point near the field
    centre (one FITS stamp: one range read).
``history``
    ``/api/cutout/sky`` at a random point near the centre, 31-px stamps from every PVI holding it
    (one range read per PVI), as multi-extension FITS.

Each profile runs the clients twice: ``stamp only`` (every request a stamp: what one cutout costs
when the service is not busy with histories) and ``mixed`` (one request in four a history). Each
profile runs against the same object server: ``direct`` (the service reads LocalStack through the
counting proxy) and ``20ms`` (through a second proxy that holds every request 20 ms: a cloud round
trip). A stamp costs two store requests (the registry's log-tail listing, the range read), a
history one listing and one range read per image. Rows give p50 (``seconds``) and p99 per kind and
profile, the errors (any answer but 200) and the throughput. Rubin's cutout service reports about
0.5 s per cutout (one ID, one stencil per job, through a queue and its Butler); that figure is a
row of its own, labelled as reported, not measured here.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.measure import Row
from benchmarks.targets import Target

__all__ = ["ServiceSettings", "run_service", "service_settings"]

SUITE = "service"
RUBIN_SECONDS_PER_CUTOUT = 0.5
HISTORY_EVERY = 4


@dataclasses.dataclass
class ServiceSettings:
    """How big the service suite runs."""

    pvis: int
    shape: tuple[int, int]
    clients: int
    requests: int
    latency_ms: float = 20.0


def service_settings(quick: bool, smoke: bool = False) -> ServiceSettings:
    """Full and quick: 10 clients x 200 requests over 50 PVIs of 256 x 256 (quick: 10 x 40, 20 PVIs)."""
    if smoke:
        return ServiceSettings(6, (96, 96), 10, 8)
    if quick:
        return ServiceSettings(20, (128, 128), 10, 40)
    return ServiceSettings(50, (256, 256), 10, 200)


def _env(options: dict[str, Any]) -> dict[str, str]:
    """The environment that points ``objbutler serve`` at the store the options describe."""
    if "endpoint_url" in options:
        return {"AWS_ENDPOINT_URL": options["endpoint_url"], "AWS_ACCESS_KEY_ID": options.get("access_key") or "",
                "AWS_SECRET_ACCESS_KEY": options.get("secret_key") or "",
                "AWS_DEFAULT_REGION": options.get("region") or "us-east-1"}
    if "auth_url" in options:
        return {"ST_AUTH": options["auth_url"], "ST_USER": options["user"], "ST_KEY": options["key"]}
    return {}


@dataclasses.dataclass
class _Outcome:
    kind: str
    seconds: float
    status: int


def _load(url: str, ids: list[str], settings: ServiceSettings, seed: int,
          history_every: int | None = HISTORY_EVERY) -> tuple[list[_Outcome], float]:
    """Every client's requests; returns the outcomes and the wall time."""
    import requests

    outcomes: list[_Outcome] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        mine = []
        with requests.Session() as session:
            for index in range(settings.requests):
                ra = 150.1 + rng.uniform(-1e-3, 1e-3)  # within 3.6 arcsec of the centre every PVI holds
                dec = 2.2 + rng.uniform(-1e-3, 1e-3)
                if history_every and index % history_every == history_every - 1:
                    kind = "history"
                    params = {"POS": f"{ra} {dec}", "TYPE": "calexp", "SIZE": "31"}
                    path = "/api/cutout/sky"
                else:
                    kind = "stamp"
                    params = {"ID": rng.choice(ids), "CIRCLE": f"{ra} {dec} {5 / 3600}"}
                    path = "/api/cutout/sync"
                started = time.perf_counter()
                try:
                    status = session.get(url + path, params=params, timeout=120).status_code
                except requests.RequestException:
                    status = 0
                mine.append(_Outcome(kind, time.perf_counter() - started, status))
        with lock:
            outcomes.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(settings.clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, time.perf_counter() - started


def _rows(profile: str, mix: str, outcomes: list[_Outcome], wall: float, settings: ServiceSettings) -> list[Row]:
    rows = []
    for kind in ("stamp", "history"):
        mine = [o for o in outcomes if o.kind == kind]
        if not mine:
            continue
        label = f"{kind} ({mix}, {profile})"
        seconds = np.array([o.seconds for o in mine])
        errors = sum(o.status != 200 for o in mine)
        p50, p99 = float(np.quantile(seconds, 0.5)), float(np.quantile(seconds, 0.99))
        rows.append(Row(SUITE, label, "objbutler serve", len(mine), p50, None, None,
                        min=float(seconds.min()), max=float(seconds.max()), reps=len(mine), kind="objbutler",
                        error=f"{errors} of {len(mine)} requests failed: statuses "
                              f"{sorted(collections.Counter(o.status for o in mine if o.status != 200).items())}"
                        if errors else None,
                        extra={"format": f"fits/{profile}", "profile": profile, "mix": mix, "p50": p50, "p99": p99,
                               "errors": errors, "clients": settings.clients,
                               "requests_per_second": round(len(outcomes) / wall, 1),
                               "pvis": settings.pvis, "shape": list(settings.shape)}))
    return rows


def _profiles(target: Target, settings: ServiceSettings) -> list[tuple[str, dict[str, Any], Any]]:
    """``(name, store options, proxy to stop)`` per profile."""
    from benchmarks.profiles import Profile, start_profile

    if target.proxy is None or target.server_endpoint is None:
        return [("direct", dict(target.store_options), None)]
    slow_target, slow = start_profile(target, Profile(f"{settings.latency_ms:g}ms", settings.latency_ms))
    assert slow is not None
    options = dict(slow_target.store_options)
    return [("direct", dict(target.store_options), None), (f"{settings.latency_ms:g}ms", options, slow)]


def _fill(uri: str, options: dict[str, Any], settings: ServiceSettings) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    from objbutler import Butler
    from objbutler.testing.skyfield import pvis

    butler = Butler.create(uri, **options)
    hdus = list(enumerate(pvis(settings.pvis, shape=settings.shape)))
    with ThreadPoolExecutor(4) as pool:  # a few writers: the sequenced log takes the commits in turn
        refs = list(pool.map(lambda item: butler.put(item[1], "calexp", {"visit": item[0]}, run="pvi"), hdus))
    return [ref.id for ref in refs]


def run_service(target: Target, settings: ServiceSettings,
                log: Callable[[str], None] = print) -> tuple[list[Row], list[str]]:
    """Run the suite; return rows and the side-by-side note."""
    from objbutler.testing.service import ServiceProcess

    uri = target.new_uri("service")
    ids = _fill(uri, target.store_options, settings)
    log(f"service: {settings.pvis} PVIs of {settings.shape[0]}x{settings.shape[1]}; "
        f"{settings.clients} clients x {settings.requests} requests per profile")
    rows: list[Row] = []
    parts = []
    profiles = _profiles(target, settings)
    try:
        for seed, (name, options, _) in enumerate(profiles):
            with ServiceProcess(uri, env=_env(options)) as service:
                _load(service.url, ids, dataclasses.replace(settings, requests=2), seed + 100)  # warm up
                for mix, every in (("stamp only", None), ("mixed", HISTORY_EVERY)):
                    outcomes, wall = _load(service.url, ids, settings, seed, every)
                    cell = _rows(name, mix, outcomes, wall, settings)
                    rows += cell
                    errors = sum(row.extra["errors"] for row in cell)
                    summary = ", ".join(f"{row.workload.split()[0]} p50 {row.extra['p50'] * 1e3:.0f} ms "
                                        f"p99 {row.extra['p99'] * 1e3:.0f} ms" for row in cell)
                    log(f"  {name}, {mix}: {summary}; {len(outcomes) / wall:.1f} requests/s, {errors} errors")
                    parts.append(f"{name}, {mix}: {summary}, {len(outcomes) / wall:.0f} req/s, {errors} errors")
    finally:
        for _, _, proxy in profiles:
            if proxy is not None:
                proxy.stop()
    rows.append(Row(SUITE, "stamp (reported)", "Rubin vo-cutouts", 1, RUBIN_SECONDS_PER_CUTOUT, None, None,
                    extra={"format": "reported", "source": "Rubin's cutout service (one ID and stencil per job)"}))
    note = (f"service under load ({settings.clients} clients x {settings.requests} requests; mixed: one in "
            f"{HISTORY_EVERY} an object history over {settings.pvis} PVIs): " + "; ".join(parts)
            + f"; Rubin reports {RUBIN_SECONDS_PER_CUTOUT} s per cutout")
    return rows, [note]
