"""The cutout service against the IVOA texts: SODA 1.0, DataLink 1.0/1.1, DALI 1.1, and pyvo as a client.

One ``objbutler serve`` on 127.0.0.1 over a small local repository: two images of one field
(150.1, 2.2), one at RA 0 / Dec 0 (regions across RA 0/360) and one centred on the north pole.
Expected stamps come from astropy alone (the region's boundary through the parent's WCS, then the
bounding pixel box). Each test cites the section of the standard it checks; a failing test is the
record of a bug (see the report that came with this file), not something to be "fixed" here.

Sections cited: SODA 1.0 (REC-SODA-1.0): 2.4/2.5 VOSI, 3.1 multiplicity, 3.2.1 ID, 3.3 filtering,
3.3.1 POS, 3.4 three-factor semantics, 4 service descriptor, 5.1 successful requests, 5.2 errors.
DataLink 1.0 (REC-DataLink-1.0) / 1.1: 2.1 {links}, 2.1.1 ID, 2.1.2 RESPONSEFORMAT, 3.2 list of
links, 3.3.1 VOTable output, 3.4 errors, 4.3 input PARAMs. DALI 1.1: 2 resources, 3.1 case,
3.2 multiple values, 3.3.5-3.3.8 xtypes, 3.4.3 RESPONSEFORMAT, 4.2 errors.
"""

from __future__ import annotations

import io
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import requests
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.votable import parse as parse_votable
from astropy.time import Time
from astropy.wcs import WCS
from sky_boundaries import circle_points, polygon_points, range_points

from objbutler import Butler
from objbutler.registry.records import DatasetRef
from objbutler.testing.service import ServiceProcess

pyvo = pytest.importorskip("pyvo")
from pyvo.dal.adhoc import DatalinkResults, SodaQuery  # noqa: E402

SYNC = "/api/cutout/sync"
LINKS = "/api/datalink/links"
SODA_SYNC_10 = "ivo://ivoa.net/std/SODA#sync-1.0"  # SODA 1.0 section 2.5
SODA_ERRORS = ("Error", "AuthenticationError", "AuthorizationError", "ServiceUnavailable", "UsageError",
               "MultiValuedParamNotSupported")  # SODA 1.0 section 5.2
DATALINK_FAULTS = ("NotFoundFault", "UsageFault", "TransientFault", "FatalFault", "DefaultFault")  # DataLink 3.4
SCALE_ARCSEC = 0.2
SHAPE = (200, 180)
UNKNOWN_UUID = "00000000-0000-4000-8000-000000000000"


def _image(ra: float, dec: float, mjd: float, seed: int) -> fits.PrimaryHDU:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [SHAPE[1] / 2 + 0.5, SHAPE[0] / 2 + 0.5]
    wcs.wcs.cdelt = [-SCALE_ARCSEC / 3600, SCALE_ARCSEC / 3600]
    header = wcs.to_header()
    header["DATE-OBS"] = Time(mjd, format="mjd", scale="utc").isot
    header["FILTER"] = "r"
    data = np.random.default_rng(seed).normal(100.0, 5.0, SHAPE).astype(np.float32)
    return fits.PrimaryHDU(data, header=header)


@dataclass
class Served:
    url: str
    refs: dict[str, DatasetRef]
    hdus: dict[str, fits.PrimaryHDU]
    service: ServiceProcess


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    uri = str(tmp_path_factory.mktemp("conformance") / "repo")
    butler = Butler.create(uri)
    hdus = {"field1": _image(150.1, 2.2, 60000.0, 1), "field2": _image(150.1, 2.2, 60001.0, 2),
            "origin": _image(0.0, 0.0, 60002.0, 3), "pole": _image(0.0, 90.0, 60003.0, 4)}
    refs = {name: butler.put(hdu, "calexp", {"visit": visit}, run="pvi", format="fits")
            for visit, (name, hdu) in enumerate(hdus.items(), start=1)}
    with ServiceProcess(uri, timeout=180.0) as service:
        yield Served(service.url, refs, hdus, service)


# ---------------------------------------------------------------- helpers


def _get(served: Served, path: str, params: Any = None, **kwargs: Any) -> requests.Response:
    return requests.get(served.url + path, params=params, timeout=60, **kwargs)





def _expected_box(hdu: fits.PrimaryHDU, boundary: SkyCoord) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the pixels whose cells the boundary spans, trimmed to the image."""
    xs, ys = WCS(hdu.header).world_to_pixel(boundary)
    x0, x1 = math.floor(xs.min() + 0.5), math.floor(xs.max() + 0.5) + 1
    y0, y1 = math.floor(ys.min() + 0.5), math.floor(ys.max() + 0.5) + 1
    ny, nx = hdu.data.shape
    return max(x0, 0), max(y0, 0), min(x1, nx), min(y1, ny)


def _assert_stamp(stamp: fits.ImageHDU | fits.PrimaryHDU, parent: fits.PrimaryHDU,
                  box: tuple[int, int, int, int]) -> None:
    """Pixels are the parent's in ``box``, and the stamp's WCS puts them where the parent's does."""
    x0, y0, x1, y1 = box
    np.testing.assert_array_equal(stamp.data, parent.data[y0:y1, x0:x1])
    ny, nx = stamp.data.shape
    xs, ys = np.array([0, nx - 1, 0, nx - 1]), np.array([0, 0, ny - 1, ny - 1])
    mine = WCS(stamp.header).pixel_to_world(xs, ys)
    theirs = WCS(parent.header).pixel_to_world(xs + x0, ys + y0)
    assert mine.separation(theirs).max() < 1e-3 * u.arcsec


def _fits(content: bytes) -> fits.HDUList:
    return fits.open(io.BytesIO(content))


def _assert_error_document(answer: requests.Response, context: str) -> None:
    """Never a 500, never a traceback; a 4xx with a text/plain body that starts with a SODA error code."""
    assert answer.status_code < 500, context
    assert "Traceback" not in answer.text and 'File "' not in answer.text, context
    assert 400 <= answer.status_code < 500, context
    assert answer.headers["content-type"].startswith("text/plain"), context
    assert answer.text.split(":", 1)[0] in (*SODA_ERRORS, "NotFoundError"), context


def _links_xml(served: Served, params: Any) -> ET.Element:
    answer = _get(served, LINKS, params)
    assert answer.status_code == 200, answer.text[:300]
    return ET.fromstring(answer.content)


def _tag(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _find_all(root: ET.Element, name: str) -> list[ET.Element]:
    return [element for element in root.iter() if _tag(element) == name]


# ---------------------------------------------------------------- SODA sync: what conforms


def test_pyvo_soda_query_circle_range_polygon_match_astropy(served: Served) -> None:
    """SODA 3.3.1-3.3.3 through pyvo's SodaQuery: CIRCLE, POS=RANGE and POLYGON, degrees, ICRS."""
    ref, hdu = served.refs["field1"], served.hdus["field1"]
    circle = (150.1, 2.2, 0.001)
    range_ = (150.0995, 150.1008, 2.1991, 2.2004)
    polygon = [150.0995, 2.1995, 150.1012, 2.2001, 150.1003, 2.2013]
    cases: list[tuple[SodaQuery, SkyCoord]] = [
        (SodaQuery(served.url + SYNC, id=ref.id, circle=circle), circle_points(*circle)),
        (SodaQuery(served.url + SYNC, id=ref.id, range=range_), range_points(*range_)),
        (SodaQuery(served.url + SYNC, id=ref.id, polygon=polygon), polygon_points(polygon)),
    ]
    for query, boundary in cases:
        with _fits(query.execute_stream().read()) as answer:
            assert len(answer) == 1
            _assert_stamp(answer[0], hdu, _expected_box(hdu, boundary))


def test_parameter_names_are_case_insensitive_and_unknown_ones_ignored(served: Served) -> None:
    """DALI 3.1 (names not case sensitive); unknown parameters do not change the answer."""
    ref = served.refs["field1"]
    plain = _get(served, SYNC, {"ID": ref.id, "CIRCLE": "150.1 2.2 0.001"})
    assert plain.status_code == 200
    for params in ({"id": ref.id, "circle": "150.1 2.2 0.001"},
                   {"Id": ref.id, "pOs": "CIRCLE 150.1 2.2 0.001", "ResponseFormat": "application/fits"},
                   {"ID": ref.id, "CIRCLE": "150.1 2.2 0.001", "FOO": "bar", "MAXREC": "3", "X-CUSTOM": ""}):
        answer = _get(served, SYNC, params)
        assert answer.status_code == 200, (params, answer.text[:200])
        assert answer.content == plain.content, params


def test_post_form_encoded_equals_get(served: Served) -> None:
    """DALI 2 (DALI-sync: GET or POST); form-encoded POST bodies, with or without a charset."""
    ref = served.refs["field1"]
    params = [("ID", ref.id), ("POS", "CIRCLE 150.1 2.2 0.001"), ("POLYGON", "150.0995 2.1995 150.1012 2.2001 "
                                                                          "150.1003 2.2013")]
    by_get = _get(served, SYNC, params)
    assert by_get.status_code == 200
    for content_type in ("application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=UTF-8"):
        by_post = requests.post(served.url + SYNC, data=params, headers={"Content-Type": content_type}, timeout=60)
        assert by_post.status_code == 200, by_post.text[:200]
        assert by_post.content == by_get.content


def test_multiple_stencils_answer_one_extension_each_in_order(served: Served) -> None:
    """SODA 3.1: multiple values of the cutout parameters (here POS, CIRCLE, POLYGON mixed)."""
    ref, hdu = served.refs["field2"], served.hdus["field2"]
    polygon = [150.0995, 2.1995, 150.1012, 2.2001, 150.1003, 2.2013]
    params = [("ID", ref.id), ("CIRCLE", "150.1 2.2 0.0006"), ("POS", "RANGE 150.0995 150.1008 2.1991 2.2004"),
              ("POLYGON", " ".join(map(str, polygon))), ("pos", "CIRCLE 150.1003 2.2002 0.0004")]
    boundaries = [circle_points(150.1, 2.2, 0.0006), range_points(150.0995, 150.1008, 2.1991, 2.2004),
                  polygon_points(polygon), circle_points(150.1003, 2.2002, 0.0004)]
    answer = _get(served, SYNC, params)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/fits"
    with _fits(answer.content) as hdul:
        assert len(hdul) == 1 + len(boundaries)
        for index, boundary in enumerate(boundaries, start=1):
            _assert_stamp(hdul[index], hdu, _expected_box(hdu, boundary))


def test_polygon_across_ra_zero_in_either_orientation(served: Served) -> None:
    """DALI 3.3.8: longitudes in [0, 360]; a polygon across RA 0/360 (and RA 360 == RA 0 for a circle)."""
    ref, hdu = served.refs["origin"], served.hdus["origin"]
    ccw = [359.9995, -0.0005, 0.0005, -0.0005, 0.0005, 0.0005, 359.9995, 0.0005]
    cw = [359.9995, 0.0005, 0.0005, 0.0005, 0.0005, -0.0005, 359.9995, -0.0005]
    expected = _expected_box(hdu, polygon_points(ccw))
    for vertices in (ccw, cw):
        answer = _get(served, SYNC, {"ID": ref.id, "POLYGON": " ".join(map(str, vertices))})
        assert answer.status_code == 200, answer.text[:200]
        with _fits(answer.content) as hdul:
            _assert_stamp(hdul[0], hdu, expected)
    at_0 = _get(served, SYNC, {"ID": ref.id, "CIRCLE": "0 0 0.001"})
    at_360 = _get(served, SYNC, {"ID": ref.id, "CIRCLE": "360 0 0.001"})
    assert at_0.status_code == at_360.status_code == 200
    with _fits(at_0.content) as hdul, _fits(at_360.content) as other:
        _assert_stamp(hdul[0], hdu, _expected_box(hdu, circle_points(0.0, 0.0, 0.001)))
        np.testing.assert_array_equal(hdul[0].data, other[0].data)


def test_range_and_polygon_around_the_pole(served: Served) -> None:
    """SODA 3.3.1 example 'POS=RANGE 0 360 89 90' (the north pole) and a polygon around the pole."""
    ref, hdu = served.refs["pole"], served.hdus["pole"]
    whole = _get(served, SYNC, {"ID": ref.id, "POS": "RANGE 0 360 89 90"})
    assert whole.status_code == 200, whole.text[:200]
    with _fits(whole.content) as hdul:
        _assert_stamp(hdul[0], hdu, (0, 0, SHAPE[1], SHAPE[0]))
    cap = _get(served, SYNC, {"ID": ref.id, "POS": "RANGE 0 360 89.99807 90"})
    with _fits(cap.content) as hdul:
        _assert_stamp(hdul[0], hdu, _expected_box(hdu, circle_points(0.0, 90.0, 0.00193)))
    square = [10, 89.99807, 100, 89.99807, 190, 89.99807, 280, 89.99807]
    answer = _get(served, SYNC, {"ID": ref.id, "POLYGON": " ".join(map(str, square))})
    with _fits(answer.content) as hdul:
        _assert_stamp(hdul[0], hdu, _expected_box(hdu, polygon_points([float(v) for v in square])))


def test_time_interval_with_open_ends(served: Served) -> None:
    """SODA 3.3.5 / DALI 3.3.5: TIME is an MJD interval, -Inf/+Inf for open ends."""
    ref = served.refs["field1"]  # MJD 60000
    for interval in ("59999 +Inf", "-Inf 60000", "-Inf +Inf", "60000 60000"):
        answer = _get(served, SYNC, {"ID": ref.id, "CIRCLE": "150.1 2.2 0.001", "TIME": interval})
        assert answer.status_code == 200, (interval, answer.text[:200])


def test_responseformat_fits_and_png(served: Served) -> None:
    """DALI 3.4.3: RESPONSEFORMAT by media type sets Content-Type; an unsupported one is an error."""
    ref = served.refs["field1"]
    base = {"ID": ref.id, "CIRCLE": "150.1 2.2 0.001"}
    fits_answer = _get(served, SYNC, {**base, "RESPONSEFORMAT": "application/fits"})
    assert fits_answer.status_code == 200 and fits_answer.headers["content-type"] == "application/fits"
    png = _get(served, SYNC, {**base, "RESPONSEFORMAT": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    _assert_error_document(_get(served, SYNC, {**base, "RESPONSEFORMAT": "text/csv"}), "text/csv")


def test_bad_requests_get_error_documents_never_500(served: Served) -> None:
    """SODA 5.2 / DALI 4.2: 4xx and a text/plain document beginning with the error code; no traceback."""
    good = served.refs["field1"].id
    cases: list[dict[str, str] | list[tuple[str, str]]] = [
        {"CIRCLE": "150.1 2.2 0.001"},                                    # no ID
        {"ID": good},                                                      # no region
        {"ID": good, "POS": "CIRCLE 150.1 2.2"},
        {"ID": good, "POS": "CIRCLE 150.1 2.2 abc"},
        {"ID": good, "POS": "BOX 150.1 2.2 0.001 0.001"},
        {"ID": good, "POS": "RANGE 150.2 150.1 2.1 2.2"},
        {"ID": good, "POS": "POLYGON 150.1 2.2 150.2 2.2"},
        {"ID": good, "POLYGON": "150.1 2.2 150.1 2.2 150.1 2.2"},
        {"ID": good, "CIRCLE": "150.1 2.2 -1"},
        {"ID": good, "CIRCLE": "150.1 95 0.001"},
        {"ID": good, "CIRCLE": "400 2.2 0.001"},
        {"ID": good, "CIRCLE": "150.1 2.2 1e400"},
        {"ID": good, "CIRCLE": "150.1 2.2 0.001", "TIME": "NaN 1"},
        {"ID": good, "CIRCLE": "150.1 2.2 0.001", "TIME": "2 1"},
        {"ID": good, "CIRCLE": "150.1 2.2 0.001", "RESPONSEFORMAT": "png", "POS": "CIRCLE 150.1 2.2 0.001"},
        [("ID", good)] + [("CIRCLE", "150.1 2.2 0.0005")] * 40,            # too many stencils
        {"ID": "not an id", "CIRCLE": "150.1 2.2 0.001"},
        {"ID": "objbutler://calexp?visit=1&visit=2", "CIRCLE": "150.1 2.2 0.001"},
        {"ID": "objbutler://calexp?visit=1.5", "CIRCLE": "150.1 2.2 0.001"},
        {"ID": "x" * 5000, "CIRCLE": "150.1 2.2 0.001"},
        {"ID": UNKNOWN_UUID, "CIRCLE": "150.1 2.2 0.001"},
    ]
    for params in cases:
        _assert_error_document(_get(served, SYNC, params), repr(params)[:200])
        post = requests.post(served.url + SYNC, data=params, timeout=60)
        _assert_error_document(post, "POST " + repr(params)[:200])
    assert served.service.alive()


# ---------------------------------------------------------------- SODA sync: bugs


def test_malformed_id_url_is_a_usage_error_not_a_500(served: Served) -> None:
    """DALI 4.2: a bad request is a 4xx; ``objbutler://[x`` makes urlsplit raise ValueError -> 500."""
    for path, params in ((SYNC, {"ID": "objbutler://[x?visit=1", "CIRCLE": "150.1 2.2 0.001"}),
                         (LINKS, {"ID": "objbutler://[x?visit=1"})):
        answer = _get(served, path, params)
        assert answer.status_code < 500, (path, answer.status_code, answer.text[:200])


def test_circle_centred_on_a_pole_cuts_the_whole_circle(served: Served) -> None:
    """SODA 3.3.2 / DALI 3.3.7: a circle is every point within r of its centre, at a pole too."""
    ref, hdu = served.refs["pole"], served.hdus["pole"]
    for ra in (0.0, 45.0):
        answer = _get(served, SYNC, {"ID": ref.id, "CIRCLE": f"{ra} 90 0.00193"})
        assert answer.status_code == 200, answer.text[:200]
        with _fits(answer.content) as hdul:
            expected = _expected_box(hdu, circle_points(ra, 90.0, 0.00193))
            assert hdul[0].data.shape == (expected[3] - expected[1], expected[2] - expected[0]), ra
            _assert_stamp(hdul[0], hdu, expected)


def test_pos_range_takes_open_infinite_limits(served: Served) -> None:
    """SODA 3.3.1: 'As in DALI intervals, open ranges use -Inf or +Inf as one limit.'"""
    ref = served.refs["field1"]
    answer = _get(served, SYNC, {"ID": ref.id, "POS": "RANGE -Inf +Inf 2.1995 2.2005"})
    assert answer.status_code == 200, answer.text[:200]
    with _fits(answer.content) as hdul:
        assert hdul[0].data.shape[1] == SHAPE[1]  # every column of the image: the RA range is open
    answer = _get(served, SYNC, {"ID": ref.id, "POS": "RANGE 150.0995 150.1005 -Inf +Inf"})
    assert answer.status_code == 200, answer.text[:200]


def test_cutout_that_misses_the_image_is_204_no_content(served: Served) -> None:
    """SODA 5.1: cutout parameters that include no pixels -> HTTP 204 (No Content) and no body."""
    ref = served.refs["field1"]  # about 36 x 40 arcsec around (150.1, 2.2), MJD 60000
    for params in ({"ID": ref.id, "CIRCLE": "150.2 2.2 0.001"},      # near, but off the image
                   {"ID": ref.id, "CIRCLE": "10 -40 0.001"},         # the other side of the sky
                   {"ID": ref.id, "CIRCLE": "150.1 2.2 0.001", "TIME": "50000 50001"}):
        answer = _get(served, SYNC, params)
        assert (answer.status_code, answer.content) == (204, b""), (params, answer.status_code, answer.text[:200])


def test_region_larger_than_the_image_is_reduced_to_the_image(served: Served) -> None:
    """SODA 3.3: values exceeding the dataset -> 'the service operates a reduction of these values'."""
    ref, hdu = served.refs["field1"], served.hdus["field1"]
    for params in ({"ID": ref.id, "CIRCLE": "150.1 2.2 2"}, {"ID": ref.id, "POS": "RANGE 148 152 0 4"}):
        answer = _get(served, SYNC, params)
        assert answer.status_code == 200, (params, answer.text[:200])
        with _fits(answer.content) as hdul:
            _assert_stamp(hdul[0], hdu, (0, 0, SHAPE[1], SHAPE[0]))


def test_multiple_id_values_fail_with_multivaluedparamnotsupported(served: Served) -> None:
    """SODA 3.1: an unsupported multi-valued parameter 'must fail with the MultiValuedParamNotSupported error'."""
    params = [("ID", served.refs["field1"].id), ("ID", served.refs["field2"].id), ("CIRCLE", "150.1 2.2 0.001")]
    answer = _get(served, SYNC, params)
    assert 400 <= answer.status_code < 500
    assert answer.text.startswith("MultiValuedParamNotSupported"), answer.text[:200]


def test_sync_error_documents_begin_with_a_soda_error_code(served: Served) -> None:
    """SODA 5.2: the text 'must begin with one of' Error, ..., UsageError, MultiValuedParamNotSupported."""
    for params in ({"ID": UNKNOWN_UUID, "CIRCLE": "150.1 2.2 0.001"},
                   {"ID": "objbutler://calexp?visit=99", "CIRCLE": "150.1 2.2 0.001"}):
        answer = _get(served, SYNC, params)
        assert answer.status_code == 404
        assert answer.text.split(":", 1)[0] in SODA_ERRORS, answer.text[:200]


def test_responseformat_media_type_is_the_content_type(served: Served) -> None:
    """DALI 3.4.3: a format asked for by media type 'must set that media type in the Content-Type header'."""
    answer = _get(served, SYNC, {"ID": served.refs["field1"].id, "CIRCLE": "150.1 2.2 0.001",
                                 "RESPONSEFORMAT": "image/fits"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/fits"


def test_vosi_capabilities_and_availability(served: Served) -> None:
    """SODA 2.4/2.5, DataLink 1.0 2.2/2.3, DALI 2.4/2.5: VOSI resources, siblings of the sync resource."""
    base = served.url + SYNC.rsplit("/", 1)[0]
    capabilities = requests.get(f"{base}/capabilities", timeout=60)
    assert capabilities.status_code == 200, capabilities.text[:200]
    root = ET.fromstring(capabilities.content)
    assert _tag(root) == "capabilities"
    ids = {element.get("standardID") or element.get("standardid") for element in _find_all(root, "capability")}
    assert SODA_SYNC_10 in ids and "ivo://ivoa.net/std/VOSI#availability" in ids
    availability = requests.get(f"{base}/availability", timeout=60)
    assert availability.status_code == 200
    root = ET.fromstring(availability.content)
    assert _tag(root) == "availability"
    assert [e.text for e in _find_all(root, "available")] == ["true"]


# ---------------------------------------------------------------- DataLink: what conforms


def test_datalink_fields_rows_and_content_type(served: Served) -> None:
    """DataLink 3.2 (fields, UCDs, one of access_url/service_def/error_message per row), 3.3 content type."""
    ref, hdu = served.refs["field1"], served.hdus["field1"]
    answer = _get(served, LINKS, {"ID": ref.id})
    assert answer.status_code == 200
    kind = answer.headers["content-type"].replace(" ", "")
    assert kind.startswith("application/x-votable+xml") and "content=datalink" in kind
    votable = parse_votable(io.BytesIO(answer.content))
    results = [r for r in votable.resources if r.type == "results"]
    assert len(results) == 1
    table = results[0].tables[0]
    ucds = {"ID": "meta.id;meta.main", "access_url": "meta.ref.url", "service_def": "meta.ref",
            "error_message": "meta.code.error", "semantics": "meta.code", "description": "meta.note",
            "content_type": "meta.code.mime", "content_length": "phys.size;meta.file"}
    fields = {field.name: field for field in table.fields}
    assert {name: fields[name].ucd for name in ucds} == ucds
    assert fields["content_length"].datatype == "long" and str(fields["content_length"].unit) == "byte"
    rows = table.to_table()
    for row in rows:
        given = [name for name in ("access_url", "service_def", "error_message")
                 if not np.ma.is_masked(row[name]) and str(row[name])]
        assert len(given) == 1, dict(row)
        assert row["ID"] == ref.id
    assert sorted(rows["semantics"]) == ["#cutout", "#this"]
    this = next(row for row in rows if row["semantics"] == "#this")
    whole = requests.get(str(this["access_url"]), timeout=60)
    assert whole.status_code == 200 and len(whole.content) == int(this["content_length"])
    with _fits(whole.content) as hdul:
        np.testing.assert_array_equal(hdul[0].data, hdu.data)


def test_datalink_responseformat_votable_forms(served: Served) -> None:
    """DataLink 2.1.2: no RESPONSEFORMAT, 'votable' and 'application/x-votable+xml' all give the VOTable."""
    ref = served.refs["field1"]
    plain = _get(served, LINKS, {"ID": ref.id})
    for value in ("votable", "application/x-votable+xml"):
        answer = _get(served, LINKS, {"ID": ref.id, "RESPONSEFORMAT": value})
        assert answer.status_code == 200 and answer.content == plain.content, value
        assert answer.headers["content-type"].startswith("application/x-votable+xml")


def test_pyvo_datalink_discovery_processed_and_cutout_row(served: Served) -> None:
    """pyvo end to end: DatalinkResults, bysemantics, processed(circle=), the #cutout row's process()."""
    ref, hdu = served.refs["field2"], served.hdus["field2"]
    links = DatalinkResults.from_result_url(f"{served.url}{LINKS}?ID={ref.id}")
    this = next(iter(links.bysemantics("#this", include_narrower=False)))
    cutout = next(iter(links.bysemantics("#cutout", include_narrower=False)))
    assert this.content_type == "application/fits" and cutout.service_def
    circle = (150.1002, 2.1998, 0.0008)
    expected = _expected_box(hdu, circle_points(*circle))
    with _fits(this.processed(circle=circle).read()) as hdul:
        _assert_stamp(hdul[0], hdu, expected)
    with _fits(cutout.process(circle=circle).read()) as hdul:
        _assert_stamp(hdul[0], hdu, expected)
    polygon = [150.0995, 2.1995, 150.1012, 2.2001, 150.1003, 2.2013]
    with _fits(this.processed(polygon=polygon).read()) as hdul:
        _assert_stamp(hdul[0], hdu, _expected_box(hdu, polygon_points(polygon)))


# ---------------------------------------------------------------- DataLink: bugs


def test_links_without_id_is_an_empty_table(served: Served) -> None:
    """DataLink 1.0 and 1.1, 2.1.1: 'If the client submits no ID values, the service must respond with a
    normal response (e.g. an empty results table for VOTable output).'"""
    answer = _get(served, LINKS, {})
    assert answer.status_code == 200, answer.text[:200]
    votable = parse_votable(io.BytesIO(answer.content))
    assert len(votable.get_first_table().array) == 0


def test_links_unknown_id_is_a_row_with_notfoundfault(served: Served) -> None:
    """DataLink 1.0 2.1.1 ('must include a single link ... with the ID and an error message'), 3.4."""
    answer = _get(served, LINKS, {"ID": UNKNOWN_UUID})
    assert answer.status_code == 200, answer.text[:200]
    rows = parse_votable(io.BytesIO(answer.content)).get_first_table().to_table()
    assert len(rows) == 1 and rows[0]["ID"] == UNKNOWN_UUID
    assert str(rows[0]["error_message"]).startswith("NotFoundFault")


def test_links_takes_several_id_values(served: Served) -> None:
    """DataLink 2.1.1: 'one or more identifiers'; 3.2: the links of one ID in consecutive rows."""
    first, second = served.refs["field1"].id, served.refs["origin"].id
    answer = _get(served, LINKS, [("ID", first), ("ID", second)])
    assert answer.status_code == 200, answer.text[:200]
    ids = list(parse_votable(io.BytesIO(answer.content)).get_first_table().to_table()["ID"])
    assert set(ids) == {first, second}
    assert ids == sorted(ids, key=[first, second].index)  # grouped


def test_links_accepts_post(served: Served) -> None:
    """DataLink 1.0 2.1 / 1.1 2: '{links} ... parameters ... submitted using an HTTP GET (query string) or POST'."""
    answer = requests.post(served.url + LINKS, data={"ID": served.refs["field1"].id}, timeout=60)
    assert answer.status_code == 200, answer.text[:200]
    assert answer.content == _get(served, LINKS, {"ID": served.refs["field1"].id}).content


def test_links_errors_are_votable_with_datalink_fault_codes(served: Served) -> None:
    """DataLink 3.4: for the VOTable output 'the error document must also be VOTable', and messages start
    with NotFoundFault, UsageFault, TransientFault, FatalFault or DefaultFault."""
    answer = _get(served, LINKS, {"ID": "not a valid id"})
    assert answer.status_code < 500
    assert answer.headers["content-type"].startswith(("application/x-votable+xml", "text/xml")), answer.text[:200]
    root = ET.fromstring(answer.content)
    messages = [info.get("value") == "ERROR" and (info.text or "") for info in _find_all(root, "INFO")
                if info.get("name") == "QUERY_STATUS"]
    cells = [td.text or "" for td in _find_all(root, "TD")]
    texts = [m for m in messages if m] + cells
    assert any(text.startswith(DATALINK_FAULTS) for text in texts), answer.text[:300]


def test_links_results_resource_has_standardid_info(served: Served) -> None:
    """DataLink 1.1 3.3.1: the results RESOURCE 'must include' INFO name="standardID" (DataLink#links-1.1)."""
    root = _links_xml(served, {"ID": served.refs["field1"].id})
    results = [r for r in _find_all(root, "RESOURCE") if r.get("type") == "results"]
    infos = [i.get("value") for i in results[0] if _tag(i) == "INFO" and i.get("name") == "standardID"]
    assert infos and infos[0].startswith("ivo://ivoa.net/std/DataLink#links-1."), infos


def test_links_text_xml_responseformat_is_the_content_type(served: Served) -> None:
    """DALI 3.4.3 (DataLink 3.3: 'content-type follows the DALI rules'): text/xml asked, text/xml given."""
    answer = _get(served, LINKS, {"ID": served.refs["field1"].id, "RESPONSEFORMAT": "text/xml"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/xml")


def test_soda_descriptor_standard_id_is_sync_1_0(served: Served) -> None:
    """SODA 2.5 (and the descriptor in 4): the sync standardID is ivo://ivoa.net/std/SODA#sync-1.0."""
    root = _links_xml(served, {"ID": served.refs["field1"].id})
    services = [r for r in _find_all(root, "RESOURCE") if r.get("utype") == "adhoc:service"]
    assert len(services) == 1 and services[0].get("type") == "meta"
    params = {p.get("name"): p.get("value") for p in services[0] if _tag(p) == "PARAM"}
    assert params["accessURL"] == served.url + SYNC
    assert params["standardID"] == SODA_SYNC_10


def test_soda_descriptor_input_params_follow_three_factor_semantics(served: Served) -> None:
    """SODA 3.4 (table 'Three-Factor Semantics for standard SODA parameters'): name, UCD and unit."""
    root = _links_xml(served, {"ID": served.refs["field1"].id})
    group = next(g for g in _find_all(root, "GROUP") if g.get("name") == "inputParams")
    found = {p.get("name"): (p.get("ucd"), p.get("unit")) for p in group if _tag(p) == "PARAM"}
    standard = {"ID": ("meta.ref.url;meta.curation", None), "POS": ("pos.outline;obs", None),
                "CIRCLE": ("pos.outline;obs", "deg"), "POLYGON": ("pos.outline;obs", "deg"),
                "TIME": ("time.interval;obs.exposure", "d")}
    assert {name: found.get(name) for name in standard} == standard


def test_soda_descriptor_user_params_have_empty_values(served: Served) -> None:
    """DataLink 4.3: user-specified input PARAMs have value=""; a PARAM with a value is a fixed parameter
    the client 'MUST ... include' (so CIRCLE="0 0 0", TIME="0 0" would be sent by a strict client)."""
    root = _links_xml(served, {"ID": served.refs["field1"].id})
    group = next(g for g in _find_all(root, "GROUP") if g.get("name") == "inputParams")
    values = {p.get("name"): p.get("value") for p in group if _tag(p) == "PARAM" and p.get("name") != "ID"}
    assert values == dict.fromkeys(values, ""), values


# ---------------------------------------------------------------- the page


def test_page_links_and_form_target_resolve(served: Served) -> None:
    """GET / is HTML; the request its form's script makes (api/cutout/sky ... RESPONSEFORMAT=json,
    relative to the page) answers, and every stamp's FITS and image link answers FITS."""
    page = _get(served, "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element_id in ("search", "ra", "dec", "size", "type", "go", "gallery", "status"):
        assert f'id="{element_id}"' in page.text
    target = re.search(r'fetch\("([^"?]+)\?', page.text)
    assert target is not None
    url = requests.compat.urljoin(served.url + "/", target.group(1))
    answer = requests.get(url, params={"POS": "150.1 2.2", "SIZE": "31", "TYPE": "calexp", "RESPONSEFORMAT": "json"},
                          timeout=60)
    assert answer.status_code == 200, answer.text[:200]
    stamps = answer.json()["stamps"]
    assert len(stamps) == 2
    for stamp in stamps:
        for key in ("fits_url", "dataset_url"):
            linked = requests.get(stamp[key], timeout=60)
            assert linked.status_code == 200 and linked.content.startswith(b"SIMPLE"), (key, linked.text[:200])

