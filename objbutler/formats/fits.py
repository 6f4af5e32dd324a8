"""FITS: write an :class:`Image`, read it back, and cut many stamps with a few range reads.

Writing (:func:`encode_fits`) and whole reads (:func:`decode_fits`) go through
astropy. The cutout reader (:func:`read_fits_cutouts`) never downloads the
whole object:

1. read the header with one range read of up to ~64 KiB (the cost model's
   break-even size, at least 11,520 bytes: reading ahead is cheaper than
   another request), doubled until the END card shows up, walking HDU headers
   by their data sizes when the image is not the first HDU;
2. plain image HDU: turn each stamp into one byte range per row
   (``data start + (y * NAXIS1 + x0) * bytes per pixel``), let
   :func:`objbutler.ranges.plan_reads` merge them, fetch every block with one
   ``store.get_ranges`` call and decode exactly as astropy's ``.data`` and
   ``.section`` do (:class:`PixelScaling`), straight from a strided view of
   the fetched block into the stamp (one copy per stamp);
3. tile-compressed HDU (a BINTABLE with ``ZIMAGE = T``): parse the tile table
   (usually inside the first read), fetch the heap bytes of only the tiles
   the stamps touch (one ``get_ranges`` call) and decode each tile once, on
   one thread per CPU, with astropy's own codecs
   (:mod:`objbutler.formats.fits_tiles`); one stamp from a file objbutler
   wrote costs two requests.

Compression and loss (:func:`encode_fits`): every algorithm is lossless for
integer images. Floating-point images are lossless with ``GZIP_1`` and
``GZIP_2`` (stored unquantized). ``RICE_1`` and ``HCOMPRESS_1`` only code
integers, so floats are quantized first (astropy's default level of 1/16 of
each tile's noise, ``SUBTRACTIVE_DITHER_2`` so exact zeros survive): **lossy**.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from astropy.io import fits
from astropy.io.fits.hdu.compressed import DITHER_SEED_CHECKSUM, SUBTRACTIVE_DITHER_2
from astropy.io.fits.verify import VerifyError
from astropy.wcs import WCS

from objbutler.cutouts import Box, ClipMode, Cutout, ParentWCS, StampPlan, new_stamp, plan_stamps
from objbutler.errors import FormatError
from objbutler.formats._image import Image, _wcs_from, as_image
from objbutler.formats.fits_tiles import THREAD_SAFE_ALGORITHMS, TileTable, image_header
from objbutler.ranges import CostModel, ReadPlan, extract, plan_reads
from objbutler.stores._base import RangeLike, Store, normalize_ranges
from objbutler.stores._concurrency import run_concurrently

__all__ = [
    "COMPRESSION_TYPES",
    "HduInfo",
    "PixelScaling",
    "decode_fits",
    "encode_fits",
    "fits_layout",
    "read_fits_cutouts",
    "read_fits_wcs",
    "row_ranges",
]

BLOCK = 2880
_CARD = 80
_MIN_FIRST_READ = 4 * BLOCK
_MAX_FIRST_READ = 23 * BLOCK  # 66,240 bytes: a primary header, an extension header and a tile table of ~2,000 tiles
COMPRESSION_TYPES = ("RICE_1", "GZIP_1", "GZIP_2", "HCOMPRESS_1")
_LOSSLESS_FLOAT = ("GZIP_1", "GZIP_2")
_BITPIX_DTYPES = {8: "u1", 16: "i2", 32: "i4", 64: "i8", -32: "f4", -64: "f8"}

HduSelector = int | str | None


# --------------------------------------------------------------------- writing


def encode_fits(image: Image, compression: str | None = None, tile_shape: tuple[int, int] = (256, 256)) -> bytes:
    """Write an image as a standard FITS file.

    Parameters
    ----------
    image : Image
        Pixels, header and WCS.
    compression : {None, "RICE_1", "GZIP_1", "GZIP_2", "HCOMPRESS_1"}
        None writes the pixels in the primary HDU. Otherwise the primary HDU is
        empty and the image is a tile-compressed extension (see the module
        docstring for which combinations are lossy).
    tile_shape : tuple of int, default (256, 256)
        ``(rows, columns)`` of the compression tiles of a 2-D image (clipped to
        the image); other images use astropy's row tiles.

    Returns
    -------
    bytes
        The file, readable by ``astropy.io.fits.open`` as is.
    """
    header = image.full_header()
    if compression is None:
        hdus = fits.HDUList([fits.PrimaryHDU(data=image.data, header=header)])
    else:
        hdus = fits.HDUList([fits.PrimaryHDU(), _compressed_hdu(image.data, header, compression, tile_shape)])
    buffer = io.BytesIO()
    hdus.writeto(buffer)
    return buffer.getvalue()


def _compressed_hdu(
    data: np.ndarray, header: fits.Header, compression: str, tile_shape: tuple[int, int]
) -> fits.CompImageHDU:
    if compression not in COMPRESSION_TYPES:
        raise ValueError(f"compression must be None or one of {COMPRESSION_TYPES}, got {compression!r}")
    tiles = tuple(min(t, n) for t, n in zip(tile_shape, data.shape, strict=True)) if data.ndim == 2 else None
    options: dict[str, Any] = {}
    if data.dtype.kind == "f" and compression in _LOSSLESS_FLOAT:
        options = {"quantize_level": 0.0}  # no quantization: the float bits are gzipped as they are
    elif data.dtype.kind == "f":
        options = {"quantize_method": SUBTRACTIVE_DITHER_2, "dither_seed": DITHER_SEED_CHECKSUM}  # lossy
    return fits.CompImageHDU(data=data, header=header, compression_type=compression, tile_shape=tiles, **options)


_LAYOUT_SCALING = ("BSCALE", "BZERO", "BLANK")


def fits_layout(data: bytes) -> dict[str, Any] | None:
    """Where the pixels of an uncompressed 2-D primary image lie in FITS bytes, for the registry.

    With it a cutout reader plans its reads without fetching the header first
    (see :func:`read_fits_cutouts`).

    Parameters
    ----------
    data : bytes
        A FITS file (as :func:`encode_fits` writes it).

    Returns
    -------
    dict or None
        ``{"hdu": 0, "data_start", "shape": [ny, nx], "bitpix"}`` plus any of
        BSCALE, BZERO, BLANK (lower-case keys), or None when the image is
        tile-compressed, not 2-D, or not in the primary HDU.
    """
    info = _Reader(_BytesSource(data), "", CostModel.local()).header_at(0, 0)
    if info is None or info.kind != "image" or len(info.image_shape) != 2 or not info.has_data:
        return None
    layout: dict[str, Any] = {
        "hdu": 0, "data_start": info.data_start, "shape": list(info.image_shape), "bitpix": info.header["BITPIX"],
    }
    layout.update({key.lower(): info.header[key] for key in _LAYOUT_SCALING if key in info.header})
    return layout


def _layout_info(layout: Any, size: int | None) -> HduInfo | None:
    """The HduInfo a registry layout describes (None if it is malformed or does not fit the object)."""
    try:
        ny, nx = (int(n) for n in layout["shape"])
        header = fits.Header([("SIMPLE", True), ("BITPIX", int(layout["bitpix"])), ("NAXIS", 2),
                              ("NAXIS1", nx), ("NAXIS2", ny)])
        for key in _LAYOUT_SCALING:
            if key.lower() in layout:
                header[key] = layout[key.lower()]
        info = HduInfo(0, header, int(layout["data_start"]))
        end = info.data_start + nx * ny * abs(int(layout["bitpix"])) // 8
    except (KeyError, TypeError, ValueError):
        return None
    sane = nx > 0 and ny > 0 and info.data_start > 0 and info.data_start % BLOCK == 0
    if not sane or layout.get("hdu") != 0 or int(layout["bitpix"]) not in _BITPIX_DTYPES or (
            size is not None and end > size):
        return None
    return info


class _BytesSource:
    """The one store method :class:`_Reader` needs, over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes | memoryview]:
        return [memoryview(self.data)[r.start : r.stop] for r in normalize_ranges(ranges)]


# --------------------------------------------------------------------- whole reads


def decode_fits(data: bytes, hdu: HduSelector = None) -> Image:
    """Read an image back from FITS bytes (the inverse of :func:`encode_fits`).

    Parameters
    ----------
    data : bytes
        A whole FITS file.
    hdu : int, str or None
        HDU index or EXTNAME; by default the primary HDU if it holds data,
        else the first image extension.

    Returns
    -------
    Image
        Native-endian pixels of the dtype astropy gives (uint16/uint32 via
        BZERO, floats for scaled integers), descriptive cards and WCS.

    Raises
    ------
    FormatError
        If the bytes are not FITS or the HDU is not an image with data.
    """
    try:
        with fits.open(io.BytesIO(data)) as hdus:
            chosen = _pick_hdu(hdus, hdu)
            image = as_image(chosen)
            image.data = image.data.astype(image.data.dtype.newbyteorder("="), copy=True)
            return image
    except FormatError:
        raise
    except (OSError, TypeError, ValueError, VerifyError) as exc:
        raise FormatError(f"not a readable FITS image: {exc}") from exc


def _pick_hdu(hdus: fits.HDUList, selector: HduSelector) -> Any:
    if selector is None:
        for candidate in hdus:
            if isinstance(candidate, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU) and candidate.size:
                return candidate
        raise FormatError("the FITS file holds no image data")
    try:
        chosen = hdus[selector]
    except (IndexError, KeyError):
        raise FormatError(f"the FITS file has no HDU {selector!r}") from None
    if not isinstance(chosen, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
        raise FormatError(f"HDU {selector!r} is a {type(chosen).__name__}, not an image")
    return chosen


# --------------------------------------------------------------------- pixel decoding (pure)


@dataclasses.dataclass(frozen=True, slots=True)
class PixelScaling:
    """How raw FITS pixels become values, mirroring astropy's ``ImageHDU._scale_data``.

    Parameters
    ----------
    bitpix : int
        8, 16, 32, 64, -32 or -64.
    bscale, bzero : float
        Linear scaling ``value = bscale * raw + bzero``.
    blank : int or None
        Raw value of undefined integer pixels.
    """

    bitpix: int
    bscale: float = 1
    bzero: float = 0
    blank: int | None = None

    @classmethod
    def from_header(cls, header: fits.Header, bitpix_key: str = "BITPIX") -> PixelScaling:
        """Read BITPIX (or ZBITPIX), BSCALE, BZERO and BLANK as astropy does (a bad BLANK is ignored)."""
        bitpix = header[bitpix_key]
        if bitpix not in _BITPIX_DTYPES:
            raise FormatError(f"invalid {bitpix_key} = {bitpix!r}")
        blank = header.get("BLANK")
        usable_blank = isinstance(blank, int | np.integer) and not isinstance(blank, bool) and bitpix > 0
        return cls(bitpix, header.get("BSCALE", 1), header.get("BZERO", 0), blank if usable_blank else None)

    @property
    def raw_dtype(self) -> np.dtype[Any]:
        """Big-endian dtype of the stored pixels."""
        return np.dtype(">" + _BITPIX_DTYPES[self.bitpix])

    @property
    def dtype(self) -> np.dtype[Any]:
        """Native dtype of the decoded pixels."""
        return self.decode(np.empty(0, self.raw_dtype)).dtype

    def _scaled_dtype(self) -> np.dtype[Any] | None:
        """astropy's ``_dtype_for_bitpix`` (with ``uint=True``)."""
        if self.bscale == 1:
            if self.bitpix == 8 and self.bzero == -128:
                return np.dtype("int8")
            unsigned = {16: "uint16", 32: "uint32", 64: "uint64"}.get(self.bitpix)
            if unsigned and self.bzero == 1 << (self.bitpix - 1):
                return np.dtype(unsigned)
        if self.bitpix > 16:
            return np.dtype("float64")
        if self.bitpix > 0:
            return np.dtype("float32")
        return None

    @property
    def is_plain(self) -> bool:
        """True when values are the raw pixels (no BSCALE, BZERO or BLANK): decoding is a byte swap."""
        return self.bzero == 0 and self.bscale == 1 and self.blank is None

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Turn raw big-endian pixels into values: a new native-endian array.

        Parameters
        ----------
        raw : numpy.ndarray
            Pixels of :attr:`raw_dtype`.

        Returns
        -------
        numpy.ndarray
            Bit for bit what astropy's ``.data``/``.section`` give, in native byte order.
        """
        unscaled = self.bzero == 0 and self.bscale == 1
        if self.is_plain:
            return raw.astype(raw.dtype.newbyteorder("="))
        target = self._scaled_dtype()
        if not unscaled and target is not None and target.kind == "u":
            data = np.array(raw, dtype=target)
            data -= np.uint64(1 << (8 * target.itemsize - 1))
            return data
        blanks = raw == self.blank if self.blank is not None else None
        data = np.array(raw, dtype=target) if target is not None else raw.astype(raw.dtype.newbyteorder("="))
        if self.bscale != 1:
            np.multiply(data, self.bscale, data)
        if self.bzero != 0:
            data += self.bzero
        if self.blank:
            data[blanks] = np.nan
        return data


# --------------------------------------------------------------------- header walking (small reads)


@dataclasses.dataclass(frozen=True, slots=True)
class HduInfo:
    """Where one HDU lives in a FITS object.

    Parameters
    ----------
    index : int
        Position in the file (0 = primary).
    header : astropy.io.fits.Header
        The HDU's header as stored (for a compressed image: the BINTABLE's).
    data_start : int
        Byte offset of the first data byte.
    """

    index: int
    header: fits.Header
    data_start: int

    @property
    def kind(self) -> str:
        """``"image"``, ``"compressed"`` (tile-compressed image) or the XTENSION value."""
        if self.index == 0:
            groups = self.header.get("GROUPS", False) and self.header.get("NAXIS1", 0) == 0
            return "random groups" if groups else "image"
        xtension = str(self.header.get("XTENSION", "")).strip()
        if xtension == "BINTABLE" and self.header.get("ZIMAGE", False):
            return "compressed"
        return "image" if xtension == "IMAGE" else xtension

    @property
    def image_shape(self) -> tuple[int, ...]:
        """numpy-order shape of the image (ZNAXISn for a compressed one)."""
        prefix = "ZNAXIS" if self.kind == "compressed" else "NAXIS"
        return tuple(int(self.header.get(f"{prefix}{i}", 0)) for i in range(self.header.get(prefix, 0), 0, -1))

    @property
    def has_data(self) -> bool:
        """True for an image HDU with at least one pixel."""
        return self.kind in ("image", "compressed") and bool(self.image_shape) and math.prod(self.image_shape) > 0

    @property
    def padded_data_size(self) -> int:
        """Bytes from :attr:`data_start` to the next HDU (data plus padding)."""
        header = self.header
        axes = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, header.get("NAXIS", 0) + 1)]
        if self.kind == "random groups":
            axes = axes[1:]
        pixels = math.prod(axes) if axes else 0
        size = abs(header["BITPIX"]) // 8 * header.get("GCOUNT", 1) * (header.get("PCOUNT", 0) + pixels)
        return -(-size // BLOCK) * BLOCK if pixels else 0

    @property
    def extname(self) -> str:
        """EXTNAME, upper-cased ("PRIMARY" for an unnamed primary HDU)."""
        return str(self.header.get("EXTNAME", "PRIMARY" if self.index == 0 else "")).strip().upper()


class _RangeSource(Protocol):
    """What :class:`_Reader` needs of a store."""

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> Sequence[bytes | memoryview]: ...


class _Reader:
    """Range reads of one object that keep (and extend) the last bytes read: headers, tile tables."""

    def __init__(self, store: _RangeSource, key: str, cost: CostModel) -> None:
        self.store, self.key = store, key
        self.start, self.buffer, self.at_end = 0, b"", False
        # Reading ahead is cheaper than another request while the extra bytes take less time than its latency.
        self.first_read = max(_MIN_FIRST_READ, min(_MAX_FIRST_READ, cost.break_even_bytes // BLOCK * BLOCK))

    def read(self, start: int, stop: int) -> memoryview:
        """Bytes ``[start, stop)`` (fewer past the end of the object); one request unless buffered."""
        end = self.start + len(self.buffer)
        if not self.start <= start <= end:
            self.start, self.buffer, self.at_end, end = start, b"", False, start
        if stop > end and not self.at_end:
            more = self.store.get_ranges(self.key, [(end, stop)])[0]
            self.buffer, self.at_end = self.buffer + more, len(more) < stop - end
        return memoryview(self.buffer)[start - self.start : stop - self.start]

    def fetch(self, plan: ReadPlan) -> list[bytes | memoryview]:
        """Every block of a plan, with one ``get_ranges`` call for the blocks not already buffered."""
        end = self.start + len(self.buffer)
        buffered = [self.start <= block.start and block.stop <= end for block in plan.blocks]
        missing = [block for block, inside in zip(plan.blocks, buffered, strict=True) if not inside]
        fresh = iter(self.store.get_ranges(self.key, missing) if missing else [])
        blocks: list[bytes | memoryview] = []
        for block, inside in zip(plan.blocks, buffered, strict=True):
            data = self.read(block.start, block.stop) if inside else next(fresh)
            if len(data) != block.length:
                raise FormatError(f"{self.key!r} is truncated: bytes {block.start}-{block.stop} are missing")
            blocks.append(data)
        return blocks

    def header_at(self, offset: int, index: int) -> HduInfo | None:
        """HDU ``index``'s header, starting at ``offset`` (None past the last HDU); reads only what is not buffered."""
        buffered = self.start + len(self.buffer) - offset if self.start <= offset else 0
        size = buffered if buffered >= BLOCK else self.first_read
        while True:
            raw = self.read(offset, offset + size)
            if bytes(raw[:9]) != (b"SIMPLE  =" if offset == 0 else b"XTENSION="):
                if offset:
                    return None  # end of the HDUs (astropy ignores trailing bytes too)
                raise FormatError(f"{self.key!r} is not a FITS file (it does not start with SIMPLE)")
            end = _end_card(raw)
            if end is not None:
                break
            if len(raw) < size:
                raise FormatError(f"{self.key!r}: the header at byte {offset} is truncated (no END card)")
            size = max(2 * size, self.first_read)
        try:
            header = fits.Header.fromstring(bytes(raw[:end]).decode("ascii"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FormatError(f"{self.key!r}: unreadable header at byte {offset}: {exc}") from exc
        padded = -(-(end + _CARD) // BLOCK) * BLOCK
        return HduInfo(index, header, offset + padded)


def _end_card(raw: memoryview) -> int | None:
    """Offset of the END card in a header buffer that starts on a card boundary, if it holds one."""
    text = bytes(raw)
    position = text.find(b"END     ")
    while position > 0 and position % _CARD:
        position = text.find(b"END     ", position + 1)
    return None if position < 0 else position


def _locate(reader: _Reader, selector: HduSelector) -> HduInfo:
    """Walk HDU headers until the chosen one (see :func:`read_fits_cutouts`)."""
    offset, index = 0, 0
    while True:
        info = reader.header_at(offset, index)
        if info is None:
            what = "no image HDU with data" if selector is None else f"no HDU {selector!r}"
            raise FormatError(f"{reader.key!r} has {what}")
        if _matches(info, selector):
            if info.kind not in ("image", "compressed"):
                raise FormatError(f"HDU {selector!r} of {reader.key!r} is a {info.kind}, not an image")
            return info
        offset, index = info.data_start + info.padded_data_size, index + 1


def _matches(info: HduInfo, selector: HduSelector) -> bool:
    if selector is None:
        return info.has_data
    if isinstance(selector, str):
        return info.extname == selector.strip().upper()
    return info.index == selector


# --------------------------------------------------------------------- stamp planning (pure)


def row_ranges(reads: Sequence[Box], nx: int, itemsize: int, data_start: int) -> np.ndarray:
    """The byte ranges of every row of every box of an uncompressed 2-D image.

    Parameters
    ----------
    reads : sequence of Box
        Boxes inside the image (empty boxes contribute nothing).
    nx : int
        NAXIS1, pixels per image row.
    itemsize : int
        Bytes per pixel (``abs(BITPIX) // 8``).
    data_start : int
        Byte offset of the image data.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` int64 array of half-open ``(start, stop)`` offsets, box by box, row by row.
    """
    corners = np.array([(b.x0, b.y0, b.x1, b.y1) for b in reads if not b.is_empty], dtype=np.int64).reshape(-1, 4)
    heights = corners[:, 3] - corners[:, 1]
    row_in_box = np.arange(int(heights.sum()), dtype=np.int64) - np.repeat(np.cumsum(heights) - heights, heights)
    rows = np.repeat(corners[:, 1], heights) + row_in_box
    starts = data_start + (rows * nx + np.repeat(corners[:, 0], heights)) * itemsize
    return np.stack([starts, starts + np.repeat((corners[:, 2] - corners[:, 0]) * itemsize, heights)], axis=1)


def _raw_rows(
    plan: ReadPlan, fetched: Sequence[bytes | memoryview], first: int, stride: int, shape: tuple[int, int],
    dtype: np.dtype[Any],
) -> np.ndarray:
    """``shape[0]`` rows of ``shape[1]`` pixels, ``stride`` bytes apart from byte ``first``, out of the blocks.

    A zero-copy strided view when one block holds every row (the usual case);
    otherwise a copy, row by row, of rows that may cross blocks.
    """
    nrows, width = shape
    row_bytes = width * dtype.itemsize
    out: np.ndarray | None = None
    row = 0
    while row < nrows:
        offset = first + row * stride
        index = plan.block_index(offset)
        room = plan.blocks[index].stop - offset - row_bytes if index >= 0 else -1
        inside = min(nrows - row, room // stride + 1) if room >= 0 else 0
        if inside == nrows:
            start = offset - plan.blocks[index].start
            return np.ndarray(shape, dtype, buffer=fetched[index], offset=start, strides=(stride, dtype.itemsize))
        if out is None:
            out = np.empty(shape, dtype=dtype)
        if inside:
            start = offset - plan.blocks[index].start
            strides = (stride, dtype.itemsize)
            out[row : row + inside] = np.ndarray((inside, width), dtype, fetched[index], start, strides)
            row += inside
        else:  # a row that crosses two blocks
            out[row] = np.frombuffer(extract(plan, fetched, (offset, offset + row_bytes)), dtype)
            row += 1
    assert out is not None
    return out


# --------------------------------------------------------------------- cutouts


def read_fits_cutouts(
    store: Store,
    key: str,
    boxes: Sequence[Box],
    mode: ClipMode = "trim",
    fill_value: float = np.nan,
    *,
    hdu: HduSelector = None,
    cost: CostModel | None = None,
    layout: Any = None,
    object_size: int | None = None,
    parent_wcs: WCS | None = None,
) -> list[Cutout]:
    """Cut many stamps out of one FITS image in a store with a few range reads.

    Parameters
    ----------
    store : Store
        Where the object is.
    key : str
        The FITS object's key.
    boxes : sequence of Box
        Half-open pixel boxes ``data[y0:y1, x0:x1]``, in any order.
    mode : {"trim", "partial", "strict"}
        Clipping mode (see :mod:`objbutler.cutouts`).
    fill_value : float, default NaN
        Value of pixels outside the image in ``partial`` mode.
    hdu : int, str or None
        HDU index or EXTNAME; by default the primary HDU if it holds data,
        else the first image extension (plain or tile-compressed).
    cost : CostModel, optional
        Store cost model for the range planner; by default chosen from the
        store (:meth:`CostModel.for_store`).
    layout : dict, optional
        The registry's :func:`fits_layout` of the object: the header is then
        not read unless a stamp's WCS is asked for (ignored with ``hdu``, or
        if it does not fit ``object_size``).
    object_size : int, optional
        The object's size in bytes, to check ``layout`` against.
    parent_wcs : astropy.wcs.WCS, optional
        The image's WCS when the caller already read it (sky positions).

    Returns
    -------
    list of Cutout
        In request order, each with its own WCS.

    Raises
    ------
    FormatError
        Not FITS, a truncated header or data, a non-image HDU, or not 2-D.
    InvalidCutoutError
        In strict mode, for a box not wholly inside the image.
    """
    cost = cost or CostModel.for_store(store)
    reader = _Reader(store, key, cost)
    hinted = _layout_info(layout, object_size) if layout is not None and hdu is None else None
    info = hinted or _locate(reader, hdu)
    if len(info.image_shape) != 2:
        raise FormatError(f"HDU {info.index} of {key!r} is {len(info.image_shape)}-D; cutouts need a 2-D image")
    shape = (info.image_shape[0], info.image_shape[1])
    plans = plan_stamps(boxes, shape, mode)
    if parent_wcs is not None:
        wcs = ParentWCS(lambda: parent_wcs)
    elif hinted is not None:
        wcs = ParentWCS(lambda: read_fits_wcs(store, key))
    else:
        wcs = ParentWCS(lambda: _wcs_from(image_header(info.header) if info.kind == "compressed" else info.header))
    if info.kind == "compressed":
        return _compressed_cutouts(reader, info, plans, fill_value, cost, wcs)
    return _image_cutouts(reader, info, plans, fill_value, cost, wcs)


def read_fits_wcs(store: Store, key: str, *, hdu: HduSelector = None) -> WCS | None:
    """The WCS of a FITS image in a store, from its header alone (a few small range reads).

    Parameters
    ----------
    store : Store
        Where the object is.
    key : str
        The FITS object's key.
    hdu : int, str or None
        HDU index or EXTNAME, chosen as in :func:`read_fits_cutouts`.

    Returns
    -------
    astropy.wcs.WCS or None
        The image's WCS, or None if its header has none.
    """
    info = _locate(_Reader(store, key, CostModel.for_store(store)), hdu)
    return _wcs_from(image_header(info.header) if info.kind == "compressed" else info.header)


def _image_cutouts(
    reader: _Reader, info: HduInfo, plans: list[StampPlan], fill_value: float, cost: CostModel, wcs: ParentWCS
) -> list[Cutout]:
    scaling = PixelScaling.from_header(info.header)
    itemsize = scaling.raw_dtype.itemsize
    nx = info.image_shape[1]
    plan = plan_reads(row_ranges([p.read for p in plans], nx, itemsize, info.data_start), cost)
    fetched = reader.fetch(plan)
    dtype = scaling.dtype
    stamps = []
    raw_dtype, stride = scaling.raw_dtype, nx * itemsize
    plain = scaling.is_plain
    for stamp_plan in plans:
        read = stamp_plan.read
        if read.x1 > read.x0 and read.y1 > read.y0:
            first = info.data_start + (read.y0 * nx + read.x0) * itemsize
            raw = _raw_rows(plan, fetched, first, stride, (read.y1 - read.y0, read.x1 - read.x0), raw_dtype)
            if plain and read is stamp_plan.bbox:
                data = raw.astype(dtype)  # the usual stamp: one byte-swapping copy, straight out of the block
            else:
                data = new_stamp(stamp_plan, dtype, fill_value)
                data[stamp_plan.destination] = raw if plain else scaling.decode(raw)
        else:
            data = new_stamp(stamp_plan, dtype, fill_value)
        stamps.append(Cutout.from_parent(data, stamp_plan.bbox, wcs, stamp_plan.index))
    return stamps


# --------------------------------------------------------------------- tile-compressed images


def _compressed_cutouts(
    reader: _Reader, info: HduInfo, plans: list[StampPlan], fill_value: float, cost: CostModel, wcs: ParentWCS
) -> list[Cutout]:
    """Stamps from a tile-compressed image: fetch the tiles they touch (one call), decode each once.

    Tiles are decoded on up to one thread per CPU (astropy's codecs release the
    GIL); each tile is pasted into its stamps as soon as it is decoded and then
    dropped, so at most one decoded tile per thread is alive beside the stamps.
    """
    table = _tile_table(reader, info)
    users: dict[int, list[StampPlan]] = {}
    for stamp_plan in plans:
        for tile in table.grid.rows(stamp_plan.read):
            users.setdefault(tile, []).append(stamp_plan)
    tiles = sorted(users)
    plan = plan_reads(table.heap_ranges(tiles), cost)
    fetched = reader.fetch(plan)
    scaling = PixelScaling.from_header(info.header, "ZBITPIX")
    dtype = scaling.dtype
    stamps = {p.index: new_stamp(p, dtype, fill_value) for p in plans}

    def read_heap(start: int, stop: int) -> memoryview | bytes:
        return extract(plan, fetched, (start, stop))

    def decode_and_paste(tile: int) -> None:
        pixels = table.decode(tile, read_heap)
        if not scaling.is_plain:
            pixels = scaling.decode(pixels)
        frame = table.grid.box(tile)
        for stamp_plan in users[tile]:
            part = stamp_plan.read.intersection(frame)
            stamps[stamp_plan.index][_within(part, stamp_plan.bbox)] = pixels[_within(part, frame)]

    if tiles:
        decode_and_paste(tiles[0])  # on its own first: the dequantizer builds a global table on its first call
    workers = _decode_threads() if table.algorithm in THREAD_SAFE_ALGORITHMS else 1
    run_concurrently(decode_and_paste, tiles[1:], workers)
    return [Cutout.from_parent(stamps[p.index], p.bbox, wcs, p.index) for p in plans]


def _tile_table(reader: _Reader, info: HduInfo) -> TileTable:
    """The tile table of a compressed HDU (usually already in the first header read)."""
    size = info.header["NAXIS1"] * info.header["NAXIS2"]
    table = reader.read(info.data_start, info.data_start + size)
    if len(table) != size:
        raise FormatError(f"{reader.key!r} is truncated inside the tile table of HDU {info.index}")
    return TileTable.parse(info.header, table, info.data_start)


def _decode_threads() -> int:
    """CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def _within(box: Box, frame: Box) -> tuple[slice, slice]:
    """Slices of ``box`` in an array whose pixel (0, 0) is ``frame``'s corner."""
    return (slice(box.y0 - frame.y0, box.y1 - frame.y0), slice(box.x0 - frame.x0, box.x1 - frame.x0))
