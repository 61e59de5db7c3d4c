"""Fixtures of the execution engine tests: a migrated database on each backend, an engine
with fast timings, workers, and the test agent."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from execution_svc.db.session import Database, use_immediate_transactions
from execution_svc.domain.definition import RetryOverrides
from execution_svc.domain.models import EventRecord, RunStatus, RunView
from execution_svc.domain.ports import AgentEndpoint
from execution_svc.domain.service import EngineConfig, ExecutionEngine
from execution_svc.domain.worker import Worker, WorkerConfig
from execution_svc.executors.directory import InMemoryAgentDirectory
from execution_svc.executors.http import HttpStepExecutor
from execution_svc.notify import InProcessNotifier
from execution_svc.server import MIGRATIONS
from flowforge_common import db
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.test_agent import TestAgent, test_agent  # noqa: F401  (fixture)

TENANT = "ten_a"
FAST_WORKER = WorkerConfig(
    concurrency=16, claim_batch=16, heartbeat_seconds=0.2, idle_poll_seconds=0.5, reap_seconds=0.1
)


@pytest.fixture
async def engine_db(database: DatabaseTarget) -> AsyncIterator[Database]:
    """A migrated execution_svc database on the parametrised backend."""
    engine = db.create_engine(
        database.url, schema=database.schema, sqlite_path=database.data_dir / "execution.db", pool_size=5
    )
    use_immediate_transactions(engine)
    await db.migrate(engine, migrations=Path(MIGRATIONS), schema=database.schema)
    database = Database(engine)
    yield database
    await database.drain()
    await engine.dispose()


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 15, 10, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        """Moves time forward."""
        self.now += dt.timedelta(**delta)


@dataclass
class Harness:
    """An engine over a real database, the test agent, and workers on demand."""

    engine: ExecutionEngine
    directory: InMemoryAgentDirectory
    executor: HttpStepExecutor
    agent: TestAgent
    workers: list[Worker] = field(default_factory=list)

    def register(
        self,
        name: str,
        path: str,
        *,
        timeout_ms: int | None = None,
        retry: RetryOverrides | None = None,
        headers: dict[str, str] | None = None,
        **query: Any,
    ) -> None:
        """Registers an agent of the tenant pointing at a test-agent mode."""
        self.directory.register(
            TENANT,
            AgentEndpoint(
                name=name,
                url=self.agent.url(path, **query),
                headers=headers or {},
                timeout_ms=timeout_ms,
                retry=retry or RetryOverrides(initial_delay_ms=10, max_delay_ms=50),
            ),
        )

    async def start_workers(self, count: int = 1, config: WorkerConfig = FAST_WORKER) -> list[Worker]:
        """Starts workers on the shared engine."""
        started = []
        for index in range(count):
            worker = Worker(self.engine, self.executor, worker_id=f"w{len(self.workers) + index}", config=config)
            await worker.start()
            started.append(worker)
        self.workers += started
        return started

    async def run(self, workflow: dict[str, Any], run_input: Any = None, **kwargs: Any) -> RunView:
        """Starts a run of `workflow`."""
        return await self.engine.start_run(TENANT, workflow, run_input, **kwargs)

    async def wait(
        self,
        run_id: str,
        statuses: Iterable[RunStatus] = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED),
        within: float = 10.0,
    ) -> RunView:
        """Waits until the run reaches one of `statuses`."""
        wanted = set(statuses)
        return await self.wait_until(run_id, lambda run: run.status in wanted, within)

    async def wait_until(self, run_id: str, predicate: Callable[[RunView], bool], within: float = 10.0) -> RunView:
        """Polls the run (every 10 ms) until `predicate` holds, for at most `within` seconds."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            run = await self.engine.get_run(TENANT, run_id)
            if predicate(run):
                return run
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting; run is {run.status}: {run}")
            await asyncio.sleep(0.01)

    async def events(self, run_id: str) -> list[EventRecord]:
        """Every event of the run, checked to be gap-free."""
        events = await self.engine.list_events(TENANT, run_id, limit=100_000)
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), "event seqs have gaps"
        return events

    async def event_types(self, run_id: str) -> list[str]:
        """The types of the run's events, in order."""
        return [e.type for e in await self.events(run_id)]


@pytest.fixture
async def harness(engine_db: Database, test_agent: TestAgent) -> AsyncIterator[Harness]:  # noqa: F811
    """An engine with fast timings (2 s leases: short, yet long enough for a loaded 2-core CI box) over
    the parametrised database."""
    notifier = InProcessNotifier()
    engine = ExecutionEngine(
        engine_db, notifier, config=EngineConfig(lease_seconds=2.0, watch_poll_seconds=1.0), rng=random.Random(7)
    )
    directory = InMemoryAgentDirectory()
    executor = HttpStepExecutor(directory)
    await executor.start()
    harness = Harness(engine=engine, directory=directory, executor=executor, agent=test_agent)
    yield harness
    for worker in harness.workers:
        await worker.stop(grace=0)
    await executor.close()
