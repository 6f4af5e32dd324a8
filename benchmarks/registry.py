"""The registry suite: puts, gets, concurrent writers, and open + query on big manifests.

Workloads (issue 3):

``put-small <where>`` / ``get-small <where>``
    One process puts small metric dicts one after another (no contention),
    interleaved with a get by ref and a get by data ID of the same dataset.
    Milliseconds and requests per operation, on a local path and on the S3
    target. Rubin's ``lsst-daf-butler`` runs the same workload on a local
    SQLite repository in the same run, from its own venv (skipped with a
    note if it cannot be installed).
``writers-<w> <where>``
    ``w`` = 1, 4, 8 writer processes (:func:`objbutler.testing.workload.run_writers`)
    putting distinct data IDs into one repository: puts per second, requests per
    put, and whether every put was committed.
``open+query cold|warm <n>``
    A manifest of n = 10k / 100k / 1M datasets built synthetically through the
    real commit code (``Registry.commit`` with 10,000 refs per commit, then a
    checkpoint), then ``Butler(uri)`` + an equality query (cold: a new Butler
    each time) and the same query on an already-open Butler (warm).
"""

from __future__ import annotations

import contextlib
import dataclasses
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
    writers: tuple[int, ...] = (1, 4, 8)
    puts_per_writer: int = 50
    manifest_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    query_reps: int = 5
    daf_butler: bool = True
    install_daf_butler: bool = True


def registry_settings(quick: bool, smoke: bool = False) -> RegistrySettings:
    """Full, quick (under a minute) or smoke (seconds, for the unit test) settings."""
    if smoke:
        return RegistrySettings(latency_puts=5, writers=(1, 2), puts_per_writer=2, manifest_sizes=(1000,),
                                query_reps=2, daf_butler=False, install_daf_butler=False)
    if quick:
        return RegistrySettings(latency_puts=30, writers=(1, 4, 8), puts_per_writer=5, manifest_sizes=(10_000,),
                                query_reps=3, install_daf_butler=False)
    return RegistrySettings()


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


# -- concurrent writers ------------------------------------------------------------------------


def _writer_rows(label: str, uri_factory: Callable[[], str], options: dict[str, Any], where: Target,
                 settings: RegistrySettings, log: Callable[[str], None]) -> list[Row]:
    from objbutler.testing.workload import run_writers

    rows = []
    for writers in settings.writers:
        uri = uri_factory()
        Butler.create(uri, **options)
        visits = [list(range(w * settings.puts_per_writer, (w + 1) * settings.puts_per_writer))
                  for w in range(writers)]
        counter = where.counter()
        counter.reset()
        results = run_writers(uri, options, "writers", visits)
        requests, _ = counter.read()
        committed = sum(len(r["committed"]) for r in results)
        errors = sum(len(r["errors"]) for r in results)
        wall = max(r["seconds"] for r in results)
        expected = writers * settings.puts_per_writer
        visible = len(Butler(uri, **options).query("metric", run="writers"))
        per_put = f", {requests / max(committed, 1):.1f} requests/put" if requests else ""
        log(f"  writers-{writers} {label}: {committed}/{expected} committed ({visible} visible) in {wall:.2f} s = "
            f"{committed / wall:.1f} puts/s{per_put}")
        rows.append(Row("registry", f"writers-{writers} {label}", "objbutler", expected, wall,
                        None if requests is None else round(requests / max(committed, 1), 2), None,
                        min=wall, max=wall, reps=1, kind="objbutler",
                        extra={"target": where.name if label == "s3" else "local", "writers": writers,
                               "puts_per_second": round(committed / wall, 2), "committed": committed,
                               "visible": visible, "expected": expected, "errors": errors,
                               "requests_unit": "per committed put"}))
    return rows


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
    with _local_base(target) as local_base:
        places = _places(target, local_base)
        for label, uri, options, where in places:
            rows += _latency_rows(label, uri, options, where, settings, log)
        if settings.daf_butler:
            daf_rows, daf_notes = _daf_butler_rows(settings, rows, log)
            rows += daf_rows
            notes += daf_notes
        for label, _, options, where in places:
            def factory(label: str = label, where: Target = where) -> str:
                return where.new_uri("writers") if label == "s3" else f"{local_base}/writers-{uuid.uuid4().hex[:8]}"

            rows += _writer_rows(label, factory, options, where, settings, log)
        query_place = places[-1]
        for total in settings.manifest_sizes:
            uri = query_place[3].new_uri(f"manifest-{total}") if query_place[0] == "s3" else \
                f"{local_base}/manifest-{total}-{uuid.uuid4().hex[:8]}"
            rows += _query_rows(uri, query_place[2], query_place[3], total, settings, log)
    return rows, notes
