"""Decoding through zarr itself: a read-only array over an in-memory ``zarr.json`` and fetched chunk bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import Buffer, default_buffer_prototype

from objbutler.errors import FormatError, ObjButlerError
from objbutler.formats.zarr_header import ZARR_JSON

__all__: list[str] = []


def _decoder(document: Mapping[str, Any], objects: Mapping[str, bytes]) -> zarr.Array:
    """A read-only zarr array over in-memory metadata and chunk bytes (missing chunks = fill)."""
    to_buffer = default_buffer_prototype().buffer.from_bytes
    contents: dict[str, Buffer] = {ZARR_JSON: to_buffer(json.dumps(document).encode())}
    contents.update((key, to_buffer(data)) for key, data in objects.items())
    return zarr.open_array(zarr.storage.MemoryStore(contents, read_only=True), mode="r", zarr_format=3)


def _decoded(read: Callable[[], Any], what: str) -> np.ndarray:
    """Run a zarr read; what its codecs raise on corrupt bytes becomes a FormatError naming ``what``."""
    try:
        return np.asarray(read())
    except (ObjButlerError, MemoryError):
        raise
    except Exception as exc:  # numcodecs and zarr raise RuntimeError, ValueError, TypeError, ...
        raise FormatError(f"{what} does not decode: {type(exc).__name__}: {exc}") from exc


def _regular(chunk_shape: Sequence[int]) -> dict[str, Any]:
    return {"name": "regular", "configuration": {"chunk_shape": list(chunk_shape)}}
