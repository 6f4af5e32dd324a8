"""Which format stores which object, and the one place that writes and reads datasets.

=========  ========================  =================================  ===============
kind       python objects            formats                            ``get`` returns
=========  ========================  =================================  ===============
image      ndarray, HDU, HDUList,    ``fits`` (also tile-compressed),   NDData (CCDData
           NDData, CCDData           ``zarr``                           if put as one)
metadata   dict (JSON-safe)          ``json``                           dict
table      astropy Table             ``parquet``, ``ecsv``              Table
=========  ========================  =================================  ===============
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import yaml

from objbutler.errors import FormatError, NotFoundError, NotSupportedError
from objbutler.formats._image import Image, as_image, to_nddata
from objbutler.stores import Store

__all__ = ["FORMATS", "EncodedDataset", "Recorded", "encode_dataset", "kind_of", "read_dataset", "read_table_file",
           "write_dataset"]

FORMATS = {"fits": "image", "zarr": "image", "json": "metadata", "parquet": "table", "ecsv": "table"}
DEFAULT_FORMAT = {"metadata": "json", "table": "parquet"}


@dataclasses.dataclass(slots=True)
class EncodedDataset:
    """A dataset turned into bytes, ready to write.

    Parameters
    ----------
    kind : str
        ``image``, ``metadata`` or ``table``.
    format : str
        One of :data:`FORMATS`.
    objects : dict
        Relative name -> bytes; ``""`` for single-object formats.
    checksum : str
        ``sha256:<hex>`` of the bytes (Zarr: over its sorted per-object digests).
    layout : dict or None
        Where the pixels lie (see :attr:`objbutler.registry.records.DatasetRef.layout`).
    sky : dict or None
        The image's footprint, WCS cards, time and band (:func:`objbutler.sky.footprint.sky_record`).
    """

    kind: str
    format: str
    objects: dict[str, bytes]
    checksum: str
    layout: dict[str, Any] | None = None
    sky: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        """Total stored bytes."""
        return sum(len(b) for b in self.objects.values())


def kind_of(obj: Any) -> str:
    """Classify a Python object as ``image``, ``metadata`` or ``table``."""
    from astropy.table import Table

    if isinstance(obj, dict):
        return "metadata"
    if isinstance(obj, Table):
        return "table"
    return "image"


def encode_dataset(obj: Any, fmt: str | None, default_image_format: str, options: dict[str, Any]) -> EncodedDataset:
    """Encode ``obj`` in ``fmt`` (or the default for its kind).

    Raises
    ------
    FormatError
        For an object that the format cannot hold or an unknown format.
    """
    kind = kind_of(obj)
    fmt = fmt or (default_image_format if kind == "image" else DEFAULT_FORMAT[kind])
    if FORMATS.get(fmt) != kind:
        raise FormatError(f"a {kind} dataset ({type(obj).__name__}) cannot be stored as {fmt!r}; "
                          f"formats for {kind}: {[f for f, k in FORMATS.items() if k == kind]}")
    if kind == "image":
        return _encode_image(as_image(obj), fmt, options)
    data = _encode_metadata(obj) if kind == "metadata" else _encode_table(obj, fmt)
    return EncodedDataset(kind, fmt, {"": data}, _sha256(data))


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _encode_image(image: Image, fmt: str, options: dict[str, Any]) -> EncodedDataset:
    from objbutler.formats.wcs_cards import check_storable

    check_storable(image.header, image.wcs)  # a WCS that would not read back is refused, naming its cards
    try:
        return _encode_image_as(image, fmt, options)
    except (TypeError, ValueError) as exc:  # the encoders' own checks of their options
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"cannot encode this image as {fmt}: {exc}") from None


def check_format_options(fmt: str, options: dict[str, Any]) -> None:
    """Raise FormatError for a format option the encoder does not take, naming the ones it does."""
    if not options:
        return
    allowed = list(_encoder_options(fmt))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise FormatError(f"unknown {fmt} format option(s) {unknown}; allowed: {allowed}")


@functools.cache
def _encoder_options(fmt: str) -> tuple[str, ...]:
    """The keyword options of a format's encoder (its signature, read once per format)."""
    import inspect

    if fmt == "fits":
        from objbutler.formats.fits import encode_fits as encoder
    else:
        from objbutler.formats.zarr_write import encode_zarr as encoder  # type: ignore[assignment]
    return tuple(name for name in inspect.signature(encoder).parameters if name != "image")


def _encode_image_as(image: Image, fmt: str, options: dict[str, Any]) -> EncodedDataset:
    from objbutler.sky.footprint import sky_record

    check_format_options(fmt, options)
    if fmt == "fits":
        from objbutler.formats.fits import encode_fits
        from objbutler.formats.fits_headers import fits_layout
        from objbutler.formats.fits_plain import encode_plain_fits

        sky = sky_record(image.wcs, image.data.shape, image.header, relax=True)
        plain = encode_plain_fits(image, **options)  # bare pixels: astropy's bytes without astropy's cost
        if plain is not None:
            return EncodedDataset("image", fmt, {"": plain[0]}, _sha256(plain[0]), plain[1], sky)
        data = encode_fits(image, **options)
        return EncodedDataset("image", fmt, {"": data}, _sha256(data), fits_layout(data), sky)
    from objbutler.formats.zarr_header import _WCS_RELAX
    from objbutler.formats.zarr_layout import zarr_layout
    from objbutler.formats.zarr_write import encode_zarr, zarr_checksum

    objects = encode_zarr(image, **options)
    sky = sky_record(image.wcs, image.data.shape, image.header, relax=_WCS_RELAX)
    return EncodedDataset("image", fmt, objects, f"sha256:{zarr_checksum(objects)}", zarr_layout(objects), sky)


_MAX_JSON_DEPTH = 256


def _check_json_exact(value: Any, path: str = "$", depth: int = 0) -> None:
    """Refuse what JSON would change silently: non-string keys (read back as strings), tuples (as lists)."""
    if depth > _MAX_JSON_DEPTH:
        raise FormatError(f"metadata datasets may nest at most {_MAX_JSON_DEPTH} levels; {path} is deeper")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise FormatError(f"metadata keys must be strings: {path} has the key {key!r} "
                                  f"({type(key).__name__}), which JSON would read back as a string")
            _check_json_exact(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, tuple):
        raise FormatError(f"{path} is a tuple, which JSON reads back as a list: pass a list")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_exact(item, f"{path}[{index}]", depth + 1)


def _encode_metadata(obj: dict[str, Any]) -> bytes:
    _check_json_exact(obj)
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise FormatError(f"metadata datasets must be JSON-safe (finite numbers, strings, lists): {exc}") from None


def _encode_table(table: Any, fmt: str) -> bytes:
    if fmt == "ecsv":
        from astropy.time import Time

        _check_ecsv_strings(table)
        text = io.StringIO()
        try:  # Time as two float64 (jd1, jd2): exact, where the formatted value is cut at .precision digits
            table.write(text, format="ascii.ecsv", serialize_method={Time: "jd1_jd2"})
        except Exception as exc:  # yaml.RepresenterError and friends: meta ECSV cannot hold
            raise FormatError(f"cannot store this table as ecsv: {type(exc).__name__}: {exc}") from None
        return text.getvalue().encode("utf-8")
    return _table_to_parquet(table)


def _check_ecsv_strings(table: Any) -> None:
    """Refuse what astropy's ECSV reader gives back changed: "" (read as masked), edge whitespace (stripped)."""
    for name in table.colnames:
        if "\n" in name or "\r" in name or name != name.strip():
            raise FormatError(f"ECSV cannot hold the column name {name!r} (line breaks, edge whitespace); use parquet")
        column = table[name]
        if getattr(column, "dtype", None) is None or column.dtype.kind not in "US":
            continue
        if column.dtype.kind == "S":
            raise FormatError(f"column {name!r}: ECSV reads bytes back as str; decode them first or use parquet")
        values = np.asarray(column)
        mask = np.ma.getmaskarray(column) if hasattr(column, "mask") else np.zeros(values.shape, bool)
        shown = values[~mask]
        if shown.size and ((shown == "").any() or (np.char.strip(shown) != shown).any()):
            raise FormatError(f"column {name!r} holds empty strings or strings with leading/trailing whitespace, "
                              "which ECSV reads back as masked or stripped; use parquet")


EXACT_TIME_SUFFIX = ".jd1_jd2"
"""A Parquet Time column ``t`` (float64 MJD, for stock tools) is followed by ``t.jd1_jd2``, its exact form."""
_STORED_DTYPE_KINDS = "biufUSmM"
_MAX_STORED_ITEMSIZE = 1 << 20


def _table_to_parquet(table: Any) -> bytes:
    """Parquet with pyarrow alone: units, dtypes, masks (as nulls) and Time in field metadata, table meta as YAML.

    Refuses (FormatError) what Parquet columns cannot hold exactly: multidimensional, complex or
    object columns, mixins other than Quantity and Time, a Time with a location (ECSV holds them).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.io.misc import yaml as astropy_yaml
    from astropy.table import Column
    from astropy.time import Time
    from astropy.units import Quantity
    from astropy.utils.masked import Masked

    fields, arrays = [], []
    for name in table.colnames:
        column = table[name]
        meta: dict[str, str] = {}
        mask = getattr(column, "mask", None)
        mask = np.array(np.broadcast_to(mask, column.shape)) if mask is not None and np.any(mask) else None
        if isinstance(column, Time):
            if column.location is not None:
                raise FormatError(f"column {name!r}: parquet does not keep a Time's location; use ecsv")
            values = np.ma.getdata(column.mjd)  # float64 MJD for stock tools; jd1/jd2 below make it exact
            meta = {"astropy_time_scale": column.scale, "astropy_time_format": "mjd",
                    "astropy_time_shown_as": column.format, "astropy_time_precision": str(column.precision)}
        elif not isinstance(column, Column | Quantity):
            raise FormatError(f"column {name!r}: parquet cannot hold a {type(column).__name__} column; use ecsv")
        else:
            if isinstance(column, Masked):
                column = column.unmasked
            values = np.asarray(column.data if isinstance(column, np.ma.MaskedArray) else column)
            if values.ndim != 1 or values.dtype.kind in "cOV":
                raise FormatError(f"column {name!r} of dtype {values.dtype} and shape {values.shape[1:]} per row: "
                                  "parquet holds one-dimensional numbers, strings, bytes, bools and datetimes; "
                                  "use ecsv")
            values = values.astype(values.dtype.newbyteorder("="), copy=False)
            meta["numpy_dtype"] = values.dtype.str
            unit = getattr(column, "unit", None)
            if unit is not None:
                meta["unit"] = unit.to_string()
        for attr in ("description", "format"):
            if getattr(column.info, attr, None):
                meta[attr] = str(getattr(column.info, attr))
        if getattr(column.info, "meta", None):
            meta["meta_yaml"] = _yaml_dump(astropy_yaml, dict(column.info.meta), f"column {name!r} meta")
        array = pa.array(values, mask=mask)
        fields.append(pa.field(name, array.type, metadata=meta or None))
        arrays.append(array)
        if isinstance(column, Time):  # the exact two-double form, in a struct column after the MJD one
            jd1, jd2 = (np.ma.getdata(part) for part in (column.jd1, column.jd2))
            exact = pa.StructArray.from_arrays([pa.array(jd1), pa.array(jd2)], ["jd1", "jd2"])
            exact_name = f"{name}{EXACT_TIME_SUFFIX}"
            if exact_name in table.colnames:
                raise FormatError(f"column {exact_name!r} would collide with the exact form of Time column "
                                  f"{name!r}; rename it")
            fields.append(pa.field(exact_name, exact.type, metadata={"astropy_time_exact_of": name}))
            arrays.append(exact)
    schema = pa.schema(fields, metadata={"astropy_meta_yaml": _yaml_dump(astropy_yaml, dict(table.meta),
                                                                         "table meta")})
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), sink, compression="zstd")
    return sink.getvalue()


def _stored_dtype(text: str) -> np.dtype[Any]:
    """The numpy dtype a Parquet field's metadata names (ValueError unless a plain one of bounded size)."""
    dtype = np.dtype(text)
    if dtype.kind not in _STORED_DTYPE_KINDS or dtype.itemsize > _MAX_STORED_ITEMSIZE:
        raise ValueError(f"a column names the dtype {text!r}, which objbutler does not write")
    return dtype


def _yaml_dump(yaml: Any, value: Any, what: str) -> str:
    try:
        return yaml.dump(value)
    except Exception as exc:  # yaml.RepresenterError: a value astropy's YAML cannot write
        raise FormatError(f"cannot store the {what}: {type(exc).__name__}: {exc}") from None


def read_table_file(path: str | os.PathLike[str]) -> Any:
    """An astropy Table from a file: Parquet through pyarrow (astropy's reader needs pandas), else ``Table.read``.

    Raises
    ------
    FormatError
        The file is not a table astropy or pyarrow can read.
    """
    from astropy.table import Table

    try:
        if str(path).lower().endswith((".parquet", ".parq", ".pq")):
            with open(path, "rb") as handle:
                return _parquet_to_table(handle.read())
        return Table.read(path)
    except (OSError, ValueError, TypeError, KeyError, ImportError) as exc:
        raise FormatError(f"{path}: not a table objbutler can read ({type(exc).__name__}: {exc})") from exc


def _parquet_to_table(data: bytes) -> Any:
    import pyarrow as pa
    from astropy import units as u
    from astropy.io.misc import yaml as astropy_yaml
    from astropy.table import Column, MaskedColumn, Table
    from astropy.time import Time

    from objbutler.parquet_reads import read_parquet

    arrow = read_parquet(data)
    schema_meta = arrow.schema.metadata or {}
    if b"astropy_meta_yaml" in schema_meta:
        table = Table(meta=astropy_yaml.load(schema_meta[b"astropy_meta_yaml"].decode()))
    else:
        table = Table(meta=json.loads(schema_meta.get(b"astropy_meta", b"{}")))
    exact = {f.metadata[b"astropy_time_exact_of"].decode(): c for f, c in zip(arrow.schema, arrow.columns, strict=True)
             if f.metadata and b"astropy_time_exact_of" in f.metadata}
    for field, column in zip(arrow.schema, arrow.columns, strict=True):
        meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        if "astropy_time_exact_of" in meta:
            continue
        nulls = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
        if nulls is not None:
            column = column.fill_null(pa.scalar("", column.type) if pa.types.is_string(column.type)
                                      else pa.scalar(0, column.type) if not pa.types.is_boolean(column.type)
                                      else pa.scalar(False))
        values = column.to_numpy(zero_copy_only=False)
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            values = values.astype(str)
        if "numpy_dtype" in meta:
            values = values.astype(_stored_dtype(meta["numpy_dtype"]))
        if "astropy_time_scale" in meta:
            if field.name in exact:
                pair = exact[field.name].combine_chunks()
                time = Time(pair.field("jd1").to_numpy(), pair.field("jd2").to_numpy(), format="jd",
                            scale=meta["astropy_time_scale"])
            else:
                time = Time(values, format="mjd", scale=meta["astropy_time_scale"])
            with contextlib.suppress(ValueError):
                time.format = meta.get("astropy_time_shown_as", "mjd")
            if "astropy_time_precision" in meta:
                time.precision = int(meta["astropy_time_precision"])
            if nulls is not None:
                time[nulls] = np.ma.masked
            table[field.name] = time
        else:
            unit = u.Unit(meta["unit"], parse_strict="silent") if "unit" in meta else None
            table[field.name] = Column(values, unit=unit) if nulls is None else MaskedColumn(values, mask=nulls,
                                                                                             unit=unit)
        info = table[field.name].info
        info.description = meta.get("description")
        if "format" in meta:
            info.format = meta["format"]
        if "meta_yaml" in meta:
            info.meta = astropy_yaml.load(meta["meta_yaml"])
    return table


def write_dataset(store: Store, key: str, encoded: EncodedDataset) -> list[str]:
    """Write every object of a dataset under ``key``; on failure delete what was written and re-raise.

    Returns
    -------
    list of str
        The keys written.
    """
    if encoded.format == "zarr":
        from objbutler.formats.zarr_write import write_zarr_objects

        return write_zarr_objects(store, key, encoded.objects)
    try:
        store.put(key, encoded.objects[""])
    except Exception:
        with contextlib.suppress(Exception):
            store.delete(key)
        raise
    return [key]


def delete_dataset(store: Store, key: str, fmt: str) -> None:
    """Delete a dataset's objects (all keys under a Zarr prefix)."""
    if fmt == "zarr":
        for meta in list(store.list(key.rstrip("/") + "/")):
            store.delete(meta.key)
    else:
        store.delete(key)


@dataclasses.dataclass(frozen=True, slots=True)
class Recorded:
    """What the registry recorded of a dataset's stored bytes, for a whole read to check.

    Parameters
    ----------
    size : int
        Total bytes (every object of a Zarr array).
    checksum : str
        ``sha256:<hex>``, as :class:`EncodedDataset` computes it.
    name : str
        How error messages name the dataset (e.g. ``calexp {'visit': 1} in run 'r'``).
    """

    size: int
    checksum: str
    name: str


_VERIFY_IN_THREAD = 1 << 20
"""From this many bytes on, the checksum is computed on a second thread while the bytes are decoded
(hashlib and numpy's copies release the GIL), so a verified get costs little more than an unverified one."""


def read_dataset(store: Store, key: str, fmt: str, *, recorded: Recorded | None = None, verify: bool = True,
                 hdu: int | str | None = None) -> Any:
    """Read a whole dataset back as the Python object its kind returns.

    Parameters
    ----------
    store : Store
        Where it is.
    key : str
        Its key (the prefix of a Zarr array).
    fmt : str
        One of :data:`FORMATS`.
    recorded : Recorded, optional
        The registry's size and checksum. The size also bounds a Zarr array's
        chunk count (see :func:`objbutler.formats.zarr_array.fetch_zarr`).
    verify : bool, default True
        With ``recorded``: check that the bytes read have the recorded size
        and checksum (SHA-256 over the bytes; for Zarr over every object).

    Returns
    -------
    NDData, dict or Table

    Raises
    ------
    FormatError
        The bytes are not of the format, declare shapes they cannot hold, or
        (verified) differ from what was recorded: the message names the
        dataset, the key, and the recorded and actual size or checksum.
    """
    kind = FORMATS.get(fmt)
    if kind is None:
        raise FormatError(f"unknown dataset format {fmt!r} for {key}")
    check = recorded if verify else None
    if hdu is not None and (fmt != "fits" and not (fmt == "zarr" and hdu in (0, "PRIMARY"))):
        raise NotSupportedError(f"hdu={hdu!r} picks an HDU of a FITS image; {key} is {fmt}")
    if fmt == "zarr":
        from objbutler.formats.zarr_array import decode_zarr, fetch_zarr, zarr_checksum

        fetched = fetch_zarr(store, key, size=recorded.size if recorded else None, every_object=check is not None)
        return _checked(check, key, fetched.size, lambda: f"sha256:{zarr_checksum(fetched.objects)}",
                        lambda: to_nddata(decode_zarr(fetched, key)))
    data = store.get(key)
    return _checked(check, key, len(data), lambda: _sha256(data), lambda: _decode(data, fmt, key, hdu))


def _checked(
    recorded: Recorded | None, key: str, size: int, digest: Callable[[], str], decode: Callable[[], Any]
) -> Any:
    """Decode, after checking the size, with the checksum computed alongside (in a thread for large reads)."""
    if recorded is None:
        return decode()
    if size != recorded.size:
        raise _mismatch(recorded, key, "size", f"{size} bytes", f"{recorded.size} bytes")
    if size < _VERIFY_IN_THREAD:
        actual = digest()
        if actual != recorded.checksum:
            raise _mismatch(recorded, key, "checksum", actual, recorded.checksum)
        return decode()
    result: list[str] = []
    hasher = threading.Thread(target=lambda: result.append(digest()), name="objbutler-verify", daemon=True)
    hasher.start()
    try:
        obj = decode()
    except Exception as exc:
        hasher.join()
        if result and result[0] != recorded.checksum:  # corrupt bytes: say so rather than why they did not decode
            raise _mismatch(recorded, key, "checksum", result[0], recorded.checksum) from exc
        raise
    hasher.join()
    if not result:
        raise FormatError(f"{recorded.name} ({key}): the checksum could not be computed")
    if result[0] != recorded.checksum:
        raise _mismatch(recorded, key, "checksum", result[0], recorded.checksum)
    return obj


def _mismatch(recorded: Recorded, key: str, what: str, actual: str, expected: str) -> FormatError:
    return FormatError(f"{recorded.name} ({key}): the stored {what} is {actual}, the registry recorded {expected}; "
                       f"the stored bytes are corrupt or were replaced (get(..., verify=False) reads them anyway)")


def _decode(data: bytes, fmt: str, key: str, hdu: int | str | None = None) -> Any:
    """Decode the bytes of a single-object dataset."""
    if fmt == "fits":
        from objbutler.formats.fits import decode_fits

        return to_nddata(decode_fits(data, hdu, key=key))
    if fmt == "json":
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"metadata dataset {key} is corrupt: {exc}") from None
    return _decode_table(data, fmt, key)


def _decode_table(data: bytes, fmt: str, key: str) -> Any:
    from astropy.table import Table

    try:
        if fmt == "ecsv":
            return Table.read(data.decode("utf-8"), format="ascii.ecsv")
        return _parquet_to_table(data)
    except (ValueError, OSError, TypeError, KeyError, AttributeError, NotImplementedError, yaml.YAMLError) as exc:
        raise FormatError(f"table dataset {key} is corrupt: {type(exc).__name__}: {exc}") from None


def dataset_objects(store: Store, key: str, fmt: str) -> list[str]:
    """The object keys a stored dataset consists of (NotFoundError if none)."""
    if fmt != "zarr":
        store.head(key)
        return [key]
    keys = [meta.key for meta in store.list(key.rstrip("/") + "/")]
    if not keys:
        raise NotFoundError(f"no Zarr objects under {key}")
    return keys


_SIGNATURES = {"fits": b"SIMPLE  =", "parquet": b"PAR1", "ecsv": b"# %ECSV"}


def signature_problem(store: Store, key: str, fmt: str) -> str | None:
    """Why the object at ``key`` cannot be a ``fmt`` dataset, judged from its first bytes, or None.

    One small range read: catches a gzip-compressed FITS file, an HTML error
    page or a file of another format registered under the wrong one, which
    ``get`` could not read. Zarr arrays are checked by their ``zarr.json``.
    """
    signature = _SIGNATURES.get(fmt)
    if signature is None:
        return None
    (head,) = store.get_ranges(key, [(0, len(signature))])
    if head == signature:
        return None
    if head[:2] == b"\x1f\x8b":
        return f"it is gzip-compressed, not plain {fmt} (decompress it first)"
    return f"it does not start as a {fmt} file does ({signature!r}), but with {head!r}"
