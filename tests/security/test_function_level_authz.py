"""OWASP API5 (broken function level authorization), generated from the route table: every
route whose RPC declares a scope refuses (403) a caller holding every other scope; a viewer
cannot write anything; an API key limited to `runs:execute` can run workflows but not edit them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from edge.app import create_app
from edge.transcoder import HttpBinding, bindings_for
from edge.upstream import SERVICES
from flowforge_common.auth import ALL_SCOPES
from tests.edge.support import EchoBackend, edge_settings
from tests.fixtures.stack import Stack
from tests.fixtures.tokens import TokenFactory

Client = TestClient[Any, Any]
VIEWER = ("workflows:read", "runs:read", "agents:read")
_VARIABLE = re.compile(r"\{[^}]+\}")


def scoped_routes() -> list[HttpBinding]:
    return [b for b in bindings_for(SERVICES) if b.policy is not None and b.policy.scope in ALL_SCOPES]


def concrete(binding: HttpBinding) -> str:
    return _VARIABLE.sub("x1", binding.template.aiohttp_path())


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, backend: EchoBackend) -> Client:
    return await aiohttp_client(create_app(edge_settings(backend.target, rate_limit_enabled=False)))


async def status_of(client: Client, binding: HttpBinding, token: str) -> int:
    kwargs: dict[str, Any] = {"headers": {"Authorization": f"Bearer {token}"}}
    if binding.body:
        kwargs["json"] = {}
    response = await client.request(binding.verb, concrete(binding), **kwargs)
    return response.status


async def test_every_scoped_route_refuses_a_caller_without_its_scope(
    client: Client, backend: EchoBackend, tokens: TokenFactory
) -> None:
    routes = scoped_routes()
    assert len(routes) >= 40
    for binding in routes:
        assert binding.policy is not None
        needed = binding.policy.scope
        # Everything but the scope (and `admin`, which implies every scope).
        others = tuple(scope for scope in ALL_SCOPES if scope not in (needed, "admin"))
        status = await status_of(client, binding, tokens.mint(scopes=others))
        assert status == 403, f"{binding.verb} {binding.template.aiohttp_path()} needs {needed}, answered {status}"
    assert backend.recorder.calls == [], "a refused call reached a servicer"


async def test_a_viewer_cannot_write_anything(client: Client, tokens: TokenFactory) -> None:
    viewer = tokens.mint(scopes=VIEWER)
    for binding in scoped_routes():
        assert binding.policy is not None
        status = await status_of(client, binding, viewer)
        if binding.policy.scope in VIEWER:
            assert status != 403, f"{binding.verb} {binding.template.aiohttp_path()} refused a viewer's read"
        else:
            assert status == 403, f"a viewer reached {binding.verb} {binding.template.aiohttp_path()} ({status})"


async def test_an_execute_only_key_runs_workflows_but_cannot_edit_them(stack: Stack) -> None:
    owner = await stack.member()
    workflow = {"name": "guarded", "steps": [{"id": "a", "type": "transform", "input": {"x": 1}}]}
    created = await (await stack.client.post("/api/v1/workflows", json=workflow, headers=owner.headers)).json()
    response = await stack.client.post(
        "/api/v1/api-keys", json={"name": "runner", "scopes": ["runs:execute"]}, headers=owner.headers
    )
    key = {"X-API-Key": (await response.json())["key"]}

    run = await stack.client.post(f"/api/v1/workflows/{created['id']}/execute", json={"input": {}}, headers=key)
    assert run.status == 202, await run.text()
    edits = [
        stack.client.put(f"/api/v1/workflows/{created['id']}", json=workflow, headers=key),
        stack.client.delete(f"/api/v1/workflows/{created['id']}", headers=key),
        stack.client.post("/api/v1/workflows", json=workflow, headers=key),
        stack.client.post("/api/v1/agents", json={"name": "a", "url": "https://agent.example.com/run"}, headers=key),
        stack.client.post("/api/v1/api-keys", json={"name": "more"}, headers=key),
        stack.client.get("/api/v1/users", headers=key),
    ]
    for pending in edits:
        response = await pending
        assert response.status == 403, await response.text()
    still = await stack.client.get(f"/api/v1/workflows/{created['id']}", headers=owner.headers)
    assert (await still.json())["version"] == 1
