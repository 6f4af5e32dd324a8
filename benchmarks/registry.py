"""The registry suite: puts, gets, concurrent writers, and open + query on big manifests.

Workloads (issue 3):

``put-small <where>`` / ``get-small <where>``
    One process puts small metric dicts one after another (no contention),
    interleaved with a get by ref and a get by data ID of the same dataset.
    Milliseconds and requests per operation, on a local path and on the S3
    target. Rubin's ``lsst-daf-butler`` runs the same workload on a local
    SQLite repository in the same run, from its own venv (skipped with a
    note if it cannot be installed).
``writers-<w> processes|threads``
    ``w`` = 1, 4, 16, 64 writers (``--writers``), as spawned processes with a
    Butler each and as threads sharing one (:mod:`benchmarks.registry_writers`),
    each putting a fixed number of 16x16 float32 arrays with distinct data IDs
    into one repository: aggregate puts/s, requests and GETs per put (from the
    proxy), p50 / p99 / worst put latency, lost puts (returned, but not in a
    fresh Butler's query) and failed puts (exceptions), and the CPU seconds of
    the writers, the proxy and the server (two cores: saturation shows here).
    Where ``Butler.create`` takes ``commit_protocol=``, the ``sequenced``
    protocol and the default run side by side. Right after, the same writers
    measure the **floor**: two raw writes per put (the data object and one
    record created with ``put_if_absent``), the least any commit design sends;
    each row says what fraction of it objbutler reached (``of_floor``).
``put_many <n>``
    ``Butler.put_many`` of n = 10,000 such arrays from one process, one row per
    commit protocol of the writer rows (a row
    saying "not available" where the tree has no ``put_many``), beside the
    physical floor measured in the same run: raw concurrent PUTs of the same
    n objects (the FITS bytes a put writes) at the store's concurrency.
``open+query cold|warm <n>``
    A manifest of n = 10k / 100k / 1M datasets built synthetically through the
    real commit code (``Registry.commit`` with 10,000 refs per commit, then a
    checkpoint), then ``Butler(uri)`` + an equality query (cold: a new Butler
    each time) and the same query on an already-open Butler (warm).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cpu import CpuMeter
from benchmarks.measure import Case, Row, interleave, rows_for
from benchmarks.targets import Target
from objbutler.butler import Butler
from objbutler.registry.commits import utc_now
from objbutler.registry.records import DatasetRef, DatasetType, data_id_slug, dimension_kinds
from objbutler.stores import open_store
from objbutler.testing.wrappers import CountingStore

__all__ = ["RegistrySettings", "registry_settings", "run_registry"]

DAF_BUTLER_REQUIREMENT = "lsst-daf-butler"
COMMIT_SIZE = 10_000


@dataclasses.dataclass
class RegistrySettings:
    """What one run of the registry suite covers."""

    latency_puts: int = 100
    writers: tuple[int, ...] = (1, 4, 16, 64)
    puts_per_writer: int = 10
    writer_modes: tuple[str, ...] = ("processes", "threads")
    writers_timeout: float = 900.0
    put_many: int = 10_000
    manifest_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    query_reps: int = 5
    daf_butler: bool = True
    install_daf_butler: bool = True
    protocols: tuple[str, ...] = ("sequenced", "claimed")
    """Commit protocols of the writer rows (``default``: what a new repository gets)."""
    floors: bool = True
    """Measure each writer count's floor (:data:`benchmarks.registry_writers.FLOOR_WRITES` raw writes per put)."""


def registry_settings(quick: bool, smoke: bool = False, writers: tuple[int, ...] | None = None) -> RegistrySettings:
    """Full, quick (CI: small counts, under a minute per profile) or smoke (seconds, for the unit test) settings.

    ``writers`` (``--writers 1,4,16,64``) replaces the setting's writer counts.
    """
    if smoke:
        settings = RegistrySettings(latency_puts=5, writers=(1, 2), puts_per_writer=2, manifest_sizes=(1000,),
                                    query_reps=2, put_many=50, daf_butler=False, install_daf_butler=False)
    elif quick:
        settings = RegistrySettings(latency_puts=10, writers=(1, 4), puts_per_writer=4, manifest_sizes=(1000,),
                                    query_reps=2, put_many=200, install_daf_butler=False)
    else:
        settings = RegistrySettings()
    if writers:
        settings = dataclasses.replace(settings, writers=tuple(writers))
    return settings


@contextlib.contextmanager
def _local_base(target: Target) -> Iterator[str]:
    if target.is_local:
        yield target.base
        return
    directory = tempfile.mkdtemp(prefix="objbutler-bench-registry-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _places(target: Target, local_base: str) -> list[tuple[str, str, dict[str, Any], Target]]:
    """``(label, uri, store options, counting target)`` for the local path and (if any) the S3 target."""
    local = Target("local", local_base, {})
    places: list[tuple[str, str, dict[str, Any], Target]] = [
        ("local", f"{local_base}/repo-{uuid.uuid4().hex[:8]}", {}, local)]
    if not target.is_local:
        places.append(("s3", target.new_uri("registry"), target.store_options, target))
    return places


# -- small put / get -----------------------------------------------------------------------


def _latency_rows(label: str, uri: str, options: dict[str, Any], where: Target,
                  settings: RegistrySettings, log: Callable[[str], None]) -> list[Row]:
    counting = CountingStore(open_store(uri, **options)) if where.is_local else None
    Butler.create(uri, store=counting, **options)
    butler = Butler(uri, store=counting, **options)
    counter = where.counter(counting)
    refs: list[DatasetRef] = []

    def put() -> None:
        visit = len(refs)
        refs.append(butler.put({"metric": "PA1", "value": 5.1 + visit, "unit": "mmag"}, "metric",
                               {"visit": visit, "detector": 0}, run="latency"))

    def get_ref() -> None:
        butler.get(refs[-1])

    def get_data_id() -> None:
        butler.get("metric", refs[-1].data_id, run="latency")

    for _ in range(3):  # warm-up: first commit, client creation, refresh
        put()
    cases = [Case("objbutler", put, 1, counter=counter, kind="objbutler"),
             Case("objbutler get(ref)", get_ref, 1, counter=counter, kind="objbutler"),
             Case("objbutler get(type, data ID)", get_data_id, 1, counter=counter, kind="objbutler")]
    log(f"  put-small / get-small {label}: {settings.latency_puts} of each, interleaved")
    interleave(cases, settings.latency_puts, warmup=False, budget_seconds=600, log=log)
    extra = {"target": where.name if label == "s3" else "local"}
    put_rows = rows_for("registry", f"put-small {label}", cases[:1], extra)
    for row in put_rows:
        if row.requests is not None:
            row.extra["requests_without_upload"] = row.requests - 1  # one data object per JSON dataset
    get_rows = [row for case in cases[1:] for row in rows_for("registry", f"get-small {label}", [case], extra)]
    return put_rows + get_rows


def _daf_butler_python(install: bool, log: Callable[[str], None]) -> tuple[Path | None, str]:
    """The Python of a venv holding lsst-daf-butler (made on first use if ``install``), or a note why not."""
    venv = Path(os.environ.get("OBJBUTLER_BENCH_DIR", Path.home() / ".cache" / "objbutler" / "bench")) / \
        "daf-butler-venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import lsst.daf.butler"]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python, ""
    if not install:
        return None, (f"lsst-daf-butler comparison skipped: no venv at {venv} (a full run installs it: "
                      f"python -m venv {venv} && {venv}/bin/pip install {DAF_BUTLER_REQUIREMENT})")
    log(f"  installing {DAF_BUTLER_REQUIREMENT} into {venv} (once) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", DAF_BUTLER_REQUIREMENT], check=True,
                       capture_output=True, timeout=1200)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return None, f"lsst-daf-butler comparison skipped: it did not install here ({exc}; {detail[-300:]!r})"
    return python, ""


def _daf_butler_rows(settings: RegistrySettings, reference: list[Row],
                     log: Callable[[str], None]) -> tuple[list[Row], list[str]]:
    python, note = _daf_butler_python(settings.install_daf_butler, log)
    if python is None:
        return [], [note]
    log(f"  lsst-daf-butler put-small / get-small on SQLite: {settings.latency_puts} of each")
    script = Path(__file__).with_name("daf_butler_script.py")
    done = subprocess.run([str(python), str(script), "--puts", str(settings.latency_puts)], capture_output=True,
                          text=True, check=False, timeout=1800)
    if done.returncode != 0:
        return [], [f"lsst-daf-butler comparison failed: {done.stderr.strip()[-400:]}"]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows = []
    for workload, method, key in (("put-small local", "lsst-daf-butler (SQLite)", "put_seconds"),
                                  ("get-small local", "lsst-daf-butler get(ref) (SQLite)", "get_ref_seconds"),
                                  ("get-small local", "lsst-daf-butler get(type, data ID) (SQLite)",
                                   "get_dataid_seconds")):
        times = result[key]
        ours = next((r for r in reference if r.workload == workload and r.method == method.replace(
            "lsst-daf-butler", "objbutler").replace(" (SQLite)", "")), None)
        seconds = statistics.median(times)
        rows.append(Row("registry", workload, method, 1, seconds, None, None,
                        ratio_vs_objbutler=round(seconds / ours.seconds, 3) if ours and ours.seconds else None,
                        min=min(times), max=max(times), reps=len(times),
                        extra={"target": "local", "version": result["version"]}))
    return rows, [f"lsst-daf-butler {result['version']} ran in its own venv ({python.parent.parent}), same run"]


# -- concurrent writers and put_many ---------------------------------------------------------


def _protocols(wanted: tuple[str, ...] = ("sequenced", "claimed")) -> tuple[str | None, ...]:
    """The protocols to create repositories with (None: the default), of ``wanted``.

    ``sequenced`` needs ``Butler.create(commit_protocol=)``; without it only the default runs.
    """
    if "commit_protocol" not in inspect.signature(Butler.create).parameters:
        return (None,)
    return tuple(None if name == "default" else name for name in wanted)


def _create(uri: str, options: dict[str, Any], protocol: str | None) -> str:
    """Create the repository; return the commit protocol it got."""
    extra: dict[str, Any] = {} if protocol is None else {"commit_protocol": protocol}
    return str(Butler.create(uri, **extra, **options).config.commit_protocol)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 1)


def _parties(where: Target) -> dict[str, list[int]]:
    """Processes whose CPU the rows report beside the client's: the server (when this run started it) and the proxy."""
    parties: dict[str, list[int]] = {"server": list(where.server_pids)}
    if where.proxy is not None:
        parties["proxy"] = [where.proxy.pid]
    return parties


@contextlib.contextmanager
def _accounting(where: Target) -> Iterator[dict[str, Any]]:
    """Reset the proxy, measure server and proxy CPU around the block; fill in the proxy's stats after."""
    if where.proxy is not None:
        where.proxy.reset()
    used: dict[str, Any] = {}
    with CpuMeter(_parties(where)).measure() as cpu:
        yield used
    used["cpu"] = cpu
    used["stats"] = where.proxy.stats() if where.proxy is not None else None


def _per_put(stats: dict[str, Any] | None, returned: int) -> tuple[float | None, float | None]:
    """Requests and GETs (reads of objects and listings) per returned put."""
    if stats is None or not returned:
        return None, None
    return (round(stats["requests"] / returned, 2),
            round(stats["by_method"].get("GET", 0) / returned, 2))


_OBJECT_KINDS = (  # (key prefix, name), most specific first: where a repository's requests go
    ("manifest/log/~compaction/", "compaction records"), ("manifest/log/~lease/", "fold leases"),
    ("manifest/log/~/", "markers"), ("manifest/log/", "log slots"), ("manifest/claims/", "claims"),
    ("manifest/checkpoints/", "checkpoints"), ("manifest/types/", "registrations"),
    ("manifest/dimensions/", "registrations"), ("manifest/", "other manifest"), ("objbutler.json", "config"),
)


def object_kind(key: str) -> str:
    """What part of a repository an object key (or a listing's prefix) is: ``"data"`` outside the manifest."""
    return next((name for prefix, name in _OBJECT_KINDS if key.startswith(prefix)), "data" if key else "bucket")


def _repository_key(path: str) -> str:
    """The key inside the repository of a request path (``/<bucket>/<repository prefix>/<key>``)."""
    for anchor in ("/manifest/", "/objbutler.json"):
        at = path.find(anchor)
        if at >= 0:
            return path[at + 1:]
    bucket_and_key = path.strip("/").split("/", 1)
    return bucket_and_key[1] if len(bucket_and_key) > 1 else ""  # data (or "": the bucket itself)


def requests_by_object(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Count S3 path-style requests (the proxy's log) by kind and object: ``{"put-if-absent claims": 640, ...}``.

    A listing counts under the kind of its ``prefix=``; a DeleteObjects (``POST ?delete``) under
    ``"post bucket"``.
    """
    counts: dict[str, int] = {}
    for entry in entries:
        path = entry["path"]
        if entry["kind"] == "list":
            fields = dict(part.split("=", 1) for part in entry["query"].split("&") if "=" in part)
            path = "/" + fields.get("prefix", "")
        label = f"{entry['kind']} {object_kind(_repository_key(path))}"
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _by_object_per_put(stats: dict[str, Any] | None, returned: int) -> dict[str, float] | None:
    """Requests per returned put by kind and object (those at least 0.01 a put)."""
    if stats is None or not returned or "by_object" not in stats:
        return None
    return {label: round(count / returned, 2) for label, count in stats["by_object"].items()
            if count / returned >= 0.01}


def _run_measured(where: Target, uri: str, mode: str, writers: int, settings: RegistrySettings,
                  floor: bool) -> tuple[Any, dict[str, Any] | None, dict[str, float]]:
    """Run the writers (or the floor's); their outcome, the proxy's stats and the CPU used, from the release on.

    The writers' stats hold ``by_object`` too: the requests counted by :func:`requests_by_object`.
    """
    from benchmarks.registry_writers import run_writers

    meter = CpuMeter(_parties(where))
    before: dict[str, float] = {}

    def ready() -> None:  # every writer is open and warm: count from here
        if where.proxy is not None:
            where.proxy.reset()
        before.update(meter.snapshot())

    outcome = run_writers(uri, where.store_options, writers, settings.puts_per_writer, mode,  # type: ignore[arg-type]
                          run="writers", timeout=settings.writers_timeout, on_ready=ready, floor=floor)
    after = meter.snapshot()
    stats = where.proxy.stats() if where.proxy is not None else None
    if stats is not None and where.proxy is not None and not floor:  # the floor's two writes need no breakdown
        stats["by_object"] = requests_by_object(where.proxy.log())
    return outcome, stats, {name: after[name] - before.get(name, after[name]) for name in after}


def _floor_row(where: Target, mode: str, writers: int, settings: RegistrySettings,
               log: Callable[[str], None]) -> Row:
    """The same writers making the two writes any design needs per put (data + one record), in the same run."""
    from benchmarks.registry_writers import FLOOR_WRITES

    outcome, stats, cpu = _run_measured(where, where.new_bucket_uri(f"floor-{mode}-{writers}"), mode, writers, settings,
                                        floor=True)
    done = sum(len(r.ids) for r in outcome.results)
    failed = sum(r.failures for r in outcome.results) + outcome.missing * settings.puts_per_writer
    rate = round(done / outcome.wall, 1) if outcome.wall else None
    requests, _ = _per_put(stats, done)
    log(f"  writers-{writers} {mode} floor [{where.profile}]: {FLOOR_WRITES} raw writes per put, {rate} puts/s, "
        f"{failed} failed; CPU s: server {cpu.get('server', 0):.1f} over {outcome.wall:.1f} s")
    return Row("registry", f"writers-{writers} {mode}", f"floor: {FLOOR_WRITES} raw writes per put", done,
               outcome.wall or None, requests, None, min=outcome.wall, max=outcome.wall, reps=1,
               extra={"target": where.name, "profile": where.profile, "protocol": "floor", "mode": mode,
                      "writers": writers, "puts_per_second": rate, "requests_per_put": requests, "failed": failed,
                      "server_cpu_s": round(cpu.get("server", 0), 2), "wall_s": round(outcome.wall, 3)})


def _writer_row(where: Target, mode: str, writers: int, settings: RegistrySettings,
                log: Callable[[str], None], requested: str | None) -> Row:
    from benchmarks.registry_writers import DATASET_TYPE

    uri = where.new_bucket_uri(f"writers-{mode}-{writers}")
    options = where.store_options
    protocol = _create(uri, options, requested)
    expected = writers * settings.puts_per_writer
    outcome, stats, cpu = _run_measured(where, uri, mode, writers, settings, floor=False)
    returned = {i for r in outcome.results for i in r.ids}
    visible = {ref.id for ref in Butler(uri, **options).query(DATASET_TYPE, run="writers")}
    latencies = [t for r in outcome.results for t in r.latencies]
    failed = sum(r.failures for r in outcome.results) + outcome.missing * settings.puts_per_writer
    messages = [m for r in outcome.results for m in r.messages][:3]
    requests, gets = _per_put(stats, len(returned))
    by_object = _by_object_per_put(stats, len(returned))
    wall = outcome.wall or None
    rate = round(len(returned) / outcome.wall, 1) if outcome.wall else None
    settled_rate = round(len(returned) / outcome.settled_wall, 1) if outcome.settled_wall else None
    label = "objbutler" if requested is None else f"objbutler ({protocol})"
    log(f"  writers-{writers} {mode} [{where.profile}, {protocol}]: {len(returned)}/{expected} returned, "
        f"{len(returned - visible)} lost, {failed} failed, {rate} puts/s ({settled_rate} to the end of the folds), "
        f"{requests} requests/put ({by_object}), "
        f"{gets} GETs/put, p50 {_ms(_percentile(latencies, 50))} ms, worst "
        f"{_ms(max(latencies) if latencies else None)} ms; CPU s: writers {outcome.cpu_seconds:.1f}, "
        f"server {cpu.get('server', 0):.1f}, proxy {cpu.get('proxy', 0):.1f} over {outcome.wall:.1f} s"
        + (f"; first failure: {messages[0]}" if messages else ""))
    return Row("registry", f"writers-{writers} {mode}", label, expected, wall, requests, None,
               min=wall, max=wall, reps=1, kind="objbutler",
               error=("; ".join(messages) or None) if not returned else None,
               extra={"target": where.name, "profile": where.profile, "protocol": protocol, "mode": mode,
                      "writers": writers, "puts_per_writer": settings.puts_per_writer,
                      "puts_per_second": rate, "puts_per_second_with_folds": settled_rate,
                      "requests_per_put": requests, "gets_per_put": gets,
                      "p50_ms": _ms(_percentile(latencies, 50)), "p99_ms": _ms(_percentile(latencies, 99)),
                      "worst_ms": _ms(max(latencies) if latencies else None),
                      "expected": expected, "committed": len(returned), "visible": len(visible),
                      "lost": len(returned - visible), "failed": failed, "errors": failed, "failures": messages,
                      "client_cpu_s": round(outcome.cpu_seconds, 2), "server_cpu_s": round(cpu.get("server", 0), 2),
                      "proxy_cpu_s": round(cpu.get("proxy", 0), 2), "wall_s": round(outcome.wall, 3),
                      "settled_wall_s": round(outcome.settled_wall, 3),
                      "peak_in_flight": (stats or {}).get("peak_in_flight"),
                      "requests_by_object_per_put": by_object,
                      "requests_unit": "per returned put (opens and warm-up puts excluded)"})


def _writer_rows(where: Target, settings: RegistrySettings, log: Callable[[str], None]) -> list[Row]:
    """Each writer count's rows, then (``settings.floors``) its floor, measured right after in the same run."""
    rows = []
    for mode in settings.writer_modes:
        for writers in settings.writers:
            ours = [_writer_row(where, mode, writers, settings, log, requested)
                    for requested in _protocols(settings.protocols)]
            if settings.floors:
                floor = _floor_row(where, mode, writers, settings, log)
                for row in ours:
                    rate, ceiling = row.extra.get("puts_per_second"), floor.extra["puts_per_second"]
                    row.extra["floor_puts_per_second"] = ceiling
                    row.extra["of_floor"] = round(rate / ceiling, 3) if rate and ceiling else None
                ours.append(floor)
            rows.extend(ours)
    return rows


def _put_many_row(where: Target, workload: str, arrays: list[np.ndarray], base: dict[str, Any],
                  requested: str | None, log: Callable[[str], None]) -> Row:
    """One ``Butler.put_many`` of ``arrays`` into a new repository of the ``requested`` protocol."""
    from benchmarks.registry_writers import DATASET_TYPE

    n = len(arrays)
    uri = where.new_bucket_uri("put-many")
    protocol = _create(uri, where.store_options, requested)
    butler = Butler(uri, **where.store_options)
    items = [(array, DATASET_TYPE, {"visit": i, "detector": 0}) for i, array in enumerate(arrays)]
    failure = None
    refs: list[Any] = []
    with _accounting(where) as used:
        started = time.perf_counter()
        try:
            refs = list(butler.put_many(items, run="many"))
        except Exception as exc:  # reported in the row
            failure = f"{type(exc).__name__}: {exc}"[:300]
        seconds = time.perf_counter() - started
    returned = {getattr(ref, "id", None) for ref in refs} - {None}
    visible = {ref.id for ref in Butler(uri, **where.store_options).query(DATASET_TYPE, run="many")}
    requests, gets = _per_put(used["stats"], len(returned))
    log(f"  {workload} [{where.profile}, {protocol}]: {len(returned)} returned in {seconds:.2f} s = "
        f"{len(returned) / seconds:.0f} datasets/s, {requests} requests/dataset" + (f"; {failure}" if failure else ""))
    return Row("registry", workload, "objbutler put_many", n, seconds if returned else None, requests,
               None, min=seconds, max=seconds, reps=1, kind="objbutler", error=failure,
               extra={**base, "protocol": protocol, "puts_per_second": round(len(returned) / seconds, 1),
                      "wall_s": round(seconds, 3),
                      "requests_per_put": requests, "gets_per_put": gets, "expected": n,
                      "committed": len(returned), "visible": len(visible),
                      "lost": len(returned - visible), "failed": n - len(returned),
                      "client_cpu_s": round(used["cpu"].get("client", 0), 2),
                      "server_cpu_s": round(used["cpu"].get("server", 0), 2),
                      "proxy_cpu_s": round(used["cpu"].get("proxy", 0), 2)})


def _put_many_rows(where: Target, settings: RegistrySettings, log: Callable[[str], None]) -> list[Row]:
    """``Butler.put_many`` of n small arrays from one process, and the raw-PUT floor of the same objects."""
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks.registry_writers import fits_bytes, small_array
    from objbutler.stores import DEFAULT_MAX_CONCURRENCY

    n = settings.put_many
    workload = f"put_many {n}"
    base = {"target": where.name, "profile": where.profile, "datasets": n, "writers": 1}
    arrays = [small_array(0, i) for i in range(n)]
    rows = []
    if hasattr(Butler, "put_many"):
        for requested in _protocols(settings.protocols):
            rows.append(_put_many_row(where, workload, arrays, base, requested, log))
    else:
        log(f"  {workload} [{where.profile}]: not available (Butler has no put_many in this tree)")
        rows.append(Row("registry", workload, "objbutler put_many", n, None, None, None, kind="objbutler",
                        error="not available: Butler.put_many is not in this tree", extra=dict(base)))
    store = open_store(where.new_bucket_uri("put-many-floor"), **where.store_options)
    concurrency = int(getattr(store, "max_concurrency", DEFAULT_MAX_CONCURRENCY))
    payloads = [fits_bytes(array) for array in arrays]
    with _accounting(where) as used, ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        list(pool.map(lambda item: store.put(f"floor/{item[0]:06d}.fits", item[1]), enumerate(payloads)))
        seconds = time.perf_counter() - started
    stats = used["stats"]
    log(f"  {workload} floor [{where.profile}]: {n} raw PUTs of {len(payloads[0])} B at {concurrency} at once in "
        f"{seconds:.2f} s = {n / seconds:.0f} PUTs/s")
    floor = Row("registry", workload, f"raw PUT x{concurrency} (floor)", n, seconds,
                None if stats is None else round(stats["requests"] / n, 2), None, min=seconds, max=seconds, reps=1,
                kind="fixed", extra={**base, "puts_per_second": round(n / seconds, 1), "concurrency": concurrency,
                                     "wall_s": round(seconds, 3),
                                     "requests_per_put": None if stats is None else round(stats["requests"] / n, 2),
                                     "object_bytes": len(payloads[0]), "expected": n, "committed": n, "lost": 0,
                                     "failed": 0, "client_cpu_s": round(used["cpu"].get("client", 0), 2),
                                     "server_cpu_s": round(used["cpu"].get("server", 0), 2),
                                     "proxy_cpu_s": round(used["cpu"].get("proxy", 0), 2),
                                     "peak_in_flight": (stats or {}).get("peak_in_flight")})
    for row in rows:
        if row.seconds:
            row.extra["floor_puts_per_second"] = floor.extra["puts_per_second"]
            row.extra["of_floor"] = round(row.extra["puts_per_second"] / floor.extra["puts_per_second"], 3)
    if rows and rows[0].seconds:
        rows[0].ratio_vs_objbutler = 1.0
        floor.ratio_vs_objbutler = round(seconds / rows[0].seconds, 3)
    return [*rows, floor]


# -- big manifests ---------------------------------------------------------------------------


def build_manifest(uri: str, options: dict[str, Any], total: int, log: Callable[[str], None]) -> Butler:
    """A repository of ``total`` synthetic ``calexp`` refs, committed 10,000 per commit, then checkpointed.

    The data objects are not written (open and query never read them); every
    record goes through ``Registry.commit`` and ``write_checkpoint`` as a put's would.
    """
    butler = Butler.create(uri, checkpoint_interval=10**9, **options)
    registry = butler.registry
    registry.refresh()
    dimensions: dict[str, int | str] = {"detector": 0, "visit": 0}
    kinds = dimension_kinds(dimensions)
    dataset_type = DatasetType("calexp", tuple(sorted(dimensions)), "image")
    started = time.perf_counter()
    created = utc_now()
    for first in range(0, total, COMMIT_SIZE):
        refs = []
        for i in range(first, min(total, first + COMMIT_SIZE)):
            data_id: dict[str, int | str] = {"detector": i % 200, "visit": i // 200}
            ref_id = str(uuid.uuid4())
            refs.append(DatasetRef(
                id=ref_id, dataset_type="calexp", data_id=data_id, run="synthetic", format="fits",
                key=f"data/synthetic/calexp/{data_id_slug(data_id)}-{ref_id[:8]}.fits", size=100_000,
                checksum="sha256:" + "0" * 64, created=created, repository=uri,
            ))
        registry.commit([dataset_type], kinds, refs)
    committed = time.perf_counter()
    registry.write_checkpoint()
    log(f"  built a {total:,}-dataset manifest: {total // COMMIT_SIZE or 1} commits in "
        f"{committed - started:.1f} s, checkpoint in {time.perf_counter() - committed:.1f} s")
    return butler


def _query_rows(uri: str, options: dict[str, Any], where: Target, total: int, settings: RegistrySettings,
                log: Callable[[str], None]) -> list[Row]:
    build_manifest(uri, options, total, log)
    warm_butler = Butler(uri, **options)
    visit = (total // 200) // 2

    def cold() -> None:
        refs = Butler(uri, **options).query("calexp", where={"visit": visit})
        assert len(refs) == min(200, total), len(refs)

    def warm() -> None:
        warm_butler.query("calexp", where={"visit": visit})

    counter = where.counter()
    cases = [Case("objbutler", cold, total, counter=counter, kind="objbutler")]
    warm_case = Case("objbutler", warm, total, counter=counter, kind="objbutler")
    log(f"  open+query {total:,}: cold and warm, {settings.query_reps} each")
    interleave([*cases, warm_case], settings.query_reps, log=log)
    extra = {"target": where.name, "datasets": total, "query": "calexp where visit == v (200 matches)"}
    return rows_for("registry", f"open+query cold {total}", cases, extra) + rows_for(
        "registry", f"open+query warm {total}", [warm_case], extra)


def run_registry(target: Target, settings: RegistrySettings,
                 log: Callable[[str], None] = print) -> tuple[list[Row], list[str]]:
    """Every registry workload; returns rows and notes (e.g. why daf_butler was skipped)."""
    rows: list[Row] = []
    notes: list[str] = []
    loopback = target.profile == "loopback"
    with _local_base(target) as local_base:
        # a slow profile changes only the S3 target's network: the local-path rows would repeat loopback's
        places = _places(target, local_base) if loopback or target.is_local else _places(target, local_base)[1:]
        for label, uri, options, where in places:
            rows += _latency_rows(label, uri, options, where, settings, log)
        if settings.daf_butler and loopback:
            daf_rows, daf_notes = _daf_butler_rows(settings, rows, log)
            rows += daf_rows
            notes += daf_notes
        many = _put_many_rows(target, settings, log)
        writer_rows = _writer_rows(target, settings, log)
        floor = many[-1].extra["puts_per_second"]
        for row in writer_rows:
            row.extra["floor_puts_per_second"] = floor
        rows += writer_rows + many
        query_place = places[-1]
        for total in settings.manifest_sizes:
            uri = query_place[3].new_uri(f"manifest-{total}") if query_place[0] == "s3" else \
                f"{local_base}/manifest-{total}-{uuid.uuid4().hex[:8]}"
            rows += _query_rows(uri, query_place[2], query_place[3], total, settings, log)
    return rows, notes
