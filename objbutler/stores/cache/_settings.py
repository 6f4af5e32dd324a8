"""Cache settings: a Butler's ``cache=``/``offline=`` arguments resolved against the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

__all__ = ["AUTO", "DEFAULT_CACHE_DIR", "DEFAULT_MAX_BYTES", "cache_settings", "parse_size"]

DEFAULT_CACHE_DIR = "~/.cache/objbutler"
DEFAULT_MAX_BYTES = 20 * 2**30
AUTO: Literal["auto"] = "auto"  # offline="auto": go offline while the server is unreachable


def parse_size(text: str) -> int:
    """Parse ``"500M"``, ``"20G"``, ``"1T"`` or a plain number of bytes.

    Parameters
    ----------
    text : str
        The size.

    Returns
    -------
    int
        Bytes.

    Raises
    ------
    ValueError
        For anything else.
    """
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a size: use e.g. 500M, 20G or a number of bytes") from None


def cache_settings(
    cache: str | os.PathLike[str] | bool | None, offline: bool | Literal["auto"] | None, environ: Any = None
) -> tuple[Path | None, bool | Literal["auto"], int]:
    """Resolve a Butler's ``cache=`` and ``offline=`` against the environment.

    Parameters
    ----------
    cache : path, bool or None
        A cache directory; ``True`` for the default (``~/.cache/objbutler``);
        ``False`` for none even if ``OBJBUTLER_CACHE`` is set; None to read
        ``OBJBUTLER_CACHE``.
    offline : bool, "auto" or None
        ``True``: never contact the server. ``"auto"``: contact it, and
        answer from the cache while it is unreachable (see
        :class:`~objbutler.stores.cache.CachingStore`'s ``auto_offline``).
        ``False``: contact it, and raise when it fails. None reads
        ``OBJBUTLER_OFFLINE`` (``1``/``true``/``yes``/``on``, or ``auto``;
        anything else is False).
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    tuple
        ``(cache directory or None, offline, max bytes)``; the bound comes
        from ``OBJBUTLER_CACHE_SIZE`` (e.g. ``20G``) or the default.

    Raises
    ------
    ValueError
        For ``offline`` (or ``"auto"``) with the cache switched off, or an
        ``offline`` that is none of the above.
    """
    env = os.environ if environ is None else environ
    if offline is None:
        word = env.get("OBJBUTLER_OFFLINE", "").strip().lower()
        offline = AUTO if word == AUTO else word in ("1", "true", "yes", "on")
    if offline not in (True, False, AUTO):
        raise ValueError(f"offline must be True, False or {AUTO!r}, got {offline!r}")
    if cache is None:
        cache = env.get("OBJBUTLER_CACHE") or None
    if cache is True or (cache is None and offline):
        cache = DEFAULT_CACHE_DIR
    if cache is False or cache is None:
        if offline:
            raise ValueError(f"offline={offline!r} needs a cache: pass cache=<directory> (or leave cache unset)")
        return None, False, DEFAULT_MAX_BYTES
    size = env.get("OBJBUTLER_CACHE_SIZE")
    return Path(cache).expanduser(), offline, parse_size(size) if size else DEFAULT_MAX_BYTES
