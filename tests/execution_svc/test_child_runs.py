"""Child runs (`sub_workflow`): cancelling a parent cancels its unfinished children even when
no worker holds the parent's waiting attempt."""

from __future__ import annotations

from execution_svc.domain.models import RunStatus, Trigger
from tests.execution_svc.conftest import TENANT, Harness

WAITS = {
    "id": "wf_waits",
    "name": "waits",
    "version": 1,
    "steps": [{"id": "gate", "type": "wait_for_signal", "config": {"signal": "go"}}],
}


async def test_cancelling_a_parent_cancels_its_unfinished_children(harness: Harness) -> None:
    parent = await harness.run(WAITS)
    child = await harness.run(WAITS, trigger=Trigger.SUB_WORKFLOW, parent_run_id=parent.id, parent_step_id="call")
    done = await harness.run(WAITS, trigger=Trigger.SUB_WORKFLOW, parent_run_id=parent.id, parent_step_id="call")
    await harness.engine.cancel_run(TENANT, done.id)
    other = await harness.run(WAITS)

    await harness.engine.cancel_run(TENANT, parent.id, actor="usr_ops")

    assert (await harness.engine.get_run(TENANT, child.id)).status is RunStatus.CANCELLED
    assert (await harness.engine.get_run(TENANT, done.id)).status is RunStatus.CANCELLED  # untouched, still one event
    assert (await harness.event_types(done.id)).count("workflow.cancelled") == 1
    assert (await harness.engine.get_run(TENANT, other.id)).status is not RunStatus.CANCELLED
