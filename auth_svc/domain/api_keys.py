"""API keys: created by users (never holding more than their creator), shown once, stored as a
hash, listed by prefix, optionally expiring, revocable, and resolved to a principal for every
edge and service (which cache the answer for at most 5 s)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth_svc.db import repository
from auth_svc.domain import audit
from auth_svc.domain.models import ApiKey, Page
from auth_svc.domain.scopes import clamp_to_role, grantable_scopes
from auth_svc.domain.secrets import (
    API_KEY_DISPLAY_LENGTH,
    API_KEY_PREFIX,
    hashes_match,
    new_secret,
    secret_hash,
    well_formed,
    well_formed_id,
)
from auth_svc.domain.validation import cursor_id, name_problem
from flowforge_common.auth import Principal
from flowforge_common.errors import (
    FieldViolation,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    ValidationError,
)
from flowforge_common.ids import new_id
from flowforge_common.orm import utcnow
from flowforge_common.pagination import clamp_limit, decode_page_token, encode_page_token

MAX_NAME_LENGTH = 100
MAX_EXPIRY_DAYS = 3650
INVALID_KEY = "the API key is not valid"
# `last_used_at` is written at most this often per key, so that a busy key is not a hot row.
TOUCH_INTERVAL = dt.timedelta(minutes=1)


class ApiKeyService:
    """API key use cases; each owns its transaction."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def create(self, principal: Principal, name: str, scopes: list[str], expires_in_days: int) -> ApiKey:
        """A new key with its secret (`key`), which is never shown again."""
        if not principal.subject.startswith("usr_"):
            raise PermissionDeniedError("only users can create API keys")
        name = name.strip()
        violations = []
        problem = name_problem(name, required=True, max_length=MAX_NAME_LENGTH)
        if problem:
            violations.append(FieldViolation("name", problem))
        if not 0 <= expires_in_days <= MAX_EXPIRY_DAYS:
            violations.append(FieldViolation("expires_in_days", f"must be between 0 and {MAX_EXPIRY_DAYS}"))
        if violations:
            raise ValidationError("the API key has invalid fields", violations)
        granted = grantable_scopes(principal, scopes)
        now = utcnow()
        secret = new_secret(API_KEY_PREFIX)
        key = ApiKey(
            id=new_id("key"),
            tenant_id=principal.tenant_id,
            created_by=principal.subject,
            name=name,
            prefix=secret[:API_KEY_DISPLAY_LENGTH],
            scopes=granted,
            created_at=now,
            expires_at=now + dt.timedelta(days=expires_in_days) if expires_in_days else None,
            key=secret,
        )
        async with self._sessions.begin() as session:
            repository.add_api_key(session, key, secret_hash(secret))
            audit.record(
                session,
                tenant_id=key.tenant_id,
                actor=principal.subject,
                action="api_key.created",
                entity_type="api_key",
                entity_id=key.id,
                change={
                    "name": key.name,
                    "prefix": key.prefix,
                    "scopes": list(key.scopes),
                    "expires_at": key.expires_at.isoformat() if key.expires_at else None,
                },
                at=now,
            )
        return key

    @staticmethod
    def _own_only(principal: Principal) -> str | None:
        """Admins manage every key of the tenant; everyone else only their own."""
        return None if principal.has_scope("admin") else principal.subject

    async def list(self, principal: Principal, *, limit: int, page_token: str) -> Page[ApiKey]:
        """The unrevoked keys the caller may see, oldest first."""
        size = clamp_limit(limit)
        position = decode_page_token(page_token) or {}
        async with self._sessions() as session:
            keys = await repository.list_api_keys(
                session,
                tenant_id=principal.tenant_id,
                created_by=self._own_only(principal),
                limit=size + 1,
                after_id=cursor_id(position),
            )
        page = keys[:size]
        return Page(page, encode_page_token({"after": page[-1].id}) if len(keys) > size else "")

    async def get(self, principal: Principal, key_id: str) -> ApiKey:
        """One key the caller may see; NotFoundError otherwise (another tenant's included)."""
        if not well_formed_id(key_id):
            raise NotFoundError("no such API key")
        async with self._sessions() as session:
            key = await repository.get_api_key(session, tenant_id=principal.tenant_id, key_id=key_id)
        owner = self._own_only(principal)
        if key is None or key.revoked_at is not None or (owner is not None and key.created_by != owner):
            raise NotFoundError("no such API key")
        return key

    async def revoke(self, principal: Principal, key_id: str) -> None:
        """Revokes a key: auth_svc refuses it at once, every cache within 5 s."""
        await self.get(principal, key_id)
        now = utcnow()
        async with self._sessions.begin() as session:
            if not await repository.revoke_api_key(session, tenant_id=principal.tenant_id, key_id=key_id, now=now):
                raise NotFoundError("no such API key")
            audit.record(
                session,
                tenant_id=principal.tenant_id,
                actor=principal.subject,
                action="api_key.revoked",
                entity_type="api_key",
                entity_id=key_id,
                at=now,
            )

    async def verify(self, presented: str) -> Principal:
        """The principal of a presented key: its tenant, `apikey:<id>`, and its scopes limited
        to what its creator's role grants now. UnauthenticatedError for an unknown, revoked or
        expired key, or one whose creator is gone or disabled."""
        if not well_formed(presented, API_KEY_PREFIX):
            raise UnauthenticatedError(INVALID_KEY)
        digest = secret_hash(presented)
        now = utcnow()
        async with self._sessions() as session:
            found = await repository.find_api_key(session, digest)
            if found is None:
                raise UnauthenticatedError(INVALID_KEY)
            key, stored_hash = found
            creator = await repository.get_user(session, tenant_id=key.tenant_id, user_id=key.created_by)
        if (
            not hashes_match(stored_hash, digest)
            or key.revoked_at is not None
            or (key.expires_at is not None and key.expires_at <= now)
            or creator is None
            or not creator.active
        ):
            raise UnauthenticatedError(INVALID_KEY)
        if key.last_used_at is None or now - key.last_used_at >= TOUCH_INTERVAL:
            async with self._sessions.begin() as session:
                await repository.touch_api_key(session, key_id=key.id, now=now)
        return Principal(
            tenant_id=key.tenant_id,
            subject=key.subject,
            scopes=frozenset(clamp_to_role(key.scopes, creator.role)),
        )
