"""WatchRun and WatchEvents over a real in-process execution_svc (port 0), on SQLite and
PostgreSQL, with runs that call a real HTTP test agent: history then live, exact resumption,
no gap or duplicate while events are produced concurrently, filters, tenant isolation, and a
slow consumer cut off without stalling anyone else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from execution_svc.domain.definition import RetryOverrides
from execution_svc.domain.ports import AgentEndpoint
from execution_svc.executors.directory import InMemoryAgentDirectory
from execution_svc.server import create_server
from execution_svc.settings import ExecutionSettings
from flowforge.execution.v1 import execution_pb2 as run_pb
from flowforge.execution.v1 import execution_service_pb2 as pb
from flowforge.execution.v1 import execution_service_pb2_grpc as pb_grpc
from flowforge_common.auth import Principal
from flowforge_common.errors import NotFoundError
from flowforge_common.service import RunningService
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.test_agent import TestAgent, test_agent  # noqa: F401  (fixture)
from tests.fixtures.tokens import TokenFactory

TENANT = "ten_watch"
OTHER = "ten_other"

WORKFLOWS: dict[str, dict[str, Any]] = {
    # fetch (agent) -> shout (transform) -> approve (waits for signal `ok`)
    "wf_gate": {
        "id": "wf_gate",
        "name": "gate",
        "version": 1,
        "steps": [
            {"id": "fetch", "agent": "echo", "input": {"body": "{{ input.doc }}"}},
            {"id": "shout", "type": "transform", "depends_on": ["fetch"], "input": "{{ steps.fetch.output.body }}!"},
            {"id": "approve", "type": "wait_for_signal", "depends_on": ["shout"], "config": {"signal": "ok"}},
        ],
        "output": {"shout": "{{ steps.shout.output }}"},
    },
    # Six parallel agent calls with a little latency: events of many runs interleave.
    "wf_fan": {
        "id": "wf_fan",
        "name": "fan",
        "version": 1,
        "steps": [{"id": f"call{i}", "agent": "slow", "input": {"i": i, "sleep_ms": 5 * i}} for i in range(6)],
        "output": {"n": 6},
    },
    # Big events, produced over time: a chain of agent calls that each echo the (large) input.
    "wf_big": {
        "id": "wf_big",
        "name": "big",
        "version": 1,
        "steps": [{"id": "s0", "agent": "echo", "input": "{{ input.blob }}"}]
        + [
            {"id": f"s{i}", "agent": "echo", "depends_on": [f"s{i - 1}"], "input": "{{ input.blob }}"}
            for i in range(1, 40)
        ],
        "output": {"done": True},
    },
}


class Workflows:
    """The definitions above, for any tenant (tenancy is tested on runs and events)."""

    async def fetch(self, caller: Principal, workflow_id: str, version: int | None) -> Mapping[str, Any]:
        if workflow_id not in WORKFLOWS:
            raise NotFoundError(f"workflow {workflow_id} not found")
        return WORKFLOWS[workflow_id]


@dataclass
class Client:
    stub: pb_grpc.ExecutionServiceStub
    metadata: list[tuple[str, str]]


async def start_execution(
    database: DatabaseTarget, tokens: TokenFactory, agent: TestAgent, **overrides: Any
) -> RunningService:
    agents = InMemoryAgentDirectory()
    for tenant in (TENANT, OTHER):
        no_retry = RetryOverrides(max_retries=0)
        agents.register(tenant, AgentEndpoint(name="echo", url=agent.url("/echo"), headers={}, retry=no_retry))
        agents.register(tenant, AgentEndpoint(name="slow", url=agent.url("/latency"), headers={}, retry=no_retry))
    settings = ExecutionSettings(
        port=0,
        database_url=database.url,
        db_schema=database.schema,
        data_dir=database.data_dir,
        lease_seconds=5,
        heartbeat_seconds=1,
        idle_poll_seconds=0.5,
        shutdown_grace_seconds=0,
        agent_network="allow-private",  # the test agent lives on loopback
        **overrides,
    )
    return await create_server(settings, verifier=tokens.verifier(), workflows=Workflows(), agents=agents)


@pytest.fixture
async def execution(
    database: DatabaseTarget,
    tokens: TokenFactory,
    test_agent: TestAgent,  # noqa: F811
) -> AsyncIterator[RunningService]:
    service = await start_execution(database, tokens, test_agent)
    yield service
    await service.stop(0)


@pytest.fixture
async def channel(execution: RunningService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{execution.port}") as channel:
        yield channel


def client_for(channel: grpc.aio.Channel, tokens: TokenFactory, tenant: str = TENANT) -> Client:
    token = tokens.mint(tenant_id=tenant, subject=f"usr_{tenant}", scopes=("runs:read", "runs:execute"))
    return Client(pb_grpc.ExecutionServiceStub(channel), [("authorization", f"Bearer {token}")])


@pytest.fixture
def client(channel: grpc.aio.Channel, tokens: TokenFactory) -> Client:
    return client_for(channel, tokens)


def value(data: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(data, message)
    return message


async def execute(client: Client, workflow_id: str, run_input: Any) -> run_pb.Run:
    response = await client.stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(workflow_id=workflow_id, input=value(run_input)), metadata=client.metadata
    )
    return response.run


async def signal(client: Client, run_id: str) -> None:
    """Sends `ok` once the run's `approve` step is waiting for it."""
    deadline = time.monotonic() + 10
    while "approve" not in [line.step_id for line in await _events(client, run_id)]:
        assert time.monotonic() < deadline, "the run never reached its approve step"
        await asyncio.sleep(0.05)
    await client.stub.SendSignal(pb.SendSignalRequest(id=run_id, name="ok"), metadata=client.metadata)


async def read_run(client: Client, run_id: str, after_seq: int = 0, *, until: str | None = None) -> list[run_pb.Event]:
    """WatchRun events until the stream ends, or until the first event of type `until`."""
    events: list[run_pb.Event] = []
    stream = client.stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=after_seq), metadata=client.metadata)
    async for response in stream:
        events.append(response.event)
        if response.event.event == until:
            stream.cancel()
            break
    return events


async def log_seqs(client: Client, run_id: str) -> list[int]:
    logs = await client.stub.ListRunLogs(pb.ListRunLogsRequest(id=run_id), metadata=client.metadata)
    return [line.seq for line in logs.items]


async def wait_for_status(client: Client, run_id: str, status: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = (await client.stub.GetRun(pb.GetRunRequest(id=run_id), metadata=client.metadata)).run
        if run.status == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} did not reach status {status}")


# ----------------------------------------------------------------------------- WatchRun


async def test_watch_run_replays_history_then_follows_live(client: Client) -> None:
    run = await execute(client, "wf_gate", {"doc": "memo"})
    await wait_for_status(client, run.id, run_pb.RUN_STATUS_RUNNING)
    history = await read_run(client, run.id, until="workflow.step.started")  # at least workflow.started
    assert history[0].event == "workflow.started" and history[0].seq == 1

    # Follow from the start while the run parks on its signal, then release it.
    live = asyncio.create_task(read_run(client, run.id))
    await asyncio.sleep(0.3)
    assert not live.done()  # waiting for live events, not ended
    await signal(client, run.id)
    events = await asyncio.wait_for(live, 10)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1)) == await log_seqs(client, run.id)
    assert events[-1].event == "workflow.completed"
    assert json_format.MessageToDict(events[-1].data)["output"] == {"shout": "memo!"}


async def _events(client: Client, run_id: str) -> list[run_pb.RunLog]:
    logs = await client.stub.ListRunLogs(pb.ListRunLogsRequest(id=run_id), metadata=client.metadata)
    return list(logs.items)


async def test_resuming_with_after_seq_yields_exactly_the_missing_events(client: Client) -> None:
    run = await execute(client, "wf_gate", {"doc": "x"})
    first = await read_run(client, run.id, until="workflow.step.completed")
    await signal(client, run.id)
    await wait_for_status(client, run.id, run_pb.RUN_STATUS_SUCCEEDED)
    everything = await log_seqs(client, run.id)
    for cut in (0, first[-1].seq, len(everything) - 1):
        rest = await asyncio.wait_for(read_run(client, run.id, after_seq=cut), 10)
        assert [e.seq for e in rest] == everything[cut:]
        assert rest[-1].event == "workflow.completed"
    # After the terminal event: nothing more, and the stream ends at once.
    assert await asyncio.wait_for(read_run(client, run.id, after_seq=everything[-1]), 5) == []


async def test_no_gap_or_duplicate_while_runs_produce_events_concurrently(client: Client) -> None:
    tail = client.stub.WatchEvents(pb.WatchEventsRequest(), metadata=client.metadata)
    await tail.initial_metadata()
    runs = await asyncio.gather(*(execute(client, "wf_fan", {}) for _ in range(8)))
    # Watchers join at different moments: some replay history, some follow live only.
    watchers = []
    for index, run in enumerate(runs):
        watchers.append(asyncio.create_task(read_run(client, run.id)))
        if index % 2:
            await asyncio.sleep(0.02)
    per_run = await asyncio.wait_for(asyncio.gather(*watchers), 30)
    expected: dict[str, list[int]] = {}
    for run, events in zip(runs, per_run, strict=True):
        expected[run.id] = await log_seqs(client, run.id)
        assert [e.seq for e in events] == expected[run.id] == list(range(1, len(events) + 1))
        assert events[-1].event == "workflow.completed"

    # The tenant-wide tail saw the same events: each run's seqs in order, once, cursor rising.
    seen: dict[str, list[int]] = {run_id: [] for run_id in expected}
    cursors: list[int] = []
    total = sum(len(seqs) for seqs in expected.values())
    async with asyncio.timeout(20):
        async for response in tail:
            seen[response.event.run_id].append(response.event.seq)
            cursors.append(response.cursor)
            if len(cursors) == total:
                break
    tail.cancel()
    assert seen == expected
    assert cursors == sorted(set(cursors))


# ----------------------------------------------------------------------------- WatchEvents


async def _collect(stream: Any, count: int, seconds: float = 10) -> list[pb.WatchEventsResponse]:
    responses: list[pb.WatchEventsResponse] = []
    async with asyncio.timeout(seconds):
        async for response in stream:
            responses.append(response)
            if len(responses) == count:
                break
    return responses


async def test_watch_events_filters_and_tenant_isolation(
    channel: grpc.aio.Channel, client: Client, tokens: TokenFactory
) -> None:
    other = client_for(channel, tokens, OTHER)
    completed = client.stub.WatchEvents(pb.WatchEventsRequest(types=["workflow.completed"]), metadata=client.metadata)
    gates = client.stub.WatchEvents(pb.WatchEventsRequest(workflow_id="wf_gate"), metadata=client.metadata)
    theirs = other.stub.WatchEvents(pb.WatchEventsRequest(), metadata=other.metadata)
    for stream in (completed, gates, theirs):
        await stream.initial_metadata()

    gate = await execute(client, "wf_gate", {"doc": "a"})
    fan = await execute(client, "wf_fan", {})
    await signal(client, gate.id)
    mine_done = await _collect(completed, 2)
    assert sorted(r.event.run_id for r in mine_done) == sorted([gate.id, fan.id])
    assert {r.event.event for r in mine_done} == {"workflow.completed"}

    gate_seqs = await log_seqs(client, gate.id)
    gate_events = await _collect(gates, len(gate_seqs))
    assert {r.event.run_id for r in gate_events} == {gate.id}
    assert [r.event.seq for r in gate_events] == gate_seqs

    # The other tenant's watcher sees its own run only.
    their_run = await execute(other, "wf_fan", {})
    their_seqs = await log_seqs(other, their_run.id) or [1]
    got = await _collect(theirs, 1)
    assert got[0].event.run_id == their_run.id and got[0].event.seq == their_seqs[0]
    for stream in (completed, gates, theirs):
        stream.cancel()

    # A run filter naming another tenant's run is NOT_FOUND, before any event.
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await _collect(other.stub.WatchEvents(pb.WatchEventsRequest(run_id=gate.id), metadata=other.metadata), 1)
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as hidden_run:
        await read_run(other, gate.id)
    assert hidden_run.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as bad_type:
        await _collect(client.stub.WatchEvents(pb.WatchEventsRequest(types=["nope"]), metadata=client.metadata), 1)
    assert bad_type.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_events_resumes_after_its_cursor(client: Client) -> None:
    stream = client.stub.WatchEvents(pb.WatchEventsRequest(), metadata=client.metadata)
    await stream.initial_metadata()
    run = await execute(client, "wf_gate", {"doc": "c"})
    await signal(client, run.id)
    await wait_for_status(client, run.id, run_pb.RUN_STATUS_SUCCEEDED)
    seqs = await log_seqs(client, run.id)
    everything = await _collect(stream, len(seqs))
    stream.cancel()
    assert [r.event.seq for r in everything] == seqs
    cut = 2
    resumed = client.stub.WatchEvents(
        pb.WatchEventsRequest(run_id=run.id, after_cursor=everything[cut - 1].cursor), metadata=client.metadata
    )
    rest = await _collect(resumed, len(seqs) - cut)
    resumed.cancel()
    assert [(r.cursor, r.event.seq) for r in rest] == [(r.cursor, r.event.seq) for r in everything[cut:]]


# ----------------------------------------------------------------------------- slow consumers


async def test_a_slow_consumer_is_cut_off_without_stalling_others(
    database: DatabaseTarget,
    tokens: TokenFactory,
    test_agent: TestAgent,  # noqa: F811
) -> None:
    service = await start_execution(database, tokens, test_agent, watch_buffer_events=2, watch_stall_seconds=0.5)
    # Small flow-control windows: the stalled reader's transport buffers little.
    options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{service.port}", options=options) as slow_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as fast_channel,
        ):
            slow, fast = client_for(slow_channel, tokens), client_for(fast_channel, tokens)
            # 40 events of ~30 KB each: far more than the stalled transport buffers.
            run = await execute(fast, "wf_big", {"blob": "x" * 30_000})
            stalled = slow.stub.WatchRun(pb.WatchRunRequest(run_id=run.id), metadata=slow.metadata)
            first = await stalled.read()  # then stop reading
            assert first.event.seq == 1

            # Others go on: the run finishes and another watcher reads every event.
            await wait_for_status(fast, run.id, run_pb.RUN_STATUS_SUCCEEDED)
            everything = await asyncio.wait_for(read_run(fast, run.id), 20)
            assert [e.seq for e in everything] == await log_seqs(fast, run.id)

            await asyncio.sleep(1.5)  # the stalled watcher's buffer stays full past 0.5 s
            received = [first.event.seq]
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                async with asyncio.timeout(20):
                    while (response := await stalled.read()) is not grpc.aio.EOF:
                        received.append(response.event.seq)
            assert cut.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"after_seq={received[-1]}" in (cut.value.details() or "")
            assert received == list(range(1, len(received) + 1))
            assert len(received) < len(everything)

            # It resumes from its cursor with exactly the rest.
            rest = await asyncio.wait_for(read_run(fast, run.id, after_seq=received[-1]), 20)
            assert received + [e.seq for e in rest] == [e.seq for e in everything]
    finally:
        await service.stop(0)
