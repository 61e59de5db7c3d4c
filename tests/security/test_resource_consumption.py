"""OWASP API4 (unrestricted resource consumption): page sizes are capped on every list route
(generated from the route table), bodies and headers have size limits, and sign-in is
rate-limited per client IP (brute force gets 429 + Retry-After; the per-email limit is in
test_login_throttling.py)."""

from __future__ import annotations

from edge.transcoder import bindings_for
from edge.upstream import SERVICES
from tests.fixtures.stack import Stack


def list_paths() -> list[str]:
    """Every GET route without path variables whose request has a `limit`."""
    return [
        b.template.aiohttp_path()
        for b in bindings_for(SERVICES)
        if b.verb == "GET" and not b.path_fields and "limit" in b.method.input_type.fields_by_name
    ]


async def test_every_list_caps_its_page_size(stack: Stack) -> None:
    member = await stack.member()
    paths = list_paths()
    assert {"/api/v1/agents", "/api/v1/workflows", "/api/v1/runs", "/api/v1/api-keys", "/api/v1/users"} <= set(paths)
    for path in paths:
        over = await stack.client.get(f"{path}?limit=101", headers=member.headers)
        assert over.status in (400, 501), f"{path}?limit=101 answered {over.status}"
        huge = await stack.client.get(f"{path}?limit=1000000", headers=member.headers)
        assert huge.status in (400, 501), f"{path}?limit=1000000 answered {huge.status}"
        negative = await stack.client.get(f"{path}?limit=-1", headers=member.headers)
        assert negative.status in (400, 501), path
        fine = await stack.client.get(f"{path}?limit=100", headers=member.headers)
        assert fine.status in (200, 501), f"{path}?limit=100 answered {fine.status}"


async def test_bodies_and_headers_have_limits(stack: Stack) -> None:
    member = await stack.member()
    big = await stack.client.post(
        "/api/v1/agents",
        data=b'{"name": "' + b"x" * (1024 * 1024 + 1) + b'"}',
        headers={**member.headers, "Content-Type": "application/json"},
    )
    assert big.status == 413
    assert big.content_type == "application/problem+json"
    padded = {**member.headers, **{f"X-Pad-{i}": "y" * 4000 for i in range(5)}}
    response = await stack.client.get("/api/v1/agents", headers=padded)
    assert response.status == 431
    assert response.content_type == "application/problem+json"


async def test_login_brute_force_is_rate_limited_per_ip(stack: Stack) -> None:
    member = await stack.member()  # one signup and one login spent already
    statuses = []
    for attempt in range(25):
        # Another address each time, so that only the per-IP limit can refuse.
        response = await stack.client.post(
            "/api/v1/auth/login", json={"email": f"guess-{attempt}@example.com", "password": "not-the-password"}
        )
        statuses.append(response.status)
        if response.status == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.headers["RateLimit-Remaining"] == "0"
            assert "per minute" in (await response.json())["detail"]
            break
    assert statuses[0] == 401
    assert statuses[-1] == 429
    assert len(statuses) <= 20
    # Authenticated calls spend other buckets: the member's own reads still work.
    assert (await stack.client.get("/api/v1/agents", headers=member.headers)).status == 200
