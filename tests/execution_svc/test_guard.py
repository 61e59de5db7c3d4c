"""The per-agent circuit breaker and concurrency cap: pure logic on a manual clock, then over
real HTTP against the test agent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from execution_svc.domain.definition import StepType
from execution_svc.domain.ports import AgentEndpoint, StepCall, StepFailed, StepSucceeded
from execution_svc.executors.directory import InMemoryAgentDirectory
from execution_svc.executors.guard import AgentGuard, CircuitOpenError, CircuitState, GuardConfig
from execution_svc.executors.http import HttpStepExecutor
from tests.fixtures.test_agent import TestAgent

KEY = ("ten_x", "agent")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def call_once(guard: AgentGuard, *, success: bool, blames_agent: bool = True) -> None:
    guard.admit(KEY)
    guard.record(KEY, success=success, blames_agent=blames_agent, seconds=0.01)


def test_consecutive_failures_open_the_circuit_then_one_trial_decides() -> None:
    clock = Clock()
    guard = AgentGuard(GuardConfig(failure_threshold=3, open_seconds=10), clock=clock)
    for _ in range(2):
        call_once(guard, success=False)
    assert guard.runtime(KEY).circuit is CircuitState.CLOSED
    call_once(guard, success=False)
    assert guard.runtime(KEY).circuit is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as refused:
        guard.admit(KEY)
    assert refused.value.retry_after_seconds == pytest.approx(10)

    clock.now += 10
    assert guard.runtime(KEY).circuit is CircuitState.HALF_OPEN
    guard.admit(KEY)  # the trial
    with pytest.raises(CircuitOpenError):
        guard.admit(KEY)  # one trial at a time
    guard.record(KEY, success=False, blames_agent=True, seconds=0.01)
    assert guard.runtime(KEY).circuit is CircuitState.OPEN  # a failed trial reopens at once

    clock.now += 10
    call_once(guard, success=True)
    assert guard.runtime(KEY).circuit is CircuitState.CLOSED


def test_failures_that_do_not_blame_the_agent_leave_it_closed() -> None:
    guard = AgentGuard(GuardConfig(failure_threshold=2), clock=Clock())
    for _ in range(10):
        call_once(guard, success=False, blames_agent=False)  # 4xx: the request's fault
    assert guard.runtime(KEY).circuit is CircuitState.CLOSED
    call_once(guard, success=False)
    call_once(guard, success=True)  # a success resets the count
    call_once(guard, success=False)
    assert guard.runtime(KEY).circuit is CircuitState.CLOSED


@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.floats(0, 20)), max_size=60))
def test_the_breaker_never_calls_an_open_agent_and_counts_calls_in_flight(
    steps: list[tuple[bool, bool, float]],
) -> None:
    clock = Clock()
    config = GuardConfig(failure_threshold=3, open_seconds=5)
    guard = AgentGuard(config, clock=clock)
    failures_in_a_row = 0
    for success, blames, wait in steps:
        clock.now += wait
        before = guard.runtime(KEY)
        try:
            guard.admit(KEY)
        except CircuitOpenError:
            assert before.circuit is not CircuitState.CLOSED
            continue
        assert before.circuit is not CircuitState.OPEN
        assert guard.runtime(KEY).in_flight == 1
        guard.record(KEY, success=success, blames_agent=blames, seconds=0.001)
        assert guard.runtime(KEY).in_flight == 0
        failures_in_a_row = 0 if success else failures_in_a_row + (1 if blames else 0)
        if before.circuit is CircuitState.CLOSED and failures_in_a_row < config.failure_threshold:
            assert guard.runtime(KEY).circuit is CircuitState.CLOSED
        if not success and blames and before.circuit is CircuitState.HALF_OPEN:
            assert guard.runtime(KEY).circuit is CircuitState.OPEN
        if success and before.circuit is CircuitState.HALF_OPEN:
            assert guard.runtime(KEY).circuit is CircuitState.CLOSED


def agent_call() -> StepCall:
    values: dict[str, Any] = {
        "tenant_id": KEY[0],
        "run_id": "run_1",
        "workflow_id": "wf_1",
        "step_id": "s",
        "item_index": -1,
        "attempt": 1,
        "type": StepType.AGENT,
        "agent": KEY[1],
        "config": {},
        "input": {},
        "timeout_ms": 2000,
    }
    return StepCall(**values)


async def test_a_failing_agent_stops_being_called(test_agent: TestAgent) -> None:
    directory = InMemoryAgentDirectory()
    directory.register(KEY[0], AgentEndpoint(name=KEY[1], url=test_agent.url("/status/503"), headers={}))
    executor = HttpStepExecutor(directory, guard=AgentGuard(GuardConfig(failure_threshold=3, open_seconds=30)))
    await executor.start()
    try:
        results = [await executor.execute(agent_call()) for _ in range(5)]
    finally:
        await executor.close()
    assert [r.error.code for r in results if isinstance(r, StepFailed)] == ["AGENT_HTTP_503"] * 3 + ["CIRCUIT_OPEN"] * 2
    assert all(isinstance(r, StepFailed) and r.retryable for r in results)
    assert len(test_agent.received("/status/503")) == 3  # the open circuit made no call
    runtime = executor.guard.runtime(KEY)
    assert (runtime.circuit, runtime.recent_success_rate, runtime.in_flight) == (CircuitState.OPEN, 0.0, 0)


async def test_calls_in_flight_per_agent_are_capped(test_agent: TestAgent) -> None:
    directory = InMemoryAgentDirectory()
    directory.register(KEY[0], AgentEndpoint(name=KEY[1], url=test_agent.url("/latency", ms=100), headers={}))
    executor = HttpStepExecutor(directory, guard=AgentGuard(GuardConfig(max_in_flight_per_agent=2)))
    await executor.start()
    try:
        results = await asyncio.gather(*[executor.execute(agent_call()) for _ in range(6)])
    finally:
        await executor.close()
    assert all(isinstance(r, StepSucceeded) for r in results)
    assert test_agent.max_in_flight["/latency"] == 2
