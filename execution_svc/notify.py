"""Notifiers: wake-ups for workers and event watchers.

`InProcessNotifier` serves one process (the embedded SQLite default). `PostgresNotifier` adds
PostgreSQL `LISTEN/NOTIFY` so that every execution_svc process sharing a database hears the
others. A Redis pub/sub notifier fits the same `Notifier` protocol: publish to
`<prefix>:<topic>`, deliver locally at once, drop its own echoes by sender id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from execution_svc.domain.ports import CANCEL_TOPIC, EVENTS_TOPIC, TASKS_TOPIC, WAKE_ALL_WATCHERS

logger = logging.getLogger(__name__)

TOPICS = (TASKS_TOPIC, EVENTS_TOPIC, CANCEL_TOPIC)


class InProcessNotifier:
    """Delivers messages to this process's subscribers on the event loop."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Callable[[str], None]]] = defaultdict(list)

    async def publish(self, messages: Sequence[tuple[str, str]]) -> None:
        """Delivers each (topic, payload) to the topic's subscribers."""
        self.deliver(messages)

    def deliver(self, messages: Sequence[tuple[str, str]]) -> None:
        """Schedules the callbacks (never inline: a subscriber must not run inside the
        publisher's call stack)."""
        loop = asyncio.get_running_loop()
        for topic, payload in messages:
            for callback in list(self._subscribers.get(topic, ())):
                loop.call_soon(_safely, callback, payload)

    def subscribe(self, topic: str, callback: Callable[[str], None]) -> Callable[[], None]:
        """See `Notifier.subscribe`."""
        self._subscribers[topic].append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers[topic].remove(callback)

        return unsubscribe

    async def close(self) -> None:
        """Nothing to release."""


def _safely(callback: Callable[[str], None], payload: str) -> None:
    try:
        callback(payload)
    except Exception:
        logger.exception("notification subscriber failed")


class PostgresNotifier(InProcessNotifier):
    """Local delivery plus `NOTIFY` to other processes on the same database.

    One dedicated asyncpg connection LISTENs on `<prefix>_<topic>` channels (the prefix is
    the service's schema, so services and test schemas sharing a database do not hear each
    other) and sends batched `pg_notify` calls. Payloads carry this notifier's id so its own
    echoes are dropped: local subscribers were already served without the round trip. If
    the connection drops it is reopened; meanwhile workers fall back to polling.
    """

    def __init__(self, dsn: str, *, channel_prefix: str, reconnect_seconds: float = 1.0) -> None:
        super().__init__()
        self._dsn = dsn
        self._prefix = channel_prefix.lower()
        self._sender_id = uuid.uuid4().hex[:12]
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._reconnect_seconds = reconnect_seconds
        self._monitor: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._outbox: list[tuple[str, str]] = []
        self._outbox_ready = asyncio.Event()
        self._closed = False

    def channel(self, topic: str) -> str:
        """The PostgreSQL channel of a topic."""
        return f"{self._prefix}_{topic}"

    async def start(self) -> None:
        """Connects and LISTENs; keeps the connection alive in the background."""
        await self._connect()
        self._monitor = asyncio.create_task(self._keep_connected(), name="pg-notifier-monitor")
        self._sender = asyncio.create_task(self._send_loop(), name="pg-notifier-sender")

    async def _connect(self) -> None:
        connection = await asyncpg.connect(self._dsn, timeout=10)
        for topic in TOPICS:
            await connection.add_listener(self.channel(topic), self._on_notification)
        self._connection = connection

    async def _keep_connected(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._reconnect_seconds)
            connection = self._connection
            if connection is not None and not connection.is_closed():
                continue
            try:
                async with self._lock:
                    await self._connect()
                logger.info("notifier reconnected to PostgreSQL")
                # Anything published while we were away is unknown: wake everyone once.
                self.deliver([(TASKS_TOPIC, ""), (EVENTS_TOPIC, WAKE_ALL_WATCHERS)])
            except (OSError, asyncpg.PostgresError):
                logger.warning("notifier cannot reach PostgreSQL yet", exc_info=True)

    def _on_notification(self, _connection: Any, _pid: int, channel: str, payload: str) -> None:
        sender, _, message = payload.partition("|")
        if sender == self._sender_id:
            return
        topic = channel[len(self._prefix) + 1 :]
        self.deliver([(topic, message)])

    async def publish(self, messages: Sequence[tuple[str, str]]) -> None:
        """Delivers locally at once and queues the NOTIFY for the other processes.

        The NOTIFY is sent by a background task, never on the publisher's path: a commit's
        caller (a worker about to run the next step) must not wait for a second round trip,
        and messages published while one NOTIFY is in flight go out together in the next."""
        self.deliver(messages)
        if not messages or self._closed:
            return
        self._outbox.extend(messages)
        self._outbox_ready.set()

    async def _send_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            await self._flush()

    async def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        if not batch:
            return
        # One wake-up of a topic says it all; other messages are kept in order, duplicates dropped.
        unique = list(dict.fromkeys(batch))
        channels = [self.channel(topic) for topic, _ in unique]
        payloads = [f"{self._sender_id}|{payload}" for _, payload in unique]
        async with self._lock:
            connection = self._connection
            if connection is None or connection.is_closed():
                return
            try:
                await connection.execute(
                    "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)", channels, payloads
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                logger.warning("could not NOTIFY other processes", exc_info=True)

    async def close(self) -> None:
        """Stops listening and closes the connection."""
        self._closed = True
        for task in (self._monitor, self._sender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(Exception):
            await self._flush()  # what was published before closing still goes out
        if self._connection is not None and not self._connection.is_closed():
            await self._connection.close()
