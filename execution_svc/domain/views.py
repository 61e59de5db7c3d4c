"""Views of runs and steps built from records, and their JSON form (stored as the first
answer of an idempotent request, replayed verbatim)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from execution_svc.domain.models import (
    STEP_ROW,
    AttemptRecord,
    AttemptView,
    RunError,
    RunRecord,
    RunStatus,
    RunView,
    StepRecord,
    StepStatus,
    StepView,
    Trigger,
)


def _definition_order(run: RunRecord) -> list[str]:
    """Step ids as written in the workflow (the order a reader expects)."""
    return [str(step.get("id")) for step in run.workflow.get("steps", []) if isinstance(step, dict)]


def step_views(
    run: RunRecord,
    rows: Iterable[StepRecord],
    attempts: Iterable[AttemptRecord] = (),
    order: Sequence[str] | None = None,
) -> tuple[StepView, ...]:
    """Steps in definition order (`order`, else read from the run's snapshot), each with its
    attempts and `for_each` items."""
    by_row: dict[tuple[str, int], list[AttemptView]] = {}
    for record in attempts:
        by_row.setdefault((record.step_id, record.item_index), []).append(
            AttemptView(record.attempt, record.status, record.error, record.started_at, record.completed_at)
        )
    parents: dict[str, StepRecord] = {}
    items: dict[str, list[StepRecord]] = {}
    for row in rows:
        if row.item_index == STEP_ROW:
            parents[row.step_id] = row
        else:
            items.setdefault(row.step_id, []).append(row)

    def view(row: StepRecord, children: Sequence[StepView] = ()) -> StepView:
        return StepView(
            step_id=row.step_id,
            status=row.status,
            attempt=row.attempt,
            input=row.input,
            output=row.output,
            error=row.error,
            agent=row.agent,
            started_at=row.started_at,
            completed_at=row.completed_at,
            index=row.item_index,
            attempts=tuple(by_row.get(row.key, ())),
            items=tuple(children),
        )

    result = []
    for step_id in _definition_order(run) if order is None else order:
        parent = parents.get(step_id)
        if parent is None:
            continue
        children = [view(item) for item in sorted(items.get(step_id, []), key=lambda r: r.item_index)]
        result.append(view(parent, children))
    return tuple(result)


def run_view(run: RunRecord, steps: Sequence[StepView] = ()) -> RunView:
    """A run as served, with an optional step summary."""
    return RunView(
        id=run.id,
        tenant_id=run.tenant_id,
        workflow_id=run.workflow_id,
        workflow_name=run.workflow_name,
        workflow_version=run.workflow_version,
        status=run.status,
        input=run.input,
        output=run.output,
        error=run.error,
        trigger=run.trigger,
        triggered_by=run.triggered_by,
        parent_run_id=run.parent_run_id,
        created_at=run.created_at,
        started_at=run.started_at,
        completed_at=run.completed_at,
        steps=tuple(steps),
    )


# --- JSON form -----------------------------------------------------------------------------


def _time(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _error(value: RunError | None) -> dict[str, str] | None:
    return value.to_dict() if value is not None else None


def _step_to_json(step: StepView) -> dict[str, Any]:
    return {
        "step_id": step.step_id,
        "status": step.status.value,
        "attempt": step.attempt,
        "input": step.input,
        "output": step.output,
        "error": _error(step.error),
        "agent": step.agent,
        "started_at": _time(step.started_at),
        "completed_at": _time(step.completed_at),
        "index": step.index,
        "attempts": [
            {
                "attempt": a.attempt,
                "status": a.status.value,
                "error": _error(a.error),
                "started_at": _time(a.started_at),
                "completed_at": _time(a.completed_at),
            }
            for a in step.attempts
        ],
        "items": [_step_to_json(item) for item in step.items],
    }


def _step_from_json(data: dict[str, Any]) -> StepView:
    return StepView(
        step_id=data["step_id"],
        status=StepStatus(data["status"]),
        attempt=data["attempt"],
        input=data["input"],
        output=data["output"],
        error=RunError.from_dict(data["error"]),
        agent=data["agent"],
        started_at=_parse_time(data["started_at"]),
        completed_at=_parse_time(data["completed_at"]),
        index=data["index"],
        attempts=tuple(
            AttemptView(
                attempt=a["attempt"],
                status=StepStatus(a["status"]),
                error=RunError.from_dict(a["error"]),
                started_at=_parse_time(a["started_at"]) or dt.datetime.min.replace(tzinfo=dt.UTC),
                completed_at=_parse_time(a["completed_at"]),
            )
            for a in data["attempts"]
        ),
        items=tuple(_step_from_json(item) for item in data["items"]),
    )


def run_view_to_json(view: RunView) -> dict[str, Any]:
    """The JSON form of a run view."""
    return {
        "id": view.id,
        "tenant_id": view.tenant_id,
        "workflow_id": view.workflow_id,
        "workflow_name": view.workflow_name,
        "workflow_version": view.workflow_version,
        "status": view.status.value,
        "input": view.input,
        "output": view.output,
        "error": _error(view.error),
        "trigger": view.trigger.value,
        "triggered_by": view.triggered_by,
        "parent_run_id": view.parent_run_id,
        "created_at": _time(view.created_at),
        "started_at": _time(view.started_at),
        "completed_at": _time(view.completed_at),
        "steps": [_step_to_json(step) for step in view.steps],
    }


def run_view_from_json(data: dict[str, Any]) -> RunView:
    """Inverse of run_view_to_json."""
    return RunView(
        id=data["id"],
        tenant_id=data["tenant_id"],
        workflow_id=data["workflow_id"],
        workflow_name=data["workflow_name"],
        workflow_version=data["workflow_version"],
        status=RunStatus(data["status"]),
        input=data["input"],
        output=data["output"],
        error=RunError.from_dict(data["error"]),
        trigger=Trigger(data["trigger"]),
        triggered_by=data["triggered_by"],
        parent_run_id=data["parent_run_id"],
        created_at=_parse_time(data["created_at"]) or dt.datetime.min.replace(tzinfo=dt.UTC),
        started_at=_parse_time(data["started_at"]),
        completed_at=_parse_time(data["completed_at"]),
        steps=tuple(_step_from_json(step) for step in data["steps"]),
    )
