"""Agent health: probing an agent's health endpoint now, and the status workflow_svc reports
from the probes it recorded.

The probe itself (HTTP, network policy) sits behind `HealthProber`, so this module stays plain
Python; `workflow_svc.http_probe` is the implementation the server wires in.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flowforge_common.auth import Principal
from flowforge_common.ids import new_id
from workflow_svc.db import repository
from workflow_svc.domain.models import AgentRuntimeStatus, AgentSpec, AgentStatus, AuthType, HealthProbe
from workflow_svc.domain.service import AgentRegistry

RECENT_PROBES: Final = 20
"""How many probes per agent are kept, and what `recent` means in the status."""
PROBE_ID_PREFIX: Final = "prb"
DEFAULT_APIKEY_HEADER: Final = "X-API-Key"


class HealthProber(Protocol):
    """Sends one health probe; never raises for the agent's failures, it reports them."""

    async def probe(self, url: str, headers: Mapping[str, str], *, timeout_ms: int) -> HealthProbe:
        """GETs `url` with `headers` within `timeout_ms`; healthy on a 2xx answer."""
        ...


def health_url(spec: AgentSpec) -> str:
    """Where an agent is probed: its `health_url`, else `url + "/health"` (API.md), without
    doubling a trailing slash of `url`."""
    return spec.health_url or spec.url.rstrip("/") + "/health"


def credential_headers(auth_type: AuthType, credentials: Mapping[str, Any]) -> dict[str, str]:
    """The headers that carry an agent's credentials (validated when they were stored)."""
    if auth_type is AuthType.BEARER:
        return {"Authorization": f"Bearer {credentials['token']}"}
    if auth_type is AuthType.APIKEY:
        return {str(credentials.get("header") or DEFAULT_APIKEY_HEADER): str(credentials["key"])}
    return {}


def runtime_status(status: AgentStatus, probes: Sequence[HealthProbe]) -> AgentRuntimeStatus:
    """The status of an agent from its recent probes: the share that was healthy and the median
    latency (an observed one: the lower middle for an even count); both 0 without probes."""
    if not probes:
        return AgentRuntimeStatus(status=status, recent_success_rate=0.0, p50_latency_ms=0)
    healthy = sum(1 for probe in probes if probe.healthy)
    return AgentRuntimeStatus(
        status=status,
        recent_success_rate=healthy / len(probes),
        p50_latency_ms=statistics.median_low(probe.latency_ms for probe in probes),
    )


class AgentHealthMonitor:
    """Probes the caller's agents and reports what the probes showed."""

    def __init__(
        self, registry: AgentRegistry, sessions: async_sessionmaker[AsyncSession], prober: HealthProber
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._prober = prober

    async def check_health(self, principal: Principal, agent_id: str) -> HealthProbe:
        """Probes the tenant's agent now, with its timeout and credentials, and records the
        outcome. No transaction is open while the probe runs."""
        agent = await self._registry.get_agent(principal, agent_id)
        headers = credential_headers(agent.spec.auth_type, self._registry.open_credentials(agent))
        probe = await self._prober.probe(health_url(agent.spec), headers, timeout_ms=agent.spec.timeout_ms)
        async with self._sessions.begin() as session:
            await repository.insert_health_probe(
                session, new_id(PROBE_ID_PREFIX), agent.tenant_id, agent.id, probe, keep=RECENT_PROBES
            )
        return probe

    async def agent_status(self, principal: Principal, agent_id: str) -> AgentRuntimeStatus:
        """The agent's status and the success rate and median latency of its recent probes."""
        agent = await self._registry.get_agent(principal, agent_id)
        async with self._sessions.begin() as session:
            probes = await repository.recent_health_probes(session, agent.tenant_id, agent.id, limit=RECENT_PROBES)
        return runtime_status(agent.spec.status, probes)
