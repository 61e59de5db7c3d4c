"""Proto <-> domain mappers of ExecutionService."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from execution_svc.domain.models import (
    AttemptView,
    EventRecord,
    EventType,
    RunError,
    RunFilter,
    RunStatus,
    RunView,
    StepView,
    Trigger,
)
from flowforge.execution.v1 import execution_pb2 as pb
from flowforge_common.errors import BadRequestError, FieldViolation


def value_to_proto(value: Any) -> struct_pb2.Value:
    """Any JSON value as a `google.protobuf.Value`."""
    message = struct_pb2.Value()
    json_format.ParseDict(value, message)
    return message


def value_from_proto(message: struct_pb2.Value) -> Any:
    """A `google.protobuf.Value` as plain JSON (numbers arrive as floats: proto has no ints)."""
    return json_format.MessageToDict(message)


def _timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _error(error: RunError | None) -> pb.RunError | None:
    if error is None:
        return None
    return pb.RunError(code=error.code, message=error.message, step_id=error.step_id)


def run_status_to_proto(status: RunStatus) -> int:
    """`RUN_STATUS_<STATUS>`."""
    return int(pb.RunStatus.Value(f"RUN_STATUS_{status.name}"))


def step_status_to_proto(status: Any) -> int:
    """`STEP_STATUS_<STATUS>`."""
    return int(pb.StepStatus.Value(f"STEP_STATUS_{status.name}"))


def attempt_to_proto(attempt: AttemptView) -> pb.StepAttempt:
    """One attempt."""
    return pb.StepAttempt(
        attempt=attempt.attempt,
        status=step_status_to_proto(attempt.status),  # type: ignore[arg-type]
        error=_error(attempt.error),
        started_at=_timestamp(attempt.started_at),
        completed_at=_timestamp(attempt.completed_at),
    )


def step_to_proto(step: StepView) -> pb.RunStep:
    """A step (with attempts and `for_each` items when the view has them)."""
    message = pb.RunStep(
        step_id=step.step_id,
        status=step_status_to_proto(step.status),  # type: ignore[arg-type]
        attempt=step.attempt,
        error=_error(step.error),
        agent=step.agent or "",
        started_at=_timestamp(step.started_at),
        completed_at=_timestamp(step.completed_at),
        attempts=[attempt_to_proto(a) for a in step.attempts],
        items=[step_to_proto(item) for item in step.items],
        index=max(step.index, 0),
    )
    if step.input is not None:
        message.input.CopyFrom(value_to_proto(step.input))
    if step.output is not None:
        message.output.CopyFrom(value_to_proto(step.output))
    return message


def run_to_proto(run: RunView) -> pb.Run:
    """A run with its step summary."""
    message = pb.Run(
        id=run.id,
        workflow_id=run.workflow_id,
        workflow_name=run.workflow_name,
        workflow_version=run.workflow_version,
        status=run_status_to_proto(run.status),  # type: ignore[arg-type]
        error=_error(run.error),
        trigger=pb.RunTrigger.Value(f"RUN_TRIGGER_{run.trigger.name}"),
        triggered_by=run.triggered_by,
        parent_run_id=run.parent_run_id or "",
        created_at=_timestamp(run.created_at),
        started_at=_timestamp(run.started_at),
        completed_at=_timestamp(run.completed_at),
        steps=[step_to_proto(step) for step in run.steps],
    )
    if run.input is not None:
        message.input.CopyFrom(value_to_proto(run.input))
    if run.output is not None:
        message.output.CopyFrom(value_to_proto(run.output))
    return message


def event_to_proto(event: EventRecord) -> pb.Event:
    """An event envelope."""
    message = pb.Event(
        event=event.type,
        seq=event.seq,
        timestamp=_timestamp(event.timestamp),
        run_id=event.run_id,
        workflow_id=event.workflow_id,
        step_id=event.step_id or "",
    )
    json_format.ParseDict(event.data, message.data)
    return message


_LOG_LEVELS = {
    EventType.STEP_FAILED.value: "error",
    EventType.WORKFLOW_FAILED.value: "error",
    EventType.STEP_RETRYING.value: "warning",
}


def event_to_log(event: EventRecord) -> pb.RunLog:
    """A log line derived from an event: the event log is the run's log."""
    data = event.data
    parts = [event.type]
    if event.step_id:
        parts.append(f"step {event.step_id}" + (f"[{data['index']}]" if "index" in data else ""))
    if "attempt" in data:
        parts.append(f"attempt {data['attempt']}")
    error = data.get("error")
    if isinstance(error, dict):
        parts.append(f"{error.get('code')}: {error.get('message')}")
    if "delay_ms" in data:
        parts.append(f"retry in {data['delay_ms']} ms")
    if "reason" in data:
        parts.append(str(data["reason"]))
    return pb.RunLog(
        seq=event.seq,
        timestamp=_timestamp(event.timestamp),
        level=_LOG_LEVELS.get(event.type, "info"),
        step_id=event.step_id or "",
        message=" - ".join(parts),
    )


def run_filter_from_proto(request: Any) -> RunFilter:
    """ListRuns filters; unspecified enums and unset times mean "any"."""
    status = None
    if request.status:
        name = pb.RunStatus.Name(request.status).removeprefix("RUN_STATUS_")
        status = RunStatus[name]
    trigger = None
    if request.trigger:
        name = pb.RunTrigger.Name(request.trigger).removeprefix("RUN_TRIGGER_")
        trigger = Trigger[name]
    return RunFilter(
        workflow_id=request.workflow_id or None,
        status=status,
        trigger=trigger,
        created_after=request.created_after.ToDatetime(dt.UTC) if request.HasField("created_after") else None,
        created_before=request.created_before.ToDatetime(dt.UTC) if request.HasField("created_before") else None,
    )


def required(value: str, name: str) -> str:
    """The field, or BadRequestError naming it."""
    if not value:
        raise BadRequestError(f"{name} is required", [FieldViolation(name, "is required")])
    return value
