"""The ``sky`` suite's catalogue cell: stamps at 10,000 (or 100,000) positions over 100 tiled PVIs.

The PVIs tile a patch of sky (:func:`objbutler.testing.skyfield.tiles`: a grid spaced by 0.7 of
an image's side, so every position of the patch is in about two images); the catalogue is
uniform over the patch. Methods, timed in the same interleaved rounds:

``objbutler``
    ``butler.cutouts_at(chunk, 51, "calexp")`` per chunk of the catalogue (10,000 positions: memory
    holds one chunk's stamps), the stamps dropped. Chunks follow the sky (a Z-order of the
    positions, as the writer cuts them), so each image is read by few chunks.
``objbutler writer``
    What ``objbutler cutouts-at URI calexp --radec cat --size 51 --out DIR`` runs
    (:func:`objbutler.sky.catalog.write_catalog_cutouts`): the same reads plus one FITS extension
    and one results row per stamp, written to a local directory.
``header-per-image``
    The public route before sky queries, **given** which positions each image holds (untimed: a
    user would have to compute that from every image's WCS): ``get_cutouts_many`` per chunk (the same
    chunks) with
    each image's positions as a SkyCoord, 16 images in flight; each image's header is read for
    its WCS before its stamps.
``astropy``
    astropy's documented route, one (position, image) pair at a time:
    ``fits.open(url, use_fsspec=True)`` then ``Cutout2D(hdul[0].section, position, 51, wcs)``.
    Timed on a sample of pairs and **extrapolated** to every pair (marked ``~`` in the table).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import Case, Counter, Row, interleave, rows_for
from benchmarks.targets import Target

__all__ = ["catalog_rows"]

SUITE = "sky"
STAMP = 51
LANES = 16
CHUNK = 10_000


def _fill_tiles(uri: str, options: dict[str, Any], n: int, shape: tuple[int, int],
                log: Callable[[str], None]) -> tuple[float, float, float, float]:
    from objbutler import Butler
    from objbutler.stores._concurrency import run_concurrently
    from objbutler.testing.skyfield import tiles

    butler = Butler.create(uri, **options)
    hdus, bounds = tiles(n, shape=shape)
    started = time.perf_counter()
    run_concurrently(lambda item: butler.put(item[1], "calexp", {"visit": item[0]}, run="pvi"),
                     list(enumerate(hdus)), 4)
    log(f"  put {n} tiled PVIs of {shape[0]}x{shape[1]} in {time.perf_counter() - started:.1f} s")
    return bounds


def _catalog(bounds: tuple[float, float, float, float], m: int, seed: int = 17) -> Any:
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    rng = np.random.default_rng(seed)
    ra_low, ra_high, dec_low, dec_high = bounds
    return SkyCoord(rng.uniform(ra_low, ra_high, m) * u.deg, rng.uniform(dec_low, dec_high, m) * u.deg)


def _chunks(coords: Any) -> list[np.ndarray]:
    """Row indices per chunk of ``CHUNK`` positions, in sky order (as ``objbutler cutouts-at`` cuts a catalogue)."""
    from objbutler.sky.geometry import radec_to_xyz, spatial_order

    order = spatial_order(radec_to_xyz(coords.ra.deg, coords.dec.deg))
    return [order[start : start + CHUNK] for start in range(0, len(order), CHUNK)]


def _astropy_pair(url: str, fsspec_options: dict[str, Any], position: Any) -> np.ndarray:
    """One stamp the way astropy documents cloud cutouts: open with fsspec, Cutout2D on ``.section``."""
    import warnings

    from astropy.io import fits
    from astropy.nddata import Cutout2D
    from astropy.wcs import WCS

    remote = url.startswith("s3://")
    opened = fits.open(url, use_fsspec=True, fsspec_kwargs=fsspec_options) if remote else fits.open(url)
    with opened as hdus, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(Cutout2D(hdus[0].section, position, STAMP, wcs=WCS(hdus[0].header), mode="trim").data)


def _cases(target: Target, uri: str, options: dict[str, Any], counter: Counter, coords: Any, sample: int,
           scratch: Path, writer: bool) -> tuple[list[Case], int]:
    from objbutler import Butler
    from objbutler.sky.catalog import write_catalog_cutouts

    butler = Butler(uri, **options)
    public = Butler(uri, **options)
    found = butler.find_images(coords, "calexp")
    pairs = [(i, ref) for i, refs in enumerate(found) for ref in refs]
    chunks = _chunks(coords)
    grouped = []
    for part in chunks:
        by_ref: dict[Any, list[int]] = {}
        for row in part.tolist():
            for ref in found[row]:
                by_ref.setdefault(ref, []).append(row)
        grouped.append({ref: coords[indices] for ref, indices in by_ref.items()})
    rng = np.random.default_rng(3)
    picked = [pairs[k] for k in rng.choice(len(pairs), size=min(sample, len(pairs)), replace=False)]

    def objbutler() -> None:
        stamps = sum(sum(len(p) for p in butler.cutouts_at(coords[part], STAMP, "calexp")) for part in chunks)
        if stamps != len(pairs):
            raise RuntimeError(f"objbutler cut {stamps} of {len(pairs)} stamps")

    def write() -> None:
        out = scratch / "stamps"
        shutil.rmtree(out, ignore_errors=True)
        summary = write_catalog_cutouts(butler, "calexp", coords, STAMP, out, chunk=CHUNK)
        if summary.stamps != len(pairs):
            raise RuntimeError(f"the writer wrote {summary.stamps} of {len(pairs)} stamps")

    def header_route() -> None:
        stamps = 0
        for requests in grouped:
            got = public.get_cutouts_many(requests, size=STAMP, max_images_in_flight=LANES)
            stamps += sum(len(v) for v in got.values())
        if stamps != len(pairs):
            raise RuntimeError(f"the header route cut {stamps} of {len(pairs)} stamps")

    fsspec_options = target.fsspec_options
    if "endpoint_url" in options and fsspec_options:  # through this profile's proxy, as objbutler goes
        fsspec_options = {**fsspec_options, "client_kwargs": {**fsspec_options["client_kwargs"],
                                                              "endpoint_url": options["endpoint_url"]}}

    def astropy_route() -> None:
        for index, ref in picked:
            _astropy_pair(target.object_url(uri, ref.key), fsspec_options, coords[index])

    cases = [Case("objbutler", objbutler, len(pairs), counter=counter, kind="objbutler")]
    if writer:
        cases.append(Case("objbutler writer", write, len(pairs), counter=counter, kind="objbutler-part",
                          warm=lambda: None, budget=1.0))
    cases += [
        Case("header-per-image", header_route, len(pairs), counter=counter, warm=lambda: None, budget=1.0),
        Case("astropy", astropy_route, len(pairs), measured=len(picked), counter=counter, budget=1.0),
    ]
    return cases, len(pairs)


def catalog_rows(target: Target, profiles: list[tuple[str, dict[str, Any], Any, Any]], sizes: tuple[int, ...],
                 pvis: int, shape: tuple[int, int], reps: int, sample: int, writer_up_to: int,
                 log: Callable[[str], None]) -> tuple[list[Row], list[str]]:
    """Time every catalogue size over one repository of ``pvis`` tiled PVIs, on every profile."""
    rows: list[Row] = []
    notes: list[str] = []
    uri = target.new_uri(f"skycat{pvis}")
    log(f"sky: catalogue cutouts over {pvis} tiled PVIs")
    bounds = _fill_tiles(uri, target.store_options, pvis, shape, log)
    scratch = Path(tempfile.mkdtemp(prefix="objbutler-skycat-"))
    try:
        for m in sizes:
            coords = _catalog(bounds, m)
            for name, options, counter, _ in profiles:
                log(f"  {m:,} positions, profile {name}")
                cases, pairs = _cases(target, uri, options, counter, coords, sample, scratch, m <= writer_up_to)
                interleave(cases, reps, budget_seconds=20.0, log=log)
                cell = rows_for(SUITE, f"catalogue {m:,} pos / {pvis} PVIs", cases,
                                {"format": f"fits/{name}", "profile": name, "shape": list(shape), "positions": m,
                                 "stamps": pairs})
                rows += cell
                seconds = {row.method: row.seconds for row in cell}
                ours = seconds.get("objbutler")
                if ours:
                    parts = [f"{method} {value:.2f} s ({value / ours:.1f}x)" for method, value in seconds.items()
                             if value and method != "objbutler"]
                    notes.append(f"catalogue {m:,} positions ({pairs:,} stamps) over {pvis} PVIs, {name}: objbutler "
                                 f"{ours:.2f} s; " + ", ".join(parts) + " (astropy extrapolated from "
                                 f"{min(sample, pairs)} pairs)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows, notes
