"""objbutler: an object-store-native dataset library for astronomy.

>>> from objbutler import Butler, Box
>>> butler = Butler.create("memory://doctest")
>>> ref = butler.put({"metric": "PA1", "value": 5.1}, "metric", {"visit": 1}, run="run1")
>>> butler.get(ref)["value"]
5.1

The names below are imported on first use, so light entry points (the server
scripts, ``objbutler --help``) do not pay for numpy and astropy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from objbutler.version import __version__

_EXPORTS = {
    "Butler": "objbutler.butler",
    "Box": "objbutler.cutouts",
    "Cutout": "objbutler.cutouts",
    "DatasetRef": "objbutler.registry.records",
    "AlreadyExistsError": "objbutler.errors",
    "ConflictError": "objbutler.errors",
    "FormatError": "objbutler.errors",
    "InvalidCutoutError": "objbutler.errors",
    "NotFoundError": "objbutler.errors",
    "NotSupportedError": "objbutler.errors",
    "OfflineError": "objbutler.errors",
    "ObjButlerError": "objbutler.errors",
    "Activity": "objbutler.provenance",
    "RepoPutResult": "objbutler.multi",
    "put_many_repos": "objbutler.multi",
}

__all__ = [
    "Activity",
    "AlreadyExistsError",
    "Box",
    "Butler",
    "ConflictError",
    "Cutout",
    "DatasetRef",
    "FormatError",
    "InvalidCutoutError",
    "NotFoundError",
    "NotSupportedError",
    "ObjButlerError",
    "OfflineError",
    "RepoPutResult",
    "__version__",
    "put_many_repos",
]

if TYPE_CHECKING:
    from objbutler.butler import Butler
    from objbutler.cutouts import Box, Cutout
    from objbutler.errors import (
        AlreadyExistsError,
        ConflictError,
        FormatError,
        InvalidCutoutError,
        NotFoundError,
        NotSupportedError,
        ObjButlerError,
        OfflineError,
    )
    from objbutler.multi import RepoPutResult, put_many_repos
    from objbutler.provenance import Activity
    from objbutler.registry.records import DatasetRef


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'objbutler' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
