"""A read never kills the process, and distortions round-trip or are refused (issue 13, objbutler.formats.wcs_cards).

astropy's ``dss.14.29.56-62.41.05.fits.gz`` (a Digitized Sky Survey plate solution) used to put fine and
then abort the interpreter on ``get``, ``get_wcs`` and sky cutouts: the stored header held the plate
cards *and* astropy's TAN + TPD translation of them, and wcslib corrupts its heap on that mix. Through
Zarr the TPD ``DQi`` cards came back as HIERARCH cards and ``get`` raised. ``dist_lookup.fits.gz``
(lookup-table distortion) could not be put at all (a bare ValueError). Tests that could crash run
their body in a child process.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import NDData
from astropy.utils.data import get_pkg_data_filename
from astropy.wcs import WCS

from objbutler import Butler
from objbutler.errors import FormatError, NotFoundError
from objbutler.formats import wcs_cards
from objbutler.formats._image import Image
from objbutler.formats.fits import decode_fits, encode_fits
from objbutler.formats.wcs_cards import WCSWarning, header_wcs, merged_header
from objbutler.formats.zarr_array import header_from_json, header_to_json, read_zarr_wcs, write_zarr

DSS = get_pkg_data_filename("data/dss.14.29.56-62.41.05.fits.gz", package="astropy.wcs.tests")
LOOKUP = get_pkg_data_filename("data/dist_lookup.fits.gz", package="astropy.wcs.tests")
PLATE_CARDS = ("CNPIX1", "PPO3", "AMDX1", "AMDY1", "PLTRAH", "PLTDECSN", "XPIXELSZ", "PC001001")


def run_child(body: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter (where wcslib may crash); its last stdout line is JSON."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def died(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {done.returncode}; stderr tail:\n{done.stderr[-2000:]}"


def grid_error(expected: WCS, actual: WCS, shape: tuple[int, int]) -> float:
    """Largest sky separation, in pixels, between two WCSs on a grid reaching 50 % past the image."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    ny, nx = shape
    ys, xs = np.meshgrid(np.linspace(-0.5 * ny, 1.5 * ny, 21), np.linspace(-0.5 * nx, 1.5 * nx, 21), indexing="ij")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        separation = expected.pixel_to_world(xs.ravel(), ys.ravel()).separation(
            actual.pixel_to_world(xs.ravel(), ys.ravel()))
    return float(np.max(separation.deg) / np.mean(proj_plane_pixel_scales(expected.celestial)))


# -- the DSS plate solution: put, then every read, in a child ----------------------------------------


_DSS_ROUND_TRIP = """
    import json, sys, tempfile, warnings
    import numpy as np
    from astropy.io import fits
    from astropy.nddata import Cutout2D
    from astropy.wcs import WCS
    from astropy.wcs.utils import proj_plane_pixel_scales
    from objbutler import Butler
    warnings.simplefilter("ignore")
    path, fmt = sys.argv[1], sys.argv[2]
    with fits.open(path) as hdul:
        hdu = hdul[0]
        data = np.asarray(hdu.data)
        original = WCS(hdu.header, relax=True)  # plain astropy on the original file: no crash
        butler = Butler.create(tempfile.mkdtemp())
        ref = butler.put(hdu, "dss", {"n": 1}, run="r", format=fmt)
    got = butler.get(ref)
    ys, xs = np.meshgrid(np.linspace(-50, 150, 21), np.linspace(-50, 150, 21), indexing="ij")
    scale = np.mean(proj_plane_pixel_scales(original.celestial))
    def error(wcs, reference=original):
        sep = reference.pixel_to_world(xs.ravel(), ys.ravel()).separation(wcs.pixel_to_world(xs.ravel(), ys.ravel()))
        return float(np.max(sep.deg) / scale)
    sky = original.pixel_to_world([50.27, 3.27, 97.27], [40.23, 2.23, 98.23])
    stamps = butler.get_cutouts(ref, sky, size=(9, 11))
    cutouts = [Cutout2D(data, sky[i], (9, 11), wcs=original) for i in range(3)]
    print(json.dumps({"pixels": bool(np.array_equal(got.data, data)), "get_wcs": error(got.wcs),
                      "butler_get_wcs": error(butler.get_wcs(ref)),
                      "stamps": [bool(np.array_equal(s.data, c.data)) for s, c in zip(stamps, cutouts)],
                      "stamp_wcs": max(error(s.wcs, c.wcs) for s, c in zip(stamps, cutouts))}))
"""


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
def test_dss_plate_solution_reads_back_without_crashing(fmt: str) -> None:
    done = run_child(_DSS_ROUND_TRIP, DSS, fmt)
    assert done.returncode == 0, died(done)  # was SIGABRT (FITS) and "Failed to initialize distortion functions" (Zarr)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["pixels"]
    assert result["get_wcs"] < 1e-6 and result["butler_get_wcs"] < 1e-6  # pixels, on a grid past the edges
    assert result["stamps"] == [True, True, True]  # sky cutouts equal astropy's Cutout2D on the original
    assert result["stamp_wcs"] < 1e-6


def test_dss_is_stored_as_its_translation_without_the_plate_cards(tmp_path: Path) -> None:
    """The stored cards (read without building a WCS, so this cannot crash) hold TAN + TPD and no plate cards."""
    butler = Butler.create(str(tmp_path / "repo"))
    with fits.open(DSS) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits_ref = butler.put(hdul[0], "dss", {"n": 1}, run="r", format="fits")
        zarr_ref = butler.put(hdul[0], "dss", {"n": 2}, run="r", format="zarr")
    header = fits.getheader(tmp_path / "repo" / fits_ref.key)
    attributes = json.loads((tmp_path / "repo" / zarr_ref.key / "zarr.json").read_text())["attributes"]
    descriptive = {card[0] for card in attributes["fits_header"]}
    for key in PLATE_CARDS:
        assert key not in header and key not in descriptive
    assert header["CQDIS1"] == "TPD" and "DQ1.TPD.FWD.10" in header
    assert header.cards["DQ1.NAXES"].image.startswith("DQ1     = 'NAXES:")  # a record-valued card, not HIERARCH
    assert "DQ2.TPD.FWD.10" in {card[0] for card in attributes["wcs"]}
    assert header["PLATEID"].strip() == "0025" and "PLTSCALE" in header  # descriptive cards of the plate stay


_LEGACY_READ = """
    import json, sys, warnings
    from astropy.io import fits
    from astropy.wcs import WCS
    from objbutler.formats.fits import decode_fits
    from objbutler.formats.fits_cutouts import read_fits_wcs
    from objbutler.stores.memory import MemoryStore
    path = sys.argv[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdu = fits.open(path)[0]
        mixed = hdu.header.copy()
        mixed.extend(WCS(hdu.header, relax=True).to_header(relax=True), update=True)  # what put used to write
        body = fits.PrimaryHDU(hdu.data, mixed)
    import io
    buffer = io.BytesIO(); body.writeto(buffer, output_verify="silentfix")
    store = MemoryStore(); store.put("legacy.fits", buffer.getvalue())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wcs = read_fits_wcs(store, "legacy.fits")
        image = decode_fits(buffer.getvalue())
    messages = [str(w.message) for w in caught if w.category.__name__ == "WCSWarning"]
    print(json.dumps({"wcs": wcs is not None, "image_wcs": image.wcs is not None, "warnings": messages,
                      "crval": list(wcs.wcs.crval)}))
"""


def test_a_header_with_plate_cards_and_their_translation_is_read_without_crashing() -> None:
    """What put wrote before the fix: plain astropy aborts on it; objbutler reads the TPD cards and says so."""
    done = run_child(_LEGACY_READ, DSS)
    assert done.returncode == 0, died(done)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["wcs"] and result["image_wcs"]
    assert any("ignoring the DSS plate-solution cards" in message for message in result["warnings"])
    with fits.open(DSS) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = WCS(hdul[0].header, relax=True)
    np.testing.assert_allclose(result["crval"], expected.wcs.crval, rtol=1e-12)


def test_a_child_that_dies_means_no_wcs_and_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plate cards are translated in a child process: when it dies, the caller survives without a WCS."""
    monkeypatch.setattr(wcs_cards, "_CHILD_CODE", "import os; os.abort()")
    wcs_cards._translate_in_child.cache_clear()
    try:
        header = fits.getheader(DSS)
        with pytest.warns(WCSWarning, match="SIGABRT"):
            assert header_wcs(header) is None
        with pytest.raises(FormatError, match="SIGABRT"):
            header_wcs(header, errors="raise")
    finally:
        wcs_cards._translate_in_child.cache_clear()


def test_a_child_that_times_out_is_tried_again_next_time(monkeypatch: pytest.MonkeyPatch) -> None:
    wcs_cards._translate_in_child.cache_clear()
    real_run = subprocess.run

    def slow(*args: Any, **kwargs: Any) -> Any:
        raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout", 0))

    header = fits.getheader(DSS)
    monkeypatch.setattr(wcs_cards.subprocess, "run", slow)
    with pytest.warns(WCSWarning, match="took more than"):
        assert header_wcs(header) is None
    monkeypatch.setattr(wcs_cards.subprocess, "run", real_run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert header_wcs(header) is not None  # a timeout is not cached


def test_plate_cards_are_translated_in_a_child_and_cached() -> None:
    wcs_cards._translate_in_child.cache_clear()
    header = fits.getheader(DSS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = header_wcs(header), header_wcs(header)
        expected = WCS(header, relax=True)
    assert first is not None and second is not None
    assert wcs_cards._translate_in_child.cache_info().misses == 1
    assert first.pixel_shape == (100, 100)  # NAXISn carried over, as WCS(header) sets them
    assert grid_error(expected, first, (100, 100)) < 1e-9  # 17 digits: the same mapping (separation noise only)


# -- Zarr: record-valued cards stay record-valued -----------------------------------------------------


def test_zarr_header_json_keeps_record_valued_cards() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        translation = WCS(fits.getheader(DSS), relax=True).to_header(relax=True)
    back = header_from_json(json.loads(json.dumps(header_to_json(translation))))
    dq = [card for card in back.cards if card.keyword.startswith("DQ")]
    assert len(dq) == 40
    assert all(card.image.startswith(("DQ1     = '", "DQ2     = '")) for card in dq)  # was "HIERARCH DQ1.NAXES = 2.0"
    assert back["DQ1.TPD.FWD.10"] == translation["DQ1.TPD.FWD.10"]
    assert grid_error(WCS(translation, relax=True), WCS(back, relax=True), (100, 100)) < 1e-9


def test_hierarch_cards_stay_hierarch() -> None:
    header = fits.Header([fits.Card("HIERARCH ESO DET CHIP NAME", "chip 1"), fits.Card("HIERARCH ESO.TEMP", "cold"),
                          fits.Card("HIERARCH ESO.DET", 5.0)])  # named like a record-valued card
    back = header_from_json(json.loads(json.dumps(header_to_json(header))))
    assert [card.image.split("=")[0].strip() for card in back.cards] == [
        "HIERARCH ESO DET CHIP NAME", "HIERARCH ESO.TEMP", "HIERARCH ESO.DET"]
    assert back["ESO.DET"] == 5.0


# -- distortions: round-trip through both formats, or refused -------------------------------------------


def _header_file(name: str) -> fits.Header:
    path = get_pkg_data_filename(f"data/{name}", package="astropy.wcs.tests")
    return fits.Header.fromstring(Path(path).read_bytes().decode("ascii"))


def _distorted(kind: str) -> fits.PrimaryHDU:
    if kind == "TPD":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = WCS(fits.getheader(DSS), relax=True).to_header(relax=True)
        shape = (100, 100)
    else:
        header = _header_file({"SIP": "irac_sip.hdr", "TPV": "tpvonly.hdr"}[kind])
        shape = (64, 48)  # a small image: the mapping is compared past its edges anyway
    data = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape)
    return fits.PrimaryHDU(data, header)


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
@pytest.mark.parametrize("kind", ["SIP", "TPV", "TPD"])
def test_distortions_round_trip(kind: str, fmt: str, tmp_path: Path) -> None:
    hdu = _distorted(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = WCS(hdu.header, relax=True)
        butler = Butler.create(str(tmp_path / "repo"))
        ref = butler.put(hdu, "img", {"n": 1}, run="r", format=fmt)
        got = butler.get(ref)
        from_header = butler.get_wcs(ref)
    for wcs in (got.wcs, from_header):
        assert grid_error(expected, wcs, hdu.data.shape) < (1e-9 if fmt == "zarr" else 1e-6)
    assert (got.wcs.sip is not None) == (kind == "SIP")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = WCS(got.meta, relax=True)  # meta is a header wcslib reads back as the same WCS
    assert grid_error(expected, again, hdu.data.shape) < 1e-6


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
def test_lookup_table_distortion_is_refused_naming_its_cards(fmt: str, tmp_path: Path) -> None:
    butler = Butler.create(str(tmp_path / "repo"))
    with fits.open(LOOKUP) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FormatError, match=r"lookup-table distortion \(.*CPDIS1.*DP1\.EXTVER.*D2IMEXT"):
            butler.put(hdul[1], "img", {"n": 1}, run="r", format=fmt)  # was a bare ValueError
        with_tables = WCS(hdul[1].header, hdul)  # astropy builds it with the file: the tables are on the WCS
        with pytest.raises(FormatError, match="cpdis1, cpdis2, det2im1"):
            butler.put(NDData(np.asarray(hdul[1].data), wcs=with_tables), "img", {"n": 2}, run="r", format=fmt)
    with pytest.raises(NotFoundError):
        butler.query("img")  # nothing was committed


def test_a_stored_lookup_table_header_reads_without_a_wcs() -> None:
    """A FITS file with lookup-table cards (ingested as it is) reads, without a WCS and with a warning."""
    with fits.open(LOOKUP) as hdul:
        body = fits.HDUList([fits.PrimaryHDU(np.asarray(hdul[1].data), hdul[1].header)])
        buffer = io.BytesIO()
        body.writeto(buffer)
    with pytest.warns(WCSWarning, match="lookup-table distortion cards"):
        image = decode_fits(buffer.getvalue())
    assert image.wcs is None and image.data.shape == (100, 100)


def test_unbuildable_wcs_warns_on_read_and_is_refused_on_put(tmp_path: Path) -> None:
    header = _header_file("nonstandard_units.hdr")  # astropy raises: "Mismatched units type"
    with pytest.warns(WCSWarning, match="reading it without a WCS"):
        assert header_wcs(header) is None
    hdu = fits.PrimaryHDU(np.zeros((4, 5), np.float32), header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FormatError, match=r"(?s)cannot store this image's WCS.*CUNIT2"):
            Butler.create(str(tmp_path / "repo")).put(hdu, "img", {"n": 1}, run="r")


# -- the cards written next to a WCS -------------------------------------------------------------------


def test_cards_that_describe_the_wcs_again_are_not_written_next_to_it() -> None:
    """Older forms of the same cards would override the serialization (PC001001 moved the DSS by 55 degrees)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, 20.0]
    wcs.wcs.crpix = [5.0, 5.0]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    wcs.wcs.pc = [[0.9, 0.1], [-0.1, 0.9]]
    stale = fits.Header([("OBJECT", "m31"), ("PC001001", 0.2), ("PC001002", 0.7), ("CD1_1", 5e-3), ("CROTA2", 30.0),
                         ("CNPIX1", 8860), ("AMDX1", 67.2), ("A_ORDER", 2), ("CQDIS1", "TPD"), ("PLATEID", "0025"),
                         ("CTYPE1A", "GLON-CAR"), ("COMMENT", "kept")])
    merged = merged_header(stale, wcs)
    for key in ("PC001001", "PC001002", "CD1_1", "CROTA2", "CNPIX1", "AMDX1", "A_ORDER", "CQDIS1"):
        assert key not in merged
    for key in ("OBJECT", "PLATEID", "CTYPE1A", "COMMENT", "PC1_2"):
        assert key in merged
    assert grid_error(wcs, WCS(merged), (10, 10)) < 1e-9
    stored = encode_fits(Image(np.zeros((10, 10), np.float32), stale, wcs))
    back = decode_fits(stored).wcs
    assert back is not None and grid_error(wcs, back, (10, 10)) < 1e-6


def test_zarr_descriptive_cards_lose_what_the_wcs_replaces(tmp_path: Path) -> None:
    from objbutler.stores.local import LocalStore

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    store = LocalStore(str(tmp_path))
    header = fits.Header([("OBJECT", "x"), ("CNPIX1", 1), ("CD1_1", 2e-4)])
    write_zarr(store, "a.zarr", Image(np.zeros((4, 4), np.float32), header, wcs))
    attributes: dict[str, Any] = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())["attributes"]
    assert [card[0] for card in attributes["fits_header"]] == ["OBJECT"]
    back = read_zarr_wcs(store, "a.zarr")
    assert back is not None and grid_error(wcs, back, (4, 4)) < 1e-9
