"""Agent validation: every rule, reported with the field path a REST client sees."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from flowforge_common.errors import ValidationError
from flowforge_common.netpolicy import AgentNetworkMode
from tests.workflow_svc.harness import METADATA_HOST, PUBLIC_URL, StubResolver
from workflow_svc.domain.models import AgentSpec, AuthType, RetryConfig
from workflow_svc.domain.validation import normalised, validate_agent

VALID = AgentSpec(name="summarizer", url=PUBLIC_URL)


async def violations(
    spec: AgentSpec,
    auth_config: dict[str, Any] | None = None,
    network: AgentNetworkMode = AgentNetworkMode.PUBLIC_ONLY,
) -> dict[str, str]:
    """field -> message of every violation; empty when the agent is valid."""
    try:
        await validate_agent(spec, auth_config or {}, network=network, resolver=StubResolver())
    except ValidationError as error:
        assert error.reason == "VALIDATION_FAILED"
        return {v.field: v.message for v in error.violations}
    return {}


@pytest.mark.parametrize(
    ("spec", "auth_config"),
    [
        (VALID, {}),
        (
            replace(
                VALID,
                name="a",
                description="x" * 2000,
                health_url=f"{PUBLIC_URL}/healthz",
                timeout_ms=1000,
                retry_config=RetryConfig(max_retries=0, initial_delay_ms=100, max_delay_ms=100, backoff_multiplier=1),
                capabilities=("summarize", "lang:en", "v1.2/beta_x-y"),
            ),
            {},
        ),
        (replace(VALID, name="A" * 64, timeout_ms=300_000), {}),
        (replace(VALID, name="0._-"), {}),
        (replace(VALID, auth_type=AuthType.BEARER), {"token": "eyJhbGciOi.abc-_~+/="}),
        (replace(VALID, auth_type=AuthType.APIKEY), {"key": "k-123"}),
        (replace(VALID, auth_type=AuthType.APIKEY), {"key": "k-123", "header": "X-Agent-Key"}),
        (replace(VALID, retry_config=RetryConfig(max_retries=10)), {}),
    ],
)
async def test_valid_agents_pass(spec: AgentSpec, auth_config: dict[str, Any]) -> None:
    assert await violations(spec, auth_config) == {}


@pytest.mark.parametrize(
    ("changes", "auth_config", "field", "message"),
    [
        ({"name": ""}, {}, "name", "is required"),
        ({"name": "A" * 65}, {}, "name", "1 to 64"),
        ({"name": "-summarizer"}, {}, "name", "starting with a letter or digit"),
        ({"name": "sum marizer"}, {}, "name", "1 to 64"),
        ({"name": "summarizer/v2"}, {}, "name", "1 to 64"),
        ({"name": "résumé"}, {}, "name", "1 to 64"),
        ({"url": ""}, {}, "url", "is required"),
        ({"url": "ftp://agent.example.com/"}, {}, "url", "http or https"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, {}, "url", "never"),
        ({"url": f"http://{METADATA_HOST}/"}, {}, "url", "never"),
        ({"url": "http://10.0.0.5/"}, {}, "url", "allow-private"),
        ({"description": "x" * 2001}, {}, "description", "at most 2000"),
        ({"health_url": "gopher://agent.example.com/"}, {}, "health_url", "http or https"),
        ({"health_url": "http://[fd00:ec2::254]/"}, {}, "health_url", "never"),
        ({"auth_type": AuthType.NONE}, {"token": "t"}, "auth_config", "must be empty when auth_type is none"),
        ({"auth_type": AuthType.BEARER}, {}, "auth_config.token", "is required when auth_type is bearer"),
        ({"auth_type": AuthType.BEARER}, {"token": ""}, "auth_config.token", "visible ASCII"),
        ({"auth_type": AuthType.BEARER}, {"token": 42.0}, "auth_config.token", "visible ASCII"),
        ({"auth_type": AuthType.BEARER}, {"token": "a\r\nX-Evil: 1"}, "auth_config.token", "visible ASCII"),
        ({"auth_type": AuthType.BEARER}, {"token": "t", "key": "k"}, "auth_config.key", "not a setting"),
        ({"auth_type": AuthType.APIKEY}, {}, "auth_config.key", "is required when auth_type is apikey"),
        ({"auth_type": AuthType.APIKEY}, {"key": "k", "header": "X Key"}, "auth_config.header", "header name"),
        ({"auth_type": AuthType.APIKEY}, {"key": "k", "header": "Host"}, "auth_config.header", "header name"),
        ({"auth_type": AuthType.APIKEY}, {"key": "k", "token": "t"}, "auth_config.token", "not a setting"),
        ({"timeout_ms": 999}, {}, "timeout_ms", "between 1000 and 300000"),
        ({"timeout_ms": 300_001}, {}, "timeout_ms", "between 1000 and 300000"),
        ({"retry_config": RetryConfig(max_retries=-1)}, {}, "retry_config.max_retries", "between 0 and 10"),
        ({"retry_config": RetryConfig(max_retries=11)}, {}, "retry_config.max_retries", "between 0 and 10"),
        ({"retry_config": RetryConfig(initial_delay_ms=99)}, {}, "retry_config.initial_delay_ms", "at least 100"),
        (
            {"retry_config": RetryConfig(initial_delay_ms=5000, max_delay_ms=4999)},
            {},
            "retry_config.max_delay_ms",
            "at least retry_config.initial_delay_ms",
        ),
        ({"retry_config": RetryConfig(backoff_multiplier=0.5)}, {}, "retry_config.backoff_multiplier", "at least 1"),
        (
            {"retry_config": RetryConfig(backoff_multiplier=float("nan"))},
            {},
            "retry_config.backoff_multiplier",
            "finite",
        ),
        (
            {"retry_config": RetryConfig(backoff_multiplier=float("inf"))},
            {},
            "retry_config.backoff_multiplier",
            "finite",
        ),
        ({"capabilities": ("ok", "not ok")}, {}, "capabilities[1]", "1 to 64"),
        ({"capabilities": ("",)}, {}, "capabilities[0]", "1 to 64"),
        ({"capabilities": ("x" * 65,)}, {}, "capabilities[0]", "1 to 64"),
        ({"capabilities": tuple(f"c{i}" for i in range(33))}, {}, "capabilities", "at most 32"),
    ],
)
async def test_each_rule_names_its_field(
    changes: dict[str, Any], auth_config: dict[str, Any], field: str, message: str
) -> None:
    found = await violations(replace(VALID, **changes), auth_config)
    assert list(found) == [field]
    assert message in found[field]


async def test_every_problem_is_reported_at_once_in_field_order() -> None:
    spec = AgentSpec(
        name="",
        url="http://169.254.169.254/",
        health_url="ftp://x/",
        auth_type=AuthType.BEARER,
        timeout_ms=10,
        retry_config=RetryConfig(max_retries=99, initial_delay_ms=1, max_delay_ms=0, backoff_multiplier=0),
        capabilities=("ok", "bad cap"),
    )
    found = await violations(spec, {"token": "t", "extra": "x"})
    assert list(found) == [
        "name",
        "url",
        "health_url",
        "auth_config.extra",
        "timeout_ms",
        "retry_config.max_retries",
        "retry_config.initial_delay_ms",
        "retry_config.max_delay_ms",
        "retry_config.backoff_multiplier",
        "capabilities[1]",
    ]


async def test_credential_values_are_never_echoed() -> None:
    secret = "sk-live-0123456789\n"
    found = await violations(replace(VALID, auth_type=AuthType.BEARER), {"token": secret})
    assert "auth_config.token" in found
    assert all("sk-live" not in message for message in found.values())


async def test_private_urls_pass_when_the_network_allows_them() -> None:
    spec = replace(VALID, url="http://10.0.0.5:8080/run", health_url="http://localhost:9000/health")
    assert await violations(spec, network=AgentNetworkMode.ALLOW_PRIVATE) == {}
    assert set(await violations(spec)) == {"url", "health_url"}


def test_capabilities_are_stored_without_duplicates_in_first_seen_order() -> None:
    spec = replace(VALID, capabilities=("b", "a", "b", "c", "a"))
    assert normalised(spec).capabilities == ("b", "a", "c")


async def test_duplicates_do_not_count_against_the_capability_limit() -> None:
    spec = replace(VALID, capabilities=("same",) * 40)
    assert await violations(spec) == {}
