"""Synthetic single-visit images around one field: jittered, rotated, SIP-distorted WCSs with times and bands.

Used by the sky tests and the ``sky`` benchmark suite::

    for visit, hdu in enumerate(pvis(200, shape=(256, 256), field=(150.1, 2.2))):
        butler.put(hdu, "calexp", {"visit": visit}, run="pvi")
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, Sip

__all__ = ["pvi", "pvis", "tiles"]

BANDS = ("u", "g", "r", "i", "z", "y")


def pvi(rng: np.random.Generator, shape: tuple[int, int], field: tuple[float, float], *, jitter: float = 0.02,
        scale_arcsec: float = 0.2, sip: bool = True, mjd: float = 60000.0, band: str | None = None,
        dtype: str = "float32") -> fits.PrimaryHDU:
    """One image near ``field`` (RA, Dec degrees): random offset up to ``jitter`` degrees, any rotation.

    Parameters
    ----------
    rng : numpy.random.Generator
        The randomness.
    shape : (ny, nx)
        Image shape.
    field : (ra, dec)
        The field centre in degrees.
    jitter : float
        Largest offset of the image centre from ``field`` along each axis (degrees).
    scale_arcsec : float
        Pixel scale.
    sip : bool
        Add a second- and third-order SIP distortion (a few pixels at the corners).
    mjd : float
        Observation time written as ``DATE-OBS`` (and so ``MJD-OBS``).
    band : str, optional
        Written as ``FILTER``.
    """
    ny, nx = shape
    wcs = WCS(naxis=2)
    ra0, dec0 = field
    dec = float(np.clip(dec0 + rng.uniform(-jitter, jitter), -89.9, 89.9))
    ra = (ra0 + rng.uniform(-jitter, jitter) / max(np.cos(np.radians(dec)), 1e-3)) % 360.0
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [nx / 2 + rng.uniform(-5, 5), ny / 2 + rng.uniform(-5, 5)]
    angle = rng.uniform(0, 2 * np.pi)
    scale = scale_arcsec / 3600.0
    flip = -1.0  # RA increases to the left, as on the sky
    wcs.wcs.cd = scale * np.array([[flip * np.cos(angle), -np.sin(angle)], [flip * np.sin(angle), np.cos(angle)]])
    if sip:
        wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        size = max(nx, ny)
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        # Up to ~2 pixels of bending at the corners, from terms that curve the edges.
        half = size / 2.0
        a[1, 1], a[0, 2], a[2, 1] = rng.uniform(-1, 1, 3) * [1.0 / half**2, 1.0 / half**2, 0.5 / half**3]
        b[1, 1], b[2, 0], b[1, 2] = rng.uniform(-1, 1, 3) * [1.0 / half**2, 1.0 / half**2, 0.5 / half**3]
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    else:
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    header = wcs.to_header(relax=True)
    from astropy.time import Time

    header["DATE-OBS"] = Time(mjd, format="mjd", scale="utc").isot
    if band is not None:
        header["FILTER"] = band
    data = rng.normal(1000.0, 30.0, shape).astype(dtype)
    return fits.PrimaryHDU(data, header=header)


def pvis(n: int, shape: tuple[int, int] = (256, 256), field: tuple[float, float] = (150.1, 2.2), *, seed: int = 7,
         jitter: float | None = None, sip: bool = True) -> Iterator[fits.PrimaryHDU]:
    """``n`` images around ``field``, a day apart in random order, bands cycling (see :func:`pvi`).

    By default the jitter is a third of an image's side, so every image holds the field centre.
    """
    rng = np.random.default_rng(seed)
    side = max(shape) * 0.2 / 3600.0
    jitter = side / 3 if jitter is None else jitter
    days = rng.permutation(n)
    for k in range(n):
        yield pvi(rng, shape, field, jitter=jitter, sip=sip, mjd=60000.0 + float(days[k]) + 0.3,
                  band=BANDS[k % len(BANDS)])


def tiles(n: int, shape: tuple[int, int] = (256, 256), field: tuple[float, float] = (150.1, 2.2), *, seed: int = 11,
          sip: bool = True) -> tuple[list[fits.PrimaryHDU], tuple[float, float, float, float]]:
    """``n`` images tiling a square patch around ``field`` (a survey area), and the patch's RA/Dec bounds.

    Pointings lie on a ``ceil(sqrt(n))``-wide grid spaced by 0.7 of an image's side, so with any
    rotation every point of the patch is in at least one image (about two on average).

    Returns
    -------
    hdus : list of astropy.io.fits.PrimaryHDU
        The images, a day apart, bands cycling.
    bounds : (ra_min, ra_max, dec_min, dec_max)
        The patch every point of which some image holds (degrees).
    """
    rng = np.random.default_rng(seed)
    side = min(shape) * 0.2 / 3600.0
    step = 0.7 * side
    width = int(np.ceil(np.sqrt(n)))
    cos_dec = np.cos(np.radians(field[1]))
    hdus = []
    for k in range(n):
        row, col = divmod(k, width)
        dec = field[1] + (row - (width - 1) / 2) * step
        ra = field[0] + (col - (width - 1) / 2) * step / cos_dec
        hdus.append(pvi(rng, shape, (ra, dec), jitter=0.0, sip=sip, mjd=60000.0 + k + 0.3, band=BANDS[k % len(BANDS)]))
    rows = int(np.ceil(n / width))
    half_ra, half_dec = (width - 1) / 2 * step, (rows - 1) / 2 * step
    dec_low, dec_high = field[1] - half_dec, field[1] - half_dec + (rows - 1) * step
    return hdus, (field[0] - half_ra / cos_dec, field[0] + half_ra / cos_dec, dec_low, dec_high)
