"""The cutout API: one argument order with get(), the old order deprecated, positions with size, and
Cutout2D's pixel bookkeeping on every Cutout (compared with astropy's Cutout2D on the same inputs)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS

from objbutler import Box, Butler, Cutout
from objbutler.errors import AmbiguousRunError, InvalidCutoutError, InvalidKeyError
from objbutler.ranges import CostModel
from objbutler.testing.wrappers import CountingStore

NY, NX = 40, 50
DATA_ID = {"visit": 1, "detector": 2}


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [25.0, 20.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return wcs


PIXELS = np.arange(NY * NX, dtype="float32").reshape(NY, NX)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Butler, Any]:
    butler = Butler.create(str(tmp_path_factory.mktemp("api") / "repo"))
    hdu = fits.PrimaryHDU(PIXELS, header=_wcs().to_header())
    ref = butler.put(hdu, "calexp", DATA_ID, run="r1")
    butler.put(hdu, "calexp", DATA_ID, run="r2")  # the same data ID in a second run
    butler.put(hdu, "single", {"visit": 1}, run="r1")
    return butler, ref


def _no_warnings(call: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def _same(a: list[Cutout], b: list[Cutout]) -> None:
    assert [s.bbox for s in a] == [s.bbox for s in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.data, y.data, equal_nan=True)


# -- one argument order --------------------------------------------------------------------------

BOXES = [Box(1, 2, 5, 9), Box(30, 20, 42, 31)]


def test_the_contract_spellings_do_not_warn(repo: tuple[Butler, Any]) -> None:
    butler, ref = repo
    stamps = _no_warnings(lambda: butler.get_cutouts(ref, BOXES, mode="trim"))
    assert [s.data.tolist() for s in stamps] == [PIXELS[b.slices()].tolist() for b in BOXES]
    sky = SkyCoord([150.0], [2.0], unit="deg")
    assert len(_no_warnings(lambda: butler.get_cutouts(ref, sky, size=8))) == 1


def test_get_order_positional_and_keywords(repo: tuple[Butler, Any]) -> None:
    butler, ref = repo
    expected = butler.get_cutouts(ref, BOXES)
    _same(_no_warnings(lambda: butler.get_cutouts("calexp", DATA_ID, "r1", BOXES)), expected)
    _same(_no_warnings(lambda: butler.get_cutouts("calexp", data_id=DATA_ID, run="r1", boxes_or_positions=BOXES)),
          expected)
    _same(_no_warnings(lambda: butler.get_cutouts("calexp", DATA_ID, run="r1", boxes_or_positions=BOXES)), expected)
    _same(_no_warnings(lambda: butler.get_cutouts("calexp", BOXES, data_id=DATA_ID, run="r1")), expected)
    _same(_no_warnings(lambda: butler.get_cutouts("single", {"visit": 1}, None, BOXES)), expected)
    assert _no_warnings(lambda: butler.get_wcs("calexp", DATA_ID, "r1")).wcs.crval.tolist() == [150.0, 2.0]


@pytest.mark.parametrize("call", [
    lambda b: b.get_cutouts("calexp", BOXES, DATA_ID, "r1"),
    lambda b: b.get_cutouts("calexp", BOXES, DATA_ID, run="r1"),
    lambda b: b.get_cutouts("single", BOXES, {"visit": 1}),
], ids=["all positional", "run by keyword", "no run"])
def test_the_old_order_still_works_and_warns_with_the_new_spelling(repo: tuple[Butler, Any], call: Any) -> None:
    butler, ref = repo
    with pytest.warns(DeprecationWarning, match=r"get_cutouts\('(calexp|single)', data_id, run, boxes\)") as caught:
        stamps = call(butler)
    assert caught[0].filename == __file__  # points at the caller
    _same(stamps, butler.get_cutouts(ref, BOXES))


def test_misordered_calls_are_refused(repo: tuple[Butler, Any]) -> None:
    butler, _ = repo
    with pytest.raises(TypeError, match="multiple values for data_id"):
        butler.get_cutouts("calexp", BOXES, DATA_ID, data_id=DATA_ID)
    with pytest.raises(TypeError, match="run must be a str"):
        butler.get_cutouts("calexp", DATA_ID, BOXES)
    with pytest.raises(InvalidCutoutError, match="needs what to cut"):
        butler.get_cutouts("calexp", DATA_ID, "r1")


def test_an_ambiguous_run_has_its_own_error_class(repo: tuple[Butler, Any]) -> None:
    butler, _ = repo
    with pytest.raises(AmbiguousRunError, match="several runs") as raised:
        butler.get_cutouts("calexp", DATA_ID, None, BOXES)
    assert raised.value.runs == ("r1", "r2")
    assert isinstance(raised.value, InvalidKeyError)  # what was raised before: catching code keeps working
    with pytest.raises(AmbiguousRunError):
        butler.get("calexp", DATA_ID)


# -- single requests and positions -----------------------------------------------------------------

def test_single_box_or_position_gives_a_list_of_one(repo: tuple[Butler, Any]) -> None:
    butler, ref = repo
    assert [s.bbox for s in butler.get_cutouts(ref, Box(1, 2, 5, 9))] == [Box(1, 2, 5, 9)]
    assert [s.bbox for s in butler.get_cutouts(ref, (1, 2, 5, 9))] == [Box(1, 2, 5, 9)]
    [stamp] = butler.get_cutouts(ref, (10, 12), size=5)
    assert stamp.bbox == Box(8, 10, 13, 15) and stamp.position_original == (10, 12)
    assert len(butler.get_cutouts(ref, SkyCoord(150.0, 2.0, unit="deg"), size=4)) == 1


@pytest.mark.parametrize("positions", [
    [(10, 12), (30.4, 7.5)],
    np.array([[10, 12], [30.4, 7.5]]),
    ((10, 12), (30.4, 7.5)),
], ids=["list of tuples", "(N, 2) array", "tuple of tuples"])
def test_pixel_positions_with_size(repo: tuple[Butler, Any], positions: Any) -> None:
    butler, ref = repo
    stamps = butler.get_cutouts(ref, positions, size=(5, 6), mode="partial")
    for stamp, (x, y) in zip(stamps, [(10, 12), (30.4, 7.5)], strict=True):
        expected = Cutout2D(PIXELS, (x, y), (5, 6), mode="partial")
        assert np.array_equal(stamp.data, expected.data)
        assert stamp.input_position_original == (x, y)


def test_pixel_positions_with_an_angular_size_use_the_wcs(repo: tuple[Butler, Any]) -> None:
    butler, ref = repo
    [stamp] = butler.get_cutouts(ref, [(20, 20)], size=2 * u.arcsec)  # 0.2"/pixel: 10 pixels
    expected = Cutout2D(PIXELS, (20, 20), 2 * u.arcsec, wcs=_wcs())
    assert stamp.data.shape == (10, 10) and np.array_equal(stamp.data, expected.data)


def test_cost_reaches_the_planner_of_get_cutouts_many(repo: tuple[Butler, Any]) -> None:
    butler, ref = repo
    far_apart = [Box(0, 0, 4, 4), Box(40, 30, 44, 34)]
    requests = {}
    for cost in (CostModel(latency=100.0, bandwidth=1e12), CostModel(latency=0.0, bandwidth=1.0)):
        counting = CountingStore(butler.store)
        counted = Butler(butler.uri, store=counting)
        counting.reset()
        counted.get_cutouts_many({ref: far_apart}, cost=cost)
        requests[cost.latency] = counting.requests_by_method["get_ranges"]
    assert requests[100.0] < requests[0.0]  # costly requests: one merged range; free ones: a range per stamp


# -- Cutout2D's attributes -------------------------------------------------------------------------

ATTRIBUTES = ["input_position_original", "input_position_cutout", "position_original", "position_cutout",
              "slices_original", "slices_cutout", "bbox_original", "bbox_cutout", "origin_original",
              "origin_cutout", "center_original", "center_cutout", "shape"]

CASES = [
    ((10, 12), (5, 6), "trim"),
    ((10.5, 12.5), (4, 4), "trim"),
    ((2.2, 3.7), (9, 7), "trim"),      # clipped at the low edges
    ((48, 38), (7, 9), "trim"),        # clipped at the high edges
    ((10, 12), (5, 6), "strict"),
    ((25.49, 19.5), (11, 10), "strict"),
    ((47.6, 37.2), (7, 9), "partial"),  # padded at the high edges: every attribute as Cutout2D
    ((20, 20), (6, 6), "partial"),     # not padded
]


def _compare(ours: Cutout, theirs: Cutout2D, low_padded: bool = False) -> None:
    assert np.array_equal(ours.data, theirs.data, equal_nan=True)
    for name in ATTRIBUTES:
        mine, astropys = getattr(ours, name), getattr(theirs, name)
        if name.startswith("slices"):
            assert mine == astropys, name
        elif name.startswith("input_position"):  # through a WCS read back from the header: last-bit differences
            assert np.allclose(np.array(mine, dtype=float), np.array(astropys, dtype=float), rtol=0, atol=1e-9), name
        else:  # tuples of numbers (Cutout2D's may hold 0-d arrays)
            assert np.array(mine, dtype=float).tolist() == np.array(astropys, dtype=float).tolist(), name
    for point in [(0, 0), (1.5, 2.25), (3, 1)]:
        original = ours.to_original_position(point)
        assert ours.to_cutout_position(original) == point
        if not low_padded:
            assert original == theirs.to_original_position(point)
            assert ours.to_cutout_position(point) == theirs.to_cutout_position(point)


@pytest.mark.parametrize(("position", "size", "mode"), CASES)
def test_cutout_attributes_equal_cutout2d(repo: tuple[Butler, Any], position: Any, size: Any, mode: Any) -> None:
    butler, ref = repo
    [ours] = butler.get_cutouts(ref, [position], size=size, mode=mode)
    _compare(ours, Cutout2D(PIXELS, position, size, mode=mode))


@pytest.mark.parametrize("mode", ["trim", "partial"])
def test_sky_cutout_attributes_and_wcs_equal_cutout2d(repo: tuple[Butler, Any], mode: Any) -> None:
    butler, ref = repo
    sky = SkyCoord(150.0 + 2 / 3600, 2.0 - 3.3 / 3600, unit="deg")
    [ours] = butler.get_cutouts(ref, sky, size=(7, 8), mode=mode)
    theirs = Cutout2D(PIXELS, sky, (7, 8), wcs=_wcs(), mode=mode)
    _compare(ours, theirs)
    assert ours.wcs is not None
    assert np.allclose(ours.wcs.wcs.crpix, theirs.wcs.wcs.crpix)


def test_partial_padded_low_maps_through_the_true_origin(repo: tuple[Butler, Any]) -> None:
    """Cutout2D's to_original_position adds origin_original (the first pixel inside the image): off by the
    padding for a stamp padded at its low edges. Ours agrees with Cutout2D's own data, input_position_cutout
    and WCS instead."""
    butler, ref = repo
    position, size = (1.3, 2.0), (9, 7)
    [ours] = butler.get_cutouts(ref, [position], size=size, mode="partial")
    theirs = Cutout2D(PIXELS, position, size, wcs=_wcs(), mode="partial")
    _compare(ours, theirs, low_padded=True)
    assert ours.to_cutout_position(position) == pytest.approx(theirs.input_position_cutout)
    parent = _wcs()
    for point in [(0, 0), (2, 5), (6.5, 8)]:
        here = parent.pixel_to_world(*ours.to_original_position(point))
        there = theirs.wcs.pixel_to_world(*point)
        assert here.separation(there).to_value(u.mas) < 1e-3


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
def test_slices_original_of_a_partial_stamp_is_exact(tmp_path: Path, fmt: str) -> None:
    """The far edge of a partial stamp's overlap comes from the read, not from clipping the box at 0."""
    butler = Butler.create(str(tmp_path / "repo"))
    ref = butler.put(PIXELS, "img", {"visit": 1}, run="r", format=fmt)
    [stamp] = butler.get_cutouts(ref, [Box(45, 35, 55, 45)], mode="partial", fill_value=-1.0)
    theirs = Cutout2D(PIXELS, (49.5, 39.5), (10, 10), mode="partial", fill_value=-1.0)
    assert stamp.slices_original == theirs.slices_original == (slice(35, 40), slice(45, 50))
    assert np.array_equal(stamp.data, theirs.data)


def test_get_wcs_takes_hdu_as_get_cutouts_does(tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    other = _wcs()
    other.wcs.crval = [10.0, -5.0]
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(PIXELS, header=_wcs().to_header(), name="SCI"),
                         fits.ImageHDU(PIXELS, header=other.to_header(), name="ALT")])
    ref = butler.put(hdus, "multi", {"visit": 1}, run="r")
    assert butler.get_wcs(ref).wcs.crval.tolist() == [150.0, 2.0]
    assert butler.get_wcs(ref, hdu="ALT").wcs.crval.tolist() == [10.0, -5.0]
    [stamp] = butler.get_cutouts(ref, (10, 12), size=4, hdu="ALT")
    assert stamp.wcs is not None and stamp.wcs.wcs.crval.tolist() == [10.0, -5.0]
