"""workflow_svc's AuditService as a source of auth_svc's merged audit log (proto <-> domain)."""

from __future__ import annotations

import datetime as dt
import logging

import grpc
from google.protobuf import json_format

from auth_svc.domain.audit import Credentials
from auth_svc.domain.models import AuditEntry
from flowforge.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from flowforge_common.errors import PermissionDeniedError, UnauthenticatedError, UnavailableError

logger = logging.getLogger(__name__)
# Metadata of the caller that a source needs to check the call itself.
FORWARDED_METADATA = ("authorization", "x-api-key", "x-request-id", "traceparent", "tracestate")


def forwarded_credentials(metadata: object) -> list[tuple[str, str]]:
    """The caller's credentials and trace context out of an RPC's invocation metadata."""
    pairs = metadata if isinstance(metadata, list | tuple) else []
    return [(key, value) for key, value in pairs if key in FORWARDED_METADATA and isinstance(value, str)]


class RemoteAuditSource:
    """Reads another service's audit entries over gRPC, as the caller."""

    def __init__(self, channel: grpc.aio.Channel, *, name: str, timeout: float = 5.0) -> None:
        self._stub = audit_service_pb2_grpc.AuditServiceStub(channel)
        self._name = name
        self._timeout = timeout

    async def entries(
        self,
        credentials: Credentials,
        *,
        limit: int,
        before: tuple[dt.datetime, str] | None,
        entity_type: str,
        entity_id: str,
        actor: str,
    ) -> list[AuditEntry]:
        """One page of the source's entries of the caller's tenant."""
        request = audit_service_pb2.ListAuditEntriesRequest(
            limit=limit, entity_type=entity_type, entity_id=entity_id, actor=actor
        )
        if before is not None:
            request.before_created_at.FromDatetime(before[0])
            request.before_id = before[1]
        try:
            response = await self._stub.ListAuditEntries(request, metadata=tuple(credentials), timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDeniedError(error.details() or "not allowed") from error
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise UnauthenticatedError(error.details() or "not authenticated") from error
            logger.warning("audit source %s failed: %s", self._name, error.code().name)
            raise UnavailableError(f"the audit log of {self._name} is unavailable; try again") from error
        return [
            AuditEntry(
                id=item.id,
                tenant_id="",
                actor=item.actor,
                action=item.action,
                entity_type=item.entity_type,
                entity_id=item.entity_id,
                change=json_format.MessageToDict(item.change),
                created_at=item.created_at.ToDatetime(tzinfo=dt.UTC),
            )
            for item in response.items
        ]
