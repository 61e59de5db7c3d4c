"""Pure parts of the engine: snapshot parsing, retry policies, expressions."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from execution_svc.domain.definition import OnExhausted, RetryOverrides, RetryPolicy, StepType, parse_workflow
from execution_svc.domain.expressions import ExpressionError, SharedExpressions
from flowforge_common.errors import ValidationError


def snapshot(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "wf", "name": "n", "version": 2, "steps": list(steps), **extra}


def test_steps_come_out_in_a_stable_topological_order() -> None:
    definition = parse_workflow(
        snapshot(
            {"id": "d", "type": "transform", "depends_on": ["b", "c"]},
            {"id": "b", "agent": "x", "depends_on": ["a"]},
            {"id": "a", "type": "http"},
            {"id": "c", "type": "STEP_TYPE_TRANSFORM", "depends_on": ["a"], "on_exhausted": "ON_EXHAUSTED_PAUSE"},
        )
    )
    assert [s.id for s in definition.steps] == ["a", "b", "c", "d"]
    assert definition.step("b").type is StepType.AGENT
    assert definition.step("c").on_exhausted is OnExhausted.PAUSE
    assert definition.downstream("a") == ["b", "c", "d"]
    assert definition.downstream("d") == []


@pytest.mark.parametrize(
    ("steps", "field", "message"),
    [
        ([{"id": "a", "type": "transform"}, {"id": "a", "type": "transform"}], "steps[1].id", "duplicate"),
        ([{"id": "a", "type": "transform", "depends_on": ["zz"]}], "steps[0].depends_on", "unknown step"),
        ([{"id": "a", "type": "teleport"}], "steps[0].type", "unknown step type"),
        ([{"id": "a"}], "steps[0].type", "required"),
        ([{"id": "a", "type": "transform", "priority": 12}], "steps[0].priority", "between 0 and 9"),
        (
            [{"id": "a", "type": "transform", "retry": {"backoff_multiplier": 0.5}}],
            "steps[0].retry.backoff_multiplier",
            ">= 1",
        ),
        (
            [
                {"id": "a", "type": "transform", "depends_on": ["b"]},
                {"id": "b", "type": "transform", "depends_on": ["a"]},
            ],
            "steps",
            "cycle among: a, b",
        ),
    ],
)
def test_unschedulable_definitions_name_the_field(steps: list[dict[str, Any]], field: str, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_workflow(snapshot(*steps))
    assert error.value.violations[0].field == field
    assert message in error.value.violations[0].message


def test_step_policies_override_agent_defaults_field_by_field() -> None:
    agent = RetryOverrides(max_retries=1, initial_delay_ms=500)
    step = RetryOverrides(initial_delay_ms=50, non_retryable_status=frozenset({409}))
    policy = step.over(agent.over(RetryPolicy()))
    assert policy == RetryPolicy(
        max_retries=1,
        initial_delay_ms=50,
        max_delay_ms=30_000,
        backoff_multiplier=2.0,
        non_retryable_status=frozenset({409}),
    )


def test_backoff_without_jitter_is_exponential_and_capped() -> None:
    policy = RetryPolicy(initial_delay_ms=100, max_delay_ms=1000, backoff_multiplier=3, jitter=False)
    assert [policy.delay_ms(n, random.Random()) for n in range(1, 5)] == [100, 300, 900, 1000]


@given(retry=st.integers(1, 20), seed=st.integers(0, 2**32))
def test_full_jitter_stays_within_the_exponential_ceiling(retry: int, seed: int) -> None:
    policy = RetryPolicy(initial_delay_ms=100, max_delay_ms=5000, backoff_multiplier=2.0, jitter=True)
    ceiling = min(5000, 100 * 2 ** (retry - 1))
    assert 0 <= policy.delay_ms(retry, random.Random(seed)) <= ceiling


def test_full_jitter_spreads_delays() -> None:
    policy = RetryPolicy(initial_delay_ms=1000, jitter=True)
    delays = {policy.delay_ms(3, random.Random(seed)) for seed in range(50)}
    assert len(delays) > 40 and max(delays) <= 4000


EXPRESSIONS = SharedExpressions()
CONTEXT = {"input": {"doc": "d.pdf", "n": 3, "tags": ["a", "b"]}, "steps": {"s": {"output": {"ok": True}}}}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ input.n }}", 3),
        ("{{input.tags}}", ["a", "b"]),
        ("{{ steps.s.output }}", {"ok": True}),
        (" {{ steps.s.output }}", ' {"ok":true}'),  # not exactly a placeholder: text
        ("file {{ input.doc }} has {{ input.n }} pages", "file d.pdf has 3 pages"),
        ("tags: {{ input.tags }}", 'tags: ["a","b"]'),
        ("missing: {{ input.nope }}", "missing: null"),
        ({"k": ["{{ input.n }}", "lit"]}, {"k": [3, "lit"]}),
        ("plain", "plain"),
        (42, 42),
    ],
)
def test_rendering_follows_the_api_rules(template: Any, expected: Any) -> None:
    assert EXPRESSIONS.render(template, CONTEXT) == expected


def test_conditions_and_lists() -> None:
    assert EXPRESSIONS.condition("{{ input.doc == 'd.pdf' }}", CONTEXT) is True
    assert EXPRESSIONS.condition("{{ input.nope }}", CONTEXT) is False
    assert EXPRESSIONS.values("{{ input.tags }}", CONTEXT) == ["a", "b"]
    with pytest.raises(ExpressionError):
        EXPRESSIONS.render("{{ input.[ }}", CONTEXT)
