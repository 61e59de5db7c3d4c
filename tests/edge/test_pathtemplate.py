"""google.api.http path templates: parsing, matching, expansion and route ordering."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from aiohttp.web_urldispatcher import DynamicResource
from hypothesis import given
from hypothesis import strategies as st

from edge.pathtemplate import PathTemplate, TemplateError, Variable
from edge.transcoder import bindings_for
from edge.upstream import SERVICES

# One path segment as a client would send it: anything but "/" (and non-empty).
segment_text = st.text(st.characters(exclude_characters="/", exclude_categories=("Cs",)), min_size=1, max_size=20)


def test_parses_literals_variables_and_verbs() -> None:
    template = PathTemplate.parse("/api/v1/runs/{id}/steps/{step_id}:retry")
    assert template.segments == ("api", "v1", "runs", Variable("id"), "steps", Variable("step_id"))
    assert template.verb == "retry"
    assert template.field_paths == ("id", "step_id")


def test_parses_nested_field_paths_and_patterns() -> None:
    template = PathTemplate.parse("/v1/{agent.name=projects/*/agents/*}/x/{rest=**}")
    assert template.variables == (
        Variable("agent.name", ("projects", "*", "agents", "*")),
        Variable("rest", ("**",)),
    )
    assert template.match("/v1/projects/p1/agents/a1/x/a/b/c") == {
        "agent.name": "projects/p1/agents/a1",
        "rest": "a/b/c",
    }
    assert template.match("/v1/projects/p1/x/a") is None


def test_custom_verb_on_a_collection() -> None:
    template = PathTemplate.parse("/api/v1/workflows:validate")
    assert template.segments == ("api", "v1", "workflows")
    assert template.match("/api/v1/workflows:validate") == {}
    assert template.match("/api/v1/workflows") is None
    assert template.aiohttp_path() == "/api/v1/workflows:validate"


@pytest.mark.parametrize(
    "bad",
    [
        "api/v1/x",  # no leading slash
        "/api/{id",  # unbalanced
        "/api/{a{b}}",  # nested
        "/api/{1id}",  # not an identifier
        "/api/x{id}",  # a variable inside a segment
        "/api/{id}/{id}",  # twice
        "/api/**/x",  # ** not last
        "/api/x:",  # empty verb
    ],
)
def test_rejects_malformed_templates(bad: str) -> None:
    with pytest.raises(TemplateError):
        PathTemplate.parse(bad)


def test_a_variable_matches_exactly_one_segment() -> None:
    template = PathTemplate.parse("/api/v1/agents/{id}")
    assert template.match("/api/v1/agents/agt_1") == {"id": "agt_1"}
    assert template.match("/api/v1/agents/a/b") is None
    assert template.match("/api/v1/agents/") is None
    # A custom verb route is more specific, so it is registered (and tried) first.
    assert template.match("/api/v1/agents/agt_1:probe") == {"id": "agt_1:probe"}


def test_verb_after_a_variable() -> None:
    template = PathTemplate.parse("/api/v1/runs/{id}:cancel")
    assert template.match("/api/v1/runs/r:1:cancel") == {"id": "r:1"}
    assert template.match("/api/v1/runs/r1") is None


def test_nested_field_path_names_an_aiohttp_variable() -> None:
    template = PathTemplate.parse("/v1/{agent.id}")
    assert template.aiohttp_path() == "/v1/{agent__id:[^/]+}"
    assert template.bind({"agent__id": "a1"}) == {"agent.id": "a1"}
    assert template.openapi_path() == "/v1/{agent.id}"


@given(first=segment_text, second=segment_text)
def test_expand_then_match_round_trips(first: str, second: str) -> None:
    template = PathTemplate.parse("/api/v1/runs/{id}/signals/{name}")
    path = template.expand({"id": first, "name": second})
    # expand() percent-encodes; the router matches the decoded path (an encoded "/" stays "%2F",
    # which aiohttp then decodes into the value).
    decoded = "/".join(unquote(part) for part in path.split("/"))
    assert template.match(decoded) == {"id": first, "name": second}


@given(value=segment_text)
def test_matching_is_what_aiohttp_compiles(value: str) -> None:
    template = PathTemplate.parse("/api/v1/agents/{id}/health")
    pattern = DynamicResource(template.aiohttp_path()).get_info()["pattern"]
    path = f"/api/v1/agents/{value}/health"
    theirs = pattern.fullmatch(path)
    assert template.match(path) == (None if theirs is None else template.bind(theirs.groupdict()))


def test_literal_and_verb_templates_sort_before_variables() -> None:
    templates = [
        PathTemplate.parse(t)
        for t in ("/api/v1/workflows/{id}", "/api/v1/workflows:validate", "/api/v1/workflows/{id}:publish", "/a/{x=**}")
    ]
    ordered = [t.template for t in sorted(templates, key=PathTemplate.specificity)]
    assert ordered.index("/api/v1/workflows:validate") < ordered.index("/api/v1/workflows/{id}")
    assert ordered.index("/api/v1/workflows/{id}:publish") < ordered.index("/api/v1/workflows/{id}")


def test_every_annotated_route_parses() -> None:
    for binding in bindings_for(SERVICES):
        assert binding.template.openapi_path().startswith("/")
