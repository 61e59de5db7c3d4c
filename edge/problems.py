"""RFC 9457 problem details, and the one table that maps gRPC statuses to HTTP statuses."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

import grpc
from aiohttp import web
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from flowforge_common.errors import ERROR_DOMAIN

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://flowforge.dev/problems/"

CLIENT_CLOSED_REQUEST = 499

_C = grpc.StatusCode
GRPC_TO_HTTP: Mapping[tuple[grpc.StatusCode, str | None], int] = {
    # (code, ErrorInfo.reason or None for "any reason") -> HTTP status. The reason refines a
    # code only where API.md says so; every code not listed is a 500.
    (_C.INVALID_ARGUMENT, None): 400,
    (_C.INVALID_ARGUMENT, "VALIDATION_FAILED"): 422,
    (_C.NOT_FOUND, None): 404,
    (_C.ALREADY_EXISTS, None): 409,
    (_C.ABORTED, None): 409,
    (_C.FAILED_PRECONDITION, None): 409,
    (_C.FAILED_PRECONDITION, "ETAG_MISMATCH"): 412,
    (_C.PERMISSION_DENIED, None): 403,
    (_C.UNAUTHENTICATED, None): 401,
    (_C.RESOURCE_EXHAUSTED, None): 429,
    (_C.UNIMPLEMENTED, None): 501,
    (_C.UNAVAILABLE, None): 503,
    (_C.DEADLINE_EXCEEDED, None): 504,
    # The client closed the request (nginx's 499): not a server failure. Only true when the
    # client did go away; see `problem_from_rpc_error`.
    (_C.CANCELLED, None): CLIENT_CLOSED_REQUEST,
}

# What a client is told when the upstream message must not reach it (a 500, or a transport
# failure whose text names internal addresses).
_GENERIC_DETAIL = {
    500: "The server failed to handle the request.",
    503: "A backend service is unavailable; try again later.",
    504: "A backend service did not answer in time.",
}


def http_status_for(code: grpc.StatusCode, reason: str | None = None) -> int:
    """The HTTP status of a gRPC status code refined by its ErrorInfo reason."""
    return GRPC_TO_HTTP.get((code, reason)) or GRPC_TO_HTTP.get((code, None), 500)


@dataclass(frozen=True)
class FieldProblem:
    """One offending field of a request."""

    field: str
    message: str


@dataclass
class ProblemError(Exception):
    """A failure that becomes a problem+json response. `reason` names its `type`;
    `extensions` are extra members of the problem object (RFC 9457 section 3.2)."""

    status: int
    detail: str
    reason: str = ""
    errors: Sequence[FieldProblem] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    extensions: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)

    def __str__(self) -> str:
        return f"{self.status} {self.detail}"


def bad_request(field_path: str, message: str) -> ProblemError:
    """A 400 about one field of the request (a path, query, header or body field)."""
    return ProblemError(400, f"{field_path}: {message}", "BAD_REQUEST", [FieldProblem(field_path, message)])


def _reason_for_status(status: int) -> str:
    if status == CLIENT_CLOSED_REQUEST:
        return "CLIENT_CLOSED_REQUEST"
    try:
        return HTTPStatus(status).name
    except ValueError:
        return "ERROR"


def status_phrase(status: int) -> str:
    """The reason phrase of an HTTP status, nginx's 499 included."""
    if status == CLIENT_CLOSED_REQUEST:
        return "Client Closed Request"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(problem: ProblemError, request_id: str) -> web.Response:
    """The problem+json response of a ProblemError."""
    reason = problem.reason or _reason_for_status(problem.status)
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + reason.lower().replace("_", "-"),
        "title": status_phrase(problem.status),
        "status": problem.status,
        "detail": problem.detail,
        "request_id": request_id,
    }
    if problem.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in problem.errors]
    for name, value in problem.extensions.items():
        body.setdefault(name, value)
    return web.Response(
        status=problem.status,
        reason=status_phrase(problem.status),
        text=json.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=dict(problem.headers),
    )


def _rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    try:
        return rpc_status.from_call(error)
    except ValueError:
        # The details trailer disagrees with the status line: trust the status line only.
        return None


def problem_from_rpc_error(error: grpc.aio.AioRpcError, *, client_gone: bool = False) -> ProblemError:
    """Maps an upstream gRPC failure through GRPC_TO_HTTP, keeping the ErrorInfo reason, the
    BadRequest field violations and a RetryInfo delay (as `Retry-After`).

    CANCELLED is 499 only when the HTTP client has gone (`client_gone`). The edge's own
    cancellations never arrive here (a handler cancelled because its client hung up raises
    CancelledError, and the edge's deadline is DEADLINE_EXCEEDED, 504), so a CANCELLED call
    while the client still waits was cancelled upstream, e.g. a stream reset by a service
    under load: a server-side failure, 503, which a client may retry (with its
    Idempotency-Key)."""
    code = error.code()
    if code == _C.CANCELLED and not client_gone:
        return ProblemError(503, _GENERIC_DETAIL[503], "UPSTREAM_CANCELLED")
    reason: str | None = None
    errors: list[FieldProblem] = []
    headers: dict[str, str] = {}
    rich = _rich_status(error)
    for detail in rich.details if rich is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request_detail = error_details_pb2.BadRequest()
            detail.Unpack(bad_request_detail)
            errors.extend(FieldProblem(v.field, v.description) for v in bad_request_detail.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            headers["Retry-After"] = str(max(1, round(retry.retry_delay.ToTimedelta().total_seconds())))
    status = http_status_for(code, reason)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    # Upstream text is shown for client errors and for our own domain errors; a 5xx without
    # FlowForge's ErrorInfo comes from the transport or a crash and may name internals.
    trusted = status < 500 or status == 501 or (reason is not None and status != 500)
    detail_text = (error.details() or status_phrase(status)) if trusted else _GENERIC_DETAIL[status]
    return ProblemError(status, detail_text, reason or code.name, errors, headers)
