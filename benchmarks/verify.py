"""The verify suite: what checking the recorded checksum costs a whole ``Butler.get``.

Issue 12 asks ``get`` to verify the size and SHA-256 checksum the registry
recorded, by default if that costs under 10 % of a whole get on LocalStack.
This suite measures exactly that, on the target (LocalStack by default):

``get verify=False``   ``butler.get(ref, verify=False)``: download, decode, no check (the reference)
``get verify=True``    ``butler.get(ref)``: the same plus the size and checksum check (hashed on a
                       second thread while the bytes decode)
``sha256 only``        the checksum alone, computed as ``get`` computes it, over bytes already in
                       memory (what verification would add if it were not overlapped with decoding)

for a 4096 x 4096 float32 PVI (:func:`objbutler.demo.make_pvi`) stored as plain FITS (64 MiB) and
as Zarr (256 x 256 chunks, blosc-zstd). The cases run interleaved (A B C, C B A, ...), so drift
hits them alike; ``ratio`` is a case's median over ``get verify=False``'s in the same cell, and
``VERIFY`` lines print the cost of verification as a percentage.

``python -m benchmarks.verify [--target localstack] [--reps 15] [--image-size 4096]``, or
``objbutler bench verify`` (the harness of :mod:`benchmarks.run`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import time
from collections.abc import Callable
from typing import Any

from benchmarks.measure import Case, Row, interleave, rows_for
from benchmarks.targets import Target
from objbutler.butler import Butler
from objbutler.demo import make_pvi
from objbutler.formats.zarr_array import zarr_checksum
from objbutler.registry.records import DatasetRef

__all__ = ["VerifySettings", "run_verify", "verify_headlines", "verify_settings"]

FORMATS: dict[str, tuple[str, dict[str, Any]]] = {"fits": ("fits", {}), "zarr": ("zarr", {})}
"""Benchmark format name -> (objbutler format, format_options): objbutler's defaults."""


@dataclasses.dataclass
class VerifySettings:
    """What one run of the suite covers."""

    image_size: int = 4096
    reps: int = 15
    budget_seconds: float = 120.0


def verify_settings(quick: bool, image_size: int | None = None) -> VerifySettings:
    """Full (15 interleaved rounds) or quick (5) settings."""
    return VerifySettings(image_size=image_size or 4096, reps=5 if quick else 15)


def _stored_objects(butler: Butler, ref: DatasetRef) -> dict[str, bytes]:
    """The dataset's stored objects, keyed as its checksum is computed (Zarr: relative to the prefix)."""
    if ref.format != "zarr":
        return {"": butler.store.get(ref.key)}
    prefix = ref.key.rstrip("/") + "/"
    keys = [meta.key for meta in butler.store.list(prefix)]
    return {key[len(prefix):]: data for key, data in zip(keys, butler.store.get_many(keys), strict=True)}


def _checksum(objects: dict[str, bytes], fmt: str) -> str:
    """The checksum as ``get`` computes it."""
    if fmt == "zarr":
        return f"sha256:{zarr_checksum(objects)}"
    return f"sha256:{hashlib.sha256(objects['']).hexdigest()}"


def _cell(target: Target, fmt: str, settings: VerifySettings, log: Callable[[str], None]) -> list[Row]:
    uri = target.new_uri(f"verify-{fmt}")
    Butler.create(uri, **target.store_options)
    butler = Butler(uri, **target.store_options)
    hdu, _ = make_pvi(settings.image_size, n_stars=max(10, 3000 * settings.image_size**2 // 4096**2))
    obj_format, options = FORMATS[fmt]
    ref = butler.put(hdu, "pvi", {"visit": settings.image_size, "detector": 0}, run="bench", format=obj_format,
                     format_options=options)
    objects = _stored_objects(butler, ref)
    if _checksum(objects, ref.format) != ref.checksum:
        raise AssertionError(f"the benchmark's checksum of {ref.key} differs from the registry's")
    counter = target.counter()
    cases = [
        Case("get verify=False", lambda: butler.get(ref, verify=False), 1, counter=counter, kind="objbutler"),
        Case("get verify=True", lambda: butler.get(ref, verify=True), 1, counter=counter),
        Case("sha256 only", lambda: _checksum(objects, ref.format), 1),
    ]
    log(f"  verify {fmt}: {settings.image_size}x{settings.image_size} float32, {ref.size / 2**20:.1f} MiB stored, "
        f"{settings.reps} interleaved rounds")
    interleave(cases, settings.reps, budget_seconds=settings.budget_seconds, log=log)
    extra = {"format": fmt, "target": target.name, "image_size": settings.image_size, "stored_bytes": ref.size}
    return rows_for("verify", f"whole get {settings.image_size}", cases, extra)


def run_verify(target: Target, settings: VerifySettings, log: Callable[[str], None] = print) -> list[Row]:
    """Whole gets with and without verification, FITS then Zarr."""
    rows: list[Row] = []
    for fmt in FORMATS:
        rows += _cell(target, fmt, settings, log)
    return rows


def verify_headlines(rows: list[Row]) -> list[str]:
    """``VERIFY`` lines: the cost of verification per format, and whether it is under 10 %."""
    lines = []
    for fmt in FORMATS:
        cell = {row.method: row for row in rows if row.suite == "verify" and row.extra.get("format") == fmt}
        off, on, alone = (cell.get(m) for m in ("get verify=False", "get verify=True", "sha256 only"))
        if off is None or on is None or not off.seconds or on.seconds is None:
            continue
        ratio = on.seconds / off.seconds
        hashed = f", sha256 alone {alone.seconds * 1e3:.0f} ms" if alone is not None and alone.seconds else ""
        lines.append(
            f"VERIFY {fmt}: whole get {_ms(off)} unverified, {_ms(on)} verified{hashed}: ratio {ratio:.3f} "
            f"({(ratio - 1) * 100:+.1f} %), {'under' if ratio < 1.10 else 'NOT under'} the 10 % bound"
        )
    return lines


def _ms(row: Row) -> str:
    """``median ms (min ... max)``."""
    spread = f" ({row.min * 1e3:.0f}-{row.max * 1e3:.0f})" if row.min is not None and row.max is not None else ""
    return f"{(row.seconds or 0) * 1e3:.0f} ms{spread}"


def main(argv: list[str] | None = None) -> int:
    """Run the suite on a target and print the table and the ``VERIFY`` lines."""
    from benchmarks.run import format_table
    from benchmarks.targets import open_target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", default="localstack")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=4096)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {line}", flush=True)

    with open_target(args.target, log=log) as where:
        rows = run_verify(where, VerifySettings(image_size=args.image_size, reps=args.reps), log)
    print()
    for line in format_table(rows):
        print(line)
    print()
    for line in verify_headlines(rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
