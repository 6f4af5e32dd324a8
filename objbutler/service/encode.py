"""The service's answers as bytes: stamp FITS, object-history FITS, the DataLink VOTable, JSON rows.

Nothing here does I/O beyond building bytes in memory.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from objbutler.cutouts import Cutout
from objbutler.registry.records import DatasetRef
from objbutler.service import fitsio

__all__ = [
    "SODA_SYNC_STANDARD",
    "datalink_votable",
    "history_fits",
    "history_rows",
    "stamps_fits",
]

SODA_SYNC_STANDARD = "ivo://ivoa.net/std/SODA#sync-1"
_SERVICE_DEF = "soda-sync"


def _card(keyword: str, value: Any, comment: str = "") -> str:
    """A card by the fast writer, or astropy's rendering of it when the value needs more (long or odd text)."""
    try:
        return fitsio.card(keyword, value, comment)
    except ValueError:
        return fits.Card(keyword, value, comment).image[:80]


def _stamp_cards(ref: DatasetRef, stamp: Cutout) -> list[str]:
    """The stamp's WCS (the parent's registry cards, CRPIX moved; else astropy's header of the stamp WCS)."""
    box = stamp.bbox
    cards: list[str] | None = None
    parent = (ref.sky or {}).get("wcs")
    if parent:
        try:
            cards = fitsio.wcs_cards(parent, box.x0, box.y0)
        except (ValueError, TypeError):
            cards = None
    if cards is None:
        header = stamp.wcs.to_header(relax=True) if stamp.wcs is not None else fits.Header()
        cards = [c.image for c in header.cards if c.keyword not in fitsio.STRUCTURAL and len(c.image) == 80]
    cards.append(_card("LTV1", -box.x0, "parent x = stamp x - LTV1 (0-based offsets)"))
    cards.append(_card("LTV2", -box.y0, "parent y = stamp y - LTV2"))
    return cards


def _describe(ref: DatasetRef, present: Sequence[str] = ()) -> list[str]:
    keys = {line[:8].rstrip() for line in present}
    cards = [_card("OBJBID", ref.id, "objbutler dataset id of the parent image"),
             _card("OBJBTYPE", ref.dataset_type, "dataset type"),
             _card("OBJBRUN", ref.run, "run"),
             _card("OBJBDID", json.dumps(ref.data_id, sort_keys=True)[:68])]
    sky = ref.sky or {}
    if sky.get("mjd") is not None and "MJD-OBS" not in keys:
        cards.append(_card("MJD-OBS", float(sky["mjd"]), "observation time of the parent (MJD)"))
    if sky.get("band") is not None and "FILTER" not in keys:
        cards.append(_card("FILTER", str(sky["band"]), "band of the parent"))
    return cards


def _empty_primary(cards: Sequence[str]) -> bytes:
    return fitsio.image_hdu(np.zeros((0,), dtype=np.uint8), cards, primary=True)


def stamps_fits(ref: DatasetRef, stamps: Sequence[Cutout], regions: Sequence[str]) -> bytes:
    """The SODA answer: one stamp as a single-image FITS; several as one image extension each, in order.

    Parameters
    ----------
    ref : DatasetRef
        The image cut.
    stamps : sequence of Cutout
        One per stencil, in request order.
    regions : sequence of str
        The stencils in DALI form (recorded as ``SODAREG`` in each stamp's header).
    """
    if len(stamps) == 1:
        cards = _stamp_cards(ref, stamps[0])
        cards += [*_describe(ref, cards), _card("SODAREG", regions[0][:60])]
        return fitsio.image_hdu(stamps[0].data, cards, primary=True)
    parts = [_empty_primary([*_describe(ref), _card("NSTAMPS", len(stamps), "one image extension per region")])]
    for number, (stamp, region) in enumerate(zip(stamps, regions, strict=True), start=1):
        cards = [*_stamp_cards(ref, stamp), _card("SODAREG", region[:60])]
        parts.append(fitsio.image_hdu(stamp.data, cards, primary=False, extname="STAMP", extver=number))
    return b"".join(parts)


def history_rows(history: Sequence[tuple[DatasetRef, Cutout]]) -> list[dict[str, Any]]:
    """One plain dict per stamp of an object history: dataset, data ID, run, time, band, parent box."""
    rows = []
    for ref, stamp in history:
        sky = ref.sky or {}
        box = stamp.bbox
        rows.append({"id": ref.id, "dataset_type": ref.dataset_type, "run": ref.run, "data_id": ref.data_id,
                     "mjd": sky.get("mjd"), "band": sky.get("band"), "bbox": [box.x0, box.y0, box.x1, box.y1]})
    return rows


def _table_bytes(hdu: fits.BinTableHDU) -> bytes:
    """A table extension's bytes (astropy writes it after a bare primary HDU, dropped here)."""
    out = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(out)
    raw = out.getvalue()
    primary_size = len(_empty_primary([]))
    return raw[primary_size:]


def history_fits(history: Sequence[tuple[DatasetRef, Cutout]], ra: float, dec: float) -> bytes:
    """An object history: one image extension per stamp (time order), then a ``HISTORY`` table.

    The table has a row per stamp: ``HDU`` (its extension number), ``ID``, ``TYPE``, ``RUN``,
    ``DATA_ID`` (JSON), ``MJD`` (NaN when unknown), ``BAND`` and the parent box ``X0 Y0 X1 Y1``.
    """
    parts = [_empty_primary([_card("RA", float(ra), "requested position (deg, ICRS)"),
                             _card("DEC", float(dec), "requested position (deg, ICRS)"),
                             _card("NSTAMPS", len(history), "image extensions, in observation-time order")])]
    for number, (ref, stamp) in enumerate(history, start=1):
        cards = _stamp_cards(ref, stamp)
        cards += _describe(ref, cards)
        parts.append(fitsio.image_hdu(stamp.data, cards, primary=False, extname="STAMP", extver=number))
    rows = history_rows(history)
    columns = [
        fits.Column("HDU", "J", array=np.arange(1, len(rows) + 1, dtype=np.int32)),
        fits.Column("ID", "36A", array=[row["id"] for row in rows]),
        fits.Column("TYPE", "64A", array=[row["dataset_type"] for row in rows]),
        fits.Column("RUN", "64A", array=[row["run"] for row in rows]),
        fits.Column("DATA_ID", "256A", array=[json.dumps(row["data_id"], sort_keys=True) for row in rows]),
        fits.Column("MJD", "D", array=[np.nan if row["mjd"] is None else row["mjd"] for row in rows]),
        fits.Column("BAND", "16A", array=[row["band"] or "" for row in rows]),
    ]
    for index, name in enumerate(("X0", "Y0", "X1", "Y1")):
        columns.append(fits.Column(name, "K", array=np.array([row["bbox"][index] for row in rows], dtype=np.int64)))
    parts.append(_table_bytes(fits.BinTableHDU.from_columns(columns, name="HISTORY")))
    return b"".join(parts)


def _char_param(votable: Any, name: str, value: str, ucd: str | None = None, ref: str | None = None) -> Any:
    from astropy.io.votable.tree import Param

    return Param(votable, name=name, ID=f"param_{name}", datatype="char", arraysize="*", value=value, ucd=ucd,
                 ref=ref)


def _array_param(votable: Any, name: str, xtype: str, arraysize: str, unit: str, ucd: str) -> Any:
    """An input parameter the client fills in.

    A fixed-size array cannot be written without a value: astropy writes zeros, which pyvo (like
    any DataLink client that skips all-zero defaults) does not send.
    """
    from astropy.io.votable.tree import Param

    return Param(votable, name=name, ID=f"param_{name}", datatype="double", arraysize=arraysize, xtype=xtype,
                 unit=unit, value="", ucd=ucd)


def datalink_votable(ref: DatasetRef, this_url: str, sync_url: str) -> bytes:
    """The DataLink ``{links}`` answer for one dataset, with a SODA sync service descriptor.

    Rows: ``#this`` (``this_url`` serves the dataset's bytes as FITS) and ``#cutout``, whose
    ``service_def`` names the ``adhoc:service`` resource describing the SODA endpoint at ``sync_url``
    (``standardID`` :data:`SODA_SYNC_STANDARD`; input parameters ``ID`` with this dataset's id,
    ``POS``, ``CIRCLE``, ``POLYGON``, ``TIME``, ``RESPONSEFORMAT``).
    """
    from astropy.io.votable.tree import Field, Group, Resource, TableElement, VOTableFile

    votable = VOTableFile(version="1.4")
    results = Resource(type="results")
    votable.resources.append(results)
    table = TableElement(votable, name="links")
    results.tables.append(table)
    long_text = {"datatype": "char", "arraysize": "*"}
    table.fields.extend([
        Field(votable, name="ID", ucd="meta.id;meta.main", **long_text),
        Field(votable, name="access_url", ucd="meta.ref.url", **long_text),
        Field(votable, name="service_def", ucd="meta.ref", **long_text),
        Field(votable, name="error_message", ucd="meta.code.error", **long_text),
        Field(votable, name="semantics", ucd="meta.code", **long_text),
        Field(votable, name="description", ucd="meta.note", **long_text),
        Field(votable, name="content_type", ucd="meta.code.mime", **long_text),
        Field(votable, name="content_length", ucd="phys.size;meta.file", datatype="long", unit="byte"),
    ])
    table.create_arrays(2)
    size = ref.size if ref.format == "fits" else 0
    table.array[0] = (ref.id, this_url, "", "", "#this", f"{ref.dataset_type} {ref.data_id} run {ref.run}",
                      "application/fits", size)
    table.array[1] = (ref.id, "", _SERVICE_DEF, "", "#cutout", "SODA cutouts of this image", "application/fits", 0)
    table.array.mask[1]["content_length"] = True

    service = Resource(type="meta", utype="adhoc:service", ID=_SERVICE_DEF)
    votable.resources.append(service)
    service.params.extend([
        _char_param(votable, "standardID", SODA_SYNC_STANDARD),
        _char_param(votable, "accessURL", sync_url),
    ])
    inputs = Group(service, name="inputParams")
    service.groups.append(inputs)
    inputs.entries.extend([
        _char_param(votable, "ID", ref.id, ucd="meta.id;meta.dataset"),
        _char_param(votable, "POS", "", ucd="obs.field"),
        _array_param(votable, "CIRCLE", "circle", "3", "deg", "obs.field"),
        _array_param(votable, "POLYGON", "polygon", "*", "deg", "obs.field"),
        _array_param(votable, "TIME", "interval", "2", "d", "time.interval;obs.exposure"),
        _char_param(votable, "RESPONSEFORMAT", ""),
    ])
    out = io.BytesIO()
    votable.to_xml(out)
    return out.getvalue()
