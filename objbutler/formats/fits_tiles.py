"""Tile-compressed FITS images: the tile table, and decoding single tiles exactly as astropy does.

A tile-compressed image (astropy's ``CompImageHDU``) is a BINTABLE with one
row per tile: variable-length columns point into the heap at the tile's
compressed bytes (``COMPRESSED_DATA``, or ``GZIP_COMPRESSED_DATA`` /
``UNCOMPRESSED_DATA`` for float tiles that would not quantize), and fixed
columns hold its ``ZSCALE``, ``ZZERO`` and ``ZBLANK``.

:class:`TileTable` parses that table from its raw bytes (no astropy HDU is
built), says which heap byte ranges a set of tiles needs, and
:meth:`TileTable.decode` turns one tile's heap bytes into pixels. Decoding
calls astropy's own codecs and dequantizer (the C code astropy runs for
``.data`` and ``.section``, which releases the GIL), in the same order and
with the same per-tile settings, dither row and null handling as astropy's
``decompress_image_data_section``: so a tile decoded here equals astropy's
decompression bit for bit, and tiles can be decoded on several threads.

The codecs live in astropy's private ``astropy.io.fits.hdu.compressed``
modules; they are reached only through :mod:`objbutler.formats._internals`,
which checks them at import and otherwise decodes each tile through the public
``CompImageHDU.section`` (slower, same pixels). Both paths are checked against
astropy's public decompression in the tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from astropy.io import fits

from objbutler.cutouts import Box
from objbutler.errors import FormatError
from objbutler.formats._internals import TileDecoder, tile_decoder
from objbutler.formats._internals import image_header as _internal_image_header

__all__ = ["THREAD_SAFE_ALGORITHMS", "TileGrid", "TileTable", "image_header"]

THREAD_SAFE_ALGORITHMS = frozenset({"RICE_1", "RICE_ONE", "GZIP_1", "GZIP_2", "NOCOMPRESS"})
"""Codecs that may decode tiles on several threads at once. cfitsio's HCOMPRESS decoder keeps its
bit-reader state in static variables, and PLIO is not vetted, so those decode on one thread. The
dequantizer's table of random numbers is built on its first call: decode one tile before going parallel."""

_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])([LXBIJKAEDCM]?)")
_FIXED_DTYPES = {
    "L": "i1", "B": "u1", "I": ">i2", "J": ">i4", "K": ">i8", "A": "S1", "E": ">f4", "D": ">f8", "C": ">c8",
    "M": ">c16",
}
_HEAP_COLUMNS = ("COMPRESSED_DATA", "GZIP_COMPRESSED_DATA", "UNCOMPRESSED_DATA")


@dataclasses.dataclass(frozen=True, slots=True)
class TileGrid:
    """The tiles of a 2-D compressed image, numbered in table-row order (x fastest).

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the image.
    tile : tuple of int
        ``(rows, columns)`` of a tile (edge tiles are clipped to the image).
    """

    shape: tuple[int, int]
    tile: tuple[int, int]

    @classmethod
    def from_header(cls, header: fits.Header) -> TileGrid:
        """The grid of a compressed image's BINTABLE header (ZNAXISn, ZTILEn; row tiles by default)."""
        nx, ny = header["ZNAXIS1"], header["ZNAXIS2"]
        return cls((ny, nx), (header.get("ZTILE2", 1), header.get("ZTILE1", nx)))

    @property
    def columns(self) -> int:
        """Tiles per tile row."""
        return -(-self.shape[1] // self.tile[1])

    def box(self, row: int) -> Box:
        """The pixels of tile ``row`` (clipped to the image)."""
        ty, tx = divmod(row, self.columns)
        y0, x0 = ty * self.tile[0], tx * self.tile[1]
        return Box(x0, y0, min(x0 + self.tile[1], self.shape[1]), min(y0 + self.tile[0], self.shape[0]))

    def rows(self, read: Box) -> list[int]:
        """Table rows of the tiles a box (inside the image) touches."""
        if read.is_empty:
            return []
        ty = range(read.y0 // self.tile[0], (read.y1 - 1) // self.tile[0] + 1)
        tx = range(read.x0 // self.tile[1], (read.x1 - 1) // self.tile[1] + 1)
        return [y * self.columns + x for y in ty for x in tx]


def _table_dtype(header: fits.Header) -> np.dtype[Any]:
    """The big-endian row layout of a BINTABLE, named by TTYPEn (upper-cased)."""
    names, formats = [], []
    for number in range(1, header.get("TFIELDS", 0) + 1):
        match = _TFORM.match(str(header.get(f"TFORM{number}", "")))
        if match is None:
            raise FormatError(f"unreadable TFORM{number} = {header.get(f'TFORM{number}')!r}")
        repeat, code = int(match.group(1) or 1), match.group(2)
        if code in "PQ":
            item: Any = (">i4" if code == "P" else ">i8", (2,))
        elif code == "X":
            item = ("u1", (-(-repeat // 8),))
        else:
            item = (_FIXED_DTYPES[code], (repeat,)) if repeat != 1 else _FIXED_DTYPES[code]
        names.append(str(header.get(f"TTYPE{number}", f"COL{number}")).strip().upper())
        formats.append(item)
    dtype = np.dtype({"names": names, "formats": formats})
    if dtype.itemsize != header["NAXIS1"]:
        raise FormatError(f"the tile table's columns take {dtype.itemsize} bytes, NAXIS1 says {header['NAXIS1']}")
    return dtype


def _heap_element(header: fits.Header, name: str) -> np.dtype[Any]:
    """The dtype of the heap items a variable-length column points at (``1PB`` -> uint8, ...)."""
    for number in range(1, header.get("TFIELDS", 0) + 1):
        if str(header.get(f"TTYPE{number}", "")).strip().upper() == name:
            match = _TFORM.match(str(header[f"TFORM{number}"]))
            element = match.group(3) if match else ""
            return np.dtype(_FIXED_DTYPES.get(element or "B", "u1"))
    raise FormatError(f"the tile table has no {name} column")


def image_header(bintable_header: fits.Header) -> fits.Header:
    """The image header a compressed HDU stands for (ZBITPIX -> BITPIX, ...), as astropy derives it."""
    return _internal_image_header(bintable_header)


@dataclasses.dataclass(frozen=True)
class TileTable:
    """The parsed tile table of one tile-compressed image HDU.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The BINTABLE header (ZIMAGE = T).
    rows : numpy.ndarray
        The table, one structured row per tile.
    heap_start : int
        Byte offset of the heap in the object.

    Attributes
    ----------
    grid : TileGrid
        Where each tile lies in the image.
    algorithm : str
        ZCMPTYPE, e.g. ``"RICE_1"``.
    """

    header: fits.Header
    rows: np.ndarray
    heap_start: int
    grid: TileGrid = dataclasses.field(init=False)
    algorithm: str = dataclasses.field(init=False)
    _decoder: TileDecoder = dataclasses.field(init=False, repr=False)
    _elements: dict[str, np.dtype[Any]] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        header = self.header
        names = self.rows.dtype.names or ()
        if header.get("ZCMPTYPE") is None or "COMPRESSED_DATA" not in names:
            raise FormatError("not a tile-compressed image: no ZCMPTYPE or COMPRESSED_DATA column")
        if header.get("ZNAXIS") != 2:
            raise FormatError(f"a {header.get('ZNAXIS')}-D compressed image; cutouts need a 2-D image")
        try:
            decoder = tile_decoder(header, names)  # header cards read once here, not per tile
        except (KeyError, ValueError) as exc:
            raise FormatError(f"unreadable compression settings: {exc}") from exc
        object.__setattr__(self, "grid", TileGrid.from_header(header))
        object.__setattr__(self, "algorithm", str(header["ZCMPTYPE"]).strip())
        object.__setattr__(self, "_decoder", decoder)
        elements = {name: _heap_element(header, name) for name in _HEAP_COLUMNS if name in names}
        object.__setattr__(self, "_elements", elements)  # heap column -> dtype of the items it points at

    @classmethod
    def parse(cls, header: fits.Header, table: bytes | memoryview, data_start: int) -> TileTable:
        """Parse the table bytes that follow a compressed HDU's header.

        Parameters
        ----------
        header : astropy.io.fits.Header
            The BINTABLE header.
        table : bytes or memoryview
            ``NAXIS1 * NAXIS2`` bytes from ``data_start``.
        data_start : int
            Byte offset of the table in the object.

        Raises
        ------
        FormatError
            If the table is short or its columns do not add up.
        """
        dtype = _table_dtype(header)
        if len(table) != dtype.itemsize * header["NAXIS2"]:
            raise FormatError(f"the tile table is truncated: {len(table)} of {dtype.itemsize * header['NAXIS2']} bytes")
        rows = np.frombuffer(table, dtype)
        return cls(header, rows, data_start + header.get("THEAP", dtype.itemsize * header["NAXIS2"]))

    def heap_ranges(self, tiles: Sequence[int]) -> list[tuple[int, int]]:
        """The heap byte ranges ``(start, stop)`` (object offsets) that decoding ``tiles`` reads."""
        ranges = []
        for name, element in self._elements.items():
            itemsize = element.itemsize
            descriptors = self.rows[name][np.asarray(tiles, dtype=np.int64)]
            for count, offset in descriptors.tolist():
                if count:
                    start = self.heap_start + offset
                    ranges.append((start, start + count * itemsize))
        return ranges

    def heap_span(self, tile: int, name: str) -> tuple[int, int, np.dtype[Any]]:
        """``(start, stop, item dtype)`` of one tile's bytes in a heap column."""
        count, offset = (int(v) for v in self.rows[name][tile])
        itemsize = (dtype := self._elements[name]).itemsize
        return self.heap_start + offset, self.heap_start + offset + count * itemsize, dtype

    @property
    def parallel(self) -> bool:
        """Whether tiles may be decoded on several threads (the codec allows it, and astropy's internals are used)."""
        return self.algorithm in THREAD_SAFE_ALGORITHMS and not self._decoder.public

    @contextlib.contextmanager
    def decoding(self, tiles: Sequence[int], read_heap: Any) -> Iterator[Callable[[int], np.ndarray]]:
        """A decoder of ``tiles`` for the ``with`` block: ``decode(tile)`` gives one tile's stored pixels.

        Parameters
        ----------
        tiles : sequence of int
            Table rows of the tiles that will be decoded.
        read_heap : callable
            ``read_heap(start, stop)`` returns the object's bytes ``[start, stop)``
            (a range :meth:`heap_ranges` listed for those tiles).

        Yields
        ------
        callable
            ``decode(tile)``: ``grid.box(tile).shape`` pixels before BSCALE/BZERO, as astropy's
            decompression gives them: integers for integer images (nulls hold ZBLANK/BLANK), floats
            for float images (nulls are NaN).

        Raises
        ------
        FormatError
            If a tile's bytes do not decode (a corrupt or truncated heap).
        """

        def fetch_for(tile: int) -> Callable[[str], np.ndarray]:
            def fetch(name: str) -> np.ndarray:
                start, stop, dtype = self.heap_span(tile, name)
                return np.frombuffer(read_heap(start, stop), dtype) if stop > start else np.empty(0, dtype)

            return fetch

        def slices(tile: int) -> tuple[slice, slice]:
            return self.grid.box(tile).slices()

        try:
            with self._decoder.batch(self.rows, tiles, fetch_for, slices) as decode:

                def checked(tile: int) -> np.ndarray:
                    try:
                        return decode(tile)
                    except FormatError:
                        raise
                    except Exception as exc:  # the codecs raise CfitsioException, zlib.error, ValueError, ...
                        raise FormatError(f"tile {tile} ({self.algorithm}) does not decode: {exc}") from exc

                yield checked
        except FormatError:
            raise
        except Exception as exc:  # the public path parses the fetched tiles when the batch opens
            raise FormatError(f"tiles {list(tiles)[:5]} ({self.algorithm}) do not decode: {exc}") from exc

    def decode(self, tile: int, read_heap: Any) -> np.ndarray:
        """The stored pixels of one tile (before BSCALE/BZERO), as astropy's decompression gives them.

        A batch of one (:meth:`decoding`); see there.
        """
        with self.decoding([tile], read_heap) as decode:
            return decode(tile)
