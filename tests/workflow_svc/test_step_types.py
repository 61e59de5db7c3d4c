"""The step-type registry: schemas, type inference, and config errors at exact field paths."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from flowforge.workflow.v1 import workflow_pb2
from flowforge_common.errors import FieldViolation
from workflow_svc.domain.step_types import (
    FORMAT_CHECKER,
    MAX_WAIT_MS,
    STEP_TYPES,
    config_violations,
    effective_step_type,
    list_step_types,
    proto_enum_value,
)

PATH = "steps[2].config"


def test_the_registry_has_exactly_the_proto_step_types_in_order() -> None:
    proto_names = [
        value.name.removeprefix("STEP_TYPE_").lower()
        for value in workflow_pb2.StepType.DESCRIPTOR.values
        if value.number != 0
    ]

    assert [step_type.name for step_type in list_step_types()] == proto_names
    assert all(step_type.description for step_type in list_step_types())


@pytest.mark.parametrize("name", list(STEP_TYPES))
def test_every_config_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = STEP_TYPES[name].config_schema

    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    ("step_type", "config"),
    [
        ("agent", None),
        ("agent", {}),
        ("http", {"url": "https://hooks.example.com/x"}),
        ("http", {"method": "GET", "url": "http://10.0.0.1:8080/a?b=c", "headers": {"X-Id": "1"}, "timeout_ms": 5000}),
        ("transform", None),
        ("delay", {"duration_ms": 1}),
        ("delay", {"duration_ms": 5000.0}),  # protobuf Struct numbers are doubles
        ("delay", {"duration_ms": MAX_WAIT_MS}),
        ("wait_for_signal", {"signal": "approval"}),
        ("wait_for_signal", {"signal": "order.paid-v2", "timeout_ms": 60_000}),
        ("sub_workflow", {"workflow_id": "wf_123"}),
        ("sub_workflow", {"workflow_id": "wf_123", "version": 3}),
    ],
)
def test_valid_configs_pass(step_type: str, config: Any) -> None:
    assert config_violations(step_type, config, PATH) == []


@pytest.mark.parametrize(
    ("step_type", "config", "expected"),
    [
        ("http", None, [(f"{PATH}.url", "'url' is required")]),
        (
            "http",
            {"url": "ftp://files.example.com"},
            [(f"{PATH}.url", "'ftp://files.example.com' is not an absolute http or https URL")],
        ),
        ("http", {"url": "https://a b"}, [(f"{PATH}.url", "'https://a b' is not an absolute http or https URL")]),
        (
            "http",
            {"url": "https://x", "method": "FETCH"},
            [(f"{PATH}.method", "'FETCH' is not one of ['GET', 'POST', 'PUT', 'PATCH', 'DELETE']")],
        ),
        (
            "http",
            {"url": "https://x", "headers": {"X-Id": 1}},
            [(f'{PATH}.headers["X-Id"]', "1 is not of type 'string'")],
        ),
        ("http", {"url": "https://x", "timeout_ms": 0}, [(f"{PATH}.timeout_ms", "0 is less than the minimum of 1")]),
        (
            "http",
            {"url": "https://x", "methdo": "GET"},
            [(f"{PATH}.methdo", "unknown field 'methdo' (allowed: method, url, headers, timeout_ms)")],
        ),
        ("transform", {"x": 1}, [(f"{PATH}.x", "unknown field 'x' (no fields are allowed here)")]),
        ("agent", {"url": "https://x"}, [(f"{PATH}.url", "unknown field 'url' (no fields are allowed here)")]),
        ("delay", {}, [(f"{PATH}.duration_ms", "'duration_ms' is required")]),
        ("delay", {"duration_ms": 0}, [(f"{PATH}.duration_ms", "0 is less than the minimum of 1")]),
        (
            "delay",
            {"duration_ms": MAX_WAIT_MS + 1},
            [(f"{PATH}.duration_ms", f"{MAX_WAIT_MS + 1} is greater than the maximum of {MAX_WAIT_MS}")],
        ),
        ("delay", {"duration_ms": "5s"}, [(f"{PATH}.duration_ms", "'5s' is not of type 'integer'")]),
        ("delay", {"duration_ms": True}, [(f"{PATH}.duration_ms", "True is not of type 'integer'")]),
        ("delay", {"duration_ms": 1.5}, [(f"{PATH}.duration_ms", "1.5 is not of type 'integer'")]),
        ("wait_for_signal", {}, [(f"{PATH}.signal", "'signal' is required")]),
        (
            "wait_for_signal",
            {"signal": "a/b"},
            [
                (
                    f"{PATH}.signal",
                    "'a/b' is not a signal name: letters, digits, '_', '.' or '-', at most 100 characters",
                )
            ],
        ),
        (
            "wait_for_signal",
            {"signal": "s", "timeout_ms": -1},
            [(f"{PATH}.timeout_ms", "-1 is less than the minimum of 1")],
        ),
        ("sub_workflow", {"version": 2}, [(f"{PATH}.workflow_id", "'workflow_id' is required")]),
        ("sub_workflow", {"workflow_id": "w", "version": 0}, [(f"{PATH}.version", "0 is less than the minimum of 1")]),
        ("delay", [1], [(PATH, "config must be an object")]),
        (
            "http",
            {"method": "GET", "extra": 1, "other": 2},
            [
                (f"{PATH}.url", "'url' is required"),
                (f"{PATH}.extra", "unknown field 'extra' (allowed: method, url, headers, timeout_ms)"),
                (f"{PATH}.other", "unknown field 'other' (allowed: method, url, headers, timeout_ms)"),
            ],
        ),
    ],
)
def test_config_errors_name_the_exact_field(step_type: str, config: Any, expected: list[tuple[str, str]]) -> None:
    violations = config_violations(step_type, config, PATH)

    assert sorted(violations, key=lambda v: v.field) == sorted(
        (FieldViolation(field, message) for field, message in expected), key=lambda v: v.field
    )


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"agent": "fetcher"}, "agent"),
        ({"type": "http", "agent": "fetcher"}, "http"),
        ({"type": "HTTP"}, "http"),
        ({"type": "STEP_TYPE_WAIT_FOR_SIGNAL"}, "wait_for_signal"),
        ({"type": "STEP_TYPE_UNSPECIFIED", "agent": "a"}, "agent"),
        ({"type": "", "agent": "a"}, "agent"),
        ({"type": "bogus"}, "bogus"),
        ({}, None),
        ({"agent": ""}, None),
    ],
)
def test_effective_step_type_infers_agent_and_reads_proto_enum_names(
    step: dict[str, Any], expected: str | None
) -> None:
    assert effective_step_type(step) == expected


def test_proto_enum_value_accepts_both_spellings() -> None:
    assert proto_enum_value("pause", "ON_EXHAUSTED") == "pause"
    assert proto_enum_value("ON_EXHAUSTED_PAUSE", "ON_EXHAUSTED") == "pause"
    assert proto_enum_value("ON_EXHAUSTED_UNSPECIFIED", "ON_EXHAUSTED") is None
    assert proto_enum_value(None, "ON_EXHAUSTED") is None
    assert proto_enum_value(2, "ON_EXHAUSTED") == "2"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("https://example.com/a?b=c#d", True),
        ("urn:isbn:0451450523", True),
        ("mailto:a@example.com", True),
        ("example.com/path", False),
        ("https://exa mple.com", False),
        ("https://example.com/{{ input.id }}", False),
        ("", False),
    ],
)
def test_the_uri_format_is_checked_without_optional_packages(value: str, valid: bool) -> None:
    assert FORMAT_CHECKER.conforms(value, "uri") is valid
