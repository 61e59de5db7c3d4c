"""Members of a tenant and its service accounts, managed by its admins. Roles decide scopes;
only an owner may make or unmake an owner, and a tenant always keeps one active owner."""

from __future__ import annotations

import dataclasses
import secrets

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from auth_svc.db import repository
from auth_svc.domain import audit
from auth_svc.domain.models import Page, Role, ServiceAccount, User
from auth_svc.domain.passwords import Passwords
from auth_svc.domain.scopes import grantable_scopes
from auth_svc.domain.secrets import CLIENT_ID_PREFIX, CLIENT_SECRET_PREFIX, new_secret, secret_hash, well_formed_id
from auth_svc.domain.validation import (
    MAX_DISPLAY_NAME_LENGTH,
    cursor_id,
    email_problem,
    name_problem,
    normalise_email,
    password_problem,
)
from flowforge_common.auth import Principal
from flowforge_common.errors import (
    AbortedError,
    ConflictError,
    FieldViolation,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from flowforge_common.ids import new_id
from flowforge_common.orm import utcnow
from flowforge_common.pagination import clamp_limit, decode_page_token, encode_page_token

MAX_NAME_LENGTH = 100


def _is_owner(principal: Principal) -> bool:
    return principal.role == Role.OWNER.value


class MemberService:
    """User and service-account management within the caller's tenant."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], passwords: Passwords) -> None:
        self._sessions = sessions
        self._passwords = passwords

    async def create_user(
        self, principal: Principal, email: str, password: str, role: Role | None, display_name: str
    ) -> User:
        """Adds a member with `role` (never `owner`: ownership is handed over by UpdateUser).
        AlreadyExistsError when a member of this tenant has the email; accounts of the email
        in other tenants do not matter (and are never revealed)."""
        email = normalise_email(email)
        display_name = display_name.strip()
        problems = {
            "email": email_problem(email),
            "password": password_problem(password),
            "role": "is required" if role is None else ("cannot be owner" if role is Role.OWNER else None),
            "display_name": name_problem(display_name, required=False, max_length=MAX_DISPLAY_NAME_LENGTH),
        }
        violations = [FieldViolation(name, message) for name, message in problems.items() if message]
        if violations or role is None:
            raise ValidationError("the user has invalid fields", violations)
        password_hash = await self._passwords.hash(password)
        now = utcnow()
        user = User(
            id=new_id("usr"),
            tenant_id=principal.tenant_id,
            email=email,
            password_hash=password_hash,
            role=role,
            display_name=display_name,
            active=True,
            version=1,
            created_at=now,
            updated_at=now,
        )
        async with self._sessions.begin() as session:
            await repository.add_user(session, user)
            audit.record(
                session,
                tenant_id=user.tenant_id,
                actor=principal.subject,
                action="user.created",
                entity_type="user",
                entity_id=user.id,
                change={"email": user.email, "role": user.role.value},
                at=now,
            )
        return user

    async def list_users(self, principal: Principal, *, limit: int, page_token: str) -> Page[User]:
        """The tenant's members, oldest first."""
        size = clamp_limit(limit)
        position = decode_page_token(page_token) or {}
        async with self._sessions() as session:
            users = await repository.list_users(
                session, tenant_id=principal.tenant_id, limit=size + 1, after_id=cursor_id(position)
            )
        page = users[:size]
        return Page(page, encode_page_token({"after": page[-1].id}) if len(users) > size else "")

    async def get_user(self, principal: Principal, user_id: str) -> User:
        """One member; NotFoundError for an unknown id or another tenant's user."""
        if not well_formed_id(user_id):
            raise NotFoundError("no such user")
        async with self._sessions() as session:
            user = await repository.get_user(session, tenant_id=principal.tenant_id, user_id=user_id)
        if user is None:
            raise NotFoundError("no such user")
        return user

    def _check_authority(self, principal: Principal, target: User, new_role: Role | None) -> None:
        touches_owner = target.role is Role.OWNER or new_role is Role.OWNER
        if touches_owner and not _is_owner(principal):
            raise PermissionDeniedError("only an owner can change or grant the owner role")

    async def update_user(
        self,
        principal: Principal,
        user_id: str,
        *,
        role: Role | None = None,
        display_name: str | None = None,
        active: bool | None = None,
    ) -> User:
        """Changes a member's role, name or active flag. A role change or a disable signs the
        member out (refresh tokens revoked); access tokens age out within their lifetime."""
        current = await self.get_user(principal, user_id)
        self._check_authority(principal, current, role)
        problem = (
            name_problem(display_name.strip(), required=False, max_length=MAX_DISPLAY_NAME_LENGTH)
            if display_name is not None
            else None
        )
        if problem:
            raise ValidationError("the user has invalid fields", [FieldViolation("display_name", problem)])
        if user_id == principal.subject and (role not in (None, current.role) or active is False):
            raise ConflictError("you cannot change your own role or disable yourself")
        updated = dataclasses.replace(
            current,
            role=role if role is not None else current.role,
            display_name=display_name.strip() if display_name is not None else current.display_name,
            active=active if active is not None else current.active,
            version=current.version + 1,
            updated_at=utcnow(),
        )
        demotes_owner = current.role is Role.OWNER and (updated.role is not Role.OWNER or not updated.active)
        async with self._sessions.begin() as session:
            if demotes_owner and await repository.count_active_owners(session, tenant_id=current.tenant_id) <= 1:
                raise ConflictError("a tenant keeps at least one active owner")
            if not await repository.save_user(session, updated, expected_version=current.version):
                raise AbortedError("the user changed meanwhile; retry")
            if updated.role is not current.role or not updated.active:
                await repository.revoke_user_refresh_tokens(
                    session, tenant_id=current.tenant_id, user_id=current.id, now=updated.updated_at
                )
            changes = {
                name: {"before": before, "after": after}
                for name, before, after in (
                    ("role", current.role.value, updated.role.value),
                    ("display_name", current.display_name, updated.display_name),
                    ("active", current.active, updated.active),
                )
                if before != after
            }
            if changes:
                audit.record(
                    session,
                    tenant_id=current.tenant_id,
                    actor=principal.subject,
                    action="user.role_changed" if "role" in changes else "user.updated",
                    entity_type="user",
                    entity_id=current.id,
                    change=changes,
                    at=updated.updated_at,
                )
        return updated

    async def delete_user(self, principal: Principal, user_id: str) -> None:
        """Removes a member with its refresh tokens and API keys."""
        current = await self.get_user(principal, user_id)
        self._check_authority(principal, current, None)
        if user_id == principal.subject:
            raise ConflictError("you cannot remove yourself")
        async with self._sessions.begin() as session:
            if (
                current.role is Role.OWNER
                and await repository.count_active_owners(session, tenant_id=current.tenant_id) <= 1
            ):
                raise ConflictError("a tenant keeps at least one active owner")
            if not await repository.delete_user(session, tenant_id=current.tenant_id, user_id=user_id):
                raise NotFoundError("no such user")
            audit.record(
                session,
                tenant_id=current.tenant_id,
                actor=principal.subject,
                action="user.deleted",
                entity_type="user",
                entity_id=user_id,
                change={"email": current.email, "role": current.role.value},
            )

    async def create_service_account(self, principal: Principal, name: str, scopes: list[str]) -> ServiceAccount:
        """A new service account with its `client_secret`, shown this once."""
        name = name.strip()
        problem = name_problem(name, required=True, max_length=MAX_NAME_LENGTH)
        if problem:
            raise ValidationError("the service account has invalid fields", [FieldViolation("name", problem)])
        granted = grantable_scopes(principal, scopes)
        secret = new_secret(CLIENT_SECRET_PREFIX)
        account = ServiceAccount(
            id=new_id("sa"),
            tenant_id=principal.tenant_id,
            name=name,
            client_id=CLIENT_ID_PREFIX + secrets.token_urlsafe(16),
            scopes=granted,
            created_by=principal.subject,
            active=True,
            created_at=utcnow(),
            client_secret=secret,
        )
        async with self._sessions.begin() as session:
            repository.add_service_account(session, account, secret_hash(secret))
            audit.record(
                session,
                tenant_id=account.tenant_id,
                actor=principal.subject,
                action="service_account.created",
                entity_type="service_account",
                entity_id=account.id,
                change={"name": account.name, "client_id": account.client_id, "scopes": list(account.scopes)},
                at=account.created_at,
            )
        return account
