"""The README demo, the main job on the embedded local default.

Create (or reopen) a repository in a local directory, put a synthetic PVI
with a WCS as FITS and as Zarr, cut 1,000 stamps at star positions out of
each with one vectorized get, print timings and request counts, and write a
PNG contact sheet. Kept in the library (not the CLI) so tests can run it small.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from objbutler.butler import Butler
from objbutler.errors import NotFoundError, NotSupportedError
from objbutler.stores import open_store
from objbutler.testing.wrappers import CountingStore

__all__ = ["make_pvi", "run_demo"]


def make_pvi(size: int = 4096, n_stars: int = 3000, seed: int = 42) -> tuple[fits.PrimaryHDU, np.ndarray]:
    """A synthetic calibrated exposure: sky noise plus Gaussian stars, with a TAN WCS.

    Parameters
    ----------
    size : int
        Side in pixels.
    n_stars : int
        Number of stars.
    seed : int
        Random seed.

    Returns
    -------
    hdu : astropy.io.fits.PrimaryHDU
        The image with its header (WCS, FILTER, EXPTIME, DATE-OBS).
    stars : numpy.ndarray
        ``(n_stars, 2)`` pixel positions (x, y) of the stars.
    """
    rng = np.random.default_rng(seed)
    image = rng.normal(1000.0, 12.0, (size, size)).astype(np.float32)
    stars = rng.uniform(8, size - 8, (n_stars, 2))
    fluxes = rng.lognormal(8.0, 1.0, n_stars)
    yy, xx = np.mgrid[-7:8, -7:8]
    for (x, y), flux in zip(stars, fluxes, strict=True):
        ix, iy = round(float(x)), round(float(y))
        psf = np.exp(-((xx + ix - x) ** 2 + (yy + iy - y) ** 2) / (2 * 1.6**2))
        image[iy - 7 : iy + 8, ix - 7 : ix + 8] += (flux * psf / psf.sum()).astype(np.float32)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    wcs.wcs.cd = [[-5.6e-5, 0.0], [0.0, 5.6e-5]]
    header = wcs.to_header()
    header["FILTER"] = ("r", "filter band")
    header["EXPTIME"] = (30.0, "exposure time [s]")
    header["DATE-OBS"] = "2026-11-26T03:00:00"
    return fits.PrimaryHDU(image, header=header), stars


def _open_or_create(repo: str) -> Butler:
    try:
        return Butler(repo)
    except NotFoundError:
        return Butler.create(repo)


def run_demo(
    repo: str,
    n_stamps: int = 1000,
    image_size: int = 4096,
    png: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, float]:
    """Run the demo and return its measurements.

    Parameters
    ----------
    repo : str
        Local directory (or any repository URI) for the demo repository.
    n_stamps : int
        Stamps per image.
    image_size : int
        Side of the synthetic PVI.
    png : str, optional
        Contact sheet path (default: ``<repo>/contact_sheet.png`` for a local repo).
    echo : callable
        Where report lines go.

    Returns
    -------
    dict
        Seconds, requests and bytes per step.
    """
    from objbutler.stamps_io import write_contact_sheet

    butler = _open_or_create(repo)
    run = f"demo/{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000:06d}"
    hdu, stars = make_pvi(image_size, n_stars=max(n_stamps, 10))
    echo(f"repository {butler.uri} ({butler.config['commit_protocol']} commits); run {run}")
    results: dict[str, float] = {}
    refs = {}
    for fmt in ("fits", "zarr"):
        start = time.perf_counter()
        refs[fmt] = butler.put(hdu, "calexp", {"visit": 903334, "detector": 22}, run=f"{run}/{fmt}", format=fmt)
        results[f"put_{fmt}_seconds"] = time.perf_counter() - start
        echo(f"put {hdu.data.nbytes / 2**20:.0f} MiB PVI as {fmt:4s} in {results[f'put_{fmt}_seconds']:.2f} s "
             f"-> {refs[fmt].key}")
    positions = WCS(hdu.header).pixel_to_world(stars[:n_stamps, 0], stars[:n_stamps, 1])
    for fmt, ref in refs.items():
        counting = CountingStore(open_store(repo))
        reader = Butler(repo, store=counting)
        start = time.perf_counter()
        stamps = reader.get_cutouts(ref, positions, size=64)
        seconds = time.perf_counter() - start
        results[f"cutouts_{fmt}_seconds"] = seconds
        results[f"cutouts_{fmt}_requests"] = float(counting.requests)
        results[f"cutouts_{fmt}_bytes"] = float(counting.bytes_read)
        echo(f"{len(stamps)} stamps of 64x64 from {fmt:4s} in {seconds:.2f} s: {counting.requests} requests, "
             f"{counting.bytes_read / 2**20:.1f} MiB read (image {hdu.data.nbytes / 2**20:.0f} MiB)")
    found = [r for r in butler.query("calexp", where={"visit": 903334}) if r.run.startswith(run)]
    echo(f"query calexp visit=903334 in {run}/*: {len(found)} datasets ({', '.join(r.format for r in found)})")
    asked_for_png = png is not None
    if png is None and "://" not in repo:
        png = str(Path(repo) / "contact_sheet.png")
    if png is not None:
        try:
            write_contact_sheet(stamps, Path(png), title=f"{len(stamps)} stamps, first 64 shown")
        except NotSupportedError as exc:
            if asked_for_png:
                raise
            echo(f"contact sheet skipped: {exc}")
        else:
            echo(f"contact sheet: {png}")
    return results
