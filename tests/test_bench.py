"""Smoke test of the benchmark harness: a tiny quick run on a local target, so the harness cannot rot.

No timing assertions: only that the command runs and the rows, the report and
the plots come out with sane fields.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from objbutler.cli import main
from objbutler.cli_errors import ExitCode

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
