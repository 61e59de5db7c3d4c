"""Every failure is RFC 9457 problem+json: upstream gRPC statuses through GRPC_TO_HTTP (with rich
details), the edge's own 404/405/400/413/415/500, request ids, and the headers of every response."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from edge.app import create_app
from tests.edge.support import SECRET_DETAIL, EchoBackend, edge_settings
from tests.fixtures.tokens import TokenFactory

Client = TestClient[Any, Any]
PROBLEM_KEYS = {"type", "title", "status", "detail", "request_id"}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, backend: EchoBackend) -> Client:
    return await aiohttp_client(
        create_app(edge_settings(backend.target, max_body_bytes=4096, cors_origins=["https://app.example"]))
    )


@pytest.fixture
def auth(tokens: TokenFactory) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.mint()}"}


async def problem_of(response: Any, status: int) -> dict[str, Any]:
    """The problem body, after checking what every problem response has."""
    assert response.status == status
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json()
    assert set(body) >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert body["type"].startswith("https://flowforge.dev/problems/")
    return body


@pytest.mark.parametrize(
    ("agent_id", "status"),
    [
        ("fail.INVALID_ARGUMENT", 400),
        ("fail.INVALID_ARGUMENT.BAD_REQUEST", 400),
        ("fail.INVALID_ARGUMENT.VALIDATION_FAILED", 422),
        ("fail.NOT_FOUND.NOT_FOUND", 404),
        ("fail.ALREADY_EXISTS.ALREADY_EXISTS", 409),
        ("fail.ABORTED.ABORTED", 409),
        ("fail.FAILED_PRECONDITION.CONFLICT", 409),
        ("fail.FAILED_PRECONDITION.ETAG_MISMATCH", 412),
        ("fail.PERMISSION_DENIED.PERMISSION_DENIED", 403),
        ("fail.UNAUTHENTICATED.UNAUTHENTICATED", 401),
        ("fail.RESOURCE_EXHAUSTED.RESOURCE_EXHAUSTED", 429),
        ("fail.UNIMPLEMENTED", 501),
        ("fail.UNAVAILABLE", 503),
        ("fail.UNAVAILABLE.UNAVAILABLE", 503),
        ("slow", 504),
        ("fail.CANCELLED", 503),
        ("fail.INTERNAL", 500),
        ("fail.DATA_LOSS", 500),
        ("fail.UNKNOWN", 500),
        ("crash", 500),
    ],
)
async def test_upstream_status_mapping(client: Client, auth: dict[str, str], agent_id: str, status: int) -> None:
    response = await client.get(f"/api/v1/agents/{agent_id}", headers=auth)
    problem = await problem_of(response, status)
    if status >= 500 and status != 501:
        assert SECRET_DETAIL not in problem["detail"]
        assert "Traceback" not in await response.text()
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    if status == 429:
        assert response.headers["Retry-After"] == "7"
    if "." in agent_id and agent_id.count(".") == 2:
        assert problem["type"].endswith(agent_id.rsplit(".", 1)[1].lower().replace("_", "-"))


async def test_validation_failures_list_the_fields(client: Client, auth: dict[str, str]) -> None:
    response = await client.get("/api/v1/agents/fail.INVALID_ARGUMENT.VALIDATION_FAILED", headers=auth)
    problem = await problem_of(response, 422)
    assert problem["errors"] == [
        {"field": "url", "message": "must be http or https"},
        {"field": "retry_config.max_retries", "message": "must be between 0 and 10"},
    ]
    assert problem["detail"] == "VALIDATION_FAILED from upstream"


async def test_missing_credentials_are_401_from_the_service(client: Client) -> None:
    response = await client.get("/api/v1/agents/agt_1")
    await problem_of(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_a_service_that_is_down_is_503(
    aiohttp_client: AiohttpClient, backend: EchoBackend, auth: dict[str, str]
) -> None:
    client = await aiohttp_client(create_app(edge_settings(backend.target, execution_target="127.0.0.1:1")))
    problem = await problem_of(await client.get("/api/v1/runs", headers=auth), 503)
    assert "127.0.0.1" not in problem["detail"]


async def test_unknown_route_is_404(client: Client) -> None:
    problem = await problem_of(await client.get("/api/v1/nothing-here"), 404)
    assert problem["title"] == "Not Found"


async def test_wrong_method_is_405_with_allow(client: Client) -> None:
    response = await client.put("/api/v1/agents/agt_1")
    await problem_of(response, 405)
    assert set(response.headers["Allow"].split(",")) == {"GET", "PATCH", "DELETE"}


async def test_malformed_json_is_400(client: Client, auth: dict[str, str]) -> None:
    response = await client.post(
        "/api/v1/agents", data=b'{"name": ', headers={**auth, "Content-Type": "application/json"}
    )
    problem = await problem_of(response, 400)
    assert "not valid JSON" in problem["detail"]


async def test_body_over_the_limit_is_413(client: Client, auth: dict[str, str]) -> None:
    response = await client.post("/api/v1/agents", json={"name": "x" * 5000}, headers=auth)
    problem = await problem_of(response, 413)
    assert "4096" in problem["detail"]


async def test_unsupported_media_type_is_415(client: Client, auth: dict[str, str]) -> None:
    response = await client.post("/api/v1/agents", data=b"name=a", headers={**auth, "Content-Type": "text/plain"})
    await problem_of(response, 415)
    assert response.headers["Accept-Post"] == "application/json"
    patch = await client.patch("/api/v1/agents/a", data=b"<a/>", headers={**auth, "Content-Type": "application/xml"})
    await problem_of(patch, 415)
    assert patch.headers["Accept-Patch"] == "application/json"


async def test_stream_routes_turn_refusals_into_problems(client: Client, auth: dict[str, str]) -> None:
    # Refusals arrive before any byte of the stream: the run's watch fails as asked, and the
    # echo backend does not implement WatchEvents (UNIMPLEMENTED).
    await problem_of(await client.get("/api/v1/runs/fail.NOT_FOUND.NOT_FOUND/events", headers=auth), 404)
    await problem_of(await client.get("/api/v1/events", headers=auth), 501)
    await problem_of(await client.get("/api/v1/ws", headers=auth), 400)  # not an upgrade


async def test_request_ids_are_echoed_when_sane_and_generated_otherwise(client: Client) -> None:
    echoed = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    generated = await client.get("/health")
    assert generated.headers["X-Request-ID"].startswith("req_")
    hostile = await client.get("/health", headers={"X-Request-ID": "x" * 500})
    assert hostile.headers["X-Request-ID"].startswith("req_")
    problem = await problem_of(await client.get("/nope", headers={"X-Request-ID": "trace-me"}), 404)
    assert problem["request_id"] == "trace-me"


async def test_unexpected_errors_are_500_and_logged_once(
    aiohttp_client: AiohttpClient, backend: EchoBackend, caplog: pytest.LogCaptureFixture, auth: dict[str, str]
) -> None:
    async def broken(_request: web.Request) -> NoReturn:
        raise RuntimeError(SECRET_DETAIL)

    app = create_app(edge_settings(backend.target))
    app.router.add_get("/broken", broken)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR):
        response = await client.get("/broken", headers=auth)
    problem = await problem_of(response, 500)
    assert SECRET_DETAIL not in await response.text()
    assert problem["detail"] == "The server failed to handle the request."
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == ["unhandled error"]


async def test_security_headers_on_every_response(client: Client, auth: dict[str, str]) -> None:
    for response in (
        await client.get("/health"),
        await client.get("/nope"),
        await client.get("/api/v1/agents", headers=auth),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    api = await client.get("/api/v1/agents", headers=auth)
    assert api.headers["Cache-Control"] == "no-store"


async def test_cors_for_allowed_origins_only(client: Client, auth: dict[str, str]) -> None:
    preflight = await client.options(
        "/api/v1/agents",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert set(preflight.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "POST"}
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]

    simple = await client.get("/api/v1/agents", headers={**auth, "Origin": "https://app.example"})
    assert simple.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Request-ID" in simple.headers["Access-Control-Expose-Headers"]

    stranger = await client.options(
        "/api/v1/agents", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "Access-Control-Allow-Origin" not in stranger.headers
    await problem_of(stranger, 405)
