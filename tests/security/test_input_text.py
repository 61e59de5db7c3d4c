"""Text no backend can store or encode is refused with a 4xx, never a 500: NUL characters
(PostgreSQL keeps none in text or jsonb) and lone surrogates in JSON bodies. Found by the
schemathesis run; checked on both backends."""

from __future__ import annotations

from typing import Any

from tests.fixtures.stack import Stack


async def test_nul_characters_are_refused_not_crashed_on(stack: Stack) -> None:
    member = await stack.member()
    workflow = {"name": "w", "steps": [{"id": "a", "type": "transform", "input": {"k\u0000": 1}}]}
    attempts: list[tuple[str, dict[str, Any], dict[str, str], int]] = [
        # A login never says why it failed.
        ("/api/v1/auth/login", {"email": "a\u0000@example.com", "password": "x" * 12}, {}, 401),
        ("/api/v1/auth/refresh", {"refresh_token": "ffr_" + "\u0000" * 43}, {}, 401),
        ("/api/v1/auth/signup", {"email": "b@example.com", "password": "x" * 12, "tenant_name": "t\u0000"}, {}, 422),
        ("/api/v1/api-keys", {"name": "k\u0000"}, member.headers, 422),
        ("/api/v1/service-accounts", {"name": "s\u0000"}, member.headers, 422),
        ("/api/v1/workflows", workflow, member.headers, 422),
    ]
    for path, body, headers, status in attempts:
        response = await stack.client.post(path, json=body, headers=headers)
        assert response.status == status, (path, response.status, await response.text())
        assert response.content_type == "application/problem+json"
    for path, status in (
        ("/api/v1/audit-logs?actor=a%00b", 400),
        ("/api/v1/users/usr%00x", 404),
        ("/api/v1/api-keys/key%00x", 404),
    ):
        response = await stack.client.get(path, headers=member.headers)
        assert response.status == status, (path, response.status, await response.text())


async def test_lone_surrogates_are_refused(stack: Stack) -> None:
    member = await stack.member()
    for path, body in (
        ("/api/v1/api-keys", b'{"name": "k\\ud800"}'),
        ("/api/v1/auth/login", b'{"email": "\\ud800@example.com", "password": "xxxxxxxxxxxx"}'),
        ("/api/v1/agents", b'{"name": "\\udfff", "url": "https://agent.example.com/run"}'),
    ):
        response = await stack.client.post(
            path, data=body, headers={**member.headers, "Content-Type": "application/json"}
        )
        assert response.status == 400, (path, response.status)
        assert response.content_type == "application/problem+json"
