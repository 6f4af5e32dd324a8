"""A gateway that stamps whole seconds: two writers in the same second must not both succeed.

Issue 12: on an S3 gateway with whole-second ``LastModified`` (opened with
``allow_no_atomic_create=True``), writers 0.8 s apart both returned success in 6 of 12 trials and
the earlier dataset vanished. ``Butler.create`` now measures the store's timestamp resolution and
the timestamped protocol waits it out before verifying.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from objbutler import Butler
from objbutler.errors import ConflictError
from objbutler.maintenance import fsck
from objbutler.stores import ObjectMeta, open_store, probe_timestamp_resolution
from objbutler.testing.faults import IgnoresConditionsStore


class WholeSecondStore(IgnoresConditionsStore):
    """Claims an atomic create it does not enforce, and lists whole-second timestamps (as some gateways do)."""

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        for meta in self.inner.list(prefix, start_after):
            stamp = meta.last_modified
            yield dataclasses.replace(meta, last_modified=stamp.replace(microsecond=0) if stamp else None)


def test_the_probe_measures_whole_seconds(tmp_path: Path) -> None:
    assert probe_timestamp_resolution(WholeSecondStore(open_store(str(tmp_path / "a")))) == 1.0
    assert probe_timestamp_resolution(open_store(str(tmp_path / "b"))) < 1.0


class SlowCommitWrites(WholeSecondStore):
    """A commit upload that takes a while to complete (a slow or congested link): stamped when it completes."""

    def __init__(self, inner: Any, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay

    def put(self, key: str, data: bytes) -> ObjectMeta:
        if key.startswith("manifest/log/"):
            time.sleep(self.delay)
        return self.inner.put(key, data)


def _put_in_the_same_second(uri: str, store: Any, upload_seconds: float) -> dict[str, Any]:
    """Writers A and B check the same free data ID together; B's commit upload takes ``upload_seconds``.

    So A's commit lands just after a second boundary and B's ``upload_seconds`` later, in the same
    second, and neither writer saw the other's commit when it checked.
    """
    now = time.time()
    time.sleep(1.0 - (now - int(now)) + 0.02)  # start just after a second boundary
    outcomes: dict[str, Any] = {}
    stores = {"A": store, "B": SlowCommitWrites(store.inner, upload_seconds)}

    def writer(name: str) -> None:
        butler = Butler(uri, store=stores[name])
        butler.registry.settle_seconds = 0.1
        try:
            outcomes[name] = butler.put({"writer": name}, "metric", {"visit": 1}, run="r")
        except ConflictError as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=writer, args=(name,)) for name in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


@pytest.mark.parametrize("trial", range(3))
def test_writers_in_the_same_second_agree_on_one_winner(tmp_path: Path, trial: int) -> None:
    uri = str(tmp_path / "repo")
    store = WholeSecondStore(open_store(uri))
    created = Butler.create(uri, store=store, allow_no_atomic_create=True)
    assert created.config.commit_protocol == "timestamped"
    assert created.config.timestamp_resolution == 1.0  # measured at create, kept in objbutler.json
    outcomes = _put_in_the_same_second(uri, store, 0.8)
    winners = [name for name, outcome in outcomes.items() if not isinstance(outcome, Exception)]
    assert len(winners) == 1, f"both writers returned success: {outcomes}"
    reader = Butler(uri, store=store)
    [ref] = reader.query("metric")
    assert ref.id == outcomes[winners[0]].id, "the writer that returned success is not the one readers see"
    assert reader.get(ref) == {"writer": winners[0]}
    assert fsck(reader).ok
