"""Event watchers: a run's events (WatchRun) and a tenant's event log (WatchEvents).

A watcher never trusts notification payloads: a notification only says "read again", and
every read goes to the event log after the watcher's cursor. It subscribes before its first
read, so an event committed during the history read causes one more read, never a gap; the
query starts after the cursor, so the hand-over from history to live has no duplicate.

Each watcher owns a bounded buffer filled by a pump task. Notifications only set a flag, so
the engine never waits for a watcher, and a watcher that stops reading only stalls its own
pump. A buffer that stays full for `stall_seconds` ends the watcher with RESOURCE_EXHAUSTED
(after the events already buffered), naming the cursor to resume from.

Thousands of watchers cost little more than their runs: one subscription serves them all and
wakes only the watchers of the run (or tenant) a notification names, and the WatchRun watchers
of one run share a feed: one read of the log per change (and per fallback poll), whatever the
number of watchers, with the run's recent events kept in memory for them to take from.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import random
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from execution_svc.db import events as log
from execution_svc.db import repository as repo
from execution_svc.db.session import Database
from execution_svc.domain.models import EventRecord, EventType, LoggedEvent
from execution_svc.domain.ports import EVENTS_TOPIC, Clock, Notifier
from flowforge_common.errors import BadRequestError, FieldViolation, NotFoundError, ResourceExhaustedError
from flowforge_common.orm import utcnow

logger = logging.getLogger(__name__)

T = TypeVar("T")

# API.md "Events": what a filter may name. The agent events are not written yet; naming them
# is valid and simply matches nothing so far.
KNOWN_EVENT_TYPES = frozenset({t.value for t in EventType} | {"agent.selected", "agent.status.changed"})


@dataclass(frozen=True)
class WatchConfig:
    """Tunables of the watchers."""

    # Fallback re-read when a notification is lost (another process, a dropped connection).
    poll_seconds: float = 5.0
    # Events (or log positions) read per query.
    batch_size: int = 500
    # Events buffered per watcher between the log and a slow consumer.
    buffer_events: int = 256
    # How long a full buffer may stay full before the watcher is ended.
    stall_seconds: float = 30.0
    # How long a hole in the log positions is waited for (a transaction still in flight)
    # before the positions after it are delivered; longer transactions than this may be missed
    # by WatchEvents (never by WatchRun, which reads by per-run seq).
    gap_seconds: float = 5.0
    # Positions looked back over when a live-only WatchEvents starts, to catch transactions
    # that were in flight at the call.
    start_lookback: int = 1000


@dataclass(frozen=True)
class EventFilter:
    """What a WatchEvents caller wants; empty fields match everything."""

    workflow_id: str = ""
    run_id: str = ""
    types: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        unknown = sorted(self.types - KNOWN_EVENT_TYPES)
        if unknown:
            raise BadRequestError(
                f"unknown event types: {', '.join(unknown)}",
                [FieldViolation("types", f"unknown event type {name!r}") for name in unknown],
            )


class WatcherTooSlowError(ResourceExhaustedError):
    """The consumer did not keep up: its buffer stayed full. It can resume from `cursor`."""

    reason = "WATCHER_TOO_SLOW"


class _Wake:
    """A flag set by the notifications a watcher is registered for (see `_Wakes`)."""

    def __init__(self, hub: _Wakes) -> None:
        self._flag = asyncio.Event()
        self._hub = hub
        self._keys: list[tuple[str, str]] = []

    def set(self) -> None:
        self._flag.set()

    def listen(self, kind: str, key: str) -> None:
        """Wakes on notifications of run `key` (kind "run"), tenant `key` ("tenant"), or any
        ("any", key "")."""
        self._hub.add(kind, key, self)
        self._keys.append((kind, key))

    def mute(self, kind: str, key: str) -> None:
        """Undoes one `listen`."""
        if (kind, key) in self._keys:
            self._keys.remove((kind, key))
            self._hub.discard(kind, key, self)

    def clear(self) -> None:
        """Forget earlier wake-ups (call before a read: later ones then cause another read)."""
        self._flag.clear()

    async def wait(self, seconds: float) -> None:
        """Until a wake-up or `seconds` pass, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._flag.wait(), seconds)

    def close(self) -> None:
        """Stops every wake-up (idempotent)."""
        for kind, key in self._keys:
            self._hub.discard(kind, key, self)
        self._keys.clear()


class _Wakes:
    """The one EVENTS_TOPIC subscription of all watchers: a notification `<tenant> <run> <seq>`
    marks that run's feed stale and wakes the watchers registered for the run, for the tenant,
    or for any change; `WAKE_ALL_WATCHERS` wakes everyone. Cost per notification: the watchers
    it concerns, not all of them."""

    def __init__(self, notifier: Notifier) -> None:
        self._index: dict[tuple[str, str], set[_Wake]] = {}
        self.feeds: dict[tuple[str, str], _RunFeed] = {}
        notifier.subscribe(EVENTS_TOPIC, self._on_message)

    def add(self, kind: str, key: str, wake: _Wake) -> None:
        self._index.setdefault((kind, key), set()).add(wake)

    def discard(self, kind: str, key: str, wake: _Wake) -> None:
        wakes = self._index.get((kind, key))
        if wakes is not None:
            wakes.discard(wake)
            if not wakes:
                del self._index[(kind, key)]

    def _on_message(self, payload: str) -> None:
        parts = payload.split(" ")
        if len(parts) != 3:
            return
        tenant_id, run_id = parts[0], parts[1]
        if tenant_id == "*":
            for each in self.feeds.values():
                each.stale = True
            for wakes in list(self._index.values()):
                for wake in wakes:
                    wake.set()
            return
        feed = self.feeds.get((tenant_id, run_id))
        # News unless the feed has it already (this process's own commits are offered to it).
        seq = int(parts[2]) if parts[2].isdigit() else None
        if feed is not None and (feed.read_to is None or seq is None or seq > feed.read_to):
            feed.stale = True
        for key in (("run", run_id), ("tenant", tenant_id), ("any", "")):
            for wake in self._index.get(key, ()):
                wake.set()


class _RunFeed:
    """A run's recent events, read once for all its WatchRun watchers in this process.

    `events` holds the events after `read_to - len(events)` up to `read_to`, contiguous by
    seq. A watcher whose cursor is inside that window takes from memory; one further behind
    reads the log itself. The feed reads again (one read, shared by every watcher asking at
    that moment) when a notification marked it stale or its last read is older than the
    fallback poll period."""

    def __init__(self, database: Database, tenant_id: str, run_id: str, *, keep: int, batch_size: int) -> None:
        self._db = database
        self.tenant_id = tenant_id
        self.run_id = run_id
        self._keep = keep
        self._batch_size = batch_size
        self.events: list[EventRecord] = []
        self.read_to: int | None = None
        self.finished = False
        self.last_seq = 0
        self.stale = True
        self.users = 0
        self._read_at = -math.inf
        self._reading: asyncio.Task[None] | None = None

    async def after(self, cursor: int, *, max_age: float) -> tuple[list[EventRecord], bool] | None:
        """Up to a batch of events after `cursor` and whether the run is finished with its
        last event among them; None when `cursor` is behind the window (read the log)."""
        loop = asyncio.get_running_loop()
        if self.stale or self.read_to is None or loop.time() - self._read_at >= max_age:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.create_task(self._read(cursor), name="run-feed-read")
            await asyncio.shield(self._reading)
        assert self.read_to is not None
        first = self.read_to - len(self.events)
        if cursor < first:
            return None
        batch = self.events[cursor - first : cursor - first + self._batch_size]
        end = batch[-1].seq if batch else cursor
        return batch, self.finished and end >= self.last_seq

    def offer(self, events: Sequence[EventRecord], *, finished: bool, last_seq: int) -> None:
        """Events this process has just committed for the run (contiguous by seq, the run's
        latest at that commit): taken into the window without reading the log when they follow
        on from it. Otherwise (a gap: another process committed in between) the feed reads the
        log as usual. Whether the feed is stale is left alone: a later commit of another
        process may have marked it so."""
        if self.read_to is None:
            return
        fresh = [event for event in events if event.seq > self.read_to]
        if not fresh:
            return
        if fresh[0].seq != self.read_to + 1:
            self.stale = True
            return
        self._take(fresh)
        self._note_run(finished, last_seq)

    def _take(self, events: Sequence[EventRecord]) -> None:
        self.events.extend(events)
        self.read_to = events[-1].seq
        del self.events[: max(0, len(self.events) - self._keep)]
        self._read_at = asyncio.get_running_loop().time()

    def _note_run(self, finished: bool, last_seq: int) -> None:
        if last_seq >= self.last_seq:
            self.finished, self.last_seq = finished, last_seq

    async def _read(self, cursor: int) -> None:
        self.stale = False
        if self.read_to is None:
            self.read_to = cursor
        # The run first, its events second: on PostgreSQL's READ COMMITTED the events read
        # then include everything up to the run's `last_seq`.
        async with self._db.read() as session:
            run = await repo.get_run(session, self.tenant_id, self.run_id)
            if run is None:
                raise NotFoundError(f"run {self.run_id} not found")
            batch = await repo.list_events(
                session, self.tenant_id, self.run_id, after_seq=self.read_to, limit=self._batch_size
            )
        self._read_at = asyncio.get_running_loop().time()
        self._note_run(run.status.finished, run.last_seq)
        # An offer may have taken some of them while this read was in flight.
        fresh = [event for event in batch if event.seq > self.read_to]
        if fresh:
            self._take(fresh)
        if len(batch) == self._batch_size:
            self.stale = True  # more to read


class EventStream(Generic[T]):
    """A watcher's bounded buffer between a log reader (`source`) and its consumer.

    Iterate it to consume; `aclose()` it when done (also when never iterated)."""

    def __init__(
        self,
        source: AsyncGenerator[T, None],
        *,
        cursor_of: Callable[[T], int],
        cursor: int,
        config: WatchConfig,
        on_close: Callable[[], None],
        cursor_name: str,
    ) -> None:
        self._source = source
        self._cursor_of = cursor_of
        self.cursor = cursor
        self._config = config
        self._on_close = on_close
        self._cursor_name = cursor_name
        self._queue: asyncio.Queue[T] = asyncio.Queue(config.buffer_events)
        self._overflowed = False
        self._pump = asyncio.create_task(self._fill(), name="event-watcher")

    async def _fill(self) -> None:
        try:
            async for item in self._source:
                try:
                    await asyncio.wait_for(self._queue.put(item), self._config.stall_seconds)
                except TimeoutError:
                    self._overflowed = True
                    return
        finally:
            await self._source.aclose()

    def __aiter__(self) -> EventStream[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            if not self._queue.empty():
                return self._take(self._queue.get_nowait())
            if self._pump.done():
                self._raise_outcome()
            getter = asyncio.ensure_future(self._queue.get())
            try:
                await asyncio.wait({getter, self._pump}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                return self._take(getter.result())

    def _take(self, item: T) -> T:
        self.cursor = self._cursor_of(item)
        return item

    def _raise_outcome(self) -> None:
        if self._pump.cancelled():
            raise StopAsyncIteration
        error = self._pump.exception()
        if error is not None:
            raise error
        if self._overflowed:
            logger.info("ending a watcher that does not keep up", extra={"cursor": self.cursor})
            raise WatcherTooSlowError(
                f"the watcher fell behind (more than {self._config.buffer_events} events unread for "
                f"{self._config.stall_seconds:g}s); resume with {self._cursor_name}={self.cursor}",
                metadata={self._cursor_name: str(self.cursor)},
            )
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stops the reader and unsubscribes."""
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._pump
        self._on_close()


def advance_horizon(
    position: int,
    marks: list[tuple[int, dt.datetime]],
    gaps: dict[int, float],
    *,
    now: float,
    wall_now: dt.datetime,
    gap_seconds: float,
) -> tuple[int, float | None]:
    """How far the log can be delivered: the last position of the run of committed positions
    after `position` (`marks`, ascending), stepping over holes that are old enough to be
    permanent (a rolled-back insert) rather than a transaction in flight. A hole is old
    enough once it has been waited for `gap_seconds` (`gaps` remembers since when, by the
    monotonic `now`) or the event after it is that old (`wall_now`). Returns the horizon and,
    when a young hole stops it, the seconds until that hole counts as permanent."""
    horizon = position
    for mark, timestamp in marks:
        if mark == horizon + 1:
            horizon = mark
            continue
        first_seen = gaps.setdefault(horizon + 1, now)
        waited = max(now - first_seen, (wall_now - timestamp).total_seconds())
        if waited >= gap_seconds:
            horizon = mark
            continue
        _forget_gaps(gaps, horizon)
        return horizon, gap_seconds - waited
    _forget_gaps(gaps, horizon)
    return horizon, None


def _forget_gaps(gaps: dict[int, float], horizon: int) -> None:
    for start in [start for start in gaps if start <= horizon]:
        del gaps[start]


class EventWatcher:
    """Opens WatchRun and WatchEvents streams over the event log."""

    def __init__(
        self, database: Database, notifier: Notifier, config: WatchConfig | None = None, *, clock: Clock = utcnow
    ) -> None:
        self._db = database
        self._wakes = _Wakes(notifier)
        self.config = config or WatchConfig()
        self._clock = clock

    async def open_run(self, tenant_id: str, run_id: str, *, after_seq: int = 0) -> EventStream[EventRecord]:
        """A run's events after `after_seq`, then live ones, in seq order; ends after the
        terminal event that is the run's latest. NotFoundError (before any event) for a run
        the tenant does not have."""
        wake = _Wake(self._wakes)
        wake.listen("run", run_id)
        try:
            await self._require_run(tenant_id, run_id)
        except BaseException:
            wake.close()
            raise
        feed = self._wakes.feeds.get((tenant_id, run_id))
        if feed is None:
            feed = _RunFeed(
                self._db, tenant_id, run_id, keep=2 * self.config.batch_size, batch_size=self.config.batch_size
            )
            self._wakes.feeds[(tenant_id, run_id)] = feed
        feed.users += 1

        def close() -> None:
            wake.close()
            feed.users -= 1
            if feed.users == 0 and self._wakes.feeds.get((tenant_id, run_id)) is feed:
                del self._wakes.feeds[(tenant_id, run_id)]

        return EventStream(
            self._run_events(wake, feed, max(after_seq, 0)),
            cursor_of=lambda event: event.seq,
            cursor=max(after_seq, 0),
            config=self.config,
            on_close=close,
            cursor_name="after_seq",
        )

    async def open_events(
        self, tenant_id: str, filters: EventFilter, *, after_cursor: int = 0
    ) -> EventStream[LoggedEvent]:
        """The tenant's events matching `filters`, in log order: after `after_cursor`, or live
        from now when it is 0. NotFoundError for a `run_id` filter naming an unknown run."""
        state = _GapState()
        wake = _Wake(self._wakes)
        wake.listen("tenant", tenant_id)
        try:
            if filters.run_id:
                await self._require_run(tenant_id, filters.run_id)
            start = after_cursor if after_cursor > 0 else await self._live_start()
        except BaseException:
            wake.close()
            raise
        return EventStream(
            self._log_events(wake, state, tenant_id, filters, start),
            cursor_of=lambda logged: logged.position,
            cursor=start,
            config=self.config,
            on_close=wake.close,
            cursor_name="after_cursor",
        )

    def offer(
        self, tenant_id: str, run_id: str, events: Sequence[EventRecord], *, finished: bool, last_seq: int
    ) -> None:
        """Hands the events of a commit of this process to the run's feed, if the run is
        watched here: its watchers then take them without reading the log (see `_RunFeed.offer`).
        Call after the commit, before publishing its notification."""
        feed = self._wakes.feeds.get((tenant_id, run_id))
        if feed is not None:
            feed.offer(events, finished=finished, last_seq=last_seq)

    def _poll_timeout(self) -> float:
        """The fallback poll period, jittered by +-25%: watchers opened together (a page of
        subscribers, a reconnect storm) must not all read the log in the same instant."""
        return self.config.poll_seconds * random.uniform(0.75, 1.25)

    async def _require_run(self, tenant_id: str, run_id: str) -> None:
        async with self._db.read() as session:
            if await repo.get_run(session, tenant_id, run_id) is None:
                raise NotFoundError(f"run {run_id} not found")

    async def _run_events(self, wake: _Wake, feed: _RunFeed, cursor: int) -> AsyncGenerator[EventRecord, None]:
        size = self.config.batch_size
        while True:
            wake.clear()
            taken = await feed.after(cursor, max_age=self.config.poll_seconds)
            if taken is None:
                # Behind the feed's window: history straight from the log.
                async with self._db.read() as session:
                    history = await repo.list_events(
                        session, feed.tenant_id, feed.run_id, after_seq=cursor, limit=size
                    )
                # Yielded outside the session: a stalled consumer must not hold a pooled connection.
                for event in history:
                    yield event
                    cursor = event.seq
                if history:
                    continue
                await wake.wait(self._poll_timeout())  # purged under the cursor: wait for news
                continue
            batch, finished = taken
            for event in batch:
                yield event
                cursor = event.seq
            if finished:
                return
            if batch:
                continue  # the feed may hold more, or be stale again by now
            await wake.wait(self._poll_timeout())

    async def _live_start(self) -> int:
        """Where a live-only stream starts: just before the first young hole among the latest
        positions, so that transactions in flight at the call are not skipped."""
        lookback = self.config.start_lookback
        async with self._db.read() as session:
            head = await log.head_position(session)
            base = max(head - lookback, 0)
            marks = await log.positions_after(session, base, limit=lookback)
        horizon, _ = advance_horizon(
            base, marks, {}, now=0.0, wall_now=self._clock(), gap_seconds=self.config.gap_seconds
        )
        return horizon

    async def _log_events(
        self, wake: _Wake, state: _GapState, tenant_id: str, filters: EventFilter, position: int
    ) -> AsyncGenerator[LoggedEvent, None]:
        size = self.config.batch_size
        loop = asyncio.get_running_loop()
        gaps: dict[int, float] = {}
        while True:
            wake.clear()
            async with self._db.read() as session:
                marks = await log.positions_after(session, position, limit=size)
                horizon, hole_expires_in = advance_horizon(
                    position,
                    marks,
                    gaps,
                    now=loop.time(),
                    wall_now=self._clock(),
                    gap_seconds=self.config.gap_seconds,
                )
                batch = await _tenant_events(session, tenant_id, filters, position, horizon)
            for logged in batch:
                yield logged
            position = horizon
            if len(marks) == size and marks and horizon == marks[-1][0]:
                continue
            # While a hole holds the stream back, any tenant's commit may fill it.
            waiting = hole_expires_in is not None
            if waiting and not state.waiting:
                wake.listen("any", "")
            elif state.waiting and not waiting:
                wake.mute("any", "")
            state.waiting = waiting
            timeout = self._poll_timeout()
            if hole_expires_in is not None:
                timeout = min(timeout, max(hole_expires_in, 0.01))
            await wake.wait(timeout)


@dataclass
class _GapState:
    """Shared between a WatchEvents reader and its wake filter."""

    waiting: bool = False


async def _tenant_events(
    session: AsyncSession, tenant_id: str, filters: EventFilter, after: int, up_to: int
) -> list[LoggedEvent]:
    if up_to <= after:
        return []
    return await log.list_log_events(
        session,
        tenant_id,
        after=after,
        up_to=up_to,
        workflow_id=filters.workflow_id,
        run_id=filters.run_id,
        types=filters.types,
    )
