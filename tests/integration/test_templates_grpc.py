"""Workflow templates over a real gRPC server, on SQLite and PostgreSQL: every built-in
instantiates through CreateWorkflowFromTemplate, tenant templates are saved, listed and read,
names cannot clash, and bad templates or parameters answer 422 at their field."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from flowforge.workflow.v1 import agent_pb2, workflow_pb2
from flowforge.workflow.v1 import agent_service_pb2 as agent_pb
from flowforge.workflow.v1 import agent_service_pb2_grpc as agent_grpc
from flowforge.workflow.v1 import workflow_service_pb2 as pb
from flowforge.workflow.v1 import workflow_service_pb2_grpc as pb_grpc
from flowforge_common.auth import ALL_SCOPES
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory
from tests.workflow_svc.harness import (
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
from workflow_svc.domain.templates import BUILTIN_TEMPLATES, instantiate

Metadata = list[tuple[str, str]]
Stub = pb_grpc.WorkflowServiceStub
Stubs = tuple[Stub, agent_grpc.AgentServiceStub]

TENANT_TEMPLATE: dict[str, Any] = {
    "name": "notify-team",
    "description": "Posts the input to a team's webhook.",
    "parameters_schema": {
        "type": "object",
        "required": ["url"],
        "properties": {"url": {"type": "string", "format": "uri"}, "label": {"type": "string", "default": "ops"}},
        "examples": [{"url": "https://hooks.example.com/team"}],
    },
    "definition": {
        "name": "notify-team",
        "steps": [
            {
                "id": "post",
                "type": "http",
                "config": {"url": "{{ params.url }}"},
                "input": {"label": "{{ params.label }}", "body": "{{ input }}"},
            }
        ],
        "tags": ["{{ params.label }}"],
    },
}


@pytest.fixture
async def stubs(database: DatabaseTarget, tokens: TokenFactory) -> AsyncIterator[Stubs]:
    async with (
        running_workflow_service(database, tokens) as service,
        workflow_stub(service) as workflows,
        agent_stub(service) as agents,
    ):
        yield workflows, agents


@pytest.fixture
def stub(stubs: Stubs) -> Stub:
    return stubs[0]


@pytest.fixture
def editor(tokens: TokenFactory) -> Metadata:
    return bearer(tokens.mint(tenant_id="ten_acme", subject="usr_ada", scopes=ALL_SCOPES))


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def template_message(template: dict[str, Any]) -> workflow_pb2.WorkflowTemplate:
    return workflow_pb2.WorkflowTemplate(
        name=template["name"],
        description=template.get("description", ""),
        parameters_schema=struct(template["parameters_schema"]),
        definition=workflow_message(template["definition"]),
    )


async def from_template(stub: Stub, metadata: Metadata, template: str, name: str, **parameters: Any) -> Any:
    request = pb.CreateWorkflowFromTemplateRequest(template_name=template, name=name, parameters=struct(parameters))
    return await stub.CreateWorkflowFromTemplate(request, metadata=metadata)


@pytest.mark.parametrize("name", list(BUILTIN_TEMPLATES))
async def test_every_builtin_instantiates_into_a_saved_workflow(stubs: Stubs, editor: Metadata, name: str) -> None:
    stub, agents = stubs
    template = BUILTIN_TEMPLATES[name]
    example = dict(template.parameters_schema["examples"][0])
    for key, value in example.items():
        if key.endswith("_agent"):
            request = agent_pb.CreateAgentRequest(agent=agent_pb2.Agent(name=value, url=PUBLIC_URL))
            await agents.CreateAgent(request, metadata=editor)

    created = (await from_template(stub, editor, name, f"my-{name}", **example)).workflow

    assert (created.name, created.version, created.status) == (f"my-{name}", 1, workflow_pb2.WORKFLOW_STATUS_ACTIVE)
    assert definition_of(created) == workflow_message(instantiate(template, example, name=f"my-{name}"))
    fetched = await stub.GetWorkflow(pb.GetWorkflowRequest(id=created.id), metadata=editor)
    assert fetched.workflow == created


async def test_parameters_reach_typed_fields(stubs: Stubs, editor: Metadata) -> None:
    stub, agents = stubs
    for agent in ("worker", "combiner"):
        await agents.CreateAgent(
            agent_pb.CreateAgentRequest(agent=agent_pb2.Agent(name=agent, url=PUBLIC_URL)), metadata=editor
        )
    created = (
        await from_template(
            stub, editor, "fan-out-fan-in", "fan", worker_agent="worker", aggregator_agent="combiner", max_concurrency=4
        )
    ).workflow
    process = created.steps[0]
    assert (process.agent, process.max_concurrency, process.timeout_ms) == ("worker", 4, 60_000)
    assert process.for_each == "{{ input.items }}"


async def test_instantiation_problems_are_422_at_their_field(stubs: Stubs, editor: Metadata) -> None:
    stub, _ = stubs
    missing = await failure(from_template(stub, editor, "approval-gate", "gate", action_agent="deployer"))
    assert error_details(missing) == ("VALIDATION_FAILED", {"parameters.notify_url": "'notify_url' is required"})

    # The parameters are fine, but the agents they name are not registered.
    unknown = await failure(
        from_template(stub, editor, "fan-out-fan-in", "fan", worker_agent="ghost", aggregator_agent="ghost2")
    )
    assert error_details(unknown) == (
        "VALIDATION_FAILED",
        {"steps[0].agent": "unknown agent 'ghost'", "steps[1].agent": "unknown agent 'ghost2'"},
    )
    nameless = await failure(
        from_template(stub, editor, "approval-gate", "", notify_url="https://x.example", action_agent="d")
    )
    assert error_details(nameless)[1]["name"] == "name is required"

    absent = await failure(from_template(stub, editor, "no-such-template", "x"))
    assert absent.code() == grpc.StatusCode.NOT_FOUND
    assert list((await stub.ListWorkflows(pb.ListWorkflowsRequest(), metadata=editor)).items) == []


async def test_builtin_templates_are_served_with_their_parameters(stub: Stub, editor: Metadata) -> None:
    for name, template in BUILTIN_TEMPLATES.items():
        served = (await stub.GetWorkflowTemplate(pb.GetWorkflowTemplateRequest(name=name), metadata=editor)).template
        assert served.builtin
        assert (served.name, served.description) == (name, template.description)
        assert json_format.MessageToDict(served.parameters_schema) == template.parameters_schema
        assert [step.id for step in served.definition.steps] == [step["id"] for step in template.definition["steps"]]

    fan_out = (
        await stub.GetWorkflowTemplate(pb.GetWorkflowTemplateRequest(name="fan-out-fan-in"), metadata=editor)
    ).template
    process = fan_out.definition.steps[0]
    assert process.agent == "{{ params.worker_agent }}"
    # A Workflow message cannot carry a placeholder in an int32 field: it is left out (the
    # parameter is still listed in parameters_schema and applied on instantiation).
    assert not process.HasField("max_concurrency")
    assert "max_concurrency" in fan_out.parameters_schema["properties"]


async def test_tenant_templates_are_saved_listed_and_used(stub: Stub, editor: Metadata) -> None:
    saved = await stub.CreateWorkflowTemplate(
        pb.CreateWorkflowTemplateRequest(template=template_message(TENANT_TEMPLATE)), metadata=editor
    )
    assert saved.template == template_message(TENANT_TEMPLATE)
    assert not saved.template.builtin

    fetched = await stub.GetWorkflowTemplate(pb.GetWorkflowTemplateRequest(name="notify-team"), metadata=editor)
    assert fetched.template == saved.template

    names: list[list[str]] = []
    token = ""
    while True:
        page = await stub.ListWorkflowTemplates(
            pb.ListWorkflowTemplatesRequest(limit=2, page_token=token), metadata=editor
        )
        names.append([template.name for template in page.items])
        token = page.next_page_token
        if not token:
            break
    everything = sorted([*BUILTIN_TEMPLATES, "notify-team"])
    assert [name for page in names for name in page] == everything
    assert [len(page) for page in names] == [2, 2, 2]

    created = (await from_template(stub, editor, "notify-team", "team-a", url="https://hooks.example.com/a")).workflow
    assert created.steps[0].config["url"] == "https://hooks.example.com/a"
    assert list(created.tags) == ["ops"]


async def test_template_names_cannot_clash(stub: Stub, editor: Metadata, tokens: TokenFactory) -> None:
    builtin_name = {**TENANT_TEMPLATE, "name": "fan-out-fan-in"}
    clash = await failure(
        stub.CreateWorkflowTemplate(
            pb.CreateWorkflowTemplateRequest(template=template_message(builtin_name)), metadata=editor
        )
    )
    assert clash.code() == grpc.StatusCode.ALREADY_EXISTS

    request = pb.CreateWorkflowTemplateRequest(template=template_message(TENANT_TEMPLATE))
    await stub.CreateWorkflowTemplate(request, metadata=editor)
    duplicate = await failure(stub.CreateWorkflowTemplate(request, metadata=editor))
    assert duplicate.code() == grpc.StatusCode.ALREADY_EXISTS

    other_tenant = bearer(tokens.mint(tenant_id="ten_globex", scopes=ALL_SCOPES))
    assert (await stub.CreateWorkflowTemplate(request, metadata=other_tenant)).template.name == "notify-team"


async def test_invalid_templates_are_422_at_their_field(stub: Stub, editor: Metadata) -> None:
    bad_name = {**TENANT_TEMPLATE, "name": "Not A Name"}
    unknown_parameter = {
        **TENANT_TEMPLATE,
        "definition": {"name": "x", "steps": [{"id": "post", "type": "http", "config": {"url": "{{ params.nope }}"}}]},
    }
    bad_example = {
        **TENANT_TEMPLATE,
        "parameters_schema": {**TENANT_TEMPLATE["parameters_schema"], "examples": [{"url": "not a url"}]},
    }
    cases = [
        (bad_name, "name", "template names are 1 to 63 lower-case letters, digits and '-', starting alphanumeric"),
        (unknown_parameter, "definition.steps[0].config.url", "unknown parameter 'nope' (declared: label, url)"),
        (bad_example, "parameters_schema.examples[0].url", "'not a url' is not a 'uri'"),
    ]
    for template, field, message in cases:
        error = await failure(
            stub.CreateWorkflowTemplate(
                pb.CreateWorkflowTemplateRequest(template=template_message(template)), metadata=editor
            )
        )
        assert error_details(error)[0] == "VALIDATION_FAILED", field
        assert (field, message) in field_violations(error)
