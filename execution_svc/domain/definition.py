"""The workflow snapshot a run executes, parsed once into typed step definitions.

workflow_svc validates definitions when they are saved; the engine still checks the structure
it relies on (ids, dependencies, acyclicity, step types) because a run must never start from a
snapshot it cannot schedule.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from flowforge_common.errors import FieldViolation, ValidationError

DEFAULT_MAX_CONCURRENCY = 10
DEFAULT_STEP_TIMEOUT_MS = 30_000


class StepType(StrEnum):
    """What a step does (API.md "Workflows")."""

    AGENT = "agent"
    HTTP = "http"
    TRANSFORM = "transform"
    DELAY = "delay"
    WAIT_FOR_SIGNAL = "wait_for_signal"
    SUB_WORKFLOW = "sub_workflow"

    @property
    def remote(self) -> bool:
        """Steps whose attempts a worker executes: calls over HTTP, and child runs to wait for."""
        return self in (StepType.AGENT, StepType.HTTP, StepType.SUB_WORKFLOW)


class OnExhausted(StrEnum):
    """What happens when a step has used all its retries."""

    FAIL = "fail"
    PAUSE = "pause"


@dataclass(frozen=True)
class RetryPolicy:
    """A retry policy with every field resolved."""

    max_retries: int = 3
    initial_delay_ms: int = 1000
    max_delay_ms: int = 30_000
    backoff_multiplier: float = 2.0
    jitter: bool = True
    non_retryable_status: frozenset[int] = frozenset()

    def delay_ms(self, retry_number: int, rng: random.Random) -> int:
        """Delay before retry `retry_number` (1 for the first retry): exponential backoff
        capped at `max_delay_ms`, with full jitter (uniform in [0, cap]) when enabled, which
        spreads retries of many failing steps instead of having them hammer an agent in step."""
        ceiling = min(
            float(self.max_delay_ms),
            self.initial_delay_ms * self.backoff_multiplier ** max(0, retry_number - 1),
        )
        return int(rng.uniform(0, ceiling)) if self.jitter else int(ceiling)


@dataclass(frozen=True)
class RetryOverrides:
    """A retry policy as written on a step or an agent: absent fields are None."""

    max_retries: int | None = None
    initial_delay_ms: int | None = None
    max_delay_ms: int | None = None
    backoff_multiplier: float | None = None
    jitter: bool | None = None
    non_retryable_status: frozenset[int] | None = None

    def over(self, base: RetryPolicy) -> RetryPolicy:
        """This policy's fields where set, `base`'s elsewhere."""
        return RetryPolicy(
            max_retries=base.max_retries if self.max_retries is None else self.max_retries,
            initial_delay_ms=base.initial_delay_ms if self.initial_delay_ms is None else self.initial_delay_ms,
            max_delay_ms=base.max_delay_ms if self.max_delay_ms is None else self.max_delay_ms,
            backoff_multiplier=(
                base.backoff_multiplier if self.backoff_multiplier is None else self.backoff_multiplier
            ),
            jitter=base.jitter if self.jitter is None else self.jitter,
            non_retryable_status=(
                base.non_retryable_status if self.non_retryable_status is None else self.non_retryable_status
            ),
        )


@dataclass(frozen=True)
class ConcurrencyLimit:
    """`concurrency: {key, limit}`: at most `limit` attempts run at once per value of `key` (an
    expression) across all runs of the tenant."""

    key: str
    limit: int


@dataclass(frozen=True)
class StepDef:
    """One step of a workflow snapshot."""

    id: str
    type: StepType
    agent: str | None = None
    depends_on: tuple[str, ...] = ()
    input: Any = None
    config: Mapping[str, Any] = field(default_factory=dict)
    when: str | None = None
    for_each: str | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    retry: RetryOverrides = RetryOverrides()
    timeout_ms: int | None = None
    total_timeout_ms: int | None = None
    queue_timeout_ms: int | None = None
    on_exhausted: OnExhausted = OnExhausted.FAIL
    priority: int = 0
    concurrency: ConcurrencyLimit | None = None


@dataclass(frozen=True)
class WorkflowDef:
    """A parsed workflow snapshot: steps in a topological order and the reverse edges."""

    id: str
    name: str
    version: int
    input_schema: Mapping[str, Any] | None
    steps: tuple[StepDef, ...]
    output: Any
    by_id: Mapping[str, StepDef]
    dependents: Mapping[str, tuple[str, ...]]

    def step(self, step_id: str) -> StepDef:
        """The step with this id (KeyError when unknown)."""
        return self.by_id[step_id]

    def downstream(self, step_id: str) -> list[str]:
        """Every step that depends on `step_id`, directly or not, in topological order."""
        seen: set[str] = set()
        stack = [step_id]
        while stack:
            for child in self.dependents[stack.pop()]:
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return [step.id for step in self.steps if step.id in seen]


def _enum_name(value: Any, prefix: str) -> str:
    """Accepts `"http"` as well as the proto spelling `"STEP_TYPE_HTTP"`."""
    text = str(value or "").strip()
    if text.upper().startswith(prefix):
        text = text[len(prefix) :]
    return text.lower()


def _optional_int(raw: Mapping[str, Any], name: str, where: str, errors: list[FieldViolation]) -> int | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < 0:
        errors.append(FieldViolation(f"{where}.{name}", "must be a non-negative integer"))
        return None
    return int(value)


def parse_retry(raw: Any, where: str, errors: list[FieldViolation]) -> RetryOverrides:
    """A retry policy from its JSON form; absent fields stay None."""
    if raw is None:
        return RetryOverrides()
    if not isinstance(raw, Mapping):
        errors.append(FieldViolation(where, "must be an object"))
        return RetryOverrides()
    multiplier = raw.get("backoff_multiplier")
    if multiplier is not None and (not isinstance(multiplier, int | float) or multiplier < 1):
        errors.append(FieldViolation(f"{where}.backoff_multiplier", "must be a number >= 1"))
        multiplier = None
    statuses = raw.get("non_retryable_status")
    if statuses is not None and not (
        isinstance(statuses, Sequence) and all(isinstance(s, int | float) for s in statuses)
    ):
        errors.append(FieldViolation(f"{where}.non_retryable_status", "must be a list of HTTP statuses"))
        statuses = None
    jitter = raw.get("jitter")
    return RetryOverrides(
        max_retries=_optional_int(raw, "max_retries", where, errors),
        initial_delay_ms=_optional_int(raw, "initial_delay_ms", where, errors),
        max_delay_ms=_optional_int(raw, "max_delay_ms", where, errors),
        backoff_multiplier=None if multiplier is None else float(multiplier),
        jitter=None if jitter is None else bool(jitter),
        non_retryable_status=None if statuses is None else frozenset(int(s) for s in statuses),
    )


def _parse_step(raw: Any, index: int, errors: list[FieldViolation]) -> StepDef | None:
    where = f"steps[{index}]"
    if not isinstance(raw, Mapping):
        errors.append(FieldViolation(where, "must be an object"))
        return None
    step_id = raw.get("id")
    if not isinstance(step_id, str) or not step_id:
        errors.append(FieldViolation(f"{where}.id", "is required"))
        return None
    agent = raw.get("agent") or None
    type_name = _enum_name(raw.get("type"), "STEP_TYPE_") or ("agent" if agent else "")
    if type_name in ("", "unspecified"):
        errors.append(FieldViolation(f"{where}.type", "is required when no agent is given"))
        return None
    try:
        step_type = StepType(type_name)
    except ValueError:
        errors.append(FieldViolation(f"{where}.type", f"unknown step type {type_name!r}"))
        return None
    if step_type is StepType.AGENT and not isinstance(agent, str):
        errors.append(FieldViolation(f"{where}.agent", "is required for agent steps"))
    depends_on = raw.get("depends_on") or []
    if not isinstance(depends_on, Sequence) or isinstance(depends_on, str):
        errors.append(FieldViolation(f"{where}.depends_on", "must be a list of step ids"))
        depends_on = []
    config = raw.get("config") or {}
    if not isinstance(config, Mapping):
        errors.append(FieldViolation(f"{where}.config", "must be an object"))
        config = {}
    on_exhausted_name = _enum_name(raw.get("on_exhausted"), "ON_EXHAUSTED_") or "fail"
    on_exhausted = OnExhausted.FAIL
    if on_exhausted_name in ("fail", "pause"):
        on_exhausted = OnExhausted(on_exhausted_name)
    elif on_exhausted_name != "unspecified":
        errors.append(FieldViolation(f"{where}.on_exhausted", "must be fail or pause"))
    max_concurrency = _optional_int(raw, "max_concurrency", where, errors)
    if max_concurrency == 0:
        errors.append(FieldViolation(f"{where}.max_concurrency", "must be at least 1"))
    priority = _optional_int(raw, "priority", where, errors) or 0
    if priority > 9:
        errors.append(FieldViolation(f"{where}.priority", "must be between 0 and 9"))
    return StepDef(
        id=step_id,
        type=step_type,
        agent=agent if isinstance(agent, str) else None,
        depends_on=tuple(str(d) for d in depends_on),
        input=raw.get("input"),
        config=dict(config),
        when=raw.get("when") or None,
        for_each=raw.get("for_each") or None,
        max_concurrency=max_concurrency or DEFAULT_MAX_CONCURRENCY,
        retry=parse_retry(raw.get("retry"), f"{where}.retry", errors),
        timeout_ms=_optional_int(raw, "timeout_ms", where, errors),
        total_timeout_ms=_optional_int(raw, "total_timeout_ms", where, errors),
        queue_timeout_ms=_optional_int(raw, "queue_timeout_ms", where, errors),
        on_exhausted=on_exhausted,
        priority=min(priority, 9),
        concurrency=_parse_concurrency(raw.get("concurrency"), f"{where}.concurrency", errors),
    )


def _parse_concurrency(raw: Any, where: str, errors: list[FieldViolation]) -> ConcurrencyLimit | None:
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, Mapping):
        errors.append(FieldViolation(where, "must be an object"))
        return None
    key, limit = raw.get("key"), raw.get("limit")
    if not isinstance(key, str) or not key:
        errors.append(FieldViolation(f"{where}.key", "is required"))
        return None
    if isinstance(limit, bool) or not isinstance(limit, int | float) or int(limit) != limit or limit < 1:
        errors.append(FieldViolation(f"{where}.limit", "must be a whole number of at least 1"))
        return None
    return ConcurrencyLimit(key=key, limit=int(limit))


def _topological(steps: Sequence[StepDef], errors: list[FieldViolation]) -> tuple[StepDef, ...]:
    """Kahn's algorithm, keeping definition order among independent steps (stable plans)."""
    remaining = {step.id: set(step.depends_on) for step in steps}
    ordered: list[StepDef] = []
    while remaining:
        ready = [step for step in steps if step.id in remaining and not remaining[step.id]]
        if not ready:
            cycle = sorted(remaining)
            errors.append(FieldViolation("steps", f"dependency cycle among: {', '.join(cycle)}"))
            return tuple(steps)
        for step in ready:
            ordered.append(step)
            del remaining[step.id]
        for deps in remaining.values():
            deps.difference_update(step.id for step in ready)
    return tuple(ordered)


def parse_workflow(snapshot: Mapping[str, Any]) -> WorkflowDef:
    """A WorkflowDef from the snapshot stored in a run; ValidationError (422) with field
    paths when the structure cannot be scheduled."""
    errors: list[FieldViolation] = []
    raw_steps = snapshot.get("steps")
    if not isinstance(raw_steps, Sequence) or isinstance(raw_steps, str) or not raw_steps:
        raise ValidationError("workflow has no steps", [FieldViolation("steps", "at least one step")])
    steps = [step for i, raw in enumerate(raw_steps) if (step := _parse_step(raw, i, errors)) is not None]
    by_id: dict[str, StepDef] = {}
    for i, step in enumerate(steps):
        if step.id in by_id:
            errors.append(FieldViolation(f"steps[{i}].id", f"duplicate step id {step.id!r}"))
        by_id[step.id] = step
    dependents: dict[str, list[str]] = {step.id: [] for step in steps}
    for i, step in enumerate(steps):
        for dep in step.depends_on:
            if dep not in by_id:
                errors.append(FieldViolation(f"steps[{i}].depends_on", f"unknown step {dep!r}"))
            elif step.id not in dependents[dep]:
                dependents[dep].append(step.id)
    ordered = _topological(steps, errors) if not errors else tuple(steps)
    input_schema = snapshot.get("input_schema")
    if input_schema is not None and not isinstance(input_schema, Mapping):
        errors.append(FieldViolation("input_schema", "must be an object"))
    if errors:
        raise ValidationError("workflow definition cannot be executed", errors)
    version = snapshot.get("version") or 1
    return WorkflowDef(
        id=str(snapshot.get("id") or ""),
        name=str(snapshot.get("name") or ""),
        version=int(version),
        input_schema=input_schema or None,
        steps=ordered,
        output=snapshot.get("output"),
        by_id=by_id,
        dependents={key: tuple(value) for key, value in dependents.items()},
    )
