"""Runs end to end on SQLite and PostgreSQL: real workers, real HTTP against the test agent."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest

from execution_svc.domain.definition import RetryOverrides
from execution_svc.domain.models import RunFilter, RunStatus, StepStatus
from flowforge_common.errors import ConflictError, NotFoundError, ValidationError
from tests.execution_svc.conftest import FAST_WORKER, TENANT, Harness

FAST = {"initial_delay_ms": 10, "max_delay_ms": 20, "jitter": False}


def workflow(*steps: dict[str, Any], output: Any = None, **extra: Any) -> dict[str, Any]:
    """A workflow snapshot as workflow_svc would hand it over."""
    return {"id": "wf_test", "name": "test", "version": 1, "steps": list(steps), "output": output, **extra}


def step_of(run: Any, step_id: str) -> Any:
    return next(step for step in run.steps if step.step_id == step_id)


# --- the API.md example ------------------------------------------------------------------------


async def test_api_example_runs_end_to_end_with_outputs_flowing(harness: Harness) -> None:
    agent = harness.agent
    harness.register("fetcher", "/echo", headers={"Authorization": "Bearer s3cret"})
    harness.register("summarizer", "/latency", ms=150)
    harness.register("classifier", "/latency", ms=150)
    example = workflow(
        {"id": "fetch", "agent": "fetcher", "input": {"body": "{{ input.doc }}"}},
        {
            "id": "summarize",
            "agent": "summarizer",
            "depends_on": ["fetch"],
            "input": {"text": "summary of {{ steps.fetch.output.body }}"},
            "retry": {"max_retries": 5},
            "timeout_ms": 20000,
        },
        {
            "id": "classify",
            "agent": "classifier",
            "depends_on": ["fetch"],
            "input": {"label": "urgent", "text": "{{ steps.fetch.output.body }}"},
        },
        {
            "id": "notify",
            "type": "http",
            "depends_on": ["summarize", "classify"],
            "when": "{{ steps.classify.output.label == 'urgent' }}",
            "config": {"method": "POST", "url": agent.url("/echo")},
            "input": {"summary": "{{ steps.summarize.output }}"},
        },
        output={"summary": "{{ steps.summarize.output }}", "notified": "{{ steps.notify.status }}"},
        input_schema={"type": "object", "required": ["doc"], "properties": {"doc": {"type": "string"}}},
        name="summarize-and-notify",
        version=3,
    )
    await harness.start_workers(1)
    run = await harness.run(example, {"doc": "report.pdf"}, triggered_by="usr_1")
    assert run.status in (RunStatus.PENDING, RunStatus.RUNNING)
    assert (run.workflow_name, run.workflow_version, run.triggered_by) == ("summarize-and-notify", 3, "usr_1")
    run = await harness.wait(run.id)

    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.output == {"summary": {"text": "summary of report.pdf"}, "notified": "succeeded"}
    assert [s.status for s in run.steps] == [StepStatus.SUCCEEDED] * 4
    # summarize and classify ran side by side.
    assert agent.max_in_flight["/latency"] == 2
    [fetch_call] = agent.received("/echo")[:1]
    assert fetch_call.body == {"run_id": run.id, "step_id": "fetch", "attempt": 1, "input": {"body": "report.pdf"}}
    assert fetch_call.idempotency_key == f"{run.id}/fetch"
    assert fetch_call.headers["Authorization"] == "Bearer s3cret"
    notify_call = agent.received("/echo")[1]
    assert notify_call.body == {"summary": {"text": "summary of report.pdf"}}
    assert notify_call.idempotency_key == f"{run.id}/notify"
    types = await harness.event_types(run.id)
    assert types[0] == "workflow.started" and types[-1] == "workflow.completed"
    assert types.count("workflow.step.completed") == 4
    assert run.started_at is not None and run.completed_at is not None


async def test_input_is_checked_against_the_schema(harness: Harness) -> None:
    wf = workflow(
        {"id": "a", "type": "transform", "input": 1},
        input_schema={"type": "object", "required": ["doc"], "properties": {"doc": {"type": "string"}}},
    )
    with pytest.raises(ValidationError) as error:
        await harness.run(wf, {"doc": 5})
    assert error.value.violations[0].field == "input.doc"


async def test_a_definition_that_cannot_be_scheduled_is_refused(harness: Harness) -> None:
    wf = workflow(
        {"id": "a", "type": "transform", "depends_on": ["b"]}, {"id": "b", "type": "transform", "depends_on": ["a"]}
    )
    with pytest.raises(ValidationError) as error:
        await harness.run(wf, {})
    assert "cycle" in error.value.violations[0].message


# --- retries and failures -----------------------------------------------------------------------


async def test_retries_back_off_exponentially_with_the_same_idempotency_key(harness: Harness) -> None:
    harness.register("flaky", "/flaky", fail=2, status=503)
    await harness.start_workers(1)
    retry = {"max_retries": 3, "initial_delay_ms": 60, "max_delay_ms": 1000, "backoff_multiplier": 2, "jitter": False}
    run = await harness.run(
        workflow({"id": "a", "agent": "flaky", "input": {"n": 1}, "retry": retry}, output="{{ steps.a.output }}")
    )
    run = await harness.wait(run.id)

    assert run.status is RunStatus.SUCCEEDED
    assert run.output == {"n": 1}
    calls = harness.agent.received("/flaky")
    assert [c.body["attempt"] for c in calls] == [1, 2, 3]
    assert {c.idempotency_key for c in calls} == {f"{run.id}/a"}
    assert calls[1].received_at - calls[0].received_at >= 0.055
    assert calls[2].received_at - calls[1].received_at >= 0.115
    events = await harness.events(run.id)
    retrying = [e.data for e in events if e.type == "workflow.step.retrying"]
    assert [(r["attempt"], r["delay_ms"], r["error"]["code"]) for r in retrying] == [
        (1, 60, "AGENT_HTTP_503"),
        (2, 120, "AGENT_HTTP_503"),
    ]
    [step] = await harness.engine.list_steps(TENANT, run.id)
    assert [(a.attempt, a.status) for a in step.attempts] == [
        (1, StepStatus.FAILED),
        (2, StepStatus.FAILED),
        (3, StepStatus.SUCCEEDED),
    ]
    assert step.attempts[0].error is not None and step.attempts[0].error.code == "AGENT_HTTP_503"


async def test_exhausted_retries_fail_the_run(harness: Harness) -> None:
    harness.register("broken", "/status/500")
    await harness.start_workers(1)
    run = await harness.run(
        workflow(
            {"id": "a", "agent": "broken", "retry": {"max_retries": 2, **FAST}},
            {"id": "b", "type": "transform", "depends_on": ["a"]},
        )
    )
    run = await harness.wait(run.id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and (run.error.code, run.error.step_id) == ("AGENT_HTTP_500", "a")
    assert len(harness.agent.received("/status/500")) == 3
    assert [s.status for s in run.steps] == [StepStatus.FAILED, StepStatus.CANCELLED]
    types = await harness.event_types(run.id)
    assert types[-2:] == ["workflow.step.failed", "workflow.failed"]


@pytest.mark.parametrize("path", ["/status/404", "/status/422"])
async def test_a_4xx_fails_at_once(harness: Harness, path: str) -> None:
    harness.register("strict", path)
    await harness.start_workers(1)
    run = await harness.run(workflow({"id": "a", "agent": "strict", "retry": {"max_retries": 5, **FAST}}))
    run = await harness.wait(run.id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.code == f"AGENT_HTTP_{path[-3:]}"
    assert len(harness.agent.received(path)) == 1


async def test_non_retryable_status_fails_at_once(harness: Harness) -> None:
    harness.register("unavailable", "/status/503")
    await harness.start_workers(1)
    retry = {"max_retries": 5, "non_retryable_status": [503], **FAST}
    run = await harness.wait((await harness.run(workflow({"id": "a", "agent": "unavailable", "retry": retry}))).id)
    assert run.status is RunStatus.FAILED
    assert len(harness.agent.received("/status/503")) == 1


async def test_429_retry_after_is_honoured(harness: Harness) -> None:
    harness.register("limited", "/ratelimit", times=1, retry_after=1)
    await harness.start_workers(1)
    run = await harness.run(
        workflow({"id": "a", "agent": "limited", "input": 7, "retry": FAST}, output="{{ steps.a.output }}")
    )
    run = await harness.wait(run.id)
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, 7)
    first, second = harness.agent.received("/ratelimit")
    assert second.received_at - first.received_at >= 0.95
    retrying = [e for e in await harness.events(run.id) if e.type == "workflow.step.retrying"]
    assert retrying[0].data["delay_ms"] == 1000


async def test_agent_defaults_apply_under_the_step_policy(harness: Harness) -> None:
    harness.register("broken", "/status/502", retry=RetryOverrides(max_retries=1, initial_delay_ms=10, jitter=False))
    await harness.start_workers(1)
    run = await harness.wait((await harness.run(workflow({"id": "a", "agent": "broken"}))).id)
    assert run.status is RunStatus.FAILED
    assert len(harness.agent.received("/status/502")) == 2  # the agent's max_retries=1


async def test_a_hanging_agent_times_out(harness: Harness) -> None:
    harness.register("stuck", "/hang")
    await harness.start_workers(1)
    started = time.monotonic()
    run = await harness.run(workflow({"id": "a", "agent": "stuck", "timeout_ms": 200, "retry": {"max_retries": 0}}))
    run = await harness.wait(run.id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.code == "TIMEOUT"
    assert time.monotonic() - started < 10  # the agent would hang for 60 s


async def test_a_drip_feeding_agent_hits_the_total_deadline(harness: Harness) -> None:
    # 400 bytes at 50 ms each would take 20 s; each byte alone arrives well within any read timeout.
    harness.register("drip", "/drip", interval_ms=50, bytes=400)
    await harness.start_workers(1)
    started = time.monotonic()
    run = await harness.run(
        workflow({"id": "a", "agent": "drip", "timeout_ms": 300, "retry": {"max_retries": 1, **FAST}})
    )
    run = await harness.wait(run.id)
    elapsed = time.monotonic() - started
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.code == "TIMEOUT"
    assert len(harness.agent.received("/drip")) == 2
    assert elapsed < 10.0


async def test_an_oversized_output_fails_the_step_clearly(harness: Harness) -> None:
    harness.register("huge", "/big", bytes=1_100_000)
    await harness.start_workers(1)
    run = await harness.wait((await harness.run(workflow({"id": "a", "agent": "huge", "retry": FAST}))).id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.code == "OUTPUT_TOO_LARGE"
    assert "1048576" in run.error.message
    assert len(harness.agent.received("/big")) == 1


async def test_an_unknown_agent_fails_the_step(harness: Harness) -> None:
    await harness.start_workers(1)
    run = await harness.wait((await harness.run(workflow({"id": "a", "agent": "ghost"}))).id)
    assert run.error is not None and run.error.code == "AGENT_NOT_FOUND"


# --- DAG semantics -----------------------------------------------------------------------------


async def test_when_false_skips_the_step_and_its_dependents(harness: Harness) -> None:
    wf = workflow(
        {"id": "a", "type": "transform", "input": {"go": False}},
        {"id": "b", "type": "transform", "depends_on": ["a"], "when": "{{ steps.a.output.go }}", "input": 1},
        {"id": "c", "type": "transform", "depends_on": ["b"], "input": 2},
        {"id": "d", "type": "transform", "depends_on": ["a"], "input": 3},
        {"id": "e", "type": "transform", "depends_on": ["c", "d"], "input": 4},
        output={"b": "{{ steps.b.status }}", "d": "{{ steps.d.output }}", "e": "{{ steps.e.status }}"},
    )
    run = await harness.run(wf)
    assert run.status is RunStatus.SUCCEEDED
    assert run.output == {"b": "skipped", "d": 3, "e": "skipped"}
    skipped = {e.step_id: e.data["reason"] for e in await harness.events(run.id) if e.type == "workflow.step.skipped"}
    assert skipped == {
        "b": "when is false",
        "c": "dependency 'b' was skipped",
        "e": "dependency 'c' was skipped",
    }


async def test_a_bad_expression_fails_the_step(harness: Harness) -> None:
    run = await harness.run(workflow({"id": "a", "type": "transform", "input": "{{ input.[ }}"}))
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.code == "EXPRESSION_ERROR"


async def test_for_each_keeps_item_order_under_max_concurrency(harness: Harness) -> None:
    harness.register("slow", "/latency")
    await harness.start_workers(1)
    items = [{"v": i, "sleep_ms": sleep} for i, sleep in enumerate([150, 20, 90, 10, 60])]
    wf = workflow(
        {"id": "list", "type": "transform", "input": "{{ input.items }}"},
        {
            "id": "each",
            "agent": "slow",
            "depends_on": ["list"],
            "for_each": "{{ steps.list.output }}",
            "max_concurrency": 2,
            "input": {"v": "{{ item.v }}", "sleep_ms": "{{ item.sleep_ms }}"},
        },
        output="{{ steps.each.output[*].v }}",
    )
    run = await harness.wait((await harness.run(wf, {"items": items})).id)
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.output == [0, 1, 2, 3, 4]
    assert harness.agent.max_in_flight["/latency"] == 2
    keys = sorted(c.idempotency_key for c in harness.agent.received("/latency"))
    assert keys == [f"{run.id}/each/{i}" for i in range(5)]
    steps = await harness.engine.list_steps(TENANT, run.id)
    each = steps[1]
    assert [item.index for item in each.items] == [0, 1, 2, 3, 4]
    assert all(item.status is StepStatus.SUCCEEDED and len(item.attempts) == 1 for item in each.items)


async def test_for_each_of_a_transform_runs_inline(harness: Harness) -> None:
    wf = workflow(
        {
            "id": "sq",
            "type": "transform",
            "for_each": "{{ input.n }}",
            "input": {"n": "{{ item }}", "k": "x{{ item }}"},
        },
        {"id": "none", "type": "transform", "for_each": "{{ input.empty }}", "input": "{{ item }}"},
        output={"sq": "{{ steps.sq.output }}", "none": "{{ steps.none.output }}"},
    )
    run = await harness.run(wf, {"n": [3, 1, 2], "empty": []})
    assert run.status is RunStatus.SUCCEEDED
    assert run.output == {"sq": [{"n": 3, "k": "x3"}, {"n": 1, "k": "x1"}, {"n": 2, "k": "x2"}], "none": []}


async def test_for_each_over_a_non_list_fails(harness: Harness) -> None:
    run = await harness.run(workflow({"id": "a", "type": "transform", "for_each": "{{ input }}", "input": 1}), {"x": 1})
    assert run.error is not None and run.error.code == "FOR_EACH_NOT_A_LIST"


async def test_a_failing_item_fails_its_step(harness: Harness) -> None:
    harness.register("picky", "/status/400")
    await harness.start_workers(1)
    wf = workflow(
        {"id": "each", "agent": "picky", "for_each": "{{ input }}", "max_concurrency": 1, "input": "{{ item }}"}
    )
    run = await harness.wait((await harness.run(wf, [1, 2, 3])).id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.message.startswith("item 0:")
    [each] = await harness.engine.list_steps(TENANT, run.id)
    assert [item.status for item in each.items] == [StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.CANCELLED]
    assert len(harness.agent.received("/status/400")) == 1


async def test_a_delay_is_durable(harness: Harness) -> None:
    wf = workflow(
        {"id": "before", "type": "transform", "input": 1},
        {"id": "wait", "type": "delay", "depends_on": ["before"], "config": {"duration_ms": 300}, "input": "carried"},
        {"id": "after", "type": "transform", "depends_on": ["wait"], "input": "{{ steps.wait.output }}"},
        output="{{ steps.after.output }}",
    )
    run = await harness.run(wf)
    assert step_of(run, "wait").status is StepStatus.WAITING
    # No worker exists while the delay runs: the wait lives in the database, not in a process.
    await asyncio.sleep(0.35)
    await harness.start_workers(1)
    run = await harness.wait(run.id)
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "carried")
    events = {e.type + ":" + (e.step_id or ""): e for e in await harness.events(run.id)}
    waited = events["workflow.step.completed:wait"].timestamp - events["workflow.step.started:wait"].timestamp
    assert waited.total_seconds() >= 0.3


async def test_a_signal_resumes_a_waiting_step(harness: Harness) -> None:
    wf = workflow(
        {"id": "approve", "type": "wait_for_signal", "config": {"signal": "approval"}},
        {"id": "after", "type": "transform", "depends_on": ["approve"], "input": "{{ steps.approve.output.ok }}"},
        output="{{ steps.after.output }}",
    )
    run = await harness.run(wf)
    assert step_of(run, "approve").status is StepStatus.WAITING
    with pytest.raises(ConflictError, match=r"no step .* is waiting for signal 'other'"):
        await harness.engine.send_signal(TENANT, run.id, "other", {})
    run = await harness.engine.send_signal(TENANT, run.id, "approval", {"ok": True}, actor="usr_1")
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, True)
    with pytest.raises(ConflictError, match="succeeded"):
        await harness.engine.send_signal(TENANT, run.id, "approval", {})


async def test_an_unanswered_signal_times_out(harness: Harness) -> None:
    await harness.start_workers(1)
    wf = workflow({"id": "approve", "type": "wait_for_signal", "config": {"signal": "go"}, "timeout_ms": 150})
    run = await harness.wait((await harness.run(wf)).id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.code == "SIGNAL_TIMEOUT"


async def test_higher_priority_steps_are_claimed_first(harness: Harness) -> None:
    harness.register("echo", "/echo")
    wf = workflow(*[{"id": f"s{p}", "agent": "echo", "priority": p, "input": p} for p in (0, 9, 4)])
    run = await harness.run(wf)
    await harness.start_workers(1, config=replace(FAST_WORKER, concurrency=1))
    await harness.wait(run.id)
    assert [c.body["input"] for c in harness.agent.received("/echo")] == [9, 4, 0]


# --- controls ------------------------------------------------------------------------------------


async def test_cancel_aborts_in_flight_calls_and_is_final(harness: Harness) -> None:
    harness.register("stuck", "/hang")
    [worker] = await harness.start_workers(1)
    run = await harness.run(
        workflow({"id": "a", "agent": "stuck"}, {"id": "b", "type": "transform", "depends_on": ["a"]})
    )
    await harness.wait_until(run.id, lambda r: step_of(r, "a").status is StepStatus.RUNNING)
    run = await harness.engine.cancel_run(TENANT, run.id, actor="usr_1")
    assert run.status is RunStatus.CANCELLED
    assert [s.status for s in run.steps] == [StepStatus.CANCELLED, StepStatus.CANCELLED]
    for _ in range(500):
        if worker.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert worker.in_flight == 0, "the hanging call was not aborted"
    with pytest.raises(ConflictError, match="already cancelled"):
        await harness.engine.cancel_run(TENANT, run.id)
    with pytest.raises(ConflictError):
        await harness.engine.pause_run(TENANT, run.id)
    types = await harness.event_types(run.id)
    assert types[-1] == "workflow.cancelled"
    [step_a, _] = await harness.engine.list_steps(TENANT, run.id)
    assert [a.status for a in step_a.attempts] == [StepStatus.CANCELLED]


async def test_pause_lets_running_steps_finish_and_starts_nothing_new(harness: Harness) -> None:
    harness.register("slow", "/latency", ms=200)
    await harness.start_workers(1)
    wf = workflow(
        {"id": "a", "agent": "slow", "input": 1}, {"id": "b", "agent": "slow", "depends_on": ["a"], "input": 2}
    )
    run = await harness.run(wf)
    await harness.wait_until(run.id, lambda r: step_of(r, "a").status is StepStatus.RUNNING)
    run = await harness.engine.pause_run(TENANT, run.id)
    assert run.status is RunStatus.PAUSED
    with pytest.raises(ConflictError, match="already paused"):
        await harness.engine.pause_run(TENANT, run.id)
    run = await harness.wait_until(run.id, lambda r: step_of(r, "a").status is StepStatus.SUCCEEDED)
    await asyncio.sleep(0.1)
    run = await harness.engine.get_run(TENANT, run.id)
    assert run.status is RunStatus.PAUSED
    assert step_of(run, "b").status is StepStatus.PENDING
    assert len(harness.agent.received("/latency")) == 1
    await harness.engine.resume_run(TENANT, run.id)
    run = await harness.wait(run.id)
    assert run.status is RunStatus.SUCCEEDED
    with pytest.raises(ConflictError, match="only paused runs"):
        await harness.engine.resume_run(TENANT, run.id)
    types = await harness.event_types(run.id)
    assert types.index("workflow.paused") < types.index("workflow.resumed")


async def test_a_paused_run_holds_its_queued_steps(harness: Harness) -> None:
    harness.register("echo", "/echo")
    run = await harness.run(workflow({"id": "a", "agent": "echo"}))
    await harness.engine.pause_run(TENANT, run.id)
    await harness.start_workers(1)
    await asyncio.sleep(0.1)
    assert harness.agent.received("/echo") == []
    await harness.engine.resume_run(TENANT, run.id)
    assert (await harness.wait(run.id)).status is RunStatus.SUCCEEDED


async def test_retry_run_reruns_what_failed_and_keeps_what_succeeded(harness: Harness) -> None:
    harness.register("echo", "/echo")
    harness.register("flaky", "/flaky", fail=1)
    await harness.start_workers(1)
    wf = workflow(
        {"id": "a", "agent": "echo", "input": "A"},
        {
            "id": "b",
            "agent": "flaky",
            "depends_on": ["a"],
            "input": "{{ steps.a.output }}",
            "retry": {"max_retries": 0},
        },
        output="{{ steps.b.output }}",
    )
    run = await harness.wait((await harness.run(wf)).id)
    assert run.status is RunStatus.FAILED
    retried = await harness.engine.retry_run(TENANT, run.id)
    assert (retried.id, retried.status) == (run.id, RunStatus.RUNNING)
    run = await harness.wait(run.id)
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "A")
    assert len(harness.agent.received("/echo")) == 1
    assert [c.body["attempt"] for c in harness.agent.received("/flaky")] == [1, 2]
    with pytest.raises(ConflictError, match="only failed or cancelled"):
        await harness.engine.retry_run(TENANT, run.id)
    types = await harness.event_types(run.id)
    assert types.count("workflow.failed") == 1 and types[-1] == "workflow.completed"


async def test_retry_step_reruns_the_step_and_its_dependents(harness: Harness) -> None:
    harness.register("echo", "/echo")
    harness.register("flaky", "/flaky", fail=1)
    await harness.start_workers(1)
    wf = workflow(
        {"id": "a", "agent": "echo", "input": "A"},
        {
            "id": "b",
            "agent": "flaky",
            "depends_on": ["a"],
            "input": "{{ steps.a.output }}",
            "retry": {"max_retries": 0},
        },
        {"id": "c", "agent": "echo", "depends_on": ["b"], "input": "{{ steps.b.output }}"},
        output="{{ steps.c.output }}",
    )
    run = await harness.wait((await harness.run(wf)).id)
    assert run.status is RunStatus.FAILED
    with pytest.raises(ConflictError, match="depends on 'b'"):
        await harness.engine.retry_step(TENANT, run.id, "c")
    with pytest.raises(NotFoundError):
        await harness.engine.retry_step(TENANT, run.id, "zzz")
    await harness.engine.retry_step(TENANT, run.id, "b")
    run = await harness.wait(run.id)
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "A")
    assert [c.body["step_id"] for c in harness.agent.received("/echo")] == ["a", "c"]
    with pytest.raises(ConflictError, match="has succeeded"):
        await harness.engine.retry_step(TENANT, run.id, "b")


async def test_on_exhausted_pause_parks_the_run_for_an_operator(harness: Harness) -> None:
    harness.register("broken", "/status/500")
    await harness.start_workers(1)
    wf = workflow(
        {"id": "a", "agent": "broken", "retry": {"max_retries": 1, **FAST}, "on_exhausted": "pause"},
        {"id": "b", "type": "transform", "depends_on": ["a"], "input": "{{ steps.a.output.fixed }}"},
        output="{{ steps.b.output }}",
    )
    run = await harness.wait((await harness.run(wf)).id, statuses=[RunStatus.PAUSED])
    assert step_of(run, "a").status is StepStatus.FAILED
    events = await harness.events(run.id)
    assert events[-1].type == "workflow.paused" and events[-1].data["reason"] == "step_exhausted"
    with pytest.raises(ConflictError, match="retry or complete it"):
        await harness.engine.resume_run(TENANT, run.id)
    run = await harness.engine.complete_step(TENANT, run.id, "a", {"fixed": 42}, actor="usr_ops")
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, 42)
    completed = [e for e in await harness.events(run.id) if e.type == "workflow.step.completed" and e.step_id == "a"]
    assert completed[0].data["manual"] is True and completed[0].data["by"] == "usr_ops"


async def test_complete_step_resolves_a_failed_run(harness: Harness) -> None:
    harness.register("broken", "/status/400")
    await harness.start_workers(1)
    wf = workflow(
        {"id": "a", "agent": "broken"},
        {"id": "b", "type": "transform", "depends_on": ["a"], "input": "{{ steps.a.output }}"},
        output="{{ steps.b.output }}",
    )
    run = await harness.wait((await harness.run(wf)).id)
    assert run.status is RunStatus.FAILED
    with pytest.raises(ConflictError, match="only failed or waiting"):
        await harness.engine.complete_step(TENANT, run.id, "b", 1)
    run = await harness.engine.complete_step(TENANT, run.id, "a", "by hand")
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "by hand")


# --- idempotency, listing, tenancy ------------------------------------------------------------------


async def test_idempotency_keys_replay_the_first_answer(harness: Harness) -> None:
    wf = workflow({"id": "s", "type": "wait_for_signal", "config": {"signal": "go"}})
    first = await harness.run(wf, {"x": 1}, idempotency_key="key-1")
    again = await harness.run(wf, {"x": 1}, idempotency_key="key-1")
    assert again == first
    with pytest.raises(ValidationError, match="different request"):
        await harness.run(wf, {"x": 2}, idempotency_key="key-1")
    cancelled = await harness.engine.cancel_run(TENANT, first.id, idempotency_key="key-2")
    assert await harness.engine.cancel_run(TENANT, first.id, idempotency_key="key-2") == cancelled
    page = await harness.engine.list_runs(TENANT)
    assert [r.id for r in page.items] == [first.id]


async def test_concurrent_duplicate_starts_create_one_run(harness: Harness) -> None:
    wf = workflow({"id": "s", "type": "wait_for_signal", "config": {"signal": "go"}})
    runs = await asyncio.gather(*[harness.run(wf, {}, idempotency_key="dup") for _ in range(4)])
    assert len({r.id for r in runs}) == 1
    assert len((await harness.engine.list_runs(TENANT)).items) == 1


async def test_list_runs_pages_newest_first_with_filters(harness: Harness) -> None:
    wf = workflow({"id": "s", "type": "wait_for_signal", "config": {"signal": "go"}})
    ids = [(await harness.run(wf)).id for _ in range(5)]
    await harness.engine.cancel_run(TENANT, ids[1])
    seen, token = [], ""
    while True:
        page = await harness.engine.list_runs(TENANT, limit=2, page_token=token)
        seen += [r.id for r in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]
    cancelled = await harness.engine.list_runs(TENANT, RunFilter(status=RunStatus.CANCELLED))
    assert [r.id for r in cancelled.items] == [ids[1]]
    assert (await harness.engine.list_runs(TENANT, RunFilter(workflow_id="other"))).items == ()


async def test_another_tenant_sees_nothing(harness: Harness) -> None:
    run = await harness.run(workflow({"id": "s", "type": "wait_for_signal", "config": {"signal": "go"}}))
    engine = harness.engine
    with pytest.raises(NotFoundError):
        await engine.get_run("ten_other", run.id)
    with pytest.raises(NotFoundError):
        await engine.cancel_run("ten_other", run.id)
    with pytest.raises(NotFoundError):
        await engine.list_events("ten_other", run.id)
    assert (await engine.list_runs("ten_other")).items == ()
    assert (await engine.get_run(TENANT, run.id)).status is RunStatus.RUNNING


async def test_watch_run_replays_history_then_follows_live(harness: Harness) -> None:
    wf = workflow(
        {"id": "a", "type": "transform", "input": 1},
        {"id": "s", "type": "wait_for_signal", "depends_on": ["a"], "config": {"signal": "go"}},
    )
    run = await harness.run(wf)
    history = await harness.engine.list_events(TENANT, run.id)
    seen: list[int] = []

    async def watch() -> None:
        # Appended one by one: the test looks at `seen` while the stream is still open.
        async for event in harness.engine.watch_run(TENANT, run.id, after_seq=2):
            seen.append(event.seq)  # noqa: PERF401

    watcher = asyncio.create_task(watch())
    replayed = [e.seq for e in history if e.seq > 2]
    for _ in range(500):
        if len(seen) >= len(replayed):
            break
        await asyncio.sleep(0.01)
    assert seen == replayed
    assert not watcher.done(), "the stream follows live after the history"
    await harness.engine.send_signal(TENANT, run.id, "go", 1)
    await asyncio.wait_for(watcher, 5)
    final = await harness.events(run.id)
    assert seen == [e.seq for e in final if e.seq > 2]
    assert final[-1].type == "workflow.completed"


async def test_get_run_reads_what_the_step_listing_reads(harness: Harness) -> None:
    """GetRun's one-statement read (PostgreSQL: the run without its snapshot, the step order
    from it, the step rows as an array) answers the same steps, in definition order with
    items in index order, as the transactional read behind ListSteps."""
    wf = workflow(
        {"id": "zeta", "type": "transform", "input": {"n": "{{ input.n }}"}},
        {
            "id": "alpha",
            "type": "transform",
            "depends_on": ["zeta"],
            "for_each": "{{ input.items }}",
            "input": "{{ item }}",
        },
        {"id": "mid", "type": "transform", "depends_on": ["zeta"], "when": "{{ input.big }}", "input": 1},
        output={"items": "{{ steps.alpha.output }}"},
    )
    letters = list("cabdefghijkl")
    run = await harness.run(wf, {"n": 3, "big": False, "items": letters})
    assert run.status is RunStatus.SUCCEEDED, run.error
    read = await harness.engine.get_run(TENANT, run.id)
    listed = await harness.engine.list_steps(TENANT, run.id)

    def without_attempts(step: Any) -> Any:
        return replace(step, attempts=(), items=tuple(without_attempts(item) for item in step.items))

    assert [step.step_id for step in read.steps] == ["zeta", "alpha", "mid"]
    assert [item.index for item in read.steps[1].items] == list(range(12))
    assert [item.output for item in read.steps[1].items] == letters
    assert read.steps[2].status is StepStatus.SKIPPED
    assert list(read.steps) == [without_attempts(step) for step in listed]
    assert (read.id, read.status, read.output, read.workflow_version) == (
        run.id,
        RunStatus.SUCCEEDED,
        {"items": letters},
        run.workflow_version,
    )
