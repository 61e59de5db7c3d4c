"""Audit log persistence: append-only entries, written by the use cases in the transaction of the
change they record. Functions take an AsyncSession, never commit, always filter on the tenant."""

from __future__ import annotations

from sqlalchemy import insert, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from workflow_svc.db.orm import AuditEntryRow
from workflow_svc.domain.models import AuditEntry, AuditQuery


async def insert_audit_entry(session: AsyncSession, entry: AuditEntry) -> None:
    """Appends one entry."""
    await session.execute(
        insert(AuditEntryRow).values(
            id=entry.id,
            tenant_id=entry.tenant_id,
            actor=entry.actor,
            action=entry.action,
            entity_type=entry.entity_type,
            entity_id=entry.entity_id,
            change=dict(entry.change),
            created_at=entry.created_at,
        )
    )


async def list_audit_entries(session: AsyncSession, tenant_id: str, query: AuditQuery) -> list[AuditEntry]:
    """Up to `query.limit` entries of the tenant, newest first by (created_at, id), strictly
    before the keyset position of the query, matching its filters."""
    statement = select(AuditEntryRow).where(AuditEntryRow.tenant_id == tenant_id)
    if query.entity_type:
        statement = statement.where(AuditEntryRow.entity_type == query.entity_type)
    if query.entity_id:
        statement = statement.where(AuditEntryRow.entity_id == query.entity_id)
    if query.actor:
        statement = statement.where(AuditEntryRow.actor == query.actor)
    if query.before_created_at is not None:
        before = literal(query.before_created_at, AuditEntryRow.created_at.type)
        if query.before_id:
            statement = statement.where(
                tuple_(AuditEntryRow.created_at, AuditEntryRow.id) < tuple_(before, literal(query.before_id))
            )
        else:
            statement = statement.where(AuditEntryRow.created_at < before)
    rows = await session.scalars(
        statement.order_by(AuditEntryRow.created_at.desc(), AuditEntryRow.id.desc()).limit(query.limit)
    )
    return [
        AuditEntry(
            id=row.id,
            tenant_id=row.tenant_id,
            actor=row.actor,
            action=row.action,
            entity_type=row.entity_type,
            entity_id=row.entity_id,
            change=row.change,
            created_at=row.created_at,
        )
        for row in rows
    ]
