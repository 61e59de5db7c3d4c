"""OWASP API9 (improper inventory management), from the edge's own router and its published
document: every operation the edge serves under /api/ (and the JWKS) is in GET /openapi.json
with the same method (no shadow endpoints), every documented operation is routed by the edge
(no zombie entries), every public path is under /api/v1 or is one of the few unversioned system
paths, and no other API version answers."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import hdrs, web

from tests.fixtures.stack import Stack

# Unversioned on purpose (API.md "System"): probes, metrics, the documents and the key set.
UNVERSIONED = frozenset(
    {
        "/health",
        "/health/ready",
        "/metrics",
        "/openapi.json",
        "/.well-known/jwks.json",
        "/docs",
        "/docs/",
        "/docs/openapi.json",
        "/docs/swagger-initializer.js",
        "/docs/{asset}",
    }
)
# The documents and their assets: not operations of the API.
DOCUMENTATION = frozenset(
    {"/openapi.json", "/docs", "/docs/", "/docs/openapi.json", "/docs/swagger-initializer.js", "/docs/{asset}"}
)
OPERATION_METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
_VARIABLE = re.compile(r"\{[^}]+\}")


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path template) of every route the edge's router holds; the HEAD twins aiohttp
    adds to GET routes are left out (they are the GET operation)."""
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != hdrs.METH_HEAD
    }


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in OPERATION_METHODS
    }


async def published(stack: Stack) -> dict[str, Any]:
    response = await stack.client.get("/openapi.json")
    assert response.status == 200
    document: dict[str, Any] = await response.json()
    return document


def edge_app(stack: Stack) -> web.Application:
    app = stack.client.app
    assert isinstance(app, web.Application)
    return app


async def test_every_api_route_is_documented(stack: Stack) -> None:
    served = served_routes(edge_app(stack))
    api = {(method, path) for method, path in served if path.startswith("/api/") or path == "/.well-known/jwks.json"}
    assert len(api) >= 60, "the router lost its API routes"
    undocumented = api - documented_operations(await published(stack))
    assert undocumented == set(), f"served under /api/ but missing from /openapi.json: {sorted(undocumented)}"


async def test_every_documented_operation_is_served(stack: Stack) -> None:
    member = await stack.member()
    document = await published(stack)
    operations = documented_operations(document)
    assert not operations - served_routes(edge_app(stack)) - {("GET", path) for path in UNVERSIONED}
    # And over HTTP: each one reaches a handler (any answer but the router's own 404 or 405).
    for method, path in sorted(operations):
        kwargs: dict[str, Any] = {"headers": member.headers}
        if method in ("POST", "PUT", "PATCH"):
            kwargs["json"] = {}
        response = await stack.client.request(method, _VARIABLE.sub("x1", path), **kwargs)
        if response.status in (404, 405):
            problem = await response.json()
            assert response.status != 405, f"{method} {path} is documented but answers 405: {problem}"
            assert not problem["detail"].startswith("no route matches"), f"{method} {path} is documented, not routed"


async def test_every_public_path_is_versioned(stack: Stack) -> None:
    document = await published(stack)
    assert document["info"]["version"] == "v1"
    paths = {path for _, path in served_routes(edge_app(stack))} | set(document["paths"])
    stray = sorted(path for path in paths if not path.startswith("/api/v1/") and path not in UNVERSIONED)
    assert stray == [], f"unversioned paths outside the documented system set: {stray}"
    # The documented system paths are really there, and nothing but them is unversioned.
    assert set(document["paths"]) >= UNVERSIONED - DOCUMENTATION


async def test_no_other_api_version_answers(stack: Stack) -> None:
    member = await stack.member()
    for path in ("/api/v0/agents", "/api/v2/agents", "/api/agents", "/v1/agents", "/api/v1.0/agents", "/api/V1/agents"):
        for method in ("GET", "POST"):
            response = await stack.client.request(method, path, headers=member.headers, json={})
            assert response.status == 404, (method, path, response.status)
            assert (await response.json())["detail"] == f"no route matches {method} {path}"
    # The current version does answer, so the 404s above are not a broken client.
    assert (await stack.client.get("/api/v1/agents", headers=member.headers)).status == 200
