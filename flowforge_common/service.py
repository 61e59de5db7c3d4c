"""Lifecycle of one service process: start, serve until SIGTERM, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from grpc.aio import Channel
from prometheus_client import start_http_server
from sqlalchemy.ext.asyncio import AsyncEngine

from flowforge_common.grpc_server import GrpcServer, wait_for_termination
from flowforge_common.runtime import tune_gc
from flowforge_common.settings import ServiceSettings
from flowforge_common.telemetry import setup_logging, setup_tracing

logger = logging.getLogger(__name__)


@dataclass
class RunningService:
    """A started service: its gRPC server, database engine and outbound channels."""

    grpc: GrpcServer
    engine: AsyncEngine | None = None
    channels: list[Channel] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The bound gRPC port."""
        return self.grpc.port

    async def stop(self, grace: float = 5.0) -> None:
        """Drains in-flight RPCs, then closes channels and the engine."""
        await self.grpc.stop(grace)
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                await close()
        for channel in self.channels:
            await channel.close()
        if self.engine is not None:
            await self.engine.dispose()


S = TypeVar("S", bound=ServiceSettings)


def run(create: Callable[[S], Awaitable[RunningService]], settings: S) -> None:
    """Entry point of `python -m <service>`."""
    setup_logging(settings.log_level, settings.log_format)
    setup_tracing(f"flowforge-{settings.service_name}")
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host)

    async def main() -> None:
        service = await create(settings)
        tune_gc(settings.gc_threshold)
        logger.info("%s ready on %s:%s", settings.service_name, settings.host, service.port)
        await wait_for_termination()
        logger.info("%s shutting down", settings.service_name)
        await service.stop(settings.shutdown_grace_seconds)

    asyncio.run(main())
