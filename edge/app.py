"""`create_app(settings)`: the edge's aiohttp application."""

from __future__ import annotations

from aiohttp import web

from edge.metrics import METRICS_KEY, EdgeMetrics
from edge.middlewares import (
    add_standard_headers,
    cors_middleware,
    errors_middleware,
    metrics_middleware,
    request_id_middleware,
)
from edge.openapi import OPENAPI_KEY, OpenApiDocuments
from edge.settings import SETTINGS_KEY, EdgeSettings
from edge.streams import add_stream_routes
from edge.system import add_system_routes
from edge.transcoder import add_transcoded_routes, bindings_for
from edge.upstream import SERVICES, upstreams_ctx


def create_app(settings: EdgeSettings) -> web.Application:
    """The edge: system routes, placeholder stream routes and one route per annotated RPC.

    gRPC channels open at startup and close at cleanup; the OpenAPI document is generated
    here, once."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            request_id_middleware,
            metrics_middleware,
            errors_middleware,
            cors_middleware,
            # authentication, then rate limiting, go here (later milestone)
        ],
    )
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = EdgeMetrics.create()
    bindings = bindings_for(SERVICES)
    app[OPENAPI_KEY] = OpenApiDocuments.build(bindings)
    app.cleanup_ctx.append(upstreams_ctx)
    app.on_response_prepare.append(add_standard_headers)
    add_system_routes(app)
    add_stream_routes(app)
    add_transcoded_routes(app, bindings)
    return app
