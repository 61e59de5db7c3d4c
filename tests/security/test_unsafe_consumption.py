"""OWASP API10 (unsafe consumption of APIs): FlowForge consumes the answers of agents and of
`http` step targets, third-party APIs it does not control. Through the whole stack (edge,
workflow_svc, execution_svc, real HTTP agents on loopback), their answers are treated as
untrusted: redirects are never followed (neither by steps nor by health probes), oversized,
non-JSON, malformed or hostile bodies fail the step with a clear error instead of crashing or
wedging the run, an agent's error body cannot bloat the run, and nothing one agent answers
(cookies) is replayed to another agent."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.fixtures.stack import Member, Stack
from tests.fixtures.test_agent import TestAgent

pytestmark = pytest.mark.parametrize("stack", ["allow-private"], indirect=True)

# No retries: every failure below must be final at the first attempt, or it is retried on purpose.
NO_RETRY = {"max_retries": 0, "initial_delay_ms": 100}
MAX_OUTPUT_BYTES = 1024 * 1024  # ExecutionSettings.max_output_bytes, which the stack leaves at its default
# Where a cloud's instance metadata lives: a redirect there must never be followed.
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
FINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class HostileAgent:
    """A loopback agent that answers what a malicious or broken third party might."""

    base_url: str = ""
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def received(self, path: str) -> list[dict[str, str]]:
        """Headers of the requests received on `path`."""
        return [headers for seen, headers in self.requests if seen == path]


# Bodies served with status 200 and `Content-Type: application/json`, whatever they hold.
HOSTILE_BODIES = {
    "truncated-json": b'{"output": {"answer": [1, 2, ',
    "html-as-json": b"<html><body>502 Bad Gateway</body></html>",
    # Valid JSON nested far deeper than any parser's recursion limit.
    "deep-json": b'{"output": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    # Not JSON (RFC 8259 has no NaN), but Python's parser takes it.
    "nan": b'{"output": {"score": NaN, "limit": Infinity}}',
    # Valid JSON that PostgreSQL's jsonb (NUL) or protobuf strings (lone surrogates) cannot hold.
    "nul": b'{"output": {"text": "a\\u0000b"}}',
    "lone-surrogate": b'{"output": {"text": "a\\ud800b"}}',
}


def hostile_app(agent: HostileAgent) -> web.Application:
    async def chunked_flood(request: web.Request) -> web.StreamResponse:
        # No Content-Length: the size shows only while reading, so the reader has to stop.
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'{"output": "')
        chunk = b"x" * 65_536
        for _ in range(4 * MAX_OUTPUT_BYTES // len(chunk)):
            await response.write(chunk)
        await response.write(b'"}')
        await response.write_eof()
        return response

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        agent.requests.append((request.path, dict(request.headers)))
        mode = request.match_info["mode"]
        if mode in HOSTILE_BODIES:
            return web.Response(body=HOSTILE_BODIES[mode], headers={"Content-Type": "application/json"})
        if mode == "chunked-flood":
            return await chunked_flood(request)
        if mode == "huge-error":
            return web.Response(status=422, text="E" * 2_000_000)
        if mode == "set-cookie":
            return web.json_response(
                {"output": "ok"}, headers={"Set-Cookie": "agent_session=tenant-a-secret; Path=/; Max-Age=3600"}
            )
        # `/cookie`: answers the Cookie header it was sent.
        return web.json_response({"output": request.headers.get("Cookie", "")})

    app = web.Application()
    app.router.add_route("*", "/{mode}", handle)
    return app


@pytest.fixture
async def hostile_agent() -> AsyncIterator[HostileAgent]:
    agent = HostileAgent()
    runner = web.AppRunner(hostile_app(agent), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    agent.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield agent
    await runner.cleanup()


async def register(stack: Stack, member: Member, name: str, url: str, **extra: Any) -> str:
    body = {"name": name, "url": url, "timeout_ms": 5000, "retry_config": NO_RETRY, **extra}
    response = await stack.client.post("/api/v1/agents", json=body, headers=member.headers)
    assert response.status == 201, await response.text()
    agent_id: str = (await response.json())["id"]
    return agent_id


async def run_steps(stack: Stack, member: Member, steps: list[dict[str, Any]], within: float = 30.0) -> dict[str, Any]:
    """Saves a workflow of `steps`, runs it and waits for a final status; the run as the API shows it."""
    response = await stack.client.post(
        "/api/v1/workflows", json={"name": f"w-{uuid.uuid4().hex[:8]}", "steps": steps}, headers=member.headers
    )
    assert response.status == 201, await response.text()
    workflow_id = (await response.json())["id"]
    response = await stack.client.post(
        f"/api/v1/workflows/{workflow_id}/execute", json={"input": {}}, headers=member.headers
    )
    assert response.status == 202, await response.text()
    run_id = (await response.json())["id"]
    deadline = asyncio.get_running_loop().time() + within
    while True:
        response = await stack.client.get(f"/api/v1/runs/{run_id}", headers=member.headers)
        assert response.status == 200, await response.text()
        run: dict[str, Any] = await response.json()
        if run["status"] in FINAL:
            return run
        assert asyncio.get_running_loop().time() < deadline, f"run still {run['status']}: {run}"
        await asyncio.sleep(0.05)


async def steps_of(stack: Stack, member: Member, run_id: str) -> dict[str, dict[str, Any]]:
    response = await stack.client.get(f"/api/v1/runs/{run_id}/steps", headers=member.headers)
    assert response.status == 200, await response.text()
    return {step["step_id"]: step for step in await response.json()}


def agent_step(agent: str) -> dict[str, Any]:
    return {"id": "call", "agent": agent, "input": {"q": 1}, "retry": NO_RETRY}


async def test_an_agents_redirect_is_not_followed(stack: Stack, test_agent: TestAgent) -> None:
    member = await stack.member()
    # `/status/200` answers any method, so a followed 302 (which turns a POST into a GET) is seen too.
    for status, target in ((302, test_agent.url("/status/200")), (307, METADATA_URL), (308, "/status/200")):
        name = f"mover-{status}"
        await register(stack, member, name, test_agent.url("/redirect", status=status, to=target))
        run = await run_steps(stack, member, [agent_step(name)])
        assert run["status"] == "failed", run
        assert run["error"]["code"] == f"AGENT_HTTP_{status}", run["error"]
        assert "redirects are not followed" in run["error"]["message"]
        assert run["error"]["step_id"] == "call"
    # Each redirect was answered once (not retried: a 3xx is the agent's final word)...
    assert len(test_agent.received("/redirect")) == 3
    # ...and its target was never called, on the agent's own host or anywhere else.
    assert test_agent.received("/status/200") == []


async def test_an_http_steps_redirect_is_not_followed(stack: Stack, test_agent: TestAgent) -> None:
    member = await stack.member()
    step = {
        "id": "fetch",
        "type": "http",
        "config": {"method": "GET", "url": test_agent.url("/redirect", to=test_agent.url("/status/200"))},
        "retry": NO_RETRY,
    }
    run = await run_steps(stack, member, [step])
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "HTTP_302"
    assert "redirects are not followed" in run["error"]["message"]
    assert len(test_agent.received("/redirect")) == 1
    assert test_agent.received("/status/200") == []


async def test_a_health_probe_does_not_follow_a_redirect(stack: Stack, test_agent: TestAgent) -> None:
    member = await stack.member()
    agent_id = await register(
        stack,
        member,
        "probed",
        test_agent.url("/echo"),
        health_url=test_agent.url("/redirect", to=test_agent.url("/status/200")),
    )
    response = await stack.client.get(f"/api/v1/agents/{agent_id}/health", headers=member.headers)
    assert response.status == 200, await response.text()
    health = await response.json()
    assert health["status"] == "unhealthy", health
    assert "redirects are not followed" in health["detail"]
    assert len(test_agent.received("/redirect")) == 1
    assert test_agent.received("/status/200") == []


async def test_oversized_answers_fail_the_step_without_being_stored(
    stack: Stack, test_agent: TestAgent, hostile_agent: HostileAgent
) -> None:
    member = await stack.member()
    # With a Content-Length over the limit, and streamed (chunked) past it without one.
    await register(stack, member, "bloated", test_agent.url("/big", bytes=MAX_OUTPUT_BYTES + 100_000))
    await register(stack, member, "flood", f"{hostile_agent.base_url}/chunked-flood")
    for name in ("bloated", "flood"):
        run = await run_steps(stack, member, [agent_step(name)])
        assert run["status"] == "failed", run
        assert run["error"]["code"] == "OUTPUT_TOO_LARGE", run["error"]
        assert f"more than {MAX_OUTPUT_BYTES} bytes" in run["error"]["message"]
        step = (await steps_of(stack, member, run["id"]))["call"]
        assert step["status"] == "failed"
        assert step.get("output") is None
        assert step["attempt"] == 1, "an oversized answer is final, not retried"
        response = await stack.client.get(f"/api/v1/runs/{run['id']}", headers=member.headers)
        assert len(await response.read()) < 10_000


async def test_bodies_that_are_not_json_fail_the_step_clearly(
    stack: Stack, test_agent: TestAgent, hostile_agent: HostileAgent
) -> None:
    member = await stack.member()
    agents = {
        "plain-text": test_agent.url("/text"),
        "truncated": f"{hostile_agent.base_url}/truncated-json",
        "html": f"{hostile_agent.base_url}/html-as-json",
    }
    for name, url in agents.items():
        await register(stack, member, name, url)
        run = await run_steps(stack, member, [agent_step(name)])
        assert run["status"] == "failed", run
        assert run["error"]["code"] == "AGENT_BAD_RESPONSE", (name, run["error"])
        assert f"agent '{name}' answered HTTP 200 with non-JSON" == run["error"]["message"]


def refuse_constant(token: str) -> None:
    raise AssertionError(f"the API served {token}, which is not JSON")


@pytest.mark.parametrize("mode", ["deep-json", "nan", "nul", "lone-surrogate"])
async def test_hostile_json_never_crashes_or_wedges_a_run(stack: Stack, hostile_agent: HostileAgent, mode: str) -> None:
    """Valid-looking JSON that no store or client can take: a recursion bomb, NaN/Infinity (not
    JSON at all, but Python's parser takes them), a NUL character or a lone surrogate (which
    PostgreSQL's jsonb and protobuf strings refuse). The run must end, at the first attempt,
    with an error or with an output the API serves as strict JSON, and stay readable."""
    member = await stack.member()
    await register(stack, member, mode, f"{hostile_agent.base_url}/{mode}")
    run = await run_steps(stack, member, [agent_step(mode)], within=20.0)
    for path in (f"/api/v1/runs/{run['id']}", f"/api/v1/runs/{run['id']}/steps"):
        response = await stack.client.get(path, headers=member.headers)
        assert response.status == 200, (path, await response.text())
        # Strict JSON: no NaN or Infinity tokens reach API clients.
        json.loads(await response.text(), parse_constant=refuse_constant)
    if run["status"] == "failed":
        assert run["error"]["step_id"] == "call", run
        assert run["error"]["code"], run
    assert len(hostile_agent.received(f"/{mode}")) == 1, "the hostile answer was fetched again and again"


async def test_an_agents_error_body_cannot_bloat_the_run(stack: Stack, hostile_agent: HostileAgent) -> None:
    member = await stack.member()
    await register(stack, member, "loud", f"{hostile_agent.base_url}/huge-error")
    run = await run_steps(stack, member, [agent_step("loud")])
    assert run["status"] == "failed"
    assert run["error"]["code"] == "AGENT_HTTP_422"
    assert run["error"]["message"].startswith("agent 'loud' answered HTTP 422: EEEE")
    assert len(run["error"]["message"]) < 1024


async def test_cookies_an_agent_sets_are_never_sent_to_another_agent(stack: Stack, hostile_agent: HostileAgent) -> None:
    """One connection pool serves every tenant's agents: what one agent answers must not travel
    with later calls, least of all to another tenant's agent on the same host (as for a SaaS
    agent that many tenants use)."""
    # `localhost`, not an address: cookie jars ignore the cookies of bare IP addresses.
    host = hostile_agent.base_url.replace("127.0.0.1", "localhost")
    tenant_a, tenant_b = await stack.member(), await stack.member()
    await register(stack, tenant_a, "sets-cookie", f"{host}/set-cookie")
    await register(stack, tenant_b, "reads-cookie", f"{host}/cookie")

    run = await run_steps(stack, tenant_a, [agent_step("sets-cookie")])
    assert run["status"] == "succeeded", run
    run = await run_steps(stack, tenant_b, [agent_step("reads-cookie")])
    assert run["status"] == "succeeded", run
    leaked = (await steps_of(stack, tenant_b, run["id"]))["call"]["output"]
    assert leaked == "", f"tenant B's agent received tenant A's agent's cookie: {leaked!r}"
    assert [headers.get("Cookie") for headers in hostile_agent.received("/cookie")] == [None]

    run = await run_steps(stack, tenant_a, [agent_step("sets-cookie")])
    assert run["status"] == "succeeded", run
    assert [headers.get("Cookie") for headers in hostile_agent.received("/set-cookie")] == [None, None]
