"""Storage of tenants, users, refresh tokens, API keys, service accounts and audit entries.
Functions take a session and never commit: the use case that calls them owns the transaction.
Every query is scoped to a tenant, except the lookups that establish who is calling before any
tenant is known: the accounts of an email (login), and a credential by the hash of its secret."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth_svc.db.orm import ApiKeyRow, AuditLogRow, RefreshTokenRow, ServiceAccountRow, TenantRow, UserRow
from auth_svc.domain.models import ApiKey, AuditEntry, RefreshToken, Role, ServiceAccount, Tenant, User
from flowforge_common.errors import AlreadyExistsError, FieldViolation


def _tenant(row: TenantRow) -> Tenant:
    return Tenant(id=row.id, name=row.name, created_at=row.created_at)


def _user(row: UserRow) -> User:
    return User(
        id=row.id,
        tenant_id=row.tenant_id,
        email=row.email,
        password_hash=row.password_hash,
        role=Role(row.role),
        display_name=row.display_name,
        active=row.active,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def add_tenant(session: AsyncSession, tenant: Tenant) -> None:
    """Stages a new tenant."""
    session.add(TenantRow(id=tenant.id, name=tenant.name, created_at=tenant.created_at))


async def add_user(session: AsyncSession, user: User) -> None:
    """Inserts a new user; AlreadyExistsError when its tenant has a member with its email.

    The unique constraint on (tenant, email), not a prior lookup, decides: two invitations
    racing for one address cannot both pass. It is the only unique key a new user can collide
    on (ids are random), and a signup never does: its tenant is new.
    """
    session.add(
        UserRow(
            id=user.id,
            tenant_id=user.tenant_id,
            email=user.email,
            password_hash=user.password_hash,
            role=user.role.value,
            display_name=user.display_name,
            active=user.active,
            version=user.version,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )
    )
    try:
        await session.flush()
    except IntegrityError as exc:
        raise AlreadyExistsError(
            "a member of this tenant already has this email",
            [FieldViolation("email", "is already a member of this tenant")],
        ) from exc


async def get_tenant(session: AsyncSession, tenant_id: str) -> Tenant | None:
    """The tenant with this id, if any."""
    row = await session.get(TenantRow, tenant_id)
    return None if row is None else _tenant(row)


async def get_user(session: AsyncSession, *, tenant_id: str, user_id: str) -> User | None:
    """The user with this id in this tenant; None for a user of another tenant."""
    row = await session.scalar(select(UserRow).where(UserRow.tenant_id == tenant_id, UserRow.id == user_id))
    return None if row is None else _user(row)


async def find_users_by_email(session: AsyncSession, email: str, *, tenant_id: str | None, limit: int) -> list[User]:
    """The accounts of this (normalised) email, oldest first: in every tenant, or in `tenant_id`
    only (at most one there).

    Only login may call this without a tenant: it runs before the caller's tenant is known.
    """
    query = select(UserRow).where(UserRow.email == email)
    if tenant_id is not None:
        query = query.where(UserRow.tenant_id == tenant_id)
    rows = await session.scalars(query.order_by(UserRow.created_at, UserRow.id).limit(limit))
    return [_user(row) for row in rows]


async def replace_password_hash(session: AsyncSession, *, tenant_id: str, user_id: str, password_hash: str) -> None:
    """Swaps a user's hash for one of the same password made with newer parameters.

    The user as a resource does not change, so neither its version (etag) nor `updated_at` does.
    """
    await session.execute(
        update(UserRow).where(UserRow.tenant_id == tenant_id, UserRow.id == user_id).values(password_hash=password_hash)
    )


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


async def list_users(session: AsyncSession, *, tenant_id: str, limit: int, after_id: str | None) -> list[User]:
    """Up to `limit` users of the tenant in id (creation) order, after `after_id`."""
    query = select(UserRow).where(UserRow.tenant_id == tenant_id)
    if after_id:
        query = query.where(UserRow.id > after_id)
    rows = await session.scalars(query.order_by(UserRow.id).limit(limit))
    return [_user(row) for row in rows]


async def save_user(session: AsyncSession, user: User, *, expected_version: int) -> bool:
    """Writes a changed user (role, name, active, version, updated_at) if nobody changed it
    since `expected_version`; False when the row moved or is gone."""
    result = await session.execute(
        update(UserRow)
        .where(UserRow.tenant_id == user.tenant_id, UserRow.id == user.id, UserRow.version == expected_version)
        .values(
            role=user.role.value,
            display_name=user.display_name,
            active=user.active,
            version=user.version,
            updated_at=user.updated_at,
        )
    )
    return _rowcount(result) == 1


async def delete_user(session: AsyncSession, *, tenant_id: str, user_id: str) -> bool:
    """Removes a user (its refresh tokens and API keys go with it); False when absent."""
    # Explicit deletes rather than ON DELETE CASCADE alone: SQLite enforces foreign keys only
    # when the connection enables them.
    await session.execute(
        delete(RefreshTokenRow).where(RefreshTokenRow.tenant_id == tenant_id, RefreshTokenRow.user_id == user_id)
    )
    await session.execute(delete(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id, ApiKeyRow.created_by == user_id))
    result = await session.execute(delete(UserRow).where(UserRow.tenant_id == tenant_id, UserRow.id == user_id))
    return _rowcount(result) == 1


async def count_active_owners(session: AsyncSession, *, tenant_id: str) -> int:
    """How many active owners the tenant has (the last one may not go)."""
    count = await session.scalar(
        select(func.count())
        .select_from(UserRow)
        .where(UserRow.tenant_id == tenant_id, UserRow.role == Role.OWNER.value, UserRow.active.is_(True))
    )
    return int(count or 0)


# --------------------------------------------------------------------------- refresh tokens


def _refresh(row: RefreshTokenRow) -> RefreshToken:
    return RefreshToken(
        id=row.id,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        family_id=row.family_id,
        created_at=row.created_at,
        expires_at=row.expires_at,
        used_at=row.used_at,
        revoked_at=row.revoked_at,
    )


def add_refresh_token(session: AsyncSession, token: RefreshToken, token_hash: str) -> None:
    """Stages a new refresh token (its hash only)."""
    session.add(
        RefreshTokenRow(
            id=token.id,
            tenant_id=token.tenant_id,
            user_id=token.user_id,
            family_id=token.family_id,
            token_hash=token_hash,
            created_at=token.created_at,
            expires_at=token.expires_at,
        )
    )


async def find_refresh_token(session: AsyncSession, token_hash: str) -> RefreshToken | None:
    """The refresh token stored under this hash, whatever its tenant (it identifies the caller)."""
    row = await session.scalar(select(RefreshTokenRow).where(RefreshTokenRow.token_hash == token_hash))
    return None if row is None else _refresh(row)


async def mark_refresh_token_used(session: AsyncSession, token_id: str, now: dt.datetime) -> bool:
    """Marks a token used if it is still fresh; False when another request used or revoked it
    first (the conditional update is what makes two concurrent refreshes a reuse)."""
    result = await session.execute(
        update(RefreshTokenRow)
        .where(RefreshTokenRow.id == token_id, RefreshTokenRow.used_at.is_(None), RefreshTokenRow.revoked_at.is_(None))
        .values(used_at=now)
    )
    return _rowcount(result) == 1


async def revoke_refresh_family(session: AsyncSession, *, tenant_id: str, family_id: str, now: dt.datetime) -> None:
    """Revokes every token of a family (one sign-in)."""
    await session.execute(
        update(RefreshTokenRow)
        .where(
            RefreshTokenRow.tenant_id == tenant_id,
            RefreshTokenRow.family_id == family_id,
            RefreshTokenRow.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )


async def revoke_user_refresh_tokens(session: AsyncSession, *, tenant_id: str, user_id: str, now: dt.datetime) -> None:
    """Revokes every refresh token of a user (disabled, or role changed)."""
    await session.execute(
        update(RefreshTokenRow)
        .where(
            RefreshTokenRow.tenant_id == tenant_id,
            RefreshTokenRow.user_id == user_id,
            RefreshTokenRow.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )


# --------------------------------------------------------------------------- API keys


def _api_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant_id=row.tenant_id,
        created_by=row.created_by,
        name=row.name,
        prefix=row.prefix,
        scopes=tuple(row.scopes.split()),
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


def add_api_key(session: AsyncSession, key: ApiKey, key_hash: str) -> None:
    """Stages a new API key (its hash only)."""
    session.add(
        ApiKeyRow(
            id=key.id,
            tenant_id=key.tenant_id,
            created_by=key.created_by,
            name=key.name,
            prefix=key.prefix,
            key_hash=key_hash,
            scopes=" ".join(key.scopes),
            created_at=key.created_at,
            expires_at=key.expires_at,
        )
    )


async def find_api_key(session: AsyncSession, key_hash: str) -> tuple[ApiKey, str] | None:
    """The key stored under this hash and the stored hash, whatever its tenant."""
    row = await session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash))
    return None if row is None else (_api_key(row), row.key_hash)


async def get_api_key(session: AsyncSession, *, tenant_id: str, key_id: str) -> ApiKey | None:
    """A key of this tenant (revoked ones included)."""
    row = await session.scalar(select(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id, ApiKeyRow.id == key_id))
    return None if row is None else _api_key(row)


async def list_api_keys(
    session: AsyncSession, *, tenant_id: str, created_by: str | None, limit: int, after_id: str | None
) -> list[ApiKey]:
    """Unrevoked keys of the tenant (of one creator when `created_by` is set), in id order."""
    query = select(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant_id, ApiKeyRow.revoked_at.is_(None))
    if created_by is not None:
        query = query.where(ApiKeyRow.created_by == created_by)
    if after_id:
        query = query.where(ApiKeyRow.id > after_id)
    rows = await session.scalars(query.order_by(ApiKeyRow.id).limit(limit))
    return [_api_key(row) for row in rows]


async def revoke_api_key(session: AsyncSession, *, tenant_id: str, key_id: str, now: dt.datetime) -> bool:
    """Revokes a key; False when it is absent or already revoked."""
    result = await session.execute(
        update(ApiKeyRow)
        .where(ApiKeyRow.tenant_id == tenant_id, ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return _rowcount(result) == 1


async def touch_api_key(session: AsyncSession, *, key_id: str, now: dt.datetime) -> None:
    """Records that a key was used."""
    await session.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=now))


# --------------------------------------------------------------------------- service accounts


def _service_account(row: ServiceAccountRow) -> ServiceAccount:
    return ServiceAccount(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        client_id=row.client_id,
        scopes=tuple(row.scopes.split()),
        created_by=row.created_by,
        active=row.active,
        created_at=row.created_at,
    )


def add_service_account(session: AsyncSession, account: ServiceAccount, secret_hash: str) -> None:
    """Stages a new service account (its secret's hash only)."""
    session.add(
        ServiceAccountRow(
            id=account.id,
            tenant_id=account.tenant_id,
            name=account.name,
            client_id=account.client_id,
            secret_hash=secret_hash,
            scopes=" ".join(account.scopes),
            created_by=account.created_by,
            active=account.active,
            created_at=account.created_at,
        )
    )


async def find_service_account(session: AsyncSession, client_id: str) -> tuple[ServiceAccount, str] | None:
    """The account with this client id and its secret's hash, whatever its tenant."""
    row = await session.scalar(select(ServiceAccountRow).where(ServiceAccountRow.client_id == client_id))
    return None if row is None else (_service_account(row), row.secret_hash)


# --------------------------------------------------------------------------- audit log


def add_audit_entry(session: AsyncSession, entry: AuditEntry) -> None:
    """Stages an audit entry in the transaction of the change it records."""
    session.add(
        AuditLogRow(
            id=entry.id,
            tenant_id=entry.tenant_id,
            actor=entry.actor,
            action=entry.action,
            entity_type=entry.entity_type,
            entity_id=entry.entity_id,
            change=entry.change,
            created_at=entry.created_at,
        )
    )


async def list_audit_entries(
    session: AsyncSession,
    *,
    tenant_id: str,
    limit: int,
    before: tuple[dt.datetime, str] | None,
    entity_type: str = "",
    entity_id: str = "",
    actor: str = "",
) -> list[AuditEntry]:
    """The tenant's entries, newest first (created_at, then id), strictly before `before`."""
    query = select(AuditLogRow).where(AuditLogRow.tenant_id == tenant_id)
    if entity_type:
        query = query.where(AuditLogRow.entity_type == entity_type)
    if entity_id:
        query = query.where(AuditLogRow.entity_id == entity_id)
    if actor:
        query = query.where(AuditLogRow.actor == actor)
    if before is not None:
        at, entry_id = before
        query = query.where(
            or_(AuditLogRow.created_at < at, and_(AuditLogRow.created_at == at, AuditLogRow.id < entry_id))
        )
    rows = await session.scalars(query.order_by(AuditLogRow.created_at.desc(), AuditLogRow.id.desc()).limit(limit))
    return [
        AuditEntry(
            id=row.id,
            tenant_id=row.tenant_id,
            actor=row.actor,
            action=row.action,
            entity_type=row.entity_type,
            entity_id=row.entity_id,
            change=dict(row.change),
            created_at=row.created_at,
        )
        for row in rows
    ]
