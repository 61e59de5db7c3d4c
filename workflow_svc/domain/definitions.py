"""Validation of workflow definitions: every problem at once, each at its exact field path.

A definition is the Workflow JSON of API.md as a plain dict (snake_case keys, as the edge
sends it or `MessageToDict(..., preserving_proto_field_name=True)` builds it). Nothing here
touches gRPC or the database: agent statuses come through a lookup the caller provides.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for

from flowforge_common.errors import FieldViolation, ValidationError
from flowforge_common.expressions import (
    RUNTIME_NAMES,
    CompiledTemplate,
    compile_template,
    find_expressions,
    join_path,
    template_errors,
)
from workflow_svc.domain.dag import ancestors, find_cycles, topological_levels
from workflow_svc.domain.step_types import (
    FORMAT_CHECKER,
    STEP_TYPES,
    config_violations,
    effective_step_type,
    proto_enum_value,
    schema_violations,
)

MAX_STEPS: Final = 500
MAX_NAME_LENGTH: Final = 100
MAX_TAGS: Final = 20
MAX_TAG_LENGTH: Final = 50
MAX_STEP_TIMEOUT_MS: Final = 86_400_000
MAX_CONCURRENCY: Final = 1000
MAX_RETRIES: Final = 10
MIN_RETRY_DELAY_MS: Final = 100
INT32_MAX: Final = 2**31 - 1
STEP_ID_PATTERN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")
ON_EXHAUSTED_VALUES: Final = ("fail", "pause")
_STEP_PREFIX: Final = re.compile(r"^steps\[\d+\]\.")

# Field names mirror the messages of workflow.proto / agent.proto (a test keeps them in step).
WORKFLOW_FIELDS: Final = frozenset(
    {"id", "name", "description", "version", "status", "etag", "input_schema", "steps", "output", "tags",
     "created_at", "updated_at", "created_by"}
)  # fmt: skip
STEP_FIELDS: Final = frozenset(
    {"id", "type", "agent", "depends_on", "input", "config", "when", "for_each", "max_concurrency", "retry",
     "timeout_ms", "total_timeout_ms", "queue_timeout_ms", "on_exhausted", "priority", "concurrency"}
)  # fmt: skip
RETRY_FIELDS: Final = frozenset(
    {"max_retries", "initial_delay_ms", "max_delay_ms", "backoff_multiplier", "jitter", "non_retryable_status"}
)
CONCURRENCY_FIELDS: Final = frozenset({"key", "limit"})

STEP_CONTEXT_NAMES: Final = RUNTIME_NAMES
"""Names a step's expressions may read (`item` only in a for_each step's input and concurrency key)."""
OUTPUT_CONTEXT_NAMES: Final = tuple(name for name in RUNTIME_NAMES if name != "item")

AgentLookup = Callable[[set[str]], Mapping[str, str]]
"""Receives the agent names a definition uses; answers name -> status ("active", "inactive", ...).

A name missing from the answer is an unknown agent.
"""


@dataclass
class ValidationReport:
    """The outcome of `validate_definition` (the body of `POST /api/v1/workflows:validate`)."""

    errors: list[FieldViolation] = field(default_factory=list)
    plan: list[list[str]] = field(default_factory=list)
    """Step ids level by level (levels run one after another, a level's steps in parallel);
    empty unless the step graph itself is valid."""

    @property
    def valid(self) -> bool:
        """True when there is no problem."""
        return not self.errors

    def raise_if_invalid(self) -> None:
        """Raises the 422 ValidationError carrying every violation."""
        if self.errors:
            raise ValidationError("the workflow definition is invalid", violations=list(self.errors))


def validate_definition(definition: Mapping[str, Any], *, agent_lookup: AgentLookup | None) -> ValidationReport:
    """Checks a workflow definition completely; answers every problem and, when the DAG is sound, the plan.

    `agent_lookup` is called at most once, with the names of the agents the steps use; None
    skips the agent checks (e.g. while validating a template).
    """
    return _DefinitionCheck(definition, agent_lookup).run()


def referenced_agents(definition: Mapping[str, Any]) -> set[str]:
    """Names of the agents a definition's agent steps call (to prefetch statuses for the lookup)."""
    steps = definition.get("steps") if isinstance(definition, Mapping) else None
    if not isinstance(steps, list):
        return set()
    return {
        step["agent"]
        for step in steps
        if isinstance(step, Mapping)
        and effective_step_type(step) == "agent"
        and isinstance(step.get("agent"), str)
        and step["agent"]
    }


def validate_run_input(input_schema: Mapping[str, Any] | None, input: Any) -> list[FieldViolation]:
    """Checks a run's input against the workflow's `input_schema` (already validated at save time).

    Violations are at `input` or below it (`input.doc`); an absent or empty schema accepts anything.
    """
    if not input_schema:
        return []
    validator_class = validator_for(input_schema)
    validator = validator_class(input_schema, format_checker=FORMAT_CHECKER)
    return schema_violations(validator, input, "input")


@dataclass(frozen=True)
class _Scope:
    """What the expressions of one field may read, and how to explain what they may not."""

    names: tuple[str, ...]
    step_label: str | None
    """The step in messages (its id, or `steps[3]` when the id is unusable); None for the output."""
    ancestors: Collection[str] | None
    """Steps the field may reference; None for any step (the workflow output)."""
    item_problem: str | None
    """Why `item` is not available here; None when it is."""


class _DefinitionCheck:
    """One validation pass; collects violations instead of stopping at the first."""

    def __init__(self, definition: Mapping[str, Any], agent_lookup: AgentLookup | None) -> None:
        self._definition = definition
        self._agent_lookup = agent_lookup
        self._errors: list[FieldViolation] = []
        self._graph_is_sound = True
        self._steps: list[tuple[int, Mapping[str, Any]]] = []
        self._first_index: dict[str, int] = {}
        """Step id -> index of the step that owns it (the first one when duplicated)."""
        self._graph: dict[str, list[str]] = {}

    def run(self) -> ValidationReport:
        if not isinstance(self._definition, Mapping):
            return ValidationReport([FieldViolation("", "a workflow definition must be a JSON object")])
        definition = self._definition
        self._unknown_fields(definition, WORKFLOW_FIELDS, "")
        self._check_name(definition.get("name"))
        self._check_optional_string(definition.get("description"), "description")
        self._check_tags(definition.get("tags"))
        self._check_input_schema(definition.get("input_schema"))
        self._collect_steps(definition.get("steps"))
        self._check_ids()
        self._check_dependencies()
        self._check_cycles()
        ancestry = ancestors(self._graph)
        statuses = self._agent_statuses()
        for index, step in self._steps:
            self._check_step(index, step, ancestry, statuses)
        self._check_output(definition.get("output"))
        plan = topological_levels(self._graph) if self._graph_is_sound else []
        return ValidationReport(_ordered(self._errors), plan)

    # --- reporting helpers ------------------------------------------------------------------

    def _error(self, path: str, message: str) -> None:
        self._errors.append(FieldViolation(path, message))

    def _graph_error(self, path: str, message: str) -> None:
        """An error that makes the step graph unusable, so no plan is answered."""
        self._graph_is_sound = False
        self._error(path, message)

    def _unknown_fields(self, value: Mapping[str, Any], known: frozenset[str], path: str) -> None:
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self._error(join_path(path, str(key)), f"unknown field {key!r}{hint}")

    def _integer(self, value: Any, path: str, *, minimum: int, maximum: int = INT32_MAX) -> int | None:
        """The integer at `path` when it is one within bounds; reports it otherwise. None stays silent."""
        if value is None:
            return None
        label = _STEP_PREFIX.sub("", path)
        number = _as_integer(value)
        if number is None:
            self._error(path, f"{label} must be an integer (got {value!r})")
            return None
        if not minimum <= number <= maximum:
            bounds = f">= {minimum}" if maximum == INT32_MAX else f"between {minimum} and {maximum}"
            self._error(path, f"{label} must be {bounds} (got {number})")
            return None
        return number

    def _check_optional_string(self, value: Any, path: str) -> None:
        if value is not None and not isinstance(value, str):
            self._error(path, f"{path.rsplit('.', 1)[-1]} must be a string")

    # --- workflow fields --------------------------------------------------------------------

    def _check_name(self, name: Any) -> None:
        if name is None or (isinstance(name, str) and not name.strip()):
            self._error("name", "name is required")
        elif not isinstance(name, str):
            self._error("name", "name must be a string")
        elif len(name) > MAX_NAME_LENGTH:
            self._error("name", f"name must be at most {MAX_NAME_LENGTH} characters (got {len(name)})")

    def _check_tags(self, tags: Any) -> None:
        if tags is None:
            return
        if not isinstance(tags, list):
            self._error("tags", "tags must be a list of strings")
            return
        if len(tags) > MAX_TAGS:
            self._error("tags", f"at most {MAX_TAGS} tags are allowed (got {len(tags)})")
        for index, tag in enumerate(tags):
            if not isinstance(tag, str) or not 1 <= len(tag) <= MAX_TAG_LENGTH:
                got = f"{len(tag)} characters" if isinstance(tag, str) else repr(tag)
                self._error(f"tags[{index}]", f"a tag must be a string of 1 to {MAX_TAG_LENGTH} characters (got {got})")

    def _check_input_schema(self, schema: Any) -> None:
        if schema is None:
            return
        if not isinstance(schema, Mapping):
            self._error("input_schema", "input_schema must be a JSON Schema object")
            return
        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as error:
            where = "/".join(str(part) for part in error.absolute_path)
            location = f" at {where}" if where else ""
            self._error("input_schema", f"invalid JSON Schema{location}: {error.message}")

    # --- the step graph ---------------------------------------------------------------------

    def _collect_steps(self, steps: Any) -> None:
        if steps is None or (isinstance(steps, list) and not steps):
            self._graph_error("steps", "at least one step is required")
            return
        if not isinstance(steps, list):
            self._graph_error("steps", "steps must be a list of step objects")
            return
        if len(steps) > MAX_STEPS:
            self._graph_error("steps", f"a workflow may have at most {MAX_STEPS} steps (got {len(steps)})")
        for index, step in enumerate(steps):
            if isinstance(step, Mapping):
                self._steps.append((index, step))
            else:
                self._graph_error(f"steps[{index}]", "a step must be an object")

    def _check_ids(self) -> None:
        for index, step in self._steps:
            path = f"steps[{index}].id"
            step_id = step.get("id")
            if step_id is None or step_id == "":
                self._graph_error(path, "step id is required")
                continue
            if not isinstance(step_id, str):
                self._graph_error(path, f"step id must be a string (got {step_id!r})")
                continue
            if not STEP_ID_PATTERN.match(step_id):
                self._graph_error(
                    path,
                    f"invalid step id {step_id!r}: it must start with a letter or '_' and hold only "
                    "letters, digits, '_' and '-' (at most 64 characters)",
                )
            if step_id in self._first_index:
                self._graph_error(path, f"duplicate step id {step_id!r} (also steps[{self._first_index[step_id]}])")
                continue
            # Even a malformed id joins the graph, so that steps naming it get no second error.
            self._first_index[step_id] = index
            self._graph[step_id] = []

    def _check_dependencies(self) -> None:
        for index, step in self._steps:
            path = f"steps[{index}].depends_on"
            depends_on = step.get("depends_on")
            if depends_on is None:
                continue
            if not isinstance(depends_on, list):
                self._graph_error(path, "depends_on must be a list of step ids")
                continue
            step_id = step.get("id")
            owner = step_id if isinstance(step_id, str) and self._first_index.get(step_id) == index else None
            for position, dep in enumerate(depends_on):
                where = f"{path}[{position}]"
                if not isinstance(dep, str):
                    self._graph_error(where, f"depends_on entries must be step ids (got {dep!r})")
                elif dep == step_id:
                    self._graph_error(where, f"step {dep!r} depends on itself")
                elif dep not in self._graph:
                    self._graph_error(where, f"depends on unknown step {dep!r}")
                elif owner is not None:
                    self._graph[owner].append(dep)

    def _check_cycles(self) -> None:
        for cycle in find_cycles(self._graph):
            index = self._first_index[cycle[0]]
            self._graph_error(
                f"steps[{index}].depends_on",
                "cycle: " + " -> ".join(cycle) + " (each step depends on the next)",
            )

    def _agent_statuses(self) -> Mapping[str, str] | None:
        names = referenced_agents(self._definition)
        if self._agent_lookup is None or not names:
            return None
        return self._agent_lookup(names)

    # --- one step ---------------------------------------------------------------------------

    def _check_step(
        self,
        index: int,
        step: Mapping[str, Any],
        ancestry: Mapping[str, set[str]],
        statuses: Mapping[str, str] | None,
    ) -> None:
        path = f"steps[{index}]"
        self._unknown_fields(step, STEP_FIELDS, path)
        step_type = self._check_type_and_agent(path, step, statuses)
        if step_type is not None and step_type in STEP_TYPES:
            self._check_config(path, step_type, step.get("config"))
        self._check_policies(path, step)

        step_id = step.get("id")
        if isinstance(step_id, str) and self._first_index.get(step_id) == index:
            label, reachable = step_id, ancestry.get(step_id, set())
        else:
            # No usable id of its own: its dependencies still say what it may read.
            label = path
            deps = [dep for dep in step.get("depends_on") or () if isinstance(dep, str) and dep in ancestry]
            reachable = set(deps).union(*(ancestry[dep] for dep in deps))
        in_for_each = step.get("for_each") not in (None, "")
        no_item = None if in_for_each else "'item' is only available in steps with for_each"

        def scope(item_problem: str | None) -> _Scope:
            return _Scope(STEP_CONTEXT_NAMES, label, reachable, item_problem)

        self._check_expressions(step.get("input"), f"{path}.input", scope(no_item))
        self._check_single_expression(
            step.get("when"),
            f"{path}.when",
            scope(no_item if not in_for_each else "'item' is not available in when: it is checked once per step"),
            "when must be exactly one '{{ expr }}' expression, e.g. \"{{ steps.check.output.ok }}\"",
        )
        self._check_single_expression(
            step.get("for_each"),
            f"{path}.for_each",
            scope("'item' is not available in for_each itself: it is each element of its list"),
            "for_each must be exactly one '{{ expr }}' expression giving a list, e.g. \"{{ input.items }}\"",
        )
        concurrency = step.get("concurrency")
        if isinstance(concurrency, Mapping) and isinstance(concurrency.get("key"), str):
            self._check_expressions(concurrency["key"], f"{path}.concurrency.key", scope(no_item))

    def _check_type_and_agent(
        self, path: str, step: Mapping[str, Any], statuses: Mapping[str, str] | None
    ) -> str | None:
        step_type = effective_step_type(step)
        agent = step.get("agent")
        known_types = ", ".join(STEP_TYPES)
        if step_type is None:
            self._error(f"{path}.type", f"step type is required when no agent is set (one of: {known_types})")
        elif step_type not in STEP_TYPES:
            self._error(f"{path}.type", f"unknown step type {step_type!r} (one of: {known_types})")
        if step_type == "agent":
            if agent is None or agent == "":
                self._error(f"{path}.agent", "agent steps need an agent name")
            elif not isinstance(agent, str):
                self._error(f"{path}.agent", f"agent must be an agent name (got {agent!r})")
            elif statuses is not None:
                status = statuses.get(agent)
                if status is None:
                    self._error(f"{path}.agent", f"unknown agent {agent!r}")
                elif status != "active":
                    self._error(f"{path}.agent", f"agent {agent!r} is {status}")
        elif step_type in STEP_TYPES and agent not in (None, ""):
            self._error(f"{path}.agent", f"only agent steps name an agent; this is a {step_type!r} step")
        return step_type

    def _check_config(self, path: str, step_type: str, config: Any) -> None:
        where = f"{path}.config"
        # Config is static; a placeholder there would silently stay text, so say where it belongs.
        templated = {at for at, _ in find_expressions(config, where)} if isinstance(config, Mapping) else set()
        for at in sorted(templated):
            self._error(at, "expressions are not evaluated in config; pass dynamic values in input")
        for violation in config_violations(step_type, config, where):
            if violation.field not in templated:
                self._errors.append(violation)

    def _check_policies(self, path: str, step: Mapping[str, Any]) -> None:
        max_concurrency = self._integer(
            step.get("max_concurrency"), f"{path}.max_concurrency", minimum=1, maximum=MAX_CONCURRENCY
        )
        if max_concurrency is not None and step.get("for_each") in (None, ""):
            self._error(f"{path}.max_concurrency", "max_concurrency applies only to steps with for_each")
        timeout = self._integer(step.get("timeout_ms"), f"{path}.timeout_ms", minimum=1, maximum=MAX_STEP_TIMEOUT_MS)
        total = self._integer(step.get("total_timeout_ms"), f"{path}.total_timeout_ms", minimum=1)
        if timeout is not None and total is not None and total < timeout:
            self._error(
                f"{path}.total_timeout_ms",
                f"total_timeout_ms must be >= timeout_ms ({timeout}) (got {total})",
            )
        self._integer(step.get("queue_timeout_ms"), f"{path}.queue_timeout_ms", minimum=1)
        self._integer(step.get("priority"), f"{path}.priority", minimum=0, maximum=9)
        on_exhausted = proto_enum_value(step.get("on_exhausted"), "ON_EXHAUSTED")
        if on_exhausted is not None and on_exhausted not in ON_EXHAUSTED_VALUES:
            self._error(
                f"{path}.on_exhausted",
                f"on_exhausted must be 'fail' or 'pause' (got {step.get('on_exhausted')!r})",
            )
        self._check_retry(f"{path}.retry", step.get("retry"))
        self._check_concurrency(f"{path}.concurrency", step.get("concurrency"))

    def _check_retry(self, path: str, retry: Any) -> None:
        if retry is None:
            return
        if not isinstance(retry, Mapping):
            self._error(path, "retry must be an object")
            return
        self._unknown_fields(retry, RETRY_FIELDS, path)
        self._integer(retry.get("max_retries"), f"{path}.max_retries", minimum=0, maximum=MAX_RETRIES)
        initial = self._integer(retry.get("initial_delay_ms"), f"{path}.initial_delay_ms", minimum=MIN_RETRY_DELAY_MS)
        maximum = self._integer(retry.get("max_delay_ms"), f"{path}.max_delay_ms", minimum=MIN_RETRY_DELAY_MS)
        if initial is not None and maximum is not None and maximum < initial:
            self._error(
                f"{path}.max_delay_ms",
                f"max_delay_ms must be >= initial_delay_ms ({initial}) (got {maximum})",
            )
        multiplier = retry.get("backoff_multiplier")
        if multiplier is not None and not (
            isinstance(multiplier, int | float)
            and not isinstance(multiplier, bool)
            and math.isfinite(multiplier)
            and multiplier >= 1
        ):
            self._error(f"{path}.backoff_multiplier", f"backoff_multiplier must be a number >= 1 (got {multiplier!r})")
        jitter = retry.get("jitter")
        if jitter is not None and not isinstance(jitter, bool):
            self._error(f"{path}.jitter", f"jitter must be true or false (got {jitter!r})")
        statuses = retry.get("non_retryable_status")
        if statuses is None:
            return
        if not isinstance(statuses, list):
            self._error(f"{path}.non_retryable_status", "non_retryable_status must be a list of HTTP statuses")
            return
        for position, status in enumerate(statuses):
            self._integer(status, f"{path}.non_retryable_status[{position}]", minimum=400, maximum=599)

    def _check_concurrency(self, path: str, concurrency: Any) -> None:
        if concurrency is None:
            return
        if not isinstance(concurrency, Mapping):
            self._error(path, "concurrency must be an object with key and limit")
            return
        self._unknown_fields(concurrency, CONCURRENCY_FIELDS, path)
        key = concurrency.get("key")
        if key is None or key == "":
            self._error(f"{path}.key", 'concurrency.key is required, e.g. "{{ input.customer }}"')
        elif not isinstance(key, str):
            self._error(f"{path}.key", f"concurrency.key must be a string (got {key!r})")
        if concurrency.get("limit") is None:
            self._error(f"{path}.limit", "concurrency.limit is required (>= 1)")
        else:
            self._integer(concurrency["limit"], f"{path}.limit", minimum=1)

    # --- expressions ------------------------------------------------------------------------

    def _check_single_expression(self, value: Any, path: str, scope: _Scope, requirement: str) -> None:
        """`when` and `for_each`: one whole-string placeholder, so that its value keeps its type."""
        if value is None or value == "":
            return
        if not isinstance(value, str):
            self._error(path, requirement)
            return
        compiled = self._check_expressions(value, path, scope)
        if compiled is not None and not compiled.is_expression:
            self._error(path, requirement)

    def _check_expressions(self, value: Any, path: str, scope: _Scope) -> CompiledTemplate | None:
        """Syntax, names and step references of every placeholder in `value`."""
        if value is None:
            return None
        syntax_errors = template_errors(value, path)
        for error in syntax_errors:
            self._error(error.path, str(error))
        if syntax_errors:
            return None
        compiled = compile_template(value)
        for where, expression in compiled.expressions(path):
            for name in sorted(expression.roots):
                if name == "item" and scope.item_problem is not None:
                    self._error(where, scope.item_problem)
                elif name not in scope.names:
                    readable = ", ".join(scope.names)
                    self._error(
                        where, f"unknown name {name!r} in {expression.placeholder!r} (expressions read {readable})"
                    )
            for step_id in sorted(expression.keys_of("steps")):
                self._check_reference(where, step_id, scope)
        return compiled

    def _check_reference(self, path: str, step_id: str, scope: _Scope) -> None:
        if step_id not in self._graph:
            self._error(path, f"references unknown step {step_id!r}")
        elif scope.ancestors is None or step_id in scope.ancestors:
            return
        elif step_id == scope.step_label:
            self._error(path, f"step {step_id!r} references its own output")
        else:
            self._error(
                path,
                f"references step {step_id!r} which is not an ancestor of {scope.step_label!r} "
                "(list it, or a step after it, in depends_on)",
            )

    def _check_output(self, output: Any) -> None:
        scope = _Scope(OUTPUT_CONTEXT_NAMES, None, None, "'item' is only available in steps with for_each")
        self._check_expressions(output, "output", scope)


def _as_integer(value: Any) -> int | None:
    """Integers as JSON gives them; 3.0 too, because protobuf Struct values are doubles."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _ordered(errors: list[FieldViolation]) -> list[FieldViolation]:
    """Errors without repeats, grouped by field in document order (`steps[2]` before `steps[10]`)."""

    def natural(violation: FieldViolation) -> list[str | int]:
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", violation.field)]

    return sorted(dict.fromkeys(errors), key=natural)
