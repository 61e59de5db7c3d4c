"""`sub_workflow` steps: an attempt starts a child run and waits for it.

The child is a run like any other (its own events, controls and retries), linked to its parent
by `parent_run_id`/`parent_step_id` and started with the step's evaluated input. The attempt
holds its task lease (the worker heartbeats it) while it follows the child's events, so a child
that takes hours costs one idle coroutine. The child's output is the step's output; a failed
child fails the attempt (retryable: the step's retry policy may start a fresh child), a
cancelled one fails it for good. Cancelling the parent (or the attempt timing out) cancels the
child. Child runs are started idempotently per attempt, so a worker that retries the start
after a lost answer does not start two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from execution_svc.domain.definition import StepType
from execution_svc.domain.models import RunError, RunStatus, Trigger
from execution_svc.domain.ports import StepCall, StepExecutor, StepFailed, StepResult, StepSucceeded, WorkflowSource
from execution_svc.domain.service import ExecutionEngine
from flowforge_common.auth import Principal
from flowforge_common.errors import DomainError, NotFoundError, UnavailableError, ValidationError

logger = logging.getLogger(__name__)


class SubWorkflowExecutor:
    """Executes `sub_workflow` step attempts on this engine."""

    def __init__(self, engine: ExecutionEngine, workflows: WorkflowSource) -> None:
        self._engine = engine
        self._workflows = workflows

    async def execute(self, call: StepCall) -> StepResult:
        """See `StepExecutor.execute`."""
        workflow_id = call.config.get("workflow_id")
        version = call.config.get("version")
        if not isinstance(workflow_id, str) or not workflow_id:
            return StepFailed(RunError("BAD_CONFIG", "sub_workflow steps need config.workflow_id"), retryable=False)
        pinned = version if isinstance(version, int) and not isinstance(version, bool) and version > 0 else None
        # The child is started for the parent run's tenant, by the run itself, not by a user.
        caller = Principal(tenant_id=call.tenant_id, subject=f"run:{call.run_id}")
        try:
            workflow = await self._workflows.fetch(caller, workflow_id, pinned)
            child = await self._engine.start_run(
                call.tenant_id,
                workflow,
                call.input,
                trigger=Trigger.SUB_WORKFLOW,
                triggered_by=f"run:{call.run_id}",
                idempotency_key=f"sub_workflow:{call.idempotency_key}/{call.attempt}",
                requested_version=pinned,
                parent_run_id=call.run_id,
                parent_step_id=call.step_id,
            )
        except (NotFoundError, ValidationError) as exc:
            return StepFailed(RunError("SUB_WORKFLOW_REFUSED", exc.message), retryable=False)
        except UnavailableError as exc:
            return StepFailed(RunError("SUB_WORKFLOW_UNAVAILABLE", exc.message), retryable=True)
        except DomainError as exc:
            return StepFailed(RunError("SUB_WORKFLOW_REFUSED", exc.message), retryable=False)
        try:
            async with asyncio.timeout(call.timeout_ms / 1000 if call.timeout_ms else None):
                await self._until_finished(call.tenant_id, child.id)
        except TimeoutError:
            await self._cancel_child(call, child.id, "the parent step timed out")
            return StepFailed(
                RunError("TIMEOUT", f"child run {child.id} did not finish within {call.timeout_ms} ms"),
                retryable=True,
            )
        except asyncio.CancelledError:
            # The parent was cancelled (or the worker is stopping): the child goes with it.
            await asyncio.shield(self._cancel_child(call, child.id, "the parent run was cancelled"))
            raise
        finished = await self._engine.get_run(call.tenant_id, child.id)
        if finished.status is RunStatus.SUCCEEDED:
            return StepSucceeded(finished.output)
        detail = f"child run {child.id} {finished.status.value}"
        if finished.error is not None:
            detail += f": {finished.error.message}"
        return StepFailed(RunError("SUB_WORKFLOW_FAILED", detail), retryable=finished.status is RunStatus.FAILED)

    async def _until_finished(self, tenant_id: str, run_id: str) -> None:
        # The watch ends after the run's terminal event; a paused child simply keeps us waiting.
        async for _event in self._engine.watch_run(tenant_id, run_id):
            pass

    async def _cancel_child(self, call: StepCall, child_id: str, why: str) -> None:
        with contextlib.suppress(DomainError):  # already finished: nothing to cancel
            await self._engine.cancel_run(call.tenant_id, child_id, actor=f"run:{call.run_id} ({why})")


class StepExecutorRouter:
    """Sends each attempt to the executor of its step type."""

    def __init__(self, default: StepExecutor, by_type: Mapping[StepType, StepExecutor]) -> None:
        self._default = default
        self._by_type = dict(by_type)

    async def execute(self, call: StepCall) -> StepResult:
        """See `StepExecutor.execute`."""
        return await self._by_type.get(call.type, self._default).execute(call)
