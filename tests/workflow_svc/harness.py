"""An in-process workflow_svc for tests: a real grpc.aio server on port 0, tokens from the test
key, and a stub resolver so that no DNS query (or any packet) leaves the machine."""

from __future__ import annotations

import copy
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from flowforge.audit.v1 import audit_service_pb2_grpc
from flowforge.workflow.v1 import agent_pb2, workflow_pb2, workflow_service_pb2_grpc
from flowforge.workflow.v1 import agent_service_pb2 as pb
from flowforge.workflow.v1 import agent_service_pb2_grpc as pb_grpc
from flowforge_common.netpolicy import AgentNetworkMode
from flowforge_common.service import RunningService
from tests.fixtures.databases import DatabaseTarget
from tests.fixtures.tokens import TokenFactory
from workflow_svc.server import create_server
from workflow_svc.settings import WorkflowSettings

PUBLIC_HOST = "agent.example.com"
METADATA_HOST = "metadata.example.com"
INTERNAL_HOST = "internal.example.com"
PUBLIC_URL = f"https://{PUBLIC_HOST}/run"

DNS = {
    PUBLIC_HOST: ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    METADATA_HOST: ["169.254.169.254"],
    INTERNAL_HOST: ["10.1.2.3"],
    # One bad address among good ones must be enough to refuse the name.
    "mixed.example.com": ["93.184.216.34", "169.254.169.254"],
}


# API.md's example, as written there.
API_EXAMPLE: dict[str, Any] = {
    "name": "summarize-and-notify",
    "description": "...",
    "input_schema": {"type": "object", "required": ["doc"], "properties": {"doc": {"type": "string"}}},
    "steps": [
        {"id": "fetch", "agent": "fetcher", "input": {"url": "{{ input.doc }}"}},
        {
            "id": "summarize",
            "agent": "summarizer",
            "depends_on": ["fetch"],
            "input": {"text": "{{ steps.fetch.output.body }}"},
            "retry": {"max_retries": 5},
            "timeout_ms": 20000,
        },
        {
            "id": "classify",
            "agent": "classifier",
            "depends_on": ["fetch"],
            "input": {"text": "{{ steps.fetch.output.body }}"},
        },
        {
            "id": "notify",
            "type": "http",
            "depends_on": ["summarize", "classify"],
            "when": "{{ steps.classify.output.label == 'urgent' }}",
            "config": {"method": "POST", "url": "https://hooks.example.com/x"},
            "input": {"summary": "{{ steps.summarize.output }}"},
        },
    ],
    "output": {"summary": "{{ steps.summarize.output }}"},
}


class StubResolver:
    """Answers from a fixed table and records every look-up; unknown names fail like NXDOMAIN."""

    def __init__(self, table: Mapping[str, Sequence[str]] = DNS) -> None:
        self.table = dict(table)
        self.lookups: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


@asynccontextmanager
async def running_workflow_service(
    database: DatabaseTarget,
    tokens: TokenFactory,
    *,
    network: AgentNetworkMode = AgentNetworkMode.PUBLIC_ONLY,
    resolver: StubResolver | None = None,
) -> AsyncIterator[RunningService]:
    """workflow_svc on `database`, trusting `tokens`, resolving names with a stub resolver."""
    settings = WorkflowSettings(
        port=0,
        database_url=database.url,
        db_schema=database.schema,
        data_dir=database.data_dir,
        agent_network=network,
    )
    service = await create_server(settings, verifier=tokens.verifier(), resolver=resolver or StubResolver())
    try:
        yield service
    finally:
        await service.stop(0)


@asynccontextmanager
async def agent_stub(service: RunningService) -> AsyncIterator[pb_grpc.AgentServiceStub]:
    """An AgentService client connected to `service`."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield pb_grpc.AgentServiceStub(channel)


@asynccontextmanager
async def workflow_stub(service: RunningService) -> AsyncIterator[workflow_service_pb2_grpc.WorkflowServiceStub]:
    """A WorkflowService client connected to `service`."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield workflow_service_pb2_grpc.WorkflowServiceStub(channel)


@asynccontextmanager
async def audit_stub(service: RunningService) -> AsyncIterator[audit_service_pb2_grpc.AuditServiceStub]:
    """An AuditService client connected to `service`."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield audit_service_pb2_grpc.AuditServiceStub(channel)


def bearer(token: str) -> list[tuple[str, str]]:
    """gRPC metadata carrying an access token."""
    return [("authorization", f"Bearer {token}")]


def create_request(**fields: object) -> pb.CreateAgentRequest:
    """A CreateAgent request for a valid public agent, with `fields` overriding the defaults."""
    values: dict[str, object] = {"name": "summarizer", "url": PUBLIC_URL}
    values.update(fields)
    return pb.CreateAgentRequest(agent=agent_pb2.Agent(**values))  # type: ignore[arg-type]


def update_request(agent_id: str, paths: Sequence[str], etag: str = "", **fields: object) -> pb.UpdateAgentRequest:
    """An UpdateAgent request changing `paths` to `fields`."""
    return pb.UpdateAgentRequest(
        id=agent_id,
        agent=agent_pb2.Agent(**fields),  # type: ignore[arg-type]
        update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
        etag=etag,
    )


BOOKKEEPING_FIELDS = ("id", "version", "status", "etag", "created_at", "updated_at", "created_by")


def workflow_message(definition: Mapping[str, Any]) -> workflow_pb2.Workflow:
    """The Workflow proto a gRPC client sends for a definition written as in API.md (lower-case
    enum values, as the edge accepts them over REST)."""
    data = copy.deepcopy(dict(definition))
    for step in data.get("steps", []):
        for field, prefix in (("type", "STEP_TYPE_"), ("on_exhausted", "ON_EXHAUSTED_")):
            if field in step:
                step[field] = prefix + step[field].upper()
    if "status" in data:
        data["status"] = "WORKFLOW_STATUS_" + data["status"].upper()
    return json_format.ParseDict(data, workflow_pb2.Workflow())


def definition_of(workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
    """Only the definition fields of a workflow (what a client wrote), for comparisons."""
    definition = workflow_pb2.Workflow()
    definition.CopyFrom(workflow)
    for field in BOOKKEEPING_FIELDS:
        definition.ClearField(field)
    return definition


def error_details(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The ErrorInfo reason and the BadRequest violations (field -> description) of a failure."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries no google.rpc.Status"
    reason = ""
    violations: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.update({v.field: v.description for v in bad_request.field_violations})
    return reason, violations


def field_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """Every BadRequest violation of a failure as (field, description), in order, repeats kept."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "the error carries no google.rpc.Status"
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return violations
