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
import copy
import dataclasses
import enum
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from objbutler.config import CONFIG_KEY, RepositoryConfig, parse_config
from objbutler.cutouts import (
    Box,
    ClipMode,
    Cutout,
    as_boxes,
    boxes_at,
    is_angular,
    pixel_positions,
    size_in_pixels,
    sky_to_pixels,
)
from objbutler.defaults import DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_SETTLE_SECONDS, DEFAULT_TIMESTAMP_RESOLUTION
from objbutler.errors import (
    AlreadyExistsError,
    AmbiguousRunError,
    BucketNotFoundError,
    ConfigError,
    ConflictError,
    FormatError,
    InvalidCutoutError,
    InvalidKeyError,
    NotFoundError,
    NotSupportedError,
    ObjButlerError,
    OfflineError,
    RepositoryNotFoundError,
)
from objbutler.formats.dispatch import (
    FORMATS,
    EncodedDataset,
    Recorded,
    delete_dataset,
    encode_dataset,
    read_dataset,
    signature_problem,
    write_dataset,
)
from objbutler.group_commit import CommitCombiner, PendingPut
from objbutler.provenance import (
    Activity,
    LineageGraph,
    activity_scope,
    current_activity,
    provenance_record,
    stamp_fits_cards,
    walk_downstream,
    walk_upstream,
)
from objbutler.registry.cache_policy import repository_cache_policy
from objbutler.registry.commits import utc_now
from objbutler.registry.records import (
    DatasetRef,
    DatasetType,
    data_id_slug,
    dimension_kinds,
    validate_data_id,
    validate_dataset_type_name,
    validate_run,
)
from objbutler.registry.registry import DEFAULT_LOG_SHARDS, PROTOCOLS, Registry
from objbutler.registry.state import check_condition_kind
from objbutler.stores import (
    Store,
    budget_of,
    open_store,
    probe_conditional_writes,
    probe_timestamp_resolution,
    validate_key,
)
from objbutler.stores.cache import CachingStore, cache_settings
from objbutler.stores.locations import Location, parse_location, sibling_store

if TYPE_CHECKING:
    from objbutler.batch import Batch

__all__ = ["CONFIG_KEY", "UNSET", "Butler"]


class _Unset(enum.Enum):
    """The type of :data:`UNSET`."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: The default of a ``Butler.create`` setting that was not given: a new repository gets the usual
#: default, and ``exist_ok=True`` does not compare it with an existing repository's.
UNSET: Final = _Unset.UNSET

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
    cache : str, Path or bool, optional
        Keep immutable objects (data, checkpoints, log entries) in this local
        directory (a :class:`~objbutler.stores.cache.CachingStore`); ``True`` for
        ``~/.cache/objbutler``, ``False`` for none. Default: ``OBJBUTLER_CACHE``
        when ``store`` is not given.
    offline : bool or "auto", optional
        ``True``: never contact the server; answer from the cache, or raise
        OfflineError. ``"auto"``: answer from the cache (possibly stale) while
        the server fails (after the store's retries), for a minute at a time.
        ``False``: a failing server raises, even with a cache, so the registry
        seen is never older than a commit that had finished. Default:
        ``OBJBUTLER_OFFLINE`` (``1`` or ``auto``), else False.
    **store_options
        Passed to :func:`objbutler.stores.open_store` (endpoint, credentials, ...).

    Attributes
    ----------
    combiner : CommitCombiner
        Shares registry commits between threads putting through this Butler
        (see :mod:`objbutler.group_commit`); its ``rounds`` and ``waits`` count them.

    Raises
    ------
    RepositoryNotFoundError
        If no repository exists at ``uri``.
    BucketNotFoundError
        If the bucket (or Swift container) of ``uri`` does not exist.
    InvalidURIError
        If ``uri`` is malformed (see :func:`~objbutler.stores.parse_store_uri`).
    """

    def __init__(self, uri: str, *, store: Store | None = None, cache: str | os.PathLike[str] | bool | None = None,
                 offline: bool | Literal["auto"] | None = None, **store_options: Any) -> None:
        self.uri = uri
        self._store_options = store_options
        self._given_store = store
        self._cache_options = (cache, offline)
        self._location_stores: dict[tuple[str, str], Store] = {}  # stores of buckets holding direct datasets
        self._location_lock = threading.Lock()
        self.store: Store = store if store is not None else open_store(uri, **store_options)
        if store is None or cache is not None or offline is not None:  # the environment applies to URIs only
            cache_dir, offline, max_bytes = cache_settings(cache, offline)
            if cache_dir is not None:
                self.store = CachingStore(self.store, cache_dir, max_bytes, offline is True,
                                          auto_offline=offline == "auto", policy=repository_cache_policy(CONFIG_KEY))
        try:
            raw = self.store.get(CONFIG_KEY)
        except BucketNotFoundError:
            raise
        except NotFoundError:
            _raise_if_no_bucket(self.store)
            raise RepositoryNotFoundError(
                f"no objbutler repository at {uri} (no {CONFIG_KEY}); create one with Butler.create({uri!r})",
                uri=uri,
            ) from None
        self.config: RepositoryConfig = parse_config(raw, uri)
        self.registry = Registry(
            self.store,
            self.config.commit_protocol,
            uri,
            checkpoint_interval=self.config.checkpoint_interval,
            settle_seconds=self.config.settle_seconds,
            timestamp_resolution=self.config.timestamp_resolution,
            log_shards=self.config.log_shards or DEFAULT_LOG_SHARDS,
        )
        self.combiner = CommitCombiner(self.registry)  # threads of this process share commits
        if isinstance(self.store, CachingStore) and not self.store.offline:
            self.registry.refresh()  # read the manifest through the cache now, so it is there offline

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (self.uri, self._given_store, self._store_options, self._cache_options))

    def __repr__(self) -> str:
        return f"Butler({self.uri!r})"

    # -- repositories ----------------------------------------------------------

    @classmethod
    def create(
        cls,
        uri: str,
        *,
        default_format: str | _Unset = UNSET,
        checkpoint_interval: int | _Unset = UNSET,
        allow_no_atomic_create: bool = False,
        exist_ok: bool = False,
        store: Store | None = None,
        commit_protocol: str | None = None,
        log_shards: int | None = None,
        **store_options: Any,
    ) -> Butler:
        """Create a new, empty repository and return a Butler on it.

        The store's conditional writes are probed first. A store that claims an
        atomic create and enforces it gets the ``claimed`` commit protocol
        (claims per data ID and a sharded log, so that many concurrent writers
        scale: see docs/registry.md) unless ``commit_protocol="sequenced"`` is
        asked for (one log, two requests per put, for a single writer);
        a store without one (Swift) gets ``timestamped``. A store that claims an
        atomic create but ignores the header is refused unless
        ``allow_no_atomic_create=True``, which degrades to ``timestamped``.

        Parameters
        ----------
        uri : str
            Where the repository goes.
        default_format : {"fits", "zarr"}, optional
            Format of image datasets when ``put`` is not told (a new repository:
            ``"fits"`` when not given).
        checkpoint_interval : int, optional
            Commits between registry checkpoints (>= 1; a new repository: 100
            when not given).
        allow_no_atomic_create : bool
            Accept a store whose conditional create is not enforced.
        exist_ok : bool
            If a repository is already at ``uri``, open it instead of raising,
            after checking that its settings agree with ``default_format`` and
            ``checkpoint_interval`` where these are given (its commit protocol
            is the one chosen when it was created).
        store : Store, optional
            Use this store object instead of opening ``uri``.
        commit_protocol : {"claimed", "sequenced", "timestamped"}, optional
            None (default): ``"claimed"`` on a store with an atomic create,
            ``"timestamped"`` without one. ``"claimed"`` scales writes with
            writers: three requests per put in two round trips (the claim
            goes with the upload), plus about one GET per put amortized to
            fold commits into checkpoints; a reader's refresh is one listing
            (the log is compacted). ``"sequenced"`` (atomic-create stores):
            one log, two requests per put, but every writer reads every other
            writer's commits, so throughput falls as writers are added.
            ``"timestamped"`` runs on any store with server timestamps.
        log_shards : int, optional
            ``"claimed"`` only: how many log shards (1 to 1000; 256 when not
            given). More shards than concurrent writers keep writers apart; a
            reader's refresh is one listing whatever the number.
        **store_options
            Passed to :func:`objbutler.stores.open_store`.

        Raises
        ------
        AlreadyExistsError
            If a repository is already there (and ``exist_ok`` is false), or it
            is there with other settings than the ones given.
        BucketNotFoundError
            If the bucket (Swift container) does not exist and ``create_bucket=True``
            (``create_container=True``) was not passed.
        InvalidURIError
            If ``uri`` is malformed or names a bucket that breaks the naming rules
            (:class:`~objbutler.errors.InvalidBucketNameError`).
        NotSupportedError
            If the store ignores conditional writes and degrading was not allowed.
        ConfigError
            If ``default_format``, ``checkpoint_interval`` or ``commit_protocol`` is invalid.
        """
        fmt = "fits" if default_format is UNSET else default_format
        interval = DEFAULT_CHECKPOINT_INTERVAL if checkpoint_interval is UNSET else checkpoint_interval
        RepositoryConfig("sequenced", fmt, interval)  # refuse bad arguments before any I/O
        if commit_protocol is not None and commit_protocol not in PROTOCOLS:
            raise ConfigError(f"commit_protocol must be one of {list(PROTOCOLS)}, got {commit_protocol!r}")
        if log_shards is not None:
            if commit_protocol not in (None, "claimed"):
                raise ConfigError(f"log_shards is a setting of the claimed commit protocol; got "
                                  f"log_shards={log_shards!r} with commit_protocol={commit_protocol!r}")
            RepositoryConfig("claimed", fmt, interval, log_shards=log_shards)  # 1 to 1000, before any I/O
        given = store
        store = store if store is not None else open_store(uri, **store_options)
        # Look first: a store without a conditional create (Swift) would otherwise overwrite the config
        # of a repository that is already there, and the probes below would write into it.
        exists = _has_config(store)
        if not exists:
            protocol = _choose_protocol(store, allow_no_atomic_create, commit_protocol)
            if log_shards is not None and protocol != "claimed":
                raise ConfigError(f"log_shards is a setting of the claimed commit protocol, which {uri} cannot "
                                  f"run (it gets {protocol})")
            timestamped = protocol == "timestamped"
            resolution = probe_timestamp_resolution(store) if timestamped else DEFAULT_TIMESTAMP_RESOLUTION
            shards = (log_shards or DEFAULT_LOG_SHARDS) if protocol == "claimed" else 0
            config = RepositoryConfig(protocol, fmt, interval, DEFAULT_SETTLE_SECONDS, resolution, utc_now(), shards)
            body = config.to_json()
            try:
                if store.capabilities.conditional_create_header:
                    store.put_if_absent(CONFIG_KEY, body)
                else:
                    store.put(CONFIG_KEY, body)  # no atomic create: two creates racing here both "win" alike
            except AlreadyExistsError:
                exists = True  # another process created it between our look and our write
        if exists and not exist_ok:
            raise AlreadyExistsError(
                f"a repository already exists at {uri}: open it with Butler({uri!r}), pass exist_ok=True, "
                f"or remove it first (objbutler rm-repo {uri})"
            )
        butler = cls(uri, store=given, **store_options)
        if not exists:
            butler.registry.write_empty_checkpoint()  # claimed: stock tools find a checkpoint from the start
        else:
            asked = {"default_format": default_format, "checkpoint_interval": checkpoint_interval}
            differ = [f"{name}={getattr(butler.config, name)!r} (asked for {value!r})"
                      for name, value in asked.items() if value is not UNSET and getattr(butler.config, name) != value]
            if differ:
                raise AlreadyExistsError(f"a repository already exists at {uri} with other settings: "
                                         + ", ".join(differ))
        return butler

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
        activity: Activity | None = None,
    ) -> DatasetRef:
        """Store a dataset and commit it; blocks until both have landed.

        The data object is written under a fresh key, then the registry entry
        is committed. The commit point is the creation of the commit object in
        the registry log (see :meth:`objbutler.registry.registry.Registry.commit`):
        once it exists the put has succeeded and returns, whatever happens
        after it. If the put fails before it, the data object is deleted and the
        error raised: a put is atomic. If the store cannot tell whether the
        commit landed, the data is kept and ``CommitOutcomeUnknownError`` raised.

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
            FITS images also get bounded ``PROV*`` header cards.
        activity : Activity, optional
            The step that made it (default: the innermost open :meth:`activity` block).
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
        StoreError
            The store failed before the commit point; nothing was committed.
        CommitOutcomeUnknownError
            The commit write failed and whether it landed cannot be read back;
            the data is kept (``objbutler fsck`` tells which).
        """
        activity = activity if activity is not None else current_activity(self)
        pending, encoded = self.prepare_put(obj, dataset_type, data_id, run, format=format, inputs=inputs,
                                            derived_from=derived_from, format_options=format_options,
                                            activity=activity)
        # fail before uploading when the view already says no
        self.registry.check([pending.dataset_type], pending.kinds, [pending.ref])
        if self.registry.claims_ahead:
            pending = self.upload_and_claim(pending, encoded)
        else:
            self.upload(pending, encoded)
        outcome = self.commit_pending([pending])[0]  # shares a commit with other threads' puts, if any
        if isinstance(outcome, BaseException):
            raise outcome  # data deleted, or kept when the outcome is unknown (see commit_group)
        if activity is not None:
            activity.outputs.append(outcome.id)
        return outcome

    def put_many(
        self,
        items: Iterable[tuple[Any, str, Mapping[str, Any]] | Mapping[str, Any]],
        run: str,
        *,
        format: str | None = None,
        format_options: Mapping[str, Any] | None = None,
        errors: Literal["raise", "return"] = "raise",
        max_concurrency: int | None = None,
        chunk_size: int | None = None,
    ) -> list[Any]:
        """Store many datasets: upload concurrently, then commit them in as few commits as possible.

        See :func:`objbutler.batch.put_many` for the per-item semantics (an
        item refused does not stop the others; chunks of
        :data:`~objbutler.group_commit.DEFAULT_CHUNK_SIZE` datasets per commit).

        Parameters
        ----------
        items : iterable
            ``(obj, dataset_type, data_id)`` tuples, or mappings with keys
            ``obj``, ``dataset_type``, ``data_id`` and optionally ``inputs``,
            ``derived_from``, ``format``, ``format_options``.
        run : str
            The run of every dataset.
        format, format_options : optional
            As for :meth:`put`, for every item (an item's mapping may override them).
        errors : {"raise", "return"}
            ``"raise"``: after committing what can be, raise
            :class:`~objbutler.errors.BatchError` if any item failed.
            ``"return"``: return the per-item list (refs and exceptions) instead.
        max_concurrency : int, optional
            Most encodes/uploads at once (default: the store's ``max_concurrency``, else 16).
        chunk_size : int, optional
            Most datasets per registry commit (default
            :data:`~objbutler.group_commit.DEFAULT_CHUNK_SIZE`).

        Returns
        -------
        list
            One entry per item, in order: its ``DatasetRef`` (with ``errors="return"``, or the exception).

        Raises
        ------
        BatchError
            ``errors="raise"`` and some items failed; ``.results`` holds every item's outcome.
        """
        from objbutler.batch import put_many

        return put_many(self, list(items), run, format=format, format_options=format_options, errors=errors,
                        max_concurrency=max_concurrency, chunk_size=chunk_size)

    def batch(self, run: str, *, format: str | None = None, format_options: Mapping[str, Any] | None = None,
              errors: Literal["raise", "return"] = "raise", max_concurrency: int | None = None,
              chunk_size: int | None = None) -> Batch:
        """A context whose ``put`` calls upload at once and commit together when it exits.

        Examples
        --------
        >>> with butler.batch(run="run1") as batch:  # doctest: +SKIP
        ...     for visit in visits:
        ...         batch.put(images[visit], "calexp", {"visit": visit})
        >>> refs = batch.results  # doctest: +SKIP

        See :class:`objbutler.batch.Batch`.
        """
        from objbutler.batch import Batch

        return Batch(self, run, format=format, format_options=format_options, errors=errors,
                     max_concurrency=max_concurrency, chunk_size=chunk_size)

    def prepare_put(self, obj: Any, dataset_type: str, data_id: Mapping[str, Any], run: str, *,
                    format: str | None = None, inputs: Sequence[DatasetRef] | None = None,
                    derived_from: Sequence[DatasetRef] | None = None,
                    format_options: Mapping[str, Any] | None = None,
                    activity: Activity | None = None) -> tuple[PendingPut, EncodedDataset]:
        """Validate and encode one dataset: its ref (fresh id and key) and bytes, nothing written yet.

        Raises
        ------
        InvalidKeyError, FormatError
            As :meth:`put`.
        """
        dataset_type = validate_dataset_type_name(dataset_type)
        clean_id = validate_data_id(data_id)
        run = validate_run(run)
        provenance = provenance_record(inputs, derived_from, activity)
        default_format = self.config.default_format
        obj = stamp_fits_cards(obj, provenance, format or default_format)
        encoded = encode_dataset(obj, format, default_format, dict(format_options or {}))
        kinds = dimension_kinds(clean_id)
        new_type = DatasetType(dataset_type, tuple(clean_id), encoded.kind)
        ref_id = str(uuid.uuid4())
        key = f"data/{run}/{dataset_type}/{data_id_slug(clean_id)}-{ref_id[:8]}{EXTENSIONS[encoded.format]}"
        ref = DatasetRef(
            id=ref_id, dataset_type=dataset_type, data_id=clean_id, run=run, format=encoded.format, key=key,
            size=encoded.size, checksum=encoded.checksum, created=utc_now(), provenance=provenance,
            repository=self.uri, layout=encoded.layout, sky=encoded.sky,
        )
        fmt = encoded.format
        return PendingPut(ref, new_type, kinds, lambda: self._discard(key, fmt)), encoded

    def upload(self, pending: PendingPut, encoded: EncodedDataset) -> None:
        """Write a prepared dataset's objects; on failure delete what was written and raise."""
        try:
            write_dataset(self.store, pending.ref.key, encoded)
        except Exception:
            pending.discard()  # no commit names this key yet
            raise

    def upload_and_claim(self, pending: PendingPut, encoded: EncodedDataset) -> PendingPut:
        """Claimed protocol: write the data and claim its data ID at the same time (one round trip, not two).

        Returns the put with ``claimed`` set and a ``discard`` that also
        releases the claim. If either fails, what the other wrote is undone
        (the data deleted, our claim released) and the error raised: a refused
        claim's ConflictError first. A claim refused before the upload started
        stops the upload from starting.

        Raises
        ------
        ConflictError, StoreError
            As :meth:`put`, before its commit point: nothing was committed.
        """
        claims: list[str] = []
        refused: list[BaseException] = []
        uploaded: list[bool] = []

        def claim() -> BaseException | None:
            try:
                claims.extend(self.registry.claim_ahead([pending.dataset_type], pending.kinds, [pending.ref]))
            except BaseException as exc:  # handed back, raised below once the upload is settled
                refused.append(exc)
                return exc
            return None

        def upload() -> BaseException | None:
            if refused:
                return None  # the claim was refused first: nothing to write
            try:
                self.upload(pending, encoded)  # deletes what it wrote if it fails
            except BaseException as exc:  # handed back, raised below
                return exc
            uploaded.append(True)
            return None

        claim_error, upload_error = budget_of(self.store).map(lambda step: step(), [claim, upload], 2)
        if claim_error is None and upload_error is None:
            discard = pending.discard

            def undo() -> None:
                discard()
                self.registry.release_claims(claims)

            return dataclasses.replace(pending, discard=undo, claimed=True)
        if claim_error is None:
            self.registry.release_claims(claims)
        if uploaded:
            pending.discard()
        error = claim_error if claim_error is not None else upload_error
        assert error is not None
        raise error

    def commit_pending(self, puts: Sequence[PendingPut], chunk_size: int | None = None) -> list[Any]:
        """Commit written datasets through this Butler's commit combiner: per item the ref or the exception.

        Concurrent callers (threads) share registry commits; see
        :class:`objbutler.group_commit.CommitCombiner` and
        :func:`objbutler.group_commit.commit_group` for what each item gets.
        """
        return self.combiner.submit(puts, chunk_size)

    def _discard(self, key: str, fmt: str) -> None:
        """Delete the data of a put that did not commit (best effort: a leftover is an orphan for vacuum)."""
        with contextlib.suppress(ObjButlerError, OSError):
            delete_dataset(self.store, key, fmt)

    # -- provenance --------------------------------------------------------------

    @contextlib.contextmanager
    def activity(self, name: str, config: Mapping[str, Any] | None = None, *,
                 software: Mapping[str, str] | None = None) -> Iterator[Activity]:
        """Stamp an :class:`~objbutler.provenance.Activity` on every put through this Butler in the block.

        Examples
        --------
        >>> with butler.activity("make_coadd", config={"clip": 3.0}) as act:  # doctest: +SKIP
        ...     butler.put(coadd, "deepCoadd", {"tract": 1}, run="coadds", inputs=calexps)
        """
        activity = Activity(name, dict(config or {}), dict(software or {}))
        with activity_scope(self, activity):
            yield activity

    def provenance(self, ref_or_type: DatasetRef | str, data_id: Mapping[str, Any] | None = None,
                   run: str | None = None, *, depth: int | None = None,
                   repositories: Iterable[Butler] = (),
                   resolver: Callable[[str], Butler] | None = None) -> LineageGraph:
        """The upstream lineage of a dataset (inputs, recursively, across repositories).

        ``depth`` limits the generations followed (None: all); ``repositories``
        supplies Butlers for other repositories' URIs and ``resolver`` opens any
        other (default: from the environment alone, never with this Butler's
        credentials; see :func:`objbutler.provenance.walk_upstream`).
        """
        return walk_upstream(self, self._resolve(ref_or_type, data_id, run), depth, repositories, resolver)

    def descendants(self, ref_or_type: DatasetRef | str, data_id: Mapping[str, Any] | None = None,
                    run: str | None = None, *, depth: int | None = None) -> LineageGraph:
        """Datasets in this repository made from a dataset, recursively (one registry scan)."""
        ref = ref_or_type if isinstance(ref_or_type, DatasetRef) else self._resolve(ref_or_type, data_id, run)
        return walk_downstream(self, ref, depth)

    def ingest_refs(self, refs: Sequence[DatasetRef], *, verify_checksums: bool = False) -> list[DatasetRef]:
        """Commit datasets whose data is already in place under each ``ref.key``, keeping their ids.

        What :func:`objbutler.clone.clone` uses: it writes a dataset's objects
        under the same key as in the source, then commits the same refs here.
        A ref already committed with the same id is skipped (a rerun after an
        interruption commits only what is missing); the new ones go in one
        commit. The caller owns the data: if this raises (except
        CommitOutcomeUnknownError), it deletes what it wrote, so the ingest stays atomic.

        Parameters
        ----------
        refs : sequence of DatasetRef
            Complete refs (id, key, size, checksum, provenance), e.g. from another repository.
        verify_checksums : bool
            Also read the data back and compare checksums (sizes are always checked).

        Returns
        -------
        list of DatasetRef
            The refs as this repository holds them, in order.

        Raises
        ------
        ConflictError
            Another dataset holds a data ID in its run, or a dataset type disagrees.
        FormatError
            A dataset's data is missing, has the wrong size or (when verified) checksum.
        InvalidKeyError
            A bad dataset type name, data ID, run, format or key.
        """
        from objbutler.integrity import dataset_problem

        state = self.registry.refresh()
        types: dict[str, DatasetType] = {}
        kinds: dict[str, str] = {}
        out: list[DatasetRef] = []
        new: dict[tuple[str, str, str], DatasetRef] = {}
        for given in refs:
            ref = dataclasses.replace(given, data_id=validate_data_id(given.data_id), repository=self.uri)
            validate_dataset_type_name(ref.dataset_type)
            validate_run(ref.run)
            if ref.format not in FORMATS or not validate_key(ref.key).startswith("data/"):
                raise InvalidKeyError(f"dataset {ref.id}: format {ref.format!r} or key {ref.key!r} is not ingestible")
            holder = state.find_unique(ref.unique_key) or new.get(ref.unique_key)
            if holder is not None:
                if holder.id != ref.id:
                    raise ConflictError(f"{ref.dataset_type} {ref.data_id} already exists in run {ref.run!r} "
                                        f"(dataset {holder.id})")
                out.append(holder)
                continue
            dataset_type = DatasetType(ref.dataset_type, tuple(ref.data_id), FORMATS[ref.format])
            types.setdefault(ref.dataset_type, dataset_type).check_compatible(dataset_type)
            for name, kind in dimension_kinds(ref.data_id).items():
                if kinds.setdefault(name, kind) != kind:
                    raise ConflictError(f"data ID key {name!r} holds both int and str values in this ingest")
            problem = dataset_problem(self, ref, verify_checksums) or signature_problem(self.store, ref.key, ref.format)
            if problem:
                raise FormatError(f"cannot ingest {ref.dataset_type} {ref.data_id} ({ref.key}): {problem}")
            new[ref.unique_key] = ref
            out.append(ref)
        if new:
            with self.combiner.exclusive():  # all or nothing, and never racing this process's group commits
                self.registry.commit(list(types.values()), kinds, list(new.values()))
        return out

    # -- finding ---------------------------------------------------------------

    def query(
        self,
        dataset_type: str | None = None,
        where: Mapping[str, Any] | None = None,
        run: str | None = None,
        *,
        contains: Any = None,
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
        contains : astropy.coordinates.SkyCoord, optional
            One sky position: only images whose footprint contains it, in
            observation-time order (see :meth:`find_images`).

        Returns
        -------
        list of DatasetRef
        """
        state = self.registry.refresh()
        if contains is None:
            return state.query(dataset_type, where, run)
        from objbutler.sky.query import find_images

        if not getattr(contains, "isscalar", False):
            raise InvalidKeyError("contains= takes one sky position (a scalar SkyCoord); use find_images for many")
        return find_images(state, contains, dataset_type, run, where)[0]

    def find_images(
        self,
        positions: Any,
        dataset_type: str | None = None,
        run: str | None = None,
        where: Mapping[str, Any] | None = None,
        time: Any = None,
    ) -> list[list[DatasetRef]]:
        """For each sky position, the images whose footprint contains it, from the registry alone.

        Vectorized over positions: the registry's sky index (built once per
        registry state, see :mod:`objbutler.sky.index`) finds candidates, an
        exact point-in-polygon test decides. No image is read.

        Parameters
        ----------
        positions : astropy.coordinates.SkyCoord
            One position or an array of them (any celestial frame).
        dataset_type, run, where
            As for :meth:`query`.
        time : (start, stop), optional
            Only images observed in ``start <= t < stop``: MJDs, ISO strings or
            astropy Times (None for an open end). Images without a recorded time
            are then left out.

        Returns
        -------
        list of list of DatasetRef
            One list per position (one list for a scalar), ordered by
            observation time (images without one last, in registry order).
            Images put before footprints were recorded appear once
            ``objbutler reindex`` has given them one.
        """
        from objbutler.sky.query import find_images

        return find_images(self.registry.refresh(), positions, dataset_type, run, where, time)

    def cutouts_at(
        self,
        positions: Any,
        size: Any,
        dataset_type: str | None = None,
        run: str | None = None,
        where: Mapping[str, Any] | None = None,
        time: Any = None,
        *,
        mode: ClipMode = "trim",
        fill_value: float = np.nan,
        max_images_in_flight: int | None = None,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> list[list[tuple[DatasetRef, Cutout]]]:
        """Stamps of every image holding each position: object histories and catalogue cutouts.

        Finds the images as :meth:`find_images` does, groups the positions by
        image, and makes one vectorized cutout per image with the WCS and pixel
        layout the registry recorded (no header read: a stamp from a plain FITS
        image objbutler wrote costs one range request), every image in one pool
        bounded by the store's concurrency.

        Parameters
        ----------
        positions : astropy.coordinates.SkyCoord
            One position or many.
        size : int, (ny, nx) or Quantity
            Stamp size in pixels, or an angle (converted per image).
        dataset_type, run, where, time
            As for :meth:`find_images`.
        mode : {"trim", "partial", "strict"}
            Clipping, as Cutout2D. A position whose box the mode refuses gets
            no stamp from that image (listed in the result's ``skipped``).
        fill_value : float
            For pixels outside the image in ``partial`` mode.
        max_images_in_flight : int, optional
            Images read at once (default: the store's concurrency, 16 for S3 and Swift).
        on_error : {"raise", "skip"}
            What an image that cannot be read does: raise, or be listed in ``skipped``.

        Returns
        -------
        list of list of (DatasetRef, Cutout)
            Per position, in observation-time order. Each Cutout knows its
            ``ref``, its ``input_position_original``/``position_original``
            (pixels, as Cutout2D's) and ``slices_original``;
            ``result.skipped`` lists the (position, image) pairs without a stamp.
        """
        from objbutler.sky.query import cutouts_at

        return cutouts_at(self.store, self.registry.refresh(), positions, size, dataset_type, run, where, time,
                          mode, fill_value, max_images_in_flight, on_error, read=self.read_image_cutouts)

    def find(self, dataset_type: str, data_id: Mapping[str, Any], run: str | None = None) -> DatasetRef:
        """The one dataset of this type and data ID (in ``run``, or in the only run that has it).

        Raises
        ------
        NotFoundError
            If there is none.
        AmbiguousRunError
            If ``run`` is None and several runs hold it (an InvalidKeyError).
        """
        clean_id = validate_data_id(data_id)
        state = self.registry.refresh()
        if dataset_type not in state.dataset_types:
            raise NotFoundError(f"unknown dataset type {dataset_type!r} in {self.uri}; registered: "
                                f"{sorted(state.dataset_types) or 'none yet'}")
        keys = state.dataset_types[dataset_type].dimensions
        if sorted(clean_id) != sorted(keys):
            missing, extra = sorted(set(keys) - set(clean_id)), sorted(set(clean_id) - set(keys))
            raise InvalidKeyError(f"{dataset_type} data IDs have keys {sorted(keys)}; this one "
                                  + (f"lacks {missing}" if missing else "") + (" and " if missing and extra else "")
                                  + (f"has unknown {extra}" if extra else ""))
        for key, value in clean_id.items():
            check_condition_kind(key, value, state.dimensions[key])
        matches = [r for r in state.query(dataset_type, clean_id, run) if r.data_id == clean_id]
        if not matches:
            where = f" in run {run!r}" if run else ""
            raise NotFoundError(f"no {dataset_type} with data ID {clean_id}{where} in {self.uri}")
        if len(matches) > 1:
            runs = sorted(r.run for r in matches)
            raise AmbiguousRunError(f"{dataset_type} {clean_id} exists in several runs {runs}: pass run=", runs)
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
            run: str | None = None, *, efd: Any = False, verify: bool = True, hdu: int | str | None = None) -> Any:
        """Read a whole dataset, checked against the size and checksum its registry entry recorded.

        Parameters
        ----------
        ref_or_type : DatasetRef or str
            A ref, or a dataset type name (then ``data_id`` and ``run``).
        data_id : mapping, optional
            With a dataset type name.
        run : str, optional
            With a dataset type name; needed when several runs hold the data ID.
        efd : bool, "require" or objbutler.efd.EfdOptions
            Add EFD summary cards for the exposure to the returned image's
            ``meta`` (the stored file is not changed); see :mod:`objbutler.efd`.
        verify : bool, default True
            Check that the bytes read have the recorded size and SHA-256
            checksum (Zarr: over every object of the array). The checksum is
            computed on a second thread while the bytes decode. Measured on
            LocalStack (``benchmarks/verify.py``, a 4096 x 4096 float32 image,
            interleaved): a whole FITS get took 135 ms unverified and 134 ms
            verified, Zarr 752 and 719 ms (ratios 0.99 and 0.96; 1.06 and 0.98 in
            a second run); the hash alone takes 33 ms for the 64 MiB FITS, which
            is what verification adds where the client has no second core free
            (1.18x, client pinned to one core). ``False`` skips the check.
            Cutouts (:meth:`get_cutouts`) read byte ranges and cannot be checked
            against a checksum of the whole object.
        hdu : int, str or None
            For a FITS image with several image HDUs: the one to return (index
            or EXTNAME). By default the first image, as the class it was put
            as (CCDData, NDData) with its unit, mask and uncertainty.

        Returns
        -------
        NDData, dict or Table
            Images come back as NDData (CCDData when put as one) with ``.data``,
            ``.wcs``, ``.meta`` and whatever ``unit``, ``mask`` and ``uncertainty`` were put.

        Raises
        ------
        FormatError
            The stored bytes differ from what was recorded (the message names the
            dataset, its key, the recorded and the actual size or checksum), are
            not of the dataset's format, or declare shapes they cannot hold.
        """
        ref = self._resolve(ref_or_type, data_id, run)
        where = f" (registered in place at {ref.key})" if ref.is_direct else ""
        recorded = Recorded(ref.size, ref.checksum, f"{ref.dataset_type} {ref.data_id} in run {ref.run!r}{where}")
        store, key = self.data_location(ref)
        with _gone_in_place(ref):
            obj = read_dataset(store, key, ref.format, recorded=recorded, verify=verify, hdu=_default_hdu(ref, hdu))
        if efd is not False and efd is not None:
            from objbutler.efd import attach_efd

            attach_efd(self, obj, efd)
        return obj

    def get_cutouts(
        self,
        ref_or_type: DatasetRef | str,
        *args: Any,
        data_id: Mapping[str, Any] | None = None,
        run: str | None = None,
        boxes_or_positions: Any = UNSET,
        size: Any = None,
        mode: ClipMode = "trim",
        fill_value: float = np.nan,
        cost: Any = None,
        hdu: int | str | None = None,
    ) -> list[Cutout]:
        """Cut many postage stamps out of one image with a few coalesced range reads.

        Called as :meth:`get` is, with what to cut after the dataset:
        ``get_cutouts(ref_or_type, data_id=None, run=None, boxes_or_positions, *, size=None, ...)``.
        A ref needs no data ID or run, so ``get_cutouts(ref, boxes)`` reads as it always has: a
        first argument after ``ref_or_type`` that is not a mapping (a data ID) is what to cut.

        Parameters
        ----------
        ref_or_type : DatasetRef or str
            The image: a ref, or a dataset type name with ``data_id`` (and ``run`` when several
            runs hold the data ID).
        data_id : mapping, optional
            With a dataset type name.
        run : str, optional
            With a dataset type name.
        boxes_or_positions : Box, sequence of Box, (x, y) pixel positions, or SkyCoord
            Pixel boxes (half-open, 0-based ``(x0, y0, x1, y1)``); or, with ``size``, stamp centres:
            one ``(x, y)``, a list of them or an ``(N, 2)`` array (0-based pixels, integers at pixel
            centres, as Cutout2D's ``position``), or a SkyCoord (one or many).
        size : int, (ny, nx) or Quantity
            Stamp size for positions: pixels, or an angle (converted with the image's WCS).
            Boxes carry their own size: ``size`` with boxes raises InvalidCutoutError.
        mode : {"trim", "partial", "strict"}
            Clipping, as astropy's Cutout2D.
        fill_value : float
            For pixels outside the image in ``partial`` mode.
        cost : objbutler.ranges.CostModel, optional
            Latency/bandwidth model for planning FITS reads.
        hdu : int, str or None
            FITS: the image HDU to cut (index or EXTNAME); by default the first image.

        Returns
        -------
        list of Cutout
            In request order; always a list, so one Box, one ``(x, y)`` or a scalar SkyCoord gives
            a list of one (where Cutout2D would give the stamp itself). A stamp cut around a
            position knows it (``input_position_original``, ``position_cutout``, ...: Cutout2D's).

        Raises
        ------
        InvalidCutoutError
            A request that cannot be cut as asked (``size`` with boxes, positions without ``size``,
            a box the mode refuses, ...).
        AmbiguousRunError
            A dataset type and data ID held by several runs, and no ``run``.

        Warns
        -----
        DeprecationWarning
            For the old order, a data ID after the boxes: ``get_cutouts(type, boxes, data_id, run)``
            still works; spell it ``get_cutouts(type, data_id, run, boxes)``.
        """
        data_id, run, request = _cutout_arguments(ref_or_type, args, data_id, run, boxes_or_positions)
        ref = self._resolve(ref_or_type, data_id, run)
        hdu = _default_hdu(ref, hdu)
        boxes, wcs, positions = self._boxes_for(ref, request, size, hdu)
        stamps = self.read_image_cutouts(ref, boxes, mode, fill_value, cost=cost, parent_wcs=wcs, hdu=hdu)
        if positions is not None:
            for stamp, (x, y) in zip(stamps, positions.tolist(), strict=True):
                stamp.input_position_original = (x, y)
        return stamps

    def read_image_cutouts(self, ref: DatasetRef, boxes: Sequence[Box] | np.ndarray, mode: ClipMode = "trim",
                           fill_value: float = np.nan, *, cost: Any = None, parent_wcs: Any = None,
                           hdu: int | str | None = None) -> list[Cutout]:
        """Stamps at pixel boxes of one image dataset, wherever its data is (the one reader of image pixels).

        What :meth:`get_cutouts` and :meth:`cutouts_at` use once the boxes are known: data registered in
        place is read where it is (its recorded pixel layout not trusted), an ingested file's HDU is the
        default, and FITS and Zarr take the registry's layout so no header is read when it can be avoided.
        """
        hdu = _default_hdu(ref, hdu)
        wcs = parent_wcs
        store, key = self.data_location(ref)
        if ref.format == "fits":
            from objbutler.formats.fits_cutouts import read_fits_cutouts

            # The layout of data registered in place is not trusted: the object may have been replaced.
            layout = None if ref.is_direct else ref.layout
            with _gone_in_place(ref):
                return read_fits_cutouts(store, key, boxes, mode, fill_value, cost=cost, layout=layout,
                                         object_size=ref.size, parent_wcs=wcs, hdu=hdu)
        if hdu not in (None, 0, "PRIMARY"):
            raise NotSupportedError(f"hdu={hdu!r} picks an HDU of a FITS image; {ref.dataset_type} is {ref.format}")
        if ref.format == "zarr":
            from objbutler.formats.zarr_array import read_zarr_cutouts
            from objbutler.formats.zarr_layout import layout_metadata

            known = None if ref.is_direct else layout_metadata(ref.layout, key, ref.size)
            if wcs is None and known is not None:
                wcs = _registry_wcs(ref)  # else zarr.json is read when a stamp's WCS is first asked for
            with _gone_in_place(ref):
                return read_zarr_cutouts(store, key, boxes, mode, fill_value, size=ref.size, known=known,
                                         parent_wcs=wcs)
        raise NotSupportedError(f"cutouts need an image dataset; {ref.dataset_type} is {ref.format}")

    def get_cutouts_many(
        self,
        requests: Mapping[DatasetRef, Any],
        *,
        mode: ClipMode = "trim",
        fill_value: float = np.nan,
        size: Any = None,
        cost: Any = None,
        max_images_in_flight: int = 4,
    ) -> dict[DatasetRef, list[Cutout]]:
        """Cut stamps out of many images, running the per-image plans concurrently.

        Parameters
        ----------
        requests : mapping of DatasetRef to boxes or positions
            Per image, what :meth:`get_cutouts` takes as ``boxes_or_positions``.
        mode, fill_value, size, cost
            As for :meth:`get_cutouts`.
        max_images_in_flight : int
            Images processed at once (each already reads its blocks concurrently); all of it
            within the store's concurrency budget (its ``max_concurrency``).

        Returns
        -------
        dict of DatasetRef to list of Cutout
            Stamps per image, each list in request order.
        """
        from objbutler.stores import budget_of, run_concurrently

        refs = list(requests)
        stamps = run_concurrently(
            lambda ref: self.get_cutouts(ref, requests[ref], mode=mode, fill_value=fill_value, size=size, cost=cost),
            refs,
            max_images_in_flight,
            budget_of(self.store),
        )
        return dict(zip(refs, stamps, strict=True))

    def get_wcs(self, ref_or_type: DatasetRef | str, data_id: Mapping[str, Any] | None = None,
                run: str | None = None, *, hdu: int | str | None = None) -> Any:
        """An image's WCS, read from its header alone (no pixels), or None if it has none.

        Arguments as for :meth:`get`. A Zarr image this repository wrote needs no read at all:
        its WCS comes from the registry's sky record, made from the same header at put.

        Used to turn sky positions into the pixel boxes :meth:`get_cutouts` would cut
        (:func:`objbutler.cutouts.boxes_from_skycoords`), e.g. when each position has its own size.
        """
        ref = self._resolve(ref_or_type, data_id, run)
        if FORMATS.get(ref.format) != "image":
            raise NotSupportedError(f"{ref.dataset_type} is {ref.format}, not an image: it has no WCS")
        wcs = self._image_wcs(ref, _default_hdu(ref, hdu))
        return copy.deepcopy(wcs) if wcs is not None and ref.format == "zarr" else wcs  # the caller's own copy

    def _boxes_for(self, ref: DatasetRef, request: Any, size: Any,
                   hdu: int | str | None = None) -> tuple[list[Box], Any, np.ndarray | None]:
        """Pixel boxes; the image's WCS when it had to be read to make them; the ``(N, 2)`` centres asked for."""
        from astropy.coordinates import SkyCoord

        if size is None:
            if isinstance(request, SkyCoord):
                raise InvalidCutoutError("cutouts at sky positions need size= (pixels or an angle)")
            return as_boxes(request), None, None
        sky = isinstance(request, SkyCoord)
        xy = None if sky else pixel_positions(request)  # refuses boxes before any read
        wcs = self._image_wcs(ref, hdu) if sky or is_angular(size) else None
        if wcs is None and (sky or is_angular(size)):
            raise NotSupportedError(f"{ref.dataset_type} {ref.data_id} has no WCS: use pixel boxes or positions "
                                    "with a size in pixels")
        if xy is None:
            xy = sky_to_pixels(request, wcs)
        return boxes_at(xy, size_in_pixels(size, wcs)), wcs, xy

    def _image_wcs(self, ref: DatasetRef, hdu: int | str | None = None) -> Any:
        store, key = self.data_location(ref)
        with _gone_in_place(ref):
            if ref.format == "fits":
                from objbutler.formats.fits_cutouts import read_fits_wcs

                return read_fits_wcs(store, key, hdu=hdu)
            from objbutler.formats.zarr_array import read_zarr_wcs

            return _registry_wcs(ref) or read_zarr_wcs(store, key)

    # -- data registered in place ------------------------------------------------

    def data_location(self, ref: DatasetRef) -> tuple[Store, str]:
        """The store and key that hold a dataset's data.

        The repository's store and ``ref.key``, or, for a dataset registered in
        place (``ref.is_direct``), a store for the bucket its absolute ``key``
        names, on the repository's endpoint with the repository's options
        (:func:`~objbutler.stores.locations.sibling_store`), and the key in it.

        Raises
        ------
        FormatError
            A direct record whose key is not an absolute URI.
        NotSupportedError
            A direct record on another scheme than the repository.
        OfflineError
            The Butler is offline: data registered in place is never cached.
        """
        if not ref.is_direct:
            return self.store, ref.key
        location = direct_location(ref)
        return self.location_store(location), location.key

    def location_store(self, location: Location) -> Store:
        """A store (kept for this Butler's life) for the bucket of a location on the repository's endpoint."""
        if isinstance(self.store, CachingStore) and self.store.offline:
            raise OfflineError(f"{location} is registered in place, outside the repository, and is never cached: "
                               "it cannot be read offline")
        with self._location_lock:
            found = self._location_stores.get((location.scheme, location.container))
            if found is None:
                found = sibling_store(self.store, location)
                self._location_stores[(location.scheme, location.container)] = found
            return found


def _cutout_arguments(ref_or_type: DatasetRef | str, args: tuple[Any, ...], data_id: Mapping[str, Any] | None,
                      run: str | None, request: Any) -> tuple[Mapping[str, Any] | None, str | None, Any]:
    """``(data_id, run, boxes_or_positions)`` of a :meth:`Butler.get_cutouts` call, in whichever spelling it came.

    New order (get's): ``(ref_or_type, data_id, run, boxes_or_positions)``; a first positional
    argument that is not a mapping is what to cut (``get_cutouts(ref, boxes)``); data ID and
    run positional after it is the old order, still served with a DeprecationWarning.
    """
    given = list(args)
    if len(given) > 3:
        raise TypeError(f"get_cutouts() takes ref_or_type and at most 3 more positional arguments "
                        f"(data_id, run, boxes_or_positions), {len(given)} were given")

    def take(name: str, current: Any, unset: Any, value: Any) -> Any:
        if current is not unset:
            raise TypeError(f"get_cutouts() got multiple values for {name}")
        return value

    if given and given[0] is not None and not isinstance(given[0], Mapping):
        request = take("boxes_or_positions", request, UNSET, given.pop(0))
        old_order = bool(given)
        if given:
            data_id = take("data_id", data_id, None, given.pop(0))
        if given:
            run = take("run", run, None, given.pop(0))
        if old_order:
            what = ref_or_type.dataset_type if isinstance(ref_or_type, DatasetRef) else ref_or_type
            warnings.warn(
                f"get_cutouts(ref_or_type, boxes, data_id, run) is deprecated: name the dataset first, as "
                f"get() does: get_cutouts({what!r}, data_id, run, boxes) (or data_id=, run= and "
                "boxes_or_positions= by keyword)",
                DeprecationWarning,
                stacklevel=3,
            )
    else:
        if given:
            data_id = take("data_id", data_id, None, given.pop(0))
        if given:
            run = take("run", run, None, given.pop(0))
        if given:
            request = take("boxes_or_positions", request, UNSET, given.pop(0))
    if data_id is not None and not isinstance(data_id, Mapping):
        raise TypeError(f"data_id must be a mapping, got {type(data_id).__name__}")
    if run is not None and not isinstance(run, str):
        raise TypeError(f"run must be a str, got {type(run).__name__}: the order is get_cutouts(ref_or_type, "
                        "data_id, run, boxes_or_positions)")
    if request is UNSET or request is None:
        raise InvalidCutoutError("get_cutouts() needs what to cut: get_cutouts(ref, boxes) or "
                        "get_cutouts(dataset_type, data_id, run, boxes_or_positions, size=...)")
    return data_id, run, request


def direct_location(ref: DatasetRef) -> Location:
    """The absolute location of a dataset registered in place (FormatError for a malformed record)."""
    try:
        if "://" not in ref.key:
            raise InvalidKeyError("not an absolute URI")
        location = parse_location(ref.key)
        validate_key(location.key)
    except ObjButlerError as exc:
        raise FormatError(f"{ref.dataset_type} {ref.data_id} in run {ref.run!r} is registered in place at "
                          f"{ref.key!r}, which is not a usable location ({exc})") from None
    return location


@contextlib.contextmanager
def _gone_in_place(ref: DatasetRef) -> Iterator[None]:
    """Say so when data registered in place is missing: it was deleted outside objbutler."""
    try:
        yield
    except NotFoundError as exc:
        if not ref.is_direct:
            raise
        raise NotFoundError(f"{ref.dataset_type} {ref.data_id} in run {ref.run!r} is registered in place at "
                            f"{ref.key}, which is gone: it was deleted outside objbutler ({exc}); "
                            "objbutler fsck lists such datasets") from exc


def _registry_wcs(ref: DatasetRef) -> Any:
    """A Zarr image's WCS from its registry sky record (no ``zarr.json`` read), or None to read it.

    Only for data this repository wrote (the sky record was made from the same header at put); data
    registered in place may have been replaced since. The WCS object is shared: callers only read it.
    """
    if ref.format != "zarr" or ref.is_direct or ref.sky is None or ref.layout is None:
        return None
    from objbutler.sky.footprint import sky_wcs

    return sky_wcs(ref.sky)


def _default_hdu(ref: DatasetRef, hdu: int | str | None) -> int | str | None:
    """``hdu``, or the HDU a FITS file ingested as it is was registered as (from its layout)."""
    if hdu is not None or ref.format != "fits" or not isinstance(ref.layout, dict):
        return hdu
    index = ref.layout.get("hdu")
    return index if type(index) is int and index > 0 else None


def _reopen(uri: str, store: Store | None, store_options: dict[str, Any], cache: Any = (None, None)) -> Butler:
    return Butler(uri, store=store, cache=cache[0], offline=cache[1], **store_options)


def _raise_if_no_bucket(store: Store) -> None:
    """Raise BucketNotFoundError if the store's bucket (container) is missing; else return.

    A Swift GET of a missing object answers the same 404 whether the container is
    there or not; a listing tells them apart. Asked only once the repository is known to be missing.
    """
    try:
        next(iter(store.list(CONFIG_KEY)), None)
    except BucketNotFoundError:
        raise
    except ObjButlerError:
        return


def _has_config(store: Store) -> bool:
    """Whether the store already holds a repository config."""
    try:
        store.head(CONFIG_KEY)
    except NotFoundError:
        return False
    return True


def _choose_protocol(store: Store, allow_no_atomic_create: bool, wanted: str | None = None) -> str:
    caps = store.capabilities
    if not caps.atomic_create or wanted == "timestamped":
        if not caps.server_timestamps:
            raise NotSupportedError(f"{store.uri} has neither an atomic create nor server timestamps")
        return "timestamped"
    probe = probe_conditional_writes(store)
    if probe.create_enforced and (probe.match_enforced or not caps.compare_and_swap):
        return wanted or "claimed"
    if wanted is not None:
        raise NotSupportedError(f"{store.uri} does not enforce an atomic create: the {wanted} commit protocol "
                                "cannot run on it")
    if allow_no_atomic_create:
        return "timestamped"
    if not probe.create_enforced:
        problem = "accepted a second create-only write of one key: it ignores If-None-Match"
    else:  # e.g. Swift's s3api: checks If-None-Match one writer at a time, answers 501 to If-Match
        problem = ("claims conditional writes but does not support If-Match: a gateway whose create-only "
                   "writes are unlikely to be atomic under concurrent writers")
    raise NotSupportedError(
        f"{store.uri} {problem}, so commits could be lost. Use a store that enforces conditional writes, or "
        "pass allow_no_atomic_create=True to use the slower timestamped commit protocol."
    )
