"""Group commit: requests that arrive while a transaction is in flight share the next one.

A lone request is flushed at once (no timer, so a sequential chain pays no extra latency);
under load, requests queue behind the transactions in flight and are written together, in
multi-row statements and one commit (one fsync) for all of them. Up to `parallel` transactions
are in flight at once, so that building one batch overlaps with the database writing another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

Flush = Callable[[list[In]], Awaitable[Sequence[Out | BaseException]]]
"""Writes a batch; returns one outcome per request, in order (a result or the error to raise)."""


class GroupCommit(Generic[In, Out]):
    """Batches `submit` calls into `flush` calls of up to `max_batch` requests."""

    def __init__(self, flush: Flush[In, Out], *, max_batch: int = 128, parallel: int = 2) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._parallel = parallel
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._flushers: set[asyncio.Task[None]] = set()

    async def submit(self, request: In) -> Out:
        """Queues `request` and waits for the outcome of the transaction that wrote it. A
        cancelled caller stops waiting; its request is still written (like `Database.write`)."""
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if len(self._flushers) < self._parallel:
            flusher = asyncio.create_task(self._drain(), name="group-commit")
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            try:
                outcomes: Sequence[Out | BaseException] = await self._flush([request for request, _ in batch])
            except Exception as error:
                outcomes = [error] * len(batch)
            except BaseException:
                # Cancelled (the loop is closing): nobody will write these requests.
                for _, future in batch + self._pending:
                    future.cancel()
                raise
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
