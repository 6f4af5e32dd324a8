"""Properties of the pure range planner (objbutler.ranges)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from objbutler.ranges import (
    DEFAULT_MAX_BLOCK,
    ByteRange,
    CostModel,
    ReadPlan,
    estimate_seconds,
    extract,
    plan_reads,
)

MIB = 1024 * 1024
IMAGE = 4096
STRIDE = IMAGE * 4  # float32 row
DATA_START = 2880


def stamp_rows(x0: int, y0: int, size: int = 64) -> list[tuple[int, int]]:
    """Row byte ranges of one (clipped) stamp of a 4096x4096 float32 FITS image."""
    xa, xb = max(x0, 0), min(x0 + size, IMAGE)
    rows = range(max(y0, 0), min(y0 + size, IMAGE))
    return [(DATA_START + y * STRIDE + xa * 4, DATA_START + y * STRIDE + xb * 4) for y in rows if xb > xa]


def random_stamps(count: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    corners = rng.integers(-32, IMAGE - 32, size=(count, 2)).tolist()
    return [r for x, y in corners for r in stamp_rows(x, y)]


ranges_strategy = st.lists(
    st.tuples(st.integers(0, 5000), st.integers(0, 600)).map(lambda t: (t[0], t[0] + t[1])),
    min_size=0,
    max_size=60,
)
cost_strategy = st.builds(
    CostModel,
    latency=st.sampled_from([0.0, 1e-5, 1e-4, 1e-3, 0.02]),
    bandwidth=st.sampled_from([1e3, 1e5, 1e6, 1e8]),
    concurrency=st.integers(1, 32),
)


def coverage(blocks: list[ByteRange], size: int) -> np.ndarray:
    counts = np.zeros(size, dtype=np.int64)
    for block in blocks:
        counts[block.start : block.stop] += 1
    return counts


@settings(max_examples=300, deadline=None)
@given(ranges_strategy, cost_strategy, st.integers(1, 4000))
def test_blocks_cover_every_needed_byte_exactly_once(
    ranges: list[tuple[int, int]], cost: CostModel, max_block: int
) -> None:
    plan = plan_reads(ranges, cost, max_block=max_block)
    counts = coverage(plan.blocks, 6000)
    assert counts.max(initial=0) <= 1  # never a byte twice
    for start, stop in ranges:
        assert (counts[start:stop] == 1).all()  # every needed byte once


@settings(max_examples=300, deadline=None)
@given(ranges_strategy, cost_strategy, st.integers(1, 4000))
def test_blocks_sorted_disjoint_capped_and_inside_the_span(
    ranges: list[tuple[int, int]], cost: CostModel, max_block: int
) -> None:
    plan = plan_reads(ranges, cost, max_block=max_block)
    blocks = plan.blocks
    assert all(0 < b.length <= max_block for b in blocks)
    assert all(a.stop <= b.start for a, b in itertools.pairwise(blocks))
    needed = [r for r in ranges if r[1] > r[0]]
    if not needed:
        assert blocks == []
        return
    lo, hi = min(r[0] for r in needed), max(r[1] for r in needed)
    assert lo <= blocks[0].start and blocks[-1].stop <= hi
    assert plan.nbytes <= hi - lo
    # every block starts and ends on a needed byte (cuts that land in gaps are trimmed)
    wanted = coverage([ByteRange(*r) for r in needed], 6000) > 0
    assert all(wanted[b.start] and wanted[b.stop - 1] for b in blocks)


@settings(max_examples=200, deadline=None)
@given(ranges_strategy, cost_strategy, st.integers(1, 4000))
def test_extract_returns_each_needed_range(ranges: list[tuple[int, int]], cost: CostModel, max_block: int) -> None:
    data = bytes(np.random.default_rng(0).integers(0, 256, 6000, dtype=np.uint8))
    plan = plan_reads(ranges, cost, max_block=max_block)
    fetched = [data[b.start : b.stop] for b in plan.blocks]
    for start, stop in ranges:
        assert bytes(extract(plan, fetched, (start, stop))) == data[start:stop]


def test_extract_is_zero_copy_inside_one_block() -> None:
    plan = plan_reads([(100, 200), (150, 300)], CostModel.cloud())
    fetched = [bytes(range(200))]
    view = extract(plan, fetched, ByteRange(120, 180))
    assert isinstance(view, memoryview) and view.obj is fetched[0]
    assert bytes(view) == bytes(range(20, 80))


def test_extract_refuses_bytes_that_were_not_fetched() -> None:
    plan = ReadPlan([ByteRange(0, 10), ByteRange(20, 30)])
    fetched = [b"a" * 10, b"b" * 10]
    with pytest.raises(ValueError, match="not fetched"):
        extract(plan, fetched, (5, 25))
    with pytest.raises(ValueError, match="not fetched"):
        extract(plan, fetched, (12, 14))


@given(st.integers(0, 10**12), st.integers(1, 4 * MIB), cost_strategy)
def test_one_small_range_is_one_block(start: int, length: int, cost: CostModel) -> None:
    plan = plan_reads([(start, start + length)], cost)
    if length <= max(cost.break_even_bytes, -(-length // cost.concurrency)):
        assert plan.blocks == [ByteRange(start, start + length)]
    assert plan.nbytes == length


def test_array_input_equals_list_input() -> None:
    ranges = random_stamps(50, seed=3)
    assert plan_reads(np.array(ranges)) == plan_reads(ranges) == plan_reads([ByteRange(*r) for r in ranges])


def test_one_stamp_is_one_read() -> None:
    for cost in (CostModel.cloud(), CostModel.local()):
        plan = plan_reads(stamp_rows(1000, 2000), cost)
        assert len(plan.blocks) == 1
        assert plan.nbytes < 1.1 * MIB


@pytest.mark.parametrize("seed", range(5))
def test_a_thousand_stamps_are_a_handful_of_large_reads(seed: int) -> None:
    ranges = random_stamps(1000, seed)
    image_bytes = IMAGE * STRIDE
    for cost, most in ((CostModel.cloud(), 16), (CostModel.local(), 5)):
        plan = plan_reads(ranges, cost)
        assert len(plan.blocks) <= most
        assert plan.nbytes <= image_bytes
        assert all(b.length <= DEFAULT_MAX_BLOCK for b in plan.blocks)
        exact = [ByteRange(*r) for r in ranges]
        whole = [ByteRange(DATA_START, DATA_START + image_bytes)]
        # within a few latencies of one whole read (the 16 MiB cap costs a request per block)
        assert estimate_seconds(plan.blocks, cost) <= 1.05 * estimate_seconds(whole, cost)
        assert estimate_seconds(plan.blocks, cost) < estimate_seconds(exact, cost) / 10


def test_the_plan_adapts_to_the_number_of_stamps() -> None:
    cost = CostModel.cloud()
    whole = [ByteRange(DATA_START, DATA_START + IMAGE * STRIDE)]
    few = plan_reads(random_stamps(3, seed=1), cost)
    assert len(few.blocks) == 3  # far apart: one read each, in parallel
    assert estimate_seconds(few.blocks, cost) < estimate_seconds(whole, cost) / 20


def test_far_apart_ranges_stay_apart_and_near_ones_merge() -> None:
    cost = CostModel(latency=0.01, bandwidth=1e6, concurrency=4)  # break-even 10 kB
    plan = plan_reads([(0, 100), (5_000, 5_100), (100_000, 100_100)], cost)
    assert plan.blocks == [ByteRange(0, 5_100), ByteRange(100_000, 100_100)]


def test_large_runs_are_split_for_concurrency_but_not_below_break_even() -> None:
    cost = CostModel(latency=0.01, bandwidth=1e6, concurrency=4)  # break-even 10 kB
    assert len(plan_reads([(0, 400_000)], cost).blocks) == 4
    assert len(plan_reads([(0, 15_000)], cost).blocks) == 2
    assert len(plan_reads([(0, 9_000)], cost).blocks) == 1
    assert len(plan_reads([(0, 400_000)], cost, max_block=50_000).blocks) == 8


def test_empty_and_zero_length_needs_plan_nothing() -> None:
    assert plan_reads([]).blocks == []
    assert plan_reads([(5, 5), (7, 7)]).blocks == []
    assert estimate_seconds([], CostModel.cloud()) == 0.0


def test_estimate_counts_waves_and_parallel_transfer() -> None:
    cost = CostModel(latency=0.01, bandwidth=1e6, concurrency=2)
    blocks = [ByteRange(0, 1_000_000), ByteRange(2_000_000, 2_500_000), ByteRange(3_000_000, 3_100_000)]
    # two waves of latency; transfer bounded by the biggest block (1 s) over the even share (0.8 s)
    assert estimate_seconds(blocks, cost) == pytest.approx(0.02 + 1.0)


def test_cost_model_defaults_and_validation() -> None:
    assert CostModel() == CostModel.cloud()
    assert CostModel.cloud().break_even_bytes == 2_000_000
    assert CostModel.for_uri("s3://bucket/repo") == CostModel.cloud()
    assert CostModel.for_uri("swift://c/p") == CostModel.cloud()
    for uri in ("/tmp/repo", "file:///tmp/repo", "memory://x"):
        assert CostModel.for_uri(uri) == CostModel.local()
    with pytest.raises(ValueError):
        CostModel(latency=-1)
    with pytest.raises(ValueError):
        CostModel(bandwidth=0)
    with pytest.raises(ValueError):
        CostModel(concurrency=0)
    with pytest.raises(ValueError):
        plan_reads([(0, 10)], max_block=0)
    with pytest.raises(ValueError):
        plan_reads([(10, 5)])
