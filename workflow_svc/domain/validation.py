"""Validation of agents: every rule, every problem reported at once with its field path."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from flowforge_common.errors import FieldViolation, ValidationError
from flowforge_common.netpolicy import AgentNetworkMode, NetworkPolicyError, Resolver, check_url
from workflow_svc.domain.models import AgentSpec, AuthType, RetryConfig

# Names are what workflow steps refer to, so they are kept to a charset that reads well in
# definitions and URLs: 1..64 of letters, digits, `.`, `_` and `-`, starting alphanumeric.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CAPABILITY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")
MAX_CAPABILITIES = 32
MAX_DESCRIPTION_LENGTH = 2_000
MIN_TIMEOUT_MS, MAX_TIMEOUT_MS = 1_000, 300_000
MIN_RETRIES, MAX_RETRIES = 0, 10
MIN_INITIAL_DELAY_MS = 100
# RFC 9110 `token`: what an HTTP header name may contain.
HEADER_NAME_PATTERN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
# Headers FlowForge sets itself on every agent call; an API key must not replace them.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "idempotency-key"}
)
# Credentials end up in a header value: visible ASCII only, so no CR/LF can split the request.
CREDENTIAL_PATTERN = re.compile(r"[\x21-\x7e]{1,4096}")

# auth_type -> (required keys, optional keys) of auth_config; `none` takes no auth_config at all.
CREDENTIAL_KEYS: dict[AuthType, tuple[frozenset[str], frozenset[str]]] = {
    AuthType.BEARER: (frozenset({"token"}), frozenset()),
    AuthType.APIKEY: (frozenset({"key"}), frozenset({"header"})),
}


def normalised(spec: AgentSpec) -> AgentSpec:
    """The spec as it is stored: capabilities without duplicates, first occurrence first."""
    return replace(spec, capabilities=tuple(dict.fromkeys(spec.capabilities)))


async def validate_agent(
    spec: AgentSpec,
    auth_config: Mapping[str, Any],
    *,
    network: AgentNetworkMode,
    resolver: Resolver | None = None,
) -> None:
    """Raises ValidationError listing every problem of the agent, or returns when it is valid.

    Field paths are relative to the agent as a REST body shows it (`retry_config.max_retries`,
    `auth_config.token`, `capabilities[2]`). URLs are checked against the agent network policy,
    which may resolve host names through `resolver`."""
    violations = [
        *_name_violations(spec.name),
        *await _url_violations("url", spec.url, network, resolver, required=True),
        *_description_violations(spec.description),
        *await _url_violations("health_url", spec.health_url, network, resolver, required=False),
        *_credential_violations(spec.auth_type, auth_config),
        *_timeout_violations(spec.timeout_ms),
        *_retry_violations(spec.retry_config),
        *_capability_violations(spec.capabilities),
    ]
    if violations:
        raise ValidationError("the agent is not valid", violations)


async def _url_violations(
    field: str, url: str, network: AgentNetworkMode, resolver: Resolver | None, *, required: bool
) -> list[FieldViolation]:
    if not url:
        return [FieldViolation(field, "is required")] if required else []
    try:
        await check_url(url, network, resolver, field=field)
    except NetworkPolicyError as error:
        return error.violations
    return []


def _name_violations(name: str) -> list[FieldViolation]:
    if not name:
        return [FieldViolation("name", "is required")]
    if not NAME_PATTERN.fullmatch(name):
        return [
            FieldViolation(
                "name",
                "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        ]
    return []


def _description_violations(description: str) -> list[FieldViolation]:
    if len(description) > MAX_DESCRIPTION_LENGTH:
        return [FieldViolation("description", f"must be at most {MAX_DESCRIPTION_LENGTH} characters")]
    return []


def _timeout_violations(timeout_ms: int) -> list[FieldViolation]:
    if not MIN_TIMEOUT_MS <= timeout_ms <= MAX_TIMEOUT_MS:
        return [FieldViolation("timeout_ms", f"must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}")]
    return []


def _retry_violations(retry: RetryConfig) -> list[FieldViolation]:
    violations = []
    if not MIN_RETRIES <= retry.max_retries <= MAX_RETRIES:
        violations.append(
            FieldViolation("retry_config.max_retries", f"must be between {MIN_RETRIES} and {MAX_RETRIES}")
        )
    if retry.initial_delay_ms < MIN_INITIAL_DELAY_MS:
        violations.append(FieldViolation("retry_config.initial_delay_ms", f"must be at least {MIN_INITIAL_DELAY_MS}"))
    if retry.max_delay_ms < retry.initial_delay_ms:
        violations.append(FieldViolation("retry_config.max_delay_ms", "must be at least retry_config.initial_delay_ms"))
    # NaN compares false with everything, so it is named explicitly; infinity is no factor either.
    if not math.isfinite(retry.backoff_multiplier) or retry.backoff_multiplier < 1:
        violations.append(FieldViolation("retry_config.backoff_multiplier", "must be a finite number of at least 1"))
    return violations


def _capability_violations(capabilities: tuple[str, ...]) -> list[FieldViolation]:
    violations = [
        FieldViolation(
            f"capabilities[{index}]",
            "must be 1 to 64 letters, digits, '.', '_', ':', '/' or '-', starting with a letter or digit",
        )
        for index, capability in enumerate(capabilities)
        if not CAPABILITY_PATTERN.fullmatch(capability)
    ]
    if len(set(capabilities)) > MAX_CAPABILITIES:
        violations.append(FieldViolation("capabilities", f"must list at most {MAX_CAPABILITIES} capabilities"))
    return violations


def _credential_violations(auth_type: AuthType, auth_config: Mapping[str, Any]) -> list[FieldViolation]:
    if auth_type is AuthType.NONE:
        if auth_config:
            return [FieldViolation("auth_config", "must be empty when auth_type is none")]
        return []
    required, optional = CREDENTIAL_KEYS[auth_type]
    violations = [
        FieldViolation(f"auth_config.{key}", f"is required when auth_type is {auth_type}")
        for key in sorted(required - auth_config.keys())
    ]
    for key, value in auth_config.items():
        path = f"auth_config.{key}"
        if key not in required | optional:
            violations.append(FieldViolation(path, f"is not a setting of auth_type {auth_type}"))
        elif key == "header":
            if (
                not isinstance(value, str)
                or not HEADER_NAME_PATTERN.fullmatch(value)
                or value.lower() in RESERVED_HEADERS
            ):
                violations.append(FieldViolation(path, "must be an HTTP header name FlowForge does not set itself"))
        elif not isinstance(value, str) or not CREDENTIAL_PATTERN.fullmatch(value):
            # The message never repeats the value: it is a secret.
            violations.append(FieldViolation(path, "must be 1 to 4096 visible ASCII characters"))
    return violations
