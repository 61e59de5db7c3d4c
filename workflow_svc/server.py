"""Wiring of workflow_svc: database, secrets, auth, gRPC server. No logic here."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from flowforge.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from flowforge.workflow.v1 import (
    agent_service_pb2,
    agent_service_pb2_grpc,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from flowforge_common import db
from flowforge_common.auth import TokenVerifier
from flowforge_common.clients import open_channel, remote_token_verifier
from flowforge_common.grpc_server import start_grpc_server
from flowforge_common.netpolicy import Resolver
from flowforge_common.secrets import load_secret_box
from flowforge_common.service import RunningService
from flowforge_common.service_identity import ServiceCredential
from workflow_svc.api.servicer import AgentServiceServicer, AuditServiceServicer, WorkflowServiceServicer
from workflow_svc.domain.audit import AuditLog
from workflow_svc.domain.health import AgentHealthMonitor
from workflow_svc.domain.service import AgentRegistry
from workflow_svc.domain.workflows import WorkflowCatalog
from workflow_svc.execution_client import ExecutionCallStats
from workflow_svc.http_probe import HttpHealthProber
from workflow_svc.settings import WorkflowSettings

MIGRATIONS = Path(__file__).parent / "db" / "migrations"


def db_reads(engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> async_sessionmaker[AsyncSession]:
    """Sessions for single reads: autocommit on PostgreSQL (under READ COMMITTED each
    statement sees its own snapshot anyway, so BEGIN and COMMIT would only add round trips),
    the ordinary ones on SQLite."""
    if not db.is_postgres(engine):
        return sessions
    return async_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


async def create_server(
    settings: WorkflowSettings, *, verifier: TokenVerifier | None = None, resolver: Resolver | None = None
) -> RunningService:
    """Migrates (unless disabled), then serves AgentService, WorkflowService and the internal
    AuditService on `settings.port`.

    `verifier` overrides the JWKS-from-auth_svc verifier and `resolver` the system DNS resolver
    used by the agent network policy, at registration and for health probes (tests: their own
    keys, no DNS)."""
    engine = db.create_engine(
        settings.database_url,
        schema=settings.schema(),
        sqlite_path=settings.sqlite_path(),
        pool_size=settings.db_pool_size,
    )
    if settings.migrate_on_start:
        await db.migrate(engine, migrations=MIGRATIONS, schema=settings.schema())
    auth_channel = open_channel(settings.auth_target)
    if verifier is None:
        verifier = remote_token_verifier(auth_channel, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    sessions = db.session_factory(engine)
    registry = AgentRegistry(sessions, load_secret_box(settings), network=settings.agent_network, resolver=resolver)
    prober = HttpHealthProber(settings.agent_network, resolver)
    service_credential = ServiceCredential.from_settings(settings, service_name="workflow")
    execution_channel = open_channel(settings.execution_target)
    call_stats = ExecutionCallStats(execution_channel, service_credential)
    agents = AgentServiceServicer(registry, AgentHealthMonitor(registry, sessions, prober, call_stats))
    workflows = WorkflowServiceServicer(WorkflowCatalog(sessions, reads=db_reads(engine, sessions)))
    audit = AuditServiceServicer(AuditLog(sessions))
    server = await start_grpc_server(
        host=settings.host,
        port=settings.port,
        services=[
            agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"],
            workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"],
            audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"],
        ],
        registrations=[
            partial(agent_service_pb2_grpc.add_AgentServiceServicer_to_server, agents),
            partial(workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server, workflows),
            partial(audit_service_pb2_grpc.add_AuditServiceServicer_to_server, audit),
        ],
        verifier=verifier,
        service_credential=service_credential,
        readiness=partial(db.ping, engine),
    )
    return RunningService(
        grpc=server, engine=engine, channels=[auth_channel, execution_channel], closers=[prober.close]
    )
