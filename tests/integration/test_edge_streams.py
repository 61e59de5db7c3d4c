"""SSE and WebSocket relays through the edge, over the whole in-process stack (real auth,
workflow and execution services, SQLite and PostgreSQL): resuming after a disconnect with
exactly the missing events, the end after the terminal event, tenancy, credentials,
heartbeats, and WebSocket error handling."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import ClientResponse

from edge.settings import SETTINGS_KEY
from tests.fixtures.stack import Member, Stack

# start -> first (transform) -> gate (waits for signal `go`) -> last (transform)
WORKFLOW = {
    "name": "gated",
    "steps": [
        {"id": "first", "type": "transform", "input": {"doc": "{{ input.doc }}"}},
        {"id": "gate", "type": "wait_for_signal", "depends_on": ["first"], "config": {"signal": "go"}},
        {"id": "last", "type": "transform", "depends_on": ["gate"], "input": "{{ steps.gate.output }}"},
    ],
    "output": {"approved": "{{ steps.last.output }}"},
}


async def start_run(stack: Stack, member: Member) -> str:
    response = await stack.client.post("/api/v1/workflows", json=WORKFLOW, headers=member.headers)
    assert response.status == 201, await response.text()
    workflow_id = (await response.json())["id"]
    response = await stack.client.post(
        f"/api/v1/workflows/{workflow_id}/execute", json={"input": {"doc": "memo"}}, headers=member.headers
    )
    assert response.status == 202, await response.text()
    return str((await response.json())["id"])


async def send_go(stack: Stack, member: Member, run_id: str) -> None:
    response = await stack.client.post(
        f"/api/v1/runs/{run_id}/signals/go", json={"payload": {"by": "ops"}}, headers=member.headers
    )
    assert response.status == 202, await response.text()


async def all_seqs(stack: Stack, member: Member, run_id: str) -> list[int]:
    response = await stack.client.get(f"/api/v1/runs/{run_id}/logs", headers=member.headers)
    return [line["seq"] for line in await response.json()]


class SseReader:
    """Parses an SSE response into frames (`{"id", "event", "data"}`) and comments."""

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next(self, seconds: float = 10) -> dict[str, Any] | None:
        """The next event frame; None at the end of the stream."""
        frame: dict[str, Any] = {}
        async with asyncio.timeout(seconds):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n")
                if not line:
                    if frame:
                        return frame
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, text = line.partition(": ")
                frame[name] = json.loads(text) if name == "data" else text

    async def until(self, step_id: str, event: str) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        while (frame := await self.next()) is not None:
            frames.append(frame)
            if frame["event"] == event and frame["data"]["step_id"] == step_id:
                return frames
        raise AssertionError(f"the stream ended before {event} of {step_id}")

    async def rest(self) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        while (frame := await self.next()) is not None:
            frames.append(frame)
        return frames


async def test_sse_resumes_after_a_disconnect_with_exactly_the_missing_events(stack: Stack) -> None:
    member = await stack.member()
    run_id = await start_run(stack, member)
    response = await stack.client.get(f"/api/v1/runs/{run_id}/events", headers=member.headers)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Request-ID"]
    before = await SseReader(response).until("gate", "workflow.step.started")
    first = before[0]
    assert first["event"] == "workflow.started" and first["id"] == "1"
    assert set(first["data"]) == {"event", "seq", "timestamp", "run_id", "workflow_id", "step_id", "data"}
    assert first["data"]["run_id"] == run_id and first["data"]["seq"] == 1
    assert first["data"]["timestamp"].endswith("Z")
    response.close()  # the client goes away mid-run

    await send_go(stack, member, run_id)  # events happen while nobody listens
    last_seen = before[-1]["id"]
    response = await stack.client.get(
        f"/api/v1/runs/{run_id}/events", headers={**member.headers, "Last-Event-ID": last_seen}
    )
    after = await SseReader(response).rest()  # ends by itself after the terminal event
    seqs = [int(frame["id"]) for frame in before + after]
    assert seqs == list(range(1, len(seqs) + 1)) == await all_seqs(stack, member, run_id)
    assert [frame["data"]["seq"] for frame in after] == seqs[len(before) :]
    assert after[-1]["event"] == "workflow.completed"
    assert after[-1]["data"]["data"]["output"] == {"approved": {"by": "ops"}}

    # `?after=` does the same; after the terminal event the stream is empty and ends.
    response = await stack.client.get(f"/api/v1/runs/{run_id}/events?after={seqs[-3]}", headers=member.headers)
    assert [int(f["id"]) for f in await SseReader(response).rest()] == seqs[-2:]
    response = await stack.client.get(f"/api/v1/runs/{run_id}/events?after={seqs[-1]}", headers=member.headers)
    assert await SseReader(response).rest() == []


async def test_sse_refusals_are_problems(stack: Stack) -> None:
    owner, stranger = await stack.member(), await stack.member()
    run_id = await start_run(stack, owner)
    response = await stack.client.get(f"/api/v1/runs/{run_id}/events", headers=stranger.headers)
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    response = await stack.client.get(f"/api/v1/runs/{run_id}/events")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.content_type == "application/problem+json"
    response = await stack.client.get(f"/api/v1/runs/{run_id}/events?after=-1", headers=owner.headers)
    assert response.status == 400
    response = await stack.client.get("/api/v1/events?types=nope", headers=owner.headers)
    assert response.status == 400
    assert response.content_type == "application/problem+json"


async def test_sse_heartbeats_and_the_tenant_stream(stack: Stack) -> None:
    stack.client.app[SETTINGS_KEY].sse_heartbeat_seconds = 0.2
    owner, stranger = await stack.member(), await stack.member()
    mine = await stack.client.get("/api/v1/events?types=workflow.started,workflow.completed", headers=owner.headers)
    theirs = await stack.client.get("/api/v1/events", headers=stranger.headers)
    assert mine.status == theirs.status == 200
    mine_reader, their_reader = SseReader(mine), SseReader(theirs)
    run_id = await start_run(stack, owner)
    started = await mine_reader.next()
    assert started is not None and started["event"] == "workflow.started"
    assert started["data"]["run_id"] == run_id
    await send_go(stack, owner, run_id)
    completed = await mine_reader.next()
    assert completed is not None and completed["event"] == "workflow.completed"
    assert int(completed["id"]) > int(started["id"])  # the log cursor
    # Nothing of the owner's reaches the stranger; keepalive comments do.
    await asyncio.sleep(0.6)
    try:
        frame = await their_reader.next(seconds=0.5)
    except TimeoutError:
        frame = None
    assert frame is None
    assert "keepalive" in their_reader.comments
    mine.close()
    theirs.close()


async def receive(ws: aiohttp.ClientWebSocketResponse, seconds: float = 10) -> dict[str, Any]:
    message = await ws.receive(timeout=seconds)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    document: dict[str, Any] = json.loads(message.data)
    return document


async def ws_events_until(ws: aiohttp.ClientWebSocketResponse, done: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        message = await receive(ws)
        if message["type"] in ("subscribed", "authenticated"):
            continue
        events.append(message)
        if done(message):
            return events


async def test_websocket_resumes_and_survives_bad_messages(stack: Stack) -> None:
    member = await stack.member()
    run_id = await start_run(stack, member)
    ws = await stack.client.ws_connect("/api/v1/ws", headers=member.headers)
    await ws.send_str("not json")
    assert (await receive(ws))["type"] == "error"
    await ws.send_json({"action": "dance"})
    assert (await receive(ws))["type"] == "error"
    await ws.send_json({"action": "subscribe", "topic": "agents"})
    unsupported = await receive(ws)
    assert unsupported["type"] == "error" and "not supported" in unsupported["detail"]
    await ws.send_json({"action": "subscribe", "run_id": run_id, "after": -3})
    assert (await receive(ws))["type"] == "error"
    # Still open: a good subscription works.
    await ws.send_json({"action": "subscribe", "run_id": run_id, "after": 0})
    before = await ws_events_until(ws, lambda m: m.get("event") == "workflow.step.started" and m["step_id"] == "gate")
    assert all(m["type"] == "event" and m["subscription"] == {"run_id": run_id} for m in before)
    await ws.close()

    await send_go(stack, member, run_id)
    # A browser-style socket: no header, a first auth message.
    ws = await stack.client.ws_connect("/api/v1/ws")
    await ws.send_json({"action": "subscribe", "run_id": run_id})
    assert "authenticate first" in (await receive(ws))["detail"]
    await ws.send_json({"action": "auth", "token": member.token})
    await ws.send_json({"action": "subscribe", "run_id": run_id, "after": before[-1]["seq"]})
    after = await ws_events_until(ws, lambda m: m["type"] in ("end", "error"))
    assert after[-1] == {"type": "end", "subscription": {"run_id": run_id}}
    seqs = [m["seq"] for m in before + after[:-1]]
    assert seqs == list(range(1, len(seqs) + 1)) == await all_seqs(stack, member, run_id)
    assert after[-2]["event"] == "workflow.completed"

    stranger = await stack.member()
    await ws.send_json({"action": "auth", "token": stranger.token})
    await ws.send_json({"action": "subscribe", "run_id": run_id})
    hidden = await ws_events_until(ws, lambda m: m["type"] == "error")
    assert hidden[-1]["status"] == 404 and hidden[-1]["subscription"] == {"run_id": run_id}
    await ws.send_json({"action": "unsubscribe", "run_id": run_id})
    assert (await receive(ws))["detail"] == "not subscribed"
    assert not ws.closed
    await ws.close()


async def test_websocket_workflow_subscription_and_unsubscribe(stack: Stack) -> None:
    member = await stack.member()
    response = await stack.client.post("/api/v1/workflows", json=WORKFLOW, headers=member.headers)
    workflow_id = (await response.json())["id"]
    ws = await stack.client.ws_connect("/api/v1/ws", headers=member.headers)
    await ws.send_json({"action": "subscribe", "workflow_id": workflow_id})
    assert (await receive(ws)) == {"type": "subscribed", "subscription": {"workflow_id": workflow_id}}
    response = await stack.client.post(
        f"/api/v1/workflows/{workflow_id}/execute", json={"input": {"doc": "x"}}, headers=member.headers
    )
    run_id = (await response.json())["id"]
    first = await receive(ws)
    assert first["event"] == "workflow.started" and first["run_id"] == run_id and first["cursor"] > 0
    await ws.send_json({"action": "unsubscribe", "workflow_id": workflow_id})
    while (message := await receive(ws))["type"] == "event":
        pass
    assert message == {"type": "unsubscribed", "subscription": {"workflow_id": workflow_id}}
    await ws.close()
