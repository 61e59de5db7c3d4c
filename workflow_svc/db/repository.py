"""Agent persistence (agents, capabilities, health probes): functions that take an AsyncSession,
never commit, and always filter on the tenant, so that no caller can reach another tenant's rows
by forgetting a condition."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from workflow_svc.db.orm import AgentCapabilityRow, AgentHealthProbeRow, AgentRow
from workflow_svc.domain.errors import AgentNameTakenError
from workflow_svc.domain.models import (
    Agent,
    AgentFilter,
    AgentSpec,
    AgentStatus,
    AuthType,
    HealthProbe,
    RetryConfig,
)

DELETED = "deleted"
"""The status `agent_statuses` answers for a name that only deleted agents had."""


async def insert_agent(session: AsyncSession, agent: Agent) -> None:
    """Stores a new agent; AgentNameTakenError when a live agent of the tenant has its name."""
    values = {
        "id": agent.id,
        "tenant_id": agent.tenant_id,
        "created_at": agent.created_at,
        "created_by": agent.created_by,
        **_mutable_columns(agent),
    }
    try:
        await session.execute(insert(AgentRow).values(values))
    except IntegrityError as exc:
        # The live-name index is the only unique rule a new row can break: ids are random.
        raise AgentNameTakenError(agent.spec.name) from exc
    await _insert_capabilities(session, agent)


async def get_agent(session: AsyncSession, tenant_id: str, agent_id: str) -> Agent | None:
    """The live agent with this id in the tenant, or None."""
    row = await session.scalar(
        select(AgentRow).where(AgentRow.tenant_id == tenant_id, AgentRow.id == agent_id, AgentRow.deleted_at.is_(None))
    )
    if row is None:
        return None
    return (await _agents_from_rows(session, tenant_id, [row]))[0]


async def list_agents(
    session: AsyncSession, tenant_id: str, agent_filter: AgentFilter, *, limit: int, before_id: str | None
) -> list[Agent]:
    """Up to `limit` live agents of the tenant matching the filter, newest (highest id) first,
    starting after the cursor `before_id`. Ids are time-sortable, so rows inserted while a client
    pages get higher ids and never shift later pages."""
    query = select(AgentRow).where(AgentRow.tenant_id == tenant_id, AgentRow.deleted_at.is_(None))
    if agent_filter.status is not None:
        query = query.where(AgentRow.status == agent_filter.status.value)
    if agent_filter.name_prefix:
        # substr, not LIKE: LIKE ignores case on SQLite and would need escaping of `_` and `%`.
        prefix = agent_filter.name_prefix
        query = query.where(func.substr(AgentRow.name, 1, len(prefix)) == prefix)
    if agent_filter.capability:
        query = query.where(
            AgentRow.id.in_(
                select(AgentCapabilityRow.agent_id).where(
                    AgentCapabilityRow.tenant_id == tenant_id,
                    AgentCapabilityRow.capability == agent_filter.capability,
                )
            )
        )
    if before_id is not None:
        query = query.where(AgentRow.id < before_id)
    rows = (await session.scalars(query.order_by(AgentRow.id.desc()).limit(limit))).all()
    return await _agents_from_rows(session, tenant_id, rows)


async def update_agent(session: AsyncSession, agent: Agent, *, expected_etag: str) -> bool:
    """Writes the agent's new state if it is still live with `expected_etag` (compare-and-set,
    so two concurrent updates cannot both win); False when it is not."""
    try:
        updated = await session.scalar(
            update(AgentRow)
            .where(
                AgentRow.tenant_id == agent.tenant_id,
                AgentRow.id == agent.id,
                AgentRow.etag == expected_etag,
                AgentRow.deleted_at.is_(None),
            )
            .values(_mutable_columns(agent))
            .returning(AgentRow.id)
            .execution_options(synchronize_session=False)
        )
    except IntegrityError as exc:
        raise AgentNameTakenError(agent.spec.name) from exc
    if updated is None:
        return False
    await session.execute(
        delete(AgentCapabilityRow).where(
            AgentCapabilityRow.tenant_id == agent.tenant_id, AgentCapabilityRow.agent_id == agent.id
        )
    )
    await _insert_capabilities(session, agent)
    return True


async def soft_delete_agent(session: AsyncSession, tenant_id: str, agent_id: str, *, at: dt.datetime) -> bool:
    """Marks the live agent deleted (its name becomes free); False when there is none."""
    deleted = await session.scalar(
        update(AgentRow)
        .where(AgentRow.tenant_id == tenant_id, AgentRow.id == agent_id, AgentRow.deleted_at.is_(None))
        .values(deleted_at=at, updated_at=at)
        .returning(AgentRow.id)
        .execution_options(synchronize_session=False)
    )
    return deleted is not None


async def get_agent_by_name(session: AsyncSession, tenant_id: str, name: str) -> Agent | None:
    """The live agent called `name` in the tenant, or None."""
    row = await session.scalar(
        select(AgentRow).where(AgentRow.tenant_id == tenant_id, AgentRow.name == name, AgentRow.deleted_at.is_(None))
    )
    if row is None:
        return None
    return (await _agents_from_rows(session, tenant_id, [row]))[0]


async def agent_statuses(session: AsyncSession, tenant_id: str, names: Collection[str]) -> dict[str, str]:
    """Name -> status of the tenant's agents with these names: the live agent's status
    (`active`, `inactive`), else DELETED when only deleted agents had the name; names no agent
    ever had are absent. Workflow validation reads it to refuse unusable agents."""
    if not names:
        return {}
    rows = await session.execute(
        select(AgentRow.name, AgentRow.status, AgentRow.deleted_at).where(
            AgentRow.tenant_id == tenant_id, AgentRow.name.in_(sorted(names))
        )
    )
    statuses: dict[str, str] = {}
    for name, status, deleted_at in rows:
        if deleted_at is None:
            statuses[name] = status
        else:
            statuses.setdefault(name, DELETED)
    return statuses


async def insert_health_probe(
    session: AsyncSession, probe_id: str, tenant_id: str, agent_id: str, probe: HealthProbe, *, keep: int
) -> None:
    """Records a probe of the agent and forgets all but its `keep` most recent ones, so the table
    stays small however often agents are probed."""
    await session.execute(
        insert(AgentHealthProbeRow).values(
            id=probe_id,
            tenant_id=tenant_id,
            agent_id=agent_id,
            healthy=probe.healthy,
            latency_ms=probe.latency_ms,
            detail=probe.detail,
            checked_at=probe.checked_at,
        )
    )
    kept = (
        select(AgentHealthProbeRow.id)
        .where(AgentHealthProbeRow.tenant_id == tenant_id, AgentHealthProbeRow.agent_id == agent_id)
        .order_by(AgentHealthProbeRow.checked_at.desc(), AgentHealthProbeRow.id.desc())
        .limit(keep)
    )
    await session.execute(
        delete(AgentHealthProbeRow).where(
            AgentHealthProbeRow.tenant_id == tenant_id,
            AgentHealthProbeRow.agent_id == agent_id,
            AgentHealthProbeRow.id.not_in(kept.scalar_subquery()),
        )
    )


async def recent_health_probes(
    session: AsyncSession, tenant_id: str, agent_id: str, *, limit: int
) -> list[HealthProbe]:
    """The agent's most recent recorded probes, newest first."""
    rows = await session.scalars(
        select(AgentHealthProbeRow)
        .where(AgentHealthProbeRow.tenant_id == tenant_id, AgentHealthProbeRow.agent_id == agent_id)
        .order_by(AgentHealthProbeRow.checked_at.desc(), AgentHealthProbeRow.id.desc())
        .limit(limit)
    )
    return [
        HealthProbe(healthy=row.healthy, latency_ms=row.latency_ms, checked_at=row.checked_at, detail=row.detail)
        for row in rows
    ]


def _mutable_columns(agent: Agent) -> dict[str, Any]:
    spec = agent.spec
    return {
        "name": spec.name,
        "description": spec.description,
        "url": spec.url,
        "health_url": spec.health_url,
        "auth_type": spec.auth_type.value,
        "sealed_auth_config": agent.sealed_auth_config,
        "timeout_ms": spec.timeout_ms,
        "retry_config": dataclasses.asdict(spec.retry_config),
        "status": spec.status.value,
        "etag": agent.etag,
        "updated_at": agent.updated_at,
    }


async def _insert_capabilities(session: AsyncSession, agent: Agent) -> None:
    if agent.spec.capabilities:
        await session.execute(
            insert(AgentCapabilityRow),
            [
                {"agent_id": agent.id, "tenant_id": agent.tenant_id, "capability": capability, "position": position}
                for position, capability in enumerate(agent.spec.capabilities)
            ],
        )


async def _agents_from_rows(session: AsyncSession, tenant_id: str, rows: Sequence[AgentRow]) -> list[Agent]:
    capabilities: dict[str, list[str]] = {row.id: [] for row in rows}
    if rows:
        labels = await session.execute(
            select(AgentCapabilityRow.agent_id, AgentCapabilityRow.capability)
            .where(AgentCapabilityRow.tenant_id == tenant_id, AgentCapabilityRow.agent_id.in_(capabilities))
            .order_by(AgentCapabilityRow.agent_id, AgentCapabilityRow.position)
        )
        for agent_id, capability in labels:
            capabilities[agent_id].append(capability)
    return [_agent_from_row(row, tuple(capabilities[row.id])) for row in rows]


def _agent_from_row(row: AgentRow, capabilities: tuple[str, ...]) -> Agent:
    return Agent(
        id=row.id,
        tenant_id=row.tenant_id,
        spec=AgentSpec(
            name=row.name,
            url=row.url,
            description=row.description,
            health_url=row.health_url,
            auth_type=AuthType(row.auth_type),
            timeout_ms=row.timeout_ms,
            # Keys missing from older rows take the current defaults.
            retry_config=RetryConfig(**row.retry_config),
            capabilities=capabilities,
            status=AgentStatus(row.status),
        ),
        sealed_auth_config=row.sealed_auth_config,
        etag=row.etag,
        created_at=row.created_at,
        updated_at=row.updated_at,
        created_by=row.created_by,
    )
