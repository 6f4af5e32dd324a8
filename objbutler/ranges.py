"""The pure byte-range planner: which blocks to fetch for a set of needed ranges.

Nothing here does I/O. A format reader lists the byte ranges it needs (one per
stamp row, one per compressed tile, ...), :func:`plan_reads` turns them into a
few disjoint blocks, the reader fetches the blocks with one
``store.get_ranges`` call, and :func:`extract` slices each needed range back
out of the fetched blocks.

The cost model
--------------
A request costs ``latency`` seconds before its first byte, then streams at
``bandwidth`` bytes/s; up to ``concurrency`` requests run at once. So a
request is worth ``latency * bandwidth`` bytes of transfer: the *break-even
size* ``b`` (2 MB on cloud object stores, ~200 kB on a local disk).

* **Merge.** When the requests outnumber the lanes, every extra request adds
  ``latency / concurrency`` to the wall time and reading a gap adds
  ``gap / (bandwidth * concurrency)``; the concurrency cancels out, so two
  neighbours are merged when ``gap < b``.
* **Split.** While fewer requests than lanes are in flight, an extra request
  is nearly free, so a large merged block is cut into about
  ``concurrency`` pieces to stream in parallel, but never into pieces smaller
  than ``b`` (a piece that small would cost more in latency than it saves in
  transfer) nor larger than ``max_block``. After the cut, each piece is
  trimmed to the needed bytes it holds, so a cut that lands in a gap drops the
  gap.

Lanes
-----
``concurrency`` (the lanes) comes from measurements, not from the host name
(:func:`lanes_for`, :meth:`CostModel.measured`): a request spends ``latency``
waiting and the endpoint needs ``service_time`` of its own per request when
busy, so about ``latency / service_time`` requests in flight keep it busy
(Little's law). A far endpoint (50 ms latency, 1 ms of work per request) is
worth many lanes, a server sharing this machine's CPUs (service time = latency)
one. Lanes never exceed the store's concurrency budget, and when a per-client
link bandwidth is known, never more than the streams that fill it: a
bandwidth-bound store gets fewer lanes, hence fewer, larger reads.
The store layer measures (:func:`objbutler.stores.endpoint_profile`, cached per
endpoint); :meth:`CostModel.for_store` passes the numbers in.

One stamp therefore costs one small read; a thousand stamps over one image
cost a few large concurrent reads covering (at most) the span of the stamps.
:func:`estimate_seconds` scores any list of blocks under the same model, so
benchmarks can compare plans.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import urllib.parse
from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

from objbutler.stores import ByteRange, RangeLike, budget_of, endpoint_profile

__all__ = [
    "DEFAULT_BANDWIDTH",
    "DEFAULT_MAX_BLOCK",
    "ByteRange",
    "CostModel",
    "ReadPlan",
    "estimate_seconds",
    "extract",
    "lanes_for",
    "plan_reads",
]

DEFAULT_MAX_BLOCK = 16 * 1024 * 1024
"""Largest block :func:`plan_reads` asks for (16 MiB)."""

_LOCAL_SCHEMES = ("", "file", "memory")
DEFAULT_BANDWIDTH = 100e6
"""Bytes/s of one stream assumed until a read has measured it."""


def lanes_for(latency: float, service_time: float, budget: int, bandwidth: float | None = None,
              link_bandwidth: float | None = None) -> int:
    """How many requests to keep in flight on one store (see the module docstring).

    Parameters
    ----------
    latency : float
        Seconds of one request alone.
    service_time : float
        Seconds per request with many in flight (the endpoint's own work per request).
    budget : int
        The store's concurrency budget: never more lanes than this.
    bandwidth : float, optional
        Bytes/s of one stream.
    link_bandwidth : float, optional
        Bytes/s of all streams together (the client's link), when known.

    Returns
    -------
    int
        ``ceil(latency / service_time)``, at most ``link_bandwidth / bandwidth``
        when both are given, between 1 and ``budget``.
    """
    if not (latency >= 0 and service_time > 0):
        raise ValueError(f"need latency >= 0 and service_time > 0, got {latency!r}, {service_time!r}")
    if not (isinstance(budget, int) and budget >= 1):
        raise ValueError(f"budget must be an integer >= 1, got {budget!r}")
    lanes = math.ceil(latency / service_time - 1e-9)
    if bandwidth is not None and link_bandwidth is not None and bandwidth > 0:
        lanes = min(lanes, math.floor(link_bandwidth / bandwidth + 1e-9))
    return max(1, min(lanes, budget))


@dataclasses.dataclass(frozen=True, slots=True)
class CostModel:
    """How expensive requests and bytes are on one kind of store.

    Parameters
    ----------
    latency : float
        Seconds from sending a request to its first byte.
    bandwidth : float
        Bytes per second one request streams at.
    concurrency : int
        How many requests the store client runs at once.
    """

    latency: float = 0.02
    bandwidth: float = 100e6
    concurrency: int = 16

    def __post_init__(self) -> None:
        if not self.latency >= 0:
            raise ValueError(f"latency must be >= 0, got {self.latency!r}")
        if not self.bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth!r}")
        if not (isinstance(self.concurrency, int) and self.concurrency >= 1):
            raise ValueError(f"concurrency must be an integer >= 1, got {self.concurrency!r}")

    @classmethod
    def cloud(cls) -> CostModel:
        """S3-like object storage: 20 ms per request, 100 MB/s per stream, 16 at once."""
        return cls(latency=0.02, bandwidth=100e6, concurrency=16)

    @classmethod
    def local(cls) -> CostModel:
        """A local disk or memory: 0.1 ms per request, 2 GB/s, one read at a time."""
        return cls(latency=1e-4, bandwidth=2e9, concurrency=1)

    @classmethod
    def loopback(cls) -> CostModel:
        """A server on this machine (LocalStack, a test Swift): 7 ms, 280 MB/s, one at a time.

        Kept for benchmarks and explicit ``cost=``; stores are measured instead
        (:meth:`for_store`). Measured against LocalStack on two cores (``benchmarks/calibrate.py``): four concurrent
        requests take four times as long as one, because the server shares the client's CPUs.
        """
        return cls(latency=0.007, bandwidth=280e6, concurrency=1)

    @classmethod
    def measured(cls, latency: float, service_time: float, budget: int, bandwidth: float | None = None,
                 link_bandwidth: float | None = None) -> CostModel:
        """The model of a measured endpoint: its latency and bandwidth, lanes from :func:`lanes_for`.

        Parameters
        ----------
        latency, service_time, budget, bandwidth, link_bandwidth
            As for :func:`lanes_for`; ``bandwidth`` defaults to :data:`DEFAULT_BANDWIDTH`.

        Returns
        -------
        CostModel
            Pure numbers: the planner does no I/O.
        """
        lanes = lanes_for(latency, service_time, budget, bandwidth, link_bandwidth)
        return cls(latency=latency, bandwidth=bandwidth or DEFAULT_BANDWIDTH, concurrency=lanes)

    @classmethod
    def for_store(cls, store: object, key: str | None = None) -> CostModel:
        """The model of a store: measured for a remote store, :meth:`for_uri` for the rest.

        A remote store's endpoint is probed once per process (and again after
        :data:`objbutler.stores._endpoint.PROFILE_TTL`) by
        :func:`objbutler.stores.endpoint_profile`; ``key`` (an object about to be
        read) lets the probe measure bandwidth too. Lanes are capped by the
        store's concurrency budget (its ``max_concurrency``).
        """
        profile = endpoint_profile(store, key)
        if profile is None:
            return cls.for_uri(str(getattr(store, "uri", "")))
        return cls.measured(profile.latency, profile.service_time, budget_of(store).limit, profile.bandwidth)

    @classmethod
    def for_uri(cls, uri: str) -> CostModel:
        """The default model for a store URI: :meth:`local` for paths, file:// and memory://, else :meth:`cloud`."""
        scheme = urllib.parse.urlsplit(uri).scheme if "://" in uri else ""
        return cls.local() if scheme in _LOCAL_SCHEMES else cls.cloud()

    @property
    def break_even_bytes(self) -> int:
        """Bytes that take as long to transfer as one request's latency."""
        return int(self.latency * self.bandwidth)


@dataclasses.dataclass(frozen=True)
class ReadPlan:
    """The blocks to fetch: sorted, disjoint, each inside the span of the needs.

    Parameters
    ----------
    blocks : list of ByteRange
        Half-open byte ranges to fetch, sorted by start, pairwise disjoint.
    """

    blocks: list[ByteRange]
    _starts: list[int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", [block.start for block in self.blocks])

    @property
    def nbytes(self) -> int:
        """Total bytes the plan fetches."""
        return sum(block.length for block in self.blocks)

    def block_index(self, offset: int) -> int:
        """Index of the block holding byte ``offset``, or -1 if no block does."""
        index = bisect_right(self._starts, offset) - 1
        if index >= 0 and offset < self.blocks[index].stop:
            return index
        return -1


def _as_arrays(ranges: Sequence[RangeLike] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, stops)`` as int64 arrays from ByteRanges, pairs or an ``(n, 2)`` array."""
    if isinstance(ranges, np.ndarray):
        pairs = ranges.astype(np.int64, copy=False).reshape(-1, 2)
    else:
        pairs = np.array(
            [(r.start, r.stop) if isinstance(r, ByteRange) else r for r in ranges], dtype=np.int64
        ).reshape(-1, 2)
    starts, stops = pairs[:, 0], pairs[:, 1]
    if np.any(starts < 0) or np.any(stops < starts):
        raise ValueError("byte ranges must satisfy 0 <= start <= stop")
    return starts, stops


def _union(starts: np.ndarray, stops: np.ndarray, min_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort ranges and join those separated by fewer than ``min_gap`` bytes (overlaps always join)."""
    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    ends = np.maximum.accumulate(stops[order])
    breaks = np.flatnonzero(starts[1:] - ends[:-1] >= max(min_gap, 1)) + 1
    first = np.concatenate(([0], breaks))
    last = np.concatenate((breaks - 1, [len(starts) - 1]))
    return starts[first], ends[last]


def _split(start: int, stop: int, target: int) -> list[tuple[int, int]]:
    """Cut ``[start, stop)`` into equal pieces of at most ``target`` bytes."""
    pieces = max(1, math.ceil((stop - start) / target))
    cuts = [start + (stop - start) * k // pieces for k in range(pieces + 1)]
    return list(itertools.pairwise(cuts))


def _trim(piece: tuple[int, int], run_starts: np.ndarray, run_stops: np.ndarray) -> ByteRange | None:
    """Shrink a piece to the needed bytes it holds (None if it holds none)."""
    start, stop = piece
    first = int(np.searchsorted(run_stops, start, side="right"))
    last = int(np.searchsorted(run_starts, stop, side="left")) - 1
    if first > last:
        return None
    return ByteRange(max(start, int(run_starts[first])), min(stop, int(run_stops[last])))


def plan_reads(
    ranges: Sequence[RangeLike] | np.ndarray,
    cost: CostModel | None = None,
    max_block: int = DEFAULT_MAX_BLOCK,
) -> ReadPlan:
    """Plan the blocks that cover a set of needed byte ranges (see the module docstring).

    Parameters
    ----------
    ranges : sequence of ByteRange or (start, stop), or an (n, 2) integer array
        The needed half-open ranges, in any order; they may overlap.
    cost : CostModel, optional
        The store's cost model; :meth:`CostModel.cloud` if omitted.
    max_block : int, default 16 MiB
        Largest block to request.

    Returns
    -------
    ReadPlan
        Sorted, disjoint blocks that cover every needed byte once, inside the
        span of the needs; empty needs are ignored.
    """
    cost = cost or CostModel.cloud()
    if max_block < 1:
        raise ValueError(f"max_block must be >= 1, got {max_block}")
    starts, stops = _as_arrays(ranges)
    keep = stops > starts
    if not keep.any():
        return ReadPlan([])
    starts, stops = starts[keep], stops[keep]
    break_even = cost.break_even_bytes
    first, last = int(starts.min()), int(stops.max())
    if last - first <= min(break_even, max_block):
        # What the steps below give when the needs span at most one break-even size (the usual few
        # stamps of one image): every gap is shorter than b, so one cluster, whose one piece is
        # trimmed to the needs: one block, without the sorting and the unions.
        return ReadPlan([ByteRange(first, last)])
    run_starts, run_stops = _union(starts, stops, 1)
    cluster_starts, cluster_stops = _union(run_starts, run_stops, break_even)
    spread = int(np.sum(cluster_stops - cluster_starts)) / cost.concurrency
    target = max(1, min(max(math.ceil(spread), break_even), max_block))
    blocks = []
    for start, stop in zip(cluster_starts.tolist(), cluster_stops.tolist(), strict=True):
        for piece in _split(start, stop, target):
            block = _trim(piece, run_starts, run_stops)
            if block is not None:
                blocks.append(block)
    return ReadPlan(blocks)


def extract(plan: ReadPlan, fetched: Sequence[bytes | memoryview], byte_range: RangeLike) -> memoryview | bytes:
    """Slice one needed range out of the fetched blocks.

    Parameters
    ----------
    plan : ReadPlan
        The plan the blocks were fetched by.
    fetched : sequence of bytes or memoryview
        ``store.get_ranges(key, plan.blocks)``: one buffer per block.
    byte_range : ByteRange or (start, stop)
        A range the plan covers.

    Returns
    -------
    memoryview or bytes
        A zero-copy view when one block holds the range; a joined copy of just
        the range when it crosses blocks.

    Raises
    ------
    ValueError
        If some byte of the range was not fetched.
    """
    start, stop = (byte_range.start, byte_range.stop) if isinstance(byte_range, ByteRange) else byte_range
    if stop <= start:
        return b""
    index = plan.block_index(start)
    parts = []
    position = start
    while index >= 0:
        block, buffer = plan.blocks[index], fetched[index]
        end = min(stop, block.stop)
        if len(buffer) < end - block.start:
            raise ValueError(f"block {block} came back with only {len(buffer)} bytes")
        parts.append(memoryview(buffer)[position - block.start : end - block.start])
        if end == stop:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        index = index + 1 if index + 1 < len(plan.blocks) and plan.blocks[index + 1].start == end else -1
        position = end
    raise ValueError(f"byte {position} of [{start}, {stop}) was not fetched by this plan")


def estimate_seconds(blocks: Sequence[ByteRange], cost: CostModel) -> float:
    """Estimated wall time to fetch ``blocks`` under ``cost``.

    ``ceil(n / concurrency)`` waves of latency, plus the transfer of the
    larger of the biggest block and an even share of all bytes per lane.

    Parameters
    ----------
    blocks : sequence of ByteRange
        The blocks of a plan (or any strategy to compare).
    cost : CostModel
        The store's cost model.

    Returns
    -------
    float
        Seconds.
    """
    if not blocks:
        return 0.0
    lengths = [block.length for block in blocks]
    waves = math.ceil(len(lengths) / cost.concurrency)
    transfer = max(max(lengths), sum(lengths) / cost.concurrency) / cost.bandwidth
    return waves * cost.latency + transfer
