"""Smoke tests of the benchmark harness, so it cannot rot: a tiny quick run on a local target, the registry
suite's quick setting on LocalStack under the loopback and cloud-20ms profiles, and the counting proxy.

No timing assertions: only that the command runs and the rows, the report and
the plots come out with sane fields, counts add up, nothing is lost; the
proxy's bandwidth cap is checked against the pacing schedule and against the
lower bound a cap sets (a capped transfer cannot be faster than bytes / cap).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from benchmarks.proxy import ProxyProcess
from objbutler.cli import main
from objbutler.cli_errors import ExitCode
from objbutler.testing.faultproxy import Pacer

pytest.importorskip("matplotlib")

ROW_FIELDS = {"suite", "workload", "method", "n", "seconds", "requests", "bytes", "ratio_vs_objbutler", "min", "max"}


@pytest.mark.slow
def test_bench_quick_local_smoke(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    report = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        ["bench", "all", "--target", "local", "--quick", "--image-size", "128", "--smoke",
         "--json", str(out), "--report", str(report)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "HEADLINE" in result.output
    rows = json.loads(out.read_text())
    assert rows
    for row in rows:
        assert set(row) >= ROW_FIELDS, row
        assert row["suite"] in ("cutouts", "cutouts-size", "registry")
        assert isinstance(row["n"], int) and row["n"] >= 1
        if row["seconds"] is not None:
            assert row["seconds"] > 0 and row["min"] <= row["seconds"] <= row["max"]
    methods = {(r["suite"], r["method"]) for r in rows if r["seconds"] is not None}
    for method in ("objbutler", "whole-download", "exact-ranges", "merged-64KiB", "astropy-fsspec", "zarr-per-stamp"):
        assert ("cutouts", method) in methods, method
    assert ("registry", "objbutler") in methods
    objbutler = [r for r in rows if r["method"] == "objbutler" and r["suite"] == "cutouts"]
    assert all(r["ratio_vs_objbutler"] == 1.0 for r in objbutler)
    assert all(r["requests"] and r["bytes"] for r in objbutler)  # counted by the CountingStore on a local target
    assert (report / "README.md").read_text().startswith("# objbutler benchmarks")
    assert (report / "cutouts_time.png").stat().st_size > 0
    assert (report / "registry.png").stat().st_size > 0


def test_bench_rejects_unknown_suite() -> None:
    result = CliRunner().invoke(main, ["bench", "everything"])
    assert result.exit_code != 0


def test_registry_writer_rows_follow_the_protocol_and_count_options(tmp_path: Path) -> None:
    """--protocols/--puts-per-writer/--put-many/--writers-only reach the registry suite's settings."""
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(
        main, ["bench", "registry", "--target", "local", "--smoke", "--writers", "2", "--protocols", "claimed",
               "--puts-per-writer", "3", "--put-many", "7", "--writers-only", "--json", str(out)],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    writers = [r for r in rows if r["workload"].startswith("writers-") and r["protocol"] != "floor"]
    assert {r["protocol"] for r in writers} == {"claimed"}  # only the protocol asked for
    assert {r["n"] for r in writers} == {6}  # 2 writers x 3 puts
    floors = [r for r in rows if r["workload"].startswith("writers-") and r["protocol"] == "floor"]
    assert {(r["mode"], r["writers"], r["n"], r["failed"]) for r in floors} == {
        ("processes", 2, 6, 0), ("threads", 2, 6, 0)}  # each writer count's floor, in the same run
    assert all(r["of_floor"] > 0 for r in writers), writers
    assert {r["n"] for r in rows if r["workload"].startswith("put_many")} == {7}
    assert not [r for r in rows if "manifest" in r["workload"] or "daf" in r["method"] or "query" in r["workload"]]
    refused = CliRunner().invoke(main, ["bench", "registry", "--target", "local", "--protocols", "bogus"])
    assert refused.exit_code == 2 and "--protocols" in refused.output


def test_bench_verify_local_smoke(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = CliRunner().invoke(main, ["bench", "verify", "--target", "local", "--quick", "--image-size", "128",
                                       "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.count("VERIFY ") == 2 and "TARGET" not in result.output
    rows = json.loads(out.read_text())
    assert {(r["format"], r["method"]) for r in rows} == {
        (fmt, method) for fmt in ("fits", "zarr") for method in ("get verify=False", "get verify=True", "sha256 only")}
    assert all(r["suite"] == "verify" and r["seconds"] > 0 for r in rows)


# -- the registry suite on two network profiles ----------------------------------------------------------


@pytest.mark.slow
def test_registry_quick_on_loopback_and_cloud_profiles(localstack_server: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.run import main as run_benchmarks

    for name, value in localstack_server.env.items():
        monkeypatch.setenv(name, value)
    out, report = tmp_path / "rows.json", tmp_path / "report"
    status = run_benchmarks("registry", f"s3://bench-{uuid.uuid4().hex[:8]}", quick=True, json_path=out,
                            report_dir=report, profiles="loopback,cloud-20ms")
    assert status == 0
    rows = json.loads(out.read_text())
    assert {r["profile"] for r in rows} == {"loopback", "cloud-20ms"}
    for profile in ("loopback", "cloud-20ms"):
        writers = {(r["protocol"], r["mode"], r["writers"]): r for r in rows
                   if r["profile"] == profile and r["workload"].startswith("writers-") and r["protocol"] != "floor"}
        floors = [r for r in rows if r["profile"] == profile and r.get("protocol") == "floor"]
        # counted by the proxy: the data and the record (a retry of a request LocalStack answered 5xx under
        # load counts too)
        assert all(2.0 <= r["requests_per_put"] < 3 and r["failed"] == 0 for r in floors), floors
        assert set(writers) == {(protocol, mode, w) for protocol in ("sequenced", "claimed")
                                for mode in ("processes", "threads") for w in (1, 4)}, profile
        for (_protocol, _mode, w), row in writers.items():
            assert row["expected"] == w * row["puts_per_writer"] == row["n"]
            assert row["committed"] == row["expected"] and row["lost"] == 0 and row["failed"] == 0, row
            assert row["visible"] == row["expected"]
            assert row["requests_per_put"] > 0 and row["gets_per_put"] is not None, row
            assert row["p50_ms"] <= row["p99_ms"] <= row["worst_ms"]
            assert row["peak_in_flight"] >= 1
            by_object = row["requests_by_object_per_put"]  # where the requests went: they add up
            assert abs(sum(by_object.values()) - row["requests_per_put"]) <= 0.25, (by_object, row)
            assert sum(v for k, v in by_object.items() if k.endswith(" data")) >= 1.0, by_object
        many = [r for r in rows if r["profile"] == profile and r["workload"].startswith("put_many")]
        floor = next(r for r in many if r["method"].endswith("(floor)"))
        assert floor["committed"] == floor["n"] and floor["requests"] >= 1  # one counted PUT per object at least
        put_many = next(r for r in many if r["method"] == "objbutler put_many")
        if put_many["error"] and put_many["error"].startswith("not available"):
            assert put_many["seconds"] is None
        else:
            assert put_many["committed"] == put_many["n"] and put_many["lost"] == 0, put_many
    text = (report / "README.md").read_text()
    assert "## Profiles side by side" in text and "| loopback | cloud-20ms |" in text
    assert text.count("| cloud-20ms | writers-") == 12  # (2 protocols + the floor) x 2 modes x 2 writer counts


# -- the counting proxy: a FaultProxy with latency, a bandwidth cap and in-flight counts ------------------


def test_requests_are_counted_by_the_part_of_the_repository_they_touch() -> None:
    from benchmarks.registry import requests_by_object

    log = [{"path": "/b/repo/manifest/claims/ab/cd.json", "query": "", "kind": "put-if-absent"},
           {"path": "/b/manifest/log/007/00000000000000000003.json", "query": "", "kind": "put-if-absent"},
           {"path": "/b", "query": "list-type=2&prefix=repo/manifest/log/007/", "kind": "list"},
           {"path": "/b/objbutler.json", "query": "", "kind": "get"},
           {"path": "/b/manifest/log/~/00000000000000000400.json", "query": "", "kind": "get"},
           {"path": "/b/manifest/log/~compaction/00000000000000000002.json", "query": "", "kind": "get"},
           {"path": "/b/raw/r/metric/visit=1.fits", "query": "", "kind": "put"},
           {"path": "/b/raw/r/metric/visit=2.fits", "query": "", "kind": "put"},
           {"path": "/b", "query": "delete=", "kind": "post"}]
    assert requests_by_object(log) == {"put data": 2, "put-if-absent claims": 1, "put-if-absent log slots": 1,
                                       "list log slots": 1, "get markers": 1, "get compaction records": 1,
                                       "post bucket": 1, "get config": 1}


def test_pacer_schedule_spends_n_over_rate_seconds() -> None:
    now = [10.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(1000.0, clock=lambda: now[0], sleep=sleep)
    pieces = list(pacer.pieces(b"x" * 2500, size=1000))
    assert [len(p) for p in pieces] == [1000, 1000, 500]
    assert pacer.schedule == [(11.0, 1000), (12.0, 1000), (12.5, 500)]
    assert sum(slept) == pytest.approx(2.5)
    now[0] = 20.0  # an idle link saves no credit: the next piece still takes its own time
    assert pacer.release_time(100) == pytest.approx(20.1)


class _SlowUpstream(http.server.BaseHTTPRequestHandler):
    """Answers GET /big/N with N bytes after 0.3 s (so that requests overlap) and PUT with 200."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        size = int(self.path.rsplit("/", 1)[1])
        time.sleep(0.3)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(b"y" * size)

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowUpstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_proxy_counts_in_flight_and_kinds(slow_upstream: str) -> None:
    with ProxyProcess(slow_upstream) as proxy:
        with ThreadPoolExecutor(4) as pool:
            bodies = list(pool.map(lambda _: urllib.request.urlopen(f"{proxy.endpoint}/big/10", timeout=30).read(),
                                   range(4)))
        assert bodies == [b"y" * 10] * 4
        stats = proxy.stats()
        assert stats["requests"] == 4 and stats["by_method"] == {"GET": 4} and stats["by_kind"] == {"get": 4}
        assert stats["peak_in_flight"] >= 2 and stats["in_flight"] == 0
        assert stats["response_bytes"] == 40
        proxy.reset()
        assert proxy.stats()["requests"] == 0 and proxy.stats()["peak_in_flight"] == 0


def test_proxy_caps_bandwidth_per_connection(slow_upstream: str) -> None:
    size, cap = 200_000, 1_000_000.0
    with ProxyProcess(slow_upstream, bandwidth=cap) as proxy:
        started = time.perf_counter()
        with urllib.request.urlopen(f"{proxy.endpoint}/big/{size}", timeout=30) as answer:
            assert len(answer.read()) == size
        down = time.perf_counter() - started
        upload = urllib.request.Request(f"{proxy.endpoint}/up", data=b"z" * size, method="PUT")
        started = time.perf_counter()
        with urllib.request.urlopen(upload, timeout=30) as answer:
            answer.read()
        up = time.perf_counter() - started
        log = proxy.log()
    assert down >= 0.3 + size / cap and up >= size / cap  # lower bounds: the cap cannot be beaten
    assert [(e["kind"], e["request_bytes"], e["response_bytes"]) for e in log] == [("get", 0, size), ("put", size, 0)]
    assert all(e["seconds"] >= size / cap for e in log)


def test_bench_finds_the_harness_through_its_entry_point() -> None:
    """The installed objbutler-bench distribution (README's test command) registers benchmarks.run.main."""
    import benchmarks.run
    from objbutler.cli import bench_harness

    assert bench_harness() is benchmarks.run.main


def test_bench_without_the_harness_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """As from a wheel: no distribution registers the harness, so one line says what to install."""
    import objbutler.cli as cli

    monkeypatch.setattr(cli, "BENCH_ENTRY_POINTS", "objbutler.bench-not-installed")
    result = CliRunner().invoke(main, ["bench", "cutouts", "--target", "local", "--quick"])
    assert result.exit_code == ExitCode.ERROR, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"error: objbutler bench needs the benchmark harness, which is not installed; "
                     f"from a clone of objbutler: {cli.BENCH_INSTALL}"], lines
