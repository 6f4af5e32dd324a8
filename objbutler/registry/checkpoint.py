"""Checkpoints: a Parquet snapshot of every record up to a log position.

A checkpoint is ``manifest/checkpoints/<position>.parquet``, a plain Parquet
file that pyarrow, DuckDB or pandas read without objbutler. One row per
dataset:

===============  ==========================================================
``id``           dataset UUID (string)
``dataset_type`` dataset type name (dictionary-encoded string)
``run``          run name (dictionary-encoded string)
``format``       ``fits`` / ``zarr`` / ``json`` / ``parquet``
``key``          object key (or Zarr prefix) relative to the repository
``size``         stored bytes (int64)
``checksum``     ``sha256:<hex>``
``created``      ISO-8601 UTC time of the put
``data_id``      canonical JSON of the data ID
``provenance``   JSON, or null
``layout``       JSON, or null: where an image's pixels lie in its object
``sky_ra``       list of float64, or null: an image's footprint polygon (RA, degrees ICRS)
``sky_dec``      list of float64, or null: its Dec (degrees)
``sky_mjd``      float64, or null: observation time (MJD)
``sky_band``     string, or null: band or filter
``sky``          JSON, or null: the rest of the sky record (shape, WCS cards, ``error_px``)
``direct``       JSON, or null: ``{"etag": ...}`` of a dataset registered in
                 place (then ``key`` is the absolute URI of its data)
``dim.<name>``   one column per data ID key (int64 or string), for queries
===============  ==========================================================

Checkpoints written before the ``sky*`` columns existed read with them null
(:func:`conform`); the next checkpoint written has them.

The file's key-value metadata ``objbutler`` holds a JSON document with the
format version, the log position covered, the dataset types and the
dimension kinds. A claimed repository's checkpoint is named by the total number
of commits it covers (20 digits) and its position is the per-shard vector.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from objbutler.errors import FormatError
from objbutler.parquet_reads import read_parquet
from objbutler.registry.records import DatasetRef, DatasetType, canonical_data_id

__all__ = [
    "CHECKPOINT_PREFIX",
    "Checkpoint",
    "conform",
    "decode_checkpoint",
    "encode_checkpoint",
    "refs_to_table",
    "valid_position",
]

CHECKPOINT_PREFIX = "manifest/checkpoints/"
CHECKPOINT_VERSION = 1
DIM_PREFIX = "dim."
_VECTOR = re.compile(r"shards:\d{1,20}(,\d{1,20}){0,999}")
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")

_BASE_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("dataset_type", pa.string()),
    pa.field("run", pa.string()),
    pa.field("format", pa.string()),
    pa.field("key", pa.string()),
    pa.field("size", pa.int64()),
    pa.field("checksum", pa.string()),
    pa.field("created", pa.string()),
    pa.field("data_id", pa.string()),
    pa.field("provenance", pa.string()),
    pa.field("layout", pa.string()),
    pa.field("direct", pa.string()),
]
_SKY_FIELDS = [
    pa.field("sky_ra", pa.list_(pa.float64())),
    pa.field("sky_dec", pa.list_(pa.float64())),
    pa.field("sky_mjd", pa.float64()),
    pa.field("sky_band", pa.string()),
    pa.field("sky", pa.string()),
]
_SKY_COLUMNS = ("ra", "dec", "mjd", "band")


@dataclasses.dataclass(slots=True)
class Checkpoint:
    """A decoded checkpoint.

    Parameters
    ----------
    position : str or None
        The log position it covers (None: the empty repository).
    table : pyarrow.Table
        One row per dataset (schema in the module docstring).
    dataset_types : dict
        Name -> DatasetType.
    dimensions : dict
        Data ID key -> ``"int"`` or ``"str"``.
    """

    position: str | None
    table: pa.Table
    dataset_types: dict[str, DatasetType]
    dimensions: dict[str, str]


def _dim_type(kind: str) -> pa.DataType:
    return pa.int64() if kind == "int" else pa.string()


def schema_for(dimensions: dict[str, str]) -> pa.Schema:
    """The table schema for a set of dimension kinds."""
    fields = list(_BASE_FIELDS) + list(_SKY_FIELDS)
    fields += [pa.field(f"{DIM_PREFIX}{name}", _dim_type(kind)) for name, kind in sorted(dimensions.items())]
    return pa.schema(fields)


def refs_to_table(refs: Iterable[DatasetRef], dimensions: dict[str, str]) -> pa.Table:
    """Build the checkpoint table of some refs (used for the log tail, which is small).

    Parameters
    ----------
    refs : iterable of DatasetRef
        The records.
    dimensions : dict
        Kinds of every data ID key any ref uses.

    Returns
    -------
    pyarrow.Table
        Rows in the order given.
    """
    refs = list(refs)
    columns: dict[str, list[Any]] = {
        "id": [r.id for r in refs],
        "dataset_type": [r.dataset_type for r in refs],
        "run": [r.run for r in refs],
        "format": [r.format for r in refs],
        "key": [r.key for r in refs],
        "size": [r.size for r in refs],
        "checksum": [r.checksum for r in refs],
        "created": [r.created for r in refs],
        "data_id": [canonical_data_id(r.data_id) for r in refs],
        "provenance": [None if r.provenance is None else json.dumps(r.provenance, sort_keys=True) for r in refs],
        "layout": [None if r.layout is None else json.dumps(r.layout, sort_keys=True) for r in refs],
        **_sky_columns(refs),
        "direct": [None if r.direct is None else json.dumps(r.direct, sort_keys=True) for r in refs],
    }
    for name in sorted(dimensions):
        columns[f"{DIM_PREFIX}{name}"] = [r.data_id.get(name) for r in refs]
    return pa.table(columns, schema=schema_for(dimensions))


def _sky_columns(refs: list[DatasetRef]) -> dict[str, list[Any]]:
    """The ``sky*`` columns of some refs (the polygon, time and band typed; the rest as JSON)."""
    skies = [r.sky for r in refs]
    columns: dict[str, list[Any]] = {
        f"sky_{name}": [None if sky is None else sky.get(name) for sky in skies] for name in _SKY_COLUMNS
    }
    columns["sky"] = [
        None if sky is None else json.dumps({k: v for k, v in sky.items() if k not in _SKY_COLUMNS}, sort_keys=True)
        for sky in skies
    ]
    return columns


def _sky_of(row: dict[str, Any]) -> dict[str, Any] | None:
    """A sky record back from its columns (None when the row has none)."""
    if row["sky"] is None or row["sky_ra"] is None:
        return None
    sky: dict[str, Any] = json.loads(row["sky"])
    sky["ra"], sky["dec"] = row["sky_ra"], row["sky_dec"]
    if row["sky_mjd"] is not None:
        sky["mjd"] = row["sky_mjd"]
    if row["sky_band"] is not None:
        sky["band"] = row["sky_band"]
    return sky


def conform(table: pa.Table, dimensions: dict[str, str]) -> pa.Table:
    """The table with exactly the columns of :func:`schema_for`, in its (sorted) order.

    Columns are matched by name, whatever order they come in; a dimension no
    row has yet becomes a column of nulls. So the schema is a function of the
    registered dimensions alone, never of the order in which dataset types
    brought them.

    Raises
    ------
    FormatError
        If a column cannot hold its declared kind.
    """
    schema = schema_for(dimensions)
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table[field.name]
            try:
                columns.append(column if column.type == field.type else column.cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise FormatError(f"checkpoint column {field.name!r} does not hold {field.type}: {exc}") from None
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def valid_position(position: Any) -> bool:
    """True for a log position: ``None``, 20 digits (sequenced), ``"<ISO time>Z|<key>"`` (timestamped) or
    ``"shards:<n0>,<n1>,..."`` (claimed: one sequence number per log shard)."""
    if position is None:
        return True
    if not isinstance(position, str):
        return False
    if _VECTOR.fullmatch(position):
        return True
    if position.isdigit():
        return len(position) == 20
    stamp, _, key = position.partition("|")
    return bool(_STAMP.fullmatch(stamp)) and key.startswith("manifest/log/")


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """Write a checkpoint as Parquet bytes (zstd, dictionary-encoded strings)."""
    table = conform(checkpoint.table, checkpoint.dimensions)
    meta = {
        "version": CHECKPOINT_VERSION,
        "position": checkpoint.position,
        "dataset_types": [t.to_json() for t in checkpoint.dataset_types.values()],
        "dimensions": checkpoint.dimensions,
        "rows": table.num_rows,
    }
    table = table.replace_schema_metadata({"objbutler": json.dumps(meta)})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", use_dictionary=["dataset_type", "run", "format"],
                   write_page_checksum=True)  # a page garbled at rest or on the way fails to read, never misreads
    return sink.getvalue()


def decode_checkpoint(data: bytes, where: str) -> Checkpoint:
    """Read a checkpoint; FormatError (naming ``where``) if it is corrupt or foreign."""
    try:
        table = read_parquet(data, verify_pages=True)
        raw = (table.schema.metadata or {}).get(b"objbutler")
        if raw is None:
            raise FormatError(f"checkpoint {where} has no objbutler metadata")
        meta = json.loads(raw)
        if meta.get("version") != CHECKPOINT_VERSION or meta.get("rows") != table.num_rows:
            raise FormatError(f"checkpoint {where} has an unsupported version or a wrong row count")
        types = {t["name"]: DatasetType.from_json(t) for t in meta["dataset_types"]}
        dimensions = {str(k): str(v) for k, v in meta["dimensions"].items()}
        if not valid_position(meta.get("position")):
            raise FormatError(f"checkpoint {where} names an invalid log position {meta.get('position')!r}")
        if any(kind not in ("int", "str") for kind in dimensions.values()):
            raise FormatError(f"checkpoint {where} declares an unknown dimension kind")
        table = conform(table, dimensions)  # older ones lack "layout", "direct" or "sky*"; any column order
    except FormatError:
        raise
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"checkpoint {where} is corrupt or truncated: {exc}") from None
    return Checkpoint(meta["position"], table.replace_schema_metadata(None), types, dimensions)


def empty_checkpoint() -> Checkpoint:
    """The state of a repository with no commits."""
    return Checkpoint(None, schema_for({}).empty_table(), {}, {})


def rows_to_refs(table: pa.Table, repository: str) -> list[DatasetRef]:
    """Turn checkpoint rows back into DatasetRefs."""
    refs = []
    for row in table.select([f.name for f in _BASE_FIELDS + _SKY_FIELDS]).to_pylist():
        refs.append(
            DatasetRef(
                id=row["id"],
                dataset_type=row["dataset_type"],
                data_id=json.loads(row["data_id"]),
                run=row["run"],
                format=row["format"],
                key=row["key"],
                size=row["size"],
                checksum=row["checksum"],
                created=row["created"],
                provenance=None if row["provenance"] is None else json.loads(row["provenance"]),
                repository=repository,
                layout=None if row["layout"] is None else json.loads(row["layout"]),
                sky=_sky_of(row),
                direct=None if row["direct"] is None else json.loads(row["direct"]),
            )
        )
    return refs
