"""Crash tests: real `python -m execution_svc` processes sharing one PostgreSQL database.

- Two processes, 200 runs in flight, one process SIGKILLed mid-run: every run still succeeds,
  each step's result is recorded once, and every run's events are gap-free.
- A process SIGSTOPped past its lease, then resumed, cannot commit its stale result.

The runs are started by an engine in the test process (no worker of its own) that writes to
the same database and wakes the processes with NOTIFY, as the API side of a deployment does.
The database is one of its own, with `idle_in_transaction_session_timeout` set, so that a
process frozen inside a transaction cannot hold its locks forever.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from execution_svc.db.session import Database
from execution_svc.domain.service import ExecutionEngine
from execution_svc.notify import PostgresNotifier
from execution_svc.server import MIGRATIONS
from flowforge_common import db
from tests.e2e.conftest import ROOT
from tests.fixtures.databases import ADMIN_DSN, _unavailable
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.e2e

TENANT = "ten_crash"
SCHEMA = "execution"


@dataclass
class Agent:
    """An agent over loopback: step attempts sleep `delay_ms`, except those the test holds."""

    url: str = ""
    delay_ms: float = 0
    # Attempt numbers answered only after this many extra seconds (the fencing test's slow first).
    slow_attempts: dict[int, float] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    state = Agent()

    async def step(request: web.Request) -> web.Response:
        body = await request.json()
        state.received.append(body)
        state.in_flight += 1
        try:
            await asyncio.sleep(state.delay_ms / 1000 + state.slow_attempts.get(int(body["attempt"]), 0))
        finally:
            state.in_flight -= 1
        return web.json_response({"output": {"step": body["step_id"], "attempt": body["attempt"]}})

    app = web.Application()
    app.router.add_post("/step", step)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    assert site._server is not None and site._server.sockets
    state.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/step"
    yield state
    await runner.cleanup()


@pytest.fixture
def crash_database() -> Iterator[str]:
    """A database of its own, dropped afterwards."""
    name = f"ff_crash_{uuid.uuid4().hex[:10]}"

    async def admin(*sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=10)
        try:
            for statement in sql:
                await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(
            admin(
                f'CREATE DATABASE "{name}"',
                # A process stopped inside a transaction loses it (and its locks) after 3 s.
                f"ALTER DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '3s'",
            )
        )
    except (OSError, asyncpg.PostgresError) as exc:
        _unavailable("PostgreSQL", exc)
    yield f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Cluster:
    """execution_svc processes on one database, and an engine to start runs with."""

    dsn: str
    data_dir: Path
    agent: Agent
    engine: ExecutionEngine
    processes: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start_process(self, **settings: str) -> subprocess.Popen[bytes]:
        """Starts `python -m execution_svc`; returns once it serves gRPC."""
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWFORGE_") and k not in {"DATABASE_URL"}}
        env.update(
            DATABASE_URL=self.dsn,
            FLOWFORGE_DB_SCHEMA=SCHEMA,
            FLOWFORGE_DATA_DIR=str(self.data_dir),
            FLOWFORGE_AGENT_NETWORK="allow-private",
            FLOWFORGE_EXECUTION_PORT=str(port),
            FLOWFORGE_AUTH_TARGET=f"127.0.0.1:{free_port()}",
            FLOWFORGE_WORKFLOW_TARGET=f"127.0.0.1:{free_port()}",
            FLOWFORGE_EXECUTION_STATIC_AGENTS=json.dumps({"worker": self.agent.url}),
            FLOWFORGE_EXECUTION_SHUTDOWN_GRACE_SECONDS="1",
            PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "generated")]),
            **{f"FLOWFORGE_EXECUTION_{key.upper()}": value for key, value in settings.items()},
        )
        log = self.data_dir / f"execution-{len(self.processes)}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "execution_svc"], env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
            )
        self.processes.append((process, log))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"execution_svc exited with {process.returncode}:\n{log.read_text()}")
            with socket.socket() as sock:
                sock.settimeout(0.2)
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return process
            time.sleep(0.1)
        raise RuntimeError(f"execution_svc did not start:\n{log.read_text()}")

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        return next(log for p, log in self.processes if p is process).read_text()

    def stop_all(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process, _ in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn, server_settings={"search_path": SCHEMA})
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def wait_finished(self, run_ids: list[str], within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            rows = await self.query(
                "SELECT count(*) AS n FROM runs WHERE id = ANY($1::text[]) "
                "AND status IN ('succeeded', 'failed', 'cancelled')",
                run_ids,
            )
            if rows[0]["n"] == len(run_ids):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"only {rows[0]['n']} of {len(run_ids)} runs finished within {within}s")
            await asyncio.sleep(0.2)

    async def check_history(self, run_ids: list[str], steps: list[str]) -> None:
        """Every run succeeded; each step succeeded once, in one attempt row, with one
        completion event; every run's events are numbered 1..n."""
        statuses = await self.query("SELECT id, status, error FROM runs WHERE id = ANY($1::text[])", run_ids)
        failed = [dict(r) for r in statuses if r["status"] != "succeeded"]
        assert len(statuses) == len(run_ids) and not failed, failed
        seqs = await self.query(
            "SELECT run_id, array_agg(seq ORDER BY seq) AS seqs FROM events WHERE run_id = ANY($1::text[]) "
            "GROUP BY run_id",
            run_ids,
        )
        assert len(seqs) == len(run_ids)
        for row in seqs:
            assert list(row["seqs"]) == list(range(1, len(row["seqs"]) + 1)), f"gap in {row['run_id']}: {row['seqs']}"
        completions = await self.query(
            "SELECT run_id, step_id, count(*) AS n, count(DISTINCT data->>'attempt') AS attempts FROM events "
            "WHERE run_id = ANY($1::text[]) AND type = 'workflow.step.completed' GROUP BY run_id, step_id",
            run_ids,
        )
        assert len(completions) == len(run_ids) * len(steps)
        assert {(r["n"], r["attempts"]) for r in completions} == {(1, 1)}, "a step result was recorded twice"
        started = await self.query(
            "SELECT run_id, step_id, data->>'attempt' AS attempt, count(*) AS n FROM events "
            "WHERE run_id = ANY($1::text[]) AND type = 'workflow.step.started' GROUP BY 1, 2, 3 HAVING count(*) > 1",
            run_ids,
        )
        assert started == [], "an attempt was started twice"
        succeeded = await self.query(
            "SELECT run_id, step_id, count(*) AS n FROM step_attempts WHERE run_id = ANY($1::text[]) "
            "AND status = 'succeeded' GROUP BY run_id, step_id",
            run_ids,
        )
        assert len(succeeded) == len(run_ids) * len(steps)
        assert {r["n"] for r in succeeded} == {1}
        outputs = await self.query(
            "SELECT s.run_id, s.step_id, s.output, a.attempt FROM run_steps s JOIN step_attempts a "
            "ON a.run_id = s.run_id AND a.step_id = s.step_id AND a.status = 'succeeded' "
            "WHERE s.run_id = ANY($1::text[])",
            run_ids,
        )
        for row in outputs:
            # The recorded output is the one of the attempt recorded as the successful one.
            assert json.loads(row["output"]) == {"step": row["step_id"], "attempt": row["attempt"]}
        assert await self.query("SELECT id FROM tasks WHERE run_id = ANY($1::text[])", run_ids) == []


@pytest.fixture
async def cluster(crash_database: str, agent: Agent, tmp_path: Path) -> AsyncIterator[Cluster]:
    engine = db.create_engine(crash_database, schema=SCHEMA, sqlite_path=tmp_path / "unused.db", pool_size=5)
    await db.migrate(engine, migrations=MIGRATIONS, schema=SCHEMA)
    notifier = PostgresNotifier(crash_database, channel_prefix=SCHEMA)
    await notifier.start()
    running = Cluster(crash_database, tmp_path, agent, ExecutionEngine(Database(engine), notifier))
    try:
        yield running
    finally:
        await asyncio.to_thread(running.stop_all)
        await notifier.close()
        await engine.dispose()


def chain(steps: list[str]) -> dict[str, Any]:
    return {
        "id": "wf_crash",
        "name": "crash",
        "version": 1,
        "steps": [
            {"id": step, "agent": "worker", "input": {"n": i}, **({"depends_on": [steps[i - 1]]} if i else {})}
            for i, step in enumerate(steps)
        ],
        "output": "{{ steps }}",
    }


async def test_a_process_killed_mid_run_loses_nothing_and_records_nothing_twice(
    cluster: Cluster, agent: Agent
) -> None:
    agent.delay_ms = 150
    # Short leases so the survivor takes over soon; generous next to the heartbeat, for a
    # loaded 2-core machine.
    timings = {"lease_seconds": "4", "heartbeat_seconds": "0.5", "reap_seconds": "0.5", "idle_poll_seconds": "1"}
    doomed = cluster.start_process(**timings)
    survivor = cluster.start_process(**timings)
    steps = ["fetch", "enrich", "store"]
    runs = await asyncio.gather(*[cluster.engine.start_run(TENANT, chain(steps), None) for _ in range(200)])
    run_ids = [run.id for run in runs]

    # Mid-run: results are being recorded and both processes have attempts in flight.
    for _ in range(1500):
        if len(agent.received) >= 150:
            break
        await asyncio.sleep(0.02)
    assert agent.in_flight > 0, "nothing in flight to kill"
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)

    await cluster.wait_finished(run_ids, within=60)
    await cluster.check_history(run_ids, steps)
    lost = await cluster.query(
        "SELECT count(*) AS n FROM step_attempts WHERE run_id = ANY($1::text[]) AND error->>'code' = 'LEASE_EXPIRED'",
        run_ids,
    )
    assert lost[0]["n"] > 0, "the killed process held attempts that went back to the queue"
    assert survivor.poll() is None, cluster.log_of(survivor)


async def test_a_process_stopped_past_its_lease_cannot_commit_its_stale_result(
    cluster: Cluster, agent: Agent
) -> None:
    timings = {"lease_seconds": "2", "heartbeat_seconds": "0.5", "reap_seconds": "0.3", "idle_poll_seconds": "1"}
    # The first attempt answers after 1 s: by then its process is frozen, and the answer waits
    # in its socket for when it wakes up.
    agent.slow_attempts = {1: 1.0}
    frozen = cluster.start_process(**timings)
    run = await cluster.engine.start_run(TENANT, chain(["charge", "notify"]), None)
    for _ in range(3000):
        if agent.received:
            break
        await asyncio.sleep(0.01)
    assert agent.received, cluster.log_of(frozen)
    frozen.send_signal(signal.SIGSTOP)
    try:
        # Another process takes the expired lease over and finishes the run.
        cluster.start_process(**timings)
        await cluster.wait_finished([run.id], within=40)
        before = await cluster.query("SELECT seq, type FROM events WHERE run_id = $1 ORDER BY seq", run.id)
    finally:
        frozen.send_signal(signal.SIGCONT)
    # The frozen process wakes with attempt 1's answer in hand and a lease that is long gone:
    # heartbeat and commit are both refused. Give it time to try.
    deadline = time.monotonic() + 20
    log = ""
    while time.monotonic() < deadline:
        log = cluster.log_of(frozen)
        if "result refused" in log or "lease lost" in log:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    assert "result refused" in log or "lease lost" in log, log

    after = await cluster.query("SELECT seq, type FROM events WHERE run_id = $1 ORDER BY seq", run.id)
    assert after == before, "the stale worker changed the run's history"
    await cluster.check_history([run.id], ["charge", "notify"])
    attempts = await cluster.query(
        "SELECT attempt, status, error->>'code' AS code FROM step_attempts WHERE run_id = $1 AND step_id = 'charge' "
        "ORDER BY attempt",
        run.id,
    )
    assert [(a["attempt"], a["status"], a["code"]) for a in attempts] == [
        (1, "failed", "LEASE_EXPIRED"),
        (2, "succeeded", None),
    ]
    [charge] = await cluster.query("SELECT output FROM run_steps WHERE run_id = $1 AND step_id = 'charge'", run.id)
    assert json.loads(charge["output"]) == {"step": "charge", "attempt": 2}
    assert frozen.poll() is None, log
