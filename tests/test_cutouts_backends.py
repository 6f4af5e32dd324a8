"""Vectorized get through the Butler on every backend: stamps equal astropy's Cutout2D / numpy slicing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS
from conftest import Backend

from objbutler import Box, Butler
from objbutler.cutouts import accepts
from objbutler.errors import InvalidCutoutError, NotSupportedError
from objbutler.testing.wrappers import CountingStore

SHAPE = (700, 520)


def _image() -> fits.PrimaryHDU:
    rng = np.random.default_rng(11)
    data = rng.normal(1000, 25, SHAPE).astype(np.float32)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [53.1, -27.8]
    wcs.wcs.crpix = [260.5, 350.5]
    wcs.wcs.cd = [[-5.6e-5, 2e-7], [1e-7, 5.6e-5]]
    header = wcs.to_header()
    header["FILTER"] = "i"
    return fits.PrimaryHDU(data, header=header)


def _random_boxes(rng: np.random.Generator, n: int) -> list[Box]:
    boxes = []
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(1, 80, 2))
        x0 = int(rng.integers(-100, SHAPE[1] + 20))
        y0 = int(rng.integers(-100, SHAPE[0] + 20))
        boxes.append(Box(x0, y0, x0 + w, y0 + h))
    return boxes


def _expected(data: np.ndarray, box: Box, mode: str, fill: float) -> np.ndarray:
    ny, nx = data.shape
    clipped = data[max(box.y0, 0):max(min(box.y1, ny), 0), max(box.x0, 0):max(min(box.x1, nx), 0)]
    if mode == "trim":
        return clipped
    out = np.full(box.shape, fill, dtype=np.result_type(data.dtype, np.float32))
    ys, xs = slice(max(box.y0, 0), min(box.y1, ny)), slice(max(box.x0, 0), min(box.x1, nx))
    if ys.stop > ys.start and xs.stop > xs.start:
        out[ys.start - box.y0:ys.stop - box.y0, xs.start - box.x0:xs.stop - box.x0] = data[ys, xs]
    return out


@pytest.fixture(scope="module")
def hdu() -> fits.PrimaryHDU:
    return _image()


@pytest.mark.parametrize("fmt", ["fits", "fits-rice", "zarr"])
def test_boxes_match_numpy_on_every_backend(backend: Backend, hdu: fits.PrimaryHDU, fmt: str) -> None:
    butler = Butler.create(backend.new_uri(), **backend.options)
    options = {"compression": "RICE_1"} if fmt == "fits-rice" else {}
    if fmt == "fits-rice":
        hdu = fits.PrimaryHDU(np.round(hdu.data).astype(np.int32), header=hdu.header)  # lossless RICE
    ref = butler.put(hdu, "calexp", {"visit": 1, "detector": 2}, run="r", format=fmt.split("-")[0],
                     format_options=options)
    data = butler.get(ref).data
    np.testing.assert_array_equal(data, hdu.data)
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 60)
    for mode in ("trim", "partial"):
        wanted = [box for box in boxes if accepts(box, SHAPE, mode)]  # trim refuses a box with no overlap
        stamps = butler.get_cutouts(ref, wanted, mode=mode, fill_value=-1.0)
        assert [s.bbox.shape for s in stamps] == [s.data.shape for s in stamps]
        for box, stamp in zip(wanted, stamps, strict=True):
            np.testing.assert_array_equal(stamp.data, _expected(data, box, mode, -1.0), err_msg=f"{mode} {box}")
    inside = [b for b in boxes if b.x0 >= 0 and b.y0 >= 0 and b.x1 <= SHAPE[1] and b.y1 <= SHAPE[0]]
    strict = butler.get_cutouts(ref, inside, mode="strict")
    for box, stamp in zip(inside, strict, strict=True):
        np.testing.assert_array_equal(stamp.data, data[box.slices()])
    with pytest.raises(InvalidCutoutError):
        butler.get_cutouts(ref, [Box(-5, 0, 10, 10)], mode="strict")


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
def test_sky_positions_match_cutout2d(local_backend: Backend, hdu: fits.PrimaryHDU, fmt: str) -> None:
    butler = Butler.create(local_backend.new_uri())
    ref = butler.put(hdu, "calexp", {"visit": 1}, run="r", format=fmt)
    wcs = WCS(hdu.header)
    rng = np.random.default_rng(2)
    pixels = rng.uniform(-20, [SHAPE[1] + 20, SHAPE[0] + 20], (25, 2))
    coords = wcs.pixel_to_world(pixels[:, 0], pixels[:, 1])
    for size in (33, 64 * u.pix, 7 * u.arcsec):
        stamps = butler.get_cutouts(ref, coords, size=size, mode="partial", fill_value=np.nan)
        for coord, stamp in zip(coords, stamps, strict=True):
            expected = Cutout2D(hdu.data, coord, size, wcs=wcs, mode="partial", fill_value=np.nan)
            np.testing.assert_array_equal(stamp.data, expected.data)
            np.testing.assert_allclose(stamp.wcs.wcs.crpix, expected.wcs.wcs.crpix)
            corner = stamp.wcs.pixel_to_world(0, 0)
            assert corner.separation(expected.wcs.pixel_to_world(0, 0)).arcsec < 1e-6
    assert isinstance(coords, SkyCoord)


def test_one_stamp_is_cheap_and_a_thousand_read_each_byte_once(local_backend: Backend) -> None:
    uri = local_backend.new_uri()
    Butler.create(uri)
    big = np.random.default_rng(0).normal(0, 1, (4096, 4096)).astype(np.float32)
    ref = Butler(uri).put(big, "calexp", {"visit": 1}, run="r", format="fits")
    counting = CountingStore(Butler(uri).store)
    butler = Butler(uri, store=counting)
    butler.registry.refresh()
    counting.reset()
    [stamp] = butler.get_cutouts(ref, [Box(1000, 2000, 1064, 2064)])
    np.testing.assert_array_equal(stamp.data, big[2000:2064, 1000:1064])
    assert ref.layout == {"hdu": 0, "data_start": 2880, "shape": [4096, 4096], "bitpix": -32}
    assert counting.requests == 1 and counting.bytes_read < 2_000_000  # the registry's layout: no header read
    counting.reset()
    rng = np.random.default_rng(9)
    corners = rng.integers(0, 4096 - 64, (1000, 2))
    boxes = [Box(int(x), int(y), int(x) + 64, int(y) + 64) for x, y in corners]
    stamps = butler.get_cutouts(ref, boxes)
    assert counting.bytes_read <= big.nbytes + 1_000_000
    for box, stamp in list(zip(boxes, stamps, strict=True))[:50]:
        np.testing.assert_array_equal(stamp.data, big[box.slices()])


def test_the_registry_layout_saves_the_header_read_and_bad_layouts_are_ignored(
    local_backend: Backend, hdu: fits.PrimaryHDU
) -> None:
    uri = local_backend.new_uri()
    ref = Butler.create(uri).put(hdu, "calexp", {"visit": 1}, run="r", format="fits")
    counting = CountingStore(Butler(uri).store)
    butler = Butler(uri, store=counting)
    box = Box(100, 200, 140, 260)
    expected = Cutout2D(hdu.data, (120 - 0.5, 230 - 0.5), (60, 40), wcs=WCS(hdu.header))
    counting.reset()
    [stamp] = butler.get_cutouts(ref, [box])
    assert counting.requests == 1
    np.testing.assert_array_equal(stamp.data, expected.data)
    np.testing.assert_allclose(stamp.wcs.wcs.crpix, expected.wcs.wcs.crpix)  # the header, read only now
    assert counting.requests == 2
    coords = WCS(hdu.header).pixel_to_world([50.0, 300.0], [60.0, 70.0])  # close rows: one block
    counting.reset()
    stamps = butler.get_cutouts(ref, coords, size=21)
    assert counting.requests == 2  # the header once (for the WCS), then the pixels
    assert [s.wcs is not None for s in stamps] == [True, True] and counting.requests == 2
    assert ref.layout is not None
    wrong = [{**ref.layout, "shape": [70000, 520]}, {**ref.layout, "bitpix": 7}, {"hdu": 0}, {**ref.layout, "hdu": 1},
             {**ref.layout, "shape": [-700, -520]}, {**ref.layout, "data_start": 100}, {**ref.layout, "shape": "x"}]
    for layout in wrong:  # does not fit the object, or malformed: the header is read instead
        [stamp] = butler.get_cutouts(dataclasses.replace(ref, layout=layout), [box])
        np.testing.assert_array_equal(stamp.data, expected.data)
    rice = butler.put(hdu, "calexp", {"visit": 2}, run="r", format="fits", format_options={"compression": "RICE_1"})
    assert rice.layout is None and butler.find("calexp", {"visit": 1}).layout == ref.layout


def test_cutouts_need_an_image(local_backend: Backend) -> None:
    butler = Butler.create(local_backend.new_uri())
    ref = butler.put({"a": 1}, "metric", {"visit": 1}, run="r")
    with pytest.raises(NotSupportedError):
        butler.get_cutouts(ref, [Box(0, 0, 1, 1)])


def test_get_cutouts_many(local_backend: Backend, hdu: fits.PrimaryHDU) -> None:
    butler = Butler.create(local_backend.new_uri())
    refs = [butler.put(hdu, "calexp", {"visit": v}, run="r", format=f) for v, f in [(1, "fits"), (2, "zarr")]]
    boxes = [Box(10, 10, 50, 60), Box(500, 650, 540, 720)]
    result = butler.get_cutouts_many({ref: boxes for ref in refs})
    for ref in refs:
        assert [s.data.shape for s in result[ref]] == [(50, 40), (50, 20)]
        np.testing.assert_array_equal(result[ref][0].data, hdu.data[10:60, 10:50])


def test_partial_fill_that_the_dtype_cannot_hold_promotes() -> None:
    from objbutler.cutouts import stamp_dtype

    assert stamp_dtype(np.dtype(np.int16), np.nan) == np.float64
    assert stamp_dtype(np.dtype(np.uint8), -1) == np.int16
    assert stamp_dtype(np.dtype(np.uint8), 7) == np.uint8
    assert stamp_dtype(np.dtype(np.float32), np.nan) == np.float32
    assert stamp_dtype(np.dtype(np.int32), 2**40) == np.int64
