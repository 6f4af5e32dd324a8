"""Put every 2-D image HDU of a FITS file through objbutler and compare what comes back with astropy.

Run one file per process, so that a crash (wcslib has corrupted its heap on real headers) fails one
file instead of the run::

    python -m objbutler.testing.corpus FILE [FILE ...]

prints one JSON line per 2-D image HDU (PrimaryHDU, ImageHDU or CompImageHDU with data), after putting
it into a fresh local repository as FITS and as Zarr::

    {"file": ..., "hdu": 1, "kind": "ImageHDU", "shape": [40, 40], "dtype": ">i2", "status": "ok",
     "formats": {"fits": {"status": "ok", ...}, "zarr": {...}}}

Per format, ``status`` is

``ok``
    everything below matched;
``refused``
    ``put`` raised: ``error_class``, ``objbutler_error`` (whether it derives from
    :class:`~objbutler.errors.ObjButlerError`) and ``message`` say how;
``mismatch``
    ``mismatches`` lists what differed, or what raised after the put succeeded.

What is compared, against astropy's own reading of the file (``hdu.data``; ``WCS(hdu.header, fobj=hdul)``):

* ``get(ref).data``: the same shape and values, NaN-aware and exact. A dtype that differs other than
  by byte order is a ``dtype`` finding (both dtypes), not a mismatch, unless the values differ too;
* the WCS (when astropy builds a celestial 2-D one): ``get(ref).wcs`` and ``get_wcs(ref)`` must map a
  grid of pixels (reaching past the edges) to the same sky positions, within 1e-6 pixel;
* pixel-box cutouts (inside, at each edge, the whole image, overhanging boxes in ``trim`` and
  ``partial`` mode, ``strict`` for boxes inside) against numpy slicing of astropy's data;
* sky cutouts (celestial WCS) in ``trim`` and ``partial`` mode against
  ``Cutout2D(data, SkyCoord, size, wcs=WCS(header))``, pixels and stamp WCS.

Each line also carries ``stored_as`` (the original's BITPIX, BSCALE, BZERO, BLANK or compression)
and, per format, ``stored_layout`` (FITS: what objbutler wrote, e.g. a scaled integer as floats) and
``notes``: objbutler warnings (:class:`~objbutler.formats.wcs_cards.WCSWarning`) and the header
cards of the original that the returned ``meta`` dropped or changed.
A file astropy cannot open, or an HDU whose data astropy cannot read, gives a ``skipped`` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

__all__ = ["FORMATS", "check_file", "corpus_files", "main"]

FORMATS = ("fits", "zarr")
_IMAGE_HDUS = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)
_PIXEL_TOLERANCE = 1e-6
_STAMP = (5, 7)  # (ny, nx) of sky cutouts
_STRUCTURAL = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "BSCALE", "BZERO", "BLANK",
               "CHECKSUM", "DATASUM", "COMMENT", "HISTORY", "", "END"}


def corpus_files(root: Path | None = None) -> list[Path]:
    """The FITS files (``*.fits``, ``*.fits.gz``, any ``*.fits.*``) of astropy's own test data, sorted.

    Parameters
    ----------
    root : Path, optional
        The astropy package directory (default: the installed astropy's).

    Returns
    -------
    list of Path
        Under ``io/fits/tests/data`` and ``wcs/tests/data``, recursively.
    """
    if root is None:
        import astropy

        root = Path(astropy.__file__).parent
    found = {path for where in ("io/fits/tests/data", "wcs/tests/data") for path in (root / where).rglob("*.fits*")}
    return sorted(path for path in found if path.is_file())


def check_file(path: Path | str, workdir: Path | str) -> Iterator[dict[str, Any]]:
    """Check every 2-D image HDU of one file (see the module docstring); one result per HDU.

    Parameters
    ----------
    path : Path or str
        The FITS file.
    workdir : Path or str
        An empty directory for the repository.

    Yields
    ------
    dict
        One result per HDU (or one ``skipped`` result for a file astropy cannot open).
    """
    from objbutler.butler import Butler

    name = str(path)
    try:
        hdul = fits.open(path)
        hdus = list(hdul)
    except Exception as exc:
        yield {"file": name, "hdu": None, "status": "skipped", "reason": f"astropy cannot open it: {_describe(exc)}"}
        return
    butler = Butler.create(str(Path(workdir) / "repo"))
    with hdul:
        for index, hdu in enumerate(hdus):
            if not isinstance(hdu, _IMAGE_HDUS) or isinstance(hdu, fits.GroupsHDU):
                continue
            stored_as, original = _stored_as(hdu), hdu.header.copy()
            try:
                data = hdu.data
            except Exception as exc:
                yield {"file": name, "hdu": index, "status": "skipped",
                       "reason": f"astropy cannot read its data: {_describe(exc)}"}
                continue
            if data is None or data.ndim != 2:
                continue
            yield _check_hdu(butler, name, index, hdu, hdul, np.asarray(data), stored_as, original)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _stored_as(hdu: Any) -> dict[str, Any]:
    """How the original stores its pixels (read before astropy scales them and rewrites BITPIX)."""
    if isinstance(hdu, fits.CompImageHDU):
        return {"bitpix": hdu.header.get("BITPIX"), "compression": hdu.compression_type}
    header = hdu.header
    return {key.lower(): header[key] for key in ("BITPIX", "BSCALE", "BZERO", "BLANK") if key in header}


def _astropy_wcs(hdu: Any, hdul: fits.HDUList) -> tuple[Any, str | None]:
    """astropy's celestial 2-D WCS of the HDU (built as a user would, with the file for lookup tables), or why not."""
    from astropy.wcs import WCS

    if not any(key in hdu.header for key in ("CTYPE1", "CRPIX1", "CRVAL1", "CD1_1", "PC1_1")):
        return None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(hdu.header, fobj=hdul, relax=True)
    except Exception as exc:
        return None, f"astropy builds no WCS from this header: {_describe(exc)}"
    if not wcs.has_celestial or wcs.pixel_n_dim != 2 or wcs.world_n_dim != 2:
        return None, "astropy's WCS is not a celestial 2-D one: no WCS or sky comparison"
    return wcs, None


@dataclasses.dataclass
class _Case:
    """One HDU put in one format: what the stages compare against, and what they found."""

    butler: Any
    ref: Any
    data: np.ndarray
    header: fits.Header
    astropy_wcs: Any
    outcome: dict[str, Any]


def _check_hdu(butler: Any, name: str, index: int, hdu: Any, hdul: fits.HDUList, data: np.ndarray,
               stored_as: dict[str, Any], original: fits.Header) -> dict[str, Any]:
    astropy_wcs, wcs_note = _astropy_wcs(hdu, hdul)
    result: dict[str, Any] = {"file": name, "hdu": index, "kind": type(hdu).__name__, "shape": list(data.shape),
                              "dtype": data.dtype.str, "stored_as": stored_as, "formats": {}}
    if wcs_note:
        result["wcs_note"] = wcs_note
    for fmt in FORMATS:
        result["formats"][fmt] = _check_format(butler, hdu, index, data, original, astropy_wcs, fmt)
    statuses = {outcome["status"] for outcome in result["formats"].values()}
    result["status"] = next(status for status in ("mismatch", "refused", "ok") if status in statuses)
    return result


def _check_format(butler: Any, hdu: Any, index: int, data: np.ndarray, original: fits.Header, astropy_wcs: Any,
                  fmt: str) -> dict[str, Any]:
    from objbutler.errors import ObjButlerError
    from objbutler.formats.wcs_cards import WCSWarning

    outcome: dict[str, Any] = {"status": "ok", "mismatches": [], "notes": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ref = butler.put(hdu, "corpus", {"hdu": index}, run=f"run_{fmt}", format=fmt)
        except Exception as exc:
            return {"status": "refused", "error_class": f"{type(exc).__module__}.{type(exc).__qualname__}",
                    "objbutler_error": isinstance(exc, ObjButlerError), "message": str(exc),
                    "notes": _warning_notes(caught, WCSWarning)}
        if ref.layout and ref.format == "fits":
            outcome["stored_layout"] = {k: v for k, v in ref.layout.items() if k in ("bitpix", "bscale", "bzero")}
        case = _Case(butler, ref, data, original, astropy_wcs, outcome)
        for stage in (_compare_get, _compare_boxes, _compare_sky):
            try:
                stage(case)
            except Exception as exc:
                outcome["mismatches"].append(f"{stage.__name__[9:]}: raised {_describe(exc)}")
    outcome["notes"] += _warning_notes(caught, WCSWarning)
    if outcome["mismatches"]:
        outcome["status"] = "mismatch"
    return outcome


def _warning_notes(caught: Sequence[warnings.WarningMessage], category: type[Warning]) -> list[str]:
    seen = dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, category))
    return list(seen)


def _same(expected: np.ndarray, actual: np.ndarray, what: str, outcome: dict[str, Any], promoted: Any = None) -> None:
    """Record a mismatch (shape, values) or a dtype finding between two arrays."""
    actual = np.asarray(actual)
    if expected.shape != actual.shape:
        outcome["mismatches"].append(f"{what}: shape {actual.shape}, astropy's {expected.shape}")
        return
    wanted = np.dtype(promoted if promoted is not None else expected.dtype).newbyteorder("=")
    if actual.dtype.newbyteorder("=") != wanted:
        finding = f"{what}: dtype {actual.dtype}, expected {wanted}"
        if finding not in outcome.setdefault("dtype", []):
            outcome["dtype"].append(finding)
    if expected.dtype.kind == actual.dtype.kind or {expected.dtype.kind, actual.dtype.kind} <= set("iu"):
        equal = np.array_equal(expected, actual, equal_nan=expected.dtype.kind == "f")
    else:
        equal = np.array_equal(expected.astype(np.float64), actual.astype(np.float64), equal_nan=True)
    if not equal:
        differ = int(np.count_nonzero(~_equal_mask(expected, actual)))
        outcome["mismatches"].append(f"{what}: {differ} of {expected.size} pixels differ")


def _equal_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 == b64) | (np.isnan(a64) & np.isnan(b64))


def _compare_get(case: _Case) -> None:
    got = case.butler.get(case.ref)
    _same(case.data, got.data, "get().data", case.outcome)
    case.outcome["notes"] += _header_changes(case.header, got.meta)
    if case.astropy_wcs is None:
        return
    for what, wcs in (("get().wcs", got.wcs), ("get_wcs()", case.butler.get_wcs(case.ref))):
        problem = _wcs_difference(case.astropy_wcs, wcs, case.data.shape)
        if problem:
            case.outcome["mismatches"].append(f"{what}: {problem}")


def _wcs_difference(expected: Any, actual: Any, shape: tuple[int, ...]) -> str | None:
    """Why ``actual`` maps pixels to the sky differently from ``expected`` (None when it does not)."""
    if actual is None:
        return "no WCS, astropy has a celestial one"
    from astropy.wcs.utils import proj_plane_pixel_scales

    ny, nx = shape
    ys, xs = np.meshgrid(np.linspace(-0.2 * ny, 1.2 * ny, 9), np.linspace(-0.2 * nx, 1.2 * nx, 9), indexing="ij")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sky = expected.pixel_to_world(xs.ravel(), ys.ravel())
        other = actual.pixel_to_world(xs.ravel(), ys.ravel())
        # Forward transforms only: astropy's inverse of a distortion converges to 1e-4 pixel by default.
        separation = np.asarray(sky.separation(other).deg)
        scale = float(np.mean(proj_plane_pixel_scales(expected.celestial)))
    finite = np.isfinite(sky.spherical.lon.deg) & np.isfinite(sky.spherical.lat.deg)
    if not np.array_equal(finite, np.isfinite(other.spherical.lon.deg) & np.isfinite(other.spherical.lat.deg)):
        return "some grid pixels map to the sky in only one of the two WCSs"
    worst = float(np.max(separation[finite]) / scale) if np.any(finite) else 0.0
    return None if worst <= _PIXEL_TOLERANCE else f"maps pixels to the sky differently (up to {worst:.3g} pixels)"


def _header_changes(original: fits.Header, meta: Any) -> list[str]:
    """Cards of the original header the returned ``meta`` dropped or changed (WCS cards rewritten included)."""
    dropped, changed = [], []
    returned: dict[str, list[fits.Card]] = {}
    for card in meta.cards:
        returned.setdefault(card.keyword, []).append(card)
    seen: dict[str, int] = {}
    for card in original.cards:  # the n-th card of a repeated keyword is compared with the n-th returned
        key = card.keyword
        if key in _STRUCTURAL or key.startswith(("NAXIS", "ZNAXIS", "ZTILE", "ZNAME", "ZVAL")):
            continue
        nth = seen[key] = seen.get(key, -1) + 1
        candidates = returned.get(key, [])
        if nth >= len(candidates):
            dropped.append(key)
        elif not _same_value(_value(card), _value(candidates[nth])):
            changed.append(key)
    notes = []
    if dropped:
        notes.append(f"meta lacks {len(dropped)} original cards: {', '.join(sorted(set(dropped)))}")
    if changed:
        notes.append(f"meta changed {len(changed)} original cards: {', '.join(sorted(set(changed)))}")
    return notes


def _value(card: fits.Card) -> Any:
    """A card's value, or its text when astropy cannot parse it (e.g. DSS's two-number ``SKEW``)."""
    try:
        return card.value
    except Exception:
        return card.image[10:].split("/")[0].strip()


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-300) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, str) and isinstance(b, str):
        return a.rstrip() == b.rstrip()
    return bool(a == b)


def _boxes(ny: int, nx: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Named boxes (x0, y0, x1, y1): inside, at the edges, the whole image, overhanging every side."""
    qx, qy = max(nx // 4, 0), max(ny // 4, 0)
    boxes = {
        "inside": (qx, qy, max(qx + nx // 2, qx + 1), max(qy + ny // 2, qy + 1)),
        "origin corner": (0, 0, min(3, nx), min(3, ny)),
        "far corner": (max(nx - 3, 0), max(ny - 3, 0), nx, ny),
        "last row": (0, ny - 1, nx, ny),
        "last column": (nx - 1, 0, nx, ny),
        "whole": (0, 0, nx, ny),
        "overhang low": (-2, -3, min(4, nx), min(5, ny)),
        "overhang high": (nx - 2, ny - 1, nx + 3, ny + 4),
        "overhang all": (-1, -1, nx + 1, ny + 1),
    }
    return list(boxes.items())


def _expected_box(data: np.ndarray, box: tuple[int, int, int, int], mode: str, fill: float) -> np.ndarray:
    from objbutler.cutouts import stamp_dtype

    ny, nx = data.shape
    x0, y0, x1, y1 = box
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, nx), min(y1, ny)
    if mode != "partial":
        return data[cy0:cy1, cx0:cx1]
    inside = (cx0, cy0, cx1, cy1) == box
    out = np.full((y1 - y0, x1 - x0), fill, dtype=data.dtype if inside else stamp_dtype(data.dtype, fill))
    out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = data[cy0:cy1, cx0:cx1]
    return out


def _compare_boxes(case: _Case) -> None:
    from objbutler.cutouts import Box

    data = case.data
    ny, nx = data.shape
    named = _boxes(ny, nx)
    inside = [(label, box) for label, box in named if box[0] >= 0 and box[1] >= 0 and box[2] <= nx and box[3] <= ny]
    for mode, chosen in (("trim", named), ("partial", named), ("strict", inside)):
        fill = np.nan
        stamps = case.butler.get_cutouts(case.ref, [Box(*box) for _, box in chosen], mode=mode, fill_value=fill)
        for (label, box), stamp in zip(chosen, stamps, strict=True):
            expected = _expected_box(data, box, mode, fill)
            _same(expected, stamp.data, f"box {label} {box} ({mode})", case.outcome, promoted=expected.dtype)


def _compare_sky(case: _Case) -> None:
    astropy_wcs, data, outcome = case.astropy_wcs, case.data, case.outcome
    if astropy_wcs is None:
        return
    from astropy.nddata import Cutout2D

    ny, nx = data.shape
    # Off the pixel grid by a fraction, so that a rounding of 1e-10 pixel cannot move a box by one.
    xs = np.array([nx / 2 - 0.5, 0.0, nx - 1.0]) + 0.27
    ys = np.array([ny / 2 - 0.5, 0.0, ny - 1.0]) + 0.23
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        positions = astropy_wcs.pixel_to_world(xs, ys)
    fill = np.nan if data.dtype.kind == "f" else 0
    for mode in ("trim", "partial"):
        stamps = case.butler.get_cutouts(case.ref, positions, size=_STAMP, mode=mode, fill_value=fill)
        for i, stamp in enumerate(stamps):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reference = Cutout2D(data, positions[i], _STAMP, wcs=astropy_wcs, mode=mode, fill_value=fill)
            what = f"sky cutout {i} at pixel ({xs[i]:.2f}, {ys[i]:.2f}) ({mode})"
            _same(np.asarray(reference.data), stamp.data, what, outcome, promoted=stamp.data.dtype)
            problem = _wcs_difference(reference.wcs, stamp.wcs, reference.data.shape)
            if problem:
                outcome["mismatches"].append(f"{what} WCS: {problem}")


def main(argv: Sequence[str] | None = None) -> int:
    """Check each file given (see the module docstring), each in a fresh temporary repository.

    Parameters
    ----------
    argv : sequence of str, optional
        The FITS files (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0: every result is on stdout, one JSON line per HDU (a mismatch is a result, not a failure
        of the run). Anything else on stdout (astropy's log) goes to stderr.
    """
    parser = argparse.ArgumentParser(prog="python -m objbutler.testing.corpus", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    out = sys.stdout
    sys.stdout = sys.stderr  # anything else printed (astropy's log) must not mix with the JSON lines
    try:
        for path in args.files:
            with tempfile.TemporaryDirectory(prefix="objbutler-corpus-") as workdir:
                for result in check_file(path, workdir):
                    out.write(json.dumps(result, default=str) + "\n")
                    out.flush()
    finally:
        sys.stdout = out
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
