"""One error hierarchy for every service, carrying its gRPC code; turned into rich statuses."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "flowforge.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: `field` is a path such as `steps[2].depends_on`."""

    field: str
    message: str


@dataclass
class DomainError(Exception):
    """Base of every expected failure. `reason` becomes `google.rpc.ErrorInfo.reason`.

    The edge maps (gRPC code, reason) to an HTTP status, e.g. INVALID_ARGUMENT with
    reason `VALIDATION_FAILED` is 422 while a plain malformed request is 400.
    """

    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    grpc_code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class BadRequestError(DomainError):
    """The request is malformed (400)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "BAD_REQUEST"


class ValidationError(DomainError):
    """The request is well-formed but semantically invalid (422), with field violations."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "VALIDATION_FAILED"


class NotFoundError(DomainError):
    """The resource does not exist, or belongs to another tenant (404)."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExistsError(DomainError):
    """A unique name or key is taken (409)."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class ConflictError(DomainError):
    """The resource is in a state that forbids the change (409)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "CONFLICT"


class EtagMismatchError(DomainError):
    """`If-Match` does not match the current etag (412)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "ETAG_MISMATCH"


class AbortedError(DomainError):
    """A concurrent change won; retry (409)."""

    grpc_code = grpc.StatusCode.ABORTED
    reason = "ABORTED"


class UnauthenticatedError(DomainError):
    """Missing or bad credentials (401)."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDeniedError(DomainError):
    """Authenticated but not allowed (403)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class ResourceExhaustedError(DomainError):
    """A limit was hit (429)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class UnavailableError(DomainError):
    """A dependency is down (503)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


def to_rpc_status(error: DomainError) -> status_pb2.Status:
    """Builds the `google.rpc.Status` (ErrorInfo + BadRequest details) for a domain error."""
    details: list[any_pb2.Any] = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata))
    details.append(info)
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.message)
                for v in error.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    return status_pb2.Status(code=getattr(code_pb2, error.grpc_code.name), message=error.message, details=details)
