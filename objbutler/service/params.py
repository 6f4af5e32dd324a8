"""SODA 1.0 / DALI request parameters: parse and check them, or say exactly what is wrong.

Parameter names are case-insensitive (DALI), values are not. Unknown parameter names are
ignored, as DALI asks; unsupported *values* of known parameters are errors. Every problem
raises :class:`_SodaError`, which carries the HTTP status and the SODA error kind
(``UsageError`` -> 400, ``NotFoundError`` -> 404, ...) that the answer's ``text/plain`` body
begins with.

Stencils (each one HDU of the answer, in request order)::

    POS=CIRCLE ra dec r          CIRCLE=ra dec r
    POS=RANGE ra1 ra2 dec1 dec2  (degrees, ICRS; ra1 < ra2, dec1 < dec2, finite)
    POS=POLYGON ra1 dec1 ra2 dec2 ra3 dec3 ...      POLYGON=ra1 dec1 ...

Dataset names (``ID``): a dataset UUID, or ``objbutler://TYPE?KEY=VALUE&...&run=RUN``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import uuid
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl, urlsplit

import numpy as np

__all__ = [
    "Circle",
    "DatasetName",
    "Limits",
    "Params",
    "Polygon",
    "Range",
    "Stencil",
    "parse_id",
    "parse_pixels_or_angle",
    "parse_position",
    "parse_stencil",
    "parse_stencils",
    "parse_time",
    "response_format",
]

_ID_TYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")
_DATA_ID_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MAX_TEXT = 4096  # no parameter value of this service is longer
_SEGMENTS = 64  # boundary points per circle quarter, range edge or polygon edge


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for.

    Parameters
    ----------
    max_stencils : int
        Stencils (POS, CIRCLE, POLYGON values together) in one sync request.
    max_radius_deg : float
        Largest circle radius, and largest half-extent of a range or polygon, in degrees.
    max_pixels : int
        Pixels of all stamps of one answer together (after clipping to the image).
    max_history_images : int
        Images in one object history.
    """

    max_stencils: int = 32
    max_radius_deg: float = 1.0
    max_pixels: int = 4096 * 4096
    max_history_images: int = 500


class _SodaError(Exception):
    """A request the service refuses: an HTTP status and a SODA error kind.

    Parameters
    ----------
    message : str
        What is wrong, for the person who sent it.
    status : int
        The HTTP status (400 unless said otherwise).
    kind : str
        The DALI error kind that begins the body: ``UsageError``, ``NotFoundError``,
        ``AuthenticationError``, ``TransientFault``, ``DefaultFault``.
    """

    def __init__(self, message: str, status: int = 400, kind: str = "UsageError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def not_found(message: str) -> _SodaError:
    """A 404 ``NotFoundError``."""
    return _SodaError(message, 404, "NotFoundError")


class Params:
    """The (name, value) pairs of a request, names upper-cased, values stripped and bounded.

    Parameters
    ----------
    pairs : iterable of (str, str)
        Query-string and form pairs, repeated names allowed.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.pairs: list[tuple[str, str]] = []
        for name, value in pairs:
            if len(value) > _MAX_TEXT:
                raise _SodaError(f"parameter {name} is longer than {_MAX_TEXT} characters")
            if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
                raise _SodaError(f"parameter {name} holds control characters")
            self.pairs.append((name.upper(), value.strip()))

    def all(self, name: str) -> list[str]:
        """Every value of ``name``, in request order."""
        return [value for key, value in self.pairs if key == name]

    def one(self, name: str, default: str | None = None) -> str | None:
        """The single value of ``name`` (``default`` when absent); two values are an error."""
        values = self.all(name)
        if len(values) > 1:
            raise _SodaError(f"{name} may be given once, got {len(values)} values")
        return values[0] if values else default

    def stencil_values(self) -> list[tuple[str, str]]:
        """The (name, value) pairs that are stencils, in request order."""
        return [(key, value) for key, value in self.pairs if key in ("POS", "CIRCLE", "POLYGON")]


def _numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(word) for word in text.split()]
    except ValueError:
        raise _SodaError(f"{what}: expected numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise _SodaError(f"{what}: every number must be finite, got {text!r}")
    return values


def _check_position(ra: float, dec: float, what: str) -> None:
    if not 0.0 <= ra <= 360.0:
        raise _SodaError(f"{what}: RA {ra} is outside [0, 360] degrees")
    if not -90.0 <= dec <= 90.0:
        raise _SodaError(f"{what}: Dec {dec} is outside [-90, 90] degrees")


def _xyz(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra_r, dec_r = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec_r) * np.cos(ra_r), np.cos(dec_r) * np.sin(ra_r), np.sin(dec_r)], axis=-1)


def _radec(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xyz = xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)
    return np.degrees(np.arctan2(xyz[..., 1], xyz[..., 0])) % 360.0, np.degrees(np.arcsin(np.clip(xyz[..., 2], -1, 1)))


def _separation_deg(ra: np.ndarray, dec: np.ndarray, ra0: np.ndarray, dec0: np.ndarray) -> np.ndarray:
    centre = _xyz(np.atleast_1d(ra0), np.atleast_1d(dec0))[0]
    return np.degrees(np.arccos(np.clip(_xyz(ra, dec) @ centre, -1.0, 1.0)))


@dataclasses.dataclass(frozen=True)
class Circle:
    """A cone: centre (degrees) and radius (degrees)."""

    ra: float
    dec: float
    radius: float

    def boundary(self) -> tuple[np.ndarray, np.ndarray]:
        """Points on the circle (RA, Dec degrees), densely enough for a pixel bounding box."""
        theta = np.linspace(0.0, 2 * np.pi, 4 * _SEGMENTS, endpoint=False)
        d0, r = np.radians(self.dec), np.radians(self.radius)
        dec = np.arcsin(np.sin(d0) * np.cos(r) + np.cos(d0) * np.sin(r) * np.cos(theta))
        ra = np.radians(self.ra) + np.arctan2(np.sin(theta) * np.sin(r) * np.cos(d0),
                                              np.cos(r) - np.sin(d0) * np.sin(dec))
        return np.degrees(ra) % 360.0, np.degrees(dec)

    def text(self) -> str:
        """The DALI form."""
        return f"CIRCLE {self.ra:g} {self.dec:g} {self.radius:g}"


@dataclasses.dataclass(frozen=True)
class Range:
    """An RA/Dec box (degrees): ``ra1 <= ra <= ra2``, ``dec1 <= dec <= dec2``."""

    ra1: float
    ra2: float
    dec1: float
    dec2: float

    def boundary(self) -> tuple[np.ndarray, np.ndarray]:
        """Points along the four edges (lines of constant RA or Dec)."""
        ras = np.linspace(self.ra1, self.ra2, _SEGMENTS + 1)
        decs = np.linspace(self.dec1, self.dec2, _SEGMENTS + 1)
        ra = np.concatenate([ras, ras, np.full_like(decs, self.ra1), np.full_like(decs, self.ra2)])
        dec = np.concatenate([np.full_like(ras, self.dec1), np.full_like(ras, self.dec2), decs, decs])
        return ra, dec

    def text(self) -> str:
        """The DALI form."""
        return f"RANGE {self.ra1:g} {self.ra2:g} {self.dec1:g} {self.dec2:g}"


@dataclasses.dataclass(frozen=True)
class Polygon:
    """A spherical polygon: vertices (RA, Dec degrees) joined by great circles."""

    vertices: tuple[tuple[float, float], ...]

    def boundary(self) -> tuple[np.ndarray, np.ndarray]:
        """Points along every edge (great-circle arcs between consecutive vertices)."""
        ra = np.array([v[0] for v in self.vertices])
        dec = np.array([v[1] for v in self.vertices])
        a = _xyz(ra, dec)
        b = np.roll(a, -1, axis=0)
        t = np.linspace(0.0, 1.0, _SEGMENTS, endpoint=False)[None, :, None]
        points = (a[:, None, :] * (1 - t) + b[:, None, :] * t).reshape(-1, 3)  # chords; normalised below
        return _radec(points)

    def text(self) -> str:
        """The DALI form."""
        return "POLYGON " + " ".join(f"{ra:g} {dec:g}" for ra, dec in self.vertices)


Stencil = Circle | Range | Polygon


def _circle(values: list[float], limits: Limits, what: str) -> Circle:
    if len(values) != 3:
        raise _SodaError(f"{what}: a circle is 'ra dec radius' (3 numbers), got {len(values)}")
    ra, dec, radius = values
    _check_position(ra, dec, what)
    if radius <= 0:
        raise _SodaError(f"{what}: the radius must be positive, got {radius}")
    if radius > limits.max_radius_deg:
        raise _SodaError(f"{what}: radius {radius} deg is over this service's limit of {limits.max_radius_deg} deg")
    return Circle(ra, dec, radius)


def _range(values: list[float], limits: Limits, what: str) -> Range:
    if len(values) != 4:
        raise _SodaError(f"{what}: a range is 'ra1 ra2 dec1 dec2' (4 numbers), got {len(values)}")
    ra1, ra2, dec1, dec2 = values
    _check_position(ra1, dec1, what)
    _check_position(ra2, dec2, what)
    if not (ra1 < ra2 and dec1 < dec2):
        raise _SodaError(f"{what}: a range needs ra1 < ra2 and dec1 < dec2, got {values}")
    cos_dec = max(math.cos(math.radians(max(abs(dec1), abs(dec2)))), 1e-6)
    if (ra2 - ra1) * cos_dec > 2 * limits.max_radius_deg or dec2 - dec1 > 2 * limits.max_radius_deg:
        raise _SodaError(f"{what}: the range is wider than this service's limit of {2 * limits.max_radius_deg} deg")
    return Range(ra1, ra2, dec1, dec2)


def _polygon(values: list[float], limits: Limits, what: str) -> Polygon:
    if len(values) < 6 or len(values) % 2:
        raise _SodaError(f"{what}: a polygon is 'ra1 dec1 ra2 dec2 ra3 dec3 ...' (an even count >= 6), "
                        f"got {len(values)} numbers")
    vertices = tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))
    for ra, dec in vertices:
        _check_position(ra, dec, what)
    ras, decs = np.array([v[0] for v in vertices]), np.array([v[1] for v in vertices])
    centre_ra, centre_dec = _radec(_xyz(ras, decs).sum(axis=0))
    if not np.all(np.isfinite([centre_ra, centre_dec])):
        raise _SodaError(f"{what}: the polygon's vertices cancel out (no centre)")
    spread = _separation_deg(ras, decs, centre_ra, centre_dec)
    if float(spread.max()) > limits.max_radius_deg:
        raise _SodaError(f"{what}: the polygon reaches further than this service's limit of "
                        f"{limits.max_radius_deg} deg from its centre")
    if _on_one_great_circle(_xyz(ras, decs)):
        raise _SodaError(f"{what}: the polygon has no area (its vertices are on one great circle)")
    return Polygon(vertices)


def _on_one_great_circle(points: np.ndarray) -> bool:
    """True when every vertex lies on one great circle: a straight line in the gnomonic projection."""
    from objbutler.sky.geometry import gnomonic, tangent_frame

    centre = points.sum(axis=0)
    centre = centre / np.linalg.norm(centre)
    x, y, _ = gnomonic(points, centre, *tangent_frame(centre))
    dx, dy = x - x[0], y - y[0]
    extent = float(np.hypot(dx, dy).max())
    if extent == 0.0:
        return True
    cross = dx[:, None] * dy[None, :] - dy[:, None] * dx[None, :]
    return float(np.abs(cross).max()) <= 1e-9 * extent**2


def parse_position(text: str, what: str) -> tuple[float, float]:
    """``ra dec`` in degrees."""
    values = _numbers(text, what)
    if len(values) != 2:
        raise _SodaError(f"{what}: a position is 'ra dec' (2 numbers), got {len(values)}")
    _check_position(values[0], values[1], what)
    return values[0], values[1]


def parse_stencil(name: str, value: str, limits: Limits) -> Stencil:
    """One ``POS``, ``CIRCLE`` or ``POLYGON`` value as a stencil."""
    what = f"{name}={value!r}"
    if name == "CIRCLE":
        return _circle(_numbers(value, what), limits, what)
    if name == "POLYGON":
        return _polygon(_numbers(value, what), limits, what)
    shape, _, rest = value.partition(" ")
    shape = shape.upper()
    if shape == "CIRCLE":
        return _circle(_numbers(rest, what), limits, what)
    if shape == "RANGE":
        return _range(_numbers(rest, what), limits, what)
    if shape == "POLYGON":
        return _polygon(_numbers(rest, what), limits, what)
    raise _SodaError(f"{what}: POS must begin with CIRCLE, RANGE or POLYGON")


def parse_stencils(params: Params, limits: Limits, *, required: bool = True) -> list[Stencil]:
    """Every stencil of a request, in order; none (when ``required``) or too many is an error."""
    values = params.stencil_values()
    if not values and required:
        raise _SodaError("give at least one POS, CIRCLE or POLYGON")
    if len(values) > limits.max_stencils:
        raise _SodaError(f"{len(values)} stencils in one request; this service takes at most {limits.max_stencils}")
    return [parse_stencil(name, value, limits) for name, value in values]


@dataclasses.dataclass(frozen=True)
class DatasetName:
    """What an ``ID`` names: a dataset UUID, or a dataset type, data ID and optional run."""

    dataset_id: str | None = None
    dataset_type: str | None = None
    data_id: tuple[tuple[str, int | str], ...] = ()
    run: str | None = None


def parse_id(text: str | None) -> DatasetName:
    """An ``ID`` value: ``<uuid>`` or ``objbutler://TYPE?KEY=VALUE&...[&run=RUN]``."""
    if not text:
        raise _SodaError("ID is required: a dataset UUID or objbutler://TYPE?KEY=VALUE&...&run=RUN")
    if not text.lower().startswith("objbutler://"):
        try:
            return DatasetName(dataset_id=str(uuid.UUID(text)))
        except ValueError:
            raise _SodaError(f"ID {text!r} is neither a dataset UUID nor objbutler://TYPE?KEY=VALUE&...") from None
    parts = urlsplit(text)
    if parts.path not in ("", "/") or parts.fragment or not _ID_TYPE.match(parts.netloc):
        raise _SodaError(f"ID {text!r}: expected objbutler://TYPE?KEY=VALUE&... (a dataset type name, no path)")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise _SodaError(f"ID {text!r}: the data ID is not KEY=VALUE&KEY=VALUE") from None
    data_id: dict[str, int | str] = {}
    run = None
    for key, value in pairs:
        if key == "run":
            run = value
            continue
        if not _DATA_ID_KEY.match(key) or key in data_id:
            raise _SodaError(f"ID {text!r}: bad or repeated data ID key {key!r}")
        data_id[key] = int(value) if re.fullmatch(r"-?\d{1,18}", value) else value
    if not data_id:
        raise _SodaError(f"ID {text!r} names no data ID (objbutler://TYPE?KEY=VALUE&...)")
    return DatasetName(dataset_type=parts.netloc, data_id=tuple(data_id.items()), run=run)


def parse_time(params: Params) -> tuple[float, float] | None:
    """``TIME=t1 t2`` (MJD, DALI interval; ``-Inf``/``+Inf`` for open ends) or None."""
    text = params.one("TIME")
    if text is None:
        return None
    try:
        values = [float(word) for word in text.split()]
    except ValueError:
        raise _SodaError(f"TIME={text!r}: expected 'mjd1 mjd2'") from None
    if len(values) != 2 or any(math.isnan(v) for v in values) or values[0] > values[1]:
        raise _SodaError(f"TIME={text!r}: expected 'mjd1 mjd2' with mjd1 <= mjd2")
    return values[0], values[1]


def response_format(params: Params, allowed: Sequence[str]) -> str:
    """``RESPONSEFORMAT`` as one of ``allowed`` (short names or MIME types), the first by default."""
    mime = {"application/fits": "fits", "image/fits": "fits", "image/png": "png", "application/json": "json",
            "fits": "fits", "png": "png", "json": "json"}
    text = params.one("RESPONSEFORMAT")
    if text is None:
        return allowed[0]
    chosen = mime.get(text.lower())
    if chosen is None or chosen not in allowed:
        raise _SodaError(f"RESPONSEFORMAT={text!r} is not offered here; use one of {list(allowed)}")
    return chosen


def parse_pixels_or_angle(text: str, what: str) -> int | float:
    """A stamp size: whole pixels (``51``) or an angle in arcseconds (``10arcsec``): pixels int, arcsec float."""
    lowered = text.strip().lower()
    if lowered.endswith("arcsec"):
        values = _numbers(lowered[: -len("arcsec")], what)
        if len(values) != 1 or not 0 < values[0] <= 7200:
            raise _SodaError(f"{what}: an angle must be one number in (0, 7200] arcsec")
        return float(values[0])
    if not re.fullmatch(r"\d{1,5}", lowered) or not 1 <= int(lowered) <= 4096:
        raise _SodaError(f"{what}: a size is whole pixels 1..4096 or an angle like 10arcsec, got {text!r}")
    return int(lowered)
