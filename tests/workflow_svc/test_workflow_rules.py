"""Small rules of workflow_svc: order_by, name-prefix ranges, audit views, health figures."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from flowforge_common.errors import BadRequestError
from workflow_svc.db.workflows import _prefix_successor
from workflow_svc.domain.audit import MASK, agent_change, agent_view, changed, masked_definition
from workflow_svc.domain.health import health_url, runtime_status
from workflow_svc.domain.models import (
    Agent,
    AgentCallStats,
    AgentSpec,
    AgentStatus,
    AuthType,
    CircuitState,
    HealthProbe,
    WorkflowOrder,
)
from workflow_svc.domain.service import credential_headers
from workflow_svc.domain.workflows import parse_order_by

NOW = dt.datetime(2026, 1, 15, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("order_by", "order"),
    [
        ("", WorkflowOrder.CREATED_DESC),
        ("created_at desc", WorkflowOrder.CREATED_DESC),
        ("created_at", WorkflowOrder.CREATED_ASC),
        ("  Name   DESC ", WorkflowOrder.NAME_DESC),
        ("name", WorkflowOrder.NAME_ASC),
        ("updated_at desc", WorkflowOrder.UPDATED_DESC),
    ],
)
def test_order_by_accepts_the_documented_orders(order_by: str, order: WorkflowOrder) -> None:
    assert parse_order_by(order_by) is order


@pytest.mark.parametrize("order_by", ["updated_at", "id desc", "name desc extra", "name,created_at"])
def test_order_by_refuses_anything_else_naming_the_field(order_by: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_order_by(order_by)
    assert [violation.field for violation in caught.value.violations] == ["order_by"]


@pytest.mark.parametrize(
    ("prefix", "successor"),
    [
        ("abc", "abd"),
        ("a-", "a."),
        ("z\U0010ffff", "{"),  # the largest code point cannot grow: the one before it does
        ("\U0010ffff", None),
        ("a\ud7ff", "a\ue000"),  # surrogates are skipped: they never occur in stored text
    ],
)
def test_name_prefixes_become_ranges(prefix: str, successor: str | None) -> None:
    assert _prefix_successor(prefix) == successor


def agent(sealed_auth_config: str | None) -> Agent:
    return Agent(
        id="agt_1",
        tenant_id="ten_a",
        spec=AgentSpec(name="a", url="https://agent.example.com/run"),
        sealed_auth_config=sealed_auth_config,
        etag="e",
        created_at=NOW,
        updated_at=NOW,
        created_by="usr_a",
    )


def test_agent_views_never_hold_credentials() -> None:
    plain, sealed = agent(None), agent("v1:abcd:secret-ciphertext")

    assert agent_view(plain)["auth_config"] is None
    assert agent_view(sealed)["auth_config"] == MASK
    assert "secret-ciphertext" not in repr(agent_view(sealed))
    assert agent_view(sealed)["capabilities"] == []
    rotated = agent_change(sealed, sealed, credentials_written=True)
    assert rotated == {"before": {"auth_config": MASK}, "after": {"auth_config": MASK}}
    assert agent_change(sealed, sealed, credentials_written=False) == {"before": {}, "after": {}}


def test_changes_list_only_what_differs() -> None:
    assert changed({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 4, "d": 5}) == {
        "before": {"b": 2, "c": 3, "d": None},
        "after": {"b": 4, "c": None, "d": 5},
    }


def test_header_values_of_definitions_are_masked() -> None:
    definition = {
        "name": "n",
        "steps": [
            {"id": "a", "type": "http", "config": {"url": "u", "headers": {"Authorization": "Bearer x", "X-K": "k"}}},
            {"id": "b", "type": "transform", "input": {"headers": {"keep": "me"}}},
        ],
    }
    masked = masked_definition(definition)
    assert masked["steps"][0]["config"] == {"url": "u", "headers": {"Authorization": MASK, "X-K": MASK}}
    assert masked["steps"][1] == definition["steps"][1]
    assert definition["steps"][0]["config"]["headers"]["Authorization"] == "Bearer x"  # a copy was masked


def test_agents_are_probed_at_their_health_url() -> None:
    assert health_url(AgentSpec(url="https://a.example/run/")) == "https://a.example/run/health"
    assert health_url(AgentSpec(url="https://a.example", health_url="https://a.example/ready")) == (
        "https://a.example/ready"
    )


def test_credentials_travel_in_their_header() -> None:
    assert credential_headers(AuthType.NONE, {}) == {}
    assert credential_headers(AuthType.BEARER, {"token": "t"}) == {"Authorization": "Bearer t"}
    assert credential_headers(AuthType.APIKEY, {"key": "k"}) == {"X-API-Key": "k"}
    assert credential_headers(AuthType.APIKEY, {"key": "k", "header": "X-Mine"}) == {"X-Mine": "k"}


def test_runtime_status_summarises_the_recent_probes() -> None:
    def probe(healthy: bool, latency_ms: int) -> HealthProbe:
        return HealthProbe(healthy=healthy, latency_ms=latency_ms, checked_at=NOW, detail="")

    nothing = runtime_status(AgentStatus.ACTIVE, [])
    assert (nothing.recent_success_rate, nothing.p50_latency_ms) == (0.0, 0)
    status = runtime_status(
        AgentStatus.INACTIVE, [probe(True, 40), probe(False, 1000), probe(True, 10), probe(True, 20)]
    )
    assert status.status is AgentStatus.INACTIVE
    assert status.recent_success_rate == 0.75
    assert status.p50_latency_ms == 20  # an observed latency: the lower middle one
    assert (status.in_flight, status.circuit) == (0, None)  # the engine was not asked


def test_runtime_status_prefers_the_engines_calls_to_probes() -> None:
    probes = [HealthProbe(healthy=True, latency_ms=5, checked_at=NOW, detail="")]
    calls = AgentCallStats(
        circuit=CircuitState.OPEN, in_flight=3, recent_calls=10, recent_success_rate=0.2, p50_latency_ms=900
    )
    status = runtime_status(AgentStatus.ACTIVE, probes, calls)
    assert (status.circuit, status.in_flight, status.recent_success_rate, status.p50_latency_ms) == (
        CircuitState.OPEN,
        3,
        0.2,
        900,
    )
    idle = runtime_status(AgentStatus.ACTIVE, probes, replace(calls, recent_calls=0, circuit=CircuitState.CLOSED))
    assert (idle.circuit, idle.recent_success_rate, idle.p50_latency_ms) == (CircuitState.CLOSED, 1.0, 5)
