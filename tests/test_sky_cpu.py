"""The client work of sky cutouts, counted: what is built once per image, and the vectorized planning's answers.

``cutouts_at`` must not rebuild per-image state (the WCS from the registry's cards, the header of
the registry's pixel layout) on every query; the vectorized stamp planning must give exactly the
plans and errors of :func:`objbutler.cutouts.plan_stamp` box by box; a read plan for needs
within one break-even size is one block, and the FITS reader's shortcut for such stamps fetches
exactly the blocks the planner plans.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits

import objbutler.formats.fits_cutouts as fits_cutouts
import objbutler.sky.query as sky_query
from objbutler import Butler
from objbutler.cutouts import Box, plan_stamp, plan_stamp_arrays, plan_stamps
from objbutler.errors import InvalidCutoutError
from objbutler.formats.fits_cutouts import read_fits_cutouts, row_ranges
from objbutler.formats.fits_headers import fits_layout, layout_info
from objbutler.ranges import ByteRange, CostModel, plan_reads
from objbutler.stores import normalize_ranges
from objbutler.testing.skyfield import pvis

FIELD = (150.1, 2.2)


def _counted(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls = [0]
    original: Callable[..., Any] = getattr(module, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def test_a_repeated_query_builds_no_wcs_and_no_layout_header(monkeypatch: pytest.MonkeyPatch) -> None:
    butler = Butler.create("memory://sky-cpu")
    for visit, hdu in enumerate(pvis(6, shape=(120, 100), field=FIELD, seed=5)):
        butler.put(hdu, "calexp", {"visit": visit}, run="pvi")
    rng = np.random.default_rng(1)
    positions = SkyCoord((FIELD[0] + rng.uniform(-0.003, 0.003, 50)) * u.deg,
                         (FIELD[1] + rng.uniform(-0.003, 0.003, 50)) * u.deg)
    first = butler.cutouts_at(positions, 9, "calexp")
    images = {ref.id for pairs in first for ref, _ in pairs}
    assert len(images) >= 4
    wcs_builds = _counted(monkeypatch, sky_query, "sky_wcs")
    layout_headers = _counted(monkeypatch, fits_cutouts, "layout_info")
    again = butler.cutouts_at(positions, 9, "calexp")
    assert wcs_builds[0] == 0  # the WCS of each dataset id is kept
    assert layout_headers[0] == 0  # the header of each registry layout is built once per process
    assert [[(ref.id, stamp.bbox) for ref, stamp in pairs] for pairs in again] == \
        [[(ref.id, stamp.bbox) for ref, stamp in pairs] for pairs in first]
    for pairs_first, pairs_again in zip(first, again, strict=True):
        for (_, a), (_, b) in zip(pairs_first, pairs_again, strict=True):
            assert np.array_equal(a.data, b.data)
            assert a.slices_original == b.slices_original
            assert a.input_position_original == b.input_position_original


def _random_boxes(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> list[Box]:
    ny, nx = shape
    boxes = []
    for _ in range(n):
        x0, y0 = int(rng.integers(-30, nx + 30)), int(rng.integers(-30, ny + 30))
        width, height = int(rng.integers(0, 25)), int(rng.integers(0, 25))
        boxes.append(Box(x0, y0, x0 + width, y0 + height))
    return boxes


@pytest.mark.parametrize("mode", ["trim", "partial", "strict"])
def test_vectorized_stamp_plans_are_plan_stamp_box_by_box(mode: str) -> None:
    rng = np.random.default_rng(11)
    shape = (40, 50)
    for trial in range(200):
        boxes = _random_boxes(rng, int(rng.integers(1, 6)), shape)
        expected: list[Any] = []
        error = None
        for index, box in enumerate(boxes):
            try:
                expected.append(plan_stamp(index, box, shape, mode))  # type: ignore[arg-type]
            except InvalidCutoutError as exc:
                error = str(exc)
                break
        corners = np.array([(b.x0, b.y0, b.x1, b.y1) for b in boxes], dtype=np.int64)
        for given in (boxes, corners):
            if error is not None:
                with pytest.raises(InvalidCutoutError) as raised:
                    plan_stamps(given, shape, mode)  # type: ignore[arg-type]
                assert str(raised.value) == error, trial
                continue
            assert plan_stamps(given, shape, mode) == expected, trial  # type: ignore[arg-type]
            bboxes, reads = plan_stamp_arrays(given, shape, mode)  # type: ignore[arg-type]
            assert bboxes.tolist() == [[p.bbox.x0, p.bbox.y0, p.bbox.x1, p.bbox.y1] for p in expected]
            assert reads.tolist() == [[p.read.x0, p.read.y0, p.read.x1, p.read.y1] for p in expected]


def test_stamp_plans_refuse_corners_beyond_64_bits_and_bad_arrays() -> None:
    with pytest.raises(InvalidCutoutError, match="64-bit"):
        plan_stamps([Box(2**70, 0, 2**70 + 1, 1)], (10, 10), "partial")
    with pytest.raises(InvalidCutoutError, match=r"\(N, 4\) integer array"):
        plan_stamps(np.zeros((2, 4)), (10, 10), "trim")
    with pytest.raises(InvalidCutoutError, match="negative extent"):
        plan_stamps(np.array([[5, 5, 4, 6]]), (10, 10), "trim")


def test_needs_within_one_break_even_size_are_one_block() -> None:
    rng = np.random.default_rng(4)
    cost = CostModel.local()
    for _ in range(100):
        base = int(rng.integers(0, 10**9))
        span = int(rng.integers(1, cost.break_even_bytes + 1))
        starts = base + rng.integers(0, span, 30)
        stops = np.minimum(starts + rng.integers(0, 5000, 30), base + span)
        needs = np.stack([starts, stops], axis=1)
        plan = plan_reads(needs, cost)
        wanted = needs[needs[:, 1] > needs[:, 0]]
        if not len(wanted):
            assert plan.blocks == []
            continue
        assert plan.blocks == [ByteRange(int(wanted[:, 0].min()), int(wanted[:, 1].max()))]


class _Recording:
    """Range reads of one FITS file in memory, each requested range recorded."""

    def __init__(self, data: bytes) -> None:
        self.data, self.asked = data, []

    def get_ranges(self, key: str, ranges: Any) -> list[bytes]:
        wanted = normalize_ranges(ranges)
        self.asked += wanted
        return [self.data[r.start : r.stop] for r in wanted]


# local, cloud, and two break-even sizes (1 kB, 20 kB) at which the planner splits nearby stamps' rows
@pytest.mark.parametrize("cost", [CostModel.local(), CostModel.cloud(), CostModel(1e-6, 1e9, 4),
                                  CostModel(1e-5, 2e9, 4)])
def test_fits_stamps_fetch_the_blocks_plan_reads_plans(cost: CostModel) -> None:
    """The one-block shortcut for nearby stamps gives the blocks the planner gives for their rows."""
    rng = np.random.default_rng(8)
    data = rng.normal(size=(300, 400)).astype(">f4")
    buffer = io.BytesIO()
    fits.PrimaryHDU(data).writeto(buffer)
    raw = buffer.getvalue()
    layout = fits_layout(raw)
    info = layout_info(layout, len(raw))
    assert info is not None
    for spread in (3, 5, 8, 12, 40, 250):
        centres = rng.integers(0, spread, (int(rng.integers(1, 8)), 2)) + 20
        boxes = [Box(int(x), int(y), int(x) + 11, int(y) + 9) for x, y in centres]
        store = _Recording(raw)
        stamps = read_fits_cutouts(store, "x.fits", boxes, "trim", cost=cost, layout=layout, object_size=len(raw))
        reads = [stamp_plan.read for stamp_plan in plan_stamps(boxes, (300, 400), "trim")]
        assert store.asked == plan_reads(row_ranges(reads, 400, 4, info.data_start), cost).blocks
        for box, stamp in zip(boxes, stamps, strict=True):
            assert np.array_equal(stamp.data, data[box.slices()])
