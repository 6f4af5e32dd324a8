"""The service's answers as bytes: stamp FITS, object-history FITS, the DataLink VOTable, JSON rows.

Nothing here does I/O beyond building bytes in memory.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from objbutler.cutouts import Cutout
from objbutler.registry.records import DatasetRef
from objbutler.service import fitsio

__all__ = [
    "SODA_SYNC_STANDARD",
    "LinkItem",
    "datalink_error_votable",
    "datalink_votable",
    "history_fits",
    "history_rows",
    "stamps_fits",
]

SODA_SYNC_STANDARD = "ivo://ivoa.net/std/SODA#sync-1.0"
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


def _char_param(votable: Any, name: str, value: str, ucd: str | None = None, scope: str = "param") -> Any:
    from astropy.io.votable.tree import Param

    return Param(votable, name=name, ID=f"{scope}_{name}", datatype="char", arraysize="*", value=value, ucd=ucd)


def _array_param(votable: Any, name: str, xtype: str, arraysize: str, unit: str, ucd: str, scope: str) -> Any:
    """An input parameter the client fills in.

    A fixed-size array cannot be written without a value: astropy writes zeros, which pyvo (like
    any DataLink client that skips all-zero defaults) does not send.
    """
    from astropy.io.votable.tree import Param

    return Param(votable, name=name, ID=f"{scope}_{name}", datatype="double", arraysize=arraysize, xtype=xtype,
                 unit=unit, value="", ucd=ucd)


def _soda_descriptor(votable: Any, ref: DatasetRef, sync_url: str, resource_id: str) -> Any:
    """The ``adhoc:service`` resource of the SODA sync endpoint, with ``ID`` fixed to ``ref``'s id."""
    from astropy.io.votable.tree import Group, Resource

    service = Resource(type="meta", utype="adhoc:service", ID=resource_id)
    service.params.extend([
        _char_param(votable, "standardID", SODA_SYNC_STANDARD, scope=resource_id),
        _char_param(votable, "accessURL", sync_url, scope=resource_id),
    ])
    inputs = Group(service, name="inputParams")
    service.groups.append(inputs)
    inputs.entries.extend([
        _char_param(votable, "ID", ref.id, ucd="meta.ref.url;meta.curation", scope=resource_id),
        _char_param(votable, "POS", "", ucd="pos.outline;obs", scope=resource_id),
        _array_param(votable, "CIRCLE", "circle", "3", "deg", "pos.outline;obs", resource_id),
        _array_param(votable, "POLYGON", "polygon", "*", "deg", "pos.outline;obs", resource_id),
        _array_param(votable, "TIME", "interval", "2", "d", "time.interval;obs.exposure", resource_id),
        _char_param(votable, "RESPONSEFORMAT", "", scope=resource_id),
    ])
    return service


LinkItem = tuple[str, "DatasetRef | str"]
"""One ``ID`` of a DataLink request: the dataset it names, or the error message its row carries."""

_FIELDS_LONG_TEXT = {"datatype": "char", "arraysize": "*"}


def datalink_votable(items: Sequence[LinkItem], this_urls: Sequence[str], sync_url: str) -> bytes:
    """The DataLink ``{links}`` answer for the ``ID`` values of a request, in request order.

    Rows, per ``ID`` (DataLink 1.1 3.2: consecutive): for a dataset, ``#this`` (its URL in
    ``this_urls``, which serves the dataset's bytes as FITS) and ``#cutout``, whose ``service_def``
    names an ``adhoc:service`` resource describing the SODA endpoint at ``sync_url`` (``standardID``
    :data:`SODA_SYNC_STANDARD`; input parameters ``ID`` with the dataset's id, ``POS``, ``CIRCLE``,
    ``POLYGON``, ``TIME``, ``RESPONSEFORMAT``); for an ``ID`` that names none, one ``#this`` row with
    its ``error_message`` (``NotFoundFault: ...``, ``UsageFault: ...``). No ``ID``: no rows.
    """
    from astropy.io.votable.tree import Field, Info, Resource, TableElement, VOTableFile

    votable = VOTableFile(version="1.4")
    results = Resource(type="results")
    votable.resources.append(results)
    table = TableElement(votable, name="links")
    results.tables.append(table)
    table.fields.extend([
        Field(votable, name="ID", ucd="meta.id;meta.main", **_FIELDS_LONG_TEXT),
        Field(votable, name="access_url", ucd="meta.ref.url", **_FIELDS_LONG_TEXT),
        Field(votable, name="service_def", ucd="meta.ref", **_FIELDS_LONG_TEXT),
        Field(votable, name="error_message", ucd="meta.code.error", **_FIELDS_LONG_TEXT),
        Field(votable, name="semantics", ucd="meta.code", **_FIELDS_LONG_TEXT),
        Field(votable, name="description", ucd="meta.note", **_FIELDS_LONG_TEXT),
        Field(votable, name="content_type", ucd="meta.code.mime", **_FIELDS_LONG_TEXT),
        Field(votable, name="content_length", ucd="phys.size;meta.file", datatype="long", unit="byte"),
    ])
    rows: list[tuple[Any, ...]] = []
    unknown_length: list[int] = []
    refs: list[DatasetRef] = []
    for (name, item), this_url in zip(items, this_urls, strict=True):
        if isinstance(item, str):
            unknown_length.append(len(rows))
            rows.append((name, "", "", item, "#this", "", "", 0))
            continue
        refs.append(item)
        service_def = _SERVICE_DEF if len(refs) == 1 else f"{_SERVICE_DEF}-{len(refs)}"
        size = item.size if item.format == "fits" else 0
        rows.append((name, this_url, "", "", "#this", f"{item.dataset_type} {item.data_id} run {item.run}",
                     "application/fits", size))
        unknown_length.append(len(rows))
        rows.append((name, "", service_def, "", "#cutout", "SODA cutouts of this image", "application/fits", 0))
    table.create_arrays(len(rows))
    for index, row in enumerate(rows):
        table.array[index] = row
    for index in unknown_length:
        table.array.mask[index]["content_length"] = True
    for number, ref in enumerate(refs, start=1):
        votable.resources.append(_soda_descriptor(votable, ref, sync_url,
                                                  _SERVICE_DEF if number == 1 else f"{_SERVICE_DEF}-{number}"))
    results.infos.append(Info(name="standardID", value="ivo://ivoa.net/std/DataLink#links-1.1"))
    out = io.BytesIO()
    votable.to_xml(out)
    # astropy writes zeros for a fixed-size array PARAM without a value; DataLink 4.3 wants value=""
    return re.sub(rb'(<PARAM ID="[^"]*_(?:CIRCLE|TIME)"[^>]*?) value="[^"]*"', rb'\1 value=""', out.getvalue())


def datalink_error_votable(message: str) -> bytes:
    """A DataLink error document (DataLink 1.1 3.4, DALI 4.4): ``QUERY_STATUS`` ``ERROR`` and the message,
    which begins with ``UsageFault``, ``NotFoundFault``, ``TransientFault`` or ``DefaultFault``."""
    from astropy.io.votable.tree import Info, Resource, VOTableFile

    votable = VOTableFile(version="1.4")
    results = Resource(type="results")
    votable.resources.append(results)
    results.infos.append(Info(name="QUERY_STATUS", value="ERROR", content=message))
    out = io.BytesIO()
    votable.to_xml(out)
    return out.getvalue()
