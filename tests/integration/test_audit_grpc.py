"""workflow_svc's audit log over a real gRPC server, on SQLite and PostgreSQL: every change of an
agent, workflow or template is recorded with its actor and a masked change, in the transaction
of the change (a rolled-back change leaves no entry); AuditService pages newest first, by
tenant, with filters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from sqlalchemy import text

from flowforge.audit.v1 import audit_service_pb2 as audit_pb
from flowforge.audit.v1 import audit_service_pb2_grpc as audit_grpc
from flowforge.workflow.v1 import agent_pb2, workflow_pb2
from flowforge.workflow.v1 import agent_service_pb2 as agent_pb
from flowforge.workflow.v1 import agent_service_pb2_grpc as agent_grpc
from flowforge.workflow.v1 import workflow_service_pb2 as wf_pb
from flowforge.workflow.v1 import workflow_service_pb2_grpc as wf_grpc
from flowforge_common.auth import ALL_SCOPES
from flowforge_common.service import RunningService
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory
from tests.workflow_svc.harness import (
    PUBLIC_URL,
    agent_stub,
    audit_stub,
    bearer,
    running_workflow_service,
    update_request,
    workflow_message,
    workflow_stub,
)
from workflow_svc.db import audit as audit_repository

Metadata = list[tuple[str, str]]
SECRET = "s3cr3t-bearer-token"
HEADER_SECRET = "Bearer hook-secret"


@dataclass
class Clients:
    service: RunningService
    agents: agent_grpc.AgentServiceStub
    workflows: wf_grpc.WorkflowServiceStub
    audit: audit_grpc.AuditServiceStub


@pytest.fixture
async def clients(database: DatabaseTarget, tokens: TokenFactory) -> AsyncIterator[Clients]:
    async with (
        running_workflow_service(database, tokens) as service,
        agent_stub(service) as agents,
        workflow_stub(service) as workflows,
        audit_stub(service) as audit,
    ):
        yield Clients(service, agents, workflows, audit)


@pytest.fixture
def admin(tokens: TokenFactory) -> Metadata:
    return bearer(tokens.mint(tenant_id="ten_acme", subject="usr_ada", scopes=ALL_SCOPES))


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def entries(clients: Clients, metadata: Metadata, **request: Any) -> list[dict[str, Any]]:
    response = await clients.audit.ListAuditEntries(audit_pb.ListAuditEntriesRequest(**request), metadata=metadata)
    return [json_format.MessageToDict(item, preserving_proto_field_name=True) for item in response.items]


async def create_agent(clients: Clients, metadata: Metadata, name: str = "summarizer") -> agent_pb2.Agent:
    auth_config = struct_pb2.Struct()
    auth_config.update({"token": SECRET})
    request = agent_pb.CreateAgentRequest(
        agent=agent_pb2.Agent(
            name=name, url=PUBLIC_URL, auth_type=agent_pb2.AGENT_AUTH_TYPE_BEARER, auth_config=auth_config
        )
    )
    return (await clients.agents.CreateAgent(request, metadata=metadata)).agent


def notify(name: str = "notify", url: str = "https://hooks.example.com/a") -> dict[str, Any]:
    step = {"id": "post", "type": "http", "config": {"url": url, "headers": {"Authorization": HEADER_SECRET}}}
    return {"name": name, "steps": [step]}


async def stored_audit_text(service: RunningService) -> str:
    assert service.engine is not None
    async with service.engine.connect() as conn:
        rows = await conn.execute(text("SELECT * FROM audit_entries"))
        return json.dumps([list(map(str, row)) for row in rows])


async def test_agent_changes_are_audited_with_secrets_masked(clients: Clients, admin: Metadata) -> None:
    agent = await create_agent(clients, admin)
    await clients.agents.UpdateAgent(update_request(agent.id, ["description"], description="sums up"), metadata=admin)
    new_credentials = struct_pb2.Struct()
    new_credentials.update({"token": "another-secret"})
    await clients.agents.UpdateAgent(
        update_request(agent.id, ["auth_config"], auth_config=new_credentials), metadata=admin
    )
    await clients.agents.DeleteAgent(agent_pb.DeleteAgentRequest(id=agent.id), metadata=admin)

    found = await entries(clients, admin)

    assert [(e["action"], e["entity_type"], e["entity_id"], e["actor"]) for e in found] == [
        ("agent.deleted", "agent", agent.id, "usr_ada"),
        ("agent.updated", "agent", agent.id, "usr_ada"),
        ("agent.updated", "agent", agent.id, "usr_ada"),
        ("agent.created", "agent", agent.id, "usr_ada"),
    ]
    deleted, credentials, described, created = (entry["change"] for entry in found)
    assert created["after"]["name"] == "summarizer"
    assert created["after"]["auth_type"] == "bearer"
    assert created["after"]["auth_config"] == "***"
    assert described == {"before": {"description": ""}, "after": {"description": "sums up"}}
    assert credentials == {"before": {"auth_config": "***"}, "after": {"auth_config": "***"}}
    assert deleted["before"]["description"] == "sums up"
    assert "after" not in deleted

    for secret in (SECRET, "another-secret"):
        assert secret not in json.dumps(found)
        assert secret not in await stored_audit_text(clients.service)


async def test_workflow_and_template_changes_are_audited(clients: Clients, admin: Metadata) -> None:
    created = (
        await clients.workflows.CreateWorkflow(
            wf_pb.CreateWorkflowRequest(workflow=workflow_message(notify())), metadata=admin
        )
    ).workflow
    await clients.workflows.UpdateWorkflow(
        wf_pb.UpdateWorkflowRequest(
            id=created.id, workflow=workflow_message({**notify(), "description": "posts to the hook"})
        ),
        metadata=admin,
    )
    await clients.workflows.DeleteWorkflow(wf_pb.DeleteWorkflowRequest(id=created.id), metadata=admin)
    template = workflow_pb2.WorkflowTemplate(name="notify-team", definition=workflow_message(notify()))
    await clients.workflows.CreateWorkflowTemplate(
        wf_pb.CreateWorkflowTemplateRequest(template=template), metadata=admin
    )

    found = await entries(clients, admin)

    assert [(e["action"], e["entity_type"], e["entity_id"]) for e in found] == [
        ("workflow_template.created", "workflow_template", "notify-team"),
        ("workflow.deleted", "workflow", created.id),
        ("workflow.updated", "workflow", created.id),
        ("workflow.created", "workflow", created.id),
    ]
    template_created, deleted, updated, workflow_created = (entry["change"] for entry in found)
    assert workflow_created["after"]["version"] == 1
    assert workflow_created["after"]["status"] == "active"
    assert workflow_created["after"]["steps"][0]["config"] == {
        "url": "https://hooks.example.com/a",
        "headers": {"Authorization": "***"},
    }
    assert updated == {
        "before": {"version": 1, "description": None},
        "after": {"version": 2, "description": "posts to the hook"},
    }
    assert deleted["before"]["version"] == 2
    assert template_created["after"]["definition"]["steps"][0]["config"]["headers"] == {"Authorization": "***"}
    assert HEADER_SECRET not in json.dumps(found)
    assert HEADER_SECRET not in await stored_audit_text(clients.service)


async def test_failed_changes_leave_no_entry(
    clients: Clients, admin: Metadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await create_agent(clients, admin)
    workflow = (
        await clients.workflows.CreateWorkflow(
            wf_pb.CreateWorkflowRequest(workflow=workflow_message(notify())), metadata=admin
        )
    ).workflow
    before = await entries(clients, admin)

    refused = [
        clients.agents.CreateAgent(
            agent_pb.CreateAgentRequest(agent=agent_pb2.Agent(name="summarizer", url=PUBLIC_URL)), metadata=admin
        ),
        clients.workflows.CreateWorkflow(
            wf_pb.CreateWorkflowRequest(workflow=workflow_message(notify())), metadata=admin
        ),
        clients.workflows.CreateWorkflow(
            wf_pb.CreateWorkflowRequest(workflow=workflow_message({"name": "x"})), metadata=admin
        ),
        clients.workflows.UpdateWorkflow(
            wf_pb.UpdateWorkflowRequest(id=workflow.id, workflow=workflow_message(notify()), etag="stale"),
            metadata=admin,
        ),
        clients.agents.UpdateAgent(update_request(agent.id, ["timeout_ms"], timeout_ms=1), metadata=admin),
        clients.agents.DeleteAgent(agent_pb.DeleteAgentRequest(id="agt_missing"), metadata=admin),
    ]
    for call in refused:
        await failure(call)
    assert await entries(clients, admin) == before

    # A failure after the entry is written (here: the entry's own insert, then an error) rolls
    # back the change and its entry together.
    real_insert = audit_repository.insert_audit_entry

    async def insert_then_fail(*args: Any) -> None:
        await real_insert(*args)
        raise RuntimeError("the database went away")

    monkeypatch.setattr(audit_repository, "insert_audit_entry", insert_then_fail)
    crashed = await failure(
        clients.workflows.CreateWorkflow(
            wf_pb.CreateWorkflowRequest(workflow=workflow_message(notify("doomed"))), metadata=admin
        )
    )
    assert crashed.code() == grpc.StatusCode.INTERNAL
    monkeypatch.undo()

    assert await entries(clients, admin) == before
    listed = await clients.workflows.ListWorkflows(wf_pb.ListWorkflowsRequest(name="doomed"), metadata=admin)
    assert list(listed.items) == []


async def test_entries_page_newest_first_with_filters(clients: Clients, admin: Metadata, tokens: TokenFactory) -> None:
    agents = [await create_agent(clients, admin, f"agent-{i}") for i in range(5)]
    other_actor = bearer(tokens.mint(tenant_id="ten_acme", subject="usr_bob", scopes=ALL_SCOPES))
    await clients.agents.DeleteAgent(agent_pb.DeleteAgentRequest(id=agents[0].id), metadata=other_actor)
    everything = await entries(clients, admin, limit=100)
    assert len(everything) == 6

    pages: list[list[str]] = []
    request: dict[str, Any] = {"limit": 4}
    while True:
        page = await clients.audit.ListAuditEntries(audit_pb.ListAuditEntriesRequest(**request), metadata=admin)
        pages.append([item.id for item in page.items])
        if len(page.items) < 4:
            break
        last = page.items[-1]
        request = {"limit": 4, "before_created_at": last.created_at, "before_id": last.id}
    assert pages == [[entry["id"] for entry in everything[:4]], [entry["id"] for entry in everything[4:]]]

    assert [e["action"] for e in await entries(clients, admin, actor="usr_bob")] == ["agent.deleted"]
    one_agent = await entries(clients, admin, entity_type="agent", entity_id=agents[0].id)
    assert [e["action"] for e in one_agent] == ["agent.deleted", "agent.created"]
    assert await entries(clients, admin, entity_type="workflow") == []

    outsider = bearer(tokens.mint(tenant_id="ten_globex", scopes=ALL_SCOPES))
    assert await entries(clients, outsider) == []

    editor = bearer(tokens.mint(tenant_id="ten_acme", scopes=("agents:read", "agents:write")))
    denied = await failure(clients.audit.ListAuditEntries(audit_pb.ListAuditEntriesRequest(), metadata=editor))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    orphan_id = await failure(
        clients.audit.ListAuditEntries(audit_pb.ListAuditEntriesRequest(before_id="aud_x"), metadata=admin)
    )
    assert orphan_id.code() == grpc.StatusCode.INVALID_ARGUMENT
