"""What the endpoints do, without HTTP: resolve an ID, cut the stencils, build an object history.

One :class:`CutoutService` per process holds one :class:`~objbutler.butler.Butler`. Every call
refreshes its registry view (:class:`~objbutler.service.refresh.SharedRefresh`: one listing in
flight, shared by the requests that queued for it), then reads with plain range requests, many
calls at once on the server's thread pool.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from objbutler.butler import Butler
from objbutler.errors import InvalidCutoutError, InvalidKeyError, NotSupportedError
from objbutler.registry.records import DatasetRef
from objbutler.service import encode
from objbutler.service.params import (
    Circle,
    DatasetName,
    Limits,
    Params,
    Stencil,
    _NoOverlapError,
    _SodaError,
    check_extent,
    not_found,
    parse_id,
    parse_pixels_or_angle,
    parse_position,
    parse_stencil,
    parse_stencils,
    parse_time,
)
from objbutler.service.png import png_bytes
from objbutler.service.refresh import SharedRefresh
from objbutler.service.regions import stencil_boxes

__all__ = ["Answer", "CutoutService", "datalink_fault"]

Answer = tuple[bytes, str]
"""A body and its media type."""

_DEFAULT_SIZE = 51
_FITS = "application/fits"


class CutoutService:
    """The service's operations on one repository.

    Parameters
    ----------
    butler : Butler
        The repository (one per process).
    limits : Limits
        What one request may ask for.
    """

    def __init__(self, butler: Butler, limits: Limits | None = None) -> None:
        self.butler = butler
        self.limits = limits or Limits()
        self._registry = SharedRefresh(butler.registry.refresh)

    # -- finding ---------------------------------------------------------------

    def _state(self) -> Any:
        return self._registry.get()

    def registry_state(self) -> Any:
        """The registry view, refreshed (raises what the store raises: VOSI availability reports it)."""
        return self._state()

    def resolve(self, name: DatasetName) -> DatasetRef:
        """The dataset an ``ID`` names (404 when there is none, 400 when the name is ambiguous or malformed)."""
        if name.dataset_id is not None:
            found = self._state().query(dataset_id=name.dataset_id)
            if not found:
                raise not_found(f"no dataset with id {name.dataset_id}")
            return found[0]
        assert name.dataset_type is not None
        data_id = dict(name.data_id)
        run = f" in run {name.run!r}" if name.run else ""
        state = self._state()
        if name.dataset_type not in state.dataset_types:
            raise not_found(f"no dataset type {name.dataset_type!r} in this repository")
        keys = sorted(state.dataset_types[name.dataset_type].dimensions)
        if sorted(data_id) != keys:
            raise _SodaError(f"{name.dataset_type} data IDs have keys {keys}, not {sorted(data_id)}")
        try:
            matches = [r for r in state.query(name.dataset_type, data_id, name.run) if r.data_id == data_id]
        except InvalidKeyError as exc:
            raise _SodaError(str(exc)) from None
        if not matches:
            raise not_found(f"no {name.dataset_type} with data ID {data_id}{run}")
        if len(matches) > 1:
            raise _SodaError(f"{name.dataset_type} {data_id} is in several runs {sorted(r.run for r in matches)}: "
                            "add &run=RUN to the ID")
        return matches[0]

    def image(self, params: Params) -> DatasetRef:
        """The image an ``ID`` parameter names."""
        ref = self.resolve(parse_id(params.one("ID")))
        if ref.format not in ("fits", "zarr"):
            raise _SodaError(f"{ref.dataset_type} {ref.id} is {ref.format}, not an image: nothing to cut")
        return ref

    # -- SODA sync -------------------------------------------------------------

    def _wcs_and_shape(self, ref: DatasetRef) -> tuple[Any, tuple[int, int] | None]:
        if ref.sky is not None:
            from objbutler.sky.footprint import sky_wcs

            wcs = sky_wcs(ref.sky)
            shape = tuple(int(n) for n in ref.sky["shape"])
            return wcs, (shape[0], shape[1])
        try:
            wcs = self.butler.get_wcs(ref)
        except NotSupportedError as exc:
            raise _SodaError(str(exc)) from None
        if wcs is None or not wcs.has_celestial:
            raise _SodaError(f"{ref.dataset_type} {ref.id} has no celestial WCS: sky regions cannot be cut from it")
        return wcs, None

    def _check_axes(self, params: Params, ref: DatasetRef) -> None:
        for name in ("BAND", "POL"):
            if params.all(name):
                raise _SodaError(f"{name}: {ref.dataset_type} images have no spectral or polarization axis")
        interval = parse_time(params)
        if interval is None:
            return
        mjd = (ref.sky or {}).get("mjd")
        if mjd is None:
            raise _SodaError(f"TIME: {ref.dataset_type} {ref.id} has no recorded observation time")
        if not interval[0] <= float(mjd) <= interval[1]:
            raise _NoOverlapError(f"TIME {interval[0]} {interval[1]} does not hold the image's time (MJD {mjd})")

    def sync(self, params: Params, fmt: str) -> Answer:
        """SODA sync: one FITS (one stencil), a multi-extension FITS (several), or a PNG (one)."""
        stencils = parse_stencils(params, self.limits)
        if fmt == "png" and len(stencils) != 1:
            raise _SodaError(f"a PNG answer holds one stencil; this request has {len(stencils)}")
        ref = self.image(params)
        self._check_axes(params, ref)
        stamps = self._cut(ref, stencils)
        if fmt == "png":
            return png_bytes(stamps[0].data), "image/png"
        return encode.stamps_fits(ref, stamps, [s.text() for s in stencils]), _FITS

    def _cut(self, ref: DatasetRef, stencils: Sequence[Stencil]) -> list[Any]:
        wcs, shape = self._wcs_and_shape(ref)
        boxes = stencil_boxes(stencils, wcs, shape, self.limits)
        try:
            return self.butler.get_cutouts(ref, boxes, mode="trim")
        except InvalidCutoutError as exc:  # a box outside an image whose shape the registry did not know
            raise _SodaError(str(exc)) from None

    # -- DataLink and downloads ------------------------------------------------

    def links(self, params: Params, base_url: str, media_type: str) -> Answer:
        """The DataLink ``{links}`` VOTable of every ``ID`` of the request (none: an empty table).

        An ``ID`` that names no dataset gets a row with its error message (DataLink 1.1 2.1.1).
        """
        names = params.all("ID")
        if len(names) > self.limits.max_link_ids:
            raise _SodaError(f"{len(names)} ID values in one request; this service takes at most "
                             f"{self.limits.max_link_ids}")
        items: list[encode.LinkItem] = []
        for name in names:
            try:
                items.append((name, self.resolve(parse_id(name))))
            except _SodaError as exc:
                items.append((name, f"{datalink_fault(exc)}: {exc}"))
        this_urls = [f"{base_url}api/datasets/{item.id}" if isinstance(item, DatasetRef) else "" for _, item in items]
        return encode.datalink_votable(items, this_urls, f"{base_url}api/cutout/sync"), media_type

    def dataset(self, dataset_id: str) -> Answer:
        """A whole image as FITS: the stored bytes for FITS datasets, a FITS written from a Zarr one."""
        ref = self.resolve(parse_id(dataset_id))
        if ref.format == "fits":
            return self.butler.store.get(ref.key), _FITS
        if ref.format != "zarr":
            raise _SodaError(f"{ref.dataset_type} {ref.id} is {ref.format}; only images are served here")
        import io

        from astropy.io import fits

        image = self.butler.get(ref)
        header = image.wcs.to_header(relax=True) if getattr(image, "wcs", None) is not None else None
        out = io.BytesIO()
        fits.PrimaryHDU(image.data, header=header).writeto(out)
        return out.getvalue(), _FITS

    # -- object history --------------------------------------------------------

    def _history_request(self, params: Params) -> tuple[float, float, Any, str, str | None, Any]:
        dataset_type = params.one("TYPE")
        if not dataset_type:
            raise _SodaError("TYPE is required (a dataset type, e.g. calexp)")
        pos = params.one("POS")
        if not pos:
            raise _SodaError("POS is required: 'ra dec' or 'CIRCLE ra dec r' (degrees)")
        size_text = params.one("SIZE")
        if pos.upper().startswith("CIRCLE"):
            stencil = parse_stencil("POS", pos)
            assert isinstance(stencil, Circle)
            check_extent(stencil, self.limits)
            ra, dec = stencil.ra, stencil.dec
            size: Any = (2 * stencil.radius * 3600.0, "arcsec")
        else:
            ra, dec = parse_position(pos, f"POS={pos!r}")
            size = _DEFAULT_SIZE
        if size_text is not None:
            value = parse_pixels_or_angle(size_text, f"SIZE={size_text!r}")
            size = value if isinstance(value, int) else (value, "arcsec")
        time = parse_time(params)
        window = None
        if time is not None:  # SODA intervals are closed; the sky index's stop is excluded
            start, stop = time
            window = (None if math.isinf(start) else start,
                      None if math.isinf(stop) else math.nextafter(stop, math.inf))
        return ra, dec, size, dataset_type, params.one("RUN"), window

    def history(self, params: Params) -> tuple[float, float, list[tuple[DatasetRef, Any]]]:
        """The stamps of every image of TYPE holding POS, in observation-time order."""
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        from objbutler.sky.query import cutouts_at, find_images

        ra, dec, size, dataset_type, run, window = self._history_request(params)
        if isinstance(size, tuple):
            size = size[0] * u.arcsec
        position = SkyCoord(ra * u.deg, dec * u.deg)
        state = self._state()
        if dataset_type not in state.dataset_types:
            raise not_found(f"no dataset type {dataset_type!r} in this repository")
        try:
            found = find_images(state, position, dataset_type, run, None, window)[0]
            if len(found) > self.limits.max_history_images:
                raise _SodaError(f"{len(found)} images hold this position; this service answers at most "
                                f"{self.limits.max_history_images}: narrow it with TIME or RUN")
            result = cutouts_at(self.butler.store, state, position, size, dataset_type, run, None, window,
                                read=self.butler.read_image_cutouts)
        except (InvalidCutoutError, InvalidKeyError) as exc:
            raise _SodaError(str(exc)) from None
        return ra, dec, list(result[0])

    def history_answer(self, params: Params, fmt: str, base_url: str) -> Answer:
        """The object history as multi-extension FITS, or as JSON with inline PNG stamps (the page)."""
        ra, dec, history = self.history(params)
        if fmt == "fits":
            return encode.history_fits(history, ra, dec), _FITS
        import json

        stamps = []
        for row, (ref, stamp) in zip(encode.history_rows(history), history, strict=True):
            row["png"] = base64.b64encode(png_bytes(stamp.data)).decode("ascii")
            row["fits_url"] = f"{base_url}api/cutout/sync?" + urlencode(
                {"ID": ref.id, "POS": _stamp_circle(ra, dec, stamp).text()})
            row["dataset_url"] = f"{base_url}api/datasets/{ref.id}"
            stamps.append(row)
        return json.dumps({"ra": ra, "dec": dec, "stamps": stamps}).encode(), "application/json"


def datalink_fault(error: _SodaError) -> str:
    """The DataLink 1.1 (3.4) fault an error is: NotFoundFault, UsageFault, TransientFault or DefaultFault."""
    if error.status == 404:
        return "NotFoundFault"
    if error.status == 503:
        return "TransientFault"
    return "UsageFault" if error.status < 500 else "DefaultFault"


def _stamp_circle(ra: float, dec: float, stamp: Any) -> Circle:
    """The circle whose SODA cutout is about the stamp: the stamp's half-width around the position."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    scale = float(proj_plane_pixel_scales(stamp.wcs).mean()) if stamp.wcs is not None else 1.0 / 3600
    return Circle(ra, dec, max(stamp.bbox.width, stamp.bbox.height) / 2 * scale)
