"""A client that hangs up ends its work upstream at once: the SSE relay cancels its gRPC watch,
a unary call is cancelled, instead of the services working for nobody until the next write
(a heartbeat, up to 15 s later) or the deadline. The edge is served here exactly as
`python -m edge` serves it (`runner_options`), not by aiohttp's TestServer, which always
cancels handlers on disconnect and would hide a regression."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge.app import create_app, runner_options
from edge.metrics import METRICS_KEY
from edge.middlewares import ACCESS_LOGGER_NAME
from edge.streams import OPEN_STREAMS_KEY
from tests.edge.support import EchoBackend, edge_settings
from tests.fixtures.tokens import TokenFactory

# Far longer than the one second the tests allow: only the disconnect itself can end the calls.
HEARTBEAT_SECONDS = 30.0
DEADLINE_SECONDS = 30.0


@pytest.fixture
async def edge(backend: EchoBackend) -> AsyncIterator[tuple[web.Application, str]]:
    settings = edge_settings(
        backend.target, sse_heartbeat_seconds=HEARTBEAT_SECONDS, request_timeout_seconds=DEADLINE_SECONDS
    )
    app = create_app(settings)
    runner = web.AppRunner(app, **runner_options(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield app, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def auth(tokens: TokenFactory) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.mint()}"}


async def read_event(response: aiohttp.ClientResponse) -> list[str]:
    """The lines of the next SSE event frame (comments skipped)."""
    lines: list[str] = []
    while True:
        line = (await response.content.readline()).decode().rstrip("\n")
        if line:
            if not line.startswith(":"):
                lines.append(line)
        elif lines:
            return lines


def requests_by_status(app: web.Application, path: str) -> dict[str, float]:
    """The edge's request counts for routes starting with `path`, by status."""
    counts: dict[str, float] = {}
    for metric in app[METRICS_KEY].registry.collect():
        for sample in metric.samples:
            if sample.name == "flowforge_edge_requests_total" and sample.labels["route"].startswith(path):
                counts[sample.labels["status"]] = counts.get(sample.labels["status"], 0) + sample.value
    return counts


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == ACCESS_LOGGER_NAME]


async def test_an_sse_client_hanging_up_cancels_the_upstream_watch(
    edge: tuple[web.Application, str], backend: EchoBackend, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    app, base = edge
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER_NAME)
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{base}/api/v1/runs/hold/events", headers=auth)
        assert response.status == 200
        assert "event: workflow.started" in await asyncio.wait_for(read_event(response), 5)
        assert len(app[OPEN_STREAMS_KEY]) == 1
        hung_up = time.monotonic()
        response.close()  # drops the connection, as a browser tab closing does
    cancelled = await backend.recorder.wait_cancelled("WatchRun", within=5)
    assert cancelled - hung_up < 1.0
    async with asyncio.timeout(1):
        while len(app[OPEN_STREAMS_KEY]):  # noqa: ASYNC110 - the relay's cleanup is not observable otherwise
            await asyncio.sleep(0.01)
    # The client ended a stream it was served: the 200 stands, in the metrics and the log.
    assert requests_by_status(app, "/api/v1/runs/") == {"200": 1}
    [line] = access_lines(caplog)
    assert '"GET /api/v1/runs/hold/events" 200 ' in line


async def test_a_client_hanging_up_cancels_its_unary_call(
    edge: tuple[web.Application, str], backend: EchoBackend, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    app, base = edge
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER_NAME)
    async with aiohttp.ClientSession() as http:
        # `slow` keeps the backend busy for 5 s.
        request = asyncio.create_task(http.get(f"{base}/api/v1/agents/slow", headers=auth))
        await asyncio.sleep(0.3)
        assert any(call.method == "GetAgent" for call in backend.recorder.calls)
        hung_up = time.monotonic()
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    cancelled = await backend.recorder.wait_cancelled("GetAgent", within=5)
    assert cancelled - hung_up < 1.0
    # Closed before any answer: 499 as nginx counts it (aiohttp itself logs nothing then).
    assert requests_by_status(app, "/api/v1/agents/") == {"499": 1}
    [line] = access_lines(caplog)
    assert '"GET /api/v1/agents/slow" 499 0 ' in line


async def test_the_edge_is_served_with_handler_cancellation_and_its_own_access_log() -> None:
    options: dict[str, Any] = runner_options(edge_settings("127.0.0.1:1", access_log=False))
    assert options["handler_cancellation"] is True
    assert options["access_log"] is None
    assert runner_options(edge_settings("127.0.0.1:1"))["access_log"].name == "edge.access"
