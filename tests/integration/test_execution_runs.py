"""ExecutionService over a real in-process gRPC server (port 0), on SQLite and PostgreSQL:
executing runs, reading them, controlling them, and watching their events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_status import rpc_status

from execution_svc.api.workflows import WorkflowServiceSource
from execution_svc.domain.definition import OnExhausted, RetryOverrides, StepType, parse_workflow
from execution_svc.domain.ports import AgentEndpoint
from execution_svc.executors.directory import InMemoryAgentDirectory
from execution_svc.server import create_server
from execution_svc.settings import ExecutionSettings
from flowforge.execution.v1 import execution_pb2 as run_pb
from flowforge.execution.v1 import execution_service_pb2 as pb
from flowforge.execution.v1 import execution_service_pb2_grpc as pb_grpc
from flowforge.workflow.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from flowforge_common.auth import Principal
from flowforge_common.errors import NotFoundError
from flowforge_common.service import RunningService
from flowforge_common.service_identity import ServiceCredential
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.test_agent import TestAgent, test_agent  # noqa: F401  (fixture)
from tests.fixtures.tokens import TokenFactory

TENANT = "ten_test"

WORKFLOWS: dict[str, dict[str, Any]] = {
    "wf_pipeline": {
        "id": "wf_pipeline",
        "name": "pipeline",
        "version": 2,
        "input_schema": {"type": "object", "required": ["doc"]},
        "steps": [
            {"id": "fetch", "agent": "echo", "input": {"body": "{{ input.doc }}"}},
            {"id": "shout", "type": "transform", "depends_on": ["fetch"], "input": "{{ steps.fetch.output.body }}!"},
            {"id": "approve", "type": "wait_for_signal", "depends_on": ["shout"], "config": {"signal": "ok"}},
        ],
        "output": {"shout": "{{ steps.shout.output }}", "approved_by": "{{ steps.approve.output.by }}"},
    },
}


class FakeWorkflows:
    """Workflow definitions by id, visible to one tenant."""

    async def fetch(self, caller: Principal, workflow_id: str, version: int | None) -> Mapping[str, Any]:
        if caller.tenant_id != TENANT or workflow_id not in WORKFLOWS:
            raise NotFoundError(f"workflow {workflow_id} not found")
        return WORKFLOWS[workflow_id]


@dataclass
class Client:
    stub: pb_grpc.ExecutionServiceStub
    metadata: list[tuple[str, str]]


@pytest.fixture
async def execution(
    database: DatabaseTarget,
    tokens: TokenFactory,
    test_agent: TestAgent,  # noqa: F811  (the imported fixture)
) -> AsyncIterator[RunningService]:
    agents = InMemoryAgentDirectory()
    agents.register(
        TENANT, AgentEndpoint(name="echo", url=test_agent.url("/echo"), headers={}, retry=RetryOverrides(max_retries=0))
    )
    settings = ExecutionSettings(
        port=0,
        database_url=database.url,
        db_schema=database.schema,
        data_dir=database.data_dir,
        lease_seconds=5,
        agent_network="allow-private",  # the test agent listens on loopback
        heartbeat_seconds=1,
        idle_poll_seconds=0.5,
        shutdown_grace_seconds=0,
    )
    service = await create_server(settings, verifier=tokens.verifier(), workflows=FakeWorkflows(), agents=agents)
    yield service
    await service.stop(0)


@pytest.fixture
async def client(execution: RunningService, tokens: TokenFactory) -> AsyncIterator[Client]:
    token = tokens.mint(tenant_id=TENANT, subject="usr_ops", scopes=("runs:read", "runs:execute"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{execution.port}") as channel:
        yield Client(pb_grpc.ExecutionServiceStub(channel), [("authorization", f"Bearer {token}")])


def value(data: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    json_format.ParseDict(data, message)
    return message


async def watch(client: Client, run_id: str, after_seq: int = 0, count: int | None = None) -> list[run_pb.Event]:
    """Events from the stream: all of them (it ends after the terminal one) or the first `count`."""
    events: list[run_pb.Event] = []
    stream = client.stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=after_seq), metadata=client.metadata)
    async for response in stream:
        events.append(response.event)
        if count is not None and len(events) == count:
            stream.cancel()
            break
    return events


async def execute(client: Client, doc: str = "report", **extra: Any) -> run_pb.Run:
    response = await client.stub.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(workflow_id="wf_pipeline", input=value({"doc": doc}), **extra),
        metadata=client.metadata,
    )
    return response.run


async def test_a_run_executes_and_streams_its_events(client: Client) -> None:
    run = await execute(client)
    assert run.workflow_name == "pipeline" and run.workflow_version == 2
    assert run.triggered_by == "usr_ops" and run.trigger == run_pb.RUN_TRIGGER_API
    first = await watch(client, run.id, count=6)  # started, fetch started/completed, shout x2, approve started
    assert [e.event for e in first][:2] == ["workflow.started", "workflow.step.started"]
    assert first[-1].event == "workflow.step.started" and first[-1].step_id == "approve"

    await client.stub.SendSignal(
        pb.SendSignalRequest(id=run.id, name="ok", payload=value({"by": "alice"})), metadata=client.metadata
    )
    # Resume after the last event seen: exactly the missing events, then the stream ends.
    rest = await watch(client, run.id, after_seq=first[-1].seq)
    seqs = [e.seq for e in first + rest]
    assert seqs == list(range(1, len(seqs) + 1))
    assert rest[-1].event == "workflow.completed"
    assert json_format.MessageToDict(rest[-1].data)["output"] == {"shout": "report!", "approved_by": "alice"}

    got = (await client.stub.GetRun(pb.GetRunRequest(id=run.id), metadata=client.metadata)).run
    assert got.status == run_pb.RUN_STATUS_SUCCEEDED
    assert json_format.MessageToDict(got.output) == {"shout": "report!", "approved_by": "alice"}
    assert [s.step_id for s in got.steps] == ["fetch", "shout", "approve"]
    steps = (await client.stub.ListRunSteps(pb.ListRunStepsRequest(id=run.id), metadata=client.metadata)).items
    assert steps[0].agent == "echo" and steps[0].attempts[0].status == run_pb.STEP_STATUS_SUCCEEDED
    assert json_format.MessageToDict(steps[0].output) == {"body": "report"}
    logs = (await client.stub.ListRunLogs(pb.ListRunLogsRequest(id=run.id), metadata=client.metadata)).items
    assert [line.seq for line in logs] == seqs
    assert logs[-1].message.startswith("workflow.completed")


async def test_a_watcher_following_live_sees_every_event_once(client: Client) -> None:
    run = await execute(client)
    live = asyncio.create_task(watch(client, run.id))
    for _ in range(400):  # the signal is refused until a step waits for it
        current = (await client.stub.GetRun(pb.GetRunRequest(id=run.id), metadata=client.metadata)).run
        if any(step.status == run_pb.STEP_STATUS_WAITING for step in current.steps):
            break
        await asyncio.sleep(0.025)
    await client.stub.SendSignal(pb.SendSignalRequest(id=run.id, name="ok"), metadata=client.metadata)
    events = await asyncio.wait_for(live, 10)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "workflow.completed"


async def test_listing_runs(client: Client) -> None:
    first = await execute(client, "a")
    second = await execute(client, "b")
    await client.stub.CancelRun(pb.CancelRunRequest(id=first.id), metadata=client.metadata)
    page = await client.stub.ListRuns(pb.ListRunsRequest(limit=1), metadata=client.metadata)
    assert [r.id for r in page.items] == [second.id] and page.next_page_token
    page = await client.stub.ListRuns(
        pb.ListRunsRequest(limit=1, page_token=page.next_page_token), metadata=client.metadata
    )
    assert [r.id for r in page.items] == [first.id] and not page.next_page_token
    cancelled = await client.stub.ListRuns(
        pb.ListRunsRequest(status=run_pb.RUN_STATUS_CANCELLED), metadata=client.metadata
    )
    assert [r.id for r in cancelled.items] == [first.id]


async def test_refusals_carry_the_right_codes(client: Client, tokens: TokenFactory) -> None:
    run = await execute(client)
    await client.stub.CancelRun(pb.CancelRunRequest(id=run.id), metadata=client.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as finished:
        await client.stub.CancelRun(pb.CancelRunRequest(id=run.id), metadata=client.metadata)
    assert finished.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already cancelled" in (finished.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as bad_input:
        await client.stub.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(workflow_id="wf_pipeline", input=value({"nope": 1})), metadata=client.metadata
        )
    assert bad_input.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(bad_input.value)
    assert status is not None and any("BadRequest" in detail.type_url for detail in status.details)

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await client.stub.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="wf_nope"), metadata=client.metadata)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    stranger = [("authorization", f"Bearer {tokens.mint(tenant_id='ten_other', scopes=('runs:read',))}")]
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await client.stub.GetRun(pb.GetRunRequest(id=run.id), metadata=stranger)
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND

    reader = [("authorization", f"Bearer {tokens.mint(tenant_id=TENANT, scopes=('runs:read',))}")]
    with pytest.raises(grpc.aio.AioRpcError) as forbidden:
        await client.stub.PauseRun(pb.PauseRunRequest(id=run.id), metadata=reader)
    assert forbidden.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_idempotency_keys_over_grpc(client: Client) -> None:
    first = await execute(client, idempotency_key="k-1")
    again = await execute(client, idempotency_key="k-1")
    assert again.id == first.id
    with pytest.raises(grpc.aio.AioRpcError) as mismatch:
        await execute(client, "other", idempotency_key="k-1")
    assert mismatch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "different request" in (mismatch.value.details() or "")


class FakeWorkflowService(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """workflow_svc's GetWorkflow, answering one proto workflow."""

    def __init__(self) -> None:
        self.seen_auth: list[str] = []

    async def GetWorkflow(
        self, request: workflow_service_pb2.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> workflow_service_pb2.GetWorkflowResponse:
        self.seen_auth.append(dict(context.invocation_metadata() or ()).get("authorization", ""))
        if request.id != "wf_proto":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such workflow")
        workflow = workflow_pb2.Workflow(
            id="wf_proto",
            name="from-proto",
            version=request.version or 4,
            status=workflow_pb2.WORKFLOW_STATUS_ACTIVE,
            steps=[
                workflow_pb2.Step(id="a", type=workflow_pb2.STEP_TYPE_TRANSFORM, input=value("{{ input.x }}")),
                workflow_pb2.Step(
                    id="b",
                    type=workflow_pb2.STEP_TYPE_TRANSFORM,
                    depends_on=["a"],
                    input=value({"twice": "{{ [steps.a.output, steps.a.output] }}"}),
                    on_exhausted=workflow_pb2.ON_EXHAUSTED_PAUSE,
                ),
            ],
            output=value("{{ steps.b.output }}"),
        )
        return workflow_service_pb2.GetWorkflowResponse(workflow=workflow)


async def test_workflow_definitions_come_from_workflow_svc() -> None:
    fake = FakeWorkflowService()
    server = grpc.aio.server()
    workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            source = WorkflowServiceSource(channel, ServiceCredential("s" * 32, service_name="execution"))
            caller = Principal(tenant_id=TENANT, subject="usr", token="tok-123")
            snapshot = await source.fetch(caller, "wf_proto", 3)
            assert fake.seen_auth == ["Bearer tok-123"]
            assert (snapshot["name"], snapshot["version"]) == ("from-proto", 3)
            assert snapshot["steps"][1]["type"] == "STEP_TYPE_TRANSFORM"
            with pytest.raises(NotFoundError):
                await source.fetch(caller, "wf_missing", None)
    finally:
        await server.stop(0)

    definition = parse_workflow(snapshot)
    assert definition.step("b").type is StepType.TRANSFORM
    assert definition.step("b").on_exhausted is OnExhausted.PAUSE
