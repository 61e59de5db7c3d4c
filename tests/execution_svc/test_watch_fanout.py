"""Many watchers cost little more than their runs: the WatchRun watchers of one run share one
read of the log per change, and a change wakes only the watchers of its run; every watcher
still gets every event exactly once, in order, from wherever its cursor is."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from execution_svc.db import repository as repo
from execution_svc.domain import watch
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
