"""FITS: write an :class:`Image`, read it back, and cut many stamps with a few range reads.

Writing (:func:`encode_fits`) and whole reads (:func:`decode_fits`) go through
astropy. The cutout reader (:func:`read_fits_cutouts`) never downloads the
whole object:

1. read the header with small range reads (11,520 bytes first, doubled until
   the END card shows up), walking HDU headers by their data sizes when the
   image is not the first HDU;
2. plain image HDU: turn each stamp into one byte range per row
   (``data start + (y * NAXIS1 + x0) * bytes per pixel``), let
   :func:`objbutler.ranges.plan_reads` merge them, fetch every block with one
   ``store.get_ranges`` call and decode exactly as astropy's ``.data`` and
   ``.section`` do (:class:`PixelScaling`);
3. tile-compressed HDU (a BINTABLE with ``ZIMAGE = T``): read the tile table,
   fetch the heap bytes of only the tiles the stamps touch (one
   ``get_ranges`` call), rebuild a small in-memory FITS file holding just those
   tiles (every other tile left empty, row numbers kept so dithering matches),
   and let astropy's own ``CompImageHDU.section`` decompress each needed tile
   once (rectangles of neighbouring tiles per call).

Compression and loss (:func:`encode_fits`): every algorithm is lossless for
integer images. Floating-point images are lossless with ``GZIP_1`` and
``GZIP_2`` (stored unquantized). ``RICE_1`` and ``HCOMPRESS_1`` only code
integers, so floats are quantized first (astropy's default level of 1/16 of
each tile's noise, ``SUBTRACTIVE_DITHER_2`` so exact zeros survive): **lossy**.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.hdu.compressed import DITHER_SEED_CHECKSUM, SUBTRACTIVE_DITHER_2
from astropy.io.fits.verify import VerifyError
from astropy.wcs import WCS

from objbutler.cutouts import Box, ClipMode, Cutout, ParentWCS, StampPlan, new_stamp, plan_stamps
from objbutler.errors import FormatError
from objbutler.formats._image import Image, _wcs_from, as_image
from objbutler.ranges import CostModel, ReadPlan, extract, plan_reads
from objbutler.stores._base import Store

__all__ = [
    "COMPRESSION_TYPES",
    "HduInfo",
    "PixelScaling",
    "decode_fits",
    "encode_fits",
    "read_fits_cutouts",
    "read_fits_wcs",
    "row_ranges",
]

BLOCK = 2880
_CARD = 80
_FIRST_READ = 4 * BLOCK
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
        if unscaled and self.blank is None:
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


class _Reader:
    """Range reads of one object that keep (and extend) the last bytes read: headers, tile tables."""

    def __init__(self, store: Store, key: str) -> None:
        self.store, self.key = store, key
        self.start, self.buffer, self.at_end = 0, b"", False

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
        size = buffered if buffered >= BLOCK else _FIRST_READ
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
            size = max(2 * size, _FIRST_READ)
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


def _row_starts(box: Box, nx: int, itemsize: int, data_start: int) -> np.ndarray:
    """Byte offset of the first pixel of each row of ``box``."""
    rows = np.arange(box.y0, box.y1, dtype=np.int64)
    return data_start + (rows * nx + box.x0) * itemsize


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
        ``(n, 2)`` int64 array of half-open ``(start, stop)`` offsets.
    """
    starts = [_row_starts(box, nx, itemsize, data_start) for box in reads if not box.is_empty]
    widths = [np.full(box.height, box.width * itemsize, dtype=np.int64) for box in reads if not box.is_empty]
    if not starts:
        return np.empty((0, 2), dtype=np.int64)
    first = np.concatenate(starts)
    return np.stack([first, first + np.concatenate(widths)], axis=1)


def _gather_rows(
    plan: ReadPlan, fetched: Sequence[bytes | memoryview], first: int, stride: int, shape: tuple[int, int]
) -> np.ndarray:
    """Copy ``shape[0]`` rows of ``shape[1]`` bytes, ``stride`` apart from ``first``, out of the blocks.

    Rows inside one block are copied through a zero-copy strided view; a row
    that crosses two blocks goes through :func:`extract`.
    """
    nrows, row_bytes = shape
    out = np.empty(shape, dtype=np.uint8)
    row = 0
    while row < nrows:
        offset = first + row * stride
        index = plan.block_index(offset)
        inside = 0
        if index >= 0:
            room = plan.blocks[index].stop - offset - row_bytes
            inside = min(nrows - row, room // stride + 1) if room >= 0 else 0
        if inside:
            view = np.ndarray(
                (inside, row_bytes),
                np.uint8,
                buffer=fetched[index],
                offset=offset - plan.blocks[index].start,
                strides=(stride, 1),
            )
            out[row : row + inside] = view
            row += inside
        else:
            out[row] = np.frombuffer(extract(plan, fetched, (offset, offset + row_bytes)), np.uint8)
            row += 1
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
    reader = _Reader(store, key)
    info = _locate(reader, hdu)
    if len(info.image_shape) != 2:
        raise FormatError(f"HDU {info.index} of {key!r} is {len(info.image_shape)}-D; cutouts need a 2-D image")
    shape = (info.image_shape[0], info.image_shape[1])
    plans = plan_stamps(boxes, shape, mode)
    cost = cost or CostModel.for_store(store)
    if info.kind == "compressed":
        return _compressed_cutouts(reader, info, plans, fill_value, cost)
    return _image_cutouts(reader, info, plans, fill_value, cost)


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
    reader = _Reader(store, key)
    info = _locate(reader, hdu)
    if info.kind != "compressed":
        return _wcs_from(info.header)
    with _open_tiles(reader, info, [], CostModel.for_store(store)) as compressed:
        return _wcs_from(compressed.header)


def _image_cutouts(
    reader: _Reader, info: HduInfo, plans: list[StampPlan], fill_value: float, cost: CostModel
) -> list[Cutout]:
    scaling = PixelScaling.from_header(info.header)
    itemsize = scaling.raw_dtype.itemsize
    nx = info.image_shape[1]
    plan = plan_reads(row_ranges([p.read for p in plans], nx, itemsize, info.data_start), cost)
    fetched = reader.fetch(plan)
    wcs = ParentWCS(lambda: _wcs_from(info.header))
    dtype = scaling.dtype
    stamps = []
    for stamp_plan in plans:
        data = new_stamp(stamp_plan, dtype, fill_value)
        read = stamp_plan.read
        if not read.is_empty:
            first = int(_row_starts(read, nx, itemsize, info.data_start)[0])
            raw = _gather_rows(plan, fetched, first, nx * itemsize, (read.height, read.width * itemsize))
            data[stamp_plan.destination] = scaling.decode(raw.view(scaling.raw_dtype))
        stamps.append(Cutout.from_parent(data, stamp_plan.bbox, wcs, stamp_plan.index))
    return stamps


# --------------------------------------------------------------------- tile-compressed images

_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])([LXBIJKAEDCM]?)")
_TFORM_BYTES = {"L": 1, "B": 1, "I": 2, "J": 4, "K": 8, "A": 1, "E": 4, "D": 8, "C": 8, "M": 16, "P": 8, "Q": 16}


@dataclasses.dataclass(frozen=True, slots=True)
class _HeapColumn:
    """A variable-length column of the tile table: where its descriptors sit in a row."""

    offset: int
    descriptor: str  # ">i4" (P) or ">i8" (Q)
    item_bytes: int


def _heap_columns(header: fits.Header) -> list[_HeapColumn]:
    """The variable-length columns of a BINTABLE (COMPRESSED_DATA, GZIP_COMPRESSED_DATA, ...)."""
    columns, offset = [], 0
    for number in range(1, header.get("TFIELDS", 0) + 1):
        match = _TFORM.match(str(header.get(f"TFORM{number}", "")))
        if match is None:
            raise FormatError(f"unreadable TFORM{number} = {header.get(f'TFORM{number}')!r}")
        repeat = int(match.group(1) or 1)
        code, element = match.group(2), match.group(3)
        if code in "PQ":
            columns.append(_HeapColumn(offset, ">i4" if code == "P" else ">i8", _TFORM_BYTES.get(element, 1)))
        offset += -(-repeat // 8) if code == "X" else repeat * _TFORM_BYTES[code]
    if offset != header["NAXIS1"]:
        raise FormatError(f"the tile table's columns take {offset} bytes, NAXIS1 says {header['NAXIS1']}")
    return columns


@dataclasses.dataclass(frozen=True, slots=True)
class _TileGrid:
    """The tiles of a 2-D compressed image, numbered in table-row order (x fastest)."""

    shape: tuple[int, int]
    tile: tuple[int, int]

    @classmethod
    def from_header(cls, header: fits.Header) -> _TileGrid:
        nx, ny = header["ZNAXIS1"], header["ZNAXIS2"]
        return cls((ny, nx), (header.get("ZTILE2", 1), header.get("ZTILE1", nx)))

    @property
    def columns(self) -> int:
        return -(-self.shape[1] // self.tile[1])

    def box(self, row: int) -> Box:
        ty, tx = divmod(row, self.columns)
        y0, x0 = ty * self.tile[0], tx * self.tile[1]
        return Box(x0, y0, min(x0 + self.tile[1], self.shape[1]), min(y0 + self.tile[0], self.shape[0]))

    def rows(self, read: Box) -> list[int]:
        """Table rows of the tiles a box touches."""
        if read.is_empty:
            return []
        ty = range(read.y0 // self.tile[0], (read.y1 - 1) // self.tile[0] + 1)
        tx = range(read.x0 // self.tile[1], (read.x1 - 1) // self.tile[1] + 1)
        return [y * self.columns + x for y in ty for x in tx]

    def regions(self, rows: Sequence[int], max_pixels: int) -> dict[Box, list[int]]:
        """Group tiles into rectangles of whole tiles, each decompressed by one astropy call.

        Runs of neighbouring tiles along x in each tile row, stacked while the
        same run repeats in the next tile row and the rectangle stays under
        ``max_pixels`` (one call per tile would cost astropy a pass over the
        whole tile table each).

        Returns
        -------
        dict
            Each rectangle (in pixels) and the table rows of its tiles.
        """
        runs: dict[int, list[list[int]]] = {}  # tile row -> [[first, stop) tile columns, ...]
        for row in sorted(rows):
            ty, tx = divmod(row, self.columns)
            line = runs.setdefault(ty, [])
            if line and line[-1][1] == tx:
                line[-1][1] += 1
            else:
                line.append([tx, tx + 1])
        stacks: dict[tuple[int, int], list[int]] = {}  # run -> [first, stop) tile rows, still growing
        closed: list[tuple[int, int, int, int]] = []
        for ty, line in sorted(runs.items()):
            for tx0, tx1 in line:
                stack = stacks.get((tx0, tx1))
                pixels = (ty + 1 - stack[0]) * (tx1 - tx0) * self.tile[0] * self.tile[1] if stack else 0
                if stack and stack[1] == ty and pixels <= max_pixels:
                    stack[1] = ty + 1
                    continue
                if stack:
                    closed.append((stack[0], stack[1], tx0, tx1))
                stacks[(tx0, tx1)] = [ty, ty + 1]
        closed += [(ty0, ty1, tx0, tx1) for (tx0, tx1), (ty0, ty1) in stacks.items()]
        return {
            Box(
                tx0 * self.tile[1],
                ty0 * self.tile[0],
                min(tx1 * self.tile[1], self.shape[1]),
                min(ty1 * self.tile[0], self.shape[0]),
            ): [y * self.columns + x for y in range(ty0, ty1) for x in range(tx0, tx1)]
            for ty0, ty1, tx0, tx1 in closed
        }


_MAX_REGION_PIXELS = 4 * 1024 * 1024


def _compressed_cutouts(
    reader: _Reader, info: HduInfo, plans: list[StampPlan], fill_value: float, cost: CostModel
) -> list[Cutout]:
    grid = _TileGrid.from_header(info.header)
    tiles = {p.index: grid.rows(p.read) for p in plans}
    regions = grid.regions(sorted({row for rows in tiles.values() for row in rows}), _MAX_REGION_PIXELS)
    region_of = {row: region for region, rows in regions.items() for row in rows}
    users: dict[Box, list[StampPlan]] = {region: [] for region in regions}
    for stamp_plan in plans:
        for region in dict.fromkeys(region_of[row] for row in tiles[stamp_plan.index]):
            users[region].append(stamp_plan)
    with _open_tiles(reader, info, sorted(region_of), cost) as compressed:
        dtype = PixelScaling.from_header(compressed.header).dtype
        stamps = {p.index: new_stamp(p, dtype, fill_value) for p in plans}
        for region, stamp_plans in users.items():
            pixels = compressed.section[region.slices()]
            for stamp_plan in stamp_plans:
                part = stamp_plan.read.intersection(region)
                stamps[stamp_plan.index][_within(part, stamp_plan.bbox)] = pixels[_within(part, region)]
        header = compressed.header
    wcs = ParentWCS(lambda: _wcs_from(header))
    return [Cutout.from_parent(stamps[p.index], p.bbox, wcs, p.index) for p in plans]


@contextlib.contextmanager
def _open_tiles(reader: _Reader, info: HduInfo, rows: list[int], cost: CostModel) -> Iterator[fits.CompImageHDU]:
    """Open, with astropy, a small FITS file holding only the tiles ``rows`` of a compressed HDU."""
    with fits.open(io.BytesIO(_tile_subset(reader, info, rows, cost))) as hdus:
        compressed = hdus[1]
        if not isinstance(compressed, fits.CompImageHDU):
            raise FormatError(f"HDU {info.index} of {reader.key!r} is not a readable tile-compressed image")
        yield compressed


def _within(box: Box, frame: Box) -> tuple[slice, slice]:
    """Slices of ``box`` in an array whose pixel (0, 0) is ``frame``'s corner."""
    return Box(box.x0 - frame.x0, box.y0 - frame.y0, box.x1 - frame.x0, box.y1 - frame.y0).slices()


def _tile_subset(reader: _Reader, info: HduInfo, rows: list[int], cost: CostModel) -> bytes:
    """A small FITS file: the tile table, with only ``rows`` pointing at heap bytes (fetched in one call)."""
    header = info.header
    row_bytes, nrows = header["NAXIS1"], header["NAXIS2"]
    table = np.frombuffer(reader.read(info.data_start, info.data_start + row_bytes * nrows), np.uint8)
    if table.size != row_bytes * nrows:
        raise FormatError(f"{reader.key!r} is truncated inside the tile table of HDU {info.index}")
    table = table.reshape(nrows, row_bytes).copy()
    heap_start = info.data_start + header.get("THEAP", row_bytes * nrows)
    unused = np.setdiff1d(np.arange(nrows), rows)
    spans = []  # (descriptor array, table row, first heap byte, stop)
    for column in _heap_columns(header):
        width = 2 * np.dtype(column.descriptor).itemsize
        descriptors = table[:, column.offset : column.offset + width].view(column.descriptor)
        for row in rows:
            count, offset = int(descriptors[row, 0]), heap_start + int(descriptors[row, 1])
            spans.append((descriptors, row, offset, offset + count * column.item_bytes))
        descriptors[unused] = 0
    plan = plan_reads([(start, stop) for _, _, start, stop in spans], cost)
    fetched = reader.fetch(plan)
    heap: list[bytes | memoryview] = []
    heap_size = 0
    for descriptors, row, start, stop in spans:
        descriptors[row, 1] = heap_size
        heap.append(extract(plan, fetched, (start, stop)))
        heap_size += stop - start
    subset = header.copy()
    subset["PCOUNT"] = heap_size
    for keyword in ("THEAP", "CHECKSUM", "DATASUM"):
        subset.remove(keyword, ignore_missing=True)
    primary = fits.Header([("SIMPLE", True), ("BITPIX", 8), ("NAXIS", 0), ("EXTEND", True)])
    padding = b"\0" * (-(table.nbytes + heap_size) % BLOCK)
    head = primary.tostring().encode("ascii") + subset.tostring().encode("ascii")
    return b"".join([head, table.tobytes(), *heap, padding])
