"""Many watchers cost little more than their runs: the WatchRun watchers of one run share one
read of the log per change, and a change wakes only the watchers of its run; every watcher
still gets every event exactly once, in order, from wherever its cursor is."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from execution_svc.db import repository as repo
from execution_svc.domain import watch
from execution_svc.domain.service import EngineConfig, ExecutionEngine
from tests.execution_svc.conftest import TENANT, Harness


def signals(count: int) -> dict[str, Any]:
    """A run that waits for signals `s0`..`s<count-1>` one after another."""
    steps: list[dict[str, Any]] = []
    for index in range(count):
        step: dict[str, Any] = {"id": f"s{index}", "type": "wait_for_signal", "config": {"signal": f"s{index}"}}
        if index:
            step["depends_on"] = [f"s{index - 1}"]
        steps.append(step)
    return {"id": "wf_signals", "name": "signals", "version": 1, "steps": steps}


class Reads:
    """Counts the event-log reads of the watchers, by run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.by_run: Counter[str] = Counter()
        original = repo.list_events

        async def counted(session: Any, tenant_id: str, run_id: str, **kwargs: Any) -> Any:
            self.by_run[run_id] += 1
            return await original(session, tenant_id, run_id, **kwargs)

        monkeypatch.setattr(watch.repo, "list_events", counted)


async def _collect(harness: Harness, run_id: str, after_seq: int, into: list[int]) -> None:
    async for event in harness.engine.watch_run(TENANT, run_id, after_seq=after_seq):
        into.append(event.seq)  # noqa: PERF401  (the test reads `into` while the stream is open)


async def _settle(predicate: Any, within: float = 10.0) -> None:
    for _ in range(int(within / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_watchers_of_one_run_share_each_read_and_each_gets_every_event(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads(monkeypatch)
    run = await harness.run(signals(5))
    quiet = await harness.run(signals(1))
    seen: list[list[int]] = [[] for _ in range(20)]
    watchers = [asyncio.create_task(_collect(harness, run.id, 0, into)) for into in seen]
    idle: list[int] = []
    idle_watcher = asyncio.create_task(_collect(harness, quiet.id, 0, idle))
    history = len(await harness.engine.list_events(TENANT, run.id))
    await _settle(lambda: all(len(into) == history for into in seen) and len(idle) > 0)
    quiet_reads = reads.by_run[quiet.id]

    for index in range(5):
        await harness.engine.send_signal(TENANT, run.id, f"s{index}", index)
        await asyncio.sleep(0.02)
    await asyncio.wait_for(asyncio.gather(*watchers), 10)

    expected = [event.seq for event in await harness.events(run.id)]
    assert expected[-1] > history
    for into in seen:
        assert into == expected, "every watcher gets every event once, in order"
    # 20 watchers, 5 changes: a read per change (and a few for the start), not one per watcher.
    assert reads.by_run[run.id] <= 15, reads.by_run
    # Changes of another run wake nobody here: its watcher read nothing more.
    assert reads.by_run[quiet.id] == quiet_reads
    idle_watcher.cancel()


async def test_a_watcher_behind_the_shared_window_reads_history_then_joins_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness.engine._watcher, "config", watch.WatchConfig(batch_size=4, poll_seconds=1.0))
    run = await harness.run(signals(12))
    for index in range(10):
        await harness.engine.send_signal(TENANT, run.id, f"s{index}", index)
    early: list[int] = []
    late: list[int] = []
    ahead = asyncio.create_task(_collect(harness, run.id, 0, early))
    # `ahead` moves the shared feed (window of 8) past the first events first.
    total = len(await harness.engine.list_events(TENANT, run.id))
    await _settle(lambda: len(early) == total)
    behind = asyncio.create_task(_collect(harness, run.id, 1, late))
    await _settle(lambda: len(late) == total - 1)
    for index in (10, 11):
        await harness.engine.send_signal(TENANT, run.id, f"s{index}", index)
    await asyncio.wait_for(asyncio.gather(ahead, behind), 10)
    expected = [event.seq for event in await harness.events(run.id)]
    assert early == expected
    assert late == expected[1:]


async def test_a_watcher_takes_its_own_process_commits_without_reading_the_log(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Reads(monkeypatch)
    run = await harness.run(signals(5))
    seen: list[int] = []
    watcher = asyncio.create_task(_collect(harness, run.id, 0, seen))
    history = len(await harness.engine.list_events(TENANT, run.id))
    await _settle(lambda: len(seen) == history)
    before = reads.by_run[run.id]
    for index in range(5):
        await harness.engine.send_signal(TENANT, run.id, f"s{index}", index)
    await asyncio.wait_for(watcher, 10)
    assert reads.by_run[run.id] == before, "this engine's commits reach its watchers without a read of the log"
    assert seen == [event.seq for event in await harness.events(run.id)]


async def test_commits_of_another_process_in_between_are_read_from_the_log(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Engines A and B (two processes; one notifier stands for PostgreSQL's NOTIFY) take turns
    on a run that A's process watches: A's commits are handed over, B's read from the log, and
    the watcher gets every event once, in order."""
    engine = harness.engine
    other = ExecutionEngine(
        engine._db, engine._notifier, config=EngineConfig(watch_poll_seconds=1.0), rng=random.Random(8)
    )
    reads = Reads(monkeypatch)
    run = await harness.run(signals(6))
    seen: list[int] = []
    watcher = asyncio.create_task(_collect(harness, run.id, 0, seen))
    history = len(await engine.list_events(TENANT, run.id))
    await _settle(lambda: len(seen) == history)
    before = reads.by_run[run.id]
    for index in range(6):
        await (other if index % 2 else engine).send_signal(TENANT, run.id, f"s{index}", index)
    await asyncio.wait_for(watcher, 10)
    assert reads.by_run[run.id] > before, "B's commits come from the log"
    assert seen == [event.seq for event in await harness.events(run.id)]


async def test_events_handed_over_during_a_read_of_the_log_are_not_taken_twice(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await harness.run(signals(3))
    feed = watch._RunFeed(harness.engine._db, TENANT, run.id, keep=100, batch_size=100)
    first = await feed.after(0, max_age=60)
    assert first is not None
    cursor = feed.read_to
    assert cursor is not None
    release = asyncio.Event()
    original = repo.list_events

    async def held(*args: Any, **kwargs: Any) -> Any:
        found = await original(*args, **kwargs)
        await release.wait()
        return found

    # A read of the log starts (and finds the signal's events), then the engine's offer of the
    # same events lands before the read returns.
    await harness.engine.send_signal(TENANT, run.id, "s0", 0)
    fresh = [event for event in await harness.events(run.id) if event.seq > cursor]
    assert fresh
    monkeypatch.setattr(watch.repo, "list_events", held)
    feed.stale = True
    reading = asyncio.create_task(feed.after(cursor, max_age=60))
    await asyncio.sleep(0.05)
    assert not reading.done()
    feed.offer(fresh, finished=False, last_seq=fresh[-1].seq)
    release.set()
    taken = await asyncio.wait_for(reading, 10)
    assert taken is not None
    seqs = [event.seq for event in feed.events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "contiguous, each event once"
    assert feed.read_to == fresh[-1].seq
