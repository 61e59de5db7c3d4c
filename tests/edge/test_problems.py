"""The GRPC_TO_HTTP table and the problem details built from upstream gRPC errors."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from edge.problems import GRPC_TO_HTTP, ProblemError, http_status_for, problem_from_rpc_error, problem_response
from flowforge_common.errors import ERROR_DOMAIN

C = grpc.StatusCode


@pytest.mark.parametrize(
    ("code", "reason", "status"),
    [
        (C.INVALID_ARGUMENT, None, 400),
        (C.INVALID_ARGUMENT, "BAD_REQUEST", 400),
        (C.INVALID_ARGUMENT, "VALIDATION_FAILED", 422),
        (C.NOT_FOUND, "NOT_FOUND", 404),
        (C.ALREADY_EXISTS, "ALREADY_EXISTS", 409),
        (C.ABORTED, None, 409),
        (C.FAILED_PRECONDITION, "CONFLICT", 409),
        (C.FAILED_PRECONDITION, "ETAG_MISMATCH", 412),
        (C.PERMISSION_DENIED, None, 403),
        (C.UNAUTHENTICATED, None, 401),
        (C.RESOURCE_EXHAUSTED, None, 429),
        (C.UNIMPLEMENTED, None, 501),
        (C.UNAVAILABLE, None, 503),
        (C.DEADLINE_EXCEEDED, None, 504),
        (C.INTERNAL, None, 500),
        (C.UNKNOWN, None, 500),
        (C.DATA_LOSS, None, 500),
        (C.CANCELLED, None, 499),
        (C.OUT_OF_RANGE, None, 500),
    ],
)
def test_grpc_to_http(code: grpc.StatusCode, reason: str | None, status: int) -> None:
    assert http_status_for(code, reason) == status


def test_reasons_only_refine_their_own_code() -> None:
    assert http_status_for(C.NOT_FOUND, "ETAG_MISMATCH") == 404
    assert all(status >= 400 for status in GRPC_TO_HTTP.values())


def rpc_error(code: grpc.StatusCode, message: str, *details: object) -> grpc.aio.AioRpcError:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    trailing = rpc_status.to_status(status).trailing_metadata if details else ()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=message)


def test_validation_failures_keep_reason_and_field_violations() -> None:
    error = rpc_error(
        C.INVALID_ARGUMENT,
        "the workflow is invalid",
        error_details_pb2.ErrorInfo(reason="VALIDATION_FAILED", domain=ERROR_DOMAIN),
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field="steps[2].depends_on", description="x")]
        ),
    )
    problem = problem_from_rpc_error(error)
    assert (problem.status, problem.reason, problem.detail) == (422, "VALIDATION_FAILED", "the workflow is invalid")
    assert [(e.field, e.message) for e in problem.errors] == [("steps[2].depends_on", "x")]


def test_another_domains_reason_is_not_trusted() -> None:
    error = rpc_error(C.INVALID_ARGUMENT, "m", error_details_pb2.ErrorInfo(reason="VALIDATION_FAILED", domain="evil"))
    assert problem_from_rpc_error(error).status == 400


def test_unauthenticated_asks_for_a_bearer_token() -> None:
    problem = problem_from_rpc_error(rpc_error(C.UNAUTHENTICATED, "token expired"))
    assert problem.status == 401 and problem.headers["WWW-Authenticate"] == "Bearer"


def test_retry_info_becomes_retry_after() -> None:
    error = rpc_error(C.RESOURCE_EXHAUSTED, "slow down", error_details_pb2.RetryInfo(retry_delay={"seconds": 7}))
    assert problem_from_rpc_error(error).headers["Retry-After"] == "7"


def test_cancelled_is_499_once_the_client_has_gone() -> None:
    problem = problem_from_rpc_error(rpc_error(C.CANCELLED, "Cancelled"), client_gone=True)
    assert (problem.status, problem.reason) == (499, "CANCELLED")
    response = problem_response(problem, "req_1")
    assert (response.status, response.reason) == (499, "Client Closed Request")
    assert response.text is not None
    body = json.loads(response.text)
    assert (body["title"], body["type"]) == ("Client Closed Request", "https://flowforge.dev/problems/cancelled")


def test_cancelled_while_the_client_still_waits_is_a_retryable_server_failure() -> None:
    """The edge's own cancellations never come back as CANCELLED: one that does was cancelled
    upstream (e.g. a stream reset under load), which is not the client's doing."""
    problem = problem_from_rpc_error(rpc_error(C.CANCELLED, "Received RST_STREAM with error code 8"))
    assert (problem.status, problem.reason) == (503, "UPSTREAM_CANCELLED")
    assert "RST_STREAM" not in problem.detail


@pytest.mark.parametrize("code", [C.INTERNAL, C.UNKNOWN, C.UNAVAILABLE, C.DEADLINE_EXCEEDED, C.CANCELLED])
def test_server_side_failures_hide_upstream_text(code: grpc.StatusCode) -> None:
    problem = problem_from_rpc_error(rpc_error(code, "failed to connect to 10.1.2.3:50052"))
    assert "10.1.2.3" not in problem.detail


def test_a_details_trailer_that_disagrees_is_ignored() -> None:
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="other")
    trailing = rpc_status.to_status(status).trailing_metadata
    error = grpc.aio.AioRpcError(C.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details="m")
    assert problem_from_rpc_error(error).status == 400


def test_problem_response_is_rfc_9457() -> None:
    response = problem_response(ProblemError(404, "no such agent", "NOT_FOUND", extensions={"x": 1}), "req_1")
    assert response.content_type == "application/problem+json"
    assert response.text is not None
    assert json.loads(response.text) == {
        "x": 1,
        "type": "https://flowforge.dev/problems/not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "no such agent",
        "request_id": "req_1",
    }
