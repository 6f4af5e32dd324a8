"""What the registry records: dataset refs, dataset types, and validated data IDs.

Everything that reaches an object key passes through here first, so a data ID
or run name can never smuggle a path separator, a control character or a
``..`` into the bucket layout.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from objbutler.errors import ConflictError, InvalidKeyError

__all__ = [
    "DataId",
    "DatasetRef",
    "DatasetType",
    "canonical_data_id",
    "data_id_slug",
    "dimension_kinds",
    "validate_data_id",
    "validate_dataset_type_name",
    "validate_run",
]

DataIdValue = int | str
DataId = dict[str, DataIdValue]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,99}$")
_DIMENSION = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_RUN_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+:@=\-]{0,99}$")
MAX_VALUE_CHARS = 200
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
KINDS = ("image", "metadata", "table")


def validate_dataset_type_name(name: Any) -> str:
    """Check a dataset type name (``calexp``, ``deepCoadd_calexp``, ``efd.extract``).

    Parameters
    ----------
    name : str
        The name to check.

    Returns
    -------
    str
        The name.

    Raises
    ------
    InvalidKeyError
        If it is not a short identifier-like string.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidKeyError(f"dataset type name must match {_NAME.pattern}, got {name!r}")
    return name


def validate_run(run: Any) -> str:
    """Check a run name: ``/``-separated segments of safe characters (``u/someone/run1``).

    Parameters
    ----------
    run : str
        The run to check.

    Returns
    -------
    str
        The run.
    """
    if not isinstance(run, str) or not run or len(run) > 200:
        raise InvalidKeyError(f"run must be a non-empty string of at most 200 characters, got {run!r}")
    for segment in run.split("/"):
        if not _RUN_SEGMENT.match(segment):
            raise InvalidKeyError(f"run {run!r}: segment {segment!r} must match {_RUN_SEGMENT.pattern}")
    return run


def _validate_value(key: str, value: Any) -> DataIdValue:
    if isinstance(value, bool):
        raise InvalidKeyError(f"data ID value for {key!r} must be an int or a str, got a bool")
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        number = int(value)
        if not INT64_MIN <= number <= INT64_MAX:
            raise InvalidKeyError(f"data ID value for {key!r} does not fit in 64 bits: {number}")
        return number
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidKeyError(f"data ID value for {key!r} must be finite, got {value!r}")
        raise InvalidKeyError(f"data ID value for {key!r} must be an int or a str, got the float {value!r}")
    if isinstance(value, str):
        if not value or len(value) > MAX_VALUE_CHARS:
            raise InvalidKeyError(f"data ID value for {key!r} must have 1 to {MAX_VALUE_CHARS} characters")
        if value != value.strip() or value in (".", "..") or "/" in value or "\\" in value:
            raise InvalidKeyError(f"data ID value for {key!r} is unsafe: {value!r}")
        if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in value):
            raise InvalidKeyError(f"data ID value for {key!r} contains a control character: {value!r}")
        return value
    raise InvalidKeyError(f"data ID value for {key!r} must be an int or a str, got {type(value).__name__}")


def validate_data_id(data_id: Any) -> DataId:
    """Check a data ID and return a plain, key-sorted copy.

    Parameters
    ----------
    data_id : mapping
        Dimension name -> int or str, e.g. ``{"visit": 903334, "detector": 22}``.

    Returns
    -------
    dict
        The same data ID with plain ``int``/``str`` values, keys sorted.

    Raises
    ------
    InvalidKeyError
        For a non-mapping, bad dimension names, or bad values (floats, NaN,
        bools, huge ints, empty/huge strings, separators, control characters).
    """
    if not isinstance(data_id, Mapping):
        raise InvalidKeyError(f"data ID must be a mapping, got {type(data_id).__name__}")
    out: DataId = {}
    for key in sorted(data_id):
        if not isinstance(key, str) or not _DIMENSION.match(key):
            raise InvalidKeyError(f"data ID key must match {_DIMENSION.pattern}, got {key!r}")
        out[key] = _validate_value(key, data_id[key])
    return out


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
"""What ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` builds on every call."""


def canonical_data_id(data_id: DataId) -> str:
    """The canonical JSON text of a validated data ID (sorted keys, no spaces)."""
    return _CANONICAL.encode(data_id)


def data_id_slug(data_id: DataId) -> str:
    """A readable, key-safe rendering for object names: ``detector=22,visit=903334``."""
    if not data_id:
        return "_"
    # an int's digits and sign need no quoting (quote() would return them unchanged)
    parts = (f"{key}={value}" if type(value) is int else f"{key}={urllib.parse.quote(str(value), safe='')}"
             for key, value in data_id.items())
    return ",".join(parts)


def dimension_kinds(data_id: DataId) -> dict[str, str]:
    """``{"visit": "int", "band": "str"}``: the value kind of each dimension."""
    return {key: "int" if isinstance(value, int) else "str" for key, value in data_id.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class DatasetType:
    """A named kind of dataset with fixed data ID keys.

    Parameters
    ----------
    name : str
        The dataset type name.
    dimensions : tuple of str
        The data ID keys, sorted.
    kind : {"image", "metadata", "table"}
        What the datasets hold.
    """

    name: str
    dimensions: tuple[str, ...]
    kind: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict."""
        return {"name": self.name, "dimensions": list(self.dimensions), "kind": self.kind}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DatasetType:
        """Parse :meth:`to_json` output."""
        return cls(str(raw["name"]), tuple(str(d) for d in raw["dimensions"]), str(raw["kind"]))

    def check_compatible(self, other: DatasetType) -> None:
        """Raise ConflictError unless ``other`` has the same dimensions and kind."""
        if other.dimensions != self.dimensions or other.kind != self.kind:
            raise ConflictError(
                f"dataset type {self.name!r} is registered with data ID keys {list(self.dimensions)} and kind "
                f"{self.kind!r}; this put has keys {list(other.dimensions)} and kind {other.kind!r}"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class DatasetRef:
    """A committed dataset: what the registry knows about it.

    Parameters
    ----------
    id : str
        UUID of the dataset.
    dataset_type : str
        Dataset type name.
    data_id : dict
        Data ID (sorted keys).
    run : str
        Run name.
    format : str
        ``"fits"``, ``"zarr"``, ``"json"`` or ``"parquet"``.
    key : str
        Object key (or key prefix, for Zarr) of the data, relative to the repository;
        for a dataset registered in place (``direct``), the absolute URI of its
        object or Zarr prefix (``s3://bucket/raw/x.fits``).
    size : int
        Stored bytes.
    checksum : str
        ``sha256:<hex>`` of the stored bytes (Zarr: of its sorted per-object digests).
    created : str
        ISO-8601 UTC time of the put.
    provenance : dict or None
        Inputs, derived_from and activity (see :mod:`objbutler.provenance`).
    repository : str
        URI of the repository that holds it.
    layout : dict or None
        Where the pixels of an image objbutler wrote lie in its object (FITS:
        :func:`objbutler.formats.fits_headers.fits_layout`; Zarr:
        :func:`objbutler.formats.zarr_layout.zarr_layout`), so cutouts skip the header
        or ``zarr.json`` read; None for other datasets and for Zarr images put before Zarr layouts were
        recorded. For a FITS file ingested as it is
        (:func:`objbutler.ingest.ingest_objects`), ``{"hdu": <index>}`` names the
        HDU the dataset is, plus where its pixels lie when it is a plain 2-D image
        in a copy the repository owns.
    sky : dict or None
        An image's footprint polygon, WCS cards, observation time and band
        (:mod:`objbutler.sky.footprint`), so sky queries and cutouts need no
        header read; None for other datasets and images without a celestial WCS
        (and for images put before it existed, until ``objbutler reindex``).
    direct : dict or None
        Set for a dataset registered where it already was (``transfer="direct"``):
        its data is not in the repository but at the absolute URI ``key`` on the
        repository's store endpoint, and objbutler never writes or deletes it.
        ``{"etag": <str or None>}``: the store's etag of the object when it was
        registered (for a Zarr array a digest of every object's etag, see
        :func:`objbutler.integrity.etag_digest`), so ``fsck`` can tell that it was
        replaced without reading it. None for data the repository holds.
    """

    id: str
    dataset_type: str
    data_id: dict[str, DataIdValue]
    run: str
    format: str
    key: str
    size: int
    checksum: str
    created: str
    provenance: dict[str, Any] | None = None
    repository: str = ""
    layout: dict[str, Any] | None = None
    sky: dict[str, Any] | None = None
    direct: dict[str, Any] | None = None

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DatasetRef) and other.id == self.id

    @property
    def is_direct(self) -> bool:
        """True for a dataset registered in place: ``key`` is then an absolute URI outside the repository."""
        return self.direct is not None

    @property
    def unique_key(self) -> tuple[str, str, str]:
        """``(dataset_type, run, canonical data ID)``: what must be unique in a repository."""
        return (self.dataset_type, self.run, canonical_data_id(self.data_id))

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (without ``repository``, which the reader knows)."""
        return {
            "id": self.id,
            "dataset_type": self.dataset_type,
            "data_id": dict(self.data_id),
            "run": self.run,
            "format": self.format,
            "key": self.key,
            "size": self.size,
            "checksum": self.checksum,
            "created": self.created,
            "provenance": self.provenance,
            **({"layout": self.layout} if self.layout is not None else {}),
            **({"sky": self.sky} if self.sky is not None else {}),
            **({"direct": self.direct} if self.direct is not None else {}),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], repository: str = "") -> DatasetRef:
        """Parse :meth:`to_json` output; raises KeyError/TypeError on a malformed record."""
        return cls(
            id=str(raw["id"]),
            dataset_type=str(raw["dataset_type"]),
            data_id=dict(raw["data_id"]),
            run=str(raw["run"]),
            format=str(raw["format"]),
            key=str(raw["key"]),
            size=int(raw["size"]),
            checksum=str(raw["checksum"]),
            created=str(raw["created"]),
            provenance=raw.get("provenance"),
            repository=repository,
            layout=raw.get("layout"),
            sky=raw.get("sky"),
            direct=_direct_record(raw.get("direct")),
        )


def _direct_record(raw: Any) -> dict[str, Any] | None:
    """The ``direct`` field of a record: None, or a dict whose ``etag`` is a string or None."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("etag"), str | None):
        raise TypeError(f"the direct field of a dataset record must be an object with an etag, got {raw!r}")
    return dict(raw)
