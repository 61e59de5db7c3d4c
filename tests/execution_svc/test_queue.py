"""The durable queue driven by hand with a manual clock: claims, leases, fencing, heartbeats,
the reaper, eager dispatch and pauses, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from execution_svc.db import repository as repo
from execution_svc.db.orm import tasks
from execution_svc.db.session import Database
from execution_svc.domain.models import RunError, RunStatus, StepStatus, TaskKind
from execution_svc.domain.ports import StepFailed, StepSucceeded
from execution_svc.domain.service import Assignment, EngineConfig, ExecutionEngine, StaleLeaseError
from execution_svc.notify import InProcessNotifier
from flowforge_common.errors import ConflictError
from tests.execution_svc.conftest import TENANT, ManualClock


@dataclass
class Manual:
    """An engine whose time moves only when the test says so."""

    engine: ExecutionEngine
    clock: ManualClock
    db: Database

    async def start(self, *steps: dict[str, Any], run_input: Any = None) -> str:
        workflow = {"id": "wf_q", "name": "q", "version": 1, "steps": list(steps)}
        return (await self.engine.start_run(TENANT, workflow, run_input)).id

    async def claim_and_start(self, owner: str, limit: int = 10, capacity: int = 0) -> list[Assignment]:
        leases = await self.engine.claim_tasks(owner, limit)
        return await self.engine.start_tasks(leases, capacity=capacity)

    async def queued(self) -> int:
        async with self.db.read() as session:
            return int((await session.execute(select(func.count()).select_from(tasks))).scalar_one())

    async def types(self, run_id: str) -> list[str]:
        events = await self.engine.list_events(TENANT, run_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        return [e.type for e in events]


@pytest.fixture
async def manual(engine_db: Database) -> AsyncIterator[Manual]:
    clock = ManualClock()
    engine = ExecutionEngine(
        engine_db, InProcessNotifier(), clock=clock, config=EngineConfig(lease_seconds=10), rng=random.Random(1)
    )
    yield Manual(engine, clock, engine_db)


def agent_step(step_id: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "agent": "a", "depends_on": list(deps), "input": step_id, **extra}


async def test_a_stale_worker_cannot_commit_after_its_lease_was_taken_over(manual: Manual) -> None:
    run_id = await manual.start(agent_step("a"), agent_step("b", "a"))
    [stale] = await manual.claim_and_start("w1")
    assert stale.call.attempt == 1 and stale.call.idempotency_key == f"{run_id}/a"

    # w1 stops (SIGSTOP, GC pause, partition) past its lease; the reaper hands the task out again.
    manual.clock.advance(seconds=11)
    assert await manual.engine.requeue_expired_leases() == 1
    [fresh] = await manual.claim_and_start("w2")
    assert fresh.lease.task_id == stale.lease.task_id
    assert fresh.lease.token > stale.lease.token
    assert fresh.call.attempt == 2 and fresh.call.idempotency_key == stale.call.idempotency_key

    with pytest.raises(StaleLeaseError, match="result is refused"):
        await manual.engine.complete_task(stale, StepSucceeded("stale"))
    await manual.engine.complete_task(fresh, StepSucceeded("fresh"))
    steps = await manual.engine.list_steps(TENANT, run_id)
    assert steps[0].output == "fresh"
    assert [(a.attempt, a.status, a.error.code if a.error else None) for a in steps[0].attempts] == [
        (1, StepStatus.FAILED, "LEASE_EXPIRED"),
        (2, StepStatus.SUCCEEDED, None),
    ]
    types = await manual.types(run_id)
    assert types.count("workflow.step.completed") == 1
    assert "workflow.step.retrying" in types


async def test_an_expired_lease_is_refused_even_before_anyone_reclaims_it(manual: Manual) -> None:
    run_id = await manual.start(agent_step("a"))
    [assignment] = await manual.claim_and_start("w1")
    manual.clock.advance(seconds=10.5)
    with pytest.raises(StaleLeaseError):
        await manual.engine.complete_task(assignment, StepSucceeded(1))
    assert (await manual.engine.get_run(TENANT, run_id)).status is RunStatus.RUNNING


async def test_heartbeats_keep_a_lease_and_never_revive_an_expired_one(manual: Manual) -> None:
    await manual.start(agent_step("a"), agent_step("b"))
    first, second = await manual.claim_and_start("w1")
    manual.clock.advance(seconds=6)
    assert await manual.engine.extend_leases("w1", [first.lease.task_id]) == {first.lease.task_id}
    assert await manual.engine.extend_leases("w2", [second.lease.task_id]) == set()  # not w2's
    manual.clock.advance(seconds=6)
    assert await manual.engine.extend_leases("w1", [second.lease.task_id]) == set()  # expired at 10 s
    await manual.engine.complete_task(first, StepSucceeded(1))
    with pytest.raises(StaleLeaseError):
        await manual.engine.complete_task(second, StepSucceeded(2))


async def test_concurrent_claims_never_hand_out_a_task_twice(manual: Manual) -> None:
    await manual.start(*[agent_step(f"s{i}") for i in range(30)])
    batches = await asyncio.gather(*[manual.engine.claim_tasks(f"w{i}", 7) for i in range(5)])
    claimed = [lease.task_id for batch in batches for lease in batch]
    assert len(claimed) == len(set(claimed)) == 30
    assert await manual.engine.claim_tasks("late", 10) == []


async def test_claims_take_the_highest_priority_first_then_the_oldest(manual: Manual) -> None:
    await manual.start(agent_step("low", priority=1), agent_step("high", priority=8), agent_step("mid", priority=5))
    await manual.start(agent_step("high2", priority=8))
    one_by_one = [(await manual.engine.claim_tasks("w", 1))[0].step_id for _ in range(4)]
    assert one_by_one == ["high", "high2", "mid", "low"]


async def test_a_batch_comes_back_in_claim_order(manual: Manual) -> None:
    await manual.start(agent_step("low", priority=1), agent_step("high", priority=8), agent_step("mid", priority=5))
    assert [lease.step_id for lease in await manual.engine.claim_tasks("w", 10)] == ["high", "mid", "low"]


async def test_retry_backoff_waits_in_the_queue(manual: Manual) -> None:
    run_id = await manual.start(
        agent_step("a", retry={"max_retries": 2, "initial_delay_ms": 1000, "jitter": False, "max_delay_ms": 10_000})
    )
    [assignment] = await manual.claim_and_start("w")
    await manual.engine.complete_task(
        assignment, StepFailed(RunError("AGENT_HTTP_503", "busy"), retryable=True, retry_after_ms=3000)
    )
    assert await manual.engine.claim_tasks("w", 1) == []
    due = await manual.engine.next_due_at()
    assert due == manual.clock.now + dt.timedelta(seconds=3)  # Retry-After beats the backoff
    manual.clock.advance(seconds=3)
    [retry] = await manual.claim_and_start("w")
    assert retry.call.attempt == 2
    run = await manual.engine.get_run(TENANT, run_id)
    assert run.steps[0].status is StepStatus.RUNNING


async def test_eager_dispatch_hands_the_next_steps_to_the_completing_worker(manual: Manual) -> None:
    run_id = await manual.start(agent_step("a"), agent_step("b", "a"), agent_step("c", "a"), agent_step("d", "a"))
    [first] = await manual.claim_and_start("w")
    follow_ups = await manual.engine.complete_task(first, StepSucceeded(1), capacity=2)
    assert [f.lease.step_id for f in follow_ups] == ["b", "c"]
    assert all(f.lease.owner == "w" and f.call.attempt == 1 for f in follow_ups)
    # The third newly ready step went to the queue for any worker.
    [queued] = await manual.engine.claim_tasks("other", 10)
    assert queued.step_id == "d"
    run = await manual.engine.get_run(TENANT, run_id)
    assert [s.status for s in run.steps] == [StepStatus.SUCCEEDED] + [StepStatus.RUNNING] * 2 + [StepStatus.PENDING]
    for follow_up in follow_ups:
        assert await manual.engine.complete_task(follow_up, StepSucceeded(2)) == []


async def test_paused_runs_park_their_tasks(manual: Manual) -> None:
    run_id = await manual.start(agent_step("a"), agent_step("b"))
    [early] = await manual.engine.claim_tasks("w", 1)
    await manual.engine.pause_run(TENANT, run_id)
    # Claimed before the pause, started after it: parked, not run.
    assert await manual.engine.start_tasks([early]) == []
    assert await manual.engine.claim_tasks("w", 10) == []
    await manual.engine.resume_run(TENANT, run_id)
    assert sorted(a.lease.step_id for a in await manual.claim_and_start("w")) == ["a", "b"]


async def test_cancel_empties_the_queue_and_fences_in_flight_attempts(manual: Manual) -> None:
    run_id = await manual.start(agent_step("a"), agent_step("b"), agent_step("c", "a"))
    [a, _] = await manual.claim_and_start("w")
    await manual.engine.cancel_run(TENANT, run_id)
    assert await manual.queued() == 0
    with pytest.raises(StaleLeaseError):
        await manual.engine.complete_task(a, StepSucceeded(1))
    # Retrying the run after the cancel does not resurrect the old attempt's lease.
    await manual.engine.retry_run(TENANT, run_id)
    with pytest.raises(StaleLeaseError):
        await manual.engine.complete_task(a, StepSucceeded(1))
    assert sorted(x.lease.step_id for x in await manual.claim_and_start("w")) == ["a", "b"]


async def test_finished_runs_leave_nothing_in_the_queue(manual: Manual) -> None:
    run_id = await manual.start(
        agent_step("a"), {"id": "d", "type": "delay", "config": {"duration_ms": 5000}, "depends_on": ["a"]}
    )
    [a] = await manual.claim_and_start("w")
    await manual.engine.complete_task(a, StepSucceeded(1))
    assert await manual.queued() == 1  # the durable delay
    manual.clock.advance(seconds=5)
    assert await manual.claim_and_start("w") == []  # timers fire inside the start transaction
    assert (await manual.engine.get_run(TENANT, run_id)).status is RunStatus.SUCCEEDED
    assert await manual.queued() == 0


async def test_a_worker_that_keeps_dying_fails_the_step(manual: Manual) -> None:
    run_id = await manual.start(agent_step("poison"))
    for _ in range(5):
        assert len(await manual.claim_and_start("w")) == 1
        manual.clock.advance(seconds=11)
        await manual.engine.requeue_expired_leases()
    run = await manual.engine.get_run(TENANT, run_id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.code == "LEASE_EXPIRED"


async def test_timers_claimed_by_a_lost_worker_fire_later(manual: Manual) -> None:
    run_id = await manual.start({"id": "d", "type": "delay", "config": {"duration_ms": 100}})
    manual.clock.advance(seconds=1)
    [lease] = await manual.engine.claim_tasks("w", 1)
    assert lease.kind is TaskKind.DELAY
    manual.clock.advance(seconds=11)  # w died between claim and start
    await manual.engine.requeue_expired_leases()
    await manual.claim_and_start("w2")
    assert (await manual.engine.get_run(TENANT, run_id)).status is RunStatus.SUCCEEDED


async def test_queue_timeout_fails_a_step_that_waited_too_long_to_start(manual: Manual) -> None:
    run_id = await manual.start(agent_step("a", queue_timeout_ms=1000))
    manual.clock.advance(seconds=2)
    assert await manual.claim_and_start("w") == []
    run = await manual.engine.get_run(TENANT, run_id)
    assert run.status is RunStatus.FAILED
    assert run.error is not None and run.error.code == "QUEUE_TIMEOUT"


async def test_total_timeout_bounds_retries(manual: Manual) -> None:
    retry = {"max_retries": 5, "initial_delay_ms": 4000, "jitter": False}
    run_id = await manual.start(agent_step("a", total_timeout_ms=10_000, timeout_ms=60_000, retry=retry))
    [first] = await manual.claim_and_start("w")
    # The attempt's own deadline is cut to what is left of the total.
    assert first.call.deadline_at == manual.clock.now + dt.timedelta(seconds=10)
    manual.clock.advance(seconds=3)
    busy = StepFailed(RunError("AGENT_HTTP_503", "busy"), retryable=True)
    await manual.engine.complete_task(first, busy)  # retry due at 7 s: allowed
    manual.clock.advance(seconds=4)
    [second] = await manual.claim_and_start("w")
    manual.clock.advance(seconds=1)
    await manual.engine.complete_task(second, busy)  # the next would be due at 16 s: past 10 s
    run = await manual.engine.get_run(TENANT, run_id)
    assert run.error is not None and run.error.code == "TOTAL_TIMEOUT"
    assert "busy" in run.error.message


@pytest.fixture
def gates(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each gated one-statement save opened (True) or stayed shut (False)."""
    opened: list[bool] = []
    gated_save = repo.save_states_if_current

    async def spy(*args: Any, **kwargs: Any) -> Any:
        leased = await gated_save(*args, **kwargs)
        opened.append(leased is not None)
        return leased

    monkeypatch.setattr(repo, "save_states_if_current", spy)
    return opened


async def test_a_result_written_from_a_kept_state_never_overwrites_another_engines_change(
    manual: Manual, gates: list[bool]
) -> None:
    """Engine A keeps the state it committed; engine B (another process) then changes the
    run. A's next result must not be written over B's change: on PostgreSQL the one-statement
    save's gate stays shut and A takes the locking path."""
    other = ExecutionEngine(
        manual.db, InProcessNotifier(), clock=manual.clock, config=EngineConfig(lease_seconds=10), rng=random.Random(2)
    )
    run_id = await manual.start(agent_step("a"), agent_step("b"), agent_step("c"))
    a, b, c = sorted(await manual.claim_and_start("w1"), key=lambda x: x.lease.step_id)
    await manual.engine.complete_task(a, StepSucceeded("from A"))
    await other.complete_task(b, StepSucceeded("from B"))
    await manual.engine.complete_task(c, StepSucceeded("from A again"))

    run = await manual.engine.get_run(TENANT, run_id)
    assert run.status is RunStatus.SUCCEEDED
    steps = {step.step_id: step.output for step in await manual.engine.list_steps(TENANT, run_id)}
    assert steps == {"a": "from A", "b": "from B", "c": "from A again"}
    assert (await manual.types(run_id)).count("workflow.step.completed") == 3
    if manual.db.is_postgres:
        # A's last result was tried from its kept state first, and refused by the gate.
        assert gates[-1] is False


async def test_a_sequential_run_commits_each_result_in_one_gated_statement(manual: Manual, gates: list[bool]) -> None:
    run_id = await manual.start(agent_step("a"), agent_step("b", "a"), agent_step("c", "b"))
    [current] = await manual.claim_and_start("w1")
    for step_id in ("a", "b", "c"):
        assert current.lease.step_id == step_id
        handed = await manual.engine.complete_task(current, StepSucceeded(step_id), capacity=1)
        current = handed[0] if handed else current
    assert (await manual.engine.get_run(TENANT, run_id)).status is RunStatus.SUCCEEDED
    # SQLite has one writer and always takes the locking path.
    assert gates == ([True, True, True] if manual.db.is_postgres else [])


def other_engine(manual: Manual) -> ExecutionEngine:
    """A second engine on the same database: another execution_svc process."""
    return ExecutionEngine(
        manual.db, InProcessNotifier(), clock=manual.clock, config=EngineConfig(lease_seconds=10), rng=random.Random(2)
    )


async def test_controls_on_a_run_this_engine_committed_last_take_one_statement(
    manual: Manual, gates: list[bool]
) -> None:
    """A control without an Idempotency-Key on a run whose state this engine kept is written by
    the gated one-statement save (here the signal); those that hold, release or drop all of the
    run's tasks at once (pause, resume, cancel) take the locking path. Either way the run reads
    back as written."""
    run_id = await manual.start(
        {"id": "w", "type": "wait_for_signal", "config": {"signal": "go"}}, agent_step("b", "w")
    )
    assert (await manual.engine.pause_run(TENANT, run_id)).status is RunStatus.PAUSED
    assert (await manual.engine.resume_run(TENANT, run_id)).status is RunStatus.RUNNING
    view = await manual.engine.send_signal(TENANT, run_id, "go", {"ok": True})
    assert [(s.step_id, s.status) for s in view.steps] == [("w", StepStatus.SUCCEEDED), ("b", StepStatus.PENDING)]
    assert await manual.queued() == 1
    assert (await manual.engine.cancel_run(TENANT, run_id)).status is RunStatus.CANCELLED
    # What was written is what a fresh read finds, events gap-free.
    run = await manual.engine.get_run(TENANT, run_id)
    assert run.status is RunStatus.CANCELLED
    assert [(s.step_id, s.status) for s in run.steps] == [("w", StepStatus.SUCCEEDED), ("b", StepStatus.CANCELLED)]
    events = await manual.engine.list_events(TENANT, run_id, limit=100)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert await manual.queued() == 0
    with pytest.raises(ConflictError):
        await manual.engine.pause_run(TENANT, run_id)
    assert gates == ([True] if manual.db.is_postgres else [])


async def test_a_control_from_a_kept_state_never_overwrites_another_engines_change(
    manual: Manual, gates: list[bool]
) -> None:
    """Engine A keeps the state it committed; engine B then changes the run. A's next control
    is decided on the run as it is now: the gate stays shut when the state moved on, and an
    action refused on the kept state is tried again on the current one."""
    other = other_engine(manual)
    first = {"id": "w", "type": "wait_for_signal", "config": {"signal": "go"}}
    run_id = await manual.start(
        first, {"id": "w2", "type": "wait_for_signal", "config": {"signal": "go"}, "depends_on": ["w"]}
    )
    # B delivers `go` to w. A's kept state still has w waiting: the signal passes on it, the
    # gate does not, and on the current run it reaches w2 (w keeps B's payload).
    await other.send_signal(TENANT, run_id, "go", "from B")
    view = await manual.engine.send_signal(TENANT, run_id, "go", "from A")
    assert [(s.step_id, s.status, s.output) for s in view.steps] == [
        ("w", StepStatus.SUCCEEDED, "from B"),
        ("w2", StepStatus.SUCCEEDED, "from A"),
    ]
    assert view.status is RunStatus.SUCCEEDED
    # A cancels a second run (its kept state: cancelled); B retries it (running, w waiting).
    # A's signal, refused on the kept state, is delivered on the current run.
    second = await manual.start(first)
    await manual.engine.cancel_run(TENANT, second)
    await other.retry_run(TENANT, second)
    assert (await manual.engine.send_signal(TENANT, second, "go", "after retry")).status is RunStatus.SUCCEEDED
    assert [(s.step_id, s.output) for s in (await other.get_run(TENANT, second)).steps] == [("w", "after retry")]
    events = await manual.engine.list_events(TENANT, run_id, limit=100)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    if manual.db.is_postgres:
        assert gates[0] is False  # A's first signal, computed from the state B had moved on


def test_every_part_of_the_save_payload_has_its_write() -> None:
    """The one-statement save holds a write CTE per non-empty array of its JSON payload (and the
    task upsert for `tasks`): an array without one would be dropped silently."""
    payload, kinds, _, _ = repo._one_statement_payload([], [], [])
    assert kinds == frozenset()
    assert set(json.loads(payload)) == set(repo._WRITE_CTES) | {"tasks"}
    every = frozenset(json.loads(payload))
    for sql in (repo._save_sql(every), repo._save_if_current_sql(every)):
        for name in repo._WRITE_CTES:
            assert f"write_{name} AS (" in sql
            assert f"j->'{name}'" in sql
        assert "INSERT INTO tasks" in sql
    assert "write_" not in repo._save_sql(frozenset()) and "INSERT INTO tasks" not in repo._save_sql(frozenset())
