"""Repository of execution_svc: functions taking an AsyncSession; they never commit.

Every query filters on `tenant_id`, except the queue's worker-side statements (claim,
heartbeat, reaper), which serve all tenants by design and hand each task's tenant back.

Lock order, to stay free of deadlocks on PostgreSQL: a transaction that changes a run locks
the run row first (`lock_run`), then touches task rows. The claim locks only task rows and
never waits (`SKIP LOCKED`).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg
from sqlalchemy import (
    Row,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
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

_RUN_UPDATE_COLUMNS = (
    "status",
    "output",
    "error",
    "pause_reason",
    "started_at",
    "completed_at",
    "updated_at",
    "last_seq",
    "state_version",
)

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


def _run_from_row(row: Any, workflow: dict[str, Any] | None = None) -> RunRecord:
    """A run from a row of `runs` (a SQLAlchemy row, or a `_Columns` record); `workflow` stands
    in for the snapshot of a row read without it."""
    return RunRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        workflow_id=row.workflow_id,
        workflow_name=row.workflow_name,
        workflow_version=row.workflow_version,
        workflow=row.workflow if workflow is None else workflow,
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
        state_version=row.state_version,
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
        "state_version": run.state_version,
    }


async def lock_run(session: AsyncSession, tenant_id: str, run_id: str) -> RunRecord | None:
    """The run, locked until the transaction ends (PostgreSQL `FOR UPDATE`; on SQLite the
    immediate transaction already excludes other writers)."""
    result = await session.execute(
        select(runs).where(runs.c.tenant_id == tenant_id, runs.c.id == run_id).with_for_update()
    )
    row = result.first()
    return _run_from_row(row) if row is not None else None


async def lock_run_version(session: AsyncSession, tenant_id: str, run_id: str) -> int | None:
    """Locks the run like `lock_run` but reads only its `state_version` (None when there is no
    such run): enough when the caller still holds the state of that version."""
    result = await session.execute(
        select(runs.c.state_version).where(runs.c.tenant_id == tenant_id, runs.c.id == run_id).with_for_update()
    )
    row = result.first()
    return int(row.state_version) if row is not None else None


async def lock_run_versions(session: AsyncSession, keys: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Locks several runs, given as (tenant_id, run_id), in id order (the global lock order),
    and reads their `state_version`s; runs that do not exist are left out."""
    if not keys:
        return {}
    result = await session.execute(
        select(runs.c.id, runs.c.state_version)
        .where(tuple_(runs.c.tenant_id, runs.c.id).in_(sorted(set(keys))))
        .order_by(runs.c.id)
        .with_for_update()
    )
    return {row.id: int(row.state_version) for row in result}


_LOCK_RUNS_AND_LEASES = """
WITH r AS (
    SELECT id, state_version FROM runs
    -- `id = ANY` lets the primary key find the rows; the pairs then check the tenants.
    WHERE id = ANY($2::text[]) AND (tenant_id, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
    ORDER BY id
    FOR UPDATE
), t AS (
    SELECT id FROM tasks
    WHERE id = ANY($4::text[])
      AND (tenant_id, id, fencing_token, lease_owner)
        IN (SELECT * FROM unnest($3::text[], $4::text[], $5::bigint[], $6::text[]))
      AND state = 'leased' AND lease_expires_at > $7
    FOR UPDATE
)
SELECT id, state_version FROM r
UNION ALL
SELECT id, NULL FROM t
"""


def _lease_keys(leases: Sequence[TaskLease]) -> list[tuple[str, str, int, str]]:
    """(tenant_id, task_id, token, owner) of each lease, once each, in lock order."""
    return sorted({(lease.tenant_id, lease.task_id, lease.token, lease.owner) for lease in leases})


def _columns(keys: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Tuples as `width` parallel arrays (statement parameters unnested back into rows)."""
    return [[key[index] for key in keys] for index in range(width)]


async def lock_runs_and_leases(
    session: AsyncSession, keys: Sequence[tuple[str, str]], leases: Sequence[TaskLease], now: dt.datetime
) -> tuple[dict[str, int], set[str]]:
    """`lock_run_versions` then `current_leases` (runs first: the lock order), in one round
    trip on PostgreSQL."""
    if not _is_postgres(session) or not leases:
        return await lock_run_versions(session, keys), await current_leases(session, leases, now)
    rows = await _fetch(
        session, _LOCK_RUNS_AND_LEASES, *_columns(sorted(set(keys)), 2), *_columns(_lease_keys(leases), 4), now
    )
    versions = {row["id"]: int(row["state_version"]) for row in rows if row["state_version"] is not None}
    return versions, {row["id"] for row in rows if row["state_version"] is None}


async def get_runs(session: AsyncSession, keys: Sequence[tuple[str, str]]) -> list[RunRecord]:
    """Several runs, given as (tenant_id, run_id), unlocked (callers lock them first)."""
    if not keys:
        return []
    result = await session.execute(select(runs).where(tuple_(runs.c.tenant_id, runs.c.id).in_(sorted(set(keys)))))
    return [_run_from_row(row) for row in result]


# The hot reads are built once: building a statement costs more than running it.
_GET_RUN = select(runs).where(runs.c.tenant_id == bindparam("tenant_id"), runs.c.id == bindparam("run_id"))
_LOAD_STEPS = select(run_steps).where(
    run_steps.c.tenant_id == bindparam("tenant_id"), run_steps.c.run_id == bindparam("run_id")
)
_LOAD_ATTEMPTS = (
    select(step_attempts)
    .where(step_attempts.c.tenant_id == bindparam("tenant_id"), step_attempts.c.run_id == bindparam("run_id"))
    .order_by(step_attempts.c.step_id, step_attempts.c.item_index, step_attempts.c.attempt)
)
_LIST_EVENTS = (
    select(events)
    .where(
        events.c.tenant_id == bindparam("tenant_id"),
        events.c.run_id == bindparam("run_id"),
        events.c.seq > bindparam("after_seq"),
    )
    .order_by(events.c.seq)
    .limit(bindparam("limit"))
)


class _Columns:
    """An asyncpg record read by attribute, as SQLAlchemy's rows are."""

    __slots__ = ("_record",)

    def __init__(self, record: Any) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return self._record[name]


# The run without its workflow snapshot (only the step order is needed: the snapshot can be
# large and would be decoded on every read), with its step rows as an array of `run_steps`
# records: one statement, one round trip.
_RUN_WITH_STEPS_SQL = f"""
SELECT {", ".join(column.name for column in runs.c if column.name != "workflow")},
       jsonb_path_query_array(r.workflow, '$.steps[*].id') AS step_order,
       ARRAY(SELECT s FROM run_steps AS s WHERE s.tenant_id = r.tenant_id AND s.run_id = r.id) AS steps
FROM runs AS r WHERE r.tenant_id = $1 AND r.id = $2
"""


async def get_run_with_steps(
    connection: Any, tenant_id: str, run_id: str
) -> tuple[RunRecord, list[StepRecord], list[str]] | None:
    """The run (its `workflow` left empty), its step rows and its step ids in definition
    order, or None (PostgreSQL, on an asyncpg connection outside any transaction: see
    `Database.autocommit`). The busiest read of the API, so it skips the session machinery:
    one prepared statement, READ COMMITTED as in a read session."""
    await _use_generic_plans(connection)
    row = await connection.fetchrow(_RUN_WITH_STEPS_SQL, tenant_id, run_id)
    if row is None:
        return None
    run = _run_from_row(_Columns(row), workflow={})
    return run, [_step_from_row(_Columns(step)) for step in row["steps"]], [str(i) for i in row["step_order"]]


async def get_run(session: AsyncSession, tenant_id: str, run_id: str) -> RunRecord | None:
    """The run, unlocked."""
    result = await session.execute(_GET_RUN, {"tenant_id": tenant_id, "run_id": run_id})
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


def _step_from_row(row: Any) -> StepRecord:
    """A step row from a row of `run_steps` (a SQLAlchemy row, or a `_Columns` record)."""
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
    result = await session.execute(_LOAD_STEPS, {"tenant_id": tenant_id, "run_id": run_id})
    return [_step_from_row(row) for row in result]


async def load_steps_of_runs(session: AsyncSession, keys: Sequence[tuple[str, str]]) -> dict[str, list[StepRecord]]:
    """Every step row of several runs, given as (tenant_id, run_id), by run id."""
    loaded: dict[str, list[StepRecord]] = {run_id: [] for _, run_id in keys}
    if not keys:
        return loaded
    result = await session.execute(
        select(run_steps).where(tuple_(run_steps.c.tenant_id, run_steps.c.run_id).in_(sorted(set(keys))))
    )
    for row in result:
        loaded[row.run_id].append(_step_from_row(row))
    return loaded


async def load_attempts(session: AsyncSession, tenant_id: str, run_id: str) -> list[AttemptRecord]:
    """Every attempt of a run's steps, in attempt order."""
    result = await session.execute(_LOAD_ATTEMPTS, {"tenant_id": tenant_id, "run_id": run_id})
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
    """Writes everything the scheduler changed in one run; see `save_states`."""
    return await save_states(session, [state])


def _run_rows(states: Sequence[RunState]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The new and the changed run rows of `states`; a changed run's `state_version` goes up."""
    new_runs: list[dict[str, Any]] = []
    changed_runs: list[dict[str, Any]] = []
    for state in states:
        run = state.run
        if state.inserted or state.updated or state.deleted:
            state.run_dirty = True
        if state.run_is_new:
            run.state_version = 1
            new_runs.append(
                {
                    "id": run.id,
                    "tenant_id": run.tenant_id,
                    "workflow_id": run.workflow_id,
                    "workflow_name": run.workflow_name,
                    "workflow_version": run.workflow_version,
                    "workflow": run.workflow,
                    "input": run.input,
                    "trigger": run.trigger.value,
                    "triggered_by": run.triggered_by,
                    "parent_run_id": run.parent_run_id,
                    "parent_step_id": run.parent_step_id,
                    "created_at": run.created_at,
                    **_run_values(run),
                }
            )
        elif state.run_dirty:
            run.state_version += 1
            changed_runs.append(
                {"k_tenant_id": run.tenant_id, "k_id": run.id, **{f"v_{k}": v for k, v in _run_values(run).items()}}
            )
    return new_runs, changed_runs


async def save_states(session: AsyncSession, states: Sequence[RunState]) -> list[TaskLease]:
    """Writes everything the scheduler changed in `states` (runs locked by this transaction),
    in this order: runs, step rows, attempts, events, queue operations; each kind for every
    run at once, in multi-row statements. Returns the leases of tasks dispatched eagerly."""
    new_runs, changed_runs = _run_rows(states)
    if _is_postgres(session) and fits_one_statement(states):
        return await _save_in_one_statement(session, states, new_runs, changed_runs)
    if new_runs:
        await session.execute(insert(runs), new_runs)
    if changed_runs:
        await session.execute(_UPDATE_RUN, changed_runs)
    await _save_steps(session, states)
    await _save_attempts(session, states)
    all_events = [_event_values(event) for state in states for event in state.events]
    if all_events:
        await session.execute(insert(events), all_events)
    return await _apply_queue(session, states)


# asyncpg connections already switched to generic plans (see `_driver_connection`).
_GENERIC_PLANS: weakref.WeakSet[Any] = weakref.WeakSet()


async def _driver_connection(session: AsyncSession) -> Any:
    """The session's asyncpg connection, inside the session's transaction, for the statements
    written for PostgreSQL alone.

    SQLAlchemy sends BEGIN lazily, with its own first statement: it is sent here first, so
    that these statements (and their row locks) belong to the transaction. Their text never
    changes and their parameters never change the best plan, but the planner would build five
    custom plans per connection before settling, and planning them costs more than running
    them: generic plans from the start."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver: Any = raw.driver_connection
    if not driver.is_in_transaction():
        adapter: Any = raw.dbapi_connection
        starter = getattr(adapter, "_start_transaction", None)
        if starter is not None and getattr(adapter, "_transaction", "") is None:
            await starter()
        else:
            await session.execute(text("SELECT 1"))
        if not driver.is_in_transaction():
            raise RuntimeError("the session did not begin a transaction")
    await _use_generic_plans(driver)
    return driver


async def _use_generic_plans(driver: Any) -> None:
    if driver not in _GENERIC_PLANS:
        await driver.execute("SET plan_cache_mode = force_generic_plan")
        _GENERIC_PLANS.add(driver)


async def _fetch(session: AsyncSession, sql: str, *args: Any) -> list[Any]:
    """A PostgreSQL-only statement in the session's transaction; driver errors come back as
    SQLAlchemy's, so that conflicts are retried and duplicates recognised as they are elsewhere."""
    driver = await _driver_connection(session)
    try:
        return list(await driver.fetch(sql, *args))
    except asyncpg.IntegrityConstraintViolationError as error:
        raise IntegrityError(sql, args, error) from error
    except asyncpg.PostgresError as error:
        raise DBAPIError(sql, args, error) from error


def _is_postgres(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


def fits_one_statement(states: Sequence[RunState]) -> bool:
    """Whether `states` can be written by the one-statement save (PostgreSQL). Deleted step
    rows and whole-run queue operations take the general path."""
    return all(
        not state.deleted and all(isinstance(op, UpsertTask | DeleteTask) for op in state.task_ops) for state in states
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_RUN_RECORD = (
    "id varchar, tenant_id varchar, workflow_id varchar, workflow_name varchar, workflow_version int, "
    "workflow jsonb, input jsonb, trigger varchar, triggered_by varchar, parent_run_id varchar, "
    "parent_step_id varchar, created_at timestamptz, status varchar, output jsonb, error jsonb, "
    "pause_reason varchar, started_at timestamptz, completed_at timestamptz, updated_at timestamptz, "
    "last_seq bigint, state_version bigint"
)
_RUN_COLUMNS = ", ".join(part.split()[0] for part in _RUN_RECORD.split(", "))
_STEP_RECORD = (
    "run_id varchar, tenant_id varchar, step_id varchar, item_index int, status varchar, attempt int, "
    "retry_base int, lease_losses int, input jsonb, output jsonb, error jsonb, agent varchar, signal varchar, "
    "items_total int, ready_at timestamptz, deadline_at timestamptz, started_at timestamptz, "
    "completed_at timestamptz"
)
_STEP_COLUMNS = ", ".join(part.split()[0] for part in _STEP_RECORD.split(", "))
_ATTEMPT_RECORD = (
    "run_id varchar, tenant_id varchar, step_id varchar, item_index int, attempt int, status varchar, "
    "error jsonb, started_at timestamptz, completed_at timestamptz"
)
_ATTEMPT_COLUMNS = ", ".join(part.split()[0] for part in _ATTEMPT_RECORD.split(", "))
_EVENT_RECORD = (
    "tenant_id varchar, run_id varchar, workflow_id varchar, seq bigint, type varchar, step_id varchar, "
    "timestamp timestamptz, data jsonb"
)
_EVENT_COLUMNS = ", ".join(part.split()[0] for part in _EVENT_RECORD.split(", "))
_TASK_RECORD = (
    "id varchar, tenant_id varchar, run_id varchar, step_id varchar, item_index int, kind varchar, "
    "state varchar, priority smallint, available_at timestamptz, lease_owner varchar, "
    "lease_expires_at timestamptz, fencing_token bigint, created_at timestamptz, concurrency_key varchar, "
    "concurrency_limit int"
)
_TASK_COLUMNS = ", ".join(part.split()[0] for part in _TASK_RECORD.split(", "))


def _assignments(columns: str, keys: set[str]) -> str:
    return ", ".join(f"{name} = x.{name}" for name in columns.split(", ") if name not in keys)


# Everything a transaction changed, written by one statement (one round trip): data-modifying
# CTEs, each fed by one array of the JSON parameter, named by that array's key. A statement holds
# only the CTEs whose arrays are non-empty (an empty one still costs its plan node and its
# execution: about a third of a completion's statement), so there are a few texts, each
# prepared once per connection. PostgreSQL only; SQLite takes the statement-per-kind path.
_WRITE_CTES: dict[str, str] = {
    "new_runs": f"""
    INSERT INTO runs ({_RUN_COLUMNS})
    SELECT {_RUN_COLUMNS} FROM jsonb_to_recordset((SELECT j->'new_runs' FROM d)) AS x({_RUN_RECORD})
""",
    "changed_runs": f"""
    UPDATE runs AS r SET {
        _assignments(
            _RUN_COLUMNS,
            {
                "id",
                "tenant_id",
                "workflow_id",
                "workflow_name",
                "workflow_version",
                "workflow",
                "input",
                "trigger",
                "triggered_by",
                "parent_run_id",
                "parent_step_id",
                "created_at",
            },
        )
    }
    FROM jsonb_to_recordset((SELECT j->'changed_runs' FROM d)) AS x({_RUN_RECORD})
    -- `= ANY($2)` makes the primary key find the rows: the planner cannot see how few the
    -- JSON holds and would otherwise scan the table.
    WHERE r.id = ANY($2::text[]) AND r.tenant_id = x.tenant_id AND r.id = x.id
""",
    "new_steps": f"""
    INSERT INTO run_steps ({_STEP_COLUMNS})
    SELECT {_STEP_COLUMNS} FROM jsonb_to_recordset((SELECT j->'new_steps' FROM d)) AS x({_STEP_RECORD})
""",
    "changed_steps": f"""
    UPDATE run_steps AS s SET {_assignments(_STEP_COLUMNS, {"run_id", "tenant_id", "step_id", "item_index"})}
    FROM jsonb_to_recordset((SELECT j->'changed_steps' FROM d)) AS x({_STEP_RECORD})
    WHERE s.tenant_id = x.tenant_id AND s.run_id = x.run_id AND s.step_id = x.step_id
      AND s.item_index = x.item_index
""",
    "new_attempts": f"""
    INSERT INTO step_attempts ({_ATTEMPT_COLUMNS})
    SELECT {_ATTEMPT_COLUMNS} FROM jsonb_to_recordset((SELECT j->'new_attempts' FROM d)) AS x({_ATTEMPT_RECORD})
""",
    "changed_attempts": f"""
    UPDATE step_attempts AS a SET status = x.status, error = x.error, completed_at = x.completed_at
    FROM jsonb_to_recordset((SELECT j->'changed_attempts' FROM d)) AS x({_ATTEMPT_RECORD})
    WHERE a.tenant_id = x.tenant_id AND a.run_id = x.run_id AND a.step_id = x.step_id
      AND a.item_index = x.item_index AND a.attempt = x.attempt
""",
    "events": f"""
    INSERT INTO events ({_EVENT_COLUMNS})
    SELECT {_EVENT_COLUMNS} FROM jsonb_to_recordset((SELECT j->'events' FROM d)) AS x({_EVENT_RECORD})
""",
    "deleted_tasks": """
    DELETE FROM tasks AS t
    USING jsonb_to_recordset((SELECT j->'deleted_tasks' FROM d))
        AS x(tenant_id varchar, run_id varchar, step_id varchar, item_index int)
    WHERE t.tenant_id = x.tenant_id AND t.run_id = x.run_id AND t.step_id = x.step_id
      AND t.item_index = x.item_index
""",
}
_UPSERT_TASKS_SQL = f"""
INSERT INTO tasks ({_TASK_COLUMNS})
SELECT {_TASK_COLUMNS} FROM jsonb_to_recordset((SELECT j->'tasks' FROM d)) AS x({_TASK_RECORD})
ON CONFLICT (run_id, step_id, item_index) DO UPDATE SET
    kind = excluded.kind, state = excluded.state, priority = excluded.priority,
    available_at = excluded.available_at, lease_owner = excluded.lease_owner,
    lease_expires_at = excluded.lease_expires_at, concurrency_key = excluded.concurrency_key,
    concurrency_limit = excluded.concurrency_limit,
    -- A re-queued task gets a new token: whoever held it before is fenced off.
    fencing_token = tasks.fencing_token + 1
RETURNING id, run_id, step_id, item_index, fencing_token"""
_NO_UPSERT_COLUMNS = (
    "NULL::varchar AS id, NULL::varchar AS run_id, NULL::varchar AS step_id, NULL::int AS item_index, "
    "NULL::bigint AS fencing_token"
)
# $2 (the changed runs' ids) is named in `d` so that its type is known when no CTE uses it.
_PAYLOAD_CTE = "d AS (SELECT $1::text::jsonb AS j, $2::text[] AS changed_ids)"


def _write_ctes(kinds: frozenset[str]) -> list[str]:
    return [f"write_{name} AS ({body})" for name, body in _WRITE_CTES.items() if name in kinds]


@functools.cache
def _save_sql(kinds: frozenset[str]) -> str:
    """The one-statement save of a payload whose non-empty arrays are `kinds`; its rows are the
    upserted tasks."""
    main = _UPSERT_TASKS_SQL if "tasks" in kinds else f"SELECT {_NO_UPSERT_COLUMNS} WHERE false"
    return "WITH " + ",\n".join([_PAYLOAD_CTE, *_write_ctes(kinds)]) + "\n" + main


# `_save_sql` behind a gate, for a state computed from what this engine committed last: the
# statement first locks the runs and the reported tasks (in the global lock order) and checks
# that each run is still at the `state_version` the state was computed from and each lease is
# still current. Only then does the JSON reach the write CTEs; otherwise every CTE reads an
# empty object and writes nothing. On its own (outside a transaction) it is one round trip that
# commits by itself. The first column says whether the gate opened.
_GATE_CTES = """r AS (
    SELECT id FROM runs
    WHERE id = ANY($4::text[])
      AND (tenant_id, id, state_version) IN (SELECT * FROM unnest($3::text[], $4::text[], $5::bigint[]))
    ORDER BY id
    FOR UPDATE
), t AS (
    SELECT id FROM tasks
    WHERE id = ANY($7::text[])
      AND (tenant_id, id, fencing_token, lease_owner)
        IN (SELECT * FROM unnest($6::text[], $7::text[], $8::bigint[], $9::text[]))
      AND state = 'leased' AND lease_expires_at > $10
    FOR UPDATE
), gate AS (
    SELECT (SELECT count(*) FROM r) = cardinality($4::text[])
       AND (SELECT count(*) FROM t) = cardinality($7::text[]) AS open
),
d AS (
    SELECT CASE WHEN (SELECT open FROM gate) THEN $1::text::jsonb ELSE '{}'::jsonb END AS j,
           $2::text[] AS changed_ids
)"""


@functools.cache
def _save_if_current_sql(kinds: frozenset[str]) -> str:
    """`_save_sql(kinds)` behind the gate: its first column says whether the gate opened."""
    ctes = [_GATE_CTES, *_write_ctes(kinds)]
    if "tasks" not in kinds:
        return "WITH " + ",\n".join(ctes) + f"\nSELECT gate.open, {_NO_UPSERT_COLUMNS} FROM gate"
    ctes.append(f"upserted AS ({_UPSERT_TASKS_SQL})")
    return (
        "WITH "
        + ",\n".join(ctes)
        + "\nSELECT gate.open, u.id, u.run_id, u.step_id, u.item_index, u.fencing_token"
        + "\nFROM gate LEFT JOIN upserted AS u ON true"
    )


_TaskOpsByKey = dict[tuple[str, str, int], tuple[str, UpsertTask]]


def _one_statement_payload(
    states: Sequence[RunState], new_runs: list[dict[str, Any]], changed_runs: list[dict[str, Any]]
) -> tuple[str, frozenset[str], list[str], _TaskOpsByKey]:
    """The JSON parameter of `_save_sql`, its non-empty arrays, the ids of the changed runs, and
    the upserted tasks by (run_id, step_id, item_index)."""
    steps_new: list[dict[str, Any]] = []
    steps_changed: list[dict[str, Any]] = []
    attempts_new: list[dict[str, Any]] = []
    attempts_changed: list[dict[str, Any]] = []
    deleted: list[dict[str, Any]] = []
    upserted: list[dict[str, Any]] = []
    ops_by_key: _TaskOpsByKey = {}
    for state in states:
        run = state.run
        base = {"run_id": run.id, "tenant_id": run.tenant_id}
        for keys, target in ((state.inserted, steps_new), (state.updated, steps_changed)):
            for key in sorted(keys):
                target.append({**base, "step_id": key[0], "item_index": key[1], **_step_values(state.rows[key])})
        for idents, target in ((state.attempts_inserted, attempts_new), (state.attempts_updated, attempts_changed)):
            for ident in sorted(idents):
                record = state.attempts[ident]
                target.append(
                    {
                        **base,
                        "step_id": record.step_id,
                        "item_index": record.item_index,
                        "attempt": record.attempt,
                        "status": record.status.value,
                        "error": record.error.to_dict() if record.error else None,
                        "started_at": record.started_at,
                        "completed_at": record.completed_at,
                    }
                )
        # The last operation on a key decides: the upsert overwrites a task deleted before it.
        last: dict[tuple[str, int], TaskOp] = {}
        for op in state.task_ops:
            if isinstance(op, UpsertTask | DeleteTask):
                last[(op.step_id, op.item_index)] = op
        for (step_id, item_index), op in sorted(last.items()):
            if isinstance(op, DeleteTask):
                deleted.append({**base, "step_id": step_id, "item_index": item_index})
            elif isinstance(op, UpsertTask):
                ops_by_key[(run.id, step_id, item_index)] = (run.tenant_id, op)
                upserted.append(_task_row(run.tenant_id, run.id, step_id, item_index, op))
    payload = {
        "new_runs": new_runs,
        "changed_runs": [
            {"id": row["k_id"], "tenant_id": row["k_tenant_id"], **{k[2:]: v for k, v in row.items() if k[:2] == "v_"}}
            for row in changed_runs
        ],
        "new_steps": steps_new,
        "changed_steps": steps_changed,
        "new_attempts": attempts_new,
        "changed_attempts": attempts_changed,
        "events": [_event_values(event) for state in states for event in state.events],
        "deleted_tasks": deleted,
        "tasks": upserted,
    }
    changed_ids = [row["k_id"] for row in changed_runs]
    kinds = frozenset(key for key, rows in payload.items() if rows)
    return json.dumps(payload, default=_json_default, separators=(",", ":")), kinds, changed_ids, ops_by_key


async def _save_in_one_statement(
    session: AsyncSession,
    states: Sequence[RunState],
    new_runs: list[dict[str, Any]],
    changed_runs: list[dict[str, Any]],
) -> list[TaskLease]:
    payload, kinds, changed_ids, ops_by_key = _one_statement_payload(states, new_runs, changed_runs)
    result = await _fetch(session, _save_sql(kinds), payload, changed_ids)
    return _eager_leases(result, ops_by_key)


async def save_states_if_current(
    connection: Any, states: Sequence[RunState], leases: Sequence[TaskLease], now: dt.datetime
) -> list[TaskLease] | None:
    """Writes `states`, computed from runs as this engine last committed them, in one
    self-committing statement on `connection` (an asyncpg connection outside any transaction),
    provided each run is still at the `state_version` its state was computed from and every
    lease in `leases` is still current. Returns the leases of the tasks dispatched eagerly, or
    None when the gate stayed shut (nothing was written: the caller takes the locking path).
    PostgreSQL only; `states` must be changed runs that `fits_one_statement`."""
    expected = sorted((state.run.tenant_id, state.run.id, state.run.state_version) for state in states)
    new_runs, changed_runs = _run_rows(states)
    if new_runs or len(changed_runs) != len(states):
        raise ValueError("the gated save writes changed runs only")
    payload, kinds, changed_ids, ops_by_key = _one_statement_payload(states, new_runs, changed_runs)
    await _use_generic_plans(connection)
    rows = await connection.fetch(
        _save_if_current_sql(kinds),
        payload,
        changed_ids,
        *_columns(expected, 3),
        *_columns(_lease_keys(leases), 4),
        now,
    )
    if not rows or not rows[0]["open"]:
        return None
    return _eager_leases([row for row in rows if row["id"] is not None], ops_by_key)


_UPDATE_RUN = (
    update(runs)
    .where(runs.c.tenant_id == bindparam("k_tenant_id"), runs.c.id == bindparam("k_id"))
    .values({name: bindparam(f"v_{name}") for name in _RUN_UPDATE_COLUMNS})
)


async def _save_steps(session: AsyncSession, states: Sequence[RunState]) -> None:
    for state in states:
        run = state.run
        if state.deleted:
            await session.execute(
                delete(run_steps).where(
                    run_steps.c.tenant_id == run.tenant_id,
                    run_steps.c.run_id == run.id,
                    tuple_(run_steps.c.step_id, run_steps.c.item_index).in_(sorted(state.deleted)),
                )
            )
    inserted = [
        {
            "run_id": state.run.id,
            "tenant_id": state.run.tenant_id,
            "step_id": key[0],
            "item_index": key[1],
            **_step_values(state.rows[key]),
        }
        for state in states
        for key in sorted(state.inserted)
    ]
    if inserted:
        await session.execute(insert(run_steps), inserted)
    updated = [
        {
            "k_tenant_id": state.run.tenant_id,
            "k_run_id": state.run.id,
            "k_step_id": key[0],
            "k_item_index": key[1],
            **{f"v_{k}": v for k, v in _step_values(state.rows[key]).items()},
        }
        for state in states
        for key in sorted(state.updated)
    ]
    if updated:
        # One statement per row (executemany, pipelined by the driver): each row's values differ.
        await session.execute(_UPDATE_STEP, updated)


_UPDATE_STEP = (
    update(run_steps)
    .where(
        run_steps.c.tenant_id == bindparam("k_tenant_id"),
        run_steps.c.run_id == bindparam("k_run_id"),
        run_steps.c.step_id == bindparam("k_step_id"),
        run_steps.c.item_index == bindparam("k_item_index"),
    )
    .values({name: bindparam(f"v_{name}") for name in _STEP_UPDATE_COLUMNS})
)


async def _save_attempts(session: AsyncSession, states: Sequence[RunState]) -> None:
    inserted = [
        {
            "run_id": state.run.id,
            "tenant_id": state.run.tenant_id,
            "step_id": record.step_id,
            "item_index": record.item_index,
            "attempt": record.attempt,
            "status": record.status.value,
            "error": record.error.to_dict() if record.error else None,
            "started_at": record.started_at,
            "completed_at": record.completed_at,
        }
        for state in states
        for ident in sorted(state.attempts_inserted)
        if (record := state.attempts[ident])
    ]
    if inserted:
        await session.execute(insert(step_attempts), inserted)
    updated = [
        {
            "k_tenant_id": state.run.tenant_id,
            "k_run_id": state.run.id,
            "k_step_id": record.step_id,
            "k_item_index": record.item_index,
            "k_attempt": record.attempt,
            "v_status": record.status.value,
            "v_error": record.error.to_dict() if record.error else None,
            "v_completed_at": record.completed_at,
        }
        for state in states
        for ident in sorted(state.attempts_updated)
        if (record := state.attempts[ident])
    ]
    if updated:
        await session.execute(_UPDATE_ATTEMPT, updated)


_UPDATE_ATTEMPT = (
    update(step_attempts)
    .where(
        step_attempts.c.tenant_id == bindparam("k_tenant_id"),
        step_attempts.c.run_id == bindparam("k_run_id"),
        step_attempts.c.step_id == bindparam("k_step_id"),
        step_attempts.c.item_index == bindparam("k_item_index"),
        step_attempts.c.attempt == bindparam("k_attempt"),
    )
    .values(status=bindparam("v_status"), error=bindparam("v_error"), completed_at=bindparam("v_completed_at"))
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


async def _apply_queue(session: AsyncSession, states: Sequence[RunState]) -> list[TaskLease]:
    """Queue operations of every run. The common case (each run only deletes tasks, then
    upserts others) is written as one multi-row DELETE and one multi-row upsert for all runs;
    anything else is applied run by run, in order."""
    simple: list[RunState] = []
    leases: list[TaskLease] = []
    for state in states:
        if _deletes_then_upserts(state.task_ops):
            simple.append(state)
        else:
            leases += await _apply_task_ops(session, state.run.tenant_id, state.run.id, state.task_ops)
    deletes = sorted(
        {
            (state.run.tenant_id, state.run.id, op.step_id, op.item_index)
            for state in simple
            for op in state.task_ops
            if isinstance(op, DeleteTask)
        }
    )
    if deletes:
        key = tuple_(tasks.c.tenant_id, tasks.c.run_id, tasks.c.step_id, tasks.c.item_index)
        await session.execute(delete(tasks).where(key.in_(deletes)))
    upserts = [
        (state.run.tenant_id, state.run.id, [op for op in state.task_ops if isinstance(op, UpsertTask)])
        for state in simple
    ]
    if any(ops for _, _, ops in upserts):
        leases += await _upsert_tasks(session, upserts)
    return leases


def _deletes_then_upserts(ops: Sequence[TaskOp]) -> bool:
    seen_upsert = False
    for op in ops:
        if isinstance(op, UpsertTask):
            seen_upsert = True
        elif not isinstance(op, DeleteTask) or seen_upsert:
            return False
    return True


async def _apply_task_ops(session: AsyncSession, tenant_id: str, run_id: str, ops: Sequence[TaskOp]) -> list[TaskLease]:
    """Applies one run's queue operations in order, batching consecutive upserts and deletes."""
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
                leases += await _upsert_tasks(session, [(tenant_id, run_id, upserts)])
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


async def _upsert_tasks(session: AsyncSession, per_run: Sequence[tuple[str, str, list[UpsertTask]]]) -> list[TaskLease]:
    """One multi-row upsert for the tasks of several runs: (tenant_id, run_id, operations)."""
    latest: dict[tuple[str, str, int], tuple[str, UpsertTask]] = {}
    for tenant_id, run_id, ops in per_run:
        # The last operation on a key wins; PostgreSQL refuses to touch one row twice per statement.
        for op in ops:
            latest[(run_id, op.step_id, op.item_index)] = (tenant_id, op)
    if not latest:
        return []
    rows = [
        _task_row(tenant_id, run_id, step_id, item_index, op)
        for (run_id, step_id, item_index), (tenant_id, op) in sorted(latest.items())
    ]
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    if not any(op.lease_owner for _, op in latest.values()):
        await session.execute(_UPSERT_TASK[dialect], rows)
        return []
    result = await session.execute(_UPSERT_TASK_RETURNING[dialect], rows)
    return _eager_leases((row._mapping for row in result), latest)


def _task_row(tenant_id: str, run_id: str, step_id: str, item_index: int, op: UpsertTask) -> dict[str, Any]:
    """The `tasks` row an upsert writes (both save paths)."""
    return {
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
        "concurrency_key": op.concurrency_key,
        "concurrency_limit": op.concurrency_limit,
    }


def _eager_leases(
    returned: Iterable[Mapping[Any, Any]], ops: Mapping[tuple[str, str, int], tuple[str, UpsertTask]]
) -> list[TaskLease]:
    """Leases of the upserted tasks that were dispatched eagerly, from the rows the upsert
    returned (`id`, `run_id`, `step_id`, `item_index`, `fencing_token`)."""
    leases = []
    for row in returned:
        tenant_id, op = ops[(row["run_id"], row["step_id"], row["item_index"])]
        if op.lease_owner is not None and op.lease_expires_at is not None:
            leases.append(
                TaskLease(
                    task_id=row["id"],
                    tenant_id=tenant_id,
                    run_id=row["run_id"],
                    step_id=row["step_id"],
                    item_index=row["item_index"],
                    kind=op.kind,
                    token=row["fencing_token"],
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
            "concurrency_key": statement.excluded.concurrency_key,
            "concurrency_limit": statement.excluded.concurrency_limit,
            # A re-queued task gets a new token: whoever held it before is fenced off.
            "fencing_token": tasks.c.fencing_token + 1,
        },
    )


_UPSERT_TASK = {dialect: _upsert_task_statement(dialect) for dialect in ("postgresql", "sqlite")}
_UPSERT_TASK_RETURNING = {
    dialect: statement.returning(tasks.c.id, tasks.c.run_id, tasks.c.step_id, tasks.c.item_index, tasks.c.fencing_token)
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
        .where(_IS_READY, tasks.c.available_at <= now, _HAS_FREE_SLOT)
        # Ties break on the step row, not the random id, so claim order is reproducible.
        .order_by(tasks.c.priority.desc(), tasks.c.available_at, tasks.c.run_id, tasks.c.step_id, tasks.c.item_index)
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
            tasks.c.concurrency_key,
            tasks.c.concurrency_limit,
        )
    )
    # RETURNING follows no order: restore the claim order for the caller.
    claimed = sorted(result, key=lambda row: (-row.priority, row.available_at, row.run_id, row.step_id, row.item_index))
    if any(row.concurrency_key is not None for row in claimed):
        over = await _release_over_limit(session, claimed)
        claimed = [row for row in claimed if row.id not in over]
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


_HOLDERS = tasks.alias("holders")
# A task without a concurrency key, or one whose key has fewer leased tasks than its limit.
_HAS_FREE_SLOT = or_(
    tasks.c.concurrency_key.is_(None),
    select(func.count())
    .select_from(_HOLDERS)
    .where(_HOLDERS.c.concurrency_key == tasks.c.concurrency_key, _HOLDERS.c.state == TaskState.LEASED.value)
    .scalar_subquery()
    < tasks.c.concurrency_limit,
)


async def _release_over_limit(session: AsyncSession, claimed: Sequence[Any]) -> set[str]:
    """Puts back the keyed tasks this claim took beyond their key's limit; returns their ids.

    The claim's filter saw a snapshot, so concurrent claims (and several tasks of one key in
    this claim) can overshoot. Each key is re-counted under a transaction-scoped advisory lock
    (PostgreSQL; SQLite has one writer at a time), taken in key order so that claimers never
    deadlock: a second claimer waits for the first to commit, then counts its leases too. The
    lowest-ranked of this claim's tasks are the ones given back."""
    by_key: dict[str, list[Any]] = {}
    for row in claimed:
        if row.concurrency_key is not None:
            by_key.setdefault(row.concurrency_key, []).append(row)
    postgres = session.bind is not None and session.bind.dialect.name == "postgresql"
    over: set[str] = set()
    for key in sorted(by_key):
        if postgres:
            await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))
        leased = await session.scalar(
            select(func.count()).where(tasks.c.concurrency_key == key, tasks.c.state == TaskState.LEASED.value)
        )
        excess = max(0, int(leased or 0) - int(by_key[key][0].concurrency_limit))
        if excess:
            over.update(row.id for row in by_key[key][-excess:])
    if over:
        await session.execute(
            update(tasks)
            .where(tasks.c.id.in_(sorted(over)))
            .values(state=TaskState.READY.value, lease_owner=None, lease_expires_at=None)
        )
    return over


async def unfinished_child_runs(session: AsyncSession, tenant_id: str, parent_run_id: str) -> list[str]:
    """Ids of the run's `sub_workflow` children that have not finished."""
    finished = [status.value for status in RunStatus if status.finished]
    result = await session.execute(
        select(runs.c.id).where(
            runs.c.tenant_id == tenant_id, runs.c.parent_run_id == parent_run_id, runs.c.status.not_in(finished)
        )
    )
    return list(result.scalars())


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


async def current_leases(session: AsyncSession, leases: Sequence[TaskLease], now: dt.datetime) -> set[str]:
    """The ids of `leases` still held under their token, by their owner, and not run out;
    locks those task rows. Call after locking the runs."""
    if not leases:
        return set()
    result = await session.execute(
        select(tasks.c.id)
        .where(
            tuple_(tasks.c.tenant_id, tasks.c.id, tasks.c.fencing_token, tasks.c.lease_owner).in_(_lease_keys(leases)),
            _IS_LEASED,
            tasks.c.lease_expires_at > now,
        )
        .with_for_update()
    )
    return {row.id for row in result}


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
        _LIST_EVENTS, {"tenant_id": tenant_id, "run_id": run_id, "after_seq": after_seq, "limit": limit}
    )
    return [event_from_row(row) for row in result]


def event_from_row(row: Row[Any]) -> EventRecord:
    """An event as the domain sees it, from a row of `events`."""
    return EventRecord(
        run_id=row.run_id,
        tenant_id=row.tenant_id,
        workflow_id=row.workflow_id,
        seq=row.seq,
        type=row.type,
        timestamp=row.timestamp,
        step_id=row.step_id,
        data=row.data,
    )


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
