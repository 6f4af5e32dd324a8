"""The one place objbutler touches private astropy and zarr APIs, each behind a feature check.

Four things have no public API, so objbutler uses the libraries' internals for them:

* decoding one tile of a tile-compressed FITS image from its heap bytes
  (``astropy.io.fits.hdu.compressed._tiled_compression`` and ``._quantization``);
* the image header a compressed BINTABLE header stands for
  (``astropy.io.fits.hdu.compressed.header._bintable_header_to_image_header``);
* the integer storage astropy read a scaled image from (``_orig_bitpix``,
  ``_orig_bscale``, ``_orig_bzero``, ``_orig_blank``) and its rescaling with a
  BLANK value (``_ImageBaseHDU._scale_internal``);
* the byte size of a zarr shard index (``ShardingCodec._shard_index_size``).

At import each is checked: does the private name exist, with the parameters
objbutler calls it with? The results are the module flags below. When a check
fails (a future astropy or zarr renamed its internals), the functions here fall
back to public APIs that give the same result more slowly:

* a tile is decoded by building a one-tile compressed HDU around its bytes and
  reading it through the public ``CompImageHDU.section``;
* the image header is that of a ``CompImageHDU`` opened from the BINTABLE
  header alone (``CompImageHDU.header``);
* the shard index size is computed from the codec's public metadata
  (16 bytes per inner chunk, plus 4 for a ``crc32c`` index codec);
* without the scaling internals, scaled images are kept as floats (their
  values are exact; the raw-integer storage is not reproduced).

Setting the environment variable ``OBJBUTLER_PUBLIC_INTERNALS=1`` before import
turns every flag off, which is how the test suite and ``.ci/floor`` run the
fallbacks on the installed versions. Tests may also monkeypatch a flag: every
function reads the flags when called.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from math import prod
from typing import Any

import numpy as np
from astropy.io import fits

from objbutler.errors import FormatError

__all__ = [
    "ASTROPY_IMAGE_HEADER",
    "ASTROPY_SCALING",
    "ASTROPY_TILE_CODECS",
    "ZARR_SHARD_INDEX",
    "TileDecoder",
    "image_header",
    "original_scaling",
    "rescale",
    "shard_index_size",
    "tile_decoder",
]

_FORCED_PUBLIC = os.environ.get("OBJBUTLER_PUBLIC_INTERNALS", "").strip() not in ("", "0")


def _has_parameters(function: Any, *names: str) -> bool:
    """Whether ``function`` is callable with keyword/positional parameters ``names`` (a signature check)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return all(name in parameters for name in names)


# --------------------------------------------------------------------- feature checks (at import)

try:
    from astropy.io.fits.hdu.compressed._quantization import DITHER_METHODS as _DITHER_METHODS
    from astropy.io.fits.hdu.compressed._quantization import Quantize as _Quantize
    from astropy.io.fits.hdu.compressed._tiled_compression import (
        _decompress_tile,
        _finalize_array,
        _header_to_settings,
        _update_tile_settings,
    )

    _tile_codecs = (
        _has_parameters(_decompress_tile, "buf", "algorithm")
        and _has_parameters(_finalize_array, "tile_buffer", "bitpix", "tile_shape", "algorithm", "lossless")
        and _has_parameters(_header_to_settings, "header")
        and _has_parameters(_update_tile_settings, "settings", "compression_type", "actual_tile_shape")
        and _has_parameters(_Quantize, "row", "dither_method", "quantize_level", "bitpix")
        and _has_parameters(_Quantize.decode_quantized, "buf", "scale", "zero")
        and {"NO_DITHER", "SUBTRACTIVE_DITHER_1", "SUBTRACTIVE_DITHER_2"} <= set(_DITHER_METHODS)
    )
except ImportError:
    _tile_codecs = False

try:
    from astropy.io.fits.hdu.compressed.header import _bintable_header_to_image_header

    _image_header = _has_parameters(_bintable_header_to_image_header, "bintable_header")
except ImportError:
    _image_header = False

_scaling = all(hasattr(fits.ImageHDU(), name) for name in ("_orig_bitpix", "_orig_bscale", "_orig_bzero",
                                                            "_orig_blank")) and _has_parameters(
    getattr(fits.ImageHDU, "_scale_internal", None), "type", "bscale", "bzero", "blank")

try:
    from zarr.codecs import ShardingCodec as _ShardingCodec

    _shard_index = _has_parameters(getattr(_ShardingCodec, "_shard_index_size", None), "chunks_per_shard")
except ImportError:  # pragma: no cover - zarr 3 always has ShardingCodec
    _shard_index = False

ASTROPY_TILE_CODECS: bool = _tile_codecs and not _FORCED_PUBLIC
"""astropy's private tile codecs and dequantizer are there, with the expected signatures."""
ASTROPY_IMAGE_HEADER: bool = _image_header and not _FORCED_PUBLIC
"""astropy's private BINTABLE-to-image header conversion is there."""
ASTROPY_SCALING: bool = _scaling and not _FORCED_PUBLIC
"""astropy HDUs keep ``_orig_bitpix``/``_orig_bscale``/``_orig_bzero``/``_orig_blank`` and ``_scale_internal``."""
ZARR_SHARD_INDEX: bool = _shard_index and not _FORCED_PUBLIC
"""zarr's ``ShardingCodec._shard_index_size`` is there."""


# --------------------------------------------------------------------- compressed image header


_PRIMARY = fits.PrimaryHDU().header.tostring().encode("ascii")


def _fits_bytes(header: fits.Header, data: bytes = b"") -> bytes:
    """An empty primary HDU followed by one extension (``header`` and its padded ``data``)."""
    padded = data + b"\0" * (-len(data) % 2880)
    return _PRIMARY + header.tostring().encode("ascii") + padded


_TABLE_ONLY_CARDS = ("THEAP", "CHECKSUM", "DATASUM")


def image_header(bintable_header: fits.Header) -> fits.Header:
    """The image header a compressed HDU's BINTABLE header stands for (ZBITPIX -> BITPIX, ...), as astropy has it.

    Parameters
    ----------
    bintable_header : astropy.io.fits.Header
        The header of the BINTABLE (ZIMAGE = T).

    Returns
    -------
    astropy.io.fits.Header
        The image header (a plain :class:`~astropy.io.fits.Header`).
    """
    if ASTROPY_IMAGE_HEADER:
        return _bintable_header_to_image_header(bintable_header)
    table = bintable_header.copy()
    table["NAXIS2"], table["PCOUNT"] = 0, 0  # the header alone: no rows, no heap
    for keyword in _TABLE_ONLY_CARDS:
        table.remove(keyword, ignore_missing=True)
    with fits.open(io.BytesIO(_fits_bytes(table))) as hdus:
        return fits.Header(hdus[1].header.cards)


# --------------------------------------------------------------------- tile decoding

_ZBITPIX_DTYPES = {8: "uint8", 16: "int16", 32: "int32", 64: "int64", -32: "float32", -64: "float64"}

TileBytes = Callable[[str], np.ndarray]
"""``fetch(column)``: one tile's items in a heap column (an empty array when the tile has none there)."""


TileSlices = Callable[[int], tuple[slice, slice]]
"""``slices(tile)``: where a tile lies in the image (clipped at the edges)."""


class TileDecoder:
    """Decodes tiles of one compressed image; made by :func:`tile_decoder`.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The BINTABLE header (ZIMAGE = T).
    names : tuple of str
        The table's column names (upper case).
    """

    public: bool = False
    """Whether this decoder uses only public astropy APIs (then it decodes on one thread)."""

    def __init__(self, header: fits.Header, names: tuple[str, ...]) -> None:
        self.header = header
        self.names = names
        self.algorithm = str(header["ZCMPTYPE"]).strip()
        self.zbitpix = int(header["ZBITPIX"])
        self.dtype = np.dtype(_ZBITPIX_DTYPES[self.zbitpix])
        self.blank = header.get("ZBLANK", header.get("BLANK"))
        self.quantized = "ZSCALE" in names
        self.blank_column = "ZBLANK" in names

    def batch(
        self, rows: np.ndarray, tiles: Sequence[int], fetch_for: Callable[[int], TileBytes], slices: TileSlices
    ) -> contextlib.AbstractContextManager[Callable[[int], np.ndarray]]:
        """A decoder of ``tiles`` (each once), open for the ``with`` block.

        Parameters
        ----------
        rows : numpy.ndarray
            The whole tile table.
        tiles : sequence of int
            The tiles that will be decoded.
        fetch_for : callable
            ``fetch_for(tile)(column)`` returns the tile's heap items of that column.
        slices : callable
            ``slices(tile)``: the tile's place in the image.

        Returns
        -------
        context manager
            Yields ``decode(tile)``: the stored pixels of one tile (before BSCALE/BZERO) as astropy's
            decompression gives them (integers with ZBLANK/BLANK for nulls; floats with NaN).
        """
        raise NotImplementedError


class _PrivateTileDecoder(TileDecoder):
    """astropy's private codecs and dequantizer, called tile by tile as ``decompress_image_data_section`` does."""

    def __init__(self, header: fits.Header, names: tuple[str, ...]) -> None:
        super().__init__(header, names)
        self.settings = _header_to_settings(header)  # header cards read once here, not per tile
        self.dither_method = _DITHER_METHODS[header.get("ZQUANTIZ", "NO_DITHER")]
        self.dither_seed = header.get("ZDITHER0", 0)

    @contextlib.contextmanager
    def batch(
        self, rows: np.ndarray, tiles: Sequence[int], fetch_for: Callable[[int], TileBytes], slices: TileSlices
    ) -> Iterator[Callable[[int], np.ndarray]]:
        def decode(tile: int) -> np.ndarray:
            rows_, cols = slices(tile)
            shape = (rows_.stop - rows_.start, cols.stop - cols.start)
            return self._decode(tile, rows[tile : tile + 1], fetch_for(tile), shape)

        yield decode

    def _decode(self, tile: int, row: np.ndarray, fetch: TileBytes, shape: tuple[int, int]) -> np.ndarray:
        algorithm = self.algorithm
        cdata = fetch("COMPRESSED_DATA")
        if not cdata.size:
            return self._uncompressed(fetch, shape, tile)
        settings = _update_tile_settings(dict(self.settings), algorithm, shape)
        if algorithm == "GZIP_2":
            settings["itemsize"] = np.asarray(_decompress_tile(cdata, algorithm="GZIP_1")).size // prod(shape)
        buffer = _decompress_tile(cdata, algorithm=algorithm, **settings)
        data = _finalize_array(
            buffer, bitpix=self.zbitpix, tile_shape=shape, algorithm=algorithm, lossless=not self.quantized
        )
        zblank = row["ZBLANK"][0] if self.blank_column else self.blank
        blank_mask = data == zblank if zblank is not None else None
        if self.quantized:
            quantizer = _Quantize(
                row=(tile + self.dither_seed) if self.dither_method != -1 else 0,
                dither_method=self.dither_method, quantize_level=None, bitpix=self.zbitpix,
            )
            data = np.asarray(quantizer.decode_quantized(data, row["ZSCALE"][0], row["ZZERO"][0])).reshape(shape)
        if blank_mask is not None:
            if not data.flags.writeable:
                data = data.copy()
            data[blank_mask] = self.blank if self.zbitpix > 0 else np.nan
        # astropy pastes each tile into an image of the ZBITPIX dtype: the dequantizer's float64 becomes float32
        return data.astype(self.dtype, copy=False)

    def _uncompressed(self, fetch: TileBytes, shape: tuple[int, int], tile: int) -> np.ndarray:
        """A float tile stored losslessly because it would not quantize (GZIP_1 or raw bytes)."""
        if "GZIP_COMPRESSED_DATA" in self.names:
            buffer = _decompress_tile(fetch("GZIP_COMPRESSED_DATA"), algorithm="GZIP_1")
            return _finalize_array(buffer, bitpix=self.zbitpix, tile_shape=shape, algorithm="GZIP_1", lossless=True)
        if "UNCOMPRESSED_DATA" in self.names:
            return fetch("UNCOMPRESSED_DATA").reshape(shape)
        raise ValueError(f"tile {tile}: COMPRESSED_DATA is empty and there is no GZIP_COMPRESSED_DATA or "
                         "UNCOMPRESSED_DATA column")


_HEAP_COLUMNS = ("COMPRESSED_DATA", "GZIP_COMPRESSED_DATA", "UNCOMPRESSED_DATA")


class _PublicTileDecoder(TileDecoder):
    """Public APIs only: the fetched tiles in one compressed HDU of their own, read with ``CompImageHDU.section``.

    The HDU keeps the image's header and its whole tile table (so every tile keeps
    its row, hence its dither sequence); the heap holds only the fetched tiles, the
    other rows point at nothing and are never read. It is opened once per batch,
    and each tile is one ``section`` read of exactly that tile.
    """

    public = True

    def __init__(self, header: fits.Header, names: tuple[str, ...]) -> None:
        super().__init__(header, names)
        template = header.copy()
        for keyword in _TABLE_ONLY_CARDS:
            template.remove(keyword, ignore_missing=True)
        self.template = template

    @contextlib.contextmanager
    def batch(
        self, rows: np.ndarray, tiles: Sequence[int], fetch_for: Callable[[int], TileBytes], slices: TileSlices
    ) -> Iterator[Callable[[int], np.ndarray]]:
        table = np.zeros_like(rows)  # every descriptor (0, 0): no bytes
        heap = bytearray()
        columns = [name for name in _HEAP_COLUMNS if name in self.names]
        fixed = [name for name in rows.dtype.names or () if name not in columns]
        for tile in tiles:
            fetch = fetch_for(tile)
            for name in fixed:
                table[name][tile] = rows[name][tile]
            for name in columns:
                items = fetch(name)
                table[name][tile] = (items.size, len(heap))
                heap += items.tobytes()
        header = self.template.copy()
        header["PCOUNT"] = len(heap)
        data = table.tobytes() + bytes(heap)
        with fits.open(io.BytesIO(_fits_bytes(header, data)), do_not_scale_image_data=True) as hdus:
            section = hdus[1].section
            yield lambda tile: np.asarray(section[slices(tile)])


def tile_decoder(header: fits.Header, names: tuple[str, ...]) -> TileDecoder:
    """The tile decoder of one compressed image: astropy's internals when they check out, else public APIs.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The BINTABLE header (ZIMAGE = T).
    names : tuple of str
        The table's column names (upper case).

    Returns
    -------
    TileDecoder
        The decoder; ``decoder.public`` says which path it takes.

    Raises
    ------
    KeyError, ValueError
        If the compression settings in the header do not read.
    """
    if ASTROPY_TILE_CODECS:
        return _PrivateTileDecoder(header, names)
    for keyword in ("ZCMPTYPE", "ZBITPIX"):
        if keyword not in header:
            raise KeyError(f"no {keyword} card")
    return _PublicTileDecoder(header, names)


# --------------------------------------------------------------------- scaled integer images

_BITPIX_INT = {8: "uint8", 16: "int16", 32: "int32", 64: "int64"}


def original_scaling(hdu: Any) -> tuple[int | None, float, float, int | None]:
    """``(BITPIX, BSCALE, BZERO, BLANK)`` an HDU was read with, or ``(None, 1, 0, None)`` when unknown.

    astropy keeps them as ``_orig_bitpix`` ... once ``.data`` is read (the header then
    shows the float BITPIX of ``.data``); there is no public accessor.
    """
    if not ASTROPY_SCALING:
        return None, 1.0, 0.0, None
    return (getattr(hdu, "_orig_bitpix", None), getattr(hdu, "_orig_bscale", 1) or 1,
            getattr(hdu, "_orig_bzero", 0) or 0, getattr(hdu, "_orig_blank", None))


def rescale(hdu: Any, dtype: str, bscale: float, bzero: float, blank: int | None) -> bool:
    """Store an HDU's float data as integers with BSCALE/BZERO (and BLANK for NaN), as astropy writes them.

    Returns
    -------
    bool
        False when it could not be done with public APIs (a BLANK value without the
        internals): the HDU is then left holding floats, whose values are exact.
    """
    if ASTROPY_SCALING:
        hdu._scale_internal(type=dtype, bscale=bscale, bzero=bzero, blank=blank)
        return True
    if blank is not None:
        return False
    hdu.scale(type=dtype, bscale=bscale, bzero=bzero)
    return True


def int_dtype(bitpix: int | None) -> str | None:
    """The integer dtype of an integer BITPIX, else None."""
    return _BITPIX_INT.get(bitpix) if bitpix is not None else None


# --------------------------------------------------------------------- zarr shard index

_INDEX_CODEC_OVERHEAD = {"bytes": 0, "crc32c": 4}


def shard_index_size(codec: Any, chunks_per_shard: tuple[int, ...]) -> int:
    """The bytes of a shard's index: 16 per inner chunk (offset, length), plus what the index codecs add.

    Parameters
    ----------
    codec : zarr.codecs.ShardingCodec
        The sharding codec.
    chunks_per_shard : tuple of int
        Inner chunks per shard along each axis.

    Raises
    ------
    FormatError
        If (without zarr's internals) an index codec's size is not known.
    """
    if ZARR_SHARD_INDEX:
        return int(codec._shard_index_size(chunks_per_shard))
    size = 16 * prod(chunks_per_shard)
    for index_codec in codec.index_codecs:
        name = index_codec.to_dict()["name"]
        if name not in _INDEX_CODEC_OVERHEAD:
            raise FormatError(f"the size of a shard index encoded with {name!r} is not known")
        size += _INDEX_CODEC_OVERHEAD[name]
    return size


def describe() -> Mapping[str, bool]:
    """Which private paths are in use (for diagnostics and the test report)."""
    return {"astropy tile codecs": ASTROPY_TILE_CODECS, "astropy image header": ASTROPY_IMAGE_HEADER,
            "astropy scaling": ASTROPY_SCALING, "zarr shard index": ZARR_SHARD_INDEX}
