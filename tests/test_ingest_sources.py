"""Ingest from any URL fsspec reads (here: a web server on loopback), and footprints recorded at ingest."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from objbutler import Butler
from objbutler.errors import NotFoundError, NotSupportedError
from objbutler.ingest import ingest_objects

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")


def _wcs(ra: float) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, -30.0]
    wcs.wcs.crpix = [15.5, 10.5]
    wcs.wcs.cdelt = [-1 / 3600, 1 / 3600]
    return wcs


def _write(path: Path, visit: int) -> np.ndarray:
    data = np.arange(20 * 30, dtype="float32").reshape(20, 30) * visit
    header = _wcs(10.0 * visit).to_header()
    header["EXPNUM"] = visit
    header["MJD-OBS"] = 61000.0 + visit
    fits.HDUList([fits.PrimaryHDU(header=fits.Header([("EXPNUM", visit)])),
                  fits.ImageHDU(data, header=header, name="SCI")]).writeto(path)
    return data


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, dict[int, np.ndarray]]]:
    """A plain web server on 127.0.0.1 serving a night of FITS files (nothing objbutler wrote)."""
    night = tmp_path / "www" / "night"
    night.mkdir(parents=True)
    images = {visit: _write(night / f"raw-{visit}.fits", visit) for visit in (1, 2, 3)}
    (night / "notes.txt").write_text("not FITS")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/night", images
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_copy_ingest_from_a_web_server_glob(web: tuple[str, dict[int, np.ndarray]], tmp_path: Path) -> None:
    base, images = web
    butler = Butler.create(str(tmp_path / "repo"))
    refs, failures = ingest_objects(butler, "raw", [f"{base}/raw-*.fits"], run="web", hdu="SCI",
                                    header_keys={"visit": "EXPNUM"})
    assert failures == []
    assert sorted(ref.data_id["visit"] for ref in refs) == [1, 2, 3]
    for ref in refs:
        assert ref.key.startswith("data/web/raw/") and not ref.is_direct
        np.testing.assert_array_equal(butler.get(ref).data, images[int(ref.data_id["visit"])])
        stamp, = butler.get_cutouts(ref, [(3, 4, 13, 9)])
        np.testing.assert_array_equal(stamp.data, images[int(ref.data_id["visit"])][4:9, 3:13])


def test_web_sources_are_copied_never_registered_in_place(web: tuple[str, dict[int, np.ndarray]],
                                                          tmp_path: Path) -> None:
    base, _ = web
    butler = Butler.create(str(tmp_path / "repo"))
    with pytest.raises(NotSupportedError, match="transfer='copy'"):
        ingest_objects(butler, "raw", [f"{base}/raw-1.fits"], run="web", header_keys={"visit": "EXPNUM"},
                       transfer="direct")
    refs, failures = ingest_objects(butler, "raw", [f"{base}/raw-9.fits", f"{base}/notes.txt", f"{base}/raw-2.fits"],
                                    run="web", hdu="SCI", header_keys={"visit": "EXPNUM"})
    assert [ref.data_id for ref in refs] == [{"visit": 2}]
    reasons = dict(failures)
    assert isinstance(reasons[f"{base}/raw-9.fits"], NotFoundError)
    assert "FITS" in str(reasons[f"{base}/notes.txt"]), reasons
    assert butler.query("raw") == refs  # nothing half-ingested


@pytest.mark.parametrize("transfer", ["copy", "direct"])
def test_ingest_records_footprints_so_the_sky_index_finds_the_images(tmp_path: Path, transfer: str) -> None:
    files = tmp_path / "files"
    files.mkdir()
    for visit in (1, 2):
        _write(files / f"raw-{visit}.fits", visit)
    butler = Butler.create(str(tmp_path / "repo"))
    refs, failures = ingest_objects(butler, "raw", [str(files / "raw-*.fits")], run="r", hdu="SCI",
                                    header_keys={"visit": "EXPNUM"}, transfer=transfer)
    assert failures == [] and all(ref.sky is not None for ref in refs)
    found = butler.find_images(SkyCoord([10.0, 20.0, 200.0] * u.deg, [-30.0, -30.0, -30.0] * u.deg), "raw")
    assert [[ref.data_id["visit"] for ref in hits] for hits in found] == [[1], [2], []]
    assert butler.query("raw", contains=SkyCoord(20.0 * u.deg, -30.0 * u.deg))[0].sky["mjd"] == 61002.0


def test_object_history_reads_data_registered_in_place(tmp_path: Path) -> None:
    """cutouts_at reads an image where a direct ingest left it, from the HDU that was ingested."""
    files = tmp_path / "files"
    files.mkdir()
    data = _write(files / "raw-1.fits", 1)
    butler = Butler.create(str(tmp_path / "repo"))
    (ref,), failures = ingest_objects(butler, "raw", [str(files / "raw-1.fits")], run="r", hdu="SCI",
                                      header_keys={"visit": "EXPNUM"}, transfer="direct")
    assert failures == [] and ref.is_direct
    (history,) = butler.cutouts_at(SkyCoord(10.0 * u.deg, -30.0 * u.deg), 5, "raw")
    (found, stamp), = history
    assert found.id == ref.id
    y0, x0 = stamp.slices_original[0].start, stamp.slices_original[1].start
    np.testing.assert_array_equal(stamp.data, data[y0:y0 + 5, x0:x0 + 5])
