"""ExecutionService servicer: proto <-> domain for runs, controls, logs and run streams.

Authentication and scopes are the interceptor's (from each RPC's declared policy); domain
errors become rich statuses there too. RPCs not overridden here (schedules, webhooks,
stats) still answer UNIMPLEMENTED from the generated base class.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from execution_svc.api.mappers import (
    event_to_log,
    event_to_proto,
    required,
    run_filter_from_proto,
    run_to_proto,
    step_to_proto,
    value_from_proto,
)
from execution_svc.domain.models import EventRecord
from execution_svc.domain.ports import WorkflowSource
from execution_svc.domain.service import ExecutionEngine
from execution_svc.domain.watch import EventFilter
from execution_svc.executors.guard import AgentGuard, CircuitState
from flowforge.execution.v1 import execution_service_pb2 as pb
from flowforge.execution.v1 import execution_service_pb2_grpc
from flowforge.workflow.v1 import agent_pb2
from flowforge_common.auth import current_principal
from flowforge_common.memo import Memo

_CIRCUIT_TO_PROTO = {
    CircuitState.CLOSED: agent_pb2.CIRCUIT_STATE_CLOSED,
    CircuitState.OPEN: agent_pb2.CIRCUIT_STATE_OPEN,
    CircuitState.HALF_OPEN: agent_pb2.CIRCUIT_STATE_HALF_OPEN,
}


class ExecutionServiceServicer(execution_service_pb2_grpc.ExecutionServiceServicer):
    """Proto <-> domain translation for ExecutionService."""

    def __init__(
        self, engine: ExecutionEngine, workflows: WorkflowSource, agent_guard: AgentGuard | None = None
    ) -> None:
        self._engine = engine
        self._workflows = workflows
        self._agent_guard = agent_guard or AgentGuard()
        # A committed event never changes: its message is made once for all of a run's watchers.
        self._watch_responses: Memo[tuple[str, str, int], pb.WatchRunResponse] = Memo()

    async def GetAgentCallStats(
        self, request: pb.GetAgentCallStatsRequest, _context: grpc.aio.ServicerContext
    ) -> pb.GetAgentCallStatsResponse:
        """Internal: this replica's breaker and recent calls for one agent of the caller's tenant."""
        runtime = self._agent_guard.runtime((current_principal().tenant_id, required(request.agent_name, "agent_name")))
        return pb.GetAgentCallStatsResponse(
            circuit=_CIRCUIT_TO_PROTO[runtime.circuit],
            in_flight=runtime.in_flight,
            recent_calls=runtime.recent_calls,
            recent_success_rate=runtime.recent_success_rate,
            p50_latency_ms=runtime.p50_latency_ms,
        )

    async def ExecuteWorkflow(
        self, request: pb.ExecuteWorkflowRequest, _context: grpc.aio.ServicerContext
    ) -> pb.ExecuteWorkflowResponse:
        caller = current_principal()
        workflow = await self._workflows.fetch(
            caller, required(request.workflow_id, "workflow_id"), request.version or None
        )
        run = await self._engine.start_run(
            caller.tenant_id,
            workflow,
            value_from_proto(request.input) if request.HasField("input") else None,
            triggered_by=caller.subject,
            idempotency_key=request.idempotency_key,
            requested_version=request.version or None,
        )
        return pb.ExecuteWorkflowResponse(run=run_to_proto(run))

    async def ListRuns(self, request: pb.ListRunsRequest, _context: grpc.aio.ServicerContext) -> pb.ListRunsResponse:
        page = await self._engine.list_runs(
            current_principal().tenant_id,
            run_filter_from_proto(request),
            limit=request.limit,
            page_token=request.page_token,
        )
        return pb.ListRunsResponse(
            items=[run_to_proto(run) for run in page.items], next_page_token=page.next_page_token
        )

    async def GetRun(self, request: pb.GetRunRequest, _context: grpc.aio.ServicerContext) -> pb.GetRunResponse:
        run = await self._engine.get_run(current_principal().tenant_id, required(request.id, "id"))
        return pb.GetRunResponse(run=run_to_proto(run))

    async def ListRunSteps(
        self, request: pb.ListRunStepsRequest, _context: grpc.aio.ServicerContext
    ) -> pb.ListRunStepsResponse:
        steps = await self._engine.list_steps(current_principal().tenant_id, required(request.id, "id"))
        return pb.ListRunStepsResponse(items=[step_to_proto(step) for step in steps])

    async def CancelRun(self, request: pb.CancelRunRequest, _context: grpc.aio.ServicerContext) -> pb.CancelRunResponse:
        run = await self._engine.cancel_run(**self._control(request))
        return pb.CancelRunResponse(run=run_to_proto(run))

    async def PauseRun(self, request: pb.PauseRunRequest, _context: grpc.aio.ServicerContext) -> pb.PauseRunResponse:
        run = await self._engine.pause_run(**self._control(request))
        return pb.PauseRunResponse(run=run_to_proto(run))

    async def ResumeRun(self, request: pb.ResumeRunRequest, _context: grpc.aio.ServicerContext) -> pb.ResumeRunResponse:
        run = await self._engine.resume_run(**self._control(request))
        return pb.ResumeRunResponse(run=run_to_proto(run))

    async def RetryRun(self, request: pb.RetryRunRequest, _context: grpc.aio.ServicerContext) -> pb.RetryRunResponse:
        run = await self._engine.retry_run(**self._control(request))
        return pb.RetryRunResponse(run=run_to_proto(run))

    async def RetryStep(self, request: pb.RetryStepRequest, _context: grpc.aio.ServicerContext) -> pb.RetryStepResponse:
        run = await self._engine.retry_step(step_id=required(request.step_id, "step_id"), **self._control(request))
        return pb.RetryStepResponse(run=run_to_proto(run))

    async def SendSignal(
        self, request: pb.SendSignalRequest, _context: grpc.aio.ServicerContext
    ) -> pb.SendSignalResponse:
        run = await self._engine.send_signal(
            name=required(request.name, "name"),
            payload=value_from_proto(request.payload) if request.HasField("payload") else None,
            **self._control(request),
        )
        return pb.SendSignalResponse(run=run_to_proto(run))

    async def CompleteStep(
        self, request: pb.CompleteStepRequest, _context: grpc.aio.ServicerContext
    ) -> pb.CompleteStepResponse:
        run = await self._engine.complete_step(
            step_id=required(request.step_id, "step_id"),
            output=value_from_proto(request.output) if request.HasField("output") else None,
            **self._control(request),
        )
        return pb.CompleteStepResponse(run=run_to_proto(run))

    async def ListRunLogs(
        self, request: pb.ListRunLogsRequest, _context: grpc.aio.ServicerContext
    ) -> pb.ListRunLogsResponse:
        events = await self._engine.list_events(
            current_principal().tenant_id, required(request.id, "id"), after_seq=request.after_seq
        )
        return pb.ListRunLogsResponse(items=[event_to_log(event) for event in events])

    async def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchRunResponse]:
        stream = await self._engine.open_run_watch(
            current_principal().tenant_id, required(request.run_id, "run_id"), after_seq=request.after_seq
        )
        try:
            # Headers now: the edge knows the watch is accepted before the first event exists.
            await context.send_initial_metadata(())
            async for event in stream:
                yield self._watch_response(event)
        finally:
            await stream.aclose()

    def _watch_response(self, event: EventRecord) -> pb.WatchRunResponse:
        return self._watch_responses.get(
            (event.tenant_id, event.run_id, event.seq), lambda: pb.WatchRunResponse(event=event_to_proto(event))
        )

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        filters = EventFilter(
            workflow_id=request.workflow_id, run_id=request.run_id, types=frozenset(t for t in request.types if t)
        )
        stream = await self._engine.open_events_watch(
            current_principal().tenant_id, filters, after_cursor=request.after_cursor
        )
        try:
            await context.send_initial_metadata(())
            async for logged in stream:
                yield pb.WatchEventsResponse(event=event_to_proto(logged.event), cursor=logged.position)
        finally:
            await stream.aclose()

    @staticmethod
    def _control(request: Any) -> dict[str, Any]:
        """Arguments every control shares: tenant, run, actor (audited), idempotency key."""
        caller = current_principal()
        return {
            "tenant_id": caller.tenant_id,
            "run_id": required(request.id, "id"),
            "actor": caller.subject,
            "idempotency_key": request.idempotency_key,
        }
