"""OpenStack Swift through python-swiftclient: ``swift://container/prefix``.

Configuration follows swiftclient's command line: an explicit constructor
option wins; anything left unset is read when the first connection is made,
from ``ST_AUTH``/``ST_USER``/``ST_KEY`` (v1 auth, ``ST_AUTH_VERSION``) or the
OpenStack variables ``OS_AUTH_URL``, ``OS_USERNAME``, ``OS_PASSWORD``,
``OS_PROJECT_NAME``, ``OS_PROJECT_ID``, ``OS_USER_DOMAIN_NAME``,
``OS_PROJECT_DOMAIN_NAME``, ``OS_REGION_NAME``, ... (Keystone v3 unless
``OS_AUTH_VERSION``/``OS_IDENTITY_API_VERSION`` says otherwise), or a
pre-authenticated ``OS_STORAGE_URL`` + ``OS_AUTH_TOKEN``.

The connection pool, the native calls and the status codes are Swift's own;
retries, range reads and listings come from
:class:`~objbutler.stores._remote.RemoteStore`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import requests.exceptions
import swiftclient.client
import swiftclient.exceptions

from objbutler.errors import (
    AlreadyExistsError,
    BucketNotFoundError,
    NotFoundError,
    ObjButlerError,
    RangeNotSatisfiableError,
    StoreError,
    TransientStoreError,
)
from objbutler.stores._base import ByteRange, ObjectMeta, StoreCapabilities
from objbutler.stores._concurrency import DEFAULT_MAX_CONCURRENCY
from objbutler.stores._names import validate_bucket_name
from objbutler.stores._remote import (
    DEFAULT_READ_DEADLINE,
    NETWORK_ERRORS,
    Action,
    RemoteStore,
    check_body_md5,
    md5_hex,
    range_header,
)
from objbutler.stores._retry import RetryPolicy, call_with_retries

__all__ = ["SwiftStore"]

T = TypeVar("T")

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
_PIECE = 1 << 20  # given a chunk size, swiftclient leaves the body unread for read_body to read


_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    *NETWORK_ERRORS,
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


class SwiftStore(RemoteStore):
    """A store in a Swift container, keys relative to ``prefix``.

    Parameters
    ----------
    container : str
        The container name (1-256 bytes, no ``/``; an
        :class:`~objbutler.errors.InvalidBucketNameError` otherwise, before any request).
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
        Create the container on first use if it does not exist. Without it, a listing of
        or a write into a missing container raises :class:`~objbutler.errors.BucketNotFoundError`.
    max_concurrency : int, default 16
        The store's concurrency budget: most requests in flight, worker threads and
        pooled connections, shared by every call on the store.
    retry : RetryPolicy, optional
        How transient failures (5xx, timeouts, resets) are retried.
    read_deadline : float or None, default 300
        Seconds one read call (``get``, ``get_ranges``, ``get_many``, ``head``)
        may take in all, retries included: a body that trickles in is abandoned
        with a TransientStoreError. With the connection's ``timeout`` (default
        60 s, the longest wait for any one socket read) a read ends within
        ``read_deadline + timeout``. None: no overall bound.
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
    _scheme = "swift"
    _native_errors = (swiftclient.exceptions.ClientException, requests.exceptions.RequestException)

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
        read_deadline: float | None = DEFAULT_READ_DEADLINE,
        **connection_options: Any,
    ) -> None:
        validate_bucket_name(container, "swift", new=create_container)
        if "retries" in connection_options:
            raise TypeError("SwiftStore retries through its retry policy: pass retry=RetryPolicy(...)")
        super().__init__(container, prefix, max_concurrency, retry, read_deadline)
        self.container = container
        self.auth_url = auth_url
        self.user = user
        self.auth_version = auth_version
        self.os_options = dict(os_options) if os_options is not None else None
        self.create_container = create_container
        self._key = key
        self._connection_options = dict(connection_options)
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._idle: list[Any] = []
        self._token: tuple[str, str] | None = None
        self._pid = os.getpid()
        self._container_checked = False

    # -- identity ----------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        return {
            "auth_url": self.auth_url,
            "user": self.user,
            "key": self._key,
            "auth_version": self.auth_version,
            "os_options": self.os_options,
            "create_container": self.create_container,
            **self._connection_options,
        }

    @property
    def server_host(self) -> str | None:
        """Host name of the auth URL (explicit or from ST_AUTH/OS_AUTH_URL), for choosing a read cost model."""
        url = self.auth_url or os.environ.get("ST_AUTH") or os.environ.get("OS_AUTH_URL")
        return urllib.parse.urlsplit(url).hostname if url else None

    def __repr__(self) -> str:
        return f"SwiftStore({self.container!r}, {self.prefix!r})"

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
                    self._retried(connection.get_auth, None, "auth")
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

    def _ready(self) -> None:
        if self.create_container and not self._container_checked:
            self._ensure_container()

    def _ensure_container(self) -> None:
        def head(connection: Any) -> None:
            connection.head_container(self.container)

        try:
            call_with_retries(lambda: self._budgeted(head, None, "container"), self.retry)
        except NotFoundError:
            call_with_retries(
                lambda: self._budgeted(lambda c: c.put_container(self.container), None, "write"), self.retry
            )
        self._container_checked = True

    def _translate(self, exc: BaseException, key: str | None, action: Action) -> ObjButlerError:
        """Turn a swiftclient/requests exception into the objbutler error it means.

        The only place where swiftclient errors are inspected. A 412 (or 409)
        answer to a ``"create"`` means the key exists; a 404 to a listing, that
        the container does not.
        """
        what = self._describe(key)
        if isinstance(exc, swiftclient.exceptions.ClientException):
            status: int | None = exc.http_status
            reason = f"{status} {exc.http_reason or ''}".strip() if status else str(exc.msg)
            if status is None:
                return StoreError(f"Swift {action} of {what} failed: {exc}")
            if status == 404:
                if action in ("list", "container", "write", "create", "match"):
                    # a listing, a HEAD of the container or a PUT of an object: only the container can be missing
                    where = self.auth_url or os.environ.get("ST_AUTH") or os.environ.get("OS_AUTH_URL") or "Swift"
                    return BucketNotFoundError(
                        f"container {self.container!r} does not exist at {where} "
                        f"(create it, or open the store with create_container=True)",
                        bucket=self.container, kind="container", where=where,
                    )
                return NotFoundError(f"no object {what}")
            if status == 416:
                return RangeNotSatisfiableError(f"range not satisfiable for {what}")
            if status in (409, 412) and action == "create":
                return AlreadyExistsError(f"object {what} already exists")
            if status in (401, 403):
                if action == "auth":
                    return StoreError(f"Swift authentication for {self.uri} failed ({reason}); check the credentials")
                return StoreError(f"Swift refused {action} of {what} ({reason}); check the credentials")
            if status >= 500 or status in _TRANSIENT_STATUSES or (status == 409 and action == "write"):
                return TransientStoreError(f"Swift {action} of {what} failed: {reason}")
            return StoreError(f"Swift {action} of {what} failed: {reason}")
        if isinstance(exc, _TRANSIENT_ERRORS):
            return TransientStoreError(f"Swift {action} of {what} failed: {type(exc).__name__}: {exc}")
        return StoreError(f"Swift {action} of {what} failed: {type(exc).__name__}: {exc}")

    # -- reads ----------------------------------------------------------------------------

    def _read(self, client: Any, key: str, full: str, until: float | None,
              headers: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
        """GET an object, its body read with the deadline (swiftclient streams it: ``resp_chunk_size``)."""
        answer, body = client.get_object(self.container, full, headers=headers, resp_chunk_size=_PIECE)
        try:
            stream = getattr(getattr(body, "resp", None), "raw", body)  # the urllib3 response under swiftclient's
            return answer, self._body(stream, until, key, answer.get("content-length"))
        finally:
            body.close()  # after a whole body: releases the connection; after a failure: drops it

    def _get_raw(self, client: Any, key: str, full: str, until: float | None) -> bytes:
        headers, data = self._read(client, key, full, until)
        if "x-static-large-object" not in headers and "x-object-manifest" not in headers:  # else not an MD5
            check_body_md5(data, headers.get("etag"), self._describe(key))
        return data

    def _get_range_raw(self, client: Any, key: str, full: str, byte_range: ByteRange, until: float | None) -> bytes:
        headers, data = self._read(client, key, full, until, {"Range": range_header(byte_range)})
        if "content-range" not in headers:
            # The whole object came back (e.g. a server that ignores Range): keep the slice asked for.
            data = data[byte_range.start : byte_range.stop]
        return data

    def _head_raw(self, client: Any, key: str, full: str) -> ObjectMeta:
        """``HEAD`` the object: its size, etag and exact server timestamp (``X-Timestamp``, UTC)."""
        headers: dict[str, str] = client.head_object(self.container, full)
        stamp = headers.get("x-timestamp")
        return ObjectMeta(
            key,
            int(headers["content-length"]),
            headers.get("etag", "").strip('"') or None,
            _timestamp(stamp) if stamp else None,
        )

    # -- writes ---------------------------------------------------------------------------

    def _put_raw(self, client: Any, full: str, body: bytes, conditions: Mapping[str, str]) -> str | None:
        digest = md5_hex(body)  # sent as ETag: Swift refuses a body that arrives corrupted (422)
        etag: str = client.put_object(
            self.container,
            full,
            body,
            content_length=len(body),
            etag=digest,
            content_type="application/octet-stream",
            headers=dict(conditions),
        )
        return str(etag).strip('"') or digest

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

    def delete(self, key: str) -> None:
        """Delete an object; a missing key is not an error."""
        full = self._full(key)
        with contextlib.suppress(NotFoundError):
            self._call(lambda c: c.delete_object(self.container, full), key, "delete")

    # -- listing --------------------------------------------------------------------------

    def _server_listing(self, prefix: str, start_after: str | None) -> Iterator[ObjectMeta]:
        """Page through the container listing with ``prefix`` and ``marker`` (10,000 names a page by default)."""
        marker = start_after or ""
        while True:
            items = self._list_page(prefix, marker)
            if not items:
                return
            for item in items:
                marker = str(item["name"])
                stamp = item.get("last_modified")
                yield ObjectMeta(
                    marker,
                    int(item["bytes"]),
                    str(item.get("hash", "")).strip('"') or None,
                    _listing_time(str(stamp)) if stamp else None,
                )

    def _list_page(self, prefix: str, marker: str) -> _Listing:
        """One page of the container listing: names ``> marker`` that start with ``prefix``."""

        def request(connection: Any) -> _Listing:
            try:
                _, items = connection.get_container(self.container, marker=marker, prefix=prefix)
                return [_listing_item(item) for item in items]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON that does not parse or fit
                raise TransientStoreError(
                    f"the listing of {self._describe(None)} came back garbled ({type(exc).__name__}: {exc})"
                ) from None

        return self._call(request, None, "list")


def _listing_item(item: Any) -> dict[str, Any]:
    """One entry of a container listing, checked for the fields a listing must have."""
    entry = dict(item)
    if not isinstance(entry.get("name"), str) or not isinstance(entry.get("bytes"), int):
        raise ValueError(f"a listing entry lacks a name or a size: {entry!r}")
    return entry
