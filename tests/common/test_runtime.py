"""Garbage-collector tuning of the service processes."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from flowforge_common.runtime import tune_gc
from flowforge_common.settings import CommonSettings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tuning_freezes_what_is_alive_and_raises_the_young_threshold(restored_gc: None) -> None:
    older = gc.get_threshold()[1:]
    tune_gc(25_000)
    assert gc.get_threshold() == (25_000, *older)
    assert gc.get_freeze_count() > 0


def test_zero_keeps_the_interpreter_defaults(restored_gc: None) -> None:
    before = gc.get_threshold()
    tune_gc(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_threshold_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CommonSettings().gc_threshold == 50_000
    monkeypatch.setenv("FLOWFORGE_GC_THRESHOLD", "0")
    assert CommonSettings().gc_threshold == 0
