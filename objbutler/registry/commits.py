"""One commit of the registry log: the JSON document and its validation.

A commit is a small, self-contained JSON object::

    {"format": "objbutler-commit", "version": 1, "commit_id": "<uuid>",
     "writer": "<host>:<pid>", "time": "2026-11-26T04:31:37.123456Z",
     "dataset_types": [{"name": ..., "dimensions": [...], "kind": ...}],
     "dimensions": {"visit": "int", ...},
     "datasets": [{<DatasetRef.to_json()>}, ...],
     "annotations": [{"id": "<dataset uuid>", "sky": {...}}, ...]}   # optional

``annotations`` (written by ``objbutler reindex``) add metadata to datasets
committed earlier without rewriting anything: a reader applies them in log
order, the first annotation of a dataset that has no sky record giving it one
(:meth:`objbutler.registry.state.RegistryState.apply`). Readers that predate
them see a commit with no datasets and skip it.

Readers reject anything else with a :class:`~objbutler.errors.FormatError`
that names the object, and never rewrite it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import socket
import uuid
from typing import Any

from objbutler.errors import FormatError
from objbutler.registry.records import DatasetRef, DatasetType

__all__ = ["COMMIT_FORMAT", "Commit", "decode_commit", "encode_commit", "new_commit", "utc_now"]

COMMIT_FORMAT = "objbutler-commit"
COMMIT_VERSION = 1


def utc_now() -> str:
    """The current UTC time as ISO-8601 with microseconds and a ``Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass(frozen=True, slots=True)
class Commit:
    """A decoded commit.

    Parameters
    ----------
    commit_id : str
        UUID of the commit.
    writer : str
        Who wrote it (host and process), for diagnosis.
    time : str
        Writer's clock at commit time (informational; never used for ordering).
    dataset_types : tuple of DatasetType
        Types this commit registers or relies on.
    dimensions : dict
        Kind (``"int"``/``"str"``) of every data ID key the commit uses.
    datasets : tuple of DatasetRef
        The datasets added.
    annotations : tuple of dict
        ``{"id": dataset id, "sky": sky record}`` for datasets committed earlier.
    """

    commit_id: str
    writer: str
    time: str
    dataset_types: tuple[DatasetType, ...]
    dimensions: dict[str, str]
    datasets: tuple[DatasetRef, ...]
    annotations: tuple[dict[str, Any], ...] = ()


def new_commit(dataset_types: list[DatasetType], dimensions: dict[str, str], datasets: list[DatasetRef],
               annotations: list[dict[str, Any]] | None = None) -> Commit:
    """Make a commit for the given types and datasets, stamped with a new id and this writer."""
    writer = f"{socket.gethostname()}:{os.getpid()}"
    return Commit(uuid.uuid4().hex, writer, utc_now(), tuple(dataset_types), dict(dimensions), tuple(datasets),
                  tuple(annotations or ()))


def encode_commit(commit: Commit) -> bytes:
    """Serialize a commit to UTF-8 JSON."""
    document = {
        "format": COMMIT_FORMAT,
        "version": COMMIT_VERSION,
        "commit_id": commit.commit_id,
        "writer": commit.writer,
        "time": commit.time,
        "dataset_types": [t.to_json() for t in commit.dataset_types],
        "dimensions": commit.dimensions,
        "datasets": [ref.to_json() for ref in commit.datasets],
        **({"annotations": list(commit.annotations)} if commit.annotations else {}),
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def decode_commit(data: bytes, where: str, repository: str = "") -> Commit:
    """Parse and validate a commit.

    Parameters
    ----------
    data : bytes
        The stored bytes.
    where : str
        The object key, for error messages.
    repository : str
        URI stamped onto the decoded refs.

    Returns
    -------
    Commit
        The commit.

    Raises
    ------
    FormatError
        If the bytes are not a complete, valid commit document.
    """
    try:
        document: dict[str, Any] = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"registry log entry {where} is corrupt or truncated ({exc}); it was left as found") from None
    if not isinstance(document, dict) or document.get("format") != COMMIT_FORMAT:
        raise FormatError(f"registry log entry {where} is not an objbutler commit")
    if document.get("version") != COMMIT_VERSION:
        raise FormatError(f"registry log entry {where} has unsupported version {document.get('version')!r}")
    try:
        return Commit(
            commit_id=str(document["commit_id"]),
            writer=str(document["writer"]),
            time=str(document["time"]),
            dataset_types=tuple(DatasetType.from_json(t) for t in document["dataset_types"]),
            dimensions={str(k): str(v) for k, v in document["dimensions"].items()},
            datasets=tuple(DatasetRef.from_json(r, repository) for r in document["datasets"]),
            annotations=tuple(document.get("annotations") or ()),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(f"registry log entry {where} is malformed: {exc!r}") from None
