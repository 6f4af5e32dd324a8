"""Where things are in a FITS object, found with small range reads, and how raw pixels become values.

* :class:`HeaderReader` reads headers (and tile tables) with a few range
  reads: up to ~64 KiB at once (the cost model's break-even size, at least
  11,520 bytes: reading ahead is cheaper than another request), doubled until
  the END card shows up; :func:`locate` walks HDU headers by their data sizes
  to the HDU asked for, described by an :class:`HduInfo`.
* :class:`PixelScaling` decodes raw big-endian pixels exactly as astropy does
  (BSCALE/BZERO, unsigned integers, BLANK).
* :func:`fits_layout` is what the registry records of a plain image objbutler
  wrote, so that a reader can skip the header (:func:`layout_info`).
* :func:`check_declared_sizes` compares what a header declares (the data's
  size, a compressed image's tiles) with the object's size and the memory
  bound of :mod:`objbutler.formats._limits` before anything is allocated;
  :func:`check_fits_bytes` does it for every HDU a whole read opens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
from astropy.io import fits

from objbutler.errors import FormatError
from objbutler.formats._limits import check_bytes, nbytes
from objbutler.ranges import CostModel, ReadPlan
from objbutler.stores import RangeLike, normalize_ranges

__all__ = [
    "BITPIX_DTYPES",
    "BLOCK",
    "HduInfo",
    "HduSelector",
    "HeaderReader",
    "PixelScaling",
    "check_declared_sizes",
    "check_fits_bytes",
    "fits_layout",
    "hdu_layout",
    "layout_info",
    "locate",
]

BLOCK = 2880
_CARD = 80
_MIN_FIRST_READ = 4 * BLOCK
_MAX_FIRST_READ = 23 * BLOCK  # 66,240 bytes: a primary header, an extension header and a tile table of ~2,000 tiles
BITPIX_DTYPES = {8: "u1", 16: "i2", 32: "i4", 64: "i8", -32: "f4", -64: "f8"}

HduSelector = int | str | None
Decoded = Literal["nothing", "tiles", "image"]


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
        if bitpix not in BITPIX_DTYPES:
            raise FormatError(f"invalid {bitpix_key} = {bitpix!r}")
        blank = header.get("BLANK")
        usable_blank = isinstance(blank, int | np.integer) and not isinstance(blank, bool) and bitpix > 0
        return cls(bitpix, header.get("BSCALE", 1), header.get("BZERO", 0), blank if usable_blank else None)

    @property
    def raw_dtype(self) -> np.dtype[Any]:
        """Big-endian dtype of the stored pixels."""
        return np.dtype(">" + BITPIX_DTYPES[self.bitpix])

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
        naxis = header.get("NAXIS", 0)
        if not naxis:
            return 0
        axes = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
        if self.kind == "random groups":
            axes = axes[1:]
        pixels = math.prod(axes) if axes else 0
        # FITS 4.0 eq. 2: PCOUNT (a heap) counts whenever NAXIS > 0, also when an axis is 0 (a table of no rows)
        size = abs(header["BITPIX"]) // 8 * header.get("GCOUNT", 1) * (header.get("PCOUNT", 0) + pixels)
        return -(-size // BLOCK) * BLOCK

    @property
    def extname(self) -> str:
        """EXTNAME, upper-cased ("PRIMARY" for an unnamed primary HDU)."""
        return str(self.header.get("EXTNAME", "PRIMARY" if self.index == 0 else "")).strip().upper()


class RangeSource(Protocol):
    """What :class:`HeaderReader` needs of a store."""

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> Sequence[bytes | memoryview]: ...


class HeaderReader:
    """Range reads of one object that keep (and extend) the last bytes read: headers, tile tables."""

    def __init__(self, store: RangeSource, key: str, cost: CostModel) -> None:
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


def locate(reader: HeaderReader, selector: HduSelector) -> HduInfo:
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


# --------------------------------------------------------------------- declared sizes against the object


def _ints(header: fits.Header, keys: Sequence[str], default: int | None, where: str) -> list[int]:
    """Integer cards (FormatError when one is missing without a default, or not an integer)."""
    values = []
    for key in keys:
        value = header.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise FormatError(f"{where}: {key} = {value!r} is not an integer")
        values.append(int(value))
    return values


def check_declared_sizes(info: HduInfo, object_size: int | None, key: str, decoded: Decoded = "nothing") -> None:
    """Check what an HDU's header declares against its object and the memory bound, before any allocation.

    Parameters
    ----------
    info : HduInfo
        The HDU.
    object_size : int or None
        The object's size in bytes (the registry's, or a HEAD's); None skips
        the comparison with it.
    key : str
        The object's key, for messages.
    decoded : {"nothing", "tiles", "image"}
        What the caller will decode: ``"tiles"`` (cutouts of a compressed
        image) checks that the tile grid matches the tile table and that one
        tile fits the memory bound; ``"image"`` (a whole read) also that the
        whole decompressed image does.

    Raises
    ------
    FormatError
        When the HDU's data (its table and heap, for a compressed image) does
        not fit in the object, its axes are negative or not integers, its
        tiles do not match its table, or what would be decoded is over
        :func:`objbutler.formats._limits.memory_limit`.
    """
    where = f"{key!r}, HDU {info.index}"
    header = info.header
    (bitpix, naxis) = _ints(header, ("BITPIX", "NAXIS"), None, where)
    if bitpix not in BITPIX_DTYPES or not 0 <= naxis <= 999:
        raise FormatError(f"{where}: BITPIX = {bitpix} and NAXIS = {naxis} do not describe FITS data")
    axes = _ints(header, [f"NAXIS{i}" for i in range(1, naxis + 1)], 0, where)
    (gcount,) = _ints(header, ("GCOUNT",), 1, where)
    (pcount,) = _ints(header, ("PCOUNT",), 0, where)
    if min(axes, default=0) < 0 or gcount < 0 or pcount < 0:
        raise FormatError(f"{where}: negative NAXISn, GCOUNT or PCOUNT")
    counted = axes[1:] if info.kind == "random groups" else axes
    pixels = math.prod(counted) if counted else 0
    size = abs(bitpix) // 8 * gcount * (pcount + pixels) if naxis else 0  # FITS 4.0 eq. 2
    if object_size is not None and info.data_start + size > object_size:
        raise FormatError(f"{where} declares {size:,} bytes of data from byte {info.data_start:,}, but the "
                          f"object holds {object_size:,} bytes: corrupt, truncated or hostile")
    if decoded != "nothing" and info.kind == "compressed":
        _check_tiles(info, axes, where, whole=decoded == "image")


def _check_tiles(info: HduInfo, table_axes: list[int], where: str, whole: bool) -> None:
    """A compressed image's tile grid must match its table's rows, and what is decoded must fit in memory."""
    header = info.header
    (zbitpix, znaxis) = _ints(header, ("ZBITPIX", "ZNAXIS"), None, where)
    if zbitpix not in BITPIX_DTYPES or not 0 < znaxis <= 999 or len(table_axes) != 2:
        raise FormatError(f"{where}: ZBITPIX = {zbitpix}, ZNAXIS = {znaxis} do not describe a compressed image")
    shape = _ints(header, [f"ZNAXIS{i}" for i in range(1, znaxis + 1)], None, where)
    first = shape[0] if shape else 1
    tile = _ints(header, [f"ZTILE{i}" for i in range(1, znaxis + 1)], 1, where)
    if "ZTILE1" not in header:
        tile[0] = first
    if min(shape) < 0 or min(tile) < 1:
        raise FormatError(f"{where}: negative ZNAXISn or ZTILEn < 1")
    tiles = math.prod(-(-n // t) for n, t in zip(shape, tile, strict=True))
    if tiles != table_axes[1]:
        raise FormatError(f"{where}: ZNAXISn and ZTILEn make {tiles:,} tiles, "
                          f"the tile table has {table_axes[1]:,} rows")
    itemsize = max(abs(zbitpix) // 8, 4)  # quantized and scaled pixels decode to floats
    check_bytes(nbytes((min(t, max(n, 1)) for t, n in zip(tile, shape, strict=True)), itemsize), f"a tile of {where}")
    if whole:
        check_bytes(nbytes(shape, itemsize), f"the image of {where}")


def check_fits_bytes(data: bytes | memoryview, hdu: HduSelector = None, key: str = "") -> None:
    """Check every HDU a whole read opens (up to the chosen image) against the bytes, before astropy sees them.

    Parameters
    ----------
    data : bytes or memoryview
        The whole FITS object.
    hdu : int, str or None
        The HDU the read picks (see :func:`locate`).
    key : str
        The object's key, for messages.

    Raises
    ------
    FormatError
        As :func:`check_declared_sizes`, for the first HDU that declares more
        than the bytes hold; or if the bytes are not FITS.
    """
    reader = HeaderReader(_BytesSource(data), key, CostModel.local())
    offset, index = 0, 0
    while offset < len(data):
        info = reader.header_at(offset, index)
        if info is None:
            return
        chosen = _matches(info, hdu) and info.kind in ("image", "compressed")
        check_declared_sizes(info, len(data), key, "image" if chosen else "nothing")
        if chosen:
            return
        offset, index = info.data_start + info.padded_data_size, index + 1


# --------------------------------------------------------------------- the registry's layout of a plain image


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
    info = HeaderReader(_BytesSource(data), "", CostModel.local()).header_at(0, 0)
    return hdu_layout(info) if info is not None and info.index == 0 else None


def hdu_layout(info: HduInfo) -> dict[str, Any] | None:
    """Where the pixels of one uncompressed 2-D image HDU lie (what :func:`fits_layout` records), or None.

    Parameters
    ----------
    info : HduInfo
        The HDU, as :func:`locate` found it.

    Returns
    -------
    dict or None
        ``{"hdu": index, "data_start", "shape": [ny, nx], "bitpix"}`` plus any of
        BSCALE, BZERO, BLANK (lower-case keys); None for a tile-compressed image,
        one that is not 2-D, or an HDU without image data.
    """
    if info.kind != "image" or len(info.image_shape) != 2 or not info.has_data:
        return None
    layout: dict[str, Any] = {
        "hdu": info.index, "data_start": info.data_start, "shape": list(info.image_shape),
        "bitpix": info.header["BITPIX"],
    }
    layout.update({key.lower(): info.header[key] for key in _LAYOUT_SCALING if key in info.header})
    return layout


def layout_info(layout: Any, size: int | None) -> HduInfo | None:
    """The HduInfo a registry layout describes (None if it is malformed, partial or does not fit the object)."""
    try:
        index = layout["hdu"]
        ny, nx = (int(n) for n in layout["shape"])
        first = ("SIMPLE", True) if index == 0 else ("XTENSION", "IMAGE")
        header = fits.Header([first, ("BITPIX", int(layout["bitpix"])), ("NAXIS", 2), ("NAXIS1", nx), ("NAXIS2", ny)])
        for key in _LAYOUT_SCALING:
            if key.lower() in layout:
                header[key] = layout[key.lower()]
        info = HduInfo(index, header, int(layout["data_start"]))
        end = info.data_start + nx * ny * abs(int(layout["bitpix"])) // 8
    except (KeyError, TypeError, ValueError):
        return None
    sane = nx > 0 and ny > 0 and info.data_start > 0 and info.data_start % BLOCK == 0
    if not sane or type(index) is not int or index < 0 or int(layout["bitpix"]) not in BITPIX_DTYPES or (
            size is not None and end > size):
        return None
    return info


class _BytesSource:
    """The one store method :class:`HeaderReader` needs, over bytes in memory."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes | memoryview]:
        return [memoryview(self.data)[r.start : r.stop] for r in normalize_ranges(ranges)]


