"""The HTTP executors against the test agent over real HTTP (no database)."""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from execution_svc.domain.definition import RetryOverrides, StepType
from execution_svc.domain.ports import AgentEndpoint, StepCall, StepFailed, StepSucceeded
from execution_svc.executors.directory import InMemoryAgentDirectory
from execution_svc.executors.http import HttpStepExecutor, parse_retry_after
from flowforge_common.netpolicy import AgentNetworkMode
from tests.fixtures.test_agent import TestAgent

TENANT = "ten_x"


@pytest.fixture
async def executor() -> AsyncIterator[tuple[HttpStepExecutor, InMemoryAgentDirectory]]:
    directory = InMemoryAgentDirectory()
    executor = HttpStepExecutor(directory, max_output_bytes=10_000)
    await executor.start()
    yield executor, directory
    await executor.close()


def call(agent: str | None = "a", *, type: StepType = StepType.AGENT, **changes: Any) -> StepCall:
    values: dict[str, Any] = {
        "tenant_id": TENANT,
        "run_id": "run_1",
        "workflow_id": "wf_1",
        "step_id": "s",
        "item_index": -1,
        "attempt": 2,
        "type": type,
        "agent": agent,
        "config": {},
        "input": {"q": 1},
        "timeout_ms": 2000,
    }
    values.update(changes)
    return StepCall(**values)


async def run_agent(
    executor: tuple[HttpStepExecutor, InMemoryAgentDirectory], url: str, **changes: Any
) -> StepSucceeded | StepFailed:
    runner, directory = executor
    directory.register(
        TENANT,
        AgentEndpoint(name="a", url=url, headers={"X-API-Key": "k1"}, retry=RetryOverrides(max_retries=7)),
    )
    return await runner.execute(call(**changes))


async def test_the_agent_protocol(executor: Any, test_agent: TestAgent) -> None:
    result = await run_agent(executor, test_agent.url("/echo"))
    assert result == StepSucceeded({"q": 1})
    [request] = test_agent.requests
    assert request.body == {"run_id": "run_1", "step_id": "s", "attempt": 2, "input": {"q": 1}}
    assert request.idempotency_key == "run_1/s"
    assert request.headers["X-API-Key"] == "k1"


async def test_items_get_their_own_idempotency_key(executor: Any, test_agent: TestAgent) -> None:
    await run_agent(executor, test_agent.url("/echo"), item_index=3)
    assert test_agent.requests[0].idempotency_key == "run_1/s/3"
    assert test_agent.requests[0].body["index"] == 3


@pytest.mark.parametrize(
    ("path", "code", "retryable"),
    [
        ("/status/500", "AGENT_HTTP_500", True),
        ("/status/503", "AGENT_HTTP_503", True),
        ("/status/400", "AGENT_HTTP_400", False),
        ("/status/404", "AGENT_HTTP_404", False),
        ("/status/302", "AGENT_HTTP_302", False),
        ("/text", "AGENT_BAD_RESPONSE", False),
        ("/big?bytes=20000", "OUTPUT_TOO_LARGE", False),
    ],
)
async def test_outcomes_are_classified(
    executor: Any, test_agent: TestAgent, path: str, code: str, retryable: bool
) -> None:
    result = await run_agent(executor, test_agent.base_url + path)
    assert isinstance(result, StepFailed)
    assert (result.error.code, result.retryable) == (code, retryable)
    assert result.defaults.max_retries == 7  # the agent's policy travels with the failure


async def test_429_carries_retry_after(executor: Any, test_agent: TestAgent) -> None:
    result = await run_agent(executor, test_agent.url("/ratelimit", times=1, retry_after=3))
    assert isinstance(result, StepFailed)
    assert (result.error.code, result.retryable, result.retry_after_ms, result.status_code) == (
        "AGENT_HTTP_429",
        True,
        3000,
        429,
    )


async def test_hang_and_drip_time_out_on_the_total_deadline(executor: Any, test_agent: TestAgent) -> None:
    for url in (test_agent.url("/hang"), test_agent.url("/drip", interval_ms=20, bytes=500)):
        started = time.monotonic()
        result = await run_agent(executor, url, timeout_ms=250)
        assert isinstance(result, StepFailed)
        assert (result.error.code, result.retryable) == ("TIMEOUT", True)
        assert time.monotonic() - started < 5.0  # the drip alone would take 10 s


async def test_the_step_deadline_caps_the_attempt(executor: Any, test_agent: TestAgent) -> None:
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=200)
    started = time.monotonic()
    result = await run_agent(executor, test_agent.url("/hang"), timeout_ms=30_000, deadline_at=deadline)
    assert isinstance(result, StepFailed) and result.error.code == "TIMEOUT"
    assert time.monotonic() - started < 5.0  # the agent would hang for 60 s


async def test_connection_errors_are_retryable(executor: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await run_agent(executor, f"http://127.0.0.1:{port}/nobody")
    assert isinstance(result, StepFailed)
    assert (result.error.code, result.retryable) == ("CONNECTION_ERROR", True)


async def test_an_unknown_agent_fails_at_once(executor: Any) -> None:
    runner, _ = executor
    result = await runner.execute(call("ghost"))
    assert isinstance(result, StepFailed)
    assert (result.error.code, result.retryable) == ("AGENT_NOT_FOUND", False)


async def test_http_steps(executor: Any, test_agent: TestAgent) -> None:
    runner, _ = executor
    config = {"url": test_agent.url("/echo"), "method": "post", "headers": {"X-Trace": "t1"}}
    result = await runner.execute(call(None, type=StepType.HTTP, config=config, input={"a": 1}))
    assert result == StepSucceeded({"output": {"a": 1}})  # plain HTTP output is not unwrapped
    assert test_agent.requests[0].headers["X-Trace"] == "t1"
    assert test_agent.requests[0].idempotency_key == "run_1/s"
    text = await runner.execute(call(None, type=StepType.HTTP, config={"url": test_agent.url("/text")}))
    assert text == StepSucceeded("this is not json")
    bad = await runner.execute(call(None, type=StepType.HTTP, config={}))
    assert isinstance(bad, StepFailed) and bad.error.code == "BAD_CONFIG"
    gone = await runner.execute(call(None, type=StepType.HTTP, config={"url": test_agent.url("/status/410")}))
    assert isinstance(gone, StepFailed) and (gone.error.code, gone.retryable) == ("HTTP_410", False)


def test_retry_after_parsing() -> None:
    now = dt.datetime(2026, 1, 15, 10, 0, tzinfo=dt.UTC)
    assert parse_retry_after("2", now) == 2000
    assert parse_retry_after("Thu, 15 Jan 2026 10:00:05 GMT", now) == 5000
    assert parse_retry_after("Thu, 15 Jan 2026 09:00:00 GMT", now) == 0
    assert parse_retry_after("999999", now) == 3_600_000
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    ("network", "host", "allowed"),
    [
        (AgentNetworkMode.PUBLIC_ONLY, "127.0.0.1", False),  # an address literal: checked before connecting
        (AgentNetworkMode.PUBLIC_ONLY, "rebound.example.com", False),  # a name: checked on what it resolves to
        (AgentNetworkMode.ALLOW_PRIVATE, "metadata.example.com", False),  # metadata: refused in every mode
        (AgentNetworkMode.ALLOW_PRIVATE, "rebound.example.com", True),
        (AgentNetworkMode.ALLOW_PRIVATE, "127.0.0.1", True),
    ],
)
async def test_every_call_is_held_to_the_network_policy(
    test_agent: TestAgent, network: AgentNetworkMode, host: str, allowed: bool
) -> None:
    # The agent was registered when its name resolved elsewhere; it now resolves to loopback or
    # to the metadata address (DNS rebinding). No lookup leaves the machine.
    answers = {"rebound.example.com": ["127.0.0.1"], "metadata.example.com": ["169.254.169.254"]}

    async def resolver(name: str) -> list[str]:
        return answers[name]

    port = test_agent.base_url.rsplit(":", 1)[1]
    directory = InMemoryAgentDirectory()
    directory.register(TENANT, AgentEndpoint(name="a", url=f"http://{host}:{port}/echo", headers={}))
    runner = HttpStepExecutor(directory, network=network, resolver=resolver)
    await runner.start()
    try:
        result = await runner.execute(call())
        http_result = await runner.execute(call(None, type=StepType.HTTP, config={"url": f"http://{host}:{port}/echo"}))
    finally:
        await runner.close()
    for outcome in (result, http_result):
        if allowed:
            assert isinstance(outcome, StepSucceeded)
        else:
            assert isinstance(outcome, StepFailed) and not outcome.retryable
            assert outcome.error.code == "URL_REFUSED"
            assert "network policy" in outcome.error.message
    assert len(test_agent.requests) == (2 if allowed else 0)
