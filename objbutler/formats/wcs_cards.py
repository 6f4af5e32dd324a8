"""Which WCS cards an image is written with, and how a WCS is built from a header without risking the process.

An image's WCS is stored as what astropy makes of it (``wcs.to_header(relax=True)``: the standard
cards, SIP, and wcslib's translations such as TAN + TPD for a Digitized Sky Survey plate solution).
wcslib reads a header's WCS from several card families at once, so the cards written next to that
serialization must not describe the same WCS again in another form:

* **Digitized Sky Survey plate cards** (``CNPIX1``, ``PPO3``, ``AMDX1``, ``PLTRAH``, ...) are translated
  by wcslib into TAN + TPD (``CQDISi``/``DQi``). A header holding both the plate cards and the TPD
  cards corrupts wcslib's heap: the process dies (SIGABRT "corrupted double-linked list", SIGSEGV)
  in ``WCS(header)``, with plain astropy too. A single plate card next to the TPD cards is enough.
* **Older forms of the same cards** (``PC001001``, ``CD001001``, ``CROTAi``, ``CDi_j`` next to the
  ``PCi_j`` written, ``PROJPn``) are read by wcslib too and can override the serialization: the
  DSS file's ``PC001001`` cards next to its translation moved every pixel by 55 degrees.

So :func:`merged_header` (what a FITS writer emits) and :func:`superseded_keys` (what the descriptive
cards lose) drop every card of those families when a WCS is written: the serialization replaces
them. Measured on astropy's ``dss.14.29.56-62.41.05.fits.gz`` over a 29 x 29 grid reaching 50 pixels
beyond the image, the translation maps pixels to the sky as astropy does on the original file:
identically with 17 significant digits (Zarr), within 1.5e-9 arcsec with the 14 of ``to_header``'s
default (FITS). Keeping the plate cards instead and dropping the translation would also round-trip,
but only by sending every later read through wcslib's plate-solution translator again.

**Lookup-table distortions** (``CPDISj``/``CQDISi = 'LOOKUP'``, ``D2IM*``) live in other HDUs
(``WCSDVARR``, ``D2IMARR``) that objbutler does not store with an image: :func:`check_storable`
refuses them with a :class:`~objbutler.errors.FormatError` naming the cards. SIP, TPV and TPD are
written as cards and round-trip through both formats.

Reading (:func:`header_wcs`) never lets wcslib kill the process:

* a header with both plate cards and explicit distortion cards (what objbutler wrote before this
  module existed) is read without the plate cards, with a :class:`WCSWarning`;
* a header that still holds plate cards is translated in a short-lived child process
  (``sys.executable``), and the parent builds its WCS from the child's standard cards: the
  plate-solution translator, the one that corrupted memory, never runs in the caller's process. A
  child that dies, fails or times out means no WCS, with a :class:`WCSWarning`. Translations are
  cached per header (about a second each, mostly the child's ``import astropy``);
* any other header is built in process; an exception (wcslib's "Failed to initialize distortion
  functions", an invalid projection, a lookup table without its HDU) means no WCS, with a warning.
  Natively parsed distortion cards did not crash wcslib in 80 mutated TPD headers (dropped,
  duplicated, out-of-range and extra ``DPj``/``DQi`` records): they raise, they do not corrupt.
"""

from __future__ import annotations

import functools
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterable
from typing import Literal

from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS

from objbutler.errors import FormatError

__all__ = [
    "WCSWarning",
    "check_storable",
    "has_wcs",
    "header_wcs",
    "lookup_table_cards",
    "merged_header",
    "superseded_keys",
]

CHILD_TIMEOUT = 120.0
"""Seconds a child process may take to translate one header (most of it is ``import astropy``)."""

# Keyword families wcslib reads as the primary WCS (matched on the keyword before any ".field" of a
# record-valued card; alternate WCSs, with a letter suffix, are another WCS and are left alone).
_DSS = re.compile(r"CNPIX[12]|PPO[1-6]|[XY]PIXELSZ|PLTRA[HMS]|PLTDEC(?:SN|[DMS])|AMD[XY]\d{1,2}")
_PRIMARY = re.compile(
    r"WCSAXES|(?:CRPIX|CRVAL|CTYPE|CUNIT|CDELT|CROTA)\d{1,2}|(?:PC|CD|PV|PS)\d{1,2}_\d{1,2}"
    r"|(?:PC|CD)\d{6}|PROJP\d|LONPOLE|LATPOLE"
)
_DISTORTION = re.compile(r"(?:CPDIS|CQDIS|DP|DQ|CPERR|CQERR)\d{1,2}|DVERR|D2IM(?:DIS\d|ERR\d|EXT|\d)")
_EXPLICIT_DISTORTION = re.compile(r"(?:CPDIS|CQDIS|DP|DQ)\d{1,2}")
_SIP = re.compile(r"[AB]P?_ORDER|[AB]P?_\d{1,2}_\d{1,2}|[AB]_DMAX")
_LOOKUP_AXIS = re.compile(r"C([PQ])DIS(\d{1,2})")
_AXIS_RECORD = re.compile(r"(?:C([PQ])(?:DIS|ERR)|D([PQ]))(\d{1,2})")
_HAS_WCS_KEYS = ("CTYPE1", "CRPIX1", "CRVAL1", "CD1_1", "PC1_1")

_CHILD_CODE = """
import sys, warnings
warnings.simplefilter("ignore")
from astropy.io import fits
from astropy.wcs import WCS, WCSHDO_P17, WCSHDO_all
from astropy.wcs.wcs import WCSHDO_SIP
header = fits.Header.fromstring(sys.stdin.read())
wcs = WCS(header, relax=True)
cards = wcs.to_header(relax=WCSHDO_all | WCSHDO_SIP | WCSHDO_P17)
again = WCS(cards, relax=True)
again.wcs_pix2world([[1.0] * again.naxis], 1)
sys.stdout.write(cards.tostring())
"""
"""What the child runs: build the WCS, serialize it exactly, and check that the serialization parses."""


class WCSWarning(AstropyUserWarning):
    """An image's WCS could not be built from its header (read without one), or cards were ignored."""


def _base(keyword: str) -> str:
    """The keyword of a card without the field of a record-valued card (``DQ1.NAXES`` -> ``DQ1``)."""
    return keyword.split(".", 1)[0]


def _in(family: re.Pattern[str], keyword: str) -> bool:
    return family.fullmatch(_base(keyword)) is not None


def has_wcs(header: fits.Header) -> bool:
    """Whether ``header`` has primary WCS cards (``CTYPE1``, ``CRPIX1``, ``CRVAL1``, ``CD1_1`` or ``PC1_1``)."""
    return len(header) > 0 and any(key in header for key in _HAS_WCS_KEYS)  # an array's empty header: no lookups


def lookup_table_cards(header: fits.Header) -> list[str]:
    """The cards of a lookup-table distortion: ``C[PQ]DISn = 'LOOKUP'`` with their records, and ``D2IM*``.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Any header.

    Returns
    -------
    list of str
        Their keywords, in header order (empty without such a distortion).
    """
    lookup_axes = set()
    for card in header.cards:
        found = _LOOKUP_AXIS.fullmatch(card.keyword)
        if found and isinstance(card.value, str) and card.value.strip().upper() == "LOOKUP":
            lookup_axes.add(found.groups())
    names = []
    for card in header.cards:
        base = _base(card.keyword)
        record = _AXIS_RECORD.fullmatch(base)
        axis = (record.group(1) or record.group(2), record.group(3)) if record else None
        if base.startswith("D2IM") or axis in lookup_axes:
            names.append(card.keyword)
    return names


def _serialization(wcs: WCS) -> fits.Header:
    return wcs.to_header(relax=True)


def superseded_keys(header: fits.Header, wcs: WCS | None, written: fits.Header | None = None) -> set[str]:
    """The keywords of ``header`` that a written ``wcs`` replaces (see the module docstring).

    Parameters
    ----------
    header : astropy.io.fits.Header
        Descriptive cards (or a whole header).
    wcs : astropy.wcs.WCS or None
        The WCS written next to them; None replaces nothing.
    written : astropy.io.fits.Header, optional
        ``wcs``'s serialization when the caller has it (``wcs.to_header(relax=True)`` by default).

    Returns
    -------
    set of str
        The keywords the serialization writes, and every card of ``header`` in a family wcslib would
        also read as this WCS (plate solution, primary axis cards, distortions, SIP).
    """
    if wcs is None:
        return set()
    names = set((written if written is not None else _serialization(wcs)).keys())
    families = (_DSS, _PRIMARY, _DISTORTION, _SIP)
    names.update(card.keyword for card in header.cards if any(_in(family, card.keyword) for family in families))
    return names


def merged_header(header: fits.Header, wcs: WCS | None) -> fits.Header:
    """Descriptive cards followed by the WCS's serialization, without the cards it replaces.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Descriptive cards.
    wcs : astropy.wcs.WCS or None
        The image's WCS.

    Returns
    -------
    astropy.io.fits.Header
        A new header that wcslib reads back as ``wcs`` (a copy of ``header`` without a WCS).
    """
    if wcs is None:
        return header.copy()
    written = _serialization(wcs)
    dropped = superseded_keys(header, wcs, written)
    merged = fits.Header([card for card in header.cards if card.keyword not in dropped])
    merged.extend(written, update=True)
    return merged


def check_storable(header: fits.Header, wcs: WCS | None, where: str = "") -> None:
    """Refuse an image whose WCS cannot be written so that it reads back: what ``put`` checks.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The image's descriptive cards (cards of a WCS that could not be built stay among them).
    wcs : astropy.wcs.WCS or None
        The image's WCS.
    where : str, optional
        What the image is, for messages.

    Raises
    ------
    FormatError
        For a lookup-table distortion (cards, or ``cpdis``/``det2im`` tables on ``wcs``), naming it;
        or for WCS cards from which no WCS can be built (naming why).
    """
    names = lookup_table_cards(header)
    if wcs is not None:
        names += [name for name in ("cpdis1", "cpdis2", "det2im1", "det2im2") if getattr(wcs, name) is not None]
    if names:
        raise FormatError(
            f"{where}cannot store a lookup-table distortion ({', '.join(names)}): its tables live in other HDUs "
            "(WCSDVARR, D2IMARR) that are not stored with an image, and the header would not read back. Remove "
            "these cards (or the tables from the WCS) to store the image without them; SIP, TPV and TPD "
            "distortions are stored"
        )
    if wcs is None and has_wcs(header):
        header_wcs(header, where=where, errors="raise")


def header_wcs(header: fits.Header, *, where: str = "", errors: Literal["warn", "raise"] = "warn") -> WCS | None:
    """The WCS of a header, built so that wcslib cannot kill the process (see the module docstring).

    Parameters
    ----------
    header : astropy.io.fits.Header
        A whole header (NAXISn give the WCS its pixel shape, as ``WCS(header)`` does).
    where : str, optional
        What the header belongs to, for messages (e.g. ``"'data/run/x.fits': "``).
    errors : {"warn", "raise"}
        What to do when no WCS can be built: warn (:class:`WCSWarning`) and return None, or raise.

    Returns
    -------
    astropy.wcs.WCS or None
        None when the header has no WCS cards, or (``errors="warn"``) when none can be built.

    Raises
    ------
    FormatError
        With ``errors="raise"``, when no WCS can be built, naming why.
    """
    if not has_wcs(header):
        return None
    header = _without_plate_cards_next_to_distortions(header, where)
    try:
        lookup = lookup_table_cards(header)
        if lookup:
            raise _UnbuildableError(f"the lookup-table distortion cards {_listed(lookup)} need their tables' HDUs")
        if any(_in(_DSS, card.keyword) for card in header.cards):
            return _built_from_child(header)
        return WCS(header, relax=True)
    except Exception as exc:  # wcslib and astropy raise ValueError, KeyError, TypeError, MemoryError, ...
        reason = str(exc) if isinstance(exc, _UnbuildableError) else f"{type(exc).__name__}: {exc}".strip()
        if errors == "raise":
            raise FormatError(f"{where}cannot store this image's WCS: it does not build ({reason})") from None
        warnings.warn(f"{where}the WCS cannot be built from this header ({reason}); reading it without a WCS",
                      WCSWarning, stacklevel=2)
        return None


class _UnbuildableError(Exception):
    """Why a header has no WCS, in words."""


def _without_plate_cards_next_to_distortions(header: fits.Header, where: str) -> fits.Header:
    """Drop plate cards from a header that also has explicit distortion cards (wcslib cannot read both)."""
    plate = [card.keyword for card in header.cards if _in(_DSS, card.keyword)]
    if not plate or not any(_in(_EXPLICIT_DISTORTION, card.keyword) for card in header.cards):
        return header
    warnings.warn(
        f"{where}ignoring the DSS plate-solution cards ({_listed(plate)}) of a header that also has explicit "
        "distortion cards: wcslib cannot read both (it corrupts its memory); the distortion cards are used",
        WCSWarning, stacklevel=3,
    )
    dropped = set(plate)
    return fits.Header([card for card in header.cards if card.keyword not in dropped])


def _listed(names: Iterable[str], most: int = 6) -> str:
    names = list(names)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _built_from_child(header: fits.Header) -> WCS:
    """Translate a header in a child process, then build the WCS from the translation here."""
    text = header.tostring()
    outcome, result = _translate_in_child(text)
    if outcome != "ok":
        raise _UnbuildableError(result)
    translated = fits.Header.fromstring(result)
    for key in ("NAXIS", *(f"NAXIS{i}" for i in range(1, int(header.get("NAXIS", 0)) + 1))):
        if key in header:
            translated[key] = header[key]
    return WCS(translated, relax=True)


@functools.lru_cache(maxsize=64)
def _translate_in_child(text: str) -> tuple[str, str]:
    """``("ok", translated header)`` or ``("failed", why)``, cached per header text.

    A child that could not start or timed out raises instead, so that the next read tries again.
    """
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD_CODE], input=text, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise _UnbuildableError(f"translating it took more than {CHILD_TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise _UnbuildableError(f"no process to translate it in: {exc}") from None
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return "failed", f"wcslib killed the process that read it ({name})"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return "failed", lines[-1] if lines else f"exit status {done.returncode}"
    return "ok", done.stdout
