"""`create_app(settings)`: the edge's aiohttp application."""

from __future__ import annotations

from functools import partial
from typing import Any

import aiohttp.web_response
from aiohttp import web

from edge.authn import ROUTE_ACCESS_KEY, authentication_middleware, authenticator_ctx, route_table
from edge.metrics import METRICS_KEY, EdgeMetrics
from edge.middlewares import (
    SECURITY_HEADERS,
    EdgeAccessLogger,
    access_logger,
    add_standard_headers,
    cors_middleware,
    errors_middleware,
    header_limit_middleware,
    metrics_middleware,
    request_id_middleware,
)
from edge.openapi import OPENAPI_KEY, OpenApiDocuments
from edge.ratelimit import rate_limit_middleware, rate_limiter_ctx
from edge.settings import SETTINGS_KEY, EdgeSettings
from edge.streams import add_stream_routes
from edge.system import add_system_routes
from edge.transcoder import add_transcoded_routes, bindings_for
from edge.upstream import SERVICES, upstreams_ctx
from flowforge_common.auth import TokenVerifier


def hide_server_versions() -> None:
    """Answers that aiohttp writes without the application (requests its HTTP parser refuses)
    name their server `FlowForge`, not its Python and aiohttp versions: aiohttp offers no
    setting for it, only this module constant."""
    aiohttp.web_response.SERVER_SOFTWARE = SECURITY_HEADERS["Server"]  # type: ignore[attr-defined]


def create_app(settings: EdgeSettings, *, verifier: TokenVerifier | None = None) -> web.Application:
    """The edge: system routes, placeholder stream routes and one route per annotated RPC.

    gRPC channels open at startup and close at cleanup; the OpenAPI document is generated
    here, once. `verifier` overrides the credentials verifier built over auth_svc (tests)."""
    hide_server_versions()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            request_id_middleware,
            metrics_middleware,
            errors_middleware,
            header_limit_middleware,
            cors_middleware,
            authentication_middleware,
            rate_limit_middleware,
        ],
    )
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = EdgeMetrics.create()
    bindings = bindings_for(SERVICES)
    app[OPENAPI_KEY] = OpenApiDocuments.build(bindings)
    app.cleanup_ctx.append(upstreams_ctx)
    app.cleanup_ctx.append(partial(authenticator_ctx, verifier=verifier))
    app.cleanup_ctx.append(rate_limiter_ctx)
    app.on_response_prepare.append(add_standard_headers)
    add_system_routes(app)
    add_stream_routes(app)
    add_transcoded_routes(app, bindings)
    # After the last route: which routes need credentials, and which rate class each spends.
    app[ROUTE_ACCESS_KEY] = route_table(app)
    return app


def runner_options(settings: EdgeSettings) -> dict[str, Any]:
    """How the edge is served: keyword arguments of `web.run_app` (and `web.AppRunner`).

    `handler_cancellation`: a client that hangs up cancels its handler at once, and with it
    the upstream gRPC call, an SSE relay's watch included, rather than the services working
    for nobody until the next write fails (up to a heartbeat later for a stream). A cancelled
    unary call leaves no half-written state: each service writes in one transaction, which
    the cancellation rolls back or, where the service shields it, lets finish; a client that
    retries with its `Idempotency-Key` gets the first answer. The access log is the edge's
    own lean one, or none (`FLOWFORGE_ACCESS_LOG=false`)."""
    return {
        "handler_cancellation": True,
        "access_log_class": EdgeAccessLogger,
        "access_log": access_logger(settings.access_log),
        "shutdown_timeout": settings.shutdown_grace_seconds,
    }
