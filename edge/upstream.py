"""The FlowForge services behind the edge: their descriptors, channels, calls and health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge.settings import SETTINGS_KEY, EdgeSettings
from flowforge.auth.v1 import auth_service_pb2
from flowforge.execution.v1 import execution_service_pb2
from flowforge.workflow.v1 import agent_service_pb2, workflow_service_pb2
from flowforge_common.clients import open_channel

# Every service the edge fronts, and which settings target serves it.
UPSTREAM_SERVICES: Sequence[tuple[ServiceDescriptor, Callable[[EdgeSettings], str]]] = (
    (auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"], lambda s: s.auth_target),
    (agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"], lambda s: s.workflow_target),
    (workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"], lambda s: s.workflow_target),
    (execution_service_pb2.DESCRIPTOR.services_by_name["ExecutionService"], lambda s: s.execution_target),
)
SERVICES: tuple[ServiceDescriptor, ...] = tuple(service for service, _ in UPSTREAM_SERVICES)


class Upstreams:
    """One channel per distinct target, looked up by the full name of the service it serves."""

    def __init__(self, channels: Mapping[str, grpc.aio.Channel]) -> None:
        self._channels = dict(channels)
        self._callables: dict[str, Any] = {}

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel that reaches `service` (its full name), e.g. for auth_svc's JWKS."""
        return self._channels[service]

    async def call(
        self,
        service: str,
        rpc_path: str,
        request: Message,
        response_type: type[Message],
        *,
        metadata: Sequence[tuple[str, str]],
        deadline_seconds: float,
    ) -> Message:
        """Calls a unary RPC (`/pkg.Service/Method`); AioRpcError on failure."""
        multicallable = self._callables.get(rpc_path)
        if multicallable is None:
            multicallable = self._channels[service].unary_unary(
                rpc_path,
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=response_type.FromString,
            )
            self._callables[rpc_path] = multicallable
        response: Message = await multicallable(request, metadata=tuple(metadata), timeout=deadline_seconds)
        return response

    def stream(
        self,
        service: str,
        rpc_path: str,
        request: Message,
        response_type: type[Message],
        *,
        metadata: Sequence[tuple[str, str]],
    ) -> grpc.aio.UnaryStreamCall:
        """Opens a server-streaming RPC (no deadline: a watch lives as long as its client)."""
        multicallable = self._callables.get(rpc_path)
        if multicallable is None:
            multicallable = self._channels[service].unary_stream(
                rpc_path,
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=response_type.FromString,
            )
            self._callables[rpc_path] = multicallable
        call: grpc.aio.UnaryStreamCall = multicallable(request, metadata=tuple(metadata))
        return call

    async def health(self, deadline_seconds: float) -> dict[str, str]:
        """`grpc.health.v1` status of every service, lower-cased (`serving`, `not_serving`, or
        the gRPC code of a failed check such as `unavailable`). Services flip to NOT_SERVING
        when their database is down, so this covers the databases too."""

        async def check(service: str) -> str:
            stub = health_pb2_grpc.HealthStub(self._channels[service])
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=deadline_seconds)
            except grpc.aio.AioRpcError as error:
                return str(error.code().name).lower()
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)).lower()

        names = list(self._channels)
        statuses = await asyncio.gather(*(check(name) for name in names))
        return dict(zip(names, statuses, strict=True))


UPSTREAMS_KEY = web.AppKey("upstreams", Upstreams)


async def upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: opens one channel per distinct target at startup, closes them at shutdown."""
    settings = app[SETTINGS_KEY]
    by_target: dict[str, grpc.aio.Channel] = {}
    channels: dict[str, grpc.aio.Channel] = {}
    for service, target_of in UPSTREAM_SERVICES:
        target = target_of(settings)
        if target not in by_target:
            by_target[target] = open_channel(target)
        channels[service.full_name] = by_target[target]
    app[UPSTREAMS_KEY] = Upstreams(channels)
    try:
        yield
    finally:
        await asyncio.gather(*(channel.close() for channel in by_target.values()))
