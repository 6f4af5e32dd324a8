"""OpenStack Swift through python-swiftclient: ``swift://container/prefix``.

Configuration follows swiftclient's command line: an explicit constructor
option wins; anything left unset is read when the first connection is made,
from ``ST_AUTH``/``ST_USER``/``ST_KEY`` (v1 auth, ``ST_AUTH_VERSION``) or the
OpenStack variables ``OS_AUTH_URL``, ``OS_USERNAME``, ``OS_PASSWORD``,
``OS_PROJECT_NAME``, ``OS_PROJECT_ID``, ``OS_USER_DOMAIN_NAME``,
``OS_PROJECT_DOMAIN_NAME``, ``OS_REGION_NAME``, ... (Keystone v3 unless
``OS_AUTH_VERSION``/``OS_IDENTITY_API_VERSION`` says otherwise), or a
pre-authenticated ``OS_STORAGE_URL`` + ``OS_AUTH_TOKEN``.

What Swift promises (measured on a single-node Swift 2.38.3 on loopback):

* ``If-None-Match: *`` on a PUT is honoured (412) against writers that come one
  at a time, but **not atomically**: 16 concurrent creates of one key gave 1-4
  winners. So ``capabilities.atomic_create`` is False and
  ``conditional_create_header`` is True.
* ``If-Match`` on a PUT is ignored, so there is no compare-and-swap:
  :meth:`SwiftStore.put_if_match` raises NotSupportedError (it is never faked
  with a HEAD and a PUT).
* Every object carries the proxy's ``X-Timestamp`` (seconds with 5 decimals);
  :meth:`SwiftStore.head` and :meth:`SwiftStore.list` report it exactly (the
  listing's ``last_modified`` is the same instant with 6 decimals), so readers
  can order objects by it.

A swiftclient ``Connection`` is not thread-safe. Each store object keeps its
own small pool of connections: a worker checks one out for the duration of a
request, so no two threads ever share one, and connections (with their auth
token and keep-alive socket) are reused across calls instead of
re-authenticating for every thread of every call. The token obtained by the
first connection is handed to the connections made after it, so one store
authenticates once; a connection whose token expires re-authenticates itself.

swiftclient's own retries are off: every request runs under
:func:`~objbutler.stores._retry.call_with_retries`, and every swiftclient
error is turned into an objbutler error by :func:`_translate` alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

import requests.exceptions
import swiftclient.client
import swiftclient.exceptions
import urllib3.exceptions

from objbutler.errors import (
    AlreadyExistsError,
    NotFoundError,
    NotSupportedError,
    ObjButlerError,
    StoreError,
    TransientStoreError,
)
from objbutler.stores._base import (
    ByteRange,
    ObjectMeta,
    RangeLike,
    StoreCapabilities,
    normalize_ranges,
    validate_key,
    validate_prefix,
)
from objbutler.stores._concurrency import DEFAULT_MAX_CONCURRENCY, run_concurrently
from objbutler.stores._retry import RetryPolicy, call_with_retries

__all__ = ["SwiftStore"]

T = TypeVar("T")

Action = Literal["read", "write", "create", "delete", "list", "container", "auth"]
"""What a request was for; decides what a 404/409/412 answer means."""

# OS_* variable -> os_options key, as swiftclient's command line maps them.
_OS_OPTIONS = {
    "OS_USER_ID": "user_id",
    "OS_USER_DOMAIN_ID": "user_domain_id",
    "OS_USER_DOMAIN_NAME": "user_domain_name",
    "OS_TENANT_ID": "tenant_id",
    "OS_TENANT_NAME": "tenant_name",
    "OS_PROJECT_ID": "project_id",
    "OS_PROJECT_NAME": "project_name",
    "OS_PROJECT_DOMAIN_ID": "project_domain_id",
    "OS_PROJECT_DOMAIN_NAME": "project_domain_name",
    "OS_SERVICE_TYPE": "service_type",
    "OS_ENDPOINT_TYPE": "endpoint_type",
    "OS_AUTH_TOKEN": "auth_token",
    "OS_REGION_NAME": "region_name",
    "OS_STORAGE_URL": "object_storage_url",
}
_Listing = list[dict[str, Any]]
"""One page of a container listing, as swiftclient returns it."""

_TRANSIENT_STATUSES = frozenset({408, 422, 429, 498, 499})  # 422: body does not match the sent MD5


class _RangeNotSatisfiableError(StoreError):
    """A 416 answer: the range starts at or after the end of the object."""


def _translate(exc: BaseException, *, key: str | None, store: SwiftStore, action: Action) -> ObjButlerError:
    """Turn a swiftclient/requests exception into the objbutler error it means.

    The only place where swiftclient errors are inspected.

    Parameters
    ----------
    exc : BaseException
        What swiftclient raised.
    key : str or None
        The key (relative to the store) the request was about.
    store : SwiftStore
        The store, for messages.
    action : str
        What the request was for: a 412 (or 409) answer to a ``"create"``
        means the key exists.

    Returns
    -------
    ObjButlerError
        The error to raise (``TransientStoreError`` for what deserves a retry).
    """
    what = f"{key!r} in {store.uri}" if key is not None else store.uri
    if isinstance(exc, swiftclient.exceptions.ClientException):
        status: int | None = exc.http_status
        reason = f"{status} {exc.http_reason or ''}".strip() if status else str(exc.msg)
        if status is None:
            return StoreError(f"Swift {action} of {what} failed: {exc}")
        if status == 404:
            if action in ("list", "container"):
                return NotFoundError(
                    f"container {store.container!r} does not exist "
                    f"(create it, or open the store with create_container=True)"
                )
            return NotFoundError(f"no object {what}")
        if status == 416:
            return _RangeNotSatisfiableError(f"range not satisfiable for {what}")
        if status in (409, 412) and action == "create":
            return AlreadyExistsError(f"object {what} already exists")
        if status in (401, 403):
            if action == "auth":
                return StoreError(f"Swift authentication for {store.uri} failed ({reason}); check the credentials")
            return StoreError(f"Swift refused {action} of {what} ({reason}); check the credentials")
        if status >= 500 or status in _TRANSIENT_STATUSES or (status == 409 and action == "write"):
            return TransientStoreError(f"Swift {action} of {what} failed: {reason}")
        return StoreError(f"Swift {action} of {what} failed: {reason}")
    transient = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
        urllib3.exceptions.HTTPError,
        ConnectionError,
        TimeoutError,
    )
    if isinstance(exc, transient):
        return TransientStoreError(f"Swift {action} of {what} failed: {type(exc).__name__}: {exc}")
    return StoreError(f"Swift {action} of {what} failed: {type(exc).__name__}: {exc}")


_CAUGHT: tuple[type[BaseException], ...] = (
    swiftclient.exceptions.ClientException,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
)


def _timestamp(value: str) -> dt.datetime:
    """Parse a Swift ``X-Timestamp`` (``"1700000000.12345"``) exactly, without float rounding."""
    seconds, _, fraction = value.split("_", 1)[0].partition(".")
    micros = int((fraction + "000000")[:6])
    return dt.datetime.fromtimestamp(int(seconds), tz=dt.UTC) + dt.timedelta(microseconds=micros)


def _listing_time(value: str) -> dt.datetime:
    """Parse a container listing's ``last_modified`` (UTC, microseconds, no zone)."""
    parsed = dt.datetime.fromisoformat(value)
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class SwiftStore:
    """A store in a Swift container, keys relative to ``prefix``.

    Parameters
    ----------
    container : str
        The container name.
    prefix : str, optional
        Root of the store inside the container (no leading or trailing ``/``).
    auth_url : str, optional
        Auth endpoint; default ``ST_AUTH``, else ``OS_AUTH_URL``.
    user : str, optional
        User name; default ``ST_USER``, else ``OS_USERNAME``.
    key : str, optional
        Key or password; default ``ST_KEY``, else ``OS_PASSWORD``.
    auth_version : str, optional
        ``"1.0"``, ``"2.0"`` or ``"3"``; default ``ST_AUTH_VERSION``,
        ``OS_AUTH_VERSION``, ``OS_IDENTITY_API_VERSION``, else ``"1.0"`` when
        the ``ST_*`` variables (or explicit auth_url/user/key) are used and
        ``"3"`` when the ``OS_*`` ones are.
    os_options : dict, optional
        Keystone options (``project_name``, ``user_domain_name``,
        ``region_name``, ``object_storage_url``, ``auth_token``, ...);
        default from the matching ``OS_*`` variables.
    create_container : bool, default False
        Create the container on first use if it does not exist.
    max_concurrency : int, default 16
        Upper bound of concurrent requests (and pooled connections) of one store.
    retry : RetryPolicy, optional
        How transient failures (5xx, timeouts, resets) are retried.
    **connection_options
        Passed to :class:`swiftclient.client.Connection` (``timeout``,
        ``cacert``, ``insecure``, ``preauthurl``, ``preauthtoken``, ...).

    Notes
    -----
    The store pickles as its constructor arguments (never a connection).
    """

    capabilities = StoreCapabilities(
        atomic_create=False, compare_and_swap=False, conditional_create_header=True, server_timestamps=True
    )

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        auth_url: str | None = None,
        user: str | None = None,
        key: str | None = None,
        auth_version: str | None = None,
        os_options: Mapping[str, str] | None = None,
        create_container: bool = False,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, immutable default
        **connection_options: Any,
    ) -> None:
        if not container or "/" in container:
            raise ValueError(f"invalid Swift container name {container!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if "retries" in connection_options:
            raise TypeError("SwiftStore retries through its retry policy: pass retry=RetryPolicy(...)")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.container = container
        self.prefix = prefix
        self.auth_url = auth_url
        self.user = user
        self.auth_version = auth_version
        self.os_options = dict(os_options) if os_options is not None else None
        self.create_container = create_container
        self.max_concurrency = max_concurrency
        self.retry = retry
        self._key = key
        self._connection_options = dict(connection_options)
        self._root = f"{prefix}/" if prefix else ""
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._idle: list[Any] = []
        self._token: tuple[str, str] | None = None
        self._pid = os.getpid()
        self._container_checked = False

    # -- identity ----------------------------------------------------------------------

    def __reduce__(self) -> tuple[Callable[..., SwiftStore], tuple[str, str]]:
        constructor = functools.partial(
            SwiftStore,
            auth_url=self.auth_url,
            user=self.user,
            key=self._key,
            auth_version=self.auth_version,
            os_options=self.os_options,
            create_container=self.create_container,
            max_concurrency=self.max_concurrency,
            retry=self.retry,
            **self._connection_options,
        )
        return (constructor, (self.container, self.prefix))

    def __repr__(self) -> str:
        return f"SwiftStore({self.container!r}, {self.prefix!r})"

    @property
    def uri(self) -> str:
        """``swift://container/prefix``."""
        return f"swift://{self.container}/{self.prefix}" if self.prefix else f"swift://{self.container}"

    # -- connections -------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        """Resolve the Connection arguments: explicit options, else the environment."""
        env = os.environ
        st_set = all(env.get(name) for name in ("ST_AUTH", "ST_USER", "ST_KEY"))
        explicit_v1 = all((self.auth_url, self.user, self._key))
        os_options: dict[str, str]
        if self.os_options is not None:
            os_options = dict(self.os_options)
        else:
            os_options = {option: env[name] for name, option in _OS_OPTIONS.items() if env.get(name)}
        version = self.auth_version or next(
            (env[name] for name in ("ST_AUTH_VERSION", "OS_AUTH_VERSION", "OS_IDENTITY_API_VERSION") if env.get(name)),
            None,
        )
        if version is None:
            version = "1.0" if explicit_v1 or st_set or not env.get("OS_AUTH_URL") else "3"
        version = {"1": "1.0", "2": "2.0", "3.0": "3"}.get(version, version)
        if version == "1.0":
            auth_url = self.auth_url or env.get("ST_AUTH") or env.get("OS_AUTH_URL")
            user = self.user or env.get("ST_USER") or env.get("OS_USERNAME")
            key = self._key or env.get("ST_KEY") or env.get("OS_PASSWORD")
        else:
            auth_url = self.auth_url or env.get("OS_AUTH_URL") or env.get("ST_AUTH")
            user = self.user or env.get("OS_USERNAME") or env.get("ST_USER")
            key = self._key or env.get("OS_PASSWORD") or env.get("ST_KEY")
        preauthenticated = bool(os_options.get("object_storage_url") and os_options.get("auth_token")) or bool(
            self._connection_options.get("preauthurl") and self._connection_options.get("preauthtoken")
        )
        if not preauthenticated and not (auth_url and (user or os_options.get("user_id")) and key):
            raise StoreError(
                f"no Swift credentials for {self.uri}: pass auth_url/user/key, or set ST_AUTH, ST_USER and "
                f"ST_KEY (v1 auth), or OS_AUTH_URL, OS_USERNAME, OS_PASSWORD and OS_PROJECT_NAME (Keystone)"
            )
        options = {"timeout": 60.0, "starting_backoff": 0.1, "max_backoff": 1.0, **self._connection_options}
        return {
            "authurl": auth_url,
            "user": user,
            "key": key,
            "auth_version": version,
            "os_options": os_options,
            "retries": 0,  # call_with_retries does it (a 401 still re-authenticates once)
            "retry_on_ratelimit": False,
            **options,
        }

    def _new_connection(self) -> Any:
        """A new Connection that reuses the store's token, or the first one, authenticated here."""
        settings = self._settings()
        with self._auth_lock:
            token = self._token
            if token is None:
                connection = swiftclient.client.Connection(**settings)
                if not (connection.url and connection.token):  # not pre-authenticated
                    call_with_retries(lambda: self._translated(lambda: connection.get_auth(), None, "auth"), self.retry)
                self._token = (str(connection.url), str(connection.token))
                return connection
        settings["preauthurl"], settings["preauthtoken"] = token
        return swiftclient.client.Connection(**settings)

    def _checkout(self) -> Any:
        with self._lock:
            if self._pid != os.getpid():  # forked: the pooled sockets belong to the parent
                self._idle.clear()
                self._token = None
                self._pid = os.getpid()
            if self._idle:
                return self._idle.pop()
        return self._new_connection()

    def _checkin(self, connection: Any, healthy: bool) -> None:
        if not healthy:
            connection.close()  # drop the socket, keep the token
        with self._lock:
            if connection.url and connection.token:  # possibly renewed after a 401
                self._token = (str(connection.url), str(connection.token))
            if self._pid == os.getpid() and len(self._idle) < self.max_concurrency:
                self._idle.append(connection)
                return
        connection.close()

    def _translated(self, request: Callable[[], T], key: str | None, action: Action) -> T:
        """Run ``request()``, turning what swiftclient raises into objbutler errors."""
        try:
            return request()
        except _CAUGHT as exc:
            raise _translate(exc, key=key, store=self, action=action) from exc

    def _attempt(self, request: Callable[[Any], T], key: str | None, action: Action) -> T:
        """Run one request on a pooled connection (checked out for this request only)."""
        connection = self._checkout()
        healthy = True
        try:
            return self._translated(lambda: request(connection), key, action)
        except TransientStoreError:
            healthy = False
            raise
        finally:
            self._checkin(connection, healthy)

    def _call(self, request: Callable[[Any], T], key: str | None, action: Action) -> T:
        """Run ``request(connection)`` with translation and retries."""
        if self.create_container and not self._container_checked:
            self._ensure_container()
        return call_with_retries(lambda: self._attempt(request, key, action), self.retry)

    def _ensure_container(self) -> None:
        def head(connection: Any) -> None:
            connection.head_container(self.container)

        try:
            call_with_retries(lambda: self._attempt(head, None, "container"), self.retry)
        except NotFoundError:
            call_with_retries(
                lambda: self._attempt(lambda c: c.put_container(self.container), None, "write"), self.retry
            )
        self._container_checked = True

    def _full(self, key: str) -> str:
        return self._root + validate_key(key)

    # -- reads ----------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        """Return the whole object.

        Raises
        ------
        NotFoundError
            If there is no such object (or no such container).
        """
        full = self._full(key)

        def request(connection: Any) -> bytes:
            headers, body = connection.get_object(self.container, full)
            data = bytes(body)
            expected = headers.get("content-length")
            if expected is not None and int(expected) != len(data):
                raise ConnectionError(f"short read: {len(data)} of {expected} bytes")
            return data

        return self._call(request, key, "read")

    def _get_range(self, key: str, full: str, byte_range: ByteRange) -> bytes:
        def request(connection: Any) -> bytes:
            headers, body = connection.get_object(
                self.container, full, headers={"Range": f"bytes={byte_range.start}-{byte_range.stop - 1}"}
            )
            data = bytes(body)
            if "content-range" not in headers:
                # The whole object came back (e.g. a server that ignores Range): keep the slice asked for.
                data = data[byte_range.start : byte_range.stop]
            return data

        try:
            return self._call(request, key, "read")
        except _RangeNotSatisfiableError:
            return b""

    def get_ranges(self, key: str, ranges: Sequence[RangeLike]) -> list[bytes]:
        """Return the bytes of each half-open range, in request order.

        One ``GET`` with a ``Range: bytes=a-b`` header per distinct non-empty
        range, at most ``max_concurrency`` at a time. The server clips a range
        to the object's size; a range starting at or past the end (416) gives
        ``b""``, and an empty range gives ``b""`` without a request. When
        every range is empty, one ``HEAD`` still checks that the object exists.

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
        fetched = run_concurrently(lambda r: self._get_range(key, full, r), distinct, self.max_concurrency)
        by_range = dict(zip(distinct, fetched, strict=True))
        return [by_range[r] if r.length else b"" for r in wanted]

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Return several whole objects, in request order, at most ``max_concurrency`` at a time."""
        for key in keys:
            validate_key(key)
        return run_concurrently(self.get, list(keys), self.max_concurrency)

    def head(self, key: str) -> ObjectMeta:
        """Return an object's size, etag and exact server timestamp (``X-Timestamp``, UTC).

        Raises
        ------
        NotFoundError
            If there is no such object (or no such container).
        """
        full = self._full(key)
        headers: dict[str, str] = self._call(lambda c: c.head_object(self.container, full), key, "read")
        stamp = headers.get("x-timestamp")
        return ObjectMeta(
            key,
            int(headers["content-length"]),
            headers.get("etag", "").strip('"') or None,
            _timestamp(stamp) if stamp else None,
        )

    # -- writes ---------------------------------------------------------------------------

    def _put(self, key: str, data: bytes, action: Action, headers: dict[str, str]) -> ObjectMeta:
        full = self._full(key)
        body = bytes(data)
        digest = _md5(body)  # sent as ETag: Swift refuses a body that arrives corrupted (422)
        retried_after_transient = False

        def request(connection: Any) -> str:
            etag: str = connection.put_object(
                self.container,
                full,
                body,
                content_length=len(body),
                etag=digest,
                content_type="application/octet-stream",
                headers=dict(headers),
            )
            return etag

        def attempt() -> str:
            nonlocal retried_after_transient
            try:
                return self._attempt(request, key, action)
            except TransientStoreError:
                retried_after_transient = True
                raise

        if self.create_container and not self._container_checked:
            self._ensure_container()
        try:
            etag = call_with_retries(attempt, self.retry)
        except AlreadyExistsError:
            # An earlier attempt may have been stored although its answer was lost:
            # then the object holds exactly our bytes (its etag is their MD5).
            if retried_after_transient:
                current = self.head(key)
                if current.etag == digest:
                    return current
            raise
        return ObjectMeta(key, len(body), str(etag).strip('"') or digest, None)

    def put(self, key: str, data: bytes) -> ObjectMeta:
        """Write (or replace) an object with one ``PUT`` (its MD5 sent for the server to verify).

        Returns
        -------
        ObjectMeta
            Size and etag; ``last_modified`` is None (the answer to a PUT only
            has a rounded ``Last-Modified``; :meth:`head` has the exact time).
        """
        return self._put(key, data, "write", {})

    def put_if_absent(self, key: str, data: bytes) -> ObjectMeta:
        """Create an object unless the key exists (``If-None-Match: *``).

        Not atomic: Swift checks the header, but concurrent creates of one key
        can all succeed (``capabilities.atomic_create`` is False).

        Raises
        ------
        AlreadyExistsError
            If the object existed when the server checked (412).
        """
        return self._put(key, data, "create", {"If-None-Match": "*"})

    def put_if_match(self, key: str, data: bytes, etag: str) -> ObjectMeta:
        """Not available: Swift ignores ``If-Match`` on a PUT.

        Raises
        ------
        NotSupportedError
            Always; no request is sent.
        """
        raise NotSupportedError(
            f"Swift has no compare-and-swap ({self.uri}): it ignores If-Match on PUT; "
            "check capabilities.compare_and_swap before calling put_if_match"
        )

    def delete(self, key: str) -> None:
        """Delete an object; a missing key is not an error."""
        full = self._full(key)
        with contextlib.suppress(NotFoundError):
            self._call(lambda c: c.delete_object(self.container, full), key, "delete")

    # -- listing --------------------------------------------------------------------------

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectMeta]:
        """Yield the objects whose key starts with ``prefix``, sorted by key.

        Pages through the container listing with ``prefix`` and ``marker``
        (the server's page size, 10,000 by default); each page is fetched (and
        retried) when the previous one is used up.

        Parameters
        ----------
        prefix : str, optional
            Key prefix relative to the store's root.
        start_after : str, optional
            Skip every key ``<=`` this one.

        Yields
        ------
        ObjectMeta
            Key, size, etag and exact server timestamp of each object.

        Raises
        ------
        NotFoundError
            If the container does not exist.
        """
        validate_prefix(prefix)
        full_prefix = self._root + prefix
        marker = self._root + start_after if start_after is not None else ""
        while True:
            items = self._list_page(full_prefix, marker)
            if not items:
                return
            for item in items:
                name = str(item["name"])
                marker = name
                key = name[len(self._root) :]
                if not key or key.endswith("/"):
                    continue  # a "directory" marker object
                stamp = item.get("last_modified")
                yield ObjectMeta(
                    key,
                    int(item["bytes"]),
                    str(item.get("hash", "")).strip('"') or None,
                    _listing_time(str(stamp)) if stamp else None,
                )

    def _list_page(self, prefix: str, marker: str) -> _Listing:
        """One page of the container listing: names ``> marker`` that start with ``prefix``."""

        def request(connection: Any) -> _Listing:
            _, items = connection.get_container(self.container, marker=marker, prefix=prefix)
            return [dict(item) for item in items]

        return self._call(request, None, "list")
