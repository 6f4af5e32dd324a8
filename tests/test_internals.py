"""The private astropy/zarr paths of objbutler.formats._internals and their public fallbacks give the same bytes.

Every test runs twice: with the internals (when the installed versions have them) and with every flag
forced off, as a future astropy or zarr that renamed them would leave it. ``.ci/floor`` and ``.ci/run``
also run the tile-decoder test modules with ``OBJBUTLER_PUBLIC_INTERNALS=1``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

from objbutler.cutouts import Box
from objbutler.formats import _internals, as_image
from objbutler.formats.fits import decode_fits, encode_fits
from objbutler.formats.fits_cutouts import read_fits_cutouts
from objbutler.formats.fits_tiles import TileTable, image_header
from objbutler.stores.memory import MemoryStore

FLAGS = ("ASTROPY_TILE_CODECS", "ASTROPY_IMAGE_HEADER", "ASTROPY_SCALING", "ZARR_SHARD_INDEX")


@pytest.fixture(params=["internals", "public"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run with astropy's/zarr's internals, or with every feature flag off (the public fallbacks)."""
    if request.param == "public":
        for flag in FLAGS:
            monkeypatch.setattr(_internals, flag, False)
    elif not all(getattr(_internals, flag) for flag in FLAGS):
        pytest.skip("the internals are not in use (forced off, or missing from this astropy/zarr)")
    yield request.param


def compressed(data: np.ndarray, tile: tuple[int, int], **options: Any) -> bytes:
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, tile_shape=tile, **options)]).writeto(buffer)
    return buffer.getvalue()


def section(data: bytes) -> np.ndarray:
    """astropy's public decompression of the whole image (stored values, before BSCALE/BZERO)."""
    with fits.open(io.BytesIO(data), do_not_scale_image_data=True) as hdus:
        return np.asarray(hdus[1].section[:, :])


def assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert got.dtype.newbyteorder("=") == want.dtype.newbyteorder("=")
    assert np.ascontiguousarray(got, got.dtype.newbyteorder("=")).tobytes() == \
        np.ascontiguousarray(want, want.dtype.newbyteorder("=")).tobytes()


def bintable_header(data: bytes) -> tuple[fits.Header, int]:
    """The header of the first extension (the compressed image's BINTABLE) and where its data starts."""
    end = 2880 + next(i for i in range(0, len(data), 80) if data[2880 + i : 2880 + i + 8] == b"END     ") + 80
    return fits.Header.fromstring(data[2880:end].decode("ascii")), end + (-end % 2880)


def tile_table(data: bytes) -> TileTable:
    header, start = bintable_header(data)
    return TileTable.parse(header, data[start : start + header["NAXIS1"] * header["NAXIS2"]], start)


RNG = np.random.default_rng(18)
INTS = RNG.integers(-3000, 3000, size=(45, 70))
FLOATS = RNG.normal(100, 5, size=(45, 70)).astype("float32")
FLOATS[3, 4] = np.nan
FLOATS[:15, :20] = 2.5  # a constant tile: stored losslessly (GZIP_COMPRESSED_DATA), not quantized
CASES = {
    "int16 RICE_1": (INTS.astype("int16"), {"compression_type": "RICE_1"}),
    "int32 HCOMPRESS_1": (INTS.astype("int32"), {"compression_type": "HCOMPRESS_1"}),
    "int32 PLIO_1": ((INTS % 50 + 50).astype("int32"), {"compression_type": "PLIO_1"}),
    "uint8 GZIP_2": ((INTS % 256).astype("uint8"), {"compression_type": "GZIP_2"}),
    "int8 GZIP_1": ((INTS % 256 - 128).astype("int8"), {"compression_type": "GZIP_1"}),
    "uint16 RICE_1": ((INTS + 30000).astype("uint16"), {"compression_type": "RICE_1"}),
    "int64 GZIP_1": ((INTS * 2**33).astype("int64"), {"compression_type": "GZIP_1"}),
    "float32 dither1": (FLOATS, {"compression_type": "RICE_1", "quantize_method": 1, "dither_seed": 9997}),
    "float32 dither2": (FLOATS, {"compression_type": "RICE_1", "quantize_method": 2, "dither_seed": 77}),
    "float32 no dither": (FLOATS, {"compression_type": "HCOMPRESS_1", "quantize_method": -1}),
    "float64 GZIP_2 lossless": (FLOATS.astype("float64"), {"compression_type": "GZIP_2", "quantize_level": 0.0}),
    "float32 NOCOMPRESS": (FLOATS, {"compression_type": "NOCOMPRESS"}),
}


@pytest.mark.parametrize("case", CASES)
def test_tiles_decode_byte_equal_to_astropy_section(path: str, case: str) -> None:
    array, options = CASES[case]
    data = compressed(array, (15, 20), **options)  # 3 x 4 tiles, the last column and row clipped
    table = tile_table(data)
    assert table._decoder.public is (path == "public")
    want = section(data)
    for tile in range(table.grid.columns * 3):
        got = table.decode(tile, lambda start, stop: data[start:stop])
        assert_identical(got, want[table.grid.box(tile).slices()])
    store = MemoryStore()
    store.put("image.fits", data)
    whole, edge = read_fits_cutouts(store, "image.fits", [Box(0, 0, 70, 45), Box(61, 40, 75, 50)], "trim")
    with fits.open(io.BytesIO(data)) as hdus:
        scaled = hdus[1].section[:, :]
    assert_identical(whole.data, scaled)
    assert_identical(edge.data, scaled[40:, 61:])


def test_dither_rows_past_ten_thousand_tiles(path: str) -> None:
    """The dither row is ``tile + ZDITHER0``; past 10,000 the random table wraps, on both paths alike."""
    values = RNG.normal(0, 3, size=(10_050, 32)).astype("float32")
    data = compressed(values, (1, 32), compression_type="RICE_1", quantize_method=1, dither_seed=9_990)
    table = tile_table(data)
    assert "ZSCALE" in (table.rows.dtype.names or ()) and (table.rows["COMPRESSED_DATA"][9_990:, 0] > 0).all()
    with fits.open(io.BytesIO(data)) as hdus:
        want = hdus[1].section[9_990:, :]
    for tile in range(9_990, 10_050):
        assert_identical(table.decode(tile, lambda start, stop: data[start:stop]), want[tile - 9_990 : tile - 9_989])


@pytest.mark.parametrize("case", ["int16 RICE_1", "float32 dither2"])
def test_image_header_equals_astropy(path: str, case: str) -> None:
    array, options = CASES[case]
    data = compressed(array, (15, 20), **options)
    with fits.open(io.BytesIO(data)) as hdus:
        want = hdus[1].header
        got = image_header(bintable_header(data)[0])
        assert got.tostring() == want.tostring()


@pytest.mark.parametrize("index_codecs", [[BytesCodec()], [BytesCodec(), Crc32cCodec()]])
def test_shard_index_size_equals_zarr(path: str, index_codecs: list[Any]) -> None:
    codec = ShardingCodec(chunk_shape=(4, 5), index_codecs=index_codecs)
    for per_shard in [(1, 1), (3, 7), (2, 2, 2)]:
        assert _internals.shard_index_size(codec, per_shard) == codec._shard_index_size(per_shard)


def test_scaled_images_round_trip_on_both_paths(path: str) -> None:
    """With the internals the raw integers come back; without, the exact float values do."""
    raw = RNG.integers(-100, 100, size=(12, 9)).astype("int16")
    raw[2, 3] = -32768
    header = fits.Header([("BSCALE", 0.5), ("BZERO", 10.0), ("BLANK", -32768)])
    buffer = io.BytesIO()
    fits.PrimaryHDU(raw, header=header).writeto(buffer)
    with fits.open(io.BytesIO(buffer.getvalue())) as hdus:
        want = hdus[0].data.copy()
        image = as_image(hdus)
    assert (image.scaling is not None) is (path == "internals")
    again = decode_fits(encode_fits(image))
    assert_identical(again.data, want)
    with fits.open(io.BytesIO(encode_fits(image)), do_not_scale_image_data=True) as hdus:
        stored = hdus[0].data.dtype
    assert (stored.kind == "i") is (path == "internals")


def test_the_tested_versions_use_the_internals() -> None:
    """On the supported (tested) astropy and zarr the fast private paths are in use: a rename shows here."""
    if os.environ.get("OBJBUTLER_PUBLIC_INTERNALS", "").strip() not in ("", "0"):
        pytest.skip("forced off by OBJBUTLER_PUBLIC_INTERNALS")
    assert _internals.describe() == dict.fromkeys(_internals.describe(), True)


def test_no_other_module_touches_astropy_or_zarr_internals() -> None:
    """Private astropy/zarr imports and attributes appear in objbutler/formats/_internals.py only."""
    import ast
    from pathlib import Path

    known = {"_orig_bitpix", "_orig_bscale", "_orig_bzero", "_orig_blank", "_scale_internal", "_shard_index_size",
             "_bintable", "_get_raw_data", "_header_to_settings", "_decompress_tile"}
    package = Path(_internals.__file__).resolve().parents[1]
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "_internals.py" and path.parent.name == "formats":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("astropy", "zarr"):
                names = [*(node.module or "").split("."), *(alias.name for alias in node.names)]
                if any(name.startswith("_") for name in names):
                    offenders.append(f"{path.relative_to(package)}:{node.lineno} imports {node.module}")
            elif isinstance(node, ast.Attribute) and node.attr in known:
                offenders.append(f"{path.relative_to(package)}:{node.lineno} uses .{node.attr}")
            elif isinstance(node, ast.Constant) and node.value in known:
                offenders.append(f"{path.relative_to(package)}:{node.lineno} names {node.value!r}")
    assert not offenders, "\n".join(offenders)
