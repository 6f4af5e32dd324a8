"""SODA 1.0 / DALI request parameters: parse and check them, or say exactly what is wrong.

Parameter names are case-insensitive (DALI), values are not. Unknown parameter names are
ignored, as DALI asks; unsupported *values* of known parameters are errors. Every problem
raises :class:`_SodaError`, which carries the HTTP status (400, 404 for an unknown dataset, ...)
and the SODA 1.0 error code (5.2: ``UsageError``, ``MultiValuedParamNotSupported``, ...) that the
answer's ``text/plain`` body begins with. Cutout parameters that select no pixel are a
``_NoOverlapError``: HTTP 204, no body (5.1).

Stencils (each one HDU of the answer, in request order)::

    POS=CIRCLE ra dec r          CIRCLE=ra dec r
    POS=RANGE ra1 ra2 dec1 dec2  (degrees, ICRS; ra1 < ra2, dec1 < dec2; -Inf/+Inf for open ends)
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
    "check_extent",
    "parse_id",
    "parse_pixels_or_angle",
    "parse_position",
    "parse_stencil",
    "parse_stencils",
    "parse_time",
    "requested_media_type",
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
        Largest circle radius, and largest half-extent of a range or polygon, in degrees, where the
        image's shape is not known (and for object histories). Where it is known, a larger stencil is
        reduced to the image (SODA 1.0 3.3) and ``max_pixels`` bounds the answer.
    max_pixels : int
        Pixels of all stamps of one answer together (after clipping to the image).
    max_history_images : int
        Images in one object history.
    max_link_ids : int
        ``ID`` values in one DataLink request.
    """

    max_stencils: int = 32
    max_radius_deg: float = 1.0
    max_pixels: int = 4096 * 4096
    max_history_images: int = 500
    max_link_ids: int = 100


class _SodaError(Exception):
    """A request the service refuses: an HTTP status and a SODA error kind.

    Parameters
    ----------
    message : str
        What is wrong, for the person who sent it.
    status : int
        The HTTP status (400 unless said otherwise).
    kind : str
        The SODA 1.0 (5.2) error code that begins the body: ``UsageError``,
        ``MultiValuedParamNotSupported``, ``AuthenticationError``, ``ServiceUnavailable``, ``Error``
        (DataLink answers turn it into a fault: :func:`objbutler.service.cutouts.datalink_fault`).
    """

    def __init__(self, message: str, status: int = 400, kind: str = "UsageError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class _NoOverlapError(_SodaError):
    """Cutout parameters that select no pixel of the dataset (SODA 1.0 5.1: HTTP 204, no body)."""


def not_found(message: str) -> _SodaError:
    """A 404 ``UsageError`` (SODA has no code of its own for it; DataLink answers ``NotFoundFault``)."""
    return _SodaError(message, 404, "UsageError")  # SODA 1.0 5.2 has no NotFound code; the status says it


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
            raise _SodaError(f"{name} may be given once, got {len(values)} values", 400,
                             "MultiValuedParamNotSupported")
        return values[0] if values else default

    def stencil_values(self) -> list[tuple[str, str]]:
        """The (name, value) pairs that are stencils, in request order."""
        return [(key, value) for key, value in self.pairs if key in ("POS", "CIRCLE", "POLYGON")]


def _numbers(text: str, what: str, open_ends: bool = False) -> list[float]:
    try:
        values = [float(word) for word in text.split()]
    except ValueError:
        raise _SodaError(f"{what}: expected numbers, got {text!r}") from None
    if open_ends and not any(math.isnan(v) for v in values):
        return values
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
        theta = np.linspace(0.0, 2 * np.pi, 4 * _SEGMENTS, endpoint=False)[:, None]
        centre = _xyz(np.array([self.ra]), np.array([self.dec]))[0]
        ra0, r = np.radians(self.ra), np.radians(self.radius)
        east = np.array([-np.sin(ra0), np.cos(ra0), 0.0])  # defined at the poles too
        north = np.cross(centre, east)
        return _radec(np.cos(r) * centre + np.sin(r) * (np.cos(theta) * north + np.sin(theta) * east))

    def contains(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Which of these positions (degrees) lie in the cone."""
        return _separation_deg(ra, dec, np.array(self.ra), np.array(self.dec)) <= self.radius

    def extent_deg(self) -> float:
        """The radius."""
        return self.radius

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

    def contains(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Which of these positions (degrees) lie in the box."""
        ra = np.asarray(ra) % 360.0
        return (ra >= self.ra1) & (ra <= self.ra2) & (dec >= self.dec1) & (dec <= self.dec2)

    def extent_deg(self) -> float:
        """Half the larger side, RA measured on the sky at the Dec furthest from the equator."""
        cos_dec = max(math.cos(math.radians(max(abs(self.dec1), abs(self.dec2)))), 1e-6)
        return max((self.ra2 - self.ra1) * cos_dec, self.dec2 - self.dec1) / 2

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

    def _centre(self) -> np.ndarray:
        xyz = _xyz(np.array([v[0] for v in self.vertices]), np.array([v[1] for v in self.vertices]))
        centre = xyz.sum(axis=0)
        return np.asarray(centre / np.linalg.norm(centre))

    def contains(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Which of these positions (degrees) lie in the polygon (crossing number in its tangent plane)."""
        from objbutler.sky.geometry import gnomonic, points_in_polygons, tangent_frame

        centre = self._centre()
        frame = tangent_frame(centre)
        points = _xyz(np.atleast_1d(ra), np.atleast_1d(dec))
        front = points @ centre > 0  # the polygon spans less than 90 degrees: its half of the sphere
        vertices = _xyz(np.array([v[0] for v in self.vertices]), np.array([v[1] for v in self.vertices]))
        vx, vy, _ = gnomonic(vertices, centre, *frame)
        with np.errstate(all="ignore"):
            px, py, _ = gnomonic(points, centre, *frame)
        inside = points_in_polygons(np.nan_to_num(px), np.nan_to_num(py), np.zeros(len(points), dtype=np.int64),
                                    vx, vy, np.array([0, len(self.vertices)]))
        return np.asarray(front & inside)

    def extent_deg(self) -> float:
        """How far the furthest vertex is from the vertices' centre."""
        centre_ra, centre_dec = _radec(self._centre())
        ras = np.array([v[0] for v in self.vertices])
        decs = np.array([v[1] for v in self.vertices])
        return float(_separation_deg(ras, decs, centre_ra, centre_dec).max())

    def text(self) -> str:
        """The DALI form."""
        return "POLYGON " + " ".join(f"{ra:g} {dec:g}" for ra, dec in self.vertices)


Stencil = Circle | Range | Polygon

_MAX_POLYGON_SPREAD_DEG = 89.0  # a polygon lies in one tangent plane (its vertices within this of their centre)


def check_extent(stencil: Stencil, limits: Limits) -> None:
    """Hold a stencil to ``max_radius_deg`` (where no image shape bounds the answer)."""
    extent = stencil.extent_deg()
    if extent > limits.max_radius_deg:
        raise _SodaError(f"{stencil.text()} reaches {extent:.4g} deg from its centre, over this service's limit "
                         f"of {limits.max_radius_deg} deg")


def _circle(values: list[float], what: str) -> Circle:
    if len(values) != 3:
        raise _SodaError(f"{what}: a circle is 'ra dec radius' (3 numbers), got {len(values)}")
    ra, dec, radius = values
    _check_position(ra, dec, what)
    if not 0 < radius <= 180:
        raise _SodaError(f"{what}: the radius must be in (0, 180] degrees, got {radius}")
    return Circle(ra, dec, radius)


def _range(values: list[float], what: str) -> Range:
    if len(values) != 4:
        raise _SodaError(f"{what}: a range is 'ra1 ra2 dec1 dec2' (4 numbers), got {len(values)}")
    ra1, ra2, dec1, dec2 = (min(max(v, low), high) for v, (low, high)  # -Inf/+Inf: open ends (SODA 3.3.1)
                            in zip(values, ((0, 360), (0, 360), (-90, 90), (-90, 90)), strict=True))
    _check_position(ra1, dec1, what)
    _check_position(ra2, dec2, what)
    if not (ra1 < ra2 and dec1 < dec2):
        raise _SodaError(f"{what}: a range needs ra1 < ra2 and dec1 < dec2, got {values}")
    return Range(ra1, ra2, dec1, dec2)


def _polygon(values: list[float], what: str) -> Polygon:
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
    if float(spread.max()) > _MAX_POLYGON_SPREAD_DEG:
        raise _SodaError(f"{what}: the polygon reaches further than {_MAX_POLYGON_SPREAD_DEG} deg from its centre")
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


def parse_stencil(name: str, value: str) -> Stencil:
    """One ``POS``, ``CIRCLE`` or ``POLYGON`` value as a stencil (its size is held to the limits later)."""
    what = f"{name}={value!r}"
    if name == "CIRCLE":
        return _circle(_numbers(value, what), what)
    if name == "POLYGON":
        return _polygon(_numbers(value, what), what)
    shape, _, rest = value.partition(" ")
    shape = shape.upper()
    if shape == "CIRCLE":
        return _circle(_numbers(rest, what), what)
    if shape == "RANGE":
        return _range(_numbers(rest, what, open_ends=True), what)
    if shape == "POLYGON":
        return _polygon(_numbers(rest, what), what)
    raise _SodaError(f"{what}: POS must begin with CIRCLE, RANGE or POLYGON")


def parse_stencils(params: Params, limits: Limits, *, required: bool = True) -> list[Stencil]:
    """Every stencil of a request, in order; none (when ``required``) or too many is an error."""
    values = params.stencil_values()
    if not values and required:
        raise _SodaError("give at least one POS, CIRCLE or POLYGON")
    if len(values) > limits.max_stencils:
        raise _SodaError(f"{len(values)} stencils in one request; this service takes at most {limits.max_stencils}")
    return [parse_stencil(name, value) for name, value in values]


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
    try:
        parts = urlsplit(text)
    except ValueError:
        raise _SodaError(f"ID {text!r} is not a URL: expected objbutler://TYPE?KEY=VALUE&...") from None
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


def requested_media_type(params: Params, default: str) -> str:
    """The media type to answer with: ``RESPONSEFORMAT`` when it is one (DALI 3.4.3), else ``default``."""
    text = params.one("RESPONSEFORMAT")
    return text.lower().replace(" ", "") if text is not None and "/" in text else default


def response_format(params: Params, allowed: Sequence[str]) -> str:
    """``RESPONSEFORMAT`` as one of ``allowed`` (short names or MIME types), the first by default."""
    mime = {"application/fits": "fits", "image/fits": "fits", "image/png": "png", "application/json": "json",
            "fits": "fits", "png": "png", "json": "json", "votable": "votable", "application/x-votable+xml":
            "votable", "application/x-votable+xml;content=datalink": "votable", "text/xml": "votable"}
    text = params.one("RESPONSEFORMAT")
    if text is None:
        return allowed[0]
    chosen = mime.get(text.lower().replace(" ", ""))
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
