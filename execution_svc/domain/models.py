"""Plain data of the execution engine: statuses, records as stored, views as served."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# The `item_index` of a step's own row; rows of `for_each` items carry 0, 1, 2, ...
STEP_ROW = -1

StepKey = tuple[str, int]
"""(step_id, item_index): one row of `run_steps`."""


class RunStatus(StrEnum):
    """Lifecycle of a run (API.md "Runs")."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the statuses only an operator's retry can leave."""
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class StepStatus(StrEnum):
    """Lifecycle of a step, or of one `for_each` item."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True when no attempt is in progress or due."""
        return self in (
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
            StepStatus.SKIPPED,
            StepStatus.CANCELLED,
        )


class Trigger(StrEnum):
    """How a run was started."""

    API = "api"
    SCHEDULE = "schedule"
    WEBHOOK = "webhook"
    SUB_WORKFLOW = "sub_workflow"


class PauseReason(StrEnum):
    """Why a run is paused: an operator asked, or a step with `on_exhausted: pause` gave up."""

    OPERATOR = "operator"
    STEP_EXHAUSTED = "step_exhausted"


class EventType(StrEnum):
    """Event types of API.md "Events" that the engine writes."""

    WORKFLOW_STARTED = "workflow.started"
    STEP_STARTED = "workflow.step.started"
    STEP_COMPLETED = "workflow.step.completed"
    STEP_FAILED = "workflow.step.failed"
    STEP_RETRYING = "workflow.step.retrying"
    STEP_SKIPPED = "workflow.step.skipped"
    WORKFLOW_PAUSED = "workflow.paused"
    WORKFLOW_RESUMED = "workflow.resumed"
    WORKFLOW_COMPLETED = "workflow.completed"
    WORKFLOW_FAILED = "workflow.failed"
    WORKFLOW_CANCELLED = "workflow.cancelled"

    @property
    def terminal(self) -> bool:
        """True for the events after which a run stream ends (unless an operator retries)."""
        return self in (
            EventType.WORKFLOW_COMPLETED,
            EventType.WORKFLOW_FAILED,
            EventType.WORKFLOW_CANCELLED,
        )


class TaskKind(StrEnum):
    """What a queued task asks a worker to do."""

    EXECUTE = "execute"  # an attempt of an agent or http step
    DELAY = "delay"  # a `delay` step's wait is over
    SIGNAL_TIMEOUT = "signal_timeout"  # a `wait_for_signal` step waited too long


class TaskState(StrEnum):
    """Queue state of a task row."""

    READY = "ready"  # claimable once `available_at` has passed
    LEASED = "leased"  # a worker holds it until `lease_expires_at`
    HELD = "held"  # its run is paused; resuming makes it ready again


@dataclass(frozen=True)
class RunError:
    """Why a run or step failed."""

    code: str
    message: str
    step_id: str = ""

    def to_dict(self) -> dict[str, str]:
        """JSON form, as stored and as put in events."""
        data = {"code": self.code, "message": self.message}
        if self.step_id:
            data["step_id"] = self.step_id
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RunError | None:
        """Inverse of to_dict; None stays None."""
        if not data:
            return None
        return cls(str(data.get("code", "")), str(data.get("message", "")), str(data.get("step_id", "")))


@dataclass
class RunRecord:
    """One row of `runs`."""

    id: str
    tenant_id: str
    workflow_id: str
    workflow_name: str
    workflow_version: int
    workflow: dict[str, Any]
    status: RunStatus
    input: Any
    trigger: Trigger
    triggered_by: str
    created_at: dt.datetime
    updated_at: dt.datetime
    output: Any = None
    error: RunError | None = None
    parent_run_id: str | None = None
    parent_step_id: str | None = None
    pause_reason: PauseReason | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    last_seq: int = 0
    # `runs.state_version`: bumped whenever the run or one of its step rows is written.
    state_version: int = 0


@dataclass
class StepRecord:
    """One row of `run_steps`: a step (`item_index` -1) or one of its `for_each` items."""

    run_id: str
    step_id: str
    item_index: int
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0
    # Attempts made before the current retry budget started (operator retries, lost leases).
    retry_base: int = 0
    lease_losses: int = 0
    input: Any = None
    output: Any = None
    error: RunError | None = None
    agent: str | None = None
    signal: str | None = None
    items_total: int | None = None
    # Set when the step was evaluated and queued; None while it waits for its dependencies.
    ready_at: dt.datetime | None = None
    deadline_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None

    @property
    def key(self) -> StepKey:
        """(step_id, item_index)."""
        return (self.step_id, self.item_index)


@dataclass
class AttemptRecord:
    """One row of `step_attempts`."""

    run_id: str
    step_id: str
    item_index: int
    attempt: int
    status: StepStatus
    started_at: dt.datetime
    error: RunError | None = None
    completed_at: dt.datetime | None = None


@dataclass(frozen=True)
class EventRecord:
    """One row of `events`: a change of a run, with its gap-free per-run `seq`."""

    run_id: str
    tenant_id: str
    workflow_id: str
    seq: int
    type: str
    timestamp: dt.datetime
    step_id: str | None
    data: dict[str, Any]


@dataclass(frozen=True)
class LoggedEvent:
    """An event with its position in the tenant-spanning event log (`events.id`): the cursor
    of WatchEvents. Positions increase in insertion order; they are not contiguous per tenant."""

    position: int
    event: EventRecord


@dataclass(frozen=True)
class AttemptView:
    """One attempt of a step as served."""

    attempt: int
    status: StepStatus
    error: RunError | None
    started_at: dt.datetime
    completed_at: dt.datetime | None


@dataclass(frozen=True)
class StepView:
    """A step as served by GetRun/ListRunSteps; a `for_each` step lists its items."""

    step_id: str
    status: StepStatus
    attempt: int
    input: Any
    output: Any
    error: RunError | None
    agent: str | None
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    index: int = STEP_ROW
    attempts: tuple[AttemptView, ...] = ()
    items: tuple[StepView, ...] = ()


@dataclass(frozen=True)
class RunView:
    """A run as served."""

    id: str
    tenant_id: str
    workflow_id: str
    workflow_name: str
    workflow_version: int
    status: RunStatus
    input: Any
    output: Any
    error: RunError | None
    trigger: Trigger
    triggered_by: str
    parent_run_id: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    steps: tuple[StepView, ...] = field(default=())


@dataclass(frozen=True)
class RunFilter:
    """Filters of ListRuns; None means "any"."""

    workflow_id: str | None = None
    status: RunStatus | None = None
    trigger: Trigger | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None


@dataclass(frozen=True)
class RunPage:
    """One page of runs and the cursor of the next one ("" on the last page)."""

    items: tuple[RunView, ...]
    next_page_token: str


@dataclass(frozen=True)
class TaskLease:
    """A task a worker holds: valid while the row still carries this `token` and
    `expires_at` has not passed."""

    task_id: str
    tenant_id: str
    run_id: str
    step_id: str
    item_index: int
    kind: TaskKind
    token: int
    owner: str
    expires_at: dt.datetime

    @property
    def key(self) -> StepKey:
        """The step row the task belongs to."""
        return (self.step_id, self.item_index)


@dataclass(frozen=True)
class ExpiredTask:
    """A leased task whose lease ran out: the reaper puts it back."""

    task_id: str
    tenant_id: str
    run_id: str
    step_id: str
    item_index: int
    kind: TaskKind
