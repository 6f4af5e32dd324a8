"""Declared shapes are checked against the object's size before anything is allocated (issue 12).

Each case writes crafted bytes straight into a repository's store and ingests
them with :meth:`Butler.ingest_refs` (their size and checksum are right: the
bytes are what the registry recorded, they only lie about the image). Then a
whole ``get`` and a ``get_cutouts`` run in a child process whose address space
is capped at 2 GiB (``RLIMIT_AS``) and whose memory bound is 1 GiB
(``OBJBUTLER_MAX_IMAGE_BYTES``): each must raise FormatError within seconds,
not MemoryError, not a hang building 10^10 chunk keys, not an allocation of
gigabytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits

from objbutler import Box, Butler, DatasetRef
from objbutler.errors import FormatError
from objbutler.formats import _limits
from objbutler.formats._image import Image
from objbutler.formats.fits_cutouts import read_fits_cutouts
from objbutler.formats.fits_headers import HduInfo, check_declared_sizes
from objbutler.formats.zarr_array import encode_zarr, zarr_checksum
from objbutler.registry.commits import utc_now
from objbutler.stores.memory import MemoryStore
from objbutler.testing.wrappers import CountingStore

GIB = 2**30


# -- crafted objects ------------------------------------------------------------------


def fits_claiming(naxis1: int, naxis2: int, bitpix: int = -32) -> bytes:
    """A 5,760-byte FITS file whose header claims an ``naxis2 x naxis1`` image."""
    header = fits.Header([("SIMPLE", True), ("BITPIX", bitpix), ("NAXIS", 2), ("NAXIS1", naxis1), ("NAXIS2", naxis2)])
    return header.tostring().encode("ascii") + b"\0" * 2880


def compressed_fits_claiming(znaxis: tuple[int, int], ztile: tuple[int, int]) -> bytes:
    """A real one-tile RICE_1 image whose tile-compressed header is edited to claim other sizes."""
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.arange(256, dtype="int32").reshape(16, 16),
                                                                compression_type="RICE_1", tile_shape=(16, 16))])
    buffer = io.BytesIO()
    hdus.writeto(buffer)
    raw = buffer.getvalue()
    start = 2880
    end = raw.index(b"END" + b" " * 77, start)
    header_blocks = -(-(end - start + 80) // 2880) * 2880
    header = fits.Header.fromstring(raw[start : end + 80].decode("ascii"))
    header["ZNAXIS1"], header["ZNAXIS2"] = znaxis[1], znaxis[0]
    header["ZTILE1"], header["ZTILE2"] = ztile[1], ztile[0]
    edited = header.tostring().encode("ascii")
    assert len(edited) == header_blocks
    return raw[:start] + edited + raw[start + header_blocks :]


def zarr_document(shape: list[int], chunks: list[int], *, written: bool = True, shards: list[int] | None = None,
                  inner: list[int] | None = None) -> dict[str, Any]:
    """``zarr.json`` of a float32 array, as objbutler writes it (``written``: all chunks are there)."""
    codecs: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "little"}}]
    if shards is not None:
        assert inner is not None
        codecs = [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": inner, "codecs": codecs, "index_location": "end",
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]}}]
        chunks = shards
    return {
        "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0, "codecs": codecs,
        "attributes": {"objbutler": {"layout_version": 1, "all_chunks_written": written}} if written else {},
    }


def zarr_objects(document: dict[str, Any], chunk: bytes = b"\0" * 64) -> dict[str, bytes]:
    return {"zarr.json": json.dumps(document).encode(), "c/0/0": chunk}


CASES: dict[str, Callable[[], tuple[str, dict[str, bytes]]]] = {
    # a 5.7 KB FITS file claiming a 10^9 x 10^9 image (4 EB of float32)
    "fits 1e9 x 1e9": lambda: ("fits", {"": fits_claiming(10**9, 10**9)}),
    # plausible-looking, and still 60,000 times more data than the object holds
    "fits 8k x 8k in 5.7 KB": lambda: ("fits", {"": fits_claiming(8192, 8192, -64)}),
    # one tile that decompresses to 10^5 x 10^5 int32 (40 GB)
    "compressed one huge tile": lambda: ("fits", {"": compressed_fits_claiming((10**5, 10**5), (10**5, 10**5))}),
    # 10^10 tiles declared, one row in the tile table
    "compressed 1e10 tiles": lambda: ("fits", {"": compressed_fits_claiming((10**5, 10**5), (1, 1))}),
    # a zarr.json naming 10^10 chunks, every one of them "written"
    "zarr 1e10 chunks": lambda: ("zarr", zarr_objects(zarr_document([10**5, 10**5], [1, 1]))),
    # the same, for an array that says nothing about its chunks (it is listed)
    "zarr 1e10 chunks, listed": lambda: ("zarr", zarr_objects(zarr_document([10**5, 10**5], [1, 1], written=False))),
    # a 10 x 10 array in one chunk of 10^9 x 10^9 (a chunk is decoded whole before it is clipped)
    "zarr huge chunk": lambda: ("zarr", zarr_objects(zarr_document([10, 10], [10**9, 10**9]))),
    # one chunk of 10^6 x 10^6 float32 (4 TB)
    "zarr huge array": lambda: ("zarr", zarr_objects(zarr_document([10**6, 10**6], [10**6, 10**6]))),
    # a chunk side of 0
    "zarr zero chunk side": lambda: ("zarr", zarr_objects(zarr_document([16, 16], [0, 16]))),
    # a 16k x 16k shard (1 GiB) of 1 x 1 inner chunks: its index alone would be 4 GiB, the shard holds 64 bytes
    "zarr shard index": lambda: ("zarr", zarr_objects(zarr_document([16384, 16384], [], shards=[16384, 16384],
                                                                    inner=[1, 1]))),
}


def ingest(butler: Butler, name: str, fmt: str, objects: dict[str, bytes]) -> DatasetRef:
    """Write ``objects`` into the repository's store and commit them as one dataset."""
    suffix = uuid.uuid4().hex[:8]
    key = f"data/hostile/raw/case={suffix}-{suffix}.{fmt}"
    if fmt == "zarr":
        for relative, data in objects.items():
            butler.store.put(f"{key}/{relative}", data)
        checksum = f"sha256:{zarr_checksum(objects)}"
    else:
        butler.store.put(key, objects[""])
        checksum = f"sha256:{hashlib.sha256(objects['']).hexdigest()}"
    ref = DatasetRef(id=str(uuid.uuid4()), dataset_type="raw", data_id={"case": name}, run="hostile", format=fmt,
                     key=key, size=sum(len(data) for data in objects.values()), checksum=checksum,
                     created=utc_now())
    return butler.ingest_refs([ref], verify_checksums=True)[0]


CHILD = textwrap.dedent("""
    import json, resource, sys, traceback
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    from objbutler import Box, Butler
    from objbutler.testing.wrappers import CountingStore
    counting = CountingStore(Butler(sys.argv[1]).store)
    butler = Butler(sys.argv[1], store=counting)
    ref = butler.find("raw", {"case": sys.argv[2]}, run="hostile")
    results = {}
    for name, call in (("get", lambda: butler.get(ref)),
                       ("cutouts", lambda: butler.get_cutouts(ref, [Box(0, 0, 8, 8), Box(3, 3, 9, 11)]))):
        butler.registry.refresh()  # the registry's reads are not the call's
        counting.reset()
        try:
            call()
            outcome = "no error"
        except BaseException as exc:
            outcome = type(exc).__name__ + ": " + str(exc)[:300]
        results[name] = [outcome, counting.requests, counting.bytes_read]
        print(json.dumps({name: results[name]}), flush=True)
""")


@pytest.fixture(scope="module")
def hostile_repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("hostile") / "repo")
    butler = Butler.create(uri)
    for name, make in CASES.items():
        fmt, objects = make()
        ingest(butler, name, fmt, objects)
    return uri


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_shapes_are_format_errors_without_allocating(case: str, hostile_repo: str) -> None:
    env = {"OBJBUTLER_MAX_IMAGE_BYTES": "1G", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    try:
        child = subprocess.run([sys.executable, "-c", CHILD, hostile_repo, case], capture_output=True, text=True,
                               timeout=60, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{case}: still running after 60 s (output so far: {exc.stdout!r})")
    results: dict[str, list[Any]] = {}
    for line in child.stdout.splitlines():
        results.update(json.loads(line))
    assert set(results) == {"get", "cutouts"}, f"{case}: the child died: {child.stderr[-2000:]}"
    stored = sum(path.stat().st_size for path in Path(hostile_repo, "data").rglob("*") if path.is_file())
    for call, (outcome, requests, bytes_read) in results.items():
        assert outcome.startswith("FormatError: "), f"{case}, {call}: {outcome}"
        # Refused from what was read, not by working through the declared shape: a few requests, and no more
        # bytes than the repository holds (a loop over declared tiles or chunks would read on and on).
        assert requests <= 12, f"{case}, {call}: {requests} requests"
        assert bytes_read <= stored, f"{case}, {call}: read {bytes_read} bytes, the repository holds {stored}"


# -- the checks themselves, in process --------------------------------------------------


def test_messages_say_what_was_declared_and_what_is_there() -> None:
    data = fits_claiming(10**9, 10**9)
    header = fits.Header.fromstring(data[:2880].decode("ascii"))
    with pytest.raises(FormatError, match=r"declares 4,000,000,000,000,000,000 bytes of data from byte 2,880, "
                                          r"but the object holds 5,760 bytes"):
        check_declared_sizes(HduInfo(0, header, 2880), len(data), "k")
    check_declared_sizes(HduInfo(0, header, 2880), None, "k")  # no size known: nothing to compare with
    header["NAXIS1"] = -3
    with pytest.raises(FormatError, match="negative"):
        check_declared_sizes(HduInfo(0, header, 2880), None, "k")
    header["NAXIS1"] = "wide"
    with pytest.raises(FormatError, match="not an integer"):
        check_declared_sizes(HduInfo(0, header, 2880), None, "k")


def test_the_memory_bound_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBJBUTLER_MAX_IMAGE_BYTES", "3G")
    assert _limits.memory_limit() == 3 * GIB
    monkeypatch.delenv("OBJBUTLER_MAX_IMAGE_BYTES")
    assert _limits.memory_limit() >= GIB  # the machine's memory
    _limits.check_bytes(GIB, "fine")
    with pytest.raises(FormatError, match="OBJBUTLER_MAX_IMAGE_BYTES"):
        _limits.check_bytes(10**20, "an array")


def test_cutouts_without_a_known_size_cost_no_extra_request() -> None:
    """A direct caller that passes no object size: tiles are checked from the header alone, the size when the
    first read reached the end of the object, and data past the end of a larger object is a short read."""
    store = CountingStore(MemoryStore())
    store.put("small.fits", compressed_fits_claiming((10**5, 10**5), (10**5, 10**5)))
    with pytest.raises(FormatError, match="allocate"):
        read_fits_cutouts(store, "small.fits", [Box(0, 0, 4, 4)])
    store.put("big.fits", compressed_fits_claiming((10**5, 10**5), (10**5, 10**5)) + b"\0" * 100 * 2880)
    with pytest.raises(FormatError, match="allocate"):
        read_fits_cutouts(store, "big.fits", [Box(0, 0, 4, 4)])
    store.put("plain.fits", fits_claiming(4096, 4096))
    with pytest.raises(FormatError, match="declares 67,108,864 bytes of data"):
        read_fits_cutouts(store, "plain.fits", [Box(0, 0, 4, 4)])
    store.put("plain-big.fits", fits_claiming(10**5, 10**5) + b"\0" * 100 * 2880)
    with pytest.raises(FormatError, match="truncated"):
        read_fits_cutouts(store, "plain-big.fits", [Box(0, 50_000, 4, 50_004)])
    assert store.requests_by_method.get("head", 0) == 0


def test_honest_images_still_read(tmp_path: Path) -> None:
    """The checks pass real images of every kind (plain, compressed, Zarr, sharded, not written by objbutler)."""
    butler = Butler.create(str(tmp_path / "repo"))
    image = np.random.default_rng(4).normal(size=(300, 260)).astype("float32")
    refs = [
        butler.put(image, "calexp", {"visit": 1}, run="r", format="fits"),
        butler.put(image, "calexp", {"visit": 2}, run="r", format="fits", format_options={"compression": "GZIP_2"}),
        butler.put(image, "calexp", {"visit": 3}, run="r", format="zarr"),
        butler.put(image, "calexp", {"visit": 4}, run="r", format="zarr",
                   format_options={"chunks": (32, 32), "shards": (128, 128)}),
    ]
    objects = encode_zarr(Image(image, fits.Header(), None), chunks=(100, 100))
    document = json.loads(objects["zarr.json"])
    document["attributes"] = {}  # not written by objbutler: listed, chunks may be missing
    objects = {"zarr.json": json.dumps(document).encode(), **{k: v for k, v in objects.items() if k != "zarr.json"}}
    refs.append(ingest(butler, "foreign", "zarr", objects))
    for ref in refs:
        assert np.array_equal(butler.get(ref).data, image), ref.format
        assert np.array_equal(butler.get_cutouts(ref, [Box(250, 290, 260, 300)])[0].data, image[290:300, 250:260])
