"""The bounded memo behind rendered workflow versions, watch responses and SSE frames."""

from __future__ import annotations

from flowforge_common.memo import Memo


def test_each_value_is_made_once_while_it_is_among_the_most_recent() -> None:
    made: list[str] = []

    def make(key: str) -> str:
        made.append(key)
        return key.upper()

    memo: Memo[str, str] = Memo(max_entries=2)
    assert [memo.get(k, lambda k=k: make(k)) for k in ("a", "b", "a", "c", "a", "b")] == list("ABACAB")
    # "a" was used again before "c" came, so "b" went out first and was made again.
    assert made == ["a", "b", "c", "b"]
    assert len(memo) == 2


def test_a_memo_of_size_zero_remembers_nothing() -> None:
    calls = []
    memo: Memo[int, int] = Memo(max_entries=0)
    for _ in range(3):
        memo.get(1, lambda: calls.append(1) or 1)
    assert len(calls) == 3 and len(memo) == 0
