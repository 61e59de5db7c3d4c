"""GetWorkflow, the read behind every run start, keeps immutable versions in memory: a repeated
read costs one small query (is the workflow live, which version is its latest). Correctness
first, across replicas: a save or a soft delete made through another replica counts at once,
and a version cached for one tenant is never another tenant's. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from sqlalchemy import event

from flowforge.workflow.v1 import workflow_pb2
from flowforge.workflow.v1 import workflow_service_pb2 as pb
from flowforge.workflow.v1 import workflow_service_pb2_grpc as pb_grpc
from flowforge_common.auth import ALL_SCOPES
from flowforge_common.service import RunningService
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory
from tests.workflow_svc.harness import bearer, running_workflow_service, workflow_message, workflow_stub
from workflow_svc.domain.models import Workflow, WorkflowStatus
from workflow_svc.domain.workflows import VersionCache

Metadata = list[tuple[str, str]]
Stub = pb_grpc.WorkflowServiceStub


@pytest.fixture
async def replicas(database: DatabaseTarget, tokens: TokenFactory) -> AsyncIterator[tuple[RunningService, ...]]:
    """Two workflow_svc replicas on one database, as deploy/ runs them."""
    async with (
        running_workflow_service(database, tokens) as first,
        running_workflow_service(database, tokens) as second,
    ):
        yield first, second


@pytest.fixture
async def stubs(replicas: tuple[RunningService, ...]) -> AsyncIterator[tuple[Stub, Stub]]:
    async with workflow_stub(replicas[0]) as first, workflow_stub(replicas[1]) as second:
        yield first, second


@pytest.fixture
def editor(tokens: TokenFactory) -> Metadata:
    return bearer(tokens.mint(tenant_id="ten_acme", subject="usr_ada", scopes=ALL_SCOPES))


def transforms(name: str, step: str) -> dict[str, Any]:
    return {"name": name, "steps": [{"id": step, "type": "transform", "input": {"v": step}}]}


async def create(stub: Stub, metadata: Metadata, definition: dict[str, Any]) -> workflow_pb2.Workflow:
    response = await stub.CreateWorkflow(
        pb.CreateWorkflowRequest(workflow=workflow_message(definition)), metadata=metadata
    )
    return response.workflow


async def get(stub: Stub, metadata: Metadata, workflow_id: str, version: int = 0) -> workflow_pb2.Workflow:
    return (await stub.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id, version=version), metadata=metadata)).workflow


async def code_of(call: Awaitable[object]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


class StatementLog:
    """The SQL statements a service's engine sends, by the tables they read."""

    def __init__(self, service: RunningService) -> None:
        assert service.engine is not None
        self.statements: list[str] = []
        event.listen(service.engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements.append(statement)

    def reading(self, table: str) -> int:
        return sum(1 for statement in self.statements if f"FROM {table}" in statement or f"JOIN {table}" in statement)


async def test_a_repeated_read_costs_one_small_query(
    replicas: tuple[RunningService, ...], stubs: tuple[Stub, Stub], editor: Metadata
) -> None:
    reader, _ = stubs
    created = await create(reader, editor, transforms("flow", "a"))
    log = StatementLog(replicas[0])
    first = await get(reader, editor, created.id)
    definitions_read = log.reading("workflow_versions")
    assert definitions_read == 1
    for _ in range(3):
        assert await get(reader, editor, created.id) == first
        assert await get(reader, editor, created.id, version=1) == first
    assert log.reading("workflow_versions") == definitions_read  # served from memory
    assert first == created


async def test_a_delete_through_another_replica_counts_at_once(stubs: tuple[Stub, Stub], editor: Metadata) -> None:
    reader, writer = stubs
    created = await create(writer, editor, transforms("flow", "a"))
    await get(reader, editor, created.id)
    await get(reader, editor, created.id, version=1)
    await writer.DeleteWorkflow(pb.DeleteWorkflowRequest(id=created.id), metadata=editor)
    assert await code_of(get(reader, editor, created.id)) == grpc.StatusCode.NOT_FOUND
    assert await code_of(get(reader, editor, created.id, version=1)) == grpc.StatusCode.NOT_FOUND


async def test_a_save_through_another_replica_is_the_latest_at_once(stubs: tuple[Stub, Stub], editor: Metadata) -> None:
    reader, writer = stubs
    created = await create(writer, editor, transforms("flow", "a"))
    assert (await get(reader, editor, created.id)).version == 1
    saved = (
        await writer.UpdateWorkflow(
            pb.UpdateWorkflowRequest(id=created.id, workflow=workflow_message(transforms("flow", "b"))),
            metadata=editor,
        )
    ).workflow
    assert await get(reader, editor, created.id) == saved
    assert await get(reader, editor, created.id, version=1) == created
    assert await code_of(get(reader, editor, created.id, version=3)) == grpc.StatusCode.NOT_FOUND


async def test_a_cached_version_is_never_another_tenants(
    stubs: tuple[Stub, Stub], editor: Metadata, tokens: TokenFactory
) -> None:
    reader, _ = stubs
    outsider = bearer(tokens.mint(tenant_id="ten_globex", subject="usr_eve", scopes=ALL_SCOPES))
    created = await create(reader, editor, transforms("flow", "a"))
    await get(reader, editor, created.id)
    await get(reader, editor, created.id, version=1)
    for version in (0, 1):
        assert await code_of(get(reader, outsider, created.id, version)) == grpc.StatusCode.NOT_FOUND


def version(tenant_id: str, workflow_id: str, number: int) -> Workflow:
    at = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)
    return Workflow(
        id=workflow_id,
        tenant_id=tenant_id,
        version=number,
        status=WorkflowStatus.ACTIVE,
        definition={"name": "flow"},
        etag="e",
        created_at=at,
        updated_at=at,
        created_by="usr_x",
    )


def test_the_version_cache_is_keyed_by_tenant_and_bounded() -> None:
    cache = VersionCache(max_entries=2)
    cache.put(version("ten_a", "wf_1", 1))
    assert cache.get("ten_b", "wf_1", 1) is None
    assert cache.get("ten_a", "wf_1", 2) is None
    cache.put(version("ten_a", "wf_2", 1))
    assert cache.get("ten_a", "wf_1", 1) is not None  # now the most recently used
    cache.put(version("ten_a", "wf_3", 1))
    assert len(cache) == 2
    assert cache.get("ten_a", "wf_2", 1) is None  # the least recently used went first
    assert cache.get("ten_a", "wf_1", 1) is not None
