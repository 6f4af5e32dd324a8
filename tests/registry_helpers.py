"""Helpers of the registry's randomized and adversarial tests."""

from __future__ import annotations

import contextlib
import itertools
import json
from typing import Any

from objbutler.butler import Butler
from objbutler.errors import NotFoundError
from objbutler.registry import DatasetRef
from objbutler.registry.log import MARKER_PREFIX, decode_vector
from objbutler.stores import Store


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


def _announced(store: Store, shards: int) -> list[tuple[list[int], list[int]]]:
    """``(position, deletes)`` of every live marker (one a fold deletes meanwhile is left out)."""
    bodies = []
    for meta in store.list(MARKER_PREFIX):
        with contextlib.suppress(NotFoundError):
            bodies.append(json.loads(store.get(meta.key)))
    return [(decode_vector(body["position"], shards), decode_vector(body.get("deletes"), shards)) for body in bodies]


def assert_deletions_are_one_chain(store: Store, shards: int) -> None:
    """What live markers announce deleting is ordered shard by shard, and one live marker covers all of it."""
    announced = _announced(store, shards)
    for (_, a), (_, b) in itertools.combinations(announced, 2):
        ordered = all(x <= y for x, y in zip(a, b, strict=True)) or all(x >= y for x, y in zip(a, b, strict=True))
        assert ordered, f"two markers announce deleting through unordered vectors {a} and {b}"
    deleted = [max(column, default=0) for column in zip(*(d for _, d in announced), strict=True)] or [0] * shards
    assert any(all(p >= d for p, d in zip(position, deleted, strict=True)) for position, _ in announced) \
        or not any(deleted), f"no live marker covers the deletions {deleted}: {announced}"
