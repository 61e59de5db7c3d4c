"""Workflow templates: parameterised definitions, the built-in ones, and their instantiation.

A template's definition holds `{{ params.x }}` placeholders. Instantiating substitutes them
through the expressions module with only `params` in the context, so the runtime expressions
(`input`, `steps`, `item`, `run`) stay as written for the engine. The result is an ordinary
definition: the caller validates and saves it like any other.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from flowforge_common.errors import FieldViolation, ValidationError
from flowforge_common.expressions import TEMPLATE_NAMES, compile_template, template_errors
from workflow_svc.domain.definitions import validate_definition
from workflow_svc.domain.step_types import (
    FORMAT_CHECKER,
    HTTP_URL_SCHEMA,
    MAX_WAIT_MS,
    PLAIN_TEXT_PATTERN,
    SCHEMA_DIALECT,
    SIGNAL_NAME_SCHEMA,
    schema_violations,
)

TEMPLATE_NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
"""Template names appear in URL paths (`/workflow-templates/{name}`)."""


@dataclass(frozen=True)
class WorkflowTemplate:
    """A reusable, parameterised workflow (the WorkflowTemplate resource). Treat it as read-only."""

    name: str
    description: str
    parameters_schema: Mapping[str, Any]
    """JSON Schema of the parameters; `default`s of top-level properties are applied, and its
    `examples` are parameter sets that must instantiate into a valid workflow."""
    definition: Mapping[str, Any]
    """A workflow definition with `{{ params.x }}` placeholders."""
    builtin: bool = False


def instantiate(
    template: WorkflowTemplate, parameters: Mapping[str, Any] | None, *, name: str | None = None
) -> dict[str, Any]:
    """The template's definition with `{{ params.* }}` substituted; `name` replaces the workflow name.

    Raises ValidationError (422) with violations at `parameters.<path>` when the parameters do
    not satisfy `parameters_schema`. The result is a fresh dict the caller may change.
    """
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, Mapping):
        raise ValidationError(
            "the template parameters are invalid",
            violations=[FieldViolation("parameters", "parameters must be an object")],
        )
    params = {**_defaults(template.parameters_schema), **parameters}
    validator_class = validator_for(template.parameters_schema)
    violations = schema_violations(
        validator_class(template.parameters_schema, format_checker=FORMAT_CHECKER), params, "parameters"
    )
    if violations:
        raise ValidationError("the template parameters are invalid", violations=violations)
    substituted = compile_template(template.definition).substitute({"params": params}, names=TEMPLATE_NAMES)
    definition = dict(substituted)
    if name is not None:
        definition["name"] = name
    return definition


def validate_template(template: WorkflowTemplate) -> list[FieldViolation]:
    """Problems of a template (built-in or a tenant's, before it is saved).

    Checks the name, that `parameters_schema` is a JSON Schema, that every placeholder parses
    and reads only declared parameters, and that each of the schema's `examples`
    instantiates into a valid definition (agents are not looked up).
    """
    violations: list[FieldViolation] = []
    if not TEMPLATE_NAME_PATTERN.match(template.name):
        violations.append(
            FieldViolation(
                "name", "template names are 1 to 63 lower-case letters, digits and '-', starting alphanumeric"
            )
        )
    schema = template.parameters_schema
    if not isinstance(schema, Mapping):
        return [*violations, FieldViolation("parameters_schema", "parameters_schema must be a JSON Schema object")]
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as error:
        return [*violations, FieldViolation("parameters_schema", f"invalid JSON Schema: {error.message}")]
    syntax_errors = template_errors(template.definition, "definition")
    if syntax_errors:
        return [*violations, *(FieldViolation(error.path, str(error)) for error in syntax_errors)]
    declared = set(schema.get("properties", {}))
    listed = ", ".join(sorted(declared))
    violations.extend(
        FieldViolation(path, f"unknown parameter {parameter!r} (declared: {listed})")
        for path, expression in compile_template(template.definition).expressions("definition")
        for parameter in sorted(expression.keys_of("params") - declared)
    )
    for index, example in enumerate(schema.get("examples", [])):
        violations.extend(_example_violations(template, example, index))
    return violations


def _example_violations(template: WorkflowTemplate, example: Any, index: int) -> list[FieldViolation]:
    """An example that does not fit the schema is reported at the example; one that yields an
    invalid workflow, at the definition field that went wrong."""
    path = f"parameters_schema.examples[{index}]"
    try:
        definition = instantiate(template, example)
    except ValidationError as error:
        return [
            FieldViolation(path + violation.field.removeprefix("parameters"), violation.message)
            for violation in error.violations
        ]
    report = validate_definition(definition, agent_lookup=None)
    return [
        FieldViolation(f"definition.{error.field}", f"{error.message} (with the parameters of {path})")
        for error in report.errors
    ]


def _defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties", {}) if isinstance(schema, Mapping) else {}
    return {
        key: copy.deepcopy(spec["default"])
        for key, spec in properties.items()
        if isinstance(spec, Mapping) and "default" in spec
    }


def _parameters(required: list[str], properties: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": SCHEMA_DIALECT,
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
        "examples": [example],
    }


_AGENT_NAME: Final = {"type": "string", "minLength": 1, "maxLength": 100}
# Free text substituted into strings that the engine evaluates again: braces would open a placeholder.
_PLAIN_TEXT: Final = {"type": "string", "minLength": 1, "maxLength": 100, "pattern": PLAIN_TEXT_PATTERN}

BUILTIN_TEMPLATES: Final[Mapping[str, WorkflowTemplate]] = {
    template.name: template
    for template in (
        WorkflowTemplate(
            name="fan-out-fan-in",
            description=(
                "Runs a worker agent once per element of `input.items`, `max_concurrency` at a time, "
                "then hands every result, in input order, to an aggregator agent."
            ),
            parameters_schema=_parameters(
                ["worker_agent", "aggregator_agent"],
                {
                    "worker_agent": {**_AGENT_NAME, "description": "Agent called once per item."},
                    "aggregator_agent": {**_AGENT_NAME, "description": "Agent that combines all results."},
                    "max_concurrency": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                    "item_timeout_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000, "default": 60_000},
                },
                {"worker_agent": "summarizer", "aggregator_agent": "digest-writer", "max_concurrency": 5},
            ),
            definition={
                "name": "fan-out-fan-in",
                "description": "Fan out over input.items, fan in with an aggregator.",
                "input_schema": {
                    "type": "object",
                    "required": ["items"],
                    "properties": {"items": {"type": "array", "maxItems": 10_000}},
                },
                "steps": [
                    {
                        "id": "process",
                        "agent": "{{ params.worker_agent }}",
                        "for_each": "{{ input.items }}",
                        "max_concurrency": "{{ params.max_concurrency }}",
                        "timeout_ms": "{{ params.item_timeout_ms }}",
                        "input": {"item": "{{ item }}"},
                    },
                    {
                        "id": "combine",
                        "agent": "{{ params.aggregator_agent }}",
                        "depends_on": ["process"],
                        "input": {"results": "{{ steps.process.output }}"},
                    },
                ],
                "output": {"result": "{{ steps.combine.output }}", "count": "{{ length(steps.process.output) }}"},
                "tags": ["template:fan-out-fan-in"],
            },
            builtin=True,
        ),
        WorkflowTemplate(
            name="retry-with-fallback",
            description=(
                "Calls a primary agent with retries and exponential backoff; when it still fails, "
                "calls a fallback agent with the same input. The output says which one answered."
            ),
            parameters_schema=_parameters(
                ["primary_agent", "fallback_agent"],
                {
                    "primary_agent": {**_AGENT_NAME, "description": "Agent tried first."},
                    "fallback_agent": {**_AGENT_NAME, "description": "Agent used when the primary fails."},
                    "max_retries": {"type": "integer", "minimum": 0, "maximum": 10, "default": 3},
                    "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000, "default": 30_000},
                },
                {"primary_agent": "gpt-summarizer", "fallback_agent": "local-summarizer", "max_retries": 2},
            ),
            definition={
                "name": "retry-with-fallback",
                "description": "Primary agent with retries, fallback agent when it fails.",
                "steps": [
                    {
                        "id": "primary",
                        "agent": "{{ params.primary_agent }}",
                        "input": "{{ input }}",
                        "timeout_ms": "{{ params.timeout_ms }}",
                        "retry": {
                            "max_retries": "{{ params.max_retries }}",
                            "initial_delay_ms": 1000,
                            "backoff_multiplier": 2.0,
                        },
                    },
                    {
                        # Needs the engine to evaluate a dependent's `when` after its dependency
                        # failed (why the context carries `status`); until it does, a failed
                        # primary fails the run as any failed step does.
                        "id": "fallback",
                        "agent": "{{ params.fallback_agent }}",
                        "depends_on": ["primary"],
                        "when": "{{ steps.primary.status == 'failed' }}",
                        "input": "{{ input }}",
                        "timeout_ms": "{{ params.timeout_ms }}",
                    },
                ],
                "output": {
                    "result": "{{ steps.fallback.output || steps.primary.output }}",
                    "answered_by": "{{ steps.fallback.status == 'succeeded' && 'fallback' || 'primary' }}",
                },
                "tags": ["template:retry-with-fallback"],
            },
            builtin=True,
        ),
        WorkflowTemplate(
            name="approval-gate",
            description=(
                "Asks for a human approval through a webhook, waits durably for the signal "
                '(payload `{"approved": true|false, ...}`) up to `timeout_ms`, and runs the '
                "action agent only when approved."
            ),
            parameters_schema=_parameters(
                ["notify_url", "action_agent"],
                {
                    "notify_url": {**HTTP_URL_SCHEMA, "description": "Webhook told that an approval is pending."},
                    "action_agent": {**_AGENT_NAME, "description": "Agent run once approved."},
                    "approval_signal": {**SIGNAL_NAME_SCHEMA, "default": "approval"},
                    "timeout_ms": {
                        "type": "integer",
                        "minimum": 60_000,
                        "maximum": MAX_WAIT_MS,
                        "default": 86_400_000,
                        "description": "How long to wait for the decision (default one day).",
                    },
                },
                {"notify_url": "https://hooks.example.com/approvals", "action_agent": "deployer"},
            ),
            definition={
                "name": "approval-gate",
                "description": "Human approval before an action.",
                "steps": [
                    {
                        "id": "request_approval",
                        "type": "http",
                        "config": {"method": "POST", "url": "{{ params.notify_url }}"},
                        "input": {
                            "run_id": "{{ run.id }}",
                            "workflow_id": "{{ run.workflow_id }}",
                            "signal": "{{ params.approval_signal }}",
                            "request": "{{ input }}",
                        },
                    },
                    {
                        "id": "wait_for_approval",
                        "type": "wait_for_signal",
                        "depends_on": ["request_approval"],
                        "config": {"signal": "{{ params.approval_signal }}", "timeout_ms": "{{ params.timeout_ms }}"},
                    },
                    {
                        "id": "act",
                        "agent": "{{ params.action_agent }}",
                        "depends_on": ["wait_for_approval"],
                        "when": "{{ steps.wait_for_approval.output.approved == `true` }}",
                        "input": {"request": "{{ input }}", "approval": "{{ steps.wait_for_approval.output }}"},
                    },
                ],
                "output": {
                    "approved": "{{ steps.wait_for_approval.output.approved == `true` }}",
                    "result": "{{ steps.act.output }}",
                },
                "tags": ["template:approval-gate"],
            },
            builtin=True,
        ),
        WorkflowTemplate(
            name="scheduled-report",
            description=(
                "Collects data with one agent, writes a report with another and posts it to a "
                "webhook; attach a schedule (POST /workflows/{id}/schedules) to run it periodically."
            ),
            parameters_schema=_parameters(
                ["report_name", "collector_agent", "writer_agent", "webhook_url"],
                {
                    "report_name": {**_PLAIN_TEXT, "description": "Title of the report."},
                    "collector_agent": {**_AGENT_NAME, "description": "Agent that gathers the data."},
                    "writer_agent": {**_AGENT_NAME, "description": "Agent that writes the report."},
                    "webhook_url": {**HTTP_URL_SCHEMA, "description": "Where the report is posted."},
                    "lookback_hours": {"type": "integer", "minimum": 1, "maximum": 744, "default": 24},
                },
                {
                    "report_name": "Daily operations",
                    "collector_agent": "metrics-collector",
                    "writer_agent": "report-writer",
                    "webhook_url": "https://hooks.example.com/reports",
                },
            ),
            definition={
                "name": "scheduled-report",
                "description": "Collect, write and deliver a report.",
                "input_schema": {
                    "type": "object",
                    "properties": {"as_of": {"type": "string", "format": "date-time"}},
                },
                "steps": [
                    {
                        "id": "collect",
                        "agent": "{{ params.collector_agent }}",
                        "input": {"lookback_hours": "{{ params.lookback_hours }}", "as_of": "{{ input.as_of }}"},
                        "retry": {"max_retries": 3},
                    },
                    {
                        "id": "write",
                        "agent": "{{ params.writer_agent }}",
                        "depends_on": ["collect"],
                        "input": {"title": "{{ params.report_name }}", "data": "{{ steps.collect.output }}"},
                    },
                    {
                        "id": "deliver",
                        "type": "http",
                        "depends_on": ["write"],
                        "config": {"method": "POST", "url": "{{ params.webhook_url }}"},
                        "input": {
                            "title": "{{ params.report_name }} (run {{ run.id }})",
                            "report": "{{ steps.write.output }}",
                        },
                    },
                ],
                "output": {"report": "{{ steps.write.output }}"},
                "tags": ["template:scheduled-report"],
            },
            builtin=True,
        ),
        WorkflowTemplate(
            name="webhook-to-agent",
            description=(
                'Takes an event from a webhook trigger (`{"type", "data"}`), hands it to an agent '
                "when its type is one of `event_types` (any type when empty) and posts the agent's "
                "answer to a callback URL."
            ),
            parameters_schema=_parameters(
                ["handler_agent", "callback_url"],
                {
                    "handler_agent": {**_AGENT_NAME, "description": "Agent that handles the event."},
                    "callback_url": {**HTTP_URL_SCHEMA, "description": "Where the agent's answer is posted."},
                    "event_types": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "uniqueItems": True,
                        "default": [],
                        "description": "Event types to handle; empty handles every event.",
                    },
                },
                {
                    "handler_agent": "ticket-triager",
                    "callback_url": "https://hooks.example.com/triage-results",
                    "event_types": ["ticket.created", "ticket.reopened"],
                },
            ),
            definition={
                "name": "webhook-to-agent",
                "description": "Webhook event -> agent -> callback.",
                "input_schema": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}},
                "steps": [
                    {
                        # Carries the parameter list into the run, where `when` can read it.
                        "id": "accept",
                        "type": "transform",
                        "input": {
                            "event_type": "{{ input.type }}",
                            "payload": "{{ input.data }}",
                            "handled_types": "{{ params.event_types }}",
                        },
                    },
                    {
                        "id": "handle",
                        "agent": "{{ params.handler_agent }}",
                        "depends_on": ["accept"],
                        "when": (
                            "{{ length(steps.accept.output.handled_types) == `0` || "
                            "contains(steps.accept.output.handled_types, steps.accept.output.event_type) }}"
                        ),
                        "input": {
                            "event_type": "{{ steps.accept.output.event_type }}",
                            "payload": "{{ steps.accept.output.payload }}",
                        },
                    },
                    {
                        "id": "reply",
                        "type": "http",
                        "depends_on": ["handle"],
                        "config": {"method": "POST", "url": "{{ params.callback_url }}"},
                        "input": {
                            "event_type": "{{ steps.accept.output.event_type }}",
                            "result": "{{ steps.handle.output }}",
                        },
                    },
                ],
                "output": {"result": "{{ steps.handle.output }}"},
                "tags": ["template:webhook-to-agent"],
            },
            builtin=True,
        ),
    )
}


def builtin_templates() -> list[WorkflowTemplate]:
    """FlowForge's own templates, in a stable order; copies, so callers cannot alter the originals."""
    return [copy.deepcopy(template) for template in BUILTIN_TEMPLATES.values()]


def get_builtin_template(name: str) -> WorkflowTemplate | None:
    """The built-in template called `name` (a copy), or None."""
    template = BUILTIN_TEMPLATES.get(name)
    return copy.deepcopy(template) if template is not None else None
