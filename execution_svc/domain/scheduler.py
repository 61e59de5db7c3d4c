"""The DAG scheduler: every decision about a run, made in memory on a locked RunState.

Callers (the engine's transactions) load the run, call one entry point, and write the
resulting changes atomically. Entry points:

- `start`, `advance`: evaluate and start every step whose dependencies are settled; pure
  steps (`transform`, `when`, `for_each` lists, the output mapping) are evaluated inline.
- `begin_attempt`, `complete_attempt`, `fire_timer`, `lease_expired`: what workers report.
- `cancel`, `pause`, `resume`, `retry_run`, `retry_step`, `complete_step`, `signal`:
  operator controls; an illegal one raises ConflictError before anything changes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections.abc import Mapping
from typing import Any

from execution_svc.domain.definition import (
    DEFAULT_STEP_TIMEOUT_MS,
    OnExhausted,
    RetryPolicy,
    StepDef,
    StepType,
    WorkflowDef,
)
from execution_svc.domain.expressions import ExpressionError, Expressions
from execution_svc.domain.models import (
    STEP_ROW,
    EventType,
    PauseReason,
    RunError,
    RunStatus,
    StepKey,
    StepRecord,
    StepStatus,
    TaskKind,
    TaskState,
)
from execution_svc.domain.ports import StepCall, StepFailed, StepResult, StepSucceeded
from execution_svc.domain.state import (
    DeleteRunTasks,
    DeleteTask,
    HoldRunTasks,
    InvariantError,
    ReleaseRunTasks,
    RunState,
    UpsertTask,
)
from flowforge_common.errors import ConflictError, NotFoundError

DEFAULT_RETRY = RetryPolicy()
# A step whose worker vanished this many times fails instead of being handed out again, so
# that an input which crashes workers cannot take the whole fleet down in a loop.
MAX_LEASE_LOSSES = 5


def _ms(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


class RunScheduler:
    """Decisions for one run within one transaction."""

    def __init__(
        self,
        state: RunState,
        definition: WorkflowDef,
        expressions: Expressions,
        *,
        now: dt.datetime,
        rng: random.Random,
        max_output_bytes: int,
    ) -> None:
        self.state = state
        self.definition = definition
        self._expressions = expressions
        self.now = now
        self._rng = rng
        self._max_output_bytes = max_output_bytes
        self._context_cache: dict[str, Any] | None = None

    # ===================================================================================
    # Lifecycle
    # ===================================================================================

    def start(self) -> None:
        """A new run: `workflow.started`, then its root steps."""
        run = self.state.run
        self.state.emit(
            EventType.WORKFLOW_STARTED,
            self.now,
            workflow_version=run.workflow_version,
            input=run.input,
            trigger=run.trigger.value,
        )
        self.advance()

    def advance(self) -> None:
        """Starts every step whose dependencies are settled, until nothing changes, then
        finishes the run when every step is done. Nothing starts while the run is paused."""
        changed = True
        while changed and self.state.run.status in (RunStatus.PENDING, RunStatus.RUNNING):
            changed = False
            for step in self.definition.steps:
                row = self.state.row(step.id)
                if row.status is StepStatus.PENDING and row.ready_at is None:
                    changed = self._try_activate(step, row) or changed
                elif row.status is StepStatus.RUNNING and step.for_each is not None:
                    changed = self._progress_for_each(step, row) or changed
                if self.state.run.status not in (RunStatus.PENDING, RunStatus.RUNNING):
                    break
        self._maybe_finish()

    # ===================================================================================
    # Worker reports
    # ===================================================================================

    def begin_attempt(self, key: StepKey) -> bool:
        """A worker claimed the `execute` task of `key`: starts an attempt and returns True,
        or settles the task (held, dropped or failed) and returns False."""
        run = self.state.run
        row = self.state.rows.get(key)
        if run.status is RunStatus.PAUSED and row is not None and not row.status.finished:
            self._queue_task(row, TaskKind.EXECUTE, self.now, held=True)
            return False
        if run.status.finished or row is None or row.status.finished or row.ready_at is None:
            self.state.queue(DeleteTask(*key))
            return False
        step = self.definition.step(row.step_id)
        if row.status is StepStatus.RUNNING:
            # Started before but never reported: its lease was lost without the reaper
            # noticing. Close that attempt so the history stays truthful.
            self.state.end_attempt(row, StepStatus.FAILED, self.now, RunError("LEASE_EXPIRED", "worker lost"))
            self.state.set_status(row, StepStatus.WAITING)
        if (
            step.queue_timeout_ms is not None
            and row.attempt == row.retry_base
            and self.now - row.ready_at > dt.timedelta(milliseconds=step.queue_timeout_ms)
        ):
            self._fail_step(
                step,
                row,
                RunError("QUEUE_TIMEOUT", f"not started within queue_timeout_ms={step.queue_timeout_ms}"),
            )
            self.advance()
            return False
        if row.deadline_at is not None and self.now >= row.deadline_at:
            self._fail_step(
                step,
                row,
                RunError("TOTAL_TIMEOUT", f"total_timeout_ms={step.total_timeout_ms} reached"),
            )
            self.advance()
            return False
        self.state.begin_attempt(row, self.now)
        self.state.set_status(row, StepStatus.RUNNING)
        self._mark_started()
        self._emit_step(EventType.STEP_STARTED, row, attempt=row.attempt, agent=step.agent)
        return True

    def step_call(self, key: StepKey) -> StepCall:
        """What the executor needs for the attempt `begin_attempt` just started."""
        row = self.state.row(*key)
        step = self.definition.step(row.step_id)
        run = self.state.run
        return StepCall(
            tenant_id=run.tenant_id,
            run_id=run.id,
            workflow_id=run.workflow_id,
            step_id=row.step_id,
            item_index=row.item_index,
            attempt=row.attempt,
            type=step.type,
            agent=step.agent,
            config=step.config,
            input=row.input,
            timeout_ms=step.timeout_ms,
            deadline_at=row.deadline_at,
        )

    def dispatch_eagerly(self, key: StepKey, owner: str, lease_until: dt.datetime) -> bool:
        """Starts an attempt of a task queued in this transaction and leases the task to
        `owner`, so the worker that made the step ready runs it with no queue round trip."""
        op = next(
            (
                o
                for o in reversed(self.state.task_ops)
                if isinstance(o, UpsertTask) and (o.step_id, o.item_index) == key
            ),
            None,
        )
        if op is None or op.state is not TaskState.READY or op.available_at > self.now:
            return False
        if not self.begin_attempt(key):
            return False
        op.state = TaskState.LEASED
        op.lease_owner = owner
        op.lease_expires_at = lease_until
        return True

    def complete_attempt(self, key: StepKey, attempt: int, result: StepResult) -> None:
        """A worker finished attempt `attempt` of `key` (its lease was checked)."""
        row = self.state.row(*key)
        if row.status is not StepStatus.RUNNING or row.attempt != attempt:
            raise InvariantError(f"result for {key} attempt {attempt} but row is {row.status} #{row.attempt}")
        step = self.definition.step(row.step_id)
        if step.concurrency is not None:
            self.state.wake_workers = True
        if isinstance(result, StepSucceeded):
            self._succeed(step, row, result.output)
        else:
            self._attempt_failed(step, row, result)
        self.advance()

    def fire_timer(self, key: StepKey, kind: TaskKind) -> None:
        """A `delay` ended or a `wait_for_signal` timed out."""
        row = self.state.rows.get(key)
        if row is None or row.status is not StepStatus.WAITING or self.state.run.status.finished:
            self.state.queue(DeleteTask(*key))
            return
        step = self.definition.step(row.step_id)
        if kind is TaskKind.DELAY:
            # A delay passes its evaluated input on, so data can flow through it.
            self._succeed(step, row, row.input)
        else:
            self._fail_step(
                step,
                row,
                RunError("SIGNAL_TIMEOUT", f"no signal {row.signal!r} within timeout_ms={step.timeout_ms}"),
            )
        self.advance()

    def lease_expired(self, key: StepKey, kind: TaskKind) -> None:
        """The worker holding the task of `key` stopped heartbeating: the task goes back to
        the queue. A lost attempt does not consume the retry budget (the agent may never have
        seen it), but repeated losses fail the step."""
        row = self.state.rows.get(key)
        if row is None or row.status.finished or self.state.run.status.finished:
            self.state.queue(DeleteTask(*key))
            return
        if row.status is not StepStatus.RUNNING:
            # Claimed but never started (or a timer): simply hand it out again.
            self._queue_task(row, kind, self.now)
            return
        step = self.definition.step(row.step_id)
        error = RunError("LEASE_EXPIRED", f"the worker running attempt {row.attempt} stopped responding")
        row.lease_losses += 1
        if row.lease_losses >= MAX_LEASE_LOSSES:
            self._fail_step(step, row, RunError("LEASE_EXPIRED", f"lost {row.lease_losses} workers in a row"))
            self.advance()
            return
        self.state.end_attempt(row, StepStatus.FAILED, self.now, error)
        row.retry_base += 1
        self.state.set_status(row, StepStatus.WAITING)
        self._queue_task(row, TaskKind.EXECUTE, self.now)
        self._emit_step(EventType.STEP_RETRYING, row, attempt=row.attempt, delay_ms=0, error=error.to_dict())

    # ===================================================================================
    # Operator controls
    # ===================================================================================

    def cancel(self, actor: str) -> None:
        """Cancels an unfinished run: unfinished steps are cancelled, queued work dropped,
        in-flight attempts aborted."""
        run = self.state.run
        if run.status.finished:
            raise ConflictError(f"run {run.id} is already {run.status}: only unfinished runs can be cancelled")
        self._close_unfinished_rows()
        self.state.set_run_status(RunStatus.CANCELLED)
        run.completed_at = self.now
        self.state.queue(DeleteRunTasks())
        self.state.abort_in_flight = True
        self.state.emit(EventType.WORKFLOW_CANCELLED, self.now, by=actor)

    def pause(self, actor: str) -> None:
        """Pauses a pending or running run: running steps finish, nothing new starts."""
        run = self.state.run
        if run.status is RunStatus.PAUSED:
            raise ConflictError(f"run {run.id} is already paused")
        if run.status.finished:
            raise ConflictError(f"run {run.id} is {run.status}: only pending or running runs can be paused")
        self.state.set_run_status(RunStatus.PAUSED)
        run.pause_reason = PauseReason.OPERATOR
        self.state.queue(HoldRunTasks())
        self.state.emit(EventType.WORKFLOW_PAUSED, self.now, reason=PauseReason.OPERATOR.value, by=actor)

    def resume(self, actor: str) -> None:
        """Resumes a paused run; refused while a step that parked it is still failed."""
        run = self.state.run
        if run.status is not RunStatus.PAUSED:
            raise ConflictError(f"run {run.id} is {run.status}: only paused runs can be resumed")
        failed = self._failed_steps()
        if failed:
            raise ConflictError(
                f"step {failed[0]!r} failed and parked run {run.id}: retry or complete it instead of resuming"
            )
        self._unpause(reason="resumed", actor=actor)
        self.advance()

    def retry_run(self, actor: str) -> None:
        """Re-runs what did not succeed in a failed or cancelled run; succeeded steps and
        succeeded `for_each` items keep their outputs."""
        run = self.state.run
        if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
            raise ConflictError(f"run {run.id} is {run.status}: only failed or cancelled runs can be retried")
        for step in self.definition.steps:
            row = self.state.row(step.id)
            if row.status is not StepStatus.SUCCEEDED:
                self._reset(step, row, keep_succeeded_items=True)
        self._reactivate(reason="retry_run", actor=actor)
        self.advance()

    def retry_step(self, step_id: str, actor: str) -> None:
        """Re-runs one finished step and every step downstream of it."""
        run = self.state.run
        step = self._known_step(step_id)
        if run.status is RunStatus.SUCCEEDED:
            raise ConflictError(f"run {run.id} has succeeded: a finished run's steps cannot be retried")
        row = self.state.row(step_id)
        if not row.status.finished:
            raise ConflictError(f"step {step_id!r} is {row.status}: only a finished step can be retried")
        for dep in step.depends_on:
            if self.state.row(dep).status is not StepStatus.SUCCEEDED:
                raise ConflictError(f"step {step_id!r} depends on {dep!r}, which has not succeeded")
        downstream = self.definition.downstream(step_id)
        for other in downstream:
            if self.state.row(other).status in (StepStatus.RUNNING, StepStatus.WAITING):
                raise ConflictError(f"step {other!r} depends on {step_id!r} and is still in progress")
        resetting = {step_id, *downstream}
        self._require_no_other_failure(resetting, "retry")
        for target in [step_id, *downstream]:
            self._reset(self.definition.step(target), self.state.row(target), keep_succeeded_items=False)
        self._reactivate(reason="retry_step", actor=actor, step_id=step_id)
        self.advance()

    def complete_step(self, step_id: str, output: Any, actor: str) -> None:
        """An operator resolves a failed or waiting step with `output`; the run goes on."""
        run = self.state.run
        self._known_step(step_id)
        if run.status in (RunStatus.SUCCEEDED, RunStatus.CANCELLED):
            raise ConflictError(f"run {run.id} is {run.status}: its steps cannot be completed")
        row = self.state.row(step_id)
        if row.status not in (StepStatus.FAILED, StepStatus.WAITING):
            raise ConflictError(f"step {step_id!r} is {row.status}: only failed or waiting steps can be completed")
        if _json_size(output) > self._max_output_bytes:
            raise ConflictError(f"output is over the {self._max_output_bytes}-byte limit")
        self._require_no_other_failure({step_id}, "complete")
        for item in self.state.items(step_id):
            if not item.status.finished:
                self._close_row(item, StepStatus.CANCELLED)
        if self._has_open_attempt(row):
            self.state.end_attempt(row, StepStatus.SUCCEEDED, self.now)
        self.state.queue(DeleteTask(step_id, STEP_ROW))
        row.output = output
        row.error = None
        row.completed_at = self.now
        self.state.set_status(row, StepStatus.SUCCEEDED)
        self._context_cache = None
        self._emit_step(EventType.STEP_COMPLETED, row, attempt=row.attempt, output=output, manual=True, by=actor)
        self._reactivate(reason="complete_step", actor=actor, step_id=step_id)
        self.advance()

    def signal(self, name: str, payload: Any, actor: str) -> None:
        """Delivers a signal: every step (or item) waiting for `name` succeeds with `payload`."""
        run = self.state.run
        if run.status.finished:
            raise ConflictError(f"run {run.id} is {run.status}: it takes no more signals")
        waiting = [row for row in self.state.rows.values() if row.status is StepStatus.WAITING and row.signal == name]
        if not waiting:
            raise ConflictError(f"no step of run {run.id} is waiting for signal {name!r}")
        if _json_size(payload) > self._max_output_bytes:
            raise ConflictError(f"payload is over the {self._max_output_bytes}-byte limit")
        for row in sorted(waiting, key=lambda r: r.key):
            self._succeed(self.definition.step(row.step_id), row, payload, by=actor)
        self.advance()

    # ===================================================================================
    # Activation
    # ===================================================================================

    def _try_activate(self, step: StepDef, row: StepRecord) -> bool:
        deps = [self.state.row(dep) for dep in step.depends_on]
        if any(dep.status not in (StepStatus.SUCCEEDED, StepStatus.SKIPPED) for dep in deps):
            return False
        skipped = next((dep for dep in deps if dep.status is StepStatus.SKIPPED), None)
        if skipped is not None:
            self._skip(row, f"dependency {skipped.step_id!r} was skipped")
            return True
        row.ready_at = self.now
        if step.total_timeout_ms is not None:
            row.deadline_at = self.now + dt.timedelta(milliseconds=step.total_timeout_ms)
        row.agent = step.agent
        self.state.touch(row)
        context = self._context()
        if step.when is not None:
            try:
                go = self._expressions.condition(step.when, context)
            except ExpressionError as exc:
                self._fail_step(step, row, RunError("EXPRESSION_ERROR", f"when: {exc}"))
                return True
            if not go:
                self._skip(row, "when is false")
                return True
        if step.for_each is None:
            try:
                row.input = self._expressions.render(step.input, context)
            except ExpressionError as exc:
                self._fail_step(step, row, RunError("EXPRESSION_ERROR", f"input: {exc}"))
                return True
            self._launch(step, row)
            return True
        self._begin_for_each(step, row, context)
        return True

    def _begin_for_each(self, step: StepDef, row: StepRecord, context: Mapping[str, Any]) -> None:
        assert step.for_each is not None
        try:
            values = self._expressions.values(step.for_each, context)
        except ExpressionError as exc:
            self._fail_step(step, row, RunError("EXPRESSION_ERROR", f"for_each: {exc}"))
            return
        if not isinstance(values, list):
            self._fail_step(
                step, row, RunError("FOR_EACH_NOT_A_LIST", f"for_each gave {type(values).__name__}, not a list")
            )
            return
        inputs: list[Any] = []
        for index, value in enumerate(values):
            try:
                inputs.append(self._expressions.render(step.input, {**context, "item": value}))
            except ExpressionError as exc:
                self._fail_step(step, row, RunError("EXPRESSION_ERROR", f"input of item {index}: {exc}"))
                return
        row.items_total = len(values)
        row.input = None
        self.state.set_status(row, StepStatus.RUNNING)
        row.started_at = row.started_at or self.now
        self._mark_started()
        self._emit_step(EventType.STEP_STARTED, row, items=len(values))
        existing = {item.item_index: item for item in self.state.items(step.id)}
        for index, item_input in enumerate(inputs):
            item = existing.pop(index, None)
            if item is not None and item.status is StepStatus.SUCCEEDED and item.input == item_input:
                continue  # kept by retry_run
            if item is None:
                item = StepRecord(run_id=row.run_id, step_id=step.id, item_index=index)
                self.state.add_row(item)
            elif item.status is not StepStatus.PENDING:
                self._reset_row(item)
            item.input = item_input
            item.agent = step.agent
            self.state.touch(item)
        for stale in existing.values():
            self.state.remove_row(stale.key)
        self._progress_for_each(step, row)

    def _progress_for_each(self, step: StepDef, parent: StepRecord) -> bool:
        """Launches items up to `max_concurrency`, then completes the step when every item
        has succeeded (output = their outputs, in item order)."""
        changed = False
        items = self.state.items(step.id)
        if self.state.run.status in (RunStatus.PENDING, RunStatus.RUNNING):
            active = sum(1 for item in items if item.ready_at is not None and not item.status.finished)
            for item in items:
                if active >= step.max_concurrency:
                    break
                if item.status is StepStatus.PENDING and item.ready_at is None:
                    item.ready_at = self.now
                    item.deadline_at = parent.deadline_at
                    self.state.touch(item)
                    self._launch(step, item)
                    changed = True
                    if not item.status.finished:
                        active += 1
                    if parent.status is not StepStatus.RUNNING:
                        return True  # an item failed for good and took the step with it
        if parent.status is StepStatus.RUNNING and all(item.status is StepStatus.SUCCEEDED for item in items):
            outputs = [item.output for item in items]
            self._finish_success(step, parent, outputs, items=len(items))
            changed = True
        return changed

    def _launch(self, step: StepDef, row: StepRecord) -> None:
        """Starts an evaluated step row (or item) according to its type."""
        if step.type is StepType.TRANSFORM:
            self.state.begin_attempt(row, self.now)
            self.state.set_status(row, StepStatus.RUNNING)
            self._mark_started()
            self._emit_step(EventType.STEP_STARTED, row, attempt=row.attempt)
            self._succeed(step, row, row.input)
        elif step.type is StepType.DELAY:
            duration = step.config.get("duration_ms")
            if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
                self._fail_step(step, row, RunError("BAD_CONFIG", "delay needs config.duration_ms >= 0"))
                return
            self._begin_wait(row, duration_ms=int(duration))
            self._queue_task(row, TaskKind.DELAY, self.now + dt.timedelta(milliseconds=int(duration)))
        elif step.type is StepType.WAIT_FOR_SIGNAL:
            name = step.config.get("signal")
            if not isinstance(name, str) or not name:
                self._fail_step(step, row, RunError("BAD_CONFIG", "wait_for_signal needs config.signal"))
                return
            row.signal = name
            self._begin_wait(row, signal=name)
            if step.timeout_ms is not None:
                self._queue_task(row, TaskKind.SIGNAL_TIMEOUT, self.now + dt.timedelta(milliseconds=step.timeout_ms))
        elif step.type.remote:
            key = None
            if step.concurrency is not None:
                try:
                    key = self._concurrency_key(step, row)
                except ExpressionError as exc:
                    self._fail_step(step, row, RunError("EXPRESSION_ERROR", f"concurrency.key: {exc}"))
                    return
            self._queue_task(row, TaskKind.EXECUTE, self.now, concurrency_key=key)
            if step.concurrency is None:
                # A keyed step waits for a claim, which counts the key's running attempts.
                self.state.dispatchable.append(row.key)
        else:
            self._fail_step(step, row, RunError("UNSUPPORTED_STEP_TYPE", f"{step.type} steps are not supported yet"))

    def _begin_wait(self, row: StepRecord, **data: Any) -> None:
        self.state.begin_attempt(row, self.now)
        self.state.set_status(row, StepStatus.WAITING)
        self._mark_started()
        self._emit_step(EventType.STEP_STARTED, row, attempt=row.attempt, **data)

    def _queue_task(
        self,
        row: StepRecord,
        kind: TaskKind,
        available_at: dt.datetime,
        *,
        held: bool = False,
        concurrency_key: str | None = None,
    ) -> None:
        paused = self.state.run.status is RunStatus.PAUSED and kind is TaskKind.EXECUTE
        step = self.definition.step(row.step_id)
        keyed = kind is TaskKind.EXECUTE and step.concurrency is not None
        self.state.queue(
            UpsertTask(
                step_id=row.step_id,
                item_index=row.item_index,
                kind=kind,
                available_at=available_at,
                priority=step.priority,
                state=TaskState.HELD if held or paused else TaskState.READY,
                concurrency_key=(concurrency_key or self._safe_concurrency_key(step, row)) if keyed else None,
                concurrency_limit=step.concurrency.limit if keyed and step.concurrency else None,
            )
        )

    def _safe_concurrency_key(self, step: StepDef, row: StepRecord) -> str:
        # The key evaluated when the step launched; it only fails to evaluate again if the data
        # it reads changed since (an operator completing a step by hand): then the step's own
        # slot pool is the honest fallback.
        try:
            return self._concurrency_key(step, row)
        except ExpressionError:
            return f"{self.state.run.tenant_id}:step:{self.state.run.workflow_id}/{step.id}"

    def _concurrency_key(self, step: StepDef, row: StepRecord) -> str:
        """The tenant-wide key of a keyed step's attempt: `concurrency.key` evaluated like the
        step's input (with `item` for a `for_each` item); ExpressionError when it cannot be."""
        assert step.concurrency is not None
        context = self._context()
        # Only a key that reads `item` needs the item's value (the for_each list, evaluated again).
        if row.item_index != STEP_ROW and step.for_each is not None and "item" in step.concurrency.key:
            values = self._expressions.values(step.for_each, context)
            if isinstance(values, list) and row.item_index < len(values):
                context = {**context, "item": values[row.item_index]}
        value = self._expressions.render(step.concurrency.key, context)
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
        key = f"{self.state.run.tenant_id}:{text}"
        # Long values are hashed so that the column never truncates two keys into one.
        return (
            key if len(key) <= 300 else f"{self.state.run.tenant_id}:sha256:{hashlib.sha256(text.encode()).hexdigest()}"
        )

    # ===================================================================================
    # Outcomes
    # ===================================================================================

    def _succeed(self, step: StepDef, row: StepRecord, output: Any, **data: Any) -> None:
        """An attempt (or a delay, signal or transform) produced `output`."""
        if _json_size(output) > self._max_output_bytes:
            self._fail_step(
                step,
                row,
                RunError("OUTPUT_TOO_LARGE", f"output is over the {self._max_output_bytes}-byte limit"),
            )
            return
        self.state.end_attempt(row, StepStatus.SUCCEEDED, self.now)
        if step.type is not StepType.TRANSFORM:
            self.state.queue(DeleteTask(row.step_id, row.item_index))
        self._finish_success(step, row, output, attempt=row.attempt, **data)

    def _finish_success(self, step: StepDef, row: StepRecord, output: Any, **data: Any) -> None:
        row.output = output
        row.error = None
        row.completed_at = self.now
        self.state.set_status(row, StepStatus.SUCCEEDED)
        if row.item_index == STEP_ROW:
            self._context_cache = None
        started = row.started_at or self.now
        extra: dict[str, Any] = {"agent": step.agent} if step.agent else {}
        self._emit_step(
            EventType.STEP_COMPLETED, row, duration_ms=_ms(self.now - started), output=output, **extra, **data
        )

    def _attempt_failed(self, step: StepDef, row: StepRecord, result: StepFailed) -> None:
        policy = step.retry.over(result.defaults.over(DEFAULT_RETRY))
        used = row.attempt - row.retry_base
        retryable = result.retryable and (
            result.status_code is None or result.status_code not in policy.non_retryable_status
        )
        if not retryable or used > policy.max_retries:
            self._fail_step(step, row, result.error)
            return
        delay = policy.delay_ms(used, self._rng)
        if result.retry_after_ms is not None:
            delay = max(delay, result.retry_after_ms)
        due = self.now + dt.timedelta(milliseconds=delay)
        if row.deadline_at is not None and due >= row.deadline_at:
            self._fail_step(
                step,
                row,
                RunError(
                    "TOTAL_TIMEOUT",
                    f"total_timeout_ms={step.total_timeout_ms} leaves no time to retry; "
                    f"last error: {result.error.message}",
                ),
            )
            return
        self.state.end_attempt(row, StepStatus.FAILED, self.now, result.error)
        row.error = result.error
        self.state.set_status(row, StepStatus.WAITING)
        self._queue_task(row, TaskKind.EXECUTE, due)
        self._emit_step(EventType.STEP_RETRYING, row, attempt=row.attempt, delay_ms=delay, error=result.error.to_dict())

    def _fail_step(self, step: StepDef, row: StepRecord, error: RunError) -> None:
        """The row failed for good. An item takes its step with it; a step then fails the
        run, or parks it when its policy says `on_exhausted: pause`."""
        error = RunError(error.code, error.message, step.id)
        if self._has_open_attempt(row):
            self.state.end_attempt(row, StepStatus.FAILED, self.now, error)
        if step.type is not StepType.TRANSFORM:
            self.state.queue(DeleteTask(row.step_id, row.item_index))
        row.error = error
        row.completed_at = self.now
        self.state.set_status(row, StepStatus.FAILED)
        if row.item_index == STEP_ROW:
            self._context_cache = None
        self._emit_step(EventType.STEP_FAILED, row, attempt=row.attempt, error=error.to_dict())
        if row.item_index != STEP_ROW:
            for item in self.state.items(step.id):
                if not item.status.finished:
                    self._close_row(item, StepStatus.CANCELLED)
            parent = self.state.row(step.id)
            if parent.status is StepStatus.RUNNING:
                self._fail_step(step, parent, RunError(error.code, f"item {row.item_index}: {error.message}", step.id))
            return
        if step.on_exhausted is OnExhausted.PAUSE:
            self._park(step)
        else:
            self._fail_run(error)

    def _park(self, step: StepDef) -> None:
        run = self.state.run
        if run.status.finished:
            return
        already_paused = run.status is RunStatus.PAUSED
        self.state.set_run_status(RunStatus.PAUSED)
        run.pause_reason = PauseReason.STEP_EXHAUSTED
        if not already_paused:
            self.state.queue(HoldRunTasks())
            self.state.emit(
                EventType.WORKFLOW_PAUSED, self.now, reason=PauseReason.STEP_EXHAUSTED.value, step_id=step.id
            )

    def _fail_run(self, error: RunError) -> None:
        run = self.state.run
        if run.status.finished:
            return
        self._close_unfinished_rows()
        self.state.set_run_status(RunStatus.FAILED)
        run.error = error
        run.completed_at = self.now
        self.state.queue(DeleteRunTasks())
        self.state.abort_in_flight = True
        self.state.emit(EventType.WORKFLOW_FAILED, self.now, error=error.to_dict())

    def _maybe_finish(self) -> None:
        run = self.state.run
        if run.status.finished:
            return
        if any(
            self.state.row(step.id).status not in (StepStatus.SUCCEEDED, StepStatus.SKIPPED)
            for step in self.definition.steps
        ):
            return
        try:
            output = self._expressions.render(self.definition.output, self._context())
        except ExpressionError as exc:
            self._fail_run(RunError("OUTPUT_MAPPING_ERROR", f"output: {exc}"))
            return
        if _json_size(output) > self._max_output_bytes:
            self._fail_run(RunError("OUTPUT_TOO_LARGE", f"run output is over {self._max_output_bytes} bytes"))
            return
        self.state.set_run_status(RunStatus.SUCCEEDED)
        run.output = output
        run.error = None
        run.started_at = run.started_at or self.now
        run.completed_at = self.now
        self.state.emit(
            EventType.WORKFLOW_COMPLETED, self.now, output=output, duration_ms=_ms(self.now - run.created_at)
        )

    # ===================================================================================
    # Helpers
    # ===================================================================================

    def _skip(self, row: StepRecord, reason: str) -> None:
        row.completed_at = self.now
        self.state.set_status(row, StepStatus.SKIPPED)
        self._context_cache = None
        self._emit_step(EventType.STEP_SKIPPED, row, reason=reason)

    def _close_row(self, row: StepRecord, status: StepStatus) -> None:
        if self._has_open_attempt(row):
            self.state.end_attempt(row, status, self.now)
        self.state.queue(DeleteTask(row.step_id, row.item_index))
        row.completed_at = self.now
        self.state.set_status(row, status)

    def _close_unfinished_rows(self) -> None:
        for row in self.state.rows.values():
            if not row.status.finished:
                if self._has_open_attempt(row):
                    self.state.end_attempt(row, StepStatus.CANCELLED, self.now)
                row.completed_at = self.now
                self.state.set_status(row, StepStatus.CANCELLED)
        self._context_cache = None

    def _has_open_attempt(self, row: StepRecord) -> bool:
        """Running rows have an attempt in progress, and so do waiting delays and signal
        waits; a remote step waits between attempts, its last attempt already closed."""
        if row.status is StepStatus.RUNNING:
            return True
        return row.status is StepStatus.WAITING and not self.definition.step(row.step_id).type.remote

    def _reset(self, step: StepDef, row: StepRecord, *, keep_succeeded_items: bool) -> None:
        """Back to pending, with a fresh retry budget; the attempt history stays."""
        for item in list(self.state.items(step.id)):
            if keep_succeeded_items and item.status is StepStatus.SUCCEEDED:
                continue
            self._reset_row(item)
        self._reset_row(row)

    def _reset_row(self, row: StepRecord) -> None:
        if row.status in (StepStatus.RUNNING, StepStatus.WAITING):
            raise InvariantError(f"reset of in-progress row {row.key}")
        self.state.queue(DeleteTask(row.step_id, row.item_index))
        self.state.set_status(row, StepStatus.PENDING)
        row.retry_base = row.attempt
        row.lease_losses = 0
        row.ready_at = None
        row.deadline_at = None
        row.completed_at = None
        row.output = None
        row.error = None
        row.signal = None
        if row.item_index == STEP_ROW:
            row.items_total = None
            self._context_cache = None

    def _reactivate(self, *, reason: str, actor: str, step_id: str | None = None) -> None:
        """After an operator's retry or completion: a failed or cancelled run runs again (its
        cancelled steps, casualties of the failure, are reset too); a run parked by the step
        just resolved resumes."""
        run = self.state.run
        data: dict[str, Any] = {"step_id": step_id} if step_id else {}
        if run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            for step in self.definition.steps:
                row = self.state.row(step.id)
                if row.status is StepStatus.CANCELLED:
                    self._reset(step, row, keep_succeeded_items=True)
            self.state.set_run_status(RunStatus.RUNNING)
            run.error = None
            run.output = None
            run.completed_at = None
            self.state.emit(EventType.WORKFLOW_RESUMED, self.now, reason=reason, by=actor, **data)
        elif (
            run.status is RunStatus.PAUSED
            and run.pause_reason is PauseReason.STEP_EXHAUSTED
            and not self._failed_steps()
        ):
            self._unpause(reason=reason, actor=actor, **data)

    def _unpause(self, *, reason: str, actor: str, **data: Any) -> None:
        run = self.state.run
        self.state.set_run_status(RunStatus.RUNNING if run.started_at is not None else RunStatus.PENDING)
        run.pause_reason = None
        self.state.queue(ReleaseRunTasks(self.now))
        self.state.emit(EventType.WORKFLOW_RESUMED, self.now, reason=reason, by=actor, **data)

    def _failed_steps(self) -> list[str]:
        return [step.id for step in self.definition.steps if self.state.row(step.id).status is StepStatus.FAILED]

    def _require_no_other_failure(self, resolving: set[str], verb: str) -> None:
        others = [step_id for step_id in self._failed_steps() if step_id not in resolving]
        if others:
            raise ConflictError(f"step {others[0]!r} has failed too: {verb} it as well, or retry the whole run")

    def _known_step(self, step_id: str) -> StepDef:
        try:
            return self.definition.step(step_id)
        except KeyError:
            raise NotFoundError(f"run {self.state.run.id} has no step {step_id!r}") from None

    def _mark_started(self) -> None:
        run = self.state.run
        if run.status is RunStatus.PENDING:
            self.state.set_run_status(RunStatus.RUNNING)
        if run.started_at is None:
            run.started_at = self.now
            self.state.touch_run()

    def _emit_step(self, event_type: EventType, row: StepRecord, **data: Any) -> None:
        if row.item_index != STEP_ROW:
            data["index"] = row.item_index
        self.state.emit(event_type, self.now, row.step_id, **{k: v for k, v in data.items() if v is not None})

    def _context(self) -> dict[str, Any]:
        """The expression context: `{input, steps: {id: {output, status}}, run}`; cached
        until a step's output or status changes."""
        if self._context_cache is None:
            run = self.state.run
            self._context_cache = {
                "input": run.input,
                "steps": {
                    step.id: {
                        "output": self.state.row(step.id).output,
                        "status": self.state.row(step.id).status.value,
                    }
                    for step in self.definition.steps
                },
                "run": {"id": run.id, "workflow_id": run.workflow_id},
            }
        return self._context_cache


def attempt_timeout_ms(call: StepCall, agent_timeout_ms: int | None, now: dt.datetime) -> int:
    """Deadline of one attempt: the step's `timeout_ms`, else the agent's, else 30 s; never
    past the step's `total_timeout_ms`."""
    timeout = call.timeout_ms or agent_timeout_ms or DEFAULT_STEP_TIMEOUT_MS
    if call.deadline_at is not None:
        timeout = min(timeout, max(0, _ms(call.deadline_at - now)))
    return timeout
