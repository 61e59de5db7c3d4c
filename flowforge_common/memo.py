"""A bounded memo for values that never change once made (a workflow version's message, a
committed event's message or SSE frame): each is made once per key while it is among the most
recently used."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """Values by key, least recently used out first; `max_entries` 0 remembers nothing. Only for
    values that the key fully determines and that callers never change."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max_entries = max_entries
        self._values: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The value of `key`, made by `make` when it is not remembered."""
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
            return value
        value = make()
        if self._max_entries > 0:
            self._values[key] = value
            while len(self._values) > self._max_entries:
                self._values.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._values)
