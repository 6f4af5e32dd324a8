"""Entry point of ``objbutler bench``: start the target, run the suites, print, write JSON and the report."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.measure import Row

__all__ = ["SUITES", "format_table", "main"]

SUITES = ("cutouts", "registry", "verify", "sky", "service", "all")
"""``all`` is cutouts and registry (the committed report); ``verify`` (:mod:`benchmarks.verify`) and ``sky``
(:mod:`benchmarks.sky`) and ``service`` (:mod:`benchmarks.service`) run on their own."""


def _logger(started: float) -> Callable[[str], None]:
    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {line}", flush=True)

    return log


def _fmt_seconds(row: Row) -> str:
    if row.seconds is None:
        return "failed" if row.error else "-"
    mark = "~" if row.extrapolated_from else ""
    return f"{mark}{row.seconds:.4g}"


def format_table(rows: list[Row]) -> list[str]:
    """A plain-text table of the rows, grouped by suite, format and workload."""
    from benchmarks.report import human_bytes

    header = f"{'suite':<13} {'profile':<11} {'format':<9} {'workload':<24} {'method':<22} {'seconds':>10} " \
             f"{'min':>9} {'max':>9} {'requests':>9} {'bytes':>9} {'ratio':>8}"
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = "-" if row.ratio_vs_objbutler is None else f"{row.ratio_vs_objbutler:.3g}x"
        requests = "-" if row.requests is None else f"{row.requests:g}"
        lines.append(
            f"{row.suite:<13} {row.extra.get('profile', '')!s:<11} {row.extra.get('format', '')!s:<9} "
            f"{row.workload:<24} {row.method:<22} "
            f"{_fmt_seconds(row):>10} {'' if row.min is None else f'{row.min:.4g}':>9} "
            f"{'' if row.max is None else f'{row.max:.4g}':>9} {requests:>9} {human_bytes(row.bytes):>9} {ratio:>8}"
        )
    return lines


def _cost_model_note(where: Any, log: Callable[[str], None]) -> str:
    """Measure the target's latency, bandwidth and concurrency, and say which model the planner uses there."""
    from benchmarks.calibrate import measure_cost_model
    from objbutler.ranges import CostModel
    from objbutler.stores import open_store

    store = open_store(where.new_uri("calibrate"), **where.store_options)
    measured = measure_cost_model(store, "scratch.bin")
    used = CostModel.for_store(store)
    note = (
        f"read cost model measured on the target: {measured.latency * 1e3:.1f} ms per request, "
        f"{measured.bandwidth / 1e6:.0f} MB/s, {measured.concurrency} request(s) served at once; "
        f"the planner's default for it: {used.latency * 1e3:.1f} ms, {used.bandwidth / 1e6:.0f} MB/s, "
        f"{used.concurrency} at once"
    )
    log(note)
    return note


def main(
    suite: str = "all",
    target: str = "localstack",
    quick: bool = False,
    json_path: str | Path | None = None,
    report_dir: str | Path | None = None,
    image_size: int | None = None,
    smoke: bool = False,
    profiles: str | Sequence[str] = "loopback",
    writers: Sequence[int] | None = None,
    registry_overrides: dict[str, Any] | None = None,
) -> int:
    """Run the benchmark suites on a target; print the table and headlines.

    Parameters
    ----------
    suite : {"cutouts", "registry", "verify", "sky", "service", "all"}
        What to run (``all``: cutouts and registry).
    target : str
        ``localstack`` (default), ``moto``, ``swift``, ``local``, an ``s3://`` URI or a path.
    quick : bool
        The short run (under 3 minutes on 2 cores; per-stamp baselines measured
        on a subset of stamps and extrapolated, labelled ``~``).
    json_path : path, optional
        Write the rows here (a JSON list).
    report_dir : path, optional
        Write README.md and PNG plots here.
    image_size : int, optional
        Side of the cutouts image (default 4096; the smoke test uses a tiny one).
    smoke : bool
        Shrink the registry suite to seconds (for the unit test; numbers meaningless).
    profiles : str or sequence of str
        Network profiles (:mod:`benchmarks.profiles`), e.g. ``"loopback,cloud-20ms"``: every suite runs once
        per profile and each row carries ``profile``; a slow profile on a target without HTTP is skipped
        with a note.
    writers : sequence of int, optional
        Writer counts of the registry suite (default: the setting's, 1, 4, 16, 64 in full).
    registry_overrides : dict, optional
        Fields of :class:`benchmarks.registry.RegistrySettings` to replace (``protocols``,
        ``puts_per_writer``, ``put_many``, ``manifest_sizes``, ...).

    Returns
    -------
    int
        Exit status (0 when every suite ran; failed methods are reported in rows).
    """
    from benchmarks import machine
    from benchmarks.profiles import parse_profiles, profiled
    from benchmarks.targets import open_target

    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    started = time.perf_counter()
    log = _logger(started)
    chosen = parse_profiles(profiles if isinstance(profiles, str) else ",".join(profiles))
    rows: list[Row] = []
    notes: list[str] = []
    with open_target(target, log=log) as base:
        for profile in chosen:
            if not profile.is_loopback and (base.proxy is None or base.server_endpoint is None):
                notes.append(f"profile {profile.name} skipped: target {target} has no HTTP server on 127.0.0.1")
                continue
            log(f"profile {profile.describe()}")
            with profiled(base, profile) as where:
                found, said = _run_suites(suite, where, quick, image_size, smoke, writers, log,
                                          registry_overrides or {})
            for row in found:
                row.extra.setdefault("profile", profile.name)
            rows += found
            notes += [note if len(chosen) == 1 else f"[{profile.name}] {note}" for note in said]
    if len(chosen) > 1:
        notes.append("profiles: " + "; ".join(p.describe() for p in chosen))
    elapsed = time.perf_counter() - started
    meta: dict[str, Any] = {
        "suite": suite, "target": target, "quick": quick, "image_size": image_size or 4096,
        "elapsed_seconds": round(elapsed, 1), "machine": machine.describe(), "notes": notes,
        "profiles": [p.name for p in chosen], "writers": list(writers) if writers else None,
    }
    return _finish(rows, meta, suite, elapsed, json_path, report_dir)


def _run_suites(suite: str, where: Any, quick: bool, image_size: int | None, smoke: bool,
                writers: Sequence[int] | None, log: Callable[[str], None],
                registry_overrides: dict[str, Any] | None = None) -> tuple[list[Row], list[str]]:
    """Every suite ``suite`` names, on one (profiled) target: rows and notes."""
    rows: list[Row] = []
    notes: list[str] = []
    if suite in ("cutouts", "all"):
        from benchmarks.cutouts import run_cutouts, settings_for

        notes.append(_cost_model_note(where, log))
        rows += run_cutouts(where, settings_for(quick, image_size), log)
    if suite in ("registry", "all"):
        from benchmarks.registry import registry_settings, run_registry

        settings = dataclasses.replace(registry_settings(quick, smoke, tuple(writers) if writers else None),
                                       **(registry_overrides or {}))
        registry_rows, registry_notes = run_registry(where, settings, log)
        rows += registry_rows
        notes += registry_notes
    if suite == "verify":
        from benchmarks.verify import run_verify, verify_settings

        rows += run_verify(where, verify_settings(quick, image_size), log)
    if suite == "sky":
        from benchmarks.sky import run_sky, sky_settings

        sky_rows, sky_notes = run_sky(where, sky_settings(quick, smoke), log)
        rows += sky_rows
        notes += sky_notes
    if suite == "service":
        from benchmarks.service import run_service, service_settings

        service_rows, service_notes = run_service(where, service_settings(quick, smoke), log)
        rows += service_rows
        notes += service_notes
    return rows, notes


def _finish(rows: list[Row], meta: dict[str, Any], suite: str, elapsed: float, json_path: str | Path | None,
            report_dir: str | Path | None) -> int:
    """Print the table, notes, headlines and targets; write the JSON rows and the report."""
    from benchmarks.verdicts import cutout_headlines, verdicts

    notes = meta["notes"]
    from benchmarks.report import writers_table

    print()
    for line in format_table(rows):
        print(line)
    for line in writers_table([r for r in rows if r.suite == "registry"
                               and r.workload.startswith(("writers-", "put_many"))]):
        print(line)
    print()
    for note in notes:
        print(f"NOTE {note}")
    from benchmarks.verify import verify_headlines

    headlines = cutout_headlines(rows) + verify_headlines(rows)
    for line in headlines:
        print(line)
    # cutouts' and registry's targets
    checks = verdicts(rows, meta) if suite not in ("verify", "sky", "service") else []
    print()
    for verdict in checks:
        print(f"TARGET issue {verdict.issue} [{verdict.status}] {verdict.target}: {verdict.measured}")
    print(f"\nfinished in {elapsed / 60:.1f} min")
    if json_path is not None:
        Path(json_path).write_text(json.dumps([row.to_json() for row in rows], indent=1) + "\n")
        print(f"wrote {json_path}")
    if report_dir is not None:
        from benchmarks.report import write_report

        write_report(Path(report_dir), rows, meta, headlines, checks)
        print(f"wrote the report to {report_dir}")
    return 0


if __name__ == "__main__":  # python -m benchmarks.run SUITE [options]: the same as objbutler bench
    from objbutler.cli import bench

    bench()
