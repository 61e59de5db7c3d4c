"""Proto <-> JSON as the API shows it: enum names, int64, presence, well-known types, strict input."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2, wrappers_pb2
from google.protobuf.descriptor import EnumDescriptor
from hypothesis import given
from hypothesis import strategies as st

from edge import jsonmap
from edge.jsonmap import FieldError
from flowforge.auth.v1 import auth_pb2
from flowforge.execution.v1 import execution_pb2, execution_service_pb2
from flowforge.workflow.v1 import agent_pb2, agent_service_pb2, workflow_pb2
from tests.edge.support import CREATED_AT

ENUMS: list[EnumDescriptor] = [
    enum
    for module in (auth_pb2, agent_pb2, workflow_pb2, execution_pb2)
    for enum in module.DESCRIPTOR.enum_types_by_name.values()
]


@pytest.mark.parametrize(
    ("enum", "value", "name"),
    [
        (execution_pb2.RunStatus, "RUN_STATUS_PENDING", "pending"),
        (agent_pb2.AgentAuthType, "AGENT_AUTH_TYPE_APIKEY", "apikey"),
        (agent_pb2.CircuitState, "CIRCUIT_STATE_HALF_OPEN", "half_open"),
        (workflow_pb2.StepType, "STEP_TYPE_WAIT_FOR_SIGNAL", "wait_for_signal"),
        (auth_pb2.Role, "ROLE_OWNER", "owner"),
    ],
)
def test_enum_values_render_lower_case_without_prefix(enum: Any, value: str, name: str) -> None:
    assert jsonmap.enum_value_name(enum.DESCRIPTOR.values_by_name[value]) == name


@pytest.mark.parametrize("enum", ENUMS, ids=lambda e: e.name)
def test_every_enum_value_round_trips_in_every_spelling(enum: EnumDescriptor) -> None:
    for value in enum.values:
        public = jsonmap.enum_value_name(value)
        assert not public.startswith(jsonmap._enum_prefix(enum).lower())
        for spelling in (public, public.upper(), value.name, value.number):
            assert jsonmap.enum_number(enum, spelling, "f") == value.number
    assert "unspecified" not in jsonmap.public_enum_names(enum)


@given(token=st.text(max_size=12))
def test_unknown_enum_names_are_refused_with_the_choices(token: str) -> None:
    enum = execution_pb2.RunStatus.DESCRIPTOR
    known = {jsonmap.enum_value_name(v) for v in enum.values} | {v.name for v in enum.values}
    if token.strip().upper() in {k.upper() for k in known}:
        return
    with pytest.raises(FieldError) as error:
        jsonmap.enum_number(enum, token, "status")
    assert error.value.field == "status"
    assert "pending" in error.value.message


def test_output_uses_proto_names_defaults_and_omits_unset() -> None:
    agent = agent_pb2.Agent(id="agt_1", auth_type=agent_pb2.AGENT_AUTH_TYPE_BEARER, created_at=CREATED_AT)
    document = jsonmap.message_to_json(agent)
    assert document["auth_type"] == "bearer"
    assert document["created_at"] == "2026-01-15T10:30:00Z"
    # No presence: printed with their defaults. Presence (optional, messages): only when set.
    assert document["description"] == "" and document["capabilities"] == [] and document["has_credentials"] is False
    assert "timeout_ms" not in document and "retry_config" not in document and "updated_at" not in document
    # The UNSPECIFIED zero of an enum means "not set": omitted.
    assert "status" not in document


def test_list_responses_print_an_empty_next_page_token() -> None:
    document = jsonmap.message_to_json(agent_service_pb2.ListAgentsResponse())
    assert document == {"items": [], "next_page_token": ""}


def test_int64_are_numbers_including_map_values() -> None:
    stats = execution_service_pb2.GetStatsResponse(
        runs_by_status={"running": 2**40},
        durations=[execution_pb2.WorkflowDurationStats(p99_ms=2**62)],
    )
    document = jsonmap.message_to_json(stats)
    assert document["runs_by_status"] == {"running": 2**40}
    assert document["durations"][0]["p99_ms"] == 2**62


def test_struct_numbers_that_are_whole_print_as_integers() -> None:
    value = struct_pb2.Value()
    value.struct_value.update({"n": 3, "x": 1.5, "list": [1, None, "a", True]})
    assert jsonmap.message_to_json(value) == {"n": 3, "x": 1.5, "list": [1, None, "a", True]}


def test_doubles_keep_special_values_and_floats_print_shortest() -> None:
    status = agent_pb2.AgentRuntimeStatus(recent_success_rate=math.inf)
    assert jsonmap.message_to_json(status)["recent_success_rate"] == "Infinity"
    widened = wrappers_pb2.FloatValue(value=0.1).value  # 0.10000000149011612 as a double
    assert jsonmap.message_to_json(wrappers_pb2.FloatValue(value=widened)) == 0.1


def test_input_accepts_proto_and_camel_names_and_enum_spellings() -> None:
    agent = agent_pb2.Agent()
    jsonmap.json_to_message(
        {"name": "a", "authType": "APIKEY", "retry_config": {"maxRetries": 3}, "timeout_ms": "5000", "status": 1},
        agent,
    )
    assert agent.auth_type == agent_pb2.AGENT_AUTH_TYPE_APIKEY
    assert agent.retry_config.max_retries == 3
    assert agent.timeout_ms == 5000
    assert agent.status == agent_pb2.AGENT_STATUS_ACTIVE


@pytest.mark.parametrize(
    ("document", "field", "message"),
    [
        ({"nope": 1}, "nope", "unknown field"),
        ({"retry_config": {"max_retries": 1, "bogus": 2}}, "retry_config.bogus", "unknown field"),
        ({"timeout_ms": 2**31}, "timeout_ms", "between"),
        ({"timeout_ms": 1.5}, "timeout_ms", "integer"),
        ({"timeout_ms": True}, "timeout_ms", "integer"),
        ({"name": 5}, "name", "string"),
        ({"capabilities": "x"}, "capabilities", "array"),
        ({"capabilities": ["x", None]}, "capabilities[1]", "null"),
        ({"auth_config": [1]}, "auth_config", "object"),
        ({"auth_type": "oauth"}, "auth_type", "one of"),
        ({"created_at": "yesterday"}, "created_at", "RFC 3339"),
        ({"name": "a", "timeoutMs": 1, "timeout_ms": 2}, "timeout_ms", "twice"),
    ],
)
def test_input_errors_name_the_field_path(document: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(FieldError) as error:
        jsonmap.json_to_message(document, agent_pb2.Agent())
    assert error.value.field == field
    assert message in error.value.message


def test_nested_repeated_paths_carry_indexes() -> None:
    with pytest.raises(FieldError) as error:
        jsonmap.json_to_message(
            {"steps": [{"id": "a"}, {"id": "b", "retry": {"jitter": "yes"}}]}, workflow_pb2.Workflow()
        )
    assert error.value.field == "steps[1].retry.jitter"


def test_null_leaves_a_field_unset_but_is_json_null_in_a_value() -> None:
    step = workflow_pb2.Step()
    jsonmap.json_to_message({"id": None, "input": None}, step)
    assert step.id == "" and step.HasField("input")
    assert step.input.WhichOneof("kind") == "null_value"


def test_reserved_fields_are_refused_with_the_reason() -> None:
    with pytest.raises(FieldError) as error:
        jsonmap.json_to_message({"code": "c"}, execution_pb2.RunError(), reserved={"code": "send it as the X header"})
    assert (error.value.field, error.value.message) == ("code", "send it as the X header")


@given(number=st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_int32_text_round_trips(number: int) -> None:
    field = agent_service_pb2.ListAgentsRequest.DESCRIPTOR.fields_by_name["limit"]
    assert jsonmap.scalar_from_text(field, str(number), "limit") == number


@given(number=st.one_of(st.integers(max_value=-(2**31) - 1), st.integers(min_value=2**31)))
def test_int32_text_out_of_range_is_refused(number: int) -> None:
    field = agent_service_pb2.ListAgentsRequest.DESCRIPTOR.fields_by_name["limit"]
    with pytest.raises(FieldError):
        jsonmap.scalar_from_text(field, str(number), "limit")


@given(text=st.text(max_size=8).filter(lambda t: not t.strip().lstrip("+-").isdigit()))
def test_non_integers_are_refused_as_ints(text: str) -> None:
    field = agent_service_pb2.ListAgentsRequest.DESCRIPTOR.fields_by_name["limit"]
    with pytest.raises(FieldError):
        jsonmap.scalar_from_text(field, text, "limit")


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("1", True), ("FALSE", False), ("0", False)])
def test_bool_text(text: str, expected: bool) -> None:
    field = auth_pb2.User.DESCRIPTOR.fields_by_name["active"]
    assert jsonmap.scalar_from_text(field, text, "active") is expected


def test_text_fills_timestamps_masks_and_nested_fields() -> None:
    request = execution_service_pb2.ListRunsRequest()
    chain = jsonmap.resolve_field_path(request.DESCRIPTOR, "createdAfter")
    assert chain is not None
    jsonmap.set_field_from_text(request, chain, ["2026-01-15T10:30:00+02:00"], "createdAfter")
    assert request.created_after.ToJsonString() == "2026-01-15T08:30:00Z"

    update = agent_service_pb2.UpdateAgentRequest()
    mask = jsonmap.resolve_field_path(update.DESCRIPTOR, "update_mask")
    assert mask is not None
    jsonmap.set_field_from_text(update, mask, ["displayName,retry_config.maxRetries"], "update_mask")
    assert list(update.update_mask.paths) == ["display_name", "retry_config.max_retries"]

    nested = jsonmap.resolve_field_path(update.DESCRIPTOR, "agent.retry_config.max_retries")
    assert nested is not None
    jsonmap.set_field_from_text(update, nested, ["4"], "agent.retry_config.max_retries")
    assert update.agent.retry_config.max_retries == 4


def test_field_paths_only_walk_singular_messages() -> None:
    descriptor = workflow_pb2.Workflow.DESCRIPTOR
    assert jsonmap.resolve_field_path(descriptor, "steps.id") is None  # repeated
    assert jsonmap.resolve_field_path(descriptor, "input_schema.x") is None  # Struct
    assert jsonmap.resolve_field_path(descriptor, "nope") is None


def test_select_fields_on_a_resource_a_list_and_a_bare_array() -> None:
    resource = {"id": "a", "name": "n", "url": "u"}
    assert jsonmap.select_fields(resource, ["id", "name"], items_key=None) == {"id": "a", "name": "n"}
    listing = {"items": [resource, resource], "next_page_token": ""}
    assert jsonmap.select_fields(listing, ["id"], items_key="items") == {
        "items": [{"id": "a"}, {"id": "a"}],
        "next_page_token": "",
    }
    assert jsonmap.select_fields([resource], ["url"], items_key=None) == [{"url": "u"}]


def test_enum_prefixes_come_from_the_unspecified_value_or_the_name() -> None:
    file = descriptor_pb2.FileDescriptorProto(name="prefix_test.proto", package="prefix.test", syntax="proto3")
    with_zero = file.enum_type.add(name="HTTPMethod")
    with_zero.value.add(name="HTTP_METHOD_UNSPECIFIED", number=0)
    with_zero.value.add(name="HTTP_METHOD_GET", number=1)
    without_zero = file.enum_type.add(name="HTTPVerb")
    without_zero.value.add(name="HTTP_VERB_POST", number=0)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    method = pool.FindEnumTypeByName("prefix.test.HTTPMethod")
    verb = pool.FindEnumTypeByName("prefix.test.HTTPVerb")
    assert jsonmap.enum_value_name(method.values_by_number[1]) == "get"
    assert jsonmap.enum_value_name(verb.values_by_number[0]) == "post"
