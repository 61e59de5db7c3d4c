"""The generated OpenAPI document: schemas from descriptors, descriptions from proto comments."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from edge.openapi import OpenApiDocuments, as_openapi_30, load_comments
from edge.transcoder import bindings_for
from edge.upstream import SERVICES


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return OpenApiDocuments.build(bindings_for(SERVICES)).document


def test_both_renditions_are_valid(document: dict[str, Any]) -> None:
    validate(document)
    downgraded = as_openapi_30(document)
    assert downgraded["openapi"] == "3.0.3"
    validate(downgraded)


def test_comments_come_from_the_descriptor_set() -> None:
    comments = load_comments()
    assert comments["flowforge.workflow.v1.AgentService.CreateAgent"].startswith("Registers an agent.")
    assert (
        comments["flowforge.workflow.v1.Agent.timeout_ms"]
        == "Deadline of one call in ms, 1000..300000 (default 30000)."
    )
    assert comments["flowforge.execution.v1.RunStatus.RUN_STATUS_PENDING"] == "Accepted, no step started yet."


def test_message_schemas_carry_field_behavior(document: dict[str, Any]) -> None:
    agent = document["components"]["schemas"]["Agent"]
    assert agent["required"] == ["name", "url"]
    assert agent["properties"]["id"]["readOnly"] is True
    assert agent["properties"]["auth_config"]["writeOnly"] is True
    assert agent["properties"]["auth_type"]["$ref"] == "#/components/schemas/AgentAuthType"
    assert agent["properties"]["created_at"]["format"] == "date-time"
    assert agent["properties"]["auth_config"]["type"] == "object"
    assert agent["properties"]["capabilities"] == {
        "type": "array",
        "items": {"type": "string"},
        "description": "Free-form capability labels, used by the `capability` filter.",
    }


def test_well_known_and_scalar_types(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["AgentAuthType"]["enum"] == ["none", "bearer", "apikey"]
    assert schemas["RunLog"]["properties"]["seq"]["type"] == "integer"
    assert schemas["Run"]["properties"]["input"].keys() <= {"description"}  # any JSON value
    assert schemas["GetStatsResponse"]["properties"]["runs_by_status"]["additionalProperties"]["format"] == "int64"
    assert schemas["ValidateWorkflowResponse"]["properties"]["plan"]["items"] == {"type": "array", "items": {}}


def test_operations_follow_the_bindings(document: dict[str, Any]) -> None:
    paths = document["paths"]
    create = paths["/api/v1/agents"]["post"]
    assert create["operationId"] == "CreateAgent"
    assert create["summary"] == "Registers an agent."
    assert "Location" in create["responses"]["201"]["headers"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Agent"
    listing = paths["/api/v1/agents"]["get"]
    names = {p["name"]: p for p in listing["parameters"]}
    assert set(names) == {"limit", "page_token", "status", "capability", "name", "fields"}
    assert names["status"]["schema"] == {"$ref": "#/components/schemas/AgentStatus"}
    assert "204" in paths["/api/v1/agents/{id}"]["delete"]["responses"]
    assert "content" not in paths["/api/v1/agents/{id}"]["delete"]["responses"]["204"]
    update = paths["/api/v1/agents/{id}"]["patch"]
    assert {"If-Match", "id"} <= {p["name"] for p in update["parameters"]}
    assert "412" in update["responses"]
    steps = paths["/api/v1/runs/{id}/steps"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert steps["type"] == "array"
    assert paths["/api/v1/workflows:validate"]["post"]["operationId"] == "ValidateWorkflow"


def test_security_is_per_operation(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["apiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert document["paths"]["/api/v1/auth/login"]["post"]["security"] == []
    assert "401" not in document["paths"]["/api/v1/auth/login"]["post"]["responses"]
    assert document["paths"]["/api/v1/agents"]["get"]["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]
    assert "`agents:read`" in document["paths"]["/api/v1/agents"]["get"]["description"]


def test_body_star_schemas_leave_out_path_and_header_fields(document: dict[str, Any]) -> None:
    execute = document["paths"]["/api/v1/workflows/{workflow_id}/execute"]["post"]
    body = execute["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"input", "version"}
    assert "Idempotency-Key" in {p["name"] for p in execute["parameters"]}
    token = document["paths"]["/api/v1/auth/token"]["post"]["requestBody"]["content"]
    assert set(token) == {"application/json", "application/x-www-form-urlencoded"}
    hook = document["paths"]["/api/v1/hooks/{trigger_id}"]["post"]["requestBody"]["content"]
    assert hook == {"*/*": {"schema": {"type": "string", "format": "binary"}}}
