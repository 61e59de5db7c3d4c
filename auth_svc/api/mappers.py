"""Translation between auth_svc's domain models and its protobuf messages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from google.protobuf import struct_pb2, timestamp_pb2

from auth_svc.domain.models import Role, Tenant, User
from flowforge.auth.v1 import auth_pb2

_ROLE_TO_PROTO: Mapping[Role, auth_pb2.Role.ValueType] = {
    Role.OWNER: auth_pb2.ROLE_OWNER,
    Role.ADMIN: auth_pb2.ROLE_ADMIN,
    Role.EDITOR: auth_pb2.ROLE_EDITOR,
    Role.OPERATOR: auth_pb2.ROLE_OPERATOR,
    Role.VIEWER: auth_pb2.ROLE_VIEWER,
}


def role_to_proto(role: Role) -> auth_pb2.Role.ValueType:
    """The Role enum value of a role."""
    return _ROLE_TO_PROTO[role]


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
