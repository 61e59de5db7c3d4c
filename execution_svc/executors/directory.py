"""Agent directories: where the executor learns an agent's URL, credentials and defaults."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import grpc

from execution_svc.domain.definition import RetryOverrides
from execution_svc.domain.ports import AgentEndpoint
from flowforge.workflow.v1 import agent_pb2, agent_service_pb2, agent_service_pb2_grpc
from flowforge_common.errors import ConflictError, NotFoundError, UnavailableError
from flowforge_common.service_identity import ServiceCredential


class InMemoryAgentDirectory:
    """Agents registered by hand (tests, embedded experiments)."""

    def __init__(self) -> None:
        self._agents: dict[tuple[str, str], AgentEndpoint] = {}

    def register(self, tenant_id: str, endpoint: AgentEndpoint) -> None:
        """Adds or replaces the tenant's agent of that name."""
        self._agents[(tenant_id, endpoint.name)] = endpoint

    async def resolve(self, tenant_id: str, name: str) -> AgentEndpoint:
        """See `AgentDirectory.resolve`."""
        try:
            return self._agents[(tenant_id, name)]
        except KeyError:
            raise NotFoundError(f"agent {name!r} is not registered") from None


class WorkflowServiceAgentDirectory:
    """Agents resolved from workflow_svc's internal `ResolveAgent` RPC with the service token,
    cached for a few seconds so that a busy run does not ask once per step, while a changed URL,
    rotated credential or deactivation reaches new calls within `ttl_seconds`."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        credential: ServiceCredential,
        *,
        ttl_seconds: float = 5.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        self._credential = credential
        self._ttl = ttl_seconds
        self._timeout = timeout
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, AgentEndpoint]] = {}

    async def resolve(self, tenant_id: str, name: str) -> AgentEndpoint:
        """See `AgentDirectory.resolve`; only found agents are cached."""
        key = (tenant_id, name)
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        try:
            response = await self._stub.ResolveAgent(
                agent_service_pb2.ResolveAgentRequest(name=name),
                metadata=self._credential.metadata(tenant_id),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            self._cache.pop(key, None)
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(f"agent {name!r} is not registered") from exc
            if exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
                raise ConflictError(exc.details() or f"agent {name!r} takes no calls") from exc
            raise UnavailableError(f"workflow_svc could not resolve agent {name!r}: {exc.code().name}") from exc
        endpoint = endpoint_from_proto(response.agent, response.credential_headers)
        self._cache[key] = (self._clock() + self._ttl, endpoint)
        return endpoint


def endpoint_from_proto(agent: agent_pb2.Agent, headers: Mapping[str, str]) -> AgentEndpoint:
    """How to call the agent that workflow_svc describes."""
    retry = agent.retry_config
    return AgentEndpoint(
        name=agent.name,
        url=agent.url,
        headers=dict(headers),
        timeout_ms=agent.timeout_ms or None,
        retry=RetryOverrides(
            max_retries=retry.max_retries if retry.HasField("max_retries") else None,
            initial_delay_ms=retry.initial_delay_ms if retry.HasField("initial_delay_ms") else None,
            max_delay_ms=retry.max_delay_ms if retry.HasField("max_delay_ms") else None,
            backoff_multiplier=retry.backoff_multiplier if retry.HasField("backoff_multiplier") else None,
            non_retryable_status=frozenset(retry.non_retryable_status) or None,
        ),
    )


class StaticAgentDirectory:
    """The same agents (name -> URL, no credentials) for every tenant, from
    `FLOWFORGE_EXECUTION_STATIC_AGENTS`: development, benchmarks and process-level tests."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        self._agents = {name: AgentEndpoint(name=name, url=url, headers={}) for name, url in urls.items()}

    async def resolve(self, _tenant_id: str, name: str) -> AgentEndpoint:
        """See `AgentDirectory.resolve`."""
        try:
            return self._agents[name]
        except KeyError:
            raise NotFoundError(f"agent {name!r} is not configured") from None
