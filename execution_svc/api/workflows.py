"""Workflow definitions fetched from workflow_svc over gRPC, for ExecuteWorkflow to snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import json_format

from flowforge.workflow.v1 import workflow_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from flowforge_common.auth import Principal
from flowforge_common.errors import (
    BadRequestError,
    ConflictError,
    DomainError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from flowforge_common.service_identity import ServiceCredential

_ERRORS: dict[grpc.StatusCode, type[DomainError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BadRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


class WorkflowServiceSource:
    """Calls workflow_svc's public `GetWorkflow` on the caller's behalf: a caller's bearer token
    is forwarded, so tenancy and scopes are workflow_svc's to enforce; a caller without one (an
    API key, a schedule) is represented by the service token for its tenant, after this service
    checked its `runs:execute` scope."""

    def __init__(self, channel: grpc.aio.Channel, credential: ServiceCredential, *, timeout: float = 5.0) -> None:
        self._stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
        self._credential = credential
        self._timeout = timeout

    async def fetch(self, caller: Principal, workflow_id: str, version: int | None) -> Mapping[str, Any]:
        """See `WorkflowSource.fetch`."""
        if caller.token:
            metadata = [("authorization", f"Bearer {caller.token}")]
        else:
            metadata = self._credential.metadata(caller.tenant_id)
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
