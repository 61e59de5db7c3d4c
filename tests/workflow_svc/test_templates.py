"""Workflow templates: the built-ins instantiate into valid workflows; parameters are checked."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from flowforge_common.errors import FieldViolation, ValidationError
from flowforge_common.expressions import compile_template
from workflow_svc.domain.definitions import referenced_agents, validate_definition
from workflow_svc.domain.templates import (
    BUILTIN_TEMPLATES,
    WorkflowTemplate,
    builtin_templates,
    get_builtin_template,
    instantiate,
    validate_template,
)

REQUIRED_KINDS = ["fan-out-fan-in", "retry-with-fallback", "approval-gate", "scheduled-report", "webhook-to-agent"]


def every_agent_active(names: set[str]) -> Mapping[str, str]:
    return dict.fromkeys(names, "active")


def examples() -> list[Any]:
    return [
        pytest.param(template, example, id=f"{template.name}-{index}")
        for template in builtin_templates()
        for index, example in enumerate(template.parameters_schema["examples"])
    ]


def test_the_builtins_cover_the_common_shapes() -> None:
    templates = builtin_templates()

    assert [template.name for template in templates] == REQUIRED_KINDS
    for template in templates:
        assert template.builtin
        assert template.description
        Draft202012Validator.check_schema(template.parameters_schema)
        assert template.parameters_schema["examples"]


@pytest.mark.parametrize("template", builtin_templates(), ids=lambda template: template.name)
def test_every_builtin_template_is_itself_valid(template: WorkflowTemplate) -> None:
    assert validate_template(template) == []


@pytest.mark.parametrize(("template", "example"), examples())
def test_every_builtin_instantiates_into_a_valid_workflow(template: WorkflowTemplate, example: dict[str, Any]) -> None:
    definition = instantiate(template, example, name="from-template")
    report = validate_definition(definition, agent_lookup=every_agent_active)

    assert report.errors == []
    assert report.plan
    assert definition["name"] == "from-template"
    assert "params" not in compile_template(definition).roots()
    assert referenced_agents(definition) <= {value for value in example.values() if isinstance(value, str)}


def test_params_are_substituted_and_runtime_expressions_left_for_the_engine() -> None:
    template = BUILTIN_TEMPLATES["fan-out-fan-in"]

    definition = instantiate(template, {"worker_agent": "w", "aggregator_agent": "agg", "max_concurrency": 4})

    process, combine = definition["steps"]
    assert process["agent"] == "w"
    assert process["max_concurrency"] == 4  # typed, not "4"
    assert process["timeout_ms"] == 60_000  # the schema default
    assert process["for_each"] == "{{ input.items }}"
    assert process["input"] == {"item": "{{ item }}"}
    assert combine["agent"] == "agg"
    assert combine["input"] == {"results": "{{ steps.process.output }}"}
    assert definition["output"]["count"] == "{{ length(steps.process.output) }}"


def test_params_and_runtime_values_can_share_a_string() -> None:
    template = BUILTIN_TEMPLATES["scheduled-report"]
    parameters = dict(template.parameters_schema["examples"][0])

    definition = instantiate(template, parameters)

    deliver = definition["steps"][2]
    assert deliver["input"]["title"] == "Daily operations (run {{ run.id }})"
    assert deliver["config"]["url"] == parameters["webhook_url"]
    assert definition["steps"][0]["input"]["lookback_hours"] == 24


def test_list_parameters_keep_their_type() -> None:
    template = BUILTIN_TEMPLATES["webhook-to-agent"]

    definition = instantiate(
        template, {"handler_agent": "h", "callback_url": "https://x.example/cb", "event_types": ["a.b"]}
    )

    assert definition["steps"][0]["input"]["handled_types"] == ["a.b"]
    when = definition["steps"][1]["when"]
    context = {"steps": {"accept": {"output": {"handled_types": ["a.b"], "event_type": "a.b"}}}}
    assert compile_template(when).evaluate(context) is True


def test_instantiating_leaves_the_template_unchanged() -> None:
    template = get_builtin_template("approval-gate")
    assert template is not None
    before = json.dumps(template.definition, sort_keys=True)

    definition = instantiate(template, template.parameters_schema["examples"][0])
    definition["steps"][0]["config"]["url"] = "https://changed.example"

    assert json.dumps(template.definition, sort_keys=True) == before


def test_builtin_templates_are_copies() -> None:
    builtin_templates()[0].definition["steps"].clear()

    assert BUILTIN_TEMPLATES["fan-out-fan-in"].definition["steps"]
    assert get_builtin_template("no-such-template") is None


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"action_agent": "deployer"}, [("parameters.notify_url", "'notify_url' is required")]),
        (
            {"notify_url": "not a url", "action_agent": "deployer"},
            [("parameters.notify_url", "'not a url' is not an absolute http or https URL")],
        ),
        (
            {"notify_url": "https://x.example", "action_agent": "", "timeout_ms": 5},
            [
                ("parameters.action_agent", "'' should be non-empty"),
                ("parameters.timeout_ms", "5 is less than the minimum of 60000"),
            ],
        ),
        (
            {"notify_url": "https://x.example", "action_agent": "d", "approval_signal": "has space"},
            [
                (
                    "parameters.approval_signal",
                    "'has space' is not a signal name: letters, digits, '_', '.' or '-', at most 100 characters",
                )
            ],
        ),
        (
            {"notify_url": "https://x.example", "action_agent": "d", "colour": "red"},
            [
                (
                    "parameters.colour",
                    "unknown field 'colour' (allowed: notify_url, action_agent, approval_signal, timeout_ms)",
                )
            ],
        ),
        ("not an object", [("parameters", "parameters must be an object")]),
    ],
)
def test_bad_parameters_are_refused_with_exact_paths(parameters: Any, expected: list[tuple[str, str]]) -> None:
    with pytest.raises(ValidationError) as caught:
        instantiate(BUILTIN_TEMPLATES["approval-gate"], parameters)

    assert sorted((v.field, v.message) for v in caught.value.violations) == sorted(expected)


def test_braces_in_free_text_parameters_are_refused() -> None:
    template = BUILTIN_TEMPLATES["scheduled-report"]
    parameters = {**template.parameters_schema["examples"][0], "report_name": "{{ steps.x.output }}"}

    with pytest.raises(ValidationError) as caught:
        instantiate(template, parameters)

    assert caught.value.violations == [
        FieldViolation(
            "parameters.report_name", "'{{ steps.x.output }}' is not plain text: '{' and '}' are not allowed"
        )
    ]


def tenant_template(**changes: Any) -> WorkflowTemplate:
    fields: dict[str, Any] = {
        "name": "notify-team",
        "description": "Posts the input to a team's webhook.",
        "parameters_schema": {
            "type": "object",
            "required": ["url"],
            "properties": {"url": {"type": "string"}},
            "examples": [{"url": "https://hooks.example.com/team"}],
        },
        "definition": {
            "name": "notify-team",
            "steps": [{"id": "post", "type": "http", "config": {"url": "{{ params.url }}"}, "input": "{{ input }}"}],
        },
    }
    fields.update(changes)
    return WorkflowTemplate(**fields)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (tenant_template(), []),
        (
            tenant_template(name="Notify Team"),
            [("name", "template names are 1 to 63 lower-case letters, digits and '-', starting alphanumeric")],
        ),
        (
            tenant_template(parameters_schema={"type": "objekt"}),
            [("parameters_schema", "invalid JSON Schema: 'objekt' is not valid under any of the given schemas")],
        ),
        (
            tenant_template(
                definition={"name": "n", "steps": [{"id": "p", "type": "transform", "input": "{{ params.missing }}"}]}
            ),
            [("definition.steps[0].input", "unknown parameter 'missing' (declared: url)")],
        ),
        (
            tenant_template(
                definition={"name": "n", "steps": [{"id": "p", "type": "transform", "input": "{{ params. }}"}]}
            ),
            [("definition.steps[0].input", "invalid expression '{{ params. }}' at column 11: incomplete expression")],
        ),
        (
            tenant_template(
                parameters_schema={
                    "type": "object",
                    "properties": {"url": {"type": "string"}},
                    "examples": [{"url": 3}],
                }
            ),
            [("parameters_schema.examples[0].url", "3 is not of type 'string'")],
        ),
        (
            tenant_template(
                parameters_schema={
                    "type": "object",
                    "properties": {"url": {"type": "string"}},
                    "examples": [{"url": "ftp://x"}],
                }
            ),
            [
                (
                    "definition.steps[0].config.url",
                    "'ftp://x' is not an absolute http or https URL"
                    " (with the parameters of parameters_schema.examples[0])",
                )
            ],
        ),
    ],
)
def test_templates_are_validated_before_they_are_saved(
    template: WorkflowTemplate, expected: list[tuple[str, str]]
) -> None:
    assert [(v.field, v.message) for v in validate_template(template)] == expected
