"""A run loaded for one transaction, and every change made to it, ready to be written.

The scheduler mutates a RunState in memory; the repository then writes exactly what changed
(rows, attempts, events, queue operations) in the same transaction. Keeping the decisions in
memory makes them testable without a database and lets each transaction batch its writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from execution_svc.domain.models import (
    STEP_ROW,
    AttemptRecord,
    EventRecord,
    EventType,
    RunError,
    RunRecord,
    RunStatus,
    StepKey,
    StepRecord,
    StepStatus,
    TaskKind,
    TaskState,
)


class InvariantError(RuntimeError):
    """The engine was asked to make a transition its state machine forbids: a bug, never a
    caller's mistake (those are ConflictErrors)."""


RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset(
        {RunStatus.RUNNING, RunStatus.PAUSED, RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}
    ),
    RunStatus.RUNNING: frozenset({RunStatus.PAUSED, RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.PAUSED: frozenset(
        {RunStatus.PENDING, RunStatus.RUNNING, RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}
    ),
    # Only an operator's retry leaves failed or cancelled; succeeded is final.
    RunStatus.FAILED: frozenset({RunStatus.RUNNING}),
    RunStatus.CANCELLED: frozenset({RunStatus.RUNNING}),
    RunStatus.SUCCEEDED: frozenset(),
}

STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.PENDING: frozenset(
        {
            StepStatus.RUNNING,
            StepStatus.WAITING,
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
            StepStatus.SKIPPED,
            StepStatus.CANCELLED,
        }
    ),
    StepStatus.RUNNING: frozenset(
        {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.WAITING, StepStatus.CANCELLED}
    ),
    StepStatus.WAITING: frozenset(
        {StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED}
    ),
    # Leaving a finished status takes an operator: retry (-> pending) or complete (-> succeeded).
    StepStatus.FAILED: frozenset({StepStatus.PENDING, StepStatus.SUCCEEDED}),
    StepStatus.CANCELLED: frozenset({StepStatus.PENDING}),
    StepStatus.SKIPPED: frozenset({StepStatus.PENDING}),
    StepStatus.SUCCEEDED: frozenset({StepStatus.PENDING}),
}


@dataclass
class UpsertTask:
    """Queue (or re-queue) the task of one step row; at most one task exists per row.
    `lease_owner`/`lease_expires_at` are set when the task is dispatched eagerly to the worker
    whose transaction created it."""

    step_id: str
    item_index: int
    kind: TaskKind
    available_at: dt.datetime
    priority: int
    state: TaskState
    lease_owner: str | None = None
    lease_expires_at: dt.datetime | None = None
    concurrency_key: str | None = None
    """`<tenant_id>:<key value>` of a step with `concurrency`; claims honour `concurrency_limit`."""
    concurrency_limit: int | None = None


@dataclass(frozen=True)
class DeleteTask:
    """Remove one step row's task, if any."""

    step_id: str
    item_index: int


@dataclass(frozen=True)
class DeleteRunTasks:
    """Remove every task of the run."""


@dataclass(frozen=True)
class HoldRunTasks:
    """Park the run's ready `execute` tasks while it is paused."""


@dataclass(frozen=True)
class ReleaseRunTasks:
    """Make held tasks ready again."""

    available_at: dt.datetime


TaskOp = UpsertTask | DeleteTask | DeleteRunTasks | HoldRunTasks | ReleaseRunTasks


@dataclass
class RunState:
    """One run and its step rows, plus the changes made in this transaction."""

    run: RunRecord
    rows: dict[StepKey, StepRecord]
    run_is_new: bool = False
    run_dirty: bool = False
    inserted: set[StepKey] = field(default_factory=set)
    updated: set[StepKey] = field(default_factory=set)
    deleted: set[StepKey] = field(default_factory=set)
    attempts: dict[tuple[StepKey, int], AttemptRecord] = field(default_factory=dict)
    attempts_inserted: set[tuple[StepKey, int]] = field(default_factory=set)
    attempts_updated: set[tuple[StepKey, int]] = field(default_factory=set)
    events: list[EventRecord] = field(default_factory=list)
    task_ops: list[TaskOp] = field(default_factory=list)
    # Remote steps queued ready-now in this transaction: candidates for eager dispatch.
    dispatchable: list[StepKey] = field(default_factory=list)
    # In-flight attempts of this run must be aborted after commit (cancel, run failure).
    abort_in_flight: bool = False
    # A keyed (`concurrency`) attempt ended: its slot is free, so idle workers should claim again.
    wake_workers: bool = False
    _items: dict[str, list[StepRecord]] = field(default_factory=dict)

    @classmethod
    def load(cls, run: RunRecord, rows: Iterable[StepRecord], *, new: bool = False) -> RunState:
        """A state over rows read from the database (or built for a new run)."""
        state = cls(run=run, rows={row.key: row for row in rows}, run_is_new=new)
        for row in state.rows.values():
            if row.item_index != STEP_ROW:
                state._items.setdefault(row.step_id, []).append(row)
        for items in state._items.values():
            items.sort(key=lambda r: r.item_index)
        return state

    # --- rows ---------------------------------------------------------------------------

    def row(self, step_id: str, item_index: int = STEP_ROW) -> StepRecord:
        """A step row (KeyError when missing)."""
        return self.rows[(step_id, item_index)]

    def items(self, step_id: str) -> list[StepRecord]:
        """The `for_each` item rows of a step, by index."""
        return self._items.get(step_id, [])

    def add_row(self, row: StepRecord) -> None:
        """A new row, inserted at commit."""
        self.rows[row.key] = row
        if row.key in self.deleted:
            # Deleted then re-created in one transaction: write it as an update.
            self.deleted.discard(row.key)
            self.updated.add(row.key)
        else:
            self.inserted.add(row.key)
        if row.item_index != STEP_ROW:
            items = self._items.setdefault(row.step_id, [])
            ordered = not items or items[-1].item_index < row.item_index
            items.append(row)
            if not ordered:  # items are added in index order: sorting every time was quadratic
                items.sort(key=lambda r: r.item_index)

    def remove_row(self, key: StepKey) -> None:
        """Deletes a row (an item beyond a re-evaluated list's end)."""
        row = self.rows.pop(key)
        self._items[row.step_id] = [r for r in self._items.get(row.step_id, []) if r.key != key]
        if key in self.inserted:
            self.inserted.discard(key)
        else:
            self.updated.discard(key)
            self.deleted.add(key)

    def touch(self, row: StepRecord) -> None:
        """Marks a row changed."""
        if row.key not in self.inserted:
            self.updated.add(row.key)

    def set_status(self, row: StepRecord, status: StepStatus) -> None:
        """Moves a row through the step state machine (InvariantError when illegal)."""
        if status is not row.status and status not in STEP_TRANSITIONS[row.status]:
            raise InvariantError(f"step {row.step_id}[{row.item_index}]: {row.status} -> {status} is illegal")
        row.status = status
        self.touch(row)

    def set_run_status(self, status: RunStatus) -> None:
        """Moves the run through the run state machine (InvariantError when illegal)."""
        if status is not self.run.status and status not in RUN_TRANSITIONS[self.run.status]:
            raise InvariantError(f"run {self.run.id}: {self.run.status} -> {status} is illegal")
        self.run.status = status
        self.run_dirty = True

    def touch_run(self) -> None:
        """Marks the run row changed."""
        self.run_dirty = True

    # --- attempts -----------------------------------------------------------------------

    def begin_attempt(self, row: StepRecord, now: dt.datetime) -> AttemptRecord:
        """Counts a new attempt on the row and records it as running."""
        row.attempt += 1
        if row.started_at is None:
            row.started_at = now
        self.touch(row)
        record = AttemptRecord(
            run_id=row.run_id,
            step_id=row.step_id,
            item_index=row.item_index,
            attempt=row.attempt,
            status=StepStatus.RUNNING,
            started_at=now,
        )
        ident = (row.key, row.attempt)
        self.attempts[ident] = record
        self.attempts_inserted.add(ident)
        return record

    def end_attempt(
        self, row: StepRecord, status: StepStatus, now: dt.datetime, error: RunError | None = None
    ) -> None:
        """Closes the row's current attempt (a no-op when it has none)."""
        if row.attempt == 0:
            return
        ident = (row.key, row.attempt)
        record = self.attempts.get(ident)
        if record is None:
            # Started in an earlier transaction: the update needs only the key.
            record = AttemptRecord(
                run_id=row.run_id,
                step_id=row.step_id,
                item_index=row.item_index,
                attempt=row.attempt,
                status=status,
                started_at=row.started_at or now,
            )
            self.attempts[ident] = record
        if ident not in self.attempts_inserted:
            self.attempts_updated.add(ident)
        record.status = status
        record.error = error
        record.completed_at = now

    # --- events and queue -----------------------------------------------------------------

    def emit(
        self, event_type: EventType, now: dt.datetime, step_id: str | None = None, **data: Any
    ) -> EventRecord:
        """Appends an event with the run's next `seq`; the run row, locked by this
        transaction, holds the counter, which makes seqs gap-free and unique."""
        self.run.last_seq += 1
        self.run_dirty = True
        event = EventRecord(
            run_id=self.run.id,
            tenant_id=self.run.tenant_id,
            workflow_id=self.run.workflow_id,
            seq=self.run.last_seq,
            type=event_type.value,
            timestamp=now,
            step_id=step_id,
            data=data,
        )
        self.events.append(event)
        return event

    def queue(self, op: TaskOp) -> None:
        """Adds a queue operation; they are applied in order."""
        self.task_ops.append(op)
