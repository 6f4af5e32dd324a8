"""The registry's view at one log position: a checkpoint table plus the commits after it.

Commits are applied in log order and the *first* commit that claims a
``(dataset type, run, data ID)`` wins; a later claim is ignored by every
reader alike (that is what makes the Swift protocol agree on one winner).
A commit that would register a dataset type or dimension kind different from
the one already registered is ignored in the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from objbutler.errors import ConflictError, InvalidKeyError, NotFoundError
from objbutler.registry.checkpoint import DIM_PREFIX, Checkpoint, refs_to_table, rows_to_refs
from objbutler.registry.commits import Commit
from objbutler.registry.records import DatasetRef, DatasetType, canonical_data_id

__all__ = ["RegistryState", "check_condition_kind", "commit_problem"]

log = logging.getLogger(__name__)

UniqueKey = tuple[str, str, str]
_SMALL_LOOKUP = 16
_SCANS_BEFORE_INDEX = 4
_SEPARATOR = "\x1f"  # cannot occur in a type name, a run or canonical JSON of a validated data ID


class RegistryState:
    """Records visible at one position of the log.

    Parameters
    ----------
    checkpoint : Checkpoint
        The snapshot to start from.
    repository : str
        URI stamped on refs.
    """

    def __init__(self, checkpoint: Checkpoint, repository: str) -> None:
        self.checkpoint = checkpoint
        self.repository = repository
        self.position = checkpoint.position
        self.dataset_types: dict[str, DatasetType] = dict(checkpoint.dataset_types)
        self.dimensions: dict[str, str] = dict(checkpoint.dimensions)
        self.tail: dict[UniqueKey, DatasetRef] = {}
        self.tail_commits = 0
        self.winning_commit: dict[str, str] = {}  # dataset id -> commit id, for the tail
        self.sky_overlay: dict[str, dict[str, Any]] = {}  # dataset id -> sky record annotated on a checkpoint row
        self.annotation_commits: set[str] = set()  # ids of applied commits that carry annotations
        self.shadowed: list[DatasetRef] = []  # datasets of a data ID an earlier commit holds (ignored; fsck tells)
        self._tail_ids: dict[str, UniqueKey] = {}
        self._joined: pa.ChunkedArray | None = None
        self._key_set: set[str] | None = None
        self._small_lookups = 0

    # -- applying commits ------------------------------------------------------

    def _joined_keys(self) -> pa.ChunkedArray:
        """``type \x1f run \x1f data ID`` per checkpoint row, computed once per checkpoint (vectorized)."""
        if self._joined is None:
            table = self.checkpoint.table
            self._joined = pc.binary_join_element_wise(
                table["dataset_type"], table["run"], table["data_id"], _SEPARATOR
            )
        return self._joined

    def checkpoint_members(self, uniques: Iterable[UniqueKey]) -> set[UniqueKey]:
        """Which of these (type, run, data ID) keys the checkpoint holds: one vectorized lookup."""
        wanted = {_SEPARATOR.join(unique): unique for unique in uniques}
        if not wanted or self.checkpoint.table.num_rows == 0:
            return set()
        if len(wanted) <= _SMALL_LOOKUP:
            # A writer putting one dataset after another: after a few scans, a hash set of the
            # checkpoint's keys (built once, ~0.3 s per million rows) makes every check O(1).
            self._small_lookups += 1
            if self._key_set is None and self._small_lookups > _SCANS_BEFORE_INDEX:
                self._key_set = set(self._joined_keys().to_pylist())
            if self._key_set is not None:
                return {unique for text, unique in wanted.items() if text in self._key_set}
        joined = self._joined_keys()
        found = pc.filter(joined, pc.is_in(joined, value_set=pa.array(list(wanted), pa.string())))
        return {wanted[text] for text in found.to_pylist()}

    def _checkpoint_id(self, unique: UniqueKey) -> str | None:
        """The id of the checkpoint row holding ``unique`` (a scan: only for the rare duplicate)."""
        rows = self.checkpoint.table.filter(pc.equal(self._joined_keys(), _SEPARATOR.join(unique)))
        return str(rows["id"][0].as_py()) if rows.num_rows else None

    def find_unique(self, unique: UniqueKey) -> DatasetRef | None:
        """The committed dataset with this (type, run, canonical data ID), if any."""
        if unique in self.tail:
            return self.tail[unique]
        if not self.checkpoint_members([unique]):
            return None
        table = self.checkpoint.table
        rows = table.filter(pc.equal(self._joined_keys(), _SEPARATOR.join(unique)))
        return self._checkpoint_refs(rows)[0]

    def check_types(self, types: Iterable[DatasetType], dimensions: Mapping[str, str]) -> None:
        """Raise ConflictError if a type or a dimension kind disagrees with the registered one."""
        for dataset_type in types:
            known = self.dataset_types.get(dataset_type.name)
            if known is not None:
                known.check_compatible(dataset_type)
        for name, kind in dimensions.items():
            known_kind = self.dimensions.get(name)
            if known_kind is not None and known_kind != kind:
                raise ConflictError(
                    f"data ID key {name!r} holds {known_kind} values in this repository; this put gives a {kind}"
                )

    def apply(self, commit: Commit, position: str, in_checkpoint: set[UniqueKey] | None = None) -> list[DatasetRef]:
        """Apply one commit in log order; return the datasets it won (losers are ignored).

        ``in_checkpoint`` may carry the result of :meth:`checkpoint_members` for a batch of
        commits, so that applying a long tail costs one vectorized lookup, not one per dataset.
        """
        self.position = position
        self.tail_commits += 1
        problem = commit_problem(commit)
        if problem is not None:
            log.warning("ignoring commit %s at %s: %s", commit.commit_id, position, problem)
            return []
        try:
            self.check_types(commit.dataset_types, commit.dimensions)
        except ConflictError:
            return []
        for dataset_type in commit.dataset_types:
            self.dataset_types.setdefault(dataset_type.name, dataset_type)
        self.dimensions.update(commit.dimensions)
        if in_checkpoint is None:
            in_checkpoint = self.checkpoint_members(ref.unique_key for ref in commit.datasets)
        won = []
        for ref in commit.datasets:
            unique = ref.unique_key
            if unique in self.tail or unique in in_checkpoint:
                if ref.id not in self._tail_ids and (unique in self.tail or self._checkpoint_id(unique) != ref.id):
                    self.shadowed.append(ref)  # another dataset holds the data ID (a second copy of one is not)
                continue
            self.tail[unique] = ref
            self._tail_ids[ref.id] = unique
            self.winning_commit[ref.id] = commit.commit_id
            won.append(ref)
        if commit.annotations:
            self._annotate(commit)
        return won

    def _annotate(self, commit: Commit) -> None:
        """Apply a commit's annotations: the first sky record given to a dataset without one is kept."""
        self.annotation_commits.add(commit.commit_id)
        for note in commit.annotations:
            dataset_id, sky = note["id"], note.get("sky")
            if sky is None:
                continue
            unique = self._tail_ids.get(dataset_id)
            if unique is not None:
                ref = self.tail[unique]
                if ref.sky is None:
                    self.tail[unique] = dataclasses.replace(ref, sky=sky)
            else:
                self.sky_overlay.setdefault(dataset_id, sky)  # takes effect on a checkpoint row without a sky

    def _checkpoint_refs(self, table: pa.Table) -> list[DatasetRef]:
        """Refs of checkpoint rows, with any annotated sky record."""
        refs = rows_to_refs(table, self.repository)
        if self.sky_overlay:
            refs = [dataclasses.replace(r, sky=self.sky_overlay[r.id]) if r.sky is None and r.id in self.sky_overlay
                    else r for r in refs]
        return refs

    def apply_many(self, commits: Sequence[tuple[str, Commit]]) -> None:
        """Apply ``(position, commit)`` pairs in order with one checkpoint lookup for all of them."""
        present = self.checkpoint_members(ref.unique_key for _, commit in commits for ref in commit.datasets)
        for position, commit in commits:
            self.apply(commit, position, present)

    # -- reading ---------------------------------------------------------------

    def check_query(self, dataset_type: str | None, where: Mapping[str, Any]) -> None:
        """Refuse a query that could only match nothing by mistake (see :meth:`query`)."""
        if dataset_type is not None and dataset_type not in self.dataset_types:
            raise NotFoundError(
                f"unknown dataset type {dataset_type!r}; registered: {sorted(self.dataset_types) or 'none yet'}"
            )
        allowed = self.dataset_types[dataset_type].dimensions if dataset_type is not None else tuple(self.dimensions)
        for key, value in where.items():
            if key not in allowed:
                owner = f"{dataset_type} has" if dataset_type is not None else "the registered data IDs have"
                raise InvalidKeyError(f"unknown data ID key {key!r} in where: {owner} keys {sorted(allowed)}")
            check_condition_kind(key, value, self.dimensions[key])

    def __len__(self) -> int:
        return self.checkpoint.table.num_rows + len(self.tail)

    def to_checkpoint(self) -> Checkpoint:
        """Fold the tail into a new checkpoint at the current position."""
        tail = refs_to_table(self.tail.values(), self.dimensions)
        table = self.checkpoint.table
        if self.sky_overlay:  # annotated rows are rewritten with their sky record (and move to the end)
            ids = pa.array(list(self.sky_overlay), pa.string())
            patch = pc.fill_null(pc.and_(pc.is_in(table["id"], value_set=ids), pc.is_null(table["sky"])), False)
            if pc.any(patch).as_py():
                patched = refs_to_table(self._checkpoint_refs(table.filter(patch)), self.dimensions)
                table = pa.concat_tables([table.filter(pc.invert(patch)), patched], promote_options="default")
        table = pa.concat_tables([table, tail], promote_options="default")
        return Checkpoint(self.position, table, dict(self.dataset_types), dict(self.dimensions))

    def all_refs(self) -> list[DatasetRef]:
        """Every visible dataset (checkpoint rows, then the tail in log order)."""
        return self._checkpoint_refs(self.checkpoint.table) + list(self.tail.values())

    def query(
        self,
        dataset_type: str | None = None,
        where: Mapping[str, Any] | None = None,
        run: str | None = None,
        dataset_id: str | None = None,
    ) -> list[DatasetRef]:
        """Datasets matching every condition given.

        Parameters
        ----------
        dataset_type : str, optional
            Only this type.
        where : mapping, optional
            Data ID conditions: a value means equality, a list/tuple/set
            membership, a ``range`` a half-open interval.
        run : str, optional
            Only this run.
        dataset_id : str, optional
            Only the dataset with this UUID.

        Returns
        -------
        list of DatasetRef
            Checkpoint matches first, then tail matches in log order.

        Raises
        ------
        NotFoundError
            For a dataset type that is not registered (the message lists those that are).
        InvalidKeyError
            For a ``where`` key that is not a registered data ID key (or not one of
            the dataset type's), or a value of the wrong kind for its key.
        """
        where = {key: _normalized(value) for key, value in (where or {}).items()}
        self.check_query(dataset_type, where)
        table = self.checkpoint.table
        if table.num_rows:
            mask = _table_mask(table, dataset_type, where, run, dataset_id)
            matched = self._checkpoint_refs(table.filter(mask) if mask is not None else table)
        else:
            matched = []
        for ref in self.tail.values():
            if _ref_matches(ref, dataset_type, where, run, dataset_id):
                matched.append(ref)
        return matched


    def select(self, dataset_type: str | None = None, where: Mapping[str, Any] | None = None,
               run: str | None = None) -> tuple[np.ndarray, list[DatasetRef]]:
        """What :meth:`query` matches, as a boolean mask over the checkpoint rows and the matching tail refs.

        For callers that keep their own per-row arrays (the sky index) and should not build refs.
        """
        where = {key: _normalized(value) for key, value in (where or {}).items()}
        self.check_query(dataset_type, where)
        table = self.checkpoint.table
        mask = _table_mask(table, dataset_type, where, run, None) if table.num_rows else None
        rows = np.ones(table.num_rows, dtype=bool) if mask is None else mask.to_numpy()
        tail = [ref for ref in self.tail.values() if _ref_matches(ref, dataset_type, where, run, None)]
        return np.asarray(rows, dtype=bool), tail


def commit_problem(commit: Commit) -> str | None:
    """Why a commit is not self-consistent (so every reader ignores it alike), or None.

    A commit written by objbutler always passes; one crafted or corrupted by
    hand could otherwise put a string into an int dimension or a dataset under
    keys its type does not have, and break every later checkpoint.
    """
    types = {t.name: t for t in commit.dataset_types}
    for name, kind in commit.dimensions.items():
        if kind not in ("int", "str"):
            return f"data ID key {name!r} has unknown kind {kind!r}"
    for ref in commit.datasets:
        dataset_type = types.get(ref.dataset_type)
        if dataset_type is None:
            return f"dataset {ref.id} has type {ref.dataset_type!r}, which the commit does not declare"
        if tuple(sorted(ref.data_id)) != tuple(sorted(dataset_type.dimensions)):
            return f"dataset {ref.id} has data ID keys {sorted(ref.data_id)}, its type {list(dataset_type.dimensions)}"
        for key, value in ref.data_id.items():
            declared = commit.dimensions.get(key)
            actual = "str" if isinstance(value, str) else "int" if type(value) is int else None
            if declared is None or actual != declared:
                return f"dataset {ref.id} has {key}={value!r}, not of the declared kind {declared!r}"
    for note in commit.annotations:
        if not isinstance(note, dict) or not isinstance(note.get("id"), str) or not isinstance(note.get("sky"), dict):
            return f"annotation {str(note)[:80]!r} is not {{'id': str, 'sky': dict}}"
    return None


def check_condition_kind(key: str, value: Any, kind: str) -> None:
    """Raise InvalidKeyError unless ``value`` is a condition on a ``kind`` ("int"/"str") key.

    A condition is a value, a list/tuple/set of values, or (ints only) a
    ``range``; each value must be of the key's kind (``"3"`` does not match 3).
    """
    def wrong(got: Any) -> InvalidKeyError:
        return InvalidKeyError(
            f"data ID key {key!r} holds {kind} values; the condition {value!r} has {type(got).__name__} {got!r}"
        )

    condition, operand = _condition_values(value)
    if condition == "range":
        if kind != "int":
            raise InvalidKeyError(f"data ID key {key!r} holds str values: a range cannot select them")
        return
    for item in operand if condition == "in" else [operand]:
        if (kind == "int" and type(item) is not int) or (kind == "str" and not isinstance(item, str)):
            raise wrong(item)


def _normalized(value: Any) -> Any:
    """numpy integers and strings as Python ones, in a value or a list/tuple/set of values."""
    if isinstance(value, list | tuple | set | frozenset):
        return [_normalized(item) for item in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.str_):
        return str(value)
    return value


def _condition_values(value: Any) -> tuple[str, Any]:
    if isinstance(value, range):
        if value.step != 1:
            raise InvalidKeyError("a range in 'where' must have step 1")
        return "range", value
    if isinstance(value, list | tuple | set | frozenset):
        return "in", list(value)
    if not isinstance(value, int | str) or isinstance(value, bool):
        raise InvalidKeyError(f"data ID conditions take ints, strings, lists or ranges, got {value!r}")
    return "eq", value


def _column_condition(column: pa.ChunkedArray, value: Any) -> pa.ChunkedArray:
    kind, operand = _condition_values(value)
    if kind == "range":
        return pc.and_(pc.greater_equal(column, operand.start), pc.less(column, operand.stop))
    if kind == "in":
        values = [v for v in operand if isinstance(v, int) == pa.types.is_integer(column.type)]
        return pc.is_in(column, value_set=pa.array(values, type=column.type))
    if isinstance(operand, int) != pa.types.is_integer(column.type):
        return pc.equal(column, pa.scalar(None, type=column.type))
    return pc.equal(column, operand)


def _table_mask(
    table: pa.Table, dataset_type: str | None, where: dict[str, Any], run: str | None, dataset_id: str | None
) -> pa.ChunkedArray | None:
    conditions: list[Any] = []
    if dataset_type is not None:
        conditions.append(pc.equal(table["dataset_type"], dataset_type))
    if run is not None:
        conditions.append(pc.equal(table["run"], run))
    if dataset_id is not None:
        conditions.append(pc.equal(table["id"], dataset_id))
    for key, value in where.items():
        name = f"{DIM_PREFIX}{key}"
        if name not in table.column_names:
            return pc.equal(table["id"], "")  # nothing in the checkpoint uses this key
        conditions.append(_column_condition(table[name], value))
    if not conditions:
        return None
    mask = conditions[0]
    for condition in conditions[1:]:
        mask = pc.and_(mask, condition)
    return pc.fill_null(mask, False)


def _value_matches(actual: Any, value: Any) -> bool:
    kind, operand = _condition_values(value)
    if kind == "range":
        return isinstance(actual, int) and actual in operand
    if kind == "in":
        return any(type(actual) is type(v) and actual == v for v in operand)
    return type(actual) is type(operand) and actual == operand


def _ref_matches(
    ref: DatasetRef, dataset_type: str | None, where: dict[str, Any], run: str | None, dataset_id: str | None
) -> bool:
    if dataset_type is not None and ref.dataset_type != dataset_type:
        return False
    if run is not None and ref.run != run:
        return False
    if dataset_id is not None and ref.id != dataset_id:
        return False
    return all(key in ref.data_id and _value_matches(ref.data_id[key], value) for key, value in where.items())


def unique_key(dataset_type: str, run: str, data_id: Mapping[str, Any]) -> UniqueKey:
    """``(type, run, canonical data ID)`` for a validated data ID."""
    return (dataset_type, run, canonical_data_id(dict(data_id)))
