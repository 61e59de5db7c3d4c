"""OWASP API8 (security misconfiguration), on the real stack: every kind of response (2xx, 4xx,
unknown routes, wrong methods, size limits, system routes) carries the security headers and,
under /api/, `Cache-Control: no-store`; no response advertises the server software's versions;
errors are problem+json without stack traces, upstream addresses or library names; TRACE is
not served; CORS is off unless configured, and then answers only the exact origins allowed."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from edge.app import create_app
from edge.settings import EdgeSettings
from tests.fixtures.ports import free_port
from tests.fixtures.stack import Member, Stack

Client = TestClient[Any, Any]
ALLOWED_ORIGIN = "https://app.example.com"
# Origins a lax comparison (prefix, suffix, scheme- or port-blind, `null`) would let through.
LOOKALIKE_ORIGINS = (
    "https://app.example.com.evil.example",
    "https://evilapp.example.com",
    "http://app.example.com",
    "https://app.example.com:8443",
    "null",
)
# What must never appear in an error body: stack traces, code paths, library and runtime names,
# upstream addresses.
LEAKS = re.compile(
    r"Traceback|File \"|\.py\b|aiohttp|grpc|asyncpg|sqlalchemy|sqlite|Python/|127\.0\.0\.1|localhost|ipv4:",
    re.IGNORECASE,
)


async def edge_with(aiohttp_client: AiohttpClient, stack: Stack, **overrides: Any) -> Client:
    """Another edge in front of the stack's services, with some settings changed."""
    settings: dict[str, Any] = {
        "auth_target": f"127.0.0.1:{stack.services['auth'].port}",
        "workflow_target": f"127.0.0.1:{stack.services['workflow'].port}",
        "execution_target": f"127.0.0.1:{stack.services['execution'].port}",
        **overrides,
    }
    return await aiohttp_client(create_app(EdgeSettings(**settings)))


async def limited_key(stack: Stack, member: Member) -> dict[str, str]:
    response = await stack.client.post(
        "/api/v1/api-keys", json={"name": "reader", "scopes": ["agents:read"]}, headers=member.headers
    )
    assert response.status == 201, await response.text()
    return {"X-API-Key": (await response.json())["key"]}


async def every_kind_of_response(stack: Stack) -> list[tuple[str, ClientResponse]]:
    """One response of each kind the edge gives, labelled, with the status checked."""
    member = await stack.member()
    client, auth = stack.client, member.headers
    json_headers = {**auth, "Content-Type": "application/json"}
    agent = {"name": "headers", "url": "https://agent.example.com/run"}
    created = await client.post("/api/v1/agents", json=agent, headers=auth)
    agent_id = (await created.json())["id"]
    cases: list[tuple[str, int, ClientResponse]] = [
        ("list", 200, await client.get("/api/v1/agents", headers=auth)),
        ("create", 201, created),
        ("delete", 204, await client.delete(f"/api/v1/agents/{agent_id}", headers=auth)),
        ("malformed json", 400, await client.post("/api/v1/agents", data=b"{", headers=json_headers)),
        ("no credentials", 401, await client.get("/api/v1/agents")),
        ("bad token", 401, await client.get("/api/v1/agents", headers={"Authorization": "Bearer x.y.z"})),
        (
            "missing scope",
            403,
            await client.post("/api/v1/agents", json=agent, headers=await limited_key(stack, member)),
        ),
        ("missing resource", 404, await client.get("/api/v1/agents/agt_missing", headers=auth)),
        ("unknown route", 404, await client.get("/api/v1/nothing-here", headers=auth)),
        ("unknown path", 404, await client.get("/admin")),
        ("wrong method", 405, await client.put("/api/v1/agents", json=agent, headers=auth)),
        (
            "too large",
            413,
            await client.post("/api/v1/agents", data=b"[" + b" " * (1024 * 1024) + b"]", headers=json_headers),
        ),
        (
            "media type",
            415,
            await client.post("/api/v1/agents", data=b"name=x", headers={**auth, "Content-Type": "text/plain"}),
        ),
        (
            "header flood",
            431,
            await client.get("/api/v1/agents", headers={**auth, **{f"X-Pad-{i}": "y" * 4000 for i in range(5)}}),
        ),
        ("health", 200, await client.get("/health")),
        ("jwks", 200, await client.get("/.well-known/jwks.json")),
        ("openapi", 200, await client.get("/openapi.json")),
        ("metrics", 200, await client.get("/metrics")),
        ("docs", 200, await client.get("/docs")),
    ]
    for label, status, response in cases:
        assert response.status == status, (label, response.status, await response.text())
    return [(label, response) for label, _, response in cases]


async def test_security_headers_on_every_kind_of_response(stack: Stack) -> None:
    for label, response in await every_kind_of_response(stack):
        headers = response.headers
        assert headers.get("X-Content-Type-Options") == "nosniff", label
        assert headers.get("X-Frame-Options") == "DENY", label
        assert headers.get("Referrer-Policy") == "no-referrer", label
        assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), label
        if label != "docs":
            assert headers["Content-Security-Policy"].startswith("default-src 'none'"), label
        assert headers.get("X-Request-ID"), label
        if response.url.path.startswith("/api/"):
            # Tokens, keys shown once, tenants' data: never kept by a browser or a shared cache.
            assert headers.get("Cache-Control") == "no-store", label
        if response.status >= 400:
            assert response.content_type == "application/problem+json", label
            problem = await response.json()
            assert problem["status"] == response.status, label
            assert not LEAKS.search(await response.text()), (label, await response.text())


async def test_no_response_advertises_server_software_versions(stack: Stack) -> None:
    """The edge means to replace aiohttp's `Server: Python/3.x aiohttp/3.x` (which tells an
    attacker which CVEs to try) with a plain product name, on every response."""
    leaking = {
        label: response.headers.get("Server")
        for label, response in await every_kind_of_response(stack)
        if response.headers.get("Server") != "FlowForge"
    }
    assert leaking == {}, f"Server header advertises versions: {leaking}"


async def test_requests_the_http_parser_refuses_do_not_advertise_versions(stack: Stack) -> None:
    """Malformed requests never reach the application: aiohttp's parser answers them itself."""
    server = stack.client.server
    for raw in (
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"NOT-A-REQUEST\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(raw)
            await writer.drain()
            head = (await asyncio.wait_for(reader.read(65_536), 10)).split(b"\r\n\r\n", 1)[0].decode("latin-1")
        finally:
            writer.close()
        assert head.startswith("HTTP/1.") and " 400 " in head.split("\r\n", 1)[0], head
        assert not re.search(r"Python/|aiohttp/", head), f"{raw!r} was answered with\n{head}"


async def test_errors_of_unreachable_services_name_no_internals(stack: Stack, aiohttp_client: AiohttpClient) -> None:
    member = await stack.member()
    dead = f"127.0.0.1:{free_port()}"
    client = await edge_with(
        aiohttp_client,
        stack,
        workflow_target=dead,
        execution_target=dead,
        request_timeout_seconds=2.0,
        ready_timeout_seconds=2.0,
    )
    for path in ("/api/v1/agents", "/api/v1/runs", "/api/v1/workflows"):
        response = await client.get(path, headers=member.headers)
        assert response.status in (503, 504), (path, response.status)
        assert response.content_type == "application/problem+json"
        body = await response.text()
        assert not LEAKS.search(body), body
        assert dead.split(":")[1] not in body
    ready = await client.get("/health/ready")
    assert ready.status == 503
    body = await ready.text()
    assert not LEAKS.search(body), body
    assert dead.split(":")[1] not in body


async def test_trace_is_not_served(stack: Stack) -> None:
    member = await stack.member()
    secret = "trace-must-not-echo-this"
    for path, status in (("/api/v1/agents", 405), ("/health", 405), ("/api/v1/auth/login", 405), ("/x", 404)):
        response = await stack.client.request(
            "TRACE", path, headers={**member.headers, "X-Echo-Me": secret, "Cookie": f"session={secret}"}
        )
        assert response.status == status, (path, response.status)
        assert response.content_type == "application/problem+json"
        assert "TRACE" not in response.headers.get("Allow", "")
        body = await response.text()
        assert secret not in body and member.token not in body
        assert response.content_type != "message/http"


async def test_cors_is_off_unless_origins_are_configured(stack: Stack) -> None:
    member = await stack.member()
    preflight = await stack.client.options(
        "/api/v1/agents", headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 405
    assert not [name for name in preflight.headers if name.lower().startswith("access-control-")]
    simple = await stack.client.get("/api/v1/agents", headers={**member.headers, "Origin": ALLOWED_ORIGIN})
    assert simple.status == 200
    assert not [name for name in simple.headers if name.lower().startswith("access-control-")]


async def test_cors_answers_exactly_the_configured_origins(stack: Stack, aiohttp_client: AiohttpClient) -> None:
    member = await stack.member()
    client = await edge_with(aiohttp_client, stack, cors_origins=[ALLOWED_ORIGIN])
    preflight_headers = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}

    allowed = await client.options("/api/v1/agents", headers={"Origin": ALLOWED_ORIGIN, **preflight_headers})
    assert allowed.status == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert "Origin" in allowed.headers.getall("Vary", [])
    read = await client.get("/api/v1/agents", headers={**member.headers, "Origin": ALLOWED_ORIGIN})
    assert read.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    # Credentials travel in headers, never in cookies: the edge never asks browsers to send cookies.
    for response in (allowed, read):
        assert "Access-Control-Allow-Credentials" not in response.headers

    for origin in LOOKALIKE_ORIGINS:
        preflight = await client.options("/api/v1/agents", headers={"Origin": origin, **preflight_headers})
        assert preflight.status == 405, origin
        assert "Access-Control-Allow-Origin" not in preflight.headers, origin
        assert "Access-Control-Allow-Methods" not in preflight.headers, origin
        response = await client.get("/api/v1/agents", headers={**member.headers, "Origin": origin})
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers, origin
        assert "Access-Control-Expose-Headers" not in response.headers, origin
