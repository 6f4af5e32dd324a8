"""The ``sky`` suite: object history of one position across many PVIs, and find_images at catalogue scale.

**Object history.** A repository of PVIs (small synthetic images, :mod:`objbutler.testing.skyfield`:
jittered, rotated, SIP-distorted, every one holding the field centre) is read for one 51-pixel
stamp per image at the field centre, by three methods timed in the same interleaved rounds:

``objbutler``
    ``butler.cutouts_at(position, 51, "calexp")`` on a warm Butler: the registry's sky index finds
    the images, the registry's WCS and layout plan each stamp, one range read per image, images in
    one pool of the store's concurrency (16).
``header-per-image``
    The best public route before sky queries: ``butler.query("calexp")`` (the user must already know
    which images hold the position), then ``get_cutouts_many({ref: position}, size=51,
    max_images_in_flight=16)``, which reads each image's header for its WCS before the stamp.
``floor``
    One raw range GET per image of exactly the bytes objbutler's plan reads for the stamp (the stamp's
    rows, first to last), 16 in flight, through objbutler's store client with no planning at all.

Each profile runs against the same server: ``direct`` (LocalStack behind the counting proxy) and
``20ms`` (behind a second proxy that holds every request 20 ms: a cloud round trip). A local target
has the direct profile only.

**find_images at scale** (no store): 100,000 synthetic footprints in a registry state, 100,000
positions; the index build (cold, once per registry state) and the lookup (warm) timed separately.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.measure import Case, Row, interleave, rows_for
from benchmarks.targets import Target

__all__ = ["SkySettings", "run_sky", "sky_settings"]

SUITE = "sky"
STAMP = 51
LANES = 16


@dataclasses.dataclass
class SkySettings:
    """How big the sky suite runs."""

    pvis: tuple[int, ...]
    shape: tuple[int, int]
    reps: int
    footprints: int
    positions: int
    latency_ms: float = 20.0
    users: int = 10
    user_sample: int = 100  # images per user the header route is timed on (extrapolated to all)
    catalog: tuple[int, ...] = (10_000,)
    catalog_pvis: int = 100
    catalog_shape: tuple[int, int] = (512, 512)
    astropy_sample: int = 12
    writer_up_to: int = 10_000


def sky_settings(quick: bool, smoke: bool = False) -> SkySettings:
    """Quick: 200 PVIs of 128 x 128, 10k positions; full: 200 and 1,000 PVIs, 10k and 100k positions; smoke: seconds.

    The full run is ``objbutler bench sky`` (docs/design.md quotes it).
    """
    if smoke:
        return SkySettings((12,), (64, 64), 2, 2_000, 2_000, users=3, user_sample=4, catalog=(300,), catalog_pvis=4,
                           catalog_shape=(128, 128), astropy_sample=3)
    if quick:
        return SkySettings((200,), (128, 128), 5, 100_000, 100_000, user_sample=50)
    return SkySettings((200, 1000), (256, 256), 5, 100_000, 100_000, catalog=(10_000, 100_000),
                       catalog_shape=(1024, 1024))


def _fill(uri: str, options: dict[str, Any], n: int, shape: tuple[int, int], log: Callable[[str], None]) -> None:
    from objbutler import Butler
    from objbutler.stores._concurrency import run_concurrently
    from objbutler.testing.skyfield import pvis

    butler = Butler.create(uri, **options)
    hdus = list(pvis(n, shape=shape))
    started = time.perf_counter()
    # A few writers at once: the sequenced log takes every commit in turn.
    run_concurrently(lambda item: butler.put(item[1], "calexp", {"visit": item[0]}, run="pvi"),
                     list(enumerate(hdus)), 4)
    log(f"  put {n} PVIs of {shape[0]}x{shape[1]} in {time.perf_counter() - started:.1f} s")


def _floor_ranges(butler: Any, position: Any) -> list[tuple[str, tuple[int, int]]]:
    """Per image, the byte span of the stamp's rows (what one planned read of objbutler's covers)."""
    from objbutler.sky.footprint import sky_wcs
    from objbutler.sky.query import _pixel_positions

    ranges = []
    for ref in butler.find_images(position, "calexp")[0]:
        layout = ref.layout
        ny, nx = layout["shape"]
        item = abs(int(layout["bitpix"])) // 8
        x, y = _pixel_positions(position.reshape((1,)), sky_wcs(ref.sky))
        x0 = max(0, int(np.ceil(x[0] - STAMP / 2)))
        y0 = max(0, int(np.ceil(y[0] - STAMP / 2)))
        x1, y1 = min(nx, x0 + STAMP), min(ny, y0 + STAMP)
        start = layout["data_start"] + (y0 * nx + x0) * item
        stop = layout["data_start"] + ((y1 - 1) * nx + x1) * item
        ranges.append((ref.key, (start, stop)))
    return ranges


def _history_cases(uri: str, options: dict[str, Any], counter: Any, position: Any, n: int) -> list[Case]:
    from objbutler import Butler
    from objbutler.stores import open_store
    from objbutler.stores._concurrency import run_concurrently

    butler = Butler(uri, **options)
    public = Butler(uri, **options)
    raw = open_store(uri, **options)
    spans = _floor_ranges(butler, position)
    if len(spans) != n:
        raise RuntimeError(f"the field centre is in {len(spans)} of {n} PVIs; every one should hold it")

    def objbutler() -> None:
        found = butler.cutouts_at(position, STAMP, "calexp")
        if len(found[0]) != n:
            raise RuntimeError(f"objbutler cut {len(found[0])} of {n} stamps")

    def header_route() -> None:
        refs = public.query("calexp")
        stamps = public.get_cutouts_many({ref: position for ref in refs}, size=STAMP, max_images_in_flight=LANES)
        if len(stamps) != n:
            raise RuntimeError("the header route lost images")

    def floor() -> None:
        run_concurrently(lambda item: raw.get_ranges(item[0], [item[1]]), spans, LANES)

    return [
        Case("objbutler", objbutler, n, counter=counter, kind="objbutler"),
        Case("header-per-image", header_route, n, counter=counter),
        Case("floor", floor, n, counter=counter, kind="fixed"),
    ]


def _profiles(target: Target, settings: SkySettings) -> list[tuple[str, dict[str, Any], Any, Any]]:
    """``(name, store options, counter, proxy to stop)`` per profile."""
    from benchmarks.measure import NullCounter, ProxyCounter
    from benchmarks.profiles import Profile, start_profile

    if target.proxy is None or target.server_endpoint is None:
        return [("direct", dict(target.store_options), NullCounter(), None)]
    profiles: list[tuple[str, dict[str, Any], Any, Any]] = [
        ("direct", dict(target.store_options), ProxyCounter(target.proxy), None)]
    slow_target, slow = start_profile(target, Profile(f"{settings.latency_ms:g}ms", settings.latency_ms))
    assert slow is not None
    options = dict(slow_target.store_options)
    profiles.append((f"{settings.latency_ms:g}ms", options, ProxyCounter(slow), slow))
    return profiles


def _user_positions(k: int) -> Any:
    """``k`` distinct positions within 2 arcsec of the field centre (so every PVI holds nearly all of them)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    angles = np.linspace(0, 2 * np.pi, k, endpoint=False)
    radius = 2.0 / 3600.0
    return SkyCoord((150.1 + radius * np.cos(angles) / np.cos(np.radians(2.2))) * u.deg,
                    (2.2 + radius * np.sin(angles)) * u.deg)


def _each_user(work: Callable[[int], object], users: int) -> list[float]:
    """Run ``work(user)`` for every user at once (a thread each); each user's seconds."""
    from concurrent.futures import ThreadPoolExecutor

    def timed(user: int) -> float:
        started = time.perf_counter()
        work(user)
        return time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=users) as pool:
        return list(pool.map(timed, range(users)))


def _users_cases(uri: str, options: dict[str, Any], counter: Any, n: int, settings: SkySettings,
                 latencies: dict[str, list[float]]) -> list[Case]:
    """10 users at once, each asking for the history of a position of their own across ``n`` PVIs.

    One warm Butler serves them all (a cutout service); each user's call is timed, and
    ``latencies[method]`` keeps the last round's per-user seconds.
    """
    from objbutler import Butler
    from objbutler.stores import open_store
    from objbutler.stores._concurrency import run_concurrently

    positions = _user_positions(settings.users)
    butler = Butler(uri, **options)
    public = Butler(uri, **options)
    raw = open_store(uri, **options)
    spans = [_floor_ranges(butler, position) for position in positions]
    holding = [butler.find_images(position, "calexp")[0][: settings.user_sample] for position in positions]
    sample = min(len(refs) for refs in holding)

    def record(method: str, seconds: list[float]) -> None:
        latencies[method] = seconds

    def objbutler() -> None:
        record("objbutler", _each_user(lambda u: butler.cutouts_at(positions[u], STAMP, "calexp"), settings.users))

    def floor() -> None:
        record("floor", _each_user(
            lambda u: run_concurrently(lambda item: raw.get_ranges(item[0], [item[1]]), spans[u], LANES),
            settings.users))

    def header_route() -> None:
        record("header-per-image", _each_user(
            lambda u: public.get_cutouts_many({ref: positions[u] for ref in holding[u][:sample]}, size=STAMP,
                                              max_images_in_flight=LANES), settings.users))

    return [
        Case("objbutler", objbutler, n, counter=counter, kind="objbutler"),
        Case("header-per-image", header_route, n, measured=sample, counter=counter, budget=1.0),
        Case("floor", floor, n, counter=counter, kind="fixed"),
    ]


def _cpu_split(cases: list[Case], meter: Any, per: int, log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Run each case once more under the CPU meter: milliseconds of CPU per image for each party."""
    split = {}
    for case in cases:
        if case.error is not None:
            continue
        with meter.measure() as used:
            case.run()
        per_image = {party: round(1000 * seconds * case.scale / per, 3) for party, seconds in used.items()}
        split[case.method] = per_image
        log(f"    cpu {case.method:<24} per image: " + ", ".join(f"{k} {v:.2f} ms" for k, v in per_image.items()))
    return split


def _meter(target: Target, counter: Any) -> Any:
    from benchmarks.cpu import CpuMeter

    proxy = getattr(counter, "proxy", None)
    return CpuMeter({"proxy": [proxy.pid] if proxy is not None else [], "server": target.server_pids})


def _find_at_scale(settings: SkySettings, log: Callable[[str], None]) -> list[Row]:
    """find_images for many positions over many registered footprints, in memory."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from benchmarks.sky_index_choice import footprints
    from objbutler.registry.checkpoint import Checkpoint, refs_to_table
    from objbutler.registry.records import DatasetRef, DatasetType
    from objbutler.registry.state import RegistryState
    from objbutler.sky.index import state_sky_index
    from objbutler.sky.query import find_images

    n, m = settings.footprints, settings.positions
    ra, dec, _ = footprints(n)
    started = time.perf_counter()
    refs = [
        DatasetRef(id=f"{k:08d}-0000-0000-0000-000000000000", dataset_type="calexp", data_id={"visit": k}, run="pvi",
                   format="fits", key=f"data/pvi/calexp/visit={k}.fits", size=1, checksum="sha256:0",
                   created="2026-01-01T00:00:00.000000Z",
                   sky={"v": 1, "shape": [4000, 4000], "wcs": [], "ra": ra[4 * k : 4 * k + 4].tolist(),
                        "dec": dec[4 * k : 4 * k + 4].tolist(), "mjd": 60000.0 + k % 997})
        for k in range(n)
    ]
    table = refs_to_table(refs, {"visit": "int"})
    state = RegistryState(Checkpoint("00000000000000000001", table, {"calexp": DatasetType("calexp", ("visit",),
                                                                                            "image")},
                                     {"visit": "int"}), "memory://bench")
    log(f"  {n:,} footprints registered in {time.perf_counter() - started:.1f} s")
    rng = np.random.default_rng(5)
    centres_ra = (ra[0::4][: m // 2] + ra[2::4][: m // 2]) / 2  # half inside a footprint (near its centre)
    centres_dec = (dec[0::4][: m // 2] + dec[2::4][: m // 2]) / 2
    pra = np.concatenate([centres_ra, rng.uniform(0, 360, m - m // 2)])
    pdec = np.concatenate([centres_dec, np.degrees(np.arcsin(rng.uniform(-1, 1, m - m // 2)))])
    positions = SkyCoord(pra * u.deg, pdec * u.deg)
    started = time.perf_counter()
    state_sky_index(state)
    build = time.perf_counter() - started
    started = time.perf_counter()
    cold = find_images(state, positions, "calexp")
    first = time.perf_counter() - started
    hits = sum(len(found) for found in cold)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        find_images(state, positions, "calexp")
        timings.append(time.perf_counter() - started)
    log(f"  index build {build:.3f} s; find_images first call {first:.3f} s (makes {hits:,} refs), "
        f"warm {min(timings):.3f}-{max(timings):.3f} s")
    workload = f"find {m // 1000}k pos / {n // 1000}k fp"
    return [
        Row(SUITE, workload, "index-build", n, build, None, None, reps=1, kind="objbutler-part",
            extra={"format": "memory"}),
        Row(SUITE, workload, "find_images-first", m, first, None, None, reps=1, kind="objbutler-part",
            extra={"format": "memory", "hits": hits}),
        Row(SUITE, workload, "objbutler", m, float(np.median(timings)), None, None, reps=len(timings),
            min=min(timings), max=max(timings), kind="objbutler", ratio_vs_objbutler=1.0,
            extra={"format": "memory", "hits": hits}),
    ]


def run_sky(target: Target, settings: SkySettings, log: Callable[[str], None] = print) -> tuple[list[Row], list[str]]:
    """Run the suite; return rows and the side-by-side notes."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from benchmarks.sky_catalog import catalog_rows

    rows: list[Row] = []
    notes: list[str] = []
    position = SkyCoord(150.1 * u.deg, 2.2 * u.deg)
    profiles = _profiles(target, settings)
    try:
        for n in settings.pvis:
            uri = target.new_uri(f"sky{n}")
            log(f"sky: object history of one position across {n} PVIs")
            _fill(uri, target.store_options, n, settings.shape, log)
            by_profile: dict[str, dict[str, float | None]] = {}
            for name, options, counter, _ in profiles:
                log(f"  profile {name}")
                cases = _history_cases(uri, options, counter, position, n)
                interleave(cases, settings.reps, budget_seconds=30.0, log=log)
                cpu = _cpu_split(cases, _meter(target, counter), n, log)
                cell = rows_for(SUITE, f"history {n} PVIs", cases, {"format": f"fits/{name}", "profile": name,
                                                                     "shape": list(settings.shape)})
                for row in cell:
                    row.extra["cpu_ms_per_image"] = cpu.get(row.method)
                rows += cell
                by_profile[name] = {row.method: row.seconds for row in cell}
            notes.append(_side_by_side(n, by_profile))
            if n == max(settings.pvis):
                rows_users, note = _users(target, uri, profiles[-1], n, settings, log)
                rows += rows_users
                notes.append(note)
        catalogue, catalogue_notes = catalog_rows(target, profiles, settings.catalog, settings.catalog_pvis,
                                                  settings.catalog_shape, max(2, settings.reps // 2),
                                                  settings.astropy_sample, settings.writer_up_to, log)
        rows += catalogue
        notes += catalogue_notes
        log(f"sky: find_images for {settings.positions:,} positions over {settings.footprints:,} footprints")
        rows += _find_at_scale(settings, log)
    finally:
        for _, _, _, proxy in profiles:
            if proxy is not None:
                proxy.stop()
    return rows, notes


def _users(target: Target, uri: str, profile: tuple[str, dict[str, Any], Any, Any], n: int, settings: SkySettings,
           log: Callable[[str], None]) -> tuple[list[Row], str]:
    """The concurrent-users cell on one profile (the slowest: 20 ms where there is a server)."""
    name, options, counter, _ = profile
    log(f"sky: {settings.users} concurrent users of distinct positions across {n} PVIs, profile {name}")
    latencies: dict[str, list[float]] = {}
    cases = _users_cases(uri, options, counter, n, settings, latencies)
    interleave(cases, max(2, settings.reps // 2), budget_seconds=40.0, log=log)
    cpu = _cpu_split(cases, _meter(target, counter), n * settings.users, log)
    cell = rows_for(SUITE, f"{settings.users} users x {n} PVIs", cases,
                    {"format": f"fits/{name}", "profile": name, "shape": list(settings.shape)})
    for row in cell:
        row.extra["cpu_ms_per_image"] = cpu.get(row.method)
        scale = n / cases[1].measured if row.method == "header-per-image" and cases[1].measured else 1.0
        row.extra["user_seconds"] = [round(s * scale, 3) for s in latencies.get(row.method, [])]
    ours = latencies.get("objbutler", [])
    floor = latencies.get("floor", [])
    note = (f"{settings.users} concurrent users, {n} PVIs each, {name}: objbutler slowest user "
            f"{max(ours, default=float('nan')):.2f} s (median {float(np.median(ours)) if ours else float('nan'):.2f} s;"
            f" Rubin DMS-REQ-0375 asks 10 s), floor slowest {max(floor, default=float('nan')):.2f} s")
    return cell, note


def _side_by_side(n: int, by_profile: dict[str, dict[str, float | None]]) -> str:
    parts = []
    for name, seconds in by_profile.items():
        ours, floor, header = seconds.get("objbutler"), seconds.get("floor"), seconds.get("header-per-image")
        if not ours or not floor or not header:
            parts.append(f"{name}: incomplete")
            continue
        parts.append(f"{name}: objbutler {ours:.3f} s = {ours / floor:.2f}x the floor ({floor:.3f} s), "
                     f"header-per-image {header:.3f} s = {header / ours:.1f}x objbutler")
    return f"object history, {n} PVIs, one {STAMP}-px stamp each: " + "; ".join(parts)
