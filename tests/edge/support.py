"""Test-only gRPC backends for the edge: servicers that record what they received and answer
with canned resources, or fail with a chosen status (with rich details) on request."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from edge.settings import EdgeSettings
from flowforge.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from flowforge.execution.v1 import execution_pb2, execution_service_pb2, execution_service_pb2_grpc
from flowforge.workflow.v1 import (
    agent_pb2,
    agent_service_pb2,
    agent_service_pb2_grpc,
    workflow_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from flowforge_common.auth import TokenVerifier
from flowforge_common.errors import ERROR_DOMAIN
from flowforge_common.grpc_server import GrpcServer, start_grpc_server
from tests.fixtures.tokens import TokenFactory

CREATED_AT = timestamp_pb2.Timestamp(seconds=1768473000)  # 2026-01-15T10:30:00Z
SECRET_DETAIL = "db at 10.0.0.7:5432 said: password authentication failed"
SERVICES = (
    auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"],
    agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"],
    workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"],
    execution_service_pb2.DESCRIPTOR.services_by_name["ExecutionService"],
)


@dataclass(frozen=True)
class Call:
    """One RPC as the backend received it."""

    method: str
    request: Any
    metadata: dict[str, str]


@dataclass
class Recorder:
    """Every call any echo servicer received, in order, and the calls the caller cancelled
    while a servicer was still working on them (method name and `time.monotonic()`)."""

    calls: list[Call] = field(default_factory=list)
    cancelled: list[tuple[str, float]] = field(default_factory=list)
    _cancellations: dict[str, asyncio.Event] = field(default_factory=dict)

    @contextlib.contextmanager
    def cancellation(self, method: str) -> Iterator[None]:
        """Records a cancellation of the call served inside the block."""
        try:
            yield
        except asyncio.CancelledError:
            self.cancelled.append((method, time.monotonic()))
            self._cancellations.setdefault(method, asyncio.Event()).set()
            raise

    async def wait_cancelled(self, method: str, within: float) -> float:
        """When the first call of `method` was cancelled; TimeoutError after `within` s."""
        async with asyncio.timeout(within):
            await self._cancellations.setdefault(method, asyncio.Event()).wait()
        return next(at for name, at in self.cancelled if name == method)

    def record(self, method: str, request: Message, context: grpc.aio.ServicerContext) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        self.calls.append(Call(method, request, metadata))

    def last(self, method: str) -> Call:
        """The latest call of `method`."""
        return next(call for call in reversed(self.calls) if call.method == method)


async def fail_as_asked(resource_id: str, context: grpc.aio.ServicerContext) -> None:
    """Fails when the id says so: `fail.<CODE>` aborts with that code and no details;
    `fail.<CODE>.<REASON>` adds FlowForge's ErrorInfo (and, for VALIDATION_FAILED, two
    BadRequest field violations); `slow` outlasts the edge's deadline; `crash` raises."""
    if resource_id == "slow":
        await asyncio.sleep(5)
    if resource_id == "crash":
        raise RuntimeError(SECRET_DETAIL)
    if not resource_id.startswith("fail."):
        return
    _, code_name, *reason = resource_id.split(".")
    code = grpc.StatusCode[code_name]
    if not reason:
        await context.abort(code, f"plain {code_name} from upstream: {SECRET_DETAIL}")
    status = status_pb2.Status(code=getattr(code_pb2, code_name), message=f"{reason[0]} from upstream")
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason[0], domain=ERROR_DOMAIN))
    status.details.append(info)
    if reason[0] == "VALIDATION_FAILED":
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field="url", description="must be http or https"),
                    error_details_pb2.BadRequest.FieldViolation(
                        field="retry_config.max_retries", description="must be between 0 and 10"
                    ),
                ]
            )
        )
        status.details.append(bad)
    if code_name == "RESOURCE_EXHAUSTED":
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay={"seconds": 7}))
        status.details.append(retry)
    rich = rpc_status.to_status(status)
    await context.abort(rich.code, rich.details, rich.trailing_metadata)


class EchoAgentService(agent_service_pb2_grpc.AgentServiceServicer):
    """AgentService that echoes its input into canned agents."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def CreateAgent(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("CreateAgent", request, context)
        agent = agent_pb2.Agent()
        agent.CopyFrom(request.agent)
        agent.id, agent.etag = "agt_new", "etag-1"
        agent.created_at.CopyFrom(CREATED_AT)
        return agent_service_pb2.CreateAgentResponse(agent=agent)

    async def ListAgents(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("ListAgents", request, context)
        return agent_service_pb2.ListAgentsResponse(
            items=[
                agent_pb2.Agent(id="agt_1", name="one", status=agent_pb2.AGENT_STATUS_ACTIVE, timeout_ms=30000),
                agent_pb2.Agent(id="agt_2", name="two", status=agent_pb2.AGENT_STATUS_INACTIVE),
            ]
        )

    async def GetAgent(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("GetAgent", request, context)
        with self.recorder.cancellation("GetAgent"):
            await fail_as_asked(request.id, context)
        return agent_service_pb2.GetAgentResponse(
            agent=agent_pb2.Agent(
                id=request.id,
                name="echo",
                url="https://agent.example/run",
                auth_type=agent_pb2.AGENT_AUTH_TYPE_APIKEY,
                etag="etag-1",
                created_at=CREATED_AT,
            )
        )

    async def UpdateAgent(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("UpdateAgent", request, context)
        await fail_as_asked(request.id, context)
        agent = agent_pb2.Agent()
        agent.CopyFrom(request.agent)
        agent.id, agent.etag = request.id, "etag-2"
        return agent_service_pb2.UpdateAgentResponse(agent=agent)

    async def DeleteAgent(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("DeleteAgent", request, context)
        return agent_service_pb2.DeleteAgentResponse()

    async def CheckAgentHealth(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("CheckAgentHealth", request, context)
        return agent_service_pb2.CheckAgentHealthResponse(health=agent_pb2.AgentHealth(detail="not probed"))

    async def GetAgentStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("GetAgentStatus", request, context)
        return agent_service_pb2.GetAgentStatusResponse(
            status=agent_pb2.AgentRuntimeStatus(
                status=agent_pb2.AGENT_STATUS_ACTIVE,
                in_flight=2,
                recent_success_rate=0.5,
                p50_latency_ms=120,
                circuit=agent_pb2.CIRCUIT_STATE_HALF_OPEN,
            )
        )


class EchoWorkflowService(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """WorkflowService with the few RPCs the routing tests need; the rest stay UNIMPLEMENTED."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def ValidateWorkflow(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("ValidateWorkflow", request, context)
        plan = struct_pb2.ListValue()
        plan.extend([step.id for step in request.workflow.steps])
        return workflow_service_pb2.ValidateWorkflowResponse(valid=True, plan=[plan])

    async def GetWorkflow(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("GetWorkflow", request, context)
        return workflow_service_pb2.GetWorkflowResponse(workflow=workflow_pb2.Workflow(id=request.id, name="wf"))

    async def CreateWorkflowFromTemplate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("CreateWorkflowFromTemplate", request, context)
        return workflow_service_pb2.CreateWorkflowFromTemplateResponse(
            workflow=workflow_pb2.Workflow(id="wf_9", name=request.name, version=1)
        )


class EchoAuthService(auth_service_pb2_grpc.AuthServiceServicer):
    """AuthService with the public RPCs the edge tests use, and the JWKS of the test tokens
    (the edge verifies bearer tokens against it before calling anything)."""

    def __init__(self, recorder: Recorder, jwks: Sequence[dict[str, Any]] = ()) -> None:
        self.recorder = recorder
        self.jwks = list(jwks)

    async def GetJwks(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        keys = []
        for jwk in self.jwks:
            key = struct_pb2.Struct()
            key.update(jwk)
            keys.append(key)
        return auth_service_pb2.GetJwksResponse(keys=keys)

    async def IssueToken(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("IssueToken", request, context)
        return auth_service_pb2.IssueTokenResponse(
            access_token=f"token-for-{request.client_id}", token_type="Bearer", expires_in=900, scope=request.scope
        )

    async def Signup(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("Signup", request, context)
        return auth_service_pb2.SignupResponse()


class EchoExecutionService(execution_service_pb2_grpc.ExecutionServiceServicer):
    """ExecutionService with canned runs, steps, stats and hooks."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def ListRuns(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("ListRuns", request, context)
        return execution_service_pb2.ListRunsResponse(
            items=[execution_pb2.Run(id="run_1", status=execution_pb2.RUN_STATUS_RUNNING, created_at=CREATED_AT)],
            next_page_token="next",
        )

    async def ListRunSteps(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("ListRunSteps", request, context)
        return execution_service_pb2.ListRunStepsResponse(
            items=[
                execution_pb2.RunStep(step_id="fetch", status=execution_pb2.STEP_STATUS_SUCCEEDED, attempt=1),
                execution_pb2.RunStep(step_id="notify", status=execution_pb2.STEP_STATUS_PENDING),
            ]
        )

    async def GetStats(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("GetStats", request, context)
        return execution_service_pb2.GetStatsResponse(
            runs_by_status={"running": 2**40},
            durations=[execution_pb2.WorkflowDurationStats(workflow_id="wf_1", p50_ms=5, p99_ms=2**53 + 1)],
        )

    async def CancelRun(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("CancelRun", request, context)
        return execution_service_pb2.CancelRunResponse(
            run=execution_pb2.Run(id=request.id, status=execution_pb2.RUN_STATUS_CANCELLED)
        )

    async def SendSignal(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("SendSignal", request, context)
        return execution_service_pb2.SendSignalResponse(run=execution_pb2.Run(id=request.id))

    async def ReceiveHook(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("ReceiveHook", request, context)
        return execution_service_pb2.ReceiveHookResponse(run_id="run_hook")

    async def CreateSchedule(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("CreateSchedule", request, context)
        schedule = execution_pb2.Schedule()
        schedule.CopyFrom(request.schedule)
        schedule.id, schedule.workflow_id = "sch_1", request.workflow_id
        return execution_service_pb2.CreateScheduleResponse(schedule=schedule)

    async def WatchRun(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """The run's next event, `workflow.completed`, then the end of the stream; `fail.*` run
        ids fail as asked before any event; run `hold` sends `workflow.started` and stays open
        until the caller cancels the watch (recorded)."""
        self.recorder.record("WatchRun", request, context)
        await fail_as_asked(request.run_id, context)
        event = "workflow.started" if request.run_id == "hold" else "workflow.completed"
        seq = request.after_seq + 1
        yield execution_service_pb2.WatchRunResponse(
            event=execution_pb2.Event(event=event, seq=seq, run_id=request.run_id, timestamp=CREATED_AT)
        )
        if request.run_id == "hold":
            with self.recorder.cancellation("WatchRun"):
                await asyncio.Event().wait()

    async def CreateWebhookTrigger(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.recorder.record("CreateWebhookTrigger", request, context)
        return execution_service_pb2.CreateWebhookTriggerResponse(
            trigger=execution_pb2.WebhookTrigger(id="trg_1", workflow_id=request.workflow_id)
        )


@dataclass
class EchoBackend:
    """One gRPC server hosting every echo servicer (so one target serves all four services)."""

    server: GrpcServer
    recorder: Recorder

    @property
    def target(self) -> str:
        """host:port of the server."""
        return f"127.0.0.1:{self.server.port}"

    async def stop(self) -> None:
        """Stops the server at once."""
        await self.server.stop(0)


async def start_echo_backend(verifier: TokenVerifier, services: Sequence[Any] = SERVICES) -> EchoBackend:
    """Starts the echo servicers behind FlowForge's own interceptor (auth, scopes, errors)."""
    recorder = Recorder()
    # The generated base classes declare every RPC abstract; the unlisted ones answer
    # UNIMPLEMENTED at run time, which is what the 501 tests want.
    registrations = [
        partial(agent_service_pb2_grpc.add_AgentServiceServicer_to_server, EchoAgentService(recorder)),  # type: ignore[abstract]
        partial(
            workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server,
            EchoWorkflowService(recorder),  # type: ignore[abstract]
        ),
        partial(
            auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
            EchoAuthService(recorder, verifier.keys.jwks),  # type: ignore[abstract]
        ),
        partial(
            execution_service_pb2_grpc.add_ExecutionServiceServicer_to_server,
            EchoExecutionService(recorder),  # type: ignore[abstract]
        ),
    ]
    server = await start_grpc_server(
        host="127.0.0.1", port=0, services=list(services), registrations=registrations, verifier=verifier
    )
    return EchoBackend(server, recorder)


def edge_settings(target: str, **overrides: Any) -> EdgeSettings:
    """Edge settings with every service at `target` and a short upstream deadline."""
    values: dict[str, Any] = {
        "auth_target": target,
        "workflow_target": target,
        "execution_target": target,
        "request_timeout_seconds": 1.0,
        "ready_timeout_seconds": 1.0,
        **overrides,
    }
    return EdgeSettings(**values)


@pytest.fixture
async def backend(tokens: TokenFactory) -> AsyncIterator[EchoBackend]:
    """The echo services, started for one test (a plugin fixture: tests/conftest.py)."""
    backend = await start_echo_backend(tokens.verifier())
    yield backend
    await backend.stop()
