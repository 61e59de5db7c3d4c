"""Agent health: probing an agent's health endpoint now, and the status workflow_svc reports
from the probes it recorded.

The probe itself (HTTP, network policy) sits behind `HealthProber`, so this module stays plain
Python; `workflow_svc.http_probe` is the implementation the server wires in.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Final, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from flowforge_common.auth import Principal
from flowforge_common.ids import new_id
from workflow_svc.db import repository
from workflow_svc.domain.models import AgentCallStats, AgentRuntimeStatus, AgentSpec, AgentStatus, HealthProbe
from workflow_svc.domain.service import AgentRegistry, credential_headers

RECENT_PROBES: Final = 20
"""How many probes per agent are kept, and what `recent` means in the status."""
PROBE_ID_PREFIX: Final = "prb"


class HealthProber(Protocol):
    """Sends one health probe; never raises for the agent's failures, it reports them."""

    async def probe(self, url: str, headers: Mapping[str, str], *, timeout_ms: int) -> HealthProbe:
        """GETs `url` with `headers` within `timeout_ms`; healthy on a 2xx answer."""
        ...


def health_url(spec: AgentSpec) -> str:
    """Where an agent is probed: its `health_url`, else `url + "/health"` (API.md), without
    doubling a trailing slash of `url`."""
    return spec.health_url or spec.url.rstrip("/") + "/health"


class AgentCallStatsSource(Protocol):
    """The execution engine's view of its calls to an agent."""

    async def call_stats(self, tenant_id: str, agent_name: str) -> AgentCallStats | None:
        """The figures, or None when the engine cannot be asked now."""
        ...


def runtime_status(
    status: AgentStatus, probes: Sequence[HealthProbe], calls: AgentCallStats | None = None
) -> AgentRuntimeStatus:
    """The status of an agent: the engine's circuit and load when it answered; the success rate
    and median latency of its recent calls, or without calls of the recent probes (the share
    that was healthy, an observed median: the lower middle for an even count); 0 without either."""
    if calls is not None and calls.recent_calls:
        rate, latency = calls.recent_success_rate, calls.p50_latency_ms
    elif probes:
        rate = sum(1 for probe in probes if probe.healthy) / len(probes)
        latency = statistics.median_low(probe.latency_ms for probe in probes)
    else:
        rate, latency = 0.0, 0
    return AgentRuntimeStatus(
        status=status,
        recent_success_rate=rate,
        p50_latency_ms=latency,
        in_flight=calls.in_flight if calls is not None else 0,
        circuit=calls.circuit if calls is not None else None,
    )


class AgentHealthMonitor:
    """Probes the caller's agents and reports what the probes showed."""

    def __init__(
        self,
        registry: AgentRegistry,
        sessions: async_sessionmaker[AsyncSession],
        prober: HealthProber,
        calls: AgentCallStatsSource | None = None,
    ) -> None:
        self._registry = registry
        self._sessions = sessions
        self._prober = prober
        self._calls = calls

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
        """The agent's status, merged from the engine's calls and the recent probes (see
        `runtime_status`)."""
        agent = await self._registry.get_agent(principal, agent_id)
        async with self._sessions.begin() as session:
            probes = await repository.recent_health_probes(session, agent.tenant_id, agent.id, limit=RECENT_PROBES)
        calls = None if self._calls is None else await self._calls.call_stats(agent.tenant_id, agent.spec.name)
        return runtime_status(agent.spec.status, probes, calls)
