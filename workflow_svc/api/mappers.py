"""Translation between the protos of workflow_svc (agents, health, workflows, templates, step
types, audit entries) and the domain, in both directions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor

from flowforge.audit.v1 import audit_service_pb2
from flowforge.workflow.v1 import agent_pb2, agent_service_pb2, workflow_pb2, workflow_service_pb2
from flowforge_common.errors import BadRequestError, FieldViolation
from flowforge_common.expressions import find_expressions
from flowforge_common.memo import Memo
from flowforge_common.pagination import decode_page_token, encode_page_token
from workflow_svc.domain.models import (
    DEFINITION_FIELDS,
    Agent,
    AgentFilter,
    AgentRuntimeStatus,
    AgentSpec,
    AgentStatus,
    AuditEntry,
    AuditQuery,
    AuthType,
    CircuitState,
    HealthProbe,
    RetryConfig,
    Workflow,
    WorkflowCursor,
    WorkflowFilter,
    WorkflowOrder,
    WorkflowStatus,
)
from workflow_svc.domain.step_types import StepType, proto_enum_value
from workflow_svc.domain.templates import WorkflowTemplate

_T = TypeVar("_T")

_AUTH_TYPES_TO_PROTO: dict[AuthType, agent_pb2.AgentAuthType.ValueType] = {
    AuthType.NONE: agent_pb2.AGENT_AUTH_TYPE_NONE,
    AuthType.BEARER: agent_pb2.AGENT_AUTH_TYPE_BEARER,
    AuthType.APIKEY: agent_pb2.AGENT_AUTH_TYPE_APIKEY,
}
_STATUSES_TO_PROTO: dict[AgentStatus, agent_pb2.AgentStatus.ValueType] = {
    AgentStatus.ACTIVE: agent_pb2.AGENT_STATUS_ACTIVE,
    AgentStatus.INACTIVE: agent_pb2.AGENT_STATUS_INACTIVE,
}
_WORKFLOW_STATUSES_TO_PROTO: dict[WorkflowStatus, workflow_pb2.WorkflowStatus.ValueType] = {
    WorkflowStatus.ACTIVE: workflow_pb2.WORKFLOW_STATUS_ACTIVE,
    WorkflowStatus.ARCHIVED: workflow_pb2.WORKFLOW_STATUS_ARCHIVED,
}
_AUTH_TYPES: dict[int, AuthType] = {proto: domain for domain, proto in _AUTH_TYPES_TO_PROTO.items()}
_STATUSES: dict[int, AgentStatus] = {proto: domain for domain, proto in _STATUSES_TO_PROTO.items()}
_WORKFLOW_STATUSES: dict[int, WorkflowStatus] = {proto: domain for domain, proto in _WORKFLOW_STATUSES_TO_PROTO.items()}


def _enum_names(enum: EnumDescriptor, prefix: str) -> dict[str, str]:
    # `http` -> `STEP_TYPE_HTTP`: definitions store the lower-case names API.md uses.
    return {value.name.removeprefix(prefix + "_").lower(): value.name for value in enum.values if value.number}


# Enum fields of a step: field -> (proto prefix, lower-case name -> proto name).
_STEP_ENUMS: Final = {
    "type": ("STEP_TYPE", _enum_names(workflow_pb2.StepType.DESCRIPTOR, "STEP_TYPE")),
    "on_exhausted": ("ON_EXHAUSTED", _enum_names(workflow_pb2.OnExhausted.DESCRIPTOR, "ON_EXHAUSTED")),
}
# Messages whose JSON form is free-form JSON, where a placeholder string is a valid value.
_FREE_FORM_MESSAGES: Final = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})
_MAX_EXACT_DOUBLE: Final = 2**53


# --- agents -------------------------------------------------------------------------------------


def agent_to_proto(agent: Agent) -> agent_pb2.Agent:
    """The agent as clients see it: credentials are never included, only `has_credentials`."""
    spec = agent.spec
    return agent_pb2.Agent(
        id=agent.id,
        name=spec.name,
        description=spec.description,
        url=spec.url,
        health_url=spec.health_url,
        auth_type=_AUTH_TYPES_TO_PROTO[spec.auth_type],
        has_credentials=agent.has_credentials,
        timeout_ms=spec.timeout_ms,
        retry_config=agent_pb2.RetryPolicy(
            max_retries=spec.retry_config.max_retries,
            initial_delay_ms=spec.retry_config.initial_delay_ms,
            max_delay_ms=spec.retry_config.max_delay_ms,
            backoff_multiplier=spec.retry_config.backoff_multiplier,
        ),
        capabilities=spec.capabilities,
        status=_STATUSES_TO_PROTO[spec.status],
        etag=agent.etag,
        created_at=_timestamp(agent.created_at),
        updated_at=_timestamp(agent.updated_at),
        created_by=agent.created_by,
    )


def agent_from_proto(message: agent_pb2.Agent) -> AgentSpec:
    """The writable fields of a request's agent; unset fields take the domain defaults.

    Output-only fields are ignored, as are the step-only settings of RetryPolicy (`jitter`,
    `non_retryable_status`). Credentials are read separately by `auth_config_from_proto`."""
    defaults = AgentSpec()
    return AgentSpec(
        name=message.name,
        url=message.url,
        description=message.description,
        health_url=message.health_url,
        auth_type=_enum_from_proto(message.auth_type, _AUTH_TYPES, defaults.auth_type, "auth_type"),
        timeout_ms=message.timeout_ms if message.HasField("timeout_ms") else defaults.timeout_ms,
        retry_config=_retry_config_from_proto(message.retry_config),
        capabilities=tuple(message.capabilities),
        status=_enum_from_proto(message.status, _STATUSES, defaults.status, "status"),
    )


def auth_config_from_proto(message: agent_pb2.Agent) -> dict[str, Any]:
    """The request's credentials as plain JSON values; empty when none were sent."""
    if not message.HasField("auth_config"):
        return {}
    credentials: dict[str, Any] = json_format.MessageToDict(message.auth_config)
    return credentials


def agent_filter_from_proto(request: agent_service_pb2.ListAgentsRequest) -> AgentFilter:
    """The listing filter; empty request fields mean no condition."""
    status: AgentStatus | None = _enum_from_proto(request.status, _STATUSES, None, "status")
    return AgentFilter(status=status, capability=request.capability or None, name_prefix=request.name or None)


def cursor_from_page_token(page_token: str) -> str | None:
    """The cursor a `page_token` carries; BadRequestError for a token this API did not make."""
    position = decode_page_token(page_token)
    if position is None:
        return None
    cursor = position.get("before")
    if not isinstance(cursor, str) or not cursor:
        raise _bad_page_token()
    return cursor


def page_token_from_cursor(cursor: str | None) -> str:
    """The `next_page_token` for a cursor: empty on the last page."""
    return "" if cursor is None else encode_page_token({"before": cursor})


def health_to_proto(probe: HealthProbe) -> agent_pb2.AgentHealth:
    """A probe's outcome."""
    return agent_pb2.AgentHealth(
        status=agent_pb2.AGENT_HEALTH_STATUS_HEALTHY if probe.healthy else agent_pb2.AGENT_HEALTH_STATUS_UNHEALTHY,
        latency_ms=probe.latency_ms,
        checked_at=_timestamp(probe.checked_at),
        detail=probe.detail,
    )


_CIRCUITS_TO_PROTO = {
    CircuitState.CLOSED: agent_pb2.CIRCUIT_STATE_CLOSED,
    CircuitState.OPEN: agent_pb2.CIRCUIT_STATE_OPEN,
    CircuitState.HALF_OPEN: agent_pb2.CIRCUIT_STATE_HALF_OPEN,
}
CIRCUITS_FROM_PROTO = {proto: state for state, proto in _CIRCUITS_TO_PROTO.items()}


def runtime_status_to_proto(status: AgentRuntimeStatus) -> agent_pb2.AgentRuntimeStatus:
    """What FlowForge knows of an agent; `circuit` is unset when the engine could not be asked."""
    return agent_pb2.AgentRuntimeStatus(
        status=_STATUSES_TO_PROTO[status.status],
        in_flight=status.in_flight,
        recent_success_rate=status.recent_success_rate,
        p50_latency_ms=status.p50_latency_ms,
        circuit=_CIRCUITS_TO_PROTO[status.circuit] if status.circuit else agent_pb2.CIRCUIT_STATE_UNSPECIFIED,
    )


# --- workflows ----------------------------------------------------------------------------------


def definition_from_proto(message: workflow_pb2.Workflow) -> dict[str, Any]:
    """The definition fields of a Workflow message as the JSON of API.md: proto field names,
    lower-case enum values (`"type": "http"`), only the fields the client set, and whole
    numbers as integers (Struct keeps every number as a double; JSON does not care, and the
    stored definition then reads like what the client sent). Bookkeeping fields are dropped."""
    sent = json_format.MessageToDict(message, preserving_proto_field_name=True)
    definition = {key: _json_numbers(sent[key]) for key in DEFINITION_FIELDS if key in sent}
    for step in definition.get("steps", []):
        for field, (prefix, _) in _STEP_ENUMS.items():
            if field in step:
                step[field] = proto_enum_value(step[field], prefix)
    return definition


def workflow_status_from_proto(value: int) -> WorkflowStatus | None:
    """The requested status; None when unset."""
    status: WorkflowStatus | None = _enum_from_proto(value, _WORKFLOW_STATUSES, None, "status")
    return status


def workflow_to_proto(workflow: Workflow) -> workflow_pb2.Workflow:
    """A stored workflow version as clients see it."""
    message = _workflow_message(workflow.definition)
    message.id = workflow.id
    message.version = workflow.version
    message.status = _WORKFLOW_STATUSES_TO_PROTO[workflow.status]
    message.etag = workflow.etag
    message.created_at.CopyFrom(_timestamp(workflow.created_at))
    message.updated_at.CopyFrom(_timestamp(workflow.updated_at))
    message.created_by = workflow.created_by
    return message


class RenderedVersions:
    """`workflow_to_proto` remembered per version, least recently used out first. A version
    never changes (its etag says which one it is), so neither does its message; rendering the
    definition is what GetWorkflow, behind every run start, spends most on once the version
    itself comes from memory. The message is shared: callers copy it (a response message's
    constructor does) and never change it."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._messages: Memo[tuple[str, str, int, str], workflow_pb2.Workflow] = Memo(max_entries)

    def render(self, workflow: Workflow) -> workflow_pb2.Workflow:
        """The message of `workflow`, rendered once per version."""
        key = (workflow.tenant_id, workflow.id, workflow.version, workflow.etag)
        return self._messages.get(key, lambda: workflow_to_proto(workflow))


def plan_to_proto(plan: Iterable[Iterable[str]]) -> list[struct_pb2.ListValue]:
    """The execution plan, one list of step ids per level."""
    levels = []
    for level in plan:
        values = struct_pb2.ListValue()
        values.extend(list(level))
        levels.append(values)
    return levels


def validation_errors_to_proto(errors: Iterable[FieldViolation]) -> list[workflow_pb2.ValidationError]:
    """Problems of a definition, each at its field path."""
    return [workflow_pb2.ValidationError(field=error.field, message=error.message) for error in errors]


def workflow_filter_from_proto(request: workflow_service_pb2.ListWorkflowsRequest) -> WorkflowFilter:
    """The listing filter; empty request fields mean no condition."""
    return WorkflowFilter(
        status=workflow_status_from_proto(request.status), name_prefix=request.name or None, tag=request.tag or None
    )


def workflow_cursor_from_page_token(page_token: str) -> WorkflowCursor | None:
    """The cursor a ListWorkflows `page_token` carries: the order it was made for and the sort
    key of the last row returned; BadRequestError for a token this API did not make."""
    position = decode_page_token(page_token)
    if position is None:
        return None
    try:
        order = WorkflowOrder(position["order"])
        value, last_id = position["value"], position["id"]
        if not isinstance(value, str) or not isinstance(last_id, str):
            raise TypeError
        if order.field == "name":
            return WorkflowCursor(order, value, last_id)
        moment = dt.datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise TypeError
    except (KeyError, TypeError, ValueError):
        raise _bad_page_token() from None
    return WorkflowCursor(order, moment, last_id)


def page_token_from_workflow_cursor(cursor: WorkflowCursor | None) -> str:
    """The `next_page_token` of a workflow listing: empty on the last page."""
    if cursor is None:
        return ""
    value = cursor.value.isoformat() if isinstance(cursor.value, dt.datetime) else cursor.value
    return encode_page_token({"order": cursor.order.value, "value": value, "id": cursor.id})


def version_from_page_token(page_token: str) -> int | None:
    """The version a ListWorkflowVersions `page_token` continues below; None for no token."""
    position = decode_page_token(page_token)
    if position is None:
        return None
    before = position.get("before_version")
    if not isinstance(before, int) or isinstance(before, bool):
        raise _bad_page_token()
    return before


def page_token_from_version(before: int | None) -> str:
    """The `next_page_token` of a versions page: empty on the last page."""
    return "" if before is None else encode_page_token({"before_version": before})


def template_name_from_page_token(page_token: str) -> str | None:
    """The template name a ListWorkflowTemplates `page_token` continues after; None for no token."""
    position = decode_page_token(page_token)
    if position is None:
        return None
    after = position.get("after_name")
    if not isinstance(after, str):
        raise _bad_page_token()
    return after


def page_token_from_template_name(after: str | None) -> str:
    """The `next_page_token` of a templates page: empty on the last page."""
    return "" if after is None else encode_page_token({"after_name": after})


# --- templates and step types -------------------------------------------------------------------


def template_from_proto(message: workflow_pb2.WorkflowTemplate) -> WorkflowTemplate:
    """A tenant template from a request; `builtin` is output-only and ignored."""
    schema = json_format.MessageToDict(message.parameters_schema) if message.HasField("parameters_schema") else {}
    return WorkflowTemplate(
        name=message.name,
        description=message.description,
        parameters_schema=_json_numbers(schema),
        definition=definition_from_proto(message.definition),
    )


def template_to_proto(template: WorkflowTemplate) -> workflow_pb2.WorkflowTemplate:
    """A template as clients see it.

    Its definition is a Workflow message, whose numeric and enum fields cannot hold a
    `{{ params.x }}` placeholder: such fields (e.g. `max_concurrency` of the built-in
    `fan-out-fan-in`) are left out here, while `parameters_schema` still lists the parameter
    and instantiation still applies it. A Struct-typed definition in the proto would lift this."""
    message = workflow_pb2.WorkflowTemplate(
        name=template.name, description=template.description, builtin=template.builtin
    )
    message.parameters_schema.update(dict(template.parameters_schema))
    message.definition.CopyFrom(_workflow_message(template.definition, placeholders_allowed=True))
    return message


def parameters_from_proto(request: workflow_service_pb2.CreateWorkflowFromTemplateRequest) -> dict[str, Any] | None:
    """The template parameters of a request as JSON values; None when none were sent."""
    if not request.HasField("parameters"):
        return None
    parameters: dict[str, Any] = _json_numbers(json_format.MessageToDict(request.parameters))
    return parameters


def step_type_to_proto(step_type: StepType) -> workflow_pb2.StepTypeInfo:
    """A step type and the JSON Schema of its config (the one the validator uses)."""
    info = workflow_pb2.StepTypeInfo(type=step_type.name, description=step_type.description)
    info.config_schema.update(dict(step_type.config_schema))
    return info


# --- audit --------------------------------------------------------------------------------------


def audit_query_from_proto(request: audit_service_pb2.ListAuditEntriesRequest, *, limit: int) -> AuditQuery:
    """The page of audit entries a request asks for; `before_id` needs `before_created_at`."""
    before_created_at = (
        request.before_created_at.ToDatetime(tzinfo=dt.UTC) if request.HasField("before_created_at") else None
    )
    if request.before_id and before_created_at is None:
        raise BadRequestError(
            "before_id needs before_created_at",
            [FieldViolation("before_id", "is only meaningful with before_created_at")],
        )
    return AuditQuery(
        limit=limit,
        before_created_at=before_created_at,
        before_id=request.before_id or None,
        entity_type=request.entity_type or None,
        entity_id=request.entity_id or None,
        actor=request.actor or None,
    )


def audit_entry_to_proto(entry: AuditEntry) -> audit_service_pb2.AuditEntry:
    """An audit entry; its change is masked already."""
    message = audit_service_pb2.AuditEntry(
        id=entry.id,
        actor=entry.actor,
        action=entry.action,
        entity_type=entry.entity_type,
        entity_id=entry.entity_id,
        created_at=_timestamp(entry.created_at),
    )
    message.change.update(dict(entry.change))
    return message


# --- helpers ------------------------------------------------------------------------------------


def _workflow_message(definition: Mapping[str, Any], *, placeholders_allowed: bool = False) -> workflow_pb2.Workflow:
    data = dict(definition)
    if isinstance(data.get("steps"), list):
        data["steps"] = [_step_with_proto_enums(step) for step in data["steps"]]
    if placeholders_allowed:
        data = _without_typed_placeholders(data, workflow_pb2.Workflow.DESCRIPTOR)
    return json_format.ParseDict(data, workflow_pb2.Workflow())


def _step_with_proto_enums(step: Any) -> Any:
    if not isinstance(step, Mapping):
        return step
    converted = dict(step)
    for field, (prefix, names) in _STEP_ENUMS.items():
        if field in converted:
            # A value that names no enum value (a template's placeholder) stays as it is.
            converted[field] = names.get(proto_enum_value(converted[field], prefix) or "", converted[field])
    return converted


def _without_typed_placeholders(value: Any, descriptor: Descriptor) -> Any:
    """`value` without the placeholders that its message type cannot hold (see template_to_proto)."""
    if not isinstance(value, Mapping):
        return value
    kept: dict[str, Any] = {}
    for key, item in value.items():
        field = descriptor.fields_by_name.get(key)
        message_type = field.message_type if field is not None else None
        if field is None or field.type == field.TYPE_STRING:
            kept[key] = item
        elif message_type is not None and message_type.full_name not in _FREE_FORM_MESSAGES:
            if isinstance(item, list):
                kept[key] = [_without_typed_placeholders(element, message_type) for element in item]
            else:
                kept[key] = _without_typed_placeholders(item, message_type)
        elif message_type is not None or not find_expressions(item):
            kept[key] = item
    return kept


def _json_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_EXACT_DOUBLE:
        return int(value)
    if isinstance(value, dict):
        return {key: _json_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_numbers(item) for item in value]
    return value


def _retry_config_from_proto(message: agent_pb2.RetryPolicy) -> RetryConfig:
    # Every setting is a proto3 `optional`: the ones the client did not send keep the defaults.
    defaults = RetryConfig()
    return RetryConfig(
        max_retries=message.max_retries if message.HasField("max_retries") else defaults.max_retries,
        initial_delay_ms=(
            message.initial_delay_ms if message.HasField("initial_delay_ms") else defaults.initial_delay_ms
        ),
        max_delay_ms=message.max_delay_ms if message.HasField("max_delay_ms") else defaults.max_delay_ms,
        backoff_multiplier=(
            message.backoff_multiplier if message.HasField("backoff_multiplier") else defaults.backoff_multiplier
        ),
    )


def _enum_from_proto(value: int, known: Mapping[int, _T], unspecified: _T, field: str) -> _T:
    # Zero (`_UNSPECIFIED`) means "not set"; proto3 enums are open, so other unknown numbers
    # can arrive from newer or hand-made clients and are a malformed request.
    if value == 0:
        return unspecified
    if value not in known:
        raise BadRequestError(f"{field} has an unknown value {value}", [FieldViolation(field, "unknown value")])
    return known[value]


def _bad_page_token() -> BadRequestError:
    return BadRequestError("page_token is not valid", [FieldViolation("page_token", "not a token from this API")])


def _timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp
