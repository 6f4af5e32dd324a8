"""What a put records: the provenance dict stored in a dataset's registry entry (inputs, derived_from, activity)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from objbutler.provenance.activity import Activity
from objbutler.registry.records import DatasetRef

__all__ = ["provenance_record"]


def _links(refs: Iterable[DatasetRef]) -> list[dict[str, Any]]:
    return [
        {"id": r.id, "repository": r.repository, "dataset_type": r.dataset_type, "data_id": r.data_id, "run": r.run}
        for r in refs
    ]


def provenance_record(
    inputs: Sequence[DatasetRef] | None,
    derived_from: Sequence[DatasetRef] | None,
    activity: Activity | None = None,
) -> dict[str, Any] | None:
    """The provenance dict a put stores in the registry entry (None when there is nothing to record).

    Parameters
    ----------
    inputs : sequence of DatasetRef, optional
        Every contributing input.
    derived_from : sequence of DatasetRef, optional
        The inputs the output was derived from.
    activity : Activity, optional
        The step that made it.

    Raises
    ------
    ValueError
        If ``derived_from`` holds a dataset that is not in ``inputs``.
    """
    if not inputs and not derived_from and activity is None:
        return None
    inputs = list(inputs or [])
    derived = list(derived_from or [])
    input_ids = {ref.id for ref in inputs}
    stray = [ref.id for ref in derived if ref.id not in input_ids]
    if stray:
        raise ValueError(f"derived_from must be a subset of inputs; not in inputs: {stray}")
    record: dict[str, Any] = {"inputs": _links(inputs), "derived_from": _links(derived)}
    if activity is not None:
        record["activity"] = activity.to_json()
    return record
