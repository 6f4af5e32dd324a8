"""Engineering-database (EFD) summaries added to images on read.

Batch jobs cannot query the EFD, so EFD *extracts* are stored as ordinary
table datasets: an astropy Table with one time column and one column per topic
(dome temperature, seeing, mount azimuth, ...), with units and descriptions::

    butler.put(extract, "efd_extract", {"day_obs": 20261126}, run="efd", format="parquet")

``butler.get(ref, efd=True)`` then finds the extracts that cover the image's
exposure and adds summary cards to the returned image's ``meta``; the stored
image is never modified.

Finding extracts
----------------
Coverage is decided without reading every extract: the registry is asked for
datasets of the extract type (default ``efd_extract``, in ``EfdOptions.run``
or any run), and when their data ID has a ``day_obs`` key (``YYYYMMDD``, the
date at UTC-12h, Rubin's observing-day convention) only the extracts whose
``day_obs`` is one the exposure touches are read. Extracts without that key
are all read (fine for a handful; give them a ``day_obs`` when there are
many). An extract covers the span between its first and last sample; the
exposure must lie inside the union of the candidates' spans.

Exposure span
-------------
From the image header, first match wins: ``DATE-BEG``/``DATE-END``;
``MJD-BEG``/``MJD-END``; ``DATE-BEG``, ``DATE-OBS`` or ``MJD-OBS`` plus
``EXPTIME`` (or ``EXPOSURE``) seconds, taking ``DATE-OBS`` as the start. The
time scale is ``TIMESYS`` (default UTC).

Time column of an extract
-------------------------
``EfdOptions.time_column``, else ``table.meta["time_column"]``, else the first
astropy ``Time`` column, else a column named ``time``/``timestamp``/``date``/
``mjd``. Strings are read as ISO times, numbers as MJD, both in the scale
``table.meta["time_scale"]`` (default UTC).

Cards (8-character keywords, topic names in values and comments)
----------------------------------------------------------------
===========  ===============================================================
``EFDMID``   mid-exposure time used (ISO, in the header's time scale)
``EFDBEG``   exposure start; ``EFDEND`` exposure end
``EFDNEXT``  number of extracts used; ``EFDEX1``... their dataset ids (<= 9)
``EFDNTOP``  number of topics summarized
``EFDnnNAM`` topic *nn* (01..99): its column name
``EFDnnMID`` value nearest mid-exposure (any sample of the extracts)
``EFDnnAVG`` mean over the samples inside the exposure; ``EFDnnMIN``,
             ``EFDnnMAX`` their extremes; ``EFDnnNUM`` how many there were
===========  ===============================================================

Numeric topics get all of these (``AVG``/``MIN``/``MAX`` only when a sample
falls inside the exposure); other topics (strings, booleans) get ``NAM``,
``MID`` and ``NUM``. Non-finite and masked samples are skipped. Comments carry
the topic name and unit. :func:`read_efd_cards` turns the cards back into
``{topic: {"mid": ..., "mean": ..., ...}}``.

When nothing covers the exposure no cards are added and an
:class:`EfdCoverageWarning` is issued; when the header has no usable time
keywords an :class:`EfdTimeWarning`. With ``efd="require"`` both are
``NotFoundError`` instead.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from objbutler.errors import NotFoundError, NotSupportedError
from objbutler.provenance import bounded_card

if TYPE_CHECKING:
    from objbutler.butler import Butler
    from objbutler.registry.records import DatasetRef

__all__ = [
    "DEFAULT_DATASET_TYPE",
    "EfdCoverageWarning",
    "EfdOptions",
    "EfdTimeWarning",
    "EfdWarning",
    "TopicSummary",
    "attach_efd",
    "day_obs",
    "efd_cards",
    "exposure_span",
    "read_efd_cards",
    "summarize_topics",
]

DEFAULT_DATASET_TYPE = "efd_extract"
MAX_TOPICS = 99
MAX_EXTRACT_IDS = 9
_TIME_NAMES = ("time", "timestamp", "date", "mjd")
_CARD_PATTERN = re.compile(r"^EFD(\d\d(NAM|MID|AVG|MIN|MAX|NUM)|MID|BEG|END|NEXT|NTOP|EX\d)$")
_STATS = {"MID": "mid", "AVG": "mean", "MIN": "min", "MAX": "max", "NUM": "n"}


class EfdWarning(UserWarning):
    """EFD cards could not be added to an image."""


class EfdCoverageWarning(EfdWarning):
    """No EFD extract covers the image's exposure."""


class EfdTimeWarning(EfdWarning):
    """The image header has no usable exposure time keywords."""


@dataclasses.dataclass(frozen=True, slots=True)
class EfdOptions:
    """How ``get(..., efd=...)`` finds extracts.

    Parameters
    ----------
    dataset_type : str
        Dataset type of the extracts.
    run : str, optional
        Only extracts in this run (default: any run).
    time_column : str, optional
        Name of the extracts' time column (default: found as the module says).
    require : bool
        Raise NotFoundError instead of warning when no cards can be added.
    day_obs_key : str or None
        Data ID key holding the observing day (YYYYMMDD) of an extract.
    day_obs_offset_hours : float
        Offset from UTC of the observing-day boundary (Rubin: -12).
    """

    dataset_type: str = DEFAULT_DATASET_TYPE
    run: str | None = None
    time_column: str | None = None
    require: bool = False
    day_obs_key: str | None = "day_obs"
    day_obs_offset_hours: float = -12.0

    @classmethod
    def from_argument(cls, efd: Any) -> EfdOptions:
        """``True`` -> defaults, ``"require"`` -> ``require=True``, an EfdOptions as is."""
        if isinstance(efd, EfdOptions):
            return efd
        if efd is True:
            return cls()
        if efd == "require":
            return cls(require=True)
        raise ValueError(f"efd must be True, 'require' or an EfdOptions, got {efd!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class TopicSummary:
    """One topic over one exposure.

    Parameters
    ----------
    name : str
        Column name.
    unit : str
        Unit string ("" if none).
    mid : int, float, str or bool
        Value of the sample nearest mid-exposure.
    n : int
        Samples inside the exposure.
    mean, min, max : float or None
        Over those samples (numeric topics with n > 0).
    """

    name: str
    unit: str
    mid: Any
    n: int
    mean: float | None = None
    min: float | None = None
    max: float | None = None


# -- the exposure --------------------------------------------------------------


def _scale(header: Mapping[str, Any]) -> str:
    scale = str(header.get("TIMESYS", "UTC")).strip().lower()
    return scale if scale in Time.SCALES else "utc"


def exposure_span(header: Mapping[str, Any]) -> tuple[Time, Time] | None:
    """``(start, end)`` of the exposure from header keywords, or None (see the module docstring)."""
    scale = _scale(header)

    def iso(key: str) -> Time | None:
        value = header.get(key)
        return Time(str(value).strip(), scale=scale) if isinstance(value, str) and value.strip() else None

    def mjd(key: str) -> Time | None:
        value = header.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
            return Time(float(value), format="mjd", scale=scale)
        return None

    exptime = next((header[k] for k in ("EXPTIME", "EXPOSURE") if isinstance(header.get(k), int | float)), None)
    try:
        pairs = [(iso("DATE-BEG"), iso("DATE-END")), (mjd("MJD-BEG"), mjd("MJD-END"))]
        for start, end in pairs:
            if start is not None and end is not None:
                return (start, end) if end >= start else None
        if exptime is None or exptime < 0 or not np.isfinite(exptime):
            return None
        for start in (iso("DATE-BEG"), iso("DATE-OBS"), mjd("MJD-BEG"), mjd("MJD-OBS")):
            if start is not None:
                return start, start + float(exptime) * u.s
    except ValueError:  # an unparseable date string
        return None
    return None


def day_obs(time: Time, offset_hours: float = -12.0) -> int:
    """The observing day ``YYYYMMDD`` of a time: the UTC date after shifting by ``offset_hours``."""
    shifted = (time.utc + offset_hours * u.hour).datetime
    return int(shifted.strftime("%Y%m%d"))


# -- extracts ------------------------------------------------------------------


def _time_column(table: Table, name: str | None) -> tuple[str, Time]:
    name = name or table.meta.get("time_column")
    if name is None:
        name = next((c for c in table.colnames if isinstance(table[c], Time)), None)
    if name is None:
        name = next((c for c in table.colnames if c.lower() in _TIME_NAMES), None)
    if name is None or name not in table.colnames:
        raise NotFoundError(f"EFD extract has no time column (columns: {table.colnames}); set EfdOptions.time_column")
    column = table[name]
    if isinstance(column, Time):
        return name, column
    scale = str(table.meta.get("time_scale", "utc")).lower()
    values = np.asarray(column)
    if values.dtype.kind in "USO":
        return name, Time(values.astype(str), scale=scale)
    return name, Time(values.astype(float), format="mjd", scale=scale)


@dataclasses.dataclass(slots=True)
class _Extract:
    """One extract, sorted by time, with its times as seconds from the exposure start."""

    ref_id: str | None
    table: Table
    time_name: str
    seconds: np.ndarray

    @classmethod
    def load(cls, table: Table, time_column: str | None, start: Time, ref_id: str | None = None) -> _Extract | None:
        if len(table) == 0:
            return None
        name, times = _time_column(table, time_column)
        seconds = np.asarray((times - start).to_value(u.s), dtype=float)
        order = np.argsort(seconds, kind="stable")
        return cls(ref_id, table[order], name, seconds[order])

    def overlaps(self, duration: float) -> bool:
        return bool(self.seconds[0] <= duration and self.seconds[-1] >= 0.0)


def _candidates(butler: Butler, start: Time, end: Time, options: EfdOptions) -> list[DatasetRef]:
    try:
        refs = butler.query(options.dataset_type, run=options.run)
    except NotFoundError:
        return []  # no EFD extract registered yet
    if options.day_obs_key is None:
        return refs
    days = {day_obs(start, options.day_obs_offset_hours), day_obs(end, options.day_obs_offset_hours)}
    key = options.day_obs_key
    return [r for r in refs if key not in r.data_id or r.data_id[key] in days]


def _covers(extracts: list[_Extract], duration: float) -> bool:
    """Whether the extracts' [first, last] sample spans hold [0, duration] seconds.

    Two extracts that continue one another leave a hole of about one sampling
    interval between them; holes up to the largest median interval are not gaps.
    """
    steps = [float(np.median(np.diff(e.seconds))) for e in extracts if len(e.seconds) > 1]
    tolerance = max(steps, default=0.0)
    reached = 0.0
    for first, last in sorted((float(e.seconds[0]), float(e.seconds[-1])) for e in extracts):
        if first > (reached + tolerance if reached > 0.0 else reached):
            return False
        reached = max(reached, last)
        if reached >= duration:
            return True
    return False


# -- summaries -----------------------------------------------------------------


def _topic_samples(extracts: list[_Extract], name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Valid samples of one topic over all extracts: (seconds from start, values, unit)."""
    seconds, values, unit = [], [], None
    for extract in extracts:
        if name not in extract.table.colnames:
            continue
        column = extract.table[name]
        this_unit = getattr(column, "unit", None)
        array = np.ma.asarray(column.value if isinstance(column, u.Quantity) else column)
        if unit is None:
            unit = this_unit
        elif this_unit is not None and this_unit != unit:
            array = array * u.Unit(this_unit).to(unit)
        raw = np.ma.getdata(array)
        valid = ~np.ma.getmaskarray(array)
        if raw.dtype.kind == "f":
            valid &= np.isfinite(raw)
        seconds.append(extract.seconds[valid])
        values.append(raw[valid])
    return np.concatenate(seconds), np.concatenate(values), "" if unit is None else u.Unit(unit).to_string()


def _python_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def summarize_topics(extracts: list[Table], start: Time, end: Time,
                     time_column: str | None = None) -> list[TopicSummary]:
    """Summarize every topic of some extract tables over ``[start, end]``.

    Parameters
    ----------
    extracts : list of astropy Table
        EFD extracts (a time column plus topic columns).
    start, end : astropy Time
        The exposure.
    time_column : str, optional
        The time column's name (default: found as the module docstring says).

    Returns
    -------
    list of TopicSummary
        In column order of first appearance; topics with no valid sample are left out.
    """
    loaded = [e for table in extracts if (e := _Extract.load(table, time_column, start)) is not None]
    return _summaries(loaded, float((end - start).to_value(u.s)))


def _summaries(extracts: list[_Extract], duration: float) -> list[TopicSummary]:
    names: list[str] = []
    for extract in extracts:
        names += [c for c in extract.table.colnames if c != extract.time_name and c not in names]
    summaries = []
    for name in names:
        seconds, values, unit = _topic_samples(extracts, name)
        if len(values) == 0:
            continue
        nearest = _python_value(values[int(np.argmin(np.abs(seconds - duration / 2)))])
        inside = values[(seconds >= 0.0) & (seconds <= duration)]
        if values.dtype.kind in "iuf" and len(inside):
            summaries.append(TopicSummary(name, unit, nearest, len(inside), float(np.mean(inside)),
                                          float(np.min(inside)), float(np.max(inside))))
        else:
            summaries.append(TopicSummary(name, unit, nearest, len(inside)))
    return summaries


def efd_cards(summaries: Sequence[TopicSummary], start: Time, end: Time,
              extract_ids: Sequence[str] = ()) -> list[tuple[str, Any, str]]:
    """The header cards for some topic summaries (scheme in the module docstring).

    Returns
    -------
    list of (keyword, value, comment)
    """
    mid = start + (end - start) / 2
    scale = start.scale.upper()
    cards: list[tuple[str, Any, str]] = [
        ("EFDMID", mid.isot, f"[{scale}] mid-exposure time for EFD values"),
        ("EFDBEG", start.isot, f"[{scale}] exposure start for EFD values"),
        ("EFDEND", end.isot, f"[{scale}] exposure end for EFD values"),
        ("EFDNEXT", len(extract_ids), "EFD extracts used"),
    ]
    cards += [(f"EFDEX{n}", ref_id, "EFD extract dataset id")
              for n, ref_id in enumerate(extract_ids[:MAX_EXTRACT_IDS], start=1)]
    kept = summaries[:MAX_TOPICS]
    cards.append(("EFDNTOP", len(kept), "EFD topics summarized"))
    for n, topic in enumerate(kept, start=1):
        key = f"EFD{n:02d}"
        unit = f"[{topic.unit}] " if topic.unit else ""
        cards.append((f"{key}NAM", topic.name, "EFD topic"))
        cards.append((f"{key}MID", topic.mid, f"{unit}{topic.name} nearest mid-exposure"))
        for stat, value in (("AVG", topic.mean), ("MIN", topic.min), ("MAX", topic.max)):
            if value is not None:
                cards.append((f"{key}{stat}", value, f"{unit}{topic.name} {_STATS[stat]} in exposure"))
        cards.append((f"{key}NUM", topic.n, f"{topic.name} samples in exposure"))
    return [bounded_card(*card) for card in cards]


def read_efd_cards(header: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{topic: {"mid": ..., "mean": ..., "min": ..., "max": ..., "n": ...}}`` from EFD cards."""
    out: dict[str, dict[str, Any]] = {}
    for n in range(1, int(header.get("EFDNTOP", 0)) + 1):
        key = f"EFD{n:02d}"
        out[str(header[f"{key}NAM"])] = {
            stat: header[f"{key}{code}"] for code, stat in _STATS.items() if f"{key}{code}" in header
        }
    return out


# -- get(..., efd=...) -----------------------------------------------------------


def _give_up(message: str, warning: type[EfdWarning], options: EfdOptions) -> None:
    if options.require:
        raise NotFoundError(message)
    warnings.warn(message, warning, stacklevel=4)


def attach_efd(butler: Butler, image: Any, efd: Any = True) -> Any:
    """Add EFD summary cards for the exposure to ``image.meta`` (in place) and return the image.

    Parameters
    ----------
    butler : Butler
        Where the extracts are.
    image : NDData
        An image as ``get`` returns it.
    efd : True, "require" or EfdOptions
        How to find extracts.

    Raises
    ------
    NotSupportedError
        If ``image`` is not an image.
    NotFoundError
        With ``require``: no usable time keywords, or no extract covers the exposure.
    """
    from astropy.nddata import NDData

    options = EfdOptions.from_argument(efd)
    if not isinstance(image, NDData):
        raise NotSupportedError(f"EFD cards go on images; got a {type(image).__name__}")
    header = image.meta
    if not isinstance(header, fits.Header):
        header = image.meta = fits.Header(header)
    span = exposure_span(header)
    if span is None:
        _give_up("image header has no usable exposure time keywords (DATE-BEG/DATE-END, or DATE-OBS/MJD-OBS "
                 "with EXPTIME): no EFD cards added", EfdTimeWarning, options)
        return image
    start, end = span
    duration = float((end - start).to_value(u.s))
    candidates = _candidates(butler, start, end, options)
    extracts = [_Extract.load(_read_table(butler, ref), options.time_column, start, ref.id) for ref in candidates]
    used = [e for e in extracts if e is not None and e.overlaps(duration)]
    if not _covers(used, duration):
        where = f" in run {options.run!r}" if options.run else ""
        _give_up(f"no {options.dataset_type} dataset{where} covers the exposure {start.isot} .. {end.isot} "
                 f"({len(candidates)} candidate(s) read): no EFD cards added", EfdCoverageWarning, options)
        return image
    for key in [k for k in header if _CARD_PATTERN.match(k)]:
        del header[key]
    summaries = _summaries(used, duration)
    for key, value, comment in efd_cards(summaries, start, end, [str(e.ref_id) for e in used]):
        header.append((key, value, comment), end=True)
    return image


def _read_table(butler: Butler, ref: DatasetRef) -> Table:
    table = butler.get(ref)
    if not isinstance(table, Table):
        raise NotSupportedError(f"{ref.dataset_type} {ref.data_id} is not a table: not an EFD extract")
    return table
