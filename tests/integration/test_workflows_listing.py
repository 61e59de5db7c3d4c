"""ListWorkflows over a real gRPC server, on SQLite and PostgreSQL: filters, every order_by,
cursor pages that stay stable while workflows are added, and checked page tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest

from flowforge.workflow.v1 import workflow_pb2
from flowforge.workflow.v1 import workflow_service_pb2 as pb
from flowforge.workflow.v1 import workflow_service_pb2_grpc as pb_grpc
from flowforge_common.auth import ALL_SCOPES
from flowforge_common.pagination import encode_page_token
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory
from tests.workflow_svc.harness import bearer, error_details, running_workflow_service, workflow_message, workflow_stub

Metadata = list[tuple[str, str]]
Stub = pb_grpc.WorkflowServiceStub


@pytest.fixture
async def stub(database: DatabaseTarget, tokens: TokenFactory) -> AsyncIterator[Stub]:
    async with running_workflow_service(database, tokens) as service, workflow_stub(service) as client:
        yield client


@pytest.fixture
def editor(tokens: TokenFactory) -> Metadata:
    return bearer(tokens.mint(tenant_id="ten_acme", scopes=ALL_SCOPES))


async def create(stub: Stub, metadata: Metadata, name: str, **fields: Any) -> workflow_pb2.Workflow:
    definition = {"name": name, "steps": [{"id": "a", "type": "transform"}], **fields}
    response = await stub.CreateWorkflow(
        pb.CreateWorkflowRequest(workflow=workflow_message(definition)), metadata=metadata
    )
    return response.workflow


async def names(stub: Stub, metadata: Metadata, **request: Any) -> list[str]:
    """Every name the listing returns, following page tokens to the end."""
    found: list[str] = []
    token = ""
    while True:
        page = await stub.ListWorkflows(pb.ListWorkflowsRequest(page_token=token, **request), metadata=metadata)
        found.extend(workflow.name for workflow in page.items)
        token = page.next_page_token
        if not token:
            return found


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_filters_by_status_name_prefix_and_tag(stub: Stub, editor: Metadata) -> None:
    await create(stub, editor, "billing-daily", tags=["billing", "daily"])
    await create(stub, editor, "billing-weekly", tags=["billing"], status="archived")
    await create(stub, editor, "billing_x", tags=["misc"])
    await create(stub, editor, "Billing-caps")
    await create(stub, editor, "reports", tags=["daily"])

    async def matching(**request: Any) -> set[str]:
        return set(await names(stub, editor, limit=2, **request))

    assert await matching(status=workflow_pb2.WORKFLOW_STATUS_ARCHIVED) == {"billing-weekly"}
    assert len(await matching(status=workflow_pb2.WORKFLOW_STATUS_ACTIVE)) == 4
    assert await matching(name="billing-") == {"billing-daily", "billing-weekly"}
    assert await matching(name="billing_") == {"billing_x"}  # `_` is no wildcard
    assert await matching(name="Billing") == {"Billing-caps"}  # prefixes are case-sensitive
    assert await matching(name="billing-daily-and-more") == set()
    assert await matching(tag="daily") == {"billing-daily", "reports"}
    assert await matching(tag="billing", status=workflow_pb2.WORKFLOW_STATUS_ACTIVE) == {"billing-daily"}
    assert await matching(tag="billing", name="billing-w") == {"billing-weekly"}
    assert await matching(tag="nope") == set()


async def test_tags_follow_the_latest_version(stub: Stub, editor: Metadata) -> None:
    created = await create(stub, editor, "flow", tags=["old"])
    definition = {"name": "flow", "steps": [{"id": "a", "type": "transform"}], "tags": ["new", "new"]}
    await stub.UpdateWorkflow(
        pb.UpdateWorkflowRequest(id=created.id, workflow=workflow_message(definition)), metadata=editor
    )
    assert await names(stub, editor, tag="old") == []
    assert await names(stub, editor, tag="new") == ["flow"]


async def test_every_order_by(stub: Stub, editor: Metadata) -> None:
    created = [await create(stub, editor, name) for name in ["b", "d", "a", "c"]]
    # Touch "d" last so that updated_at differs from created_at order.
    definition = {"name": "d", "steps": [{"id": "z", "type": "transform"}]}
    await stub.UpdateWorkflow(
        pb.UpdateWorkflowRequest(id=created[1].id, workflow=workflow_message(definition)), metadata=editor
    )

    expected = {
        "": ["c", "a", "d", "b"],
        "created_at desc": ["c", "a", "d", "b"],
        "created_at asc": ["b", "d", "a", "c"],
        "created_at": ["b", "d", "a", "c"],
        "name asc": ["a", "b", "c", "d"],
        "NAME  DESC": ["d", "c", "b", "a"],
        "updated_at desc": ["d", "c", "a", "b"],
    }
    for order_by, order in expected.items():
        for limit in (1, 3, 20):
            assert await names(stub, editor, order_by=order_by, limit=limit) == order, (order_by, limit)

    for bad in ["updated_at asc", "id desc", "name sideways", "name asc, id"]:
        error = await failure(stub.ListWorkflows(pb.ListWorkflowsRequest(order_by=bad), metadata=editor))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        reason, violations = error_details(error)
        assert reason == "BAD_REQUEST"
        assert list(violations) == ["order_by"]
        assert "`created_at desc`" in violations["order_by"]


async def test_pages_are_stable_while_workflows_are_added(stub: Stub, editor: Metadata) -> None:
    for i in range(7):
        await create(stub, editor, f"flow-{i}")

    async def paged(order_by: str) -> list[list[str]]:
        pages: list[list[str]] = []
        token = ""
        while True:
            request = pb.ListWorkflowsRequest(limit=3, page_token=token, order_by=order_by)
            page = await stub.ListWorkflows(request, metadata=editor)
            pages.append([workflow.name for workflow in page.items])
            token = page.next_page_token
            if not token:
                return pages
            # Between pages: a newer workflow, one sorting first by name, one sorting last.
            await asyncio.sleep(0.002)
            await create(stub, editor, f"{order_by.split()[0]}-{len(pages)}")
            await create(stub, editor, f"aaa-{order_by.split()[0]}-{len(pages)}")

    newest_first = await paged("created_at desc")
    assert newest_first == [["flow-6", "flow-5", "flow-4"], ["flow-3", "flow-2", "flow-1"], ["flow-0"]]

    by_name = await paged("name asc")
    listed = [name for page in by_name for name in page]
    # Every workflow that existed at the start appears exactly once; names added before the
    # cursor never appear, names added after it may.
    assert len(listed) == len(set(listed))
    assert {f"flow-{i}" for i in range(7)} <= set(listed)
    assert listed == sorted(listed)
    assert "aaa-name-1" not in listed


async def test_page_tokens_are_checked(stub: Stub, editor: Metadata) -> None:
    for i in range(3):
        await create(stub, editor, f"flow-{i}")
    first = await stub.ListWorkflows(pb.ListWorkflowsRequest(limit=1, order_by="name asc"), metadata=editor)

    for request in [
        pb.ListWorkflowsRequest(page_token=first.next_page_token),  # made for `name asc`
        pb.ListWorkflowsRequest(page_token="garbage"),
        pb.ListWorkflowsRequest(page_token=encode_page_token({"order": "created_at desc", "value": "x", "id": "y"})),
        pb.ListWorkflowsRequest(
            page_token=encode_page_token({"order": "created_at desc", "value": "2026-01-01T00:00:00", "id": "y"})
        ),
        pb.ListWorkflowsRequest(page_token=encode_page_token({"before": "wf_x"})),
        pb.ListWorkflowsRequest(limit=101),
    ]:
        error = await failure(stub.ListWorkflows(request, metadata=editor))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert set(error_details(error)[1]) <= {"page_token", "limit"}

    versions = await failure(
        stub.ListWorkflowVersions(pb.ListWorkflowVersionsRequest(id="wf_x", page_token="garbage"), metadata=editor)
    )
    assert versions.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_default_and_maximum_page_sizes(stub: Stub, editor: Metadata) -> None:
    for i in range(21):
        await create(stub, editor, f"flow-{i:02d}")
    default_page = await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=editor)
    assert len(default_page.items) == 20
    rest = await stub.ListWorkflows(
        pb.ListWorkflowsRequest(limit=100, page_token=default_page.next_page_token), metadata=editor
    )
    assert [workflow.name for workflow in rest.items] == ["flow-00"]
    assert rest.next_page_token == ""
