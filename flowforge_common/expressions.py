"""Workflow expressions: `{{ JMESPath }}` placeholders in JSON values, parsed once, evaluated per run.

The rules (API.md, "Workflows"):

* a string that is exactly `{{ expr }}` evaluates to the expression's JSON value, type kept;
* `{{ expr }}` inside a longer string is interpolated as text (non-strings JSON-encoded);
* any other string, and every non-string scalar, is a literal; dicts and lists are walked.

`expr` is JMESPath over the run context `{input, steps: {<id>: {output, status}}, run: {id,
workflow_id}, item}` (plus `params` while a template is instantiated). JMESPath is a query
language, not code: nothing here evaluates Python. A literal `{{` is written `{{ '{{' }}`.

The workflow validator (save time) and the execution engine (run time) both go through
`compile_template`, so what is accepted when a workflow is saved is exactly what runs.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, TypeAlias

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath.functions import Functions
from jmespath.parser import ParsedResult
from typing_extensions import override

JSONValue: TypeAlias = Any
"""Any JSON value (None, bool, int, float, str, list, dict); `Any` because contexts come from JSON."""

RUNTIME_NAMES: Final = ("input", "steps", "run", "item")
"""Top-level names of the run context (`item` only inside a for_each step)."""

TEMPLATE_NAMES: Final = ("params",)
"""Top-level names available while a workflow template is instantiated."""

_OPEN: Final = "{{"
_CLOSE: Final = "}}"
_QUOTES: Final = "'\"`"
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# JMESPath has no registry of functions except the class table; read it once.
_FUNCTION_SIGNATURES: Final[Mapping[str, list[dict[str, Any]]]] = {
    name: spec["signature"] for name, spec in Functions.FUNCTION_TABLE.items()
}


class ExpressionError(ValueError):
    """An expression that cannot be parsed (or, for `ExpressionEvaluationError`, evaluated).

    `placeholder` is the offending `{{ ... }}` text, `column` the 1-based column in the string
    that holds it (None when unknown), `path` where that string sits inside the compiled value
    (`""` for the value itself, else e.g. `text` or `items[2].url`).
    """

    def __init__(self, reason: str, *, placeholder: str, column: int | None, path: str = "") -> None:
        self.reason = reason
        self.placeholder = placeholder
        self.column = column
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" at column {self.column}" if self.column is not None else ""
        return f"invalid expression {self.placeholder!r}{where}: {self.reason}"

    def at(self, path: str) -> ExpressionError:
        """The same error located at `path` (the string's place in the compiled value)."""
        return type(self)(self.reason, placeholder=self.placeholder, column=self.column, path=path)


class ExpressionEvaluationError(ExpressionError):
    """A well-formed expression failed on the data, e.g. `length(null)`."""

    def __str__(self) -> str:
        return f"expression {self.placeholder!r} failed: {self.reason}"


def join_path(base: str, key: str | int) -> str:
    """Field path of `key` inside `base`: `steps[2]`, `input.text`, `headers["X-Id"]`."""
    if isinstance(key, int):
        return f"{base}[{key}]"
    if not _IDENTIFIER.match(key):
        return f"{base}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{base}.{key}" if base else key


@dataclass(frozen=True)
class _Analysis:
    """What a parsed JMESPath expression reads, found by walking its AST."""

    roots: frozenset[str]
    """Top-level context names read, e.g. {"input", "steps"}."""
    keys: frozenset[tuple[str, str]]
    """`(name, key)` for every `name.key` read from the root, e.g. ("steps", "fetch")."""


@dataclass(frozen=True)
class Expression:
    """One parsed `{{ expr }}` placeholder."""

    source: str
    """The JMESPath text, without braces and surrounding blanks."""
    placeholder: str
    """The placeholder as written, braces included."""
    column: int
    """1-based column of the placeholder's first `{` in its string."""
    _parsed: ParsedResult = field(repr=False, compare=False)
    _analysis: _Analysis = field(repr=False, compare=False)

    @property
    def roots(self) -> frozenset[str]:
        """Top-level context names the expression reads (`input`, `steps`, `item`, ...)."""
        return self._analysis.roots

    def keys_of(self, name: str) -> set[str]:
        """Keys read directly under the context name `name`: step ids for `steps`."""
        return {key for root, key in self._analysis.keys if root == name}

    def evaluate(self, context: Mapping[str, JSONValue]) -> JSONValue:
        """The expression's JSON value over `context`."""
        try:
            return self._parsed.search(context)
        except jmespath_errors.JMESPathError as error:
            raise ExpressionEvaluationError(str(error), placeholder=self.placeholder, column=self.column) from error


@dataclass(frozen=True)
class _Segment:
    """A placeholder found in a string, before its expression is parsed."""

    placeholder: str
    source: str
    column: int
    source_offset: int
    """0-based offset in the string of the expression text's first non-blank character."""


class _Node(ABC):
    """A compiled JSON value."""

    @abstractmethod
    def evaluate(self, context: Mapping[str, JSONValue]) -> JSONValue:
        """The value with its placeholders evaluated."""

    @abstractmethod
    def substitute(self, context: Mapping[str, JSONValue], names: frozenset[str]) -> JSONValue:
        """The value with only the placeholders reading `names` evaluated."""

    @abstractmethod
    def expressions(self, path: str) -> Iterator[tuple[str, Expression]]:
        """The placeholders, each with the path of its string under `path`."""


@dataclass(frozen=True)
class _Literal(_Node):
    value: JSONValue

    @override
    def evaluate(self, context: Mapping[str, JSONValue]) -> JSONValue:
        return self.value

    @override
    def substitute(self, context: Mapping[str, JSONValue], names: frozenset[str]) -> JSONValue:
        return self.value

    @override
    def expressions(self, path: str) -> Iterator[tuple[str, Expression]]:
        return iter(())


@dataclass(frozen=True)
class _Exact(_Node):
    """A string that is exactly one placeholder: its value keeps the expression's type."""

    expression: Expression

    @override
    def evaluate(self, context: Mapping[str, JSONValue]) -> JSONValue:
        return self.expression.evaluate(context)

    @override
    def substitute(self, context: Mapping[str, JSONValue], names: frozenset[str]) -> JSONValue:
        if _only_reads(self.expression, names):
            return self.expression.evaluate(context)
        return self.expression.placeholder

    @override
    def expressions(self, path: str) -> Iterator[tuple[str, Expression]]:
        yield path, self.expression


@dataclass(frozen=True)
class _Interpolation(_Node):
    """A string mixing text and placeholders: always evaluates to a string."""

    parts: tuple[str | Expression, ...]

    @override
    def evaluate(self, context: Mapping[str, JSONValue]) -> JSONValue:
        return "".join(part if isinstance(part, str) else _as_text(part.evaluate(context)) for part in self.parts)

    @override
    def substitute(self, context: Mapping[str, JSONValue], names: frozenset[str]) -> JSONValue:
        def text(part: str | Expression) -> str:
            if isinstance(part, str):
                return part
            return _as_text(part.evaluate(context)) if _only_reads(part, names) else part.placeholder

        return "".join(text(part) for part in self.parts)

    @override
    def expressions(self, path: str) -> Iterator[tuple[str, Expression]]:
        for part in self.parts:
            if isinstance(part, Expression):
                yield path, part


@dataclass(frozen=True)
class _Object(_Node):
    items: tuple[tuple[str, _Node], ...]

    @override
    def evaluate(self, context: Mapping[str, JSONValue]) -> JSONValue:
        return {key: node.evaluate(context) for key, node in self.items}

    @override
    def substitute(self, context: Mapping[str, JSONValue], names: frozenset[str]) -> JSONValue:
        return {key: node.substitute(context, names) for key, node in self.items}

    @override
    def expressions(self, path: str) -> Iterator[tuple[str, Expression]]:
        for key, node in self.items:
            yield from node.expressions(join_path(path, key))


@dataclass(frozen=True)
class _Array(_Node):
    items: tuple[_Node, ...]

    @override
    def evaluate(self, context: Mapping[str, JSONValue]) -> JSONValue:
        return [node.evaluate(context) for node in self.items]

    @override
    def substitute(self, context: Mapping[str, JSONValue], names: frozenset[str]) -> JSONValue:
        return [node.substitute(context, names) for node in self.items]

    @override
    def expressions(self, path: str) -> Iterator[tuple[str, Expression]]:
        for index, node in enumerate(self.items):
            yield from node.expressions(join_path(path, index))


class CompiledTemplate:
    """A JSON value with every expression parsed; evaluate it against many contexts."""

    __slots__ = ("_root",)

    def __init__(self, root: _Node) -> None:
        self._root = root

    @property
    def is_expression(self) -> bool:
        """True when the value is a string that is exactly one `{{ expr }}` placeholder."""
        return isinstance(self._root, _Exact)

    @property
    def has_expressions(self) -> bool:
        """True when the value holds at least one placeholder."""
        return next(self._root.expressions(""), None) is not None

    def evaluate(self, context: Mapping[str, JSONValue]) -> JSONValue:
        """The value with every placeholder replaced; new dicts/lists, the template is unchanged.

        Raises ExpressionEvaluationError when an expression fails on the data.
        """
        return self._root.evaluate(context)

    def substitute(self, context: Mapping[str, JSONValue], *, names: Collection[str]) -> JSONValue:
        """Evaluates only the placeholders that read nothing but `names`; keeps the others as written.

        Instantiating a template substitutes `params` and leaves `input`, `steps`, `item` and
        `run` for the engine. A placeholder mixing both kinds is kept whole.
        """
        return self._root.substitute(context, frozenset(names))

    def expressions(self, path: str = "") -> list[tuple[str, Expression]]:
        """Every placeholder with the path of the string holding it, under `path` (the value's own)."""
        return list(self._root.expressions(path))

    def roots(self) -> set[str]:
        """Top-level context names read by any placeholder."""
        return {root for _, expression in self._root.expressions("") for root in expression.roots}

    def keys_of(self, name: str) -> set[str]:
        """Keys read directly under the context name `name` by any placeholder."""
        return {key for _, expression in self._root.expressions("") for key in expression.keys_of(name)}

    def references(self) -> set[str]:
        """Ids of the steps read through `steps.<id>` (quoted ids such as `steps."a-b"` included)."""
        return self.keys_of("steps")


def compile_template(value: JSONValue) -> CompiledTemplate:
    """Parses every placeholder of `value` once.

    Raises ExpressionError for the first bad placeholder, with its column and `path`.
    Use `template_errors` to get all of them.
    """
    return CompiledTemplate(_compile(value, "", None))


def template_errors(value: JSONValue, path: str = "") -> list[ExpressionError]:
    """Every syntax problem in `value` (whose own path is `path`), each with its path and column.

    Empty when `compile_template(value)` succeeds.
    """
    errors: list[ExpressionError] = []
    _compile(value, path, errors)
    return errors


def find_expressions(value: JSONValue, path: str = "") -> list[tuple[str, str]]:
    """`(path, expression text)` of every placeholder in `value`, without parsing the expressions.

    Paths are under `path`, the value's own. An unterminated `{{` is not listed
    (compile_template reports it).
    """
    found: list[tuple[str, str]] = []
    for where, text in _strings(value, path):
        segments, _ = _scan(text)
        found.extend((where, segment.source) for segment in segments)
    return found


def is_truthy(value: JSONValue) -> bool:
    """JMESPath truthiness: false, null and empty strings, lists and objects are false; 0 is true."""
    if value is None or value is False:
        return False
    return not (isinstance(value, str | list | dict | tuple) and len(value) == 0)


def evaluate_condition(condition: str | CompiledTemplate | None, context: Mapping[str, JSONValue]) -> bool:
    """Whether a step's `when` holds; an absent or empty condition always holds."""
    if condition is None or condition == "":
        return True
    template = compile_template(condition) if isinstance(condition, str) else condition
    return is_truthy(template.evaluate(context))


def runtime_context(
    *,
    input: JSONValue,
    steps: Mapping[str, Mapping[str, JSONValue]],
    run: Mapping[str, JSONValue],
    item: JSONValue = None,
    in_for_each: bool = False,
) -> dict[str, JSONValue]:
    """The context expressions see: `{input, steps: {<id>: {output, status}}, run, item}`.

    `item` is present only inside a `for_each` step, so that reading it elsewhere is an error
    at save time and null (not a stale value) at run time.
    """
    context: dict[str, JSONValue] = {"input": input, "steps": dict(steps), "run": dict(run)}
    if in_for_each:
        context["item"] = item
    return context


# --- parsing -----------------------------------------------------------------------------------


def _compile(value: JSONValue, path: str, errors: list[ExpressionError] | None) -> _Node:
    """Compiles `value`; collects errors into `errors` when given, else raises the first."""
    if isinstance(value, str):
        try:
            return _compile_string(value)
        except ExpressionError as error:
            located = error.at(path)
            if errors is None:
                raise located from None
            errors.append(located)
            return _Literal(value)
    if isinstance(value, Mapping):
        return _Object(tuple((key, _compile(item, join_path(path, key), errors)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return _Array(tuple(_compile(item, join_path(path, index), errors) for index, item in enumerate(value)))
    return _Literal(value)


@lru_cache(maxsize=4096)
def _compile_string(text: str) -> _Node:
    """Compiles one string; cached because workflows repeat the same strings across versions/runs."""
    segments, unterminated = _scan(text)
    if unterminated is not None:
        raise ExpressionError("'{{' is not closed by '}}'", placeholder=text[unterminated:], column=unterminated + 1)
    if not segments:
        return _Literal(text)
    expressions = [_expression(segment) for segment in segments]
    if len(segments) == 1 and segments[0].placeholder == text:
        return _Exact(expressions[0])
    parts: list[str | Expression] = []
    position = 0
    for segment, expression in zip(segments, expressions, strict=True):
        start = segment.column - 1
        if start > position:
            parts.append(text[position:start])
        parts.append(expression)
        position = start + len(segment.placeholder)
    if position < len(text):
        parts.append(text[position:])
    return _Interpolation(tuple(parts))


def _scan(text: str) -> tuple[list[_Segment], int | None]:
    """Finds the placeholders of `text`; also answers the offset of an unterminated `{{`, if any."""
    segments: list[_Segment] = []
    position = 0
    while (start := text.find(_OPEN, position)) >= 0:
        end = _closing_braces(text, start + len(_OPEN))
        if end is None:
            return segments, start
        body_offset = start + len(_OPEN)
        body = text[body_offset:end]
        segments.append(
            _Segment(
                placeholder=text[start : end + len(_CLOSE)],
                source=body.strip(),
                column=start + 1,
                source_offset=body_offset + len(body) - len(body.lstrip()),
            )
        )
        position = end + len(_CLOSE)
    return segments, None


def _closing_braces(text: str, position: int) -> int | None:
    """Offset of the `}}` closing a placeholder whose body starts at `position`.

    A plain search for `}}` would cut `{{ {a: {b: c}} }}` or `{{ '}}' }}` short, so braces are
    counted and quoted JMESPath text (raw strings, identifiers, literals) is skipped.
    """
    depth = 0
    index = position
    length = len(text)
    while index < length:
        char = text[index]
        if char in _QUOTES:
            closing = _closing_quote(text, index)
            if closing is None:
                # Let JMESPath report the unclosed quote instead of a vague "not closed".
                fallback = text.find(_CLOSE, index)
                return fallback if fallback >= 0 else None
            index = closing + 1
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0 and text.startswith(_CLOSE, index):
                return index
            depth = max(depth - 1, 0)
        index += 1
    return None


def _closing_quote(text: str, start: int) -> int | None:
    quote = text[start]
    index = start + 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
            continue
        if text[index] == quote:
            return index
        index += 1
    return None


def _expression(segment: _Segment) -> Expression:
    parsed, analysis = _parse(segment.source, segment.placeholder, segment.source_offset)
    return Expression(
        source=segment.source,
        placeholder=segment.placeholder,
        column=segment.column,
        _parsed=parsed,
        _analysis=analysis,
    )


# The scope of the AST walk's start: the context itself (other scopes are context names).
_ROOT: Final = "\0root"


@lru_cache(maxsize=4096)
def _parse(source: str, placeholder: str, offset: int) -> tuple[ParsedResult, _Analysis]:
    """Parses and analyses one JMESPath expression; `offset` turns its positions into columns."""

    def fail(reason: str, position: int | None = None) -> ExpressionError:
        column = offset + position + 1 if position is not None else offset + 1
        return ExpressionError(reason, placeholder=placeholder, column=column)

    if not source:
        raise fail("empty expression")
    try:
        parsed = jmespath.compile(source)
    except jmespath_errors.LexerError as error:
        raise fail(
            f"{error.message[:1].lower()}{error.message[1:]} ({error.lexer_value!r})", error.lexer_position
        ) from None
    except jmespath_errors.IncompleteExpressionError as error:
        raise fail("incomplete expression", error.lex_position) from None
    except jmespath_errors.ParseError as error:
        if error.token_type == "EOF":
            raise fail("incomplete expression", error.lex_position) from None
        raise fail(f"unexpected {error.token_value!r}", error.lex_position) from None
    except jmespath_errors.JMESPathError as error:
        raise fail(str(error)) from None
    walker = _Walker()
    walker.walk(parsed.parsed, _ROOT)
    for name, arity in walker.calls:
        problem = _call_problem(name, arity)
        if problem:
            raise fail(problem)
    return parsed, _Analysis(roots=frozenset(walker.roots), keys=frozenset(walker.keys))


def _call_problem(name: str, arity: int) -> str | None:
    """Checks a function call now, since JMESPath only notices bad calls when it evaluates them."""
    signature = _FUNCTION_SIGNATURES.get(name)
    if signature is None:
        return f"unknown function {name}()"
    expected = len(signature)
    plural = "" if expected == 1 else "s"
    if signature and signature[-1].get("variadic"):
        if arity < expected:
            return f"{name}() takes at least {expected} argument{plural} ({arity} given)"
    elif arity != expected:
        return f"{name}() takes {expected} argument{plural} ({arity} given)"
    return None


class _Walker:
    """Finds which context names and `name.key` pairs an expression reads.

    JMESPath evaluates most nodes against the "current" value, which is the root context only
    at the top and down the left spine of sub-expressions and pipes; projections, filters and
    `&expr` arguments apply to elements, where `steps` would be an element's field, not the
    steps of the run. So the walk carries a scope: `_ROOT` (the context), a context name (the
    value of that name, e.g. after `steps`, whose fields are step ids) or None (anything else).
    """

    def __init__(self) -> None:
        self.roots: set[str] = set()
        self.keys: set[tuple[str, str]] = set()
        self.calls: list[tuple[str, int]] = []

    def walk(self, node: Mapping[str, Any], scope: str | None) -> str | None:
        """Visits `node` evaluated against `scope`; answers the scope of its result."""
        kind = node["type"]
        children: list[Mapping[str, Any]] = node.get("children", [])
        if kind == "field":
            name = node["value"]
            if scope == _ROOT:
                self.roots.add(name)
                return str(name)
            if scope is not None:
                self.keys.add((scope, name))
            return None
        if kind in ("subexpression", "pipe", "index_expression"):
            current = scope
            for child in children:
                current = self.walk(child, current)
            return current if kind != "index_expression" else None
        if kind in ("projection", "value_projection", "filter_projection"):
            self.walk(children[0], scope)
            for child in children[1:]:
                self.walk(child, None)
            return None
        if kind == "current":
            return scope
        if kind == "expref":
            self.walk(children[0], None)
            return None
        if kind == "function_expression":
            self.calls.append((node["value"], len(children)))
        for child in children:
            self.walk(child, scope)
        return None


def _only_reads(expression: Expression, names: frozenset[str]) -> bool:
    return bool(expression.roots) and expression.roots <= names


def _as_text(value: JSONValue) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _strings(value: JSONValue, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, join_path(path, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, join_path(path, index))
