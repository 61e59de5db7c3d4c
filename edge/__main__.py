"""`python -m edge`: serves the REST edge until SIGTERM/SIGINT, then drains in-flight requests."""

from __future__ import annotations

import logging

from aiohttp import web

from edge.app import create_app
from edge.settings import EdgeSettings
from flowforge_common.telemetry import setup_logging, setup_tracing

logger = logging.getLogger("edge")


def main() -> None:
    """Builds the settings and runs the app; aiohttp turns SIGTERM into a graceful shutdown
    that waits up to `shutdown_grace_seconds` for in-flight requests, then runs cleanup
    (closing the gRPC channels)."""
    settings = EdgeSettings()
    setup_logging(settings.log_level, settings.log_format)
    setup_tracing("flowforge-edge")
    logger.info("edge listening on %s:%s", settings.host, settings.port)
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_grace_seconds,
        print=None,
    )


if __name__ == "__main__":
    main()
