"""The service's pure parts: SODA parameter parsing, stencil boxes, the PNG writer (no server)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from objbutler.cutouts import Box
from objbutler.service.params import (
    Circle,
    Limits,
    Params,
    Polygon,
    Range,
    _SodaError,
    parse_id,
    parse_stencils,
    parse_time,
    response_format,
)
from objbutler.service.png import png_bytes
from objbutler.service.regions import stencil_box, stencil_boxes

LIMITS = Limits()


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [50.0, 50.0]
    wcs.wcs.cd = np.array([[-0.2, 0.0], [0.0, 0.2]]) / 3600
    return wcs


def test_stencils_keep_request_order_and_names_are_case_insensitive() -> None:
    params = Params([("pos", "circle 150 2 0.001"), ("Polygon", "150 2 150.001 2 150 2.001"),
                     ("POS", "RANGE 149.999 150.001 1.999 2.001"), ("CIRCLE", "150 2 0.002")])
    stencils = parse_stencils(params, LIMITS)
    assert [type(s) for s in stencils] == [Circle, Polygon, Range, Circle]
    assert stencils[0] == Circle(150.0, 2.0, 0.001)
    assert stencils[3].radius == 0.002  # type: ignore[union-attr]


def test_circle_boundary_is_at_the_radius() -> None:
    ra, dec = Circle(150.0, 60.0, 0.01).boundary()
    separation = SkyCoord(ra * u.deg, dec * u.deg).separation(SkyCoord(150 * u.deg, 60 * u.deg))
    np.testing.assert_allclose(separation.deg, 0.01, rtol=1e-9)


def test_polygon_boundary_passes_through_its_vertices() -> None:
    polygon = Polygon(((150.0, 2.0), (150.01, 2.0), (150.0, 2.01)))
    ra, dec = polygon.boundary()
    for vertex in polygon.vertices:
        assert np.min(np.hypot(ra - vertex[0], dec - vertex[1])) < 1e-9


def test_box_of_a_circle_on_a_plain_tan_wcs() -> None:
    # 0.001 deg = 18 pixels of 0.2 arcsec around pixel (49, 49) (CRPIX 50 is 1-based)
    box = stencil_box(Circle(150.0, 2.0, 0.001), _wcs())
    assert (box.x0, box.y0, box.x1, box.y1) == (31, 31, 68, 68)


def test_boxes_outside_the_image_or_over_the_pixel_limit_are_refused() -> None:
    with pytest.raises(_SodaError, match="does not overlap"):
        stencil_boxes([Circle(150.1, 2.0, 0.001)], _wcs(), (100, 100), LIMITS)
    with pytest.raises(_SodaError, match=r"answers at most 100$"):
        stencil_boxes([Circle(150.0, 2.0, 0.001)], _wcs(), None, Limits(max_pixels=100))


@pytest.mark.parametrize("stencil", [Circle(150.0, 2.0, 2.0), Range(140.0, 160.0, -8.0, 12.0),
                                     Polygon(((145.0, -3.0), (155.0, -3.0), (150.0, 7.0)))])
def test_stencils_larger_than_the_limit_are_reduced_to_a_known_image_else_refused(stencil: Any) -> None:
    """SODA 1.0 3.3: values beyond the dataset are reduced to it; without its shape, the radius limit holds."""
    (box,) = stencil_boxes([stencil], _wcs(), (100, 100), LIMITS)
    assert box.intersection(Box(0, 0, 100, 100)) == Box(0, 0, 100, 100)
    with pytest.raises(_SodaError, match="over this service's limit"):
        stencil_boxes([stencil], _wcs(), None, LIMITS)


def test_a_stencil_behind_the_projection_is_reduced_to_the_image_it_holds() -> None:
    """A circle of 120 degrees has boundary points behind the TAN plane; its box is the image."""
    (box,) = stencil_boxes([Circle(150.0, 2.0, 120.0)], _wcs(), (100, 100), LIMITS)
    assert (box.x0, box.y0, box.x1, box.y1) == (0, 0, 100, 100)
    with pytest.raises(_SodaError, match="does not overlap"):  # the far side of the sky: no pixel
        stencil_boxes([Circle(330.0, -2.0, 80.0)], _wcs(), (100, 100), LIMITS)


@pytest.mark.parametrize("value", ["CIRCLE 1 2", "CIRCLE 1 2 0", "CIRCLE 1 2 -1", "CIRCLE 1 2 nan", "CIRCLE 1 2 181",
                                   "CIRCLE 1 -91 0.1", "RANGE 2 1 0 1", "RANGE 1 2 1 0", "POLYGON 1 2 3 4",
                                   "POLYGON 1 2 3 4 5", "POLYGON 1 0 1.1 0 1.2 0", "BOX 1 2 3 4", "CIRCLE"])
def test_bad_stencils(value: str) -> None:
    with pytest.raises(_SodaError) as caught:
        parse_stencils(Params([("POS", value)]), LIMITS)
    assert caught.value.status == 400 and caught.value.kind == "UsageError"


def test_thin_but_real_polygons_are_accepted() -> None:
    arcsec = 1 / 3600
    (polygon,) = parse_stencils(Params([("POLYGON", f"150 2 {150 + arcsec} 2 150 {2 + 0.01 * arcsec}")]), LIMITS)
    assert len(polygon.vertices) == 3  # type: ignore[union-attr]


def test_too_many_stencils() -> None:
    with pytest.raises(_SodaError, match="at most 2"):
        parse_stencils(Params([("CIRCLE", "1 2 0.1")] * 3), Limits(max_stencils=2))


def test_ids() -> None:
    assert parse_id("0788B4F8-0657-4E83-ABE0-6655E70329B1").dataset_id == "0788b4f8-0657-4e83-abe0-6655e70329b1"
    name = parse_id("objbutler://calexp?visit=903334&band=r&run=night1")
    assert name.dataset_type == "calexp" and dict(name.data_id) == {"visit": 903334, "band": "r"}
    assert name.run == "night1"
    for bad in ("", "../x", "objbutler://calexp/../x?visit=1", "objbutler://calexp", "objbutler://a b?visit=1",
                "objbutler://calexp?visit=1&visit=2", "objbutler://calexp?../=1", "s3://bucket/key"):
        with pytest.raises(_SodaError):
            parse_id(bad)


def test_time_and_response_format() -> None:
    assert parse_time(Params([("TIME", "60000 60001.5")])) == (60000.0, 60001.5)
    assert parse_time(Params([("TIME", "-Inf 60001")])) == (-math.inf, 60001.0)
    for bad in ("60001 60000", "nan 1", "1", "a b"):
        with pytest.raises(_SodaError):
            parse_time(Params([("TIME", bad)]))
    assert response_format(Params([]), ("fits", "png")) == "fits"
    assert response_format(Params([("responseformat", "image/png")]), ("fits", "png")) == "png"
    with pytest.raises(_SodaError):
        response_format(Params([("RESPONSEFORMAT", "votable")]), ("fits", "png"))


def test_png_round_trip_keeps_orientation() -> None:
    from PIL import Image

    data = np.zeros((5, 7), dtype=np.float32)
    data[0, :] = 100.0  # the bottom row (origin="lower") is bright
    data[1, 2] = np.nan
    image = np.asarray(Image.open(io.BytesIO(png_bytes(data))))
    assert image.shape == (5, 7)
    assert image[-1].min() == 255 and image[0].max() == 0
    assert image[-2, 2] == 0  # NaN is black


def test_fits_writer_output_passes_astropy_verification() -> None:
    import warnings

    from astropy.io import fits

    from objbutler.service import fitsio

    arrays = [np.arange(12, dtype="<f4").reshape(3, 4), np.array([[0, 65535]], dtype=np.uint16),
              np.array([[True, False]]), np.array([[-1.5e300, 2.0]], dtype=">f8")]
    cards = [fitsio.card("CRPIX1", 1.5e-10), fitsio.card("CRVAL1", 150.10376895633, "deg"),
             fitsio.card("OBJBID", "it's"), fitsio.card("FLAG", True), fitsio.card("N", -3, "x" * 90)]
    raw = fitsio.image_hdu(np.zeros((0,), dtype=np.uint8), cards, primary=True) + b"".join(
        fitsio.image_hdu(a, cards, primary=False, extname="STAMP", extver=k) for k, a in enumerate(arrays, 1))
    assert len(raw) % 2880 == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(io.BytesIO(raw)) as hdul:
            hdul.verify("exception")
            assert len(hdul) == 1 + len(arrays)
            for k, array in enumerate(arrays, 1):
                np.testing.assert_array_equal(hdul[k].data, array)
                assert (hdul[k].header["EXTNAME"], hdul[k].header["EXTVER"]) == ("STAMP", k)
            header = hdul[0].header
            assert header["CRPIX1"] == 1.5e-10 and header["CRVAL1"] == 150.10376895633
            assert header["OBJBID"] == "it's" and header["FLAG"] is True and header["N"] == -3
    for bad in (("lower", 1), ("NAN", float("nan")), ("LIST", [1]), ("TEXT", "é")):
        with pytest.raises(ValueError):
            fitsio.card(*bad)


def test_shared_refresh_serves_queued_requests_with_one_later_refresh() -> None:
    import threading
    import time

    from objbutler.service.refresh import SharedRefresh

    release = threading.Event()
    generation = iter(range(1, 100))

    def refresh() -> int:
        number = next(generation)
        if number == 1:
            release.wait(30)
        return number

    shared = SharedRefresh(refresh)
    results: dict[str, int] = {}

    def call(name: str) -> None:
        results[name] = shared.get()

    first = threading.Thread(target=call, args=("first",))
    first.start()
    while shared.calls < 1:
        time.sleep(0.001)
    later = [threading.Thread(target=call, args=(f"later{k}",)) for k in range(4)]
    for thread in later:
        thread.start()
    while len(shared._cond._waiters) < 4:  # type: ignore[attr-defined]  # all four queued behind refresh 1
        time.sleep(0.001)
    release.set()
    for thread in [first, *later]:
        thread.join(30)
    assert results["first"] == 1
    # each later call arrived while refresh 1 ran: it must see a refresh begun after it (2), and they share it
    assert {results[f"later{k}"] for k in range(4)} == {2}
    assert shared.calls == 2


def test_shared_refresh_failure_reaches_the_caller_and_the_next_call_retries() -> None:
    from objbutler.service.refresh import SharedRefresh

    outcomes = iter([RuntimeError("store down"), 7])

    def refresh() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    shared = SharedRefresh(refresh)
    with pytest.raises(RuntimeError, match="store down"):
        shared.get()
    assert shared.get() == 7
