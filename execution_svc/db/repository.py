"""Repository of execution_svc: functions taking an AsyncSession; they never commit.

Every query filters on `tenant_id`, except the queue's worker-side statements (claim,
heartbeat, reaper), which serve all tenants by design and hand each task's tenant back.

Lock order, to stay free of deadlocks on PostgreSQL: a transaction that changes a run locks
the run row first (`lock_run`), then touches task rows. The claim locks only task rows and
never waits (`SKIP LOCKED`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Row, and_, bindparam, delete, func, insert, literal_column, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from execution_svc.db.orm import events, idempotency_keys, run_steps, runs, step_attempts, tasks
from execution_svc.domain.models import (
    AttemptRecord,
    EventRecord,
    ExpiredTask,
    PauseReason,
    RunError,
    RunFilter,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    TaskKind,
    TaskLease,
    TaskState,
    Trigger,
)
from execution_svc.domain.state import (
    DeleteRunTasks,
    DeleteTask,
    HoldRunTasks,
    ReleaseRunTasks,
    RunState,
    TaskOp,
    UpsertTask,
)
from flowforge_common.ids import new_id

# Literals, not bound parameters: PostgreSQL matches a partial index's predicate only against
# constants, and prepared statements would otherwise get generic plans that skip it.
_IS_READY = tasks.c.state == literal_column("'ready'")
_IS_LEASED = tasks.c.state == literal_column("'leased'")
_IS_HELD = tasks.c.state == literal_column("'held'")

_STEP_UPDATE_COLUMNS = (
    "status",
    "attempt",
    "retry_base",
    "lease_losses",
    "input",
    "output",
    "error",
    "agent",
    "signal",
    "items_total",
    "ready_at",
    "deadline_at",
    "started_at",
    "completed_at",
)


# --- runs --------------------------------------------------------------------------------


def _run_from_row(row: Row[Any]) -> RunRecord:
    return RunRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        workflow_id=row.workflow_id,
        workflow_name=row.workflow_name,
        workflow_version=row.workflow_version,
        workflow=row.workflow,
        status=RunStatus(row.status),
        input=row.input,
        output=row.output,
        error=RunError.from_dict(row.error),
        trigger=Trigger(row.trigger),
        triggered_by=row.triggered_by,
        parent_run_id=row.parent_run_id,
        parent_step_id=row.parent_step_id,
        pause_reason=PauseReason(row.pause_reason) if row.pause_reason else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        last_seq=row.last_seq,
    )


def _run_values(run: RunRecord) -> dict[str, Any]:
    return {
        "status": run.status.value,
        "output": run.output,
        "error": run.error.to_dict() if run.error else None,
        "pause_reason": run.pause_reason.value if run.pause_reason else None,
        "started_at": run.started_at,
        "completed_at": run.completed_at,
        "updated_at": run.updated_at,
        "last_seq": run.last_seq,
    }


async def lock_run(session: AsyncSession, tenant_id: str, run_id: str) -> RunRecord | None:
    """The run, locked until the transaction ends (PostgreSQL `FOR UPDATE`; on SQLite the
    immediate transaction already excludes other writers)."""
    result = await session.execute(
        select(runs).where(runs.c.tenant_id == tenant_id, runs.c.id == run_id).with_for_update()
    )
    row = result.first()
    return _run_from_row(row) if row is not None else None


async def get_run(session: AsyncSession, tenant_id: str, run_id: str) -> RunRecord | None:
    """The run, unlocked."""
    result = await session.execute(select(runs).where(runs.c.tenant_id == tenant_id, runs.c.id == run_id))
    row = result.first()
    return _run_from_row(row) if row is not None else None


async def list_runs(
    session: AsyncSession, tenant_id: str, filters: RunFilter, *, limit: int, before_id: str | None
) -> list[RunRecord]:
    """Runs newest first (ids are time-ordered), after the cursor `before_id`."""
    query = select(runs).where(runs.c.tenant_id == tenant_id)
    if before_id is not None:
        query = query.where(runs.c.id < before_id)
    if filters.workflow_id:
        query = query.where(runs.c.workflow_id == filters.workflow_id)
    if filters.status is not None:
        query = query.where(runs.c.status == filters.status.value)
    if filters.trigger is not None:
        query = query.where(runs.c.trigger == filters.trigger.value)
    if filters.created_after is not None:
        query = query.where(runs.c.created_at >= filters.created_after)
    if filters.created_before is not None:
        query = query.where(runs.c.created_at < filters.created_before)
    result = await session.execute(query.order_by(runs.c.id.desc()).limit(limit))
    return [_run_from_row(row) for row in result]


# --- steps and attempts ------------------------------------------------------------------


def _step_from_row(row: Row[Any]) -> StepRecord:
    return StepRecord(
        run_id=row.run_id,
        step_id=row.step_id,
        item_index=row.item_index,
        status=StepStatus(row.status),
        attempt=row.attempt,
        retry_base=row.retry_base,
        lease_losses=row.lease_losses,
        input=row.input,
        output=row.output,
        error=RunError.from_dict(row.error),
        agent=row.agent,
        signal=row.signal,
        items_total=row.items_total,
        ready_at=row.ready_at,
        deadline_at=row.deadline_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
    )


def _step_values(step: StepRecord) -> dict[str, Any]:
    return {
        "status": step.status.value,
        "attempt": step.attempt,
        "retry_base": step.retry_base,
        "lease_losses": step.lease_losses,
        "input": step.input,
        "output": step.output,
        "error": step.error.to_dict() if step.error else None,
        "agent": step.agent,
        "signal": step.signal,
        "items_total": step.items_total,
        "ready_at": step.ready_at,
        "deadline_at": step.deadline_at,
        "started_at": step.started_at,
        "completed_at": step.completed_at,
    }


async def load_steps(session: AsyncSession, tenant_id: str, run_id: str) -> list[StepRecord]:
    """Every step row of a run, items included."""
    result = await session.execute(
        select(run_steps).where(run_steps.c.tenant_id == tenant_id, run_steps.c.run_id == run_id)
    )
    return [_step_from_row(row) for row in result]


async def load_attempts(session: AsyncSession, tenant_id: str, run_id: str) -> list[AttemptRecord]:
    """Every attempt of a run's steps, in attempt order."""
    result = await session.execute(
        select(step_attempts)
        .where(step_attempts.c.tenant_id == tenant_id, step_attempts.c.run_id == run_id)
        .order_by(step_attempts.c.step_id, step_attempts.c.item_index, step_attempts.c.attempt)
    )
    return [
        AttemptRecord(
            run_id=row.run_id,
            step_id=row.step_id,
            item_index=row.item_index,
            attempt=row.attempt,
            status=StepStatus(row.status),
            error=RunError.from_dict(row.error),
            started_at=row.started_at,
            completed_at=row.completed_at,
        )
        for row in result
    ]


# --- writing a run's changes ----------------------------------------------------------------


async def save_state(session: AsyncSession, state: RunState) -> list[TaskLease]:
    """Writes everything the scheduler changed, in this order: run, step rows, attempts,
    events, queue operations. Returns the leases of tasks dispatched eagerly."""
    run = state.run
    tenant_id = run.tenant_id
    if state.run_is_new:
        await session.execute(
            insert(runs).values(
                id=run.id,
                tenant_id=tenant_id,
                workflow_id=run.workflow_id,
                workflow_name=run.workflow_name,
                workflow_version=run.workflow_version,
                workflow=run.workflow,
                input=run.input,
                trigger=run.trigger.value,
                triggered_by=run.triggered_by,
                parent_run_id=run.parent_run_id,
                parent_step_id=run.parent_step_id,
                created_at=run.created_at,
                **_run_values(run),
            )
        )
    elif state.run_dirty:
        await session.execute(
            update(runs).where(runs.c.tenant_id == tenant_id, runs.c.id == run.id).values(**_run_values(run))
        )
    await _save_steps(session, state)
    await _save_attempts(session, state)
    if state.events:
        await session.execute(insert(events), [_event_values(event) for event in state.events])
    return await _apply_task_ops(session, tenant_id, run.id, state.task_ops)


async def _save_steps(session: AsyncSession, state: RunState) -> None:
    run = state.run
    if state.deleted:
        await session.execute(
            delete(run_steps).where(
                run_steps.c.tenant_id == run.tenant_id,
                run_steps.c.run_id == run.id,
                tuple_(run_steps.c.step_id, run_steps.c.item_index).in_(sorted(state.deleted)),
            )
        )
    if state.inserted:
        await session.execute(
            insert(run_steps),
            [
                {
                    "run_id": run.id,
                    "tenant_id": run.tenant_id,
                    "step_id": key[0],
                    "item_index": key[1],
                    **_step_values(state.rows[key]),
                }
                for key in sorted(state.inserted)
            ],
        )
    if state.updated:
        # One statement per row (executemany): each row's values differ.
        await session.execute(
            update(run_steps)
            .where(
                run_steps.c.tenant_id == run.tenant_id,
                run_steps.c.run_id == run.id,
                run_steps.c.step_id == bindparam("k_step_id"),
                run_steps.c.item_index == bindparam("k_item_index"),
            )
            .values({name: bindparam(f"v_{name}") for name in _STEP_UPDATE_COLUMNS}),
            [
                {
                    "k_step_id": key[0],
                    "k_item_index": key[1],
                    **{f"v_{k}": v for k, v in _step_values(state.rows[key]).items()},
                }
                for key in sorted(state.updated)
            ],
        )


async def _save_attempts(session: AsyncSession, state: RunState) -> None:
    run = state.run
    if state.attempts_inserted:
        await session.execute(
            insert(step_attempts),
            [
                {
                    "run_id": run.id,
                    "tenant_id": run.tenant_id,
                    "step_id": record.step_id,
                    "item_index": record.item_index,
                    "attempt": record.attempt,
                    "status": record.status.value,
                    "error": record.error.to_dict() if record.error else None,
                    "started_at": record.started_at,
                    "completed_at": record.completed_at,
                }
                for ident in sorted(state.attempts_inserted)
                if (record := state.attempts[ident])
            ],
        )
    if state.attempts_updated:
        await session.execute(
            update(step_attempts)
            .where(
                step_attempts.c.tenant_id == run.tenant_id,
                step_attempts.c.run_id == run.id,
                step_attempts.c.step_id == bindparam("k_step_id"),
                step_attempts.c.item_index == bindparam("k_item_index"),
                step_attempts.c.attempt == bindparam("k_attempt"),
            )
            .values(status=bindparam("v_status"), error=bindparam("v_error"), completed_at=bindparam("v_completed_at")),
            [
                {
                    "k_step_id": record.step_id,
                    "k_item_index": record.item_index,
                    "k_attempt": record.attempt,
                    "v_status": record.status.value,
                    "v_error": record.error.to_dict() if record.error else None,
                    "v_completed_at": record.completed_at,
                }
                for ident in sorted(state.attempts_updated)
                if (record := state.attempts[ident])
            ],
        )


def _event_values(event: EventRecord) -> dict[str, Any]:
    return {
        "tenant_id": event.tenant_id,
        "run_id": event.run_id,
        "workflow_id": event.workflow_id,
        "seq": event.seq,
        "type": event.type,
        "step_id": event.step_id,
        "timestamp": event.timestamp,
        "data": event.data,
    }


async def _apply_task_ops(
    session: AsyncSession, tenant_id: str, run_id: str, ops: Sequence[TaskOp]
) -> list[TaskLease]:
    """Applies queue operations in order, batching consecutive upserts and deletes."""
    leases: list[TaskLease] = []
    index = 0
    while index < len(ops):
        op = ops[index]
        if isinstance(op, UpsertTask | DeleteTask):
            end = index
            while end < len(ops) and type(ops[end]) is type(op):
                end += 1
            batch = ops[index:end]
            if isinstance(op, UpsertTask):
                upserts = [o for o in batch if isinstance(o, UpsertTask)]
                leases += await _upsert_tasks(session, tenant_id, run_id, upserts)
            else:
                await session.execute(
                    delete(tasks).where(
                        tasks.c.tenant_id == tenant_id,
                        tasks.c.run_id == run_id,
                        tuple_(tasks.c.step_id, tasks.c.item_index).in_(
                            sorted({(o.step_id, o.item_index) for o in batch if isinstance(o, DeleteTask)})
                        ),
                    )
                )
            index = end
            continue
        if isinstance(op, DeleteRunTasks):
            await session.execute(delete(tasks).where(tasks.c.tenant_id == tenant_id, tasks.c.run_id == run_id))
        elif isinstance(op, HoldRunTasks):
            await session.execute(
                update(tasks)
                .where(
                    tasks.c.tenant_id == tenant_id,
                    tasks.c.run_id == run_id,
                    _IS_READY,
                    tasks.c.kind == TaskKind.EXECUTE.value,
                )
                .values(state=TaskState.HELD.value)
            )
        elif isinstance(op, ReleaseRunTasks):
            await session.execute(
                update(tasks)
                .where(tasks.c.tenant_id == tenant_id, tasks.c.run_id == run_id, _IS_HELD)
                .values(state=TaskState.READY.value)
            )
        index += 1
    return leases


async def _upsert_tasks(
    session: AsyncSession, tenant_id: str, run_id: str, ops: list[UpsertTask]
) -> list[TaskLease]:
    # The last operation on a key wins; PostgreSQL refuses to touch one row twice per statement.
    latest = {(op.step_id, op.item_index): op for op in ops}
    rows = [
        {
            "id": new_id("tsk"),
            "tenant_id": tenant_id,
            "run_id": run_id,
            "step_id": step_id,
            "item_index": item_index,
            "kind": op.kind.value,
            "state": op.state.value,
            "priority": op.priority,
            "available_at": op.available_at,
            "lease_owner": op.lease_owner,
            "lease_expires_at": op.lease_expires_at,
            "fencing_token": 1,
            "created_at": op.available_at,
        }
        for (step_id, item_index), op in sorted(latest.items())
    ]
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    if not any(op.lease_owner for op in latest.values()):
        await session.execute(_UPSERT_TASK[dialect], rows)
        return []
    result = await session.execute(_UPSERT_TASK_RETURNING[dialect], rows)
    leases = []
    for row in result:
        op = latest[(row.step_id, row.item_index)]
        if op.lease_owner is not None and op.lease_expires_at is not None:
            leases.append(
                TaskLease(
                    task_id=row.id,
                    tenant_id=tenant_id,
                    run_id=run_id,
                    step_id=row.step_id,
                    item_index=row.item_index,
                    kind=op.kind,
                    token=row.fencing_token,
                    owner=op.lease_owner,
                    expires_at=op.lease_expires_at,
                )
            )
    return leases


def _upsert_task_statement(dialect: str) -> Any:
    """`INSERT ... ON CONFLICT (run_id, step_id, item_index) DO UPDATE`, built once per dialect
    so that its compiled form is cached (executed with a list of rows: one batched statement)."""
    statement = postgresql.insert(tasks) if dialect == "postgresql" else sqlite.insert(tasks)
    return statement.on_conflict_do_update(
        index_elements=[tasks.c.run_id, tasks.c.step_id, tasks.c.item_index],
        set_={
            "kind": statement.excluded.kind,
            "state": statement.excluded.state,
            "priority": statement.excluded.priority,
            "available_at": statement.excluded.available_at,
            "lease_owner": statement.excluded.lease_owner,
            "lease_expires_at": statement.excluded.lease_expires_at,
            # A re-queued task gets a new token: whoever held it before is fenced off.
            "fencing_token": tasks.c.fencing_token + 1,
        },
    )


_UPSERT_TASK = {dialect: _upsert_task_statement(dialect) for dialect in ("postgresql", "sqlite")}
_UPSERT_TASK_RETURNING = {
    dialect: statement.returning(tasks.c.id, tasks.c.step_id, tasks.c.item_index, tasks.c.fencing_token)
    for dialect, statement in _UPSERT_TASK.items()
}


# --- the queue, worker side ------------------------------------------------------------------


async def claim_ready_tasks(
    session: AsyncSession, *, owner: str, limit: int, now: dt.datetime, lease_until: dt.datetime
) -> list[TaskLease]:
    """Leases up to `limit` due tasks, highest priority then oldest first, across tenants.

    PostgreSQL: `FOR UPDATE SKIP LOCKED` lets many workers claim at once, each skipping rows
    another is taking. SQLite: the statement runs in an immediate (single-writer) transaction.
    Each lease bumps the task's fencing token.
    """
    candidates = (
        select(tasks.c.id)
        .where(_IS_READY, tasks.c.available_at <= now)
        # Ties break on the step row, not the random id, so claim order is reproducible.
        .order_by(
            tasks.c.priority.desc(), tasks.c.available_at, tasks.c.run_id, tasks.c.step_id, tasks.c.item_index
        )
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        update(tasks)
        .where(tasks.c.id.in_(candidates.scalar_subquery()))
        .values(
            state=TaskState.LEASED.value,
            lease_owner=owner,
            lease_expires_at=lease_until,
            fencing_token=tasks.c.fencing_token + 1,
        )
        .returning(
            tasks.c.id,
            tasks.c.tenant_id,
            tasks.c.run_id,
            tasks.c.step_id,
            tasks.c.item_index,
            tasks.c.kind,
            tasks.c.fencing_token,
            tasks.c.priority,
            tasks.c.available_at,
        )
    )
    # RETURNING follows no order: restore the claim order for the caller.
    claimed = sorted(
        result, key=lambda row: (-row.priority, row.available_at, row.run_id, row.step_id, row.item_index)
    )
    return [
        TaskLease(
            task_id=row.id,
            tenant_id=row.tenant_id,
            run_id=row.run_id,
            step_id=row.step_id,
            item_index=row.item_index,
            kind=TaskKind(row.kind),
            token=row.fencing_token,
            owner=owner,
            expires_at=lease_until,
        )
        for row in claimed
    ]


async def next_due_at(session: AsyncSession) -> dt.datetime | None:
    """When the earliest ready task becomes due (None when the queue is empty)."""
    result = await session.execute(select(func.min(tasks.c.available_at)).where(_IS_READY))
    value = result.scalar()
    if value is None:
        return None
    # min() bypasses the column type on SQLite, which hands back the stored text.
    due = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(due, dt.datetime)
    return due if due.tzinfo is not None else due.replace(tzinfo=dt.UTC)


async def lease_is_current(session: AsyncSession, lease: TaskLease, now: dt.datetime) -> bool:
    """True when the task is still leased under `lease.token` and the lease has not run out;
    locks the task row. Call after `lock_run`."""
    result = await session.execute(
        select(tasks.c.id)
        .where(
            tasks.c.tenant_id == lease.tenant_id,
            tasks.c.id == lease.task_id,
            _IS_LEASED,
            tasks.c.fencing_token == lease.token,
            tasks.c.lease_owner == lease.owner,
            tasks.c.lease_expires_at > now,
        )
        .with_for_update()
    )
    return result.first() is not None


async def extend_leases(
    session: AsyncSession, *, owner: str, task_ids: Iterable[str], now: dt.datetime, lease_until: dt.datetime
) -> set[str]:
    """Heartbeat: extends `owner`'s unexpired leases among `task_ids`; returns the ids still
    held. An expired lease is not revived: its task may already be someone else's."""
    ids = sorted(task_ids)
    if not ids:
        return set()
    result = await session.execute(
        update(tasks)
        .where(
            tasks.c.id.in_(ids),
            tasks.c.lease_owner == owner,
            _IS_LEASED,
            tasks.c.lease_expires_at > now,
        )
        .values(lease_expires_at=lease_until)
        .returning(tasks.c.id)
    )
    return {row.id for row in result}


async def find_expired_leases(session: AsyncSession, *, now: dt.datetime, limit: int) -> list[ExpiredTask]:
    """Leased tasks whose lease has run out (their worker died, hung or lost the database)."""
    result = await session.execute(
        select(tasks.c.id, tasks.c.tenant_id, tasks.c.run_id, tasks.c.step_id, tasks.c.item_index, tasks.c.kind)
        .where(_IS_LEASED, tasks.c.lease_expires_at <= now)
        .order_by(tasks.c.lease_expires_at, tasks.c.run_id, tasks.c.step_id, tasks.c.item_index)
        .limit(limit)
    )
    return [
        ExpiredTask(row.id, row.tenant_id, row.run_id, row.step_id, row.item_index, TaskKind(row.kind))
        for row in result
    ]


async def lease_has_expired(session: AsyncSession, task: ExpiredTask, now: dt.datetime) -> bool:
    """Re-checks, under the run lock, that the task is still leased and expired (a heartbeat
    or a completion may have won the race); locks the task row."""
    result = await session.execute(
        select(tasks.c.id)
        .where(
            tasks.c.tenant_id == task.tenant_id,
            tasks.c.id == task.task_id,
            _IS_LEASED,
            tasks.c.lease_expires_at <= now,
        )
        .with_for_update()
    )
    return result.first() is not None


# --- events --------------------------------------------------------------------------------


async def list_events(
    session: AsyncSession, tenant_id: str, run_id: str, *, after_seq: int, limit: int
) -> list[EventRecord]:
    """A run's events after `after_seq`, in seq order."""
    result = await session.execute(
        select(events)
        .where(events.c.tenant_id == tenant_id, events.c.run_id == run_id, events.c.seq > after_seq)
        .order_by(events.c.seq)
        .limit(limit)
    )
    return [
        EventRecord(
            run_id=row.run_id,
            tenant_id=row.tenant_id,
            workflow_id=row.workflow_id,
            seq=row.seq,
            type=row.type,
            timestamp=row.timestamp,
            step_id=row.step_id,
            data=row.data,
        )
        for row in result
    ]


# --- idempotency keys --------------------------------------------------------------------------


async def get_idempotency_key(session: AsyncSession, tenant_id: str, key: str) -> tuple[str, Any] | None:
    """(request hash, stored response) of a key, if it was used."""
    result = await session.execute(
        select(idempotency_keys.c.request_hash, idempotency_keys.c.response).where(
            and_(idempotency_keys.c.tenant_id == tenant_id, idempotency_keys.c.key == key)
        )
    )
    row = result.first()
    return (row.request_hash, row.response) if row is not None else None


async def put_idempotency_key(
    session: AsyncSession, tenant_id: str, key: str, request_hash: str, response: Any, now: dt.datetime
) -> None:
    """Records a key's first answer (IntegrityError if a concurrent request took it)."""
    await session.execute(
        insert(idempotency_keys).values(
            tenant_id=tenant_id, key=key, request_hash=request_hash, response=response, created_at=now
        )
    )


async def purge_idempotency_keys(session: AsyncSession, *, before: dt.datetime) -> int:
    """Deletes keys older than `before` (across tenants: housekeeping)."""
    result = await session.execute(delete(idempotency_keys).where(idempotency_keys.c.created_at < before))
    return int(getattr(result, "rowcount", 0) or 0)
