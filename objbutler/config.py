"""A repository's ``objbutler.json``: its fields, their defaults and their validation.

The file is written once, when the repository is created, and read by every
Butler that opens it. Every field is checked on both sides, so a bad value
(``checkpoint_interval: 0``, ``"abc"``, a negative settle time) is refused with
a :class:`~objbutler.errors.ConfigError` naming the field, on create and on
open, instead of failing later inside a put whose commit already landed::

    {"format": "objbutler-repository", "version": 1, "created": "...",
     "commit_protocol": "sequenced", "default_format": "fits",
     "checkpoint_interval": 100, "settle_seconds": 0.5, "timestamp_resolution": 0.0,
     "log_shards": 256}

``log_shards`` is the number of log shards of a ``claimed`` repository (0, or
absent, for the other protocols).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from objbutler.defaults import DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_SETTLE_SECONDS, DEFAULT_TIMESTAMP_RESOLUTION
from objbutler.errors import ConfigError
from objbutler.registry.log import MAX_SHARDS
from objbutler.registry.registry import PROTOCOLS

__all__ = ["CONFIG_FORMAT", "CONFIG_KEY", "IMAGE_FORMATS", "RepositoryConfig", "parse_config"]

CONFIG_KEY = "objbutler.json"
CONFIG_FORMAT = "objbutler-repository"
CONFIG_VERSION = 1
IMAGE_FORMATS = ("fits", "zarr")
MAX_SETTLE_SECONDS = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class RepositoryConfig:
    """The validated settings of one repository.

    Parameters
    ----------
    commit_protocol : {"claimed", "sequenced", "timestamped"}
        How commits are ordered (see :mod:`objbutler.registry.registry`).
    default_format : {"fits", "zarr"}
        Format of image datasets when ``put`` is not told.
    checkpoint_interval : int
        Commits between registry checkpoints (>= 1).
    settle_seconds : float
        Timestamped protocol: wait before verifying a commit (0 to 60).
    timestamp_resolution : float
        Timestamped protocol: the store's timestamp granularity in seconds, as
        measured when the repository was created (0 to 60).
    created : str
        When the repository was created (UTC, ISO-8601).
    log_shards : int
        Claimed protocol: how many log shards (1 to 1000); 0 for the others.

    Raises
    ------
    ConfigError
        If a field is out of range; the message names it.
    """

    commit_protocol: str
    default_format: str = "fits"
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL
    settle_seconds: float = DEFAULT_SETTLE_SECONDS
    timestamp_resolution: float = DEFAULT_TIMESTAMP_RESOLUTION
    created: str = ""
    log_shards: int = 0

    def __post_init__(self) -> None:
        if self.commit_protocol not in PROTOCOLS:
            raise ConfigError(f"commit_protocol must be one of {list(PROTOCOLS)}, got {self.commit_protocol!r}")
        if self.default_format not in IMAGE_FORMATS:
            raise ConfigError(f"default_format must be one of {list(IMAGE_FORMATS)}, got {self.default_format!r}")
        if not isinstance(self.checkpoint_interval, int) or isinstance(self.checkpoint_interval, bool) \
                or self.checkpoint_interval < 1:
            raise ConfigError(f"checkpoint_interval must be an integer >= 1, got {self.checkpoint_interval!r}")
        for name in ("settle_seconds", "timestamp_resolution"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) \
                    or not 0 <= value <= MAX_SETTLE_SECONDS:
                raise ConfigError(f"{name} must be a number of seconds from 0 to {MAX_SETTLE_SECONDS:g}, got {value!r}")
        if not isinstance(self.log_shards, int) or isinstance(self.log_shards, bool) \
                or not (1 if self.commit_protocol == "claimed" else 0) <= self.log_shards <= MAX_SHARDS:
            raise ConfigError(f"log_shards must be an integer from 1 to {MAX_SHARDS} for the claimed protocol "
                              f"(0 otherwise), got {self.log_shards!r}")
        if not isinstance(self.created, str):
            raise ConfigError(f"created must be a string, got {self.created!r}")

    def to_json(self) -> bytes:
        """The ``objbutler.json`` document."""
        document = {"format": CONFIG_FORMAT, "version": CONFIG_VERSION, **dataclasses.asdict(self)}
        return json.dumps(document, indent=2).encode()

    def __getitem__(self, name: str) -> Any:
        """``config["commit_protocol"]``: the mapping access older callers use."""
        if name not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(name)
        return getattr(self, name)


def parse_config(raw: bytes, uri: str) -> RepositoryConfig:
    """Read and validate an ``objbutler.json``.

    Parameters
    ----------
    raw : bytes
        The stored document.
    uri : str
        The repository, for messages.

    Returns
    -------
    RepositoryConfig
        The settings.

    Raises
    ------
    ConfigError
        If the document is not JSON, not an objbutler repository config, of an
        unknown version, or has a field out of range (the message names it).
    """
    where = f"{uri}/{CONFIG_KEY}"
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where} is corrupt: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != CONFIG_FORMAT:
        raise ConfigError(f"{where} is not an objbutler repository config")
    if document.get("version") != CONFIG_VERSION:
        raise ConfigError(f"{where} has unsupported version {document.get('version')!r}")
    known = {f.name for f in dataclasses.fields(RepositoryConfig)}
    fields = {name: value for name, value in document.items() if name in known}
    if "commit_protocol" not in fields:
        raise ConfigError(f"{where} has no commit_protocol")
    try:
        return RepositoryConfig(**fields)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
