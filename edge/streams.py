"""Live event routes: Server-Sent Events relays of WatchRun and WatchEvents, and the WebSocket
hub that multiplexes them. Open streams are tracked and closed on shutdown.

Backpressure: each upstream watch is read into a bounded queue. An SSE stream is one client
and one watch, so a full queue simply stops reading the watch (gRPC flow control carries the
pressure to execution_svc, which ends a watcher that stays stalled). A WebSocket multiplexes
many watches into one send queue; a client that lets that queue fill is closed, since
pausing one subscription for another's sake would be unfair and unbounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from aiohttp import WSCloseCode, WSMsgType, web
from google.protobuf.message import Message

from edge import jsonmap
from edge.authn import AUTHENTICATOR_KEY
from edge.jsonmap import JsonValue
from edge.middlewares import REQUEST_ID_KEY
from edge.problems import ProblemError, bad_request, problem_from_rpc_error
from edge.settings import SETTINGS_KEY
from edge.transcoder import forwarded_metadata
from edge.upstream import UPSTREAMS_KEY
from flowforge.execution.v1 import execution_pb2, execution_service_pb2
from flowforge_common.memo import Memo

logger = logging.getLogger(__name__)

EXECUTION_SERVICE = execution_service_pb2.DESCRIPTOR.services_by_name["ExecutionService"].full_name
WATCH_RUN = f"/{EXECUTION_SERVICE}/WatchRun"
WATCH_EVENTS = f"/{EXECUTION_SERVICE}/WatchEvents"
STREAM_PATHS = ("/api/v1/runs/{id}/events", "/api/v1/events", "/api/v1/ws")
EVENTS_QUERY = frozenset({"workflow_id", "run_id", "types", "after"})
# Close codes in the private range (RFC 6455 section 7.4.2), one per reason a client can act on.
WS_CLOSE_UNAUTHENTICATED = 4401
WS_CLOSE_TOO_SLOW = 4408
SSE_CONTENT_TYPE = "text/event-stream"


# --------------------------------------------------------------------------- open streams


class OpenStreams:
    """The streams being served, each with the coroutine that ends it (on shutdown)."""

    def __init__(self) -> None:
        self._closers: dict[int, Callable[[], Awaitable[None]]] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._closers)

    def track(self, closer: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Registers a stream; returns the function that forgets it when it ends."""
        self._next += 1
        key = self._next
        self._closers[key] = closer

        def forget() -> None:
            self._closers.pop(key, None)

        return forget

    async def close_all(self) -> None:
        """Ends every open stream (each closer is bounded in time)."""
        closers = list(self._closers.values())
        self._closers.clear()
        await asyncio.gather(*(closer() for closer in closers), return_exceptions=True)


OPEN_STREAMS_KEY = web.AppKey("open_streams", OpenStreams)


async def _close_open_streams(app: web.Application) -> None:
    await app[OPEN_STREAMS_KEY].close_all()


# --------------------------------------------------------------------------- upstream watches


class UpstreamWatch:
    """One server-streaming call, read by a task into a bounded queue."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, buffer: int) -> None:
        self.call = call
        self.error: grpc.aio.AioRpcError | None = None
        self._queue: asyncio.Queue[Message] = asyncio.Queue(buffer)
        self._finished = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="upstream-watch")

    async def _read(self) -> None:
        try:
            async for response in self.call:
                await self._queue.put(response)
        except grpc.aio.AioRpcError as error:
            self.error = error
        except asyncio.CancelledError:
            # `close()`: the call is cancelled below; this task ends quietly.
            pass
        finally:
            self.call.cancel()
            self._finished.set()

    async def next(self, seconds: float | None = None) -> Message | None:
        """The next response; None once the stream ended (see `error`); TimeoutError when
        nothing arrived within `seconds`."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        if self._finished.is_set():
            return None
        getter = asyncio.ensure_future(self._queue.get())
        finished = asyncio.ensure_future(self._finished.wait())
        try:
            await asyncio.wait({getter, finished}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (getter, finished):
                if not waiter.done():
                    waiter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        if finished.done():
            return self._queue.get_nowait() if not self._queue.empty() else None
        raise TimeoutError

    async def close(self) -> None:
        """Cancels the call and waits for the reader."""
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def open_watch(
    request: web.Request,
    rpc_path: str,
    message: Message,
    response_type: type[Message],
    headers: Mapping[str, str] | None = None,
) -> UpstreamWatch:
    """Opens a watch with the caller's credentials (or `headers`), waiting until execution_svc
    accepted it: a refusal (401, 404, ...) raises AioRpcError before any byte is sent, so the
    errors middleware turns it into problem+json."""
    metadata = forwarded_metadata(headers if headers is not None else request.headers, request[REQUEST_ID_KEY])
    call = request.app[UPSTREAMS_KEY].stream(EXECUTION_SERVICE, rpc_path, message, response_type, metadata=metadata)
    try:
        # The service sends its headers once the watch is open; a refusal ends the call first.
        await call.initial_metadata()
        if call.done():
            await call.read()  # raises the call's AioRpcError; a clean end reads EOF
    except BaseException:
        call.cancel()
        raise
    return UpstreamWatch(call, request.app[SETTINGS_KEY].stream_buffer_events)


# --------------------------------------------------------------------------- envelopes


def envelope(event: execution_pb2.Event) -> dict[str, JsonValue]:
    """The API.md event envelope: `{event, seq, timestamp, run_id, workflow_id, step_id, data}`."""
    document = jsonmap.message_to_json(event)
    assert isinstance(document, dict)
    document["step_id"] = event.step_id or None
    document.setdefault("data", {})
    return document


def _dumps(document: JsonValue) -> str:
    # One line: an SSE `data:` field ends at the newline.
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def sse_frame(event_id: int, event: execution_pb2.Event) -> bytes:
    """`id:` / `event:` / `data:` of one event, made once for every stream that relays it (an
    event never changes once committed; run ids are unique across tenants)."""
    return _FRAMES.get(
        (event.run_id, event.seq, event_id),
        lambda: f"id: {event_id}\nevent: {event.event}\ndata: {_dumps(envelope(event))}\n\n".encode(),
    )


_FRAMES: Memo[tuple[str, int, int], bytes] = Memo()


def _resume_point(request: web.Request) -> int:
    """`Last-Event-ID` (an EventSource reconnecting) wins over `?after=` (the URL it started with)."""
    header = request.headers.get("Last-Event-ID")
    name, raw = ("Last-Event-ID", header) if header is not None else ("after", request.query.get("after", "0"))
    raw = raw.strip() or "0"
    if not raw.isdigit():
        raise bad_request(name, "must be a non-negative integer (an event id received earlier)")
    return int(raw)


# --------------------------------------------------------------------------- SSE


async def _relay_sse(request: web.Request, watch: UpstreamWatch, event_id: Callable[[Any], int]) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    response = web.StreamResponse(
        headers={"Content-Type": SSE_CONTENT_TYPE, "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    stopping = asyncio.Event()

    async def close() -> None:
        stopping.set()
        await watch.close()

    forget = request.app[OPEN_STREAMS_KEY].track(close)
    try:
        await response.prepare(request)
        # An empty comment at once: clients and proxies see the stream open before any event.
        await response.write(b": open\n\n")
        while True:
            try:
                item = await watch.next(settings.sse_heartbeat_seconds)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if item is None:
                break
            await response.write(sse_frame(event_id(item), item.event))  # type: ignore[attr-defined]
        if watch.error is not None and not stopping.is_set():
            # Headers are gone: the failure becomes a last event (e.g. a watcher that fell
            # behind is told where to resume).
            problem = problem_from_rpc_error(watch.error)
            body = {"status": problem.status, "reason": problem.reason, "detail": problem.detail}
            await response.write(f"event: error\ndata: {_dumps(body)}\n\n".encode())
        await response.write_eof()
    except ConnectionResetError:
        # The client hung up and a write noticed first; nothing left to tell it.
        pass
    finally:
        # Also when the handler is cancelled because the client hung up (the server's
        # `handler_cancellation`): the upstream watch ends now, not at the next heartbeat.
        forget()
        await watch.close()
    return response


async def run_events(request: web.Request) -> web.StreamResponse:
    """SSE of one run (WatchRun): history after `Last-Event-ID`/`?after=`, then live; `id:` is
    the event's `seq`; the stream ends after the run's terminal event."""
    message = execution_service_pb2.WatchRunRequest(run_id=request.match_info["id"], after_seq=_resume_point(request))
    watch = await open_watch(request, WATCH_RUN, message, execution_service_pb2.WatchRunResponse)
    return await _relay_sse(request, watch, lambda item: item.event.seq)


async def tenant_events(request: web.Request) -> web.StreamResponse:
    """SSE of every event of the caller's tenant (WatchEvents), filtered by `workflow_id`,
    `run_id`, `types` (comma-separated); `id:` is the log cursor, so `Last-Event-ID` resumes."""
    unknown = sorted(set(request.query) - EVENTS_QUERY)
    if unknown:
        raise bad_request(unknown[0], f"unknown query parameter; allowed: {', '.join(sorted(EVENTS_QUERY))}")
    types = [t.strip() for value in request.query.getall("types", []) for t in value.split(",") if t.strip()]
    message = execution_service_pb2.WatchEventsRequest(
        workflow_id=request.query.get("workflow_id", ""),
        run_id=request.query.get("run_id", ""),
        types=types,
        after_cursor=_resume_point(request),
    )
    watch = await open_watch(request, WATCH_EVENTS, message, execution_service_pb2.WatchEventsResponse)
    return await _relay_sse(request, watch, lambda item: item.cursor)


# --------------------------------------------------------------------------- WebSocket


class ClientTooSlowError(Exception):
    """The WebSocket client let its send queue fill."""


class WebSocketSession:
    """One `/api/v1/ws` connection: credentials, subscriptions (one upstream watch each), and
    one bounded send queue drained by a writer task.

    Credentials come from the handshake headers (checked by the authentication middleware) or
    from an `auth` message, checked here by the same authenticator before they are kept: a
    bad token closes the socket without any service hearing of it.
    """

    def __init__(self, request: web.Request, ws: web.WebSocketResponse) -> None:
        self.request = request
        self.ws = ws
        self.settings = request.app[SETTINGS_KEY]
        # Lower-case names: `forwarded_metadata` reads them from this plain dict.
        credentials = {
            name: request.headers[name] for name in ("authorization", "x-api-key") if name in request.headers
        }
        self.credentials: dict[str, str] | None = credentials or None
        # One deadline for the whole socket, so that chatter without an auth message cannot
        # keep an anonymous socket open.
        self.auth_deadline = asyncio.get_running_loop().time() + self.settings.ws_auth_timeout_seconds
        self.subscriptions: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.outbox: asyncio.Queue[dict[str, JsonValue]] = asyncio.Queue(self.settings.ws_send_queue)
        self.overflowed = asyncio.Event()

    # -- sending

    def send(self, message: dict[str, JsonValue]) -> None:
        """Queues a message; a full queue marks the client too slow (closed by `serve`)."""
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            self.overflowed.set()
            raise ClientTooSlowError from None

    def error(self, detail: str, **extra: JsonValue) -> None:
        """An error message; the socket stays open."""
        self.send({"type": "error", "detail": detail, **extra})

    async def _write(self) -> None:
        while True:
            message = await self.outbox.get()
            try:
                await self.ws.send_str(_dumps(message))
            finally:
                self.outbox.task_done()

    async def refuse(self, code: int, close_reason: str, detail: str, **extra: JsonValue) -> None:
        """Sends an error message, waits (bounded) until it left, then closes with `code` and
        the short `close_reason` (a close frame carries at most 123 bytes of it)."""
        with contextlib.suppress(ClientTooSlowError):
            self.error(detail, **extra)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.outbox.join(), 2)
        await self.close(code, close_reason)

    # -- serving

    async def serve(self) -> None:
        """Reads client messages until the socket closes, the client falls behind or the
        edge shuts down."""
        writer = asyncio.create_task(self._write(), name="ws-writer")
        overflow = asyncio.create_task(self.overflowed.wait(), name="ws-overflow")
        reader = asyncio.create_task(self._read(), name="ws-reader")
        try:
            await asyncio.wait({writer, overflow, reader}, return_when=asyncio.FIRST_COMPLETED)
            if overflow.done():
                await self.close(WS_CLOSE_TOO_SLOW, "send queue overflow: reconnect and resume with `after`")
        finally:
            for task in (reader, writer, overflow, *self.subscriptions.values()):
                task.cancel()
            await asyncio.gather(reader, writer, overflow, *self.subscriptions.values(), return_exceptions=True)

    async def close(self, code: int, message: str) -> None:
        """Closes with `code`; a client that does not read cannot stop it (bounded wait)."""
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message.encode()), 2)
        except (TimeoutError, ConnectionResetError):
            transport = self.request.transport
            if transport is not None:
                transport.abort()

    async def _read(self) -> None:
        while not self.ws.closed:
            timeout = None if self.credentials else max(0.0, self.auth_deadline - asyncio.get_running_loop().time())
            try:
                message = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                await self.close(WS_CLOSE_UNAUTHENTICATED, 'authenticate first: {"action": "auth", "token": ...}')
                return
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            try:
                if message.type != WSMsgType.TEXT:
                    self.error("messages are JSON text")
                    continue
                await self._handle(message.data)
            except ClientTooSlowError:
                return

    async def _handle(self, text: str) -> None:
        try:
            command = json.loads(text)
        except ValueError:
            self.error("not JSON")
            return
        if not isinstance(command, dict):
            self.error("a message is a JSON object with an `action`")
            return
        action = command.get("action")
        if action == "auth":
            await self._authenticate(command)
        elif self.credentials is None:
            self.error('authenticate first: {"action": "auth", "token": "..."}', action=action)
        elif action == "subscribe":
            self._subscribe(command)
        elif action == "unsubscribe":
            await self._unsubscribe(command)
        else:
            self.error("unknown action; use auth, subscribe or unsubscribe", action=_jsonable(action))

    async def _authenticate(self, command: dict[str, Any]) -> None:
        """Verifies the token as the authentication middleware verifies a header (signature,
        issuer, audience and expiry of a JWT; an `ffk_` key through auth_svc). A refused token
        closes the socket (4401) and the credentials it replaced are dropped; only an
        authenticator that cannot answer (503) leaves the socket open for another try."""
        token = command.get("token")
        if not isinstance(token, str) or not token.strip():
            self.error("auth needs a `token` (an access token or an API key)", action="auth")
            return
        token = token.strip()
        try:
            await self.request.app[AUTHENTICATOR_KEY].authenticate_token(token)
        except ProblemError as problem:
            extra: dict[str, JsonValue] = {"action": "auth", "status": problem.status, "reason": problem.reason}
            if problem.status != 401:
                self.error(problem.detail, **extra)
                return
            self.credentials = None
            await self.refuse(WS_CLOSE_UNAUTHENTICATED, "invalid credentials", problem.detail, **extra)
            return
        # Forwarded on each subscribe, where execution_svc checks them again, as for a header.
        self.credentials = {"x-api-key": token} if token.startswith("ffk_") else {"authorization": f"Bearer {token}"}
        self.send({"type": "authenticated"})

    def _key(self, command: dict[str, Any]) -> tuple[str, str] | None:
        """(`run_id` | `workflow_id` | `topic`, value) of a (un)subscribe message."""
        named = [(name, command[name]) for name in ("run_id", "workflow_id", "topic") if name in command]
        if len(named) != 1 or not isinstance(named[0][1], str) or not named[0][1]:
            self.error(
                "name exactly one of `run_id`, `workflow_id`, `topic` as a non-empty string",
                action=_jsonable(command.get("action")),
            )
            return None
        return named[0]

    def _subscribe(self, command: dict[str, Any]) -> None:
        key = self._key(command)
        if key is None:
            return
        subscription: dict[str, JsonValue] = {key[0]: key[1]}
        if key[0] == "topic":
            self.error(f"topic {key[1]!r} is not supported yet", action="subscribe", subscription=subscription)
            return
        after = command.get("after", 0)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            self.error("`after` must be a non-negative integer", action="subscribe", subscription=subscription)
            return
        if key in self.subscriptions:
            self.error("already subscribed", action="subscribe", subscription=subscription)
            return
        if len(self.subscriptions) >= self.settings.ws_max_subscriptions:
            self.error("too many subscriptions on this socket", action="subscribe", subscription=subscription)
            return
        self.subscriptions[key] = asyncio.create_task(self._relay(key, subscription, after))

    async def _unsubscribe(self, command: dict[str, Any]) -> None:
        key = self._key(command)
        if key is None:
            return
        subscription: dict[str, JsonValue] = {key[0]: key[1]}
        task = self.subscriptions.pop(key, None)
        if task is None:
            self.error("not subscribed", action="unsubscribe", subscription=subscription)
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self.send({"type": "unsubscribed", "subscription": subscription})

    async def _relay(self, key: tuple[str, str], subscription: dict[str, JsonValue], after: int) -> None:
        """One subscription: opens its watch, forwards envelopes tagged with `subscription`."""
        kind, value = key
        request: Message
        response_type: type[Message]
        if kind == "run_id":
            request = execution_service_pb2.WatchRunRequest(run_id=value, after_seq=after)
            path, response_type = WATCH_RUN, execution_service_pb2.WatchRunResponse
        else:
            request = execution_service_pb2.WatchEventsRequest(workflow_id=value, after_cursor=after)
            path, response_type = WATCH_EVENTS, execution_service_pb2.WatchEventsResponse
        watch: UpstreamWatch | None = None
        try:
            try:
                watch = await open_watch(self.request, path, request, response_type, headers=self.credentials)
            except grpc.aio.AioRpcError as error:
                self._upstream_error(subscription, error)
                return
            self.send({"type": "subscribed", "subscription": subscription})
            while (item := await watch.next()) is not None:
                message: dict[str, JsonValue] = {"type": "event", "subscription": subscription}
                if isinstance(item, execution_service_pb2.WatchEventsResponse):
                    message["cursor"] = item.cursor
                message.update(envelope(item.event))  # type: ignore[attr-defined]
                self.send(message)
            if watch.error is not None:
                self._upstream_error(subscription, watch.error)
            else:
                self.send({"type": "end", "subscription": subscription})
        except ClientTooSlowError:
            pass
        finally:
            if watch is not None:
                await watch.close()
            if self.subscriptions.get(key) is asyncio.current_task():
                del self.subscriptions[key]

    def _upstream_error(self, subscription: dict[str, JsonValue], error: grpc.aio.AioRpcError) -> None:
        problem = problem_from_rpc_error(error)
        self.error(problem.detail, status=problem.status, reason=problem.reason, subscription=subscription)


def _jsonable(value: Any) -> JsonValue:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


async def websocket(request: web.Request) -> web.StreamResponse:
    """`/api/v1/ws`: subscribe to runs and workflows over one socket (see API.md "Events")."""
    ws = web.WebSocketResponse(max_msg_size=64 * 1024, heartbeat=request.app[SETTINGS_KEY].sse_heartbeat_seconds)
    if not ws.can_prepare(request).ok:
        raise ProblemError(400, "this route needs a WebSocket upgrade", "BAD_REQUEST")
    await ws.prepare(request)
    session = WebSocketSession(request, ws)

    async def close() -> None:
        await session.close(WSCloseCode.GOING_AWAY, "server shutting down")

    forget = request.app[OPEN_STREAMS_KEY].track(close)
    try:
        await session.serve()
    finally:
        forget()
        if not ws.closed:
            await session.close(WSCloseCode.OK, "")
    return ws


def add_stream_routes(app: web.Application) -> None:
    """Registers the SSE and WebSocket routes and closes open streams on shutdown."""
    app[OPEN_STREAMS_KEY] = OpenStreams()
    app.on_shutdown.append(_close_open_streams)
    app.router.add_get("/api/v1/runs/{id}/events", run_events, allow_head=False)
    app.router.add_get("/api/v1/events", tenant_events, allow_head=False)
    app.router.add_get("/api/v1/ws", websocket, allow_head=False)
