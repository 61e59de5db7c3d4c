"""The edge against real in-process gRPC servers (echo servicers behind FlowForge's interceptor):
path, query, body and header transcoding, success codes, response shapes."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from edge.app import create_app
from flowforge.execution.v1 import execution_pb2
from flowforge.workflow.v1 import agent_pb2
from tests.edge.support import EchoBackend, edge_settings
from tests.fixtures.tokens import TokenFactory

Client = TestClient[Any, Any]


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, backend: EchoBackend) -> Client:
    return await aiohttp_client(create_app(edge_settings(backend.target)))


@pytest.fixture
def auth(tokens: TokenFactory) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.mint()}"}


async def test_list_maps_query_parameters_and_renders_the_list_shape(
    client: Client, backend: EchoBackend, auth: dict[str, str]
) -> None:
    response = await client.get("/api/v1/agents?limit=5&page_token=p1&status=inactive&capability=x", headers=auth)
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["next_page_token"] == ""
    assert [item["status"] for item in body["items"]] == ["active", "inactive"]
    request = backend.recorder.last("ListAgents").request
    assert (request.limit, request.page_token, request.capability) == (5, "p1", "x")
    assert request.status == agent_pb2.AGENT_STATUS_INACTIVE


async def test_fields_selects_top_level_keys_of_each_item(client: Client, auth: dict[str, str]) -> None:
    response = await client.get("/api/v1/agents?fields=id,name", headers=auth)
    assert await response.json() == {
        "items": [{"id": "agt_1", "name": "one"}, {"id": "agt_2", "name": "two"}],
        "next_page_token": "",
    }
    single = await client.get("/api/v1/agents/agt_7?fields=id,authType", headers=auth)
    assert await single.json() == {"id": "agt_7", "auth_type": "apikey"}


async def test_path_parameters_and_bare_resources(client: Client, backend: EchoBackend, auth: dict[str, str]) -> None:
    response = await client.get("/api/v1/agents/agt_42", headers=auth)
    body = await response.json()
    assert backend.recorder.last("GetAgent").request.id == "agt_42"
    assert body["id"] == "agt_42"  # the bare resource, not {"agent": {...}}
    assert body["auth_type"] == "apikey"
    assert body["created_at"] == "2026-01-15T10:30:00Z"
    assert response.headers["ETag"] == '"etag-1"'


async def test_create_answers_201_with_location(client: Client, backend: EchoBackend, auth: dict[str, str]) -> None:
    payload = {
        "name": "summarizer",
        "url": "http://127.0.0.1:9000/run",
        "authType": "bearer",
        "auth_config": {"token": "s3cr3t"},
        "retry_config": {"max_retries": 5},
        "capabilities": ["summarize"],
    }
    response = await client.post("/api/v1/agents", json=payload, headers=auth)
    assert response.status == 201
    assert response.headers["Location"] == "/api/v1/agents/agt_new"
    body = await response.json()
    assert body["id"] == "agt_new" and body["auth_type"] == "bearer"
    agent = backend.recorder.last("CreateAgent").request.agent
    assert agent.auth_type == agent_pb2.AGENT_AUTH_TYPE_BEARER
    assert agent.auth_config["token"] == "s3cr3t"
    assert agent.retry_config.max_retries == 5


async def test_location_uses_the_get_route_of_the_created_resource(client: Client, auth: dict[str, str]) -> None:
    from_template = await client.post("/api/v1/workflows/from-template/digest", json={"name": "daily"}, headers=auth)
    assert (from_template.status, from_template.headers["Location"]) == (201, "/api/v1/workflows/wf_9")
    schedule = await client.post("/api/v1/workflows/wf_1/schedules", json={"cron": "* * * * *"}, headers=auth)
    assert schedule.headers["Location"] == "/api/v1/workflows/wf_1/schedules/sch_1"
    trigger = await client.post("/api/v1/workflows/wf_1/webhook-triggers", headers=auth)
    assert trigger.headers["Location"] == "/api/v1/workflows/wf_1/webhook-triggers/trg_1"
    signup = await client.post("/api/v1/auth/signup", json={"email": "a@b.c", "password": "p", "tenant_name": "t"})
    assert signup.status == 201 and "Location" not in signup.headers


async def test_patch_derives_update_mask_and_if_match_fills_etag(
    client: Client, backend: EchoBackend, auth: dict[str, str]
) -> None:
    response = await client.patch(
        "/api/v1/agents/agt_1",
        json={"description": "new", "timeoutMs": 5000},
        headers={**auth, "If-Match": '"etag-1"'},
    )
    assert response.status == 200
    request = backend.recorder.last("UpdateAgent").request
    assert request.id == "agt_1"
    assert list(request.update_mask.paths) == ["description", "timeout_ms"]
    assert request.etag == "etag-1"
    assert (await response.json())["timeout_ms"] == 5000

    await client.patch("/api/v1/agents/agt_1?update_mask=url", json={"url": "u", "name": "n"}, headers=auth)
    assert list(backend.recorder.last("UpdateAgent").request.update_mask.paths) == ["url"]


async def test_delete_answers_204_without_a_body(client: Client, backend: EchoBackend, auth: dict[str, str]) -> None:
    response = await client.delete("/api/v1/agents/agt_1", headers=auth)
    assert response.status == 204
    assert await response.read() == b""
    assert "Content-Type" not in response.headers
    assert backend.recorder.last("DeleteAgent").request.id == "agt_1"


async def test_custom_verb_does_not_collide_with_the_id_route(
    client: Client, backend: EchoBackend, auth: dict[str, str]
) -> None:
    response = await client.post(
        "/api/v1/workflows:validate", json={"name": "w", "steps": [{"id": "a"}, {"id": "b"}]}, headers=auth
    )
    assert await response.json() == {"valid": True, "errors": [], "plan": [["a", "b"]]}
    assert backend.recorder.last("ValidateWorkflow").request.workflow.name == "w"
    get = await client.get("/api/v1/workflows/wf_1", headers=auth)
    assert (await get.json())["id"] == "wf_1"
    wrong = await client.get("/api/v1/workflows:validate", headers=auth)
    assert (wrong.status, wrong.headers["Allow"]) == (405, "POST")


async def test_repeated_response_body_renders_a_bare_array(client: Client, auth: dict[str, str]) -> None:
    response = await client.get("/api/v1/runs/run_1/steps", headers=auth)
    steps = await response.json()
    assert isinstance(steps, list)
    assert [(s["step_id"], s["status"]) for s in steps] == [("fetch", "succeeded"), ("notify", "pending")]
    selected = await client.get("/api/v1/runs/run_1/steps?fields=step_id", headers=auth)
    assert await selected.json() == [{"step_id": "fetch"}, {"step_id": "notify"}]


async def test_int64_are_json_numbers(client: Client, auth: dict[str, str]) -> None:
    response = await client.get("/api/v1/stats", headers=auth)
    text = await response.text()
    assert '"p99_ms": 9007199254740993' in text
    assert (await response.json())["runs_by_status"] == {"running": 2**40}


async def test_timestamp_and_enum_filters(client: Client, backend: EchoBackend, auth: dict[str, str]) -> None:
    response = await client.get(
        "/api/v1/runs",
        params={"status": "running", "created_after": "2026-01-01T00:00:00+01:00", "workflow_id": "wf_1"},
        headers=auth,
    )
    body = await response.json()
    assert body["items"][0]["status"] == "running" and body["next_page_token"] == "next"
    request = backend.recorder.last("ListRuns").request
    assert request.status == execution_pb2.RUN_STATUS_RUNNING
    assert request.created_after.ToJsonString() == "2025-12-31T23:00:00Z"
    assert request.workflow_id == "wf_1"


async def test_run_controls_answer_202_and_take_idempotency_keys(
    client: Client, backend: EchoBackend, auth: dict[str, str]
) -> None:
    response = await client.post("/api/v1/runs/run_1/cancel", headers={**auth, "Idempotency-Key": "key-1"})
    assert response.status == 202
    assert (await response.json())["status"] == "cancelled"
    request = backend.recorder.last("CancelRun").request
    assert (request.id, request.idempotency_key) == ("run_1", "key-1")
    signal = await client.post("/api/v1/runs/run_1/signals/approved", json={"payload": {"ok": True}}, headers=auth)
    assert signal.status == 202
    sent = backend.recorder.last("SendSignal").request
    assert (sent.id, sent.name, sent.payload.struct_value["ok"]) == ("run_1", "approved", True)


async def test_credentials_request_id_and_trace_context_travel_as_metadata(
    client: Client, backend: EchoBackend, auth: dict[str, str]
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await client.get(
        "/api/v1/agents/agt_1",
        headers={**auth, "X-Request-ID": "client-req-1", "traceparent": traceparent, "tracestate": "ff=1"},
    )
    metadata = backend.recorder.last("GetAgent").metadata
    assert metadata["authorization"] == auth["Authorization"]
    assert metadata["x-request-id"] == "client-req-1"
    assert metadata["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert metadata["tracestate"] == "ff=1"
    await client.post("/api/v1/auth/token", json={"grant_type": "client_credentials"}, headers={"X-API-Key": "ffk_1"})
    assert backend.recorder.last("IssueToken").metadata["x-api-key"] == "ffk_1"


async def test_token_endpoint_takes_a_form(client: Client, backend: EchoBackend) -> None:
    response = await client.post(
        "/api/v1/auth/token", data={"grant_type": "client_credentials", "client_id": "svc", "scope": "runs:read"}
    )
    assert response.status == 200
    assert await response.json() == {
        "access_token": "token-for-svc",
        "token_type": "Bearer",
        "expires_in": 900,
        "scope": "runs:read",
    }
    assert backend.recorder.last("IssueToken").request.client_id == "svc"


async def test_inbound_hooks_get_the_raw_body_and_signature_headers(client: Client, backend: EchoBackend) -> None:
    raw = b'{"event": "push", "spaces":  "kept exactly"}'
    response = await client.post(
        "/api/v1/hooks/trg_1",
        data=raw,
        headers={
            "Content-Type": "application/json",
            "webhook-id": "msg_1",
            "webhook-timestamp": "1768473000",
            "webhook-signature": "v1,c2lnbmF0dXJl",
        },
    )
    assert (response.status, await response.json()) == (202, {"run_id": "run_hook"})
    request = backend.recorder.last("ReceiveHook").request
    assert (request.trigger_id, request.body.data, request.body.content_type) == ("trg_1", raw, "application/json")
    assert (request.webhook_id, request.webhook_timestamp, request.webhook_signature) == (
        "msg_1",
        "1768473000",
        "v1,c2lnbmF0dXJl",
    )


async def test_enum_rendering_and_unspecified_omitted(client: Client, auth: dict[str, str]) -> None:
    status = await (await client.get("/api/v1/agents/agt_1/status", headers=auth)).json()
    assert status == {
        "status": "active",
        "in_flight": 2,
        "recent_success_rate": 0.5,
        "p50_latency_ms": 120,
        "circuit": "half_open",
    }
    health = await (await client.get("/api/v1/agents/agt_1/health", headers=auth)).json()
    assert health == {"latency_ms": 0, "detail": "not probed"}  # status UNSPECIFIED, checked_at unset


async def test_request_problems_name_the_field(client: Client, auth: dict[str, str]) -> None:
    unknown_body = await client.post("/api/v1/agents", json={"name": "a", "tenant_id": "t2"}, headers=auth)
    problem = await unknown_body.json()
    assert unknown_body.status == 400
    assert problem["errors"] == [{"field": "tenant_id", "message": "unknown field"}]

    unknown_query = await client.get("/api/v1/agents?colour=red", headers=auth)
    assert (await unknown_query.json())["errors"][0]["field"] == "colour"

    conflict = await client.post(
        "/api/v1/workflows/from-template/a", json={"template_name": "b", "name": "n"}, headers=auth
    )
    assert (conflict.status, (await conflict.json())["errors"][0]["field"]) == (400, "template_name")

    bad_enum = await client.get("/api/v1/runs?status=sleeping", headers=auth)
    assert "pending" in (await bad_enum.json())["errors"][0]["message"]


async def test_unimplemented_rpcs_answer_501(client: Client, auth: dict[str, str]) -> None:
    response = await client.get("/api/v1/step-types", headers=auth)
    assert response.status == 501
    assert response.content_type == "application/problem+json"
