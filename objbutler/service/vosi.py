"""VOSI documents (IVOA VOSI 1.1, as SODA 1.0 2.4-2.5 and DataLink 1.1 2.2-2.3 ask): capabilities, availability.

Both are siblings of the endpoints they describe (``api/cutout/...`` and ``api/datalink/...``) and
need no token: they say what the service is, not what the repository holds.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

__all__ = ["vosi_availability", "vosi_capabilities"]

_CAPABILITIES = (
    ("ivo://ivoa.net/std/VOSI#capabilities", "api/cutout/capabilities"),
    ("ivo://ivoa.net/std/VOSI#availability", "api/cutout/availability"),
    ("ivo://ivoa.net/std/SODA#sync-1.0", "api/cutout/sync"),
    ("ivo://ivoa.net/std/DataLink#links-1.1", "api/datalink/links"),
)


def vosi_capabilities(base_url: str) -> bytes:
    """The ``capabilities`` document: VOSI, SODA sync and DataLink links, each with its full access URL."""
    entries = "".join(
        f'  <capability standardID="{standard}">\n'
        f'    <interface xsi:type="vs:ParamHTTP" role="std" version="1.0">\n'
        f'      <accessURL use="full">{escape(base_url + path)}</accessURL>\n'
        "    </interface>\n"
        "  </capability>\n"
        for standard, path in _CAPABILITIES
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0"\n'
        '    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"\n'
        '    xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1">\n'
        f"{entries}</vosi:capabilities>\n"
    ).encode()


def vosi_availability(note: str | None = None) -> bytes:
    """The ``availability`` document: available unless ``note`` says why not."""
    available = "true" if note is None else "false"
    extra = "" if note is None else f"  <vosi:note>{escape(note)}</vosi:note>\n"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">\n'
        f"  <vosi:available>{available}</vosi:available>\n{extra}</vosi:availability>\n"
    ).encode()
