"""What the registry records about an image's place on the sky, computed once at put (or reindex).

A **sky record** (``DatasetRef.sky``) is a small JSON document::

    {"v": 1, "shape": [ny, nx],
     "wcs": [["CTYPE1", "RA---TAN-SIP", ""], ...],   # the cards that rebuild the WCS (SIP/TPV included)
     "ra": [...], "dec": [...],                       # the footprint polygon, degrees ICRS
     "error_px": 0.003,                               # how far the polygon strays from the true edge
     "mjd": 60512.1234, "band": "r"}                  # when present in the header

**Footprint.** The polygon follows the pixel bounds ``-0.5 .. n - 0.5`` (the outer edges of the edge
pixels), with its edges great-circle arcs between vertices sampled along the four sides. A plain TAN
WCS maps straight pixel lines to great circles, so its four corners are exact; a distortion (SIP,
TPV) or another projection bends them, so each side is split in two until the great-circle midpoint
of every segment, mapped back to pixels, lies within :data:`TOLERANCE_PX` of the side it samples
(at most :data:`MAX_SEGMENTS` per side). The deviation reached is recorded as ``error_px``: a
position further than that from an edge is classified exactly; one closer may go either way.

**WCS.** The cards are the WCS's serialization as the image's format writes it (FITS:
``to_header(relax=True)``, Zarr: 17 significant digits), so the WCS rebuilt from the registry is the
one a reader of the file builds, and a sky position maps to the same pixel.

**Time and band.** ``mjd`` from the first of ``MJD-OBS``, ``DATE-OBS`` (+ ``TIME-OBS``),
``MJD-AVG``, ``DATE-AVG``, ``MJD-BEG``, ``DATE-BEG``, ``EXPSTART`` (an MJD, as HST writes it);
dates are read as UTC unless ``TIMESYS`` names another scale. ``band`` from ``BAND``, ``FILTER``,
``FILTER1`` or ``FILTNAM1``.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from objbutler.sky.geometry import MAX_CAP_DEGREES, bounding_cap, radec_to_xyz, xyz_to_radec

if TYPE_CHECKING:
    from astropy.io import fits
    from astropy.wcs import WCS

__all__ = [
    "MAX_SEGMENTS",
    "SKY_VERSION",
    "TOLERANCE_PX",
    "footprint_polygon",
    "observation_band",
    "observation_mjd",
    "sky_record",
    "sky_record_from_header",
    "sky_wcs",
]

SKY_VERSION = 1
TOLERANCE_PX = 0.05
"""Largest accepted deviation (pixels) of a polygon edge from the image's true edge."""
MAX_SEGMENTS = 64
"""Most segments per side of the pixel bounds."""
_DIGITS = 10  # decimal places of vertex degrees kept (3.6e-7 arcsec)

_MJD_CARDS = ("MJD-OBS", "DATE-OBS", "MJD-AVG", "DATE-AVG", "MJD-BEG", "DATE-BEG", "EXPSTART")
_BAND_CARDS = ("BAND", "FILTER", "FILTER1", "FILTNAM1")


# --------------------------------------------------------------------- footprints


def _side_points(nx: int, ny: int, segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions of ``segments`` points per side, anticlockwise from the corner (-0.5, -0.5)."""
    x0, x1, y0, y1 = -0.5, nx - 0.5, -0.5, ny - 0.5
    t = np.arange(segments) / segments
    xs = np.concatenate([x0 + (x1 - x0) * t, np.full(segments, x1), x1 - (x1 - x0) * t, np.full(segments, x0)])
    ys = np.concatenate([np.full(segments, y0), y0 + (y1 - y0) * t, np.full(segments, y1), y1 - (y1 - y0) * t])
    return xs, ys


def _to_icrs(wcs: WCS, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Unit vectors (ICRS) of pixel positions; NaN rows where the WCS gives no sky position."""
    world = wcs.pixel_to_world(xs, ys)
    coord = world if not isinstance(world, list | tuple) else next(w for w in world if hasattr(w, "icrs"))
    icrs = coord.icrs
    return radec_to_xyz(icrs.ra.deg, icrs.dec.deg)


def _to_pixels(wcs: WCS, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    ra, dec = xyz_to_radec(xyz)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a point that does not converge is NaN: a large error
        x, y = wcs.world_to_pixel(SkyCoord(ra * u.deg, dec * u.deg, frame="icrs"))
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)


def _edge_error(wcs: WCS, vertices: np.ndarray, nx: int, ny: int, segments: int) -> float:
    """Largest distance (pixels) between a segment's great-circle midpoint and the pixel side it samples."""
    following = np.roll(vertices, -1, axis=0)
    mid = vertices + following
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    x, y = _to_pixels(wcs, mid)
    side = np.repeat(np.arange(4), segments)
    off = np.where(side == 0, np.abs(y + 0.5), np.where(side == 1, np.abs(x - (nx - 0.5)),
                   np.where(side == 2, np.abs(y - (ny - 0.5)), np.abs(x + 0.5))))
    return float(np.max(off)) if np.all(np.isfinite(off)) else math.inf


def footprint_polygon(wcs: WCS, shape: tuple[int, int], tolerance: float = TOLERANCE_PX,
                      max_segments: int = MAX_SEGMENTS) -> tuple[np.ndarray, np.ndarray, float] | None:
    """The sky polygon of an image's pixel bounds: ``(ra, dec, error_px)`` in degrees ICRS, or None.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        A 2-D celestial WCS.
    shape : (ny, nx)
        The image's shape.
    tolerance : float
        Accepted deviation of an edge, in pixels (see the module docstring).
    max_segments : int
        Most segments per side.

    Returns
    -------
    tuple or None
        Vertices anticlockwise in pixel space, and the largest deviation measured (pixels);
        None when the WCS gives no sky position for some edge point, or the footprint is wider
        than :data:`~objbutler.sky.geometry.MAX_CAP_DEGREES`.
    """
    ny, nx = int(shape[0]), int(shape[1])
    segments = 1
    best: tuple[np.ndarray, float] | None = None
    while True:
        xs, ys = _side_points(nx, ny, segments)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vertices = _to_icrs(wcs, xs, ys)
        if not np.all(np.isfinite(vertices)):
            return None
        error = _edge_error(wcs, vertices, nx, ny, segments)
        if best is None or error <= best[1]:
            best = (vertices, error)
        if error <= tolerance or segments >= max_segments:
            break
        segments *= 2
    vertices, error = best
    try:
        _, cos_radius = bounding_cap(vertices)
    except ValueError:
        return None
    if cos_radius < math.cos(math.radians(MAX_CAP_DEGREES)):
        return None
    ra, dec = xyz_to_radec(vertices)
    return np.round(ra, _DIGITS), np.round(dec, _DIGITS), error


# --------------------------------------------------------------------- time and band


def observation_mjd(*headers: Mapping[str, Any] | None) -> float | None:
    """The observation time (MJD) from the first time card found in ``headers`` (see the module docstring)."""
    from astropy.time import Time

    for name in _MJD_CARDS:
        for header in headers:
            if header is None or name not in header:
                continue
            value = header[name]
            try:
                if name.startswith("MJD") or name == "EXPSTART":
                    mjd = float(value)
                else:
                    text = str(value).strip()
                    if "T" not in text and name == "DATE-OBS" and "TIME-OBS" in header:
                        text = f"{text}T{str(header['TIME-OBS']).strip()}"
                    scale = str(header.get("TIMESYS", "UTC")).strip().lower()
                    scale = scale if scale in Time.SCALES else "utc"
                    mjd = float(Time(text, scale=scale).mjd)
            except (TypeError, ValueError):
                continue
            if math.isfinite(mjd) and mjd != 0.0:  # wcslib writes MJDREF = 0.0; an unset MJD-OBS is NaN
                return mjd
    return None


def observation_band(*headers: Mapping[str, Any] | None) -> str | None:
    """The band or filter name from the first of ``BAND``, ``FILTER``, ``FILTER1``, ``FILTNAM1``."""
    for name in _BAND_CARDS:
        for header in headers:
            if header is not None and name in header:
                value = str(header[name]).strip()
                if value:
                    return value[:64]
    return None


# --------------------------------------------------------------------- records


def sky_record(wcs: WCS | None, shape: tuple[int, ...], header: fits.Header | None = None,
               relax: Any = True) -> dict[str, Any] | None:
    """The sky record of an image (see the module docstring), or None without a 2-D celestial WCS.

    Parameters
    ----------
    wcs : astropy.wcs.WCS or None
        The image's WCS.
    shape : tuple of int
        The image's shape; only 2-D images get a record.
    header : astropy.io.fits.Header, optional
        The descriptive cards (time and band).
    relax : int or bool
        How the image's format serializes the WCS (``to_header(relax=...)``).
    """
    from objbutler.formats.zarr_header import header_to_json

    if wcs is None or len(shape) != 2 or wcs.pixel_n_dim != 2 or not wcs.has_celestial or wcs.naxis != 2:
        return None
    if any(getattr(wcs, name, None) is not None for name in ("cpdis1", "cpdis2", "det2im1", "det2im2")):
        return None  # lookup tables are not stored with an image (refused at put)
    try:
        polygon = footprint_polygon(wcs, (int(shape[0]), int(shape[1])))
    except Exception:  # a WCS astropy cannot evaluate over its edges: no footprint, the put goes on
        return None
    if polygon is None:
        return None
    ra, dec, error = polygon
    cards = wcs.to_header(relax=relax)
    record: dict[str, Any] = {
        "v": SKY_VERSION,
        "shape": [int(shape[0]), int(shape[1])],
        "wcs": [[key, value, ""] for key, value, _ in header_to_json(cards)],
        "ra": ra.tolist(),
        "dec": dec.tolist(),
        "error_px": round(error, 6) if math.isfinite(error) else None,
    }
    mjd = observation_mjd(header, cards)
    band = observation_band(header)
    if mjd is not None:
        record["mjd"] = mjd
    if band is not None:
        record["band"] = band
    return record


def sky_record_from_header(header: fits.Header, shape: tuple[int, ...], relax: Any = True) -> dict[str, Any] | None:
    """The sky record of an image whose whole header is given (what ``reindex`` reads)."""
    from objbutler.formats.wcs_cards import header_wcs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = header_wcs(header)
    return sky_record(wcs, shape, header, relax)


@functools.lru_cache(maxsize=4096)
def _wcs_from_cards(cards: str) -> WCS | None:
    from objbutler.formats.wcs_cards import header_wcs
    from objbutler.formats.zarr_header import header_from_json

    wcs = header_wcs(header_from_json(json.loads(cards)))
    if wcs is not None:
        wcs.wcs.set()  # once, here: later use from several threads only reads it
    return wcs


def sky_wcs(sky: Mapping[str, Any]) -> WCS | None:
    """The WCS a sky record's cards rebuild (cached by card content: about 1 ms to build, once).

    The object is shared by every caller with the same cards: do not modify it.
    """
    wcs = _wcs_from_cards(json.dumps(sky["wcs"], separators=(",", ":")))
    if wcs is not None and "shape" in sky and wcs.array_shape is None:
        wcs.array_shape = tuple(int(n) for n in sky["shape"])
    return wcs
