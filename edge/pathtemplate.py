"""`google.api.http` path templates: parsing, matching, expansion, and their aiohttp/OpenAPI forms.

Grammar (google/api/http.proto)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

Matching works on the percent-decoded path, as aiohttp's router does: a `*` segment is one
non-empty segment, `**` one or more.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import quote

_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_LITERAL = re.compile(r"[^/{}*:]+")
_ONE_SEGMENT = r"[^/]+"
_MANY_SEGMENTS = r"[^/]+(?:/[^/]+)*"


class TemplateError(ValueError):
    """A path template that does not follow the google.api.http grammar."""


@dataclass(frozen=True)
class Variable:
    """`{field.path=segments}`: the part of the path that fills a request field."""

    field_path: str
    segments: tuple[str, ...] = ("*",)

    @property
    def multi_segment(self) -> bool:
        """True when the value may contain `/` (a `**` or a multi-segment pattern)."""
        return len(self.segments) > 1 or "**" in self.segments


Segment = str | Variable


def _segments_regex(segments: tuple[str, ...]) -> str:
    parts = []
    for segment in segments:
        if segment == "*":
            parts.append(_ONE_SEGMENT)
        elif segment == "**":
            parts.append(_MANY_SEGMENTS)
        else:
            parts.append(re.escape(segment))
    return "/".join(parts)


def _parse_plain_segments(text: str, template: str) -> tuple[str, ...]:
    segments = tuple(text.split("/"))
    for index, segment in enumerate(segments):
        if segment == "**" and index != len(segments) - 1:
            raise TemplateError(f"`**` must be the last segment in {template!r}")
        if segment not in ("*", "**") and not _LITERAL.fullmatch(segment):
            raise TemplateError(f"bad segment {segment!r} in {template!r}")
    return segments


@dataclass(frozen=True)
class PathTemplate:
    """A parsed template such as `/api/v1/runs/{id}:cancel`."""

    template: str
    segments: tuple[Segment, ...]
    verb: str = ""

    @classmethod
    def parse(cls, template: str) -> PathTemplate:
        """Parses a template; TemplateError when it is malformed."""
        if not template.startswith("/"):
            raise TemplateError(f"template must start with '/': {template!r}")
        raw: list[str] = []
        depth, start = 0, 1
        for index, char in enumerate(template[1:], start=1):
            if char == "{":
                depth += 1
                if depth > 1:
                    raise TemplateError(f"nested braces in {template!r}")
            elif char == "}":
                depth -= 1
                if depth < 0:
                    raise TemplateError(f"unbalanced braces in {template!r}")
            elif char == "/" and depth == 0:
                raw.append(template[start:index])
                start = index + 1
        if depth != 0:
            raise TemplateError(f"unbalanced braces in {template!r}")
        raw.append(template[start:])
        verb = ""
        last = raw[-1]
        colon = last.rfind(":")
        if colon > last.rfind("}"):
            # The verb is the text after the last colon outside braces of the last segment.
            last, verb = last[:colon], last[colon + 1 :]
            if not _LITERAL.fullmatch(verb):
                raise TemplateError(f"bad verb {verb!r} in {template!r}")
            raw[-1] = last
        segments: list[Segment] = []
        for index, text in enumerate(raw):
            if text.startswith("{") and text.endswith("}"):
                field_path, _, pattern = text[1:-1].partition("=")
                if not _FIELD_PATH.fullmatch(field_path):
                    raise TemplateError(f"bad field path {field_path!r} in {template!r}")
                inner = _parse_plain_segments(pattern, template) if pattern else ("*",)
                if "**" in inner and index != len(raw) - 1:
                    raise TemplateError(f"`**` must be in the last segment of {template!r}")
                segments.append(Variable(field_path, inner))
            else:
                if "{" in text or "}" in text:
                    raise TemplateError(f"a variable must be a whole segment in {template!r}")
                segments.extend(_parse_plain_segments(text, template))
        seen: set[str] = set()
        for variable in (s for s in segments if isinstance(s, Variable)):
            if variable.field_path in seen:
                raise TemplateError(f"{variable.field_path!r} appears twice in {template!r}")
            seen.add(variable.field_path)
        if "**" in segments[:-1]:
            raise TemplateError(f"`**` must be the last segment in {template!r}")
        return cls(template, tuple(segments), verb)

    @property
    def variables(self) -> tuple[Variable, ...]:
        """The variables, in path order."""
        return tuple(s for s in self.segments if isinstance(s, Variable))

    @property
    def field_paths(self) -> tuple[str, ...]:
        """Request fields the path fills, e.g. `("id", "step_id")`."""
        return tuple(v.field_path for v in self.variables)

    @cached_property
    def group_names(self) -> dict[str, str]:
        """Regex group (and aiohttp variable) name of each field path. aiohttp only accepts
        identifiers, so `a.b` becomes `a__b`; anonymous wildcards are `_0`, `_1`, ..."""
        names = {v.field_path: v.field_path.replace(".", "__") for v in self.variables}
        if len(set(names.values())) != len(names):
            raise TemplateError(f"variables of {self.template!r} collide once dots are replaced")
        return names

    def _pieces(self) -> list[tuple[str, str | None]]:
        """(regex, group name or None for literals) of each segment."""
        pieces: list[tuple[str, str | None]] = []
        anonymous = 0
        for segment in self.segments:
            if isinstance(segment, Variable):
                pieces.append((_segments_regex(segment.segments), self.group_names[segment.field_path]))
            elif segment in ("*", "**"):
                pieces.append((_segments_regex((segment,)), f"_{anonymous}"))
                anonymous += 1
            else:
                pieces.append((re.escape(segment), None))
        return pieces

    @cached_property
    def regex(self) -> re.Pattern[str]:
        """The compiled pattern over a decoded path."""
        body = "/".join(f"(?P<{name}>{regex})" if name is not None else regex for regex, name in self._pieces())
        verb = ":" + re.escape(self.verb) if self.verb else ""
        return re.compile("/" + body + verb)

    def match(self, path: str) -> dict[str, str] | None:
        """Field path -> value for a decoded request path, or None when it does not match."""
        found = self.regex.fullmatch(path)
        return None if found is None else self.bind(found.groupdict())

    def bind(self, groups: Mapping[str, str]) -> dict[str, str]:
        """Field path -> value from regex groups (or aiohttp's `match_info`)."""
        return {field: groups[name] for field, name in self.group_names.items()}

    def aiohttp_path(self) -> str:
        """The route path for aiohttp's router: same pieces, `{name:regex}` variables."""
        parts = []
        for (regex, name), segment in zip(self._pieces(), self.segments, strict=True):
            parts.append(f"{{{name}:{regex}}}" if name is not None else str(segment))
        return "/" + "/".join(parts) + (":" + self.verb if self.verb else "")

    def openapi_path(self) -> str:
        """The OpenAPI path key: `{field.path}` for each variable."""
        parts = [f"{{{s.field_path}}}" if isinstance(s, Variable) else s for s in self.segments]
        return "/" + "/".join(parts) + (":" + self.verb if self.verb else "")

    def expand(self, values: Mapping[str, str]) -> str:
        """The path with each variable replaced by its percent-encoded value."""
        parts = []
        for segment in self.segments:
            if isinstance(segment, Variable):
                safe = "/" if segment.multi_segment else ""
                parts.append(quote(values[segment.field_path], safe=safe))
            elif segment in ("*", "**"):
                raise TemplateError(f"cannot expand the anonymous wildcard of {self.template!r}")
            else:
                parts.append(segment)
        return "/" + "/".join(parts) + (":" + self.verb if self.verb else "")

    def specificity(self) -> tuple[int, int, int, str]:
        """Sort key that puts more specific templates first, so that a literal route (or a
        custom verb) is tried before a variable that would also match it."""
        literals = sum(1 for s in self.segments if isinstance(s, str) and s not in ("*", "**"))
        multi = sum(1 for s in self.segments if s == "**" or (isinstance(s, Variable) and s.multi_segment))
        return (-literals, 0 if self.verb else 1, multi, self.template)
