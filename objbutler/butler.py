"""The Butler: create or open a repository, put, get, query, cut out.

A repository is a store prefix holding ``objbutler.json`` (written once), the
data objects under ``data/`` and the registry under ``manifest/``. A Butler
keeps no open files or sessions between calls: it holds the store (whose
network clients may be pooled) and its last view of the registry, which every
call refreshes from the bucket first, so a long-lived Butler never answers
from a stale view.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from objbutler.cutouts import Box, ClipMode, Cutout
from objbutler.errors import (
    AlreadyExistsError,
    CommitOutcomeUnknownError,
    ConflictError,
    FormatError,
    InvalidKeyError,
    NotFoundError,
    NotSupportedError,
)
from objbutler.formats.dispatch import (
    FORMATS,
    delete_dataset,
    encode_dataset,
    read_dataset,
    write_dataset,
)
from objbutler.registry.commits import utc_now
from objbutler.registry.records import (
    DatasetRef,
    DatasetType,
    canonical_data_id,
    data_id_slug,
    dimension_kinds,
    validate_data_id,
    validate_dataset_type_name,
    validate_run,
)
from objbutler.registry.registry import Registry
from objbutler.stores import Store, open_store, probe_conditional_writes

__all__ = ["CONFIG_KEY", "Butler"]

CONFIG_KEY = "objbutler.json"
CONFIG_FORMAT = "objbutler-repository"
EXTENSIONS = {"fits": ".fits", "zarr": ".zarr", "json": ".json", "parquet": ".parquet", "ecsv": ".ecsv"}


class Butler:
    """A repository of datasets in an object store (or a local directory).

    Parameters
    ----------
    uri : str
        ``s3://bucket/prefix``, ``swift://container/prefix``, ``file:///path``,
        a plain path, or ``memory://name``.
    store : Store, optional
        Use this store object instead of opening ``uri`` (e.g. a wrapper store
        that counts requests or injects faults); ``uri`` then only names it.
    **store_options
        Passed to :func:`objbutler.stores.open_store` (endpoint, credentials, ...).

    Raises
    ------
    NotFoundError
        If no repository exists at ``uri``.
    """

    def __init__(self, uri: str, *, store: Store | None = None, **store_options: Any) -> None:
        self.uri = uri
        self._store_options = store_options
        self._given_store = store
        self.store: Store = store if store is not None else open_store(uri, **store_options)
        try:
            raw = self.store.get(CONFIG_KEY)
        except NotFoundError:
            raise NotFoundError(
                f"no objbutler repository at {uri} (no {CONFIG_KEY}); create one with Butler.create({uri!r})"
            ) from None
        self.config = _parse_config(raw, uri)
        self.registry = Registry(
            self.store,
            self.config["commit_protocol"],
            uri,
            checkpoint_interval=int(self.config.get("checkpoint_interval", 100)),
            settle_seconds=float(self.config.get("settle_seconds", 0.5)),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.uri, self._given_store, self._store_options))

    def __repr__(self) -> str:
        return f"Butler({self.uri!r})"

    # -- repositories ----------------------------------------------------------

    @classmethod
    def create(
        cls,
        uri: str,
        *,
        default_format: str = "fits",
        checkpoint_interval: int = 100,
        allow_no_atomic_create: bool = False,
        store: Store | None = None,
        **store_options: Any,
    ) -> Butler:
        """Create a new, empty repository and return a Butler on it.

        The store's conditional writes are probed first. A store that claims an
        atomic create and enforces it gets the ``sequenced`` commit protocol; a
        store without one (Swift) gets ``timestamped``. A store that claims an
        atomic create but ignores the header is refused unless
        ``allow_no_atomic_create=True``, which degrades to ``timestamped``.

        Parameters
        ----------
        uri : str
            Where the repository goes.
        default_format : {"fits", "zarr"}
            Format of image datasets when ``put`` is not told.
        checkpoint_interval : int
            Commits between registry checkpoints.
        allow_no_atomic_create : bool
            Accept a store whose conditional create is not enforced.
        store : Store, optional
            Use this store object instead of opening ``uri``.
        **store_options
            Passed to :func:`objbutler.stores.open_store`.

        Raises
        ------
        AlreadyExistsError
            If a repository is already there.
        NotSupportedError
            If the store ignores conditional writes and degrading was not allowed.
        """
        if FORMATS.get(default_format) != "image":
            raise FormatError(f"default_format must be 'fits' or 'zarr', got {default_format!r}")
        given = store
        store = store if store is not None else open_store(uri, **store_options)
        protocol = _choose_protocol(store, allow_no_atomic_create)
        config = {
            "format": CONFIG_FORMAT,
            "version": 1,
            "created": utc_now(),
            "commit_protocol": protocol,
            "default_format": default_format,
            "checkpoint_interval": checkpoint_interval,
            "settle_seconds": 0.5,
        }
        body = json.dumps(config, indent=2).encode()
        try:
            if store.capabilities.conditional_create_header:
                store.put_if_absent(CONFIG_KEY, body)
            else:
                store.put(CONFIG_KEY, body)
        except AlreadyExistsError:
            raise AlreadyExistsError(f"a repository already exists at {uri}") from None
        return cls(uri, store=given, **store_options)

    # -- put -------------------------------------------------------------------

    def put(
        self,
        obj: Any,
        dataset_type: str,
        data_id: Mapping[str, Any],
        run: str,
        *,
        format: str | None = None,
        inputs: Sequence[DatasetRef] | None = None,
        derived_from: Sequence[DatasetRef] | None = None,
        format_options: Mapping[str, Any] | None = None,
    ) -> DatasetRef:
        """Store a dataset and commit it; blocks until both have landed.

        The data object is written under a fresh key, then the registry entry
        is committed. If the commit fails for any reason the data object is
        deleted and the error raised: a put is atomic.

        Parameters
        ----------
        obj : ndarray, astropy HDU/HDUList, NDData/CCDData, dict, or astropy Table
            The dataset.
        dataset_type : str
            Its type; registered on first put with this data ID's keys.
        data_id : mapping
            Dimension -> int or str.
        run : str
            The run (collection) it belongs to.
        format : str, optional
            ``fits``/``zarr`` for images (default: the repository's),
            ``json`` for dicts, ``parquet``/``ecsv`` for tables.
        inputs, derived_from : sequence of DatasetRef, optional
            Provenance: every contributing input, and the subset actually used.
        format_options : mapping, optional
            Passed to the encoder (e.g. ``{"chunks": (512, 512)}`` for Zarr,
            ``{"compression": "RICE_1"}`` for FITS).

        Returns
        -------
        DatasetRef
            The committed dataset.

        Raises
        ------
        ConflictError
            The data ID is taken in this run, or the dataset type disagrees.
        InvalidKeyError
            A bad dataset type name, data ID or run.
        FormatError
            The object cannot be stored in that format.
        """
        dataset_type = validate_dataset_type_name(dataset_type)
        clean_id = validate_data_id(data_id)
        run = validate_run(run)
        encoded = encode_dataset(obj, format, self.config["default_format"], dict(format_options or {}))
        provenance = _provenance_record(inputs, derived_from)
        kinds = dimension_kinds(clean_id)
        new_type = DatasetType(dataset_type, tuple(clean_id), encoded.kind)
        state = self.registry.state
        state.check_types([new_type], kinds)
        holder = state.find_unique((dataset_type, run, canonical_data_id(clean_id)))
        if holder is not None:
            raise ConflictError(f"{dataset_type} {clean_id} already exists in run {run!r} (dataset {holder.id})")
        ref_id = str(uuid.uuid4())
        key = f"data/{run}/{dataset_type}/{data_id_slug(clean_id)}-{ref_id[:8]}{EXTENSIONS[encoded.format]}"
        ref = DatasetRef(
            id=ref_id, dataset_type=dataset_type, data_id=clean_id, run=run, format=encoded.format, key=key,
            size=encoded.size, checksum=encoded.checksum, created=utc_now(), provenance=provenance,
            repository=self.uri,
        )
        write_dataset(self.store, key, encoded)
        try:
            self.registry.commit([new_type], kinds, [ref])
        except CommitOutcomeUnknownError:
            raise  # the data may be referenced: keep it, fsck will tell
        except BaseException:
            with contextlib.suppress(Exception):
                delete_dataset(self.store, key, encoded.format)
            raise
        return ref

    # -- finding ---------------------------------------------------------------

    def query(
        self,
        dataset_type: str | None = None,
        where: Mapping[str, Any] | None = None,
        run: str | None = None,
    ) -> list[DatasetRef]:
        """Find committed datasets.

        Parameters
        ----------
        dataset_type : str, optional
            Only this type.
        where : mapping, optional
            Data ID conditions: ``{"visit": 903334}`` (equality),
            ``{"detector": [1, 2, 3]}`` (membership), ``{"visit": range(100, 200)}``
            (half-open interval).
        run : str, optional
            Only this run.

        Returns
        -------
        list of DatasetRef
        """
        return self.registry.refresh().query(dataset_type, where, run)

    def find(self, dataset_type: str, data_id: Mapping[str, Any], run: str | None = None) -> DatasetRef:
        """The one dataset of this type and data ID (in ``run``, or in the only run that has it).

        Raises
        ------
        NotFoundError
            If there is none.
        InvalidKeyError
            If ``run`` is None and several runs hold it.
        """
        clean_id = validate_data_id(data_id)
        state = self.registry.refresh()
        if dataset_type not in state.dataset_types:
            raise NotFoundError(f"unknown dataset type {dataset_type!r} in {self.uri}")
        matches = [r for r in state.query(dataset_type, clean_id, run) if r.data_id == clean_id]
        if not matches:
            where = f" in run {run!r}" if run else ""
            raise NotFoundError(f"no {dataset_type} with data ID {clean_id}{where} in {self.uri}")
        if len(matches) > 1:
            runs = sorted(r.run for r in matches)
            raise InvalidKeyError(f"{dataset_type} {clean_id} exists in several runs {runs}: pass run=")
        return matches[0]

    def _resolve(self, ref_or_type: DatasetRef | str, data_id: Mapping[str, Any] | None, run: str | None) -> DatasetRef:
        if isinstance(ref_or_type, DatasetRef):
            if ref_or_type.repository and ref_or_type.repository != self.uri:
                found = self.registry.refresh().query(dataset_id=ref_or_type.id)
                if not found:
                    raise NotFoundError(f"dataset {ref_or_type.id} is not in {self.uri}")
                return found[0]
            return ref_or_type
        if data_id is None:
            raise InvalidKeyError("pass a DatasetRef, or a dataset type and a data ID")
        return self.find(ref_or_type, data_id, run)

    # -- get -------------------------------------------------------------------

    def get(self, ref_or_type: DatasetRef | str, data_id: Mapping[str, Any] | None = None,
            run: str | None = None) -> Any:
        """Read a whole dataset.

        Parameters
        ----------
        ref_or_type : DatasetRef or str
            A ref, or a dataset type name (then ``data_id`` and ``run``).
        data_id : mapping, optional
            With a dataset type name.
        run : str, optional
            With a dataset type name; needed when several runs hold the data ID.

        Returns
        -------
        NDData, dict or Table
            Images come back as NDData with ``.data``, ``.wcs`` and ``.meta``.
        """
        ref = self._resolve(ref_or_type, data_id, run)
        return read_dataset(self.store, ref.key, ref.format)

    def get_cutouts(
        self,
        ref_or_type: DatasetRef | str,
        boxes_or_coords: Any,
        data_id: Mapping[str, Any] | None = None,
        run: str | None = None,
        *,
        mode: ClipMode = "trim",
        fill_value: float = np.nan,
        size: Any = None,
        cost: Any = None,
    ) -> list[Cutout]:
        """Cut many postage stamps out of one image with a few coalesced range reads.

        Parameters
        ----------
        ref_or_type : DatasetRef or str
            The image (a ref, or a dataset type name with ``data_id``/``run``).
        boxes_or_coords : sequence of Box or (x0, y0, x1, y1), or SkyCoord
            Pixel boxes (half-open, 0-based), or sky positions (then ``size``).
        mode : {"trim", "partial", "strict"}
            Clipping, as astropy's Cutout2D.
        fill_value : float
            For pixels outside the image in ``partial`` mode.
        size : int, (ny, nx) or Quantity
            Stamp size for sky positions.
        cost : objbutler.ranges.CostModel, optional
            Latency/bandwidth model for planning FITS reads.

        Returns
        -------
        list of Cutout
            In request order.
        """
        ref = self._resolve(ref_or_type, data_id, run)
        boxes = self._boxes_for(ref, boxes_or_coords, size)
        if ref.format == "fits":
            from objbutler.formats.fits import read_fits_cutouts

            return read_fits_cutouts(self.store, ref.key, boxes, mode, fill_value, cost=cost)
        if ref.format == "zarr":
            from objbutler.formats.zarr_array import read_zarr_cutouts

            return read_zarr_cutouts(self.store, ref.key, boxes, mode, fill_value)
        raise NotSupportedError(f"cutouts need an image dataset; {ref.dataset_type} is {ref.format}")

    def get_cutouts_many(
        self,
        requests: Mapping[DatasetRef, Any],
        *,
        mode: ClipMode = "trim",
        fill_value: float = np.nan,
        size: Any = None,
        max_images_in_flight: int = 4,
    ) -> dict[DatasetRef, list[Cutout]]:
        """Cut stamps out of many images, running the per-image plans concurrently.

        Parameters
        ----------
        requests : mapping of DatasetRef to boxes or SkyCoord
            Per image, what :meth:`get_cutouts` takes.
        mode, fill_value, size
            As for :meth:`get_cutouts`.
        max_images_in_flight : int
            Images processed at once (each already reads its blocks concurrently).

        Returns
        -------
        dict of DatasetRef to list of Cutout
            Stamps per image, each list in request order.
        """
        from objbutler.stores._concurrency import run_concurrently

        refs = list(requests)
        stamps = run_concurrently(
            lambda ref: self.get_cutouts(ref, requests[ref], mode=mode, fill_value=fill_value, size=size),
            refs,
            max_images_in_flight,
        )
        return dict(zip(refs, stamps, strict=True))

    def get_wcs(self, ref_or_type: DatasetRef | str, data_id: Mapping[str, Any] | None = None,
                run: str | None = None) -> Any:
        """An image's WCS, read from its header alone (no pixels), or None if it has none.

        Used to turn sky positions into the pixel boxes :meth:`get_cutouts` would cut
        (:func:`objbutler.cutouts.boxes_from_skycoords`), e.g. when each position has its own size.
        """
        ref = self._resolve(ref_or_type, data_id, run)
        if FORMATS.get(ref.format) != "image":
            raise NotSupportedError(f"{ref.dataset_type} is {ref.format}, not an image: it has no WCS")
        return self._image_wcs(ref)

    def _boxes_for(self, ref: DatasetRef, boxes_or_coords: Any, size: Any) -> list[Box]:
        from astropy.coordinates import SkyCoord

        if not isinstance(boxes_or_coords, SkyCoord):
            if size is not None:
                raise InvalidKeyError("size= goes with sky positions; pixel boxes carry their own size")
            return [b if isinstance(b, Box) else Box(*b) for b in boxes_or_coords]
        if size is None:
            raise InvalidKeyError("cutouts at sky positions need size= (pixels or an angle)")
        from objbutler.cutouts import boxes_from_skycoords

        wcs = self._image_wcs(ref)
        if wcs is None:
            raise NotSupportedError(f"{ref.dataset_type} {ref.data_id} has no WCS: use pixel boxes")
        return boxes_from_skycoords(boxes_or_coords, wcs, size)

    def _image_wcs(self, ref: DatasetRef) -> Any:
        if ref.format == "fits":
            from objbutler.formats.fits import read_fits_wcs

            return read_fits_wcs(self.store, ref.key)
        from objbutler.formats.zarr_array import read_zarr_wcs

        return read_zarr_wcs(self.store, ref.key)


def _reopen(uri: str, store: Store | None, store_options: dict[str, Any]) -> Butler:
    return Butler(uri, store=store, **store_options)


def _parse_config(raw: bytes, uri: str) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{uri}/{CONFIG_KEY} is corrupt: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise FormatError(f"{uri}/{CONFIG_KEY} is not an objbutler repository config")
    if config.get("commit_protocol") not in ("sequenced", "timestamped"):
        raise FormatError(f"{uri}/{CONFIG_KEY} names an unknown commit protocol")
    return config


def _choose_protocol(store: Store, allow_no_atomic_create: bool) -> str:
    caps = store.capabilities
    if not caps.atomic_create:
        if not caps.server_timestamps:
            raise NotSupportedError(f"{store.uri} has neither an atomic create nor server timestamps")
        return "timestamped"
    probe = probe_conditional_writes(store)
    if probe.create_enforced:
        return "sequenced"
    if allow_no_atomic_create:
        return "timestamped"
    raise NotSupportedError(
        f"{store.uri} accepted a second create-only write of one key: it ignores If-None-Match, so commits "
        "could be lost. Use a store that enforces conditional writes, or pass allow_no_atomic_create=True "
        "to use the slower timestamped commit protocol."
    )


def _provenance_record(
    inputs: Sequence[DatasetRef] | None, derived_from: Sequence[DatasetRef] | None
) -> dict[str, Any] | None:
    if not inputs and not derived_from:
        return None
    inputs = list(inputs or [])
    derived = list(derived_from or [])
    input_ids = {ref.id for ref in inputs}
    stray = [ref.id for ref in derived if ref.id not in input_ids]
    if stray:
        raise ValueError(f"derived_from must be a subset of inputs; not in inputs: {stray}")
    return {"inputs": _ref_links(inputs), "derived_from": _ref_links(derived)}


def _ref_links(refs: Iterable[DatasetRef]) -> list[dict[str, Any]]:
    return [
        {"id": r.id, "repository": r.repository, "dataset_type": r.dataset_type, "data_id": r.data_id, "run": r.run}
        for r in refs
    ]
