"""Workflow protos <-> the domain's Workflow JSON: enums, numbers, templates, page tokens."""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from flowforge.workflow.v1 import workflow_pb2, workflow_service_pb2
from flowforge_common.errors import BadRequestError
from flowforge_common.pagination import encode_page_token
from tests.workflow_svc.harness import API_EXAMPLE, definition_of, workflow_message
from workflow_svc.api.mappers import (
    RenderedVersions,
    definition_from_proto,
    page_token_from_workflow_cursor,
    template_to_proto,
    workflow_cursor_from_page_token,
    workflow_to_proto,
)
from workflow_svc.domain.models import Workflow, WorkflowCursor, WorkflowOrder, WorkflowStatus
from workflow_svc.domain.templates import BUILTIN_TEMPLATES

NOW = dt.datetime(2026, 1, 15, 10, 30, tzinfo=dt.UTC)


def stored(definition: dict[str, Any]) -> Workflow:
    return Workflow(
        id="wf_1",
        tenant_id="ten_a",
        version=3,
        status=WorkflowStatus.ARCHIVED,
        definition=definition,
        etag="e",
        created_at=NOW,
        updated_at=NOW,
        created_by="usr_a",
    )


def test_a_definition_reads_like_the_json_the_client_sent() -> None:
    message = workflow_message(API_EXAMPLE)
    message.id, message.etag, message.version = "wf_forged", "forged", 9

    definition = definition_from_proto(message)

    assert definition == API_EXAMPLE  # lower-case enums, integers, no bookkeeping fields
    assert isinstance(definition["steps"][1]["timeout_ms"], int)
    assert definition["steps"][3]["type"] == "http"


def test_whole_struct_numbers_become_integers_and_others_stay() -> None:
    definition = {"name": "n", "steps": [{"id": "a", "type": "transform", "input": {"n": 3, "x": 2.5, "big": 1e300}}]}
    assert definition_from_proto(workflow_message(definition))["steps"][0]["input"] == {"n": 3, "x": 2.5, "big": 1e300}


def test_a_stored_workflow_maps_back_to_what_was_sent() -> None:
    definition = copy.deepcopy(API_EXAMPLE)
    definition["steps"][1]["on_exhausted"] = "pause"

    message = workflow_to_proto(stored(definition))

    assert definition_of(message) == workflow_message(definition)
    assert message.steps[1].on_exhausted == workflow_pb2.ON_EXHAUSTED_PAUSE
    assert (message.id, message.version, message.status, message.etag) == (
        "wf_1",
        3,
        workflow_pb2.WORKFLOW_STATUS_ARCHIVED,
        "e",
    )
    assert message.updated_at.ToDatetime(dt.UTC) == NOW


def test_templates_keep_every_placeholder_a_field_can_hold() -> None:
    fan_out = template_to_proto(BUILTIN_TEMPLATES["fan-out-fan-in"]).definition
    process = fan_out.steps[0]
    assert process.agent == "{{ params.worker_agent }}"
    assert process.for_each == "{{ input.items }}"
    assert not process.HasField("max_concurrency")
    assert not process.HasField("timeout_ms")

    retry = template_to_proto(BUILTIN_TEMPLATES["retry-with-fallback"]).definition.steps[0].retry
    assert not retry.HasField("max_retries")
    assert (retry.initial_delay_ms, retry.backoff_multiplier) == (1000, 2.0)

    approval = template_to_proto(BUILTIN_TEMPLATES["approval-gate"]).definition.steps[1]
    assert approval.type == workflow_pb2.STEP_TYPE_WAIT_FOR_SIGNAL
    assert approval.config["timeout_ms"] == "{{ params.timeout_ms }}"  # Struct values hold anything


@pytest.mark.parametrize(
    "cursor",
    [
        WorkflowCursor(WorkflowOrder.CREATED_DESC, NOW, "wf_1"),
        WorkflowCursor(WorkflowOrder.UPDATED_DESC, NOW.replace(microsecond=123456), "wf_2"),
        WorkflowCursor(WorkflowOrder.NAME_DESC, "flow ✓", "wf_3"),
    ],
)
def test_workflow_page_tokens_round_trip(cursor: WorkflowCursor) -> None:
    assert workflow_cursor_from_page_token(page_token_from_workflow_cursor(cursor)) == cursor


@pytest.mark.parametrize(
    "position",
    [
        {"order": "sideways", "value": "x", "id": "wf_1"},
        {"order": "created_at desc", "value": "not a time", "id": "wf_1"},
        {"order": "created_at desc", "value": "2026-01-01T00:00:00", "id": "wf_1"},  # no zone
        {"order": "name asc", "value": 5, "id": "wf_1"},
        {"order": "name asc", "value": "n"},
    ],
)
def test_forged_workflow_page_tokens_are_refused(position: dict[str, Any]) -> None:
    with pytest.raises(BadRequestError) as caught:
        workflow_cursor_from_page_token(encode_page_token(position))
    assert [violation.field for violation in caught.value.violations] == ["page_token"]


def test_a_version_is_rendered_once_and_never_shared_into_a_response() -> None:
    rendered = RenderedVersions()
    workflow = stored(API_EXAMPLE)
    message = rendered.render(workflow)
    assert message == workflow_to_proto(workflow)
    assert rendered.render(copy.deepcopy(workflow)) is message  # the same version: rendered once
    response = workflow_service_pb2.GetWorkflowResponse(workflow=message)
    response.workflow.name = "changed by a caller"
    assert rendered.render(workflow).name == API_EXAMPLE["name"]


def test_each_tenant_version_and_etag_is_rendered_on_its_own() -> None:
    rendered = RenderedVersions(max_entries=2)
    workflow = stored(API_EXAMPLE)
    first = rendered.render(workflow)
    for other in (
        replace(workflow, tenant_id="ten_other"),
        replace(workflow, version=2),
        replace(workflow, etag="another"),
    ):
        assert rendered.render(other) is not first
    assert rendered.render(workflow) is not first  # bounded: the least recently used went first
