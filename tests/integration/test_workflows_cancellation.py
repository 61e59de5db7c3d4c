"""A caller that gives up (the edge cancels the call when its HTTP client hangs up) cancels a
write wherever it happens to be: the workflow is then saved whole or not at all, never a head
without its version or audit entry, and the service keeps serving. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import text

from flowforge.workflow.v1 import workflow_service_pb2 as pb
from flowforge_common.auth import ALL_SCOPES
from flowforge_common.service import RunningService
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory
from tests.workflow_svc.harness import bearer, running_workflow_service, workflow_message, workflow_stub


@pytest.fixture
async def service(database: DatabaseTarget, tokens: TokenFactory) -> AsyncIterator[RunningService]:
    async with running_workflow_service(database, tokens) as running:
        yield running


async def test_cancelled_creates_are_whole_or_absent(service: RunningService, tokens: TokenFactory) -> None:
    editor = bearer(tokens.mint(tenant_id="ten_acme", scopes=ALL_SCOPES))
    async with workflow_stub(service) as stub:
        for attempt in range(40):
            definition = {"name": f"flow-{attempt}", "steps": [{"id": "a", "type": "transform", "input": {}}]}
            call = stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=workflow_message(definition)), metadata=editor)
            await asyncio.sleep(attempt * 0.0005)  # lands at a different point of the write each time
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await call
        await asyncio.sleep(0.5)  # let the server finish what it was doing
        # Still serving, with every pooled connection usable.
        for index in range(12):
            definition = {"name": f"after-{index}", "steps": [{"id": "a", "type": "transform", "input": {}}]}
            await stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=workflow_message(definition)), metadata=editor)
    assert service.engine is not None
    async with service.engine.connect() as conn:
        heads = (await conn.execute(text("SELECT id FROM workflows"))).scalars().all()
        versions = (await conn.execute(text("SELECT workflow_id FROM workflow_versions"))).scalars().all()
        audited = (
            (await conn.execute(text("SELECT entity_id FROM audit_entries WHERE action = 'workflow.created'")))
            .scalars()
            .all()
        )
    assert sorted(heads) == sorted(versions) == sorted(audited)
    assert len(heads) >= 12
