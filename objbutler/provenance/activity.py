"""The activity model: the processing step that made datasets, and the ``butler.activity`` block that stamps it.

An :class:`Activity` is a name, a JSON-safe config, software versions, the host
and UTC start/end times. ``with butler.activity(...)`` (:func:`activity_scope`)
stamps it on every put through that Butler; when the block closes it writes a
completion record ``provenance/activities/<id>.json`` (:data:`ACTIVITY_PREFIX`)
that lineage walks read for the end time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import socket
import uuid
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from objbutler.errors import ObjButlerError
from objbutler.registry.commits import utc_now

if TYPE_CHECKING:
    from objbutler.butler import Butler

__all__ = ["ACTIVITY_PREFIX", "Activity", "ProvenanceWarning", "activity_scope", "current_activity",
           "software_versions"]

ACTIVITY_PREFIX = "provenance/activities/"


class ProvenanceWarning(UserWarning):
    """Provenance could not be recorded completely (e.g. an activity's completion record)."""


def software_versions() -> dict[str, str]:
    """Versions of objbutler, numpy, astropy and Python in this process."""
    import astropy
    import numpy

    from objbutler.version import __version__

    return {
        "objbutler": __version__,
        "numpy": numpy.__version__,
        "astropy": astropy.__version__,
        "python": platform.python_version(),
    }


def _json_copy(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be JSON-safe (finite numbers, strings, lists, dicts): {exc}") from None


@dataclasses.dataclass(slots=True)
class Activity:
    """The processing step that produced datasets.

    Parameters
    ----------
    name : str
        The task, e.g. ``"make_coadd"``.
    config : dict, optional
        Its parameters; must be JSON-safe (a copy is kept).
    software : dict, optional
        Extra ``{package: version}``; objbutler, numpy, astropy and Python are
        filled in automatically unless given here.
    host : str, optional
        Where it ran (default: this host's name).
    started : str, optional
        ISO-8601 UTC start (default: now).
    ended : str or None
        ISO-8601 UTC end; set by :meth:`finish` or when a
        ``butler.activity`` block closes.
    id : str, optional
        UUID (default: a fresh one).

    Attributes
    ----------
    outputs : list of str
        IDs of the datasets this process has put with this activity.
    """

    name: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    software: dict[str, str] = dataclasses.field(default_factory=dict)
    host: str = dataclasses.field(default_factory=socket.gethostname)
    started: str = dataclasses.field(default_factory=utc_now)
    ended: str | None = None
    id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    outputs: list[str] = dataclasses.field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"an activity needs a non-empty name, got {self.name!r}")
        if not isinstance(self.config, Mapping):
            raise ValueError(f"activity config must be a dict, got {type(self.config).__name__}")
        self.config = _json_copy(dict(self.config), "activity config")
        self.software = {**software_versions(), **{str(k): str(v) for k, v in self.software.items()}}

    def finish(self) -> Activity:
        """Set the end time to now (if not set yet); returns the activity."""
        if self.ended is None:
            self.ended = utc_now()
        return self

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (what the registry stores)."""
        return {
            "id": self.id, "name": self.name, "config": self.config, "software": dict(self.software),
            "host": self.host, "started": self.started, "ended": self.ended,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Activity:
        """Parse :meth:`to_json` output."""
        return cls(
            name=str(raw["name"]), config=dict(raw.get("config") or {}), software=dict(raw.get("software") or {}),
            host=str(raw.get("host", "")), started=str(raw.get("started", "")), ended=raw.get("ended"),
            id=str(raw["id"]),
        )


@contextlib.contextmanager
def activity_scope(butler: Butler, activity: Activity) -> Iterator[Activity]:
    """Stamp ``activity`` on every put made through ``butler`` until the block closes.

    On exit the activity is finished and, if it produced datasets, its
    completion record is written to ``provenance/activities/<id>.json``.
    """
    stack: list[Activity] = butler._activities
    stack.append(activity)
    try:
        yield activity
    finally:
        stack.remove(activity)
        activity.finish()
        if activity.outputs:
            try:
                butler.store.put(f"{ACTIVITY_PREFIX}{activity.id}.json", json.dumps(activity.to_json()).encode())
            except ObjButlerError as exc:
                warnings.warn(f"activity {activity.name} ({activity.id}) finished but its end time could not be "
                              f"recorded in {butler.uri}: {exc}", ProvenanceWarning, stacklevel=3)


def current_activity(butler: Butler) -> Activity | None:
    """The innermost open ``butler.activity`` block's activity, if any."""
    stack: list[Activity] = butler._activities
    return stack[-1] if stack else None
