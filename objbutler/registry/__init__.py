"""The registry: a manifest of datasets kept inside the repository's own bucket."""

from __future__ import annotations

from objbutler.registry.records import DatasetRef, DatasetType
from objbutler.registry.registry import Registry, finish_folds

__all__ = ["DatasetRef", "DatasetType", "Registry", "finish_folds"]
