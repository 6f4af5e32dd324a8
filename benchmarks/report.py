"""``--report DIR``: a Markdown report (README.md) with PNG plots, the machine and the versions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.measure import Row
from benchmarks.verdicts import Verdict

__all__ = ["HAND_WRITTEN", "human_bytes", "side_by_side", "write_report", "writers_table"]

HAND_WRITTEN = "<!-- everything below this line is hand-written and kept when the report is written again -->"

_METHOD_ORDER = ("objbutler", "whole-download", "exact-ranges", "exact-tiles", "merged-64KiB", "merged-4MiB",
                 "merged-tiles-4MiB", "astropy-fsspec", "astrocut", "zarr-per-stamp")


def _seconds(row: Row) -> str:
    if row.seconds is None:
        return f"failed ({row.error})" if row.error else "-"
    mark = "~" if row.extrapolated_from else ""
    spread = f" ({row.min:.3g}-{row.max:.3g})" if row.reps > 1 and row.min is not None and row.max is not None else ""
    return f"{mark}{row.seconds:.3g}{spread}"


def human_bytes(value: float | None) -> str:
    """``67.1 MB``, ``691 B`` or ``-``."""
    if value is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def _ratio(row: Row) -> str:
    return "-" if row.ratio_vs_objbutler is None else f"{row.ratio_vs_objbutler:.3g}x"


def _order(method: str) -> int:
    return _METHOD_ORDER.index(method) if method in _METHOD_ORDER else len(_METHOD_ORDER)


def _table(rows: list[Row], first: str = "workload") -> list[str]:
    lines = [f"| {first} | method | seconds (min-max) | requests | bytes moved | time / objbutler's | reps |",
             "|---|---|---:|---:|---:|---:|---:|"]
    several = len({row.extra.get("profile") for row in rows}) > 1
    for row in rows:
        note = f" (from {row.extrapolated_from})" if row.extrapolated_from else ""
        mark = "~" if row.extrapolated_from else ""
        where = f" [{row.extra.get('profile')}]" if several else ""
        requests = "-" if row.requests is None else f"{mark}{row.requests:g}"
        nbytes = human_bytes(row.bytes) if row.bytes is None else f"{mark}{human_bytes(row.bytes)}"
        lines.append(f"| {row.workload}{where} | {row.method}{note} | {_seconds(row)} | {requests} | {nbytes} | "
                     f"{_ratio(row)} | {row.reps} |")
    return lines


def _plot_cutouts(rows: list[Row], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = [r for r in rows if r.suite == "cutouts" and r.workload.startswith("random-") and r.seconds is not None]
    formats = sorted({str(r.extra.get("format")) for r in matrix}, key=lambda f: ("fits", "fits-rice", "zarr").index(f)
                     if f in ("fits", "fits-rice", "zarr") else 9)
    written = []
    for quantity, name, label in (("seconds", "cutouts_time.png", "seconds (median)"),
                                  ("bytes", "cutouts_bytes.png", "bytes moved per call")):
        if not formats:
            break
        figure, axes = plt.subplots(1, len(formats), figsize=(5.2 * len(formats), 4.4), squeeze=False)
        for axis, fmt in zip(axes[0], formats, strict=True):
            by_method: dict[str, list[Row]] = defaultdict(list)
            for row in matrix:
                if row.extra.get("format") == fmt and getattr(row, quantity) is not None:
                    by_method[row.method].append(row)
            for method in sorted(by_method, key=_order):
                points = sorted(by_method[method], key=lambda r: r.n)
                xs = [p.n for p in points]
                ys = [float(getattr(p, quantity)) for p in points]
                line = axis.plot(xs, ys, marker="o", label=method, linewidth=2.5 if method == "objbutler" else 1.2)[0]
                extrapolated = [(x, y) for x, y, p in zip(xs, ys, points, strict=True) if p.extrapolated_from]
                if extrapolated:
                    axis.plot(*zip(*extrapolated, strict=True), linestyle="none", marker="o", markersize=10,
                              markerfacecolor="none", color=line.get_color())
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_title(f"{fmt}, {matrix[0].extra.get('image_size')} px square")
            axis.set_xlabel("random 64x64 stamps (N)")
            axis.set_ylabel(label)
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=7)
        figure.suptitle("open circles: extrapolated from a subset of the stamps")
        figure.tight_layout()
        figure.savefig(directory / name, dpi=110)
        plt.close(figure)
        written.append(name)
    sweep = [r for r in rows if r.suite == "cutouts-size" and r.seconds is not None]
    if sweep:
        counts = sorted({r.n for r in sweep})
        figure, axes = plt.subplots(1, len(counts), figsize=(5.2 * len(counts), 4.4), squeeze=False)
        for axis, n in zip(axes[0], counts, strict=True):
            by_method = defaultdict(list)
            for row in sweep:
                if row.n == n:
                    by_method[row.method].append(row)
            for method in sorted(by_method, key=_order):
                points = sorted(by_method[method], key=lambda r: int(r.extra.get("image_size", 0)))
                style = "--" if any(p.extrapolated_from for p in points) else "-"
                axis.plot([int(p.extra.get("image_size", 0)) for p in points], [float(p.seconds or 0) for p in points],
                          marker="o", linestyle=style, label=method)
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_title(f"FITS, {n} random stamps")
            axis.set_xlabel("image side (pixels)")
            axis.set_ylabel("seconds (median)")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=7)
        figure.suptitle("image-size sweep (dashed: extrapolated from a subset of the stamps)")
        figure.tight_layout()
        figure.savefig(directory / "cutouts_size.png", dpi=110)
        plt.close(figure)
        written.append("cutouts_size.png")
    return written


def _plot_registry(rows: list[Row], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    writers = [r for r in rows if r.suite == "registry" and r.workload.startswith("writers-")
               and r.extra.get("puts_per_second") is not None]
    queries = [r for r in rows if r.suite == "registry" and r.workload.startswith("open+query") and r.seconds]
    if not writers and not queries:
        return []
    figure, axes = plt.subplots(1, 2, figsize=(10.4, 4.2))
    by_place: dict[str, list[Row]] = defaultdict(list)
    for row in writers:
        by_place[" ".join(str(part) for part in (row.workload.split(" ", 1)[1], row.extra.get("profile", ""),
                                                    row.extra.get("protocol", "")) if part)].append(row)
    for place, points in sorted(by_place.items()):
        points.sort(key=lambda r: int(r.extra.get("writers", 0)))
        axes[0].plot([int(p.extra["writers"]) for p in points], [float(p.extra["puts_per_second"]) for p in points],
                     marker="o", label=place)
    axes[0].set_xlabel("writers")
    axes[0].set_ylabel("committed puts per second")
    axes[0].set_title("concurrent small puts")
    axes[0].grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    for mode in ("cold", "warm"):
        points = sorted((r for r in queries if f" {mode} " in r.workload), key=lambda r: r.n)
        if points:
            axes[1].plot([p.n for p in points], [float(p.seconds or 0) for p in points], marker="o", label=mode)
    axes[1].axhline(2.0, color="grey", linestyle=":", label="cold target 2 s")
    axes[1].axhline(0.1, color="grey", linestyle="--", label="warm target 0.1 s")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("datasets in the repository")
    axes[1].set_ylabel("open + equality query (s)")
    axes[1].set_title("open + query")
    axes[1].grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(directory / "registry.png", dpi=110)
    plt.close(figure)
    return ["registry.png"]


def _machine_lines(meta: dict[str, Any]) -> list[str]:
    machine = meta.get("machine", {})
    packages = ", ".join(f"{k} {v}" for k, v in machine.get("packages", {}).items() if v)
    return [
        f"- machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory_gib')} GiB, "
        f"{machine.get('os')}, Python {machine.get('python')} (shared with other engineers' test runs: noisy)",
        f"- server: {meta.get('target')} (LocalStack {machine.get('localstack')} on 127.0.0.1, no Docker), every "
        "client through the counting proxy",
        f"- versions: {packages}",
        f"- network profiles: {', '.join(meta.get('profiles') or ['loopback'])} (a counting proxy in front of the "
        "server adds the latency and paces each connection; see benchmarks/profiles.py)",
        f"- objbutler commit: {machine.get('git_commit')} (plus the working tree at the time of the run)",
        f"- run: `objbutler bench {meta.get('suite')} --target {meta.get('target')}"
        f"{' --quick' if meta.get('quick') else ''}`, {meta.get('elapsed_seconds', 0) / 60:.1f} min, "
        f"finished {meta.get('finished')}",
    ]


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def writers_table(rows: list[Row]) -> list[str]:
    """The concurrent-writer and put_many rows: throughput, cost per put, latency, losses and CPU."""
    if not rows:
        return []
    out = ["", "Writers put 16x16 float32 arrays with distinct data IDs; requests and GETs are per returned put "
           "(each writer's open and warm-up put excluded). lost = returned but not in a fresh Butler's query; "
           "failed = exceptions (and puts of writers that never reported). CPU seconds: writer processes "
           "(threads: the whole benchmark process) / the counting proxy / the server, on a 2-core machine "
           "shared with other work: "
           "when writers + proxy + server approach 2 x wall, the CPU is the limit.", "",
           "| profile | workload | method | protocol | puts | puts/s | floor puts/s | requests/put | GETs/put | "
           "p50 ms | p99 ms | worst ms | lost | failed | CPU s writers / proxy / server | wall s |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        x = r.extra
        cpu = " / ".join(_cell(x.get(k)) for k in ("client_cpu_s", "proxy_cpu_s", "server_cpu_s"))
        rate = x.get("puts_per_second") if r.seconds is not None or r.error is None else f"{r.error}"
        out.append(f"| {x.get('profile', '-')} | {r.workload} | {r.method} | {x.get('protocol', '-')} | "
                   f"{_cell(x.get('committed'))} / {r.n} | {_cell(rate)} | {_cell(x.get('floor_puts_per_second'))} | "
                   f"{_cell(x.get('requests_per_put'))} | {_cell(x.get('gets_per_put'))} | {_cell(x.get('p50_ms'))} | "
                   f"{_cell(x.get('p99_ms'))} | {_cell(x.get('worst_ms'))} | {_cell(x.get('lost'))} | "
                   f"{_cell(x.get('failed'))} | {cpu} | {_cell(x.get('wall_s', r.seconds))} |")
    return out


def side_by_side(rows: list[Row]) -> list[str]:
    """Seconds of every (suite, workload, method) under each profile, one column per profile."""
    profiles = list(dict.fromkeys(str(r.extra.get("profile")) for r in rows if r.extra.get("profile")))
    if len(profiles) < 2:
        return []
    cells: dict[tuple[str, str, str], dict[str, Row]] = defaultdict(dict)
    for row in rows:
        cells[(row.suite, row.workload, row.method)][str(row.extra.get("profile"))] = row
    out = ["", "## Profiles side by side", "", "Seconds (median) of the same work under each network profile.", "",
           "| suite | workload | method | " + " | ".join(profiles) + " |",
           "|---|---|---|" + "---:|" * len(profiles)]
    for (suite, workload, method), by_profile in cells.items():
        values = [_seconds(by_profile[p]) if p in by_profile else "-" for p in profiles]
        out.append(f"| {suite} | {workload} | {method} | " + " | ".join(values) + " |")
    return out


def write_report(directory: Path, rows: list[Row], meta: dict[str, Any], headlines: list[str],
                 verdicts: list[Verdict], finished: str | None = None) -> Path:
    """Write ``README.md``, ``results.json`` and the PNG plots into ``directory``.

    A README already there keeps whatever follows its :data:`HAND_WRITTEN` line.

    Parameters
    ----------
    directory : pathlib.Path
        Created if missing.
    rows : list of Row
        Every measured row.
    meta : dict
        Run metadata (:func:`benchmarks.run.main` builds it).
    headlines : list of str
        The headline lines.
    verdicts : list of Verdict
        Every target's status.
    finished : str, optional
        When the run finished (default: now).

    Returns
    -------
    pathlib.Path
        The README.
    """
    directory.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "finished": finished or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    plots = _plot_cutouts(rows, directory) + _plot_registry(rows, directory)
    (directory / "results.json").write_text(json.dumps({"meta": meta, "rows": [r.to_json() for r in rows],
                                                        "targets": [v.to_json() for v in verdicts]}, indent=1) + "\n")
    out = ["# objbutler benchmarks", "", *_machine_lines(meta), "",
           "Times are medians of interleaved repetitions (methods run A B C, C B A, ... in the same rounds, after "
           "one warm-up each); min-max in brackets. Requests and bytes are counted by a proxy in front of the server, "
           "the same way for every method. `~` marks a number **extrapolated** linearly from the first *k* stamps "
           "(shown as `(from k)`): the per-stamp baselines are too slow to run in full. `time / objbutler's` above 1 "
           "means slower than objbutler.", "", "## Headlines", ""]
    out += [f"- {line.removeprefix('HEADLINE ')}" for line in headlines] or ["- (no cutouts suite in this run)"]
    out += ["", "## Targets (issues 3, 4, 5, 17)", "", "| issue | target | measured | status |", "|---|---|---|---|"]
    out += [f"| {v.issue} | {v.target} | {v.measured} | **{v.status}** |" for v in verdicts]
    for note in meta.get("notes", []):
        out.append(f"\nNote: {note}")
    matrix = [r for r in rows if r.suite == "cutouts"]
    if matrix:
        out += ["", "## Cutouts: 64x64 stamps from one PVI", ""]
        out += [f"![time vs N]({p})" for p in plots if p.startswith("cutouts_") and p != "cutouts_size.png"]
        for fmt in dict.fromkeys(str(r.extra.get("format")) for r in matrix):
            part = [r for r in matrix if r.extra.get("format") == fmt]
            object_bytes = part[0].extra.get("object_bytes")
            out += ["", f"### {fmt} ({human_bytes(object_bytes)} object)", "", *_table(part)]
    sweep = [r for r in rows if r.suite == "cutouts-size"]
    if sweep:
        out += ["", "## Cutouts: image-size sweep (FITS)", ""]
        out += [f"![size sweep]({p})" for p in plots if p == "cutouts_size.png"]
        out += ["", *_table(sweep)]
    registry = [r for r in rows if r.suite == "registry"]
    if registry:
        out += ["", "## Registry", ""]
        out += [f"![registry]({p})" for p in plots if p == "registry.png"]
        out += ["", "Requests in the writer rows are per committed put (lost commit races and refreshes included).",
                "", *_table(registry)]
        out += writers_table([r for r in registry if r.workload.startswith(("writers-", "put_many"))])
    out += side_by_side(rows)
    readme = directory / "README.md"
    kept = ""
    if readme.exists() and HAND_WRITTEN in readme.read_text():
        kept = readme.read_text().split(HAND_WRITTEN, 1)[1]
    readme.write_text("\n".join(out) + "\n\n" + HAND_WRITTEN + (kept or "\n"))
    return readme


def rows_from_json(records: list[dict[str, Any]]) -> list[Row]:
    """Rows back from :meth:`Row.to_json` objects (context fields go back into ``extra``)."""
    names = {field.name for field in dataclasses.fields(Row)} - {"extra"}
    return [Row(**{k: v for k, v in r.items() if k in names}, extra={k: v for k, v in r.items() if k not in names})
            for r in records]


def rerender(results: Path, directory: Path) -> Path:
    """Write the report again from a ``results.json`` (after changing this module, without re-measuring)."""
    from benchmarks.verdicts import cutout_headlines, verdicts

    saved = json.loads(results.read_text())
    rows = rows_from_json(saved["rows"])
    meta = {k: v for k, v in saved["meta"].items() if k != "finished"}
    return write_report(directory, rows, meta, cutout_headlines(rows), verdicts(rows, meta),
                        finished=saved["meta"].get("finished"))


if __name__ == "__main__":  # python -m benchmarks.report RESULTS_JSON DIR
    print(rerender(Path(sys.argv[1]), Path(sys.argv[2])))
