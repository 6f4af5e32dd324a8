"""What the network stores (S3, Swift) share: the request plumbing and the template methods.

:class:`RemoteStore` holds the logic that does not depend on the wire
protocol: keys joined to the store's root, every request run under
:func:`~objbutler.stores._retry.call_with_retries` with the backend's errors
translated first, concurrent range and multi-object reads, the check that
recognises a conditional write whose answer was lost, listings kept inside
the root, and pickling as constructor arguments. A backend subclasses it and
supplies the primitives: one attempt of a request on a client
(:meth:`RemoteStore._attempt`), the native error translation
(:meth:`RemoteStore._translate`), the native calls that read and write one
object (:meth:`RemoteStore._get_raw`, :meth:`RemoteStore._get_range_raw`,
:meth:`RemoteStore._head_raw`, :meth:`RemoteStore._put_raw`) and the paging
of the server's listing (:meth:`RemoteStore._server_listing`).

Deadlines
---------
A read can stall in two ways: the server stops sending, or it keeps sending a
byte now and then. The first is the client's per-read timeout (botocore's
``read_timeout``, swiftclient's ``timeout``: the longest wait for any byte).
The second is not: a body that trickles in never times out. So every read
call (``get``, ``get_ranges``, ``get_many``, ``head``) also has an overall
deadline, ``read_deadline`` seconds from the call (retries included). While a
body is read (:func:`read_body`, one ``read`` into one buffer, no copies), a
process-wide watchdog thread holds its deadline and shuts the connection's
socket down when it passes, which ends the read at once; no retry starts
after the deadline. A call therefore ends within ``read_deadline`` (plus, if
the server stalls before its answer's headers, one per-read timeout), with a
:class:`~objbutler.errors.TransientStoreError` if it did not finish.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import hashlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal, Self, TypeVar

import urllib3.exceptions

from objbutler.errors import (
    AlreadyExistsError,
    ObjButlerError,
    PreconditionFailedError,
    RangeNotSatisfiableError,
    TransientStoreError,
)
from objbutler.stores._base import ByteRange, ObjectMeta, RangeLike, normalize_ranges, validate_key, validate_prefix
from objbutler.stores._concurrency import ConcurrencyBudget, run_concurrently
from objbutler.stores._retry import RetryPolicy, call_with_retries

__all__ = [
    "DEFAULT_READ_DEADLINE",
    "MD5_CHECK_MAX_BYTES",
    "check_body_md5",
    "NETWORK_ERRORS",
    "Action",
    "RemoteStore",
    "md5_hex",
    "range_header",
    "read_body",
]

T = TypeVar("T")

Action = Literal["read", "write", "create", "match", "delete", "list", "bucket", "container", "auth"]
"""What a request was for; decides what a 404/409/412 answer means."""

NETWORK_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
"""Failures of the connection under either client (resets, timeouts, broken reads): worth a retry."""


DEFAULT_READ_DEADLINE = 300.0
"""Seconds one read call may take in all (retries included), unless the store is told otherwise."""


class _Watchdog:
    """One daemon thread per process that runs an abort callback when a read passes its deadline.

    :meth:`arm` registers ``(deadline, abort)``, :meth:`disarm` removes it;
    callbacks run under the lock, so once :meth:`disarm` returns its callback
    is not running and never will.
    """

    def __init__(self) -> None:
        self._ids = itertools.count()
        self._reset()

    def _reset(self) -> None:
        """Start afresh: at creation, and in a forked child (whose copy of the lock may be held, and which
        has no watchdog thread)."""
        self._cond = threading.Condition()
        self._armed: dict[int, Callable[[], None]] = {}
        self._heap: list[tuple[float, int]] = []
        self._pid: int | None = None

    def arm(self, until: float, abort: Callable[[], None]) -> int:
        """Run ``abort()`` at the monotonic time ``until`` unless disarmed first; returns the token."""
        with self._cond:
            if self._pid != os.getpid():  # first use (or a fork the hook missed): start the thread
                self._armed.clear()
                self._heap.clear()
                threading.Thread(target=self._run, name="objbutler-read-deadlines", daemon=True).start()
                self._pid = os.getpid()
            while self._heap and self._heap[0][1] not in self._armed:  # finished reads, roughly in order
                heapq.heappop(self._heap)
            token = next(self._ids)
            self._armed[token] = abort
            heapq.heappush(self._heap, (until, token))
            if self._heap[0][1] == token:
                self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        """Forget a deadline (its callback has run, or never will)."""
        with self._cond:
            self._armed.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][0] <= now or self._heap[0][1] not in self._armed):
                    _, token = heapq.heappop(self._heap)
                    abort = self._armed.pop(token, None)
                    if abort is not None:
                        with contextlib.suppress(Exception):
                            abort()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG._reset)
_PIECE = 1 << 20  # bytes per read when a body is read piecewise (no socket to shut down)


def _socket_of(stream: Any) -> socket.socket | None:
    """The socket under a urllib3 response (``HTTPResponse.connection.sock``), if it has one."""
    sock = getattr(getattr(stream, "connection", None), "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def read_body(stream: Any, until: float | None, what: str, length: int | str | None = None) -> bytes:
    """Read a response body to its end, giving up at a deadline.

    The body is read with one ``stream.read()`` (one buffer, no copy) while
    the process's watchdog holds the deadline: when it passes, the watchdog
    shuts the connection's socket down, which ends a read that is waiting for
    bytes at once. A stream without a reachable socket is read one socket read
    at a time (``read1``) with the clock checked in between.

    Parameters
    ----------
    stream : object
        The response's urllib3 ``HTTPResponse`` (or anything with ``read``).
    until : float or None
        A :func:`time.monotonic` time after which the read is abandoned (None: never).
    what : str
        Names the request, for the error.
    length : int or str, optional
        The ``Content-Length`` announced: a shorter body is a broken connection.

    Returns
    -------
    bytes
        The whole body.

    Raises
    ------
    TransientStoreError
        When the deadline passes before the body is complete.
    ConnectionError
        When the body ends before ``length`` bytes (the caller translates it).
    """
    sock = _socket_of(stream) if until is not None else None
    if until is None:
        data: bytes = stream.read()
    elif sock is not None:
        fired: list[bool] = []

        def abort() -> None:
            fired.append(True)
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: also under TLS

        token = _WATCHDOG.arm(until, abort)
        try:
            data = stream.read()
        except Exception:
            if fired:
                raise TransientStoreError(f"{what}: the answer was not complete by the read deadline") from None
            raise
        finally:
            _WATCHDOG.disarm(token)
    else:
        read = getattr(stream, "read1", None) or stream.read
        parts = []
        while True:
            if time.monotonic() > until:
                raise TransientStoreError(f"{what}: the answer was not complete by the read deadline")
            part = read(_PIECE)
            if not part:
                break
            parts.append(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
    if length is not None and int(length) != len(data):
        raise ConnectionError(f"{what}: short read, {len(data)} of {length} bytes")
    return data


def md5_hex(data: bytes) -> str:
    """Return the hex MD5 of ``data``: the etag S3 and Swift give an object written by one ``PUT``.

    Parameters
    ----------
    data : bytes
        The object's content.

    Returns
    -------
    str
        32 lowercase hex digits.
    """
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


MD5_CHECK_MAX_BYTES = 16 << 20
"""Whole-object reads up to this size are checked against the MD5 etag the server sent (about 25 ms at most)."""


def check_body_md5(data: bytes, etag: str | None, what: str) -> None:
    """Raise TransientStoreError if a whole object's bytes do not match its plain-MD5 etag.

    A body corrupted on the way (a broken proxy, a flaky NIC) would otherwise
    be decoded as if it were the object: a registry commit with a flipped
    digit names another data ID. The etag of an object written by one ``PUT``
    is the MD5 of its bytes on S3 and Swift; an etag that is not 32 hex digits
    (a multipart upload, a large-object manifest) cannot be checked and is
    skipped, and so are bodies larger than :data:`MD5_CHECK_MAX_BYTES` (the
    Butler checks a dataset's SHA-256 itself). Raised as transient, so the
    read is retried.

    Parameters
    ----------
    data : bytes
        The body received.
    etag : str or None
        The etag the server sent with it (quotes allowed).
    what : str
        The object, for the message.
    """
    digest = (etag or "").strip('"').lower()
    if len(digest) != 32 or len(data) > MD5_CHECK_MAX_BYTES or any(c not in "0123456789abcdef" for c in digest):
        return
    if md5_hex(data) != digest:
        raise TransientStoreError(f"the body of {what} does not match its MD5 etag (corrupted in transit); retrying")


def range_header(byte_range: ByteRange) -> str:
    """Return the HTTP ``Range`` value of a non-empty half-open range (HTTP's bounds are inclusive).

    Parameters
    ----------
    byte_range : ByteRange
        The range, ``length >= 1``.

    Returns
    -------
    str
        ``"bytes=start-last"``.
    """
    return f"bytes={byte_range.start}-{byte_range.stop - 1}"


class RemoteStore(abc.ABC):
    """Base of the stores that talk to an object server: ``scheme://container/prefix``.

    Parameters
    ----------
    container : str
        The bucket or container the store lives in.
    prefix : str
        Root of the store inside it (leading and trailing ``/`` are dropped).
    max_concurrency : int
        The store's concurrency budget: at most this many requests in flight and
        worker threads, shared by all calls on the store
        (:class:`~objbutler.stores._concurrency.ConcurrencyBudget`).
    retry : RetryPolicy
        How transient failures are retried.
    read_deadline : float or None
        Seconds one read call may take in all, retries included (see the
        module docstring); None for no bound beyond the client's per-read timeout.

    Notes
    -----
    A subclass sets ``_scheme`` and ``_native_errors`` and implements the
    abstract methods; the writes whose promises differ per backend (``put``,
    ``put_if_absent``, ``delete``, and ``put_if_match`` only where the
    backend enforces ``If-Match``) are implemented there, on top of
    :meth:`_put` and :meth:`_call`.
    """

    _scheme: ClassVar[str]
    """The URI scheme (``"s3"``, ``"swift"``)."""
    _native_errors: ClassVar[tuple[type[BaseException], ...]]
    """What the backend's client raises; these, urllib3's errors and OSError are translated, nothing else."""

    def __init__(self, container: str, prefix: str, max_concurrency: int, retry: RetryPolicy,
                 read_deadline: float | None = DEFAULT_READ_DEADLINE) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if read_deadline is not None and not read_deadline > 0:
            raise ValueError(f"read_deadline must be > 0 seconds or None, got {read_deadline}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self._container = container
        self.prefix = prefix
        self.max_concurrency = max_concurrency
        self.budget = ConcurrencyBudget(max_concurrency, f"objbutler-{self._scheme}")
        """Worker threads and request slots shared by every call on this store (``max_concurrency`` of each)."""
        self.retry = retry
        self.read_deadline = read_deadline
        self._root = f"{prefix}/" if prefix else ""

    # -- identity ----------------------------------------------------------------------

    @abc.abstractmethod
    def _options(self) -> dict[str, Any]:
        """Return the constructor's keyword arguments but ``max_concurrency``, ``retry`` and ``read_deadline``."""

    def __reduce__(self) -> tuple[Callable[..., Self], tuple[str, str]]:
        constructor = functools.partial(
            type(self), max_concurrency=self.max_concurrency, retry=self.retry, read_deadline=self.read_deadline,
            **self._options(),
        )
        return (constructor, (self._container, self.prefix))

    def sibling(self, container: str, prefix: str = "") -> Self:
        """A store in another bucket or container of the same endpoint, with the same credentials and options.

        What a repository uses to reach data registered in place elsewhere on its endpoint
        (:mod:`objbutler.stores.locations`): the endpoint and credentials are this store's,
        never anyone else's, and the bucket is never created.

        Parameters
        ----------
        container : str
            The bucket or container.
        prefix : str, optional
            Root of the new store inside it.

        Returns
        -------
        RemoteStore
            A new store of the same class.
        """
        options = {k: v for k, v in self._options().items() if k not in ("create_bucket", "create_container")}
        return type(self)(container, prefix, max_concurrency=self.max_concurrency, retry=self.retry,
                          read_deadline=self.read_deadline, **options)

    @property
    def uri(self) -> str:
        """``scheme://container/prefix``, which :func:`~objbutler.stores.open_store` reopens."""
        base = f"{self._scheme}://{self._container}"
        return f"{base}/{self.prefix}" if self.prefix else base

    def _describe(self, key: str | None) -> str:
        """Name a key (or, for None, the store) in an error message."""
        return f"{key!r} in {self.uri}" if key is not None else self.uri

    def _full(self, key: str) -> str:
        return self._root + validate_key(key)

    # -- request plumbing ---------------------------------------------------------------

    @abc.abstractmethod
    def _translate(self, exc: BaseException, key: str | None, action: Action) -> ObjButlerError:
        """Turn what the client raised into the objbutler error it means.

        Parameters
        ----------
        exc : BaseException
            One of ``_native_errors``, a urllib3 error or an OSError.
        key : str or None
            The key (relative to the store) the request was about.
        action : str
            What the request was for.

        Returns
        -------
        ObjButlerError
            The error to raise (``TransientStoreError`` for what deserves a retry).
        """

    @abc.abstractmethod
    def _attempt(self, request: Callable[[Any], T], key: str | None, action: Action) -> T:
        """Run ``request(client)`` once on a client of this store, translating what it raises."""

    @abc.abstractmethod
    def _ready(self) -> None:
        """Do the store's one-time set-up (its client, its bucket or container) before a request's retries."""

    def _translated(self, request: Callable[[], T], key: str | None, action: Action) -> T:
        """Run ``request()``, turning what the client raises into objbutler errors."""
        caught: tuple[type[BaseException], ...] = (*self._native_errors, urllib3.exceptions.HTTPError, OSError)
        try:
            return request()
        except caught as exc:
            raise self._translate(exc, key, action) from exc

    def _retried(self, request: Callable[[], T], key: str | None, action: Action) -> T:
        """Run ``request()`` (which brings its own client) with translation and retries."""
        return call_with_retries(lambda: self._translated(request, key, action), self.retry)

    def _budgeted(self, request: Callable[[Any], T], key: str | None, action: Action) -> T:
        """One :meth:`_attempt` holding one of the store's request slots (at most ``max_concurrency`` in flight)."""
        with self.budget.request():
            return self._attempt(request, key, action)

    def _call(self, request: Callable[[Any], T], key: str | None, action: Action, until: float | None = None) -> T:
        """Run ``request(client)`` with translation and retries; none starts after ``until`` (monotonic)."""
        self._ready()
        if until is None:
            return call_with_retries(lambda: self._budgeted(request, key, action), self.retry)

        def attempt() -> T:
            if time.monotonic() > until:
                raise TransientStoreError(f"{self._scheme} {action} of {self._describe(key)}: "
                                          f"{self._deadline_note()} passed before the request could be sent")
            return self._budgeted(request, key, action)

        return call_with_retries(attempt, self.retry, deadline=until)

    def _until(self) -> float | None:
        """The monotonic time by which a read call starting now must end."""
        return None if self.read_deadline is None else time.monotonic() + self.read_deadline

    def _deadline_note(self) -> str:
        return f"the read deadline of {self.read_deadline:g} s (the store's read_deadline option)"

    def _body(self, stream: Any, until: float | None, key: str, length: int | str | None) -> bytes:
        """Read a response body with :func:`read_body`, naming the request and the deadline in the error."""
        try:
            return read_body(stream, until, f"{self._scheme} read of {self._describe(key)}", length)
        except TransientStoreError as exc:
            raise TransientStoreError(f"{exc} ({self._deadline_note()})") from None

    # -- reads ----------------------------------------------------------------------------

    @abc.abstractmethod
    def _get_raw(self, client: Any, key: str, full: str, until: float | None) -> bytes:
        """Read the whole object ``full`` on ``client`` (one native call, no translation).

        The body is read with :meth:`_body`, which gives up at ``until``.
        """

    @abc.abstractmethod
    def _get_range_raw(self, client: Any, key: str, full: str, byte_range: ByteRange, until: float | None) -> bytes:
        """Read one non-empty range of the object ``full`` (a ``Range`` header) on ``client``.

        Must return only the range's bytes, also from a server that ignores
        ``Range`` and sends the whole object; the body is read with :meth:`_body`.
        """

    @abc.abstractmethod
    def _head_raw(self, client: Any, key: str, full: str) -> ObjectMeta:
        """Read the metadata of the object ``full`` (named ``key`` in the answer) on ``client``."""

    def get(self, key: str) -> bytes:
        """Return the whole object.

        Parameters
        ----------
        key : str
            The object's key.

        Returns
        -------
        bytes
            Its content.

        Raises
        ------
        NotFoundError
            If there is no such object (or no such bucket or container).
        TransientStoreError
            If it failed after the retries, or did not finish within ``read_deadline``.
        """
        return self._get(key, self._until())

    def _get(self, key: str, until: float | None) -> bytes:
        full = self._full(key)
        return self._call(lambda client: self._get_raw(client, key, full, until), key, "read", until)

    def head(self, key: str) -> ObjectMeta:
        """Return an object's size, etag (without quotes) and server modification time (UTC).

        The time is the backend's most exact one (see its ``_head_raw``).

        Raises
        ------
        NotFoundError
            If the object, or its bucket or container, does not exist.
        """
        full = self._full(key)
        return self._call(lambda client: self._head_raw(client, key, full), key, "read", self._until())

    def _get_range(self, key: str, full: str, byte_range: ByteRange, until: float | None) -> bytes:
        try:
            return self._call(lambda client: self._get_range_raw(client, key, full, byte_range, until), key, "read",
                              until)
        except RangeNotSatisfiableError:
            return b""

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Return the bytes of each half-open range, in request order.

        One ``GET`` with a ``Range: bytes=a-b`` header per distinct non-empty
        range, at most ``max_concurrency`` at a time, all within one
        ``read_deadline``. The server clips a range
        to the object's size; a range that starts at or past the end (a 416
        answer) gives ``b""``, and an empty range gives ``b""`` without a
        request. When every range is empty, one ``HEAD`` still checks that the
        object exists.

        Parameters
        ----------
        key : str
            The object's key.
        ranges : sequence of ByteRange or (start, stop)
            Half-open byte ranges.

        Returns
        -------
        list of bytes
            One entry per range, in order.

        Raises
        ------
        NotFoundError
            If there is no such object.
        """
        wanted = normalize_ranges(ranges)
        full = self._full(key)
        distinct = sorted({r for r in wanted if r.length}, key=lambda r: (r.start, r.stop))
        if not distinct:
            self.head(key)
            return [b""] * len(wanted)
        until = self._until()
        fetched = run_concurrently(lambda r: self._get_range(key, full, r, until), distinct, self.max_concurrency,
                                   self.budget)
        by_range = dict(zip(distinct, fetched, strict=True))
        return [by_range[r] if r.length else b"" for r in wanted]

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Return several whole objects, in order, at most ``max_concurrency`` at a time, within one deadline."""
        for key in keys:
            validate_key(key)
        until = self._until()
        return run_concurrently(lambda key: self._get(key, until), list(keys), self.max_concurrency, self.budget)

    # -- writes ---------------------------------------------------------------------------

    @abc.abstractmethod
    def _put_raw(self, client: Any, full: str, body: bytes, conditions: Mapping[str, str]) -> str | None:
        """Write ``body`` to the object ``full`` with one ``PUT`` on ``client``.

        Parameters
        ----------
        client : object
            The backend's client (or connection).
        full : str
            The object's name in its bucket or container.
        body : bytes
            The content.
        conditions : mapping
            The backend's conditional-request arguments (empty for a plain write).

        Returns
        -------
        str or None
            The etag of what was written, without quotes, where the answer has one.
        """

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Write (or replace) an object."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Create an object only if the key is free; else raise AlreadyExistsError."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object; a missing key is not an error."""

    def _put(self, key: str, data: bytes, action: Action, conditions: Mapping[str, str]) -> ObjectMeta:
        """Write an object with retries, recognising a conditional write whose answer was lost.

        Parameters
        ----------
        key : str
            The object's key.
        data : bytes
            The content.
        action : str
            ``"write"``, ``"create"`` or ``"match"``: what a refusal means.
        conditions : mapping
            Passed to :meth:`_put_raw`.

        Returns
        -------
        ObjectMeta
            Size and etag of what was written (``last_modified`` is None).
        """
        full = self._full(key)
        body = bytes(data)
        retried_after_transient = False

        def attempt() -> str | None:
            nonlocal retried_after_transient
            try:
                return self._budgeted(lambda client: self._put_raw(client, full, body, conditions), key, action)
            except TransientStoreError:
                retried_after_transient = True
                raise

        self._ready()
        try:
            etag = call_with_retries(attempt, self.retry)
        except (AlreadyExistsError, PreconditionFailedError):
            # An earlier attempt may have been stored although its answer was lost: then the
            # object now holds exactly our bytes (the etag of a single PUT is their MD5).
            if retried_after_transient:
                current = self.head(key)
                if current.etag == md5_hex(body):
                    return current
            raise
        return ObjectMeta(key, len(body), etag, None)

    # -- listing --------------------------------------------------------------------------

    @abc.abstractmethod
    def _server_listing(self, prefix: str, start_after: str | None) -> Iterator[ObjectMeta]:
        """Yield the server's listing of the names that start with ``prefix``, a page (one :meth:`_call`) at a time.

        Parameters
        ----------
        prefix : str
            Name prefix in the bucket or container (the root included).
        start_after : str or None
            Skip every name ``<=`` this one.

        Yields
        ------
        ObjectMeta
            One per object, ``key`` being its full name.
        """

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """Yield the objects whose key starts with ``prefix``, sorted by key.

        Pages through the server's listing; each page is fetched (and retried)
        when the previous one is used up. "Directory" marker objects (names
        ending in ``/``) are left out.

        Parameters
        ----------
        prefix : str, optional
            Key prefix relative to the store's root.
        start_after : str, optional
            Skip every key ``<=`` this one.

        Yields
        ------
        ObjectMeta
            Key, size, etag and server modification time of each object.

        Raises
        ------
        NotFoundError
            If the bucket or container does not exist.
        """
        validate_prefix(prefix)
        after = self._root + start_after if start_after is not None else None
        for meta in self._server_listing(self._root + prefix, after):
            key = meta.key[len(self._root) :]
            if not meta.key.startswith(self._root) or not key or key.endswith("/"):
                continue  # outside the root, or a "directory" marker object
            yield dataclasses.replace(meta, key=key)
