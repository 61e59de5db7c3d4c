"""Wiring of execution_svc: database, notifier, engine, workers, gRPC server. No logic here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from execution_svc.api.servicer import ExecutionServiceServicer
from execution_svc.api.workflows import WorkflowServiceSource
from execution_svc.db.session import Database, use_immediate_transactions
from execution_svc.domain.definition import StepType
from execution_svc.domain.ports import AgentDirectory, Notifier, WorkflowSource
from execution_svc.domain.service import EngineConfig, ExecutionEngine
from execution_svc.domain.worker import Worker, WorkerConfig
from execution_svc.executors.directory import StaticAgentDirectory, WorkflowServiceAgentDirectory
from execution_svc.executors.guard import AgentGuard, GuardConfig
from execution_svc.executors.http import HttpStepExecutor
from execution_svc.executors.subworkflow import StepExecutorRouter, SubWorkflowExecutor
from execution_svc.notify import InProcessNotifier, PostgresNotifier
from execution_svc.settings import ExecutionSettings
from flowforge.execution.v1 import execution_service_pb2, execution_service_pb2_grpc
from flowforge_common import db
from flowforge_common.auth import TokenVerifier
from flowforge_common.clients import open_channel, remote_token_verifier
from flowforge_common.grpc_server import start_grpc_server
from flowforge_common.service import RunningService
from flowforge_common.service_identity import ServiceCredential

MIGRATIONS = Path(__file__).parent / "db" / "migrations"


async def create_server(
    settings: ExecutionSettings,
    *,
    verifier: TokenVerifier | None = None,
    workflows: WorkflowSource | None = None,
    agents: AgentDirectory | None = None,
) -> RunningService:
    """Migrates (unless disabled), starts the notifier and workers, then serves
    ExecutionService on `settings.port`.

    `verifier`, `workflows` and `agents` override the auth_svc/workflow_svc-backed defaults
    (tests)."""
    engine = db.create_engine(
        settings.database_url,
        schema=settings.schema(),
        sqlite_path=settings.sqlite_path(),
        pool_size=settings.db_pool_size,
    )
    use_immediate_transactions(engine)
    if settings.migrate_on_start:
        await db.migrate(engine, migrations=MIGRATIONS, schema=settings.schema())
    auth_channel = open_channel(settings.auth_target)
    workflow_channel = open_channel(settings.workflow_target)
    if verifier is None:
        verifier = remote_token_verifier(auth_channel, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    notifier: Notifier
    if db.is_postgres(engine):
        dsn = make_url(db.normalise_url(settings.database_url or "")).set(drivername="postgresql")
        notifier = PostgresNotifier(dsn.render_as_string(hide_password=False), channel_prefix=settings.schema())
        await notifier.start()
    else:
        notifier = InProcessNotifier()
    database = Database(engine)
    execution = ExecutionEngine(
        database,
        notifier,
        config=EngineConfig(
            lease_seconds=settings.lease_seconds,
            max_output_bytes=settings.max_output_bytes,
            watch_buffer_events=settings.watch_buffer_events,
            watch_stall_seconds=settings.watch_stall_seconds,
        ),
    )
    service_credential = ServiceCredential.from_settings(settings, service_name="execution")
    if agents is None and settings.static_agents:
        agents = StaticAgentDirectory(settings.static_agents)
    agent_guard = AgentGuard(
        GuardConfig(
            failure_threshold=settings.circuit_failure_threshold,
            open_seconds=settings.circuit_open_seconds,
            max_in_flight_per_agent=settings.agent_max_in_flight,
        )
    )
    executor = HttpStepExecutor(
        agents or WorkflowServiceAgentDirectory(workflow_channel, service_credential),
        max_output_bytes=settings.max_output_bytes,
        max_connections=settings.max_connections,
        network=settings.agent_network,
        guard=agent_guard,
    )
    await executor.start()
    worker_config = WorkerConfig(
        concurrency=settings.worker_concurrency,
        claim_batch=settings.worker_claim_batch,
        reap_seconds=settings.reap_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        idle_poll_seconds=settings.idle_poll_seconds,
    )
    workflow_source = workflows or WorkflowServiceSource(workflow_channel, service_credential)
    step_executor = StepExecutorRouter(
        executor, {StepType.SUB_WORKFLOW: SubWorkflowExecutor(execution, workflow_source)}
    )
    workers = [Worker(execution, step_executor, config=worker_config) for _ in range(settings.workers)]
    for worker in workers:
        await worker.start()
    # Schedules, webhooks and stats are not built yet: the generated base class
    # answers them UNIMPLEMENTED, hence the abstract methods left open.
    servicer = ExecutionServiceServicer(  # type: ignore[abstract]
        execution, workflow_source, agent_guard
    )
    server = await start_grpc_server(
        host=settings.host,
        port=settings.port,
        services=[execution_service_pb2.DESCRIPTOR.services_by_name["ExecutionService"]],
        registrations=[partial(execution_service_pb2_grpc.add_ExecutionServiceServicer_to_server, servicer)],
        verifier=verifier,
        service_credential=service_credential,
        readiness=partial(db.ping, engine),
    )
    # Closed in reverse: workers first (they need the executor and notifier), then the rest;
    # last, transactions that outlived their cancelled callers finish before the engine goes.
    closers: list[Callable[[], Awaitable[Any]]] = [database.drain, notifier.close, executor.close]
    closers += [partial(worker.stop, settings.shutdown_grace_seconds) for worker in workers]
    return RunningService(grpc=server, engine=engine, channels=[auth_channel, workflow_channel], closers=closers)
