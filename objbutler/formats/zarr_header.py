"""The ``zarr.json`` attribute schema: FITS header and WCS cards as strict JSON, and the names of an image's objects.

See :mod:`objbutler.formats.zarr_array` for the schema itself.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, WCSHDO_P17, WCSHDO_all
from astropy.wcs.wcs import WCSHDO_SIP
from zarr.core.metadata.v3 import ArrayV3Metadata

from objbutler.errors import FormatError
from objbutler.formats._image import Image
from objbutler.formats.wcs_cards import header_wcs, superseded_keys

__all__ = ["IMAGE_MEMBER", "WCS_RELAX", "ZARR_JSON", "header_from_json", "header_to_json"]


ZARR_JSON = "zarr.json"


IMAGE_MEMBER = "image"
"""The member of an objbutler group (an image with a mask or uncertainty) that holds the image array."""


_LAYOUT_VERSION = 1


_WCS_RELAX = WCSHDO_all | WCSHDO_SIP | WCSHDO_P17
WCS_RELAX = _WCS_RELAX
"""The ``relax`` flags objbutler writes a WCS's header cards with (SIP and every extension astropy knows)."""


_STANDARD_KEYWORD = re.compile(r"[A-Z0-9_-]{0,8}")


_RECORD_KEYWORD = re.compile(r"[A-Z0-9_-]{1,8}\.[A-Za-z_]\w*(?:\.\w+)*")  # astropy's name of DQ1 = 'NAXES: 2'


def _join(prefix: str, key: str) -> str:
    return f"{prefix.rstrip('/')}/{key}" if prefix.strip("/") else key


def _value_to_json(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, fits.card.Undefined):
        return None
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, complex):
        return {"complex": [_value_to_json(value.real), _value_to_json(value.imag)]}
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode("ascii")}
    raise FormatError(f"cannot store a header value of type {type(value).__name__}: {value!r}")


def _value_from_json(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise FormatError(f"not a tagged header value: {value!r}")
    ((tag, payload),) = value.items()
    if tag == "float":
        return float(payload)
    if tag == "complex":
        real, imag = (_value_from_json(part) for part in payload)
        return complex(real, imag)
    if tag == "bytes":
        return base64.b64decode(payload)
    raise FormatError(f"unknown tagged header value {tag!r}")


def header_to_json(header: fits.Header) -> list[list[Any]]:
    """Turn a FITS header into the JSON card list of the attribute schema.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Any header.

    Returns
    -------
    list of [keyword, value, comment]
        Strict-JSON cards in header order (see the module docstring).
    """
    return [[_json_keyword(card), _value_to_json(card.value), card.comment] for card in header.cards]


def _json_keyword(card: fits.Card) -> str:
    """astropy's name of a card; a HIERARCH card named like a record-valued one keeps its prefix (unambiguous)."""
    keyword = card.keyword
    if card.field_specifier is None and _RECORD_KEYWORD.fullmatch(keyword):
        return f"HIERARCH {keyword}"
    return keyword


def header_from_json(cards: Iterable[Sequence[Any]]) -> fits.Header:
    """Rebuild a header from :func:`header_to_json` output.

    Parameters
    ----------
    cards : iterable of [keyword, value, comment]
        The stored cards.

    Returns
    -------
    astropy.io.fits.Header
        The cards, in order.
    """
    header = fits.Header()
    for keyword, value, comment in cards:
        value = _value_from_json(value)
        record = _RECORD_KEYWORD.fullmatch(keyword) and isinstance(value, int | float) and not isinstance(value, bool)
        plain = record or _STANDARD_KEYWORD.fullmatch(keyword) or keyword.startswith("HIERARCH ")
        name = keyword if plain else f"HIERARCH {keyword}"
        header.append(fits.Card(name, value, comment), end=True)
    return header


def _image_attributes(image: Image) -> dict[str, Any]:
    wcs_cards = None if image.wcs is None else header_to_json(image.wcs.to_header(relax=_WCS_RELAX))
    replaced = superseded_keys(image.header, image.wcs)  # cards wcslib would read as this WCS in another form
    attributes: dict[str, Any] = {
        "objbutler": {"layout_version": _LAYOUT_VERSION, "all_chunks_written": True},
        "fits_header": header_to_json(fits.Header([c for c in image.header.cards if c.keyword not in replaced])),
        "wcs": wcs_cards,
    }
    if image.nddata_class is not None or image.unit is not None:
        attributes["nddata"] = {"class": image.nddata_class or "NDData", "unit": image.unit}
    return attributes


def _stored_wcs(metadata: ArrayV3Metadata) -> WCS | None:
    cards = metadata.attributes.get("wcs")
    if not cards:
        return None
    wcs = header_wcs(header_from_json(cards))  # warns and gives None rather than raise or crash
    if wcs is not None and wcs.pixel_n_dim == len(metadata.shape):
        wcs.array_shape = metadata.shape  # as WCS(header) sets it from NAXISn when reading FITS
    return wcs
