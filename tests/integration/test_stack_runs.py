"""Runs through every layer: the edge, workflow_svc's agents (resolved over gRPC with the service
token), execution_svc's engine and real HTTP agents on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from flowforge.workflow.v1 import agent_service_pb2, agent_service_pb2_grpc
from flowforge_common.service_identity import SERVICE_TOKEN_HEADER, TENANT_HEADER
from tests.fixtures.stack import Member, Stack
from tests.fixtures.test_agent import TestAgent
from tests.workflow_svc.harness import API_EXAMPLE

pytestmark = pytest.mark.parametrize("stack", ["allow-private"], indirect=True)


async def register(stack: Stack, member: Member, name: str, url: str, **extra: Any) -> None:
    body = {"name": name, "url": url, "timeout_ms": 5000, "retry_config": {"initial_delay_ms": 100}, **extra}
    response = await stack.client.post("/api/v1/agents", json=body, headers=member.headers)
    assert response.status == 201, await response.text()


async def finished_run(stack: Stack, member: Member, run_id: str, within: float = 30.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        response = await stack.client.get(f"/api/v1/runs/{run_id}", headers=member.headers)
        run: dict[str, Any] = await response.json()
        if run["status"] in {"succeeded", "failed", "cancelled"}:
            return run
        assert asyncio.get_running_loop().time() < deadline, f"run still {run['status']}"
        await asyncio.sleep(0.05)


async def test_the_api_example_runs_end_to_end_with_real_agents(stack: Stack, test_agent: TestAgent) -> None:
    member = await stack.member()
    await register(stack, member, "fetcher", test_agent.url("/fields", body="FlowForge+runs+DAGs."))
    await register(
        stack,
        member,
        "summarizer",
        test_agent.url("/flaky", fail=1),  # one 500 first: retried per the step's policy
        auth_type="bearer",
        auth_config={"token": "summarizer-secret"},
    )
    await register(stack, member, "classifier", test_agent.url("/fields", label="routine"))
    response = await stack.client.post("/api/v1/workflows", json=API_EXAMPLE, headers=member.headers)
    assert response.status == 201, await response.text()
    workflow = await response.json()

    response = await stack.client.post(
        f"/api/v1/workflows/{workflow['id']}/execute",
        json={"input": {"doc": "https://docs.example.com/a"}},
        headers=member.headers,
    )
    assert response.status == 202, await response.text()
    run = await finished_run(stack, member, (await response.json())["id"])

    assert run["status"] == "succeeded", run
    assert run["output"] == {"summary": {"text": "FlowForge runs DAGs."}}
    steps = {
        step["step_id"]: step
        for step in await (await stack.client.get(f"/api/v1/runs/{run['id']}/steps", headers=member.headers)).json()
    }
    assert {name: step["status"] for name, step in steps.items()} == {
        "fetch": "succeeded",
        "summarize": "succeeded",
        "classify": "succeeded",
        "notify": "skipped",  # the label is not urgent
    }
    assert steps["summarize"]["attempt"] == 2
    fetch_call = test_agent.received("/fields")[0]
    assert fetch_call.body["input"] == {"url": "https://docs.example.com/a"}
    summarize_calls = test_agent.received("/flaky")
    assert [call.body["input"] for call in summarize_calls] == [{"text": "FlowForge runs DAGs."}] * 2
    # Credentials decrypted by workflow_svc reach the agent; the key is stable across attempts.
    assert {call.headers["Authorization"] for call in summarize_calls} == {"Bearer summarizer-secret"}
    assert {call.idempotency_key for call in summarize_calls} == {f"{run['id']}/summarize"}


async def test_a_deactivated_agent_fails_its_step_without_retrying(stack: Stack, test_agent: TestAgent) -> None:
    member = await stack.member()
    await register(stack, member, "worker", test_agent.url("/echo"))
    definition = {"name": "one-step", "steps": [{"id": "work", "agent": "worker", "input": {"n": 1}}]}
    response = await stack.client.post("/api/v1/workflows", json=definition, headers=member.headers)
    workflow_id = (await response.json())["id"]
    agents = await (await stack.client.get("/api/v1/agents", headers=member.headers)).json()
    response = await stack.client.patch(
        f"/api/v1/agents/{agents['items'][0]['id']}", json={"status": "inactive"}, headers=member.headers
    )
    assert response.status == 200, await response.text()

    response = await stack.client.post(
        f"/api/v1/workflows/{workflow_id}/execute", json={"input": {}}, headers=member.headers
    )
    run = await finished_run(stack, member, (await response.json())["id"])
    assert run["status"] == "failed"
    assert "inactive" in str(run["error"])
    assert test_agent.received("/echo") == []


async def test_resolve_agent_is_for_services_only(stack: Stack, test_agent: TestAgent) -> None:
    member = await stack.member()
    await register(
        stack, member, "secretive", test_agent.url("/echo"), auth_type="bearer", auth_config={"token": "t0p"}
    )
    port = stack.services["workflow"].port
    request = agent_service_pb2.ResolveAgentRequest(name="secretive")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = agent_service_pb2_grpc.AgentServiceStub(channel)
        # Even the tenant's owner (who holds `admin`) cannot read decrypted credentials.
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.ResolveAgent(request, metadata=[("authorization", f"Bearer {member.token}")])
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        forged = [(SERVICE_TOKEN_HEADER, "x" * 43), (TENANT_HEADER, member.tenant_id)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ResolveAgent(request, metadata=forged)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # And there is no REST route to it.
    response = await stack.client.get("/api/v1/agents:resolve?name=secretive", headers=member.headers)
    assert response.status == 404


async def test_agent_status_reports_the_engines_circuit(stack: Stack, test_agent: TestAgent) -> None:
    member = await stack.member()
    await register(stack, member, "broken", test_agent.url("/status/503"), retry_config={"max_retries": 0})
    definition = {"name": "calls-broken", "steps": [{"id": "call", "agent": "broken", "input": {}}]}
    workflow_id = (
        await (await stack.client.post("/api/v1/workflows", json=definition, headers=member.headers)).json()
    )["id"]
    agent_id = (await (await stack.client.get("/api/v1/agents", headers=member.headers)).json())["items"][0]["id"]

    response = await stack.client.get(f"/api/v1/agents/{agent_id}/status", headers=member.headers)
    assert await response.json() == {
        "status": "active",
        "in_flight": 0,
        "recent_success_rate": 0.0,
        "p50_latency_ms": 0,
        "circuit": "closed",
    }
    for _ in range(5):  # the default threshold: five failures in a row open the circuit
        response = await stack.client.post(
            f"/api/v1/workflows/{workflow_id}/execute", json={"input": {}}, headers=member.headers
        )
        assert (await finished_run(stack, member, (await response.json())["id"]))["status"] == "failed"

    status = await (await stack.client.get(f"/api/v1/agents/{agent_id}/status", headers=member.headers)).json()
    assert (status["circuit"], status["recent_success_rate"], status["in_flight"]) == ("open", 0.0, 0)
    assert len(test_agent.received("/status/503")) == 5


async def create_workflow(stack: Stack, member: Member, definition: dict[str, Any]) -> str:
    response = await stack.client.post("/api/v1/workflows", json=definition, headers=member.headers)
    assert response.status == 201, await response.text()
    workflow_id: str = (await response.json())["id"]
    return workflow_id


async def test_a_sub_workflow_runs_as_a_linked_child_and_hands_back_its_output(
    stack: Stack, test_agent: TestAgent
) -> None:
    member = await stack.member()
    await register(stack, member, "doubler", test_agent.url("/echo"))
    child_id = await create_workflow(
        stack,
        member,
        {
            "name": "child",
            "input_schema": {"type": "object", "required": ["n"]},
            "steps": [{"id": "echo", "agent": "doubler", "input": {"twice": "{{ [input.n, input.n] }}"}}],
            "output": "{{ steps.echo.output.twice }}",
        },
    )
    parent_id = await create_workflow(
        stack,
        member,
        {
            "name": "parent",
            "steps": [
                {
                    "id": "call",
                    "type": "sub_workflow",
                    "config": {"workflow_id": child_id},
                    "input": {"n": "{{ input.n }}"},
                },
                {"id": "sum", "type": "transform", "depends_on": ["call"], "input": "{{ sum(steps.call.output) }}"},
            ],
            "output": {"child": "{{ steps.call.output }}", "sum": "{{ steps.sum.output }}"},
        },
    )
    response = await stack.client.post(
        f"/api/v1/workflows/{parent_id}/execute", json={"input": {"n": 21}}, headers=member.headers
    )
    parent = await finished_run(stack, member, (await response.json())["id"])
    assert (parent["status"], parent["output"]) == ("succeeded", {"child": [21, 21], "sum": 42})

    children = await (await stack.client.get(f"/api/v1/runs?workflow_id={child_id}", headers=member.headers)).json()
    [child] = children["items"]
    assert (child["parent_run_id"], child["trigger"], child["status"]) == (parent["id"], "sub_workflow", "succeeded")
    assert child["input"] == {"n": 21}


async def test_cancelling_the_parent_cancels_the_child(stack: Stack) -> None:
    member = await stack.member()
    child_id = await create_workflow(
        stack,
        member,
        {"name": "waits", "steps": [{"id": "gate", "type": "wait_for_signal", "config": {"signal": "go"}}]},
    )
    parent_id = await create_workflow(
        stack,
        member,
        {"name": "outer", "steps": [{"id": "call", "type": "sub_workflow", "config": {"workflow_id": child_id}}]},
    )
    response = await stack.client.post(
        f"/api/v1/workflows/{parent_id}/execute", json={"input": {}}, headers=member.headers
    )
    parent_run_id = (await response.json())["id"]
    child: dict[str, Any] = {}
    for _ in range(200):
        listed = await (await stack.client.get(f"/api/v1/runs?workflow_id={child_id}", headers=member.headers)).json()
        if listed["items"]:
            child = listed["items"][0]
            break
        await asyncio.sleep(0.05)
    assert child["parent_run_id"] == parent_run_id

    response = await stack.client.post(f"/api/v1/runs/{parent_run_id}/cancel", headers=member.headers)
    assert response.status == 202, await response.text()
    assert (await finished_run(stack, member, parent_run_id))["status"] == "cancelled"
    assert (await finished_run(stack, member, child["id"]))["status"] == "cancelled"


async def test_ids_postgresql_cannot_store_are_a_400_not_a_crash(stack: Stack) -> None:
    member = await stack.member()
    for method, path in [("GET", "/api/v1/workflows/wf_%00x"), ("POST", "/api/v1/workflows/wf_%00x/execute")]:
        response = await stack.client.request(method, path, json={"input": {}}, headers=member.headers)
        assert response.status in (400, 404), (path, response.status, await response.text())
        assert response.content_type == "application/problem+json"
