"""Read cutout requests from CSV and write stamps out: FITS files, one multi-extension FITS, one .npz, a PNG."""

from __future__ import annotations

import csv
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from objbutler.cutouts import Box, Cutout
from objbutler.errors import InvalidCutoutError, NotSupportedError

__all__ = ["read_boxes_csv", "read_radec_csv", "stamp_file_name", "write_contact_sheet", "write_fits_file",
           "write_fits_stamps", "write_light_curve", "write_npz"]


def _rows(path: Path, columns: Sequence[str]) -> list[list[float]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise InvalidCutoutError(f"{path}: needs a header with columns {list(columns)}; missing {missing}")
            rows = []
            for number, row in enumerate(reader, start=2):
                try:
                    rows.append([float(row[c]) for c in columns])
                except (TypeError, ValueError):
                    raise InvalidCutoutError(
                        f"{path}:{number}: not a number in {[row.get(c) for c in columns]}"
                    ) from None
    except UnicodeDecodeError:
        raise InvalidCutoutError(f"{path} is not a CSV text file (it is not UTF-8 text)") from None
    except csv.Error as exc:
        raise InvalidCutoutError(f"{path} is not a readable CSV file: {exc}") from None
    if not rows:
        raise InvalidCutoutError(f"{path} has a header but no rows: nothing to cut")
    return rows


def read_boxes_csv(path: Path) -> list[Box]:
    """Boxes from a CSV with columns ``x0,y0,x1,y1`` (half-open, 0-based pixels)."""
    boxes = []
    for values in _rows(path, ("x0", "y0", "x1", "y1")):
        if not all(v.is_integer() for v in values):
            raise InvalidCutoutError(f"{path}: box corners must be whole pixels, got {values}")
        boxes.append(Box(*(int(v) for v in values)))
    return boxes


def read_radec_csv(path: Path) -> object:
    """Sky positions from a CSV with columns ``ra,dec`` in degrees (ICRS), as a SkyCoord."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    rows = np.array(_rows(path, ("ra", "dec")), dtype=float).reshape(-1, 2)
    return SkyCoord(rows[:, 0] * u.deg, rows[:, 1] * u.deg)


def stamp_file_name(index: int, stem: str = "stamp") -> str:
    """The file name :func:`write_fits_stamps` gives stamp ``index``: ``stamp-00042.fits``."""
    return f"{stem}-{index:05d}.fits"


def _stamp_header(stamp: Cutout) -> Any:
    from astropy.io import fits

    header = stamp.wcs.to_header(relax=True) if stamp.wcs is not None else fits.Header()
    for name in ("x0", "y0", "x1", "y1"):
        header[f"BBOX_{name.upper()}"] = (getattr(stamp.bbox, name), f"{name} of the stamp in parent pixels")
    return header


def write_fits_stamps(stamps: Sequence[Cutout], directory: Path, stem: str = "stamp") -> list[Path]:
    """One FITS file per stamp, with its WCS and its box in parent pixels (``BBOX_X0``...)."""
    from astropy.io import fits

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for stamp in stamps:
        path = directory / stamp_file_name(stamp.index, stem)
        fits.PrimaryHDU(stamp.data, header=_stamp_header(stamp)).writeto(path, overwrite=True)
        paths.append(path)
    return paths


def write_fits_file(stamps: Sequence[Cutout], path: Path) -> None:
    """All stamps in one multi-extension FITS file: an empty primary HDU, then one image HDU per
    stamp named ``STAMP_00000``..., each with its WCS and its box in parent pixels (``BBOX_X0``...)."""
    from astropy.io import fits

    hdus: list[Any] = [fits.PrimaryHDU()]
    hdus[0].header["NSTAMPS"] = (len(stamps), "number of stamp extensions")
    for stamp in stamps:
        hdus.append(fits.ImageHDU(stamp.data, header=_stamp_header(stamp), name=f"STAMP_{stamp.index:05d}"))
    fits.HDUList(hdus).writeto(path, overwrite=True)


def write_npz(stamps: Sequence[Cutout], path: Path) -> None:
    """All stamps in one .npz: ``stamp_00000`` ... and ``bbox`` (N x 4: x0, y0, x1, y1)."""
    bboxes = np.array([[s.bbox.x0, s.bbox.y0, s.bbox.x1, s.bbox.y1] for s in stamps], dtype=np.int64)
    arrays: dict[str, Any] = {"bbox": bboxes.reshape(-1, 4)}
    arrays.update({f"stamp_{s.index:05d}": s.data for s in stamps})
    np.savez_compressed(path, **arrays)


def write_contact_sheet(stamps: Sequence[Cutout], path: Path, max_stamps: int = 64, title: str = "",
                        labels: Sequence[str] | None = None) -> None:
    """A PNG grid of the first stamps, each scaled by its own robust percentiles, so a person can look.

    Each stamp is titled by its label (default ``#<index>``).

    Raises
    ------
    NotSupportedError
        matplotlib is not installed (it comes with the ``plots`` extra).
    InvalidCutoutError
        Every stamp is empty.
    """
    try:
        import matplotlib
    except ImportError as exc:
        raise NotSupportedError("PNG output needs matplotlib: pip install 'objbutler[plots]'") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    named = list(zip(stamps, labels if labels is not None else [f"#{s.index}" for s in stamps], strict=True))
    shown = [(s, label) for s, label in named if s.data.size][:max_stamps]
    if not shown:
        raise InvalidCutoutError("no non-empty stamps to draw")
    columns = int(np.ceil(np.sqrt(len(shown))))
    rows = int(np.ceil(len(shown) / columns))
    width = columns * 1.4
    # The title wrapped to the figure's width (9 pt characters are about 0.55 of 9 pt wide): with one
    # stamp, a one-line title was cut off at both sides.
    lines = textwrap.wrap(title, max(12, int(width * 72 / (9 * 0.55)))) if title else []
    figure, axes = plt.subplots(rows, columns, figsize=(width, rows * 1.4 + 0.4 + 0.17 * len(lines)),
                                squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, (stamp, label) in zip(axes.flat, shown, strict=False):
        finite = stamp.data[np.isfinite(stamp.data)]
        low, high = np.percentile(finite, [1, 99.5]) if finite.size else (0, 1)
        axis.imshow(stamp.data, origin="lower", cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        axis.set_title(label, fontsize=6)
    if lines:
        figure.suptitle("\n".join(lines), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_light_curve(history: Sequence[tuple[Any, Cutout]], path: Path, title: str = "",
                      max_stamps: int = 100) -> None:
    """A PNG of one position's stamps in time order, each labelled with its date and band.

    ``history`` is one position's ``(DatasetRef, Cutout)`` pairs from
    :meth:`objbutler.butler.Butler.cutouts_at` (already in time order; images
    without a recorded time last). Raises as :func:`write_contact_sheet`.
    """
    from astropy.time import Time

    def label(ref: Any) -> str:
        sky = ref.sky or {}
        mjd = sky.get("mjd")
        date = Time(mjd, format="mjd").iso[:16] if mjd is not None else "no date"
        return f"{date} {sky['band']}" if sky.get("band") else date

    pairs = [(ref, stamp) for ref, stamp in history if stamp.data.size][:max_stamps]
    write_contact_sheet([stamp for _, stamp in pairs], path, max_stamps=max_stamps, title=title,
                        labels=[label(ref) for ref, _ in pairs])
