"""Property-based test of the run/step state machine, on the real engine and database.

Hypothesis drives random sequences of worker actions (claims, results, faults, crashes,
heartbeats, time passing) and operator controls against one run, and after every action
checks the invariants: events are gap-free, succeeded is final, every attempt's result is
recorded once, the attempt history is contiguous, finished runs have nothing in flight or
queued, statuses agree with the last run-level event, and refused actions change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import select

from execution_svc.db import repository as repo
from execution_svc.db.orm import tasks
from execution_svc.db.session import Database, use_immediate_transactions
from execution_svc.domain.models import RunError, RunStatus, StepStatus
from execution_svc.domain.ports import StepFailed, StepSucceeded
from execution_svc.domain.service import Assignment, EngineConfig, ExecutionEngine, StaleLeaseError
from execution_svc.domain.views import run_view, step_views
from execution_svc.notify import InProcessNotifier
from execution_svc.server import MIGRATIONS
from flowforge_common import db
from flowforge_common.errors import ConflictError
from tests.execution_svc.conftest import TENANT, ManualClock
from tests.fixtures.databases import DatabaseTarget

WORKFLOW = {
    "id": "wf_prop",
    "name": "prop",
    "version": 1,
    "steps": [
        {"id": "a", "agent": "x", "input": 1, "retry": {"max_retries": 1, "initial_delay_ms": 100, "jitter": False}},
        {"id": "b", "agent": "x", "depends_on": ["a"], "retry": {"max_retries": 0}, "on_exhausted": "pause"},
        {"id": "c", "type": "wait_for_signal", "depends_on": ["a"], "config": {"signal": "go"}},
        {
            "id": "d",
            "agent": "x",
            "depends_on": ["b", "c"],
            "for_each": "{{ `[1, 2]` }}",
            "max_concurrency": 1,
            "retry": {"max_retries": 1, "initial_delay_ms": 100, "jitter": False},
        },
        {"id": "e", "type": "transform", "depends_on": ["d"], "input": "{{ steps.d.output }}"},
    ],
    "output": "{{ steps.e.output }}",
}
STEP_IDS = [step["id"] for step in WORKFLOW["steps"]]
WORKERS = ["w1", "w2"]
# Success is the common case; faults are frequent enough to exercise retries and failures.
OUTCOMES = st.sampled_from(["ok", "ok", "ok", "retryable", "fatal"])
RUN_EVENTS = {
    "workflow.started",
    "workflow.paused",
    "workflow.resumed",
    "workflow.completed",
    "workflow.failed",
    "workflow.cancelled",
}
EXPECTED_LAST_RUN_EVENT = {
    RunStatus.SUCCEEDED: {"workflow.completed"},
    RunStatus.FAILED: {"workflow.failed"},
    RunStatus.CANCELLED: {"workflow.cancelled"},
    RunStatus.PAUSED: {"workflow.paused"},
    RunStatus.RUNNING: {"workflow.started", "workflow.resumed"},
    RunStatus.PENDING: {"workflow.started", "workflow.resumed"},
}


class RunMachine(RuleBasedStateMachine):
    """One run, two workers, one operator, and a clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop, database: Database) -> None:
        super().__init__()
        self.loop = loop
        self.db = database
        self.clock = ManualClock()
        self.engine = ExecutionEngine(
            database, InProcessNotifier(), clock=self.clock, config=EngineConfig(lease_seconds=1), rng=random.Random(0)
        )
        self.held: dict[str, list[Assignment]] = {worker: [] for worker in WORKERS}
        self.run_id = self.sync(self.engine.start_run(TENANT, WORKFLOW, {})).id
        self.succeeded_events: int | None = None
        self.outputs = 0
        # (status, event count) after the previous action: what a refused action must leave.
        self.last: tuple[RunStatus, int] = (RunStatus.PENDING, 0)

    def sync(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        # Leave nothing claimable for the next example (claims are cross-run by design).
        with contextlib.suppress(ConflictError):
            self.sync(self.engine.cancel_run(TENANT, self.run_id))

    def refused(self) -> None:
        run, events, *_ = self.sync(self._read())
        assert (run.status, len(events)) == self.last, "a refused action changed the run"

    # --- workers -------------------------------------------------------------------------------

    @rule(worker=st.sampled_from(WORKERS), capacity=st.integers(0, 2))
    def claim(self, worker: str, capacity: int) -> None:
        leases = self.sync(self.engine.claim_tasks(worker, 3))
        self.held[worker] += self.sync(self.engine.start_tasks(leases, capacity=capacity))
        if leases:
            # Starting attempts wrote events: that is the state a refusal must leave.
            run, events, *_ = self.sync(self._read())
            self.last = (run.status, len(events))

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data(), outcome=OUTCOMES, capacity=st.integers(0, 2))
    def report(self, data: st.DataObject, outcome: str, capacity: int) -> None:
        worker = data.draw(st.sampled_from([w for w in WORKERS if self.held[w]]))
        self._report(worker, data.draw(st.integers(0, len(self.held[worker]) - 1)), outcome, capacity)

    def _report(self, worker: str, index: int, outcome: str, capacity: int) -> None:
        assignment = self.held[worker].pop(index)
        if outcome == "ok":
            self.outputs += 1
            result: Any = StepSucceeded({"n": self.outputs})
        elif outcome == "retryable":
            result = StepFailed(RunError("AGENT_HTTP_503", "busy"), retryable=True, status_code=503)
        else:
            result = StepFailed(RunError("AGENT_HTTP_400", "bad"), retryable=False, status_code=400)
        try:
            self.held[worker] += self.sync(self.engine.complete_task(assignment, result, capacity=capacity))
        except StaleLeaseError:
            self.refused()

    @rule(worker=st.sampled_from(WORKERS), outcome=OUTCOMES, capacity=st.integers(0, 2))
    def work(self, worker: str, outcome: str, capacity: int) -> None:
        """A worker's usual cycle in one step: claim, then report the oldest attempt it holds."""
        self.claim(worker, capacity)
        if self.held[worker]:
            self._report(worker, 0, outcome, capacity)

    @rule()
    def signal_go(self) -> None:
        try:
            self.sync(self.engine.send_signal(TENANT, self.run_id, "go", {"ok": True}))
        except ConflictError:
            self.refused()

    @rule(worker=st.sampled_from(WORKERS))
    def crash(self, worker: str) -> None:
        self.held[worker] = []

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        ids = [a.lease.task_id for a in self.held[worker]]
        self.sync(self.engine.extend_leases(worker, ids))

    @rule(ms=st.sampled_from([50, 200, 1100]))
    def tick(self, ms: int) -> None:
        self.clock.advance(milliseconds=ms)
        self.sync(self.engine.requeue_expired_leases())

    # --- operator ------------------------------------------------------------------------------

    @rule(
        control=st.sampled_from(["cancel", "pause", "resume", "retry_run", "retry_step", "complete_step", "signal"]),
        step_id=st.sampled_from(STEP_IDS),
        signal=st.sampled_from(["go", "nope"]),
    )
    def operate(self, control: str, step_id: str, signal: str) -> None:
        engine = self.engine
        calls = {
            "cancel": lambda: engine.cancel_run(TENANT, self.run_id),
            "pause": lambda: engine.pause_run(TENANT, self.run_id),
            "resume": lambda: engine.resume_run(TENANT, self.run_id),
            "retry_run": lambda: engine.retry_run(TENANT, self.run_id),
            "retry_step": lambda: engine.retry_step(TENANT, self.run_id, step_id),
            "complete_step": lambda: engine.complete_step(TENANT, self.run_id, step_id, [{"n": -1}]),
            "signal": lambda: engine.send_signal(TENANT, self.run_id, signal, {"ok": True}),
        }
        try:
            self.sync(calls[control]())
        except ConflictError:
            self.refused()

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        """Every invariant, from one read of the run (each read costs a round trip)."""
        run, events, steps, rows, queued = self.sync(self._read())
        self.last = (run.status, len(events))

        # Events are gap-free and the last run-level event matches the status.
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        run_events = [e.type for e in events if e.type in RUN_EVENTS]
        assert run_events[0] == "workflow.started"
        assert run_events[-1] in EXPECTED_LAST_RUN_EVENT[run.status], (run.status, run_events)

        # Succeeded is final: nothing happens after it.
        if self.succeeded_events is not None:
            assert run.status is RunStatus.SUCCEEDED, "succeeded is final"
            assert len(events) == self.succeeded_events, "nothing happens after success"
        elif run.status is RunStatus.SUCCEEDED:
            self.succeeded_events = len(events)
            # e's output is d's: two item outputs, or what an operator supplied.
            assert isinstance(run.output, list) and run.output, run.output

        # Each attempt's result is recorded once.
        outcomes = Counter(
            (e.step_id, e.data.get("index"), e.data["attempt"])
            for e in events
            if e.type in ("workflow.step.completed", "workflow.step.failed", "workflow.step.retrying")
            and e.data.get("attempt", 0) > 0
            and not e.data.get("manual")
        )
        assert all(count == 1 for count in outcomes.values()), outcomes

        # The attempt history is contiguous, with at most one attempt open.
        for step in steps:
            for row in (step, *step.items):
                assert [a.attempt for a in row.attempts] == list(range(1, row.attempt + 1)), row
                in_progress = [a for a in row.attempts if a.status in (StepStatus.RUNNING, StepStatus.WAITING)]
                assert len(in_progress) <= 1

        # Only unfinished steps have tasks; finished runs have no unfinished steps and no tasks.
        finished_rows = {key for key, status in rows.items() if StepStatus(status).finished}
        assert not (set(queued) & finished_rows), "a finished step still has a task"
        if run.status.finished:
            assert queued == [], "a finished run still has tasks"
            assert finished_rows == set(rows), "a finished run still has unfinished steps"
        if run.status is RunStatus.SUCCEEDED:
            assert {rows[(s, -1)] for s in STEP_IDS} <= {"succeeded", "skipped"}

    async def _read(self) -> tuple[Any, ...]:
        """The run, its events, its steps with attempts, and its queued tasks, in one session."""
        async with self.db.read() as session:
            record = await repo.get_run(session, TENANT, self.run_id)
            assert record is not None
            events = await repo.list_events(session, TENANT, self.run_id, after_seq=0, limit=100_000)
            rows = await repo.load_steps(session, TENANT, self.run_id)
            attempts = await repo.load_attempts(session, TENANT, self.run_id)
            queued = await session.execute(
                select(tasks.c.step_id, tasks.c.item_index).where(tasks.c.run_id == self.run_id)
            )
            return (
                run_view(record),
                events,
                step_views(record, rows, attempts),
                {row.key: row.status.value for row in rows},
                [(t.step_id, t.item_index) for t in queued],
            )


def test_random_controls_faults_and_crashes_keep_the_invariants(database: DatabaseTarget) -> None:
    loop = asyncio.new_event_loop()
    engine = db.create_engine(
        database.url, schema=database.schema, sqlite_path=database.data_dir / "execution.db", pool_size=3
    )
    use_immediate_transactions(engine)
    try:
        loop.run_until_complete(db.migrate(engine, migrations=Path(MIGRATIONS), schema=database.schema))
        database_handle = Database(engine)
        run_state_machine_as_test(
            lambda: RunMachine(loop, database_handle),
            settings=settings(
                max_examples=15,
                stateful_step_count=30,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
                # The explain phase traces every line: far too slow for a database-backed test.
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
            ),
        )
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()
