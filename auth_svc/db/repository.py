"""Storage of tenants and users. Functions take a session and never commit: the use case that
calls them owns the transaction. Every query of a user is scoped to a tenant, except the one
lookup by email that login needs before it knows the tenant."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth_svc.db.orm import TenantRow, UserRow
from auth_svc.domain.models import Role, Tenant, User
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
    """Inserts a new user; AlreadyExistsError when its email is taken.

    The unique constraint on `email`, not a prior lookup, decides: two signups racing for one
    address cannot both pass. It is the only unique key a new user can collide on (ids are random).
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
            "an account with this email already exists",
            [FieldViolation("email", "is already registered")],
        ) from exc


async def get_tenant(session: AsyncSession, tenant_id: str) -> Tenant | None:
    """The tenant with this id, if any."""
    row = await session.get(TenantRow, tenant_id)
    return None if row is None else _tenant(row)


async def get_user(session: AsyncSession, *, tenant_id: str, user_id: str) -> User | None:
    """The user with this id in this tenant; None for a user of another tenant."""
    row = await session.scalar(select(UserRow).where(UserRow.tenant_id == tenant_id, UserRow.id == user_id))
    return None if row is None else _user(row)


async def find_user_by_email(session: AsyncSession, email: str) -> User | None:
    """The user who signs in with this (normalised) email, whatever its tenant.

    Only login may call this: it runs before the caller's tenant is known, and email is unique
    across FlowForge for exactly this reason.
    """
    row = await session.scalar(select(UserRow).where(UserRow.email == email))
    return None if row is None else _user(row)


async def replace_password_hash(session: AsyncSession, *, tenant_id: str, user_id: str, password_hash: str) -> None:
    """Swaps a user's hash for one of the same password made with newer parameters.

    The user as a resource does not change, so neither its version (etag) nor `updated_at` does.
    """
    await session.execute(
        update(UserRow).where(UserRow.tenant_id == tenant_id, UserRow.id == user_id).values(password_hash=password_hash)
    )
