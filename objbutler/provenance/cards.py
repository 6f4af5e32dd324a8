"""Bounded FITS header cards (PROVACT, PROVNIN, PROVIN<n>, ...) summarizing a provenance record."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from objbutler.errors import FormatError

__all__ = ["MAX_HEADER_INPUTS", "bounded_card", "provenance_cards", "stamp_fits_cards"]

MAX_HEADER_INPUTS = 20

_CARD_PATTERN = re.compile(r"^PROV(ACT|ACID|NIN|NDER|IN\d+|DF\d+)$")


def bounded_card(keyword: str, value: Any, comment: str) -> tuple[str, Any, str]:
    """``(keyword, value, comment)`` that fits one 80-character card: long strings and comments are cut."""
    from astropy.io import fits

    if isinstance(value, str):
        value = value[:68]
    room = 80 - len(fits.Card(keyword, value).image.rstrip()) - 3
    return keyword, value, comment[:room] if room > 0 else ""


def provenance_cards(record: Mapping[str, Any], max_inputs: int = MAX_HEADER_INPUTS) -> list[tuple[str, Any, str]]:
    """Bounded FITS cards summarizing a provenance record.

    ``PROVACT``/``PROVACID`` name the activity; ``PROVNIN`` and ``PROVNDER``
    count inputs and derived-from inputs; ``PROVIN<n>`` holds the id of input
    *n* (``n <= max_inputs``) with its type and data ID in the comment, and
    ``PROVDF<n>`` says whether the output was derived from it.

    Returns
    -------
    list of (keyword, value, comment)
    """
    cards: list[tuple[str, Any, str]] = []
    activity = record.get("activity")
    if activity:
        cards.append(("PROVACT", str(activity["name"]), "activity that produced this dataset"))
        cards.append(("PROVACID", str(activity["id"]), "activity id"))
    inputs = record.get("inputs") or []
    derived_ids = {link["id"] for link in record.get("derived_from") or []}
    cards.append(("PROVNIN", len(inputs), "number of inputs (full list in the registry)"))
    cards.append(("PROVNDER", len(derived_ids), "number of inputs derived from"))
    for n, link in enumerate(inputs[:max_inputs], start=1):
        described = ",".join(f"{k}={v}" for k, v in link["data_id"].items())
        cards.append((f"PROVIN{n}", str(link["id"]), f"{link['dataset_type']} {described}"))
        cards.append((f"PROVDF{n}", link["id"] in derived_ids, "derived from input"))
    return [bounded_card(*card) for card in cards]


def stamp_fits_cards(obj: Any, record: Mapping[str, Any] | None, fmt: str) -> Any:
    """Return ``obj`` with provenance cards added when it is an image going to FITS.

    The caller's object and header are not modified: the image is normalized
    (a new header) and returned as an :class:`~objbutler.formats._image.Image`. Other objects, formats, or a put
    without provenance get ``obj`` back unchanged. Provenance cards already in
    the header (from an image that was read back and put again) are replaced.
    """
    from objbutler.formats.dispatch import kind_of

    if record is None or fmt != "fits" or kind_of(obj) != "image":
        return obj
    from objbutler.formats import as_image

    try:
        image = as_image(obj)
    except FormatError:
        return obj  # encode_dataset reports it as a FormatError
    for key in [k for k in image.header if _CARD_PATTERN.match(k)]:
        del image.header[key]
    for key, value, comment in provenance_cards(record):
        image.header.append((key, value, comment), end=True)
    return image  # the normalized image itself: nothing else it carries (mask, scaling, HDUs) is dropped
