"""Claims and registrations: the conditional creates that make the ``claimed`` protocol's commits unique.

A **claim** is ``manifest/claims/<h[:2]>/<h>.json``, created with
``put_if_absent`` before a commit, where ``h`` is the SHA-256 (hex) of the
canonical encoding of a dataset's ``(dataset type, run, data ID)``. Exactly one
writer can create it, so exactly one commit can hold that data ID, whatever
log shard it goes to. Its body names the commit and dataset that hold it::

    {"format": "objbutler-claim", "version": 1, "commit_id": "<uuid>",
     "dataset_id": "<uuid>", "time": "2026-11-30T01:05:29.123456Z"}

A claim whose commit never reaches the log (a crashed put) is *unfinished*:
``objbutler fsck`` reports it and ``objbutler vacuum`` removes it once it is
older than the grace period and its dataset is not in the registry.

A **registration** is ``manifest/types/<name>.json`` (a dataset type) or
``manifest/dimensions/<key>.json`` (a data ID key's kind), created the same
way before the first commit that uses it, so that commits in different shards
can never disagree about a type.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any

from objbutler.errors import FormatError
from objbutler.registry.records import DatasetType

__all__ = ["CLAIMS_PREFIX", "DIMENSIONS_PREFIX", "TYPES_PREFIX", "Claim", "claim_age", "claim_key",
           "decode_claim", "decode_dimension", "decode_type", "dimension_key", "encode_claim",
           "encode_dimension", "encode_type", "type_key"]

CLAIMS_PREFIX = "manifest/claims/"
TYPES_PREFIX = "manifest/types/"
DIMENSIONS_PREFIX = "manifest/dimensions/"
CLAIM_FORMAT = "objbutler-claim"


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """A decoded claim.

    Parameters
    ----------
    commit_id : str
        The commit that holds the data ID, or empty when the claim was made
        before the commit was formed (a put claims while its data uploads).
    dataset_id : str
        The dataset it commits there.
    time : str
        Writer's clock when it claimed (ISO-8601 UTC), for diagnosis and vacuum.
    """

    commit_id: str
    dataset_id: str
    time: str


def claim_key(unique: tuple[str, str, str]) -> str:
    """The claim object of a ``(dataset type, run, canonical data ID)``."""
    digest = hashlib.sha256(json.dumps(list(unique), separators=(",", ":")).encode("utf-8")).hexdigest()
    return f"{CLAIMS_PREFIX}{digest[:2]}/{digest}.json"


def encode_claim(claim: Claim) -> bytes:
    """The claim document."""
    return json.dumps({"format": CLAIM_FORMAT, "version": 1, **dataclasses.asdict(claim)},
                      separators=(",", ":")).encode()


def decode_claim(data: bytes, where: str) -> Claim:
    """Parse a claim; FormatError naming ``where`` if it is not one."""
    try:
        document: dict[str, Any] = json.loads(data)
        if document.get("format") != CLAIM_FORMAT or document.get("version") != 1:
            raise FormatError(f"claim {where} is not an objbutler claim")
        return Claim(str(document["commit_id"]), str(document["dataset_id"]), str(document["time"]))
    except FormatError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"claim {where} is corrupt or truncated ({exc!r})") from None


def claim_age(claim: Claim, now: dt.datetime | None = None) -> float | None:
    """Seconds since the claim was made (writer clock), or None if its time does not parse."""
    try:
        made = dt.datetime.strptime(claim.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return ((now or dt.datetime.now(dt.UTC)) - made).total_seconds()


def type_key(name: str) -> str:
    """The registration object of a dataset type."""
    return f"{TYPES_PREFIX}{name}.json"


def dimension_key(name: str) -> str:
    """The registration object of a data ID key."""
    return f"{DIMENSIONS_PREFIX}{name}.json"


def encode_type(dataset_type: DatasetType) -> bytes:
    """A dataset type's registration document."""
    return json.dumps(dataset_type.to_json(), separators=(",", ":"), sort_keys=True).encode()


def decode_type(data: bytes, where: str) -> DatasetType:
    """Parse a dataset type registration; FormatError if it is not one."""
    try:
        return DatasetType.from_json(json.loads(data))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"dataset type registration {where} is corrupt ({exc!r})") from None


def encode_dimension(kind: str) -> bytes:
    """A data ID key's registration document."""
    return json.dumps({"kind": kind}).encode()


def decode_dimension(data: bytes, where: str) -> str:
    """Parse a data ID key registration: its kind; FormatError if it is not one."""
    try:
        kind = json.loads(data)["kind"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"data ID key registration {where} is corrupt ({exc!r})") from None
    if kind not in ("int", "str"):
        raise FormatError(f"data ID key registration {where} has unknown kind {kind!r}")
    return str(kind)
