"""Headline ratios and the met / not met verdict of every target of issues 3, 4, 5 and 17.

Everything here reads rows; nothing measures. A target whose rows are
missing (a suite not run, a method that failed) is ``not measured``, never met.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from typing import Any

from benchmarks.measure import Row

__all__ = ["Verdict", "cutout_headlines", "verdicts"]

MB = 1_000_000
FLOOR_SHARE = 0.5
"""Proposed floor-relative target for concurrent writers: this share of the puts/s of the same writers making
two raw writes per put (:mod:`benchmarks.registry_writers`). A claimed put writes three objects and folding
reads about one more, so 2/4 of the floor is what the protocol can reach when the floor is the limit."""
PUT_MANY_FLOOR_SHARE = 0.8
"""Proposed floor-relative target for put_many: this share of the raw-PUT floor (the same objects, PUT at the
store's concurrency), divided by the writes each dataset needs (:data:`PUT_MANY_WRITES`)."""
PUT_MANY_WRITES = {"sequenced": 1, "claimed": 2, "timestamped": 1}
"""Writes per dataset of put_many beside the shared commits: the data object, and in a claimed repository its claim."""


@dataclasses.dataclass
class Verdict:
    """One target: what it asks, what was measured, and whether it holds."""

    issue: int
    target: str
    measured: str
    status: str  # "met", "not met", "not measured"

    def to_json(self) -> dict[str, Any]:
        """As a JSON object."""
        return dataclasses.asdict(self)


def _find(rows: Iterable[Row], suite: str, workload: str, method: str, fmt: str | None = None) -> Row | None:
    for row in rows:
        if (row.suite, row.workload, row.method) == (suite, workload, method) and row.seconds is not None and (
            fmt is None or row.extra.get("format") == fmt
        ):
            return row
    return None


def _label(row: Row) -> str:
    return f"~{row.seconds:.3g} s (extrapolated from {row.extrapolated_from})" if row.extrapolated_from else (
        f"{row.seconds:.3g} s")


def _speedup(rows: list[Row], workload: str, method: str, fmt: str) -> tuple[float | None, str]:
    ours = _find(rows, "cutouts", workload, "objbutler", fmt)
    theirs = _find(rows, "cutouts", workload, method, fmt)
    if ours is None or theirs is None or not ours.seconds or theirs.seconds is None:
        return None, "not measured"
    ratio = theirs.seconds / ours.seconds
    return ratio, f"{ratio:.1f}x ({method} {_label(theirs)} vs objbutler {ours.seconds:.3g} s)"


def _largest(rows: list[Row]) -> str | None:
    counts = sorted({r.n for r in rows if r.suite == "cutouts" and r.workload.startswith("random-")})
    return f"random-{counts[-1]}" if counts else None


def cutout_headlines(rows: list[Row]) -> list[str]:
    """The lines printed after a cutouts run: objbutler's speed-ups and the planner verdict."""
    largest = _largest(rows)
    if largest is None:
        return []
    lines = []
    for fmt in ("fits", "fits-rice"):
        _, text = _speedup(rows, largest, "astropy-fsspec", fmt)
        lines.append(f"HEADLINE {fmt} {largest}: objbutler vs astropy fits.open(use_fsspec)+.section: {text}")
    _, text = _speedup(rows, largest, "zarr-per-stamp", "zarr")
    lines.append(f"HEADLINE zarr {largest}: objbutler vs zarr per-stamp slicing: {text}")
    for fmt in ("fits", "fits-rice", "zarr"):
        _, text = _speedup(rows, "random-1", "whole-download", fmt)
        lines.append(f"HEADLINE {fmt} random-1: objbutler vs whole download: {text}")
    worst = _planner_cells(rows)
    if worst:
        misses = [c for c in worst if c[3] > 1.3]
        verdict = "met" if not misses else f"NOT met in {len(misses)} of {len(worst)} cells"
        lines.append(f"HEADLINE planner within 1.3x of the best fixed strategy in every cell: {verdict}"
                     f" (worst {max(c[3] for c in worst):.2f}x: {max(worst, key=lambda c: c[3])[:3]})")
    return lines


def _planner_cells(rows: list[Row]) -> list[tuple[str, str, str, float]]:
    """Per cell (suite, format, workload): objbutler's time over the best fixed strategy's."""
    cells: dict[tuple[str, str, str], dict[str, float]] = {}
    for row in rows:
        measured = row.kind == "objbutler" or row.extrapolated_from is None  # extrapolated strategies never count
        if row.suite.startswith("cutouts") and row.seconds is not None and row.kind in ("objbutler", "fixed") and \
                measured:
            key = (row.suite, str(row.extra.get("format")), row.workload)
            cells.setdefault(key, {})[row.method if row.kind == "fixed" else "objbutler"] = row.seconds
    out = []
    for key, times in cells.items():
        fixed = [t for m, t in times.items() if m != "objbutler"]
        if "objbutler" in times and fixed:
            out.append((*key, times["objbutler"] / min(fixed)))
    return sorted(out)


def _bound(rows: list[Row], workload: str, method: str, fmt: str, floor: str, what: str) -> str:
    """``; bound: ...`` when a floor row was measured: the best ratio any reader could reach against ``method``."""
    theirs = _find(rows, "cutouts", workload, method, fmt)
    lowest = _find(rows, "cutouts", workload, floor, fmt)
    if theirs is None or lowest is None or not lowest.seconds or theirs.seconds is None:
        return ""
    return (f"; bound: {what} alone takes {_label(lowest)}, so no reader can beat {method} by more than "
            f"{theirs.seconds / lowest.seconds:.1f}x here")


def verdicts(rows: list[Row], meta: dict[str, Any]) -> list[Verdict]:
    """Every target of issues 3, 4 and 5 with its status."""
    out: list[Verdict] = []
    largest = _largest(rows) or "random-1000"

    def judge(issue: int, target: str, value: float | None, text: str, ok: bool | None) -> None:
        status = "not measured" if value is None or ok is None else ("met" if ok else "not met")
        out.append(Verdict(issue, target, text, status))

    # issue 4: cutouts
    for fmt in ("fits", "fits-rice"):
        ratio, text = _speedup(rows, largest, "astropy-fsspec", fmt)
        judge(4, f"{fmt}, N=1000: >= 50x faster than astropy use_fsspec + .section", ratio, text + _bound(
            rows, largest, "astropy-fsspec", fmt, "floor: GET only", "moving the bytes of every tile"),
              None if ratio is None else ratio >= 50)
    ratio, text = _speedup(rows, largest, "zarr-per-stamp", "zarr")
    judge(4, "zarr, N=1000: >= 10x faster than zarr per-stamp slicing", ratio, text,
          None if ratio is None else ratio >= 10)
    for fmt in ("fits", "fits-rice", "zarr"):
        ratio, text = _speedup(rows, "random-1", "whole-download", fmt)
        bound = _bound(rows, "random-1", "whole-download", fmt, "floor: 2 round trips",
                       "the tile table's round trip, then the tile's")
        judge(4, f"{fmt}, N=1: >= 20x faster than downloading the whole object", ratio, text + bound,
              None if ratio is None else ratio >= 20)
    cells = _planner_cells(rows)
    if cells:
        misses = [c for c in cells if c[3] > 1.3]
        worst = max(cells, key=lambda c: c[3])
        text = (f"worst {worst[3]:.2f}x ({worst[0]} {worst[1]} {worst[2]}); {len(misses)} of {len(cells)} cells over "
                f"1.3x" + (": " + "; ".join(f"{c[1]} {c[2]} {c[3]:.2f}x" for c in misses) if misses else ""))
        judge(4, "every cell within 1.3x of the best fixed strategy (whole / exact / merged)", 1.0, text, not misses)
    else:
        judge(4, "every cell within 1.3x of the best fixed strategy (whole / exact / merged)", None, "not measured",
              None)
    one = _find(rows, "cutouts", "random-1", "objbutler", "fits")
    if one is not None and one.requests is not None and one.bytes is not None:
        judge(4, f"1 stamp from the {one.extra.get('image_size')} px float32 FITS: <= 3 requests and < 2 MB moved", 1,
              f"{one.requests:g} requests, {one.bytes / MB:.2f} MB", one.requests <= 3 and one.bytes < 2 * MB)
    else:
        judge(4, "1 stamp from the 4096 px float32 FITS: <= 3 requests and < 2 MB moved", None, "not measured", None)
    many = _find(rows, "cutouts", largest, "objbutler", "fits")
    if many is not None and many.bytes is not None:
        limit = int(many.extra.get("object_bytes", 0)) + MB
        judge(4, "1000 random stamps move no more than the image + 1 MB", 1, f"{many.bytes / MB:.1f} MB moved, "
              f"limit {limit / MB:.1f} MB", many.bytes <= limit)
    else:
        judge(4, "1000 random stamps move no more than the image + 1 MB", None, "not measured", None)
    out += _registry_verdicts(rows)
    # issue 5: the harness itself
    quick = meta.get("quick")
    elapsed = meta.get("elapsed_seconds")
    if elapsed is not None:
        limit = 180 if quick else 45 * 60
        judge(5, f"{'--quick' if quick else 'full'} run under {limit // 60} minutes on 2 cores", elapsed,
              f"{elapsed / 60:.1f} min ({meta.get('suite')} suite, target {meta.get('target')})", elapsed < limit)
    return out


def _registry_verdicts(rows: list[Row]) -> list[Verdict]:
    out: list[Verdict] = []

    def judge(target: str, row: Row | None, text: str, ok: bool | None) -> None:
        status = "not measured" if row is None or ok is None else ("met" if ok else "not met")
        out.append(Verdict(3, target, text if row is not None else "not measured", status))

    for where in ("local", "s3"):
        put = _find(rows, "registry", f"put-small {where}", "objbutler")
        judge(f"a put costs <= 3 requests + the data upload without contention ({where})", put,
              "" if put is None or put.requests is None else
              f"{put.requests:g} requests per put incl. the data upload "
              f"({put.extra.get('requests_without_upload', '?')} without it)",
              None if put is None or put.requests is None else put.requests <= 4)
    local = _find(rows, "registry", "put-small local", "objbutler")
    local_seconds = None if local is None else local.seconds
    judge("local-path put faster than 5 ms", local,
          "" if local_seconds is None else f"{local_seconds * 1000:.2f} ms per put",
          None if local_seconds is None else local_seconds < 0.005)
    for mode, limit in (("cold", 2.0), ("warm", 0.1)):
        row = _find(rows, "registry", f"open+query {mode} 1000000", "objbutler")
        seconds = None if row is None else row.seconds
        judge(f"open + equality query at 1M datasets under {limit:g} s {mode}", row,
              "" if seconds is None else f"{seconds:.3f} s", None if seconds is None else seconds < limit)
    return out + _writers_verdicts(rows)


def _writers_verdicts(rows: list[Row]) -> list[Verdict]:
    """Issue 17's targets, per profile and commit protocol, from the writer and put_many rows."""
    out: list[Verdict] = []
    writers = [r for r in rows if r.suite == "registry" and r.workload.startswith("writers-")
               and not r.method.startswith("floor")]
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in writers:
        key = (str(row.extra.get("profile", "loopback")), str(row.extra.get("protocol", "")),
               str(row.extra.get("mode", "processes")))
        groups.setdefault(key, []).append(row)
    for (profile, protocol, mode), group in groups.items():
        group.sort(key=lambda r: int(r.extra.get("writers", 0)))
        where = f"[{profile}, {protocol}, {mode}]"
        lost = sum(int(r.extra.get("lost", 0)) for r in group)
        failed = sum(int(r.extra.get("failed", r.extra.get("errors", 0)) or 0) for r in group)
        out.append(Verdict(17, f"{where} 0 lost and 0 failed puts", f"{lost} lost, {failed} failed in "
                           f"{sum(r.n for r in group)} puts", "met" if lost == failed == 0 else "not met"))
        rates = [(int(r.extra["writers"]), r.extra.get("puts_per_second")) for r in group]
        if all(rate is not None for _, rate in rates) and len(rates) > 1:
            text = ", ".join(f"{w}: {rate}" for w, rate in rates)
            ok = all(b[1] >= a[1] for a, b in itertools.pairwise(rates))  # type: ignore[operator]
            out.append(Verdict(17, f"{where} aggregate puts/s non-decreasing with writers", text,
                               "met" if ok else "not met"))
        by_count = dict(rates)
        one, sixteen = by_count.get(1), by_count.get(16)
        if one and sixteen is not None:
            ratio = float(sixteen) / float(one)
            out.append(Verdict(17, f"{where} 16 writers at least 4x one writer", f"{ratio:.2f}x",
                               "met" if ratio >= 4 else "not met"))
        shares = [(int(r.extra["writers"]), r.extra.get("of_floor")) for r in group]
        if shares and all(share is not None for _, share in shares):
            lowest = min(float(share) for _, share in shares)  # type: ignore[arg-type]
            out.append(Verdict(17, f"{where} (proposed, floor-relative) at least {FLOOR_SHARE:.0%} of the floor's "
                               "puts/s at every writer count", ", ".join(f"{w}: {share}" for w, share in shares),
                               "met" if lowest >= FLOOR_SHARE else "not met"))
        for row in group:
            if int(row.extra.get("writers", 0)) in (16, 64) and row.extra.get("requests_per_put") is not None:
                per_put = float(row.extra["requests_per_put"])
                out.append(Verdict(17, f"{where} {row.workload}: at most 3 requests per put",
                                   f"{per_put:g} requests, {row.extra.get('gets_per_put')} GETs per put; worst put "
                                   f"{row.extra.get('worst_ms')} ms", "met" if per_put <= 3 else "not met"))
    for row in rows:
        if row.suite == "registry" and row.workload.startswith("put_many") and row.method == "objbutler put_many":
            where = ", ".join(str(part) for part in (row.extra.get("profile", "loopback"), row.extra.get("protocol"))
                              if part)
            target = f"[{where}] put_many of {row.n:,} small datasets at least 2,000 datasets/s"
            if row.seconds is None:
                out.append(Verdict(17, target, row.error or "not measured", "not measured"))
                continue
            rate = row.extra.get("puts_per_second") or 0
            out.append(Verdict(17, target, f"{rate} datasets/s (raw-PUT floor {row.extra.get('floor_puts_per_second')}"
                               f"/s), {row.extra.get('lost')} lost, {row.extra.get('failed')} failed",
                               "met" if rate >= 2000 and not row.extra.get("lost") and not row.extra.get("failed")
                               else "not met"))
            share = row.extra.get("of_floor")
            if share is not None:
                writes = PUT_MANY_WRITES.get(str(row.extra.get("protocol")), 1)
                needed = PUT_MANY_FLOOR_SHARE / writes
                out.append(Verdict(17, f"[{where}] (proposed, floor-relative) put_many at least "
                                   f"{PUT_MANY_FLOOR_SHARE:.0%} of the raw-PUT floor per write ({writes} per dataset)",
                                   f"{share:.2f} of the floor's rate (needs {needed:.2f})",
                                   "met" if share >= needed else "not met"))
    return out
