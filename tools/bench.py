"""`make bench`: FlowForge's execution engine on PostgreSQL, measured the way it runs in production.

The engine, its workers and the PostgreSQL LISTEN/NOTIFY notifier run in this process against a
throw-away database (`flowforge_bench_<random>`, created and dropped through the admin DSN
`FLOWFORGE_BENCH_PG_ADMIN`, default `postgresql://127.0.0.1:5432/postgres`). Every step result
and event is committed as in production. The test agent (`tests/fixtures/test_agent.py`) runs
in a child process so that it does not share the engine's event loop. Prints one table.

Workloads (issue 4, "Benchmarks"):
  W0  one run of 40 sequential agent steps, agent latency 10 ms: total s, per-step overhead
  W1  one run, `for_each` over 1,000 items of a `transform` step: s
  W2  1,000 runs of a 3-step `transform` chain started at once: steps/s, run latency
  W3  500 concurrent runs of one agent step at 50 ms: steps/s, agent concurrency reached
Peers (`tools/bench_peers.py`, run as a child process after FlowForge's workloads): the W0,
W1 and W2 shapes on Celery with a Redis broker (non-durable) and on pgqueuer (durable jobs on
the same PostgreSQL); each peer cell shows the peer's figure and how many times FlowForge's is
better (x2.0: twice as fast; x0.5: half as fast). DBOS's column holds the figures published in
issue 4 (not re-run). W4 (SSE subscribers) and W5 (edge req/s) are measured by
`tools/bench_edge.py` on the whole stack (`--only W4,W5`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "generated")]

from execution_svc.db.session import Database  # noqa: E402
from execution_svc.domain.ports import EVENTS_TOPIC, AgentEndpoint  # noqa: E402
from execution_svc.domain.service import EngineConfig, ExecutionEngine  # noqa: E402
from execution_svc.domain.worker import Worker, WorkerConfig  # noqa: E402
from execution_svc.executors.directory import InMemoryAgentDirectory  # noqa: E402
from execution_svc.executors.guard import AgentGuard, GuardConfig  # noqa: E402
from execution_svc.executors.http import HttpStepExecutor  # noqa: E402
from execution_svc.notify import PostgresNotifier  # noqa: E402
from execution_svc.server import MIGRATIONS  # noqa: E402
from execution_svc.settings import ExecutionSettings  # noqa: E402
from flowforge_common import db  # noqa: E402
from flowforge_common.orm import utcnow  # noqa: E402
from flowforge_common.runtime import tune_gc  # noqa: E402
from tests.fixtures.databases import admin_sql  # noqa: E402
from tests.fixtures.ports import free_port  # noqa: E402

ADMIN_DSN = os.environ.get("FLOWFORGE_BENCH_PG_ADMIN", "postgresql://127.0.0.1:5432/postgres")
TENANT = "ten_bench"
SCHEMA = "execution"
FINISHED = ("succeeded", "failed", "cancelled")

# What the bench configures, printed under the table (production defaults otherwise).
WORKERS = 1
WORKER_CONCURRENCY = 512
CLAIM_BATCH = 256
POOL_SIZE = 10


@dataclass
class Row:
    """One line of the table."""

    workload: str
    metric: str
    value: str
    target: str = ""
    peers: tuple[str, str, str] = ("", "", "")
    # Which peer figure (bench_peers.py's workload key) this row compares, and whether
    # higher is better (steps/s) or lower (seconds).
    compare: str = ""
    higher_is_better: bool = False
    number: float = 0.0


@dataclass
class Bench:
    """The engine under test and its helpers."""

    engine: ExecutionEngine
    agent_url: str
    dsn: str
    directory: InMemoryAgentDirectory
    rows: list[Row] = field(default_factory=list)
    # perf_counter() of the last event notification of each run: published right after the
    # commit, so it marks when the run's last change became durable.
    committed: dict[str, float] = field(default_factory=dict)

    def on_event(self, payload: str) -> None:
        parts = payload.split(" ")
        if len(parts) == 3:
            self.committed[parts[1]] = time.perf_counter()

    async def finished(self, run_ids: list[str], *, within: float) -> list[float]:
        """Waits until every run succeeded; returns when each one's final commit happened."""
        await self.finished_at(run_ids, within=within)
        await asyncio.sleep(0.05)  # the last notifications are delivered on the loop
        return [self.committed[run_id] for run_id in run_ids]

    async def finished_at(self, run_ids: list[str], *, within: float) -> list[tuple[str, dt.datetime, dt.datetime]]:
        """Waits until every run is finished; returns (status, created_at, completed_at) each.
        Polls a separate connection; timings come from the rows, so the poll interval does
        not blur them."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f"SET search_path = {SCHEMA}")
            deadline = time.monotonic() + within
            while True:
                done = await conn.fetchval(
                    "SELECT count(*) FROM runs WHERE id = ANY($1::text[]) AND status = ANY($2::text[])",
                    run_ids,
                    list(FINISHED),
                )
                if done == len(run_ids):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {done} of {len(run_ids)} runs finished within {within}s")
                await asyncio.sleep(0.01)
            rows = await conn.fetch(
                "SELECT status, created_at, completed_at FROM runs WHERE id = ANY($1::text[])", run_ids
            )
        finally:
            await conn.close()
        bad = [r["status"] for r in rows if r["status"] != "succeeded"]
        if bad:
            raise RuntimeError(f"{len(bad)} runs did not succeed: {bad[:5]}")
        return [(r["status"], r["created_at"], r["completed_at"]) for r in rows]

    async def agent_stats(self) -> dict[str, Any]:
        return await asyncio.to_thread(_get_json, f"{self.agent_url}/_stats")


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _chain(kind: str, length: int, **extra: Any) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for i in range(length):
        step: dict[str, Any] = {"id": f"s{i}", **extra}
        if kind == "agent":
            step["agent"] = "lat"
        else:
            step["type"] = "transform"
        step["input"] = {"i": i} if i == 0 else {"i": i, "prev": f"{{{{ steps.s{i - 1}.output.i }}}}"}
        if i:
            step["depends_on"] = [f"s{i - 1}"]
        steps.append(step)
    return {"id": f"wf_{kind}_{length}", "name": "bench", "version": 1, "steps": steps, "output": "{{ steps }}"}


# --- workloads ----------------------------------------------------------------------------------


async def w0(bench: Bench, repeats: int) -> None:
    """40 sequential agent steps at 10 ms: total seconds and per-step overhead."""
    totals: list[float] = []
    overheads: list[float] = []
    workflow = _chain("agent", 40)
    for _ in range(repeats):
        began = utcnow()
        started = time.perf_counter()
        run = await bench.engine.start_run(TENANT, workflow, None)
        [done] = await bench.finished([run.id], within=60)
        totals.append(done - started)
        events = await bench.engine.list_events(TENANT, run.id, limit=10_000)
        previous = began
        for event in events:
            if event.type == "workflow.step.completed":
                # The cycle from the previous completion to this one, less the agent's 10 ms.
                overheads.append((event.timestamp - previous).total_seconds() * 1000 - 10)
                previous = event.timestamp
    total = statistics.median(totals)
    bench.rows += [
        Row("W0 40 sequential agent steps (10 ms)", f"total s (median of {repeats})", f"{total:.3f}", "<= 0.55",
            ("", "", "0.65"), compare="W0", number=total),
        Row("", "per-step overhead p50 ms", f"{_pct(overheads, 50):.1f}", "<= 3"),
        Row("", "per-step overhead p99 ms", f"{_pct(overheads, 99):.1f}", "<= 10"),
    ]


async def w1(bench: Bench, repeats: int) -> None:
    """One run, for_each over 1,000 items of a transform step."""
    workflow = {
        "id": "wf_fanout",
        "name": "fanout",
        "version": 1,
        "steps": [
            {"id": "each", "type": "transform", "for_each": "{{ input.items }}", "input": {"n": "{{ item }}"},
             "max_concurrency": 1000},
        ],
        "output": "{{ steps.each.output }}",
    }
    items = list(range(1000))
    totals: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        run = await bench.engine.start_run(TENANT, workflow, {"items": items})
        [done] = await bench.finished([run.id], within=120)
        totals.append(done - started)
    bench.rows.append(
        Row("W1 for_each over 1,000 transform items", f"s (median of {repeats})",
            f"{statistics.median(totals):.3f}", "<= 0.25", ("", "", "4.9"), compare="W1",
            number=statistics.median(totals))
    )


async def w2(bench: Bench, runs: int) -> None:
    """1,000 runs of a 3-step transform chain started at once."""
    workflow = _chain("transform", 3)
    issued: dict[str, float] = {}

    async def one() -> str:
        sent = time.perf_counter()
        run = await bench.engine.start_run(TENANT, workflow, None)
        issued[run.id] = sent
        return run.id

    started = time.perf_counter()
    run_ids = list(await asyncio.gather(*[one() for _ in range(runs)]))
    done = await bench.finished(run_ids, within=300)
    elapsed = max(done) - started
    latencies = [end - issued[run_id] for run_id, end in zip(run_ids, done, strict=True)]
    bench.rows += [
        Row(f"W2 {runs:,} runs x 3 transform steps at once", "durable steps/s", f"{3 * runs / elapsed:,.0f}",
            ">= 2,000", ("", "", "180"), compare="W2", higher_is_better=True, number=3 * runs / elapsed),
        Row("", "run latency p50 ms", f"{_pct(latencies, 50) * 1000:.0f}"),
        Row("", "run latency p99 ms", f"{_pct(latencies, 99) * 1000:.0f}"),
    ]


async def w3(bench: Bench, runs: int) -> None:
    """500 concurrent runs whose one step calls the agent at 50 ms."""
    bench.directory.register(TENANT, AgentEndpoint(name="slow", url=f"{bench.agent_url}/latency?ms=50", headers={}))
    workflow = {"id": "wf_slow", "name": "slow", "version": 1, "steps": [{"id": "call", "agent": "slow"}]}
    await asyncio.to_thread(_get_json, f"{bench.agent_url}/_reset")
    started = time.perf_counter()
    run_ids = await asyncio.gather(*[bench.engine.start_run(TENANT, workflow, None) for _ in range(runs)])
    done = await bench.finished([r.id for r in run_ids], within=300)
    elapsed = max(done) - started
    stats = await bench.agent_stats()
    bench.rows += [
        Row(f"W3 {runs} concurrent runs, agent 50 ms", f"steps/s (ideal {runs / 0.05:,.0f})",
            f"{runs / elapsed:,.0f}", "-> 10,000"),
        Row("", "s for all runs", f"{elapsed:.3f}"),
        Row("", "agent concurrency reached", str(stats["max_in_flight"].get("/latency", 0)), "-> 500"),
    ]


# --- setup ----------------------------------------------------------------------------------------


def serve_agent(port: int) -> None:
    """Child process: the test agent plus `/_stats` and `/_reset`."""
    from aiohttp import web

    from tests.fixtures.test_agent import TestAgent, build_app

    agent = TestAgent()
    app = build_app(agent)

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({"max_in_flight": dict(agent.max_in_flight), "requests": len(agent.requests)})

    async def reset(_request: web.Request) -> web.Response:
        agent.max_in_flight.clear()
        agent.requests.clear()
        agent.calls_per_key.clear()
        return web.json_response({})

    app.router.add_get("/_stats", stats)
    app.router.add_get("/_reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, backlog=2048)


def start_agent() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve-agent", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            _get_json(f"{url}/_stats")
            return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("test agent did not start")


async def run_bench(args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """FlowForge's engine workloads, then (with the engine stopped, the test agent still up)
    the peers' W0-W2 shapes: the rows and the peers' report."""
    name = f"flowforge_bench_{uuid.uuid4().hex[:10]}"
    await admin_sql(ADMIN_DSN, f'CREATE DATABASE "{name}"')
    dsn = f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    agent_process, agent_url = start_agent()
    try:
        engine = db.create_engine(dsn, schema=SCHEMA, sqlite_path=Path("unused"), pool_size=POOL_SIZE)
        await db.migrate(engine, migrations=MIGRATIONS, schema=SCHEMA)
        database = Database(engine)
        notifier = PostgresNotifier(dsn, channel_prefix=SCHEMA)
        await notifier.start()
        execution = ExecutionEngine(database, notifier, config=EngineConfig())
        directory = InMemoryAgentDirectory()
        directory.register(TENANT, AgentEndpoint(name="lat", url=f"{agent_url}/latency?ms=10", headers={}))
        # The per-agent cap would otherwise bound W3 at its default (64): W3 measures the engine.
        executor = HttpStepExecutor(directory, guard=AgentGuard(GuardConfig(max_in_flight_per_agent=1024)))
        await executor.start()
        workers = [
            Worker(execution, executor, config=WorkerConfig(concurrency=WORKER_CONCURRENCY, claim_batch=CLAIM_BATCH))
            for _ in range(WORKERS)
        ]
        for worker in workers:
            await worker.start()
        tune_gc(ExecutionSettings().gc_threshold)  # as `python -m execution_svc` does once started
        bench = Bench(execution, agent_url, dsn, directory)
        notifier.subscribe(EVENTS_TOPIC, bench.on_event)
        try:
            # Warm-up: connections, statement caches, the agent's keep-alive pool.
            warm = await execution.start_run(TENANT, _chain("agent", 3), None)
            await bench.finished_at([warm.id], within=30)
            warm = await execution.start_run(TENANT, _chain("transform", 3), None)
            await bench.finished_at([warm.id], within=30)
            selected = set(args.only.split(",")) if args.only else {"W0", "W1", "W2", "W3"}
            steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("W0", lambda: w0(bench, args.repeats)),
                ("W1", lambda: w1(bench, args.repeats)),
                ("W2", lambda: w2(bench, args.runs)),
                ("W3", lambda: w3(bench, 500)),
            ]
            for key, step in steps:
                if key in selected:
                    print(f"running {key} ...", file=sys.stderr, flush=True)
                    await step()
                    await asyncio.sleep(0.5)  # let the tail (notifications, reaper) settle
        finally:
            for worker in workers:
                await worker.stop(grace=1)
            await executor.close()
            await notifier.close()
            await database.drain()
            await engine.dispose()
        peers: dict[str, Any] = {}
        compared = [key for key in ("W0", "W1", "W2") if key in selected]
        if compared and not args.no_peers:
            print("running the peers (Celery+Redis, pgqueuer) ...", file=sys.stderr, flush=True)
            peers = await asyncio.to_thread(run_peers, compared, args.repeats, args.runs, agent_url)
        return bench.rows, peers
    finally:
        agent_process.terminate()
        agent_process.wait(10)
        await admin_sql(ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_edge(parts: list[str], subscribers: int) -> list[Row]:
    """tools/bench_edge.py (the whole stack: four processes, SSE and HTTP clients in child
    processes) for W4 and W5: its rows."""
    command = [sys.executable, str(ROOT / "tools" / "bench_edge.py"), "--only", ",".join(parts),
               "--subscribers", str(subscribers), "--search"]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
        report: dict[str, Any] = json.loads(done.stdout)
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        print(f"W4/W5 not measured: {exc}", file=sys.stderr)
        return [Row("W4/W5", "not measured", str(exc)[:60])]

    def ms(value: Any, digits: int = 1) -> str:
        return f"{value:.{digits}f}" if isinstance(value, int | float) else f"failed: {value!r}"

    rows: list[Row] = []
    if "W4" in parts:
        w4 = report.get("W4") or {}
        detail = w4.get("detail") or {}
        rows += [
            Row(f"W4 {w4.get('subscribers', subscribers):,} SSE subscribers, {detail.get('runs', '?')} live runs",
                "commit-to-client p50 ms", ms(w4.get("p50_ms")), "<= 10"),
            Row("", "commit-to-client p99 ms", ms(w4.get("p99_ms")), "<= 50"),
            Row("", "events delivered (missing, gaps)",
                f"{w4.get('events')} ({detail.get('events_missing_at_end')}, {detail.get('seq_gaps')})"),
            Row("", "edge KiB per connection", ms(w4.get("edge_kib_per_conn"))),
        ]
    if "W5" in parts:
        w5 = report.get("W5") or {}
        cores = os.cpu_count() or 1
        for key, label, slo in (("start", "start runs (POST execute)", 30), ("read", "read runs (GET run)", 20)):
            part = w5.get(key) or {}
            within = (part.get("detail") or {}).get("within_slo") or {}
            target = part.get("target_rps") or 0
            rate = f"{target:,.0f} req/s (achieved {part.get('achieved_rps')})"
            rows += [
                Row(f"W5 {label}", f"p99 ms at {rate}", ms(part.get("p99_ms")), f"<= {slo}"),
                Row("", f"highest req/s with p99 <= {slo} ms", f"{within.get('rps', 'n/a')}", f"{target:,.0f}"),
                Row("", f"machine CPU ms per request (all processes) vs {cores} cores at target",
                    ms(part.get("cpu_ms_per_request"), 2), f"< {cores * 1000 / target:.2f}" if target else ""),
            ]
        bare = w5.get("floor") or {}
        if bare:
            rows += [
                Row("W5 floor: bare aiohttp -> grpc.aio hop", f"p99 ms at {bare.get('target_rps', 0):,.0f} req/s "
                    f"(achieved {bare.get('achieved_rps')})", ms(bare.get("p99_ms")), "<= 20"),
                Row("(no auth, no database, no mapping)", "machine CPU ms per request (all processes)",
                    ms(bare.get("cpu_ms_per_request"), 2)),
            ]
    return rows


def run_peers(workloads: list[str], repeats: int, runs: int, agent_url: str) -> dict[str, Any]:
    """tools/bench_peers.py as a child process (Celery's client blocks its thread): its JSON.
    W0's peer steps call the same test agent as FlowForge's agent steps."""
    command = [sys.executable, str(ROOT / "tools" / "bench_peers.py"), "--workloads", ",".join(workloads),
               "--repeats", str(repeats), "--runs", str(runs), "--agent-url", f"{agent_url}"]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
        report: dict[str, Any] = json.loads(done.stdout)
        return report
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
        print(f"peers not measured: {exc}", file=sys.stderr)
        return {}


def fill_peers(rows: list[Row], report: dict[str, Any]) -> list[str]:
    """Puts each peer's figure, and FlowForge's advantage over it, into the rows it compares;
    returns the peers' setup notes and errors."""
    notes: list[str] = []
    for column, peer in enumerate(("celery", "pgqueuer")):
        measured = report.get(peer) or {}
        for row in rows:
            if not row.compare:
                continue
            value = measured.get(row.compare)
            cells = list(row.peers)
            if not isinstance(value, int | float) or value <= 0:
                cells[column] = "failed" if measured else "not run"
            else:
                ratio = row.number / value if row.higher_is_better else value / row.number
                figure = f"{value:,.0f}" if row.higher_is_better else f"{value:.3f}"
                cells[column] = f"{figure} (x{ratio:.1f})"
            row.peers = (cells[0], cells[1], cells[2])
        if measured.get("setup"):
            notes.append(f"{peer}: {measured['setup']}")
        if measured.get("error"):
            notes.append(f"{peer} errors: {measured['error']}")
    return notes


def render(rows: list[Row], notes: list[str]) -> str:
    headers = ("workload", "metric", "FlowForge", "target", "Celery+Redis", "pgqueuer", "DBOS*")
    table = [headers] + [(r.workload, r.metric, r.value, r.target, *r.peers) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(cells) for cells in table[1:]]
    out.append(
        "Peer cells: the peer's figure, measured by this command on this machine, and (xN) how many times "
        "FlowForge's is better (below 1: worse). * DBOS: the figures published in issue 4 (not re-run)."
    )
    out += notes
    out.append(
        f"Setup: PostgreSQL backend, {WORKERS} worker x concurrency {WORKER_CONCURRENCY} (claims of {CLAIM_BATCH}), "
        f"pool {POOL_SIZE}+{POOL_SIZE}, "
        f"PostgresNotifier, test agent in a child process; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{dt.date.today().isoformat()}."  # noqa: DTZ011
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W0,W2")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of W0 and W1 (median reported)")
    parser.add_argument("--runs", type=int, default=1000, help="runs of W2")
    parser.add_argument("--no-peers", action="store_true", help="skip the peers (Celery, pgqueuer)")
    parser.add_argument("--subscribers", type=int, default=2000, help="W4 SSE subscribers")
    parser.add_argument("--serve-agent", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_agent:
        serve_agent(args.serve_agent)
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    wanted = set(args.only.split(",")) if args.only else {"W0", "W1", "W2", "W3", "W4", "W5"}
    rows: list[Row] = []
    notes: list[str] = []
    if wanted & {"W0", "W1", "W2", "W3"}:
        rows, peers = asyncio.run(run_bench(args))
        if peers:
            notes = fill_peers(rows, peers)
    edge_parts = sorted(wanted & {"W4", "W5"})
    if edge_parts:
        print(f"running {', '.join(edge_parts)} on the whole stack ...", file=sys.stderr, flush=True)
        rows += run_edge(edge_parts, args.subscribers)
    print(render(rows, notes))


if __name__ == "__main__":
    main()
