"""What the engine needs from the outside world, as protocols: executors, the agent
directory, the notifier and the clock. Implementations live outside `domain/`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from execution_svc.domain.definition import RetryOverrides, StepType
from execution_svc.domain.models import STEP_ROW, RunError
from flowforge_common.auth import Principal

Clock = Callable[[], dt.datetime]
"""Returns the current UTC time; tests substitute a clock they move by hand."""


@dataclass(frozen=True)
class StepCall:
    """Everything an executor needs for one attempt of an `agent` or `http` step."""

    tenant_id: str
    run_id: str
    workflow_id: str
    step_id: str
    item_index: int
    attempt: int
    type: StepType
    agent: str | None
    config: Mapping[str, Any]
    input: Any
    timeout_ms: int | None
    # End of `total_timeout_ms`, if the step has one: no attempt may run past it.
    deadline_at: dt.datetime | None = None

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts: `<run_id>/<step_id>`, plus `/<index>` for `for_each`
        items so that an agent deduplicating by key tells items apart."""
        key = f"{self.run_id}/{self.step_id}"
        return key if self.item_index == STEP_ROW else f"{key}/{self.item_index}"


@dataclass(frozen=True)
class StepSucceeded:
    """An attempt's output."""

    output: Any


@dataclass(frozen=True)
class StepFailed:
    """An attempt's failure. `defaults` carries the agent's retry policy, which the
    scheduler applies under the step's own fields."""

    error: RunError
    retryable: bool
    retry_after_ms: int | None = None
    status_code: int | None = None
    defaults: RetryOverrides = field(default_factory=RetryOverrides)


StepResult = StepSucceeded | StepFailed


class StepExecutor(Protocol):
    """Runs one attempt of a remote step. Never raises for the step's own failures: they
    come back as StepFailed."""

    async def execute(self, call: StepCall) -> StepResult:
        """Performs the attempt within its deadline."""
        ...


@dataclass(frozen=True)
class AgentEndpoint:
    """How to call one agent: URL, credential headers, deadline and retry defaults."""

    name: str
    url: str
    headers: Mapping[str, str]
    timeout_ms: int | None = None
    retry: RetryOverrides = field(default_factory=RetryOverrides)


class AgentDirectory(Protocol):
    """Looks agents up by name within a tenant."""

    async def resolve(self, tenant_id: str, name: str) -> AgentEndpoint:
        """The agent, or NotFoundError when the tenant has no active agent of that name."""
        ...


TASKS_TOPIC = "tasks"
"""Payload unused: ready tasks exist, workers should claim."""
EVENTS_TOPIC = "events"
"""Payload `<tenant_id> <run_id> <seq>`: events up to `seq` are committed."""
WAKE_ALL_WATCHERS = "* * 0"
"""An EVENTS_TOPIC payload that wakes every watcher (sent after notifications may have been
lost, e.g. on reconnecting)."""
CANCEL_TOPIC = "cancel"
"""Payload `<run_id>`: abort in-flight attempts of this run."""


class Notifier(Protocol):
    """Wake-ups between engines, in one process or across processes. Messages are hints
    sent after commit: receivers re-read the database, so a lost or doubled message costs
    latency, never correctness."""

    async def publish(self, messages: Sequence[tuple[str, str]]) -> None:
        """Sends (topic, payload) pairs."""
        ...

    def subscribe(self, topic: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """Calls `callback(payload)` on the event loop for every message on `topic`;
        returns a function that unsubscribes."""
        ...


class WorkflowSource(Protocol):
    """Where ExecuteWorkflow gets the workflow version to snapshot."""

    async def fetch(self, caller: Principal, workflow_id: str, version: int | None) -> Mapping[str, Any]:
        """The version's definition as JSON (`id`, `name`, `version`, `input_schema`, `steps`,
        `output`), as `caller` may see it: NotFoundError for another tenant's workflow,
        ConflictError when it cannot be executed (archived)."""
        ...
