"""FITS: write an :class:`Image` as a standard FITS file, and read it back whole (both through astropy).

Cutouts without downloading the object are :mod:`objbutler.formats.fits_cutouts`.

Compression and loss (:func:`encode_fits`): every algorithm is lossless for
integer images (scaled integers are compressed as their integers).
Floating-point images are lossless with ``GZIP_1`` and ``GZIP_2`` (stored
unquantized). ``RICE_1`` and ``HCOMPRESS_1`` only code
integers, so floats are quantized first (astropy's default level of 1/16 of
each tile's noise, ``SUBTRACTIVE_DITHER_2`` so exact zeros survive): **lossy**.

A CompImageHDU put as it is keeps its compression type, tile shape and
quantization settings; its tiles are compressed again from the decoded pixels
(astropy has no public way to copy them). That is exact for integer images.
A float image read from a quantized file is already quantized, and quantizing
it again would change it: it is stored unquantized instead (``GZIP_2``, or its
own ``GZIP_1``/``GZIP_2``), exact but larger (see docs/design.md, Formats).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.hdu.compressed import DITHER_SEED_CHECKSUM, SUBTRACTIVE_DITHER_2
from astropy.io.fits.verify import VerifyError

from objbutler.errors import FormatError
from objbutler.formats._image import NDDATA_CARD, UNCERTAINTY_CLASSES, Image, as_image
from objbutler.formats._internals import rescale
from objbutler.formats.fits_headers import HduSelector, PixelScaling, check_fits_bytes

__all__ = ["COMPRESSION_TYPES", "KEEP", "decode_fits", "encode_fits"]

COMPRESSION_TYPES = ("RICE_1", "GZIP_1", "GZIP_2", "HCOMPRESS_1")
_LOSSLESS_FLOAT = ("GZIP_1", "GZIP_2")


# --------------------------------------------------------------------- writing

UNITLESS_CARD = "NDDNOUNI"
"""Primary-header card set when an NDData without a unit had a BUNIT card in its meta."""

KEEP = "keep"
"""``compression`` default: keep the image's own tile compression (a CompImageHDU's), none for others."""


def encode_fits(image: Image, compression: str | None = KEEP, tile_shape: tuple[int, ...] | None = None) -> bytes:
    """Write an image as a standard FITS file.

    Every part of the image is written (issue 13): an NDData's unit as BUNIT
    and its mask and uncertainty as the ``MASK`` (uint8) and ``UNCERT``
    (``UTYPE`` = the class name) extensions ``CCDData.write`` writes, so
    ``CCDData.read`` reads the file; an HDUList's further image HDUs (and an
    empty primary's cards) in order; scaled integers as the same integers with
    the same BSCALE/BZERO/BLANK, when they give back exactly the values read
    (else the values, as floats).

    Parameters
    ----------
    image : Image
        Pixels, header and WCS (and whatever else :func:`~objbutler.formats._image.as_image` kept).
    compression : {"keep", None, "RICE_1", "GZIP_1", "GZIP_2", "HCOMPRESS_1"}
        ``"keep"`` (default): each image HDU keeps its own tile compression
        (type, tile shape, quantization; see the module docstring for float
        images), none for arrays and NDData. None writes every image
        uncompressed. Otherwise every image HDU is a tile-compressed extension
        (the primary HDU then empty; see the module docstring for which
        combinations are lossy). Masks and uncertainties are never compressed.
    tile_shape : tuple of int, optional
        ``(rows, columns)`` of the compression tiles of a 2-D image (clipped to
        the image); default (256, 256), or the image's own with ``"keep"``;
        other images use astropy's row tiles.

    Returns
    -------
    bytes
        The file, readable by ``astropy.io.fits.open`` as is.
    """
    if compression is not None and compression != KEEP and compression not in COMPRESSION_TYPES:
        raise ValueError(f"compression must be {KEEP!r}, None or one of {COMPRESSION_TYPES}, got {compression!r}")
    header = image.full_header()
    if image.unit is not None and (image.unit != "" or image.nddata_class != "CCDData"):
        header["BUNIT"] = image.unit  # CCDData.write leaves a dimensionless unit out; NDData needs it to tell
    if image.nddata_class is not None:
        header[NDDATA_CARD] = (image.nddata_class, "objbutler: the astropy.nddata class put")
        if image.unit is None and "BUNIT" in header:
            header[UNITLESS_CARD] = (True, "objbutler: BUNIT is a card, the NDData had no unit")
    hdus: list[Any] = []
    if image.primary_header is not None:
        hdus.append(fits.PrimaryHDU(header=image.primary_header))
    hdus += _image_hdus(image, header, not hdus, compression, tile_shape)
    for extension in image.extensions:
        hdus += _image_hdus(extension, extension.full_header(), False, compression, tile_shape)
    if image.mask is not None:
        hdus.append(fits.ImageHDU(image.mask.astype(np.uint8), name="MASK"))
    if image.uncertainty is not None:
        hdus.append(fits.ImageHDU(image.uncertainty, fits.Header([("UTYPE", image.uncertainty_class)]),
                                  name="UNCERT"))
    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer)
    return buffer.getvalue()


def _image_hdus(
    image: Image, header: fits.Header, primary: bool, compression: str | None, tile_shape: tuple[int, ...] | None
) -> list[Any]:
    """The HDUs of one image: a primary or image HDU, or (an empty primary and) a compressed extension."""
    raw = _raw_values(image)
    data = image.data if raw is None else image.data.astype(np.float64)
    if (compression == KEEP and image.compression is None) or compression is None:
        hdu: Any = (fits.PrimaryHDU if primary else fits.ImageHDU)(data=data, header=header)
    else:
        options = _kept_options(image, raw is not None) if compression == KEEP else _compression_options(
            image.data, compression, tile_shape or (256, 256), raw is not None)
        hdu = fits.CompImageHDU(data=data, header=header, **options)
    if raw is not None and image.scaling is not None:
        scaling = image.scaling
        # astropy's own rescaling (public ImageHDU.scale has no BLANK argument); raw was checked to round-trip
        # exactly. Without astropy's internals and with a BLANK, the HDU keeps the exact float values.
        rescale(hdu, scaling.dtype, scaling.bscale, scaling.bzero, scaling.blank)
    return [fits.PrimaryHDU(), hdu] if primary and isinstance(hdu, fits.CompImageHDU) else [hdu]


def _raw_values(image: Image) -> np.ndarray | None:
    """The integers a scaled image was stored as, if they give back exactly its values (else None)."""
    scaling = image.scaling
    if scaling is None or image.data.dtype.kind != "f":
        return None
    values = image.data.astype(np.float64)
    undefined = np.isnan(values)
    if (undefined.any() and scaling.blank is None) or np.isinf(values).any():
        return None
    with np.errstate(invalid="ignore"):
        raw = np.around((values - scaling.bzero) / scaling.bscale)
    if scaling.blank is not None:
        raw[undefined] = scaling.blank
    limits = np.iinfo(scaling.dtype)
    if raw.size and (raw.min() < limits.min or raw.max() > limits.max):
        return None
    stored = raw.astype(scaling.dtype)
    bitpix = {1: 8, 2: 16, 4: 32, 8: 64}[stored.dtype.itemsize]
    decoded = PixelScaling(bitpix, scaling.bscale, scaling.bzero, scaling.blank).decode(
        stored.astype(stored.dtype.newbyteorder(">")))
    if decoded.dtype != image.data.dtype or not np.array_equal(decoded, image.data, equal_nan=True):
        return None
    return stored


def _kept_options(image: Image, integers: bool) -> dict[str, Any]:
    """A CompImageHDU's own settings; float pixels are not quantized again (that would lose more)."""
    settings = dict(image.compression or {})
    if len(settings.get("tile_shape", ())) != image.data.ndim:
        settings.pop("tile_shape", None)
    if image.data.dtype.kind == "f" and not integers:
        # Floats read from a quantized image are already quantized; quantizing them again is lossy,
        # so they are stored unquantized (GZIP keeps the float bits exactly).
        if settings.get("compression_type") not in _LOSSLESS_FLOAT:
            settings["compression_type"] = "GZIP_2"
            settings.pop("hcomp_scale", None)
            settings.pop("hcomp_smooth", None)
        settings["quantize_level"] = 0.0
    return settings


def _compression_options(
    data: np.ndarray, compression: str, tile_shape: tuple[int, ...], integers: bool
) -> dict[str, Any]:
    tiles = tuple(min(t, n) for t, n in zip(tile_shape, data.shape, strict=True)) if data.ndim == 2 else None
    options: dict[str, Any] = {"compression_type": compression, "tile_shape": tiles}
    if data.dtype.kind == "f" and not integers and compression in _LOSSLESS_FLOAT:
        options["quantize_level"] = 0.0  # no quantization: the float bits are gzipped as they are
    elif data.dtype.kind == "f" and not integers:
        options.update(quantize_method=SUBTRACTIVE_DITHER_2, dither_seed=DITHER_SEED_CHECKSUM)  # lossy
    return options


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
            image = _native(as_image(chosen))
            if hdu is None and NDDATA_CARD in chosen.header:
                _attach_nddata(image, hdus, data, key)
            return image
    except FormatError:
        raise
    except (OSError, TypeError, ValueError, VerifyError) as exc:
        raise FormatError(f"not a readable FITS image: {exc}") from exc


def _native(image: Image) -> Image:
    image.data = image.data.astype(image.data.dtype.newbyteorder("="), copy=True)
    image.scaling = image.compression = None  # how it was stored, not part of what is returned
    return image


def _attach_nddata(image: Image, hdus: fits.HDUList, data: bytes, key: str) -> None:
    """Unit, mask and uncertainty of an image put as NDData (the ``CCDData.write`` layout)."""
    image.nddata_class = str(image.header.pop(NDDATA_CARD))
    if image.header.pop(UNITLESS_CARD, False):
        image.unit = None
    else:
        unit = image.header.pop("BUNIT", None)
        image.unit = None if unit is None else str(unit)
    names = [h.name for h in hdus]
    if "MASK" in names:
        check_fits_bytes(data, "MASK", key)
        image.mask = np.asarray(hdus["MASK"].data).astype(bool)
    if "UNCERT" in names:
        check_fits_bytes(data, "UNCERT", key)
        uncertainty = hdus["UNCERT"]
        image.uncertainty = np.asarray(uncertainty.data).astype(uncertainty.data.dtype.newbyteorder("="))
        kind = str(uncertainty.header.get("UTYPE", "StdDevUncertainty"))
        image.uncertainty_class = kind if kind in UNCERTAINTY_CLASSES else "StdDevUncertainty"


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
