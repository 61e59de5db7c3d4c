"""GET /openapi.json (OpenAPI 3.1 from the protos) and the locally served Swagger UI."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from google.api import annotations_pb2
from openapi_spec_validator import validate
from pytest_aiohttp import AiohttpClient

from edge.app import create_app
from edge.pathtemplate import PathTemplate
from edge.upstream import SERVICES
from tests.edge.support import EchoBackend, edge_settings

Client = TestClient[Any, Any]


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, backend: EchoBackend) -> Client:
    return await aiohttp_client(create_app(edge_settings(backend.target)))


def annotated_routes() -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every unary RPC with a google.api.http rule, read directly."""
    routes = set()
    for service in SERVICES:
        for method in service.methods:
            options = method.GetOptions()
            if method.server_streaming or not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            verb = rule.WhichOneof("pattern")
            assert verb is not None
            routes.add((PathTemplate.parse(getattr(rule, verb)).openapi_path(), verb))
    return routes


async def test_openapi_is_valid_31_and_covers_every_annotated_rpc(client: Client) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    served = {(path, verb) for path, item in document["paths"].items() for verb in item}
    assert annotated_routes() <= served
    operation_ids = [
        op["operationId"] for item in document["paths"].values() for op in item.values() if "operationId" in op
    ]
    assert len(operation_ids) == len(set(operation_ids)) == len(annotated_routes())


async def test_docs_are_served_locally(client: Client) -> None:
    page = await client.get("/docs")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert "/docs/swagger-ui-bundle.js" in html
    assert "http" not in html.replace('lang="en"', "")  # no CDN, no absolute URL
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]

    bundle = await client.get("/docs/swagger-ui-bundle.js")
    assert bundle.status == 200
    assert "SwaggerUIBundle" in (await bundle.text())[:200_000]
    css = await client.get("/docs/swagger-ui.css")
    assert css.status == 200 and css.content_type == "text/css"

    initializer = await (await client.get("/docs/swagger-initializer.js")).text()
    assert '"/docs/openapi.json"' in initializer
    assert (await client.get("/docs/index.html")).status == 404  # only the whitelisted files


async def test_docs_document_is_the_30_rendition_for_swagger_ui_4(client: Client) -> None:
    document = await (await client.get("/docs/openapi.json")).json()
    assert document["openapi"] == "3.0.3"
    validate(document)
    original = await (await client.get("/openapi.json")).json()
    assert document["paths"].keys() == original["paths"].keys()
