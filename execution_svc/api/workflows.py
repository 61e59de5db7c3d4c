"""Workflow definitions fetched from workflow_svc over gRPC, for ExecuteWorkflow to snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from flowforge.workflow.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from flowforge_common.auth import Principal
from flowforge_common.errors import (
    ConflictError,
    DomainError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)

_ERRORS: dict[grpc.StatusCode, type[DomainError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


class WorkflowServiceSource:
    """Calls workflow_svc's public `GetWorkflow` on the caller's behalf (its bearer token is
    forwarded, so tenancy and scopes are workflow_svc's to enforce).

    TODO: callers authenticated by API key carry no token to forward; they need a service
    identity plus an internal `GetWorkflowSnapshot(tenant_id, id, version)` RPC.
    """

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = 5.0) -> None:
        self._stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        self._timeout = timeout

    async def fetch(self, caller: Principal, workflow_id: str, version: int | None) -> Mapping[str, Any]:
        """See `WorkflowSource.fetch`."""
        metadata = [("authorization", f"Bearer {caller.token}")] if caller.token else []
        try:
            response = await self._stub.GetWorkflow(
                workflow_service_pb2.GetWorkflowRequest(id=workflow_id, version=version or 0),
                metadata=metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            error = _ERRORS.get(exc.code(), UnavailableError)
            if error is UnavailableError:
                raise UnavailableError(f"workflow_svc could not be asked for the workflow: {exc.code().name}") from exc
            raise error(exc.details() or f"workflow {workflow_id} is not available") from exc
        workflow = response.workflow
        if workflow.status == workflow_pb2.WORKFLOW_STATUS_ARCHIVED:
            raise ConflictError(f"workflow {workflow_id} is archived and cannot be executed")
        return json_format.MessageToDict(workflow, preserving_proto_field_name=True)
