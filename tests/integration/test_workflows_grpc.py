"""WorkflowService over a real gRPC server, on SQLite and PostgreSQL: the API.md example, dry-run
validation, every validation case with its field path, immutable versions, etags, soft delete,
unique names, step types and tenant isolation."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import text

from flowforge.workflow.v1 import agent_pb2, workflow_pb2
from flowforge.workflow.v1 import agent_service_pb2 as agent_pb
from flowforge.workflow.v1 import agent_service_pb2_grpc as agent_grpc
from flowforge.workflow.v1 import workflow_service_pb2 as pb
from flowforge.workflow.v1 import workflow_service_pb2_grpc as pb_grpc
from flowforge_common.auth import ALL_SCOPES
from flowforge_common.service import RunningService
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory
from tests.workflow_svc.harness import (
    API_EXAMPLE,
    PUBLIC_URL,
    agent_stub,
    bearer,
    definition_of,
    error_details,
    field_violations,
    running_workflow_service,
    workflow_message,
    workflow_stub,
)
from workflow_svc.domain.step_types import list_step_types

TENANT = "ten_acme"
OTHER_TENANT = "ten_globex"
Metadata = list[tuple[str, str]]
Stub = pb_grpc.WorkflowServiceStub


@pytest.fixture
async def service(database: DatabaseTarget, tokens: TokenFactory) -> AsyncIterator[RunningService]:
    async with running_workflow_service(database, tokens) as running:
        yield running


@pytest.fixture
async def stub(service: RunningService) -> AsyncIterator[Stub]:
    async with workflow_stub(service) as client:
        yield client


@pytest.fixture
async def agents(service: RunningService) -> AsyncIterator[agent_grpc.AgentServiceStub]:
    async with agent_stub(service) as client:
        yield client


@pytest.fixture
def editor(tokens: TokenFactory) -> Metadata:
    return bearer(tokens.mint(tenant_id=TENANT, subject="usr_ada", scopes=ALL_SCOPES))


@pytest.fixture
def outsider(tokens: TokenFactory) -> Metadata:
    return bearer(tokens.mint(tenant_id=OTHER_TENANT, subject="usr_eve", scopes=ALL_SCOPES))


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a call ends with; fails the test when it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def register(
    agents: agent_grpc.AgentServiceStub, metadata: Metadata, *names: str, status: int = agent_pb2.AGENT_STATUS_ACTIVE
) -> list[agent_pb2.Agent]:
    registered = []
    for name in names:
        request = agent_pb.CreateAgentRequest(agent=agent_pb2.Agent(name=name, url=PUBLIC_URL, status=status))
        registered.append((await agents.CreateAgent(request, metadata=metadata)).agent)
    return registered


async def create(stub: Stub, metadata: Metadata, definition: dict[str, Any]) -> workflow_pb2.Workflow:
    response = await stub.CreateWorkflow(
        pb.CreateWorkflowRequest(workflow=workflow_message(definition)), metadata=metadata
    )
    return response.workflow


def transforms(name: str, *ids: str) -> dict[str, Any]:
    """A valid workflow of independent transform steps (needs no agent)."""
    return {"name": name, "steps": [{"id": step_id, "type": "transform", "input": {"v": step_id}} for step_id in ids]}


def plan_of(response: pb.ValidateWorkflowResponse) -> list[list[str]]:
    return [list(level) for level in json_format.MessageToDict(response)["plan"]]


@pytest.fixture
async def with_api_agents(agents: agent_grpc.AgentServiceStub, editor: Metadata) -> None:
    await register(agents, editor, "fetcher", "summarizer", "classifier")


@pytest.mark.usefixtures("with_api_agents")
async def test_the_api_example_is_accepted_as_written(stub: Stub, editor: Metadata) -> None:
    created = await create(stub, editor, API_EXAMPLE)

    assert created.id.startswith("wf_")
    assert (created.version, created.status) == (1, workflow_pb2.WORKFLOW_STATUS_ACTIVE)
    assert created.etag
    assert created.created_by == "usr_ada"
    assert created.created_at == created.updated_at
    assert abs(created.created_at.ToDatetime(dt.UTC) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert definition_of(created) == workflow_message(API_EXAMPLE)
    assert created.steps[3].type == workflow_pb2.STEP_TYPE_HTTP
    assert created.steps[0].type == workflow_pb2.STEP_TYPE_UNSPECIFIED  # `agent` by default, as written

    fetched = await stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id), metadata=editor)
    assert fetched.workflow == created


@pytest.mark.usefixtures("with_api_agents")
async def test_validate_answers_the_plan_and_saves_nothing(stub: Stub, editor: Metadata) -> None:
    valid = await stub.ValidateWorkflow(
        pb.ValidateWorkflowRequest(workflow=workflow_message(API_EXAMPLE)), metadata=editor
    )
    assert valid.valid
    assert list(valid.errors) == []
    assert plan_of(valid) == [["fetch"], ["summarize", "classify"], ["notify"]]

    broken = copy.deepcopy(API_EXAMPLE)
    broken["steps"][0]["agent"] = "ghost"
    broken["steps"][3]["depends_on"] = ["summarize", "classify", "nope"]
    invalid = await stub.ValidateWorkflow(
        pb.ValidateWorkflowRequest(workflow=workflow_message(broken)), metadata=editor
    )
    assert not invalid.valid
    assert [(error.field, error.message) for error in invalid.errors] == [
        ("steps[0].agent", "unknown agent 'ghost'"),
        ("steps[3].depends_on[2]", "depends on unknown step 'nope'"),
    ]
    assert list(invalid.plan) == []

    listed = await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=editor)
    assert list(listed.items) == []


def base() -> dict[str, Any]:
    return {
        "name": "wf",
        "steps": [
            {"id": "a", "agent": "fetcher", "input": {"url": "{{ input.doc }}"}},
            {"id": "b", "agent": "summarizer", "depends_on": ["a"], "input": {"text": "{{ steps.a.output }}"}},
        ],
    }


def edited(change: Any) -> dict[str, Any]:
    definition = base()
    change(definition)
    return definition


NOT_ANCESTOR = "(list it, or a step after it, in depends_on)"
# (case, definition, field path, message): one per validation rule of the issue.
VALIDATION_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "duplicate step ids",
        edited(lambda d: d["steps"].append({"id": "a", "type": "transform"})),
        "steps[2].id",
        "duplicate step id 'a' (also steps[0])",
    ),
    (
        "unknown dependency",
        edited(lambda d: d["steps"][1].update(depends_on=["a", "nope"])),
        "steps[1].depends_on[1]",
        "depends on unknown step 'nope'",
    ),
    (
        "cycle",
        edited(lambda d: d["steps"][0].update(depends_on=["b"])),
        "steps[0].depends_on",
        "cycle: a -> b -> a (each step depends on the next)",
    ),
    (
        "expression syntax",
        edited(lambda d: d["steps"][0].update(input={"url": "{{ input.doc[ }}"})),
        "steps[0].input.url",
        "invalid expression '{{ input.doc[ }}' at column 14: incomplete expression",
    ),
    (
        "reference to a non-ancestor",
        edited(lambda d: d["steps"].append({"id": "c", "type": "transform", "input": {"x": "{{ steps.b.output }}"}})),
        "steps[2].input.x",
        f"references step 'b' which is not an ancestor of 'c' {NOT_ANCESTOR}",
    ),
    ("unknown agent", edited(lambda d: d["steps"][0].update(agent="ghost")), "steps[0].agent", "unknown agent 'ghost'"),
    (
        "inactive agent",
        edited(lambda d: d["steps"][0].update(agent="retired")),
        "steps[0].agent",
        "agent 'retired' is inactive",
    ),
    (
        "deleted agent",
        edited(lambda d: d["steps"][1].update(agent="gone")),
        "steps[1].agent",
        "agent 'gone' is deleted",
    ),
    (
        "bad step config",
        edited(lambda d: d["steps"].append({"id": "c", "type": "http", "config": {"method": "POST"}})),
        "steps[2].config.url",
        "'url' is required",
    ),
    (
        "invalid input_schema",
        edited(lambda d: d.update(input_schema={"type": "objekt"})),
        "input_schema",
        "invalid JSON Schema at type: 'objekt' is not valid under any of the given schemas",
    ),
    (
        "over 500 steps",
        {"name": "big", "steps": [{"id": f"s{i}", "type": "transform"} for i in range(501)]},
        "steps",
        "a workflow may have at most 500 steps (got 501)",
    ),
]


async def test_each_validation_problem_is_a_422_at_its_field(
    stub: Stub, agents: agent_grpc.AgentServiceStub, editor: Metadata
) -> None:
    await register(agents, editor, "fetcher", "summarizer")
    await register(agents, editor, "retired", status=agent_pb2.AGENT_STATUS_INACTIVE)
    (gone,) = await register(agents, editor, "gone")
    await agents.DeleteAgent(agent_pb.DeleteAgentRequest(id=gone.id), metadata=editor)

    for case, definition, field, message in VALIDATION_CASES:
        request = pb.CreateWorkflowRequest(workflow=workflow_message(definition))
        error = await failure(stub.CreateWorkflow(request, metadata=editor))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        reason, violations = error_details(error)
        assert reason == "VALIDATION_FAILED", case
        assert violations.get(field) == message, (case, violations)

    assert list((await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=editor)).items) == []


async def test_every_problem_is_reported_at_once(stub: Stub, editor: Metadata) -> None:
    definition = {
        "name": "",
        "tags": ["x" * 51],
        "steps": [
            {"id": "a", "agent": "nobody", "timeout_ms": 0},
            {"id": "a", "type": "delay", "depends_on": ["zzz"], "config": {"duration_ms": -1}},
        ],
    }
    error = await failure(
        stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=workflow_message(definition)), metadata=editor)
    )
    assert set(error_details(error)[1]) == {
        "name",
        "tags[0]",
        "steps[0].agent",
        "steps[0].timeout_ms",
        "steps[1].id",
        "steps[1].depends_on[0]",
        "steps[1].config.duration_ms",
    }


async def test_sub_workflows_must_name_a_workflow_of_the_tenant(
    stub: Stub, editor: Metadata, outsider: Metadata
) -> None:
    child = (
        await stub.CreateWorkflow(
            pb.CreateWorkflowRequest(workflow=workflow_message(transforms("child", "x"))), metadata=editor
        )
    ).workflow
    foreign = (
        await stub.CreateWorkflow(
            pb.CreateWorkflowRequest(workflow=workflow_message(transforms("theirs", "x"))), metadata=outsider
        )
    ).workflow

    def parent(workflow_id: str, version: int | None = None) -> dict[str, Any]:
        config: dict[str, Any] = {"workflow_id": workflow_id} | ({"version": version} if version else {})
        return {"name": "parent", "steps": [{"id": "child", "type": "sub_workflow", "config": config}]}

    cases = [
        (parent("wf_missing"), "workflow 'wf_missing' does not exist"),
        (parent(foreign.id), f"workflow {foreign.id!r} does not exist"),  # another tenant's is invisible
        (parent(child.id, 2), f"version 2 of workflow {child.id!r} does not exist"),
    ]
    for definition, message in cases:
        error = await failure(
            stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=workflow_message(definition)), metadata=editor)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_details(error)[1] == {"steps[0].config.workflow_id": message}

    created = await stub.CreateWorkflow(
        pb.CreateWorkflowRequest(workflow=workflow_message(parent(child.id, 1))), metadata=editor
    )
    assert created.workflow.version == 1


async def test_versions_are_immutable(stub: Stub, editor: Metadata) -> None:
    definitions = [transforms("flow", "a")]
    definitions.append({**transforms("flow", "a", "b"), "description": "second"})
    definitions.append({**transforms("flow-renamed", "b"), "tags": ["x"], "output": {"b": "{{ steps.b.output }}"}})
    definitions.append({**transforms("flow-renamed", "c"), "input_schema": {"type": "object"}})

    saved = [await create(stub, editor, definitions[0])]
    for definition in definitions[1:]:
        request = pb.UpdateWorkflowRequest(id=saved[0].id, workflow=workflow_message(definition))
        saved.append((await stub.UpdateWorkflow(request, metadata=editor)).workflow)

    assert [workflow.version for workflow in saved] == [1, 2, 3, 4]
    assert len({workflow.etag for workflow in saved}) == 4
    assert all(workflow.created_at == saved[0].created_at for workflow in saved)
    for version, (definition, workflow) in enumerate(zip(definitions, saved, strict=True), start=1):
        assert definition_of(workflow) == workflow_message(definition)
        fetched = await stub.GetWorkflow(pb.GetWorkflowRequest(id=workflow.id, version=version), metadata=editor)
        assert fetched.workflow == workflow
    latest = await stub.GetWorkflow(pb.GetWorkflowRequest(id=saved[0].id), metadata=editor)
    assert latest.workflow == saved[3]

    newest_first = await stub.ListWorkflowVersions(pb.ListWorkflowVersionsRequest(id=saved[0].id), metadata=editor)
    assert list(newest_first.items) == saved[::-1]
    assert newest_first.next_page_token == ""
    pages: list[list[int]] = []
    token = ""
    while True:
        page = await stub.ListWorkflowVersions(
            pb.ListWorkflowVersionsRequest(id=saved[0].id, limit=3, page_token=token), metadata=editor
        )
        pages.append([workflow.version for workflow in page.items])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[4, 3, 2], [1]]


async def test_missing_versions_are_not_found(stub: Stub, editor: Metadata) -> None:
    created = await create(stub, editor, transforms("flow", "a"))
    missing = await failure(stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id, version=2), metadata=editor))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert missing.details() == f"workflow {created.id!r} has no version 2"
    negative = await failure(stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id, version=-1), metadata=editor))
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(negative) == ("BAD_REQUEST", {"version": "must be at least 1"})


async def test_a_stale_etag_is_refused(stub: Stub, editor: Metadata) -> None:
    created = await create(stub, editor, transforms("flow", "a"))
    second = await stub.UpdateWorkflow(
        pb.UpdateWorkflowRequest(id=created.id, workflow=workflow_message(transforms("flow", "b")), etag=created.etag),
        metadata=editor,
    )
    assert second.workflow.version == 2

    stale = await failure(
        stub.UpdateWorkflow(
            pb.UpdateWorkflowRequest(
                id=created.id, workflow=workflow_message(transforms("flow", "c")), etag=created.etag
            ),
            metadata=editor,
        )
    )
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(stale)[0] == "ETAG_MISMATCH"
    latest = await stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id), metadata=editor)
    assert latest.workflow == second.workflow

    # Without an etag the update is unconditional.
    third = await stub.UpdateWorkflow(
        pb.UpdateWorkflowRequest(id=created.id, workflow=workflow_message(transforms("flow", "c"))), metadata=editor
    )
    assert third.workflow.version == 3


async def test_updates_are_validated_and_keep_names_unique(stub: Stub, editor: Metadata) -> None:
    first = await create(stub, editor, transforms("first", "a"))
    await create(stub, editor, transforms("second", "a"))

    invalid = await failure(
        stub.UpdateWorkflow(
            pb.UpdateWorkflowRequest(id=first.id, workflow=workflow_message({"name": "first"})), metadata=editor
        )
    )
    assert error_details(invalid) == ("VALIDATION_FAILED", {"steps": "at least one step is required"})
    taken = await failure(
        stub.UpdateWorkflow(
            pb.UpdateWorkflowRequest(id=first.id, workflow=workflow_message(transforms("second", "a"))), metadata=editor
        )
    )
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_details(taken)[0] == "ALREADY_EXISTS"
    assert (await stub.GetWorkflow(pb.GetWorkflowRequest(id=first.id), metadata=editor)).workflow == first


async def test_status_is_kept_unless_an_update_sets_it(stub: Stub, editor: Metadata) -> None:
    created = await create(stub, editor, transforms("flow", "a"))

    async def update(definition: dict[str, Any]) -> workflow_pb2.Workflow:
        request = pb.UpdateWorkflowRequest(id=created.id, workflow=workflow_message(definition))
        return (await stub.UpdateWorkflow(request, metadata=editor)).workflow

    archived = await update({**transforms("flow", "a"), "status": "archived"})
    assert archived.status == workflow_pb2.WORKFLOW_STATUS_ARCHIVED
    edited_steps = await update(transforms("flow", "b"))
    assert edited_steps.status == workflow_pb2.WORKFLOW_STATUS_ARCHIVED
    revived = await update({**transforms("flow", "b"), "status": "active"})
    assert revived.status == workflow_pb2.WORKFLOW_STATUS_ACTIVE
    old = await stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id, version=1), metadata=editor)
    assert old.workflow.status == workflow_pb2.WORKFLOW_STATUS_ACTIVE


async def test_names_are_unique_within_a_tenant(stub: Stub, editor: Metadata, outsider: Metadata) -> None:
    await create(stub, editor, transforms("flow", "a"))
    duplicate = await failure(
        stub.CreateWorkflow(
            pb.CreateWorkflowRequest(workflow=workflow_message(transforms("flow", "b"))), metadata=editor
        )
    )
    assert duplicate.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await create(stub, outsider, transforms("flow", "a"))).name == "flow"


async def test_deleted_workflows_are_gone_but_keep_their_versions(
    service: RunningService, stub: Stub, editor: Metadata
) -> None:
    created = await create(stub, editor, transforms("flow", "a"))
    await stub.UpdateWorkflow(
        pb.UpdateWorkflowRequest(id=created.id, workflow=workflow_message(transforms("flow", "b"))), metadata=editor
    )
    assert (
        await stub.DeleteWorkflow(pb.DeleteWorkflowRequest(id=created.id), metadata=editor)
        == pb.DeleteWorkflowResponse()
    )

    for call in [
        stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id), metadata=editor),
        stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id, version=1), metadata=editor),
        stub.ListWorkflowVersions(pb.ListWorkflowVersionsRequest(id=created.id), metadata=editor),
        stub.UpdateWorkflow(
            pb.UpdateWorkflowRequest(id=created.id, workflow=workflow_message(transforms("flow", "c"))), metadata=editor
        ),
        stub.DeleteWorkflow(pb.DeleteWorkflowRequest(id=created.id), metadata=editor),
    ]:
        assert (await failure(call)).code() == grpc.StatusCode.NOT_FOUND
    assert list((await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=editor)).items) == []

    assert service.engine is not None
    async with service.engine.connect() as conn:
        kept = await conn.execute(
            text("SELECT version FROM workflow_versions WHERE workflow_id = :id ORDER BY version"), {"id": created.id}
        )
        assert list(kept.scalars()) == [1, 2]

    again = await create(stub, editor, transforms("flow", "a"))  # the name is free again
    assert again.id != created.id


async def test_step_types_are_the_registry(stub: Stub, editor: Metadata) -> None:
    response = await stub.ListStepTypes(pb.ListStepTypesRequest(), metadata=editor)

    registry = list_step_types()
    assert [item.type for item in response.items] == [step_type.name for step_type in registry]
    for item, step_type in zip(response.items, registry, strict=True):
        assert item.description == step_type.description
        assert json_format.MessageToDict(item.config_schema) == step_type.config_schema


async def test_another_tenant_gets_not_found_and_sees_nothing(stub: Stub, editor: Metadata, outsider: Metadata) -> None:
    created = await create(stub, editor, {**transforms("flow", "a"), "tags": ["secret"]})
    template = workflow_pb2.WorkflowTemplate(
        name="ours", parameters_schema=None, definition=workflow_message(transforms("ours", "a"))
    )
    await stub.CreateWorkflowTemplate(pb.CreateWorkflowTemplateRequest(template=template), metadata=editor)
    update = pb.UpdateWorkflowRequest(id=created.id, workflow=workflow_message(transforms("pwned", "a")))

    for call in [
        stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id), metadata=outsider),
        stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id, version=1), metadata=outsider),
        stub.ListWorkflowVersions(pb.ListWorkflowVersionsRequest(id=created.id), metadata=outsider),
        stub.UpdateWorkflow(update, metadata=outsider),
        stub.DeleteWorkflow(pb.DeleteWorkflowRequest(id=created.id), metadata=outsider),
        stub.GetWorkflowTemplate(pb.GetWorkflowTemplateRequest(name="ours"), metadata=outsider),
        stub.CreateWorkflowFromTemplate(
            pb.CreateWorkflowFromTemplateRequest(template_name="ours", name="copy"), metadata=outsider
        ),
    ]:
        assert (await failure(call)).code() == grpc.StatusCode.NOT_FOUND

    for request in [
        pb.ListWorkflowsRequest(),
        pb.ListWorkflowsRequest(tag="secret"),
        pb.ListWorkflowsRequest(name="fl"),
    ]:
        assert list((await stub.ListWorkflows(request, metadata=outsider)).items) == []
    templates = await stub.ListWorkflowTemplates(pb.ListWorkflowTemplatesRequest(limit=100), metadata=outsider)
    assert all(item.builtin for item in templates.items)
    assert (await stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id), metadata=editor)).workflow == created


async def test_scopes_are_enforced(stub: Stub, editor: Metadata, tokens: TokenFactory) -> None:
    created = await create(stub, editor, transforms("flow", "a"))
    reader = bearer(tokens.mint(tenant_id=TENANT, scopes=("workflows:read",)))
    for call in [
        stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=workflow_message(transforms("x", "a"))), metadata=reader),
        stub.UpdateWorkflow(
            pb.UpdateWorkflowRequest(id=created.id, workflow=workflow_message(transforms("x", "a"))), metadata=reader
        ),
        stub.DeleteWorkflow(pb.DeleteWorkflowRequest(id=created.id), metadata=reader),
        stub.CreateWorkflowFromTemplate(
            pb.CreateWorkflowFromTemplateRequest(template_name="fan-out-fan-in", name="x"), metadata=reader
        ),
    ]:
        assert (await failure(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id), metadata=reader)).workflow == created
    validated = await stub.ValidateWorkflow(
        pb.ValidateWorkflowRequest(workflow=workflow_message(transforms("x", "a"))), metadata=reader
    )
    assert validated.valid


async def test_nul_characters_are_refused_at_their_field(stub: Stub, editor: Metadata) -> None:
    # PostgreSQL cannot store U+0000; SQLite could, but a definition is valid or not everywhere.
    nul = "must not contain the NUL character (U+0000)"
    definition = {
        "name": "a\x00b",
        "steps": [{"id": "a", "type": "transform", "input": {"ke\x00y": 1, "text": ["ok", "v\x00"]}}],
    }
    error = await failure(
        stub.CreateWorkflow(pb.CreateWorkflowRequest(workflow=workflow_message(definition)), metadata=editor)
    )
    assert error_details(error)[0] == "VALIDATION_FAILED"
    assert set(field_violations(error)) == {
        ("name", nul),
        ('steps[0].input["ke\\u0000y"]', nul),
        ("steps[0].input.text[1]", nul),
    }
    validated = await stub.ValidateWorkflow(
        pb.ValidateWorkflowRequest(workflow=workflow_message(definition)), metadata=editor
    )
    assert not validated.valid

    template = workflow_pb2.WorkflowTemplate(
        name="t", description="d\x00", definition=workflow_message(transforms("t", "a"))
    )
    refused = await failure(
        stub.CreateWorkflowTemplate(pb.CreateWorkflowTemplateRequest(template=template), metadata=editor)
    )
    assert field_violations(refused) == [("description", nul)]


async def test_concurrent_saves_never_share_a_version(stub: Stub, editor: Metadata, database: DatabaseTarget) -> None:
    created = await create(stub, editor, transforms("flow", "a"))

    async def save(index: int) -> grpc.StatusCode:
        request = pb.UpdateWorkflowRequest(id=created.id, workflow=workflow_message(transforms("flow", f"s{index}")))
        try:
            await stub.UpdateWorkflow(request, metadata=editor)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    outcomes = await asyncio.gather(*(save(index) for index in range(10)))

    saved = outcomes.count(grpc.StatusCode.OK)
    # PostgreSQL queues the saves on the workflow's row lock; SQLite has no row locks, and the
    # compare-and-set turns a lost race into ABORTED instead of a lost or shared version.
    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED}
    if database.backend == "postgresql":
        assert saved == 10
    versions = await stub.ListWorkflowVersions(
        pb.ListWorkflowVersionsRequest(id=created.id, limit=100), metadata=editor
    )
    assert [workflow.version for workflow in versions.items] == list(range(saved + 1, 0, -1))
