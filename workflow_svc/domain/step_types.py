"""The step-type registry: what each step type does and the JSON Schema of its `config`.

One source of truth: the definition validator checks `config` against these schemas and
`GET /api/v1/step-types` publishes the same schemas. `config` is static (no expressions are
evaluated in it): dynamic values travel in the step's `input`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError as SchemaValidationError
from jsonschema.protocols import Validator

from flowforge_common.errors import FieldViolation
from flowforge_common.expressions import join_path

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
MAX_WAIT_MS: Final = 31 * 24 * 60 * 60 * 1000
"""Longest durable wait (delay, signal timeout): 31 days."""

FORMAT_CHECKER: Final = FormatChecker(Draft202012Validator.FORMAT_CHECKER.checkers)
"""Formats asserted in configs, run inputs and template parameters.

jsonschema checks `uri` only when the optional `rfc3987` package is installed, which would
make the check depend on the environment; a small RFC 3986 absolute-URI check is registered
instead.
"""

_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")
_FORBIDDEN_IN_URI = re.compile(r"[\s\x00-\x1f\x7f<>\"{}|\\^`]")


def _is_absolute_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats apply to strings only; `type` reports the rest
    parts = urlsplit(value)
    return bool(_URI_SCHEME.match(parts.scheme)) and not _FORBIDDEN_IN_URI.search(value)


FORMAT_CHECKER.checks("uri", raises=ValueError)(_is_absolute_uri)


def _config_schema(title: str, properties: Mapping[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "$schema": SCHEMA_DIALECT,
        "title": title,
        "type": "object",
        "properties": dict(properties),
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


HTTP_URL_PATTERN: Final = "^[Hh][Tt][Tt][Pp][Ss]?://"
SIGNAL_NAME_PATTERN: Final = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
PLAIN_TEXT_PATTERN: Final = "^[^{}]*$"
"""Text that cannot open a `{{ }}` placeholder once substituted into a template."""
# Regular expressions make poor error messages; these say what a pattern means.
_PATTERN_MEANINGS: Final = {
    HTTP_URL_PATTERN: "an absolute http or https URL",
    SIGNAL_NAME_PATTERN: "a signal name: letters, digits, '_', '.' or '-', at most 100 characters",
    PLAIN_TEXT_PATTERN: "plain text: '{' and '}' are not allowed",
}

HTTP_URL_SCHEMA: Final = {"type": "string", "format": "uri", "pattern": HTTP_URL_PATTERN, "maxLength": 2048}
"""An absolute http(s) URL; also used by templates' parameters."""
SIGNAL_NAME_SCHEMA: Final = {
    "type": "string",
    "pattern": SIGNAL_NAME_PATTERN,
    "description": "Signal name (it appears in the URL path /runs/{id}/signals/{name}).",
}

_TIMEOUT_MS: Final = {
    "type": "integer",
    "minimum": 1,
    "maximum": 300_000,
    "description": "Deadline of the HTTP call in ms (at most 5 minutes).",
}


@dataclass(frozen=True)
class StepType:
    """One step type as the registry (and `GET /api/v1/step-types`) describes it."""

    name: str
    """Lower-case name, as written in a step's `type`."""
    description: str
    config_schema: Mapping[str, Any]
    """JSON Schema (draft 2020-12) of the step's `config`; `{}` is always given to it when absent."""


STEP_TYPES: Final[Mapping[str, StepType]] = {
    step_type.name: step_type
    for step_type in (
        StepType(
            "agent",
            "Calls a registered agent: POST {url} with the step's evaluated input; the default when "
            "`agent` is set. Retries and timeouts come from the step, then from the agent.",
            _config_schema("agent step config (none)", {}),
        ),
        StepType(
            "http",
            "Calls any HTTP endpoint with the step's evaluated input as the JSON body; the JSON "
            "response is the step's output.",
            _config_schema(
                "http step config",
                {
                    "method": {
                        "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"],
                        "default": "POST",
                        "description": "HTTP method; GET and DELETE send no body.",
                    },
                    "url": {**HTTP_URL_SCHEMA, "description": "Absolute http or https URL to call."},
                    "headers": {
                        "type": "object",
                        "propertyNames": {"pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"},
                        "additionalProperties": {"type": "string"},
                        "maxProperties": 50,
                        "description": "Extra request headers, name -> value.",
                    },
                    "timeout_ms": _TIMEOUT_MS,
                },
                required=("url",),
            ),
        ),
        StepType(
            "transform",
            "Reshapes data without calling anything: the output is the step's evaluated input.",
            _config_schema("transform step config (none)", {}),
        ),
        StepType(
            "delay",
            "Waits `duration_ms` durably (the wait survives restarts), then succeeds with no output.",
            _config_schema(
                "delay step config",
                {
                    "duration_ms": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_WAIT_MS,
                        "description": "How long to wait in ms, at most 31 days.",
                    }
                },
                required=("duration_ms",),
            ),
        ),
        StepType(
            "wait_for_signal",
            "Waits until POST /runs/{id}/signals/{signal} delivers a payload, which becomes the "
            "output; fails after `timeout_ms` when given.",
            _config_schema(
                "wait_for_signal step config",
                {
                    "signal": SIGNAL_NAME_SCHEMA,
                    "timeout_ms": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_WAIT_MS,
                        "description": "Longest wait in ms, at most 31 days; waits forever when absent.",
                    },
                },
                required=("signal",),
            ),
        ),
        StepType(
            "sub_workflow",
            "Runs another workflow of the tenant as a child run with the step's evaluated input; "
            "the child's output is the step's output.",
            _config_schema(
                "sub_workflow step config",
                {
                    "workflow_id": {"type": "string", "minLength": 1, "description": "Id of the child workflow."},
                    "version": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Version to run; the latest when absent.",
                    },
                },
                required=("workflow_id",),
            ),
        ),
    )
}

_CONFIG_VALIDATORS: Final[Mapping[str, Validator]] = {
    name: Draft202012Validator(step_type.config_schema, format_checker=FORMAT_CHECKER)
    for name, step_type in STEP_TYPES.items()
}


def list_step_types() -> list[StepType]:
    """Every step type, in a stable order (for `GET /api/v1/step-types`)."""
    return list(STEP_TYPES.values())


def proto_enum_value(value: object, prefix: str) -> str | None:
    """Reads an enum field written either the API way (`pause`) or as the proto name (`ON_EXHAUSTED_PAUSE`).

    Definitions reach the domain as JSON from the edge or through `MessageToDict`, which
    spells enums by their proto names; both mean the same. Absent, empty and `*_UNSPECIFIED`
    answer None. A non-string answers its `str()` so that the caller can report it.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        return str(value)
    name = value.strip().lower()
    name = name.removeprefix(prefix.lower() + "_")
    return None if name in ("", "unspecified") else name


def effective_step_type(step: Mapping[str, Any]) -> str | None:
    """The step's type: `type` when set, else `agent` when an agent is named, else None."""
    declared = proto_enum_value(step.get("type"), "STEP_TYPE")
    if declared is not None:
        return declared
    return "agent" if step.get("agent") else None


def config_violations(step_type: str, config: object, path: str) -> list[FieldViolation]:
    """Problems of `config` for a known `step_type`; `path` is where config sits (`steps[2].config`)."""
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        return [FieldViolation(path, "config must be an object")]
    return schema_violations(_CONFIG_VALIDATORS[step_type], config, path)


def schema_violations(validator: Validator, instance: object, path: str) -> list[FieldViolation]:
    """Every JSON Schema error of `instance` as a FieldViolation under `path`.

    A missing required property and an unexpected one are reported at the property's own
    path (`steps[0].config.url`), which is where a form would show them. A value failing both
    its `format` and its `pattern` is reported once.
    """
    violations: list[FieldViolation] = []
    shape_reported: set[str] = set()
    errors = sorted(validator.iter_errors(instance), key=lambda error: [str(p) for p in error.absolute_path])
    for error in errors:
        where = path
        for key in error.absolute_path:
            where = join_path(where, key)
        if error.validator in ("format", "pattern"):
            if where in shape_reported:
                continue
            shape_reported.add(where)
        violations.extend(_violations_of(error, where))
    return violations


def _violations_of(error: SchemaValidationError, where: str) -> list[FieldViolation]:
    instance = error.instance
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "required" and isinstance(instance, Mapping):
        missing = [name for name in error.validator_value if name not in instance]
        # jsonschema yields one error per missing property; find which one this is.
        name = next((name for name in missing if error.message.startswith(repr(name))), None)
        if name is not None:
            return [FieldViolation(join_path(where, name), f"{name!r} is required")]
    if error.validator == "additionalProperties" and error.validator_value is False and isinstance(instance, Mapping):
        known = schema.get("properties", {})
        patterns = [re.compile(pattern) for pattern in schema.get("patternProperties", {})]
        allowed = f" (allowed: {', '.join(known)})" if known else " (no fields are allowed here)"
        return [
            FieldViolation(join_path(where, key), f"unknown field {key!r}{allowed}")
            for key in instance
            if key not in known and not any(pattern.search(key) for pattern in patterns)
        ]
    meaning = _PATTERN_MEANINGS.get(schema.get("pattern", ""))
    if error.validator in ("pattern", "format") and meaning is not None:
        return [FieldViolation(where, f"{instance!r} is not {meaning}")]
    return [FieldViolation(where, error.message)]
