"""Zarr v3 images: round trips, cutouts against numpy and astropy, chunk accounting, stock-zarr interop."""

from __future__ import annotations

import builtins
import functools
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from astropy import units as u
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS, Sip
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import GzipCodec, ShardingCodec, TransposeCodec, ZstdCodec
from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding, V2ChunkKeyEncoding

from objbutler.cutouts import Box, ClipMode, Cutout, accepts, boxes_from_skycoords, plan_stamps
from objbutler.errors import InvalidCutoutError, NotFoundError, StoreError
from objbutler.formats import zarr_array
from objbutler.formats._image import Image
from objbutler.formats.zarr_array import (
    ZARR_JSON,
    encode_zarr,
    header_from_json,
    header_to_json,
    plan_chunks,
    read_zarr,
    read_zarr_cutouts,
    read_zarr_wcs,
    write_zarr,
    write_zarr_objects,
    zarr_checksum,
)
from objbutler.stores._base import ObjectMeta, Store
from objbutler.stores.local import LocalStore
from objbutler.stores.memory import MemoryStore
from objbutler.testing.wrappers import CountingStore

MODES: tuple[ClipMode, ...] = ("trim", "partial", "strict")
DTYPES = ["float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"]


# -- helpers --------------------------------------------------------------------


class RecordingStore(CountingStore):
    """The shared counting wrapper, also recording which keys are read whole and which prefixes listed."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.gets: list[str] = []
        self.get_many_calls: list[list[str]] = []
        self.lists: list[str] = []

    def get(self, key: str) -> bytes:
        self.gets.append(key)
        return super().get(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        self.get_many_calls.append(list(keys))
        return super().get_many(keys)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        self.lists.append(prefix)
        return super().list(prefix, start_after)

    def fetched_keys(self) -> builtins.list[str]:
        return [key for call in self.get_many_calls for key in call]


def make_wcs(shape: tuple[int, int], sip: bool = False) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.12345678901234, 2.9876543210987654]
    wcs.wcs.crpix = [shape[1] / 2 + 0.3, shape[0] / 2 - 0.7]
    wcs.wcs.cd = np.array([[-7.3e-5 / 3, 1.234567890123e-7], [1.1e-7 / 7, 7.3e-5 / 3]])
    if sip:
        a = np.zeros((3, 3))
        b = np.zeros((3, 3))
        a[2, 0], a[0, 2], b[1, 1] = 1.1e-6, -2.3e-7, 4.4e-7
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    return wcs


def make_header() -> fits.Header:
    header = fits.Header()
    header["OBJECT"] = ("M31 field", "target")
    header["EXPTIME"] = (30.000000000000004, "[s] exposure")
    header["NCOMBINE"] = 7
    header["FLAG"] = False
    header["UNDEF"] = (None, "undefined value")
    header["CPLX"] = 1.5 - 2.25j
    header["LONGSTR"] = "x" * 150
    header["HIERARCH ESO DET CHIP NAME"] = "chip 1"
    header["COMMENT"] = "a comment"
    header["HISTORY"] = "a history line"
    return header


def make_data(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype)
    if kind.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if kind.kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(kind)
    return rng.integers(info.min, info.max, size=shape, dtype=kind, endpoint=True)


def cards(header: fits.Header) -> list[tuple[str, Any, str]]:
    return [(card.keyword, card.value, card.comment) for card in header.cards]


def assert_same_wcs(got: WCS | None, want: WCS | None, rtol: float = 0.0) -> None:
    """Equal headers and equal sky positions (bit-exact unless ``rtol``: CD comes back as PC + CDELT)."""
    assert (got is None) == (want is None)
    if got is None or want is None:
        return
    assert got.to_header(relax=True) == want.to_header(relax=True)
    assert got.array_shape == want.array_shape
    pixels = np.array([[0.0, 0.0], [10.5, -3.0], [123.0, 77.0]])
    np.testing.assert_allclose(got.all_pix2world(pixels, 0), want.all_pix2world(pixels, 0), rtol=rtol, atol=0)


def expected_stamp(data: np.ndarray, box: Box, mode: ClipMode, fill_value: float) -> np.ndarray:
    """Numpy slicing of the whole image, clamped (trim) or padded (partial)."""
    ny, nx = data.shape
    y0, x0 = min(max(box.y0, 0), ny), min(max(box.x0, 0), nx)
    y1, x1 = max(y0, min(box.y1, ny)), max(x0, min(box.x1, nx))
    inside = data[y0:y1, x0:x1]
    if mode != "partial" or inside.shape == box.shape:
        return inside
    promote = not float(fill_value).is_integer() and data.dtype.kind != "f"
    dtype = np.dtype(np.float64) if promote else data.dtype  # NaN fill on an integer image: float64
    out = np.full(box.shape, fill_value, dtype=dtype)
    out[y0 - box.y0 : y1 - box.y0, x0 - box.x0 : x1 - box.x0] = inside
    return out


def written_by_zarr(root: Path, name: str, data: np.ndarray, **options: Any) -> LocalStore:
    """Write ``data`` with stock zarr into ``root/name`` and return an objbutler store on ``root``."""
    zarr.create_array(zarr.storage.LocalStore(root / name), data=data, **options)
    return LocalStore(root)


# -- header and WCS attributes --------------------------------------------------


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf"), b"\x00\xffbytes", complex(float("nan"), 1.0), 2**70]
)
def test_header_values_survive_strict_json(value: Any) -> None:
    encoded = json.loads(json.dumps(zarr_array._value_to_json(value), allow_nan=False))
    decoded = zarr_array._value_from_json(encoded)
    assert type(decoded) is type(value)
    if isinstance(value, float | complex):
        np.testing.assert_array_equal(np.array(decoded), np.array(value))
    else:
        assert decoded == value


def test_header_cards_round_trip() -> None:
    header = make_header()
    stored = json.loads(json.dumps(header_to_json(header), allow_nan=False))
    assert cards(header_from_json(stored)) == cards(header)
    assert ["ESO DET CHIP NAME", "chip 1", ""] in stored


def test_zarr_json_is_strict_json_with_documented_attributes() -> None:
    image = Image(make_data("float32", (40, 30)), make_header(), make_wcs((40, 30)))
    document = json.loads(encode_zarr(image)[ZARR_JSON], parse_constant=lambda name: pytest.fail(name))
    attributes = document["attributes"]
    assert attributes["objbutler"] == {"layout_version": 1, "all_chunks_written": True}
    assert attributes["fits_header"] == header_to_json(image.header)
    assert [card[0] for card in attributes["wcs"]][:3] == ["WCSAXES", "CRPIX1", "CRPIX2"]


# -- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_meta", [False, True])
def test_round_trip_every_dtype(dtype: str, with_meta: bool) -> None:
    shape = (300, 270)
    data = make_data(dtype, shape)
    header = make_header() if with_meta else fits.Header()
    wcs = make_wcs(shape, sip=True) if with_meta else None
    store = MemoryStore()
    keys = write_zarr(store, "repo/data/x.zarr/", Image(data, header, wcs), chunks=(128, 100))
    assert keys[-1] == "repo/data/x.zarr/zarr.json"
    assert sorted(keys) == sorted(meta.key for meta in store.list("repo/"))
    back = read_zarr(store, "repo/data/x.zarr")
    assert back.data.dtype == data.dtype and back.data.shape == shape
    np.testing.assert_array_equal(back.data, data)
    assert cards(back.header) == cards(header)
    if wcs is not None:
        wcs.array_shape = shape
    assert_same_wcs(back.wcs, wcs, rtol=1e-15)
    assert_same_wcs(read_zarr_wcs(store, "repo/data/x.zarr"), back.wcs)
    if wcs is not None:
        assert back.wcs is not None
        np.testing.assert_array_equal(back.wcs.wcs.crval, wcs.wcs.crval)
        np.testing.assert_array_equal(back.wcs.sip.a, wcs.sip.a)


def test_round_trip_big_endian_nd_and_options(tmp_path: Path) -> None:
    cube = make_data("float64", (3, 50, 70)).astype(">f8")
    store = LocalStore(tmp_path)
    write_zarr(store, "cube.zarr", Image(cube, fits.Header(), None), chunks=(32, 32), compressor=None)
    back = read_zarr(store, "cube.zarr")
    assert back.data.dtype == np.dtype("<f8")
    np.testing.assert_array_equal(back.data, cube)
    with pytest.raises(InvalidCutoutError, match="2-D"):
        read_zarr_cutouts(store, "cube.zarr", [Box(0, 0, 1, 1)])

    small = make_data("int32", (10, 7))
    objects = encode_zarr(Image(small, fits.Header(), None), compressor=ZstdCodec(level=3))
    assert sorted(objects) == ["c/0/0", ZARR_JSON]  # chunks are clipped to a small image
    write_zarr_objects(store, "small.zarr", objects)
    np.testing.assert_array_equal(read_zarr(store, "small.zarr").data, small)


def test_every_chunk_is_written_even_when_all_fill() -> None:
    data = np.zeros((64, 64), dtype="float32")
    data[:32, :32] = 1.0
    objects = encode_zarr(Image(data, fits.Header(), None), chunks=(32, 32))
    assert sorted(objects) == ["c/0/0", "c/0/1", "c/1/0", "c/1/1", ZARR_JSON]


def test_checksum() -> None:
    objects = encode_zarr(Image(make_data("uint16", (50, 50)), fits.Header(), None), chunks=(20, 20))
    checksum = zarr_checksum(objects)
    assert len(checksum) == 64
    assert zarr_checksum(dict(reversed(list(objects.items())))) == checksum
    changed = dict(objects)
    changed["c/0/0"] = changed["c/0/0"][:-1] + bytes([changed["c/0/0"][-1] ^ 1])
    assert zarr_checksum(changed) != checksum
    renamed = dict(objects)
    renamed["c/9/9"] = renamed.pop("c/0/0")
    assert zarr_checksum(renamed) != checksum


class FailingStore(MemoryStore):
    """Fails the n-th put; records the order of puts."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.puts: list[str] = []

    def put(self, key: str, data: bytes) -> ObjectMeta:
        self.puts.append(key)
        if len(self.puts) == self.fail_at:
            raise StoreError("injected failure")
        return super().put(key, data)


def test_write_puts_zarr_json_last_and_cleans_up_on_failure() -> None:
    image = Image(make_data("float32", (100, 100)), fits.Header(), None)
    store = FailingStore(fail_at=0)
    keys = write_zarr(store, "x.zarr", image, chunks=(25, 25))
    assert store.puts[-1] == "x.zarr/zarr.json" and len(keys) == 17
    failing = FailingStore(fail_at=5)
    with pytest.raises(StoreError, match="injected"):
        write_zarr(failing, "x.zarr", image, chunks=(25, 25))
    assert list(failing.list("")) == []
    assert "x.zarr/zarr.json" not in failing.puts  # a partial write never published metadata


def test_stock_zarr_reads_what_encode_zarr_wrote(tmp_path: Path) -> None:
    data = make_data("float32", (300, 200))
    image = Image(data, make_header(), make_wcs((300, 200)))
    objects = encode_zarr(image, chunks=(128, 128))
    path = tmp_path / "plain.zarr"
    for key, blob in objects.items():
        (path / key).parent.mkdir(parents=True, exist_ok=True)
        (path / key).write_bytes(blob)
    write_zarr(LocalStore(tmp_path), "via-store.zarr", image, chunks=(128, 128), shards=(256, 256))
    for opened in (
        zarr.open_array(str(path), mode="r"),
        zarr.open_array(zarr.storage.LocalStore(path), mode="r"),
        zarr.open_array(zarr.storage.LocalStore(tmp_path / "via-store.zarr"), mode="r"),
    ):
        np.testing.assert_array_equal(opened[...], data)
        assert dict(opened.attrs) == json.loads(objects[ZARR_JSON])["attributes"]


# -- pure chunk planning ----------------------------------------------------------

box_side = st.integers(-40, 340)


@st.composite
def boxes(draw: st.DrawFn) -> Box:
    x0, y0 = draw(box_side), draw(box_side)
    return Box(x0, y0, x0 + draw(st.integers(0, 90)), y0 + draw(st.integers(0, 90)))


@settings(max_examples=200, deadline=None)
@given(requested=st.lists(boxes(), max_size=8), chunk=st.tuples(st.integers(3, 70), st.integers(3, 70)))
def test_plan_chunks_is_exactly_the_touched_chunks(requested: list[Box], chunk: tuple[int, int]) -> None:
    shape = (300, 250)
    plans = plan_stamps(requested, shape, "partial")  # reads what trim reads, and takes boxes off the image
    planned = plan_chunks(plans, shape, chunk, DefaultChunkKeyEncoding())
    read = np.zeros(shape, dtype=bool)
    for plan in plans:
        read[plan.read.slices()] = True
    grid = itertools.product(range(math.ceil(shape[0] / chunk[0])), range(math.ceil(shape[1] / chunk[1])))
    touched = [(row, col) for row, col in grid if read[Box(col * chunk[1], row * chunk[0], (col + 1) * chunk[1],
                                                          (row + 1) * chunk[0]).slices()].any()]  # fmt: skip
    assert list(planned) == touched
    assert all(key == f"c/{row}/{col}" for (row, col), key in planned.items())


def test_plan_chunks_key_encodings() -> None:
    plans = plan_stamps([Box(250, 0, 260, 10)], (512, 512), "trim")
    assert plan_chunks(plans, (512, 512), (256, 256), DefaultChunkKeyEncoding()) == {(0, 0): "c/0/0", (0, 1): "c/0/1"}
    assert plan_chunks(plans, (512, 512), (256, 256), V2ChunkKeyEncoding()) == {(0, 0): "0.0", (0, 1): "0.1"}
    assert plan_chunks(plan_stamps([Box(-5, -5, -1, -1)], (512, 512), "partial"), (512, 512), (256, 256),
                       DefaultChunkKeyEncoding()) == {}  # fmt: skip


# -- cutouts against numpy and astropy ----------------------------------------------

IMAGE_SHAPE = (300, 250)


@functools.cache
def cutout_fixture() -> tuple[np.ndarray, WCS, MemoryStore]:
    """A float32 image with a SIP WCS, stored; returns the pixels, the stored WCS, the store."""
    data = make_data("float32", IMAGE_SHAPE, seed=3)
    store = MemoryStore()
    write_zarr(store, "img.zarr", Image(data, make_header(), make_wcs(IMAGE_SHAPE, sip=True)), chunks=(64, 48))
    wcs = read_zarr(store, "img.zarr").wcs
    assert wcs is not None
    return data, wcs, store


def check_stamps(stamps: list[Cutout], data: np.ndarray, requested: Sequence[Box], mode: ClipMode) -> None:
    assert [stamp.index for stamp in stamps] == list(range(len(requested)))
    for stamp, box in zip(stamps, requested, strict=True):
        want = expected_stamp(data, box, mode, np.nan)
        assert stamp.data.dtype == want.dtype
        np.testing.assert_array_equal(stamp.data, want)
        assert stamp.data.shape == stamp.bbox.shape
        if mode == "partial":
            assert stamp.bbox == box


def check_request(store: Store, prefix: str, data: np.ndarray, requested: Sequence[Box], mode: ClipMode) -> None:
    """Strict mode raises unless every box is inside; otherwise the stamps equal numpy slicing."""
    if not all(accepts(box, data.shape, mode) for box in requested):
        with pytest.raises(InvalidCutoutError):
            read_zarr_cutouts(store, prefix, requested, mode=mode)
        return
    check_stamps(read_zarr_cutouts(store, prefix, requested, mode=mode), data, requested, mode)


@settings(max_examples=60, deadline=None)
@given(requested=st.lists(boxes(), min_size=1, max_size=12), mode=st.sampled_from(MODES))
def test_cutouts_equal_numpy_slicing(requested: list[Box], mode: ClipMode) -> None:
    data, _, store = cutout_fixture()
    check_request(store, "img.zarr", data, requested, mode)


@pytest.mark.parametrize("mode", MODES)
def test_random_boxes_on_a_local_store(tmp_path: Path, mode: ClipMode) -> None:
    data = make_data("float64", (257, 190), seed=5)
    store = LocalStore(tmp_path)
    write_zarr(store, "local.zarr", Image(data, fits.Header(), None), chunks=(50, 64))
    rng = np.random.default_rng(9)
    corners, sides = rng.integers(-60, 270, size=(200, 2)), rng.integers(0, 80, size=(200, 2))
    requested = [Box(int(x), int(y), int(x + w), int(y + h)) for (x, y), (w, h) in zip(corners, sides, strict=True)]
    check_request(store, "local.zarr", data, requested, mode)
    inside = [box for box in requested if box.intersection(Box(0, 0, 190, 257)) == box]
    assert len(inside) > 20
    check_request(store, "local.zarr", data, inside, mode)
    overlapping = [box for box in requested if accepts(box, data.shape, mode)]
    check_request(store, "local.zarr", data, overlapping, mode)


def test_cutout_edge_cases() -> None:
    data, _, store = cutout_fixture()
    outside = [Box(400, 400, 410, 420), Box(-30, -30, -10, -20)]
    for box in outside:
        with pytest.raises(InvalidCutoutError, match="does not overlap"):
            read_zarr_cutouts(store, "img.zarr", [box], mode="trim")
    partial = read_zarr_cutouts(store, "img.zarr", outside, mode="partial", fill_value=-1.0)
    assert [stamp.data.shape for stamp in partial] == [(20, 10), (10, 20)]
    assert all((stamp.data == -1.0).all() for stamp in partial)
    whole = read_zarr_cutouts(store, "img.zarr", [Box(0, 0, 250, 300)], mode="strict")[0]
    np.testing.assert_array_equal(whole.data, data)
    assert read_zarr_cutouts(store, "img.zarr", []) == []


def test_partial_integer_image_promotes_for_nan_fill() -> None:
    data = make_data("int16", (100, 80))
    store = MemoryStore()
    write_zarr(store, "i.zarr", Image(data, fits.Header(), None), chunks=(32, 32))
    requested = [Box(70, 90, 90, 110), Box(10, 10, 20, 20)]
    stamps = read_zarr_cutouts(store, "i.zarr", requested, mode="partial")
    assert stamps[0].data.dtype.kind == "f" and stamps[1].data.dtype == np.int16
    check_stamps(stamps, data, requested, "partial")
    assert stamps[0].wcs is None


@pytest.mark.parametrize("mode", ["trim", "partial"])
def test_sky_cutouts_match_astropy_cutout2d(mode: ClipMode) -> None:
    data, wcs, store = cutout_fixture()
    rng = np.random.default_rng(7)
    pixels = rng.uniform(-10, [IMAGE_SHAPE[1] + 10, IMAGE_SHAPE[0] + 10], size=(40, 2))
    positions = wcs.pixel_to_world(pixels[:, 0], pixels[:, 1])
    size = (33, 24)
    stamps = read_zarr_cutouts(store, "img.zarr", boxes_from_skycoords(positions, wcs, size), mode=mode)
    for stamp, position in zip(stamps, positions, strict=True):
        reference = Cutout2D(data, position, size, wcs=wcs, mode=mode, fill_value=np.nan)
        np.testing.assert_array_equal(stamp.data, reference.data)
        assert_same_wcs(stamp.wcs, reference.wcs)


def test_sky_cutouts_with_angular_size_in_strict_mode() -> None:
    data, wcs, store = cutout_fixture()
    center = wcs.pixel_to_world(120.2, 140.7)
    size = 8 * u.arcsec  # ~91 pixels of 0.0876 arcsec
    [stamp] = read_zarr_cutouts(store, "img.zarr", boxes_from_skycoords(center, wcs, size), mode="strict")
    reference = Cutout2D(data, center, size, wcs=wcs, mode="strict")
    np.testing.assert_array_equal(stamp.data, reference.data)
    assert_same_wcs(stamp.wcs, reference.wcs)
    assert stamp.data.shape == reference.data.shape == (91, 91)


# -- request and chunk accounting ------------------------------------------------------


def test_one_stamp_in_one_chunk_fetches_one_chunk_and_zarr_json() -> None:
    _, _, store = cutout_fixture()
    counting = RecordingStore(store)
    read_zarr_cutouts(counting, "img.zarr", [Box(5, 5, 40, 40)])
    assert counting.gets == ["img.zarr/zarr.json"]
    assert counting.get_many_calls == [["img.zarr/c/0/0"]]
    assert counting.lists == [] and counting.range_calls == []


def test_many_overlapping_stamps_fetch_and_decode_each_chunk_once(monkeypatch: pytest.MonkeyPatch) -> None:
    data, _, store = cutout_fixture()
    rng = np.random.default_rng(11)
    corners = rng.integers(-20, [IMAGE_SHAPE[1], IMAGE_SHAPE[0]], size=(1000, 2))
    requested = [Box(int(x), int(y), int(x) + 32, int(y) + 32) for x, y in corners]
    regions: list[tuple[slice, ...]] = []
    real_decoder = zarr_array._decoder

    def counting_decoder(*args: Any) -> Any:
        decoder = real_decoder(*args)

        class Counting:
            dtype, shape = decoder.dtype, decoder.shape

            def __getitem__(self, region: tuple[slice, ...]) -> Any:
                regions.append(region)
                return decoder[region]

        return Counting()

    monkeypatch.setattr(zarr_array, "_decoder", counting_decoder)
    counting = RecordingStore(store)
    stamps = read_zarr_cutouts(counting, "img.zarr", requested, mode="partial")
    check_stamps(stamps, data, requested, "partial")
    assert len(counting.get_many_calls) == 1 and len(counting.gets) == 1
    fetched = counting.fetched_keys()
    assert len(fetched) == len(set(fetched)) == math.ceil(300 / 64) * math.ceil(250 / 48)
    covered = np.zeros(IMAGE_SHAPE, dtype=int)
    for rows, cols in regions:
        covered[rows, cols] += 1
    assert covered.max() == 1  # no pixel (so no chunk) decoded twice


def test_reads_arrays_written_by_stock_zarr_default_and_v2_keys(tmp_path: Path) -> None:
    data = make_data("uint16", (200, 150))
    written_by_zarr(tmp_path, "default", data, chunks=(50, 40), compressors=GzipCodec())
    written_by_zarr(tmp_path, "v2keys", data, chunks=(50, 40), chunk_key_encoding={"name": "v2", "separator": "."})
    store = written_by_zarr(tmp_path, "transposed", data, chunks=(50, 40), filters=[TransposeCodec(order=(1, 0))])
    assert (tmp_path / "v2keys" / "1.2").is_file()
    requested = [Box(10, 10, 60, 60), Box(140, 190, 160, 210), Box(-5, 30, 5, 70)]
    for name in ("default", "v2keys", "transposed"):
        back = read_zarr(store, name)
        np.testing.assert_array_equal(back.data, data)
        assert back.wcs is None and len(back.header) == 0
        for mode in ("trim", "partial"):
            check_stamps(read_zarr_cutouts(store, name, requested, mode=mode), data, requested, mode)


def test_stock_zarr_sparse_array_lists_once_and_fills(tmp_path: Path) -> None:
    data = np.zeros((128, 128), dtype="float32")
    data[70:, 70:] = make_data("float32", (58, 58))
    store = written_by_zarr(tmp_path, "sparse", data, chunks=(64, 64))
    assert not (tmp_path / "sparse" / "c" / "0" / "0").exists()  # zarr skipped the all-fill chunks
    counting = RecordingStore(store)
    requested = [Box(0, 0, 128, 128), Box(60, 60, 70, 70)]
    check_stamps(read_zarr_cutouts(counting, "sparse", requested), data, requested, "trim")
    assert counting.lists == ["sparse/"] and counting.fetched_keys() == ["sparse/c/1/1"]
    np.testing.assert_array_equal(read_zarr(store, "sparse").data, data)


def sharded_by_zarr(root: Path, index_location: str, compressors: Any = None) -> tuple[np.ndarray, LocalStore]:
    """A 300x260 float32 array in 128x128 shards of 32x32 inner chunks, written by stock zarr."""
    data = make_data("float32", (300, 260))
    data[256:, :] = 0.0  # inner chunks equal to the fill value are left out of their shards
    sharding = ShardingCodec(chunk_shape=(32, 32), codecs=[{"name": "bytes"}, ZstdCodec()],
                             index_location=index_location)  # fmt: skip
    store = written_by_zarr(root, "sharded", data, chunks=(128, 128), serializer=sharding, compressors=compressors)
    return data, store


SHARD_REQUEST = [Box(5, 5, 20, 20), Box(120, 120, 140, 136), Box(250, 250, 270, 310), Box(1, 290, 9, 299)]


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_sharded_stock_zarr_reads_only_the_inner_chunks(tmp_path: Path, index_location: str) -> None:
    data, store = sharded_by_zarr(tmp_path, index_location)
    np.testing.assert_array_equal(read_zarr(store, "sharded").data, data)
    for mode in ("trim", "partial"):
        counting = RecordingStore(store)
        check_stamps(read_zarr_cutouts(counting, "sharded", SHARD_REQUEST, mode=mode), data, SHARD_REQUEST, mode)
        assert counting.get_many_calls == [] and counting.lists == ["sharded/"]
        index_reads, inner_reads = counting.range_calls[:5], counting.range_calls[5:]
        # touched inner chunks (row, col): (0,0) (3,3) (3,4) (4,3) (4,4) (7,7) (7,8), and (8,7) (8,8) (9,7) (9,8)
        # (9,0) below row 256, all fill: zarr wrote no shard in shard row 2, so only five shards are read
        shards = ["0/0", "0/1", "1/0", "1/1", "1/2"]
        assert sorted(key for key, _ in index_reads) == [f"sharded/c/{shard}" for shard in shards]
        assert all(len(ranges) == 1 and ranges[0].length == 16 * 16 + 4 for _, ranges in index_reads)
        assert sorted(len(ranges) for _, ranges in inner_reads) == [1, 1, 1, 2, 2]
        assert sum(r.length for _, ranges in inner_reads for r in ranges) < 8 * 32 * 32 * 4


@pytest.mark.filterwarnings("ignore:Combining a `sharding_indexed` codec:UserWarning")
def test_sharded_stock_zarr_with_whole_shard_compression_reads_whole_shards(tmp_path: Path) -> None:
    data, store = sharded_by_zarr(tmp_path, "end", compressors=GzipCodec())
    counting = RecordingStore(store)
    check_stamps(read_zarr_cutouts(counting, "sharded", SHARD_REQUEST), data, SHARD_REQUEST, "trim")
    assert counting.range_calls == [] and len(counting.get_many_calls) == 1
    np.testing.assert_array_equal(read_zarr(store, "sharded").data, data)


def test_objbutler_sharded_array_round_trip_and_cutouts() -> None:
    data = make_data("int32", (300, 260))
    store = MemoryStore()
    write_zarr(store, "s.zarr", Image(data, fits.Header(), make_wcs((300, 260))), chunks=(32, 32), shards=(128, 128))
    np.testing.assert_array_equal(read_zarr(store, "s.zarr").data, data)
    counting = RecordingStore(store)
    requested = [Box(40, 40, 50, 50)]
    check_stamps(read_zarr_cutouts(counting, "s.zarr", requested), data, requested, "trim")
    assert len(counting.range_calls) == 2  # the shard index, then the one inner chunk
    assert len(counting.range_calls[1][1]) == 1


def test_missing_array_and_not_an_array(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(NotFoundError):
        read_zarr(store, "nothing.zarr")
    zarr.create_group(zarr.storage.LocalStore(tmp_path / "group.zarr"))
    with pytest.raises(ValueError, match="not Zarr v3 array"):
        read_zarr(store, "group.zarr")


def test_missing_chunk_of_objbutler_array_is_an_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    write_zarr(store, "a.zarr", Image(make_data("float32", (64, 64)), fits.Header(), None), chunks=(32, 32))
    store.delete("a.zarr/c/1/1")
    with pytest.raises(NotFoundError):
        read_zarr(store, "a.zarr")
