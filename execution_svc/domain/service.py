"""The execution engine's use cases. Each one is a single transaction: lock the run, let the
scheduler decide, write every change (state, event, queue) atomically, then notify.

Two kinds of callers use it: the API (start runs, read them, operator controls) and workers
(claim, start, complete, heartbeat, reap). Tenancy: API calls name their tenant; worker calls
carry the tenant of the task they hold.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import random
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import jsonschema
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from execution_svc.db import repository as repo
from execution_svc.db.session import Database
from execution_svc.domain.batching import GroupCommit
from execution_svc.domain.definition import WorkflowDef, parse_workflow
from execution_svc.domain.expressions import Expressions, SharedExpressions
from execution_svc.domain.models import (
    STEP_ROW,
    EventRecord,
    ExpiredTask,
    LoggedEvent,
    RunFilter,
    RunPage,
    RunRecord,
    RunStatus,
    RunView,
    StepKey,
    StepRecord,
    StepView,
    TaskKind,
    TaskLease,
    TaskState,
    Trigger,
)
from execution_svc.domain.ports import (
    CANCEL_TOPIC,
    EVENTS_TOPIC,
    TASKS_TOPIC,
    Clock,
    Notifier,
    StepCall,
    StepResult,
)
from execution_svc.domain.scheduler import RunScheduler
from execution_svc.domain.state import InvariantError, ReleaseRunTasks, RunState, UpsertTask
from execution_svc.domain.views import run_view, run_view_from_json, run_view_to_json, step_views
from execution_svc.domain.watch import EventFilter, EventStream, EventWatcher, WatchConfig
from flowforge_common.errors import ConflictError, DomainError, FieldViolation, NotFoundError, ValidationError
from flowforge_common.ids import new_id
from flowforge_common.orm import utcnow
from flowforge_common.pagination import clamp_limit, decode_page_token, encode_page_token

logger = logging.getLogger(__name__)

T = TypeVar("T")

IDEMPOTENCY_TTL = dt.timedelta(hours=24)


class StaleLeaseError(ConflictError):
    """A worker reported on a task it no longer holds (its lease expired or was taken over);
    the result is refused so it cannot overwrite a newer attempt."""

    reason = "STALE_LEASE"


@dataclass(frozen=True)
class EngineConfig:
    """Tunables of the engine."""

    max_output_bytes: int = 1024 * 1024
    lease_seconds: float = 30.0
    watch_poll_seconds: float = 5.0
    watch_buffer_events: int = 256
    watch_stall_seconds: float = 30.0
    watch_gap_seconds: float = 5.0
    definition_cache_size: int = 1024
    # Runs whose last written state this engine keeps, to skip re-reading them (see `_load`).
    state_cache_size: int = 4096


@dataclass(frozen=True)
class Assignment:
    """A started attempt a worker must execute: the lease it holds and the call to make."""

    lease: TaskLease
    call: StepCall


class EagerTaker(Protocol):
    """A worker in this process that takes new runs' first remote steps in the transaction
    that starts them (eager start: no wake-up, claim and start transactions before the first
    call). Attached with `ExecutionEngine.attach_worker`."""

    @property
    def worker_id(self) -> str:
        """The lease owner of the steps it takes."""
        ...

    def reserve(self, wanted: int) -> int:
        """Reserves up to `wanted` of its free slots; returns how many it reserved."""
        ...

    def take(self, assignments: list[Assignment], reserved: int) -> None:
        """Executes `assignments` (leased to it and committed) and frees the slots of the
        `reserved` that they do not use."""
        ...


class ExecutionEngine:
    """Runs, controls and the worker protocol, over one database."""

    def __init__(
        self,
        database: Database,
        notifier: Notifier,
        *,
        expressions: Expressions | None = None,
        clock: Clock = utcnow,
        config: EngineConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._db = database
        self._notifier = notifier
        self._expressions: Expressions = expressions or SharedExpressions()
        self._clock = clock
        self.config = config or EngineConfig()
        self._rng = rng or random.Random()
        self._definitions: OrderedDict[str, WorkflowDef] = OrderedDict()
        # Run id -> (run, step rows) as this engine last committed them; see `_load`.
        self._states: OrderedDict[str, tuple[RunRecord, list[StepRecord]]] = OrderedDict()
        self._starts: GroupCommit[_StartRequest, RunView] = GroupCommit(self._start_runs)
        self._takers: list[EagerTaker] = []
        self._completions: GroupCommit[_Completion, list[Assignment]] = GroupCommit(self._complete_tasks)
        self._watcher = EventWatcher(
            database,
            notifier,
            WatchConfig(
                poll_seconds=self.config.watch_poll_seconds,
                buffer_events=self.config.watch_buffer_events,
                stall_seconds=self.config.watch_stall_seconds,
                gap_seconds=self.config.watch_gap_seconds,
            ),
            clock=clock,
        )

    @property
    def notifier(self) -> Notifier:
        """The notifier the engine publishes on (workers subscribe to the same one)."""
        return self._notifier

    def now(self) -> dt.datetime:
        """The engine's clock."""
        return self._clock()

    def attach_worker(self, taker: EagerTaker) -> Callable[[], None]:
        """Lets `taker` take the first remote steps of runs this engine starts; returns the
        function that detaches it."""
        self._takers.append(taker)

        def detach() -> None:
            if taker in self._takers:
                self._takers.remove(taker)

        return detach

    def _reserve_taker(self, definitions: Iterable[WorkflowDef]) -> tuple[EagerTaker | None, int]:
        """The attached worker that takes the root steps of runs of `definitions` at start,
        with the slots it reserved for them (round robin over the attached workers)."""
        wanted = sum(1 for definition in definitions for step in definition.steps if not step.depends_on)
        for _ in range(len(self._takers) if wanted else 0):
            taker = self._takers.pop(0)
            self._takers.append(taker)
            reserved = taker.reserve(wanted)
            if reserved > 0:
                return taker, reserved
        return None, 0

    def _dispatch_at_start(
        self, schedulers: Sequence[RunScheduler], taker: EagerTaker | None, room: int, now: dt.datetime
    ) -> list[tuple[RunScheduler, list[StepKey]]]:
        eager: list[tuple[RunScheduler, list[StepKey]]] = []
        for scheduler in schedulers:
            if taker is None or room <= 0:
                break
            keys = self._dispatch_eagerly(scheduler, taker.worker_id, room, now)
            room -= len(keys)
            eager.append((scheduler, keys))
        return eager

    # =====================================================================================
    # Runs
    # =====================================================================================

    async def start_run(
        self,
        tenant_id: str,
        workflow: Mapping[str, Any],
        run_input: Any,
        *,
        trigger: Trigger = Trigger.API,
        triggered_by: str = "",
        idempotency_key: str = "",
        requested_version: int | None = None,
        parent_run_id: str | None = None,
        parent_step_id: str | None = None,
    ) -> RunView:
        """Snapshots `workflow` (the version's JSON definition, with `id`, `name`, `version`)
        into a new run, checks `run_input` against its `input_schema`, writes
        `workflow.started` and starts the root steps (pure ones inline).

        With `idempotency_key`, the request is fingerprinted as the caller sent it (workflow,
        `requested_version` or None for "latest", input): a repeat replays the first answer
        even if a newer version was saved in between."""
        definition = parse_workflow(workflow)
        _check_input(definition, run_input)
        request = _StartRequest(
            tenant_id=tenant_id,
            definition=definition,
            snapshot=json.loads(json.dumps(dict(workflow))),
            run_input=run_input,
            trigger=trigger,
            triggered_by=triggered_by,
            parent_run_id=parent_run_id,
            parent_step_id=parent_step_id,
        )
        if not idempotency_key:
            # Concurrent starts share one transaction (group commit).
            return await self._starts.submit(request)
        request_hash = _hash("start_run", definition.id, requested_version, run_input)

        async def work(session: AsyncSession) -> tuple[RunView, list[RunState]]:
            handed.clear()
            replay = await self._replay(session, tenant_id, idempotency_key, request_hash)
            if replay is not None:
                return replay, []
            now = self._clock()
            scheduler = self._new_run(request, now)
            eager = self._dispatch_at_start([scheduler], taker, reserved, now)
            leased = await repo.save_state(session, scheduler.state)
            handed.extend(a for started, keys in eager for a in self._assign(started, leased, keys))
            view = self._started_view(scheduler)
            await self._remember_answer(session, tenant_id, idempotency_key, request_hash, view, now)
            return view, [scheduler.state]

        taker, reserved = self._reserve_taker([definition])
        handed: list[Assignment] = []
        try:
            return await self._write_and_publish(work)
        except BaseException:
            handed.clear()
            raise
        finally:
            if taker is not None:
                taker.take(handed, reserved)

    def _new_run(self, request: _StartRequest, now: dt.datetime) -> RunScheduler:
        """A new run's scheduler, started: `workflow.started` and its root steps."""
        definition = request.definition
        run = RunRecord(
            id=new_id("run"),
            tenant_id=request.tenant_id,
            workflow_id=definition.id,
            workflow_name=definition.name,
            workflow_version=definition.version,
            workflow=request.snapshot,
            status=RunStatus.PENDING,
            input=request.run_input,
            trigger=request.trigger,
            triggered_by=request.triggered_by,
            parent_run_id=request.parent_run_id,
            parent_step_id=request.parent_step_id,
            created_at=now,
            updated_at=now,
        )
        self._remember(run.id, definition)
        state = RunState.load(run, [], new=True)
        for step in definition.steps:
            state.add_row(StepRecord(run_id=run.id, step_id=step.id, item_index=STEP_ROW))
        scheduler = self._scheduler(state, now)
        scheduler.start()
        return scheduler

    @staticmethod
    def _started_view(scheduler: RunScheduler) -> RunView:
        state = scheduler.state
        return run_view(state.run, step_views(state.run, state.rows.values()))

    async def _start_runs(self, requests: list[_StartRequest]) -> list[RunView | BaseException]:
        """Starts a batch of runs in one transaction; if it fails, each run on its own, so
        that one bad request fails alone."""

        async def work(session: AsyncSession) -> tuple[list[RunView], list[RunState]]:
            handed.clear()
            now = self._clock()
            schedulers = [self._new_run(request, now) for request in requests]
            eager = self._dispatch_at_start(schedulers, taker, reserved, now)
            states = [scheduler.state for scheduler in schedulers]
            leased = await repo.save_states(session, states)
            handed.extend(a for scheduler, keys in eager for a in self._assign(scheduler, leased, keys))
            return [self._started_view(scheduler) for scheduler in schedulers], states

        taker, reserved = self._reserve_taker(request.definition for request in requests)
        handed: list[Assignment] = []
        try:
            return list(await self._write_and_publish(work))
        except Exception as error:
            handed.clear()
            if len(requests) == 1:
                return [error]
        finally:
            if taker is not None:
                taker.take(handed, reserved)
        outcomes: list[RunView | BaseException] = []
        for request in requests:
            outcomes += await self._start_runs([request])
        return outcomes

    async def get_run(self, tenant_id: str, run_id: str) -> RunView:
        """A run with a summary of its steps."""
        if self._db.is_postgres:
            async with self._db.autocommit() as connection:
                found = await repo.get_run_with_steps(connection, tenant_id, run_id)
            if found is None:
                raise NotFoundError(f"run {run_id} not found")
            run, rows, order = found
            return run_view(run, step_views(run, rows, order=order))
        async with self._db.read() as session:
            run = await self._get_run(session, tenant_id, run_id)
            rows = await repo.load_steps(session, tenant_id, run_id)
        return run_view(run, step_views(run, rows))

    async def list_steps(self, tenant_id: str, run_id: str) -> tuple[StepView, ...]:
        """A run's steps in definition order, with attempts and `for_each` items."""
        async with self._db.read() as session:
            run = await self._get_run(session, tenant_id, run_id)
            rows = await repo.load_steps(session, tenant_id, run_id)
            attempts = await repo.load_attempts(session, tenant_id, run_id)
        return step_views(run, rows, attempts)

    async def list_runs(
        self, tenant_id: str, filters: RunFilter | None = None, *, limit: int = 0, page_token: str = ""
    ) -> RunPage:
        """Runs newest first with cursor pagination (stable while runs are added)."""
        size = clamp_limit(limit)
        position = decode_page_token(page_token)
        before = str(position["before"]) if position and "before" in position else None
        async with self._db.read() as session:
            records = await repo.list_runs(
                session, tenant_id, filters or RunFilter(), limit=size + 1, before_id=before
            )
        page = records[:size]
        token = encode_page_token({"before": page[-1].id}) if len(records) > size else ""
        return RunPage(items=tuple(run_view(record) for record in page), next_page_token=token)

    async def list_events(
        self, tenant_id: str, run_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        """A run's events after `after_seq`, in seq order."""
        async with self._db.read() as session:
            events = await repo.list_events(session, tenant_id, run_id, after_seq=after_seq, limit=limit)
            if not events and after_seq == 0:
                await self._get_run(session, tenant_id, run_id)
        return events

    async def watch_run(self, tenant_id: str, run_id: str, *, after_seq: int = 0) -> AsyncIterator[EventRecord]:
        """History after `after_seq`, then live events, in seq order; ends after a terminal
        event that is the run's latest (see `EventWatcher.open_run`)."""
        stream = await self.open_run_watch(tenant_id, run_id, after_seq=after_seq)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def open_run_watch(self, tenant_id: str, run_id: str, *, after_seq: int = 0) -> EventStream[EventRecord]:
        """A WatchRun stream; NotFoundError before any event for an unknown run."""
        return await self._watcher.open_run(tenant_id, run_id, after_seq=after_seq)

    async def open_events_watch(
        self, tenant_id: str, filters: EventFilter, *, after_cursor: int = 0
    ) -> EventStream[LoggedEvent]:
        """A WatchEvents stream of the tenant's event log (see `EventWatcher.open_events`)."""
        return await self._watcher.open_events(tenant_id, filters, after_cursor=after_cursor)

    # =====================================================================================
    # Operator controls
    # =====================================================================================

    async def cancel_run(self, tenant_id: str, run_id: str, *, actor: str = "", idempotency_key: str = "") -> RunView:
        """Cancels a run; in-flight attempts are aborted and unfinished child runs
        (`sub_workflow`) are cancelled too. ConflictError on a finished run."""
        view = await self._control(tenant_id, run_id, "cancel", {}, idempotency_key, lambda s: s.cancel(actor))
        # The waiting attempt cancels its child when it is aborted; this also reaches children
        # whose parent attempt no worker holds right now (a crashed worker, a lost lease).
        async with self._db.read() as session:
            children = await repo.unfinished_child_runs(session, tenant_id, run_id)
        for child_id in children:
            with contextlib.suppress(ConflictError, NotFoundError):
                await self.cancel_run(tenant_id, child_id, actor=actor or f"run:{run_id}")
        return view

    async def pause_run(self, tenant_id: str, run_id: str, *, actor: str = "", idempotency_key: str = "") -> RunView:
        """Pauses a run: running steps finish, no new step starts."""
        return await self._control(tenant_id, run_id, "pause", {}, idempotency_key, lambda s: s.pause(actor))

    async def resume_run(self, tenant_id: str, run_id: str, *, actor: str = "", idempotency_key: str = "") -> RunView:
        """Resumes a paused run."""
        return await self._control(tenant_id, run_id, "resume", {}, idempotency_key, lambda s: s.resume(actor))

    async def retry_run(self, tenant_id: str, run_id: str, *, actor: str = "", idempotency_key: str = "") -> RunView:
        """Re-runs what did not succeed in a failed or cancelled run (same run id)."""
        return await self._control(tenant_id, run_id, "retry", {}, idempotency_key, lambda s: s.retry_run(actor))

    async def retry_step(
        self, tenant_id: str, run_id: str, step_id: str, *, actor: str = "", idempotency_key: str = ""
    ) -> RunView:
        """Re-runs one finished step and what depends on it."""
        return await self._control(
            tenant_id, run_id, "retry_step", {"step_id": step_id}, idempotency_key,
            lambda s: s.retry_step(step_id, actor),
        )

    async def complete_step(
        self, tenant_id: str, run_id: str, step_id: str, output: Any, *, actor: str = "", idempotency_key: str = ""
    ) -> RunView:
        """Resolves a failed or waiting step by hand with `output`; the run goes on."""
        return await self._control(
            tenant_id, run_id, "complete_step", {"step_id": step_id, "output": output}, idempotency_key,
            lambda s: s.complete_step(step_id, output, actor), one_statement=True,
        )

    async def send_signal(
        self, tenant_id: str, run_id: str, name: str, payload: Any, *, actor: str = "", idempotency_key: str = ""
    ) -> RunView:
        """Delivers signal `name` to the steps waiting for it."""
        return await self._control(
            tenant_id, run_id, "signal", {"name": name, "payload": payload}, idempotency_key,
            lambda s: s.signal(name, payload, actor), one_statement=True,
        )

    # =====================================================================================
    # Worker protocol
    # =====================================================================================

    async def claim_tasks(self, owner: str, limit: int) -> list[TaskLease]:
        """Leases up to `limit` due tasks to `owner` (one short transaction, no run locks)."""
        if limit <= 0:
            return []

        async def work(session: AsyncSession) -> list[TaskLease]:
            now = self._clock()
            return await repo.claim_ready_tasks(
                session, owner=owner, limit=limit, now=now, lease_until=self._lease_until(now)
            )

        return await self._db.write(work)

    async def next_due_at(self) -> dt.datetime | None:
        """When the earliest ready task becomes due."""
        async with self._db.read() as session:
            return await repo.next_due_at(session)

    async def start_tasks(self, leases: list[TaskLease], *, capacity: int = 0) -> list[Assignment]:
        """Starts attempts for claimed `execute` tasks and fires claimed timers, run by run in
        one transaction. Tasks of paused runs are parked, stale ones dropped. Returns what
        the worker must execute (up to `capacity` extra steps made ready by timers are
        dispatched to it eagerly)."""
        if not leases:
            return []
        by_run: dict[tuple[str, str], list[TaskLease]] = defaultdict(list)
        for lease in leases:
            by_run[(lease.run_id, lease.tenant_id)].append(lease)
        owner = leases[0].owner

        async def work(session: AsyncSession) -> tuple[list[Assignment], list[RunState]]:
            now = self._clock()
            runs = [(tenant_id, run_id) for run_id, tenant_id in by_run]
            loaded, current = await self._load_many(session, runs, now, leases)
            started: list[tuple[TaskLease, StepCall]] = []
            schedulers: list[RunScheduler] = []
            eager: list[tuple[RunScheduler, list[StepKey]]] = []
            # Sorted run ids: concurrent batches decide (and lock tasks) in one global order.
            for run_id, tenant_id in sorted(by_run):
                if run_id not in loaded:
                    continue  # the run is gone: so are its tasks
                scheduler = loaded[run_id]
                for lease in by_run[(run_id, tenant_id)]:
                    if lease.task_id not in current:
                        continue
                    if lease.kind is TaskKind.EXECUTE:
                        if scheduler.begin_attempt(lease.key):
                            started.append((lease, scheduler.step_call(lease.key)))
                    else:
                        scheduler.fire_timer(lease.key, lease.kind)
                room = capacity - len(started) - sum(len(keys) for _, keys in eager)
                eager.append((scheduler, self._dispatch_eagerly(scheduler, owner, room, now)))
                schedulers.append(scheduler)
            states = [scheduler.state for scheduler in schedulers]
            leased = await repo.save_states(session, states)
            assignments = [Assignment(lease, call) for lease, call in started]
            for scheduler, keys in eager:
                assignments += self._assign(scheduler, leased, keys)
            return assignments, states

        return await self._write_and_publish(work)

    async def complete_task(self, assignment: Assignment, result: StepResult, *, capacity: int = 0) -> list[Assignment]:
        """Records an attempt's result, its event and the steps it makes ready, in one
        transaction. Up to `capacity` newly ready remote steps are leased to the same worker
        and returned (eager dispatch). StaleLeaseError when the lease is no longer current.

        Results reported while another is being written share the next transaction (group
        commit, see `complete_tasks`)."""
        return await self._completions.submit(_Completion(assignment, result, capacity))

    async def _complete_tasks(self, completions: list[_Completion]) -> list[list[Assignment] | BaseException]:
        """One transaction for a batch of results; if it fails, each result on its own.

        PostgreSQL, when this engine committed every run of the batch last (its kept states
        are current): the results are applied to the kept states and written by one gated,
        self-committing statement (`repo.save_states_if_current`), one round trip in all.
        When the gate stays shut (another engine changed a run, a lease moved on), nothing was
        written and the batch takes the locking path below."""
        by_run: dict[tuple[str, str], list[int]] = defaultdict(list)
        for index, completion in enumerate(completions):
            lease = completion.assignment.lease
            by_run[(lease.run_id, lease.tenant_id)].append(index)
        if self._db.is_postgres:
            done = await self._complete_if_current(completions, by_run)
            if done is not None:
                return done

        async def work(session: AsyncSession) -> tuple[list[list[Assignment] | BaseException], list[RunState]]:
            now = self._clock()
            runs = [(tenant_id, run_id) for run_id, tenant_id in by_run]
            loaded, current = await self._load_many(session, runs, now, [c.assignment.lease for c in completions])
            outcomes, schedulers = self._apply_completions(completions, by_run, loaded, current, now)
            states = [scheduler.state for scheduler, _, _ in schedulers]
            leased = await repo.save_states(session, states)
            for scheduler, index, keys in schedulers:
                outcomes[index] = self._assign(scheduler, leased, keys)
            return outcomes, states

        try:
            return await self._write_and_publish(work)
        except Exception as error:
            if len(completions) == 1:
                return [error]
        outcomes: list[list[Assignment] | BaseException] = []
        for completion in completions:
            outcomes += await self._complete_tasks([completion])
        return outcomes

    def _apply_completions(
        self,
        completions: list[_Completion],
        by_run: dict[tuple[str, str], list[int]],
        loaded: dict[str, RunScheduler],
        current: set[str],
        now: dt.datetime,
    ) -> tuple[list[list[Assignment] | BaseException], list[tuple[RunScheduler, int, list[StepKey]]]]:
        """Applies each result whose lease is in `current` to its run's scheduler and leases
        newly ready steps to the reporting worker (eager dispatch). Returns each completion's
        outcome so far (StaleLeaseError for a refused one) and, per run changed, its scheduler,
        the completion that takes its eager steps, and those steps."""
        # Each worker's report counts its own slot plus the free ones, which they all share.
        room = max(completion.capacity for completion in completions) + len(completions) - 1
        outcomes: list[list[Assignment] | BaseException] = [[] for _ in completions]
        schedulers: list[tuple[RunScheduler, int, list[StepKey]]] = []
        for run_id, tenant_id in sorted(by_run):
            scheduler = loaded.get(run_id)
            first_taker = -1
            for index in by_run[(run_id, tenant_id)]:
                assignment, result = completions[index].assignment, completions[index].result
                lease = assignment.lease
                if scheduler is None or lease.task_id not in current:
                    outcomes[index] = StaleLeaseError(
                        f"task {lease.task_id} ({lease.step_id}) is no longer leased under token "
                        f"{lease.token}: its lease expired or another worker took it over; "
                        "the result is refused"
                    )
                    continue
                scheduler.complete_attempt(lease.key, assignment.call.attempt, result)
                first_taker = index if first_taker < 0 else first_taker
            if scheduler is not None and first_taker >= 0:
                owner = completions[first_taker].assignment.lease.owner
                keys = self._dispatch_eagerly(scheduler, owner, room, now)
                room -= len(keys)
                schedulers.append((scheduler, first_taker, keys))
        return outcomes, schedulers

    async def _complete_if_current(
        self, completions: list[_Completion], by_run: dict[tuple[str, str], list[int]]
    ) -> list[list[Assignment] | BaseException] | None:
        """The one-round-trip path of `_complete_tasks`; None when it does not apply or its
        gate stayed shut (then nothing was written and no kept state is left behind)."""
        if not all(self._kept(tenant_id, run_id) for run_id, tenant_id in by_run):
            return None
        now = self._clock()
        loaded = {run_id: self._take_kept(run_id, now) for run_id, _ in by_run}
        leases = [completion.assignment.lease for completion in completions]
        try:
            outcomes, schedulers = self._apply_completions(
                completions, by_run, loaded, {lease.task_id for lease in leases}, now
            )
        except InvariantError:
            return None  # a result for an attempt the kept state has moved past: a stale lease
        states = [scheduler.state for scheduler, _, _ in schedulers]
        if len(states) != len(by_run):
            return None
        leased = await self._save_if_current(states, leases, now)
        if leased is None:
            return None
        for scheduler, index, keys in schedulers:
            outcomes[index] = self._assign(scheduler, leased, keys)
        return outcomes

    def _kept(self, tenant_id: str, run_id: str) -> bool:
        """Whether this engine kept the state it last committed of the tenant's run."""
        cached = self._states.get(run_id)
        return cached is not None and cached[0].tenant_id == tenant_id

    def _take_kept(self, run_id: str, now: dt.datetime) -> RunScheduler:
        """A scheduler over the kept state of `run_id`, taken out of the keep: if the
        transaction that uses it fails half-way, the next one reads the run."""
        run, rows = self._states.pop(run_id)
        run.updated_at = now
        return self._scheduler(RunState.load(run, rows), now)

    async def _save_if_current(
        self, states: list[RunState], leases: Sequence[TaskLease], now: dt.datetime
    ) -> list[TaskLease] | None:
        """Writes states computed from kept ones by the gated one-statement save
        (`repo.save_states_if_current`), then keeps and publishes them; returns the eagerly
        dispatched leases. None when the states do not fit one statement, the gate stayed shut
        or the statement failed: nothing was written, and the caller takes the locking path."""
        if not repo.fits_one_statement(states):
            return None
        try:
            async with self._db.autocommit() as connection:
                leased = await repo.save_states_if_current(connection, states, leases, now)
        except Exception:
            logger.debug("the one-statement save failed; taking the locking path", exc_info=True)
            return None
        if leased is None:
            return None
        self._keep(states)
        await self._publish(states)
        return leased

    async def extend_leases(self, owner: str, task_ids: list[str]) -> set[str]:
        """Heartbeat for `owner`'s tasks; returns the ids it still holds."""

        async def work(session: AsyncSession) -> set[str]:
            now = self._clock()
            return await repo.extend_leases(
                session, owner=owner, task_ids=task_ids, now=now, lease_until=self._lease_until(now)
            )

        return await self._db.write(work)

    async def requeue_expired_leases(self, limit: int = 200) -> int:
        """Puts tasks whose lease ran out back in the queue (through the scheduler, so the
        lost attempt is recorded); returns how many."""
        async with self._db.read() as session:
            expired = await repo.find_expired_leases(session, now=self._clock(), limit=limit)
        by_run: dict[tuple[str, str], list[ExpiredTask]] = defaultdict(list)
        for task in expired:
            by_run[(task.run_id, task.tenant_id)].append(task)
        requeued = 0
        for (run_id, tenant_id), group in sorted(by_run.items()):

            async def work(
                session: AsyncSession, run_id: str = run_id, tenant_id: str = tenant_id,
                group: list[ExpiredTask] = group,
            ) -> tuple[int, list[RunState]]:
                now = self._clock()
                state, scheduler = await self._load(session, tenant_id, run_id, now)
                count = 0
                for task in sorted(group, key=lambda t: (t.step_id, t.item_index)):
                    if await repo.lease_has_expired(session, task, now):
                        scheduler.lease_expired((task.step_id, task.item_index), task.kind)
                        count += 1
                await repo.save_state(session, state)
                return count, [state]

            requeued += await self._write_and_publish(work)
        if requeued:
            logger.warning("requeued %d tasks whose lease expired", requeued)
        return requeued

    async def purge_idempotency_keys(self) -> int:
        """Forgets idempotency keys older than 24 h."""

        async def work(session: AsyncSession) -> int:
            return await repo.purge_idempotency_keys(session, before=self._clock() - IDEMPOTENCY_TTL)

        return await self._db.write(work)

    # =====================================================================================
    # Internals
    # =====================================================================================

    def _lease_until(self, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(seconds=self.config.lease_seconds)

    def _remember(self, run_id: str, definition: WorkflowDef) -> None:
        self._definitions[run_id] = definition
        self._definitions.move_to_end(run_id)
        while len(self._definitions) > self.config.definition_cache_size:
            self._definitions.popitem(last=False)

    def _definition(self, run: RunRecord) -> WorkflowDef:
        # Snapshots never change, so a parsed one serves every later transaction of the run.
        definition = self._definitions.get(run.id)
        if definition is None:
            definition = parse_workflow(run.workflow)
            self._remember(run.id, definition)
        return definition

    def _scheduler(self, state: RunState, now: dt.datetime) -> RunScheduler:
        return RunScheduler(
            state,
            self._definition(state.run),
            self._expressions,
            now=now,
            rng=self._rng,
            max_output_bytes=self.config.max_output_bytes,
        )

    async def _get_run(self, session: AsyncSession, tenant_id: str, run_id: str) -> RunRecord:
        run = await repo.get_run(session, tenant_id, run_id)
        if run is None:
            raise NotFoundError(f"run {run_id} not found")
        return run

    async def _load(
        self, session: AsyncSession, tenant_id: str, run_id: str, now: dt.datetime
    ) -> tuple[RunState, RunScheduler]:
        """Locks one run and builds its state (see `_load_many`); NotFoundError if missing."""
        scheduler = (await self._load_many(session, [(tenant_id, run_id)], now))[0].get(run_id)
        if scheduler is None:
            raise NotFoundError(f"run {run_id} not found")
        return scheduler.state, scheduler

    async def _load_many(
        self,
        session: AsyncSession,
        keys: list[tuple[str, str]],
        now: dt.datetime,
        leases: Sequence[TaskLease] = (),
    ) -> tuple[dict[str, RunScheduler], set[str]]:
        """Locks runs, given as (tenant_id, run_id), in the global lock order and builds a
        scheduler over each one's state (missing runs are left out); then locks the tasks of
        `leases` and returns the ids of those still current.

        When this engine committed a run's latest version itself (`state_version` unchanged
        under the lock), the rows it kept are current and only the version is read; the
        other runs are read whole, in one statement for all. A kept state is taken out while
        a transaction uses it, so a rolled-back change never lingers: the next transaction
        simply reads the run again."""
        versions, current = await repo.lock_runs_and_leases(session, keys, leases, now)
        kept: dict[str, tuple[RunRecord, list[StepRecord]]] = {}
        for tenant_id, run_id in keys:
            cached = self._states.pop(run_id, None)
            if cached is None or cached[0].tenant_id != tenant_id:
                continue
            if versions.get(run_id) == cached[0].state_version:
                kept[run_id] = cached
        stale = [(tenant_id, run_id) for tenant_id, run_id in keys if run_id in versions and run_id not in kept]
        if stale:
            steps = await repo.load_steps_of_runs(session, stale)
            for run in await repo.get_runs(session, stale):
                kept[run.id] = (run, steps[run.id])
        schedulers: dict[str, RunScheduler] = {}
        for run_id, (run, rows) in kept.items():
            run.updated_at = now
            schedulers[run_id] = self._scheduler(RunState.load(run, rows), now)
        return schedulers, current

    def _keep(self, states: list[RunState]) -> None:
        """Keeps the committed state of each run for its next transaction."""
        for state in states:
            run = state.run
            self._states[run.id] = (run, list(state.rows.values()))
            self._states.move_to_end(run.id)
        while len(self._states) > self.config.state_cache_size:
            self._states.popitem(last=False)

    def _dispatch_eagerly(self, scheduler: RunScheduler, owner: str, capacity: int, now: dt.datetime) -> list[StepKey]:
        taken: list[StepKey] = []
        for key in scheduler.state.dispatchable:
            if len(taken) >= capacity:
                break
            if scheduler.dispatch_eagerly(key, owner, self._lease_until(now)):
                taken.append(key)
        return taken

    @staticmethod
    def _assign(scheduler: RunScheduler, leases: list[TaskLease], eager: list[StepKey]) -> list[Assignment]:
        run_id = scheduler.state.run.id
        by_key = {lease.key: lease for lease in leases if lease.run_id == run_id}
        return [Assignment(by_key[key], scheduler.step_call(key)) for key in eager if key in by_key]

    async def _control(
        self,
        tenant_id: str,
        run_id: str,
        operation: str,
        body: dict[str, Any],
        idempotency_key: str,
        action: Callable[[RunScheduler], None],
        *,
        one_statement: bool = False,
    ) -> RunView:
        """Applies `action` to the run under its lock and commits, replaying the stored answer
        of a repeated `idempotency_key`. `one_statement`: the action changes steps and tasks one
        by one (a signal, a step completed by hand), so without a key it may take the gated
        one-statement path; actions on all of a run's tasks at once (pause, resume, cancel,
        retries) always take the locking path, which reuses the kept state without dropping it."""
        if one_statement and not idempotency_key and self._db.is_postgres:
            view = await self._control_if_current(tenant_id, run_id, action)
            if view is not None:
                return view
        request_hash = _hash(operation, run_id, body)

        async def work(session: AsyncSession) -> tuple[RunView, list[RunState]]:
            now = self._clock()
            state, scheduler = await self._load(session, tenant_id, run_id, now)
            # Looked up under the run lock: a concurrent duplicate waits, then replays.
            replay = await self._replay(session, tenant_id, idempotency_key, request_hash)
            if replay is not None:
                return replay, []
            action(scheduler)
            await repo.save_state(session, state)
            view = run_view(state.run, step_views(state.run, state.rows.values()))
            await self._remember_answer(session, tenant_id, idempotency_key, request_hash, view, now)
            return view, [state]

        return await self._write_and_publish(work)

    async def _control_if_current(
        self, tenant_id: str, run_id: str, action: Callable[[RunScheduler], None]
    ) -> RunView | None:
        """The one-round-trip path of `_control` (PostgreSQL, no Idempotency-Key): when this
        engine committed the run last, `action` is applied to the state it kept and written by
        the gated statement (`_save_if_current`). None when that does not apply, when the
        action refuses (the kept state may be behind: the locking path decides on the current
        one) or when the gate stayed shut; nothing was written then, and the kept state is
        dropped so that the locking path reads the run."""
        if not self._kept(tenant_id, run_id):
            return None
        now = self._clock()
        scheduler = self._take_kept(run_id, now)
        try:
            action(scheduler)
        except (DomainError, InvariantError):
            return None
        state = scheduler.state
        if await self._save_if_current([state], [], now) is None:
            return None
        return run_view(state.run, step_views(state.run, state.rows.values()))

    async def _replay(
        self, session: AsyncSession, tenant_id: str, key: str, request_hash: str
    ) -> RunView | None:
        if not key:
            return None
        stored = await repo.get_idempotency_key(session, tenant_id, key)
        if stored is None:
            return None
        stored_hash, response = stored
        if stored_hash != request_hash:
            raise ValidationError(
                "this Idempotency-Key was used with a different request",
                [FieldViolation("idempotency_key", "already used with a different request")],
            )
        return run_view_from_json(response)

    async def _remember_answer(
        self, session: AsyncSession, tenant_id: str, key: str, request_hash: str, view: RunView, now: dt.datetime
    ) -> None:
        if key:
            await repo.put_idempotency_key(session, tenant_id, key, request_hash, run_view_to_json(view), now)

    async def _write_and_publish(
        self, work: Callable[[AsyncSession], Awaitable[tuple[T, list[RunState]]]]
    ) -> T:
        """Runs a write transaction returning (result, states), then notifies. A duplicate
        idempotency key (a concurrent request committed first) runs the work again, which
        then replays the stored answer."""
        try:
            result, states = await self._db.write(work)
        except IntegrityError:
            result, states = await self._db.write(work)
        self._keep(states)
        await self._publish(states)
        return result

    async def _publish(self, states: list[RunState]) -> None:
        messages: list[tuple[str, str]] = []
        wake = False
        for state in states:
            run = state.run
            if state.events:
                # This process's watchers of the run take the events from here, not the log.
                self._watcher.offer(
                    run.tenant_id, run.id, state.events, finished=run.status.finished, last_seq=run.last_seq
                )
                messages.append((EVENTS_TOPIC, f"{run.tenant_id} {run.id} {run.last_seq}"))
            if state.abort_in_flight:
                messages.append((CANCEL_TOPIC, run.id))
            # Any ready task (even a future one: sleepers must shorten their sleep).
            wake = wake or state.wake_workers or any(
                (isinstance(op, UpsertTask) and op.state is TaskState.READY) or isinstance(op, ReleaseRunTasks)
                for op in state.task_ops
            )
        if wake:
            messages.append((TASKS_TOPIC, ""))
        if messages:
            try:
                await self._notifier.publish(messages)
            except Exception:
                # Committed is committed; a lost wake-up costs one fallback poll.
                logger.exception("could not publish notifications")


@dataclass(frozen=True)
class _StartRequest:
    """A validated request to start a run, waiting for its transaction."""

    tenant_id: str
    definition: WorkflowDef
    snapshot: dict[str, Any]
    run_input: Any
    trigger: Trigger
    triggered_by: str
    parent_run_id: str | None
    parent_step_id: str | None


@dataclass(frozen=True)
class _Completion:
    """A worker's report on one attempt, waiting for its transaction."""

    assignment: Assignment
    result: StepResult
    capacity: int


def _hash(*parts: Any) -> str:
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def _check_input(definition: WorkflowDef, run_input: Any) -> None:
    """ValidationError (422) with a field path per problem when the input breaks the schema."""
    schema = definition.input_schema
    if not schema:
        return
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValidationError(
            "the workflow's input_schema is not a valid JSON Schema",
            [FieldViolation("input_schema", exc.message)],
        ) from exc
    errors = sorted(validator_class(schema).iter_errors(run_input), key=lambda e: list(e.absolute_path))
    if errors:
        violations = [
            FieldViolation(
                "input" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path),
                error.message,
            )
            for error in errors
        ]
        raise ValidationError("input does not match the workflow's input_schema", violations)
