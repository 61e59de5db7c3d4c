"""The expression language of workflows: parsing, evaluation, references, errors."""

from __future__ import annotations

import json
from typing import Any

import jmespath
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowforge_common.expressions import (
    ExpressionError,
    ExpressionEvaluationError,
    compile_template,
    evaluate_condition,
    find_expressions,
    is_truthy,
    runtime_context,
    template_errors,
)

CONTEXT: dict[str, Any] = {
    "input": {"doc": "https://example.com/d", "n": 3, "tags": ["a", "b"], "customer": "acme"},
    "steps": {
        "fetch": {"output": {"body": "text", "size": 12}, "status": "succeeded"},
        "classify": {"output": {"label": "urgent"}, "status": "succeeded"},
        "with-dash": {"output": 7, "status": "succeeded"},
    },
    "run": {"id": "run_1", "workflow_id": "wf_1"},
}

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Text that cannot open a placeholder, nor glue to one.
plain_text = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=20)


def literal_strings_without_placeholders(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" not in value
    if isinstance(value, dict):
        return all(literal_strings_without_placeholders(item) for item in value.values())
    if isinstance(value, list):
        return all(literal_strings_without_placeholders(item) for item in value)
    return True


# --- the three kinds of strings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ input.n }}", 3),
        ("{{ input.tags }}", ["a", "b"]),
        ("{{ steps.fetch.output }}", {"body": "text", "size": 12}),
        ("{{ input.missing }}", None),
        ("{{ `true` }}", True),
        ("{{input.doc}}", "https://example.com/d"),
        ("{{ steps.classify.output.label == 'urgent' }}", True),
        ("{{ steps.classify.output.label == 'later' }}", False),
        ('{{ steps."with-dash".output }}', 7),
        ("{{ {a: {b: input.n}} }}", {"a": {"b": 3}}),
        ("{{ '}}' }}", "}}"),
        ("{{ '{{' }}", "{{"),
        ("{{ length(input.tags) }}", 2),
    ],
)
def test_an_exact_placeholder_keeps_the_type_of_its_value(template: str, expected: Any) -> None:
    compiled = compile_template(template)

    assert compiled.is_expression
    assert compiled.evaluate(CONTEXT) == expected
    assert type(compiled.evaluate(CONTEXT)) is type(expected)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("n={{ input.n }}", "n=3"),
        ("{{ input.customer }}/{{ run.id }}", "acme/run_1"),
        ("tags: {{ input.tags }}", 'tags: ["a","b"]'),
        ("body={{ steps.fetch.output }}", 'body={"body":"text","size":12}'),
        ("missing={{ input.missing }}", "missing=null"),
        (" {{ input.n }}", " 3"),
        ('{{ `{"a": "é"}` }}!', '{"a":"é"}!'),
    ],
)
def test_placeholders_inside_longer_text_are_interpolated_as_json_text(template: str, expected: str) -> None:
    compiled = compile_template(template)

    assert not compiled.is_expression
    assert compiled.evaluate(CONTEXT) == expected


def test_dicts_and_lists_are_walked_and_not_changed() -> None:
    template = {"url": "{{ input.doc }}", "items": ["{{ input.n }}", 4, {"x": "n={{ input.n }}"}], "k": None}
    compiled = compile_template(template)

    assert compiled.evaluate(CONTEXT) == {"url": "https://example.com/d", "items": [3, 4, {"x": "n=3"}], "k": None}
    assert template == {"url": "{{ input.doc }}", "items": ["{{ input.n }}", 4, {"x": "n={{ input.n }}"}], "k": None}


@given(json_values.filter(literal_strings_without_placeholders))
def test_values_without_placeholders_round_trip_unchanged(value: Any) -> None:
    compiled = compile_template(value)

    assert not compiled.has_expressions
    assert compiled.evaluate(CONTEXT) == value
    assert template_errors(value) == []
    assert find_expressions(value) == []


@given(json_values)
def test_an_exact_placeholder_returns_any_json_value_as_is(value: Any) -> None:
    assert compile_template("{{ input.value }}").evaluate({"input": {"value": value}}) == value


@given(plain_text, json_values, plain_text)
def test_interpolation_puts_strings_as_is_and_other_values_as_json(prefix: str, value: Any, suffix: str) -> None:
    template = prefix + "{{ input.value }}" + suffix + "!"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    assert compile_template(template).evaluate({"input": {"value": value}}) == prefix + text + suffix + "!"


# --- what an expression reads ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "references"),
    [
        ("{{ steps.fetch.output.body }}", {"fetch"}),
        ('{{ steps."with-dash".output }}', {"with-dash"}),
        ("{{ steps.a.output || steps.b.output }}", {"a", "b"}),
        ("{{ length(steps.a.output) > `2` && steps.b.status == 'succeeded' }}", {"a", "b"}),
        ("{{ steps.a.output[0].x }}", {"a"}),
        ("{{ steps.a.output.items[*].id }}", {"a"}),
        ("{{ {x: steps.a.output, y: [steps.b.output]} }}", {"a", "b"}),
        ("{{ steps | a.output }}", {"a"}),
        ("{{ @.steps.a.output }}", {"a"}),
        # Inside projections, filters and &expr, `steps` is a field of each element.
        ("{{ input.items[?steps.x].y }}", set()),
        ("{{ sort_by(input.items, &steps.a) }}", set()),
        ("{{ input.items[*].steps.a }}", set()),
        ("{{ input.steps.a }}", set()),
        ("{{ steps }}", set()),
        ("{{ steps.*.output }}", set()),
        ("a {{ steps.a.output }} b {{ steps.b.output }}", {"a", "b"}),
        ({"x": ["{{ steps.a.output }}"], "y": "{{ steps.b.output }}"}, {"a", "b"}),
        ("no placeholders: steps.a.output", set()),
    ],
)
def test_references_are_the_step_ids_read_through_steps(template: Any, references: set[str]) -> None:
    assert compile_template(template).references() == references


def test_roots_and_keys_name_the_context_variables_read() -> None:
    compiled = compile_template({"a": "{{ input.doc }}", "b": "{{ item.x }} {{ params.team }}", "c": "{{ @ }}"})

    assert compiled.roots() == {"input", "item", "params"}
    assert compiled.keys_of("params") == {"team"}
    assert compiled.keys_of("input") == {"doc"}


def test_expressions_lists_every_placeholder_with_its_path() -> None:
    compiled = compile_template({"a": "{{ input.x }}", "b": [1, "{{ input.y }}-{{ input.z }}"], "X-Id": "{{ run.id }}"})

    assert [(path, e.source) for path, e in compiled.expressions("steps[1].input")] == [
        ("steps[1].input.a", "input.x"),
        ("steps[1].input.b[1]", "input.y"),
        ("steps[1].input.b[1]", "input.z"),
        ('steps[1].input["X-Id"]', "run.id"),
    ]


def test_find_expressions_lists_placeholders_without_parsing_them() -> None:
    value = {"ok": "{{ input.x }}", "bad": ["{{ input. }}", "{{ a }} and {{ b }}"], "open": "{{ unterminated"}

    assert find_expressions(value) == [("ok", "input.x"), ("bad[0]", "input."), ("bad[1]", "a"), ("bad[1]", "b")]
    assert find_expressions(value, "output") == [
        ("output.ok", "input.x"),
        ("output.bad[0]", "input."),
        ("output.bad[1]", "a"),
        ("output.bad[1]", "b"),
    ]


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "column", "message"),
    [
        ("{{ steps.a. }}", 12, "invalid expression '{{ steps.a. }}' at column 12: incomplete expression"),
        ("text {{ a ! b }}", 11, "invalid expression '{{ a ! b }}' at column 11: unexpected '!'"),
        ("{{ 'abc }}", 4, 'invalid expression "{{ \'abc }}" at column 4: unclosed \' delimiter ("\'abc")'),
        ("{{ }}", 4, "invalid expression '{{ }}' at column 4: empty expression"),
        ("ab {{ input.x", 4, "invalid expression '{{ input.x' at column 4: '{{' is not closed by '}}'"),
        ("{{ lenght(input) }}", 4, "invalid expression '{{ lenght(input) }}' at column 4: unknown function lenght()"),
        (
            "{{ length(input, run) }}",
            4,
            "invalid expression '{{ length(input, run) }}' at column 4: length() takes 1 argument (2 given)",
        ),
        ("{{ input[?x }}", 12, "invalid expression '{{ input[?x }}' at column 12: incomplete expression"),
    ],
)
def test_syntax_errors_give_the_column_and_the_offending_text(template: str, column: int, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_template(template)

    assert caught.value.column == column
    assert str(caught.value) == message
    assert caught.value.path == ""


def test_compile_raises_the_first_error_with_its_path() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_template({"a": "fine", "b": [1, "x {{ input. }}"]})

    assert caught.value.path == "b[1]"
    assert caught.value.column == len("x {{ input.") + 1


def test_template_errors_reports_every_bad_placeholder() -> None:
    errors = template_errors({"a": "{{ x. }}", "b": ["{{ y ! }}", "{{ ok }}"], "c": "{{ }}"}, "steps[0].input")

    assert [(error.path, error.reason) for error in errors] == [
        ("steps[0].input.a", "incomplete expression"),
        ("steps[0].input.b[0]", "unexpected '!'"),
        ("steps[0].input.c", "empty expression"),
    ]


def test_a_failing_evaluation_raises_an_evaluation_error() -> None:
    with pytest.raises(ExpressionEvaluationError, match=r"expression '\{\{ length\(input.none\) \}\}' failed"):
        compile_template("{{ length(input.none) }}").evaluate(CONTEXT)


def test_expressions_cannot_run_code() -> None:
    # JMESPath has no attribute access on Python objects nor any eval: these are just misses.
    assert compile_template("{{ __class__ }}").evaluate(CONTEXT) is None
    with pytest.raises(ExpressionError):
        compile_template("{{ __import__('os').system('true') }}")


# --- conditions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (None, False),
        (False, False),
        ("", False),
        ([], False),
        ({}, False),
        (True, True),
        (0, True),
        (0.0, True),
        ("false", True),
        ([0], True),
        ({"a": None}, True),
    ],
)
def test_truthiness_follows_jmespath(value: Any, truthy: bool) -> None:
    assert is_truthy(value) is truthy
    assert evaluate_condition("{{ input.value }}", {"input": {"value": value}}) is truthy


def test_the_api_example_condition_evaluates_both_ways() -> None:
    condition = "{{ steps.classify.output.label == 'urgent' }}"

    assert evaluate_condition(condition, CONTEXT)
    assert not evaluate_condition(condition, {"steps": {"classify": {"output": {"label": "normal"}}}})
    assert evaluate_condition(compile_template(condition), CONTEXT)


def test_an_absent_condition_holds() -> None:
    assert evaluate_condition(None, {})
    assert evaluate_condition("", {})


# --- substitution and context ------------------------------------------------------------------


def test_substitute_evaluates_only_placeholders_reading_the_given_names() -> None:
    template = {
        "agent": "{{ params.agent }}",
        "limit": "{{ params.limit }}",
        "title": "Report {{ params.team }} for {{ input.day }}",
        "mixed": "{{ merge(input, params) }}",
        "whole": "{{ @ }}",
        "runtime": ["{{ steps.a.output }}", "{{ item }}"],
    }

    result = compile_template(template).substitute(
        {"params": {"agent": "a1", "limit": 5, "team": "ops"}}, names={"params"}
    )

    assert result == {
        "agent": "a1",
        "limit": 5,
        "title": "Report ops for {{ input.day }}",
        "mixed": "{{ merge(input, params) }}",
        "whole": "{{ @ }}",
        "runtime": ["{{ steps.a.output }}", "{{ item }}"],
    }


def test_runtime_context_has_item_only_inside_for_each() -> None:
    steps = {"a": {"output": 1, "status": "succeeded"}}
    run = {"id": "r", "workflow_id": "w"}

    assert runtime_context(input={"x": 1}, steps=steps, run=run) == {"input": {"x": 1}, "steps": steps, "run": run}
    assert runtime_context(input=None, steps={}, run=run, item=4, in_for_each=True)["item"] == 4


def test_each_distinct_string_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_compile = jmespath.compile

    def counting_compile(source: str) -> Any:
        calls.append(source)
        return real_compile(source)

    monkeypatch.setattr(jmespath, "compile", counting_compile)
    template = {"a": "{{ input.parsed_once_marker }}", "b": "{{ input.parsed_once_marker }}"}

    for _ in range(3):
        compile_template(template).evaluate({"input": {"parsed_once_marker": 1}})

    assert calls == ["input.parsed_once_marker"]
