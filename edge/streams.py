"""Live event routes (SSE and WebSocket relays of WatchRun/WatchEvents). They are built by a
later milestone; until then they answer 501 so that clients see the contract's paths."""

from __future__ import annotations

from typing import NoReturn

from aiohttp import web

from edge.problems import ProblemError

STREAM_PATHS = ("/api/v1/runs/{id}/events", "/api/v1/events", "/api/v1/ws")


async def not_implemented_yet(_request: web.Request) -> NoReturn:
    """501 problem+json."""
    raise ProblemError(501, "live event streams are not implemented yet", "UNIMPLEMENTED")


def add_stream_routes(app: web.Application) -> None:
    """Registers the placeholder stream routes."""
    for path in STREAM_PATHS:
        app.router.add_get(path, not_implemented_yet, allow_head=False)
