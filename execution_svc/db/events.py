"""Event-log queries of the watchers (WatchRun, WatchEvents): functions taking an AsyncSession.

`events.id` is the log position. It is allocated at insert time, so on PostgreSQL a position
can become visible after a higher one (two transactions of different runs commit out of
order); `positions_after` lets the watcher see such holes and wait for them to fill.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from execution_svc.db.orm import events
from execution_svc.db.repository import event_from_row
from execution_svc.domain.models import LoggedEvent


async def head_position(session: AsyncSession) -> int:
    """The highest committed log position (0 for an empty log)."""
    value = await session.scalar(select(func.max(events.c.id)))
    return int(value or 0)


async def positions_after(session: AsyncSession, after: int, *, limit: int) -> list[tuple[int, dt.datetime]]:
    """Committed positions after `after` with their event times, in order, across every
    tenant: only to find holes (positions still in flight). Never returned to a caller."""
    result = await session.execute(
        select(events.c.id, events.c.timestamp).where(events.c.id > after).order_by(events.c.id).limit(limit)
    )
    return [(int(row.id), row.timestamp) for row in result]


async def list_log_events(
    session: AsyncSession,
    tenant_id: str,
    *,
    after: int,
    up_to: int,
    workflow_id: str = "",
    run_id: str = "",
    types: Collection[str] = (),
) -> list[LoggedEvent]:
    """The tenant's events with `after < position <= up_to`, optionally filtered, in log order."""
    query = select(events).where(events.c.tenant_id == tenant_id, events.c.id > after, events.c.id <= up_to)
    if workflow_id:
        query = query.where(events.c.workflow_id == workflow_id)
    if run_id:
        query = query.where(events.c.run_id == run_id)
    if types:
        query = query.where(events.c.type.in_(sorted(types)))
    result = await session.execute(query.order_by(events.c.id))
    return [LoggedEvent(position=int(row.id), event=event_from_row(row)) for row in result]
