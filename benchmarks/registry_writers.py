"""Concurrent small puts for the registry suite: writers as processes or threads, and what each put cost.

Every writer puts ``puts`` small datasets (16x16 float32 arrays, distinct data
IDs ``{"visit": i, "detector": writer}``) into one repository, one after
another, and records each put's
latency, the refs that came back and every exception. Processes are started
with ``spawn`` and each opens its own Butler (independent batch jobs); threads
share one Butler of this process (a pipeline's worker threads). Each writer
opens its Butler and makes one warm-up put (run ``warmup``: imports, clients,
the first refresh) before a first barrier; the caller's ``on_ready`` runs
then (reset the proxy's counters, start the CPU meter), and a second barrier
releases every writer at once, so the counts cover only the measured puts.

With ``floor=True`` the same writers do not put datasets: each "put" is the
least any commit design must send for one small dataset, **two writes** -- the
data object (the same FITS bytes, encoded beforehand) and one registry record
created with ``put_if_absent`` -- through the same store, proxy and barriers.
Its rate, measured in the same run beside the real one, is this machine's and
server's ceiling for that many writers (on two cores, 64 spawned clients and
the server compete for the CPU: the ceiling itself can fall).

:func:`run_writers` returns a :class:`WritersOutcome`; the suite then checks in
a fresh Butler that every ref that came back is there (``lost``), and reads
the requests from the proxy.
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

__all__ = ["DATASET_TYPE", "FLOOR_WRITES", "WriterResult", "WritersOutcome", "fits_bytes", "run_writers",
           "small_array"]

DATASET_TYPE = "small"
SHAPE = (16, 16)
_MESSAGES = 3
FLOOR_WRITES = 2
"""Writes per put of the floor writers: the data object and one registry record."""
_RECORD = b'{"dataset": "%s", "type": "small", "run": "%s", "data_id": {"visit": %d, "detector": %d}}'

def small_array(writer: int, index: int) -> np.ndarray:
    """The 16x16 float32 array writer ``writer`` puts as its ``index``-th dataset (distinct content)."""
    return np.full(SHAPE, writer * 100_000 + index, dtype=np.float32)


@dataclasses.dataclass
class WriterResult:
    """What one writer did.

    Attributes
    ----------
    ids : list of str
        Dataset ids of the puts that returned.
    latencies : list of float
        Seconds of every put, returned or failed.
    failures : int
        Puts that raised.
    messages : list of str
        The first few exceptions, as text.
    started, finished : float
        ``time.time()`` at the barrier's release and after the last put.
    settled : float
        ``time.time()`` once the background folds the writer's puts started
        have ended too (a claimed repository folds after a put returns).
    cpu_seconds : float
        CPU time of the writer's process during its puts (threads: 0; the
        caller measures the whole process).
    """

    ids: list[str] = dataclasses.field(default_factory=list)
    latencies: list[float] = dataclasses.field(default_factory=list)
    failures: int = 0
    messages: list[str] = dataclasses.field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    settled: float = 0.0
    cpu_seconds: float = 0.0


@dataclasses.dataclass
class WritersOutcome:
    """Every writer's result and the run's extent.

    Attributes
    ----------
    results : list of WriterResult
        One per writer (a writer that never reported is missing: see ``missing``).
    missing : int
        Writers that did not report before the timeout (their puts count as failed).
    wall : float
        Seconds from the first writer's start to the last writer's end (when writers are missing: from
        the release until they were given up on).
    settled_wall : float
        As ``wall``, to when the last writer's background folds had ended too.
    cpu_seconds : float
        CPU seconds of the writers (processes: their own; threads: this process's).
    """

    results: list[WriterResult]
    missing: int
    wall: float
    settled_wall: float
    cpu_seconds: float


class _ButlerPut:
    """A real put through a Butler."""

    def __init__(self, butler: Any) -> None:
        self.butler = butler

    def prepare(self, arrays: list[np.ndarray]) -> None:
        """Nothing to do beforehand: encoding is part of a put."""

    def __call__(self, array: np.ndarray, data_id: dict[str, int], run: str) -> str:
        return str(self.butler.put(array, DATASET_TYPE, data_id, run=run).id)

    @staticmethod
    def settle() -> None:
        """Wait for the folds this process's puts started (they run after a put returns)."""
        from objbutler.registry import finish_folds

        finish_folds()


class _FloorPut:
    """The floor's "put": the data object and one conditionally created record, bytes encoded beforehand."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.encoded: dict[int, bytes] = {}

    def prepare(self, arrays: list[np.ndarray]) -> None:
        """Encode the arrays' FITS bytes now, outside the measured part."""
        self.encoded.update({id(array): fits_bytes(array) for array in arrays})

    @staticmethod
    def settle() -> None:
        """Nothing runs after a raw write."""

    def __call__(self, array: np.ndarray, data_id: dict[str, int], run: str) -> str:
        tag = f"{run}/{data_id['detector']:05d}-{data_id['visit']:07d}"
        data = self.encoded.get(id(array)) or fits_bytes(array)
        self.store.put(f"floor/data/{tag}.fits", data)
        self.store.put_if_absent(f"floor/records/{tag}.json",
                                 _RECORD % (tag.encode(), run.encode(), data_id["visit"], data_id["detector"]))
        return tag


def fits_bytes(array: np.ndarray) -> bytes:
    """The bytes of a minimal FITS file holding ``array`` (what a small put writes)."""
    from astropy.io import fits

    buffer = io.BytesIO()
    fits.PrimaryHDU(array).writeto(buffer)
    return buffer.getvalue()


def _puts(put: _ButlerPut | _FloorPut, writer: int, puts: int, run: str, barriers: tuple[Any, Any],
          cpu: bool) -> WriterResult:
    result = WriterResult()
    arrays = [small_array(writer, i) for i in range(puts)]
    put.prepare(arrays)
    try:
        put(small_array(writer, -1), {"visit": -1, "detector": writer}, "warmup")
    except Exception as exc:  # the measured puts will say more; keep going
        result.messages.append(f"warm-up: {type(exc).__name__}: {exc}"[:300])
    barriers[0].wait()
    barriers[1].wait()
    result.started = time.time()
    cpu_start = time.process_time() if cpu else 0.0
    for index, array in enumerate(arrays):
        begun = time.perf_counter()
        try:
            result.ids.append(put(array, {"visit": index, "detector": writer}, run))
        except Exception as exc:  # counted: the suite reports failures, it does not stop on them
            result.failures += 1
            if len(result.messages) < _MESSAGES:
                result.messages.append(f"{type(exc).__name__}: {exc}"[:300])
        result.latencies.append(time.perf_counter() - begun)
    result.finished = time.time()
    put.settle()
    result.settled = time.time()
    if cpu:
        result.cpu_seconds = time.process_time() - cpu_start
    return result


def _release(barriers: tuple[Any, Any], on_ready: Callable[[], object]) -> None:
    """Wait until every writer is ready, call ``on_ready``, release them together.

    A writer that died before the barrier breaks it: the others then report
    nothing and count as missing, instead of the whole suite stopping.
    """
    try:
        barriers[0].wait()
        on_ready()
        barriers[1].wait()
    except threading.BrokenBarrierError:
        for barrier in barriers:
            barrier.abort()


def _putter(uri: str, options: dict[str, Any], floor: bool) -> _ButlerPut | _FloorPut:
    """A writer's put: a Butler opened and refreshed, or (the floor) a bare store client."""
    if floor:
        from objbutler.stores import open_store

        return _FloorPut(open_store(uri, **options))
    from objbutler import Butler

    butler = Butler(uri, **options)
    butler.registry.refresh()
    return _ButlerPut(butler)


def _process_writer(uri: str, options: dict[str, Any], writer: int, puts: int, run: str,
                    barriers: tuple[Any, Any], queue: Any, floor: bool) -> None:
    put = _putter(uri, options, floor)
    queue.put((writer, dataclasses.asdict(_puts(put, writer, puts, run, barriers, cpu=True))))


def _run_processes(uri: str, options: dict[str, Any], writers: int, puts: int, run: str, timeout: float,
                   on_ready: Callable[[], object], floor: bool) -> tuple[list[WriterResult], int, float]:
    context = multiprocessing.get_context("spawn")
    barriers = (context.Barrier(writers + 1, timeout=timeout), context.Barrier(writers + 1, timeout=timeout))
    queue = context.Queue()
    processes = [context.Process(target=_process_writer, args=(uri, options, w, puts, run, barriers, queue, floor))
                 for w in range(writers)]
    for process in processes:
        process.start()
    results: list[WriterResult] = []
    try:
        _release(barriers, on_ready)
        deadline = time.monotonic() + timeout  # from the release: spawning 64 interpreters takes its own time
        while len(results) < writers and time.monotonic() < deadline:
            try:
                _, fields = queue.get(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            except Exception:  # queue.Empty: check the deadline and the workers again
                if not any(p.is_alive() for p in processes):
                    break
                continue
            results.append(WriterResult(**fields))
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()  # a writer this call started, by its handle
                process.join(timeout=5)
    return results, writers - len(results), sum(r.cpu_seconds for r in results)


def _run_threads(uri: str, options: dict[str, Any], writers: int, puts: int, run: str, timeout: float,
                 on_ready: Callable[[], object], floor: bool) -> tuple[list[WriterResult], int, float]:
    put = _putter(uri, options, floor)  # one Butler (or store client) shared by every thread
    barriers = (threading.Barrier(writers + 1, timeout=timeout), threading.Barrier(writers + 1, timeout=timeout))
    results: list[WriterResult | None] = [None] * writers

    def work(writer: int) -> None:
        results[writer] = _puts(put, writer, puts, run, barriers, cpu=False)

    threads = [threading.Thread(target=work, args=(w,), name=f"bench-writer-{w}", daemon=True)
               for w in range(writers)]
    for thread in threads:
        thread.start()
    _release(barriers, on_ready)
    cpu_start = time.process_time()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    cpu = time.process_time() - cpu_start
    done = [r for r in results if r is not None]
    return done, writers - len(done), cpu


def run_writers(uri: str, options: dict[str, Any], writers: int, puts: int, mode: Literal["processes", "threads"],
                run: str = "writers", timeout: float = 900.0,
                on_ready: Callable[[], object] = lambda: None, floor: bool = False) -> WritersOutcome:
    """Run ``writers`` writers of ``puts`` small puts each into the repository at ``uri``.

    Parameters
    ----------
    uri : str
        An existing repository.
    options : dict
        Store options for ``Butler(uri, **options)``.
    writers : int
        How many writers.
    puts : int
        Puts per writer.
    mode : {"processes", "threads"}
        Spawned processes, each with its own Butler, or threads sharing one.
    run : str
        The run the datasets go into.
    timeout : float
        Seconds to wait for all writers (a writer still busy then is stopped and counted as missing).
    on_ready : callable
        Called once every writer has opened its Butler and made its warm-up put, just before they are
        released together.
    floor : bool
        Measure the floor instead (see the module docstring): :data:`FLOOR_WRITES` raw writes per put,
        no Butler, ``uri`` need not be a repository.

    Returns
    -------
    WritersOutcome
    """
    released: list[float] = []

    def ready() -> None:
        on_ready()
        released.append(time.time())

    if mode == "processes":
        results, missing, cpu = _run_processes(uri, options, writers, puts, run, timeout, ready, floor)
    elif mode == "threads":
        results, missing, cpu = _run_threads(uri, options, writers, puts, run, timeout, ready, floor)
    else:
        raise ValueError(f"mode must be processes or threads, got {mode!r}")
    if missing and released:  # writers still busy were stopped at the timeout: the run lasted until then
        wall = settled = time.time() - released[0]
    else:
        start = min((r.started for r in results), default=0.0)
        wall = max(r.finished for r in results) - start if results else 0.0
        settled = max(r.settled for r in results) - start if results else 0.0
    return WritersOutcome(results, missing, wall, settled, cpu)
