"""Wiring of auth_svc: database, signing key, auth, gRPC server. No logic here."""

from __future__ import annotations

import datetime as dt
from functools import partial
from pathlib import Path
from typing import Any

from auth_svc.api.audit_sources import RemoteAuditSource
from auth_svc.api.servicer import AuthServiceServicer
from auth_svc.domain.api_keys import ApiKeyService
from auth_svc.domain.audit import AuditLog
from auth_svc.domain.members import MemberService
from auth_svc.domain.passwords import Passwords
from auth_svc.domain.service import AuthService
from auth_svc.domain.tokens import TokenIssuer, load_signing_key
from auth_svc.settings import AuthSettings
from flowforge.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from flowforge_common import db
from flowforge_common.auth import ApiKeyResolver, JwksKeySource, TokenVerifier
from flowforge_common.clients import open_channel
from flowforge_common.grpc_server import start_grpc_server
from flowforge_common.service import RunningService

MIGRATIONS = Path(__file__).parent / "db" / "migrations"


def local_token_verifier(
    tokens: TokenIssuer, settings: AuthSettings, api_keys: ApiKeyResolver | None = None
) -> TokenVerifier:
    """A verifier over auth_svc's own keys and API key table: the service that signs needs no
    network to verify, and sees a revoked key at once (no cache)."""

    async def own_keys() -> list[dict[str, Any]]:
        return tokens.jwks()

    keys = JwksKeySource(own_keys)
    keys.load(tokens.jwks())
    return TokenVerifier(keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience, api_keys=api_keys)


async def create_server(settings: AuthSettings) -> RunningService:
    """Migrates (unless disabled), loads the signing key, then serves AuthService on `settings.port`."""
    engine = db.create_engine(
        settings.database_url,
        schema=settings.schema(),
        sqlite_path=settings.sqlite_path(),
        pool_size=settings.db_pool_size,
    )
    if settings.migrate_on_start:
        await db.migrate(engine, migrations=MIGRATIONS, schema=settings.schema())
    tokens = TokenIssuer(
        load_signing_key(settings.signing_key, settings.data_dir),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.access_token_ttl_seconds,
    )
    sessions = db.session_factory(engine)
    passwords = Passwords()
    service = AuthService(
        sessions,
        passwords,
        tokens,
        allow_signup=settings.allow_signup,
        refresh_ttl=dt.timedelta(seconds=settings.refresh_token_ttl_seconds),
    )
    api_keys = ApiKeyService(sessions)
    # The audit log merges workflow_svc's entries (agents, workflows, templates) with its own.
    workflow_channel = open_channel(settings.workflow_target)
    audit_log = AuditLog(sessions, [RemoteAuditSource(workflow_channel, name="workflow_svc")])
    servicer = AuthServiceServicer(service, api_keys, MemberService(sessions, passwords), audit_log)
    server = await start_grpc_server(
        host=settings.host,
        port=settings.port,
        services=[auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"]],
        registrations=[partial(auth_service_pb2_grpc.add_AuthServiceServicer_to_server, servicer)],
        verifier=local_token_verifier(tokens, settings, api_keys.verify),
        readiness=partial(db.ping, engine),
    )
    return RunningService(grpc=server, engine=engine, channels=[workflow_channel])
