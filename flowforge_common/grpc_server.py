"""gRPC server bootstrap: interceptors, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from flowforge_common.auth import TokenVerifier
from flowforge_common.interceptors import ApiKeyResolver, ServiceInterceptor
from flowforge_common.policy import policy_table
from flowforge_common.service_identity import ServiceCredential
from flowforge_common.telemetry import tracing_enabled

logger = logging.getLogger(__name__)

Registration = Callable[[grpc.aio.Server], None]


@dataclass
class GrpcServer:
    """A started server, its bound port, and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]
    background: list[asyncio.Task[Any]] = field(default_factory=list)

    async def set_serving(self, serving: bool) -> None:
        """Flips every service's health status (and the overall one)."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Stops accepting calls, lets in-flight ones finish for `grace` seconds."""
        for task in self.background:
            task.cancel()
        for task in self.background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc_server(
    *,
    host: str,
    port: int,
    services: Sequence[ServiceDescriptor],
    registrations: Iterable[Registration],
    verifier: TokenVerifier,
    api_key_resolver: ApiKeyResolver | None = None,
    service_credential: ServiceCredential | None = None,
    readiness: Callable[[], Awaitable[bool]] | None = None,
    readiness_interval: float = 5.0,
) -> GrpcServer:
    """Starts a `grpc.aio` server with the FlowForge interceptor (and OpenTelemetry's when
    tracing is on), health and reflection; `port` 0 binds a free port. `readiness` (e.g. a
    database ping) drives the health status."""
    interceptors: list[grpc.aio.ServerInterceptor] = [
        ServiceInterceptor(policy_table(services), verifier, api_key_resolver, service_credential)
    ]
    if tracing_enabled():
        interceptors.insert(0, aio_server_interceptor())
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.so_reuseport", 0)],
    )
    for register in registrations:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [service.full_name for service in services]
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    await server.start()
    started = GrpcServer(server=server, port=bound, health=health_servicer, service_names=names)
    await started.set_serving(readiness is None or await readiness())
    if readiness is not None:
        started.background.append(asyncio.create_task(_watch_readiness(started, readiness, readiness_interval)))
    logger.info("gRPC server listening", extra={"address": f"{host}:{bound}", "services": names})
    return started


async def _watch_readiness(server: GrpcServer, readiness: Callable[[], Awaitable[bool]], interval: float) -> None:
    last = True
    while True:
        await asyncio.sleep(interval)
        ready = await readiness()
        if ready != last:
            logger.warning("readiness changed", extra={"ready": ready})
            await server.set_serving(ready)
            last = ready


async def wait_for_termination() -> None:
    """Returns on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
