"""FITS: write an :class:`Image` as a standard FITS file, and read it back whole (both through astropy).

Cutouts without downloading the object are :mod:`objbutler.formats.fits_cutouts`.

Compression and loss (:func:`encode_fits`): every algorithm is lossless for
integer images. Floating-point images are lossless with ``GZIP_1`` and
``GZIP_2`` (stored unquantized). ``RICE_1`` and ``HCOMPRESS_1`` only code
integers, so floats are quantized first (astropy's default level of 1/16 of
each tile's noise, ``SUBTRACTIVE_DITHER_2`` so exact zeros survive): **lossy**.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.hdu.compressed import DITHER_SEED_CHECKSUM, SUBTRACTIVE_DITHER_2
from astropy.io.fits.verify import VerifyError

from objbutler.errors import FormatError
from objbutler.formats._image import Image, as_image
from objbutler.formats.fits_headers import HduSelector, check_fits_bytes

__all__ = ["COMPRESSION_TYPES", "decode_fits", "encode_fits"]

COMPRESSION_TYPES = ("RICE_1", "GZIP_1", "GZIP_2", "HCOMPRESS_1")
_LOSSLESS_FLOAT = ("GZIP_1", "GZIP_2")


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


def decode_fits(data: bytes, hdu: HduSelector = None, key: str = "") -> Image:
    """Read an image back from FITS bytes (the inverse of :func:`encode_fits`).

    The headers of the HDUs up to the chosen one are checked first
    (:func:`~objbutler.formats.fits_headers.check_fits_bytes`): data that
    would not fit in ``data``, or a compressed image too large to decode in
    memory, is a FormatError before astropy allocates anything.

    Parameters
    ----------
    data : bytes
        A whole FITS file.
    hdu : int, str or None
        HDU index or EXTNAME; by default the primary HDU if it holds data,
        else the first image extension.
    key : str, optional
        The object's key, for messages.

    Returns
    -------
    Image
        Native-endian pixels of the dtype astropy gives (uint16/uint32 via
        BZERO, floats for scaled integers), descriptive cards and WCS.

    Raises
    ------
    FormatError
        If the bytes are not FITS, declare more than they hold, or the HDU is
        not an image with data.
    """
    check_fits_bytes(data, hdu, key)
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
