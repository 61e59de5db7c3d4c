"""The WatchEvents horizon: how far the event log may be delivered past holes in its positions."""

from __future__ import annotations

import datetime as dt

from execution_svc.domain.watch import advance_horizon

NOW = dt.datetime(2026, 1, 15, 10, 30, tzinfo=dt.UTC)


def marks(*positions: int, age: float = 0.0) -> list[tuple[int, dt.datetime]]:
    return [(p, NOW - dt.timedelta(seconds=age)) for p in positions]


def test_contiguous_positions_are_delivered() -> None:
    assert advance_horizon(10, marks(11, 12, 13), {}, now=0.0, wall_now=NOW, gap_seconds=5) == (13, None)


def test_a_young_hole_holds_the_stream_back_until_it_fills_or_ages() -> None:
    gaps: dict[int, float] = {}
    horizon, wait = advance_horizon(10, marks(11, 13, 14), gaps, now=100.0, wall_now=NOW, gap_seconds=5)
    assert (horizon, wait) == (11, 5.0) and gaps == {12: 100.0}
    # Still missing two seconds later: still held, less to wait.
    assert advance_horizon(11, marks(13, 14), gaps, now=102.0, wall_now=NOW, gap_seconds=5) == (11, 3.0)
    # The transaction commits: the hole is gone and forgotten.
    assert advance_horizon(11, marks(12, 13, 14), gaps, now=103.0, wall_now=NOW, gap_seconds=5) == (14, None)
    assert gaps == {}


def test_a_hole_waited_for_long_enough_is_stepped_over() -> None:
    gaps = {12: 100.0}
    assert advance_horizon(11, marks(13), gaps, now=105.0, wall_now=NOW, gap_seconds=5) == (13, None)


def test_a_hole_before_an_old_event_is_permanent_at_once() -> None:
    # A resuming reader meets a rolled-back insert from long ago: no waiting.
    assert advance_horizon(0, marks(1, 3, 4, age=60), {}, now=0.0, wall_now=NOW, gap_seconds=5) == (4, None)


def test_nothing_new() -> None:
    assert advance_horizon(7, [], {}, now=0.0, wall_now=NOW, gap_seconds=5) == (7, None)
