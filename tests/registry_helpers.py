"""Helpers of the registry's randomized and adversarial tests."""

from __future__ import annotations

from typing import Any

from objbutler.butler import Butler
from objbutler.errors import NotFoundError
from objbutler.registry import DatasetRef


def committed(butler: Butler, kind: str, data_id: dict[str, Any], run: str) -> list[DatasetRef]:
    """The datasets a fresh view holds for ``(kind, data_id, run)``.

    A put that failed may have been the first of its dataset type or of a data ID key; then nothing of
    it is registered, and ``query`` refuses the type or key (a query that could only match nothing by
    mistake): that is nothing committed too.
    """
    try:
        return butler.query(kind, where=data_id, run=run)
    except NotFoundError:
        return []
