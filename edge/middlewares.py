"""The edge's general middlewares (request id -> metrics -> errors -> header limit -> CORS
preflight; authentication and rate limiting live in authn.py and ratelimit.py), the headers
every response carries, and the access log."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from http import HTTPStatus

import grpc
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler

from edge.metrics import METRICS_KEY, UNMATCHED_ROUTE
from edge.problems import CLIENT_CLOSED_REQUEST, ProblemError, problem_from_rpc_error, problem_response
from edge.settings import SETTINGS_KEY
from flowforge_common.ids import new_id

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = web.RequestKey("request_id", str)
# The response whose headers went out (set in `add_standard_headers`), for a request whose
# handler is cancelled afterwards.
STARTED_RESPONSE_KEY = web.RequestKey("started_response", web.StreamResponse)
# Set by the rate limiter; added to the response, whichever code path produced it.
RATE_LIMIT_HEADERS_KEY = web.RequestKey("rate_limit_headers", dict[str, str])
REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is echoed only when it is short and plain: it lands in logs and headers.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # JSON needs no sources at all; /docs sets a looser policy of its own.
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    # Instead of aiohttp's default, which advertises the Python and aiohttp versions.
    "Server": "FlowForge",
}
CORS_ALLOWED_HEADERS = (
    "Authorization, Content-Type, X-API-Key, X-Request-ID, Idempotency-Key, If-Match, "
    "traceparent, tracestate, Last-Event-ID"
)
CORS_EXPOSED_HEADERS = (
    "X-Request-ID, Location, ETag, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset"
)
# Headers of an aiohttp HTTPException that the problem response keeps.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")
# Paths whose responses carry credentials (tokens, secrets shown once): never cached anywhere.
# Every /api/ response is no-store already; the JWKS is public and may be cached.
_NO_STORE_PREFIXES = ("/api/",)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Gives the request an id: the client's `X-Request-ID` when sane, else a new one. The
    response header is set in `add_standard_headers`, so streamed responses carry it too."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request[REQUEST_ID_KEY] = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else new_id("req")
    return await handler(request)


def route_label(request: web.Request) -> str:
    """The route template a request matched (bounded cardinality), for metrics and logs."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts requests and their latency by method, route template and final status."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        # The client hung up (the server cancels the handler). Before any answer, it closed
        # the request: 499, nginx's convention. During a stream it was being served (SSE,
        # WebSocket), it ended the stream: the status already sent stands.
        served = request.get(STARTED_RESPONSE_KEY)
        status = served.status if served is not None else CLIENT_CLOSED_REQUEST
        log_client_hang_up(request, served, time.perf_counter() - started)
        raise
    finally:
        request.app[METRICS_KEY].observe(request.method, route_label(request), status, time.perf_counter() - started)


def client_gone(request: web.Request) -> bool:
    """Whether the HTTP client closed its connection (nothing it sent can be answered)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _problem_from_http_exception(request: web.Request, exc: web.HTTPException) -> ProblemError:
    headers = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
    if isinstance(exc, web.HTTPNotFound):
        detail = f"no route matches {request.method} {request.path}"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        detail = f"{request.method} is not allowed here; allowed: {', '.join(sorted(exc.allowed_methods))}"
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        detail = f"the request body exceeds {request.app[SETTINGS_KEY].max_body_bytes} bytes"
    else:
        detail = exc.reason
    return ProblemError(exc.status, detail, HTTPStatus(exc.status).name, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place failures become RFC 9457 problem+json: ProblemError, upstream gRPC
    errors (through GRPC_TO_HTTP), aiohttp's own HTTP errors (404, 405, 413) and crashes
    (logged once, answered 500 without internals)."""
    request_id = request[REQUEST_ID_KEY]
    try:
        return await handler(request)
    except ProblemError as error:
        problem = error
    except grpc.aio.AioRpcError as error:
        problem = problem_from_rpc_error(error, client_gone=client_gone(request))
        if problem.status >= 500:
            logger.warning(
                "upstream call failed: %s %s",
                error.code().name,
                route_label(request),
                extra={
                    "request_id": request_id,
                    "route": route_label(request),
                    "code": error.code().name,
                    "upstream_detail": error.details(),
                },
            )
    except web.HTTPException as error:
        if error.status < 400:
            raise
        problem = _problem_from_http_exception(request, error)
    except UnicodeEncodeError:
        # A JSON string with a lone surrogate (`"\ud800"`) decodes fine but cannot become a
        # protobuf string: the client sent text that is not Unicode.
        problem = ProblemError(400, "the request contains text that is not valid Unicode", "BAD_REQUEST")
    except Exception:
        logger.exception(
            "unhandled error", extra={"request_id": request_id, "method": request.method, "route": route_label(request)}
        )
        problem = ProblemError(500, "The server failed to handle the request.", "INTERNAL")
    return problem_response(problem, request_id)


@web.middleware
async def header_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """431 problem+json when the request's headers together exceed `max_header_bytes` (the
    server's own per-line limits stop single huge lines before this)."""
    limit = request.app[SETTINGS_KEY].max_header_bytes
    size = sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
    if size > limit:
        raise ProblemError(431, f"the request headers exceed {limit} bytes", "REQUEST_HEADER_FIELDS_TOO_LARGE")
    return await handler(request)


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    allowed = request.app[SETTINGS_KEY].cors_origins
    if origin and (origin in allowed or "*" in allowed):
        return origin
    return None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers CORS preflights for allowed origins. The router has no OPTIONS routes, so a
    preflight arrives as a 405 whose allowed methods are exactly what to advertise."""
    exc = request.match_info.http_exception
    if (
        request.method == "OPTIONS"
        and "Access-Control-Request-Method" in request.headers
        and isinstance(exc, web.HTTPMethodNotAllowed)
        and _allowed_origin(request) is not None
    ):
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": ", ".join(sorted(exc.allowed_methods)),
                "Access-Control-Allow-Headers": CORS_ALLOWED_HEADERS,
                "Access-Control-Max-Age": "600",
            },
        )
    return await handler(request)


async def add_standard_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: request id, security headers and CORS on every response, streamed
    or not, whichever code path produced it."""
    request[STARTED_RESPONSE_KEY] = response
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # aiohttp has set its own `Server` (with versions) before this hook runs.
    response.headers["Server"] = SECURITY_HEADERS["Server"]
    if request.path.startswith(_NO_STORE_PREFIXES):
        response.headers.setdefault("Cache-Control", "no-store")
    rate_limit_headers = request.get(RATE_LIMIT_HEADERS_KEY)
    if rate_limit_headers:
        response.headers.update(rate_limit_headers)
    origin = _allowed_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")


# --------------------------------------------------------------------------- access log

ACCESS_LOGGER_NAME = "edge.access"


class EdgeAccessLogger(AbstractAccessLogger):
    """`<client> "<METHOD> <path>" <status> <bytes> <ms>ms <request id>`, with the same values
    as `extra` fields for JSON logs.

    Cheaper than aiohttp's Apache-style AccessLogger, which walks a format string and renders
    its own local timestamp for every request although the log formatter stamps each line
    anyway. The path is the raw request target, as the client sent it."""

    @property
    def enabled(self) -> bool:
        """False when the logger would drop INFO lines: then aiohttp does not call `log` at all."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Logs one request; `time` is how long the handler took, in seconds."""
        log_request(self.logger, request, response.status, response.body_length, time)


def log_request(logger: logging.Logger, request: web.BaseRequest, status: int, sent: int, seconds: float) -> None:
    """One access-log line (see EdgeAccessLogger)."""
    remote = request.remote or "-"
    request_id = request.get(REQUEST_ID_KEY, "-")
    duration_ms = round(seconds * 1000, 1)
    logger.info(
        '%s "%s %s" %s %s %sms %s',
        remote,
        request.method,
        request.raw_path,
        status,
        sent,
        duration_ms,
        request_id,
        extra={
            "remote": remote,
            "method": request.method,
            "path": request.raw_path,
            "status": status,
            "bytes": sent,
            "duration_ms": duration_ms,
            "request_id": request_id,
        },
    )


def log_client_hang_up(request: web.Request, served: web.StreamResponse | None, seconds: float) -> None:
    """The access-log line of a request whose client hung up, which aiohttp does not log (it
    cancels the handler): 499 before any answer, as nginx logs it, else the status and the
    bytes of the stream it was being `served`."""
    if not request.app[SETTINGS_KEY].access_log:
        return
    logger = logging.getLogger(ACCESS_LOGGER_NAME)
    if served is None:
        log_request(logger, request, CLIENT_CLOSED_REQUEST, 0, seconds)
    else:
        log_request(logger, request, served.status, served.body_length, seconds)


def access_logger(enabled: bool) -> logging.Logger | None:
    """The logger to pass to aiohttp's runner as `access_log` (None turns the log off)."""
    return logging.getLogger(ACCESS_LOGGER_NAME) if enabled else None
