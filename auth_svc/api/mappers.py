"""Translation between auth_svc's domain models and its protobuf messages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from google.protobuf import struct_pb2, timestamp_pb2

from auth_svc.domain.models import ApiKey, AuditEntry, Role, ServiceAccount, Tenant, User
from flowforge.auth.v1 import auth_pb2

_ROLE_TO_PROTO: Mapping[Role, auth_pb2.Role.ValueType] = {
    Role.OWNER: auth_pb2.ROLE_OWNER,
    Role.ADMIN: auth_pb2.ROLE_ADMIN,
    Role.EDITOR: auth_pb2.ROLE_EDITOR,
    Role.OPERATOR: auth_pb2.ROLE_OPERATOR,
    Role.VIEWER: auth_pb2.ROLE_VIEWER,
}


_ROLE_FROM_PROTO: Mapping[int, Role] = {value: role for role, value in _ROLE_TO_PROTO.items()}


def role_to_proto(role: Role) -> auth_pb2.Role.ValueType:
    """The Role enum value of a role."""
    return _ROLE_TO_PROTO[role]


def role_from_proto(value: int) -> Role | None:
    """The role of a Role enum value; None for ROLE_UNSPECIFIED (and unknown values)."""
    return _ROLE_FROM_PROTO.get(value)


def timestamp_to_proto(value: dt.datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def tenant_to_proto(tenant: Tenant) -> auth_pb2.Tenant:
    """The Tenant message of a tenant."""
    return auth_pb2.Tenant(id=tenant.id, name=tenant.name, created_at=timestamp_to_proto(tenant.created_at))


def user_to_proto(user: User) -> auth_pb2.User:
    """The User message of a user; the password hash never leaves the service."""
    return auth_pb2.User(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        role=role_to_proto(user.role),
        tenant_id=user.tenant_id,
        active=user.active,
        etag=user.etag,
        created_at=timestamp_to_proto(user.created_at),
        updated_at=timestamp_to_proto(user.updated_at),
    )


def jwk_to_proto(jwk: Mapping[str, str]) -> struct_pb2.Struct:
    """One JSON Web Key as a Struct."""
    struct = struct_pb2.Struct()
    struct.update(jwk)
    return struct


def api_key_to_proto(key: ApiKey) -> auth_pb2.ApiKey:
    """The ApiKey message; `key` is set only on the value CreateApiKey made."""
    message = auth_pb2.ApiKey(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=list(key.scopes),
        created_by=key.created_by,
        created_at=timestamp_to_proto(key.created_at),
    )
    if key.key:
        message.key = key.key
    if key.expires_at is not None:
        message.expires_at.CopyFrom(timestamp_to_proto(key.expires_at))
    if key.last_used_at is not None:
        message.last_used_at.CopyFrom(timestamp_to_proto(key.last_used_at))
    return message


def service_account_to_proto(account: ServiceAccount) -> auth_pb2.ServiceAccount:
    """The ServiceAccount message; `client_secret` only on creation."""
    message = auth_pb2.ServiceAccount(
        id=account.id,
        name=account.name,
        client_id=account.client_id,
        scopes=list(account.scopes),
        created_at=timestamp_to_proto(account.created_at),
    )
    if account.client_secret:
        message.client_secret = account.client_secret
    return message


def audit_entry_to_proto(entry: AuditEntry) -> auth_pb2.AuditLogEntry:
    """The AuditLogEntry message of an entry (its change is masked already)."""
    change = struct_pb2.Struct()
    change.update(entry.change)
    return auth_pb2.AuditLogEntry(
        id=entry.id,
        actor=entry.actor,
        action=entry.action,
        entity_type=entry.entity_type,
        entity_id=entry.entity_id,
        change=change,
        created_at=timestamp_to_proto(entry.created_at),
    )
