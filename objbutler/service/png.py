"""A grey-scale PNG of a stamp, written with the standard library (zlib): a quick look, not science.

The stretch is linear between the 1st and 99.5th percentiles of the finite pixels; NaN pixels are black.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["png_bytes"]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_bytes(data: np.ndarray) -> bytes:
    """An 8-bit grey PNG of a 2-D array, row 0 at the bottom (as images are shown with origin="lower").

    Parameters
    ----------
    data : numpy.ndarray
        A 2-D image of any numeric type.

    Returns
    -------
    bytes
        The PNG file.
    """
    image = np.asarray(data, dtype=float)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"a PNG needs a non-empty 2-D image, got shape {image.shape}")
    finite = np.isfinite(image)
    grey = np.zeros(image.shape, dtype=np.uint8)
    if finite.any():
        low, high = np.percentile(image[finite], [1.0, 99.5])
        scale = 255.0 / (high - low) if high > low else 0.0
        grey[finite] = np.rint(np.clip((image[finite] - low) * scale, 0, 255)).astype(np.uint8)
    rows: np.ndarray[tuple[int, ...], np.dtype[np.uint8]] = np.flipud(grey)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    height, width = rows.shape[0], rows.shape[1]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks
