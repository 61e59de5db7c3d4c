"""Edge benchmarks of issue 4 (W4 SSE fan-out, W5 request rates) against the real stack on PostgreSQL.

Starts auth_svc, workflow_svc, execution_svc and the edge as separate processes (as `make run`
does) on a throw-away database `flowforge_bench_edge_<random>`, created and dropped through
`FLOWFORGE_BENCH_PG_ADMIN` (default `postgresql://127.0.0.1:5432/postgres`), with the edge rate
limiter off. Signs up through the REST edge and uses transform-only and `wait_for_signal`
workflows (no agent). Prints ONE JSON object on stdout; progress goes to stderr.

  W4  N SSE subscribers (GET /api/v1/runs/{id}/events) spread over R live runs whose
      `wait_for_signal` steps are signalled at a fixed rate. Latency of each delivery = client
      receive wall time - the event's `timestamp` (same machine, same clock). The timestamp is
      taken by the engine *before* its COMMIT, so this includes the commit itself; the
      `notify_to_client` figures in `detail` start at the PostgreSQL NOTIFY instead (sent after
      the commit), a lower bound. Edge memory: VmRSS growth of the edge process / N.
  W5  open-loop constant-rate load (wrk2-style: requests go out at fixed intervals whatever
      the answers do, and latency counts from the *intended* send time, so queueing is in it):
      POST /api/v1/workflows/{id}/execute at 500 req/s and GET /api/v1/runs/{id} at 2,000
      req/s. The generator is a small raw-socket HTTP/1.1 client in a child process (uvloop
      when installed); its own send lag and CPU are reported so that a generator that cannot
      keep up on a small machine is visible rather than hidden. A request unanswered after
      10 s counts as an error and enters the percentiles as a censored 10 s-plus latency.
      `--search` adds the highest rate whose p99 meets the SLO (30 ms start, 20 ms read);
      `--crosscheck` adds a 5 s closed-loop `wrk` run (Debian package) per part.

Subscribers and the load generator run in child processes of this file (`--role sse|load`,
configured through stdin, niced to -5 when allowed) so that neither starves on the
orchestrator's event loop nor waits long in the run queue of a saturated machine. W4 waits
(bounded) until every committed event reached every subscriber before it reports, so a
backlog shows up in the percentiles instead of being cut off.

`detail` carries the diagnostics: `cpu_pct` is each process's CPU in % of one core over the
measured window (`postgres_pct` sums every PostgreSQL backend on the machine) and
`machine_busy_pct` the % of all cores busy, other users' load included; the W4 database
transaction rates come from `pg_stat_database` (flushed about once a second: rough).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import asyncpg

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.databases import admin_sql  # noqa: E402
from tests.fixtures.ports import free_port  # noqa: E402
from tests.fixtures.processes import MODULES, stack_environment  # noqa: E402

ADMIN_DSN = os.environ.get("FLOWFORGE_BENCH_PG_ADMIN", "postgresql://127.0.0.1:5432/postgres")
PASSWORD = "correct-horse-battery"
API = "/api/v1"
SIGNAL = "go"
STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT_NICE = -5

Json = dict[str, Any]


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the result)."""
    print(f"[bench_edge {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def r2(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by every child process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fast_loop() -> str:
    """Installs uvloop when available; names the loop."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


# =============================================================================================
# /proc probes
# =============================================================================================


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_cpu_seconds() -> dict[int, float]:
    """CPU of every process named `postgres` (all backends, other users' included), by pid."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == "postgres":
                found[int(entry.name)] = cpu_seconds(int(entry.name))
    return found


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU % (of one core) per named process over a window, and the machine's busy %."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._postgres: dict[int, float] = {}
        self._machine = (0, 0)
        self._began = 0.0

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._postgres = postgres_cpu_seconds()
        self._machine = machine_ticks()
        self._began = time.monotonic()

    def stop(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._began, 1e-6)
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        # Backends that exited meanwhile are missed; new ones count from zero.
        postgres = sum(seconds - self._postgres.get(pid, 0.0) for pid, seconds in postgres_cpu_seconds().items())
        result = {f"{name}_pct": round(100 * (now[name] - self._start[name]) / elapsed, 1) for name in now}
        result["postgres_pct"] = round(100 * postgres / elapsed, 1)
        busy, total = machine_ticks()
        result["machine_busy_pct"] = round(100 * (busy - self._machine[0]) / max(total - self._machine[1], 1), 1)
        result["cores"] = float(os.cpu_count() or 1)
        return result


# =============================================================================================
# The stack
# =============================================================================================


@dataclass
class Stack:
    """The four FlowForge processes."""

    ports: dict[str, int]
    processes: dict[str, subprocess.Popen[bytes]]
    log_dir: Path
    env: dict[str, str]

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['edge']}"

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}; see {self.log_dir / name}.log")


def start_stack(database_url: str, work_dir: Path, log_level: str, log_format: str) -> Stack:
    """Starts auth, workflow, execution and the edge on free ports, logs in `work_dir`."""
    ports = {name: free_port() for name in MODULES}
    env = stack_environment(work_dir / "data", database_url, ports)
    env.update(
        # The bench measures the edge, not its limiter; tokens outlive a long run.
        FLOWFORGE_RATE_LIMIT_ENABLED="false",
        FLOWFORGE_ACCESS_TOKEN_TTL_SECONDS="7200",
        FLOWFORGE_LOG_LEVEL=log_level,
        FLOWFORGE_LOG_FORMAT=log_format,
    )
    log_dir = work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for name, module in MODULES.items():
        with (log_dir / f"{name}.log").open("wb") as sink:
            # Own session: a Ctrl-C reaches this script, which stops the children itself.
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", module],
                env=env,
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
    return Stack(ports=ports, processes=processes, log_dir=log_dir, env=env)


def stop_stack(stack: Stack) -> None:
    """SIGTERM every process, wait, SIGKILL what does not stop in time."""
    for process in stack.processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in stack.processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_ready(stack: Stack, http: aiohttp.ClientSession, within: float) -> None:
    deadline = time.monotonic() + within
    last = ""
    while time.monotonic() < deadline:
        stack.check_alive()
        try:
            async with http.get(stack.edge_url + "/health/ready", timeout=aiohttp.ClientTimeout(total=3)) as resp:
                if resp.status == 200:
                    return
                last = f"{resp.status} {await resp.text()}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.25)
    raise RuntimeError(f"stack not ready within {within:.0f}s: {last}")


# =============================================================================================
# REST helpers (orchestrator)
# =============================================================================================


class Api:
    """Calls to the edge as one signed-up tenant owner."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.token = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(self, method: str, path: str, body: Any = None, *, expect: tuple[int, ...] = (200,)) -> Any:
        async with self.http.request(
            method,
            self.base + API + path,
            json=body,
            headers=self.headers if self.token else None,
            timeout=aiohttp.ClientTimeout(total=60),
        ) as resp:
            text = await resp.text()
            if resp.status not in expect:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {text[:300]}")
            return json.loads(text) if text else None

    async def sign_up(self) -> str:
        email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
        created = await self.call(
            "POST", "/auth/signup", {"email": email, "password": PASSWORD, "tenant_name": "bench"}, expect=(201,)
        )
        login = await self.call("POST", "/auth/login", {"email": email, "password": PASSWORD})
        self.token = str(login["access_token"])
        return str(created["tenant"]["id"])

    async def workflow(self, definition: Json) -> str:
        return str((await self.call("POST", "/workflows", definition, expect=(201,)))["id"])

    async def start_runs(self, workflow_id: str, count: int, body: Json, concurrency: int = 16) -> list[str]:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> str:
            async with gate:
                return str((await self.call("POST", f"/workflows/{workflow_id}/execute", body, expect=(202,)))["id"])

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def cancel_runs(self, run_ids: list[str], concurrency: int = 16) -> None:
        """Cancels runs (their event streams end); finished ones answer 409, which is fine."""
        gate = asyncio.Semaphore(concurrency)

        async def one(run_id: str) -> None:
            async with gate:
                await self.call("POST", f"/runs/{run_id}/cancel", {}, expect=(202, 409))

        await asyncio.gather(*(one(r) for r in run_ids))

    async def wait_status(self, run_ids: list[str], wanted: set[str], within: float, concurrency: int = 16) -> None:
        """Until every run has one of `wanted` statuses."""
        gate = asyncio.Semaphore(concurrency)
        pending = list(run_ids)
        deadline = time.monotonic() + within

        async def status(run_id: str) -> str:
            async with gate:
                return str((await self.call("GET", f"/runs/{run_id}?fields=id,status"))["status"])

        while pending:
            statuses = await asyncio.gather(*(status(r) for r in pending))
            pending = [r for r, s in zip(pending, statuses, strict=True) if s not in wanted]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} runs not {sorted(wanted)} within {within:.0f}s")
            await asyncio.sleep(0.5)


def transform_workflow() -> Json:
    return {
        "name": f"bench-transform-{uuid.uuid4().hex[:6]}",
        "steps": [{"id": "t", "type": "transform", "input": {"n": "{{ input.n }}"}}],
        "output": "{{ steps.t.output }}",
    }


def signal_chain(length: int) -> Json:
    steps: list[Json] = []
    for i in range(length):
        step: Json = {"id": f"w{i}", "type": "wait_for_signal", "config": {"signal": SIGNAL}}
        if i:
            step["depends_on"] = [f"w{i - 1}"]
        steps.append(step)
    return {"name": f"bench-live-{uuid.uuid4().hex[:6]}", "steps": steps}


# =============================================================================================
# Child processes (SSE subscribers, load generator): JSON config on stdin, JSON lines on stdout
# =============================================================================================


class Child:
    """A `--role` child of this script."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name

    @classmethod
    async def spawn(cls, role: str, config: Json, name: str) -> Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--role",
            role,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
            start_new_session=True,
        )
        child = cls(process, name)
        await child.send(config)
        return child

    @property
    def pid(self) -> int:
        return self.process.pid

    async def send(self, message: Json) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        await self.process.stdin.drain()

    async def receive(self, within: float) -> Json:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), within)
        if not line:
            code = await asyncio.wait_for(self.process.wait(), 5)
            raise RuntimeError(f"{self.name} exited with {code} before answering")
        message: Json = json.loads(line)
        return message

    async def stop(self) -> None:
        """Lets a child that was told to finish exit by itself, else terminates it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.process.wait()), 5)
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()


def child_main(role: str) -> int:
    """Entry of a `--role` child: one JSON config line on stdin."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(1))
    config = json.loads(sys.stdin.readline())
    if role in {"sse", "load"}:
        # The floor's servers run like FlowForge's services: the default loop, default priority.
        config["loop"] = fast_loop()
        # Clients are scheduled promptly when the machine is saturated, so their receive times
        # are not delayed by the run queue (they use little CPU; root only, else ignored).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, CLIENT_NICE)
    if role == "sse":
        asyncio.run(sse_child(config))
    elif role == "load":
        asyncio.run(load_child(config))
    elif role == "floor-grpc":
        asyncio.run(floor_grpc(config))
    elif role == "floor-edge":
        asyncio.run(floor_edge(config))
    else:
        raise SystemExit(f"unknown role {role}")
    return 0


def emit(message: Json) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def sleep_until(deadline: float) -> None:
    """Sleeps until `time.perf_counter()` reaches `deadline` (at once when it has)."""
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def read_stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


# --------------------------------------------------------------------------------------------
# SSE subscriber: raw HTTP/1.1 over asyncio, receive time taken in data_received()
# --------------------------------------------------------------------------------------------


class ChunkedDecoder:
    """Incremental `Transfer-Encoding: chunked` decoder."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.left = 0  # bytes of the current chunk still to come
        self.skip_crlf = False
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = bytearray()
        while self.buffer and not self.ended:
            if self.skip_crlf:
                if len(self.buffer) < 2:
                    break
                del self.buffer[:2]
                self.skip_crlf = False
            if self.left == 0:
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(self.buffer[:end]).split(b";")[0], 16)
                del self.buffer[: end + 2]
                if size == 0:
                    self.ended = True
                    break
                self.left = size
            take = min(self.left, len(self.buffer))
            out += self.buffer[:take]
            del self.buffer[:take]
            self.left -= take
            if self.left == 0:
                self.skip_crlf = True
        return bytes(out)


def parse_timestamp(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


class SseConnection(asyncio.Protocol):
    """One subscriber: sends the GET, parses SSE frames, records (seq, timestamp, received)."""

    def __init__(self, request: bytes, run_id: str, sink: list[tuple[str, int, float, float]]) -> None:
        self.request = request
        self.run_id = run_id
        self.sink = sink
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.body: ChunkedDecoder | None = None
        self.text = b""
        self.last_seq = 0
        self.gaps = 0
        self.error_frames = 0
        self.closed = False
        self.ended = False  # the server ended the stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        received = time.time()
        if self.body is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = bytes(self.head[:end]), bytes(self.head[end + 4 :])
            status = head.split(b"\r\n", 1)[0]
            if b" 200 " not in status + b" ":
                self._fail(f"status {status.decode(errors='replace')[:60]}")
                return
            if b"chunked" not in head.lower():
                self._fail("SSE answer not chunked")
                return
            self.body = ChunkedDecoder()
            data = rest
        self.text += self.body.feed(data)
        while (end := self.text.find(b"\n\n")) >= 0:
            frame, self.text = self.text[:end], self.text[end + 2 :]
            self._frame(frame, received)
        if self.body.ended:
            self.ended = True

    def _frame(self, frame: bytes, received: float) -> None:
        event = b""
        data = b""
        for line in frame.split(b"\n"):
            if line.startswith(b":"):
                if not self.opened.done():
                    self.opened.set_result(None)
            elif line.startswith(b"event: "):
                event = line[7:]
            elif line.startswith(b"data: "):
                data = line[6:]
        if not data:
            return
        if event == b"error":
            self.error_frames += 1
            return
        document = json.loads(data)
        seq = int(document["seq"])
        if seq != self.last_seq + 1:
            self.gaps += 1
        self.last_seq = seq
        self.sink.append((self.run_id, seq, parse_timestamp(document["timestamp"]), received))

    def _fail(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(reason))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the stream opened: {exc!r}"))


async def sse_child(config: Json) -> None:
    """Opens one SSE stream per assigned run id, reports, then records until told to report."""
    loop = asyncio.get_running_loop()
    host, port, token = str(config["host"]), int(config["port"]), str(config["token"])
    deliveries: list[tuple[str, int, float, float]] = []
    connections: list[SseConnection] = []
    errors: Counter[str] = Counter()
    gate = asyncio.Semaphore(int(config["connect_concurrency"]))
    open_timeout = float(config["open_timeout"])

    async def open_one(run_id: str) -> None:
        request = (
            f"GET {API}/runs/{run_id}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        async with gate:
            connection = SseConnection(request, run_id, deliveries)
            try:
                await asyncio.wait_for(loop.create_connection(lambda: connection, host, port), open_timeout)
                await asyncio.wait_for(connection.opened, open_timeout)
            except (OSError, RuntimeError, TimeoutError) as exc:
                errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                if connection.transport is not None:
                    connection.transport.abort()
                return
            connections.append(connection)

    began = time.monotonic()
    await asyncio.gather(*(open_one(run_id) for run_id in config["runs"]))
    emit(
        {
            "connected": len(connections),
            "failed": sum(errors.values()),
            "errors": dict(errors.most_common(5)),
            "open_s": round(time.monotonic() - began, 2),
        }
    )
    while True:
        line = await read_stdin_line()
        if not line:  # the orchestrator is gone: nothing to report to
            for connection in connections:
                if connection.transport is not None:
                    connection.transport.abort()
            return
        if json.loads(line).get("cmd") != "status":
            break
        emit({"last_seq": [[c.run_id, c.last_seq] for c in connections]})
    result = {
        "deliveries": deliveries,
        "last_seq": [[c.run_id, c.last_seq] for c in connections],
        "gaps": sum(c.gaps for c in connections),
        "error_frames": sum(c.error_frames for c in connections),
        "closed_early": sum(1 for c in connections if c.closed),
        "loop": config["loop"],
    }
    await asyncio.to_thread(Path(config["result_path"]).write_text, json.dumps(result))
    emit({"done": True})
    for connection in connections:
        if connection.transport is not None:
            connection.transport.abort()


# --------------------------------------------------------------------------------------------
# Open-loop load generator
# --------------------------------------------------------------------------------------------


class HttpConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.buffer = bytearray()
        self.status = 0
        self.error_body = ""
        self.need = -1  # body bytes still to come (Content-Length), -2 chunked, -1 headers pending
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def request(self, raw: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.buffer.clear()
        self.need = -1
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need == -1:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            del self.buffer[: end + 4]
            self.status = int(head[9:12])
            if b"connection: close" in head:
                self.reusable = False
            match = re.search(rb"content-length: *(\d+)", head)
            self.need = int(match.group(1)) if match else -2
        complete = len(self.buffer) >= self.need if self.need >= 0 else self.buffer.endswith(b"0\r\n\r\n")
        if complete:
            self._done()

    def _done(self) -> None:
        self.need = -1
        # What went wrong, for the report (problem+json carries the detail and request id).
        self.error_body = bytes(self.buffer[:400]).decode(errors="replace") if self.status >= 300 else ""
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc!r}"))


class Pool:
    """At most `limit` connections; requests beyond that wait (and the wait counts as latency)."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[HttpConnection] = []
        self.total = 0
        self.peak = 0
        self.waiters: deque[asyncio.Future[HttpConnection]] = deque()
        self.handing: set[asyncio.Task[None]] = set()

    async def acquire(self) -> HttpConnection:
        if self.idle:
            return self.idle.pop()
        if self.total < self.limit:
            self.total += 1
            self.peak = max(self.peak, self.total)
            try:
                _, protocol = await asyncio.get_running_loop().create_connection(HttpConnection, self.host, self.port)
            except BaseException:
                self.total -= 1
                raise
            return protocol
        waiter: asyncio.Future[HttpConnection] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def release(self, connection: HttpConnection, healthy: bool) -> None:
        if not (healthy and connection.reusable):
            self.total -= 1
            if connection.transport is not None:
                connection.transport.abort()
            if self.waiters:  # a freed slot: the next waiter opens a new connection
                waiter = self.waiters.popleft()
                task = asyncio.ensure_future(self._hand_new(waiter))
                self.handing.add(task)
                task.add_done_callback(self.handing.discard)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self.idle.append(connection)

    async def _hand_new(self, waiter: asyncio.Future[HttpConnection]) -> None:
        try:
            connection = await self.acquire()
        except OSError as exc:
            if not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter.done():
            self.release(connection, True)
        else:
            waiter.set_result(connection)

    def close(self) -> None:
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.abort()


async def load_child(config: Json) -> None:
    """Sends `rate` req/s for `seconds` on a fixed schedule; reports latencies from the intended
    send times."""
    host, port = str(config["host"]), int(config["port"])
    raws = [r.encode() for r in config["requests"]]
    rate, seconds, timeout = float(config["rate"]), float(config["seconds"]), float(config["timeout"])
    pool = Pool(host, port, int(config["max_connections"]))
    count = int(rate * seconds)
    interval = 1.0 / rate
    latencies: list[float] = []  # from the intended send time
    service: list[float] = []  # from the actual write (no client queueing)
    lags: list[float] = []  # actual - intended start of each request
    statuses: Counter[str] = Counter()
    done_at: list[float] = []
    error_samples: list[str] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(index: int, intended: float) -> None:
        held: list[HttpConnection] = []
        healthy = False

        async def exchange() -> tuple[int, float]:
            held.append(await pool.acquire())
            sent = time.perf_counter()
            return await held[0].request(raws[index % len(raws)]), sent

        try:
            # One deadline for waiting for a connection and for the answer.
            status, sent = await asyncio.wait_for(exchange(), timeout)
            healthy = True
            finished = time.perf_counter()
            statuses[str(status)] += 1
            if 200 <= status < 300:
                latencies.append(finished - intended)
                service.append(finished - sent)
                done_at.append(finished)
            elif len(error_samples) < 5:
                error_samples.append(f"{status} {held[0].error_body}")
        except TimeoutError:
            statuses["timeout"] += 1
            # Censored: it took at least this long; kept in the percentiles as such.
            latencies.append(time.perf_counter() - intended)
        except Exception as exc:  # counted, never lost in a task nobody awaits
            statuses[type(exc).__name__] += 1
        finally:
            if held:
                pool.release(held[0], healthy)

    # Warm the pool a little so the first second does not pay for connects.
    warm = [await pool.acquire() for _ in range(min(int(config["warm_connections"]), pool.limit))]
    for connection in warm:
        pool.release(connection, True)
    cpu0 = time.process_time()
    began = time.perf_counter() + 0.05
    for index in range(count):
        intended = began + index * interval
        await sleep_until(intended)
        now = time.perf_counter()
        lags.append(now - intended)
        # Latency counts from the intended time, or from the actual start if a timer fired early.
        task = asyncio.ensure_future(one(index, min(intended, now)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    send_end = time.perf_counter()
    if tasks:
        await asyncio.wait(set(tasks), timeout=timeout + 5)
    elapsed_window = max(done_at, default=send_end) - began
    cpu = time.process_time() - cpu0
    pool.close()
    ok = len(done_at)
    result = {
        "target_rps": rate,
        "sent": count,
        "ok": ok,
        "errors": count - ok,
        "timeouts": statuses["timeout"],
        "statuses": dict(statuses),
        "error_samples": error_samples,
        "achieved_rps": round(ok / elapsed_window, 1) if elapsed_window > 0 else None,
        "offered_rps": round(count / max(send_end - began, 1e-9), 1),
        "p50_ms": r2((pct(latencies, 50) or 0) * 1000) if latencies else None,
        "p99_ms": r2((pct(latencies, 99) or 0) * 1000) if latencies else None,
        "max_ms": r2(max(latencies) * 1000) if latencies else None,
        "service_p50_ms": r2((pct(service, 50) or 0) * 1000) if service else None,
        "service_p99_ms": r2((pct(service, 99) or 0) * 1000) if service else None,
        "generator_lag_p99_ms": r2((pct(lags, 99) or 0) * 1000) if lags else None,
        "generator_cpu_pct": round(100 * cpu / max(elapsed_window, 1e-9), 1),
        "connections_peak": pool.peak,
        "loop": config["loop"],
    }
    emit(result)


# =============================================================================================
# W4: SSE fan-out
# =============================================================================================


@dataclass
class NotifyLog:
    """When each run's commits were announced by PostgreSQL NOTIFY (sent after the commit)."""

    seen: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        received = time.time()
        parts = payload.partition("|")[2].split(" ")
        if len(parts) == 3 and parts[2].isdigit():
            self.seen.setdefault(parts[1], []).append((int(parts[2]), received))

    def committed(self, run_id: str, seq: int) -> float | None:
        """Wall time of the first NOTIFY covering `seq` of `run_id`."""
        marks = self.seen.get(run_id)
        if not marks:
            return None
        index = bisect_left(marks, (seq, -1.0))
        return marks[index][1] if index < len(marks) else None


async def signal_loop(api: Api, run_ids: list[str], rate: float, seconds: float) -> Counter[str]:
    """POST a signal to the runs round-robin at a fixed rate; answers counted by status."""
    statuses: Counter[str] = Counter()
    tasks: set[asyncio.Task[None]] = set()

    async def one(run_id: str) -> None:
        try:
            async with api.http.post(
                f"{api.base}{API}/runs/{run_id}/signals/{SIGNAL}",
                json={"payload": {"t": time.time()}},
                headers=api.headers,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                await resp.read()
                statuses[str(resp.status)] += 1
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            statuses[type(exc).__name__] += 1

    count = int(rate * seconds)
    began = time.perf_counter()
    for index in range(count):
        await sleep_until(began + index / rate)
        task = asyncio.ensure_future(one(run_ids[index % len(run_ids)]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks), timeout=30)
    return statuses


async def w4(args: argparse.Namespace, stack: Stack, api: Api, dsn: str, work_dir: Path) -> Json:
    n, runs = args.subscribers, min(args.runs, args.subscribers)
    signals_per_run = math.ceil(args.signal_rate * args.w4_seconds / runs)
    length = min(500, signals_per_run + 3)
    workflow_id = await api.workflow(signal_chain(length))
    log(f"W4: starting {runs} live runs ({length} wait_for_signal steps each)")
    run_ids = await api.start_runs(workflow_id, runs, {"input": {}})
    await api.wait_status(run_ids, {"running"}, within=120)
    assignments = [run_ids[i % runs] for i in range(n)]
    procs = max(1, args.sse_procs)
    listener = await asyncpg.connect(dsn, timeout=10)
    notify = NotifyLog()
    await listener.add_listener("execution_events", notify.on_notify)
    children: list[Child] = []
    try:
        await asyncio.sleep(2)  # let start-up work settle before the baseline
        edge_pid = stack.pid("edge")
        rss_before = {name: rss_kib(stack.pid(name)) for name in ("edge", "execution")}
        log(f"W4: opening {n} SSE streams from {procs} client processes (edge RSS {rss_before['edge']} KiB)")
        for index in range(procs):
            config = {
                "host": "127.0.0.1",
                "port": stack.ports["edge"],
                "token": api.token,
                "runs": assignments[index::procs],
                "connect_concurrency": args.connect_concurrency,
                "open_timeout": 60.0,
                "result_path": str(work_dir / f"sse-{index}.json"),
            }
            children.append(await Child.spawn("sse", config, f"sse client {index}"))
        opened = [await child.receive(within=args.open_timeout) for child in children]
        connected = sum(int(o["connected"]) for o in opened)
        failed = sum(int(o["failed"]) for o in opened)
        open_errors = [o["errors"] for o in opened if o["errors"]]
        log(f"W4: {connected} streams open, {failed} failed in {max(o['open_s'] for o in opened)} s {open_errors}")
        await asyncio.sleep(3)  # settle: history delivered, allocations done
        rss_after = {name: rss_kib(stack.pid(name)) for name in ("edge", "execution")}
        meter = CpuMeter(
            {
                "edge": edge_pid,
                "execution": stack.pid("execution"),
                "auth": stack.pid("auth"),
                **{f"sse{i}": c.pid for i, c in enumerate(children)},
            }
        )
        meter.start()
        idle_xacts = await _xacts_per_second(dsn, 5.0)
        idle_cpu = meter.stop()
        log(f"W4: edge RSS {rss_after['edge']} KiB; signalling {args.signal_rate}/s for {args.w4_seconds}s")
        phase_start = time.time()
        meter.start()
        signals = await signal_loop(api, run_ids, args.signal_rate, args.w4_seconds)
        cpu = meter.stop()
        # Every committed event reaches every subscriber before the report (bounded wait): a
        # backlog is measured, not cut off.
        drain_began = time.monotonic()
        behind = -1
        while True:
            last = await _last_seqs(dsn, run_ids)
            seen: list[list[Any]] = []
            for child in children:
                await child.send({"cmd": "status"})
                seen += (await child.receive(within=60))["last_seq"]
            behind = sum(max(0, last.get(run_id, 0) - int(seq)) for run_id, seq in seen)
            if behind == 0 or time.monotonic() - drain_began > args.drain_timeout:
                break
            await asyncio.sleep(0.5)
        drain_s = time.monotonic() - drain_began
        results: list[Json] = []
        for index, child in enumerate(children):
            await child.send({"cmd": "report"})
            await child.receive(within=60)
            results.append(json.loads(await asyncio.to_thread((work_dir / f"sse-{index}.json").read_text)))
        for child in children:
            await child.stop()
        # Upstream watches outliving their clients keep reading the database.
        await asyncio.sleep(1)
        after_xacts = await _xacts_per_second(dsn, 3.0)
    finally:
        for child in children:
            await child.stop()
        with contextlib.suppress(Exception):
            await listener.close()
        try:
            await api.cancel_runs(run_ids)
        except Exception as exc:
            log(f"W4: could not cancel the live runs: {exc!r}")
    latencies: list[float] = []
    from_notify: list[float] = []
    for result in results:
        for run_id, seq, stamp, received in result["deliveries"]:
            if stamp < phase_start:
                continue  # history: committed before the measurement
            latencies.append((received - stamp) * 1000)
            committed = notify.committed(run_id, seq)
            if committed is not None:
                from_notify.append((received - committed) * 1000)
    edge_growth = rss_after["edge"] - rss_before["edge"]
    return {
        "subscribers": connected,
        "events": len(latencies),
        "p50_ms": r2(pct(latencies, 50)),
        "p99_ms": r2(pct(latencies, 99)),
        "edge_kib_per_conn": r2(edge_growth / connected) if connected else None,
        "detail": {
            "runs": runs,
            "requested_subscribers": n,
            "failed_subscribers": failed,
            "open_errors": open_errors,
            "open_s": max(float(o["open_s"]) for o in opened),
            "signal_rate": args.signal_rate,
            "seconds": args.w4_seconds,
            "signal_answers": dict(signals),
            "max_ms": r2(max(latencies, default=0.0)) if latencies else None,
            "p90_ms": r2(pct(latencies, 90)),
            "notify_to_client_p50_ms": r2(pct(from_notify, 50)),
            "notify_to_client_p99_ms": r2(pct(from_notify, 99)),
            "events_missing_at_end": behind,
            "seq_gaps": sum(int(r["gaps"]) for r in results),
            "error_frames": sum(int(r["error_frames"]) for r in results),
            "streams_closed_early": sum(int(r["closed_early"]) for r in results),
            "edge_rss_kib": [rss_before["edge"], rss_after["edge"]],
            "execution_kib_per_conn": r2((rss_after["execution"] - rss_before["execution"]) / connected)
            if connected
            else None,
            "drain_s": round(drain_s, 2),
            "idle_db_xacts_per_s_with_subscribers": idle_xacts,
            "db_xacts_per_s_after_clients_left": after_xacts,
            "idle_cpu_pct_with_subscribers": idle_cpu,
            "cpu_pct": cpu,
            "client_procs": procs,
            "client_loop": results[0]["loop"] if results else None,
        },
    }


async def _last_seqs(dsn: str, run_ids: list[str]) -> dict[str, int]:
    async with _connect(dsn) as conn:
        rows = await conn.fetch("SELECT id, last_seq FROM execution.runs WHERE id = ANY($1::text[])", run_ids)
    return {str(row["id"]): int(row["last_seq"]) for row in rows}


@contextlib.asynccontextmanager
async def _connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


async def _xacts_per_second(dsn: str, seconds: float) -> float:
    """Transactions per second committed in the bench database (nothing but watchers running)."""
    async with _connect(dsn) as conn:
        query = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        first = int(await conn.fetchval(query))
        await asyncio.sleep(seconds)
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        second = int(await conn.fetchval(query))
    # Counters are flushed by backends at most every 1 s (PostgreSQL 15): a rough rate.
    return round((second - first) / seconds, 1)


# =============================================================================================
# W5: request rates
# =============================================================================================


def raw_request(method: str, path: str, host: str, port: int, token: str, body: Json | None = None) -> str:
    payload = json.dumps(body) if body is not None else ""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Authorization: Bearer {token}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload.encode())}"]
    return "\r\n".join(lines) + "\r\n\r\n" + payload


async def open_loop(
    port: int, pids: dict[str, int], requests: list[str], rate: float, seconds: float, args: argparse.Namespace
) -> Json:
    """One open-loop run against 127.0.0.1:`port`, with the CPU of `pids` (and PostgreSQL's, and
    the machine's) over it."""
    config = {
        "host": "127.0.0.1",
        "port": port,
        "requests": requests,
        "rate": rate,
        "seconds": seconds,
        "timeout": 10.0,
        "max_connections": args.max_connections,
        "warm_connections": min(32, args.max_connections),
    }
    child = await Child.spawn("load", config, "load generator")
    meter = CpuMeter({**pids, "generator": child.pid})
    meter.start()
    try:
        result = await child.receive(within=seconds + 60)
    finally:
        cpu = meter.stop()
        await child.stop()
    result["cpu_pct"] = cpu
    result["cpu_ms_per_request"] = cpu_ms_per_request(cpu, result.get("achieved_rps"))
    return result


def cpu_ms_per_request(cpu: Json, achieved_rps: float | None) -> float | None:
    """CPU time the whole machine spent per answered request (every process and the kernel:
    what a request costs against the machine's `cores` x 1,000 ms per second)."""
    if not achieved_rps:
        return None
    return round(float(cpu["machine_busy_pct"]) / 100 * float(cpu["cores"]) * 1000 / achieved_rps, 3)


def stack_pids(stack: Stack) -> dict[str, int]:
    return {name: stack.pid(name) for name in ("edge", "execution", "auth", "workflow")}


SLO_P99_MS = {"start": 30.0, "read": 20.0}


async def search_rate(
    port: int, pids: dict[str, int], requests: list[str], first: Json, slo_ms: float, args: argparse.Namespace
) -> Json:
    """Highest rate (of a few 5-second probes, bisecting below what the target run achieved)
    whose p99 meets the SLO, for the "req/s at p99" figure."""
    if first.get("p99_ms") is not None and first["p99_ms"] <= slo_ms and not first["errors"]:
        return {"rps": first["target_rps"], "p99_ms": first["p99_ms"], "probes": []}
    low, high = 0.0, float(first.get("achieved_rps") or first["target_rps"])
    best: Json = {"rps": None, "p99_ms": None}
    probes: list[list[float | None]] = []
    for _ in range(args.search_probes):
        rate = round((low + high) / 2 if low else high * 0.6, 1)
        await asyncio.sleep(2)
        probe = await open_loop(port, pids, requests, rate, 5.0, args)
        probes.append([rate, probe["p99_ms"], probe["achieved_rps"]])
        log(f"  probe {rate} req/s: p99 {probe['p99_ms']} ms, achieved {probe['achieved_rps']}")
        if probe["p99_ms"] is not None and probe["p99_ms"] <= slo_ms and not probe["errors"]:
            low, best = rate, {"rps": rate, "p99_ms": probe["p99_ms"]}
        else:
            high = rate
    return {**best, "slo_p99_ms": slo_ms, "probes": probes}


def w5_summary(result: Json, tool: str) -> Json:
    keys = ("target_rps", "achieved_rps", "p50_ms", "p99_ms", "errors")
    detail = {"tool": tool, **{k: v for k, v in result.items() if k not in keys}}
    return {**{k: result.get(k) for k in keys}, "detail": detail}


def wrk_crosscheck(url: str, token: str, seconds: float, connections: int, work_dir: Path, body: Json | None) -> Json:
    """Closed-loop capacity with `wrk` (a Debian package) for comparison: not a rate-controlled
    measurement (wrk keeps `connections` requests in flight whatever the latency)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"error": "wrk not installed (apt-get install -y wrk)"}
    script = work_dir / f"wrk-{uuid.uuid4().hex[:6]}.lua"
    lines = [f'wrk.headers["Authorization"] = "Bearer {token}"']
    if body is not None:
        lines += [
            'wrk.method = "POST"',
            'wrk.headers["Content-Type"] = "application/json"',
            f"wrk.body = {json.dumps(json.dumps(body))}",
        ]
    script.write_text("\n".join(lines) + "\n")
    command = [wrk, "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script), url]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30, check=False).stdout
    except subprocess.TimeoutExpired:
        return {"error": "wrk timed out"}
    found: Json = {"tool": f"wrk -t1 -c{connections} (closed loop)"}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    found["rps"] = float(rps.group(1)) if rps else None
    for label in ("50%", "99%"):
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        if match:
            factor = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
            found[f"p{label[:2]}_ms"] = round(float(match.group(1)) * factor, 2)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    found["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    return found


async def w5(args: argparse.Namespace, stack: Stack, api: Api, work_dir: Path) -> Json:
    host, port = "127.0.0.1", stack.ports["edge"]
    workflow_id = await api.workflow(transform_workflow())
    read_ids = await api.start_runs(workflow_id, args.read_runs, {"input": {"n": 1}})
    await api.wait_status(read_ids, {"succeeded"}, within=120)
    out: Json = {}
    tool = "python open-loop raw HTTP/1.1 client (fixed-interval schedule, latency from intended send time)"
    # Reads first: the runs that the start test creates keep execution_svc busy afterwards.
    parts: list[tuple[str, float, list[str], Json | None, str]] = [
        (
            "read",
            args.read_rps,
            [raw_request("GET", f"{API}/runs/{r}", host, port, api.token) for r in read_ids],
            None,
            f"{API}/runs/{read_ids[0]}",
        ),
        (
            "start",
            args.start_rps,
            [
                raw_request(
                    "POST", f"{API}/workflows/{workflow_id}/execute", host, port, api.token, {"input": {"n": i}}
                )
                for i in range(16)
            ],
            {"input": {"n": 1}},
            f"{API}/workflows/{workflow_id}/execute",
        ),
    ]
    if not args.only_w5 or "floor" in args.only_w5:
        # First, on a quiet machine: the runs the start part creates keep execution_svc busy afterwards.
        out["floor"] = await floor(args.read_rps, args, tool)
        await asyncio.sleep(2)
    port, pids = stack.ports["edge"], stack_pids(stack)
    for name, rate, requests, body, path in parts:
        if args.only_w5 and name not in args.only_w5:
            continue
        try:
            stack.check_alive()
            summary = await rate_part(name, port, pids, requests, rate, args, tool)
            if args.search:
                summary["detail"]["within_slo"] = await search_rate(
                    port, pids, requests, summary["detail"]["run"], SLO_P99_MS[name], args
                )
            if args.crosscheck:
                await asyncio.sleep(2)
                summary["detail"]["closed_loop_crosscheck"] = await asyncio.to_thread(
                    wrk_crosscheck, f"http://{host}:{port}{path}", api.token, 5, 32, work_dir, body
                )
            out[name] = summary
        except Exception as exc:  # one part failing must not lose the others
            out[name] = {
                "target_rps": rate,
                "achieved_rps": None,
                "p50_ms": None,
                "p99_ms": None,
                "errors": None,
                "error": f"{type(exc).__name__}: {exc}",
            }
        await asyncio.sleep(2)
    return out


async def rate_part(
    name: str, port: int, pids: dict[str, int], requests: list[str], rate: float, args: argparse.Namespace, tool: str
) -> Json:
    """A warm-up at a quarter of `rate`, then `rate` for `--w5-seconds`: the summary."""
    log(f"W5 {name}: warm-up {args.warmup_seconds}s at {rate / 4:.0f} req/s")
    await open_loop(port, pids, requests, rate / 4, args.warmup_seconds, args)
    await asyncio.sleep(1)
    log(f"W5 {name}: {rate:.0f} req/s for {args.w5_seconds}s")
    result = await open_loop(port, pids, requests, rate, args.w5_seconds, args)
    summary = w5_summary(result, tool)
    summary["cpu_ms_per_request"] = result["cpu_ms_per_request"]
    summary["detail"]["run"] = {k: result.get(k) for k in ("target_rps", "achieved_rps", "p99_ms", "errors")}
    log(f"W5 {name}: {json.dumps({k: summary[k] for k in summary if k != 'detail'})}")
    return summary


async def floor(rate: float, args: argparse.Namespace, tool: str) -> Json:
    """The bare hop under every read of W5, with nothing of FlowForge's in it: an aiohttp
    handler (no middleware, no access log) making one grpc.aio unary call (the standard health
    `Check`) to a grpc.aio server in another process and answering a small JSON object, driven
    by the same generator at the read rate. Its CPU per request is what any edge -> service
    read costs on this machine before authentication, rate limiting, a database query and the
    JSON mapping of a run; `cores x 1,000 / rate` ms is what there is."""
    grpc_port, http_port = free_port(), free_port()
    server = await Child.spawn("floor-grpc", {"port": grpc_port}, "floor gRPC server")
    edge = await Child.spawn("floor-edge", {"port": http_port, "grpc_port": grpc_port}, "floor edge")
    try:
        for child in (server, edge):
            await child.receive(within=30)
        request = raw_request("GET", f"{API}/runs/floor", "127.0.0.1", http_port, "floor")
        pids = {"floor_edge": edge.pid, "floor_grpc": server.pid}
        summary = await rate_part("floor", http_port, pids, [request], rate, args, tool)
    finally:
        for child in (edge, server):
            with contextlib.suppress(ProcessLookupError):
                child.process.terminate()
            await child.stop()
    summary["detail"]["what"] = "aiohttp handler -> grpc.aio health Check in another process -> small JSON"
    return summary


async def floor_grpc(config: Json) -> None:
    """`--role floor-grpc`: the standard health servicer on grpc.aio, nothing else."""
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{config['port']}")
    await server.start()
    emit({"ready": True})
    await server.wait_for_termination()


async def floor_edge(config: Json) -> None:
    """`--role floor-edge`: one aiohttp route making one unary call per request."""
    import grpc
    from aiohttp import web
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{config['grpc_port']}")
    stub = health_pb2_grpc.HealthStub(channel)
    question = health_pb2.HealthCheckRequest(service="")

    async def read(request: web.Request) -> web.Response:
        answer = await stub.Check(question, timeout=10)
        return web.json_response({"id": request.match_info["run_id"], "status": int(answer.status)})

    app = web.Application()
    app.router.add_get(f"{API}/runs/{{run_id}}", read)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(config["port"])).start()
    emit({"ready": True})
    await asyncio.Event().wait()


# =============================================================================================
# Orchestration
# =============================================================================================


def w4_failed(args: argparse.Namespace, exc: BaseException) -> Json:
    return {
        "subscribers": args.subscribers,
        "events": None,
        "p50_ms": None,
        "p99_ms": None,
        "edge_kib_per_conn": None,
        "error": f"{type(exc).__name__}: {exc}",
    }


async def bench(args: argparse.Namespace, fd_limit: int) -> Json:
    name = f"flowforge_bench_edge_{uuid.uuid4().hex[:10]}"
    base = ADMIN_DSN.rsplit("/", 1)[0]
    dsn = f"{base}/{name}"
    output: Json = {}
    work_dir = Path(tempfile.mkdtemp(prefix="bench_edge_"))
    stack: Stack | None = None
    await admin_sql(ADMIN_DSN, f'CREATE DATABASE "{name}"')
    try:
        stack = start_stack(dsn, work_dir, args.log_level, args.log_format)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
            await wait_ready(stack, http, STARTUP_TIMEOUT)
            api = Api(http, stack.edge_url)
            await api.sign_up()
            log(f"stack up on {stack.edge_url} (database {name}, logs in {stack.log_dir})")
            if "W4" in args.only:
                try:
                    output["W4"] = await asyncio.wait_for(w4(args, stack, api, dsn, work_dir), args.part_timeout)
                except Exception as exc:
                    log(f"W4 failed: {exc!r}")
                    output["W4"] = w4_failed(args, exc)
            if "W5" in args.only:
                try:
                    output["W5"] = await asyncio.wait_for(w5(args, stack, api, work_dir), args.part_timeout)
                except Exception as exc:
                    log(f"W5 failed: {exc!r}")
                    failed = {
                        "achieved_rps": None,
                        "p50_ms": None,
                        "p99_ms": None,
                        "errors": None,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                    output["W5"] = {
                        "start": {"target_rps": args.start_rps, **failed},
                        "read": {"target_rps": args.read_rps, **failed},
                    }
    finally:
        if stack is not None:
            stop_stack(stack)
        try:
            await admin_sql(ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as exc:
            log(f"could not drop database {name}: {exc!r}")
        if not args.keep_logs:
            shutil.rmtree(work_dir, ignore_errors=True)
    loop_name = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    output["setup"] = (
        f"PostgreSQL (throw-away db), auth/workflow/execution/edge as 4 processes (python -m, 1 worker, pool 10+10, "
        f"PostgresNotifier, rate limiter off, log level {args.log_level}, no Redis), clients in child processes "
        f"({loop_name} loop), fd limit {fd_limit}; {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {dt.datetime.now(dt.UTC):%Y-%m-%d}"
    )
    return output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", default="W4,W5", help="comma-separated: W4, W5, W5.start, W5.read, W5.floor")
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200, help="W4 live runs the subscribers are spread over")
    parser.add_argument("--signal-rate", type=float, default=50.0, help="W4 signals (commits) per second")
    parser.add_argument("--w4-seconds", type=float, default=15.0)
    parser.add_argument("--sse-procs", type=int, default=2, help="W4 subscriber client processes")
    parser.add_argument("--connect-concurrency", type=int, default=32, help="W4 streams opened at once per process")
    parser.add_argument("--open-timeout", type=float, default=300.0, help="W4 time to open every stream")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="W4 wait for the delivery backlog")
    parser.add_argument("--start-rps", type=float, default=500.0)
    parser.add_argument("--read-rps", type=float, default=2000.0)
    parser.add_argument("--w5-seconds", type=float, default=10.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--read-runs", type=int, default=50, help="W5 finished runs the reads rotate over")
    parser.add_argument("--max-connections", type=int, default=256, help="W5 generator connection cap")
    parser.add_argument("--search", action="store_true", help="W5: also bisect the highest rate within the p99 SLO")
    parser.add_argument("--search-probes", type=int, default=4)
    parser.add_argument("--crosscheck", action="store_true", help="W5: also run closed-loop `wrk` for 5 s per part")
    parser.add_argument("--log-level", default="INFO", help="FLOWFORGE_LOG_LEVEL of the services")
    parser.add_argument("--log-format", default="text", help="FLOWFORGE_LOG_FORMAT of the services (text, json)")
    parser.add_argument("--part-timeout", type=float, default=900.0, help="upper bound of W4 and of W5")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory with service logs")
    parser.add_argument("--role", choices=["sse", "load", "floor-grpc", "floor-edge"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    wanted = {part.strip().upper() for part in args.only.split(",") if part.strip()}
    args.only = {part.split(".")[0] for part in wanted}
    args.only_w5 = {part.split(".")[1].lower() for part in wanted if part.startswith("W5.")}
    unknown = args.only - {"W4", "W5"}
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return child_main(args.role)
    fd_limit = raise_fd_limit()
    if fd_limit < args.subscribers + 512:
        log(f"warning: fd limit {fd_limit} is low for {args.subscribers} subscribers")

    def interrupted(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    began = time.monotonic()
    try:
        output = asyncio.run(bench(args, fd_limit))
    except KeyboardInterrupt:
        log("interrupted; stack stopped and database dropped")
        return 130
    output["wall_s"] = round(time.monotonic() - began, 1)
    print(json.dumps(output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
