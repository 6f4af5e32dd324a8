"""One normalized in-memory image that every format writes and reads.

``put`` accepts a numpy array, an astropy PrimaryHDU/ImageHDU/CompImageHDU or
HDUList, or an NDData/CCDData. :func:`as_image` turns each into an
:class:`Image` (pixels, the header cards that are not structural or WCS, and a
WCS); formats never see the caller's types.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.nddata import NDData
from astropy.wcs import WCS

from objbutler.errors import FormatError
from objbutler.formats.wcs_cards import header_wcs, merged_header, superseded_keys

__all__ = ["IMAGE_DTYPES", "Image", "as_image", "check_pixels", "to_nddata", "user_cards"]

IMAGE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")
"""Pixel types every image format stores and reads back exactly (FITS via BITPIX and BZERO)."""

# Cards that describe the FITS layout, not the image: formats regenerate them.
_STRUCTURAL = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "BSCALE", "BZERO",
    "BLANK", "END", "CHECKSUM", "DATASUM", "ZIMAGE", "ZBITPIX", "ZNAXIS", "ZTILE1", "ZTILE2",
    "ZCMPTYPE", "ZNAME1", "ZVAL1", "ZNAME2", "ZVAL2", "ZQUANTIZ", "ZDITHER0", "TFIELDS",
}
_STRUCTURAL_PREFIXES = ("NAXIS", "ZNAXIS", "ZTILE", "ZNAME", "ZVAL", "TTYPE", "TFORM")


@dataclasses.dataclass(slots=True)
class Image:
    """Pixels plus metadata, independent of any file format.

    Parameters
    ----------
    data : numpy.ndarray
        The pixels, 2-D (or N-D) in numpy order.
    header : astropy.io.fits.Header
        Descriptive cards (no structural cards; WCS cards live in ``wcs``).
    wcs : astropy.wcs.WCS or None
        The celestial WCS, if any.
    """

    data: np.ndarray
    header: fits.Header
    wcs: WCS | None

    def full_header(self) -> fits.Header:
        """Descriptive cards followed by the WCS cards (what a FITS writer emits).

        Descriptive cards the WCS cards replace (plate solutions, older forms of the
        same cards: :func:`~objbutler.formats.wcs_cards.merged_header`) are left out,
        so that wcslib reads the header back as :attr:`wcs`.
        """
        return merged_header(self.header, self.wcs)


def user_cards(header: fits.Header) -> fits.Header:
    """The cards of ``header`` that are neither structural nor part of a WCS.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Any FITS header.

    Returns
    -------
    astropy.io.fits.Header
        A new header with only descriptive cards (COMMENT and HISTORY kept).
    """
    wcs_keys = superseded_keys(header, _wcs_from(header))
    kept = fits.Header()
    for card in header.cards:
        key = card.keyword
        if key in _STRUCTURAL or key in wcs_keys or any(
            key.startswith(prefix) and key[len(prefix):].isdigit() for prefix in _STRUCTURAL_PREFIXES
        ):
            continue
        kept.append(card, end=True)
    return kept


def _has_wcs(header: fits.Header) -> bool:
    return any(key in header for key in ("CTYPE1", "CRPIX1", "CRVAL1", "CD1_1", "PC1_1"))


def _wcs_from(header: fits.Header) -> WCS | None:
    if not _has_wcs(header):
        return None
    return header_wcs(header)  # never kills the process; warns and gives None when no WCS can be built


def as_image(obj: Any) -> Image:
    """Normalize anything ``put`` accepts into an :class:`Image`.

    Parameters
    ----------
    obj : numpy.ndarray, astropy HDU, HDUList, NDData or CCDData
        The image to store.

    Returns
    -------
    Image
        The pixels, descriptive header and WCS.

    Raises
    ------
    FormatError
        For anything else, an HDUList with no image data, or pixels that
        :func:`check_pixels` refuses.
    """
    image = _as_image(obj)
    check_pixels(image.data)
    return image


def check_pixels(data: np.ndarray) -> None:
    """Refuse pixels no image format can store exactly: other dtypes, no pixels, or no dimensions.

    Raises
    ------
    FormatError
        Naming the dtype or shape, and what is allowed.
    """
    if data.dtype.kind not in "iuf" or data.dtype.itemsize > 8 or data.dtype == np.float16:
        raise FormatError(
            f"cannot store pixels of dtype {data.dtype} as an image; allowed: {', '.join(IMAGE_DTYPES)} "
            "(convert first, e.g. a bool mask with .astype('uint8'))"
        )
    if data.ndim == 0 or data.size == 0:
        raise FormatError(f"an image needs at least one pixel in at least one dimension; got shape {data.shape}")


def _as_image(obj: Any) -> Image:
    if isinstance(obj, fits.HDUList):
        for hdu in obj:
            if isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU) and hdu.data is not None:
                return as_image(hdu)
        raise FormatError("the HDUList holds no image data")
    if isinstance(obj, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
        if obj.data is None:
            raise FormatError("the HDU holds no data")
        header = obj.header
        return Image(np.asarray(obj.data), user_cards(header), _wcs_from(header))
    if isinstance(obj, NDData):
        meta = obj.meta
        header = fits.Header(meta) if not isinstance(meta, fits.Header) else meta
        wcs = obj.wcs if isinstance(obj.wcs, WCS) else _wcs_from(header)
        try:
            data = np.asarray(obj.data)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"the NDData's data is not a numeric array: {exc}") from None
        return Image(data, user_cards(header), wcs)
    if isinstance(obj, np.ndarray):
        return Image(obj, fits.Header(), None)
    raise FormatError(
        f"cannot store a {type(obj).__name__} as an image: use a numpy array, an astropy HDU or HDUList, or NDData"
    )


def to_nddata(image: Image) -> NDData:
    """Return an NDData with ``.data``, ``.wcs`` and ``.meta`` (the full header incl. WCS cards).

    Parameters
    ----------
    image : Image
        A decoded image.

    Returns
    -------
    astropy.nddata.NDData
        The image as astropy users expect it.
    """
    if image.data.ndim == 0:
        raise FormatError("decoded image has no pixels")
    return NDData(image.data, wcs=image.wcs, meta=image.full_header())
