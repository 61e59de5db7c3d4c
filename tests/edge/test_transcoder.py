"""REST -> gRPC request transcoding, without a server: bindings, path, query, body, headers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.api import annotations_pb2
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiDict

from edge import jsonmap
from edge.pathtemplate import PathTemplate
from edge.problems import ProblemError
from edge.transcoder import HttpBinding, HttpRequestParts, bindings_for, location_getters, transcode_request
from edge.upstream import SERVICES
from flowforge.execution.v1 import execution_pb2
from flowforge.workflow.v1 import agent_pb2

BINDINGS = {binding.method.full_name: binding for binding in bindings_for(SERVICES)}


def binding(rpc: str) -> HttpBinding:
    return BINDINGS[rpc]


def parts(
    path: dict[str, str] | None = None,
    query: list[tuple[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    body: Any = None,
    content_type: str = "application/json",
) -> HttpRequestParts:
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    return HttpRequestParts(
        path_params=path or {},
        query=MultiDict(query or []),
        headers=CIMultiDict(headers or {}),
        body=raw,
        content_type=content_type,
    )


def problem_of(rpc: str, request: HttpRequestParts) -> ProblemError:
    with pytest.raises(ProblemError) as error:
        transcode_request(binding(rpc), request)
    return error.value


def test_every_annotated_unary_rpc_has_a_binding_and_streams_have_none() -> None:
    annotated = {
        method.full_name
        for service in SERVICES
        for method in service.methods
        if method.GetOptions().HasExtension(annotations_pb2.http) and not method.server_streaming
    }
    assert set(BINDINGS) == annotated
    assert "flowforge.execution.v1.ExecutionService.WatchRun" not in BINDINGS
    assert binding("flowforge.workflow.v1.WorkflowService.ValidateWorkflow").template.verb == "validate"


def test_success_codes_come_from_the_policy() -> None:
    assert binding("flowforge.workflow.v1.AgentService.CreateAgent").success_code == 201
    assert binding("flowforge.execution.v1.ExecutionService.CancelRun").success_code == 202
    assert binding("flowforge.workflow.v1.AgentService.DeleteAgent").success_code == 204
    assert binding("flowforge.workflow.v1.AgentService.GetAgent").success_code == 200


def test_query_parameters_fill_scalars_enums_and_timestamps() -> None:
    request = transcode_request(
        binding("flowforge.execution.v1.ExecutionService.ListRuns"),
        parts(
            query=[
                ("limit", "5"),
                ("page_token", "abc"),
                ("status", "running"),
                ("trigger", "RUN_TRIGGER_API"),
                ("createdAfter", "2026-01-01T00:00:00Z"),
                ("fields", "id,status"),
            ]
        ),
    )
    message: Any = request.message
    assert (message.limit, message.page_token) == (5, "abc")
    assert message.status == execution_pb2.RUN_STATUS_RUNNING
    assert message.trigger == execution_pb2.RUN_TRIGGER_API
    assert message.created_after.ToJsonString() == "2026-01-01T00:00:00Z"
    assert request.fields == ("id", "status")


def test_repeated_query_parameters_repeat_or_comma_separate() -> None:
    # No annotated RPC has a repeated query field yet: bind WatchEvents to a GET route as one would.
    watch = next(m for s in SERVICES for m in s.methods if m.name == "WatchEvents")
    events = HttpBinding(
        service=watch.containing_service,
        method=watch,
        verb="GET",
        template=PathTemplate.parse("/api/v1/events"),
        body="",
        response_body="",
        policy=None,
        path_fields={},
        header_fields={},
    )
    query = [("types", "workflow.started,workflow.failed"), ("types", "agent.selected"), ("run_id", "r1")]
    message: Any = transcode_request(events, parts(query=query)).message
    assert list(message.types) == ["workflow.started", "workflow.failed", "agent.selected"]
    assert message.run_id == "r1"


def test_int64_query_parameters_keep_full_precision() -> None:
    request = transcode_request(
        binding("flowforge.execution.v1.ExecutionService.ListRunLogs"),
        parts(path={"id": "r1"}, query=[("after_seq", "9007199254740993")]),
    )
    assert request.message.after_seq == 2**53 + 1  # type: ignore[attr-defined]


def test_empty_query_values_count_as_absent() -> None:
    request = transcode_request(
        binding("flowforge.workflow.v1.AgentService.ListAgents"), parts(query=[("status", ""), ("limit", "")])
    )
    assert request.message.status == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ([("bogus", "1")], "bogus", "unknown query parameter"),
        ([("limit", "ten")], "limit", "integer"),
        ([("limit", "1"), ("limit", "2")], "limit", "once"),
        ([("status", "sleeping")], "status", "one of"),
        ([("items", "x")], "items", "unknown"),
        ([("fields", "id,nope")], "fields", "no field 'nope'"),
    ],
)
def test_bad_query_parameters_are_a_400_naming_them(query: list[tuple[str, str]], field: str, message: str) -> None:
    problem = problem_of("flowforge.workflow.v1.AgentService.ListAgents", parts(query=query))
    assert problem.status == 400
    assert problem.errors[0].field == field
    assert message in problem.errors[0].message


def test_query_cannot_set_path_body_or_header_fields() -> None:
    update = "flowforge.workflow.v1.AgentService.UpdateAgent"
    path = {"id": "a1"}
    assert "URL path" in problem_of(update, parts(path=path, query=[("id", "a2")])).detail
    assert "body" in problem_of(update, parts(path=path, query=[("agent.name", "x")])).detail
    assert "If-Match" in problem_of(update, parts(path=path, query=[("etag", "e")])).detail
    cancel = "flowforge.execution.v1.ExecutionService.CancelRun"
    assert "Idempotency-Key" in problem_of(cancel, parts(path={"id": "r"}, query=[("idempotency_key", "k")])).detail
    from_template = "flowforge.workflow.v1.WorkflowService.CreateWorkflowFromTemplate"
    assert "body" in problem_of(from_template, parts(path={"template_name": "t"}, query=[("name", "n")])).detail


def test_body_star_takes_the_whole_request_and_path_wins_only_when_consistent() -> None:
    rpc = "flowforge.workflow.v1.WorkflowService.CreateWorkflowFromTemplate"
    request = transcode_request(
        binding(rpc), parts(path={"template_name": "t1"}, body={"template_name": "t1", "name": "n"})
    )
    assert (request.message.template_name, request.message.name) == ("t1", "n")  # type: ignore[attr-defined]
    problem = problem_of(rpc, parts(path={"template_name": "t1"}, body={"template_name": "t2", "name": "n"}))
    assert (problem.status, problem.errors[0].field) == (400, "template_name")


def test_body_field_fills_that_field_and_derives_the_update_mask() -> None:
    request = transcode_request(
        binding("flowforge.workflow.v1.AgentService.UpdateAgent"),
        parts(path={"id": "a1"}, body={"name": "n", "retryConfig": {"max_retries": 2}}, headers={"If-Match": 'W/"e1"'}),
    )
    message: Any = request.message
    assert message.id == "a1" and message.agent.name == "n"
    # Merge-patch semantics: a nested object names its leaves, so its other fields keep their values.
    assert list(message.update_mask.paths) == ["name", "retry_config.max_retries"]
    assert message.etag == "e1"


def test_free_form_and_emptied_objects_are_replaced_whole() -> None:
    request = transcode_request(
        binding("flowforge.workflow.v1.AgentService.UpdateAgent"),
        parts(path={"id": "a1"}, body={"auth_config": {"token": "t"}, "retry_config": {}}),
    )
    assert list(request.message.update_mask.paths) == ["auth_config", "retry_config"]  # type: ignore[attr-defined]


def test_an_explicit_update_mask_is_kept() -> None:
    request = transcode_request(
        binding("flowforge.workflow.v1.AgentService.UpdateAgent"),
        parts(path={"id": "a1"}, query=[("update_mask", "name")], body={"name": "n", "url": "u"}),
    )
    assert list(request.message.update_mask.paths) == ["name"]  # type: ignore[attr-defined]


def test_header_bound_fields_may_not_come_in_the_body() -> None:
    problem = problem_of(
        "flowforge.execution.v1.ExecutionService.ExecuteWorkflow",
        parts(path={"workflow_id": "w"}, body={"idempotency_key": "k"}),
    )
    assert problem.errors[0].field == "idempotency_key"
    assert "Idempotency-Key" in problem.errors[0].message
    request = transcode_request(
        binding("flowforge.execution.v1.ExecutionService.ExecuteWorkflow"),
        parts(path={"workflow_id": "w"}, body={"input": {"doc": 1}}, headers={"Idempotency-Key": "k1"}),
    )
    assert request.message.idempotency_key == "k1"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("header", "etag"), [('"abc"', "abc"), ('W/"abc"', "abc"), ("abc", "abc"), ("*", "")])
def test_if_match_fills_the_etag(header: str, etag: str) -> None:
    request = transcode_request(
        binding("flowforge.workflow.v1.WorkflowService.UpdateWorkflow"),
        parts(path={"id": "w"}, body={"name": "n"}, headers={"If-Match": header}),
    )
    assert request.message.etag == etag  # type: ignore[attr-defined]


def test_body_errors_name_the_path_inside_the_body() -> None:
    problem = problem_of(
        "flowforge.workflow.v1.WorkflowService.CreateWorkflow",
        parts(body={"name": "w", "steps": [{"id": "a"}, {"id": "b", "dependsOn": "a"}]}),
    )
    assert (problem.status, problem.errors[0].field) == (400, "steps[1].depends_on")


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b'{"name": "a", "name": "b"}', "application/json", 400),
        (b'{"timeout_ms": NaN}', "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"name=a", "application/x-www-form-urlencoded", 415),
        (b"<agent/>", "application/xml", 415),
    ],
)
def test_body_format_problems(body: bytes, content_type: str, status: int) -> None:
    problem = problem_of("flowforge.workflow.v1.AgentService.CreateAgent", parts(body=body, content_type=content_type))
    assert problem.status == status


def test_empty_body_is_an_empty_object_whatever_the_type() -> None:
    request = transcode_request(
        binding("flowforge.execution.v1.ExecutionService.CancelRun"), parts(path={"id": "r1"}, content_type="")
    )
    assert request.message.id == "r1"  # type: ignore[attr-defined]


def test_the_token_endpoint_takes_forms_and_json() -> None:
    rpc = "flowforge.auth.v1.AuthService.IssueToken"
    form = transcode_request(
        binding(rpc),
        parts(
            body=b"grant_type=client_credentials&client_id=c&scope=a+b",
            content_type="application/x-www-form-urlencoded",
        ),
    )
    assert (form.message.grant_type, form.message.scope) == ("client_credentials", "a b")  # type: ignore[attr-defined]
    as_json = transcode_request(binding(rpc), parts(body={"grant_type": "client_credentials"}))
    assert as_json.message.grant_type == "client_credentials"  # type: ignore[attr-defined]
    problem = problem_of(rpc, parts(body=b"bogus=1", content_type="application/x-www-form-urlencoded"))
    assert (problem.status, problem.errors[0].field) == (400, "bogus")


def test_http_body_fields_take_the_raw_bytes_and_webhook_headers() -> None:
    request = transcode_request(
        binding("flowforge.execution.v1.ExecutionService.ReceiveHook"),
        parts(
            path={"trigger_id": "t1"},
            body=b"\x00raw",
            content_type="application/octet-stream",
            headers={"webhook-id": "m1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,abc"},
        ),
    )
    message: Any = request.message
    assert (message.body.data, message.body.content_type) == (b"\x00raw", "application/octet-stream")
    assert (message.webhook_id, message.webhook_timestamp, message.webhook_signature) == ("m1", "1700000000", "v1,abc")


def test_creates_find_the_get_route_of_what_they_create() -> None:
    getters = location_getters(list(BINDINGS.values()))
    assert (
        getters["flowforge.workflow.v1.WorkflowService.CreateWorkflowFromTemplate"].template == "/api/v1/workflows/{id}"
    )
    assert getters["flowforge.workflow.v1.AgentService.CreateAgent"].template == "/api/v1/agents/{id}"
    assert (
        getters["flowforge.execution.v1.ExecutionService.CreateSchedule"].template
        == "/api/v1/workflows/{workflow_id}/schedules/{id}"
    )
    assert "flowforge.auth.v1.AuthService.CreateServiceAccount" not in getters  # no GET route: request path + id


limits = st.integers(min_value=0, max_value=100)
statuses = st.sampled_from(list(agent_pb2.AgentStatus.DESCRIPTOR.values))
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30).filter(str.strip)


@given(
    limit=limits,
    status=statuses,
    page_token=texts,
    capabilities=st.lists(texts.filter(lambda t: "," not in t), max_size=3),
)
def test_query_mapping_round_trips(limit: int, status: Any, page_token: str, capabilities: list[str]) -> None:
    query = [("limit", str(limit)), ("status", jsonmap.enum_value_name(status)), ("page_token", page_token)]
    query += [("capability", capabilities[0])] if capabilities else []
    message: Any = transcode_request(
        binding("flowforge.workflow.v1.AgentService.ListAgents"), parts(query=query)
    ).message
    assert message.limit == limit
    assert message.status == status.number
    assert message.page_token == page_token
    assert message.capability == (capabilities[0] if capabilities else "")


@given(keys=st.lists(st.sampled_from(["name", "url", "description", "timeout_ms", "capabilities"]), unique=True))
def test_update_mask_is_the_body_keys(keys: list[str]) -> None:
    values = {"name": "n", "url": "u", "description": "d", "timeout_ms": 1000, "capabilities": ["c"]}
    message: Any = transcode_request(
        binding("flowforge.workflow.v1.AgentService.UpdateAgent"),
        parts(path={"id": "a"}, body={key: values[key] for key in keys}),
    ).message
    assert list(message.update_mask.paths) == keys
