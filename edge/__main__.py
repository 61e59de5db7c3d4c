"""`python -m edge`: serves the REST edge until SIGTERM/SIGINT, then drains in-flight requests."""

from __future__ import annotations

import logging

from aiohttp import web

from edge.app import create_app, runner_options
from edge.settings import SETTINGS_KEY, EdgeSettings
from flowforge_common.runtime import tune_gc
from flowforge_common.telemetry import setup_logging, setup_tracing

logger = logging.getLogger("edge")


def main() -> None:
    """Builds the settings and runs the app (served as `runner_options` says); aiohttp turns
    SIGTERM into a graceful shutdown that waits up to `shutdown_grace_seconds` for in-flight
    requests, then runs cleanup (closing the gRPC channels)."""
    settings = EdgeSettings()
    setup_logging(settings.log_level, settings.log_format)
    setup_tracing("flowforge-edge")
    app = create_app(settings)
    app.on_startup.append(_tune_gc)
    logger.info("edge listening on %s:%s", settings.host, settings.port)
    web.run_app(app, host=settings.host, port=settings.port, print=None, **runner_options(settings))


async def _tune_gc(app: web.Application) -> None:
    # After the cleanup contexts opened the channels: what is alive now is frozen out of
    # garbage collection, as in the services (`FLOWFORGE_GC_THRESHOLD`).
    tune_gc(app[SETTINGS_KEY].gc_threshold)


if __name__ == "__main__":
    main()
