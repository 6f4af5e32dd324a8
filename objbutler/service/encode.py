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

__all__ = [
    "SODA_SYNC_STANDARD",
    "datalink_votable",
    "history_fits",
    "history_rows",
    "stamps_fits",
]

SODA_SYNC_STANDARD = "ivo://ivoa.net/std/SODA#sync-1"
_SERVICE_DEF = "soda-sync"


def _stamp_header(stamp: Cutout) -> fits.Header:
    header = stamp.wcs.to_header(relax=True) if stamp.wcs is not None else fits.Header()
    box = stamp.bbox
    header["LTV1"] = (-box.x0, "parent x = stamp x - LTV1 (0-based offsets)")
    header["LTV2"] = (-box.y0, "parent y = stamp y - LTV2")
    return header


def _describe(header: fits.Header, ref: DatasetRef) -> None:
    header["OBJBID"] = (ref.id, "objbutler dataset id of the parent image")
    header["OBJBTYPE"] = (ref.dataset_type, "dataset type")
    header["OBJBRUN"] = (ref.run, "run")
    header["OBJBDID"] = json.dumps(ref.data_id, sort_keys=True)[:68]
    sky = ref.sky or {}
    if sky.get("mjd") is not None:
        header["MJD-OBS"] = (float(sky["mjd"]), "observation time of the parent (MJD)")
    if sky.get("band") is not None:
        header["FILTER"] = (str(sky["band"]), "band of the parent")


def _to_bytes(hdul: fits.HDUList) -> bytes:
    out = io.BytesIO()
    hdul.writeto(out, output_verify="silentfix")
    return out.getvalue()


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
        header = _stamp_header(stamps[0])
        _describe(header, ref)
        header["SODAREG"] = regions[0][:68]
        return _to_bytes(fits.HDUList([fits.PrimaryHDU(stamps[0].data, header=header)]))
    primary = fits.PrimaryHDU()
    _describe(primary.header, ref)
    primary.header["NSTAMPS"] = (len(stamps), "one image extension per requested region, in order")
    hdus: list[Any] = [primary]
    for number, (stamp, region) in enumerate(zip(stamps, regions, strict=True), start=1):
        header = _stamp_header(stamp)
        header["SODAREG"] = region[:68]
        hdus.append(fits.ImageHDU(stamp.data, header=header, name="STAMP", ver=number))
    return _to_bytes(fits.HDUList(hdus))


def history_rows(history: Sequence[tuple[DatasetRef, Cutout]]) -> list[dict[str, Any]]:
    """One plain dict per stamp of an object history: dataset, data ID, run, time, band, parent box."""
    rows = []
    for ref, stamp in history:
        sky = ref.sky or {}
        box = stamp.bbox
        rows.append({"id": ref.id, "dataset_type": ref.dataset_type, "run": ref.run, "data_id": ref.data_id,
                     "mjd": sky.get("mjd"), "band": sky.get("band"), "bbox": [box.x0, box.y0, box.x1, box.y1]})
    return rows


def history_fits(history: Sequence[tuple[DatasetRef, Cutout]], ra: float, dec: float) -> bytes:
    """An object history: one image extension per stamp (time order), then a ``HISTORY`` table.

    The table has a row per stamp: ``HDU`` (its extension number), ``ID``, ``TYPE``, ``RUN``,
    ``DATA_ID`` (JSON), ``MJD`` (NaN when unknown), ``BAND`` and the parent box ``X0 Y0 X1 Y1``.
    """
    primary = fits.PrimaryHDU()
    primary.header["RA"] = (ra, "requested position (deg, ICRS)")
    primary.header["DEC"] = (dec, "requested position (deg, ICRS)")
    primary.header["NSTAMPS"] = (len(history), "image extensions, in observation-time order")
    hdus: list[Any] = [primary]
    for number, (ref, stamp) in enumerate(history, start=1):
        header = _stamp_header(stamp)
        _describe(header, ref)
        hdus.append(fits.ImageHDU(stamp.data, header=header, name="STAMP", ver=number))
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
    hdus.append(fits.BinTableHDU.from_columns(columns, name="HISTORY"))
    return _to_bytes(fits.HDUList(hdus))


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
