"""Durability with real workers: a worker that dies mid-run loses nothing, heartbeats keep
long attempts alive, and processes sharing PostgreSQL wake each other with LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from execution_svc.db.session import Database
from execution_svc.domain.models import RunStatus, StepStatus
from execution_svc.domain.ports import EVENTS_TOPIC, TASKS_TOPIC, AgentEndpoint
from execution_svc.domain.service import ExecutionEngine
from execution_svc.domain.worker import Worker
from execution_svc.executors.directory import InMemoryAgentDirectory
from execution_svc.executors.http import HttpStepExecutor
from execution_svc.notify import InProcessNotifier, PostgresNotifier
from execution_svc.server import MIGRATIONS
from flowforge_common import db
from tests.execution_svc.conftest import FAST_WORKER, TENANT, Harness
from tests.fixtures.test_agent import TestAgent


def chain(length: int, agent: str) -> dict[str, object]:
    steps = [{"id": "s0", "agent": agent, "input": {"i": 0}}]
    steps += [{"id": f"s{i}", "agent": agent, "depends_on": [f"s{i - 1}"], "input": {"i": i}} for i in range(1, length)]
    return {
        "id": "wf_chain",
        "name": "chain",
        "version": 1,
        "steps": steps,
        "output": f"{{{{ steps.s{length - 1}.output }}}}",
    }


async def test_a_worker_killed_mid_run_loses_nothing(harness: Harness) -> None:
    harness.register("slow", "/latency", ms=60)
    [doomed] = await harness.start_workers(1)
    runs = [(await harness.run(chain(3, "slow"))).id for _ in range(12)]
    for _ in range(500):
        if harness.agent.in_flight["/latency"] > 0:
            break  # the agent is serving the doomed worker's attempts right now
        await asyncio.sleep(0.005)
    # Abrupt stop: in-flight attempts are abandoned without a word, like SIGKILL.
    await doomed.stop(grace=0)
    [survivor] = await harness.start_workers(1)

    for run_id in runs:
        run = await harness.wait(run_id, within=15)
        assert run.status is RunStatus.SUCCEEDED, run.error
        assert run.output == {"i": 2}
        events = await harness.events(run_id)
        completed = Counter(e.step_id for e in events if e.type == "workflow.step.completed")
        assert completed == {"s0": 1, "s1": 1, "s2": 1}, "each step result is recorded exactly once"
    lost = [
        e
        for run_id in runs
        for e in await harness.engine.list_events(TENANT, run_id)
        if e.type == "workflow.step.retrying" and e.data["error"]["code"] == "LEASE_EXPIRED"
    ]
    assert lost, "the killed worker's attempts went back to the queue"
    # Under heavy load a survivor's own lease can run out too; its late attempts then end
    # with refused results rather than hanging around.
    for _ in range(1000):
        if survivor.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert survivor.in_flight == 0


async def test_heartbeats_keep_attempts_longer_than_the_lease(harness: Harness) -> None:
    harness.register("slow", "/latency", ms=3000)  # the harness lease is 2 s
    await harness.start_workers(1)
    run = await harness.wait((await harness.run(chain(1, "slow"))).id)
    assert run.status is RunStatus.SUCCEEDED
    assert len(harness.agent.received("/latency")) == 1
    assert "workflow.step.retrying" not in await harness.event_types(run.id)


async def test_many_runs_on_several_workers(harness: Harness) -> None:
    harness.register("echo", "/echo")
    await harness.start_workers(3, config=replace(FAST_WORKER, concurrency=4))
    runs = await asyncio.gather(*[harness.run(chain(4, "echo")) for _ in range(20)])
    for run in runs:
        finished = await harness.wait(run.id, within=20)
        assert finished.status is RunStatus.SUCCEEDED
        types = await harness.event_types(run.id)
        assert types.count("workflow.step.completed") == 4
    # At least once: a lease that ran out under load may have been executed twice, but its
    # result was recorded once (above).
    assert len(harness.agent.received("/echo")) >= 80


async def test_a_run_started_here_hands_its_first_steps_to_a_worker_here(harness: Harness) -> None:
    """Eager start: the transaction that starts a run leases its root steps to a worker of the
    same process, up to that worker's free slots; the rest wait in the queue as usual."""
    harness.register("slow", "/latency", ms=300)
    [worker] = await harness.start_workers(1, config=replace(FAST_WORKER, concurrency=2))
    steps = [{"id": name, "agent": "slow"} for name in ("a", "b", "c")]
    run = await harness.run({"id": "wf_eager", "name": "eager", "version": 1, "steps": steps})
    # Before any wake-up or claim could happen, two steps are running and leased to the worker.
    assert sorted(step.status for step in run.steps) == [StepStatus.PENDING, StepStatus.RUNNING, StepStatus.RUNNING]
    assert worker.in_flight == 2
    finished = await harness.wait(run.id)
    assert finished.status is RunStatus.SUCCEEDED
    assert len(harness.agent.received("/latency")) == 3
    assert worker.in_flight == 0


async def test_a_stopping_worker_takes_nothing_at_start(harness: Harness) -> None:
    harness.register("echo", "/echo")
    [stopping] = await harness.start_workers(1)
    await stopping.stop(grace=0)
    assert stopping.reserve(5) == 0
    run = await harness.run(chain(1, "echo"))
    assert [step.status for step in run.steps] == [StepStatus.PENDING]
    await harness.start_workers(1)
    assert (await harness.wait(run.id)).status is RunStatus.SUCCEEDED


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
async def pg_notifiers(postgres_database: str) -> AsyncIterator[tuple[PostgresNotifier, PostgresNotifier]]:
    first = PostgresNotifier(_asyncpg_dsn(postgres_database), channel_prefix="t_notify")
    second = PostgresNotifier(_asyncpg_dsn(postgres_database), channel_prefix="t_notify")
    await first.start()
    await second.start()
    yield first, second
    await first.close()
    await second.close()


async def test_in_process_notifier_delivers_and_unsubscribes() -> None:
    notifier = InProcessNotifier()
    got: list[str] = []
    unsubscribe = notifier.subscribe(TASKS_TOPIC, got.append)
    await notifier.publish([(TASKS_TOPIC, "a"), (EVENTS_TOPIC, "b")])
    await asyncio.sleep(0)
    unsubscribe()
    await notifier.publish([(TASKS_TOPIC, "c")])
    await asyncio.sleep(0)
    assert got == ["a"]


async def test_postgres_notify_reaches_other_processes_once(
    pg_notifiers: tuple[PostgresNotifier, PostgresNotifier],
) -> None:
    first, second = pg_notifiers
    at_first: list[str] = []
    at_second: list[str] = []
    first.subscribe(EVENTS_TOPIC, at_first.append)
    second.subscribe(EVENTS_TOPIC, at_second.append)
    await first.publish([(EVENTS_TOPIC, "ten run 1"), (EVENTS_TOPIC, "ten run 2")])
    for _ in range(100):
        if len(at_second) == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert at_second == ["ten run 1", "ten run 2"]
    assert at_first == ["ten run 1", "ten run 2"], "local delivery happens once, echoes are dropped"


@pytest.fixture
async def pg_engine_db(postgres_database: str) -> AsyncIterator[tuple[Database, str]]:
    """A migrated execution_svc schema on PostgreSQL only, and its schema name."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = db.create_engine(postgres_database, schema=schema, sqlite_path=Path("unused"), pool_size=5)
    await db.migrate(engine, migrations=Path(MIGRATIONS), schema=schema)
    database = Database(engine)
    yield database, schema
    await database.drain()
    await engine.dispose()


async def test_a_worker_in_another_process_wakes_on_notify(
    pg_engine_db: tuple[Database, str], postgres_database: str, test_agent: TestAgent
) -> None:
    database, schema = pg_engine_db
    dsn = _asyncpg_dsn(postgres_database)
    api_side = PostgresNotifier(dsn, channel_prefix=schema)
    worker_side = PostgresNotifier(dsn, channel_prefix=schema)
    await api_side.start()
    await worker_side.start()
    directory = InMemoryAgentDirectory()
    directory.register(TENANT, AgentEndpoint(name="echo", url=test_agent.url("/echo"), headers={}))
    executor = HttpStepExecutor(directory)
    api = ExecutionEngine(database, api_side)
    # A fallback poll far beyond the test's patience: only a notification can wake it.
    worker = Worker(ExecutionEngine(database, worker_side), executor, config=replace(FAST_WORKER, idle_poll_seconds=60))
    await worker.start()
    try:
        await asyncio.sleep(0.2)  # the worker is asleep on an empty queue
        run = await api.start_run(TENANT, chain(2, "echo"), None)
        async for event in api.watch_run(TENANT, run.id):
            last = event
        assert last.type == "workflow.completed"
        assert len(test_agent.received("/echo")) == 2
    finally:
        await worker.stop(grace=0)
        await executor.close()
        await api_side.close()
        await worker_side.close()
