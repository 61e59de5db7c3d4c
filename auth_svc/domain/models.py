"""Identity as auth_svc sees it: tenants, users, roles and the scopes each role grants."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from flowforge_common.auth import ALL_SCOPES

T = TypeVar("T")


class Role(StrEnum):
    """A member's role inside its tenant; the value is the lower-case name used in tokens."""

    OWNER = "owner"
    ADMIN = "admin"
    EDITOR = "editor"
    OPERATOR = "operator"
    VIEWER = "viewer"


# Derived from ALL_SCOPES so that a new `<resource>:read` or `<resource>:write` scope reaches the
# right roles without touching this table.
_READ_SCOPES = frozenset(scope for scope in ALL_SCOPES if scope.endswith(":read"))
_WRITE_SCOPES = frozenset(scope for scope in ALL_SCOPES if scope.endswith(":write"))
_VIEWER = _READ_SCOPES
_OPERATOR = _VIEWER | {"runs:execute"}
_EDITOR = _OPERATOR | _WRITE_SCOPES

ROLE_SCOPES: Mapping[Role, frozenset[str]] = {
    Role.VIEWER: _VIEWER,
    Role.OPERATOR: _OPERATOR,
    Role.EDITOR: _EDITOR,
    Role.ADMIN: frozenset(ALL_SCOPES),
    Role.OWNER: frozenset(ALL_SCOPES),
}


def scopes_for_role(role: Role) -> tuple[str, ...]:
    """The scopes a role grants, in ALL_SCOPES order so that token `scope` claims are stable."""
    granted = ROLE_SCOPES[role]
    return tuple(scope for scope in ALL_SCOPES if scope in granted)


@dataclass(frozen=True)
class Tenant:
    """An organisation; every resource of FlowForge belongs to exactly one."""

    id: str
    name: str
    created_at: dt.datetime


@dataclass(frozen=True)
class User:
    """A person who signs in with an email and a password, member of exactly one tenant."""

    id: str
    tenant_id: str
    email: str
    # Kept out of repr so that a logged user never leaks its hash.
    password_hash: str = field(repr=False)
    role: Role
    display_name: str
    active: bool
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def etag(self) -> str:
        """Concurrency token: changes whenever the user is updated."""
        return str(self.version)


@dataclass(frozen=True)
class SignupForm:
    """Signup input after validation: email lower-cased, names trimmed."""

    email: str
    password: str = field(repr=False)
    tenant_name: str
    display_name: str


@dataclass(frozen=True)
class NewAccount:
    """What Signup created: the tenant and its owner."""

    user: User
    tenant: Tenant


@dataclass(frozen=True)
class Caller:
    """Who is calling, as GetMe reports it (no user for API keys and service accounts)."""

    user: User | None
    tenant: Tenant
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class AccessToken:
    """A signed access token and its lifetime in seconds."""

    token: str = field(repr=False)
    expires_in: int


@dataclass(frozen=True)
class TokenPair:
    """What sign-in and refresh answer: an access token and the next refresh token."""

    access: AccessToken
    refresh_token: str = field(repr=False)


@dataclass(frozen=True)
class RefreshToken:
    """A stored refresh token (its secret is known only to the client; the row holds a hash)."""

    id: str
    tenant_id: str
    user_id: str
    family_id: str
    created_at: dt.datetime
    expires_at: dt.datetime
    used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None


@dataclass(frozen=True)
class ApiKey:
    """An API key. `key` (the secret) is set only on the value CreateApiKey returns."""

    id: str
    tenant_id: str
    created_by: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_at: dt.datetime
    expires_at: dt.datetime | None = None
    last_used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    key: str = field(default="", repr=False)

    @property
    def subject(self) -> str:
        """The subject its calls are recorded under."""
        return f"apikey:{self.id}"


@dataclass(frozen=True)
class ServiceAccount:
    """A client of the client_credentials grant. `client_secret` is set only on creation."""

    id: str
    tenant_id: str
    name: str
    client_id: str
    scopes: tuple[str, ...]
    created_by: str
    active: bool
    created_at: dt.datetime
    client_secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class AuditEntry:
    """One audited identity event; `change` never holds a secret."""

    id: str
    tenant_id: str
    actor: str
    action: str
    entity_type: str
    entity_id: str
    change: dict[str, Any]
    created_at: dt.datetime


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list and the cursor of the next ("" on the last page)."""

    items: list[T]
    next_page_token: str
