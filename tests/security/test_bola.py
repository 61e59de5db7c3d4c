"""OWASP API1 (broken object level authorization), generated from the edge's route table: for
every authenticated route with a path variable, another tenant's owner (who holds every scope)
calling it with tenant A's real ids gets exactly what it gets for ids that do not exist, never a
2xx, and A's resources are untouched afterwards. A new route is covered the day it is added."""

from __future__ import annotations

import re
import uuid
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from edge.transcoder import HttpBinding, bindings_for
from edge.upstream import SERVICES
from tests.fixtures.stack import PASSWORD, Member, Stack

WORKFLOW = {"name": "bola-victim", "steps": [{"id": "a", "type": "transform", "input": {"x": 1}}]}
AGENT = {"name": "bola-agent", "url": "https://agent.example.com/run"}
_VARIABLE = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def resource_routes() -> list[HttpBinding]:
    """Every non-public binding whose path names a resource."""
    return [b for b in bindings_for(SERVICES) if not b.public and b.path_fields]


def collection_of(path: str, variable: str) -> str:
    """The path segment before `{variable}`: the collection the variable indexes."""
    before = path.split("{" + variable, 1)[0].rstrip("/")
    return before.rsplit("/", 1)[-1]


def fill(binding: HttpBinding, ids: dict[str, str], *, real: bool) -> str:
    path = binding.template.aiohttp_path()

    def value(match: re.Match[str]) -> str:
        collection = collection_of(path, match.group(1))
        if real and collection in ids:
            return ids[collection]
        return f"missing_{uuid.uuid4().hex[:12]}"

    return _VARIABLE.sub(value, path)


async def create(stack: Stack, member: Member, path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    response = await stack.client.post(path, json=body, headers=member.headers)
    assert response.status == status, await response.text()
    created: dict[str, Any] = await response.json()
    return created


async def victim_resources(stack: Stack, victim: Member) -> dict[str, str]:
    """Collection -> id of a real resource of the victim's tenant, one of each kind we can make."""
    workflow = await create(stack, victim, "/api/v1/workflows", WORKFLOW)
    ids = {
        "agents": (await create(stack, victim, "/api/v1/agents", AGENT))["id"],
        "workflows": workflow["id"],
        "runs": (await create(stack, victim, f"/api/v1/workflows/{workflow['id']}/execute", {"input": {}}, 202))["id"],
        "api-keys": (await create(stack, victim, "/api/v1/api-keys", {"name": "victim-key"}))["id"],
        "users": victim.user_id,
        "steps": "a",
        "signals": "go",
    }
    # Kinds whose milestone may not be built yet: used when they can be made, else made-up ids.
    optional = {
        "schedules": (f"/api/v1/workflows/{workflow['id']}/schedules", {"cron": "0 * * * *"}),
        "webhooks": ("/api/v1/webhooks", {"url": "https://agent.example.com/hook", "events": ["workflow.completed"]}),
    }
    for collection, (path, body) in optional.items():
        response = await stack.client.post(path, json=body, headers=victim.headers)
        if response.status == 201:
            ids[collection] = (await response.json())["id"]
    return ids


def request_body(binding: HttpBinding) -> dict[str, Any]:
    """`{}`, or for a PATCH one plain string field of the resource, so that the call gets past
    "nothing to change" to the lookup that must fail."""
    if binding.verb != "PATCH":
        return {}
    message = binding.body_field.message_type if binding.body_field is not None else binding.method.input_type
    assert message is not None
    bound = {chain[0].name for chain in binding.path_fields.values()}
    for field in message.fields:
        if (
            field.type == FieldDescriptor.TYPE_STRING
            and not field.is_repeated
            and field.name not in bound | {"id", "etag", "cron", "timezone"}
        ):
            return {field.name: "bola"}
    return {}


async def call(stack: Stack, binding: HttpBinding, path: str, member: Member) -> tuple[int, str]:
    kwargs: dict[str, Any] = {"headers": member.headers}
    if binding.body:
        kwargs["json"] = request_body(binding)
    response = await stack.client.request(binding.verb, path, **kwargs)
    kind = (await response.json()).get("type", "") if response.content_type == "application/problem+json" else ""
    return response.status, kind


async def test_another_tenant_cannot_tell_real_ids_from_missing_ones(stack: Stack) -> None:
    victim, attacker = await stack.member(), await stack.member()
    ids = await victim_resources(stack, victim)
    routes = resource_routes()
    assert len(routes) >= 30
    outcomes: dict[str, tuple[int, str]] = {}
    for binding in routes:
        real = await call(stack, binding, fill(binding, ids, real=True), attacker)
        missing = await call(stack, binding, fill(binding, ids, real=False), attacker)
        name = f"{binding.verb} {binding.template.aiohttp_path()}"
        assert not 200 <= real[0] < 300, f"{name}: another tenant's resource answered {real[0]}"
        assert real == missing, f"{name}: a real id of another tenant answers {real}, a missing one {missing}"
        outcomes[name] = real
    # Every resource route exercised with a real id of the victim answers as "not found".
    for binding in routes:
        path = binding.template.aiohttp_path()
        if all(collection_of(path, var.split(".")[0]) in ids for var in binding.path_fields) and binding.body == "":
            status = outcomes[f"{binding.verb} {path}"][0]
            assert status in (404, 501), f"{binding.verb} {path}: {status}"

    # Nothing of the victim changed.
    agent = await (await stack.client.get(f"/api/v1/agents/{ids['agents']}", headers=victim.headers)).json()
    assert agent["name"] == AGENT["name"]
    own = (f"/api/v1/agents/{ids['agents']}", f"/api/v1/workflows/{ids['workflows']}", f"/api/v1/runs/{ids['runs']}")
    for path in own:
        assert (await stack.client.get(path, headers=victim.headers)).status == 200, path
    assert (await stack.client.get(f"/api/v1/api-keys/{ids['api-keys']}", headers=victim.headers)).status == 200
    login = await stack.client.post("/api/v1/auth/login", json={"email": victim.email, "password": PASSWORD})
    assert login.status == 200


async def test_lists_never_show_another_tenants_resources(stack: Stack) -> None:
    victim, attacker = await stack.member(), await stack.member()
    ids = await victim_resources(stack, victim)
    lists = [b for b in bindings_for(SERVICES) if not b.public and not b.path_fields and b.verb == "GET"]
    for binding in lists:
        response = await stack.client.get(binding.template.aiohttp_path(), headers=attacker.headers)
        text = await response.text()
        for collection, resource_id in ids.items():
            if collection not in ("steps", "signals"):
                assert resource_id not in text, f"{binding.template.aiohttp_path()} lists the victim's {collection}"
