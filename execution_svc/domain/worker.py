"""A worker: claims tasks, executes attempts, reports results, heartbeats its leases and reaps
the expired leases of others.

It sleeps until a notification (new ready tasks), the next due task, or a slow fallback poll,
whichever comes first; it never polls in a tight loop. After completing a step it runs the
steps that completion made ready straight away (eager dispatch), so a sequential chain needs
one transaction per step and no wake-up round trip. It also takes the first steps of runs
started in its process, in the transaction that starts them (eager start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from execution_svc.domain.models import RunError
from execution_svc.domain.ports import CANCEL_TOPIC, TASKS_TOPIC, StepExecutor, StepFailed, StepResult
from execution_svc.domain.service import Assignment, ExecutionEngine, StaleLeaseError

logger = logging.getLogger(__name__)

# When a due task could not be claimed (another worker holds its row), wait this long
# before trying again rather than spinning.
_BUSY_BACKOFF_SECONDS = 0.005


@dataclass(frozen=True)
class WorkerConfig:
    """Tunables of one worker."""

    concurrency: int = 64
    claim_batch: int = 32
    heartbeat_seconds: float = 10.0
    idle_poll_seconds: float = 2.0
    reap_seconds: float = 5.0
    purge_seconds: float = 3600.0


class Worker:
    """Executes the queue's tasks with up to `concurrency` attempts in flight."""

    def __init__(
        self,
        engine: ExecutionEngine,
        executor: StepExecutor,
        *,
        worker_id: str | None = None,
        config: WorkerConfig | None = None,
    ) -> None:
        self._engine = engine
        self._executor = executor
        self.worker_id = worker_id or f"wrk-{uuid.uuid4().hex[:12]}"
        self.config = config or WorkerConfig()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._chains: set[asyncio.Task[None]] = set()
        # The attempt each chain is executing right now, by task id, with its HTTP call.
        self._calls: dict[str, tuple[Assignment, asyncio.Task[StepResult]]] = {}
        # Every lease held, from claim until its result is recorded: heartbeats cover them
        # all, including the waits for the start and completion transactions.
        self._held: set[str] = set()
        self._in_flight = 0
        self._loops: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._stopping = False

    @property
    def in_flight(self) -> int:
        """Attempts being executed or reported."""
        return self._in_flight

    async def start(self) -> None:
        """Subscribes to wake-ups and cancellations, then starts the loops."""
        notifier = self._engine.notifier
        self._unsubscribe = [
            notifier.subscribe(TASKS_TOPIC, lambda _payload: self._wake.set()),
            notifier.subscribe(CANCEL_TOPIC, self._abort_run),
            self._engine.attach_worker(self),
        ]
        self._loops = [
            asyncio.create_task(self._claim_loop(), name=f"{self.worker_id}-claim"),
            asyncio.create_task(self._heartbeat_loop(), name=f"{self.worker_id}-heartbeat"),
            asyncio.create_task(self._maintenance_loop(), name=f"{self.worker_id}-maintenance"),
        ]

    async def stop(self, grace: float = 5.0) -> None:
        """Stops claiming, lets in-flight attempts finish for `grace` seconds, then abandons
        the rest (their leases expire and another worker takes them over)."""
        self._stopping = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for loop in self._loops:
            loop.cancel()
        if self._chains and grace > 0:
            await asyncio.wait(set(self._chains), timeout=grace)
        for chain in list(self._chains):
            chain.cancel()
        await asyncio.gather(*self._loops, *self._chains, return_exceptions=True)

    # --- claiming ---------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while not self._stopping:
            free = self.config.concurrency - self._in_flight
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._wake.clear()
            want = min(free, self.config.claim_batch)
            try:
                leases = await self._engine.claim_tasks(self.worker_id, want)
                # Reserve the slots before the start transaction so that eager dispatch from
                # timers does not overshoot the concurrency limit.
                self._in_flight += len(leases)
                self._held.update(lease.task_id for lease in leases)
                try:
                    assignments = await self._engine.start_tasks(leases, capacity=free - len(leases))
                finally:
                    self._in_flight -= len(leases)
                    self._held.difference_update(lease.task_id for lease in leases)
            except Exception:
                logger.exception("claiming tasks failed")
                await self._sleep(self.config.idle_poll_seconds)
                continue
            for assignment in assignments:
                self._spawn(assignment)
            if len(leases) >= want:
                continue  # the queue may hold more
            await self._sleep(await self._idle_timeout())

    async def _idle_timeout(self) -> float:
        try:
            due = await self._engine.next_due_at()
        except Exception:
            logger.exception("reading the next due task failed")
            return self.config.idle_poll_seconds
        if due is None:
            return self.config.idle_poll_seconds
        seconds = (due - self._engine.now()).total_seconds()
        return min(self.config.idle_poll_seconds, max(seconds, _BUSY_BACKOFF_SECONDS))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # --- eager start (see `EagerTaker`) -------------------------------------------------------

    def reserve(self, wanted: int) -> int:
        """Reserves up to `wanted` free slots for steps of runs being started."""
        if self._stopping:
            return 0
        reserved = max(0, min(wanted, self.config.concurrency - self._in_flight))
        self._in_flight += reserved
        return reserved

    def take(self, assignments: list[Assignment], reserved: int) -> None:
        """Executes steps leased to this worker when their runs started."""
        self._in_flight -= reserved
        if self._stopping:
            return  # their leases run out and another worker takes them over
        for assignment in assignments:
            self._spawn(assignment)
        if len(assignments) < reserved:
            self._slot_freed.set()

    # --- executing ---------------------------------------------------------------------------

    def _spawn(self, assignment: Assignment) -> None:
        self._in_flight += 1
        self._held.add(assignment.lease.task_id)
        chain = asyncio.create_task(self._run_chain(assignment), name=f"{self.worker_id}-{assignment.lease.step_id}")
        self._chains.add(chain)
        chain.add_done_callback(self._chain_done)

    def _chain_done(self, chain: asyncio.Task[None]) -> None:
        self._chains.discard(chain)
        self._in_flight -= 1
        self._slot_freed.set()

    async def _run_chain(self, first: Assignment) -> None:
        """Executes an attempt, reports it, and carries on with whatever the report handed
        back (eager dispatch); extra hand-backs get chains of their own."""
        current: Assignment | None = first
        while current is not None:
            try:
                result = await self._execute(current)
                if result is None:
                    return  # aborted: the run was cancelled or the lease lost
                # This chain's slot is reused by the first hand-back.
                capacity = self.config.concurrency - self._in_flight + 1
                follow_ups = await self._engine.complete_task(current, result, capacity=capacity)
            except StaleLeaseError as exc:
                logger.warning("result refused: %s", exc.message)
                return
            except Exception:
                logger.exception("recording a result failed; the lease will expire and the step be retried")
                return
            finally:
                self._held.discard(current.lease.task_id)
            self._held.update(follow_up.lease.task_id for follow_up in follow_ups)
            current = follow_ups[0] if follow_ups else None
            for extra in follow_ups[1:]:
                self._spawn(extra)

    async def _execute(self, assignment: Assignment) -> StepResult | None:
        call = asyncio.create_task(self._executor.execute(assignment.call))
        task_id = assignment.lease.task_id
        self._calls[task_id] = (assignment, call)
        started = time.monotonic()
        try:
            await asyncio.wait({call})
        finally:
            self._calls.pop(task_id, None)
            if not call.done():
                call.cancel()
        if call.cancelled():
            lease = assignment.lease
            logger.info("attempt aborted", extra={"run_id": lease.run_id, "step_id": lease.step_id})
            return None
        error = call.exception()
        if error is not None:
            logger.error("executor raised", exc_info=error)
            return StepFailed(RunError("EXECUTOR_ERROR", f"{type(error).__name__}: {error}"), retryable=True)
        logger.debug("attempt done", extra={"seconds": time.monotonic() - started})
        return call.result()

    def _abort_run(self, run_id: str) -> None:
        for assignment, call in list(self._calls.values()):
            if assignment.lease.run_id == run_id:
                call.cancel()

    # --- leases -------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            held_ids = list(self._held)
            if not held_ids:
                continue
            try:
                still_held = await self._engine.extend_leases(self.worker_id, held_ids)
            except Exception:
                logger.exception("heartbeat failed")
                continue
            for task_id in held_ids:
                if task_id not in still_held and task_id in self._calls:
                    # Someone else may run it now; our result would be refused anyway.
                    logger.warning("lease lost, aborting attempt", extra={"task_id": task_id})
                    self._calls[task_id][1].cancel()

    async def _maintenance_loop(self) -> None:
        last_purge = time.monotonic()
        while True:
            await asyncio.sleep(self.config.reap_seconds)
            try:
                await self._engine.requeue_expired_leases()
                if time.monotonic() - last_purge >= self.config.purge_seconds:
                    await self._engine.purge_idempotency_keys()
                    last_purge = time.monotonic()
            except Exception:
                logger.exception("maintenance failed")
