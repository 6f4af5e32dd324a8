"""The ASGI application: routes, SODA error documents, bearer-token auth, request ids, access log, metrics.

Routes::

    GET       /                      the gallery page
    GET       /health                {"status": "ok"} (never needs the token)
    GET       /metrics               request counts and latency quantiles (Prometheus text)
    GET|POST  /api/cutout/sync       SODA 1.0 sync: ID, POS/CIRCLE/POLYGON (repeatable), TIME, RESPONSEFORMAT
    GET       /api/datalink/links    DataLink {links} of ID, with the SODA service descriptor
    GET       /api/cutout/sky        object history: POS, TYPE[, SIZE, TIME, RUN, RESPONSEFORMAT=fits|json]
    GET       /api/datasets/{id}     the whole image as FITS (the DataLink #this link)

Every error is ``text/plain`` beginning ``UsageError:`` (400), ``NotFoundError:`` (404),
``AuthenticationError:`` (401), ``TransientFault:`` (503) or ``DefaultFault:`` (500, a fault of
the service, never of the input), with the request id on the last line and in ``X-Request-ID``.
Blocking work (registry refresh, range reads, encoding) runs on the server's thread pool.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from objbutler.butler import Butler
from objbutler.errors import (
    InvalidCutoutError,
    InvalidKeyError,
    NotFoundError,
    NotSupportedError,
    ObjButlerError,
    TransientStoreError,
)
from objbutler.service.cutouts import Answer, CutoutService, datalink_fault
from objbutler.service.encode import datalink_error_votable
from objbutler.service.metrics import Metrics
from objbutler.service.page import PAGE
from objbutler.service.params import (
    Limits,
    Params,
    _NoOverlapError,
    _SodaError,
    requested_media_type,
    response_format,
)
from objbutler.service.vosi import vosi_availability, vosi_capabilities

__all__ = ["create_app", "serve"]

access_log = logging.getLogger("objbutler.service.access")
error_log = logging.getLogger("objbutler.service")
_MAX_BODY = 64 * 1024
_VOSI = ("/api/cutout/capabilities", "/api/cutout/availability", "/api/datalink/capabilities",
         "/api/datalink/availability")
_OPEN = ("/health", *_VOSI)
_EXTENSIONS = {"application/fits": "fits", "image/fits": "fits", "image/png": "png"}
_DATALINK = "application/x-votable+xml;content=datalink"


def error_response(error: _SodaError, request_id: str) -> PlainTextResponse:
    """A SODA/DALI error document."""
    headers = {"X-Request-ID": request_id}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="objbutler"'
    return PlainTextResponse(f"{error.kind}: {error}\n\nrequest id: {request_id}\n", error.status, headers=headers)


def datalink_error_response(error: _SodaError, request_id: str) -> Response:
    """A DataLink error document: a VOTable whose QUERY_STATUS says ERROR and the fault (DataLink 1.1 3.4)."""
    body = datalink_error_votable(f"{datalink_fault(error)}: {error} (request id: {request_id})")
    return Response(body, error.status, media_type="application/x-votable+xml",
                    headers={"X-Request-ID": request_id})


def as_soda_error(exc: Exception) -> _SodaError:
    """The SODA error an exception from the library means (input problems 4xx, faults 5xx)."""
    if isinstance(exc, _SodaError):
        return exc
    if isinstance(exc, NotFoundError):
        return _SodaError(str(exc), 404, "UsageError")
    if isinstance(exc, InvalidKeyError | InvalidCutoutError | NotSupportedError):
        return _SodaError(str(exc))
    if isinstance(exc, TransientStoreError):
        return _SodaError(f"the object store is unavailable, try again: {exc}", 503, "ServiceUnavailable")
    if isinstance(exc, ObjButlerError):
        return _SodaError(f"{type(exc).__name__}: {exc}", 500, "Error")
    return _SodaError(f"internal error ({type(exc).__name__})", 500, "Error")


class _Guard(BaseHTTPMiddleware):
    """Request id, bearer-token check, timing, metrics, access log, and a last-resort error document."""

    def __init__(self, app: Any, token: str | None, metrics: Metrics) -> None:
        super().__init__(app)
        self.token = token
        self.metrics = metrics

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        request_id = request.headers.get("x-request-id", "")[:64]
        if not request_id.isalnum():
            request_id = uuid.uuid4().hex[:16]
        request.state.request_id = request_id
        started = time.perf_counter()
        if self.token is not None and request.url.path not in _OPEN and not self._authorized(request):
            response: Response = error_response(
                _SodaError("a valid bearer token is required (Authorization: Bearer ...)", 401, "AuthenticationError"),
                request_id)
        else:
            try:
                response = await call_next(request)
            except Exception as exc:  # a bug: answer a document, log the trace, keep serving
                error_log.exception("request %s failed", request_id)
                response = error_response(as_soda_error(exc), request_id)
        response.headers["X-Request-ID"] = request_id
        seconds = time.perf_counter() - started
        route = request.scope.get("route")
        self.metrics.record(getattr(route, "path", "other"), response.status_code, seconds)
        client = request.client.host if request.client else "-"
        access_log.info('%s %s "%s %s" %d %.1fms', client, request_id, request.method, request.url.path,
                        response.status_code, seconds * 1e3)
        return response

    def _authorized(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        assert self.token is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())


async def _params(request: Request) -> Params:
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":
        kind = request.headers.get("content-type", "application/x-www-form-urlencoded").split(";")[0].strip()
        if kind != "application/x-www-form-urlencoded":
            raise _SodaError(f"POST parameters as application/x-www-form-urlencoded, not {kind}")
        body = await request.body()
        if len(body) > _MAX_BODY:
            raise _SodaError(f"the request body is over {_MAX_BODY} bytes")
        try:
            pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise _SodaError("the request body is not UTF-8 form data") from None
    return Params(pairs)


Handler = Callable[[Request, Params], Awaitable[Answer]]


def _endpoint(handler: Handler, errors: Callable[[_SodaError, str], Response] = error_response,
              ) -> Callable[[Request], Awaitable[Response]]:
    """Parse the parameters, run the handler, and turn every refusal into an error document (``errors``)."""

    async def endpoint(request: Request) -> Response:
        try:
            body, media_type = await handler(request, await _params(request))
        except _NoOverlapError:
            return Response(status_code=204)  # SODA 1.0 5.1: no pixels -> 204, no body
        except Exception as exc:
            error = as_soda_error(exc)
            if error.status >= 500:
                error_log.exception("request %s failed", request.state.request_id)
            return errors(error, request.state.request_id)
        headers = {}
        extension = _EXTENSIONS.get(media_type)
        if extension is not None:
            name = request.url.path.rstrip("/").rsplit("/", 1)[-1]
            headers["Content-Disposition"] = f'inline; filename="{name}-{request.state.request_id}.{extension}"'
        return Response(body, media_type=media_type, headers=headers)

    return endpoint


def create_app(butler: Butler, *, token: str | None = None, limits: Limits | None = None) -> Starlette:
    """The service's ASGI application on one repository.

    Parameters
    ----------
    butler : Butler
        The repository, shared by every request (its registry refreshes on each call).
    token : str, optional
        The bearer token every route but ``/health`` requires; None for an open service.
    limits : Limits, optional
        Per-request limits on stencils, region size and history length.
    """
    service = CutoutService(butler, limits)
    metrics = Metrics()

    def base(request: Request) -> str:
        return str(request.base_url)

    async def sync(request: Request, params: Params) -> Answer:
        fmt = response_format(params, ("fits", "png"))
        body, media_type = await run_in_threadpool(service.sync, params, fmt)
        return body, requested_media_type(params, media_type)  # DALI 3.4.3: the type asked for, if one was

    async def links(request: Request, params: Params) -> Answer:
        response_format(params, ("votable",))
        return await run_in_threadpool(service.links, params, base(request), requested_media_type(params, _DATALINK))

    async def capabilities(request: Request) -> Response:
        return Response(vosi_capabilities(base(request)), media_type="text/xml")

    async def availability(request: Request) -> Response:
        try:
            await run_in_threadpool(service.registry_state)
            note = None
        except Exception as exc:  # the service runs but cannot read its repository
            note = f"the repository cannot be read: {type(exc).__name__}: {exc}"
        return Response(vosi_availability(note), media_type="text/xml")

    async def sky(request: Request, params: Params) -> Answer:
        fmt = response_format(params, ("fits", "json"))
        return await run_in_threadpool(service.history_answer, params, fmt, base(request))

    async def dataset(request: Request, params: Params) -> Answer:
        return await run_in_threadpool(service.dataset, request.path_params["dataset_id"])

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_text(request: Request) -> Response:
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        kind = "UsageError" if status < 500 else "Error"
        return error_response(_SodaError(f"{request.method} {request.url.path}: "
                                        f"{getattr(exc, 'detail', 'error')}", status, kind),
                              getattr(request.state, "request_id", "-"))

    routes = [
        Route("/", page),
        Route("/health", health),
        Route("/metrics", metrics_text),
        Route("/api/cutout/sync", _endpoint(sync), methods=["GET", "POST"]),
        Route("/api/datalink/links", _endpoint(links, datalink_error_response), methods=["GET", "POST"]),
        *(Route(path, capabilities if path.endswith("capabilities") else availability) for path in _VOSI),
        Route("/api/cutout/sky", _endpoint(sky)),
        Route("/api/datasets/{dataset_id}", _endpoint(dataset)),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_Guard, token=token, metrics=metrics)],
                    exception_handlers={HTTPException: http_error})
    app.state.metrics = metrics
    return app


def serve(uri: str, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          log_level: str = "info") -> None:
    """Run the service on uvicorn until interrupted (what ``objbutler serve`` does)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(Butler(uri), token=token)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
