"""The cutout service end to end: ``objbutler serve`` on loopback, LocalStack behind it, pyvo and a browser in front.

Expected stamps come from astropy alone: the stencil's pixel extent from ``SkyCoord`` offsets and
the image's WCS, then ``Cutout2D`` of the image the test put.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import Cutout2D
from astropy.wcs import WCS
from conftest import Backend
from objbutler_servers import ServerInfo
from sky_boundaries import circle_points, polygon_points, range_points

from objbutler import Butler
from objbutler.registry.records import DatasetRef
from objbutler.testing.service import ServiceProcess
from objbutler.testing.skyfield import pvis

pyvo = pytest.importorskip("pyvo")
from pyvo.dal.adhoc import DatalinkResults, SodaQuery  # noqa: E402

FIELD = SkyCoord(150.1 * u.deg, 2.2 * u.deg)
SODA_SYNC = "ivo://ivoa.net/std/SODA#sync-1.0"
N_IMAGES = 6
TOKEN = "s3cret-token-for-tests"


@dataclass
class Served:
    url: str
    uri: str
    refs: list[DatasetRef]
    hdus: list[fits.PrimaryHDU]
    service: ServiceProcess
    options: dict[str, str]


@pytest.fixture(scope="module")
def repo(localstack_backend: Backend) -> tuple[str, list[DatasetRef], list[fits.PrimaryHDU]]:
    uri = localstack_backend.new_uri()
    butler = Butler.create(uri, **localstack_backend.options)
    hdus = list(pvis(N_IMAGES, shape=(160, 140), seed=11))
    for k, hdu in enumerate(hdus):  # a star at the field centre, brightening visit by visit (for the gallery)
        x, y = WCS(hdu.header).world_to_pixel(FIELD)
        yy, xx = np.mgrid[: hdu.data.shape[0], : hdu.data.shape[1]]
        hdu.data += (2000.0 * (k + 1) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)).astype(np.float32)
    refs = [butler.put(hdu, "calexp", {"visit": k}, run="pvi", format="fits") for k, hdu in enumerate(hdus)]
    return uri, refs, hdus


@pytest.fixture(scope="module")
def served(repo: tuple[str, list[DatasetRef], list[fits.PrimaryHDU]],
           localstack_server: ServerInfo, localstack_backend: Backend) -> Iterator[Served]:
    uri, refs, hdus = repo
    with ServiceProcess(uri, env=localstack_server.env) as service:
        yield Served(service.url, uri, refs, hdus, service, localstack_backend.options)


# ---------------------------------------------------------------- expected stamps (astropy only)





def _expected(hdu: fits.PrimaryHDU, boundary: SkyCoord) -> Cutout2D:
    """Cutout2D of the pixels whose cells the region's boundary spans (pixel i covers i-0.5 .. i+0.5)."""
    wcs = WCS(hdu.header)
    xs, ys = wcs.world_to_pixel(boundary)
    x0, x1 = math.floor(xs.min() + 0.5), math.floor(xs.max() + 0.5) + 1
    y0, y1 = math.floor(ys.min() + 0.5), math.floor(ys.max() + 0.5) + 1
    return Cutout2D(hdu.data, ((x0 + x1) / 2, (y0 + y1) / 2), (y1 - y0, x1 - x0), wcs=wcs, mode="trim")


def _assert_same(hdu: fits.ImageHDU | fits.PrimaryHDU, expected: Cutout2D) -> None:
    np.testing.assert_array_equal(hdu.data, expected.data)
    stamp_wcs = WCS(hdu.header)
    np.testing.assert_allclose(stamp_wcs.wcs.crpix, expected.wcs.wcs.crpix)
    ny, nx = expected.data.shape
    corners = expected.wcs.pixel_to_world([0, nx - 1, 0], [0, ny - 1, ny - 1])
    assert stamp_wcs.pixel_to_world([0, nx - 1, 0], [0, ny - 1, ny - 1]).separation(corners).max() < 1e-6 * u.arcsec


# ---------------------------------------------------------------- SODA through pyvo


REGIONS = {
    "circle": ((150.1, 2.2, 0.0012), lambda v: circle_points(*v)),
    "polygon": ([(150.0995, 2.1995), (150.1012, 2.2001), (150.1003, 2.2013)], polygon_points),
    "range": ((150.0994, 150.1008, 2.1991, 2.2002), lambda v: range_points(*v)),
}


@pytest.mark.parametrize("shape", list(REGIONS))
def test_soda_query_matches_cutout2d(served: Served, shape: str) -> None:
    value, points = REGIONS[shape]
    for ref, hdu in zip(served.refs[:3], served.hdus[:3], strict=True):
        query = SodaQuery(f"{served.url}/api/cutout/sync", id=ref.id)
        if shape == "polygon":
            query.polygon = [c for vertex in value for c in vertex]
        else:
            setattr(query, shape, value)
        with fits.open(io.BytesIO(query.execute_stream().read())) as answer:
            assert len(answer) == 1
            _assert_same(answer[0], _expected(hdu, points(value)))
            assert answer[0].header["OBJBID"] == ref.id


def test_stamp_at_the_image_edge_is_trimmed_like_cutout2d(served: Served) -> None:
    hdu, ref = served.hdus[0], served.refs[0]
    corner = WCS(hdu.header).pixel_to_world(2, 3)
    circle = (float(corner.ra.deg), float(corner.dec.deg), 0.0015)
    query = SodaQuery(f"{served.url}/api/cutout/sync", id=ref.id, circle=circle)
    with fits.open(io.BytesIO(query.execute_stream().read())) as answer:
        expected = _expected(hdu, circle_points(*circle))
        assert expected.data.shape[0] < 2 * 0.0015 * 3600 / 0.2  # really trimmed
        _assert_same(answer[0], expected)


def test_multi_valued_pos_gives_one_hdu_per_stencil_in_order(served: Served) -> None:
    ref, hdu = served.refs[1], served.hdus[1]
    circles = [(150.1, 2.2, 0.0004), (150.1004, 2.2003, 0.0009), (150.0997, 2.1996, 0.0006)]
    range_ = REGIONS["range"][0]
    query = SodaQuery(f"{served.url}/api/cutout/sync", id=ref.id)
    query["POS"] = [f"CIRCLE {ra} {dec} {r}" for ra, dec, r in circles] + ["RANGE " + " ".join(map(str, range_))]
    with fits.open(io.BytesIO(query.execute_stream(post=True).read())) as answer:
        assert len(answer) == 1 + len(circles) + 1
        assert answer[0].header["NSTAMPS"] == len(circles) + 1
        for index, circle in enumerate(circles, start=1):
            _assert_same(answer[index], _expected(hdu, circle_points(*circle)))
            assert answer[index].header["EXTVER"] == index
        _assert_same(answer[-1], _expected(hdu, range_points(*range_)))


def test_datalink_discovery_end_to_end(served: Served) -> None:
    # include_narrower=False: the narrower terms would come from the IVOA vocabulary on the internet
    ref, hdu = served.refs[2], served.hdus[2]
    links = DatalinkResults.from_result_url(f"{served.url}/api/datalink/links?ID={ref.id}")
    this = next(iter(links.bysemantics("#this", include_narrower=False)))
    with fits.open(io.BytesIO(requests.get(this.access_url, timeout=30).content)) as whole:
        np.testing.assert_array_equal(whole[0].data, hdu.data)
    service = links.get_adhocservice_by_ivoid(SODA_SYNC)
    query = SodaQuery.from_resource(links, service)
    assert query["ID"] == ref.id
    query.circle = REGIONS["circle"][0]
    with fits.open(io.BytesIO(query.execute_stream().read())) as answer:
        _assert_same(answer[0], _expected(hdu, circle_points(*REGIONS["circle"][0])))
    cutout_row = next(iter(links.bysemantics("#cutout", include_narrower=False)))
    with fits.open(io.BytesIO(cutout_row.process(circle=REGIONS["circle"][0]).read())) as answer:
        _assert_same(answer[0], _expected(hdu, circle_points(*REGIONS["circle"][0])))


def test_id_by_data_id_and_png(served: Served) -> None:
    ref = served.refs[3]
    name = "objbutler://calexp?visit=3&run=pvi"
    by_uuid = requests.get(f"{served.url}/api/cutout/sync", params={"ID": ref.id, "CIRCLE": "150.1 2.2 0.001"},
                           timeout=30)
    by_name = requests.get(f"{served.url}/api/cutout/sync", params={"ID": name, "CIRCLE": "150.1 2.2 0.001"},
                           timeout=30)
    assert by_uuid.status_code == by_name.status_code == 200
    assert by_uuid.content == by_name.content
    png = requests.get(f"{served.url}/api/cutout/sync",
                       params={"ID": name, "CIRCLE": "150.1 2.2 0.001", "RESPONSEFORMAT": "image/png"}, timeout=30)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")


# ---------------------------------------------------------------- object history


def test_object_history_fits(served: Served) -> None:
    answer = requests.get(f"{served.url}/api/cutout/sky",
                          params={"POS": "150.1 2.2", "TYPE": "calexp", "SIZE": "21"}, timeout=60)
    assert answer.status_code == 200, answer.text
    butler = Butler(served.uri, **served.options)
    truth = butler.cutouts_at(FIELD, 21, "calexp")[0]
    assert len(truth) == N_IMAGES
    with fits.open(io.BytesIO(answer.content)) as hdul:
        assert len(hdul) == 1 + N_IMAGES + 1
        table = hdul["HISTORY"].data
        assert list(table["ID"]) == [ref.id for ref, _ in truth]
        mjds = list(table["MJD"])
        assert mjds == sorted(mjds)
        assert [json.loads(d) for d in table["DATA_ID"]] == [ref.data_id for ref, _ in truth]
        for index, (ref, stamp) in enumerate(truth, start=1):
            np.testing.assert_array_equal(hdul[index].data, stamp.data)
            assert hdul[index].header["OBJBID"] == ref.id
    window = requests.get(f"{served.url}/api/cutout/sky",
                          params={"POS": "150.1 2.2", "TYPE": "calexp", "TIME": f"{mjds[1]} {mjds[3]}"}, timeout=60)
    with fits.open(io.BytesIO(window.content)) as hdul:
        assert list(hdul["HISTORY"].data["MJD"]) == mjds[1:4]


# ---------------------------------------------------------------- bad input


def _bad_requests(ref_id: str) -> list[tuple[str, str, dict[str, str] | list[tuple[str, str]], int, str]]:
    sync, sky = "/api/cutout/sync", "/api/cutout/sky"  # DataLink errors: tests/test_service_conformance.py
    good = {"ID": ref_id}
    many = [("ID", ref_id)] + [("POS", "CIRCLE 150.1 2.2 0.0005")] * 33
    return [
        ("GET", sync, {"POS": "CIRCLE 150.1 2.2 0.001"}, 400, "UsageError"),                       # no ID
        ("GET", sync, good, 400, "UsageError"),                                                     # no stencil
        ("GET", sync, {**good, "POS": "CIRCLE 150.1 2.2"}, 400, "UsageError"),                      # 2 numbers
        ("GET", sync, {**good, "POS": "CIRCLE 150.1 2.2 abc"}, 400, "UsageError"),
        ("GET", sync, {**good, "POS": "CIRCLE 150.1 NaN 0.001"}, 400, "UsageError"),
        ("GET", sync, {**good, "POS": "CIRCLE 150.1 2.2 inf"}, 400, "UsageError"),
        ("GET", sync, {**good, "POS": "CIRCLE 150.1 2.2 0"}, 400, "UsageError"),                    # r = 0
        ("GET", sync, {**good, "POS": "CIRCLE 150.1 2.2 -0.1"}, 400, "UsageError"),                 # r < 0
        ("GET", sync, {**good, "POS": "CIRCLE 150.1 2.2 181"}, 400, "UsageError"),                  # r > 180
        ("GET", sync, {**good, "POS": "CIRCLE 400 2.2 0.001"}, 400, "UsageError"),                  # RA > 360
        ("GET", sync, {**good, "POS": "CIRCLE 150.1 95 0.001"}, 400, "UsageError"),                 # Dec > 90
        ("GET", sync, {**good, "POS": "SQUARE 150.1 2.2 0.001"}, 400, "UsageError"),
        ("GET", sync, {**good, "POS": ""}, 400, "UsageError"),
        ("GET", sync, {**good, "POS": "RANGE 150.2 150.1 2.1 2.2"}, 400, "UsageError"),            # ra1 > ra2
        ("GET", sync, {**good, "POS": "RANGE 150.1 150.2 2.2"}, 400, "UsageError"),
        ("GET", sync, {**good, "POS": "POLYGON 150.1 2.2 150.2 2.2"}, 400, "UsageError"),          # 2 vertices
        ("GET", sync, {**good, "POLYGON": "150.1 2.2 150.2 2.2 150.3"}, 400, "UsageError"),        # odd count
        ("GET", sync, {**good, "POLYGON": "150.1 2.2 150.1 2.2 150.1001 2.2001"}, 400, "UsageError"),  # no area
        ("GET", sync, {**good, "CIRCLE": "150.1 2.2 0.001", "RESPONSEFORMAT": "text/xml"}, 400, "UsageError"),
        ("GET", sync, {**good, "CIRCLE": "150.1 2.2 0.001", "BAND": "0.5e-6 0.6e-6"}, 400, "UsageError"),
        ("GET", sync, {**good, "CIRCLE": "150.1 2.2 0.001", "TIME": "5 x"}, 400, "UsageError"),
        ("GET", sync, many, 400, "UsageError"),                                                     # > 32 stencils
        ("GET", sync, [("ID", ref_id), ("ID", ref_id), ("CIRCLE", "150.1 2.2 0.001")], 400,
         "MultiValuedParamNotSupported"),
        ("GET", sync, {"ID": str(uuid.uuid4()), "CIRCLE": "150.1 2.2 0.001"}, 404, "UsageError"),
        ("GET", sync, {"ID": "../../objbutler.json", "CIRCLE": "150.1 2.2 0.001"}, 400, "UsageError"),
        ("GET", sync, {"ID": "objbutler://calexp/../../x?visit=1", "CIRCLE": "150.1 2.2 0.001"}, 400, "UsageError"),
        ("GET", sync, {"ID": "objbutler://..?visit=1", "CIRCLE": "150.1 2.2 0.001"}, 400, "UsageError"),
        ("GET", sync, {"ID": "objbutler://calexp?visit=99", "CIRCLE": "150.1 2.2 0.001"}, 404, "UsageError"),
        ("GET", sync, {"ID": "objbutler://nosuchtype?visit=1", "CIRCLE": "150.1 2.2 0.001"}, 404, "UsageError"),
        ("GET", sync, {"ID": "objbutler://calexp?detector=1", "CIRCLE": "150.1 2.2 0.001"}, 400, "UsageError"),
        ("GET", sync, {"ID": "objbutler://calexp", "CIRCLE": "150.1 2.2 0.001"}, 400, "UsageError"),
        ("GET", sync, {"ID": "/etc/passwd", "CIRCLE": "150.1 2.2 0.001"}, 400, "UsageError"),
        ("GET", sync, {"ID": "x" * 5000, "CIRCLE": "150.1 2.2 0.001"}, 400, "UsageError"),
        ("GET", sync, {"ID": ref_id, "CIRCLE": "150.1\x00 2.2 0.001"}, 400, "UsageError"),
        ("GET", sync, {**good, "CIRCLE": "150.1 2.2 0.001", "RESPONSEFORMAT": "png", "POS": "CIRCLE 150.1 2.2 0.001"},
         400, "UsageError"),                                                                        # PNG of two
        ("GET", sky, {"POS": "150.1 2.2"}, 400, "UsageError"),                                     # no TYPE
        ("GET", sky, {"TYPE": "calexp"}, 400, "UsageError"),                                       # no POS
        ("GET", sky, {"POS": "150.1", "TYPE": "calexp"}, 400, "UsageError"),
        ("GET", sky, {"POS": "150.1 2.2", "TYPE": "calexp", "SIZE": "0"}, 400, "UsageError"),
        ("GET", sky, {"POS": "150.1 2.2", "TYPE": "calexp", "SIZE": "999999"}, 400, "UsageError"),
        ("GET", sky, {"POS": "150.1 2.2", "TYPE": "calexp", "SIZE": "-5arcsec"}, 400, "UsageError"),
        ("GET", sky, {"POS": "150.1 2.2", "TYPE": "nosuchtype"}, 404, "UsageError"),
        ("GET", sky, {"POS": "150.1 2.2", "TYPE": "calexp", "RESPONSEFORMAT": "votable"}, 400, "UsageError"),
        ("GET", "/api/datasets/not-a-uuid", {}, 400, "UsageError"),
        ("GET", f"/api/datasets/{uuid.uuid4()}", {}, 404, "UsageError"),
        ("GET", "/api/../../etc/passwd", {}, 404, "UsageError"),
        ("GET", "/no/such/route", {}, 404, "UsageError"),
        ("DELETE", sync, good, 405, "UsageError"),
    ]


def test_bad_requests_get_soda_errors_and_the_server_keeps_serving(served: Served) -> None:
    cases = _bad_requests(served.refs[0].id)
    assert len(cases) >= 30
    for method, path, params, status, kind in cases:
        answer = requests.request(method, served.url + path, params=params, timeout=30)
        context = f"{method} {path} {params!r}: {answer.status_code} {answer.text[:200]!r}"
        assert answer.status_code == status, context
        assert answer.headers["content-type"].startswith("text/plain"), context
        assert answer.text.startswith(f"{kind}: "), context
        request_id = answer.headers["x-request-id"]
        assert f"request id: {request_id}" in answer.text, context
    post = requests.post(f"{served.url}/api/cutout/sync", data={"ID": served.refs[0].id, "POS": "CIRCLE 1 2"},
                         timeout=30)
    assert post.status_code == 400 and post.text.startswith("UsageError: ")
    multipart = requests.post(f"{served.url}/api/cutout/sync", files={"ID": ("x", b"y")}, timeout=30)
    assert multipart.status_code == 400 and multipart.text.startswith("UsageError: ")
    assert served.service.alive()
    ok = requests.get(f"{served.url}/api/cutout/sync",
                      params={"ID": served.refs[0].id, "CIRCLE": "150.1 2.2 0.001"}, timeout=30)
    assert ok.status_code == 200
    metrics = requests.get(f"{served.url}/metrics", timeout=30).text
    assert 'objbutler_requests_total{route="/api/cutout/sync",status="400"}' in metrics
    assert 'status="500"' not in metrics
    assert "objbutler_request_seconds" in metrics
    assert '"GET /api/cutout/sync" 400' in served.service.log()  # the access log


def test_bearer_token(repo: tuple[str, list[DatasetRef], list[fits.PrimaryHDU]],
                      localstack_server: ServerInfo) -> None:
    uri, refs, _ = repo
    cutout = ("/api/cutout/sync", {"ID": refs[0].id, "CIRCLE": "150.1 2.2 0.001"})
    guarded = [("/", {}), ("/metrics", {}), cutout, ("/api/datalink/links", {"ID": refs[0].id}),
               ("/api/cutout/sky", {"POS": "150.1 2.2", "TYPE": "calexp"}), (f"/api/datasets/{refs[0].id}", {})]
    with ServiceProcess(uri, env=localstack_server.env, token=TOKEN) as service:
        assert requests.get(f"{service.url}/health", timeout=30).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            for path, params in guarded:
                answer = requests.get(service.url + path, params=params, headers=headers, timeout=30)
                assert answer.status_code == 401, (path, headers)
                assert answer.text.startswith("AuthenticationError: ")
                assert answer.headers["www-authenticate"].startswith("Bearer")
        for path, params in guarded:
            answer = requests.get(service.url + path, params=params, headers={"Authorization": f"Bearer {TOKEN}"},
                                  timeout=60)
            assert answer.status_code == 200, (path, answer.text[:200])


# ---------------------------------------------------------------- the page in a real browser


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "chromium", "chromium-driver"], capture_output=True, timeout=600)
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_gallery_page_in_headless_chromium(served: Served, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    found = _chromium()
    if found is None:
        pytest.skip("chromium and chromedriver are not installed and apt-get could not install them")
    browser, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(served.url + "/")
        for name, value in (("ra", "150.1"), ("dec", "2.2"), ("size", "31")):
            field = driver.find_element(By.ID, name)
            field.clear()
            field.send_keys(value)
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 60).until(lambda d: "stamps at" in d.find_element(By.ID, "status").text)
        figures = driver.find_elements(By.CSS_SELECTOR, "#gallery figure.stamp")
        assert len(figures) == N_IMAGES
        loaded = driver.execute_script(
            "return Array.from(document.querySelectorAll('#gallery img')).map(i => i.complete && i.naturalWidth)")
        assert loaded == [31] * N_IMAGES
        captions = [figure.text for figure in figures]
        dates = [line.splitlines()[1][:19] for line in captions]
        assert dates == sorted(dates)
        links = driver.find_elements(By.LINK_TEXT, "stamp FITS")
        stamp = requests.get(links[0].get_attribute("href"), timeout=30)
        assert stamp.status_code == 200 and stamp.content.startswith(b"SIMPLE")
        screenshot = tmp_path / "gallery.png"
        driver.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")
        assert screenshot.stat().st_size > 0
    finally:
        driver.quit()


# ---------------------------------------------------------------- load


def test_bench_service_quick_runs_without_errors(localstack_server: ServerInfo, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from objbutler.cli import main

    for name, value in localstack_server.env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "rows.json"
    bucket = f"s3://bench-{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(main, ["bench", "service", "--target", bucket, "--quick", "--smoke",
                                       "--json", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    print(result.output[-1500:])
    rows = json.loads(out.read_text())
    measured = [row for row in rows if row["method"] == "objbutler serve"]
    assert {row["workload"] for row in measured} == {
        f"{kind} ({mix}, {profile})" for profile in ("direct", "20ms")
        for kind, mix in (("stamp", "stamp only"), ("stamp", "mixed"), ("history", "mixed"))}
    assert sum(row["n"] for row in measured) == 2 * 2 * 10 * 8
    assert all(row["errors"] == 0 for row in measured), [row["error"] for row in measured]
    assert "NOTE service under load" in result.output


def test_serve_refuses_an_empty_token_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from objbutler.cli import main

    empty = tmp_path / "token"
    empty.write_text("\n")
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "repo"), "--token-file", str(empty)])
    assert result.exit_code == 2 and "is empty" in result.output
