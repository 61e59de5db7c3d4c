"""The execution engine's view of agent calls, asked over gRPC (`GetAgentCallStats`)."""

from __future__ import annotations

import logging

import grpc

from flowforge.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from flowforge_common.service_identity import ServiceCredential
from workflow_svc.api.mappers import CIRCUITS_FROM_PROTO
from workflow_svc.domain.models import AgentCallStats, CircuitState

logger = logging.getLogger(__name__)


class ExecutionCallStats:
    """`AgentCallStatsSource` over execution_svc's internal RPC, with the service token. An
    engine that does not answer quickly leaves the status to the health probes."""

    def __init__(self, channel: grpc.aio.Channel, credential: ServiceCredential, *, timeout: float = 1.0) -> None:
        self._stub = execution_service_pb2_grpc.ExecutionServiceStub(channel)
        self._credential = credential
        self._timeout = timeout

    async def call_stats(self, tenant_id: str, agent_name: str) -> AgentCallStats | None:
        """See `AgentCallStatsSource.call_stats`."""
        try:
            response = await self._stub.GetAgentCallStats(
                execution_service_pb2.GetAgentCallStatsRequest(agent_name=agent_name),
                metadata=self._credential.metadata(tenant_id),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            logger.warning("execution_svc did not report agent call stats: %s", exc.code().name)
            return None
        return AgentCallStats(
            circuit=CIRCUITS_FROM_PROTO.get(response.circuit, CircuitState.CLOSED),
            in_flight=response.in_flight,
            recent_calls=response.recent_calls,
            recent_success_rate=response.recent_success_rate,
            p50_latency_ms=response.p50_latency_ms,
        )
