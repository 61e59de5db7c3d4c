"""Validation of workflow definitions: exact field paths, useful messages, every problem at once."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from google.protobuf import json_format

from flowforge.workflow.v1 import agent_pb2, workflow_pb2
from flowforge_common.errors import FieldViolation, ValidationError
from tests.workflow_svc.harness import API_EXAMPLE
from workflow_svc.domain.definitions import (
    CONCURRENCY_FIELDS,
    RETRY_FIELDS,
    STEP_FIELDS,
    WORKFLOW_FIELDS,
    referenced_agents,
    validate_definition,
    validate_run_input,
)

AGENTS = {"fetcher": "active", "summarizer": "active", "classifier": "active", "retired": "inactive"}
TYPES = "agent, http, transform, delay, wait_for_signal, sub_workflow"
NOT_ANCESTOR = "(list it, or a step after it, in depends_on)"

API_EXAMPLE_PLAN = [["fetch"], ["summarize", "classify"], ["notify"]]


def lookup(names: set[str]) -> Mapping[str, str]:
    return {name: AGENTS[name] for name in names if name in AGENTS}


def check(definition: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(error.field, error.message) for error in validate_definition(definition, agent_lookup=lookup).errors]


def base() -> dict[str, Any]:
    """A small valid workflow: a -> b -> c (c is a transform)."""
    return {
        "name": "wf",
        "steps": [
            {"id": "a", "agent": "fetcher", "input": {"url": "{{ input.doc }}"}},
            {"id": "b", "agent": "summarizer", "depends_on": ["a"], "input": {"text": "{{ steps.a.output }}"}},
            {"id": "c", "type": "transform", "depends_on": ["b"], "input": {"x": "{{ steps.b.output }}"}},
        ],
    }


def edited(edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    definition = base()
    edit(definition)
    return definition


def step(index: int, **changes: Any) -> Callable[[dict[str, Any]], object]:
    """An edit of one step; a change to None removes the field."""

    def apply(definition: dict[str, Any]) -> None:
        target = definition["steps"][index]
        for key, value in changes.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value

    return apply


def top(**changes: Any) -> Callable[[dict[str, Any]], object]:
    """An edit of workflow fields; a change to None removes the field."""

    def apply(definition: dict[str, Any]) -> None:
        for key, value in changes.items():
            if value is None:
                definition.pop(key, None)
            else:
                definition[key] = value

    return apply


# --- accepted ----------------------------------------------------------------------------------


def test_the_api_example_is_accepted_exactly_as_written() -> None:
    report = validate_definition(copy.deepcopy(API_EXAMPLE), agent_lookup=lookup)

    assert report.errors == []
    assert report.valid
    assert report.plan == API_EXAMPLE_PLAN


def test_the_api_example_is_accepted_after_a_trip_through_the_proto() -> None:
    # The servicer hands the domain MessageToDict output: enum names, doubles in Struct values.
    as_sent_by_the_edge = copy.deepcopy(API_EXAMPLE)
    as_sent_by_the_edge["steps"][3]["type"] = "STEP_TYPE_HTTP"
    message = json_format.ParseDict(as_sent_by_the_edge, workflow_pb2.Workflow())
    definition = json_format.MessageToDict(message, preserving_proto_field_name=True)
    assert definition["steps"][3]["type"] == "STEP_TYPE_HTTP"

    report = validate_definition(definition, agent_lookup=lookup)

    assert report.errors == []
    assert report.plan == API_EXAMPLE_PLAN


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(top(id="wf_1", version=3, status="active", etag="e", created_by="u"), id="output-only fields"),
        pytest.param(
            top(output={"first": "{{ steps.a.output }}", "last": "{{ steps.c.output }}"}), id="output reads any step"
        ),
        pytest.param(top(tags=["a", "x" * 50], description=""), id="tags"),
        pytest.param(top(input_schema={}), id="empty input schema"),
        pytest.param(
            step(2, for_each="{{ steps.b.output }}", input={"x": "{{ item }}"}, max_concurrency=5),
            id="item in for_each",
        ),
        pytest.param(
            step(2, for_each="{{ input.xs }}", concurrency={"key": "{{ item.customer }}", "limit": 2}), id="item in key"
        ),
        pytest.param(step(1, concurrency={"key": "openai", "limit": 3}), id="constant concurrency key"),
        pytest.param(step(1, on_exhausted="ON_EXHAUSTED_PAUSE", priority=9, queue_timeout_ms=1), id="proto enum name"),
        pytest.param(
            step(
                1,
                retry={
                    "max_retries": 0,
                    "initial_delay_ms": 100,
                    "max_delay_ms": 100,
                    "backoff_multiplier": 1,
                    "jitter": False,
                    "non_retryable_status": [400, 599],
                },
            ),
            id="retry bounds",
        ),
        pytest.param(step(1, timeout_ms=86_400_000, total_timeout_ms=86_400_000), id="timeout bounds"),
        pytest.param(
            step(2, when="{{ steps.a.output.ok && steps.b.status == 'succeeded' }}"), id="when reads ancestors"
        ),
        pytest.param(step(2, type="delay", input=None, config={"duration_ms": 1000.0}), id="struct doubles"),
        pytest.param(step(2, type="STEP_TYPE_TRANSFORM", when="", for_each=""), id="proto defaults"),
        pytest.param(step(0, input="{{ input }}"), id="whole input"),
    ],
)
def test_valid_variations_are_accepted(edit: Callable[[dict[str, Any]], object]) -> None:
    assert check(edited(edit)) == []


def test_five_hundred_steps_are_accepted_quickly() -> None:
    steps: list[dict[str, Any]] = [{"id": "s0", "type": "transform", "input": {"v": "{{ input.x }}"}}]
    steps += [
        {
            "id": f"s{i}",
            "type": "transform",
            "depends_on": [f"s{i - 1}"],
            "input": {"v": f"{{{{ steps.s{i - 1}.output.v }}}}"},
        }
        for i in range(1, 500)
    ]

    started = time.perf_counter()
    report = validate_definition({"name": "long", "steps": steps}, agent_lookup=None)

    assert report.errors == []
    assert len(report.plan) == 500
    assert time.perf_counter() - started < 5.0


# --- refused: one problem at a time, exact path and message ------------------------------------

CASES: list[Any] = [
    # workflow fields
    ("name missing", top(name=None), [("name", "name is required")]),
    ("name blank", top(name="  "), [("name", "name is required")]),
    ("name too long", top(name="n" * 101), [("name", "name must be at most 100 characters (got 101)")]),
    ("name not a string", top(name=5), [("name", "name must be a string")]),
    ("description not a string", top(description=["x"]), [("description", "description must be a string")]),
    ("unknown field", top(stepz=[]), [("stepz", "unknown field 'stepz' (did you mean 'steps'?)")]),
    ("too many tags", top(tags=[f"t{i}" for i in range(21)]), [("tags", "at most 20 tags are allowed (got 21)")]),
    (
        "empty tag",
        top(tags=["ok", ""]),
        [("tags[1]", "a tag must be a string of 1 to 50 characters (got 0 characters)")],
    ),
    (
        "long tag",
        top(tags=["t" * 51]),
        [("tags[0]", "a tag must be a string of 1 to 50 characters (got 51 characters)")],
    ),
    ("tags not a list", top(tags="a,b"), [("tags", "tags must be a list of strings")]),
    (
        "input_schema invalid",
        top(input_schema={"type": "strin"}),
        [("input_schema", "invalid JSON Schema at type: 'strin' is not valid under any of the given schemas")],
    ),
    (
        "input_schema bad regex",
        top(input_schema={"type": "string", "pattern": "(["}),
        [("input_schema", "invalid JSON Schema at pattern: '([' is not a 'regex'")],
    ),
    (
        "input_schema not an object",
        top(input_schema=["string"]),
        [("input_schema", "input_schema must be a JSON Schema object")],
    ),
    # steps list
    ("steps missing", top(steps=None), [("steps", "at least one step is required")]),
    ("steps empty", top(steps=[]), [("steps", "at least one step is required")]),
    ("steps not a list", top(steps={"a": {}}), [("steps", "steps must be a list of step objects")]),
    ("step not an object", lambda d: d["steps"].append("d"), [("steps[3]", "a step must be an object")]),
    # ids
    ("id missing", step(2, id=None), [("steps[2].id", "step id is required")]),
    ("id not a string", step(2, id=3), [("steps[2].id", "step id must be a string (got 3)")]),
    (
        "id bad start",
        step(2, id="1c"),
        [
            (
                "steps[2].id",
                "invalid step id '1c': it must start with a letter or '_' and hold only "
                "letters, digits, '_' and '-' (at most 64 characters)",
            )
        ],
    ),
    (
        "id too long",
        step(2, id="c" * 65),
        [
            (
                "steps[2].id",
                f"invalid step id '{'c' * 65}': it must start with a letter or '_' and "
                "hold only letters, digits, '_' and '-' (at most 64 characters)",
            )
        ],
    ),
    ("duplicate id", step(2, id="a"), [("steps[2].id", "duplicate step id 'a' (also steps[0])")]),
    # depends_on
    (
        "unknown dependency",
        step(2, depends_on=["b", "ghost"]),
        [("steps[2].depends_on[1]", "depends on unknown step 'ghost'")],
    ),
    ("self dependency", step(2, depends_on=["b", "c"]), [("steps[2].depends_on[1]", "step 'c' depends on itself")]),
    (
        "dependency not a string",
        step(2, depends_on=["b", 7]),
        [("steps[2].depends_on[1]", "depends_on entries must be step ids (got 7)")],
    ),
    (
        "cycle",
        step(0, depends_on=["c"]),
        [("steps[0].depends_on", "cycle: a -> c -> b -> a (each step depends on the next)")],
    ),
    # type and agent
    (
        "type missing without agent",
        step(2, type=None),
        [("steps[2].type", f"step type is required when no agent is set (one of: {TYPES})")],
    ),
    ("unknown type", step(2, type="email"), [("steps[2].type", f"unknown step type 'email' (one of: {TYPES})")]),
    (
        "agent step without agent",
        step(0, type="agent", agent=None),
        [("steps[0].agent", "agent steps need an agent name")],
    ),
    (
        "agent on a transform",
        step(2, agent="fetcher"),
        [("steps[2].agent", "only agent steps name an agent; this is a 'transform' step")],
    ),
    ("unknown agent", step(0, agent="ghost"), [("steps[0].agent", "unknown agent 'ghost'")]),
    ("inactive agent", step(0, agent="retired"), [("steps[0].agent", "agent 'retired' is inactive")]),
    (
        "agent not a string",
        step(0, agent=["fetcher"]),
        [("steps[0].agent", "agent must be an agent name (got ['fetcher'])")],
    ),
    (
        "unknown step field",
        step(2, dependson=["a"]),
        [("steps[2].dependson", "unknown field 'dependson' (did you mean 'depends_on'?)")],
    ),
    # config
    (
        "http without url",
        step(2, type="http", config={"method": "GET"}),
        [("steps[2].config.url", "'url' is required")],
    ),
    (
        "http bad url",
        step(2, type="http", config={"url": "file:///etc/passwd"}),
        [("steps[2].config.url", "'file:///etc/passwd' is not an absolute http or https URL")],
    ),
    (
        "expression in config",
        step(2, type="http", config={"url": "https://x/{{ input.id }}"}),
        [("steps[2].config.url", "expressions are not evaluated in config; pass dynamic values in input")],
    ),
    ("delay without duration", step(2, type="delay"), [("steps[2].config.duration_ms", "'duration_ms' is required")]),
    (
        "config on a transform",
        step(2, config={"x": 1}),
        [("steps[2].config.x", "unknown field 'x' (no fields are allowed here)")],
    ),
    ("config not an object", step(2, type="delay", config="1s"), [("steps[2].config", "config must be an object")]),
    # expression syntax
    (
        "bad input expression",
        step(1, input={"text": "{{ steps.a.output. }}"}),
        [("steps[1].input.text", "invalid expression '{{ steps.a.output. }}' at column 19: incomplete expression")],
    ),
    (
        "bad when expression",
        step(2, when="{{ steps.b.output == }}"),
        [("steps[2].when", "invalid expression '{{ steps.b.output == }}' at column 21: incomplete expression")],
    ),
    (
        "bad for_each expression",
        step(2, for_each="{{ input.items[ }}"),
        [("steps[2].for_each", "invalid expression '{{ input.items[ }}' at column 16: incomplete expression")],
    ),
    (
        "bad concurrency key",
        step(1, concurrency={"key": "{{ input.a ! }}", "limit": 1}),
        [("steps[1].concurrency.key", "invalid expression '{{ input.a ! }}' at column 12: unexpected '!'")],
    ),
    (
        "bad output expression",
        top(output={"summary": "{{ steps.c.output[ }}"}),
        [("output.summary", "invalid expression '{{ steps.c.output[ }}' at column 19: incomplete expression")],
    ),
    (
        "unterminated placeholder",
        step(0, input={"url": "https://x/{{ input.doc"}),
        [("steps[0].input.url", "invalid expression '{{ input.doc' at column 11: '{{' is not closed by '}}'")],
    ),
    (
        "unknown function",
        step(0, input={"url": "{{ upper(input.doc) }}"}),
        [("steps[0].input.url", "invalid expression '{{ upper(input.doc) }}' at column 4: unknown function upper()")],
    ),
    (
        "unknown name",
        step(0, input={"url": "{{ inptu.doc }}"}),
        [
            (
                "steps[0].input.url",
                "unknown name 'inptu' in '{{ inptu.doc }}' (expressions read input, steps, run, item)",
            )
        ],
    ),
    (
        "params outside a template",
        step(0, input={"url": "{{ params.url }}"}),
        [
            (
                "steps[0].input.url",
                "unknown name 'params' in '{{ params.url }}' (expressions read input, steps, run, item)",
            )
        ],
    ),
    # references
    (
        "reads a descendant",
        step(1, input={"text": "{{ steps.c.output }}"}),
        [("steps[1].input.text", f"references step 'c' which is not an ancestor of 'b' {NOT_ANCESTOR}")],
    ),
    (
        "reads a sibling",
        lambda d: d["steps"].append(
            {"id": "d", "type": "transform", "depends_on": ["a"], "input": {"t": "{{ steps.b.output }}"}}
        ),
        [("steps[3].input.t", f"references step 'b' which is not an ancestor of 'd' {NOT_ANCESTOR}")],
    ),
    (
        "reads itself",
        step(1, input={"text": "{{ steps.b.output }}"}),
        [("steps[1].input.text", "step 'b' references its own output")],
    ),
    (
        "reads an unknown step",
        step(1, input={"text": "{{ steps.zz.output }}"}),
        [("steps[1].input.text", "references unknown step 'zz'")],
    ),
    (
        "when reads a non-ancestor",
        lambda d: step(1, when="{{ steps.c.status == 'succeeded' }}")(d),
        [("steps[1].when", f"references step 'c' which is not an ancestor of 'b' {NOT_ANCESTOR}")],
    ),
    (
        "key reads a non-ancestor",
        step(0, concurrency={"key": "{{ steps.b.output }}", "limit": 1}),
        [("steps[0].concurrency.key", f"references step 'b' which is not an ancestor of 'a' {NOT_ANCESTOR}")],
    ),
    (
        "for_each reads a non-ancestor",
        step(0, for_each="{{ steps.c.output }}"),
        [("steps[0].for_each", f"references step 'c' which is not an ancestor of 'a' {NOT_ANCESTOR}")],
    ),
    (
        "output reads an unknown step",
        top(output={"x": "{{ steps.zz.output }}"}),
        [("output.x", "references unknown step 'zz'")],
    ),
    # item and for_each
    (
        "item outside for_each",
        step(2, input={"x": "{{ item }}"}),
        [("steps[2].input.x", "'item' is only available in steps with for_each")],
    ),
    (
        "item in for_each itself",
        step(2, for_each="{{ item.list }}"),
        [("steps[2].for_each", "'item' is not available in for_each itself: it is each element of its list")],
    ),
    (
        "item in when",
        step(2, for_each="{{ input.xs }}", when="{{ item.ok }}"),
        [("steps[2].when", "'item' is not available in when: it is checked once per step")],
    ),
    (
        "item in output",
        top(output={"x": "{{ item }}"}),
        [("output.x", "'item' is only available in steps with for_each")],
    ),
    (
        "for_each not an expression",
        step(2, for_each="input.items"),
        [
            (
                "steps[2].for_each",
                "for_each must be exactly one '{{ expr }}' expression giving a list, e.g. \"{{ input.items }}\"",
            )
        ],
    ),
    (
        "for_each interpolated",
        step(2, for_each="{{ input.a }},{{ input.b }}"),
        [
            (
                "steps[2].for_each",
                "for_each must be exactly one '{{ expr }}' expression giving a list, e.g. \"{{ input.items }}\"",
            )
        ],
    ),
    (
        "for_each a literal list",
        step(2, for_each=[1, 2]),
        [
            (
                "steps[2].for_each",
                "for_each must be exactly one '{{ expr }}' expression giving a list, e.g. \"{{ input.items }}\"",
            )
        ],
    ),
    (
        "when not an expression",
        step(2, when="steps.b.output.ok"),
        [("steps[2].when", "when must be exactly one '{{ expr }}' expression, e.g. \"{{ steps.check.output.ok }}\"")],
    ),
    (
        "max_concurrency too low",
        step(2, for_each="{{ input.xs }}", max_concurrency=0),
        [("steps[2].max_concurrency", "max_concurrency must be between 1 and 1000 (got 0)")],
    ),
    (
        "max_concurrency too high",
        step(2, for_each="{{ input.xs }}", max_concurrency=1001),
        [("steps[2].max_concurrency", "max_concurrency must be between 1 and 1000 (got 1001)")],
    ),
    (
        "max_concurrency without for_each",
        step(2, max_concurrency=3),
        [("steps[2].max_concurrency", "max_concurrency applies only to steps with for_each")],
    ),
    # retry
    (
        "max_retries too high",
        step(1, retry={"max_retries": 11}),
        [("steps[1].retry.max_retries", "retry.max_retries must be between 0 and 10 (got 11)")],
    ),
    (
        "max_retries negative",
        step(1, retry={"max_retries": -1}),
        [("steps[1].retry.max_retries", "retry.max_retries must be between 0 and 10 (got -1)")],
    ),
    (
        "initial delay too short",
        step(1, retry={"initial_delay_ms": 99}),
        [("steps[1].retry.initial_delay_ms", "retry.initial_delay_ms must be >= 100 (got 99)")],
    ),
    (
        "max delay below initial",
        step(1, retry={"initial_delay_ms": 1000, "max_delay_ms": 500}),
        [("steps[1].retry.max_delay_ms", "max_delay_ms must be >= initial_delay_ms (1000) (got 500)")],
    ),
    (
        "backoff below one",
        step(1, retry={"backoff_multiplier": 0.9}),
        [("steps[1].retry.backoff_multiplier", "backoff_multiplier must be a number >= 1 (got 0.9)")],
    ),
    (
        "backoff not a number",
        step(1, retry={"backoff_multiplier": "2x"}),
        [("steps[1].retry.backoff_multiplier", "backoff_multiplier must be a number >= 1 (got '2x')")],
    ),
    (
        "jitter not a bool",
        step(1, retry={"jitter": "yes"}),
        [("steps[1].retry.jitter", "jitter must be true or false (got 'yes')")],
    ),
    (
        "retryable status out of range",
        step(1, retry={"non_retryable_status": [404, 302]}),
        [
            (
                "steps[1].retry.non_retryable_status[1]",
                "retry.non_retryable_status[1] must be between 400 and 599 (got 302)",
            )
        ],
    ),
    (
        "statuses not a list",
        step(1, retry={"non_retryable_status": 404}),
        [("steps[1].retry.non_retryable_status", "non_retryable_status must be a list of HTTP statuses")],
    ),
    (
        "unknown retry field",
        step(1, retry={"max_retry": 2}),
        [("steps[1].retry.max_retry", "unknown field 'max_retry' (did you mean 'max_retries'?)")],
    ),
    ("retry not an object", step(1, retry=3), [("steps[1].retry", "retry must be an object")]),
    # timeouts, policies
    (
        "timeout zero",
        step(1, timeout_ms=0),
        [("steps[1].timeout_ms", "timeout_ms must be between 1 and 86400000 (got 0)")],
    ),
    (
        "timeout over a day",
        step(1, timeout_ms=86_400_001),
        [("steps[1].timeout_ms", "timeout_ms must be between 1 and 86400000 (got 86400001)")],
    ),
    (
        "timeout not an integer",
        step(1, timeout_ms="fast"),
        [("steps[1].timeout_ms", "timeout_ms must be an integer (got 'fast')")],
    ),
    ("timeout a bool", step(1, timeout_ms=True), [("steps[1].timeout_ms", "timeout_ms must be an integer (got True)")]),
    (
        "total below one attempt",
        step(1, timeout_ms=20000, total_timeout_ms=10000),
        [("steps[1].total_timeout_ms", "total_timeout_ms must be >= timeout_ms (20000) (got 10000)")],
    ),
    (
        "queue timeout zero",
        step(1, queue_timeout_ms=0),
        [("steps[1].queue_timeout_ms", "queue_timeout_ms must be >= 1 (got 0)")],
    ),
    (
        "on_exhausted unknown",
        step(1, on_exhausted="retry"),
        [("steps[1].on_exhausted", "on_exhausted must be 'fail' or 'pause' (got 'retry')")],
    ),
    ("priority too high", step(1, priority=10), [("steps[1].priority", "priority must be between 0 and 9 (got 10)")]),
    ("priority negative", step(1, priority=-1), [("steps[1].priority", "priority must be between 0 and 9 (got -1)")]),
    (
        "concurrency limit zero",
        step(1, concurrency={"key": "{{ input.customer }}", "limit": 0}),
        [("steps[1].concurrency.limit", "concurrency.limit must be >= 1 (got 0)")],
    ),
    (
        "concurrency without key",
        step(1, concurrency={"limit": 2}),
        [("steps[1].concurrency.key", 'concurrency.key is required, e.g. "{{ input.customer }}"')],
    ),
    (
        "concurrency without limit",
        step(1, concurrency={"key": "{{ input.customer }}"}),
        [("steps[1].concurrency.limit", "concurrency.limit is required (>= 1)")],
    ),
    (
        "concurrency not an object",
        step(1, concurrency=2),
        [("steps[1].concurrency", "concurrency must be an object with key and limit")],
    ),
]


@pytest.mark.parametrize(
    ("edit", "expected"), [pytest.param(edit, expected, id=name) for name, edit, expected in CASES]
)
def test_each_problem_is_reported_at_its_exact_field(
    edit: Callable[[dict[str, Any]], object], expected: list[tuple[str, str]]
) -> None:
    assert check(edited(edit)) == expected


def test_more_than_500_steps_are_refused() -> None:
    steps = [{"id": f"s{i}", "type": "transform"} for i in range(501)]

    report = validate_definition({"name": "big", "steps": steps}, agent_lookup=None)

    assert [(e.field, e.message) for e in report.errors] == [
        ("steps", "a workflow may have at most 500 steps (got 501)")
    ]
    assert report.plan == []


def test_every_problem_is_reported_at_once_in_document_order() -> None:
    filler: list[dict[str, Any]] = [{"id": f"f{i}", "type": "transform"} for i in range(4, 10)]
    definition: dict[str, Any] = {
        "name": "",
        "steps": [
            {"id": "a", "agent": "ghost", "input": {"x": "{{ steps.b.output }}"}},
            {
                "id": "b",
                "type": "http",
                "depends_on": ["a", "zz"],
                "config": {"url": "https://x"},
                "priority": 12,
                "input": {"y": "{{ steps.a.output. }}"},
            },
            {"id": "a", "type": "delay", "config": {"duration_ms": 0}},
            {"id": "d", "type": "transform", "depends_on": ["b"], "retry": {"max_retries": 99}, "when": "{{ item }}"},
            *filler,
            {"id": "e", "type": "transform", "depends_on": ["e"]},
        ],
        "output": {"x": "{{ steps.nope.output }}"},
    }

    assert check(definition) == [
        ("name", "name is required"),
        ("output.x", "references unknown step 'nope'"),
        ("steps[0].agent", "unknown agent 'ghost'"),
        ("steps[0].input.x", f"references step 'b' which is not an ancestor of 'a' {NOT_ANCESTOR}"),
        ("steps[1].depends_on[1]", "depends on unknown step 'zz'"),
        ("steps[1].input.y", "invalid expression '{{ steps.a.output. }}' at column 19: incomplete expression"),
        ("steps[1].priority", "priority must be between 0 and 9 (got 12)"),
        ("steps[2].config.duration_ms", "0 is less than the minimum of 1"),
        ("steps[2].id", "duplicate step id 'a' (also steps[0])"),
        ("steps[3].retry.max_retries", "retry.max_retries must be between 0 and 10 (got 99)"),
        ("steps[3].when", "'item' is only available in steps with for_each"),
        # steps[10] sorts after steps[3], not between steps[1] and steps[2].
        ("steps[10].depends_on[0]", "step 'e' depends on itself"),
    ]


def test_separate_cycles_are_each_named() -> None:
    definition = base()
    definition["steps"][0]["depends_on"] = ["b"]
    definition["steps"] += [
        {"id": "x", "type": "transform", "depends_on": ["y"]},
        {"id": "y", "type": "transform", "depends_on": ["x"]},
    ]

    assert check(definition) == [
        ("steps[0].depends_on", "cycle: a -> b -> a (each step depends on the next)"),
        ("steps[3].depends_on", "cycle: x -> y -> x (each step depends on the next)"),
    ]


def test_the_plan_is_given_when_only_non_graph_fields_are_wrong() -> None:
    definition = base()
    definition["name"] = ""
    definition["steps"][2]["priority"] = 99

    report = validate_definition(definition, agent_lookup=lookup)

    assert not report.valid
    assert report.plan == [["a"], ["b"], ["c"]]


def test_the_agent_lookup_is_called_once_with_the_agent_names() -> None:
    calls: list[set[str]] = []

    def recording_lookup(names: set[str]) -> Mapping[str, str]:
        calls.append(set(names))
        return lookup(names)

    validate_definition(copy.deepcopy(API_EXAMPLE), agent_lookup=recording_lookup)
    validate_definition({"name": "t", "steps": [{"id": "t", "type": "transform"}]}, agent_lookup=recording_lookup)

    assert calls == [{"fetcher", "summarizer", "classifier"}]
    assert referenced_agents(API_EXAMPLE) == {"fetcher", "summarizer", "classifier"}


def test_without_a_lookup_agents_are_not_checked() -> None:
    definition = edited(step(0, agent="ghost"))

    assert validate_definition(definition, agent_lookup=None).errors == []


def test_a_non_object_definition_is_refused() -> None:
    report = validate_definition([], agent_lookup=None)  # type: ignore[arg-type]

    assert report.errors == [FieldViolation("", "a workflow definition must be a JSON object")]


def test_raise_if_invalid_raises_the_422_error_with_every_violation() -> None:
    report = validate_definition(edited(top(name=None, tags="x")), agent_lookup=lookup)

    with pytest.raises(ValidationError) as caught:
        report.raise_if_invalid()

    assert caught.value.violations == report.errors
    assert len(caught.value.violations) == 2
    validate_definition(base(), agent_lookup=lookup).raise_if_invalid()


def test_field_names_match_the_protos() -> None:
    def names(message: Any) -> set[str]:
        return {field.name for field in message.DESCRIPTOR.fields}

    assert names(workflow_pb2.Workflow) == WORKFLOW_FIELDS
    assert names(workflow_pb2.Step) == STEP_FIELDS
    assert names(agent_pb2.RetryPolicy) == RETRY_FIELDS
    assert names(workflow_pb2.ConcurrencyLimit) == CONCURRENCY_FIELDS


# --- run input ---------------------------------------------------------------------------------

SCHEMA = API_EXAMPLE["input_schema"]


@pytest.mark.parametrize(
    ("schema", "run_input", "expected"),
    [
        (SCHEMA, {"doc": "https://example.com"}, []),
        (SCHEMA, {}, [("input.doc", "'doc' is required")]),
        (SCHEMA, {"doc": 5}, [("input.doc", "5 is not of type 'string'")]),
        (SCHEMA, "doc", [("input", "'doc' is not of type 'object'")]),
        (
            {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"}}}},
            {"items": [1, "two", 3]},
            [("input.items[1]", "'two' is not of type 'integer'")],
        ),
        (
            {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}},
            {"at": "yesterday"},
            [("input.at", "'yesterday' is not a 'date-time'")],
        ),
        (None, {"anything": 1}, []),
        ({}, 42, []),
    ],
)
def test_run_input_is_checked_against_the_input_schema(
    schema: Mapping[str, Any] | None, run_input: Any, expected: list[tuple[str, str]]
) -> None:
    assert [(v.field, v.message) for v in validate_run_input(schema, run_input)] == expected
