"""Issue 4's peers, measured by the same command on the same machine as `make bench`.

Runs the W0/W1/W2 shapes of `tools/bench.py` on
  celery    Celery, prefork pool of 2 processes, Redis broker and Redis result backend (non-durable);
  pgqueuer  pgqueuer: raw durable job dispatch on the same PostgreSQL as FlowForge;
and prints ONE JSON object on stdout (progress goes to stderr):

  {"celery": {"W0": s, "W1": s, "W2": steps_per_s, "setup": "..."}, "pgqueuer": {...}}

A workload that failed is null, and the peer then has an "error" string; the script itself
never hangs (every wait has a deadline) and exits 0. Workloads (issue 4, "Benchmarks"):
  W0  one chain of 40 sequential steps, each sleeping 10 ms: total s (median of --repeats)
  W1  fan-out of 1,000 items of a pure transform ({"n": item}), all results collected by the
      submitter: s (median of --repeats)
  W2  --runs (1,000) chains of 3 pure transform steps, started at once: steps/s
      = 3 x runs / seconds until the submitter saw the last chain finish

Self-contained: Celery uses Redis db `FLOWFORGE_BENCH_REDIS` (default redis://127.0.0.1:6379/14;
the test suite's is 15), which is FLUSHDB-ed before and after, and starts its worker as a child process (`celery -A
peer_celery_app worker`); pgqueuer gets a throw-away database `flowforge_peer_<random>`, created
and dropped (even on failure) through the admin DSN `FLOWFORGE_BENCH_PG_ADMIN` (default
postgresql://127.0.0.1:5432/postgres), and its worker runs as a child process (`pgqueuer.run`,
as `pgq run` does), as in production. Needs the `bench` extra: `pip install -c constraints.txt -e '.[dev,bench]'`.
Meant to be run as a program (bench.py can run it as a child and parse its stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import aiohttp
import asyncpg

if TYPE_CHECKING:
    from pgqueuer import QueueManager
    from pgqueuer.queries import Queries

SELF = Path(__file__).resolve()
TOOLS = SELF.parent
ADMIN_DSN = os.environ.get("FLOWFORGE_BENCH_PG_ADMIN", "postgresql://127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FLOWFORGE_BENCH_REDIS", "redis://127.0.0.1:6379/14")
PEERS = ("celery", "pgqueuer")
WORKLOADS = ("W0", "W1", "W2")

# The shapes (issue 4).
W0_STEPS = 40
W0_STEP_MS = 10
W1_ITEMS = 1000
W2_CHAIN = 3

# Deadlines, seconds.
START_WITHIN = 60.0
WITHIN = {"W0": 60.0, "W1": 120.0, "W2": 300.0}
STOP_WITHIN = 15.0
POLL_S = 0.005  # pgqueuer: how often the submitter looks for its results

CELERY_CONCURRENCY = 2
PGQ_POOL = 10  # connections of the pgqueuer worker's job pool, as FlowForge's bench pool
PGQ_SUBMIT_POOL = 10  # connections the submitter enqueues W2's chains through
PGQ_WORKER_DSN_ENV = "FLOWFORGE_PEER_PG_DSN"
# The test agent W0's steps call over HTTP (bench.py passes its own; without one they sleep).
AGENT_URL_ENV = "FLOWFORGE_PEER_AGENT_URL"

RESULTS_DDL = """
CREATE TABLE peer_results (
    batch text NOT NULL,
    run integer NOT NULL,
    step integer NOT NULL,
    output jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (batch, run, step)
)
"""
INSERT_RESULT = "INSERT INTO peer_results (batch, run, step, output) VALUES ($1, $2, $3, $4::jsonb)"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class PeerResult:
    """What one peer reports: a number per workload asked for (None when it failed)."""

    values: dict[str, float | None] = field(default_factory=dict)
    setup: str = ""
    errors: list[str] = field(default_factory=list)

    def fail(self, workloads: list[str], error: str) -> None:
        for workload in workloads:
            self.values.setdefault(workload, None)
        self.errors.append(error)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.values)
        out["setup"] = self.setup
        if self.errors:
            out["error"] = "; ".join(self.errors)
        return out


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _w0_step() -> str:
    if os.environ.get(AGENT_URL_ENV):
        return f"each an HTTP call to the test agent answering after {W0_STEP_MS} ms (as FlowForge's agent steps)"
    return f"each sleeping {W0_STEP_MS} ms"


def _median(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def _steps_per_s(runs: int, elapsed: float) -> float:
    return round(W2_CHAIN * runs / elapsed, 1)


# --- child processes ------------------------------------------------------------------------------


def _spawn(argv: list[str], env: dict[str, str], log_file: IO[bytes]) -> subprocess.Popen[bytes]:
    """Starts a worker in its own process group, so that stopping it also ends its children."""
    return subprocess.Popen(
        argv, cwd=TOOLS, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log_file,
        stderr=subprocess.STDOUT, start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a warm shutdown for both workers), then SIGKILL to the worker's process group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            log(f"worker {process.pid} ignored SIGTERM for {STOP_WITHIN:.0f} s: killing its process group")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # its group: the pool children, if any are left
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def _tail(log_file: IO[bytes], chars: int = 800) -> str:
    log_file.flush()
    text = Path(log_file.name).read_text(errors="replace").strip()
    return text[-chars:] if text else "(no output)"


def _check_alive(process: subprocess.Popen[bytes], log_file: IO[bytes], what: str) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"{what} exited with {process.returncode}: {_tail(log_file)}")


def _gone(process: subprocess.Popen[bytes], workloads: list[str], failed: str, result: PeerResult) -> bool:
    """After a failed workload: when the worker has exited, the ones after it are not run."""
    if process.poll() is None:
        return False
    later = workloads[workloads.index(failed) + 1 :]
    if later:
        result.fail(later, f"not run: {', '.join(later)}")
    return True


class DeadlineError(Exception):
    """A synchronous wait ran out of time."""


@contextlib.contextmanager
def watchdog(seconds: float, what: str, process: subprocess.Popen[bytes], log_file: IO[bytes]) -> Iterator[None]:
    """Bounds a block of blocking calls (the Celery client), in the main thread: a SIGALRM every
    second raises DeadlineError once `seconds` have passed or `process` (the worker) has exited.
    Every Celery call has its own timeout too; this is the backstop, and the early way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    give_up = time.monotonic() + seconds

    def check(_signum: int, _frame: object) -> None:
        if process.poll() is not None:
            raise DeadlineError(f"{what}: the worker exited with {process.returncode}: {_tail(log_file)}")
        if time.monotonic() > give_up:
            raise DeadlineError(f"{what} did not finish within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, check)
    signal.setitimer(signal.ITIMER_REAL, 1.0, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- Celery ---------------------------------------------------------------------------------------


def run_celery(workloads: list[str], repeats: int, runs: int) -> PeerResult:
    result = PeerResult(setup="Celery + Redis (not set up)")
    try:
        import redis
        from celery import chain, group
        from celery.result import ResultSet
    except ImportError as exc:
        result.fail(workloads, f"{_describe(exc)} (install the bench extra: pip install -e '.[bench]')")
        return result

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=10, socket_connect_timeout=5)
    try:
        client.ping()
        info = client.info("server")
        appendonly = client.config_get("appendonly").get("appendonly", "?")
        save = client.config_get("save").get("save", "?")
    except redis.RedisError as exc:
        result.fail(workloads, f"Redis at {REDIS_URL}: {_describe(exc)}")
        client.close()
        return result
    persistence = (
        "no persistence at all" if appendonly == "no" and not save
        else f"appendonly={appendonly}, save='{save}' (asynchronous, no fsync per task)"
    )
    result.setup = (
        f"Celery {version('celery')}, worker = `celery worker --pool=prefork --concurrency={CELERY_CONCURRENCY}` "
        f"(its defaults: prefetch x4, ack on receipt; without gossip/mingle/heartbeat) in a child process; "
        f"Redis {info.get('redis_version', '?')} db {REDIS_URL.rsplit('/', 1)[-1]} as broker and result backend "
        f"({persistence}): NON-DURABLE, a crash loses queued work and results. Records: each task's return value "
        f"in Redis (1 h expiry). Does not record: inputs, events, run state or history, in any database. "
        f"W0 = canvas chain of {W0_STEPS} tasks, {_w0_step()} (the worker sends each next task); "
        f"W1 = group of {W1_ITEMS} transform tasks, submitter collects with GroupResult.get(); "
        f"W2 = {runs} canvas chains of {W2_CHAIN} sent one by one, submitter waits with ResultSet.get(). "
        f"Client and worker on the same machine."
    )

    sys.path.insert(0, str(TOOLS))
    os.environ["FLOWFORGE_PEER_REDIS"] = REDIS_URL  # read by peer_celery_app on import
    try:
        from peer_celery_app import app, step, transform
    except Exception as exc:
        result.fail(workloads, f"importing peer_celery_app: {_describe(exc)}")
        client.close()
        return result

    def w0() -> float:
        samples = []
        for _ in range(repeats):
            work = chain(step.s(None, 0, W0_STEP_MS), *[step.s(i, W0_STEP_MS) for i in range(1, W0_STEPS)])
            started = time.perf_counter()
            output = work.apply_async().get(timeout=WITHIN["W0"])
            samples.append(time.perf_counter() - started)
            if output != {"i": W0_STEPS - 1, "prev": W0_STEPS - 2}:
                raise RuntimeError(f"unexpected W0 output {output!r}")
        return _median(samples)

    def w1() -> float:
        samples = []
        for _ in range(repeats):
            work = group(transform.s(k) for k in range(W1_ITEMS))
            started = time.perf_counter()
            outputs = work.apply_async().get(timeout=WITHIN["W1"])
            samples.append(time.perf_counter() - started)
            if outputs != [{"n": k} for k in range(W1_ITEMS)]:
                raise RuntimeError("W1 outputs are not the 1,000 transforms")
            time.sleep(0.5)
        return _median(samples)

    def w2() -> float:
        started = time.perf_counter()
        handles = [
            chain(step.s(None, 0, 0), *[step.s(i, 0) for i in range(1, W2_CHAIN)]).apply_async()
            for _ in range(runs)
        ]
        outputs = ResultSet(handles).get(timeout=WITHIN["W2"])
        elapsed = time.perf_counter() - started
        if len(outputs) != runs or any(o != {"i": W2_CHAIN - 1, "prev": W2_CHAIN - 2} for o in outputs):
            raise RuntimeError("W2 outputs are not the chains' last steps")
        return _steps_per_s(runs, elapsed)

    measures: dict[str, Callable[[], float]] = {"W0": w0, "W1": w1, "W2": w2}
    log_file = tempfile.NamedTemporaryFile(prefix="flowforge_peer_celery_", suffix=".log")  # noqa: SIM115
    worker: subprocess.Popen[bytes] | None = None
    try:
        client.flushdb()
        worker = _spawn(
            [sys.executable, "-m", "celery", "-A", "peer_celery_app", "worker", "--pool=prefork",
             f"--concurrency={CELERY_CONCURRENCY}", "--loglevel=WARNING", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "-n", f"peer{uuid.uuid4().hex[:8]}@%h"],
            {"FLOWFORGE_PEER_REDIS": REDIS_URL}, log_file,
        )
        log("celery: starting the worker ...")
        with watchdog(START_WITHIN, "starting the Celery worker", worker, log_file):
            started_by = time.monotonic() + START_WITHIN
            while not app.control.ping(timeout=0.5):
                _check_alive(worker, log_file, "the Celery worker")
                if time.monotonic() > started_by:
                    raise RuntimeError(f"the Celery worker did not answer a ping: {_tail(log_file)}")
            # Warm-up: both pool processes, the connections, the result consumer.
            group(transform.s(k) for k in range(20)).apply_async().get(timeout=30)
            chain(step.s(None, 0, 0), step.s(1, 0), step.s(2, 0)).apply_async().get(timeout=30)
        for workload in workloads:
            log(f"celery: running {workload} ...")
            try:
                with watchdog(WITHIN[workload] * repeats + 30, f"celery {workload}", worker, log_file):
                    result.values[workload] = measures[workload]()
            except Exception as exc:
                result.fail([workload], f"{workload}: {_describe(exc)}")
                if _gone(worker, workloads, workload, result):
                    break
            time.sleep(0.5)
    except Exception as exc:
        result.fail(workloads, _describe(exc))
    finally:
        if worker is not None:
            _stop(worker)
        with contextlib.suppress(Exception):
            app.close()
        with contextlib.suppress(redis.RedisError):
            client.flushdb()
        client.close()
        log_file.close()
    return result


# --- pgqueuer: the worker (a child process: `bench_peers.py --pgqueuer-worker`) ----------------------


@contextlib.asynccontextmanager
async def pgqueuer_worker() -> AsyncIterator[QueueManager]:
    """pgqueuer factory. Each job commits its output row, and the next job of its chain, in one
    transaction on the job pool; pgqueuer itself marks the job done (its own log, batched)."""
    from pgqueuer import Job, QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    dsn = os.environ[PGQ_WORKER_DSN_ENV]
    connection = await asyncpg.connect(dsn, timeout=10)
    pool = await asyncpg.create_pool(dsn, min_size=PGQ_POOL, max_size=PGQ_POOL, timeout=10)
    manager = QueueManager(Queries(AsyncpgDriver(connection)))

    agent_url = os.environ.get(AGENT_URL_ENV, "")
    agent = aiohttp.ClientSession() if agent_url else None  # keep-alive, as FlowForge's pool

    @manager.entrypoint("chain", accepts_context=False)
    async def chain_step(job: Job) -> None:
        payload = json.loads(job.payload or b"{}")
        if payload["ms"] and agent is not None:
            # W0's 10 ms are a call to the same test agent as FlowForge's agent steps.
            url = f"{agent_url}/latency?ms={payload['ms']}"
            async with agent.post(url, json={"input": {"i": payload["i"]}}) as answer:
                answer.raise_for_status()
                await answer.read()
        elif payload["ms"]:
            await asyncio.sleep(payload["ms"] / 1000)
        output = {"i": payload["i"], "prev": payload["prev"]}
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(INSERT_RESULT, payload["batch"], payload["run"], payload["i"], json.dumps(output))
            if payload["i"] + 1 < payload["n"]:
                following = {**payload, "i": payload["i"] + 1, "prev": payload["i"]}
                await Queries.from_asyncpg_connection(conn).enqueue("chain", json.dumps(following).encode())

    @manager.entrypoint("item", accepts_context=False)
    async def item(job: Job) -> None:
        payload = json.loads(job.payload or b"{}")
        output = {"n": payload["item"]}
        await pool.execute(INSERT_RESULT, payload["batch"], payload["run"], 0, json.dumps(output))

    try:
        yield manager
    finally:
        if agent is not None:
            await agent.close()
        await pool.close()
        await connection.close()


def serve_pgqueuer(batch_size: int) -> None:
    """The worker child: `pgqueuer.run`, which is what `pgq run bench_peers:pgqueuer_worker` runs
    (on uvloop when it is installed, as pgq does; SIGTERM stops it). Not the pgq CLI itself: pgq 1.6's
    `run` command fails before it starts with typer 0.29 (its --log-level value arrives as a str)."""
    from pgqueuer import run

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(run(pgqueuer_worker, batch_size=batch_size))
    else:
        uvloop.run(run(pgqueuer_worker, batch_size=batch_size))


# --- pgqueuer: the submitter ----------------------------------------------------------------------


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=10)
    try:
        await conn.execute(sql, timeout=30)
    finally:
        await conn.close()


@dataclass
class PgqBench:
    """The submitter's side: enqueues through pgqueuer, reads the results the jobs recorded."""

    queries: Queries
    pool: asyncpg.Pool
    worker: subprocess.Popen[bytes]
    log_file: IO[bytes]

    async def collect(self, batch: str, expected: int, within: float) -> list[asyncpg.Record]:
        """Polls (every POLL_S) until `expected` results of `batch` are committed, then reads them all."""
        give_up = time.monotonic() + within
        async with self.pool.acquire() as conn:
            while True:
                done = await conn.fetchval("SELECT count(*) FROM peer_results WHERE batch = $1", batch)
                if done >= expected:
                    rows: list[asyncpg.Record] = await conn.fetch(
                        "SELECT run, step, output FROM peer_results WHERE batch = $1 ORDER BY run, step", batch
                    )
                    return rows
                _check_alive(self.worker, self.log_file, "the pgqueuer worker")
                if time.monotonic() > give_up:
                    raise RuntimeError(f"only {done} of {expected} results within {within:.0f} s")
                await asyncio.sleep(POLL_S)

    async def start_chain(self, batch: str, run: int, length: int, ms: int) -> None:
        payload = {"batch": batch, "run": run, "i": 0, "prev": None, "n": length, "ms": ms}
        await self.queries.enqueue("chain", json.dumps(payload).encode())

    async def w0(self) -> float:
        batch = uuid.uuid4().hex
        started = time.perf_counter()
        await self.start_chain(batch, 0, W0_STEPS, W0_STEP_MS)
        rows = await self.collect(batch, W0_STEPS, WITHIN["W0"])
        elapsed = time.perf_counter() - started
        if json.loads(rows[-1]["output"]) != {"i": W0_STEPS - 1, "prev": W0_STEPS - 2}:
            raise RuntimeError(f"unexpected W0 output {rows[-1]['output']}")
        return elapsed

    async def w1(self) -> float:
        batch = uuid.uuid4().hex
        payloads: list[bytes | None] = [
            json.dumps({"batch": batch, "run": k, "item": k}).encode() for k in range(W1_ITEMS)
        ]
        started = time.perf_counter()
        await self.queries.enqueue(["item"] * W1_ITEMS, payloads, [0] * W1_ITEMS)
        rows = await self.collect(batch, W1_ITEMS, WITHIN["W1"])
        elapsed = time.perf_counter() - started
        if [json.loads(r["output"]) for r in rows] != [{"n": k} for k in range(W1_ITEMS)]:
            raise RuntimeError("W1 outputs are not the 1,000 transforms")
        return elapsed

    async def w2(self, runs: int) -> float:
        batch = uuid.uuid4().hex
        started = time.perf_counter()
        await asyncio.gather(*[self.start_chain(batch, run, W2_CHAIN, 0) for run in range(runs)])
        rows = await self.collect(batch, W2_CHAIN * runs, WITHIN["W2"])
        elapsed = time.perf_counter() - started
        last = [json.loads(r["output"]) for r in rows if r["step"] == W2_CHAIN - 1]
        if len(last) != runs or any(o != {"i": W2_CHAIN - 1, "prev": W2_CHAIN - 2} for o in last):
            raise RuntimeError("W2 outputs are not the chains' last steps")
        return _steps_per_s(runs, elapsed)


async def run_pgqueuer(workloads: list[str], repeats: int, runs: int, batch_size: int) -> PeerResult:
    result = PeerResult(setup="pgqueuer (not set up)")
    try:
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries
    except ImportError as exc:
        result.fail(workloads, f"{_describe(exc)} (install the bench extra: pip install -e '.[bench]')")
        return result

    name = f"flowforge_peer_{uuid.uuid4().hex[:10]}"
    dsn = f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        result.fail(workloads, f"PostgreSQL at {ADMIN_DSN}: {_describe(exc)}")
        return result
    log_file = tempfile.NamedTemporaryFile(prefix="flowforge_peer_pgqueuer_", suffix=".log")  # noqa: SIM115
    worker: subprocess.Popen[bytes] | None = None
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await Queries(AsyncpgDriver(conn)).install()
            await conn.execute(RESULTS_DDL)
            server = await conn.fetchval("SHOW server_version")
            sync_commit = await conn.fetchval("SHOW synchronous_commit")
            fsync = await conn.fetchval("SHOW fsync")
        finally:
            await conn.close()
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio event loop"
        result.setup = (
            f"pgqueuer {version('pgqueuer')} on PostgreSQL {server} (synchronous_commit={sync_commit}, "
            f"fsync={fsync}), a throw-away database; worker = `pgqueuer.run(pgqueuer_worker, batch_size="
            f"{batch_size})` as `pgq run` does ({loop}, as pgq picks; asyncpg; unlimited concurrent jobs; "
            f"a job pool of {PGQ_POOL} connections) in a child process. DURABLE: each job commits its output "
            f"row (peer_results) and, in a chain, the next job in the same transaction; pgqueuer itself logs "
            f"each job's enqueue and final status in pgqueuer_log (the final one batched after the job). "
            f"Does not record: step inputs, events, or any run or parent record; no join (the submitter is the "
            f"parent and collects). W0 = a chain of {W0_STEPS} jobs, {_w0_step()}, each enqueuing "
            f"the next; W1 = {W1_ITEMS} jobs enqueued by one batch INSERT, ends when the submitter has read "
            f"all {W1_ITEMS} results; W2 = {runs} chains of {W2_CHAIN} started by {runs} concurrent enqueue "
            f"calls (pool of {PGQ_SUBMIT_POOL}). The submitter polls the results every {POLL_S * 1000:.0f} ms."
        )
        worker = _spawn(
            [sys.executable, str(SELF), "--pgqueuer-worker", "--pgq-batch-size", str(batch_size)],
            {PGQ_WORKER_DSN_ENV: dsn}, log_file,
        )
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=PGQ_SUBMIT_POOL, timeout=10)
        try:
            bench = PgqBench(Queries.from_asyncpg_pool(pool), pool, worker, log_file)
            log("pgqueuer: starting the worker ...")
            # Ready when it has run a warm-up chain and fan-out.
            warm = uuid.uuid4().hex
            await bench.start_chain(warm, 0, W2_CHAIN, 0)
            await bench.collect(warm, W2_CHAIN, START_WITHIN)
            await bench.queries.enqueue(
                ["item"] * 20, [json.dumps({"batch": warm, "run": k + 1, "item": k}).encode() for k in range(20)],
                [0] * 20,
            )
            await bench.collect(warm, W2_CHAIN + 20, 30)

            async def repeated(measure: Callable[[], Awaitable[float]]) -> float:
                samples = []
                for _ in range(repeats):
                    samples.append(await measure())
                    await asyncio.sleep(0.5)
                return _median(samples)

            measures: dict[str, Callable[[], Awaitable[float]]] = {
                "W0": lambda: repeated(bench.w0),
                "W1": lambda: repeated(bench.w1),
                "W2": lambda: bench.w2(runs),
            }
            for workload in workloads:
                log(f"pgqueuer: running {workload} ...")
                try:
                    value = await asyncio.wait_for(measures[workload](), WITHIN[workload] * repeats + 30)
                    result.values[workload] = round(value, 3)
                except Exception as exc:
                    result.fail([workload], f"{workload}: {_describe(exc)}")
                    if _gone(worker, workloads, workload, result):
                        break
                await asyncio.sleep(0.5)
        finally:
            await asyncio.wait_for(pool.close(), 10)
    except Exception as exc:
        result.fail(workloads, _describe(exc))
    finally:
        if worker is not None:
            await asyncio.to_thread(_stop, worker)
        log_file.close()
        try:
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except (OSError, asyncpg.PostgresError) as exc:
            result.errors.append(f"could not drop database {name}: {_describe(exc)}")
    return result


# --- main -----------------------------------------------------------------------------------------


def _names(value: str, allowed: tuple[str, ...]) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()] if value else list(allowed)
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown: {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return [n for n in allowed if n in names]


def measure(peers: list[str], workloads: list[str], *, repeats: int, runs: int, batch_size: int) -> dict[str, Any]:
    """Runs the peers one after the other; returns the JSON object the CLI prints."""
    out: dict[str, Any] = {}
    for peer in peers:
        began = time.monotonic()
        if peer == "celery":
            result = run_celery(workloads, repeats, runs)
        else:
            result = asyncio.run(run_pgqueuer(workloads, repeats, runs, batch_size))
        log(f"{peer}: done in {time.monotonic() - began:.1f} s")
        out[peer] = result.as_json()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=lambda v: _names(v, PEERS), default=list(PEERS),
                        help="comma-separated peers: celery,pgqueuer (default: both)")
    parser.add_argument("--workloads", type=lambda v: _names(v, WORKLOADS), default=list(WORKLOADS),
                        help="comma-separated workloads: W0,W1,W2 (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of W0 and W1 (median reported)")
    parser.add_argument("--runs", type=int, default=1000, help="chains of W2")
    parser.add_argument("--pgq-batch-size", type=int, default=100,
                        help="pgqueuer worker's batch_size: jobs per dequeue (pgq's default is 10; 100 did best here)")
    parser.add_argument("--agent-url", default="",
                        help="test agent W0's steps call (POST <url>/latency?ms=10) instead of sleeping")
    parser.add_argument("--pgqueuer-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent_url:
        os.environ[AGENT_URL_ENV] = args.agent_url  # inherited by the workers
    if args.pgqueuer_worker:
        serve_pgqueuer(args.pgq_batch_size)
        return
    result = measure(args.only, args.workloads, repeats=args.repeats, runs=args.runs,
                     batch_size=args.pgq_batch_size)
    log(f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
