"""FITS writing, reading and the vectorized cutout reader against astropy (objbutler.formats.fits*)."""

from __future__ import annotations

import io
import math
import tracemalloc
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import Cutout2D, NoOverlapError
from astropy.wcs import WCS, Sip
from hypothesis import given, settings
from hypothesis import strategies as st

from objbutler.cutouts import Box, ClipMode, Cutout, accepts, plan_stamp
from objbutler.errors import FormatError, InvalidCutoutError
from objbutler.formats._image import Image
from objbutler.formats.fits import decode_fits, encode_fits
from objbutler.formats.fits_cutouts import read_fits_cutouts, read_fits_wcs, row_ranges
from objbutler.formats.fits_headers import PixelScaling
from objbutler.formats.fits_tiles import TileGrid
from objbutler.ranges import CostModel, plan_reads
from objbutler.stores._base import Store
from objbutler.stores.local import LocalStore
from objbutler.stores.memory import MemoryStore
from objbutler.testing.wrappers import CountingStore

MODES: tuple[ClipMode, ...] = ("trim", "partial", "strict")
SHAPE = (61, 83)  # odd sizes: edge tiles and rows are uneven
MIB = 1024 * 1024
BIG = 4096


# -- helpers -----------------------------------------------------------------------------------------


def make_wcs(shape: tuple[int, int], sip: bool = False) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.1234567, 2.3456789]
    wcs.wcs.crpix = [shape[1] / 2 + 0.3, shape[0] / 2 - 0.7]
    wcs.wcs.cd = np.array([[-2.4e-5, 1.2e-7], [1.1e-7, 2.4e-5]])
    if sip:
        a, b = np.zeros((3, 3)), np.zeros((3, 3))
        a[2, 0], a[0, 2], b[1, 1] = 1.1e-6, -2.3e-7, 4.4e-7
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    return wcs


def make_image(dtype: str, shape: tuple[int, int] = SHAPE, seed: int = 0, sip: bool = False) -> Image:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        data = rng.normal(100, 10, size=shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        data = rng.integers(max(info.min, -(2**40)), min(info.max, 2**40), size=shape, endpoint=True).astype(dtype)
    header = fits.Header()
    header["OBJECT"] = ("M31 field", "target")
    header["EXPTIME"] = (30.5, "[s]")
    header["HISTORY"] = "made for a test"
    return Image(data, header, make_wcs(shape, sip))


def raw_fits(raw: np.ndarray, cards: dict[str, Any] | None = None) -> bytes:
    """A one-HDU FITS file holding ``raw`` exactly as stored (no scaling by astropy on the way)."""
    bitpix = {"u1": 8, "i2": 16, "i4": 32, "i8": 64, "f4": -32, "f8": -64}[raw.dtype.str[1:]]
    header = fits.Header([("SIMPLE", True), ("BITPIX", bitpix), ("NAXIS", raw.ndim)])
    for axis, length in enumerate(reversed(raw.shape), start=1):
        header[f"NAXIS{axis}"] = length
    header.update(cards or {})
    header.extend(make_wcs(raw.shape[-2:]).to_header(), update=True)
    data = raw.astype(raw.dtype.newbyteorder(">")).tobytes()
    return header.tostring().encode("ascii") + data + b"\0" * (-len(data) % 2880)


def astropy_hdu(data: bytes, hdu: int | str | None = None) -> Any:
    hdus = fits.open(io.BytesIO(data))
    if hdu is not None:
        return hdus[hdu]
    return next(h for h in hdus if h.is_image and h.size)


def assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    """Same shape, same (native) dtype, same bits (NaNs included)."""
    assert got.shape == want.shape
    assert got.dtype == want.dtype.newbyteorder("=")
    assert got.tobytes() == np.ascontiguousarray(want, dtype=got.dtype).tobytes()


def expected_stamp(full: np.ndarray, box: Box, mode: ClipMode, fill_value: float, dtype: np.dtype[Any]) -> np.ndarray:
    """What a stamp must hold, from numpy slicing of the whole image."""
    plan = plan_stamp(0, box, full.shape, mode)
    out = np.full(plan.bbox.shape, fill_value if plan.read != plan.bbox else 0, dtype=dtype)
    out[plan.destination] = full[plan.read.slices()]
    return out


def edge_boxes(shape: tuple[int, int], size: int = 9) -> list[Box]:
    """Boxes inside, straddling each edge and corner, fully outside, empty, and the whole image."""
    ny, nx = shape
    out = []
    for x0 in (-size - 3, -size // 2, 0, nx // 3, nx - size, nx - size // 2, nx + 2):
        for y0 in (-size - 3, -size // 2, 0, ny // 2, ny - size, ny - size // 2, ny + 2):
            out.append(Box(x0, y0, x0 + size, y0 + size))
    out += [Box(0, 0, nx, ny), Box(-5, -5, nx + 5, ny + 5), Box(4, 4, 4, 9), Box(3, 7, 20, 8)]
    return out


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    yield MemoryStore() if request.param == "memory" else LocalStore(tmp_path / "store")


def put(store: Store, data: bytes, key: str = "data/image.fits") -> str:
    store.put(key, data)
    return key


def check_cutouts(store: Store, key: str, reference: Any, boxes: list[Box], fill_value: float = np.nan) -> None:
    """Stamps in every mode equal numpy slicing of astropy's whole image, with shifted WCSs."""
    full = reference.data
    parent_wcs = WCS(reference.header)
    for mode in MODES:
        usable = [b for b in boxes if accepts(b, full.shape, mode)]
        stamps = read_fits_cutouts(store, key, usable, mode, fill_value)
        assert [s.index for s in stamps] == list(range(len(usable)))
        for box, stamp in zip(usable, stamps, strict=True):
            plan = plan_stamp(0, box, full.shape, mode)
            assert stamp.bbox == plan.bbox
            assert_identical(stamp.data, expected_stamp(full, box, mode, fill_value, stamp.data.dtype))
            if plan.read == plan.bbox:
                assert stamp.data.dtype == full.dtype.newbyteorder("=")
            assert stamp.wcs is not None
            np.testing.assert_allclose(stamp.wcs.wcs.crpix, parent_wcs.wcs.crpix - [plan.bbox.x0, plan.bbox.y0])


# -- uncompressed: every BITPIX, scaling, BLANK ---------------------------------------------------------

DTYPES = ["uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cutouts_equal_numpy_slicing_for_every_dtype(store: Store, dtype: str) -> None:
    data = encode_fits(make_image(dtype))
    key = put(store, data)
    fill = np.nan if dtype.startswith("float") else 7
    check_cutouts(store, key, astropy_hdu(data), edge_boxes(SHAPE), fill)


SCALED: list[tuple[str, dict[str, Any]]] = [
    ("u1", {}),
    ("u1", {"BZERO": -128}),  # signed bytes
    ("u1", {"BSCALE": 0.1, "BLANK": 255}),
    ("i2", {}),
    ("i2", {"BZERO": 32768}),  # uint16
    ("i2", {"BSCALE": 0.5, "BZERO": 100.0}),
    ("i2", {"BLANK": -32768}),  # unscaled ints with BLANK become float32 with NaN, as astropy does
    ("i2", {"BSCALE": 2, "BZERO": -3, "BLANK": 7}),
    ("i2", {"BSCALE": 1.5, "BLANK": 0}),  # BLANK = 0: astropy leaves those pixels alone
    ("i2", {"BSCALE": 1.0, "BZERO": 32768, "BLANK": 5}),  # unsigned convention ignores BLANK
    ("i2", {"BLANK": 3.5}),  # a non-integer BLANK is ignored
    ("i4", {}),
    ("i4", {"BZERO": 2**31}),  # uint32
    ("i4", {"BSCALE": 1.5, "BZERO": 0.25, "BLANK": -1}),
    ("i8", {}),
    ("i8", {"BZERO": 2**63}),  # uint64
    ("i8", {"BSCALE": 1e-3}),
    ("f4", {}),
    ("f4", {"BSCALE": 2.0, "BZERO": 1.0}),
    ("f4", {"BLANK": 0}),  # BLANK on floats is ignored
    ("f8", {}),
    ("f8", {"BZERO": -7.5}),
]


@pytest.mark.parametrize(("code", "cards"), SCALED, ids=[f"{c}-{sorted(k.items())}" for c, k in SCALED])
def test_scaling_and_blank_decode_as_astropy_does(store: Store, code: str, cards: dict[str, Any]) -> None:
    rng = np.random.default_rng(7)
    dtype = np.dtype(code)
    if dtype.kind == "f":
        raw = rng.normal(0, 1e3, size=SHAPE).astype(dtype)
        raw[3, 4] = np.nan
    else:
        info = np.iinfo(dtype)
        raw = rng.integers(info.min, info.max, size=SHAPE, endpoint=True, dtype=dtype)
        raw[::7, ::5] = cards.get("BLANK", 0) if isinstance(cards.get("BLANK"), int) else 0
    data = raw_fits(raw, cards)
    key = put(store, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy warns about the invalid BLANKs on purpose
        reference = astropy_hdu(data, 0)
        full = reference.data
        for box in [*edge_boxes(SHAPE)[:12], Box(0, 0, SHAPE[1], SHAPE[0])]:
            if not accepts(box, SHAPE, "trim"):
                continue
            (stamp,) = read_fits_cutouts(store, key, [box])
            read = box.intersection(Box(0, 0, SHAPE[1], SHAPE[0]))
            assert_identical(stamp.data, full[read.slices()])
            if not read.is_empty:
                try:
                    section = reference.section[read.slices()]
                except IndexError:  # astropy's .section fails on rows with few BLANKs; .data is the reference
                    continue
                assert_identical(stamp.data, section)
        assert_identical(decode_fits(data).data, full)


def test_pixel_scaling_dtype_matches_astropy_section_dtype() -> None:
    assert PixelScaling(16, 1, 32768).dtype == np.dtype("uint16")
    assert PixelScaling(8, 1, -128).dtype == np.dtype("int8")
    assert PixelScaling(16, 0.5, 0).dtype == np.dtype("float32")
    assert PixelScaling(32, 2, 0).dtype == np.dtype("float64")
    assert PixelScaling(-32).dtype == np.dtype("float32")
    assert PixelScaling(64).dtype == np.dtype("int64")


# -- geometry: random boxes, Cutout2D and WCS -----------------------------------------------------------

_GEOMETRY_STORE = MemoryStore()
_GEOMETRY_IMAGE = make_image("float32", shape=(70, 90), seed=3, sip=True)
_GEOMETRY_KEY = put(_GEOMETRY_STORE, encode_fits(_GEOMETRY_IMAGE), "geometry.fits")


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-40, 120), st.integers(-40, 100), st.integers(0, 40), st.integers(0, 40)),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from(["trim", "partial"]),
)
def test_random_boxes_equal_numpy_slicing(corners: list[tuple[int, int, int, int]], mode: ClipMode) -> None:
    boxes = [Box(x, y, x + w, y + h) for x, y, w, h in corners]
    full = _GEOMETRY_IMAGE.data
    if not all(accepts(box, full.shape, mode) for box in boxes):
        with pytest.raises(InvalidCutoutError, match="does not overlap"):
            read_fits_cutouts(_GEOMETRY_STORE, _GEOMETRY_KEY, boxes, mode, fill_value=-2.5)
        return
    stamps = read_fits_cutouts(_GEOMETRY_STORE, _GEOMETRY_KEY, boxes, mode, fill_value=-2.5)
    for box, stamp in zip(boxes, stamps, strict=True):
        assert_identical(stamp.data, expected_stamp(full, box, mode, -2.5, full.dtype))


@settings(max_examples=80, deadline=None)
@given(
    st.floats(-20, 110, allow_nan=False),
    st.floats(-20, 90, allow_nan=False),
    st.integers(1, 30),
    st.integers(1, 30),
    st.sampled_from(MODES),
)
def test_stamps_and_wcs_match_cutout2d(x: float, y: float, ny: int, nx: int, mode: ClipMode) -> None:
    full, wcs = _GEOMETRY_IMAGE.data, _GEOMETRY_IMAGE.wcs
    assert wcs is not None
    x0, y0 = math.ceil(x - nx / 2), math.ceil(y - ny / 2)  # astropy's overlap_slices rounding
    box = Box(x0, y0, x0 + nx, y0 + ny)
    try:
        reference = Cutout2D(full, (x, y), (ny, nx), wcs=wcs, mode=mode, fill_value=np.nan, copy=True)
    except (NoOverlapError, ValueError) as exc:  # no overlap, or not wholly inside in strict mode
        if mode in ("strict", "trim"):  # trim: objbutler refuses no overlap as Cutout2D does
            with pytest.raises(InvalidCutoutError):
                read_fits_cutouts(_GEOMETRY_STORE, _GEOMETRY_KEY, [box], mode)
        else:
            assert isinstance(exc, NoOverlapError)
        return
    (stamp,) = read_fits_cutouts(_GEOMETRY_STORE, _GEOMETRY_KEY, [box], mode)
    assert_identical(stamp.data, reference.data)
    assert stamp.wcs is not None
    np.testing.assert_allclose(stamp.wcs.wcs.crpix, reference.wcs.wcs.crpix)
    np.testing.assert_allclose(stamp.wcs.sip.crpix, reference.wcs.sip.crpix)
    for px, py in ((0, 0), (stamp.data.shape[1] - 1, stamp.data.shape[0] - 1)):
        mine, theirs = stamp.wcs.pixel_to_world(px, py), reference.wcs.pixel_to_world(px, py)
        assert mine.separation(theirs).arcsec < 1e-6
        parent = wcs.pixel_to_world(px + stamp.bbox.x0, py + stamp.bbox.y0)
        assert mine.separation(parent).arcsec < 1e-6


@pytest.mark.parametrize("concurrency", [1, 3, 8, 64])
def test_stamps_are_exact_when_blocks_cut_through_rows(concurrency: int) -> None:
    cost = CostModel(latency=1e-3, bandwidth=1e6, concurrency=concurrency)  # 1 kB break-even: many small blocks
    boxes = [Box(-5, -5, 95, 75), Box(10, 3, 80, 60), Box(33, 33, 34, 70)]
    full = _GEOMETRY_IMAGE.data
    reads = [plan_stamp(0, box, full.shape, "partial").read for box in boxes]
    assert len(plan_reads(row_ranges(reads, 90, 4, 0), cost).blocks) >= min(concurrency, 8)  # blocks cut rows
    stamps = read_fits_cutouts(_GEOMETRY_STORE, _GEOMETRY_KEY, boxes, "partial", cost=cost)
    for box, stamp in zip(boxes, stamps, strict=True):
        assert_identical(stamp.data, expected_stamp(full, box, "partial", np.nan, full.dtype))


def test_boxes_with_no_overlap_raise_in_trim_and_give_fill_only_stamps_in_partial(store: Store) -> None:
    image = make_image("float32")
    key = put(store, encode_fits(image))
    outside = [Box(-50, -50, -40, -40), Box(SHAPE[1] + 5, 3, SHAPE[1] + 15, 13)]
    for box in outside:
        with pytest.raises(NoOverlapError):  # astropy gives up in trim mode, and so does objbutler
            Cutout2D(image.data, (box.x0 + 5, box.y0 + 5), (10, 10), mode="trim")
        with pytest.raises(InvalidCutoutError, match="does not overlap"):
            read_fits_cutouts(store, key, [Box(0, 0, 3, 3), box], "trim")
    padded = read_fits_cutouts(store, key, outside, "partial", fill_value=-9.0)
    assert all(s.data.shape == (10, 10) and (s.data == -9.0).all() for s in padded)
    with pytest.raises(InvalidCutoutError):
        read_fits_cutouts(store, key, outside[:1], "strict")
    with pytest.raises(InvalidCutoutError):
        read_fits_cutouts(store, key, [Box(0, 0, 5, 5)], "sideways")  # type: ignore[arg-type]


def test_integer_image_partial_with_nan_fill_promotes_to_float(store: Store) -> None:
    image = make_image("int16")
    key = put(store, encode_fits(image))
    (stamp,) = read_fits_cutouts(store, key, [Box(-2, -2, 3, 3)], "partial")
    assert stamp.data.dtype.kind == "f"  # new_stamp promotes so the NaN fits
    assert np.isnan(stamp.data[:2]).all()
    assert (stamp.data[2:, 2:] == image.data[:3, :3]).all()


def test_row_ranges_follow_the_fits_layout() -> None:
    ranges = row_ranges([Box(2, 1, 5, 3), Box(0, 0, 0, 4)], nx=10, itemsize=4, data_start=2880)
    assert ranges.tolist() == [[2880 + 48, 2880 + 60], [2880 + 88, 2880 + 100]]


# -- HDU selection, headers, errors --------------------------------------------------------------------


def multi_hdu_file() -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    sci = rng.normal(size=(40, 50)).astype("float32")
    err = rng.integers(0, 1000, size=(40, 50)).astype("int32")
    table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.arange(5.0))], name="CAT")
    hdus = fits.HDUList(
        [
            fits.PrimaryHDU(),
            table,
            fits.ImageHDU(sci, header=make_wcs(sci.shape).to_header(), name="SCI"),
            fits.ImageHDU(err, name="ERR"),
        ]
    )
    for index in range(400):  # a long primary header: ~11 blocks, read in growing chunks
        hdus[0].header[f"KEY{index}"] = index
    buffer = io.BytesIO()
    hdus.writeto(buffer)
    return buffer.getvalue(), {"SCI": sci, "ERR": err}


def test_named_and_indexed_extensions(store: Store) -> None:
    data, planes = multi_hdu_file()
    key = put(store, data)
    box = Box(3, 4, 20, 30)
    for selector, name in ((None, "SCI"), (2, "SCI"), ("sci", "SCI"), ("ERR", "ERR"), (3, "ERR")):
        (stamp,) = read_fits_cutouts(store, key, [box], hdu=selector)
        assert_identical(stamp.data, planes[name][box.slices()])
    assert read_fits_wcs(store, key) is not None
    assert read_fits_wcs(store, key, hdu="ERR") is None
    assert_identical(decode_fits(data).data, planes["SCI"])
    assert_identical(decode_fits(data, hdu="ERR").data, planes["ERR"])
    for selector in (1, "CAT"):
        with pytest.raises(FormatError, match="not an image"):
            read_fits_cutouts(store, key, [box], hdu=selector)
        with pytest.raises(FormatError):
            decode_fits(data, hdu=selector)
    for selector in (9, "NOPE"):
        with pytest.raises(FormatError, match="no HDU"):
            read_fits_cutouts(store, key, [box], hdu=selector)
        with pytest.raises(FormatError):
            decode_fits(data, hdu=selector)
    with pytest.raises(FormatError, match="0-D"):
        read_fits_cutouts(store, key, [box], hdu=0)


def test_not_fits_truncated_and_non_2d_are_format_errors(store: Store) -> None:
    data = encode_fits(make_image("float32"))
    cases = {
        "junk.fits": b"hello world " * 1000,
        "empty.fits": b"",
        "half-header.fits": data[:1000],
        "no-end.fits": data[:2880].replace(b"END     ", b"XEND    "),
        "half-data.fits": data[: len(data) // 2],
    }
    for key, payload in cases.items():
        store.put(key, payload)
        with pytest.raises(FormatError):
            read_fits_cutouts(store, key, [Box(0, 0, SHAPE[1], SHAPE[0])])
        with pytest.raises(FormatError):
            decode_fits(payload)
    cube = put(store, encode_fits(Image(np.zeros((2, 3, 4), "float32"), fits.Header(), None)), "cube.fits")
    with pytest.raises(FormatError, match="3-D"):
        read_fits_cutouts(store, cube, [Box(0, 0, 1, 1)])
    only_header = put(store, encode_fits(Image(np.zeros((0, 0), "float32"), fits.Header(), None)), "empty-image.fits")
    with pytest.raises(FormatError, match="no image HDU"):
        read_fits_cutouts(store, only_header, [Box(0, 0, 1, 1)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_encode_decode_round_trip(dtype: str) -> None:
    image = make_image(dtype, sip=True)
    data = encode_fits(image)
    with fits.open(io.BytesIO(data)) as hdus:  # astropy opens the bytes as they are
        assert hdus[0].data.shape == SHAPE
    back = decode_fits(data)
    assert back.data.dtype == np.dtype(dtype) and back.data.dtype.isnative
    assert back.data.tobytes() == image.data.tobytes()
    assert back.header["OBJECT"] == "M31 field" and back.header.comments["EXPTIME"] == "[s]"
    assert list(back.header["HISTORY"]) == ["made for a test"]
    assert back.wcs is not None and image.wcs is not None
    np.testing.assert_array_equal(back.wcs.wcs.crpix, image.wcs.wcs.crpix)
    np.testing.assert_array_equal(back.wcs.pixel_scale_matrix, image.wcs.pixel_scale_matrix)
    np.testing.assert_array_equal(back.wcs.sip.a, image.wcs.sip.a)


# -- tile-compressed FITS -------------------------------------------------------------------------------

COMPRESSED = [
    ("float32", "GZIP_1"),
    ("float64", "GZIP_2"),
    ("float32", "RICE_1"),  # quantized with dithering: lossy, compared with astropy's decompression
    ("float32", "HCOMPRESS_1"),
    ("int16", "RICE_1"),
    ("uint16", "RICE_1"),
    ("uint16", "HCOMPRESS_1"),
    ("int32", "HCOMPRESS_1"),
    ("uint8", "GZIP_2"),
    ("int8", "GZIP_1"),
    ("uint32", "GZIP_2"),
    ("int64", "GZIP_1"),
]


@pytest.mark.parametrize(("dtype", "compression"), COMPRESSED)
def test_compressed_cutouts_equal_astropy_decompression(store: Store, dtype: str, compression: str) -> None:
    image = make_image(dtype)
    if dtype.startswith("float"):
        image.data[5, 6] = np.nan
    data = encode_fits(image, compression, tile_shape=(16, 24))
    key = put(store, data)
    reference = astropy_hdu(data)
    assert isinstance(reference, fits.CompImageHDU)
    if compression in ("GZIP_1", "GZIP_2") or not dtype.startswith("float"):
        assert_identical(reference.data, image.data)  # lossless
    fill = np.nan if dtype.startswith("float") else 0
    check_cutouts(store, key, reference, edge_boxes(SHAPE), fill)
    assert_identical(decode_fits(data).data, reference.data)
    wcs = read_fits_wcs(store, key)
    assert wcs is not None
    np.testing.assert_array_equal(wcs.wcs.crpix, image.wcs.wcs.crpix)  # type: ignore[union-attr]


def test_compressed_files_written_by_astropy_with_row_tiles_and_scaling(store: Store) -> None:
    rng = np.random.default_rng(11)
    raw = rng.integers(-1000, 1000, size=SHAPE).astype("int16")
    raw[::9, ::4] = -32768
    header = make_wcs(SHAPE).to_header()
    hdu = fits.CompImageHDU(raw, header=header, compression_type="RICE_1", name="SCI")  # default row tiles
    hdu.header["BSCALE"], hdu.header["BZERO"], hdu.header["BLANK"] = 0.5, 10.0, -32768
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buffer)
    data = buffer.getvalue()
    key = put(store, data)
    reference = astropy_hdu(data, "SCI")
    assert reference.data.dtype.kind == "f" and np.isnan(reference.data).any()
    check_cutouts(store, key, reference, edge_boxes(SHAPE))


@settings(max_examples=200, deadline=None)
@given(
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    st.tuples(st.integers(1, 9), st.integers(1, 9)),
    st.data(),
)
def test_tile_grid_lists_exactly_the_tiles_a_box_touches(
    shape: tuple[int, int], tile: tuple[int, int], data: st.DataObject
) -> None:
    grid = TileGrid(shape, tile)
    count = grid.columns * -(-shape[0] // tile[0])
    x0, x1 = sorted(data.draw(st.tuples(st.integers(0, shape[1]), st.integers(0, shape[1]))))
    y0, y1 = sorted(data.draw(st.tuples(st.integers(0, shape[0]), st.integers(0, shape[0]))))
    read = Box(x0, y0, x1, y1)
    covered = np.zeros(shape, dtype=bool)
    covered[read.slices()] = True
    touching = [row for row in range(count) if covered[grid.box(row).slices()].any()]
    assert grid.rows(read) == touching
    tiles = np.zeros(shape, dtype=int)
    for row in range(count):
        tiles[grid.box(row).slices()] += 1
    assert (tiles == 1).all()  # the tiles partition the image


def test_plio_and_lossless_fallback_tiles_written_by_astropy(store: Store) -> None:
    """PLIO_1 (integer masks), and float tiles that would not quantize (stored GZIP_1 or raw by astropy)."""
    rng = np.random.default_rng(5)
    mask = rng.integers(0, 40, size=SHAPE).astype("int32")
    floats = rng.normal(0, 5, size=SHAPE).astype("float32")
    floats[:16, :24] = 7.25  # a constant tile: zero noise, so it is stored losslessly instead of quantized
    floats[20:30, 30:40] = np.nan
    hdus = [fits.PrimaryHDU(), fits.CompImageHDU(mask, compression_type="PLIO_1", tile_shape=(16, 24), name="MASK")]
    hdus.append(fits.CompImageHDU(floats, compression_type="RICE_1", tile_shape=(16, 24), name="SCI"))
    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer)
    key = put(store, buffer.getvalue())
    sci = astropy_hdu(buffer.getvalue(), "SCI")
    fallback = [name for name in ("GZIP_COMPRESSED_DATA", "UNCOMPRESSED_DATA") if name in sci._bintable.columns.names]
    assert fallback and sci._bintable.data[fallback[0]][0][0] > 0  # tile 0 really is stored losslessly
    for name in ("MASK", "SCI"):
        reference = astropy_hdu(buffer.getvalue(), name).data
        boxes = [box for box in [Box(0, 0, SHAPE[1], SHAPE[0]), *edge_boxes(SHAPE)] if accepts(box, SHAPE, "trim")]
        for box, stamp in zip(boxes, read_fits_cutouts(store, key, boxes, hdu=name), strict=True):
            assert stamp.bbox == box.intersection(Box(0, 0, SHAPE[1], SHAPE[0]))
            assert_identical(stamp.data, reference[stamp.bbox.slices()])
    assert_identical(sci.data[:16, :24], floats[:16, :24])


@pytest.mark.parametrize("compression", ["RICE_1", "GZIP_2", "HCOMPRESS_1"])
def test_tiles_decoded_on_threads_equal_astropy_every_time(compression: str) -> None:
    """Hundreds of tiles decoded concurrently, many times: any shared state in a codec would show."""
    image = make_image("float32", shape=(320, 320), seed=9)
    data = encode_fits(image, compression, tile_shape=(20, 20))
    store = MemoryStore()
    key = put(store, data)
    reference = astropy_hdu(data).data
    for _ in range(8):
        (whole,) = read_fits_cutouts(store, key, [Box(0, 0, 320, 320)])
        assert_identical(whole.data, reference)


@pytest.mark.parametrize("compression", ["RICE_1", "GZIP_1"])
def test_a_corrupt_tile_is_a_format_error(compression: str) -> None:
    image = make_image("int32", shape=(128, 128), seed=2)
    data = bytearray(encode_fits(image, compression, tile_shape=(32, 32)))
    with fits.open(io.BytesIO(bytes(data))) as hdus:
        heap = hdus[1]._bintable._data_offset + hdus[1]._bintable._theap
    data[heap + 5 : heap + 400] = bytes(395)  # zero the start of the first tiles
    store = MemoryStore()
    key = put(store, bytes(data))
    with pytest.raises(FormatError, match="does not decode"):
        read_fits_cutouts(store, key, [Box(0, 0, 128, 128)])
    assert store.get(key) == bytes(data)


def test_compressed_reads_fetch_only_the_tiles_touched(store: Store) -> None:
    image = make_image("int32", shape=(512, 512), seed=4)
    data = encode_fits(image, "RICE_1", tile_shape=(64, 64))
    counting = CountingStore(store)
    key = put(store, data)
    (stamp,) = read_fits_cutouts(counting, key, [Box(100, 100, 120, 120)])  # inside one tile
    assert_identical(stamp.data, image.data[100:120, 100:120])
    assert counting.requests == 2  # headers and tile table in one read, then the tile
    with fits.open(io.BytesIO(data)) as hdus:
        header = hdus[1]._bintable.header
        tile_bytes = int(hdus[1]._bintable.data["COMPRESSED_DATA"][(100 // 64) * 8 + 100 // 64][0])  # (count, offset)
        table_end = hdus[1]._bintable._data_offset + header["NAXIS1"] * header["NAXIS2"]
    assert table_end < 66240 < len(data) / 4  # the first read holds the table, not the image
    assert counting.bytes_read == 66240 + tile_bytes


def test_compressed_float_policy_is_documented() -> None:
    image = make_image("float32")
    for compression in ("GZIP_1", "GZIP_2"):
        assert_identical(decode_fits(encode_fits(image, compression)).data, image.data)
    lossy = decode_fits(encode_fits(image, "RICE_1")).data
    assert not np.array_equal(lossy, image.data)
    np.testing.assert_allclose(lossy, image.data, atol=2.0)  # 1/16 of the noise (sigma 10) per level
    with pytest.raises(ValueError, match="compression"):
        encode_fits(image, "PLIO_9")


# -- request accounting and memory on a 4096x4096 float32 image ---------------------------------------


@pytest.fixture(scope="module")
def big_fits() -> tuple[bytes, np.ndarray]:
    data = np.random.default_rng(1).normal(size=(BIG, BIG)).astype("float32")
    return encode_fits(Image(data, fits.Header(), make_wcs((BIG, BIG)))), data


def random_boxes(count: int, seed: int, size: int = 64) -> list[Box]:
    corners = np.random.default_rng(seed).integers(-size // 2, BIG - size // 2, size=(count, 2)).tolist()
    return [Box(x, y, x + size, y + size) for x, y in corners]


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_request_and_byte_accounting(big_fits: tuple[bytes, np.ndarray], kind: str, tmp_path: Any) -> None:
    data, full = big_fits
    inner: Store = MemoryStore() if kind == "memory" else LocalStore(tmp_path)
    key = put(inner, data)
    for cost in (None, CostModel.cloud()):
        counting = CountingStore(inner)
        (stamp,) = read_fits_cutouts(counting, key, [Box(1000, 2000, 1064, 2064)], cost=cost)
        assert_identical(stamp.data, full[2000:2064, 1000:1064])
        assert counting.requests <= 3
        assert counting.bytes_read < 2 * MIB

        counting = CountingStore(inner)
        boxes = random_boxes(1000, seed=2)
        stamps = read_fits_cutouts(counting, key, boxes, cost=cost)
        assert counting.bytes_read <= full.nbytes + MIB
        assert counting.calls["get_ranges"] <= 2  # the header, then every block in one call
        for box, stamp in zip(boxes, stamps, strict=True):
            assert_identical(stamp.data, full[box.intersection(Box(0, 0, BIG, BIG)).slices()])


def test_a_thousand_stamps_do_not_copy_the_image_several_times(big_fits: tuple[bytes, np.ndarray]) -> None:
    data, full = big_fits
    store = MemoryStore()
    key = put(store, data)
    boxes = random_boxes(1000, seed=9)
    tracemalloc.start()
    try:
        stamps: list[Cutout] = read_fits_cutouts(store, key, boxes, cost=CostModel.cloud())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(stamps) == 1000
    assert peak < 2.5 * full.nbytes
