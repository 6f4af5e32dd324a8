"""objbutler: an object-store-native dataset library for astronomy.

>>> from objbutler import Butler, Box
>>> butler = Butler.create("memory://doctest")
>>> ref = butler.put({"metric": "PA1", "value": 5.1}, "metric", {"visit": 1}, run="run1")
>>> butler.get(ref)["value"]
5.1
"""

from __future__ import annotations

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
)
from objbutler.registry.records import DatasetRef

__version__ = "0.1.0"

__all__ = [
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
    "__version__",
]
