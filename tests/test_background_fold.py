"""Claimed repositories fold in the background: a put returns once its commit has landed.

A fold reads every commit since the newest checkpoint. Inside a put it set that put's latency (seconds, with
hundreds of commits pending) and, with many writer processes, the run's throughput. These tests hold a fold
in the middle and show that puts go on, that the fold still finishes (also when the program ends first), and
that what it writes is what a fold inside a put would have written.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from objbutler import Butler
from objbutler.registry import finish_folds
from objbutler.registry.log import LEASE_PREFIX, LOG_PREFIX, MARKER_PREFIX, ShardedLog
from objbutler.stores import StoreWrapper, open_store
from objbutler.stores.local import LocalStore

INTERVAL = 4


CHECKPOINTS = "manifest/checkpoints/"


class HeldLog(StoreWrapper):
    """Holds every listing of the log made by a background fold, once armed, until released (or 30 s pass)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.armed = False
        self.release = threading.Event()
        self.held = 0  # listings waiting right now
        self.entered = threading.Event()  # a listing is being held

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[Any]:
        if (self.armed and prefix == LOG_PREFIX and not self.release.is_set()
                and threading.current_thread().name.startswith("objbutler-fold")):
            self.held += 1
            self.entered.set()
            try:
                self.release.wait(30)
            finally:
                self.held -= 1
        return self.inner.list(prefix, start_after)


def _keys(root: Path, prefix: str) -> list[str]:
    return [meta.key for meta in LocalStore(str(root)).list(prefix)]


def _checkpoint_totals(root: Path) -> list[int]:
    return sorted(int(Path(key).stem) for key in _keys(root, CHECKPOINTS))


def _held_writer(root: Path) -> tuple[Butler, HeldLog]:
    """A new repository and a writer whose background folds' listings can be held."""
    Butler.create(str(root), checkpoint_interval=INTERVAL, log_shards=2)
    held = HeldLog(LocalStore(str(root)))
    writer = Butler(str(root), store=held)
    writer.registry.compaction_grace = 0.0
    return writer, held


def test_puts_go_on_while_a_fold_is_held_and_the_fold_then_finishes(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    writer, held = _held_writer(root)
    ids = [writer.put({"n": n}, "metric", {"visit": n}, run="r").id for n in range(INTERVAL)]
    assert finish_folds(timeout=60)
    held.armed = True
    writer.registry._commits_since_check = INTERVAL - 1  # the next put makes a fold due
    ids += [writer.put({"n": n}, "metric", {"visit": n}, run="r").id for n in range(INTERVAL, 3 * INTERVAL)]
    # Every put returned while the fold they started is held in its first listing.
    assert held.entered.wait(10) and held.held == 1, "no fold was running in the background while the puts returned"
    assert {ref.id for ref in Butler(str(root)).query()} == set(ids)
    held.release.set()
    assert finish_folds(timeout=60)
    assert _checkpoint_totals(root)[-1] >= INTERVAL + 1, _checkpoint_totals(root)
    assert _keys(root, LEASE_PREFIX) == [], "the fold left its lease behind"
    assert _keys(root, MARKER_PREFIX), "the fold wrote no marker"
    assert {ref.id for ref in Butler(str(root)).query()} == set(ids)
    assert {ref.id for ref in writer.query()} == set(ids)


def test_a_single_writers_folds_do_not_read_back_its_own_commits(tmp_path: Path) -> None:
    """The writer hands its commits to its folds: one writer's put stays data + claim + commit, no GET."""

    class CommitReads(StoreWrapper):
        def __init__(self, inner: Any) -> None:
            super().__init__(inner)
            self.reads = 0

        def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
            self.reads += ShardedLog.parse(key) is not None
            return self.inner.get(key, *args, **kwargs)

        def get_many(self, keys: Any) -> Any:
            return [self.get(key) for key in keys]

    root = tmp_path / "repo"
    Butler.create(str(root), checkpoint_interval=INTERVAL, log_shards=2)
    counting = CommitReads(LocalStore(str(root)))
    writer = Butler(str(root), store=counting)
    ids = [writer.put({"n": n}, "metric", {"visit": n}, run="r").id for n in range(6 * INTERVAL)]
    assert finish_folds(timeout=60)
    assert _checkpoint_totals(root)[-1] >= 5 * INTERVAL
    assert counting.reads == 0
    assert len(writer.registry._handed) <= INTERVAL, "handed commits the folds hold are not forgotten"
    assert {ref.id for ref in Butler(str(root)).query()} == set(ids)


def test_a_fold_that_fails_in_the_background_leaves_the_puts_standing(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    class BrokenCheckpoints(StoreWrapper):
        def put_if_absent(self, key: str, data: bytes) -> Any:
            if key.startswith(CHECKPOINTS):
                raise OSError("the disk is full")
            return self.inner.put_if_absent(key, data)

    root = tmp_path / "repo"
    Butler.create(str(root), checkpoint_interval=INTERVAL, log_shards=2)
    writer = Butler(str(root), store=BrokenCheckpoints(LocalStore(str(root))))
    ids = [writer.put({"n": n}, "metric", {"visit": n}, run="r").id for n in range(4 * INTERVAL)]
    assert finish_folds(timeout=60)
    assert _checkpoint_totals(root) == [0]
    assert "background fold failed" in caplog.text
    assert {ref.id for ref in Butler(str(root)).query()} == set(ids)
    fixed = Butler(str(root))
    fixed.registry.write_checkpoint()
    assert _checkpoint_totals(root)[-1] == 4 * INTERVAL


SLOW_FOLDS = """
import sys, time
from objbutler.registry import Registry
fold = Registry._maybe_checkpoint_sharded
def slow(self):
    time.sleep(1.0)  # the program's last put returns long before its fold ends
    fold(self)
Registry._maybe_checkpoint_sharded = slow
"""


@pytest.mark.parametrize("how", ["library", "library on S3", "command"])
def test_a_program_that_ends_during_a_fold_finishes_it_first(tmp_path: Path, how: str,
                                                             request: pytest.FixtureRequest) -> None:
    """On S3 the fold reads commits on the store's thread pool, which refuses work once the interpreter is
    ending: the fold then reads them on its own thread (it was lost before)."""
    root = tmp_path / "repo"
    uri, options = str(root), {}
    if how == "library on S3":
        backend = request.getfixturevalue("localstack_backend")
        uri, options = backend.new_uri(), backend.options
    other = Butler.create(uri, checkpoint_interval=2, log_shards=2, **options)
    other.registry._commits_since_check = -10**9  # never folds: the program's fold reads these commits
    for n in range(8):
        other.put({"n": n}, "metric", {"visit": 100 + n}, run="r")
    if how.startswith("library"):
        body = (f"from objbutler import Butler\nb = Butler({uri!r}, **{options!r})\n"
                "b.registry._commits_since_check = 0\n"
                "for n in range(4): b.put({'n': n}, 'metric', {'visit': n}, run='r')\n")
    else:  # the console command leaves with os._exit: it must wait for the fold itself
        import numpy as np
        from astropy.io import fits

        fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(tmp_path / "a.fits")
        body = (f"sys.argv = ['objbutler', 'put', {str(root)!r}, 'calexp', {str(tmp_path / 'a.fits')!r}, "
                "'--data-id', 'visit=1', '--run', 'r']\n"
                "import objbutler.registry.registry as r\nr.Registry._fold_due = lambda self: True\n"
                "from objbutler.cli import run\nrun()\n")
    done = subprocess.run([sys.executable, "-c", SLOW_FOLDS + body], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fold failed" not in done.stderr, done.stderr
    store = open_store(uri, **options)
    totals = sorted(int(Path(m.key).stem) for m in store.list(CHECKPOINTS))
    assert totals[-1] >= 9, "the program ended and its fold was lost"
    assert list(store.list(LEASE_PREFIX)) == []


def test_a_child_forked_during_a_fold_folds_on_its_own(tmp_path: Path) -> None:
    """The parent's fold (its thread, its lock, its half-updated view) is not in a forked child."""
    import multiprocessing

    root = tmp_path / "repo"
    writer, held = _held_writer(root)
    held.armed = True
    writer.registry._commits_since_check = INTERVAL - 1
    writer.put({"n": 0}, "metric", {"visit": 0}, run="r")
    assert held.entered.wait(10) and held.held == 1  # the parent's fold is in its first listing

    def child() -> None:
        held.release.set()  # the child's listings pass (the parent's stay held)
        for n in range(1, 2 * INTERVAL + 1):
            writer.put({"n": n}, "metric", {"visit": n}, run="r")
        sys.exit(0 if finish_folds(timeout=30) else 1)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(120)
    assert process.exitcode == 0, "the child waited for its parent's fold"
    assert _checkpoint_totals(root)[-1] >= INTERVAL, "the child never folded"
    held.release.set()
    assert finish_folds(timeout=60)
    assert len(Butler(str(root)).query()) == 2 * INTERVAL + 1
