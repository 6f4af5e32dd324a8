"""``Butler.get`` checks what it read against the size and checksum the registry recorded (issue 12).

Each test changes stored bytes behind the registry's back (a flipped byte, a
truncated or extended object, a corrupt cached copy) and shows that ``get``
raises a FormatError naming the dataset, the key, the recorded and the actual
value, while ``get(..., verify=False)`` still reads the bytes as they are.
Before verification, every one of these reads returned wrong pixels silently.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from objbutler import Box, Butler, DatasetRef
from objbutler.errors import FormatError
from objbutler.formats import dispatch
from objbutler.stores.cache import CachingStore

IMAGE = np.random.default_rng(12).normal(1000, 10, (400, 300)).astype("float32")


@pytest.fixture(params=["local", "memory"])
def butler(request: pytest.FixtureRequest, tmp_path: Path) -> Butler:
    uri = str(tmp_path / "repo") if request.param == "local" else f"memory://{uuid.uuid4().hex}"
    return Butler.create(uri)


def object_keys(butler: Butler, ref: DatasetRef) -> list[str]:
    """The keys of a dataset's objects (one, or a Zarr array's zarr.json and chunks)."""
    if ref.format != "zarr":
        return [ref.key]
    return sorted(meta.key for meta in butler.store.list(ref.key + "/"))


def rewrite(butler: Butler, key: str, change: bytes | None = None, *, flip: int | None = None) -> bytes:
    """Replace an object's bytes (or flip one bit of one byte); return the original."""
    original = butler.store.get(key)
    if flip is not None:
        changed = bytearray(original)
        changed[flip] ^= 0x10
        change = bytes(changed)
    assert change is not None
    butler.store.put(key, change)
    return original


def test_fifteen_flipped_bytes_are_fifteen_errors(butler: Butler) -> None:
    """The issue's experiment: 15 reads, each with one byte flipped somewhere in the pixels; all must fail."""
    ref = butler.put(IMAGE, "calexp", {"visit": 1}, run="r", format="fits")
    rng = np.random.default_rng(15)
    data_start = ref.layout["data_start"] if ref.layout else 0
    for position in rng.integers(data_start, ref.size, 15):
        original = rewrite(butler, ref.key, flip=int(position))
        with pytest.raises(FormatError, match="checksum"):
            butler.get(ref)
        silent = butler.get(ref, verify=False).data  # the old behaviour, still available
        assert not np.array_equal(silent, IMAGE, equal_nan=True)
        butler.store.put(ref.key, original)
    assert np.array_equal(butler.get(ref).data, IMAGE)


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
def test_the_error_names_dataset_key_and_both_checksums(butler: Butler, fmt: str) -> None:
    ref = butler.put(IMAGE, "calexp", {"visit": 2, "detector": 5}, run="night", format=fmt,
                     format_options={"chunks": (128, 128), "compressor": None} if fmt == "zarr" else None)
    keys = object_keys(butler, ref)
    victim = keys[len(keys) // 2]  # a chunk, for Zarr
    size = len(butler.store.get(victim))
    rewrite(butler, victim, flip=size - 7)
    with pytest.raises(FormatError) as caught:
        butler.get(ref)
    message = str(caught.value)
    assert "calexp" in message and "'detector': 5" in message and "run 'night'" in message
    assert ref.key in message and ref.checksum in message
    actual = re.findall(r"sha256:[0-9a-f]{64}", message)
    assert len(actual) == 2 and actual[0] != ref.checksum  # the stored one, then the recorded one
    assert butler.get(ref, verify=False).data.shape == IMAGE.shape
    # The registry's record did not change, and cutouts (range reads) are not checked against it.
    assert butler.get_cutouts(ref, [Box(0, 0, 8, 8)])[0].data.shape == (8, 8)


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
def test_a_truncated_or_extended_object_is_a_size_error(butler: Butler, fmt: str) -> None:
    ref = butler.put(IMAGE, "calexp", {"visit": 3}, run="r", format=fmt)
    key = object_keys(butler, ref)[0]
    original = rewrite(butler, key, butler.store.get(key) + b"\0" * 2880)
    with pytest.raises(FormatError, match=rf"size is {ref.size + 2880} bytes, the registry recorded {ref.size}"):
        butler.get(ref)
    rewrite(butler, key, original[:-100])
    with pytest.raises(FormatError, match="size"):
        butler.get(ref)


def test_small_datasets_are_checked_too(butler: Butler) -> None:
    metric = butler.put({"value": 5.25, "unit": "mmag"}, "metric", {"visit": 4}, run="r")
    rewrite(butler, metric.key, butler.store.get(metric.key).replace(b"5.25", b"5.75"))
    with pytest.raises(FormatError, match="checksum"):
        butler.get(metric)
    assert butler.get(metric, verify=False) == {"value": 5.75, "unit": "mmag"}
    table = butler.put(Table({"a": [1, 2, 3]}), "sources", {"visit": 4}, run="r", format="ecsv")
    rewrite(butler, table.key, butler.store.get(table.key).replace(b"\n3", b"\n4"))
    with pytest.raises(FormatError, match="checksum"):
        butler.get("sources", {"visit": 4}, run="r")


def test_bytes_that_no_longer_decode_report_the_checksum(butler: Butler) -> None:
    """Corruption that breaks the format is reported as what it is: the bytes differ from what was put."""
    ref = butler.put(IMAGE, "calexp", {"visit": 5}, run="r", format="fits")
    rewrite(butler, ref.key, flip=0)  # "SIMPLE" no longer starts the file
    with pytest.raises(FormatError, match="checksum"):
        butler.get(ref)
    with pytest.raises(FormatError, match="not a FITS file"):
        butler.get(ref, verify=False)


def test_a_corrupt_cached_copy_is_caught(tmp_path: Path) -> None:
    """The local cache is a copy on a disk: a get served from it is verified like one from the server."""
    source = Butler.create(str(tmp_path / "repo"))
    ref = source.put(IMAGE, "calexp", {"visit": 6}, run="r", format="fits")
    cached = Butler(str(tmp_path / "repo"), cache=tmp_path / "cache")
    assert np.array_equal(cached.get(ref).data, IMAGE)
    store = cached.store
    assert isinstance(store, CachingStore) and store.is_cached(ref.key)
    path = store.root / "o" / ref.key
    raw = bytearray(path.read_bytes())
    raw[-4] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="checksum"):
        cached.get(ref)
    assert np.array_equal(source.get(ref).data, IMAGE)  # the server's copy is intact


def test_large_objects_are_hashed_beside_the_decode(butler: Butler, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths (inline below the threshold, on a thread above it) catch a flipped byte and pass clean data."""
    ref = butler.put(IMAGE, "calexp", {"visit": 7}, run="r", format="fits")
    assert ref.size > 4096
    for threshold in (1, ref.size + 1):
        monkeypatch.setattr(dispatch, "_VERIFY_IN_THREAD", threshold)
        assert np.array_equal(butler.get(ref).data, IMAGE)
        original = rewrite(butler, ref.key, flip=ref.size - 2881)
        with pytest.raises(FormatError, match="checksum"):
            butler.get(ref)
        butler.store.put(ref.key, original)
