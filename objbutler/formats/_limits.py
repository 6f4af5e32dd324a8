"""Bounds that readers check declared shapes against before they allocate anything.

A stored object says how big the image it holds is: FITS through BITPIX and
NAXISn (ZNAXISn and ZTILEn for a tile-compressed image), Zarr through
``shape`` and ``chunk_grid`` in ``zarr.json``. Those numbers are data, not
promises: a 5.7 KB FITS file can claim NAXIS1 = NAXIS2 = 10^9, a
``zarr.json`` 10^10 chunks. Readers compare them with what can be true
before the first allocation, and raise :class:`~objbutler.errors.FormatError`
when they cannot:

* what an object's bytes must hold (a FITS HDU's data, a tile table and its
  heap) must fit in the object's size;
* a whole read allocates the decoded image, so its byte count must stay under
  :func:`memory_limit`, and so must any one chunk or tile (a chunk larger than
  its array is decoded whole before it is clipped);
* a whole Zarr read names every chunk, so the chunk count must stay under
  :data:`MAX_CHUNKS` (and, for an array whose every chunk was written, under
  the dataset's size in bytes: every chunk object holds at least one byte).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from objbutler.errors import FormatError

__all__ = ["MAX_CHUNKS", "check_bytes", "check_count", "memory_limit", "nbytes"]

MAX_CHUNKS = 1 << 22
"""Chunks (Zarr) or tiles (compressed FITS) a whole read will name: 4,194,304 (a 4k x 4k image in 2 x 2 chunks)."""

_FALLBACK_MEMORY = 64 << 30


def memory_limit() -> int:
    """Bytes a reader may allocate for one decoded image (or one chunk or tile of it).

    ``OBJBUTLER_MAX_IMAGE_BYTES`` (e.g. ``8G``) when set, else the machine's
    physical memory (64 GiB where it cannot be read): a larger image could not
    be held anyway.

    Returns
    -------
    int
        The bound in bytes.
    """
    text = os.environ.get("OBJBUTLER_MAX_IMAGE_BYTES", "").strip()
    if text:
        from objbutler.stores.cache import parse_size

        return parse_size(text)
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return _FALLBACK_MEMORY


def nbytes(shape: Iterable[int], itemsize: int) -> int:
    """Bytes of an array of ``shape`` (exact, whatever the sizes: Python integers)."""
    return math.prod(shape) * itemsize


def check_bytes(size: int, what: str) -> None:
    """Raise FormatError if allocating ``size`` bytes for ``what`` would pass :func:`memory_limit`.

    Parameters
    ----------
    size : int
        Bytes the reader would allocate.
    what : str
        Names the object and the array, for the message.

    Raises
    ------
    FormatError
        When ``size`` is over the bound.
    """
    limit = memory_limit()
    if size > limit:
        raise FormatError(f"{what} declares {size:,} bytes, more than the {limit:,} a reader may allocate "
                          f"(OBJBUTLER_MAX_IMAGE_BYTES): corrupt or hostile metadata")


def check_count(count: int, bound: int, what: str) -> None:
    """Raise FormatError if ``count`` chunks or tiles is more than ``bound``.

    Raises
    ------
    FormatError
        When ``count > bound``.
    """
    if count > bound:
        raise FormatError(f"{what} declares {count:,} chunks, more than the {bound:,} it can hold: "
                          f"corrupt or hostile metadata")
