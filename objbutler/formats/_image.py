"""One normalized in-memory image that every format writes and reads.

``put`` accepts a numpy array, an astropy PrimaryHDU/ImageHDU/CompImageHDU or
HDUList, or an NDData/CCDData. :func:`as_image` turns each into an
:class:`Image` (pixels, the header cards that are not structural or WCS, and a
WCS); formats never see the caller's types.

Nothing given is dropped silently (issue 13): an NDData's unit, mask and
uncertainty, an HDU's BSCALE/BZERO/BLANK (:class:`RawScaling`) and tile
compression (:attr:`Image.compression`), and every image HDU of an HDUList
(:attr:`Image.extensions`) travel with the image; what cannot be stored
(a PSF, an uncertainty class CCDData cannot read, a table HDU) is a FormatError.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import NDData
from astropy.wcs import WCS

from objbutler.errors import FormatError
from objbutler.formats._internals import int_dtype, original_scaling
from objbutler.formats.wcs_cards import header_wcs, merged_header, superseded_keys

__all__ = [
    "IMAGE_DTYPES",
    "NDDATA_CARD",
    "UNCERTAINTY_CLASSES",
    "Image",
    "RawScaling",
    "as_image",
    "check_pixels",
    "to_nddata",
    "user_cards",
]

NDDATA_CARD = "NDDCLASS"
"""Primary-header card naming the NDData class a FITS file was put as (absent for arrays and HDUs)."""

UNCERTAINTY_CLASSES = ("StdDevUncertainty", "VarianceUncertainty", "InverseVariance")
"""The uncertainty classes stored (those ``CCDData.write``/``CCDData.read`` know, by name)."""

_ND_CLASSES = ("NDData", "CCDData", "NDDataRef", "NDDataArray")

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
    unit: str | None = None
    """The NDData's unit (``Unit.to_string()``), None for none."""
    mask: np.ndarray | None = None
    """The NDData's mask, boolean, of the image's shape."""
    uncertainty: np.ndarray | None = None
    """The uncertainty's array (of :attr:`uncertainty_class`)."""
    uncertainty_class: str | None = None
    """One of :data:`UNCERTAINTY_CLASSES`."""
    nddata_class: str | None = None
    """The NDData class put (``"CCDData"``, ``"NDData"``, ...); None for arrays and HDUs."""
    scaling: RawScaling | None = None
    """How the pixels were stored as integers (FITS BITPIX/BSCALE/BZERO/BLANK), for FITS to keep."""
    compression: dict[str, Any] | None = None
    """A CompImageHDU's settings (``compression_type``, ``tile_shape``, ``quantize_level``, ...)."""
    extensions: list[Image] = dataclasses.field(default_factory=list)
    """Further image HDUs of an HDUList, in file order (their headers keep EXTNAME)."""
    primary_header: fits.Header | None = None
    """Cards of an HDUList's data-less primary HDU when the image is an extension."""

    @property
    def is_plain(self) -> bool:
        """True when the image is only pixels, header and WCS (what every format stores)."""
        return not self.extensions and self.mask is None and self.uncertainty is None

    def full_header(self) -> fits.Header:
        """Descriptive cards followed by the WCS cards (what a FITS writer emits).

        Descriptive cards the WCS cards replace (plate solutions, older forms of the
        same cards: :func:`~objbutler.formats.wcs_cards.merged_header`) are left out,
        so that wcslib reads the header back as :attr:`wcs`.
        """
        return merged_header(self.header, self.wcs)


@dataclasses.dataclass(frozen=True, slots=True)
class RawScaling:
    """Integer pixels scaled to values, as astropy reads a BSCALE/BZERO/BLANK image.

    Parameters
    ----------
    dtype : str
        The stored integer type (``int16``, ...).
    bscale, bzero : float
        ``value = bscale * raw + bzero``.
    blank : int or None
        Raw value of undefined pixels (NaN values).
    """

    dtype: str
    bscale: float
    bzero: float
    blank: int | None


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


_WCS_HINTS = ("CTYPE1", "CRPIX1", "CRVAL1", "CD1_1", "PC1_1")


def _has_wcs(header: fits.Header) -> bool:
    return any(key in header for key in _WCS_HINTS)


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
    if isinstance(obj, Image):
        return obj
    if isinstance(obj, fits.HDUList):
        return _from_hdulist(obj)
    if isinstance(obj, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
        if obj.data is None:
            raise FormatError("the HDU holds no data")
        return _from_hdu(obj)
    if isinstance(obj, NDData):
        return _from_nddata(obj)
    if isinstance(obj, np.ma.MaskedArray):  # an ndarray too: its mask must travel (as an NDData's does)
        mask = np.ma.getmaskarray(obj) if obj.mask is not np.ma.nomask else None
        return Image(np.ma.getdata(obj), fits.Header(), None, mask=mask, nddata_class="NDData")
    if isinstance(obj, np.ndarray):
        return Image(obj, fits.Header(), None)
    raise FormatError(
        f"cannot store a {type(obj).__name__} as an image: use a numpy array, an astropy HDU or HDUList, or NDData"
    )


_IMAGE_HDUS = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)


def _from_hdulist(hdus: fits.HDUList) -> Image:
    """The first image HDU with data, carrying every later image HDU and an empty primary's cards."""
    others = [f"{i} ({type(h).__name__} {h.name!r})" for i, h in enumerate(hdus) if not isinstance(h, _IMAGE_HDUS)]
    if others:
        raise FormatError(f"the HDUList holds HDUs that are not images: {', '.join(others)}; put tables as "
                          "separate datasets (astropy Table), or pass an HDUList of image HDUs only")
    first = next((i for i, h in enumerate(hdus) if h.data is not None and h.data.size), None)
    if first is None:
        raise FormatError("the HDUList holds no image data")
    empty = [f"{i} ({h.name!r})" for i, h in enumerate(hdus)
             if i and i != first and (h.data is None or not h.data.size)]
    if empty:
        raise FormatError(f"the HDUList holds image extensions without data: {', '.join(empty)}; remove them "
                          "(their cards would be lost) or give them pixels")
    image = _from_hdu(hdus[first])
    if first:
        image.primary_header = user_cards(hdus[0].header)
    image.extensions = [_from_hdu(hdu) for hdu in hdus[first + 1 :]]
    for extension in image.extensions:
        check_pixels(extension.data)
    return image


def _from_hdu(hdu: Any) -> Image:
    header = hdu.header
    data = np.asarray(hdu.data)
    image = Image(data, user_cards(header), _wcs_from(header))
    if isinstance(hdu, fits.CompImageHDU):
        image.compression = _compression_settings(hdu)
    image.scaling = _raw_scaling(hdu, data)
    return image


def _compression_settings(hdu: fits.CompImageHDU) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "compression_type": hdu.compression_type,
        "tile_shape": tuple(int(n) for n in hdu.tile_shape),
        "quantize_level": float(hdu.quantize_level),
        "quantize_method": int(hdu.quantize_method),
        "dither_seed": int(hdu.dither_seed),
    }
    if hdu.compression_type == "HCOMPRESS_1":
        settings["hcomp_scale"] = float(hdu.hcomp_scale)
        settings["hcomp_smooth"] = int(hdu.hcomp_smooth)
    return settings


def _raw_scaling(hdu: Any, data: np.ndarray) -> RawScaling | None:
    """The integer storage of a scaled HDU (BSCALE/BZERO not the unsigned convention, or BLANK), else None.

    astropy keeps the scaling it read only in private attributes, read through
    :func:`objbutler.formats.original_scaling` (None when they are gone: the image stays float).
    """
    bitpix, bscale, bzero, blank = original_scaling(hdu)
    dtype = int_dtype(bitpix)
    if dtype is None or data.dtype.kind != "f":
        return None  # floats stored as floats, or integers astropy already gives as integers (uint via BZERO)
    if bscale == 1 and bzero == 0 and blank is None:
        return None
    return RawScaling(dtype, float(bscale), float(bzero), int(blank) if blank is not None else None)


def _from_nddata(obj: NDData) -> Image:
    meta = obj.meta
    try:
        header = fits.Header(meta) if not isinstance(meta, fits.Header) else meta
    except (TypeError, ValueError) as exc:
        raise FormatError(f"the NDData's meta cannot be stored as FITS header cards: {exc}") from None
    if obj.wcs is None and _has_wcs(header) and "CTYPE1" not in header:
        present = [key for key in _WCS_HINTS if key in header]
        raise FormatError(f"the NDData has no WCS but its meta holds WCS cards ({', '.join(present)}) without "
                          "CTYPE1: FITS readers would read them back as a WCS it did not have; pass wcs= or "
                          "drop the cards")
    wcs = obj.wcs if isinstance(obj.wcs, WCS) else _wcs_from(header)
    try:
        data = np.asarray(obj.data)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"the NDData's data is not a numeric array: {exc}") from None
    kind = type(obj).__name__
    image = Image(data, user_cards(header), wcs, nddata_class=kind if kind in _ND_CLASSES else "NDData")
    if obj.psf is not None:
        raise FormatError("cannot store an NDData's psf; store it as a dataset of its own")
    if getattr(obj, "flags", None) is not None:
        raise FormatError("cannot store a CCDData's flags (CCDData.write cannot either); store them as a dataset "
                          "of their own")
    if obj.unit is not None and "BUNIT" in header and u.Unit(str(header["BUNIT"]), parse_strict="silent") != obj.unit:
        raise FormatError(f"the NDData's unit {obj.unit} and its meta's BUNIT {header['BUNIT']!r} disagree; "
                          "a stored image has one BUNIT: drop or fix the card")
    if obj.unit is not None:
        image.unit = obj.unit.to_string()
    if obj.mask is not None:
        mask = np.asarray(obj.mask)
        if mask.shape != data.shape or mask.dtype.kind not in "biu":
            raise FormatError(f"cannot store a mask of dtype {mask.dtype} and shape {mask.shape} for an image of "
                              f"shape {data.shape}: a mask must be a boolean (or integer) array of the image's shape")
        image.mask = mask.astype(bool)
    if obj.uncertainty is not None:
        image.uncertainty, image.uncertainty_class = _uncertainty(obj, data.shape)
    return image


def _uncertainty(obj: NDData, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    uncertainty = obj.uncertainty
    name = type(uncertainty).__name__
    if name not in UNCERTAINTY_CLASSES:
        raise FormatError(f"cannot store an uncertainty of type {name}: use one of {', '.join(UNCERTAINTY_CLASSES)} "
                          "(the types CCDData.read knows)")
    array = np.asarray(uncertainty.array)
    if array.shape != shape:
        raise FormatError(f"the uncertainty's shape {array.shape} is not the image's {shape}")
    check_pixels(array)
    if uncertainty.unit is not None:  # a unit other than the one the class derives from the data's would be lost
        derived = type(uncertainty)(array)
        NDData(np.zeros(1), uncertainty=derived, unit=obj.unit)
        if derived.unit != uncertainty.unit:
            raise FormatError(f"cannot store a {name} in {uncertainty.unit} for data in {obj.unit}: only the unit "
                              f"derived from the data's ({derived.unit}) is kept; convert the uncertainty first")
    return array, name


def to_nddata(image: Image) -> NDData:
    """Return an NDData with ``.data``, ``.wcs`` and ``.meta`` (the full header incl. WCS cards).

    An image put as an NDData subclass comes back as that class (CCDData, ...)
    with its unit, mask and uncertainty.

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
    from astropy import nddata

    kind = image.nddata_class if image.nddata_class in _ND_CLASSES else "NDData"
    cls = getattr(nddata, kind)
    unit = u.Unit(image.unit, parse_strict="silent") if image.unit is not None else None
    uncertainty = None
    if image.uncertainty is not None and image.uncertainty_class in UNCERTAINTY_CLASSES:
        uncertainty = getattr(nddata, str(image.uncertainty_class))(image.uncertainty)
    if cls is nddata.CCDData and unit is None:
        unit = u.dimensionless_unscaled  # CCDData needs a unit; CCDData.write leaves BUNIT out for this one
    return cls(image.data, wcs=image.wcs, meta=image.full_header(), unit=unit, mask=image.mask,
               uncertainty=uncertainty)
